//! SCIM filters (parsed by `scim::query`) to the store's storage-neutral filters: each SCIM
//! attribute path is mapped to a directory column or custom attribute; an attribute the
//! directory does not keep is an `invalidFilter` error. Attribute names are compared without
//! case; `userName`, `emails` and the other strings compare without case, ids with case.

use directory::profile::{ADDRESS_PARTS, PROFILE_LISTS, PROFILE_TEXTS};
use directory::{AttributeDef, AttributeType};
use scim::query::{self, AttrPath, CompValue, CompareOp as Op, Filter};
use scim::server::schema::ResourceSchema;
use scim::server::ScimError;
use scim::ENTERPRISE_USER_SCHEMA;
use serde_json::json;
use store::scim::{CompareOp, FilterValue, GroupField, ResourceFilter, UserField};

use super::CUSTOM_SCHEMA;

type UF = ResourceFilter<UserField>;
type GF = ResourceFilter<GroupField>;

fn op(o: Op) -> CompareOp {
    match o {
        Op::Eq => CompareOp::Eq,
        Op::Ne => CompareOp::Ne,
        Op::Co => CompareOp::Co,
        Op::Sw => CompareOp::Sw,
        Op::Ew => CompareOp::Ew,
        Op::Gt => CompareOp::Gt,
        Op::Ge => CompareOp::Ge,
        Op::Lt => CompareOp::Lt,
        Op::Le => CompareOp::Le,
    }
}

fn value(v: &CompValue) -> FilterValue {
    match v {
        CompValue::Null => FilterValue::Null,
        CompValue::Bool(b) => FilterValue::Bool(*b),
        CompValue::Number(n) => FilterValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        CompValue::String(s) => FilterValue::Text(s.clone()),
    }
}

/// A boolean value, leniently: Entra filters `active eq "True"`.
fn bool_value(v: &CompValue) -> FilterValue {
    match v {
        CompValue::String(s) if s.eq_ignore_ascii_case("true") => FilterValue::Bool(true),
        CompValue::String(s) if s.eq_ignore_ascii_case("false") => FilterValue::Bool(false),
        other => value(other),
    }
}

/// A comparison with a constant the directory always has (e.g. `emails.type` is `work`).
fn constant<F>(c: serde_json::Value, o: Op, v: &CompValue) -> ResourceFilter<F> {
    let f = Filter::Compare(AttrPath { uri: None, attr: "x".into(), sub: None }, o, v.clone());
    if f.matches(&json!({ "x": c }), &|_| false) {
        ResourceFilter::True
    } else {
        ResourceFilter::False
    }
}

/// The directory name of a single-valued profile attribute by its SCIM name (`nickName`,
/// `name.middleName`; `enterprise` for the enterprise extension's).
fn profile_text(scim: &str, enterprise: bool) -> Option<&'static str> {
    PROFILE_TEXTS.iter().find(|(_, s, e)| *e == enterprise && s.eq_ignore_ascii_case(scim)).map(|(d, _, _)| *d)
}

/// The directory name of a multi-valued profile attribute by its SCIM name.
fn profile_list(scim: &str) -> Option<&'static str> {
    PROFILE_LISTS.iter().find(|(_, s)| s.eq_ignore_ascii_case(scim)).map(|(d, _)| *d)
}

/// The stored name of a sub-attribute of a profile list's values (`value` when none is named;
/// an address's `formatted`).
fn value_part(list: &str, sub: Option<&str>) -> Option<&'static str> {
    const SIMPLE: [&str; 4] = ["value", "type", "display", "primary"];
    match (list, sub) {
        ("addresses", None) => Some("formatted"),
        ("addresses", Some(s)) => ["type", "primary"]
            .into_iter()
            .find(|p| p.eq_ignore_ascii_case(s))
            .or_else(|| ADDRESS_PARTS.iter().find(|(_, scim)| scim.eq_ignore_ascii_case(s)).map(|(d, _)| *d)),
        (_, None) => Some("value"),
        (_, Some(s)) => SIMPLE.into_iter().find(|p| p.eq_ignore_ascii_case(s)),
    }
}

fn invalid(p: &AttrPath) -> ScimError {
    ScimError::invalid_filter(format!("{p}: this directory cannot filter on this attribute"))
}

