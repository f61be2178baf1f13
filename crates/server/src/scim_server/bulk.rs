//! `/Bulk` (RFC 7644 section 3.7): many writes of Users and Groups in one request.
//!
//! - **Each operation is its own request.** It runs through the very handler of its single
//!   request (`POST /Users`, `PATCH /Groups/{id}`, ...): the same checks, the same scope of the
//!   client, the same audit entry, atomic on its own. A malformed operation is answered in its
//!   own result with the SCIM error schema; the others proceed, until `failOnErrors` errors
//!   have been met (section 3.7.3): the operations after that are left undone and unanswered.
//! - **`bulkId` references** (section 3.7.2): a `"bulkId:x"` value anywhere in an operation's
//!   data, or in its path (`/Groups/bulkId:x`), names the resource operation `x` created.
//!   Operations run in the request's order, except that one naming an operation not yet done
//!   waits until it is done (forward references, as in the RFC's example of a group sent before
//!   its members). An operation naming one that failed fails too. References that form a
//!   circle (or wait on one) are refused with 409, as section 3.7.1 allows after a failed
//!   attempt.
//! - **Limits** (section 3.7.4, published in `/ServiceProviderConfig`): at most
//!   [`MAX_OPERATIONS`] operations and [`MAX_PAYLOAD`] bytes; beyond either the answer is 413
//!   and nothing is done. A bulk counts as its number of operations against the client's rate
//!   limit (a 429 also does nothing).
//! - **One plan.** While the operations are written the planner is held back
//!   ([`store::Store::hold_changes`]); released at the end, the engine plans the whole request in
//!   one pass, and the deprovisioning guard sees its suspensions and deletions as one change.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use scim::server::ScimError;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{base_url, groups, scim_json, users, Client, Fail, ScimBody, ScimResult, ScimState};

/// The most operations one request may hold (`bulk.maxOperations`).
pub const MAX_OPERATIONS: usize = 1000;
/// The largest request accepted on `/Bulk` (`bulk.maxPayloadSize`), 4 MiB.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
const BULK_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";
/// How long the planner is held back at most, should this process die mid-request.
const HOLD_TTL: Duration = Duration::from_secs(300);
/// What a reference to another operation's resource starts with.
const REF: &str = "bulkId:";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Users,
    Groups,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Users => "Users",
            Kind::Groups => "Groups",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

/// One operation as read: what it asks, or why it cannot be done.
struct Op {
    /// The method as the client wrote it (echoed in the result).
    method: String,
    bulk_id: Option<String>,
    version: Option<String>,
    /// What to do, unless the operation is malformed.
    action: Result<Action, ScimError>,
    /// The `bulkId`s the operation names.
    refs: Vec<String>,
}

struct Action {
    method: Method,
    kind: Kind,
    /// The resource's id, or `bulkId:x` (not for POST).
    id: Option<String>,
    data: Value,
}

/// A result of a bulk operation (section 3.7.3).
struct Outcome {
    status: u16,
    location: Option<String>,
    version: Option<String>,
    error: Option<ScimError>,
}

fn text_field(o: &Map<String, Value>, key: &str) -> Result<Option<String>, ScimError> {
    match scim::query::get_ci(o, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ScimError::invalid_value(format!("{key} must be a string"))),
    }
}

