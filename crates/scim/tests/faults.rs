//! Faults the real scim2-server cannot produce, injected by a tiny axum fake:
//! 429/5xx then success, timeouts, dropped connections, exhausted retries,
//! no retries on 4xx, and OAuth2 token caching and refresh-once-on-401.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: their helpers (outside #[test] functions, where clippy.toml's allow-*-in-tests does not reach) fail the test with a message"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use scim::{Auth, Capabilities, Client, ClientConfig, ScimError, USER_SCHEMA};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A scripted response: status, extra headers, body, delay.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply { status, headers: Vec::new(), body: body.to_string(), delay: Duration::ZERO }
}

const USER: &str = r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"id":"u1","userName":"bj"}"#;
const LIST: &str =
    r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":0,"Resources":[]}"#;

#[derive(Default)]
struct Fake {
    /// Replies in order; the last one repeats.
    script: Mutex<Vec<Reply>>,
    calls: AtomicUsize,
    /// (method, uri, headers, body) of each request.
    seen: Mutex<Vec<(String, String, HeaderMap, String)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

async fn scripted(
    State(fake): State<Arc<Fake>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = fake.calls.fetch_add(1, Ordering::SeqCst);
    let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
    fake.seen.lock().expect("lock").push((
        method.to_string(),
        uri.to_string(),
        headers,
        String::from_utf8_lossy(&body).to_string(),
    ));
    let r = {
        let script = fake.script.lock().expect("lock");
        script.get(n).or_else(|| script.last()).cloned().unwrap_or_else(|| reply(200, "{}"))
    };
    tokio::time::sleep(r.delay).await;
    fake.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = (StatusCode::from_u16(r.status).expect("status"), r.body.clone()).into_response();
    resp.headers_mut().insert("content-type", "application/scim+json".parse().expect("header"));
    for (k, v) in r.headers {
        resp.headers_mut().insert(k, v.parse().expect("header"));
    }
    resp
}

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}/v2")
}

async fn fake(script: Vec<Reply>) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake { script: Mutex::new(script), ..Fake::default() });
    let url = serve(Router::new().fallback(any(scripted)).with_state(fake.clone())).await;
    (fake, url)
}

fn config(url: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(url, Auth::Bearer { token: "t".into() });
    cfg.max_retries = 3;
    cfg.backoff_base = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(20);
    cfg.retry_after_max = Duration::from_secs(5);
    cfg.timeout = Duration::from_secs(5);
    cfg
}

fn client(url: &str) -> Client {
    Client::new(config(url)).expect("client")
}

