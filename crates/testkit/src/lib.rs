//! Test support shared by the workspace's test suites. Everything here starts real outside
//! software (or, for [`ScimApp`], the in-memory SCIM app with switchable misbehaviours) on
//! 127.0.0.1 and stops it when dropped; nothing here is used by shipped code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a server that cannot start fails the test that asked for it, with the message"
)]

pub mod postgres;
pub mod samba;
mod scim2_server;
pub mod slapd;

pub use samba::Samba;
pub use scim2_server::{unique, Scim2Server};
pub use scim_target::{
    Counts as ScimAppCounts, Logged as ScimAppRequest, Options as ScimAppOptions, ScimApp, Switches, Tally,
};
pub use slapd::Slapd;
