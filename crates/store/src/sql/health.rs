//! [`HealthStore`] on both backends: quarantine, probes and connection tests, shared by every
//! process using the store (each transition is one conditional write, so one process makes it).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, ConnectionTest, NewChange};
use uuid::Uuid;

use super::rows::{record_audit, AuditRecord};
use super::{q, Backend, Dialect, Exec, RowGet, WriteTx};
use crate::health::{AppHealthRecord, HealthStore, OutcomeWindow, QueueCounts};
use crate::Result;

/// The minute (Unix time / 60) of `t`: the key of the finished-operation counts.
pub(crate) fn minute_of(t: &DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

/// Counts of finished operations older than this many minutes are dropped.
pub(crate) const KEEP_MINUTES: i64 = 60;

fn record_from_row(row: &impl RowGet) -> Result<AppHealthRecord> {
    // A connection test writes its result and time together: both are set or neither.
    let last_test = match row.opt_time("last_test_at")? {
        Some(at) => {
            Some(ConnectionTest { ok: row.flag("last_test_ok")?, at, message: row.opt_text("last_test_message")? })
        }
        None => None,
    };
    Ok(AppHealthRecord {
        quarantined: row.flag("quarantined")?,
        reason: row.opt_text("reason")?,
        since: row.opt_time("since")?,
        next_probe: row.opt_time("next_probe")?,
        probes: row.int("probes")?,
        auth_refusals: row.int("auth_refusals")?,
        counted_since: row.opt_time("counted_since")?,
        last_test,
    })
}

#[async_trait]
impl<S: Backend> HealthStore for S {
    async fn get_app_health(&self, app: Uuid) -> Result<Option<AppHealthRecord>> {
        let row = self
            .read()
            .await?
            .opt(
                q("SELECT quarantined, reason, since, next_probe, probes, auth_refusals, counted_since, last_test_ok, \
                   last_test_at, last_test_message FROM app_health WHERE app_id = ?")
                .bind(app),
            )
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn app_queue_counts(&self, app: Uuid, since: DateTime<Utc>) -> Result<QueueCounts> {
        let row = self
            .read()
            .await?
            .one(
                q("SELECT (SELECT COUNT(*) FROM operations WHERE status = 'held' AND app_id = ?1) AS held, \
                   (SELECT COUNT(*) FROM operations WHERE app_id = ?1 AND state IN ('queued', 'running')) AS queued, \
                   (SELECT CAST(COALESCE(SUM(finished), 0) AS BIGINT) FROM app_outcomes \
                     WHERE app_id = ?1 AND minute >= ?2) AS finished, \
                   (SELECT MIN(minute) FROM app_outcomes WHERE app_id = ?1 AND minute >= ?2 AND finished > 0) \
                     AS first_minute, \
                   (SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) FROM app_outcomes \
                     WHERE app_id = ?1 AND minute >= ?2) AS requests")
                .bind(app)
                .bind(minute_of(&since)),
            )
            .await?;
        Ok(QueueCounts {
            held: row.int("held")?,
            queued: row.int("queued")?,
            finished: row.int("finished")?,
            first_minute: row.opt_int("first_minute")?,
            requests: row.int("requests")?,
        })
    }

    async fn app_outcome_window(&self, app: Uuid, since: DateTime<Utc>) -> Result<OutcomeWindow> {
        let mut c = self.read().await?;
        let counted_since = c
            .opt(q("SELECT counted_since FROM app_health WHERE app_id = ?").bind(app))
            .await?
            .map(|r| r.opt_time("counted_since"))
            .transpose()?
            .flatten();
        let since = counted_since.map_or(since, |counted| counted.max(since));
        let row = c
            .one(
                q("SELECT (SELECT CAST(COALESCE(SUM(finished), 0) AS BIGINT) FROM app_outcomes \
                     WHERE app_id = ?1 AND minute >= ?2) AS finished, \
                   (SELECT COUNT(*) FROM operations WHERE app_id = ?1 AND status = 'failed' AND resolved_by IS NULL \
                     AND updated_at >= ?3 AND attempts > 0) AS failed")
                .bind(app)
                .bind(minute_of(&since))
                .bind(since),
            )
            .await?;
        Ok(OutcomeWindow { finished: row.int("finished")?, failed: row.int("failed")? })
    }

    async fn add_auth_refusals(&self, app: Uuid, n: i64) -> Result<i64> {
        let row = self
            .read_fresh()
            .await?
            .one(
                q("INSERT INTO app_health (app_id, auth_refusals) VALUES (?, ?) ON CONFLICT (app_id) \
                   DO UPDATE SET auth_refusals = app_health.auth_refusals + excluded.auth_refusals \
                   RETURNING auth_refusals")
                .bind(app)
                .bind(n),
            )
            .await?;
        row.int("auth_refusals")
    }

    async fn quarantine_app(&self, app: Uuid, reason: &str, next_probe: DateTime<Utc>, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin().await?;
        let row = tx
            .opt(
                q("INSERT INTO app_health (app_id, quarantined, reason, since, next_probe, probes) \
                   VALUES (?, TRUE, ?, ?, ?, 0) \
                   ON CONFLICT (app_id) DO UPDATE SET quarantined = TRUE, reason = excluded.reason, \
                   since = excluded.since, next_probe = excluded.next_probe, probes = 0 \
                   WHERE NOT app_health.quarantined RETURNING app_id")
                .bind(app)
                .bind(reason)
                .bind(directory::now())
                .bind(next_probe),
            )
            .await?;
        if row.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.quarantine",
                target_type: "app",
                target_id: app.to_string(),
                before: None,
                after: Some(serde_json::json!({"reason": reason, "next_probe": next_probe})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn due_probes(&self, now: DateTime<Utc>) -> Result<Vec<(Uuid, i64)>> {
        let rows = self
            .read()
            .await?
            .all(
                q("SELECT h.app_id, h.probes FROM app_health h JOIN apps a ON a.id = h.app_id \
                   WHERE h.quarantined AND h.next_probe <= ?")
                .bind(now),
            )
            .await?;
        rows.iter().map(|r| Ok((r.id("app_id")?, r.int("probes")?))).collect()
    }

    async fn take_probe(&self, app: Uuid, probes: i64, next: DateTime<Utc>) -> Result<bool> {
        let row = self
            .read_fresh()
            .await?
            .opt(
                q("UPDATE app_health SET probes = probes + 1, next_probe = ? \
                   WHERE app_id = ? AND quarantined AND probes = ? AND next_probe <= ? RETURNING app_id")
                .bind(next)
                .bind(app)
                .bind(probes)
                .bind(directory::now()),
            )
            .await?;
        Ok(row.is_some())
    }

    async fn record_connection_test(&self, app: Uuid, test: &ConnectionTest) -> Result<()> {
        self.read_fresh()
            .await?
            .run(
                q("INSERT INTO app_health (app_id, last_test_ok, last_test_at, last_test_message) VALUES (?, ?, ?, ?) \
                   ON CONFLICT (app_id) DO UPDATE SET last_test_ok = excluded.last_test_ok, \
                   last_test_at = excluded.last_test_at, last_test_message = excluded.last_test_message")
                .bind(app)
                .bind(test.ok)
                .bind(test.at)
                .bind(test.message.as_deref()),
            )
            .await?;
        Ok(())
    }

    async fn resume_app(&self, app: Uuid, actor: &Actor, note: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let before = tx
            .opt(
                q(format!(
                    "SELECT reason, since FROM app_health WHERE app_id = ? AND quarantined{}",
                    <S::Db as Dialect>::FOR_UPDATE
                ))
                .bind(app),
            )
            .await?;
        let Some(before) = before else {
            tx.rollback().await?;
            return Ok(false);
        };
        let reason = before.opt_text("reason")?;
        let since = before.opt_time("since")?;
        tx.run(
            q("UPDATE app_health SET quarantined = FALSE, reason = NULL, since = NULL, next_probe = NULL, probes = 0, \
               auth_refusals = 0, counted_since = ? WHERE app_id = ?")
            .bind(directory::now())
            .bind(app),
        )
        .await?;
        // Planned again: what failed is retried, level-triggered; the queue runs again.
        tx.change(NewChange::app(app)).await?;
        tx.wake_operations();
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.resume",
                target_type: "app",
                target_id: app.to_string(),
                before: Some(serde_json::json!({"reason": reason, "since": since})),
                after: Some(serde_json::json!({"note": note})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
