//! SCIM filter expressions (RFC 7644 section 3.4.2.2): the grammar, an AST, and evaluation
//! against a JSON resource.
//!
//! Keywords and operators are case-insensitive (`userName Eq "x"`, `AND`); attribute names are
//! case-insensitive; `and` binds tighter than `or`. Input is limited in length and nesting so
//! that no input can exhaust the stack, and parsing never panics.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// The longest filter accepted.
pub const MAX_FILTER_LEN: usize = 8 * 1024;
/// The deepest nesting of parentheses and brackets accepted.
pub const MAX_DEPTH: usize = 32;

/// `[urn:...:]attr[.sub]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttrPath {
    /// The schema URN, e.g. `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User`.
    pub uri: Option<String>,
    pub attr: String,
    pub sub: Option<String>,
}

impl std::fmt::Display for AttrPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.uri {
            write!(f, "{u}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `attr pr`
    Present(AttrPath),
    /// `attr op value`
    Compare(AttrPath, CompareOp, CompValue),
    /// `emails[type eq "work" and value co "@corp"]`: some value of a multi-valued
    /// attribute satisfies the inner filter (whose paths are relative to that value).
    ValuePath(AttrPath, Box<Filter>),
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

fn op_of(s: &str) -> Option<CompareOp> {
    Some(match s.to_ascii_lowercase().as_str() {
        "eq" => CompareOp::Eq,
        "ne" => CompareOp::Ne,
        "co" => CompareOp::Co,
        "sw" => CompareOp::Sw,
        "ew" => CompareOp::Ew,
        "gt" => CompareOp::Gt,
        "ge" => CompareOp::Ge,
        "lt" => CompareOp::Lt,
        "le" => CompareOp::Le,
        _ => return None,
    })
}

/// Parses `[urn:...:]attr[.sub]` (no value filter).
pub fn split_path(token: &str) -> Option<AttrPath> {
    // (`get`, not `[..4]`: a path may start with a character longer than one byte.)
    let (uri, rest) = if token.len() > 4 && token.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:")) {
        let i = token.rfind(':')?;
        (Some(token[..i].to_owned()), &token[i + 1..])
    } else {
        (None, token)
    };
    let (attr, sub) = match rest.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (rest, None),
    };
    let name_ok = |n: &str| {
        n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
    };
    if !name_ok(attr) || sub.is_some_and(|s| !name_ok(s)) {
        return None;
    }
    Some(AttrPath { uri, attr: attr.to_owned(), sub: sub.map(str::to_owned) })
}