/// A leaf of a user filter: where the path points, and the comparison (or presence).
fn user_leaf(
    p: &AttrPath,
    cmp: Option<(Op, &CompValue)>,
    rs: &ResourceSchema,
    defs: &[AttributeDef],
) -> Result<UF, ScimError> {
    let found = rs.find(p).ok_or_else(|| invalid(p))?;
    let urn = found.extension_urn(rs);
    let attr = found.attr.name.as_str();
    let sub = found.sub.map(|s| s.name.as_str());
    let field = |f: UserField| -> UF {
        match cmp {
            None => ResourceFilter::Present(f),
            Some((o, v)) => {
                let v = if f == UserField::Active { bool_value(v) } else { value(v) };
                ResourceFilter::Compare(f, op(o), v)
            }
        }
    };
    // Present and equal to a constant of the directory's single value.
    let fixed = |present: UserField, c: serde_json::Value| -> UF {
        match cmp {
            None => ResourceFilter::Present(present),
            Some((o, v)) => ResourceFilter::and(ResourceFilter::Present(present), constant(c, o, v)),
        }
    };
    Ok(match (urn.as_deref(), attr, sub) {
        (None, "id", _) => field(UserField::Id),
        (None, "externalId", _) => field(UserField::ExternalId),
        (None, "meta", Some("created")) => field(UserField::Created),
        (None, "meta", Some("lastModified")) => field(UserField::LastModified),
        (None, "meta", Some("resourceType")) => match cmp {
            None => ResourceFilter::True,
            Some((o, v)) => constant(json!("User"), o, v),
        },
        (None, "schemas", _) => match cmp {
            None => ResourceFilter::True,
            Some((Op::Eq, CompValue::String(s))) => schema_present(s, defs),
            Some((Op::Ne, CompValue::String(s))) => ResourceFilter::not(schema_present(s, defs)),
            Some(_) => return Err(ScimError::invalid_filter("schemas can only be compared with eq or ne")),
        },
        (None, "userName", _) => field(UserField::Username),
        (None, "name", Some("givenName")) => field(UserField::GivenName),
        (None, "name", Some("familyName")) => field(UserField::FamilyName),
        (None, "name", Some("formatted")) => field(UserField::Formatted),
        (None, "displayName", _) => field(UserField::DisplayName),
        (None, "title", _) => field(UserField::Title),
        (None, "active", _) => field(UserField::Active),
        (None, "name", Some(part)) if profile_text(&format!("name.{part}"), false).is_some() => {
            field(UserField::ProfileText(profile_text(&format!("name.{part}"), false).unwrap_or_default()))
        }
        (None, attr, None) if profile_text(attr, false).is_some() => {
            field(UserField::ProfileText(profile_text(attr, false).unwrap_or_default()))
        }
        (Some(ENTERPRISE_USER_SCHEMA), attr, None) if profile_text(attr, true).is_some() => {
            field(UserField::ProfileText(profile_text(attr, true).unwrap_or_default()))
        }
        (None, attr, sub) if profile_list(attr).is_some() => {
            let list = profile_list(attr).unwrap_or_default();
            let sub = value_part(list, sub).ok_or_else(|| invalid(p))?;
            match cmp {
                Some((o, v)) if sub == "primary" => {
                    ResourceFilter::Compare(UserField::ProfileValue { list, sub }, op(o), bool_value(v))
                }
                _ => field(UserField::ProfileValue { list, sub }),
            }
        }
        (None, "groups", None | Some("value")) => field(UserField::GroupId),
        (None, "groups", Some("display")) => field(UserField::GroupName),
        (None, "groups", Some("type")) => fixed(UserField::GroupId, json!("direct")),
        (Some(ENTERPRISE_USER_SCHEMA), "employeeNumber", _) => field(UserField::EmployeeNumber),
        (Some(ENTERPRISE_USER_SCHEMA), "department", _) => field(UserField::Department),
        (Some(ENTERPRISE_USER_SCHEMA), "manager", None | Some("value")) => field(UserField::ManagerId),
        (Some(CUSTOM_SCHEMA), name, None) => {
            let def = defs.iter().find(|d| d.name == name).ok_or_else(|| invalid(p))?;
            let f = UserField::Custom { name: def.name.clone(), kind: def.kind };
            match cmp {
                Some((o, v)) if def.kind == AttributeType::Boolean => ResourceFilter::Compare(f, op(o), bool_value(v)),
                _ => field(f),
            }
        }
        _ => return Err(invalid(p)),
    })
}

