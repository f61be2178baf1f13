//! Provisioning records: the account each user has in each app, and the operations (shown to
//! admins as events) that bring the app in line with the directory.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Who an app account belongs to (Safe Entitlements): the engine changes or removes only
/// accounts it `created` or that an admin `linked`; a `foreign` account is never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    Created,
    Linked,
    Foreign,
}

impl Ownership {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Linked => "linked",
            Self::Foreign => "foreign",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(Self::Created),
            "linked" => Some(Self::Linked),
            "foreign" => Some(Self::Foreign),
            _ => None,
        }
    }
    /// Whether the engine may change or remove the account.
    pub fn is_managed(self) -> bool {
        matches!(self, Self::Created | Self::Linked)
    }
}

/// What an operation does to an app account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Suspend,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Suspend => "suspend",
            Self::Delete => "delete",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(Self::Create),
            "update" => Some(Self::Update),
            "suspend" => Some(Self::Suspend),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
    /// The status an event shows while this action is queued or running.
    pub fn working_status(self) -> EventStatus {
        match self {
            Self::Create => EventStatus::Provisioning,
            Self::Update => EventStatus::Modifying,
            Self::Suspend | Self::Delete => EventStatus::Deleting,
        }
    }
    /// The status an event shows when this action succeeded.
    pub fn done_status(self) -> EventStatus {
        match self {
            Self::Create | Self::Update => EventStatus::Provisioned,
            Self::Suspend => EventStatus::Suspended,
            Self::Delete => EventStatus::Deleted,
        }
    }
}

/// The status of a provisioning event, in the words admins know (the seven of the seed,
/// plus final states for suspension, deletion, rejection and supersession).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Waiting for an admin's approval.
    Pending,
    /// Held for review by the deprovisioning guard.
    Held,
    /// The account is being created.
    Provisioning,
    /// The account is being updated.
    Modifying,
    /// The account exists with the right values.
    Provisioned,
    /// The operation failed; see the reason and recommended action.
    Failed,
    /// The account is being suspended or deleted.
    Deleting,
    /// The app has an account this engine did not create; fixed by "Rematch login".
    Unknown,
    /// The account was suspended (`active: false`).
    Suspended,
    /// The account was deleted.
    Deleted,
    /// An admin rejected the pending operation.
    Rejected,
    /// A newer change made the operation unnecessary.
    Cancelled,
}

impl EventStatus {
    pub const ALL: [EventStatus; 12] = [
        Self::Pending,
        Self::Held,
        Self::Provisioning,
        Self::Modifying,
        Self::Provisioned,
        Self::Failed,
        Self::Deleting,
        Self::Unknown,
        Self::Suspended,
        Self::Deleted,
        Self::Rejected,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Held => "held",
            Self::Provisioning => "provisioning",
            Self::Modifying => "modifying",
            Self::Provisioned => "provisioned",
            Self::Failed => "failed",
            Self::Deleting => "deleting",
            Self::Unknown => "unknown",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether nothing more will happen to the event by itself.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Held | Self::Provisioning | Self::Modifying | Self::Deleting)
    }

    /// In the words the console shows.
    pub fn label(self) -> &'static str {
        match self {
            Self::Held => "Held for review",
            other => other.as_str(),
        }
    }
}

/// Why an operation exists: the change, rule, role or admin behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cause {
    /// One of [`CAUSE_KINDS`] (an open list).
    pub kind: String,
    /// Who made the change, e.g. `admin alice`, `SCIM client Entra ID`.
    pub actor: Option<String>,
    /// The audit entry of the change.
    pub audit_id: Option<i64>,
    /// In words, e.g. "deleted because on_delete changed to delete by admin alice".
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id: Option<Uuid>,
}

/// The kinds of cause this version records.
pub const CAUSE_KINDS: [&str; 10] = [
    "user_change",
    "membership",
    "role_grant",
    "app_settings",
    "mapping",
    "source_sync",
    "scim_push",
    "reconcile",
    "admin",
    "replan",
];

/// Where an operation is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Waiting for an admin's approval.
    AwaitingApproval,
    /// Waiting to be claimed by a worker (at `next_run_at`).
    Queued,
    /// Claimed by a worker under a lease.
    Running,
    /// Finished (whatever the outcome); see the event status.
    Done,
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "awaiting_approval" => Some(Self::AwaitingApproval),
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "done" => Some(Self::Done),
            _ => None,
        }
    }
}

