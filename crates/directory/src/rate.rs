//! Rate budgets (pure): an app's `provisioning.rate_limit`, and the state every engine process
//! shares through the store ([`RateState`]): a token bucket, the pause an app asked for with
//! `Retry-After`, and the concurrency limit lowered after `429` or `5xx` answers.
//!
//! The rules (the engine's `rate` module applies them to every request sent to an app):
//!
//! - **Budget**: a token bucket holding at most `burst` tokens, refilled at `per_minute / 60`
//!   tokens a second; every request to the app takes one token before it is sent. In any
//!   window of `w` seconds an app therefore receives at most `burst + per_minute * w / 60`
//!   requests: at most `per_minute + burst` in any 60 s.
//! - **Retry-After**: an answer `429` with `Retry-After` pauses every request to the app until
//!   then (a later pause never shortens an earlier one; at most [`MAX_PAUSE`]).
//! - **Concurrency (AIMD)**: a `429` or a `5xx` halves the app's concurrency limit (from what it
//!   is at that moment, at least 1), at most once every [`DROP_GAP`] (answers in flight together
//!   report the same overload once); then the limit grows back by one every [`RECOVER_STEP`]
//!   without a new drop, up to the app's `max_concurrency`.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::ValidationErrors;

/// An app's rate budget: `provisioning.rate_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests a minute to the app, shared by every engine process (1 to 100,000).
    pub per_minute: u32,
    /// Requests that may go at once beyond the steady pace, after a quiet time (1 to 100,000;
    /// default a tenth of `per_minute`, at least 1; filled in when saved).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// The largest `per_minute` and `burst`.
pub const MAX_RATE: u32 = 100_000;

/// The longest pause a `Retry-After` may ask for.
pub const MAX_PAUSE: Duration = Duration::hours(1);

/// Concurrency drops at most once in this time.
pub const DROP_GAP: Duration = Duration::seconds(2);

/// After a drop, the concurrency limit grows by one each time this passes.
pub const RECOVER_STEP: Duration = Duration::seconds(10);

/// Millionths of a token: the bucket's unit, so that its arithmetic is exact.
const MICRO: i64 = 1_000_000;

impl RateLimit {
    /// The default `burst` for a budget of `per_minute`.
    pub fn default_burst(per_minute: u32) -> u32 {
        per_minute.div_ceil(10).max(1)
    }

    /// The bucket's size: `burst`, or its default.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| Self::default_burst(self.per_minute))
    }

    /// Checks the ranges, naming the fields under `prefix` (e.g. `provisioning.rate_limit`).
    pub fn check(&self, prefix: &str, errors: &mut ValidationErrors) {
        if !(1..=MAX_RATE).contains(&self.per_minute) {
            errors.push(format!("{prefix}.per_minute"), format!("must be between 1 and {MAX_RATE}"));
        }
        if self.burst.is_some_and(|b| !(1..=MAX_RATE).contains(&b)) {
            errors.push(format!("{prefix}.burst"), format!("must be between 1 and {MAX_RATE}"));
        }
    }

    /// With `burst` filled in.
    pub fn normalized(self) -> Self {
        Self { burst: Some(self.burst()), ..self }
    }

    /// Requests a minute as a rate.
    pub fn per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

/// Whether a request may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A token was taken: send it.
    Granted,
    /// The app asked to wait (`Retry-After`) until then.
    Paused(DateTime<Utc>),
    /// The bucket is empty: the next token comes then.
    Empty(DateTime<Utc>),
}

/// Which rate an app's ETA is computed from (`GET /api/v1/apps/{id}/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateBasis {
    /// The app's rate budget binds: operations go as fast as it lets them.
    Budget,
    /// The rate operations finished at recently.
    Observed,
}

