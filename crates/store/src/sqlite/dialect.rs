//! How the one SQL layer ([`crate::sql`]) runs on SQLite: values encoded as SQLite stores them
//! (ids as TEXT, times as sortable RFC 3339 text, JSON as TEXT), read and write connections, and
//! a write transaction that records its change-feed rows as it goes (one writer at a time, so
//! rows become visible in `seq` order without further care).

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::NewChange;
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, Transaction};
use uuid::Uuid;

use super::SqliteStore;
use crate::sql::{
    db_error, q, ts, upsert_accounts, AccountSet, Arg, Backend, Conn, Dialect, Exec, Piece, Query, RowGet, WriteTx,
};
use crate::{Result, StoreError};

fn build(q: &Query) -> Result<QueryBuilder<'static, Sqlite>> {
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
                    Arg::Id(v) => b.push_bind(v.map(|u| u.to_string())),
                    Arg::Text(v) => b.push_bind(v),
                    Arg::Int(v) => b.push_bind(v),
                    Arg::Float(v) => b.push_bind(v),
                    Arg::Bool(v) => b.push_bind(v),
                    Arg::Time(v) => b.push_bind(v.as_ref().map(ts)),
                    Arg::Json(v) => b.push_bind(v.map(|v| v.to_string())),
                    Arg::Bytes(v) => b.push_bind(v),
                    Arg::Ids(_) | Arg::Texts(_) | Arg::Ints(_) => {
                        return Err(StoreError::Backend(format!("a list bound outside push_in in {}", q.sql())))
                    }
                };
            }
        }
    }
    Ok(b)
}

#[async_trait]
impl Dialect for Sqlite {
    const FOR_UPDATE: &'static str = "";
    const FOR_SHARE: &'static str = "";
    const ILIKE: &'static str = "LIKE";
    const MAX_BINDS: usize = 32_000;

    async fn fetch_all(c: &mut SqliteConnection, q: Query) -> Result<Vec<SqliteRow>> {
        build(&q)?.build().fetch_all(c).await.map_err(db_error)
    }

    async fn fetch_optional(c: &mut SqliteConnection, q: Query) -> Result<Option<SqliteRow>> {
        build(&q)?.build().fetch_optional(c).await.map_err(db_error)
    }

    async fn execute(c: &mut SqliteConnection, q: Query) -> Result<u64> {
        Ok(build(&q)?.build().execute(c).await.map_err(db_error)?.rows_affected())
    }

    fn push_in(q: &mut Query, column: &str, list: Arg) {
        let items: Vec<Arg> = match list {
            Arg::Ids(v) => v.into_iter().map(Arg::from).collect(),
            Arg::Texts(v) => v.into_iter().map(Arg::from).collect(),
            Arg::Ints(v) => v.into_iter().map(Arg::from).collect(),
            one => vec![one],
        };
        if items.is_empty() {
            q.push("1 = 0");
            return;
        }
        q.push(format!("{column} IN ("));
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.push_bind(item);
        }
        q.push(")");
    }

    async fn advisory_lock(_: &mut SqliteConnection, _: (i32, i32)) -> Result<()> {
        Ok(())
    }
}

fn get<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(row: &'r SqliteRow, col: &str) -> Result<T> {
    row.try_get(col).map_err(db_error)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Backend(format!("bad timestamp {s:?}: {e}")))
}

fn parse_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Backend(format!("bad id {s:?}: {e}")))
}

impl RowGet for SqliteRow {
    fn text(&self, col: &str) -> Result<String> {
        get(self, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        get(self, col)
    }
    fn int(&self, col: &str) -> Result<i64> {
        get(self, col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        get(self, col)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        get(self, col)
    }
    fn id(&self, col: &str) -> Result<Uuid> {
        parse_id(&get::<String>(self, col)?)
    }
    fn opt_id(&self, col: &str) -> Result<Option<Uuid>> {
        get::<Option<String>>(self, col)?.as_deref().map(parse_id).transpose()
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        parse_time(&get::<String>(self, col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        get::<Option<String>>(self, col)?.as_deref().map(parse_time).transpose()
    }
    fn opt_value(&self, col: &str) -> Result<Option<Value>> {
        get::<Option<String>>(self, col)?
            .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Backend(format!("bad JSON in {col}: {e}"))))
            .transpose()
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        get(self, col)
    }
}

/// SQLite's write transaction: change rows are inserted as they are recorded.
impl Exec<Sqlite> for Transaction<'static, Sqlite> {
    fn conn(&mut self) -> &mut SqliteConnection {
        self
    }
}

#[async_trait]
impl WriteTx<Sqlite> for Transaction<'static, Sqlite> {
    async fn change(&mut self, change: NewChange) -> Result<()> {
        // Attributed to the write's audit entry when it is recorded (see `attribute_changes`);
        // an account change has none.
        self.run(
            q("INSERT INTO changes (at, kind, user_id, role_id, app_id, audit_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?2 = 'account' THEN 0 END)")
            .bind(directory::now())
            .bind(change.kind.as_str())
            .bind(change.user_id)
            .bind(change.role_id)
            .bind(change.app_id),
        )
        .await?;
        Ok(())
    }

