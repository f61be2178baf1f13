//! `scim-target`: a small, fast, in-memory SCIM 2.0 service. It is the target of the
//! benchmarks (`scripts/bench`, through the `scim-target` binary), meant to be faster than the
//! engine driving it so that the benchmarks measure the engine, not the app; and it is the test
//! kit's SCIM app (`testkit::ScimApp`, started in-process with [`ScimApp::start`]), with
//! switchable misbehaviours ([`Switches`]) that real apps show.
//!
//! Users and Groups: POST, GET (by id; lists with `startIndex`/`count` paging; filters
//! `attr eq "value"` joined by `or`, indexed for `id`, `userName`, `externalId`,
//! `displayName`), `POST /{Users,Groups}/.search` (RFC 7644 section 3.4.3), PUT, PATCH
//! (RFC 7644 add/replace/remove, simple and value-filtered paths) and DELETE.
//! `/ServiceProviderConfig` announces PATCH, filtering and the largest page.
//!
//! It counts the requests it received by method and resource ([`App::counts`]; for the
//! benchmarks also `GET /_bench/stats`, `POST /_bench/reset`), keeps each request's arrival,
//! method, path and status when asked ([`Options::log_requests`], [`App::requests`]), and records, for every user write
//! carrying the attribute named by `record` (default `title`), the value and the time it
//! arrived (`GET /_bench/received`: `[[value, unix_micros], ...]`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// One kind of resource, with its indexes.
#[derive(Default)]
struct Resources {
    /// By insertion order; `None` once deleted.
    items: Vec<Option<Value>>,
    by_id: HashMap<String, usize>,
    /// Lower-cased `userName` (users) or `displayName` (groups): unique.
    by_key: HashMap<String, usize>,
    by_external: HashMap<String, usize>,
    /// Positions of the live items, in order (rebuilt after a delete).
    live: Vec<usize>,
    live_dirty: bool,
}

impl Resources {
    fn key_of(&self, v: &Value, key_attr: &str) -> Option<String> {
        get_ci(v, key_attr).and_then(Value::as_str).map(str::to_lowercase)
    }

    fn index(&mut self, pos: usize, key_attr: &str) {
        let Some(v) = self.items[pos].as_ref() else { return };
        let key = self.key_of(v, key_attr);
        let ext = get_ci(v, "externalId").and_then(Value::as_str).map(str::to_owned);
        if let Some(k) = key {
            self.by_key.insert(k, pos);
        }
        if let Some(e) = ext {
            self.by_external.insert(e, pos);
        }
    }

    fn unindex(&mut self, pos: usize, key_attr: &str) {
        let Some(v) = self.items[pos].as_ref() else { return };
        if let Some(k) = self.key_of(v, key_attr) {
            if self.by_key.get(&k) == Some(&pos) {
                self.by_key.remove(&k);
            }
        }
        if let Some(e) = get_ci(v, "externalId").and_then(Value::as_str).map(str::to_owned) {
            if self.by_external.get(&e) == Some(&pos) {
                self.by_external.remove(&e);
            }
        }
    }

    fn live(&mut self) -> &[usize] {
        if self.live_dirty {
            self.live = (0..self.items.len()).filter(|i| self.items[*i].is_some()).collect();
            self.live_dirty = false;
        }
        &self.live
    }
}

/// Misbehaviours of the app, each off by default (a well-behaved SCIM service). Tests switch
/// them one at a time ([`App::set_switches`]). Later misbehaviours are added as new fields with
/// an "off" default, so `Switches { field: .., ..Default::default() }` keeps compiling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    /// `GET` lists ignore `startIndex`: every page starts at the first resource and says
    /// `"startIndex": 1` (`POST /.search` still pages correctly unless
    /// [`Switches::search_ignores_start_index`]).
    pub list_ignores_start_index: bool,
    /// `POST /.search` ignores `startIndex` the same way.
    pub search_ignores_start_index: bool,
    /// `startIndex` is read as a 0-based offset (lists and searches) and echoed as asked:
    /// `startIndex=1` skips the first resource. Without `startIndex` a list starts at the first.
    pub zero_based_start_index: bool,
    /// `count` is ignored: every page holds (up to) this many resources.
    pub fixed_page_size: Option<usize>,
    /// PATCH `add` appends values already present to a multi-valued attribute (`members`
    /// listed twice).
    pub patch_add_duplicates_members: bool,
    /// PATCH answers `204 No Content`, without the resource.
    pub patch_no_content: bool,
    /// `userName eq "..."` compares case-sensitively (userName stays unique ignoring case,
    /// as RFC 7643 section 4.1.1 wants).
    pub case_sensitive_user_name: bool,
    /// This share of writes (POST, PUT, PATCH, DELETE; 0 to 100), spread evenly (3 of every 5
    /// at 60), answer `400 invalidValue` and change nothing.
    pub fail_writes_percent: u8,
    /// This share of writes, spread evenly, answer `429 Too Many Requests` with
    /// `Retry-After: 0` and change nothing.
    pub throttle_writes_percent: u8,
    /// `GET /ServiceProviderConfig` (what a connection test reads) answers `503`.
    pub config_unavailable: bool,
    /// Offers cursor pagination on `GET` lists (draft-ietf-scim-cursor-pagination), announced
    /// in `/ServiceProviderConfig` as `"pagination": {"cursor": true}`: `?cursor=&count=`
    /// then each answer's `nextCursor`. Index paging is unaffected (and keeps its switches).
    pub cursor_pagination: bool,
    /// `(n, window)`: beyond `n` requests served in any `window` (a minute, say), every request
    /// answers `429 Too Many Requests` with `Retry-After`, the whole seconds (at least 1)
    /// until the window has room again, and changes nothing. Refused requests do not count.
    pub rate_limit: Option<(u32, Duration)>,
}

