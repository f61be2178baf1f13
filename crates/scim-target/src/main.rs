//! `scim-target`: a small, fast, in-memory SCIM 2.0 service, the target of the benchmarks
//! (`scripts/bench`). It is meant to be faster than the engine driving it, so that the
//! benchmarks measure the engine, not the app.
//!
//! Users and Groups: POST, GET (by id; lists with `startIndex`/`count` paging; filters
//! `attr eq "value"` joined by `or`, indexed for `id`, `userName`, `externalId`,
//! `displayName`), PUT, PATCH (RFC 7644 add/replace/remove, simple and value-filtered paths)
//! and DELETE. `/ServiceProviderConfig` announces PATCH, filtering and the largest page.
//!
//! For the benchmarks it also counts the requests it received by method
//! (`GET /_bench/stats`, `POST /_bench/reset`) and records, for every user write carrying the
//! attribute named by `--record` (default `title`), the value and the time it arrived
//! (`GET /_bench/received`: `[[value, unix_micros], ...]`).
//!
//! `scim-target [--listen 127.0.0.1:0] [--token TOKEN] [--max-results 1000] [--record title]`
//! prints `listening on http://ADDR` on its first line of output.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
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

struct Target {
    token: Option<String>,
    max_results: usize,
    record: String,
    users: Mutex<Resources>,
    groups: Mutex<Resources>,
    counts: [AtomicU64; 5],
    received: Mutex<Vec<(String, u64)>>,
}

type Shared = Arc<Target>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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

fn count(t: &Target, m: &Method) {
    let i = match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        _ => 4,
    };
    t.counts[i].fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Users,
    Groups,
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

fn page_params(q: &HashMap<String, String>, max: usize) -> (usize, usize) {
    let start = q.get("startIndex").and_then(|s| s.parse::<usize>().ok()).unwrap_or(1).max(1);
    let count = q.get("count").and_then(|s| s.parse::<usize>().ok()).unwrap_or(max).min(max);
    (start, count)
}

fn list_response(items: Vec<Value>, total: usize, start: usize) -> Response {
    scim(
        StatusCode::OK,
        json!({"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": start, "itemsPerPage": items.len(),
            "Resources": items}),
    )
}

async fn list(
    State(t): State<Shared>,
    Path(kind): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    count(&t, &Method::GET);
    if !authorized(&t, &headers) {
        return error(StatusCode::UNAUTHORIZED, None, "invalid token");
    }
    let Some(kind) = Kind::parse(&kind) else { return error(StatusCode::NOT_FOUND, None, "no such endpoint") };
    let (start, n) = page_params(&q, t.max_results);
    let mut r = lock(store(&t, kind));
    if let Some(f) = q.get("filter") {
        let Some(terms) = parse_filter(f) else {
            return error(StatusCode::BAD_REQUEST, Some("invalidFilter"), "only `attr eq \"value\"` joined by `or`");
        };
        let mut hits: Vec<usize> = Vec::new();
        for (attr, value) in &terms {
            let found: Vec<usize> = if attr.eq_ignore_ascii_case("id") {
                r.by_id.get(value).copied().into_iter().collect()
            } else if attr.eq_ignore_ascii_case(kind.key_attr()) {
                r.by_key.get(&value.to_lowercase()).copied().into_iter().collect()
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
        let items = hits.iter().skip(start - 1).take(n).filter_map(|i| r.items[*i].clone()).collect();
        return list_response(items, total, start);
    }
    let items: Vec<Value> = {
        let live = r.live();
        live.iter().skip(start - 1).take(n).copied().collect::<Vec<_>>()
    }
    .into_iter()
    .filter_map(|i| r.items[i].clone())
    .collect();
    let total = r.live().len();
    list_response(items, total, start)
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
    count(&t, &Method::POST);
    if !authorized(&t, &headers) {
        return error(StatusCode::UNAUTHORIZED, None, "invalid token");
    }
    let Some(kind) = Kind::parse(&kind) else { return error(StatusCode::NOT_FOUND, None, "no such endpoint") };
    let mut v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(key) = get_ci(&v, kind.key_attr()).and_then(Value::as_str).map(str::to_lowercase) else {
        return error(StatusCode::BAD_REQUEST, Some("invalidValue"), &format!("{} is required", kind.key_attr()));
    };
    let id = uuid::Uuid::now_v7().simple().to_string();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(id));
        o.insert("meta".into(), meta(kind, &id));
        o.entry("schemas").or_insert_with(|| json!([kind.schema()]));
    }
    let mut r = lock(store(&t, kind));
    if r.by_key.contains_key(&key) {
        return error(StatusCode::CONFLICT, Some("uniqueness"), &format!("{} is already taken", kind.key_attr()));
    }
    let pos = r.items.len();
    r.items.push(Some(v.clone()));
    r.by_id.insert(id, pos);
    r.index(pos, kind.key_attr());
    if !r.live_dirty {
        r.live.push(pos);
    }
    drop(r);
    record(&t, kind, &v);
    scim(StatusCode::CREATED, v)
}

