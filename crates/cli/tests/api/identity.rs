//! One person, one NameID, and the input policy: unique e-mail addresses whoever writes them,
//! shared ones from before the upgrade listed and refused at SAML sign-in, safe `next`,
//! invitation tokens, the SAML metadata's URLs, ids in paths, Unicode usernames, Secure
//! cookies, manager cycles, control characters in searches.

use std::process::Stdio;
use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::Slapd;

use crate::ldap::{create_source, openldap_source, sync, user_named};
use crate::saml::{authn_request, hidden, posted, saml_settings, set_cookie, urlencode, World, ACS, PASSWORD};
use crate::support::{answer, Backend, TestServer};

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ADMIN: &str = "alice";
const ADMIN_PASSWORD: &str = "correct horse battery staple";

fn cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

/// Signs a console admin in: (session cookie, the pages' CSRF token).
async fn console_login(s: &TestServer, http: &reqwest::Client) -> (String, String) {
    s.state.service.create_admin(&directory::Actor::cli(), ADMIN, ADMIN_PASSWORD).await.unwrap();
    let form = http.get(s.url("/console/login")).send().await.unwrap();
    let token = set_cookie(&form, "prv_login").unwrap();
    let r = http
        .post(s.url("/console/login"))
        .header(COOKIE, format!("prv_login={token}"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", ADMIN),
            ("password", ADMIN_PASSWORD),
            ("next", "/console/users"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(&r, "prv_session").unwrap();
    let page = http.get(s.url("/console/users")).header(COOKIE, format!("prv_session={session}")).send().await.unwrap();
    let html = page.text().await.unwrap();
    let marker = r#"<meta name="csrf-token" content=""#;
    let at = html.find(marker).unwrap() + marker.len();
    let csrf = html[at..at + html[at..].find('"').unwrap()].to_owned();
    (session, csrf)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn two_users_cannot_share_an_email_in_any_case() {
    let slapd = Slapd::start();
    slapd.add(&format!(
        "{}{}",
        Slapd::person_ldif("lena", "Lena", "Taken", &[]),
        Slapd::person_ldif("omar", "Omar", "Free", &[])
    ));
    let s = TestServer::start().await;
    let ada = s.post("/api/v1/users", json!({"username": "ada", "email": "Ada@Example.com"})).await;
    assert_eq!(ada.status, StatusCode::CREATED, "{ada:#?}");

    // API: in any case, and after NFKC (a full-width "a").
    for email in ["ada@example.com", "ADA@EXAMPLE.COM", "\u{FF41}da@example.com"] {
        let a = s.post("/api/v1/users", json!({"username": "other", "email": email})).await;
        assert!(a.problem_field(409, "email").contains("another user"), "{a:#?}");
    }
    let bob = s.user("bob").await;
    let a =
        s.patch(&format!("/api/v1/users/{}", bob["id"].as_str().unwrap()), json!({"email": "ADA@example.com"})).await;
    a.problem_field(409, "email");

    // Console: the form says why.
    let http = no_redirects();
    let (session, csrf) = console_login(&s, &http).await;
    let r = http
        .post(s.url("/console/users"))
        .header(COOKIE, format!("prv_session={session}"))
        .form(&[("csrf", csrf.as_str()), ("username", "carol"), ("email", "aDa@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("another user"));

    // Inbound SCIM: 409 with scimType uniqueness (RFC 7644 section 3.12).
    let client = s.post("/api/v1/scim-clients", json!({"name": "Entra ID"})).await;
    let token = client.body["token"].as_str().unwrap();
    let r = s
        .client
        .post(s.url("/scim/v2/Users"))
        .bearer_auth(token)
        .header("content-type", "application/scim+json")
        .body(
            json!({"schemas": [USER_SCHEMA], "userName": "dan", "emails": [{"type": "work", "value": "ADA@example.com"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let a = answer(r).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{a:#?}");
    assert_eq!(a.body["scimType"], "uniqueness");

    // A directory source: that person's import fails with the reason; the others are imported.
    s.post("/api/v1/users", json!({"username": "lena.api", "email": "LENA@example.com"})).await;
    let source = create_source(&s, openldap_source(&slapd, json!({}))).await;
    let done = sync(&s, &source, "full").await;
    assert_eq!(done["counts"]["created"], 1, "{done:#}");
    let errors = done["errors"].to_string();
    assert!(errors.contains("lena@example.com") && errors.contains("already used by another user"), "{done:#}");
    user_named(&s, "omar").await;

    // A deleted user's address is free again.
    s.delete(&format!("/api/v1/users/{}", ada.body["id"].as_str().unwrap())).await;
    let a = s.post("/api/v1/users", json!({"username": "ada2", "email": "ada@example.com"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
}

async fn existing_duplicate_emails_are_listed_and_their_nameid_is_refused(backend: Backend) {
    let w = World::new(backend, saml_settings(json!({}))).await;
    let sam = w.person("sam", json!({"department": "Sales"})).await;
    // Stored before addresses were unique: Sam has Sally's address.
    w.s.set_email_behind_the_back(&sam, "Sally@Example.com").await;
    let c = w.s.get("/api/v1/users/email-conflicts").await;
    assert_eq!(c.status, StatusCode::OK, "{c:#?}");
    let items = c.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{c:#?}");
    assert_eq!(items[0]["email"], "sally@example.com");
    let names: Vec<&str> =
        items[0]["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["sally", "sam"]);
    assert_eq!(w.s.state.service.warn_email_conflicts().await.unwrap(), 1, "the start-up warning counts it");
    // They stay editable (the address is not what changes).
    let a = w.s.patch(&format!("/api/v1/users/{}", w.sally), json!({"title": "Lead"})).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");

    // Sally's NameID would be Sam's too: the sign-in is refused with a page that says why.
    let session = w.login("sally", PASSWORD, "/").await.unwrap();
    let r = w.get(&authn_request(&w.app, ACS, ""), Some(&session)).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let page = r.text().await.unwrap();
    assert!(page.contains("1 other account(s) in the directory have the same address"), "{page}");
    assert!(!page.contains("SAMLResponse"));
    let audit = w.s.get(&format!("/api/v1/audit?target_type=user&target_id={}", w.sally)).await.body.to_string();
    assert!(audit.contains("user.saml_sign_in_refused"), "{audit}");

    // Once Sam has an address of his own, Sally signs in.
    w.s.patch(&format!("/api/v1/users/{sam}"), json!({"email": "sam@example.com"})).await;
    assert_eq!(w.s.get("/api/v1/users/email-conflicts").await.body["items"], json!([]));
    let (action, ..) = posted(w.get(&authn_request(&w.app, ACS, ""), Some(&session)).await).await;
    assert_eq!(action, ACS);
}

crate::on_both_backends!(existing_duplicate_emails_are_listed_and_their_nameid_is_refused);

#[tokio::test]
async fn login_next_cannot_leave_the_site() {
    let s = TestServer::start().await;
    let http = no_redirects();
    let bad = [
        "/\t/evil.example.com/",
        "/%09/evil.example.com/",
        "//evil.example.com",
        "/\\evil.example.com",
        "https://evil.example.com/",
        "/ /evil.example.com",
        "/%2F/evil.example.com",
    ];
    for (page, default, good) in
        [("/login", "/", "/saml/x/sso?SAMLRequest=a%2Bb"), ("/console/login", "/console/users", "/console/apps")]
    {
        for next in bad.iter().copied().chain([good]) {
            let r = http.get(s.url(&format!("{page}?next={}", urlencode(next)))).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let field = hidden(&r.text().await.unwrap(), "next").unwrap();
            let want = if next == good { good } else { default };
            assert_eq!(field, want, "{page} with next={next:?}");
        }
    }
}

/// The real binary, logging at debug level: the invitation token is in no log line.
#[tokio::test]
async fn invitation_token_has_its_own_prefix_and_is_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token = "identity-test-admin-token-0001";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PROVISIONER_DATA_DIR", dir.path())
        .env("PROVISIONER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PROVISIONER_ADMIN_TOKEN", token)
        .env("PROVISIONER_PUBLIC_URL", "https://id.example.com")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::BufReader::new(stderr), &mut out).await.ok();
        out
    });
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let mut up = false;
    for _ in 0..300 {
        if http.get(url("/healthz")).send().await.is_ok_and(|r| r.status() == StatusCode::OK) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "provisioner did not start");
    let user: Value = http
        .post(url("/api/v1/users"))
        .bearer_auth(token)
        .json(&json!({"username": "ivan", "email": "ivan@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let inv = http
        .post(url(&format!("/api/v1/users/{}/invitations", user["id"].as_str().unwrap())))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(inv.status(), StatusCode::CREATED);
    let inv: Value = inv.json().await.unwrap();
    let link = inv["url"].as_str().unwrap();
    assert!(link.starts_with("https://id.example.com/invite/prvinv_"), "{inv:#}");
    let secret = link.rsplit('/').next().unwrap().to_owned();
    assert!(!secret.starts_with("prv_"), "not the API tokens' prefix");
    let page = http.get(url(&format!("/invite/{secret}?x=1"))).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let log = log.await.unwrap();
    assert!(log.contains("/invite/[redacted]"), "the request is logged, redacted:\n{log}");
    assert!(!log.contains(&secret[7..]), "the invitation token is logged:\n{log}");
}

#[tokio::test]
async fn no_invitation_link_without_public_url() {
    let s = TestServer::start().await;
    let u = s.user("ivan").await;
    let a = s
        .call_with(
            Method::POST,
            &format!("/api/v1/users/{}/invitations", u["id"].as_str().unwrap()),
            None,
            Some(crate::support::TOKEN),
            &[("host", "evil.example.com")],
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
    assert_eq!(a.body["url"], Value::Null);
    assert!(a.body["path"].as_str().unwrap().starts_with("/invite/prvinv_"));
    assert!(a.body["note"].as_str().unwrap().contains("--public-url"));
    assert!(!a.body.to_string().contains("evil.example.com"));
}

#[tokio::test]
async fn saml_metadata_ignores_host_header() {
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    let r = w
        .http
        .get(w.s.url(&format!("/saml/{}/metadata", w.app)))
        .header("host", "evil.example.com")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let xml = r.text().await.unwrap();
    assert!(!xml.contains("evil.example.com"), "{xml}");
    assert!(xml.contains(&format!("entityID=\"{}\"", w.s.url(&format!("/saml/{}/metadata", w.app)))), "{xml}");
    assert!(xml.contains(&format!("Location=\"{}\"", w.s.url(&format!("/saml/{}/sso", w.app)))), "{xml}");
    let settings =
        w.s.call_with(
            Method::GET,
            &format!("/api/v1/apps/{}/saml", w.app),
            None,
            Some(crate::support::TOKEN),
            &[("host", "evil.example.com")],
        )
        .await;
    assert!(!settings.body.to_string().contains("evil.example.com"), "{settings:#?}");

    // With a public URL, that is what they are made from.
    let s = TestServer::start_with_public_url(Backend::Sqlite, "https://id.example.com/").await;
    let app = s
        .post(
            "/api/v1/apps",
            json!({"name": "Wiki", "connection": {"base_url": "http://127.0.0.1:9/scim/v2", "auth": {"type": "bearer", "token": "t"}}}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = s.call(Method::PUT, &format!("/api/v1/apps/{app}/saml"), Some(saml_settings(json!({})))).await;
    assert_eq!(put.body["idp_entity_id"], format!("https://id.example.com/saml/{app}/metadata"), "{put:#?}");
    assert_eq!(put.body["sso_url"], format!("https://id.example.com/saml/{app}/sso"));
}

#[tokio::test]
async fn invalid_path_ids_answer_problem_json() {
    let s = TestServer::start().await;
    for (method, path) in [
        (Method::GET, "/api/v1/users/not-a-uuid"),
        (Method::PUT, "/api/v1/roles/123/users/also-not"),
        (Method::GET, "/api/v1/apps/%00"),
    ] {
        let a = s.call(method, path, None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {a:#?}");
        assert_eq!(a.content_type, "application/problem+json", "{path}");
        assert!(!a.body["errors"].as_array().unwrap().is_empty(), "{path}: {a:#?}");
    }
    let reason = s.get("/api/v1/users/not-a-uuid").await.problem_field(400, "id");
    assert!(reason.contains("not an id"), "{reason}");
    // SCIM: its own error schema.
    let client = s.post("/api/v1/scim-clients", json!({"name": "Okta"})).await;
    let r = s
        .client
        .get(s.url("/scim/v2/Users/not-a-uuid"))
        .bearer_auth(client.body["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let a = answer(r).await;
    assert_eq!(a.content_type, "application/scim+json", "{a:#?}");
    assert_eq!(a.body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error");
    assert!(a.status.is_client_error());
}

#[tokio::test]
async fn usernames_with_bidi_or_zero_width_are_refused() {
    let s = TestServer::start().await;
    for name in ["ad\u{200B}a", "ada\u{202E}nimda", "\u{2066}ada", "ada\u{FEFF}", "a\u{200D}da", "ad\u{0007}a"] {
        let a = s.post("/api/v1/users", json!({"username": name, "email": "x@example.com"})).await;
        a.problem_field(422, "username");
    }
    // NFKC: a full-width name is stored plain, and is then the same username.
    let a = s.post("/api/v1/users", json!({"username": "\u{FF41}\u{FF44}\u{FF41}"})).await;
    assert_eq!(a.body["username"], "ada", "{a:#?}");
    s.post("/api/v1/users", json!({"username": "ADA"})).await.problem_field(409, "username");
    // SCIM writes follow the same policy.
    let client = s.post("/api/v1/scim-clients", json!({"name": "Okta"})).await;
    let r = s
        .client
        .post(s.url("/scim/v2/Users"))
        .bearer_auth(client.body["token"].as_str().unwrap())
        .header("content-type", "application/scim+json")
        .body(json!({"schemas": [USER_SCHEMA], "userName": "ev\u{202E}e"}).to_string())
        .send()
        .await
        .unwrap();
    let a = answer(r).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:#?}");
    assert!(a.body["detail"].as_str().unwrap().contains("userName"), "{a:#?}");
}

#[tokio::test]
async fn flash_cookie_is_secure_over_https_public_url() {
    let s = TestServer::start_with_public_url(Backend::Sqlite, "https://id.example.com").await;
    let http = no_redirects();
    let (session, csrf) = console_login(&s, &http).await;
    let r = http
        .post(s.url("/console/users"))
        .header(COOKIE, format!("prv_session={session}"))
        .form(&[("csrf", csrf.as_str()), ("username", "fred")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = cookies(&r);
    let flash = set.iter().find(|c| c.starts_with("prv_flash=")).unwrap();
    assert!(flash.contains("; Secure"), "{flash}");
    // Every other cookie too: the IdP's form cookie.
    let r = http.get(s.url("/login")).send().await.unwrap();
    assert!(cookies(&r).iter().all(|c| c.contains("; Secure")), "{:?}", cookies(&r));

    // Plain HTTP: not Secure (a browser would drop it).
    let plain = TestServer::start().await;
    let r = http.get(plain.url("/login")).send().await.unwrap();
    assert!(cookies(&r).iter().all(|c| !c.contains("Secure")), "{:?}", cookies(&r));
}

#[tokio::test]
async fn manager_cycles_are_refused() {
    let s = TestServer::start().await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let (a, b, c) = (id(&s.user("ann").await), id(&s.user("ben").await), id(&s.user("cat").await));
    assert_eq!(s.patch(&format!("/api/v1/users/{b}"), json!({"manager_id": a})).await.status, StatusCode::OK);
    assert_eq!(s.patch(&format!("/api/v1/users/{c}"), json!({"manager_id": b})).await.status, StatusCode::OK);
    // ann -> cat would close ann -> cat -> ben -> ann.
    let reason =
        s.patch(&format!("/api/v1/users/{a}"), json!({"manager_id": c})).await.problem_field(422, "manager_id");
    assert!(reason.contains("cycle") && reason.contains("cat -> ben"), "{reason}");
    s.patch(&format!("/api/v1/users/{a}"), json!({"manager_id": a})).await.problem_field(422, "manager_id");
    // SCIM too (a client allowed to manage every user).
    let client =
        s.post("/api/v1/scim-clients", json!({"name": "Okta", "scope": {"users": "all", "roles": "all"}})).await;
    let r = s
        .client
        .patch(s.url(&format!("/scim/v2/Users/{a}")))
        .bearer_auth(client.body["token"].as_str().unwrap())
        .header("content-type", "application/scim+json")
        .body(
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace",
                "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": {"value": b}}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let a = answer(r).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:#?}");
    assert!(a.body["detail"].as_str().unwrap().contains("cycle"), "{a:#?}");
}

#[tokio::test]
async fn nul_query_does_not_match_everyone() {
    let s = TestServer::start().await;
    s.user("ann").await;
    s.user("ben").await;
    for q in ["%00", "a%00", "%0A", "%1B"] {
        s.get(&format!("/api/v1/users?q={q}")).await.problem_field(400, "q");
    }
    assert_eq!(s.get("/api/v1/users?q=ann").await.body["items"].as_array().unwrap().len(), 1);
    // The console's search too.
    let http = no_redirects();
    let (session, _) = console_login(&s, &http).await;
    let r =
        http.get(s.url("/console/users?q=%00")).header(COOKIE, format!("prv_session={session}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = r.text().await.unwrap();
    assert!(!page.contains("ann@example.com"), "{page}");
}
