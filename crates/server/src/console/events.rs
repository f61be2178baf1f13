//! Provisioning (the seed's Users > Provisioning): every event, newest first; search by user,
//! filter by app and status; approve or reject Pending ones (several at once too), see why
//! one Failed and Retry it, "Rematch login" for Unknown ones.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use directory::EventStatus;
use serde::Deserialize;
use store::{EventQuery, NameQuery, PageRequest};
use uuid::Uuid;

use super::auth::Session;
use super::view::{self, Choice, EventView, FormData, Layout};
use super::Result;
use crate::{AppState, Error};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/provisioning", get(list))
        .route("/provisioning/approve", post(bulk))
        .route("/events/{id}", get(show))
        .route("/events/{id}/approve", post(approve))
        .route("/events/{id}/reject", post(reject))
        .route("/events/{id}/allow", post(allow))
        .route("/events/{id}/retry", post(retry))
}

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    q: Option<String>,
    app: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "provisioning.html")]
struct ListPage {
    layout: Layout,
    q: String,
    apps: Vec<Choice>,
    statuses: Vec<Choice>,
    events: Vec<EventView>,
    next: Option<String>,
    filtered: bool,
    live_src: String,
    /// Apps with operations held by the deprovisioning guard.
    held: Vec<HeldCount>,
}

/// "N deprovisions held" for one app.
struct HeldCount {
    app_id: Uuid,
    app_name: String,
    count: usize,
}

#[derive(Template)]
#[template(path = "event_rows.html")]
struct RowsFragment {
    events: Vec<EventView>,
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    layout: Layout,
    csrf: String,
    e: EventView,
    back: String,
}

#[derive(Template)]
#[template(path = "event_status.html")]
struct StatusFragment {
    e: EventView,
    csrf: String,
}

view::pages!(ListPage, EventPage);

async fn list(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Response> {
    let q = p.q.clone().unwrap_or_default();
    let app_text = p.app.clone().unwrap_or_default();
    let status_text = p.status.clone().unwrap_or_default();
    let cursor = p.cursor.clone().filter(|c| !c.is_empty());
    let query = EventQuery {
        user: None,
        app: Uuid::parse_str(&app_text).ok(),
        status: EventStatus::parse(&status_text),
        q: Some(q.trim().to_owned()).filter(|s| !s.is_empty()),
        cause: None,
        page: PageRequest { limit: 50, cursor: cursor.clone() },
    };
    let page = state.service.list_events(&query).await?;
    let events: Vec<EventView> = page.items.iter().map(EventView::of).collect();
    if view::wants_fragment(&headers) {
        return Ok(view::fragment(view::render(&RowsFragment { events })?));
    }
    let all_apps = state
        .service
        .list_apps(&NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } })
        .await?
        .items;
    let mut held = Vec::new();
    for a in &all_apps {
        let count = state.service.held_events(a.id).await?.len();
        if count > 0 {
            held.push(HeldCount { app_id: a.id, app_name: a.name.clone(), count });
        }
    }
    let mut apps = vec![Choice::new("", "All apps", &app_text)];
    apps.extend(all_apps.iter().map(|a| Choice::new(a.id.to_string(), &a.name, &app_text)));
    let mut statuses = vec![Choice::new("", "All statuses", &status_text)];
    statuses.extend(EventStatus::ALL.iter().map(|s| Choice::new(s.as_str(), view::status_label(*s), &status_text)));
    let params = [("q", q.clone()), ("app", app_text.clone()), ("status", status_text.clone())];
    let next = view::next_link("/console/provisioning", &params, page.next_cursor);
    let mut live = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        live.append_pair(k, v);
    }
    if let Some(c) = &cursor {
        live.append_pair("cursor", c);
    }
    let live_src = format!("/console/provisioning?{}", live.finish());
    let layout = Layout::new(&session, &headers, "provisioning", "Provisioning");
    let filtered = !q.is_empty() || !app_text.is_empty() || !status_text.is_empty() || cursor.is_some();
    let page = ListPage { layout, q, apps, statuses, events, next, filtered, live_src, held };
    view::page(&page, StatusCode::OK)
}

#[derive(Debug, Default, Deserialize)]
struct ShowParams {
    back: Option<String>,
}

