//! Writing many users at once (imports, benchmark set-up): a few multi-row statements per
//! batch instead of one transaction per user. Each user still gets its change-feed row and
//! its audit entry (and so does each role membership), in the same transaction.

use async_trait::async_trait;
use directory::{Actor, User};
use uuid::Uuid;

use crate::Result;

/// Users per multi-row statement (well under both databases' limits on bound values).
pub(crate) const BULK_ROWS: usize = 500;

#[async_trait]
pub trait BulkStore: Send + Sync + 'static {
    /// Creates `users`, each made a member of every role in `roles`, in one transaction.
    /// Fails as a whole (nothing written) if any username is taken or a role is missing.
    async fn import_users(&self, users: &[User], roles: &[Uuid], actor: &Actor) -> Result<()>;
}
