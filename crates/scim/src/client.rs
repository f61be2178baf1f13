//! The SCIM HTTP client: authentication, retries, concurrency limiting.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, IF_MATCH, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::error::{is_retryable_status, ScimError};
use crate::filter;
use crate::pacer::Pacer;
use crate::types::{Capabilities, ListResponse, PatchOp, ScimErrorBody};

/// Media type of SCIM requests and responses (RFC 7644 section 3.1).
pub const SCIM_MEDIA_TYPE: &str = "application/scim+json";
const ACCEPT_VALUE: &str = "application/scim+json, application/json;q=0.9";

/// Schema of a `POST /.search` body (RFC 7644 section 3.4.3).
pub const SEARCH_REQUEST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

/// Endpoint of the User resource type.
pub const USERS: &str = "Users";
/// Endpoint of the Group resource type.
pub const GROUPS: &str = "Groups";

/// How the client authenticates to the SCIM target. `Debug` redacts secrets.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    None,
    Bearer {
        token: String,
    },
    Basic {
        username: String,
        password: String,
    },
    /// OAuth 2.0 client credentials grant (RFC 6749 section 4.4). The client
    /// authenticates to the token endpoint with HTTP Basic (section 2.3.1).
    OAuth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

const REDACTED: &str = "<redacted>";

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer { .. } => f.debug_struct("Bearer").field("token", &REDACTED).finish(),
            Auth::Basic { username, .. } => {
                f.debug_struct("Basic").field("username", username).field("password", &REDACTED).finish()
            }
            Auth::OAuth2ClientCredentials { token_url, client_id, scope, .. } => f
                .debug_struct("OAuth2ClientCredentials")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .field("client_secret", &REDACTED)
                .field("scope", scope)
                .finish(),
        }
    }
}

impl Auth {
    /// A short name of the scheme, safe to log.
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Bearer { .. } => "bearer",
            Auth::Basic { .. } => "basic",
            Auth::OAuth2ClientCredentials { .. } => "oauth2_client_credentials",
        }
    }
}

/// Configuration of one app's SCIM client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL of the SCIM service, e.g. `https://app.example.com/scim/v2`.
    pub base_url: String,
    pub auth: Auth,
    /// Timeout of one HTTP attempt (connect + request + response body).
    pub timeout: Duration,
    /// Maximum number of requests in flight at once for this app.
    pub max_concurrency: usize,
    /// Retries after the first attempt, for retryable failures.
    pub max_retries: u32,
    pub user_agent: String,
    /// Base of the exponential backoff (full jitter): the n-th retry waits a
    /// random time in `[0, min(backoff_max, backoff_base * 2^n)]`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Upper bound of a server-requested `Retry-After` wait.
    pub retry_after_max: Duration,
    /// An OAuth2 token is refreshed this long before it expires.
    pub token_expiry_margin: Duration,
    /// Which addresses the client may connect to (checked after DNS, on the address
    /// connected to; redirects are never followed and no proxy is used).
    pub targets: outbound::TargetPolicy,
    /// Asked before every request and told every answer (`None`: requests go as soon as a
    /// concurrency permit allows). With one, a `429` is not waited out here: the pacer holds
    /// the retry until the app's `Retry-After`.
    pub pacer: Option<Arc<dyn Pacer>>,
}

impl ClientConfig {
    /// A configuration with the default limits.
    pub fn new(base_url: impl Into<String>, auth: Auth) -> Self {
        Self {
            base_url: base_url.into(),
            auth,
            timeout: Duration::from_secs(30),
            max_concurrency: 4,
            max_retries: 3,
            user_agent: concat!("provisioner-scim/", env!("CARGO_PKG_VERSION")).to_string(),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(120),
            token_expiry_margin: Duration::from_secs(60),
            targets: outbound::TargetPolicy::default(),
            pacer: None,
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    access_token: String,
    expires_at: Option<Instant>,
}

/// A SCIM 2.0 client for one app. Cheap to clone: clones share the HTTP
/// connection pool, the concurrency limit and the OAuth2 token cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    config: ClientConfig,
    permits: Semaphore,
    token: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .field("auth", &self.inner.config.auth)
            .finish_non_exhaustive()
    }
}

