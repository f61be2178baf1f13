//! Writes of the inbound SCIM server. A SCIM client changes users, groups (roles) and
//! memberships through here, under the same rules as an admin: the same validation, the same
//! guard on fields a directory source fills, the same audit entry and wake-up of the engine.
//! What only SCIM has (a client's scope, `externalId`, who created a resource) is checked by
//! the SCIM handlers before they call in.
//!
//! Fields a directory source owns: a SCIM client may not change them, whatever its scope (an
//! admin may not either). Sending the value the user already has is accepted, so a client that
//! PUTs the whole user back unchanged is not refused. The refusal is `400 mutability` naming
//! the attribute and the source, and an audit entry `scim.refused` (written by the handler).
//!
//! Passwords: a SCIM client may send `password` with a user it may change (and its scope's
//! `passwords` allows). It is checked against the password policy of invitations and `/login`,
//! kept only as an argon2id hash, written in the same transaction as the rest of the user, and
//! becomes the person's sign-in password for `/login` and SAML apps. It is never returned,
//! logged or audited: the audit log says `user.password.set`. A user who signs in against a
//! directory source (a bind to LDAP) has no password here: setting one is refused like a
//! source-owned field.

use directory::{Actor, User, UserInput, UserSource, ValidationErrors};
use store::scim::{ScimClientRecord, ScimGroup, ScimScope, ScimUser};
use store::StoreError;
use uuid::Uuid;

use super::Service;
use crate::error::{Error, Result};

/// A password as a SCIM client sent it, on its way to being hashed: it is shown nowhere (its
/// `Debug` says `[redacted]`).
pub(crate) struct NewPassword(String);

impl NewPassword {
    pub(crate) fn new(password: String) -> Self {
        Self(password)
    }

    /// Why the password policy refuses it, if it does (never the password itself).
    pub(crate) fn problem(&self) -> Option<&'static str> {
        super::saml::password_problem(&self.0)
    }
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

/// What "no such client" is called in answers.
const NO_CLIENT: Error = Error::NotFound("SCIM client");

fn client_not_found(e: StoreError) -> Error {
    match e {
        StoreError::NotFound => NO_CLIENT,
        other => other.into(),
    }
}

impl Service {
    /// Creates a user a SCIM client sent (`current` `None`), or writes the new state of one
    /// (`current` is the stored user it replaces, whose version the write expects; a `user`
    /// with that same version is unchanged, and only its `password` is written). A password is
    /// written with the user, in one transaction: both or neither.
    pub(crate) async fn save_scim_user(
        &self,
        actor: &Actor,
        user: &ScimUser,
        current: Option<&ScimUser>,
        password: Option<&NewPassword>,
    ) -> Result<()> {
        if let Some(current) = current {
            self.check_sourced_change(&current.user, &UserInput::from_user(&user.user)).await?;
        }
        let hash = match password {
            Some(p) => Some(self.scim_password_hash(current.map(|c| &c.user), p).await?),
            None => None,
        };
        let changed = current.is_none_or(|c| c.user.version != user.user.version);
        self.store.scim_save_user(user, current.map(|c| c.user.version), hash.as_deref(), actor).await?;
        if changed {
            self.engine.changed();
        }
        Ok(())
    }

    /// The argon2id hash of a password a SCIM client sent for `user` (`None`: a new user).
    /// Refused for a user who signs in against a directory source (as a field the source owns)
    /// and by the password policy.
    async fn scim_password_hash(&self, user: Option<&User>, password: &NewPassword) -> Result<String> {
        if let Some(user) = user.filter(|u| u.source == UserSource::Ldap) {
            if let Some((source, _)) = self.source_link_of_user(user.id).await? {
                return Err(Error::SourceOwned { field: "password".into(), directory_source: source.name });
            }
        }
        if let Some(why) = password.problem() {
            return Err(ValidationErrors::single("password", why).into());
        }
        super::saml::hash_password(&password.0).await
    }

    /// Creates a group a SCIM client sent (`expected_version` `None`) or writes its new state,
    /// with its members when given.
    pub(crate) async fn save_scim_group(
        &self,
        actor: &Actor,
        group: &ScimGroup,
        members: Option<&[Uuid]>,
        expected_version: Option<i64>,
    ) -> Result<()> {
        self.store.scim_save_group(group, members, expected_version, actor).await?;
        self.engine.changed();
        Ok(())
    }

    // ---- SCIM clients (an admin's business) ----

    pub async fn scim_clients(&self) -> Result<Vec<ScimClientRecord>> {
        Ok(self.store.list_scim_clients().await?)
    }

    pub async fn scim_client(&self, id: Uuid) -> Result<ScimClientRecord> {
        self.scim_clients().await?.into_iter().find(|c| c.id == id).ok_or(NO_CLIENT)
    }

    /// Makes a SCIM client with a new token (only its hash is stored); the token is returned
    /// once, here.
    pub async fn create_scim_client(
        &self,
        actor: &Actor,
        name: &str,
        scope: ScimScope,
    ) -> Result<(ScimClientRecord, String)> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(ValidationErrors::single("name", "must be 1-128 printable characters").into());
        }
        let token = format!(
            "{}{}",
            crate::scim_server::TOKEN_PREFIX,
            crate::tokens::generate().trim_start_matches(crate::tokens::TOKEN_PREFIX)
        );
        let owned = token.clone();
        let hash = tokio::task::spawn_blocking(move || crate::tokens::hash(&owned))
            .await
            .map_err(Error::internal)?
            .map_err(Error::internal)?;
        let record = ScimClientRecord {
            id: Uuid::now_v7(),
            name,
            lookup: self.token_lookup(&token),
            hash,
            created_at: directory::now(),
            revoked_at: None,
            scope,
            legacy_scope: false,
        };
        self.store.create_scim_client(&record, actor).await?;
        Ok((record, token))
    }

    pub async fn set_scim_client_scope(&self, actor: &Actor, id: Uuid, scope: &ScimScope) -> Result<ScimClientRecord> {
        self.store.set_scim_client_scope(id, scope, actor).await.map_err(client_not_found)
    }

    /// Revokes a SCIM client's token: its next request is refused, in every process.
    pub async fn revoke_scim_client(&self, actor: &Actor, id: Uuid) -> Result<()> {
        self.store.revoke_scim_client(id, actor).await.map_err(client_not_found)
    }
}
