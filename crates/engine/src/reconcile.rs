//! Full reconciliation of one app: read every account the app has, page by page, compare
//! with what each user should have, correct the records where the app drifted, and queue
//! only the differences. Accounts in the app with no counterpart here are left alone.
//!
//! The listing is checked page by page (see `connectors::Scan`); when no way of reading it
//! is consistent the reconciliation ends `failed`, naming the contradiction, and changes
//! nothing. An account missing from the listing counts as vanished only once a read by id
//! answers 404 and a lookup by externalId/userName finds nothing. The memberships of the
//! groups the engine manages are read from the app, so that drift either way (a member
//! added or removed in the app) is planned back.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use directory::{AccountWrite, Ownership, PlanItem, PlanWrite};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::guard::{Causes, Guard, Why};
use crate::mapping::{app_view, groups_of, set_path, GROUPS_KEY};
use crate::plan::{intent, Intent};
use crate::runner::{plan_guarded, Engine, EngineError};

/// What a full reconciliation found and did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ReconcileReport {
    /// `completed`, or `failed` when the app's listing contradicted itself whichever way it
    /// was read (then nothing was changed).
    pub status: String,
    /// How the accounts were read (`GET paging`, `POST /.search paging`); `None` when no
    /// way was consistent.
    pub strategy: Option<String>,
    /// Each contradiction found in the app's answers, naming the way of reading.
    pub contradictions: Vec<String>,
    /// Why it failed, and what to do.
    pub reason: Option<String>,
    pub recommended_action: Option<String>,
    /// List requests made.
    pub pages_read: u32,
    pub accounts_read: u64,
    pub users_checked: u64,
    /// Accounts found in the app with our externalId but no record here.
    pub adopted: u64,
    /// Accounts whose values in the app differ from what they should be.
    pub drifted: u64,
    /// Accounts recorded here that no longer exist in the app (a read by id answered 404
    /// and a lookup by externalId/userName found nothing).
    pub vanished: u64,
    /// Accounts recorded here that the listing did not hold (then read by id).
    pub missing_from_list: u64,
    /// Groups the engine manages, read to check their members.
    pub groups_read: u64,
    /// Accounts whose group memberships in the app differ from what was last applied.
    pub memberships_drifted: u64,
    /// Member entries listed more than once in the groups read (the app's health).
    pub duplicate_members: u64,
    pub groups_with_duplicates: Vec<String>,
    /// Operations queued.
    pub queued: u64,
}

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

/// The groups the account is in, as read from the app: of the groups the engine manages
/// (`read`: lower-cased name -> (name, members)), those that list it, plus the groups of
/// `last` that were not read (kept as last applied).
fn observed_groups(
    remote: &str,
    last: Option<&Value>,
    want: Option<&Value>,
    read: &HashMap<String, (String, BTreeSet<String>)>,
) -> BTreeSet<String> {
    let had = last.map(groups_of).unwrap_or_default();
    let mut known = had.clone();
    known.extend(want.map(groups_of).unwrap_or_default());
    // A group is named as the rules name it (which may differ in case from the app).
    let name_of = |name: &str| known.iter().find(|k| k.eq_ignore_ascii_case(name)).cloned();
    let mut out: BTreeSet<String> = had.into_iter().filter(|n| !read.contains_key(&n.to_lowercase())).collect();
    out.extend(
        read.values()
            .filter(|(_, members)| members.contains(remote))
            .map(|(name, _)| name_of(name).unwrap_or_else(|| name.clone())),
    );
    out
}

fn set_groups(seen: &mut Value, groups: &BTreeSet<String>) {
    if let Value::Object(m) = seen {
        if groups.is_empty() {
            m.remove(GROUPS_KEY);
        } else {
            m.insert(GROUPS_KEY.to_owned(), Value::Array(groups.iter().cloned().map(Value::String).collect()));
        }
    }
}

impl Engine {
    /// Reconciles one app in full, at `now`; see the module documentation. The report
    /// (strategy, contradictions, duplicate members) is also recorded as the app's latest read.
    pub async fn reconcile(&self, app_id: Uuid, now: DateTime<Utc>) -> Result<ReconcileReport, EngineError> {
        self.reconcile_by(app_id, None, now).await
    }

