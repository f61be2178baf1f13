//! The provisioning half of the storage seam: account records, the durable operation queue
//! (whose rows are the events admins see), and the planner's cursor into the change feed. What
//! a write means for them (the state a new operation starts in, what a new account record
//! starts with) is decided here, once for both backends. The planner's own types (what it
//! reads and writes through this seam) live in [`directory::plan`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{
    Account, AccountWrite, Action, Event, EventStatus, OpState, Operation, Outcome, Ownership, Page, PairState,
    PlanWrite,
};
use serde_json::Value;
use uuid::Uuid;

use crate::sql::AccountSet;
use crate::{PageRequest, Result};

// How each write leaves the queue and the account records is decided here, once, for both
// backends; the store's SQL only writes what these say.

/// The state and event status a new or replaced operation starts with: held by the
/// deprovisioning guard (it waits, like a pending one, for an admin), pending an admin's
/// approval, or queued with its action's working status.
pub(crate) fn initial_state(action: Action, needs_approval: bool, held: bool) -> (OpState, EventStatus) {
    if held {
        (OpState::AwaitingApproval, EventStatus::Held)
    } else if needs_approval {
        (OpState::AwaitingApproval, EventStatus::Pending)
    } else {
        (OpState::Queued, action.working_status())
    }
}

/// What the failed event of a [`PlanItem::Fail`](directory::PlanItem::Fail) recommends.
pub(crate) const FAIL_RECOMMENDATION: &str = "Fill in the missing values in the directory, or change the app's \
    parameters; the account is planned again at the next change.";

/// The account record `write` sets, where a record it creates starts with `status` and
/// `last_event_id` (an existing record keeps its own: they follow its operations).
fn account_set(write: &AccountWrite, status: EventStatus, last_event_id: Option<Uuid>) -> Option<AccountSet> {
    match write {
        AccountWrite::Keep => None,
        AccountWrite::Set { remote_id, ownership, last_applied } => Some(AccountSet {
            remote_id: remote_id.clone(),
            ownership: *ownership,
            last_applied: last_applied.clone(),
            status,
            last_event_id,
        }),
    }
}

/// What reconciliation writes for an account it saw in the app
/// ([`PlanItem::Observe`](directory::PlanItem::Observe)): a record it creates is provisioned,
/// with no event.
pub(crate) fn observed_account(write: &AccountWrite) -> Option<AccountSet> {
    account_set(write, EventStatus::Provisioned, None)
}

/// What the finished operation `op` writes to its account record: a record it creates takes
/// the outcome's status, and `op` as its last event.
pub(crate) fn finished_account(outcome: &Outcome, op: Uuid) -> Option<AccountSet> {
    account_set(&outcome.account, outcome.status, Some(op))
}

/// What linking an existing app account to a user writes (Rematch login), over any record
/// the pair had: the engine manages the account from now on (`linked`), it exists
/// (`provisioned`), and no values were applied to it yet, so the planner queues an update.
pub(crate) fn linked_account(remote_id: &str) -> AccountSet {
    AccountSet {
        remote_id: Some(remote_id.to_owned()),
        ownership: Some(Ownership::Linked),
        last_applied: None,
        status: EventStatus::Provisioned,
        last_event_id: None,
    }
}

/// Whether a finished operation counts toward its app's finished operations (the quarantine
/// ratio and the rate): it ran to an answer of the app. Not `cancelled`.
pub fn counts_as_finished(status: EventStatus) -> bool {
    matches!(
        status,
        EventStatus::Provisioned
            | EventStatus::Suspended
            | EventStatus::Deleted
            | EventStatus::Failed
            | EventStatus::Unknown
    )
}

/// Whether a finished operation succeeded (it resolves its pair's earlier failures).
pub fn succeeded(status: EventStatus) -> bool {
    matches!(status, EventStatus::Provisioned | EventStatus::Suspended | EventStatus::Deleted)
}

/// Listing events, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub user: Option<Uuid>,
    pub app: Option<Uuid>,
    pub status: Option<EventStatus>,
    /// Case-insensitive substring of the username.
    pub q: Option<String>,
    /// The kind of the events' cause.
    pub cause: Option<String>,
    pub page: PageRequest,
}

/// Listing account records.
#[derive(Debug, Clone, Default)]
pub struct AccountQuery {
    pub app: Option<Uuid>,
    pub user: Option<Uuid>,
    pub page: PageRequest,
}

