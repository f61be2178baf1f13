//! Quarantine: an app whose operations fail too often, or that refuses the credentials
//! several times in a row, has its queue paused (nothing is lost; other apps go on). A
//! connection test ("probe") runs on a backoff schedule and resumes the app when it succeeds;
//! an admin may resume it at once. The state lives in the store, so every process sharing it
//! pauses the app's queue together.

use std::collections::HashMap;
use std::time::Duration;

use directory::{Actor, AppHealth, EventStatus, HealthState, Outcome};
use uuid::Uuid;

use crate::runner::{Engine, EngineError};

/// When an app is quarantined, and how its probes back off.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinePolicy {
    /// The wait before each probe: the first after quarantine, the second after the first,
    /// and so on; the last one repeats. Default 5 min, 30 min, 2 h, 6 h, then every 24 h.
    pub backoff: Vec<Duration>,
    /// Quarantine when at least this share of the finished operations failed (percent)...
    pub failure_percent: i64,
    /// ... over at least this many finished operations ...
    pub min_finished: i64,
    /// ... within this window.
    pub window: Duration,
    /// Quarantine after this many operations in a row were refused for the credentials.
    pub auth_refusals: i64,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        Self {
            backoff: [300, 1800, 7200, 21600, 86400].into_iter().map(Duration::from_secs).collect(),
            failure_percent: 40,
            min_finished: 50,
            window: Duration::from_secs(15 * 60),
            auth_refusals: 3,
        }
    }
}

impl QuarantinePolicy {
    /// The wait before probe number `step` (0: the first after quarantine).
    pub fn delay(&self, step: i64) -> Duration {
        let i = usize::try_from(step.max(0)).unwrap_or(usize::MAX);
        self.backoff.get(i).or(self.backoff.last()).copied().unwrap_or(Duration::from_secs(300))
    }

    /// Parses a schedule such as `300,1800,7200,21600,86400` (seconds, the last repeating).
    pub fn parse_backoff(text: &str) -> Result<Vec<Duration>, String> {
        let steps: Vec<Duration> = text
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.parse::<u64>()
                    .ok()
                    .filter(|n| (1..=7 * 86400).contains(n))
                    .map(Duration::from_secs)
                    .ok_or_else(|| format!("{s:?} is not a number of seconds between 1 and 604800"))
            })
            .collect::<Result<_, _>>()?;
        if steps.is_empty() || steps.len() > 32 {
            return Err("give 1 to 32 steps".into());
        }
        Ok(steps)
    }
}

/// The text of the reason of an operation refused for the credentials (see `worker::describe`).
pub(crate) const REFUSED: &str = "Invalid authentication";

fn refused(o: &Outcome) -> bool {
    o.status == EventStatus::Failed && o.reason.as_deref().is_some_and(|r| r.starts_with(REFUSED))
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::days(1))
}

/// What one batch of recorded outcomes says about an app.
#[derive(Default)]
struct Seen<'a> {
    failed: bool,
    /// Refused for the credentials since the batch's last success.
    refusals: i64,
    last_failure: Option<&'a str>,
}

impl Engine {
    /// After outcomes were recorded: quarantines the apps they show to be failing. Only a
    /// failure can make an app fail more, so a batch without one asks nothing of the store.
    pub(crate) async fn watch_outcomes(&self, recorded: &[(Uuid, &Outcome)]) {
        let mut apps: HashMap<Uuid, Seen<'_>> = HashMap::new();
        for (app, o) in recorded {
            let seen = apps.entry(*app).or_default();
            if o.status == EventStatus::Failed {
                seen.failed = true;
                seen.last_failure = o.reason.as_deref();
                if refused(o) {
                    seen.refusals += 1;
                }
            } else if store::provisioning::succeeded(o.status) {
                seen.refusals = 0;
            }
        }
        for (app, seen) in apps.into_iter().filter(|(_, s)| s.failed) {
            if let Err(e) = self.check_app(app, &seen).await {
                tracing::warn!(app = %app, error = %e.chain(), "cannot check whether the app should be quarantined");
            }
        }
    }

    async fn check_app(&self, app: Uuid, seen: &Seen<'_>) -> Result<(), EngineError> {
        let policy = &self.config().quarantine;
        let latest = seen.last_failure.unwrap_or("no reason given");
        if seen.refusals > 0 {
            let n = self.store().add_auth_refusals(app, seen.refusals).await?;
            if n >= policy.auth_refusals {
                let reason = format!("The app refused the credentials {n} times in a row. The latest: {latest}");
                return self.quarantine(app, &reason).await;
            }
        }
        let since = directory::now() - chrono_of(policy.window);
        let w = self.store().app_outcome_window(app, since).await?;
        if w.finished >= policy.min_finished && w.failed * 100 >= policy.failure_percent * w.finished {
            let minutes = policy.window.as_secs() / 60;
            let reason = format!(
                "{} of the last {} operations failed within {minutes} minutes ({}%). The latest: {latest}",
                w.failed,
                w.finished,
                w.failed * 100 / w.finished.max(1)
            );
            return self.quarantine(app, &reason).await;
        }
        Ok(())
    }

