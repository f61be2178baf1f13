//! The inbound SCIM 2.0 server under `/scim/v2`: identity providers and HR systems push users
//! and groups (roles) into the directory. Each client has its own bearer token (made with
//! `POST /api/v1/scim-clients`), which works here only; admin tokens do not work here.
//! Every answer is `application/scim+json`; errors use the SCIM error schema.

mod bulk;
mod discovery;
mod filter;
mod groups;
mod scope;
mod search;
mod users;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use directory::{Actor, AttributeDef, AttributeType};
use scim::server::schema::{AttrType, Attribute, ResourceSchema, Schema};
use scim::server::{ScimError, SCIM_JSON};
use serde_json::Value;
use store::scim::ScimClientRecord;
use store::{Store, StoreError};
use uuid::Uuid;

use crate::AppState;

/// The URN of the schema extension holding the directory's custom attributes.
pub const CUSTOM_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:provisioner:2.0:User";
/// The largest request body accepted, but on `/Bulk` ([`bulk::MAX_PAYLOAD`]).
pub const MAX_BODY: usize = 1024 * 1024;
/// The most resources one list answer holds.
pub const MAX_RESULTS: u32 = 500;
/// What a SCIM token starts with (admin tokens start with `prv_`).
pub const TOKEN_PREFIX: &str = "prvscim_";

/// The SCIM server's shared state.
#[derive(Clone)]
pub struct ScimState {
    pub app: AppState,
    verified: Arc<crate::tokens::VerifiedCache>,
    limiter: Arc<RateLimiter>,
}

/// Per-client token buckets.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: per_minute.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// `Ok` when the client may make a request now, else how long to wait.
    fn take(&self, client: &str) -> Result<(), Duration> {
        self.take_n(client, 1)
    }

    /// `Ok` when the client may make `n` requests now (all taken), else how long to wait (none
    /// taken).
    fn take_n(&self, client: &str, n: u32) -> Result<(), Duration> {
        let Ok(mut map) = self.buckets.lock() else { return Ok(()) };
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        let now = Instant::now();
        let (tokens, at) = map.entry(client.to_owned()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(cap);
        *at = now;
        let n = f64::from(n);
        if *tokens >= n {
            *tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(((n.min(cap) - *tokens) / rate).max(1.0)))
        }
    }
}

/// The rate limit of each SCIM client, requests per minute: `PROVISIONER_SCIM_RATE_LIMIT`, else
/// 1200 (20 a second, bursts up to a minute's worth).
pub fn rate_limit_from_env() -> u32 {
    std::env::var("PROVISIONER_SCIM_RATE_LIMIT").ok().and_then(|v| v.parse().ok()).filter(|v| *v > 0).unwrap_or(1200)
}

/// A SCIM answer: JSON with the SCIM media type.
pub(crate) fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    resp
}

/// An error of the SCIM server.
pub(crate) struct Fail(pub ScimError, pub Option<Duration>);

impl From<ScimError> for Fail {
    fn from(e: ScimError) -> Self {
        Self(e, None)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self(
            match e {
                StoreError::NotFound => ScimError::not_found("no such resource"),
                StoreError::Duplicate { field: "email" } => ScimError::uniqueness(
                    "emails[type eq \"work\"].value is already the e-mail address of another user; each person \
                     needs their own",
                ),
                StoreError::Duplicate { field } => ScimError::uniqueness(format!(
                    "{} is already taken",
                    if field == "username" {
                        "userName"
                    } else if field == "name" {
                        "displayName"
                    } else {
                        field
                    }
                )),
                StoreError::VersionConflict { .. } => {
                    ScimError::new(412, None, "the resource changed since the version named in If-Match")
                }
                StoreError::MissingReference { field } => {
                    ScimError::invalid_value(format!("{field} refers to a resource that does not exist"))
                }
                StoreError::InvalidState(m) if m.starts_with("invalid filter") => ScimError::invalid_filter(m),
                StoreError::InvalidState(m) => ScimError::new(409, None, m),
                StoreError::InvalidCursor => ScimError::invalid_value("bad cursor"),
                e @ (StoreError::Unavailable(_) | StoreError::Unreachable(_)) => {
                    tracing::warn!(error = %e.chain(), "database unavailable");
                    ScimError::new(503, None, "the database is unavailable")
                }
                e @ (StoreError::Backend(_) | StoreError::Database(_)) => {
                    tracing::error!(error = %e.chain(), "internal error");
                    ScimError::new(500, None, "internal error")
                }
            },
            None,
        )
    }
}

