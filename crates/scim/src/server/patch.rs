//! PATCH (RFC 7644 section 3.5.2) applied to a resource in its JSON form: core attributes at
//! the top level, extension attributes under their schema URN.
//!
//! Leniencies for real clients: operation names in any case (Entra's `"Replace"`), attribute
//! names in any case, a path-less operation whose value holds paths as keys
//! (`{"name.givenName": "Ada"}`), `remove` of multi-valued values named in `value` (Entra's
//! `{"op": "Remove", "path": "members", "value": [{"value": "..."}]}`), and `add` through a
//! value filter that matches nothing creates the value the filter describes
//! (`emails[type eq "work"].value`). Values of read-only attributes that the server computes
//! (`groups`, `members.display`, `manager.displayName`) are ignored, as RFC 7644
//! section 3.5.1 says for PUT; `id`, `meta` and `schemas` cannot be patched (`mutability`),
//! except with their own value (no change).

use serde_json::{Map, Value};

use super::schema::{Attribute, Mutability, ResourceSchema};
use super::{ScimError, ScimType};
use crate::query::{self, CompValue, CompareOp, Filter};
use crate::types::PATCH_OP_SCHEMA;

/// The most operations one PATCH request may hold.
pub const MAX_OPERATIONS: usize = 1000;
/// The longest PATCH path accepted (`emails[type eq "work"].value`), in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// The deepest nesting of parentheses accepted in the value filter of a PATCH path
/// (`emails[type eq "work" and (value co "a" or value co "b")]` nests 2 levels).
pub const MAX_PATH_FILTER_DEPTH: usize = 8;

/// Refuses a path too long to be a real one, before anything parses it.
fn check_path_len(path: &str) -> Result<(), ScimError> {
    if path.len() > MAX_PATH_LEN {
        let start: String = path.chars().take(40).collect();
        return Err(ScimError::invalid_path(format!("the path {start:?}... is longer than {MAX_PATH_LEN} bytes")));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Remove,
    Replace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub op: OpKind,
    pub path: Option<String>,
    pub value: Option<Value>,
}

fn get_ci<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    query::get_ci(o, key)
}

/// Reads a PatchOp request body.
pub fn parse_request(body: &Value) -> Result<Vec<Operation>, ScimError> {
    let Value::Object(o) = body else {
        return Err(ScimError::invalid_syntax("a PATCH body must be a JSON object"));
    };
    let schemas = get_ci(o, "schemas").and_then(Value::as_array);
    if !schemas.is_some_and(|s| s.iter().any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(PATCH_OP_SCHEMA)))) {
        return Err(ScimError::invalid_syntax(format!("schemas must hold {PATCH_OP_SCHEMA}")));
    }
    let Some(Value::Array(ops)) = get_ci(o, "Operations") else {
        return Err(ScimError::invalid_syntax("Operations must be a list of operations"));
    };
    if ops.is_empty() {
        return Err(ScimError::invalid_syntax("Operations is empty"));
    }
    if ops.len() > MAX_OPERATIONS {
        return Err(ScimError::bad(ScimType::TooMany, format!("more than {MAX_OPERATIONS} operations")));
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let Value::Object(m) = op else {
                return Err(ScimError::invalid_syntax(format!("Operations[{i}] is not an object")));
            };
            let kind = match get_ci(m, "op").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
                Some("add") => OpKind::Add,
                Some("remove") => OpKind::Remove,
                Some("replace") => OpKind::Replace,
                _ => {
                    return Err(ScimError::invalid_syntax(format!("Operations[{i}].op must be add, remove or replace")))
                }
            };
            let path = match get_ci(m, "path") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.trim().is_empty() => None,
                Some(Value::String(s)) => {
                    check_path_len(s.trim()).map_err(|e| ScimError::invalid_path(format!("Operations[{i}]: {e}")))?;
                    Some(s.trim().to_owned())
                }
                Some(_) => return Err(ScimError::invalid_path(format!("Operations[{i}].path must be a string"))),
            };
            let value = get_ci(m, "value").cloned();
            if kind != OpKind::Remove && value.is_none() {
                return Err(ScimError::invalid_syntax(format!("Operations[{i}] needs a value")));
            }
            if kind == OpKind::Remove && path.is_none() {
                return Err(ScimError::no_target(format!("Operations[{i}]: remove needs a path")));
            }
            Ok(Operation { op: kind, path, value })
        })
        .collect()
}

