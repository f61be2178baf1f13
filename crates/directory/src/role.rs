use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::validation::{check_opt_text, check_text, ValidationErrors};

/// A role: a group of users that is granted apps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Role {
    pub id: Uuid,
    /// Unique, compared case-insensitively.
    pub name: String,
    pub description: Option<String>,
    /// Whether SCIM clients whose roles scope is `pushable` may push members into it.
    #[serde(default)]
    pub pushable: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// The writable fields of a role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether SCIM clients whose roles scope is `pushable` may push members into it
    /// (default `false`).
    #[serde(default)]
    pub pushable: bool,
}

pub const READ_ONLY_ROLE_FIELDS: &[&str] = &["id", "created_at", "updated_at", "version"];

impl RoleInput {
    pub fn normalize_and_validate(&mut self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.name = self.name.trim().to_owned();
        check_text(&mut errors, "name", &self.name, 128);
        self.description = crate::normalize_opt(self.description.take());
        check_opt_text(&mut errors, "description", &self.description, 1024);
        errors.into_result()
    }

    pub fn from_role(role: &Role) -> Self {
        Self { name: role.name.clone(), description: role.description.clone(), pushable: role.pushable }
    }
}

impl Role {
    pub fn new(input: RoleInput, now: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            name: input.name,
            description: input.description,
            pushable: input.pushable,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    pub fn updated(&self, input: RoleInput, now: DateTime<Utc>) -> Self {
        Self {
            name: input.name,
            description: input.description,
            pushable: input.pushable,
            updated_at: now,
            version: self.version + 1,
            ..self.clone()
        }
    }
}

/// A role named by id and name (for rules' `member_of` conditions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRef {
    pub id: Uuid,
    pub name: String,
}
