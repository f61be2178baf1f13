//! Full reconciliation of one app: read every account the app has, page by page, compare
//! with what each user should have, correct the records where the app drifted, and queue
//! only the differences. Accounts in the app with no counterpart here are left alone.

use std::collections::{BTreeSet, HashMap};

use connectors::PageRequest;
use directory::Ownership;
use serde_json::{Map, Value};
use store::{AccountWrite, PlanItem, PlanWrite};
use uuid::Uuid;

use crate::mapping::{app_view, set_path, GROUPS_KEY};
use crate::guard::{Causes, Guard, Why};
use crate::plan::{intent, Intent};
use crate::runner::{plan_guarded, Engine, EngineError, ReconcileReport};

/// Case-insensitive attribute lookup (SCIM attribute names are case-insensitive).
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

fn absent(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null)) || matches!(v, Some(Value::Array(a)) if a.is_empty())
}

/// Whether `actual` carries every value of `desired` (extra attributes in `actual` are fine).
pub fn covers(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().filter(|(k, _)| k.as_str() != "schemas").all(|(k, v)| {
            let got = get_ci(a, k);
            if absent(Some(v)) {
                absent(got)
            } else {
                got.is_some_and(|g| covers(v, g))
            }
        }),
        (Value::Array(d), Value::Array(a)) => d.iter().all(|dv| a.iter().any(|av| covers(dv, av))),
        _ => desired == actual,
    }
}

