//! The provisioning half of [`SqliteStore`]: account records, the durable operation queue
//! (each operation is the event admins see) and the planner's cursor into the change feed.
//!
//! The account record's status is always derived from the operations of its pair by
//! `refresh_account`: the newest open operation, else the newest one that finished (not
//! cancelled or rejected), else the newest one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::SubsecRound;
use directory::{Account, Action, Event, EventStatus, OpState, Operation, Ownership};

use super::*;
use crate::provisioning::*;

pub(super) const OP_COLUMNS: &str =
    "seq, id, app_id, app_name, user_id, username, action, desired, state, status, reason, \
    recommended_action, attempts, resolved_by, next_run_at, lease_owner, lease_expires_at, created_at, updated_at, \
    cause";

/// The account columns, with the user's username (empty when the user row is gone).
const ACCOUNT_SELECT: &str = "SELECT a.app_id, a.user_id, COALESCE(u.username, '') AS username, a.remote_id, \
    a.ownership, a.status, a.last_applied, a.last_event_id, a.updated_at, a.departure, a.rejected \
    FROM accounts a LEFT JOIN users u ON u.id = a.user_id";

/// The sort key of account listings.
const ACCOUNT_KEY: &str = "COALESCE(u.username_key, '')";

/// An operation `o` a worker may claim now (`?1` is now), once `o` is known to be queued and
/// due, or running with an expired lease: the oldest open one of its pair, and no other one of
/// the pair is running under a live lease.
const RUNNABLE: &str = "NOT EXISTS (SELECT 1 FROM operations p WHERE p.app_id = o.app_id AND p.user_id = o.user_id \
      AND p.state IN ('queued', 'awaiting_approval', 'running') AND p.seq < o.seq) \
    AND NOT EXISTS (SELECT 1 FROM operations r WHERE r.app_id = o.app_id AND r.user_id = o.user_id \
      AND r.seq <> o.seq AND r.state = 'running' AND r.lease_expires_at >= ?1)";

/// How many pairs [`ProvisioningStore::load_pairs`] loads per batch of queries.
const PAIR_CHUNK: usize = 1000;

/// The most operations one claim may take.
const MAX_CLAIM: u32 = 1000;

/// New operations per insert statement (eight bound values each).
const ENQUEUE_CHUNK: usize = 100;

/// Finished operations per statement (eight bound values each for their account records).
const FINISH_CHUNK: usize = 100;

fn parse_status(s: &str) -> Result<EventStatus> {
    EventStatus::parse(s).ok_or_else(|| StoreError::Backend(format!("bad event status {s}")))
}

fn parse_opt_json(text: Option<String>, col: &str) -> Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Backend(format!("bad JSON in {col}: {e}"))))
        .transpose()
}

pub(super) fn event_from_row(row: &SqliteRow) -> Result<Event> {
    let action: String = get(row, "action")?;
    let status: String = get(row, "status")?;
    Ok(Event {
        id: get_uuid(row, "id")?,
        app_id: get_uuid(row, "app_id")?,
        app_name: get(row, "app_name")?,
        user_id: get_uuid(row, "user_id")?,
        username: get(row, "username")?,
        action: Action::parse(&action).ok_or_else(|| StoreError::Backend(format!("bad action {action}")))?,
        status: parse_status(&status)?,
        reason: get(row, "reason")?,
        recommended_action: get(row, "recommended_action")?,
        attempts: get(row, "attempts")?,
        resolved_by: get_opt_uuid(row, "resolved_by")?,
        created_at: get_ts(row, "created_at")?,
        updated_at: get_ts(row, "updated_at")?,
        cause: parse_opt_json(get(row, "cause")?, "cause")?.and_then(|v| serde_json::from_value(v).ok()),
    })
}

fn op_from_row(row: &SqliteRow) -> Result<Operation> {
    let state: String = get(row, "state")?;
    Ok(Operation {
        event: event_from_row(row)?,
        state: OpState::parse(&state).ok_or_else(|| StoreError::Backend(format!("bad operation state {state}")))?,
        desired: parse_opt_json(get(row, "desired")?, "desired")?,
        next_run_at: get_ts(row, "next_run_at")?,
        lease_owner: get(row, "lease_owner")?,
        lease_expires_at: get_opt_ts(row, "lease_expires_at")?,
    })
}

fn account_from_row(row: &SqliteRow) -> Result<Account> {
    let ownership: Option<String> = get(row, "ownership")?;
    let status: String = get(row, "status")?;
    Ok(Account {
        app_id: get_uuid(row, "app_id")?,
        user_id: get_uuid(row, "user_id")?,
        username: get(row, "username")?,
        remote_id: get(row, "remote_id")?,
        ownership: ownership
            .map(|o| Ownership::parse(&o).ok_or_else(|| StoreError::Backend(format!("bad ownership {o}"))))
            .transpose()?,
        status: parse_status(&status)?,
        last_applied: parse_opt_json(get(row, "last_applied")?, "last_applied")?,
        last_event_id: get_opt_uuid(row, "last_event_id")?,
        updated_at: get_ts(row, "updated_at")?,
        departure: get(row, "departure")?,
        rejected: parse_opt_json(get(row, "rejected")?, "rejected")?,
    })
}

fn opt_json(v: Option<&Value>) -> Option<String> {
    v.map(Value::to_string)
}

/// The state and event status of a new or replaced operation.
fn initial_state(action: Action, needs_approval: bool, held: bool) -> (OpState, EventStatus) {
    if held {
        // Held by the deprovisioning guard: waits, like a pending one, for an admin.
        (OpState::AwaitingApproval, EventStatus::Held)
    } else if needs_approval {
        (OpState::AwaitingApproval, EventStatus::Pending)
    } else {
        (OpState::Queued, action.working_status())
    }
}

/// `(id, id, ...)` for an `IN` list.
fn push_ids(qb: &mut QueryBuilder<'_, Sqlite>, ids: &[String]) {
    qb.push("(");
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(id.clone());
    }
    list.push_unseparated(")");
}

fn distinct(ids: impl Iterator<Item = Uuid>) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).map(|id| id.to_string()).collect()
}

