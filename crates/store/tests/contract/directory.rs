//! The directory half of the storage contract: users, roles, apps, attributes, tokens,
//! audit log and change feed.

use std::sync::Arc;

use directory::{
    Actor, App, AppInput, AttributeDefInput, AttributeType, ChangeKind, Role, RoleInput, User, UserInput, UserSource,
    UserStatus,
};
use serde_json::json;
use store::{AuditQuery, BulkStore, NameQuery, PageRequest, Store, StoreError, TokenRecord, UserQuery};
use uuid::Uuid;

fn actor() -> Actor {
    Actor::token("contract-test")
}

fn user(username: &str) -> User {
    let input = UserInput {
        username: username.into(),
        email: Some(format!("{}@example.com", username.to_lowercase())),
        ..Default::default()
    };
    User::new(input, UserSource::Local, directory::now())
}

fn role(name: &str) -> Role {
    Role::new(RoleInput { name: name.into(), description: None, pushable: false }, directory::now())
}

fn app(name: &str) -> App {
    let input: AppInput = serde_json::from_value(json!({"name": name,
        "connection": {"base_url": "https://app.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}}}))
    .unwrap();
    let (validated, _) = input.validate(None).unwrap();
    App::new(validated, directory::now())
}

async fn last_seq(s: &dyn Store) -> i64 {
    s.changes_after(0, 10_000).await.unwrap().last().map_or(0, |c| c.seq)
}

pub async fn user_round_trip_records_change_and_audit(s: Arc<dyn Store>) {
    let mut u = user("Ada");
    u.attributes.insert("cost_code".into(), json!("R&D"));
    s.create_user(&u, &actor()).await.unwrap();
    assert_eq!(s.get_user(u.id).await.unwrap(), Some(u.clone()));
    let changes = s.changes_after(0, 100).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].kind, changes[0].user_id), (ChangeKind::User, Some(u.id)));
    let audit = s.list_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(audit.items[0].action, "user.create");
    assert_eq!(audit.items[0].actor, actor());
    assert_eq!(audit.items[0].after.as_ref().unwrap()["username"], "Ada");
    assert_eq!(s.get_user(Uuid::now_v7()).await.unwrap(), None);
}

pub async fn duplicate_username_is_refused_case_insensitively(s: Arc<dyn Store>) {
    s.create_user(&user("ada"), &actor()).await.unwrap();
    let seq = last_seq(&*s).await;
    let err = s.create_user(&user("ADA"), &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { field: "username" }), "{err:?}");
    assert_eq!(last_seq(&*s).await, seq, "a failed write must record no change");
    assert_eq!(s.list_audit(&AuditQuery::default()).await.unwrap().items.len(), 1);
}

pub async fn stale_version_changes_nothing(s: Arc<dyn Store>) {
    let u = user("grace");
    s.create_user(&u, &actor()).await.unwrap();
    let mut input = UserInput::from_user(&u);
    input.title = Some("Admiral".into());
    let v2 = u.updated(input.clone(), directory::now());
    s.update_user(&v2, 1, &actor()).await.unwrap();
    let seq = last_seq(&*s).await;
    input.title = Some("Captain".into());
    let stale = u.updated(input, directory::now());
    let err = s.update_user(&stale, 1, &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { current: 2 }), "{err:?}");
    let now = s.get_user(u.id).await.unwrap().unwrap();
    assert_eq!((now.title.as_deref(), now.version), (Some("Admiral"), 2));
    assert_eq!(last_seq(&*s).await, seq);
}

pub async fn users_page_search_and_filter(s: Arc<dyn Store>) {
    let r = role("Engineering");
    s.create_role(&r, &actor()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut u = user(&format!("user{i:02}"));
        if i % 5 == 0 {
            u.status = UserStatus::Suspended;
        }
        s.create_user(&u, &actor()).await.unwrap();
        if i % 2 == 0 {
            s.add_role_user(r.id, u.id, &actor()).await.unwrap();
        }
        ids.push(u.username);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            s.list_users(&UserQuery { page: PageRequest { limit: 10, cursor }, ..Default::default() }).await.unwrap();
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|u| u.username));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every user once, in username order");
    let q = |q: &str| UserQuery { q: Some(q.into()), ..Default::default() };
    assert_eq!(s.list_users(&q("USER1")).await.unwrap().items.len(), 10);
    assert_eq!(s.list_users(&q("%")).await.unwrap().items.len(), 0, "LIKE wildcards are escaped");
    assert_eq!(s.list_users(&q("user07@example")).await.unwrap().items.len(), 1, "searches e-mail");
    let suspended = UserQuery { status: Some(UserStatus::Suspended), ..Default::default() };
    assert_eq!(s.list_users(&suspended).await.unwrap().items.len(), 5);
    let members = UserQuery { role: Some(r.id), ..Default::default() };
    assert_eq!(s.list_users(&members).await.unwrap().items.len(), 13);
    let bad = UserQuery { page: PageRequest { limit: 10, cursor: Some("garbage".into()) }, ..Default::default() };
    assert!(matches!(s.list_users(&bad).await, Err(StoreError::InvalidCursor)));
}

