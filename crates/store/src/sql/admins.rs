//! The admin-console room, written once for both backends: admin accounts and console
//! sessions.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::Actor;

use super::rows::{record_audit, AuditRecord};
use super::{q, Backend, Dialect, Exec, RowGet, WriteTx};
use crate::admins::{AdminRecord, AdminStore, SessionRecord};
use crate::{Result, StoreError};

const SESSION_SELECT: &str = "SELECT s.id_hash, s.admin_id, a.username, s.csrf_token, s.created_at, s.last_seen_at \
    FROM admin_sessions s JOIN admins a ON a.id = s.admin_id";

fn admin_from_row(row: &impl RowGet) -> Result<AdminRecord> {
    Ok(AdminRecord {
        id: row.id("id")?,
        username: row.text("username")?,
        hash: row.text("hash")?,
        created_at: row.time("created_at")?,
    })
}

fn session_from_row(row: &impl RowGet) -> Result<SessionRecord> {
    Ok(SessionRecord {
        id_hash: row.text("id_hash")?,
        admin_id: row.id("admin_id")?,
        username: row.text("username")?,
        csrf_token: row.text("csrf_token")?,
        created_at: row.time("created_at")?,
        last_seen_at: row.time("last_seen_at")?,
    })
}

/// `FOR UPDATE OF alias` where the backend locks rows (PostgreSQL), nothing on SQLite.
fn for_update_of<D: Dialect>(alias: &str) -> String {
    if D::FOR_UPDATE.is_empty() {
        String::new()
    } else {
        format!("{} OF {alias}", D::FOR_UPDATE)
    }
}

#[async_trait]
impl<S: Backend> AdminStore for S {
    async fn count_admins(&self) -> Result<i64> {
        self.read().await?.one(q("SELECT COUNT(*) AS n FROM admins")).await?.int("n")
    }

    async fn create_admin(&self, admin: &AdminRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("INSERT INTO admins (id, username, username_key, hash, created_at) VALUES (?, ?, ?, ?, ?)")
                .bind(admin.id)
                .bind(&admin.username)
                .bind(admin.username.to_lowercase())
                .bind(&admin.hash)
                .bind(admin.created_at),
        )
        .await?;
        let after = serde_json::json!({"id": admin.id, "username": admin.username, "created_at": admin.created_at});
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "admin.create",
                target_type: "admin",
                target_id: admin.id.to_string(),
                before: None,
                after: Some(after),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn find_admin(&self, username: &str) -> Result<Option<AdminRecord>> {
        self.read()
            .await?
            .opt(
                q("SELECT id, username, hash, created_at FROM admins WHERE username_key = ?")
                    .bind(username.trim().to_lowercase()),
            )
            .await?
            .as_ref()
            .map(admin_from_row)
            .transpose()
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<()> {
        let mut tx = self.begin().await?;
        let admin = tx
            .opt(q(format!("SELECT username FROM admins WHERE id = ?{}", S::Db::FOR_SHARE)).bind(session.admin_id))
            .await?
            .ok_or(StoreError::MissingReference { field: "admin_id" })?;
        let username = admin.text("username")?;
        tx.run(
            q("INSERT INTO admin_sessions (id_hash, admin_id, csrf_token, created_at, last_seen_at) \
               VALUES (?, ?, ?, ?, ?)")
            .bind(&session.id_hash)
            .bind(session.admin_id)
            .bind(&session.csrf_token)
            .bind(session.created_at)
            .bind(session.last_seen_at),
        )
        .await?;
        record_audit(
            &mut tx,
            &Actor::admin(username),
            AuditRecord {
                action: "admin.login",
                target_type: "admin",
                target_id: session.admin_id.to_string(),
                before: None,
                after: None,
            },
        )
        .await?;
        tx.commit().await
    }

    async fn get_session(&self, id_hash: &str) -> Result<Option<SessionRecord>> {
        // Fresh: a session read right after it was written must be seen.
        self.read_fresh()
            .await?
            .opt(q(format!("{SESSION_SELECT} WHERE s.id_hash = ?")).bind(id_hash))
            .await?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<()> {
        // One statement on its own (SQLite: on the writer connection).
        self.read_fresh()
            .await?
            .run(q("UPDATE admin_sessions SET last_seen_at = ? WHERE id_hash = ?").bind(at).bind(id_hash))
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str, logout: bool) -> Result<bool> {
        let mut tx = self.begin().await?;
        let sql = format!("{SESSION_SELECT} WHERE s.id_hash = ?{}", for_update_of::<S::Db>("s"));
        let Some(row) = tx.opt(q(sql).bind(id_hash)).await? else {
            return Ok(false);
        };
        let session = session_from_row(&row)?;
        tx.run(q("DELETE FROM admin_sessions WHERE id_hash = ?").bind(id_hash)).await?;
        if logout {
            record_audit(
                &mut tx,
                &Actor::admin(session.username),
                AuditRecord {
                    action: "admin.logout",
                    target_type: "admin",
                    target_id: session.admin_id.to_string(),
                    before: None,
                    after: None,
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_idle_sessions(&self, before: DateTime<Utc>) -> Result<u64> {
        // One statement on its own (SQLite: on the writer connection).
        self.read_fresh().await?.run(q("DELETE FROM admin_sessions WHERE last_seen_at < ?").bind(before)).await
    }
}
