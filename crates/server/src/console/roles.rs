//! Roles: create, members (add / remove), apps granted (grant / revoke).

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use directory::{App, Role, RoleInput, User};
use serde::Deserialize;
use store::{NameQuery, PageRequest, UserQuery};
use uuid::Uuid;

use super::auth::Session;
use super::users::full_name;
use super::view::{self, field_errors, Errors, FormData, Layout};
use super::Result;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/roles", get(list).post(create))
        .route("/roles/{id}", get(show))
        .route("/roles/{id}/delete", post(delete))
        .route("/roles/{id}/users", post(add_user))
        .route("/roles/{id}/users/{user}/remove", post(remove_user))
        .route("/roles/{id}/apps", post(grant_app))
        .route("/roles/{id}/apps/{app}/remove", post(revoke_app))
}

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    q: Option<String>,
    cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "roles.html")]
struct ListPage {
    layout: Layout,
    q: String,
    roles: Vec<Role>,
    next: Option<String>,
    name: String,
    description: String,
    errors: Errors,
}

#[derive(Template)]
#[template(path = "role.html")]
struct RolePage {
    layout: Layout,
    role: Role,
    members: Vec<(User, String)>,
    next: Option<String>,
    apps: Vec<App>,
    other_apps: Vec<App>,
    username: String,
    member_error: Option<String>,
    /// A change that would suspend or delete accounts, asked about first.
    confirm: Option<Confirm>,
}

/// "Revoking Wiki would delete 12 accounts": the question, and the form that goes on.
struct Confirm {
    /// Where the confirmed form posts.
    action: String,
    /// What the change is, e.g. "Revoking Wiki from Staff".
    what: String,
    /// The verb of the button, e.g. "Revoke".
    verb: &'static str,
    count: u64,
    held: u64,
}

view::pages!(ListPage, RolePage);

/// When a change would suspend or delete accounts and was not confirmed yet: the role page
/// asking for confirmation, with the count in the button.
async fn ask_first(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    body: &Bytes,
    id: Uuid,
    run: crate::error::Result<engine::dry_run::DryRun>,
    confirm: impl FnOnce(u64, u64) -> Confirm,
) -> Result<Option<Response>> {
    if FormData::parse(body).text("confirmed") == "1" {
        return Ok(None);
    }
    let run = run?;
    let count = run.deprovisions();
    if count == 0 {
        return Ok(None);
    }
    let held = run.effects.iter().map(|e| e.held).sum();
    let role = state.service.get_role(id).await?;
    let layout = Layout::new(session, headers, "roles", role.name);
    let mut page = role_page(state, layout, id, None, String::new(), None).await?;
    page.confirm = Some(confirm(count, held));
    Ok(Some(view::page(&page, StatusCode::OK)?))
}

async fn list_page(
    state: &AppState,
    layout: Layout,
    q: String,
    cursor: Option<String>,
    form: (String, String, Errors),
) -> Result<ListPage> {
    let query = NameQuery {
        q: Some(q.trim().to_owned()).filter(|s| !s.is_empty()),
        page: PageRequest { limit: 50, cursor: cursor.filter(|c| !c.is_empty()) },
    };
    let page = state.service.list_roles(&query).await?;
    let next = view::next_link("/console/roles", &[("q", q.clone())], page.next_cursor);
    let (name, description, errors) = form;
    Ok(ListPage { layout, q, roles: page.items, next, name, description, errors })
}

