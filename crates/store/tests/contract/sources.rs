//! The directory-source storage contract: sources, syncs (one open per source), links, and
//! the batched writes of a sync with their audit entries and change-feed rows.

use std::sync::Arc;
use std::time::Duration;

use directory::{
    Actor, ChangeKind, DirectorySource, Role, RoleInput, SourceBatch, SourceFlavor, SourceInput, SourceKind,
    SourceLink, SourceSync, SourceUpdate, SyncCounts, SyncMode, SyncState, User, UserInput, UserSource, UserStatus,
};
use store::{AuditQuery, SourceCursor, Store, StoreError};
use uuid::Uuid;

fn source(name: &str) -> DirectorySource {
    let mut input = SourceInput {
        name: name.into(),
        kind: SourceKind::Ldap,
        flavor: SourceFlavor::Openldap,
        url: "ldap://127.0.0.1:389".into(),
        starttls: false,
        bind_dn: "cn=reader,dc=example,dc=com".into(),
        bind_password: Some("x".into()),
        base_dn: "ou=people,dc=example,dc=com".into(),
        user_filter: None,
        attributes: None,
        groups: vec![],
        schedule: None,
        disabled: None,
        guard_percent: None,
        enabled: None,
    };
    input.normalize_and_validate(&[], true).unwrap();
    let now = directory::now();
    input.into_source(Uuid::now_v7(), now, now, 1)
}

fn sync(source: Uuid) -> SourceSync {
    let now = directory::now();
    SourceSync {
        id: Uuid::now_v7(),
        source_id: source,
        mode: SyncMode::Full,
        state: SyncState::Running,
        trigger: "manual".into(),
        counts: SyncCounts::default(),
        pending_suspensions: 0,
        message: None,
        errors: vec![],
        started_at: now,
        finished_at: None,
        heartbeat_at: now,
    }
}

fn person(username: &str, source: Uuid, stable: &str) -> (User, SourceLink) {
    let user =
        User::new(UserInput { username: username.into(), ..Default::default() }, UserSource::Ldap, directory::now());
    let link = SourceLink {
        source_id: source,
        user_id: user.id,
        stable_id: stable.into(),
        dn: format!("uid={username},ou=people,dc=example,dc=com"),
        suspended_by_source: false,
    };
    (user, link)
}

async fn sources_keep_their_password_apart_and_are_audited(s: Arc<dyn Store>) {
    let src = source("Corp");
    s.create_source(&src, "ciphertext-1", &Actor::cli()).await.unwrap();
    assert_eq!(s.get_source(src.id).await.unwrap(), Some(src.clone()));
    assert_eq!(s.get_source_password(src.id).await.unwrap().as_deref(), Some("ciphertext-1"));
    assert!(matches!(
        s.create_source(&source("CORP"), "c", &Actor::cli()).await,
        Err(StoreError::Duplicate { field: "name" })
    ));
    let mut changed = src.clone();
    changed.schedule = 60;
    changed.version = 2;
    assert!(matches!(
        s.update_source(&changed, None, 7, &Actor::cli()).await,
        Err(StoreError::VersionConflict { current: 1 })
    ));
    s.update_source(&changed, None, 1, &Actor::cli()).await.unwrap();
    assert_eq!(s.get_source_password(src.id).await.unwrap().as_deref(), Some("ciphertext-1"), "kept");
    assert_eq!(s.list_sources().await.unwrap()[0].schedule, 60);
    let cursor = SourceCursor { watermark: Some("20250101000000Z".into()), last_full_sync_at: Some(directory::now()) };
    s.set_source_cursor(src.id, &cursor).await.unwrap();
    assert_eq!(s.source_cursor(src.id).await.unwrap(), cursor);
    let audit = s.list_audit(&AuditQuery { target_type: Some("source".into()), ..Default::default() }).await.unwrap();
    let actions: Vec<_> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["source.update", "source.create"]);
    assert!(!serde_json::to_string(&audit.items).unwrap().contains("ciphertext-1"));
    s.delete_source(src.id, Some(2), &Actor::cli()).await.unwrap();
    assert_eq!(s.get_source(src.id).await.unwrap(), None);
}

