//! One integration-test binary for the whole service: the admin API in-process, and the
//! real `provisioner` binary for start-up, persistence and the CLI.

mod support;

mod admin_api;
mod binary;
mod engine;
mod engine_faults;
mod openapi;
