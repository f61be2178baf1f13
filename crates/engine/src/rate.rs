//! Rate budgets and back-pressure: how fast the engine sends to each app, across every process
//! sharing the store, and how long an app's queue will take.
//!
//! Every request to an app goes through the app's [`RateGate`] (the [`connectors::Pacer`] its
//! connector is built with), which applies the rules of [`directory::rate`] to the app's rate
//! state kept in the store ([`store::RateStore`]), so that they hold for all processes at once:
//!
//! - **Budget** (`provisioning.rate_limit: {"per_minute", "burst"}`): each request takes a token
//!   from the app's bucket first (an atomic change of its row in the store). In any 60 s the app
//!   receives at most `per_minute + burst` requests (in any `w` seconds, `burst + per_minute *
//!   w / 60`). SQLite runs the same code with its one process.
//! - **Retry-After**: a `429` (or `5xx`) with `Retry-After` pauses every request to the app,
//!   from every process, until then; a budgeted app's gate sees the pause with its token, an
//!   app without a budget re-reads its pause at most every [`PAUSE_FRESH`].
//! - **Concurrency, additive increase and multiplicative decrease**: a `429` or `5xx` halves the
//!   app's concurrency limit (at most once every 2 s; at least 1); it then grows by one every
//!   10 s without another, up to `max_concurrency`. The dispatcher claims within that limit,
//!   across processes on PostgreSQL.
//! - **No app delays another**: the dispatcher claims an app's operations only when its pause is
//!   over and, for a budgeted app, only as many as its bucket has tokens for, and never waits
//!   for a budget itself; an operation whose request would wait longer than the gate's longest
//!   wait (a quarter of the lease, at most 10 s) goes back to the queue until its token is due
//!   (a `RateLimited` retry: never a failure, never counted toward quarantine).
//!
//! [`estimate`] turns an app's queue, its recent rate and its budget into the health's ETA.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use connectors::{PaceFuture, Pacer, ScimError};
use directory::{RateBasis, RateLimit, RateState, Take};
use rand::Rng;
use store::Store;
use uuid::Uuid;

/// An app without a budget re-reads its pause from the store at most this often.
pub const PAUSE_FRESH: Duration = Duration::from_millis(200);

/// The longest a gate waits for a token or a pause, for an operation's lease of `lease`.
pub fn longest_wait(lease: Duration) -> Duration {
    (lease / 4).min(Duration::from_secs(10))
}

/// One app's gate: asked before every request to the app, told every answer.
pub struct RateGate {
    store: Arc<dyn Store>,
    app: Uuid,
    budget: Option<RateLimit>,
    max_concurrency: u32,
    max_wait: Duration,
    /// Without a budget: the app's pause as last read, and when it was read.
    seen: Mutex<Option<(Instant, Option<DateTime<Utc>>)>>,
}

impl std::fmt::Debug for RateGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateGate").field("app", &self.app).field("budget", &self.budget).finish_non_exhaustive()
    }
}

fn held(reason: String, wait: Duration) -> ScimError {
    ScimError::Held { reason, retry_after: wait.max(Duration::from_secs(1)) }
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or_default()
}

impl RateGate {
    pub fn new(store: Arc<dyn Store>, app: &directory::App, max_wait: Duration) -> Self {
        Self {
            store,
            app: app.id,
            budget: app.provisioning.rate_limit,
            max_concurrency: app.provisioning.max_concurrency,
            max_wait,
            seen: Mutex::new(None),
        }
    }

