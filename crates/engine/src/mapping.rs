//! The account a user should have in an app, as a SCIM User resource.
//!
//! Until per-app parameters exist, every app gets the default mapping: userName <- username,
//! name.givenName <- first_name, name.familyName <- last_name, displayName, emails (work,
//! primary) <- email, title, active, externalId <- the user's id. `externalId` is how the
//! engine recognises accounts it created.

use directory::User;
use serde_json::{json, Map, Value};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

/// The SCIM resource for `user`, active or not.
pub fn default_resource(user: &User, active: bool) -> Value {
    let mut r = Map::new();
    r.insert("schemas".into(), json!([USER_SCHEMA]));
    r.insert("externalId".into(), Value::String(user.id.to_string()));
    r.insert("userName".into(), Value::String(user.username.clone()));
    let mut name = Map::new();
    if let Some(v) = &user.first_name {
        name.insert("givenName".into(), Value::String(v.clone()));
    }
    if let Some(v) = &user.last_name {
        name.insert("familyName".into(), Value::String(v.clone()));
    }
    if !name.is_empty() {
        r.insert("name".into(), Value::Object(name));
    }
    if let Some(v) = &user.display_name {
        r.insert("displayName".into(), Value::String(v.clone()));
    }
    if let Some(v) = &user.title {
        r.insert("title".into(), Value::String(v.clone()));
    }
    if let Some(v) = &user.email {
        r.insert("emails".into(), json!([{"value": v, "type": "work", "primary": true}]));
    }
    r.insert("active".into(), Value::Bool(active));
    Value::Object(r)
}

/// Whether a resource is active (absent counts as active, as in SCIM).
pub fn is_active(resource: &Value) -> bool {
    resource.get("active").and_then(Value::as_bool).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::{UserInput, UserSource};

    #[test]
    fn maps_the_standard_attributes() {
        let input = UserInput {
            username: "ada".into(),
            email: Some("ada@example.com".into()),
            first_name: Some("Ada".into()),
            title: Some("Engineer".into()),
            ..Default::default()
        };
        let u = User::new(input, UserSource::Local, directory::now());
        let r = default_resource(&u, true);
        assert_eq!(r["userName"], "ada");
        assert_eq!(r["externalId"], u.id.to_string());
        assert_eq!(r["name"], json!({"givenName": "Ada"}));
        assert_eq!(r["emails"], json!([{"value": "ada@example.com", "type": "work", "primary": true}]));
        assert_eq!(r["title"], "Engineer");
        assert!(r.get("displayName").is_none());
        assert!(is_active(&r));
        assert!(!is_active(&default_resource(&u, false)));
    }
}
