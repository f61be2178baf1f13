//! An app's Entitlements (Refresh with live progress, the imported values), Parameters
//! (the mapping editor) and Rules (the ordered rule editor with "Preview"), and a user's
//! "Explain" view of one app account.
//!
//! The editors are plain forms: "Add", "Remove", "Move up / down" are submit buttons that
//! re-render the editor with the unsaved state carried in its fields; "Preview" shows the
//! plan of the change (nothing is written); "Save" stores it with the app version the editor
//! was opened at, so a concurrent change is reported instead of overwritten.

use std::collections::BTreeMap;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use directory::mapping::{known_attribute, AttrPath};
use directory::{
    App, Condition, EntitlementRef, FieldError, Match, Op, Parameter, Rule, RuleAction, SetAttribute, Source, Transform,
};
use serde::Deserialize;
use serde_json::Value;
use store::{NameQuery, PageRequest};
use uuid::Uuid;

use super::auth::Session;
use super::view::{self, Badge, Choice, FormData, Layout};
use super::Result;
use crate::{AppState, Error};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/apps/{id}/entitlements", get(entitlements_tab))
        .route("/apps/{id}/entitlements/refresh", post(refresh))
        .route("/apps/{id}/parameters", get(parameters_tab).post(post_parameters))
        .route("/apps/{id}/rules", get(rules_tab).post(post_rules))
        .route("/users/{id}/applications/{app}/explain", get(explain))
}

async fn tested(state: &AppState, app: Uuid) -> Result<bool> {
    Ok(state.service.store().get_app_capabilities(app).await?.is_some())
}

/// "Name is required", "Template: `x` is not a directory attribute".
fn say(label: &str, reason: &str) -> String {
    let verb = ["is ", "must ", "has ", "needs ", "at most "].iter().any(|v| reason.starts_with(v));
    if verb {
        format!("{label} {reason}")
    } else {
        format!("{label}: {reason}")
    }
}

/// Takes out of `errors` those about `field` (and, with `nested`, about what is under it).
fn take(errors: &mut Vec<FieldError>, field: &str, nested: bool, label: &str) -> Option<String> {
    let mut found = Vec::new();
    errors.retain(|e| {
        let hit = e.field == field
            || (nested && (e.field.starts_with(&format!("{field}.")) || e.field.starts_with(&format!("{field}["))));
        if hit {
            found.push(say(label, &e.reason));
        }
        !hit
    });
    if found.is_empty() {
        None
    } else {
        Some(found.join("; "))
    }
}

/// What is left: shown on top of the editor.
fn leftovers(errors: Vec<FieldError>) -> Vec<String> {
    errors.into_iter().map(|e| say(&format!("`{}`", e.field), &e.reason)).collect()
}

/// The editor's command: `save`, `preview`, or `{what}:{verb}:{i}[:{j}]`.
struct Command {
    what: String,
    verb: String,
    i: Option<usize>,
    j: Option<usize>,
}

impl Command {
    fn parse(op: &str) -> Self {
        let mut parts = op.split(':');
        let what = parts.next().unwrap_or("").to_owned();
        let verb = parts.next().unwrap_or("").to_owned();
        let i = parts.next().and_then(|n| n.parse().ok());
        let j = parts.next().and_then(|n| n.parse().ok());
        Self { what, verb, i, j }
    }
}

/// Where keyboard focus goes after an editor command re-rendered the page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Focus {
    #[default]
    None,
    /// The item's first control.
    First,
    Up,
    Down,
}

impl Focus {
    fn is(&self, what: &str) -> bool {
        matches!((self, what), (Focus::First, "first") | (Focus::Up, "up") | (Focus::Down, "down"))
    }
}

/// Adds, moves or removes an item of a list; returns the index of the item to focus.
fn list_op<T>(items: &mut Vec<T>, verb: &str, i: Option<usize>, new: impl FnOnce() -> T) -> Option<(usize, Focus)> {
    match (verb, i) {
        ("add", _) if items.len() < 500 => {
            items.push(new());
            Some((items.len() - 1, Focus::First))
        }
        ("up", Some(i)) if i > 0 && i < items.len() => {
            items.swap(i, i - 1);
            Some((i - 1, if i - 1 == 0 { Focus::Down } else { Focus::Up }))
        }
        ("down", Some(i)) if i + 1 < items.len() => {
            items.swap(i, i + 1);
            Some((i + 1, if i + 2 == items.len() { Focus::Up } else { Focus::Down }))
        }
        ("remove", Some(i)) if i < items.len() => {
            items.remove(i);
            None
        }
        _ => None,
    }
}

// ---- sources and transforms ----

