//! Domain types of the Provisioner directory: people, roles, apps (their mapping and SAML
//! settings), custom attribute definitions, directory sources, provisioning records, the
//! audit log and the change feed, and the planners' vocabulary (provisioning: [`plan`];
//! directory-source syncs: [`source_plan`]). Pure data and validation, no I/O; [`now`] is the
//! one place the wall clock is read.

pub mod app;
pub mod attribute;
pub mod audit;
pub mod change;
pub mod mapping;
pub mod plan;
pub mod profile;
pub mod provisioning;
pub mod rate;
pub mod role;
pub mod saml;
pub mod source;
pub mod source_plan;
pub mod user;
pub mod validation;

pub use app::{
    App, AppInput, Approval, AuthConfig, AuthInput, ConnectionConfig, ConnectionInput, ConnectorKind,
    DeprovisionAction, DeprovisionGuard, ProvisioningSettings, Secret, ValidatedApp,
};
pub use attribute::{AttributeDef, AttributeDefInput, AttributeType};
pub use audit::{Actor, AuditAction, AuditEntry};
pub use change::{Change, ChangeKind, NewChange};
pub use mapping::{Condition, EntitlementRef, Match, Op, Parameter, Rule, RuleAction, SetAttribute, Source, Transform};
pub use plan::{AccountWrite, Outcome, PairState, PlanItem, PlanWrite};
pub use profile::{Address, MultiValue, Profile, UserPath};
pub use provisioning::{
    Account, Action, AppHealth, Cause, ConnectionTest, Entitlement, EntitlementRefresh, Event, EventStatus,
    HealthState, OpState, Operation, Ownership, CAUSE_KINDS,
};
pub use rate::{RateBasis, RateLimit, RateState, Take};
pub use role::{Role, RoleInput, RoleRef};
pub use saml::SamlSettings;
pub use source::{
    DirectorySource, DisabledCondition, GroupMapping, SourceConfig, SourceFlavor, SourceInput, SourceKind, SourceLink,
    SourceSync, SyncCounts, SyncMode, SyncState,
};
pub use source_plan::{dn_key, LinkedUser, SkippedWrite, SourceBatch, SourceUpdate};
pub use user::{User, UserInput, UserSource, UserStatus};
pub use validation::{FieldError, ValidationErrors};

use serde::Serialize;
use utoipa::ToSchema;

/// One page of a list, with an opaque cursor for the next page (absent on the last page).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

/// Trims a text field; an empty result is treated as absent.
pub(crate) fn normalize_opt(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The current time, at the microsecond precision every store keeps.
///
/// The one place the wall clock is read (clippy.toml disallows `Utc::now` and friends
/// everywhere else): the runtime (the runner, the workers, the server's handlers, the store
/// stamping its rows) calls it and passes the time down; planning code takes it as a parameter.
#[allow(clippy::disallowed_methods, reason = "the one reading of the wall clock; everything else calls this")]
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
