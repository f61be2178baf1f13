//! Upgrades: a database written by a released `provisioner` opens and works with this version.
//!
//! `tests/fixtures/release-2fd58f2.sqlite` and `release-2fd58f2.pg.sql` were written by the
//! service of commit 2fd58f2 (before the single SQL layer of issue 18), through its REST API,
//! SCIM server and CLI, by `tests/fixtures/make-release-fixture.sh` (which says how). Each test
//! opens a copy (the SQLite file in a temporary folder; the dump loaded into a fresh database),
//! which applies this version's migrations, then reads everything that release wrote through the
//! `Store` traits and writes on top of it.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use directory::{Actor, EventStatus, Role, RoleInput, Secret, User, UserInput, UserSource, UserStatus};
use serde_json::json;
use sqlx::Connection;
use store::secrets::{decrypt_credential, Keyring};
use store::{AccountQuery, AuditQuery, EventQuery, NameQuery, PageRequest, Store, UserQuery};
use testkit::postgres::TestDatabase;
use uuid::Uuid;

/// The fixed test values of make-release-fixture.sh.
const SECRET_KEY: &str = "Zml4dHVyZSBrZXkgb2YgcmVsZWFzZSAyZmQ1OGYyISE=";
const ADMIN_TOKEN: &str = "fixture-admin-token-0123456789";
const WIKI_TOKEN: &str = "wiki-bearer-token-0123456789";
const CRM_PASSWORD: &str = "crm-basic-password-0123456789";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[tokio::test]
async fn a_sqlite_database_of_release_2fd58f2_opens_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provisioner.db");
    std::fs::copy(fixture("release-2fd58f2.sqlite"), &path).unwrap();
    let store = store::SqliteStore::open(&path).await.unwrap();
    release_data_is_all_there_and_works(Arc::new(store)).await;
}

#[tokio::test]
async fn a_postgres_database_of_release_2fd58f2_opens_and_works() {
    let db = TestDatabase::create().await;
    let dump = std::fs::read_to_string(fixture("release-2fd58f2.pg.sql")).unwrap();
    // Plain SQL from pg_dump, minus psql's meta-commands (`\restrict`, `\unrestrict`).
    let sql: String = dump.lines().filter(|l| !l.starts_with('\\')).flat_map(|l| [l, "\n"]).collect();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(&sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let store = store::PostgresStore::connect(&db.url, crate::pg_options()).await.unwrap();
    release_data_is_all_there_and_works(Arc::new(store)).await;
}

/// Every user but the deleted ones, and the deleted ones, by username.
async fn users(s: &dyn Store) -> (Vec<User>, Vec<User>) {
    let page = |status| UserQuery { status, page: PageRequest { limit: 500, cursor: None }, ..Default::default() };
    let live = s.list_users(&page(None)).await.unwrap();
    let deleted = s.list_users(&page(Some(UserStatus::Deleted))).await.unwrap();
    assert!(live.next_cursor.is_none() && deleted.next_cursor.is_none());
    (live.items, deleted.items)
}

fn named<'a>(users: &'a [User], username: &str) -> &'a User {
    users.iter().find(|u| u.username == username).unwrap_or_else(|| panic!("no user {username}"))
}

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> BTreeSet<String> {
    items.iter().map(|i| name(i).to_owned()).collect()
}

/// An app's stored credential: ciphertext, which the key of the time decrypts.
async fn secret(s: &dyn Store, keyring: &Keyring, app: Uuid) -> Secret {
    let ciphertext = s.get_app_credential(app).await.unwrap().expect("a stored credential");
    assert!(!ciphertext.contains(WIKI_TOKEN) && !ciphertext.contains(CRM_PASSWORD));
    decrypt_credential(keyring, app, &ciphertext).unwrap()
}

async fn events(s: &dyn Store, app: Uuid, status: Option<EventStatus>) -> Vec<directory::Event> {
    let q = EventQuery { app: Some(app), status, page: PageRequest { limit: 500, cursor: None }, ..Default::default() };
    s.list_events(&q).await.unwrap().items
}

