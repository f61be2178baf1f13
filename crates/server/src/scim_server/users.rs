//! `/Users`: directory users as SCIM User resources (core, enterprise extension, and the
//! directory's custom attributes as an extension of our own).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use directory::profile::{Address, MultiValue, ADDRESS_PARTS, PROFILE_LISTS, PROFILE_TEXTS};
use directory::{AttributeDef, AttributeType, Role, User, UserInput, UserSource, UserStatus, ValidationErrors};
use scim::query::get_ci;
use scim::server::patch;
use scim::server::projection::Projection;
use scim::server::schema::ResourceSchema;
use scim::server::{lenient_bool, ScimError};
use scim::{ENTERPRISE_USER_SCHEMA, USER_SCHEMA};
use serde_json::{json, Map, Value};
use store::scim::{ScimQuery, ScimUser};
use uuid::Uuid;

use super::{
    base_url, check_if_match, list_response, not_modified, not_modified_response, tagged, user_resource_schema, Client,
    Fail, ScimBody, ScimResult, ScimState, Search, CUSTOM_SCHEMA,
};
use super::{filter, scope};
use crate::service::inbound_scim::NewPassword;

pub(crate) fn directory_field(field: &str) -> String {
    let scim = match field {
        "username" => "userName",
        "email" => "emails",
        "first_name" => "name.givenName",
        "last_name" => "name.familyName",
        "display_name" => "displayName",
        "title" => "title",
        "department" => "department",
        "phone" => "phoneNumbers",
        "employee_number" => "employeeNumber",
        "manager_id" => "manager",
        "status" => "active",
        other => {
            if let Some(custom) = other.strip_prefix("attributes.") {
                return format!("{CUSTOM_SCHEMA}:{custom}");
            }
            // A profile attribute, or a value of one (`phone_numbers[1].value`).
            let head = other.find(['[', '.']).unwrap_or(other.len());
            let (name, rest) = other.split_at(head);
            if let Some((_, scim, _)) = PROFILE_TEXTS.iter().find(|(d, _, _)| *d == name) {
                return (*scim).to_owned();
            }
            if let Some((_, scim)) = PROFILE_LISTS.iter().find(|(d, _)| *d == name) {
                let rest = ADDRESS_PARTS
                    .iter()
                    .fold(rest.to_owned(), |r, (d, s)| r.replace(&format!(".{d}"), &format!(".{s}")));
                return format!("{scim}{rest}");
            }
            other
        }
    };
    scim.to_owned()
}

pub(crate) fn validation(e: ValidationErrors) -> ScimError {
    let detail =
        e.0.iter().map(|f| format!("{}: {}", directory_field(&f.field), f.reason)).collect::<Vec<_>>().join("; ");
    ScimError::invalid_value(detail)
}

