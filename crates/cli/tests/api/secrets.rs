//! Issue 15: stored secrets go only where they were given for, and outbound connections
//! reach only allowed addresses (no redirects, no link-local or metadata addresses).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{answer, Answer, TestServer, TOKEN};

/// A TCP server that records every byte it receives. To an HTTP request it answers with
/// `reply` (a 401 by default); a connection that does not speak HTTP (LDAP) is closed after
/// its first bytes.
struct Recorder {
    port: u16,
    host: &'static str,
    seen: Arc<Mutex<Vec<u8>>>,
}

const UNAUTHORIZED: &str = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

impl Recorder {
    async fn start() -> Self {
        Self::start_on("127.0.0.1", UNAUTHORIZED.to_owned()).await
    }

    async fn start_on(host: &'static str, reply: String) -> Self {
        let listener = TcpListener::bind((host, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let sink = sink.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut request = Vec::new();
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await {
                        if n == 0 {
                            break;
                        }
                        request.extend_from_slice(&buf[..n]);
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                        if request.first() == Some(&0x30) {
                            break; // an LDAP message (a BER sequence): recorded, hang up
                        }
                        if request.windows(4).any(|w| w == b"\r\n\r\n") {
                            let _ = conn.write_all(reply.as_bytes()).await;
                            break;
                        }
                    }
                });
            }
        });
        Self { port, host, seen }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}:{}{path}", self.host, self.port)
    }

    fn received(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }

    fn received_any(&self, needles: &[&str]) -> bool {
        let seen = self.received();
        needles.iter().any(|n| seen.windows(n.len()).any(|w| w == n.as_bytes()))
    }
}

fn bearer_app(name: &str, base_url: &str, token: &str) -> Value {
    json!({"name": name, "connection": {"base_url": base_url, "auth": {"type": "bearer", "token": token}}})
}

fn oauth_app(name: &str, base_url: &str, token_url: &str, secret: &str) -> Value {
    json!({"name": name, "connection": {"base_url": base_url, "auth": {"type": "oauth2_client_credentials",
        "token_url": token_url, "client_id": "provisioner", "client_secret": secret}}})
}

fn ldap_source(name: &str, url: &str, password: &str) -> Value {
    json!({"name": name, "flavor": "openldap", "url": url, "bind_dn": "cn=reader,dc=example,dc=com",
           "bind_password": password, "base_dn": "ou=people,dc=example,dc=com", "schedule": 0})
}