    async fn quarantine(&self, app: Uuid, reason: &str) -> Result<(), EngineError> {
        let next = directory::now() + chrono_of(self.config().quarantine.delay(0));
        if self.store().quarantine_app(app, reason, next, &Actor::system()).await? {
            tracing::warn!(app = %app, reason, next_probe = %next, "app quarantined: its queue is paused");
        }
        Ok(())
    }

    /// Runs the probes that are due (each in its own task); answers how many it started.
    pub async fn probe_due(self: &std::sync::Arc<Self>) -> Result<usize, EngineError> {
        let now = directory::now();
        let mut started = 0;
        for (app, probes) in self.store().due_probes(now).await? {
            let next = now + chrono_of(self.config().quarantine.delay(probes + 1));
            // Another process may have taken it.
            if !self.store().take_probe(app, probes, next).await? {
                continue;
            }
            started += 1;
            let me = self.clone();
            tokio::spawn(async move {
                match me.test_connection(app).await {
                    Ok(_) => match me.resume(app, &Actor::system(), "the connection test succeeded").await {
                        Ok(_) => tracing::info!(app = %app, "probe succeeded: app resumed"),
                        Err(e) => {
                            tracing::warn!(app = %app, error = %e.chain(), "probe succeeded but the app cannot be resumed")
                        }
                    },
                    Err(e) => {
                        tracing::info!(app = %app, error = %e.chain(), next_probe = %next, "probe failed: app stays quarantined")
                    }
                }
            });
        }
        Ok(started)
    }

    pub(crate) async fn probe_loop(self: std::sync::Arc<Self>) {
        let every = self.config().poll_interval.clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.probe_due().await {
                tracing::warn!(error = %e.chain(), "quarantine probes: will retry");
            }
        }
    }

    /// Resumes a quarantined app at once: its queue runs again and what failed is planned
    /// again. `false` when it was not quarantined.
    pub async fn resume(&self, app: Uuid, actor: &Actor, note: &str) -> Result<bool, EngineError> {
        let resumed = self.store().resume_app(app, actor, note).await?;
        if resumed {
            self.changed();
            self.wake_workers();
        }
        Ok(resumed)
    }

    /// The app's health: quarantine, queue, rate (and the ETA of its queue: see
    /// [`crate::rate::estimate`]), rate state and last connection test.
    pub async fn health(&self, app: Uuid) -> Result<AppHealth, EngineError> {
        let rec = self.store().get_app_health(app).await?.unwrap_or_default();
        let now = directory::now();
        let counts = self.store().app_queue_counts(app, now - chrono::Duration::minutes(5)).await?;
        let settings = self.store().get_app(app).await?.map(|a| a.provisioning).unwrap_or_default();
        let state = self.store().get_rate_state(app).await?;
        let budget = settings.rate_limit;
        // The counts are by whole minutes: the rate is over the time since the first of them.
        let seconds = counts
            .first_minute
            .and_then(|m| chrono::DateTime::from_timestamp(m.saturating_mul(60), 0))
            .map_or(0.0, |start| (now - start).num_milliseconds() as f64 / 1000.0);
        let recent = crate::rate::Recent {
            queued: counts.queued,
            finished: counts.finished,
            seconds,
            requests: counts.requests,
        };
        let paused_until = state.as_ref().and_then(|s| s.paused(now));
        let bucket_empty = match (&budget, &state) {
            (Some(b), Some(s)) => s.available(now, b) < 1.0,
            _ => false,
        };
        let paused_for = paused_until.and_then(|u| (u - now).to_std().ok()).unwrap_or_default();
        let estimate = crate::rate::estimate(recent, budget.as_ref(), bucket_empty, paused_for, rec.quarantined);
        let max = settings.max_concurrency.max(1);
        Ok(AppHealth {
            state: if rec.quarantined { HealthState::Quarantined } else { HealthState::Active },
            reason: rec.reason.filter(|_| rec.quarantined),
            since: rec.since.filter(|_| rec.quarantined),
            next_probe: rec.next_probe.filter(|_| rec.quarantined),
            held: counts.held,
            queued: counts.queued,
            rate_per_minute: estimate.observed_per_minute.map(|r| (r * 10.0).round() / 10.0),
            eta_seconds: estimate.eta_seconds,
            rate_basis: estimate.basis,
            rate_limit: budget,
            paused_until,
            concurrency: state.map_or(max, |s| s.concurrency(max, now)),
            last_test: rec.last_test,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_backs_off_then_repeats_its_last_step() {
        let p = QuarantinePolicy::default();
        let secs: Vec<u64> = (0..7).map(|i| p.delay(i).as_secs()).collect();
        assert_eq!(secs, [300, 1800, 7200, 21600, 86400, 86400, 86400]);
    }

    #[test]
    fn a_schedule_is_parsed_from_seconds() {
        let steps = QuarantinePolicy::parse_backoff("1, 2,5").unwrap();
        assert_eq!(steps, [1, 2, 5].map(Duration::from_secs));
        assert!(QuarantinePolicy::parse_backoff("").is_err());
        assert!(QuarantinePolicy::parse_backoff("5,x").is_err());
        assert!(QuarantinePolicy::parse_backoff("0").is_err());
    }
}