/// Every `bulkId:x` string in a value.
fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if let Some(id) = s.strip_prefix(REF) {
                out.push(id.to_owned());
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Puts the created resources' ids in place of `bulkId:x` strings.
fn resolve_refs(v: &mut Value, created: &HashMap<String, Uuid>) {
    match v {
        Value::String(s) => {
            if let Some(id) = s.strip_prefix(REF).and_then(|x| created.get(x)) {
                *s = id.to_string();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| resolve_refs(x, created)),
        Value::Object(o) => o.values_mut().for_each(|x| resolve_refs(x, created)),
        _ => {}
    }
}

/// `/Users`, `/Groups/{id}`...: the resource type and id an operation's path names.
fn parse_path(path: &str) -> Result<(Kind, Option<String>), ScimError> {
    let trimmed = path.trim().trim_start_matches('/').trim_end_matches('/');
    let (kind, id) = match trimmed.split_once('/') {
        Some((k, id)) => (k, Some(id)),
        None => (trimmed, None),
    };
    let kind = if kind.eq_ignore_ascii_case("Users") {
        Kind::Users
    } else if kind.eq_ignore_ascii_case("Groups") {
        Kind::Groups
    } else {
        return Err(ScimError::invalid_path(format!(
            "path {path:?}: a bulk operation writes /Users or /Groups (optionally /{{id}})"
        )));
    };
    match id {
        Some(id) if id.is_empty() || id.contains('/') || id.contains('?') => {
            Err(ScimError::invalid_path(format!("path {path:?} does not name one resource")))
        }
        id => Ok((kind, id.map(str::to_owned))),
    }
}

fn read_action(o: &Map<String, Value>, raw_method: &str, refs: &mut Vec<String>) -> Result<Action, ScimError> {
    let named = raw_method.to_ascii_uppercase();
    let method = match named.as_str() {
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        "" => return Err(ScimError::invalid_value("method is required (POST, PUT, PATCH or DELETE)")),
        other => {
            return Err(ScimError::invalid_value(format!(
                "method {other:?}: a bulk operation is POST, PUT, PATCH or DELETE"
            )))
        }
    };
    let path = text_field(o, "path")?.ok_or_else(|| ScimError::invalid_value("path is required"))?;
    let (kind, id) = parse_path(&path)?;
    match (method, &id) {
        (Method::Post, Some(_)) => {
            return Err(ScimError::invalid_path(format!("path {path:?}: POST creates at /Users or /Groups")))
        }
        (Method::Put | Method::Patch | Method::Delete, None) => {
            return Err(ScimError::invalid_path(format!("path {path:?}: {named} needs the resource's id")))
        }
        _ => {}
    }
    if let Some(r) = id.as_deref().and_then(|id| id.strip_prefix(REF)) {
        refs.push(r.to_owned());
    }
    let data = match (method, scim::query::get_ci(o, "data")) {
        (Method::Delete, _) => Value::Null,
        (_, Some(d @ Value::Object(_))) => d.clone(),
        (_, None | Some(Value::Null)) => return Err(ScimError::invalid_value("data is required")),
        (_, Some(_)) => return Err(ScimError::invalid_syntax("data must be a JSON object")),
    };
    collect_refs(&data, refs);
    Ok(Action { method, kind, id, data })
}

/// Reads one operation; a malformed one keeps its error, to be answered in its result.
fn read_op(v: &Value) -> Op {
    let mut op = Op {
        method: String::new(),
        bulk_id: None,
        version: None,
        action: Err(ScimError::invalid_syntax("")),
        refs: vec![],
    };
    op.action = read_fields(v, &mut op);
    op
}

fn read_fields(v: &Value, op: &mut Op) -> Result<Action, ScimError> {
    let Value::Object(o) = v else { return Err(ScimError::invalid_syntax("each operation must be a JSON object")) };
    // What is known of the operation is echoed in its result, even when the rest is wrong.
    op.method = text_field(o, "method").ok().flatten().unwrap_or_default();
    op.bulk_id = text_field(o, "bulkId").ok().flatten();
    for k in o.keys() {
        if !["method", "path", "bulkId", "version", "data"].iter().any(|f| f.eq_ignore_ascii_case(k)) {
            return Err(ScimError::invalid_value(format!("{k} is not a field of a bulk operation")));
        }
    }
    text_field(o, "method")?;
    text_field(o, "bulkId")?;
    if op.bulk_id.as_deref().is_some_and(|b| b.trim().is_empty()) {
        return Err(ScimError::invalid_value("bulkId must not be empty"));
    }
    op.version = text_field(o, "version")?;
    let method = op.method.clone();
    read_action(o, &method, &mut op.refs)
}

/// Releases the hold on the planner when the request ends, however it ends.
struct Hold {
    state: ScimState,
    id: Option<Uuid>,
}

impl Hold {
    async fn release(mut self) {
        if let Some(id) = self.id.take() {
            release(&self.state, id).await;
        }
    }
}

async fn release(state: &ScimState, id: Uuid) {
    if let Err(e) = state.store().release_changes(id).await {
        // The hold lapses by itself (HOLD_TTL); the changes are planned then.
        tracing::warn!(error = %e.chain(), "cannot release the planner after a bulk request");
    }
    state.app.service.engine().changed();
}

impl Drop for Hold {
    fn drop(&mut self) {
        // A request cut short (its client went away): released in the background.
        if let Some(id) = self.id.take() {
            let state = self.state.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { release(&state, id).await });
            }
        }
    }
}