    async fn attribute_changes(&mut self, id: i64) -> Result<()> {
        self.run(q("UPDATE changes SET audit_id = ? WHERE audit_id IS NULL").bind(id)).await?;
        Ok(())
    }

    fn wake_operations(&mut self) {
        // One process: the engine wakes its workers in memory.
    }

    async fn commit(self) -> Result<()> {
        Transaction::commit(self).await.map_err(db_error)
    }

    async fn rollback(self) -> Result<()> {
        Transaction::rollback(self).await.map_err(db_error)
    }

    async fn lock_pair(&mut self, _: Uuid, _: Uuid) -> Result<()> {
        // The one writer holds the whole database.
        Ok(())
    }

    /// One statement per few hundred pairs: the pairs as a `VALUES` list, each joined to the
    /// operation its record follows.
    async fn refresh_accounts(&mut self, pairs: &[(Uuid, Uuid)]) -> Result<()> {
        let mut seen = HashSet::new();
        let pairs: Vec<&(Uuid, Uuid)> = pairs.iter().filter(|p| seen.insert(**p)).collect();
        let now = directory::now();
        for chunk in pairs.chunks(REFRESH_CHUNK) {
            let mut query = q("WITH p(app_id, user_id) AS (VALUES ");
            for (i, (app, user)) in chunk.iter().enumerate() {
                query.push(if i == 0 { "(?, ?)" } else { ", (?, ?)" }).add(*app).add(*user);
            }
            query
                .push(
                    ") INSERT INTO accounts (app_id, user_id, remote_id, ownership, status, last_applied, \
                     last_event_id, updated_at) SELECT o.app_id, o.user_id, NULL, NULL, o.status, NULL, o.id, ? \
                     FROM p JOIN operations o ON o.seq = (SELECT q.seq FROM operations q \
                       WHERE q.app_id = p.app_id AND q.user_id = p.user_id ORDER BY \
                       CASE WHEN q.state IN ('queued', 'awaiting_approval', 'running') THEN 0 \
                            WHEN q.status IN ('cancelled', 'rejected') THEN 2 ELSE 1 END, q.seq DESC LIMIT 1) \
                     WHERE true ON CONFLICT (app_id, user_id) DO UPDATE SET status = excluded.status, \
                     last_event_id = excluded.last_event_id, updated_at = excluded.updated_at, \
                     rejected = CASE WHEN excluded.status IN ('pending', 'provisioning', 'modifying', 'deleting', \
                       'held') THEN NULL ELSE accounts.rejected END",
                )
                .add(now);
            self.run(query).await?;
        }
        Ok(())
    }

    async fn set_account(&mut self, app: Uuid, user: Uuid, set: AccountSet) -> Result<()> {
        self.set_accounts(vec![(app, user, set)]).await
    }

    /// One statement per hundred records.
    async fn set_accounts(&mut self, mut sets: Vec<(Uuid, Uuid, AccountSet)>) -> Result<()> {
        while !sets.is_empty() {
            let rest = sets.split_off(sets.len().min(SET_CHUNK));
            self.run(upsert_accounts(std::mem::replace(&mut sets, rest))).await?;
        }
        Ok(())
    }
}

/// Account records per upsert statement (eight bound values each).
const SET_CHUNK: usize = 100;

/// Pairs per account-refresh statement (two bound values each).
const REFRESH_CHUNK: usize = 400;

#[async_trait]
impl Backend for SqliteStore {
    type Db = Sqlite;
    type Tx = Transaction<'static, Sqlite>;

    async fn read(&self) -> Result<Conn<Sqlite>> {
        self.reader.acquire().await.map(Conn).map_err(db_error)
    }

    async fn read_fresh(&self) -> Result<Conn<Sqlite>> {
        self.writer.acquire().await.map(Conn).map_err(db_error)
    }

    async fn begin(&self) -> Result<Self::Tx> {
        self.writer.begin().await.map_err(db_error)
    }
}

/// A bare connection runs queries too (inside a transaction the caller holds).
impl Exec<Sqlite> for SqliteConnection {
    fn conn(&mut self) -> &mut SqliteConnection {
        self
    }
}
