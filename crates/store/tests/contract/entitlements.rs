//! The entitlements storage contract: a refresh runs once at a time (unless stale), records
//! pages of values (the last of a value seen twice wins), and on success removes the values the
//! app no longer has; values are found by display name without case and listed in pages.

use std::sync::Arc;
use std::time::Duration;

use store::{PageRequest, Store};
use uuid::Uuid;

crate::contract!(a_refresh_records_pages_and_removes_what_is_gone, entitlements_are_found_and_paged);

const HOUR: Duration = Duration::from_secs(3600);

fn items(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(id, name)| ((*id).to_owned(), (*name).to_owned())).collect()
}

async fn names(s: &dyn Store, app: Uuid) -> Vec<(String, String)> {
    let page = s.list_entitlements(app, &PageRequest { limit: 500, cursor: None }).await.unwrap();
    page.items.into_iter().map(|e| (e.remote_id, e.display_name)).collect()
}

async fn a_refresh_records_pages_and_removes_what_is_gone(s: Arc<dyn Store>) {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(s.entitlement_refresh(a).await.unwrap(), None);
    assert!(s.begin_entitlement_refresh(a, HOUR).await.unwrap());
    assert!(!s.begin_entitlement_refresh(a, HOUR).await.unwrap(), "one refresh at a time");
    s.record_entitlements(a, "group", &items(&[("1", "Admins"), ("2", "Devs"), ("1", "Owners")]), 3, Some(4))
        .await
        .unwrap();
    s.record_entitlements(a, "group", &items(&[("3", "Ops")]), 4, Some(4)).await.unwrap();
    s.add_entitlement(b, "group", "1", "Other app").await.unwrap();
    let r = s.entitlement_refresh(a).await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.fetched, r.total, r.finished_at), ("running", 4, Some(4), None));
    assert_eq!(
        names(&*s, a).await,
        items(&[("2", "Devs"), ("3", "Ops"), ("1", "Owners")]),
        "the last of a value seen twice in a page wins"
    );
    s.finish_entitlement_refresh(a, "group", None).await.unwrap();
    let r = s.entitlement_refresh(a).await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.error), ("done", None));
    assert!(r.finished_at.is_some());
    assert_eq!(names(&*s, a).await.len(), 3, "values seen by this refresh stay");

    // A second refresh sees only two of them: on success the third is gone.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(s.begin_entitlement_refresh(a, HOUR).await.unwrap(), "a finished refresh can start again");
    s.record_entitlements(a, "group", &items(&[("2", "Developers"), ("3", "Ops")]), 2, None).await.unwrap();
    s.finish_entitlement_refresh(a, "group", None).await.unwrap();
    assert_eq!(names(&*s, a).await, items(&[("2", "Developers"), ("3", "Ops")]));
    assert_eq!(names(&*s, b).await, items(&[("1", "Other app")]), "per app");

    // A failed refresh removes nothing.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(s.begin_entitlement_refresh(a, HOUR).await.unwrap());
    let r = s.entitlement_refresh(a).await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.fetched, r.total, r.error, r.finished_at), ("running", 0, None, None, None));
    s.finish_entitlement_refresh(a, "group", Some("HTTP 500")).await.unwrap();
    let r = s.entitlement_refresh(a).await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.error.as_deref()), ("failed", Some("HTTP 500")));
    assert_eq!(names(&*s, a).await.len(), 2);

    // A running refresh older than `stale_after` is taken over.
    assert!(s.begin_entitlement_refresh(a, HOUR).await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(s.begin_entitlement_refresh(a, Duration::from_millis(1)).await.unwrap(), "stale");
}

async fn entitlements_are_found_and_paged(s: Arc<dyn Store>) {
    let a = Uuid::now_v7();
    let list = items(&[("g1", "Beta"), ("g2", "alpha"), ("g3", "Gamma"), ("g4", "ALPHA")]);
    s.record_entitlements(a, "group", &list, 4, None).await.unwrap();
    s.add_entitlement(a, "role", "r1", "Alpha").await.unwrap();

    let mut found: Vec<String> = s
        .find_entitlements(a, "group", &["Alpha".into(), "gamma".into(), "none".into()])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.remote_id)
        .collect();
    found.sort();
    assert_eq!(found, ["g2", "g3", "g4"], "by display name without case, of one kind");
    assert!(s.find_entitlements(a, "group", &[]).await.unwrap().is_empty());

    let mut seen = Vec::new();
    let mut page = PageRequest { limit: 2, cursor: None };
    loop {
        let got = s.list_entitlements(a, &page).await.unwrap();
        assert!(got.items.len() <= 2);
        seen.extend(got.items.into_iter().map(|e| (e.kind, e.remote_id)));
        match got.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    let expected = [("group", "g2"), ("group", "g4"), ("group", "g1"), ("group", "g3"), ("role", "r1")];
    let expected: Vec<(String, String)> = expected.iter().map(|(k, id)| ((*k).into(), (*id).into())).collect();
    assert_eq!(seen, expected, "by kind, display name without case, remote id");
}