/// `POST /Bulk`.
pub(crate) async fn bulk(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> ScimResult {
    let Value::Object(o) = &body else {
        return Err(ScimError::invalid_syntax("the body must be a JSON object").into());
    };
    if let Some(schemas) = scim::query::get_ci(o, "schemas") {
        let listed = schemas.as_array().is_some_and(|a| a.iter().any(|s| s.as_str() == Some(BULK_REQUEST)));
        if !listed {
            return Err(ScimError::invalid_value(format!("schemas must be [\"{BULK_REQUEST}\"]")).into());
        }
    }
    let fail_on_errors = match scim::query::get_ci(o, "failOnErrors") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().filter(|n| *n >= 1) {
            Some(n) => Some(n),
            None => return Err(ScimError::invalid_value("failOnErrors must be a whole number of at least 1").into()),
        },
        Some(_) => return Err(ScimError::invalid_value("failOnErrors must be a whole number of at least 1").into()),
    };
    let operations = match scim::query::get_ci(o, "Operations") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ScimError::invalid_syntax("Operations must be a list").into()),
        None => return Err(ScimError::invalid_value("Operations is required").into()),
    };
    if operations.len() > MAX_OPERATIONS {
        return Err(ScimError::new(
            413,
            None,
            format!(
                "the request holds {} operations; at most {MAX_OPERATIONS} are accepted in one (bulk.maxOperations)",
                operations.len()
            ),
        )
        .into());
    }
    // The request counts as its number of operations (the middleware took one already).
    if operations.len() > 1 {
        let more = u32::try_from(operations.len() - 1).unwrap_or(u32::MAX);
        if let Err(wait) = state.limiter.take_n(&client.id.to_string(), more) {
            return Err(Fail(
                ScimError::new(
                    429,
                    None,
                    format!(
                        "too many requests: a bulk counts as its {} operations against the client's rate limit; \
                         retry later (or send fewer operations at a time)",
                        operations.len()
                    ),
                ),
                Some(wait),
            ));
        }
    }
    let ops: Vec<Op> = operations.iter().map(read_op).collect();
    let results = if ops.is_empty() {
        vec![]
    } else {
        let hold = Hold { id: Some(state.store().hold_changes(HOLD_TTL).await?), state: state.clone() };
        let results = run(&state, &client, &headers, ops, fail_on_errors).await;
        hold.release().await;
        results
    };
    Ok(scim_json(StatusCode::OK, &json!({"schemas": [BULK_RESPONSE], "Operations": results})))
}

/// Runs the operations, in order but for references (see the module's doc); answers the result
/// of each operation done, in the order they were done.
async fn run(
    state: &ScimState,
    client: &Client,
    headers: &HeaderMap,
    ops: Vec<Op>,
    fail_on_errors: Option<u64>,
) -> Vec<Value> {
    let base = base_url(headers);
    // Which operation each bulkId names (the first that gives it).
    let mut by_bulk_id: HashMap<&str, usize> = HashMap::new();
    let mut duplicate = HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(b) = op.bulk_id.as_deref() {
            if by_bulk_id.contains_key(b) {
                duplicate.insert(i);
            } else {
                by_bulk_id.insert(b, i);
            }
        }
    }
    let mut done = vec![false; ops.len()];
    let mut created: HashMap<String, Uuid> = HashMap::new();
    let mut failed: HashSet<String> = HashSet::new();
    let mut results = Vec::with_capacity(ops.len());
    let mut errors = 0u64;
    let mut first_open = 0;
    // Once nothing can run: what is left, answered 409 in the request's order.
    let mut circular: Vec<usize> = Vec::new();
    let mut stuck = false;
    // The operations each one waits for, once each (a group may name thousands of members, but
    // the request holds at most MAX_OPERATIONS operations to wait for): a reference to no
    // operation waits for nothing, and is answered when its operation runs.
    let waits: Vec<Vec<usize>> = ops
        .iter()
        .map(|op| {
            let mut w: Vec<usize> = op.refs.iter().filter_map(|r| by_bulk_id.get(r.as_str()).copied()).collect();
            w.sort_unstable();
            w.dedup();
            w
        })
        .collect();
    loop {
        while first_open < ops.len() && done[first_open] {
            first_open += 1;
        }
        let mut next = None;
        if !stuck {
            next = (first_open..ops.len()).find(|i| !done[*i] && waits[*i].iter().all(|j| done[*j]));
            if next.is_none() {
                // Nothing else can run: what is left is in a circle of references or waits on one.
                stuck = true;
                circular = (first_open..ops.len()).filter(|i| !done[*i]).rev().collect();
            }
        }
        if stuck {
            next = circular.pop();
        }
        let Some(i) = next else { break };
        done[i] = true;
        let op = &ops[i];
        let outcome = if stuck {
            // Nothing else can run: what is left waits on a circle of references.
            error_outcome(ScimError::new(
                409,
                None,
                "its bulkId references form a circle (or wait on one), which cannot be resolved: send the \
                 resources first, then the references between them (for example as a PATCH)",
            ))
        } else if duplicate.contains(&i) {
            error_outcome(ScimError::invalid_value(format!(
                "bulkId {:?} is given to an earlier operation of this request",
                op.bulk_id.as_deref().unwrap_or_default()
            )))
        } else {
            match &op.action {
                Err(e) => error_outcome(e.clone()),
                Ok(action) => match op.refs.iter().find(|r| !created.contains_key(r.as_str())) {
                    Some(r) if failed.contains(r) => error_outcome(ScimError::invalid_value(format!(
                        "{REF}{r} names an operation of this request that failed"
                    ))),
                    Some(r) if !by_bulk_id.contains_key(r.as_str()) => {
                        error_outcome(ScimError::invalid_value(format!("{REF}{r} names no operation of this request")))
                    }
                    Some(r) => error_outcome(ScimError::invalid_value(format!(
                        "{REF}{r} names an operation of this request that created nothing"
                    ))),
                    None => perform(state, client, headers, &base, action, op.version.as_deref(), &created).await,
                },
            }
        };
        if let Some(b) = op.bulk_id.as_deref().filter(|_| !duplicate.contains(&i)) {
            match (&outcome.error, created_id(&outcome)) {
                (None, Some(id)) => {
                    created.insert(b.to_owned(), id);
                }
                _ => {
                    failed.insert(b.to_owned());
                }
            }
        }
        let is_error = outcome.error.is_some();
        results.push(result_json(op, outcome));
        if is_error {
            errors += 1;
            if fail_on_errors.is_some_and(|limit| errors >= limit) {
                break;
            }
        }
    }
    results
}