peg::parser! {
    grammar grammar() for str {
        rule sp() = quiet!{[' ' | '\t']+}
        rule osp() = quiet!{[' ' | '\t']*}

        rule kw(k: &'static str) = s:$(['a'..='z' | 'A'..='Z']+) {? if s.eq_ignore_ascii_case(k) { Ok(()) } else { Err(k) } }

        rule path_token() -> &'input str
            = $(['a'..='z' | 'A'..='Z'] ['a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' | '$' | '.' | ':']*)

        rule path() -> AttrPath = t:path_token() {? split_path(t).ok_or("an attribute path") }

        rule op() -> CompareOp = s:$(['a'..='z' | 'A'..='Z']*<2>) {? op_of(s).ok_or("a comparison operator") }

        rule string() -> String
            = s:$("\"" ("\\" [_] / [^ '"' | '\\'])* "\"") {? serde_json::from_str::<String>(s).map_err(|_| "a valid string") }

        rule number() -> Number
            = n:$("-"? ("0" / ['1'..='9'] ['0'..='9']*) ("." ['0'..='9']+)? (['e' | 'E'] ['+' | '-']? ['0'..='9']+)?)
              {? serde_json::from_str::<Number>(n).map_err(|_| "a number") }

        rule value() -> CompValue
            = kw("true") { CompValue::Bool(true) }
            / kw("false") { CompValue::Bool(false) }
            / kw("null") { CompValue::Null }
            / n:number() { CompValue::Number(n) }
            / s:string() { CompValue::String(s) }

        rule attr_exp() -> Filter
            = p:path() sp() kw("pr") !['a'..='z' | 'A'..='Z'] { Filter::Present(p) }
            / p:path() sp() o:op() sp() v:value() { Filter::Compare(p, o, v) }

        rule sub_attr() -> AttrPath
            = t:$(['a'..='z' | 'A'..='Z'] ['a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' | '$']*)
              { AttrPath { uri: None, attr: t.to_owned(), sub: None } }

        // `emails[type eq "work"].value eq "x"` (Entra's shape, beyond RFC 7644's grammar):
        // the same as `emails[type eq "work" and value eq "x"]`.
        rule value_path() -> Filter
            = p:path() osp() "[" osp() f:or() osp() "]" "." s:sub_attr() sp() kw("pr") !['a'..='z' | 'A'..='Z']
              { Filter::ValuePath(p, Box::new(Filter::And(Box::new(f), Box::new(Filter::Present(s))))) }
            / p:path() osp() "[" osp() f:or() osp() "]" "." s:sub_attr() sp() o:op() sp() v:value()
              { Filter::ValuePath(p, Box::new(Filter::And(Box::new(f), Box::new(Filter::Compare(s, o, v))))) }
            / p:path() osp() "[" osp() f:or() osp() "]" { Filter::ValuePath(p, Box::new(f)) }

        rule atom() -> Filter
            = kw("not") osp() "(" osp() f:or() osp() ")" { Filter::Not(Box::new(f)) }
            / "(" osp() f:or() osp() ")" { f }
            / value_path()
            / attr_exp()

        rule and() -> Filter
            = first:atom() rest:(sp() kw("and") sp() a:atom() { a })* {
                super::balanced(first, rest, Filter::And)
            }

        rule or() -> Filter
            = first:and() rest:(sp() kw("or") sp() a:and() { a })* {
                super::balanced(first, rest, Filter::Or)
            }

        pub rule filter() -> Filter = osp() f:or() osp() { f }
    }
}

/// A flat chain `a or b or c ...` as a balanced tree: its depth grows with the logarithm of
/// its length, so that a long flat chain is not mistaken for deep nesting (`and` and `or` are
/// associative, so the meaning is the same).
fn balanced(first: Filter, rest: Vec<Filter>, join: fn(Box<Filter>, Box<Filter>) -> Filter) -> Filter {
    /// `first` joined with `rest`, halves built the same way.
    fn build(first: Filter, mut rest: Vec<Filter>, join: fn(Box<Filter>, Box<Filter>) -> Filter) -> Filter {
        if rest.is_empty() {
            return first;
        }
        // `first` and rest[..half] on the left, the others on the right.
        let half = rest.len().div_ceil(2) - 1;
        let mut right = rest.split_off(half);
        let right_first = right.remove(0);
        join(Box::new(build(first, rest, join)), Box::new(build(right_first, right, join)))
    }
    build(first, rest, join)
}

/// Refuses inputs too long or too deeply nested (more than `max_depth` levels of parentheses
/// and brackets) before the recursive parser sees them: a flat scan, quotes respected.
fn check_limits(input: &str, max_depth: usize) -> Result<(), FilterError> {
    if input.len() > MAX_FILTER_LEN {
        return Err(FilterError(format!("longer than {MAX_FILTER_LEN} bytes")));
    }
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for c in input.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (true, false, _) => {}
            (false, _, '"') => in_string = true,
            (false, _, '(' | '[') => {
                depth += 1;
                max = max.max(depth);
                if max > max_depth {
                    break;
                }
            }
            (false, _, ')' | ']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max > max_depth {
        return Err(FilterError(format!("nested deeper than {max_depth} levels")));
    }
    Ok(())
}

/// Parses a filter (at most [`MAX_FILTER_LEN`] bytes and [`MAX_DEPTH`] levels of nesting).
pub fn parse(input: &str) -> Result<Filter, FilterError> {
    parse_bounded(input, MAX_DEPTH)
}

/// Parses a filter nested at most `max_depth` levels (never more than [`MAX_DEPTH`]): for
/// filters inside other syntax, such as the value filter of a PATCH path.
pub fn parse_bounded(input: &str, max_depth: usize) -> Result<Filter, FilterError> {
    check_limits(input, max_depth.min(MAX_DEPTH))?;
    grammar::filter(input)
        .map_err(|e| FilterError(format!("at character {}: expected {}", e.location.column, e.expected)))
}

/// The value of `key` in `obj`, the key compared without case when no exact match.
pub fn get_ci<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// The values at `path` in `resource` (a multi-valued attribute gives each of its values).
pub fn values_at<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let base = match (&path.uri, resource) {
        (Some(u), Value::Object(o)) => match get_ci(o, u) {
            Some(v) => v,
            None => return vec![],
        },
        (Some(_), _) => return vec![],
        (None, v) => v,
    };
    let Value::Object(o) = base else { return vec![] };
    let Some(v) = get_ci(o, &path.attr) else { return vec![] };
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    match &path.sub {
        None => items,
        Some(sub) => items.into_iter().filter_map(|i| i.as_object().and_then(|o| get_ci(o, sub))).collect(),
    }
}

