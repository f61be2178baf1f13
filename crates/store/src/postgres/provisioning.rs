//! How provisioning ([`crate::sql::provisioning`]) runs on PostgreSQL: bulk writes bind one
//! array per column (`unnest`), and claims lock what they take, for several processes sharing
//! the queue.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{OpState, Outcome};
use serde_json::Value;
use uuid::Uuid;

use super::{backend, PostgresStore, Tx, CLAIM_LOCK};
use crate::sql::provisioning::{Finished, NewOperation, ProvisioningHooks, ACCOUNT_COLUMNS};
use crate::sql::{q, Exec, Query, RowGet};
use crate::Result;

/// An operation `o` (queued and due, or running with an expired lease: the claim's two
/// queries) may be claimed now (`?1` is now) when it is the oldest open one of its pair and no
/// other one of the pair is running under a live lease.
///
/// One anti-join on the pair (both conditions in one subquery): with two, PostgreSQL may answer
/// "another running operation of the pair?" from the app's open-operations index, reading every
/// open operation of the app for each candidate.
const PAIR_FREE: &str = "NOT EXISTS (SELECT 1 FROM operations p WHERE p.user_id = o.user_id AND p.app_id = o.app_id \
      AND p.seq <> o.seq AND ((p.state IN ('queued', 'awaiting_approval', 'running') AND p.seq < o.seq) \
        OR (p.state = 'running' AND p.lease_expires_at >= ?1)))";

/// New operations per insert statement.
const ENQUEUE_CHUNK: usize = 1000;

/// An app's concurrency limit when its settings name none.
const DEFAULT_MAX_RUNNING: i64 = 4;

#[async_trait]
impl ProvisioningHooks for PostgresStore {
    const READ_SNAPSHOT: Option<&'static str> = Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");

    /// The apps that have open operations (a loose index scan: one probe per app, however long
    /// the queue), then whether each has due or orphaned work: the earliest due time and lease
    /// end, each the first entry of its index.
    const DUE_APPS: &'static str = "WITH RECURSIVE a(id) AS (\
         (SELECT app_id FROM operations WHERE state IN ('queued', 'running') ORDER BY app_id, seq LIMIT 1) \
         UNION ALL SELECT (SELECT o.app_id FROM operations o WHERE o.state IN ('queued', 'running') \
           AND o.app_id > a.id ORDER BY o.app_id, o.seq LIMIT 1) FROM a WHERE a.id IS NOT NULL) \
       SELECT id FROM a WHERE id IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM app_health h WHERE h.app_id = a.id AND h.quarantined) AND (\
         (SELECT min(o.next_run_at) FROM operations o WHERE o.app_id = a.id AND o.state = 'queued') <= ?1 \
         OR (SELECT min(o.lease_expires_at) FROM operations o WHERE o.app_id = a.id \
           AND o.state = 'running') < ?1)";

    const DEPROVISIONS_FROM: &'static str = "operations";

