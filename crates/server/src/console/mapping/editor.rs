//! What the mapping editors share: the editor's commands and where focus goes after one, list
//! operations, field errors placed next to their field, the source of a value (attribute,
//! constant or template, with transforms), and what a failed save or preview means.

use directory::mapping::known_attribute;
use directory::{FieldError, Source, Transform};
use serde_json::Value;
use uuid::Uuid;

use crate::console::view::{self, Choice, FormData};
use crate::console::Result;
use crate::{AppState, Error};

pub(super) async fn tested(state: &AppState, app: Uuid) -> Result<bool> {
    Ok(state.service.store().get_app_capabilities(app).await?.is_some())
}

/// "Name is required", "Template: `x` is not a directory attribute".
fn say(label: &str, reason: &str) -> String {
    let verb = ["is ", "must ", "has ", "needs ", "at most "].iter().any(|v| reason.starts_with(v));
    if verb {
        format!("{label} {reason}")
    } else {
        format!("{label}: {reason}")
    }
}

/// Takes out of `errors` those about `field` (and, with `nested`, about what is under it).
pub(super) fn take(errors: &mut Vec<FieldError>, field: &str, nested: bool, label: &str) -> Option<String> {
    let mut found = Vec::new();
    errors.retain(|e| {
        let hit = e.field == field
            || (nested && (e.field.starts_with(&format!("{field}.")) || e.field.starts_with(&format!("{field}["))));
        if hit {
            found.push(say(label, &e.reason));
        }
        !hit
    });
    if found.is_empty() {
        None
    } else {
        Some(found.join("; "))
    }
}

/// What is left: shown on top of the editor.
pub(super) fn leftovers(errors: Vec<FieldError>) -> Vec<String> {
    errors.into_iter().map(|e| say(&format!("`{}`", e.field), &e.reason)).collect()
}

/// The editor's command: `save`, `preview`, or `{what}:{verb}:{i}[:{j}]`.
pub(super) struct Command {
    pub(super) what: String,
    pub(super) verb: String,
    pub(super) i: Option<usize>,
    pub(super) j: Option<usize>,
}

impl Command {
    pub(super) fn parse(op: &str) -> Self {
        let mut parts = op.split(':');
        let what = parts.next().unwrap_or("").to_owned();
        let verb = parts.next().unwrap_or("").to_owned();
        let i = parts.next().and_then(|n| n.parse().ok());
        let j = parts.next().and_then(|n| n.parse().ok());
        Self { what, verb, i, j }
    }
}

/// Where keyboard focus goes after an editor command re-rendered the page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Focus {
    #[default]
    None,
    /// The item's first control.
    First,
    Up,
    Down,
}

impl Focus {
    pub(super) fn is(&self, what: &str) -> bool {
        matches!((self, what), (Focus::First, "first") | (Focus::Up, "up") | (Focus::Down, "down"))
    }
}

/// Adds, moves or removes an item of a list; returns the index of the item to focus.
pub(super) fn list_op<T>(
    items: &mut Vec<T>,
    verb: &str,
    i: Option<usize>,
    new: impl FnOnce() -> T,
) -> Option<(usize, Focus)> {
    match (verb, i) {
        ("add", _) if items.len() < 500 => {
            items.push(new());
            Some((items.len() - 1, Focus::First))
        }
        ("up", Some(i)) if i > 0 && i < items.len() => {
            items.swap(i, i - 1);
            Some((i - 1, if i - 1 == 0 { Focus::Down } else { Focus::Up }))
        }
        ("down", Some(i)) if i + 1 < items.len() => {
            items.swap(i, i + 1);
            Some((i + 1, if i + 2 == items.len() { Focus::Up } else { Focus::Down }))
        }
        ("remove", Some(i)) if i < items.len() => {
            items.remove(i);
            None
        }
        _ => None,
    }
}

// ---- sources and transforms ----