fn transforms_text(t: &[Transform]) -> String {
    t.iter()
        .map(|t| match t {
            Transform::Lower => "lower".to_owned(),
            Transform::Upper => "upper".to_owned(),
            Transform::Trim => "trim".to_owned(),
            Transform::Default(d) => format!("default({d})"),
            Transform::First(n) => format!("first({n})"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `lower, trim, default(n/a), first(8)`: commas inside parentheses belong to the value.
fn parse_transforms(text: &str) -> std::result::Result<Vec<Transform>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0usize, String::new());
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    let mut out = Vec::new();
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let lower = p.to_lowercase();
        let t = match lower.as_str() {
            "lower" => Transform::Lower,
            "upper" => Transform::Upper,
            "trim" => Transform::Trim,
            _ if lower.starts_with("default(") && p.ends_with(')') => {
                Transform::Default(p["default(".len()..p.len() - 1].to_owned())
            }
            _ if lower.starts_with("first(") && p.ends_with(')') => {
                match p["first(".len()..p.len() - 1].trim().parse::<usize>() {
                    Ok(n) if n > 0 => Transform::First(n),
                    _ => return Err(format!("`{p}` needs a number of characters of at least 1, e.g. first(8)")),
                }
            }
            _ => return Err(format!("`{p}` is not one of lower, upper, trim, default(text), first(N)")),
        };
        out.push(t);
    }
    Ok(out)
}

/// The directory attributes offered in selects: standard ones, then declared custom ones.
async fn attribute_names(state: &AppState) -> Result<Vec<(String, String)>> {
    const ORDER: [&str; 14] = [
        "username",
        "email",
        "first_name",
        "last_name",
        "display_name",
        "title",
        "department",
        "phone",
        "employee_number",
        "manager_id",
        "id",
        "status",
        "created_at",
        "updated_at",
    ];
    let mut out: Vec<(String, String)> =
        ORDER.iter().filter(|n| known_attribute(n, &[])).map(|n| ((*n).to_owned(), (*n).to_owned())).collect();
    for d in state.service.list_attributes().await? {
        out.push((d.name.clone(), format!("{} (custom)", d.name)));
    }
    Ok(out)
}

fn attribute_choices(names: &[(String, String)], current: &str) -> Vec<Choice> {
    let mut out: Vec<Choice> = names.iter().map(|(v, l)| Choice::new(v, l, current)).collect();
    if !current.is_empty() && !names.iter().any(|(v, _)| v == current) {
        out.push(Choice::new(current, format!("{current} (unknown)"), current));
    }
    out
}

/// A source as the editor shows it.
#[derive(Debug, Clone, Default)]
struct SourceForm {
    /// `attribute`, `constant` or `template`.
    kind: String,
    attribute: String,
    constant: String,
    /// The constant is JSON (a number, `true`...) rather than text.
    json: bool,
    template: String,
    transform: String,
    e_kind: Option<String>,
    e_attribute: Option<String>,
    e_constant: Option<String>,
    e_template: Option<String>,
    e_transform: Option<String>,
    attributes: Vec<Choice>,
}

impl SourceForm {
    fn of(s: &Source) -> Self {
        let mut f = Self { transform: transforms_text(&s.transform), ..Default::default() };
        if let Some(a) = &s.attribute {
            f.kind = "attribute".into();
            f.attribute = a.clone();
        } else if let Some(t) = &s.template {
            f.kind = "template".into();
            f.template = t.clone();
        } else if let Some(c) = &s.constant {
            f.kind = "constant".into();
            f.set_constant(c);
        } else {
            f.kind = "attribute".into();
        }
        f
    }

    fn set_constant(&mut self, c: &Value) {
        match c {
            Value::String(s) => self.constant = s.clone(),
            other => {
                self.constant = other.to_string();
                self.json = true;
            }
        }
    }

    fn read(form: &FormData, at: &str) -> Self {
        let kind = form.text(&format!("{at}.kind"));
        Self {
            kind: if ["attribute", "constant", "template"].contains(&kind.as_str()) {
                kind
            } else {
                "attribute".into()
            },
            attribute: form.text(&format!("{at}.attribute")),
            constant: form.text(&format!("{at}.constant")),
            json: form.get(&format!("{at}.json")) == Some("1"),
            template: form.text(&format!("{at}.template")),
            transform: form.text(&format!("{at}.transform")),
            ..Default::default()
        }
    }

    fn constant_value(&self, field: &str, errors: &mut Vec<FieldError>) -> Value {
        if self.json {
            serde_json::from_str(&self.constant).unwrap_or_else(|_| {
                errors.push(FieldError::new(format!("{field}.constant"), "is not a valid JSON value"));
                Value::Null
            })
        } else {
            Value::String(self.constant.clone())
        }
    }

    /// The source, or problems found before asking the service (as `field.…`).
    fn to_source(&self, field: &str, errors: &mut Vec<FieldError>) -> Source {
        let transform = parse_transforms(&self.transform).unwrap_or_else(|e| {
            errors.push(FieldError::new(format!("{field}.transform"), e));
            vec![]
        });
        let mut s = Source { transform, ..Default::default() };
        match self.kind.as_str() {
            "constant" => s.constant = Some(self.constant_value(field, errors)),
            "template" => {
                if self.template.is_empty() {
                    errors.push(FieldError::new(format!("{field}.template"), "is required"));
                }
                s.template = Some(self.template.clone());
            }
            _ => {
                if self.attribute.is_empty() {
                    errors.push(FieldError::new(format!("{field}.attribute"), "is required"));
                }
                s.attribute = Some(self.attribute.clone());
            }
        }
        s
    }

    fn take_errors(&mut self, errors: &mut Vec<FieldError>, field: &str) {
        self.e_attribute = take(errors, &format!("{field}.attribute"), true, "Attribute");
        self.e_constant = take(errors, &format!("{field}.constant"), true, "Value");
        self.e_template = take(errors, &format!("{field}.template"), true, "Template");
        self.e_transform = take(errors, &format!("{field}.transform"), true, "Transforms");
        self.e_kind = take(errors, field, true, "Source");
    }

    fn kind_choices(&self) -> Vec<Choice> {
        vec![
            Choice::new("attribute", "Attribute", &self.kind),
            Choice::new("constant", "Constant", &self.kind),
            Choice::new("template", "Template", &self.kind),
        ]
    }
}

// ---- plan preview ----

/// A plan preview as shown: counts and the sample of affected users.
struct PreviewView {
    create: u64,
    update: u64,
    deprovision: u64,
    group_add: u64,
    group_remove: u64,
    invalid: u64,
    samples: Vec<SampleView>,
}

impl PreviewView {
    fn nothing(&self) -> bool {
        self.create + self.update + self.deprovision + self.invalid == 0
    }
}

struct SampleView {
    user_id: Uuid,
    username: String,
    action: &'static str,
    reason: String,
    /// (value, before, after) of what changes.
    changes: Vec<(String, String, String)>,
}

fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A resource as (attribute path, value) pairs, in the words of parameters:
/// `name.givenName`, `emails[type eq "work"].value`, `urn:…:User:department`, Groups.
fn flatten(v: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else if prefix.starts_with("urn:") && !prefix.contains('.') && !prefix.contains('[') {
                        format!("{prefix}:{k}")
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, child, out);
                }
            }
            Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.get("type").and_then(Value::as_str).is_some()) =>
            {
                for item in items {
                    let t = item.get("type").and_then(Value::as_str).unwrap_or("");
                    let mut rest = item.clone();
                    if let Value::Object(m) = &mut rest {
                        m.remove("type");
                    }
                    walk(&format!("{prefix}[type eq \"{t}\"]"), &rest, out);
                }
            }
            Value::Array(items) if items.iter().all(|i| i.get("value").is_some()) => {
                let values: Vec<String> = items.iter().filter_map(|i| i.get("value")).map(display).collect();
                out.insert(prefix.to_owned(), values.join(", "));
            }
            other => {
                out.insert(prefix.to_owned(), display(other));
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Value::Object(m) = v {
        for (k, child) in m {
            match k.as_str() {
                "schemas" => {}
                engine::mapping::GROUPS_KEY => {
                    out.insert("Groups".to_owned(), display(child));
                }
                _ => walk(k, child, &mut out),
            }
        }
    }
    out
}

