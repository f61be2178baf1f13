//! The inbound-SCIM half of the storage seam: SCIM clients (their tokens' hashes) and their
//! scopes, users and groups (roles) with the `externalId` a client gave them, and searches
//! with a storage-neutral filter ([`ResourceFilter`], in [`filter`]).
//!
//! The server builds a [`ResourceFilter`] from a parsed SCIM filter, mapping SCIM attribute
//! paths to [`UserField`]s / [`GroupField`]s; the SQL layer renders it once for both backends
//! (`crate::sql::scim_filter`), every value a bound parameter, never concatenated.

mod filter;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, Role, User};
use uuid::Uuid;

pub use filter::{CompareOp, FilterValue, GroupField, ResourceFilter, ScimQuery, UserField};

use crate::Result;

/// A client allowed to push users and groups over SCIM, with its token's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimClientRecord {
    pub id: Uuid,
    pub name: String,
    /// How the row is found: hex of HMAC-SHA256 of the token keyed by the server's secret key
    /// (rows made before that: hex of the first 16 bytes of SHA-256, until next used).
    pub lookup: String,
    /// argon2id PHC string: how the token is verified.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// What the client may see and change.
    pub scope: ScimScope,
    /// The client existed before scopes: it keeps `all` until an admin sets its scope.
    pub legacy_scope: bool,
}

/// The users a SCIM client may see and manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserScope {
    /// Those it created.
    Own,
    /// Those imported from this directory source (and those it created).
    Source(Uuid),
    All,
}

/// The roles (groups) a SCIM client may see and push members into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleScope {
    /// Those it created.
    Own,
    /// Those marked pushable (and those it created).
    Pushable,
    All,
}

/// What a SCIM client may see and change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScimScope {
    pub users: UserScope,
    pub roles: RoleScope,
    /// Reads only: every write is refused.
    pub read_only: bool,
    /// May set the password of the users it may change (SCIM `password`, stored only as an
    /// argon2id hash). On unless an admin turns it off.
    pub passwords: bool,
}

impl ScimScope {
    /// What a new client gets: what it creates, read and write.
    pub const NEW: Self = Self { users: UserScope::Own, roles: RoleScope::Own, read_only: false, passwords: true };
    /// Everything (the clients that existed before scopes).
    pub const ALL: Self = Self { users: UserScope::All, roles: RoleScope::All, read_only: false, passwords: true };

    /// The stored form: `(users_scope, users_source_id, roles_scope)`.
    pub fn columns(&self) -> (&'static str, Option<Uuid>, &'static str) {
        let (users, source) = match self.users {
            UserScope::Own => ("own", None),
            UserScope::Source(s) => ("source", Some(s)),
            UserScope::All => ("all", None),
        };
        let roles = match self.roles {
            RoleScope::Own => "own",
            RoleScope::Pushable => "pushable",
            RoleScope::All => "all",
        };
        (users, source, roles)
    }

    /// From the stored form; `None` when it is not one [`Self::columns`] makes.
    pub fn from_columns(
        users: &str,
        source: Option<Uuid>,
        roles: &str,
        read_only: bool,
        passwords: bool,
    ) -> Option<Self> {
        let users = match (users, source) {
            ("own", _) => UserScope::Own,
            ("source", Some(s)) => UserScope::Source(s),
            ("all", _) => UserScope::All,
            _ => return None,
        };
        let roles = match roles {
            "own" => RoleScope::Own,
            "pushable" => RoleScope::Pushable,
            "all" => RoleScope::All,
            _ => return None,
        };
        Some(Self { users, roles, read_only, passwords })
    }

    /// The users in scope of client `client`, as a filter.
    pub fn user_filter(&self, client: Uuid) -> ResourceFilter<UserField> {
        let own = || ResourceFilter::Compare(UserField::Owner, CompareOp::Eq, FilterValue::Text(client.to_string()));
        match self.users {
            UserScope::All => ResourceFilter::True,
            UserScope::Own => own(),
            UserScope::Source(s) => ResourceFilter::or(
                own(),
                ResourceFilter::Compare(UserField::SourceId, CompareOp::Eq, FilterValue::Text(s.to_string())),
            ),
        }
    }

