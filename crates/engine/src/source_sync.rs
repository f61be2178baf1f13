//! Planning a directory-source sync, without I/O: entries read from the directory and the
//! users already linked to them in, the writes of one page out (creates, updates,
//! reactivations, role memberships); suspensions are collected apart and held to the
//! mass-suspension guard at the end of the sync.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use connectors::DirectoryEntry;
use directory::{
    dn_key, AttributeDef, AttributeType, DirectorySource, LinkedUser, SourceBatch, SourceLink, SourceUpdate, User,
    UserInput, UserSource, UserStatus,
};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A person as the directory says they should be here.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The sourced fields (the others are left as they are here).
    pub input: UserInput,
    /// The manager's DN, to resolve to a user of the same source.
    pub manager_dn: Option<String>,
}

/// Turns an entry's attributes into the user fields the source maps. Values that are not
/// valid here (e.g. a malformed e-mail address) are left out with a note; a missing or
/// invalid username makes the entry unusable.
pub fn desired(
    source: &DirectorySource,
    defs: &[AttributeDef],
    entry: &DirectoryEntry,
) -> Result<(Desired, Vec<String>), String> {
    let mut input = UserInput::default();
    let mut manager_dn = None;
    let mut custom = Map::new();
    for (target, ldap) in &source.attributes {
        let first = entry.first(ldap).map(str::to_owned);
        match target.as_str() {
            "username" => input.username = first.unwrap_or_default(),
            "email" => input.email = first,
            "first_name" => input.first_name = first,
            "last_name" => input.last_name = first,
            "display_name" => input.display_name = first,
            "title" => input.title = first,
            "department" => input.department = first,
            "phone" => input.phone = first,
            "employee_number" => input.employee_number = first,
            "manager" => manager_dn = first,
            name if directory::UserPath::parse(name).is_some() => {
                if let Some(Ok(path)) = directory::UserPath::parse(name) {
                    // Paths a source cannot write are refused when the source is saved.
                    let _ = input.profile.set(&path, first);
                }
            }
            name => {
                let Some(def) = defs.iter().find(|d| d.name == name) else { continue };
                if let Some(v) = custom_value(def.kind, entry.values(ldap)) {
                    custom.insert(name.to_owned(), v);
                }
            }
        }
    }
    input.attributes = custom;
    if input.username.trim().is_empty() {
        let attr = source.attributes.get("username").map(String::as_str).unwrap_or("username attribute");
        return Err(format!("{}: no {attr} (the username)", entry.dn));
    }
    let mut notes = Vec::new();
    if let Err(errors) = input.clone().normalize_and_validate(defs) {
        for e in &errors.0 {
            if e.field == "username" {
                return Err(format!("{}: the username {:?} {}", entry.dn, input.username, e.reason));
            }
            notes.push(format!("{}: {} {} (left out)", entry.dn, e.field, e.reason));
            clear_field(&mut input, &e.field);
        }
    }
    input.normalize_and_validate(defs).map_err(|e| format!("{}: {e}", entry.dn))?;
    Ok((Desired { input, manager_dn }, notes))
}

fn clear_field(input: &mut UserInput, field: &str) {
    match field {
        "email" => input.email = None,
        "first_name" => input.first_name = None,
        "last_name" => input.last_name = None,
        "display_name" => input.display_name = None,
        "title" => input.title = None,
        "department" => input.department = None,
        "phone" => input.phone = None,
        "employee_number" => input.employee_number = None,
        other => {
            if let Some(name) = other.strip_prefix("attributes.") {
                input.attributes.remove(name);
            } else {
                // A profile attribute or one of its values (`phone_numbers[1].value`): the
                // attribute is left out as a whole.
                let head = &other[..other.find(['[', '.']).unwrap_or(other.len())];
                if let Some(v) = input.profile.text_mut(head) {
                    *v = None;
                } else if head == "addresses" {
                    input.profile.addresses.clear();
                } else if let Some(list) = input.profile.list_mut(head) {
                    list.clear();
                }
            }
        }
    }
}