/// A write refused by the service layer, in SCIM's words (RFC 7644 section 3.12).
impl From<crate::error::Error> for Fail {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error;
        match e {
            Error::Invalid(v) => users::validation(v).into(),
            Error::SourceOwned { field, directory_source } if field == "password" => ScimError::mutability(format!(
                "password: this user signs in with their password in the directory source {directory_source:?} (it \
                 is checked there); a SCIM client cannot set one here; change it in the directory"
            ))
            .into(),
            Error::SourceOwned { field, directory_source } => ScimError::mutability(format!(
                "{} comes from the directory source {directory_source:?}: a SCIM client cannot change it; change it \
                 in the directory",
                users::directory_field(&field)
            ))
            .into(),
            Error::Conflict { field, .. } if field == "email" => ScimError::uniqueness(
                "emails[type eq \"work\"].value is already the e-mail address of another user; each person needs \
                 their own",
            )
            .into(),
            Error::Conflict { field, reason } => {
                let name = if field == "name" { "displayName".to_owned() } else { users::directory_field(&field) };
                ScimError::uniqueness(format!("{name} {reason}")).into()
            }
            Error::PreconditionFailed { .. } => {
                ScimError::new(412, None, "the resource changed since the version named in If-Match").into()
            }
            Error::NotFound(_) => ScimError::not_found("no such resource").into(),
            Error::BadRequest { field, reason } => ScimError::invalid_value(format!("{field}: {reason}")).into(),
            Error::InvalidState(m) => ScimError::new(409, None, m).into(),
            e @ Error::InUse { .. } => ScimError::new(409, None, e.to_string()).into(),
            e @ Error::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ScimError::new(503, None, "the database is unavailable").into()
            }
            e => {
                tracing::error!(error = %e, detail = ?e, "internal error");
                ScimError::new(500, None, "internal error").into()
            }
        }
    }
}

/// A SCIM write that met another write is tried again (see [`crate::service::retry_write`]);
/// after the last attempt the client is told to retry.
impl crate::service::Stale for Fail {
    fn is_stale(&self) -> bool {
        self.0.status == 412
    }

    fn gave_up(self, what: &'static str) -> Self {
        ScimError::new(409, None, format!("the {what} keeps changing; retry")).into()
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = scim_json(status, &self.0.body());
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.1 {
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

pub(crate) type ScimResult<T = Response> = Result<T, Fail>;

/// The SCIM client a request comes from, and what it may see and change (read from its row
/// on every request, so that a change of scope applies at once).
#[derive(Clone)]
pub(crate) struct Client {
    pub actor: Actor,
    pub id: Uuid,
    pub scope: store::scim::ScimScope,
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Client>()
            .cloned()
            .ok_or_else(|| Fail(ScimError::new(401, None, "missing or invalid SCIM token"), None))
    }
}

/// A SCIM JSON body (`application/scim+json` or `application/json`), parsed.
pub(crate) struct ScimBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for ScimBody {
    type Rejection = Fail;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !(mime == SCIM_JSON || mime == "application/json" || mime.is_empty()) {
            return Err(ScimError::new(415, None, "Content-Type must be application/scim+json").into());
        }
        let limit = body_limit(req.uri().path());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Fail(too_large(limit), None)
            } else if let Some(slow) = crate::extract::too_slow(&e) {
                Fail(ScimError::new(408, None, slow.to_string()), None)
            } else {
                Fail(ScimError::invalid_syntax(e.body_text()), None)
            }
        })?;
        let v: Value = crate::extract::strict_json(&bytes).map_err(|e| match e {
            crate::extract::JsonError::Syntax(e) => {
                ScimError::invalid_syntax(format!("the body is not valid JSON: {e}"))
            }
            crate::extract::JsonError::TooDeep => ScimError::invalid_syntax(format!(
                "the body nests arrays and objects deeper than {} levels",
                crate::extract::MAX_JSON_DEPTH
            )),
            crate::extract::JsonError::DuplicateKey(path) => {
                ScimError::invalid_syntax(format!("the body gives the key {path} more than once"))
            }
        })?;
        if !v.is_object() {
            return Err(ScimError::invalid_syntax("the body must be a JSON object").into());
        }
        Ok(ScimBody(v))
    }
}