    /// Without a budget: when the app's pause ends, if it is paused at `now`.
    async fn paused(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, store::StoreError> {
        let cached = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let until = match cached {
            Some((read, until)) if read.elapsed() < PAUSE_FRESH => until,
            _ => {
                let until = self.store.get_rate_state(self.app).await?.and_then(|s| s.paused_until);
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), until));
                until
            }
        };
        Ok(until.filter(|u| *u > now))
    }

    /// When the next request may go (`None`: now, its token taken), and why it waits.
    async fn next(&self, now: DateTime<Utc>) -> Result<Option<(DateTime<Utc>, String)>, ScimError> {
        let unreadable = |e: store::StoreError| {
            held(format!("the app's rate state cannot be read ({})", e.chain()), Duration::from_secs(5))
        };
        match &self.budget {
            Some(budget) => match self.store.take_rate_token(self.app, budget, now).await.map_err(unreadable)? {
                Take::Granted => Ok(None),
                Take::Paused(at) => Ok(Some((at, format!("the app asked to wait (Retry-After) until {at}")))),
                Take::Empty(at) => {
                    Ok(Some((at, format!("the rate budget ({} a minute) is used up", budget.per_minute))))
                }
            },
            // Without a budget, a store that cannot be read holds nothing back.
            None => match self.paused(now).await {
                Ok(paused) => Ok(paused.map(|at| (at, format!("the app asked to wait (Retry-After) until {at}")))),
                Err(e) => {
                    tracing::warn!(app = %self.app, error = %e.chain(), "cannot read the app's pause; sending");
                    Ok(None)
                }
            },
        }
    }

    async fn wait_turn(&self) -> Result<(), ScimError> {
        let started = Instant::now();
        loop {
            let now = directory::now();
            let Some((at, why)) = self.next(now).await? else { return Ok(()) };
            let wait = until(at, now);
            if started.elapsed() + wait > self.max_wait {
                return Err(held(why, wait));
            }
            // A little jitter, so that the requests waiting for one moment do not all ask at once.
            let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..20));
            tokio::time::sleep(wait + jitter).await;
            if self.budget.is_none() {
                // The pause is over (a later one is read again).
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if until(at, directory::now()).is_zero() {
                    return Ok(());
                }
            }
        }
    }

    async fn note(&self, status: u16, retry_after: Option<Duration>) {
        if status != 429 && status < 500 {
            return;
        }
        let now = directory::now();
        let pause = retry_after.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| now + d);
        match self.store.record_overload(self.app, self.budget.as_ref(), self.max_concurrency, pause, now).await {
            Ok(state) => {
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), state.paused_until));
                tracing::info!(app = %self.app, status, ?retry_after, concurrency = state.concurrency(self.max_concurrency, now),
                    "the app is overloaded: its requests slow down");
            }
            Err(e) => tracing::warn!(app = %self.app, error = %e.chain(), "cannot record the app's overload"),
        }
    }
}

impl Pacer for RateGate {
    fn before_send(&self) -> PaceFuture<'_, Result<(), ScimError>> {
        Box::pin(self.wait_turn())
    }

    fn answered(&self, status: u16, retry_after: Option<Duration>) -> PaceFuture<'_, ()> {
        Box::pin(self.note(status, retry_after))
    }
}

/// What the dispatcher may claim of an app now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The app's concurrency limit now (every process's running operations count).
    pub concurrency: u32,
    /// How many operations the budget has tokens for now (`u32::MAX` without a budget); 0 while
    /// the app is paused.
    pub budget: u32,
}

/// What the dispatcher may claim of `app` at `now`, from its rate state.
pub fn room(app: &directory::App, state: Option<&RateState>, now: DateTime<Utc>) -> Room {
    let max = app.provisioning.max_concurrency.max(1);
    let budget = app.provisioning.rate_limit;
    // No state yet: a full bucket, no pause, no drop.
    let state = state.copied().unwrap_or_else(|| RateState::new(now, budget.as_ref()));
    let concurrency = state.concurrency(max, now);
    if state.paused(now).is_some() {
        return Room { concurrency, budget: 0 };
    }
    let budget = match &budget {
        Some(b) => state.available(now, b).floor().clamp(0.0, f64::from(u32::MAX)) as u32,
        None => u32::MAX,
    };
    Room { concurrency, budget }
}

/// What an app's recent work says, for [`estimate`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recent {
    /// Operations queued or running.
    pub queued: i64,
    /// Operations finished in the window, and over how many seconds they were counted.
    pub finished: i64,
    pub seconds: f64,
    /// Requests sent in the window (counted for budgeted apps).
    pub requests: i64,
}

/// An ETA: the rate it is from and the seconds until the queue is empty (the rate and its basis
/// are `None` when the ETA is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Operations finished a minute recently (`None`: none).
    pub observed_per_minute: Option<f64>,
    /// The rate the ETA uses, operations a minute.
    pub per_minute: Option<f64>,
    pub basis: Option<RateBasis>,
    pub eta_seconds: Option<i64>,
}

