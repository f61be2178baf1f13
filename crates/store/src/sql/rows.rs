//! The directory's rows, written once for both backends: column lists, row mappers, the audit
//! entry every write records, and the user-row writes that several rooms of the store share.

use directory::{Actor, App, AuditAction, Role, User, UserStatus};
use serde_json::Value;
use uuid::Uuid;

use super::{q, to_json, Dialect, Exec, Query, RowGet, WriteTx};
use crate::{Result, StoreError, TokenRecord};

pub const USER_COLUMNS: &str = "id, username, email, first_name, last_name, display_name, title, \
    department, manager_id, phone, employee_number, attributes, status, source, created_at, \
    updated_at, version";

pub fn user_from_row(row: &impl RowGet) -> Result<User> {
    Ok(User {
        id: row.id("id")?,
        username: row.text("username")?,
        email: row.opt_text("email")?,
        first_name: row.opt_text("first_name")?,
        last_name: row.opt_text("last_name")?,
        display_name: row.opt_text("display_name")?,
        title: row.opt_text("title")?,
        department: row.opt_text("department")?,
        manager_id: row.opt_id("manager_id")?,
        phone: row.opt_text("phone")?,
        employee_number: row.opt_text("employee_number")?,
        attributes: row.json("attributes")?,
        status: row.parsed("status", directory::UserStatus::parse)?,
        source: row.parsed("source", directory::UserSource::parse)?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        version: row.int("version")?,
    })
}

pub const TOKEN_COLUMNS: &str = "id, name, lookup, hash, created_at, revoked_at, last_used_at";

pub fn token_from_row(r: &impl RowGet) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.id("id")?,
        name: r.text("name")?,
        lookup: r.text("lookup")?,
        hash: r.text("hash")?,
        created_at: r.time("created_at")?,
        revoked_at: r.opt_time("revoked_at")?,
        last_used_at: r.opt_time("last_used_at")?,
    })
}

pub const ROLE_COLUMNS: &str = "id, name, description, pushable, created_at, updated_at, version";

pub fn role_from_row(row: &impl RowGet) -> Result<Role> {
    Ok(Role {
        id: row.id("id")?,
        name: row.text("name")?,
        description: row.opt_text("description")?,
        pushable: row.flag("pushable")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        version: row.int("version")?,
    })
}

pub const APP_COLUMNS: &str =
    "id, name, description, connector, connection, provisioning, parameters, rules, created_at, updated_at, version";

pub fn app_from_row(row: &impl RowGet) -> Result<App> {
    let connector = row.text("connector")?;
    Ok(App {
        id: row.id("id")?,
        name: row.text("name")?,
        description: row.opt_text("description")?,
        connector: serde_json::from_value(Value::String(connector)).map_err(|e| StoreError::Backend(e.to_string()))?,
        connection: row.json("connection")?,
        provisioning: row.json("provisioning")?,
        parameters: row.opt_json("parameters")?,
        rules: row.json("rules")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        version: row.int("version")?,
    })
}

/// How an app's connector kind is stored (its serde name).
pub fn connector_str(app: &App) -> Result<String> {
    match serde_json::to_value(app.connector).map_err(|e| StoreError::Backend(e.to_string()))? {
        Value::String(s) => Ok(s),
        other => Err(StoreError::Backend(format!("bad connector {other}"))),
    }
}

/// One row by id inside a write transaction, locked for the rest of it where the backend locks
/// rows; `NotFound` when missing.
pub async fn row_in<D: Dialect, T>(
    tx: &mut impl Exec<D>,
    table: &str,
    columns: &str,
    id: Uuid,
    map: fn(&D::Row) -> Result<T>,
) -> Result<T> {
    let row = tx.one(q(format!("SELECT {columns} FROM {table} WHERE id = ?{}", D::FOR_UPDATE)).bind(id)).await?;
    map(&row)
}

pub async fn user_in<D: Dialect>(tx: &mut impl Exec<D>, id: Uuid) -> Result<User> {
    row_in(tx, "users", USER_COLUMNS, id, user_from_row).await
}

pub async fn role_in<D: Dialect>(tx: &mut impl Exec<D>, id: Uuid) -> Result<Role> {
    row_in(tx, "roles", ROLE_COLUMNS, id, role_from_row).await
}