fn compare_one(v: &Value, op: CompareOp, want: &CompValue, case_exact: bool) -> bool {
    let fold = |s: &str| if case_exact { s.to_owned() } else { s.to_lowercase() };
    match (v, want) {
        (Value::String(a), CompValue::String(b)) => {
            let (a, b) = (fold(a), fold(b));
            match op {
                CompareOp::Eq => a == b,
                CompareOp::Ne => a != b,
                CompareOp::Co => a.contains(&b),
                CompareOp::Sw => a.starts_with(&b),
                CompareOp::Ew => a.ends_with(&b),
                CompareOp::Gt => a > b,
                CompareOp::Ge => a >= b,
                CompareOp::Lt => a < b,
                CompareOp::Le => a <= b,
            }
        }
        (Value::Number(a), CompValue::Number(b)) => {
            let ord = a.as_f64().zip(b.as_f64()).and_then(|(x, y)| x.partial_cmp(&y));
            match (op, ord) {
                (CompareOp::Eq, Some(o)) => o == Ordering::Equal,
                (CompareOp::Ne, Some(o)) => o != Ordering::Equal,
                (CompareOp::Gt, Some(o)) => o == Ordering::Greater,
                (CompareOp::Ge, Some(o)) => o != Ordering::Less,
                (CompareOp::Lt, Some(o)) => o == Ordering::Less,
                (CompareOp::Le, Some(o)) => o != Ordering::Greater,
                _ => false,
            }
        }
        (Value::Bool(a), CompValue::Bool(b)) => match op {
            CompareOp::Eq => a == b,
            CompareOp::Ne => a != b,
            _ => false,
        },
        (Value::Null, CompValue::Null) => op == CompareOp::Eq,
        _ => op == CompareOp::Ne,
    }
}

