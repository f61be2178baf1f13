//! `/Groups`: a SCIM Group is a role of the directory, and its members are the role's
//! members, so membership pushed by an identity provider grants the role's apps.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use directory::{Role, RoleInput};
use scim::query::get_ci;
use scim::server::patch;
use scim::server::projection::Projection;
use scim::server::ScimError;
use scim::GROUP_SCHEMA;
use serde_json::{json, Map, Value};
use store::scim::{Member, ScimGroup, ScimQuery};
use uuid::Uuid;

use super::{
    base_url, check_if_match, group_resource_schema, list_response, not_modified, not_modified_response, tagged,
    Client, ScimBody, ScimResult, ScimState, Search,
};
use super::{filter, scope};

/// A role as a SCIM Group.
pub(crate) fn to_json(g: &ScimGroup, members: Option<&[Member]>, base: &str) -> Value {
    let r = &g.role;
    let mut o = Map::new();
    o.insert("schemas".into(), json!([GROUP_SCHEMA]));
    o.insert("id".into(), json!(r.id));
    if let Some(x) = &g.external_id {
        o.insert("externalId".into(), json!(x));
    }
    o.insert("displayName".into(), json!(r.name));
    if let Some(members) = members.filter(|m| !m.is_empty()) {
        let list: Vec<Value> = members
            .iter()
            .map(|m| json!({"value": m.id, "$ref": format!("{base}/Users/{}", m.id), "display": m.username, "type": "User"}))
            .collect();
        o.insert("members".into(), Value::Array(list));
    }
    o.insert(
        "meta".into(),
        json!({
            "resourceType": "Group",
            "created": r.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "lastModified": r.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "location": format!("{base}/Groups/{}", r.id),
            "version": super::etag(r.version),
        }),
    );
    Value::Object(o)
}

/// A SCIM Group as read: its name, `externalId` and member ids (`None` when `members` is absent).
type GroupParts = (String, Option<String>, Option<Vec<Uuid>>);

/// Reads a SCIM Group.
fn from_json(body: &Value) -> Result<GroupParts, ScimError> {
    let Value::Object(o) = body else { return Err(ScimError::invalid_syntax("a Group must be a JSON object")) };
    let (mut name, mut external_id, mut members) = (None, None, None);
    for (k, v) in o {
        let is = |n: &str| k.eq_ignore_ascii_case(n);
        if is("schemas") || is("id") || is("meta") {
            continue;
        } else if is("displayName") {
            name = match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                _ => return Err(ScimError::invalid_value("displayName must be a string")),
            };
        } else if is("externalId") {
            external_id = match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                _ => return Err(ScimError::invalid_value("externalId must be a string")),
            };
        } else if is("members") {
            let items = match v {
                Value::Null => vec![],
                Value::Array(a) => a.clone(),
                _ => return Err(ScimError::invalid_value("members must be a list")),
            };
            let mut ids = vec![];
            for m in &items {
                // A bare id is taken for `{"value": id}`.
                let wrapped;
                let m = match m {
                    Value::String(s) => {
                        wrapped = json!({ "value": s });
                        &wrapped
                    }
                    other => other,
                };
                let Value::Object(mo) = m else {
                    return Err(ScimError::invalid_value("each member is an object with a value"));
                };
                for mk in mo.keys() {
                    if !["value", "$ref", "display", "type"].iter().any(|a| a.eq_ignore_ascii_case(mk)) {
                        return Err(ScimError::invalid_value(format!("members.{mk} is not an attribute of a member")));
                    }
                }
                if let Some(t) = get_ci(mo, "type").and_then(Value::as_str) {
                    if !t.eq_ignore_ascii_case("User") {
                        return Err(ScimError::invalid_value(format!(
                            "members of type {t:?}: groups (roles) hold users only, they do not nest"
                        )));
                    }
                }
                let id = match get_ci(mo, "value") {
                    Some(Value::String(s)) => s.clone(),
                    _ => return Err(ScimError::invalid_value("each member needs a value (a user's id)")),
                };
                let id = Uuid::parse_str(id.trim())
                    .map_err(|_| ScimError::invalid_value(format!("member {id:?} is not the id of a user")))?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            members = Some(ids);
        } else {
            return Err(ScimError::invalid_value(format!("{k} is not an attribute of a Group here (see /Schemas)")));
        }
    }
    let name =
        name.filter(|n| !n.trim().is_empty()).ok_or_else(|| ScimError::invalid_value("displayName is required"))?;
    Ok((name, external_id, members))
}