#[tokio::test]
async fn retry_after_429_is_honoured_then_success() {
    let mut limited = reply(429, r#"{"status":"429","detail":"slow down"}"#);
    limited.headers.push(("retry-after", "1".into()));
    let (fake, url) = fake(vec![limited, reply(200, USER)]).await;
    let start = Instant::now();
    let user = client(&url).get_user("u1").await.expect("get");
    assert_eq!(user.expect("some")["id"], json!("u1"));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    assert!(start.elapsed() >= Duration::from_millis(950), "{:?}", start.elapsed());
}

#[tokio::test]
async fn retry_after_http_date_and_cap() {
    let mut limited = reply(429, "");
    limited.headers.push(("retry-after", "3600".into()));
    let mut dated = reply(503, "");
    dated.headers.push(("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".into()));
    let (fake, url) = fake(vec![limited, dated, reply(200, USER)]).await;
    let mut cfg = config(&url);
    cfg.retry_after_max = Duration::from_millis(50);
    let start = Instant::now();
    Client::new(cfg).expect("client").get_user("u1").await.expect("get");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    assert!(start.elapsed() < Duration::from_secs(2), "cap not applied");
}

#[tokio::test]
async fn server_error_then_success() {
    let (fake, url) = fake(vec![reply(500, "boom"), reply(502, "<html>bad gateway</html>"), reply(201, USER)]).await;
    let created = client(&url).create_user(&json!({"schemas":[USER_SCHEMA],"userName":"bj"})).await.expect("create");
    assert_eq!(created["id"], json!("u1"));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    // Every attempt carried the SCIM media type and the same body.
    let seen = fake.seen.lock().expect("lock");
    for (method, uri, headers, body) in seen.iter() {
        assert_eq!(method, "POST");
        assert_eq!(uri, "/v2/Users");
        assert_eq!(headers["content-type"], "application/scim+json");
        assert!(headers["accept"].to_str().expect("ascii").starts_with("application/scim+json"));
        assert_eq!(headers["authorization"], "Bearer t");
        assert!(headers["user-agent"].to_str().expect("ascii").starts_with("provisioner-scim/"));
        assert!(body.contains("\"userName\":\"bj\""));
    }
}

#[tokio::test]
async fn retries_exhausted() {
    let (fake, url) = fake(vec![reply(503, r#"{"detail":"maintenance"}"#)]).await;
    let err = client(&url).get_user("u1").await.expect_err("503");
    assert_eq!(err, ScimError::Server { status: 503, detail: Some("maintenance".into()) });
    assert!(err.is_retryable());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 4, "1 try + 3 retries");

    let mut limited = reply(429, "");
    limited.headers.push(("retry-after", "0".into()));
    let (fake, url) = self::fake(vec![limited]).await;
    let err = client(&url).get_user("u1").await.expect_err("429");
    assert_eq!(err, ScimError::RateLimited { retry_after: Some(Duration::ZERO) });
    assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn no_retry_on_client_errors() {
    let cases: Vec<(u16, &str)> = vec![
        (400, r#"{"status":400,"scimType":"invalidValue","detail":"bad"}"#),
        (401, ""),
        (403, "forbidden"),
        (409, r#"{"status":"409","scimType":"uniqueness"}"#),
        (412, ""),
        (404, ""),
        (501, ""),
    ];
    for (status, body) in cases {
        let (fake, url) = fake(vec![reply(status, body)]).await;
        let err = client(&url).replace_user("u1", &json!({"userName":"bj"})).await.expect_err("error");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "{status} was retried");
        assert!(!err.is_retryable(), "{status}: {err:?}");
        assert_eq!(err.status(), Some(status));
        match status {
            400 => assert!(matches!(err, ScimError::BadRequest { scim_type: Some(ref t), .. } if t == "invalidValue")),
            401 | 403 => assert!(err.to_string().starts_with("Invalid authentication")),
            409 => assert!(matches!(err, ScimError::Conflict { scim_type: Some(ref t), .. } if t == "uniqueness")),
            412 => assert!(matches!(err, ScimError::PreconditionFailed { .. })),
            404 => assert!(matches!(err, ScimError::NotFound { .. })),
            _ => assert!(matches!(err, ScimError::Server { status: 501, .. })),
        }
    }
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let mut slow = reply(200, USER);
    slow.delay = Duration::from_secs(3);
    let (fake, url) = fake(vec![slow.clone(), reply(200, USER)]).await;
    let mut cfg = config(&url);
    cfg.timeout = Duration::from_millis(200);
    let c = Client::new(cfg.clone()).expect("client");
    assert!(c.get_user("u1").await.expect("second try").is_some());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);

    let (fake, url) = self::fake(vec![slow]).await;
    cfg.base_url = url;
    cfg.max_retries = 1;
    let start = Instant::now();
    let err = Client::new(cfg).expect("client").get_user("u1").await.expect_err("timeout");
    assert_eq!(err, ScimError::Timeout);
    assert!(err.is_retryable());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// A raw TCP server that drops the first `drops` connections after reading the
/// request (no answer), then answers 200 with a user.
async fn dropping_server(drops: usize) -> (Arc<AtomicUsize>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                if n < drops {
                    // Abort with a TCP RST (connection reset by peer).
                    let _ = sock.set_zero_linger();
                    drop(sock);
                    return;
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/scim+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{USER}",
                    USER.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (count, format!("http://{addr}/v2"))
}

#[tokio::test]
async fn dropped_connection_is_retried() {
    let (count, url) = dropping_server(2).await;
    let user = client(&url).get_user("u1").await.expect("get");
    assert!(user.is_some());
    assert_eq!(count.load(Ordering::SeqCst), 3);

    let (count, url) = dropping_server(usize::MAX).await;
    let err = client(&url).get_user("u1").await.expect_err("reset");
    assert!(matches!(err, ScimError::Network(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(count.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn patch_with_200_body_and_204() {
    let (_, url) = fake(vec![reply(200, USER), reply(204, "")]).await;
    let c = client(&url);
    let op = scim::PatchOp::new().replace("active", json!(false));
    assert!(c.patch_user("u1", op.clone()).await.expect("200").is_some());
    assert!(c.patch_user("u1", op).await.expect("204").is_none());
}

#[tokio::test]
async fn non_json_success_is_invalid_response() {
    let (_, url) = fake(vec![reply(200, "<html>login page</html>")]).await;
    let err = client(&url).get_user("u1").await.expect_err("html");
    assert!(matches!(err, ScimError::InvalidResponse(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn service_provider_config_fallback() {
    // 404 on /ServiceProviderConfig, then the /Users?count=1 probe.
    let (fake, url) = fake(vec![reply(404, ""), reply(200, LIST)]).await;
    let caps = client(&url).service_provider_config().await.expect("caps");
    assert_eq!(caps, Capabilities::default());
    assert!(!caps.patch);
    {
        let seen = fake.seen.lock().expect("lock");
        assert_eq!(seen[0].1, "/v2/ServiceProviderConfig");
        assert_eq!(seen[1].1, "/v2/Users?count=1");
    }

    let (_, url) = self::fake(vec![reply(501, ""), reply(200, LIST)]).await;
    assert_eq!(client(&url).test_connection().await.expect("caps"), Capabilities::default());
    // The probe's own failure is reported.
    let (_, url) = self::fake(vec![reply(404, ""), reply(401, "")]).await;
    let err = client(&url).test_connection().await.expect_err("401");
    assert!(matches!(err, ScimError::InvalidAuthentication { .. }));
}

#[tokio::test]
async fn filter_query_is_percent_encoded() {
    let (fake, url) = fake(vec![reply(200, LIST)]).await;
    let found = client(&url).find_users("userName", "a\"b\\c d+e").await.expect("find");
    assert!(found.is_empty());
    assert_eq!(fake.seen.lock().expect("lock")[0].1, "/v2/Users?filter=userName%20eq%20%22a%5C%22b%5C%5Cc%20d%2Be%22");
}

#[tokio::test]
async fn concurrency_is_limited_per_client() {
    let mut slow = reply(200, USER);
    slow.delay = Duration::from_millis(100);
    let (fake, url) = fake(vec![slow]).await;
    let mut cfg = config(&url);
    cfg.max_concurrency = 2;
    let c = Client::new(cfg).expect("client");
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_user("u1").await })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("get");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 6);
    assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 2);
}

// ----- OAuth2 client credentials -----

#[derive(Default)]
struct Idp {
    issued: AtomicUsize,
    /// The token the SCIM side accepts right now.
    valid: Mutex<Option<String>>,
    /// When set, the SCIM side refuses every token.
    reject_all: std::sync::atomic::AtomicBool,
    expires_in: Mutex<Option<u64>>,
    token_requests: Mutex<Vec<(HeaderMap, String)>>,
    scim_calls: AtomicUsize,
    token_status: Mutex<u16>,
}

async fn token_endpoint(State(idp): State<Arc<Idp>>, headers: HeaderMap, body: String) -> Response {
    idp.token_requests.lock().expect("lock").push((headers, body));
    let status = *idp.token_status.lock().expect("lock");
    if status != 200 {
        return (
            StatusCode::from_u16(status).expect("status"),
            axum::Json(json!({"error":"invalid_client","error_description":"bad secret"})),
        )
            .into_response();
    }
    let n = idp.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("tok-{n}");
    *idp.valid.lock().expect("lock") = Some(token.clone());
    let mut body = json!({"access_token": token, "token_type": "Bearer"});
    if let Some(e) = *idp.expires_in.lock().expect("lock") {
        body["expires_in"] = json!(e);
    }
    axum::Json(body).into_response()
}

async fn scim_endpoint(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
    idp.scim_calls.fetch_add(1, Ordering::SeqCst);
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let valid = idp.valid.lock().expect("lock").clone();
    if idp.reject_all.load(Ordering::SeqCst) || presented.is_none() || presented != valid {
        return (StatusCode::UNAUTHORIZED, r#"{"status":"401","detail":"token expired"}"#).into_response();
    }
    (StatusCode::OK, USER).into_response()
}

async fn idp() -> (Arc<Idp>, Client) {
    let idp = Arc::new(Idp { token_status: Mutex::new(200), expires_in: Mutex::new(Some(3600)), ..Idp::default() });
    let base = serve(
        Router::new().route("/oauth/token", post(token_endpoint)).fallback(any(scim_endpoint)).with_state(idp.clone()),
    )
    .await;
    let root = base.trim_end_matches("/v2").to_string();
    let mut cfg = config(&base);
    cfg.auth = Auth::OAuth2ClientCredentials {
        token_url: format!("{root}/oauth/token"),
        client_id: "my-client".into(),
        client_secret: "my-secret".into(),
        scope: Some("scim.write".into()),
    };
    cfg.token_expiry_margin = Duration::from_secs(60);
    (idp, Client::new(cfg).expect("client"))
}

#[tokio::test]
async fn oauth2_token_is_fetched_once_and_cached() {
    let (idp, c) = idp().await;
    for _ in 0..3 {
        c.get_user("u1").await.expect("get");
    }
    assert_eq!(idp.issued.load(Ordering::SeqCst), 1);
    assert_eq!(idp.scim_calls.load(Ordering::SeqCst), 3);
    let reqs = idp.token_requests.lock().expect("lock");
    let (headers, body) = &reqs[0];
    assert_eq!(body, "grant_type=client_credentials&scope=scim.write");
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    // HTTP Basic client authentication: base64("my-client:my-secret").
    assert_eq!(headers["authorization"], "Basic bXktY2xpZW50Om15LXNlY3JldA==");
    drop(reqs);
    assert!(!format!("{c:?}").contains("my-secret"));
}

#[tokio::test]
async fn oauth2_refreshes_once_on_401() {
    let (idp, c) = idp().await;
    c.get_user("u1").await.expect("first");
    // The target revokes the token: the next call gets a 401, refreshes, retries.
    *idp.valid.lock().expect("lock") = Some("revoked-elsewhere".into());
    c.get_user("u1").await.expect("refreshed");
    assert_eq!(idp.issued.load(Ordering::SeqCst), 2);
    assert_eq!(idp.scim_calls.load(Ordering::SeqCst), 3);

    // A target that refuses every token: exactly one refresh and one retry.
    idp.reject_all.store(true, Ordering::SeqCst);
    let err = c.get_user("u1").await.expect_err("401");
    assert!(matches!(err, ScimError::InvalidAuthentication { status: 401, .. }));
    assert_eq!(idp.issued.load(Ordering::SeqCst), 3);
    assert_eq!(idp.scim_calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn oauth2_token_expiry_with_margin() {
    let (idp, c) = idp().await;
    // expires_in 1s: the margin is capped at half the lifetime (0.5s).
    *idp.expires_in.lock().expect("lock") = Some(1);
    c.get_user("u1").await.expect("get");
    c.get_user("u1").await.expect("get");
    assert_eq!(idp.issued.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.get_user("u1").await.expect("get");
    assert_eq!(idp.issued.load(Ordering::SeqCst), 2);
    assert_eq!(idp.scim_calls.load(Ordering::SeqCst), 3, "no 401 round trip");
}

#[tokio::test]
async fn oauth2_token_endpoint_refusal_is_invalid_authentication() {
    let (idp, c) = idp().await;
    *idp.token_status.lock().expect("lock") = 401;
    let err = c.get_user("u1").await.expect_err("refused");
    match &err {
        ScimError::InvalidAuthentication { detail, .. } => {
            assert!(detail.as_deref().unwrap_or("").contains("invalid_client"))
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.to_string().contains("my-secret"));
    assert_eq!(idp.scim_calls.load(Ordering::SeqCst), 0);
    assert_eq!(idp.token_requests.lock().expect("lock").len(), 1, "no retry");
}

/// A pacer that lets `allow` requests go, then holds every other one back, and keeps what it
/// was told.
#[derive(Debug, Default)]
struct Recording {
    allow: usize,
    asked: AtomicUsize,
    answers: Mutex<Vec<(u16, Option<Duration>)>>,
}

impl scim::Pacer for Recording {
    fn before_send(&self) -> scim::PaceFuture<'_, Result<(), ScimError>> {
        Box::pin(async move {
            if self.asked.fetch_add(1, Ordering::SeqCst) < self.allow {
                Ok(())
            } else {
                Err(ScimError::Held { reason: "the budget is used up".into(), retry_after: Duration::from_secs(7) })
            }
        })
    }

    fn answered(&self, status: u16, retry_after: Option<Duration>) -> scim::PaceFuture<'_, ()> {
        Box::pin(async move { self.answers.lock().unwrap().push((status, retry_after)) })
    }
}

#[tokio::test]
async fn a_pacer_is_asked_before_every_attempt_and_told_every_answer() {
    // A 429 asking for 2 s, then success: the pacer (not the client) holds the retry, so the
    // client does not sleep; it asks the pacer again and tells it both answers.
    let mut limited = reply(429, r#"{"status":"429"}"#);
    limited.headers.push(("retry-after", "2".into()));
    let (paced, url) = fake(vec![limited, reply(200, USER)]).await;
    let pacer = Arc::new(Recording { allow: 10, ..Default::default() });
    let mut cfg = config(&url);
    cfg.pacer = Some(pacer.clone());
    let start = Instant::now();
    let user = Client::new(cfg).unwrap().get_user("u1").await.unwrap();
    assert_eq!(user.unwrap()["id"], json!("u1"));
    assert!(start.elapsed() < Duration::from_millis(1500), "the client did not wait itself: {:?}", start.elapsed());
    assert_eq!(pacer.asked.load(Ordering::SeqCst), 2);
    assert_eq!(*pacer.answers.lock().unwrap(), [(429, Some(Duration::from_secs(2))), (200, None)]);
    assert_eq!(paced.calls.load(Ordering::SeqCst), 2);

    // Held back: nothing is sent, no retry; the error says when to try again.
    let (held, url) = fake(vec![reply(200, USER)]).await;
    let mut cfg = config(&url);
    cfg.pacer = Some(Arc::new(Recording { allow: 0, ..Default::default() }));
    let e = Client::new(cfg).unwrap().get_user("u1").await.unwrap_err();
    assert_eq!(e, ScimError::Held { reason: "the budget is used up".into(), retry_after: Duration::from_secs(7) });
    assert!(e.is_retryable());
    assert_eq!(held.calls.load(Ordering::SeqCst), 0);
}
