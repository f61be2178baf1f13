//! The inbound-SCIM half of [`SqliteStore`].

use crate::scim::{
    order_sql, to_sql, Dialect, GroupField, Member, Piece, ScimClientRecord, ScimGroup, ScimQuery, ScimScope,
    ScimStore, ScimUser, SqlField, UserField,
};

use super::*;

fn client_from_row(r: &SqliteRow) -> Result<ScimClientRecord> {
    let (users, roles): (String, String) = (get(r, "users_scope")?, get(r, "roles_scope")?);
    let scope = ScimScope::from_columns(&users, get_opt_uuid(r, "users_source_id")?, &roles, get(r, "read_only")?)
        .ok_or_else(|| StoreError::Backend(format!("bad SCIM client scope {users}/{roles}")))?;
    Ok(ScimClientRecord {
        id: get_uuid(r, "id")?,
        name: get(r, "name")?,
        lookup: get(r, "lookup")?,
        hash: get(r, "hash")?,
        created_at: get_ts(r, "created_at")?,
        revoked_at: get_opt_ts(r, "revoked_at")?,
        scope,
        legacy_scope: get(r, "legacy_scope")?,
    })
}

/// The columns of a client.
const CLIENT_COLUMNS: &str =
    "id, name, lookup, hash, created_at, revoked_at, users_scope, users_source_id, roles_scope, read_only, legacy_scope";

fn scim_user_from_row(r: &SqliteRow) -> Result<ScimUser> {
    Ok(ScimUser {
        user: user_from_row(r)?,
        external_id: get(r, "scim_external_id")?,
        owner: get_opt_uuid(r, "scim_client_id")?,
    })
}

fn scim_group_from_row(r: &SqliteRow) -> Result<ScimGroup> {
    Ok(ScimGroup {
        role: role_from_row(r)?,
        external_id: get(r, "scim_external_id")?,
        owner: get_opt_uuid(r, "scim_client_id")?,
    })
}

fn push_pieces(qb: &mut QueryBuilder<'_, Sqlite>, pieces: Vec<Piece>) {
    for p in pieces {
        match p {
            Piece::Sql(s) => {
                qb.push(s);
            }
            Piece::Text(t) => {
                qb.push_bind(t);
            }
            Piece::Float(f) => {
                qb.push_bind(f);
            }
            Piece::Bool(b) => {
                qb.push_bind(b);
            }
            Piece::Time(t) => {
                qb.push_bind(ts(&t));
            }
        }
    }
}

fn bad_filter(e: crate::scim::FilterSqlError) -> StoreError {
    StoreError::InvalidState(format!("invalid filter: {e}"))
}

/// Counts the matches of a search and reads its window.
async fn search<F: SqlField>(
    pool: &SqlitePool,
    table: &str,
    columns: &str,
    base: &str,
    query: &ScimQuery<F>,
) -> Result<(u64, Vec<SqliteRow>)> {
    let filter = || -> Result<Vec<Piece>> { to_sql(&query.filter, Dialect::Sqlite).map_err(bad_filter) };
    let mut qb: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("SELECT COUNT(*) AS n FROM {table} WHERE {base} AND "));
    push_pieces(&mut qb, filter()?);
    let total: i64 = get(&qb.build().fetch_one(pool).await.map_err(backend)?, "n")?;
    if query.count == 0 {
        return Ok((total.max(0) as u64, vec![]));
    }
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {columns} FROM {table} WHERE {base} AND "));
    push_pieces(&mut qb, filter()?);
    qb.push(" ORDER BY ");
    push_pieces(&mut qb, order_sql(query.sort.as_ref(), Dialect::Sqlite, &format!("{table}.id")).map_err(bad_filter)?);
    qb.push(" LIMIT ")
        .push_bind(i64::from(query.count))
        .push(" OFFSET ")
        .push_bind(query.offset.min(i64::MAX as u64) as i64);
    let rows = qb.build().fetch_all(pool).await.map_err(backend)?;
    Ok((total.max(0) as u64, rows))
}

