//! The inbound-SCIM room, written once for both backends: SCIM clients, users and groups with
//! the `externalId` a client gave them, and searches whose filters [`super::scim_filter`] renders
//! (what the backends spell differently there is their [`FilterDialect`]).

use std::collections::BTreeSet;

use async_trait::async_trait;
use directory::{Actor, AuditAction, NewChange, UserStatus};
use serde_json::Value;
use uuid::Uuid;

use super::rows::{
    check_email, insert_user_row, record_audit, role_from_row, role_in, set_user_password_in, update_user_set,
    user_from_row, user_in, AuditRecord, ROLE_COLUMNS, USER_COLUMNS,
};
use super::scim_filter::{order_sql, to_sql, FilterDialect, FilterSqlError, SqlField};
use super::{check_version, q, to_value, Backend, Exec, RowGet, WriteTx};
use crate::scim::{
    GroupField, Member, ScimClientRecord, ScimGroup, ScimQuery, ScimScope, ScimStore, ScimUser, UserField,
};
use crate::{Result, StoreError};

/// The columns of a client.
const CLIENT_COLUMNS: &str =
    "id, name, lookup, hash, created_at, revoked_at, users_scope, users_source_id, roles_scope, \
                              read_only, passwords, legacy_scope";

fn client_from_row(r: &impl RowGet) -> Result<ScimClientRecord> {
    let (users, roles) = (r.text("users_scope")?, r.text("roles_scope")?);
    let scope = ScimScope::from_columns(
        &users,
        r.opt_id("users_source_id")?,
        &roles,
        r.flag("read_only")?,
        r.flag("passwords")?,
    )
    .ok_or_else(|| StoreError::Backend(format!("bad SCIM client scope {users}/{roles}")))?;
    Ok(ScimClientRecord {
        id: r.id("id")?,
        name: r.text("name")?,
        lookup: r.text("lookup")?,
        hash: r.text("hash")?,
        created_at: r.time("created_at")?,
        revoked_at: r.opt_time("revoked_at")?,
        scope,
        legacy_scope: r.flag("legacy_scope")?,
    })
}

fn scim_user_from_row(r: &impl RowGet) -> Result<ScimUser> {
    Ok(ScimUser {
        user: user_from_row(r)?,
        external_id: r.opt_text("scim_external_id")?,
        owner: r.opt_id("scim_client_id")?,
    })
}

fn scim_group_from_row(r: &impl RowGet) -> Result<ScimGroup> {
    Ok(ScimGroup {
        role: role_from_row(r)?,
        external_id: r.opt_text("scim_external_id")?,
        owner: r.opt_id("scim_client_id")?,
    })
}

fn bad_filter(e: FilterSqlError) -> StoreError {
    StoreError::InvalidState(format!("invalid filter: {e}"))
}

/// Counts the matches of a search and reads its window.
async fn search<D: FilterDialect, F: SqlField>(
    c: &mut impl Exec<D>,
    table: &str,
    columns: &str,
    base: &str,
    query: &ScimQuery<F>,
) -> Result<(u64, Vec<D::Row>)> {
    let mut count = q(format!("SELECT COUNT(*) AS n FROM {table} WHERE {base} AND "));
    to_sql::<D, F>(&mut count, &query.filter).map_err(bad_filter)?;
    let total = c.one(count).await?.int("n")?.max(0) as u64;
    if query.count == 0 {
        return Ok((total, vec![]));
    }
    let mut window = q(format!("SELECT {columns} FROM {table} WHERE {base} AND "));
    to_sql::<D, F>(&mut window, &query.filter).map_err(bad_filter)?;
    window.push(" ORDER BY ");
    order_sql::<D, F>(&mut window, query.sort.as_ref(), &format!("{table}.id")).map_err(bad_filter)?;
    window.push(" LIMIT ? OFFSET ?").add(i64::from(query.count)).add(query.offset.min(i64::MAX as u64) as i64);
    Ok((total, c.all(window).await?))
}

