//! Blast radius: the deprovisioning guard every plan goes through, and the cause each
//! operation carries (the change, rule, role or admin behind it).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use directory::{Action, App, AuditEntry, Cause, Change, ChangeKind, DeprovisionGuard, PairState, PlanItem};
use serde_json::Value;
use store::{AuditQuery, Store, StoreError};
use uuid::Uuid;

use crate::mapping::{evaluate, get_path, parse_path};

/// One app's side of the guard, for one change, sync or reconcile.
#[derive(Debug, Default)]
struct AppGuard {
    limit: Option<DeprovisionGuard>,
    /// Suspensions and deletions already queued within the window.
    recent: i64,
    /// The app's managed accounts.
    managed: i64,
    /// This change's suspensions and deletions so far.
    count: i64,
    /// Over the limit: everything of this change that deprovisions is held.
    holding: bool,
    /// This change's suspensions and deletions, kept back until the change is known to be
    /// within the limits (or, once it is not, released as held).
    buffered: Vec<PlanItem>,
    /// Operations of this change held (including those already held and replaced).
    held: i64,
}

/// The deprovisioning guard of one change: when the change would take an app's suspensions
/// and deletions within the window over either limit, all of that change's suspensions and
/// deletions for the app are held. Feed it every item of the change ([`Guard::admit`]), write
/// what it gives back, and at the end write what [`Guard::finish`] gives back.
pub struct Guard {
    store: Arc<dyn Store>,
    /// When the change happens: the window of recent deprovisionings ends here.
    now: DateTime<Utc>,
    apps: HashMap<Uuid, AppGuard>,
}

fn mark_held(item: &mut PlanItem) {
    if let PlanItem::Enqueue { held, .. } | PlanItem::Replace { held, .. } = item {
        *held = true;
    }
}

fn is_held(item: &PlanItem) -> bool {
    matches!(item, PlanItem::Enqueue { held: true, .. } | PlanItem::Replace { held: true, .. })
}

impl Guard {
    /// The guard of a change made at `now`.
    pub fn new(store: Arc<dyn Store>, now: DateTime<Utc>) -> Self {
        Self { store, now, apps: HashMap::new() }
    }

    async fn app_guard(&mut self, app: &App) -> Result<&mut AppGuard, StoreError> {
        if !self.apps.contains_key(&app.id) {
            let limit = app.provisioning.deprovision_guard;
            let mut g = AppGuard { limit, ..Default::default() };
            if let Some(l) = limit {
                let since = self.now - chrono::Duration::minutes(l.window_minutes.max(0));
                g.recent = self.store.count_recent_deprovisions(app.id, since).await?;
                g.managed = self.store.count_managed_accounts(app.id).await?;
            }
            self.apps.insert(app.id, g);
        }
        self.apps.get_mut(&app.id).ok_or(StoreError::NotFound)
    }

    /// Takes the items planned for pairs of `app`; answers those to write now.
    pub async fn admit(&mut self, app: &App, items: Vec<PlanItem>) -> Result<Vec<PlanItem>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        for mut item in items {
            if !item.is_deprovision() {
                out.push(item);
                continue;
            }
            let g = self.app_guard(app).await?;
            if is_held(&item) {
                g.held += 1;
                out.push(item);
                continue;
            }
            let Some(limit) = g.limit else {
                out.push(item);
                continue;
            };
            g.count += 1;
            if g.holding {
                mark_held(&mut item);
                g.held += 1;
                out.push(item);
                continue;
            }
            g.buffered.push(item);
            if limit.exceeded(g.recent + g.count, g.managed) {
                g.holding = true;
                for mut b in g.buffered.drain(..) {
                    mark_held(&mut b);
                    g.held += 1;
                    out.push(b);
                }
            }
        }
        Ok(out)
    }

    /// What is left to write at the end of the change: its suspensions and deletions, when
    /// they are within the limits.
    pub fn finish(&mut self) -> Vec<PlanItem> {
        self.apps.values_mut().flat_map(|g| g.buffered.drain(..)).collect()
    }

    /// Operations held for `app` by this change.
    pub fn held(&self, app: Uuid) -> i64 {
        self.apps.get(&app).map_or(0, |g| g.held)
    }
}

/// Why an operation exists, before the action is known.
#[derive(Debug, Clone)]
pub struct Why {
    pub kind: String,
    pub actor: Option<String>,
    pub audit_id: Option<i64>,
    /// What happened, e.g. "on_delete changed to delete".
    pub what: String,
    pub role_id: Option<Uuid>,
    /// For a change of parameters: the app attributes of the parameters added, changed or
    /// removed.
    pub parameters: Vec<String>,
    /// For a change of rules: the names of the rules added, changed or removed.
    pub rules: Vec<String>,
}

