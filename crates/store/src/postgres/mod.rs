//! The PostgreSQL implementation of [`Store`], for several `provisioner` processes sharing one
//! database.
//!
//! What differs from the embedded store, and why:
//!
//! - **The change feed is consumed in commit order.** A reader follows the feed with a cursor
//!   (`seq > after`), so a row must never become visible after a row with a higher `seq`: the
//!   reader would have moved past it. Identity values are handed out when a row is inserted,
//!   not when its transaction commits, so two concurrent writers could commit out of order.
//!   Every transaction therefore inserts its change rows at the very end, just before
//!   `COMMIT`, while holding a transaction-scoped advisory lock ([`CHANGE_FEED_LOCK`]):
//!   `seq`s are taken only under the lock, and the lock is released only after the commit is
//!   visible (PostgreSQL ends a transaction's visibility before it releases its locks), so the
//!   order of `seq` is the order of commits. The lock is held only for those few inserts and
//!   the commit, and its holder never waits for any other lock, so it cannot deadlock.
//! - **Account records are written at commit, pair by pair, in a fixed order.** The status of
//!   an account record is derived from the operations of its (user, app) pair. Every
//!   transaction that touches a pair records it in [`Tx`]; at commit the pairs are locked
//!   (advisory locks, sorted by key, so never in crossing orders) and their records written
//!   from a fresh read, so that concurrent transactions on one pair serialise and the last
//!   one sees the others' operations.
//! - **Claims are serialised per app** and bounded by the app's `max_concurrency` across every
//!   process (see `claim_operations`).
//! - **Wake-ups** travel by `LISTEN`/`NOTIFY` (see [`PostgresStore::wakeups`](crate::Store::wakeups)).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{
    Actor, App, AttributeDef, AttributeType, AuditEntry, Change, ChangeKind, NewChange, Page, Role, User, UserStatus,
};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{cursor, AuditQuery, NameQuery, Result, Store, StoreError, TokenRecord, UserQuery, Wakeup};

pub(crate) use crate::sql::rows::*;
pub(crate) use crate::sql::{
    check_version, cursor_uuid, db_error as backend, like_pattern, limit_of, paginate, AccountSet,
};

mod bulk;
mod dialect;
mod provisioning;
mod scim;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// `pg_advisory_xact_lock(CHANGE_FEED_LOCK.0, CHANGE_FEED_LOCK.1)`: held while change rows are
/// inserted and committed (two-key form, apart from the one-key pair locks).
const CHANGE_FEED_LOCK: (i32, i32) = (0x7072_6f76, 1);
/// First key of the per-app claim lock; the second is `hashtext(app_id::text)`.
const CLAIM_LOCK: i32 = 0x7072_6f76;

/// The channel told about new rows in the change feed.
pub const CHANGES_CHANNEL: &str = "provisioner_changes";
/// The channel told when operations may have become runnable.
pub const OPERATIONS_CHANNEL: &str = "provisioner_operations";

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// Statements running longer are cancelled by the server (`statement_timeout`); `None`
    /// keeps the server's setting.
    pub statement_timeout: Option<Duration>,
    /// How long a caller waits for a connection before the store answers `Unavailable`.
    pub acquire_timeout: Duration,
    /// How long [`PostgresStore::connect`] keeps retrying (with backoff) to reach the server.
    pub connect_timeout: Duration,
    /// Run a `LISTEN` task that forwards notifications to [`Store::wakeups`].
    pub listen: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            statement_timeout: Some(Duration::from_secs(30)),
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            listen: true,
        }
    }
}

/// The shared store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    acquire_timeout: Duration,
    wakeups: broadcast::Sender<Wakeup>,
    listener: Option<Arc<ListenerTask>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStore")
    }
}