/// The full name SCIM shows when none is stored: the given and family name.
fn computed_formatted(first: Option<&str>, last: Option<&str>) -> Option<String> {
    let parts = [first, last].into_iter().flatten().collect::<Vec<_>>();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// A multi-valued attribute as SCIM writes it.
fn values_json(list: &[MultiValue]) -> Value {
    Value::Array(
        list.iter()
            .map(|v| {
                let mut o = Map::new();
                o.insert("value".into(), json!(v.value));
                if let Some(t) = &v.kind {
                    o.insert("type".into(), json!(t));
                }
                // Always said, so that a client that sent `false` reads it back.
                o.insert("primary".into(), json!(v.primary));
                if let Some(d) = &v.display {
                    o.insert("display".into(), json!(d));
                }
                Value::Object(o)
            })
            .collect(),
    )
}

/// A user as a SCIM resource.
pub(crate) fn to_json(
    su: &ScimUser,
    roles: &[Role],
    manager: Option<&User>,
    defs: &[AttributeDef],
    base: &str,
) -> Value {
    let u = &su.user;
    let p = &u.profile;
    let mut o = Map::new();
    let mut schemas = vec![json!(USER_SCHEMA)];
    o.insert("id".into(), json!(u.id));
    if let Some(x) = &su.external_id {
        o.insert("externalId".into(), json!(x));
    }
    o.insert("userName".into(), json!(u.username));
    let mut name = Map::new();
    let formatted =
        p.formatted_name.clone().or_else(|| computed_formatted(u.first_name.as_deref(), u.last_name.as_deref()));
    for (key, value) in [
        ("formatted", formatted.as_ref()),
        ("familyName", u.last_name.as_ref()),
        ("givenName", u.first_name.as_ref()),
        ("middleName", p.middle_name.as_ref()),
        ("honorificPrefix", p.honorific_prefix.as_ref()),
        ("honorificSuffix", p.honorific_suffix.as_ref()),
    ] {
        if let Some(v) = value {
            name.insert(key.into(), json!(v));
        }
    }
    if !name.is_empty() {
        o.insert("name".into(), Value::Object(name));
    }
    if let Some(d) = &u.display_name {
        o.insert("displayName".into(), json!(d));
    }
    if let Some(t) = &u.title {
        o.insert("title".into(), json!(t));
    }
    let mut ent = Map::new();
    for (field, scim, enterprise) in PROFILE_TEXTS {
        let Some(Some(v)) = p.text(field) else { continue };
        match scim.split_once('.') {
            Some(_) => {} // name.*, above
            None if enterprise => {
                ent.insert(scim.into(), json!(v));
            }
            None => {
                o.insert(scim.into(), json!(v));
            }
        }
    }
    o.insert("active".into(), json!(u.status == UserStatus::Active));
    let emails =
        if p.emails.is_empty() { u.email.iter().cloned().map(MultiValue::work).collect() } else { p.emails.clone() };
    let phones = if p.phone_numbers.is_empty() {
        u.phone.iter().cloned().map(MultiValue::work).collect()
    } else {
        p.phone_numbers.clone()
    };
    for (field, scim) in PROFILE_LISTS {
        let list = match field {
            "emails" => values_json(&emails),
            "phone_numbers" => values_json(&phones),
            "addresses" => Value::Array(p.addresses.iter().map(Address::to_scim).collect()),
            other => values_json(p.list(other).map(Vec::as_slice).unwrap_or_default()),
        };
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            o.insert(scim.into(), list);
        }
    }
    if !roles.is_empty() {
        let groups: Vec<Value> = roles
            .iter()
            .map(|r| json!({"value": r.id, "$ref": format!("{base}/Groups/{}", r.id), "display": r.name, "type": "direct"}))
            .collect();
        o.insert("groups".into(), Value::Array(groups));
    }
    if let Some(n) = &u.employee_number {
        ent.insert("employeeNumber".into(), json!(n));
    }
    if let Some(d) = &u.department {
        ent.insert("department".into(), json!(d));
    }
    if let Some(m) = u.manager_id {
        let mut mo = Map::new();
        mo.insert("value".into(), json!(m));
        mo.insert("$ref".into(), json!(format!("{base}/Users/{m}")));
        if let Some(mu) = manager {
            mo.insert("displayName".into(), json!(mu.display_name.clone().unwrap_or_else(|| mu.username.clone())));
        }
        ent.insert("manager".into(), Value::Object(mo));
    }
    if !ent.is_empty() {
        schemas.push(json!(ENTERPRISE_USER_SCHEMA));
        o.insert(ENTERPRISE_USER_SCHEMA.into(), Value::Object(ent));
    }
    let custom: Map<String, Value> = u
        .attributes
        .iter()
        .filter(|(k, _)| defs.iter().any(|d| &d.name == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !custom.is_empty() {
        schemas.push(json!(CUSTOM_SCHEMA));
        o.insert(CUSTOM_SCHEMA.into(), Value::Object(custom));
    }
    o.insert("schemas".into(), Value::Array(schemas));
    o.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": u.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "lastModified": u.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "location": format!("{base}/Users/{}", u.id),
            "version": super::etag(u.version),
        }),
    );
    Value::Object(o)
}