/// A parsed PATCH path.
struct Target<'a> {
    /// `Some(urn)` for an extension attribute (the resource's `urn` object holds it).
    container: Option<String>,
    /// `None` when the path is a whole extension schema URN.
    attr: Option<&'a Attribute>,
    filter: Option<Filter>,
    sub: Option<&'a Attribute>,
}

/// Splits `attr[filter].sub` at the bracket that closes the filter (quotes respected).
fn split_value_path(path: &str) -> Result<(String, Option<String>, Option<String>), ScimError> {
    let Some(open) = path.find('[') else {
        return Ok((path.to_owned(), None, None));
    };
    let (mut in_str, mut esc, mut depth) = (false, false, 0usize);
    for (i, c) in path.char_indices().skip_while(|(i, _)| *i < open) {
        match (in_str, esc, c) {
            (true, true, _) => esc = false,
            (true, false, '\\') => esc = true,
            (true, false, '"') => in_str = false,
            (true, false, _) => {}
            (false, _, '"') => in_str = true,
            (false, _, '[') => depth += 1,
            (false, _, ']') => {
                depth -= 1;
                if depth == 0 {
                    let filter = path[open + 1..i].to_owned();
                    let rest = &path[i + 1..];
                    let sub = match rest {
                        "" => None,
                        r => Some(
                            r.strip_prefix('.')
                                .filter(|s| !s.is_empty())
                                .ok_or_else(|| ScimError::invalid_path(format!("{path}: unexpected {r:?}")))?
                                .to_owned(),
                        ),
                    };
                    return Ok((path[..open].to_owned(), Some(filter), sub));
                }
            }
            _ => {}
        }
    }
    Err(ScimError::invalid_path(format!("{path}: unclosed [")))
}

fn resolve<'a>(path: &str, rs: &'a ResourceSchema) -> Result<Target<'a>, ScimError> {
    check_path_len(path)?;
    if let Some(ext) = rs.extensions.iter().find(|s| s.id.eq_ignore_ascii_case(path)) {
        return Ok(Target { container: Some(ext.id.clone()), attr: None, filter: None, sub: None });
    }
    let (attr_path, filter_text, sub_after) = split_value_path(path)?;
    let ap = query::split_path(&attr_path).ok_or_else(|| ScimError::invalid_path(format!("{path} is not a path")))?;
    if filter_text.is_some() && ap.sub.is_some() {
        return Err(ScimError::invalid_path(format!("{path}: a value filter follows a sub-attribute")));
    }
    let found = rs.find(&ap).ok_or_else(|| ScimError::invalid_path(format!("{path}: no such attribute")))?;
    let container = found.extension_urn(rs);
    let filter = match filter_text {
        Some(t) => {
            if !found.attr.multi_valued {
                return Err(ScimError::invalid_path(format!("{path}: a value filter needs a multi-valued attribute")));
            }
            Some(
                query::parse_bounded(&t, MAX_PATH_FILTER_DEPTH)
                    .map_err(|e| ScimError::invalid_path(format!("{path}: {e}")))?,
            )
        }
        None => None,
    };
    let sub =
        match (found.sub, sub_after) {
            (Some(s), _) => Some(s),
            (None, Some(s)) => Some(found.attr.sub(&s).ok_or_else(|| {
                ScimError::invalid_path(format!("{path}: {} has no sub-attribute {s}", found.attr.name))
            })?),
            (None, None) => None,
        };
    Ok(Target { container, attr: Some(found.attr), filter, sub })
}

/// The key under which `name` is stored in `o` (any case), else `name`.
fn key_in(o: &Map<String, Value>, name: &str) -> String {
    if o.contains_key(name) {
        return name.to_owned();
    }
    o.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned().unwrap_or_else(|| name.to_owned())
}