    /// [`Self::reconcile`], started by `actor` (`None`: the schedule). What it queues goes
    /// through the deprovisioning guard as one change made at `now`.
    pub async fn reconcile_by(
        &self,
        app_id: Uuid,
        actor: Option<&directory::Actor>,
        now: DateTime<Utc>,
    ) -> Result<ReconcileReport, EngineError> {
        let report = self.reconcile_once(app_id, actor, now).await?;
        match serde_json::to_value(&report) {
            Ok(v) => {
                if let Err(e) = self.store().record_app_read(app_id, "reconcile", &v).await {
                    tracing::warn!(app = %app_id, error = %e.chain(), "cannot record how the reconciliation read the app");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialize a reconciliation report"),
        }
        Ok(report)
    }

    async fn reconcile_once(
        &self,
        app_id: Uuid,
        actor: Option<&directory::Actor>,
        now: DateTime<Utc>,
    ) -> Result<ReconcileReport, EngineError> {
        let store = self.store();
        let started_by = actor.map_or_else(|| "the hourly schedule".to_owned(), crate::guard::actor_words);
        let causes =
            Causes::fixed(Why::new("reconcile", Some(started_by), "a reconciliation found the app out of step"));
        let mut guard = Guard::new(store.clone(), now);
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
        let scan = connector.scan(false, page_size).await.map_err(|e| EngineError::app(&app, e))?;
        report.pages_read = scan.report.pages;
        report.strategy = scan.report.strategy.clone();
        report.contradictions = scan.report.contradictions.clone();
        if !scan.consistent() {
            report.status = "failed".into();
            report.reason = Some(scan.report.failure_reason(&app.name, "accounts"));
            report.recommended_action = Some(scan.report.recommended_action());
            return Ok(report);
        }
        let mut by_id: HashMap<String, Value> = HashMap::new();
        let mut by_external: HashMap<String, String> = HashMap::new();
        report.accounts_read = scan.items.len() as u64;
        for a in scan.items {
            if let Some(ext) = a.resource.get("externalId").and_then(Value::as_str) {
                by_external.insert(ext.to_owned(), a.id.clone());
            }
            by_id.insert(a.id, a.resource);
        }

        // The groups the engine manages for this app (named by what its users should have or
        // were last given), read from the app: who each lists, and duplicate entries.
        let users_of_app = store.users_of_app(app_id).await?;
        let mut group_names: BTreeSet<String> = BTreeSet::new();
        for chunk in users_of_app.chunks(500) {
            let pairs: Vec<(Uuid, Uuid)> = chunk.iter().map(|u| (*u, app_id)).collect();
            for s in store.load_pairs(&pairs).await? {
                if let Intent::Present { resource, .. } = intent(s.user.as_deref(), &s.roles, &app, s.granted) {
                    group_names.extend(groups_of(&resource));
                }
                if let Some(last) = s.account.as_ref().and_then(|a| a.last_applied.as_ref()) {
                    group_names.extend(groups_of(last));
                }
            }
        }
        let mut members_read: HashMap<String, (String, BTreeSet<String>)> = HashMap::new();
        if !group_names.is_empty() {
            let names: Vec<String> = group_names.into_iter().collect();
            for e in store.find_entitlements(app_id, "group", &names).await? {
                let Some(group) = connector.get_group(&e.remote_id).await.map_err(|e| EngineError::app(&app, e))?
                else {
                    continue;
                };
                report.groups_read += 1;
                let listed = connectors::member_values(&group.resource);
                let unique: BTreeSet<String> = listed.iter().cloned().collect();
                let duplicates = (listed.len() - unique.len()) as u64;
                if duplicates > 0 {
                    report.duplicate_members += duplicates;
                    report.groups_with_duplicates.push(e.display_name.clone());
                }
                members_read.insert(e.display_name.to_lowercase(), (e.display_name.clone(), unique));
            }
        }

        // Everyone who has or should have an account, and the accounts that carry our ids.
        let mut users: BTreeSet<Uuid> = users_of_app.into_iter().collect();
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
                let want_resource = match &want {
                    Intent::Present { resource, .. } => Some(resource),
                    _ => None,
                };
                let write = match managed.and_then(|a| a.remote_id.as_deref().map(|r| (a, r))) {
                    Some((a, remote)) => {
                        // Absent from the listing: proven gone only by a read by id (404) and
                        // a lookup by externalId/userName that finds nothing.
                        let mut actual = by_id.get(remote).cloned();
                        let mut relinked: Option<String> = None;
                        if actual.is_none() {
                            report.missing_from_list += 1;
                            let err = |e| EngineError::app(&app, e);
                            if let Some(found) = connector.get_account(remote).await.map_err(err)? {
                                actual = Some(found.resource);
                            } else {
                                let user_id = s.user_id.to_string();
                                let username = s.user.as_ref().map(|u| u.username.clone()).unwrap_or_default();
                                let found = connector
                                    .find_account_any(&[("externalId", &user_id), ("userName", &username)])
                                    .await
                                    .map_err(|e| EngineError::app(&app, e))?;
                                let ours = found.iter().find(|f| {
                                    f.resource.get("externalId").and_then(Value::as_str) == Some(user_id.as_str())
                                });
                                match ours {
                                    Some(f) => {
                                        relinked = Some(f.id.clone());
                                        actual = Some(f.resource.clone());
                                    }
                                    // Someone else's account with that userName: not proof of
                                    // absence either; leave the record as it is.
                                    None if !found.is_empty() => continue,
                                    None => {}
                                }
                            }
                        }
                        let remote = relinked.as_deref().unwrap_or(remote);
                        match (actual, &want) {
                            (None, _) => {
                                report.vanished += 1;
                                Some(AccountWrite::Set { remote_id: None, ownership: None, last_applied: None })
                            }
                            (Some(actual), Intent::Present { resource: d, create_only }) => {
                                let last = a.last_applied.as_ref();
                                let groups = observed_groups(remote, last, want_resource, &members_read);
                                let groups_drifted = last.map(groups_of).unwrap_or_default() != groups;
                                if groups_drifted {
                                    report.memberships_drifted += 1;
                                }
                                let attrs_drifted = !covers(&comparable(d, create_only), &actual);
                                if attrs_drifted || groups_drifted || relinked.is_some() {
                                    if attrs_drifted {
                                        report.drifted += 1;
                                    }
                                    let mut seen = if attrs_drifted || last.is_none() {
                                        project(&actual, d, last)
                                    } else {
                                        last.cloned().unwrap_or(Value::Null)
                                    };
                                    set_groups(&mut seen, &groups);
                                    Some(AccountWrite::Set {
                                        remote_id: Some(remote.to_owned()),
                                        ownership: a.ownership,
                                        last_applied: Some(seen),
                                    })
                                } else if last.is_none() {
                                    // Linked and already in step: record what it has.
                                    Some(AccountWrite::Set {
                                        remote_id: Some(remote.to_owned()),
                                        ownership: a.ownership,
                                        last_applied: Some(project(&actual, d, None)),
                                    })
                                } else {
                                    None
                                }
                            }
                            _ => None,
                        }
                    }
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
        report.status = "completed".into();
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