async fn created(s: &TestServer, path: &str, body: Value) -> Value {
    let a = s.post(path, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
    a.body
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// The app's connection test: its problem detail (the test fails against these servers).
async fn failed_test(s: &TestServer, app: &str) -> String {
    let t = s.post(&format!("/api/v1/apps/{app}/connection/test"), json!({})).await;
    assert_eq!(t.status, StatusCode::BAD_GATEWAY, "{t:#?}");
    t.body["detail"].as_str().unwrap_or_default().to_owned()
}

async fn failed_source_test(s: &TestServer, source: &str) -> String {
    let t = s.post(&format!("/api/v1/sources/{source}/test"), json!({})).await;
    assert_eq!(t.status, StatusCode::BAD_GATEWAY, "{t:#?}");
    t.body["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn changing_base_url_host_without_token_is_refused_and_secret_not_sent() {
    let s = TestServer::start().await;
    let (old, new) = (Recorder::start().await, Recorder::start().await);
    let app = created(&s, "/api/v1/apps", bearer_app("Wiki", &old.url("http", "/scim/v2"), "old-bearer-s3cret")).await;
    let path = format!("/api/v1/apps/{}", id(&app));
    for moved in [
        new.url("http", "/scim/v2"),                       // another port
        format!("http://localhost:{}/scim/v2", old.port),  // another host
        format!("https://127.0.0.1:{}/scim/v2", old.port), // another scheme
        "https://attacker.example/collect".to_owned(),     // all of them
    ] {
        let refused = s.patch(&path, json!({"connection": {"base_url": moved}})).await;
        let reason = refused.problem_field(422, "connection.auth.token");
        assert!(reason.contains("connection.base_url"), "{reason}");
    }
    let dry = s
        .patch(&format!("{path}?dry_run=true"), json!({"connection": {"base_url": new.url("http", "/scim/v2")}}))
        .await;
    dry.problem_field(422, "connection.auth.token");
    let unchanged = s.get(&path).await;
    assert_eq!(unchanged.body["connection"]["base_url"], old.url("http", "/scim/v2"));
    assert_eq!(unchanged.body["version"], app["version"], "a refused change changes nothing");

    // The connection test still goes where the token was given for, and nowhere else.
    failed_test(&s, &id(&app)).await;
    assert!(old.received_any(&["Bearer old-bearer-s3cret"]));
    assert!(new.received().is_empty(), "the new host was never contacted");

    // With the token given again, the move is made, and only the new token goes there.
    let moved = s
        .patch(&path, json!({"connection": {"base_url": new.url("http", "/scim/v2"), "auth": {"type": "bearer", "token": "new-bearer-t0ken"}}}))
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{moved:#?}");
    failed_test(&s, &id(&app)).await;
    assert!(new.received_any(&["Bearer new-bearer-t0ken"]));
    assert!(!new.received_any(&["old-bearer-s3cret"]));

    // Basic authentication's password is bound the same way.
    let basic = created(
        &s,
        "/api/v1/apps",
        json!({"name": "Basic", "connection": {"base_url": old.url("http", "/v2"),
               "auth": {"type": "basic", "username": "svc", "password": "basic-pa55word"}}}),
    )
    .await;
    let refused = s
        .patch(&format!("/api/v1/apps/{}", id(&basic)), json!({"connection": {"base_url": new.url("http", "/v2")}}))
        .await;
    refused.problem_field(422, "connection.auth.password");
    failed_test(&s, &id(&basic)).await;
    let encoded = base64::engine::general_purpose::STANDARD.encode("svc:basic-pa55word");
    assert!(!new.received_any(&[&encoded]), "the basic password never reached the new host");
}

#[tokio::test]
async fn changing_token_url_host_without_client_secret_is_refused_and_secret_not_sent() {
    let s = TestServer::start().await;
    let (app_server, old, new) = (Recorder::start().await, Recorder::start().await, Recorder::start().await);
    let app = created(
        &s,
        "/api/v1/apps",
        oauth_app("OAuth", &app_server.url("http", "/scim/v2"), &old.url("http", "/oauth/token"), "client-s3cret"),
    )
    .await;
    let path = format!("/api/v1/apps/{}", id(&app));
    let moved_token_url = json!({"connection": {"auth": {"type": "oauth2_client_credentials",
        "token_url": new.url("http", "/oauth/token"), "client_id": "provisioner"}}});
    let reason = s.patch(&path, moved_token_url).await.problem_field(422, "connection.auth.client_secret");
    assert!(reason.contains("connection.auth.token_url"), "{reason}");
    // Moving the app itself needs the client secret too: the access token would go there.
    let reason = s
        .patch(&path, json!({"connection": {"base_url": new.url("http", "/scim/v2")}}))
        .await
        .problem_field(422, "connection.auth.client_secret");
    assert!(reason.contains("connection.base_url"), "{reason}");

    failed_test(&s, &id(&app)).await;
    let encoded = base64::engine::general_purpose::STANDARD.encode("provisioner:client-s3cret");
    assert!(old.received_any(&[&encoded]), "the token endpoint it was given for gets the secret");
    assert!(new.received().is_empty(), "the new token endpoint was never contacted");
    assert!(!app_server.received_any(&["client-s3cret", &encoded]));
}

#[tokio::test]
async fn changing_source_url_host_without_bind_password_is_refused_and_password_not_sent() {
    let s = TestServer::start().await;
    let (old, new) = (Recorder::start().await, Recorder::start().await);
    let source = created(&s, "/api/v1/sources", ldap_source("Corp", &old.url("ldap", ""), "bind-pa55word")).await;
    let path = format!("/api/v1/sources/{}", id(&source));
    for moved in [new.url("ldap", ""), format!("ldaps://127.0.0.1:{}", old.port), "ldap://dc.attacker.example".into()] {
        let reason = s.patch(&path, json!({"url": moved})).await.problem_field(422, "bind_password");
        assert!(reason.contains("url"), "{reason}");
    }
    assert_eq!(s.get(&path).await.body["url"], old.url("ldap", ""));
    // Nor does a dry run read the new directory with the stored password.
    let dry = s.patch(&format!("{path}?dry_run=true"), json!({"url": new.url("ldap", "")})).await;
    dry.problem_field(422, "bind_password");

    failed_source_test(&s, &id(&source)).await;
    assert!(old.received_any(&["bind-pa55word"]), "the directory it was given for gets the bind");
    assert!(new.received().is_empty(), "the new directory was never contacted");

    let moved = s.patch(&path, json!({"url": new.url("ldap", ""), "bind_password": "new-bind-pw"})).await;
    assert_eq!(moved.status, StatusCode::OK, "{moved:#?}");
    failed_source_test(&s, &id(&source)).await;
    assert!(new.received_any(&["new-bind-pw"]) && !new.received_any(&["bind-pa55word"]));
}

#[tokio::test]
async fn path_only_change_keeps_secret() {
    let s = TestServer::start().await;
    let server = Recorder::start().await;
    let app = created(&s, "/api/v1/apps", bearer_app("Wiki", &server.url("http", "/scim/v2"), "kept-t0ken")).await;
    let path = format!("/api/v1/apps/{}", id(&app));
    let moved = s.patch(&path, json!({"connection": {"base_url": server.url("http", "/other/scim/v2")}})).await;
    assert_eq!(moved.status, StatusCode::OK, "{moved:#?}");
    failed_test(&s, &id(&app)).await;
    assert!(server.received_any(&["GET /other/scim/v2/"]) && server.received_any(&["Bearer kept-t0ken"]));

    // The same for an OAuth token endpoint's path, and a source's base DN.
    let oauth = created(
        &s,
        "/api/v1/apps",
        oauth_app("OAuth", &server.url("http", "/scim/v2"), &server.url("http", "/token"), "kept-secret"),
    )
    .await;
    let moved = s
        .patch(
            &format!("/api/v1/apps/{}", id(&oauth)),
            json!({"connection": {"auth": {"type": "oauth2_client_credentials",
                "token_url": server.url("http", "/oauth2/v2/token"), "client_id": "provisioner"}}}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{moved:#?}");
    let source = created(&s, "/api/v1/sources", ldap_source("Corp", &server.url("ldap", ""), "kept-bind")).await;
    let moved = s
        .patch(
            &format!("/api/v1/sources/{}", id(&source)),
            json!({"base_dn": "ou=staff,dc=example,dc=com", "url": server.url("ldap", "/")}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{moved:#?}");
}

#[tokio::test]
async fn url_without_host_is_refused() {
    let s = TestServer::start().await;
    for bad in
        ["http:///etc/passwd", "file:///etc/passwd", "http:/etc/passwd", "gopher://h/", "http:\\\\h\\scim", "ldap://h"]
    {
        let a = s.post("/api/v1/apps", bearer_app("Bad", bad, "t0ken")).await;
        a.problem_field(422, "connection.base_url");
        let a = s.post("/api/v1/apps", oauth_app("Bad", "https://ok.example", bad, "s3cret")).await;
        a.problem_field(422, "connection.auth.token_url");
    }
    let app = created(&s, "/api/v1/apps", bearer_app("Good", "https://ok.example/scim/v2", "t0ken")).await;
    let a = s
        .patch(
            &format!("/api/v1/apps/{}", id(&app)),
            json!({"connection": {"base_url": "http:///etc/passwd", "auth": {"type": "bearer", "token": "t0ken"}}}),
        )
        .await;
    a.problem_field(422, "connection.base_url");
    for bad in ["ldap:///dc=example", "ldapi:///var/run/slapd.sock", "http://dc.example.com", "ldap:dc.example.com"] {
        s.post("/api/v1/sources", ldap_source("Bad", bad, "pw")).await.problem_field(422, "url");
    }
    assert!(s.get("/api/v1/apps").await.body["items"].as_array().unwrap().len() == 1, "nothing else was stored");
}

#[tokio::test]
async fn redirects_are_not_followed_with_credentials() {
    let s = TestServer::start().await;
    let elsewhere = Recorder::start().await;
    let target = elsewhere.url("http", "/scim/v2/ServiceProviderConfig");
    let redirect = |location: &str| {
        format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let to_other_host = Recorder::start_on("127.0.0.1", redirect(&target)).await;
    let app =
        created(&s, "/api/v1/apps", bearer_app("Moved", &to_other_host.url("http", "/scim/v2"), "redirected-t0ken"))
            .await;
    let detail = failed_test(&s, &id(&app)).await;
    assert!(detail.contains("redirected (HTTP 302") && detail.contains("credential was not sent"), "{detail}");
    assert!(elsewhere.received().is_empty(), "the redirect target was never contacted");

    // Not even to another path of the same server.
    let same_host = Recorder::start_on("127.0.0.1", redirect("/followed")).await;
    let app =
        created(&s, "/api/v1/apps", bearer_app("Same", &same_host.url("http", "/scim/v2"), "same-host-t0ken")).await;
    failed_test(&s, &id(&app)).await;
    assert!(!same_host.received_any(&["/followed"]), "{}", String::from_utf8_lossy(&same_host.received()));

    // Nor from an OAuth token endpoint.
    let token_endpoint = Recorder::start_on("127.0.0.1", redirect(&elsewhere.url("http", "/token"))).await;
    let app = created(
        &s,
        "/api/v1/apps",
        oauth_app("OAuth", &elsewhere.url("http", "/scim/v2"), &token_endpoint.url("http", "/token"), "oauth-s3cret"),
    )
    .await;
    let detail = failed_test(&s, &id(&app)).await;
    assert!(detail.contains("token endpoint redirected"), "{detail}");
    assert!(elsewhere.received().is_empty());
}

#[tokio::test]
async fn link_local_and_metadata_targets_are_refused() {
    let s = TestServer::start().await;
    // 0.0.0.0 reaches this host's listeners: a recorder there proves nothing was sent.
    let local = Recorder::start().await;
    for (base_url, range) in [
        ("http://169.254.169.254/latest/meta-data".to_owned(), "169.254.0.0/16"),
        ("http://2852039166/".to_owned(), "169.254.0.0/16"),
        ("http://0251.0376.0251.0376/".to_owned(), "169.254.0.0/16"),
        ("http://[::ffff:a9fe:a9fe]/".to_owned(), "169.254.0.0/16"),
        ("http://[fe80::1]/".to_owned(), "fe80::/10"),
        (format!("http://0.0.0.0:{}/scim/v2", local.port), "0.0.0.0/8"),
        (format!("http://0:{}/scim/v2", local.port), "0.0.0.0/8"),
    ] {
        let app =
            created(&s, "/api/v1/apps", bearer_app(&format!("Meta {base_url}"), &base_url, "metadata-t0ken")).await;
        let detail = failed_test(&s, &id(&app)).await;
        assert!(detail.contains("refused") && detail.contains(range), "{base_url}: {detail}");
    }
    let oauth = created(
        &s,
        "/api/v1/apps",
        oauth_app("Token", &local.url("http", "/scim/v2"), "http://169.254.169.254/token", "s3cret"),
    )
    .await;
    let detail = failed_test(&s, &id(&oauth)).await;
    assert!(detail.contains("169.254.0.0/16"), "{detail}");
    for url in [
        "ldap://169.254.169.254",
        "ldap://2852039166",
        "ldap://[::ffff:169.254.169.254]",
        &format!("ldap://0.0.0.0:{}", local.port),
    ] {
        let source = created(&s, "/api/v1/sources", ldap_source(&format!("Src {url}"), url, "pw")).await;
        let detail = failed_source_test(&s, &id(&source)).await;
        assert!(detail.contains("refused"), "{url}: {detail}");
    }
    assert!(local.received().is_empty(), "{}", String::from_utf8_lossy(&local.received()));
}

/// The real binary with `--deny-private-targets` and `--allow-target`.
#[tokio::test]
async fn deny_private_targets_refuses_loopback_unless_allowed() {
    let bin = env!("CARGO_BIN_EXE_provisioner");
    let dir = tempfile::tempdir().unwrap();
    let command = |args: &[&str]| {
        let mut c = tokio::process::Command::new(bin);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PROVISIONER_")) {
            c.env_remove(k);
        }
        c.env("PROVISIONER_DATA_DIR", dir.path()).env("RUST_LOG", "warn").args(args).kill_on_drop(true);
        c
    };
    let bad = command(&["serve", "--allow-target", "10.0.0.0/33"]).output().await.unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--allow-target"), "{bad:?}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = command(&["serve", "--deny-private-targets", "--allow-target", "127.0.0.1/32"])
        .env("PROVISIONER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PROVISIONER_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut healthy = false;
    for _ in 0..300 {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == StatusCode::OK) {
            healthy = true;
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "provisioner exited at start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "provisioner did not become healthy");
    let call = |path: &str, body: Value| {
        let req = http.post(format!("{base}{path}")).bearer_auth(TOKEN).json(&body);
        async move { answer(req.send().await.unwrap()).await }
    };
    let create = |path: &'static str, body: Value| {
        let c = call(path, body);
        async move {
            let a: Answer = c.await;
            assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
            a.body["id"].as_str().unwrap().to_owned()
        }
    };

    let allowed = Recorder::start().await;
    let refused = Recorder::start_on("127.0.0.2", UNAUTHORIZED.to_owned()).await;
    let ok = create("/api/v1/apps", bearer_app("Allowed", &allowed.url("http", "/v2"), "allowed-t0ken")).await;
    let test = call(&format!("/api/v1/apps/{ok}/connection/test"), json!({})).await;
    assert_eq!(test.status, StatusCode::BAD_GATEWAY, "{test:#?}");
    assert!(allowed.received_any(&["Bearer allowed-t0ken"]), "127.0.0.1/32 is allowed");

    let no = create("/api/v1/apps", bearer_app("Refused", &refused.url("http", "/v2"), "private-t0ken")).await;
    let test = call(&format!("/api/v1/apps/{no}/connection/test"), json!({})).await;
    let detail = test.body["detail"].as_str().unwrap();
    assert!(detail.contains("127.0.0.0/8") && detail.contains("--deny-private-targets"), "{test:#?}");
    let source = create("/api/v1/sources", ldap_source("Corp", &refused.url("ldap", ""), "private-bind")).await;
    let test = call(&format!("/api/v1/sources/{source}/test"), json!({})).await;
    assert!(test.body["detail"].as_str().unwrap().contains("--deny-private-targets"), "{test:#?}");
    assert!(refused.received().is_empty(), "nothing reached 127.0.0.2");
    child.kill().await.unwrap();
}

/// A host name is checked on the addresses it resolves to (here `localhost`: 127.0.0.1 and
/// ::1, both refused with `deny_private`), for SCIM requests, OAuth token requests and LDAP.
#[tokio::test]
async fn host_names_are_checked_on_the_addresses_they_resolve_to() {
    let s = TestServer::start_with(crate::support::Backend::Sqlite, |c| {
        c.outbound = connectors::TargetPolicy::new(true, vec![]);
    })
    .await;
    let local = Recorder::start().await;
    let by_name = format!("http://localhost:{}/scim/v2", local.port);
    let app = created(&s, "/api/v1/apps", bearer_app("ByName", &by_name, "named-t0ken")).await;
    let detail = failed_test(&s, &id(&app)).await;
    assert!(detail.contains("localhost resolves only to refused addresses"), "{detail}");
    let token_url = format!("http://localhost:{}/token", local.port);
    let app =
        created(&s, "/api/v1/apps", oauth_app("Token", "https://app.example.com/scim", &token_url, "named-s3cret"))
            .await;
    let detail = failed_test(&s, &id(&app)).await;
    assert!(detail.contains("localhost resolves only to refused addresses"), "{detail}");
    let source =
        created(&s, "/api/v1/sources", ldap_source("Corp", &format!("ldap://localhost:{}", local.port), "pw")).await;
    let detail = failed_source_test(&s, &id(&source)).await;
    assert!(detail.contains("localhost resolves only to refused addresses"), "{detail}");
    assert!(local.received().is_empty());
}
