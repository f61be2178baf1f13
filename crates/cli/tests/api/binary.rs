//! The real `provisioner` binary: start-up, persistence, bootstrap token, CLI commands.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_provisioner");

/// The binary the hardening tests of issue 15 run (they are about the build users run): the
/// release build named by `PROVISIONER_RELEASE_BIN` (`scripts/test` builds it and sets it),
/// else the test build.
fn release_bin() -> String {
    match std::env::var("PROVISIONER_RELEASE_BIN") {
        Ok(path) if !path.is_empty() => {
            assert!(Path::new(&path).is_file(), "PROVISIONER_RELEASE_BIN={path} is not a file");
            path
        }
        _ => BIN.to_owned(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `provisioner` command with none of the caller's PROVISIONER_* settings.
fn command(data_dir: &Path) -> Command {
    command_of(BIN, data_dir)
}

/// [`command`] for the binary at `bin`.
fn command_of(bin: &str, data_dir: &Path) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("PROVISIONER_") {
            c.env_remove(k);
        }
    }
    c.env("PROVISIONER_DATA_DIR", data_dir).env("RUST_LOG", "warn").kill_on_drop(true);
    c
}

/// A `provisioner serve` process (also started by other test files: `rate_budgets`).
pub(crate) struct Running {
    child: Child,
    addr: String,
    stdout: Arc<Mutex<String>>,
}

impl Running {
    async fn start(data_dir: &Path, admin_token: Option<&str>) -> Self {
        Self::start_with(data_dir, admin_token, &[]).await
    }

    /// Starts `provisioner serve` with extra environment variables.
    pub(crate) async fn start_with(data_dir: &Path, admin_token: Option<&str>, env: &[(&str, String)]) -> Self {
        Self::start_bin(BIN, data_dir, admin_token, env).await
    }

    /// [`Self::start_with`] on the release build when there is one ([`release_bin`]).
    async fn start_release(data_dir: &Path, admin_token: Option<&str>, env: &[(&str, String)]) -> Self {
        Self::start_bin(&release_bin(), data_dir, admin_token, env).await
    }

    async fn start_bin(bin: &str, data_dir: &Path, admin_token: Option<&str>, env: &[(&str, String)]) -> Self {
        let port = free_port();
        let mut c = command_of(bin, data_dir);
        c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        c.arg("serve").env("PROVISIONER_LISTEN", format!("127.0.0.1:{port}")).stdout(Stdio::piped());
        if let Some(t) = admin_token {
            c.env("PROVISIONER_ADMIN_TOKEN", t);
        }
        let mut child = c.spawn().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = stdout.clone();
        let out = child.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = format!("127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
                if r.status() == StatusCode::OK {
                    return Self { child, addr, stdout };
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("provisioner exited at start: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("provisioner did not become healthy");
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Ends the process abruptly (SIGKILL): whatever was acknowledged must survive.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn printed_token(stdout: &str) -> Option<String> {
    stdout.lines().map(str::trim).find(|l| l.starts_with("prv_")).map(str::to_owned)
}

fn files_contain(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test]
async fn data_survives_a_kill_and_secrets_are_never_stored_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let token = "bootstrap-token-from-env-123";
    let secret = "PLAIN-app-secret-4f1c9e";
    let p = Running::start(dir.path(), Some(token)).await;
    assert_eq!(printed_token(&p.stdout.lock().unwrap()), None, "a given token is not printed");
    let client = reqwest::Client::new();
    let u: serde_json::Value = client
        .post(p.url("/api/v1/users"))
        .bearer_auth(token)
        .json(&json!({"username": "durable", "email": "durable@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = client
        .post(p.url("/api/v1/apps"))
        .bearer_auth(token)
        .json(&json!({"name": "Wiki", "connection": {"base_url": "https://wiki.example.com/scim/v2",
            "auth": {"type": "bearer", "token": secret}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::CREATED);
    p.kill().await;

    assert!(dir.path().join("provisioner.db").exists(), "the database lives in the data directory");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secret.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is private");
    }
    assert_eq!(files_contain(dir.path(), secret), Vec::<String>::new(), "the app credential is stored only encrypted");
    assert_eq!(files_contain(dir.path(), token), Vec::<String>::new(), "the API token is stored only hashed");

    let p = Running::start(dir.path(), Some(token)).await;
    let got: serde_json::Value = client
        .get(p.url(&format!("/api/v1/users/{}", u["id"].as_str().unwrap())))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, u);
    let apps: serde_json::Value =
        client.get(p.url("/api/v1/apps")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    assert_eq!(apps["items"][0]["name"], "Wiki");
    p.kill().await;
}

#[tokio::test]
async fn first_start_prints_a_random_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = Running::start(dir.path(), None).await;
    let token = printed_token(&p.stdout.lock().unwrap()).expect("the bootstrap token is printed");
    let client = reqwest::Client::new();
    let ok = client.get(p.url("/api/v1/users")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    p.kill().await;
    let p = Running::start(dir.path(), None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(printed_token(&p.stdout.lock().unwrap()), None, "printed only on the first start");
    let ok = client.get(p.url("/api/v1/users")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    p.kill().await;
}

#[tokio::test]
async fn migrate_token_create_and_healthcheck() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path()).arg("migrate").output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("provisioner.db").exists());
    let out = command(dir.path()).args(["token", "create", "--name", "ci-bot"]).output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("prv_"), "{token}");

    let p = Running::start(dir.path(), None).await;
    let client = reqwest::Client::new();
    let r = client.post(p.url("/api/v1/roles")).bearer_auth(&token).json(&json!({"name": "Ops"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let audit: serde_json::Value =
        client.get(p.url("/api/v1/audit")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(audit["items"][0]["actor"]["name"], "ci-bot", "the audit log names the token");
    let health = command(dir.path()).args(["healthcheck", "--listen", &p.addr]).output().await.unwrap();
    assert!(health.status.success(), "{health:?}");
    p.kill().await;
    let health = command(dir.path())
        .args(["healthcheck", "--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .await
        .unwrap();
    assert!(!health.status.success());
    let err = String::from_utf8(health.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "one readable line: {err}");
}

/// Two processes on one PostgreSQL database: an API token revoked with the CLI and a SCIM
/// client revoked through the first process are both refused by the second (which had just
/// let them through, so had them cached) within 5 seconds.
#[tokio::test]
async fn revoked_tokens_are_refused_by_another_process_within_5_seconds() {
    let db = testkit::postgres::TestDatabase::create().await;
    let admin = "two-process-admin-token-0123456789";
    let env = [
        ("PROVISIONER_DATABASE_URL", db.url.clone()),
        ("PROVISIONER_SECRET_KEY", store::secrets::Keyring::generate_key()),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let first = Running::start_with(dirs[0].path(), Some(admin), &env).await;
    let second = Running::start_with(dirs[1].path(), Some(admin), &env).await;
    let cli = |args: &[&str]| {
        let mut c = command(dirs[0].path());
        c.envs(env.iter().map(|(k, v)| (*k, v.as_str()))).args(args);
        c
    };
    let out = cli(&["tokens", "create", "--name", "ci-bot"]).output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let api_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let c = reqwest::Client::new();
    let scim: serde_json::Value = c
        .post(first.url("/api/v1/scim-clients"))
        .bearer_auth(admin)
        .json(&json!({"name": "Okta"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scim_token = scim["token"].as_str().unwrap().to_owned();
    let status = |url: String, token: String| {
        let c = c.clone();
        async move { c.get(url).bearer_auth(token).send().await.unwrap().status() }
    };
    let api_ok = || status(second.url("/api/v1/roles"), api_token.clone());
    let scim_ok = || status(second.url("/scim/v2/Groups"), scim_token.clone());
    assert_eq!(api_ok().await, StatusCode::OK);
    assert_eq!(scim_ok().await, StatusCode::OK);
    // Listed by the CLI (never the token), then revoked by it.
    let out = cli(&["tokens", "list"]).output().await.unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success() && listed.contains("ci-bot") && listed.contains("admin"), "{listed}");
    assert!(!listed.contains(&api_token) && !listed.contains(admin), "{listed}");
    let id = listed.lines().find(|l| l.contains("ci-bot")).unwrap().split_whitespace().next().unwrap().to_owned();
    let out = cli(&["tokens", "revoke", &id]).output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let revoked = std::time::Instant::now();
    let r = c.delete(first.url(&format!("/api/v1/scim-clients/{}", scim["id"].as_str().unwrap()))).bearer_auth(admin);
    assert_eq!(r.send().await.unwrap().status(), StatusCode::NO_CONTENT);
    let (mut api_at, mut scim_at) = (None, None);
    while api_at.is_none() || scim_at.is_none() {
        assert!(revoked.elapsed() < Duration::from_secs(5), "still accepted 5 s after revocation");
        if api_at.is_none() && api_ok().await == StatusCode::UNAUTHORIZED {
            api_at = Some(revoked.elapsed());
        }
        if scim_at.is_none() && scim_ok().await == StatusCode::UNAUTHORIZED {
            scim_at = Some(revoked.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("revoked tokens refused by the other process after: API {api_at:?}, SCIM {scim_at:?}");
    let out = cli(&["tokens", "list"]).output().await.unwrap();
    assert!(!String::from_utf8(out.stdout).unwrap().contains("ci-bot"));
    let out = cli(&["tokens", "revoke", &id]).output().await.unwrap();
    assert!(!out.status.success(), "revoking twice is an error");
    first.kill().await;
    second.kill().await;
}

#[tokio::test]
async fn bad_settings_are_one_readable_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("provisioner.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisten_port = 8080\n").unwrap();
    let out = command(dir.path()).args(["--config", config.to_str().unwrap(), "migrate"]).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("listen_port"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = command(dir.path()).args(["migrate", "--database-url", "mysql://localhost/x"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("mysql"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = command(dir.path())
        .args(["serve", "--listen", &taken.local_addr().unwrap().to_string()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("cannot listen"));

    // A config file can carry the settings.
    let data = dir.path().join("from-config");
    std::fs::write(&config, format!("data_dir = {:?}\n", data.to_str().unwrap())).unwrap();
    let out = command(dir.path())
        .env_remove("PROVISIONER_DATA_DIR")
        .args(["--config", config.to_str().unwrap(), "migrate"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(data.join("provisioner.db").exists());
}

/// Counts the accounts in a SCIM app.
async fn scim_total(base_url: &str, token: &str) -> u64 {
    let r: serde_json::Value = reqwest::Client::new()
        .get(format!("{base_url}/Users?count=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["totalResults"].as_u64().unwrap()
}

#[tokio::test]
async fn sigkill_while_provisioning_loses_nothing_and_duplicates_nothing() {
    const USERS: usize = 500;
    let scim_token = "crash-test-token";
    let scim = testkit::Scim2Server::spawn(Some(scim_token));
    let dir = tempfile::tempdir().unwrap();
    let token = "crash-admin-token-0123456789";
    let p = Running::start(dir.path(), Some(token)).await;
    let c = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| c.post(p.url(path)).bearer_auth(token).json(&body).send();
    // Provisioning starts disabled, so that all 500 creates are queued at once when enabled.
    let app: serde_json::Value = post(
        "/api/v1/apps",
        json!({"name": "Crash", "connection": {"base_url": scim.base_url,
        "auth": {"type": "bearer", "token": scim_token}}, "provisioning": {"enabled": false, "max_concurrency": 8}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let app_id = app["id"].as_str().unwrap().to_owned();
    let role: serde_json::Value =
        post("/api/v1/roles", json!({"name": "Everyone"})).await.unwrap().json().await.unwrap();
    let role_id = role["id"].as_str().unwrap().to_owned();
    c.put(p.url(&format!("/api/v1/roles/{role_id}/apps/{app_id}"))).bearer_auth(token).send().await.unwrap();
    for i in 0..USERS {
        let u: serde_json::Value = post(
            "/api/v1/users",
            json!({"username": format!("crash{i:04}"), "email": format!("crash{i}@example.com")}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let r = c
            .put(p.url(&format!("/api/v1/roles/{role_id}/users/{}", u["id"].as_str().unwrap())))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let r = c
        .patch(p.url(&format!("/api/v1/apps/{app_id}")))
        .bearer_auth(token)
        .json(&json!({"provisioning": {"enabled": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Kill it in the middle of the work.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while scim_total(&scim.base_url, scim_token).await < (USERS / 5) as u64 {
        assert!(std::time::Instant::now() < deadline, "provisioning did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.kill().await;
    let at_kill = scim_total(&scim.base_url, scim_token).await;
    assert!(at_kill < USERS as u64, "killed too late to prove anything ({at_kill} accounts)");

    let p = Running::start(dir.path(), Some(token)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let events: serde_json::Value = c
            .get(p.url(&format!("/api/v1/events?app={app_id}&status=provisioned&limit=500")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = events["items"].as_array().unwrap().len();
        if done == USERS {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {done} of {USERS} provisioned after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(scim_total(&scim.base_url, scim_token).await, USERS as u64, "exactly one account per user");
    // No event is left unfinished, none failed, and every account is ours.
    for status in ["provisioning", "failed", "unknown", "pending"] {
        let e: serde_json::Value = c
            .get(p.url(&format!("/api/v1/events?app={app_id}&status={status}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(e["items"], json!([]), "events left {status}");
    }
    let accounts: serde_json::Value = c
        .get(p.url(&format!("/api/v1/apps/{app_id}/accounts?limit=500")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = accounts["items"].as_array().unwrap();
    assert_eq!(items.len(), USERS);
    assert!(items.iter().all(|a| a["ownership"] == "created" && a["status"] == "provisioned"));
    p.kill().await;
}

#[tokio::test]
async fn three_processes_on_one_postgres_share_the_work_and_survive_a_kill() {
    const USERS: usize = 5000;
    let scim_token = "cluster-test-token";
    let scim = testkit::Scim2Server::spawn(Some(scim_token));
    let db = testkit::postgres::TestDatabase::create().await;
    let token = "cluster-admin-token-0123456789";
    let env = [
        ("PROVISIONER_DATABASE_URL", db.url.clone()),
        ("PROVISIONER_SECRET_KEY", store::secrets::Keyring::generate_key()),
        ("PROVISIONER_LEASE_SECONDS", "5".to_owned()),
    ];
    // How many processes share the work (3; PROVISIONER_CLUSTER_PROCESSES=1 measures one alone).
    let processes: usize = std::env::var("PROVISIONER_CLUSTER_PROCESSES")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let dirs: Vec<_> = (0..processes).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = Vec::new();
    for d in &dirs {
        procs.push(Running::start_with(d.path(), Some(token), &env).await);
    }
    let c = reqwest::Client::new();
    let api = procs[0].url("");
    let app: serde_json::Value = c
        .post(format!("{api}/api/v1/apps"))
        .bearer_auth(token)
        .json(&json!({"name": "Cluster", "connection": {"base_url": scim.base_url,
            "auth": {"type": "bearer", "token": scim_token}}, "provisioning": {"enabled": false, "max_concurrency": 8}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app_id = app["id"].as_str().unwrap().to_owned();
    let role: serde_json::Value = c
        .post(format!("{api}/api/v1/roles"))
        .bearer_auth(token)
        .json(&json!({"name": "Everyone"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let role_id = role["id"].as_str().unwrap().to_owned();
    c.put(format!("{api}/api/v1/roles/{role_id}/apps/{app_id}")).bearer_auth(token).send().await.unwrap();
    // 5,000 people, written through all three processes at once.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..6 {
        let (c, base, role_id) = (c.clone(), procs[w % processes].url(""), role_id.clone());
        writers.spawn(async move {
            for i in (w..USERS).step_by(6) {
                let u: serde_json::Value = c
                    .post(format!("{base}/api/v1/users"))
                    .bearer_auth(token)
                    .json(&json!({"username": format!("member{i:05}"), "email": format!("m{i}@example.com")}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let r = c
                    .put(format!("{base}/api/v1/roles/{role_id}/users/{}", u["id"].as_str().unwrap()))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::NO_CONTENT);
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    let started = std::time::Instant::now();
    let r = c
        .patch(format!("{api}/api/v1/apps/{app_id}"))
        .bearer_auth(token)
        .json(&json!({"provisioning": {"enabled": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // One of the three dies in the middle of the work.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while scim_total(&scim.base_url, scim_token).await < (USERS / 5) as u64 {
        assert!(std::time::Instant::now() < deadline, "provisioning did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if processes > 1 {
        procs.remove(1).kill().await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    loop {
        let total = scim_total(&scim.base_url, scim_token).await;
        if total >= USERS as u64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {total} of {USERS} accounts after 15 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    // Every event reaches a final status.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut open = 0;
        for status in ["pending", "provisioning", "modifying", "deleting"] {
            let e: serde_json::Value = c
                .get(format!("{api}/api/v1/events?app={app_id}&status={status}&limit=500"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            open += e["items"].as_array().unwrap().len();
        }
        if open == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{open} events never finished");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(scim_total(&scim.base_url, scim_token).await, USERS as u64, "exactly one account per user");
    for status in ["failed", "unknown"] {
        let e: serde_json::Value = c
            .get(format!("{api}/api/v1/events?app={app_id}&status={status}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(e["items"], json!([]), "events {status}");
    }
    // No operation ran twice: the app received one create per user, plus at most the
    // creates the killed process had in flight (retried after their lease expired).
    // (The account count above shows every create arrived; scim2-server's request log can
    // miss a line under load, so the log serves for the upper bound.)
    let posts = scim.requests("POST", "/v2/Users");
    assert!(posts <= USERS + 8, "{posts} creates received for {USERS} users");
    eprintln!(
        "cluster: {USERS} users provisioned by {processes} processes (one killed when several) in {:.1} s: {:.0} users/s; {posts} creates received",
        elapsed.as_secs_f64(),
        USERS as f64 / elapsed.as_secs_f64()
    );
    for p in procs {
        p.kill().await;
    }
}

/// A raw HTTP/1.1 exchange on its own connection: what `bytes` get back before the server
/// closes the connection (or `wait` passes).
async fn raw_exchange(addr: &str, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `/healthz` answers 200 on a fresh connection within `within` (refusals retried).
async fn healthz_answers_within(addr: &str, within: Duration) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < within {
        let left = within.saturating_sub(start.elapsed());
        let got = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", left).await;
        if got.starts_with("HTTP/1.1 200") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Issue 15: one unauthenticated GET with an AuthnRequest nested thousands of levels deep
/// overflowed the stack and aborted the whole process. On the release build when
/// `PROVISIONER_RELEASE_BIN` names it (as `scripts/test` does).
#[tokio::test]
async fn deeply_nested_authn_requests_get_a_400_page_and_the_process_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let token = "bootstrap-token-nesting-1";
    let p = Running::start_release(dir.path(), Some(token), &[]).await;
    let http = reqwest::Client::new();
    let app: serde_json::Value = http
        .post(p.url("/api/v1/apps"))
        .bearer_auth(token)
        .json(&json!({"name": "Wiki", "connection": {"base_url": "http://127.0.0.1:9/scim/v2",
            "auth": {"type": "bearer", "token": "unused"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app = app["id"].as_str().unwrap().to_owned();
    let put = http
        .put(p.url(&format!("/api/v1/apps/{app}/saml")))
        .bearer_auth(token)
        .json(&json!({"sp_entity_id": "https://sp.example.com", "acs_urls": ["https://sp.example.com/acs"],
            "name_id_format": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress", "name_id_attribute": "email", "jit_only": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK, "{}", put.text().await.unwrap());
    for depth in [5_000, 9_000] {
        let xml = format!(
            "<samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" ID=\"_d\" Version=\"2.0\" \
             IssueInstant=\"{}\">{}{}</samlp:AuthnRequest>",
            saml::instant(directory::now()),
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        );
        let param = saml::request::encode_redirect(&xml);
        let query: String =
            url::form_urlencoded::Serializer::new(String::new()).append_pair("SAMLRequest", &param).finish();
        let r = http.get(p.url(&format!("/saml/{app}/sso?{query}"))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "nested {depth} deep");
        assert!(r.text().await.unwrap().contains("nests elements deeper than 100 levels"));
        let health = http.get(p.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "the process still answers after {depth} levels");
    }
}

/// Issue 15: half-sent requests held connections for ever (20,000 of them exhausted the file
/// descriptors), trickled bodies were kept, and a declared 100 MB body got no early 413.
/// Timeouts set to 2 s and the cap to 200, as the issue says. On the release build when
/// `PROVISIONER_RELEASE_BIN` names it (as `scripts/test` does).
#[tokio::test]
async fn slow_and_half_sent_connections_are_closed_and_healthz_keeps_answering() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let token = "bootstrap-token-limits-1";
    let env = [
        ("PROVISIONER_HEADER_TIMEOUT_SECONDS", "2".to_owned()),
        ("PROVISIONER_BODY_TIMEOUT_SECONDS", "2".to_owned()),
        ("PROVISIONER_KEEP_ALIVE_SECONDS", "2".to_owned()),
        ("PROVISIONER_MAX_CONNECTIONS", "200".to_owned()),
    ];
    let p = Running::start_release(dir.path(), Some(token), &env).await;
    let addr = p.addr.clone();

    // 500 half-sent requests: each is closed within 3 s of its last byte (those over the cap at once).
    let mut flood = Vec::new();
    for _ in 0..500 {
        let addr = addr.clone();
        flood.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let last_byte = tokio::time::Instant::now();
            let mut sink = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
            (closed.is_ok(), last_byte.elapsed())
        }));
    }
    // Meanwhile /healthz answers within 3 s.
    assert!(healthz_answers_within(&addr, Duration::from_secs(3)).await, "/healthz during the flood");
    for f in flood {
        let (closed, after) = f.await.unwrap();
        assert!(closed, "a half-sent connection is still open {after:?} after its last byte");
    }
    assert!(healthz_answers_within(&addr, Duration::from_secs(3)).await, "/healthz after the flood");

    // A body sent at 1 byte/s is cut at 2 s (a 408), long before its 100 bytes are in.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let first_body_byte = tokio::time::Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    // /healthz answers while the body trickles.
    assert!(healthz_answers_within(&addr, Duration::from_secs(3)).await, "/healthz during the trickle");
    let mut answer = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut answer)).await;
    let cut_after = first_body_byte.elapsed();
    trickle.abort();
    assert!(cut.is_ok(), "the trickled body was not cut");
    // Cut at 2 s (the body timeout), with the same 1 s of slack as the half-sent requests.
    assert!(cut_after < Duration::from_secs(3), "the trickled body was cut only after {cut_after:?}");
    let answer = String::from_utf8_lossy(&answer);
    // (The server may reset the connection, with the trickled bytes unread, before the client reads its 408.)
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.is_empty() || answer.contains("arrived too slowly"), "{answer}");

    // A declared 100 MB body gets its 413 at once, before any of it is sent.
    let start = tokio::time::Instant::now();
    let got = raw_exchange(
        &addr,
        b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n",
        Duration::from_secs(1),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains("application/problem+json"), "{got}");
    assert!(start.elapsed() < Duration::from_secs(1));
    // So does one sent to SCIM's /Bulk (its limit is 4 MiB, the general one 1 MiB), in SCIM's words.
    for (path, length) in [("/scim/v2/Bulk", 104857600), ("/scim/v2/Users", 2097152)] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/scim+json\r\nContent-Length: {length}\r\n\r\n"
        );
        let got = raw_exchange(&addr, head.as_bytes(), Duration::from_secs(1)).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{path}: {got}");
        assert!(got.contains("application/scim+json"), "{path}: {got}");
    }

    // An idle keep-alive connection is closed after its 2 s.
    let start = tokio::time::Instant::now();
    let got = raw_exchange(&addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(4)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(start.elapsed() < Duration::from_secs(4), "the idle connection is closed");
    assert!(healthz_answers_within(&addr, Duration::from_secs(3)).await);
}