async fn one(
    State(t): State<Shared>,
    Path((kind, id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    count(&t, &method);
    if !authorized(&t, &headers) {
        return error(StatusCode::UNAUTHORIZED, None, "invalid token");
    }
    let Some(kind) = Kind::parse(&kind) else { return error(StatusCode::NOT_FOUND, None, "no such endpoint") };
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
                match apply_patch(current.clone(), &body) {
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

fn apply_one(resource: &mut Value, op: &str, path: Option<&str>, value: Option<&Value>) -> Result<(), String> {
    let add = op.eq_ignore_ascii_case("add");
    let remove = op.eq_ignore_ascii_case("remove");
    let Some(path) = path else {
        let Some(Value::Object(vals)) = value else { return Err("a PATCH without path needs an object".into()) };
        let root = obj(resource);
        for (k, v) in vals {
            match (add, root.get_mut(k), v) {
                (true, Some(Value::Array(have)), Value::Array(more)) => have.extend(more.iter().cloned()),
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
                    (true, Some(Value::Array(have)), Value::Array(more)) => {
                        for m in more {
                            if !have.contains(m) {
                                have.push(m.clone());
                            }
                        }
                    }
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

fn apply_patch(mut resource: Value, body: &Value) -> Result<Value, String> {
    let ops = get_ci(body, "Operations").and_then(Value::as_array).ok_or("Operations is required")?;
    for o in ops {
        let op = get_ci(o, "op").and_then(Value::as_str).ok_or("op is required")?;
        let path = get_ci(o, "path").and_then(Value::as_str);
        apply_one(&mut resource, op, path, get_ci(o, "value"))?;
    }
    Ok(resource)
}

async fn config(State(t): State<Shared>) -> Response {
    scim(
        StatusCode::OK,
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": {"supported": true}, "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": t.max_results}, "changePassword": {"supported": false},
            "sort": {"supported": false}, "etag": {"supported": false},
            "authenticationSchemes": [{"type": "oauthbearertoken", "name": "Bearer", "description": "Bearer token"}]}),
    )
}

async fn stats(State(t): State<Shared>) -> Response {
    let c = |i: usize| t.counts[i].load(Ordering::Relaxed);
    let users = lock(&t.users).by_id.len();
    let groups = lock(&t.groups).by_id.len();
    axum::Json(json!({"get": c(0), "post": c(1), "put": c(2), "patch": c(3), "delete": c(4),
        "users": users, "groups": groups}))
    .into_response()
}

async fn reset(State(t): State<Shared>) -> Response {
    for c in &t.counts {
        c.store(0, Ordering::Relaxed);
    }
    lock(&t.received).clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn received(State(t): State<Shared>) -> Response {
    let r = lock(&t.received);
    axum::Json(json!(r.iter().map(|(v, at)| json!([v, at])).collect::<Vec<_>>())).into_response()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("scim-target [--listen 127.0.0.1:0] [--token TOKEN] [--max-results 1000] [--record title]");
        return Ok(());
    }
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let target = Arc::new(Target {
        token: arg(&args, "--token"),
        max_results: arg(&args, "--max-results").and_then(|n| n.parse().ok()).unwrap_or(1000).max(1),
        record: arg(&args, "--record").unwrap_or_else(|| "title".into()),
        users: Mutex::new(Resources::default()),
        groups: Mutex::new(Resources::default()),
        counts: Default::default(),
        received: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/ServiceProviderConfig", get(config))
        .route("/_bench/stats", get(stats))
        .route("/_bench/reset", post(reset))
        .route("/_bench/received", get(received))
        .route("/{kind}", get(list).post(create))
        .route("/{kind}/{id}", get(one).put(one).patch(one).delete(one))
        .with_state(target);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let out = apply_patch(u, &p).unwrap();
        assert_eq!(out["emails"][0]["value"], "b@x");
        assert_eq!(out["name"], json!({"familyName": "B"}));
        assert_eq!(out["title"], "CTO");
        let g = json!({"displayName": "g", "members": [{"value": "1"}, {"value": "2"}]});
        let out = apply_patch(
            g,
            &json!({"Operations": [{"op": "remove", "path": "members[value eq \"1\"]"},
            {"op": "add", "path": "members", "value": [{"value": "3"}]}]}),
        )
        .unwrap();
        assert_eq!(out["members"], json!([{"value": "2"}, {"value": "3"}]));
    }
}