impl Why {
    pub fn new(kind: &str, actor: Option<String>, what: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            actor,
            audit_id: None,
            what: what.into(),
            role_id: None,
            parameters: Vec::new(),
            rules: Vec::new(),
        }
    }

    /// The changed parameter behind an operation that sends `desired` (the first whose value
    /// differs from what the account was last given; else the first changed one).
    fn parameter(&self, s: &PairState, desired: Option<&Value>) -> Option<String> {
        let last = s.account.as_ref().and_then(|a| a.last_applied.as_ref());
        let value = |v: Option<&Value>, path: &directory::mapping::AttrPath| v.and_then(|v| get_path(v, path)).cloned();
        self.parameters
            .iter()
            .find(|p| parse_path(p).is_some_and(|path| value(desired, &path) != value(last, &path)))
            .or_else(|| self.parameters.first())
            .cloned()
    }

    /// The cause of an operation doing `action` for the pair `s`, sending `desired`.
    pub fn cause(&self, s: &PairState, action: Action, desired: Option<&Value>) -> Cause {
        let verb = match action {
            Action::Create => "created",
            Action::Update => "updated",
            Action::Suspend => "suspended",
            Action::Delete => "deleted",
        };
        let by = self.actor.as_ref().map(|a| format!(" by {a}")).unwrap_or_default();
        // The rule that puts a user out of scope, for a change of rules.
        let deprovision = matches!(action, Action::Suspend | Action::Delete);
        let mapping = self.kind == "mapping";
        let evaluation = || {
            let (user, app) = (s.user.as_deref()?, s.app.as_deref()?);
            Some(evaluate(user, &s.roles, app, true))
        };
        // A deprovision of an active user who still has the app is a rule's doing, whatever
        // changed (the rules, or the user's attributes).
        let scoped_out =
            deprovision && s.granted && s.user.as_deref().is_some_and(|u| u.status == directory::UserStatus::Active);
        let rule = if scoped_out {
            // The rule that puts the user out of scope ("rule 'Name'" in the provenance).
            evaluation().and_then(|e| (!e.in_scope).then(|| e.provenance.get("scope").cloned()).flatten()).map(|p| {
                p.strip_prefix("rule '").and_then(|r| r.strip_suffix('\'')).map_or_else(|| p.clone(), str::to_owned)
            })
        } else if mapping && !self.rules.is_empty() {
            // A changed rule that now applies to the user, else the first changed one.
            evaluation()
                .and_then(|e| {
                    self.rules.iter().find(|r| e.provenance.values().any(|p| *p == format!("rule '{r}'"))).cloned()
                })
                .or_else(|| self.rules.first().cloned())
        } else {
            None
        };
        let parameter = (mapping && !deprovision).then(|| self.parameter(s, desired)).flatten();
        Cause {
            kind: self.kind.clone(),
            actor: self.actor.clone(),
            audit_id: self.audit_id,
            summary: format!("{verb} because {}{by}", self.what),
            rule,
            parameter,
            role_id: self.role_id,
        }
    }
}

/// An actor in words: "admin alice", "SCIM client Entra ID".
pub fn actor_words(a: &directory::Actor) -> String {
    match a.kind.as_str() {
        "admin" => format!("admin {}", a.name),
        "token" => format!("API token {}", a.name),
        "scim_client" => format!("SCIM client {}", a.name),
        "source" => format!("directory source {}", a.name),
        "cli" => "the command line".into(),
        "system" => "the system".into(),
        other => format!("{other} {}", a.name),
    }
}

fn field<'a>(v: Option<&'a Value>, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v?, |v, k| v.get(k))
}

fn words(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "off".into(),
        other => other.to_string(),
    }
}

/// What an app's settings change changed, in words.
fn settings_change(before: Option<&Value>, after: Option<&Value>) -> String {
    let mut parts = Vec::new();
    for key in ["enabled", "on_suspend", "on_delete", "approval", "deprovision_guard"] {
        let (b, a) = (field(before, &["provisioning", key]), field(after, &["provisioning", key]));
        if b != a {
            parts.push(format!("{key} changed to {}", a.map_or_else(|| "off".into(), words)));
        }
    }
    if parts.is_empty() {
        "the app's settings changed".into()
    } else {
        parts.join(", ")
    }
}

/// The causes of the pairs a batch of changes touches.
pub struct Causes {
    by_user: HashMap<Uuid, Why>,
    by_app: HashMap<Uuid, Why>,
    by_pair: HashMap<(Uuid, Uuid), Why>,
    /// Which change each entry came from (the newest wins).
    seq: HashMap<(u8, Uuid, Uuid), i64>,
    fixed: Option<Why>,
}

impl Causes {
    /// Every operation gets the same cause (a reconcile, "Provision now").
    pub fn fixed(why: Why) -> Self {
        Self {
            by_user: HashMap::new(),
            by_app: HashMap::new(),
            by_pair: HashMap::new(),
            seq: HashMap::new(),
            fixed: Some(why),
        }
    }