/// What the app has for the attributes we manage (those of `desired` and of what we last
/// applied), to record as "last applied" so that planning sends only what differs.
fn project(actual: &Value, desired: &Value, last: Option<&Value>) -> Value {
    let empty = Map::new();
    let a = actual.as_object().unwrap_or(&empty);
    let mut keys: BTreeSet<&str> =
        desired.as_object().map(|d| d.keys().map(String::as_str).collect()).unwrap_or_default();
    if let Some(Value::Object(l)) = last {
        keys.extend(l.keys().map(String::as_str));
    }
    let mut out = Map::new();
    for k in keys {
        if k == "schemas" {
            if let Some(v) = desired.get(k) {
                out.insert(k.to_owned(), v.clone());
            }
        } else if let Some(v) = get_ci(a, k).filter(|v| !absent(Some(v))) {
            out.insert(k.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

/// What reconciliation compares with the app: what is sent, less the attributes set only
/// at creation.
fn comparable(desired: &Value, create_only: &[String]) -> Value {
    let mut out = app_view(desired);
    for p in create_only.iter().filter_map(|p| crate::mapping::parse_path(p)) {
        set_path(&mut out, &p, None);
    }
    out
}

/// Group memberships are not read back from the app: keep what was applied.
fn carry_groups(seen: &mut Value, last: Option<&Value>) {
    if let (Value::Object(m), Some(groups)) = (seen, last.and_then(|l| l.get(GROUPS_KEY))) {
        m.insert(GROUPS_KEY.to_owned(), groups.clone());
    }
}

impl Engine {
    /// Reconciles one app in full; see the module documentation.
    pub async fn reconcile(&self, app_id: Uuid) -> Result<ReconcileReport, EngineError> {
        self.reconcile_by(app_id, None).await
    }

    /// [`Self::reconcile`], started by `actor` (`None`: the schedule). What it queues goes
    /// through the deprovisioning guard as one change.
    pub async fn reconcile_by(
        &self,
        app_id: Uuid,
        actor: Option<&directory::Actor>,
    ) -> Result<ReconcileReport, EngineError> {
        let store = self.store();
        let started_by = actor.map_or_else(|| "the hourly schedule".to_owned(), crate::guard::actor_words);
        let causes =
            Causes::fixed(Why::new("reconcile", Some(started_by), "a reconciliation found the app out of step"));
        let mut guard = Guard::new(store.clone());
        let app = store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        let connector = self.connector(&app).await?;
        let mut report = ReconcileReport::default();

        // Read the app's accounts at the largest page it allows.
        let page_size = store
            .get_app_capabilities(app_id)
            .await?
            .and_then(|v| serde_json::from_value::<connectors::Capabilities>(v).ok())
            .and_then(|c| c.filter_max_results)
            .unwrap_or(100)
            .clamp(1, 1000);
        let mut by_id: HashMap<String, Value> = HashMap::new();
        let mut by_external: HashMap<String, String> = HashMap::new();
        let mut next = Some(PageRequest::first(page_size));
        while let Some(p) = next {
            let page = connector.list_accounts(p).await.map_err(|e| EngineError::app(&app, e))?;
            report.accounts_read += page.items.len() as u64;
            for a in page.items {
                if let Some(ext) = a.resource.get("externalId").and_then(Value::as_str) {
                    by_external.insert(ext.to_owned(), a.id.clone());
                }
                by_id.insert(a.id, a.resource);
            }
            next = page.next;
        }

        // Everyone who has or should have an account, and the accounts that carry our ids.
        let mut users: BTreeSet<Uuid> = store.users_of_app(app_id).await?.into_iter().collect();
        users.extend(by_external.keys().filter_map(|k| Uuid::parse_str(k).ok()));
        let pairs: Vec<(Uuid, Uuid)> = users.into_iter().map(|u| (u, app_id)).collect();
        for chunk in pairs.chunks(500) {
            let states = store.load_pairs(chunk).await?;
            let mut observed = Vec::new();
            for s in &states {
                if s.user.is_none() || s.running.is_some() {
                    continue;
                }
                report.users_checked += 1;
                let want = intent(s.user.as_deref(), &s.roles, &app, s.granted);
                let account = s.account.as_ref();
                if account.is_some_and(|a| a.ownership == Some(Ownership::Foreign)) {
                    continue;
                }
                let managed = account.filter(|a| a.ownership.is_some_and(Ownership::is_managed));
                let write = match managed.and_then(|a| a.remote_id.as_deref().map(|r| (a, r))) {
                    Some((a, remote)) => match (by_id.get(remote), &want) {
                        (None, _) => {
                            report.vanished += 1;
                            Some(AccountWrite::Set { remote_id: None, ownership: None, last_applied: None })
                        }
                        (Some(actual), Intent::Present { resource: d, create_only }) => {
                            if !covers(&comparable(d, create_only), actual) {
                                report.drifted += 1;
                                let mut seen = project(actual, d, a.last_applied.as_ref());
                                carry_groups(&mut seen, a.last_applied.as_ref());
                                Some(AccountWrite::Set {
                                    remote_id: Some(remote.to_owned()),
                                    ownership: a.ownership,
                                    last_applied: Some(seen),
                                })
                            } else if a.last_applied.is_none() {
                                // Linked and already in step: record what it has.
                                Some(AccountWrite::Set {
                                    remote_id: Some(remote.to_owned()),
                                    ownership: a.ownership,
                                    last_applied: Some(project(actual, d, None)),
                                })
                            } else {
                                None
                            }
                        }
                        _ => None,
                    },
                    None => by_external.get(&s.user_id.to_string()).map(|remote| {
                        report.adopted += 1;
                        let actual = by_id.get(remote).cloned().unwrap_or(Value::Null);
                        let seen = match &want {
                            Intent::Present { resource: d, .. } => project(&actual, d, None),
                            _ => actual,
                        };
                        AccountWrite::Set {
                            remote_id: Some(remote.clone()),
                            ownership: Some(Ownership::Created),
                            last_applied: Some(seen),
                        }
                    }),
                };
                if let Some(account) = write {
                    observed.push(PlanItem::Observe { user_id: s.user_id, app_id, account });
                }
            }
            if !observed.is_empty() {
                store.apply_plan(&PlanWrite { cursor: None, items: observed }).await?;
            }
            let states = store.load_pairs(chunk).await?;
            let items = plan_guarded(&states, &causes, &mut guard).await?;
            report.queued +=
                items.iter().filter(|i| matches!(i, PlanItem::Enqueue { .. } | PlanItem::Replace { .. })).count()
                    as u64;
            if !items.is_empty() {
                store.apply_plan(&PlanWrite { cursor: None, items }).await?;
            }
        }
        let rest = guard.finish();
        report.queued += rest.len() as u64;
        if !rest.is_empty() {
            store.apply_plan(&PlanWrite { cursor: None, items: rest }).await?;
        }
        self.wake_workers();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn covers_ignores_extra_attributes_and_case() {
        let d = json!({"schemas": ["x"], "userName": "ada", "name": {"givenName": "Ada"}, "emails": [{"value": "a@x.io", "type": "work"}], "active": true});
        let a = json!({"id": "1", "meta": {}, "UserName": "ada", "name": {"givenName": "Ada", "familyName": "L"},
            "emails": [{"value": "b@x.io"}, {"value": "a@x.io", "type": "work", "primary": true}], "active": true});
        assert!(covers(&d, &a));
        assert!(!covers(&json!({"userName": "ada", "title": "CTO"}), &a));
        assert!(!covers(&json!({"active": false}), &a));
        assert!(covers(&json!({"title": null}), &a));
        assert!(!covers(&json!({"title": null}), &json!({"title": "CTO"})));
    }

    #[test]
    fn projection_keeps_only_managed_attributes() {
        let d = json!({"schemas": ["x"], "userName": "ada", "title": "CTO"});
        let a = json!({"id": "1", "userName": "ada", "title": "Intern", "nickName": "a"});
        let last = json!({"userName": "ada", "displayName": "Ada"});
        assert_eq!(project(&a, &d, Some(&last)), json!({"schemas": ["x"], "userName": "ada", "title": "Intern"}));
    }
}