pub async fn deleting_a_user_frees_the_name_and_leaves_roles(s: Arc<dyn Store>) {
    let r = role("Sales");
    s.create_role(&r, &actor()).await.unwrap();
    let u = user("alan");
    s.create_user(&u, &actor()).await.unwrap();
    assert!(s.add_role_user(r.id, u.id, &actor()).await.unwrap());
    assert!(matches!(s.delete_user(u.id, Some(7), &actor()).await, Err(StoreError::VersionConflict { current: 1 })));
    let seq = last_seq(&*s).await;
    let deleted = s.delete_user(u.id, Some(1), &actor()).await.unwrap();
    assert_eq!((deleted.status, deleted.version), (UserStatus::Deleted, 2));
    let changes = s.changes_after(seq, 100).await.unwrap();
    let kinds: Vec<_> = changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::RoleMembership, ChangeKind::User]);
    assert!(s.roles_of_user(u.id).await.unwrap().is_empty());
    assert!(s.list_users(&UserQuery::default()).await.unwrap().items.is_empty());
    let gone = UserQuery { status: Some(UserStatus::Deleted), ..Default::default() };
    assert_eq!(s.list_users(&gone).await.unwrap().items.len(), 1);
    assert!(matches!(s.delete_user(u.id, None, &actor()).await, Err(StoreError::NotFound)));
    assert!(matches!(s.add_role_user(r.id, u.id, &actor()).await, Err(StoreError::NotFound)));
    s.create_user(&user("ALAN"), &actor()).await.unwrap();
}

pub async fn roles_members_and_grants(s: Arc<dyn Store>) {
    let r = role("Support");
    s.create_role(&r, &actor()).await.unwrap();
    assert!(matches!(s.create_role(&role("support"), &actor()).await, Err(StoreError::Duplicate { field: "name" })));
    let u = user("linus");
    s.create_user(&u, &actor()).await.unwrap();
    let a = app("Wiki");
    s.create_app(&a, "v1.cipher", &actor()).await.unwrap();
    assert!(s.add_role_user(r.id, u.id, &actor()).await.unwrap());
    assert!(!s.add_role_user(r.id, u.id, &actor()).await.unwrap(), "adding twice is a no-op");
    assert!(s.add_role_app(r.id, a.id, &actor()).await.unwrap());
    assert_eq!(s.apps_of_role(r.id).await.unwrap(), vec![a.clone()]);
    assert_eq!(s.roles_of_app(a.id).await.unwrap(), vec![r.clone()]);
    assert_eq!(s.roles_of_user(u.id).await.unwrap(), vec![r.clone()]);
    assert!(matches!(s.add_role_user(r.id, Uuid::now_v7(), &actor()).await, Err(StoreError::NotFound)));
    assert!(matches!(s.add_role_app(Uuid::now_v7(), a.id, &actor()).await, Err(StoreError::NotFound)));
    let renamed = r.updated(
        RoleInput { name: "Customer Support".into(), description: Some("Tier 1".into()), pushable: false },
        directory::now(),
    );
    s.update_role(&renamed, 1, &actor()).await.unwrap();
    assert_eq!(s.get_role(r.id).await.unwrap().unwrap().name, "Customer Support");
    let seq = last_seq(&*s).await;
    s.delete_role(r.id, Some(2), &actor()).await.unwrap();
    let changes = s.changes_after(seq, 100).await.unwrap();
    assert!(
        changes.iter().any(|c| c.kind == ChangeKind::RoleMembership && c.user_id == Some(u.id)),
        "members of a deleted role are changes for the engine"
    );
    assert!(changes.iter().any(|c| c.kind == ChangeKind::RoleApp && c.app_id == Some(a.id)));
    assert!(s.roles_of_user(u.id).await.unwrap().is_empty());
    assert!(!s.remove_role_app(Uuid::now_v7(), a.id, &actor()).await.is_ok_and(|x| x));
}

