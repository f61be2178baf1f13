//! [`EntitlementStore`] on both backends: the values "Refresh" imports from apps, the refresh's
//! progress, and how the latest reconcile or Refresh read each app.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use directory::{Entitlement, EntitlementRefresh, Page};
use serde_json::Value;
use uuid::Uuid;

use super::{limit_of, paginate, q, Backend, Dialect, Exec, Json, RowGet, WriteTx};
use crate::entitlements::{AppRead, EntitlementStore};
use crate::{cursor, PageRequest, Result};

const COLUMNS: &str = "kind, remote_id, display_name, display_key, updated_at";

/// Values written by one statement of [`EntitlementStore::record_entitlements`].
const CHUNK: usize = 200;

/// What an upsert of a value changes when the value is known already.
const ON_CONFLICT: &str = " ON CONFLICT (app_id, kind, remote_id) DO UPDATE SET display_name = excluded.display_name, \
    display_key = excluded.display_key, updated_at = excluded.updated_at";

fn entitlement_from_row(row: &impl RowGet) -> Result<Entitlement> {
    Ok(Entitlement {
        kind: row.text("kind")?,
        remote_id: row.text("remote_id")?,
        display_name: row.text("display_name")?,
        updated_at: row.time("updated_at")?,
    })
}

#[async_trait]
impl<S: Backend> EntitlementStore for S {
    async fn record_app_read(&self, app: Uuid, kind: &str, result: &Value) -> Result<()> {
        self.read_fresh()
            .await?
            .run(
                q("INSERT INTO app_reads (app_id, kind, result, recorded_at) VALUES (?, ?, ?, ?) \
                   ON CONFLICT (app_id, kind) DO UPDATE SET result = excluded.result, \
                   recorded_at = excluded.recorded_at")
                .bind(app)
                .bind(kind)
                .bind(Json(result.clone()))
                .bind(directory::now()),
            )
            .await?;
        Ok(())
    }

