//! SAML business operations on the [`Service`]: settings, IdP keys and their rotation, end
//! users' passwords and invitations, and what a sign-in needs (who may sign in to which app,
//! and what the assertion says).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, App, SamlSettings, User, UserSource, UserStatus, ValidationErrors};
use serde_json::Value;
use store::{InvitationRecord, KeyState, SamlKeyRecord, SamlSettingsRecord, Store, StoreError};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::service::Service;
use crate::tokens;

/// Invitation tokens start with this: not the API tokens' `prv_`, so that one is never taken
/// for the other (by a person, a secret scanner or a log filter).
pub const INVITATION_PREFIX: &str = "prvinv_";

/// A fresh invitation token (256 random bits).
fn invitation_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{INVITATION_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// How long an invitation link works.
pub const INVITATION_TTL: chrono::Duration = chrono::Duration::hours(72);

/// An IdP key, decrypted, with its state.
#[derive(Debug, Clone)]
pub struct LiveKey {
    pub id: Uuid,
    pub state: KeyState,
    pub key: saml::IdpKey,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
}

fn key_aad(id: Uuid) -> Vec<u8> {
    format!("saml-key:{id}:private").into_bytes()
}

/// What a password check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordOutcome {
    Valid,
    Invalid,
    /// The password cannot be checked for this user; the message says why (shown to them).
    Unavailable(String),
}

/// Checks an end user's password. One seam for every kind of user: local users have an
/// argon2id hash here; users from an LDAP source are checked by a bind against that source.
#[async_trait]
pub trait PasswordCheck: Send + Sync {
    async fn check(&self, user: &User, password: &str) -> Result<PasswordOutcome>;
}

/// The directory's password check: a person imported from an LDAP source signs in with
/// their password there (a bind as their entry's DN); everyone else with the argon2id hash
/// kept here (set by an admin or through an invitation).
pub struct DirectoryPasswords {
    pub store: Arc<dyn Store>,
    /// The directory sources, to bind against; `None` checks local passwords only.
    pub sources: Option<Arc<engine::SourceSyncer>>,
}

impl DirectoryPasswords {
    async fn check_in_source(&self, user: &User, password: &str) -> Result<Option<PasswordOutcome>> {
        let Some(sources) = &self.sources else { return Ok(None) };
        let Some(link) = self.store.source_link_of_user(user.id).await? else { return Ok(None) };
        match sources.verify_password(link.source_id, &link.dn, password).await {
            Ok(true) => Ok(Some(PasswordOutcome::Valid)),
            Ok(false) => Ok(Some(PasswordOutcome::Invalid)),
            Err(e) => {
                tracing::warn!(user = %user.id, source = %link.source_id, error = %e, "LDAP password check failed");
                Ok(Some(PasswordOutcome::Unavailable(
                    "Your password is checked by the company's directory, which cannot be reached right now. \
                     Try again in a few minutes, or tell your administrator."
                        .into(),
                )))
            }
        }
    }
}

#[async_trait]
impl PasswordCheck for DirectoryPasswords {
    async fn check(&self, user: &User, password: &str) -> Result<PasswordOutcome> {
        if user.source == UserSource::Ldap {
            if let Some(outcome) = self.check_in_source(user, password).await? {
                return Ok(outcome);
            }
        }
        let Some(hash) = self.store.user_password(user.id).await? else {
            if user.source == UserSource::Ldap {
                return Ok(PasswordOutcome::Unavailable(
                    "Your account comes from the company's directory, which is no longer connected here. \
                     Ask your administrator for a password or an invitation."
                        .into(),
                ));
            }
            // As slow as a real check, so that it does not tell who has a password.
            let owned = password.to_owned();
            tokio::task::spawn_blocking(move || tokens::verify(&owned, &decoy_hash()))
                .await
                .map_err(Error::internal)?;
            return Ok(PasswordOutcome::Invalid);
        };
        let owned = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || tokens::verify(&owned, &hash)).await.map_err(Error::internal)?;
        Ok(if ok { PasswordOutcome::Valid } else { PasswordOutcome::Invalid })
    }
}

