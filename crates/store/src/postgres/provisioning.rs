//! The provisioning half of [`PostgresStore`]: account records, the durable operation queue
//! (each operation is the event admins see) and the planner's cursor into the change feed.
//!
//! The semantics are those of the SQLite store; what several processes add:
//!
//! - The account record's status is derived from the operations of its pair at commit, under
//!   the pair's lock (see [`Tx`]), so it reflects every committed operation of the pair.
//! - A conditional `UPDATE` (by state, by lease owner) is the check: under READ COMMITTED, a
//!   row changed by a concurrent transaction is re-checked against its newest version, so a
//!   collapse, a cancellation or a re-plan mark never lands on an operation that finished
//!   meanwhile; the fallbacks (queue anew, record a change) apply instead.
//! - Claims of one app are serialised by an advisory lock and bounded by the app's
//!   `max_concurrency` across every process.

use std::collections::{HashMap, HashSet};

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

/// An operation `o` (queued and due, or running with an expired lease: the claim's two
/// queries) may be claimed now (`$1` is now) when it is the oldest open one of its pair and no
/// other one of the pair is running under a live lease.
///
/// One anti-join on the pair (both conditions in one subquery): with two, PostgreSQL may answer
/// "another running operation of the pair?" from the app's open-operations index, reading every
/// open operation of the app for each candidate.
const PAIR_FREE: &str = "NOT EXISTS (SELECT 1 FROM operations p WHERE p.user_id = o.user_id AND p.app_id = o.app_id \
      AND p.seq <> o.seq AND ((p.state IN ('queued', 'awaiting_approval', 'running') AND p.seq < o.seq) \
        OR (p.state = 'running' AND p.lease_expires_at >= $1)))";

/// How many pairs [`ProvisioningStore::load_pairs`] loads per batch of queries.
const PAIR_CHUNK: usize = 1000;

/// The most operations one claim may take.
const MAX_CLAIM: u32 = 1000;

/// New operations per insert statement.
const ENQUEUE_CHUNK: usize = 1000;

/// An app's concurrency limit when its settings name none.
const DEFAULT_MAX_RUNNING: i64 = 4;

fn parse_status(s: &str) -> Result<EventStatus> {
    EventStatus::parse(s).ok_or_else(|| StoreError::Backend(format!("bad event status {s}")))
}

fn parse_action(s: &str) -> Result<Action> {
    Action::parse(s).ok_or_else(|| StoreError::Backend(format!("bad action {s}")))
}

fn parse_state(s: &str) -> Result<OpState> {
    OpState::parse(s).ok_or_else(|| StoreError::Backend(format!("bad operation state {s}")))
}

pub(super) fn event_from_row(row: &PgRow) -> Result<Event> {
    let action: String = get(row, "action")?;
    let status: String = get(row, "status")?;
    Ok(Event {
        id: get(row, "id")?,
        app_id: get(row, "app_id")?,
        app_name: get(row, "app_name")?,
        user_id: get(row, "user_id")?,
        username: get(row, "username")?,
        action: parse_action(&action)?,
        status: parse_status(&status)?,
        reason: get(row, "reason")?,
        recommended_action: get(row, "recommended_action")?,
        attempts: get(row, "attempts")?,
        resolved_by: get(row, "resolved_by")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        cause: get::<Option<Value>>(row, "cause")?.and_then(|v| serde_json::from_value(v).ok()),
    })
}

fn op_from_row(row: &PgRow) -> Result<Operation> {
    let state: String = get(row, "state")?;
    Ok(Operation {
        event: event_from_row(row)?,
        state: parse_state(&state)?,
        desired: get(row, "desired")?,
        next_run_at: get(row, "next_run_at")?,
        lease_owner: get(row, "lease_owner")?,
        lease_expires_at: get(row, "lease_expires_at")?,
    })
}

