//! An app's Rules tab: the ordered rule editor (conditions, then actions: add an entitlement,
//! set an app attribute, do not provision), with "Preview" and "Save".

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use directory::{App, Condition, EntitlementRef, FieldError, Match, Op, Rule, RuleAction, SetAttribute};
use serde_json::Value;
use store::{NameQuery, PageRequest};
use uuid::Uuid;

use super::editor::{
    attribute_choices, attribute_names, changed_message, leftovers, list_op, outcome, take, tested, Command, Focus,
    Outcome, SourceForm,
};
use super::preview::{display, preview_view, PreviewView};
use crate::console::apps;
use crate::console::auth::Session;
use crate::console::view::{self, Choice, FormData, Layout};
use crate::console::Result;
use crate::AppState;

const OPS: [(&str, &str); 12] = [
    ("equals", "equals"),
    ("not_equals", "does not equal"),
    ("contains", "contains"),
    ("starts_with", "starts with"),
    ("ends_with", "ends with"),
    ("in", "is one of (comma-separated)"),
    ("is_empty", "is empty"),
    ("is_not_empty", "is not empty"),
    ("matches", "matches the regular expression"),
    ("greater_than", "is greater than (number or date)"),
    ("less_than", "is less than (number or date)"),
    ("member_of", "is a member of the role"),
];

fn op_name(op: Op) -> String {
    match serde_json::to_value(op) {
        Ok(Value::String(s)) => s,
        _ => "equals".to_owned(),
    }
}

#[derive(Debug, Clone, Default)]
struct CondForm {
    attribute: String,
    op: String,
    value: String,
    role: String,
    e_attribute: Option<String>,
    e_value: Option<String>,
    e_other: Option<String>,
    focus: Focus,
    attributes: Vec<Choice>,
    ops: Vec<Choice>,
    roles: Vec<Choice>,
}

impl CondForm {
    fn of(c: &Condition) -> Self {
        let op = op_name(c.op);
        let text = match &c.value {
            Some(Value::Array(items)) => items.iter().map(display).collect::<Vec<_>>().join(", "),
            Some(v) => display(v),
            None => String::new(),
        };
        let (value, role) = if c.op == Op::MemberOf { (String::new(), text) } else { (text, String::new()) };
        Self { attribute: c.attribute.clone().unwrap_or_default(), op, value, role, ..Default::default() }
    }

    fn new_row() -> Self {
        Self { attribute: "department".into(), op: "equals".into(), ..Default::default() }
    }

    fn read(form: &FormData, at: &str) -> Self {
        Self {
            attribute: form.text(&format!("{at}.attribute")),
            op: form.text(&format!("{at}.op")),
            value: form.text(&format!("{at}.value")),
            role: form.text(&format!("{at}.role")),
            ..Default::default()
        }
    }

    fn to_condition(&self, field: &str, errors: &mut Vec<FieldError>) -> Option<Condition> {
        let Ok(op) = serde_json::from_value::<Op>(Value::String(self.op.clone())) else {
            errors.push(FieldError::new(format!("{field}.op"), "is not a known operator"));
            return None;
        };
        let attribute = Some(self.attribute.clone()).filter(|a| !a.is_empty());
        let c = match op {
            Op::MemberOf => {
                if self.role.is_empty() {
                    errors.push(FieldError::new(format!("{field}.value"), "needs a role"));
                }
                Condition { attribute: None, op, value: Some(Value::String(self.role.clone())) }
            }
            Op::IsEmpty | Op::IsNotEmpty => Condition { attribute, op, value: None },
            Op::In => {
                let items: Vec<Value> = self
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| Value::String(v.to_owned()))
                    .collect();
                if items.is_empty() {
                    errors.push(FieldError::new(format!("{field}.value"), "needs at least one value"));
                }
                Condition { attribute, op, value: Some(Value::Array(items)) }
            }
            _ => Condition { attribute, op, value: Some(Value::String(self.value.clone())) },
        };
        Some(c)
    }
}

#[derive(Debug, Clone, Default)]
struct ActionForm {
    /// `add_entitlement`, `set` or `do_not_provision`.
    kind: String,
    path: String,
    set: SourceForm,
    /// `group` or `attribute`.
    ent_type: String,
    ent_attribute: String,
    ent_value: String,
    /// `do_not_provision: false` (a no-op) is kept as it was.
    provision_false: bool,
    e_kind: Option<String>,
    e_path: Option<String>,
    e_ent_type: Option<String>,
    e_ent_value: Option<String>,
    focus: Focus,
}

