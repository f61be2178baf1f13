//! Apps: the list with health and each queue (how many, the rate, when empty); an app's tabs Configuration (API connection, write-only
//! credentials, Enable / Test connection), Provisioning (enable, approvals, what happens on
//! suspend and delete) and Users (its accounts); "Rematch login".

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use directory::{App, AuthConfig, DeprovisionAction, EventStatus, User};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use store::{AccountQuery, EventQuery, NameQuery, PageRequest};
use uuid::Uuid;

use super::auth::Session;
use super::view::{self, field_errors, AccountView, Choice, Errors, FormData, Layout};
use super::Result;
use crate::{AppState, Error};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/apps", get(list).post(create))
        .route("/apps/new", get(new_form))
        .route(
            "/apps/{id}",
            get(|Path(id): Path<Uuid>| async move { view::see_other(&format!("/console/apps/{id}/configuration")) }),
        )
        .route("/apps/{id}/configuration", get(configuration).post(save_configuration))
        .route("/apps/{id}/test", post(test_connection))
        .route("/apps/{id}/resume", post(resume))
        .route("/apps/{id}/delete", post(delete))
        .route("/apps/{id}/provisioning", get(provisioning).post(save_provisioning))
        .route("/apps/{id}/reconcile", post(reconcile))
        .route("/apps/{id}/held", post(decide_held))
        .route("/apps/{id}/users", get(users_tab))
        .route("/apps/{id}/accounts/{user}/rematch", get(rematch_form).post(rematch))
}

const CONFIG_FIELDS: [&str; 10] = [
    "name",
    "description",
    "base_url",
    "token",
    "username",
    "password",
    "token_url",
    "client_id",
    "client_secret",
    "scope",
];

// ---- list ----

struct AppRow {
    id: Uuid,
    name: String,
    base_url: String,
    enabled: bool,
    health: &'static str,
    health_label: &'static str,
    last_error: String,
    last_error_at: String,
    failure_rate: String,
    pending: usize,
    held: usize,
    /// The queue, its rate and when it will be empty, in words.
    queue: String,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct ListPage {
    layout: Layout,
    rows: Vec<AppRow>,
}

/// The app's connection badge and quarantine banner, shown on each of its pages.
#[derive(Debug, Clone)]
pub(super) struct AppStatus {
    pub badge_slug: &'static str,
    pub badge_label: &'static str,
    pub quarantined: bool,
    pub reason: String,
    pub since: String,
    pub next_probe: String,
    pub next_probe_iso: String,
    /// The last connection test failed: what the app said.
    pub last_test_failure: Option<String>,
    /// The queue, its rate and when it will be empty, in words.
    pub queue: String,
    /// What slows the app down now (its rate budget, a pause it asked for, a lowered
    /// concurrency), in words.
    pub pace: Vec<String>,
}

/// About how long `seconds` is, in words.
fn duration_words(seconds: i64) -> String {
    match seconds {
        s if s < 60 => "under a minute".to_owned(),
        s if s < 3600 => format!("about {} min", (s + 30) / 60),
        s => {
            let minutes = (s + 30) / 60;
            format!("about {} h {} min", minutes / 60, minutes % 60)
        }
    }
}

/// The app's queue in words: how many operations, at what rate, empty when.
pub(super) fn queue_words(h: &directory::AppHealth) -> String {
    if h.queued == 0 {
        return "Nothing queued".to_owned();
    }
    let mut out = format!("{} queued", h.queued);
    if let Some(r) = h.rate_per_minute {
        out.push_str(&format!(" · {r:.1} a minute"));
    }
    match (h.eta_seconds, h.rate_basis) {
        (Some(eta), Some(directory::RateBasis::Budget)) => {
            out.push_str(&format!(" · empty in {} at the rate budget", duration_words(eta)))
        }
        (Some(eta), _) => out.push_str(&format!(" · empty in {}", duration_words(eta))),
        (None, _) if h.state == directory::HealthState::Quarantined => out.push_str(" · paused"),
        (None, _) => out.push_str(" · no rate known yet"),
    }
    out
}

/// What slows the app down now, in words (see [`AppStatus::pace`]).
fn pace_words(h: &directory::AppHealth, max_concurrency: u32) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = &h.rate_limit {
        let requests = if r.per_minute == 1 { "request" } else { "requests" };
        out.push(format!(
            "Rate budget: {} {requests} a minute, bursts of {}, shared by every engine process.",
            r.per_minute,
            r.burst()
        ));
    }
    if let Some(until) = &h.paused_until {
        out.push(format!("Paused until {}: the app asked to wait (Retry-After).", view::when(until)));
    }
    if h.concurrency < max_concurrency {
        out.push(format!(
            "Concurrency lowered to {} of {max_concurrency} after the app answered 429 or 5xx; it grows back by one every 10 s.",
            h.concurrency
        ));
    }
    out
}

