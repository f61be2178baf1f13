//! Faults the real SCIM server cannot produce (429 with Retry-After, 5xx, a 400 that later
//! succeeds), from a small fake app, and an app whose kind the engine has no connector for.
//! Everything else is tested against scim2-server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::support::{Backend, TestServer};

/// A scripted answer: HTTP status and Retry-After.
type Scripted = (u16, Option<&'static str>);

/// What the fake answers to the first POSTs of /Users, in order; then 201.
#[derive(Clone)]
struct Fake {
    script: Arc<Mutex<Vec<Scripted>>>,
    posts: Arc<AtomicUsize>,
    created: Arc<Mutex<Vec<Value>>>,
}

async fn spc() -> Json<Value> {
    Json(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true}, "filter": {"supported": true, "maxResults": 100},
        "bulk": {"supported": false}, "etag": {"supported": false}, "sort": {"supported": false},
        "changePassword": {"supported": false}}))
}

/// Lookups find nothing (the scripted failures leave no account behind).
async fn list() -> Json<Value> {
    Json(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"], "totalResults": 0, "Resources": []}))
}

async fn create(State(f): State<Fake>, _h: HeaderMap, Json(body): Json<Value>) -> Response {
    f.posts.fetch_add(1, Ordering::SeqCst);
    let next = {
        let mut s = f.script.lock().unwrap();
        if s.is_empty() {
            None
        } else {
            Some(s.remove(0))
        }
    };
    match next {
        Some((status, retry_after)) => {
            let code = StatusCode::from_u16(status).unwrap();
            let mut resp = (
                code,
                Json(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                "status": status.to_string(), "detail": "scripted failure"})),
            )
                .into_response();
            if let Some(ra) = retry_after {
                resp.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            resp
        }
        None => {
            let mut created = body.clone();
            created["id"] = json!(format!("fake-{}", f.posts.load(Ordering::SeqCst)));
            f.created.lock().unwrap().push(created.clone());
            (StatusCode::CREATED, Json(created)).into_response()
        }
    }
}

async fn start_fake(script: Vec<Scripted>) -> (String, Fake) {
    let fake = Fake { script: Arc::new(Mutex::new(script)), posts: Arc::default(), created: Arc::default() };
    let app = Router::new()
        .route("/ServiceProviderConfig", get(spc))
        .route("/Users", get(list).merge(post(create)))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

async fn provision_one(s: &TestServer, base_url: &str) -> (String, String) {
    let app = s
        .post(
            "/api/v1/apps",
            json!({"name": "Fake", "connection": {"base_url": base_url,
            "auth": {"type": "bearer", "token": "t0k3n-t0k3n"}}, "provisioning": {"enabled": true}}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let role = s.post("/api/v1/roles", json!({"name": "R"})).await.body["id"].as_str().unwrap().to_owned();
    s.put(&format!("/api/v1/roles/{role}/apps/{app}")).await;
    let u = s.post("/api/v1/users", json!({"username": "faulty"})).await.body["id"].as_str().unwrap().to_owned();
    s.put(&format!("/api/v1/roles/{role}/users/{u}")).await;
    (app, u)
}

async fn latest(s: &TestServer, user: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = s.get(&format!("/api/v1/events?user={user}&limit=1")).await.body["items"][0].clone();
        if done(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "timed out: {e:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rate_limiting_slows_down_without_failing(backend: Backend) {
    // Three 429s exhaust the client's own retries once; the queue waits Retry-After and
    // runs it again.
    let (url, fake) = start_fake(vec![(429, Some("1")), (429, Some("1")), (429, Some("1"))]).await;
    let s = TestServer::start_on(backend).await;
    let (_, u) = provision_one(&s, &url).await;
    let e = latest(&s, &u, |e| e["status"] == "provisioned" || e["status"] == "failed").await;
    assert_eq!(e["status"], "provisioned", "{e:#}");
    assert_eq!(e["attempts"], 2, "one retry from the queue after the client's own retries");
    assert_eq!(fake.posts.load(Ordering::SeqCst), 4);
    assert_eq!(fake.created.lock().unwrap().len(), 1, "created exactly once");
}

async fn server_errors_are_retried(backend: Backend) {
    let (url, fake) = start_fake(vec![(500, None), (503, None)]).await;
    let s = TestServer::start_on(backend).await;
    let (_, u) = provision_one(&s, &url).await;
    let e = latest(&s, &u, |e| e["status"] == "provisioned" || e["status"] == "failed").await;
    assert_eq!(e["status"], "provisioned", "{e:#}");
    assert_eq!(fake.posts.load(Ordering::SeqCst), 3);
}

async fn a_rejected_request_fails_at_once_and_retry_runs_it_again(backend: Backend) {
    let (url, fake) = start_fake(vec![(400, None)]).await;
    let s = TestServer::start_on(backend).await;
    let (_, u) = provision_one(&s, &url).await;
    let failed = latest(&s, &u, |e| e["status"] == "failed").await;
    assert_eq!(fake.posts.load(Ordering::SeqCst), 1, "no retry on a 400");
    assert!(failed["reason"].as_str().unwrap().contains("Fake"), "the reason names the app: {failed:#}");
    assert!(!failed["recommended_action"].as_str().unwrap().is_empty());
    let retried = s.post(&format!("/api/v1/events/{}/retry", failed["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(retried.status, StatusCode::OK, "{retried:#?}");
    let done = latest(&s, &u, |e| e["status"] == "provisioned").await;
    assert_eq!(done["id"], failed["id"], "the same event, run again");
    assert_eq!(done["attempts"], 2);
    // A retry of an event that did not fail is refused.
    s.post(&format!("/api/v1/events/{}/retry", failed["id"].as_str().unwrap()), json!({})).await.problem(409);
}

/// An app whose connector kind has no factory in the engine's registry: its operations fail
/// with a reason naming the app and the kind (no panic), and so does its connection test.
async fn an_app_whose_kind_has_no_connector_fails_clearly(backend: Backend) {
    let s = TestServer::start_with_connectors(backend, engine::ConnectorRegistry::new()).await;
    let (app, u) = provision_one(&s, "http://127.0.0.1:9").await;
    let failed = latest(&s, &u, |e| e["status"] == "failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("Fake") && reason.contains("no connector for apps of kind \"scim\""), "{failed:#}");
    assert!(!failed["recommended_action"].as_str().unwrap().is_empty());
    let test = s.post(&format!("/api/v1/apps/{app}/connection/test"), json!({})).await;
    test.problem(502);
    assert!(test.body["detail"].as_str().unwrap().contains("no connector for apps of kind"), "{test:#?}");
}

crate::on_both_backends!(
    rate_limiting_slows_down_without_failing,
    server_errors_are_retried,
    a_rejected_request_fails_at_once_and_retry_runs_it_again,
    an_app_whose_kind_has_no_connector_fails_clearly,
);