/// Every problem found while reading a request, so that one answer names them all.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: impl Into<String>) {
        self.0.push(p.into());
    }

    /// A text value (`None` for null); anything else is a problem.
    fn text(&mut self, v: &Value, what: &str) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            // Numbers sent for text (an employee number as 42) are read as their text.
            Value::Number(n) => Some(n.to_string()),
            _ => {
                self.push(format!("{what} must be a string"));
                None
            }
        }
    }

    fn check_keys(&mut self, o: &Map<String, Value>, allowed: &[&str], what: &str) {
        for k in o.keys() {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(k)) {
                self.push(format!("{what}{k} is not an attribute this directory keeps (see /Schemas)"));
            }
        }
    }
}

/// The items of a multi-valued attribute (a single object is read as a list of one).
fn items<'a>(v: &'a Value, what: &str, problems: &mut Problems) -> Vec<&'a Map<String, Value>> {
    let list: Vec<&Value> = match v {
        Value::Null => return vec![],
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![v],
        _ => {
            problems.push(format!("{what} must be a list of values"));
            return vec![];
        }
    };
    list.into_iter()
        .filter_map(|item| match item {
            Value::Object(o) => Some(o),
            Value::Null => None,
            _ => {
                problems.push(format!("{what} holds objects with a value"));
                None
            }
        })
        .collect()
}

/// A multi-valued attribute of simple values (`emails`, `phoneNumbers`, `roles`, ...).
fn multi_values(v: &Value, what: &str, problems: &mut Problems) -> Vec<MultiValue> {
    let mut out = vec![];
    for o in items(v, what, problems) {
        problems.check_keys(o, &["value", "type", "primary", "display", "$ref"], &format!("{what}."));
        let value = get_ci(o, "value").and_then(|x| problems.text(x, &format!("{what}.value")));
        let kind = get_ci(o, "type").and_then(|x| problems.text(x, &format!("{what}.type")));
        let display = get_ci(o, "display").and_then(|x| problems.text(x, &format!("{what}.display")));
        let primary = match get_ci(o, "primary") {
            None | Some(Value::Null) => false,
            Some(p) => lenient_bool(p).unwrap_or_else(|| {
                problems.push(format!("{what}.primary must be true or false"));
                false
            }),
        };
        if let Some(value) = value {
            out.push(MultiValue { value, kind, primary, display });
        }
    }
    out
}

fn addresses(v: &Value, problems: &mut Problems) -> Vec<Address> {
    let mut out = vec![];
    for o in items(v, "addresses", problems) {
        let mut allowed: Vec<&str> = ADDRESS_PARTS.iter().map(|(_, s)| *s).collect();
        allowed.extend(["type", "primary"]);
        problems.check_keys(o, &allowed, "addresses.");
        let mut a = Address {
            kind: get_ci(o, "type").and_then(|x| problems.text(x, "addresses.type")),
            primary: get_ci(o, "primary").and_then(lenient_bool).unwrap_or(false),
            ..Address::default()
        };
        for (part, scim) in ADDRESS_PARTS {
            let value = get_ci(o, scim).and_then(|x| problems.text(x, &format!("addresses.{scim}")));
            if let Some(slot) = a.part_mut(part) {
                *slot = value;
            }
        }
        out.push(a);
    }
    out
}