/// `schemas eq "urn"`: users holding a value of that schema.
fn schema_present(urn: &str, defs: &[AttributeDef]) -> UF {
    if urn.eq_ignore_ascii_case(scim::USER_SCHEMA) {
        return ResourceFilter::True;
    }
    let any = |fields: Vec<UserField>| {
        fields.into_iter().map(ResourceFilter::Present).reduce(ResourceFilter::or).unwrap_or(ResourceFilter::False)
    };
    if urn.eq_ignore_ascii_case(ENTERPRISE_USER_SCHEMA) {
        let mut fields = vec![UserField::EmployeeNumber, UserField::Department, UserField::ManagerId];
        fields.extend(PROFILE_TEXTS.iter().filter(|(_, _, e)| *e).map(|(d, _, _)| UserField::ProfileText(d)));
        any(fields)
    } else if urn.eq_ignore_ascii_case(CUSTOM_SCHEMA) {
        any(defs.iter().map(|d| UserField::Custom { name: d.name.clone(), kind: d.kind }).collect())
    } else {
        ResourceFilter::False
    }
}

/// The path of a sub-attribute inside a value filter, made absolute.
fn inside(parent: &AttrPath, p: &AttrPath) -> Result<AttrPath, ScimError> {
    if p.uri.is_some() || p.sub.is_some() {
        return Err(ScimError::invalid_filter(format!("{parent}[{p}]: name a sub-attribute of {}", parent.attr)));
    }
    Ok(AttrPath { uri: parent.uri.clone(), attr: parent.attr.clone(), sub: Some(p.attr.clone()) })
}

/// The user filter of a SCIM filter.
pub(crate) fn user_filter(f: &Filter, rs: &ResourceSchema, defs: &[AttributeDef]) -> Result<UF, ScimError> {
    user_filter_in(f, rs, defs, None)
}

fn user_filter_in(
    f: &Filter,
    rs: &ResourceSchema,
    defs: &[AttributeDef],
    parent: Option<&AttrPath>,
) -> Result<UF, ScimError> {
    let abs = |p: &AttrPath| match parent {
        Some(par) => inside(par, p),
        None => Ok(p.clone()),
    };
    Ok(match f {
        Filter::And(a, b) => {
            ResourceFilter::and(user_filter_in(a, rs, defs, parent)?, user_filter_in(b, rs, defs, parent)?)
        }
        Filter::Or(a, b) => {
            ResourceFilter::or(user_filter_in(a, rs, defs, parent)?, user_filter_in(b, rs, defs, parent)?)
        }
        Filter::Not(a) => ResourceFilter::not(user_filter_in(a, rs, defs, parent)?),
        Filter::Present(p) => user_leaf(&abs(p)?, None, rs, defs)?,
        Filter::Compare(p, o, v) => user_leaf(&abs(p)?, Some((*o, v)), rs, defs)?,
        Filter::ValuePath(p, inner) => {
            if parent.is_some() {
                return Err(ScimError::invalid_filter("value filters cannot nest"));
            }
            let found = rs.find(p).ok_or_else(|| invalid(p))?;
            if !found.attr.multi_valued || p.sub.is_some() {
                return Err(ScimError::invalid_filter(format!(
                    "{p}[...]: a value filter needs a multi-valued attribute"
                )));
            }
            let inner = user_filter_in(inner, rs, defs, Some(p))?;
            match found.attr.name.as_str() {
                // Some one value (a group, an e-mail address, ...) satisfies every sub-filter.
                "groups" => ResourceFilter::Any(Box::new(inner)),
                name if profile_list(name).is_some() => ResourceFilter::Any(Box::new(inner)),
                _ => return Err(invalid(p)),
            }
        }
    })
}

fn group_leaf(p: &AttrPath, cmp: Option<(Op, &CompValue)>, rs: &ResourceSchema) -> Result<GF, ScimError> {
    let found = rs.find(p).ok_or_else(|| invalid(p))?;
    let field = |f: GroupField| -> GF {
        match cmp {
            None => ResourceFilter::Present(f),
            Some((o, v)) => ResourceFilter::Compare(f, op(o), value(v)),
        }
    };
    Ok(match (found.attr.name.as_str(), found.sub.map(|s| s.name.as_str())) {
        ("id", _) => field(GroupField::Id),
        ("externalId", _) => field(GroupField::ExternalId),
        ("meta", Some("created")) => field(GroupField::Created),
        ("meta", Some("lastModified")) => field(GroupField::LastModified),
        ("meta", Some("resourceType")) => match cmp {
            None => ResourceFilter::True,
            Some((o, v)) => constant(json!("Group"), o, v),
        },
        ("schemas", _) => match cmp {
            None => ResourceFilter::True,
            Some((o, v)) => constant(json!(scim::GROUP_SCHEMA), o, v),
        },
        ("displayName", _) => field(GroupField::DisplayName),
        ("members", None | Some("value")) => field(GroupField::MemberId),
        ("members", Some("display")) => field(GroupField::MemberName),
        ("members", Some("type")) => match cmp {
            None => ResourceFilter::Present(GroupField::MemberId),
            Some((o, v)) => {
                ResourceFilter::and(ResourceFilter::Present(GroupField::MemberId), constant(json!("User"), o, v))
            }
        },
        _ => return Err(invalid(p)),
    })
}

