//! The dispatcher: claims due operations with a lease, within each app's concurrency limit
//! and rate state (its pause, its budget's tokens, its lowered concurrency: see [`crate::rate`]),
//! reads what the operations claimed together share (the app's connector, their account
//! records, one lookup of the accounts to create), runs each in its own task through
//! [`worker::execute`], and hands finished ones to the outcome recorder (a retry is written
//! back to the queue at once).
//!
//! It talks to apps only through the [`Connector`] the connector cache gives it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use connectors::Connector;
use directory::{AccountWrite, App, EventStatus, Outcome};
use uuid::Uuid;

use super::{lock, panic_message, Engine, EngineError};
use crate::mapping::groups_of;
use crate::worker::{self, Execution};

/// What the operations claimed together share.
struct Shared {
    /// `None` when the app is gone or disabled; `Err` with the reason when it cannot be built.
    connector: Option<Result<Arc<dyn Connector>, String>>,
    /// The pairs' account records by user; `None` when they could not be read.
    accounts: Option<HashMap<Uuid, directory::Account>>,
    /// What one lookup of the batch's new accounts found in the app (`None`: not looked up).
    looked_up: Option<LookedUp>,
}

/// The userNames looked up together, and the accounts the app has with them.
struct LookedUp {
    names: HashSet<String>,
    found: Vec<connectors::RemoteAccount>,
}

impl Shared {
    /// For a create whose userName was part of the batch lookup: the accounts found with it.
    fn looked_up_for(&self, op: &directory::Operation) -> Option<Vec<connectors::RemoteAccount>> {
        let l = self.looked_up.as_ref()?;
        let name = batch_lookup_name(op)?;
        l.names
            .contains(&name.to_lowercase())
            .then(|| l.found.iter().filter(|a| worker::same_name(a, name)).cloned().collect())
    }
}

/// The userName a first attempt at a create looks up, if `op` is one.
fn batch_lookup_name(op: &directory::Operation) -> Option<&str> {
    if op.event.action != directory::Action::Create || op.event.attempts != 1 {
        return None;
    }
    let desired = op.desired.as_ref()?;
    Some(desired.get("userName").and_then(serde_json::Value::as_str).unwrap_or(&op.event.username))
}

/// Looks up, in as few requests as the app allows, the userNames of the batch's new accounts
/// (first attempts at a create). `None` when there are fewer than two, or the app cannot
/// answer that way: each create then looks its own up.
async fn look_up_new_accounts(connector: &dyn Connector, ops: &[directory::Operation]) -> Option<LookedUp> {
    let names: Vec<&str> = ops.iter().filter_map(batch_lookup_name).collect();
    if names.len() < 2 {
        return None;
    }
    match connector.find_accounts_batch("userName", &names).await {
        Ok(Some(found)) => Some(LookedUp { names: names.iter().map(|n| n.to_lowercase()).collect(), found }),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e.reason, "batch lookup failed; each create looks its account up");
            None
        }
    }
}

