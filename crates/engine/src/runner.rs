//! The running engine: the planner that follows the change feed, the dispatcher that runs
//! operations under leases within each app's concurrency limit, reconciliation, and the
//! admin actions that need an app (test connection, provision now).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectors::{Capabilities, Connector, ConnectorError, ScimConnector};
use directory::{AccountWrite, App, AuthConfig, Event, EventStatus, Outcome, PlanItem, PlanWrite, Secret};
use serde::Serialize;
use store::secrets::Keyring;
use store::{EventQuery, PageRequest as StorePage, Store, StoreError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::guard::{Causes, Guard, Why};
use crate::mapping::groups_of;
use crate::plan::plan_items;
use crate::worker::{self, Execution};

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Identifies this process's leases.
    pub owner: String,
    /// How long a claimed operation stays with its worker before another may take it.
    pub lease: Duration,
    /// How often the planner and dispatcher look for work when nobody woke them.
    pub poll_interval: Duration,
    /// How often every app is reconciled in full (`None`: never by itself).
    pub reconcile_interval: Option<Duration>,
    /// Timeout of one request to an app.
    pub request_timeout: Duration,
    /// Give up every lease at start: right when this is the only engine on the store.
    pub release_leases_at_start: bool,
    /// Base of the HTTP client's retry backoff.
    pub http_backoff_base: Duration,
    /// When several processes share the store: the planner runs only in the process that
    /// holds this lease (renewed as it goes). `None`: this process is the only one.
    pub planner_lease: Option<Duration>,
    /// Run the planner and the workers here (`false` for an API-only process).
    pub run_work: bool,
    /// When an app is quarantined, and how often a quarantined app is probed.
    pub quarantine: crate::QuarantinePolicy,
    /// Which addresses connections to apps and directory sources may reach.
    pub outbound: connectors::TargetPolicy,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            owner: format!("engine-{}", Uuid::now_v7().simple()),
            lease: Duration::from_secs(120),
            poll_interval: Duration::from_secs(1),
            reconcile_interval: Some(Duration::from_secs(3600)),
            request_timeout: Duration::from_secs(20),
            release_leases_at_start: true,
            http_backoff_base: Duration::from_millis(200),
            planner_lease: None,
            run_work: true,
            quarantine: crate::QuarantinePolicy::default(),
            outbound: connectors::TargetPolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The app answered with an error (the reason names the app).
    #[error("{reason}")]
    App { reason: String, recommended_action: String, error: ConnectorError },
    #[error("the app's credential cannot be read: {0}")]
    Credential(String),
    /// A directory source cannot be read (the reason names the server).
    #[error("{0}")]
    Directory(String),
}

impl EngineError {
    /// The error and its sources, down to the database driver's error (see
    /// [`StoreError::chain`]): what a log line says.
    pub fn chain(&self) -> String {
        match self {
            Self::Store(e) => e.chain(),
            other => other.to_string(),
        }
    }

    pub(crate) fn app(app: &App, e: ConnectorError) -> Self {
        let reason = worker::describe(&app.name, &e);
        Self::App { reason, recommended_action: e.recommended_action.clone(), error: e }
    }
}

/// One step of "Provision now".
#[derive(Debug, Clone, Serialize)]
pub struct ProvisionStep {
    pub app_id: Uuid,
    pub app_name: String,
    /// What was done, in words.
    pub step: String,
    /// The event that carried it out, if any.
    pub event: Option<Event>,
}

