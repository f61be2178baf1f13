//! Invitation links (`/invite/{token}`): an invited end user sets their password.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::pages::{error_page, message, see_other};
use super::session::{cookie, field, form, secure, set_cookie};
use super::USER_FORM_COOKIE;
use crate::{AppState, Error};

#[derive(Template)]
#[template(path = "idp_invite.html")]
struct InvitePage {
    csrf: String,
    token: String,
    username: String,
    error: Option<String>,
}

fn invite_response(state: &AppState, headers: &HeaderMap, status: StatusCode, page: InvitePage) -> Response {
    let body = match page.render() {
        Ok(b) => b,
        Err(e) => return error_page(Error::internal(e)),
    };
    let cookie = set_cookie(USER_FORM_COOKIE, &page.csrf, secure(state, headers), None);
    (status, [(header::SET_COOKIE, cookie)], Html(body)).into_response()
}

fn bad_invitation(e: Error) -> Response {
    match e {
        Error::NotFound(_) => {
            message(StatusCode::NOT_FOUND, "Invitation not found", "This invitation link is not valid.")
        }
        Error::InvalidState(why) => message(StatusCode::GONE, "Invitation not usable", &why),
        other => error_page(other),
    }
}

fn token_ok(token: &str) -> bool {
    !token.is_empty() && token.len() <= 128 && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) async fn invite_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    if !token_ok(&token) {
        return bad_invitation(Error::NotFound("invitation"));
    }
    match state.service.invitation_user(&token).await {
        Ok(user) => {
            let page = InvitePage { csrf: crate::console::random_token(), token, username: user.username, error: None };
            invite_response(&state, &headers, StatusCode::OK, page)
        }
        Err(e) => bad_invitation(e),
    }
}

pub(super) async fn invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    if !token_ok(&token) {
        return bad_invitation(Error::NotFound("invitation"));
    }
    let f = form(&body);
    let user = match state.service.invitation_user(&token).await {
        Ok(u) => u,
        Err(e) => return bad_invitation(e),
    };
    let retry = |status: StatusCode, error: String| {
        let page = InvitePage {
            csrf: crate::console::random_token(),
            token: token.clone(),
            username: user.username.clone(),
            error: Some(error),
        };
        invite_response(&state, &headers, status, page)
    };
    let bound = cookie(&headers, USER_FORM_COOKIE);
    if !matches!((&bound, field(&f, "csrf")), (Some(c), Some(v)) if crate::console::same(c, v)) {
        return retry(StatusCode::FORBIDDEN, "The form expired. Please try again.".into());
    }
    match state.service.redeem_invitation(&token, field(&f, "password").unwrap_or("")).await {
        Ok(_) => {
            let mut resp = see_other("/login?welcome=1");
            resp.headers_mut()
                .append(header::SET_COOKIE, set_cookie(USER_FORM_COOKIE, "", secure(&state, &headers), Some(0)));
            resp
        }
        Err(Error::Invalid(v)) => {
            retry(StatusCode::UNPROCESSABLE_ENTITY, v.0.iter().map(|e| format!("Password {}.", e.reason)).collect())
        }
        Err(e) => bad_invitation(e),
    }
}