pub async fn remove_membership_reports_whether_it_existed(s: Arc<dyn Store>) {
    let r = role("Ops");
    s.create_role(&r, &actor()).await.unwrap();
    let u = user("ken");
    s.create_user(&u, &actor()).await.unwrap();
    assert!(!s.remove_role_user(r.id, u.id, &actor()).await.unwrap());
    s.add_role_user(r.id, u.id, &actor()).await.unwrap();
    assert!(s.remove_role_user(r.id, u.id, &actor()).await.unwrap());
    let audit = s.list_audit(&AuditQuery { target_type: Some("role".into()), ..Default::default() }).await.unwrap();
    let actions: Vec<_> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["role.remove_user", "role.add_user", "role.create"]);
}

pub async fn app_credentials_are_kept_apart(s: Arc<dyn Store>) {
    let a = app("CRM");
    s.create_app(&a, "v1.k1.first", &actor()).await.unwrap();
    assert_eq!(s.get_app(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(s.get_app_credential(a.id).await.unwrap().as_deref(), Some("v1.k1.first"));
    let mut input = AppInput::from_app(&a);
    input.provisioning.enabled = true;
    let (validated, _) = input.validate(Some(&directory::Secret::Bearer { token: "t".into() })).unwrap();
    let v2 = a.updated(validated, directory::now());
    s.update_app(&v2, None, 1, &actor()).await.unwrap();
    assert_eq!(s.get_app_credential(a.id).await.unwrap().as_deref(), Some("v1.k1.first"), "None keeps the credential");
    let v3 = App { version: 3, ..v2.clone() };
    s.update_app(&v3, Some("v1.k1.second"), 2, &actor()).await.unwrap();
    assert_eq!(s.get_app_credential(a.id).await.unwrap().as_deref(), Some("v1.k1.second"));
    let audit = s.list_audit(&AuditQuery { target_id: Some(a.id.to_string()), ..Default::default() }).await.unwrap();
    assert!(audit.items.iter().all(|e| !e.after.as_ref().is_some_and(|v| v.to_string().contains("v1.k1"))));
    assert!(matches!(s.create_app(&app("crm"), "x", &actor()).await, Err(StoreError::Duplicate { field: "name" })));
    let page = s.list_apps(&NameQuery::default()).await.unwrap();
    assert_eq!(page.items.len(), 1);
    s.delete_app(a.id, None, &actor()).await.unwrap();
    assert_eq!(s.get_app(a.id).await.unwrap(), None);
    assert_eq!(s.get_app_credential(a.id).await.unwrap(), None);
}

pub async fn attribute_definitions(s: Arc<dyn Store>) {
    let mut input = AttributeDefInput {
        name: "cost_code".into(),
        kind: AttributeType::String,
        description: Some("Finance code".into()),
    };
    input.validate().unwrap();
    let def = input.into_def(directory::now());
    s.create_attribute_def(&def, &actor()).await.unwrap();
    assert!(matches!(s.create_attribute_def(&def, &actor()).await, Err(StoreError::Duplicate { .. })));
    assert_eq!(s.list_attribute_defs().await.unwrap(), vec![def]);
}

pub async fn tokens_are_found_by_lookup(s: Arc<dyn Store>) {
    assert_eq!(s.count_tokens().await.unwrap(), 0);
    let t = TokenRecord {
        id: Uuid::now_v7(),
        name: "ci".into(),
        lookup: "00ff".into(),
        hash: "$argon2id$v=19$...".into(),
        created_at: directory::now(),
        revoked_at: None,
        last_used_at: None,
    };
    s.create_token(&t, &Actor::cli()).await.unwrap();
    assert_eq!(s.count_tokens().await.unwrap(), 1);
    assert_eq!(s.find_token_by_lookup("00ff").await.unwrap(), Some(t));
    assert_eq!(s.find_token_by_lookup("00fe").await.unwrap(), None);
}

/// Tokens are listed (not the revoked ones), revoked once with an audit entry, and re-keyed
/// with their last use recorded.
pub async fn tokens_are_listed_revoked_and_rekeyed(s: Arc<dyn Store>) {
    let token = |name: &str, lookup: &str| TokenRecord {
        id: Uuid::now_v7(),
        name: name.into(),
        lookup: lookup.into(),
        hash: "$argon2id$v=19$...".into(),
        created_at: directory::now(),
        revoked_at: None,
        last_used_at: None,
    };
    let (a, b) = (token("ci", "aa"), token("ops", "bb"));
    s.create_token(&a, &Actor::cli()).await.unwrap();
    s.create_token(&b, &Actor::cli()).await.unwrap();
    assert_eq!(s.list_tokens().await.unwrap(), vec![a.clone(), b.clone()]);
    let at = directory::now();
    s.token_used(a.id, "aa-keyed", at).await.unwrap();
    assert_eq!(s.find_token_by_lookup("aa").await.unwrap(), None, "the old lookup is gone");
    assert_eq!(s.find_token_by_lookup("aa-keyed").await.unwrap().unwrap().last_used_at, Some(at));
    s.revoke_token(b.id, &Actor::token("ci")).await.unwrap();
    assert!(matches!(s.revoke_token(b.id, &Actor::cli()).await, Err(StoreError::NotFound)));
    assert!(matches!(s.revoke_token(Uuid::now_v7(), &Actor::cli()).await, Err(StoreError::NotFound)));
    assert_eq!(s.list_tokens().await.unwrap().into_iter().map(|t| t.name).collect::<Vec<_>>(), ["ci"]);
    assert!(s.find_token_by_lookup("bb").await.unwrap().unwrap().revoked_at.is_some());
    assert_eq!(s.count_tokens().await.unwrap(), 1);
    let audit = s.list_audit(&Default::default()).await.unwrap();
    assert_eq!(audit.items[0].action, "token.revoke");
    assert_eq!(audit.items[0].target_id, b.id.to_string());
}

pub async fn audit_pages_newest_first(s: Arc<dyn Store>) {
    for i in 0..7 {
        s.create_role(&role(&format!("r{i}")), &actor()).await.unwrap();
    }
    let first =
        s.list_audit(&AuditQuery { page: PageRequest { limit: 4, cursor: None }, ..Default::default() }).await.unwrap();
    assert_eq!(first.items.len(), 4);
    assert_eq!(first.items[0].after.as_ref().unwrap()["name"], "r6");
    let second = s
        .list_audit(&AuditQuery { page: PageRequest { limit: 4, cursor: first.next_cursor }, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(second.items.len(), 3);
    assert_eq!(second.next_cursor, None);
    assert!(first.items.last().unwrap().id > second.items[0].id);
}

pub async fn change_feed_is_ordered_and_resumable(s: Arc<dyn Store>) {
    for i in 0..30 {
        s.create_user(&user(&format!("u{i}")), &actor()).await.unwrap();
    }
    let first = s.changes_after(0, 10).await.unwrap();
    assert_eq!(first.len(), 10);
    let rest = s.changes_after(first[9].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 20);
    let all: Vec<_> = first.iter().chain(&rest).map(|c| c.seq).collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]));
}

fn with_email(username: &str, email: &str) -> User {
    let mut u = user(username);
    u.email = Some(email.into());
    u
}

fn email_taken<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Duplicate { field: "email" }))
}

