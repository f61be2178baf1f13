//! [`BulkStore`] for PostgreSQL: multi-row INSERTs in one transaction.

use super::*;
use crate::bulk::{BulkStore, BULK_ROWS};

#[async_trait]
impl BulkStore for PostgresStore {
    async fn import_users(&self, users: &[User], roles: &[Uuid], actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        for role in roles {
            Self::role_in(&mut tx, *role).await?;
        }
        let now = directory::now();
        for chunk in users.chunks(BULK_ROWS) {
            let mut qb =
                QueryBuilder::<Postgres>::new(format!("INSERT INTO users (username_key, email_key, {USER_COLUMNS}) "));
            let mut failed = None;
            qb.push_values(chunk, |mut b, user| {
                let attributes = match to_json(&user.attributes) {
                    Ok(a) => a,
                    Err(e) => {
                        failed = Some(e);
                        Value::Null
                    }
                };
                b.push_bind(User::username_key(&user.username))
                    .push_bind(user.email.as_deref().map(User::email_key))
                    .push_bind(user.id)
                    .push_bind(user.username.clone())
                    .push_bind(user.email.clone())
                    .push_bind(user.first_name.clone())
                    .push_bind(user.last_name.clone())
                    .push_bind(user.display_name.clone())
                    .push_bind(user.title.clone())
                    .push_bind(user.department.clone())
                    .push_bind(user.manager_id)
                    .push_bind(user.phone.clone())
                    .push_bind(user.employee_number.clone())
                    .push_bind(attributes)
                    .push_bind(user.status.as_str())
                    .push_bind(user.source.as_str())
                    .push_bind(user.created_at)
                    .push_bind(user.updated_at)
                    .push_bind(user.version);
            });
            if let Some(e) = failed {
                return Err(e);
            }
            qb.build().execute(tx.c()).await.map_err(backend)?;
            // One person, one NameID: no address given twice among the users not deleted.
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(EMAIL_LOCK.0)
                .bind(EMAIL_LOCK.1)
                .execute(tx.c())
                .await
                .map_err(backend)?;
            let keys: Vec<String> = chunk.iter().filter_map(|u| u.email.as_deref().map(User::email_key)).collect();
            let taken = sqlx::query(
                "SELECT 1 FROM users WHERE status <> 'deleted' AND email_key = ANY($1) \
                 GROUP BY email_key HAVING COUNT(*) > 1 LIMIT 1",
            )
            .bind(&keys)
            .fetch_optional(tx.c())
            .await
            .map_err(backend)?;
            if taken.is_some() {
                let _ = tx.rollback().await;
                return Err(StoreError::Duplicate { field: "email" });
            }

            if !roles.is_empty() {
                let links: Vec<(Uuid, Uuid)> =
                    chunk.iter().flat_map(|u| roles.iter().map(move |r| (*r, u.id))).collect();
                let mut qb = QueryBuilder::<Postgres>::new("INSERT INTO role_users (role_id, user_id, created_at) ");
                qb.push_values(&links, |mut b, (role, user)| {
                    b.push_bind(*role).push_bind(*user).push_bind(now);
                });
                qb.build().execute(tx.c()).await.map_err(backend)?;
            }

            let mut audit: Vec<(&str, &str, String, Option<Value>)> = Vec::new();
            for u in chunk {
                tx.change(NewChange::user(u.id));
                audit.push(("user.create", "user", u.id.to_string(), to_value(u)));
                for r in roles {
                    tx.change(NewChange::membership(*r, u.id));
                    audit.push((
                        "role.add_user",
                        "role",
                        r.to_string(),
                        Some(serde_json::json!({ "role_id": r, "user_id": u.id })),
                    ));
                }
            }
            for part in audit.chunks(BULK_ROWS) {
                let mut qb = QueryBuilder::<Postgres>::new(
                    "INSERT INTO audit_log (at, actor_kind, actor_name, action, target_type, target_id, before, after) ",
                );
                qb.push_values(part, |mut b, (action, target_type, id, after)| {
                    b.push_bind(now)
                        .push_bind(actor.kind.clone())
                        .push_bind(actor.name.clone())
                        .push_bind(*action)
                        .push_bind(*target_type)
                        .push_bind(id.clone())
                        .push_bind(None::<Value>)
                        .push_bind(after.clone());
                });
                qb.build().execute(tx.c()).await.map_err(backend)?;
            }
        }
        tx.commit().await
    }
}