/// An LDAP value as a custom attribute value of the declared type.
fn custom_value(kind: AttributeType, values: &[String]) -> Option<Value> {
    let first = values.first()?;
    match kind {
        AttributeType::String => Some(Value::String(first.clone())),
        AttributeType::StringList => Some(Value::Array(values.iter().cloned().map(Value::String).collect())),
        AttributeType::Number => first.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(|n| {
            // Whole numbers stay integers.
            match first.trim().parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => Value::Number(n),
            }
        }),
        AttributeType::Boolean => match first.trim().to_ascii_uppercase().as_str() {
            "TRUE" | "YES" | "1" => Some(Value::Bool(true)),
            "FALSE" | "NO" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        AttributeType::Date => {
            let t = first.trim();
            // Generalized time (20240131120000Z) or a plain date.
            let date = t
                .get(..8)
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
                .or_else(|| NaiveDate::parse_from_str(t.get(..10).unwrap_or(t), "%Y-%m-%d").ok())?;
            Some(Value::String(date.format("%Y-%m-%d").to_string()))
        }
    }
}

/// The user `existing` with the sourced fields replaced by the directory's values.
fn merged(source: &DirectorySource, existing: &User, desired: &Desired, manager_id: Option<Uuid>) -> UserInput {
    let mut out = UserInput::from_user(existing);
    let d = &desired.input;
    for target in source.attributes.keys() {
        match target.as_str() {
            "username" => out.username = d.username.clone(),
            "email" => out.set_email(d.email.clone()),
            "first_name" => out.first_name = d.first_name.clone(),
            "last_name" => out.last_name = d.last_name.clone(),
            "display_name" => out.display_name = d.display_name.clone(),
            "title" => out.title = d.title.clone(),
            "department" => out.department = d.department.clone(),
            "phone" => out.set_phone(d.phone.clone()),
            "employee_number" => out.employee_number = d.employee_number.clone(),
            "manager" => out.manager_id = manager_id,
            path if directory::UserPath::parse(path).is_some() => {
                if let Some(Ok(p)) = directory::UserPath::parse(path) {
                    let value = d.profile.get(&p).and_then(|v| v.as_str().map(str::to_owned));
                    let _ = out.profile.set(&p, value);
                }
            }
            name => match d.attributes.get(name) {
                Some(v) => {
                    out.attributes.insert(name.to_owned(), v.clone());
                }
                None => {
                    out.attributes.remove(name);
                }
            },
        }
    }
    out
}

/// What the planner knows besides the entries of the page.
#[derive(Debug, Default)]
pub struct PlanState {
    /// Users linked to the page's entries, by stable id.
    pub linked: HashMap<String, LinkedUser>,
    /// Users of the source by entry DN (dn_key), for managers; grows as users are created.
    pub by_dn: HashMap<String, Uuid>,
    /// Current members of the mapped roles: (role, user).
    pub members: HashSet<(Uuid, Uuid)>,
}

/// The plan of one page.
#[derive(Debug, Default)]
pub struct PagePlan {
    pub batch: SourceBatch,
    /// Entries whose (active) users the directory disabled: suspended at the end, after the
    /// guard.
    pub to_suspend: Vec<String>,
    /// Users whose manager DN matched nobody yet: (user, manager DN), resolved at the end.
    pub unresolved_managers: Vec<(Uuid, String)>,
    pub created: u64,
    pub updated: u64,
    pub reactivated: u64,
    pub unchanged: u64,
    /// Entries that could not be used, and values left out, with the reason.
    pub errors: Vec<String>,
    pub failed: u64,
}

