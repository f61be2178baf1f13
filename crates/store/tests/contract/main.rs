//! The storage contract: every `Store` implementation must pass these, each test on a fresh
//! database. A backend is added by listing the tests for it in each module.

use std::sync::Arc;

use store::Store;

mod directory;
mod provisioning;

/// One `#[tokio::test]` per named contract test, each on a fresh store from `$make`.
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
