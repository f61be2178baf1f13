//! The end users' sign-in (username and password, rate-limited, bound to the browser that
//! loaded the form) and sign-out.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use directory::UserStatus;
use serde::Deserialize;
use store::UserSessionRecord;
use uuid::Uuid;

use super::pages::{error_page, message, see_other, suspended_page};
use super::session::{cookie, current_user, field, form, safe_next, secure, set_cookie};
use super::{PasswordOutcome, USER_FORM_COOKIE, USER_SESSION_COOKIE};
use crate::service::saml::{decoy_hash, sha256_hex};
use crate::{AppState, Error};

#[derive(Template)]
#[template(path = "idp_login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    username: String,
    app_name: Option<String>,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LoginParams {
    next: Option<String>,
    signed_out: Option<String>,
    welcome: Option<String>,
}

/// The app a `next` path signs in to, for the login page's "to continue to".
async fn app_of_next(state: &AppState, next: &str) -> Option<String> {
    let id = next.strip_prefix("/saml/")?.split('/').next()?;
    let id = Uuid::parse_str(id).ok()?;
    state.service.store().get_app(id).await.ok().flatten().map(|a| a.name)
}

fn login_response(state: &AppState, headers: &HeaderMap, status: StatusCode, page: LoginPage) -> Response {
    let body = match page.render() {
        Ok(b) => b,
        Err(e) => return error_page(Error::internal(e)),
    };
    let cookie = set_cookie(USER_FORM_COOKIE, &page.csrf, secure(state, headers), None);
    (status, [(header::SET_COOKIE, cookie)], Html(body)).into_response()
}

pub(super) async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<LoginParams>,
) -> Response {
    let next = safe_next(p.next.as_deref());
    let notice = if p.signed_out.is_some() {
        Some("You are signed out.".to_owned())
    } else if p.welcome.is_some() {
        Some("Your password is saved. Sign in with it.".to_owned())
    } else {
        None
    };
    let page = LoginPage {
        csrf: crate::console::random_token(),
        app_name: app_of_next(&state, &next).await,
        next,
        username: String::new(),
        error: None,
        notice,
    };
    login_response(&state, &headers, StatusCode::OK, page)
}

pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::console::ClientIp(ip): crate::console::ClientIp,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let username = field(&f, "username").unwrap_or("").trim().to_owned();
    let password = field(&f, "password").unwrap_or("").to_owned();
    let next = safe_next(field(&f, "next"));
    let app_name = app_of_next(&state, &next).await;
    let retry = |status: StatusCode, error: &str| {
        let page = LoginPage {
            csrf: crate::console::random_token(),
            next: next.clone(),
            username: username.clone(),
            app_name: app_name.clone(),
            error: Some(error.to_owned()),
            notice: None,
        };
        login_response(&state, &headers, status, page)
    };
    let bound = cookie(&headers, USER_FORM_COOKIE);
    if !matches!((&bound, field(&f, "csrf")), (Some(c), Some(v)) if crate::console::same(c, v)) {
        return retry(StatusCode::FORBIDDEN, "The sign-in form expired. Please try again.");
    }
    if state.idp.limiter.locked_out(&username, &ip) {
        return retry(StatusCode::TOO_MANY_REQUESTS, "Too many failed sign-ins. Wait a few minutes, then try again.");
    }
    const WRONG: &str = "Wrong username or password.";
    let store = state.service.store();
    let found = if username.is_empty() || username.len() > 256 {
        None
    } else {
        match store.user_by_username(&username).await {
            Ok(found) => found,
            Err(e) => return error_page(e.into()),
        }
    };
    let outcome = match &found {
        Some(user) => state.idp.passwords.check(user, &password).await,
        None => {
            // As slow as a real check, so that it does not tell which usernames exist.
            let owned = password.clone();
            let _ = tokio::task::spawn_blocking(move || crate::tokens::verify(&owned, &decoy_hash())).await;
            Ok(PasswordOutcome::Invalid)
        }
    };
    let user = match (outcome, found) {
        (Err(e), _) => return error_page(e),
        (Ok(PasswordOutcome::Valid), Some(user)) => user,
        (Ok(PasswordOutcome::Unavailable(why)), Some(_)) => return retry(StatusCode::UNAUTHORIZED, &why),
        _ => {
            state.idp.limiter.record_failure(&username, &ip);
            return retry(StatusCode::UNAUTHORIZED, WRONG);
        }
    };
    state.idp.limiter.record_success(&username);
    match user.status {
        UserStatus::Active => {}
        UserStatus::Suspended => return suspended_page(),
        UserStatus::Deleted => return retry(StatusCode::UNAUTHORIZED, WRONG),
    }
    let idle = chrono::Duration::from_std(state.console.config.idle_timeout).unwrap_or(chrono::Duration::minutes(30));
    if let Err(e) = store.delete_idle_user_sessions(directory::now() - idle).await {
        tracing::warn!(error = %e.chain(), "cannot remove idle IdP sessions");
    }
    let id = crate::console::random_token();
    let now = directory::now();
    let record = UserSessionRecord {
        id_hash: sha256_hex(&id),
        user_id: user.id,
        csrf_token: crate::console::random_token(),
        created_at: now,
        last_seen_at: now,
    };
    if let Err(e) = store.create_user_session(&record, &user.username).await {
        return error_page(e.into());
    }
    let secure = secure(&state, &headers);
    let mut resp = see_other(&next);
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(USER_SESSION_COOKIE, &id, secure, None));
    h.append(header::SET_COOKIE, set_cookie(USER_FORM_COOKIE, "", secure, Some(0)));
    resp
}

pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let who = match current_user(&state, &headers).await {
        Ok(w) => w,
        Err(e) => return error_page(e),
    };
    if let Some(me) = who {
        if !field(&f, "csrf").is_some_and(|t| crate::console::same(t, &me.session.csrf_token)) {
            return message(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "This form has expired. Reload the page and try again.",
            );
        }
        if let Err(e) = state.service.store().delete_user_session(&me.session.id_hash).await {
            return error_page(e.into());
        }
    }
    let mut resp = see_other("/login?signed_out=1");
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(USER_SESSION_COOKIE, "", secure(&state, &headers), Some(0)));
    resp
}
