//! Users: search and filter, create, a user's page (profile, roles, applications),
//! suspend / reactivate / delete, and "Provision now".

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use directory::{Role, User, UserInput, UserSource, UserStatus};
use serde::Deserialize;
use serde_json::{Map, Value};
use store::{AccountQuery, NameQuery, PageRequest, UserQuery};
use uuid::Uuid;

use super::auth::Session;
use super::view::{self, field_errors, AccountView, Choice, Errors, FormData, Layout};
use super::Result;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/new", get(new_form))
        .route("/users/{id}", get(profile).post(update))
        .route("/users/{id}/status", post(set_status))
        .route("/users/{id}/delete", post(delete))
        .route("/users/{id}/roles", get(roles_tab).post(add_role))
        .route("/users/{id}/roles/{role}/remove", post(remove_role))
        .route("/users/{id}/applications", get(applications_tab))
        .route("/users/{id}/provision", post(provision_now))
}

/// The standard profile fields, as (form name, label): the first fields, then the
/// single-valued attributes of `directory::profile`.
pub const PROFILE_FIELDS: [(&str, &str); 22] = [
    ("username", "Username"),
    ("email", "Email"),
    ("first_name", "First name"),
    ("middle_name", "Middle name"),
    ("last_name", "Last name"),
    ("honorific_prefix", "Honorific prefix"),
    ("honorific_suffix", "Honorific suffix"),
    ("formatted_name", "Full name"),
    ("display_name", "Display name"),
    ("nick_name", "Nickname"),
    ("title", "Title"),
    ("department", "Department"),
    ("division", "Division"),
    ("organization", "Organization"),
    ("cost_center", "Cost center"),
    ("user_type", "User type"),
    ("phone", "Phone"),
    ("employee_number", "Employee number"),
    ("preferred_language", "Preferred language"),
    ("locale", "Locale"),
    ("timezone", "Time zone"),
    ("profile_url", "Profile URL"),
];

/// One input of the profile form.
pub struct FieldView {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
    pub error: Option<String>,
    pub kind: &'static str,
    pub required: bool,
    /// Filled by a directory source: shown read-only, with the source's name.
    pub source: Option<String>,
}

fn profile_fields(values: &dyn Fn(&str) -> String, errors: &Errors) -> Vec<FieldView> {
    PROFILE_FIELDS
        .iter()
        .map(|(name, label)| FieldView {
            name,
            label,
            value: values(name),
            error: errors.of(name),
            kind: match *name {
                "email" => "email",
                "phone" => "tel",
                _ => "text",
            },
            required: *name == "username",
            source: None,
        })
        .collect()
}

/// Marks the fields a directory source fills as read-only.
async fn mark_sourced(state: &AppState, user: &User, fields: &mut [FieldView]) -> Result<()> {
    let (sourced, source) = state.service.sourced_fields(user).await?;
    if let Some(source) = source {
        for f in fields.iter_mut().filter(|f| sourced.iter().any(|s| s == f.name)) {
            f.source = Some(source.clone());
        }
    }
    Ok(())
}

fn user_value(u: &User, field: &str) -> String {
    let v = match field {
        "username" => Some(&u.username),
        "email" => u.email.as_ref(),
        "first_name" => u.first_name.as_ref(),
        "last_name" => u.last_name.as_ref(),
        "display_name" => u.display_name.as_ref(),
        "title" => u.title.as_ref(),
        "department" => u.department.as_ref(),
        "phone" => u.phone.as_ref(),
        "employee_number" => u.employee_number.as_ref(),
        other => u.profile.text(other).and_then(Option::as_ref),
    };
    v.cloned().unwrap_or_default()
}

/// The multi-valued attributes of a user, one (label, value) per value: "Phone (mobile)".
fn profile_values(u: &User) -> Vec<(String, String)> {
    let p = &u.profile;
    let mut out = vec![];
    let label = |what: &str, kind: &Option<String>, primary: bool| {
        let mut l = what.to_owned();
        if let Some(k) = kind {
            l.push_str(&format!(" ({k})"));
        }
        if primary {
            l.push_str(", primary");
        }
        l
    };
    for (name, what) in [
        ("emails", "Email"),
        ("phone_numbers", "Phone"),
        ("ims", "Instant messaging"),
        ("photos", "Photo"),
        ("entitlements", "Entitlement"),
        ("scim_roles", "Role (from SCIM)"),
        ("x509_certificates", "Certificate"),
    ] {
        for v in p.list(name).map(Vec::as_slice).unwrap_or_default() {
            out.push((label(what, &v.kind, v.primary), v.value.clone()));
        }
    }
    for a in &p.addresses {
        let text = a.formatted.clone().unwrap_or_else(|| {
            [&a.street_address, &a.locality, &a.region, &a.postal_code, &a.country]
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        });
        out.push((label("Address", &a.kind, a.primary), text));
    }
    out
}