/// The manager's id from what clients send: an object with `value` (or only `$ref`, whose
/// last segment is the id), a bare id, or (Entra's older shape) a list of one such object.
fn manager_id(v: &Value, problems: &mut Problems) -> Option<Uuid> {
    let id = match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(a) if a.len() <= 1 => return a.first().and_then(|one| manager_id(one, problems)),
        Value::Object(m) => {
            problems.check_keys(m, &["value", "$ref", "displayName"], "manager.");
            let value = get_ci(m, "value").and_then(|x| problems.text(x, "manager.value"));
            // Without a value, the id is the last segment of `$ref`.
            let from_ref = || {
                get_ci(m, "$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.trim_end_matches('/').rsplit('/').next())
                    .map(str::to_owned)
            };
            value.filter(|v| !v.trim().is_empty()).or_else(from_ref)
        }
        _ => {
            problems.push("manager must be an object with a value");
            None
        }
    };
    match id.filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(s) => match Uuid::parse_str(s.trim()) {
            Ok(id) => Some(id),
            Err(_) => {
                problems.push(format!("manager.value {s:?} is not the id of a user"));
                None
            }
        },
    }
}

/// A SCIM User as read: the directory's writable fields, the `externalId`, and what could
/// not be read (reported with the directory's own checks, so that one answer names them all).
pub(crate) struct Read {
    pub input: UserInput,
    pub external_id: Option<String>,
    problems: Vec<String>,
}

/// Reads a SCIM User into the directory's writable fields and the `externalId`. Unknown
/// attributes are refused, except a top-level one named like a declared custom attribute,
/// which is stored as that custom attribute. Read-only attributes are ignored.
pub(crate) fn from_json(body: &Value, existing: Option<&User>, defs: &[AttributeDef]) -> Result<Read, ScimError> {
    let Value::Object(o) = body else { return Err(ScimError::invalid_syntax("a User must be a JSON object")) };
    let mut p = Problems::default();
    let mut input = UserInput::default();
    let mut external_id = None;
    let mut username = None;
    let mut status = existing.map(|u| u.status).filter(|s| *s != UserStatus::Deleted);
    let mut formatted = None;
    for (k, v) in o {
        let key = k.as_str();
        let is = |name: &str| key.eq_ignore_ascii_case(name);
        if is("schemas") || is("id") || is("meta") || is("groups") {
            continue;
        } else if is("externalId") {
            external_id = p.text(v, "externalId");
        } else if is("userName") {
            username = p.text(v, "userName");
        } else if is("name") {
            match v {
                Value::Null => {}
                Value::Object(n) => {
                    let parts =
                        ["givenName", "familyName", "formatted", "middleName", "honorificPrefix", "honorificSuffix"];
                    p.check_keys(n, &parts, "name.");
                    let mut part = |name: &str| get_ci(n, name).and_then(|x| p.text(x, &format!("name.{name}")));
                    input.first_name = part("givenName");
                    input.last_name = part("familyName");
                    formatted = part("formatted");
                    input.profile.middle_name = part("middleName");
                    input.profile.honorific_prefix = part("honorificPrefix");
                    input.profile.honorific_suffix = part("honorificSuffix");
                }
                _ => p.push("name must be an object"),
            }
        } else if is("displayName") {
            input.display_name = p.text(v, "displayName");
        } else if is("title") {
            input.title = p.text(v, "title");
        } else if is("active") {
            if !v.is_null() {
                match lenient_bool(v) {
                    Some(active) => status = Some(if active { UserStatus::Active } else { UserStatus::Suspended }),
                    None => p.push("active must be true or false"),
                }
            }
        } else if let Some((field, scim, _)) =
            PROFILE_TEXTS.iter().find(|(_, scim, ent)| !ent && !scim.contains('.') && key.eq_ignore_ascii_case(scim))
        {
            let value = p.text(v, scim);
            if let Some(slot) = input.profile.text_mut(field) {
                *slot = value;
            }
        } else if let Some((field, scim)) = PROFILE_LISTS.iter().find(|(_, scim)| key.eq_ignore_ascii_case(scim)) {
            if *field == "addresses" {
                input.profile.addresses = addresses(v, &mut p);
            } else {
                let values = multi_values(v, scim, &mut p);
                if let Some(slot) = input.profile.list_mut(field) {
                    *slot = values;
                }
            }
        } else if is(ENTERPRISE_USER_SCHEMA) {
            let Value::Object(e) = v else {
                if !v.is_null() {
                    p.push(format!("{ENTERPRISE_USER_SCHEMA} must be an object"));
                }
                continue;
            };
            for (ek, ev) in e {
                let eis = |name: &str| ek.eq_ignore_ascii_case(name);
                if eis("employeeNumber") {
                    input.employee_number = p.text(ev, "employeeNumber");
                } else if eis("department") {
                    input.department = p.text(ev, "department");
                } else if eis("manager") {
                    input.manager_id = manager_id(ev, &mut p);
                } else if let Some((field, scim, _)) =
                    PROFILE_TEXTS.iter().find(|(_, scim, ent)| *ent && ek.eq_ignore_ascii_case(scim))
                {
                    let value = p.text(ev, scim);
                    if let Some(slot) = input.profile.text_mut(field) {
                        *slot = value;
                    }
                } else if let Some(def) = defs.iter().find(|d| d.name.eq_ignore_ascii_case(ek)) {
                    if let Err(e) = custom_value(&mut input, def, ev) {
                        p.push(e.detail);
                    }
                } else {
                    p.push(format!(
                        "{ENTERPRISE_USER_SCHEMA}:{ek} is not an attribute this directory keeps (see /Schemas)"
                    ));
                }
            }
        } else if is(CUSTOM_SCHEMA) {
            let Value::Object(c) = v else {
                if !v.is_null() {
                    p.push(format!("{CUSTOM_SCHEMA} must be an object"));
                }
                continue;
            };
            for (ck, cv) in c {
                match defs.iter().find(|d| d.name.eq_ignore_ascii_case(ck)) {
                    Some(def) => {
                        if let Err(e) = custom_value(&mut input, def, cv) {
                            p.push(e.detail);
                        }
                    }
                    None => p.push(format!(
                        "{CUSTOM_SCHEMA}:{ck} is not a declared custom attribute (declare it with POST /api/v1/attributes)"
                    )),
                }
            }
        } else if let Some(def) = defs.iter().find(|d| d.name.eq_ignore_ascii_case(key)) {
            if let Err(e) = custom_value(&mut input, def, v) {
                p.push(e.detail);
            }
        } else {
            p.push(format!("{key} is not an attribute this directory keeps (see /Schemas)"));
        }
    }
    input.profile.formatted_name = formatted;
    match username.filter(|u| !u.trim().is_empty()) {
        Some(u) => input.username = u,
        None => p.push("userName is required"),
    }
    input.status = Some(status.unwrap_or(UserStatus::Active));
    Ok(Read { input, external_id, problems: p.0 })
}