/// Plans one page of entries. `state.by_dn` and `state.members` are updated with the
/// page's writes, so later pages see them.
pub fn plan_page(
    source: &DirectorySource,
    defs: &[AttributeDef],
    entries: &[DirectoryEntry],
    state: &mut PlanState,
    now: DateTime<Utc>,
) -> PagePlan {
    let mut plan = PagePlan::default();
    let group_keys: Vec<(String, Uuid)> = source.groups.iter().map(|g| (dn_key(&g.group_dn), g.role_id)).collect();
    for entry in entries {
        let (want, notes) = match desired(source, defs, entry) {
            Ok(x) => x,
            Err(reason) => {
                plan.errors.push(reason);
                plan.failed += 1;
                continue;
            }
        };
        plan.errors.extend(notes);
        let manager_id = match &want.manager_dn {
            None => None,
            Some(dn) => state.by_dn.get(&dn_key(dn)).copied(),
        };
        let user_id;
        match state.linked.get(&entry.stable_id) {
            None => {
                let mut input = want.input.clone();
                input.manager_id = manager_id;
                input.status = Some(if entry.disabled { UserStatus::Suspended } else { UserStatus::Active });
                let user = User::new(input, UserSource::Ldap, now);
                user_id = user.id;
                let link = SourceLink {
                    source_id: source.id,
                    user_id,
                    stable_id: entry.stable_id.clone(),
                    dn: entry.dn.clone(),
                    suspended_by_source: entry.disabled,
                };
                plan.batch.creates.push((user, link));
                plan.created += 1;
            }
            Some(linked) => {
                let existing = &linked.user;
                user_id = existing.id;
                if existing.status == UserStatus::Deleted {
                    // Deleted here by an admin: the directory does not bring them back.
                    plan.unchanged += 1;
                    continue;
                }
                let keep_manager = want.manager_dn.is_some() && manager_id.is_none();
                let mut input = merged(source, existing, &want, manager_id);
                if keep_manager {
                    input.manager_id = existing.manager_id;
                }
                let mut link = linked.link.clone();
                link.dn = entry.dn.clone();
                let mut reactivate = false;
                if entry.disabled {
                    if existing.status == UserStatus::Active {
                        plan.to_suspend.push(entry.stable_id.clone());
                    }
                } else if existing.status == UserStatus::Suspended && link.suspended_by_source {
                    input.status = Some(UserStatus::Active);
                    link.suspended_by_source = false;
                    reactivate = true;
                }
                let current = UserInput::from_user(existing);
                if input != current || link != linked.link {
                    let user = existing.updated(input, now);
                    plan.batch.updates.push(SourceUpdate { user, expected_version: existing.version, link });
                    if reactivate {
                        plan.reactivated += 1;
                    } else {
                        plan.updated += 1;
                    }
                } else {
                    plan.unchanged += 1;
                }
            }
        }
        state.by_dn.insert(dn_key(&entry.dn), user_id);
        if let Some(dn) = &want.manager_dn {
            if manager_id.is_none() {
                plan.unresolved_managers.push((user_id, dn.clone()));
            }
        }
        if !group_keys.is_empty() {
            let member_of: HashSet<String> = entry.values("memberOf").iter().map(|d| dn_key(d)).collect();
            for (group, role) in &group_keys {
                let want_member = member_of.contains(group);
                let is_member = state.members.contains(&(*role, user_id));
                if want_member && !is_member {
                    plan.batch.role_adds.push((*role, user_id));
                    state.members.insert((*role, user_id));
                } else if !want_member && is_member {
                    plan.batch.role_removes.push((*role, user_id));
                    state.members.remove(&(*role, user_id));
                }
            }
        }
    }
    plan
}

/// The users of a full sync's source that the directory no longer shows (out of scope or
/// deleted there) and that are still active here: their entries' stable ids.
pub fn missing(links: &[SourceLink], seen: &HashSet<String>) -> Vec<String> {
    links
        .iter()
        .filter(|l| !l.suspended_by_source && !seen.contains(&l.stable_id))
        .map(|l| l.stable_id.clone())
        .collect()
}

/// Whether suspending `suspensions` of `users` users crosses the guard of `percent` %.
pub fn guard_trips(users: u64, suspensions: u64, percent: u32) -> bool {
    suspensions > 0 && suspensions.saturating_mul(100) > u64::from(percent).saturating_mul(users)
}