pub fn full_name(u: &User) -> String {
    u.display_name.clone().unwrap_or_else(|| {
        [u.first_name.as_deref(), u.last_name.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ")
    })
}

// ---- list ----

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    q: Option<String>,
    status: Option<String>,
    role: Option<String>,
    cursor: Option<String>,
}

struct UserRow {
    id: Uuid,
    username: String,
    name: String,
    email: String,
    status: &'static str,
    status_label: &'static str,
}

#[derive(Template)]
#[template(path = "users.html")]
struct ListPage {
    layout: Layout,
    q: String,
    statuses: Vec<Choice>,
    roles: Vec<Choice>,
    rows: Vec<UserRow>,
    next: Option<String>,
    filtered: bool,
}

async fn all_roles(state: &AppState) -> Result<Vec<Role>> {
    let q = NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } };
    Ok(state.service.list_roles(&q).await?.items)
}

async fn list(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Response> {
    let q = p.q.clone().unwrap_or_default();
    let status_text = p.status.clone().unwrap_or_default();
    let role_text = p.role.clone().unwrap_or_default();
    let role = Uuid::parse_str(&role_text).ok();
    let query = UserQuery {
        q: Some(q.trim().to_owned()).filter(|s| !s.is_empty()),
        status: UserStatus::parse(&status_text),
        role,
        page: PageRequest { limit: 25, cursor: p.cursor.clone().filter(|c| !c.is_empty()) },
    };
    let page = state.service.list_users(&query).await?;
    let rows = page
        .items
        .iter()
        .map(|u| UserRow {
            id: u.id,
            username: u.username.clone(),
            name: full_name(u),
            email: u.email.clone().unwrap_or_default(),
            status: u.status.as_str(),
            status_label: view::user_status_label(u.status),
        })
        .collect();
    let mut roles = vec![Choice::new("", "Any role", &role_text)];
    roles.extend(all_roles(&state).await?.iter().map(|r| Choice::new(r.id.to_string(), &r.name, &role_text)));
    let statuses = vec![
        Choice::new("", "Active and suspended", &status_text),
        Choice::new("active", "Active", &status_text),
        Choice::new("suspended", "Suspended", &status_text),
        Choice::new("deleted", "Deleted", &status_text),
    ];
    let next = view::next_link(
        "/console/users",
        &[("q", q.clone()), ("status", status_text.clone()), ("role", role_text.clone())],
        page.next_cursor,
    );
    let layout = Layout::new(&session, &headers, "users", "Users");
    let filtered = !q.is_empty() || !status_text.is_empty() || !role_text.is_empty() || p.cursor.is_some();
    view::page(&ListPage { layout, q, statuses, roles, rows, next, filtered }, StatusCode::OK)
}

// ---- create ----

#[derive(Template)]
#[template(path = "user_new.html")]
struct NewPage {
    layout: Layout,
    fields: Vec<FieldView>,
    other_errors: Vec<String>,
}

async fn new_form(session: Session, headers: HeaderMap) -> Result<Response> {
    let layout = Layout::new(&session, &headers, "users", "New user");
    let fields = profile_fields(&|_| String::new(), &Errors::default());
    view::page(&NewPage { layout, fields, other_errors: vec![] }, StatusCode::OK)
}

async fn create(State(state): State<AppState>, session: Session, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let form = FormData::parse(&body);
    let mut input = UserInput {
        username: form.text("username"),
        email: form.opt("email"),
        first_name: form.opt("first_name"),
        last_name: form.opt("last_name"),
        display_name: form.opt("display_name"),
        title: form.opt("title"),
        department: form.opt("department"),
        phone: form.opt("phone"),
        employee_number: form.opt("employee_number"),
        ..Default::default()
    };
    for (name, _) in PROFILE_FIELDS {
        if let Some(slot) = input.profile.text_mut(name) {
            *slot = form.opt(name);
        }
    }
    match state.service.create_user(&session.actor(), input, UserSource::Local).await {
        Ok(user) => Ok(view::see_other_with(
            &format!("/console/users/{}/roles", user.id),
            "ok",
            &format!("Created {}. Add them to a role to give them apps.", user.username),
        )),
        Err(e) => {
            let status = match e {
                crate::Error::Conflict { .. } => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let errors = field_errors(e)?;
            let layout = Layout::new(&session, &headers, "users", "New user");
            let fields = profile_fields(&|name| form.text(name), &errors);
            let other_errors = errors.other(&PROFILE_FIELDS.map(|(n, _)| n));
            view::page(&NewPage { layout, fields, other_errors }, status)
        }
    }
}

// ---- a user's page ----

pub struct StepView {
    pub app_name: String,
    pub step: String,
    pub badge: Option<view::Badge>,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    layout: Layout,
    tab: &'static str,
    id: Uuid,
    username: String,
    name: String,
    status: &'static str,
    status_label: &'static str,
    active: bool,
    // profile
    fields: Vec<FieldView>,
    other_errors: Vec<String>,
    custom: Vec<(String, String)>,
    /// The values of the multi-valued attributes (e-mail addresses, phone numbers, postal
    /// addresses, ...): (label, value).
    values: Vec<(String, String)>,
    source: &'static str,
    created: String,
    version: i64,
    // roles
    member_of: Vec<Role>,
    other_roles: Vec<Role>,
    // applications
    accounts: Vec<AccountView>,
    /// Apps the user's roles grant that have no account for them: (id, name).
    unaccounted: Vec<(Uuid, String)>,
    steps: Option<Vec<StepView>>,
}

#[derive(Template)]
#[template(path = "user_accounts.html")]
struct AccountsFragment {
    accounts: Vec<AccountView>,
}

impl UserPage {
    fn new(layout: Layout, tab: &'static str, user: &User) -> Self {
        Self {
            layout,
            tab,
            id: user.id,
            username: user.username.clone(),
            name: full_name(user),
            status: user.status.as_str(),
            status_label: view::user_status_label(user.status),
            active: user.status == UserStatus::Active,
            fields: vec![],
            other_errors: vec![],
            custom: user.attributes.iter().map(|(k, v)| (k.clone(), display_value(v))).collect(),
            values: profile_values(user),
            source: user.source.as_str(),
            created: view::when(&user.created_at),
            version: user.version,
            member_of: vec![],
            other_roles: vec![],
            accounts: vec![],
            unaccounted: vec![],
            steps: None,
        }
    }
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(display_value).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

view::pages!(ListPage, NewPage, UserPage);

async fn profile(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let user = state.service.get_user(id).await?;
    let layout = Layout::new(&session, &headers, "users", user.username.clone());
    let mut page = UserPage::new(layout, "profile", &user);
    page.fields = profile_fields(&|f| user_value(&user, f), &Errors::default());
    mark_sourced(&state, &user, &mut page.fields).await?;
    view::page(&page, StatusCode::OK)
}

async fn update(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let mut patch = Map::new();
    for (name, _) in PROFILE_FIELDS {
        let v = form.text(name);
        let value = if v.is_empty() && name != "username" { Value::Null } else { Value::String(v) };
        patch.insert(name.to_owned(), value);
    }
    let version = form.get("version").and_then(|v| v.parse::<i64>().ok());
    match state.service.patch_user(&session.actor(), id, &patch, version).await {
        Ok(user) => Ok(view::see_other_with(&format!("/console/users/{}", user.id), "ok", "Profile saved.")),
        Err(e) => {
            let errors = field_errors(e)?;
            let user = state.service.get_user(id).await?;
            let layout = Layout::new(&session, &headers, "users", user.username.clone());
            let mut page = UserPage::new(layout, "profile", &user);
            page.fields = profile_fields(&|f| form.text(f), &errors);
            mark_sourced(&state, &user, &mut page.fields).await?;
            page.other_errors = errors.other(&PROFILE_FIELDS.map(|(n, _)| n));
            view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
        }
    }
}

async fn set_status(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let (status, done) = match form.get("status") {
        Some("suspended") => ("suspended", "suspended"),
        _ => ("active", "reactivated"),
    };
    let mut patch = Map::new();
    patch.insert("status".into(), Value::String(status.into()));
    let user = state.service.patch_user(&session.actor(), id, &patch, None).await?;
    Ok(view::see_other_with(
        &format!("/console/users/{id}/applications"),
        "ok",
        &format!("{} is {done}; their app accounts follow.", user.username),
    ))
}

async fn delete(State(state): State<AppState>, session: Session, Path(id): Path<Uuid>) -> Result<Response> {
    let user = state.service.delete_user(&session.actor(), id, None).await?;
    Ok(view::see_other_with("/console/users", "ok", &format!("Deleted {}.", user.username)))
}

async fn roles_tab(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let user = state.service.get_user(id).await?;
    let member_of = state.service.roles_of_user(id).await?;
    let other_roles =
        all_roles(&state).await?.into_iter().filter(|r| !member_of.iter().any(|m| m.id == r.id)).collect();
    let layout = Layout::new(&session, &headers, "users", format!("{} · Roles", user.username));
    let mut page = UserPage::new(layout, "roles", &user);
    page.member_of = member_of;
    page.other_roles = other_roles;
    view::page(&page, StatusCode::OK)
}

async fn add_role(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let Some(role) = form.get("role").and_then(|r| Uuid::parse_str(r).ok()) else {
        return Ok(view::see_other_with(&format!("/console/users/{id}/roles"), "error", "Choose a role."));
    };
    state.service.add_role_user(&session.actor(), role, id).await?;
    let role = state.service.get_role(role).await?;
    Ok(view::see_other_with(&format!("/console/users/{id}/roles"), "ok", &format!("Added to {}.", role.name)))
}

async fn remove_role(
    State(state): State<AppState>,
    session: Session,
    Path((id, role)): Path<(Uuid, Uuid)>,
) -> Result<Response> {
    state.service.remove_role_user(&session.actor(), role, id).await?;
    let role = state.service.get_role(role).await?;
    Ok(view::see_other_with(&format!("/console/users/{id}/roles"), "ok", &format!("Removed from {}.", role.name)))
}

async fn accounts_of(state: &AppState, user: Uuid) -> Result<Vec<AccountView>> {
    let q = AccountQuery { user: Some(user), app: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } };
    let accounts = state.service.list_accounts(&q).await?.items;
    let apps = state
        .service
        .list_apps(&NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } })
        .await?
        .items;
    let mut views: Vec<AccountView> = accounts.iter().map(|a| AccountView::of(a, &apps)).collect();
    views.sort_by_key(|a| a.app_name.to_lowercase());
    Ok(views)
}

