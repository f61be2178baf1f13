//! The inbound-SCIM half of the storage contract: clients, users and groups with their
//! `externalId`, and searches whose filters each backend renders as SQL.

use std::sync::Arc;

use directory::{
    Actor, AttributeDefInput, AttributeType, ChangeKind, Role, RoleInput, User, UserInput, UserSource, UserStatus,
};
use serde_json::json;
use store::scim::{
    CompareOp, FilterValue, GroupField, ResourceFilter, RoleScope, ScimClientRecord, ScimGroup, ScimQuery, ScimScope,
    ScimUser, UserField, UserScope,
};
use store::{Store, StoreError};
use uuid::Uuid;

fn actor() -> Actor {
    Actor { kind: "scim_client".into(), name: "Entra".into() }
}

fn scim_user(username: &str, title: Option<&str>, email: Option<&str>) -> ScimUser {
    let input = UserInput {
        username: username.into(),
        title: title.map(str::to_owned),
        email: email.map(str::to_owned),
        ..Default::default()
    };
    ScimUser {
        user: User::new(input, UserSource::Scim, directory::now()),
        external_id: Some(format!("ext-{username}")),
        owner: None,
    }
}

fn q<F>(filter: ResourceFilter<F>) -> ScimQuery<F> {
    ScimQuery { filter, sort: None, offset: 0, count: 100 }
}

fn cmp(f: UserField, op: CompareOp, v: &str) -> ResourceFilter<UserField> {
    ResourceFilter::Compare(f, op, FilterValue::Text(v.into()))
}

async fn names(s: &dyn Store, f: ResourceFilter<UserField>) -> Vec<String> {
    let (n, users) = s.scim_users(&q(f)).await.unwrap();
    let mut names: Vec<String> = users.into_iter().map(|u| u.user.username).collect();
    assert_eq!(n as usize, names.len());
    names.sort();
    names
}

pub async fn clients_are_created_found_and_revoked(s: Arc<dyn Store>) {
    let c = ScimClientRecord {
        id: Uuid::now_v7(),
        name: "Okta".into(),
        lookup: "abc".into(),
        hash: "$argon2id$x".into(),
        created_at: directory::now(),
        revoked_at: None,
        scope: ScimScope::NEW,
        legacy_scope: false,
    };
    s.create_scim_client(&c, &Actor::token("admin")).await.unwrap();
    assert_eq!(s.find_scim_client_by_lookup("abc").await.unwrap(), Some(c.clone()));
    assert_eq!(s.list_scim_clients().await.unwrap(), vec![c.clone()]);
    s.revoke_scim_client(c.id, &Actor::token("admin")).await.unwrap();
    assert!(s.find_scim_client_by_lookup("abc").await.unwrap().unwrap().revoked_at.is_some());
    assert!(s.list_scim_clients().await.unwrap().is_empty());
    assert!(matches!(s.revoke_scim_client(c.id, &Actor::token("admin")).await, Err(StoreError::NotFound)));
    let audit = s.list_audit(&Default::default()).await.unwrap();
    let actions: Vec<&str> = audit.items.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["scim_client.revoke", "scim_client.create"]);
}