pub async fn two_users_cannot_share_an_email_in_any_case(s: Arc<dyn Store>) {
    let ada = with_email("ada", "Ada@Example.com");
    s.create_user(&ada, &actor()).await.unwrap();
    let seq = last_seq(&*s).await;
    // Any case, spaces around, NFKC (a full-width "a").
    for email in ["ada@example.com", " ADA@EXAMPLE.COM", "\u{FF41}da@example.com"] {
        assert!(email_taken(s.create_user(&with_email("other", email), &actor()).await), "{email}");
    }
    let bob = with_email("bob", "bob@example.com");
    s.create_user(&bob, &actor()).await.unwrap();
    let moved = User { email: Some("ADA@example.com".into()), version: bob.version + 1, ..bob.clone() };
    assert!(email_taken(s.update_user(&moved, bob.version, &actor()).await));
    assert_eq!(s.get_user(bob.id).await.unwrap(), Some(bob.clone()), "a refused write changes nothing");
    assert_eq!(last_seq(&*s).await, seq + 1, "only Bob's creation is in the feed");
    // A user keeps their own address (in another case too); a taken username is said first.
    let recased = User { email: Some("ada@EXAMPLE.com".into()), version: ada.version + 1, ..ada.clone() };
    s.update_user(&recased, ada.version, &actor()).await.unwrap();
    let dup = s.create_user(&with_email("ADA", "ada@example.com"), &actor()).await;
    assert!(matches!(dup, Err(StoreError::Duplicate { field: "username" })), "{dup:?}");
    assert_eq!(s.users_by_email("ADA@example.COM").await.unwrap().iter().map(|u| u.id).collect::<Vec<_>>(), [ada.id]);
    // A deleted user's address is free again.
    s.delete_user(ada.id, None, &actor()).await.unwrap();
    s.create_user(&with_email("ada2", "ada@example.com"), &actor()).await.unwrap();
    assert!(s.email_conflicts().await.unwrap().is_empty());
}

