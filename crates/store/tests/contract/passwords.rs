//! Passwords are write-only secrets (issue 20): a SCIM client's password is written with its
//! user or not at all; custom attributes are deleted with their values unless in use; and the
//! upgrade removes the clear-text values of a custom attribute named `password`.

use std::path::Path;
use std::sync::Arc;

use directory::{Actor, AttributeDefInput, AttributeType, User, UserInput, UserSource, UserStatus};
use serde_json::json;
use sqlx::Connection;
use store::scim::ScimUser;
use store::{AuditQuery, PageRequest, Store, StoreError, UserQuery};
use testkit::postgres::TestDatabase;

fn actor() -> Actor {
    Actor { kind: "scim_client".into(), name: "Okta".into() }
}

fn scim_user(username: &str) -> ScimUser {
    let input =
        UserInput { username: username.into(), email: Some(format!("{username}@example.com")), ..Default::default() };
    ScimUser { user: User::new(input, UserSource::Scim, directory::now()), external_id: None, owner: None }
}

/// Every audit entry about `target`, newest first.
async fn audit_of(s: &dyn Store, target: &str) -> Vec<directory::AuditEntry> {
    let q = AuditQuery {
        target_id: Some(target.into()),
        page: PageRequest { limit: 500, cursor: None },
        ..Default::default()
    };
    s.list_audit(&q).await.unwrap().items
}

pub async fn a_scim_password_is_written_with_its_user_or_not_at_all(s: Arc<dyn Store>) {
    let ada = scim_user("ada");
    let id = ada.user.id;
    s.scim_save_user(&ada, None, Some("$argon2id$one"), &actor()).await.unwrap();
    assert_eq!(s.user_password(id).await.unwrap().as_deref(), Some("$argon2id$one"));
    let audit = audit_of(&*s, &id.to_string()).await;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["user.password.set", "user.create"]);
    assert_eq!(audit[0].after, Some(json!({"password": "set"})));

    // The user unchanged (same version): the password alone, no new version, no change.
    let seq = s.changes_after(0, 10_000).await.unwrap().last().map_or(0, |c| c.seq);
    s.scim_save_user(&ada, Some(ada.user.version), Some("$argon2id$two"), &actor()).await.unwrap();
    assert_eq!(s.user_password(id).await.unwrap().as_deref(), Some("$argon2id$two"));
    assert_eq!(s.get_user(id).await.unwrap().unwrap().version, ada.user.version);
    assert!(s.changes_after(seq, 100).await.unwrap().is_empty());

    // A refused write (another person's e-mail address; a stale version) sets no password.
    let bob = scim_user("bob");
    s.scim_save_user(&bob, None, None, &actor()).await.unwrap();
    let mut input = UserInput::from_user(&ada.user);
    input.email = Some("BOB@example.com".into());
    let clash = ScimUser { user: ada.user.updated(input, directory::now()), ..ada.clone() };
    let refused = s.scim_save_user(&clash, Some(ada.user.version), Some("$argon2id$three"), &actor()).await;
    assert!(matches!(refused, Err(StoreError::Duplicate { .. })), "{refused:?}");
    let stale = s.scim_save_user(&ada, Some(ada.user.version + 5), Some("$argon2id$four"), &actor()).await;
    assert!(matches!(stale, Err(StoreError::VersionConflict { .. })), "{stale:?}");
    assert_eq!(s.user_password(id).await.unwrap().as_deref(), Some("$argon2id$two"));
    assert_eq!(s.user_password(bob.user.id).await.unwrap(), None);

    // A changed user and its password: both.
    let mut input = UserInput::from_user(&ada.user);
    input.title = Some("Countess".into());
    let titled = ScimUser { user: ada.user.updated(input, directory::now()), ..ada.clone() };
    s.scim_save_user(&titled, Some(ada.user.version), Some("$argon2id$five"), &actor()).await.unwrap();
    assert_eq!(s.get_user(id).await.unwrap().unwrap().title.as_deref(), Some("Countess"));
    assert_eq!(s.user_password(id).await.unwrap().as_deref(), Some("$argon2id$five"));
    let everything = serde_json::to_string(&audit_of(&*s, &id.to_string()).await).unwrap();
    assert!(!everything.contains("argon2id"), "no hash in the audit log: {everything}");
}

