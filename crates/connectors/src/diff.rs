//! PATCH operations from the difference between two resources.

use scim::PatchOp;
use serde_json::{Map, Value};

/// Keys never sent in a PATCH: server-managed or structural.
const IGNORED: [&str; 3] = ["id", "meta", "schemas"];

fn ignored(key: &str) -> bool {
    IGNORED.iter().any(|k| k.eq_ignore_ascii_case(key))
}

fn is_absent(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

/// Path of sub-attribute `sub` of `attr`: `name.givenName`, or
/// `urn:...:User:employeeNumber` for a schema extension.
fn sub_path(attr: &str, sub: &str) -> String {
    if attr.starts_with("urn:") {
        format!("{attr}:{sub}")
    } else {
        format!("{attr}.{sub}")
    }
}

/// The PATCH turning `previous` into `desired`.
///
/// - Without `previous`: one `replace` per (non-null) top-level attribute.
/// - Changed simple or multi-valued attributes: `replace` of the whole
///   attribute (a replace without filter replaces all values of a
///   multi-valued attribute, RFC 7644 3.5.2.3).
/// - Changed complex attributes and schema extensions: one operation per
///   changed sub-attribute (`name.givenName`, `urn:...:User:department`),
///   because a `replace` of a complex attribute keeps the sub-attributes it
///   does not mention.
/// - Attributes (or sub-attributes) set before and now absent, `null` or `[]`:
///   `remove`.
///
/// `id`, `meta` and `schemas` are ignored.
pub fn patch_from_diff(desired: &Value, previous: Option<&Value>) -> PatchOp {
    let empty = Map::new();
    let want = desired.as_object().unwrap_or(&empty);
    let Some(prev) = previous else {
        return want
            .iter()
            .filter(|(k, v)| !ignored(k) && !is_absent(Some(v)))
            .fold(PatchOp::new(), |op, (k, v)| op.replace(k.clone(), v.clone()));
    };
    let had = prev.as_object().unwrap_or(&empty);
    let mut op = PatchOp::new();
    for (k, v) in want.iter().filter(|(k, _)| !ignored(k)) {
        let before = had.get(k);
        if is_absent(Some(v)) {
            if !is_absent(before) {
                op = op.remove(k.clone());
            }
            continue;
        }
        if before == Some(v) {
            continue;
        }
        match (v, before) {
            (Value::Object(new_sub), Some(Value::Object(old_sub))) => {
                for (s, sv) in new_sub {
                    let old = old_sub.get(s);
                    if is_absent(Some(sv)) {
                        if !is_absent(old) {
                            op = op.remove(sub_path(k, s));
                        }
                    } else if old != Some(sv) {
                        op = op.replace(sub_path(k, s), sv.clone());
                    }
                }
                for (s, sv) in old_sub {
                    if !new_sub.contains_key(s) && !is_absent(Some(sv)) {
                        op = op.remove(sub_path(k, s));
                    }
                }
            }
            _ => op = op.replace(k.clone(), v.clone()),
        }
    }
    for (k, v) in had.iter().filter(|(k, _)| !ignored(k)) {
        if !want.contains_key(k) && !is_absent(Some(v)) {
            op = op.remove(k.clone());
        }
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;
    use scim::{PatchOpKind, PatchOperation};
    use serde_json::json;

    fn ops(op: &PatchOp) -> Vec<(PatchOpKind, String, Option<Value>)> {
        op.operations
            .iter()
            .map(|PatchOperation { op, path, value }| (*op, path.clone().unwrap_or_default(), value.clone()))
            .collect()
    }

    #[test]
    fn without_previous_replaces_every_attribute() {
        let desired = json!({"schemas":["x"],"id":"1","userName":"bj","active":true,"nickName":null,
            "name":{"givenName":"B"}});
        let op = patch_from_diff(&desired, None);
        let mut got = ops(&op);
        got.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            got,
            vec![
                (PatchOpKind::Replace, "active".into(), Some(json!(true))),
                (PatchOpKind::Replace, "name".into(), Some(json!({"givenName":"B"}))),
                (PatchOpKind::Replace, "userName".into(), Some(json!("bj"))),
            ]
        );
    }

    #[test]
    fn identical_resources_give_no_operation() {
        let v = json!({"userName":"bj","name":{"givenName":"B"},"emails":[{"value":"a@b"}]});
        let mut with_meta = v.clone();
        with_meta["meta"] = json!({"version":"W/\"2\""});
        with_meta["id"] = json!("42");
        assert!(patch_from_diff(&v, Some(&with_meta)).is_empty());
    }

    #[test]
    fn changes_removals_and_sub_attributes() {
        let previous = json!({
            "userName":"bj","title":"Dev","nickName":"b","active":true,
            "name":{"givenName":"Barbara","familyName":"Jensen","middleName":"J"},
            "emails":[{"value":"old@x"}],
            "phoneNumbers":[{"value":"1"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
                {"department":"R&D","employeeNumber":"7"}
        });
        let desired = json!({
            "userName":"bj","title":"CTO","nickName":null,"active":false,
            "name":{"givenName":"Babs","familyName":"Jensen"},
            "emails":[{"value":"new@x"}],
            "phoneNumbers":[],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
                {"department":"Exec","employeeNumber":"7"},
            "displayName":"Babs Jensen"
        });
        let got = ops(&patch_from_diff(&desired, Some(&previous)));
        let expect = |k: PatchOpKind, p: &str, v: Option<Value>| {
            assert!(got.contains(&(k, p.to_string(), v.clone())), "missing {k:?} {p} {v:?} in {got:?}")
        };
        expect(PatchOpKind::Replace, "title", Some(json!("CTO")));
        expect(PatchOpKind::Remove, "nickName", None);
        expect(PatchOpKind::Replace, "active", Some(json!(false)));
        expect(PatchOpKind::Replace, "name.givenName", Some(json!("Babs")));
        expect(PatchOpKind::Remove, "name.middleName", None);
        expect(PatchOpKind::Replace, "emails", Some(json!([{"value":"new@x"}])));
        expect(PatchOpKind::Remove, "phoneNumbers", None);
        expect(
            PatchOpKind::Replace,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
            Some(json!("Exec")),
        );
        expect(PatchOpKind::Replace, "displayName", Some(json!("Babs Jensen")));
        assert_eq!(got.len(), 9, "{got:?}");
    }

    #[test]
    fn attributes_dropped_from_desired_are_removed() {
        let previous = json!({"userName":"bj","title":"Dev","id":"1"});
        let desired = json!({"userName":"bj"});
        assert_eq!(
            ops(&patch_from_diff(&desired, Some(&previous))),
            vec![(PatchOpKind::Remove, "title".to_string(), None)]
        );
    }
}