pub async fn racing_writers_cannot_both_take_one_email(s: Arc<dyn Store>) {
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = s.clone();
        racers
            .spawn(async move { s.create_user(&with_email(&format!("racer{i}"), "Race@example.com"), &actor()).await });
    }
    let (mut won, mut refused) = (0, 0);
    while let Some(r) = racers.join_next().await {
        match r.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Duplicate { field: "email" }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((won, refused), (1, 7));
    assert_eq!(s.users_by_email("race@example.com").await.unwrap().len(), 1);
}

/// A hold keeps the planner from the changes written while it is open, and once released they
/// come in one read, beyond the read's limit (a SCIM Bulk request is planned in one pass).
pub async fn a_hold_keeps_the_planner_back_until_released(s: Arc<dyn Store>) {
    s.create_user(&user("before"), &actor()).await.unwrap();
    assert!(s.changes_past_holds(0).await.unwrap().is_empty(), "no hold, nothing held");
    let start = last_seq(&*s).await;
    let hold = s.hold_changes(std::time::Duration::from_secs(300)).await.unwrap();
    for i in 0..5 {
        s.create_user(&user(&format!("held{i}")), &actor()).await.unwrap();
    }
    // The raw feed shows everything; the planner sees nothing past the hold's start.
    assert_eq!(s.changes_after(0, 100).await.unwrap().len(), 6);
    let planned = s.changes_to_plan(0, 100).await.unwrap();
    assert_eq!(planned.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![start]);
    assert!(s.changes_to_plan(start, 100).await.unwrap().is_empty(), "nothing held is planned");
    // The held changes are named, so that a pass planning the pairs of earlier changes leaves
    // theirs alone; before the hold there are none.
    assert_eq!(s.changes_past_holds(start).await.unwrap().len(), 5);
    assert_eq!(s.changes_past_holds(start + 2).await.unwrap().len(), 3);
    s.release_changes(hold).await.unwrap();
    assert_eq!(s.changes_past_holds(start).await.unwrap().len(), 5, "until the hold's own pass");
    let end = last_seq(&*s).await;
    assert!(s.changes_past_holds(end).await.unwrap().is_empty());
    // Once released, a read that reaches into the hold's changes takes all of them.
    let all = s.changes_to_plan(start, 2).await.unwrap();
    assert_eq!(all.len(), 5, "the held changes come in one read: {all:?}");
    // A read that ends before the hold began stays as it was.
    assert_eq!(s.changes_to_plan(0, 1).await.unwrap().len(), 1);
    // Releasing twice is harmless; a lapsed hold (a writer that crashed) holds nothing back.
    s.release_changes(hold).await.unwrap();
    let lapsed = s.hold_changes(std::time::Duration::ZERO).await.unwrap();
    s.create_user(&user("after"), &actor()).await.unwrap();
    assert_eq!(s.changes_to_plan(last_seq(&*s).await - 1, 100).await.unwrap().len(), 1);
    s.release_changes(lapsed).await.unwrap();
}

crate::contract!(
    two_users_cannot_share_an_email_in_any_case,
    racing_writers_cannot_both_take_one_email,
    user_round_trip_records_change_and_audit,
    duplicate_username_is_refused_case_insensitively,
    stale_version_changes_nothing,
    users_page_search_and_filter,
    deleting_a_user_frees_the_name_and_leaves_roles,
    roles_members_and_grants,
    remove_membership_reports_whether_it_existed,
    app_credentials_are_kept_apart,
    attribute_definitions,
    tokens_are_found_by_lookup,
    tokens_are_listed_revoked_and_rekeyed,
    audit_pages_newest_first,
    change_feed_is_ordered_and_resumable,
    a_hold_keeps_the_planner_back_until_released,
);

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let u = user("persisted");
    {
        let s = store::SqliteStore::open(&path).await.unwrap();
        s.create_user(&u, &actor()).await.unwrap();
        s.close().await;
    }
    let s = store::SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.get_user(u.id).await.unwrap(), Some(u));
}