impl Filter {
    /// Whether `resource` matches. `case_exact` tells, for an attribute path, whether its
    /// strings compare with case (RFC 7643 `caseExact`); most do not.
    pub fn matches(&self, resource: &Value, case_exact: &dyn Fn(&AttrPath) -> bool) -> bool {
        match self {
            Filter::And(a, b) => a.matches(resource, case_exact) && b.matches(resource, case_exact),
            Filter::Or(a, b) => a.matches(resource, case_exact) || b.matches(resource, case_exact),
            Filter::Not(f) => !f.matches(resource, case_exact),
            Filter::Present(p) => values_at(resource, p).iter().any(|v| match v {
                Value::Null => false,
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                _ => true,
            }),
            Filter::Compare(p, op, want) => {
                let values = values_at(resource, p);
                let exact = case_exact(p);
                if values.is_empty() {
                    return matches!((op, want), (CompareOp::Eq, CompValue::Null))
                        || (*op == CompareOp::Ne && *want != CompValue::Null);
                }
                if *op == CompareOp::Ne {
                    return !values.iter().any(|v| compare_one(v, CompareOp::Eq, want, exact));
                }
                values.iter().any(|v| compare_one(v, *op, want, exact))
            }
            Filter::ValuePath(p, inner) => {
                let base = match (&p.uri, resource) {
                    (Some(u), Value::Object(o)) => get_ci(o, u),
                    (Some(_), _) => None,
                    (None, v) => Some(v),
                };
                let Some(Value::Object(o)) = base else { return false };
                match get_ci(o, &p.attr) {
                    Some(Value::Array(items)) => items.iter().any(|i| inner.matches(i, case_exact)),
                    Some(v @ Value::Object(_)) => inner.matches(v, case_exact),
                    _ => false,
                }
            }
        }
    }

    /// How deeply the filter nests.
    pub fn depth(&self) -> usize {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => 1 + a.depth().max(b.depth()),
            Filter::Not(f) | Filter::ValuePath(_, f) => 1 + f.depth(),
            Filter::Present(_) | Filter::Compare(..) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(attr: &str) -> AttrPath {
        split_path(attr).unwrap()
    }

    /// Every filter example of RFC 7644 section 3.4.2.2.
    const RFC_EXAMPLES: &[&str] = &[
        r#"userName eq "bjensen""#,
        r#"name.familyName co "O'Malley""#,
        r#"userName sw "J""#,
        r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J""#,
        r#"title pr"#,
        r#"meta.lastModified gt "2011-05-13T04:42:34Z""#,
        r#"meta.lastModified ge "2011-05-13T04:42:34Z""#,
        r#"meta.lastModified lt "2011-05-13T04:42:34Z""#,
        r#"meta.lastModified le "2011-05-13T04:42:34Z""#,
        r#"title pr and userType eq "Employee""#,
        r#"title pr or userType eq "Intern""#,
        r#"schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User""#,
        r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
        r#"userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")"#,
        r#"userType eq "Employee" and (emails.type eq "work")"#,
        r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#,
        r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]"#,
    ];

    #[test]
    fn every_rfc_example_parses() {
        for f in RFC_EXAMPLES {
            assert!(parse(f).is_ok(), "{f}: {:?}", parse(f));
        }
    }