fn changes(before: Option<&Value>, after: Option<&Value>) -> Vec<(String, String, String)> {
    let b = before.map(flatten).unwrap_or_default();
    let a = after.map(flatten).unwrap_or_default();
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| ((*k).clone(), b.get(k).cloned().unwrap_or_default(), a.get(k).cloned().unwrap_or_default()))
        .collect()
}

fn preview_view(p: engine::PlanPreview) -> PreviewView {
    let samples = p
        .sample
        .iter()
        .map(|s| SampleView {
            user_id: s.user_id,
            username: s.username.clone(),
            action: s.action.map_or("Invalid", view::action_label),
            reason: s.reason.clone().unwrap_or_default(),
            changes: if s.reason.is_some() { vec![] } else { changes(s.before.as_ref(), s.after.as_ref()) },
        })
        .collect();
    PreviewView {
        create: p.create,
        update: p.update,
        deprovision: p.deprovision,
        group_add: p.group_add,
        group_remove: p.group_remove,
        invalid: p.invalid,
        samples,
    }
}

/// What a failed save or preview means for the editor: field errors, a concurrent change,
/// or a real error.
enum Outcome {
    Errors(Vec<FieldError>),
    Changed(i64),
}

fn outcome(e: Error) -> Result<Outcome> {
    match e {
        Error::PreconditionFailed { current } => Ok(Outcome::Changed(current)),
        other => Ok(Outcome::Errors(view::field_errors(other)?.0)),
    }
}

fn changed_message(current: i64, what: &str) -> String {
    format!(
        "Not saved: someone changed this app while you were editing (it is now at version {current}). \
         Your edits are still below; open the {what} tab again to see the current state, then redo them."
    )
}

// ---- entitlements ----

#[derive(Debug, Default, Deserialize)]
struct PageParams {
    cursor: Option<String>,
}

struct RefreshView {
    state: String,
    label: &'static str,
    working: bool,
    fetched: i64,
    total: Option<i64>,
    error: String,
    started: String,
    finished: String,
}

struct EntitlementRow {
    kind: String,
    name: String,
    remote_id: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "app_entitlements.html")]
struct EntitlementsPage {
    layout: Layout,
    app: App,
    tab: &'static str,
    status: super::apps::AppStatus,
    refresh: Option<RefreshView>,
    items: Vec<EntitlementRow>,
    next: Option<String>,
    src: String,
}

#[derive(Template)]
#[template(path = "app_entitlements_live.html")]
struct EntitlementsLive {
    app: App,
    refresh: Option<RefreshView>,
    items: Vec<EntitlementRow>,
    next: Option<String>,
}

async fn entitlements_tab(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(p): Query<PageParams>,
) -> Result<Response> {
    let app = state.service.get_app(id).await?;
    let cursor = p.cursor.filter(|c| !c.is_empty());
    let (refresh, page) = state.service.entitlements(id, &PageRequest { limit: 50, cursor: cursor.clone() }).await?;
    let refresh = refresh.map(|r| RefreshView {
        label: match r.state.as_str() {
            "running" => "Running",
            "done" => "Done",
            "failed" => "Failed",
            _ => "Unknown",
        },
        working: r.state == "running",
        fetched: r.fetched,
        total: r.total,
        error: r.error.unwrap_or_default(),
        started: view::when(&r.started_at),
        finished: r.finished_at.as_ref().map(view::when).unwrap_or_default(),
        state: r.state,
    });
    let items = page
        .items
        .into_iter()
        .map(|e| EntitlementRow {
            kind: if e.kind == "group" { "Group".to_owned() } else { e.kind },
            name: e.display_name,
            remote_id: e.remote_id,
            updated: view::when(&e.updated_at),
        })
        .collect();
    let base = format!("/console/apps/{id}/entitlements");
    let next = view::next_link(&base, &[], page.next_cursor);
    if view::wants_fragment(&headers) {
        return Ok(view::fragment(view::render(&EntitlementsLive { app, refresh, items, next })?));
    }
    let src = view::next_link(&base, &[], cursor).unwrap_or(base);
    let layout = Layout::new(&session, &headers, "apps", format!("{} · Entitlements", app.name));
    let page = EntitlementsPage {
        layout,
        app,
        tab: "entitlements",
        status: super::apps::app_status(&state, id, tested(&state, id).await?).await?,
        refresh,
        items,
        next,
        src,
    };
    view::page(&page, StatusCode::OK)
}

