//! The SAML room, written once for both backends: apps' SAML settings, IdP keys, end users'
//! passwords, invitations and sessions, and sign-ins to JIT-only apps (whose account records
//! go through the account hooks of [`WriteTx`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, ChangeKind, Event, NewChange, SamlSettings, User};
use serde_json::Value;
use uuid::Uuid;

use super::provisioning::{event_from_row, OP_COLUMNS};
use super::rows::{
    record_audit, row_in, set_user_password_in, user_from_row, user_in, write_password, AuditRecord, USER_COLUMNS,
};
use super::{check_version, q, to_json, to_value, Backend, Exec, Json, RowGet, WriteTx};
use crate::saml::{InvitationRecord, KeyState, SamlKeyRecord, SamlSettingsRecord, SamlStore, UserSessionRecord};
use crate::{Result, StoreError};

const SETTINGS_SELECT: &str = "SELECT app_id, settings, updated_at, version FROM app_saml WHERE app_id = ?";
const KEY_COLUMNS: &str = "id, state, private_key, certificate, created_at, activated_at, retired_at";
const INVITATION_COLUMNS: &str = "id, user_id, token_hash, created_at, expires_at, used_at";
const SESSION_COLUMNS: &str = "id_hash, user_id, csrf_token, created_at, last_seen_at";

fn settings_from_row(row: &impl RowGet) -> Result<SamlSettingsRecord> {
    Ok(SamlSettingsRecord {
        app_id: row.id("app_id")?,
        settings: row.json("settings")?,
        updated_at: row.time("updated_at")?,
        version: row.int("version")?,
    })
}

fn key_from_row(row: &impl RowGet) -> Result<SamlKeyRecord> {
    let state = row.text("state")?;
    Ok(SamlKeyRecord {
        id: row.id("id")?,
        state: KeyState::parse(&state).ok_or_else(|| StoreError::Backend(format!("bad key state {state}")))?,
        private_key: row.text("private_key")?,
        certificate: row.text("certificate")?,
        created_at: row.time("created_at")?,
        activated_at: row.opt_time("activated_at")?,
        retired_at: row.opt_time("retired_at")?,
    })
}

fn invitation_from_row(row: &impl RowGet) -> Result<InvitationRecord> {
    Ok(InvitationRecord {
        id: row.id("id")?,
        user_id: row.id("user_id")?,
        token_hash: row.text("token_hash")?,
        created_at: row.time("created_at")?,
        expires_at: row.time("expires_at")?,
        used_at: row.opt_time("used_at")?,
    })
}

fn session_from_row(row: &impl RowGet) -> Result<UserSessionRecord> {
    Ok(UserSessionRecord {
        id_hash: row.text("id_hash")?,
        user_id: row.id("user_id")?,
        csrf_token: row.text("csrf_token")?,
        created_at: row.time("created_at")?,
        last_seen_at: row.time("last_seen_at")?,
    })
}

/// What the audit log shows of SAML settings (the SP certificate is public).
fn settings_doc(s: &SamlSettings) -> Option<Value> {
    to_value(s)
}

#[async_trait]
impl<S: Backend> SamlStore for S {
    async fn get_saml_settings(&self, app: Uuid) -> Result<Option<SamlSettingsRecord>> {
        self.read_fresh().await?.opt(q(SETTINGS_SELECT).bind(app)).await?.as_ref().map(settings_from_row).transpose()
    }

    async fn put_saml_settings(
        &self,
        app: Uuid,
        settings: &SamlSettings,
        expected_version: Option<i64>,
        actor: &Actor,
    ) -> Result<SamlSettingsRecord> {
        let mut tx = self.begin().await?;
        row_in(&mut tx, "apps", "id", app, |_| Ok(())).await?;
        let before = tx.opt(q(SETTINGS_SELECT).bind(app)).await?.as_ref().map(settings_from_row).transpose()?;
        let current = before.as_ref().map_or(0, |b| b.version);
        check_version(current, expected_version)?;
        let record = SamlSettingsRecord {
            app_id: app,
            settings: settings.clone(),
            updated_at: directory::now(),
            version: current + 1,
        };
        tx.run(
            q("INSERT INTO app_saml (app_id, settings, jit_only, updated_at, version) VALUES (?, ?, ?, ?, ?) \
               ON CONFLICT (app_id) DO UPDATE SET settings = excluded.settings, jit_only = excluded.jit_only, \
               updated_at = excluded.updated_at, version = excluded.version")
            .bind(app)
            .bind(to_json(settings)?)
            .bind(settings.jit_only)
            .bind(record.updated_at)
            .bind(record.version),
        )
        .await?;
        // Before the audit entry, which it is attributed to.
        tx.change(NewChange { kind: ChangeKind::App, user_id: None, role_id: None, app_id: Some(app) }).await?;
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
        tx.commit().await?;
        Ok(record)
    }

