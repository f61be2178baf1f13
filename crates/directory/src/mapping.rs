//! How a user's account in an app is derived: parameters (app attribute <- source) and
//! rules (conditions on the user -> values, entitlements, scoping). Types and save-time
//! validation; evaluation lives in the engine.

use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::user::STANDARD_USER_FIELDS;
use crate::validation::ValidationErrors;
use crate::AttributeDef;

/// A transform applied to a source value, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Lower,
    Upper,
    Trim,
    /// The value when the source is empty.
    Default(String),
    /// The first N characters.
    First(usize),
}

/// Where a value comes from: exactly one of `attribute`, `constant` or `template`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A directory attribute: a standard one (`department`, `email`, ...) or a declared custom one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// A fixed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub constant: Option<Value>,
    /// Text with `{attribute}` placeholders, e.g. `{first_name}.{last_name}@corp.example`;
    /// `{{` and `}}` are literal braces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<Transform>,
}

/// A parameter: one app attribute and where its value comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// A SCIM attribute path: `title`, `name.givenName`, `emails[type eq "work"].value`,
    /// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department`.
    pub app_attribute: String,
    pub source: Source,
    /// Set when the account is created, never changed afterwards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_on_create: bool,
    /// An empty value fails the user's event (nothing is sent to the app).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// Whether all or any of a rule's conditions must hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    #[default]
    All,
    Any,
}

/// A condition operator. Text comparisons ignore case; `matches` is a regular expression
/// as written (use `(?i)` to ignore case); `greater_than` / `less_than` compare numbers or
/// dates (`YYYY-MM-DD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Equals,
    NotEquals,
    Contains,
    StartsWith,
    EndsWith,
    In,
    IsEmpty,
    IsNotEmpty,
    Matches,
    GreaterThan,
    LessThan,
    /// The user belongs to the role named by `value` (its name or id).
    MemberOf,
}

/// A condition on a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// A directory attribute (not needed for `member_of`).
    #[serde(default)]
    pub attribute: Option<String>,
    pub op: Op,
    /// The value compared with (a list for `in`; none for `is_empty` / `is_not_empty`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
}

/// An entitlement: a group, or a value of a multi-valued attribute of the app (`roles`,
/// `entitlements`, a license level...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntitlementRef {
    /// `group` for SCIM Groups, or the name of a multi-valued attribute of the app's users.
    #[serde(rename = "type")]
    pub kind: String,
    /// For a group, its display name (as imported by Refresh).
    pub value: String,
}

/// Setting an app attribute from a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAttribute {
    pub app_attribute: String,
    /// A fixed value (shorthand for `source.constant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// What a rule does when its conditions hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleAction {
    /// Set an app attribute (for single-valued attributes the last matching rule wins).
    Set(SetAttribute),
    /// Add an entitlement (entitlements of all matching rules accumulate).
    AddEntitlement(EntitlementRef),
    /// The user is out of scope for this app (deprovisioned per `on_delete`).
    DoNotProvision(bool),
}

/// A rule: conditions and actions. Rules run in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: Match,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub actions: Vec<RuleAction>,
}

/// The longest regular expression a rule's `matches` condition may hold, in bytes.
pub const MAX_REGEX_LEN: usize = 1024;
/// The deepest nesting of groups, classes and repetitions in a rule's regular expression.
pub const MAX_REGEX_NESTING: u32 = 32;
/// The most memory a rule's compiled regular expression may take (and its lazy DFA's cache).
pub const MAX_REGEX_SIZE: usize = 1 << 20;
/// The longest template, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 1024;
/// The most `{placeholders}` one template may hold.
pub const MAX_TEMPLATE_PLACEHOLDERS: usize = 32;
/// The most transforms one source may hold.
pub const MAX_TRANSFORMS: usize = 16;

/// Compiles the regular expression of a `matches` condition within the bounds above: its
/// length is checked before the regex parser sees it, then the parser's nesting limit and
/// the compiled program's size limit apply. What is refused on save is never compiled at
/// run time either.
pub fn rule_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!("is longer than {MAX_REGEX_LEN} bytes"));
    }
    regex::RegexBuilder::new(pattern)
        .nest_limit(MAX_REGEX_NESTING)
        .size_limit(MAX_REGEX_SIZE)
        .dfa_size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("is too complex: compiled, it would take more than {limit} bytes")
            }
            other if other.to_string().contains("maximum number of nested") => {
                format!("nests groups, classes or repetitions deeper than {MAX_REGEX_NESTING} levels")
            }
            other => format!("is not a valid regular expression: {other}"),
        })
}