async fn op_in(tx: &mut Tx, id: Uuid) -> Result<Option<Operation>> {
    let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?");
    let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&mut **tx).await.map_err(backend)?;
    row.as_ref().map(op_from_row).transpose()
}

async fn account_in(tx: &mut Tx, app: Uuid, user: Uuid) -> Result<Option<Account>> {
    let sql = format!("{ACCOUNT_SELECT} WHERE a.app_id = ? AND a.user_id = ?");
    let row = sqlx::query(&sql)
        .bind(app.to_string())
        .bind(user.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
    row.as_ref().map(account_from_row).transpose()
}

/// The pair `(app, user)` of an operation, with its state, if it exists.
async fn op_pair(tx: &mut Tx, id: Uuid) -> Result<Option<(Uuid, Uuid, OpState)>> {
    let row = sqlx::query("SELECT app_id, user_id, state FROM operations WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
    row.map(|r| {
        let state: String = get(&r, "state")?;
        let state =
            OpState::parse(&state).ok_or_else(|| StoreError::Backend(format!("bad operation state {state}")))?;
        Ok((get_uuid(&r, "app_id")?, get_uuid(&r, "user_id")?, state))
    })
    .transpose()
}

/// Sets the account record's status and last event from the operations of its pair (creating
/// the record when missing): the newest open operation, else the newest finished one that was
/// not cancelled or rejected, else the newest one. Leaves the record alone when the pair has
/// no operation.
pub(super) async fn refresh_account(tx: &mut Tx, app: Uuid, user: Uuid, now: &str) -> Result<()> {
    refresh_pairs(tx, &[(app, user)], now).await
}

/// [`refresh_account`] for many pairs `(app, user)` (see [`WriteTx::refresh_accounts`]).
pub(super) async fn refresh_pairs(tx: &mut Tx, pairs: &[(Uuid, Uuid)], _now: &str) -> Result<()> {
    WriteTx::refresh_accounts(tx, pairs).await
}

/// Queues a new operation for a pair; its account record is to be refreshed (`refresh`).
/// `None` (nothing written) when the app or the user row does not exist.
#[allow(clippy::too_many_arguments)]
async fn enqueue(
    tx: &mut Tx,
    user_id: Uuid,
    app_id: Uuid,
    action: Action,
    desired: Option<&Value>,
    start: Start<'_>,
    now: &str,
    refresh: &mut Vec<(Uuid, Uuid)>,
) -> Result<Option<Uuid>> {
    let id = Uuid::now_v7();
    let (state, status) = initial_state(action, start.needs_approval, start.held);
    let done = sqlx::query(
        "INSERT INTO operations (id, app_id, app_name, user_id, username, username_key, action, desired, state, \
         status, attempts, next_run_at, replan, created_at, updated_at, cause) \
         SELECT ?1, a.id, a.name, u.id, u.username, u.username_key, ?2, ?3, ?4, ?5, 0, ?6, 0, ?6, ?6, ?9 \
         FROM apps a, users u WHERE a.id = ?7 AND u.id = ?8",
    )
    .bind(id.to_string())
    .bind(action.as_str())
    .bind(opt_json(desired))
    .bind(state.as_str())
    .bind(status.as_str())
    .bind(now)
    .bind(app_id.to_string())
    .bind(user_id.to_string())
    .bind(cause_json(start.cause))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    if done.rows_affected() == 0 {
        tracing::debug!(%user_id, %app_id, "not queueing an operation: the app or the user is gone");
        return Ok(None);
    }
    refresh.push((app_id, user_id));
    Ok(Some(id))
}

/// How a new or replaced operation starts.
#[derive(Clone, Copy)]
struct Start<'a> {
    needs_approval: bool,
    held: bool,
    cause: Option<&'a directory::Cause>,
}

fn cause_json(cause: Option<&directory::Cause>) -> Option<String> {
    cause.and_then(|c| serde_json::to_string(c).ok())
}

/// A new operation of a plan: (user, app, action, desired, how it starts).
type NewOp<'a> = (Uuid, Uuid, Action, Option<&'a Value>, Start<'a>);

/// Queues many new operations (the plan's `Enqueue` items), in queue order, with a few
/// statements per hundred; pairs whose app or user row is gone are skipped, as [`enqueue`]
/// does. Their account records are to be refreshed (`refresh`).
async fn enqueue_many(tx: &mut Tx, ops: &[NewOp<'_>], now: &str, refresh: &mut Vec<(Uuid, Uuid)>) -> Result<()> {
    for chunk in ops.chunks(ENQUEUE_CHUNK) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("WITH v(ord, id, app_id, user_id, action, desired, state, status, cause) AS (VALUES ");
        let mut list = qb.separated(", ");
        for (i, (user, app, action, desired, start)) in chunk.iter().enumerate() {
            let (state, status) = initial_state(*action, start.needs_approval, start.held);
            list.push("(");
            list.push_bind_unseparated(i as i64);
            for v in [Uuid::now_v7().to_string(), app.to_string(), user.to_string()] {
                list.push_unseparated(", ");
                list.push_bind_unseparated(v);
            }
            list.push_unseparated(", ");
            list.push_bind_unseparated(action.as_str());
            list.push_unseparated(", ");
            list.push_bind_unseparated(opt_json(*desired));
            list.push_unseparated(", ");
            list.push_bind_unseparated(state.as_str());
            list.push_unseparated(", ");
            list.push_bind_unseparated(status.as_str());
            list.push_unseparated(", ");
            list.push_bind_unseparated(cause_json(start.cause));
            list.push_unseparated(")");
        }
        qb.push(
            ") INSERT INTO operations (id, app_id, app_name, user_id, username, username_key, action, desired, \
             state, status, attempts, next_run_at, replan, created_at, updated_at, cause) \
             SELECT v.id, a.id, a.name, u.id, u.username, u.username_key, v.action, v.desired, v.state, v.status, \
             0, ",
        );
        qb.push_bind(now).push(", 0, ").push_bind(now).push(", ").push_bind(now).push(", v.cause");
        qb.push(
            " FROM v JOIN apps a ON a.id = v.app_id JOIN users u ON u.id = v.user_id ORDER BY v.ord \
             RETURNING app_id, user_id",
        );
        let rows = qb.build().fetch_all(&mut **tx).await.map_err(backend)?;
        if rows.len() < chunk.len() {
            tracing::debug!(skipped = chunk.len() - rows.len(), "not queueing operations: their app or user is gone");
        }
        for r in &rows {
            refresh.push((get_uuid(r, "app_id")?, get_uuid(r, "user_id")?));
        }
    }
    Ok(())
}

/// Writes one plan item; the account records of the pairs it touched are to be refreshed.
async fn apply_item(tx: &mut Tx, item: &PlanItem, now: &str, refresh: &mut Vec<(Uuid, Uuid)>) -> Result<()> {
    match item {
        PlanItem::Enqueue { user_id, app_id, action, desired, needs_approval, held, cause } => {
            let start = Start { needs_approval: *needs_approval, held: *held, cause: cause.as_ref() };
            enqueue(tx, *user_id, *app_id, *action, desired.as_ref(), start, now, refresh).await?;
        }
        PlanItem::Replace { op, action, desired, needs_approval, held, cause } => {
            let start = Start { needs_approval: *needs_approval, held: *held, cause: cause.as_ref() };
            let (state, status) = initial_state(*action, *needs_approval, *held);
            let replaced = sqlx::query(
                "UPDATE operations SET action = ?, desired = ?, state = ?, status = ?, reason = NULL, \
                 cause = COALESCE(?, cause), \
                 recommended_action = NULL, next_run_at = ?, updated_at = ?, \
                 app_name = COALESCE((SELECT name FROM apps WHERE apps.id = operations.app_id), app_name), \
                 username = COALESCE((SELECT username FROM users WHERE users.id = operations.user_id), username), \
                 username_key = COALESCE((SELECT username_key FROM users WHERE users.id = operations.user_id), \
                   username_key) \
                 WHERE id = ? AND state IN ('queued', 'awaiting_approval') RETURNING app_id, user_id",
            )
            .bind(action.as_str())
            .bind(opt_json(desired.as_ref()))
            .bind(state.as_str())
            .bind(status.as_str())
            .bind(cause_json(cause.as_ref()))
            .bind(now)
            .bind(now)
            .bind(op.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
            match replaced {
                Some(row) => refresh.push((get_uuid(&row, "app_id")?, get_uuid(&row, "user_id")?)),
                // Claimed or finished meanwhile: what it will do (or did) is stale.
                None => match op_pair(tx, *op).await? {
                    Some((app, user, _)) => {
                        enqueue(tx, user, app, *action, desired.as_ref(), start, now, refresh).await?;
                    }
                    None => tracing::debug!(%op, "not replacing an operation that does not exist"),
                },
            }
        }
        PlanItem::Cancel { op, reason } => {
            let cancelled = sqlx::query(
                "UPDATE operations SET state = 'done', status = 'cancelled', reason = ?, updated_at = ? \
                 WHERE id = ? AND state IN ('queued', 'awaiting_approval') RETURNING app_id, user_id",
            )
            .bind(reason)
            .bind(now)
            .bind(op.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
            match cancelled {
                Some(row) => refresh.push((get_uuid(&row, "app_id")?, get_uuid(&row, "user_id")?)),
                None => replan(tx, *op, now).await?,
            }
        }
        PlanItem::Replan { op } => replan(tx, *op, now).await?,
        PlanItem::Observe { user_id, app_id, account: AccountWrite::Set { remote_id, ownership, last_applied } } => {
            sqlx::query(
                "INSERT INTO accounts (app_id, user_id, remote_id, ownership, status, last_applied, last_event_id, \
                 updated_at) VALUES (?, ?, ?, ?, 'provisioned', ?, NULL, ?) \
                 ON CONFLICT (app_id, user_id) DO UPDATE SET remote_id = excluded.remote_id, \
                 ownership = excluded.ownership, last_applied = excluded.last_applied, updated_at = excluded.updated_at",
            )
            .bind(app_id.to_string())
            .bind(user_id.to_string())
            .bind(remote_id.as_deref())
            .bind(ownership.map(Ownership::as_str))
            .bind(opt_json(last_applied.as_ref()))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
        PlanItem::Observe { account: AccountWrite::Keep, .. } => {}
        PlanItem::Forget { user_id, app_id } => {
            sqlx::query("UPDATE accounts SET rejected = NULL WHERE app_id = ? AND user_id = ?")
                .bind(app_id.to_string())
                .bind(user_id.to_string())
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
        }
        PlanItem::Depart { user_id, app_id, departure } => {
            sqlx::query("UPDATE accounts SET departure = ? WHERE app_id = ? AND user_id = ?")
                .bind(departure.as_deref())
                .bind(app_id.to_string())
                .bind(user_id.to_string())
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
        }
        PlanItem::Fail { user_id, app_id, action, reason } => {
            let start = Start { needs_approval: false, held: false, cause: None };
            if let Some(id) = enqueue(tx, *user_id, *app_id, *action, None, start, now, refresh).await? {
                sqlx::query(
                    "UPDATE operations SET state = 'done', status = 'failed', reason = ?, recommended_action = ? \
                     WHERE id = ?",
                )
                .bind(reason)
                .bind("Fill in the missing values in the directory, or change the app's parameters; the account is planned again at the next change.")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            }
        }
    }
    Ok(())
}

/// Has a pair planned again once `op` finishes; if it already has (between the planner's read
/// and its write), records an account change right away.
async fn replan(tx: &mut Tx, op: Uuid, now: &str) -> Result<()> {
    match op_pair(tx, op).await? {
        Some((app, user, OpState::Done)) => WriteTx::change(tx, NewChange::account(user, app)).await,
        Some(_) => {
            sqlx::query("UPDATE operations SET replan = 1, updated_at = ? WHERE id = ?")
                .bind(now)
                .bind(op.to_string())
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            Ok(())
        }
        None => Ok(()),
    }
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> Result<DateTime<Utc>> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(|t| t.trunc_subsecs(6))
        .ok_or_else(|| StoreError::Backend(format!("lease of {lease:?} is out of range")))
}

impl SqliteStore {
    /// Moves an operation on behalf of an admin (approve, reject, retry), with its audit entry.
    /// `transition` is told whether a newer operation of the pair exists.
    async fn admin_transition(
        &self,
        id: Uuid,
        actor: &Actor,
        audit_action: &str,
        transition: impl FnOnce(&Operation, bool) -> Result<(OpState, EventStatus, Option<String>)>,
    ) -> Result<Event> {
        let mut tx = self.begin().await?;
        let before = op_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        // Whether a newer operation exists for the same pair.
        let newer = sqlx::query(
            "SELECT 1 FROM operations WHERE app_id = ? AND user_id = ? AND id <> ? AND seq > \
             (SELECT seq FROM operations WHERE id = ?) LIMIT 1",
        )
        .bind(before.event.app_id.to_string())
        .bind(before.event.user_id.to_string())
        .bind(id.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .is_some();
        let (state, status, reason) = transition(&before, newer)?;
        let now = ts(&directory::now());
        let sql = format!(
            "UPDATE operations SET state = ?, status = ?, reason = ?, \
             recommended_action = CASE WHEN ? = 'done' THEN recommended_action ELSE NULL END, \
             next_run_at = CASE WHEN ? = 'done' THEN next_run_at ELSE ? END, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = ? WHERE id = ? RETURNING {OP_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(status.as_str())
            .bind(reason)
            .bind(state.as_str())
            .bind(state.as_str())
            .bind(&now)
            .bind(&now)
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let after = op_from_row(&row)?.event;
        refresh_account(&mut tx, after.app_id, after.user_id, &now).await?;
        if after.status == EventStatus::Rejected {
            // Rejections stick: the planner does not queue this again by itself.
            let rejected = serde_json::json!({"action": after.action, "desired": before.desired});
            sqlx::query("UPDATE accounts SET rejected = ? WHERE app_id = ? AND user_id = ?")
                .bind(rejected.to_string())
                .bind(after.app_id.to_string())
                .bind(after.user_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
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
        tx.commit().await.map_err(backend)?;
        Ok(after)
    }
}

#[async_trait]
impl ProvisioningStore for SqliteStore {
    async fn engine_cursor(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM engine_state WHERE name = 'change_cursor'")
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.map_or(Ok(0), |r| get(&r, "value"))
    }

    async fn apps_of_user(&self, user: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT ra.app_id AS id FROM role_apps ra JOIN role_users ru ON ru.role_id = ra.role_id \
             WHERE ru.user_id = ?1 \
             UNION SELECT app_id AS id FROM accounts WHERE user_id = ?1 ORDER BY id",
        )
        .bind(user.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| get_uuid(r, "id")).collect()
    }

    async fn apps_of_users(&self, users: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
        let mut out = Vec::new();
        for chunk in users.chunks(PAIR_CHUNK) {
            let ids = distinct(chunk.iter().copied());
            let mut qb = QueryBuilder::new(
                "SELECT ru.user_id AS user_id, ra.app_id AS app_id FROM role_apps ra \
                 JOIN role_users ru ON ru.role_id = ra.role_id WHERE ru.user_id IN ",
            );
            push_ids(&mut qb, &ids);
            qb.push(" UNION SELECT user_id, app_id FROM accounts WHERE user_id IN ");
            push_ids(&mut qb, &ids);
            for r in qb.build().fetch_all(&self.reader).await.map_err(backend)? {
                out.push((get_uuid(&r, "user_id")?, get_uuid(&r, "app_id")?));
            }
        }
        Ok(out)
    }

    async fn users_of_app(&self, app: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT ru.user_id AS id FROM role_users ru JOIN role_apps ra ON ra.role_id = ru.role_id \
             WHERE ra.app_id = ?1 \
             UNION SELECT user_id AS id FROM accounts WHERE app_id = ?1 ORDER BY id",
        )
        .bind(app.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| get_uuid(r, "id")).collect()
    }

    async fn load_pairs(&self, pairs: &[(Uuid, Uuid)]) -> Result<Vec<PairState>> {
        // One read transaction: every pair is read from the same snapshot.
        let mut tx = self.reader.begin().await.map_err(backend)?;
        let mut out = Vec::with_capacity(pairs.len());
        // The apps once for the whole call (few, and each shared by many pairs).
        let all_apps = distinct(pairs.iter().map(|p| p.1));
        let mut apps = HashMap::new();
        for ids in all_apps.chunks(PAIR_CHUNK) {
            let mut qb = QueryBuilder::new(format!("SELECT {APP_COLUMNS} FROM apps WHERE id IN "));
            push_ids(&mut qb, ids);
            for r in qb.build().fetch_all(&mut *tx).await.map_err(backend)? {
                let a = app_from_row(&r)?;
                apps.insert(a.id, a);
            }
            // "SAML JIT only" apps create their accounts at sign-in: the planner sees
            // provisioning off for them, so it pushes nothing (see `PairState::app`).
            let mut qb = QueryBuilder::new("SELECT app_id FROM app_saml WHERE jit_only = 1 AND app_id IN ");
            push_ids(&mut qb, ids);
            for r in qb.build().fetch_all(&mut *tx).await.map_err(backend)? {
                if let Some(app) = apps.get_mut(&get_uuid(&r, "app_id")?) {
                    app.provisioning.enabled = false;
                }
            }
        }
        let apps: HashMap<Uuid, Arc<App>> = apps.into_iter().map(|(id, a)| (id, Arc::new(a))).collect();
        for chunk in pairs.chunks(PAIR_CHUNK) {
            let user_ids = distinct(chunk.iter().map(|p| p.0));
            let app_ids = distinct(chunk.iter().map(|p| p.1));

            let mut qb = QueryBuilder::new(format!("SELECT {USER_COLUMNS} FROM users WHERE id IN "));
            push_ids(&mut qb, &user_ids);
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(backend)?;
            let users = rows
                .iter()
                .map(|r| user_from_row(r).map(|u| (u.id, Arc::new(u))))
                .collect::<Result<HashMap<_, _>>>()?;

            let mut qb = QueryBuilder::new(
                "SELECT DISTINCT ru.user_id, ra.app_id FROM role_users ru \
                 JOIN role_apps ra ON ra.role_id = ru.role_id WHERE ru.user_id IN ",
            );
            push_ids(&mut qb, &user_ids);
            qb.push(" AND ra.app_id IN ");
            push_ids(&mut qb, &app_ids);
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(backend)?;
            let grants = rows
                .iter()
                .map(|r| Ok((get_uuid(r, "user_id")?, get_uuid(r, "app_id")?)))
                .collect::<Result<HashSet<_>>>()?;

            let mut qb = QueryBuilder::new(
                "SELECT ru.user_id, r.id, r.name FROM role_users ru JOIN roles r ON r.id = ru.role_id \
                 WHERE ru.user_id IN ",
            );
            push_ids(&mut qb, &user_ids);
            qb.push(" ORDER BY r.name_key");
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(backend)?;
            let mut roles: HashMap<Uuid, Vec<directory::RoleRef>> = HashMap::new();
            for r in &rows {
                roles
                    .entry(get_uuid(r, "user_id")?)
                    .or_default()
                    .push(directory::RoleRef { id: get_uuid(r, "id")?, name: get(r, "name")? });
            }

            let mut qb = QueryBuilder::new(format!("{ACCOUNT_SELECT} WHERE a.user_id IN "));
            push_ids(&mut qb, &user_ids);
            qb.push(" AND a.app_id IN ");
            push_ids(&mut qb, &app_ids);
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(backend)?;
            let accounts = rows
                .iter()
                .map(|r| account_from_row(r).map(|a| ((a.user_id, a.app_id), a)))
                .collect::<Result<HashMap<_, _>>>()?;

            let mut qb = QueryBuilder::new(format!(
                "SELECT {OP_COLUMNS} FROM operations \
                 WHERE state IN ('queued', 'awaiting_approval', 'running') AND user_id IN "
            ));
            push_ids(&mut qb, &user_ids);
            qb.push(" AND app_id IN ");
            push_ids(&mut qb, &app_ids);
            qb.push(" ORDER BY seq");
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(backend)?;
            // (running, waiting), the oldest of each.
            let mut open: HashMap<(Uuid, Uuid), (Option<Operation>, Option<Operation>)> = HashMap::new();
            for row in &rows {
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
        tx.rollback().await.map_err(backend)?;
        Ok(out)
    }

    async fn apply_plan(&self, plan: &PlanWrite) -> Result<()> {
        let now = ts(&directory::now());
        let mut tx = self.begin().await?;
        if let Some(c) = plan.cursor {
            sqlx::query(
                "INSERT INTO engine_state (name, value) VALUES ('change_cursor', ?) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(c)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        let mut refresh = Vec::new();
        // New operations, the bulk of a plan, together; the rest one by one.
        let mut new_ops: Vec<NewOp<'_>> = Vec::new();
        for item in &plan.items {
            match item {
                PlanItem::Enqueue { user_id, app_id, action, desired, needs_approval, held, cause } => {
                    let start = Start { needs_approval: *needs_approval, held: *held, cause: cause.as_ref() };
                    new_ops.push((*user_id, *app_id, *action, desired.as_ref(), start));
                }
                _ => apply_item(&mut tx, item, &now, &mut refresh).await?,
            }
        }
        enqueue_many(&mut tx, &new_ops, &now, &mut refresh).await?;
        refresh_pairs(&mut tx, &refresh, &now).await?;
        tx.commit().await.map_err(backend)
    }

    async fn claim_operations(&self, app: Uuid, owner: &str, limit: u32, lease: Duration) -> Result<Vec<Operation>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now_t = directory::now();
        let now = ts(&now_t);
        let expires = ts(&lease_end(now_t, lease)?);
        let mut tx = self.begin().await?;
        // A quarantined app's queue is paused.
        let paused = sqlx::query("SELECT 1 FROM app_health WHERE app_id = ? AND quarantined = 1")
            .bind(app.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if paused.is_some() {
            tx.rollback().await.map_err(backend)?;
            return Ok(Vec::new());
        }
        // Queued and due, and running with an expired lease, each walked in queue order on the
        // (app_id, state, seq) index (named: left to itself SQLite walks every queued operation
        // and sorts), stopping at the limit, then merged.
        let sql = format!(
            "SELECT seq FROM (SELECT o.seq FROM operations o INDEXED BY operations_claim WHERE o.app_id = ?2 \
               AND o.state = 'queued' AND o.next_run_at <= ?1 AND {RUNNABLE} ORDER BY o.seq LIMIT ?3) \
             UNION ALL SELECT seq FROM (SELECT o.seq FROM operations o INDEXED BY operations_claim WHERE o.app_id = ?2 \
               AND o.state = 'running' AND o.lease_expires_at < ?1 AND {RUNNABLE} ORDER BY o.seq LIMIT ?3) \
             ORDER BY seq LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(&now)
            .bind(app.to_string())
            .bind(i64::from(limit.min(MAX_CLAIM)))
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        if rows.is_empty() {
            tx.rollback().await.map_err(backend)?;
            return Ok(Vec::new());
        }
        // One statement for the whole claim; the working status follows each one's action.
        let working: String = [Action::Create, Action::Update, Action::Suspend, Action::Delete]
            .iter()
            .map(|a| format!("WHEN '{}' THEN '{}' ", a.as_str(), a.working_status().as_str()))
            .collect();
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE operations SET state = 'running', lease_owner = ");
        qb.push_bind(owner)
            .push(", lease_expires_at = ")
            .push_bind(&expires)
            .push(format!(", attempts = attempts + 1, status = CASE action {working}ELSE status END, updated_at = "))
            .push_bind(&now)
            .push(" WHERE seq IN (");
        let mut list = qb.separated(", ");
        for row in &rows {
            list.push_bind(get::<i64>(row, "seq")?);
        }
        qb.push(format!(") RETURNING {OP_COLUMNS}"));
        let updated = qb.build().fetch_all(&mut *tx).await.map_err(backend)?;
        let mut claimed = updated
            .iter()
            .map(|r| Ok((get::<i64>(r, "seq")?, op_from_row(r)?)))
            .collect::<Result<Vec<(i64, Operation)>>>()?;
        claimed.sort_by_key(|(seq, _)| *seq);
        let claimed: Vec<Operation> = claimed.into_iter().map(|(_, o)| o).collect();
        let pairs: Vec<(Uuid, Uuid)> = claimed.iter().map(|o| (o.event.app_id, o.event.user_id)).collect();
        refresh_pairs(&mut tx, &pairs, &now).await?;
        tx.commit().await.map_err(backend)?;
        Ok(claimed)
    }

    async fn apps_with_due_operations(&self) -> Result<Vec<Uuid>> {
        // Due or orphaned work, without the per-pair order (which the claim applies): cheap
        // enough to ask on every dispatch, at the price of an occasional claim of nothing.
        // The apps that have operations at all (a loose index scan: one probe per app, however
        // long the queue), then whether each has due or orphaned work.
        let sql = "WITH RECURSIVE a(id) AS (SELECT MIN(app_id) FROM operations \
                     UNION ALL SELECT (SELECT MIN(app_id) FROM operations WHERE app_id > a.id) FROM a \
                     WHERE a.id IS NOT NULL) \
                   SELECT id FROM a WHERE id IS NOT NULL \
                   AND NOT EXISTS (SELECT 1 FROM app_health h WHERE h.app_id = a.id AND h.quarantined = 1) AND (\
                     EXISTS (SELECT 1 FROM operations o WHERE o.app_id = a.id AND o.state = 'queued' \
                       AND o.next_run_at <= ?1) \
                     OR EXISTS (SELECT 1 FROM operations o WHERE o.app_id = a.id AND o.state = 'running' \
                       AND o.lease_expires_at < ?1))";
        let rows = sqlx::query(sql).bind(ts(&directory::now())).fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(|r| get_uuid(r, "id")).collect()
    }

    async fn finish_operation(&self, op: Uuid, owner: &str, outcome: &Outcome) -> Result<bool> {
        Ok(self.finish_operations(owner, &[(op, outcome.clone())]).await?.first().copied().unwrap_or(false))
    }

    async fn finish_operations(&self, owner: &str, done: &[(Uuid, Outcome)]) -> Result<Vec<bool>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let now = ts(&directory::now());
        let mut tx = self.begin().await?;
        let by_id: HashMap<Uuid, &Outcome> = done.iter().map(|(id, o)| (*id, o)).collect();
        let mut recorded: HashMap<Uuid, (Uuid, Uuid)> = HashMap::new();
        let mut refresh = Vec::new();
        // Per app: operations finished (for the quarantine ratio and the rate), and whether one
        // succeeded (which ends a run of refused credentials).
        let mut finished: HashMap<Uuid, (i64, bool)> = HashMap::new();
        for chunk in done.chunks(FINISH_CHUNK) {
            // The operations, each fenced on its own lease, in one statement.
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("WITH d(op_id, op_status, op_reason, op_action) AS (VALUES ");
            let mut list = qb.separated(", ");
            for (id, o) in chunk {
                list.push("(");
                list.push_bind_unseparated(id.to_string());
                list.push_unseparated(", ");
                list.push_bind_unseparated(o.status.as_str());
                list.push_unseparated(", ");
                list.push_bind_unseparated(o.reason.clone());
                list.push_unseparated(", ");
                list.push_bind_unseparated(o.recommended_action.clone());
                list.push_unseparated(")");
            }
            qb.push(
                ") UPDATE operations SET state = 'done', status = d.op_status, reason = d.op_reason, \
                 recommended_action = d.op_action, lease_owner = NULL, lease_expires_at = NULL, updated_at = ",
            );
            qb.push_bind(&now).push(
                " FROM d WHERE operations.id = d.op_id AND operations.state = 'running' \
                 AND operations.lease_owner = ",
            );
            qb.push_bind(owner).push(" RETURNING id, app_id, user_id, replan");
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(backend)?;
            let mut sets = Vec::new();
            let mut resolved = Vec::new();
            for r in &rows {
                let (op, app, user) = (get_uuid(r, "id")?, get_uuid(r, "app_id")?, get_uuid(r, "user_id")?);
                let marked: i64 = get(r, "replan")?;
                let Some(outcome) = by_id.get(&op) else { continue };
                if let AccountWrite::Set { remote_id, ownership, last_applied } = &outcome.account {
                    sets.push((op, app, user, remote_id, ownership, last_applied, outcome.status));
                }
                if outcome.replan || marked != 0 {
                    WriteTx::change(&mut tx, NewChange::account(user, app)).await?;
                }
                recorded.insert(op, (app, user));
                refresh.push((app, user));
                if counts_as_finished(outcome.status) {
                    let e = finished.entry(app).or_insert((0, false));
                    e.0 += 1;
                    e.1 |= succeeded(outcome.status);
                }
                if succeeded(outcome.status) {
                    resolved.push((op, app, user));
                }
            }
            // Earlier failures of the pairs that succeeded now are resolved by them.
            if !resolved.is_empty() {
                let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("WITH d(op_id, app, usr) AS (VALUES ");
                let mut list = qb.separated(", ");
                for (op, app, user) in resolved.drain(..) {
                    list.push("(");
                    list.push_bind_unseparated(op.to_string());
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(app.to_string());
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(user.to_string());
                    list.push_unseparated(")");
                }
                qb.push(
                    ") UPDATE operations SET resolved_by = d.op_id FROM d WHERE operations.app_id = d.app \
                     AND operations.user_id = d.usr AND operations.status = 'failed' \
                     AND operations.resolved_by IS NULL AND operations.id <> d.op_id",
                );
                qb.build().execute(&mut *tx).await.map_err(backend)?;
            }
            // Their account records' remote ids, ownership and values, in one statement.
            if !sets.is_empty() {
                let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO accounts (app_id, user_id, remote_id, ownership, status, last_applied, \
                     last_event_id, updated_at) VALUES ",
                );
                let mut list = qb.separated(", ");
                for (op, app, user, remote_id, ownership, last_applied, status) in sets {
                    list.push("(");
                    list.push_bind_unseparated(app.to_string());
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(user.to_string());
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(remote_id.clone());
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(ownership.map(Ownership::as_str));
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(status.as_str());
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(opt_json(last_applied.as_ref()));
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(op.to_string());
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(now.clone());
                    list.push_unseparated(")");
                }
                qb.push(
                    " ON CONFLICT (app_id, user_id) DO UPDATE SET remote_id = excluded.remote_id, \
                     ownership = excluded.ownership, last_applied = excluded.last_applied, \
                     updated_at = excluded.updated_at",
                );
                qb.build().execute(&mut *tx).await.map_err(backend)?;
            }
        }
        if recorded.is_empty() {
            tx.rollback().await.map_err(backend)?;
        } else {
            let minute = crate::sql::health::minute_of(&directory::now());
            for (app, (n, success)) in finished {
                sqlx::query(
                    "INSERT INTO app_outcomes (app_id, minute, finished) VALUES (?, ?, ?) ON CONFLICT (app_id, minute) \
                     DO UPDATE SET finished = app_outcomes.finished + excluded.finished",
                )
                .bind(app.to_string())
                .bind(minute)
                .bind(n)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                sqlx::query("DELETE FROM app_outcomes WHERE app_id = ? AND minute < ?")
                    .bind(app.to_string())
                    .bind(minute - crate::sql::health::KEEP_MINUTES)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                if success {
                    sqlx::query("UPDATE app_health SET auth_refusals = 0 WHERE app_id = ? AND auth_refusals > 0")
                        .bind(app.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
            }
            refresh_pairs(&mut tx, &refresh, &now).await?;
            tx.commit().await.map_err(backend)?;
        }
        Ok(done.iter().map(|(id, _)| recorded.contains_key(id)).collect())
    }

    async fn retry_operation_later(&self, op: Uuid, owner: &str, at: DateTime<Utc>, reason: &str) -> Result<bool> {
        let now = ts(&directory::now());
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "UPDATE operations SET state = 'queued', next_run_at = ?, reason = ?, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = ? \
             WHERE id = ? AND state = 'running' AND lease_owner = ? RETURNING seq",
        )
        .bind(ts(&at))
        .bind(reason)
        .bind(&now)
        .bind(op.to_string())
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(row.is_some())
    }

    async fn release_all_leases(&self) -> Result<u64> {
        let now = ts(&directory::now());
        let done = sqlx::query(
            "UPDATE operations SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
             next_run_at = ?, updated_at = ? WHERE state = 'running'",
        )
        .bind(&now)
        .bind(&now)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn get_operation(&self, id: Uuid) -> Result<Option<Operation>> {
        let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.reader).await.map_err(backend)?;
        row.as_ref().map(op_from_row).transpose()
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Page<Event>> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {OP_COLUMNS} FROM operations WHERE 1 = 1"));
        if let Some(u) = query.user {
            qb.push(" AND user_id = ").push_bind(u.to_string());
        }
        if let Some(a) = query.app {
            qb.push(" AND app_id = ").push_bind(a.to_string());
        }
        if let Some(s) = query.status {
            qb.push(" AND status = ").push_bind(s.as_str());
            if s == EventStatus::Failed {
                // A failure resolved by a later success no longer counts as one.
                qb.push(" AND resolved_by IS NULL");
            }
        }
        if let Some(k) = &query.cause {
            qb.push(" AND json_extract(cause, '$.kind') = ").push_bind(k.clone());
        }
        if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
            qb.push(" AND username_key LIKE ").push_bind(like_pattern(q)).push(" ESCAPE '\\'");
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 1)?;
            let seq: i64 = key[0].parse().map_err(|_| StoreError::InvalidCursor)?;
            qb.push(" AND seq < ").push_bind(seq);
        }
        qb.push(" ORDER BY seq DESC LIMIT ").push_bind(limit_of(&query.page) + 1);
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        let events =
            rows.iter().map(|r| Ok((get::<i64>(r, "seq")?, event_from_row(r)?))).collect::<Result<Vec<_>>>()?;
        Ok(paginate(events, &query.page, |(seq, _)| vec![seq.to_string()]).map(|(_, e)| e))
    }

    async fn approve_operation(&self, id: Uuid, actor: &Actor) -> Result<Event> {
        self.admin_transition(id, actor, "event.approve", |op, _| match op.state {
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
        self.admin_transition(id, actor, "event.reject", |op, _| match op.state {
            OpState::AwaitingApproval => Ok((OpState::Done, EventStatus::Rejected, Some(reason))),
            _ => Err(StoreError::InvalidState(format!("event is {}, not pending", op.event.status.as_str()))),
        })
        .await
    }

    async fn retry_operation(&self, id: Uuid, actor: &Actor) -> Result<Event> {
        // An old operation is not run again once a newer one exists for the same pair: what it
        // would apply is stale (the newer one, or the planner, knows better).
        self.admin_transition(id, actor, "event.retry", |op, newer| match (op.state, op.event.status) {
            (OpState::Done, EventStatus::Failed) if newer => {
                Err(StoreError::InvalidState("event is superseded by a newer event for this account".into()))
            }
            (OpState::Done, EventStatus::Failed) => Ok((OpState::Queued, op.event.action.working_status(), None)),
            (_, status) => Err(StoreError::InvalidState(format!("event is {}, not failed", status.as_str()))),
        })
        .await
    }

    async fn allow_held_operation(&self, id: Uuid, needs_approval: bool, actor: &Actor) -> Result<Event> {
        self.admin_transition(id, actor, "event.allow", |op, _| match (op.state, op.event.status) {
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
        let op = op_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        if op.event.status != EventStatus::Rejected {
            return Err(StoreError::InvalidState(format!("event {id} is {}, not rejected", op.event.status.as_str())));
        }
        sqlx::query("UPDATE accounts SET rejected = NULL WHERE app_id = ? AND user_id = ?")
            .bind(op.event.app_id.to_string())
            .bind(op.event.user_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        WriteTx::change(&mut tx, NewChange::account(op.event.user_id, op.event.app_id)).await?;
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
        tx.commit().await.map_err(backend)?;
        Ok(op.event)
    }

    async fn count_recent_deprovisions(&self, app: Uuid, since: DateTime<Utc>) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM operations INDEXED BY operations_deprovisions WHERE app_id = ? \
             AND action IN ('suspend', 'delete') AND created_at >= ? \
             AND status NOT IN ('held', 'rejected', 'cancelled')",
        )
        .bind(app.to_string())
        .bind(ts(&since))
        .fetch_one(&self.writer)
        .await
        .map_err(backend)?;
        get(&row, "n")
    }

    async fn count_managed_accounts(&self, app: Uuid) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM accounts WHERE app_id = ? AND remote_id IS NOT NULL \
             AND ownership IN ('created', 'linked')",
        )
        .bind(app.to_string())
        .fetch_one(&self.reader)
        .await
        .map_err(backend)?;
        get(&row, "n")
    }

    async fn apply_settings_to_existing(&self, app: Uuid, actor: &Actor) -> Result<u64> {
        let mut tx = self.begin().await?;
        let current = Self::app_in(&mut tx, app).await?;
        let done = sqlx::query("UPDATE accounts SET departure = NULL WHERE app_id = ? AND departure IS NOT NULL")
            .bind(app.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        WriteTx::change(&mut tx, NewChange::app(app)).await?;
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
                    "accounts": done.rows_affected()})),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn get_account(&self, app: Uuid, user: Uuid) -> Result<Option<Account>> {
        let sql = format!("{ACCOUNT_SELECT} WHERE a.app_id = ? AND a.user_id = ?");
        let row = sqlx::query(&sql)
            .bind(app.to_string())
            .bind(user.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn get_accounts(&self, app: Uuid, users: &[Uuid]) -> Result<Vec<Account>> {
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(PAIR_CHUNK) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!("{ACCOUNT_SELECT} WHERE a.app_id = "));
            qb.push_bind(app.to_string()).push(" AND a.user_id IN ");
            push_ids(&mut qb, &distinct(chunk.iter().copied()));
            let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
            for row in &rows {
                out.push(account_from_row(row)?);
            }
        }
        Ok(out)
    }

    async fn list_accounts(&self, query: &AccountQuery) -> Result<Page<Account>> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!("{ACCOUNT_SELECT} WHERE 1 = 1"));
        if let Some(a) = query.app {
            qb.push(" AND a.app_id = ").push_bind(a.to_string());
        }
        if let Some(u) = query.user {
            qb.push(" AND a.user_id = ").push_bind(u.to_string());
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 3)?;
            qb.push(format!(" AND ({ACCOUNT_KEY}, a.user_id, a.app_id) > ("))
                .push_bind(key[0].clone())
                .push(", ")
                .push_bind(key[1].clone())
                .push(", ")
                .push_bind(key[2].clone())
                .push(")");
        }
        qb.push(format!(" ORDER BY {ACCOUNT_KEY}, a.user_id, a.app_id LIMIT ")).push_bind(limit_of(&query.page) + 1);
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        let accounts = rows.iter().map(account_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(accounts, &query.page, |a| {
            vec![User::username_key(&a.username), a.user_id.to_string(), a.app_id.to_string()]
        }))
    }

    async fn link_account(&self, app: Uuid, user: Uuid, remote_id: &str, actor: &Actor) -> Result<Account> {
        let mut tx = self.begin().await?;
        Self::app_in(&mut tx, app).await?;
        if Self::user_in(&mut tx, user).await?.status == UserStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        let taken = sqlx::query(
            "SELECT 1 FROM accounts WHERE app_id = ? AND remote_id = ? AND user_id <> ? \
             AND ownership IN ('created', 'linked') LIMIT 1",
        )
        .bind(app.to_string())
        .bind(remote_id)
        .bind(user.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if taken.is_some() {
            return Err(StoreError::Duplicate { field: "remote_id" });
        }
        let before = account_in(&mut tx, app, user).await?;
        let now = ts(&directory::now());
        sqlx::query(
            "INSERT INTO accounts (app_id, user_id, remote_id, ownership, status, last_applied, last_event_id, \
             updated_at) VALUES (?, ?, ?, 'linked', 'provisioned', NULL, NULL, ?) \
             ON CONFLICT (app_id, user_id) DO UPDATE SET remote_id = excluded.remote_id, ownership = 'linked', \
             status = 'provisioned', last_applied = NULL, updated_at = excluded.updated_at",
        )
        .bind(app.to_string())
        .bind(user.to_string())
        .bind(remote_id)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // Planned again: with no values applied yet, the planner queues an update.
        WriteTx::change(&mut tx, NewChange::account(user, app)).await?;
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
        tx.commit().await.map_err(backend)?;
        Ok(account)
    }

    async fn set_app_capabilities(&self, app: Uuid, capabilities: &Value) -> Result<()> {
        let done = sqlx::query("UPDATE apps SET capabilities = ? WHERE id = ?")
            .bind(capabilities.to_string())
            .bind(app.to_string())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn get_app_capabilities(&self, app: Uuid) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT capabilities FROM apps WHERE id = ?")
            .bind(app.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        match row {
            Some(r) => parse_opt_json(get(&r, "capabilities")?, "capabilities"),
            None => Ok(None),
        }
    }

    async fn try_run_schedule(&self, name: &str, every: Duration) -> Result<bool> {
        let now = directory::now();
        let due_before = chrono::Duration::from_std(every)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let done = sqlx::query(
            "INSERT INTO schedules (name, last_run) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET last_run = excluded.last_run WHERE schedules.last_run <= ?",
        )
        .bind(name)
        .bind(ts(&now))
        .bind(ts(&due_before))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn try_hold_lease(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = directory::now();
        let expired = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let done = sqlx::query(
            "INSERT INTO schedules (name, last_run, owner) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET last_run = excluded.last_run, owner = excluded.owner \
             WHERE schedules.owner = excluded.owner OR schedules.owner IS NULL OR schedules.last_run <= ?",
        )
        .bind(name)
        .bind(ts(&now))
        .bind(owner)
        .bind(ts(&expired))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }
}
