//! The PostgreSQL backend of the store (its queries are written once, in [`crate::sql`]), for
//! several `provisioner` processes sharing one database.
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

use directory::NewChange;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{Result, StoreError, Wakeup};

pub(crate) use crate::sql::rows::*;
pub(crate) use crate::sql::{db_error as backend, AccountSet};

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
    /// Run a `LISTEN` task that forwards notifications to [`Store::wakeups`](crate::Store::wakeups).
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
        MIGRATOR.run(&pool).await.map_err(|e| backend(sqlx::Error::Migrate(Box::new(e))))?;
        let mut migrated = crate::sql::Conn(pool.acquire().await.map_err(backend)?);
        backfill_email_keys(&mut migrated).await?;
        backfill_profiles(&mut migrated).await?;
        drop(migrated);
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
