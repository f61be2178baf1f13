//! [`SourceStore`] on both backends: directory sources, their syncs, the links of imported
//! users to their entries, and the batched writes of a sync (one transaction per page).

use std::time::Duration;

use async_trait::async_trait;
use directory::{
    dn_key, Actor, AuditAction, DirectorySource, LinkedUser, NewChange, SkippedWrite, SourceBatch, SourceLink,
    SourceSync, SyncMode, SyncState, User, UserStatus,
};
use uuid::Uuid;

use super::rows::{insert_user_row, record_audit, user_from_row, user_in, write_user_row, AuditRecord, USER_COLUMNS};
use super::{check_version, q, to_json, to_value, Backend, Dialect, Exec, RowGet, WriteTx};
use crate::sources::{SourceCursor, SourceStore};
use crate::{Result, StoreError};

/// Entries read by one statement of [`SourceStore::linked_users`] and [`SourceStore::links_by_dn`].
const CHUNK: usize = 500;

const SOURCE_COLUMNS: &str = "id, config, created_at, updated_at, version";

fn source_from_row(row: &impl RowGet) -> Result<DirectorySource> {
    let mut source: DirectorySource = row.json("config")?;
    source.id = row.id("id")?;
    source.version = row.int("version")?;
    source.created_at = row.time("created_at")?;
    source.updated_at = row.time("updated_at")?;
    Ok(source)
}

const SYNC_COLUMNS: &str = "id, source_id, mode, state, trigger, counts, pending_suspensions, message, errors, \
    started_at, finished_at, heartbeat_at";

fn sync_from_row(row: &impl RowGet) -> Result<SourceSync> {
    Ok(SourceSync {
        id: row.id("id")?,
        source_id: row.id("source_id")?,
        mode: row.parsed("mode", SyncMode::parse)?,
        state: row.parsed("state", SyncState::parse)?,
        trigger: row.text("trigger")?,
        counts: row.json("counts")?,
        pending_suspensions: u64::try_from(row.int("pending_suspensions")?).unwrap_or(0),
        message: row.opt_text("message")?,
        errors: row.json("errors")?,
        started_at: row.time("started_at")?,
        finished_at: row.opt_time("finished_at")?,
        heartbeat_at: row.time("heartbeat_at")?,
    })
}

const LINK_COLUMNS: &str = "source_id, user_id, stable_id, dn, suspended_by_source";

fn link_from_row(row: &impl RowGet) -> Result<SourceLink> {
    Ok(SourceLink {
        source_id: row.id("source_id")?,
        user_id: row.id("user_id")?,
        stable_id: row.text("stable_id")?,
        dn: row.text("dn")?,
        suspended_by_source: row.flag("suspended_by_source")?,
    })
}

