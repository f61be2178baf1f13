//! The provisioning engine.
//!
//! - [`mapping`] and [`plan`] are pure: directory data and account records in, operations
//!   out. They decide everything and are tested exhaustively without I/O. So is
//!   [`source_sync`], a directory-source sync's planning. The pure modules name no storage:
//!   what they read and decide are the directory crate's types ([`directory::plan`],
//!   [`directory::source_plan`]).
//! - [`worker`] carries out one operation against an app through a [`connectors::Connector`].
//! - [`runner`] is the running engine: the planner loop that follows the change feed, the
//!   dispatcher that claims operations with a lease and runs them within each app's
//!   concurrency limit, the outcome recorder, and the connector cache. The engine builds
//!   connectors only through the [`ConnectorRegistry`] it is given. [`rate`] paces every
//!   request to an app (rate budgets, `Retry-After`, concurrency lowered after `429`/`5xx`)
//!   across every process sharing the store, and estimates when an app's queue is empty.
//! - [`source_runner`] runs directory-source syncs through the [`connectors::Source`] trait,
//!   each source opened by the [`SourceRegistry`] it is given; [`source_sync`] plans them, and
//!   each page is written through the [`DirectoryWriter`] it is given ([`source_writer`]: the
//!   server's service layer), never straight to the store.
//! - Time: planning code (plan, desired, dry runs, the guard, reconciliation, source sync
//!   planning) takes the time as a parameter; the runtime reads the clock with
//!   [`directory::now`] and passes it down.

pub mod admin;
pub mod desired;
pub mod dry_run;
pub mod guard;
pub mod mapping;
pub mod plan;
pub mod quarantine;
pub mod rate;
pub mod reconcile;
pub mod runner;
pub mod source_runner;
pub mod source_sync;
pub mod source_writer;
pub mod worker;

pub use admin::{Explanation, PlanPreview, PreviewSample};
/// The registries an engine and a source syncer are assembled with.
pub use connectors::{ConnectorRegistry, SourceRegistry};
pub use desired::DesiredSummary;
pub use quarantine::QuarantinePolicy;
pub use runner::{Engine, EngineConfig, EngineError, ProvisionStep, ReconcileReport};
pub use source_runner::{SourceSyncer, SyncDryRun, SyncPreview};
pub use source_writer::{BatchOutcome, DirectoryWriter};

#[cfg(test)]
mod clock {
    /// Planning code never reads the clock (clippy.toml keeps `Utc::now` out; this keeps out
    /// `directory::now` too): its callers pass the time down.
    #[test]
    fn planning_code_takes_the_time_as_a_parameter() {
        let planning = [
            ("plan.rs", include_str!("plan.rs")),
            ("desired.rs", include_str!("desired.rs")),
            ("dry_run.rs", include_str!("dry_run.rs")),
            ("guard.rs", include_str!("guard.rs")),
            ("reconcile.rs", include_str!("reconcile.rs")),
            ("source_sync.rs", include_str!("source_sync.rs")),
            ("mapping.rs", include_str!("mapping.rs")),
        ];
        for (file, text) in planning {
            let production = text.split("#[cfg(test)]").next().unwrap_or(text);
            assert!(!production.contains("now()"), "{file} reads the clock; take the time as a parameter");
        }
    }
}

#[cfg(test)]
mod storage {
    /// The pure planning modules depend on no storage: what they read and decide are the
    /// directory crate's types; loading and writing them belong to the runners.
    #[test]
    fn pure_planning_code_names_no_store() {
        let pure = [
            ("plan.rs", include_str!("plan.rs")),
            ("mapping.rs", include_str!("mapping.rs")),
            ("source_sync.rs", include_str!("source_sync.rs")),
        ];
        for (file, text) in pure {
            let production = text.split("#[cfg(test)]").next().unwrap_or(text);
            assert!(!production.contains("store::"), "{file} names the store; take the directory crate's types");
        }
    }
}