impl Engine {
    pub(super) async fn dispatcher_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.dispatch_once().await {
                tracing::warn!(error = %e.chain(), "dispatcher: will retry");
            }
            tokio::select! {
                _ = self.worker_wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Claims and starts what can run now; returns how many operations it started.
    pub async fn dispatch_once(self: &Arc<Self>) -> Result<usize, EngineError> {
        let mut started = 0;
        for app_id in self.store.apps_with_due_operations().await? {
            let app = self.store.get_app(app_id).await?;
            // An enabled app's operations go within its rate state: not while it is paused, no
            // more than its budget has tokens for, within its (maybe lowered) concurrency. The
            // dispatcher never waits for one app: it claims what can go and moves on.
            let room = match app.as_ref().filter(|a| a.provisioning.enabled) {
                Some(a) => {
                    let state = self.store.get_rate_state(app_id).await?;
                    Some(crate::rate::room(a, state.as_ref(), directory::now()))
                }
                None => None,
            };
            let limit = match (&room, &app) {
                (Some(r), _) => r.concurrency,
                (None, a) => a.as_ref().map_or(4, |a| a.provisioning.max_concurrency.max(1)),
            };
            let busy = lock(&self.inflight).get(&app_id).copied().unwrap_or(0);
            if busy >= limit {
                continue;
            }
            let wanted = (limit - busy).min(room.map_or(u32::MAX, |r| r.budget));
            if wanted == 0 {
                continue;
            }
            let max_running = room.map(|r| r.concurrency);
            let ops = self
                .store
                .claim_operations_within(app_id, &self.config.owner, wanted, self.config.lease, max_running)
                .await?;
            if ops.is_empty() {
                continue;
            }
            *lock(&self.inflight).entry(app_id).or_insert(0) += ops.len() as u32;
            started += ops.len();
            let me = self.clone();
            tokio::spawn(async move { me.run_batch(app_id, app, ops).await });
        }
        Ok(started)
    }

    /// Runs the operations claimed together for one app: what they share is read once (the
    /// connector, their account records, and one lookup in the app of the accounts to create),
    /// then each runs on its own.
    async fn run_batch(self: Arc<Self>, app_id: Uuid, app: Option<App>, ops: Vec<directory::Operation>) {
        let mut shared = Shared { connector: None, accounts: Some(HashMap::new()), looked_up: None };
        if let Some(app) = app.as_ref().filter(|a| a.provisioning.enabled) {
            let users: Vec<Uuid> = ops.iter().map(|o| o.event.user_id).collect();
            shared.accounts = match self.store.get_accounts(app.id, &users).await {
                Ok(list) => Some(list.into_iter().map(|a| (a.user_id, a)).collect()),
                Err(e) => {
                    tracing::warn!(app = %app.id, error = %e.chain(), "cannot read the account records; the operations will be retried");
                    None
                }
            };
            let connector = self.connector(app).await.map_err(|e| e.to_string());
            if let (Ok(c), true) = (&connector, app.provisioning.lookup_before_create) {
                shared.looked_up = look_up_new_accounts(c.as_ref(), &ops).await;
            }
            shared.connector = Some(connector);
        }
        let shared = Arc::new(shared);
        for op in ops {
            let (me, app, shared) = (self.clone(), app.clone(), shared.clone());
            let id = op.event.id;
            // The operation runs in its own task, so that a panic in it ends only that task.
            let running = tokio::spawn({
                let me = me.clone();
                async move { me.run_operation(app, op, &shared).await }
            });
            tokio::spawn(async move {
                let recorder_wakes = match running.await {
                    Ok(wakes) => wakes,
                    Err(e) if e.is_panic() => {
                        let what = panic_message(e.into_panic());
                        tracing::error!(op = %id, panic = %what, "an operation panicked; it is recorded as failed");
                        me.record(
                            id,
                            app_id,
                            Outcome {
                                status: EventStatus::Failed,
                                reason: Some(format!("Internal error while running the operation: {what}")),
                                recommended_action: Some(
                                    "Retry the operation; if it fails again, report the error with the log.".into(),
                                ),
                                account: AccountWrite::Keep,
                                replan: false,
                            },
                        )
                        .await;
                        true
                    }
                    // Cancelled at shutdown: its lease ends and another run takes it over.
                    Err(_) => false,
                };
                if let Some(n) = lock(&me.inflight).get_mut(&app_id) {
                    *n = n.saturating_sub(1);
                }
                // The slot is free. A finished operation's outcome is written with others, and
                // the workers are woken once for the group (so the next claim takes several).
                if !recorder_wakes {
                    me.worker_wake.notify_one();
                }
            });
        }
    }

    /// Runs one operation and records what happened; `true` when its outcome went to the
    /// recorder (which wakes the workers once written).
    async fn run_operation(&self, app: Option<App>, op: directory::Operation, shared: &Shared) -> bool {
        let (id, app_id) = (op.event.id, op.event.app_id);
        let execution = match &app {
            None => Execution::Finished(Outcome {
                status: EventStatus::Cancelled,
                reason: Some("The app was deleted.".into()),
                recommended_action: None,
                account: AccountWrite::Keep,
                replan: false,
            }),
            Some(app) if !app.provisioning.enabled => Execution::Finished(Outcome {
                status: EventStatus::Cancelled,
                reason: Some(format!("Provisioning is disabled for {}.", app.name)),
                recommended_action: Some("Enable provisioning for the app, then retry.".into()),
                account: AccountWrite::Keep,
                replan: false,
            }),
            Some(app) => match (&shared.connector, &shared.accounts) {
                (_, None) => return false,
                (Some(Ok(c)), Some(accounts)) => {
                    let account = accounts.get(&op.event.user_id);
                    let looked_up = shared.looked_up_for(&op);
                    match self.group_ids(app, &op, account, c.as_ref()).await {
                        Ok(ids) => worker::execute(&op, app, account, c.as_ref(), &ids, looked_up).await,
                        Err(stop) => stop,
                    }
                }
                (Some(Err(reason)), _) => Execution::Finished(Outcome {
                    status: EventStatus::Failed,
                    reason: Some(reason.clone()),
                    recommended_action: Some("Re-enter the app's credentials and test the connection.".into()),
                    account: AccountWrite::Keep,
                    replan: false,
                }),
                (None, _) => return false,
            },
        };
        match execution {
            Execution::Finished(outcome) => {
                self.record(id, app_id, outcome).await;
                true
            }
            Execution::RetryAt { at, reason } => {
                match self.store.retry_operation_later(id, &self.config.owner, at, &reason).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(op = %id, "lease lost before the retry was recorded; another worker owns it")
                    }
                    Err(e) => {
                        tracing::warn!(op = %id, error = %e.chain(), "retry not recorded; the operation will be retried")
                    }
                }
                false
            }
        }
    }

    /// The ids in the app of the groups an operation involves (lower-cased name -> id). A
    /// group the app does not have is created when the app allows it; otherwise the
    /// operation fails saying which group is missing.
    async fn group_ids(
        &self,
        app: &App,
        op: &directory::Operation,
        account: Option<&directory::Account>,
        connector: &dyn Connector,
    ) -> Result<HashMap<String, String>, Execution> {
        let wanted = op.desired.as_ref().map(groups_of).unwrap_or_default();
        let mut names = wanted.clone();
        names.extend(account.and_then(|a| a.last_applied.as_ref()).map(groups_of).unwrap_or_default());
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let names: Vec<String> = names.into_iter().collect();
        let found = self.store.find_entitlements(app.id, "group", &names).await.map_err(|e| Execution::RetryAt {
            at: directory::now() + chrono::Duration::seconds(5),
            reason: e.to_string(),
        })?;
        let mut ids: HashMap<String, String> =
            found.into_iter().map(|e| (e.display_name.to_lowercase(), e.remote_id)).collect();
        let missing: Vec<&String> = wanted.iter().filter(|n| !ids.contains_key(&n.to_lowercase())).collect();
        for name in missing {
            if !app.provisioning.create_missing_groups {
                return Err(Execution::Finished(worker::failed(
                    format!("{}: there is no group \"{name}\" (as last imported by Refresh).", app.name),
                    "Press Refresh under Entitlements, fix the rule's group name, or let provisioning create missing groups."
                        .into(),
                )));
            }
            let group = serde_json::json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name, "members": []});
            // Another operation may have created it a moment ago: then use that one.
            let created = match connector.create_group(&group).await {
                Err(e) if e.kind == connectors::ErrorKind::Conflict => match connector.find_group(name).await {
                    Ok(Some(found)) => Ok(found),
                    _ => Err(e),
                },
                other => other,
            };
            match created {
                Ok(created) => {
                    if let Err(e) = self.store.add_entitlement(app.id, "group", &created.id, name).await {
                        tracing::warn!(error = %e.chain(), group = %name, "created a group but could not record it");
                    }
                    ids.insert(name.to_lowercase(), created.id);
                }
                Err(e) => return Err(worker::on_error(op, &app.name, e)),
            }
        }
        Ok(ids)
    }
}