fn error_outcome(e: ScimError) -> Outcome {
    Outcome { status: e.status, location: None, version: None, error: Some(e) }
}

/// The id of the resource an operation created or wrote (the last segment of its location).
fn created_id(o: &Outcome) -> Option<Uuid> {
    o.location.as_deref().and_then(|l| l.rsplit('/').next()).and_then(|id| Uuid::parse_str(id).ok())
}

fn result_json(op: &Op, o: Outcome) -> Value {
    let mut r = Map::new();
    r.insert("method".into(), json!(op.method));
    if let Some(b) = &op.bulk_id {
        r.insert("bulkId".into(), json!(b));
    }
    if let Some(l) = o.location {
        r.insert("location".into(), json!(l));
    }
    if let Some(v) = o.version {
        r.insert("version".into(), json!(v));
    }
    // A string, as in the RFC's examples (section 3.7.3).
    r.insert("status".into(), json!(o.status.to_string()));
    if let Some(e) = o.error {
        r.insert("response".into(), e.body());
    }
    Value::Object(r)
}

/// Runs one operation through the handler of its single request.
async fn perform(
    state: &ScimState,
    client: &Client,
    outer: &HeaderMap,
    base: &str,
    action: &Action,
    version: Option<&str>,
    created: &HashMap<String, Uuid>,
) -> Outcome {
    let mut headers = HeaderMap::new();
    for name in [header::HOST, header::HeaderName::from_static("x-forwarded-proto")] {
        if let Some(v) = outer.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    if let Some(v) = version {
        match HeaderValue::from_str(v) {
            Ok(v) => {
                headers.insert(header::IF_MATCH, v);
            }
            Err(_) => return error_outcome(ScimError::invalid_value("version is not a valid ETag")),
        }
    }
    let id = action.id.as_deref().map(|id| match id.strip_prefix(REF).and_then(|r| created.get(r)) {
        Some(uuid) => uuid.to_string(),
        None => id.to_owned(),
    });
    let mut data = action.data.clone();
    resolve_refs(&mut data, created);
    let (state_, client_) = (State(state.clone()), client.clone());
    // Only the id is needed back: the handlers then skip reading groups and members.
    let query = RawQuery(Some("attributes=id".to_owned()));
    let body = ScimBody(data);
    let answer = match (action.kind, action.method, id.clone()) {
        (Kind::Users, Method::Post, _) => users::create(state_, client_, headers, query, body).await,
        (Kind::Users, Method::Put, Some(id)) => users::replace(state_, client_, headers, Path(id), query, body).await,
        (Kind::Users, Method::Patch, Some(id)) => users::patch(state_, client_, headers, Path(id), query, body).await,
        (Kind::Users, Method::Delete, Some(id)) => users::delete(state_, client_, headers, Path(id)).await,
        (Kind::Groups, Method::Post, _) => groups::create(state_, client_, headers, query, body).await,
        (Kind::Groups, Method::Put, Some(id)) => groups::replace(state_, client_, headers, Path(id), query, body).await,
        (Kind::Groups, Method::Patch, Some(id)) => groups::patch(state_, client_, headers, Path(id), query, body).await,
        (Kind::Groups, Method::Delete, Some(id)) => groups::delete(state_, client_, headers, Path(id)).await,
        (_, _, None) => Err(ScimError::invalid_path("the operation needs the resource's id").into()),
    };
    match answer {
        Ok(resp) => success(resp, base, action.kind, id.as_deref()),
        Err(Fail(e, _)) => error_outcome(e),
    }
}

fn success(resp: Response, base: &str, kind: Kind, id: Option<&str>) -> Outcome {
    let header_text =
        |name: header::HeaderName| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let location = header_text(header::LOCATION).or_else(|| id.map(|id| format!("{base}/{}/{id}", kind.endpoint())));
    Outcome { status: resp.status().as_u16(), location, version: header_text(header::ETAG), error: None }
}
