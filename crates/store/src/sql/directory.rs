//! [`Store`] written once for both backends: users, roles and their members and apps, apps,
//! API tokens, attribute definitions, the audit log and the change feed. What an audit entry
//! calls a write is decided by [`AuditAction`] (in the `directory` crate); the two hooks that
//! differ per backend (health, wake-ups) are [`Backend`]'s.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{Actor, App, AttributeDef, AuditAction, AuditEntry, Change, NewChange, Page, Role, User, UserStatus};
use serde_json::Value;
use uuid::Uuid;

use super::rows::{
    app_from_row, app_in, connector_str, insert_user_row, record_audit, role_from_row, role_in, token_from_row,
    user_from_row, user_in, write_user_row, AuditRecord, APP_COLUMNS, ROLE_COLUMNS, TOKEN_COLUMNS, USER_COLUMNS,
};
use super::scim_filter::{FilterDialect, JsonRead};
use super::{
    check_version, cursor_uuid, like_pattern, limit_of, paginate, q, to_json, to_value, Arg, Backend, Dialect, Exec,
    Json, Query, RowGet, WriteTx,
};
use crate::{
    cursor, AdminStore, AuditQuery, EmailConflict, EntitlementStore, HealthStore, NameQuery, ProvisioningStore,
    RateStore, Result, SamlStore, ScimStore, SourceStore, Store, StoreError, TokenRecord, UserQuery, Wakeup,
};

/// The most change-feed rows one [`Store::changes_after`] call reads.
const MAX_CHANGES: u32 = 10_000;
/// The most held changes one [`Store::changes_past_holds`] call reads (a bulk request of 4 MiB
/// makes far fewer).
const MAX_HELD: u32 = 200_000;

const DEF_COLUMNS: &str = "name, kind, description, created_at";

fn def_from_row(r: &impl RowGet) -> Result<AttributeDef> {
    Ok(AttributeDef {
        name: r.text("name")?,
        kind: r.parsed("kind", directory::AttributeType::parse)?,
        description: r.opt_text("description")?,
        created_at: r.time("created_at")?,
    })
}

/// Counts (as `n`) the users that are not deleted and hold a value of the custom attribute `name`.
fn holders<D: FilterDialect>(name: &str) -> Query {
    let mut count = q("SELECT COUNT(*) AS n FROM users WHERE users.status <> 'deleted' AND ");
    D::json(&mut count, name, JsonRead::Text);
    count.push(" IS NOT NULL");
    count
}

