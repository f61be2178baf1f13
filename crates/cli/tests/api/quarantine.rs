//! Quarantine (issue 17, item 6): an app whose operations fail too often, or that refuses the
//! credentials three times in a row, has its queue paused until a connection test succeeds or
//! an admin resumes it; other apps go on; nothing is lost. Against the test kit's SCIM app.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::{ScimApp, ScimAppOptions, Switches};

use crate::support::{Backend, TestServer};

const APP_TOKEN: &str = "quarantine-app-token-51c2";

fn scim_app() -> ScimApp {
    ScimApp::start(ScimAppOptions { token: Some(APP_TOKEN.into()), ..Default::default() }).unwrap()
}

/// An app in Provisioner for `target`, with provisioning on, granted to `role`.
async fn app(s: &TestServer, name: &str, target: &ScimApp, token: &str, role: &str) -> String {
    let a = s
        .post(
            "/api/v1/apps",
            json!({"name": name, "connection": {"base_url": target.base_url(),
                "auth": {"type": "bearer", "token": token}}, "provisioning": {"enabled": true}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.put(&format!("/api/v1/roles/{role}/apps/{id}")).await.status, StatusCode::NO_CONTENT);
    id
}

async fn role(s: &TestServer) -> String {
    s.post("/api/v1/roles", json!({"name": "Staff"})).await.body["id"].as_str().unwrap().to_owned()
}

/// Users `{prefix}{from..to}`, each in `role`.
async fn people(s: &TestServer, role: &str, prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    for i in range {
        let id = s.user(&format!("{prefix}{i:03}")).await["id"].as_str().unwrap().to_owned();
        assert_eq!(s.put(&format!("/api/v1/roles/{role}/users/{id}")).await.status, StatusCode::NO_CONTENT);
        ids.push(id);
    }
    ids
}

async fn health(s: &TestServer, app: &str) -> Value {
    let h = s.get(&format!("/api/v1/apps/{app}/health")).await;
    assert_eq!(h.status, StatusCode::OK, "{h:#?}");
    h.body
}

/// Polls `probe` until it answers `Some`, for at most 60 s.
async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn events(s: &TestServer, query: &str) -> Vec<Value> {
    let e = s.get(&format!("/api/v1/events?limit=500&{query}")).await;
    assert_eq!(e.status, StatusCode::OK, "{e:#?}");
    e.body["items"].as_array().unwrap().clone()
}

/// Accounts of the app that are provisioned.
async fn provisioned(s: &TestServer, app: &str) -> usize {
    let a = s.get(&format!("/api/v1/apps/{app}/accounts?limit=500")).await;
    a.body["items"].as_array().unwrap().iter().filter(|a| a["status"] == "provisioned").count()
}

async fn audit_actions(s: &TestServer, app: &str) -> Vec<(String, String)> {
    let a = s.get(&format!("/api/v1/audit?target_type=app&target_id={app}&limit=500")).await;
    a.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["actor"]["kind"].as_str().unwrap_or("").to_owned()))
        .collect()
}

async fn a_failing_app_is_quarantined_until_its_probe_succeeds(backend: Backend) {
    let sick = scim_app();
    let well = scim_app();
    let s = TestServer::start_on(backend).await; // probes every second
    let staff = role(&s).await;
    let a = app(&s, "Sick", &sick, APP_TOKEN, &staff).await;
    let b = app(&s, "Well", &well, APP_TOKEN, &staff).await;
    for id in [&a, &b] {
        let t = s.post(&format!("/api/v1/apps/{id}/connection/test"), json!({})).await;
        assert_eq!(t.status, StatusCode::OK, "{t:#?}");
    }
    let h = health(&s, &a).await;
    assert_eq!((h["state"].as_str(), h["last_test"]["ok"].as_bool()), (Some("active"), Some(true)), "{h:#}");
    // The app fails 3 of every 5 writes, and its connection test fails too.
    sick.set_switches(Switches { fail_writes_percent: 60, config_unavailable: true, ..Default::default() });
    people(&s, &staff, "p", 0..80).await;

    let h = until("quarantine", || async {
        let h = health(&s, &a).await;
        (h["state"] == "quarantined").then_some(h)
    })
    .await;
    let reason = h["reason"].as_str().unwrap();
    assert!(reason.contains("operations failed within 15 minutes"), "{reason}");
    assert!(h["since"].is_string() && h["next_probe"].is_string(), "{h:#}");
    // Nothing is lost: what did not run waits in the queue.
    assert!(h["queued"].as_i64().unwrap() > 0, "{h:#}");
    assert!(audit_actions(&s, &a).await.contains(&("app.quarantine".into(), "system".into())));

    // Probes fail while the app is down; between two of them it receives no write.
    let first = until("a failed probe", || async {
        let h = health(&s, &a).await;
        (h["last_test"]["ok"] == false).then(|| h["last_test"]["at"].clone())
    })
    .await;
    let writes = sick.counts().writes();
    // Another app keeps provisioning meanwhile, new people included.
    people(&s, &staff, "q", 0..10).await;
    until("the other app to provision everyone", || async { (provisioned(&s, &b).await == 90).then_some(()) }).await;
    until("a second failed probe", || async {
        let h = health(&s, &a).await;
        (h["last_test"]["ok"] == false && h["last_test"]["at"] != first).then_some(())
    })
    .await;
    assert_eq!(sick.counts().writes(), writes, "a quarantined app receives no writes");
    assert_eq!(health(&s, &a).await["state"], "quarantined");
    assert_eq!(well.users().len(), 90);

    // The app recovers: the next probe resumes it, and every user converges.
    sick.set_switches(Switches::default());
    until("the probe to resume the app", || async { (health(&s, &a).await["state"] == "active").then_some(()) }).await;
    until("every user in the recovered app", || async { (provisioned(&s, &a).await == 90).then_some(()) }).await;
    assert_eq!(sick.users().len(), 90, "each account created once");
    let h = health(&s, &a).await;
    assert_eq!((h["last_test"]["ok"].as_bool(), h["reason"].is_null()), (Some(true), true), "{h:#}");
    assert!(audit_actions(&s, &a).await.contains(&("app.resume".into(), "system".into())));
    // The failures stay on record, resolved by the creates that followed: none is a failure now.
    let failed: Vec<Value> =
        events(&s, &format!("app={a}")).await.into_iter().filter(|e| e["status"] == "failed").collect();
    assert!(failed.len() >= 20, "{} failed events", failed.len());
    assert!(failed.iter().all(|e| e["resolved_by"].is_string()), "{failed:#?}");
    assert!(events(&s, &format!("app={a}&status=failed")).await.is_empty());
}

