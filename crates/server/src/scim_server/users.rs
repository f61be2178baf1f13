//! `/Users`: directory users as SCIM User resources (core, enterprise extension, and the
//! directory's custom attributes as an extension of our own).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
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
        other => return other.replacen("attributes.", &format!("{CUSTOM_SCHEMA}:"), 1),
    };
    scim.to_owned()
}

pub(crate) fn validation(e: ValidationErrors) -> ScimError {
    let detail =
        e.0.iter().map(|f| format!("{}: {}", directory_field(&f.field), f.reason)).collect::<Vec<_>>().join("; ");
    ScimError::invalid_value(detail)
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
    let mut o = Map::new();
    let mut schemas = vec![json!(USER_SCHEMA)];
    o.insert("id".into(), json!(u.id));
    if let Some(x) = &su.external_id {
        o.insert("externalId".into(), json!(x));
    }
    o.insert("userName".into(), json!(u.username));
    let mut name = Map::new();
    if let Some(f) = &u.first_name {
        name.insert("givenName".into(), json!(f));
    }
    if let Some(l) = &u.last_name {
        name.insert("familyName".into(), json!(l));
    }
    if !name.is_empty() {
        let formatted = [u.first_name.as_deref(), u.last_name.as_deref()].into_iter().flatten().collect::<Vec<_>>();
        name.insert("formatted".into(), json!(formatted.join(" ")));
        o.insert("name".into(), Value::Object(name));
    }
    if let Some(d) = &u.display_name {
        o.insert("displayName".into(), json!(d));
    }
    if let Some(t) = &u.title {
        o.insert("title".into(), json!(t));
    }
    o.insert("active".into(), json!(u.status == UserStatus::Active));
    if let Some(e) = &u.email {
        o.insert("emails".into(), json!([{"value": e, "type": "work"}]));
    }
    if let Some(p) = &u.phone {
        o.insert("phoneNumbers".into(), json!([{"value": p, "type": "work"}]));
    }
    if !roles.is_empty() {
        let groups: Vec<Value> = roles
            .iter()
            .map(|r| json!({"value": r.id, "$ref": format!("{base}/Groups/{}", r.id), "display": r.name, "type": "direct"}))
            .collect();
        o.insert("groups".into(), Value::Array(groups));
    }
    let mut ent = Map::new();
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

fn text(v: &Value, what: &str) -> Result<Option<String>, ScimError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(ScimError::invalid_value(format!("{what} must be a string"))),
    }
}

fn check_keys(o: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), ScimError> {
    for k in o.keys() {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(k)) {
            return Err(ScimError::invalid_value(format!(
                "{what}{k} is not an attribute this directory keeps (see /Schemas)"
            )));
        }
    }
    Ok(())
}

/// The one value of `emails` / `phoneNumbers` (the directory keeps one, of type work).
fn single_value(v: &Value, what: &str) -> Result<Option<String>, ScimError> {
    let items = match v {
        Value::Null => return Ok(None),
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![v.clone()],
        _ => return Err(ScimError::invalid_value(format!("{what} must be a list of values"))),
    };
    let mut values: Vec<(String, bool)> = vec![];
    for item in &items {
        let Value::Object(o) = item else {
            return Err(ScimError::invalid_value(format!("{what} holds objects with a value")));
        };
        check_keys(o, &["value", "type", "primary", "display"], &format!("{what}."))?;
        if let Some(t) = get_ci(o, "type").and_then(|t| text(t, &format!("{what}.type")).transpose()) {
            let t = t?;
            if !t.eq_ignore_ascii_case("work") {
                return Err(ScimError::invalid_value(format!(
                    "{what}: this directory keeps one value of type work, not {t:?}"
                )));
            }
        }
        let primary = get_ci(o, "primary").and_then(lenient_bool).unwrap_or(false);
        if let Some(v) = get_ci(o, "value").map(|v| text(v, &format!("{what}.value"))).transpose()?.flatten() {
            values.push((v, primary));
        }
    }
    values.dedup_by(|a, b| a.0.eq_ignore_ascii_case(&b.0));
    match values.len() {
        0 => Ok(None),
        1 => Ok(values.pop().map(|v| v.0)),
        _ => Err(ScimError::invalid_value(format!("{what}: this directory keeps one value per user; send one"))),
    }
}

