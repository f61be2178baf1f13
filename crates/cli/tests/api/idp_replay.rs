//! The requests Microsoft Entra ID and Okta send, replayed against `/scim/v2` as their vendors
//! document them (fixtures in `tests/fixtures/idp/`, each naming the document it follows; see
//! the README there). Each request must be answered as the IdP needs: the status it expects,
//! and for a write, every value it sent back on a GET of the resource right after. After the
//! sequence, every resource still there must give back the last value sent for each of its
//! attributes, and a password sent must work at `/login`.

use std::collections::BTreeMap;

use reqwest::header::COOKIE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::saml::{hidden, set_cookie};
use crate::scim_server::Scim;
use crate::support::{Backend, TestServer};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const CORE_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const CORE_GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

/// Fixtures replayed and reported but not asserted yet, each with why. Empty when every
/// fixture is answered as its IdP needs.
const PENDING: &[(&str, &str)] = &[];

fn fixture_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/idp")
}

/// Every fixture, by file name, sorted.
fn fixtures() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            (name, v)
        })
        .collect()
}

// ---- What a request claims about a resource ---------------------------------------------

/// One step of a path into a resource: an attribute (names compare without case), or the
/// element of a multi-valued attribute whose `type` (without case) or `value` is given.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Attr(String),
    Elem { by: &'static str, eq: String },
}

#[derive(Debug, Clone, PartialEq)]
enum Want {
    /// The attribute has this value.
    Is(Value),
    /// The element (or attribute) is there / is not there.
    Present,
    Absent,
}

#[derive(Debug, Clone)]
struct Claim {
    path: Vec<Seg>,
    want: Want,
}

impl Claim {
    fn key(&self) -> String {
        let mut k = String::new();
        for s in &self.path {
            match s {
                Seg::Attr(a) => {
                    if !k.is_empty() {
                        k.push('.');
                    }
                    k.push_str(&a.to_lowercase());
                }
                Seg::Elem { by, eq } => {
                    let eq = if *by == "type" { eq.to_lowercase() } else { eq.clone() };
                    k.push_str(&format!("[{by} eq \"{eq}\"]"));
                }
            }
        }
        k
    }

    fn describe(&self) -> String {
        match &self.want {
            Want::Is(v) => format!("{} = {v}", self.key()),
            Want::Present => format!("{} present", self.key()),
            Want::Absent => format!("{} absent", self.key()),
        }
    }
}

/// What one request claims: attribute values, and a password if it sets one.
#[derive(Debug, Default)]
struct Claims {
    values: Vec<Claim>,
    password: Option<String>,
    /// A PUT: the resource is replaced, so earlier claims (other than the password) go.
    replaces: bool,
    /// Removes every value of these attributes first (a `replace` of a whole multi-valued
    /// attribute, a `remove` of an attribute without a filter).
    clears: Vec<String>,
}

fn is_multi_valued(attr: &str) -> bool {
    ["emails", "phonenumbers", "ims", "photos", "addresses", "entitlements", "roles", "x509certificates", "members"]
        .contains(&attr.to_lowercase().as_str())
}

/// Attributes never compared: set by the server, read-only, or write-only.
fn ignored(attr: &str) -> bool {
    ["schemas", "meta", "id", "groups", "password", "$ref"].contains(&attr.to_lowercase().as_str())
}

/// The manager's id, in any of the shapes Entra sends: `"id"`, `{"value": id}`,
/// `[{"$ref": ..., "value": id}]`.
fn manager_id(v: &Value) -> Option<Value> {
    match v {
        Value::String(_) => Some(v.clone()),
        Value::Object(o) => o.iter().find(|(k, _)| k.eq_ignore_ascii_case("value")).map(|(_, v)| v.clone()),
        Value::Array(a) => a.first().and_then(manager_id),
        _ => None,
    }
}