async fn release_data_is_all_there_and_works(s: Arc<dyn Store>) {
    let keyring = Keyring::from_base64(&[SECRET_KEY]).unwrap();
    let everything = NameQuery { q: None, page: PageRequest { limit: 500, cursor: None } };

    // People, with their attributes, manager and status.
    let (live, deleted) = users(&*s).await;
    assert_eq!(
        names(&live, |u| &u.username),
        ["ada", "barbara", "grace", "ken", "margaret", "zoë"].map(String::from).into()
    );
    assert_eq!(names(&deleted, |u| &u.username), ["linus".to_owned()].into());
    let (ada, grace) = (named(&live, "ada"), named(&live, "grace"));
    assert_eq!(ada.manager_id, Some(grace.id));
    assert_eq!(ada.title.as_deref(), Some("Principal Engineer"));
    assert_eq!((ada.phone.as_deref(), ada.employee_number.as_deref()), (Some("+44 20 7946 0000"), Some("E-1815")));
    // Profiles came after that release: the e-mail address and phone number became primary
    // work values, and the custom attribute named like a profile attribute became it.
    assert_eq!(
        serde_json::Value::Object(ada.attributes.clone()),
        json!({"start_date": "2024-02-29", "badge_number": 8, "remote": true, "skills": ["rust", "math"]})
    );
    assert_eq!(ada.profile.cost_center.as_deref(), Some("R&D"));
    assert_eq!(ada.profile.emails, vec![directory::MultiValue::work(ada.email.clone().unwrap())]);
    assert_eq!(ada.profile.phone_numbers, vec![directory::MultiValue::work("+44 20 7946 0000")]);
    assert!(ada.version >= 2, "ada was updated once: {ada:?}");
    assert_eq!(named(&live, "margaret").status, UserStatus::Suspended);
    assert_eq!(named(&live, "zoë").last_name.as_deref(), Some("Ørsted"));
    assert_eq!(s.get_user(ada.id).await.unwrap().as_ref(), Some(ada));
    assert_eq!(s.users_by_email("ADA@example.com").await.unwrap(), vec![ada.clone()]);
    let defs = s.list_attribute_defs().await.unwrap();
    assert_eq!(names(&defs, |d| &d.name), ["badge_number", "remote", "skills", "start_date"].map(String::from).into());

    // Roles, their members and the apps they grant.
    let roles = s.list_roles(&everything).await.unwrap().items;
    assert_eq!(
        names(&roles, |r| &r.name),
        ["Auditors", "Engineers", "Everyone", "Okta Pushed"].map(String::from).into()
    );
    let role = |name: &str| roles.iter().find(|r| r.name == name).unwrap().clone();
    let (engineers, everyone) = (role("Engineers"), role("Everyone"));
    let members: BTreeSet<Uuid> =
        s.role_members(&[engineers.id]).await.unwrap().into_iter().map(|(_, user)| user).collect();
    let expected: BTreeSet<Uuid> = ["ada", "ken", "margaret"].iter().map(|n| named(&live, n).id).collect();
    assert_eq!(members, expected, "linus left his roles when deleted");
    assert_eq!(
        names(&s.roles_of_user(ada.id).await.unwrap(), |r| &r.name),
        ["Engineers", "Everyone"].map(String::from).into()
    );

    // Apps, their settings and their credentials (still decrypted by the key of the time).
    let apps = s.list_apps(&everything).await.unwrap().items;
    assert_eq!(names(&apps, |a| &a.name), ["Legacy CRM", "Wiki"].map(String::from).into());
    let app = |name: &str| apps.iter().find(|a| a.name == name).unwrap().clone();
    let (wiki, crm) = (app("Wiki"), app("Legacy CRM"));
    assert!(wiki.provisioning.enabled && crm.provisioning.enabled);
    assert_eq!(wiki.parameters.as_ref().map(Vec::len), Some(7));
    assert_eq!(wiki.rules.len(), 2);
    assert_eq!(s.get_app(wiki.id).await.unwrap().as_ref(), Some(&wiki));
    assert_eq!(names(&s.apps_of_role(engineers.id).await.unwrap(), |a| &a.name), ["Wiki".to_owned()].into());
    assert_eq!(names(&s.roles_of_app(crm.id).await.unwrap(), |r: &Role| &r.name), ["Everyone".to_owned()].into());
    assert!(matches!(secret(&*s, &keyring, wiki.id).await, Secret::Bearer { token } if token == WIKI_TOKEN));
    assert!(matches!(secret(&*s, &keyring, crm.id).await, Secret::Basic { password } if password == CRM_PASSWORD));

    // Accounts, operations and events.
    let accounts = s.list_accounts(&AccountQuery { app: Some(wiki.id), ..Default::default() }).await.unwrap().items;
    let account =
        |name: &str| accounts.iter().find(|a| a.username == name).unwrap_or_else(|| panic!("no account {name}"));
    for (name, status) in [
        ("ada", EventStatus::Provisioned),
        ("ken", EventStatus::Provisioned),
        ("linus", EventStatus::Pending),
        ("margaret", EventStatus::Suspended),
    ] {
        assert_eq!(account(name).status, status, "{:?}", account(name));
        assert!(account(name).remote_id.is_some());
    }
    assert_eq!(s.get_account(wiki.id, ada.id).await.unwrap().as_ref(), Some(account("ada")));
    assert!(events(&*s, wiki.id, Some(EventStatus::Provisioned)).await.len() >= 3);
    let failed = events(&*s, crm.id, Some(EventStatus::Failed)).await;
    assert!(!failed.is_empty() && failed.iter().all(|e| e.reason.is_some()), "{failed:?}");
    let pending = events(&*s, wiki.id, Some(EventStatus::Pending)).await;
    assert_eq!(names(&pending, |e| &e.username), ["linus".to_owned()].into(), "linus's deletion awaits approval");
    assert!(s.engine_cursor().await.unwrap() > 0);
    let changes = s.changes_after(0, 100_000).await.unwrap();
    assert!(!changes.is_empty());

    // The audit log.
    let audit = s
        .list_audit(&AuditQuery { page: PageRequest { limit: 500, cursor: None }, ..Default::default() })
        .await
        .unwrap()
        .items;
    let actions = names(&audit, |e| &e.action);
    for action in
        ["user.create", "user.update", "user.suspend", "user.delete", "role.create", "app.create", "event.approve"]
    {
        assert!(actions.contains(action), "no {action} in {actions:?}");
    }
    let of_ada = s
        .list_audit(&AuditQuery {
            target_type: Some("user".into()),
            target_id: Some(ada.id.to_string()),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(of_ada.last().map(|e| e.action.as_str()), Some("user.create"));

    // Tokens, console admins, the SCIM client, SAML, the directory source, the app's groups.
    let tokens = s.list_tokens().await.unwrap();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens.iter().any(|t| t.name == "ci-bot"));
    let lookup = keyring.token_lookups(ADMIN_TOKEN).remove(0);
    assert!(s.find_token_by_lookup(&lookup).await.unwrap().is_some(), "the admin token is still found");
    assert_eq!(s.count_admins().await.unwrap(), 2);
    assert!(s.find_admin("alice").await.unwrap().is_some());
    let clients = s.list_scim_clients().await.unwrap();
    assert_eq!(names(&clients, |c| &c.name), ["Okta".to_owned()].into());
    assert_eq!(named(&live, "barbara").source, UserSource::Scim);
    assert_eq!(s.saml_keys().await.unwrap().len(), 2, "the IdP certificate was rotated once");
    assert!(s.get_saml_settings(wiki.id).await.unwrap().is_some());
    assert!(s.user_password(ada.id).await.unwrap().is_some());
    let sources = s.list_sources().await.unwrap();
    assert_eq!(names(&sources, |src| &src.name), ["Corp LDAP".to_owned()].into());
    assert!(s.get_source_password(sources[0].id).await.unwrap().is_some());
    assert!(!s.list_source_syncs(sources[0].id, 10).await.unwrap().is_empty());
    let groups = s.list_entitlements(wiki.id, &PageRequest::default()).await.unwrap().items;
    assert!(groups.iter().any(|g| g.display_name == "Engineering Team"), "{groups:?}");
    assert!(!s.app_reads(wiki.id).await.unwrap().is_empty());

    // New writes on top of the old data.
    let actor = Actor::token("release-fixture-test");
    let hedy = User::new(
        UserInput {
            username: "hedy".into(),
            email: Some("hedy@example.com".into()),
            manager_id: Some(ada.id),
            ..Default::default()
        },
        UserSource::Local,
        directory::now(),
    );
    s.create_user(&hedy, &actor).await.unwrap();
    assert_eq!(s.get_user(hedy.id).await.unwrap(), Some(hedy.clone()));
    let mut input = UserInput::from_user(ada);
    input.title = Some("Chief Engineer".into());
    let promoted = ada.updated(input, directory::now());
    s.update_user(&promoted, ada.version, &actor).await.unwrap();
    let read = s.get_user(ada.id).await.unwrap().unwrap();
    assert_eq!((read.title.as_deref(), read.version), (Some("Chief Engineer"), ada.version + 1));
    assert_eq!(read.attributes, ada.attributes);
    assert!(s.add_role_user(engineers.id, hedy.id, &actor).await.unwrap());
    assert!(!s.add_role_user(everyone.id, ada.id, &actor).await.unwrap(), "ada was already a member");
    let reviewers =
        Role::new(RoleInput { name: "Reviewers".into(), description: None, pushable: false }, directory::now());
    s.create_role(&reviewers, &actor).await.unwrap();
    assert_eq!(s.get_role(reviewers.id).await.unwrap(), Some(reviewers));
    let (live_now, _) = users(&*s).await;
    assert_eq!(live_now.len(), live.len() + 1);
    let newest = s.list_audit(&AuditQuery::default()).await.unwrap().items;
    assert_eq!(newest[0].actor, actor);
    assert!(newest[0].id > audit[0].id, "audit ids go on from the old ones");
    let new_changes = s.changes_after(changes.last().unwrap().seq, 100).await.unwrap();
    assert!(new_changes.iter().any(|c| c.user_id == Some(hedy.id)), "{new_changes:?}");

    // The old pending deletion goes through as any other: approved, then claimed by a worker.
    let approved = s.approve_operation(pending[0].id, &actor).await.unwrap();
    assert_ne!(approved.status, EventStatus::Pending);
    let claimed = s.claim_operations(wiki.id, "release-fixture-test", 10, Duration::from_secs(60)).await.unwrap();
    assert!(claimed.iter().any(|op| op.event.id == pending[0].id), "{claimed:?}");
}
