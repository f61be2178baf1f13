//! Our filter parser (`scim::query`) against an independent one (the `scim_v2` crate, a LALRPOP
//! grammar) on generated filters: both must accept them and agree on their meaning. And no
//! input, however odd, makes ours panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: their helpers (outside #[test] functions, where clippy.toml's allow-*-in-tests does not reach) fail the test with a message"
)]

use proptest::prelude::*;
use scim::query::{self, AttrPath, CompValue, CompareOp, Filter};
use serde_json::Number;

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// A filter in a shape both parsers share: `and`/`or` chains flattened.
#[derive(Debug, Clone, PartialEq)]
enum Norm {
    And(Vec<Norm>),
    Or(Vec<Norm>),
    Not(Box<Norm>),
    Present(String),
    Compare(String, &'static str, String),
    ValuePath(String, Box<Norm>),
}

fn path_key(uri: Option<&str>, attr: &str, sub: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(u) = uri {
        s.push_str(&u.to_ascii_lowercase());
        s.push(':');
    }
    s.push_str(&attr.to_ascii_lowercase());
    if let Some(sub) = sub {
        s.push('.');
        s.push_str(&sub.to_ascii_lowercase());
    }
    s
}

fn flatten(kind_and: bool, parts: Vec<Norm>) -> Norm {
    let mut out = vec![];
    for p in parts {
        match (kind_and, p) {
            (true, Norm::And(inner)) | (false, Norm::Or(inner)) => out.extend(inner),
            (_, other) => out.push(other),
        }
    }
    if kind_and {
        Norm::And(out)
    } else {
        Norm::Or(out)
    }
}

fn ours(f: &Filter) -> Norm {
    let p = |p: &AttrPath| path_key(p.uri.as_deref(), &p.attr, p.sub.as_deref());
    match f {
        Filter::And(a, b) => flatten(true, vec![ours(a), ours(b)]),
        Filter::Or(a, b) => flatten(false, vec![ours(a), ours(b)]),
        Filter::Not(a) => Norm::Not(Box::new(ours(a))),
        Filter::Present(x) => Norm::Present(p(x)),
        Filter::Compare(x, op, v) => Norm::Compare(
            p(x),
            match op {
                CompareOp::Eq => "eq",
                CompareOp::Ne => "ne",
                CompareOp::Co => "co",
                CompareOp::Sw => "sw",
                CompareOp::Ew => "ew",
                CompareOp::Gt => "gt",
                CompareOp::Ge => "ge",
                CompareOp::Lt => "lt",
                CompareOp::Le => "le",
            },
            match v {
                CompValue::Null => "null".into(),
                CompValue::Bool(b) => b.to_string(),
                CompValue::Number(n) => format!("#{}", n.as_f64().unwrap_or(f64::NAN)),
                CompValue::String(s) => format!("'{s}"),
            },
        ),
        Filter::ValuePath(x, inner) => Norm::ValuePath(p(x), Box::new(ours(inner))),
    }
}

mod theirs {
    use super::*;
    use scim_v2::filter as t;

    fn p(p: &t::AttrPath) -> String {
        path_key(p.uri.as_deref(), &p.name, p.sub_attr.as_deref())
    }

    fn exp(e: &t::AttrExp) -> Norm {
        match e {
            t::AttrExp::Present(x) => Norm::Present(p(x)),
            t::AttrExp::Comparison(x, op, v) => Norm::Compare(
                p(x),
                match op {
                    t::CompareOp::Eq => "eq",
                    t::CompareOp::Ne => "ne",
                    t::CompareOp::Co => "co",
                    t::CompareOp::Sw => "sw",
                    t::CompareOp::Ew => "ew",
                    t::CompareOp::Gt => "gt",
                    t::CompareOp::Ge => "ge",
                    t::CompareOp::Lt => "lt",
                    t::CompareOp::Le => "le",
                },
                match v {
                    t::CompValue::Null => "null".into(),
                    t::CompValue::True => "true".into(),
                    t::CompValue::False => "false".into(),
                    t::CompValue::Number(n) => format!("#{}", n.as_f64().unwrap_or(f64::NAN)),
                    t::CompValue::Str(s) => format!("'{s}"),
                },
            ),
        }
    }

    fn val(f: &t::ValFilter) -> Norm {
        match f {
            t::ValFilter::Attr(e) => exp(e),
            t::ValFilter::Not(a) => Norm::Not(Box::new(val(a))),
            t::ValFilter::And(a, b) => flatten(true, vec![val(a), val(b)]),
            t::ValFilter::Or(a, b) => flatten(false, vec![val(a), val(b)]),
        }
    }