pub fn decoy_hash() -> String {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| tokens::hash("decoy password").unwrap_or_default()).clone()
}

/// Why the password policy refuses a password chosen here, if it does: at least 12
/// characters, at most 1024 bytes (an admin, an invitation). The reason never repeats the
/// password.
pub(crate) fn password_problem(password: &str) -> Option<&'static str> {
    length_problem(password, 12, "must be at least 12 characters")
}

/// Why a password an identity provider syncs (SCIM `password`) is refused, if it is: at least
/// 8 characters (NIST SP 800-63B's floor), at most 1024 bytes. The identity provider enforces
/// the organisation's own policy where the person chose the password, and Okta documents 8
/// characters in its SCIM requests.
pub(crate) fn synced_password_problem(password: &str) -> Option<&'static str> {
    length_problem(password, 8, "must be at least 8 characters")
}

/// `too_short` when `password` has fewer than `min` characters; more than 1024 bytes is too long.
fn length_problem(password: &str, min: usize, too_short: &'static str) -> Option<&'static str> {
    if password.chars().count() < min {
        Some(too_short)
    } else if password.len() > 1024 {
        Some("must be at most 1024 bytes")
    } else {
        None
    }
}

fn check_password(password: &str) -> Result<()> {
    match password_problem(password) {
        Some(why) => Err(ValidationErrors::single("password", why).into()),
        None => Ok(()),
    }
}

pub(crate) async fn hash_password(password: &str) -> Result<String> {
    let owned = password.to_owned();
    tokio::task::spawn_blocking(move || tokens::hash(&owned)).await.map_err(Error::internal)?.map_err(Error::internal)
}

/// Hex SHA-256: how invitation tokens and end-user session ids are stored.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

impl Service {
    // ---- settings ----

    /// An app's SAML settings; 404 when the app has none.
    pub async fn saml_settings(&self, app: Uuid) -> Result<SamlSettingsRecord> {
        self.get_app(app).await?;
        self.store().get_saml_settings(app).await?.ok_or(Error::NotFound("SAML settings"))
    }

    /// Creates or replaces an app's SAML settings. An app that is not "SAML JIT only" gets
    /// its accounts by provisioning, which must therefore be enabled first.
    pub async fn put_saml_settings(
        &self,
        actor: &Actor,
        app_id: Uuid,
        input: SamlSettings,
        if_match: Option<i64>,
    ) -> Result<SamlSettingsRecord> {
        let app = self.get_app(app_id).await?;
        let mut errors = match input.validate() {
            Ok(settings) => {
                let mut errors = ValidationErrors::default();
                self.check_saml_settings(&app, &settings, &mut errors).await?;
                if errors.0.is_empty() {
                    let settings = SamlSettings {
                        sp_certificate: match settings.sp_certificate {
                            Some(pem) => Some(saml::keys::normalize_cert_pem(&pem).map_err(Error::internal)?),
                            None => None,
                        },
                        ..settings
                    };
                    let record = self.store().put_saml_settings(app_id, &settings, if_match, actor).await?;
                    self.engine().changed();
                    return Ok(record);
                }
                errors
            }
            Err(errors) => errors,
        };
        errors.0.dedup();
        Err(errors.into())
    }

    async fn check_saml_settings(&self, app: &App, s: &SamlSettings, errors: &mut ValidationErrors) -> Result<()> {
        if !directory::saml::NAME_ID_ATTRIBUTES.contains(&s.name_id_attribute.as_str()) {
            let custom = self.store().list_attribute_defs().await?;
            if !custom.iter().any(|d| d.name == s.name_id_attribute) {
                errors.push(
                    "name_id_attribute",
                    format!("must be one of {} or a custom attribute", directory::saml::NAME_ID_ATTRIBUTES.join(", ")),
                );
            }
        }
        if let Some(pem) = &s.sp_certificate {
            if let Err(e) = saml::keys::public_key_of_cert(pem) {
                errors.push("sp_certificate", e.to_string());
            }
        }
        if !s.jit_only && !app.provisioning.enabled {
            errors.push(
                "jit_only",
                "this app's provisioning is off: enable provisioning first and then SAML (so that accounts exist \
                 before people sign in), or set jit_only to true if the app creates accounts at sign-in",
            );
        }
        Ok(())
    }

    // ---- IdP keys ----

    fn open_key(&self, record: &SamlKeyRecord) -> Result<LiveKey> {
        let pem = self.keyring().decrypt(&record.private_key, &key_aad(record.id)).map_err(Error::internal)?;
        let pem = String::from_utf8(pem).map_err(Error::internal)?;
        let key = saml::IdpKey::from_pem(&pem, &record.certificate).map_err(Error::internal)?;
        Ok(LiveKey {
            id: record.id,
            state: record.state,
            key,
            created_at: record.created_at,
            activated_at: record.activated_at,
        })
    }

    async fn new_key(&self, state: KeyState, actor: &Actor) -> Result<SamlKeyRecord> {
        let key = tokio::task::spawn_blocking(|| saml::IdpKey::generate("Provisioner SAML IdP"))
            .await
            .map_err(Error::internal)?
            .map_err(Error::internal)?;
        let id = Uuid::now_v7();
        let private_pem = key.private_pem().map_err(Error::internal)?;
        let record = SamlKeyRecord {
            id,
            state,
            private_key: self.keyring().encrypt(private_pem.as_bytes(), &key_aad(id)).map_err(Error::internal)?,
            certificate: key.cert_pem(),
            created_at: directory::now(),
            activated_at: (state == KeyState::Active).then(directory::now),
            retired_at: None,
        };
        self.store().insert_saml_key(&record, actor).await?;
        Ok(record)
    }

    /// The active key (generated on first use) and, during a rotation, the next one.
    pub async fn idp_keys(&self) -> Result<Vec<LiveKey>> {
        let mut records = self.store().saml_keys().await?;
        if !records.iter().any(|r| r.state == KeyState::Active) {
            match self.new_key(KeyState::Active, &Actor::system()).await {
                // Another request or process made it first.
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
            records = self.store().saml_keys().await?;
        }
        records.iter().map(|r| self.open_key(r)).collect()
    }

    /// Starts a certificate rotation: a new key is published in metadata as the next one,
    /// while the active one keeps signing.
    pub async fn start_key_rotation(&self, actor: &Actor) -> Result<LiveKey> {
        self.idp_keys().await?;
        let record = self.new_key(KeyState::Next, actor).await.map_err(|e| match e {
            Error::Conflict { .. } => Error::InvalidState(
                "a certificate rotation is already in progress: activate the next certificate first".into(),
            ),
            other => other,
        })?;
        self.open_key(&record)
    }

    /// Ends a rotation: the next key signs from now on; the old one is retired.
    pub async fn activate_next_key(&self, actor: &Actor) -> Result<LiveKey> {
        let record = self.store().activate_next_saml_key(actor).await?;
        self.open_key(&record)
    }

    // ---- end users' passwords ----

    pub async fn set_user_password(&self, actor: &Actor, user: Uuid, password: &str) -> Result<()> {
        let u = self.get_user(user).await?;
        if u.status == UserStatus::Deleted {
            return Err(Error::InvalidState("the user is deleted".into()));
        }
        check_password(password)?;
        let hash = hash_password(password).await?;
        Ok(self.store().set_user_password(user, &hash, actor).await?)
    }

    /// A one-time invitation: the token for the link (shown once, stored hashed) and when it expires.
    pub async fn create_invitation(&self, actor: &Actor, user: Uuid) -> Result<(String, DateTime<Utc>)> {
        let u = self.get_user(user).await?;
        if u.status == UserStatus::Deleted {
            return Err(Error::InvalidState("the user is deleted".into()));
        }
        let token = invitation_token();
        let now = directory::now();
        let record = InvitationRecord {
            id: Uuid::now_v7(),
            user_id: user,
            token_hash: sha256_hex(&token),
            created_at: now,
            expires_at: now + INVITATION_TTL,
            used_at: None,
        };
        self.store().create_invitation(&record, actor).await?;
        Ok((token, record.expires_at))
    }

    /// The user an unused, unexpired invitation is for.
    pub async fn invitation_user(&self, token: &str) -> Result<User> {
        let inv = self.store().find_invitation(&sha256_hex(token)).await?.ok_or(Error::NotFound("invitation"))?;
        if inv.used_at.is_some() {
            return Err(Error::InvalidState("This invitation has already been used.".into()));
        }
        if inv.expires_at <= directory::now() {
            return Err(Error::InvalidState(
                "This invitation has expired. Ask your administrator for a new one.".into(),
            ));
        }
        self.get_user(inv.user_id).await
    }

    pub async fn redeem_invitation(&self, token: &str, password: &str) -> Result<User> {
        self.invitation_user(token).await?;
        check_password(password)?;
        let hash = hash_password(password).await?;
        let user =
            self.store().redeem_invitation(&sha256_hex(token), &hash, directory::now()).await.map_err(|e| match e {
                StoreError::NotFound => Error::NotFound("invitation"),
                other => other.into(),
            })?;
        self.get_user(user).await
    }

    // ---- sign-in ----

    /// The apps with SAML sign-in that `user`'s roles grant, by name.
    pub async fn saml_apps_of_user(&self, user: Uuid) -> Result<Vec<(App, SamlSettingsRecord)>> {
        let mut apps: Vec<App> = Vec::new();
        for role in self.store().roles_of_user(user).await? {
            for app in self.store().apps_of_role(role.id).await? {
                if !apps.iter().any(|a| a.id == app.id) {
                    apps.push(app);
                }
            }
        }
        apps.sort_by_key(|a| a.name.to_lowercase());
        let mut out = Vec::new();
        for app in apps {
            if let Some(s) = self.store().get_saml_settings(app.id).await? {
                out.push((app, s));
            }
        }
        Ok(out)
    }

    /// Whether one of the user's roles grants the app, and the user's roles.
    pub async fn grant_of(&self, user: Uuid, app: Uuid) -> Result<(bool, Vec<directory::RoleRef>)> {
        let roles = self.store().roles_of_user(user).await?;
        let granting = self.store().roles_of_app(app).await?;
        let granted = roles.iter().any(|r| granting.iter().any(|g| g.id == r.id));
        Ok((granted, roles.into_iter().map(|r| directory::RoleRef { id: r.id, name: r.name }).collect()))
    }

    /// Records a sign-in (an event for a JIT-only app; the audit log for every app).
    /// How many other people (not deleted) share `user`'s NameID `name_id` (their e-mail
    /// address) - `None` when nobody does. A shared one refuses the sign-in, recorded in the
    /// audit log (`user.saml_sign_in_refused`, with the app and the reason).
    pub async fn nameid_shared(&self, app: &directory::App, user: &User, name_id: &str) -> Result<Option<usize>> {
        let others = self.store().users_by_email(name_id).await?.into_iter().filter(|u| u.id != user.id).count();
        if others == 0 {
            return Ok(None);
        }
        let actor = Actor { kind: "user".into(), name: user.username.clone() };
        let details = serde_json::json!({
            "app_id": app.id, "app_name": app.name,
            "reason": format!("the NameID (e-mail address) is shared with {others} other user(s)"),
        });
        self.store()
            .append_audit(&actor, "user.saml_sign_in_refused", "user", &user.id.to_string(), Some(details))
            .await?;
        tracing::warn!(user = %user.id, app = %app.id, others, "SAML sign-in refused: the NameID is shared");
        Ok(Some(others))
    }

    pub async fn record_sign_in(&self, app: Uuid, user: &User, jit_only: bool, attributes: &Value) -> Result<()> {
        let actor = Actor { kind: "user".into(), name: user.username.clone() };
        self.store().record_saml_sign_in(app, user.id, jit_only, attributes, &actor).await?;
        Ok(())
    }
}