/// Reads a SCIM User into the directory's writable fields and the `externalId`. Unknown
/// attributes are refused, except a top-level one named like a declared custom attribute,
/// which is stored as that custom attribute. Read-only attributes are ignored.
pub(crate) fn from_json(
    body: &Value,
    existing: Option<&User>,
    defs: &[AttributeDef],
) -> Result<(UserInput, Option<String>), ScimError> {
    let Value::Object(o) = body else { return Err(ScimError::invalid_syntax("a User must be a JSON object")) };
    let mut input = UserInput::default();
    let mut external_id = None;
    let mut username = None;
    let mut status = existing.map(|u| u.status).filter(|s| *s != UserStatus::Deleted);
    for (k, v) in o {
        let key = k.as_str();
        let is = |name: &str| key.eq_ignore_ascii_case(name);
        if is("schemas") || is("id") || is("meta") || is("groups") {
            continue;
        } else if is("externalId") {
            external_id = text(v, "externalId")?;
        } else if is("userName") {
            username = text(v, "userName")?;
        } else if is("name") {
            match v {
                Value::Null => {}
                Value::Object(n) => {
                    check_keys(n, &["givenName", "familyName", "formatted"], "name.")?;
                    input.first_name = get_ci(n, "givenName").map(|x| text(x, "name.givenName")).transpose()?.flatten();
                    input.last_name =
                        get_ci(n, "familyName").map(|x| text(x, "name.familyName")).transpose()?.flatten();
                }
                _ => return Err(ScimError::invalid_value("name must be an object")),
            }
        } else if is("displayName") {
            input.display_name = text(v, "displayName")?;
        } else if is("title") {
            input.title = text(v, "title")?;
        } else if is("active") {
            if !v.is_null() {
                let active = lenient_bool(v).ok_or_else(|| ScimError::invalid_value("active must be true or false"))?;
                status = Some(if active { UserStatus::Active } else { UserStatus::Suspended });
            }
        } else if is("emails") {
            input.email = single_value(v, "emails")?;
        } else if is("phoneNumbers") {
            input.phone = single_value(v, "phoneNumbers")?;
        } else if is(ENTERPRISE_USER_SCHEMA) {
            let Value::Object(e) = v else {
                if v.is_null() {
                    continue;
                }
                return Err(ScimError::invalid_value(format!("{ENTERPRISE_USER_SCHEMA} must be an object")));
            };
            for (ek, ev) in e {
                if ek.eq_ignore_ascii_case("employeeNumber") {
                    input.employee_number = text(ev, "employeeNumber")?;
                } else if ek.eq_ignore_ascii_case("department") {
                    input.department = text(ev, "department")?;
                } else if ek.eq_ignore_ascii_case("manager") {
                    let id = match ev {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        Value::Object(m) => {
                            check_keys(m, &["value", "$ref", "displayName"], "manager.")?;
                            let value = get_ci(m, "value").map(|x| text(x, "manager.value")).transpose()?.flatten();
                            // Without a value, the id is the last segment of `$ref`.
                            let from_ref = || {
                                get_ci(m, "$ref")
                                    .and_then(Value::as_str)
                                    .and_then(|r| r.trim_end_matches('/').rsplit('/').next())
                                    .map(str::to_owned)
                            };
                            value.or_else(from_ref)
                        }
                        _ => return Err(ScimError::invalid_value("manager must be an object with a value")),
                    };
                    input.manager_id = match id.filter(|s| !s.trim().is_empty()) {
                        None => None,
                        Some(s) => Some(Uuid::parse_str(s.trim()).map_err(|_| {
                            ScimError::invalid_value(format!("manager.value {s:?} is not the id of a user"))
                        })?),
                    };
                } else if let Some(def) = defs.iter().find(|d| d.name.eq_ignore_ascii_case(ek)) {
                    custom_value(&mut input, def, ev)?;
                } else {
                    return Err(ScimError::invalid_value(format!(
                        "{ENTERPRISE_USER_SCHEMA}:{ek} is not an attribute this directory keeps (see /Schemas)"
                    )));
                }
            }
        } else if is(CUSTOM_SCHEMA) {
            let Value::Object(c) = v else {
                if v.is_null() {
                    continue;
                }
                return Err(ScimError::invalid_value(format!("{CUSTOM_SCHEMA} must be an object")));
            };
            for (ck, cv) in c {
                let def = defs.iter().find(|d| d.name.eq_ignore_ascii_case(ck)).ok_or_else(|| {
                    ScimError::invalid_value(format!(
                        "{CUSTOM_SCHEMA}:{ck} is not a declared custom attribute (declare it with POST /api/v1/attributes)"
                    ))
                })?;
                custom_value(&mut input, def, cv)?;
            }
        } else if let Some(def) = defs.iter().find(|d| d.name.eq_ignore_ascii_case(key)) {
            custom_value(&mut input, def, v)?;
        } else {
            return Err(ScimError::invalid_value(format!(
                "{key} is not an attribute this directory keeps (see /Schemas; declare a custom attribute to keep it)"
            )));
        }
    }
    input.username =
        username.filter(|u| !u.trim().is_empty()).ok_or_else(|| ScimError::invalid_value("userName is required"))?;
    input.status = Some(status.unwrap_or(UserStatus::Active));
    Ok((input, external_id))
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
async fn resource(
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
    input: &mut UserInput,
    current: Option<&User>,
    password: Option<&NewPassword>,
) -> ScimResult<()> {
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
    errors.into_result().map_err(|e| Fail(validation(e), None))
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
    let (mut input, external_id) = from_json(&body, None, &defs)?;
    validate(&state, &client, &mut input, None, password.as_ref()).await?;
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
    let (mut input, external_id) = from_json(&body, Some(&current.user), &defs)?;
    validate(&state, &client, &mut input, Some(&current.user), password.as_ref()).await?;
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
        patch::apply(&mut doc, &ops, &rs)?;
        let password = take_password(&state, &client, &mut doc, ("user", &id)).await?;
        let (mut input, external_id) = from_json(&doc, Some(&current.user), &defs)?;
        validate(&state, &client, &mut input, Some(&current.user), password.as_ref()).await?;
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