    async fn saml_keys(&self) -> Result<Vec<SamlKeyRecord>> {
        let rows = self
            .read_fresh()
            .await?
            .all(q(format!(
                "SELECT {KEY_COLUMNS} FROM saml_keys WHERE state IN ('active', 'next') \
                 ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END"
            )))
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn insert_saml_key(&self, key: &SamlKeyRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("INSERT INTO saml_keys (id, state, private_key, certificate, created_at, activated_at, retired_at) \
               VALUES (?, ?, ?, ?, ?, ?, NULL)")
            .bind(key.id)
            .bind(key.state.as_str())
            .bind(&key.private_key)
            .bind(&key.certificate)
            .bind(key.created_at)
            .bind(key.activated_at),
        )
        .await?;
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
        tx.commit().await
    }

    async fn activate_next_saml_key(&self, actor: &Actor) -> Result<SamlKeyRecord> {
        let mut tx = self.begin().await?;
        let Some(next) = tx.opt(q(format!("SELECT {KEY_COLUMNS} FROM saml_keys WHERE state = 'next'"))).await? else {
            return Err(StoreError::InvalidState("no certificate rotation is in progress".into()));
        };
        let next = key_from_row(&next)?;
        let now = directory::now();
        tx.run(q("UPDATE saml_keys SET state = 'retired', retired_at = ? WHERE state = 'active'").bind(now)).await?;
        tx.run(q("UPDATE saml_keys SET state = 'active', activated_at = ? WHERE id = ?").bind(now).bind(next.id))
            .await?;
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
        tx.commit().await?;
        Ok(SamlKeyRecord { state: KeyState::Active, activated_at: Some(now), ..next })
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username_key = ? AND status <> 'deleted'");
        self.read_fresh()
            .await?
            .opt(q(sql).bind(User::username_key(username.trim())))
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    async fn user_password(&self, user: Uuid) -> Result<Option<String>> {
        let row =
            self.read_fresh().await?.opt(q("SELECT hash FROM user_passwords WHERE user_id = ?").bind(user)).await?;
        row.as_ref().map(|r| r.text("hash")).transpose()
    }

    async fn set_user_password(&self, user: Uuid, hash: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        user_in(&mut tx, user).await?;
        set_user_password_in(&mut tx, user, hash, actor).await?;
        tx.commit().await
    }

    async fn create_invitation(&self, inv: &InvitationRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        user_in(&mut tx, inv.user_id).await?;
        tx.run(
            q("INSERT INTO user_invitations (id, user_id, token_hash, created_at, expires_at, used_at) \
               VALUES (?, ?, ?, ?, ?, NULL)")
            .bind(inv.id)
            .bind(inv.user_id)
            .bind(&inv.token_hash)
            .bind(inv.created_at)
            .bind(inv.expires_at),
        )
        .await?;
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
        tx.commit().await
    }

    async fn find_invitation(&self, token_hash: &str) -> Result<Option<InvitationRecord>> {
        let sql = format!("SELECT {INVITATION_COLUMNS} FROM user_invitations WHERE token_hash = ?");
        self.read_fresh().await?.opt(q(sql).bind(token_hash)).await?.as_ref().map(invitation_from_row).transpose()
    }

    async fn redeem_invitation(&self, token_hash: &str, password_hash: &str, now: DateTime<Utc>) -> Result<Uuid> {
        let mut tx = self.begin().await?;
        let sql = format!("SELECT {INVITATION_COLUMNS} FROM user_invitations WHERE token_hash = ?");
        let inv = invitation_from_row(&tx.one(q(sql).bind(token_hash)).await?)?;
        if inv.used_at.is_some() {
            return Err(StoreError::InvalidState("this invitation has already been used".into()));
        }
        if inv.expires_at <= now {
            return Err(StoreError::InvalidState("this invitation has expired".into()));
        }
        let user = user_in(&mut tx, inv.user_id).await?;
        tx.run(q("UPDATE user_invitations SET used_at = ? WHERE id = ?").bind(now).bind(inv.id)).await?;
        write_password(&mut tx, inv.user_id, password_hash).await?;
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
        tx.commit().await?;
        Ok(inv.user_id)
    }

    async fn create_user_session(&self, s: &UserSessionRecord, username: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("INSERT INTO user_sessions (id_hash, user_id, csrf_token, created_at, last_seen_at) \
               VALUES (?, ?, ?, ?, ?)")
            .bind(&s.id_hash)
            .bind(s.user_id)
            .bind(&s.csrf_token)
            .bind(s.created_at)
            .bind(s.last_seen_at),
        )
        .await?;
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
        tx.commit().await
    }