pub async fn app_in<D: Dialect>(tx: &mut impl Exec<D>, id: Uuid) -> Result<App> {
    row_in(tx, "apps", APP_COLUMNS, id, app_from_row).await
}

/// An audit entry to record.
pub struct AuditRecord<'a> {
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl AuditRecord<'static> {
    /// An entry about a user, a role or an app, named by what the write did (decided by
    /// [`AuditAction`], not here).
    pub fn of(action: AuditAction, target_id: Uuid, before: Option<Value>, after: Option<Value>) -> Self {
        AuditRecord {
            action: action.as_str(),
            target_type: action.target_type(),
            target_id: target_id.to_string(),
            before,
            after,
        }
    }
}

/// Records an audit entry; the changes this transaction recorded before it are attributed to it.
pub async fn record_audit<D: Dialect>(tx: &mut impl WriteTx<D>, actor: &Actor, rec: AuditRecord<'_>) -> Result<()> {
    let row = tx
        .one(
            q("INSERT INTO audit_log (at, actor_kind, actor_name, action, target_type, target_id, before, after) \
               VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id")
            .bind(directory::now())
            .bind(&actor.kind)
            .bind(&actor.name)
            .bind(rec.action)
            .bind(rec.target_type)
            .bind(rec.target_id)
            .bind(rec.before.map(super::Json))
            .bind(rec.after.map(super::Json)),
        )
        .await?;
    tx.attribute_changes(row.int("id")?).await
}

/// What the audit log calls the setting of a user's password (by an admin or a SCIM client).
/// The entry says `{"password": "set"}`: never the password, nor its hash.
pub const PASSWORD_SET: &str = "user.password.set";

/// Sets a user's password hash (argon2id), without an audit entry of its own.
pub async fn write_password<D: Dialect>(tx: &mut impl Exec<D>, user: Uuid, hash: &str) -> Result<()> {
    tx.run(
        q("INSERT INTO user_passwords (user_id, hash, updated_at) VALUES (?, ?, ?) \
           ON CONFLICT (user_id) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at")
        .bind(user)
        .bind(hash)
        .bind(directory::now()),
    )
    .await?;
    Ok(())
}

/// Sets a user's password hash, audited [`PASSWORD_SET`].
pub async fn set_user_password_in<D: Dialect>(
    tx: &mut impl WriteTx<D>,
    user: Uuid,
    hash: &str,
    actor: &Actor,
) -> Result<()> {
    write_password(tx, user, hash).await?;
    let rec = AuditRecord {
        action: PASSWORD_SET,
        target_type: "user",
        target_id: user.to_string(),
        before: None,
        after: Some(serde_json::json!({"password": "set"})),
    };
    record_audit(tx, actor, rec).await
}

/// Inserts a user row (with the SCIM `externalId` an inbound SCIM client gave, if any). With
/// `skip_taken`, a row whose id or username is taken is not inserted (`false`) instead of
/// failing as a conflict.
pub async fn insert_user_row<D: Dialect>(
    tx: &mut impl Exec<D>,
    user: &User,
    scim_external_id: Option<&str>,
    skip_taken: bool,
) -> Result<bool> {
    // A taken username is said first (the unique index enforces it at the INSERT, racing
    // writers included); then the e-mail address is checked.
    let taken = tx
        .opt(
            q("SELECT 1 AS one FROM users WHERE username_key = ? AND status <> 'deleted' LIMIT 1")
                .bind(User::username_key(&user.username)),
        )
        .await?;
    if taken.is_some() {
        return if skip_taken { Ok(false) } else { Err(StoreError::Duplicate { field: "username" }) };
    }
    check_email(tx, user).await?;
    let sql = format!(
        "INSERT INTO users (username_key, email_key, scim_external_id, {USER_COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?){}",
        if skip_taken { " ON CONFLICT DO NOTHING" } else { "" }
    );
    let done = tx
        .run(
            q(sql)
                .bind(User::username_key(&user.username))
                .bind(user.email.as_deref().map(User::email_key))
                .bind(scim_external_id)
                .bind(user.id)
                .bind(&user.username)
                .bind(user.email.as_ref())
                .bind(user.first_name.as_ref())
                .bind(user.last_name.as_ref())
                .bind(user.display_name.as_ref())
                .bind(user.title.as_ref())
                .bind(user.department.as_ref())
                .bind(user.manager_id)
                .bind(user.phone.as_ref())
                .bind(user.employee_number.as_ref())
                .bind(to_json(&user.attributes)?)
                .bind(user.status.as_str())
                .bind(user.source.as_str())
                .bind(user.created_at)
                .bind(user.updated_at)
                .bind(user.version),
        )
        .await?;
    Ok(done > 0)
}