/// A custom attribute's value, converted leniently from what clients send (`"True"`, `"42"`).
fn custom_value(input: &mut UserInput, def: &AttributeDef, v: &Value) -> Result<(), ScimError> {
    let v = match (def.kind, v) {
        (_, Value::Null) => return Ok(()),
        (AttributeType::Boolean, v) => Value::Bool(
            lenient_bool(v).ok_or_else(|| ScimError::invalid_value(format!("{}: must be true or false", def.name)))?,
        ),
        (AttributeType::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| ScimError::invalid_value(format!("{}: must be a number", def.name)))?,
        (AttributeType::StringList, Value::String(s)) => json!([s]),
        (_, v) => v.clone(),
    };
    input.attributes.insert(def.name.clone(), v);
    Ok(())
}

/// Takes `password` out of a User (a body, or the resource a PATCH was applied to): it is no
/// field of the directory's, and is written apart, only as a hash (see
/// `crate::service::inbound_scim`). `target` names the user (or the path of a new one) in the
/// audit entry of a refusal: a client whose scope does not allow passwords gets 403.
async fn take_password(
    state: &ScimState,
    client: &Client,
    user: &mut Value,
    target: (&str, &str),
) -> ScimResult<Option<NewPassword>> {
    let Value::Object(o) = user else { return Ok(None) };
    let qualified = format!("{USER_SCHEMA}:password");
    let keys: Vec<String> = o
        .keys()
        .filter(|k| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case(&qualified))
        .cloned()
        .collect();
    let mut password = None;
    for key in keys {
        match o.remove(&key) {
            Some(Value::String(p)) if password.is_none() => password = Some(p),
            Some(Value::String(_)) => return Err(ScimError::invalid_value("password is given twice").into()),
            Some(Value::Null) | None => {}
            Some(_) => return Err(ScimError::invalid_value("password must be a string").into()),
        }
    }
    let Some(password) = password else { return Ok(None) };
    if !client.scope.passwords {
        scope::refuse(state, client, target.0, target.1, "the client may not set passwords").await?;
        return Err(ScimError::new(
            403,
            None,
            "this SCIM client may not set passwords (its scope says passwords: false)",
        )
        .into());
    }
    Ok(Some(NewPassword::new(password)))
}