impl ActionForm {
    fn of(a: &RuleAction) -> Self {
        let mut f = Self {
            ent_type: "group".into(),
            set: SourceForm { kind: "constant".into(), ..Default::default() },
            ..Default::default()
        };
        match a {
            RuleAction::Set(s) => {
                f.kind = "set".into();
                f.path = s.app_attribute.clone();
                match (&s.value, &s.source) {
                    (Some(v), _) => f.set.set_constant(v),
                    (None, Some(src)) => f.set = SourceForm::of(src),
                    (None, None) => {}
                }
            }
            RuleAction::AddEntitlement(e) => {
                f.kind = "add_entitlement".into();
                if e.kind != "group" {
                    f.ent_type = "attribute".into();
                    f.ent_attribute = e.kind.clone();
                }
                f.ent_value = e.value.clone();
            }
            RuleAction::DoNotProvision(yes) => {
                f.kind = "do_not_provision".into();
                f.provision_false = !*yes;
            }
        }
        f
    }

    fn new_row() -> Self {
        Self {
            kind: "add_entitlement".into(),
            ent_type: "group".into(),
            set: SourceForm { kind: "constant".into(), ..Default::default() },
            ..Default::default()
        }
    }

    fn read(form: &FormData, at: &str) -> Self {
        let kind = form.text(&format!("{at}.kind"));
        Self {
            kind: if ["set", "add_entitlement", "do_not_provision"].contains(&kind.as_str()) {
                kind
            } else {
                "add_entitlement".into()
            },
            path: form.text(&format!("{at}.path")),
            set: SourceForm::read(form, &format!("{at}.set")),
            ent_type: if form.text(&format!("{at}.ent_type")) == "attribute" {
                "attribute".into()
            } else {
                "group".into()
            },
            ent_attribute: form.text(&format!("{at}.ent_attribute")),
            ent_value: form.text(&format!("{at}.ent_value")),
            provision_false: form.get(&format!("{at}.provision_false")) == Some("1"),
            ..Default::default()
        }
    }

    fn to_action(&self, field: &str, errors: &mut Vec<FieldError>) -> RuleAction {
        match self.kind.as_str() {
            "set" => {
                let at = format!("{field}.set");
                let (value, source) = if self.set.kind == "constant" && self.set.transform.is_empty() {
                    (Some(self.set.constant_value(&format!("{at}.source"), errors)), None)
                } else {
                    (None, Some(self.set.to_source(&format!("{at}.source"), errors)))
                };
                RuleAction::Set(SetAttribute { app_attribute: self.path.clone(), value, source })
            }
            "do_not_provision" => RuleAction::DoNotProvision(!self.provision_false),
            _ => {
                let kind = if self.ent_type == "group" { "group".to_owned() } else { self.ent_attribute.clone() };
                RuleAction::AddEntitlement(EntitlementRef { kind, value: self.ent_value.clone() })
            }
        }
    }

    /// Errors about the value of a "set" action, and about the action as a whole.
    fn set_errors(&self) -> Vec<String> {
        let s = &self.set;
        [&s.e_kind, &s.e_attribute, &s.e_constant, &s.e_template, &s.e_transform, &self.e_kind]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn kinds(&self) -> Vec<Choice> {
        vec![
            Choice::new("add_entitlement", "Add an entitlement", &self.kind),
            Choice::new("set", "Set an app attribute", &self.kind),
            Choice::new("do_not_provision", "Do not provision (out of scope)", &self.kind),
        ]
    }

    fn set_kinds(&self) -> Vec<Choice> {
        vec![
            Choice::new("constant", "to the value", &self.set.kind),
            Choice::new("template", "to the template", &self.set.kind),
            Choice::new("attribute", "to the directory attribute", &self.set.kind),
        ]
    }

    fn ent_types(&self) -> Vec<Choice> {
        vec![
            Choice::new("group", "Group", &self.ent_type),
            Choice::new("attribute", "Value of a multi-valued attribute", &self.ent_type),
        ]
    }
}

#[derive(Debug, Clone, Default)]
struct RuleForm {
    name: String,
    any: bool,
    conditions: Vec<CondForm>,
    actions: Vec<ActionForm>,
    e_name: Option<String>,
    e_conditions: Option<String>,
    e_actions: Option<String>,
    e_other: Option<String>,
    focus: Focus,
}

impl RuleForm {
    fn of(r: &Rule) -> Self {
        Self {
            name: r.name.clone(),
            any: r.match_ == Match::Any,
            conditions: r.conditions.iter().map(CondForm::of).collect(),
            actions: r.actions.iter().map(ActionForm::of).collect(),
            ..Default::default()
        }
    }