pub async fn attributes_are_deleted_with_their_values_unless_users_hold_one(s: Arc<dyn Store>) {
    let admin = Actor::token("contract-test");
    for (name, kind) in [("badge", AttributeType::Number), ("skills", AttributeType::StringList)] {
        let mut input = AttributeDefInput { name: name.into(), kind, description: None };
        input.validate().unwrap();
        s.create_attribute_def(&input.into_def(directory::now()), &admin).await.unwrap();
    }
    let with = |name: &str, badge: Option<i64>| {
        let mut u = scim_user(name).user;
        if let Some(b) = badge {
            u.attributes.insert("badge".into(), json!(b));
        }
        u.attributes.insert("skills".into(), json!(["rust"]));
        u
    };
    let (ada, grace, linus) = (with("ada", Some(7)), with("grace", None), with("linus", Some(3)));
    for u in [&ada, &grace, &linus] {
        s.create_user(u, &admin).await.unwrap();
    }
    assert_eq!(s.count_attribute_holders("badge").await.unwrap(), 2);
    assert_eq!(s.count_attribute_holders("skills").await.unwrap(), 3);
    s.delete_user(linus.id, None, &admin).await.unwrap();
    assert_eq!(s.count_attribute_holders("badge").await.unwrap(), 1, "deleted users do not count");

    // In use: refused, naming the count; nothing changes.
    match s.delete_attribute_def("badge", &admin).await {
        Err(StoreError::InvalidState(m)) => assert!(m.contains("1 user"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(s.list_attribute_defs().await.unwrap().len(), 2);
    assert_eq!(s.get_user(ada.id).await.unwrap().unwrap().attributes["badge"], 7);

    // Once nobody (but a deleted user) holds a value: the definition and every value go.
    let mut input = UserInput::from_user(&ada);
    input.attributes.remove("badge");
    let updated = ada.updated(input, directory::now());
    s.update_user(&updated, ada.version, &admin).await.unwrap();
    s.delete_attribute_def("badge", &admin).await.unwrap();
    let names: Vec<String> = s.list_attribute_defs().await.unwrap().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["skills"]);
    let gone = UserQuery { status: Some(UserStatus::Deleted), ..Default::default() };
    let deleted = s.list_users(&gone).await.unwrap().items;
    assert_eq!(deleted.len(), 1);
    assert_eq!(serde_json::Value::Object(deleted[0].attributes.clone()), json!({"skills": ["rust"]}));
    let entry = &audit_of(&*s, "badge").await[0];
    assert_eq!((entry.action.as_str(), entry.target_type.as_str()), ("attribute.delete", "attribute"));
    assert_eq!(entry.before.as_ref().unwrap()["type"], "number");
    assert!(matches!(s.delete_attribute_def("badge", &admin).await, Err(StoreError::NotFound)));
}

crate::contract!(
    a_scim_password_is_written_with_its_user_or_not_at_all,
    attributes_are_deleted_with_their_values_unless_users_hold_one
);

// ---- the upgrade (migration 0020) ----

/// The clear text the old custom attribute held.
const CLEAR: &str = "Tr0ub4dor&3-in-clear";

/// What a release before issue 20 let an admin do: declare `password` (here in another case)
/// as a custom attribute, give ada a value, and so write it into the audit log. Plain SQL, the
/// same on both backends.
const OLD_RELEASE_WRITES: &[&str] = &[
    "INSERT INTO attribute_defs (name, kind, description, created_at) \
     VALUES ('Password', 'string', NULL, '2026-12-07T06:49:37Z')",
    "UPDATE users SET attributes = '{\"Password\": \"Tr0ub4dor&3-in-clear\", \"start_date\": \"2024-02-29\", \
     \"badge_number\": 8, \"remote\": true, \"skills\": [\"rust\", \"math\"]}' WHERE username = 'ada'",
    "INSERT INTO audit_log (at, actor_kind, actor_name, action, target_type, target_id, before, after) \
     VALUES ('2026-12-07T06:50:00Z', 'token', 'admin', 'user.update', 'user', 'ada', \
     '{\"username\": \"ada\", \"attributes\": {\"remote\": true}}', \
     '{\"username\": \"ada\", \"attributes\": {\"Password\": \"Tr0ub4dor&3-in-clear\", \"remote\": true}}')",
];

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[tokio::test]
async fn the_upgrade_removes_a_password_attribute_from_a_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provisioner.db");
    std::fs::copy(fixture("release-2fd58f2.sqlite"), &path).unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    for sql in OLD_RELEASE_WRITES {
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    let store = store::SqliteStore::open(&path).await.unwrap();
    the_password_values_are_gone(Arc::new(store)).await;
}

#[tokio::test]
async fn the_upgrade_removes_a_password_attribute_from_a_postgres_database() {
    let db = TestDatabase::create().await;
    let dump = std::fs::read_to_string(fixture("release-2fd58f2.pg.sql")).unwrap();
    let sql: String = dump.lines().filter(|l| !l.starts_with('\\')).flat_map(|l| [l, "\n"]).collect();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(&sql).execute(&mut conn).await.unwrap();
    // The dump empties the search path.
    sqlx::raw_sql("SET search_path TO public").execute(&mut conn).await.unwrap();
    for sql in OLD_RELEASE_WRITES {
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    let store = store::PostgresStore::connect(&db.url, crate::pg_options()).await.unwrap();
    the_password_values_are_gone(Arc::new(store)).await;
}

async fn the_password_values_are_gone(s: Arc<dyn Store>) {
    let defs: Vec<String> = s.list_attribute_defs().await.unwrap().into_iter().map(|d| d.name).collect();
    assert!(!defs.iter().any(|d| d.eq_ignore_ascii_case("password")), "{defs:?}");
    assert!(defs.contains(&"start_date".to_owned()), "the other attributes stay: {defs:?}");
    let page = UserQuery { page: PageRequest { limit: 500, cursor: None }, ..Default::default() };
    let users = s.list_users(&page).await.unwrap().items;
    let ada = users.iter().find(|u| u.username == "ada").unwrap();
    assert!(!ada.attributes.keys().any(|k| k.eq_ignore_ascii_case("password")), "{:?}", ada.attributes);
    for (k, v) in [("start_date", json!("2024-02-29")), ("badge_number", json!(8)), ("remote", json!(true))] {
        assert_eq!(ada.attributes.get(k), Some(&v), "{k} stays");
    }
    assert_eq!(ada.attributes.get("skills"), Some(&json!(["rust", "math"])));
    for u in &users {
        assert!(!serde_json::to_string(u).unwrap().contains(CLEAR), "{u:?}");
    }
    let q = AuditQuery { page: PageRequest { limit: 500, cursor: None }, ..Default::default() };
    let audit = s.list_audit(&q).await.unwrap().items;
    assert!(!serde_json::to_string(&audit).unwrap().contains(CLEAR), "the audit log keeps no password");
    let redacted = audit.iter().find(|e| e.target_id == "ada").unwrap();
    assert_eq!(
        redacted.after,
        Some(json!({"username": "ada", "attributes": {"Password": "[redacted]", "remote": true}}))
    );
    assert_eq!(redacted.before, Some(json!({"username": "ada", "attributes": {"remote": true}})));
}