    async fn get_user_session(&self, id_hash: &str) -> Result<Option<UserSessionRecord>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id_hash = ?");
        self.read_fresh().await?.opt(q(sql).bind(id_hash)).await?.as_ref().map(session_from_row).transpose()
    }

    // The writes below are one statement each, on their own (SQLite: on the writer connection).

    async fn touch_user_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<()> {
        self.read_fresh()
            .await?
            .run(q("UPDATE user_sessions SET last_seen_at = ? WHERE id_hash = ?").bind(at).bind(id_hash))
            .await?;
        Ok(())
    }

    async fn delete_user_session(&self, id_hash: &str) -> Result<bool> {
        let done = self.read_fresh().await?.run(q("DELETE FROM user_sessions WHERE id_hash = ?").bind(id_hash)).await?;
        Ok(done > 0)
    }

    async fn delete_idle_user_sessions(&self, before: DateTime<Utc>) -> Result<u64> {
        self.read_fresh().await?.run(q("DELETE FROM user_sessions WHERE last_seen_at < ?").bind(before)).await
    }

    async fn remember_saml_request(
        &self,
        app: Uuid,
        request_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut c = self.read_fresh().await?;
        c.run(q("DELETE FROM saml_request_ids WHERE expires_at < ?").bind(now)).await?;
        let done = c
            .run(
                q("INSERT INTO saml_request_ids (app_id, request_id, expires_at) VALUES (?, ?, ?) \
                   ON CONFLICT DO NOTHING")
                .bind(app)
                .bind(request_id)
                .bind(expires_at),
            )
            .await?;
        Ok(done > 0)
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
        let app_name = row_in(&mut tx, "apps", "id, name", app, |r| r.text("name")).await?;
        let user_row = user_in(&mut tx, user).await?;
        let mut event = None;
        if jit_only {
            let now = directory::now();
            tx.lock_pair(app, user).await?;
            let existing =
                tx.opt(q("SELECT status FROM accounts WHERE app_id = ? AND user_id = ?").bind(app).bind(user)).await?;
            let had_account = match existing {
                Some(r) => r.text("status")? == "provisioned",
                None => false,
            };
            let (action, reason) = if had_account {
                ("update", "Signed in with SAML: the app updates the account from the assertion (just-in-time).")
            } else {
                ("create", "Signed in with SAML: the app creates the account from the assertion (just-in-time).")
            };
            let id = Uuid::now_v7();
            tx.run(
                q("INSERT INTO operations (id, app_id, app_name, user_id, username, username_key, action, desired, \
                   state, status, reason, attempts, next_run_at, replan, created_at, updated_at) \
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'done', 'provisioned', ?, 0, ?, FALSE, ?, ?)")
                .bind(id)
                .bind(app)
                .bind(&app_name)
                .bind(user)
                .bind(&user_row.username)
                .bind(User::username_key(&user_row.username))
                .bind(action)
                .bind(Json(attributes.clone()))
                .bind(reason)
                .bind(now)
                .bind(now)
                .bind(now),
            )
            .await?;
            tx.refresh_account(app, user).await?;
            // The values applied: only they change on an existing record (its remote id and
            // ownership stay), so not `set_account`, which writes all three.
            tx.run(
                q("INSERT INTO accounts (app_id, user_id, status, last_applied, last_event_id, updated_at) \
                   VALUES (?, ?, 'provisioned', ?, ?, ?) \
                   ON CONFLICT (app_id, user_id) DO UPDATE SET last_applied = excluded.last_applied")
                .bind(app)
                .bind(user)
                .bind(Json(attributes.clone()))
                .bind(id)
                .bind(now),
            )
            .await?;
            let row = tx.one(q(format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?")).bind(id)).await?;
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
                after: Some(serde_json::json!({"app_id": app, "app_name": app_name, "jit_only": jit_only})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(event)
    }
}