pub(super) async fn app_status(state: &AppState, app: Uuid, tested: bool) -> Result<AppStatus> {
    let h = state.service.app_health(app).await?;
    let max_concurrency = state.service.get_app(app).await?.provisioning.max_concurrency;
    let (queue, pace) = (queue_words(&h), pace_words(&h, max_concurrency));
    let quarantined = h.state == directory::HealthState::Quarantined;
    let last_test_failure = h.last_test.as_ref().filter(|t| !t.ok).map(|t| t.message.clone().unwrap_or_default());
    let (badge_slug, badge_label) = if quarantined {
        ("health-failing", "Quarantined")
    } else if last_test_failure.is_some() {
        ("health-failing", "Connection failing")
    } else if tested {
        ("health-healthy", "Connected")
    } else {
        ("health-untested", "Not connected")
    };
    Ok(AppStatus {
        badge_slug,
        badge_label,
        quarantined,
        reason: h.reason.unwrap_or_default(),
        since: h.since.as_ref().map(view::when).unwrap_or_default(),
        next_probe: h.next_probe.as_ref().map(view::when).unwrap_or_default(),
        next_probe_iso: h.next_probe.as_ref().map(view::iso).unwrap_or_default(),
        last_test_failure,
        queue,
        pace,
    })
}

/// How an app has been doing, from its latest events.
async fn health(state: &AppState, app: &App) -> Result<AppRow> {
    let q = EventQuery { app: Some(app.id), page: PageRequest { limit: 200, cursor: None }, ..Default::default() };
    let events = state.service.list_events(&q).await?.items;
    let finished: Vec<_> = events
        .iter()
        .filter(|e| e.status.is_final() && !matches!(e.status, EventStatus::Cancelled | EventStatus::Rejected))
        .collect();
    let unresolved = |e: &&&directory::Event| e.status == EventStatus::Failed && e.resolved_by.is_none();
    let failed = finished.iter().filter(unresolved).count();
    let pending = events.iter().filter(|e| e.status == EventStatus::Pending).count();
    let last_failure = events.iter().find(|e| e.status == EventStatus::Failed);
    let tested = state.service.store().get_app_capabilities(app.id).await?.is_some();
    let h = state.service.app_health(app.id).await?;
    let quarantined = h.state == directory::HealthState::Quarantined;
    let (health, health_label) = if quarantined {
        ("failing", "Quarantined")
    } else if finished.first().is_some_and(|e| e.status == EventStatus::Failed && e.resolved_by.is_none()) {
        ("failing", "Failing")
    } else if failed > 0 {
        ("degraded", "Some failures")
    } else if !tested {
        ("untested", "Not connected")
    } else {
        ("healthy", "Healthy")
    };
    let failure_rate = if finished.is_empty() {
        "No events yet".to_owned()
    } else {
        format!("{}% ({failed} of the last {})", failed * 100 / finished.len(), finished.len())
    };
    Ok(AppRow {
        id: app.id,
        name: app.name.clone(),
        base_url: app.connection.base_url.clone(),
        enabled: app.provisioning.enabled,
        health,
        health_label,
        last_error: last_failure.and_then(|e| e.reason.clone()).unwrap_or_default(),
        last_error_at: last_failure.map(|e| view::when(&e.updated_at)).unwrap_or_default(),
        failure_rate,
        pending,
        held: state.service.held_events(app.id).await?.len(),
        queue: queue_words(&h),
    })
}

