//! The admin console: its sign-in safety through plain HTTP, and the seed's walkthrough in a
//! real headless Chromium driven over WebDriver (chromedriver), against the real scim2-server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use server::AppState;
use testkit::Scim2Server;

const ADMIN: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
const APP_TOKEN: &str = "scim-console-token-51c2";

/// The service in-process, with the console, a console admin and the engine running.
struct Console {
    addr: SocketAddr,
    state: AppState,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.task.abort();
        self.state.service.engine().stop();
    }
}

impl Console {
    async fn start(config: server::console::ConsoleConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = store::SqliteStore::open(&dir.path().join("provisioner.db")).await.unwrap();
        let keyring = store::secrets::Keyring::load_or_create(&dir.path().join("secret.key")).unwrap();
        let engine_config = engine::EngineConfig {
            poll_interval: Duration::from_millis(100),
            reconcile_interval: None,
            request_timeout: Duration::from_secs(10),
            http_backoff_base: Duration::from_millis(20),
            ..Default::default()
        };
        let mut state = AppState::new(Arc::new(store), Arc::new(keyring), engine_config);
        state.console = Arc::new(server::console::ConsoleState::new(config));
        state.service.create_admin(&directory::Actor::cli(), ADMIN, PASSWORD).await.unwrap();
        state.service.engine().start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = server::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { addr, state, http, _dir: dir, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET the login form: (login cookie, its CSRF value).
    async fn login_form(&self) -> String {
        let r = self.http.get(self.url("/console/login")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        cookie_value(&r, "prv_login").expect("login cookie")
    }

    async fn try_login(&self, username: &str, password: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let token = self.login_form().await;
        let mut req = self.http.post(self.url("/console/login")).header(COOKIE, format!("prv_login={token}")).form(&[
            ("csrf", token.as_str()),
            ("username", username),
            ("password", password),
            ("next", "/console/roles"),
        ]);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// Signs in: (session cookie, the page's CSRF token).
    async fn login(&self) -> (String, String) {
        let r = self.try_login(ADMIN, PASSWORD, &[]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[LOCATION], "/console/roles");
        let session = cookie_value(&r, "prv_session").expect("session cookie");
        let page = self.get("/console/users", &session).await;
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        let csrf = between(&html, r#"<meta name="csrf-token" content=""#, "\"").expect("csrf meta").to_owned();
        (session, csrf)
    }

    async fn get(&self, path: &str, session: &str) -> reqwest::Response {
        self.http.get(self.url(path)).header(COOKIE, format!("prv_session={session}")).send().await.unwrap()
    }

    async fn post(&self, path: &str, session: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http.post(self.url(path)).header(COOKIE, format!("prv_session={session}")).form(form).send().await.unwrap()
    }

    async fn audit(&self) -> Vec<directory::AuditEntry> {
        let q = store::AuditQuery { page: store::PageRequest { limit: 500, cursor: None }, ..Default::default() };
        self.state.service.list_audit(&q).await.unwrap().items
    }
}

fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers().get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
}

fn cookie_value(r: &reqwest::Response, name: &str) -> Option<String> {
    set_cookies(r)
        .iter()
        .filter_map(|c| c.split(';').next()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v)
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

// ---- sign-in safety over HTTP ----

#[tokio::test]
async fn console_cookies_are_safe_and_logout_ends_the_session() {
    let c = Console::start(Default::default()).await;
    // Without a session every page leads to the login page.
    let r = c.http.get(c.url("/console/provisioning")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/login?next=%2Fconsole%2Fprovisioning");

    let r = c.try_login(ADMIN, PASSWORD, &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = set_cookies(&r).into_iter().find(|c| c.starts_with("prv_session=")).unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(!cookie.contains("Max-Age"), "a browser-session cookie: {cookie}");
    // The session id is random and stored only hashed.
    let id = cookie_value(&r, "prv_session").unwrap();
    assert!(id.len() >= 43);
    let store = c.state.service.store();
    assert!(store.get_session(&id).await.unwrap().is_none());
    assert!(store.get_session(&hex_sha256(&id)).await.unwrap().is_some());

    // Over TLS (behind a proxy that says so) the cookie is Secure.
    let r = c.try_login(ADMIN, PASSWORD, &[("x-forwarded-proto", "https")]).await;
    let cookie = set_cookies(&r).into_iter().find(|c| c.starts_with("prv_session=")).unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");

    let (session, csrf) = c.login().await;
    let page = c.get("/console/users", &session).await;
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert_eq!(headers["x-frame-options"], "DENY");
    let r = c.post("/console/logout", &session, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/login?signed_out=1");
    assert!(set_cookies(&r).iter().any(|c| c.starts_with("prv_session=;") && c.contains("Max-Age=0")));
    let after = c.get("/console/users", &session).await;
    assert_eq!(after.status(), StatusCode::SEE_OTHER, "the old session must not work after logout");

    let audit = c.audit().await;
    let mine: Vec<_> =
        audit.iter().filter(|e| e.actor.kind == "admin" && e.actor.name == ADMIN).map(|e| e.action.as_str()).collect();
    assert!(mine.contains(&"admin.login") && mine.contains(&"admin.logout"), "{mine:?}");
}

fn hex_sha256(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test]
async fn console_forms_are_refused_without_the_csrf_token() {
    let c = Console::start(Default::default()).await;
    let (session, csrf) = c.login().await;
    let roles = |s: &AppState| {
        let s = s.clone();
        async move { s.service.list_roles(&store::NameQuery::default()).await.unwrap().items.len() }
    };
    for form in [vec![("name", "Staff")], vec![("name", "Staff"), ("csrf", "forged")]] {
        let r = c.post("/console/roles", &session, &form).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.text().await.unwrap().contains("expired or did not come from the console"));
    }
    assert_eq!(roles(&c.state).await, 0, "a refused form changes nothing");
    // The header form, as the page's scripts send it.
    let r = c
        .http
        .post(c.url("/console/roles"))
        .header(COOKIE, format!("prv_session={session}"))
        .header("x-csrf-token", &csrf)
        .form(&[("name", "Staff")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = c.post("/console/roles", &session, &[("name", "Ops"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(roles(&c.state).await, 2);
    // Each write is audited under the admin's name.
    let audit = c.audit().await;
    let creates: Vec<_> = audit.iter().filter(|e| e.action == "role.create").collect();
    assert_eq!(creates.len(), 2);
    assert!(creates.iter().all(|e| e.actor.kind == "admin" && e.actor.name == ADMIN));
    // Field errors come back next to the field.
    let r = c.post("/console/roles", &session, &[("name", "staff"), ("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<p class="error" id="e-name">Name is already taken</p>"#), "{html}");
    // The login form is bound to the browser that loaded it.
    let r = c
        .http
        .post(c.url("/console/login"))
        .form(&[("csrf", "x"), ("username", ADMIN), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(cookie_value(&r, "prv_session").is_none());
}

/// The SCIM clients page flags a client from before scopes and sets its scope (CSRF-checked).
#[tokio::test]
async fn console_scim_clients_page_shows_the_legacy_flag_and_sets_the_scope() {
    use store::scim::{RoleScope, ScimClientRecord, ScimScope, UserScope};
    let c = Console::start(Default::default()).await;
    let (session, csrf) = c.login().await;
    let id = uuid::Uuid::now_v7();
    let record = ScimClientRecord {
        id,
        name: "Old IdP".into(),
        lookup: "legacy".into(),
        hash: "$argon2id$x".into(),
        created_at: directory::now(),
        revoked_at: None,
        scope: ScimScope::ALL,
        legacy_scope: true,
    };
    c.state.service.store().create_scim_client(&record, &directory::Actor::cli()).await.unwrap();
    let html = c.get("/console/scim-clients", &session).await.text().await.unwrap();
    assert!(html.contains("Old IdP") && html.contains("Legacy scope: all"), "{html}");
    let path = format!("/console/scim-clients/{id}/scope");
    let form = [("users", "own"), ("roles", "pushable"), ("read_only", "on")];
    assert_eq!(c.post(&path, &session, &form).await.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let mut with_csrf = form.to_vec();
    with_csrf.push(("csrf", &csrf));
    let r = c.post(&path, &session, &with_csrf).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let stored = c.state.service.store().list_scim_clients().await.unwrap().remove(0);
    assert_eq!(
        stored.scope,
        ScimScope { users: UserScope::Own, roles: RoleScope::Pushable, read_only: true, passwords: false },
        "an unticked box: no passwords"
    );
    assert!(!stored.legacy_scope);
    let html = c.get("/console/scim-clients", &session).await.text().await.unwrap();
    assert!(!html.contains("Legacy scope") && html.contains("Read only.") && html.contains("No passwords."), "{html}");
    assert!(c.audit().await.iter().any(|e| e.action == "scim_client.scope" && e.actor.name == ADMIN));
}

#[tokio::test]
async fn console_sign_in_is_rate_limited_with_one_generic_message() {
    let c = Console::start(Default::default()).await;
    for (user, pass) in [(ADMIN, "wrong password!"), ("nobody", PASSWORD)] {
        let r = c.try_login(user, pass, &[]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(cookie_value(&r, "prv_session").is_none());
        assert!(r.text().await.unwrap().contains("Wrong username or password."));
    }
    for _ in 0..3 {
        assert_eq!(c.try_login(ADMIN, "wrong password!", &[]).await.status(), StatusCode::UNAUTHORIZED);
    }
    // Five failures from this client: even the right password is refused for now.
    let r = c.try_login(ADMIN, PASSWORD, &[]).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(cookie_value(&r, "prv_session").is_none());
    assert!(r.text().await.unwrap().contains("Too many failed sign-ins"));
}

#[tokio::test]
async fn console_sessions_end_after_the_idle_timeout() {
    let config = server::console::ConsoleConfig { idle_timeout: Duration::from_secs(1), ..Default::default() };
    let c = Console::start(config).await;
    let (session, _) = c.login().await;
    assert_eq!(c.get("/console/apps", &session).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = c.get("/console/apps", &session).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console/login?next=%2Fconsole%2Fapps&expired=1");
    let login = c.http.get(c.url("/console/login?expired=1")).send().await.unwrap().text().await.unwrap();
    assert!(login.contains("Your session ended after a period of inactivity"));
    assert!(c.state.service.store().get_session(&hex_sha256(&session)).await.unwrap().is_none());
}

#[tokio::test]
async fn admin_create_reads_the_password_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let run = |password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .args(["admin", "create", "--username", "carol", "--data-dir"])
            .arg(dir.path())
            .env_remove("PROVISIONER_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let short = run("short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12 characters"));
    let ok = run("a long enough password");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!String::from_utf8_lossy(&ok.stdout).contains("a long enough password"));
    let again = run("a long enough password");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already taken"));
    let store = store::SqliteStore::open(&dir.path().join("provisioner.db")).await.unwrap();
    use store::AdminStore;
    let admin = store.find_admin("carol").await.unwrap().unwrap();
    assert!(admin.hash.starts_with("$argon2id$"));
    store.close().await;
}

#[tokio::test]
async fn console_mapping_editors_work_without_javascript() {
    let c = Console::start(Default::default()).await;
    let (session, csrf) = c.login().await;
    let input: directory::AppInput = serde_json::from_value(json!({
        "name": "Plain", "connection": {"base_url": "http://127.0.0.1:9/scim/v2", "auth": {"type": "bearer", "token": "t"}}
    }))
    .unwrap();
    let app = c.state.service.create_app(&directory::Actor::admin(ADMIN), input).await.unwrap();
    let rules = format!("/console/apps/{}/rules", app.id);
    // "Add rule" redraws the editor with a new rule (the unsaved state is in the form).
    let r =
        c.post(&rules, &session, &[("csrf", &csrf), ("version", &app.version.to_string()), ("op", "rule:add")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"name="r0.name""#) && html.contains(r#"name="r0.c0.op""#), "{html}");
    // A bad regular expression: 422, the reason next to the condition's value, nothing saved.
    let v = app.version.to_string();
    let form = [
        ("csrf", csrf.as_str()),
        ("version", v.as_str()),
        ("r0.name", "Regex"),
        ("r0.match", "all"),
        ("r0.c0.attribute", "title"),
        ("r0.c0.op", "matches"),
        ("r0.c0.value", "(unclosed"),
        ("r0.a0.kind", "do_not_provision"),
        ("op", "save"),
    ];
    let r = c.post(&rules, &session, &form).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    let error = between(&html, r#"<p class="error" id="e-r0-c0-value">"#, "</p>").expect("the error next to the value");
    assert!(error.contains("not a valid regular expression"), "{error}");
    assert!(c.state.service.rules(app.id).await.unwrap().0.is_empty());
    // Preview of parameters: the plan, nothing saved; a bad transform is named next to its field.
    let params = format!("/console/apps/{}/parameters", app.id);
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("version", v.as_str()),
        ("p0.app_attribute", "userName"),
        ("p0.source.kind", "attribute"),
        ("p0.source.attribute", "username"),
        ("p0.source.transform", "lower"),
        ("op", "preview"),
    ];
    let r = c.post(&params, &session, &form).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Preview: what saving would do"));
    form[5] = ("p0.source.transform", "shout");
    let r = c.post(&params, &session, &form).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"id="e-p0-transform">Transforms: `shout` is not one of"#), "{html}");
    assert!(c.state.service.get_app(app.id).await.unwrap().parameters.is_none(), "nothing saved");
    // Saving with the version the editor was opened at.
    form[5] = ("p0.source.transform", "lower");
    form[6] = ("op", "save");
    let r = c.post(&params, &session, &form).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let saved = c.state.service.get_app(app.id).await.unwrap().parameters.unwrap();
    assert_eq!(saved[0].source.transform, vec![directory::Transform::Lower]);
    // The same (now stale) version again: refused, the edits kept.
    form[5] = ("p0.source.transform", "upper");
    let r = c.post(&params, &session, &form).await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let html = r.text().await.unwrap();
    assert!(html.contains("someone changed this app") && html.contains(r#"value="upper""#));
    // "Use the default mapping" drops the app's own parameters.
    let current = c.state.service.get_app(app.id).await.unwrap().version.to_string();
    let r = c.post(&params, &session, &[("csrf", csrf.as_str()), ("version", current.as_str()), ("op", "reset")]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(c.state.service.get_app(app.id).await.unwrap().parameters.is_none(), "the default mapping again");
    let audit = c.state.service.list_audit(&store::AuditQuery::default()).await.unwrap();
    assert_eq!((audit.items[0].action.as_str(), audit.items[0].actor.kind.as_str()), ("app.mapping", "admin"));
}

/// Issue 15: the configuration form cannot send a kept token to a new host either.
#[tokio::test]
async fn console_configuration_form_cannot_move_a_kept_token() {
    let c = Console::start(Default::default()).await;
    let (session, csrf) = c.login().await;
    let input: directory::AppInput = serde_json::from_value(json!({
        "name": "Plain", "connection": {"base_url": "http://127.0.0.1:9/scim/v2", "auth": {"type": "bearer", "token": "kept-t0ken"}}
    }))
    .unwrap();
    let app = c.state.service.create_app(&directory::Actor::admin(ADMIN), input).await.unwrap();
    let path = format!("/console/apps/{}/configuration", app.id);
    let v = app.version.to_string();
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("version", v.as_str()),
        ("name", "Plain"),
        ("base_url", "https://collect.attacker.example/scim/v2"),
        ("auth_type", "bearer"),
        ("token", ""),
    ];
    let r = c.post(&path, &session, &form).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    assert!(html.contains("must be given again"), "{html}");
    assert_eq!(c.state.service.get_app(app.id).await.unwrap().connection.base_url, "http://127.0.0.1:9/scim/v2");
    form[5] = ("token", "n3w-t0ken");
    assert_eq!(c.post(&path, &session, &form).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        c.state.service.app_secret(app.id).await.unwrap(),
        directory::Secret::Bearer { token: "n3w-t0ken".into() }
    );
}

// ---- the walkthrough in a real browser ----

/// chromedriver on a free port of 127.0.0.1, stopped on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Self {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: ./scripts/test installs Debian's chromium and chromium-driver"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let path = profile.path().to_path_buf();
        Self { child, url: format!("http://127.0.0.1:{port}"), _profile: profile, profile: path }
    }

    async fn browser(&self) -> Client {
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--no-first-run".to_owned(),
            format!("--user-data-dir={}", self.profile.display()),
        ];
        // reqwest and fantoccini bring different rustls back-ends: choose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let caps = json!({"goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}});
        let Value::Object(caps) = caps else { unreachable!() };
        let client =
            ClientBuilder::rustls().unwrap().capabilities(caps).connect(&self.url).await.expect("browser session");
        client.set_window_size(1280, 900).await.unwrap();
        client
    }
}

/// Where a failing browser test leaves its screenshot.
fn failure_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-test-failures")
}

/// Runs `flow` with a browser; on failure saves a screenshot, prints its path, and fails.
async fn with_browser<F, Fut>(name: &str, flow: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let driver = Driver::start().await;
    let client = driver.browser().await;
    let outcome = tokio::spawn(flow(client.clone())).await;
    if let Err(e) = outcome {
        let dir = failure_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        match client.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).unwrap();
                eprintln!("browser test {name} failed; screenshot: {}", path.display());
            }
            Err(err) => eprintln!("browser test {name} failed; no screenshot: {err}"),
        }
        if let Ok(url) = client.current_url().await {
            eprintln!("the browser was at {url}");
        }
        let _ = client.close().await;
        std::panic::resume_unwind(e.into_panic());
    }
    let _ = client.close().await;
}

/// The browser, the console and what the walkthrough needs.
struct Walk {
    b: Client,
    base: String,
    shots: Option<PathBuf>,
}

impl Walk {
    async fn go(&self, path: &str) {
        self.b.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self.b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
    }

    async fn select(&self, css: &str, value: &str) {
        self.b.find(Locator::Css(css)).await.unwrap().select_by_value(value).await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
    }

    async fn path(&self) -> String {
        self.b.current_url().await.unwrap().path().to_owned()
    }

    /// Waits (without reloading: the page updates itself) until an element matching `css`
    /// has text containing `want`.
    async fn wait_text(&self, css: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = Vec::new();
            for e in self.b.find_all(Locator::Css(css)).await.unwrap() {
                if let Ok(t) = e.text().await {
                    if t.contains(want) {
                        return;
                    }
                    seen.push(t);
                }
            }
            assert!(Instant::now() < deadline, "no {css} with {want:?}; saw {seen:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The row of the events table about `username`, once its status reads `status`.
    async fn wait_event(&self, username: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = self.b.find_all(Locator::Css("#events tr")).await.unwrap();
            let mut seen = Vec::new();
            for r in rows {
                let t = r.text().await.unwrap_or_default();
                if t.split_whitespace().any(|w| w == username) && t.contains(status) {
                    return;
                }
                seen.push(t);
            }
            assert!(Instant::now() < deadline, "no {status} event of {username}; rows: {seen:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn shot(&self, name: &str) {
        if let Some(dir) = &self.shots {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), self.b.screenshot().await.unwrap()).unwrap();
        }
    }

    async fn app_id(&self) -> String {
        let path = self.path().await;
        path.trim_start_matches("/console/apps/").split('/').next().unwrap().to_owned()
    }

    async fn new_app(&self, name: &str, base_url: &str, token: &str) -> String {
        self.go("/console/apps/new").await;
        self.fill("#app-name", name).await;
        self.fill("#base-url", base_url).await;
        self.select("#auth-type", "bearer").await;
        self.fill("#token", token).await;
        self.click("form.card button[type=submit].primary").await;
        self.wait_text(".flash-ok", &format!("Created {name}")).await;
        self.app_id().await
    }

    async fn new_user(&self, username: &str, first: &str, last: &str) {
        self.go("/console/users/new").await;
        self.fill("#f-username", username).await;
        self.fill("#f-email", &format!("{username}@example.com")).await;
        self.fill("#f-first_name", first).await;
        self.fill("#f-last_name", last).await;
        self.click("form.card button.primary").await;
        self.wait_text(".flash-ok", &format!("Created {username}")).await;
    }

    async fn enable_provisioning(&self, app: &str, approve_create: bool) {
        self.go(&format!("/console/apps/{app}/provisioning")).await;
        let enabled = self.b.find(Locator::Css("#enabled")).await.unwrap();
        if enabled.prop("checked").await.unwrap().as_deref() != Some("true") {
            enabled.click().await.unwrap();
        }
        let approve = self.b.find(Locator::Css("#approve-create")).await.unwrap();
        if (approve.prop("checked").await.unwrap().as_deref() == Some("true")) != approve_create {
            approve.click().await.unwrap();
        }
        self.click("form.card button.primary").await;
        self.wait_text(".flash-ok", "Provisioning is on").await;
    }
}

async fn scim_users(scim: &Scim2Server, username: &str) -> Vec<Value> {
    let r = reqwest::Client::new()
        .get(format!("{}/Users", scim.base_url))
        .bearer_auth(APP_TOKEN)
        .query(&[("filter", format!("userName eq \"{username}\""))])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");
    let body: Value = r.json().await.unwrap();
    body["Resources"].as_array().cloned().unwrap_or_default()
}

/// The seed's walkthrough, clicked through in headless Chromium. With
/// `CONSOLE_SCREENSHOTS=<dir>` it also saves the screenshots the README shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_walkthrough_in_a_real_browser() {
    let scim = Arc::new(Scim2Server::spawn(Some(APP_TOKEN)));
    let console = Arc::new(Console::start(Default::default()).await);
    let base = console.url("");
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from);
    let (scim2, console2) = (scim.clone(), console.clone());
    with_browser("console_walkthrough", move |b| async move {
        let scim = scim2;
        let _console = console2;
        let w = Walk { b, base, shots };

        // Sign in.
        w.go("/console/").await;
        assert_eq!(w.path().await, "/console/login");
        w.shot("login").await;
        w.fill("#username", ADMIN).await;
        w.fill("#password", "not the password").await;
        w.click("button[type=submit]").await;
        w.wait_text("#login-error", "Wrong username or password.").await;
        w.fill("#password", PASSWORD).await;
        w.click("button[type=submit]").await;
        w.wait_text("h1", "Users").await;

        // An app pointing at the real scim2-server; Enable (test) the connection.
        let wiki = w.new_app("Wiki", &scim.base_url, APP_TOKEN).await;
        w.click("#test-connection").await;
        w.wait_text("#test-result", "the credentials were accepted").await;
        w.shot("app-configuration").await;
        w.enable_provisioning(&wiki, false).await;

        // A role granting it.
        w.go("/console/roles").await;
        w.fill("#role-name", "Staff").await;
        w.click("form.stack button.primary").await;
        w.wait_text(".flash-ok", "Created the role Staff").await;
        w.select("#grant-app", &wiki).await;
        w.click("form[action$='/apps'] button").await;
        w.wait_text(".flash-ok", "now grants Wiki").await;
        let role_path = w.path().await;

        // A user in the role: provisioned, seen live on the Provisioning page and in the app.
        w.new_user("ada", "Ada", "Lovelace").await;
        w.select("#add-role", role_path.trim_start_matches("/console/roles/")).await;
        w.click("form[action$='/roles'] button").await;
        w.wait_text(".flash-ok", "Added to Staff").await;
        w.go("/console/provisioning").await;
        w.wait_event("ada", "Provisioned").await;
        let in_app = scim_users(&scim, "ada").await;
        assert_eq!(in_app.len(), 1, "{in_app:#?}");
        assert_eq!(in_app[0]["name"]["familyName"], "Lovelace");

        // Creates need approval: the next user waits as Pending until approved.
        w.enable_provisioning(&wiki, true).await;
        w.new_user("grace", "Grace", "Hopper").await;
        w.go(&role_path).await;
        w.fill("#member", "grace").await;
        w.click("form[action$='/users'] button").await;
        w.wait_text(".flash-ok", "Added grace").await;
        w.go("/console/provisioning").await;
        w.select("#status", "pending").await;
        w.click("#apply-filters").await;
        w.wait_event("grace", "Pending").await;
        assert!(scim_users(&scim, "grace").await.is_empty(), "nothing is created before approval");
        w.click("#events a.badge-pending").await;
        w.wait_text("#event-status", "waits for an admin's approval").await;
        w.click("#approve").await;
        w.wait_text(".flash-ok", "Approved").await;
        w.wait_text("#event-badge", "Provisioned").await;
        assert_eq!(scim_users(&scim, "grace").await.len(), 1);

        // A wrong token: the events fail, with the reason.
        let legacy = w.new_app("Legacy", &scim.base_url, "wrong-token").await;
        w.enable_provisioning(&legacy, false).await;
        w.go(&role_path).await;
        w.select("#grant-app", &legacy).await;
        w.click("form[action$='/apps'] button").await;
        w.wait_text(".flash-ok", "now grants Legacy").await;
        w.go(&format!("/console/provisioning?app={legacy}&status=failed")).await;
        w.wait_event("ada", "Failed").await;
        w.wait_event("grace", "Failed").await;
        let rows = w.b.find_all(Locator::Css("#events tr")).await.unwrap();
        for r in rows {
            let t = r.text().await.unwrap();
            assert!(t.contains("Legacy") && t.contains("Failed"), "filtered out: {t}");
        }
        w.click("#events a.badge-failed").await;
        let reason = w.text("#failure-reason").await;
        assert!(reason.contains("Invalid authentication"), "{reason}");
        assert!(!w.text("#recommended-action").await.is_empty());
        w.b.find(Locator::Css("#retry")).await.expect("a Retry button");
        w.shot("event-failed").await;

        // Filter by app.
        w.go("/console/provisioning").await;
        w.select("#app", &wiki).await;
        w.click("#apply-filters").await;
        w.wait_event("grace", "Provisioned").await;
        for r in w.b.find_all(Locator::Css("#events tr")).await.unwrap() {
            let t = r.text().await.unwrap();
            assert!(t.contains("Wiki") && !t.contains("Legacy"), "filtered out: {t}");
        }

        // An account the engine did not create shows Unknown; Rematch login links it,
        // with the likely match listed first.
        w.enable_provisioning(&wiki, false).await;
        let foreign = reqwest::Client::new()
            .post(format!("{}/Users", scim.base_url))
            .bearer_auth(APP_TOKEN)
            .header("content-type", "application/scim+json")
            .body(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "linus",
                       "name": {"givenName": "Linus", "familyName": "Torvalds"},
                       "emails": [{"value": "linus@example.com", "primary": true}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert!(foreign.status().is_success(), "{foreign:?}");
        let foreign: Value = foreign.json().await.unwrap();
        w.new_user("linus", "Linus", "Torvalds").await;
        w.select("#add-role", role_path.trim_start_matches("/console/roles/")).await;
        w.click("form[action$='/roles'] button").await;
        w.wait_text(".flash-ok", "Added to Staff").await;
        w.go(&format!("/console/provisioning?app={wiki}")).await;
        w.wait_event("linus", "Unknown").await;
        w.go(&format!("/console/apps/{wiki}/users")).await;
        w.shot("app-users").await;
        w.click("tr[data-status=unknown] a.button").await;
        w.wait_text(".candidate", "Likely match").await;
        let first = w.b.find(Locator::Css(".candidate input[type=radio]")).await.unwrap();
        assert_eq!(first.attr("value").await.unwrap().as_deref(), foreign["id"].as_str());
        w.shot("rematch").await;
        w.click("form.stack button.primary").await;
        w.wait_text(".flash-ok", "Linked linus").await;

        // Several pending events approved at once.
        w.enable_provisioning(&wiki, true).await;
        w.new_user("hedy", "Hedy", "Lamarr").await;
        w.select("#add-role", role_path.trim_start_matches("/console/roles/")).await;
        w.click("form[action$='/roles'] button").await;
        w.wait_text(".flash-ok", "Added to Staff").await;
        w.go(&format!("/console/users/{}/applications", w.path().await.split('/').nth(3).unwrap())).await;
        w.wait_text("tbody[data-live-src] tr", "Pending").await;
        w.shot("user-applications").await;
        w.go("/console/provisioning").await;
        w.wait_event("hedy", "Pending").await;
        w.shot("provisioning").await;
        w.click("#select-all").await;
        w.click("#approve-selected").await;
        w.wait_text(".flash-ok", "Approved 1 event").await;
        w.wait_event("hedy", "Provisioned").await;

        // The other main pages, for the README.
        w.go("/console/users").await;
        w.shot("users").await;
        w.go("/console/apps").await;
        // Legacy refused the credentials three times in a row: it is quarantined.
        w.wait_text("tbody", "Quarantined").await;
        w.shot("apps").await;
        w.go(&format!("/console/apps/{wiki}/provisioning")).await;
        w.shot("app-provisioning").await;
        w.go(&role_path).await;
        w.shot("role").await;
        w.b.set_window_size(390, 844).await.unwrap();
        w.go("/console/provisioning").await;
        w.shot("provisioning-narrow").await;
        w.b.set_window_size(1280, 900).await.unwrap();

        // Sign out.
        w.click(".who button").await;
        w.wait_text(".flash-ok", "You are signed out").await;
        w.go("/console/users").await;
        assert_eq!(w.path().await, "/console/login");
    })
    .await;
    let audit = console.audit().await;
    assert!(audit.iter().any(|e| e.action == "app.create" && e.actor.kind == "admin" && e.actor.name == ADMIN));
}

impl Walk {
    async fn sign_in(&self) {
        self.go("/console/").await;
        self.fill("#username", ADMIN).await;
        self.fill("#password", PASSWORD).await;
        self.click("button[type=submit]").await;
        self.wait_text("h1", "Users").await;
    }

    /// Waits until an element matching `css` is on the page (or, with `present` false, gone).
    async fn wait_for(&self, css: &str, present: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.b.find(Locator::Css(css)).await.is_ok() != present {
            assert!(Instant::now() < deadline, "{css} is still {}", if present { "missing" } else { "there" });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn prop(&self, css: &str, name: &str) -> String {
        let e = self.b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        e.prop(name).await.unwrap().unwrap_or_default()
    }
}

async fn scim_call(scim: &Scim2Server, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", scim.base_url)).bearer_auth(APP_TOKEN);
    if let Some(b) = body {
        req = req.header("content-type", "application/scim+json").body(b.to_string());
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{r:?}");
    r.json().await.unwrap()
}

/// Polls `check` for up to 30 seconds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The seed's example clicked through an app's Entitlements, Rules and Parameters tabs in
/// headless Chromium against the real scim2-server: a Sales user ends up in the app's
/// "Sales and Marketing" group; Preview shows it first; a user's "Explain" says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_parameters_rules_and_entitlements_in_a_real_browser() {
    let scim = Arc::new(Scim2Server::spawn(Some(APP_TOKEN)));
    let console = Arc::new(Console::start(Default::default()).await);
    let base = console.url("");
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from);
    let (scim2, console2) = (scim.clone(), console.clone());
    with_browser("console_mapping", move |b| async move {
        let scim = scim2;
        let console = console2;
        let w = Walk { b, base, shots };
        w.sign_in().await;
        let crm = w.new_app("CRM", &scim.base_url, APP_TOKEN).await;
        w.click("#test-connection").await;
        w.wait_text("#test-result", "the credentials were accepted").await;
        w.enable_provisioning(&crm, false).await;
        let app_id: uuid::Uuid = crm.parse().unwrap();

        // A Sales user and an engineer in a role granting the app: provisioned with the default mapping.
        let service = &console.state.service;
        let actor = directory::Actor::admin(ADMIN);
        let user = |username: &str, first: &str, department: &str| directory::UserInput {
            username: username.into(),
            email: Some(format!("{username}@example.com")),
            first_name: Some(first.into()),
            last_name: Some("Example".into()),
            department: Some(department.into()),
            ..Default::default()
        };
        let sam = service.create_user(&actor, user("sam", "Sam", "Sales"), directory::UserSource::Local).await.unwrap();
        let eve =
            service.create_user(&actor, user("eve", "Eve", "Engineering"), directory::UserSource::Local).await.unwrap();
        let role = service
            .create_role(&actor, directory::RoleInput { name: "Staff".into(), description: None, pushable: false })
            .await;
        let role = role.unwrap();
        service.add_role_app(&actor, role.id, app_id).await.unwrap();
        for u in [sam.id, eve.id] {
            service.add_role_user(&actor, role.id, u).await.unwrap();
        }
        for u in [sam.id, eve.id] {
            eventually("the users are provisioned", || {
                let console = console.clone();
                async move {
                    let a = console.state.service.store().get_account(app_id, u).await.unwrap();
                    a.is_some_and(|a| a.status == directory::EventStatus::Provisioned)
                }
            })
            .await;
        }
        let sam_remote = scim_users(&scim, "sam").await[0]["id"].as_str().unwrap().to_owned();

        // Groups made in the app itself; Refresh imports them, the progress updating by itself.
        let group =
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Sales and Marketing"});
        let sales =
            scim_call(&scim, reqwest::Method::POST, "/Groups", Some(group)).await["id"].as_str().unwrap().to_owned();
        let group =
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineering Team"});
        scim_call(&scim, reqwest::Method::POST, "/Groups", Some(group)).await;
        w.go(&format!("/console/apps/{crm}/entitlements")).await;
        w.wait_text("#refresh-status", "Not refreshed yet").await;
        w.click("#refresh-entitlements").await;
        w.wait_text("#refresh-status", "Done").await;
        w.wait_text("#refresh-status", "2 imported").await;
        w.wait_text("#entitlements tbody tr", "Sales and Marketing").await;
        w.wait_text("#entitlements tbody tr", "Engineering Team").await;
        w.shot("app-entitlements").await;

        // Rules: the seed's rule; Preview shows the plan before anything is saved.
        w.go(&format!("/console/apps/{crm}/rules")).await;
        w.wait_text(".card .empty", "No rules yet").await;
        w.click("#add-rule").await;
        w.wait_for("#r0-name", true).await;
        w.fill("#r0-name", "Sales group").await;
        w.select("#r0-c0-attribute", "department").await;
        w.select("#r0-c0-op", "equals").await;
        w.fill("#r0-c0-value", "Sales").await;
        w.select("#r0-a0-kind", "add_entitlement").await;
        w.select("#r0-a0-ent-type", "group").await;
        w.fill("#r0-a0-ent-value", "Sales and Marketing").await;
        // Add and remove a second condition: the unsaved rule is carried along.
        w.click("button[value='cond:add:0']").await;
        w.wait_for("#r0-c1-op", true).await;
        w.select("#r0-c1-op", "is_not_empty").await;
        w.click("button[value='cond:remove:0:1']").await;
        w.wait_for("#r0-c1-op", false).await;
        assert_eq!(w.prop("#r0-c0-value", "value").await, "Sales");
        w.click("#preview-button").await;
        w.wait_text("#preview", "what saving would do").await;
        let mut counts = Vec::new();
        for id in ["create", "update", "deprovision", "group-add", "group-remove", "invalid"] {
            counts.push((id, w.text(&format!("#count-{id}")).await));
        }
        let want: Vec<(&str, String)> =
            [("create", 0), ("update", 1), ("deprovision", 0), ("group-add", 1), ("group-remove", 0), ("invalid", 0)]
                .iter()
                .map(|(k, v)| (*k, v.to_string()))
                .collect();
        assert_eq!(counts, want);
        let sample = w.text("#preview table").await;
        assert!(
            sample.contains("sam") && sample.contains("Sales and Marketing") && !sample.contains("eve"),
            "{sample}"
        );
        assert!(console.state.service.rules(app_id).await.unwrap().0.is_empty(), "Preview saves nothing");
        w.b.set_window_size(1280, 1280).await.unwrap();
        w.shot("app-rules").await;
        w.b.set_window_size(1280, 900).await.unwrap();
        w.click("#save-previewed").await;
        w.wait_text(".flash-ok", "Rules saved").await;
        assert_eq!(w.prop("#r0-name", "value").await, "Sales group");
        let members = |scim: Arc<Scim2Server>, sales: String| async move {
            let g = scim_call(&scim, reqwest::Method::GET, &format!("/Groups/{sales}"), None).await;
            g["members"].as_array().cloned().unwrap_or_default()
        };
        eventually("sam is a member of Sales and Marketing in the app", || {
            let (scim, sales, remote) = (scim.clone(), sales.clone(), sam_remote.clone());
            async move { members(scim, sales).await.iter().any(|m| m["value"] == remote.as_str()) }
        })
        .await;
        assert_eq!(members(scim.clone(), sales.clone()).await.len(), 1, "only sam is in Sales");

        // Explain: which rule put sam in the group.
        w.go(&format!("/console/users/{}/applications", sam.id)).await;
        w.click(".explain-link").await;
        w.wait_text("#explain-scope", "In scope").await;
        let ent = w.text("#explain-entitlements").await;
        assert!(ent.contains("Sales and Marketing") && ent.contains("rule 'Sales group'"), "{ent}");
        let values = w.text("#explain-values").await;
        assert!(values.contains("userName") && values.contains("sam"), "{values}");
        w.shot("user-explain").await;

        // Parameters: the default mapping until saved; errors next to the field concerned.
        w.go(&format!("/console/apps/{crm}/parameters")).await;
        w.wait_text("#default-mapping", "The default mapping is in effect").await;
        assert_eq!(w.prop("#p0-app-attribute", "value").await, "userName");
        w.click("#add-parameter").await;
        w.wait_for("#p6-app-attribute", true).await;
        w.fill("#p6-app-attribute", "nickName").await;
        w.select("#p6-kind", "template").await;
        w.fill("#p6-template", "{first_name}.{nickname}").await;
        w.fill("#p6-transform", "lower").await;
        w.click("#p6-only-on-create").await;
        w.click("#save").await;
        w.wait_text("#e-p6-template", "`nickname` is not a directory attribute").await;
        assert_eq!(w.prop("#p6-template", "value").await, "{first_name}.{nickname}", "the edit is kept");
        w.b.set_window_size(1280, 1280).await.unwrap();
        w.shot("app-parameters").await;
        w.b.set_window_size(1280, 900).await.unwrap();
        w.fill("#p6-template", "{first_name}.{last_name}").await;
        w.click("#save").await;
        w.wait_text(".flash-ok", "Parameters saved").await;
        assert!(w.b.find(Locator::Css("#default-mapping")).await.is_err(), "the app has its own mapping now");
        let (params, _) = console.state.service.parameters(app_id).await.unwrap();
        let nick = params.iter().find(|p| p.app_attribute == "nickName").expect("nickName saved");
        assert_eq!(nick.source.template.as_deref(), Some("{first_name}.{last_name}"));
        assert_eq!(nick.source.transform, vec![directory::Transform::Lower]);
        assert!(nick.only_on_create);

        // Someone else changes the app meanwhile: Save says so instead of overwriting.
        w.go(&format!("/console/apps/{crm}/parameters")).await;
        let (rules, _) = console.state.service.rules(app_id).await.unwrap();
        console.state.service.put_mapping(&actor, app_id, None, Some(rules), None).await.unwrap();
        w.fill("#p1-transform", "upper").await;
        w.click("#save").await;
        w.wait_text("#changed", "someone changed this app").await;
        assert_eq!(w.prop("#p1-transform", "value").await, "upper", "the edit is kept");
        let (params, _) = console.state.service.parameters(app_id).await.unwrap();
        assert!(params[1].source.transform.is_empty(), "nothing was overwritten");
    })
    .await;
    let audit = console.audit().await;
    let saves = audit.iter().filter(|e| e.action == "app.mapping" && e.actor.kind == "admin" && e.actor.name == ADMIN);
    assert!(saves.count() >= 2, "the console's saves are audited under the admin's name");
}

/// A quarantined app in headless Chromium: the connection badge stops saying "Connected" once
/// a test fails; three refused credentials quarantine the app and its pages show the banner
/// with the reason and the next connection test; Resume runs the queue again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_quarantine_banner_and_resume_in_a_real_browser() {
    let target = Arc::new(
        testkit::ScimApp::start(testkit::ScimAppOptions { token: Some(APP_TOKEN.into()), ..Default::default() })
            .unwrap(),
    );
    let console = Arc::new(Console::start(Default::default()).await);
    let base = console.url("");
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from);
    let (target2, console2) = (target.clone(), console.clone());
    with_browser("console_quarantine", move |b| async move {
        let target = target2;
        let console = console2;
        let w = Walk { b, base, shots };
        w.sign_in().await;
        let id = w.new_app("Payroll", &target.base_url(), APP_TOKEN).await;
        w.click("#test-connection").await;
        w.wait_text("#test-result", "the credentials were accepted").await;
        w.wait_text("#connection-badge", "Connected").await;
        w.enable_provisioning(&id, false).await;

        // Someone changes the token to a wrong one: the test fails and the badge says so.
        w.go(&format!("/console/apps/{id}/configuration")).await;
        w.fill("#token", "a-wrong-token").await;
        w.click("form[action$='/configuration'] button.primary").await;
        w.wait_text(".flash-ok", "Configuration saved").await;
        w.click("#test-connection").await;
        w.wait_text("#test-result", "Connection failed").await;
        w.wait_text("#connection-badge", "Connection failing").await;

        // Three people to provision: the app refuses the credentials three times and is quarantined.
        let app_id: uuid::Uuid = id.parse().unwrap();
        let service = &console.state.service;
        let actor = directory::Actor::admin(ADMIN);
        let role = service
            .create_role(&actor, directory::RoleInput { name: "Staff".into(), description: None, pushable: false })
            .await;
        let role = role.unwrap();
        service.add_role_app(&actor, role.id, app_id).await.unwrap();
        for name in ["pat", "kim", "lee"] {
            let input = directory::UserInput { username: name.into(), ..Default::default() };
            let u = service.create_user(&actor, input, directory::UserSource::Local).await.unwrap();
            service.add_role_user(&actor, role.id, u.id).await.unwrap();
        }
        eventually("the app is quarantined", || {
            let console = console.clone();
            async move {
                let h = console.state.service.app_health(app_id).await.unwrap();
                h.state == directory::HealthState::Quarantined
            }
        })
        .await;
        w.go(&format!("/console/apps/{id}/provisioning")).await;
        w.wait_text("#quarantine-banner", "refused the credentials 3 times in a row").await;
        w.wait_text("#quarantine-banner", "A connection test runs at").await;
        assert_eq!(w.text("#connection-badge").await, "Quarantined");
        w.shot("app-quarantined").await;
        // Every tab of the app shows it.
        w.go(&format!("/console/apps/{id}/rules")).await;
        w.wait_for("#quarantine-banner", true).await;

        // The right token again, then Resume: the queue runs at once and the people are provisioned.
        w.go(&format!("/console/apps/{id}/configuration")).await;
        w.fill("#token", APP_TOKEN).await;
        w.click("form[action$='/configuration'] button.primary").await;
        w.wait_text(".flash-ok", "Configuration saved").await;
        assert!(target.users().is_empty(), "nothing sent while quarantined");
        w.click("#resume-app").await;
        w.wait_text(".flash-ok", "Resumed Payroll").await;
        w.wait_for("#quarantine-banner", false).await;
        eventually("the people are provisioned", || {
            let target = target.clone();
            async move { target.users().len() == 3 }
        })
        .await;
        // A successful test clears the failing badge.
        w.click("#test-connection").await;
        w.wait_text("#test-result", "the credentials were accepted").await;
        w.wait_text("#connection-badge", "Connected").await;
    })
    .await;
    let audit = console.audit().await;
    assert!(audit.iter().any(|e| e.action == "app.quarantine" && e.actor.kind == "system"));
    assert!(audit.iter().any(|e| e.action == "app.resume" && e.actor.kind == "admin" && e.actor.name == ADMIN));
}

/// The app's page shows how the latest reconcile read the app: the strategy, or the
/// contradiction that made it fail (issue 16).
#[tokio::test]
async fn console_app_page_names_the_read_strategy_and_contradiction() {
    let c = Console::start(Default::default()).await;
    let (session, csrf) = c.login().await;
    let scim = testkit::ScimApp::start(testkit::ScimAppOptions {
        max_results: 2,
        switches: testkit::Switches { list_ignores_start_index: true, ..Default::default() },
        ..Default::default()
    })
    .unwrap();
    for i in 0..5 {
        scim.create_user(json!({"userName": format!("someone{i}")})).unwrap();
    }
    let input: directory::AppInput = serde_json::from_value(json!({
        "name": "Pager", "connection": {"base_url": scim.base_url(), "auth": {"type": "bearer", "token": "t"}}
    }))
    .unwrap();
    let actor = directory::Actor::admin(ADMIN);
    let app = c.state.service.create_app(&actor, input).await.unwrap();
    c.state.service.test_connection(&actor, app.id).await.unwrap();
    let page = format!("/console/apps/{}/provisioning", app.id);
    let r = c.post(&format!("/console/apps/{}/reconcile", app.id), &session, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let html = c.get(&page, &session).await.text().await.unwrap();
    assert!(html.contains("Last Reconcile"), "{html}");
    assert!(html.contains("POST /.search paging"), "read through POST /.search: {html}");
    assert!(html.contains("asked for startIndex=3, the app answered startIndex=1"), "{html}");

    // When POST /.search does the same, the reconcile fails and the page says why.
    scim.set_switches(testkit::Switches {
        list_ignores_start_index: true,
        search_ignores_start_index: true,
        ..Default::default()
    });
    scim.reset_counts();
    c.post(&format!("/console/apps/{}/reconcile", app.id), &session, &[("csrf", &csrf)]).await;
    let html = c.get(&page, &session).await.text().await.unwrap();
    assert!(html.contains("none was consistent"), "{html}");
    assert!(html.contains("POST /.search paging: asked for startIndex=3"), "{html}");
    assert_eq!(scim.counts().writes(), 0);
}

/// The rate budget from the app's Provisioning tab (a bad value refused next to its field),
/// and each app's queue, rate and ETA on the Apps page and on the app's pages.
#[tokio::test]
async fn console_sets_a_rate_budget_and_shows_each_apps_queue() {
    let c = Console::start(Default::default()).await;
    let (session, csrf) = c.login().await;
    let scim = testkit::ScimApp::start(Default::default()).unwrap();
    let input: directory::AppInput = serde_json::from_value(json!({
        "name": "Paced", "connection": {"base_url": scim.base_url(), "auth": {"type": "bearer", "token": "t"}},
        "provisioning": {"enabled": false, "lookup_before_create": false}
    }))
    .unwrap();
    let actor = directory::Actor::admin(ADMIN);
    let service = &c.state.service;
    let app = service.create_app(&actor, input).await.unwrap();
    let tab = format!("/console/apps/{}/provisioning", app.id);
    let save = |per_minute: &'static str, burst: &'static str| {
        let (c, tab, session, csrf) = (&c, tab.clone(), session.clone(), csrf.clone());
        async move {
            let form = [
                ("csrf", csrf.as_str()),
                ("enabled", "1"),
                ("on_suspend", "suspend"),
                ("on_delete", "delete"),
                ("max_concurrency", "4"),
                ("rate_per_minute", per_minute),
                ("rate_burst", burst),
            ];
            c.post(&tab, &session, &form).await
        }
    };
    let r = save("lots", "").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"id="e-rate-per-minute""#), "{html}");
    assert!(service.get_app(app.id).await.unwrap().provisioning.rate_limit.is_none(), "nothing saved");
    let r = save("1", "").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let stored = service.get_app(app.id).await.unwrap().provisioning.rate_limit.unwrap();
    assert_eq!((stored.per_minute, stored.burst), (1, Some(1)), "the default burst");

    // One request a minute: the first account goes, the others wait in the queue.
    let role = service
        .create_role(&actor, directory::RoleInput { name: "Staff".into(), description: None, pushable: false })
        .await
        .unwrap();
    service.add_role_app(&actor, role.id, app.id).await.unwrap();
    for i in 0..3 {
        let input = directory::UserInput { username: format!("paced{i}"), ..Default::default() };
        let u = service.create_user(&actor, input, directory::UserSource::Local).await.unwrap();
        service.add_role_user(&actor, role.id, u.id).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while scim.users().is_empty() {
        assert!(Instant::now() < deadline, "the first account never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let apps = c.get("/console/apps", &session).await.text().await.unwrap();
    assert!(apps.contains(" queued · "), "{apps}");
    assert!(apps.contains("at the rate budget"), "{apps}");
    let html = c.get(&tab, &session).await.text().await.unwrap();
    assert!(html.contains(r#"id="app-queue">Queue: "#), "{html}");
    assert!(html.contains("Rate budget: 1 request a minute, bursts of 1"), "{html}");
    assert!(html.contains(r#"name="rate_per_minute" type="number" min="1" max="100000" value="1""#), "{html}");
    assert_eq!(scim.users().len(), 1, "the budget holds the others back");
}

/// The blast-radius guard in headless Chromium against the real scim2-server: a save that
/// would delete accounts asks first with the count in the button; what the guard held is
/// reviewed on the app's page (some allowed, the others rejected); the Apps page and the
/// Provisioning page say how many deprovisions are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_guard_confirmation_and_held_review_in_a_real_browser() {
    let scim = Arc::new(Scim2Server::spawn(Some(APP_TOKEN)));
    let console = Arc::new(Console::start(Default::default()).await);
    let base = console.url("");
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from);
    let (scim2, console2) = (scim.clone(), console.clone());
    with_browser("console_guard", move |b| async move {
        let (scim, console) = (scim2, console2);
        let w = Walk { b, base, shots };
        w.sign_in().await;
        let id = w.new_app("Wiki", &scim.base_url, APP_TOKEN).await;
        w.click("#test-connection").await;
        w.wait_text("#test-result", "the credentials were accepted").await;
        w.enable_provisioning(&id, false).await;

        // Thirty people with accounts; on_delete "Do nothing"; twelve leave the role and keep them.
        let app_id: uuid::Uuid = id.parse().unwrap();
        let service = &console.state.service;
        let actor = directory::Actor::admin(ADMIN);
        let role = service.create_role(&actor, directory::RoleInput { name: "Staff".into(), description: None, pushable: false }).await;
        let role = role.unwrap();
        service.add_role_app(&actor, role.id, app_id).await.unwrap();
        let mut users = Vec::new();
        for i in 1..=30 {
            let name = format!("member{i:02}");
            let input = directory::UserInput { username: name.clone(), ..Default::default() };
            let u = service.create_user(&actor, input, directory::UserSource::Local).await.unwrap();
            service.add_role_user(&actor, role.id, u.id).await.unwrap();
            users.push(u.id);
        }
        let total = || {
            let scim = scim.clone();
            async move { scim_call(&scim, reqwest::Method::GET, "/Users?count=100", None).await["totalResults"].clone() }
        };
        eventually("30 accounts", || {
            let t = total();
            async move { t.await == 30 }
        })
        .await;
        let patch = serde_json::json!({"provisioning": {"on_delete": "none"}});
        service.patch_app(&actor, app_id, patch.as_object().unwrap(), None).await.unwrap();
        for u in &users[..12] {
            service.remove_role_user(&actor, role.id, *u).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(total().await, 30, "on_delete none: the leavers keep their accounts");

        // "Delete the account", applied to existing accounts: the save asks first, with the count.
        w.go(&format!("/console/apps/{id}/provisioning")).await;
        w.select("#on-delete", "delete").await;
        w.click("#apply-to-existing").await;
        w.click("form.card button.primary").await;
        w.wait_text("#confirm-deprovision", "Saving would suspend or delete 12 accounts in Wiki").await;
        w.wait_text("#confirm-deprovision", "the deprovisioning guard would hold 12 of them for review").await;
        assert_eq!(w.text("#confirm-save").await, "Save and deprovision 12 accounts");
        assert_eq!(w.prop("#on-delete", "value").await, "delete", "the choice is kept while asking");
        let stored = service.get_app(app_id).await.unwrap();
        assert_eq!(stored.provisioning.on_delete, directory::DeprovisionAction::None, "nothing saved before confirming");
        w.b.execute("document.getElementById('confirm-save').scrollIntoView({block: 'center'})", vec![]).await.unwrap();
        w.shot("guard-confirm").await;
        w.click("#confirm-save").await;
        w.wait_text(".flash-ok", "Provisioning settings saved").await;

        // The guard holds the twelve deletions: nothing reaches the app.
        eventually("12 held", || {
            let console = console.clone();
            async move { console.state.service.held_events(app_id).await.unwrap().len() == 12 }
        })
        .await;
        assert_eq!(total().await, 30, "nothing sent for held deletions");
        w.go("/console/apps").await;
        w.wait_text(".held-count", "12 deprovisions held").await;
        w.go("/console/provisioning").await;
        w.wait_text(".held-count", "12 deprovisions held").await;
        w.wait_text(".held-count", "in Wiki").await;

        // The review on the app's page: allow two, reject two, then reject the other eight.
        w.go(&format!("/console/apps/{id}/provisioning")).await;
        w.wait_text("#held-count", "12 deprovisions held").await;
        w.wait_text("#held-list", "deleted because").await;
        let held = service.held_events(app_id).await.unwrap();
        let id_of = |name: &str| held.iter().find(|e| e.username == name).unwrap().id.to_string();
        for name in ["member01", "member02"] {
            w.click(&format!("#held-list input[value='{}']", id_of(name))).await;
        }
        w.shot("held-review").await;
        w.click("#allow-selected").await;
        w.wait_text(".flash-ok", "Allowed 2 held operations").await;
        w.wait_text("#held-count", "10 deprovisions held").await;
        for name in ["member03", "member04"] {
            w.click(&format!("#held-list input[value='{}']", id_of(name))).await;
        }
        w.click("#reject-selected").await;
        w.wait_text(".flash-ok", "Rejected 2 held operations").await;
        w.wait_text("#held-count", "8 deprovisions held").await;
        w.click("#reject-all").await;
        w.wait_text(".flash-ok", "Rejected 8 held operations").await;
        w.wait_for("#held-review", false).await;
        eventually("the two allowed deletions are sent", || {
            let t = total();
            async move { t.await == 28 }
        })
        .await;
        for (name, present) in [("member01", false), ("member02", false), ("member03", true), ("member04", true)] {
            assert_eq!(scim_users(&scim, name).await.len(), usize::from(present), "{name}");
        }
        for name in ["member03", "member04"] {
            let e = service.get_event(id_of(name).parse().unwrap()).await.unwrap();
            assert_eq!(e.status, directory::EventStatus::Rejected, "{name}");
        }

        // Revoking the app from the role asks first too; confirmed, the guard holds the eighteen
        // deletions, and "Allow all" sends them.
        w.go(&format!("/console/roles/{}", role.id)).await;
        w.click(&format!("form[action$='/apps/{id}/remove'] button")).await;
        w.wait_text("#confirm-deprovision", "Revoking Wiki from the role would suspend or delete 18 accounts").await;
        assert_eq!(w.text("#confirm-save").await, "Revoke and deprovision 18 accounts");
        assert_eq!(service.apps_of_role(role.id).await.unwrap().len(), 1, "nothing changed before confirming");
        w.click("#confirm-save").await;
        w.wait_text(".flash-ok", "The role no longer grants the app").await;
        eventually("18 held", || {
            let console = console.clone();
            async move { console.state.service.held_events(app_id).await.unwrap().len() == 18 }
        })
        .await;
        assert_eq!(total().await, 28, "nothing sent for held deletions");
        w.go(&format!("/console/apps/{id}/provisioning")).await;
        w.click("#allow-all").await;
        w.wait_text(".flash-ok", "Allowed 18 held operations").await;
        eventually("the eighteen deletions are sent", || {
            let t = total();
            async move { t.await == 10 }
        })
        .await;
    })
    .await;
    let audit = console.audit().await;
    assert!(audit.iter().any(|e| e.action == "app.apply_to_existing" && e.actor.name == ADMIN));
}
