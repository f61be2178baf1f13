//! Where a directory-source sync's writes go: the [`DirectoryWriter`] seam.
//!
//! The source runner ([`crate::source_runner`]) reads the directory and plans each page
//! ([`crate::source_sync`]), but writes no user and no role membership itself: it hands each
//! page's [`SourceBatch`] to the writer it was given. The server's service layer implements
//! it (`crates/server/src/service/source_sync.rs`), so a sync's writes meet the same rules as
//! an admin's or a SCIM client's: the same validation (a manager that is nobody, the user
//! themself or a cycle is left out, with a note), the same audit entries and change feed, and
//! the same wake-up of the engine. Every writer of users goes through the service layer.

use async_trait::async_trait;
use directory::{Actor, DirectorySource, SkippedWrite, SourceBatch};
use uuid::Uuid;

use crate::runner::EngineError;

/// What became of one page's writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// User writes not made, and why (the rest of the page was written).
    pub skipped: Vec<SkippedWrite>,
    /// Values left out of writes that were made, and why, one line each naming the entry
    /// (e.g. a manager that would make a cycle).
    pub notes: Vec<String>,
    /// Updates that had nothing left to change once such values were left out: not written.
    pub unchanged: Vec<Uuid>,
}

/// Writes one page of a directory-source sync (its creates, updates, suspensions,
/// reactivations and role memberships) in one transaction, under the rules every writer of
/// users follows. `actor` is the source (see [`crate::source_runner::source_actor`]).
#[async_trait]
pub trait DirectoryWriter: Send + Sync {
    async fn apply_source_batch(
        &self,
        source: &DirectorySource,
        batch: SourceBatch,
        actor: &Actor,
    ) -> Result<BatchOutcome, EngineError>;
}
