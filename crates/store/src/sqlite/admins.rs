//! The admin-console half of [`SqliteStore`]: admin accounts and console sessions.

use crate::admins::{AdminRecord, AdminStore, SessionRecord};

use super::*;

const SESSION_SELECT: &str = "SELECT s.id_hash, s.admin_id, a.username, s.csrf_token, s.created_at, s.last_seen_at \
    FROM admin_sessions s JOIN admins a ON a.id = s.admin_id";

fn admin_from_row(row: &SqliteRow) -> Result<AdminRecord> {
    Ok(AdminRecord {
        id: get_uuid(row, "id")?,
        username: get(row, "username")?,
        hash: get(row, "hash")?,
        created_at: get_ts(row, "created_at")?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<SessionRecord> {
    Ok(SessionRecord {
        id_hash: get(row, "id_hash")?,
        admin_id: get_uuid(row, "admin_id")?,
        username: get(row, "username")?,
        csrf_token: get(row, "csrf_token")?,
        created_at: get_ts(row, "created_at")?,
        last_seen_at: get_ts(row, "last_seen_at")?,
    })
}

#[async_trait]
impl AdminStore for SqliteStore {
    async fn count_admins(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM admins").fetch_one(&self.reader).await.map_err(backend)?;
        get(&row, "n")
    }

    async fn create_admin(&self, admin: &AdminRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO admins (id, username, username_key, hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(admin.id.to_string())
            .bind(&admin.username)
            .bind(admin.username.to_lowercase())
            .bind(&admin.hash)
            .bind(ts(&admin.created_at))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
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
        tx.commit().await.map_err(backend)
    }

    async fn find_admin(&self, username: &str) -> Result<Option<AdminRecord>> {
        sqlx::query("SELECT id, username, hash, created_at FROM admins WHERE username_key = ?")
            .bind(username.trim().to_lowercase())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?
            .as_ref()
            .map(admin_from_row)
            .transpose()
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<()> {
        let mut tx = self.begin().await?;
        let admin = sqlx::query("SELECT username FROM admins WHERE id = ?")
            .bind(session.admin_id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::MissingReference { field: "admin_id" })?;
        let username: String = get(&admin, "username")?;
        sqlx::query(
            "INSERT INTO admin_sessions (id_hash, admin_id, csrf_token, created_at, last_seen_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&session.id_hash)
        .bind(session.admin_id.to_string())
        .bind(&session.csrf_token)
        .bind(ts(&session.created_at))
        .bind(ts(&session.last_seen_at))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
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
        tx.commit().await.map_err(backend)
    }

    async fn get_session(&self, id_hash: &str) -> Result<Option<SessionRecord>> {
        let sql = format!("{SESSION_SELECT} WHERE s.id_hash = ?");
        // The writer: a session read right after it was written must be seen.
        sqlx::query(&sql)
            .bind(id_hash)
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE admin_sessions SET last_seen_at = ? WHERE id_hash = ?")
            .bind(ts(&at))
            .bind(id_hash)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str, logout: bool) -> Result<bool> {
        let mut tx = self.begin().await?;
        let sql = format!("{SESSION_SELECT} WHERE s.id_hash = ?");
        let Some(row) = sqlx::query(&sql).bind(id_hash).fetch_optional(&mut *tx).await.map_err(backend)? else {
            return Ok(false);
        };
        let session = session_from_row(&row)?;
        sqlx::query("DELETE FROM admin_sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
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
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn delete_idle_sessions(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM admin_sessions WHERE last_seen_at < ?")
            .bind(ts(&before))
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }
}