/// The attributes the engine sets itself; parameters and rules may not.
pub const RESERVED_APP_ATTRIBUTES: &[&str] = &["externalId", "active", "id", "meta", "schemas", "groups"];

fn path_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // [urn:...:]attr[.sub] | attr[sub eq "value"].sub
        Regex::new(r#"^(?:(urn:[A-Za-z0-9.:_-]+):)?([A-Za-z][A-Za-z0-9_$-]*)(?:\[([A-Za-z][A-Za-z0-9_$-]*) eq "((?:[^"\\]|\\.)*)"\])?(?:\.([A-Za-z][A-Za-z0-9_$-]*))?$"#)
            .unwrap_or_else(|_| unreachable!())
    })
}

/// A parsed app attribute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// The schema extension URN, if any.
    pub schema: Option<String>,
    pub attr: String,
    /// `[sub eq "value"]` on a multi-valued attribute.
    pub filter: Option<(String, String)>,
    pub sub: Option<String>,
}

impl AttrPath {
    pub fn parse(path: &str) -> Option<Self> {
        let c = path_pattern().captures(path)?;
        let filter = match (c.get(3), c.get(4)) {
            (Some(a), Some(v)) => Some((a.as_str().to_owned(), v.as_str().replace("\\\"", "\"").replace("\\\\", "\\"))),
            _ => None,
        };
        if filter.is_some() && c.get(5).is_none() {
            return None;
        }
        Some(Self {
            schema: c.get(1).map(|m| m.as_str().to_owned()),
            attr: c.get(2)?.as_str().to_owned(),
            filter,
            sub: c.get(5).map(|m| m.as_str().to_owned()),
        })
    }
}

/// The names a source or condition may read: standard attributes and declared custom ones.
pub fn known_attribute(name: &str, defs: &[AttributeDef]) -> bool {
    (STANDARD_USER_FIELDS.contains(&name) && !matches!(name, "attributes" | "manager"))
        || defs.iter().any(|d| d.name == name)
}

/// The `{placeholders}` of a template, or an error for unbalanced or nested braces, or a
/// template over [`MAX_TEMPLATE_LEN`] bytes or [`MAX_TEMPLATE_PLACEHOLDERS`] placeholders.
pub fn template_placeholders(template: &str) -> Result<Vec<String>, String> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(format!("is longer than {MAX_TEMPLATE_LEN} bytes"));
    }
    let mut out = Vec::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') => return Err("has a `{` inside a placeholder: placeholders do not nest".into()),
                        Some(ch) => name.push(ch),
                        None => return Err("has a `{` without its `}`".into()),
                    }
                }
                if name.trim().is_empty() {
                    return Err("has an empty `{}`".into());
                }
                if out.len() == MAX_TEMPLATE_PLACEHOLDERS {
                    return Err(format!("has more than {MAX_TEMPLATE_PLACEHOLDERS} placeholders"));
                }
                out.push(name.trim().to_owned());
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '}' => return Err("has a `}` without its `{` (write `}}` for a brace)".into()),
            _ => {}
        }
    }
    Ok(out)
}

fn check_path(errors: &mut ValidationErrors, field: &str, path: &str) {
    match AttrPath::parse(path) {
        None => errors.push(field, "is not a SCIM attribute path such as `title`, `name.givenName`, `emails[type eq \"work\"].value` or an extension URN path"),
        Some(p) if p.schema.is_none() && RESERVED_APP_ATTRIBUTES.iter().any(|r| r.eq_ignore_ascii_case(&p.attr)) => {
            errors.push(field, "is set by the engine itself")
        }
        Some(_) => {}
    }
}

fn check_attribute(errors: &mut ValidationErrors, field: &str, name: &str, defs: &[AttributeDef]) {
    if !known_attribute(name, defs) {
        errors.push(field, format!("`{name}` is not a directory attribute"));
    }
}

