//! The embedded SQLite implementation of [`Store`]: one file, WAL journal, one writer
//! connection (SQLite allows one writer at a time) and a small pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use directory::{
    Actor, App, AttributeDef, AttributeType, AuditEntry, Change, ChangeKind, NewChange, Page, Role, User, UserStatus,
};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::{cursor, AuditQuery, NameQuery, Result, Store, StoreError, TokenRecord, UserQuery};

pub(crate) use crate::sql::rows::*;
pub(crate) use crate::sql::{check_version, db_error as backend, like_pattern, limit_of, paginate, WriteTx};

mod bulk;
mod dialect;
mod provisioning;
mod scim;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Backend(format!("bad timestamp {s:?}: {e}")))
}

fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Backend(format!("bad id {s:?}: {e}")))
}

fn get<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(row: &'r SqliteRow, col: &str) -> Result<T> {
    row.try_get(col).map_err(backend)
}

fn get_ts(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>> {
    parse_ts(&get::<String>(row, col)?)
}

fn get_uuid(row: &SqliteRow, col: &str) -> Result<Uuid> {
    parse_uuid(&get::<String>(row, col)?)
}

fn get_opt_uuid(row: &SqliteRow, col: &str) -> Result<Option<Uuid>> {
    get::<Option<String>>(row, col)?.as_deref().map(parse_uuid).transpose()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn to_value<T: serde::Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

pub(crate) type Tx = Transaction<'static, Sqlite>;

impl SqliteStore {
    /// Opens (creating when missing) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new().filename(path);
        Self::open_with(opts).await
    }

    /// Opens a `sqlite://` URL (e.g. `sqlite:///var/lib/provisioner/provisioner.db`).
    pub async fn open_url(url: &str) -> Result<Self> {
        let opts =
            SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?;
        Self::open_with(opts).await
    }

    async fn open_with(opts: SqliteConnectOptions) -> Result<Self> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // An embedded connection does not go stale: no ping before each use (a round trip to
        // the connection's thread on every statement's acquire).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        MIGRATOR.run(&writer).await.map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        backfill_email_keys(&mut crate::sql::Conn(writer.acquire().await.map_err(backend)?)).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.read_only(true))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { writer, reader })
    }

    /// Closes both pools, waiting for running statements.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn begin(&self) -> Result<Tx> {
        self.writer.begin().await.map_err(backend)
    }

    /// One row by id, inside a transaction; `NotFound` when missing.
    async fn row_in<T>(
        tx: &mut Tx,
        table: &str,
        columns: &str,
        id: Uuid,
        map: fn(&SqliteRow) -> Result<T>,
    ) -> Result<T> {
        let sql = format!("SELECT {columns} FROM {table} WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        map(&row)
    }

    async fn user_in(tx: &mut Tx, id: Uuid) -> Result<User> {
        Self::row_in(tx, "users", USER_COLUMNS, id, user_from_row).await
    }

    async fn role_in(tx: &mut Tx, id: Uuid) -> Result<Role> {
        Self::row_in(tx, "roles", ROLE_COLUMNS, id, role_from_row).await
    }

    async fn app_in(tx: &mut Tx, id: Uuid) -> Result<App> {
        Self::row_in(tx, "apps", APP_COLUMNS, id, app_from_row).await
    }

    async fn ids_in(tx: &mut Tx, sql: &str, id: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(sql).bind(id.to_string()).fetch_all(&mut **tx).await.map_err(backend)?;
        rows.iter().map(|r| get_uuid(r, "id")).collect()
    }

    /// Adds or removes a link row (role member, role app) with its change and audit entry.
    async fn link(&self, link: Link, role: Uuid, other: Uuid, add: bool, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin().await?;
        Self::role_in(&mut tx, role).await?;
        let (table, column, change, noun) = match link {
            Link::User => {
                let user = Self::user_in(&mut tx, other).await?;
                if add && user.status == UserStatus::Deleted {
                    return Err(StoreError::NotFound);
                }
                ("role_users", "user_id", NewChange::membership(role, other), "user")
            }
            Link::App => {
                Self::app_in(&mut tx, other).await?;
                ("role_apps", "app_id", NewChange::role_app(role, other), "app")
            }
        };
        let done = if add {
            let sql =
                format!("INSERT INTO {table} (role_id, {column}, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING");
            sqlx::query(&sql)
                .bind(role.to_string())
                .bind(other.to_string())
                .bind(ts(&directory::now()))
                .execute(&mut *tx)
                .await
        } else {
            let sql = format!("DELETE FROM {table} WHERE role_id = ? AND {column} = ?");
            sqlx::query(&sql).bind(role.to_string()).bind(other.to_string()).execute(&mut *tx).await
        }
        .map_err(backend)?
        .rows_affected()
            > 0;
        if done {
            WriteTx::change(&mut tx, change).await?;
            let link_value = serde_json::json!({ "role_id": role, format!("{noun}_id"): other });
            let action = format!("role.{}_{noun}", if add { "add" } else { "remove" });
            let (before, after) = if add { (None, Some(link_value)) } else { (Some(link_value), None) };
            record_audit(
                &mut tx,
                actor,
                AuditRecord { action: &action, target_type: "role", target_id: role.to_string(), before, after },
            )
            .await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(done)
    }
}

#[derive(Clone, Copy)]
enum Link {
    User,
    App,
}

#[async_trait]
impl Store for SqliteStore {
    async fn health(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn count_tokens(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE revoked_at IS NULL")
            .fetch_one(&self.reader)
            .await
            .map_err(backend)?;
        get(&row, "n")
    }

    async fn create_token(&self, token: &TokenRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO api_tokens (id, name, lookup, hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(token.id.to_string())
            .bind(&token.name)
            .bind(&token.lookup)
            .bind(&token.hash)
            .bind(ts(&token.created_at))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let after = serde_json::json!({"id": token.id, "name": token.name, "created_at": token.created_at});
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "token.create",
                target_type: "token",
                target_id: token.id.to_string(),
                before: None,
                after: Some(after),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn find_token_by_lookup(&self, lookup: &str) -> Result<Option<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE lookup = ?");
        let row = sqlx::query(&sql).bind(lookup).fetch_optional(&self.reader).await.map_err(backend)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE revoked_at IS NULL ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: Uuid, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let now = directory::now();
        let row =
            sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING name")
                .bind(ts(&now))
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .ok_or(StoreError::NotFound)?;
        let name: String = get(&row, "name")?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "token.revoke",
                target_type: "token",
                target_id: id.to_string(),
                before: None,
                after: Some(serde_json::json!({"name": name, "revoked_at": now})),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn token_used(&self, id: Uuid, lookup: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET lookup = ?, last_used_at = ? WHERE id = ?")
            .bind(lookup)
            .bind(ts(&at))
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list_attribute_defs(&self) -> Result<Vec<AttributeDef>> {
        let rows = sqlx::query("SELECT name, kind, description, created_at FROM attribute_defs ORDER BY name")
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let kind: String = get(r, "kind")?;
                Ok(AttributeDef {
                    name: get(r, "name")?,
                    kind: AttributeType::parse(&kind).ok_or_else(|| StoreError::Backend(format!("bad kind {kind}")))?,
                    description: get(r, "description")?,
                    created_at: get_ts(r, "created_at")?,
                })
            })
            .collect()
    }

    async fn create_attribute_def(&self, def: &AttributeDef, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO attribute_defs (name, kind, description, created_at) VALUES (?, ?, ?, ?)")
            .bind(&def.name)
            .bind(def.kind.as_str())
            .bind(&def.description)
            .bind(ts(&def.created_at))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "attribute.create",
                target_type: "attribute",
                target_id: def.name.clone(),
                before: None,
                after: to_value(def),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn create_user(&self, user: &User, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_user_row(&mut tx, user, None, false).await?;
        WriteTx::change(&mut tx, NewChange::user(user.id)).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "user.create",
                target_type: "user",
                target_id: user.id.to_string(),
                before: None,
                after: to_value(user),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_user(&self, id: Uuid) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.reader).await.map_err(backend)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Page<User>> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {USER_COLUMNS} FROM users WHERE "));
        match query.status {
            Some(s) => qb.push("status = ").push_bind(s.as_str()),
            None => qb.push("status <> 'deleted'"),
        };
        if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
            let pat = like_pattern(q);
            qb.push(" AND (");
            for (i, col) in ["username_key", "email", "first_name", "last_name", "display_name"].iter().enumerate() {
                if i > 0 {
                    qb.push(" OR ");
                }
                qb.push(format!("{col} LIKE ")).push_bind(pat.clone()).push(" ESCAPE '\\'");
            }
            qb.push(")");
        }
        if let Some(role) = query.role {
            qb.push(" AND EXISTS (SELECT 1 FROM role_users ru WHERE ru.user_id = users.id AND ru.role_id = ")
                .push_bind(role.to_string())
                .push(")");
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 2)?;
            qb.push(" AND (username_key, id) > (")
                .push_bind(key[0].clone())
                .push(", ")
                .push_bind(key[1].clone())
                .push(")");
        }
        qb.push(" ORDER BY username_key, id LIMIT ").push_bind(limit_of(&query.page) + 1);
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        let users = rows.iter().map(user_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(users, &query.page, |u| vec![User::username_key(&u.username), u.id.to_string()]))
    }

    async fn users_by_email(&self, email: &str) -> Result<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email_key = ? AND status <> 'deleted' ORDER BY username_key, id"
        );
        let rows = sqlx::query(&sql).bind(User::email_key(email)).fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn email_conflicts(&self) -> Result<Vec<crate::EmailConflict>> {
        let sql = format!(
            "SELECT email_key AS conflict_key, {USER_COLUMNS} FROM users WHERE status <> 'deleted' AND email_key IN \
             (SELECT email_key FROM users WHERE status <> 'deleted' AND email_key IS NOT NULL \
              GROUP BY email_key HAVING COUNT(*) > 1) ORDER BY email_key, username_key, id"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.reader).await.map_err(backend)?;
        let rows = rows.iter().map(|row| Ok((get(row, "conflict_key")?, user_from_row(row)?)));
        Ok(crate::EmailConflict::group(rows.collect::<Result<Vec<_>>>()?))
    }

    async fn update_user(&self, user: &User, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::user_in(&mut tx, user.id).await?;
        if before.status == UserStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        check_version(before.version, Some(expected_version))?;
        write_user_row(&mut tx, user).await?;
        WriteTx::change(&mut tx, NewChange::user(user.id)).await?;
        let action = if before.status != user.status {
            match user.status {
                UserStatus::Suspended => "user.suspend",
                _ => "user.reactivate",
            }
        } else {
            "user.update"
        };
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action,
                target_type: "user",
                target_id: user.id.to_string(),
                before: to_value(&before),
                after: to_value(user),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn delete_user(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<User> {
        let mut tx = self.begin().await?;
        let before = Self::user_in(&mut tx, id).await?;
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
        sqlx::query("UPDATE users SET status = 'deleted', updated_at = ?, version = ? WHERE id = ?")
            .bind(ts(&after.updated_at))
            .bind(after.version)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let roles = Self::ids_in(&mut tx, "SELECT role_id AS id FROM role_users WHERE user_id = ?", id).await?;
        sqlx::query("DELETE FROM role_users WHERE user_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for role in roles {
            WriteTx::change(&mut tx, NewChange::membership(role, id)).await?;
        }
        WriteTx::change(&mut tx, NewChange::user(id)).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "user.delete",
                target_type: "user",
                target_id: id.to_string(),
                before: to_value(&before),
                after: to_value(&after),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(after)
    }

    async fn create_role(&self, role: &Role, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO roles (id, name, name_key, description, pushable, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(role.id.to_string())
            .bind(&role.name)
            .bind(role.name.to_lowercase())
            .bind(&role.description)
            .bind(role.pushable)
            .bind(ts(&role.created_at))
            .bind(ts(&role.updated_at))
            .bind(role.version)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        WriteTx::change(&mut tx, NewChange::role(role.id)).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "role.create",
                target_type: "role",
                target_id: role.id.to_string(),
                before: None,
                after: to_value(role),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_role(&self, id: Uuid) -> Result<Option<Role>> {
        let sql = format!("SELECT {ROLE_COLUMNS} FROM roles WHERE id = ?");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.reader).await.map_err(backend)?;
        row.as_ref().map(role_from_row).transpose()
    }

    async fn list_roles(&self, query: &NameQuery) -> Result<Page<Role>> {
        let rows = list_named(&self.reader, "roles", ROLE_COLUMNS, query).await?;
        let roles = rows.iter().map(role_from_row).collect::<Result<Vec<_>>>()?;
        Ok(paginate(roles, &query.page, |r| vec![r.name.to_lowercase(), r.id.to_string()]))
    }

    async fn update_role(&self, role: &Role, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::role_in(&mut tx, role.id).await?;
        check_version(before.version, Some(expected_version))?;
        sqlx::query(
            "UPDATE roles SET name = ?, name_key = ?, description = ?, pushable = ?, updated_at = ?, version = ? \
             WHERE id = ?",
        )
        .bind(&role.name)
        .bind(role.name.to_lowercase())
        .bind(&role.description)
        .bind(role.pushable)
        .bind(ts(&role.updated_at))
        .bind(role.version)
        .bind(role.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        WriteTx::change(&mut tx, NewChange::role(role.id)).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "role.update",
                target_type: "role",
                target_id: role.id.to_string(),
                before: to_value(&before),
                after: to_value(role),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn delete_role(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::role_in(&mut tx, id).await?;
        check_version(before.version, expected_version)?;
        let users = Self::ids_in(&mut tx, "SELECT user_id AS id FROM role_users WHERE role_id = ?", id).await?;
        let apps = Self::ids_in(&mut tx, "SELECT app_id AS id FROM role_apps WHERE role_id = ?", id).await?;
        sqlx::query("DELETE FROM roles WHERE id = ?").bind(id.to_string()).execute(&mut *tx).await.map_err(backend)?;
        // Members lose what the role granted: each of them is a change for the engine.
        for user in &users {
            WriteTx::change(&mut tx, NewChange::membership(id, *user)).await?;
        }
        for app in &apps {
            WriteTx::change(&mut tx, NewChange::role_app(id, *app)).await?;
        }
        WriteTx::change(&mut tx, NewChange::role(id)).await?;
        let mut before_value = to_value(&before).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut before_value {
            map.insert("user_ids".into(), serde_json::json!(users));
            map.insert("app_ids".into(), serde_json::json!(apps));
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "role.delete",
                target_type: "role",
                target_id: id.to_string(),
                before: Some(before_value),
                after: None,
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn add_role_user(&self, role: Uuid, user: Uuid, actor: &Actor) -> Result<bool> {
        self.link(Link::User, role, user, true, actor).await
    }

    async fn remove_role_user(&self, role: Uuid, user: Uuid, actor: &Actor) -> Result<bool> {
        self.link(Link::User, role, user, false, actor).await
    }

    async fn roles_of_user(&self, user: Uuid) -> Result<Vec<Role>> {
        let sql = format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE id IN (SELECT role_id FROM role_users WHERE user_id = ?) ORDER BY name_key"
        );
        let rows = sqlx::query(&sql).bind(user.to_string()).fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(role_from_row).collect()
    }

    async fn add_role_app(&self, role: Uuid, app: Uuid, actor: &Actor) -> Result<bool> {
        self.link(Link::App, role, app, true, actor).await
    }

    async fn remove_role_app(&self, role: Uuid, app: Uuid, actor: &Actor) -> Result<bool> {
        self.link(Link::App, role, app, false, actor).await
    }

    async fn apps_of_role(&self, role: Uuid) -> Result<Vec<App>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE id IN (SELECT app_id FROM role_apps WHERE role_id = ?) ORDER BY name_key"
        );
        let rows = sqlx::query(&sql).bind(role.to_string()).fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(app_from_row).collect()
    }

    async fn roles_of_app(&self, app: Uuid) -> Result<Vec<Role>> {
        let sql = format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE id IN (SELECT role_id FROM role_apps WHERE app_id = ?) ORDER BY name_key"
        );
        let rows = sqlx::query(&sql).bind(app.to_string()).fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(role_from_row).collect()
    }

    async fn create_app(&self, app: &App, credential: &str, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO apps (id, name, name_key, description, connector, connection, credential, provisioning, \
             parameters, rules, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(app.id.to_string())
        .bind(&app.name)
        .bind(app.name.to_lowercase())
        .bind(&app.description)
        .bind(connector_str(app)?)
        .bind(to_json(&app.connection)?)
        .bind(credential)
        .bind(to_json(&app.provisioning)?)
        .bind(app.parameters.as_ref().map(to_json).transpose()?)
        .bind(to_json(&app.rules)?)
        .bind(ts(&app.created_at))
        .bind(ts(&app.updated_at))
        .bind(app.version)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        WriteTx::change(&mut tx, NewChange::app(app.id)).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.create",
                target_type: "app",
                target_id: app.id.to_string(),
                before: None,
                after: to_value(app),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_app(&self, id: Uuid) -> Result<Option<App>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.reader).await.map_err(backend)?;
        row.as_ref().map(app_from_row).transpose()
    }

    async fn list_apps(&self, query: &NameQuery) -> Result<Page<App>> {
        let rows = list_named(&self.reader, "apps", APP_COLUMNS, query).await?;
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
        let before = Self::app_in(&mut tx, app.id).await?;
        check_version(before.version, Some(expected_version))?;
        sqlx::query(
            "UPDATE apps SET name = ?, name_key = ?, description = ?, connector = ?, connection = ?, \
             credential = COALESCE(?, credential), provisioning = ?, updated_at = ?, version = ? WHERE id = ?",
        )
        .bind(&app.name)
        .bind(app.name.to_lowercase())
        .bind(&app.description)
        .bind(connector_str(app)?)
        .bind(to_json(&app.connection)?)
        .bind(credential)
        .bind(to_json(&app.provisioning)?)
        .bind(ts(&app.updated_at))
        .bind(app.version)
        .bind(app.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        WriteTx::change(&mut tx, NewChange::app(app.id)).await?;
        let mut after = to_value(app);
        if let (Some(Value::Object(map)), true) = (&mut after, credential.is_some()) {
            // Say that the credential changed, never what it is.
            map.insert("credential_changed".into(), Value::Bool(true));
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.update",
                target_type: "app",
                target_id: app.id.to_string(),
                before: to_value(&before),
                after,
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn update_app_mapping(&self, app: &App, expected_version: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::app_in(&mut tx, app.id).await?;
        check_version(before.version, Some(expected_version))?;
        sqlx::query("UPDATE apps SET parameters = ?, rules = ?, updated_at = ?, version = ? WHERE id = ?")
            .bind(app.parameters.as_ref().map(to_json).transpose()?)
            .bind(to_json(&app.rules)?)
            .bind(ts(&app.updated_at))
            .bind(app.version)
            .bind(app.id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        WriteTx::change(&mut tx, NewChange::app(app.id)).await?;
        let mapping = |a: &App| serde_json::json!({"parameters": a.parameters, "rules": a.rules});
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.mapping",
                target_type: "app",
                target_id: app.id.to_string(),
                before: Some(mapping(&before)),
                after: Some(mapping(app)),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn delete_app(&self, id: Uuid, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let before = Self::app_in(&mut tx, id).await?;
        check_version(before.version, expected_version)?;
        sqlx::query("DELETE FROM apps WHERE id = ?").bind(id.to_string()).execute(&mut *tx).await.map_err(backend)?;
        WriteTx::change(&mut tx, NewChange::app(id)).await?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "app.delete",
                target_type: "app",
                target_id: id.to_string(),
                before: to_value(&before),
                after: None,
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
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
        record_audit(
            &mut tx,
            actor,
            AuditRecord { action, target_type, target_id: target_id.to_owned(), before: None, after: details },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_app_credential(&self, id: Uuid) -> Result<Option<String>> {
        let row = sqlx::query("SELECT credential FROM apps WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.map(|r| get(&r, "credential")).transpose()
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT id, at, actor_kind, actor_name, action, target_type, target_id, before, after FROM audit_log WHERE 1 = 1",
        );
        if let Some(t) = &query.target_type {
            qb.push(" AND target_type = ").push_bind(t.clone());
        }
        if let Some(t) = &query.target_id {
            qb.push(" AND target_id = ").push_bind(t.clone());
        }
        if let Some(a) = &query.actor {
            qb.push(" AND actor_name = ").push_bind(a.clone());
        }
        if let Some(ids) = &query.ids {
            qb.push(" AND id IN (");
            let mut list = qb.separated(", ");
            list.push_bind(-1i64);
            for id in ids {
                list.push_bind(*id);
            }
            list.push_unseparated(")");
        }
        if let Some(c) = &query.page.cursor {
            let key = cursor::decode(c, 1)?;
            let id: i64 = key[0].parse().map_err(|_| StoreError::InvalidCursor)?;
            qb.push(" AND id < ").push_bind(id);
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit_of(&query.page) + 1);
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        let parse_json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        let entries = rows
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: get(r, "id")?,
                    at: get_ts(r, "at")?,
                    actor: Actor { kind: get(r, "actor_kind")?, name: get(r, "actor_name")? },
                    action: get(r, "action")?,
                    target_type: get(r, "target_type")?,
                    target_id: get(r, "target_id")?,
                    before: parse_json(get(r, "before")?),
                    after: parse_json(get(r, "after")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(paginate(entries, &query.page, |e| vec![e.id.to_string()]))
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, user_id, role_id, app_id, audit_id FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let kind: String = get(r, "kind")?;
                Ok(Change {
                    seq: get(r, "seq")?,
                    at: get_ts(r, "at")?,
                    kind: ChangeKind::parse(&kind)
                        .ok_or_else(|| StoreError::Backend(format!("bad change kind {kind}")))?,
                    user_id: get_opt_uuid(r, "user_id")?,
                    role_id: get_opt_uuid(r, "role_id")?,
                    app_id: get_opt_uuid(r, "app_id")?,
                    audit_id: get::<Option<i64>>(r, "audit_id")?.filter(|id| *id > 0),
                })
            })
            .collect()
    }
}

/// Lists roles or apps by name, with text search and keyset pagination.
async fn list_named(pool: &SqlitePool, table: &str, columns: &str, query: &NameQuery) -> Result<Vec<SqliteRow>> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {columns} FROM {table} WHERE 1 = 1"));
    if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
        qb.push(" AND name_key LIKE ").push_bind(like_pattern(q)).push(" ESCAPE '\\'");
    }
    if let Some(c) = &query.page.cursor {
        let key = cursor::decode(c, 2)?;
        qb.push(" AND (name_key, id) > (").push_bind(key[0].clone()).push(", ").push_bind(key[1].clone()).push(")");
    }
    qb.push(" ORDER BY name_key, id LIMIT ").push_bind(limit_of(&query.page) + 1);
    qb.build().fetch_all(pool).await.map_err(backend)
}
