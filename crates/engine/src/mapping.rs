//! Evaluating an app's parameters and rules for a user: the account the user should have
//! in the app, and, for every value, which parameter or rule produced it.
//!
//! Order, documented for admins: parameters first (in order), then rules in order. For a
//! single-valued attribute the last writer wins, so a matching rule overrides a parameter
//! and a later rule overrides an earlier one. Entitlements of all matching rules accumulate.
//! A matching "do not provision" rule puts the user out of scope for the app.
//!
//! Pure: no storage, no clock, no I/O. The only state is two per-thread caches of parsed
//! attribute paths and compiled rule regexes, keyed by what admins typed and each bounded to a
//! small fixed number of entries, so no input grows them without limit.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;
use directory::mapping::AttrPath;
use directory::{App, Condition, Match, Op, RoleRef, RuleAction, Source, Transform, User};
use serde_json::{json, Map, Value};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

/// Where the names of the groups a user should belong to travel in a desired account. The
/// key is stripped before anything is sent to the app.
pub const GROUPS_KEY: &str = "urn:provisioner:entitlements:group";

/// The account a user should have in an app.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// `false` when a "do not provision" rule matched.
    pub in_scope: bool,
    /// The SCIM resource, with `externalId`, `active` and (when any) the groups under
    /// [`GROUPS_KEY`].
    pub resource: Value,
    /// App attribute (or `group:<name>`, `<type>:<value>`, `scope`) -> what produced it.
    pub provenance: BTreeMap<String, String>,
    /// Paths set only when the account is created.
    pub create_only: Vec<String>,
    /// Required parameters whose value is empty.
    pub missing_required: Vec<String>,
}