async fn one_open_sync_per_source_and_stale_ones_are_taken_over(s: Arc<dyn Store>) {
    let src = source("Corp");
    s.create_source(&src, "c", &Actor::cli()).await.unwrap();
    let first = sync(src.id);
    s.begin_source_sync(&first, Duration::from_secs(300), &Actor::cli()).await.unwrap();
    assert!(matches!(
        s.begin_source_sync(&sync(src.id), Duration::from_secs(300), &Actor::cli()).await,
        Err(StoreError::InvalidState(_))
    ));
    // Guarded: still open, with its pending suspensions.
    let mut held = first.clone();
    held.state = SyncState::AwaitingConfirmation;
    held.pending_suspensions = 2;
    s.save_source_sync(&held, Some(&["a".to_owned(), "b".to_owned()])).await.unwrap();
    assert_eq!(s.source_sync_pending(first.id).await.unwrap(), ["a", "b"]);
    assert!(s.begin_source_sync(&sync(src.id), Duration::from_secs(0), &Actor::cli()).await.is_err());
    assert!(s.confirm_source_sync(src.id, first.id, &Actor::cli()).await.unwrap());
    assert!(!s.confirm_source_sync(src.id, first.id, &Actor::cli()).await.unwrap(), "once");
    // Running again; its heartbeat is old: a new sync takes over and the old one is failed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = sync(src.id);
    s.begin_source_sync(&second, Duration::from_millis(1), &Actor::cli()).await.unwrap();
    let old = s.get_source_sync(src.id, first.id).await.unwrap().unwrap();
    assert_eq!(old.state, SyncState::Failed);
    assert!(old.message.unwrap().contains("abandoned"));
    let listed = s.list_source_syncs(src.id, 10).await.unwrap();
    assert_eq!(listed.iter().map(|x| x.id).collect::<Vec<_>>(), [second.id, first.id]);
    assert_eq!(s.get_source_sync(Uuid::now_v7(), second.id).await.unwrap(), None, "scoped to its source");
}

#[expect(clippy::disallowed_methods, reason = "the contract of the primitive the service layer calls")]
async fn batches_write_users_links_and_roles_with_audit_and_changes(s: Arc<dyn Store>) {
    let src = source("Corp");
    s.create_source(&src, "c", &Actor::cli()).await.unwrap();
    let role = Role::new(RoleInput { name: "Eng".into(), description: None, pushable: false }, directory::now());
    s.create_role(&role, &Actor::cli()).await.unwrap();
    let local =
        User::new(UserInput { username: "taken".into(), ..Default::default() }, UserSource::Local, directory::now());
    s.create_user(&local, &Actor::cli()).await.unwrap();
    let before = s.changes_after(0, 10_000).await.unwrap().len();
    let (ada, ada_link) = person("ada", src.id, "id-ada");
    let (clash, clash_link) = person("Taken", src.id, "id-clash");
    let batch = SourceBatch {
        creates: vec![(ada.clone(), ada_link.clone()), (clash.clone(), clash_link)],
        role_adds: vec![(role.id, ada.id)],
        ..Default::default()
    };
    let actor = Actor { kind: "source".into(), name: "Corp".into() };
    let skipped = s.apply_source_batch(src.id, &batch, &actor).await.unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].reason.contains("already taken"), "{skipped:?}");
    assert_eq!(s.get_user(clash.id).await.unwrap(), None, "nothing of a skipped write is kept");
    assert_eq!(s.get_user(ada.id).await.unwrap().unwrap().source, UserSource::Ldap);
    assert_eq!(s.source_link_of_user(ada.id).await.unwrap(), Some(ada_link.clone()));
    assert_eq!(s.role_members(&[role.id]).await.unwrap(), [(role.id, ada.id)]);
    let changes = s.changes_after(0, 10_000).await.unwrap();
    let kinds: Vec<_> = changes[before..].iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::User, ChangeKind::RoleMembership]);

    // A rename and a suspension, matched by the stable id.
    let linked = s.linked_users(src.id, &["id-ada".to_owned(), "unknown".to_owned()]).await.unwrap();
    assert_eq!(linked.len(), 1);
    let mut input = UserInput::from_user(&linked[0].user);
    input.username = "ada.king".into();
    input.status = Some(UserStatus::Suspended);
    let mut link = linked[0].link.clone();
    link.dn = "uid=ada.king,ou=People,dc=example,dc=com".into();
    link.suspended_by_source = true;
    let renamed = linked[0].user.updated(input, directory::now());
    let batch = SourceBatch {
        updates: vec![SourceUpdate { user: renamed.clone(), expected_version: 1, link }],
        role_removes: vec![(role.id, ada.id)],
        ..Default::default()
    };
    assert!(s.apply_source_batch(src.id, &batch, &actor).await.unwrap().is_empty());
    let now = s.get_user(ada.id).await.unwrap().unwrap();
    assert_eq!((now.username.as_str(), now.status, now.version), ("ada.king", UserStatus::Suspended, 2));
    assert!(s.role_members(&[role.id]).await.unwrap().is_empty());
    let by_dn = s.links_by_dn(src.id, &["UID=ada.king, ou=people,dc=example,dc=com".to_owned()]).await.unwrap();
    assert_eq!(by_dn.len(), 1);
    assert!(by_dn[0].suspended_by_source);
    // The same update again is stale (version 1 is gone): skipped, not applied twice.
    let again = s.apply_source_batch(src.id, &batch, &actor).await.unwrap();
    assert_eq!(again.len(), 1);
    let audit = s.list_audit(&AuditQuery { actor: Some("Corp".into()), ..Default::default() }).await.unwrap();
    let actions: Vec<_> = audit.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["role.remove_user", "user.suspend", "role.add_user", "user.create"]);
    assert_eq!(s.source_links(src.id).await.unwrap().len(), 1);
}

