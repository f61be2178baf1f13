//! [`BulkStore`] for SQLite: multi-row INSERTs in one transaction.

use super::*;
use crate::bulk::{BulkStore, BULK_ROWS};

#[async_trait]
impl BulkStore for SqliteStore {
    async fn import_users(&self, users: &[User], roles: &[Uuid], actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        for role in roles {
            Self::role_in(&mut tx, *role).await?;
        }
        let now = ts(&directory::now());
        for chunk in users.chunks(BULK_ROWS) {
            let mut qb =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO users (username_key, email_key, {USER_COLUMNS}) "));
            let mut failed = None;
            qb.push_values(chunk, |mut b, user| {
                let attributes = match to_json(&user.attributes) {
                    Ok(a) => a,
                    Err(e) => {
                        failed = Some(e);
                        String::new()
                    }
                };
                b.push_bind(User::username_key(&user.username))
                    .push_bind(user.email.as_deref().map(User::email_key))
                    .push_bind(user.id.to_string())
                    .push_bind(user.username.clone())
                    .push_bind(user.email.clone())
                    .push_bind(user.first_name.clone())
                    .push_bind(user.last_name.clone())
                    .push_bind(user.display_name.clone())
                    .push_bind(user.title.clone())
                    .push_bind(user.department.clone())
                    .push_bind(user.manager_id.map(|m| m.to_string()))
                    .push_bind(user.phone.clone())
                    .push_bind(user.employee_number.clone())
                    .push_bind(attributes)
                    .push_bind(user.status.as_str())
                    .push_bind(user.source.as_str())
                    .push_bind(ts(&user.created_at))
                    .push_bind(ts(&user.updated_at))
                    .push_bind(user.version);
            });
            if let Some(e) = failed {
                return Err(e);
            }
            qb.build().execute(&mut *tx).await.map_err(backend)?;
            // One person, one NameID: no address given twice among the users not deleted.
            let keys: Vec<String> = chunk.iter().filter_map(|u| u.email.as_deref().map(User::email_key)).collect();
            let mut qb =
                QueryBuilder::<Sqlite>::new("SELECT 1 FROM users WHERE status <> 'deleted' AND email_key IN (");
            let mut sep = qb.separated(", ");
            for k in &keys {
                sep.push_bind(k.clone());
            }
            qb.push(") GROUP BY email_key HAVING COUNT(*) > 1 LIMIT 1");
            if !keys.is_empty() && qb.build().fetch_optional(&mut *tx).await.map_err(backend)?.is_some() {
                return Err(StoreError::Duplicate { field: "email" });
            }

            if !roles.is_empty() {
                let links: Vec<(Uuid, Uuid)> =
                    chunk.iter().flat_map(|u| roles.iter().map(move |r| (*r, u.id))).collect();
                let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO role_users (role_id, user_id, created_at) ");
                qb.push_values(&links, |mut b, (role, user)| {
                    b.push_bind(role.to_string()).push_bind(user.to_string()).push_bind(now.clone());
                });
                qb.build().execute(&mut *tx).await.map_err(backend)?;
            }

            let mut changes: Vec<NewChange> = Vec::with_capacity(chunk.len() * (1 + roles.len()));
            for u in chunk {
                changes.push(NewChange::user(u.id));
                changes.extend(roles.iter().map(|r| NewChange::membership(*r, u.id)));
            }
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO changes (at, kind, user_id, role_id, app_id, audit_id) ");
            qb.push_values(&changes, |mut b, c| {
                b.push_bind(now.clone())
                    .push_bind(c.kind.as_str())
                    .push_bind(c.user_id.map(|u| u.to_string()))
                    .push_bind(c.role_id.map(|u| u.to_string()))
                    .push_bind(c.app_id.map(|u| u.to_string()))
                    .push_bind(0i64);
            });
            qb.build().execute(&mut *tx).await.map_err(backend)?;

            let mut audit: Vec<(&str, &str, String, Option<String>)> = Vec::new();
            for u in chunk {
                audit.push(("user.create", "user", u.id.to_string(), to_value(u).map(|v| v.to_string())));
                for r in roles {
                    let link = serde_json::json!({ "role_id": r, "user_id": u.id }).to_string();
                    audit.push(("role.add_user", "role", r.to_string(), Some(link)));
                }
            }
            for part in audit.chunks(BULK_ROWS) {
                let mut qb = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO audit_log (at, actor_kind, actor_name, action, target_type, target_id, before, after) ",
                );
                qb.push_values(part, |mut b, (action, target_type, id, after)| {
                    b.push_bind(now.clone())
                        .push_bind(actor.kind.clone())
                        .push_bind(actor.name.clone())
                        .push_bind(*action)
                        .push_bind(*target_type)
                        .push_bind(id.clone())
                        .push_bind(None::<String>)
                        .push_bind(after.clone());
                });
                qb.build().execute(&mut *tx).await.map_err(backend)?;
            }
        }
        tx.commit().await.map_err(backend)
    }
}