    /// The roles in scope of client `client`, as a filter.
    pub fn group_filter(&self, client: Uuid) -> ResourceFilter<GroupField> {
        let own = || ResourceFilter::Compare(GroupField::Owner, CompareOp::Eq, FilterValue::Text(client.to_string()));
        match self.roles {
            RoleScope::All => ResourceFilter::True,
            RoleScope::Own => own(),
            RoleScope::Pushable => ResourceFilter::or(
                own(),
                ResourceFilter::Compare(GroupField::Pushable, CompareOp::Eq, FilterValue::Bool(true)),
            ),
        }
    }
}

/// A user with the `externalId` a SCIM client gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScimUser {
    pub user: User,
    pub external_id: Option<String>,
    /// The SCIM client that created the user (set when created; never changed).
    pub owner: Option<Uuid>,
}

/// A role (a SCIM Group) with the `externalId` a SCIM client gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScimGroup {
    pub role: Role,
    pub external_id: Option<String>,
    /// The SCIM client that created the role (set when created; never changed).
    pub owner: Option<Uuid>,
}

/// A member of a group: the user's id and username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: Uuid,
    pub username: String,
}

#[async_trait]
pub trait ScimStore: Send + Sync + 'static {
    // Clients
    async fn create_scim_client(&self, client: &ScimClientRecord, actor: &Actor) -> Result<()>;
    /// Every client that is not revoked, oldest first.
    async fn list_scim_clients(&self) -> Result<Vec<ScimClientRecord>>;
    async fn find_scim_client_by_lookup(&self, lookup: &str) -> Result<Option<ScimClientRecord>>;
    /// Revokes a client's token; `NotFound` when there is no such (unrevoked) client.
    async fn revoke_scim_client(&self, id: Uuid, actor: &Actor) -> Result<()>;
    /// Sets a client's scope (which clears `legacy_scope`), with an audit entry; `NotFound`
    /// when there is no such (unrevoked) client.
    async fn set_scim_client_scope(&self, id: Uuid, scope: &ScimScope, actor: &Actor) -> Result<ScimClientRecord>;
    /// Replaces the lookup key a client's row is found by (a token re-keyed on use).
    async fn rekey_scim_client(&self, id: Uuid, lookup: &str) -> Result<()>;

    // Users
    /// A user that is not deleted.
    async fn scim_user(&self, id: Uuid) -> Result<Option<ScimUser>>;
    /// The number of users matching, and the requested window of them.
    async fn scim_users(&self, query: &ScimQuery<UserField>) -> Result<(u64, Vec<ScimUser>)>;
    /// Creates (`expected_version` `None`) or replaces a user with its `externalId`, with its
    /// change and audit entry. A user given with the version it has (`expected_version`) is
    /// not written again: only its password is. `password_hash` (argon2id) becomes the user's
    /// sign-in password in the same transaction, audited `user.password.set` (never the
    /// password or its hash).
    async fn scim_save_user(
        &self,
        user: &ScimUser,
        expected_version: Option<i64>,
        password_hash: Option<&str>,
        actor: &Actor,
    ) -> Result<()>;

    // Groups
    async fn scim_group(&self, id: Uuid) -> Result<Option<ScimGroup>>;
    async fn scim_groups(&self, query: &ScimQuery<GroupField>) -> Result<(u64, Vec<ScimGroup>)>;
    /// The members of a role, by username.
    async fn scim_members(&self, role: Uuid) -> Result<Vec<Member>>;
    /// Creates (`expected_version` `None`) or replaces a role with its `externalId`, and,
    /// when `members` is given, makes them its members, all in one transaction (a change and
    /// an audit entry for each member who joins or leaves). `MissingReference` when a member
    /// is not a user.
    async fn scim_save_group(
        &self,
        group: &ScimGroup,
        members: Option<&[Uuid]>,
        expected_version: Option<i64>,
        actor: &Actor,
    ) -> Result<()>;
}