crate::contract!(
    sources_keep_their_password_apart_and_are_audited,
    one_open_sync_per_source_and_stale_ones_are_taken_over,
    batches_write_users_links_and_roles_with_audit_and_changes,
    a_batch_skips_each_write_it_cannot_make_and_makes_the_rest,
);

/// Each write a batch cannot make is skipped with its reason (a taken username or e-mail
/// address, a user deleted here); the other writes of the batch are made.
#[expect(clippy::disallowed_methods, reason = "the contract of the primitive the service layer calls")]
async fn a_batch_skips_each_write_it_cannot_make_and_makes_the_rest(s: Arc<dyn Store>) {
    let src = source("Corp");
    s.create_source(&src, "c", &Actor::cli()).await.unwrap();
    let actor = Actor { kind: "source".into(), name: "Corp".into() };
    let mut local = User::new(
        UserInput { username: "lena".into(), email: Some("lena@example.com".into()), ..Default::default() },
        UserSource::Local,
        directory::now(),
    );
    s.create_user(&local, &Actor::cli()).await.unwrap();
    let (ada, ada_link) = person("ada", src.id, "id-ada");
    let (bob, bob_link) = person("bob", src.id, "id-bob");
    let (gone, gone_link) = person("gone", src.id, "id-gone");
    let mut lena2 = person("lena2", src.id, "id-lena2");
    lena2.0.email = Some("LENA@example.com".into());
    let batch = SourceBatch {
        creates: vec![
            (ada.clone(), ada_link.clone()),
            lena2.clone(),
            (bob.clone(), bob_link.clone()),
            (gone.clone(), gone_link.clone()),
        ],
        ..Default::default()
    };
    let skipped = s.apply_source_batch(src.id, &batch, &actor).await.unwrap();
    assert_eq!(
        skipped.iter().map(|w| (w.user_id, w.stable_id.as_str())).collect::<Vec<_>>(),
        [(lena2.0.id, "id-lena2")]
    );
    assert!(skipped[0].reason.contains("already used by another user"), "{skipped:?}");
    assert_eq!(s.get_user(lena2.0.id).await.unwrap(), None);
    s.delete_user(gone.id, None, &Actor::cli()).await.unwrap();

    let update = |user: &User, link: &SourceLink, edit: &dyn Fn(&mut UserInput)| {
        let mut input = UserInput::from_user(user);
        edit(&mut input);
        SourceUpdate { user: user.updated(input, directory::now()), expected_version: user.version, link: link.clone() }
    };
    let stale = SourceUpdate { expected_version: 7, ..update(&bob, &bob_link, &|i| i.title = Some("Stale".into())) };
    let batch = SourceBatch {
        updates: vec![
            update(&ada, &ada_link, &|i| i.username = "LENA".into()),
            update(&ada, &ada_link, &|i| i.email = Some("lena@example.com".into())),
            stale,
            update(&gone, &gone_link, &|i| i.title = Some("Ghost".into())),
            update(&bob, &bob_link, &|i| i.title = Some("Engineer".into())),
        ],
        ..Default::default()
    };
    let skipped = s.apply_source_batch(src.id, &batch, &actor).await.unwrap();
    let reasons: Vec<(&str, &str)> = skipped.iter().map(|w| (w.stable_id.as_str(), w.reason.as_str())).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].0 == "id-ada" && reasons[0].1.contains("already taken"), "{reasons:?}");
    assert!(reasons[1].0 == "id-ada" && reasons[1].1.contains("already used by another user"), "{reasons:?}");
    assert!(reasons[2].0 == "id-bob" && reasons[2].1.contains("changed during the sync"), "{reasons:?}");
    assert!(reasons[3].0 == "id-gone" && reasons[3].1.contains("deleted here"), "{reasons:?}");
    assert_eq!(s.get_user(bob.id).await.unwrap().unwrap().title.as_deref(), Some("Engineer"), "the rest is written");
    let ada_now = s.get_user(ada.id).await.unwrap().unwrap();
    assert_eq!((ada_now.username.as_str(), ada_now.email, ada_now.version), ("ada", None, 1));

    // Once the address is free, the next sync writes it.
    local.email = None;
    local.version = 2;
    s.update_user(&local, 1, &Actor::cli()).await.unwrap();
    let batch = SourceBatch { creates: vec![lena2.clone()], ..Default::default() };
    assert!(s.apply_source_batch(src.id, &batch, &actor).await.unwrap().is_empty());
    assert_eq!(s.get_user(lena2.0.id).await.unwrap().unwrap().email.as_deref(), Some("LENA@example.com"));
}