#[async_trait]
impl ScimStore for SqliteStore {
    async fn create_scim_client(&self, client: &ScimClientRecord, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let (users, source, roles) = client.scope.columns();
        sqlx::query(
            "INSERT INTO scim_clients (id, name, lookup, hash, created_at, users_scope, users_source_id, roles_scope, \
             read_only, legacy_scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(client.id.to_string())
        .bind(&client.name)
        .bind(&client.lookup)
        .bind(&client.hash)
        .bind(ts(&client.created_at))
        .bind(users)
        .bind(source.map(|s| s.to_string()))
        .bind(roles)
        .bind(client.scope.read_only)
        .bind(client.legacy_scope)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let after = serde_json::json!({"id": client.id, "name": client.name, "created_at": client.created_at,
            "scope": {"users": users, "source_id": source, "roles": roles, "read_only": client.scope.read_only}});
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
        tx.commit().await.map_err(backend)
    }

    async fn list_scim_clients(&self) -> Result<Vec<ScimClientRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM scim_clients WHERE revoked_at IS NULL ORDER BY created_at, id"
        ))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter().map(client_from_row).collect()
    }

    async fn find_scim_client_by_lookup(&self, lookup: &str) -> Result<Option<ScimClientRecord>> {
        let row = sqlx::query(&format!("SELECT {CLIENT_COLUMNS} FROM scim_clients WHERE lookup = ?"))
            .bind(lookup)
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        row.as_ref().map(client_from_row).transpose()
    }

    async fn revoke_scim_client(&self, id: Uuid, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let now = directory::now();
        let done = sqlx::query("UPDATE scim_clients SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(ts(&now))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
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
        tx.commit().await.map_err(backend)
    }

    async fn set_scim_client_scope(&self, id: Uuid, scope: &ScimScope, actor: &Actor) -> Result<ScimClientRecord> {
        let mut tx = self.begin().await?;
        let (users, source, roles) = scope.columns();
        let done = sqlx::query(
            "UPDATE scim_clients SET users_scope = ?, users_source_id = ?, roles_scope = ?, read_only = ?, \
             legacy_scope = 0 WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(users)
        .bind(source.map(|s| s.to_string()))
        .bind(roles)
        .bind(scope.read_only)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(&format!("SELECT {CLIENT_COLUMNS} FROM scim_clients WHERE id = ?"))
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let record = client_from_row(&row)?;
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: "scim_client.scope",
                target_type: "scim_client",
                target_id: id.to_string(),
                before: None,
                after: Some(serde_json::json!({"name": record.name,
                    "scope": {"users": users, "source_id": source, "roles": roles, "read_only": scope.read_only}})),
            },
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }

    async fn rekey_scim_client(&self, id: Uuid, lookup: &str) -> Result<()> {
        sqlx::query("UPDATE scim_clients SET lookup = ? WHERE id = ?")
            .bind(lookup)
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn scim_user(&self, id: Uuid) -> Result<Option<ScimUser>> {
        let sql = format!(
            "SELECT {USER_COLUMNS}, scim_external_id, scim_client_id FROM users WHERE id = ? AND status <> 'deleted'"
        );
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.writer).await.map_err(backend)?;
        row.as_ref().map(scim_user_from_row).transpose()
    }

    async fn scim_users(&self, query: &ScimQuery<UserField>) -> Result<(u64, Vec<ScimUser>)> {
        let columns = format!("{USER_COLUMNS}, scim_external_id, scim_client_id");
        let (n, rows) = search(&self.reader, "users", &columns, "users.status <> 'deleted'", query).await?;
        Ok((n, rows.iter().map(scim_user_from_row).collect::<Result<_>>()?))
    }

    async fn scim_save_user(&self, su: &ScimUser, expected_version: Option<i64>, actor: &Actor) -> Result<()> {
        let user = &su.user;
        let mut tx = self.begin().await?;
        let before = match expected_version {
            None => {
                insert_user_row(&mut tx, user, su.external_id.as_deref(), false).await?;
                if let Some(owner) = su.owner {
                    sqlx::query("UPDATE users SET scim_client_id = ? WHERE id = ?")
                        .bind(owner.to_string())
                        .bind(user.id.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
                None
            }
            Some(expected) => {
                let before = Self::user_in(&mut tx, user.id).await?;
                if before.status == UserStatus::Deleted {
                    return Err(StoreError::NotFound);
                }
                check_version(before.version, Some(expected))?;
                super::check_email(&mut tx, user).await?;
                sqlx::query(
                    "UPDATE users SET username = ?, username_key = ?, email = ?, email_key = ?, first_name = ?, \
                     last_name = ?, display_name = ?, title = ?, department = ?, manager_id = ?, phone = ?, \
                     employee_number = ?, attributes = ?, status = ?, updated_at = ?, version = ?, \
                     scim_external_id = ? WHERE id = ?",
                )
                .bind(&user.username)
                .bind(User::username_key(&user.username))
                .bind(&user.email)
                .bind(user.email.as_deref().map(User::email_key))
                .bind(&user.first_name)
                .bind(&user.last_name)
                .bind(&user.display_name)
                .bind(&user.title)
                .bind(&user.department)
                .bind(user.manager_id.map(|m| m.to_string()))
                .bind(&user.phone)
                .bind(&user.employee_number)
                .bind(to_json(&user.attributes)?)
                .bind(user.status.as_str())
                .bind(ts(&user.updated_at))
                .bind(user.version)
                .bind(&su.external_id)
                .bind(user.id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                Some(before)
            }
        };
        WriteTx::change(&mut tx, NewChange::user(user.id)).await?;
        let action = match &before {
            None => "user.create",
            Some(b) if b.status != user.status => match user.status {
                UserStatus::Suspended => "user.suspend",
                _ => "user.reactivate",
            },
            Some(_) => "user.update",
        };
        let mut after = to_value(user);
        if let Some(Value::Object(m)) = after.as_mut() {
            m.insert("external_id".into(), serde_json::json!(su.external_id));
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action,
                target_type: "user",
                target_id: user.id.to_string(),
                before: before.as_ref().and_then(to_value),
                after,
            },
        )
        .await?;
        tx.commit().await.map_err(backend)
    }

    async fn scim_group(&self, id: Uuid) -> Result<Option<ScimGroup>> {
        let sql = format!("SELECT {ROLE_COLUMNS}, scim_external_id, scim_client_id FROM roles WHERE id = ?");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.writer).await.map_err(backend)?;
        row.as_ref().map(scim_group_from_row).transpose()
    }

    async fn scim_groups(&self, query: &ScimQuery<GroupField>) -> Result<(u64, Vec<ScimGroup>)> {
        let columns = format!("{ROLE_COLUMNS}, scim_external_id, scim_client_id");
        let (n, rows) = search(&self.reader, "roles", &columns, "1 = 1", query).await?;
        Ok((n, rows.iter().map(scim_group_from_row).collect::<Result<_>>()?))
    }

    async fn scim_members(&self, role: Uuid) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT u.id, u.username FROM role_users ru JOIN users u ON u.id = ru.user_id \
             WHERE ru.role_id = ? ORDER BY u.username_key, u.id",
        )
        .bind(role.to_string())
        .fetch_all(&self.writer)
        .await
        .map_err(backend)?;
        rows.iter().map(|r| Ok(Member { id: get_uuid(r, "id")?, username: get(r, "username")? })).collect()
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
                sqlx::query(
                    "INSERT INTO roles (id, name, name_key, description, created_at, updated_at, version, \
                     scim_external_id, scim_client_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(role.id.to_string())
                .bind(&role.name)
                .bind(role.name.to_lowercase())
                .bind(&role.description)
                .bind(ts(&role.created_at))
                .bind(ts(&role.updated_at))
                .bind(role.version)
                .bind(&group.external_id)
                .bind(group.owner.map(|o| o.to_string()))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                None
            }
            Some(expected) => {
                let before = Self::role_in(&mut tx, role.id).await?;
                check_version(before.version, Some(expected))?;
                sqlx::query(
                    "UPDATE roles SET name = ?, name_key = ?, description = ?, updated_at = ?, version = ?, \
                     scim_external_id = ? WHERE id = ?",
                )
                .bind(&role.name)
                .bind(role.name.to_lowercase())
                .bind(&role.description)
                .bind(ts(&role.updated_at))
                .bind(role.version)
                .bind(&group.external_id)
                .bind(role.id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                Some(before)
            }
        };
        WriteTx::change(&mut tx, NewChange::role(role.id)).await?;
        let mut after = to_value(role);
        if let Some(Value::Object(m)) = after.as_mut() {
            m.insert("external_id".into(), serde_json::json!(group.external_id));
        }
        record_audit(
            &mut tx,
            actor,
            AuditRecord {
                action: if before.is_some() { "role.update" } else { "role.create" },
                target_type: "role",
                target_id: role.id.to_string(),
                before: before.as_ref().and_then(to_value),
                after,
            },
        )
        .await?;
        if let Some(members) = members {
            let current =
                Self::ids_in(&mut tx, "SELECT user_id AS id FROM role_users WHERE role_id = ?", role.id).await?;
            let wanted: std::collections::BTreeSet<Uuid> = members.iter().copied().collect();
            for user in &wanted {
                if current.contains(user) {
                    continue;
                }
                let live = sqlx::query("SELECT 1 AS one FROM users WHERE id = ? AND status <> 'deleted'")
                    .bind(user.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                if live.is_none() {
                    return Err(StoreError::MissingReference { field: "members" });
                }
                sqlx::query("INSERT INTO role_users (role_id, user_id, created_at) VALUES (?, ?, ?)")
                    .bind(role.id.to_string())
                    .bind(user.to_string())
                    .bind(ts(&directory::now()))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                WriteTx::change(&mut tx, NewChange::membership(role.id, *user)).await?;
                let link = serde_json::json!({"role_id": role.id, "user_id": user});
                record_audit(
                    &mut tx,
                    actor,
                    AuditRecord {
                        action: "role.add_user",
                        target_type: "role",
                        target_id: role.id.to_string(),
                        before: None,
                        after: Some(link),
                    },
                )
                .await?;
            }
            for user in current.iter().filter(|u| !wanted.contains(u)) {
                sqlx::query("DELETE FROM role_users WHERE role_id = ? AND user_id = ?")
                    .bind(role.id.to_string())
                    .bind(user.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                WriteTx::change(&mut tx, NewChange::membership(role.id, *user)).await?;
                let link = serde_json::json!({"role_id": role.id, "user_id": user});
                record_audit(
                    &mut tx,
                    actor,
                    AuditRecord {
                        action: "role.remove_user",
                        target_type: "role",
                        target_id: role.id.to_string(),
                        before: Some(link),
                        after: None,
                    },
                )
                .await?;
            }
        }
        tx.commit().await.map_err(backend)
    }
}
