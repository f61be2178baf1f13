//! An app's Entitlements tab: Refresh with live progress, and the imported values.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use directory::App;
use serde::Deserialize;
use store::PageRequest;
use uuid::Uuid;

use super::editor::tested;
use crate::console::apps;
use crate::console::auth::Session;
use crate::console::view::{self, Layout};
use crate::console::Result;
use crate::{AppState, Error};

#[derive(Debug, Default, Deserialize)]
pub(super) struct PageParams {
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
    status: apps::AppStatus,
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

pub(super) async fn entitlements_tab(
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
        status: apps::app_status(&state, id, tested(&state, id).await?).await?,
        refresh,
        items,
        next,
        src,
    };
    view::page(&page, StatusCode::OK)
}

pub(super) async fn refresh(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
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

view::pages!(EntitlementsPage);