fn role_input(name: String, description: Option<String>, pushable: bool) -> Result<RoleInput, ScimError> {
    let mut input = RoleInput { name, description, pushable };
    input.normalize_and_validate().map_err(|e| {
        ScimError::invalid_value(
            e.0.iter()
                .map(|f| format!("{}: {}", if f.field == "name" { "displayName" } else { &f.field }, f.reason))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    Ok(input)
}

async fn load(state: &ScimState, client: &Client, id: &str) -> ScimResult<ScimGroup> {
    scope::load_group(state, client, id).await
}

/// The group as the client sees it (its members in scope).
pub(crate) async fn full(
    state: &ScimState,
    client: &Client,
    g: &ScimGroup,
    base: &str,
    members: bool,
) -> ScimResult<Value> {
    let m = if members { Some(scope::visible_members(state, client, g.role.id).await?) } else { None };
    Ok(to_json(g, m.as_deref(), base))
}

fn projection_from(raw: &Option<String>) -> ScimResult<Projection> {
    let s = Search::from_query(raw.as_deref())?;
    Ok(Projection::parse(s.attributes.as_deref(), s.excluded.as_deref(), &group_resource_schema())?)
}

async fn answer(
    state: &ScimState,
    client: &Client,
    headers: &HeaderMap,
    g: &ScimGroup,
    status: StatusCode,
    q: &Option<String>,
) -> ScimResult {
    let projection = projection_from(q)?;
    let base = base_url(headers);
    let body =
        projection.apply(full(state, client, g, &base, projection.wants("members")).await?, &group_resource_schema());
    let location = (status == StatusCode::CREATED).then(|| format!("{base}/Groups/{}", g.role.id));
    Ok(tagged(status, g.role.version, &body, location.as_deref()))
}

pub(crate) async fn list(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ScimResult {
    run_search(&state, &client, &headers, Search::from_query(q.as_deref())?).await
}

pub(crate) async fn search(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> ScimResult {
    run_search(&state, &client, &headers, Search::from_body(&body)?).await
}

async fn run_search(state: &ScimState, client: &Client, headers: &HeaderMap, s: Search) -> ScimResult {
    let rs = group_resource_schema();
    let projection = Projection::parse(s.attributes.as_deref(), s.excluded.as_deref(), &rs)?;
    let filter = match s.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(text) => filter::group_filter(&filter::parse(text)?, &rs)?,
        None => store::scim::ResourceFilter::True,
    };
    let filter = match scope::group_filter(client) {
        store::scim::ResourceFilter::True => filter,
        in_scope => store::scim::ResourceFilter::and(in_scope, filter),
    };
    let sort = s.sort_by.as_deref().map(|p| filter::group_sort(p, &rs)).transpose()?.map(|f| (f, s.descending));
    let query = ScimQuery { filter, sort, offset: s.start_index - 1, count: s.count };
    let (total, groups) = state.store().scim_groups(&query).await?;
    let base = base_url(headers);
    let members = projection.wants("members");
    let mut resources = Vec::with_capacity(groups.len());
    for g in &groups {
        resources.push(projection.apply(full(state, client, g, &base, members).await?, &rs));
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
    let g = load(&state, &client, &id).await?;
    if not_modified(&headers, g.role.version)? {
        return Ok(not_modified_response(g.role.version));
    }
    let projection = projection_from(&q)?;
    let members = projection.wants("members");
    let body =
        projection.apply(full(&state, &client, &g, &base_url(&headers), members).await?, &group_resource_schema());
    Ok(tagged(StatusCode::OK, g.role.version, &body, None))
}

pub(crate) async fn create(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    ScimBody(body): ScimBody,
) -> ScimResult {
    let (name, external_id, members) = from_json(&body)?;
    let role = Role::new(role_input(name, None, false)?, directory::now());
    let members = scope::members_to_write(&state, &client, None, members.unwrap_or_default()).await?;
    let g = ScimGroup { role, external_id, owner: Some(client.id) };
    state.service().save_scim_group(&client.actor, &g, Some(&members), None).await?;
    answer(&state, &client, &headers, &g, StatusCode::CREATED, &q).await
}

/// Writes a new state of a group: renaming it (or changing its `externalId`) needs the client
/// to own it (or scope `all`); the members it cannot see are kept.
async fn save(
    state: &ScimState,
    client: &Client,
    current: &ScimGroup,
    name: String,
    external_id: Option<String>,
    members: Vec<Uuid>,
) -> ScimResult<ScimGroup> {
    if name != current.role.name || external_id != current.external_id {
        scope::check_owns_group(state, client, current).await?;
    }
    let members = scope::members_to_write(state, client, Some(current.role.id), members).await?;
    let input = role_input(name, current.role.description.clone(), current.role.pushable)?;
    let g = ScimGroup { role: current.role.updated(input, directory::now()), external_id, owner: current.owner };
    state.service().save_scim_group(&client.actor, &g, Some(&members), Some(current.role.version)).await?;
    Ok(g)
}

pub(crate) async fn replace(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    ScimBody(body): ScimBody,
) -> ScimResult {
    let current = load(&state, &client, &id).await?;
    check_if_match(&headers, current.role.version)?;
    if let Some(given) = body.get("id").and_then(Value::as_str) {
        if given != current.role.id.to_string() {
            return Err(ScimError::mutability("id cannot be changed").into());
        }
    }
    let (name, external_id, members) = from_json(&body)?;
    // PUT replaces: no members given means none.
    let g = save(&state, &client, &current, name, external_id, members.unwrap_or_default()).await?;
    answer(&state, &client, &headers, &g, StatusCode::OK, &q).await
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
    let rs = group_resource_schema();
    let base = base_url(&headers);
    let g = crate::service::retry_write("group", headers.contains_key("if-match"), || async {
        let current = load(&state, &client, &id).await?;
        check_if_match(&headers, current.role.version)?;
        let before_members: Vec<Uuid> =
            scope::visible_members(&state, &client, current.role.id).await?.iter().map(|m| m.id).collect();
        let mut doc = full(&state, &client, &current, &base, true).await?;
        patch::apply(&mut doc, &ops, &rs)?;
        let (name, external_id, members) = from_json(&doc)?;
        let members = members.unwrap_or_default();
        let same_members = {
            let mut a = before_members.clone();
            let mut b = members.clone();
            a.sort();
            b.sort();
            a == b
        };
        if name == current.role.name && external_id == current.external_id && same_members {
            return Ok(current);
        }
        save(&state, &client, &current, name, external_id, members).await
    })
    .await?;
    answer(&state, &client, &headers, &g, StatusCode::OK, &q).await
}

pub(crate) async fn delete(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ScimResult {
    let current = load(&state, &client, &id).await?;
    check_if_match(&headers, current.role.version)?;
    scope::check_owns_group(&state, &client, &current).await?;
    state.service().delete_role(&client.actor, current.role.id, Some(current.role.version)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