/// Moves a value stored under another case of `name` to `name` itself.
fn canonical_key(o: &mut Map<String, Value>, name: &str) {
    let k = key_in(o, name);
    if k != name {
        if let Some(v) = o.remove(&k) {
            o.insert(name.to_owned(), v);
        }
    }
}

fn container_mut<'a>(
    root: &'a mut Map<String, Value>,
    urn: Option<&str>,
    create: bool,
) -> Result<Option<&'a mut Map<String, Value>>, ScimError> {
    let Some(urn) = urn else { return Ok(Some(root)) };
    canonical_key(root, urn);
    if !root.contains_key(urn) {
        if !create {
            return Ok(None);
        }
        root.insert(urn.to_owned(), Value::Object(Map::new()));
    }
    match root.get_mut(urn) {
        Some(Value::Object(o)) => Ok(Some(o)),
        _ => Err(ScimError::invalid_value(format!("{urn} must be an object"))),
    }
}

/// Whether writes to this attribute are refused, ignored, or done.
enum Write {
    Refuse,
    Ignore,
    Do,
}

fn writability(attr: &Attribute, sub: Option<&Attribute>) -> Write {
    if ["id", "meta", "schemas"].iter().any(|n| attr.name == *n) {
        return Write::Refuse;
    }
    let leaf = sub.unwrap_or(attr);
    if attr.mutability == Mutability::ReadOnly || leaf.mutability == Mutability::ReadOnly {
        Write::Ignore
    } else {
        Write::Do
    }
}

fn case_exact_of(attr: &Attribute) -> impl Fn(&query::AttrPath) -> bool + '_ {
    move |p: &query::AttrPath| attr.sub(&p.attr).is_some_and(|s| s.case_exact)
}

/// The value a filter of `a eq "x" and b eq "y"` describes, for `add` through a filter that
/// matches nothing.
fn value_described_by(f: &Filter, out: &mut Map<String, Value>) -> bool {
    match f {
        Filter::And(a, b) => value_described_by(a, out) && value_described_by(b, out),
        Filter::Compare(p, CompareOp::Eq, v) if p.uri.is_none() && p.sub.is_none() => {
            let v = match v {
                CompValue::Null => return false,
                CompValue::Bool(b) => Value::Bool(*b),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::String(s) => Value::String(s.clone()),
            };
            out.insert(p.attr.clone(), v);
            true
        }
        _ => false,
    }
}

fn as_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => vec![other],
    }
}

/// Whether two values of a multi-valued attribute are the same (by `value` when complex).
fn same_item(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => match (get_ci(x, "value"), get_ci(y, "value")) {
            (Some(p), Some(q)) => p == q,
            _ => a == b,
        },
        _ => a == b,
    }
}

/// Sets sub-attributes of a complex value from an object (the value of an add or replace).
fn merge_into(target: &mut Map<String, Value>, value: &Value, attr: &Attribute) -> Result<(), ScimError> {
    // Leniency (Entra): a single complex attribute given as its bare value (`"manager": "id"`)
    // or as a list of one object (its older `[{"$ref": null, "value": "id"}]`).
    let bare;
    let value = match value {
        Value::String(_) if !attr.multi_valued && attr.sub("value").is_some() => {
            bare = serde_json::json!({ "value": value });
            &bare
        }
        Value::Array(a) if !attr.multi_valued && a.len() == 1 && a[0].is_object() => &a[0],
        other => other,
    };
    let Value::Object(v) = value else {
        return Err(ScimError::invalid_value(format!("{} takes an object", attr.name)));
    };
    for (k, x) in v {
        let Some(sub) = attr.sub(k) else {
            // The default sub-attributes of multi-valued attributes (RFC 7643 section 2.4) are
            // kept as sent, for the resource's own checks to judge.
            if attr.multi_valued
                && ["primary", "display", "type", "value", "$ref"].iter().any(|d| d.eq_ignore_ascii_case(k))
            {
                target.insert(k.clone(), x.clone());
                continue;
            }
            return Err(ScimError::invalid_value(format!("{} has no sub-attribute {k}", attr.name)));
        };
        if sub.mutability == Mutability::ReadOnly {
            continue;
        }
        let key = key_in(target, &sub.name);
        target.remove(&key);
        if !x.is_null() {
            target.insert(sub.name.clone(), x.clone());
        }
    }
    Ok(())
}