/// How the app starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// A bearer token every request must carry; `None` accepts any request.
    pub token: Option<String>,
    /// The largest page (`count` is capped to it), announced as `filter.maxResults`.
    pub max_results: usize,
    /// The user attribute whose written values `/_bench/received` records.
    pub record: String,
    pub switches: Switches,
    /// Keep every request received (when it arrived, its method, path and status):
    /// [`App::requests`]. Off by default (the benchmarks send many).
    pub log_requests: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token: None,
            max_results: 1000,
            record: "title".into(),
            switches: Switches::default(),
            log_requests: false,
        }
    }
}

/// A request the app received ([`App::requests`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// When it arrived.
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// The status it was answered with.
    pub status: u16,
}

/// Requests received for one resource type, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// `GET /{type}/{id}`.
    pub get: u64,
    /// `GET /{type}` (list pages and filtered lookups).
    pub list: u64,
    /// `POST /{type}/.search`.
    pub search: u64,
    pub post: u64,
    pub put: u64,
    pub patch: u64,
    pub delete: u64,
}

impl Tally {
    /// Writes: POST (create), PUT, PATCH, DELETE.
    pub fn writes(&self) -> u64 {
        self.post + self.put + self.patch + self.delete
    }
    /// Reads: GET by id, list pages and searches.
    pub fn reads(&self) -> u64 {
        self.get + self.list + self.search
    }
}

/// Requests received, by resource type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub users: Tally,
    pub groups: Tally,
}

impl Counts {
    pub fn writes(&self) -> u64 {
        self.users.writes() + self.groups.writes()
    }
}

const GET: usize = 0;
const LIST: usize = 1;
const SEARCH: usize = 2;
const POST: usize = 3;
const PUT: usize = 4;
const PATCH: usize = 5;
const DELETE: usize = 6;

/// The app's state: its resources, switches and counters.
pub struct App {
    token: Option<String>,
    max_results: usize,
    record: String,
    switches: Mutex<Switches>,
    users: Mutex<Resources>,
    groups: Mutex<Resources>,
    /// `[users, groups][GET..=DELETE]`.
    counts: [[AtomicU64; 7]; 2],
    received: Mutex<Vec<(String, u64)>>,
    /// Writes seen by [`Switches::fail_writes_percent`] and [`Switches::throttle_writes_percent`].
    faulted: [AtomicU64; 2],
    /// When the requests of the current [`Switches::rate_limit`] window were served.
    served: Mutex<VecDeque<Instant>>,
    log_requests: bool,
    log: Mutex<Vec<Logged>>,
}

type Target = App;

type Shared = Arc<Target>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// When a request arrived, in microseconds since the Unix epoch: the benchmark compares it with
/// its own wall clock, in another process.
#[allow(
    clippy::disallowed_methods,
    reason = "a test double outside the product (no directory crate here): its timestamps are compared with the benchmark's clock across processes"
)]
fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

fn scim(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/scim+json")], body.to_string()).into_response()
}

fn error(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Response {
    let mut body = json!({"schemas": [ERROR_SCHEMA], "status": status.as_u16().to_string(), "detail": detail});
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    scim(status, body)
}

fn authorized(t: &Target, headers: &HeaderMap) -> bool {
    match &t.token {
        None => true,
        Some(token) => headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|h| h == token),
    }
}

/// Whether write number `n` is one of `percent` in a hundred, spread evenly.
fn in_share(n: u64, percent: u8) -> bool {
    let p = u64::from(percent.min(100));
    (n + 1) * p / 100 > n * p / 100
}

/// The answer a write gets from the switched faults, if any (after authentication).
fn write_fault(t: &Target) -> Option<Response> {
    let sw = lock(&t.switches).clone();
    if sw.fail_writes_percent > 0 && in_share(t.faulted[0].fetch_add(1, Ordering::Relaxed), sw.fail_writes_percent) {
        return Some(error(StatusCode::BAD_REQUEST, Some("invalidValue"), "switched failure: fail_writes_percent"));
    }
    if sw.throttle_writes_percent > 0
        && in_share(t.faulted[1].fetch_add(1, Ordering::Relaxed), sw.throttle_writes_percent)
    {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, None, "switched failure: throttle_writes_percent");
        r.headers_mut().insert("retry-after", HeaderValue::from_static("0"));
        return Some(r);
    }
    None
}

/// The answer of a request beyond [`Switches::rate_limit`], if it is one (counting it when served).
fn over_rate_limit(t: &Target, at: Instant) -> Option<Response> {
    let (n, window) = lock(&t.switches).rate_limit?;
    let mut served = lock(&t.served);
    while served.front().is_some_and(|f| at.saturating_duration_since(*f) >= window) {
        served.pop_front();
    }
    if served.len() < n as usize {
        served.push_back(at);
        return None;
    }
    // Room again when the oldest served request of the window leaves it.
    let wait = served.front().map_or(window, |f| window.saturating_sub(at.saturating_duration_since(*f)));
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, None, "switched failure: rate_limit");
    if let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    Some(r)
}