async fn refresh(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let location = format!("/console/apps/{id}/entitlements");
    match state.service.refresh_entitlements(id).await {
        Ok(()) => Ok(view::see_other_with(
            &location,
            "ok",
            "Refresh started: the app's groups are being imported. This page shows the progress.",
        )),
        Err(Error::InvalidState(reason)) => {
            Ok(view::see_other_with(&location, "error", &format!("Not started: {reason}.")))
        }
        Err(Error::App { reason, recommended_action }) => {
            Ok(view::see_other_with(&location, "error", &format!("{reason}. {recommended_action}")))
        }
        Err(e) => Err(e.into()),
    }
}

// ---- parameters ----

#[derive(Debug, Clone, Default)]
struct ParamForm {
    app_attribute: String,
    source: SourceForm,
    only_on_create: bool,
    required: bool,
    e_app_attribute: Option<String>,
    e_other: Option<String>,
    focus: Focus,
}

impl ParamForm {
    fn of(p: &Parameter) -> Self {
        Self {
            app_attribute: p.app_attribute.clone(),
            source: SourceForm::of(&p.source),
            only_on_create: p.only_on_create,
            required: p.required,
            ..Default::default()
        }
    }

    fn read(form: &FormData, i: usize) -> Self {
        let at = format!("p{i}");
        Self {
            app_attribute: form.text(&format!("{at}.app_attribute")),
            source: SourceForm::read(form, &format!("{at}.source")),
            only_on_create: form.checked(&format!("{at}.only_on_create")),
            required: form.checked(&format!("{at}.required")),
            ..Default::default()
        }
    }

    fn new_row() -> Self {
        Self { source: SourceForm { kind: "attribute".into(), ..Default::default() }, ..Default::default() }
    }
}

#[derive(Template)]
#[template(path = "app_parameters.html")]
struct ParametersPage {
    layout: Layout,
    app: App,
    tab: &'static str,
    status: super::apps::AppStatus,
    version: i64,
    default_in_effect: bool,
    rows: Vec<ParamForm>,
    errors: Vec<String>,
    changed: Option<String>,
    preview: Option<PreviewView>,
}

async fn parameters_page(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    app: App,
    version: i64,
    mut rows: Vec<ParamForm>,
) -> Result<ParametersPage> {
    let names = attribute_names(state).await?;
    for r in &mut rows {
        r.source.attributes = attribute_choices(&names, &r.source.attribute);
    }
    let layout = Layout::new(session, headers, "apps", format!("{} · Parameters", app.name));
    Ok(ParametersPage {
        layout,
        tab: "parameters",
        status: super::apps::app_status(state, app.id, tested(state, app.id).await?).await?,
        version,
        default_in_effect: app.parameters.is_none(),
        rows,
        errors: vec![],
        changed: None,
        preview: None,
        app,
    })
}

async fn parameters_tab(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let (params, version) = state.service.parameters(id).await?;
    let app = state.service.get_app(id).await?;
    let rows = params.iter().map(ParamForm::of).collect();
    view::page(&parameters_page(&state, &session, &headers, app, version, rows).await?, StatusCode::OK)
}

fn to_parameters(rows: &[ParamForm], errors: &mut Vec<FieldError>) -> Vec<Parameter> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| Parameter {
            app_attribute: r.app_attribute.clone(),
            source: r.source.to_source(&format!("parameters[{i}].source"), errors),
            only_on_create: r.only_on_create,
            required: r.required,
        })
        .collect()
}

