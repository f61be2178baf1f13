//! The directory as a SAML 2.0 identity provider: per-app metadata, SP-initiated sign-in
//! (HTTP-Redirect AuthnRequests), IdP-initiated sign-in from the end users' portal at `/`,
//! the end users' login, logout and invitation pages, and the Response posted to the app's
//! ACS URL by an auto-submitting form (HTTP-POST binding). Protocol code is in the `saml`
//! crate; business operations in [`service`]; the admin API in [`api`].

pub mod api;
pub mod assertion;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use directory::{App, User, UserStatus};
use serde::Deserialize;
use store::{SamlSettingsRecord, Store, UserSessionRecord};
use uuid::Uuid;

pub use service::{DirectoryPasswords, LiveKey, PasswordCheck, PasswordOutcome};

use crate::console::{ConsoleConfig, ConsoleState};
use crate::{AppState, Error};

/// The cookie that holds an end user's IdP session id.
pub const USER_SESSION_COOKIE: &str = "prv_idp_session";
/// The cookie that binds the login and invitation forms to the browser that loaded them.
pub const USER_FORM_COOKIE: &str = "prv_idp_form";

/// What the IdP keeps in memory: its settings, the password check, and recent failed sign-ins.
pub struct IdpState {
    /// The URL the IdP is reached at (e.g. `https://id.example.com`, `--public-url`): its
    /// entity IDs, endpoints and invitation links are made from it. Set it with
    /// [`crate::AppState::set_public_url`].
    pub public_url: Option<String>,
    /// Without a public URL, entity IDs and endpoints are made from the address the service
    /// listens on (`http://127.0.0.1:8080`), never from a request's `Host` header, which the
    /// client chooses. Set once the listener is bound.
    pub listen_url: std::sync::OnceLock<String>,
    pub passwords: Arc<dyn PasswordCheck>,
    limiter: ConsoleState,
}

impl IdpState {
    /// `sources` lets people imported from an LDAP source sign in with their password there.
    pub fn new(store: Arc<dyn Store>, sources: Option<Arc<engine::SourceSyncer>>) -> Self {
        Self {
            public_url: None,
            listen_url: std::sync::OnceLock::new(),
            passwords: Arc::new(DirectoryPasswords { store, sources }),
            limiter: ConsoleState::new(ConsoleConfig::default()),
        }
    }

    /// Sets how sign-in is rate-limited and cookies flagged (the console's settings).
    pub fn with_config(mut self, config: ConsoleConfig) -> Self {
        self.limiter = ConsoleState::new(config);
        self
    }
}

/// The IdP's routes (outside `/api/v1` and `/console`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(portal))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/invite/{token}", get(invite_page).post(invite))
        .route("/saml/{app}/metadata", get(metadata))
        .route("/saml/{app}/sso", get(sso))
        .route("/saml/{app}/idp-initiated", post(idp_initiated))
        .layer(middleware::from_fn(security_headers))
}

// ---- pages ----

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

fn error_page(e: Error) -> Response {
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

fn see_other(location: &str) -> Response {
    let value = HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response()
}

async fn security_headers(req: Request, next: Next) -> Response {
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

// ---- cookies, forms, sessions ----

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    crate::console::cookie(headers, name)
}

fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    crate::console::over_tls(headers, &state.console.config)
}

/// `Set-Cookie`: HttpOnly, SameSite=Lax (the SP sends the browser here by a top-level
/// navigation, which must carry the session), path `/`, Secure over TLS.
fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
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
struct EndUser {
    user: User,
    session: UserSessionRecord,
}

async fn current_user(state: &AppState, headers: &HeaderMap) -> Result<Option<EndUser>, Error> {
    let Some(id) = cookie(headers, USER_SESSION_COOKIE).filter(|v| !v.is_empty() && v.len() < 128) else {
        return Ok(None);
    };
    let id_hash = service::sha256_hex(&id);
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

/// The IdP's base URL, without a trailing slash: the public URL, else the listen address
/// (never the request's `Host`, which would let a client choose the entity ID and endpoints).
fn base_url(state: &AppState) -> String {
    if let Some(u) = &state.idp.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    match state.idp.listen_url.get() {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => "http://127.0.0.1:8080".to_owned(),
    }
}

/// The IdP's entity ID for an app: its metadata URL.
fn entity_id(base: &str, app: Uuid) -> String {
    format!("{base}/saml/{app}/metadata")
}

/// Only local paths are followed after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if crate::console::is_local_path(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn to_login(next: &str) -> Response {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("next", next).finish();
    see_other(&format!("/login?{query}"))
}

