//! PostgreSQL implementation of [`EntitlementStore`].

use std::time::Duration;

use async_trait::async_trait;
use directory::{Entitlement, EntitlementRefresh, Page};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{backend, get, paginate, PostgresStore};
use crate::entitlements::EntitlementStore;
use crate::{cursor, PageRequest, Result, MAX_PAGE};

fn entitlement_from_row(row: &PgRow) -> Result<Entitlement> {
    Ok(Entitlement {
        kind: get(row, "kind")?,
        remote_id: get(row, "remote_id")?,
        display_name: get(row, "display_name")?,
        updated_at: get(row, "updated_at")?,
    })
}

const COLUMNS: &str = "kind, remote_id, display_name, display_key, updated_at";

#[async_trait]
impl EntitlementStore for PostgresStore {
    async fn record_app_read(&self, app: Uuid, kind: &str, result: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO app_reads (app_id, kind, result, recorded_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app_id, kind) DO UPDATE SET result = excluded.result, recorded_at = excluded.recorded_at",
        )
        .bind(app)
        .bind(kind)
        .bind(result)
        .bind(directory::now())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn app_reads(&self, app: Uuid) -> Result<Vec<crate::entitlements::AppRead>> {
        let rows = sqlx::query("SELECT kind, result, recorded_at FROM app_reads WHERE app_id = $1 ORDER BY kind")
            .bind(app)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(crate::entitlements::AppRead {
                    kind: get(r, "kind")?,
                    result: get(r, "result")?,
                    recorded_at: get(r, "recorded_at")?,
                })
            })
            .collect()
    }

    async fn begin_entitlement_refresh(&self, app: Uuid, stale_after: Duration) -> Result<bool> {
        let now = directory::now();
        let stale = now - chrono::Duration::from_std(stale_after).unwrap_or_else(|_| chrono::Duration::hours(1));
        let done = sqlx::query(
            "INSERT INTO entitlement_refreshes (app_id, state, fetched, total, error, started_at, finished_at) \
             VALUES ($1, 'running', 0, NULL, NULL, $2, NULL) \
             ON CONFLICT (app_id) DO UPDATE SET state = 'running', fetched = 0, total = NULL, error = NULL, \
             started_at = excluded.started_at, finished_at = NULL \
             WHERE entitlement_refreshes.state <> 'running' OR entitlement_refreshes.started_at < $3",
        )
        .bind(app)
        .bind(now)
        .bind(stale)
        .execute(&self.pool)
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
        let now = directory::now();
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for chunk in items.chunks(200) {
            // One value may appear twice in a page, and ON CONFLICT cannot touch a row twice:
            // the last one wins, as when rows are written one by one.
            let mut seen = std::collections::HashSet::new();
            let mut chunk: Vec<_> = chunk.iter().rev().filter(|(id, _)| seen.insert(id.as_str())).collect();
            chunk.reverse();
            let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
                "INSERT INTO entitlements (app_id, kind, remote_id, display_name, display_key, updated_at) ",
            );
            qb.push_values(chunk, |mut b, (id, name)| {
                b.push_bind(app)
                    .push_bind(kind)
                    .push_bind(id)
                    .push_bind(name)
                    .push_bind(name.to_lowercase())
                    .push_bind(now);
            });
            qb.push(
                " ON CONFLICT (app_id, kind, remote_id) DO UPDATE SET display_name = excluded.display_name, \
                 display_key = excluded.display_key, updated_at = excluded.updated_at",
            );
            qb.build().execute(&mut *tx).await.map_err(backend)?;
        }
        sqlx::query("UPDATE entitlement_refreshes SET fetched = $1, total = $2 WHERE app_id = $3")
            .bind(fetched)
            .bind(total)
            .bind(app)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn finish_entitlement_refresh(&self, app: Uuid, kind: &str, error: Option<&str>) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let started: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT started_at FROM entitlement_refreshes WHERE app_id = $1 FOR UPDATE")
                .bind(app)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        if let (None, Some(started)) = (error, started) {
            // Values not seen since the refresh began are gone from the app.
            sqlx::query("DELETE FROM entitlements WHERE app_id = $1 AND kind = $2 AND updated_at < $3")
                .bind(app)
                .bind(kind)
                .bind(started)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        sqlx::query("UPDATE entitlement_refreshes SET state = $1, error = $2, finished_at = $3 WHERE app_id = $4")
            .bind(if error.is_some() { "failed" } else { "done" })
            .bind(error)
            .bind(directory::now())
            .bind(app)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn entitlement_refresh(&self, app: Uuid) -> Result<Option<EntitlementRefresh>> {
        let row = sqlx::query(
            "SELECT state, fetched, total, error, started_at, finished_at FROM entitlement_refreshes WHERE app_id = $1",
        )
        .bind(app)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok(EntitlementRefresh {
                state: get(&r, "state")?,
                fetched: get(&r, "fetched")?,
                total: get(&r, "total")?,
                error: get(&r, "error")?,
                started_at: get(&r, "started_at")?,
                finished_at: get(&r, "finished_at")?,
            })
        })
        .transpose()
    }

    async fn list_entitlements(&self, app: Uuid, page: &PageRequest) -> Result<Page<Entitlement>> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM entitlements WHERE app_id = "));
        qb.push_bind(app);
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
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        let items = rows.iter().map(entitlement_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, page, |e| vec![e.kind.clone(), e.display_name.to_lowercase(), e.remote_id.clone()]))
    }

    async fn find_entitlements(&self, app: Uuid, kind: &str, names: &[String]) -> Result<Vec<Entitlement>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
        let sql =
            format!("SELECT {COLUMNS} FROM entitlements WHERE app_id = $1 AND kind = $2 AND display_key = ANY($3)");
        let rows = sqlx::query(&sql).bind(app).bind(kind).bind(&keys).fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(entitlement_from_row).collect()
    }

    async fn add_entitlement(&self, app: Uuid, kind: &str, remote_id: &str, display_name: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO entitlements (app_id, kind, remote_id, display_name, display_key, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (app_id, kind, remote_id) DO UPDATE SET \
             display_name = excluded.display_name, display_key = excluded.display_key, updated_at = excluded.updated_at",
        )
        .bind(app)
        .bind(kind)
        .bind(remote_id)
        .bind(display_name)
        .bind(display_name.to_lowercase())
        .bind(directory::now())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}
