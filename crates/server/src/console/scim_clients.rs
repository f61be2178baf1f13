//! SCIM clients: each client's scope (the users and roles it sees and changes), set here by
//! an admin; clients that existed before scopes are flagged until their scope is set.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use uuid::Uuid;

use super::auth::Session;
use super::view::{self, Choice, FormData, Layout};
use super::Result;
use crate::api::scim_clients::{self as clients, RolesScope, ScopeInput, UsersScope};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/scim-clients", get(list)).route("/scim-clients/{id}/scope", post(set_scope))
}

/// One client as shown, with the choices of its scope form.
pub struct ClientRow {
    pub id: Uuid,
    pub name: String,
    pub created: String,
    pub legacy: bool,
    pub summary: String,
    pub users: Vec<Choice>,
    pub sources: Vec<Choice>,
    pub roles: Vec<Choice>,
    pub read_only: bool,
    pub passwords: bool,
}

#[derive(Template)]
#[template(path = "scim_clients.html")]
struct ListPage {
    layout: Layout,
    clients: Vec<ClientRow>,
}

view::pages!(ListPage);

async fn list(State(state): State<AppState>, session: Session, headers: HeaderMap) -> Result<Response> {
    let layout = Layout::new(&session, &headers, "scim-clients", "SCIM clients");
    let sources = state.service.list_sources().await?;
    let mut rows = Vec::new();
    for c in state.service.store().list_scim_clients().await? {
        let scope = clients::scope_view(&c.scope);
        let source_id = scope.source_id.map(|s| s.to_string()).unwrap_or_default();
        let source_name = sources.iter().find(|s| s.id.to_string() == source_id).map(|s| s.name.clone());
        let (users, users_label) = match scope.users {
            UsersScope::Own => ("own", "the users it created".to_owned()),
            UsersScope::Source => {
                ("source", format!("the users of {}", source_name.as_deref().unwrap_or("a deleted source")))
            }
            UsersScope::All => ("all", "all users".to_owned()),
        };
        let (roles, roles_label) = match scope.roles {
            RolesScope::Own => ("own", "the roles it created"),
            RolesScope::Pushable => ("pushable", "pushable roles and those it created"),
            RolesScope::All => ("all", "all roles"),
        };
        let summary = format!(
            "Users: {users_label}. Roles: {roles_label}.{}{}",
            if scope.read_only { " Read only." } else { "" },
            if scope.passwords { "" } else { " No passwords." }
        );
        rows.push(ClientRow {
            id: c.id,
            name: c.name,
            created: c.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            legacy: c.legacy_scope,
            summary,
            users: vec![
                Choice::new("own", "Those it created", users),
                Choice::new("source", "Those of a directory source", users),
                Choice::new("all", "All users", users),
            ],
            sources: sources.iter().map(|s| Choice::new(s.id.to_string(), s.name.clone(), &source_id)).collect(),
            roles: vec![
                Choice::new("own", "Those it created", roles),
                Choice::new("pushable", "Pushable roles (members only) and its own", roles),
                Choice::new("all", "All roles", roles),
            ],
            read_only: scope.read_only,
            passwords: scope.passwords,
        });
    }
    view::page(&ListPage { layout, clients: rows }, StatusCode::OK)
}

async fn set_scope(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let users = match form.get("users") {
        Some("source") => UsersScope::Source,
        Some("all") => UsersScope::All,
        _ => UsersScope::Own,
    };
    let roles = match form.get("roles") {
        Some("pushable") => RolesScope::Pushable,
        Some("all") => RolesScope::All,
        _ => RolesScope::Own,
    };
    let source_id = form.opt("source_id").and_then(|s| s.parse().ok());
    let input = ScopeInput {
        users: Some(users),
        source_id,
        roles: Some(roles),
        read_only: Some(form.checked("read_only")),
        passwords: Some(form.checked("passwords")),
    };
    Ok(match clients::set_scope(&state, id, &input, &session.actor()).await {
        Ok(c) => view::see_other_with("/console/scim-clients", "ok", &format!("Set the scope of {}.", c.name)),
        Err(e) => view::see_other_with("/console/scim-clients", "error", &e.to_string()),
    })
}