/// 413 for a body over `limit` bytes (on `/Bulk`, `bulk.maxPayloadSize`).
pub(crate) fn too_large(limit: usize) -> ScimError {
    ScimError::new(413, None, format!("the request body is larger than {limit} bytes, the most accepted here"))
}

/// The largest body the SCIM server accepts at `path` (under `/scim/v2`): more on `/Bulk` only.
pub fn body_limit(path: &str) -> usize {
    if path.trim_end_matches('/').ends_with("/Bulk") {
        bulk::MAX_PAYLOAD
    } else {
        MAX_BODY
    }
}

/// The version an `If-Match` / `If-None-Match` header names (`None` for `*` or none).
pub(crate) fn header_version(headers: &HeaderMap, name: header::HeaderName) -> ScimResult<Option<Option<i64>>> {
    let Some(raw) = headers.get(&name) else { return Ok(None) };
    let text = raw.to_str().map_err(|_| ScimError::invalid_value(format!("{name} is not text")))?.trim();
    if text == "*" {
        return Ok(Some(None));
    }
    // Any of a list of tags; only ours can match.
    let mut versions = text.split(',').map(|t| {
        let t = t.trim();
        t.strip_prefix("W/").unwrap_or(t).trim_matches('"').parse::<i64>().ok()
    });
    Ok(Some(versions.find_map(|v| v).or(Some(-1))))
}

/// `W/"3"`: the ETag of a version.
pub(crate) fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// Refuses a write when `If-Match` names another version.
pub(crate) fn check_if_match(headers: &HeaderMap, current: i64) -> ScimResult<()> {
    match header_version(headers, header::IF_MATCH)? {
        Some(Some(v)) if v != current => {
            Err(ScimError::new(412, None, format!("the resource changed: its version is now {}", etag(current))).into())
        }
        _ => Ok(()),
    }
}

/// Whether `If-None-Match` names the current version (the answer is then 304).
pub(crate) fn not_modified(headers: &HeaderMap, current: i64) -> ScimResult<bool> {
    Ok(match header_version(headers, header::IF_NONE_MATCH)? {
        Some(None) => true,
        Some(Some(v)) => v == current,
        None => false,
    })
}

/// A resource answer with its ETag.
pub(crate) fn tagged(status: StatusCode, version: i64, body: &Value, location: Option<&str>) -> Response {
    let mut resp = scim_json(status, body);
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp
}

pub(crate) fn not_modified_response(version: i64) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// The base URL clients reach this server at, from the request's `Host`.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let proto = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{proto}://{host}/scim/v2")
}

pub(crate) fn parse_id(id: &str, what: &str) -> ScimResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| Fail(ScimError::not_found(format!("no {what} {id}")), None))
}

/// The extension schema of the directory's custom attributes.
pub(crate) fn custom_schema(defs: &[AttributeDef]) -> Schema {
    Schema {
        id: CUSTOM_SCHEMA.into(),
        name: "ProvisionerUser".into(),
        description: "The directory's custom attributes (declared with POST /api/v1/attributes)".into(),
        attributes: defs
            .iter()
            .map(|d| {
                let desc = d.description.clone().unwrap_or_default();
                match d.kind {
                    AttributeType::String => Attribute::string(&d.name, &desc),
                    AttributeType::Number => Attribute::new(&d.name, AttrType::Decimal, &desc),
                    AttributeType::Boolean => Attribute::new(&d.name, AttrType::Boolean, &desc),
                    AttributeType::Date => Attribute::string(&d.name, format!("{desc} (a date, YYYY-MM-DD)").trim()),
                    AttributeType::StringList => Attribute::string(&d.name, &desc).multi(),
                }
            })
            .collect(),
    }
}

/// The User resource: the custom-attribute extension is there once a custom attribute is
/// declared.
pub(crate) fn user_resource_schema(defs: &[AttributeDef]) -> ResourceSchema {
    let mut extensions = vec![scim::server::schema::enterprise_user_schema()];
    if !defs.is_empty() {
        extensions.push(custom_schema(defs));
    }
    ResourceSchema {
        name: "User".into(),
        endpoint: "/Users".into(),
        core: scim::server::schema::user_schema(),
        extensions,
    }
}

pub(crate) fn group_resource_schema() -> ResourceSchema {
    ResourceSchema {
        name: "Group".into(),
        endpoint: "/Groups".into(),
        core: scim::server::schema::group_schema(),
        extensions: vec![],
    }
}