/// The suspensions of users linked to `stable_ids` that are still active.
pub fn suspensions(linked: &[LinkedUser], now: DateTime<Utc>) -> Vec<SourceUpdate> {
    linked
        .iter()
        .filter(|l| l.user.status == UserStatus::Active)
        .map(|l| {
            let mut input = UserInput::from_user(&l.user);
            input.status = Some(UserStatus::Suspended);
            let mut link = l.link.clone();
            link.suspended_by_source = true;
            SourceUpdate { user: l.user.updated(input, now), expected_version: l.user.version, link }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::{GroupMapping, SourceFlavor, SourceInput, SourceKind};
    use proptest::prelude::*;

    fn source(groups: Vec<GroupMapping>) -> DirectorySource {
        let mut input = SourceInput {
            name: "corp".into(),
            kind: SourceKind::Ldap,
            flavor: SourceFlavor::Openldap,
            url: "ldap://127.0.0.1:389".into(),
            starttls: false,
            bind_dn: "cn=admin,dc=example,dc=com".into(),
            bind_password: Some("x".into()),
            base_dn: "dc=example,dc=com".into(),
            user_filter: None,
            attributes: Some([("cost_code".to_owned(), "departmentNumber".to_owned())].into()),
            groups,
            schedule: None,
            disabled: None,
            guard_percent: None,
            enabled: None,
        };
        input.normalize_and_validate(&defs(), true).unwrap();
        input.into_source(Uuid::now_v7(), directory::now(), directory::now(), 1)
    }

    fn defs() -> Vec<AttributeDef> {
        vec![AttributeDef {
            name: "cost_code".into(),
            kind: AttributeType::String,
            description: None,
            created_at: directory::now(),
        }]
    }

    fn entry(id: &str, uid: &str, extra: &[(&str, &str)], disabled: bool) -> DirectoryEntry {
        let mut attributes: HashMap<String, Vec<String>> = HashMap::new();
        attributes.insert("uid".into(), vec![uid.into()]);
        attributes.insert("mail".into(), vec![format!("{uid}@example.com")]);
        for (k, v) in extra {
            attributes.entry(k.to_lowercase()).or_default().push((*v).into());
        }
        DirectoryEntry {
            stable_id: id.into(),
            dn: format!("uid={uid},ou=people,dc=example,dc=com"),
            disabled,
            change_mark: None,
            attributes,
        }
    }

    fn link_all(source: &DirectorySource, plan: &PagePlan, state: &mut PlanState) {
        for (user, link) in &plan.batch.creates {
            state.linked.insert(link.stable_id.clone(), LinkedUser { link: link.clone(), user: user.clone() });
        }
        for u in &plan.batch.updates {
            state.linked.insert(u.link.stable_id.clone(), LinkedUser { link: u.link.clone(), user: u.user.clone() });
        }
        let _ = source;
    }

    #[test]
    fn new_entries_are_created_with_their_manager_and_custom_attribute() {
        let s = source(vec![]);
        let mut state = PlanState::default();
        let boss = entry("1", "boss", &[], false);
        let ada = entry(
            "2",
            "ada",
            &[("manager", "UID=boss, ou=People,dc=example,dc=com"), ("departmentNumber", "42")],
            false,
        );
        let plan = plan_page(&s, &defs(), &[boss, ada], &mut state, directory::now());
        assert_eq!(plan.created, 2);
        let (boss_user, _) = &plan.batch.creates[0];
        let (ada_user, ada_link) = &plan.batch.creates[1];
        assert_eq!(ada_user.manager_id, Some(boss_user.id));
        assert_eq!(ada_user.source, UserSource::Ldap);
        assert_eq!(ada_user.attributes["cost_code"], "42");
        assert_eq!(ada_link.stable_id, "2");
    }

    #[test]
    fn a_rename_is_an_update_of_the_same_user() {
        let s = source(vec![]);
        let mut state = PlanState::default();
        let plan = plan_page(&s, &defs(), &[entry("1", "ada", &[], false)], &mut state, directory::now());
        link_all(&s, &plan, &mut state);
        let id = plan.batch.creates[0].0.id;
        let plan = plan_page(&s, &defs(), &[entry("1", "ada.king", &[], false)], &mut state, directory::now());
        assert_eq!((plan.created, plan.updated), (0, 1));
        let u = &plan.batch.updates[0];
        assert_eq!((u.user.id, u.user.username.as_str()), (id, "ada.king"));
        assert_eq!(u.link.dn, "uid=ada.king,ou=people,dc=example,dc=com");
        // Reading it again changes nothing.
        link_all(&s, &plan, &mut state);
        let plan = plan_page(&s, &defs(), &[entry("1", "ada.king", &[], false)], &mut state, directory::now());
        assert_eq!((plan.updated, plan.unchanged), (0, 1));
    }

    #[test]
    fn disabled_entries_wait_for_the_guard_and_come_back_when_enabled() {
        let s = source(vec![]);
        let mut state = PlanState::default();
        let plan = plan_page(&s, &defs(), &[entry("1", "ada", &[], false)], &mut state, directory::now());
        link_all(&s, &plan, &mut state);
        let plan = plan_page(&s, &defs(), &[entry("1", "ada", &[], true)], &mut state, directory::now());
        assert_eq!(plan.to_suspend, ["1"]);
        assert!(plan.batch.updates.is_empty());
        let linked: Vec<_> = state.linked.values().cloned().collect();
        let susp = suspensions(&linked, directory::now());
        assert_eq!(susp[0].user.status, UserStatus::Suspended);
        assert!(susp[0].link.suspended_by_source);
        state.linked.insert("1".into(), LinkedUser { link: susp[0].link.clone(), user: susp[0].user.clone() });
        let plan = plan_page(&s, &defs(), &[entry("1", "ada", &[], false)], &mut state, directory::now());
        assert_eq!(plan.reactivated, 1);
        assert_eq!(plan.batch.updates[0].user.status, UserStatus::Active);
        assert!(!plan.batch.updates[0].link.suspended_by_source);
    }

    #[test]
    fn an_admins_suspension_is_left_alone() {
        let s = source(vec![]);
        let mut state = PlanState::default();
        let plan = plan_page(&s, &defs(), &[entry("1", "ada", &[], false)], &mut state, directory::now());
        link_all(&s, &plan, &mut state);
        let l = state.linked.get_mut("1").unwrap();
        l.user.status = UserStatus::Suspended;
        let plan = plan_page(&s, &defs(), &[entry("1", "ada", &[], false)], &mut state, directory::now());
        assert_eq!((plan.reactivated, plan.unchanged), (0, 1));
    }

    #[test]
    fn groups_become_role_memberships() {
        let role = Uuid::now_v7();
        let s = source(vec![GroupMapping { group_dn: "cn=Eng,ou=groups,dc=example,dc=com".into(), role_id: role }]);
        let mut state = PlanState::default();
        let plan = plan_page(
            &s,
            &defs(),
            &[
                entry("1", "ada", &[("memberOf", "CN=eng,OU=groups,DC=example,DC=com")], false),
                entry("2", "bob", &[], false),
            ],
            &mut state,
            directory::now(),
        );
        let ada = plan.batch.creates[0].0.id;
        assert_eq!(plan.batch.role_adds, [(role, ada)]);
        link_all(&s, &plan, &mut state);
        let plan = plan_page(&s, &defs(), &[entry("1", "ada", &[], false)], &mut state, directory::now());
        assert_eq!(plan.batch.role_removes, [(role, ada)]);
    }

    #[test]
    fn bad_values_are_left_out_and_bad_usernames_refused() {
        let s = source(vec![]);
        let mut state = PlanState::default();
        let mut bad_mail = entry("1", "ada", &[], false);
        bad_mail.attributes.insert("mail".into(), vec!["not-an-address".into()]);
        let plan =
            plan_page(&s, &defs(), &[bad_mail, entry("2", "has space", &[], false)], &mut state, directory::now());
        assert_eq!((plan.created, plan.failed), (1, 1));
        assert_eq!(plan.batch.creates[0].0.email, None);
        assert_eq!(plan.errors.len(), 2);
    }

    #[test]
    fn missing_users_and_the_guard() {
        let link = |id: &str, by_source: bool| SourceLink {
            source_id: Uuid::nil(),
            user_id: Uuid::now_v7(),
            stable_id: id.into(),
            dn: String::new(),
            suspended_by_source: by_source,
        };
        let links = [link("a", false), link("b", false), link("c", true)];
        let seen: HashSet<String> = ["a".to_owned()].into();
        assert_eq!(missing(&links, &seen), ["b"]);
        assert!(!guard_trips(10, 2, 20));
        assert!(guard_trips(10, 3, 20));
        assert!(!guard_trips(10, 0, 0));
    }

    proptest! {
        /// Whatever the order of pages, a second pass over the same entries writes nothing.
        #[test]
        fn syncing_twice_is_a_no_op(n in 1usize..40, disabled in proptest::collection::vec(any::<bool>(), 40)) {
            let s = source(vec![]);
            let entries: Vec<_> = (0..n).map(|i| entry(&i.to_string(), &format!("u{i}"), &[], disabled[i])).collect();
            let mut state = PlanState::default();
            let plan = plan_page(&s, &defs(), &entries, &mut state, directory::now());
            prop_assert_eq!(plan.created as usize, n);
            link_all(&s, &plan, &mut state);
            let again = plan_page(&s, &defs(), &entries, &mut state, directory::now());
            prop_assert!(again.batch.creates.is_empty() && again.batch.updates.is_empty());
            prop_assert!(again.to_suspend.is_empty());
        }

        #[test]
        fn the_guard_is_a_percentage(users in 0u64..10_000, s in 0u64..10_000, p in 0u32..=100) {
            let trips = guard_trips(users, s, p);
            prop_assert_eq!(trips, s > 0 && (s as f64) > (users as f64) * f64::from(p) / 100.0);
        }
    }
}