/// Apps the user's roles grant but that have no account for them (so "Explain" can say why).
async fn unaccounted(state: &AppState, user: Uuid, accounts: &[AccountView]) -> Result<Vec<(Uuid, String)>> {
    let mut out: Vec<(Uuid, String)> = Vec::new();
    for role in state.service.roles_of_user(user).await? {
        for app in state.service.apps_of_role(role.id).await? {
            if !accounts.iter().any(|a| a.app_id == app.id) && !out.iter().any(|(id, _)| *id == app.id) {
                out.push((app.id, app.name));
            }
        }
    }
    out.sort_by_key(|(_, name)| name.to_lowercase());
    Ok(out)
}

async fn applications_tab(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let user = state.service.get_user(id).await?;
    let accounts = accounts_of(&state, id).await?;
    if view::wants_fragment(&headers) {
        return Ok(view::fragment(view::render(&AccountsFragment { accounts })?));
    }
    let layout = Layout::new(&session, &headers, "users", format!("{} · Applications", user.username));
    let mut page = UserPage::new(layout, "applications", &user);
    page.unaccounted = unaccounted(&state, id, &accounts).await?;
    page.accounts = accounts;
    view::page(&page, StatusCode::OK)
}

async fn provision_now(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let user = state.service.get_user(id).await?;
    let steps = state.service.provision_now(&session.actor(), id, None).await?;
    let steps = steps
        .into_iter()
        .map(|s| StepView {
            app_name: s.app_name,
            step: s.step,
            badge: s.event.as_ref().map(|e| view::Badge::of(e.status)),
            reason: s.event.and_then(|e| e.reason).unwrap_or_default(),
        })
        .collect();
    let accounts = accounts_of(&state, id).await?;
    let layout = Layout::new(&session, &headers, "users", format!("{} · Applications", user.username));
    let mut page = UserPage::new(layout, "applications", &user);
    page.unaccounted = unaccounted(&state, id, &accounts).await?;
    page.accounts = accounts;
    page.steps = Some(steps);
    view::page(&page, StatusCode::OK)
}
