//! The plan of an editor's change as shown ("Preview"): counts, and the sample of affected
//! users with what changes for each, in the words of parameters.

use std::collections::BTreeMap;

use serde_json::Value;
use uuid::Uuid;

use crate::console::view;

/// A plan preview as shown: counts and the sample of affected users.
pub(super) struct PreviewView {
    pub(super) create: u64,
    pub(super) update: u64,
    pub(super) deprovision: u64,
    pub(super) group_add: u64,
    pub(super) group_remove: u64,
    pub(super) invalid: u64,
    pub(super) samples: Vec<SampleView>,
}

impl PreviewView {
    pub(super) fn nothing(&self) -> bool {
        self.create + self.update + self.deprovision + self.invalid == 0
    }
}

pub(super) struct SampleView {
    pub(super) user_id: Uuid,
    pub(super) username: String,
    pub(super) action: &'static str,
    pub(super) reason: String,
    /// (value, before, after) of what changes.
    pub(super) changes: Vec<(String, String, String)>,
}

pub(super) fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A resource as (attribute path, value) pairs, in the words of parameters:
/// `name.givenName`, `emails[type eq "work"].value`, `urn:…:User:department`, Groups.
fn flatten(v: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else if prefix.starts_with("urn:") && !prefix.contains('.') && !prefix.contains('[') {
                        format!("{prefix}:{k}")
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, child, out);
                }
            }
            Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.get("type").and_then(Value::as_str).is_some()) =>
            {
                for item in items {
                    let t = item.get("type").and_then(Value::as_str).unwrap_or("");
                    let mut rest = item.clone();
                    if let Value::Object(m) = &mut rest {
                        m.remove("type");
                    }
                    walk(&format!("{prefix}[type eq \"{t}\"]"), &rest, out);
                }
            }
            Value::Array(items) if items.iter().all(|i| i.get("value").is_some()) => {
                let values: Vec<String> = items.iter().filter_map(|i| i.get("value")).map(display).collect();
                out.insert(prefix.to_owned(), values.join(", "));
            }
            other => {
                out.insert(prefix.to_owned(), display(other));
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Value::Object(m) = v {
        for (k, child) in m {
            match k.as_str() {
                "schemas" => {}
                engine::mapping::GROUPS_KEY => {
                    out.insert("Groups".to_owned(), display(child));
                }
                _ => walk(k, child, &mut out),
            }
        }
    }
    out
}

fn changes(before: Option<&Value>, after: Option<&Value>) -> Vec<(String, String, String)> {
    let b = before.map(flatten).unwrap_or_default();
    let a = after.map(flatten).unwrap_or_default();
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| ((*k).clone(), b.get(k).cloned().unwrap_or_default(), a.get(k).cloned().unwrap_or_default()))
        .collect()
}

pub(super) fn preview_view(p: engine::PlanPreview) -> PreviewView {
    let samples = p
        .sample
        .iter()
        .map(|s| SampleView {
            user_id: s.user_id,
            username: s.username.clone(),
            action: s.action.map_or("Invalid", view::action_label),
            reason: s.reason.clone().unwrap_or_default(),
            changes: if s.reason.is_some() { vec![] } else { changes(s.before.as_ref(), s.after.as_ref()) },
        })
        .collect();
    PreviewView {
        create: p.create,
        update: p.update,
        deprovision: p.deprovision,
        group_add: p.group_add,
        group_remove: p.group_remove,
        invalid: p.invalid,
        samples,
    }
}