/// Claims of a resource body (or a fragment of one) under `prefix`.
fn body_claims(prefix: &[Seg], body: &Value, out: &mut Claims) {
    let Some(obj) = body.as_object() else { return };
    for (k, v) in obj {
        if k.eq_ignore_ascii_case("password") && prefix.is_empty() {
            out.password = v.as_str().map(str::to_owned);
            continue;
        }
        if ignored(k) || v.is_null() {
            continue;
        }
        if k.starts_with("urn:") {
            if k.eq_ignore_ascii_case(CORE_USER) || k.eq_ignore_ascii_case(CORE_GROUP) {
                body_claims(prefix, v, out);
            } else {
                body_claims(&[prefix, &[Seg::Attr(k.clone())]].concat(), v, out);
            }
            continue;
        }
        let path = [prefix, &[Seg::Attr(k.clone())]].concat();
        value_claims(path, v, out);
    }
}

/// Claims that the attribute at `path` has `v`.
fn value_claims(path: Vec<Seg>, v: &Value, out: &mut Claims) {
    let last = match path.last() {
        Some(Seg::Attr(a)) => a.to_lowercase(),
        _ => String::new(),
    };
    if last == "manager" {
        if let Some(id) = manager_id(v) {
            out.values.push(Claim { path: [path, vec![Seg::Attr("value".into())]].concat(), want: Want::Is(id) });
        }
        return;
    }
    match v {
        Value::Null => {}
        Value::Array(items) if is_multi_valued(&last) => {
            for item in items {
                elem_claims(&path, &last, item, out);
            }
        }
        Value::Array(_) => {}
        Value::Object(_) => body_claims(&path, v, out),
        _ => out.values.push(Claim { path, want: Want::Is(v.clone()) }),
    }
}

/// Claims of one element of a multi-valued attribute: it is found by its `type` if it has
/// one (Entra keeps one value per type), else by its `value`. Of a group's members only the
/// reference counts (their `display` and `$ref` are the server's).
fn elem_claims(path: &[Seg], attr: &str, item: &Value, out: &mut Claims) {
    let Some(o) = item.as_object() else { return };
    let field = |name: &str| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.as_str());
    let (by, eq) = match (field("type"), field("value")) {
        (Some(t), _) if attr != "members" => ("type", t.to_owned()),
        (_, Some(v)) => ("value", v.to_owned()),
        _ => return,
    };
    let elem = [path, &[Seg::Elem { by, eq }]].concat();
    if attr == "members" {
        out.values.push(Claim { path: elem, want: Want::Present });
        return;
    }
    for (k, v) in o {
        if ignored(k) || v.is_null() {
            continue;
        }
        out.values.push(Claim { path: [elem.clone(), vec![Seg::Attr(k.clone())]].concat(), want: Want::Is(v.clone()) });
    }
}

/// A PATCH path (RFC 7644 3.5.2) as segments: `emails[type eq "work"].value`,
/// `members[value eq "id"]`, `urn:...:User:employeeNumber`, `name.familyName`; a bare
/// `manager` is the enterprise extension's.
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut rest = path;
    if path.starts_with("urn:") {
        let (urn, attr) = path.rsplit_once(':').unwrap_or((path, ""));
        if !urn.eq_ignore_ascii_case(CORE_USER) && !urn.eq_ignore_ascii_case(CORE_GROUP) {
            segs.push(Seg::Attr(urn.to_owned()));
        }
        rest = attr;
    } else if path.eq_ignore_ascii_case("manager") {
        segs.push(Seg::Attr(ENTERPRISE.to_owned()));
    }
    let (head, filter, tail) = match (rest.find('['), rest.find(']')) {
        (Some(a), Some(b)) if a < b => (&rest[..a], Some(&rest[a + 1..b]), rest[b + 1..].trim_start_matches('.')),
        _ => (rest, None, ""),
    };
    segs.extend(head.split('.').filter(|s| !s.is_empty()).map(|s| Seg::Attr(s.to_owned())));
    if let Some(f) = filter {
        let lower = f.to_lowercase();
        if let Some(at) = lower.find(" eq ") {
            let by = if f[..at].trim().eq_ignore_ascii_case("type") { "type" } else { "value" };
            let eq = f[at + 4..].trim().trim_matches('"').to_owned();
            segs.push(Seg::Elem { by, eq });
        }
    }
    segs.extend(tail.split('.').filter(|s| !s.is_empty()).map(|s| Seg::Attr(s.to_owned())));
    segs
}

