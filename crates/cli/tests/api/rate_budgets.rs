//! Rate budgets (issue 22, items 3 and 4): `provisioning.rate_limit` is validated; an app's
//! budget holds across three processes on PostgreSQL while another app provisions at its own
//! pace; an app's `429` with `Retry-After` pauses its requests from every process, and is never a
//! failure; the health's queue, rate and ETA (the console's: `console.rs`).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::{ScimApp, ScimAppOptions, ScimAppRequest, Switches};

use crate::binary::Running;
use crate::support::{Backend, TestServer};

const APP_TOKEN: &str = "rate-budget-app-token-7d1e";
const ADMIN_TOKEN: &str = "rate-budget-admin-token-0123456789";

fn scim_app(switches: Switches) -> ScimApp {
    ScimApp::start(ScimAppOptions { token: Some(APP_TOKEN.into()), switches, log_requests: true, ..Default::default() })
        .unwrap()
}

/// Polls `probe` until it answers `Some`, for at most `limit`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the token bucket's promise on what `app` received: in any window, at most `burst`
/// requests plus `per_minute` a minute (with `slack` requests for the moments between taking a
/// token and the request's arrival); so at most `per_minute + burst` in any 60 s.
fn assert_within_budget(log: &[ScimAppRequest], per_minute: f64, burst: usize, slack: usize) {
    for (i, first) in log.iter().enumerate() {
        for (j, last) in log.iter().enumerate().skip(i) {
            let secs = last.at.duration_since(first.at).as_secs_f64();
            let allowed = burst + slack + (per_minute * secs / 60.0).floor() as usize;
            assert!(j - i < allowed, "{} requests within {secs:.2} s: more than {allowed}", j - i + 1);
            if secs <= 60.0 {
                assert!(j - i < per_minute as usize + burst, "{} requests within 60 s", j - i + 1);
            }
        }
    }
}

/// Asserts that after each `429` with `Retry-After` the app received nothing until the time it
/// asked for, except what was already on its way (within `grace`).
fn assert_pauses_honoured(log: &[ScimAppRequest], grace: Duration) {
    let refused: Vec<&ScimAppRequest> = log.iter().filter(|r| r.status == 429).collect();
    for r in refused {
        // The switch answers the whole seconds until its window has room: at least 1.
        let quiet_from = r.at + grace;
        let quiet_to = r.at + Duration::from_millis(950);
        let during: Vec<&ScimAppRequest> = log.iter().filter(|x| x.at > quiet_from && x.at < quiet_to).collect();
        assert!(during.is_empty(), "requests during a pause: {during:#?}");
    }
}

async fn events(s: &TestServer, query: &str) -> Vec<Value> {
    let e = s.get(&format!("/api/v1/events?limit=500&{query}")).await;
    assert_eq!(e.status, StatusCode::OK, "{e:#?}");
    e.body["items"].as_array().unwrap().clone()
}