    pub fn norm(f: &t::Filter) -> Norm {
        match f {
            t::Filter::Attr(e) => exp(e),
            t::Filter::ValuePath(vp) => Norm::ValuePath(p(&vp.attr), Box::new(val(&vp.filter))),
            t::Filter::Not(a) => Norm::Not(Box::new(norm(a))),
            t::Filter::And(a, b) => flatten(true, vec![norm(a), norm(b)]),
            t::Filter::Or(a, b) => flatten(false, vec![norm(a), norm(b)]),
        }
    }

    pub fn parse(s: &str) -> Result<Norm, String> {
        s.parse::<t::Filter>().map(|f| norm(&f)).map_err(|e| e.to_string())
    }
}

const KEYWORDS: &[&str] =
    &["and", "or", "not", "pr", "eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "true", "false", "null"];

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9]{0,6}".prop_filter("not a keyword", |n| !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(n)))
}

fn path() -> impl Strategy<Value = String> {
    (proptest::option::of(Just(ENTERPRISE)), name(), proptest::option::of(name())).prop_map(|(uri, a, sub)| {
        let mut s = String::new();
        if let Some(u) = uri {
            s.push_str(u);
            s.push(':');
        }
        s.push_str(&a);
        if let Some(sub) = sub {
            s.push('.');
            s.push_str(&sub);
        }
        s
    })
}

/// A keyword in random case (`eq`, `EQ`, `Eq`).
fn cased(k: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), k.len())
        .prop_map(move |up| k.chars().zip(up).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect())
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        (-100_000i64..100_000).prop_map(|n| n.to_string()),
        (-1000i32..1000, 1u32..99).prop_map(|(a, b)| format!("{a}.{b}")),
        "[a-zA-Z0-9 @.'\"\\\\/é-]{0,10}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ]
}

fn op() -> impl Strategy<Value = String> {
    prop_oneof![
        cased("eq"),
        cased("ne"),
        cased("co"),
        cased("sw"),
        cased("ew"),
        cased("gt"),
        cased("ge"),
        cased("lt"),
        cased("le")
    ]
}

fn attr_exp(sub_only: bool) -> BoxedStrategy<String> {
    let p: BoxedStrategy<String> = if sub_only { name().boxed() } else { path().boxed() };
    prop_oneof![
        (p.clone(), cased("pr")).prop_map(|(p, k)| format!("{p} {k}")),
        (p, op(), value()).prop_map(|(p, o, v)| format!("{p} {o} {v}")),
    ]
    .boxed()
}

fn combine(leaf: BoxedStrategy<String>) -> BoxedStrategy<String> {
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), cased("and"), inner.clone()).prop_map(|(a, k, b)| format!("{a} {k} {b}")),
            (inner.clone(), cased("or"), inner.clone()).prop_map(|(a, k, b)| format!("{a} {k} {b}")),
            (cased("not"), inner.clone()).prop_map(|(k, a)| format!("{k} ({a})")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
    .boxed()
}

fn filter() -> BoxedStrategy<String> {
    let value_path = (name(), combine(attr_exp(true))).prop_map(|(n, f)| format!("{n}[{f}]"));
    combine(prop_oneof![3 => attr_exp(false), 1 => value_path].boxed())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn both_parsers_agree_on_generated_filters(f in filter()) {
        let mine = query::parse(&f).map(|x| ours(&x));
        let other = theirs::parse(&f);
        match (&mine, &other) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", f),
            _ => prop_assert!(false, "{f}\nours: {mine:?}\ntheirs: {other:?}"),
        }
    }

    #[test]
    fn no_input_makes_the_parser_panic(s in "\\PC{0,300}") {
        let _ = query::parse(&s);
    }

    #[test]
    fn no_filter_like_input_makes_the_parser_panic(s in "[a-zA-Z0-9 ()\\[\\]\"\\\\.:_$-]{0,200}") {
        let _ = query::parse(&s);
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for depth in [33, 1000, 100_000] {
        let f = format!("{}a eq 1{}", "(".repeat(depth), ")".repeat(depth));
        assert!(query::parse(&f).is_err());
        let f = format!("{}a eq 1{}", "not (".repeat(depth), ")".repeat(depth));
        assert!(query::parse(&f).is_err());
    }
    let _ = Number::from(1);
}