async fn post_parameters(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let app = state.service.get_app(id).await?;
    let version = form.get("version").and_then(|v| v.parse::<i64>().ok()).unwrap_or(app.version);
    let mut rows: Vec<ParamForm> = (0..500)
        .take_while(|i| form.get(&format!("p{i}.app_attribute")).is_some())
        .map(|i| ParamForm::read(&form, i))
        .collect();
    let cmd = Command::parse(form.get("op").unwrap_or("preview"));
    if cmd.what == "param" {
        if let Some((i, focus)) = list_op(&mut rows, &cmd.verb, cmd.i, ParamForm::new_row) {
            rows[i].focus = focus;
        }
        let page = parameters_page(&state, &session, &headers, app, version, rows).await?;
        return view::page(&page, StatusCode::OK);
    }
    if cmd.what == "reset" {
        return match state.service.reset_parameters(&session.actor(), id, Some(version)).await {
            Ok(_) => Ok(view::see_other_with(
                &format!("/console/apps/{id}/parameters"),
                "ok",
                "The default mapping applies again. Every user the app concerns is re-evaluated.",
            )),
            Err(e) => match outcome(e)? {
                Outcome::Changed(current) => {
                    let mut page = parameters_page(&state, &session, &headers, app, version, rows).await?;
                    page.changed = Some(changed_message(current, "Parameters"));
                    view::page(&page, StatusCode::PRECONDITION_FAILED)
                }
                Outcome::Errors(e) => {
                    let mut page = parameters_page(&state, &session, &headers, app, version, rows).await?;
                    page.errors = leftovers(e);
                    view::page(&page, StatusCode::UNPROCESSABLE_ENTITY)
                }
            },
        };
    }
    let mut local = Vec::new();
    let params = to_parameters(&rows, &mut local);
    let saving = cmd.what == "save";
    let result = if !local.is_empty() {
        Err(Outcome::Errors(local))
    } else if saving {
        match state.service.put_mapping(&session.actor(), id, Some(params.clone()), None, Some(version)).await {
            Ok(_) => {
                return Ok(view::see_other_with(
                    &format!("/console/apps/{id}/parameters"),
                    "ok",
                    "Parameters saved. Every user the app concerns is re-evaluated; only real differences are sent to the app.",
                ))
            }
            Err(e) => Err(outcome(e)?),
        }
    } else {
        match state.service.plan_preview(id, Some(params), None, None).await {
            Ok(p) => Ok(preview_view(p)),
            Err(e) => Err(outcome(e)?),
        }
    };
    let mut status = StatusCode::OK;
    let (mut preview, mut errors, mut changed) = (None, vec![], None);
    match result {
        Ok(p) => preview = Some(p),
        Err(Outcome::Errors(e)) => {
            status = StatusCode::UNPROCESSABLE_ENTITY;
            errors = e;
        }
        Err(Outcome::Changed(current)) => {
            status = StatusCode::PRECONDITION_FAILED;
            changed = Some(changed_message(current, "Parameters"));
        }
    }
    for (i, r) in rows.iter_mut().enumerate() {
        let at = format!("parameters[{i}]");
        r.e_app_attribute = take(&mut errors, &format!("{at}.app_attribute"), true, "App attribute");
        r.source.take_errors(&mut errors, &format!("{at}.source"));
        r.e_other = take(&mut errors, &at, true, "Parameter");
    }
    let mut page = parameters_page(&state, &session, &headers, app, version, rows).await?;
    page.errors = leftovers(errors);
    page.changed = changed;
    page.preview = preview;
    view::page(&page, status)
}

// ---- rules ----

const OPS: [(&str, &str); 12] = [
    ("equals", "equals"),
    ("not_equals", "does not equal"),
    ("contains", "contains"),
    ("starts_with", "starts with"),
    ("ends_with", "ends with"),
    ("in", "is one of (comma-separated)"),
    ("is_empty", "is empty"),
    ("is_not_empty", "is not empty"),
    ("matches", "matches the regular expression"),
    ("greater_than", "is greater than (number or date)"),
    ("less_than", "is less than (number or date)"),
    ("member_of", "is a member of the role"),
];

fn op_name(op: Op) -> String {
    match serde_json::to_value(op) {
        Ok(Value::String(s)) => s,
        _ => "equals".to_owned(),
    }
}

#[derive(Debug, Clone, Default)]
struct CondForm {
    attribute: String,
    op: String,
    value: String,
    role: String,
    e_attribute: Option<String>,
    e_value: Option<String>,
    e_other: Option<String>,
    focus: Focus,
    attributes: Vec<Choice>,
    ops: Vec<Choice>,
    roles: Vec<Choice>,
}

impl CondForm {
    fn of(c: &Condition) -> Self {
        let op = op_name(c.op);
        let text = match &c.value {
            Some(Value::Array(items)) => items.iter().map(display).collect::<Vec<_>>().join(", "),
            Some(v) => display(v),
            None => String::new(),
        };
        let (value, role) = if c.op == Op::MemberOf { (String::new(), text) } else { (text, String::new()) };
        Self { attribute: c.attribute.clone().unwrap_or_default(), op, value, role, ..Default::default() }
    }

    fn new_row() -> Self {
        Self { attribute: "department".into(), op: "equals".into(), ..Default::default() }
    }

    fn read(form: &FormData, at: &str) -> Self {
        Self {
            attribute: form.text(&format!("{at}.attribute")),
            op: form.text(&format!("{at}.op")),
            value: form.text(&format!("{at}.value")),
            role: form.text(&format!("{at}.role")),
            ..Default::default()
        }
    }

    fn to_condition(&self, field: &str, errors: &mut Vec<FieldError>) -> Option<Condition> {
        let Ok(op) = serde_json::from_value::<Op>(Value::String(self.op.clone())) else {
            errors.push(FieldError::new(format!("{field}.op"), "is not a known operator"));
            return None;
        };
        let attribute = Some(self.attribute.clone()).filter(|a| !a.is_empty());
        let c = match op {
            Op::MemberOf => {
                if self.role.is_empty() {
                    errors.push(FieldError::new(format!("{field}.value"), "needs a role"));
                }
                Condition { attribute: None, op, value: Some(Value::String(self.role.clone())) }
            }
            Op::IsEmpty | Op::IsNotEmpty => Condition { attribute, op, value: None },
            Op::In => {
                let items: Vec<Value> = self
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| Value::String(v.to_owned()))
                    .collect();
                if items.is_empty() {
                    errors.push(FieldError::new(format!("{field}.value"), "needs at least one value"));
                }
                Condition { attribute, op, value: Some(Value::Array(items)) }
            }
            _ => Condition { attribute, op, value: Some(Value::String(self.value.clone())) },
        };
        Some(c)
    }
}

