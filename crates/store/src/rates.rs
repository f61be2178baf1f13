//! Each app's rate state, shared by every process using the store: the token bucket of its
//! rate budget, the pause its `Retry-After` asked for, and its concurrency limit lowered after
//! `429` or `5xx` answers. What the state means, and how it changes, is
//! [`directory::rate`]; the store keeps it and changes it atomically (each change reads the
//! app's row under a lock, applies the rule and writes it back, in one transaction).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{RateLimit, RateState, Take};
use uuid::Uuid;

use crate::Result;

#[async_trait]
pub trait RateStore: Send + Sync + 'static {
    /// The app's rate state (`None`: it has none yet: a full bucket, no pause, no drop).
    async fn get_rate_state(&self, app: Uuid) -> Result<Option<RateState>>;

    /// Takes the token of one request to the app at `now` from its budget ([`RateState::take`]),
    /// for every process sharing the store at once, and counts the request in the app's
    /// minute when granted.
    async fn take_rate_token(&self, app: Uuid, budget: &RateLimit, now: DateTime<Utc>) -> Result<Take>;

    /// The app answered `429` or `5xx` at `now`: its concurrency limit drops
    /// ([`RateState::overloaded`], from `max_concurrency`), and, when it said `Retry-After`,
    /// its requests pause until `pause_until` ([`RateState::pause`]). Answers the new state.
    async fn record_overload(
        &self,
        app: Uuid,
        budget: Option<&RateLimit>,
        max_concurrency: u32,
        pause_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<RateState>;
}