fn patch_claims(body: &Value) -> Claims {
    let mut out = Claims::default();
    let ops = body
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("operations")))
        .and_then(|(_, v)| v.as_array())
        .cloned()
        .unwrap_or_default();
    for op in ops {
        let kind = op["op"].as_str().unwrap_or("").to_lowercase();
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match (kind.as_str(), op.get("path").and_then(Value::as_str)) {
            ("add" | "replace", None) => {
                // Path-less: keys are attributes, or paths ("name.givenName", URN-qualified).
                for (k, v) in value.as_object().cloned().unwrap_or_default() {
                    if k.eq_ignore_ascii_case("password") {
                        out.password = v.as_str().map(str::to_owned);
                    } else if k.contains('.') || (k.starts_with("urn:") && !v.is_object()) {
                        value_claims(parse_path(&k), &v, &mut out);
                    } else {
                        body_claims(&[], &json!({ k: v }), &mut out);
                    }
                }
            }
            ("add" | "replace", Some(p)) => {
                if p.eq_ignore_ascii_case("password") {
                    out.password = value.as_str().map(str::to_owned);
                    continue;
                }
                let path = parse_path(p);
                if kind == "replace" && path.len() == 1 && is_multi_valued(&path_attr(&path)) {
                    out.clears.push(path_attr(&path));
                }
                value_claims(path, &value, &mut out);
            }
            ("remove", Some(p)) => {
                let path = parse_path(p);
                match (&value, path.last()) {
                    (Value::Array(items), Some(Seg::Attr(a))) if a.eq_ignore_ascii_case("members") => {
                        for item in items {
                            if let Some(id) = item["value"].as_str() {
                                let elem = [path.clone(), vec![Seg::Elem { by: "value", eq: id.to_owned() }]].concat();
                                out.values.push(Claim { path: elem, want: Want::Absent });
                            }
                        }
                    }
                    (_, Some(Seg::Attr(a))) if path.len() == 1 && is_multi_valued(a) => {
                        out.clears.push(a.to_lowercase());
                    }
                    _ => out.values.push(Claim { path, want: Want::Absent }),
                }
            }
            _ => {}
        }
    }
    out
}

fn path_attr(path: &[Seg]) -> String {
    match path.first() {
        Some(Seg::Attr(a)) => a.to_lowercase(),
        _ => String::new(),
    }
}

/// What a resource must give back: the last claim for each path.
#[derive(Debug, Default)]
struct Expected {
    values: BTreeMap<String, Claim>,
    password: Option<String>,
}

impl Expected {
    fn apply(&mut self, c: &Claims) {
        if c.replaces {
            self.values.clear();
        }
        for attr in &c.clears {
            self.values.retain(|k, _| {
                !(k == attr || k.starts_with(&format!("{attr}[")) || k.starts_with(&format!("{attr}.")))
            });
        }
        for claim in &c.values {
            let key = claim.key();
            // A value set below a removed attribute is no longer expected, and the reverse.
            self.values.retain(|k, _| !k.starts_with(&format!("{key}.")) && !k.starts_with(&format!("{key}[")));
            self.values.insert(key, claim.clone());
        }
        if c.password.is_some() {
            self.password.clone_from(&c.password);
        }
    }
}

// ---- Reading the answer ------------------------------------------------------------------

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn find<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else { return Some(v) };
    let next = match first {
        Seg::Attr(a) => field(v, a)?,
        Seg::Elem { by, eq } => v.as_array()?.iter().find(|e| {
            field(e, by).and_then(Value::as_str).is_some_and(|x| {
                if *by == "type" {
                    x.eq_ignore_ascii_case(eq)
                } else {
                    x == eq
                }
            })
        })?,
    };
    find(next, rest)
}

/// Equal, allowing `"False"` for `false` (Entra's older PATCH sends booleans as strings).
fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(s), Value::Bool(b)) | (Value::Bool(b), Value::String(s)) => {
            s.eq_ignore_ascii_case(&b.to_string())
        }
        _ => want == got,
    }
}

