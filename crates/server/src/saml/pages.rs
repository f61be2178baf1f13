//! What every IdP page shares: the page that says what went wrong, redirects, and the
//! security headers of every answer.

use askama::Template;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use crate::Error;

#[derive(Template)]
#[template(path = "idp_message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
}

/// A page that says what went wrong (never JSON: people read these).
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    match (MessagePage { title, message: text }).render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(_) => (status, text.to_owned()).into_response(),
    }
}

pub(super) fn error_page(e: Error) -> Response {
    let problem = e.problem();
    if problem.status >= 500 {
        tracing::error!(error = %e.detail(), "SAML IdP error");
    }
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let text = match &e {
        Error::NotFound(what) => format!("This {what} does not exist."),
        _ => problem.detail,
    };
    message(status, status.canonical_reason().unwrap_or("Error"), &text)
}

pub(super) fn see_other(location: &str) -> Response {
    let value = HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response()
}

pub(super) async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
        );
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

pub(super) fn suspended_page() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Account suspended",
        "Your account is suspended, so you cannot sign in to any app. If you think this is a mistake, contact \
         your administrator.",
    )
}
