//! [`ProvisioningStore`] on both backends: account records, the durable operation queue (each
//! operation is the event admins see) and the planner's cursor into the change feed.
//!
//! An account record's status is always derived from the operations of its pair
//! ([`WriteTx::refresh_account`]): SQLite derives it in the transaction, PostgreSQL at commit
//! under the pair's lock, so that it reflects every committed operation of the pair. What else
//! several PostgreSQL processes add:
//!
//! - A conditional `UPDATE` (by state, by lease owner) is the check: under READ COMMITTED, a
//!   row changed by a concurrent transaction is re-checked against its newest version, so a
//!   collapse, a cancellation or a re-plan mark never lands on an operation that finished
//!   meanwhile; the fallbacks (queue anew, record a change) apply instead.
//! - Claims of one app are serialised and bounded by the app's `max_concurrency` across every
//!   process (see [`ProvisioningHooks::claimable`]).
//!
//! What truly differs per backend is in [`ProvisioningHooks`]: bulk writes (multi-row `VALUES`
//! on SQLite, `unnest` arrays on PostgreSQL), claims (`FOR UPDATE SKIP LOCKED` under a per-app
//! lock against the single SQLite writer), and a few statements each backend's planner needs
//! written its own way. What the writes mean (a new operation's state, what a new account
//! record starts with) is decided in [`crate::provisioning`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use directory::{
    Account, Action, Actor, App, Event, EventStatus, NewChange, OpState, Operation, Outcome, Page, PairState, PlanItem,
    PlanWrite, User, UserStatus,
};
use serde_json::Value;
use uuid::Uuid;

use super::health::{minute_of, KEEP_MINUTES};
use super::rows::{app_from_row, app_in, record_audit, user_from_row, user_in, AuditRecord, APP_COLUMNS, USER_COLUMNS};
use super::{
    cursor_uuid, db_error, like_pattern, limit_of, paginate, q, to_value, Arg, Backend, Dialect, Exec, Json, Query,
    RowGet, WriteTx,
};
use crate::provisioning::{
    counts_as_finished, finished_account, initial_state, linked_account, observed_account, succeeded, AccountQuery,
    EventQuery, ProvisioningStore, FAIL_RECOMMENDATION,
};
use crate::{cursor, Result, StoreError};

pub const OP_COLUMNS: &str = "seq, id, app_id, app_name, user_id, username, action, desired, state, status, reason, \
    recommended_action, attempts, resolved_by, next_run_at, lease_owner, lease_expires_at, created_at, updated_at, \
    cause";

/// The account columns, with the user's username (empty when the user row is gone).
pub const ACCOUNT_COLUMNS: &str = "a.app_id, a.user_id, COALESCE(u.username, '') AS username, a.remote_id, \
    a.ownership, a.status, a.last_applied, a.last_event_id, a.updated_at, a.departure, a.rejected";

/// The account records `a`, each with its user `u` (the columns of [`ACCOUNT_COLUMNS`]).
pub const ACCOUNTS_FROM: &str = "accounts a LEFT JOIN users u ON u.id = a.user_id";

/// The sort key of account listings.
const ACCOUNT_KEY: &str = "COALESCE(u.username_key, '')";

/// How many pairs (or users) one batch of queries loads.
const PAIR_CHUNK: usize = 1000;

/// The most operations one claim may take.
const MAX_CLAIM: u32 = 1000;

pub fn event_from_row(row: &impl RowGet) -> Result<Event> {
    Ok(Event {
        id: row.id("id")?,
        app_id: row.id("app_id")?,
        app_name: row.text("app_name")?,
        user_id: row.id("user_id")?,
        username: row.text("username")?,
        action: row.parsed("action", Action::parse)?,
        status: row.parsed("status", EventStatus::parse)?,
        reason: row.opt_text("reason")?,
        recommended_action: row.opt_text("recommended_action")?,
        attempts: row.int("attempts")?,
        resolved_by: row.opt_id("resolved_by")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        cause: row.opt_value("cause")?.and_then(|v| serde_json::from_value(v).ok()),
    })
}

pub fn op_from_row(row: &impl RowGet) -> Result<Operation> {
    Ok(Operation {
        event: event_from_row(row)?,
        state: row.parsed("state", OpState::parse)?,
        desired: row.opt_value("desired")?,
        next_run_at: row.time("next_run_at")?,
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_at: row.opt_time("lease_expires_at")?,
    })
}

pub fn account_from_row(row: &impl RowGet) -> Result<Account> {
    Ok(Account {
        app_id: row.id("app_id")?,
        user_id: row.id("user_id")?,
        username: row.text("username")?,
        remote_id: row.opt_text("remote_id")?,
        ownership: row
            .opt_text("ownership")?
            .map(|o| directory::Ownership::parse(&o).ok_or_else(|| StoreError::Backend(format!("bad ownership {o}"))))
            .transpose()?,
        status: row.parsed("status", EventStatus::parse)?,
        last_applied: row.opt_value("last_applied")?,
        last_event_id: row.opt_id("last_event_id")?,
        updated_at: row.time("updated_at")?,
        departure: row.opt_text("departure")?,
        rejected: row.opt_value("rejected")?,
    })
}

/// A new operation to queue, as [`ProvisioningHooks::insert_operations`] writes it.
pub struct NewOperation<'a> {
    pub id: Uuid,
    pub app_id: Uuid,
    pub user_id: Uuid,
    pub action: Action,
    pub desired: Option<&'a Value>,
    pub state: OpState,
    pub status: EventStatus,
    pub cause: Option<Value>,
}

impl<'a> NewOperation<'a> {
    fn new(
        user_id: Uuid,
        app_id: Uuid,
        action: Action,
        desired: Option<&'a Value>,
        needs_approval: bool,
        held: bool,
        cause: Option<&directory::Cause>,
    ) -> Self {
        let (state, status) = initial_state(action, needs_approval, held);
        Self {
            id: Uuid::now_v7(),
            app_id,
            user_id,
            action,
            desired,
            state,
            status,
            cause: cause.and_then(|c| serde_json::to_value(c).ok()),
        }
    }
}