/// Only console pages are linked back to.
fn back_link(back: Option<&str>) -> String {
    match back {
        Some(b) if b.starts_with("/console/") && !b.starts_with("//") => b.to_owned(),
        _ => "/console/provisioning".to_owned(),
    }
}

async fn show(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(p): Query<ShowParams>,
) -> Result<Response> {
    let e = EventView::of(&state.service.get_event(id).await?);
    if view::wants_fragment(&headers) {
        return Ok(view::fragment(view::render(&StatusFragment { e, csrf: session.csrf.clone() })?));
    }
    let title = format!("{} · {} · {}", e.badge.label, e.username, e.app_name);
    let layout = Layout::new(&session, &headers, "provisioning", title);
    let csrf = session.csrf.clone();
    view::page(&EventPage { layout, csrf, e, back: back_link(p.back.as_deref()) }, StatusCode::OK)
}

/// Where to go after acting on one event: back where the admin came from.
fn after(form: &FormData, id: Uuid) -> String {
    match form.get("back") {
        Some(b) if b.starts_with("/console/") && !b.starts_with("//") => b.to_owned(),
        _ => format!("/console/events/{id}"),
    }
}

async fn act(state: &AppState, session: &Session, id: Uuid, body: &Bytes, verb: &str, done: &str) -> Result<Response> {
    let form = FormData::parse(body);
    let actor = session.actor();
    let result = match verb {
        "approve" => state.service.approve_event(&actor, id).await,
        "reject" => state.service.reject_event(&actor, id).await,
        "allow" => match state.service.get_event(id).await {
            Ok(e) => state
                .service
                .decide_held(&actor, e.app_id, Some(vec![id]), true)
                .await
                .and_then(|mut v| v.pop().ok_or(Error::NotFound("event"))),
            Err(e) => Err(e),
        },
        _ => state.service.retry_event(&actor, id).await,
    };
    match result {
        Ok(e) => Ok(view::see_other_with(
            &after(&form, id),
            "ok",
            &format!("{done}: {} of {} in {}.", view::action_label(e.action), e.username, e.app_name),
        )),
        Err(Error::InvalidState(m)) => Ok(view::see_other_with(&format!("/console/events/{id}"), "error", &m)),
        Err(e) => Err(e.into()),
    }
}

async fn approve(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    act(&state, &session, id, &body, "approve", "Approved").await
}

async fn reject(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    act(&state, &session, id, &body, "reject", "Rejected").await
}

async fn allow(State(state): State<AppState>, session: Session, Path(id): Path<Uuid>, body: Bytes) -> Result<Response> {
    act(&state, &session, id, &body, "allow", "Allowed").await
}

async fn retry(State(state): State<AppState>, session: Session, Path(id): Path<Uuid>, body: Bytes) -> Result<Response> {
    act(&state, &session, id, &body, "retry", "Retrying").await
}

/// Approves (or rejects) every selected pending event.
async fn bulk(State(state): State<AppState>, session: Session, body: Bytes) -> Result<Response> {
    let form = FormData::parse(&body);
    let back = match form.get("back") {
        Some(b) if b.starts_with("/console/provisioning") => b.to_owned(),
        _ => "/console/provisioning".to_owned(),
    };
    let ids: Vec<Uuid> = form.all("event").iter().filter_map(|v| Uuid::parse_str(v).ok()).collect();
    if ids.is_empty() {
        return Ok(view::see_other_with(&back, "error", "Select at least one Pending event first."));
    }
    let reject = form.get("decision") == Some("reject");
    let actor = session.actor();
    let (mut done, mut skipped) = (0, 0);
    for id in ids {
        let r = if reject {
            state.service.reject_event(&actor, id).await
        } else {
            state.service.approve_event(&actor, id).await
        };
        match r {
            Ok(_) => done += 1,
            Err(Error::InvalidState(_) | Error::NotFound(_)) => skipped += 1,
            Err(e) => return Err(e.into()),
        }
    }
    let verb = if reject { "Rejected" } else { "Approved" };
    let mut text = format!("{verb} {done} event{}.", if done == 1 { "" } else { "s" });
    if skipped > 0 {
        text.push_str(&format!(" {skipped} were no longer pending."));
    }
    Ok(view::see_other_with(&back, "ok", &text))
}