/// Which claims the resource does not bear out, each with what it gave.
fn unkept(resource: &Value, claims: &[&Claim]) -> Vec<String> {
    claims
        .iter()
        .filter_map(|c| {
            let got = find(resource, &c.path).filter(|v| !v.is_null());
            let ok = match (&c.want, got) {
                (Want::Is(w), Some(g)) => same(w, g),
                (Want::Present, g) => g.is_some(),
                (Want::Absent, g) => g.is_none(),
                (Want::Is(_), None) => false,
            };
            (!ok).then(|| format!("{} (got {})", c.describe(), got.map_or("nothing".into(), Value::to_string)))
        })
        .collect()
}

/// Whether `got` contains `want`: objects by key (without case), arrays element by element.
fn contains(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), _) => w.iter().all(|(k, v)| field(got, k).is_some_and(|g| contains(v, g))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() <= g.len() && w.iter().zip(g).all(|(a, b)| contains(a, b)) && (!w.is_empty() || g.is_empty())
        }
        _ => same(want, got),
    }
}

// ---- The replay --------------------------------------------------------------------------

/// Replaces `{name}` in every string with the value captured under that name.
fn fill(v: &Value, vars: &BTreeMap<String, String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(fill_str(s, vars)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, vars)).collect::<Result<_, _>>()?),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| Ok((k.clone(), fill(x, vars)?))).collect::<Result<_, String>>()?)
        }
        other => other.clone(),
    })
}

fn fill_str(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = s.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    match out.find('{').zip(out.find('}')) {
        Some((a, b)) if a < b && out[a + 1..b].chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Err(format!("{} was not captured (an earlier request failed)", &out[a..=b]))
        }
        _ => Ok(out),
    }
}

/// How one fixture went.
struct Outcome {
    name: String,
    source: String,
    requests: usize,
    answered: usize,
    failures: Vec<String>,
    final_checked: usize,
    final_kept: usize,
    final_failures: Vec<String>,
    sign_ins: Vec<(String, Result<(), String>)>,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.answered == self.requests && self.final_failures.is_empty() && self.sign_ins.iter().all(|(_, r)| r.is_ok())
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{}: {}\n  answered as the IdP needs: {} of {} requests; values kept at the end: {} of {}",
            self.name, self.source, self.answered, self.requests, self.final_kept, self.final_checked
        );
        for (who, r) in &self.sign_ins {
            s.push_str(&format!(
                "; sign-in of {who} with the password sent: {}",
                r.as_ref().map_or_else(|e| format!("fails ({e})"), |()| "works".into())
            ));
        }
        for f in self.failures.iter().chain(&self.final_failures) {
            s.push_str(&format!("\n  - {f}"));
        }
        s
    }
}

/// The detail of a SCIM error, for the report.
fn why(body: &Value) -> String {
    let detail = body["detail"].as_str().unwrap_or("");
    let kind = body["scimType"].as_str().map(|t| format!("{t}: ")).unwrap_or_default();
    let text = format!("{kind}{detail}");
    if text.is_empty() {
        body.to_string().chars().take(200).collect()
    } else {
        text
    }
}

async fn replay(backend: Backend, name: &str, fixture: &Value) -> Outcome {
    let c = Scim::start(backend).await;
    let mut vars = BTreeMap::from([("base".to_owned(), c.base())]);
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let steps = fixture["steps"].as_array().unwrap();
    let mut out = Outcome {
        name: name.to_owned(),
        source: format!(
            "{} <{}>",
            fixture["source"]["title"].as_str().unwrap(),
            fixture["source"]["url"].as_str().unwrap()
        ),
        requests: steps.len(),
        answered: 0,
        failures: Vec::new(),
        final_checked: 0,
        final_kept: 0,
        final_failures: Vec::new(),
        sign_ins: Vec::new(),
    };
    for (i, step) in steps.iter().enumerate() {
        let method = Method::from_bytes(step["method"].as_str().unwrap().as_bytes()).unwrap();
        let label =
            format!("#{} {} {} ({})", i + 1, method, step["path"].as_str().unwrap(), step["name"].as_str().unwrap());
        match replay_step(&c, step, &method, &mut vars, &mut expected).await {
            Ok(()) => out.answered += 1,
            Err(e) => out.failures.push(format!("{label}: {e}")),
        }
    }
    // Every resource still there gives back the last value sent for each attribute.
    for (resource, exp) in &expected {
        let got = c.get(resource).await;
        if got.status != StatusCode::OK {
            out.final_failures.push(format!("GET {resource} at the end: {} {}", got.status, why(&got.body)));
            continue;
        }
        let claims: Vec<&Claim> = exp.values.values().collect();
        let lost = unkept(&got.body, &claims);
        out.final_checked += claims.len();
        out.final_kept += claims.len() - lost.len();
        for f in lost {
            out.final_failures.push(format!("GET {resource} at the end: {f}"));
        }
        if let Some(password) = &exp.password {
            let username = got.body["userName"].as_str().unwrap_or("").to_owned();
            let r = sign_in(&c.s, &username, password).await;
            out.sign_ins.push((username, r));
        }
    }
    out
}

