//! Directory sources: list, create, edit, test, "Sync now", a sync's progress (live), and
//! the confirmation of a sync stopped by the mass-suspension guard.

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use directory::{DirectorySource, DisabledCondition, GroupMapping, Role, SourceInput, SourceSync, SyncMode, SyncState};
use serde_json::{Map, Value};
use store::{NameQuery, PageRequest};
use uuid::Uuid;

use super::auth::Session;
use super::view::{self, field_errors, Errors, FormData, Layout};
use super::Result;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sources", get(list).post(create))
        .route("/sources/{id}", get(show).post(update))
        .route("/sources/{id}/delete", post(delete))
        .route("/sources/{id}/test", post(test))
        .route("/sources/{id}/sync", post(sync_now))
        .route("/sources/{id}/syncs", get(syncs_fragment))
        .route("/sources/{id}/syncs/{sync}/confirm", post(confirm))
}

/// The values of the source form, as text.
#[derive(Debug, Clone, Default)]
pub struct SourceForm {
    pub name: String,
    pub flavor: String,
    pub url: String,
    pub starttls: bool,
    pub bind_dn: String,
    pub base_dn: String,
    pub user_filter: String,
    /// `target = ldapAttribute`, a line each.
    pub attributes: String,
    /// `group DN => role name`, a line each.
    pub groups: String,
    pub schedule: String,
    pub guard_percent: String,
    pub disabled_attribute: String,
    pub disabled_value: String,
    pub enabled: bool,
}

/// One sync, as shown.
pub struct SyncView {
    pub id: Uuid,
    pub mode: &'static str,
    pub state: &'static str,
    pub state_label: &'static str,
    pub started: String,
    pub read: u64,
    pub created: u64,
    pub updated: u64,
    pub suspended: u64,
    pub reactivated: u64,
    pub failed: u64,
    pub pending: u64,
    pub message: String,
    pub errors: Vec<String>,
}