/// `BulkStore` is not part of `Store`: each backend's store is given to the test itself.
async fn bulk_import_writes_users_members_changes_and_audit<S: Store + BulkStore>(s: S) {
    let (r1, r2) = (role("Imported"), role("Also imported"));
    s.create_role(&r1, &actor()).await.unwrap();
    s.create_role(&r2, &actor()).await.unwrap();
    let seq = last_seq(&s).await;
    let mut users: Vec<User> = (0..1200).map(|i| user(&format!("bulk{i:04}"))).collect();
    users[7].email = None;
    s.import_users(&users, &[r1.id, r2.id], &actor()).await.unwrap();
    assert_eq!(s.get_user(users[0].id).await.unwrap().as_ref(), Some(&users[0]));
    assert_eq!(s.get_user(users[7].id).await.unwrap().as_ref(), Some(&users[7]));
    assert_eq!(s.get_user(users[1199].id).await.unwrap().as_ref(), Some(&users[1199]));
    assert_eq!(s.roles_of_user(users[600].id).await.unwrap().len(), 2);
    // Each user, then their memberships, in order; no audit entry explains them one by one.
    let changes = s.changes_after(seq, 10_000).await.unwrap();
    assert_eq!(changes.len(), 3 * users.len());
    assert_eq!((changes[0].kind, changes[0].user_id), (ChangeKind::User, Some(users[0].id)));
    assert_eq!((changes[1].kind, changes[1].role_id), (ChangeKind::RoleMembership, Some(r1.id)));
    assert_eq!(
        (changes[5].kind, changes[5].role_id, changes[5].user_id),
        (ChangeKind::RoleMembership, Some(r2.id), Some(users[1].id))
    );
    assert!(changes.iter().all(|c| c.audit_id.is_none()));
    let created = AuditQuery { target_id: Some(users[1199].id.to_string()), ..Default::default() };
    let entry = &s.list_audit(&created).await.unwrap().items[0];
    assert_eq!((entry.action.as_str(), entry.target_type.as_str()), ("user.create", "user"));
    assert_eq!(entry.after.as_ref().unwrap()["username"], "bulk1199");
    let joined = AuditQuery {
        target_id: Some(r2.id.to_string()),
        page: PageRequest { limit: 500, cursor: None },
        ..Default::default()
    };
    let entry = &s.list_audit(&joined).await.unwrap().items[0];
    assert_eq!(entry.action, "role.add_user");
    assert_eq!(entry.after, Some(json!({"role_id": r2.id, "user_id": users[1199].id})));
    // A later write's audit entry explains its own change only.
    let later = user("later");
    s.create_user(&later, &actor()).await.unwrap();
    let changes = s.changes_after(seq, 10_000).await.unwrap();
    assert!(changes[..3 * users.len()].iter().all(|c| c.audit_id.is_none()));
    assert!(changes.last().unwrap().audit_id.is_some());

    // A batch fails as a whole: a taken username, a taken address, a missing role.
    let seq = last_seq(&s).await;
    let fresh = user("fresh");
    let r = s.import_users(&[fresh.clone(), user("BULK0001")], &[], &actor()).await;
    assert!(matches!(r, Err(StoreError::Duplicate { field: "username" })), "{r:?}");
    let r = s.import_users(&[fresh.clone(), with_email("other", "Bulk0002@example.com")], &[], &actor()).await;
    assert!(email_taken(r));
    let r = s.import_users(std::slice::from_ref(&fresh), &[Uuid::now_v7()], &actor()).await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert_eq!(s.get_user(fresh.id).await.unwrap(), None);
    assert_eq!(last_seq(&s).await, seq, "nothing written");
}

#[tokio::test]
async fn sqlite_bulk_import() {
    let dir = tempfile::tempdir().unwrap();
    let s = store::SqliteStore::open(&dir.path().join("bulk.db")).await.unwrap();
    bulk_import_writes_users_members_changes_and_audit(s).await;
}

#[tokio::test]
async fn postgres_bulk_import() {
    let db = testkit::postgres::TestDatabase::create().await;
    let s = store::PostgresStore::connect(&db.url, crate::pg_options()).await.unwrap();
    bulk_import_writes_users_members_changes_and_audit(s).await;
}