fn apply_one(
    root: &mut Map<String, Value>,
    op: OpKind,
    t: &Target<'_>,
    value: Option<&Value>,
    rs: &ResourceSchema,
) -> Result<(), ScimError> {
    let Some(attr) = t.attr else {
        // The whole extension.
        let urn = t.container.as_deref().unwrap_or_default().to_owned();
        return match op {
            OpKind::Remove => {
                let k = key_in(root, &urn);
                root.remove(&k);
                Ok(())
            }
            _ => {
                let Some(Value::Object(v)) = value else {
                    return Err(ScimError::invalid_value(format!("{urn} takes an object")));
                };
                for (k, x) in v.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("schemas")) {
                    apply_path(root, op, &format!("{urn}:{k}"), Some(x), rs)?;
                }
                Ok(())
            }
        };
    };
    match writability(attr, t.sub) {
        // Replacing `id` or `meta` with the resource's own value changes nothing (Okta's
        // group rename sends the group's `id` with its new name).
        Write::Refuse
            if op != OpKind::Remove
                && t.sub.is_none()
                && t.filter.is_none()
                && value.is_some_and(|v| root.get(&key_in(root, &attr.name)).is_some_and(|own| own == v)) =>
        {
            return Ok(())
        }
        Write::Refuse => return Err(ScimError::mutability(format!("{} cannot be changed", attr.name))),
        Write::Ignore => return Ok(()),
        Write::Do => {}
    }
    if op == OpKind::Remove && attr.required && t.sub.is_none() && t.filter.is_none() {
        return Err(ScimError::mutability(format!("{} is required and cannot be removed", attr.name)));
    }
    let Some(c) = container_mut(root, t.container.as_deref(), op != OpKind::Remove)? else {
        return Ok(());
    };
    canonical_key(c, &attr.name);
    let name = attr.name.clone();
    if let Some(filter) = &t.filter {
        let exact = case_exact_of(attr);
        let items = match c.get_mut(&name) {
            Some(Value::Array(a)) => a,
            Some(other) if !other.is_null() => {
                let one = other.take();
                c.insert(name.clone(), Value::Array(vec![one]));
                match c.get_mut(&name) {
                    Some(Value::Array(a)) => a,
                    _ => return Err(ScimError::invalid_value("unreachable")),
                }
            }
            _ => {
                c.insert(name.clone(), Value::Array(vec![]));
                match c.get_mut(&name) {
                    Some(Value::Array(a)) => a,
                    _ => return Err(ScimError::invalid_value("unreachable")),
                }
            }
        };
        let matching: Vec<usize> =
            items.iter().enumerate().filter(|(_, i)| filter.matches(i, &exact)).map(|(n, _)| n).collect();
        match op {
            // `members[value eq "x"].value`: the value is the member itself.
            OpKind::Remove => match t.sub.filter(|s| s.name != "value") {
                None => {
                    let mut n = 0;
                    items.retain(|_| {
                        let keep = !matching.contains(&n);
                        n += 1;
                        keep
                    });
                }
                Some(sub) => {
                    for &i in &matching {
                        if let Some(Value::Object(o)) = items.get_mut(i) {
                            let k = key_in(o, &sub.name);
                            o.remove(&k);
                        }
                    }
                }
            },
            OpKind::Add | OpKind::Replace => {
                let v = value.cloned().unwrap_or(Value::Null);
                if matching.is_empty() {
                    if op == OpKind::Replace {
                        return Err(ScimError::no_target(format!("no value of {name} matches the filter")));
                    }
                    let mut new = Map::new();
                    if !value_described_by(filter, &mut new) {
                        return Err(ScimError::no_target(format!("no value of {name} matches the filter")));
                    }
                    match t.sub {
                        Some(sub) => {
                            new.insert(sub.name.clone(), v);
                        }
                        None => merge_into(&mut new, &v, attr)?,
                    }
                    items.push(Value::Object(new));
                } else {
                    for &i in &matching {
                        let Some(item) = items.get_mut(i) else { continue };
                        match t.sub {
                            Some(sub) => {
                                if let Value::Object(o) = item {
                                    let k = key_in(o, &sub.name);
                                    o.remove(&k);
                                    o.insert(sub.name.clone(), v.clone());
                                }
                            }
                            None if op == OpKind::Replace => *item = v.clone(),
                            None => {
                                if let Value::Object(o) = item {
                                    merge_into(o, &v, attr)?;
                                }
                            }
                        }
                    }
                }
            }
        }
        if matches!(c.get(&name), Some(Value::Array(a)) if a.is_empty()) {
            c.remove(&name);
        }
        return Ok(());
    }
    match (op, attr.multi_valued, t.sub) {
        (OpKind::Remove, true, None) => {
            match value {
                // Entra: remove the values named.
                Some(v) if !v.is_null() => {
                    let gone = as_items(v.clone());
                    if let Some(Value::Array(items)) = c.get_mut(&name) {
                        items.retain(|i| !gone.iter().any(|g| same_item(i, g)));
                    }
                }
                _ => {
                    c.remove(&name);
                }
            }
        }
        (OpKind::Remove, _, Some(sub)) => match c.get_mut(&name) {
            Some(Value::Array(items)) => {
                for i in items.iter_mut() {
                    if let Value::Object(o) = i {
                        let k = key_in(o, &sub.name);
                        o.remove(&k);
                    }
                }
            }
            Some(Value::Object(o)) => {
                let k = key_in(o, &sub.name);
                o.remove(&k);
            }
            _ => {}
        },
        (OpKind::Remove, false, None) => {
            c.remove(&name);
        }
        (OpKind::Add, true, None) => {
            let v = value.cloned().unwrap_or(Value::Null);
            if v.is_null() {
                return Ok(());
            }
            let entry = c.entry(name.clone()).or_insert_with(|| Value::Array(vec![]));
            if !entry.is_array() {
                let one = entry.take();
                *entry = Value::Array(if one.is_null() { vec![] } else { vec![one] });
            }
            if let Value::Array(items) = entry {
                for new in as_items(v) {
                    if let Some(pos) = items.iter().position(|i| same_item(i, &new)) {
                        items[pos] = new;
                    } else {
                        items.push(new);
                    }
                }
            }
        }
        (OpKind::Replace, true, None) => {
            let v = value.cloned().unwrap_or(Value::Null);
            if v.is_null() {
                c.remove(&name);
            } else {
                c.insert(name.clone(), Value::Array(as_items(v)));
            }
        }
        (_, true, Some(sub)) => {
            // `emails.value` without a filter: every value.
            let v = value.cloned().unwrap_or(Value::Null);
            let entry = c.entry(name.clone()).or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(items) = entry {
                if items.is_empty() {
                    let mut o = Map::new();
                    o.insert(sub.name.clone(), v);
                    items.push(Value::Object(o));
                } else {
                    for i in items.iter_mut() {
                        if let Value::Object(o) = i {
                            let k = key_in(o, &sub.name);
                            o.remove(&k);
                            o.insert(sub.name.clone(), v.clone());
                        }
                    }
                }
            }
        }
        (_, false, Some(sub)) => {
            let v = value.cloned().unwrap_or(Value::Null);
            let entry = c.entry(name.clone()).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(o) = entry {
                let k = key_in(o, &sub.name);
                o.remove(&k);
                if !v.is_null() {
                    o.insert(sub.name.clone(), v);
                }
            }
        }
        (_, false, None) => {
            let mut v = value.cloned().unwrap_or(Value::Null);
            if attr.sub_attributes.is_empty() {
                if v.is_null() {
                    c.remove(&name);
                } else {
                    c.insert(name.clone(), v);
                }
            } else {
                // A complex attribute: its sub-attributes are set, the others kept. Entra sends
                // the manager as a bare id.
                if let Value::String(s) = &v {
                    if attr.sub("value").is_some() {
                        v = serde_json::json!({"value": s});
                    }
                }
                if v.is_null() {
                    c.remove(&name);
                    return Ok(());
                }
                let entry = c.entry(name.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(o) = entry {
                    merge_into(o, &v, attr)?;
                }
            }
        }
    }
    if matches!(c.get(&name), Some(Value::Array(a)) if a.is_empty()) {
        c.remove(&name);
    }
    Ok(())
}