/// Stops the `LISTEN` task when the last clone of the store goes.
struct ListenerTask(tokio::task::JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn get<'r, T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(row: &'r PgRow, col: &str) -> Result<T> {
    row.try_get(col).map_err(backend)
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(crate) fn to_value<T: serde::Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

/// The account work of one pair at commit.
#[derive(Debug, Default)]
struct PairWork {
    sets: Vec<AccountSet>,
    refresh: bool,
}

/// A write transaction. Change rows, account-record writes and notifications are collected
/// and done at [`Tx::commit`], in an order that keeps the change feed in commit order and
/// cannot deadlock (see the module documentation).
pub struct Tx {
    tx: sqlx::Transaction<'static, Postgres>,
    /// Changes to write at commit, each with the audit entry it is attributed to.
    changes: Vec<(NewChange, Option<i64>)>,
    pairs: BTreeMap<(i64, Uuid, Uuid), PairWork>,
    wake_operations: bool,
}

/// A key for the advisory lock of a pair, and the order pairs are locked in.
fn pair_key(app: Uuid, user: Uuid) -> i64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(app.as_bytes());
    h.update(user.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

impl Tx {
    pub(crate) fn c(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Records a change-feed row, written at commit.
    pub(crate) fn change(&mut self, change: NewChange) {
        self.changes.push((change, None));
    }

    /// The account work of a pair at commit.
    fn pair(&mut self, app: Uuid, user: Uuid) -> &mut PairWork {
        self.pairs.entry((pair_key(app, user), app, user)).or_default()
    }

    /// Has the account record of a pair derived again from its operations at commit.
    pub(crate) fn refresh(&mut self, app: Uuid, user: Uuid) {
        self.pair(app, user).refresh = true;
    }

    /// Tells the workers (of every process) that operations may be runnable.
    pub(crate) fn wake_operations(&mut self) {
        self.wake_operations = true;
    }

    /// Locks one pair's account record for the rest of the transaction.
    pub(crate) async fn lock_pair(&mut self, app: Uuid, user: Uuid) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(pair_key(app, user))
            .execute(self.c())
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Ends the transaction without writing, at once: a dropped transaction is rolled back
    /// only when its connection is next used, and keeps its row locks until then (which
    /// `SKIP LOCKED` claims would step over).
    pub(crate) async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(backend)
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        let pairs = std::mem::take(&mut self.pairs);
        if !pairs.is_empty() {
            // Sorted by lock key (the map's order): two transactions never take pair locks in
            // crossing orders. `unnest` yields the keys, and the locks are taken, in array order.
            let mut keys: Vec<i64> = pairs.keys().map(|k| k.0).collect();
            keys.dedup();
            sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS t(k)")
                .bind(&keys)
                .execute(self.c())
                .await
                .map_err(backend)?;
            let mut refresh = (Vec::new(), Vec::new());
            for ((_, app, user), work) in pairs {
                for set in work.sets {
                    crate::sql::Exec::run(&mut self, crate::sql::upsert_accounts(vec![(app, user, set)])).await?;
                }
                if work.refresh {
                    refresh.0.push(app);
                    refresh.1.push(user);
                }
            }
            if !refresh.0.is_empty() {
                refresh_accounts(&mut self, &refresh.0, &refresh.1).await?;
            }
        }
        if !self.changes.is_empty() {
            let changes = std::mem::take(&mut self.changes);
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(CHANGE_FEED_LOCK.0)
                .bind(CHANGE_FEED_LOCK.1)
                .execute(self.c())
                .await
                .map_err(backend)?;
            let at = directory::now();
            // One statement for all of them, in order (the feed's seq follows the array order).
            let kinds: Vec<&str> = changes.iter().map(|c| c.0.kind.as_str()).collect();
            let users: Vec<Option<Uuid>> = changes.iter().map(|c| c.0.user_id).collect();
            let roles: Vec<Option<Uuid>> = changes.iter().map(|c| c.0.role_id).collect();
            let apps: Vec<Option<Uuid>> = changes.iter().map(|c| c.0.app_id).collect();
            let audits: Vec<i64> = changes.iter().map(|c| c.1.unwrap_or(0)).collect();
            sqlx::query(
                "INSERT INTO changes (at, kind, user_id, role_id, app_id, audit_id) \
                 SELECT $1, k, u, r, a, au FROM unnest($2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::bigint[]) \
                 WITH ORDINALITY AS t(k, u, r, a, au, n) ORDER BY n",
            )
            .bind(at)
            .bind(&kinds)
            .bind(&users)
            .bind(&roles)
            .bind(&apps)
            .bind(&audits)
            .execute(self.c())
            .await
            .map_err(backend)?;
            sqlx::query("SELECT pg_notify($1, '')").bind(CHANGES_CHANNEL).execute(self.c()).await.map_err(backend)?;
        }
        if self.wake_operations {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OPERATIONS_CHANNEL)
                .execute(self.c())
                .await
                .map_err(backend)?;
        }
        self.tx.commit().await.map_err(backend)
    }
}

/// Derives the account records of the pairs `(apps[i], users[i])` again from their operations
/// (see [`WriteTx::refresh_account`](crate::sql::WriteTx::refresh_account)), in one statement:
/// each pair joined laterally to the operation its record follows. Run by [`Tx::commit`] under
/// the pairs' locks.
async fn refresh_accounts(tx: &mut Tx, apps: &[Uuid], users: &[Uuid]) -> Result<()> {
    sqlx::query(
        "INSERT INTO accounts (app_id, user_id, status, last_event_id, updated_at) \
         SELECT p.app_id, p.user_id, o.status, o.id, $3 \
         FROM unnest($1::uuid[], $2::uuid[]) AS p(app_id, user_id) \
         CROSS JOIN LATERAL (SELECT o.status, o.id FROM operations o \
           WHERE o.user_id = p.user_id AND o.app_id = p.app_id \
           ORDER BY CASE WHEN o.state IN ('queued', 'awaiting_approval', 'running') THEN 0 \
                WHEN o.status IN ('cancelled', 'rejected') THEN 2 ELSE 1 END, o.seq DESC LIMIT 1) o \
         ON CONFLICT (app_id, user_id) DO UPDATE SET status = excluded.status, \
         last_event_id = excluded.last_event_id, updated_at = excluded.updated_at, \
         rejected = CASE WHEN excluded.status IN ('pending', 'provisioning', 'modifying', 'deleting', 'held') \
           THEN NULL ELSE accounts.rejected END",
    )
    .bind(apps)
    .bind(users)
    .bind(directory::now())
    .execute(tx.c())
    .await
    .map_err(backend)?;
    Ok(())
}

/// `host:port` of a URL, for messages.
fn server_of(opts: &PgConnectOptions) -> String {
    format!("{}:{}", opts.get_host(), opts.get_port())
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`), retrying with
    /// backoff for up to `options.connect_timeout`, and applies pending migrations.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self> {
        let mut conn = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?
            .application_name("provisioner");
        if let Some(t) = options.statement_timeout {
            conn = conn.options([("statement_timeout", format!("{}ms", t.as_millis().max(1)))]);
        }
        let server = server_of(&conn);
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut backoff = Duration::from_millis(100);
        let pool = loop {
            let attempt = PgPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(options.acquire_timeout)
                .connect_with(conn.clone())
                .await;
            match attempt {
                Ok(pool) => break pool,
                Err(e) if crate::sql::is_unreachable(&e) && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(%server, error = %e, retry_in = ?backoff, "cannot reach PostgreSQL yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) if crate::sql::is_unreachable(&e) => {
                    return Err(StoreError::Unavailable(format!("cannot reach PostgreSQL at {server}: {e}")))
                }
                Err(e) => {
                    return Err(StoreError::Unavailable(format!("cannot connect to PostgreSQL at {server}: {e}")))
                }
            }
        };
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        backfill_email_keys(&mut crate::sql::Conn(pool.acquire().await.map_err(backend)?)).await?;
        let (wakeups, _) = broadcast::channel(64);
        let listener = if options.listen {
            // A pool of its own: the LISTEN connection is held for good, and must not take a
            // connection from the statements' pool.
            let listen_pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(options.acquire_timeout)
                .connect_lazy_with(conn);
            let task = tokio::spawn(listen(listen_pool, wakeups.clone()));
            Some(Arc::new(ListenerTask(task)))
        } else {
            None
        };
        Ok(Self { pool, acquire_timeout: options.acquire_timeout, wakeups, listener })
    }

    /// Closes the pool, waiting for running statements, and stops listening.
    pub async fn close(&self) {
        if let Some(listener) = &self.listener {
            listener.0.abort();
        }
        self.pool.close().await;
    }

    pub(crate) async fn begin(&self) -> Result<Tx> {
        let tx = self.pool.begin().await.map_err(backend)?;
        Ok(Tx { tx, changes: Vec::new(), pairs: BTreeMap::new(), wake_operations: false })
    }

    /// A transaction of the engine's own queue (plans, claims, outcomes), whose commit does not
    /// wait for the WAL to reach the disk (`synchronous_commit = off` for it alone). What such
    /// a commit could lose, and only if PostgreSQL itself crashes within a fraction of a second,
    /// is recovered by the engine: a lost plan is planned again from the change feed (its cursor
    /// moves in the same transaction) or at the next reconciliation, a lost claim leaves the operation queued, and a lost
    /// outcome leaves it running until its lease ends; either way it runs again, and the
    /// lookup a create does first (by our externalId on a retry) finds the account the lost
    /// attempt made instead of making a second one. Writes from people and the API (the
    /// directory, settings, approvals) keep waiting for the disk.
    pub(crate) async fn begin_engine(&self) -> Result<Tx> {
        let mut tx = self.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off").execute(tx.c()).await.map_err(backend)?;
        Ok(tx)
    }

    /// One row by id, locked for the rest of the transaction; `NotFound` when missing.
    async fn row_in<T>(tx: &mut Tx, table: &str, columns: &str, id: Uuid, map: fn(&PgRow) -> Result<T>) -> Result<T> {
        let sql = format!("SELECT {columns} FROM {table} WHERE id = $1 FOR UPDATE");
        let row =
            sqlx::query(&sql).bind(id).fetch_optional(tx.c()).await.map_err(backend)?.ok_or(StoreError::NotFound)?;
        map(&row)
    }

    pub(crate) async fn user_in(tx: &mut Tx, id: Uuid) -> Result<User> {
        Self::row_in(tx, "users", USER_COLUMNS, id, user_from_row).await
    }

    async fn role_in(tx: &mut Tx, id: Uuid) -> Result<Role> {
        Self::row_in(tx, "roles", ROLE_COLUMNS, id, role_from_row).await
    }

    pub(crate) async fn app_in(tx: &mut Tx, id: Uuid) -> Result<App> {
        Self::row_in(tx, "apps", APP_COLUMNS, id, app_from_row).await
    }

    async fn ids_in(tx: &mut Tx, sql: &str, id: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(sql).bind(id).fetch_all(tx.c()).await.map_err(backend)?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    /// Adds or removes a link row (role member, role app) with its change and audit entry.
    async fn link(&self, link: Link, role: Uuid, other: Uuid, add: bool, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin().await?;
        Self::role_in(&mut tx, role).await?;
        let (table, column, change, noun) = match link {
            Link::User => {
                let user = Self::user_in(&mut tx, other).await?;
                if add && user.status == UserStatus::Deleted {
                    return Err(StoreError::NotFound);
                }
                ("role_users", "user_id", NewChange::membership(role, other), "user")
            }
            Link::App => {
                Self::app_in(&mut tx, other).await?;
                ("role_apps", "app_id", NewChange::role_app(role, other), "app")
            }
        };
        let done = if add {
            let sql = format!(
                "INSERT INTO {table} (role_id, {column}, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            );
            sqlx::query(&sql).bind(role).bind(other).bind(directory::now()).execute(tx.c()).await
        } else {
            let sql = format!("DELETE FROM {table} WHERE role_id = $1 AND {column} = $2");
            sqlx::query(&sql).bind(role).bind(other).execute(tx.c()).await
        }
        .map_err(backend)?
        .rows_affected()
            > 0;
        if done {
            tx.change(change);
            let link_value = serde_json::json!({ "role_id": role, format!("{noun}_id"): other });
            let action = format!("role.{}_{noun}", if add { "add" } else { "remove" });
            let (before, after) = if add { (None, Some(link_value)) } else { (Some(link_value), None) };
            record_audit(
                &mut tx,
                actor,
                AuditRecord { action: &action, target_type: "role", target_id: role.to_string(), before, after },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }
}

/// Forwards `NOTIFY`s on the two channels to `tx`, reconnecting when the connection drops (and
/// then waking everyone up, since notifications may have been missed meanwhile).
async fn listen(pool: PgPool, tx: broadcast::Sender<Wakeup>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN on PostgreSQL; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener.listen_all([CHANGES_CHANNEL, OPERATIONS_CHANNEL]).await {
            tracing::warn!(error = %e, "cannot LISTEN on PostgreSQL; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(200);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let wakeup = if n.channel() == CHANGES_CHANNEL { Wakeup::Changes } else { Wakeup::Operations };
                    let _ = tx.send(wakeup);
                }
                Ok(None) => {
                    // The connection was lost (and re-established): anything may have happened.
                    let _ = tx.send(Wakeup::Changes);
                    let _ = tx.send(Wakeup::Operations);
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    let _ = tx.send(Wakeup::Changes);
                    let _ = tx.send(Wakeup::Operations);
                    break;
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Link {
    User,
    App,
}

/// Lists roles or apps by name, with text search and keyset pagination.
async fn list_named(pool: &PgPool, table: &str, columns: &str, query: &NameQuery) -> Result<Vec<PgRow>> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!("SELECT {columns} FROM {table} WHERE 1 = 1"));
    if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
        qb.push(" AND name_key LIKE ").push_bind(like_pattern(q)).push(" ESCAPE '\\'");
    }
    if let Some(c) = &query.page.cursor {
        let key = cursor::decode(c, 2)?;
        qb.push(" AND (name_key, id) > (")
            .push_bind(key[0].clone())
            .push(", ")
            .push_bind(cursor_uuid(&key[1])?)
            .push(")");
    }
    qb.push(" ORDER BY name_key, id LIMIT ").push_bind(limit_of(&query.page) + 1);
    qb.build().fetch_all(pool).await.map_err(backend)
}

#[async_trait]
impl Store for PostgresStore {
    async fn health(&self) -> Result<()> {
        let wait = self.acquire_timeout.min(Duration::from_secs(3));
        match tokio::time::timeout(wait, sqlx::query("SELECT 1").execute(&self.pool)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Unavailable(format!("no answer from PostgreSQL within {wait:?}"))),
        }
    }

    fn wakeups(&self) -> Option<broadcast::Receiver<Wakeup>> {
        self.listener.as_ref().map(|_| self.wakeups.subscribe())
    }

    async fn count_tokens(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE revoked_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        get(&row, "n")
    }

    async fn create_token(&self, token: &TokenRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO api_tokens (id, name, lookup, hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token.id)
            .bind(&token.name)
            .bind(&token.lookup)
            .bind(&token.hash)
            .bind(token.created_at)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        let after = serde_json::json!({"id": token.id, "name": token.name, "created_at": token.created_at});
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "token.create",
                target_type: "token",
                target_id: token.id.to_string(),
                before: None,
                after: Some(after),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn find_token_by_lookup(&self, lookup: &str) -> Result<Option<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE lookup = $1");
        let row = sqlx::query(&sql).bind(lookup).fetch_optional(&self.pool).await.map_err(backend)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE revoked_at IS NULL ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: Uuid, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let now = directory::now();
        let row =
            sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING name")
                .bind(now)
                .bind(id)
                .fetch_optional(tx.c())
                .await
                .map_err(backend)?
                .ok_or(StoreError::NotFound)?;
        let name: String = get(&row, "name")?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "token.revoke",
                target_type: "token",
                target_id: id.to_string(),
                before: None,
                after: Some(serde_json::json!({"name": name, "revoked_at": now})),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn token_used(&self, id: Uuid, lookup: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET lookup = $1, last_used_at = $2 WHERE id = $3")
            .bind(lookup)
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list_attribute_defs(&self) -> Result<Vec<AttributeDef>> {
        let rows = sqlx::query("SELECT name, kind, description, created_at FROM attribute_defs ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let kind: String = get(r, "kind")?;
                Ok(AttributeDef {
                    name: get(r, "name")?,
                    kind: AttributeType::parse(&kind).ok_or_else(|| StoreError::Backend(format!("bad kind {kind}")))?,
                    description: get(r, "description")?,
                    created_at: get(r, "created_at")?,
                })
            })
            .collect()
    }

    async fn create_attribute_def(&self, def: &AttributeDef, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO attribute_defs (name, kind, description, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&def.name)
            .bind(def.kind.as_str())
            .bind(&def.description)
            .bind(def.created_at)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "attribute.create",
                target_type: "attribute",
                target_id: def.name.clone(),
                before: None,
                after: to_value(def),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn create_user(&self, user: &User, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        // A refused write ends its transaction at once: it may hold the e-mail lock.
        if let Err(e) = insert_user_row(tx.c(), user, None, false).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.change(NewChange::user(user.id));
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "user.create",
                target_type: "user",
                target_id: user.id.to_string(),
                before: None,
                after: to_value(user),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn get_user(&self, id: Uuid) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await.map_err(backend)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Page<User>> {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!("SELECT {USER_COLUMNS} FROM users WHERE "));
        match query.status {
            Some(s) => qb.push("status = ").push_bind(s.as_str()),
            None => qb.push("status <> 'deleted'"),
        };
        if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
            let pat = like_pattern(q);
            qb.push(" AND (");
            for (i, col) in ["username_key", "email", "first_name", "last_name", "display_name"].iter().enumerate() {
                if i > 0 {
                    qb.push(" OR ");
                }
                qb.push(format!("{col} ILIKE ")).push_bind(pat.clone()).push(" ESCAPE '\\'");
            }
            qb.push(")");
        }
        if let Some(role) = query.role {
            qb.push(" AND EXISTS (SELECT 1 FROM role_users ru WHERE ru.user_id = users.id AND ru.role_id = ")
                .push_bind(role)
                .push(")");
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 2)?;
            qb.push(" AND (username_key, id) > (")
                .push_bind(key[0].clone())
                .push(", ")
                .push_bind(cursor_uuid(&key[1])?)
                .push(")");
        }
        qb.push(" ORDER BY username_key, id LIMIT ").push_bind(limit_of(&query.page) + 1);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        let users = rows.iter().map(user_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(users, &query.page, |u| vec![User::username_key(&u.username), u.id.to_string()]))
    }

    async fn users_by_email(&self, email: &str) -> Result<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email_key = $1 AND status <> 'deleted' ORDER BY username_key, id"
        );
        let rows = sqlx::query(&sql).bind(User::email_key(email)).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn email_conflicts(&self) -> Result<Vec<crate::EmailConflict>> {
        let sql = format!(
            "SELECT email_key AS conflict_key, {USER_COLUMNS} FROM users WHERE status <> 'deleted' AND email_key IN \
             (SELECT email_key FROM users WHERE status <> 'deleted' AND email_key IS NOT NULL \
              GROUP BY email_key HAVING COUNT(*) > 1) ORDER BY email_key, username_key, id"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await.map_err(backend)?;
        let rows = rows.iter().map(|row| Ok((get(row, "conflict_key")?, user_from_row(row)?)));
        Ok(crate::EmailConflict::group(rows.collect::<Result<Vec<_>>>()?))
    }

    async fn update_user(&self, user: &User, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::user_in(&mut tx, user.id).await?;
        if before.status == UserStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        check_version(before.version, Some(expected_version))?;
        // A refused write ends its transaction at once: it may hold the e-mail lock.
        if let Err(e) = write_user_row(tx.c(), user).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.change(NewChange::user(user.id));
        let action = if before.status != user.status {
            match user.status {
                UserStatus::Suspended => "user.suspend",
                _ => "user.reactivate",
            }
        } else {
            "user.update"
        };
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action,
                target_type: "user",
                target_id: user.id.to_string(),
                before: to_value(&before),
                after: to_value(user),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn delete_user(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<User> {
        let mut tx = self.begin().await?;
        let before = Self::user_in(&mut tx, id).await?;
        if before.status == UserStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        check_version(before.version, expected_version)?;
        let after = User {
            status: UserStatus::Deleted,
            updated_at: directory::now(),
            version: before.version + 1,
            ..before.clone()
        };
        sqlx::query("UPDATE users SET status = 'deleted', updated_at = $1, version = $2 WHERE id = $3")
            .bind(after.updated_at)
            .bind(after.version)
            .bind(id)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        let roles =
            Self::ids_in(&mut tx, "DELETE FROM role_users WHERE user_id = $1 RETURNING role_id AS id", id).await?;
        let mut roles = roles;
        roles.sort();
        for role in roles {
            tx.change(NewChange::membership(role, id));
        }
        tx.change(NewChange::user(id));
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "user.delete",
                target_type: "user",
                target_id: id.to_string(),
                before: to_value(&before),
                after: to_value(&after),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn create_role(&self, role: &Role, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO roles (id, name, name_key, description, created_at, updated_at, version, pushable) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(role.id)
        .bind(&role.name)
        .bind(role.name.to_lowercase())
        .bind(&role.description)
        .bind(role.created_at)
        .bind(role.updated_at)
        .bind(role.version)
        .bind(role.pushable)
        .execute(tx.c())
        .await
        .map_err(backend)?;
        tx.change(NewChange::role(role.id));
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "role.create",
                target_type: "role",
                target_id: role.id.to_string(),
                before: None,
                after: to_value(role),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn get_role(&self, id: Uuid) -> Result<Option<Role>> {
        let sql = format!("SELECT {ROLE_COLUMNS} FROM roles WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await.map_err(backend)?;
        row.as_ref().map(role_from_row).transpose()
    }

    async fn list_roles(&self, query: &NameQuery) -> Result<Page<Role>> {
        let rows = list_named(&self.pool, "roles", ROLE_COLUMNS, query).await?;
        let roles = rows.iter().map(role_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(roles, &query.page, |r| vec![r.name.to_lowercase(), r.id.to_string()]))
    }

    async fn update_role(&self, role: &Role, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::role_in(&mut tx, role.id).await?;
        check_version(before.version, Some(expected_version))?;
        sqlx::query(
            "UPDATE roles SET name = $1, name_key = $2, description = $3, updated_at = $4, version = $5, pushable = $7 \
             WHERE id = $6",
        )
        .bind(&role.name)
        .bind(role.name.to_lowercase())
        .bind(&role.description)
        .bind(role.updated_at)
        .bind(role.version)
        .bind(role.id)
        .bind(role.pushable)
        .execute(tx.c())
        .await
        .map_err(backend)?;
        tx.change(NewChange::role(role.id));
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "role.update",
                target_type: "role",
                target_id: role.id.to_string(),
                before: to_value(&before),
                after: to_value(role),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn delete_role(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::role_in(&mut tx, id).await?;
        check_version(before.version, expected_version)?;
        let users =
            Self::ids_in(&mut tx, "SELECT user_id AS id FROM role_users WHERE role_id = $1 ORDER BY user_id", id)
                .await?;
        let apps =
            Self::ids_in(&mut tx, "SELECT app_id AS id FROM role_apps WHERE role_id = $1 ORDER BY app_id", id).await?;
        sqlx::query("DELETE FROM roles WHERE id = $1").bind(id).execute(tx.c()).await.map_err(backend)?;
        // Members lose what the role granted: each of them is a change for the engine.
        for user in &users {
            tx.change(NewChange::membership(id, *user));
        }
        for app in &apps {
            tx.change(NewChange::role_app(id, *app));
        }
        tx.change(NewChange::role(id));
        let mut before_value = to_value(&before).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut before_value {
            map.insert("user_ids".into(), serde_json::json!(users));
            map.insert("app_ids".into(), serde_json::json!(apps));
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "role.delete",
                target_type: "role",
                target_id: id.to_string(),
                before: Some(before_value),
                after: None,
            },
        )
        .await?;
        tx.commit().await
    }

    async fn add_role_user(&self, role: Uuid, user: Uuid, actor: &Actor) -> Result<bool> {
        self.link(Link::User, role, user, true, actor).await
    }

    async fn remove_role_user(&self, role: Uuid, user: Uuid, actor: &Actor) -> Result<bool> {
        self.link(Link::User, role, user, false, actor).await
    }

    async fn roles_of_user(&self, user: Uuid) -> Result<Vec<Role>> {
        let sql = format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE id IN (SELECT role_id FROM role_users WHERE user_id = $1) \
             ORDER BY name_key"
        );
        let rows = sqlx::query(&sql).bind(user).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(role_from_row).collect()
    }

    async fn add_role_app(&self, role: Uuid, app: Uuid, actor: &Actor) -> Result<bool> {
        self.link(Link::App, role, app, true, actor).await
    }

    async fn remove_role_app(&self, role: Uuid, app: Uuid, actor: &Actor) -> Result<bool> {
        self.link(Link::App, role, app, false, actor).await
    }

    async fn apps_of_role(&self, role: Uuid) -> Result<Vec<App>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE id IN (SELECT app_id FROM role_apps WHERE role_id = $1) \
             ORDER BY name_key"
        );
        let rows = sqlx::query(&sql).bind(role).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(app_from_row).collect()
    }

    async fn roles_of_app(&self, app: Uuid) -> Result<Vec<Role>> {
        let sql = format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE id IN (SELECT role_id FROM role_apps WHERE app_id = $1) \
             ORDER BY name_key"
        );
        let rows = sqlx::query(&sql).bind(app).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(role_from_row).collect()
    }

    async fn create_app(&self, app: &App, credential: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO apps (id, name, name_key, description, connector, connection, credential, provisioning, \
             parameters, rules, created_at, updated_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(app.id)
        .bind(&app.name)
        .bind(app.name.to_lowercase())
        .bind(&app.description)
        .bind(connector_str(app)?)
        .bind(to_json(&app.connection)?)
        .bind(credential)
        .bind(to_json(&app.provisioning)?)
        .bind(app.parameters.as_ref().map(to_json).transpose()?)
        .bind(to_json(&app.rules)?)
        .bind(app.created_at)
        .bind(app.updated_at)
        .bind(app.version)
        .execute(tx.c())
        .await
        .map_err(backend)?;
        tx.change(NewChange::app(app.id));
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.create",
                target_type: "app",
                target_id: app.id.to_string(),
                before: None,
                after: to_value(app),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn get_app(&self, id: Uuid) -> Result<Option<App>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await.map_err(backend)?;
        row.as_ref().map(app_from_row).transpose()
    }

    async fn list_apps(&self, query: &NameQuery) -> Result<Page<App>> {
        let rows = list_named(&self.pool, "apps", APP_COLUMNS, query).await?;
        let apps = rows.iter().map(app_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(apps, &query.page, |a| vec![a.name.to_lowercase(), a.id.to_string()]))
    }

    async fn update_app(
        &self,
        app: &App,
        credential: Option<&str>,
        expected_version: i64,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::app_in(&mut tx, app.id).await?;
        check_version(before.version, Some(expected_version))?;
        sqlx::query(
            "UPDATE apps SET name = $1, name_key = $2, description = $3, connector = $4, connection = $5, \
             credential = COALESCE($6, credential), provisioning = $7, updated_at = $8, version = $9 WHERE id = $10",
        )
        .bind(&app.name)
        .bind(app.name.to_lowercase())
        .bind(&app.description)
        .bind(connector_str(app)?)
        .bind(to_json(&app.connection)?)
        .bind(credential)
        .bind(to_json(&app.provisioning)?)
        .bind(app.updated_at)
        .bind(app.version)
        .bind(app.id)
        .execute(tx.c())
        .await
        .map_err(backend)?;
        tx.change(NewChange::app(app.id));
        let mut after = to_value(app);
        if let (Some(Value::Object(map)), true) = (&mut after, credential.is_some()) {
            // Say that the credential changed, never what it is.
            map.insert("credential_changed".into(), Value::Bool(true));
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.update",
                target_type: "app",
                target_id: app.id.to_string(),
                before: to_value(&before),
                after,
            },
        )
        .await?;
        // A new concurrency limit may let more operations run.
        tx.wake_operations();
        tx.commit().await
    }

    async fn update_app_mapping(&self, app: &App, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::app_in(&mut tx, app.id).await?;
        check_version(before.version, Some(expected_version))?;
        sqlx::query("UPDATE apps SET parameters = $1, rules = $2, updated_at = $3, version = $4 WHERE id = $5")
            .bind(app.parameters.as_ref().map(to_json).transpose()?)
            .bind(to_json(&app.rules)?)
            .bind(app.updated_at)
            .bind(app.version)
            .bind(app.id)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        tx.change(NewChange::app(app.id));
        let mapping = |a: &App| serde_json::json!({"parameters": a.parameters, "rules": a.rules});
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.mapping",
                target_type: "app",
                target_id: app.id.to_string(),
                before: Some(mapping(&before)),
                after: Some(mapping(app)),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn delete_app(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::app_in(&mut tx, id).await?;
        check_version(before.version, expected_version)?;
        sqlx::query("DELETE FROM apps WHERE id = $1").bind(id).execute(tx.c()).await.map_err(backend)?;
        tx.change(NewChange::app(id));
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.delete",
                target_type: "app",
                target_id: id.to_string(),
                before: to_value(&before),
                after: None,
            },
        )
        .await?;
        tx.commit().await
    }

    async fn append_audit(
        &self,
        actor: &Actor,
        action: &str,
        target_type: &str,
        target_id: &str,
        details: Option<Value>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord { action, target_type, target_id: target_id.to_owned(), before: None, after: details },
        )
        .await?;
        tx.commit().await
    }

    async fn get_app_credential(&self, id: Uuid) -> Result<Option<String>> {
        let row = sqlx::query("SELECT credential FROM apps WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| get(&r, "credential")).transpose()
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT id, at, actor_kind, actor_name, action, target_type, target_id, before, after \
             FROM audit_log WHERE 1 = 1",
        );
        if let Some(t) = &query.target_type {
            qb.push(" AND target_type = ").push_bind(t.clone());
        }
        if let Some(t) = &query.target_id {
            qb.push(" AND target_id = ").push_bind(t.clone());
        }
        if let Some(a) = &query.actor {
            qb.push(" AND actor_name = ").push_bind(a.clone());
        }
        if let Some(ids) = &query.ids {
            qb.push(" AND id IN (");
            let mut list = qb.separated(", ");
            list.push_bind(-1i64);
            for id in ids {
                list.push_bind(*id);
            }
            list.push_unseparated(")");
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 1)?;
            let id: i64 = key[0].parse().map_err(|_| StoreError::InvalidCursor)?;
            qb.push(" AND id < ").push_bind(id);
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit_of(&query.page) + 1);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        let entries = rows
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: get(r, "id")?,
                    at: get(r, "at")?,
                    actor: Actor { kind: get(r, "actor_kind")?, name: get(r, "actor_name")? },
                    action: get(r, "action")?,
                    target_type: get(r, "target_type")?,
                    target_id: get(r, "target_id")?,
                    before: get(r, "before")?,
                    after: get(r, "after")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(entries, &query.page, |e| vec![e.id.to_string()]))
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, user_id, role_id, app_id, audit_id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let kind: String = get(r, "kind")?;
                Ok(Change {
                    seq: get(r, "seq")?,
                    at: get(r, "at")?,
                    kind: ChangeKind::parse(&kind)
                        .ok_or_else(|| StoreError::Backend(format!("bad change kind {kind}")))?,
                    user_id: get(r, "user_id")?,
                    role_id: get(r, "role_id")?,
                    app_id: get(r, "app_id")?,
                    audit_id: get::<Option<i64>>(r, "audit_id")?.filter(|id| *id > 0),
                })
            })
            .collect()
    }
}