async fn list(State(state): State<AppState>, session: Session, headers: HeaderMap) -> Result<Response> {
    let apps = state
        .service
        .list_apps(&NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } })
        .await?
        .items;
    let mut rows = Vec::with_capacity(apps.len());
    for app in &apps {
        rows.push(health(&state, app).await?);
    }
    let layout = Layout::new(&session, &headers, "apps", "Apps");
    view::page(&ListPage { layout, rows }, StatusCode::OK)
}

// ---- configuration ----

/// The connection form as the admin filled it (secrets are never filled in).
#[derive(Debug, Clone, Default)]
struct ConfigForm {
    name: String,
    description: String,
    base_url: String,
    auth_type: String,
    username: String,
    token_url: String,
    client_id: String,
    scope: String,
}

impl ConfigForm {
    fn of(app: &App) -> Self {
        let mut f = Self {
            name: app.name.clone(),
            description: app.description.clone().unwrap_or_default(),
            base_url: app.connection.base_url.clone(),
            ..Default::default()
        };
        match &app.connection.auth {
            AuthConfig::Bearer {} => f.auth_type = "bearer".into(),
            AuthConfig::Basic { username } => {
                f.auth_type = "basic".into();
                f.username = username.clone();
            }
            AuthConfig::OAuth2ClientCredentials { token_url, client_id, scope } => {
                f.auth_type = "oauth2_client_credentials".into();
                f.token_url = token_url.clone();
                f.client_id = client_id.clone();
                f.scope = scope.clone().unwrap_or_default();
            }
        }
        f
    }

    fn from_form(form: &FormData) -> Self {
        Self {
            name: form.text("name"),
            description: form.text("description"),
            base_url: form.text("base_url"),
            auth_type: form.text("auth_type"),
            username: form.text("username"),
            token_url: form.text("token_url"),
            client_id: form.text("client_id"),
            scope: form.text("scope"),
        }
    }

    fn auth_choices(&self) -> Vec<Choice> {
        vec![
            Choice::new("bearer", "Bearer token", &self.auth_type),
            Choice::new("basic", "Username and password", &self.auth_type),
            Choice::new("oauth2_client_credentials", "OAuth 2.0 client credentials", &self.auth_type),
        ]
    }
}

/// The `connection` document of a form; secrets only when typed in.
fn connection_doc(form: &FormData) -> Value {
    let secret = |name: &str| form.get(name).filter(|v| !v.is_empty()).map(|v| Value::String(v.to_owned()));
    let mut auth = Map::new();
    let kind = form.text("auth_type");
    auth.insert("type".into(), Value::String(if kind.is_empty() { "bearer".into() } else { kind.clone() }));
    match kind.as_str() {
        "basic" => {
            auth.insert("username".into(), Value::String(form.text("username")));
            if let Some(p) = secret("password") {
                auth.insert("password".into(), p);
            }
        }
        "oauth2_client_credentials" => {
            auth.insert("token_url".into(), Value::String(form.text("token_url")));
            auth.insert("client_id".into(), Value::String(form.text("client_id")));
            auth.insert("scope".into(), form.opt("scope").map_or(Value::Null, Value::String));
            if let Some(s) = secret("client_secret") {
                auth.insert("client_secret".into(), s);
            }
        }
        _ => {
            if let Some(t) = secret("token") {
                auth.insert("token".into(), t);
            }
        }
    }
    json!({"base_url": form.text("base_url"), "auth": auth})
}

/// The result of "Enable / Test connection".
struct TestResult {
    ok: bool,
    message: String,
    recommended_action: String,
    capabilities: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "app_new.html")]
struct NewPage {
    layout: Layout,
    editing: bool,
    form: ConfigForm,
    auth_choices: Vec<Choice>,
    errors: Errors,
    other_errors: Vec<String>,
}

#[derive(Template)]
#[template(path = "app.html")]
struct AppPage {
    layout: Layout,
    tab: &'static str,
    app: App,
    // configuration
    editing: bool,
    form: ConfigForm,
    auth_choices: Vec<Choice>,
    errors: Errors,
    other_errors: Vec<String>,
    test: Option<TestResult>,
    tested: bool,
    status: AppStatus,
    // provisioning
    on_suspend: Vec<Choice>,
    on_delete: Vec<Choice>,
    // users
    accounts: Vec<AccountView>,
    next: Option<String>,
    /// "SAML JIT only": the app creates accounts at sign-in; the engine pushes none.
    saml_jit_only: bool,
    /// Operations held by the deprovisioning guard.
    held: usize,
    /// The first of them, for the review on the Provisioning tab.
    held_list: Vec<view::EventView>,
    /// The save would suspend or delete this many accounts: asks for confirmation first.
    confirm: u64,
    /// Of which the guard would hold this many.
    confirm_held: u64,
    apply_to_existing: bool,
    /// How the latest reconcile and Refresh read the app.
    reads: Vec<ReadView>,
}

