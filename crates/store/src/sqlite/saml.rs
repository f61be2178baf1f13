//! The SAML half of [`SqliteStore`]: apps' SAML settings, IdP keys, end users' passwords,
//! invitations and sessions, and sign-ins to JIT-only apps.

use directory::{Event, SamlSettings};

use super::provisioning::{event_from_row, refresh_account, OP_COLUMNS};
use super::*;
use crate::saml::{InvitationRecord, KeyState, SamlKeyRecord, SamlSettingsRecord, SamlStore, UserSessionRecord};

fn settings_from_row(row: &SqliteRow) -> Result<SamlSettingsRecord> {
    Ok(SamlSettingsRecord {
        app_id: get_uuid(row, "app_id")?,
        settings: get_json(row, "settings")?,
        updated_at: get_ts(row, "updated_at")?,
        version: get(row, "version")?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<SamlKeyRecord> {
    let state: String = get(row, "state")?;
    Ok(SamlKeyRecord {
        id: get_uuid(row, "id")?,
        state: KeyState::parse(&state).ok_or_else(|| StoreError::Backend(format!("bad key state {state}")))?,
        private_key: get(row, "private_key")?,
        certificate: get(row, "certificate")?,
        created_at: get_ts(row, "created_at")?,
        activated_at: get_opt_ts(row, "activated_at")?,
        retired_at: get_opt_ts(row, "retired_at")?,
    })
}

fn invitation_from_row(row: &SqliteRow) -> Result<InvitationRecord> {
    Ok(InvitationRecord {
        id: get_uuid(row, "id")?,
        user_id: get_uuid(row, "user_id")?,
        token_hash: get(row, "token_hash")?,
        created_at: get_ts(row, "created_at")?,
        expires_at: get_ts(row, "expires_at")?,
        used_at: get_opt_ts(row, "used_at")?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<UserSessionRecord> {
    Ok(UserSessionRecord {
        id_hash: get(row, "id_hash")?,
        user_id: get_uuid(row, "user_id")?,
        csrf_token: get(row, "csrf_token")?,
        created_at: get_ts(row, "created_at")?,
        last_seen_at: get_ts(row, "last_seen_at")?,
    })
}

/// What the audit log shows of SAML settings (the SP certificate is public).
fn settings_doc(s: &SamlSettings) -> Option<Value> {
    to_value(s)
}

const KEY_COLUMNS: &str = "id, state, private_key, certificate, created_at, activated_at, retired_at";
const INVITATION_COLUMNS: &str = "id, user_id, token_hash, created_at, expires_at, used_at";
const SESSION_COLUMNS: &str = "id_hash, user_id, csrf_token, created_at, last_seen_at";

#[async_trait]
impl SamlStore for SqliteStore {
    async fn get_saml_settings(&self, app: Uuid) -> Result<Option<SamlSettingsRecord>> {
        sqlx::query("SELECT app_id, settings, updated_at, version FROM app_saml WHERE app_id = ?")
            .bind(app.to_string())
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?
            .as_ref()
            .map(settings_from_row)
            .transpose()
    }

    async fn put_saml_settings(
        &self,
        app: Uuid,
        settings: &SamlSettings,
        expected_version: Option<i64>,
        actor: &Actor,
    ) -> Result<SamlSettingsRecord> {
        let mut tx = self.begin().await?;
        Self::row_in(&mut tx, "apps", "id", app, |_| Ok(())).await?;
        let before = sqlx::query("SELECT app_id, settings, updated_at, version FROM app_saml WHERE app_id = ?")
            .bind(app.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .as_ref()
            .map(settings_from_row)
            .transpose()?;
        let current = before.as_ref().map_or(0, |b| b.version);
        check_version(current, expected_version)?;
        let record = SamlSettingsRecord {
            app_id: app,
            settings: settings.clone(),
            updated_at: directory::now(),
            version: current + 1,
        };
        sqlx::query(
            "INSERT INTO app_saml (app_id, settings, jit_only, updated_at, version) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (app_id) DO UPDATE SET settings = excluded.settings, jit_only = excluded.jit_only, \
             updated_at = excluded.updated_at, version = excluded.version",
        )
        .bind(app.to_string())
        .bind(to_json(settings)?)
        .bind(settings.jit_only)
        .bind(ts(&record.updated_at))
        .bind(record.version)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        WriteTx::change(&mut tx, NewChange { kind: ChangeKind::App, user_id: None, role_id: None, app_id: Some(app) })
            .await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.saml.update",
                target_type: "app",
                target_id: app.to_string(),
                before: before.as_ref().and_then(|b| settings_doc(&b.settings)),
                after: settings_doc(settings),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }

    async fn saml_keys(&self) -> Result<Vec<SamlKeyRecord>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM saml_keys WHERE state IN ('active', 'next') \
             ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.writer).await.map_err(backend)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn insert_saml_key(&self, key: &SamlKeyRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO saml_keys (id, state, private_key, certificate, created_at, activated_at, retired_at) \
             VALUES (?, ?, ?, ?, ?, ?, NULL)",
        )
        .bind(key.id.to_string())
        .bind(key.state.as_str())
        .bind(&key.private_key)
        .bind(&key.certificate)
        .bind(ts(&key.created_at))
        .bind(key.activated_at.as_ref().map(ts))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let after = serde_json::json!({"id": key.id, "state": key.state.as_str(), "certificate": key.certificate});
        let action = if key.state == KeyState::Active { "saml.key.create" } else { "saml.key.rotate" };
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action,
                target_type: "saml_key",
                target_id: key.id.to_string(),
                before: None,
                after: Some(after),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn activate_next_saml_key(&self, actor: &Actor) -> Result<SamlKeyRecord> {
        let mut tx = self.begin().await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM saml_keys WHERE state = 'next'");
        let Some(next) = sqlx::query(&sql).fetch_optional(&mut *tx).await.map_err(backend)? else {
            return Err(StoreError::InvalidState("no certificate rotation is in progress".into()));
        };
        let next = key_from_row(&next)?;
        let now = directory::now();
        sqlx::query("UPDATE saml_keys SET state = 'retired', retired_at = ? WHERE state = 'active'")
            .bind(ts(&now))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("UPDATE saml_keys SET state = 'active', activated_at = ? WHERE id = ?")
            .bind(ts(&now))
            .bind(next.id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "saml.key.activate",
                target_type: "saml_key",
                target_id: next.id.to_string(),
                before: None,
                after: Some(serde_json::json!({"id": next.id, "state": "active"})),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(SamlKeyRecord { state: KeyState::Active, activated_at: Some(now), ..next })
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username_key = ? AND status <> 'deleted'");
        sqlx::query(&sql)
            .bind(User::username_key(username.trim()))
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    async fn user_password(&self, user: Uuid) -> Result<Option<String>> {
        let row = sqlx::query("SELECT hash FROM user_passwords WHERE user_id = ?")
            .bind(user.to_string())
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        row.as_ref().map(|r| get(r, "hash")).transpose()
    }

    async fn set_user_password(&self, user: Uuid, hash: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        Self::user_in(&mut tx, user).await?;
        set_password(&mut tx, user, hash).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "user.password.set",
                target_type: "user",
                target_id: user.to_string(),
                before: None,
                after: None,
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn create_invitation(&self, inv: &InvitationRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        Self::user_in(&mut tx, inv.user_id).await?;
        sqlx::query(
            "INSERT INTO user_invitations (id, user_id, token_hash, created_at, expires_at, used_at) \
             VALUES (?, ?, ?, ?, ?, NULL)",
        )
        .bind(inv.id.to_string())
        .bind(inv.user_id.to_string())
        .bind(&inv.token_hash)
        .bind(ts(&inv.created_at))
        .bind(ts(&inv.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "user.invitation.create",
                target_type: "user",
                target_id: inv.user_id.to_string(),
                before: None,
                after: Some(serde_json::json!({"invitation": inv.id, "expires_at": inv.expires_at})),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn find_invitation(&self, token_hash: &str) -> Result<Option<InvitationRecord>> {
        let sql = format!("SELECT {INVITATION_COLUMNS} FROM user_invitations WHERE token_hash = ?");
        sqlx::query(&sql)
            .bind(token_hash)
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?
            .as_ref()
            .map(invitation_from_row)
            .transpose()
    }

    async fn redeem_invitation(&self, token_hash: &str, password_hash: &str, now: DateTime<Utc>) -> Result<Uuid> {
        let mut tx = self.begin().await?;
        let sql = format!("SELECT {INVITATION_COLUMNS} FROM user_invitations WHERE token_hash = ?");
        let inv = sqlx::query(&sql)
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .as_ref()
            .map(invitation_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)?;
        if inv.used_at.is_some() {
            return Err(StoreError::InvalidState("this invitation has already been used".into()));
        }
        if inv.expires_at <= now {
            return Err(StoreError::InvalidState("this invitation has expired".into()));
        }
        let user = Self::user_in(&mut tx, inv.user_id).await?;
        sqlx::query("UPDATE user_invitations SET used_at = ? WHERE id = ?")
            .bind(ts(&now))
            .bind(inv.id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        set_password(&mut tx, inv.user_id, password_hash).await?;
        record_audit(
            &mut tx,
            &Actor { kind: "user".into(), name: user.username },
            AuditRecord {
                action: "user.invitation.redeem",
                target_type: "user",
                target_id: inv.user_id.to_string(),
                before: None,
                after: Some(serde_json::json!({"invitation": inv.id})),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(inv.user_id)
    }

    async fn create_user_session(&self, s: &UserSessionRecord, username: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO user_sessions (id_hash, user_id, csrf_token, created_at, last_seen_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&s.id_hash)
        .bind(s.user_id.to_string())
        .bind(&s.csrf_token)
        .bind(ts(&s.created_at))
        .bind(ts(&s.last_seen_at))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        record_audit(
            &mut tx,
            &Actor { kind: "user".into(), name: username.to_owned() },
            AuditRecord {
                action: "user.login",
                target_type: "user",
                target_id: s.user_id.to_string(),
                before: None,
                after: None,
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_user_session(&self, id_hash: &str) -> Result<Option<UserSessionRecord>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id_hash = ?");
        sqlx::query(&sql)
            .bind(id_hash)
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    async fn touch_user_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE user_sessions SET last_seen_at = ? WHERE id_hash = ?")
            .bind(ts(&at))
            .bind(id_hash)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_user_session(&self, id_hash: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM user_sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_idle_user_sessions(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM user_sessions WHERE last_seen_at < ?")
            .bind(ts(&before))
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn remember_saml_request(
        &self,
        app: Uuid,
        request_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        sqlx::query("DELETE FROM saml_request_ids WHERE expires_at < ?")
            .bind(ts(&now))
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        let done = sqlx::query(
            "INSERT INTO saml_request_ids (app_id, request_id, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(app.to_string())
        .bind(request_id)
        .bind(ts(&expires_at))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn record_saml_sign_in(
        &self,
        app: Uuid,
        user: Uuid,
        jit_only: bool,
        attributes: &Value,
        actor: &Actor,
    ) -> Result<Option<Event>> {
        let mut tx = self.begin().await?;
        let app_row = Self::row_in(&mut tx, "apps", "id, name", app, |r| get::<String>(r, "name")).await?;
        let user_row = Self::user_in(&mut tx, user).await?;
        let mut event = None;
        if jit_only {
            let now = ts(&directory::now());
            let existing = sqlx::query("SELECT status FROM accounts WHERE app_id = ? AND user_id = ?")
                .bind(app.to_string())
                .bind(user.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            let had_account = match existing {
                Some(r) => get::<String>(&r, "status")? == "provisioned",
                None => false,
            };
            let (action, reason) = if had_account {
                ("update", "Signed in with SAML: the app updates the account from the assertion (just-in-time).")
            } else {
                ("create", "Signed in with SAML: the app creates the account from the assertion (just-in-time).")
            };
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO operations (id, app_id, app_name, user_id, username, username_key, action, desired, \
                 state, status, reason, attempts, next_run_at, replan, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'done', 'provisioned', ?, 0, ?, 0, ?, ?)",
            )
            .bind(id.to_string())
            .bind(app.to_string())
            .bind(&app_row)
            .bind(user.to_string())
            .bind(&user_row.username)
            .bind(User::username_key(&user_row.username))
            .bind(action)
            .bind(attributes.to_string())
            .bind(reason)
            .bind(&now)
            .bind(&now)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            refresh_account(&mut tx, app, user, &now).await?;
            sqlx::query("UPDATE accounts SET last_applied = ? WHERE app_id = ? AND user_id = ?")
                .bind(attributes.to_string())
                .bind(app.to_string())
                .bind(user.to_string())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?");
            let row = sqlx::query(&sql).bind(id.to_string()).fetch_one(&mut *tx).await.map_err(backend)?;
            event = Some(event_from_row(&row)?);
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "user.saml_sign_in",
                target_type: "user",
                target_id: user.to_string(),
                before: None,
                after: Some(serde_json::json!({"app_id": app, "app_name": app_row, "jit_only": jit_only})),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(event)
    }
}

async fn set_password(tx: &mut Tx, user: Uuid, hash: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO user_passwords (user_id, hash, updated_at) VALUES (?, ?, ?) \
         ON CONFLICT (user_id) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at",
    )
    .bind(user.to_string())
    .bind(hash)
    .bind(ts(&directory::now()))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}