async fn replay_step(
    c: &Scim,
    step: &Value,
    method: &Method,
    vars: &mut BTreeMap<String, String>,
    expected: &mut BTreeMap<String, Expected>,
) -> Result<(), String> {
    let path = fill_str(step["path"].as_str().unwrap(), vars)?;
    let body = step.get("body").map(|b| fill(b, vars)).transpose()?;
    let a = c.call(method.clone(), &path, body.clone()).await;
    let statuses: Vec<u64> = step["expect"]["status"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
    if !statuses.contains(&u64::from(a.status.as_u16())) {
        return Err(format!("status {}, needed {statuses:?}: {}", a.status.as_u16(), why(&a.body)));
    }
    if let Some(want) = step["expect"].get("body") {
        let want = fill(want, vars)?;
        if !contains(&want, &a.body) {
            return Err(format!(
                "the answer lacks {want}: {}",
                a.body.to_string().chars().take(300).collect::<String>()
            ));
        }
    }
    if let Some(capture) = step.get("capture").and_then(Value::as_object) {
        for (var, field) in capture {
            let v = a.body[field.as_str().unwrap()].as_str().ok_or_else(|| format!("no {field} in the answer"))?;
            vars.insert(var.clone(), v.to_owned());
        }
    }
    if !a.status.is_success() {
        return Ok(());
    }
    let resource = match *method {
        Method::POST => format!("{path}/{}", a.body["id"].as_str().unwrap_or("")),
        _ => path.split('?').next().unwrap_or("").to_owned(),
    };
    let claims = match (method.as_str(), &body) {
        ("POST" | "PUT", Some(b)) => {
            let mut claims = Claims::default();
            body_claims(&[], b, &mut claims);
            claims.replaces = *method == Method::PUT;
            claims
        }
        ("PATCH", Some(b)) => patch_claims(b),
        ("DELETE", _) => {
            expected.remove(&resource);
            return Ok(());
        }
        _ => return Ok(()),
    };
    let exp = expected.entry(resource.clone()).or_default();
    exp.apply(&claims);
    // Every value this request sent comes back on a GET right after it.
    let got = c.get(&resource).await;
    if got.status != StatusCode::OK {
        return Err(format!("GET {resource} after it: {} {}", got.status, why(&got.body)));
    }
    let lost = unkept(&got.body, &claims.values.iter().collect::<Vec<_>>());
    if lost.is_empty() {
        Ok(())
    } else {
        Err(format!("answered {}, but not kept: {}", a.status.as_u16(), lost.join("; ")))
    }
}

/// Signs in at the IdP's `/login` page.
async fn sign_in(s: &TestServer, username: &str, password: &str) -> Result<(), String> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = http.get(s.url("/login")).send().await.unwrap();
    let form = set_cookie(&page, "prv_idp_form").ok_or("the login page sets no form cookie")?;
    let html = page.text().await.unwrap();
    let csrf = hidden(&html, "csrf").ok_or("the login page has no csrf field")?;
    let resp = http
        .post(s.url("/login"))
        .header(COOKIE, format!("prv_idp_form={form}"))
        .form(&[("csrf", csrf.as_str()), ("username", username), ("password", password), ("next", "/")])
        .send()
        .await
        .unwrap();
    match (resp.status(), set_cookie(&resp, "prv_idp_session")) {
        (StatusCode::SEE_OTHER, Some(_)) => Ok(()),
        (status, _) => Err(format!("status {status}")),
    }
}