/// In front of every SCIM route: [`Switches::rate_limit`], and the request log.
async fn gatekeeper(State(t): State<Shared>, req: Request, next: Next) -> Response {
    let at = Instant::now();
    if req.uri().path().starts_with("/_bench/") {
        return next.run(req).await;
    }
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let response = match over_rate_limit(&t, at) {
        Some(refused) => refused,
        None => next.run(req).await,
    };
    if t.log_requests {
        lock(&t.log).push(Logged { at, method, path, status: response.status().as_u16() });
    }
    response
}

fn count(t: &Target, kind: Kind, what: usize) {
    t.counts[kind as usize][what].fetch_add(1, Ordering::Relaxed);
}

fn method_slot(m: &Method) -> usize {
    match *m {
        Method::GET => GET,
        Method::PUT => PUT,
        Method::PATCH => PATCH,
        Method::DELETE => DELETE,
        _ => POST,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Users = 0,
    Groups = 1,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "Users" => Some(Kind::Users),
            "Groups" => Some(Kind::Groups),
            _ => None,
        }
    }
    fn key_attr(self) -> &'static str {
        match self {
            Kind::Users => "userName",
            Kind::Groups => "displayName",
        }
    }
    fn schema(self) -> &'static str {
        match self {
            Kind::Users => USER_SCHEMA,
            Kind::Groups => GROUP_SCHEMA,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Users => "User",
            Kind::Groups => "Group",
        }
    }
}

fn store(t: &Target, kind: Kind) -> &Mutex<Resources> {
    match kind {
        Kind::Users => &t.users,
        Kind::Groups => &t.groups,
    }
}

/// `attr eq "value" [or attr eq "value" ...]`.
fn parse_filter(f: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = f.trim_start();
    loop {
        let end = rest.find(char::is_whitespace)?;
        let attr = rest[..end].to_owned();
        rest = rest[end..].trim_start();
        let (op, r) = rest.split_at(rest.find(char::is_whitespace)?);
        if !op.eq_ignore_ascii_case("eq") {
            return None;
        }
        rest = r.trim_start();
        let mut chars = rest.char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        let mut close = None;
        for (i, c) in chars {
            match (escaped, c) {
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    close = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        rest = rest[close? + 1..].trim_start();
        out.push((attr, value));
        if rest.is_empty() {
            return Some(out);
        }
        let (word, r) = rest.split_at(rest.find(char::is_whitespace)?);
        if !word.eq_ignore_ascii_case("or") {
            return None;
        }
        rest = r.trim_start();
    }
}

/// Where a page starts (0-based offset into the matches), how many it holds, and the
/// `startIndex` the answer says, under the switches.
fn page_params(
    sw: &Switches,
    start: Option<i64>,
    count: Option<usize>,
    max: usize,
    ignores_start: bool,
) -> (usize, usize, i64) {
    let count = match sw.fixed_page_size {
        Some(n) => n.max(1),
        None => count.unwrap_or(max).min(max),
    };
    if ignores_start {
        return (0, count, 1);
    }
    if sw.zero_based_start_index {
        let start = start.unwrap_or(0).max(0);
        return (start as usize, count, start);
    }
    let start = start.unwrap_or(1).max(1);
    ((start - 1) as usize, count, start)
}

fn list_response(items: Vec<Value>, total: usize, start: i64) -> Response {
    scim(
        StatusCode::OK,
        json!({"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": start, "itemsPerPage": items.len(),
            "Resources": items}),
    )
}

/// A list query: from `GET /{type}?...` or the body of `POST /{type}/.search`.
struct ListQuery {
    filter: Option<String>,
    start: Option<i64>,
    count: Option<usize>,
}

async fn list(
    State(t): State<Shared>,
    Path(kind): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(kind) = Kind::parse(&kind) else { return error(StatusCode::NOT_FOUND, None, "no such endpoint") };
    count(&t, kind, LIST);
    if !authorized(&t, &headers) {
        return error(StatusCode::UNAUTHORIZED, None, "invalid token");
    }
    let query = ListQuery {
        filter: q.get("filter").cloned(),
        start: q.get("startIndex").and_then(|s| s.parse().ok()),
        count: q.get("count").and_then(|s| s.parse().ok()),
    };
    let sw = lock(&t.switches).clone();
    if let (true, Some(cursor), None) = (sw.cursor_pagination, q.get("cursor"), &query.filter) {
        let Ok(offset) = (if cursor.is_empty() { Ok(0) } else { cursor.parse::<usize>() }) else {
            return error(StatusCode::BAD_REQUEST, Some("invalidCursor"), "unknown cursor");
        };
        let n = query.count.unwrap_or(t.max_results).min(t.max_results);
        let mut r = lock(store(&t, kind));
        let live = r.live().to_vec();
        let items: Vec<Value> = live.iter().skip(offset).take(n).filter_map(|i| r.items[*i].clone()).collect();
        let mut body = json!({"schemas": [LIST_SCHEMA], "totalResults": live.len(), "itemsPerPage": items.len(),
            "Resources": items});
        if offset + n < live.len() {
            body["nextCursor"] = json!((offset + n).to_string());
        }
        return scim(StatusCode::OK, body);
    }
    let ignores = sw.list_ignores_start_index;
    list_answer(&t, kind, &query, ignores)
}

async fn search(State(t): State<Shared>, Path(kind): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(kind) = Kind::parse(&kind) else { return error(StatusCode::NOT_FOUND, None, "no such endpoint") };
    count(&t, kind, SEARCH);
    if !authorized(&t, &headers) {
        return error(StatusCode::UNAUTHORIZED, None, "invalid token");
    }
    let body = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let int =
        |k: &str| get_ci(&body, k).and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())));
    let query = ListQuery {
        filter: get_ci(&body, "filter").and_then(Value::as_str).map(str::to_owned),
        start: int("startIndex"),
        count: int("count").map(|c| c.max(0) as usize),
    };
    let ignores = lock(&t.switches).search_ignores_start_index;
    list_answer(&t, kind, &query, ignores)
}

