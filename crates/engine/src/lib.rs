//! The provisioning engine.
//!
//! - [`mapping`] and [`plan`] are pure: directory data and account records in, operations
//!   out. They decide everything and are tested exhaustively without I/O.
//! - [`worker`] carries out one operation against an app through a [`connectors::Connector`].
//! - [`runner`] is the running engine: the planner loop that follows the change feed, the
//!   dispatcher that claims operations with a lease and runs them within each app's
//!   concurrency limit, the outcome recorder, and the connector cache. The engine builds
//!   connectors only through the [`ConnectorRegistry`] it is given.
//! - [`source_runner`] runs directory-source syncs through the [`connectors::Source`] trait,
//!   each source opened by the [`SourceRegistry`] it is given; [`source_sync`] plans them.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::todo, clippy::unimplemented))]

pub mod admin;
pub mod desired;
pub mod dry_run;
pub mod guard;
pub mod mapping;
pub mod plan;
pub mod quarantine;
pub mod reconcile;
pub mod runner;
pub mod source_runner;
pub mod source_sync;
pub mod worker;

pub use admin::{Explanation, PlanPreview, PreviewSample};
/// The registries an engine and a source syncer are assembled with.
pub use connectors::{ConnectorRegistry, SourceRegistry};
pub use desired::DesiredSummary;
pub use quarantine::QuarantinePolicy;
pub use runner::{Engine, EngineConfig, EngineError, ProvisionStep, ReconcileReport};
pub use source_runner::{SourceSyncer, SyncDryRun, SyncPreview};