/// A client's scope as its audit entries show it.
fn scope_json(scope: &ScimScope) -> Value {
    let (users, source, roles) = scope.columns();
    serde_json::json!({"users": users, "source_id": source, "roles": roles, "read_only": scope.read_only,
        "passwords": scope.passwords})
}

#[async_trait]
impl<S: Backend> ScimStore for S
where
    S::Db: FilterDialect,
{
    async fn create_scim_client(&self, client: &ScimClientRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let (users, source, roles) = client.scope.columns();
        tx.run(
            q("INSERT INTO scim_clients (id, name, lookup, hash, created_at, users_scope, users_source_id, roles_scope, \
               read_only, passwords, legacy_scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(client.id)
            .bind(&client.name)
            .bind(&client.lookup)
            .bind(&client.hash)
            .bind(client.created_at)
            .bind(users)
            .bind(source)
            .bind(roles)
            .bind(client.scope.read_only)
            .bind(client.scope.passwords)
            .bind(client.legacy_scope),
        )
        .await?;
        let after = serde_json::json!({"id": client.id, "name": client.name, "created_at": client.created_at,
            "scope": scope_json(&client.scope)});
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "scim_client.create",
                target_type: "scim_client",
                target_id: client.id.to_string(),
                before: None,
                after: Some(after),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn list_scim_clients(&self) -> Result<Vec<ScimClientRecord>> {
        let rows = self
            .read()
            .await?
            .all(q(format!(
                "SELECT {CLIENT_COLUMNS} FROM scim_clients WHERE revoked_at IS NULL ORDER BY created_at, id"
            )))
            .await?;
        rows.iter().map(client_from_row).collect()
    }

    async fn find_scim_client_by_lookup(&self, lookup: &str) -> Result<Option<ScimClientRecord>> {
        let row = self
            .read_fresh()
            .await?
            .opt(q(format!("SELECT {CLIENT_COLUMNS} FROM scim_clients WHERE lookup = ?")).bind(lookup))
            .await?;
        row.as_ref().map(client_from_row).transpose()
    }

    async fn revoke_scim_client(&self, id: Uuid, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let now = directory::now();
        let done = tx
            .run(q("UPDATE scim_clients SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL").bind(now).bind(id))
            .await?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "scim_client.revoke",
                target_type: "scim_client",
                target_id: id.to_string(),
                before: None,
                after: Some(serde_json::json!({"revoked_at": now})),
            },
        )
        .await?;
        tx.commit().await
    }

    async fn set_scim_client_scope(&self, id: Uuid, scope: &ScimScope, actor: &Actor) -> Result<ScimClientRecord> {
        let mut tx = self.begin().await?;
        let (users, source, roles) = scope.columns();
        let done = tx
            .run(
                q("UPDATE scim_clients SET users_scope = ?, users_source_id = ?, roles_scope = ?, read_only = ?, \
                   passwords = ?, legacy_scope = FALSE WHERE id = ? AND revoked_at IS NULL")
                .bind(users)
                .bind(source)
                .bind(roles)
                .bind(scope.read_only)
                .bind(scope.passwords)
                .bind(id),
            )
            .await?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        let row = tx.one(q(format!("SELECT {CLIENT_COLUMNS} FROM scim_clients WHERE id = ?")).bind(id)).await?;
        let record = client_from_row(&row)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "scim_client.scope",
                target_type: "scim_client",
                target_id: id.to_string(),
                before: None,
                after: Some(serde_json::json!({"name": record.name, "scope": scope_json(scope)})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn rekey_scim_client(&self, id: Uuid, lookup: &str) -> Result<()> {
        // One statement on its own (SQLite: on the writer connection).
        self.read_fresh()
            .await?
            .run(q("UPDATE scim_clients SET lookup = ? WHERE id = ?").bind(lookup).bind(id))
            .await?;
        Ok(())
    }

    async fn scim_user(&self, id: Uuid) -> Result<Option<ScimUser>> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, scim_external_id, scim_client_id FROM users WHERE id = ? AND status <> 'deleted'"
        );
        let row = self.read_fresh().await?.opt(q(sql).bind(id)).await?;
        row.as_ref().map(scim_user_from_row).transpose()
    }

    async fn scim_users(&self, query: &ScimQuery<UserField>) -> Result<(u64, Vec<ScimUser>)> {
        let columns = format!("{USER_COLUMNS}, scim_external_id, scim_client_id");
        let mut c = self.read().await?;
        let (n, rows) = search(&mut c, "users", &columns, "users.status <> 'deleted'", query).await?;
        Ok((n, rows.iter().map(scim_user_from_row).collect::<Result<_>>()?))
    }

    async fn scim_save_user(
        &self,
        su: &ScimUser,
        expected_version: Option<i64>,
        password_hash: Option<&str>,
        actor: &Actor,
    ) -> Result<()> {
        let user = &su.user;
        let mut tx = self.begin().await?;
        let before = match expected_version {
            None => {
                // A refused write ends its transaction at once: it may hold the e-mail lock.
                if let Err(e) = insert_user_row(&mut tx, user, su.external_id.as_deref(), false).await {
                    let _ = tx.rollback().await;
                    return Err(e);
                }
                if let Some(owner) = su.owner {
                    tx.run(q("UPDATE users SET scim_client_id = ? WHERE id = ?").bind(owner).bind(user.id)).await?;
                }
                None
            }
            Some(expected) => {
                let before = user_in(&mut tx, user.id).await?;
                if before.status == UserStatus::Deleted {
                    return Err(StoreError::NotFound);
                }
                check_version(before.version, Some(expected))?;
                if user.version == before.version {
                    // Unchanged: the password alone is written.
                    if let Some(hash) = password_hash {
                        set_user_password_in(&mut tx, user.id, hash, actor).await?;
                    }
                    return tx.commit().await;
                }
                let mut update = update_user_set(user)?;
                update.push(", scim_external_id = ? WHERE id = ?").add(su.external_id.as_ref()).add(user.id);
                let updated = async {
                    check_email(&mut tx, user).await?;
                    tx.run(update).await
                }
                .await;
                if let Err(e) = updated {
                    // As above: the e-mail lock goes with the transaction.
                    let _ = tx.rollback().await;
                    return Err(e);
                }
                Some(before)
            }
        };
        tx.change(NewChange::user(user.id)).await?;
        let action = AuditAction::user(before.as_ref().map(|b| b.status), user.status);
        let mut after = to_value(user);
        if let Some(Value::Object(m)) = after.as_mut() {
            m.insert("external_id".into(), serde_json::json!(su.external_id));
        }
        record_audit(&mut tx, actor, AuditRecord::of(action, user.id, before.as_ref().and_then(to_value), after))
            .await?;
        if let Some(hash) = password_hash {
            set_user_password_in(&mut tx, user.id, hash, actor).await?;
        }
        tx.commit().await
    }

    async fn scim_group(&self, id: Uuid) -> Result<Option<ScimGroup>> {
        let sql = format!("SELECT {ROLE_COLUMNS}, scim_external_id, scim_client_id FROM roles WHERE id = ?");
        let row = self.read_fresh().await?.opt(q(sql).bind(id)).await?;
        row.as_ref().map(scim_group_from_row).transpose()
    }

    async fn scim_groups(&self, query: &ScimQuery<GroupField>) -> Result<(u64, Vec<ScimGroup>)> {
        let columns = format!("{ROLE_COLUMNS}, scim_external_id, scim_client_id");
        let mut c = self.read().await?;
        let (n, rows) = search(&mut c, "roles", &columns, "1 = 1", query).await?;
        Ok((n, rows.iter().map(scim_group_from_row).collect::<Result<_>>()?))
    }

    async fn scim_members(&self, role: Uuid) -> Result<Vec<Member>> {
        let rows = self
            .read_fresh()
            .await?
            .all(
                q("SELECT u.id, u.username FROM role_users ru JOIN users u ON u.id = ru.user_id \
                   WHERE ru.role_id = ? ORDER BY u.username_key, u.id")
                .bind(role),
            )
            .await?;
        rows.iter().map(|r| Ok(Member { id: r.id("id")?, username: r.text("username")? })).collect()
    }

    async fn scim_save_group(
        &self,
        group: &ScimGroup,
        members: Option<&[Uuid]>,
        expected_version: Option<i64>,
        actor: &Actor,
    ) -> Result<()> {
        let role = &group.role;
        let mut tx = self.begin().await?;
        let before = match expected_version {
            None => {
                tx.run(
                    q("INSERT INTO roles (id, name, name_key, description, created_at, updated_at, version, \
                       scim_external_id, scim_client_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
                    .bind(role.id)
                    .bind(&role.name)
                    .bind(role.name.to_lowercase())
                    .bind(role.description.as_ref())
                    .bind(role.created_at)
                    .bind(role.updated_at)
                    .bind(role.version)
                    .bind(group.external_id.as_ref())
                    .bind(group.owner),
                )
                .await?;
                None
            }
            Some(expected) => {
                let before = role_in(&mut tx, role.id).await?;
                check_version(before.version, Some(expected))?;
                tx.run(
                    q("UPDATE roles SET name = ?, name_key = ?, description = ?, updated_at = ?, version = ?, \
                       scim_external_id = ? WHERE id = ?")
                    .bind(&role.name)
                    .bind(role.name.to_lowercase())
                    .bind(role.description.as_ref())
                    .bind(role.updated_at)
                    .bind(role.version)
                    .bind(group.external_id.as_ref())
                    .bind(role.id),
                )
                .await?;
                Some(before)
            }
        };
        tx.change(NewChange::role(role.id)).await?;
        let mut after = to_value(role);
        if let Some(Value::Object(m)) = after.as_mut() {
            m.insert("external_id".into(), serde_json::json!(group.external_id));
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord::of(AuditAction::role(before.is_some()), role.id, before.as_ref().and_then(to_value), after),
        )
        .await?;
        let Some(members) = members else {
            return tx.commit().await;
        };
        let current = tx
            .all(q("SELECT user_id AS id FROM role_users WHERE role_id = ?").bind(role.id))
            .await?
            .iter()
            .map(|r| r.id("id"))
            .collect::<Result<Vec<Uuid>>>()?;
        let wanted: BTreeSet<Uuid> = members.iter().copied().collect();
        for user in wanted.iter().filter(|u| !current.contains(u)) {
            let live = tx.opt(q("SELECT 1 AS one FROM users WHERE id = ? AND status <> 'deleted'").bind(user)).await?;
            if live.is_none() {
                return Err(StoreError::MissingReference { field: "members" });
            }
            tx.run(
                q("INSERT INTO role_users (role_id, user_id, created_at) VALUES (?, ?, ?)")
                    .bind(role.id)
                    .bind(user)
                    .bind(directory::now()),
            )
            .await?;
            tx.change(NewChange::membership(role.id, *user)).await?;
            record_audit(
                &mut tx,
                actor,
                AuditRecord::of(
                    AuditAction::role_user(true),
                    role.id,
                    None,
                    Some(serde_json::json!({"role_id": role.id, "user_id": user})),
                ),
            )
            .await?;
        }
        for user in current.iter().filter(|u| !wanted.contains(u)) {
            tx.run(q("DELETE FROM role_users WHERE role_id = ? AND user_id = ?").bind(role.id).bind(user)).await?;
            tx.change(NewChange::membership(role.id, *user)).await?;
            record_audit(
                &mut tx,
                actor,
                AuditRecord::of(
                    AuditAction::role_user(false),
                    role.id,
                    Some(serde_json::json!({"role_id": role.id, "user_id": user})),
                    None,
                ),
            )
            .await?;
        }
        tx.commit().await
    }
}