/// The ETA of an app's queue. The rate: the budget's (in operations: `per_minute` over the
/// requests an operation took recently, one until known) when the budget binds (its bucket is
/// empty: requests wait for it) or nothing finished recently; otherwise the observed rate (at
/// most the budget's). `eta_seconds`: `null` when nothing is queued, no rate is known or the
/// queue is `stopped` (quarantined); otherwise the queue at that rate, after the pause the app
/// asked for (`paused_for`).
pub fn estimate(
    recent: Recent,
    budget: Option<&RateLimit>,
    bucket_empty: bool,
    paused_for: Duration,
    stopped: bool,
) -> Estimate {
    let observed =
        (recent.finished > 0 && recent.seconds > 0.0).then(|| recent.finished as f64 * 60.0 / recent.seconds.max(1.0));
    let per_op = if recent.finished > 0 && recent.requests > 0 {
        (recent.requests as f64 / recent.finished as f64).max(1.0)
    } else {
        1.0
    };
    let budgeted = budget.map(|b| f64::from(b.per_minute) / per_op);
    let (per_minute, basis) = match (observed, budgeted) {
        (Some(o), Some(b)) if bucket_empty || o >= b => (Some(b), Some(RateBasis::Budget)),
        (None, Some(b)) => (Some(b), Some(RateBasis::Budget)),
        (Some(o), _) => (Some(o), Some(RateBasis::Observed)),
        (None, None) => (None, None),
    };
    match per_minute {
        Some(r) if recent.queued > 0 && r > 0.0 && !stopped => Estimate {
            observed_per_minute: observed,
            per_minute,
            basis,
            eta_seconds: Some((recent.queued as f64 * 60.0 / r + paused_for.as_secs_f64()).ceil() as i64),
        },
        _ => Estimate { observed_per_minute: observed, per_minute: None, basis: None, eta_seconds: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: RateLimit = RateLimit { per_minute: 120, burst: Some(10) };

    fn recent(queued: i64, finished: i64, seconds: f64, requests: i64) -> Recent {
        Recent { queued, finished, seconds, requests }
    }

    #[test]
    fn the_budget_gives_the_rate_when_it_binds() {
        // 300 finished in 5 minutes, 2 requests each: the budget allows 60 operations a minute.
        let e = estimate(recent(600, 300, 300.0, 600), Some(&BUDGET), true, Duration::ZERO, false);
        assert_eq!((e.per_minute, e.basis, e.eta_seconds), (Some(60.0), Some(RateBasis::Budget), Some(600)));
        assert_eq!(e.observed_per_minute, Some(60.0));
        // Nothing finished yet: the budget, one request an operation.
        let e = estimate(recent(240, 0, 0.0, 0), Some(&BUDGET), false, Duration::ZERO, false);
        assert_eq!((e.basis, e.eta_seconds), (Some(RateBasis::Budget), Some(120)));
        // A pause the app asked for comes first.
        let e = estimate(recent(240, 0, 0.0, 0), Some(&BUDGET), false, Duration::from_secs(30), false);
        assert_eq!(e.eta_seconds, Some(150));
    }

    #[test]
    fn the_observed_rate_when_the_app_is_slower_than_its_budget() {
        let e = estimate(recent(100, 50, 300.0, 50), Some(&BUDGET), false, Duration::ZERO, false);
        assert_eq!((e.per_minute, e.basis, e.eta_seconds), (Some(10.0), Some(RateBasis::Observed), Some(600)));
        let e = estimate(recent(100, 50, 300.0, 0), None, false, Duration::ZERO, false);
        assert_eq!((e.basis, e.eta_seconds), (Some(RateBasis::Observed), Some(600)));
    }

    #[test]
    fn no_eta_without_a_queue_a_rate_or_a_running_queue() {
        assert_eq!(estimate(recent(0, 50, 300.0, 0), None, false, Duration::ZERO, false).eta_seconds, None);
        let e = estimate(recent(10, 0, 0.0, 0), None, false, Duration::ZERO, false);
        assert_eq!((e.per_minute, e.basis, e.eta_seconds), (None, None, None));
        assert_eq!(estimate(recent(10, 50, 300.0, 0), None, false, Duration::ZERO, true).eta_seconds, None);
    }

    #[test]
    fn the_room_follows_the_pause_the_bucket_and_the_lowered_concurrency() {
        let now = directory::now();
        let mut app = directory::App {
            id: Uuid::nil(),
            name: "A".into(),
            description: None,
            connector: directory::ConnectorKind::Scim,
            connection: directory::ConnectionConfig {
                base_url: "http://127.0.0.1:9".into(),
                auth: directory::AuthConfig::Bearer {},
            },
            provisioning: directory::ProvisioningSettings { max_concurrency: 8, ..Default::default() },
            parameters: None,
            rules: Vec::new(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        assert_eq!(room(&app, None, now), Room { concurrency: 8, budget: u32::MAX });
        app.provisioning.rate_limit = Some(BUDGET);
        assert_eq!(room(&app, None, now), Room { concurrency: 8, budget: 10 }, "a full bucket at first");
        let mut s = RateState::new(now, Some(&BUDGET));
        assert_eq!(room(&app, Some(&s), now), Room { concurrency: 8, budget: 10 });
        s.overloaded(8, now);
        s.pause(now + chrono::Duration::seconds(5), now);
        assert_eq!(room(&app, Some(&s), now), Room { concurrency: 4, budget: 0 });
    }
}