fn list_answer(t: &Target, kind: Kind, q: &ListQuery, ignores_start: bool) -> Response {
    let sw = lock(&t.switches).clone();
    let (skip, n, echoed) = page_params(&sw, q.start, q.count, t.max_results, ignores_start);
    let mut r = lock(store(t, kind));
    if let Some(f) = &q.filter {
        let Some(terms) = parse_filter(f) else {
            return error(StatusCode::BAD_REQUEST, Some("invalidFilter"), "only `attr eq \"value\"` joined by `or`");
        };
        let mut hits: Vec<usize> = Vec::new();
        for (attr, value) in &terms {
            let found: Vec<usize> = if attr.eq_ignore_ascii_case("id") {
                r.by_id.get(value).copied().into_iter().collect()
            } else if attr.eq_ignore_ascii_case(kind.key_attr()) {
                let exact = kind == Kind::Users && sw.case_sensitive_user_name;
                r.by_key
                    .get(&value.to_lowercase())
                    .copied()
                    .filter(|p| {
                        !exact
                            || r.items[*p].as_ref().and_then(|v| get_ci(v, kind.key_attr())).and_then(Value::as_str)
                                == Some(value.as_str())
                    })
                    .into_iter()
                    .collect()
            } else if attr.eq_ignore_ascii_case("externalId") {
                r.by_external.get(value).copied().into_iter().collect()
            } else {
                let live = r.live().to_vec();
                live.into_iter()
                    .filter(|i| {
                        r.items[*i].as_ref().and_then(|v| get_ci(v, attr)).and_then(Value::as_str) == Some(value)
                    })
                    .collect()
            };
            for i in found {
                if !hits.contains(&i) {
                    hits.push(i);
                }
            }
        }
        hits.sort_unstable();
        let total = hits.len();
        let items = hits.iter().skip(skip).take(n).filter_map(|i| r.items[*i].clone()).collect();
        return list_response(items, total, echoed);
    }
    let items: Vec<Value> = {
        let live = r.live();
        live.iter().skip(skip).take(n).copied().collect::<Vec<_>>()
    }
    .into_iter()
    .filter_map(|i| r.items[i].clone())
    .collect();
    let total = r.live().len();
    list_response(items, total, echoed)
}

fn meta(kind: Kind, id: &str) -> Value {
    json!({"resourceType": kind.name(), "location": format!("/{}/{id}", match kind { Kind::Users => "Users", Kind::Groups => "Groups" })})
}

fn record(t: &Target, kind: Kind, v: &Value) {
    if kind == Kind::Users {
        if let Some(s) = get_ci(v, &t.record).and_then(Value::as_str) {
            lock(&t.received).push((s.to_owned(), now_micros()));
        }
    }
}

/// The body as a JSON object, or the 400 answer to send (boxed: a response is large).
fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(Box::new(error(StatusCode::BAD_REQUEST, Some("invalidSyntax"), "the body is not a JSON object"))),
    }
}

async fn create(State(t): State<Shared>, Path(kind): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(kind) = Kind::parse(&kind) else { return error(StatusCode::NOT_FOUND, None, "no such endpoint") };
    count(&t, kind, POST);
    if !authorized(&t, &headers) {
        return error(StatusCode::UNAUTHORIZED, None, "invalid token");
    }
    if let Some(r) = write_fault(&t) {
        return r;
    }
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match t.insert(kind, v) {
        Ok(v) => {
            record(&t, kind, &v);
            scim(StatusCode::CREATED, v)
        }
        Err(r) => *r,
    }
}

impl App {
    /// Stores a new resource (a POST without the HTTP), returning it with its `id` and `meta`.
    fn insert(&self, kind: Kind, mut v: Value) -> Result<Value, Box<Response>> {
        let Some(key) = get_ci(&v, kind.key_attr()).and_then(Value::as_str).map(str::to_lowercase) else {
            let detail = format!("{} is required", kind.key_attr());
            return Err(Box::new(error(StatusCode::BAD_REQUEST, Some("invalidValue"), &detail)));
        };
        let id = uuid::Uuid::now_v7().simple().to_string();
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), json!(id));
            o.insert("meta".into(), meta(kind, &id));
            o.entry("schemas").or_insert_with(|| json!([kind.schema()]));
        }
        let mut r = lock(store(self, kind));
        if r.by_key.contains_key(&key) {
            let detail = format!("{} is already taken", kind.key_attr());
            return Err(Box::new(error(StatusCode::CONFLICT, Some("uniqueness"), &detail)));
        }
        let pos = r.items.len();
        r.items.push(Some(v.clone()));
        r.by_id.insert(id, pos);
        r.index(pos, kind.key_attr());
        if !r.live_dirty {
            r.live.push(pos);
        }
        Ok(v)
    }
}