pub async fn filters_run_as_sql(s: Arc<dyn Store>) {
    s.create_attribute_def(
        &AttributeDefInput { name: "tags".into(), kind: AttributeType::StringList, description: None }
            .into_def(directory::now()),
        &actor(),
    )
    .await
    .unwrap();
    s.create_attribute_def(
        &AttributeDefInput { name: "level".into(), kind: AttributeType::Number, description: None }
            .into_def(directory::now()),
        &actor(),
    )
    .await
    .unwrap();
    let mut ada = scim_user("Ada", Some("Engineer"), Some("ada@example.com"));
    ada.user.attributes.insert("tags".into(), json!(["oncall", "Rust"]));
    ada.user.attributes.insert("level".into(), json!(7));
    let bob = scim_user("bob", None, Some("bob@corp.test"));
    let mut eve = scim_user("eve", Some("O'Hacker'); DROP TABLE users; --"), None);
    eve.user.status = UserStatus::Suspended;
    for u in [&ada, &bob, &eve] {
        s.scim_save_user(u, None, None, &actor()).await.unwrap();
    }
    use CompareOp::*;
    use UserField::*;
    assert_eq!(names(&*s, cmp(Username, Eq, "ADA")).await, ["Ada"], "userName ignores case");
    assert_eq!(names(&*s, cmp(ExternalId, Eq, "EXT-ADA")).await, Vec::<String>::new(), "externalId is case-exact");
    assert_eq!(names(&*s, cmp(ExternalId, Eq, "ext-Ada")).await, ["Ada"]);
    assert_eq!(names(&*s, cmp(Email, Co, "EXAMPLE")).await, ["Ada"]);
    assert_eq!(names(&*s, cmp(Email, Sw, "bob@")).await, ["bob"]);
    assert_eq!(names(&*s, cmp(Email, Ew, ".test")).await, ["bob"]);
    assert_eq!(names(&*s, cmp(Username, Gt, "b")).await, ["bob", "eve"]);
    assert_eq!(names(&*s, cmp(Username, Le, "bob")).await, ["Ada", "bob"]);
    assert_eq!(names(&*s, cmp(Title, Ne, "Engineer")).await, ["bob", "eve"], "ne matches missing values");
    assert_eq!(names(&*s, ResourceFilter::Present(Title)).await, ["Ada", "eve"]);
    assert_eq!(names(&*s, cmp(Title, Co, "DROP TABLE")).await, ["eve"], "values are bound");
    assert_eq!(names(&*s, ResourceFilter::Compare(Active, Eq, FilterValue::Bool(false))).await, ["eve"]);
    assert_eq!(
        names(&*s, ResourceFilter::not(ResourceFilter::Compare(Active, Eq, FilterValue::Bool(false)))).await,
        ["Ada", "bob"]
    );
    let tags = || Custom { name: "tags".into(), kind: AttributeType::StringList };
    let level = || Custom { name: "level".into(), kind: AttributeType::Number };
    assert_eq!(names(&*s, cmp(tags(), Eq, "rust")).await, ["Ada"]);
    assert_eq!(names(&*s, ResourceFilter::Present(tags())).await, ["Ada"]);
    assert_eq!(names(&*s, ResourceFilter::Compare(level(), Ge, FilterValue::Number(7.0))).await, ["Ada"]);
    assert_eq!(names(&*s, ResourceFilter::Compare(level(), Lt, FilterValue::Number(7.0))).await, Vec::<String>::new());
    assert_eq!(
        names(&*s, ResourceFilter::Compare(Created, Gt, FilterValue::Text("2000-01-01T00:00:00Z".into()))).await,
        ["Ada", "bob", "eve"]
    );
    assert_eq!(
        names(
            &*s,
            ResourceFilter::or(
                cmp(Username, Eq, "bob"),
                ResourceFilter::and(cmp(Title, Sw, "eng"), ResourceFilter::True)
            )
        )
        .await,
        ["Ada", "bob"]
    );
    // Sorting (missing last when ascending) and windows.
    let sorted = s
        .scim_users(&ScimQuery { filter: ResourceFilter::True, sort: Some((Title, false)), offset: 0, count: 10 })
        .await
        .unwrap()
        .1
        .into_iter()
        .map(|u| u.user.username)
        .collect::<Vec<_>>();
    assert_eq!(sorted, ["Ada", "eve", "bob"]);
    let (n, page) = s
        .scim_users(&ScimQuery { filter: ResourceFilter::True, sort: Some((Username, true)), offset: 1, count: 1 })
        .await
        .unwrap();
    assert_eq!((n, page[0].user.username.as_str()), (3, "bob"));
    let (n, none) =
        s.scim_users(&ScimQuery { filter: ResourceFilter::True, sort: None, offset: 0, count: 0 }).await.unwrap();
    assert_eq!((n, none.len()), (3, 0));
    // A type mismatch is an invalid filter, not a crash.
    let bad = s.scim_users(&q(ResourceFilter::Compare(Active, Gt, FilterValue::Bool(true)))).await;
    assert!(matches!(bad, Err(StoreError::InvalidState(m)) if m.starts_with("invalid filter")));
}

