//! The storage seam of Provisioner.
//!
//! [`Store`] is the one trait the rest of the product talks to. Every write records, in the
//! same transaction, an audit entry and a row in the change feed, so that the engine never
//! misses a change. [`sqlite::SqliteStore`] is the embedded, zero-configuration
//! implementation; [`postgres::PostgresStore`] the one several processes share. Both run the
//! queries of the one SQL layer ([`sql`]); each keeps its own migrations under
//! `migrations/<dialect>`.

pub mod admins;
pub mod bulk;
pub mod cursor;
pub mod entitlements;
pub mod health;
pub mod postgres;
pub mod provisioning;
pub mod rates;
pub mod saml;
pub mod scim;
pub mod secrets;
pub mod sources;
pub mod sql;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, App, AttributeDef, AuditEntry, Change, Page, Role, User, UserStatus};
use uuid::Uuid;

pub use admins::{AdminRecord, AdminStore, SessionRecord};
pub use bulk::BulkStore;
pub use entitlements::{AppRead, EntitlementStore};
pub use health::{AppHealthRecord, HealthStore, OutcomeWindow, QueueCounts};
pub use postgres::{PostgresOptions, PostgresStore};
pub use provisioning::{AccountQuery, EventQuery, ProvisioningStore};
pub use rates::RateStore;
pub use saml::{InvitationRecord, KeyState, SamlKeyRecord, SamlSettingsRecord, SamlStore, UserSessionRecord};
pub use scim::ScimStore;
pub use sources::{SourceCursor, SourceStore};
pub use sqlite::SqliteStore;

/// What can go wrong in a store. Callers map these to responses in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique field already holds this value.
    #[error("{field} is already taken")]
    Duplicate { field: &'static str },
    /// The record changed since the caller read it.
    #[error("the record was changed concurrently (current version {current})")]
    VersionConflict { current: i64 },
    /// A referenced record does not exist.
    #[error("{field} refers to a record that does not exist")]
    MissingReference { field: &'static str },
    #[error("invalid cursor")]
    InvalidCursor,
    /// The record is not in a state that allows the request (e.g. approving an event that is
    /// not pending).
    #[error("{0}")]
    InvalidState(String),
    /// The database cannot be reached.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database cannot be reached; the driver's error is the source.
    #[error("the database is unavailable")]
    Unreachable(#[source] Box<sqlx::Error>),
    /// The database refused a statement; the driver's error is the source.
    #[error("storage error")]
    Database(#[source] Box<sqlx::Error>),
    /// Stored data the store cannot read back (a bad id, time, JSON or enum name).
    #[error("storage error: {0}")]
    Backend(String),
}

impl StoreError {
    /// The error and every source under it, outermost first, joined by `": "`: what a log line
    /// or an internal-error response shows. A source whose message its error already ends with
    /// (the driver's errors often show their source) is said once.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            let text = e.to_string();
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = e.source();
        }
        out
    }

    /// Whether the database could not be reached (a caller may retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Unreachable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Listing users: text search, filters and a page.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Case-insensitive substring of username, email, first, last or display name.
    pub q: Option<String>,
    /// `None` lists every user but the deleted ones.
    pub status: Option<UserStatus>,
    pub role: Option<Uuid>,
    pub page: PageRequest,
}

/// Listing roles or apps: text search on the name, and a page.
#[derive(Debug, Clone, Default)]
pub struct NameQuery {
    pub q: Option<String>,
    pub page: PageRequest,
}

/// Listing the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub actor: Option<String>,
    /// Only these entries (by id), when given.
    pub ids: Option<Vec<i64>>,
    pub page: PageRequest,
}

/// An e-mail address more than one user (not deleted) has.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailConflict {
    /// The address's key (trimmed, NFKC, lower-cased): what the users share.
    pub email_key: String,
    pub users: Vec<User>,
}

impl EmailConflict {
    /// Groups `(key, user)` rows, ordered by key, into one conflict per key (both backends read
    /// the same query).
    pub(crate) fn group(rows: impl IntoIterator<Item = (String, User)>) -> Vec<Self> {
        let mut out: Vec<Self> = Vec::new();
        for (key, user) in rows {
            match out.last_mut() {
                Some(c) if c.email_key == key => c.users.push(user),
                _ => out.push(Self { email_key: key, users: vec![user] }),
            }
        }
        out
    }
}

/// A page request: at most `limit` items after the opaque `cursor`.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { limit: 50, cursor: None }
    }
}

