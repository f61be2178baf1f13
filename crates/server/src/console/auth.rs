//! Sign-in safety: admin sessions (random ids stored hashed, idle timeout), the cookie
//! flags, CSRF tokens on every unsafe request, and the login rate limit.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use directory::Actor;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::view::{self, FormData};
use crate::AppState;

/// The cookie that holds the session id.
pub const SESSION_COOKIE: &str = "prv_session";
/// The cookie that binds the login form to the browser that loaded it (login CSRF).
pub const LOGIN_COOKIE: &str = "prv_login";
/// A one-time message shown on the next page.
pub const FLASH_COOKIE: &str = "prv_flash";
/// Header that fetch() requests send the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The path every console cookie is limited to.
pub const COOKIE_PATH: &str = "/console";

/// How the console protects sign-in.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// A session unused for this long ends.
    pub idle_timeout: Duration,
    /// Failed sign-ins allowed per username and per client address within `login_window`.
    pub max_login_failures: usize,
    pub login_window: Duration,
    /// Mark cookies `Secure` even when the request does not say it came over TLS.
    pub secure_cookies: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            max_login_failures: 5,
            login_window: Duration::from_secs(5 * 60),
            secure_cookies: false,
        }
    }
}

/// What the console keeps in memory: its settings and the recent failed sign-ins.
pub struct ConsoleState {
    pub config: ConsoleConfig,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl ConsoleState {
    pub fn new(config: ConsoleConfig) -> Self {
        Self { config, failures: Mutex::new(HashMap::new()) }
    }

    fn recent(&self, map: &mut HashMap<String, VecDeque<Instant>>, key: &str) -> usize {
        let window = self.config.login_window;
        match map.get_mut(key) {
            Some(q) => {
                while q.front().is_some_and(|t| t.elapsed() > window) {
                    q.pop_front();
                }
                q.len()
            }
            None => 0,
        }
    }

    /// Whether sign-in is refused for now for this username or client address.
    pub fn locked_out(&self, username: &str, ip: &str) -> bool {
        let Ok(mut map) = self.failures.lock() else { return true };
        let max = self.config.max_login_failures;
        self.recent(&mut map, &user_key(username)) >= max || self.recent(&mut map, &ip_key(ip)) >= max
    }

    pub fn record_failure(&self, username: &str, ip: &str) {
        if let Ok(mut map) = self.failures.lock() {
            if map.len() > 100_000 {
                let window = self.config.login_window;
                map.retain(|_, q| q.back().is_some_and(|t| t.elapsed() <= window));
            }
            let now = Instant::now();
            map.entry(user_key(username)).or_default().push_back(now);
            map.entry(ip_key(ip)).or_default().push_back(now);
        }
    }

    pub fn record_success(&self, username: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&user_key(username));
        }
    }
}

fn user_key(username: &str) -> String {
    format!("user:{}", username.trim().to_lowercase())
}

fn ip_key(ip: &str) -> String {
    format!("ip:{ip}")
}

/// The signed-in admin of a request.
#[derive(Debug, Clone)]
pub struct Session {
    pub admin: String,
    pub csrf: String,
    pub id_hash: String,
}

impl Session {
    /// Whom the audit log names for this admin's actions.
    pub fn actor(&self) -> Actor {
        Actor::admin(self.admin.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or_else(|| StatusCode::UNAUTHORIZED.into_response())
    }
}

/// The client's address (for the login rate limit), when the server knows it.
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |ConnectInfo(a)| a.ip().to_string());
        Ok(ClientIp(ip))
    }
}

/// A fresh random value (256 bits), URL-safe.
pub fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// How a session id is stored: hex SHA-256.
pub fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Compares two secrets in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name`, if the request has it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether `next` (where to go after signing in) is a path on this site: it starts with one
/// `/` (not `//` or `/\\`, which browsers read as another host), has no backslash, and no
/// control or whitespace character, as given or percent-decoded (`/%09/evil.example.com/`
/// is refused: browsers drop the tab and go to `//evil.example.com/`).
pub fn is_local_path(next: &str) -> bool {
    fn ok(p: &str) -> bool {
        p.starts_with('/')
            && !p.starts_with("//")
            && !p.contains('\\')
            && !p.chars().any(|c| c.is_control() || c.is_whitespace())
    }
    next.len() <= 16 * 1024 && ok(next) && ok(&percent_decode(next))
}

/// `%XX` sequences decoded once; invalid UTF-8 becomes a NUL (which is then refused).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| "\0".to_owned())
}