async fn one(
    State(t): State<Shared>,
    Path((kind, id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(kind) = Kind::parse(&kind) else { return error(StatusCode::NOT_FOUND, None, "no such endpoint") };
    count(&t, kind, method_slot(&method));
    if !authorized(&t, &headers) {
        return error(StatusCode::UNAUTHORIZED, None, "invalid token");
    }
    if method != Method::GET {
        if let Some(r) = write_fault(&t) {
            return r;
        }
    }
    let sw = lock(&t.switches).clone();
    let mut r = lock(store(&t, kind));
    let Some(pos) = r.by_id.get(&id).copied() else {
        return error(StatusCode::NOT_FOUND, None, &format!("{} {id} not found", kind.name()));
    };
    match method {
        Method::GET => scim(StatusCode::OK, r.items[pos].clone().unwrap_or(Value::Null)),
        Method::DELETE => {
            r.unindex(pos, kind.key_attr());
            r.items[pos] = None;
            r.by_id.remove(&id);
            r.live_dirty = true;
            StatusCode::NO_CONTENT.into_response()
        }
        Method::PUT | Method::PATCH => {
            let body = match parse_body(&body) {
                Ok(v) => v,
                Err(resp) => return *resp,
            };
            let Some(current) = r.items[pos].clone() else {
                return error(StatusCode::NOT_FOUND, None, "gone");
            };
            let mut next = if method == Method::PUT {
                body
            } else {
                match apply_patch(current.clone(), &body, sw.patch_add_duplicates_members) {
                    Ok(v) => v,
                    Err(e) => return error(StatusCode::BAD_REQUEST, Some("invalidPath"), &e),
                }
            };
            if let Some(o) = next.as_object_mut() {
                o.insert("id".into(), json!(id));
                o.insert("meta".into(), meta(kind, &id));
                o.entry("schemas").or_insert_with(|| json!([kind.schema()]));
            }
            let new_key = r.key_of(&next, kind.key_attr());
            if new_key.is_none() {
                return error(StatusCode::BAD_REQUEST, Some("invalidValue"), "the key attribute is required");
            }
            if new_key.as_ref().and_then(|k| r.by_key.get(k)).is_some_and(|p| *p != pos) {
                return error(StatusCode::CONFLICT, Some("uniqueness"), "the key attribute is already taken");
            }
            r.unindex(pos, kind.key_attr());
            r.items[pos] = Some(next.clone());
            r.index(pos, kind.key_attr());
            drop(r);
            record(&t, kind, &next);
            if method == Method::PATCH && sw.patch_no_content {
                return StatusCode::NO_CONTENT.into_response();
            }
            scim(StatusCode::OK, next)
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, None, "method not allowed"),
    }
}

/// A PATCH path: `[urn:...:]attr[.sub]` or `attr[fa eq "fv"][.sub]`.
struct PatchPath {
    schema: Option<String>,
    attr: String,
    filter: Option<(String, String)>,
    sub: Option<String>,
}

fn parse_path(p: &str) -> Option<PatchPath> {
    let (schema, rest) = if p.starts_with("urn:") {
        // The attribute follows the last ':' before any '[' or '.'.
        let head_end = p.find('[').unwrap_or(p.len());
        let colon = p[..head_end].rfind(':')?;
        (Some(p[..colon].to_owned()), &p[colon + 1..])
    } else {
        (None, p)
    };
    if let Some(open) = rest.find('[') {
        let close = rest.rfind(']')?;
        let attr = rest[..open].to_owned();
        let terms = parse_filter(&rest[open + 1..close])?;
        let (fa, fv) = terms.into_iter().next()?;
        let sub = rest[close + 1..].strip_prefix('.').map(str::to_owned);
        return Some(PatchPath { schema, attr, filter: Some((fa, fv)), sub });
    }
    let (attr, sub) = match rest.split_once('.') {
        Some((a, s)) => (a.to_owned(), Some(s.to_owned())),
        None => (rest.to_owned(), None),
    };
    Some(PatchPath { schema, attr, filter: None, sub })
}

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object"),
    }
}

/// Adds `more` to the multi-valued `have`: values already present (same `value`, or equal)
/// are skipped unless `duplicate`.
fn add_values(have: &mut Vec<Value>, more: &[Value], duplicate: bool) {
    for m in more {
        let present = have.iter().any(|h| match (h.get("value"), m.get("value")) {
            (Some(a), Some(b)) => a == b,
            _ => h == m,
        });
        if duplicate || !present {
            have.push(m.clone());
        }
    }
}