async fn refused_credentials_quarantine_and_an_admin_resumes(backend: Backend) {
    let target = scim_app();
    // Probes an hour apart: only the admin resumes here.
    let s = TestServer::start_with(backend, |c| c.quarantine.backoff = vec![Duration::from_secs(3600)]).await;
    let staff = role(&s).await;
    let a = app(&s, "Locked", &target, "a-wrong-token", &staff).await;
    s.post(&format!("/api/v1/apps/{a}/resume"), json!({})).await.problem(409);
    s.post("/api/v1/apps/0190a4d0-0000-7000-8000-000000000000/resume", json!({})).await.problem(404);
    s.post(&format!("/api/v1/apps/{a}/connection/test"), json!({})).await.problem(502);
    let h = health(&s, &a).await;
    assert_eq!((h["state"].as_str(), h["last_test"]["ok"].as_bool()), (Some("active"), Some(false)), "{h:#}");
    assert!(h["last_test"]["message"].as_str().unwrap().contains("Invalid authentication"), "{h:#}");

    people(&s, &staff, "r", 0..3).await;
    let h = until("quarantine", || async {
        let h = health(&s, &a).await;
        (h["state"] == "quarantined").then_some(h)
    })
    .await;
    assert!(h["reason"].as_str().unwrap().contains("refused the credentials 3 times in a row"), "{h:#}");
    assert_eq!(events(&s, &format!("app={a}&status=failed")).await.len(), 3);

    // The right credential; the queue stays paused until someone resumes it.
    let p = s
        .patch(&format!("/api/v1/apps/{a}"), json!({"connection": {"auth": {"type": "bearer", "token": APP_TOKEN}}}))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    let writes = target.counts().writes();
    assert_eq!(health(&s, &a).await["state"], "quarantined");
    let r = s.post(&format!("/api/v1/apps/{a}/resume"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{r:#?}");
    assert_eq!((r.body["state"].as_str(), r.body["reason"].is_null()), (Some("active"), true), "{r:#?}");
    assert!(audit_actions(&s, &a).await.contains(&("app.resume".into(), "token".into())));
    until("the users to be provisioned", || async { (provisioned(&s, &a).await == 3).then_some(()) }).await;
    assert_eq!(target.users().len(), 3);
    assert_eq!(target.counts().writes(), writes + 3, "one create each after the resume");
    assert!(events(&s, &format!("app={a}&status=failed")).await.is_empty(), "the failures are resolved");
}

async fn rate_limits_never_fail_an_operation_nor_quarantine(backend: Backend) {
    let target = scim_app();
    let s = TestServer::start_on(backend).await;
    let staff = role(&s).await;
    let a = app(&s, "Busy", &target, APP_TOKEN, &staff).await;
    // Every write answers 429 (Retry-After: 0) until the app has room again.
    target.set_switches(Switches { throttle_writes_percent: 100, ..Default::default() });
    // The 429s halve the app's concurrency (4): the first operations, retried at once
    // (`Retry-After: 0`) and ahead of those queued later, go past the attempts after which
    // any other retryable error fails an operation; the others wait their turn.
    let users = people(&s, &staff, "t", 0..4).await;
    let over = engine::worker::MAX_ATTEMPTS + 1;
    until("an operation retried past the attempt limit", || async {
        let e = events(&s, &format!("app={a}")).await;
        (e.len() == users.len() && e.iter().any(|e| e["attempts"].as_i64().unwrap() >= over)).then_some(())
    })
    .await;
    assert!(events(&s, &format!("app={a}&status=failed")).await.is_empty());
    let h = health(&s, &a).await;
    assert_eq!(h["state"], "active");
    assert!(h["concurrency"].as_u64().unwrap() <= 2, "{h:#}");
    target.set_switches(Switches::default());
    until("the users to be provisioned", || async { (provisioned(&s, &a).await == users.len()).then_some(()) }).await;
    assert_eq!(target.users().len(), users.len());
    assert_eq!(health(&s, &a).await["state"], "active");
}

crate::on_both_backends!(
    a_failing_app_is_quarantined_until_its_probe_succeeds,
    refused_credentials_quarantine_and_an_admin_resumes,
    rate_limits_never_fail_an_operation_nor_quarantine,
);