fn check_source(errors: &mut ValidationErrors, field: &str, source: &Source, defs: &[AttributeDef]) {
    let kinds = [source.attribute.is_some(), source.constant.is_some(), source.template.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        errors.push(field, "must have exactly one of `attribute`, `constant` or `template`");
        return;
    }
    if let Some(a) = &source.attribute {
        check_attribute(errors, &format!("{field}.attribute"), a, defs);
    }
    if let Some(t) = &source.template {
        match template_placeholders(t) {
            Err(e) => errors.push(format!("{field}.template"), e),
            Ok(names) => {
                for n in names {
                    check_attribute(errors, &format!("{field}.template"), &n, defs);
                }
            }
        }
    }
    if source.transform.len() > MAX_TRANSFORMS {
        errors.push(format!("{field}.transform"), format!("at most {MAX_TRANSFORMS} transforms"));
    }
    for (i, t) in source.transform.iter().enumerate() {
        if matches!(t, Transform::First(0)) {
            errors.push(format!("{field}.transform[{i}]"), "`first` needs at least 1 character");
        }
    }
}

/// Whether a directory attribute as a source or condition names it (`costs`, or a path into it
/// such as `costs[type eq "x"].value`) is the attribute `name`.
fn names_attribute(written: &str, name: &str) -> bool {
    written.split(['[', '.']).next().is_some_and(|head| head.trim() == name)
}

impl Source {
    /// Whether this source reads the directory attribute `name` (as its attribute or in its
    /// template).
    pub fn reads(&self, name: &str) -> bool {
        self.attribute.as_deref().is_some_and(|a| names_attribute(a, name))
            || self
                .template
                .as_deref()
                .and_then(|t| template_placeholders(t).ok())
                .is_some_and(|names| names.iter().any(|n| names_attribute(n, name)))
    }
}

/// Where parameters and rules read the directory attribute `name`, one description each:
/// `parameter 3 (nickName)`, `rule "Sales group", condition 1`, `rule "x", action 2`.
pub fn attribute_uses(params: &[Parameter], rules: &[Rule], name: &str) -> Vec<String> {
    let mut uses = Vec::new();
    for (i, p) in params.iter().enumerate() {
        if p.source.reads(name) {
            uses.push(format!("parameter {} ({})", i + 1, p.app_attribute));
        }
    }
    for r in rules {
        for (j, c) in r.conditions.iter().enumerate() {
            if c.op != Op::MemberOf && c.attribute.as_deref().is_some_and(|a| names_attribute(a, name)) {
                uses.push(format!("rule {:?}, condition {}", r.name, j + 1));
            }
        }
        for (j, a) in r.actions.iter().enumerate() {
            if let RuleAction::Set(SetAttribute { source: Some(src), .. }) = a {
                if src.reads(name) {
                    uses.push(format!("rule {:?}, action {}", r.name, j + 1));
                }
            }
        }
    }
    uses
}

/// Checks parameters on save; every problem names its field (`[2].source.attribute`).
pub fn validate_parameters(params: &[Parameter], defs: &[AttributeDef]) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if params.len() > 500 {
        errors.push("parameters", "at most 500 parameters");
    }
    for (i, p) in params.iter().enumerate() {
        check_path(&mut errors, &format!("[{i}].app_attribute"), &p.app_attribute);
        check_source(&mut errors, &format!("[{i}].source"), &p.source, defs);
        if params[..i].iter().any(|q| q.app_attribute == p.app_attribute) {
            errors.push(format!("[{i}].app_attribute"), "is mapped twice");
        }
    }
    if !params.iter().any(|p| p.app_attribute == "userName") {
        errors.push("parameters", "must map `userName`");
    }
    errors.into_result()
}

