use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

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