/// The group filter of a SCIM filter.
pub(crate) fn group_filter(f: &Filter, rs: &ResourceSchema) -> Result<GF, ScimError> {
    group_filter_in(f, rs, None)
}

fn group_filter_in(f: &Filter, rs: &ResourceSchema, parent: Option<&AttrPath>) -> Result<GF, ScimError> {
    let abs = |p: &AttrPath| match parent {
        Some(par) => inside(par, p),
        None => Ok(p.clone()),
    };
    Ok(match f {
        Filter::And(a, b) => ResourceFilter::and(group_filter_in(a, rs, parent)?, group_filter_in(b, rs, parent)?),
        Filter::Or(a, b) => ResourceFilter::or(group_filter_in(a, rs, parent)?, group_filter_in(b, rs, parent)?),
        Filter::Not(a) => ResourceFilter::not(group_filter_in(a, rs, parent)?),
        Filter::Present(p) => group_leaf(&abs(p)?, None, rs)?,
        Filter::Compare(p, o, v) => group_leaf(&abs(p)?, Some((*o, v)), rs)?,
        Filter::ValuePath(p, inner) => {
            if parent.is_some() {
                return Err(ScimError::invalid_filter("value filters cannot nest"));
            }
            let found = rs.find(p).ok_or_else(|| invalid(p))?;
            if found.attr.name != "members" || p.sub.is_some() {
                return Err(invalid(p));
            }
            ResourceFilter::Any(Box::new(group_filter_in(inner, rs, Some(p))?))
        }
    })
}

/// Parses a filter text.
pub(crate) fn parse(text: &str) -> Result<Filter, ScimError> {
    query::parse(text).map_err(|e| ScimError::invalid_filter(e.to_string()))
}

/// The user field to sort by.
pub(crate) fn user_sort(path: &str, rs: &ResourceSchema, defs: &[AttributeDef]) -> Result<UserField, ScimError> {
    let p = query::split_path(path.trim())
        .ok_or_else(|| ScimError::invalid_value(format!("sortBy {path} is not a path")))?;
    // A multi-valued attribute sorts by its primary value (RFC 7644 section 3.4.2.3).
    match (p.uri.as_deref(), profile_list(&p.attr), p.sub.as_deref()) {
        (None, Some("emails"), None) => return Ok(UserField::Email),
        (None, Some("emails"), Some(s)) if s.eq_ignore_ascii_case("value") => return Ok(UserField::Email),
        (None, Some("phone_numbers"), None) => return Ok(UserField::Phone),
        (None, Some("phone_numbers"), Some(s)) if s.eq_ignore_ascii_case("value") => return Ok(UserField::Phone),
        _ => {}
    }
    match user_leaf(&p, None, rs, defs).map_err(|e| ScimError::invalid_value(e.detail))? {
        ResourceFilter::Present(f)
            if !matches!(f, UserField::GroupId | UserField::GroupName | UserField::ProfileValue { .. }) =>
        {
            Ok(f)
        }
        _ => Err(ScimError::invalid_value(format!("cannot sort by {path}"))),
    }
}

/// The group field to sort by.
pub(crate) fn group_sort(path: &str, rs: &ResourceSchema) -> Result<GroupField, ScimError> {
    let p = query::split_path(path.trim())
        .ok_or_else(|| ScimError::invalid_value(format!("sortBy {path} is not a path")))?;
    match group_leaf(&p, None, rs).map_err(|e| ScimError::invalid_value(e.detail))? {
        ResourceFilter::Present(f) if !matches!(f, GroupField::MemberId | GroupField::MemberName) => Ok(f),
        _ => Err(ScimError::invalid_value(format!("cannot sort by {path}"))),
    }
}