async fn list(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Response> {
    let layout = Layout::new(&session, &headers, "roles", "Roles");
    let page =
        list_page(&state, layout, p.q.unwrap_or_default(), p.cursor, (String::new(), String::new(), Errors::default()))
            .await?;
    view::page(&page, StatusCode::OK)
}

async fn create(State(state): State<AppState>, session: Session, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let form = FormData::parse(&body);
    let input = RoleInput { name: form.text("name"), description: form.opt("description"), pushable: false };
    match state.service.create_role(&session.actor(), input).await {
        Ok(role) => Ok(view::see_other_with(
            &format!("/console/roles/{}", role.id),
            "ok",
            &format!("Created the role {}. Grant it apps and add its members.", role.name),
        )),
        Err(e) => {
            let errors = field_errors(e)?;
            let layout = Layout::new(&session, &headers, "roles", "Roles");
            let page =
                list_page(&state, layout, String::new(), None, (form.text("name"), form.text("description"), errors))
                    .await?;
            view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ShowParams {
    cursor: Option<String>,
}

async fn role_page(
    state: &AppState,
    layout: Layout,
    id: Uuid,
    cursor: Option<String>,
    username: String,
    member_error: Option<String>,
) -> Result<RolePage> {
    let role = state.service.get_role(id).await?;
    let q = UserQuery { role: Some(id), page: PageRequest { limit: 50, cursor }, ..Default::default() };
    let page = state.service.list_users(&q).await?;
    let next = view::next_link(&format!("/console/roles/{id}"), &[], page.next_cursor);
    let members = page.items.into_iter().map(|u| (full_name(&u), u)).map(|(n, u)| (u, n)).collect();
    let apps = state.service.apps_of_role(id).await?;
    let all = state
        .service
        .list_apps(&NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } })
        .await?
        .items;
    let other_apps = all.into_iter().filter(|a| !apps.iter().any(|g| g.id == a.id)).collect();
    Ok(RolePage { layout, role, members, next, apps, other_apps, username, member_error, confirm: None })
}

async fn show(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(p): Query<ShowParams>,
) -> Result<Response> {
    let role = state.service.get_role(id).await?;
    let layout = Layout::new(&session, &headers, "roles", role.name);
    let page = role_page(&state, layout, id, p.cursor.filter(|c| !c.is_empty()), String::new(), None).await?;
    view::page(&page, StatusCode::OK)
}

async fn delete(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let role = state.service.get_role(id).await?;
    let run = state.service.dry_run_delete_role(id, None).await;
    let what = format!("Deleting the role {}", role.name);
    let asked = ask_first(&state, &session, &headers, &body, id, run, |count, held| Confirm {
        action: format!("/console/roles/{id}/delete"),
        what,
        verb: "Delete the role",
        count,
        held,
    })
    .await?;
    if let Some(page) = asked {
        return Ok(page);
    }
    state.service.delete_role(&session.actor(), id, None).await?;
    Ok(view::see_other_with("/console/roles", "ok", &format!("Deleted the role {}.", role.name)))
}

/// Adds a member by username (exact, case-insensitive).
async fn add_user(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let username = form.text("username");
    let found = if username.is_empty() {
        None
    } else {
        let q = UserQuery {
            q: Some(username.clone()),
            page: PageRequest { limit: 50, cursor: None },
            ..Default::default()
        };
        state.service.list_users(&q).await?.items.into_iter().find(|u| u.username.eq_ignore_ascii_case(&username))
    };
    let Some(user) = found else {
        let role = state.service.get_role(id).await?;
        let layout = Layout::new(&session, &headers, "roles", role.name);
        let error =
            if username.is_empty() { "Enter a username." } else { "No active or suspended user has this username." };
        let page = role_page(&state, layout, id, None, username, Some(error.to_owned())).await?;
        return view::page(&page, StatusCode::UNPROCESSABLE_ENTITY);
    };
    let added = state.service.add_role_user(&session.actor(), id, user.id).await?;
    let text = if added {
        format!("Added {} to the role.", user.username)
    } else {
        format!("{} already belongs to the role.", user.username)
    };
    Ok(view::see_other_with(&format!("/console/roles/{id}"), "ok", &text))
}

async fn remove_user(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((id, user)): Path<(Uuid, Uuid)>,
    body: Bytes,
) -> Result<Response> {
    let run = state.service.dry_run_membership(id, user, false).await;
    let name = state.service.get_user(user).await?.username;
    let asked = ask_first(&state, &session, &headers, &body, id, run, |count, held| Confirm {
        action: format!("/console/roles/{id}/users/{user}/remove"),
        what: format!("Removing {name} from the role"),
        verb: "Remove",
        count,
        held,
    })
    .await?;
    if let Some(page) = asked {
        return Ok(page);
    }
    state.service.remove_role_user(&session.actor(), id, user).await?;
    Ok(view::see_other_with(&format!("/console/roles/{id}"), "ok", "Removed the member from the role."))
}

async fn grant_app(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let Some(app) = form.get("app").and_then(|a| Uuid::parse_str(a).ok()) else {
        return Ok(view::see_other_with(&format!("/console/roles/{id}"), "error", "Choose an app to grant."));
    };
    state.service.add_role_app(&session.actor(), id, app).await?;
    let app = state.service.get_app(app).await?;
    Ok(view::see_other_with(
        &format!("/console/roles/{id}"),
        "ok",
        &format!("The role now grants {}. Its members get accounts there.", app.name),
    ))
}

async fn revoke_app(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((id, app)): Path<(Uuid, Uuid)>,
    body: Bytes,
) -> Result<Response> {
    let run = state.service.dry_run_role_grant(id, app, false).await;
    let name = state.service.get_app(app).await?.name;
    let asked = ask_first(&state, &session, &headers, &body, id, run, |count, held| Confirm {
        action: format!("/console/roles/{id}/apps/{app}/remove"),
        what: format!("Revoking {name} from the role"),
        verb: "Revoke",
        count,
        held,
    })
    .await?;
    if let Some(page) = asked {
        return Ok(page);
    }
    state.service.remove_role_app(&session.actor(), id, app).await?;
    Ok(view::see_other_with(&format!("/console/roles/{id}"), "ok", "The role no longer grants the app."))
}