/// The manager read for the resource, if any.
async fn manager_of(state: &ScimState, u: &User) -> ScimResult<Option<User>> {
    match u.manager_id {
        Some(m) => Ok(state.store().get_user(m).await?.filter(|m| m.status != UserStatus::Deleted)),
        None => Ok(None),
    }
}

/// The full resource of a user, as the client sees it (its groups in scope, the manager's
/// name only when the manager is in scope).
pub(crate) async fn resource(
    state: &ScimState,
    client: &Client,
    su: &ScimUser,
    defs: &[AttributeDef],
    base: &str,
    groups: bool,
) -> ScimResult<Value> {
    let roles = if groups { scope::visible_roles(state, client, su.user.id).await? } else { vec![] };
    let mut manager = manager_of(state, &su.user).await?;
    if let Some(m) = &manager {
        if !scope::visible_users(state, client, &[m.id]).await?.contains(&m.id) {
            manager = None;
        }
    }
    Ok(to_json(su, &roles, manager.as_ref(), defs, base))
}

async fn load(state: &ScimState, client: &Client, id: &str) -> ScimResult<ScimUser> {
    scope::load_user(state, client, id).await
}

/// Checks the input against the directory's rules (the service layer's own check, as for the
/// admin API) and the client's scope. `current` is the
/// stored user a PUT or PATCH changes. A manager the client cannot see may stay where an admin
/// put it, but a client cannot name one: to the client it does not exist.
async fn validate(
    state: &ScimState,
    client: &Client,
    read: &mut Read,
    current: Option<&User>,
    password: Option<&NewPassword>,
) -> ScimResult<()> {
    let input = &mut read.input;
    let mut check_manager = true;
    let mut scope_errors = ValidationErrors::default();
    if let Some(manager) = input.manager_id {
        let unchanged = current.is_some_and(|u| u.manager_id == Some(manager));
        if !unchanged && !scope::visible_users(state, client, &[manager]).await?.contains(&manager) {
            let reason = "named as a manager, but out of the client's scope";
            scope::refuse(state, client, "user", &manager.to_string(), reason).await?;
            // The very words said of an id that exists nowhere.
            scope_errors.push("manager_id", crate::service::NO_SUCH_MANAGER);
            check_manager = false;
        }
    }
    let mut errors = state.service().user_problems(input, current.map(|u| u.id), check_manager).await?;
    errors.0.extend(scope_errors.0);
    if let Some(why) = password.and_then(NewPassword::problem) {
        errors.push("password", why);
    }
    if read.problems.is_empty() {
        return errors.into_result().map_err(|e| Fail(validation(e), None));
    }
    // What could not be read, then what the directory refuses of the rest (a missing userName
    // is said once).
    let mut all = std::mem::take(&mut read.problems);
    let unnamed = all.iter().any(|p| p.starts_with("userName"));
    all.extend(
        errors
            .0
            .iter()
            .filter(|e| !(unnamed && e.field == "username"))
            .map(|e| format!("{}: {}", directory_field(&e.field), e.reason)),
    );
    Err(ScimError::invalid_value(all.join("; ")).into())
}