/// The most items one page may hold.
pub const MAX_PAGE: u32 = 500;

/// A stored API token (only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub name: String,
    /// How the row is found: hex of HMAC-SHA256 of the token keyed by the server's secret key
    /// (rows made before that: hex of the first 16 bytes of SHA-256, until next used).
    pub lookup: String,
    /// argon2id PHC string: how the token is verified.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a request last came with it (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a [`Store::wakeups`] receiver is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wakeup {
    /// New rows in the change feed: the planner has work.
    Changes,
    /// Operations may have become runnable (queued, approved, retried, or a running one
    /// finished): the workers have work.
    Operations,
}

/// The storage seam. Implementations must make every write atomic with its audit entry
/// and change-feed row, and must never store a plaintext secret. The provisioning half
/// (accounts, operations, events) is [`ProvisioningStore`]; each app's shared rate state is
/// [`RateStore`].
#[async_trait]
pub trait Store:
    ProvisioningStore
    + EntitlementStore
    + AdminStore
    + SamlStore
    + ScimStore
    + SourceStore
    + HealthStore
    + RateStore
    + Send
    + Sync
    + 'static
{
    /// Answers when the database is reachable.
    async fn health(&self) -> Result<()>;

    /// Wake-ups from writes made by any process sharing the database (PostgreSQL:
    /// `LISTEN`/`NOTIFY`), so that planners and workers need not poll tightly. `None` when the
    /// store has none: an embedded store has a single process, which wakes itself in memory.
    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<Wakeup>> {
        None
    }

    // API tokens
    async fn count_tokens(&self) -> Result<i64>;
    async fn create_token(&self, token: &TokenRecord, actor: &Actor) -> Result<()>;
    async fn find_token_by_lookup(&self, lookup: &str) -> Result<Option<TokenRecord>>;
    /// The tokens that are not revoked, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Revokes a token, with an audit entry; `NotFound` when there is no such (unrevoked) token.
    async fn revoke_token(&self, id: Uuid, actor: &Actor) -> Result<()>;
    /// Records that a token was used at `at`, and the lookup key its row is found by from now
    /// on (a token re-keyed on use).
    async fn token_used(&self, id: Uuid, lookup: &str, at: DateTime<Utc>) -> Result<()>;

    // Custom attribute definitions
    async fn list_attribute_defs(&self) -> Result<Vec<AttributeDef>>;
    async fn create_attribute_def(&self, def: &AttributeDef, actor: &Actor) -> Result<()>;
    /// How many users (not deleted) hold a value of the custom attribute `name`.
    async fn count_attribute_holders(&self, name: &str) -> Result<u64>;
    /// Removes the custom attribute `name`: its definition, and its values from every user
    /// (deleted users keep none either), audited `attribute.delete`. `NotFound` when it is not
    /// declared; `InvalidState` naming the count, and nothing changed, while users that are
    /// not deleted hold a value.
    async fn delete_attribute_def(&self, name: &str, actor: &Actor) -> Result<()>;

    // Users
    async fn create_user(&self, user: &User, actor: &Actor) -> Result<()>;
    /// Any user, deleted ones included.
    async fn get_user(&self, id: Uuid) -> Result<Option<User>>;
    async fn list_users(&self, query: &UserQuery) -> Result<Page<User>>;
    /// Replaces a user whose stored version is `expected_version`.
    async fn update_user(&self, user: &User, expected_version: i64, actor: &Actor) -> Result<()>;
    /// The users not deleted whose e-mail address has this key ([`User::email_key`] of `email`).
    async fn users_by_email(&self, email: &str) -> Result<Vec<User>>;
    /// E-mail addresses that more than one user (not deleted) has: stored before addresses were
    /// unique, for an admin to resolve. By address key, each with its users by username.
    async fn email_conflicts(&self) -> Result<Vec<EmailConflict>>;
    /// Marks a user deleted (the row stays for the engine and the audit log) and removes them
    /// from their roles. Returns the deleted user.
    async fn delete_user(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<User>;

    // Roles
    async fn create_role(&self, role: &Role, actor: &Actor) -> Result<()>;
    async fn get_role(&self, id: Uuid) -> Result<Option<Role>>;
    async fn list_roles(&self, query: &NameQuery) -> Result<Page<Role>>;
    async fn update_role(&self, role: &Role, expected_version: i64, actor: &Actor) -> Result<()>;
    async fn delete_role(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()>;
    /// Adds a user to a role; `false` when they already belonged to it.
    async fn add_role_user(&self, role: Uuid, user: Uuid, actor: &Actor) -> Result<bool>;
    /// Removes a user from a role; `false` when they did not belong to it.
    async fn remove_role_user(&self, role: Uuid, user: Uuid, actor: &Actor) -> Result<bool>;
    async fn roles_of_user(&self, user: Uuid) -> Result<Vec<Role>>;
    /// Grants an app to a role's members; `false` when it already did.
    async fn add_role_app(&self, role: Uuid, app: Uuid, actor: &Actor) -> Result<bool>;
    async fn remove_role_app(&self, role: Uuid, app: Uuid, actor: &Actor) -> Result<bool>;
    async fn apps_of_role(&self, role: Uuid) -> Result<Vec<App>>;
    async fn roles_of_app(&self, app: Uuid) -> Result<Vec<Role>>;

    // Apps. `credential` is always ciphertext (see [`secrets::Keyring`]).
    async fn create_app(&self, app: &App, credential: &str, actor: &Actor) -> Result<()>;
    async fn get_app(&self, id: Uuid) -> Result<Option<App>>;
    async fn list_apps(&self, query: &NameQuery) -> Result<Page<App>>;
    /// Replaces an app; `credential` is `None` to keep the stored one.
    async fn update_app(&self, app: &App, credential: Option<&str>, expected_version: i64, actor: &Actor)
        -> Result<()>;
    /// Replaces an app's parameters and rules (and its version), with a change for the engine.
    async fn update_app_mapping(&self, app: &App, expected_version: i64, actor: &Actor) -> Result<()>;
    async fn delete_app(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()>;
    async fn get_app_credential(&self, id: Uuid) -> Result<Option<String>>;

    /// Records an admin action that writes nothing else (e.g. a connection test, "Provision
    /// now", a reconciliation started by hand) in the audit log.
    async fn append_audit(
        &self,
        actor: &Actor,
        action: &str,
        target_type: &str,
        target_id: &str,
        details: Option<serde_json::Value>,
    ) -> Result<()>;

    // Audit log and change feed
    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>>;
    /// Changes with `seq > after`, oldest first, at most `limit`.
    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>>;
    /// The next changes for the planner to plan after `after`: as [`Store::changes_after`], but
    /// never past the start of an open hold ([`Store::hold_changes`]), and, when they reach into
    /// the changes of a released hold, through its last change even beyond `limit` (so that the
    /// changes of one hold are planned in one pass).
    async fn changes_to_plan(&self, after: i64, limit: u32) -> Result<Vec<Change>>;
    /// Holds the planner back at the current end of the change feed, until
    /// [`Store::release_changes`] or until `ttl` passes (a writer that crashed): what is written
    /// meanwhile is planned together, in one pass, once the hold is released. Answers the hold's id.
    async fn hold_changes(&self, ttl: std::time::Duration) -> Result<Uuid>;
    /// Releases a hold: the changes recorded since it began are planned in one pass.
    async fn release_changes(&self, hold: Uuid) -> Result<()>;
    /// The changes after `after` that a hold (open, or released but not yet planned) keeps
    /// for its own pass: the planner does not plan the pairs they touch before that pass, even
    /// when an earlier change touches them too (a pair's state is read as it is now, and would
    /// show a held change's effect early).
    async fn changes_past_holds(&self, after: i64) -> Result<Vec<Change>>;
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;
    use crate::sql::{q, Dialect};

    #[tokio::test]
    async fn a_driver_error_stays_the_source_of_the_store_error() {
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let err = <sqlx::Sqlite as Dialect>::execute(&mut c, q("SELEC 1")).await.unwrap_err();
        assert!(matches!(err, StoreError::Database(_)), "{err:?}");
        let source = std::error::Error::source(&err).expect("the driver's error is the source");
        let driver = source.downcast_ref::<Box<sqlx::Error>>().map(|b| &**b);
        assert!(matches!(driver, Some(sqlx::Error::Database(_))), "{source:?}");
        assert_eq!(err.chain(), "storage error: error returned from database: (code: 1) near \"SELEC\": syntax error");
    }

    #[test]
    fn an_unreachable_server_keeps_the_io_error_under_it() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = sql::db_error(sqlx::Error::Io(io));
        assert!(err.is_unavailable(), "{err:?}");
        assert_eq!(err.chain(), "the database is unavailable: error communicating with database: connection refused");
    }
}