#[derive(Debug, Clone, Default)]
struct ActionForm {
    /// `add_entitlement`, `set` or `do_not_provision`.
    kind: String,
    path: String,
    set: SourceForm,
    /// `group` or `attribute`.
    ent_type: String,
    ent_attribute: String,
    ent_value: String,
    /// `do_not_provision: false` (a no-op) is kept as it was.
    provision_false: bool,
    e_kind: Option<String>,
    e_path: Option<String>,
    e_ent_type: Option<String>,
    e_ent_value: Option<String>,
    focus: Focus,
}

impl ActionForm {
    fn of(a: &RuleAction) -> Self {
        let mut f = Self {
            ent_type: "group".into(),
            set: SourceForm { kind: "constant".into(), ..Default::default() },
            ..Default::default()
        };
        match a {
            RuleAction::Set(s) => {
                f.kind = "set".into();
                f.path = s.app_attribute.clone();
                match (&s.value, &s.source) {
                    (Some(v), _) => f.set.set_constant(v),
                    (None, Some(src)) => f.set = SourceForm::of(src),
                    (None, None) => {}
                }
            }
            RuleAction::AddEntitlement(e) => {
                f.kind = "add_entitlement".into();
                if e.kind != "group" {
                    f.ent_type = "attribute".into();
                    f.ent_attribute = e.kind.clone();
                }
                f.ent_value = e.value.clone();
            }
            RuleAction::DoNotProvision(yes) => {
                f.kind = "do_not_provision".into();
                f.provision_false = !*yes;
            }
        }
        f
    }

    fn new_row() -> Self {
        Self {
            kind: "add_entitlement".into(),
            ent_type: "group".into(),
            set: SourceForm { kind: "constant".into(), ..Default::default() },
            ..Default::default()
        }
    }

    fn read(form: &FormData, at: &str) -> Self {
        let kind = form.text(&format!("{at}.kind"));
        Self {
            kind: if ["set", "add_entitlement", "do_not_provision"].contains(&kind.as_str()) {
                kind
            } else {
                "add_entitlement".into()
            },
            path: form.text(&format!("{at}.path")),
            set: SourceForm::read(form, &format!("{at}.set")),
            ent_type: if form.text(&format!("{at}.ent_type")) == "attribute" {
                "attribute".into()
            } else {
                "group".into()
            },
            ent_attribute: form.text(&format!("{at}.ent_attribute")),
            ent_value: form.text(&format!("{at}.ent_value")),
            provision_false: form.get(&format!("{at}.provision_false")) == Some("1"),
            ..Default::default()
        }
    }

    fn to_action(&self, field: &str, errors: &mut Vec<FieldError>) -> RuleAction {
        match self.kind.as_str() {
            "set" => {
                let at = format!("{field}.set");
                let (value, source) = if self.set.kind == "constant" && self.set.transform.is_empty() {
                    (Some(self.set.constant_value(&format!("{at}.source"), errors)), None)
                } else {
                    (None, Some(self.set.to_source(&format!("{at}.source"), errors)))
                };
                RuleAction::Set(SetAttribute { app_attribute: self.path.clone(), value, source })
            }
            "do_not_provision" => RuleAction::DoNotProvision(!self.provision_false),
            _ => {
                let kind = if self.ent_type == "group" { "group".to_owned() } else { self.ent_attribute.clone() };
                RuleAction::AddEntitlement(EntitlementRef { kind, value: self.ent_value.clone() })
            }
        }
    }

    /// Errors about the value of a "set" action, and about the action as a whole.
    fn set_errors(&self) -> Vec<String> {
        let s = &self.set;
        [&s.e_kind, &s.e_attribute, &s.e_constant, &s.e_template, &s.e_transform, &self.e_kind]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn kinds(&self) -> Vec<Choice> {
        vec![
            Choice::new("add_entitlement", "Add an entitlement", &self.kind),
            Choice::new("set", "Set an app attribute", &self.kind),
            Choice::new("do_not_provision", "Do not provision (out of scope)", &self.kind),
        ]
    }

    fn set_kinds(&self) -> Vec<Choice> {
        vec![
            Choice::new("constant", "to the value", &self.set.kind),
            Choice::new("template", "to the template", &self.set.kind),
            Choice::new("attribute", "to the directory attribute", &self.set.kind),
        ]
    }

    fn ent_types(&self) -> Vec<Choice> {
        vec![
            Choice::new("group", "Group", &self.ent_type),
            Choice::new("attribute", "Value of a multi-valued attribute", &self.ent_type),
        ]
    }
}

#[derive(Debug, Clone, Default)]
struct RuleForm {
    name: String,
    any: bool,
    conditions: Vec<CondForm>,
    actions: Vec<ActionForm>,
    e_name: Option<String>,
    e_conditions: Option<String>,
    e_actions: Option<String>,
    e_other: Option<String>,
    focus: Focus,
}

impl RuleForm {
    fn of(r: &Rule) -> Self {
        Self {
            name: r.name.clone(),
            any: r.match_ == Match::Any,
            conditions: r.conditions.iter().map(CondForm::of).collect(),
            actions: r.actions.iter().map(ActionForm::of).collect(),
            ..Default::default()
        }
    }

    fn new_rule() -> Self {
        Self { conditions: vec![CondForm::new_row()], actions: vec![ActionForm::new_row()], ..Default::default() }
    }

