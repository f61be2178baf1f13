//! The admin-console half of the storage seam: admin accounts (only their password hashes)
//! and their sign-in sessions (found by the hash of the session id, never the id itself).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::Actor;
use uuid::Uuid;

use crate::Result;

/// An admin who signs in to the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRecord {
    pub id: Uuid,
    /// Unique, compared case-insensitively.
    pub username: String,
    /// argon2id PHC string of the password.
    pub hash: String,
    pub created_at: DateTime<Utc>,
}

/// A console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Hex SHA-256 of the random session id the browser holds.
    pub id_hash: String,
    pub admin_id: Uuid,
    /// The admin's username (read from the admin's row).
    pub username: String,
    /// The per-session token every form must send back.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

#[async_trait]
pub trait AdminStore: Send + Sync + 'static {
    async fn count_admins(&self) -> Result<i64>;
    /// Creates an admin; `Duplicate { field: "username" }` when the name is taken.
    async fn create_admin(&self, admin: &AdminRecord, actor: &Actor) -> Result<()>;
    /// The admin with this username (case-insensitive).
    async fn find_admin(&self, username: &str) -> Result<Option<AdminRecord>>;
    /// Stores a new session; the sign-in is recorded in the audit log under the admin.
    async fn create_session(&self, session: &SessionRecord) -> Result<()>;
    async fn get_session(&self, id_hash: &str) -> Result<Option<SessionRecord>>;
    /// Records activity on a session (moves its idle deadline).
    async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<()>;
    /// Ends a session; `logout` records it in the audit log. `false` when there was none.
    async fn delete_session(&self, id_hash: &str, logout: bool) -> Result<bool>;
    /// Ends every session idle since before `before`; returns how many.
    async fn delete_idle_sessions(&self, before: DateTime<Utc>) -> Result<u64>;
}