    /// One statement per thousand, in queue order (the array order).
    async fn insert_operations(
        tx: &mut Tx,
        ops: &[NewOperation<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, Uuid, OpState)>> {
        let mut out = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(ENQUEUE_CHUNK) {
            let ids: Vec<Uuid> = chunk.iter().map(|o| o.id).collect();
            let apps: Vec<Uuid> = chunk.iter().map(|o| o.app_id).collect();
            let users: Vec<Uuid> = chunk.iter().map(|o| o.user_id).collect();
            let actions: Vec<&str> = chunk.iter().map(|o| o.action.as_str()).collect();
            let desired: Vec<Option<Value>> = chunk.iter().map(|o| o.desired.cloned()).collect();
            let states: Vec<&str> = chunk.iter().map(|o| o.state.as_str()).collect();
            let statuses: Vec<&str> = chunk.iter().map(|o| o.status.as_str()).collect();
            let causes: Vec<Option<Value>> = chunk.iter().map(|o| o.cause.clone()).collect();
            let rows = sqlx::query(
                "INSERT INTO operations (id, app_id, app_name, user_id, username, username_key, action, desired, \
                 state, status, attempts, next_run_at, replan, created_at, updated_at, cause) \
                 SELECT v.id, a.id, a.name, u.id, u.username, u.username_key, v.action, v.desired, v.state, \
                 v.status, 0, $8, false, $8, $8, v.cause \
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
            for r in &rows {
                out.push((r.id("app_id")?, r.id("user_id")?, r.parsed("state", OpState::parse)?));
            }
        }
        Ok(out)
    }

    /// Claims are serialised per app (`pg_advisory_xact_lock(CLAIM_LOCK, hashtext(app))`), so
    /// that the count of running operations read here cannot be raced by another process, and
    /// never leave more than the app's `max_concurrency` (default 4) operations running under a
    /// live lease, whatever `limit` asks. Rows are taken with `FOR UPDATE SKIP LOCKED`: an
    /// operation a planner is collapsing right now is left for next time.
    async fn claimable(
        tx: &mut Tx,
        app: Uuid,
        now: DateTime<Utc>,
        limit: i64,
        max_running: Option<i64>,
    ) -> Result<Vec<i64>> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
            .bind(CLAIM_LOCK)
            .bind(app)
            .execute(tx.c())
            .await
            .map_err(backend)?;
        let row = tx
            .one(
                q("SELECT COALESCE((SELECT CASE WHEN jsonb_typeof(provisioning -> 'max_concurrency') = 'number' \
                     THEN GREATEST((provisioning ->> 'max_concurrency')::numeric::bigint, 1) END \
                     FROM apps WHERE id = ?1), ?3) AS max_running, \
                   EXISTS (SELECT 1 FROM app_health WHERE app_id = ?1 AND quarantined) AS paused, \
                   (SELECT COUNT(*) FROM operations WHERE app_id = ?1 AND state = 'running' \
                     AND lease_expires_at >= ?2) AS running")
                .bind(app)
                .bind(now)
                .bind(DEFAULT_MAX_RUNNING),
            )
            .await?;
        // A quarantined app's queue is paused.
        if row.flag("paused")? {
            return Ok(Vec::new());
        }
        let most = row.int("max_running")?.min(max_running.map_or(i64::MAX, |m| m.max(1)));
        let room = (most - row.int("running")?).max(0).min(limit);
        if room == 0 {
            return Ok(Vec::new());
        }
        // Two walks, each on an index in the order it wants, stopping at the room: the expired
        // leases (rare), then the queued operations in queue order. The queue order is written
        // `seq + 0`, the key of the index of queued operations (migration 0011): ordered by the
        // bare seq, PostgreSQL may walk the primary key through every finished operation.
        let expired = q(format!(
            "SELECT o.seq FROM operations o WHERE o.app_id = ?2 AND o.state = 'running' \
             AND o.lease_expires_at < ?1 AND {PAIR_FREE} \
             ORDER BY o.lease_expires_at, o.seq LIMIT ?3 FOR UPDATE OF o SKIP LOCKED"
        ));
        let mut seqs = tx
            .all(expired.bind(now).bind(app).bind(room))
            .await?
            .iter()
            .map(|r| r.int("seq"))
            .collect::<Result<Vec<i64>>>()?;
        let left = room - seqs.len() as i64;
        if left > 0 {
            let queued = q(format!(
                "SELECT o.seq FROM operations o WHERE o.app_id = ?2 AND o.state = 'queued' \
                 AND o.next_run_at <= ?1 AND {PAIR_FREE} \
                 ORDER BY o.seq + 0 LIMIT ?3 FOR UPDATE OF o SKIP LOCKED"
            ));
            for r in tx.all(queued.bind(now).bind(app).bind(left)).await? {
                seqs.push(r.int("seq")?);
            }
        }
        Ok(seqs)
    }

    /// One statement for the whole batch.
    async fn finish_rows(
        tx: &mut Tx,
        owner: &str,
        done: &[(Uuid, Outcome)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Finished>> {
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
        .bind(now)
        .bind(owner)
        .fetch_all(tx.c())
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(Finished {
                    op: r.id("id")?,
                    app_id: r.id("app_id")?,
                    user_id: r.id("user_id")?,
                    replan: r.flag("replan")?,
                })
            })
            .collect()
    }

    async fn resolve_failures(tx: &mut Tx, resolved: &[(Uuid, Uuid, Uuid)]) -> Result<()> {
        let ops: Vec<Uuid> = resolved.iter().map(|r| r.0).collect();
        let apps: Vec<Uuid> = resolved.iter().map(|r| r.1).collect();
        let users: Vec<Uuid> = resolved.iter().map(|r| r.2).collect();
        sqlx::query(
            "UPDATE operations f SET resolved_by = d.id \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS d(id, app_id, user_id) \
             WHERE f.app_id = d.app_id AND f.user_id = d.user_id AND f.status = 'failed' \
             AND f.resolved_by IS NULL AND f.id <> d.id",
        )
        .bind(&ops)
        .bind(&apps)
        .bind(&users)
        .execute(tx.c())
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// Each user looked up on the primary key, one at a time (a join, or `user_id = ANY(...)`,
    /// may be answered by reading every account of the app).
    fn accounts_of_users(app: Uuid, users: &[Uuid]) -> Query {
        q(format!(
            "SELECT {ACCOUNT_COLUMNS} FROM unnest(?::uuid[]) AS x(user_id) \
             CROSS JOIN LATERAL (SELECT * FROM accounts a WHERE a.app_id = ? AND a.user_id = x.user_id LIMIT 1) a \
             LEFT JOIN users u ON u.id = a.user_id"
        ))
        .bind(users.to_vec())
        .bind(app)
    }

    async fn analyze(&self) -> Result<()> {
        sqlx::query("ANALYZE operations, accounts, users, role_users, role_apps")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}
