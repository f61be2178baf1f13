//! Dry runs: what a change of the directory or of an app's settings would do to the accounts
//! in every app, computed with the planner's own code ([`crate::plan::plan_items`]) and the
//! deprovisioning guard ([`Guard`]) on the state the change would leave, without writing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use directory::{Action, App, PairState, PlanItem, RoleRef, User, UserStatus};
use serde::Serialize;
use serde_json::Value;
use store::{PageRequest, UserQuery};
use uuid::Uuid;

use crate::guard::Guard;
use crate::mapping::{app_view, groups_of};
use crate::plan::plan_items;
use crate::runner::{Engine, EngineError};

/// A change to try.
#[derive(Debug, Clone)]
pub enum WhatIf {
    /// The app as it would be saved; `apply_to_existing`: its `on_suspend` / `on_delete` also
    /// reach accounts already left or suspended.
    App { app: Box<App>, apply_to_existing: bool },
    /// The user as they would be saved (a deleted user also leaves their roles).
    User(Box<User>),
    /// A user joins (`add`) or leaves a role.
    Membership { role: Uuid, user: Uuid, add: bool },
    /// A role starts (`add`) or stops granting an app.
    RoleGrant { role: Uuid, app: Uuid, add: bool },
    /// A role is deleted.
    RoleDeleted { role: Uuid },
    /// A directory source's sync: the users as it would save them (new ones included), and
    /// the role memberships it would add and remove, as (role, user).
    Directory { users: Vec<User>, role_adds: Vec<(Uuid, Uuid)>, role_removes: Vec<(Uuid, Uuid)> },
}

/// A [`WhatIf::Directory`] indexed by user.
#[derive(Default)]
struct DirectoryIndex {
    users: HashMap<Uuid, User>,
    adds: HashMap<Uuid, Vec<RoleRef>>,
    removes: HashMap<Uuid, HashSet<Uuid>>,
}

/// What a change would do to one app's accounts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Effect {
    pub app_id: Uuid,
    pub app_name: String,
    pub create: u64,
    pub update: u64,
    pub suspend: u64,
    pub delete: u64,
    pub group_add: u64,
    pub group_remove: u64,
    /// Suspensions and deletions the deprovisioning guard would hold.
    pub held: u64,
    /// Users whose account could not be computed (a required value is empty).
    #[serde(skip_serializing_if = "is_zero")]
    pub invalid: u64,
    /// Some of the affected users, with the values before and after.
    pub sample: Vec<Sample>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Sample {
    pub user_id: Uuid,
    pub username: String,
    pub action: Option<Action>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub reason: Option<String>,
    /// Whether the guard would hold it.
    pub held: bool,
}

/// How a change moves people between roles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RoleMoves {
    pub role_id: Uuid,
    pub joins: u64,
    pub leaves: u64,
}

/// The answer of a dry run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DryRun {
    pub effects: Vec<Effect>,
    pub roles: Vec<RoleMoves>,
}

impl DryRun {
    /// Suspensions and deletions in every app.
    pub fn deprovisions(&self) -> u64 {
        self.effects.iter().map(|e| e.suspend + e.delete).sum()
    }
}

const SAMPLE: usize = 20;
const BATCH: usize = 500;

