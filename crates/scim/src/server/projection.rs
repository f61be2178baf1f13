//! `attributes` and `excludedAttributes` (RFC 7644 section 3.4.2.5) applied to a resource in
//! its JSON form. Attributes returned `always` (`id`, `schemas`) stay whatever is asked.

use serde_json::{Map, Value};

use super::schema::{ResourceSchema, Returned};
use super::ScimError;
use crate::query;

/// Which attributes to return.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Projection {
    /// Every attribute returned by default.
    #[default]
    Default,
    /// Only these (and those returned always).
    Only(Vec<Selected>),
    /// Every default one but these.
    Except(Vec<Selected>),
}

/// One selected attribute: where it lives (`None` for the core schema) and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub container: Option<String>,
    pub attr: Option<String>,
    pub sub: Option<String>,
}

fn parse_list(list: &str, rs: &ResourceSchema) -> Result<Vec<Selected>, ScimError> {
    let mut out = vec![];
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(ext) = rs.extensions.iter().find(|s| s.id.eq_ignore_ascii_case(item)) {
            out.push(Selected { container: Some(ext.id.clone()), attr: None, sub: None });
            continue;
        }
        let p = query::split_path(item)
            .ok_or_else(|| ScimError::invalid_value(format!("{item} is not an attribute path")))?;
        let found = rs.find(&p).ok_or_else(|| ScimError::invalid_value(format!("{item}: no such attribute")))?;
        out.push(Selected {
            container: found.extension_urn(rs),
            attr: Some(found.attr.name.clone()),
            sub: found.sub.map(|s| s.name.clone()),
        });
    }
    Ok(out)
}

impl Projection {
    /// From the two query parameters (giving both is an error).
    pub fn parse(attributes: Option<&str>, excluded: Option<&str>, rs: &ResourceSchema) -> Result<Self, ScimError> {
        match (attributes.filter(|s| !s.trim().is_empty()), excluded.filter(|s| !s.trim().is_empty())) {
            (Some(_), Some(_)) => Err(ScimError::invalid_value("give attributes or excludedAttributes, not both")),
            (Some(a), None) => Ok(Self::Only(parse_list(a, rs)?)),
            (None, Some(e)) => Ok(Self::Except(parse_list(e, rs)?)),
            (None, None) => Ok(Self::Default),
        }
    }

    /// Whether the `members`-like attribute `name` (of the core schema) will be returned: lets
    /// the caller skip reading it.
    pub fn wants(&self, name: &str) -> bool {
        let hit =
            |s: &Selected| s.container.is_none() && s.attr.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(name));
        match self {
            Self::Default => true,
            Self::Only(list) => list.iter().any(hit),
            Self::Except(list) => !list.iter().any(|s| hit(s) && s.sub.is_none()),
        }
    }

    /// Applies the projection to a full resource.
    pub fn apply(&self, resource: Value, rs: &ResourceSchema) -> Value {
        let Value::Object(root) = resource else { return resource };
        let always = |k: &str| {
            super::schema::common_attributes()
                .iter()
                .chain(rs.core.attributes.iter())
                .any(|a| a.name == k && a.returned == Returned::Always)
        };
        match self {
            Self::Default => Value::Object(strip_requested_only(root, rs)),
            Self::Only(list) => {
                let mut out = Map::new();
                for (k, v) in root {
                    if always(&k) {
                        out.insert(k, v);
                        continue;
                    }
                    let is_ext = rs.is_extension(&k);
                    let picks: Vec<&Selected> = list
                        .iter()
                        .filter(|s| {
                            if is_ext {
                                s.container.as_deref() == Some(k.as_str())
                            } else {
                                s.container.is_none() && s.attr.as_deref() == Some(k.as_str())
                            }
                        })
                        .collect();
                    if picks.is_empty() {
                        continue;
                    }
                    if is_ext {
                        if picks.iter().any(|s| s.attr.is_none()) {
                            out.insert(k, v);
                            continue;
                        }
                        let Value::Object(ext) = v else { continue };
                        let mut e = Map::new();
                        for (ek, ev) in ext {
                            let subs: Vec<&&Selected> =
                                picks.iter().filter(|s| s.attr.as_deref() == Some(ek.as_str())).collect();
                            if let Some(val) = pick_subs(ev, &subs) {
                                e.insert(ek, val);
                            }
                        }
                        if !e.is_empty() {
                            out.insert(k, Value::Object(e));
                        }
                    } else {
                        let subs: Vec<&&Selected> = picks.iter().collect();
                        if let Some(val) = pick_subs(v, &subs) {
                            out.insert(k, val);
                        }
                    }
                }
                // `schemas` lists only the extensions still present.
                let keys = out_keys(&out);
                if let Some(Value::Array(s)) = out.get_mut("schemas") {
                    let present: Vec<String> = rs.extensions.iter().map(|e| e.id.clone()).collect();
                    let keep: Vec<Value> = s
                        .iter()
                        .filter(|x| x.as_str().is_some_and(|x| !present.iter().any(|p| p == x)))
                        .cloned()
                        .collect();
                    let mut keep = keep;
                    for p in present {
                        if s.iter().any(|x| x.as_str() == Some(&p)) && root_has(&p, &keys) {
                            keep.push(Value::String(p));
                        }
                    }
                    *s = keep;
                }
                Value::Object(out)
            }
            Self::Except(list) => {
                let mut root = strip_requested_only(root, rs);
                for s in list {
                    let target = match &s.container {
                        Some(c) => match root.get_mut(c) {
                            Some(Value::Object(o)) => o,
                            _ => continue,
                        },
                        None => &mut root,
                    };
                    match (&s.attr, &s.sub) {
                        (None, _) => {
                            if let Some(c) = &s.container {
                                root.remove(c);
                            }
                        }
                        (Some(a), None) => {
                            if !(s.container.is_none() && always(a)) {
                                target.remove(a);
                            }
                        }
                        (Some(a), Some(sub)) => match target.get_mut(a) {
                            Some(Value::Object(o)) => {
                                o.remove(sub);
                            }
                            Some(Value::Array(items)) => {
                                for i in items {
                                    if let Value::Object(o) = i {
                                        o.remove(sub);
                                    }
                                }
                            }
                            _ => {}
                        },
                    }
                }
                Value::Object(root)
            }
        }
    }
}

