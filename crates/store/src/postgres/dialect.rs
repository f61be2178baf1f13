//! How the one SQL layer ([`crate::sql`]) runs on PostgreSQL: values bound with their own types
//! (`uuid`, `timestamptz`, `jsonb`, arrays for `= ANY(...)`), one pool for reads and writes, and
//! the write transaction [`Tx`] that defers change rows and account records to its commit (see
//! the module documentation of [`crate::postgres`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::NewChange;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{PostgresStore, Tx};
use crate::sql::{db_error, AccountSet, Arg, Backend, Conn, Dialect, Exec, Piece, Query, RowGet, WriteTx};
use crate::{Result, StoreError, Wakeup};

fn build(q: &Query) -> Result<QueryBuilder<'static, Postgres>> {
    let (pieces, args) = q.parts();
    let mut b = QueryBuilder::new("");
    for piece in pieces {
        match piece {
            Piece::Sql(s) => {
                b.push(s);
            }
            Piece::Arg(i) => {
                let arg = args
                    .get(*i)
                    .ok_or_else(|| StoreError::Backend(format!("no value for placeholder {} in {}", i + 1, q.sql())))?;
                match arg.clone() {
                    Arg::Id(v) => b.push_bind(v),
                    Arg::Text(v) => b.push_bind(v),
                    Arg::Int(v) => b.push_bind(v),
                    Arg::Float(v) => b.push_bind(v),
                    Arg::Bool(v) => b.push_bind(v),
                    Arg::Time(v) => b.push_bind(v),
                    Arg::Json(v) => b.push_bind(v),
                    Arg::Bytes(v) => b.push_bind(v),
                    Arg::Ids(v) => b.push_bind(v),
                    Arg::Texts(v) => b.push_bind(v),
                    Arg::Ints(v) => b.push_bind(v),
                };
            }
        }
    }
    Ok(b)
}

#[async_trait]
impl Dialect for Postgres {
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const FOR_SHARE: &'static str = " FOR SHARE";
    const ILIKE: &'static str = "ILIKE";
    const MAX_BINDS: usize = 65_000;

    async fn fetch_all(c: &mut PgConnection, q: Query) -> Result<Vec<PgRow>> {
        build(&q)?.build().fetch_all(c).await.map_err(db_error)
    }

    async fn fetch_optional(c: &mut PgConnection, q: Query) -> Result<Option<PgRow>> {
        build(&q)?.build().fetch_optional(c).await.map_err(db_error)
    }

    async fn execute(c: &mut PgConnection, q: Query) -> Result<u64> {
        Ok(build(&q)?.build().execute(c).await.map_err(db_error)?.rows_affected())
    }

    fn push_in(q: &mut Query, column: &str, list: Arg) {
        q.push(format!("{column} = ANY(")).push_bind(list).push(")");
    }

    async fn advisory_lock(c: &mut PgConnection, key: (i32, i32)) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(key.0)
            .bind(key.1)
            .execute(c)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

fn get<'r, T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(row: &'r PgRow, col: &str) -> Result<T> {
    row.try_get(col).map_err(db_error)
}

impl RowGet for PgRow {
    fn text(&self, col: &str) -> Result<String> {
        get(self, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        get(self, col)
    }
    fn int(&self, col: &str) -> Result<i64> {
        self.opt_int(col)?.ok_or_else(|| StoreError::Backend(format!("unexpected NULL in {col}")))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        // Columns are bigint; an expression such as COUNT(*) or a literal may be narrower.
        match self.try_get::<Option<i64>, _>(col) {
            Ok(v) => Ok(v),
            Err(e @ sqlx::Error::ColumnDecode { .. }) => match self.try_get::<Option<i32>, _>(col) {
                Ok(v) => Ok(v.map(i64::from)),
                Err(_) => Err(db_error(e)),
            },
            Err(e) => Err(db_error(e)),
        }
    }
    fn flag(&self, col: &str) -> Result<bool> {
        get(self, col)
    }
    fn id(&self, col: &str) -> Result<Uuid> {
        get(self, col)
    }
    fn opt_id(&self, col: &str) -> Result<Option<Uuid>> {
        get(self, col)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        get(self, col)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        get(self, col)
    }
    fn opt_value(&self, col: &str) -> Result<Option<Value>> {
        get(self, col)
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        get(self, col)
    }
}

impl Exec<Postgres> for Tx {
    fn conn(&mut self) -> &mut PgConnection {
        self.c()
    }
}

#[async_trait]
impl WriteTx<Postgres> for Tx {
    async fn change(&mut self, change: NewChange) -> Result<()> {
        Tx::change(self, change);
        Ok(())
    }

    async fn attribute_changes(&mut self, id: i64) -> Result<()> {
        for (c, audit) in &mut self.changes {
            if audit.is_none() && c.kind != directory::ChangeKind::Account {
                *audit = Some(id);
            }
        }
        Ok(())
    }

    fn wake_operations(&mut self) {
        Tx::wake_operations(self);
    }

    async fn commit(self) -> Result<()> {
        Tx::commit(self).await
    }

    async fn rollback(self) -> Result<()> {
        Tx::rollback(self).await
    }

    async fn lock_pair(&mut self, app: Uuid, user: Uuid) -> Result<()> {
        Tx::lock_pair(self, app, user).await
    }

    async fn refresh_account(&mut self, app: Uuid, user: Uuid) -> Result<()> {
        Tx::refresh(self, app, user);
        Ok(())
    }

    async fn refresh_accounts(&mut self, pairs: &[(Uuid, Uuid)]) -> Result<()> {
        for (app, user) in pairs {
            Tx::refresh(self, *app, *user);
        }
        Ok(())
    }

    async fn set_account(&mut self, app: Uuid, user: Uuid, set: AccountSet) -> Result<()> {
        self.pair(app, user).sets.push(set);
        Ok(())
    }
}

#[async_trait]
impl Backend for PostgresStore {
    type Db = Postgres;
    type Tx = Tx;

    async fn read(&self) -> Result<Conn<Postgres>> {
        self.pool.acquire().await.map(Conn).map_err(db_error)
    }

    async fn read_fresh(&self) -> Result<Conn<Postgres>> {
        self.read().await
    }

    async fn begin(&self) -> Result<Tx> {
        PostgresStore::begin(self).await
    }

    async fn begin_engine(&self) -> Result<Tx> {
        PostgresStore::begin_engine(self).await
    }

    /// Within the acquire timeout (at most 3 s): an unreachable server must not hold a health
    /// check for long.
    async fn health(&self) -> Result<()> {
        let wait = self.acquire_timeout.min(Duration::from_secs(3));
        match tokio::time::timeout(wait, crate::sql::ping(self)).await {
            Ok(done) => done,
            Err(_) => Err(StoreError::Unavailable(format!("no answer from PostgreSQL within {wait:?}"))),
        }
    }

    /// From the `LISTEN` task, when the store runs one.
    fn wakeups(&self) -> Option<broadcast::Receiver<Wakeup>> {
        self.listener.as_ref().map(|_| self.wakeups.subscribe())
    }
}

/// A bare connection runs queries too (inside a transaction the caller holds).
impl Exec<Postgres> for PgConnection {
    fn conn(&mut self) -> &mut PgConnection {
        self
    }
}