/// Writes every field of a user row (the one statement for a user update).
/// `UPDATE users SET` every column a [`User`] holds, with their values; the caller pushes any
/// further `, column = ?` and the `WHERE`.
pub fn update_user_set(user: &User) -> Result<Query> {
    Ok(q("UPDATE users SET username = ?, username_key = ?, email = ?, email_key = ?, first_name = ?, last_name = ?, \
          display_name = ?, title = ?, department = ?, manager_id = ?, phone = ?, employee_number = ?, \
          attributes = ?, status = ?, updated_at = ?, version = ?")
    .bind(&user.username)
    .bind(User::username_key(&user.username))
    .bind(user.email.as_ref())
    .bind(user.email.as_deref().map(User::email_key))
    .bind(user.first_name.as_ref())
    .bind(user.last_name.as_ref())
    .bind(user.display_name.as_ref())
    .bind(user.title.as_ref())
    .bind(user.department.as_ref())
    .bind(user.manager_id)
    .bind(user.phone.as_ref())
    .bind(user.employee_number.as_ref())
    .bind(to_json(&user.attributes)?)
    .bind(user.status.as_str())
    .bind(user.updated_at)
    .bind(user.version))
}

pub async fn write_user_row<D: Dialect>(tx: &mut impl Exec<D>, user: &User) -> Result<()> {
    check_email(tx, user).await?;
    let mut update = update_user_set(user)?;
    update.push(" WHERE id = ?").add(user.id);
    tx.run(update).await?;
    Ok(())
}

/// `pg_advisory_xact_lock` keys of the lock held from the check that no other user has an
/// e-mail address to the commit of the write that gives it to a user. One key for every
/// address, so that a batch of users never takes locks in crossing orders.
pub const EMAIL_LOCK: (i32, i32) = (0x656d_6169, 0x6c6b_6579);

/// One person, one NameID: refuses (`Duplicate { field: "email" }`) a write that gives a user
/// who is not deleted an e-mail address (compared by [`User::email_key`]) that another user who
/// is not deleted has. A user keeping their address is not checked, so that addresses shared
/// before the upgrade do not block other changes. Race-free: the check runs under
/// [`EMAIL_LOCK`] until the write commits (PostgreSQL: a second writer in another process waits,
/// then sees the first one's row; SQLite has one writer, so there is nothing to wait for).
pub async fn check_email<D: Dialect>(tx: &mut impl Exec<D>, user: &User) -> Result<()> {
    let Some(key) = user.email.as_deref().map(User::email_key).filter(|_| user.status != UserStatus::Deleted) else {
        return Ok(());
    };
    let current = tx.opt(q("SELECT email_key FROM users WHERE id = ?").bind(user.id)).await?;
    if let Some(row) = current {
        if row.opt_text("email_key")?.as_deref() == Some(key.as_str()) {
            return Ok(());
        }
    }
    D::advisory_lock(tx.conn(), EMAIL_LOCK).await?;
    let taken = tx
        .opt(
            q("SELECT 1 AS one FROM users WHERE email_key = ? AND status <> 'deleted' AND id <> ? LIMIT 1")
                .bind(&key)
                .bind(user.id),
        )
        .await?;
    match taken {
        Some(_) => Err(StoreError::Duplicate { field: "email" }),
        None => Ok(()),
    }
}

/// Gives the rows stored before e-mail keys existed their key (computed here, as for every
/// write, so that both stores and every process agree on it; SQL has no NFKC).
pub async fn backfill_email_keys<D: Dialect>(c: &mut impl Exec<D>) -> Result<()> {
    loop {
        let rows =
            c.all(q("SELECT id, email FROM users WHERE email IS NOT NULL AND email_key IS NULL LIMIT 500")).await?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in &rows {
            let email = row.text("email")?;
            c.run(q("UPDATE users SET email_key = ? WHERE id = ?").bind(User::email_key(&email)).bind(row.id("id")?))
                .await?;
        }
    }
}
