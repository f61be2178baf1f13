//! The one SQL layer: every query of the store is written once, here and in the modules beside
//! it, and runs on both backends.
//!
//! What a query module sees is small:
//!
//! - [`Query`]: SQL text with `?` placeholders (or `?N` to repeat the N-th value) and the values
//!   bound to them ([`Arg`]). A backend renders it with sqlx's `QueryBuilder::push_bind`, so
//!   placeholders come out as `?` on SQLite and `$n` on PostgreSQL, and each value is encoded
//!   the way that backend stores it: ids as TEXT and times as sortable RFC 3339 text on SQLite,
//!   `uuid`, `timestamptz` and `jsonb` on PostgreSQL. A literal `?` must therefore never appear
//!   in SQL text given to [`Query`] (PostgreSQL's JSON `?` operators stay in backend modules).
//! - [`RowGet`]: reads a column of a row as the domain type, whichever backend produced it.
//! - [`Exec`]: runs a query on a connection or a transaction; [`Backend`] hands out read
//!   connections and write transactions ([`WriteTx`]).
//!
//! What truly differs stays with each backend (`crate::sqlite`, `crate::postgres`): how a write
//! transaction records its change-feed rows and account records (PostgreSQL keeps the feed in
//! commit order under an advisory lock and wakes other processes by `NOTIFY`; SQLite has a
//! single writer), how operations are claimed (`SKIP LOCKED` against the single SQLite writer),
//! bulk inserts, how a SCIM filter reads JSON, and the migrations. Those are the hooks of
//! [`Backend`], [`WriteTx`] and [`Dialect`], and beside them of [`provisioning::ProvisioningHooks`],
//! [`bulk::BulkHooks`] and [`scim_filter::FilterDialect`].
//!
//! Why not sqlx's `Any` driver or an ORM: `Any` has no uuid, time or JSON types, and the SQL here
//! is plain enough that a query builder would make it harder to read, not easier.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
// `::directory`: the crate, not the module `directory` below.
use ::directory::{EventStatus, NewChange, Ownership, Page};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use uuid::Uuid;

use crate::{cursor, PageRequest, Result, StoreError, MAX_PAGE};

mod admins;
pub mod bulk;
pub mod directory;
mod entitlements;
pub mod health;
pub mod provisioning;
mod rates;
pub mod rows;
mod saml;
mod scim;
pub mod scim_filter;
mod sources;

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Id(Option<Uuid>),
    Text(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
    Json(Option<Value>),
    Bytes(Option<Vec<u8>>),
    /// A list of ids, for [`Dialect::push_in`] (PostgreSQL binds it as one `uuid[]`).
    Ids(Vec<Uuid>),
    /// A list of texts, for [`Dialect::push_in`].
    Texts(Vec<String>),
    /// A list of integers, for [`Dialect::push_in`].
    Ints(Vec<i64>),
}

/// A JSON document to bind (stored as TEXT on SQLite, `jsonb` on PostgreSQL).
#[derive(Debug, Clone)]
pub struct Json(pub Value);

macro_rules! arg_from {
    ($variant:ident, $t:ty, $conv:expr) => {
        impl From<$t> for Arg {
            fn from(v: $t) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(Some(($conv)(v)))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(v.map($conv))
            }
        }
    };
}

arg_from!(Id, Uuid, |v| v);
arg_from!(Id, &Uuid, |v: &Uuid| *v);
arg_from!(Text, String, |v| v);
arg_from!(Text, &String, |v: &String| v.clone());
arg_from!(Text, &str, |v: &str| v.to_owned());
arg_from!(Int, i64, |v| v);
arg_from!(Int, i32, i64::from);
arg_from!(Int, u32, i64::from);
arg_from!(Float, f64, |v| v);
arg_from!(Bool, bool, |v| v);
arg_from!(Time, DateTime<Utc>, |v| v);
arg_from!(Time, &DateTime<Utc>, |v: &DateTime<Utc>| *v);
arg_from!(Json, Json, |v: Json| v.0);
arg_from!(Bytes, Vec<u8>, |v| v);
arg_from!(Bytes, &[u8], |v: &[u8]| v.to_vec());

