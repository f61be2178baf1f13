//! A user's "Explain" view of one app account: each value of the account and what set it
//! (a parameter, a rule, the engine), its groups, and the account as the app would get it.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use directory::mapping::AttrPath;
use directory::App;
use serde_json::Value;
use uuid::Uuid;

use super::preview::display;
use crate::console::auth::Session;
use crate::console::view::{self, Badge, Layout};
use crate::console::Result;
use crate::AppState;

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

pub(super) async fn explain(
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

view::pages!(ExplainPage);