fn query_params(raw: &Option<String>) -> ScimResult<Search> {
    Search::from_query(raw.as_deref())
}

fn projection_from(raw: &Option<String>, rs: &ResourceSchema) -> ScimResult<Projection> {
    let s = query_params(raw)?;
    Ok(Projection::parse(s.attributes.as_deref(), s.excluded.as_deref(), rs)?)
}

pub(crate) async fn list(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ScimResult {
    run_search(&state, &client, &headers, query_params(&q)?).await
}

pub(crate) async fn search(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> ScimResult {
    let search = Search::from_body(&body)?;
    run_search(&state, &client, &headers, search).await
}

async fn run_search(state: &ScimState, client: &Client, headers: &HeaderMap, s: Search) -> ScimResult {
    let defs = state.store().list_attribute_defs().await?;
    let rs = user_resource_schema(&defs);
    let projection = Projection::parse(s.attributes.as_deref(), s.excluded.as_deref(), &rs)?;
    let filter = match s.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(text) => filter::user_filter(&filter::parse(text)?, &rs, &defs)?,
        None => store::scim::ResourceFilter::True,
    };
    let filter = match scope::user_filter(client) {
        store::scim::ResourceFilter::True => filter,
        in_scope => store::scim::ResourceFilter::and(in_scope, filter),
    };
    let sort = s.sort_by.as_deref().map(|p| filter::user_sort(p, &rs, &defs)).transpose()?.map(|f| (f, s.descending));
    let query = ScimQuery { filter, sort, offset: s.start_index - 1, count: s.count };
    let (total, users) = state.store().scim_users(&query).await?;
    let base = base_url(headers);
    let groups = projection.wants("groups");
    let mut resources = Vec::with_capacity(users.len());
    for su in &users {
        resources.push(projection.apply(resource(state, client, su, &defs, &base, groups).await?, &rs));
    }
    Ok(super::scim_json(StatusCode::OK, &list_response(total, s.start_index, resources)))
}

pub(crate) async fn get(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ScimResult {
    let su = load(&state, &client, &id).await?;
    if not_modified(&headers, su.user.version)? {
        return Ok(not_modified_response(su.user.version));
    }
    let defs = state.store().list_attribute_defs().await?;
    let rs = user_resource_schema(&defs);
    let projection = projection_from(&q, &rs)?;
    let groups = projection.wants("groups");
    let body = projection.apply(resource(&state, &client, &su, &defs, &base_url(&headers), groups).await?, &rs);
    Ok(tagged(StatusCode::OK, su.user.version, &body, None))
}

async fn answer(
    state: &ScimState,
    client: &Client,
    headers: &HeaderMap,
    su: &ScimUser,
    status: StatusCode,
    q: &Option<String>,
) -> ScimResult {
    let defs = state.store().list_attribute_defs().await?;
    let rs = user_resource_schema(&defs);
    let projection = projection_from(q, &rs)?;
    let base = base_url(headers);
    let body = projection.apply(resource(state, client, su, &defs, &base, true).await?, &rs);
    let location = (status == StatusCode::CREATED).then(|| format!("{base}/Users/{}", su.user.id));
    Ok(tagged(status, su.user.version, &body, location.as_deref()))
}

pub(crate) async fn create(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    ScimBody(mut body): ScimBody,
) -> ScimResult {
    let defs = state.store().list_attribute_defs().await?;
    let password = take_password(&state, &client, &mut body, ("scim", "/Users")).await?;
    let mut read = from_json(&body, None, &defs)?;
    validate(&state, &client, &mut read, None, password.as_ref()).await?;
    let Read { input, external_id, .. } = read;
    let su =
        ScimUser { user: User::new(input, UserSource::Scim, directory::now()), external_id, owner: Some(client.id) };
    state.service().save_scim_user(&client.actor, &su, None, password.as_ref()).await?;
    answer(&state, &client, &headers, &su, StatusCode::CREATED, &q).await
}

/// Writes a new state of an existing user (PUT, PATCH), and its password when given (`input`
/// `None`: the user is unchanged, the password alone is written). A field a directory source
/// fills is refused (see `crate::service::inbound_scim`), with an audit entry.
async fn save(
    state: &ScimState,
    client: &Client,
    current: &ScimUser,
    input: Option<UserInput>,
    external_id: Option<String>,
    password: Option<&NewPassword>,
) -> ScimResult<ScimUser> {
    let su = match input {
        Some(input) => {
            ScimUser { user: current.user.updated(input, directory::now()), external_id, owner: current.owner }
        }
        None => current.clone(),
    };
    match state.service().save_scim_user(&client.actor, &su, Some(current), password).await {
        Ok(()) => Ok(su),
        Err(e @ crate::error::Error::SourceOwned { .. }) => {
            scope::refuse(state, client, "user", &current.user.id.to_string(), &e.to_string()).await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn replace(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    ScimBody(mut body): ScimBody,
) -> ScimResult {
    let current = load(&state, &client, &id).await?;
    check_if_match(&headers, current.user.version)?;
    if let Some(given) = body.get("id").and_then(Value::as_str) {
        if given != current.user.id.to_string() {
            return Err(ScimError::mutability("id cannot be changed").into());
        }
    }
    let defs = state.store().list_attribute_defs().await?;
    let password = take_password(&state, &client, &mut body, ("user", &id)).await?;
    let mut read = from_json(&body, Some(&current.user), &defs)?;
    validate(&state, &client, &mut read, Some(&current.user), password.as_ref()).await?;
    let Read { input, external_id, .. } = read;
    let su = save(&state, &client, &current, Some(input), external_id, password.as_ref()).await?;
    answer(&state, &client, &headers, &su, StatusCode::OK, &q).await
}

pub(crate) async fn patch(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    ScimBody(body): ScimBody,
) -> ScimResult {
    let ops = patch::parse_request(&body)?;
    let defs = state.store().list_attribute_defs().await?;
    let rs = user_resource_schema(&defs);
    let base = base_url(&headers);
    let su = crate::service::retry_write("user", headers.contains_key("if-match"), || async {
        let current = load(&state, &client, &id).await?;
        check_if_match(&headers, current.user.version)?;
        let mut doc = resource(&state, &client, &current, &defs, &base, false).await?;
        if current.user.profile.formatted_name.is_none() {
            // The full name shown is made of the parts; only one the client sends is kept.
            if let Some(Value::Object(name)) = doc.get_mut("name") {
                name.remove("formatted");
            }
        }
        patch::apply(&mut doc, &ops, &rs)?;
        let password = take_password(&state, &client, &mut doc, ("user", &id)).await?;
        let mut read = from_json(&doc, Some(&current.user), &defs)?;
        validate(&state, &client, &mut read, Some(&current.user), password.as_ref()).await?;
        let Read { input, external_id, .. } = read;
        let changed = input != UserInput::from_user(&current.user) || external_id != current.external_id;
        match (changed, &password) {
            (false, None) => Ok(current),
            (false, Some(_)) => save(&state, &client, &current, None, external_id, password.as_ref()).await,
            (true, _) => save(&state, &client, &current, Some(input), external_id, password.as_ref()).await,
        }
    })
    .await?;
    answer(&state, &client, &headers, &su, StatusCode::OK, &q).await
}

pub(crate) async fn delete(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ScimResult {
    let current = load(&state, &client, &id).await?;
    check_if_match(&headers, current.user.version)?;
    state.service().delete_user(&client.actor, current.user.id, Some(current.user.version)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