fn apply_one(
    resource: &mut Value,
    op: &str,
    path: Option<&str>,
    value: Option<&Value>,
    duplicate: bool,
) -> Result<(), String> {
    let add = op.eq_ignore_ascii_case("add");
    let remove = op.eq_ignore_ascii_case("remove");
    let Some(path) = path else {
        let Some(Value::Object(vals)) = value else { return Err("a PATCH without path needs an object".into()) };
        let root = obj(resource);
        for (k, v) in vals {
            match (add, root.get_mut(k), v) {
                (true, Some(Value::Array(have)), Value::Array(more)) => add_values(have, more, duplicate),
                _ => {
                    root.insert(k.clone(), v.clone());
                }
            }
        }
        return Ok(());
    };
    let p = parse_path(path).ok_or_else(|| format!("bad path {path}"))?;
    let root = obj(resource);
    let container = match &p.schema {
        Some(s) => obj(root.entry(s.clone()).or_insert_with(|| Value::Object(Map::new()))),
        None => root,
    };
    match (&p.filter, &p.sub) {
        (None, None) => {
            if remove {
                match (container.get_mut(&p.attr), value) {
                    (Some(Value::Array(have)), Some(Value::Array(drop))) => have
                        .retain(|h| !drop.iter().any(|d| d.get("value").is_some_and(|dv| h.get("value") == Some(dv)))),
                    _ => {
                        container.remove(&p.attr);
                    }
                }
            } else if let Some(v) = value {
                match (add, container.get_mut(&p.attr), v) {
                    (true, Some(Value::Array(have)), Value::Array(more)) => add_values(have, more, duplicate),
                    _ => {
                        container.insert(p.attr.clone(), v.clone());
                    }
                }
            }
        }
        (None, Some(sub)) => {
            let o = obj(container.entry(p.attr.clone()).or_insert_with(|| Value::Object(Map::new())));
            match value {
                Some(v) if !remove => {
                    o.insert(sub.clone(), v.clone());
                }
                _ => {
                    o.remove(sub);
                }
            }
        }
        (Some((fa, fv)), sub) => {
            let list = container.entry(p.attr.clone()).or_insert_with(|| Value::Array(vec![]));
            if !list.is_array() {
                *list = Value::Array(vec![]);
            }
            let Value::Array(items) = list else { return Ok(()) };
            let matches = |el: &Value| el.get(fa).and_then(Value::as_str) == Some(fv.as_str());
            match (remove, sub) {
                (true, None) => items.retain(|el| !matches(el)),
                (true, Some(s)) => {
                    for el in items.iter_mut().filter(|e| matches(e)) {
                        obj(el).remove(s);
                    }
                }
                (false, sub) => {
                    let sub = sub.clone().unwrap_or_else(|| "value".into());
                    let v = value.cloned().unwrap_or(Value::Null);
                    match items.iter_mut().find(|e| matches(e)) {
                        Some(el) => {
                            obj(el).insert(sub, v);
                        }
                        None => items.push(json!({ fa.clone(): fv, sub: v })),
                    }
                }
            }
        }
    }
    Ok(())
}

fn apply_patch(mut resource: Value, body: &Value, duplicate: bool) -> Result<Value, String> {
    let ops = get_ci(body, "Operations").and_then(Value::as_array).ok_or("Operations is required")?;
    for o in ops {
        let op = get_ci(o, "op").and_then(Value::as_str).ok_or("op is required")?;
        let path = get_ci(o, "path").and_then(Value::as_str);
        apply_one(&mut resource, op, path, get_ci(o, "value"), duplicate)?;
    }
    Ok(resource)
}

async fn config(State(t): State<Shared>) -> Response {
    if lock(&t.switches).config_unavailable {
        return error(StatusCode::SERVICE_UNAVAILABLE, None, "switched failure: config_unavailable");
    }
    let mut body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true}, "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": t.max_results}, "changePassword": {"supported": false},
        "sort": {"supported": false}, "etag": {"supported": false},
        "authenticationSchemes": [{"type": "oauthbearertoken", "name": "Bearer", "description": "Bearer token"}]});
    if lock(&t.switches).cursor_pagination {
        body["pagination"] = json!({"cursor": true, "index": true, "defaultPaginationMethod": "index"});
    }
    scim(StatusCode::OK, body)
}

async fn stats(State(t): State<Shared>) -> Response {
    let c = t.counts();
    let (u, g) = (c.users, c.groups);
    let users = lock(&t.users).by_id.len();
    let groups = lock(&t.groups).by_id.len();
    axum::Json(json!({"get": u.get + u.list + g.get + g.list, "search": u.search + g.search,
        "post": u.post + g.post, "put": u.put + g.put, "patch": u.patch + g.patch, "delete": u.delete + g.delete,
        "users": users, "groups": groups}))
    .into_response()
}

