//! SQLite implementation of [`EntitlementStore`].

use std::time::Duration;

use async_trait::async_trait;
use directory::{Entitlement, EntitlementRefresh, Page};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{backend, get, get_opt_ts, get_ts, paginate, ts, SqliteStore};
use crate::entitlements::EntitlementStore;
use crate::{cursor, PageRequest, Result, MAX_PAGE};

fn entitlement_from_row(row: &SqliteRow) -> Result<Entitlement> {
    Ok(Entitlement {
        kind: get(row, "kind")?,
        remote_id: get(row, "remote_id")?,
        display_name: get(row, "display_name")?,
        updated_at: get_ts(row, "updated_at")?,
    })
}

const COLUMNS: &str = "kind, remote_id, display_name, display_key, updated_at";

#[async_trait]
impl EntitlementStore for SqliteStore {
    async fn record_app_read(&self, app: Uuid, kind: &str, result: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO app_reads (app_id, kind, result, recorded_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (app_id, kind) DO UPDATE SET result = excluded.result, recorded_at = excluded.recorded_at",
        )
        .bind(app.to_string())
        .bind(kind)
        .bind(super::to_json(result)?)
        .bind(ts(&directory::now()))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn app_reads(&self, app: Uuid) -> Result<Vec<crate::entitlements::AppRead>> {
        let rows = sqlx::query("SELECT kind, result, recorded_at FROM app_reads WHERE app_id = ? ORDER BY kind")
            .bind(app.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(crate::entitlements::AppRead {
                    kind: get(r, "kind")?,
                    result: super::get_json(r, "result")?,
                    recorded_at: get_ts(r, "recorded_at")?,
                })
            })
            .collect()
    }

    async fn begin_entitlement_refresh(&self, app: Uuid, stale_after: Duration) -> Result<bool> {
        let now = directory::now();
        let stale = now - chrono::Duration::from_std(stale_after).unwrap_or_else(|_| chrono::Duration::hours(1));
        let done = sqlx::query(
            "INSERT INTO entitlement_refreshes (app_id, state, fetched, total, error, started_at, finished_at) \
             VALUES (?, 'running', 0, NULL, NULL, ?, NULL) \
             ON CONFLICT (app_id) DO UPDATE SET state = 'running', fetched = 0, total = NULL, error = NULL, \
             started_at = excluded.started_at, finished_at = NULL \
             WHERE entitlement_refreshes.state <> 'running' OR entitlement_refreshes.started_at < ?",
        )
        .bind(app.to_string())
        .bind(ts(&now))
        .bind(ts(&stale))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn record_entitlements(
        &self,
        app: Uuid,
        kind: &str,
        items: &[(String, String)],
        fetched: i64,
        total: Option<i64>,
    ) -> Result<()> {
        let now = ts(&directory::now());
        let mut tx = self.writer.begin().await.map_err(backend)?;
        for chunk in items.chunks(200) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO entitlements (app_id, kind, remote_id, display_name, display_key, updated_at) ",
            );
            qb.push_values(chunk, |mut b, (id, name)| {
                b.push_bind(app.to_string())
                    .push_bind(kind)
                    .push_bind(id)
                    .push_bind(name)
                    .push_bind(name.to_lowercase())
                    .push_bind(&now);
            });
            qb.push(
                " ON CONFLICT (app_id, kind, remote_id) DO UPDATE SET display_name = excluded.display_name, \
                 display_key = excluded.display_key, updated_at = excluded.updated_at",
            );
            qb.build().execute(&mut *tx).await.map_err(backend)?;
        }
        sqlx::query("UPDATE entitlement_refreshes SET fetched = ?, total = ? WHERE app_id = ?")
            .bind(fetched)
            .bind(total)
            .bind(app.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn finish_entitlement_refresh(&self, app: Uuid, kind: &str, error: Option<&str>) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let started: Option<String> =
            sqlx::query_scalar("SELECT started_at FROM entitlement_refreshes WHERE app_id = ?")
                .bind(app.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        if let (None, Some(started)) = (error, started) {
            // Values not seen since the refresh began are gone from the app.
            sqlx::query("DELETE FROM entitlements WHERE app_id = ? AND kind = ? AND updated_at < ?")
                .bind(app.to_string())
                .bind(kind)
                .bind(started)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        sqlx::query("UPDATE entitlement_refreshes SET state = ?, error = ?, finished_at = ? WHERE app_id = ?")
            .bind(if error.is_some() { "failed" } else { "done" })
            .bind(error)
            .bind(ts(&directory::now()))
            .bind(app.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn entitlement_refresh(&self, app: Uuid) -> Result<Option<EntitlementRefresh>> {
        let row = sqlx::query(
            "SELECT state, fetched, total, error, started_at, finished_at FROM entitlement_refreshes WHERE app_id = ?",
        )
        .bind(app.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok(EntitlementRefresh {
                state: get(&r, "state")?,
                fetched: get(&r, "fetched")?,
                total: get(&r, "total")?,
                error: get(&r, "error")?,
                started_at: get_ts(&r, "started_at")?,
                finished_at: get_opt_ts(&r, "finished_at")?,
            })
        })
        .transpose()
    }

    async fn list_entitlements(&self, app: Uuid, page: &PageRequest) -> Result<Page<Entitlement>> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM entitlements WHERE app_id = "));
        qb.push_bind(app.to_string());
        if let Some(c) = &page.cursor {
            let key = cursor::decode(c, 3)?;
            qb.push(" AND (kind, display_key, remote_id) > (")
                .push_bind(key[0].clone())
                .push(", ")
                .push_bind(key[1].clone())
                .push(", ")
                .push_bind(key[2].clone())
                .push(")");
        }
        qb.push(" ORDER BY kind, display_key, remote_id LIMIT ")
            .push_bind(i64::from(page.limit.clamp(1, MAX_PAGE)) + 1);
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        let items = rows.iter().map(entitlement_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, page, |e| vec![e.kind.clone(), e.display_name.to_lowercase(), e.remote_id.clone()]))
    }

    async fn find_entitlements(&self, app: Uuid, kind: &str, names: &[String]) -> Result<Vec<Entitlement>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM entitlements WHERE app_id = "));
        qb.push_bind(app.to_string()).push(" AND kind = ").push_bind(kind.to_owned()).push(" AND display_key IN (");
        let mut sep = qb.separated(", ");
        for n in names {
            sep.push_bind(n.to_lowercase());
        }
        qb.push(")");
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(entitlement_from_row).collect()
    }

    async fn add_entitlement(&self, app: Uuid, kind: &str, remote_id: &str, display_name: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO entitlements (app_id, kind, remote_id, display_name, display_key, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app_id, kind, remote_id) DO UPDATE SET \
             display_name = excluded.display_name, display_key = excluded.display_key, updated_at = excluded.updated_at",
        )
        .bind(app.to_string())
        .bind(kind)
        .bind(remote_id)
        .bind(display_name)
        .bind(display_name.to_lowercase())
        .bind(ts(&directory::now()))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }
}