    /// Reads the audit entries (and role names) of a batch of changes.
    pub async fn load(store: &dyn Store, changes: &[Change]) -> Result<Self, StoreError> {
        let ids: Vec<i64> = {
            let mut v: Vec<i64> = changes.iter().filter_map(|c| c.audit_id).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut audits: HashMap<i64, AuditEntry> = HashMap::new();
        for chunk in ids.chunks(500) {
            let q = AuditQuery {
                ids: Some(chunk.to_vec()),
                page: store::PageRequest { limit: store::MAX_PAGE, cursor: None },
                ..Default::default()
            };
            for e in store.list_audit(&q).await?.items {
                audits.insert(e.id, e);
            }
        }
        let mut role_names: HashMap<Uuid, String> = HashMap::new();
        for c in changes {
            if let Some(r) = c.role_id {
                if let std::collections::hash_map::Entry::Vacant(e) = role_names.entry(r) {
                    if let Some(role) = store.get_role(r).await? {
                        e.insert(role.name);
                    }
                }
            }
        }
        let mut me = Self {
            by_user: HashMap::new(),
            by_app: HashMap::new(),
            by_pair: HashMap::new(),
            seq: HashMap::new(),
            fixed: None,
        };
        for c in changes {
            let audit = c.audit_id.and_then(|id| audits.get(&id));
            let why = describe(c, audit, &role_names);
            match (c.kind, c.user_id, c.app_id) {
                (ChangeKind::Account, Some(u), Some(a)) => {
                    me.seq.insert((0, u, a), c.seq);
                    me.by_pair.insert((u, a), why);
                }
                (ChangeKind::User | ChangeKind::RoleMembership, Some(u), _) => {
                    me.seq.insert((1, u, Uuid::nil()), c.seq);
                    me.by_user.insert(u, why);
                }
                (ChangeKind::App | ChangeKind::RoleApp, _, Some(a)) => {
                    me.seq.insert((2, Uuid::nil(), a), c.seq);
                    me.by_app.insert(a, why);
                }
                _ => {}
            }
        }
        Ok(me)
    }

    /// The cause of an operation for the pair `s` doing `action`: the newest change that
    /// touched the pair.
    pub fn cause(&self, s: &PairState, action: Action, desired: Option<&Value>) -> Option<Cause> {
        if let Some(f) = &self.fixed {
            return Some(f.cause(s, action, desired));
        }
        let candidates = [
            (self.seq.get(&(0, s.user_id, s.app_id)), self.by_pair.get(&(s.user_id, s.app_id))),
            (self.seq.get(&(1, s.user_id, Uuid::nil())), self.by_user.get(&s.user_id)),
            (self.seq.get(&(2, Uuid::nil(), s.app_id)), self.by_app.get(&s.app_id)),
        ];
        candidates
            .into_iter()
            .filter_map(|(seq, why)| Some((*seq?, why?)))
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, why)| why.cause(s, action, desired))
    }

    /// Sets the cause of the operations among `items` (planned for `s`).
    pub fn stamp(&self, s: &PairState, items: &mut [PlanItem]) {
        for item in items {
            if let PlanItem::Enqueue { action, cause, desired, .. } | PlanItem::Replace { action, cause, desired, .. } =
                item
            {
                *cause = self.cause(s, *action, desired.as_ref());
            }
        }
    }
}