async fn identity_providers_documented_requests(backend: Backend) {
    let mut failed = Vec::new();
    let all = fixtures();
    assert!(all.len() >= 3, "fixtures missing in {}", fixture_dir().display());
    for (name, fixture) in &all {
        let out = replay(backend, name, fixture).await;
        eprintln!("{}", out.summary());
        match PENDING.iter().find(|(n, _)| n == name) {
            Some((_, reason)) => eprintln!("  pending, not asserted: {reason}"),
            None if !out.passed() => failed.push(name.clone()),
            None => {}
        }
    }
    assert!(failed.is_empty(), "not answered as the IdP needs: {failed:?} (details above)");
}

crate::on_both_backends!(identity_providers_documented_requests);

/// The replay's own reading of PATCH requests and of answers.
#[test]
fn claims_are_read_as_the_rfc_means_them() {
    assert_eq!(
        parse_path(r#"emails[type eq "work"].value"#),
        [Seg::Attr("emails".into()), Seg::Elem { by: "type", eq: "work".into() }, Seg::Attr("value".into())]
    );
    assert_eq!(
        parse_path(&format!("{ENTERPRISE}:employeeNumber")),
        [Seg::Attr(ENTERPRISE.into()), Seg::Attr("employeeNumber".into())]
    );
    assert_eq!(parse_path("manager"), [Seg::Attr(ENTERPRISE.into()), Seg::Attr("manager".into())]);
    assert_eq!(parse_path(&format!("{CORE_USER}:name.givenName")), parse_path("name.givenName"));
    // Entra's shapes: the manager in an array with $ref, dotted keys in a path-less replace.
    let c = patch_claims(&json!({"Operations": [
        {"op": "Replace", "path": "manager", "value": [{"$ref": null, "value": "m1"}]},
        {"op": "replace", "value": {"name.givenName": "Kkom", format!("{ENTERPRISE}:employeeNumber"): "Aklq", "id": "x"}},
        {"op": "Remove", "path": "members", "value": [{"value": "u1"}]},
        {"op": "replace", "path": "password", "value": "secret"},
    ]}));
    let keys: Vec<String> = c.values.iter().map(Claim::describe).collect();
    let ent_key = ENTERPRISE.to_lowercase();
    assert_eq!(
        keys,
        [
            format!("{ent_key}.manager.value = \"m1\""),
            "name.givenname = \"Kkom\"".to_owned(),
            format!("{ent_key}.employeenumber = \"Aklq\""),
            "members[value eq \"u1\"] absent".to_owned(),
        ]
    );
    assert_eq!(c.password.as_deref(), Some("secret"));
    // A PUT replaces what was expected, except the password (Okta's PUT never carries it).
    let mut exp = Expected::default();
    let mut create = Claims::default();
    body_claims(&[], &json!({"userName": "a", "locale": "en-US", "password": "pw"}), &mut create);
    exp.apply(&create);
    let mut put = Claims { replaces: true, ..Claims::default() };
    body_claims(&[], &json!({"userName": "a", "emails": [{"type": "work", "value": "a@x"}]}), &mut put);
    exp.apply(&put);
    assert_eq!(
        exp.values.keys().collect::<Vec<_>>(),
        ["emails[type eq \"work\"].type", "emails[type eq \"work\"].value", "username"]
    );
    assert_eq!(exp.password.as_deref(), Some("pw"));
    // Answers: attribute names without case, the element by its type without case, "False".
    let got = json!({"UserName": "a", "emails": [{"type": "Work", "value": "a@x"}], "active": false});
    let want = [
        Claim { path: parse_path("userName"), want: Want::Is(json!("a")) },
        Claim { path: parse_path(r#"emails[type eq "work"].value"#), want: Want::Is(json!("a@x")) },
        Claim { path: parse_path("active"), want: Want::Is(json!("False")) },
        Claim { path: parse_path("nickName"), want: Want::Absent },
    ];
    assert!(unkept(&got, &want.iter().collect::<Vec<_>>()).is_empty());
    let lost = unkept(&got, &[&Claim { path: parse_path("title"), want: Want::Is(json!("x")) }]);
    assert_eq!(lost, ["title = \"x\" (got nothing)"]);
}
