//! The SAML half of the storage seam: apps' SAML settings, the IdP's signing keys (private
//! keys only encrypted), end users' passwords (argon2id hashes) and invitations (token
//! hashes), end users' sessions (found by the hash of the session id), and sign-ins to
//! "SAML JIT only" apps recorded as events.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, Event, SamlSettings};
use serde_json::Value;
use uuid::Uuid;

use crate::Result;

/// An app's SAML settings as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamlSettingsRecord {
    pub app_id: Uuid,
    pub settings: SamlSettings,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// Where an IdP key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Signs every Response.
    Active,
    /// Published in metadata, not yet signing: a rotation in progress.
    Next,
    /// No longer used or published.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Next => "next",
            Self::Retired => "retired",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "next" => Some(Self::Next),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

/// An IdP signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct SamlKeyRecord {
    pub id: Uuid,
    pub state: KeyState,
    /// Ciphertext of the PKCS#8 PEM private key (see [`crate::secrets::Keyring`]).
    pub private_key: String,
    /// The certificate, PEM.
    pub certificate: String,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SamlKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamlKeyRecord").field("id", &self.id).field("state", &self.state).finish_non_exhaustive()
    }
}

/// A one-time link for a user to choose a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    /// Hex SHA-256 of the token in the link.
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

/// An end user's IdP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSessionRecord {
    /// Hex SHA-256 of the random session id the browser holds.
    pub id_hash: String,
    pub user_id: Uuid,
    /// The per-session token every form must send back.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

#[async_trait]
pub trait SamlStore: Send + Sync + 'static {
    async fn get_saml_settings(&self, app: Uuid) -> Result<Option<SamlSettingsRecord>>;
    /// Creates or replaces an app's SAML settings (version `expected_version` when given),
    /// with an audit entry and a change for the engine (JIT-only apps are not provisioned).
    async fn put_saml_settings(
        &self,
        app: Uuid,
        settings: &SamlSettings,
        expected_version: Option<i64>,
        actor: &Actor,
    ) -> Result<SamlSettingsRecord>;

    /// The active and next keys (never the retired ones), active first.
    async fn saml_keys(&self) -> Result<Vec<SamlKeyRecord>>;
    /// Stores a new key; `Duplicate` when a key of its state (active or next) exists already.
    async fn insert_saml_key(&self, key: &SamlKeyRecord, actor: &Actor) -> Result<()>;
    /// Ends a rotation: the next key becomes active and the active one retired.
    /// `InvalidState` when no rotation is in progress.
    async fn activate_next_saml_key(&self, actor: &Actor) -> Result<SamlKeyRecord>;

    /// The user (not deleted) with this username, compared case-insensitively: who signs in.
    async fn user_by_username(&self, username: &str) -> Result<Option<directory::User>>;

    /// The argon2id hash of the user's password, if one was set.
    async fn user_password(&self, user: Uuid) -> Result<Option<String>>;
    async fn set_user_password(&self, user: Uuid, hash: &str, actor: &Actor) -> Result<()>;
    async fn create_invitation(&self, invitation: &InvitationRecord, actor: &Actor) -> Result<()>;
    async fn find_invitation(&self, token_hash: &str) -> Result<Option<InvitationRecord>>;
    /// Uses an invitation: sets the user's password, once. `InvalidState` when it was used
    /// or has expired at `now`. Returns the user's id.
    async fn redeem_invitation(&self, token_hash: &str, password_hash: &str, now: DateTime<Utc>) -> Result<Uuid>;

    /// Stores a new session; the sign-in is recorded in the audit log under the user.
    async fn create_user_session(&self, session: &UserSessionRecord, username: &str) -> Result<()>;
    async fn get_user_session(&self, id_hash: &str) -> Result<Option<UserSessionRecord>>;
    async fn touch_user_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<()>;
    async fn delete_user_session(&self, id_hash: &str) -> Result<bool>;
    async fn delete_idle_user_sessions(&self, before: DateTime<Utc>) -> Result<u64>;

    /// Remembers that AuthnRequest `request_id` of `app` was answered, until `expires_at`.
    /// `false` when it was already remembered and has not expired at `now` (a replay).
    /// Expired ids are removed first.
    async fn remember_saml_request(
        &self,
        app: Uuid,
        request_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Records a SAML sign-in of `user` to `app`. For a JIT-only app it is an event (and the
    /// account record follows it): the first sign-in a `create` (the app creates the account
    /// just in time), later ones an `update`, both `provisioned`, with `attributes` (what the
    /// assertion carried) as the values applied. For other apps only the audit log has it.
    /// Returns the event, if one was written.
    async fn record_saml_sign_in(
        &self,
        app: Uuid,
        user: Uuid,
        jit_only: bool,
        attributes: &Value,
        actor: &Actor,
    ) -> Result<Option<Event>>;
}