/// A provisioning event, as admins see it. Each event is one durable operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: Uuid,
    pub app_id: Uuid,
    pub app_name: String,
    pub user_id: Uuid,
    pub username: String,
    pub action: Action,
    pub status: EventStatus,
    pub reason: Option<String>,
    pub recommended_action: Option<String>,
    pub attempts: i64,
    /// For a `failed` event made unnecessary by a later success: the event that resolved it.
    /// A resolved failure no longer counts as one (failure counts, the `failed` filter, the
    /// app's health and its quarantine ratio).
    #[serde(default)]
    pub resolved_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why the operation exists.
    #[serde(default)]
    pub cause: Option<Cause>,
}

/// An operation: the event plus what the queue needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub event: Event,
    pub state: OpState,
    /// The account the app should have (SCIM resource); `None` for a delete.
    pub desired: Option<Value>,
    pub next_run_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// The account record of one user in one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub app_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    /// The account's id in the app.
    pub remote_id: Option<String>,
    pub ownership: Option<Ownership>,
    /// The account's current status: that of its latest event.
    pub status: EventStatus,
    /// The values last applied to the app.
    #[schema(value_type = Option<Object>)]
    pub last_applied: Option<Value>,
    pub last_event_id: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
    /// How the user left, when they did, and what the app's settings said then
    /// (`suspended:suspend`, `left:none`...): settings apply forward, so a later change of
    /// `on_suspend` / `on_delete` does not reach this account unless applied to existing ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departure: Option<String>,
    /// The operation an admin rejected last (`{"action", "desired"}`): not queued again
    /// until the desired account changes or an admin requeues it.
    #[serde(skip)]
    pub rejected: Option<Value>,
}

/// A value imported from an app by "Refresh" (a group), or created by provisioning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Entitlement {
    /// `group`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value's id in the app.
    pub remote_id: String,
    /// What rules name it by.
    pub display_name: String,
    pub updated_at: DateTime<Utc>,
}

/// Progress of an app's latest "Refresh" of entitlements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EntitlementRefresh {
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Values read so far.
    pub fetched: i64,
    /// How many the app said it has, when it said.
    pub total: Option<i64>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Whether an app's queue runs (`active`) or is paused by quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Active,
    /// Too many of its operations failed, or it refused the credentials three times in a
    /// row: its queue is paused (nothing is lost) until a connection test succeeds or an
    /// admin resumes it.
    Quarantined,
}

/// The result of the app's last connection test (by an admin or a quarantine probe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectionTest {
    pub ok: bool,
    pub at: DateTime<Utc>,
    /// What the app answered (the reason of a failure; `null` when it succeeded).
    pub message: Option<String>,
}

/// An app's health: `GET /api/v1/apps/{id}/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppHealth {
    pub state: HealthState,
    /// Why the app is quarantined (`null` when active).
    pub reason: Option<String>,
    /// Since when it is quarantined.
    pub since: Option<DateTime<Utc>>,
    /// When the next connection test runs (quarantined apps only).
    pub next_probe: Option<DateTime<Utc>>,
    /// Events held for review by the deprovisioning guard.
    pub held: i64,
    /// Operations waiting to run or running.
    pub queued: i64,
    /// Operations finished per minute recently: over the last five minutes, counted by whole
    /// minutes from the first in which one finished (`null`: none).
    pub rate_per_minute: Option<f64>,
    /// Seconds until the queue is empty (`null`: nothing queued, no rate known, or
    /// quarantined), at the rate `rate_basis` names, after the pause the app asked for.
    pub eta_seconds: Option<i64>,
    /// The rate `eta_seconds` is from: `budget` when the app's rate budget binds (or nothing
    /// finished yet), `observed` otherwise (`null` when `eta_seconds` is).
    pub rate_basis: Option<crate::rate::RateBasis>,
    /// The app's rate budget (`provisioning.rate_limit`; `null`: none).
    pub rate_limit: Option<crate::rate::RateLimit>,
    /// The app asked (`Retry-After`) that nothing be sent before this (`null`: no pause now).
    pub paused_until: Option<DateTime<Utc>>,
    /// How many of its operations may run at once now: `max_concurrency`, or less for a while
    /// after the app answered `429` or `5xx`.
    pub concurrency: u32,
    pub last_test: Option<ConnectionTest>,
}
