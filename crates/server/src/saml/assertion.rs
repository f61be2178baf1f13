//! What an assertion says about a user: the app's parameters and rules, evaluated exactly as
//! the provisioning engine does, flattened into SAML attributes.

use directory::{App, RoleRef, SamlSettings, User};
use engine::mapping::{evaluate, user_value, GROUPS_KEY};
use saml::Attribute;
use serde_json::Value;

/// Why a user cannot be given an assertion for an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A "do not provision" rule matched.
    OutOfScope,
    /// The NameID's attribute is empty.
    NoNameId(String),
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn push(out: &mut Vec<Attribute>, name: String, values: Vec<String>) {
    if values.is_empty() {
        return;
    }
    match out.iter_mut().find(|a| a.name == name) {
        Some(a) => a.values.extend(values),
        None => out.push(Attribute { name, values }),
    }
}

fn flatten(out: &mut Vec<Attribute>, name: String, v: &Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                flatten(out, format!("{name}.{k}"), child);
            }
        }
        Value::Array(items) => {
            // Multi-valued: scalars as they are, complex values by their `value`; values
            // without one (addresses) by each part (`addresses.locality`).
            let values = items.iter().filter_map(|i| scalar(i).or_else(|| i.get("value").and_then(scalar))).collect();
            push(out, name.clone(), values);
            for item in items.iter().filter_map(Value::as_object).filter(|o| !o.contains_key("value")) {
                for (k, part) in item.iter().filter(|(k, _)| !matches!(k.as_str(), "type" | "primary")) {
                    push(out, format!("{name}.{k}"), scalar(part).into_iter().collect());
                }
            }
        }
        Value::Null => {}
        other => push(out, name, scalar(other).into_iter().collect()),
    }
}

/// The attributes of the app's evaluation for `user`: every value the parameters and rules
/// set (nested SCIM attributes as `name.givenName`, extension attributes under their URN,
/// multi-valued ones with each value), and the groups the rules add as `groups`.
pub fn attributes(resource: &Value) -> Vec<Attribute> {
    let mut out = Vec::new();
    if let Value::Object(map) = resource {
        for (k, v) in map {
            match k.as_str() {
                "schemas" | "active" => {}
                key if key == GROUPS_KEY => {
                    let groups = v.as_array().map(|a| a.iter().filter_map(scalar).collect()).unwrap_or_default();
                    push(&mut out, "groups".into(), groups);
                }
                // An extension schema's attributes are named after it: `urn:...:User:department`.
                key if key.starts_with("urn:") && v.is_object() => {
                    for (child, value) in v.as_object().into_iter().flatten() {
                        flatten(&mut out, format!("{key}:{child}"), value);
                    }
                }
                _ => flatten(&mut out, k.clone(), v),
            }
        }
    }
    out
}

/// The NameID and the attributes for `user` signing in to `app`.
pub fn for_user(
    user: &User,
    roles: &[RoleRef],
    app: &App,
    settings: &SamlSettings,
) -> Result<(String, Vec<Attribute>, Value), Refusal> {
    let e = evaluate(user, roles, app, true);
    if !e.in_scope {
        return Err(Refusal::OutOfScope);
    }
    let name_id = user_value(user, &settings.name_id_attribute)
        .and_then(|v| scalar(&v))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Refusal::NoNameId(settings.name_id_attribute.clone()))?;
    let attrs = attributes(&e.resource);
    let doc = Value::Object(attrs.iter().map(|a| (a.name.clone(), Value::from(a.values.clone()))).collect());
    Ok((name_id, attrs, doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_flatten_into_attributes() {
        let r = json!({
            "schemas": ["x"], "active": true, "userName": "sally", "externalId": "id-1",
            "name": {"givenName": "Sally", "familyName": "Sales"},
            "emails": [{"type": "work", "value": "sally@example.com"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Sales"},
            GROUPS_KEY: ["Sales and Marketing", "All"]
        });
        let a = attributes(&r);
        let get = |n: &str| a.iter().find(|x| x.name == n).map(|x| x.values.clone());
        assert_eq!(get("userName"), Some(vec!["sally".to_owned()]));
        assert_eq!(get("name.givenName"), Some(vec!["Sally".to_owned()]));
        assert_eq!(get("emails"), Some(vec!["sally@example.com".to_owned()]));
        assert_eq!(
            get("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"),
            Some(vec!["Sales".to_owned()])
        );
        assert_eq!(get("groups"), Some(vec!["Sales and Marketing".to_owned(), "All".to_owned()]));
        assert_eq!(get("active"), None);
        let a = attributes(&json!({"addresses": [{"type": "work", "locality": "Redmond", "postalCode": "98052"}]}));
        let get = |n: &str| a.iter().find(|x| x.name == n).map(|x| x.values.clone());
        assert_eq!(get("addresses.locality"), Some(vec!["Redmond".to_owned()]));
        assert_eq!(get("addresses.type"), None);
    }
}