/// Checks rules on save; a bad regular expression is refused here, never at run time.
pub fn validate_rules(rules: &[Rule], defs: &[AttributeDef]) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if rules.len() > 500 {
        errors.push("rules", "at most 500 rules");
    }
    for (i, r) in rules.iter().enumerate() {
        let at = |s: &str| format!("[{i}].{s}");
        if r.name.trim().is_empty() || r.name.len() > 200 {
            errors.push(at("name"), "must be 1-200 characters");
        }
        if r.actions.is_empty() {
            errors.push(at("actions"), "must have at least one action");
        }
        for (j, c) in r.conditions.iter().enumerate() {
            let field = at(&format!("conditions[{j}]"));
            match (c.op, &c.attribute) {
                (Op::MemberOf, _) => {}
                (_, None) => errors.push(format!("{field}.attribute"), "is required"),
                (_, Some(a)) => check_attribute(&mut errors, &format!("{field}.attribute"), a, defs),
            }
            match (c.op, &c.value) {
                (Op::IsEmpty | Op::IsNotEmpty, _) => {}
                (Op::In, Some(Value::Array(_))) => {}
                (Op::In, _) => errors.push(format!("{field}.value"), "must be a list"),
                (Op::Matches, Some(Value::String(re))) => {
                    if let Err(e) = rule_regex(re) {
                        errors.push(format!("{field}.value"), e);
                    }
                }
                (Op::Matches | Op::MemberOf, _) => errors.push(format!("{field}.value"), "must be a string"),
                (_, None) => errors.push(format!("{field}.value"), "is required"),
                (_, Some(_)) => {}
            }
        }
        for (j, a) in r.actions.iter().enumerate() {
            let field = at(&format!("actions[{j}]"));
            match a {
                RuleAction::Set(s) => {
                    check_path(&mut errors, &format!("{field}.set.app_attribute"), &s.app_attribute);
                    match (&s.value, &s.source) {
                        (Some(_), None) => {}
                        (None, Some(src)) => check_source(&mut errors, &format!("{field}.set.source"), src, defs),
                        _ => errors.push(format!("{field}.set"), "must have exactly one of `value` or `source`"),
                    }
                }
                RuleAction::AddEntitlement(e) => {
                    if e.kind.trim().is_empty() || e.value.trim().is_empty() {
                        errors.push(format!("{field}.add_entitlement"), "needs a `type` and a `value`");
                    } else if e.kind != "group"
                        && AttrPath::parse(&e.kind).is_none_or(|p| p.sub.is_some() || p.filter.is_some())
                    {
                        errors.push(
                            format!("{field}.add_entitlement.type"),
                            "must be `group` or a multi-valued attribute name",
                        );
                    }
                }
                RuleAction::DoNotProvision(_) => {}
            }
        }
    }
    errors.into_result()
}

