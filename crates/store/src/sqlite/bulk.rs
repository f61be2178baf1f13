//! Bulk imports on SQLite (written once in [`crate::sql::bulk`]): the change-feed rows go in
//! multi-row `INSERT`s, as the users do, rather than one by one (the one writer keeps them in
//! order).

use async_trait::async_trait;
use directory::NewChange;

use super::{SqliteStore, Tx};
use crate::sql::bulk::{insert_values, BulkHooks};
use crate::Result;

#[async_trait]
impl BulkHooks for SqliteStore {
    async fn bulk_changes(tx: &mut Tx, changes: Vec<NewChange>) -> Result<()> {
        let at = directory::now();
        let rows = changes
            .into_iter()
            .map(|c| {
                vec![
                    at.into(),
                    c.kind.as_str().into(),
                    c.user_id.into(),
                    c.role_id.into(),
                    c.app_id.into(),
                    0i64.into(),
                ]
            })
            .collect();
        insert_values(tx, "INSERT INTO changes (at, kind, user_id, role_id, app_id, audit_id)", rows).await
    }
}