    #[test]
    fn precedence_case_and_values() {
        let f = parse(r#"a eq 1 or b eq true AND c eq null"#).unwrap();
        let Filter::Or(_, right) = f else { panic!("or at the top") };
        assert!(matches!(*right, Filter::And(..)));
        assert_eq!(
            parse(r#"userName Eq "x""#).unwrap(),
            Filter::Compare(p("userName"), CompareOp::Eq, CompValue::String("x".into()))
        );
        assert_eq!(
            parse(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "1""#).unwrap(),
            Filter::Compare(
                AttrPath {
                    uri: Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User".into()),
                    attr: "manager".into(),
                    sub: Some("value".into())
                },
                CompareOp::Eq,
                CompValue::String("1".into())
            )
        );
        assert_eq!(
            parse(r#"x eq "a\"b\\c""#).unwrap(),
            Filter::Compare(p("x"), CompareOp::Eq, CompValue::String("a\"b\\c".into()))
        );
        assert_eq!(
            parse("n gt -1.5e3").unwrap(),
            Filter::Compare(p("n"), CompareOp::Gt, CompValue::Number(serde_json::from_str("-1.5e3").unwrap()))
        );
        assert_eq!(parse("  title   pr  ").unwrap(), Filter::Present(p("title")));
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for bad in [
            "",
            "userName",
            "userName eq",
            "userName xx \"a\"",
            "userName eq 'single'",
            "(a eq 1",
            "a eq 1)",
            "a eq 1 and",
            "not a eq 1",
            "1abc eq 2",
            "emails[type eq \"work\"",
            "a eq \"unterminated",
            "a eq 01",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.0.is_empty(), "{bad}");
        }
        let deep = format!("{}a eq 1{}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).unwrap_err().0.contains("nested"));
        assert!(parse(&"a eq 1 and ".repeat(1000)).is_err());
    }

    #[test]
    fn evaluation() {
        let user = json!({"userName": "BJensen", "title": "Tour Guide", "userType": "Employee",
            "emails": [{"type": "work", "value": "bjensen@example.com"}, {"type": "home", "value": "babs@jensen.org"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "701984"},
            "meta": {"lastModified": "2011-05-13T04:42:34Z"}, "active": true, "n": 3});
        let no_case = |_: &AttrPath| false;
        let t = |f: &str| parse(f).unwrap().matches(&user, &no_case);
        assert!(t(r#"userName eq "bjensen""#));
        assert!(t(r#"emails[type eq "work" and value co "@example.com"]"#));
        assert!(!t(r#"emails[type eq "home" and value co "@example.com"]"#));
        assert!(t(r#"emails.value co "jensen.org""#));
        assert!(t(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701984""#));
        assert!(t(r#"meta.lastModified gt "2011-01-01T00:00:00Z""#));
        assert!(t("title pr and not (nickName pr)"));
        assert!(t("active eq true and n ge 3 and n lt 4"));
        assert!(t(r#"userType ne "Intern""#));
        assert!(
            !parse(r#"userName eq "bjensen""#).unwrap().matches(&user, &|_| true),
            "caseExact attributes compare with case"
        );
    }

    #[test]
    fn paths_starting_with_multibyte_characters_are_refused_not_panicked_on() {
        // Found by the fuzz harness (tests/fuzz.rs): a PATCH path `hÜ𐺃...` was sliced inside a character.
        for p in ["hÜ𐺃᥀G𐫐", "Ü𐺃", "ürn:x:y", "urn:", "urñ:a:b"] {
            assert_eq!(split_path(p), None, "{p}");
        }
        assert_eq!(split_path("URN:x:y").map(|p| p.attr), Some("y".to_owned()));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_filter_like_input(s in "[a-z ()\\[\\]\"\\.:]{0,80}( (eq|pr|and|or|not) [a-z\"0-9 ]{0,10}){0,6}") {
            let _ = parse(&s);
        }
    }
}

#[cfg(test)]
mod flat_chains {
    use super::*;

    #[test]
    fn flat_or_and_chains_are_not_counted_as_nesting() {
        // Issue 15: a flat `or` of 65 terms was refused as "nests deeper than 64 levels".
        let terms: Vec<String> = (0..65).map(|i| format!("userName eq \"u{i}\"")).collect();
        let f = parse(&terms.join(" or ")).unwrap();
        assert!(f.depth() <= 8, "depth {}", f.depth());
        for i in [0, 31, 64] {
            assert!(f.matches(&serde_json::json!({"userName": format!("u{i}")}), &|_| false));
        }
        assert!(!f.matches(&serde_json::json!({"userName": "u65"}), &|_| false));
        let f = parse(&terms.join(" and ")).unwrap();
        assert!(f.depth() <= 8);
        // and binds tighter than or, still.
        let f = parse("title eq \"a\" or title eq \"b\" and userName eq \"x\"").unwrap();
        assert!(f.matches(&serde_json::json!({"title": "a", "userName": "y"}), &|_| false));
        assert!(!f.matches(&serde_json::json!({"title": "b", "userName": "y"}), &|_| false));
        // Deep nesting is still refused.
        let deep = format!("{}userName pr{}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).unwrap_err().0.contains("nested deeper"));
    }
}