// ---- login, logout, invitations ----

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
struct LoginParams {
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

async fn login_page(State(state): State<AppState>, headers: HeaderMap, Query(p): Query<LoginParams>) -> Response {
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

async fn login(
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
            let _ = tokio::task::spawn_blocking(move || crate::tokens::verify(&owned, &service::decoy_hash())).await;
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
        id_hash: service::sha256_hex(&id),
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

fn suspended_page() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Account suspended",
        "Your account is suspended, so you cannot sign in to any app. If you think this is a mistake, contact \
         your administrator.",
    )
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
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

async fn invite_page(State(state): State<AppState>, headers: HeaderMap, Path(token): Path<String>) -> Response {
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

async fn invite(State(state): State<AppState>, headers: HeaderMap, Path(token): Path<String>, body: Bytes) -> Response {
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

// ---- portal ----

struct PortalApp {
    id: Uuid,
    name: String,
}

#[derive(Template)]
#[template(path = "idp_portal.html")]
struct PortalPage {
    username: String,
    csrf: String,
    apps: Vec<PortalApp>,
}

async fn portal(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let me = match current_user(&state, &headers).await {
        Ok(Some(me)) => me,
        Ok(None) => return to_login("/"),
        Err(e) => return error_page(e),
    };
    if me.user.status == UserStatus::Suspended {
        return suspended_page();
    }
    let apps = match state.service.saml_apps_of_user(me.user.id).await {
        Ok(a) => a,
        Err(e) => return error_page(e),
    };
    let page = PortalPage {
        username: me.user.username,
        csrf: me.session.csrf_token,
        apps: apps.into_iter().map(|(a, _)| PortalApp { id: a.id, name: a.name }).collect(),
    };
    match page.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => error_page(Error::internal(e)),
    }
}

// ---- SAML endpoints ----

async fn app_and_settings(state: &AppState, app: &str) -> Result<(App, SamlSettingsRecord), Response> {
    let not_found = || message(StatusCode::NOT_FOUND, "Unknown app", "There is no app with SAML sign-in here.");
    let Ok(id) = Uuid::parse_str(app) else { return Err(not_found()) };
    let app = match state.service.store().get_app(id).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(not_found()),
        Err(e) => return Err(error_page(e.into())),
    };
    match state.service.store().get_saml_settings(id).await {
        Ok(Some(s)) => Ok((app, s)),
        Ok(None) => Err(message(
            StatusCode::NOT_FOUND,
            "SAML sign-in is not set up",
            &format!("{} has no SAML sign-in configured.", app.name),
        )),
        Err(e) => Err(error_page(e.into())),
    }
}

async fn metadata(State(state): State<AppState>, Path(app): Path<String>) -> Response {
    let (app, settings) = match app_and_settings(&state, &app).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let keys = match state.service.idp_keys().await {
        Ok(k) => k,
        Err(e) => return error_page(e),
    };
    let base = base_url(&state);
    let certs: Vec<String> = keys.iter().map(|k| k.key.cert_base64()).collect();
    let xml = saml::metadata::idp_metadata(
        &entity_id(&base, app.id),
        &certs,
        &[settings.settings.name_id_format.as_str()],
        &format!("{base}/saml/{}/sso", app.id),
    );
    ([(header::CONTENT_TYPE, "application/samlmetadata+xml")], xml).into_response()
}

fn bad_request(text: &str) -> Response {
    message(StatusCode::BAD_REQUEST, "The sign-in request is invalid", text)
}

async fn sso(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (app, settings) = match app_and_settings(&state, &app_id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = &settings.settings;
    let raw = raw.unwrap_or_default();
    if raw.len() > saml::request::MAX_PARAM + 8 * 1024 {
        return bad_request(&saml::RequestError::TooLarge.to_string());
    }
    // The values used are taken from the same raw parameters the signature is checked over.
    let query = match saml::request::parse_redirect_query(&raw) {
        Ok(q) => q,
        Err(e) => return bad_request(&e.to_string()),
    };
    let relay_state = query.relay_state.clone();
    if relay_state.as_ref().is_some_and(|r| r.len() > 1024) {
        return bad_request("The RelayState is longer than 1024 bytes.");
    }
    if let Some(cert) = &s.sp_certificate {
        let (Some(sig_alg), Some(sig), Some(signed)) = (&query.sig_alg, &query.signature, &query.signed_part) else {
            return bad_request(&format!(
                "{} requires signed requests, and this one is not signed (no SigAlg and Signature).",
                app.name
            ));
        };
        use base64::Engine;
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
            return bad_request("The request's Signature is not valid base64.");
        };
        let checked = saml::keys::public_key_of_cert(cert)
            .map_err(|e| e.to_string())
            .and_then(|key| saml::sign::verify_redirect(signed, sig_alg, &sig, &key));
        if let Err(why) = checked {
            return bad_request(&format!("The request's signature was refused: {why}."));
        }
    }
    let xml = match saml::request::decode_redirect(&query.saml_request) {
        Ok(x) => x,
        Err(e) => return bad_request(&e.to_string()),
    };
    let req = match saml::request::parse(&xml) {
        Ok(r) => r,
        Err(e) => return bad_request(&e.to_string()),
    };
    if let Err(e) = saml::request::check_fresh(&req, directory::now()) {
        return bad_request(&e.to_string());
    }
    if req.issuer != s.sp_entity_id {
        return bad_request(&format!(
            "The request comes from {}, which is not {}'s service provider entity ID.",
            req.issuer, app.name
        ));
    }
    if let Some(binding) = &req.protocol_binding {
        if binding != saml::ns::BINDING_POST {
            return bad_request(&format!("Only the HTTP-POST binding is supported for the response, not {binding}."));
        }
    }
    let acs = match (&req.acs_url, req.acs_index) {
        (Some(url), _) => match s.acs_urls.iter().find(|u| *u == url) {
            Some(u) => u.clone(),
            None => {
                return bad_request(&format!(
                    "The AssertionConsumerServiceURL {url} is not one of {}'s ACS URLs; the response is not sent.",
                    app.name
                ))
            }
        },
        (None, Some(i)) => match s.acs_urls.get(i as usize) {
            Some(u) => u.clone(),
            None => return bad_request(&format!("{} has no ACS URL with index {i}.", app.name)),
        },
        (None, None) => s.acs_urls.first().cloned().unwrap_or_default(),
    };
    let me = match current_user(&state, &headers).await {
        Ok(Some(me)) => me,
        Ok(None) if req.is_passive => {
            return message(
                StatusCode::FORBIDDEN,
                "Sign-in needed",
                "You are not signed in, and the app asked not to be asked to.",
            )
        }
        Ok(None) => return to_login(&format!("/saml/{}/sso?{raw}", app.id)),
        Err(e) => return error_page(e),
    };
    // Each request is answered once: a replayed one (same ID, within its freshness window) is refused.
    let expires =
        req.issue_instant + chrono::Duration::seconds(saml::request::MAX_AGE_SECONDS + saml::request::MAX_SKEW_SECONDS);
    match state.service.store().remember_saml_request(app.id, &req.id, expires, directory::now()).await {
        Ok(true) => {}
        Ok(false) => {
            return bad_request(&format!(
                "This sign-in request ({}) was already answered; go back to {} and sign in again.",
                req.id, app.name
            ))
        }
        Err(e) => return error_page(e.into()),
    }
    respond(&state, &app, &settings, me.user, acs, Some(req.id), relay_state).await
}

async fn idp_initiated(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let me = match current_user(&state, &headers).await {
        Ok(Some(me)) => me,
        Ok(None) => return to_login("/"),
        Err(e) => return error_page(e),
    };
    if !field(&f, "csrf").is_some_and(|t| crate::console::same(t, &me.session.csrf_token)) {
        return message(StatusCode::FORBIDDEN, "Forbidden", "This form has expired. Reload the page and try again.");
    }
    let (app, settings) = match app_and_settings(&state, &app_id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let relay = field(&f, "relay_state").map(str::to_owned).filter(|r| !r.is_empty() && r.len() <= 1024);
    let acs = settings.settings.acs_urls.first().cloned().unwrap_or_default();
    respond(&state, &app, &settings, me.user, acs, None, relay).await
}

/// Checks that `user` may sign in to `app` and answers with the auto-submitting form that
/// posts the signed Response to `acs`.
#[allow(clippy::too_many_arguments)]
async fn respond(
    state: &AppState,
    app: &App,
    settings: &SamlSettingsRecord,
    user: User,
    acs: String,
    in_response_to: Option<String>,
    relay_state: Option<String>,
) -> Response {
    let s = &settings.settings;
    if user.status == UserStatus::Suspended {
        return suspended_page();
    }
    let (granted, roles) = match state.service.grant_of(user.id, app.id).await {
        Ok(g) => g,
        Err(e) => return error_page(e),
    };
    let no_access = |why: &str| message(StatusCode::FORBIDDEN, "No access to this app", why);
    if !granted {
        return no_access(&format!(
            "You ({}) have no role that grants {}. Ask your administrator for access.",
            user.username, app.name
        ));
    }
    let (name_id, attributes, doc) = match assertion::for_user(&user, &roles, app, s) {
        Ok(x) => x,
        Err(assertion::Refusal::OutOfScope) => {
            return no_access(&format!("{}'s rules exclude your account, so you cannot sign in to it.", app.name))
        }
        Err(assertion::Refusal::NoNameId(attr)) => {
            return no_access(&format!(
                "Your account has no {attr}, which {} uses to identify you. Ask your administrator to fill it in.",
                app.name
            ))
        }
    };
    // One person, one NameID: an address another person has too would sign one into the
    // other's account at an app keyed on the NameID.
    if s.name_id_attribute == "email" {
        match state.service.nameid_shared(app, &user, &name_id).await {
            Ok(None) => {}
            Ok(Some(others)) => {
                return message(
                    StatusCode::CONFLICT,
                    "Sign-in refused: your e-mail address is not yours alone",
                    &format!(
                        "{} identifies people by their e-mail address ({name_id}), and {others} other account(s) in \
                         the directory have the same address, so {} could not tell you apart. No sign-in was sent. \
                         Ask your administrator to give each person their own address.",
                        app.name, app.name
                    ),
                )
            }
            Err(e) => return error_page(e),
        }
    }
    let keys = match state.service.idp_keys().await {
        Ok(k) => k,
        Err(e) => return error_page(e),
    };
    let Some(active) = keys.iter().find(|k| k.state == store::KeyState::Active) else {
        return error_page(Error::Internal("no active SAML key".into()));
    };
    let now = directory::now();
    let input = saml::ResponseInput {
        issuer: entity_id(&base_url(state), app.id),
        destination: acs.clone(),
        in_response_to,
        audience: s.sp_entity_id.clone(),
        name_id,
        name_id_format: s.name_id_format.clone(),
        attributes,
        now,
        lifetime: chrono::Duration::seconds(i64::from(s.assertion_lifetime_seconds)),
        authn_instant: now,
        session_index: saml::new_id(),
        sign_response: s.sign_response,
        sign_assertion: s.sign_assertion,
    };
    let xml = match saml::response::build(&input, &active.key) {
        Ok(x) => x,
        Err(e) => return error_page(Error::internal(e)),
    };
    if let Err(e) = state.service.record_sign_in(app.id, &user, s.jit_only, &doc).await {
        return error_page(e);
    }
    let nonce = crate::console::random_token();
    let page = saml::response::post_form(&acs, &xml, relay_state.as_deref(), &nonce);
    let origin = url::Url::parse(&acs).map(|u| u.origin().ascii_serialization()).unwrap_or_else(|_| "'none'".into());
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; form-action {origin}; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut resp = Html(page).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}
