//! [`SourceStore`] on SQLite.

use std::time::Duration;

use async_trait::async_trait;
use directory::{
    Actor, DirectorySource, NewChange, SourceLink, SourceSync, SyncCounts, SyncMode, SyncState, User, UserStatus,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{
    backend, check_version, get, get_json, get_opt_ts, get_ts, get_uuid, record_audit, to_json, to_value, ts,
    user_from_row, AuditRecord, SqliteStore, Tx, WriteTx, USER_COLUMNS,
};
use crate::sources::{dn_key, LinkedUser, SkippedWrite, SourceBatch, SourceCursor, SourceStore};
use crate::{Result, StoreError};

fn source_from_row(row: &SqliteRow) -> Result<DirectorySource> {
    let mut source: DirectorySource = get_json(row, "config")?;
    source.id = get_uuid(row, "id")?;
    source.version = get(row, "version")?;
    source.created_at = get_ts(row, "created_at")?;
    source.updated_at = get_ts(row, "updated_at")?;
    Ok(source)
}

const SYNC_COLUMNS: &str = "id, source_id, mode, state, trigger, counts, pending_suspensions, message, errors, \
    started_at, finished_at, heartbeat_at";

fn sync_from_row(row: &SqliteRow) -> Result<SourceSync> {
    let mode: String = get(row, "mode")?;
    let state: String = get(row, "state")?;
    let counts: SyncCounts = get_json(row, "counts")?;
    Ok(SourceSync {
        id: get_uuid(row, "id")?,
        source_id: get_uuid(row, "source_id")?,
        mode: SyncMode::parse(&mode).ok_or_else(|| StoreError::Backend(format!("bad mode {mode}")))?,
        state: SyncState::parse(&state).ok_or_else(|| StoreError::Backend(format!("bad state {state}")))?,
        trigger: get(row, "trigger")?,
        counts,
        pending_suspensions: u64::try_from(get::<i64>(row, "pending_suspensions")?).unwrap_or(0),
        message: get(row, "message")?,
        errors: get_json(row, "errors")?,
        started_at: get_ts(row, "started_at")?,
        finished_at: get_opt_ts(row, "finished_at")?,
        heartbeat_at: get_ts(row, "heartbeat_at")?,
    })
}

const LINK_COLUMNS: &str = "source_id, user_id, stable_id, dn, suspended_by_source";

fn link_from_row(row: &SqliteRow) -> Result<SourceLink> {
    Ok(SourceLink {
        source_id: get_uuid(row, "source_id")?,
        user_id: get_uuid(row, "user_id")?,
        stable_id: get(row, "stable_id")?,
        dn: get(row, "dn")?,
        suspended_by_source: get::<i64>(row, "suspended_by_source")? != 0,
    })
}

/// The source's JSON without the fields kept in columns.
fn config_json(source: &DirectorySource) -> Result<String> {
    to_json(source)
}

async fn source_in(tx: &mut Tx, id: Uuid) -> Result<DirectorySource> {
    let row = sqlx::query("SELECT id, config, created_at, updated_at, version FROM sources WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?
        .ok_or(StoreError::NotFound)?;
    source_from_row(&row)
}

async fn upsert_link(tx: &mut Tx, link: &SourceLink) -> Result<()> {
    sqlx::query(
        "INSERT INTO source_links (source_id, user_id, stable_id, dn, dn_key, suspended_by_source) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source_id, stable_id) DO UPDATE SET dn = excluded.dn, \
         dn_key = excluded.dn_key, suspended_by_source = excluded.suspended_by_source",
    )
    .bind(link.source_id.to_string())
    .bind(link.user_id.to_string())
    .bind(&link.stable_id)
    .bind(&link.dn)
    .bind(dn_key(&link.dn))
    .bind(i64::from(link.suspended_by_source))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

fn user_action(before: UserStatus, after: UserStatus) -> &'static str {
    match (before == after, after) {
        (true, _) => "user.update",
        (false, UserStatus::Suspended) => "user.suspend",
        (false, _) => "user.reactivate",
    }
}

#[async_trait]
impl SourceStore for SqliteStore {
    async fn create_source(&self, source: &DirectorySource, password: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO sources (id, name, name_key, config, password, created_at, updated_at, version) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(source.id.to_string())
        .bind(&source.name)
        .bind(source.name.to_lowercase())
        .bind(config_json(source)?)
        .bind(password)
        .bind(ts(&source.created_at))
        .bind(ts(&source.updated_at))
        .bind(source.version)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "source.create",
                target_type: "source",
                target_id: source.id.to_string(),
                before: None,
                after: to_value(source),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_source(&self, id: Uuid) -> Result<Option<DirectorySource>> {
        let row = sqlx::query("SELECT id, config, created_at, updated_at, version FROM sources WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(source_from_row).transpose()
    }

    async fn list_sources(&self) -> Result<Vec<DirectorySource>> {
        let rows = sqlx::query("SELECT id, config, created_at, updated_at, version FROM sources ORDER BY name_key, id")
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(source_from_row).collect()
    }

    async fn update_source(
        &self,
        source: &DirectorySource,
        password: Option<&str>,
        expected_version: i64,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = source_in(&mut tx, source.id).await?;
        check_version(before.version, Some(expected_version))?;
        sqlx::query(
            "UPDATE sources SET name = ?, name_key = ?, config = ?, password = COALESCE(?, password), \
             updated_at = ?, version = ? WHERE id = ?",
        )
        .bind(&source.name)
        .bind(source.name.to_lowercase())
        .bind(config_json(source)?)
        .bind(password)
        .bind(ts(&source.updated_at))
        .bind(source.version)
        .bind(source.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let mut after = to_value(source);
        if let (Some(serde_json::Value::Object(map)), true) = (&mut after, password.is_some()) {
            map.insert("bind_password_changed".into(), serde_json::Value::Bool(true));
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "source.update",
                target_type: "source",
                target_id: source.id.to_string(),
                before: to_value(&before),
                after,
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn delete_source(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = source_in(&mut tx, id).await?;
        check_version(before.version, expected_version)?;
        sqlx::query("DELETE FROM sources WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "source.delete",
                target_type: "source",
                target_id: id.to_string(),
                before: to_value(&before),
                after: None,
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_source_password(&self, id: Uuid) -> Result<Option<String>> {
        let row = sqlx::query("SELECT password FROM sources WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.map(|r| get(&r, "password")).transpose()
    }

    async fn source_cursor(&self, id: Uuid) -> Result<SourceCursor> {
        let row = sqlx::query("SELECT watermark, last_full_sync_at FROM sources WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        Ok(SourceCursor {
            watermark: get(&row, "watermark")?,
            last_full_sync_at: get_opt_ts(&row, "last_full_sync_at")?,
        })
    }

    async fn set_source_cursor(&self, id: Uuid, cursor: &SourceCursor) -> Result<()> {
        sqlx::query("UPDATE sources SET watermark = ?, last_full_sync_at = ? WHERE id = ?")
            .bind(&cursor.watermark)
            .bind(cursor.last_full_sync_at.as_ref().map(ts))
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn begin_source_sync(&self, sync: &SourceSync, stale_after: Duration, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        source_in(&mut tx, sync.source_id).await?;
        let stale = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::minutes(2));
        let cutoff = ts(&(directory::now() - stale));
        sqlx::query(
            "UPDATE source_syncs SET state = 'failed', finished_at = ?, \
             message = 'abandoned: the process running it stopped' \
             WHERE source_id = ? AND state = 'running' AND heartbeat_at < ?",
        )
        .bind(ts(&directory::now()))
        .bind(sync.source_id.to_string())
        .bind(&cutoff)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let open = sqlx::query(
            "SELECT id FROM source_syncs WHERE source_id = ? AND state IN ('running','awaiting_confirmation')",
        )
        .bind(sync.source_id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if let Some(row) = open {
            let id: String = get(&row, "id")?;
            return Err(StoreError::InvalidState(format!("sync {id} of this source is still open")));
        }
        sqlx::query(&format!("INSERT INTO source_syncs ({SYNC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(sync.id.to_string())
            .bind(sync.source_id.to_string())
            .bind(sync.mode.as_str())
            .bind(sync.state.as_str())
            .bind(&sync.trigger)
            .bind(to_json(&sync.counts)?)
            .bind(i64::try_from(sync.pending_suspensions).unwrap_or(i64::MAX))
            .bind(&sync.message)
            .bind(to_json(&sync.errors)?)
            .bind(ts(&sync.started_at))
            .bind(sync.finished_at.as_ref().map(ts))
            .bind(ts(&sync.heartbeat_at))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "source.sync",
                target_type: "source",
                target_id: sync.source_id.to_string(),
                before: None,
                after: Some(serde_json::json!({"sync_id": sync.id, "mode": sync.mode, "trigger": sync.trigger})),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn save_source_sync(&self, sync: &SourceSync, pending: Option<&[String]>) -> Result<()> {
        let pending = pending.map(|p| to_json(&p)).transpose()?;
        sqlx::query(
            "UPDATE source_syncs SET state = ?, counts = ?, pending_suspensions = ?, pending = COALESCE(?, pending), \
             message = ?, errors = ?, finished_at = ?, heartbeat_at = ? WHERE id = ?",
        )
        .bind(sync.state.as_str())
        .bind(to_json(&sync.counts)?)
        .bind(i64::try_from(sync.pending_suspensions).unwrap_or(i64::MAX))
        .bind(pending)
        .bind(&sync.message)
        .bind(to_json(&sync.errors)?)
        .bind(sync.finished_at.as_ref().map(ts))
        .bind(ts(&sync.heartbeat_at))
        .bind(sync.id.to_string())
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_source_sync(&self, source: Uuid, id: Uuid) -> Result<Option<SourceSync>> {
        let row = sqlx::query(&format!("SELECT {SYNC_COLUMNS} FROM source_syncs WHERE id = ? AND source_id = ?"))
            .bind(id.to_string())
            .bind(source.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(sync_from_row).transpose()
    }

    async fn source_sync_pending(&self, id: Uuid) -> Result<Vec<String>> {
        let row = sqlx::query("SELECT pending FROM source_syncs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        match row.map(|r| get::<Option<String>>(&r, "pending")).transpose()?.flatten() {
            Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Backend(e.to_string())),
            None => Ok(Vec::new()),
        }
    }

    async fn list_source_syncs(&self, source: Uuid, limit: u32) -> Result<Vec<SourceSync>> {
        let rows = sqlx::query(&format!(
            "SELECT {SYNC_COLUMNS} FROM source_syncs WHERE source_id = ? ORDER BY started_at DESC, id DESC LIMIT ?"
        ))
        .bind(source.to_string())
        .bind(i64::from(limit.clamp(1, 500)))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(sync_from_row).collect()
    }

    async fn confirm_source_sync(&self, source: Uuid, id: Uuid, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE source_syncs SET state = 'running', heartbeat_at = ?, message = NULL \
             WHERE id = ? AND source_id = ? AND state = 'awaiting_confirmation'",
        )
        .bind(ts(&directory::now()))
        .bind(id.to_string())
        .bind(source.to_string())
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            > 0;
        if done {
            record_audit(
                &mut tx,
                actor,
                AuditRecord {
                    action: "source.confirm_sync",
                    target_type: "source",
                    target_id: source.to_string(),
                    before: None,
                    after: Some(serde_json::json!({"sync_id": id})),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(done)
    }

    async fn linked_users(&self, source: Uuid, stable_ids: &[String]) -> Result<Vec<LinkedUser>> {
        let mut out = Vec::with_capacity(stable_ids.len());
        for chunk in stable_ids.chunks(500) {
            let cols: String =
                USER_COLUMNS.split(", ").map(|c| format!("u.{}", c.trim())).collect::<Vec<_>>().join(", ");
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                "SELECT l.source_id, l.user_id, l.stable_id, l.dn, l.suspended_by_source, {cols} \
                 FROM source_links l JOIN users u ON u.id = l.user_id WHERE l.source_id = "
            ));
            qb.push_bind(source.to_string()).push(" AND l.stable_id IN (");
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.clone());
            }
            qb.push(")");
            let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
            for row in &rows {
                out.push(LinkedUser { link: link_from_row(row)?, user: user_from_row(row)? });
            }
        }
        Ok(out)
    }

    async fn source_links(&self, source: Uuid) -> Result<Vec<SourceLink>> {
        let rows = sqlx::query(&format!("SELECT {LINK_COLUMNS} FROM source_links WHERE source_id = ?"))
            .bind(source.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(link_from_row).collect()
    }

    async fn links_by_dn(&self, source: Uuid, dns: &[String]) -> Result<Vec<SourceLink>> {
        let mut out = Vec::new();
        for chunk in dns.chunks(500) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("SELECT {LINK_COLUMNS} FROM source_links WHERE source_id = "));
            qb.push_bind(source.to_string()).push(" AND dn_key IN (");
            let mut sep = qb.separated(", ");
            for dn in chunk {
                sep.push_bind(dn_key(dn));
            }
            qb.push(")");
            let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
            for row in &rows {
                out.push(link_from_row(row)?);
            }
        }
        Ok(out)
    }

    async fn role_members(&self, roles: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
        let mut out = Vec::new();
        for role in roles {
            let rows = sqlx::query("SELECT role_id, user_id FROM role_users WHERE role_id = ?")
                .bind(role.to_string())
                .fetch_all(&self.reader)
                .await
                .map_err(backend)?;
            for row in &rows {
                out.push((get_uuid(row, "role_id")?, get_uuid(row, "user_id")?));
            }
        }
        Ok(out)
    }

    async fn apply_source_batch(&self, source: Uuid, batch: &SourceBatch, actor: &Actor) -> Result<Vec<SkippedWrite>> {
        let mut skipped = Vec::new();
        let mut tx = self.begin().await?;
        source_in(&mut tx, source).await?;
        for (user, link) in &batch.creates {
            let inserted = match super::insert_user_row(&mut tx, user, None, true).await {
                Err(StoreError::Duplicate { field: "email" }) => {
                    skipped.push(email_taken(user, &link.stable_id));
                    continue;
                }
                other => other?,
            };
            if !inserted {
                skipped.push(SkippedWrite {
                    user_id: user.id,
                    stable_id: link.stable_id.clone(),
                    reason: format!("username {:?} is already taken by another user", user.username),
                });
                continue;
            }
            upsert_link(&mut tx, link).await?;
            WriteTx::change(&mut tx, NewChange::user(user.id)).await?;
            record_audit(
                &mut tx,
                actor,
                AuditRecord {
                    action: "user.create",
                    target_type: "user",
                    target_id: user.id.to_string(),
                    before: None,
                    after: to_value(user),
                },
            )
            .await?;
        }
        for update in &batch.updates {
            let user = &update.user;
            let before = match Self::user_in(&mut tx, user.id).await {
                Ok(b) if b.status != UserStatus::Deleted => b,
                _ => {
                    skipped.push(SkippedWrite {
                        user_id: user.id,
                        stable_id: update.link.stable_id.clone(),
                        reason: "the user was deleted here".into(),
                    });
                    continue;
                }
            };
            if before.version != update.expected_version {
                skipped.push(SkippedWrite {
                    user_id: user.id,
                    stable_id: update.link.stable_id.clone(),
                    reason: "the user changed during the sync; the next sync updates them".into(),
                });
                continue;
            }
            if User::username_key(&before.username) != User::username_key(&user.username) {
                let taken =
                    sqlx::query("SELECT 1 FROM users WHERE username_key = ? AND status <> 'deleted' AND id <> ?")
                        .bind(User::username_key(&user.username))
                        .bind(user.id.to_string())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend)?;
                if taken.is_some() {
                    skipped.push(SkippedWrite {
                        user_id: user.id,
                        stable_id: update.link.stable_id.clone(),
                        reason: format!("username {:?} is already taken by another user", user.username),
                    });
                    continue;
                }
            }
            match super::write_user_row(&mut tx, user).await {
                Err(StoreError::Duplicate { field: "email" }) => {
                    skipped.push(email_taken(user, &update.link.stable_id));
                    continue;
                }
                other => other?,
            }
            upsert_link(&mut tx, &update.link).await?;
            WriteTx::change(&mut tx, NewChange::user(user.id)).await?;
            record_audit(
                &mut tx,
                actor,
                AuditRecord {
                    action: user_action(before.status, user.status),
                    target_type: "user",
                    target_id: user.id.to_string(),
                    before: to_value(&before),
                    after: to_value(user),
                },
            )
            .await?;
        }
        for (add, list) in [(true, &batch.role_adds), (false, &batch.role_removes)] {
            for (role, user) in list {
                let result = if add {
                    sqlx::query(
                        "INSERT INTO role_users (role_id, user_id, created_at) \
                         SELECT ?1, id, ?2 FROM users WHERE id = ?3 AND status <> 'deleted' \
                         AND EXISTS (SELECT 1 FROM roles WHERE id = ?1) ON CONFLICT DO NOTHING",
                    )
                    .bind(role.to_string())
                    .bind(ts(&directory::now()))
                    .bind(user.to_string())
                    .execute(&mut *tx)
                    .await
                } else {
                    sqlx::query("DELETE FROM role_users WHERE role_id = ? AND user_id = ?")
                        .bind(role.to_string())
                        .bind(user.to_string())
                        .execute(&mut *tx)
                        .await
                };
                let done = result.map_err(backend)?.rows_affected() > 0;
                if done {
                    WriteTx::change(&mut tx, NewChange::membership(*role, *user)).await?;
                    let value = serde_json::json!({"role_id": role, "user_id": user});
                    let (action, before, after) = if add {
                        ("role.add_user", None, Some(value))
                    } else {
                        ("role.remove_user", Some(value), None)
                    };
                    record_audit(
                        &mut tx,
                        actor,
                        AuditRecord { action, target_type: "role", target_id: role.to_string(), before, after },
                    )
                    .await?;
                }
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(skipped)
    }

    async fn source_link_of_user(&self, user: Uuid) -> Result<Option<SourceLink>> {
        let row = sqlx::query(&format!("SELECT {LINK_COLUMNS} FROM source_links WHERE user_id = ?"))
            .bind(user.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(link_from_row).transpose()
    }
}

/// A person whose e-mail address another person already has is not imported (one person, one
/// SAML NameID); the rest of the sync goes on.
fn email_taken(user: &User, stable_id: &str) -> SkippedWrite {
    SkippedWrite {
        user_id: user.id,
        stable_id: stable_id.to_owned(),
        reason: format!(
            "e-mail address {:?} is already used by another user (each person needs their own address)",
            user.email.as_deref().unwrap_or_default()
        ),
    }
}