    fn new_rule() -> Self {
        Self { conditions: vec![CondForm::new_row()], actions: vec![ActionForm::new_row()], ..Default::default() }
    }

    fn read(form: &FormData, i: usize) -> Self {
        let at = format!("r{i}");
        let conditions = (0..200)
            .take_while(|j| form.get(&format!("{at}.c{j}.op")).is_some())
            .map(|j| CondForm::read(form, &format!("{at}.c{j}")))
            .collect();
        let actions = (0..200)
            .take_while(|k| form.get(&format!("{at}.a{k}.kind")).is_some())
            .map(|k| ActionForm::read(form, &format!("{at}.a{k}")))
            .collect();
        Self {
            name: form.text(&format!("{at}.name")),
            any: form.get(&format!("{at}.match")) == Some("any"),
            conditions,
            actions,
            ..Default::default()
        }
    }
}

#[derive(Template)]
#[template(path = "app_rules.html")]
struct RulesPage {
    layout: Layout,
    app: App,
    tab: &'static str,
    status: apps::AppStatus,
    version: i64,
    rules: Vec<RuleForm>,
    groups: Vec<String>,
    errors: Vec<String>,
    changed: Option<String>,
    preview: Option<PreviewView>,
}

async fn rules_page(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    app: App,
    version: i64,
    mut rules: Vec<RuleForm>,
) -> Result<RulesPage> {
    let names = attribute_names(state).await?;
    let roles = state
        .service
        .list_roles(&NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor: None } })
        .await?
        .items;
    for r in &mut rules {
        for c in &mut r.conditions {
            c.attributes = attribute_choices(&names, &c.attribute);
            c.ops = OPS.iter().map(|(v, l)| Choice::new(*v, *l, &c.op)).collect();
            c.roles = vec![Choice::new("", "Choose a role", &c.role)];
            c.roles.extend(roles.iter().map(|role| Choice::new(&role.name, &role.name, &c.role)));
            if !c.role.is_empty() && !roles.iter().any(|role| role.name == c.role) {
                c.roles.push(Choice::new(&c.role, format!("{} (unknown)", c.role), &c.role));
            }
        }
        for a in &mut r.actions {
            a.set.attributes = attribute_choices(&names, &a.set.attribute);
        }
    }
    let (_, page) = state.service.entitlements(app.id, &PageRequest { limit: store::MAX_PAGE, cursor: None }).await?;
    let groups = page.items.into_iter().filter(|e| e.kind == "group").map(|e| e.display_name).collect();
    let layout = Layout::new(session, headers, "apps", format!("{} · Rules", app.name));
    Ok(RulesPage {
        layout,
        tab: "rules",
        status: apps::app_status(state, app.id, tested(state, app.id).await?).await?,
        version,
        rules,
        groups,
        errors: vec![],
        changed: None,
        preview: None,
        app,
    })
}