/// A directory attribute of a user, as JSON (`None` when unset): a first field, a profile
/// path (`phone_numbers[type eq "mobile"].value`, see [`directory::profile`]) or a custom
/// attribute.
pub fn user_value(user: &User, name: &str) -> Option<Value> {
    let text = |v: &Option<String>| v.clone().map(Value::String);
    match name {
        "id" => Some(Value::String(user.id.to_string())),
        "username" => Some(Value::String(user.username.clone())),
        "email" => text(&user.email),
        "first_name" => text(&user.first_name),
        "last_name" => text(&user.last_name),
        "display_name" => text(&user.display_name),
        "title" => text(&user.title),
        "department" => text(&user.department),
        "manager_id" => user.manager_id.map(|m| Value::String(m.to_string())),
        "phone" => text(&user.phone),
        "employee_number" => text(&user.employee_number),
        "status" => Some(Value::String(user.status.as_str().to_owned())),
        "source" => Some(Value::String(user.source.as_str().to_owned())),
        "created_at" => Some(Value::String(user.created_at.to_rfc3339())),
        "updated_at" => Some(Value::String(user.updated_at.to_rfc3339())),
        other => match directory::UserPath::parse(other) {
            Some(Ok(path)) => user.profile.get(&path),
            Some(Err(_)) => None,
            None => user.attributes.get(other).cloned(),
        },
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(as_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

/// Renders `{attribute}` placeholders (`{{` and `}}` are literal braces); unset attributes
/// render as nothing.
pub fn render_template(template: &str, user: &User) -> String {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '{' => {
                let mut name = String::new();
                for ch in chars.by_ref() {
                    if ch == '}' {
                        break;
                    }
                    name.push(ch);
                }
                if let Some(v) = user_value(user, name.trim()) {
                    out.push_str(&as_text(&v));
                }
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            other => out.push(other),
        }
    }
    out
}

/// Applies the transforms in order.
pub fn apply_transforms(mut value: Option<Value>, transforms: &[Transform]) -> Option<Value> {
    for t in transforms {
        value = match (t, value) {
            (Transform::Default(d), v) if is_empty(v.as_ref()) => Some(Value::String(d.clone())),
            (Transform::Lower, Some(Value::String(s))) => Some(Value::String(s.to_lowercase())),
            (Transform::Upper, Some(Value::String(s))) => Some(Value::String(s.to_uppercase())),
            (Transform::Trim, Some(Value::String(s))) => Some(Value::String(s.trim().to_owned())),
            (Transform::First(n), Some(Value::String(s))) => Some(Value::String(s.chars().take(*n).collect())),
            (_, v) => v,
        };
    }
    value.filter(|v| !is_empty(Some(v)))
}

/// The value of a source for a user (`None` when empty).
pub fn source_value(source: &Source, user: &User) -> Option<Value> {
    let raw = if let Some(a) = &source.attribute {
        user_value(user, a)
    } else if let Some(c) = &source.constant {
        Some(c.clone())
    } else {
        source.template.as_deref().map(|t| Value::String(render_template(t, user)))
    };
    apply_transforms(raw, &source.transform)
}

fn container<'a>(resource: &'a mut Map<String, Value>, path: &AttrPath) -> &'a mut Map<String, Value> {
    let Some(schema) = &path.schema else { return resource };
    if let Some(Value::Array(schemas)) = resource.get_mut("schemas") {
        if !schemas.iter().any(|s| s == schema.as_str()) {
            schemas.push(Value::String(schema.clone()));
        }
    }
    let slot = resource.entry(schema.clone()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn object_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key.to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Sets `value` at an app attribute path (`None` removes it).
pub fn set_path(resource: &mut Value, path: &AttrPath, value: Option<Value>) {
    let Value::Object(root) = resource else { return };
    let map = container(root, path);
    match (&path.filter, &path.sub) {
        (None, None) => {
            match value {
                Some(v) => map.insert(path.attr.clone(), v),
                None => map.remove(&path.attr),
            };
        }
        (None, Some(sub)) => {
            let obj = object_at(map, &path.attr);
            match value {
                Some(v) => obj.insert(sub.clone(), v),
                None => obj.remove(sub),
            };
            if obj.is_empty() {
                map.remove(&path.attr);
            }
        }
        (Some((fa, fv)), sub) => {
            let sub = sub.clone().unwrap_or_else(|| "value".into());
            let list = map.entry(path.attr.clone()).or_insert_with(|| Value::Array(vec![]));
            if !list.is_array() {
                *list = Value::Array(vec![]);
            }
            let Value::Array(items) = list else { return };
            let pos = items.iter().position(|el| el.get(fa).is_some_and(|x| x.as_str() == Some(fv)));
            match (pos, value) {
                (Some(i), Some(v)) => {
                    if let Value::Object(el) = &mut items[i] {
                        el.insert(sub, v);
                    }
                }
                (None, Some(v)) => items.push(json!({ fa.clone(): fv, sub: v })),
                (Some(i), None) => {
                    items.remove(i);
                }
                (None, None) => {}
            }
            if items.is_empty() {
                map.remove(&path.attr);
            }
        }
    }
}

/// The value at an app attribute path.
pub fn get_path<'a>(resource: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    let base = match &path.schema {
        Some(s) => resource.get(s)?,
        None => resource,
    };
    let attr = base.get(&path.attr)?;
    match (&path.filter, &path.sub) {
        (None, None) => Some(attr),
        (None, Some(sub)) => attr.get(sub),
        (Some((fa, fv)), sub) => {
            let el = attr.as_array()?.iter().find(|el| el.get(fa).is_some_and(|x| x.as_str() == Some(fv)))?;
            el.get(sub.as_deref().unwrap_or("value"))
        }
    }
}

/// Parsed attribute paths kept per thread: far more than the distinct paths of all apps'
/// mappings together, and each entry is a few short strings.
const PATH_CACHE_CAPACITY: usize = 256;

/// Compiled rule regexes kept per thread. A compiled regex may take up to twice
/// [`directory::mapping::MAX_REGEX_SIZE`] (program and lazy DFA), so this bounds what the
/// cache can hold whatever admins type, while still exceeding the `matches` conditions of a
/// typical installation (more of them only means compiling some again).
const REGEX_CACHE_CAPACITY: usize = 64;

/// A per-thread memo keyed by admin input that never holds more than `capacity` entries: when
/// full, a new key clears it first. Written by hand (no LRU crate is a dependency, and a few
/// lines do): the same few keys come back for every user, so a cleared cache refills at once.
struct BoundedCache<V> {
    map: HashMap<String, V>,
    capacity: usize,
}