pub async fn groups_save_members_in_one_transaction(s: Arc<dyn Store>) {
    let a = scim_user("ann", None, None);
    let b = scim_user("ben", None, None);
    for u in [&a, &b] {
        s.scim_save_user(u, None, None, &actor()).await.unwrap();
    }
    let g = ScimGroup {
        role: Role::new(RoleInput { name: "Staff".into(), description: None, pushable: false }, directory::now()),
        external_id: Some("G1".into()),
        owner: None,
    };
    s.scim_save_group(&g, Some(&[a.user.id, b.user.id]), None, &actor()).await.unwrap();
    let members: Vec<String> = s.scim_members(g.role.id).await.unwrap().into_iter().map(|m| m.username).collect();
    assert_eq!(members, ["ann", "ben"]);
    assert_eq!(s.scim_group(g.role.id).await.unwrap(), Some(g.clone()));
    let seq = s.changes_after(0, 1000).await.unwrap().len();
    // Replace the members: ben leaves, with a change for the engine.
    let g2 = ScimGroup {
        role: g.role.updated(RoleInput { name: "Staff".into(), description: None, pushable: false }, directory::now()),
        external_id: None,
        owner: None,
    };
    s.scim_save_group(&g2, Some(&[a.user.id]), Some(g.role.version), &actor()).await.unwrap();
    let changes = s.changes_after(0, 1000).await.unwrap();
    assert!(changes[seq..].iter().any(|c| c.kind == ChangeKind::RoleMembership && c.user_id == Some(b.user.id)));
    // A stale version or an unknown member changes nothing.
    let stale = s.scim_save_group(&g2, Some(&[]), Some(g.role.version), &actor()).await;
    assert!(matches!(stale, Err(StoreError::VersionConflict { .. })));
    let g3 = ScimGroup {
        role: g2
            .role
            .updated(RoleInput { name: "Staff 2".into(), description: None, pushable: false }, directory::now()),
        external_id: None,
        owner: None,
    };
    let missing = s.scim_save_group(&g3, Some(&[a.user.id, Uuid::now_v7()]), Some(g2.role.version), &actor()).await;
    assert!(matches!(missing, Err(StoreError::MissingReference { .. })));
    assert_eq!(s.scim_group(g.role.id).await.unwrap().unwrap().role.name, "Staff");
    // Filters on groups: by member, by name.
    let by_member = s
        .scim_groups(&q(ResourceFilter::Compare(
            GroupField::MemberId,
            CompareOp::Eq,
            FilterValue::Text(a.user.id.to_string()),
        )))
        .await
        .unwrap();
    assert_eq!(by_member.0, 1);
    let by_name = s
        .scim_groups(&q(ResourceFilter::Compare(
            GroupField::DisplayName,
            CompareOp::Eq,
            FilterValue::Text("STAFF".into()),
        )))
        .await
        .unwrap();
    assert_eq!(by_name.1[0].role.id, g.role.id);
    let by_ben = s
        .scim_groups(&q(ResourceFilter::Any(Box::new(ResourceFilter::Compare(
            GroupField::MemberName,
            CompareOp::Eq,
            FilterValue::Text("ben".into()),
        )))))
        .await
        .unwrap();
    assert_eq!(by_ben.0, 0);
}