async fn reset(State(t): State<Shared>) -> Response {
    t.reset_counts();
    lock(&t.received).clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn received(State(t): State<Shared>) -> Response {
    let r = lock(&t.received);
    axum::Json(json!(r.iter().map(|(v, at)| json!([v, at])).collect::<Vec<_>>())).into_response()
}

/// The member entries of a group that point at `user_id`.
fn is_member(m: &Value, user_id: &str) -> bool {
    m.get("value").and_then(Value::as_str) == Some(user_id)
}

impl App {
    pub fn new(options: Options) -> Arc<Self> {
        Arc::new(App {
            token: options.token,
            max_results: options.max_results.max(1),
            record: options.record,
            switches: Mutex::new(options.switches),
            users: Mutex::new(Resources::default()),
            groups: Mutex::new(Resources::default()),
            counts: Default::default(),
            received: Mutex::new(Vec::new()),
            faulted: Default::default(),
            served: Mutex::new(VecDeque::new()),
            log_requests: options.log_requests,
            log: Mutex::new(Vec::new()),
        })
    }

    /// Every request received so far, in the order they arrived (empty unless
    /// [`Options::log_requests`]): those refused by [`Switches::rate_limit`] too.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.log).clone()
    }

    pub fn switches(&self) -> Switches {
        lock(&self.switches).clone()
    }

    /// Changes the misbehaviours from the next request on.
    pub fn set_switches(&self, switches: Switches) {
        *lock(&self.switches) = switches;
    }

    /// The requests received since the start or the last [`App::reset_counts`].
    pub fn counts(&self) -> Counts {
        let tally = |k: usize| {
            let c = |i: usize| self.counts[k][i].load(Ordering::Relaxed);
            Tally {
                get: c(GET),
                list: c(LIST),
                search: c(SEARCH),
                post: c(POST),
                put: c(PUT),
                patch: c(PATCH),
                delete: c(DELETE),
            }
        };
        Counts { users: tally(0), groups: tally(1) }
    }

    pub fn reset_counts(&self) {
        for c in self.counts.iter().flatten() {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn all(&self, kind: Kind) -> Vec<Value> {
        let mut r = lock(store(self, kind));
        let live = r.live().to_vec();
        live.into_iter().filter_map(|i| r.items[i].clone()).collect()
    }

    fn by_key(&self, kind: Kind, key: &str) -> Option<Value> {
        let r = lock(store(self, kind));
        r.by_key.get(&key.to_lowercase()).and_then(|p| r.items[*p].clone())
    }

    /// Changes a stored resource in place (as an admin of the app would), keeping the indexes.
    fn modify(&self, kind: Kind, key: &str, change: impl FnOnce(&mut Value)) -> bool {
        let mut r = lock(store(self, kind));
        let Some(pos) = r.by_key.get(&key.to_lowercase()).copied() else { return false };
        r.unindex(pos, kind.key_attr());
        if let Some(v) = r.items[pos].as_mut() {
            change(v);
        }
        r.index(pos, kind.key_attr());
        true
    }

    /// Every user, in creation order.
    pub fn users(&self) -> Vec<Value> {
        self.all(Kind::Users)
    }

    /// Every group, in creation order.
    pub fn groups(&self) -> Vec<Value> {
        self.all(Kind::Groups)
    }

    /// The user with this `userName` (ignoring case).
    pub fn user(&self, user_name: &str) -> Option<Value> {
        self.by_key(Kind::Users, user_name)
    }

    /// The group with this `displayName` (ignoring case).
    pub fn group(&self, display_name: &str) -> Option<Value> {
        self.by_key(Kind::Groups, display_name)
    }

    /// Creates a user directly in the app (not counted as a request); returns it with its id.
    pub fn create_user(&self, user: Value) -> Option<Value> {
        self.insert(Kind::Users, user).ok()
    }

    /// Creates a group directly in the app (not counted as a request); returns it with its id.
    pub fn create_group(&self, group: Value) -> Option<Value> {
        self.insert(Kind::Groups, group).ok()
    }

    /// Sets an attribute of a user directly in the app. False when there is no such user.
    pub fn set_user_attribute(&self, user_name: &str, attr: &str, value: Value) -> bool {
        self.modify(Kind::Users, user_name, |u| {
            obj(u).insert(attr.to_owned(), value);
        })
    }

    /// Adds a member entry (`{"value": user_id}`) to a group directly in the app, even when one
    /// is there already. False when there is no such group.
    pub fn add_member(&self, display_name: &str, user_id: &str) -> bool {
        self.modify(Kind::Groups, display_name, |g| {
            let members = obj(g).entry("members").or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(m) = members {
                m.push(json!({"value": user_id}));
            } else {
                *members = json!([{"value": user_id}]);
            }
        })
    }

    /// Removes every member entry of `user_id` from a group directly in the app. False when
    /// there is no such group.
    pub fn remove_member(&self, display_name: &str, user_id: &str) -> bool {
        self.modify(Kind::Groups, display_name, |g| {
            if let Some(Value::Array(m)) = obj(g).get_mut("members") {
                m.retain(|e| !is_member(e, user_id));
            }
        })
    }

    /// The member ids of a group as the app lists them (duplicates included), or `None`.
    pub fn members(&self, display_name: &str) -> Option<Vec<String>> {
        let g = self.group(display_name)?;
        Some(
            get_ci(&g, "members")
                .and_then(Value::as_array)
                .map(|m| m.iter().filter_map(|e| e.get("value").and_then(Value::as_str).map(str::to_owned)).collect())
                .unwrap_or_default(),
        )
    }
}

/// The app's HTTP routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ServiceProviderConfig", get(config))
        .route("/_bench/stats", get(stats))
        .route("/_bench/reset", post(reset))
        .route("/_bench/received", get(received))
        .route("/{kind}", get(list).post(create))
        .route("/{kind}/.search", post(search))
        .route("/{kind}/{id}", get(one).put(one).patch(one).delete(one))
        .layer(axum::middleware::from_fn_with_state(app.clone(), gatekeeper))
        .with_state(app)
}

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) -> std::io::Result<()> {
    axum::serve(listener, router(app)).await
}

/// The app running in-process on 127.0.0.1 (on a thread of its own, so it serves whatever the
/// caller's runtime does); stopped when dropped. Derefs to its [`App`] for the switches,
/// counters and direct changes.
pub struct ScimApp {
    app: Arc<App>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ScimApp {
    /// Starts the app on a free port of 127.0.0.1.
    pub fn start(options: Options) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let app = App::new(options);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = app.clone();
        std::thread::Builder::new().name(format!("scim-target {addr}")).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                tokio::select! {
                    _ = serve(listener, served) => {}
                    _ = stopped => {}
                }
            })
        })?;
        Ok(Self { app, addr, stop: Some(stop) })
    }

    /// The SCIM base URL, `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::ops::Deref for ScimApp {
    type Target = App;
    fn deref(&self) -> &App {
        &self.app
    }
}

