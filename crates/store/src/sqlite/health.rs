//! [`HealthStore`] for SQLite: quarantine, probes and connection tests.

use directory::ConnectionTest;

use super::*;
use crate::health::*;

/// The minute (Unix time / 60) of `t`: the key of the finished-operation counts.
pub(super) fn minute_of(t: &DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

/// Counts of finished operations older than this many minutes are dropped.
pub(super) const KEEP_MINUTES: i64 = 60;

fn record_from_row(row: &SqliteRow) -> Result<AppHealthRecord> {
    let quarantined: i64 = get(row, "quarantined")?;
    let ok: Option<i64> = get(row, "last_test_ok")?;
    let at = get_opt_ts(row, "last_test_at")?;
    Ok(AppHealthRecord {
        quarantined: quarantined != 0,
        reason: get(row, "reason")?,
        since: get_opt_ts(row, "since")?,
        next_probe: get_opt_ts(row, "next_probe")?,
        probes: get(row, "probes")?,
        auth_refusals: get(row, "auth_refusals")?,
        counted_since: get_opt_ts(row, "counted_since")?,
        last_test: match (ok, at) {
            (Some(ok), Some(at)) => Some(ConnectionTest { ok: ok != 0, at, message: get(row, "last_test_message")? }),
            _ => None,
        },
    })
}

#[async_trait]
impl HealthStore for SqliteStore {
    async fn get_app_health(&self, app: Uuid) -> Result<Option<AppHealthRecord>> {
        let row = sqlx::query(
            "SELECT quarantined, reason, since, next_probe, probes, auth_refusals, counted_since, last_test_ok, \
             last_test_at, last_test_message FROM app_health WHERE app_id = ?",
        )
        .bind(app.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(backend)?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn app_queue_counts(&self, app: Uuid, since: DateTime<Utc>) -> Result<QueueCounts> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM operations WHERE status = 'held' AND app_id = ?1) AS held, \
             (SELECT COUNT(*) FROM operations WHERE app_id = ?1 AND state IN ('queued', 'running')) AS queued, \
             (SELECT COALESCE(SUM(finished), 0) FROM app_outcomes WHERE app_id = ?1 AND minute >= ?2) AS finished",
        )
        .bind(app.to_string())
        .bind(minute_of(&since))
        .fetch_one(&self.reader)
        .await
        .map_err(backend)?;
        Ok(QueueCounts { held: get(&row, "held")?, queued: get(&row, "queued")?, finished: get(&row, "finished")? })
    }

    async fn app_outcome_window(&self, app: Uuid, since: DateTime<Utc>) -> Result<OutcomeWindow> {
        let counted_since = sqlx::query("SELECT counted_since FROM app_health WHERE app_id = ?")
            .bind(app.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?
            .map(|r| get_opt_ts(&r, "counted_since"))
            .transpose()?
            .flatten();
        let since = counted_since.map_or(since, |c| c.max(since));
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(SUM(finished), 0) FROM app_outcomes WHERE app_id = ?1 AND minute >= ?2) AS finished, \
             (SELECT COUNT(*) FROM operations WHERE app_id = ?1 AND status = 'failed' AND resolved_by IS NULL \
               AND updated_at >= ?3 AND attempts > 0) AS failed",
        )
        .bind(app.to_string())
        .bind(minute_of(&since))
        .bind(ts(&since))
        .fetch_one(&self.reader)
        .await
        .map_err(backend)?;
        Ok(OutcomeWindow { finished: get(&row, "finished")?, failed: get(&row, "failed")? })
    }

    async fn add_auth_refusals(&self, app: Uuid, n: i64) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO app_health (app_id, auth_refusals) VALUES (?, ?) ON CONFLICT (app_id) \
             DO UPDATE SET auth_refusals = app_health.auth_refusals + excluded.auth_refusals RETURNING auth_refusals",
        )
        .bind(app.to_string())
        .bind(n)
        .fetch_one(&self.writer)
        .await
        .map_err(backend)?;
        get(&row, "auth_refusals")
    }

    async fn quarantine_app(&self, app: Uuid, reason: &str, next_probe: DateTime<Utc>, actor: &Actor) -> Result<bool> {
        let now = directory::now();
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "INSERT INTO app_health (app_id, quarantined, reason, since, next_probe, probes) VALUES (?, 1, ?, ?, ?, 0) \
             ON CONFLICT (app_id) DO UPDATE SET quarantined = 1, reason = excluded.reason, since = excluded.since, \
             next_probe = excluded.next_probe, probes = 0 WHERE app_health.quarantined = 0 RETURNING app_id",
        )
        .bind(app.to_string())
        .bind(reason)
        .bind(ts(&now))
        .bind(ts(&next_probe))
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if row.is_none() {
            tx.rollback().await.map_err(backend)?;
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
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn due_probes(&self, now: DateTime<Utc>) -> Result<Vec<(Uuid, i64)>> {
        let rows = sqlx::query(
            "SELECT h.app_id, h.probes FROM app_health h JOIN apps a ON a.id = h.app_id \
             WHERE h.quarantined = 1 AND h.next_probe <= ?",
        )
        .bind(ts(&now))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| Ok((get_uuid(r, "app_id")?, get(r, "probes")?))).collect()
    }

    async fn take_probe(&self, app: Uuid, probes: i64, next: DateTime<Utc>) -> Result<bool> {
        let row = sqlx::query(
            "UPDATE app_health SET probes = probes + 1, next_probe = ? \
             WHERE app_id = ? AND quarantined = 1 AND probes = ? AND next_probe <= ? RETURNING app_id",
        )
        .bind(ts(&next))
        .bind(app.to_string())
        .bind(probes)
        .bind(ts(&directory::now()))
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn record_connection_test(&self, app: Uuid, test: &ConnectionTest) -> Result<()> {
        sqlx::query(
            "INSERT INTO app_health (app_id, last_test_ok, last_test_at, last_test_message) VALUES (?, ?, ?, ?) \
             ON CONFLICT (app_id) DO UPDATE SET last_test_ok = excluded.last_test_ok, \
             last_test_at = excluded.last_test_at, last_test_message = excluded.last_test_message",
        )
        .bind(app.to_string())
        .bind(i64::from(test.ok))
        .bind(ts(&test.at))
        .bind(test.message.as_deref())
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn resume_app(&self, app: Uuid, actor: &Actor, note: &str) -> Result<bool> {
        let now = directory::now();
        let mut tx = self.begin().await?;
        let before = sqlx::query("SELECT reason, since FROM app_health WHERE app_id = ? AND quarantined = 1")
            .bind(app.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(before) = before else {
            tx.rollback().await.map_err(backend)?;
            return Ok(false);
        };
        let reason: Option<String> = get(&before, "reason")?;
        let since = get_opt_ts(&before, "since")?;
        sqlx::query(
            "UPDATE app_health SET quarantined = 0, reason = NULL, since = NULL, next_probe = NULL, probes = 0, \
             auth_refusals = 0, counted_since = ? WHERE app_id = ?",
        )
        .bind(ts(&now))
        .bind(app.to_string())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // Planned again: what failed is retried, level-triggered.
        WriteTx::change(&mut tx, NewChange::app(app)).await?;
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
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }
}
