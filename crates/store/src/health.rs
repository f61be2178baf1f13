//! Each app's health: quarantine (its queue paused after too many failures or refused
//! credentials), the probes that end it, and the last connection test. Kept in the store so
//! that every process sharing it sees the same state.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, ConnectionTest};
use uuid::Uuid;

use crate::Result;

/// An app's quarantine state and last connection test, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppHealthRecord {
    pub quarantined: bool,
    pub reason: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub next_probe: Option<DateTime<Utc>>,
    /// Connection tests made since the app was quarantined.
    pub probes: i64,
    /// Operations refused for the credentials in a row.
    pub auth_refusals: i64,
    /// Outcomes before this time (the last resume) do not count toward quarantine.
    pub counted_since: Option<DateTime<Utc>>,
    pub last_test: Option<ConnectionTest>,
}

/// An app's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Events held for review by the deprovisioning guard.
    pub held: i64,
    /// Operations queued or running.
    pub queued: i64,
    /// Operations finished since the time asked about (by whole minutes).
    pub finished: i64,
    /// The first of those minutes (Unix time / 60) in which an operation finished.
    pub first_minute: Option<i64>,
    /// Requests sent to the app in those minutes (counted for apps with a rate budget).
    pub requests: i64,
}

/// The operations of an app finished in a window, and how many of them failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeWindow {
    pub finished: i64,
    /// Failures of operations that ran (not resolved by a later success since).
    pub failed: i64,
}

#[async_trait]
pub trait HealthStore: Send + Sync + 'static {
    /// The app's health record (`None`: never quarantined nor tested).
    async fn get_app_health(&self, app: Uuid) -> Result<Option<AppHealthRecord>>;
    /// The app's held and queued operations, and those finished (and the requests sent) since
    /// `since`.
    async fn app_queue_counts(&self, app: Uuid, since: DateTime<Utc>) -> Result<QueueCounts>;
    /// The app's operations finished since `since` (or since its last resume, if later; the
    /// finished ones counted by whole minutes), and how many of them failed.
    async fn app_outcome_window(&self, app: Uuid, since: DateTime<Utc>) -> Result<OutcomeWindow>;
    /// Adds `n` operations refused for the credentials to the app's count in a row, and
    /// answers the new count. (Any operation of the app that succeeds sets it back to 0.)
    async fn add_auth_refusals(&self, app: Uuid, n: i64) -> Result<i64>;
    /// Quarantines an active app: no operation of it is claimed until it is resumed; the first
    /// probe is due at `next_probe`. Audited (`app.quarantine`) under `actor`. `false` (and
    /// nothing changes) when it already is quarantined.
    async fn quarantine_app(&self, app: Uuid, reason: &str, next_probe: DateTime<Utc>, actor: &Actor) -> Result<bool>;
    /// Quarantined apps (that still exist) whose next probe is due at `now`, with how many
    /// probes each had.
    async fn due_probes(&self, now: DateTime<Utc>) -> Result<Vec<(Uuid, i64)>>;
    /// Takes a due probe of a quarantined app that had `probes` probes: counts it and moves the
    /// next one to `next`. `false` when another process took it first (or the app was resumed).
    async fn take_probe(&self, app: Uuid, probes: i64, next: DateTime<Utc>) -> Result<bool>;
    /// Records the result of a connection test of the app.
    async fn record_connection_test(&self, app: Uuid, test: &ConnectionTest) -> Result<()>;
    /// Resumes a quarantined app: its queue runs again, its users are planned again (so that
    /// what failed is retried), and outcomes before now no longer count toward quarantine.
    /// Audited (`app.resume`, with `note`) under `actor`. `false` (and nothing changes) when it
    /// was not quarantined.
    async fn resume_app(&self, app: Uuid, actor: &Actor, note: &str) -> Result<bool>;
}