impl From<Vec<Uuid>> for Arg {
    fn from(v: Vec<Uuid>) -> Self {
        Arg::Ids(v)
    }
}

impl From<&[Uuid]> for Arg {
    fn from(v: &[Uuid]) -> Self {
        Arg::Ids(v.to_vec())
    }
}

impl From<Vec<String>> for Arg {
    fn from(v: Vec<String>) -> Self {
        Arg::Texts(v)
    }
}

impl From<Vec<i64>> for Arg {
    fn from(v: Vec<i64>) -> Self {
        Arg::Ints(v)
    }
}

/// One piece of a query's SQL: text, or a placeholder for the value at an index of
/// [`Query::args`].
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Sql(String),
    Arg(usize),
}

/// A statement and its values, written once for both backends (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Query {
    pieces: Vec<Piece>,
    args: Vec<Arg>,
    /// Placeholders met in the text so far, for `?` without a number.
    next: usize,
}

/// A new query from SQL text with `?`/`?N` placeholders; bind their values in order with
/// [`Query::bind`].
pub fn q(sql: impl AsRef<str>) -> Query {
    let mut query = Query::default();
    query.push(sql);
    query
}

impl Query {
    /// Appends SQL text (with placeholders, bound later in order).
    pub fn push(&mut self, sql: impl AsRef<str>) -> &mut Self {
        let sql = sql.as_ref();
        let mut text = String::new();
        let mut chars = sql.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c != '?' {
                text.push(c);
                continue;
            }
            let mut digits = String::new();
            while let Some(&(_, d)) = chars.peek() {
                if d.is_ascii_digit() {
                    digits.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            if !text.is_empty() {
                self.pieces.push(Piece::Sql(std::mem::take(&mut text)));
            }
            // `?N` is 1-based, counted from the first placeholder of the whole query.
            let index = match digits.parse::<usize>() {
                Ok(n) if n > 0 => n - 1,
                _ => {
                    self.next += 1;
                    self.next - 1
                }
            };
            self.pieces.push(Piece::Arg(index));
        }
        if !text.is_empty() {
            self.pieces.push(Piece::Sql(text));
        }
        self
    }

    /// Binds the value of the next placeholder.
    pub fn bind(mut self, v: impl Into<Arg>) -> Self {
        self.args.push(v.into());
        self
    }

    /// Binds the value of the next placeholder, in place.
    pub fn add(&mut self, v: impl Into<Arg>) -> &mut Self {
        self.args.push(v.into());
        self
    }

    /// Appends a placeholder with its value.
    pub fn push_bind(&mut self, v: impl Into<Arg>) -> &mut Self {
        self.push("?").add(v)
    }

    /// The pieces and values, for a backend to render.
    pub fn parts(&self) -> (&[Piece], &[Arg]) {
        (&self.pieces, &self.args)
    }

    /// The SQL text with `?` for every placeholder (for error messages and tests).
    pub fn sql(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Sql(s) => s.as_str(),
                Piece::Arg(_) => "?",
            })
            .collect()
    }
}

/// What is different in how each backend speaks SQL. Implemented for `sqlx::Sqlite` and
/// `sqlx::Postgres`.
#[async_trait]
pub trait Dialect: sqlx::Database<Row: RowGet> {
    /// `" FOR UPDATE"` where rows can be locked for the rest of a transaction (PostgreSQL);
    /// empty where the one writer holds the whole database (SQLite).
    const FOR_UPDATE: &'static str;
    /// `" FOR SHARE"` (PostgreSQL) or empty (SQLite).
    const FOR_SHARE: &'static str;
    /// The most values one statement may bind.
    const MAX_BINDS: usize;
    /// Case-insensitive `LIKE`: `ILIKE` on PostgreSQL; `LIKE` on SQLite, where it already
    /// ignores (ASCII) case.
    const ILIKE: &'static str;