/// An operation [`ProvisioningHooks::finish_rows`] recorded as done.
pub struct Finished {
    pub op: Uuid,
    pub app_id: Uuid,
    pub user_id: Uuid,
    /// Marked for re-planning while it ran.
    pub replan: bool,
}

/// What provisioning does differently on each backend (implemented in
/// `crate::sqlite::provisioning` and `crate::postgres::provisioning`).
#[async_trait]
pub trait ProvisioningHooks: Backend {
    /// Run first in [`ProvisioningStore::load_pairs`]'s read transaction, so that every pair is
    /// read from one snapshot (PostgreSQL; a SQLite read transaction is one already).
    const READ_SNAPSHOT: Option<&'static str>;
    /// The apps with due or orphaned operations, not quarantined (`?1` is now): column `id`.
    const DUE_APPS: &'static str;
    /// The operations as counting recent deprovisions reads them (SQLite names its index).
    const DEPROVISIONS_FROM: &'static str;

    /// Inserts new operations, in queue order; those whose app or user row is gone are
    /// skipped. Answers the pairs inserted, each with its operation's state.
    async fn insert_operations(
        tx: &mut Self::Tx,
        ops: &[NewOperation<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, Uuid, OpState)>>;

    /// The `seq`s of up to `limit` operations of `app` to claim now (`now`): queued and due,
    /// or running with an expired lease, only the oldest open operation of a pair and never
    /// while another of the pair runs. Nothing while the app is quarantined. Where several
    /// processes share the store, the app's running operations stay within its
    /// `max_concurrency` and `max_running` (the one process of SQLite counts its own).
    async fn claimable(
        tx: &mut Self::Tx,
        app: Uuid,
        now: DateTime<Utc>,
        limit: i64,
        max_running: Option<i64>,
    ) -> Result<Vec<i64>>;

    /// Marks operations done with their outcomes, each only if `owner` still holds its lease.
    async fn finish_rows(
        tx: &mut Self::Tx,
        owner: &str,
        done: &[(Uuid, Outcome)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Finished>>;

    /// Marks the earlier failures of each pair `(op, app, user)` as resolved by `op`.
    async fn resolve_failures(tx: &mut Self::Tx, resolved: &[(Uuid, Uuid, Uuid)]) -> Result<()>;

    /// The account records of some users (at most a thousand) in one app, columns
    /// [`ACCOUNT_COLUMNS`].
    fn accounts_of_users(app: Uuid, users: &[Uuid]) -> Query;

    /// See [`ProvisioningStore::refresh_statistics`].
    async fn analyze(&self) -> Result<()> {
        Ok(())
    }
}

fn distinct(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> Result<DateTime<Utc>> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(|t| t.trunc_subsecs(6))
        .ok_or_else(|| StoreError::Backend(format!("lease of {lease:?} is out of range")))
}

/// An operation, locked for the rest of the transaction where the backend locks rows.
async fn op_in<D: Dialect>(tx: &mut impl Exec<D>, id: Uuid) -> Result<Option<Operation>> {
    let row = tx.opt(q(format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?{}", D::FOR_UPDATE)).bind(id)).await?;
    row.as_ref().map(op_from_row).transpose()
}

async fn account_in<D: Dialect>(tx: &mut impl Exec<D>, app: Uuid, user: Uuid) -> Result<Option<Account>> {
    let row = tx
        .opt(
            q(format!("SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNTS_FROM} WHERE a.app_id = ? AND a.user_id = ?"))
                .bind(app)
                .bind(user),
        )
        .await?;
    row.as_ref().map(account_from_row).transpose()
}

/// The pair `(app, user)` of an operation, if it exists.
async fn op_pair<D: Dialect>(tx: &mut impl Exec<D>, id: Uuid) -> Result<Option<(Uuid, Uuid)>> {
    let row = tx.opt(q("SELECT app_id, user_id FROM operations WHERE id = ?").bind(id)).await?;
    row.map(|r| Ok((r.id("app_id")?, r.id("user_id")?))).transpose()
}

/// Queues new operations; their account records are to be refreshed (`refresh`), and the
/// workers woken when one is runnable.
async fn enqueue<S: ProvisioningHooks>(
    tx: &mut S::Tx,
    ops: &[NewOperation<'_>],
    now: DateTime<Utc>,
    refresh: &mut Vec<(Uuid, Uuid)>,
) -> Result<usize> {
    let inserted = S::insert_operations(tx, ops, now).await?;
    if inserted.len() < ops.len() {
        tracing::debug!(skipped = ops.len() - inserted.len(), "not queueing operations: their app or user is gone");
    }
    for (app, user, state) in &inserted {
        refresh.push((*app, *user));
        if *state == OpState::Queued {
            tx.wake_operations();
        }
    }
    Ok(inserted.len())
}

/// Writes one plan item (other than a new operation); the account records of the pairs it
/// touched are to be refreshed.
async fn apply_item<S: ProvisioningHooks>(
    tx: &mut S::Tx,
    item: &PlanItem,
    now: DateTime<Utc>,
    refresh: &mut Vec<(Uuid, Uuid)>,
) -> Result<()> {
    match item {
        PlanItem::Enqueue { user_id, app_id, action, desired, needs_approval, held, cause } => {
            let op =
                NewOperation::new(*user_id, *app_id, *action, desired.as_ref(), *needs_approval, *held, cause.as_ref());
            enqueue::<S>(tx, &[op], now, refresh).await?;
        }
        PlanItem::Replace { op, action, desired, needs_approval, held, cause } => {
            let (state, status) = initial_state(*action, *needs_approval, *held);
            let replaced = tx
                .opt(
                    q("UPDATE operations SET action = ?1, desired = ?2, state = ?3, status = ?4, reason = NULL, \
                       cause = COALESCE(?5, cause), \
                       recommended_action = NULL, next_run_at = ?6, updated_at = ?6, \
                       app_name = COALESCE((SELECT name FROM apps WHERE apps.id = operations.app_id), app_name), \
                       username = COALESCE((SELECT username FROM users WHERE users.id = operations.user_id), \
                         username), \
                       username_key = COALESCE((SELECT username_key FROM users WHERE users.id = operations.user_id), \
                         username_key) \
                       WHERE id = ?7 AND state IN ('queued', 'awaiting_approval') RETURNING app_id, user_id")
                    .bind(action.as_str())
                    .bind(desired.clone().map(Json))
                    .bind(state.as_str())
                    .bind(status.as_str())
                    .bind(cause.as_ref().and_then(|c| serde_json::to_value(c).ok()).map(Json))
                    .bind(now)
                    .bind(*op),
                )
                .await?;
            match replaced {
                Some(row) => {
                    refresh.push((row.id("app_id")?, row.id("user_id")?));
                    if state == OpState::Queued {
                        tx.wake_operations();
                    }
                }
                // Claimed or finished meanwhile: what it will do (or did) is stale.
                None => match op_pair(tx, *op).await? {
                    Some((app, user)) => {
                        let new = NewOperation::new(
                            user,
                            app,
                            *action,
                            desired.as_ref(),
                            *needs_approval,
                            *held,
                            cause.as_ref(),
                        );
                        enqueue::<S>(tx, &[new], now, refresh).await?;
                    }
                    None => tracing::debug!(%op, "not replacing an operation that does not exist"),
                },
            }
        }
        PlanItem::Cancel { op, reason } => {
            let cancelled = tx
                .opt(
                    q("UPDATE operations SET state = 'done', status = 'cancelled', reason = ?, updated_at = ? \
                       WHERE id = ? AND state IN ('queued', 'awaiting_approval') RETURNING app_id, user_id")
                    .bind(reason)
                    .bind(now)
                    .bind(*op),
                )
                .await?;
            match cancelled {
                Some(row) => refresh.push((row.id("app_id")?, row.id("user_id")?)),
                None => replan(tx, *op, now).await?,
            }
        }
        PlanItem::Replan { op } => replan(tx, *op, now).await?,
        PlanItem::Observe { user_id, app_id, account } => {
            if let Some(set) = observed_account(account) {
                tx.set_account(*app_id, *user_id, set).await?;
            }
        }
        PlanItem::Forget { user_id, app_id } => {
            tx.run(
                q("UPDATE accounts SET rejected = NULL WHERE app_id = ? AND user_id = ?").bind(*app_id).bind(*user_id),
            )
            .await?;
        }
        PlanItem::Depart { user_id, app_id, departure } => {
            tx.run(
                q("UPDATE accounts SET departure = ? WHERE app_id = ? AND user_id = ?")
                    .bind(departure.as_deref())
                    .bind(*app_id)
                    .bind(*user_id),
            )
            .await?;
        }
        PlanItem::Fail { user_id, app_id, action, reason } => {
            let op = NewOperation::new(*user_id, *app_id, *action, None, false, false, None);
            let id = op.id;
            if enqueue::<S>(tx, &[op], now, refresh).await? > 0 {
                tx.run(
                    q("UPDATE operations SET state = 'done', status = 'failed', reason = ?, recommended_action = ? \
                       WHERE id = ?")
                    .bind(reason)
                    .bind(FAIL_RECOMMENDATION)
                    .bind(id),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Has a pair planned again once `op` finishes; if it already has (between the planner's read
/// and its write, or while this transaction waited for the operation's row), records an
/// account change right away.
async fn replan<D: Dialect>(tx: &mut impl WriteTx<D>, op: Uuid, now: DateTime<Utc>) -> Result<()> {
    let marked = tx
        .run(
            q("UPDATE operations SET replan = ?, updated_at = ? WHERE id = ? AND state <> 'done'")
                .bind(true)
                .bind(now)
                .bind(op),
        )
        .await?;
    if marked == 0 {
        if let Some((app, user)) = op_pair(tx, op).await? {
            tx.change(NewChange::account(user, app)).await?;
        }
    }
    Ok(())
}

/// A read transaction on a read connection.
struct Snapshot<'c, D: Dialect>(sqlx::Transaction<'c, D>);

impl<D: Dialect> Exec<D> for Snapshot<'_, D> {
    fn conn(&mut self) -> &mut D::Connection {
        &mut self.0
    }
}

/// Moves an operation on behalf of an admin (approve, reject, retry, allow), with its audit
/// entry. `transition` is told whether a newer operation of the pair exists.
async fn admin_transition<S: Backend>(
    store: &S,
    id: Uuid,
    actor: &Actor,
    audit_action: &str,
    transition: impl FnOnce(&Operation, bool) -> Result<(OpState, EventStatus, Option<String>)> + Send,
) -> Result<Event> {
    let mut tx = store.begin().await?;
    let Some(before) = op_in(&mut tx, id).await? else {
        tx.rollback().await?;
        return Err(StoreError::NotFound);
    };
    // Whether a newer operation exists for the same pair.
    let newer = tx
        .opt(
            q("SELECT 1 AS one FROM operations WHERE app_id = ?1 AND user_id = ?2 AND id <> ?3 AND seq > \
               (SELECT seq FROM operations WHERE id = ?3) LIMIT 1")
            .bind(before.event.app_id)
            .bind(before.event.user_id)
            .bind(id),
        )
        .await?
        .is_some();
    let (state, status, reason) = match transition(&before, newer) {
        Ok(t) => t,
        Err(e) => {
            // Release the row lock now, not when the connection is next used.
            tx.rollback().await?;
            return Err(e);
        }
    };
    let row = tx
        .one(
            q(format!(
                "UPDATE operations SET state = ?1, status = ?2, reason = ?3, \
                 recommended_action = CASE WHEN ?1 = 'done' THEN recommended_action ELSE NULL END, \
                 next_run_at = CASE WHEN ?1 = 'done' THEN next_run_at ELSE ?4 END, \
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = ?4 WHERE id = ?5 RETURNING {OP_COLUMNS}"
            ))
            .bind(state.as_str())
            .bind(status.as_str())
            .bind(reason)
            .bind(directory::now())
            .bind(id),
        )
        .await?;
    let after = op_from_row(&row)?.event;
    tx.refresh_account(after.app_id, after.user_id).await?;
    if after.status == EventStatus::Rejected {
        // Rejections stick: the planner does not queue this again by itself.
        let rejected = serde_json::json!({"action": after.action, "desired": before.desired});
        tx.run(
            q("UPDATE accounts SET rejected = ? WHERE app_id = ? AND user_id = ?")
                .bind(Json(rejected))
                .bind(after.app_id)
                .bind(after.user_id),
        )
        .await?;
    }
    if state == OpState::Queued {
        tx.wake_operations();
    }
    record_audit(
        &mut tx,
        actor,
        AuditRecord {
            action: audit_action,
            target_type: "event",
            target_id: id.to_string(),
            before: to_value(&before.event),
            after: to_value(&after),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(after)
}

#[async_trait]
impl<S: Backend + ProvisioningHooks> ProvisioningStore for S {
    async fn engine_cursor(&self) -> Result<i64> {
        let row = self.read().await?.opt(q("SELECT value FROM engine_state WHERE name = 'change_cursor'")).await?;
        row.map_or(Ok(0), |r| r.int("value"))
    }

    async fn apps_of_user(&self, user: Uuid) -> Result<Vec<Uuid>> {
        let rows = self
            .read()
            .await?
            .all(
                q("SELECT ra.app_id AS id FROM role_apps ra JOIN role_users ru ON ru.role_id = ra.role_id \
                   WHERE ru.user_id = ?1 \
                   UNION SELECT app_id AS id FROM accounts WHERE user_id = ?1 ORDER BY id")
                .bind(user),
            )
            .await?;
        rows.iter().map(|r| r.id("id")).collect()
    }

    async fn apps_of_users(&self, users: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
        let mut out = Vec::new();
        let mut c = self.read().await?;
        for chunk in users.chunks(PAIR_CHUNK) {
            let ids = distinct(chunk.iter().copied());
            let mut query = q("SELECT ru.user_id AS user_id, ra.app_id AS app_id FROM role_apps ra \
                               JOIN role_users ru ON ru.role_id = ra.role_id WHERE ");
            S::Db::push_in(&mut query, "ru.user_id", Arg::Ids(ids.clone()));
            query.push(" UNION SELECT user_id, app_id FROM accounts WHERE ");
            S::Db::push_in(&mut query, "user_id", Arg::Ids(ids));
            for r in c.all(query).await? {
                out.push((r.id("user_id")?, r.id("app_id")?));
            }
        }
        Ok(out)
    }

    async fn users_of_app(&self, app: Uuid) -> Result<Vec<Uuid>> {
        let rows = self
            .read()
            .await?
            .all(
                q("SELECT ru.user_id AS id FROM role_users ru JOIN role_apps ra ON ra.role_id = ru.role_id \
                   WHERE ra.app_id = ?1 \
                   UNION SELECT user_id AS id FROM accounts WHERE app_id = ?1 ORDER BY id")
                .bind(app),
            )
            .await?;
        rows.iter().map(|r| r.id("id")).collect()
    }

    async fn load_pairs(&self, pairs: &[(Uuid, Uuid)]) -> Result<Vec<PairState>> {
        // One read transaction: every pair is read from the same snapshot.
        let mut conn = self.read().await?;
        let mut tx = Snapshot::<S::Db>(sqlx::Connection::begin(&mut *conn.0).await.map_err(db_error)?);
        if let Some(sql) = S::READ_SNAPSHOT {
            tx.run(q(sql)).await?;
        }
        let mut out = Vec::with_capacity(pairs.len());
        // The apps once for the whole call (few, and each shared by many pairs).
        let all_apps = distinct(pairs.iter().map(|p| p.1));
        let mut apps = HashMap::new();
        for ids in all_apps.chunks(PAIR_CHUNK) {
            let mut query = q(format!("SELECT {APP_COLUMNS} FROM apps WHERE "));
            S::Db::push_in(&mut query, "id", Arg::Ids(ids.to_vec()));
            for r in tx.all(query).await? {
                let a = app_from_row(&r)?;
                apps.insert(a.id, a);
            }
            // "SAML JIT only" apps create their accounts at sign-in: the planner sees
            // provisioning off for them, so it pushes nothing (see `PairState::app`).
            let mut query = q("SELECT app_id FROM app_saml WHERE jit_only AND ");
            S::Db::push_in(&mut query, "app_id", Arg::Ids(ids.to_vec()));
            for r in tx.all(query).await? {
                if let Some(app) = apps.get_mut(&r.id("app_id")?) {
                    app.provisioning.enabled = false;
                }
            }
        }
        let apps: HashMap<Uuid, Arc<App>> = apps.into_iter().map(|(id, a)| (id, Arc::new(a))).collect();
        for chunk in pairs.chunks(PAIR_CHUNK) {
            let user_ids = Arg::Ids(distinct(chunk.iter().map(|p| p.0)));
            let app_ids = Arg::Ids(distinct(chunk.iter().map(|p| p.1)));

            let mut query = q(format!("SELECT {USER_COLUMNS} FROM users WHERE "));
            S::Db::push_in(&mut query, "id", user_ids.clone());
            let users = tx
                .all(query)
                .await?
                .iter()
                .map(|r| user_from_row(r).map(|u| (u.id, Arc::new(u))))
                .collect::<Result<HashMap<_, _>>>()?;

            let mut query = q("SELECT DISTINCT ru.user_id, ra.app_id FROM role_users ru \
                               JOIN role_apps ra ON ra.role_id = ru.role_id WHERE ");
            S::Db::push_in(&mut query, "ru.user_id", user_ids.clone());
            query.push(" AND ");
            S::Db::push_in(&mut query, "ra.app_id", app_ids.clone());
            let grants = tx
                .all(query)
                .await?
                .iter()
                .map(|r| Ok((r.id("user_id")?, r.id("app_id")?)))
                .collect::<Result<HashSet<_>>>()?;

            let mut query =
                q("SELECT ru.user_id, r.id, r.name FROM role_users ru JOIN roles r ON r.id = ru.role_id WHERE ");
            S::Db::push_in(&mut query, "ru.user_id", user_ids.clone());
            query.push(" ORDER BY r.name_key");
            let mut roles: HashMap<Uuid, Vec<directory::RoleRef>> = HashMap::new();
            for r in &tx.all(query).await? {
                roles
                    .entry(r.id("user_id")?)
                    .or_default()
                    .push(directory::RoleRef { id: r.id("id")?, name: r.text("name")? });
            }

            let mut query = q(format!("SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNTS_FROM} WHERE "));
            S::Db::push_in(&mut query, "a.user_id", user_ids.clone());
            query.push(" AND ");
            S::Db::push_in(&mut query, "a.app_id", app_ids.clone());
            let accounts = tx
                .all(query)
                .await?
                .iter()
                .map(|r| account_from_row(r).map(|a| ((a.user_id, a.app_id), a)))
                .collect::<Result<HashMap<_, _>>>()?;

            let mut query = q(format!(
                "SELECT {OP_COLUMNS} FROM operations WHERE state IN ('queued', 'awaiting_approval', 'running') AND "
            ));
            S::Db::push_in(&mut query, "user_id", user_ids);
            query.push(" AND ");
            S::Db::push_in(&mut query, "app_id", app_ids);
            query.push(" ORDER BY seq");
            // (running, waiting), the oldest of each.
            let mut open: HashMap<(Uuid, Uuid), (Option<Operation>, Option<Operation>)> = HashMap::new();
            for row in &tx.all(query).await? {
                let op = op_from_row(row)?;
                let slot = open.entry((op.event.user_id, op.event.app_id)).or_default();
                match op.state {
                    OpState::Running if slot.0.is_none() => slot.0 = Some(op),
                    OpState::Queued | OpState::AwaitingApproval if slot.1.is_none() => slot.1 = Some(op),
                    _ => {}
                }
            }

            for &(user_id, app_id) in chunk {
                let (running, waiting) = open.get(&(user_id, app_id)).cloned().unwrap_or_default();
                out.push(PairState {
                    user_id,
                    app_id,
                    user: users.get(&user_id).cloned(),
                    app: apps.get(&app_id).cloned(),
                    granted: grants.contains(&(user_id, app_id)),
                    roles: roles.get(&user_id).cloned().unwrap_or_default(),
                    account: accounts.get(&(user_id, app_id)).cloned(),
                    running,
                    waiting,
                });
            }
        }
        tx.0.rollback().await.map_err(db_error)?;
        Ok(out)
    }

    async fn apply_plan(&self, plan: &PlanWrite) -> Result<()> {
        let now = directory::now();
        let mut tx = self.begin_engine().await?;
        if let Some(c) = plan.cursor {
            tx.run(
                q("INSERT INTO engine_state (name, value) VALUES ('change_cursor', ?) \
                   ON CONFLICT (name) DO UPDATE SET value = excluded.value")
                .bind(c),
            )
            .await?;
        }
        let mut refresh = Vec::new();
        // New operations, the bulk of a plan, together; the rest one by one.
        let mut new_ops = Vec::new();
        for item in &plan.items {
            match item {
                PlanItem::Enqueue { user_id, app_id, action, desired, needs_approval, held, cause } => {
                    new_ops.push(NewOperation::new(
                        *user_id,
                        *app_id,
                        *action,
                        desired.as_ref(),
                        *needs_approval,
                        *held,
                        cause.as_ref(),
                    ));
                }
                _ => apply_item::<S>(&mut tx, item, now, &mut refresh).await?,
            }
        }
        if !new_ops.is_empty() {
            enqueue::<S>(&mut tx, &new_ops, now, &mut refresh).await?;
        }
        tx.refresh_accounts(&refresh).await?;
        tx.commit().await
    }

    async fn refresh_statistics(&self) -> Result<()> {
        self.analyze().await
    }

    async fn claim_operations_within(
        &self,
        app: Uuid,
        owner: &str,
        limit: u32,
        lease: Duration,
        max_running: Option<u32>,
    ) -> Result<Vec<Operation>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = directory::now();
        let expires = lease_end(now, lease)?;
        let mut tx = self.begin_engine().await?;
        let seqs = S::claimable(&mut tx, app, now, i64::from(limit.min(MAX_CLAIM)), max_running.map(i64::from)).await?;
        if seqs.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        // One statement for the whole claim; the working status follows each one's action.
        let working: String = [Action::Create, Action::Update, Action::Suspend, Action::Delete]
            .iter()
            .map(|a| format!("WHEN '{}' THEN '{}' ", a.as_str(), a.working_status().as_str()))
            .collect();
        let mut query = q(format!(
            "UPDATE operations SET state = 'running', lease_owner = ?, lease_expires_at = ?, \
             attempts = attempts + 1, status = CASE action {working}ELSE status END, updated_at = ? WHERE "
        ))
        .bind(owner)
        .bind(expires)
        .bind(now);
        S::Db::push_in(&mut query, "seq", Arg::Ints(seqs));
        query.push(format!(" RETURNING {OP_COLUMNS}"));
        let mut claimed = tx
            .all(query)
            .await?
            .iter()
            .map(|r| Ok((r.int("seq")?, op_from_row(r)?)))
            .collect::<Result<Vec<(i64, Operation)>>>()?;
        claimed.sort_by_key(|(seq, _)| *seq);
        let claimed: Vec<Operation> = claimed.into_iter().map(|(_, o)| o).collect();
        let pairs: Vec<(Uuid, Uuid)> = claimed.iter().map(|o| (o.event.app_id, o.event.user_id)).collect();
        tx.refresh_accounts(&pairs).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn apps_with_due_operations(&self) -> Result<Vec<Uuid>> {
        // Due or orphaned work, without the per-pair order (which the claim applies): cheap
        // enough to ask on every dispatch, at the price of an occasional claim of nothing.
        let rows = self.read().await?.all(q(S::DUE_APPS).bind(directory::now())).await?;
        rows.iter().map(|r| r.id("id")).collect()
    }

    async fn finish_operation(&self, op: Uuid, owner: &str, outcome: &Outcome) -> Result<bool> {
        Ok(self.finish_operations(owner, &[(op, outcome.clone())]).await?.first().copied().unwrap_or(false))
    }

    async fn finish_operations(&self, owner: &str, done: &[(Uuid, Outcome)]) -> Result<Vec<bool>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let now = directory::now();
        let mut tx = self.begin_engine().await?;
        let rows = S::finish_rows(&mut tx, owner, done, now).await?;
        let by_id: HashMap<Uuid, &Outcome> = done.iter().map(|(id, o)| (*id, o)).collect();
        let mut recorded = HashSet::new();
        let mut sets = Vec::new();
        let mut refresh = Vec::new();
        let mut resolved = Vec::new();
        // Per app: operations finished (for the quarantine ratio and the rate), and whether one
        // succeeded (which ends a run of refused credentials).
        let mut finished: HashMap<Uuid, (i64, bool)> = HashMap::new();
        for Finished { op, app_id: app, user_id: user, replan } in rows {
            let Some(outcome) = by_id.get(&op) else { continue };
            if let Some(set) = finished_account(outcome, op) {
                sets.push((app, user, set));
            }
            refresh.push((app, user));
            if outcome.replan || replan {
                tx.change(NewChange::account(user, app)).await?;
            }
            recorded.insert(op);
            if counts_as_finished(outcome.status) {
                let e = finished.entry(app).or_insert((0, false));
                e.0 += 1;
                e.1 |= succeeded(outcome.status);
            }
            if succeeded(outcome.status) {
                resolved.push((op, app, user));
            }
        }
        if recorded.is_empty() {
            tx.rollback().await?;
            return Ok(vec![false; done.len()]);
        }
        // Earlier failures of the pairs that succeeded now are resolved by them.
        if !resolved.is_empty() {
            S::resolve_failures(&mut tx, &resolved).await?;
        }
        tx.set_accounts(sets).await?;
        // In one order, so that concurrent batches lock the counters without deadlock.
        let mut apps: Vec<(Uuid, i64, bool)> = finished.into_iter().map(|(a, (n, ok))| (a, n, ok)).collect();
        apps.sort_by_key(|(a, _, _)| *a);
        if !apps.is_empty() {
            let minute = minute_of(&directory::now());
            let mut query = q("INSERT INTO app_outcomes (app_id, minute, finished) VALUES ");
            for (i, (app, n, _)) in apps.iter().enumerate() {
                query.push(if i == 0 { "(?, ?, ?)" } else { ", (?, ?, ?)" }).add(*app).add(minute).add(*n);
            }
            query.push(
                " ON CONFLICT (app_id, minute) DO UPDATE SET finished = app_outcomes.finished + excluded.finished",
            );
            tx.run(query).await?;
            let mut query = q("DELETE FROM app_outcomes WHERE ");
            S::Db::push_in(&mut query, "app_id", Arg::Ids(apps.iter().map(|(a, _, _)| *a).collect()));
            query.push(" AND minute < ?").add(minute - KEEP_MINUTES);
            tx.run(query).await?;
        }
        let succeeded_apps: Vec<Uuid> = apps.iter().filter(|(_, _, ok)| *ok).map(|(a, _, _)| *a).collect();
        if !succeeded_apps.is_empty() {
            let mut query = q("UPDATE app_health SET auth_refusals = 0 WHERE ");
            S::Db::push_in(&mut query, "app_id", Arg::Ids(succeeded_apps));
            query.push(" AND auth_refusals > 0");
            tx.run(query).await?;
        }
        tx.refresh_accounts(&refresh).await?;
        tx.wake_operations();
        tx.commit().await?;
        Ok(done.iter().map(|(id, _)| recorded.contains(id)).collect())
    }

    async fn retry_operation_later(&self, op: Uuid, owner: &str, at: DateTime<Utc>, reason: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let row = tx
            .opt(
                q("UPDATE operations SET state = 'queued', next_run_at = ?, reason = ?, \
                   lease_owner = NULL, lease_expires_at = NULL, updated_at = ? \
                   WHERE id = ? AND state = 'running' AND lease_owner = ? RETURNING seq")
                .bind(at)
                .bind(reason)
                .bind(directory::now())
                .bind(op)
                .bind(owner),
            )
            .await?;
        if row.is_some() {
            tx.wake_operations();
        }
        tx.commit().await?;
        Ok(row.is_some())
    }

    /// Gives up every lease, whoever holds it. Only for a deployment with a single engine
    /// process, at its start: with several processes sharing the database this would take
    /// work away from live workers (which would then lose their fence and run it twice).
    /// Several-process deployments do not call it and rely on lease expiry instead: the
    /// operations of a process that died are claimed again once their leases run out.
    async fn release_all_leases(&self) -> Result<u64> {
        let mut tx = self.begin().await?;
        let done = tx
            .run(
                q("UPDATE operations SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
                   next_run_at = ?1, updated_at = ?1 WHERE state = 'running'")
                .bind(directory::now()),
            )
            .await?;
        if done > 0 {
            tx.wake_operations();
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn get_operation(&self, id: Uuid) -> Result<Option<Operation>> {
        let row =
            self.read().await?.opt(q(format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?")).bind(id)).await?;
        row.as_ref().map(op_from_row).transpose()
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Page<Event>> {
        let mut sql = q(format!("SELECT {OP_COLUMNS} FROM operations WHERE 1 = 1"));
        if let Some(u) = query.user {
            sql.push(" AND user_id = ?").add(u);
        }
        if let Some(a) = query.app {
            sql.push(" AND app_id = ?").add(a);
        }
        if let Some(s) = query.status {
            sql.push(" AND status = ?").add(s.as_str());
            if s == EventStatus::Failed {
                // A failure resolved by a later success no longer counts as one.
                sql.push(" AND resolved_by IS NULL");
            }
        }
        if let Some(k) = &query.cause {
            sql.push(" AND cause ->> 'kind' = ?").add(k);
        }
        if let Some(text) = query.q.as_deref().filter(|t| !t.is_empty()) {
            sql.push(" AND username_key LIKE ? ESCAPE '\\'").add(like_pattern(text));
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 1)?;
            let seq: i64 = key[0].parse().map_err(|_| StoreError::InvalidCursor)?;
            sql.push(" AND seq < ?").add(seq);
        }
        sql.push(" ORDER BY seq DESC LIMIT ?").add(limit_of(&query.page) + 1);
        let rows = self.read().await?.all(sql).await?;
        let events = rows.iter().map(|r| Ok((r.int("seq")?, event_from_row(r)?))).collect::<Result<Vec<_>>>()?;
        Ok(paginate(events, &query.page, |(seq, _)| vec![seq.to_string()]).map(|(_, e)| e))
    }

    async fn approve_operation(&self, id: Uuid, actor: &Actor) -> Result<Event> {
        admin_transition(self, id, actor, "event.approve", |op, _| match op.state {
            OpState::AwaitingApproval if op.event.status == EventStatus::Held => {
                Err(StoreError::InvalidState("event is held for review: allow it first".into()))
            }
            OpState::AwaitingApproval => Ok((OpState::Queued, op.event.action.working_status(), None)),
            _ => Err(StoreError::InvalidState(format!("event is {}, not pending", op.event.status.as_str()))),
        })
        .await
    }

    async fn reject_operation(&self, id: Uuid, actor: &Actor) -> Result<Event> {
        let reason = format!("Rejected by {}", actor.name);
        admin_transition(self, id, actor, "event.reject", |op, _| match op.state {
            OpState::AwaitingApproval => Ok((OpState::Done, EventStatus::Rejected, Some(reason))),
            _ => Err(StoreError::InvalidState(format!("event is {}, not pending", op.event.status.as_str()))),
        })
        .await
    }

    async fn retry_operation(&self, id: Uuid, actor: &Actor) -> Result<Event> {
        // An old operation is not run again once a newer one exists for the same pair: what it
        // would apply is stale (the newer one, or the planner, knows better).
        admin_transition(self, id, actor, "event.retry", |op, newer| match (op.state, op.event.status) {
            (OpState::Done, EventStatus::Failed) if newer => {
                Err(StoreError::InvalidState("event is superseded by a newer event for this account".into()))
            }
            (OpState::Done, EventStatus::Failed) => Ok((OpState::Queued, op.event.action.working_status(), None)),
            (_, status) => Err(StoreError::InvalidState(format!("event is {}, not failed", status.as_str()))),
        })
        .await
    }

    async fn allow_held_operation(&self, id: Uuid, needs_approval: bool, actor: &Actor) -> Result<Event> {
        admin_transition(self, id, actor, "event.allow", |op, _| match (op.state, op.event.status) {
            (OpState::AwaitingApproval, EventStatus::Held) if needs_approval => {
                Ok((OpState::AwaitingApproval, EventStatus::Pending, None))
            }
            (OpState::AwaitingApproval, EventStatus::Held) => {
                Ok((OpState::Queued, op.event.action.working_status(), None))
            }
            (_, status) => Err(StoreError::InvalidState(format!("event {id} is {}, not held", status.as_str()))),
        })
        .await
    }

    async fn requeue_operation(&self, id: Uuid, actor: &Actor) -> Result<Event> {
        let mut tx = self.begin().await?;
        let Some(op) = op_in(&mut tx, id).await? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        if op.event.status != EventStatus::Rejected {
            tx.rollback().await?;
            return Err(StoreError::InvalidState(format!("event {id} is {}, not rejected", op.event.status.as_str())));
        }
        tx.run(
            q("UPDATE accounts SET rejected = NULL WHERE app_id = ? AND user_id = ?")
                .bind(op.event.app_id)
                .bind(op.event.user_id),
        )
        .await?;
        tx.change(NewChange::account(op.event.user_id, op.event.app_id)).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "event.requeue",
                target_type: "event",
                target_id: id.to_string(),
                before: to_value(&op.event),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(op.event)
    }

    async fn count_recent_deprovisions(&self, app: Uuid, since: DateTime<Utc>) -> Result<i64> {
        let row = self
            .read_fresh()
            .await?
            .one(
                q(format!(
                    "SELECT COUNT(*) AS n FROM {} WHERE app_id = ? AND action IN ('suspend', 'delete') \
                     AND created_at >= ? AND status NOT IN ('held', 'rejected', 'cancelled')",
                    S::DEPROVISIONS_FROM
                ))
                .bind(app)
                .bind(since),
            )
            .await?;
        row.int("n")
    }

    async fn count_managed_accounts(&self, app: Uuid) -> Result<i64> {
        let row = self
            .read()
            .await?
            .one(
                q("SELECT COUNT(*) AS n FROM accounts WHERE app_id = ? AND remote_id IS NOT NULL \
                   AND ownership IN ('created', 'linked')")
                .bind(app),
            )
            .await?;
        row.int("n")
    }

    async fn apply_settings_to_existing(&self, app: Uuid, actor: &Actor) -> Result<u64> {
        let mut tx = self.begin().await?;
        let current = app_in(&mut tx, app).await?;
        let done = tx
            .run(q("UPDATE accounts SET departure = NULL WHERE app_id = ? AND departure IS NOT NULL").bind(app))
            .await?;
        tx.change(NewChange::app(app)).await?;
        let p = &current.provisioning;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.apply_to_existing",
                target_type: "app",
                target_id: app.to_string(),
                before: None,
                after: Some(serde_json::json!({"on_suspend": p.on_suspend, "on_delete": p.on_delete,
                    "accounts": done})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn get_account(&self, app: Uuid, user: Uuid) -> Result<Option<Account>> {
        account_in(&mut self.read().await?, app, user).await
    }

    async fn get_accounts(&self, app: Uuid, users: &[Uuid]) -> Result<Vec<Account>> {
        let mut out = Vec::with_capacity(users.len());
        let mut c = self.read().await?;
        for chunk in users.chunks(PAIR_CHUNK) {
            for row in &c.all(S::accounts_of_users(app, chunk)).await? {
                out.push(account_from_row(row)?);
            }
        }
        Ok(out)
    }

    async fn list_accounts(&self, query: &AccountQuery) -> Result<Page<Account>> {
        let mut sql = q(format!("SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNTS_FROM} WHERE 1 = 1"));
        if let Some(a) = query.app {
            sql.push(" AND a.app_id = ?").add(a);
        }
        if let Some(u) = query.user {
            sql.push(" AND a.user_id = ?").add(u);
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 3)?;
            sql.push(format!(" AND ({ACCOUNT_KEY}, a.user_id, a.app_id) > (?, ?, ?)"))
                .add(&key[0])
                .add(cursor_uuid(&key[1])?)
                .add(cursor_uuid(&key[2])?);
        }
        sql.push(format!(" ORDER BY {ACCOUNT_KEY}, a.user_id, a.app_id LIMIT ?")).add(limit_of(&query.page) + 1);
        let rows = self.read().await?.all(sql).await?;
        let accounts = rows.iter().map(account_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(accounts, &query.page, |a| {
            vec![User::username_key(&a.username), a.user_id.to_string(), a.app_id.to_string()]
        }))
    }

    async fn link_account(&self, app: Uuid, user: Uuid, remote_id: &str, actor: &Actor) -> Result<Account> {
        let mut tx = self.begin().await?;
        // The record is written here rather than at commit: hold the pair's lock from now on.
        tx.lock_pair(app, user).await?;
        app_in(&mut tx, app).await?;
        if user_in(&mut tx, user).await?.status == UserStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        let taken = tx
            .opt(
                q("SELECT 1 AS one FROM accounts WHERE app_id = ? AND remote_id = ? AND user_id <> ? \
                   AND ownership IN ('created', 'linked') LIMIT 1")
                .bind(app)
                .bind(remote_id)
                .bind(user),
            )
            .await?;
        if taken.is_some() {
            return Err(StoreError::Duplicate { field: "remote_id" });
        }
        let before = account_in(&mut tx, app, user).await?;
        let linked = linked_account(remote_id);
        tx.run(
            q("INSERT INTO accounts (app_id, user_id, remote_id, ownership, status, last_applied, last_event_id, \
               updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
               ON CONFLICT (app_id, user_id) DO UPDATE SET remote_id = excluded.remote_id, \
               ownership = excluded.ownership, status = excluded.status, last_applied = excluded.last_applied, \
               updated_at = excluded.updated_at")
            .bind(app)
            .bind(user)
            .bind(linked.remote_id)
            .bind(linked.ownership.map(directory::Ownership::as_str))
            .bind(linked.status.as_str())
            .bind(linked.last_applied.map(Json))
            .bind(linked.last_event_id)
            .bind(directory::now()),
        )
        .await?;
        // Planned again: with no values applied yet, the planner queues an update.
        tx.change(NewChange::account(user, app)).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "account.link",
                target_type: "account",
                target_id: format!("{app}:{user}"),
                before: before.as_ref().and_then(to_value),
                after: Some(serde_json::json!({ "remote_id": remote_id })),
            },
        )
        .await?;
        let account = account_in(&mut tx, app, user).await?.ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(account)
    }

    async fn set_app_capabilities(&self, app: Uuid, capabilities: &Value) -> Result<()> {
        let mut tx = self.begin().await?;
        let done = tx
            .run(q("UPDATE apps SET capabilities = ? WHERE id = ?").bind(Json(capabilities.clone())).bind(app))
            .await?;
        if done == 0 {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        }
        tx.commit().await
    }

    async fn get_app_capabilities(&self, app: Uuid) -> Result<Option<Value>> {
        let row = self.read().await?.opt(q("SELECT capabilities FROM apps WHERE id = ?").bind(app)).await?;
        match row {
            Some(r) => r.opt_value("capabilities"),
            None => Ok(None),
        }
    }

    /// One conditional upsert: under concurrency the second writer waits for the first's row
    /// and then sees its `last_run`, so only one process runs the job per period.
    async fn try_run_schedule(&self, name: &str, every: Duration) -> Result<bool> {
        let now = directory::now();
        let due_before = chrono::Duration::from_std(every)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut tx = self.begin().await?;
        let done = tx
            .run(
                q("INSERT INTO schedules (name, last_run) VALUES (?, ?) \
                   ON CONFLICT (name) DO UPDATE SET last_run = excluded.last_run WHERE schedules.last_run <= ?")
                .bind(name)
                .bind(now)
                .bind(due_before),
            )
            .await?;
        tx.commit().await?;
        Ok(done > 0)
    }

    async fn try_hold_lease(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = directory::now();
        let expired = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut tx = self.begin().await?;
        let done = tx
            .run(
                q("INSERT INTO schedules (name, last_run, owner) VALUES (?, ?, ?) \
                   ON CONFLICT (name) DO UPDATE SET last_run = excluded.last_run, owner = excluded.owner \
                   WHERE schedules.owner = excluded.owner OR schedules.owner IS NULL OR schedules.last_run <= ?")
                .bind(name)
                .bind(now)
                .bind(owner)
                .bind(expired),
            )
            .await?;
        tx.commit().await?;
        Ok(done > 0)
    }
}