fn transforms_text(t: &[Transform]) -> String {
    t.iter()
        .map(|t| match t {
            Transform::Lower => "lower".to_owned(),
            Transform::Upper => "upper".to_owned(),
            Transform::Trim => "trim".to_owned(),
            Transform::Default(d) => format!("default({d})"),
            Transform::First(n) => format!("first({n})"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `lower, trim, default(n/a), first(8)`: commas inside parentheses belong to the value.
fn parse_transforms(text: &str) -> std::result::Result<Vec<Transform>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0usize, String::new());
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    let mut out = Vec::new();
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let lower = p.to_lowercase();
        let t = match lower.as_str() {
            "lower" => Transform::Lower,
            "upper" => Transform::Upper,
            "trim" => Transform::Trim,
            _ if lower.starts_with("default(") && p.ends_with(')') => {
                Transform::Default(p["default(".len()..p.len() - 1].to_owned())
            }
            _ if lower.starts_with("first(") && p.ends_with(')') => {
                match p["first(".len()..p.len() - 1].trim().parse::<usize>() {
                    Ok(n) if n > 0 => Transform::First(n),
                    _ => return Err(format!("`{p}` needs a number of characters of at least 1, e.g. first(8)")),
                }
            }
            _ => return Err(format!("`{p}` is not one of lower, upper, trim, default(text), first(N)")),
        };
        out.push(t);
    }
    Ok(out)
}

/// The directory attributes offered in selects: standard ones, then declared custom ones.
pub(super) async fn attribute_names(state: &AppState) -> Result<Vec<(String, String)>> {
    const ORDER: [&str; 14] = [
        "username",
        "email",
        "first_name",
        "last_name",
        "display_name",
        "title",
        "department",
        "phone",
        "employee_number",
        "manager_id",
        "id",
        "status",
        "created_at",
        "updated_at",
    ];
    /// Profile attributes and the values IdPs and directories most often fill.
    const PROFILE: [&str; 20] = [
        "middle_name",
        "nick_name",
        "preferred_language",
        "locale",
        "timezone",
        "user_type",
        "cost_center",
        "organization",
        "division",
        "emails[type eq \"home\"].value",
        "phone_numbers[type eq \"work\"].value",
        "phone_numbers[type eq \"mobile\"].value",
        "phone_numbers[type eq \"fax\"].value",
        "addresses[type eq \"work\"].formatted",
        "addresses[type eq \"work\"].street_address",
        "addresses[type eq \"work\"].locality",
        "addresses[type eq \"work\"].region",
        "addresses[type eq \"work\"].postal_code",
        "addresses[type eq \"work\"].country",
        "entitlements",
    ];
    let mut out: Vec<(String, String)> = ORDER
        .iter()
        .chain(PROFILE.iter())
        .filter(|n| known_attribute(n, &[]))
        .map(|n| ((*n).to_owned(), (*n).to_owned()))
        .collect();
    for d in state.service.list_attributes().await? {
        out.push((d.name.clone(), format!("{} (custom)", d.name)));
    }
    Ok(out)
}

pub(super) fn attribute_choices(names: &[(String, String)], current: &str) -> Vec<Choice> {
    let mut out: Vec<Choice> = names.iter().map(|(v, l)| Choice::new(v, l, current)).collect();
    if !current.is_empty() && !names.iter().any(|(v, _)| v == current) {
        out.push(Choice::new(current, format!("{current} (unknown)"), current));
    }
    out
}

/// A source as the editor shows it.
#[derive(Debug, Clone, Default)]
pub(super) struct SourceForm {
    /// `attribute`, `constant` or `template`.
    pub(super) kind: String,
    pub(super) attribute: String,
    pub(super) constant: String,
    /// The constant is JSON (a number, `true`...) rather than text.
    pub(super) json: bool,
    pub(super) template: String,
    pub(super) transform: String,
    pub(super) e_kind: Option<String>,
    pub(super) e_attribute: Option<String>,
    pub(super) e_constant: Option<String>,
    pub(super) e_template: Option<String>,
    pub(super) e_transform: Option<String>,
    pub(super) attributes: Vec<Choice>,
}

impl SourceForm {
    pub(super) fn of(s: &Source) -> Self {
        let mut f = Self { transform: transforms_text(&s.transform), ..Default::default() };
        if let Some(a) = &s.attribute {
            f.kind = "attribute".into();
            f.attribute = a.clone();
        } else if let Some(t) = &s.template {
            f.kind = "template".into();
            f.template = t.clone();
        } else if let Some(c) = &s.constant {
            f.kind = "constant".into();
            f.set_constant(c);
        } else {
            f.kind = "attribute".into();
        }
        f
    }

    pub(super) fn set_constant(&mut self, c: &Value) {
        match c {
            Value::String(s) => self.constant = s.clone(),
            other => {
                self.constant = other.to_string();
                self.json = true;
            }
        }
    }

    pub(super) fn read(form: &FormData, at: &str) -> Self {
        let kind = form.text(&format!("{at}.kind"));
        Self {
            kind: if ["attribute", "constant", "template"].contains(&kind.as_str()) {
                kind
            } else {
                "attribute".into()
            },
            attribute: form.text(&format!("{at}.attribute")),
            constant: form.text(&format!("{at}.constant")),
            json: form.get(&format!("{at}.json")) == Some("1"),
            template: form.text(&format!("{at}.template")),
            transform: form.text(&format!("{at}.transform")),
            ..Default::default()
        }
    }

    pub(super) fn constant_value(&self, field: &str, errors: &mut Vec<FieldError>) -> Value {
        if self.json {
            serde_json::from_str(&self.constant).unwrap_or_else(|_| {
                errors.push(FieldError::new(format!("{field}.constant"), "is not a valid JSON value"));
                Value::Null
            })
        } else {
            Value::String(self.constant.clone())
        }
    }

    /// The source, or problems found before asking the service (as `field.…`).
    pub(super) fn to_source(&self, field: &str, errors: &mut Vec<FieldError>) -> Source {
        let transform = parse_transforms(&self.transform).unwrap_or_else(|e| {
            errors.push(FieldError::new(format!("{field}.transform"), e));
            vec![]
        });
        let mut s = Source { transform, ..Default::default() };
        match self.kind.as_str() {
            "constant" => s.constant = Some(self.constant_value(field, errors)),
            "template" => {
                if self.template.is_empty() {
                    errors.push(FieldError::new(format!("{field}.template"), "is required"));
                }
                s.template = Some(self.template.clone());
            }
            _ => {
                if self.attribute.is_empty() {
                    errors.push(FieldError::new(format!("{field}.attribute"), "is required"));
                }
                s.attribute = Some(self.attribute.clone());
            }
        }
        s
    }

    pub(super) fn take_errors(&mut self, errors: &mut Vec<FieldError>, field: &str) {
        self.e_attribute = take(errors, &format!("{field}.attribute"), true, "Attribute");
        self.e_constant = take(errors, &format!("{field}.constant"), true, "Value");
        self.e_template = take(errors, &format!("{field}.template"), true, "Template");
        self.e_transform = take(errors, &format!("{field}.transform"), true, "Transforms");
        self.e_kind = take(errors, field, true, "Source");
    }

    pub(super) fn kind_choices(&self) -> Vec<Choice> {
        vec![
            Choice::new("attribute", "Attribute", &self.kind),
            Choice::new("constant", "Constant", &self.kind),
            Choice::new("template", "Template", &self.kind),
        ]
    }
}

/// What a failed save or preview means for the editor: field errors, a concurrent change,
/// or a real error.
pub(super) enum Outcome {
    Errors(Vec<FieldError>),
    Changed(i64),
}

pub(super) fn outcome(e: Error) -> Result<Outcome> {
    match e {
        Error::PreconditionFailed { current } => Ok(Outcome::Changed(current)),
        other => Ok(Outcome::Errors(view::field_errors(other)?.0)),
    }
}

pub(super) fn changed_message(current: i64, what: &str) -> String {
    format!(
        "Not saved: someone changed this app while you were editing (it is now at version {current}). \
         Your edits are still below; open the {what} tab again to see the current state, then redo them."
    )
}