    async fn fetch_all(c: &mut Self::Connection, q: Query) -> Result<Vec<Self::Row>>;
    async fn fetch_optional(c: &mut Self::Connection, q: Query) -> Result<Option<Self::Row>>;
    /// Runs a statement; how many rows it touched.
    async fn execute(c: &mut Self::Connection, q: Query) -> Result<u64>;

    /// Appends `column IN (...)` for a list bound as [`Arg::Ids`], [`Arg::Texts`] or
    /// [`Arg::Ints`]: one array value on PostgreSQL (`= ANY(?)`), one placeholder per element
    /// on SQLite. An empty list matches nothing.
    fn push_in(q: &mut Query, column: &str, list: Arg);

    /// Takes a lock held to the end of the transaction (`pg_advisory_xact_lock(a, b)`), for
    /// writers in several processes; nothing on SQLite, whose one writer holds the database.
    async fn advisory_lock(c: &mut Self::Connection, key: (i32, i32)) -> Result<()>;
}

/// Runs queries: a read connection ([`Conn`]) or a write transaction ([`WriteTx`]).
#[async_trait]
pub trait Exec<D: Dialect>: Send {
    fn conn(&mut self) -> &mut D::Connection;

    async fn all(&mut self, q: Query) -> Result<Vec<D::Row>> {
        D::fetch_all(self.conn(), q).await
    }

    async fn opt(&mut self, q: Query) -> Result<Option<D::Row>> {
        D::fetch_optional(self.conn(), q).await
    }

    /// Exactly one row; `NotFound` when there is none.
    async fn one(&mut self, q: Query) -> Result<D::Row> {
        D::fetch_optional(self.conn(), q).await?.ok_or(StoreError::NotFound)
    }

    /// Runs a statement; how many rows it touched.
    async fn run(&mut self, q: Query) -> Result<u64> {
        D::execute(self.conn(), q).await
    }
}

/// A read connection from a backend's pool.
pub struct Conn<D: Dialect>(pub PoolConnection<D>);

impl<D: Dialect> Exec<D> for Conn<D> {
    fn conn(&mut self) -> &mut D::Connection {
        &mut self.0
    }
}

/// A write transaction. Each backend records change-feed rows and wakes workers its own way
/// (see `crate::postgres` for why PostgreSQL defers them to the commit).
#[async_trait]
pub trait WriteTx<D: Dialect>: Exec<D> + Sized {
    /// Records a change-feed row for this transaction.
    async fn change(&mut self, change: NewChange) -> Result<()>;
    /// Attributes the changes recorded so far, and not yet attributed, to the audit entry `id`
    /// (account changes have none).
    async fn attribute_changes(&mut self, id: i64) -> Result<()>;
    /// Tells the workers (of every process) that operations may be runnable once committed.
    fn wake_operations(&mut self);
    async fn commit(self) -> Result<()>;
    /// Ends the transaction without writing, at once.
    async fn rollback(self) -> Result<()>;

    /// Locks one pair's account record for the rest of the transaction, before writing it
    /// here rather than at commit (PostgreSQL: an advisory lock on the pair's key; SQLite:
    /// nothing, its one writer holds the whole database).
    async fn lock_pair(&mut self, app: Uuid, user: Uuid) -> Result<()>;
    /// Derives the account record of a pair again from the operations of the pair (creating
    /// the record when missing): its status and last event are those of the newest open
    /// operation, else of the newest finished one that was not cancelled or rejected, else of
    /// the newest one; a record whose pair has no operation is left alone. SQLite does it now;
    /// PostgreSQL at commit, under the pair's lock, so that it sees every committed operation.
    async fn refresh_account(&mut self, app: Uuid, user: Uuid) -> Result<()> {
        self.refresh_accounts(&[(app, user)]).await
    }
    /// [`WriteTx::refresh_account`] for many pairs `(app, user)` at once.
    async fn refresh_accounts(&mut self, pairs: &[(Uuid, Uuid)]) -> Result<()>;
    /// Writes an account record's remote id, ownership and values (see [`AccountSet`]).
    /// SQLite does it now; PostgreSQL at commit, under the pair's lock and before the pairs are
    /// refreshed.
    async fn set_account(&mut self, app: Uuid, user: Uuid, set: AccountSet) -> Result<()>;
    /// [`WriteTx::set_account`] for many records `(app, user, set)`, in order.
    async fn set_accounts(&mut self, sets: Vec<(Uuid, Uuid, AccountSet)>) -> Result<()> {
        for (app, user, set) in sets {
            self.set_account(app, user, set).await?;
        }
        Ok(())
    }
}

