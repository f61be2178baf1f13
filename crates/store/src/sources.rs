//! The directory-source half of the storage seam: sources (their bind password only as
//! ciphertext), their syncs, the link of each imported user to their directory entry, and
//! the batched writes a sync makes (one transaction per page of entries; the batch and the
//! linked users are the sync planner's types, [`directory::source_plan`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, DirectorySource, LinkedUser, SkippedWrite, SourceBatch, SourceLink, SourceSync};
use uuid::Uuid;

use crate::Result;

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