    fn read(form: &FormData, i: usize) -> Self {
        let at = format!("r{i}");
        let conditions = (0..200)
            .take_while(|j| form.get(&format!("{at}.c{j}.op")).is_some())
            .map(|j| CondForm::read(form, &format!("{at}.c{j}")))
            .collect();
        let actions = (0..200)
            .take_while(|k| form.get(&format!("{at}.a{k}.kind")).is_some())
            .map(|k| ActionForm::read(form, &format!("{at}.a{k}")))
            .collect();
        Self {
            name: form.text(&format!("{at}.name")),
            any: form.get(&format!("{at}.match")) == Some("any"),
            conditions,
            actions,
            ..Default::default()
        }
    }
}

#[derive(Template)]
#[template(path = "app_rules.html")]
struct RulesPage {
    layout: Layout,
    app: App,
    tab: &'static str,
    status: super::apps::AppStatus,
    version: i64,
    rules: Vec<RuleForm>,
    groups: Vec<String>,
    errors: Vec<String>,
    changed: Option<String>,
    preview: Option<PreviewView>,
}

view::pages!(EntitlementsPage, ParametersPage, RulesPage, ExplainPage);

async fn rules_page(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    app: App,
    version: i64,
    mut rules: Vec<RuleForm>,
) -> Result<RulesPage> {
    let names = attribute_names(state).await?;
    let roles = state
        .service
        .list_roles(&NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } })
        .await?
        .items;
    for r in &mut rules {
        for c in &mut r.conditions {
            c.attributes = attribute_choices(&names, &c.attribute);
            c.ops = OPS.iter().map(|(v, l)| Choice::new(*v, *l, &c.op)).collect();
            c.roles = vec![Choice::new("", "Choose a role", &c.role)];
            c.roles.extend(roles.iter().map(|role| Choice::new(&role.name, &role.name, &c.role)));
            if !c.role.is_empty() && !roles.iter().any(|role| role.name == c.role) {
                c.roles.push(Choice::new(&c.role, format!("{} (unknown)", c.role), &c.role));
            }
        }
        for a in &mut r.actions {
            a.set.attributes = attribute_choices(&names, &a.set.attribute);
        }
    }
    let (_, page) = state.service.entitlements(app.id, &PageRequest { limit: store::MAX_PAGE, cursor: None }).await?;
    let groups = page.items.into_iter().filter(|e| e.kind == "group").map(|e| e.display_name).collect();
    let layout = Layout::new(session, headers, "apps", format!("{} · Rules", app.name));
    Ok(RulesPage {
        layout,
        tab: "rules",
        status: super::apps::app_status(state, app.id, tested(state, app.id).await?).await?,
        version,
        rules,
        groups,
        errors: vec![],
        changed: None,
        preview: None,
        app,
    })
}

async fn rules_tab(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let (rules, version) = state.service.rules(id).await?;
    let app = state.service.get_app(id).await?;
    let rules = rules.iter().map(RuleForm::of).collect();
    view::page(&rules_page(&state, &session, &headers, app, version, rules).await?, StatusCode::OK)
}

fn to_rules(forms: &[RuleForm], errors: &mut Vec<FieldError>) -> Vec<Rule> {
    forms
        .iter()
        .enumerate()
        .map(|(i, r)| Rule {
            name: r.name.clone(),
            match_: if r.any { Match::Any } else { Match::All },
            conditions: r
                .conditions
                .iter()
                .enumerate()
                .filter_map(|(j, c)| c.to_condition(&format!("rules[{i}].conditions[{j}]"), errors))
                .collect(),
            actions: r
                .actions
                .iter()
                .enumerate()
                .map(|(k, a)| a.to_action(&format!("rules[{i}].actions[{k}]"), errors))
                .collect(),
        })
        .collect()
}

fn apply_rule_command(rules: &mut Vec<RuleForm>, cmd: &Command) {
    match cmd.what.as_str() {
        "rule" => {
            if let Some((i, focus)) = list_op(rules, &cmd.verb, cmd.i, RuleForm::new_rule) {
                rules[i].focus = focus;
            }
        }
        "cond" => {
            if let Some(r) = cmd.i.and_then(|i| rules.get_mut(i)) {
                let j = if cmd.verb == "add" { None } else { cmd.j };
                if let Some((j, focus)) = list_op(&mut r.conditions, &cmd.verb, j, CondForm::new_row) {
                    r.conditions[j].focus = focus;
                }
            }
        }
        "act" => {
            if let Some(r) = cmd.i.and_then(|i| rules.get_mut(i)) {
                let k = if cmd.verb == "add" { None } else { cmd.j };
                if let Some((k, focus)) = list_op(&mut r.actions, &cmd.verb, k, ActionForm::new_row) {
                    r.actions[k].focus = focus;
                }
            }
        }
        _ => {}
    }
}