async fn rate_limits_are_validated_and_the_health_tells_the_eta(backend: Backend) {
    let target = scim_app(Switches::default());
    let s = TestServer::start_on(backend).await;
    let a = s
        .post(
            "/api/v1/apps",
            json!({"name": "Slow", "connection": {"base_url": target.base_url(),
                "auth": {"type": "bearer", "token": APP_TOKEN}},
                "provisioning": {"enabled": false, "lookup_before_create": false}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
    let id = a.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/apps/{id}");
    // Wrong types and ranges: 422 naming the field, and nothing changes.
    for (bad, field) in [
        (json!({"per_minute": "fast"}), "provisioning.rate_limit.per_minute"),
        (json!({"per_minute": -5}), "provisioning.rate_limit.per_minute"),
        (json!({"per_minute": 0}), "provisioning.rate_limit.per_minute"),
        (json!({"per_minute": 100_001}), "provisioning.rate_limit.per_minute"),
        (json!({"per_minute": 60, "burst": 0}), "provisioning.rate_limit.burst"),
        (json!({"per_minute": 60, "burts": 3}), "provisioning.rate_limit.burts"),
        (json!({"burst": 3}), "provisioning.rate_limit.per_minute"),
        (json!(120), "provisioning.rate_limit"),
    ] {
        s.patch(&path, json!({"provisioning": {"rate_limit": bad}})).await.problem_field(422, field);
    }
    let app = s.get(&path).await.body;
    assert_eq!((app["version"].as_i64(), &app["provisioning"]["rate_limit"]), (Some(1), &Value::Null));
    // The default burst is filled in: a tenth of the budget.
    let p = s.patch(&path, json!({"provisioning": {"rate_limit": {"per_minute": 600}}})).await;
    assert_eq!(p.body["provisioning"]["rate_limit"], json!({"per_minute": 600, "burst": 60}), "{p:#?}");

    // Nothing queued: no ETA.
    let h = s.get(&format!("{path}/health")).await.body;
    assert_eq!((h["queued"].as_i64(), &h["eta_seconds"], &h["rate_basis"]), (Some(0), &Value::Null, &Value::Null));
    assert_eq!((h["concurrency"].as_u64(), &h["paused_until"]), (Some(4), &Value::Null), "{h:#}");

    // 60 a minute, 2 at once: 8 accounts take 6 s or so; the health tells the queue and its ETA.
    let p =
        s.patch(&path, json!({"provisioning": {"enabled": true, "rate_limit": {"per_minute": 60, "burst": 2}}})).await;
    assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    let role = s.post("/api/v1/roles", json!({"name": "Staff"})).await.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.put(&format!("/api/v1/roles/{role}/apps/{id}")).await.status, StatusCode::NO_CONTENT);
    for i in 0..8 {
        let u = s.user(&format!("eta{i}")).await["id"].as_str().unwrap().to_owned();
        assert_eq!(s.put(&format!("/api/v1/roles/{role}/users/{u}")).await.status, StatusCode::NO_CONTENT);
    }
    let h = until("a queue with an ETA", Duration::from_secs(30), || async {
        let h = s.get(&format!("{path}/health")).await.body;
        (h["queued"].as_i64() > Some(0) && h["eta_seconds"].is_i64()).then_some(h)
    })
    .await;
    assert!(h["eta_seconds"].as_i64().unwrap() >= 1, "{h:#}");
    assert!(["budget", "observed"].contains(&h["rate_basis"].as_str().unwrap()), "{h:#}");
    assert_eq!(h["rate_limit"], json!({"per_minute": 60, "burst": 2}));
    until("every account", Duration::from_secs(60), || async { (target.users().len() == 8).then_some(()) }).await;
    assert_within_budget(&target.requests(), 60.0, 2, 2);
    let h = until("an empty queue", Duration::from_secs(30), || async {
        let h = s.get(&format!("{path}/health")).await.body;
        (h["queued"] == 0).then_some(h)
    })
    .await;
    assert_eq!((&h["eta_seconds"], h["rate_per_minute"].is_f64()), (&Value::Null, true), "{h:#}");
    assert!(events(&s, &format!("app={id}&status=failed")).await.is_empty());
}

/// Three `provisioner` processes on one PostgreSQL database, three apps provisioning the same
/// 40 people at once: one with a budget of 120 requests a minute (bursts of 5), one without
/// (at its own pace), one whose app answers 429 with `Retry-After` beyond 5 requests in 2 s.
#[tokio::test]
async fn a_budget_holds_across_three_processes_and_retry_after_pauses_them_all() {
    const PEOPLE: usize = 40;
    let budgeted = scim_app(Switches::default());
    let free = scim_app(Switches::default());
    let throttled = scim_app(Switches { rate_limit: Some((5, Duration::from_secs(2))), ..Default::default() });
    let db = testkit::postgres::TestDatabase::create().await;
    let env = [
        ("PROVISIONER_DATABASE_URL", db.url.clone()),
        ("PROVISIONER_SECRET_KEY", store::secrets::Keyring::generate_key()),
    ];
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = Vec::new();
    for d in &dirs {
        procs.push(Running::start_with(d.path(), Some(ADMIN_TOKEN), &env).await);
    }
    let c = reqwest::Client::new();
    let api = |p: usize, path: &str| procs[p].url(path);
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{status}: {body:#}");
        body
    };
    let role = send(c.post(api(0, "/api/v1/roles")).json(&json!({"name": "Everyone"}))).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut apps = Vec::new();
    for (name, target, limit) in [
        ("Budgeted", &budgeted, json!({"per_minute": 120, "burst": 5})),
        ("Free", &free, Value::Null),
        ("Throttled", &throttled, Value::Null),
    ] {
        let a = send(c.post(api(0, "/api/v1/apps")).json(&json!({"name": name,
            "connection": {"base_url": target.base_url(), "auth": {"type": "bearer", "token": APP_TOKEN}},
            "provisioning": {"enabled": false, "lookup_before_create": false, "rate_limit": limit}})))
        .await;
        let id = a["id"].as_str().unwrap().to_owned();
        send(c.put(api(0, &format!("/api/v1/roles/{role}/apps/{id}")))).await;
        apps.push(id);
    }
    for i in 0..PEOPLE {
        let p = i % 3;
        let u = send(
            c.post(api(p, "/api/v1/users"))
                .json(&json!({"username": format!("person{i:02}"), "email": format!("p{i}@example.com")})),
        )
        .await;
        send(c.put(api(p, &format!("/api/v1/roles/{role}/users/{}", u["id"].as_str().unwrap())))).await;
    }
    // All three at once.
    for (i, id) in apps.iter().enumerate() {
        send(c.patch(api(i, &format!("/api/v1/apps/{id}"))).json(&json!({"provisioning": {"enabled": true}}))).await;
    }

    // The free app is done long before the budgeted one could be.
    until("the free app", Duration::from_secs(60), || async { (free.users().len() == PEOPLE).then_some(()) }).await;
    assert!(budgeted.users().len() < PEOPLE, "the budgeted app kept pace with the free one");
    let h = send(c.get(api(1, &format!("/api/v1/apps/{}/health", apps[0])))).await;
    assert!(h["queued"].as_i64().unwrap() > 0 && h["eta_seconds"].as_i64().unwrap() > 0, "{h:#}");
    assert_eq!(h["rate_limit"], json!({"per_minute": 120, "burst": 5}));

    for (target, name) in [(&budgeted, "the budgeted app"), (&throttled, "the throttled app")] {
        until(name, Duration::from_secs(90), || async { (target.users().len() == PEOPLE).then_some(()) }).await;
    }
    // Every event done, none failed, no app quarantined.
    for id in &apps {
        let h = until("an empty queue", Duration::from_secs(30), || async {
            let h = send(c.get(api(2, &format!("/api/v1/apps/{id}/health")))).await;
            (h["queued"] == 0).then_some(h)
        })
        .await;
        assert_eq!((h["state"].as_str(), &h["eta_seconds"]), (Some("active"), &Value::Null), "{h:#}");
        let failed = send(c.get(api(0, &format!("/api/v1/events?app={id}&status=failed")))).await;
        assert_eq!(failed["items"], json!([]), "failures of {id}");
    }

    // The budget held across the three processes: in any window, at most the burst plus two
    // requests a second (and two requests of slack for the time between a token and its arrival).
    let log = budgeted.requests();
    assert!(log.len() >= PEOPLE, "{} requests", log.len());
    assert_within_budget(&log, 120.0, 5, 2);
    // The free app went faster than that budget would have let it.
    let log = free.requests();
    let span = log.last().unwrap().at.duration_since(log[0].at).as_secs_f64();
    assert!(log.len() as f64 > 5.0 + 2.0 * span + 1.0, "{} requests in {span:.1} s", log.len());
    // The throttled app asked to wait, and no process sent it anything until then (but what
    // was already on its way); its 429s were never failures.
    let log = throttled.requests();
    assert!(log.iter().any(|r| r.status == 429), "the app never had to refuse");
    assert_pauses_honoured(&log, Duration::from_millis(500));
    let seconds = |log: &[ScimAppRequest]| log.last().unwrap().at.duration_since(log[0].at).as_secs_f64();
    let (b, t) = (budgeted.requests(), throttled.requests());
    eprintln!(
        "rate budgets: the budgeted app received {} requests in {:.1} s, the free one {} in {span:.1} s, \
         the throttled one {} in {:.1} s ({} answered 429)",
        b.len(),
        seconds(&b),
        free.requests().len(),
        t.len(),
        seconds(&t),
        t.iter().filter(|r| r.status == 429).count()
    );
    for p in procs {
        p.kill().await;
    }
}

crate::on_both_backends!(rate_limits_are_validated_and_the_health_tells_the_eta);
