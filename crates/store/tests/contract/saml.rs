//! The SAML storage contract: apps' SAML settings (JIT-only apps are not provisioned), IdP
//! keys and rotation, end users' passwords, invitations and sessions, and sign-in events.

use std::sync::Arc;

use chrono::Duration;
use directory::{Actor, App, AppInput, ChangeKind, Role, RoleInput, SamlSettings, User, UserInput, UserSource};
use serde_json::json;
use store::{AuditQuery, EventQuery, InvitationRecord, KeyState, SamlKeyRecord, Store, StoreError, UserSessionRecord};
use uuid::Uuid;

fn actor() -> Actor {
    Actor::token("contract-test")
}

fn user(username: &str) -> User {
    let input = UserInput { username: username.into(), ..Default::default() };
    User::new(input, UserSource::Local, directory::now())
}

fn app(name: &str) -> App {
    let input: AppInput = serde_json::from_value(json!({"name": name,
        "connection": {"base_url": "https://app.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}}}))
    .unwrap();
    let (validated, _) = input.validate(None).unwrap();
    let mut a = App::new(validated, directory::now());
    a.provisioning.enabled = true;
    a
}

fn settings(jit_only: bool) -> SamlSettings {
    serde_json::from_value(json!({"sp_entity_id": "https://sp.example.com", "acs_urls": ["https://sp.example.com/acs"],
        "jit_only": jit_only}))
    .unwrap()
}

async fn granted_pair(s: &dyn Store) -> (User, App) {
    let u = user("ada");
    s.create_user(&u, &actor()).await.unwrap();
    let a = app("Wiki");
    s.create_app(&a, "ciphertext", &actor()).await.unwrap();
    let r = Role::new(RoleInput { name: "Staff".into(), description: None, pushable: false }, directory::now());
    s.create_role(&r, &actor()).await.unwrap();
    s.add_role_user(r.id, u.id, &actor()).await.unwrap();
    s.add_role_app(r.id, a.id, &actor()).await.unwrap();
    (u, a)
}

async fn settings_are_versioned_audited_and_jit_only_apps_read_as_not_provisioned(s: Arc<dyn Store>) {
    let (u, a) = granted_pair(&*s).await;
    assert_eq!(s.get_saml_settings(a.id).await.unwrap(), None);
    let pair = s.load_pairs(&[(u.id, a.id)]).await.unwrap().remove(0);
    assert!(pair.app.unwrap().provisioning.enabled);

    let before = s.changes_after(0, 10_000).await.unwrap().len();
    let r = s.put_saml_settings(a.id, &settings(true), None, &actor()).await.unwrap();
    assert_eq!(r.version, 1);
    assert_eq!(s.get_saml_settings(a.id).await.unwrap(), Some(r.clone()));
    let changes = s.changes_after(0, 10_000).await.unwrap();
    assert_eq!(changes.len(), before + 1, "the engine is told");
    assert_eq!((changes.last().unwrap().kind, changes.last().unwrap().app_id), (ChangeKind::App, Some(a.id)));
    let pair = s.load_pairs(&[(u.id, a.id)]).await.unwrap().remove(0);
    assert!(!pair.app.unwrap().provisioning.enabled, "a JIT-only app is not provisioned");

    match s.put_saml_settings(a.id, &settings(false), Some(7), &actor()).await {
        Err(StoreError::VersionConflict { current: 1 }) => {}
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let r2 = s.put_saml_settings(a.id, &settings(false), Some(1), &actor()).await.unwrap();
    assert_eq!(r2.version, 2);
    assert!(s.load_pairs(&[(u.id, a.id)]).await.unwrap().remove(0).app.unwrap().provisioning.enabled);
    let audit = s.list_audit(&AuditQuery { target_type: Some("app".into()), ..Default::default() }).await.unwrap();
    assert!(audit.items.iter().any(|e| e.action == "app.saml.update"));
    assert!(matches!(
        s.put_saml_settings(Uuid::now_v7(), &settings(true), None, &actor()).await,
        Err(StoreError::NotFound)
    ));
    // Deleting the app removes its settings.
    s.delete_app(a.id, None, &actor()).await.unwrap();
    assert_eq!(s.get_saml_settings(a.id).await.unwrap(), None);
}

fn key(state: KeyState) -> SamlKeyRecord {
    SamlKeyRecord {
        id: Uuid::now_v7(),
        state,
        private_key: "v1.abcd.ciphertext".into(),
        certificate: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n".into(),
        created_at: directory::now(),
        activated_at: None,
        retired_at: None,
    }
}

async fn one_active_and_one_next_key_and_rotation(s: Arc<dyn Store>) {
    assert!(s.saml_keys().await.unwrap().is_empty());
    let active = key(KeyState::Active);
    s.insert_saml_key(&active, &Actor::system()).await.unwrap();
    assert!(matches!(
        s.insert_saml_key(&key(KeyState::Active), &Actor::system()).await,
        Err(StoreError::Duplicate { .. })
    ));
    assert!(matches!(s.activate_next_saml_key(&actor()).await, Err(StoreError::InvalidState(_))));
    let next = key(KeyState::Next);
    s.insert_saml_key(&next, &actor()).await.unwrap();
    assert!(matches!(s.insert_saml_key(&key(KeyState::Next), &actor()).await, Err(StoreError::Duplicate { .. })));
    let keys = s.saml_keys().await.unwrap();
    assert_eq!(
        keys.iter().map(|k| (k.id, k.state)).collect::<Vec<_>>(),
        vec![(active.id, KeyState::Active), (next.id, KeyState::Next)]
    );
    let now_active = s.activate_next_saml_key(&actor()).await.unwrap();
    assert_eq!((now_active.id, now_active.state), (next.id, KeyState::Active));
    let keys = s.saml_keys().await.unwrap();
    assert_eq!(keys.iter().map(|k| (k.id, k.state)).collect::<Vec<_>>(), vec![(next.id, KeyState::Active)]);
    let audit = s.list_audit(&AuditQuery { target_type: Some("saml_key".into()), ..Default::default() }).await.unwrap();
    assert_eq!(audit.items.len(), 3);
    assert!(audit.items.iter().all(|e| !e.after.as_ref().is_some_and(|a| a.to_string().contains("ciphertext"))));
}

async fn passwords_invitations_and_sessions(s: Arc<dyn Store>) {
    let u = user("ada");
    s.create_user(&u, &actor()).await.unwrap();
    assert_eq!(s.user_by_username(" ADA ").await.unwrap().map(|x| x.id), Some(u.id));
    assert_eq!(s.user_by_username("ad").await.unwrap(), None);
    assert_eq!(s.user_password(u.id).await.unwrap(), None);
    s.set_user_password(u.id, "$argon2id$one", &actor()).await.unwrap();
    s.set_user_password(u.id, "$argon2id$two", &actor()).await.unwrap();
    assert_eq!(s.user_password(u.id).await.unwrap().as_deref(), Some("$argon2id$two"));
    assert!(matches!(s.set_user_password(Uuid::now_v7(), "x", &actor()).await, Err(StoreError::NotFound)));

    let now = directory::now();
    let inv = InvitationRecord {
        id: Uuid::now_v7(),
        user_id: u.id,
        token_hash: "hash-1".into(),
        created_at: now,
        expires_at: now + Duration::hours(1),
        used_at: None,
    };
    s.create_invitation(&inv, &actor()).await.unwrap();
    assert_eq!(s.find_invitation("hash-1").await.unwrap(), Some(inv.clone()));
    assert!(matches!(
        s.redeem_invitation("hash-1", "$argon2id$three", now + Duration::hours(2)).await,
        Err(StoreError::InvalidState(_))
    ));
    assert_eq!(s.redeem_invitation("hash-1", "$argon2id$three", now).await.unwrap(), u.id);
    assert_eq!(s.user_password(u.id).await.unwrap().as_deref(), Some("$argon2id$three"));
    assert!(matches!(s.redeem_invitation("hash-1", "$argon2id$four", now).await, Err(StoreError::InvalidState(_))));
    assert!(matches!(s.redeem_invitation("nope", "x", now).await, Err(StoreError::NotFound)));
    assert_eq!(s.user_password(u.id).await.unwrap().as_deref(), Some("$argon2id$three"));

    let mut sess = UserSessionRecord {
        id_hash: "h1".into(),
        user_id: u.id,
        csrf_token: "c".into(),
        created_at: now,
        last_seen_at: now,
    };
    s.create_user_session(&sess, &u.username).await.unwrap();
    assert_eq!(s.get_user_session("h1").await.unwrap(), Some(sess.clone()));
    let later = now + Duration::minutes(3);
    s.touch_user_session("h1", later).await.unwrap();
    sess.last_seen_at = later;
    assert_eq!(s.get_user_session("h1").await.unwrap(), Some(sess));
    assert_eq!(s.delete_idle_user_sessions(now + Duration::minutes(1)).await.unwrap(), 0);
    assert!(s.delete_user_session("h1").await.unwrap());
    assert!(!s.delete_user_session("h1").await.unwrap());
    let audit = s.list_audit(&AuditQuery { target_type: Some("user".into()), ..Default::default() }).await.unwrap();
    for action in ["user.password.set", "user.invitation.create", "user.invitation.redeem", "user.login"] {
        assert!(audit.items.iter().any(|e| e.action == action), "{action} is audited");
    }
}

async fn sign_ins_to_jit_only_apps_are_events(s: Arc<dyn Store>) {
    let (u, a) = granted_pair(&*s).await;
    let attrs = json!({"userName": ["ada"], "groups": ["Sales and Marketing"]});
    let who = Actor { kind: "user".into(), name: "ada".into() };
    let first = s.record_saml_sign_in(a.id, u.id, true, &attrs, &who).await.unwrap().unwrap();
    assert_eq!((first.action, first.status), (directory::Action::Create, directory::EventStatus::Provisioned));
    let second = s.record_saml_sign_in(a.id, u.id, true, &attrs, &who).await.unwrap().unwrap();
    assert_eq!((second.action, second.status), (directory::Action::Update, directory::EventStatus::Provisioned));
    assert_eq!(s.record_saml_sign_in(a.id, u.id, false, &attrs, &who).await.unwrap(), None);
    let events = s.list_events(&EventQuery { app: Some(a.id), ..Default::default() }).await.unwrap();
    assert_eq!(events.items.len(), 2);
    let account = s.get_account(a.id, u.id).await.unwrap().unwrap();
    assert_eq!(account.status, directory::EventStatus::Provisioned);
    assert_eq!(account.last_applied, Some(attrs));
    let audit = s.list_audit(&AuditQuery { target_type: Some("user".into()), ..Default::default() }).await.unwrap();
    assert_eq!(audit.items.iter().filter(|e| e.action == "user.saml_sign_in").count(), 3);
}

/// A SAML AuthnRequest id is answered once until it expires (the replay cache of issue 15).
async fn saml_request_ids_are_remembered_until_they_expire(s: Arc<dyn Store>) {
    let (_, a) = granted_pair(&*s).await;
    let now = directory::now();
    let expires = now + Duration::minutes(6);
    assert!(s.remember_saml_request(a.id, "_r1", expires, now).await.unwrap());
    assert!(!s.remember_saml_request(a.id, "_r1", expires, now).await.unwrap(), "a replay is refused");
    assert!(s.remember_saml_request(a.id, "_r2", expires, now).await.unwrap());
    let other = app("Other");
    s.create_app(&other, "ciphertext", &actor()).await.unwrap();
    assert!(s.remember_saml_request(other.id, "_r1", expires, now).await.unwrap(), "ids are per app");
    // Once expired, the id is forgotten (and its row removed).
    let later = expires + Duration::seconds(1);
    assert!(s.remember_saml_request(a.id, "_r1", later + Duration::minutes(6), later).await.unwrap());
}

crate::contract!(
    saml_request_ids_are_remembered_until_they_expire,
    settings_are_versioned_audited_and_jit_only_apps_read_as_not_provisioned,
    one_active_and_one_next_key_and_rotation,
    passwords_invitations_and_sessions,
    sign_ins_to_jit_only_apps_are_events,
);