/// What a full reconciliation found and did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReconcileReport {
    /// `completed`, or `failed` when the app's listing contradicted itself whichever way it
    /// was read (then nothing was changed).
    pub status: String,
    /// How the accounts were read (`GET paging`, `POST /.search paging`); `None` when no
    /// way was consistent.
    pub strategy: Option<String>,
    /// Each contradiction found in the app's answers, naming the way of reading.
    pub contradictions: Vec<String>,
    /// Why it failed, and what to do.
    pub reason: Option<String>,
    pub recommended_action: Option<String>,
    /// List requests made.
    pub pages_read: u32,
    pub accounts_read: u64,
    pub users_checked: u64,
    /// Accounts found in the app with our externalId but no record here.
    pub adopted: u64,
    /// Accounts whose values in the app differ from what they should be.
    pub drifted: u64,
    /// Accounts recorded here that no longer exist in the app (a read by id answered 404
    /// and a lookup by externalId/userName found nothing).
    pub vanished: u64,
    /// Accounts recorded here that the listing did not hold (then read by id).
    pub missing_from_list: u64,
    /// Groups the engine manages, read to check their members.
    pub groups_read: u64,
    /// Accounts whose group memberships in the app differ from what was last applied.
    pub memberships_drifted: u64,
    /// Member entries listed more than once in the groups read (the app's health).
    pub duplicate_members: u64,
    pub groups_with_duplicates: Vec<String>,
    /// Operations queued.
    pub queued: u64,
}

