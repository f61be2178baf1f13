//! What every console page shares: the layout, forms, flash messages, redirects, and the
//! words and colours of statuses.

use askama::Template;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use directory::{Account, Action, App, Event, EventStatus, FieldError, Ownership, UserStatus};
use uuid::Uuid;

use super::auth::{self, Session, FLASH_COOKIE};

/// An urlencoded form body.
#[derive(Debug, Default)]
pub struct FormData(pub Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value of a field, trimmed; empty when absent.
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or("").trim().to_owned()
    }

    /// The value of a field, trimmed; `None` when absent or empty.
    pub fn opt(&self, name: &str) -> Option<String> {
        Some(self.text(name)).filter(|v| !v.is_empty())
    }

    /// Every value of a repeated field.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// Whether a checkbox was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// A message shown once at the top of the next page.
#[derive(Debug, Clone)]
pub struct Flash {
    /// `ok` or `error`.
    pub kind: String,
    pub text: String,
}

/// What the layout of every signed-in page needs.
pub struct Layout {
    pub title: String,
    pub admin: String,
    pub csrf: String,
    /// Which main section is current: `users`, `roles`, `apps` or `provisioning`.
    pub nav: &'static str,
    pub flash: Option<Flash>,
}

impl Layout {
    pub fn new(session: &Session, headers: &HeaderMap, nav: &'static str, title: impl Into<String>) -> Self {
        let flash = auth::cookie(headers, FLASH_COOKIE).and_then(|raw| {
            let decoded: String =
                form_urlencoded::parse(format!("f={raw}").as_bytes()).map(|(_, v)| v.into_owned()).next()?;
            let (kind, text) = decoded.split_once('|')?;
            let kind = if kind == "error" { "error" } else { "ok" };
            Some(Flash { kind: kind.to_owned(), text: text.chars().take(500).collect() })
        });
        Self { title: title.into(), admin: session.admin.clone(), csrf: session.csrf.clone(), nav, flash }
    }

    pub fn is(&self, nav: &str) -> bool {
        self.nav == nav
    }
}

/// Renders a template.
pub fn render<T: Template>(t: &T) -> Result<String, super::ConsoleError> {
    Ok(t.render()?)
}

/// A page with the console layout.
pub trait Page: Template {
    fn layout(&self) -> &Layout;
}

/// Declares that templates have a `layout` field.
macro_rules! pages {
    ($($t:ty),* $(,)?) => {
        $(impl $crate::console::view::Page for $t {
            fn layout(&self) -> &$crate::console::view::Layout {
                &self.layout
            }
        })*
    };
}
pub(crate) use pages;

/// A whole page; clears the flash cookie once its message is shown.
pub fn page<T: Page>(t: &T, status: StatusCode) -> Result<Response, super::ConsoleError> {
    let body = render(t)?;
    let mut resp = (status, Html(body)).into_response();
    if t.layout().flash.is_some() {
        resp.headers_mut().append(header::SET_COOKIE, auth::set_cookie(FLASH_COOKIE, "", false, Some(0)));
    }
    Ok(resp)
}

/// A fragment for live updates.
pub fn fragment(body: String) -> Response {
    Html(body).into_response()
}

/// 303 See Other to `location`.
pub fn see_other(location: &str) -> Response {
    let value = HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/console"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response()
}

/// 303 to `location` with a one-time message.
pub fn see_other_with(location: &str, kind: &str, text: &str) -> Response {
    let mut resp = see_other(location);
    let value: String = form_urlencoded::byte_serialize(format!("{kind}|{text}").as_bytes()).collect();
    resp.headers_mut().append(header::SET_COOKIE, auth::set_cookie(FLASH_COOKIE, &value, false, Some(60)));
    resp
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
}

/// A small standalone page (errors, refusals).
pub fn message_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    match (MessagePage { title, message }).render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(_) => (status, message.to_owned()).into_response(),
    }
}

/// Field errors of a form, by field name.
#[derive(Debug, Default, Clone)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    /// The reason given for `field` (or any field nested under it), if any.
    pub fn of(&self, field: &str) -> Option<String> {
        let reasons: Vec<&str> = self
            .0
            .iter()
            .filter(|e| e.field == field || e.field.ends_with(&format!(".{field}")))
            .map(|e| e.reason.as_str())
            .collect();
        if reasons.is_empty() {
            None
        } else {
            Some(reasons.join("; "))
        }
    }

    /// Errors that name no field shown on the form.
    pub fn other(&self, shown: &[&str]) -> Vec<String> {
        self.0
            .iter()
            .filter(|e| !shown.iter().any(|f| e.field == *f || e.field.ends_with(&format!(".{f}"))))
            .map(|e| format!("{}: {}", e.field, e.reason))
            .collect()
    }
}

/// Splits a service error into errors to show next to fields, or the error itself.
pub fn field_errors(e: crate::Error) -> Result<Errors, crate::Error> {
    match e {
        crate::Error::Invalid(v) => Ok(Errors(v.0)),
        crate::Error::Conflict { field, reason } => Ok(Errors(vec![FieldError::new(field, reason)])),
        crate::Error::BadRequest { field, reason } => Ok(Errors(vec![FieldError::new(field, reason)])),
        other => Err(other),
    }
}

