//! Cookies, forms and the signed-in end user of a request (the IdP session), and where a
//! request that needs one is sent.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use directory::{User, UserStatus};
use store::UserSessionRecord;

use super::pages::see_other;
use super::USER_SESSION_COOKIE;
use crate::service::saml::sha256_hex;
use crate::{AppState, Error};

pub(super) fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

pub(super) fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    crate::console::cookie(headers, name)
}

pub(super) fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    crate::console::over_tls(headers, &state.console.config)
}

/// `Set-Cookie`: HttpOnly, SameSite=Lax (the SP sends the browser here by a top-level
/// navigation, which must carry the session), path `/`, Secure over TLS.
pub(super) fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

/// The signed-in end user of a request.
pub(super) struct EndUser {
    pub(super) user: User,
    pub(super) session: UserSessionRecord,
}

pub(super) async fn current_user(state: &AppState, headers: &HeaderMap) -> Result<Option<EndUser>, Error> {
    let Some(id) = cookie(headers, USER_SESSION_COOKIE).filter(|v| !v.is_empty() && v.len() < 128) else {
        return Ok(None);
    };
    let id_hash = sha256_hex(&id);
    let store = state.service.store();
    let Some(session) = store.get_user_session(&id_hash).await? else { return Ok(None) };
    let now = directory::now();
    let idle_timeout = state.console.config.idle_timeout;
    let idle = (now - session.last_seen_at).to_std().unwrap_or_default();
    if idle > idle_timeout {
        store.delete_user_session(&id_hash).await?;
        return Ok(None);
    }
    if idle > (idle_timeout / 4).min(Duration::from_secs(30)) {
        store.touch_user_session(&id_hash, now).await?;
    }
    let Some(user) = store.get_user(session.user_id).await? else { return Ok(None) };
    if user.status == UserStatus::Deleted {
        return Ok(None);
    }
    Ok(Some(EndUser { user, session }))
}

/// Only local paths are followed after sign-in (no open redirect).
pub(super) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if crate::console::is_local_path(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

pub(super) fn to_login(next: &str) -> Response {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("next", next).finish();
    see_other(&format!("/login?{query}"))
}