impl ScimState {
    /// For reads, and for what only SCIM stores (clients, audit of refusals); every write of a
    /// user, group or membership goes through [`ScimState::service`].
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        self.app.service.store()
    }

    /// The service layer: where users, groups and memberships are written.
    pub(crate) fn service(&self) -> &crate::service::Service {
        &self.app.service
    }

    /// The client a token belongs to. The row is read on every request (one indexed read), so
    /// that a revoked token stops working at once in every process and a new scope applies at
    /// once; only the argon2 verification is cached. A row found by a legacy or rotated
    /// lookup key is re-keyed.
    async fn authenticate(&self, token: &str) -> ScimResult<Option<ScimClientRecord>> {
        if token.is_empty() || token.len() > 512 {
            return Ok(None);
        }
        let lookups = crate::tokens::lookup_keys(self.app.service.keyring(), token);
        let mut found = None;
        for lookup in &lookups {
            if let Some(record) = self.store().find_scim_client_by_lookup(lookup).await? {
                found = Some(record);
                break;
            }
        }
        let Some(record) = found else { return Ok(None) };
        if record.revoked_at.is_some() {
            return Ok(None);
        }
        if !self.verified.proven(token, &record.hash) {
            let owned = token.to_owned();
            let hash = record.hash.clone();
            let ok = tokio::task::spawn_blocking(move || crate::tokens::verify(&owned, &hash))
                .await
                .map_err(|e| Fail(ScimError::new(500, None, e.to_string()), None))?;
            if !ok {
                return Ok(None);
            }
            self.verified.put(token, record.name.clone(), &record.hash);
        }
        if record.lookup != lookups[0] {
            self.store().rekey_scim_client(record.id, &lookups[0]).await?;
        }
        Ok(Some(record))
    }
}

/// Lets a request through only with a valid SCIM client token, within its rate limit.
async fn require_client(State(state): State<ScimState>, mut req: Request, next: Next) -> Response {
    let unauthorized = || Fail(ScimError::new(401, None, "missing or invalid SCIM token"), None).into_response();
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
    else {
        return unauthorized();
    };
    let record = match state.authenticate(&token).await {
        Ok(Some(record)) => record,
        Ok(None) => return unauthorized(),
        Err(e) => return e.into_response(),
    };
    if let Err(wait) = state.limiter.take(&record.id.to_string()) {
        return Fail(ScimError::new(429, None, "too many requests: slow down and retry later"), Some(wait))
            .into_response();
    }
    let client = Client {
        actor: Actor { kind: "scim_client".into(), name: record.name.clone() },
        id: record.id,
        scope: record.scope,
    };
    let read = req.method() == Method::GET || req.method() == Method::HEAD || req.uri().path().ends_with("/.search");
    if client.scope.read_only && !read {
        let path = req.uri().path().to_owned();
        let refused = scope::refuse(&state, &client, "scim", &path, "the client is read-only").await;
        return match refused {
            Ok(()) => Fail(ScimError::new(403, None, "this SCIM client is read-only"), None).into_response(),
            Err(e) => e.into_response(),
        };
    }
    req.extensions_mut().insert(client);
    next.run(req).await
}

async fn method_not_allowed() -> Response {
    Fail(ScimError::new(405, None, "this method is not allowed on this endpoint"), None).into_response()
}

async fn not_found() -> Response {
    Fail(ScimError::not_found("no such endpoint"), None).into_response()
}

async fn not_implemented() -> Response {
    Fail(ScimError::new(501, None, "not supported by this service provider"), None).into_response()
}

/// The `/scim/v2` application.
pub fn router(app: AppState) -> Router {
    router_with_limit(app, rate_limit_from_env())
}