/// How one job (reconcile or Refresh) last read the app.
struct ReadView {
    job: &'static str,
    status: String,
    strategy: String,
    contradictions: Vec<String>,
    duplicate_members: u64,
    recorded: String,
}

impl ReadView {
    fn of(r: &store::AppRead) -> Self {
        let v = &r.result;
        Self {
            job: if r.kind == "reconcile" { "Reconcile" } else { "Refresh" },
            status: v["status"].as_str().unwrap_or("").to_owned(),
            strategy: v["strategy"].as_str().unwrap_or("none was consistent").to_owned(),
            contradictions: v["contradictions"]
                .as_array()
                .map(|c| c.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            duplicate_members: v["duplicate_members"].as_u64().unwrap_or(0),
            recorded: r.recorded_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

#[derive(Template)]
#[template(path = "app_accounts.html")]
struct AccountsFragment {
    app: App,
    accounts: Vec<AccountView>,
}

view::pages!(ListPage, NewPage, AppPage);

fn deprovision_choices(current: DeprovisionAction) -> Vec<Choice> {
    let cur = match current {
        DeprovisionAction::Delete => "delete",
        DeprovisionAction::Suspend => "suspend",
        DeprovisionAction::None => "none",
    };
    vec![
        Choice::new("suspend", "Suspend the account", cur),
        Choice::new("delete", "Delete the account", cur),
        Choice::new("none", "Do nothing", cur),
    ]
}

async fn app_page(state: &AppState, layout: Layout, tab: &'static str, app: App) -> Result<AppPage> {
    let form = ConfigForm::of(&app);
    let tested = state.service.store().get_app_capabilities(app.id).await?.is_some();
    let saml_jit_only = state.service.store().get_saml_settings(app.id).await?.is_some_and(|s| s.settings.jit_only);
    let held = state.service.held_events(app.id).await?;
    Ok(AppPage {
        saml_jit_only,
        layout,
        tab,
        editing: true,
        auth_choices: form.auth_choices(),
        form,
        errors: Errors::default(),
        other_errors: vec![],
        test: None,
        status: app_status(state, app.id, tested).await?,
        tested,
        on_suspend: deprovision_choices(app.provisioning.on_suspend),
        on_delete: deprovision_choices(app.provisioning.on_delete),
        accounts: vec![],
        next: None,
        held: held.len(),
        held_list: held.iter().take(HELD_SHOWN).map(view::EventView::of).collect(),
        confirm: 0,
        confirm_held: 0,
        apply_to_existing: false,
        reads: state.service.app_reads(app.id).await?.iter().map(ReadView::of).collect(),
        app,
    })
}

async fn new_form(session: Session, headers: HeaderMap) -> Result<Response> {
    let layout = Layout::new(&session, &headers, "apps", "New app");
    let form = ConfigForm { auth_type: "bearer".into(), ..Default::default() };
    let page = NewPage {
        layout,
        editing: false,
        auth_choices: form.auth_choices(),
        form,
        errors: Errors::default(),
        other_errors: vec![],
    };
    view::page(&page, StatusCode::OK)
}

async fn create(State(state): State<AppState>, session: Session, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let form = FormData::parse(&body);
    let doc = json!({
        "name": form.text("name"),
        "description": form.opt("description"),
        "connection": connection_doc(&form),
    });
    let result = match crate::extract::from_value(doc) {
        Ok(input) => state.service.create_app(&session.actor(), input).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(app) => Ok(view::see_other_with(
            &format!("/console/apps/{}/configuration", app.id),
            "ok",
            &format!("Created {}. Now Enable the API connection to check it.", app.name),
        )),
        Err(e) => {
            let errors = field_errors(e)?;
            let layout = Layout::new(&session, &headers, "apps", "New app");
            let f = ConfigForm::from_form(&form);
            let other_errors = errors.other(&CONFIG_FIELDS);
            let page =
                NewPage { layout, editing: false, auth_choices: f.auth_choices(), form: f, errors, other_errors };
            view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
        }
    }
}

async fn configuration(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let app = state.service.get_app(id).await?;
    let layout = Layout::new(&session, &headers, "apps", format!("{} · Configuration", app.name));
    view::page(&app_page(&state, layout, "configuration", app).await?, StatusCode::OK)
}

async fn save_configuration(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let mut patch = Map::new();
    patch.insert("name".into(), Value::String(form.text("name")));
    patch.insert("description".into(), form.opt("description").map_or(Value::Null, Value::String));
    patch.insert("connection".into(), connection_doc(&form));
    let version = form.get("version").and_then(|v| v.parse::<i64>().ok());
    match state.service.patch_app(&session.actor(), id, &patch, version).await {
        Ok(app) => Ok(view::see_other_with(
            &format!("/console/apps/{}/configuration", app.id),
            "ok",
            "Configuration saved. Test the connection to check it.",
        )),
        Err(e) => {
            let errors = field_errors(e)?;
            let app = state.service.get_app(id).await?;
            let layout = Layout::new(&session, &headers, "apps", format!("{} · Configuration", app.name));
            let mut page = app_page(&state, layout, "configuration", app).await?;
            page.form = ConfigForm::from_form(&form);
            page.auth_choices = page.form.auth_choices();
            page.other_errors = errors.other(&CONFIG_FIELDS);
            page.errors = errors;
            view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
        }
    }
}

async fn test_connection(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let app = state.service.get_app(id).await?;
    let test = match state.service.test_connection(&session.actor(), id).await {
        Ok(caps) => {
            let yes = |b: bool| if b { "Yes".to_owned() } else { "No".to_owned() };
            let mut capabilities = vec![
                ("PATCH", yes(caps.patch)),
                ("Filtering", yes(caps.filter)),
                ("ETags", yes(caps.etag)),
                ("Bulk", yes(caps.bulk)),
                ("Sorting", yes(caps.sort)),
            ];
            if let Some(n) = caps.filter_max_results {
                capabilities.push(("Page size", n.to_string()));
            }
            TestResult {
                ok: true,
                message: format!("Connected to {}: the credentials were accepted.", app.name),
                recommended_action: String::new(),
                capabilities,
            }
        }
        Err(Error::App { reason, recommended_action }) => {
            TestResult { ok: false, message: reason, recommended_action, capabilities: vec![] }
        }
        Err(e) => return Err(e.into()),
    };
    let ok = test.ok;
    let layout = Layout::new(&session, &headers, "apps", format!("{} · Configuration", app.name));
    let mut page = app_page(&state, layout, "configuration", app).await?;
    page.test = Some(test);
    view::page(&page, if ok { StatusCode::OK } else { StatusCode::BAD_GATEWAY })
}

/// "Resume now" on a quarantined app's banner.
async fn resume(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let app = state.service.get_app(id).await?;
    // Back to the page the banner was on.
    let back = headers
        .get(axum::http::header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.find("/console/apps/").map(|i| r[i..].to_owned()))
        .filter(|p| p.starts_with(&format!("/console/apps/{id}")) && !p.contains(['\r', '\n']))
        .unwrap_or_else(|| format!("/console/apps/{id}/provisioning"));
    match state.service.resume_app(&session.actor(), id).await {
        Ok(_) => Ok(view::see_other_with(&back, "ok", &format!("Resumed {}: its queue runs again.", app.name))),
        Err(Error::InvalidState(_)) => {
            Ok(view::see_other_with(&back, "ok", &format!("{} is not quarantined.", app.name)))
        }
        Err(e) => Err(e.into()),
    }
}

async fn delete(State(state): State<AppState>, session: Session, Path(id): Path<Uuid>) -> Result<Response> {
    let app = state.service.get_app(id).await?;
    state.service.delete_app(&session.actor(), id, None).await?;
    Ok(view::see_other_with("/console/apps", "ok", &format!("Deleted {}.", app.name)))
}

// ---- provisioning ----

async fn provisioning(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let app = state.service.get_app(id).await?;
    let layout = Layout::new(&session, &headers, "apps", format!("{} · Provisioning", app.name));
    view::page(&app_page(&state, layout, "provisioning", app).await?, StatusCode::OK)
}

async fn save_provisioning(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let concurrency = match form.text("max_concurrency").parse::<u32>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::String(form.text("max_concurrency")),
    };
    // A number, or the text as typed (refused naming the field); empty: no budget, or the
    // default burst.
    let number = |name: &str| {
        let text = form.text(name);
        match text.trim() {
            "" => Value::Null,
            t => t.parse::<u32>().map_or_else(|_| Value::String(text.clone()), Value::from),
        }
    };
    let rate_limit = match number("rate_per_minute") {
        Value::Null => Value::Null,
        per_minute => json!({"per_minute": per_minute, "burst": number("rate_burst")}),
    };
    let mut patch = Map::new();
    patch.insert(
        "provisioning".into(),
        json!({
            "enabled": form.checked("enabled"),
            "approval": {"create": form.checked("approve_create"), "update": form.checked("approve_update"),
                         "delete": form.checked("approve_delete")},
            "on_suspend": form.text("on_suspend"),
            "on_delete": form.text("on_delete"),
            "max_concurrency": concurrency,
            "rate_limit": rate_limit,
        }),
    );
    let apply_to_existing = form.checked("apply_to_existing");
    // A save that would suspend or delete accounts asks first, with the count in the button.
    if form.text("confirmed") != "1" {
        match state.service.dry_run_patch_app(id, &patch, None, apply_to_existing).await {
            Ok(run) if run.deprovisions() > 0 => {
                let (_, proposed, _) = state.service.patched_app(id, &patch, None).await?;
                let layout = Layout::new(&session, &headers, "apps", format!("{} · Provisioning", proposed.name));
                let mut page = app_page(&state, layout, "provisioning", proposed).await?;
                page.confirm = run.deprovisions();
                page.confirm_held = run.effects.iter().map(|e| e.held).sum();
                page.apply_to_existing = apply_to_existing;
                return view::page(&page, StatusCode::OK);
            }
            _ => {}
        }
    }
    let saved = match state.service.patch_app(&session.actor(), id, &patch, None).await {
        Ok(app) if apply_to_existing => state.service.apply_to_existing(&session.actor(), id).await.map(|_| app),
        other => other,
    };
    match saved {
        Ok(app) => {
            let text = if app.provisioning.enabled {
                "Provisioning settings saved. Provisioning is on."
            } else {
                "Provisioning settings saved. Provisioning is off: nothing is sent to the app."
            };
            Ok(view::see_other_with(&format!("/console/apps/{id}/provisioning"), "ok", text))
        }
        Err(e) => {
            let errors = field_errors(e)?;
            let app = state.service.get_app(id).await?;
            let layout = Layout::new(&session, &headers, "apps", format!("{} · Provisioning", app.name));
            let mut page = app_page(&state, layout, "provisioning", app).await?;
            page.other_errors = errors.other(&[]);
            page.errors = errors;
            view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
        }
    }
}

/// At most this many held operations are listed for review on the app's page (all of them
/// can still be allowed or rejected at once).
const HELD_SHOWN: usize = 200;

/// The review of held operations: allow or reject the selected ones, or all of them.
async fn decide_held(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let location = format!("/console/apps/{id}/provisioning");
    let decision = form.text("decision");
    let (allow, all) = match decision.as_str() {
        "allow" => (true, false),
        "reject" => (false, false),
        "allow_all" => (true, true),
        "reject_all" => (false, true),
        _ => return Ok(view::see_other_with(&location, "error", "Choose Allow or Reject.")),
    };
    let ids = if all {
        None
    } else {
        let ids: Vec<Uuid> = form.all("event").iter().filter_map(|v| Uuid::parse_str(v).ok()).collect();
        if ids.is_empty() {
            return Ok(view::see_other_with(&location, "error", "Select at least one held operation first."));
        }
        Some(ids)
    };
    match state.service.decide_held(&session.actor(), id, ids, allow).await {
        Ok(done) => {
            let n = done.len();
            let verb = if allow { "Allowed" } else { "Rejected" };
            let what = if allow { "sent to the app (or awaiting approval)" } else { "not sent; the accounts stay" };
            Ok(view::see_other_with(
                &location,
                "ok",
                &format!("{verb} {n} held operation{}: {what}.", if n == 1 { "" } else { "s" }),
            ))
        }
        Err(Error::InvalidState(m)) => Ok(view::see_other_with(&location, "error", &m)),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(State(state): State<AppState>, session: Session, Path(id): Path<Uuid>) -> Result<Response> {
    let location = format!("/console/apps/{id}/provisioning");
    match state.service.reconcile(&session.actor(), id).await {
        Ok(r) if r.status == "failed" => Ok(view::see_other_with(
            &location,
            "error",
            &format!("Reconcile failed: {} {}", r.reason.unwrap_or_default(), r.recommended_action.unwrap_or_default()),
        )),
        Ok(r) => Ok(view::see_other_with(
            &location,
            "ok",
            &format!(
                "Reconciled: read {} accounts ({}), checked {} users, {} drifted, {} vanished, {} operations queued.",
                r.accounts_read,
                r.strategy.as_deref().unwrap_or("listing"),
                r.users_checked,
                r.drifted,
                r.vanished,
                r.queued
            ),
        )),
        Err(Error::App { reason, recommended_action }) => {
            Ok(view::see_other_with(&location, "error", &format!("{reason}. {recommended_action}")))
        }
        Err(e) => Err(e.into()),
    }
}

// ---- users (accounts) ----

#[derive(Debug, Default, Deserialize)]
struct PageParams {
    cursor: Option<String>,
}

async fn accounts(state: &AppState, app: &App, cursor: Option<String>) -> Result<(Vec<AccountView>, Option<String>)> {
    let q = AccountQuery { app: Some(app.id), user: None, page: PageRequest { limit: 50, cursor } };
    let page = state.service.list_accounts(&q).await?;
    let apps = [app.clone()];
    let views = page.items.iter().map(|a| AccountView::of(a, &apps)).collect();
    Ok((views, page.next_cursor))
}

async fn users_tab(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(p): Query<PageParams>,
) -> Result<Response> {
    let app = state.service.get_app(id).await?;
    let (list, next) = accounts(&state, &app, p.cursor.filter(|c| !c.is_empty())).await?;
    if view::wants_fragment(&headers) {
        return Ok(view::fragment(view::render(&AccountsFragment { app, accounts: list })?));
    }
    let layout = Layout::new(&session, &headers, "apps", format!("{} · Users", app.name));
    let mut page = app_page(&state, layout, "users", app).await?;
    page.accounts = list;
    page.next = view::next_link(&format!("/console/apps/{id}/users"), &[], next);
    view::page(&page, StatusCode::OK)
}

// ---- rematch login ----

/// An account read from the app, offered for linking.
struct Candidate {
    remote_id: String,
    user_name: String,
    name: String,
    email: String,
    active: bool,
    /// Why it may be this user's account; empty when nothing suggests it.
    hints: Vec<&'static str>,
    likely: bool,
    linked_to: String,
    score: u32,
}

#[derive(Template)]
#[template(path = "rematch.html")]
struct RematchPage {
    layout: Layout,
    app: App,
    user: User,
    user_name: String,
    status: Option<view::Badge>,
    candidates: Vec<Candidate>,
    app_error: Option<String>,
    manual_id: String,
    error: Option<String>,
}

view::pages!(RematchPage);

fn text_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn candidate(resource: &Value, user: &User, linked: &[(String, String)]) -> Option<Candidate> {
    let remote_id = resource.get("id")?.as_str()?.to_owned();
    let user_name = text_at(resource, &["userName"]).unwrap_or("").to_owned();
    let given = text_at(resource, &["name", "givenName"]).unwrap_or("");
    let family = text_at(resource, &["name", "familyName"]).unwrap_or("");
    let name = text_at(resource, &["displayName"])
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{given} {family}").trim().to_owned());
    let emails: Vec<String> = resource
        .get("emails")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|e| e.get("value").and_then(Value::as_str)).map(str::to_lowercase).collect())
        .unwrap_or_default();
    let mut hints = Vec::new();
    let mut score = 0;
    if text_at(resource, &["externalId"]) == Some(user.id.to_string().as_str()) {
        hints.push("carries this user's id");
        score += 100;
    }
    let uname = user.username.to_lowercase();
    let their = user_name.to_lowercase();
    if their == uname {
        hints.push("same username");
        score += 90;
    } else if !their.is_empty() && (their.contains(&uname) || uname.contains(&their)) {
        hints.push("similar username");
        score += 30;
    }
    if let Some(email) = user.email.as_ref().map(|e| e.to_lowercase()) {
        if emails.contains(&email) || their == email {
            hints.push("same email");
            score += 80;
        }
    }
    let full = format!("{} {}", user.first_name.as_deref().unwrap_or(""), user.last_name.as_deref().unwrap_or(""))
        .trim()
        .to_lowercase();
    if !full.is_empty() && format!("{given} {family}").trim().to_lowercase() == full {
        hints.push("same name");
        score += 50;
    }
    let linked_to = linked.iter().find(|(rid, _)| *rid == remote_id).map(|(_, u)| u.clone()).unwrap_or_default();
    Some(Candidate {
        email: emails.first().cloned().unwrap_or_default(),
        active: resource.get("active").and_then(Value::as_bool).unwrap_or(true),
        likely: score >= 50,
        hints,
        linked_to,
        score,
        remote_id,
        user_name,
        name,
    })
}

async fn rematch_page(
    state: &AppState,
    layout: Layout,
    app: App,
    user: User,
    manual_id: String,
    error: Option<String>,
) -> Result<RematchPage> {
    let account = state.service.store().get_account(app.id, user.id).await?;
    let q = AccountQuery { app: Some(app.id), user: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } };
    let linked: Vec<(String, String)> = state
        .service
        .list_accounts(&q)
        .await?
        .items
        .into_iter()
        .filter(|a| a.user_id != user.id && a.ownership.is_some_and(|o| o.is_managed()))
        .filter_map(|a| a.remote_id.map(|r| (r, a.username)))
        .collect();
    let (mut candidates, app_error) = match state.service.app_remote_accounts(app.id, 500).await {
        Ok(resources) => (resources.iter().filter_map(|r| candidate(r, &user, &linked)).collect::<Vec<_>>(), None),
        Err(Error::App { reason, recommended_action }) => (vec![], Some(format!("{reason}. {recommended_action}"))),
        Err(e) => return Err(e.into()),
    };
    candidates.sort_by(|a, b| {
        b.score.cmp(&a.score).then_with(|| a.user_name.to_lowercase().cmp(&b.user_name.to_lowercase()))
    });
    Ok(RematchPage {
        layout,
        user_name: super::users::full_name(&user),
        status: account.map(|a| view::Badge::of(a.status)),
        app,
        user,
        candidates,
        app_error,
        manual_id,
        error,
    })
}

async fn rematch_form(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((id, user)): Path<(Uuid, Uuid)>,
) -> Result<Response> {
    let app = state.service.get_app(id).await?;
    let user = state.service.get_user(user).await?;
    let layout = Layout::new(&session, &headers, "provisioning", format!("Rematch login · {}", user.username));
    view::page(&rematch_page(&state, layout, app, user, String::new(), None).await?, StatusCode::OK)
}

async fn rematch(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((id, user_id)): Path<(Uuid, Uuid)>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let manual = form.text("manual_id");
    let remote_id = if manual.is_empty() { form.text("remote_id") } else { manual.clone() };
    match state.service.rematch(&session.actor(), id, user_id, &remote_id).await {
        Ok(account) => Ok(view::see_other_with(
            &format!("/console/apps/{id}/users"),
            "ok",
            &format!(
                "Linked {} to the app account {}. Provisioner manages it from now on.",
                account.username, remote_id
            ),
        )),
        Err(e) => {
            let message = match e {
                Error::App { reason, recommended_action } => format!("{reason}. {recommended_action}"),
                other => {
                    let errors = field_errors(other)?;
                    errors.of("remote_id").unwrap_or_else(|| errors.other(&[]).join("; "))
                }
            };
            let app = state.service.get_app(id).await?;
            let user = state.service.get_user(user_id).await?;
            let layout = Layout::new(&session, &headers, "provisioning", format!("Rematch login · {}", user.username));
            let page = rematch_page(&state, layout, app, user, manual, Some(message)).await?;
            view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
        }
    }
}
