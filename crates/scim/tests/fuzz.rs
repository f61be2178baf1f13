//! Fuzzing the SCIM server's parsers (issue 15): filters generated from the RFC 7644 grammar
//! (deeply nested and long ones too) and arbitrary strings; PATCH requests generated from
//! the schema's paths (value filters included) with arbitrary values, and arbitrary JSON.
//! The property: never a panic, always `Ok` or a typed error; what is within the bounds is
//! accepted, what is beyond them refused.
//!
//! A fixed number of cases per property runs with `cargo test`; a long run:
//! `PROVISIONER_FUZZ_CASES=1000000 cargo test -p provisioner-scim --test fuzz`.

use proptest::prelude::*;
use scim::query::{self, MAX_DEPTH, MAX_FILTER_LEN};
use scim::server::patch::{self, MAX_PATH_FILTER_DEPTH, MAX_PATH_LEN};
use scim::server::schema::{enterprise_user_schema, group_schema, user_schema, ResourceSchema};
use scim::server::ScimType;
use scim::PATCH_OP_SCHEMA;
use serde_json::{json, Map, Value};

/// The cases per property: `PROVISIONER_FUZZ_CASES`, else `ci` (what `cargo test` runs).
fn config(ci: u32) -> ProptestConfig {
    let cases = std::env::var("PROVISIONER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(ci);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// Arbitrary JSON, with keys that SCIM resources and PATCH bodies use among random ones.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        "\\PC{0,16}".prop_map(Value::String),
        prop_oneof![Just("True"), Just("false"), Just("work"), Just("a@x.org")].prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "userName", "name", "givenName", "familyName", "emails", "value", "type", "primary", "active",
            "members", "displayName", "schemas", "Operations", "op", "path", "id", "meta", ENT, "manager",
        ]).prop_map(str::to_owned),
        1 => "\\PC{0,10}",
    ]
}

/// A generated filter and how deeply its parentheses and brackets nest.
#[derive(Debug, Clone)]
struct Gen {
    text: String,
    depth: usize,
}

fn attr_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "userName", "name.givenName", "emails", "emails.value", "emails.type", "title", "active",
            "meta.lastModified", "members.value", "displayName",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
        ]).prop_map(str::to_owned),
        1 => "[a-zA-Z][a-zA-Z0-9_$-]{0,8}(\\.[a-zA-Z][a-zA-Z0-9_-]{0,5})?"
            .prop_filter("not a keyword", |p| !["and", "or", "not"].iter().any(|k| p.eq_ignore_ascii_case(k))),
    ]
}

/// A keyword in any case (`and`, `AND`, `And`).
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), word.len())
        .prop_map(move |up| word.chars().zip(up).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect())
}

fn comp_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        any::<i32>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(|n| n.to_string())),
        any_case("true"),
        any_case("false"),
        any_case("null"),
    ]
}

fn attr_exp() -> impl Strategy<Value = Gen> {
    let op = prop::sample::select(vec!["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"]).prop_flat_map(any_case);
    prop_oneof![
        (attr_path(), any_case("pr")).prop_map(|(p, pr)| Gen { text: format!("{p} {pr}"), depth: 0 }),
        (attr_path(), op, comp_value()).prop_map(|(p, o, v)| Gen { text: format!("{p} {o} {v}"), depth: 0 }),
    ]
}

/// Filters from the grammar of RFC 7644 section 3.4.2.2.
fn filter() -> impl Strategy<Value = Gen> {
    attr_exp().prop_recursive(6, 64, 4, |inner| {
        prop_oneof![
            (inner.clone(), any_case("and"), inner.clone())
                .prop_map(|(a, k, b)| Gen { text: format!("{} {k} {}", a.text, b.text), depth: a.depth.max(b.depth) }),
            (inner.clone(), any_case("or"), inner.clone())
                .prop_map(|(a, k, b)| Gen { text: format!("{} {k} {}", a.text, b.text), depth: a.depth.max(b.depth) }),
            (any_case("not"), inner.clone(), "[ \t]{0,2}")
                .prop_map(|(k, a, sp)| Gen { text: format!("{k}{sp}({sp}{}{sp})", a.text), depth: a.depth + 1 }),
            inner.clone().prop_map(|a| Gen { text: format!("({})", a.text), depth: a.depth + 1 }),
            (prop::sample::select(vec!["emails", "members", "phoneNumbers", "x"]), inner)
                .prop_map(|(p, a)| Gen { text: format!("{p}[{}]", a.text), depth: a.depth + 1 }),
        ]
    })
}

