//! Test support shared by the workspace's test suites. Everything here starts real outside
//! software on 127.0.0.1 and stops it when dropped; nothing here is used by shipped code.

pub mod postgres;
mod scim2_server;

pub use scim2_server::{unique, Scim2Server};