/// A client's scope is stored, changed by an admin (which clears the legacy flag) and re-keyed;
/// the users and roles a client created, and the pushable roles, are what its scope filters
/// select.
pub async fn client_scopes_are_stored_and_select_owned_sourced_and_pushable_objects(s: Arc<dyn Store>) {
    let admin = Actor::token("admin");
    let legacy = ScimClientRecord {
        id: Uuid::now_v7(),
        name: "Old IdP".into(),
        lookup: "old".into(),
        hash: "$argon2id$x".into(),
        created_at: directory::now(),
        revoked_at: None,
        scope: ScimScope::ALL,
        legacy_scope: true,
    };
    s.create_scim_client(&legacy, &admin).await.unwrap();
    assert_eq!(s.find_scim_client_by_lookup("old").await.unwrap(), Some(legacy.clone()));
    let src = Uuid::now_v7();
    let narrowed =
        ScimScope { users: UserScope::Source(src), roles: RoleScope::Pushable, read_only: true, passwords: false };
    let got = s.set_scim_client_scope(legacy.id, &narrowed, &admin).await.unwrap();
    assert_eq!((got.scope, got.legacy_scope), (narrowed, false));
    assert_eq!(s.list_scim_clients().await.unwrap()[0].scope, narrowed);
    assert!(matches!(s.set_scim_client_scope(Uuid::now_v7(), &narrowed, &admin).await, Err(StoreError::NotFound)));
    s.rekey_scim_client(legacy.id, "new").await.unwrap();
    assert_eq!(s.find_scim_client_by_lookup("old").await.unwrap(), None);
    assert_eq!(s.find_scim_client_by_lookup("new").await.unwrap().unwrap().id, legacy.id);

    // Users: one created by the client, one by someone else; roles: the client's, a pushable one, another.
    let client = Uuid::now_v7();
    let mut mine = scim_user("mine", None, None);
    mine.owner = Some(client);
    let theirs = scim_user("theirs", None, None);
    for u in [&mine, &theirs] {
        s.scim_save_user(u, None, None, &actor()).await.unwrap();
    }
    assert_eq!(s.scim_user(mine.user.id).await.unwrap().unwrap().owner, Some(client));
    let mut updated = mine.clone();
    updated.owner = None;
    updated.user.version += 1;
    s.scim_save_user(&updated, Some(mine.user.version), None, &actor()).await.unwrap();
    assert_eq!(s.scim_user(mine.user.id).await.unwrap().unwrap().owner, Some(client), "the creator never changes");
    let own = ScimScope::NEW;
    assert_eq!(names(&*s, own.user_filter(client)).await, ["mine"]);
    assert_eq!(names(&*s, ScimScope::ALL.user_filter(client)).await, ["mine", "theirs"]);
    let sourced = ScimScope { users: UserScope::Source(src), ..own };
    assert_eq!(names(&*s, sourced.user_filter(client)).await, ["mine"], "no user of that source yet");

    let role = |name: &str, pushable: bool| {
        Role::new(RoleInput { name: name.into(), description: None, pushable }, directory::now())
    };
    let g_mine = ScimGroup { role: role("Mine", false), external_id: None, owner: Some(client) };
    s.scim_save_group(&g_mine, Some(&[]), None, &actor()).await.unwrap();
    let open = role("Open", true);
    let closed = role("Closed", false);
    s.create_role(&open, &admin).await.unwrap();
    s.create_role(&closed, &admin).await.unwrap();
    assert!(s.get_role(open.id).await.unwrap().unwrap().pushable);
    assert!(!s.get_role(closed.id).await.unwrap().unwrap().pushable);
    let group_names = |f: ResourceFilter<GroupField>| {
        let s = s.clone();
        async move {
            let mut n: Vec<String> = s.scim_groups(&q(f)).await.unwrap().1.into_iter().map(|g| g.role.name).collect();
            n.sort();
            n
        }
    };
    assert_eq!(group_names(own.group_filter(client)).await, ["Mine"]);
    let pushable = ScimScope { roles: RoleScope::Pushable, ..own };
    assert_eq!(group_names(pushable.group_filter(client)).await, ["Mine", "Open"]);
    assert_eq!(group_names(ScimScope::ALL.group_filter(client)).await, ["Closed", "Mine", "Open"]);
    let closed2 =
        closed.updated(RoleInput { name: "Closed".into(), description: None, pushable: true }, directory::now());
    s.update_role(&closed2, closed.version, &admin).await.unwrap();
    assert_eq!(group_names(pushable.group_filter(client)).await, ["Closed", "Mine", "Open"], "pushable is settable");
}

crate::contract!(
    clients_are_created_found_and_revoked,
    filters_run_as_sql,
    groups_save_members_in_one_transaction,
    client_scopes_are_stored_and_select_owned_sourced_and_pushable_objects
);