/// A generated filter in `wrap` more parentheses, or a flat chain of many terms.
fn bounded_filter() -> impl Strategy<Value = Gen> {
    prop_oneof![
        3 => (filter(), prop_oneof![0..28usize, 28..40usize, 40..100_000usize]).prop_map(|(f, wrap)| Gen {
            text: format!("{}{}{}", "(".repeat(wrap), f.text, ")".repeat(wrap)),
            depth: f.depth + wrap,
        }),
        1 => (prop::collection::vec(attr_exp(), 1..600), any_case("or")).prop_map(|(terms, or)| Gen {
            text: terms.iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(&format!(" {or} ")),
            depth: 0,
        }),
    ]
}

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

fn a_user() -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "1", "userName": "ada",
        "name": {"givenName": "Ada", "familyName": "Lovelace"}, "active": true,
        "emails": [{"type": "work", "value": "ada@example.com", "primary": true}, {"type": "home", "value": "a@x.org"}],
        ENT: {"department": "R&D", "manager": {"value": "2"}}})
}

fn a_group() -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g", "displayName": "Staff",
        "members": [{"value": "1"}, {"value": "2"}]})
}

/// PATCH paths: the schemas' attributes, with value filters and sub-attributes, and random.
fn patch_path() -> impl Strategy<Value = String> {
    let attr = prop::sample::select(vec![
        "userName",
        "name",
        "name.givenName",
        "displayName",
        "nickName",
        "title",
        "emails",
        "emails.value",
        "phoneNumbers",
        "active",
        "id",
        "meta",
        "schemas",
        "groups",
        "members",
        "members.value",
        ENT,
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
    ]);
    prop_oneof![
        8 => attr.prop_map(str::to_owned),
        5 => (prop::sample::select(vec!["emails", "members", "phoneNumbers", "name"]), filter(), 0..12usize,
              prop::option::of(prop::sample::select(vec!["value", "type", "primary", "display", "nope"])))
            .prop_map(|(a, f, wrap, sub)| format!("{a}[{}{}{}]{}", "(".repeat(wrap), f.text, ")".repeat(wrap),
                sub.map(|s| format!(".{s}")).unwrap_or_default())),
        2 => "\\PC{0,40}",
        1 => (1000..3000usize).prop_map(|n| format!("emails[value eq \"{}\"].value", "x".repeat(n))),
    ]
}

/// Values as clients send them (strings, booleans, `{"value": ...}` objects and lists of
/// them, Entra's `"True"`), and arbitrary JSON.
fn patch_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => "[a-zA-Z0-9@. ]{0,12}".prop_map(Value::String),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => prop_oneof![Just("True"), Just("False")].prop_map(|s| Value::String(s.into())),
        1 => "[a-z0-9]{1,8}".prop_map(|v| json!({"value": v})),
        1 => prop::collection::vec("[a-z0-9@.]{1,8}", 0..3)
            .prop_map(|vs| Value::Array(vs.into_iter().map(|v| json!({"value": v, "type": "work"})).collect())),
        1 => ("[a-zA-Z]{0,8}", "[a-zA-Z]{0,8}").prop_map(|(g, f)| json!({"givenName": g, "familyName": f})),
        2 => arb_json(),
    ]
}

fn operation() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        6 => prop::sample::select(vec!["add", "remove", "replace", "Add", "Replace", "Remove"]),
        1 => prop::sample::select(vec!["move", "", "ADD"]),
    ];
    let path = prop_oneof![4 => patch_path().prop_map(Some), 1 => Just(None)];
    (op, path, prop::option::weighted(0.9, patch_value())).prop_map(|(op, path, value)| {
        let mut o = Map::new();
        o.insert("op".into(), Value::String(op.into()));
        if let Some(p) = path {
            o.insert("path".into(), Value::String(p));
        }
        if let Some(v) = value {
            o.insert("value".into(), v);
        }
        Value::Object(o)
    })
}