fn account_from_row(row: &PgRow) -> Result<Account> {
    let ownership: Option<String> = get(row, "ownership")?;
    let status: String = get(row, "status")?;
    Ok(Account {
        app_id: get(row, "app_id")?,
        user_id: get(row, "user_id")?,
        username: get(row, "username")?,
        remote_id: get(row, "remote_id")?,
        ownership: ownership
            .map(|o| Ownership::parse(&o).ok_or_else(|| StoreError::Backend(format!("bad ownership {o}"))))
            .transpose()?,
        status: parse_status(&status)?,
        last_applied: get(row, "last_applied")?,
        last_event_id: get(row, "last_event_id")?,
        updated_at: get(row, "updated_at")?,
        departure: get(row, "departure")?,
        rejected: get(row, "rejected")?,
    })
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

fn distinct(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}

async fn op_in(tx: &mut Tx, id: Uuid) -> Result<Option<Operation>> {
    let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE id = $1 FOR UPDATE");
    let row = sqlx::query(&sql).bind(id).fetch_optional(tx.c()).await.map_err(backend)?;
    row.as_ref().map(op_from_row).transpose()
}

async fn account_in(tx: &mut Tx, app: Uuid, user: Uuid) -> Result<Option<Account>> {
    let sql = format!("{ACCOUNT_SELECT} WHERE a.app_id = $1 AND a.user_id = $2");
    let row = sqlx::query(&sql).bind(app).bind(user).fetch_optional(tx.c()).await.map_err(backend)?;
    row.as_ref().map(account_from_row).transpose()
}

/// The pair `(app, user)` of an operation, with its state, if it exists.
async fn op_pair(tx: &mut Tx, id: Uuid) -> Result<Option<(Uuid, Uuid, OpState)>> {
    let row = sqlx::query("SELECT app_id, user_id, state FROM operations WHERE id = $1")
        .bind(id)
        .fetch_optional(tx.c())
        .await
        .map_err(backend)?;
    row.map(|r| {
        let state: String = get(&r, "state")?;
        Ok((get(&r, "app_id")?, get(&r, "user_id")?, parse_state(&state)?))
    })
    .transpose()
}

/// Sets each account record's status and last event from the operations of its pair
/// (creating the record when missing): the newest open operation, else the newest finished one
/// that was not cancelled or rejected, else the newest one. Leaves a record alone when its pair
/// has no operation. Called by [`Tx::commit`] under the pairs' locks, with `apps[i]` and
/// `users[i]` the pairs.
pub(super) async fn refresh_accounts(tx: &mut Tx, apps: &[Uuid], users: &[Uuid]) -> Result<()> {
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

/// Queues a new operation for a pair and updates its account record. `None` (nothing written)
/// when the app or the user row does not exist.
async fn enqueue(
    tx: &mut Tx,
    user_id: Uuid,
    app_id: Uuid,
    action: Action,
    desired: Option<&Value>,
    start: Start<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>> {
    let id = Uuid::now_v7();
    let (state, status) = initial_state(action, start.needs_approval, start.held);
    let row = sqlx::query(
        "INSERT INTO operations (id, app_id, app_name, user_id, username, username_key, action, desired, state, \
         status, attempts, next_run_at, replan, created_at, updated_at, cause) \
         SELECT $1, a.id, a.name, u.id, u.username, u.username_key, $4, $5, $6, $7, 0, $8, false, $8, $8, $9 \
         FROM apps a, users u WHERE a.id = $2 AND u.id = $3 RETURNING seq",
    )
    .bind(id)
    .bind(app_id)
    .bind(user_id)
    .bind(action.as_str())
    .bind(desired)
    .bind(state.as_str())
    .bind(status.as_str())
    .bind(now)
    .bind(cause_json(start.cause))
    .fetch_optional(tx.c())
    .await
    .map_err(backend)?;
    if row.is_none() {
        tracing::debug!(%user_id, %app_id, "not queueing an operation: the app or the user is gone");
        return Ok(None);
    }
    tx.refresh(app_id, user_id);
    if state == OpState::Queued {
        tx.wake_operations();
    }
    Ok(Some(id))
}

/// How a new or replaced operation starts.
#[derive(Clone, Copy)]
struct Start<'a> {
    needs_approval: bool,
    held: bool,
    cause: Option<&'a directory::Cause>,
}

fn cause_json(cause: Option<&directory::Cause>) -> Option<Value> {
    cause.and_then(|c| serde_json::to_value(c).ok())
}

/// A new operation of a plan: (user, app, action, desired, how it starts).
type NewOp<'a> = (Uuid, Uuid, Action, Option<&'a Value>, Start<'a>);

/// Queues many new operations (the plan's `Enqueue` items) in queue order, one statement per
/// thousand; pairs whose app or user row is gone are skipped, as [`enqueue`] does.
async fn enqueue_many(tx: &mut Tx, ops: &[NewOp<'_>], now: DateTime<Utc>) -> Result<()> {
    for chunk in ops.chunks(ENQUEUE_CHUNK) {
        let mut ids = Vec::with_capacity(chunk.len());
        let (mut apps, mut users, mut actions, mut desired) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut states, mut statuses, mut causes) = (Vec::new(), Vec::new(), Vec::new());
        for (user, app, action, d, start) in chunk {
            let (state, status) = initial_state(*action, start.needs_approval, start.held);
            causes.push(cause_json(start.cause));
            ids.push(Uuid::now_v7());
            apps.push(*app);
            users.push(*user);
            actions.push(action.as_str());
            desired.push(d.cloned());
            states.push(state.as_str());
            statuses.push(status.as_str());
        }
        let rows = sqlx::query(
            "INSERT INTO operations (id, app_id, app_name, user_id, username, username_key, action, desired, state, \
             status, attempts, next_run_at, replan, created_at, updated_at, cause) \
             SELECT v.id, a.id, a.name, u.id, u.username, u.username_key, v.action, v.desired, v.state, v.status, \
             0, $8, false, $8, $8, v.cause \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::jsonb[], $6::text[], $7::text[], \
               $9::jsonb[]) WITH ORDINALITY AS v(id, app_id, user_id, action, desired, state, status, cause, ord) \
             JOIN apps a ON a.id = v.app_id JOIN users u ON u.id = v.user_id ORDER BY v.ord \
             RETURNING app_id, user_id, state",
        )
        .bind(&ids)
        .bind(&apps)
        .bind(&users)
        .bind(&actions)
        .bind(&desired)
        .bind(&states)
        .bind(&statuses)
        .bind(now)
        .bind(&causes)
        .fetch_all(tx.c())
        .await
        .map_err(backend)?;
        if rows.len() < chunk.len() {
            tracing::debug!(skipped = chunk.len() - rows.len(), "not queueing operations: their app or user is gone");
        }
        for r in &rows {
            tx.refresh(get(r, "app_id")?, get(r, "user_id")?);
            if get::<String>(r, "state")? == OpState::Queued.as_str() {
                tx.wake_operations();
            }
        }
    }
    Ok(())
}

async fn apply_item(tx: &mut Tx, item: &PlanItem, now: DateTime<Utc>) -> Result<()> {
    match item {
        PlanItem::Enqueue { user_id, app_id, action, desired, needs_approval, held, cause } => {
            let start = Start { needs_approval: *needs_approval, held: *held, cause: cause.as_ref() };
            enqueue(tx, *user_id, *app_id, *action, desired.as_ref(), start, now).await?;
        }
        PlanItem::Replace { op, action, desired, needs_approval, held, cause } => {
            let start = Start { needs_approval: *needs_approval, held: *held, cause: cause.as_ref() };
            let (state, status) = initial_state(*action, *needs_approval, *held);
            let replaced = sqlx::query(
                "UPDATE operations SET action = $1, desired = $2, state = $3, status = $4, reason = NULL, \
                 cause = COALESCE($7, cause), \
                 recommended_action = NULL, next_run_at = $5, updated_at = $5, \
                 app_name = COALESCE((SELECT name FROM apps WHERE apps.id = operations.app_id), app_name), \
                 username = COALESCE((SELECT username FROM users WHERE users.id = operations.user_id), username), \
                 username_key = COALESCE((SELECT username_key FROM users WHERE users.id = operations.user_id), \
                   username_key) \
                 WHERE id = $6 AND state IN ('queued', 'awaiting_approval') RETURNING app_id, user_id",
            )
            .bind(action.as_str())
            .bind(desired.as_ref())
            .bind(state.as_str())
            .bind(status.as_str())
            .bind(now)
            .bind(op)
            .bind(cause_json(cause.as_ref()))
            .fetch_optional(tx.c())
            .await
            .map_err(backend)?;
            match replaced {
                Some(row) => {
                    tx.refresh(get(&row, "app_id")?, get(&row, "user_id")?);
                    if state == OpState::Queued {
                        tx.wake_operations();
                    }
                }
                // Claimed or finished meanwhile: what it will do (or did) is stale.
                None => match op_pair(tx, *op).await? {
                    Some((app, user, _)) => {
                        enqueue(tx, user, app, *action, desired.as_ref(), start, now).await?;
                    }
                    None => tracing::debug!(%op, "not replacing an operation that does not exist"),
                },
            }
        }
        PlanItem::Cancel { op, reason } => {
            let cancelled = sqlx::query(
                "UPDATE operations SET state = 'done', status = 'cancelled', reason = $1, updated_at = $2 \
                 WHERE id = $3 AND state IN ('queued', 'awaiting_approval') RETURNING app_id, user_id",
            )
            .bind(reason)
            .bind(now)
            .bind(op)
            .fetch_optional(tx.c())
            .await
            .map_err(backend)?;
            match cancelled {
                Some(row) => tx.refresh(get(&row, "app_id")?, get(&row, "user_id")?),
                None => replan(tx, *op, now).await?,
            }
        }
        PlanItem::Replan { op } => replan(tx, *op, now).await?,
        PlanItem::Observe { user_id, app_id, account: AccountWrite::Set { remote_id, ownership, last_applied } } => {
            tx.set_account(
                *app_id,
                *user_id,
                AccountSet {
                    remote_id: remote_id.clone(),
                    ownership: *ownership,
                    last_applied: last_applied.clone(),
                    status: EventStatus::Provisioned,
                    last_event_id: None,
                },
            );
        }
        PlanItem::Observe { account: AccountWrite::Keep, .. } => {}
        PlanItem::Forget { user_id, app_id } => {
            sqlx::query("UPDATE accounts SET rejected = NULL WHERE app_id = $1 AND user_id = $2")
                .bind(app_id)
                .bind(user_id)
                .execute(tx.c())
                .await
                .map_err(backend)?;
        }
        PlanItem::Depart { user_id, app_id, departure } => {
            sqlx::query("UPDATE accounts SET departure = $1 WHERE app_id = $2 AND user_id = $3")
                .bind(departure.as_deref())
                .bind(app_id)
                .bind(user_id)
                .execute(tx.c())
                .await
                .map_err(backend)?;
        }
        PlanItem::Fail { user_id, app_id, action, reason } => {
            let start = Start { needs_approval: false, held: false, cause: None };
            if let Some(id) = enqueue(tx, *user_id, *app_id, *action, None, start, now).await? {
                sqlx::query(
                    "UPDATE operations SET state = 'done', status = 'failed', reason = $1, recommended_action = $2 \
                     WHERE id = $3",
                )
                .bind(reason)
                .bind("Fill in the missing values in the directory, or change the app's parameters; the account is planned again at the next change.")
                .bind(id)
                .execute(tx.c())
                .await
                .map_err(backend)?;
            }
        }
    }
    Ok(())
}

/// Has a pair planned again once `op` finishes; if it already has (between the planner's read
/// and its write, or while this transaction waited for the operation's row), records an
/// account change right away.
async fn replan(tx: &mut Tx, op: Uuid, now: DateTime<Utc>) -> Result<()> {
    let marked = sqlx::query("UPDATE operations SET replan = true, updated_at = $1 WHERE id = $2 AND state <> 'done'")
        .bind(now)
        .bind(op)
        .execute(tx.c())
        .await
        .map_err(backend)?
        .rows_affected();
    if marked == 0 {
        if let Some((app, user, _)) = op_pair(tx, op).await? {
            tx.change(NewChange::account(user, app));
        }
    }
    Ok(())
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> Result<DateTime<Utc>> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(|t| t.trunc_subsecs(6))
        .ok_or_else(|| StoreError::Backend(format!("lease of {lease:?} is out of range")))
}

impl PostgresStore {
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
            "SELECT 1 FROM operations WHERE app_id = $1 AND user_id = $2 AND id <> $3 AND seq > \
             (SELECT seq FROM operations WHERE id = $3) LIMIT 1",
        )
        .bind(before.event.app_id)
        .bind(before.event.user_id)
        .bind(id)
        .fetch_optional(tx.c())
        .await
        .map_err(backend)?
        .is_some();
        let (state, status, reason) = match transition(&before, newer) {
            Ok(t) => t,
            Err(e) => {
                // Release the row lock now, not when the connection is next used.
                tx.rollback().await?;
                return Err(e);
            }
        };
        let now = directory::now();
        let sql = format!(
            "UPDATE operations SET state = $1, status = $2, reason = $3, \
             recommended_action = CASE WHEN $1 = 'done' THEN recommended_action ELSE NULL END, \
             next_run_at = CASE WHEN $1 = 'done' THEN next_run_at ELSE $4 END, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = $4 WHERE id = $5 RETURNING {OP_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(status.as_str())
            .bind(reason)
            .bind(now)
            .bind(id)
            .fetch_one(tx.c())
            .await
            .map_err(backend)?;
        let after = op_from_row(&row)?.event;
        tx.refresh(after.app_id, after.user_id);
        if after.status == EventStatus::Rejected {
            // Rejections stick: the planner does not queue this again by itself.
            let rejected = serde_json::json!({"action": after.action, "desired": before.desired});
            sqlx::query("UPDATE accounts SET rejected = $1 WHERE app_id = $2 AND user_id = $3")
                .bind(rejected)
                .bind(after.app_id)
                .bind(after.user_id)
                .execute(tx.c())
                .await
                .map_err(backend)?;
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
}

#[async_trait]
impl ProvisioningStore for PostgresStore {
    async fn engine_cursor(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM engine_state WHERE name = 'change_cursor'")
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map_or(Ok(0), |r| get(&r, "value"))
    }

    async fn apps_of_user(&self, user: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT ra.app_id AS id FROM role_apps ra JOIN role_users ru ON ru.role_id = ra.role_id \
             WHERE ru.user_id = $1 \
             UNION SELECT app_id AS id FROM accounts WHERE user_id = $1 ORDER BY id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    async fn apps_of_users(&self, users: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
        let mut out = Vec::new();
        for chunk in users.chunks(PAIR_CHUNK) {
            let ids = distinct(chunk.iter().copied());
            let rows = sqlx::query(
                "SELECT ru.user_id, ra.app_id FROM role_apps ra JOIN role_users ru ON ru.role_id = ra.role_id \
                 WHERE ru.user_id = ANY($1) UNION SELECT user_id, app_id FROM accounts WHERE user_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
            for r in &rows {
                out.push((get(r, "user_id")?, get(r, "app_id")?));
            }
        }
        Ok(out)
    }

    async fn users_of_app(&self, app: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT ru.user_id AS id FROM role_users ru JOIN role_apps ra ON ra.role_id = ru.role_id \
             WHERE ra.app_id = $1 \
             UNION SELECT user_id AS id FROM accounts WHERE app_id = $1 ORDER BY id",
        )
        .bind(app)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    async fn load_pairs(&self, pairs: &[(Uuid, Uuid)]) -> Result<Vec<PairState>> {
        // One read-only snapshot: every pair is read as of the same moment.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(pairs.len());
        // The apps once for the whole call (few, and each shared by many pairs).
        let all_apps = distinct(pairs.iter().map(|p| p.1));
        let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ANY($1)");
        let rows = sqlx::query(&sql).bind(&all_apps).fetch_all(&mut *tx).await.map_err(backend)?;
        let mut apps = rows.iter().map(|r| app_from_row(r).map(|a| (a.id, a))).collect::<Result<HashMap<_, _>>>()?;
        // "SAML JIT only" apps create their accounts at sign-in: the planner sees
        // provisioning off for them, so it pushes nothing (see `PairState::app`).
        let rows = sqlx::query("SELECT app_id FROM app_saml WHERE jit_only AND app_id = ANY($1)")
            .bind(&all_apps)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        for r in &rows {
            if let Some(app) = apps.get_mut(&get::<Uuid>(r, "app_id")?) {
                app.provisioning.enabled = false;
            }
        }
        let apps: HashMap<Uuid, Arc<App>> = apps.into_iter().map(|(id, a)| (id, Arc::new(a))).collect();
        for chunk in pairs.chunks(PAIR_CHUNK) {
            let user_ids = distinct(chunk.iter().map(|p| p.0));
            let app_ids = distinct(chunk.iter().map(|p| p.1));

            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1)");
            let rows = sqlx::query(&sql).bind(&user_ids).fetch_all(&mut *tx).await.map_err(backend)?;
            let users = rows
                .iter()
                .map(|r| user_from_row(r).map(|u| (u.id, Arc::new(u))))
                .collect::<Result<HashMap<_, _>>>()?;

            let rows = sqlx::query(
                "SELECT DISTINCT ru.user_id, ra.app_id FROM role_users ru \
                 JOIN role_apps ra ON ra.role_id = ru.role_id WHERE ru.user_id = ANY($1) AND ra.app_id = ANY($2)",
            )
            .bind(&user_ids)
            .bind(&app_ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            let grants = rows
                .iter()
                .map(|r| Ok((get::<Uuid>(r, "user_id")?, get::<Uuid>(r, "app_id")?)))
                .collect::<Result<HashSet<_>>>()?;

            let rows = sqlx::query(
                "SELECT ru.user_id, r.id, r.name FROM role_users ru JOIN roles r ON r.id = ru.role_id \
                 WHERE ru.user_id = ANY($1) ORDER BY r.name_key",
            )
            .bind(&user_ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            let mut roles: HashMap<Uuid, Vec<directory::RoleRef>> = HashMap::new();
            for r in &rows {
                roles
                    .entry(get(r, "user_id")?)
                    .or_default()
                    .push(directory::RoleRef { id: get(r, "id")?, name: get(r, "name")? });
            }

            let sql = format!("{ACCOUNT_SELECT} WHERE a.user_id = ANY($1) AND a.app_id = ANY($2)");
            let rows = sqlx::query(&sql).bind(&user_ids).bind(&app_ids).fetch_all(&mut *tx).await.map_err(backend)?;
            let accounts = rows
                .iter()
                .map(|r| account_from_row(r).map(|a| ((a.user_id, a.app_id), a)))
                .collect::<Result<HashMap<_, _>>>()?;

            let sql = format!(
                "SELECT {OP_COLUMNS} FROM operations \
                 WHERE state IN ('queued', 'awaiting_approval', 'running') AND user_id = ANY($1) \
                 AND app_id = ANY($2) ORDER BY seq"
            );
            let rows = sqlx::query(&sql).bind(&user_ids).bind(&app_ids).fetch_all(&mut *tx).await.map_err(backend)?;
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
        let now = directory::now();
        let mut tx = self.begin_engine().await?;
        if let Some(c) = plan.cursor {
            sqlx::query(
                "INSERT INTO engine_state (name, value) VALUES ('change_cursor', $1) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(c)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        }
        // New operations, the bulk of a plan, together; the rest one by one.
        let mut new_ops: Vec<NewOp<'_>> = Vec::new();
        for item in &plan.items {
            match item {
                PlanItem::Enqueue { user_id, app_id, action, desired, needs_approval, held, cause } => {
                    let start = Start { needs_approval: *needs_approval, held: *held, cause: cause.as_ref() };
                    new_ops.push((*user_id, *app_id, *action, desired.as_ref(), start));
                }
                _ => apply_item(&mut tx, item, now).await?,
            }
        }
        enqueue_many(&mut tx, &new_ops, now).await?;
        tx.commit().await
    }

    async fn refresh_statistics(&self) -> Result<()> {
        sqlx::query("ANALYZE operations, accounts, users, role_users, role_apps")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Claims are serialised per app (`pg_advisory_xact_lock(CLAIM_LOCK, hashtext(app))`),
    /// so that the count of running operations read here cannot be raced by another
    /// process, and never leave more than the app's `max_concurrency` (default 4) operations
    /// running under a live lease, whatever `limit` asks. Rows are taken with `FOR UPDATE
    /// SKIP LOCKED`: an operation a planner is collapsing right now is left for next time.
    async fn claim_operations(&self, app: Uuid, owner: &str, limit: u32, lease: Duration) -> Result<Vec<Operation>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = directory::now();
        let expires = lease_end(now, lease)?;
        let mut tx = self.begin_engine().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
            .bind(CLAIM_LOCK)
            .bind(app)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        let row = sqlx::query(
            "SELECT COALESCE((SELECT CASE WHEN jsonb_typeof(provisioning -> 'max_concurrency') = 'number' \
               THEN GREATEST((provisioning ->> 'max_concurrency')::numeric::bigint, 1) END \
               FROM apps WHERE id = $1), $3) AS max_running, \
             EXISTS (SELECT 1 FROM app_health WHERE app_id = $1 AND quarantined) AS paused, \
             (SELECT COUNT(*) FROM operations WHERE app_id = $1 AND state = 'running' \
               AND lease_expires_at >= $2) AS running",
        )
        .bind(app)
        .bind(now)
        .bind(DEFAULT_MAX_RUNNING)
        .fetch_one(tx.c())
        .await
        .map_err(backend)?;
        let max_running: i64 = get(&row, "max_running")?;
        let running: i64 = get(&row, "running")?;
        // A quarantined app's queue is paused.
        if get::<bool>(&row, "paused")? {
            return Ok(Vec::new());
        }
        let room = (max_running - running).max(0).min(i64::from(limit.min(MAX_CLAIM)));
        if room == 0 {
            return Ok(Vec::new());
        }
        // Two walks, each on an index in the order it wants, stopping at the room: the expired
        // leases (rare), then the queued operations in queue order. The queue order is written
        // `seq + 0`, the key of the index of queued operations (migration 0011): ordered by the
        // bare seq, PostgreSQL may walk the primary key through every finished operation.
        let expired = format!(
            "SELECT o.seq FROM operations o WHERE o.app_id = $2 AND o.state = 'running' \
             AND o.lease_expires_at < $1 AND {PAIR_FREE} \
             ORDER BY o.lease_expires_at, o.seq LIMIT $3 FOR UPDATE OF o SKIP LOCKED"
        );
        let mut rows = sqlx::query(&expired).bind(now).bind(app).bind(room).fetch_all(tx.c()).await.map_err(backend)?;
        let left = room - rows.len() as i64;
        if left > 0 {
            let queued = format!(
                "SELECT o.seq FROM operations o WHERE o.app_id = $2 AND o.state = 'queued' \
                 AND o.next_run_at <= $1 AND {PAIR_FREE} \
                 ORDER BY o.seq + 0 LIMIT $3 FOR UPDATE OF o SKIP LOCKED"
            );
            rows.extend(sqlx::query(&queued).bind(now).bind(app).bind(left).fetch_all(tx.c()).await.map_err(backend)?);
        }
        let seqs = rows.iter().map(|r| get::<i64>(r, "seq")).collect::<Result<Vec<i64>>>()?;
        // One statement for the whole claim; the working status follows each one's action.
        let working: String = [Action::Create, Action::Update, Action::Suspend, Action::Delete]
            .iter()
            .map(|a| format!("WHEN '{}' THEN '{}' ", a.as_str(), a.working_status().as_str()))
            .collect();
        let update = format!(
            "UPDATE operations SET state = 'running', lease_owner = $1, lease_expires_at = $2, \
             attempts = attempts + 1, status = CASE action {working}ELSE status END, updated_at = $3 \
             WHERE seq = ANY($4) RETURNING {OP_COLUMNS}"
        );
        let updated = sqlx::query(&update)
            .bind(owner)
            .bind(expires)
            .bind(now)
            .bind(&seqs)
            .fetch_all(tx.c())
            .await
            .map_err(backend)?;
        let mut claimed = updated
            .iter()
            .map(|r| Ok((get::<i64>(r, "seq")?, op_from_row(r)?)))
            .collect::<Result<Vec<(i64, Operation)>>>()?;
        claimed.sort_by_key(|(seq, _)| *seq);
        let claimed: Vec<Operation> = claimed.into_iter().map(|(_, o)| o).collect();
        for op in &claimed {
            tx.refresh(op.event.app_id, op.event.user_id);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn apps_with_due_operations(&self) -> Result<Vec<Uuid>> {
        // Due or orphaned work, without the per-pair order (which the claim applies): cheap
        // enough to ask on every dispatch, at the price of an occasional claim of nothing.
        // The apps that have open operations (a loose index scan: one probe per app, however
        // long the queue), then whether each has due or orphaned work: the earliest due time and
        // lease end, each the first entry of its index.
        let sql = "WITH RECURSIVE a(id) AS (\
                     (SELECT app_id FROM operations WHERE state IN ('queued', 'running') ORDER BY app_id, seq LIMIT 1) \
                     UNION ALL SELECT (SELECT o.app_id FROM operations o WHERE o.state IN ('queued', 'running') \
                       AND o.app_id > a.id ORDER BY o.app_id, o.seq LIMIT 1) FROM a WHERE a.id IS NOT NULL) \
                   SELECT id FROM a WHERE id IS NOT NULL \
                   AND NOT EXISTS (SELECT 1 FROM app_health h WHERE h.app_id = a.id AND h.quarantined) AND (\
                     (SELECT min(o.next_run_at) FROM operations o WHERE o.app_id = a.id AND o.state = 'queued') <= $1 \
                     OR (SELECT min(o.lease_expires_at) FROM operations o WHERE o.app_id = a.id \
                       AND o.state = 'running') < $1)";
        let rows = sqlx::query(sql).bind(directory::now()).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    async fn finish_operation(&self, op: Uuid, owner: &str, outcome: &Outcome) -> Result<bool> {
        Ok(self.finish_operations(owner, &[(op, outcome.clone())]).await?.first().copied().unwrap_or(false))
    }

    async fn finish_operations(&self, owner: &str, done: &[(Uuid, Outcome)]) -> Result<Vec<bool>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_engine().await?;
        // One statement for the whole batch, each operation fenced on its own lease.
        let ids: Vec<Uuid> = done.iter().map(|(id, _)| *id).collect();
        let statuses: Vec<&str> = done.iter().map(|(_, o)| o.status.as_str()).collect();
        let reasons: Vec<Option<&str>> = done.iter().map(|(_, o)| o.reason.as_deref()).collect();
        let actions: Vec<Option<&str>> = done.iter().map(|(_, o)| o.recommended_action.as_deref()).collect();
        let rows = sqlx::query(
            "UPDATE operations o SET state = 'done', status = d.status, reason = d.reason, \
             recommended_action = d.recommended_action, lease_owner = NULL, lease_expires_at = NULL, updated_at = $5 \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS d(id, status, reason, recommended_action) \
             WHERE o.id = d.id AND o.state = 'running' AND o.lease_owner = $6 \
             RETURNING o.id, o.app_id, o.user_id, o.replan",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&actions)
        .bind(directory::now())
        .bind(owner)
        .fetch_all(tx.c())
        .await
        .map_err(backend)?;
        let by_id: HashMap<Uuid, &Outcome> = done.iter().map(|(id, o)| (*id, o)).collect();
        let mut recorded = HashSet::new();
        // Per app: operations finished (for the quarantine ratio and the rate), and whether one
        // succeeded (which ends a run of refused credentials); the pairs that succeeded.
        let mut finished: HashMap<Uuid, (i64, bool)> = HashMap::new();
        let mut resolved: (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let op: Uuid = get(row, "id")?;
            let app: Uuid = get(row, "app_id")?;
            let user: Uuid = get(row, "user_id")?;
            let marked: bool = get(row, "replan")?;
            let Some(outcome) = by_id.get(&op) else { continue };
            if let AccountWrite::Set { remote_id, ownership, last_applied } = &outcome.account {
                tx.set_account(
                    app,
                    user,
                    AccountSet {
                        remote_id: remote_id.clone(),
                        ownership: *ownership,
                        last_applied: last_applied.clone(),
                        status: outcome.status,
                        last_event_id: Some(op),
                    },
                );
            }
            tx.refresh(app, user);
            if outcome.replan || marked {
                tx.change(NewChange::account(user, app));
            }
            recorded.insert(op);
            if counts_as_finished(outcome.status) {
                let e = finished.entry(app).or_insert((0, false));
                e.0 += 1;
                e.1 |= succeeded(outcome.status);
            }
            if succeeded(outcome.status) {
                resolved.0.push(op);
                resolved.1.push(app);
                resolved.2.push(user);
            }
        }
        if recorded.is_empty() {
            tx.rollback().await?;
        } else {
            // Earlier failures of the pairs that succeeded now are resolved by them.
            if !resolved.0.is_empty() {
                sqlx::query(
                    "UPDATE operations f SET resolved_by = d.id \
                     FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS d(id, app_id, user_id) \
                     WHERE f.app_id = d.app_id AND f.user_id = d.user_id AND f.status = 'failed' \
                     AND f.resolved_by IS NULL AND f.id <> d.id",
                )
                .bind(&resolved.0)
                .bind(&resolved.1)
                .bind(&resolved.2)
                .execute(tx.c())
                .await
                .map_err(backend)?;
            }
            let minute = crate::sql::health::minute_of(&directory::now());
            let mut apps: Vec<(Uuid, i64, bool)> = finished.into_iter().map(|(a, (n, ok))| (a, n, ok)).collect();
            // In one order, so that concurrent batches lock the counters without deadlock.
            apps.sort_by_key(|(a, _, _)| *a);
            let ids: Vec<Uuid> = apps.iter().map(|(a, _, _)| *a).collect();
            let counts: Vec<i64> = apps.iter().map(|(_, n, _)| *n).collect();
            if !ids.is_empty() {
                sqlx::query(
                    "INSERT INTO app_outcomes (app_id, minute, finished) \
                     SELECT a, $3, n FROM unnest($1::uuid[], $2::bigint[]) AS t(a, n) \
                     ON CONFLICT (app_id, minute) DO UPDATE SET finished = app_outcomes.finished + excluded.finished",
                )
                .bind(&ids)
                .bind(&counts)
                .bind(minute)
                .execute(tx.c())
                .await
                .map_err(backend)?;
                sqlx::query("DELETE FROM app_outcomes WHERE app_id = ANY($1) AND minute < $2")
                    .bind(&ids)
                    .bind(minute - crate::sql::health::KEEP_MINUTES)
                    .execute(tx.c())
                    .await
                    .map_err(backend)?;
            }
            let succeeded_apps: Vec<Uuid> = apps.iter().filter(|(_, _, ok)| *ok).map(|(a, _, _)| *a).collect();
            if !succeeded_apps.is_empty() {
                sqlx::query("UPDATE app_health SET auth_refusals = 0 WHERE app_id = ANY($1) AND auth_refusals > 0")
                    .bind(&succeeded_apps)
                    .execute(tx.c())
                    .await
                    .map_err(backend)?;
            }
            tx.wake_operations();
            tx.commit().await?;
        }
        Ok(done.iter().map(|(id, _)| recorded.contains(id)).collect())
    }

    async fn retry_operation_later(&self, op: Uuid, owner: &str, at: DateTime<Utc>, reason: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "UPDATE operations SET state = 'queued', next_run_at = $1, reason = $2, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = $3 \
             WHERE id = $4 AND state = 'running' AND lease_owner = $5 RETURNING seq",
        )
        .bind(at)
        .bind(reason)
        .bind(directory::now())
        .bind(op)
        .bind(owner)
        .fetch_optional(tx.c())
        .await
        .map_err(backend)?;
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
        let now = directory::now();
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE operations SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
             next_run_at = $1, updated_at = $1 WHERE state = 'running'",
        )
        .bind(now)
        .execute(tx.c())
        .await
        .map_err(backend)?
        .rows_affected();
        if done > 0 {
            tx.wake_operations();
        }
        tx.commit().await?;
        Ok(done)
    }

    async fn get_operation(&self, id: Uuid) -> Result<Option<Operation>> {
        let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await.map_err(backend)?;
        row.as_ref().map(op_from_row).transpose()
    }

    async fn list_events(&self, query: &EventQuery) -> Result<Page<Event>> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {OP_COLUMNS} FROM operations WHERE 1 = 1"));
        if let Some(u) = query.user {
            qb.push(" AND user_id = ").push_bind(u);
        }
        if let Some(a) = query.app {
            qb.push(" AND app_id = ").push_bind(a);
        }
        if let Some(s) = query.status {
            qb.push(" AND status = ").push_bind(s.as_str());
            if s == EventStatus::Failed {
                // A failure resolved by a later success no longer counts as one.
                qb.push(" AND resolved_by IS NULL");
            }
        }
        if let Some(k) = &query.cause {
            qb.push(" AND cause->>'kind' = ").push_bind(k.clone());
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
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
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
        let Some(op) = op_in(&mut tx, id).await? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        if op.event.status != EventStatus::Rejected {
            tx.rollback().await?;
            return Err(StoreError::InvalidState(format!("event {id} is {}, not rejected", op.event.status.as_str())));
        }
        sqlx::query("UPDATE accounts SET rejected = NULL WHERE app_id = $1 AND user_id = $2")
            .bind(op.event.app_id)
            .bind(op.event.user_id)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        tx.change(NewChange::account(op.event.user_id, op.event.app_id));
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
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM operations WHERE app_id = $1 AND action IN ('suspend', 'delete') \
             AND created_at >= $2 AND status NOT IN ('held', 'rejected', 'cancelled')",
        )
        .bind(app)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)
    }

    async fn count_managed_accounts(&self, app: Uuid) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounts WHERE app_id = $1 AND remote_id IS NOT NULL \
             AND ownership IN ('created', 'linked')",
        )
        .bind(app)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)
    }

    async fn apply_settings_to_existing(&self, app: Uuid, actor: &Actor) -> Result<u64> {
        let mut tx = self.begin().await?;
        let current = Self::app_in(&mut tx, app).await?;
        let done = sqlx::query("UPDATE accounts SET departure = NULL WHERE app_id = $1 AND departure IS NOT NULL")
            .bind(app)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        tx.change(NewChange::app(app));
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
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn get_account(&self, app: Uuid, user: Uuid) -> Result<Option<Account>> {
        let sql = format!("{ACCOUNT_SELECT} WHERE a.app_id = $1 AND a.user_id = $2");
        let row = sqlx::query(&sql).bind(app).bind(user).fetch_optional(&self.pool).await.map_err(backend)?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn get_accounts(&self, app: Uuid, users: &[Uuid]) -> Result<Vec<Account>> {
        // Each user looked up on the primary key, one at a time (a join, or `user_id = ANY($2)`,
        // may be answered by reading every account of the app).
        let sql = "SELECT a.app_id, a.user_id, COALESCE(u.username, '') AS username, a.remote_id, \
            a.ownership, a.status, a.last_applied, a.last_event_id, a.updated_at, a.departure, a.rejected \
            FROM unnest($2::uuid[]) AS x(user_id) \
            CROSS JOIN LATERAL (SELECT * FROM accounts a WHERE a.app_id = $1 AND a.user_id = x.user_id LIMIT 1) a \
            LEFT JOIN users u ON u.id = a.user_id";
        let rows = sqlx::query(sql).bind(app).bind(users).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(account_from_row).collect()
    }

    async fn list_accounts(&self, query: &AccountQuery) -> Result<Page<Account>> {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!("{ACCOUNT_SELECT} WHERE 1 = 1"));
        if let Some(a) = query.app {
            qb.push(" AND a.app_id = ").push_bind(a);
        }
        if let Some(u) = query.user {
            qb.push(" AND a.user_id = ").push_bind(u);
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 3)?;
            qb.push(format!(" AND ({ACCOUNT_KEY}, a.user_id, a.app_id) > ("))
                .push_bind(key[0].clone())
                .push(", ")
                .push_bind(cursor_uuid(&key[1])?)
                .push(", ")
                .push_bind(cursor_uuid(&key[2])?)
                .push(")");
        }
        qb.push(format!(" ORDER BY {ACCOUNT_KEY}, a.user_id, a.app_id LIMIT ")).push_bind(limit_of(&query.page) + 1);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        let accounts = rows.iter().map(account_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(accounts, &query.page, |a| {
            vec![User::username_key(&a.username), a.user_id.to_string(), a.app_id.to_string()]
        }))
    }

    async fn link_account(&self, app: Uuid, user: Uuid, remote_id: &str, actor: &Actor) -> Result<Account> {
        let mut tx = self.begin().await?;
        // The record is written here rather than at commit: hold the pair's lock from now on.
        tx.lock_pair(app, user).await?;
        Self::app_in(&mut tx, app).await?;
        if Self::user_in(&mut tx, user).await?.status == UserStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        let taken = sqlx::query(
            "SELECT 1 FROM accounts WHERE app_id = $1 AND remote_id = $2 AND user_id <> $3 \
             AND ownership IN ('created', 'linked') LIMIT 1",
        )
        .bind(app)
        .bind(remote_id)
        .bind(user)
        .fetch_optional(tx.c())
        .await
        .map_err(backend)?;
        if taken.is_some() {
            return Err(StoreError::Duplicate { field: "remote_id" });
        }
        let before = account_in(&mut tx, app, user).await?;
        sqlx::query(
            "INSERT INTO accounts (app_id, user_id, remote_id, ownership, status, last_applied, last_event_id, \
             updated_at) VALUES ($1, $2, $3, 'linked', 'provisioned', NULL, NULL, $4) \
             ON CONFLICT (app_id, user_id) DO UPDATE SET remote_id = excluded.remote_id, ownership = 'linked', \
             status = 'provisioned', last_applied = NULL, updated_at = excluded.updated_at",
        )
        .bind(app)
        .bind(user)
        .bind(remote_id)
        .bind(directory::now())
        .execute(tx.c())
        .await
        .map_err(backend)?;
        // Planned again: with no values applied yet, the planner queues an update.
        tx.change(NewChange::account(user, app));
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
        let done = sqlx::query("UPDATE apps SET capabilities = $1 WHERE id = $2")
            .bind(capabilities)
            .bind(app)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn get_app_capabilities(&self, app: Uuid) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT capabilities FROM apps WHERE id = $1")
            .bind(app)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        match row {
            Some(r) => get(&r, "capabilities"),
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
        let done = sqlx::query(
            "INSERT INTO schedules (name, last_run) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET last_run = excluded.last_run WHERE schedules.last_run <= $3",
        )
        .bind(name)
        .bind(now)
        .bind(due_before)
        .execute(&self.pool)
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
            "INSERT INTO schedules (name, last_run, owner) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET last_run = excluded.last_run, owner = excluded.owner \
             WHERE schedules.owner = excluded.owner OR schedules.owner IS NULL OR schedules.last_run <= $4",
        )
        .bind(name)
        .bind(now)
        .bind(owner)
        .bind(expired)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }
}