/// Whether the request reached us over TLS (directly, or through a proxy that says so).
pub fn over_tls(headers: &HeaderMap, config: &ConsoleConfig) -> bool {
    config.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https")))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, limited to the console, Secure over TLS.
/// `max_age` 0 removes the cookie; `None` makes a cookie that ends with the browser session.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

/// Where a request without a valid session goes: the login page (or 401 for scripts).
fn unauthenticated(req: &Request, expired: bool, secure: bool) -> Response {
    let clear = set_cookie(SESSION_COOKIE, "", secure, Some(0));
    if req.headers().get("x-requested-with").is_some() {
        return (StatusCode::UNAUTHORIZED, [(header::SET_COOKIE, clear)]).into_response();
    }
    let mut location = String::from("/console/login");
    let mut params = form_urlencoded::Serializer::new(String::new());
    if req.method() == Method::GET {
        // The console is nested under /console, which the path seen here lacks.
        let path = req.uri().path_and_query().map_or("", |p| p.as_str());
        params.append_pair("next", &format!("{COOKIE_PATH}{path}"));
    }
    if expired {
        params.append_pair("expired", "1");
    }
    let query = params.finish();
    if !query.is_empty() {
        location.push('?');
        location.push_str(&query);
    }
    let mut resp = view::see_other(&location);
    resp.headers_mut().append(header::SET_COOKIE, clear);
    resp
}

/// Lets a request through only with a live session; checks the CSRF token of every unsafe
/// request; puts the [`Session`] into the request's extensions.
pub async fn require_session(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let config = &state.console.config;
    let secure = over_tls(req.headers(), config);
    let Some(id) = cookie(req.headers(), SESSION_COOKIE).filter(|v| !v.is_empty() && v.len() < 128) else {
        return unauthenticated(&req, false, secure);
    };
    let id_hash = hash_id(&id);
    let store = state.service.store();
    let record = match store.get_session(&id_hash).await {
        Ok(Some(r)) => r,
        Ok(None) => return unauthenticated(&req, false, secure),
        Err(e) => return super::ConsoleError::from(crate::Error::from(e)).into_response(),
    };
    let now = directory::now();
    let idle = (now - record.last_seen_at).to_std().unwrap_or_default();
    if idle > config.idle_timeout {
        if let Err(e) = store.delete_session(&id_hash, false).await {
            tracing::warn!(error = %e.chain(), "cannot remove an expired console session");
        }
        return unauthenticated(&req, true, secure);
    }
    // Record activity, but not on every request.
    if idle > (config.idle_timeout / 4).min(Duration::from_secs(30)) {
        if let Err(e) = store.touch_session(&id_hash, now).await {
            tracing::warn!(error = %e.chain(), "cannot record console session activity");
        }
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        let from_header = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let token = match from_header {
            Some(t) => Some(t),
            None => {
                let (parts, body) = req.into_parts();
                let bytes: Bytes = match to_bytes(body, crate::extract::MAX_BODY).await {
                    Ok(b) => b,
                    Err(_) => return view::message_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."),
                };
                let token = FormData::parse(&bytes).get("csrf").map(str::to_owned);
                req = Request::from_parts(parts, Body::from(bytes));
                token
            }
        };
        if !token.is_some_and(|t| same(&t, &record.csrf_token)) {
            return view::message_page(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from the console. Reload the page and try again.",
            );
        }
    }
    req.extensions_mut().insert(Session { admin: record.username, csrf: record.csrf_token, id_hash });
    next.run(req).await
}

/// Security headers on every console answer.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> ConsoleState {
        ConsoleState::new(ConsoleConfig { max_login_failures: 3, ..Default::default() })
    }

    #[test]
    fn failures_lock_out_the_username_and_the_address_separately() {
        let s = limiter();
        for _ in 0..3 {
            assert!(!s.locked_out("Alice", "10.0.0.1"));
            s.record_failure("alice", "10.0.0.1");
        }
        assert!(s.locked_out("ALICE", "10.0.0.2"), "per username, whatever the address");
        assert!(s.locked_out("bob", "10.0.0.1"), "per address, whatever the username");
        assert!(!s.locked_out("bob", "10.0.0.2"));
        s.record_success("alice");
        assert!(!s.locked_out("alice", "10.0.0.2"));
    }

    #[test]
    fn failures_expire_after_the_window() {
        let s = ConsoleState::new(ConsoleConfig {
            max_login_failures: 1,
            login_window: Duration::from_millis(0),
            ..Default::default()
        });
        s.record_failure("alice", "ip");
        std::thread::sleep(Duration::from_millis(2));
        assert!(!s.locked_out("alice", "ip"));
    }

    #[test]
    fn next_is_a_path_on_this_site() {
        for ok in ["/", "/console/users?q=a", "/saml/x/sso?SAMLRequest=ab%2Bc%3D&RelayState=r"] {
            assert!(is_local_path(ok), "{ok}");
        }
        for bad in [
            "https://evil.example.com/",
            "//evil.example.com",
            "/\\evil.example.com",
            "/%09/evil.example.com/",
            "/\t/evil.example.com/",
            "/%2F/evil.example.com",
            "/%5Cevil.example.com",
            "/a b",
            "/a%20b",
            "/%0d%0aSet-Cookie:x",
            "/%FF",
            "evil",
        ] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }

    #[test]
    fn cookies_and_secrets() {
        let c = set_cookie(SESSION_COOKIE, "abc", true, None);
        assert_eq!(c, "prv_session=abc; Path=/console; HttpOnly; SameSite=Strict; Secure");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; prv_session=xyz; b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_ne!(random_token(), random_token());
        assert_eq!(hash_id("x").len(), 64);
    }
}