impl Engine {
    async fn role_members(&self, role: Uuid) -> Result<Vec<User>, EngineError> {
        let mut out = Vec::new();
        let mut page = PageRequest { limit: store::MAX_PAGE, cursor: None };
        loop {
            let q = UserQuery { role: Some(role), page: page.clone(), ..Default::default() };
            let p = self.store().list_users(&q).await?;
            out.extend(p.items);
            match p.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// The apps each role grants, read once per role.
    async fn grants_of(
        &self,
        roles: &[RoleRef],
        cache: &mut HashMap<Uuid, HashSet<Uuid>>,
    ) -> Result<HashSet<Uuid>, EngineError> {
        let mut out = HashSet::new();
        for r in roles {
            if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(r.id) {
                e.insert(self.store().apps_of_role(r.id).await?.into_iter().map(|a| a.id).collect());
            }
            out.extend(cache.get(&r.id).into_iter().flatten().copied());
        }
        Ok(out)
    }

    /// What `change` would do if made at `now`, in every app it concerns; nothing is written.
    pub async fn dry_run(&self, change: WhatIf, now: DateTime<Utc>) -> Result<DryRun, EngineError> {
        let store = self.store();
        let mut moves: Vec<RoleMoves> = Vec::new();
        let mut index = DirectoryIndex::default();
        // The pairs the change touches.
        let pairs: Vec<(Uuid, Uuid)> = match &change {
            WhatIf::App { app, .. } => store.users_of_app(app.id).await?.into_iter().map(|u| (u, app.id)).collect(),
            WhatIf::User(u) => {
                if u.status == UserStatus::Deleted {
                    for r in store.roles_of_user(u.id).await? {
                        moves.push(RoleMoves { role_id: r.id, joins: 0, leaves: 1 });
                    }
                }
                store.apps_of_user(u.id).await?.into_iter().map(|a| (u.id, a)).collect()
            }
            WhatIf::Membership { role, user, add } => {
                let member = store.roles_of_user(*user).await?.iter().any(|r| r.id == *role);
                if member != *add {
                    moves.push(RoleMoves { role_id: *role, joins: u64::from(*add), leaves: u64::from(!*add) });
                }
                let mut apps: Vec<Uuid> = store.apps_of_role(*role).await?.into_iter().map(|a| a.id).collect();
                apps.extend(store.apps_of_user(*user).await?);
                apps.sort_unstable();
                apps.dedup();
                apps.into_iter().map(|a| (*user, a)).collect()
            }
            WhatIf::RoleGrant { role, app, .. } => {
                self.role_members(*role).await?.into_iter().map(|u| (u.id, *app)).collect()
            }
            WhatIf::RoleDeleted { role } => {
                let members = self.role_members(*role).await?;
                moves.push(RoleMoves { role_id: *role, joins: 0, leaves: members.len() as u64 });
                let apps: Vec<Uuid> = store.apps_of_role(*role).await?.into_iter().map(|a| a.id).collect();
                members.iter().flat_map(|u| apps.iter().map(move |a| (u.id, *a))).collect()
            }
            WhatIf::Directory { users, role_adds, role_removes } => {
                let mut per_role: BTreeMap<Uuid, RoleMoves> = BTreeMap::new();
                let mut names: HashMap<Uuid, String> = HashMap::new();
                let mut role_apps: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
                for (role, user) in role_adds {
                    per_role
                        .entry(*role)
                        .or_insert_with(|| RoleMoves { role_id: *role, ..Default::default() })
                        .joins += 1;
                    if !names.contains_key(role) {
                        let name = store.get_role(*role).await?.map(|r| r.name).unwrap_or_default();
                        names.insert(*role, name);
                        role_apps.insert(*role, store.apps_of_role(*role).await?.into_iter().map(|a| a.id).collect());
                    }
                    let name = names.get(role).cloned().unwrap_or_default();
                    index.adds.entry(*user).or_default().push(RoleRef { id: *role, name });
                }
                for (role, user) in role_removes {
                    per_role
                        .entry(*role)
                        .or_insert_with(|| RoleMoves { role_id: *role, ..Default::default() })
                        .leaves += 1;
                    index.removes.entry(*user).or_default().insert(*role);
                }
                moves.extend(per_role.into_values());
                index.users = users.iter().map(|u| (u.id, u.clone())).collect();
                let mut ids: Vec<Uuid> = index.users.keys().copied().collect();
                ids.extend(index.adds.keys().chain(index.removes.keys()).copied());
                ids.sort_unstable();
                ids.dedup();
                let mut pairs: std::collections::BTreeSet<(Uuid, Uuid)> = std::collections::BTreeSet::new();
                for chunk in ids.chunks(BATCH) {
                    pairs.extend(store.apps_of_users(chunk).await?);
                }
                for (role, user) in role_adds {
                    pairs.extend(role_apps.get(role).into_iter().flatten().map(|a| (*user, *a)));
                }
                pairs.into_iter().collect()
            }
        };
        let mut grants_cache: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
        let mut guard = Guard::new(store.clone(), now);
        let mut effects: BTreeMap<Uuid, Effect> = BTreeMap::new();
        let mut held_ids: Vec<(Uuid, Uuid)> = Vec::new();
        for chunk in pairs.chunks(BATCH) {
            let mut states = store.load_pairs(chunk).await?;
            for s in &mut states {
                self.imagine(&change, &index, s, &mut grants_cache).await?;
            }
            for s in &states {
                let Some(app) = s.app.clone() else { continue };
                let items: Vec<PlanItem> =
                    plan_items(s).filter(|i| !matches!(i, PlanItem::Depart { .. } | PlanItem::Forget { .. })).collect();
                let username = s.user.as_ref().map_or_else(String::new, |u| u.username.clone());
                let before = s.account.as_ref().and_then(|a| a.last_applied.clone());
                let e = effects.entry(app.id).or_insert_with(|| Effect {
                    app_id: app.id,
                    app_name: app.name.clone(),
                    ..Default::default()
                });
                for item in &items {
                    let sample = |action: Option<Action>, after: Option<Value>, reason: Option<String>| Sample {
                        user_id: s.user_id,
                        username: username.clone(),
                        action,
                        before: if reason.is_some() { before.as_ref().map(app_view) } else { before.clone() },
                        after,
                        reason,
                        held: false,
                    };
                    match item {
                        PlanItem::Enqueue { action, desired, .. } | PlanItem::Replace { action, desired, .. } => {
                            match action {
                                Action::Create => e.create += 1,
                                Action::Update => e.update += 1,
                                Action::Suspend => e.suspend += 1,
                                Action::Delete => e.delete += 1,
                            }
                            let had = before.as_ref().map(groups_of).unwrap_or_default();
                            let will = desired.as_ref().map(groups_of).unwrap_or_default();
                            e.group_add += will.difference(&had).count() as u64;
                            e.group_remove += had.difference(&will).count() as u64;
                            if e.sample.len() < SAMPLE {
                                e.sample.push(sample(Some(*action), desired.clone(), None));
                            }
                        }
                        PlanItem::Fail { reason, .. } => {
                            e.invalid += 1;
                            if e.sample.len() < SAMPLE {
                                e.sample.push(sample(None, None, Some(reason.clone())));
                            }
                        }
                        _ => {}
                    }
                }
                for item in guard.admit(&app, items).await? {
                    if matches!(item, PlanItem::Enqueue { held: true, .. } | PlanItem::Replace { held: true, .. }) {
                        held_ids.push((s.user_id, app.id));
                    }
                }
            }
        }
        guard.finish();
        for e in effects.values_mut() {
            e.held = guard.held(e.app_id) as u64;
            let held: HashSet<Uuid> = held_ids.iter().filter(|(_, a)| *a == e.app_id).map(|(u, _)| *u).collect();
            for s in &mut e.sample {
                s.held = s.action.is_some_and(|a| matches!(a, Action::Suspend | Action::Delete))
                    && held.contains(&s.user_id);
            }
        }
        let effects = effects
            .into_values()
            .filter(|e| e.create + e.update + e.suspend + e.delete + e.invalid + e.group_add + e.group_remove > 0)
            .collect();
        Ok(DryRun { effects, roles: moves })
    }

    /// Changes a pair's state into what it would be after `change`.
    async fn imagine(
        &self,
        change: &WhatIf,
        index: &DirectoryIndex,
        s: &mut PairState,
        cache: &mut HashMap<Uuid, HashSet<Uuid>>,
    ) -> Result<(), EngineError> {
        match change {
            WhatIf::App { app, apply_to_existing } => {
                let mut a = (**app).clone();
                // An app that is "SAML JIT only" reads as not provisioning (see `PairState::app`).
                if s.app.as_ref().is_some_and(|cur| !cur.provisioning.enabled) && app.provisioning.enabled {
                    let stored = self.store().get_app(app.id).await?;
                    if stored.is_some_and(|st| st.provisioning.enabled) {
                        a.provisioning.enabled = false;
                    }
                }
                s.app = Some(Arc::new(a));
                if *apply_to_existing {
                    if let Some(acc) = s.account.as_mut() {
                        acc.departure = None;
                    }
                }
            }
            WhatIf::User(u) => {
                s.user = Some(Arc::new((**u).clone()));
                if u.status == UserStatus::Deleted {
                    s.roles.clear();
                    s.granted = false;
                }
            }
            WhatIf::Membership { role, add, .. } => {
                if *add {
                    if !s.roles.iter().any(|r| r.id == *role) {
                        let name = self.store().get_role(*role).await?.map(|r| r.name).unwrap_or_default();
                        s.roles.push(RoleRef { id: *role, name });
                    }
                } else {
                    s.roles.retain(|r| r.id != *role);
                }
                s.granted = self.grants_of(&s.roles, cache).await?.contains(&s.app_id);
            }
            WhatIf::RoleGrant { role, app, add } => {
                if *add {
                    s.granted = true;
                } else {
                    let others: Vec<RoleRef> = s.roles.iter().filter(|r| r.id != *role).cloned().collect();
                    s.granted = self.grants_of(&others, cache).await?.contains(app);
                }
            }
            WhatIf::RoleDeleted { role } => {
                s.roles.retain(|r| r.id != *role);
                s.granted = self.grants_of(&s.roles, cache).await?.contains(&s.app_id);
            }
            WhatIf::Directory { .. } => {
                if let Some(u) = index.users.get(&s.user_id) {
                    s.user = Some(Arc::new(u.clone()));
                }
                let removes = index.removes.get(&s.user_id);
                let adds = index.adds.get(&s.user_id);
                if removes.is_some() || adds.is_some() {
                    if let Some(r) = removes {
                        s.roles.retain(|x| !r.contains(&x.id));
                    }
                    for role in adds.into_iter().flatten() {
                        if !s.roles.iter().any(|x| x.id == role.id) {
                            s.roles.push(role.clone());
                        }
                    }
                    s.granted = self.grants_of(&s.roles, cache).await?.contains(&s.app_id);
                }
            }
        }
        Ok(())
    }
}
