//! The storage contract: every `Store` implementation must pass these, each test on a fresh
//! database. Each module lists its tests once, with [`contract!`], which runs each of them on
//! every backend: SQLite (a temporary file) and PostgreSQL (a database of its own, see
//! `testkit::postgres`). Tests of one backend only live in `postgres_only`; `release_fixture`
//! opens databases written by an earlier release (upgrades).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: their helpers (outside #[test] functions, where clippy.toml's allow-*-in-tests does not reach) fail the test with a message"
)]

use std::sync::Arc;
use std::time::Duration;

use store::{PostgresOptions, PostgresStore, Store};
use testkit::postgres::TestDatabase;

mod admins;
mod directory;
mod entitlements;
mod health;
mod passwords;
mod postgres_only;
mod provisioning;
mod rates;
mod release_fixture;
mod saml;
mod scim;
mod sources;

/// Lists a module's contract tests once: generates `mod sqlite_backend` and
/// `mod postgres_backend`, each with one `#[tokio::test]` per test, on a fresh store.
#[macro_export]
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _guard) = $crate::sqlite().await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _guard) = $crate::postgres().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

/// One `#[tokio::test]` per named contract test, each on a fresh store from `$make` (one
/// backend only; [`contract!`] runs them on every backend).
#[macro_export]
macro_rules! each_on_a_fresh_store {
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (store, _guard) = $make.await;
                super::$name(store).await;
            }
        )*
    };
}

/// A fresh embedded store in a temporary directory (removed with the guard).
pub async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = store::SqliteStore::open(&dir.path().join("test.db")).await.unwrap();
    (Arc::new(store), dir)
}

/// Pool settings for tests: small pools, since many tests run at once on one server.
pub fn pg_options() -> PostgresOptions {
    PostgresOptions {
        max_connections: 4,
        statement_timeout: Some(Duration::from_secs(30)),
        acquire_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(30),
        listen: false,
    }
}

/// A fresh PostgreSQL store on a database of its own (dropped with the guard).
pub async fn postgres() -> (Arc<dyn Store>, TestDatabase) {
    let db = TestDatabase::create().await;
    let store = PostgresStore::connect(&db.url, pg_options()).await.unwrap();
    (Arc::new(store), db)
}
