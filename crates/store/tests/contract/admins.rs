//! The admin-console storage contract: admin accounts and console sessions.

use std::sync::Arc;

use chrono::Duration;
use directory::Actor;
use store::{AdminRecord, AuditQuery, SessionRecord, Store, StoreError};
use uuid::Uuid;

fn admin(username: &str) -> AdminRecord {
    AdminRecord {
        id: Uuid::now_v7(),
        username: username.into(),
        hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: directory::now(),
    }
}

fn session(id_hash: &str, admin: &AdminRecord) -> SessionRecord {
    let now = directory::now();
    SessionRecord {
        id_hash: id_hash.into(),
        admin_id: admin.id,
        username: admin.username.clone(),
        csrf_token: "csrf-token".into(),
        created_at: now,
        last_seen_at: now,
    }
}

async fn admins_are_unique_case_insensitively_and_audited(s: Arc<dyn Store>) {
    assert_eq!(s.count_admins().await.unwrap(), 0);
    let a = admin("Alice");
    s.create_admin(&a, &Actor::cli()).await.unwrap();
    assert_eq!(s.count_admins().await.unwrap(), 1);
    assert_eq!(s.find_admin("alice").await.unwrap(), Some(a.clone()));
    assert_eq!(s.find_admin(" ALICE ").await.unwrap().map(|x| x.id), Some(a.id));
    assert_eq!(s.find_admin("bob").await.unwrap(), None);
    match s.create_admin(&admin("ALICE"), &Actor::cli()).await {
        Err(StoreError::Duplicate { field }) => assert_eq!(field, "username"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let audit = s.list_audit(&AuditQuery { target_type: Some("admin".into()), ..Default::default() }).await.unwrap();
    assert_eq!(audit.items.len(), 1);
    assert_eq!(audit.items[0].action, "admin.create");
    let after = audit.items[0].after.clone().unwrap().to_string();
    assert!(!after.contains("argon2"), "the hash leaked into the audit log: {after}");
}

async fn sessions_are_found_touched_and_ended(s: Arc<dyn Store>) {
    let a = admin("alice");
    s.create_admin(&a, &Actor::cli()).await.unwrap();
    let mut rec = session("h1", &a);
    s.create_session(&rec).await.unwrap();
    assert_eq!(s.get_session("h1").await.unwrap(), Some(rec.clone()));
    assert_eq!(s.get_session("h2").await.unwrap(), None);
    let later = rec.last_seen_at + Duration::minutes(5);
    s.touch_session("h1", later).await.unwrap();
    rec.last_seen_at = later;
    assert_eq!(s.get_session("h1").await.unwrap(), Some(rec));
    assert!(s.delete_session("h1", true).await.unwrap());
    assert!(!s.delete_session("h1", true).await.unwrap());
    assert_eq!(s.get_session("h1").await.unwrap(), None);
    let audit = s.list_audit(&AuditQuery { actor: Some("alice".into()), ..Default::default() }).await.unwrap();
    let actions: Vec<_> = audit.items.iter().map(|e| (e.actor.kind.as_str(), e.action.as_str())).collect();
    assert_eq!(actions, [("admin", "admin.logout"), ("admin", "admin.login")]);
}

async fn idle_sessions_are_removed(s: Arc<dyn Store>) {
    let a = admin("alice");
    s.create_admin(&a, &Actor::cli()).await.unwrap();
    let mut old = session("old", &a);
    old.last_seen_at -= Duration::hours(2);
    s.create_session(&old).await.unwrap();
    s.create_session(&session("new", &a)).await.unwrap();
    let removed = s.delete_idle_sessions(directory::now() - Duration::hours(1)).await.unwrap();
    assert_eq!(removed, 1);
    assert_eq!(s.get_session("old").await.unwrap(), None);
    assert!(s.get_session("new").await.unwrap().is_some());
}

async fn a_session_needs_an_admin(s: Arc<dyn Store>) {
    let ghost = admin("ghost");
    assert!(matches!(s.create_session(&session("x", &ghost)).await, Err(StoreError::MissingReference { .. })));
}

crate::contract!(
    admins_are_unique_case_insensitively_and_audited,
    sessions_are_found_touched_and_ended,
    idle_sessions_are_removed,
    a_session_needs_an_admin,
);