#[async_trait]
impl<S> Store for S
where
    S: Backend
        + ProvisioningStore
        + EntitlementStore
        + AdminStore
        + SamlStore
        + ScimStore
        + SourceStore
        + HealthStore
        + RateStore,
    S::Db: FilterDialect,
{
    async fn health(&self) -> Result<()> {
        Backend::health(self).await
    }

    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<Wakeup>> {
        Backend::wakeups(self)
    }

    async fn count_tokens(&self) -> Result<i64> {
        let mut c = self.read().await?;
        c.one(q("SELECT COUNT(*) AS n FROM api_tokens WHERE revoked_at IS NULL")).await?.int("n")
    }

    async fn create_token(&self, token: &TokenRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("INSERT INTO api_tokens (id, name, lookup, hash, created_at) VALUES (?, ?, ?, ?, ?)")
                .bind(token.id)
                .bind(&token.name)
                .bind(&token.lookup)
                .bind(&token.hash)
                .bind(token.created_at),
        )
        .await?;
        let after = serde_json::json!({"id": token.id, "name": token.name, "created_at": token.created_at});
        let rec = AuditRecord {
            action: "token.create",
            target_type: "token",
            target_id: token.id.to_string(),
            before: None,
            after: Some(after),
        };
        record_audit(&mut tx, actor, rec).await?;
        tx.commit().await
    }

    async fn find_token_by_lookup(&self, lookup: &str) -> Result<Option<TokenRecord>> {
        let mut c = self.read().await?;
        let row = c.opt(q(format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE lookup = ?")).bind(lookup)).await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut c = self.read().await?;
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE revoked_at IS NULL ORDER BY created_at, id");
        c.all(q(sql)).await?.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: Uuid, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let now = directory::now();
        let row = tx
            .one(
                q("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING name")
                    .bind(now)
                    .bind(id),
            )
            .await?;
        let name = row.text("name")?;
        let rec = AuditRecord {
            action: "token.revoke",
            target_type: "token",
            target_id: id.to_string(),
            before: None,
            after: Some(serde_json::json!({"name": name, "revoked_at": now})),
        };
        record_audit(&mut tx, actor, rec).await?;
        tx.commit().await
    }

    async fn token_used(&self, id: Uuid, lookup: &str, at: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(q("UPDATE api_tokens SET lookup = ?, last_used_at = ? WHERE id = ?").bind(lookup).bind(at).bind(id))
            .await?;
        tx.commit().await
    }

    async fn list_attribute_defs(&self) -> Result<Vec<AttributeDef>> {
        let mut c = self.read().await?;
        let rows = c.all(q(format!("SELECT {DEF_COLUMNS} FROM attribute_defs ORDER BY name"))).await?;
        rows.iter().map(def_from_row).collect()
    }

    async fn create_attribute_def(&self, def: &AttributeDef, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("INSERT INTO attribute_defs (name, kind, description, created_at) VALUES (?, ?, ?, ?)")
                .bind(&def.name)
                .bind(def.kind.as_str())
                .bind(def.description.as_ref())
                .bind(def.created_at),
        )
        .await?;
        let rec = AuditRecord {
            action: "attribute.create",
            target_type: "attribute",
            target_id: def.name.clone(),
            before: None,
            after: to_value(def),
        };
        record_audit(&mut tx, actor, rec).await?;
        tx.commit().await
    }

    async fn count_attribute_holders(&self, name: &str) -> Result<u64> {
        let mut c = self.read_fresh().await?;
        Ok(c.one(holders::<S::Db>(name)).await?.int("n")?.max(0) as u64)
    }

    async fn delete_attribute_def(&self, name: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let row = tx
            .opt(q(format!("SELECT {DEF_COLUMNS} FROM attribute_defs WHERE name = ?")).bind(name))
            .await?
            .ok_or(StoreError::NotFound)?;
        let def = def_from_row(&row)?;
        // The row is gone for every other writer from here (PostgreSQL: locked until commit).
        tx.run(q("DELETE FROM attribute_defs WHERE name = ?").bind(name)).await?;
        let live = tx.one(holders::<S::Db>(name)).await?.int("n")?;
        if live > 0 {
            let _ = tx.rollback().await;
            return Err(StoreError::InvalidState(format!("{live} user(s) hold a value of {name}")));
        }
        let mut select = q("SELECT id, attributes FROM users WHERE ");
        <S::Db as FilterDialect>::json(&mut select, name, JsonRead::Text);
        select.push(" IS NOT NULL");
        for r in tx.all(select).await? {
            let mut attributes: serde_json::Map<String, Value> = r.json("attributes")?;
            attributes.remove(name);
            tx.run(
                q("UPDATE users SET attributes = ? WHERE id = ?")
                    .bind(Json(Value::Object(attributes)))
                    .bind(r.id("id")?),
            )
            .await?;
        }
        let rec = AuditRecord {
            action: "attribute.delete",
            target_type: "attribute",
            target_id: def.name.clone(),
            before: to_value(&def),
            after: None,
        };
        record_audit(&mut tx, actor, rec).await?;
        tx.commit().await
    }

    async fn create_user(&self, user: &User, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        // A refused write ends its transaction at once: it may hold the e-mail lock.
        if let Err(e) = insert_user_row(&mut tx, user, None, false).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.change(NewChange::user(user.id)).await?;
        let action = AuditAction::user(None, user.status);
        record_audit(&mut tx, actor, AuditRecord::of(action, user.id, None, to_value(user))).await?;
        tx.commit().await
    }

    async fn get_user(&self, id: Uuid) -> Result<Option<User>> {
        let mut c = self.read().await?;
        let row = c.opt(q(format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?")).bind(id)).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Page<User>> {
        let mut sql = q(format!("SELECT {USER_COLUMNS} FROM users WHERE "));
        match query.status {
            Some(s) => sql.push("status = ?").add(s.as_str()),
            None => sql.push("status <> 'deleted'"),
        };
        if let Some(text) = query.q.as_deref().filter(|t| !t.is_empty()) {
            let pattern = like_pattern(text);
            sql.push(" AND (");
            for (i, col) in ["username_key", "email", "first_name", "last_name", "display_name"].iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                sql.push(format!("{col} {} ? ESCAPE '\\'", <S::Db as Dialect>::ILIKE)).add(pattern.clone());
            }
            sql.push(")");
        }
        if let Some(role) = query.role {
            sql.push(" AND EXISTS (SELECT 1 FROM role_users ru WHERE ru.user_id = users.id AND ru.role_id = ?)")
                .add(role);
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 2)?;
            sql.push(" AND (username_key, id) > (?, ?)").add(key[0].clone()).add(cursor_uuid(&key[1])?);
        }
        sql.push(" ORDER BY username_key, id LIMIT ?").add(limit_of(&query.page) + 1);
        let rows = self.read().await?.all(sql).await?;
        let users = rows.iter().map(user_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(users, &query.page, |u| vec![User::username_key(&u.username), u.id.to_string()]))
    }

    async fn users_by_email(&self, email: &str) -> Result<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email_key = ? AND status <> 'deleted' ORDER BY username_key, id"
        );
        let rows = self.read().await?.all(q(sql).bind(User::email_key(email))).await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn email_conflicts(&self) -> Result<Vec<EmailConflict>> {
        let sql = format!(
            "SELECT email_key AS conflict_key, {USER_COLUMNS} FROM users WHERE status <> 'deleted' AND email_key IN \
             (SELECT email_key FROM users WHERE status <> 'deleted' AND email_key IS NOT NULL \
              GROUP BY email_key HAVING COUNT(*) > 1) ORDER BY email_key, username_key, id"
        );
        let rows = self.read().await?.all(q(sql)).await?;
        let rows = rows.iter().map(|row| Ok((row.text("conflict_key")?, user_from_row(row)?)));
        Ok(EmailConflict::group(rows.collect::<Result<Vec<_>>>()?))
    }

    async fn update_user(&self, user: &User, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = user_in(&mut tx, user.id).await?;
        if before.status == UserStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        check_version(before.version, Some(expected_version))?;
        // A refused write ends its transaction at once: it may hold the e-mail lock.
        if let Err(e) = write_user_row(&mut tx, user).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.change(NewChange::user(user.id)).await?;
        let action = AuditAction::user(Some(before.status), user.status);
        record_audit(&mut tx, actor, AuditRecord::of(action, user.id, to_value(&before), to_value(user))).await?;
        tx.commit().await
    }

    async fn delete_user(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<User> {
        let mut tx = self.begin().await?;
        let before = user_in(&mut tx, id).await?;
        if before.status == UserStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        check_version(before.version, expected_version)?;
        let after = User {
            status: UserStatus::Deleted,
            updated_at: directory::now(),
            version: before.version + 1,
            ..before.clone()
        };
        tx.run(
            q("UPDATE users SET status = 'deleted', updated_at = ?, version = ? WHERE id = ?")
                .bind(after.updated_at)
                .bind(after.version)
                .bind(id),
        )
        .await?;
        let mut roles =
            ids(&mut tx, q("DELETE FROM role_users WHERE user_id = ? RETURNING role_id AS id").bind(id)).await?;
        roles.sort();
        for role in roles {
            tx.change(NewChange::membership(role, id)).await?;
        }
        tx.change(NewChange::user(id)).await?;
        let action = AuditAction::user(Some(before.status), after.status);
        record_audit(&mut tx, actor, AuditRecord::of(action, id, to_value(&before), to_value(&after))).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn create_role(&self, role: &Role, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("INSERT INTO roles (id, name, name_key, description, pushable, created_at, updated_at, version) \
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(role.id)
            .bind(&role.name)
            .bind(role.name.to_lowercase())
            .bind(role.description.as_ref())
            .bind(role.pushable)
            .bind(role.created_at)
            .bind(role.updated_at)
            .bind(role.version),
        )
        .await?;
        tx.change(NewChange::role(role.id)).await?;
        record_audit(&mut tx, actor, AuditRecord::of(AuditAction::role(false), role.id, None, to_value(role))).await?;
        tx.commit().await
    }

    async fn get_role(&self, id: Uuid) -> Result<Option<Role>> {
        let mut c = self.read().await?;
        let row = c.opt(q(format!("SELECT {ROLE_COLUMNS} FROM roles WHERE id = ?")).bind(id)).await?;
        row.as_ref().map(role_from_row).transpose()
    }

    async fn list_roles(&self, query: &NameQuery) -> Result<Page<Role>> {
        let rows = self.read().await?.all(list_named("roles", ROLE_COLUMNS, query)?).await?;
        let roles = rows.iter().map(role_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(roles, &query.page, |r| vec![r.name.to_lowercase(), r.id.to_string()]))
    }

    async fn update_role(&self, role: &Role, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = role_in(&mut tx, role.id).await?;
        check_version(before.version, Some(expected_version))?;
        tx.run(
            q("UPDATE roles SET name = ?, name_key = ?, description = ?, pushable = ?, updated_at = ?, version = ? \
               WHERE id = ?")
            .bind(&role.name)
            .bind(role.name.to_lowercase())
            .bind(role.description.as_ref())
            .bind(role.pushable)
            .bind(role.updated_at)
            .bind(role.version)
            .bind(role.id),
        )
        .await?;
        tx.change(NewChange::role(role.id)).await?;
        let rec = AuditRecord::of(AuditAction::role(true), role.id, to_value(&before), to_value(role));
        record_audit(&mut tx, actor, rec).await?;
        tx.commit().await
    }

    async fn delete_role(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = role_in(&mut tx, id).await?;
        check_version(before.version, expected_version)?;
        let users =
            ids(&mut tx, q("SELECT user_id AS id FROM role_users WHERE role_id = ? ORDER BY user_id").bind(id)).await?;
        let apps =
            ids(&mut tx, q("SELECT app_id AS id FROM role_apps WHERE role_id = ? ORDER BY app_id").bind(id)).await?;
        tx.run(q("DELETE FROM roles WHERE id = ?").bind(id)).await?;
        // Members lose what the role granted: each of them is a change for the engine.
        for user in &users {
            tx.change(NewChange::membership(id, *user)).await?;
        }
        for app in &apps {
            tx.change(NewChange::role_app(id, *app)).await?;
        }
        tx.change(NewChange::role(id)).await?;
        let mut before_value = to_value(&before).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut before_value {
            map.insert("user_ids".into(), serde_json::json!(users));
            map.insert("app_ids".into(), serde_json::json!(apps));
        }
        record_audit(&mut tx, actor, AuditRecord::of(AuditAction::RoleDelete, id, Some(before_value), None)).await?;
        tx.commit().await
    }

    async fn add_role_user(&self, role: Uuid, user: Uuid, actor: &Actor) -> Result<bool> {
        link(self, Link::User, role, user, true, actor).await
    }

    async fn remove_role_user(&self, role: Uuid, user: Uuid, actor: &Actor) -> Result<bool> {
        link(self, Link::User, role, user, false, actor).await
    }

    async fn roles_of_user(&self, user: Uuid) -> Result<Vec<Role>> {
        let sql = format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE id IN (SELECT role_id FROM role_users WHERE user_id = ?) \
             ORDER BY name_key"
        );
        self.read().await?.all(q(sql).bind(user)).await?.iter().map(role_from_row).collect()
    }

    async fn add_role_app(&self, role: Uuid, app: Uuid, actor: &Actor) -> Result<bool> {
        link(self, Link::App, role, app, true, actor).await
    }

    async fn remove_role_app(&self, role: Uuid, app: Uuid, actor: &Actor) -> Result<bool> {
        link(self, Link::App, role, app, false, actor).await
    }

    async fn apps_of_role(&self, role: Uuid) -> Result<Vec<App>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE id IN (SELECT app_id FROM role_apps WHERE role_id = ?) \
             ORDER BY name_key"
        );
        self.read().await?.all(q(sql).bind(role)).await?.iter().map(app_from_row).collect()
    }

    async fn roles_of_app(&self, app: Uuid) -> Result<Vec<Role>> {
        let sql = format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE id IN (SELECT role_id FROM role_apps WHERE app_id = ?) \
             ORDER BY name_key"
        );
        self.read().await?.all(q(sql).bind(app)).await?.iter().map(role_from_row).collect()
    }

    async fn create_app(&self, app: &App, credential: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("INSERT INTO apps (id, name, name_key, description, connector, connection, credential, provisioning, \
               parameters, rules, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(app.id)
            .bind(&app.name)
            .bind(app.name.to_lowercase())
            .bind(app.description.as_ref())
            .bind(connector_str(app)?)
            .bind(to_json(&app.connection)?)
            .bind(credential)
            .bind(to_json(&app.provisioning)?)
            .bind(app.parameters.as_ref().map(to_json).transpose()?)
            .bind(to_json(&app.rules)?)
            .bind(app.created_at)
            .bind(app.updated_at)
            .bind(app.version),
        )
        .await?;
        tx.change(NewChange::app(app.id)).await?;
        record_audit(&mut tx, actor, AuditRecord::of(AuditAction::AppCreate, app.id, None, to_value(app))).await?;
        tx.commit().await
    }

    async fn get_app(&self, id: Uuid) -> Result<Option<App>> {
        let mut c = self.read().await?;
        let row = c.opt(q(format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?")).bind(id)).await?;
        row.as_ref().map(app_from_row).transpose()
    }

    async fn list_apps(&self, query: &NameQuery) -> Result<Page<App>> {
        let rows = self.read().await?.all(list_named("apps", APP_COLUMNS, query)?).await?;
        let apps = rows.iter().map(app_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(apps, &query.page, |a| vec![a.name.to_lowercase(), a.id.to_string()]))
    }

    async fn update_app(
        &self,
        app: &App,
        credential: Option<&str>,
        expected_version: i64,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = app_in(&mut tx, app.id).await?;
        check_version(before.version, Some(expected_version))?;
        tx.run(
            q("UPDATE apps SET name = ?, name_key = ?, description = ?, connector = ?, connection = ?, \
               credential = COALESCE(?, credential), provisioning = ?, updated_at = ?, version = ? WHERE id = ?")
            .bind(&app.name)
            .bind(app.name.to_lowercase())
            .bind(app.description.as_ref())
            .bind(connector_str(app)?)
            .bind(to_json(&app.connection)?)
            .bind(credential)
            .bind(to_json(&app.provisioning)?)
            .bind(app.updated_at)
            .bind(app.version)
            .bind(app.id),
        )
        .await?;
        tx.change(NewChange::app(app.id)).await?;
        let mut after = to_value(app);
        if let (Some(Value::Object(map)), true) = (&mut after, credential.is_some()) {
            // Say that the credential changed, never what it is.
            map.insert("credential_changed".into(), Value::Bool(true));
        }
        record_audit(&mut tx, actor, AuditRecord::of(AuditAction::AppUpdate, app.id, to_value(&before), after)).await?;
        // A new concurrency limit may let more operations run.
        tx.wake_operations();
        tx.commit().await
    }

    async fn update_app_mapping(&self, app: &App, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = app_in(&mut tx, app.id).await?;
        check_version(before.version, Some(expected_version))?;
        tx.run(
            q("UPDATE apps SET parameters = ?, rules = ?, updated_at = ?, version = ? WHERE id = ?")
                .bind(app.parameters.as_ref().map(to_json).transpose()?)
                .bind(to_json(&app.rules)?)
                .bind(app.updated_at)
                .bind(app.version)
                .bind(app.id),
        )
        .await?;
        tx.change(NewChange::app(app.id)).await?;
        let mapping = |a: &App| serde_json::json!({"parameters": a.parameters, "rules": a.rules});
        let rec = AuditRecord::of(AuditAction::AppMapping, app.id, Some(mapping(&before)), Some(mapping(app)));
        record_audit(&mut tx, actor, rec).await?;
        tx.commit().await
    }

    async fn delete_app(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = app_in(&mut tx, id).await?;
        check_version(before.version, expected_version)?;
        tx.run(q("DELETE FROM apps WHERE id = ?").bind(id)).await?;
        tx.change(NewChange::app(id)).await?;
        record_audit(&mut tx, actor, AuditRecord::of(AuditAction::AppDelete, id, to_value(&before), None)).await?;
        tx.commit().await
    }

    async fn get_app_credential(&self, id: Uuid) -> Result<Option<String>> {
        let row = self.read().await?.opt(q("SELECT credential FROM apps WHERE id = ?").bind(id)).await?;
        row.map(|r| r.text("credential")).transpose()
    }

    async fn append_audit(
        &self,
        actor: &Actor,
        action: &str,
        target_type: &str,
        target_id: &str,
        details: Option<Value>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let rec = AuditRecord { action, target_type, target_id: target_id.to_owned(), before: None, after: details };
        record_audit(&mut tx, actor, rec).await?;
        tx.commit().await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let mut sql = q("SELECT id, at, actor_kind, actor_name, action, target_type, target_id, before, after \
                         FROM audit_log WHERE 1 = 1");
        if let Some(t) = &query.target_type {
            sql.push(" AND target_type = ?").add(t);
        }
        if let Some(t) = &query.target_id {
            sql.push(" AND target_id = ?").add(t);
        }
        if let Some(a) = &query.actor {
            sql.push(" AND actor_name = ?").add(a);
        }
        if let Some(ids) = &query.ids {
            sql.push(" AND ");
            <S::Db as Dialect>::push_in(&mut sql, "id", Arg::Ints(ids.clone()));
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 1)?;
            let id: i64 = key[0].parse().map_err(|_| StoreError::InvalidCursor)?;
            sql.push(" AND id < ?").add(id);
        }
        sql.push(" ORDER BY id DESC LIMIT ?").add(limit_of(&query.page) + 1);
        let rows = self.read().await?.all(sql).await?;
        let entries = rows
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.int("id")?,
                    at: r.time("at")?,
                    actor: Actor { kind: r.text("actor_kind")?, name: r.text("actor_name")? },
                    action: r.text("action")?,
                    target_type: r.text("target_type")?,
                    target_id: r.text("target_id")?,
                    // Details that cannot be read back are left out rather than hiding the entry.
                    before: r.opt_value("before").unwrap_or_default(),
                    after: r.opt_value("after").unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(entries, &query.page, |e| vec![e.id.to_string()]))
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>> {
        let rows = self
            .read()
            .await?
            .all(
                q("SELECT seq, at, kind, user_id, role_id, app_id, audit_id FROM changes WHERE seq > ? \
                   ORDER BY seq LIMIT ?")
                .bind(after)
                .bind(i64::from(limit.clamp(1, MAX_CHANGES))),
            )
            .await?;
        change_rows(&rows)
    }

    async fn changes_to_plan(&self, after: i64, limit: u32) -> Result<Vec<Change>> {
        let mut c = self.read().await?;
        let now = directory::now();
        // The holds that matter: open ones, and released ones the planner has not passed.
        let holds = c
            .all(
                q("SELECT after_seq, end_seq FROM change_holds \
                   WHERE (closed_at IS NULL AND expires_at > ?) OR (closed_at IS NOT NULL AND end_seq > ?)")
                .bind(now)
                .bind(after),
            )
            .await?
            .iter()
            .map(|r| Ok((r.int("after_seq")?, r.opt_int("end_seq")?)))
            .collect::<Result<Vec<_>>>()?;
        let stop = hold_stop(&holds);
        // The open holds again, in the statement that reads the feed: a hold begun since the
        // read above stops it too (it sees the hold whenever it sees the hold's changes).
        let open = "SELECT MIN(after_seq) FROM change_holds WHERE closed_at IS NULL AND expires_at > ?";
        let read = |from: i64, to: i64, limit: Option<i64>| {
            let mut query = q("SELECT seq, at, kind, user_id, role_id, app_id, audit_id FROM changes \
                               WHERE seq > ? AND seq <= ? AND seq <= COALESCE((")
            .bind(from)
            .bind(to);
            query.push(open).add(now).push("), ?) ORDER BY seq").add(i64::MAX);
            if let Some(n) = limit {
                query.push(" LIMIT ?").add(n);
            }
            query
        };
        let mut changes = change_rows(&c.all(read(after, stop, Some(i64::from(limit.clamp(1, MAX_CHANGES))))).await?)?;
        // Reaching into a released hold's changes: through its last one.
        if let Some(last) = changes.last().map(|c| c.seq) {
            let end = holds
                .iter()
                .filter_map(|(start, end)| end.filter(|e| *start < last && last < *e))
                .max()
                .map(|e| e.min(stop));
            if let Some(end) = end {
                changes.extend(change_rows(&c.all(read(last, end, None)).await?)?);
            }
        }
        Ok(changes)
    }

    async fn hold_changes(&self, ttl: std::time::Duration) -> Result<Uuid> {
        let now = directory::now();
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let expires = now.checked_add_signed(ttl).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let id = Uuid::new_v4();
        let mut tx = self.begin().await?;
        // Holds released or lapsed an hour ago are of no use to anyone.
        let stale = now - chrono::Duration::hours(1);
        tx.run(q("DELETE FROM change_holds WHERE closed_at < ? OR expires_at < ?").bind(stale).bind(stale)).await?;
        tx.run(
            q("INSERT INTO change_holds (id, after_seq, opened_at, expires_at) \
               SELECT ?, COALESCE(MAX(seq), 0), ?, ? FROM changes")
            .bind(id)
            .bind(now)
            .bind(expires),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn changes_past_holds(&self, after: i64) -> Result<Vec<Change>> {
        // Nothing when no hold matters (the subquery is NULL): one read of a tiny table.
        let rows = self
            .read()
            .await?
            .all(
                q("SELECT seq, at, kind, user_id, role_id, app_id, audit_id FROM changes WHERE seq > ? AND seq > \
                   (SELECT MIN(after_seq) FROM change_holds \
                    WHERE (closed_at IS NULL AND expires_at > ?) OR (closed_at IS NOT NULL AND end_seq > ?)) \
                   ORDER BY seq LIMIT ?")
                .bind(after)
                .bind(directory::now())
                .bind(after)
                .bind(i64::from(MAX_HELD)),
            )
            .await?;
        change_rows(&rows)
    }

    async fn release_changes(&self, hold: Uuid) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.run(
            q("UPDATE change_holds SET closed_at = ?, end_seq = (SELECT COALESCE(MAX(seq), 0) FROM changes) \
               WHERE id = ? AND closed_at IS NULL")
            .bind(directory::now())
            .bind(hold),
        )
        .await?;
        tx.commit().await
    }
}

/// Change-feed rows as changes.
fn change_rows(rows: &[impl RowGet]) -> Result<Vec<Change>> {
    rows.iter()
        .map(|r| {
            Ok(Change {
                seq: r.int("seq")?,
                at: r.time("at")?,
                kind: r.parsed("kind", directory::ChangeKind::parse)?,
                user_id: r.opt_id("user_id")?,
                role_id: r.opt_id("role_id")?,
                app_id: r.opt_id("app_id")?,
                // 0: a change no audit entry explains (an account change, a bulk import).
                audit_id: r.opt_int("audit_id")?.filter(|id| *id > 0),
            })
        })
        .collect()
}

/// Where the planner stops, given the holds `(after_seq, end_seq)` (`end_seq` `None`: open):
/// at the start of the first open hold, and never inside a released hold that reaches past
/// that point (its changes are planned together once the open hold is released too).
fn hold_stop(holds: &[(i64, Option<i64>)]) -> i64 {
    let mut stop = holds.iter().filter(|(_, end)| end.is_none()).map(|(start, _)| *start).min().unwrap_or(i64::MAX);
    loop {
        let earlier = holds
            .iter()
            .filter(|(start, end)| end.is_some_and(|e| *start < stop && stop < e))
            .map(|(start, _)| *start)
            .min();
        match earlier {
            Some(start) => stop = start,
            None => return stop,
        }
    }
}

/// The ids (column `id`) a query returns.
async fn ids<D: Dialect>(c: &mut impl Exec<D>, query: Query) -> Result<Vec<Uuid>> {
    c.all(query).await?.iter().map(|r| r.id("id")).collect()
}

/// Lists roles or apps by name, with text search and keyset pagination (one row more than the
/// page, see [`paginate`]).
fn list_named(table: &str, columns: &str, query: &NameQuery) -> Result<Query> {
    let mut sql = q(format!("SELECT {columns} FROM {table} WHERE 1 = 1"));
    if let Some(text) = query.q.as_deref().filter(|t| !t.is_empty()) {
        sql.push(" AND name_key LIKE ? ESCAPE '\\'").add(like_pattern(text));
    }
    if let Some(c) = &query.page.cursor {
        let key = cursor::decode(c, 2)?;
        sql.push(" AND (name_key, id) > (?, ?)").add(key[0].clone()).add(cursor_uuid(&key[1])?);
    }
    sql.push(" ORDER BY name_key, id LIMIT ?").add(limit_of(&query.page) + 1);
    Ok(sql)
}

/// A role's link to a user (membership) or to an app.
#[derive(Clone, Copy)]
enum Link {
    User,
    App,
}

/// Adds or removes a link row (role member, role app) with its change and audit entry; whether
/// anything changed.
async fn link<S: Backend>(store: &S, link: Link, role: Uuid, other: Uuid, add: bool, actor: &Actor) -> Result<bool> {
    let mut tx = store.begin().await?;
    role_in(&mut tx, role).await?;
    let (table, column, change, noun, action) = match link {
        Link::User => {
            let user = user_in(&mut tx, other).await?;
            if add && user.status == UserStatus::Deleted {
                return Err(StoreError::NotFound);
            }
            ("role_users", "user_id", NewChange::membership(role, other), "user", AuditAction::role_user(add))
        }
        Link::App => {
            app_in(&mut tx, other).await?;
            ("role_apps", "app_id", NewChange::role_app(role, other), "app", AuditAction::role_app(add))
        }
    };
    let statement = if add {
        q(format!("INSERT INTO {table} (role_id, {column}, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"))
            .bind(role)
            .bind(other)
            .bind(directory::now())
    } else {
        q(format!("DELETE FROM {table} WHERE role_id = ? AND {column} = ?")).bind(role).bind(other)
    };
    let done = tx.run(statement).await? > 0;
    if done {
        tx.change(change).await?;
        let value = serde_json::json!({ "role_id": role, format!("{noun}_id"): other });
        let (before, after) = if add { (None, Some(value)) } else { (Some(value), None) };
        record_audit(&mut tx, actor, AuditRecord::of(action, role, before, after)).await?;
    }
    tx.commit().await?;
    Ok(done)
}