impl<V> BoundedCache<V> {
    fn new(capacity: usize) -> Self {
        Self { map: HashMap::new(), capacity }
    }

    /// Reads the value of `key` through `read`, computing it with `make` (and remembering it)
    /// on a miss.
    fn with<R>(&mut self, key: &str, make: impl FnOnce() -> V, read: impl FnOnce(&V) -> R) -> R {
        if let Some(v) = self.map.get(key) {
            return read(v);
        }
        let v = make();
        let answer = read(&v);
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key.to_owned(), v);
        answer
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

thread_local! {
    static PATH_CACHE: RefCell<BoundedCache<Option<AttrPath>>> =
        RefCell::new(BoundedCache::new(PATH_CACHE_CAPACITY));
    static REGEX_CACHE: RefCell<BoundedCache<Option<regex::Regex>>> =
        RefCell::new(BoundedCache::new(REGEX_CACHE_CAPACITY));
}

/// [`AttrPath::parse`], remembered: the same few paths are parsed for every user.
pub fn parse_path(path: &str) -> Option<AttrPath> {
    PATH_CACHE.with(|cache| cache.borrow_mut().with(path, || AttrPath::parse(path), Clone::clone))
}

/// Whether `text` matches the rule regex `pattern`, compiled once per thread. A pattern that
/// does not compile (refused on save, so only from older data) matches nothing.
fn regex_matches(pattern: &str, text: &str) -> bool {
    REGEX_CACHE.with(|cache| {
        cache.borrow_mut().with(
            pattern,
            || directory::mapping::rule_regex(pattern).ok(),
            |re| re.as_ref().is_some_and(|re| re.is_match(text)),
        )
    })
}

fn compare(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    if let (Ok(x), Ok(y)) = (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        return x.partial_cmp(&y);
    }
    let date = |s: &str| NaiveDate::parse_from_str(s.trim().get(..10).unwrap_or(s), "%Y-%m-%d").ok();
    match (date(a), date(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => None,
    }
}

/// Whether a condition holds for a user.
pub fn condition_holds(c: &Condition, user: &User, roles: &[RoleRef]) -> bool {
    let target = c.value.as_ref().map(as_text).unwrap_or_default();
    if c.op == Op::MemberOf {
        return roles.iter().any(|r| r.id.to_string() == target || r.name.to_lowercase() == target.to_lowercase());
    }
    let value = c.attribute.as_deref().and_then(|a| user_value(user, a));
    let texts: Vec<String> = match &value {
        Some(Value::Array(items)) => items.iter().map(as_text).collect(),
        Some(v) => vec![as_text(v)],
        None => vec![],
    };
    let lower: Vec<String> = texts.iter().map(|t| t.to_lowercase()).collect();
    let t = target.to_lowercase();
    match c.op {
        Op::Equals => lower.contains(&t),
        Op::NotEquals => !lower.contains(&t),
        Op::Contains => lower.iter().any(|v| v.contains(&t)),
        Op::StartsWith => lower.iter().any(|v| v.starts_with(&t)),
        Op::EndsWith => lower.iter().any(|v| v.ends_with(&t)),
        Op::In => {
            let options: Vec<String> = match &c.value {
                Some(Value::Array(items)) => items.iter().map(|i| as_text(i).to_lowercase()).collect(),
                _ => vec![],
            };
            lower.iter().any(|v| options.contains(v))
        }
        Op::IsEmpty => is_empty(value.as_ref()),
        Op::IsNotEmpty => !is_empty(value.as_ref()),
        Op::Matches => texts.iter().any(|v| regex_matches(&target, v)),
        Op::GreaterThan => texts.iter().any(|v| compare(v, &target) == Some(std::cmp::Ordering::Greater)),
        Op::LessThan => texts.iter().any(|v| compare(v, &target) == Some(std::cmp::Ordering::Less)),
        Op::MemberOf => false,
    }
}

/// The account `user` should have in `app` (`active` or suspended).
pub fn evaluate(user: &User, roles: &[RoleRef], app: &App, active: bool) -> Evaluation {
    evaluate_with(user, roles, app, active, true)
}

/// [`evaluate`] without the provenance (left empty): what planning needs, for less work.
pub fn evaluate_for_plan(user: &User, roles: &[RoleRef], app: &App, active: bool) -> Evaluation {
    evaluate_with(user, roles, app, active, false)
}

fn evaluate_with(user: &User, roles: &[RoleRef], app: &App, active: bool, explain: bool) -> Evaluation {
    let mut resource = json!({"schemas": [USER_SCHEMA]});
    let mut provenance = BTreeMap::new();
    let mut create_only = Vec::new();
    let mut missing_required = Vec::new();
    for (i, p) in app.effective_parameters().iter().enumerate() {
        let Some(path) = parse_path(&p.app_attribute) else { continue };
        let value = source_value(&p.source, user);
        if value.is_none() && p.required {
            missing_required.push(p.app_attribute.clone());
        }
        if explain && value.is_some() {
            let what = match (&p.source.attribute, &p.source.template) {
                (Some(a), _) => format!("parameter {} ({a})", i + 1),
                (None, Some(t)) => format!("parameter {} (template {t})", i + 1),
                _ => format!("parameter {} (constant)", i + 1),
            };
            provenance.insert(p.app_attribute.clone(), what);
        }
        set_path(&mut resource, &path, value);
        if p.only_on_create {
            create_only.push(p.app_attribute.clone());
        }
    }
    let mut in_scope = true;
    let mut groups = BTreeSet::new();
    for rule in &app.rules {
        let holds = |c: &Condition| condition_holds(c, user, roles);
        let matched = match rule.match_ {
            _ if rule.conditions.is_empty() => true,
            Match::All => rule.conditions.iter().all(holds),
            Match::Any => rule.conditions.iter().any(holds),
        };
        if !matched {
            continue;
        }
        let by = if explain { format!("rule '{}'", rule.name) } else { String::new() };
        for action in &rule.actions {
            match action {
                RuleAction::Set(s) => {
                    let Some(path) = parse_path(&s.app_attribute) else { continue };
                    let value = match (&s.value, &s.source) {
                        (Some(v), _) => Some(v.clone()).filter(|v| !is_empty(Some(v))),
                        (None, Some(src)) => source_value(src, user),
                        (None, None) => None,
                    };
                    set_path(&mut resource, &path, value);
                    if explain {
                        provenance.insert(s.app_attribute.clone(), by.clone());
                    }
                    missing_required.retain(|m| m != &s.app_attribute);
                }
                RuleAction::AddEntitlement(e) if e.kind == "group" => {
                    groups.insert(e.value.clone());
                    if explain {
                        provenance.insert(format!("group:{}", e.value), by.clone());
                    }
                }
                RuleAction::AddEntitlement(e) => {
                    if let Value::Object(root) = &mut resource {
                        let list = root.entry(e.kind.clone()).or_insert_with(|| Value::Array(vec![]));
                        if let Value::Array(items) = list {
                            if !items.iter().any(|i| i.get("value").and_then(Value::as_str) == Some(&e.value)) {
                                items.push(json!({"value": e.value}));
                            }
                        }
                    }
                    if explain {
                        provenance.insert(format!("{}:{}", e.kind, e.value), by.clone());
                    }
                }
                RuleAction::DoNotProvision(true) => {
                    in_scope = false;
                    if explain {
                        provenance.insert("scope".into(), by.clone());
                    }
                }
                RuleAction::DoNotProvision(false) => {}
            }
        }
    }
    if let Value::Object(root) = &mut resource {
        root.insert("externalId".into(), Value::String(user.id.to_string()));
        root.insert("active".into(), Value::Bool(active));
        if !groups.is_empty() {
            root.insert(GROUPS_KEY.into(), Value::Array(groups.into_iter().map(Value::String).collect()));
        }
    }
    if explain {
        provenance.insert("externalId".into(), "the user's id (set by the engine)".into());
        provenance.insert("active".into(), "the user's status (set by the engine)".into());
    }
    Evaluation { in_scope, resource, provenance, create_only, missing_required }
}

/// The SCIM resource for `user` with the default mapping (no parameters, no rules).
pub fn default_resource(user: &User, active: bool) -> Value {
    let mut resource = json!({"schemas": [USER_SCHEMA]});
    for p in directory::mapping::default_parameters() {
        if let Some(path) = parse_path(&p.app_attribute) {
            set_path(&mut resource, &path, source_value(&p.source, user));
        }
    }
    if let Value::Object(root) = &mut resource {
        root.insert("externalId".into(), Value::String(user.id.to_string()));
        root.insert("active".into(), Value::Bool(active));
    }
    resource
}

/// Whether a resource is active (absent counts as active, as in SCIM).
pub fn is_active(resource: &Value) -> bool {
    resource.get("active").and_then(Value::as_bool).unwrap_or(true)
}

/// The group names a desired account carries.
pub fn groups_of(resource: &Value) -> BTreeSet<String> {
    resource
        .get(GROUPS_KEY)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The resource without the engine's own keys: what is sent to the app.
pub fn app_view(resource: &Value) -> Value {
    let mut r = resource.clone();
    if let Value::Object(m) = &mut r {
        m.remove(GROUPS_KEY);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::{AppInput, Parameter, Rule, UserInput, UserSource};
    use proptest::prelude::*;
    use uuid::Uuid;

    fn user(dept: &str) -> User {
        let input = UserInput {
            username: "ada".into(),
            email: Some("ada@example.com".into()),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            department: Some(dept.into()),
            title: Some("Engineer".into()),
            ..Default::default()
        };
        User::new(input, UserSource::Local, directory::now())
    }

    fn app(params: Option<Value>, rules: Value) -> App {
        let input: AppInput = serde_json::from_value(json!({"name": "Wiki",
            "connection": {"base_url": "https://wiki.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}}}))
        .unwrap();
        let (v, _) = input.validate(None).unwrap();
        let mut a = App::new(v, directory::now());
        a.parameters = params.map(|p| serde_json::from_value::<Vec<Parameter>>(p).unwrap());
        a.rules = serde_json::from_value::<Vec<Rule>>(rules).unwrap();
        a
    }

    #[test]
    fn default_mapping() {
        let u = user("Sales");
        let e = evaluate(&u, &[], &app(None, json!([])), true);
        assert_eq!(e.resource["userName"], "ada");
        assert_eq!(e.resource["name"], json!({"givenName": "Ada", "familyName": "Lovelace"}));
        assert_eq!(e.resource["emails"], json!([{"type": "work", "value": "ada@example.com"}]));
        assert_eq!(e.resource["externalId"], u.id.to_string());
        assert_eq!(e.resource, default_resource(&u, true));
        assert!(e.in_scope);
    }

    #[test]
    fn the_seeds_example_sales_gets_the_group() {
        let rules = json!([{"name": "Sales group", "match": "all",
            "conditions": [{"attribute": "department", "op": "equals", "value": "Sales"}],
            "actions": [{"add_entitlement": {"type": "group", "value": "Sales and Marketing"}}]}]);
        let a = app(None, rules);
        let e = evaluate(&user("Sales"), &[], &a, true);
        assert_eq!(groups_of(&e.resource), BTreeSet::from(["Sales and Marketing".to_owned()]));
        assert_eq!(e.provenance["group:Sales and Marketing"], "rule 'Sales group'");
        assert!(app_view(&e.resource).get(GROUPS_KEY).is_none());
        assert!(groups_of(&evaluate(&user("Engineering"), &[], &a, true).resource).is_empty());
    }

    #[test]
    fn parameters_paths_templates_transforms_and_extensions() {
        let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let params = json!([
            {"app_attribute": "userName", "source": {"template": "{first_name}.{last_name}", "transform": ["lower"]}},
            {"app_attribute": format!("{ent}:department"), "source": {"attribute": "department"}},
            {"app_attribute": "userType", "source": {"constant": "Employee"}, "required": true},
            {"app_attribute": "nickName", "source": {"attribute": "phone", "transform": [{"default": "none"}]}},
            {"app_attribute": "title", "source": {"attribute": "title", "transform": [{"first": 3}, "upper"]}, "only_on_create": true},
            {"app_attribute": "emails[type eq \"home\"].value", "source": {"template": "{{{username}}}"}},
        ]);
        let e = evaluate(&user("Sales"), &[], &app(Some(params), json!([])), true);
        let r = &e.resource;
        assert_eq!(r["userName"], "ada.lovelace");
        assert_eq!(r[ent]["department"], "Sales");
        assert!(r["schemas"].as_array().unwrap().contains(&json!(ent)));
        assert_eq!(
            (r["userType"].as_str(), r["nickName"].as_str(), r["title"].as_str()),
            (Some("Employee"), Some("none"), Some("ENG"))
        );
        assert_eq!(r["emails"], json!([{"type": "home", "value": "{ada}"}]));
        assert_eq!(e.create_only, ["title"]);
        assert_eq!(e.provenance["userName"], "parameter 1 (template {first_name}.{last_name})");
    }

    #[test]
    fn required_empty_values_are_reported() {
        let params = json!([{"app_attribute": "userName", "source": {"attribute": "username"}},
            {"app_attribute": "phoneNumbers[type eq \"work\"].value", "source": {"attribute": "phone"}, "required": true}]);
        let e = evaluate(&user("Sales"), &[], &app(Some(params), json!([])), true);
        assert_eq!(e.missing_required, ["phoneNumbers[type eq \"work\"].value"]);
    }

    #[test]
    fn rules_run_in_order_last_wins_entitlements_accumulate_scoping() {
        let rules = json!([
            {"name": "A", "conditions": [], "actions": [{"set": {"app_attribute": "userType", "value": "A"}},
                {"add_entitlement": {"type": "roles", "value": "reader"}}]},
            {"name": "B", "match": "any", "conditions": [{"attribute": "title", "op": "contains", "value": "ENGIN"},
                {"attribute": "title", "op": "equals", "value": "nope"}],
             "actions": [{"set": {"app_attribute": "userType", "value": "B"}}, {"add_entitlement": {"type": "roles", "value": "writer"}},
                {"add_entitlement": {"type": "roles", "value": "reader"}}]},
            {"name": "Contractors out", "conditions": [{"attribute": "title", "op": "contains", "value": "Contractor"}],
             "actions": [{"do_not_provision": true}]},
            {"name": "Admins", "conditions": [{"op": "member_of", "value": "admins"}], "actions": [{"add_entitlement": {"type": "group", "value": "Admins"}}]},
        ]);
        let a = app(None, rules);
        let roles = [RoleRef { id: Uuid::now_v7(), name: "Admins".into() }];
        let e = evaluate(&user("x"), &roles, &a, true);
        assert_eq!(e.resource["userType"], "B");
        assert_eq!(e.resource["roles"], json!([{"value": "reader"}, {"value": "writer"}]));
        assert_eq!(e.provenance["userType"], "rule 'B'");
        assert_eq!(groups_of(&e.resource).len(), 1);
        assert!(e.in_scope);
        let mut contractor = user("x");
        contractor.title = Some("Contractor".into());
        let e = evaluate(&contractor, &[], &a, true);
        assert!(!e.in_scope);
        assert_eq!(e.provenance["scope"], "rule 'Contractors out'");
    }

    #[test]
    fn operators() {
        let mut u = user("Sales");
        u.attributes.insert("start".into(), json!("2024-03-01"));
        u.attributes.insert("level".into(), json!(7));
        u.attributes.insert("skills".into(), json!(["Rust", "SQL"]));
        let c = |attr: &str, op: &str, value: Value| -> bool {
            let cond: Condition = serde_json::from_value(json!({"attribute": attr, "op": op, "value": value})).unwrap();
            condition_holds(&cond, &u, &[])
        };
        assert!(c("department", "equals", json!("sales")));
        assert!(c("department", "not_equals", json!("HR")));
        assert!(c("email", "ends_with", json!("@EXAMPLE.com")));
        assert!(c("username", "starts_with", json!("a")));
        assert!(c("department", "in", json!(["HR", "Sales"])));
        assert!(c("phone", "is_empty", Value::Null));
        assert!(c("department", "is_not_empty", Value::Null));
        assert!(c("email", "matches", json!("^[a-z]+@")));
        assert!(!c("email", "matches", json!("(unclosed")), "a bad pattern never matches, never panics");
        assert!(c("level", "greater_than", json!(5)) && !c("level", "less_than", json!(5)));
        assert!(c("start", "less_than", json!("2024-12-31")) && c("start", "greater_than", json!("2023-01-01")));
        assert!(!c("department", "greater_than", json!("A")), "text is not ordered");
        assert!(c("skills", "contains", json!("rus")) && c("skills", "equals", json!("sql")));
    }

    #[test]
    fn caches_keyed_by_admin_input_stay_bounded_and_keep_answering() {
        let regexes = || REGEX_CACHE.with(|c| c.borrow().len());
        for i in 0..REGEX_CACHE_CAPACITY * 4 {
            let pattern = format!("^user{i}$");
            assert!(regex_matches(&pattern, &format!("user{i}")), "{pattern}");
            assert!(!regex_matches(&pattern, &format!("user{i}0")), "{pattern}");
            // Patterns that do not compile are remembered too, and still match nothing.
            assert!(!regex_matches(&format!("(unclosed{i}"), &format!("(unclosed{i}")));
            assert!(regexes() <= REGEX_CACHE_CAPACITY, "{} regexes kept", regexes());
        }
        let too_long = "a".repeat(directory::mapping::MAX_REGEX_LEN + 1);
        assert!(!regex_matches(&too_long, &too_long));
        // The newest pattern, cached or compiled again after a clear, answers the same.
        let last = format!("^user{}$", REGEX_CACHE_CAPACITY * 4 - 1);
        assert!(regex_matches(&last, &format!("user{}", REGEX_CACHE_CAPACITY * 4 - 1)));

        let paths = || PATH_CACHE.with(|c| c.borrow().len());
        for i in 0..PATH_CACHE_CAPACITY * 4 {
            for path in [format!("attr{i}.sub"), format!("emails[type eq \"t{i}\"].value"), format!("[bad{i}")] {
                assert_eq!(parse_path(&path), AttrPath::parse(&path), "{path}");
                assert_eq!(parse_path(&path), AttrPath::parse(&path), "{path} (cached)");
            }
            assert!(paths() <= PATH_CACHE_CAPACITY, "{} paths kept", paths());
        }
        assert!(parse_path("attr1.sub").is_some_and(|p| p.attr == "attr1" && p.sub.as_deref() == Some("sub")));
        assert_eq!(parse_path("[bad1"), None);
    }

    proptest! {
        #[test]
        fn templates_never_panic_and_keep_literal_text(t in "[a-z {}._@-]{0,40}") {
            let u = user("Sales");
            let out = render_template(&t, &u);
            if !t.contains('{') && !t.contains('}') {
                prop_assert_eq!(out, t);
            }
        }

        #[test]
        fn transforms_compose(s in "[ a-zA-Z]{0,20}", n in 1usize..10) {
            let v = apply_transforms(Some(json!(s.clone())), &[Transform::Trim, Transform::Upper, Transform::First(n)]);
            let expected: String = s.trim().to_uppercase().chars().take(n).collect();
            prop_assert_eq!(v, if expected.is_empty() { None } else { Some(json!(expected)) });
        }

        #[test]
        fn evaluation_is_deterministic_and_in_order(dept in "[A-Za-z]{1,8}", flip in any::<bool>()) {
            let r1 = json!({"name": "one", "conditions": [{"attribute": "department", "op": "equals", "value": dept.clone()}],
                "actions": [{"set": {"app_attribute": "userType", "value": "one"}}]});
            let r2 = json!({"name": "two", "conditions": [], "actions": [{"set": {"app_attribute": "userType", "value": "two"}}]});
            let rules = if flip { json!([r1, r2]) } else { json!([r2, r1]) };
            let a = app(None, rules);
            let u = user(&dept);
            let e1 = evaluate(&u, &[], &a, true);
            prop_assert_eq!(&e1, &evaluate(&u, &[], &a, true));
            // Both match: the later rule wins.
            prop_assert_eq!(e1.resource["userType"].as_str(), Some(if flip { "two" } else { "one" }));
        }
    }
}
