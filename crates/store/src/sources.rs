//! The directory-source half of the storage seam: sources (their bind password only as
//! ciphertext), their syncs, the link of each imported user to their directory entry, and
//! the batched writes a sync makes (one transaction per page of entries).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, DirectorySource, SourceLink, SourceSync, User};
use uuid::Uuid;

use crate::Result;

/// What a sync writes for one page of directory entries, in one transaction. Every user
/// write comes with its audit entry and change-feed row.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    /// New users (source `ldap`) and their links.
    pub creates: Vec<(User, SourceLink)>,
    /// Users to replace (`user.version` already moved on from `expected_version`), with
    /// their link (new DN, suspended-by-source flag). Suspensions and reactivations are
    /// updates of the status.
    pub updates: Vec<SourceUpdate>,
    /// Role memberships to add: (role, user).
    pub role_adds: Vec<(Uuid, Uuid)>,
    /// Role memberships to remove: (role, user).
    pub role_removes: Vec<(Uuid, Uuid)>,
}

#[derive(Debug, Clone)]
pub struct SourceUpdate {
    pub user: User,
    pub expected_version: i64,
    pub link: SourceLink,
}

/// A user write of a batch that was not made, and why (e.g. the username is taken by a user
/// of another source). The rest of the batch is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedWrite {
    pub user_id: Uuid,
    pub stable_id: String,
    pub reason: String,
}

/// A link with the linked user's current state.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkedUser {
    pub link: SourceLink,
    pub user: User,
}

/// Where incremental syncs of a source start from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCursor {
    /// The highest uSNChanged / modifyTimestamp seen by the last successful sync.
    pub watermark: Option<String>,
    pub last_full_sync_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait SourceStore: Send + Sync + 'static {
    /// `password` is ciphertext (see [`crate::secrets::Keyring`]).
    async fn create_source(&self, source: &DirectorySource, password: &str, actor: &Actor) -> Result<()>;
    async fn get_source(&self, id: Uuid) -> Result<Option<DirectorySource>>;
    async fn list_sources(&self) -> Result<Vec<DirectorySource>>;
    /// Replaces a source; `password` is `None` to keep the stored one.
    async fn update_source(
        &self,
        source: &DirectorySource,
        password: Option<&str>,
        expected_version: i64,
        actor: &Actor,
    ) -> Result<()>;
    /// Deletes a source, its syncs and its links; its users stay (and become editable here).
    async fn delete_source(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()>;
    async fn get_source_password(&self, id: Uuid) -> Result<Option<String>>;
    async fn source_cursor(&self, id: Uuid) -> Result<SourceCursor>;
    async fn set_source_cursor(&self, id: Uuid, cursor: &SourceCursor) -> Result<()>;

    /// Records a new running sync. `InvalidState` when the source has an open sync (running
    /// with a heartbeat newer than `stale_after`, or awaiting confirmation); a running sync
    /// whose heartbeat is older is marked failed (its process is gone) first.
    async fn begin_source_sync(&self, sync: &SourceSync, stale_after: Duration, actor: &Actor) -> Result<()>;
    /// Writes a sync's progress, state and heartbeat, and the entries (stable ids) whose users
    /// it wants to suspend.
    async fn save_source_sync(&self, sync: &SourceSync, pending: Option<&[String]>) -> Result<()>;
    async fn get_source_sync(&self, source: Uuid, id: Uuid) -> Result<Option<SourceSync>>;
    /// The entries (stable ids) whose users a sync stopped by the guard wants to suspend.
    async fn source_sync_pending(&self, id: Uuid) -> Result<Vec<String>>;
    /// The newest syncs of a source first.
    async fn list_source_syncs(&self, source: Uuid, limit: u32) -> Result<Vec<SourceSync>>;
    /// Moves a sync awaiting confirmation back to running (one caller wins); `false` when it
    /// was not awaiting confirmation.
    async fn confirm_source_sync(&self, source: Uuid, id: Uuid, actor: &Actor) -> Result<bool>;

    /// The links of these entries (by stable id), with their users.
    async fn linked_users(&self, source: Uuid, stable_ids: &[String]) -> Result<Vec<LinkedUser>>;
    /// Every link of a source.
    async fn source_links(&self, source: Uuid) -> Result<Vec<SourceLink>>;
    /// The users linked to these entries, by DN (compared without case).
    async fn links_by_dn(&self, source: Uuid, dns: &[String]) -> Result<Vec<SourceLink>>;
    /// Which of these roles have which members: (role, user).
    async fn role_members(&self, roles: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>>;
    /// Writes one page of a sync in one transaction; returns the writes it skipped.
    async fn apply_source_batch(&self, source: Uuid, batch: &SourceBatch, actor: &Actor) -> Result<Vec<SkippedWrite>>;
    /// The source entry a user was imported from, if any.
    async fn source_link_of_user(&self, user: Uuid) -> Result<Option<SourceLink>>;
}

/// The lower-cased DN without spaces around separators: how DNs are compared.
pub fn dn_key(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    for part in dn.split(',') {
        if !out.is_empty() {
            out.push(',');
        }
        let part = part.trim();
        match part.split_once('=') {
            Some((k, v)) => {
                out.push_str(&k.trim().to_lowercase());
                out.push('=');
                out.push_str(&v.trim().to_lowercase());
            }
            None => out.push_str(&part.to_lowercase()),
        }
    }
    out
}

/// The associated data binding a source's bind password to that source.
fn password_aad(source: Uuid) -> Vec<u8> {
    format!("source:{source}:bind_password").into_bytes()
}

/// Encrypts a source's bind password for storage.
pub fn encrypt_password(
    keyring: &crate::secrets::Keyring,
    source: Uuid,
    password: &str,
) -> Result<String, crate::secrets::SecretError> {
    keyring.encrypt(password.as_bytes(), &password_aad(source))
}

/// Decrypts a source's stored bind password.
pub fn decrypt_password(
    keyring: &crate::secrets::Keyring,
    source: Uuid,
    ciphertext: &str,
) -> Result<String, crate::secrets::SecretError> {
    let plain = keyring.decrypt(ciphertext, &password_aad(source))?;
    String::from_utf8(plain).map_err(|_| crate::secrets::SecretError::Corrupt)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns_compare_without_case_or_spaces() {
        assert_eq!(super::dn_key("CN=Ada Lovelace, OU=People ,DC=Example"), "cn=ada lovelace,ou=people,dc=example");
    }
}
