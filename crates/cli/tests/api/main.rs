//! One integration-test binary for the whole service: the admin API in-process, and the
//! real `provisioner` binary for start-up, persistence and the CLI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: their helpers (outside #[test] functions, where clippy.toml's allow-*-in-tests does not reach) fail the test with a message"
)]

mod support;

/// Runs each named scenario (an `async fn(Backend)`) on the embedded SQLite store and on
/// PostgreSQL, each on a fresh database.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )*
        }
    };
}

mod admin_api;
mod app_pages;
mod binary;
mod console;
mod engine;
mod engine_faults;
mod guard;
mod identity;
mod idp_replay;
mod ldap;
mod mapping;
mod openapi;
mod profile;
mod quarantine;
mod rate_budgets;
mod saml;
mod scim_bulk;
mod scim_bulk_push;
mod scim_passwords;
mod scim_root_search;
mod scim_server;
mod scopes;
mod secrets;
mod security;