fn apply_path(
    root: &mut Map<String, Value>,
    op: OpKind,
    path: &str,
    value: Option<&Value>,
    rs: &ResourceSchema,
) -> Result<(), ScimError> {
    let t = resolve(path, rs)?;
    apply_one(root, op, &t, value, rs)
}

/// Applies the operations in order; any failure leaves the caller to discard the result.
pub fn apply(resource: &mut Value, ops: &[Operation], rs: &ResourceSchema) -> Result<(), ScimError> {
    let Value::Object(root) = resource else {
        return Err(ScimError::invalid_value("the resource is not an object"));
    };
    for op in ops {
        match &op.path {
            Some(p) => apply_path(root, op.op, p, op.value.as_ref(), rs)?,
            None => {
                let Some(Value::Object(v)) = &op.value else {
                    return Err(ScimError::invalid_value("an operation without a path takes an object value"));
                };
                for (k, x) in v {
                    if k.eq_ignore_ascii_case("schemas") {
                        continue;
                    }
                    apply_path(root, op.op, k, Some(x), rs)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::schema::{enterprise_user_schema, group_schema, user_schema};
    use serde_json::json;

    fn users() -> ResourceSchema {
        ResourceSchema {
            name: "User".into(),
            endpoint: "/Users".into(),
            core: user_schema(),
            extensions: vec![enterprise_user_schema()],
        }
    }

    fn groups() -> ResourceSchema {
        ResourceSchema { name: "Group".into(), endpoint: "/Groups".into(), core: group_schema(), extensions: vec![] }
    }

    fn patch(rs: &ResourceSchema, mut r: Value, ops: Value) -> Result<Value, ScimError> {
        let body = json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops});
        let ops = parse_request(&body)?;
        apply(&mut r, &ops, rs)?;
        Ok(r)
    }

    #[test]
    fn entra_dialect() {
        let u = json!({"userName": "ada", "active": true, "emails": [{"type": "work", "value": "a@x.org", "primary": true}]});
        let r = patch(
            &users(),
            u,
            json!([
                {"op": "Replace", "path": "active", "value": "False"},
                {"op": "Add", "path": "emails[type eq \"work\"].value", "value": "ada@corp.example"},
                {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": "m1"},
                {"op": "replace", "value": {"displayName": "Ada L", "name.givenName": "Ada", "USERNAME": "ada2"}},
                {"op": "Add", "path": "name.formatted", "value": "Ada Lovelace"},
            ]),
        )
        .unwrap();
        assert_eq!(r["active"], "False");
        assert_eq!(r["emails"][0]["value"], "ada@corp.example");
        assert_eq!(r["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"], "m1");
        assert_eq!((r["displayName"].as_str(), r["name"]["givenName"].as_str()), (Some("Ada L"), Some("Ada")));
        assert_eq!(r["userName"], "ada2");
        assert_eq!(r["name"]["formatted"], "Ada Lovelace", "the full name is kept as sent");
    }

    #[test]
    fn members_add_and_remove() {
        let g = json!({"displayName": "Staff", "members": [{"value": "a"}, {"value": "b"}]});
        let r = patch(
            &groups(),
            g,
            json!([
                {"op": "add", "path": "members", "value": [{"value": "c"}, {"value": "a"}]},
                {"op": "remove", "path": "members[value eq \"b\"]"},
                {"op": "Remove", "path": "members", "value": [{"value": "c"}]},
            ]),
        )
        .unwrap();
        assert_eq!(r["members"], json!([{"value": "a"}]));
        let r = patch(&groups(), r, json!([{"op": "remove", "path": "members"}])).unwrap();
        assert!(r.get("members").is_none());
    }

    #[test]
    fn errors_have_their_scim_types() {
        let u = json!({"userName": "ada", "id": "1"});
        let t = |ops: Value| patch(&users(), u.clone(), ops).unwrap_err().scim_type;
        assert_eq!(t(json!([{"op": "replace", "path": "id", "value": "x"}])), Some(ScimType::Mutability));
        assert_eq!(t(json!([{"op": "replace", "value": {"id": "2", "userName": "b"}}])), Some(ScimType::Mutability));
        assert_eq!(t(json!([{"op": "replace", "path": "nickNames", "value": "x"}])), Some(ScimType::InvalidPath));
        // Its own id again is no change (Okta's group rename carries it).
        let same = patch(&users(), u.clone(), json!([{"op": "replace", "value": {"id": "1", "userName": "b"}}]));
        assert_eq!(same.unwrap(), json!({"userName": "b", "id": "1"}));
        assert_eq!(t(json!([{"op": "remove"}])), Some(ScimType::NoTarget));
        assert_eq!(
            t(json!([{"op": "replace", "path": "emails[type eq \"home\"].value", "value": "x"}])),
            Some(ScimType::NoTarget)
        );
        assert_eq!(t(json!([{"op": "move", "path": "title", "value": "x"}])), Some(ScimType::InvalidSyntax));
        assert_eq!(t(json!([{"op": "add", "path": "emails[type eq ]", "value": "x"}])), Some(ScimType::InvalidPath));
        let missing_schema = parse_request(&json!({"Operations": [{"op": "add", "path": "title", "value": "x"}]}));
        assert_eq!(missing_schema.unwrap_err().scim_type, Some(ScimType::InvalidSyntax));
    }

    #[test]
    fn long_paths_and_deep_path_filters_are_refused_before_parsing() {
        let u = json!({"userName": "ada", "emails": [{"type": "work", "value": "a@x.org"}]});
        let run = |ops: Value| patch(&users(), u.clone(), ops);
        let long = format!("emails[value eq \"{}\"].value", "x".repeat(MAX_PATH_LEN));
        let e = run(json!([{"op": "add", "path": long, "value": "x"}])).unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidPath));
        assert!(e.detail.contains("longer than 1024 bytes"), "{}", e.detail);
        // The same bound for a path given as a key of a path-less operation's value.
        let long_key = format!("name.{}", "g".repeat(MAX_PATH_LEN));
        let e = run(json!([{"op": "replace", "value": {long_key: "x"}}])).unwrap_err();
        assert!(e.detail.contains("longer than"), "{}", e.detail);
        let deep = |n: usize| format!("emails[{}type eq \"work\"{}].value", "(".repeat(n), ")".repeat(n));
        let r = run(json!([{"op": "replace", "path": deep(MAX_PATH_FILTER_DEPTH), "value": "b@x.org"}])).unwrap();
        assert_eq!(r["emails"][0]["value"], "b@x.org");
        let e = run(json!([{"op": "replace", "path": deep(MAX_PATH_FILTER_DEPTH + 1), "value": "x"}])).unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidPath));
        assert!(e.detail.contains("nested deeper than 8 levels"), "{}", e.detail);
    }

    #[test]
    fn remove_and_replace_paths() {
        let u = json!({"userName": "ada", "title": "Eng", "name": {"givenName": "Ada", "familyName": "L"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"}});
        let r = patch(
            &users(),
            u,
            json!([
                {"op": "remove", "path": "title"},
                {"op": "remove", "path": "name.familyName"},
                {"op": "replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Ops"},
                {"op": "replace", "path": "name", "value": {"familyName": "Lovelace"}},
            ]),
        )
        .unwrap();
        assert!(r.get("title").is_none());
        assert_eq!(r["name"], json!({"givenName": "Ada", "familyName": "Lovelace"}));
        assert_eq!(r["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"], "Ops");
    }
}