async fn source_in<D: Dialect>(tx: &mut impl Exec<D>, id: Uuid) -> Result<DirectorySource> {
    let row = tx.one(q(format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE id = ?")).bind(id)).await?;
    source_from_row(&row)
}

async fn upsert_link<D: Dialect>(tx: &mut impl Exec<D>, link: &SourceLink) -> Result<()> {
    tx.run(
        q("INSERT INTO source_links (source_id, user_id, stable_id, dn, dn_key, suspended_by_source) \
           VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source_id, stable_id) DO UPDATE SET dn = excluded.dn, \
           dn_key = excluded.dn_key, suspended_by_source = excluded.suspended_by_source")
        .bind(link.source_id)
        .bind(link.user_id)
        .bind(&link.stable_id)
        .bind(&link.dn)
        .bind(dn_key(&link.dn))
        .bind(link.suspended_by_source),
    )
    .await?;
    Ok(())
}

/// A user write of a batch skipped because the username is taken.
fn username_taken(user: &User, stable_id: &str) -> SkippedWrite {
    SkippedWrite {
        user_id: user.id,
        stable_id: stable_id.to_owned(),
        reason: format!("username {:?} is already taken by another user", user.username),
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

#[async_trait]
impl<S: Backend> SourceStore for S {
    async fn create_source(&self, source: &DirectorySource, password: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("INSERT INTO sources (id, name, name_key, config, password, created_at, updated_at, version) \
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(source.id)
            .bind(&source.name)
            .bind(source.name.to_lowercase())
            .bind(to_json(source)?)
            .bind(password)
            .bind(source.created_at)
            .bind(source.updated_at)
            .bind(source.version),
        )
        .await?;
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
        tx.commit().await
    }

    async fn get_source(&self, id: Uuid) -> Result<Option<DirectorySource>> {
        let row =
            self.read().await?.opt(q(format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE id = ?")).bind(id)).await?;
        row.as_ref().map(source_from_row).transpose()
    }

    async fn list_sources(&self) -> Result<Vec<DirectorySource>> {
        let rows =
            self.read().await?.all(q(format!("SELECT {SOURCE_COLUMNS} FROM sources ORDER BY name_key, id"))).await?;
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
        tx.run(
            q("UPDATE sources SET name = ?, name_key = ?, config = ?, password = COALESCE(?, password), \
               updated_at = ?, version = ? WHERE id = ?")
            .bind(&source.name)
            .bind(source.name.to_lowercase())
            .bind(to_json(source)?)
            .bind(password)
            .bind(source.updated_at)
            .bind(source.version)
            .bind(source.id),
        )
        .await?;
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
        tx.commit().await
    }

    async fn delete_source(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = source_in(&mut tx, id).await?;
        check_version(before.version, expected_version)?;
        tx.run(q("DELETE FROM sources WHERE id = ?").bind(id)).await?;
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
        tx.commit().await
    }

    async fn get_source_password(&self, id: Uuid) -> Result<Option<String>> {
        let row = self.read().await?.opt(q("SELECT password FROM sources WHERE id = ?").bind(id)).await?;
        row.map(|r| r.text("password")).transpose()
    }

    async fn source_cursor(&self, id: Uuid) -> Result<SourceCursor> {
        let row =
            self.read().await?.one(q("SELECT watermark, last_full_sync_at FROM sources WHERE id = ?").bind(id)).await?;
        Ok(SourceCursor {
            watermark: row.opt_text("watermark")?,
            last_full_sync_at: row.opt_time("last_full_sync_at")?,
        })
    }

    async fn set_source_cursor(&self, id: Uuid, cursor: &SourceCursor) -> Result<()> {
        self.read_fresh()
            .await?
            .run(
                q("UPDATE sources SET watermark = ?, last_full_sync_at = ? WHERE id = ?")
                    .bind(cursor.watermark.as_ref())
                    .bind(cursor.last_full_sync_at)
                    .bind(id),
            )
            .await?;
        Ok(())
    }

    async fn begin_source_sync(&self, sync: &SourceSync, stale_after: Duration, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        source_in(&mut tx, sync.source_id).await?;
        let stale = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::minutes(2));
        tx.run(
            q("UPDATE source_syncs SET state = 'failed', finished_at = ?, \
               message = 'abandoned: the process running it stopped' \
               WHERE source_id = ? AND state = 'running' AND heartbeat_at < ?")
            .bind(directory::now())
            .bind(sync.source_id)
            .bind(directory::now() - stale),
        )
        .await?;
        let open = tx
            .opt(
                q("SELECT id FROM source_syncs WHERE source_id = ? AND state IN ('running','awaiting_confirmation')")
                    .bind(sync.source_id),
            )
            .await?;
        if let Some(row) = open {
            let id = row.id("id")?;
            tx.rollback().await?;
            return Err(StoreError::InvalidState(format!("sync {id} of this source is still open")));
        }
        tx.run(
            q(format!("INSERT INTO source_syncs ({SYNC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
                .bind(sync.id)
                .bind(sync.source_id)
                .bind(sync.mode.as_str())
                .bind(sync.state.as_str())
                .bind(&sync.trigger)
                .bind(to_json(&sync.counts)?)
                .bind(i64::try_from(sync.pending_suspensions).unwrap_or(i64::MAX))
                .bind(sync.message.as_ref())
                .bind(to_json(&sync.errors)?)
                .bind(sync.started_at)
                .bind(sync.finished_at)
                .bind(sync.heartbeat_at),
        )
        .await?;
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
        tx.commit().await
    }

    async fn save_source_sync(&self, sync: &SourceSync, pending: Option<&[String]>) -> Result<()> {
        let pending = pending.map(|p| to_json(&p)).transpose()?;
        self.read_fresh()
            .await?
            .run(
                q("UPDATE source_syncs SET state = ?, counts = ?, pending_suspensions = ?, \
                   pending = COALESCE(?, pending), message = ?, errors = ?, finished_at = ?, heartbeat_at = ? \
                   WHERE id = ?")
                .bind(sync.state.as_str())
                .bind(to_json(&sync.counts)?)
                .bind(i64::try_from(sync.pending_suspensions).unwrap_or(i64::MAX))
                .bind(pending)
                .bind(sync.message.as_ref())
                .bind(to_json(&sync.errors)?)
                .bind(sync.finished_at)
                .bind(sync.heartbeat_at)
                .bind(sync.id),
            )
            .await?;
        Ok(())
    }

    async fn get_source_sync(&self, source: Uuid, id: Uuid) -> Result<Option<SourceSync>> {
        let row = self
            .read()
            .await?
            .opt(
                q(format!("SELECT {SYNC_COLUMNS} FROM source_syncs WHERE id = ? AND source_id = ?"))
                    .bind(id)
                    .bind(source),
            )
            .await?;
        row.as_ref().map(sync_from_row).transpose()
    }

    async fn source_sync_pending(&self, id: Uuid) -> Result<Vec<String>> {
        let row = self.read_fresh().await?.opt(q("SELECT pending FROM source_syncs WHERE id = ?").bind(id)).await?;
        Ok(row.map(|r| r.opt_json::<Vec<String>>("pending")).transpose()?.flatten().unwrap_or_default())
    }

    async fn list_source_syncs(&self, source: Uuid, limit: u32) -> Result<Vec<SourceSync>> {
        let rows = self
            .read()
            .await?
            .all(
                q(format!(
                    "SELECT {SYNC_COLUMNS} FROM source_syncs WHERE source_id = ? ORDER BY started_at DESC, id DESC LIMIT ?"
                ))
                .bind(source)
                .bind(i64::from(limit.clamp(1, 500))),
            )
            .await?;
        rows.iter().map(sync_from_row).collect()
    }

    async fn confirm_source_sync(&self, source: Uuid, id: Uuid, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = tx
            .run(
                q("UPDATE source_syncs SET state = 'running', heartbeat_at = ?, message = NULL \
                   WHERE id = ? AND source_id = ? AND state = 'awaiting_confirmation'")
                .bind(directory::now())
                .bind(id)
                .bind(source),
            )
            .await?
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
        tx.commit().await?;
        Ok(done)
    }

    async fn linked_users(&self, source: Uuid, stable_ids: &[String]) -> Result<Vec<LinkedUser>> {
        let cols: String = USER_COLUMNS.split(", ").map(|c| format!("u.{}", c.trim())).collect::<Vec<_>>().join(", ");
        let mut c = self.read().await?;
        let mut out = Vec::with_capacity(stable_ids.len());
        for chunk in stable_ids.chunks(CHUNK) {
            let mut find = q(format!(
                "SELECT l.source_id, l.user_id, l.stable_id, l.dn, l.suspended_by_source, {cols} \
                 FROM source_links l JOIN users u ON u.id = l.user_id WHERE l.source_id = ? AND "
            ))
            .bind(source);
            <S::Db as Dialect>::push_in(&mut find, "l.stable_id", chunk.to_vec().into());
            for row in &c.all(find).await? {
                out.push(LinkedUser { link: link_from_row(row)?, user: user_from_row(row)? });
            }
        }
        Ok(out)
    }

    async fn source_links(&self, source: Uuid) -> Result<Vec<SourceLink>> {
        let rows = self
            .read()
            .await?
            .all(q(format!("SELECT {LINK_COLUMNS} FROM source_links WHERE source_id = ?")).bind(source))
            .await?;
        rows.iter().map(link_from_row).collect()
    }

    async fn links_by_dn(&self, source: Uuid, dns: &[String]) -> Result<Vec<SourceLink>> {
        let mut c = self.read().await?;
        let mut out = Vec::new();
        for chunk in dns.chunks(CHUNK) {
            let mut find = q(format!("SELECT {LINK_COLUMNS} FROM source_links WHERE source_id = ? AND ")).bind(source);
            let keys: Vec<String> = chunk.iter().map(|dn| dn_key(dn)).collect();
            <S::Db as Dialect>::push_in(&mut find, "dn_key", keys.into());
            for row in &c.all(find).await? {
                out.push(link_from_row(row)?);
            }
        }
        Ok(out)
    }

    async fn role_members(&self, roles: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
        let mut c = self.read().await?;
        let mut out = Vec::new();
        for role in roles {
            for row in &c.all(q("SELECT role_id, user_id FROM role_users WHERE role_id = ?").bind(role)).await? {
                out.push((row.id("role_id")?, row.id("user_id")?));
            }
        }
        Ok(out)
    }

    async fn apply_source_batch(&self, source: Uuid, batch: &SourceBatch, actor: &Actor) -> Result<Vec<SkippedWrite>> {
        let mut skipped = Vec::new();
        let mut tx = self.begin().await?;
        source_in(&mut tx, source).await?;
        for (user, link) in &batch.creates {
            let inserted = match insert_user_row(&mut tx, user, None, true).await {
                Err(StoreError::Duplicate { field: "email" }) => {
                    skipped.push(email_taken(user, &link.stable_id));
                    continue;
                }
                other => other?,
            };
            if !inserted {
                skipped.push(username_taken(user, &link.stable_id));
                continue;
            }
            upsert_link(&mut tx, link).await?;
            tx.change(NewChange::user(user.id)).await?;
            let rec = AuditRecord::of(AuditAction::user(None, user.status), user.id, None, to_value(user));
            record_audit(&mut tx, actor, rec).await?;
        }
        for update in &batch.updates {
            let user = &update.user;
            let stable_id = &update.link.stable_id;
            let before = match user_in(&mut tx, user.id).await {
                Ok(b) if b.status != UserStatus::Deleted => b,
                _ => {
                    let reason = "the user was deleted here".into();
                    skipped.push(SkippedWrite { user_id: user.id, stable_id: stable_id.clone(), reason });
                    continue;
                }
            };
            if before.version != update.expected_version {
                let reason = "the user changed during the sync; the next sync updates them".into();
                skipped.push(SkippedWrite { user_id: user.id, stable_id: stable_id.clone(), reason });
                continue;
            }
            if User::username_key(&before.username) != User::username_key(&user.username) {
                let taken = tx
                    .opt(
                        q("SELECT 1 AS one FROM users WHERE username_key = ? AND status <> 'deleted' AND id <> ?")
                            .bind(User::username_key(&user.username))
                            .bind(user.id),
                    )
                    .await?;
                if taken.is_some() {
                    skipped.push(username_taken(user, stable_id));
                    continue;
                }
            }
            match write_user_row(&mut tx, user).await {
                Err(StoreError::Duplicate { field: "email" }) => {
                    skipped.push(email_taken(user, stable_id));
                    continue;
                }
                other => other?,
            }
            upsert_link(&mut tx, &update.link).await?;
            tx.change(NewChange::user(user.id)).await?;
            let action = AuditAction::user(Some(before.status), user.status);
            record_audit(&mut tx, actor, AuditRecord::of(action, user.id, to_value(&before), to_value(user))).await?;
        }
        for (add, list) in [(true, &batch.role_adds), (false, &batch.role_removes)] {
            for (role, user) in list {
                let statement = if add {
                    q("INSERT INTO role_users (role_id, user_id, created_at) \
                       SELECT ?1, id, ?2 FROM users WHERE id = ?3 AND status <> 'deleted' \
                       AND EXISTS (SELECT 1 FROM roles WHERE id = ?1) ON CONFLICT DO NOTHING")
                    .bind(role)
                    .bind(directory::now())
                    .bind(user)
                } else {
                    q("DELETE FROM role_users WHERE role_id = ? AND user_id = ?").bind(role).bind(user)
                };
                if tx.run(statement).await? == 0 {
                    continue;
                }
                tx.change(NewChange::membership(*role, *user)).await?;
                let value = serde_json::json!({"role_id": role, "user_id": user});
                let (before, after) = if add { (None, Some(value)) } else { (Some(value), None) };
                record_audit(&mut tx, actor, AuditRecord::of(AuditAction::role_user(add), *role, before, after))
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(skipped)
    }

    async fn source_link_of_user(&self, user: Uuid) -> Result<Option<SourceLink>> {
        let row = self
            .read()
            .await?
            .opt(q(format!("SELECT {LINK_COLUMNS} FROM source_links WHERE user_id = ?")).bind(user))
            .await?;
        row.as_ref().map(link_from_row).transpose()
    }
}