    async fn app_reads(&self, app: Uuid) -> Result<Vec<AppRead>> {
        let rows = self
            .read()
            .await?
            .all(q("SELECT kind, result, recorded_at FROM app_reads WHERE app_id = ? ORDER BY kind").bind(app))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AppRead { kind: r.text("kind")?, result: r.value("result")?, recorded_at: r.time("recorded_at")? })
            })
            .collect()
    }

    async fn begin_entitlement_refresh(&self, app: Uuid, stale_after: Duration) -> Result<bool> {
        let now = directory::now();
        let stale = now - chrono::Duration::from_std(stale_after).unwrap_or_else(|_| chrono::Duration::hours(1));
        let done = self
            .read_fresh()
            .await?
            .run(
                q("INSERT INTO entitlement_refreshes (app_id, state, fetched, total, error, started_at, finished_at) \
                   VALUES (?, 'running', 0, NULL, NULL, ?, NULL) \
                   ON CONFLICT (app_id) DO UPDATE SET state = 'running', fetched = 0, total = NULL, error = NULL, \
                   started_at = excluded.started_at, finished_at = NULL \
                   WHERE entitlement_refreshes.state <> 'running' OR entitlement_refreshes.started_at < ?")
                .bind(app)
                .bind(now)
                .bind(stale),
            )
            .await?;
        Ok(done > 0)
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
        let mut tx = self.begin().await?;
        for chunk in items.chunks(CHUNK) {
            // One value may appear twice in a page, and PostgreSQL's ON CONFLICT cannot touch a
            // row twice in one statement: the last one wins, as when rows are written one by one.
            let mut seen = HashSet::new();
            let mut chunk: Vec<_> = chunk.iter().rev().filter(|(id, _)| seen.insert(id.as_str())).collect();
            chunk.reverse();
            let mut insert =
                q("INSERT INTO entitlements (app_id, kind, remote_id, display_name, display_key, updated_at) VALUES ");
            for (i, (id, name)) in chunk.into_iter().enumerate() {
                insert
                    .push(if i == 0 { "(?, ?, ?, ?, ?, ?)" } else { ", (?, ?, ?, ?, ?, ?)" })
                    .add(app)
                    .add(kind)
                    .add(id)
                    .add(name)
                    .add(name.to_lowercase())
                    .add(now);
            }
            insert.push(ON_CONFLICT);
            tx.run(insert).await?;
        }
        tx.run(
            q("UPDATE entitlement_refreshes SET fetched = ?, total = ? WHERE app_id = ?")
                .bind(fetched)
                .bind(total)
                .bind(app),
        )
        .await?;
        tx.commit().await
    }

    async fn finish_entitlement_refresh(&self, app: Uuid, kind: &str, error: Option<&str>) -> Result<()> {
        let mut tx = self.begin().await?;
        let started = tx
            .opt(
                q(format!(
                    "SELECT started_at FROM entitlement_refreshes WHERE app_id = ?{}",
                    <S::Db as Dialect>::FOR_UPDATE
                ))
                .bind(app),
            )
            .await?
            .map(|r| r.time("started_at"))
            .transpose()?;
        if let (None, Some(started)) = (error, started) {
            // Values not seen since the refresh began are gone from the app.
            tx.run(
                q("DELETE FROM entitlements WHERE app_id = ? AND kind = ? AND updated_at < ?")
                    .bind(app)
                    .bind(kind)
                    .bind(started),
            )
            .await?;
        }
        tx.run(
            q("UPDATE entitlement_refreshes SET state = ?, error = ?, finished_at = ? WHERE app_id = ?")
                .bind(if error.is_some() { "failed" } else { "done" })
                .bind(error)
                .bind(directory::now())
                .bind(app),
        )
        .await?;
        tx.commit().await
    }

    async fn entitlement_refresh(&self, app: Uuid) -> Result<Option<EntitlementRefresh>> {
        let row = self
            .read()
            .await?
            .opt(
                q("SELECT state, fetched, total, error, started_at, finished_at FROM entitlement_refreshes \
                   WHERE app_id = ?")
                .bind(app),
            )
            .await?;
        row.map(|r| {
            Ok(EntitlementRefresh {
                state: r.text("state")?,
                fetched: r.int("fetched")?,
                total: r.opt_int("total")?,
                error: r.opt_text("error")?,
                started_at: r.time("started_at")?,
                finished_at: r.opt_time("finished_at")?,
            })
        })
        .transpose()
    }

    async fn list_entitlements(&self, app: Uuid, page: &PageRequest) -> Result<Page<Entitlement>> {
        let mut list = q(format!("SELECT {COLUMNS} FROM entitlements WHERE app_id = ?")).bind(app);
        if let Some(c) = &page.cursor {
            let key = cursor::decode(c, 3)?;
            list.push(" AND (kind, display_key, remote_id) > (?, ?, ?)");
            for k in key {
                list.add(k);
            }
        }
        list.push(" ORDER BY kind, display_key, remote_id LIMIT ?").add(limit_of(page) + 1);
        let rows = self.read().await?.all(list).await?;
        let items = rows.iter().map(entitlement_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(items, page, |e| vec![e.kind.clone(), e.display_name.to_lowercase(), e.remote_id.clone()]))
    }

    async fn find_entitlements(&self, app: Uuid, kind: &str, names: &[String]) -> Result<Vec<Entitlement>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
        let mut find =
            q(format!("SELECT {COLUMNS} FROM entitlements WHERE app_id = ? AND kind = ? AND ")).bind(app).bind(kind);
        <S::Db as Dialect>::push_in(&mut find, "display_key", keys.into());
        let rows = self.read().await?.all(find).await?;
        rows.iter().map(entitlement_from_row).collect()
    }

    async fn add_entitlement(&self, app: Uuid, kind: &str, remote_id: &str, display_name: &str) -> Result<()> {
        self.read_fresh()
            .await?
            .run(
                q(format!(
                    "INSERT INTO entitlements (app_id, kind, remote_id, display_name, display_key, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?){ON_CONFLICT}"
                ))
                .bind(app)
                .bind(kind)
                .bind(remote_id)
                .bind(display_name)
                .bind(display_name.to_lowercase())
                .bind(directory::now()),
            )
            .await?;
        Ok(())
    }
}