/// What a transaction writes to an account record ([`WriteTx::set_account`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSet {
    pub remote_id: Option<String>,
    pub ownership: Option<Ownership>,
    pub last_applied: Option<Value>,
    /// For a new record: its status and last event. An existing record keeps its own (they
    /// are derived from the operations when the pair is refreshed).
    pub status: EventStatus,
    pub last_event_id: Option<Uuid>,
}

/// Upserts account records as [`WriteTx::set_account`] says, one row per `(app, user, set)` (the
/// statement both backends run).
pub fn upsert_accounts(sets: Vec<(Uuid, Uuid, AccountSet)>) -> Query {
    let now = ::directory::now();
    let mut query = q("INSERT INTO accounts (app_id, user_id, remote_id, ownership, status, last_applied, \
                       last_event_id, updated_at) VALUES ");
    for (i, (app, user, set)) in sets.into_iter().enumerate() {
        query
            .push(if i == 0 { "(?, ?, ?, ?, ?, ?, ?, ?)" } else { ", (?, ?, ?, ?, ?, ?, ?, ?)" })
            .add(app)
            .add(user)
            .add(set.remote_id)
            .add(set.ownership.map(Ownership::as_str))
            .add(set.status.as_str())
            .add(set.last_applied.map(Json))
            .add(set.last_event_id)
            .add(now);
    }
    query.push(
        " ON CONFLICT (app_id, user_id) DO UPDATE SET remote_id = excluded.remote_id, \
         ownership = excluded.ownership, last_applied = excluded.last_applied, updated_at = excluded.updated_at",
    );
    query
}

/// A store backend: where read connections and write transactions come from.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    type Db: Dialect;
    type Tx: WriteTx<Self::Db>;

    /// A connection for reads (on SQLite, one of the read-only connections: it may not yet see
    /// a write committed a moment ago by another task).
    async fn read(&self) -> Result<Conn<Self::Db>>;
    /// A connection for reads that must see every committed write (SQLite: the writer).
    async fn read_fresh(&self) -> Result<Conn<Self::Db>>;
    async fn begin(&self) -> Result<Self::Tx>;
    /// A transaction of the engine's own queue (plans, claims, outcomes): PostgreSQL commits it
    /// without waiting for the disk (see `PostgresStore::begin_engine`).
    async fn begin_engine(&self) -> Result<Self::Tx> {
        self.begin().await
    }

    /// Answers when the database is reachable (`Unavailable` otherwise): see
    /// [`Store::health`](crate::Store::health).
    async fn health(&self) -> Result<()> {
        ping(self).await
    }

    /// Wake-ups from other processes sharing the database: see
    /// [`Store::wakeups`](crate::Store::wakeups). None by default.
    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<crate::Wakeup>> {
        None
    }
}

/// `SELECT 1` on a read connection; any failure is `Unavailable` (with the error's chain).
pub async fn ping<B: Backend + ?Sized>(b: &B) -> Result<()> {
    let unavailable = |e: StoreError| StoreError::Unavailable(e.chain());
    b.read().await.map_err(unavailable)?.run(q("SELECT 1")).await.map_err(unavailable)?;
    Ok(())
}