/// The cause a change records, from its audit entry.
fn describe(c: &Change, audit: Option<&AuditEntry>, role_names: &HashMap<Uuid, String>) -> Why {
    let actor = audit.map(|a| actor_words(&a.actor));
    let role = || {
        c.role_id
            .and_then(|r| role_names.get(&r).cloned())
            .or_else(|| {
                field(audit.and_then(|a| a.before.as_ref()), &["name"]).and_then(Value::as_str).map(str::to_owned)
            })
            .map_or_else(|| "a role".to_owned(), |n| format!("role {n}"))
    };
    let action = audit.map_or("", |a| a.action.as_str());
    let (before, after) = (audit.and_then(|a| a.before.as_ref()), audit.and_then(|a| a.after.as_ref()));
    let status = |v: Option<&Value>| field(v, &["status"]).and_then(Value::as_str).map(str::to_owned);
    let what = match action {
        "user.create" => "the user was created".to_owned(),
        "user.suspend" => "the user was suspended".to_owned(),
        "user.reactivate" => "the user was reactivated".to_owned(),
        "user.delete" => "the user was deleted".to_owned(),
        "user.update" => match (status(before).as_deref(), status(after).as_deref()) {
            (Some(b), Some("suspended")) if b != "suspended" => "the user was suspended".to_owned(),
            (Some(b), Some("deleted")) if b != "deleted" => "the user was deleted".to_owned(),
            (Some("suspended"), Some("active")) => "the user was reactivated".to_owned(),
            _ => "the user's attributes changed".to_owned(),
        },
        "role.add_user" => format!("the user was added to {}", role()),
        "role.remove_user" => format!("the user was removed from {}", role()),
        "role.add_app" => format!("{} was granted the app", role()),
        "role.remove_app" => format!("{} no longer grants the app", role()),
        "role.delete" => format!("{} was deleted", role()),
        "app.update" | "app.create" => settings_change(before, after),
        "app.mapping" => mapping_change(before, after),
        "app.apply_to_existing" => format!(
            "on_suspend {} and on_delete {} were applied to existing accounts",
            field(after, &["on_suspend"]).map_or_else(String::new, words),
            field(after, &["on_delete"]).map_or_else(String::new, words)
        ),
        "app.saml.update" => "the app's SAML settings changed".to_owned(),
        "event.requeue" => "the rejected operation was requeued".to_owned(),
        "" if c.kind == ChangeKind::Account => "the previous operation on this account finished".to_owned(),
        "" => format!("a {} change", c.kind.as_str()),
        other => other.to_owned(),
    };
    let kind = match (audit.map(|a| a.actor.kind.as_str()), c.kind) {
        (Some("scim_client"), _) => "scim_push",
        (Some("source"), _) => "source_sync",
        (_, _) if action == "role.delete" => "membership",
        (_, ChangeKind::User) => "user_change",
        (_, ChangeKind::RoleMembership | ChangeKind::Role) => "membership",
        (_, ChangeKind::RoleApp) => "role_grant",
        (_, ChangeKind::App) if action == "app.mapping" => "mapping",
        (_, ChangeKind::App) => "app_settings",
        (Some(_), ChangeKind::Account) => "admin",
        (None, ChangeKind::Account) => "replan",
    };
    let (parameters, rules) =
        if action == "app.mapping" { changed_mapping(before, after) } else { (Vec::new(), Vec::new()) };
    Why { kind: kind.into(), actor, audit_id: audit.map(|a| a.id), what, role_id: c.role_id, parameters, rules }
}

/// The parameters (`null`: the default mapping) of an `app.mapping` audit side.
fn parameters_of(v: Option<&Value>) -> Vec<Value> {
    match field(v, &["parameters"]) {
        Some(Value::Array(a)) => a.clone(),
        _ => directory::mapping::default_parameters().iter().filter_map(|p| serde_json::to_value(p).ok()).collect(),
    }
}

fn named<'a>(items: &'a [Value], key: &str) -> Vec<(&'a str, &'a Value)> {
    items.iter().filter_map(|i| Some((i.get(key)?.as_str()?, i))).collect()
}

/// The names (by `key`) of the items added, changed or removed, in order.
fn differing(before: &[Value], after: &[Value], key: &str) -> Vec<String> {
    let (b, a) = (named(before, key), named(after, key));
    let mut out: Vec<String> = Vec::new();
    for (side, other) in [(&a, &b), (&b, &a)] {
        for (name, v) in side.iter() {
            let same = other.iter().any(|(n, x)| n == name && x == v);
            if !same && !out.iter().any(|o| o == name) {
                out.push((*name).to_owned());
            }
        }
    }
    out
}

/// The parameters (by app attribute) and rules (by name) an `app.mapping` change changed.
fn changed_mapping(before: Option<&Value>, after: Option<&Value>) -> (Vec<String>, Vec<String>) {
    let parameters = differing(&parameters_of(before), &parameters_of(after), "app_attribute");
    let rules_of = |v: Option<&Value>| field(v, &["rules"]).and_then(Value::as_array).cloned().unwrap_or_default();
    let rules = differing(&rules_of(before), &rules_of(after), "name");
    (parameters, rules)
}

/// An `app.mapping` change in words: which parameters and rules it changed.
fn mapping_change(before: Option<&Value>, after: Option<&Value>) -> String {
    let (parameters, rules) = changed_mapping(before, after);
    let list = |v: &[String], quote: bool| {
        let shown: Vec<String> = v.iter().take(3).map(|n| if quote { format!("'{n}'") } else { n.clone() }).collect();
        let more = if v.len() > 3 { format!(" and {} more", v.len() - 3) } else { String::new() };
        format!("{}{more}", shown.join(", "))
    };
    match (parameters.is_empty(), rules.is_empty()) {
        (false, true) => format!(
            "the app's parameter{} {} changed",
            if parameters.len() == 1 { "" } else { "s" },
            list(&parameters, false)
        ),
        (true, false) => {
            format!("the app's rule{} {} changed", if rules.len() == 1 { "" } else { "s" }, list(&rules, true))
        }
        _ => "the app's parameters or rules changed".to_owned(),
    }
}