pub fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn iso(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The seed's word for a status.
pub fn status_label(s: EventStatus) -> &'static str {
    match s {
        EventStatus::Pending => "Pending",
        EventStatus::Held => "Held for review",
        EventStatus::Provisioning => "Provisioning",
        EventStatus::Modifying => "Modifying",
        EventStatus::Provisioned => "Provisioned",
        EventStatus::Failed => "Failed",
        EventStatus::Deleting => "Deleting",
        EventStatus::Unknown => "Unknown",
        EventStatus::Suspended => "Suspended",
        EventStatus::Deleted => "Deleted",
        EventStatus::Rejected => "Rejected",
        EventStatus::Cancelled => "Cancelled",
    }
}

pub fn action_label(a: Action) -> &'static str {
    match a {
        Action::Create => "Create",
        Action::Update => "Update",
        Action::Suspend => "Suspend",
        Action::Delete => "Delete",
    }
}

pub fn user_status_label(s: UserStatus) -> &'static str {
    match s {
        UserStatus::Active => "Active",
        UserStatus::Suspended => "Suspended",
        UserStatus::Deleted => "Deleted",
    }
}

pub fn ownership_label(o: Option<Ownership>) -> &'static str {
    match o {
        Some(Ownership::Created) => "Created by Provisioner",
        Some(Ownership::Linked) => "Linked by an admin",
        Some(Ownership::Foreign) => "Not ours (left untouched)",
        None => "—",
    }
}

/// A status as a badge.
#[derive(Debug, Clone)]
pub struct Badge {
    pub slug: &'static str,
    pub label: &'static str,
    /// Work is in progress: the page keeps it up to date.
    pub working: bool,
}

impl Badge {
    pub fn of(s: EventStatus) -> Self {
        Self {
            slug: s.as_str(),
            label: status_label(s),
            working: !s.is_final() && !matches!(s, EventStatus::Pending | EventStatus::Held),
        }
    }

    /// An event's badge: a failure resolved by a later success says so.
    pub fn of_event(e: &Event) -> Self {
        let mut b = Self::of(e.status);
        if e.status == EventStatus::Failed && e.resolved_by.is_some() {
            b.label = "Failed (resolved)";
        }
        b
    }
}

/// An event as listed.
#[derive(Debug, Clone)]
pub struct EventView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub app_id: Uuid,
    pub app_name: String,
    pub action: &'static str,
    pub badge: Badge,
    pub pending: bool,
    pub failed: bool,
    pub unknown: bool,
    /// Held by the deprovisioning guard.
    pub held: bool,
    /// Why the operation exists, in words.
    pub cause: String,
    pub reason: String,
    pub recommended_action: String,
    pub attempts: i64,
    pub created: String,
    pub created_iso: String,
    pub updated: String,
}

impl EventView {
    pub fn of(e: &Event) -> Self {
        Self {
            id: e.id,
            user_id: e.user_id,
            username: e.username.clone(),
            app_id: e.app_id,
            app_name: e.app_name.clone(),
            action: action_label(e.action),
            badge: Badge::of_event(e),
            pending: e.status == EventStatus::Pending,
            failed: e.status == EventStatus::Failed && e.resolved_by.is_none(),
            unknown: e.status == EventStatus::Unknown,
            held: e.status == EventStatus::Held,
            cause: e.cause.as_ref().map(|c| c.summary.clone()).unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            recommended_action: e.recommended_action.clone().unwrap_or_default(),
            attempts: e.attempts,
            created: when(&e.created_at),
            created_iso: iso(&e.created_at),
            updated: when(&e.updated_at),
        }
    }
}

/// An app account as listed.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub app_id: Uuid,
    pub app_name: String,
    pub user_id: Uuid,
    pub username: String,
    pub remote_id: String,
    pub ownership: &'static str,
    pub badge: Badge,
    pub unknown: bool,
    pub last_event_id: Option<Uuid>,
    pub updated: String,
}

impl AccountView {
    pub fn of(a: &Account, apps: &[App]) -> Self {
        let app_name =
            apps.iter().find(|x| x.id == a.app_id).map_or_else(|| "(deleted app)".to_owned(), |x| x.name.clone());
        Self {
            app_id: a.app_id,
            app_name,
            user_id: a.user_id,
            username: a.username.clone(),
            remote_id: a.remote_id.clone().unwrap_or_default(),
            ownership: ownership_label(a.ownership),
            badge: Badge::of(a.status),
            unknown: a.status == EventStatus::Unknown,
            last_event_id: a.last_event_id,
            updated: when(&a.updated_at),
        }
    }
}

/// A `<select>` option.
#[derive(Debug, Clone)]
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

impl Choice {
    pub fn new(value: impl Into<String>, label: impl Into<String>, current: &str) -> Self {
        let value = value.into();
        let selected = value == current;
        Self { value, label: label.into(), selected }
    }
}

/// A link to the next page of a list (keeping the filters), if there is one.
pub fn next_link(base: &str, params: &[(&str, String)], cursor: Option<String>) -> Option<String> {
    let cursor = cursor?;
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        s.append_pair(k, v);
    }
    s.append_pair("cursor", &cursor);
    Some(format!("{base}?{}", s.finish()))
}

/// Whether a URL query asks for only the live part of a page.
pub fn wants_fragment(headers: &HeaderMap) -> bool {
    headers.get("x-requested-with").is_some()
}
