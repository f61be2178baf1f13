use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::UserStatus;

/// Who made a change: an API token, an admin, the CLI, or the service itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    /// `token`, `admin`, `cli` or `system`.
    pub kind: String,
    /// The token's or admin's name.
    pub name: String,
}

impl Actor {
    pub fn token(name: impl Into<String>) -> Self {
        Self { kind: "token".into(), name: name.into() }
    }

    /// A console admin, by username.
    pub fn admin(name: impl Into<String>) -> Self {
        Self { kind: "admin".into(), name: name.into() }
    }

    pub fn cli() -> Self {
        Self { kind: "cli".into(), name: "provisioner".into() }
    }

    pub fn system() -> Self {
        Self { kind: "system".into(), name: "provisioner".into() }
    }
}

/// One admin write: who, what, when, and the state before and after (secrets never included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// e.g. `user.create`, `role.add_user`, `app.update`.
    pub action: String,
    /// e.g. `user`, `role`, `app`, `attribute`, `token`.
    pub target_type: String,
    pub target_id: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// What a write did to a user, a role or an app, as its audit entry names it. Decided here,
/// once, for every writer (the API, SCIM clients, directory syncs, imports); the store records
/// the name it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    UserCreate,
    UserUpdate,
    UserSuspend,
    UserReactivate,
    UserDelete,
    RoleCreate,
    RoleUpdate,
    RoleDelete,
    RoleAddUser,
    RoleRemoveUser,
    RoleAddApp,
    RoleRemoveApp,
    AppCreate,
    AppUpdate,
    /// An app's parameters and rules replaced.
    AppMapping,
    AppDelete,
}

impl AuditAction {
    /// A write that takes a user from the status `before` (`None`: the user is new) to
    /// `after`: a change of status is a suspension, a reactivation or a deletion; anything else
    /// is an update.
    pub fn user(before: Option<UserStatus>, after: UserStatus) -> Self {
        match before {
            None => Self::UserCreate,
            Some(b) if b == after => Self::UserUpdate,
            Some(_) => match after {
                UserStatus::Suspended => Self::UserSuspend,
                UserStatus::Active => Self::UserReactivate,
                UserStatus::Deleted => Self::UserDelete,
            },
        }
    }

    /// A role written whole: created when it did not exist, updated otherwise.
    pub fn role(existed: bool) -> Self {
        if existed {
            Self::RoleUpdate
        } else {
            Self::RoleCreate
        }
    }

    /// A user added to (`add`) or removed from a role.
    pub fn role_user(add: bool) -> Self {
        if add {
            Self::RoleAddUser
        } else {
            Self::RoleRemoveUser
        }
    }

    /// An app granted to (`add`) or taken from a role.
    pub fn role_app(add: bool) -> Self {
        if add {
            Self::RoleAddApp
        } else {
            Self::RoleRemoveApp
        }
    }

    /// The name stored in the audit log (e.g. `user.suspend`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserCreate => "user.create",
            Self::UserUpdate => "user.update",
            Self::UserSuspend => "user.suspend",
            Self::UserReactivate => "user.reactivate",
            Self::UserDelete => "user.delete",
            Self::RoleCreate => "role.create",
            Self::RoleUpdate => "role.update",
            Self::RoleDelete => "role.delete",
            Self::RoleAddUser => "role.add_user",
            Self::RoleRemoveUser => "role.remove_user",
            Self::RoleAddApp => "role.add_app",
            Self::RoleRemoveApp => "role.remove_app",
            Self::AppCreate => "app.create",
            Self::AppUpdate => "app.update",
            Self::AppMapping => "app.mapping",
            Self::AppDelete => "app.delete",
        }
    }

    /// The kind of record the entry is about (`user`, `role` or `app`).
    pub fn target_type(self) -> &'static str {
        match self {
            Self::UserCreate | Self::UserUpdate | Self::UserSuspend | Self::UserReactivate | Self::UserDelete => "user",
            Self::RoleCreate
            | Self::RoleUpdate
            | Self::RoleDelete
            | Self::RoleAddUser
            | Self::RoleRemoveUser
            | Self::RoleAddApp
            | Self::RoleRemoveApp => "role",
            Self::AppCreate | Self::AppUpdate | Self::AppMapping | Self::AppDelete => "app",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_write_is_named_by_what_it_does_to_the_status() {
        use UserStatus::*;
        assert_eq!(AuditAction::user(None, Active).as_str(), "user.create");
        assert_eq!(AuditAction::user(None, Suspended).as_str(), "user.create");
        assert_eq!(AuditAction::user(Some(Active), Active).as_str(), "user.update");
        assert_eq!(AuditAction::user(Some(Suspended), Suspended).as_str(), "user.update");
        assert_eq!(AuditAction::user(Some(Active), Suspended).as_str(), "user.suspend");
        assert_eq!(AuditAction::user(Some(Suspended), Active).as_str(), "user.reactivate");
        assert_eq!(AuditAction::user(Some(Active), Deleted).as_str(), "user.delete");
        assert_eq!(AuditAction::user(Some(Deleted), Active).as_str(), "user.reactivate");
    }

    #[test]
    fn role_links_and_targets() {
        assert_eq!(AuditAction::role_user(true).as_str(), "role.add_user");
        assert_eq!(AuditAction::role_app(false).as_str(), "role.remove_app");
        assert_eq!(AuditAction::role(true).as_str(), "role.update");
        assert_eq!(AuditAction::role(false).target_type(), "role");
        assert_eq!(AuditAction::AppMapping.target_type(), "app");
        assert_eq!(AuditAction::UserDelete.target_type(), "user");
    }
}