/// The `/scim/v2` application with a given rate limit per client (requests per minute).
pub fn router_with_limit(app: AppState, per_minute: u32) -> Router {
    let state = ScimState {
        app,
        verified: Arc::new(crate::tokens::VerifiedCache::new(crate::tokens::CACHE_TTL)),
        limiter: Arc::new(RateLimiter::new(per_minute)),
    };
    Router::new()
        .route("/ServiceProviderConfig", get(discovery::service_provider_config))
        .route("/ResourceTypes", get(discovery::resource_types))
        .route("/ResourceTypes/{name}", get(discovery::resource_type))
        .route("/Schemas", get(discovery::schemas))
        .route("/Schemas/{id}", get(discovery::schema))
        .route("/Users", get(users::list).post(users::create))
        .route("/Users/.search", post(users::search))
        .route("/Users/{id}", get(users::get).put(users::replace).patch(users::patch).delete(users::delete))
        .route("/Groups", get(groups::list).post(groups::create))
        .route("/Groups/.search", post(groups::search))
        .route("/Groups/{id}", get(groups::get).put(groups::replace).patch(groups::patch).delete(groups::delete))
        .route("/Bulk", post(bulk::bulk).layer(DefaultBodyLimit::max(bulk::MAX_PAYLOAD)))
        .route("/.search", post(search::search))
        .route("/Me", get(not_implemented).post(not_implemented).put(not_implemented).patch(not_implemented))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_client))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A list answer.
pub(crate) fn list_response(total: u64, start_index: u64, resources: Vec<Value>) -> Value {
    serde_json::json!({
        "schemas": [scim::LIST_RESPONSE_SCHEMA],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// The parameters of a search, from a query string or a `SearchRequest` body.
#[derive(Debug, Default)]
pub(crate) struct Search {
    pub filter: Option<String>,
    pub sort_by: Option<String>,
    pub descending: bool,
    pub start_index: u64,
    pub count: u32,
    pub attributes: Option<String>,
    pub excluded: Option<String>,
}

fn number_param(name: &str, v: &str) -> ScimResult<i64> {
    v.trim().parse::<i64>().map_err(|_| Fail(ScimError::invalid_value(format!("{name} must be an integer")), None))
}

fn sort_order(v: &str) -> ScimResult<bool> {
    match v.to_ascii_lowercase().as_str() {
        "ascending" => Ok(false),
        "descending" => Ok(true),
        _ => Err(ScimError::invalid_value("sortOrder must be ascending or descending").into()),
    }
}

impl Search {
    fn finish(mut self, start: Option<i64>, count: Option<i64>) -> Self {
        // RFC 7644 section 3.4.2.4: below 1 is 1, a negative count is 0.
        self.start_index = start.unwrap_or(1).max(1) as u64;
        self.count = count.map(|c| c.clamp(0, i64::from(MAX_RESULTS)) as u32).unwrap_or(100);
        self
    }

    pub(crate) fn from_query(query: Option<&str>) -> ScimResult<Self> {
        let mut s = Search::default();
        let (mut start, mut count) = (None, None);
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.to_ascii_lowercase().as_str() {
                "filter" => s.filter = Some(v.into_owned()),
                "sortby" => s.sort_by = Some(v.into_owned()),
                "sortorder" => s.descending = sort_order(&v)?,
                "startindex" => start = Some(number_param("startIndex", &v)?),
                "count" => count = Some(number_param("count", &v)?),
                "attributes" => s.attributes = Some(v.into_owned()),
                "excludedattributes" => s.excluded = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(s.finish(start, count))
    }

    pub(crate) fn from_body(body: &Value) -> ScimResult<Self> {
        let Value::Object(o) = body else { return Err(ScimError::invalid_syntax("expected an object").into()) };
        let text = |k: &str| -> ScimResult<Option<String>> {
            match scim::query::get_ci(o, k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Array(a)) => Ok(Some(
                    a.iter()
                        .map(|x| x.as_str().map(str::to_owned).ok_or(()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| Fail(ScimError::invalid_value(format!("{k} must hold strings")), None))?
                        .join(","),
                )),
                Some(_) => Err(ScimError::invalid_value(format!("{k} must be a string")).into()),
            }
        };
        let num = |k: &str| -> ScimResult<Option<i64>> {
            match scim::query::get_ci(o, k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| Fail(ScimError::invalid_value(format!("{k} must be an integer")), None)),
                Some(Value::String(s)) => number_param(k, s).map(Some),
                Some(_) => Err(ScimError::invalid_value(format!("{k} must be an integer")).into()),
            }
        };
        let mut s = Search {
            filter: text("filter")?,
            sort_by: text("sortBy")?,
            attributes: text("attributes")?,
            excluded: text("excludedAttributes")?,
            ..Default::default()
        };
        if let Some(order) = text("sortOrder")? {
            s.descending = sort_order(&order)?;
        }
        Ok(s.finish(num("startIndex")?, num("count")?))
    }
}