impl SyncView {
    fn of(s: &SourceSync) -> Self {
        let state_label = match s.state {
            SyncState::Running => "Running",
            SyncState::AwaitingConfirmation => "Awaiting confirmation",
            SyncState::Succeeded => "Succeeded",
            SyncState::Failed => "Failed",
        };
        Self {
            id: s.id,
            mode: s.mode.as_str(),
            state: s.state.as_str(),
            state_label,
            started: view::when(&s.started_at),
            read: s.counts.entries_read,
            created: s.counts.created,
            updated: s.counts.updated,
            suspended: s.counts.suspended,
            reactivated: s.counts.reactivated,
            failed: s.counts.failed,
            pending: s.pending_suspensions,
            message: s.message.clone().unwrap_or_default(),
            errors: s.errors.iter().take(10).cloned().collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "sources.html")]
struct ListPage {
    layout: Layout,
    sources: Vec<(DirectorySource, String)>,
    form: SourceForm,
    errors: Errors,
    other_errors: Vec<String>,
}

#[derive(Template)]
#[template(path = "source.html")]
struct SourcePage {
    layout: Layout,
    source: DirectorySource,
    form: SourceForm,
    errors: Errors,
    other_errors: Vec<String>,
    /// The syncs table (also served alone for live updates).
    syncs_html: String,
}

#[derive(Template)]
#[template(path = "source_syncs.html")]
struct SyncsFragment {
    source_id: Uuid,
    csrf: String,
    syncs: Vec<SyncView>,
    working: bool,
}

view::pages!(ListPage, SourcePage);

/// The fields of the form, by form name, in the order shown (for errors elsewhere).
const FORM_FIELDS: &[&str] = &[
    "name",
    "flavor",
    "url",
    "starttls",
    "bind_dn",
    "bind_password",
    "base_dn",
    "user_filter",
    "attributes",
    "groups",
    "schedule",
    "guard_percent",
    "disabled",
];

fn form_of(source: &DirectorySource, roles: &[Role]) -> SourceForm {
    let role_name =
        |id: Uuid| roles.iter().find(|r| r.id == id).map(|r| r.name.clone()).unwrap_or_else(|| id.to_string());
    SourceForm {
        name: source.name.clone(),
        flavor: source.flavor.as_str().to_owned(),
        url: source.url.clone(),
        starttls: source.starttls,
        bind_dn: source.bind_dn.clone(),
        base_dn: source.base_dn.clone(),
        user_filter: source.user_filter.clone(),
        attributes: source.attributes.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join("\n"),
        groups: source
            .groups
            .iter()
            .map(|g| format!("{} => {}", g.group_dn, role_name(g.role_id)))
            .collect::<Vec<_>>()
            .join("\n"),
        schedule: source.schedule.to_string(),
        guard_percent: source.guard_percent.to_string(),
        disabled_attribute: source.disabled.as_ref().map(|d| d.attribute.clone()).unwrap_or_default(),
        disabled_value: source.disabled.as_ref().map(|d| d.value.clone()).unwrap_or_default(),
        enabled: source.enabled,
    }
}

fn new_form() -> SourceForm {
    SourceForm {
        flavor: "active_directory".into(),
        schedule: "5".into(),
        guard_percent: "20".into(),
        enabled: true,
        ..SourceForm::default()
    }
}

fn read_form(form: &FormData) -> SourceForm {
    SourceForm {
        name: form.text("name"),
        flavor: form.text("flavor"),
        url: form.text("url"),
        starttls: form.checked("starttls"),
        bind_dn: form.text("bind_dn"),
        base_dn: form.text("base_dn"),
        user_filter: form.text("user_filter"),
        attributes: form.get("attributes").unwrap_or("").to_owned(),
        groups: form.get("groups").unwrap_or("").to_owned(),
        schedule: form.text("schedule"),
        guard_percent: form.text("guard_percent"),
        disabled_attribute: form.text("disabled_attribute"),
        disabled_value: form.text("disabled_value"),
        enabled: form.checked("enabled"),
    }
}

/// The form as a JSON document for the service (a body for create, a patch for update);
/// problems the service cannot see (a role name that does not exist) come back as errors.
fn to_document(f: &SourceForm, password: Option<String>, roles: &[Role]) -> (Map<String, Value>, Errors) {
    let mut errors = Vec::new();
    let mut doc = Map::new();
    doc.insert("name".into(), Value::String(f.name.clone()));
    doc.insert("kind".into(), Value::String("ldap".into()));
    doc.insert("flavor".into(), Value::String(f.flavor.clone()));
    doc.insert("url".into(), Value::String(f.url.clone()));
    doc.insert("starttls".into(), Value::Bool(f.starttls));
    doc.insert("bind_dn".into(), Value::String(f.bind_dn.clone()));
    doc.insert("base_dn".into(), Value::String(f.base_dn.clone()));
    doc.insert(
        "user_filter".into(),
        if f.user_filter.trim().is_empty() { Value::Null } else { Value::String(f.user_filter.clone()) },
    );
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        doc.insert("bind_password".into(), Value::String(p));
    }
    let mut attributes = BTreeMap::new();
    for line in f.attributes.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some((k, v)) => {
                attributes.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            None => errors
                .push(directory::FieldError::new("attributes", format!("{line:?} is not `attribute = ldapAttribute`"))),
        }
    }
    doc.insert("attributes".into(), serde_json::json!(attributes));
    let mut groups = Vec::new();
    for line in f.groups.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((dn, role)) = line.rsplit_once("=>") else {
            errors.push(directory::FieldError::new("groups", format!("{line:?} is not `group DN => role name`")));
            continue;
        };
        let role = role.trim();
        match roles.iter().find(|r| r.name.eq_ignore_ascii_case(role) || r.id.to_string() == role) {
            Some(r) => groups.push(GroupMapping { group_dn: dn.trim().to_owned(), role_id: r.id }),
            None => errors.push(directory::FieldError::new("groups", format!("there is no role named {role:?}"))),
        }
    }
    doc.insert("groups".into(), serde_json::json!(groups));
    match f.schedule.trim().parse::<u32>() {
        Ok(n) => {
            doc.insert("schedule".into(), Value::from(n));
        }
        Err(_) => {
            errors.push(directory::FieldError::new("schedule", "must be a whole number of minutes (0: only by hand)"))
        }
    }
    match f.guard_percent.trim().parse::<u32>() {
        Ok(n) => {
            doc.insert("guard_percent".into(), Value::from(n));
        }
        Err(_) => errors.push(directory::FieldError::new("guard_percent", "must be a whole number between 0 and 100")),
    }
    let disabled = if f.disabled_attribute.is_empty() && f.disabled_value.is_empty() {
        Value::Null
    } else {
        serde_json::json!(DisabledCondition {
            attribute: f.disabled_attribute.clone(),
            value: f.disabled_value.clone()
        })
    };
    doc.insert("disabled".into(), disabled);
    doc.insert("enabled".into(), Value::Bool(f.enabled));
    (doc, Errors(errors))
}

async fn all_roles(state: &AppState) -> Result<Vec<Role>> {
    let q = NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } };
    Ok(state.service.list_roles(&q).await?.items)
}

async fn list_page(state: &AppState, layout: Layout, form: SourceForm, errors: Errors) -> Result<ListPage> {
    let mut sources = Vec::new();
    for s in state.service.list_sources().await? {
        let last = state.service.list_source_syncs(s.id, 1).await?;
        let summary = match last.first() {
            None => "Never synced".to_owned(),
            Some(l) => {
                let v = SyncView::of(l);
                format!(
                    "{} ({}), {}: {} read, {} created, {} updated, {} suspended",
                    v.state_label, v.mode, v.started, v.read, v.created, v.updated, v.suspended
                )
            }
        };
        sources.push((s, summary));
    }
    let other_errors = errors.other(FORM_FIELDS);
    Ok(ListPage { layout, sources, form, errors, other_errors })
}

async fn list(State(state): State<AppState>, session: Session, headers: HeaderMap) -> Result<Response> {
    let layout = Layout::new(&session, &headers, "sources", "Directory sources");
    let page = list_page(&state, layout, new_form(), Errors::default()).await?;
    view::page(&page, StatusCode::OK)
}