/// An app's shared rate state. A new app has none (a full bucket, no pause, no drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// Millionths of a token in the bucket at `refilled_at`.
    pub tokens: i64,
    pub refilled_at: DateTime<Utc>,
    /// No request before this (`Retry-After`).
    pub paused_until: Option<DateTime<Utc>>,
    /// The concurrency limit the last drop set (`None`: never dropped).
    pub concurrency: Option<u32>,
    /// When the last drop happened.
    pub dropped_at: Option<DateTime<Utc>>,
}

fn micros(d: Duration) -> i64 {
    d.num_microseconds().unwrap_or(i64::MAX)
}

impl RateState {
    /// A full bucket at `now` (of `budget`, or empty without one), no pause, no drop.
    pub fn new(now: DateTime<Utc>, budget: Option<&RateLimit>) -> Self {
        Self {
            tokens: budget.map_or(0, |b| i64::from(b.burst()) * MICRO),
            refilled_at: now,
            paused_until: None,
            concurrency: None,
            dropped_at: None,
        }
    }

    /// Millionths of a token in the bucket at `now`.
    fn tokens_at(&self, now: DateTime<Utc>, budget: &RateLimit) -> i64 {
        let full = i64::from(budget.burst()) * MICRO;
        let elapsed = micros(now - self.refilled_at).max(0);
        // Millionths of a token per microsecond: per_minute / 60.
        let refill = elapsed.saturating_mul(i64::from(budget.per_minute)) / 60;
        self.tokens.saturating_add(refill).min(full)
    }

    /// Tokens in the bucket at `now`.
    pub fn available(&self, now: DateTime<Utc>, budget: &RateLimit) -> f64 {
        self.tokens_at(now, budget) as f64 / MICRO as f64
    }

    /// Whether requests are paused at `now`, and until when.
    pub fn paused(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.paused_until.filter(|u| *u > now)
    }

    /// Takes one request's token at `now` when there is one and no pause; otherwise says when
    /// to ask again. Changes the state only when granted.
    pub fn take(&mut self, now: DateTime<Utc>, budget: &RateLimit) -> Take {
        if let Some(until) = self.paused(now) {
            return Take::Paused(until);
        }
        let have = self.tokens_at(now, budget);
        if have >= MICRO {
            self.tokens = have - MICRO;
            self.refilled_at = self.refilled_at.max(now);
            return Take::Granted;
        }
        // Microseconds until the missing part has been refilled (rounded up).
        let per_minute = i64::from(budget.per_minute.max(1));
        let wait = ((MICRO - have) * 60 + per_minute - 1) / per_minute;
        Take::Empty(self.refilled_at.max(now) + Duration::microseconds(wait))
    }

    /// The concurrency limit at `now` for an app whose `max_concurrency` is `max`.
    pub fn concurrency(&self, max: u32, now: DateTime<Utc>) -> u32 {
        let max = max.max(1);
        match (self.concurrency, self.dropped_at) {
            (Some(c), Some(at)) => {
                let steps = (micros(now - at).max(0) / micros(RECOVER_STEP)).min(i64::from(max));
                (i64::from(c) + steps).min(i64::from(max)) as u32
            }
            _ => max,
        }
    }

    /// The app answered `429` or `5xx` at `now`: the concurrency limit halves, unless it
    /// dropped less than [`DROP_GAP`] ago. `true` when it dropped.
    pub fn overloaded(&mut self, max: u32, now: DateTime<Utc>) -> bool {
        if self.dropped_at.is_some_and(|at| now - at < DROP_GAP) {
            return false;
        }
        self.concurrency = Some((self.concurrency(max, now) / 2).max(1));
        self.dropped_at = Some(now);
        true
    }

