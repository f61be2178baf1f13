//! The embedded SQLite backend of the store (its queries are written once, in [`crate::sql`]): one
//! file, WAL journal, one writer connection (SQLite allows one writer at a time) and a small pool
//! of readers.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

use crate::{Result, StoreError};

pub(crate) use crate::sql::db_error as backend;
pub(crate) use crate::sql::rows::*;

mod bulk;
mod dialect;
mod provisioning;
mod scim;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

pub(crate) type Tx = Transaction<'static, Sqlite>;

impl SqliteStore {
    /// Opens (creating when missing) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new().filename(path);
        Self::open_with(opts).await
    }

    /// Opens a `sqlite://` URL (e.g. `sqlite:///var/lib/provisioner/provisioner.db`).
    pub async fn open_url(url: &str) -> Result<Self> {
        let opts =
            SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?;
        Self::open_with(opts).await
    }

    async fn open_with(opts: SqliteConnectOptions) -> Result<Self> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // An embedded connection does not go stale: no ping before each use (a round trip to
        // the connection's thread on every statement's acquire).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        MIGRATOR.run(&writer).await.map_err(|e| backend(sqlx::Error::Migrate(Box::new(e))))?;
        let mut migrated = crate::sql::Conn(writer.acquire().await.map_err(backend)?);
        backfill_email_keys(&mut migrated).await?;
        backfill_profiles(&mut migrated).await?;
        drop(migrated);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.read_only(true))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { writer, reader })
    }

    /// Closes both pools, waiting for running statements.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