impl Drop for ScimApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_writes_is_spread_evenly() {
        let hits: Vec<bool> = (0..10).map(|n| in_share(n, 60)).collect();
        assert_eq!(hits.iter().filter(|h| **h).count(), 6);
        assert_eq!(&hits[..5], &[false, true, false, true, true]);
        assert!((0..100).all(|n| !in_share(n, 0)));
        assert!((0..100).all(|n| in_share(n, 100)));
    }

    #[test]
    fn the_rate_limit_refuses_beyond_n_a_window_saying_when_to_come_back() {
        let switches = Switches { rate_limit: Some((2, Duration::from_secs(10))), ..Default::default() };
        let app = App::new(Options { switches, ..Default::default() });
        let t0 = Instant::now();
        assert!(over_rate_limit(&app, t0).is_none());
        assert!(over_rate_limit(&app, t0 + Duration::from_secs(1)).is_none());
        let refused = over_rate_limit(&app, t0 + Duration::from_millis(2500)).unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "8", "7.5 s until the first leaves the window");
        assert!(over_rate_limit(&app, t0 + Duration::from_secs(10)).is_none(), "the first left the window");
    }

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_filter(r#"externalId eq "a\"b" or userName eq "x y""#).unwrap(),
            vec![("externalId".into(), "a\"b".into()), ("userName".into(), "x y".into())]
        );
        assert!(parse_filter("userName co \"x\"").is_none());
    }

    #[test]
    fn patches_apply() {
        let u = json!({"userName": "a", "emails": [{"type": "work", "value": "a@x"}], "name": {"givenName": "A"}});
        let p = json!({"Operations": [
            {"op": "replace", "path": "emails[type eq \"work\"].value", "value": "b@x"},
            {"op": "replace", "path": "name.familyName", "value": "B"},
            {"op": "add", "path": "title", "value": "CTO"},
            {"op": "remove", "path": "name.givenName"}]});
        let out = apply_patch(u, &p, false).unwrap();
        assert_eq!(out["emails"][0]["value"], "b@x");
        assert_eq!(out["name"], json!({"familyName": "B"}));
        assert_eq!(out["title"], "CTO");
        let g = json!({"displayName": "g", "members": [{"value": "1"}, {"value": "2"}]});
        let out = apply_patch(
            g,
            &json!({"Operations": [{"op": "remove", "path": "members[value eq \"1\"]"},
            {"op": "add", "path": "members", "value": [{"value": "3"}]}]}),
            false,
        )
        .unwrap();
        assert_eq!(out["members"], json!([{"value": "2"}, {"value": "3"}]));
    }

    #[test]
    fn pages_follow_the_switches() {
        let good = Switches::default();
        assert_eq!(page_params(&good, Some(21), Some(20), 1000, false), (20, 20, 21));
        assert_eq!(page_params(&good, None, None, 100, false), (0, 100, 1));
        assert_eq!(page_params(&good, Some(1), Some(5000), 100, false), (0, 100, 1));
        assert_eq!(page_params(&good, Some(21), Some(20), 1000, true), (0, 20, 1));
        let zero = Switches { zero_based_start_index: true, ..Default::default() };
        assert_eq!(page_params(&zero, Some(21), Some(20), 1000, false), (21, 20, 21));
        assert_eq!(page_params(&zero, None, Some(20), 1000, false), (0, 20, 0));
        let fixed = Switches { fixed_page_size: Some(20), ..Default::default() };
        assert_eq!(page_params(&fixed, Some(101), Some(100), 1000, false), (100, 20, 101));
    }

    #[test]
    fn member_adds_skip_present_members_unless_switched() {
        let g = json!({"displayName": "g", "members": [{"value": "1"}]});
        let add = json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": "1"}, {"value": "2"}]}]});
        let out = apply_patch(g.clone(), &add, false).unwrap();
        assert_eq!(out["members"], json!([{"value": "1"}, {"value": "2"}]));
        let out = apply_patch(g.clone(), &add, true).unwrap();
        assert_eq!(out["members"], json!([{"value": "1"}, {"value": "1"}, {"value": "2"}]));
        let no_path = json!({"Operations": [{"op": "add", "value": {"members": [{"value": "1"}]}}]});
        assert_eq!(apply_patch(g.clone(), &no_path, false).unwrap()["members"], json!([{"value": "1"}]));
        assert_eq!(apply_patch(g, &no_path, true).unwrap()["members"], json!([{"value": "1"}, {"value": "1"}]));
    }

    #[test]
    fn direct_changes_keep_the_indexes() {
        let app = App::new(Options::default());
        let u = app.create_user(json!({"userName": "Ann", "externalId": "e1"})).unwrap();
        let id = u["id"].as_str().unwrap().to_owned();
        app.create_group(json!({"displayName": "Sales"})).unwrap();
        assert!(app.add_member("sales", &id));
        assert!(app.add_member("Sales", &id));
        assert_eq!(app.members("Sales").unwrap(), vec![id.clone(), id.clone()]);
        assert!(app.remove_member("Sales", &id));
        assert_eq!(app.members("Sales").unwrap(), Vec::<String>::new());
        assert!(app.set_user_attribute("ann", "userName", json!("Bea")));
        assert!(app.user("ann").is_none());
        assert_eq!(app.user("BEA").unwrap()["id"], json!(id));
        assert!(!app.set_user_attribute("nobody", "title", json!("x")));
        assert_eq!(app.counts(), Counts::default());
    }
}
