//! [`BulkStore`] written once for both backends: multi-row `INSERT`s in one transaction, as
//! many rows per statement as the backend binds values ([`Dialect::MAX_BINDS`]). What differs
//! is how the change-feed rows of an import are written ([`BulkHooks`]).

use async_trait::async_trait;
use directory::{Actor, AuditAction, NewChange, User};
use uuid::Uuid;

use super::rows::{role_in, EMAIL_LOCK, USER_COLUMNS};
use super::{q, to_json, Arg, Backend, Dialect, Exec, Json, WriteTx};
use crate::bulk::{BulkStore, BULK_ROWS};
use crate::{Result, StoreError};

/// How a backend writes the change-feed rows of a bulk import.
#[async_trait]
pub trait BulkHooks: Backend {
    /// Records `changes`, none of them explained by an audit entry (`audit_id` 0), in order.
    /// By default one by one, through the transaction ([`WriteTx::change`]).
    async fn bulk_changes(tx: &mut Self::Tx, changes: Vec<NewChange>) -> Result<()> {
        for change in changes {
            tx.change(change).await?;
        }
        tx.attribute_changes(0).await
    }
}

/// Inserts `rows` (each a value per column of `head`, `INSERT INTO t (a, b, ...)`) with
/// multi-row `VALUES`, as many rows per statement as the backend can bind.
pub async fn insert_values<D: Dialect>(tx: &mut impl Exec<D>, head: &str, rows: Vec<Vec<Arg>>) -> Result<()> {
    let width = rows.first().map_or(1, Vec::len).max(1);
    let per_statement = (D::MAX_BINDS / width).max(1);
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut sql = q(head);
        sql.push(" VALUES ");
        for (i, row) in rows.by_ref().take(per_statement).enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" });
            for (j, value) in row.into_iter().enumerate() {
                if j > 0 {
                    sql.push(", ");
                }
                sql.push_bind(value);
            }
            sql.push(")");
        }
        tx.run(sql).await?;
    }
    Ok(())
}

#[async_trait]
impl<S: BulkHooks> BulkStore for S {
    async fn import_users(&self, users: &[User], roles: &[Uuid], actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        for role in roles {
            role_in(&mut tx, *role).await?;
        }
        let now = directory::now();
        for chunk in users.chunks(BULK_ROWS) {
            let rows = chunk.iter().map(user_values).collect::<Result<Vec<_>>>()?;
            let head = format!("INSERT INTO users (username_key, email_key, {USER_COLUMNS})");
            insert_values(&mut tx, &head, rows).await?;
            // One person, one NameID: no address given twice among the users not deleted.
            <S::Db as Dialect>::advisory_lock(tx.conn(), EMAIL_LOCK).await?;
            let keys: Vec<String> = chunk.iter().filter_map(|u| u.email.as_deref().map(User::email_key)).collect();
            if !keys.is_empty() {
                let mut sql = q("SELECT 1 AS one FROM users WHERE status <> 'deleted' AND ");
                <S::Db as Dialect>::push_in(&mut sql, "email_key", Arg::Texts(keys));
                sql.push(" GROUP BY email_key HAVING COUNT(*) > 1 LIMIT 1");
                if tx.opt(sql).await?.is_some() {
                    let _ = tx.rollback().await;
                    return Err(StoreError::Duplicate { field: "email" });
                }
            }

            if !roles.is_empty() {
                let links = chunk
                    .iter()
                    .flat_map(|u| roles.iter().map(move |r| vec![Arg::from(*r), Arg::from(u.id), Arg::from(now)]))
                    .collect();
                insert_values(&mut tx, "INSERT INTO role_users (role_id, user_id, created_at)", links).await?;
            }

            let mut changes = Vec::with_capacity(chunk.len() * (1 + roles.len()));
            let mut audit = Vec::with_capacity(chunk.len() * (1 + roles.len()));
            for u in chunk {
                changes.push(NewChange::user(u.id));
                audit.push(audit_values(actor, now, AuditAction::user(None, u.status), u.id, super::to_value(u)));
                for r in roles {
                    changes.push(NewChange::membership(*r, u.id));
                    let link = serde_json::json!({ "role_id": r, "user_id": u.id });
                    audit.push(audit_values(actor, now, AuditAction::role_user(true), *r, Some(link)));
                }
            }
            S::bulk_changes(&mut tx, changes).await?;
            let head =
                "INSERT INTO audit_log (at, actor_kind, actor_name, action, target_type, target_id, before, after)";
            insert_values(&mut tx, head, audit).await?;
        }
        tx.commit().await
    }
}

/// A user row's values, in the order of `username_key, email_key, USER_COLUMNS`.
fn user_values(user: &User) -> Result<Vec<Arg>> {
    Ok(vec![
        User::username_key(&user.username).into(),
        user.email.as_deref().map(User::email_key).into(),
        user.id.into(),
        user.username.clone().into(),
        user.email.clone().into(),
        user.first_name.clone().into(),
        user.last_name.clone().into(),
        user.display_name.clone().into(),
        user.title.clone().into(),
        user.department.clone().into(),
        user.manager_id.into(),
        user.phone.clone().into(),
        user.employee_number.clone().into(),
        to_json(&user.attributes)?.into(),
        to_json(&user.profile)?.into(),
        user.status.as_str().into(),
        user.source.as_str().into(),
        user.created_at.into(),
        user.updated_at.into(),
        user.version.into(),
    ])
}

/// An audit row's values (no `before`: an import only adds).
fn audit_values(
    actor: &Actor,
    at: chrono::DateTime<chrono::Utc>,
    action: AuditAction,
    target: Uuid,
    after: Option<serde_json::Value>,
) -> Vec<Arg> {
    vec![
        at.into(),
        actor.kind.clone().into(),
        actor.name.clone().into(),
        action.as_str().into(),
        action.target_type().into(),
        target.to_string().into(),
        None::<Json>.into(),
        after.map(Json).into(),
    ]
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Sqlite, SqliteConnection};

    use super::*;
    use crate::sql::RowGet;

    #[tokio::test]
    async fn rows_beyond_what_one_statement_binds_go_in_several() {
        let mut c = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        c.run(q("CREATE TABLE t (a INTEGER NOT NULL, b TEXT)")).await.unwrap();
        // Two values a row: MAX_BINDS rows need two statements.
        let n = <Sqlite as Dialect>::MAX_BINDS as i64 + 3;
        let rows = (0..n).map(|i| vec![Arg::from(i), Arg::from(format!("r{i}"))]).collect();
        insert_values::<Sqlite>(&mut c, "INSERT INTO t (a, b)", rows).await.unwrap();
        let row = c.one(q("SELECT COUNT(*) AS n, SUM(a) AS total FROM t")).await.unwrap();
        assert_eq!(row.int("n").unwrap(), n);
        assert_eq!(row.int("total").unwrap(), n * (n - 1) / 2);
        insert_values::<Sqlite>(&mut c, "INSERT INTO t (a, b)", Vec::new()).await.unwrap();
    }
}