/// How deeply the value filter of a PATCH path nests parentheses and brackets (0 without one).
fn path_filter_depth(path: &str) -> usize {
    let Some(open) = path.find('[') else { return 0 };
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for c in path[open + 1..].chars() {
        match (in_str, esc, c) {
            (true, true, _) => esc = false,
            (true, false, '\\') => esc = true,
            (true, false, '"') => in_str = false,
            (true, false, _) => {}
            (false, _, '"') => in_str = true,
            (false, _, '(' | '[') => {
                depth += 1;
                max = max.max(depth);
            }
            // The bracket that closes the value filter.
            (false, _, ']') if depth == 0 => break,
            (false, _, ')' | ']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary text: a typed error or a filter, never a panic.
    #[test]
    fn arbitrary_strings_never_crash_the_filter_parser(s in "\\PC{0,600}") {
        if let Ok(f) = query::parse(&s) {
            let _ = f.matches(&a_user(), &|_| false);
        }
    }

    /// Text made of the grammar's own symbols, in any order.
    #[test]
    fn filter_symbol_soup_never_crashes_the_parser(
        parts in prop::collection::vec(prop::sample::select(vec![
            "(", ")", "[", "]", "\"", "\\", " ", "not", "and", "or", "pr", "eq", "co", "userName", "emails",
            "1", "-1.5e3", "true", "null", ".", ":", "urn:x:", "\"a\"", "\t",
        ]), 0..200)
    ) {
        let s = parts.concat();
        if let Ok(f) = query::parse(&s) {
            let _ = f.matches(&a_user(), &|_| true);
            let _ = f.depth();
        }
    }

    /// Filters from the grammar are accepted within the bounds (length and nesting, flat
    /// `and`/`or` chains not counted) and refused beyond them; evaluating one never panics.
    #[test]
    fn generated_filters_are_parsed_within_the_bounds_and_refused_beyond(f in bounded_filter(), resource in arb_json()) {
        let got = query::parse(&f.text);
        if f.text.len() > MAX_FILTER_LEN || f.depth > MAX_DEPTH {
            let e = got.unwrap_err();
            prop_assert!(e.0.contains("longer than") || e.0.contains("nested deeper"), "{}", e.0);
        } else {
            let parsed = got.map_err(|e| TestCaseError::fail(format!("{e} in {:?}", f.text)))?;
            let _ = parsed.matches(&resource, &|_| false);
            let _ = parsed.matches(&a_user(), &|_| true);
        }
    }

    /// Generated PATCH requests applied to a user and to a group: `Ok` or a SCIM error
    /// (400 with a `scimType`), never a panic; a path over the length bound, or whose value
    /// filter nests too deep, is never applied.
    #[test]
    fn generated_patch_requests_are_applied_or_refused(ops in prop::collection::vec(operation(), 1..4)) {
        let body = json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops});
        let too_long_or_deep = ops.iter().filter_map(|o| o["path"].as_str()).any(|p| {
            p.trim().len() > MAX_PATH_LEN || path_filter_depth(p) > MAX_PATH_FILTER_DEPTH
        });
        for (rs, resource) in [(users(), a_user()), (groups(), a_group())] {
            let result = patch::parse_request(&body).and_then(|parsed| {
                let mut r = resource.clone();
                patch::apply(&mut r, &parsed, &rs).map(|()| r)
            });
            match result {
                Ok(r) => {
                    prop_assert!(!too_long_or_deep, "applied: {}", body);
                    prop_assert!(r.is_object());
                }
                Err(e) => {
                    prop_assert_eq!(e.status, 400, "{:?}", e);
                    prop_assert!(e.scim_type.is_some(), "{:?}", e);
                }
            }
        }
    }

    /// Arbitrary JSON as a PATCH body, and as the operations of one.
    #[test]
    fn arbitrary_json_never_crashes_patch(body in arb_json(), ops in arb_json()) {
        let _ = patch::parse_request(&body);
        let wrapped = json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops});
        if let Ok(parsed) = patch::parse_request(&wrapped) {
            let mut r = a_user();
            if let Err(e) = patch::apply(&mut r, &parsed, &users()) {
                prop_assert!(e.scim_type.is_some() || e.status == 400, "{:?}", e);
            }
        }
        if let Err(e) = patch::parse_request(&body) {
            prop_assert!(matches!(e.scim_type, Some(ScimType::InvalidSyntax | ScimType::InvalidPath | ScimType::NoTarget | ScimType::TooMany)), "{:?}", e);
        }
    }
}