/// The default parameters (until an admin maps the app's attributes): userName <- username,
/// name.givenName <- first_name, name.familyName <- last_name, displayName, work e-mail,
/// title. The engine adds `externalId` (the user's id) and `active` itself.
pub fn default_parameters() -> Vec<Parameter> {
    let p = |app: &str, attr: &str| Parameter {
        app_attribute: app.into(),
        source: Source { attribute: Some(attr.into()), ..Default::default() },
        only_on_create: false,
        required: false,
    };
    vec![
        Parameter { required: true, ..p("userName", "username") },
        p("name.givenName", "first_name"),
        p("name.familyName", "last_name"),
        p("displayName", "display_name"),
        p("emails[type eq \"work\"].value", "email"),
        p("title", "title"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_parse() {
        let p = AttrPath::parse("emails[type eq \"work\"].value").unwrap();
        assert_eq!(
            (p.attr.as_str(), p.filter.clone(), p.sub.as_deref()),
            ("emails", Some(("type".into(), "work".into())), Some("value"))
        );
        let p = AttrPath::parse("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value").unwrap();
        assert_eq!(p.schema.as_deref(), Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"));
        assert_eq!((p.attr.as_str(), p.sub.as_deref()), ("manager", Some("value")));
        assert_eq!(AttrPath::parse("name.givenName").unwrap().sub.as_deref(), Some("givenName"));
        for bad in ["", "name..x", "emails[type eq \"work\"]", "1abc", "a b", "emails[type = \"x\"].value"] {
            assert!(AttrPath::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn templates_find_placeholders() {
        assert_eq!(template_placeholders("{first_name}.{last_name}@corp").unwrap(), ["first_name", "last_name"]);
        assert_eq!(template_placeholders("{{literal}} {x}").unwrap(), ["x"]);
        assert!(template_placeholders("{open").is_err());
        assert!(template_placeholders("close}").is_err());
        assert!(template_placeholders("{}").is_err());
    }

    #[test]
    fn templates_are_bounded_in_size_placeholders_and_nesting() {
        let err = template_placeholders(&"x".repeat(MAX_TEMPLATE_LEN + 1)).unwrap_err();
        assert!(err.contains("longer than 1024 bytes"), "{err}");
        assert!(template_placeholders(&"x".repeat(MAX_TEMPLATE_LEN)).is_ok());
        let many = |n: usize| "{title}".repeat(n);
        assert_eq!(template_placeholders(&many(MAX_TEMPLATE_PLACEHOLDERS)).unwrap().len(), 32);
        assert!(template_placeholders(&many(MAX_TEMPLATE_PLACEHOLDERS + 1)).unwrap_err().contains("more than 32"));
        let err = template_placeholders("{first_{name}}").unwrap_err();
        assert!(err.contains("do not nest"), "{err}");
        // Deep brace runs are not nesting: they are refused flat, never recursed into.
        assert!(template_placeholders(&format!("a{}", "{a".repeat(300))).is_err());
        assert!(template_placeholders(&"{{".repeat(500)).unwrap().is_empty());
    }

    #[test]
    fn rule_regexes_are_bounded_in_length_nesting_and_size() {
        assert!(rule_regex("^(?i)eng(ineer)?$").is_ok());
        let err = rule_regex(&"a".repeat(MAX_REGEX_LEN + 1)).unwrap_err();
        assert!(err.contains("longer than 1024 bytes"), "{err}");
        let nested = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        assert!(rule_regex(&nested(20)).is_ok());
        let err = rule_regex(&nested(40)).unwrap_err();
        assert!(err.contains("deeper than 32 levels"), "{err}");
        // Short but huge once compiled: counted repetitions multiply.
        let err = rule_regex(r"\w{1000}\w{1000}\w{1000}").unwrap_err();
        assert!(err.contains("too complex"), "{err}");
        let err = rule_regex("(unclosed").unwrap_err();
        assert!(err.contains("not a valid regular expression"), "{err}");
    }

    #[test]
    fn uses_of_an_attribute_are_found_in_parameters_templates_conditions_and_actions() {
        let param = |app: &str, source: Source| Parameter {
            app_attribute: app.into(),
            source,
            only_on_create: false,
            required: false,
        };
        let params = vec![
            param("userName", Source { attribute: Some("username".into()), ..Default::default() }),
            param("costCenter", Source { attribute: Some("cost_code".into()), ..Default::default() }),
            param("nickName", Source { template: Some("{first_name}-{cost_code}".into()), ..Default::default() }),
            param("title", Source { attribute: Some("cost_code_old".into()), ..Default::default() }),
        ];
        let rules = vec![Rule {
            name: "Finance".into(),
            match_: Match::All,
            conditions: vec![
                Condition { attribute: Some("title".into()), op: Op::IsNotEmpty, value: None },
                Condition { attribute: Some("cost_code".into()), op: Op::Equals, value: Some(json!("42")) },
            ],
            actions: vec![
                RuleAction::DoNotProvision(false),
                RuleAction::Set(SetAttribute {
                    app_attribute: "division".into(),
                    value: None,
                    source: Some(Source { attribute: Some("cost_code".into()), ..Default::default() }),
                }),
            ],
        }];
        assert_eq!(
            attribute_uses(&params, &rules, "cost_code"),
            [
                "parameter 2 (costCenter)",
                "parameter 3 (nickName)",
                "rule \"Finance\", condition 2",
                "rule \"Finance\", action 2"
            ]
        );
        assert!(attribute_uses(&params, &rules, "badge").is_empty());
    }

    #[test]
    fn parameters_are_validated_naming_the_field() {
        let params: Vec<Parameter> = serde_json::from_value(json!([
            {"app_attribute": "userName", "source": {"attribute": "username"}},
            {"app_attribute": "nickName", "source": {"template": "{first_name}.{nope}"}},
            {"app_attribute": "bad path!", "source": {"constant": "x"}},
            {"app_attribute": "externalId", "source": {"attribute": "id"}},
            {"app_attribute": "title", "source": {"attribute": "title", "constant": "x"}},
        ]))
        .unwrap();
        let err = validate_parameters(&params, &[]).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["[1].source.template", "[2].app_attribute", "[3].app_attribute", "[4].source"]);
        assert!(validate_parameters(&default_parameters(), &[]).is_ok());
        assert!(validate_parameters(&default_parameters()[1..], &[]).is_err(), "userName must be mapped");
    }

    #[test]
    fn rules_are_validated_and_bad_regexes_refused() {
        let rules: Vec<Rule> = serde_json::from_value(json!([
            {"name": "Sales group", "match": "all",
             "conditions": [{"attribute": "department", "op": "equals", "value": "Sales"}],
             "actions": [{"add_entitlement": {"type": "group", "value": "Sales and Marketing"}}]},
            {"name": "Bad regex", "conditions": [{"attribute": "title", "op": "matches", "value": "(unclosed"}],
             "actions": [{"do_not_provision": true}]},
            {"name": "In needs a list", "conditions": [{"attribute": "title", "op": "in", "value": "x"}],
             "actions": [{"set": {"app_attribute": "userType", "value": "x"}}]},
        ]))
        .unwrap();
        let err = validate_rules(&rules, &[]).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["[1].conditions[0].value", "[2].conditions[0].value"]);
        assert!(validate_rules(&rules[..1], &[]).is_ok());
    }
}