#[async_trait]
pub trait ProvisioningStore: Send + Sync + 'static {
    /// The last change-feed `seq` the planner consumed (0 at first).
    async fn engine_cursor(&self) -> Result<i64>;
    /// Apps a user has or may need an account in: granted through a role, or with an
    /// account record.
    async fn apps_of_user(&self, user: Uuid) -> Result<Vec<Uuid>>;
    /// [`Self::apps_of_user`] for many users at once: their (user, app) pairs.
    async fn apps_of_users(&self, users: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
        let mut out = Vec::new();
        for u in users {
            out.extend(self.apps_of_user(*u).await?.into_iter().map(|a| (*u, a)));
        }
        Ok(out)
    }
    /// Users that have or may need an account in an app: granted through a role, or with an
    /// account record.
    async fn users_of_app(&self, app: Uuid) -> Result<Vec<Uuid>>;
    /// Loads the state of each (user, app) pair, in the order given.
    async fn load_pairs(&self, pairs: &[(Uuid, Uuid)]) -> Result<Vec<PairState>>;
    /// Writes a plan and moves the cursor, in one transaction.
    async fn apply_plan(&self, plan: &PlanWrite) -> Result<()>;

    /// Tells the store that a bulk write just changed much of the queue (e.g. an app's first
    /// plan): PostgreSQL re-reads its statistics now, instead of planning the workers' queries
    /// for nearly empty tables until autovacuum gets to them.
    async fn refresh_statistics(&self) -> Result<()> {
        Ok(())
    }

    /// Claims up to `limit` runnable operations of one app for `owner` with a lease:
    /// queued ones due now, or running ones whose lease expired. Only the oldest open
    /// operation of a pair is runnable, and never while another of the pair runs.
    async fn claim_operations(&self, app: Uuid, owner: &str, limit: u32, lease: Duration) -> Result<Vec<Operation>> {
        self.claim_operations_within(app, owner, limit, lease, None).await
    }
    /// [`Self::claim_operations`], with the app's running operations (of every process sharing
    /// the store) held to `max_running` too, when given, not only to its `max_concurrency`: the
    /// concurrency limit lowered after the app answered `429` or `5xx`.
    async fn claim_operations_within(
        &self,
        app: Uuid,
        owner: &str,
        limit: u32,
        lease: Duration,
        max_running: Option<u32>,
    ) -> Result<Vec<Operation>>;
    /// Apps that have runnable operations now.
    async fn apps_with_due_operations(&self) -> Result<Vec<Uuid>>;
    /// Records a finished operation, its event and the account record in one transaction,
    /// only if `owner` still holds the lease. `false` when the lease was lost.
    async fn finish_operation(&self, op: Uuid, owner: &str, outcome: &Outcome) -> Result<bool>;
    /// [`Self::finish_operation`] for many operations in one transaction (one commit), each
    /// recorded only if `owner` still holds its lease; answers, in order, which were recorded.
    async fn finish_operations(&self, owner: &str, done: &[(Uuid, Outcome)]) -> Result<Vec<bool>> {
        let mut recorded = Vec::with_capacity(done.len());
        for (op, outcome) in done {
            recorded.push(self.finish_operation(*op, owner, outcome).await?);
        }
        Ok(recorded)
    }
    /// Puts a claimed operation back in the queue until `at` (a retryable failure).
    async fn retry_operation_later(&self, op: Uuid, owner: &str, at: DateTime<Utc>, reason: &str) -> Result<bool>;
    /// Gives up every lease (start-up of the only engine process of an embedded store).
    async fn release_all_leases(&self) -> Result<u64>;

    async fn get_operation(&self, id: Uuid) -> Result<Option<Operation>>;
    async fn list_events(&self, query: &EventQuery) -> Result<Page<Event>>;
    /// Approves a pending operation (it is queued to run now).
    async fn approve_operation(&self, id: Uuid, actor: &directory::Actor) -> Result<Event>;
    /// Rejects a pending operation: nothing is done in the app.
    async fn reject_operation(&self, id: Uuid, actor: &directory::Actor) -> Result<Event>;
    /// Queues a failed operation again, to run now.
    async fn retry_operation(&self, id: Uuid, actor: &directory::Actor) -> Result<Event>;
    /// Lets an operation held by the deprovisioning guard go on: pending when the app wants
    /// approval for it, else queued to run now.
    async fn allow_held_operation(&self, id: Uuid, needs_approval: bool, actor: &directory::Actor) -> Result<Event>;
    /// "Requeue" a rejected operation: the pair's rejection is forgotten and the pair planned
    /// again (a new operation, approved or held as the app's settings say).
    async fn requeue_operation(&self, id: Uuid, actor: &directory::Actor) -> Result<Event>;
    /// Suspensions and deletions of the app queued since `since`, not counting those held,
    /// rejected or cancelled (the deprovisioning guard's window).
    async fn count_recent_deprovisions(&self, app: Uuid, since: DateTime<Utc>) -> Result<i64>;
    /// Accounts the engine manages in the app (created or linked, with an id in the app).
    async fn count_managed_accounts(&self, app: Uuid) -> Result<i64>;
    /// Applies the app's `on_suspend` / `on_delete` to accounts already left or suspended: their
    /// recorded departures are forgotten, and every user of the app is planned again.
    /// Answers how many accounts it concerns.
    async fn apply_settings_to_existing(&self, app: Uuid, actor: &directory::Actor) -> Result<u64>;

    async fn get_account(&self, app: Uuid, user: Uuid) -> Result<Option<Account>>;
    /// The account records of these users in one app (those that exist, in any order).
    async fn get_accounts(&self, app: Uuid, users: &[Uuid]) -> Result<Vec<Account>> {
        let mut out = Vec::new();
        for u in users {
            out.extend(self.get_account(app, *u).await?);
        }
        Ok(out)
    }
    async fn list_accounts(&self, query: &AccountQuery) -> Result<Page<Account>>;
    /// Links an existing app account to a user (Rematch login): the engine manages it from
    /// now on, and the pair is planned again.
    async fn link_account(&self, app: Uuid, user: Uuid, remote_id: &str, actor: &directory::Actor) -> Result<Account>;

    /// What the app's SCIM service said it supports (set by "test connection").
    async fn set_app_capabilities(&self, app: Uuid, capabilities: &Value) -> Result<()>;
    async fn get_app_capabilities(&self, app: Uuid) -> Result<Option<Value>>;

    /// Records that the periodic job `name` (e.g. `reconcile:<app id>`) runs now, and answers
    /// `true`, unless it already ran within `every` (then `false`, and nothing changes). Atomic:
    /// among several processes sharing the store, one runs the job per period.
    async fn try_run_schedule(&self, name: &str, every: Duration) -> Result<bool>;
    /// Takes or renews the lease `name` for `owner` (e.g. "planner"): `true` when `owner`
    /// holds it now; `false` while another owner holds it (renewed less than `ttl` ago).
    async fn try_hold_lease(&self, name: &str, owner: &str, ttl: std::time::Duration) -> Result<bool>;
}
