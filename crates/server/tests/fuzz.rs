//! Fuzzing the admin API's JSON bodies (issue 15): arbitrary bytes and generated JSON into the
//! body reader (duplicate keys refused, nesting bounded before serde sees the body), and
//! arbitrary JSON, and valid bodies mutated at a random place, into every request DTO's
//! deserialiser and validator. The property: never a panic; a body is either accepted or
//! refused with a problem that names the field at fault.
//!
//! A fixed number of cases per property runs with `cargo test`; a long run:
//! `PROVISIONER_FUZZ_CASES=1000000 cargo test -p provisioner-server --test fuzz`.

use directory::{AppInput, AttributeDefInput, Parameter, RoleInput, Rule, SamlSettings, SourceInput, UserInput};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use server::extract::{self, JsonError, MAX_JSON_DEPTH};
use server::Error;

/// The cases per property: `PROVISIONER_FUZZ_CASES`, else `ci` (what `cargo test` runs).
fn config(ci: u32) -> ProptestConfig {
    let cases = std::env::var("PROVISIONER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(ci);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// Field names of the API's bodies, so that generated objects reach past "unknown field".
const KEYS: &[&str] = &[
    "username",
    "email",
    "first_name",
    "status",
    "attributes",
    "name",
    "description",
    "connection",
    "base_url",
    "auth",
    "type",
    "token",
    "password",
    "provisioning",
    "enabled",
    "app_attribute",
    "source",
    "attribute",
    "template",
    "constant",
    "transform",
    "conditions",
    "op",
    "value",
    "actions",
    "set",
    "add_entitlement",
    "match",
    "flavor",
    "url",
    "bind_dn",
    "base_dn",
    "groups",
    "sp_entity_id",
    "acs_urls",
    "remote_id",
    "event_ids",
    "parameters",
    "rules",
    "first",
    "default",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Fractions exact in binary: they read back as they were written.
        (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        "\\PC{0,24}".prop_map(Value::String),
        prop::sample::select(vec![
            "active",
            "suspended",
            "deleted",
            "bearer",
            "basic",
            "matches",
            "equals",
            "lower",
            "{first_name}",
            "(a",
            "https://x.example/scim",
            "ldap://127.0.0.1",
            "0190b3a0-0000-7000-8000-000000000000",
            "",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(KEYS).prop_map(str::to_owned), 1 => "\\PC{0,8}"]
}

/// How deeply arrays and objects nest in `v`.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Valid bodies of the API's routes.
fn valid_bodies() -> Vec<(&'static str, Value)> {
    let rules = json!([{"name": "Engineers", "match": "any",
        "conditions": [{"attribute": "title", "op": "matches", "value": "^(?i)eng"},
                       {"attribute": "department", "op": "in", "value": ["R&D", "Ops"]}],
        "actions": [{"set": {"app_attribute": "title", "source": {"template": "{first_name} {last_name}",
                        "transform": ["lower", {"first": 3}, {"default": "x"}]}}},
                    {"add_entitlement": {"type": "group", "value": "Engineering"}},
                    {"do_not_provision": false}]}]);
    let parameters = serde_json::to_value(directory::mapping::default_parameters()).unwrap_or_default();
    vec![
        ("user", json!({"username": "ada", "email": "ada@example.com", "first_name": "Ada", "status": "active"})),
        ("role", json!({"name": "Staff", "description": "Everyone"})),
        (
            "app",
            json!({"name": "Wiki", "connection": {"base_url": "https://wiki.example.com/scim/v2",
            "auth": {"type": "oauth2_client_credentials", "token_url": "https://wiki.example.com/token",
                "client_id": "c", "client_secret": "s"}}, "provisioning": {"enabled": true}}),
        ),
        ("attribute", json!({"name": "cost_code", "type": "string", "description": "Where costs go"})),
        ("parameters", parameters.clone()),
        ("rules", rules.clone()),
        (
            "source",
            json!({"name": "AD", "flavor": "active_directory", "url": "ldaps://dc.example.com",
            "bind_dn": "cn=svc,dc=example,dc=com", "bind_password": "secret", "base_dn": "dc=example,dc=com",
            "groups": [], "schedule": 5}),
        ),
        (
            "saml",
            json!({"sp_entity_id": "https://sp.example.com", "acs_urls": ["https://sp.example.com/acs"],
            "jit_only": true}),
        ),
        ("scim_client", json!({"name": "Entra ID"})),
        ("password", json!({"password": "correct horse battery"})),
        ("rematch", json!({"remote_id": "2819c223"})),
        ("held", json!({"event_ids": ["0190b3a0-0000-7000-8000-000000000000"]})),
        ("plan", json!({"parameters": parameters, "rules": rules})),
    ]
}

/// Every node of `v`, as a path of keys and indexes.
fn paths(v: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(at.clone());
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push(Value::from(i));
                paths(x, at, out);
                at.pop();
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                at.push(Value::String(k.clone()));
                paths(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, seg| match seg {
        Value::String(k) => cur.get_mut(k.as_str()),
        Value::Number(i) => cur.get_mut(i.as_u64()? as usize),
        _ => None,
    })
}

/// `base` with one node replaced, removed, or given a new key.
fn mutate(base: &Value, pick: prop::sample::Index, how: u8, new_key: String, new: Value) -> Value {
    let mut v = base.clone();
    let mut all = Vec::new();
    paths(base, &mut Vec::new(), &mut all);
    let path = &all[pick.index(all.len())];
    match (how % 3, path.split_last()) {
        (0, _) | (_, None) => {
            if let Some(node) = node_mut(&mut v, path) {
                *node = new;
            }
        }
        (1, Some((last, parent))) => match (node_mut(&mut v, parent), last) {
            (Some(Value::Object(o)), Value::String(k)) => {
                o.remove(k);
            }
            (Some(Value::Array(a)), Value::Number(i)) => {
                let i = i.as_u64().unwrap_or(0) as usize;
                if i < a.len() {
                    a.remove(i);
                }
            }
            _ => {}
        },
        (_, Some(_)) => {
            if let Some(Value::Object(o)) = node_mut(&mut v, path) {
                o.insert(new_key, new);
            }
        }
    }
    v
}

/// Deserialises `v` into `T` and validates it: accepted, or refused with problems that
/// each name a field.
fn check<T: DeserializeOwned>(
    v: &Value,
    validate: impl FnOnce(T) -> Result<(), directory::ValidationErrors>,
) -> Result<(), TestCaseError> {
    match extract::from_value::<T>(v.clone()) {
        Ok(t) => {
            if let Err(errors) = validate(t) {
                prop_assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    prop_assert!(!e.field.is_empty() && !e.reason.is_empty(), "{:?} for {}", e, v);
                }
            }
        }
        Err(Error::Invalid(errors)) => {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert!(!e.field.is_empty() && !e.reason.is_empty(), "{:?} for {}", e, v);
            }
        }
        Err(other) => prop_assert!(false, "not a problem naming a field: {other:?} for {v}"),
    }
    Ok(())
}

/// Every request DTO of the admin API, deserialised from `v` and validated.
fn every_body(v: &Value) -> Result<(), TestCaseError> {
    check::<UserInput>(v, |mut u| u.normalize_and_validate(&[]))?;
    check::<RoleInput>(v, |mut r| r.normalize_and_validate())?;
    check::<AppInput>(v, |a| a.validate(None).map(|_| ()))?;
    check::<AttributeDefInput>(v, |mut a| a.validate())?;
    check::<Vec<Parameter>>(v, |p| directory::mapping::validate_parameters(&p, &[]))?;
    check::<Vec<Rule>>(v, |r| directory::mapping::validate_rules(&r, &[]))?;
    check::<SourceInput>(v, |mut s| s.normalize_and_validate(&[], true))?;
    check::<SamlSettings>(v, |s| s.validate().map(|_| ()))?;
    check::<server::api::scim_clients::ScimClientInput>(v, |_| Ok(()))?;
    check::<server::api::saml::PasswordInput>(v, |_| Ok(()))?;
    check::<server::api::RematchInput>(v, |_| Ok(()))?;
    check::<server::api::HeldDecision>(v, |_| Ok(()))?;
    check::<server::api::PlanInput>(v, |_| Ok(()))?;
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes as a body: JSON or a typed error, never a panic.
    #[test]
    fn arbitrary_bytes_never_crash_the_json_body_reader(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = extract::strict_json(&bytes);
        let _ = extract::parse_json::<UserInput>(&bytes);
        let _ = extract::parse_json::<Vec<Rule>>(&bytes);
    }

    /// Generated JSON inside `wrap` more levels of arrays and objects: read back as it was
    /// within [`MAX_JSON_DEPTH`] levels, refused beyond them (whatever the depth: 100,000
    /// levels too) before serde sees it.
    #[test]
    fn json_bodies_are_read_within_the_nesting_bound_and_refused_beyond(
        v in arb_json(),
        wrap in prop_oneof![0..60usize, 55..70usize, 70..100_000usize],
    ) {
        // Level 0 is the innermost: arrays and objects by turns.
        let inner = serde_json::to_string(&v).unwrap();
        let mut text = String::with_capacity(inner.len() + 6 * wrap);
        for i in (0..wrap).rev() {
            text.push_str(if i % 2 == 0 { "[" } else { "{\"k\":" });
        }
        text.push_str(&inner);
        for i in 0..wrap {
            text.push(if i % 2 == 0 { ']' } else { '}' });
        }
        let total = depth(&v) + wrap;
        match extract::strict_json(text.as_bytes()) {
            Ok(_) => prop_assert!(total <= MAX_JSON_DEPTH, "{} levels accepted", total),
            Err(JsonError::TooDeep) => prop_assert!(total > MAX_JSON_DEPTH, "{} levels refused", total),
            Err(other) => prop_assert!(false, "{:?}", other),
        }
        if total <= MAX_JSON_DEPTH {
            let mut back = extract::strict_json(text.as_bytes()).unwrap();
            for i in (0..wrap).rev() {
                back = if i % 2 == 0 { back[0].take() } else { back["k"].take() };
            }
            prop_assert_eq!(back, v);
        }
    }

    /// An object that names a key twice is refused, at any depth, naming the key's path.
    #[test]
    fn duplicate_keys_are_refused(keys in prop::collection::vec(prop::sample::select(&KEYS[..6]), 1..6), inner in any::<bool>()) {
        let members = keys.iter().enumerate().map(|(i, k)| format!("\"{k}\": {i}")).collect::<Vec<_>>().join(", ");
        let text = if inner { format!("{{\"outer\": [{{{members}}}]}}") } else { format!("{{{members}}}") };
        let dup = keys.iter().enumerate().find(|(i, k)| keys[..*i].contains(k)).map(|(_, k)| *k);
        match (extract::strict_json(text.as_bytes()), dup) {
            (Err(JsonError::DuplicateKey(path)), Some(k)) => prop_assert!(path.ends_with(k), "{} for {}", path, k),
            (Ok(_), None) => {}
            (got, _) => prop_assert!(false, "{:?} for {}", got, text),
        }
    }

    /// Arbitrary JSON into every request body of the admin API.
    #[test]
    fn arbitrary_json_into_every_request_body_is_accepted_or_names_the_field(v in arb_json()) {
        every_body(&v)?;
    }

    /// Valid bodies with one node replaced by arbitrary JSON, removed, or given a new key.
    #[test]
    fn mutated_request_bodies_are_accepted_or_name_the_field(
        which in any::<prop::sample::Index>(),
        pick in any::<prop::sample::Index>(),
        how in any::<u8>(),
        new_key in key(),
        new in arb_json(),
    ) {
        let bodies = valid_bodies();
        let (_, base) = &bodies[which.index(bodies.len())];
        every_body(&mutate(base, pick, how, new_key, new))?;
    }
}

/// The bodies the mutations start from are valid as they are.
#[test]
fn the_valid_bodies_are_accepted() {
    for (name, body) in valid_bodies() {
        let ok = match name {
            "user" => extract::from_value::<UserInput>(body).map(|mut u| u.normalize_and_validate(&[]).is_ok()),
            "app" => extract::from_value::<AppInput>(body).map(|a| a.validate(None).is_ok()),
            "rules" => {
                extract::from_value::<Vec<Rule>>(body).map(|r| directory::mapping::validate_rules(&r, &[]).is_ok())
            }
            "source" => {
                extract::from_value::<SourceInput>(body).map(|mut s| s.normalize_and_validate(&[], true).is_ok())
            }
            "saml" => extract::from_value::<SamlSettings>(body).map(|s| s.validate().is_ok()),
            "plan" => extract::from_value::<server::api::PlanInput>(body).map(|_| true),
            _ => Ok(true),
        };
        assert!(matches!(ok, Ok(true)), "{name}: {ok:?}");
    }
}