async fn create(State(state): State<AppState>, session: Session, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let data = FormData::parse(&body);
    let form = read_form(&data);
    let roles = all_roles(&state).await?;
    let (doc, mut errors) = to_document(&form, data.opt("bind_password"), &roles);
    if errors.0.is_empty() {
        let result = match crate::extract::from_value::<SourceInput>(Value::Object(doc)) {
            Ok(input) => state.service.create_source(&session.actor(), input).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(source) => {
                return Ok(view::see_other_with(
                    &format!("/console/sources/{}", source.id),
                    "ok",
                    &format!("Added the source {}. Test it, then sync it.", source.name),
                ))
            }
            Err(e) => errors = field_errors(e)?,
        }
    }
    let layout = Layout::new(&session, &headers, "sources", "Directory sources");
    let page = list_page(&state, layout, form, errors).await?;
    view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
}

async fn syncs_of(state: &AppState, source: Uuid, csrf: String) -> Result<SyncsFragment> {
    let syncs: Vec<SyncView> = state.service.list_source_syncs(source, 10).await?.iter().map(SyncView::of).collect();
    let working = syncs.iter().any(|s| s.state == "running");
    Ok(SyncsFragment { source_id: source, csrf, syncs, working })
}

async fn source_page(
    state: &AppState,
    layout: Layout,
    id: Uuid,
    form: Option<SourceForm>,
    errors: Errors,
) -> Result<SourcePage> {
    let source = state.service.get_source(id).await?;
    let roles = all_roles(state).await?;
    let form = form.unwrap_or_else(|| form_of(&source, &roles));
    let syncs_html = view::render(&syncs_of(state, id, layout.csrf.clone()).await?)?;
    let other_errors = errors.other(FORM_FIELDS);
    Ok(SourcePage { layout, source, form, errors, other_errors, syncs_html })
}

async fn show(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let source = state.service.get_source(id).await?;
    let layout = Layout::new(&session, &headers, "sources", source.name);
    let page = source_page(&state, layout, id, None, Errors::default()).await?;
    view::page(&page, StatusCode::OK)
}

async fn update(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let data = FormData::parse(&body);
    let form = read_form(&data);
    let roles = all_roles(&state).await?;
    let (doc, mut errors) = to_document(&form, data.opt("bind_password"), &roles);
    if errors.0.is_empty() {
        let version = data.get("version").and_then(|v| v.parse::<i64>().ok());
        match state.service.patch_source(&session.actor(), id, &doc, version).await {
            Ok(source) => {
                return Ok(view::see_other_with(
                    &format!("/console/sources/{id}"),
                    "ok",
                    &format!("Saved {}.", source.name),
                ))
            }
            Err(e) => errors = field_errors(e)?,
        }
    }
    let source = state.service.get_source(id).await?;
    let layout = Layout::new(&session, &headers, "sources", source.name);
    let page = source_page(&state, layout, id, Some(form), errors).await?;
    view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
}

async fn delete(State(state): State<AppState>, session: Session, Path(id): Path<Uuid>) -> Result<Response> {
    let source = state.service.get_source(id).await?;
    state.service.delete_source(&session.actor(), id, None).await?;
    Ok(view::see_other_with(
        "/console/sources",
        "ok",
        &format!("Deleted the source {}. Its people stay, and can now be edited here.", source.name),
    ))
}

async fn test(State(state): State<AppState>, session: Session, Path(id): Path<Uuid>) -> Result<Response> {
    let to = format!("/console/sources/{id}");
    Ok(match state.service.test_source(&session.actor(), id).await {
        Ok(n) => view::see_other_with(
            &to,
            "ok",
            &format!("Connected and bound; the first page of the search held {n} people."),
        ),
        Err(e) => view::see_other_with(&to, "error", &e.to_string()),
    })
}

async fn sync_now(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let mode = match form.get("mode") {
        Some("incremental") => SyncMode::Incremental,
        _ => SyncMode::Full,
    };
    let to = format!("/console/sources/{id}");
    Ok(match state.service.start_source_sync(&session.actor(), id, Some(mode)).await {
        Ok(_) => view::see_other_with(&to, "ok", "The sync started; its progress shows below."),
        Err(e) => view::see_other_with(&to, "error", &e.to_string()),
    })
}

async fn syncs_fragment(State(state): State<AppState>, session: Session, Path(id): Path<Uuid>) -> Result<Response> {
    let fragment = syncs_of(&state, id, session.csrf.clone()).await?;
    Ok(view::fragment(view::render(&fragment)?))
}

async fn confirm(
    State(state): State<AppState>,
    session: Session,
    Path((id, sync)): Path<(Uuid, Uuid)>,
) -> Result<Response> {
    let to = format!("/console/sources/{id}");
    Ok(match state.service.confirm_source_sync(&session.actor(), id, sync).await {
        Ok(_) => view::see_other_with(&to, "ok", "Confirmed: the suspensions are being made."),
        Err(e) => view::see_other_with(&to, "error", &e.to_string()),
    })
}
