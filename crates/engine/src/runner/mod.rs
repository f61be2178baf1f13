//! The running engine: [`Engine`], its settings and errors, and starting and stopping its
//! loops (each supervised, so that a panic ends a pass, never the engine's work). The loops
//! and the rest of the engine's running parts live in rooms of their own:
//!
//! - `planner`: follows the change feed and writes the operations it plans;
//! - `dispatcher`: claims operations under leases within each app's concurrency limit and
//!   runs them;
//! - `recorder`: writes finished operations' outcomes in groups;
//! - `connector_cache`: each app's connector, built by the [`ConnectorRegistry`] the engine
//!   was given (the engine names no concrete connector);
//! - `actions`: the admin actions that need an app (test connection, provision now, ...).
//!
//! Reconciliation, the quarantine probes, previews and explanations are `impl Engine` blocks
//! in their own modules of the crate ([`crate::reconcile`], [`crate::quarantine`], ...).

mod actions;
mod connector_cache;
mod dispatcher;
mod planner;
mod recorder;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectors::{ConnectorError, ConnectorRegistry};
use directory::App;
use store::secrets::Keyring;
use store::{PageRequest as StorePage, Store, StoreError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use crate::reconcile::ReconcileReport;
pub use actions::ProvisionStep;
pub(crate) use planner::plan_guarded;

use crate::worker;
use connector_cache::ConnectorCache;
use recorder::Recorder;

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

/// The provisioning engine of one process: its planner, dispatcher and schedules, and
/// the admin actions that need an app.
pub struct Engine {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    config: EngineConfig,
    planner_wake: Notify,
    worker_wake: Notify,
    /// Each app's connector, built by the factory registered for the app's kind.
    connectors: ConnectorCache,
    inflight: Mutex<HashMap<Uuid, u32>>,
    recorder: Recorder,
    /// When the store's statistics were last refreshed after a bulk plan.
    statistics_refreshed: Mutex<Option<std::time::Instant>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// An engine on `store` (secrets opened with `keyring`) whose apps' connectors are built
    /// by `connectors` (see [`ConnectorRegistry::with_defaults`]). Nothing runs until
    /// [`Engine::start`].
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        config: EngineConfig,
        connectors: ConnectorRegistry,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            keyring,
            connectors: ConnectorCache::new(connectors, &config),
            config,
            planner_wake: Notify::new(),
            worker_wake: Notify::new(),
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

    /// Stops the loops. Operations in flight keep their lease and are retried later.
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
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
                    Ok(true) => match self.reconcile(app, directory::now()).await {
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