pub(super) async fn rules_tab(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response> {
    let (rules, version) = state.service.rules(id).await?;
    let app = state.service.get_app(id).await?;
    let rules = rules.iter().map(RuleForm::of).collect();
    view::page(&rules_page(&state, &session, &headers, app, version, rules).await?, StatusCode::OK)
}

fn to_rules(forms: &[RuleForm], errors: &mut Vec<FieldError>) -> Vec<Rule> {
    forms
        .iter()
        .enumerate()
        .map(|(i, r)| Rule {
            name: r.name.clone(),
            match_: if r.any { Match::Any } else { Match::All },
            conditions: r
                .conditions
                .iter()
                .enumerate()
                .filter_map(|(j, c)| c.to_condition(&format!("rules[{i}].conditions[{j}]"), errors))
                .collect(),
            actions: r
                .actions
                .iter()
                .enumerate()
                .map(|(k, a)| a.to_action(&format!("rules[{i}].actions[{k}]"), errors))
                .collect(),
        })
        .collect()
}

fn apply_rule_command(rules: &mut Vec<RuleForm>, cmd: &Command) {
    match cmd.what.as_str() {
        "rule" => {
            if let Some((i, focus)) = list_op(rules, &cmd.verb, cmd.i, RuleForm::new_rule) {
                rules[i].focus = focus;
            }
        }
        "cond" => {
            if let Some(r) = cmd.i.and_then(|i| rules.get_mut(i)) {
                let j = if cmd.verb == "add" { None } else { cmd.j };
                if let Some((j, focus)) = list_op(&mut r.conditions, &cmd.verb, j, CondForm::new_row) {
                    r.conditions[j].focus = focus;
                }
            }
        }
        "act" => {
            if let Some(r) = cmd.i.and_then(|i| rules.get_mut(i)) {
                let k = if cmd.verb == "add" { None } else { cmd.j };
                if let Some((k, focus)) = list_op(&mut r.actions, &cmd.verb, k, ActionForm::new_row) {
                    r.actions[k].focus = focus;
                }
            }
        }
        _ => {}
    }
}

pub(super) async fn post_rules(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Response> {
    let form = FormData::parse(&body);
    let app = state.service.get_app(id).await?;
    let version = form.get("version").and_then(|v| v.parse::<i64>().ok()).unwrap_or(app.version);
    let mut forms: Vec<RuleForm> =
        (0..500).take_while(|i| form.get(&format!("r{i}.name")).is_some()).map(|i| RuleForm::read(&form, i)).collect();
    let cmd = Command::parse(form.get("op").unwrap_or("preview"));
    if ["rule", "cond", "act"].contains(&cmd.what.as_str()) {
        apply_rule_command(&mut forms, &cmd);
        let page = rules_page(&state, &session, &headers, app, version, forms).await?;
        return view::page(&page, StatusCode::OK);
    }
    let mut local = Vec::new();
    let rules = to_rules(&forms, &mut local);
    let result = if !local.is_empty() {
        Err(Outcome::Errors(local))
    } else if cmd.what == "save" {
        match state.service.put_mapping(&session.actor(), id, None, Some(rules), Some(version)).await {
            Ok(_) => return Ok(view::see_other_with(
                &format!("/console/apps/{id}/rules"),
                "ok",
                "Rules saved. Every user the app concerns is re-evaluated; only real differences are sent to the app.",
            )),
            Err(e) => Err(outcome(e)?),
        }
    } else {
        match state.service.plan_preview(id, None, Some(rules), None).await {
            Ok(p) => Ok(preview_view(p)),
            Err(e) => Err(outcome(e)?),
        }
    };
    let mut status = StatusCode::OK;
    let (mut preview, mut errors, mut changed) = (None, vec![], None);
    match result {
        Ok(p) => preview = Some(p),
        Err(Outcome::Errors(e)) => {
            status = StatusCode::UNPROCESSABLE_ENTITY;
            errors = e;
        }
        Err(Outcome::Changed(current)) => {
            status = StatusCode::PRECONDITION_FAILED;
            changed = Some(changed_message(current, "Rules"));
        }
    }
    for (i, r) in forms.iter_mut().enumerate() {
        let at = format!("rules[{i}]");
        r.e_name = take(&mut errors, &format!("{at}.name"), true, "Name");
        for (j, c) in r.conditions.iter_mut().enumerate() {
            let cat = format!("{at}.conditions[{j}]");
            c.e_attribute = take(&mut errors, &format!("{cat}.attribute"), true, "Attribute");
            c.e_value = take(&mut errors, &format!("{cat}.value"), true, "Value");
            c.e_other = take(&mut errors, &cat, true, "Condition");
        }
        r.e_conditions = take(&mut errors, &format!("{at}.conditions"), false, "Conditions");
        for (k, a) in r.actions.iter_mut().enumerate() {
            let aat = format!("{at}.actions[{k}]");
            a.e_path = take(&mut errors, &format!("{aat}.set.app_attribute"), true, "App attribute");
            a.set.take_errors(&mut errors, &format!("{aat}.set.source"));
            a.e_ent_type = take(&mut errors, &format!("{aat}.add_entitlement.type"), true, "Type");
            a.e_ent_value = take(&mut errors, &format!("{aat}.add_entitlement"), true, "Entitlement");
            a.e_kind = take(&mut errors, &aat, true, "Action");
        }
        r.e_actions = take(&mut errors, &format!("{at}.actions"), false, "Actions");
        r.e_other = take(&mut errors, &at, true, "Rule");
    }
    let mut page = rules_page(&state, &session, &headers, app, version, forms).await?;
    page.errors = leftovers(errors);
    page.changed = changed;
    page.preview = preview;
    view::page(&page, status)
}

view::pages!(RulesPage);