    /// Pauses requests until `until` (at most [`MAX_PAUSE`] after `now`), never earlier than a
    /// pause already set.
    pub fn pause(&mut self, until: DateTime<Utc>, now: DateTime<Utc>) {
        let until = until.min(now + MAX_PAUSE);
        if self.paused_until.is_none_or(|p| p < until) {
            self.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::milliseconds(ms)
    }

    const BUDGET: RateLimit = RateLimit { per_minute: 120, burst: Some(5) };

    #[test]
    fn the_default_burst_is_a_tenth_at_least_one() {
        assert_eq!(RateLimit { per_minute: 600, burst: None }.burst(), 60);
        assert_eq!(RateLimit { per_minute: 5, burst: None }.burst(), 1);
        assert_eq!(RateLimit { per_minute: 120, burst: None }.normalized().burst, Some(12));
        let mut e = ValidationErrors::default();
        RateLimit { per_minute: 0, burst: Some(0) }.check("p", &mut e);
        let fields: Vec<&str> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["p.per_minute", "p.burst"]);
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_pace() {
        let mut s = RateState::new(t(0), Some(&BUDGET));
        for _ in 0..5 {
            assert_eq!(s.take(t(0), &BUDGET), Take::Granted);
        }
        // Two a second: the next token half a second later.
        assert_eq!(s.take(t(0), &BUDGET), Take::Empty(t(500)));
        assert_eq!(s.take(t(499), &BUDGET), Take::Empty(t(500)));
        assert_eq!(s.take(t(500), &BUDGET), Take::Granted);
        assert_eq!(s.take(t(700), &BUDGET), Take::Empty(t(1000)));
        // A quiet time refills up to the burst, no more.
        assert!((s.available(t(60_000), &BUDGET) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn no_window_gets_more_than_the_burst_plus_the_pace() {
        // Greedy senders asking every 10 ms for a minute and a half.
        let mut s = RateState::new(t(0), Some(&BUDGET));
        let mut sent = Vec::new();
        for ms in (0..90_000).step_by(10) {
            if s.take(t(ms), &BUDGET) == Take::Granted {
                sent.push(ms);
            }
        }
        for (i, from) in sent.iter().enumerate() {
            for (j, to) in sent.iter().enumerate().skip(i) {
                let allowed = 5 + (to - from) * 120 / 60_000;
                assert!((j - i + 1) as i64 <= allowed, "{} requests in [{from}, {to}] ms", j - i + 1);
            }
        }
        let in_a_minute = sent.iter().filter(|ms| **ms < 60_000).count();
        assert!(in_a_minute <= 125, "{in_a_minute}");
        assert!(in_a_minute >= 120, "the budget is used: {in_a_minute}");
    }

    #[test]
    fn a_pause_holds_every_request_and_never_shortens() {
        let mut s = RateState::new(t(0), Some(&BUDGET));
        s.pause(t(3000), t(0));
        s.pause(t(1000), t(0));
        assert_eq!(s.take(t(10), &BUDGET), Take::Paused(t(3000)));
        assert_eq!(s.take(t(3000), &BUDGET), Take::Granted);
        s.pause(t(10_000_000), t(4000));
        assert_eq!(s.paused_until, Some(t(4000) + MAX_PAUSE));
    }

    #[test]
    fn concurrency_halves_once_per_gap_then_grows_back_one_per_step() {
        let mut s = RateState::new(t(0), None);
        assert_eq!(s.concurrency(8, t(0)), 8);
        assert!(s.overloaded(8, t(0)));
        assert_eq!(s.concurrency(8, t(0)), 4);
        // Answers of the same overload, in flight together: one drop.
        assert!(!s.overloaded(8, t(1000)));
        assert_eq!(s.concurrency(8, t(1000)), 4);
        assert!(s.overloaded(8, t(2000)));
        assert_eq!(s.concurrency(8, t(2000)), 2);
        assert!(s.overloaded(8, t(4000)) && s.overloaded(8, t(6000)));
        assert_eq!(s.concurrency(8, t(6000)), 1, "never below one");
        assert_eq!(s.concurrency(8, t(15_999)), 1);
        assert_eq!(s.concurrency(8, t(16_000)), 2);
        assert_eq!(s.concurrency(8, t(66_000)), 7);
        assert_eq!(s.concurrency(8, t(600_000)), 8, "up to max_concurrency");
        assert_eq!(s.concurrency(3, t(600_000)), 3, "a lowered max_concurrency holds");
    }
}
