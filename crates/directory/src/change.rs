use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What kind of directory write a change records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A user was created, updated, suspended or deleted.
    User,
    /// A role was created, renamed or deleted (a deletion affects its members).
    Role,
    /// A user joined or left a role.
    RoleMembership,
    /// A role started or stopped granting an app.
    RoleApp,
    /// An app or its settings changed.
    App,
    /// One user's account in one app needs planning again (after a running operation
    /// finished, a rematch, or "provision now").
    Account,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Role => "role",
            Self::RoleMembership => "role_membership",
            Self::RoleApp => "role_app",
            Self::App => "app",
            Self::Account => "account",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "role" => Some(Self::Role),
            "role_membership" => Some(Self::RoleMembership),
            "role_app" => Some(Self::RoleApp),
            "app" => Some(Self::App),
            "account" => Some(Self::Account),
            _ => None,
        }
    }
}

/// One entry of the durable change feed, written in the same transaction as the change
/// itself. `seq` increases in commit order; the engine keeps a cursor into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: ChangeKind,
    pub user_id: Option<Uuid>,
    pub role_id: Option<Uuid>,
    pub app_id: Option<Uuid>,
    /// The audit entry of the write that made the change, when there is one.
    #[serde(default)]
    pub audit_id: Option<i64>,
}

/// A change about to be recorded (the store assigns `seq` and `at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewChange {
    pub kind: ChangeKind,
    pub user_id: Option<Uuid>,
    pub role_id: Option<Uuid>,
    pub app_id: Option<Uuid>,
}

impl NewChange {
    pub fn user(id: Uuid) -> Self {
        Self { kind: ChangeKind::User, user_id: Some(id), role_id: None, app_id: None }
    }
    pub fn role(id: Uuid) -> Self {
        Self { kind: ChangeKind::Role, user_id: None, role_id: Some(id), app_id: None }
    }
    pub fn membership(role: Uuid, user: Uuid) -> Self {
        Self { kind: ChangeKind::RoleMembership, user_id: Some(user), role_id: Some(role), app_id: None }
    }
    pub fn role_app(role: Uuid, app: Uuid) -> Self {
        Self { kind: ChangeKind::RoleApp, user_id: None, role_id: Some(role), app_id: Some(app) }
    }
    pub fn account(user: Uuid, app: Uuid) -> Self {
        Self { kind: ChangeKind::Account, user_id: Some(user), role_id: None, app_id: Some(app) }
    }
    pub fn app(id: Uuid) -> Self {
        Self { kind: ChangeKind::App, user_id: None, role_id: None, app_id: Some(id) }
    }
}