async fn post_rules(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let app = state.service.get_app(id).await?;
    let version = form.get("version").and_then(|v| v.parse::<i64>().ok()).unwrap_or(app.version);
    let mut forms: Vec<RuleForm> =
        (0..500).take_while(|i| form.get(&format!("r{i}.name")).is_some()).map(|i| RuleForm::read(&form, i)).collect();
    let cmd = Command::parse(form.get("op").unwrap_or("preview"));
    if ["rule", "cond", "act"].contains(&cmd.what.as_str()) {
        apply_rule_command(&mut forms, &cmd);
        let page = rules_page(&state, &session, &headers, app, version, forms).await?;
        return view::page(&page, StatusCode::OK);
    }
    let mut local = Vec::new();
    let rules = to_rules(&forms, &mut local);
    let result = if !local.is_empty() {
        Err(Outcome::Errors(local))
    } else if cmd.what == "save" {
        match state.service.put_mapping(&session.actor(), id, None, Some(rules), Some(version)).await {
            Ok(_) => return Ok(view::see_other_with(
                &format!("/console/apps/{id}/rules"),
                "ok",
                "Rules saved. Every user the app concerns is re-evaluated; only real differences are sent to the app.",
            )),
            Err(e) => Err(outcome(e)?),
        }
    } else {
        match state.service.plan_preview(id, None, Some(rules), None).await {
            Ok(p) => Ok(preview_view(p)),
            Err(e) => Err(outcome(e)?),
        }
    };
    let mut status = StatusCode::OK;
    let (mut preview, mut errors, mut changed) = (None, vec![], None);
    match result {
        Ok(p) => preview = Some(p),
        Err(Outcome::Errors(e)) => {
            status = StatusCode::UNPROCESSABLE_ENTITY;
            errors = e;
        }
        Err(Outcome::Changed(current)) => {
            status = StatusCode::PRECONDITION_FAILED;
            changed = Some(changed_message(current, "Rules"));
        }
    }
    for (i, r) in forms.iter_mut().enumerate() {
        let at = format!("rules[{i}]");
        r.e_name = take(&mut errors, &format!("{at}.name"), true, "Name");
        for (j, c) in r.conditions.iter_mut().enumerate() {
            let cat = format!("{at}.conditions[{j}]");
            c.e_attribute = take(&mut errors, &format!("{cat}.attribute"), true, "Attribute");
            c.e_value = take(&mut errors, &format!("{cat}.value"), true, "Value");
            c.e_other = take(&mut errors, &cat, true, "Condition");
        }
        r.e_conditions = take(&mut errors, &format!("{at}.conditions"), false, "Conditions");
        for (k, a) in r.actions.iter_mut().enumerate() {
            let aat = format!("{at}.actions[{k}]");
            a.e_path = take(&mut errors, &format!("{aat}.set.app_attribute"), true, "App attribute");
            a.set.take_errors(&mut errors, &format!("{aat}.set.source"));
            a.e_ent_type = take(&mut errors, &format!("{aat}.add_entitlement.type"), true, "Type");
            a.e_ent_value = take(&mut errors, &format!("{aat}.add_entitlement"), true, "Entitlement");
            a.e_kind = take(&mut errors, &aat, true, "Action");
        }
        r.e_actions = take(&mut errors, &format!("{at}.actions"), false, "Actions");
        r.e_other = take(&mut errors, &at, true, "Rule");
    }
    let mut page = rules_page(&state, &session, &headers, app, version, forms).await?;
    page.errors = leftovers(errors);
    page.changed = changed;
    page.preview = preview;
    view::page(&page, status)
}

// ---- a user's account explained ----

struct ExplainRow {
    what: String,
    value: String,
    by: String,
}

#[derive(Template)]
#[template(path = "user_explain.html")]
struct ExplainPage {
    layout: Layout,
    user_id: Uuid,
    username: String,
    app: App,
    in_scope: bool,
    reason: String,
    rows: Vec<ExplainRow>,
    groups: Vec<ExplainRow>,
    account_json: String,
    badge: Option<Badge>,
    last_event_id: Option<Uuid>,
    remote_id: String,
}

/// The value at an app attribute path of a resource.
fn value_at(resource: &Value, path: &AttrPath) -> Option<Value> {
    let root = match &path.schema {
        Some(urn) => resource.get(urn)?,
        None => resource,
    };
    let mut v = root.get(&path.attr)?.clone();
    if let Some((sub, want)) = &path.filter {
        v = v
            .as_array()?
            .iter()
            .find(|item| item.get(sub).and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case(want)))?
            .clone();
    }
    if let Some(sub) = &path.sub {
        v = v.get(sub)?.clone();
    }
    Some(v)
}

async fn explain(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((user_id, app_id)): Path<(Uuid, Uuid)>,
) -> Result<Response> {
    let user = state.service.get_user(user_id).await?;
    let app = state.service.get_app(app_id).await?;
    let e = state.service.explain(user_id, app_id).await?;
    let account = state.service.store().get_account(app_id, user_id).await?;
    let mut rows = Vec::new();
    let mut groups = Vec::new();
    for (key, by) in &e.provenance {
        if let Some(name) = key.strip_prefix("group:") {
            groups.push(ExplainRow { what: "Group".into(), value: name.to_owned(), by: by.clone() });
        } else if key == "scope" {
            continue;
        } else if let Some(path) = AttrPath::parse(key) {
            let value = value_at(&e.account, &path).map(|v| display(&v)).unwrap_or_default();
            rows.push(ExplainRow { what: key.clone(), value, by: by.clone() });
        } else if let Some((kind, value)) = key.split_once(':') {
            groups.push(ExplainRow { what: kind.to_owned(), value: value.to_owned(), by: by.clone() });
        }
    }
    // Parameters in their order, then rules, then what the engine sets itself.
    rows.sort_by_key(|r| match r.by.strip_prefix("parameter ") {
        Some(rest) => (0, rest.split(' ').next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0)),
        None if r.by.starts_with("rule ") => (1, 0),
        None => (2, 0),
    });
    let layout = Layout::new(&session, &headers, "users", format!("{} in {} · Explain", user.username, app.name));
    let page = ExplainPage {
        layout,
        user_id,
        username: user.username,
        in_scope: e.in_scope,
        reason: e.reason.unwrap_or_default(),
        rows,
        groups,
        account_json: serde_json::to_string_pretty(&e.account).unwrap_or_default(),
        badge: account.as_ref().map(|a| Badge::of(a.status)),
        last_event_id: account.as_ref().and_then(|a| a.last_event_id),
        remote_id: account.and_then(|a| a.remote_id).unwrap_or_default(),
        app,
    };
    view::page(&page, StatusCode::OK)
}