/// Reads a column as a domain type, whichever backend produced the row.
pub trait RowGet {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn id(&self, col: &str) -> Result<Uuid>;
    fn opt_id(&self, col: &str) -> Result<Option<Uuid>>;
    fn time(&self, col: &str) -> Result<DateTime<Utc>>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>>;
    fn opt_value(&self, col: &str) -> Result<Option<Value>>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>>;

    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        self.opt_bytes(col)?.ok_or_else(|| null_in(col))
    }

    fn value(&self, col: &str) -> Result<Value> {
        self.opt_value(col)?.ok_or_else(|| null_in(col))
    }

    /// A JSON column as `T`.
    fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T> {
        serde_json::from_value(self.value(col)?).map_err(|e| StoreError::Backend(format!("bad JSON in {col}: {e}")))
    }

    fn opt_json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        self.opt_value(col)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StoreError::Backend(format!("bad JSON in {col}: {e}")))
    }

    /// A text column parsed by `parse` (an enum's stored name).
    fn parsed<T>(&self, col: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T> {
        let s = self.text(col)?;
        parse(&s).ok_or_else(|| StoreError::Backend(format!("bad {col} {s:?}")))
    }
}

fn null_in(col: &str) -> StoreError {
    StoreError::Backend(format!("unexpected NULL in {col}"))
}

/// Maps a database error: constraint violations to what they mean, an unreachable server to
/// `Unavailable`, anything else to `Database` with the driver's error as its source.
pub fn db_error(e: sqlx::Error) -> StoreError {
    if is_unreachable(&e) {
        return StoreError::Unreachable(Box::new(e));
    }
    match e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            // PostgreSQL names the constraint; SQLite names the columns in its message.
            let name = db.constraint().map(str::to_owned).unwrap_or_else(|| db.message().to_owned());
            let field = if name.contains("username_key") {
                "username"
            } else if name.contains("name_key") || name.contains("attribute_defs") {
                "name"
            } else {
                "id"
            };
            StoreError::Duplicate { field }
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::MissingReference { field: "reference" }
        }
        other => StoreError::Database(Box::new(other)),
    }
}

/// Whether an error means the server cannot be reached (rather than a refused statement).
pub(crate) fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // PostgreSQL class 08: connection exception; 57P01-57P03: the server is shutting
            // down or starting.
            let code = db.code().unwrap_or_default();
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }
        _ => false,
    }
}

/// A time as SQLite stores it: RFC 3339 in UTC with microseconds, so that text order is time
/// order.
pub fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Serialises a value for a JSON column.
pub fn to_json<T: serde::Serialize>(v: &T) -> Result<Json> {
    serde_json::to_value(v).map(Json).map_err(|e| StoreError::Backend(e.to_string()))
}

/// A value for an audit entry's before/after (none when it cannot be serialised).
pub fn to_value<T: serde::Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

/// `%text%` for LIKE, with LIKE's wildcards escaped (ESCAPE '\').
pub fn like_pattern(q: &str) -> String {
    let mut out = String::from("%");
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// How many rows a page reads: its limit, plus one to know whether another page follows.
pub fn limit_of(page: &PageRequest) -> i64 {
    i64::from(page.limit.clamp(1, MAX_PAGE))
}

/// A page cursor's id component.
pub fn cursor_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| StoreError::InvalidCursor)
}

/// Cuts the extra row fetched to know whether another page follows.
pub fn paginate<T>(mut items: Vec<T>, page: &PageRequest, key: impl Fn(&T) -> Vec<String>) -> Page<T> {
    let limit = page.limit.clamp(1, MAX_PAGE) as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| cursor::encode(&key(last)))
    } else {
        None
    };
    Page { items, next_cursor }
}

/// `VersionConflict` unless the caller's expected version (if any) is the current one.
pub fn check_version(current: i64, expected: Option<i64>) -> Result<()> {
    match expected {
        Some(v) if v != current => Err(StoreError::VersionConflict { current }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order_and_can_repeat() {
        let mut query = q("SELECT a FROM t WHERE b = ? AND c = ?1 AND d = ?").bind(1i64).bind("x");
        query.push(" AND e = ?").add(true);
        let (pieces, args) = query.parts();
        let idx: Vec<usize> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Arg(i) => Some(*i),
                Piece::Sql(_) => None,
            })
            .collect();
        assert_eq!(idx, vec![0, 0, 1, 2]);
        assert_eq!(args.len(), 3);
        assert_eq!(query.sql(), "SELECT a FROM t WHERE b = ? AND c = ? AND d = ? AND e = ?");
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("A_b%"), "%a\\_b\\%%");
    }
}
