//! Entitlements imported from apps by "Refresh", and the refresh's progress.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Entitlement, EntitlementRefresh, Page};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{PageRequest, Result};

/// How the latest reconcile or Refresh of an app read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppRead {
    /// `reconcile` or `refresh`.
    pub kind: String,
    /// The job's result: strategy, contradictions, duplicate members...
    pub result: Value,
    pub recorded_at: DateTime<Utc>,
}

#[async_trait]
pub trait EntitlementStore: Send + Sync + 'static {
    /// Starts a refresh of an app's entitlements; `false` when one is already running (and
    /// was started less than `stale_after` ago).
    async fn begin_entitlement_refresh(&self, app: Uuid, stale_after: Duration) -> Result<bool>;
    /// Records a page of values read from the app (id, display name) and the progress.
    async fn record_entitlements(
        &self,
        app: Uuid,
        kind: &str,
        items: &[(String, String)],
        fetched: i64,
        total: Option<i64>,
    ) -> Result<()>;
    /// Ends the refresh. On success, values of `kind` the app no longer has are removed.
    async fn finish_entitlement_refresh(&self, app: Uuid, kind: &str, error: Option<&str>) -> Result<()>;
    async fn entitlement_refresh(&self, app: Uuid) -> Result<Option<EntitlementRefresh>>;
    /// An app's values, by display name.
    async fn list_entitlements(&self, app: Uuid, page: &PageRequest) -> Result<Page<Entitlement>>;
    /// The values of `kind` with these display names (compared without case).
    async fn find_entitlements(&self, app: Uuid, kind: &str, names: &[String]) -> Result<Vec<Entitlement>>;
    /// Records one value (e.g. a group provisioning created).
    async fn add_entitlement(&self, app: Uuid, kind: &str, remote_id: &str, display_name: &str) -> Result<()>;
    /// Records how the latest `kind` (`reconcile` or `refresh`) read the app, replacing the
    /// previous one.
    async fn record_app_read(&self, app: Uuid, kind: &str, result: &Value) -> Result<()>;
    /// The latest read of each kind, by kind.
    async fn app_reads(&self, app: Uuid) -> Result<Vec<AppRead>>;
}
