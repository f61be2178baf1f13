//! Bulk imports on PostgreSQL (written once in [`crate::sql::bulk`]): the change-feed rows are
//! recorded through the transaction, which writes them at commit, in commit order (see
//! [`crate::postgres`]).

use super::PostgresStore;
use crate::sql::bulk::BulkHooks;

impl BulkHooks for PostgresStore {}