/// Removes the (sub-)attributes returned only when asked for (`returned: request`).
fn strip_requested_only(mut root: Map<String, Value>, rs: &ResourceSchema) -> Map<String, Value> {
    fn strip(o: &mut Map<String, Value>, attrs: &[super::schema::Attribute]) {
        for a in attrs {
            if a.returned == Returned::Request {
                o.remove(&a.name);
                continue;
            }
            let subs: Vec<&str> =
                a.sub_attributes.iter().filter(|s| s.returned == Returned::Request).map(|s| s.name.as_str()).collect();
            if subs.is_empty() {
                continue;
            }
            match o.get_mut(&a.name) {
                Some(Value::Object(x)) => subs.iter().for_each(|s| {
                    x.remove(*s);
                }),
                Some(Value::Array(items)) => {
                    for i in items {
                        if let Value::Object(x) = i {
                            subs.iter().for_each(|s| {
                                x.remove(*s);
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    strip(&mut root, &rs.core.attributes);
    for e in &rs.extensions {
        if let Some(Value::Object(x)) = root.get_mut(&e.id) {
            strip(x, &e.attributes);
        }
    }
    root
}

fn out_keys(out: &Map<String, Value>) -> Vec<String> {
    out.keys().cloned().collect()
}

fn root_has(k: &str, keys: &[String]) -> bool {
    keys.iter().any(|x| x == k)
}

/// The value of an attribute with only the selected sub-attributes (all when one selection
/// names the attribute itself).
fn pick_subs(v: Value, picks: &[&&Selected]) -> Option<Value> {
    if picks.iter().any(|s| s.sub.is_none()) {
        return Some(v);
    }
    let keep = |o: Map<String, Value>| -> Map<String, Value> {
        o.into_iter().filter(|(k, _)| picks.iter().any(|s| s.sub.as_deref() == Some(k.as_str()))).collect()
    };
    match v {
        Value::Object(o) => {
            let o = keep(o);
            (!o.is_empty()).then_some(Value::Object(o))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items
                .into_iter()
                .filter_map(|i| match i {
                    Value::Object(o) => {
                        let o = keep(o);
                        (!o.is_empty()).then_some(Value::Object(o))
                    }
                    _ => None,
                })
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::schema::{enterprise_user_schema, user_schema};
    use serde_json::json;

    #[test]
    fn only_and_except() {
        let rs = ResourceSchema {
            name: "User".into(),
            endpoint: "/Users".into(),
            core: user_schema(),
            extensions: vec![enterprise_user_schema()],
        };
        let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let u = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ent], "id": "1", "userName": "ada",
            "name": {"givenName": "Ada", "familyName": "L"}, "title": "Eng", ent: {"department": "R&D", "employeeNumber": "7"},
            "meta": {"resourceType": "User"}});
        let p = Projection::parse(Some("userName,name.givenName"), None, &rs).unwrap();
        assert_eq!(
            p.apply(u.clone(), &rs),
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "1", "userName": "ada", "name": {"givenName": "Ada"}})
        );
        let p = Projection::parse(Some(&format!("{ent}:department")), None, &rs).unwrap();
        assert_eq!(p.apply(u.clone(), &rs)[ent], json!({"department": "R&D"}));
        let p = Projection::parse(None, Some("title,id,meta,name.familyName"), &rs).unwrap();
        let r = p.apply(u.clone(), &rs);
        assert!(r.get("title").is_none() && r.get("meta").is_none());
        assert_eq!(r["id"], "1");
        assert_eq!(r["name"], json!({"givenName": "Ada"}));
        assert!(Projection::parse(Some("bogus"), None, &rs).is_err());
        assert!(!Projection::parse(Some("userName"), None, &rs).unwrap().wants("members"));
    }
}
