//! The admin console: server-rendered HTML (askama) from the same binary, over the same
//! service layer as the REST API. Every write goes through [`crate::Service`] with the
//! signed-in admin as the actor, so it lands in the audit log under the admin's name.
//!
//! Pages work without JavaScript (plain forms, redirect after post); a few lines of
//! embedded script keep statuses up to date while work is in progress.

mod apps;
mod auth;
mod events;
mod mapping;
mod roles;
mod scim_clients;
mod sources;
mod users;
mod view;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

pub(crate) use auth::{cookie, is_local_path, over_tls, random_token, same, ClientIp};
pub use auth::{ConsoleConfig, ConsoleState, Session, CSRF_HEADER, SESSION_COOKIE};

use crate::{AppState, Error};
use view::FormData;

/// An error while serving a console page: shown as a page, never as JSON.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Service(#[from] Error),
    #[error("cannot render the page: {0}")]
    Render(#[from] askama::Error),
}

impl From<store::StoreError> for ConsoleError {
    fn from(e: store::StoreError) -> Self {
        Self::Service(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            Self::Service(e) => {
                let problem = e.problem();
                if problem.status >= 500 {
                    tracing::error!(error = %e.detail(), "console error");
                }
                let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let message = match &e {
                    Error::NotFound(what) => format!("This {what} does not exist (any more)."),
                    Error::PreconditionFailed { .. } => {
                        "Someone changed this meanwhile. Reload the page and try again.".to_owned()
                    }
                    _ => problem.detail,
                };
                view::message_page(status, &message)
            }
            Self::Render(e) => {
                tracing::error!(error = %e, "console template error");
                view::message_page(StatusCode::INTERNAL_SERVER_ERROR, "The page could not be shown.")
            }
        }
    }
}

pub type Result<T, E = ConsoleError> = std::result::Result<T, E>;

const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");
const ICON: &str = include_str!("../../assets/icon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

/// The console's routes: everything under `/console`.
pub fn router(state: &AppState) -> Router<AppState> {
    let home = || async { view::see_other("/console/users") };
    // `/` is the end users' app portal (see `crate::saml`).
    Router::new().nest("/console", pages(state)).route("/console/", get(home))
}

fn pages(state: &AppState) -> Router<AppState> {
    let signed_in = Router::new()
        .route("/", get(|| async { view::see_other("/console/users") }))
        .route("/logout", post(logout))
        .merge(users::routes())
        .merge(roles::routes())
        .merge(apps::routes())
        .merge(mapping::routes())
        .merge(events::routes())
        .merge(sources::routes())
        .merge(scim_clients::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_session));
    Router::new()
        .merge(signed_in)
        .route("/login", get(login_page).post(login))
        .route("/assets/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/assets/icon.svg", get(|| async { asset("image/svg+xml", ICON) }))
        .fallback(|| async { view::message_page(StatusCode::NOT_FOUND, "There is no such page in the console.") })
        .layer(middleware::from_fn(auth::security_headers))
}

// ---- sign-in ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    username: String,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct LoginParams {
    next: Option<String>,
    expired: Option<String>,
    signed_out: Option<String>,
}

/// Only console paths are followed after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console") && auth::is_local_path(n) && !n.contains("/login") => n.to_owned(),
        _ => "/console/users".to_owned(),
    }
}

fn login_response(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    page: LoginPage,
) -> Result<Response, ConsoleError> {
    let secure = auth::over_tls(headers, &state.console.config);
    let body = view::render(&page)?;
    let cookie = auth::set_cookie(auth::LOGIN_COOKIE, &page.csrf, secure, None);
    Ok((status, [(header::SET_COOKIE, cookie)], Html(body)).into_response())
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<LoginParams>,
) -> Result<Response> {
    let notice = if p.expired.is_some() {
        Some("Your session ended after a period of inactivity. Sign in again.".to_owned())
    } else if p.signed_out.is_some() {
        Some("You are signed out.".to_owned())
    } else {
        None
    };
    let page = LoginPage {
        csrf: auth::random_token(),
        next: safe_next(p.next.as_deref()),
        username: String::new(),
        error: None,
        notice,
    };
    login_response(&state, &headers, StatusCode::OK, page)
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth::ClientIp(ip): auth::ClientIp,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let username = form.text("username");
    let password = form.get("password").unwrap_or("").to_owned();
    let next = safe_next(form.get("next"));
    let retry = |status: StatusCode, error: &str| {
        let page = LoginPage {
            csrf: auth::random_token(),
            next: next.clone(),
            username: username.clone(),
            error: Some(error.to_owned()),
            notice: None,
        };
        login_response(&state, &headers, status, page)
    };
    let bound = auth::cookie(&headers, auth::LOGIN_COOKIE);
    if !matches!((&bound, form.get("csrf")), (Some(c), Some(f)) if auth::same(c, f)) {
        return retry(StatusCode::FORBIDDEN, "The sign-in form expired. Please try again.");
    }
    if state.console.locked_out(&username, &ip) {
        return retry(StatusCode::TOO_MANY_REQUESTS, "Too many failed sign-ins. Wait a few minutes, then try again.");
    }
    let Some(admin) = state.service.verify_admin(&username, &password).await? else {
        state.console.record_failure(&username, &ip);
        return retry(StatusCode::UNAUTHORIZED, "Wrong username or password.");
    };
    state.console.record_success(&username);
    let store = state.service.store();
    let idle = chrono::Duration::from_std(state.console.config.idle_timeout).unwrap_or(chrono::Duration::minutes(30));
    if let Err(e) = store.delete_idle_sessions(directory::now() - idle).await {
        tracing::warn!(error = %e.chain(), "cannot remove idle console sessions");
    }
    let id = auth::random_token();
    let now = directory::now();
    let record = store::SessionRecord {
        id_hash: auth::hash_id(&id),
        admin_id: admin.id,
        username: admin.username.clone(),
        csrf_token: auth::random_token(),
        created_at: now,
        last_seen_at: now,
    };
    store.create_session(&record).await?;
    let secure = auth::over_tls(&headers, &state.console.config);
    let mut resp = view::see_other(&next);
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, auth::set_cookie(SESSION_COOKIE, &id, secure, None));
    h.append(header::SET_COOKIE, auth::set_cookie(auth::LOGIN_COOKIE, "", secure, Some(0)));
    Ok(resp)
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, session: Session) -> Result<Response> {
    state.service.store().delete_session(&session.id_hash, true).await?;
    let secure = auth::over_tls(&headers, &state.console.config);
    let mut resp = view::see_other("/console/login?signed_out=1");
    resp.headers_mut().append(header::SET_COOKIE, auth::set_cookie(SESSION_COOKIE, "", secure, Some(0)));
    Ok(resp)
}