/// A successful HTTP answer.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    fn json_opt(&self) -> Result<Option<Value>, ScimError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&self.body)
            .map(Some)
            .map_err(|e| ScimError::InvalidResponse(format!("body is not JSON: {e}")))
    }

    fn resource(&self) -> Result<Value, ScimError> {
        match self.json_opt()? {
            Some(v @ Value::Object(_)) => Ok(v),
            Some(_) => Err(ScimError::InvalidResponse("expected a JSON object".to_string())),
            None => Err(ScimError::InvalidResponse(format!("empty body with HTTP {}", self.status.as_u16()))),
        }
    }

    fn parse<T: DeserializeOwned>(&self) -> Result<T, ScimError> {
        serde_json::from_slice(&self.body).map_err(|e| ScimError::InvalidResponse(format!("unexpected body: {e}")))
    }
}

/// Outcome of one attempt, before retry decisions.
enum Attempt {
    Done(Answer),
    Failed { error: ScimError, retry_after: Option<Duration> },
}

impl Client {
    /// Build a client. Fails on a malformed base URL.
    pub fn new(config: ClientConfig) -> Result<Self, ScimError> {
        let mut base =
            Url::parse(config.base_url.trim()).map_err(|e| ScimError::Config(format!("invalid base URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ScimError::Config("the base URL must be an http(s) URL".to_string()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(ScimError::Config("put credentials in the auth settings, not in the base URL".to_string()));
        }
        base.set_query(None);
        base.set_fragment(None);
        if let Auth::OAuth2ClientCredentials { token_url, .. } = &config.auth {
            let url = Url::parse(token_url).map_err(|e| ScimError::Config(format!("invalid token URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
                return Err(ScimError::Config("the token URL must be an http(s) URL with a host".to_string()));
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_VALUE));
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            // The credential goes only where the settings say: a redirect is an error (see
            // `Attempt`), the connection is direct, and every address is checked.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(config.targets.resolver())
            .build()
            .map_err(|e| ScimError::Config(format!("cannot build the HTTP client: {e}")))?;
        let permits = Semaphore::new(config.max_concurrency.max(1));
        Ok(Self { inner: Arc::new(Inner { http, base, config, permits, token: Mutex::new(None) }) })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// `base/segments...?query`, with each segment and query part percent-encoded.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, ScimError> {
        let mut url = self.inner.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| ScimError::Config("the base URL cannot have a path".to_string()))?;
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            let q: Vec<String> =
                query.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect();
            url.set_query(Some(&q.join("&")));
        }
        Ok(url)
    }

    // ----- OAuth2 -----

    async fn bearer_token(&self) -> Result<Option<String>, ScimError> {
        let Auth::OAuth2ClientCredentials { token_url, client_id, client_secret, scope } = &self.inner.config.auth
        else {
            return Ok(None);
        };
        let mut cached = self.inner.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if t.expires_at.is_none_or(|at| Instant::now() < at) {
                return Ok(Some(t.access_token.clone()));
            }
        }
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope.as_deref().filter(|s| !s.is_empty()) {
            form.push(("scope", scope));
        }
        tracing::debug!(token_url = %token_url, "fetching an OAuth2 access token");
        let url = Url::parse(token_url).map_err(|e| ScimError::Config(format!("invalid token URL: {e}")))?;
        self.check_target(&url)?;
        let resp = self
            .inner
            .http
            .post(url)
            .basic_auth(client_id, Some(client_secret))
            .header(ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(map_reqwest_error)?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(redirected(status, resp.headers(), "token endpoint"));
        }
        let retry_after = parse_retry_after(resp.headers(), directory::now());
        let body = resp.bytes().await.map_err(map_reqwest_error)?;
        if !status.is_success() {
            // RFC 6749 5.2 error body: {"error": "...", "error_description": "..."}
            let detail = serde_json::from_slice::<Value>(&body).ok().map(|v| {
                let err = v.get("error").and_then(Value::as_str).unwrap_or("");
                let desc = v.get("error_description").and_then(Value::as_str).unwrap_or("");
                format!("token endpoint: {err} {desc}").trim().to_string()
            });
            let detail = detail.or_else(|| Some("token endpoint refused the request".into()));
            return Err(match status.as_u16() {
                400 | 401 | 403 => ScimError::InvalidAuthentication { status: status.as_u16(), detail },
                429 => ScimError::RateLimited { retry_after },
                s if s >= 500 => ScimError::Server { status: s, detail },
                s => ScimError::UnexpectedStatus { status: s, detail },
            });
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ScimError::InvalidResponse(format!("token endpoint answer is not JSON: {e}")))?;
        let access_token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ScimError::InvalidResponse("token endpoint answer has no access_token".into()))?
            .to_string();
        let expires_in = v.get("expires_in").and_then(|e| match e {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        let expires_at = expires_in.map(|secs| {
            let life = Duration::from_secs(secs);
            let margin = self.inner.config.token_expiry_margin.min(life / 2);
            Instant::now() + (life - margin)
        });
        *cached = Some(CachedToken { access_token: access_token.clone(), expires_at });
        Ok(Some(access_token))
    }

    /// Forget `token` if it is still the cached one (another task may
    /// already have replaced it).
    async fn invalidate_token(&self, token: &str) {
        let mut cached = self.inner.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.access_token == token) {
            *cached = None;
        }
    }

    // ----- request execution -----

    /// Refuses a URL whose host is an IP address the target policy refuses (the resolver,
    /// which checks host names, is not asked for those).
    fn check_target(&self, url: &Url) -> Result<(), ScimError> {
        self.inner.config.targets.check_url(url).map_err(|e| ScimError::TargetRefused(e.to_string()))
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        if_match: Option<&str>,
        oauth_token: Option<&str>,
    ) -> Attempt {
        if let Err(error) = self.check_target(url) {
            return Attempt::Failed { error, retry_after: None };
        }
        let mut req = self.inner.http.request(method.clone(), url.clone());
        match &self.inner.config.auth {
            Auth::None => {}
            Auth::Bearer { token } => req = req.bearer_auth(token),
            Auth::Basic { username, password } => req = req.basic_auth(username, Some(password)),
            Auth::OAuth2ClientCredentials { .. } => {
                if let Some(t) = oauth_token {
                    req = req.bearer_auth(t);
                }
            }
        }
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, SCIM_MEDIA_TYPE).body(body.to_vec());
        }
        if let Some(etag) = if_match {
            req = req.header(IF_MATCH, etag);
        }
        let _permit = match self.inner.permits.acquire().await {
            Ok(p) => p,
            Err(_) => {
                return Attempt::Failed { error: ScimError::Config("client is shut down".into()), retry_after: None }
            }
        };
        let pacer = self.inner.config.pacer.as_deref();
        if let Some(p) = pacer {
            if let Err(error) = p.before_send().await {
                return Attempt::Failed { error, retry_after: None };
            }
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Failed { error: map_reqwest_error(e), retry_after: None },
        };
        let status = resp.status();
        let retry_after = parse_retry_after(resp.headers(), directory::now());
        if let Some(p) = pacer {
            p.answered(status.as_u16(), retry_after).await;
        }
        if status.is_redirection() {
            return Attempt::Failed { error: redirected(status, resp.headers(), "app"), retry_after: None };
        }
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => return Attempt::Failed { error: map_reqwest_error(e), retry_after: None },
        };
        tracing::debug!(%method, url = %url, status = status.as_u16(), "SCIM request");
        if status.is_success() {
            Attempt::Done(Answer { status, body })
        } else {
            Attempt::Failed { error: error_from_status(status, &body, retry_after), retry_after }
        }
    }

    async fn execute(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, ScimError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ScimError::InvalidInput(format!("cannot serialize the body: {e}")))?;
        let cfg = &self.inner.config;
        let mut retries = 0u32;
        let mut refreshed_after_401 = false;
        loop {
            let token = match self.bearer_token().await {
                Ok(t) => t,
                Err(error) => {
                    let retry_after = match &error {
                        ScimError::RateLimited { retry_after } => *retry_after,
                        _ => None,
                    };
                    if error.is_retryable() && retries < cfg.max_retries {
                        self.backoff(retries, retry_after, &error).await;
                        retries += 1;
                        continue;
                    }
                    return Err(error);
                }
            };
            let (error, retry_after) =
                match self.attempt(&method, &url, body.as_deref(), if_match, token.as_deref()).await {
                    Attempt::Done(answer) => return Ok(answer),
                    Attempt::Failed { error, retry_after } => (error, retry_after),
                };
            if let (ScimError::InvalidAuthentication { status: 401, .. }, Some(t)) = (&error, token.as_deref()) {
                if !refreshed_after_401 {
                    tracing::info!(url = %url, "401 with a cached OAuth2 token: refreshing it once");
                    refreshed_after_401 = true;
                    self.invalidate_token(t).await;
                    continue;
                }
            }
            // Held back by the pacer: the caller tries again later.
            if matches!(error, ScimError::Held { .. }) {
                return Err(error);
            }
            if error.is_retryable() && retries < cfg.max_retries {
                // A pacer holds the retry of a 429 until the app's Retry-After, itself.
                if !(cfg.pacer.is_some() && matches!(error, ScimError::RateLimited { retry_after: Some(_) })) {
                    self.backoff(retries, retry_after, &error).await;
                }
                retries += 1;
                continue;
            }
            return Err(error);
        }
    }

    async fn backoff(&self, retry: u32, retry_after: Option<Duration>, error: &ScimError) {
        let cfg = &self.inner.config;
        let delay = match retry_after {
            Some(d) => d.min(cfg.retry_after_max),
            None => full_jitter(cfg.backoff_base, cfg.backoff_max, retry),
        };
        tracing::warn!(
            retry = retry + 1,
            max_retries = cfg.max_retries,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "retrying SCIM request"
        );
        tokio::time::sleep(delay).await;
    }

    // ----- generic resource operations -----

    /// `POST /{endpoint}`; returns the created resource.
    pub async fn create_resource(&self, endpoint: &str, resource: &Value) -> Result<Value, ScimError> {
        let url = self.url(&[endpoint], &[])?;
        self.execute(Method::POST, url, Some(resource), None).await?.resource()
    }

    /// `GET /{endpoint}/{id}`; `None` on 404.
    pub async fn get_resource(&self, endpoint: &str, id: &str) -> Result<Option<Value>, ScimError> {
        let url = self.url(&[endpoint, id], &[])?;
        match self.execute(Method::GET, url, None, None).await {
            Ok(a) => a.resource().map(Some),
            Err(ScimError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /{endpoint}?filter=attr eq "value"`: the matches of the first
    /// page the server returns (enough for matching on unique attributes).
    pub async fn find_resources(
        &self,
        endpoint: &str,
        filter_attr: &str,
        value: &str,
    ) -> Result<Vec<Value>, ScimError> {
        if !filter::is_valid_attr_path(filter_attr) {
            return Err(ScimError::InvalidInput(format!("not a SCIM attribute path: {filter_attr:?}")));
        }
        let url = self.url(&[endpoint], &[("filter", filter::eq(filter_attr, value))])?;
        let list: ListResponse<Value> = self.execute(Method::GET, url, None, None).await?.parse()?;
        Ok(list.resources)
    }

    /// Resources matching any of the `(attribute, value)` pairs, in one request.
    pub async fn find_resources_any(&self, endpoint: &str, matches: &[(&str, &str)]) -> Result<Vec<Value>, ScimError> {
        if let Some((attr, _)) = matches.iter().find(|(a, _)| !filter::is_valid_attr_path(a)) {
            return Err(ScimError::InvalidInput(format!("not a SCIM attribute path: {attr:?}")));
        }
        if matches.is_empty() {
            return Ok(Vec::new());
        }
        let url = self.url(&[endpoint], &[("filter", filter::any_eq(matches))])?;
        let list: ListResponse<Value> = self.execute(Method::GET, url, None, None).await?.parse()?;
        Ok(list.resources)
    }

    /// One page (up to `count`) of the resources matching any of the `(attribute, value)`
    /// pairs, in one request, with the server's `totalResults` (which tells whether the page
    /// holds them all).
    pub async fn find_resources_any_page(
        &self,
        endpoint: &str,
        matches: &[(&str, &str)],
        count: u32,
    ) -> Result<ListResponse<Value>, ScimError> {
        if let Some((attr, _)) = matches.iter().find(|(a, _)| !filter::is_valid_attr_path(a)) {
            return Err(ScimError::InvalidInput(format!("not a SCIM attribute path: {attr:?}")));
        }
        if matches.is_empty() {
            return Ok(ListResponse::default());
        }
        let count = count.to_string();
        let url = self.url(&[endpoint], &[("filter", filter::any_eq(matches)), ("count", count)])?;
        self.execute(Method::GET, url, None, None).await?.parse()
    }

    /// `PATCH /{endpoint}/{id}`; `Some` when the server answers with the
    /// resource (200), `None` when it answers 204 No Content.
    pub async fn patch_resource(
        &self,
        endpoint: &str,
        id: &str,
        op: &PatchOp,
        if_match: Option<&str>,
    ) -> Result<Option<Value>, ScimError> {
        let body = serde_json::to_value(op)
            .map_err(|e| ScimError::InvalidInput(format!("cannot serialize the PATCH: {e}")))?;
        let url = self.url(&[endpoint, id], &[])?;
        let answer = self.execute(Method::PATCH, url, Some(&body), if_match).await?;
        match answer.json_opt()? {
            Some(v @ Value::Object(_)) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// `PUT /{endpoint}/{id}`; returns the stored resource (re-read with GET
    /// if the server answers without a body).
    pub async fn replace_resource(
        &self,
        endpoint: &str,
        id: &str,
        resource: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, ScimError> {
        let url = self.url(&[endpoint, id], &[])?;
        let answer = self.execute(Method::PUT, url, Some(resource), if_match).await?;
        match answer.json_opt()? {
            Some(v @ Value::Object(_)) => Ok(v),
            _ => self
                .get_resource(endpoint, id)
                .await?
                .ok_or(ScimError::NotFound { detail: Some("resource vanished after PUT".into()) }),
        }
    }

    /// `DELETE /{endpoint}/{id}`; a 404 counts as already deleted.
    pub async fn delete_resource(&self, endpoint: &str, id: &str) -> Result<(), ScimError> {
        let url = self.url(&[endpoint, id], &[])?;
        match self.execute(Method::DELETE, url, None, None).await {
            Ok(_) | Err(ScimError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /{endpoint}?startIndex=..&count=..` (startIndex is 1-based).
    pub async fn list_resources(
        &self,
        endpoint: &str,
        start_index: u64,
        count: u32,
    ) -> Result<ListResponse<Value>, ScimError> {
        let url =
            self.url(&[endpoint], &[("startIndex", start_index.max(1).to_string()), ("count", count.to_string())])?;
        self.execute(Method::GET, url, None, None).await?.parse()
    }

    /// `POST /{endpoint}/.search` with `startIndex`/`count` paging and no filter (RFC 7644
    /// section 3.4.3): the same listing as [`Client::list_resources`], asked another way.
    pub async fn search_resources(
        &self,
        endpoint: &str,
        start_index: u64,
        count: u32,
    ) -> Result<ListResponse<Value>, ScimError> {
        let url = self.url(&[endpoint, ".search"], &[])?;
        let body = serde_json::json!({"schemas": [SEARCH_REQUEST_SCHEMA], "startIndex": start_index.max(1),
            "count": count});
        self.execute(Method::POST, url, Some(&body), None).await?.parse()
    }

    /// `GET /{endpoint}?cursor=..&count=..` (draft-ietf-scim-cursor-pagination): `None` asks
    /// for the first page (an empty `cursor`), then each answer's `nextCursor`.
    pub async fn list_resources_cursor(
        &self,
        endpoint: &str,
        cursor: Option<&str>,
        count: u32,
    ) -> Result<ListResponse<Value>, ScimError> {
        let url =
            self.url(&[endpoint], &[("cursor", cursor.unwrap_or("").to_string()), ("count", count.to_string())])?;
        self.execute(Method::GET, url, None, None).await?.parse()
    }

    /// A pager walking every resource of `endpoint`, `page_size` at a time.
    pub fn pager(&self, endpoint: &str, page_size: u32) -> Pager {
        Pager {
            client: self.clone(),
            endpoint: endpoint.to_string(),
            page_size: page_size.max(1),
            next_start: Some(1),
            pages: 0,
        }
    }

    /// Every resource of `endpoint`, walking all pages.
    pub async fn list_all(&self, endpoint: &str, page_size: u32) -> Result<Vec<Value>, ScimError> {
        let mut pager = self.pager(endpoint, page_size);
        let mut all = Vec::new();
        while let Some(page) = pager.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }

    // ----- typed helpers -----

    /// `GET /ServiceProviderConfig`. If the server has none (404 or 501),
    /// proves connectivity with `GET /Users?count=1` and returns
    /// [`Capabilities::default`] (conservative).
    ///
    /// Discovery endpoints may be served without authentication (RFC 7644
    /// section 4; scim2-server does so), so success here does not prove the
    /// credentials: use [`Client::test_connection`] for that.
    pub async fn service_provider_config(&self) -> Result<Capabilities, ScimError> {
        self.discover().await.map(|(caps, _)| caps)
    }

    /// Capabilities plus proof that the credentials work: the
    /// `ServiceProviderConfig` (or its fallback) and an authenticated
    /// `GET /Users?count=1`.
    pub async fn test_connection(&self) -> Result<Capabilities, ScimError> {
        let (caps, probed) = self.discover().await?;
        if !probed {
            self.probe_users().await?;
        }
        Ok(caps)
    }

    /// Returns the capabilities and whether `/Users` was already probed.
    async fn discover(&self) -> Result<(Capabilities, bool), ScimError> {
        let url = self.url(&["ServiceProviderConfig"], &[])?;
        match self.execute(Method::GET, url, None, None).await {
            Ok(answer) => Ok((Capabilities::from_service_provider_config(&answer.resource()?), false)),
            Err(ScimError::NotFound { .. })
            | Err(ScimError::Server { status: 501, .. })
            | Err(ScimError::UnexpectedStatus { status: 405, .. }) => {
                tracing::info!("no ServiceProviderConfig: probing /Users and assuming defaults");
                self.probe_users().await?;
                Ok((Capabilities::default(), true))
            }
            Err(e) => Err(e),
        }
    }

    async fn probe_users(&self) -> Result<(), ScimError> {
        let url = self.url(&[USERS], &[("count", "1".to_string())])?;
        let _: ListResponse<Value> = self.execute(Method::GET, url, None, None).await?.parse()?;
        Ok(())
    }

    pub async fn create_user(&self, user: &Value) -> Result<Value, ScimError> {
        self.create_resource(USERS, user).await
    }

    pub async fn get_user(&self, id: &str) -> Result<Option<Value>, ScimError> {
        self.get_resource(USERS, id).await
    }

    pub async fn find_users(&self, filter_attr: &str, value: &str) -> Result<Vec<Value>, ScimError> {
        self.find_resources(USERS, filter_attr, value).await
    }

    pub async fn find_users_any(&self, matches: &[(&str, &str)]) -> Result<Vec<Value>, ScimError> {
        self.find_resources_any(USERS, matches).await
    }

    pub async fn find_users_any_page(
        &self,
        matches: &[(&str, &str)],
        count: u32,
    ) -> Result<ListResponse<Value>, ScimError> {
        self.find_resources_any_page(USERS, matches, count).await
    }

    pub async fn patch_user(&self, id: &str, op: PatchOp) -> Result<Option<Value>, ScimError> {
        self.patch_resource(USERS, id, &op, None).await
    }

    pub async fn replace_user(&self, id: &str, user: &Value) -> Result<Value, ScimError> {
        self.replace_resource(USERS, id, user, None).await
    }

    pub async fn delete_user(&self, id: &str) -> Result<(), ScimError> {
        self.delete_resource(USERS, id).await
    }

    pub async fn list_users(&self, start_index: u64, count: u32) -> Result<ListResponse<Value>, ScimError> {
        self.list_resources(USERS, start_index, count).await
    }

    pub async fn create_group(&self, group: &Value) -> Result<Value, ScimError> {
        self.create_resource(GROUPS, group).await
    }

    pub async fn get_group(&self, id: &str) -> Result<Option<Value>, ScimError> {
        self.get_resource(GROUPS, id).await
    }

    pub async fn find_groups(&self, filter_attr: &str, value: &str) -> Result<Vec<Value>, ScimError> {
        self.find_resources(GROUPS, filter_attr, value).await
    }

    pub async fn patch_group(&self, id: &str, op: PatchOp) -> Result<Option<Value>, ScimError> {
        self.patch_resource(GROUPS, id, &op, None).await
    }

    pub async fn delete_group(&self, id: &str) -> Result<(), ScimError> {
        self.delete_resource(GROUPS, id).await
    }

    pub async fn list_groups(&self, start_index: u64, count: u32) -> Result<ListResponse<Value>, ScimError> {
        self.list_resources(GROUPS, start_index, count).await
    }
}

/// Walks the pages of a list endpoint. Stops on an empty page, when
/// `totalResults` is reached, or (without `totalResults`) on a short page.
#[derive(Debug)]
pub struct Pager {
    client: Client,
    endpoint: String,
    page_size: u32,
    next_start: Option<u64>,
    pages: u32,
}

const MAX_PAGES: u32 = 100_000;

impl Pager {
    /// The next page, or `None` when done.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Value>>, ScimError> {
        let Some(start) = self.next_start else {
            return Ok(None);
        };
        self.pages += 1;
        if self.pages > MAX_PAGES {
            self.next_start = None;
            return Err(ScimError::InvalidResponse("pagination does not terminate".into()));
        }
        let page = self.client.list_resources(&self.endpoint, start, self.page_size).await?;
        let n = page.resources.len() as u64;
        let next = start + n;
        self.next_start = match page.total_results {
            _ if n == 0 => None,
            Some(total) if next > total => None,
            None if n < u64::from(self.page_size) => None,
            _ => Some(next),
        };
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(page.resources))
    }
}

