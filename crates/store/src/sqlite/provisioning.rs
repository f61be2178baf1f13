//! How provisioning ([`crate::sql::provisioning`]) runs on SQLite: bulk writes as multi-row
//! `VALUES` lists (a few hundred bound values per statement), and claims that need no row
//! locks, the one writer holding the whole database.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{OpState, Outcome};
use uuid::Uuid;

use super::{SqliteStore, Tx};
use crate::sql::provisioning::{Finished, NewOperation, ProvisioningHooks, ACCOUNTS_FROM, ACCOUNT_COLUMNS};
use crate::sql::{q, Arg, Dialect, Exec, Json, Query, RowGet};
use crate::Result;

/// An operation `o` a worker may claim now (`?1` is now), once `o` is known to be queued and
/// due, or running with an expired lease: the oldest open one of its pair, and no other one of
/// the pair is running under a live lease.
const RUNNABLE: &str = "NOT EXISTS (SELECT 1 FROM operations p WHERE p.app_id = o.app_id AND p.user_id = o.user_id \
      AND p.state IN ('queued', 'awaiting_approval', 'running') AND p.seq < o.seq) \
    AND NOT EXISTS (SELECT 1 FROM operations r WHERE r.app_id = o.app_id AND r.user_id = o.user_id \
      AND r.seq <> o.seq AND r.state = 'running' AND r.lease_expires_at >= ?1)";

/// New operations per insert statement (nine bound values each).
const ENQUEUE_CHUNK: usize = 100;

/// Finished operations per statement (four bound values each; three for resolved failures).
const FINISH_CHUNK: usize = 100;

/// `(?, ?, ...)` with `n` placeholders, after a comma unless it is the first row.
fn row_of(first: bool, n: usize) -> String {
    let marks = vec!["?"; n].join(", ");
    if first {
        format!("({marks})")
    } else {
        format!(", ({marks})")
    }
}

#[async_trait]
impl ProvisioningHooks for SqliteStore {
    const READ_SNAPSHOT: Option<&'static str> = None;

    /// The apps that have operations at all (a loose index scan: one probe per app, however
    /// long the queue), then whether each has due or orphaned work.
    const DUE_APPS: &'static str = "WITH RECURSIVE a(id) AS (SELECT MIN(app_id) FROM operations \
         UNION ALL SELECT (SELECT MIN(app_id) FROM operations WHERE app_id > a.id) FROM a \
         WHERE a.id IS NOT NULL) \
       SELECT id FROM a WHERE id IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM app_health h WHERE h.app_id = a.id AND h.quarantined = 1) AND (\
         EXISTS (SELECT 1 FROM operations o WHERE o.app_id = a.id AND o.state = 'queued' \
           AND o.next_run_at <= ?1) \
         OR EXISTS (SELECT 1 FROM operations o WHERE o.app_id = a.id AND o.state = 'running' \
           AND o.lease_expires_at < ?1))";

    const DEPROVISIONS_FROM: &'static str = "operations INDEXED BY operations_deprovisions";

