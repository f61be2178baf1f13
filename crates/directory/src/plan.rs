//! The planner's vocabulary: what it reads about one (user, app) pair ([`PairState`]), what it
//! decides ([`PlanItem`], written in one transaction as a [`PlanWrite`]), and what a finished
//! operation leaves behind ([`Outcome`], [`AccountWrite`]). Pure data, no I/O: the planning core
//! turns pair states into plan items, the workers produce outcomes, and the store loads and
//! writes them all.

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::{Account, Action, App, Cause, EventStatus, Operation, Ownership, RoleRef, User};

/// Everything the planner needs to know about one (user, app) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairState {
    pub user_id: Uuid,
    pub app_id: Uuid,
    /// `None` when the user does not exist at all. Shared by the pairs of the same user.
    pub user: Option<Arc<User>>,
    /// `None` when the app was deleted. Shared by the pairs of the same app. For an app that
    /// is "SAML JIT only" (it creates its accounts at sign-in), `provisioning.enabled` reads
    /// `false`: nothing is pushed to it.
    pub app: Option<Arc<App>>,
    /// Whether the user belongs to a role that grants the app.
    pub granted: bool,
    /// The user's roles (for rules' `member_of` conditions).
    pub roles: Vec<RoleRef>,
    pub account: Option<Account>,
    /// The operation currently claimed by a worker for this pair, if any.
    pub running: Option<Operation>,
    /// The operation waiting (queued or awaiting approval) for this pair, if any.
    pub waiting: Option<Operation>,
}

/// One decision of the planner.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanItem {
    /// Queue a new operation (and its event); `held`: held by the deprovisioning guard.
    Enqueue {
        user_id: Uuid,
        app_id: Uuid,
        action: Action,
        desired: Option<Value>,
        needs_approval: bool,
        held: bool,
        cause: Option<Cause>,
    },
    /// Replace what a waiting operation will do (collapse). If the operation has been
    /// claimed meanwhile, a new operation is queued instead. A `None` cause keeps the
    /// operation's.
    Replace { op: Uuid, action: Action, desired: Option<Value>, needs_approval: bool, held: bool, cause: Option<Cause> },
    /// A waiting operation is no longer needed: its event becomes `cancelled`. If it has been
    /// claimed meanwhile, it is marked for re-planning instead.
    Cancel { op: Uuid, reason: String },
    /// A running operation: plan the pair again when it finishes.
    Replan { op: Uuid },
    /// The account cannot be computed (e.g. a required value is empty): record a failed
    /// event with this reason; nothing is sent to the app.
    Fail { user_id: Uuid, app_id: Uuid, action: Action, reason: String },
    /// What reconciliation saw in the app: correct the account record (no event). An
    /// `AccountWrite::Keep` changes nothing.
    Observe { user_id: Uuid, app_id: Uuid, account: AccountWrite },
    /// Records how the user left the app and what its settings said then (`None`: they are
    /// back), on an existing account record.
    Depart { user_id: Uuid, app_id: Uuid, departure: Option<String> },
    /// The account no longer wants what an admin rejected: forget the rejection.
    Forget { user_id: Uuid, app_id: Uuid },
}

impl PlanItem {
    /// The action a new or replaced operation takes, if the item is one.
    pub fn action(&self) -> Option<Action> {
        match self {
            Self::Enqueue { action, .. } | Self::Replace { action, .. } => Some(*action),
            _ => None,
        }
    }

    /// Whether the item queues a suspension or a deletion.
    pub fn is_deprovision(&self) -> bool {
        matches!(self.action(), Some(Action::Suspend | Action::Delete))
    }

    /// The app of the item, when it names it.
    pub fn app_id(&self) -> Option<Uuid> {
        match self {
            Self::Enqueue { app_id, .. }
            | Self::Fail { app_id, .. }
            | Self::Observe { app_id, .. }
            | Self::Depart { app_id, .. }
            | Self::Forget { app_id, .. } => Some(*app_id),
            _ => None,
        }
    }
}

/// What the planner writes in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanWrite {
    /// The change-feed position the planner has consumed (moves the cursor), if any.
    pub cursor: Option<i64>,
    pub items: Vec<PlanItem>,
}

/// How a finished operation leaves the account record.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountWrite {
    /// Leave the record's remote id, ownership and values as they are.
    Keep,
    /// Set them.
    Set { remote_id: Option<String>, ownership: Option<Ownership>, last_applied: Option<Value> },
}

/// The result of running an operation, recorded with fencing on the lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// A final status (`provisioned`, `suspended`, `deleted`, `failed`, `unknown`).
    pub status: EventStatus,
    pub reason: Option<String>,
    pub recommended_action: Option<String>,
    pub account: AccountWrite,
    /// Plan the pair again afterwards (e.g. the account vanished from the app).
    pub replan: bool,
}