fn full_jitter(base: Duration, max: Duration, retry: u32) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(retry.min(31)));
    let ceiling = exp.min(max).as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling))
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 section 10.2.3); a date is
/// counted from `now`.
pub(crate) fn parse_retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v)
        .map(|d| d.with_timezone(&chrono::Utc))
        .or_else(|_| {
            // Obsolete RFC 850 and asctime formats.
            chrono::NaiveDateTime::parse_from_str(v, "%A, %d-%b-%y %H:%M:%S GMT")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%a %b %e %H:%M:%S %Y"))
                .map(|n| n.and_utc())
        })
        .ok()?;
    let delta = when.signed_duration_since(now);
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// A 3xx answer: never followed, so that no credential goes anywhere but the configured URL.
fn redirected(status: StatusCode, headers: &HeaderMap, who: &str) -> ScimError {
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| truncate(l.trim(), 200))
        .filter(|l| !l.is_empty());
    ScimError::Redirected { status: status.as_u16(), location, who: who.to_owned() }
}

fn map_reqwest_error(e: reqwest::Error) -> ScimError {
    if let Some(t) = outbound::TargetError::find(&e).filter(|t| t.is_refused()) {
        return ScimError::TargetRefused(t.to_string());
    }
    if e.is_timeout() {
        return ScimError::Timeout;
    }
    if e.is_builder() {
        return ScimError::Config(e.to_string());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_decode() {
        ScimError::InvalidResponse(msg)
    } else {
        ScimError::Network(msg)
    }
}

fn error_from_status(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> ScimError {
    let parsed: Option<ScimErrorBody> = serde_json::from_slice(body).ok();
    let scim_type = parsed.as_ref().and_then(|b| b.scim_type.clone());
    let detail = parsed.as_ref().and_then(|b| b.detail.clone()).or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        (!text.is_empty()).then(|| truncate(text, 300))
    });
    match status.as_u16() {
        s @ (401 | 403) => ScimError::InvalidAuthentication { status: s, detail },
        400 => ScimError::BadRequest { scim_type, detail },
        404 => ScimError::NotFound { detail },
        409 => ScimError::Conflict { scim_type, detail },
        412 => ScimError::PreconditionFailed { detail },
        429 => ScimError::RateLimited { retry_after },
        s if s >= 500 => ScimError::Server { status: s, detail },
        s if is_retryable_status(s) => ScimError::Server { status: s, detail },
        s => ScimError::UnexpectedStatus { status: s, detail },
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters (so a space
/// is `%20`, never `+`, which some servers do not decode in queries).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(ClientConfig::new(base, Auth::None)).expect("client")
    }

    #[test]
    fn urls_are_built_and_encoded() {
        let c = client("http://h/scim/v2");
        assert_eq!(c.url(&["Users", "a b/c"], &[]).expect("url").as_str(), "http://h/scim/v2/Users/a%20b%2Fc");
        let c = client("http://h/scim/v2/");
        let u = c.url(&["Users"], &[("filter", filter::eq("userName", "a\"b\\c d+e"))]).expect("url");
        assert_eq!(u.as_str(), "http://h/scim/v2/Users?filter=userName%20eq%20%22a%5C%22b%5C%5Cc%20d%2Be%22");
        let c = client("http://h");
        assert_eq!(c.url(&["ServiceProviderConfig"], &[]).expect("url").as_str(), "http://h/ServiceProviderConfig");
    }

    #[test]
    fn bad_base_urls_are_rejected() {
        for bad in ["", "not a url", "ftp://h/x", "mailto:a@b", "http://u:p@h/v2"] {
            assert!(matches!(Client::new(ClientConfig::new(bad, Auth::None)), Err(ScimError::Config(_))), "{bad}");
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let auths = [
            Auth::Bearer { token: "s3cr3t-token".into() },
            Auth::Basic { username: "admin".into(), password: "s3cr3t-pw".into() },
            Auth::OAuth2ClientCredentials {
                token_url: "http://idp/token".into(),
                client_id: "cid".into(),
                client_secret: "s3cr3t-cs".into(),
                scope: Some("scim".into()),
            },
        ];
        for auth in auths {
            let cfg = ClientConfig::new("http://h/v2", auth);
            let c = Client::new(cfg.clone()).expect("client");
            for text in [format!("{cfg:?}"), format!("{c:?}"), format!("{:#?}", cfg.auth)] {
                assert!(!text.contains("s3cr3t"), "{text}");
                assert!(text.contains("<redacted>"), "{text}");
            }
        }
        let text = format!(
            "{:?}",
            Auth::OAuth2ClientCredentials {
                token_url: "http://idp/token".into(),
                client_id: "cid".into(),
                client_secret: "x".into(),
                scope: None
            }
        );
        assert!(text.contains("cid") && text.contains("http://idp/token"));
    }

    #[test]
    fn retry_after_parsing() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a time");
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::ZERO));
        let future = (now + chrono::Duration::seconds(100)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&future).expect("hv"));
        let d = parse_retry_after(&h, now).expect("date");
        assert_eq!(d, Duration::from_secs(100));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Sunday, 06-Nov-94 08:49:37 GMT"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Sun Nov  6 08:49:37 1994"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h, now), None);
    }

    #[test]
    fn jitter_is_bounded() {
        for retry in 0..40 {
            let d = full_jitter(Duration::from_millis(10), Duration::from_millis(200), retry);
            assert!(d <= Duration::from_millis(200));
            assert!(d <= Duration::from_millis(10).saturating_mul(2u32.saturating_pow(retry)));
        }
    }

    #[test]
    fn status_mapping() {
        let body = br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409","scimType":"uniqueness","detail":"taken"}"#;
        assert_eq!(
            error_from_status(StatusCode::CONFLICT, body, None),
            ScimError::Conflict { scim_type: Some("uniqueness".into()), detail: Some("taken".into()) }
        );
        assert!(matches!(
            error_from_status(StatusCode::FORBIDDEN, b"nope", None),
            ScimError::InvalidAuthentication { status: 403, detail: Some(d) } if d == "nope"
        ));
        assert!(matches!(
            error_from_status(StatusCode::PRECONDITION_FAILED, b"", None),
            ScimError::PreconditionFailed { detail: None }
        ));
        assert!(matches!(
            error_from_status(StatusCode::BAD_GATEWAY, b"<html>", None),
            ScimError::Server { status: 502, .. }
        ));
        assert!(matches!(
            error_from_status(StatusCode::PAYLOAD_TOO_LARGE, b"", None),
            ScimError::UnexpectedStatus { status: 413, .. }
        ));
        let long = "x".repeat(1000);
        match error_from_status(StatusCode::BAD_REQUEST, long.as_bytes(), None) {
            ScimError::BadRequest { detail: Some(d), .. } => assert!(d.len() < 320),
            other => panic!("{other:?}"),
        }
    }
}