    async fn insert_operations(
        tx: &mut Tx,
        ops: &[NewOperation<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, Uuid, OpState)>> {
        let mut out = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(ENQUEUE_CHUNK) {
            let mut query = q("WITH v(ord, id, app_id, user_id, action, desired, state, status, cause) AS (VALUES ");
            for (i, op) in chunk.iter().enumerate() {
                query
                    .push(row_of(i == 0, 9))
                    .add(i as i64)
                    .add(op.id)
                    .add(op.app_id)
                    .add(op.user_id)
                    .add(op.action.as_str())
                    .add(op.desired.cloned().map(Json))
                    .add(op.state.as_str())
                    .add(op.status.as_str())
                    .add(op.cause.clone().map(Json));
            }
            query
                .push(
                    ") INSERT INTO operations (id, app_id, app_name, user_id, username, username_key, action, \
                     desired, state, status, attempts, next_run_at, replan, created_at, updated_at, cause) \
                     SELECT v.id, a.id, a.name, u.id, u.username, u.username_key, v.action, v.desired, v.state, \
                     v.status, 0, ?, 0, ?, ?, v.cause \
                     FROM v JOIN apps a ON a.id = v.app_id JOIN users u ON u.id = v.user_id ORDER BY v.ord \
                     RETURNING app_id, user_id, state",
                )
                .add(now)
                .add(now)
                .add(now);
            for r in tx.all(query).await? {
                out.push((r.id("app_id")?, r.id("user_id")?, r.parsed("state", OpState::parse)?));
            }
        }
        Ok(out)
    }

    /// Queued and due, and running with an expired lease, each walked in queue order on the
    /// (app_id, state, seq) index (named: left to itself SQLite walks every queued operation
    /// and sorts), stopping at the limit, then merged. The app's concurrency (`max_running`
    /// included) is the dispatcher's to keep: SQLite has one process.
    async fn claimable(
        tx: &mut Tx,
        app: Uuid,
        now: DateTime<Utc>,
        limit: i64,
        _max_running: Option<i64>,
    ) -> Result<Vec<i64>> {
        // A quarantined app's queue is paused.
        let paused =
            tx.opt(q("SELECT 1 AS one FROM app_health WHERE app_id = ? AND quarantined = 1").bind(app)).await?;
        if paused.is_some() {
            return Ok(Vec::new());
        }
        let rows = tx
            .all(
                q(format!(
                    "SELECT seq FROM (SELECT o.seq FROM operations o INDEXED BY operations_claim WHERE o.app_id = ?2 \
                       AND o.state = 'queued' AND o.next_run_at <= ?1 AND {RUNNABLE} ORDER BY o.seq LIMIT ?3) \
                     UNION ALL SELECT seq FROM (SELECT o.seq FROM operations o INDEXED BY operations_claim \
                       WHERE o.app_id = ?2 AND o.state = 'running' AND o.lease_expires_at < ?1 AND {RUNNABLE} \
                       ORDER BY o.seq LIMIT ?3) \
                     ORDER BY seq LIMIT ?3"
                ))
                .bind(now)
                .bind(app)
                .bind(limit),
            )
            .await?;
        rows.iter().map(|r| r.int("seq")).collect()
    }

    async fn finish_rows(
        tx: &mut Tx,
        owner: &str,
        done: &[(Uuid, Outcome)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Finished>> {
        let mut out = Vec::with_capacity(done.len());
        for chunk in done.chunks(FINISH_CHUNK) {
            let mut query = q("WITH d(op_id, op_status, op_reason, op_action) AS (VALUES ");
            for (i, (id, o)) in chunk.iter().enumerate() {
                query
                    .push(row_of(i == 0, 4))
                    .add(*id)
                    .add(o.status.as_str())
                    .add(o.reason.clone())
                    .add(o.recommended_action.clone());
            }
            query
                .push(
                    ") UPDATE operations SET state = 'done', status = d.op_status, reason = d.op_reason, \
                     recommended_action = d.op_action, lease_owner = NULL, lease_expires_at = NULL, updated_at = ? \
                     FROM d WHERE operations.id = d.op_id AND operations.state = 'running' \
                     AND operations.lease_owner = ? RETURNING id, app_id, user_id, replan",
                )
                .add(now)
                .add(owner);
            for r in tx.all(query).await? {
                out.push(Finished {
                    op: r.id("id")?,
                    app_id: r.id("app_id")?,
                    user_id: r.id("user_id")?,
                    replan: r.int("replan")? != 0,
                });
            }
        }
        Ok(out)
    }

    async fn resolve_failures(tx: &mut Tx, resolved: &[(Uuid, Uuid, Uuid)]) -> Result<()> {
        for chunk in resolved.chunks(FINISH_CHUNK) {
            let mut query = q("WITH d(op_id, app, usr) AS (VALUES ");
            for (i, (op, app, user)) in chunk.iter().enumerate() {
                query.push(row_of(i == 0, 3)).add(*op).add(*app).add(*user);
            }
            query.push(
                ") UPDATE operations SET resolved_by = d.op_id FROM d WHERE operations.app_id = d.app \
                 AND operations.user_id = d.usr AND operations.status = 'failed' \
                 AND operations.resolved_by IS NULL AND operations.id <> d.op_id",
            );
            tx.run(query).await?;
        }
        Ok(())
    }

    fn accounts_of_users(app: Uuid, users: &[Uuid]) -> Query {
        let mut query = q(format!("SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNTS_FROM} WHERE a.app_id = ? AND ")).bind(app);
        sqlx::Sqlite::push_in(&mut query, "a.user_id", Arg::Ids(users.to_vec()));
        query
    }
}