pub struct Engine {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    config: EngineConfig,
    planner_wake: Notify,
    worker_wake: Notify,
    /// Connectors by app, with the app version they were built for.
    connectors: Mutex<HashMap<Uuid, CachedConnector>>,
    inflight: Mutex<HashMap<Uuid, u32>>,
    recorder: Recorder,
    /// When the store's statistics were last refreshed after a bulk plan.
    statistics_refreshed: Mutex<Option<std::time::Instant>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Finished operations waiting for their outcome to be written.
#[derive(Default)]
struct Recorder {
    /// (operation, app, outcome).
    pending: Mutex<Vec<(Uuid, Uuid, Outcome)>>,
    /// A worker is writing outcomes now.
    writing: AtomicBool,
}

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

type CachedConnector = (i64, Arc<dyn Connector>);

/// The change feed is read this many entries at a time.
const CHANGE_BATCH: u32 = 2000;
/// Pairs are loaded and planned this many at a time.
const PAIR_BATCH: usize = 1000;
/// A plan of at least this many pairs is a bulk write (see `refresh_statistics`).
const BULK_PLAN: usize = 5000;
/// The store's statistics are refreshed at most this often.
const STATISTICS_EVERY: Duration = Duration::from_secs(60);
/// The most outcomes written in one transaction.
const OUTCOME_BATCH: usize = 500;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>, config: EngineConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            keyring,
            config,
            planner_wake: Notify::new(),
            worker_wake: Notify::new(),
            connectors: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            recorder: Recorder::default(),
            statistics_refreshed: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Tells the planner that the directory changed (it also polls).
    pub fn changed(&self) {
        self.planner_wake.notify_one();
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Tells the workers there may be work (approved or retried events).
    pub fn wake_workers(&self) {
        self.worker_wake.notify_one();
    }

    /// Starts the planner, the dispatcher and the reconciliation schedule.
    pub async fn start(self: &Arc<Self>) -> Result<(), EngineError> {
        if !self.config.run_work {
            return Ok(());
        }
        if self.config.release_leases_at_start {
            let n = self.store.release_all_leases().await?;
            if n > 0 {
                tracing::info!(operations = n, "requeued operations left running by the previous run");
            }
        }
        let mut tasks = lock(&self.tasks);
        let me = self.clone();
        tasks.push(tokio::spawn(supervise("planner", move || me.clone().planner_loop())));
        let me = self.clone();
        tasks.push(tokio::spawn(supervise("dispatcher", move || me.clone().dispatcher_loop())));
        let me = self.clone();
        tasks.push(tokio::spawn(supervise("quarantine probes", move || me.clone().probe_loop())));
        if let Some(every) = self.config.reconcile_interval {
            let me = self.clone();
            tasks.push(tokio::spawn(supervise("reconciliation", move || me.clone().reconcile_loop(every))));
        }
        // Writes by other processes (PostgreSQL LISTEN/NOTIFY) wake this one's loops.
        if let Some(mut rx) = self.store.wakeups() {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(store::Wakeup::Changes) => me.planner_wake.notify_one(),
                        Ok(store::Wakeup::Operations) => me.worker_wake.notify_one(),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            me.planner_wake.notify_one();
                            me.worker_wake.notify_one();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            }));
        }
        Ok(())
    }

    /// Uses `connector` for `app` at `version` instead of building one from its settings (for
    /// tests and tools that stand in for an app).
    #[doc(hidden)]
    pub fn use_connector(&self, app: Uuid, version: i64, connector: Arc<dyn Connector>) {
        lock(&self.connectors).insert(app, (version, connector));
    }

    /// Stops the loops. Operations in flight keep their lease and are retried later.
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    async fn planner_loop(self: Arc<Self>) {
        // Until when this process holds the planner lease without renewing it: a third of the
        // lease after each renewal (so that waking the planner often writes nothing).
        let mut held_until: Option<tokio::time::Instant> = None;
        loop {
            // With several processes, one plans at a time: the holder of the planner lease.
            let leader = match self.config.planner_lease {
                None => Ok(true),
                Some(_) if held_until.is_some_and(|t| tokio::time::Instant::now() < t) => Ok(true),
                Some(ttl) => {
                    let renewed_at = tokio::time::Instant::now();
                    let held = self.store.try_hold_lease("planner", &self.config.owner, ttl).await;
                    held_until = matches!(held, Ok(true)).then(|| renewed_at + ttl / 3);
                    held
                }
            };
            match leader {
                Ok(true) => match self.plan_once().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e.chain(), "planner: will retry"),
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e.chain(), "planner: cannot take the planner lease; will retry"),
            }
            tokio::select! {
                _ = self.planner_wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    async fn dispatcher_loop(self: Arc<Self>) {
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

    /// Reconciles every enabled app once per `every`, across all the processes sharing the
    /// store (the store records when each app's reconciliation last ran).
    async fn reconcile_loop(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every.min(Duration::from_secs(60))).await;
            let apps = match self.enabled_apps().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "scheduled reconciliation: cannot list apps");
                    continue;
                }
            };
            for app in apps {
                match self.store.try_run_schedule(&format!("reconcile:{app}"), every).await {
                    Ok(true) => match self.reconcile(app).await {
                        Ok(r) => tracing::info!(app = %app, ?r, "scheduled reconciliation done"),
                        Err(e) => tracing::warn!(app = %app, error = %e.chain(), "scheduled reconciliation failed"),
                    },
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(app = %app, error = %e.chain(), "scheduled reconciliation: cannot check the schedule")
                    }
                }
            }
        }
    }

    async fn enabled_apps(&self) -> Result<Vec<Uuid>, EngineError> {
        let mut out = Vec::new();
        let mut page = StorePage { limit: store::MAX_PAGE, cursor: None };
        loop {
            let p = self.store.list_apps(&store::NameQuery { q: None, page: page.clone() }).await?;
            out.extend(p.items.iter().filter(|a| a.provisioning.enabled).map(|a| a.id));
            match p.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Plans the pairs touched by the next batch of changes; returns how many changes it read.
    pub async fn plan_once(&self) -> Result<usize, EngineError> {
        let cursor = self.store.engine_cursor().await?;
        let changes = self.store.changes_after(cursor, CHANGE_BATCH).await?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            return Ok(0);
        };
        let mut pairs = BTreeSet::new();
        let (mut seen_users, mut seen_apps) = (HashSet::new(), HashSet::new());
        let mut users = Vec::new();
        for c in &changes {
            match (affects(c.kind), c.user_id, c.app_id) {
                (Affects::Pair, Some(u), Some(a)) => {
                    pairs.insert((u, a));
                }
                (Affects::User, Some(u), _) if seen_users.insert(u) => users.push(u),
                (Affects::App, _, Some(a)) if seen_apps.insert(a) => {
                    pairs.extend(self.store.users_of_app(a).await?.into_iter().map(|u| (u, a)));
                }
                _ => {}
            }
        }
        // Every app of the users concerned, in one query per batch (not one per user).
        pairs.extend(self.store.apps_of_users(&users).await?);
        let pairs: Vec<_> = pairs.into_iter().collect();
        let started = std::time::Instant::now();
        let (mut loading, mut planning, mut writing) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let causes = Causes::load(self.store.as_ref(), &changes).await?;
        let mut guard = Guard::new(self.store.clone());
        for chunk in pairs.chunks(PAIR_BATCH) {
            let t = std::time::Instant::now();
            let states = self.store.load_pairs(chunk).await?;
            loading += t.elapsed();
            let t = std::time::Instant::now();
            let items = plan_guarded(&states, &causes, &mut guard).await?;
            planning += t.elapsed();
            let t = std::time::Instant::now();
            if !items.is_empty() {
                self.store.apply_plan(&PlanWrite { cursor: None, items }).await?;
            }
            writing += t.elapsed();
            // Workers start on the first chunk's operations while the next ones are planned.
            self.worker_wake.notify_one();
        }
        // The cursor moves with the change's suspensions and deletions that the guard let
        // through: a crash before it replays the batch, which plans nothing new for the
        // chunks already written.
        self.store.apply_plan(&PlanWrite { cursor: Some(last), items: guard.finish() }).await?;
        self.worker_wake.notify_one();
        // After a bulk write, at most once a minute (a large sync plans many bulk batches).
        let refresh = pairs.len() >= BULK_PLAN && {
            let mut last = lock(&self.statistics_refreshed);
            let due = last.is_none_or(|t| t.elapsed() >= STATISTICS_EVERY);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if refresh {
            if let Err(e) = self.store.refresh_statistics().await {
                tracing::warn!(error = %e.chain(), "cannot refresh the store's statistics after a large plan");
            }
        }
        tracing::debug!(
            changes = changes.len(),
            pairs = pairs.len(),
            ms = started.elapsed().as_millis() as u64,
            load_ms = loading.as_millis() as u64,
            plan_ms = planning.as_millis() as u64,
            write_ms = writing.as_millis() as u64,
            "planned"
        );
        Ok(changes.len())
    }

    /// Claims and starts what can run now; returns how many operations it started.
    pub async fn dispatch_once(self: &Arc<Self>) -> Result<usize, EngineError> {
        let mut started = 0;
        for app_id in self.store.apps_with_due_operations().await? {
            let app = self.store.get_app(app_id).await?;
            let limit = app.as_ref().map_or(4, |a| a.provisioning.max_concurrency.max(1));
            let busy = lock(&self.inflight).get(&app_id).copied().unwrap_or(0);
            if busy >= limit {
                continue;
            }
            let ops = self.store.claim_operations(app_id, &self.config.owner, limit - busy, self.config.lease).await?;
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

    /// Records a finished operation. Outcomes are written in groups, one transaction (one
    /// commit) per group: the worker that finds nobody writing writes everything waiting,
    /// until nothing is; the others leave theirs to it. An outcome lost to a crash before
    /// its commit leaves its operation running until the lease ends; it is then run again,
    /// and the retry's lookup finds the account the first attempt made.
    async fn record(&self, id: Uuid, app: Uuid, outcome: Outcome) {
        lock(&self.recorder.pending).push((id, app, outcome));
        loop {
            if self.recorder.writing.swap(true, Ordering::AcqRel) {
                return;
            }
            loop {
                let batch: Vec<(Uuid, Uuid, Outcome)> = {
                    let mut pending = lock(&self.recorder.pending);
                    let n = pending.len().min(OUTCOME_BATCH);
                    pending.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                self.write_outcomes(batch).await;
                // A finished operation may have asked for re-planning (an account change), and
                // the next operation of each pair may run now.
                self.planner_wake.notify_one();
                self.worker_wake.notify_one();
            }
            self.recorder.writing.store(false, Ordering::Release);
            if lock(&self.recorder.pending).is_empty() {
                return;
            }
        }
    }

    async fn write_outcomes(&self, batch: Vec<(Uuid, Uuid, Outcome)>) {
        let owner = &self.config.owner;
        let (apps, batch): (Vec<Uuid>, Vec<(Uuid, Outcome)>) = batch.into_iter().map(|(id, a, o)| (a, (id, o))).unzip();
        let batch = &batch[..];
        let recorded = match self.store.finish_operations(owner, batch).await {
            Ok(r) => r,
            Err(e) => {
                // One bad outcome must not cost the others theirs: record them one by one.
                tracing::warn!(error = %e.chain(), outcomes = batch.len(), "outcomes not recorded together; recording them one by one");
                let mut r = Vec::with_capacity(batch.len());
                for (id, outcome) in batch {
                    r.push(match self.store.finish_operation(*id, owner, outcome).await {
                        Ok(done) => done,
                        Err(e) => {
                            tracing::warn!(op = %id, error = %e.chain(), "outcome not recorded; the operation will be retried");
                            true
                        }
                    });
                }
                r
            }
        };
        for ((id, _), done) in batch.iter().zip(&recorded) {
            if !done {
                tracing::warn!(op = %id, "lease lost before the outcome was recorded; another worker owns it");
            }
        }
        let mine: Vec<(Uuid, &Outcome)> = batch
            .iter()
            .zip(apps)
            .zip(&recorded)
            .filter(|(_, done)| **done)
            .map(|(((_, o), app), _)| (app, o))
            .collect();
        self.watch_outcomes(&mine).await;
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
            at: chrono::Utc::now() + chrono::Duration::seconds(5),
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

    fn auth(app: &App, secret: Secret) -> Result<scim::Auth, EngineError> {
        match (&app.connection.auth, secret) {
            (AuthConfig::Bearer {}, Secret::Bearer { token }) => Ok(scim::Auth::Bearer { token }),
            (AuthConfig::Basic { username }, Secret::Basic { password }) => {
                Ok(scim::Auth::Basic { username: username.clone(), password })
            }
            (
                AuthConfig::OAuth2ClientCredentials { token_url, client_id, scope },
                Secret::OAuth2ClientCredentials { client_secret },
            ) => Ok(scim::Auth::OAuth2ClientCredentials {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret,
                scope: scope.clone(),
            }),
            _ => Err(EngineError::Credential("the stored secret does not match the authentication type".into())),
        }
    }

    /// A connector for the app, reused while the app is unchanged.
    pub(crate) async fn connector(&self, app: &App) -> Result<Arc<dyn Connector>, EngineError> {
        if let Some((version, c)) = lock(&self.connectors).get(&app.id) {
            if *version == app.version {
                return Ok(c.clone());
            }
        }
        let capabilities =
            self.store.get_app_capabilities(app.id).await?.and_then(|v| serde_json::from_value::<Capabilities>(v).ok());
        let c = self.build(app, capabilities).await?;
        lock(&self.connectors).insert(app.id, (app.version, c.clone()));
        Ok(c)
    }

    async fn build(&self, app: &App, capabilities: Option<Capabilities>) -> Result<Arc<dyn Connector>, EngineError> {
        let ct = self.store.get_app_credential(app.id).await?.ok_or(EngineError::NotFound("app"))?;
        let secret = store::secrets::decrypt_credential(&self.keyring, app.id, &ct)
            .map_err(|e| EngineError::Credential(e.to_string()))?;
        let mut cfg = scim::ClientConfig::new(app.connection.base_url.clone(), Self::auth(app, secret)?);
        cfg.timeout = self.config.request_timeout;
        cfg.max_concurrency = app.provisioning.max_concurrency.max(1) as usize;
        cfg.max_retries = 2;
        cfg.backoff_base = self.config.http_backoff_base;
        cfg.backoff_max = Duration::from_secs(5);
        cfg.retry_after_max = Duration::from_secs(30);
        cfg.targets = self.config.outbound.clone();
        let client = scim::Client::new(cfg).map_err(|e| EngineError::app(app, e.into()))?;
        Ok(Arc::new(
            ScimConnector::new(client, capabilities).with_member_chunk_size(app.provisioning.group_chunk_size as usize),
        ))
    }

    /// Up to `limit` accounts read from the app itself (its first page), e.g. for an admin
    /// choosing the account to link with "Rematch login".
    pub async fn remote_accounts(&self, app_id: Uuid, limit: u32) -> Result<Vec<serde_json::Value>, EngineError> {
        let app = self.store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        let c = self.connector(&app).await?;
        let page = c
            .list_accounts(connectors::PageRequest::first(limit.clamp(1, 1000)))
            .await
            .map_err(|e| EngineError::app(&app, e))?;
        Ok(page.items.into_iter().map(|a| a.resource).collect())
    }

    /// Whether the app has an account with this id.
    pub async fn account_exists(&self, app_id: Uuid, remote_id: &str) -> Result<bool, EngineError> {
        let app = self.store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        let c = self.connector(&app).await?;
        c.get_account(remote_id).await.map(|a| a.is_some()).map_err(|e| EngineError::app(&app, e))
    }

    /// "Enable" / "Test connection": checks the credentials, learns what the app supports
    /// and keeps it for every later request.
    /// Its result is kept as the app's last connection test (see [`Engine::health`]).
    pub async fn test_connection(&self, app_id: Uuid) -> Result<Capabilities, EngineError> {
        let app = self.store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        lock(&self.connectors).remove(&app_id);
        let tested = async {
            let c = self.build(&app, None).await?;
            c.test_connection().await.map_err(|e| EngineError::app(&app, e))
        }
        .await;
        let test = directory::ConnectionTest {
            ok: tested.is_ok(),
            at: directory::now(),
            message: tested.as_ref().err().map(ToString::to_string),
        };
        if let Err(e) = self.store.record_connection_test(app_id, &test).await {
            tracing::warn!(app = %app_id, error = %e.chain(), "cannot record the connection test's result");
        }
        let caps = tested?;
        let value = serde_json::to_value(caps).map_err(|e| EngineError::Credential(e.to_string()))?;
        self.store.set_app_capabilities(app_id, &value).await?;
        lock(&self.connectors).remove(&app_id);
        Ok(caps)
    }

    /// "Provision now": plans the user's accounts at once, lets the workers run them, and
    /// answers with what happened (waiting at most `wait`).
    pub async fn provision_now(
        &self,
        user: Uuid,
        app: Option<Uuid>,
        wait: Duration,
        actor: Option<&directory::Actor>,
    ) -> Result<Vec<ProvisionStep>, EngineError> {
        let apps = match app {
            Some(a) => vec![a],
            None => self.store.apps_of_user(user).await?,
        };
        let pairs: Vec<(Uuid, Uuid)> = apps.iter().map(|a| (user, *a)).collect();
        let states = self.store.load_pairs(&pairs).await?;
        let started = directory::now();
        let causes = Causes::fixed(Why::new("admin", actor.map(crate::guard::actor_words), "of Provision now"));
        let mut guard = Guard::new(self.store.clone());
        let mut items: Vec<(usize, PlanItem)> = Vec::new();
        let mut write = Vec::new();
        for (i, s) in states.iter().enumerate() {
            let mut planned: Vec<PlanItem> = plan_items(s).collect();
            causes.stamp(s, &mut planned);
            items.extend(
                planned
                    .iter()
                    .filter(|p| !matches!(p, PlanItem::Depart { .. } | PlanItem::Forget { .. }))
                    .map(|p| (i, p.clone())),
            );
            if let Some(app) = &s.app {
                write.extend(guard.admit(app, planned).await?);
            }
        }
        write.extend(guard.finish());
        self.store.apply_plan(&PlanWrite { cursor: None, items: write }).await?;
        self.worker_wake.notify_one();
        let deadline = tokio::time::Instant::now() + wait;
        let mut steps = Vec::new();
        for (i, s) in states.iter().enumerate() {
            let app_name = s.app.as_ref().map_or_else(String::new, |a| a.name.clone());
            let planned = items.iter().find(|(j, _)| *j == i).map(|(_, p)| p);
            let step = match planned {
                None | Some(PlanItem::Observe { .. } | PlanItem::Depart { .. } | PlanItem::Forget { .. }) => {
                    "in sync: nothing to do".to_owned()
                }
                Some(PlanItem::Enqueue { action, .. } | PlanItem::Replace { action, .. }) => {
                    format!("{} queued", action.as_str())
                }
                Some(PlanItem::Cancel { .. }) => "waiting operation cancelled: no longer needed".to_owned(),
                Some(PlanItem::Replan { .. }) => "an operation is running; planned again when it ends".to_owned(),
                Some(PlanItem::Fail { reason, .. }) => format!("failed: {reason}"),
            };
            let mut event = None;
            if matches!(planned, Some(PlanItem::Enqueue { .. } | PlanItem::Replace { .. })) {
                loop {
                    let q = EventQuery {
                        user: Some(user),
                        app: Some(s.app_id),
                        page: StorePage { limit: 1, cursor: None },
                        ..Default::default()
                    };
                    let latest = self.store.list_events(&q).await?.items.into_iter().next();
                    let settled = latest.as_ref().is_some_and(|e| {
                        e.updated_at >= started
                            && (e.status.is_final() || matches!(e.status, EventStatus::Pending | EventStatus::Held))
                    });
                    if settled || tokio::time::Instant::now() >= deadline {
                        event = latest;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            steps.push(ProvisionStep { app_id: s.app_id, app_name, step, event });
        }
        Ok(steps)
    }
}

/// Plans a batch of pairs, each operation with its cause, through the deprovisioning guard:
/// answers what to write now (the guard keeps back suspensions and deletions until the end of
/// the change, see [`Guard`]).
pub(crate) async fn plan_guarded(
    states: &[directory::PairState],
    causes: &Causes,
    guard: &mut Guard,
) -> Result<Vec<PlanItem>, EngineError> {
    let mut out = Vec::new();
    for s in states {
        let mut planned: Vec<PlanItem> = plan_items(s).collect();
        if planned.is_empty() {
            continue;
        }
        causes.stamp(s, &mut planned);
        match &s.app {
            Some(app) => out.extend(guard.admit(app, planned).await?),
            None => out.extend(planned),
        }
    }
    Ok(out)
}

/// Which pairs a change touches.
enum Affects {
    /// Every app of the user.
    User,
    /// Every user of the app.
    App,
    /// One (user, app) pair.
    Pair,
    Nothing,
}

fn affects(kind: directory::ChangeKind) -> Affects {
    use directory::ChangeKind as K;
    match kind {
        K::User | K::RoleMembership => Affects::User,
        K::App | K::RoleApp => Affects::App,
        K::Account => Affects::Pair,
        // A role's deletion is recorded as membership and grant changes.
        K::Role => Affects::Nothing,
    }
}

/// The text of a panic's payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Runs the loop `make` builds, and builds and runs it again (after a second) if it panics:
/// a panic in the planner, the dispatcher or the reconciliation ends that pass, never the
/// engine's work.
async fn supervise<F, Fut>(name: &'static str, make: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    /// Stopping the supervisor (an abort) stops the loop it runs.
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    loop {
        let mut running = AbortOnDrop(tokio::spawn(make()));
        match (&mut running.0).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(task = name, panic = %panic_message(e.into_panic()), "the task panicked; it starts again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => return,
        }
    }
}
