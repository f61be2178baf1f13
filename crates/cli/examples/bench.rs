//! The engine's benchmarks (see docs/benchmarks.md; `scripts/bench` runs them all).
//!
//! `bench provision`: initial provisioning throughput into `scim-target` (the in-memory SCIM
//! service of this repository) next to the target's own ceiling measured by a plain load
//! generator; then a quiet reconciliation of the same, in-sync accounts; then propagation
//! latency of attribute changes written through the API. The engine runs in real
//! `provisioner serve` processes (1 on SQLite; `BENCH_PROCESSES` on PostgreSQL).
//!
//! `bench plan`: the desired state of `BENCH_PLAN_USERS` users in 10 apps with 10 parameters
//! and 20 rules each, computed from the store; time and peak memory.
//!
//! `bench scim`: `BENCH_SCIM_CLIENTS` identity providers push `BENCH_SCIM_POSTS` users over
//! inbound SCIM (each a single `POST /scim/v2/Users` with an Entra-like body, then the user added
//! to the client's group, which grants an app), concurrently, into one `provisioner serve`;
//! users per second, POST and PATCH latency, and the time until the last of them has an
//! account in `scim-target`.
//!
//! `bench scim-bulk`: the same set-up; a first load of `BENCH_SCIM_POSTS` (10000) users over SCIM
//! `/Bulk`, in requests of `BENCH_SCIM_BULK` (1000) user POSTs from `BENCH_SCIM_CLIENTS` (1)
//! identity providers, each bulk followed by one group PATCH adding its users (see
//! `scim_bulk_bench`); users per second, bulk and PATCH latency, and the time until the last of
//! them has an account in `scim-target`.
//!
//! Settings (environment): `BENCH_BACKEND` (`sqlite` | `postgres`), `BENCH_PROCESSES` (1),
//! `BENCH_USERS` (100000), `BENCH_CONCURRENCY` (16), `BENCH_RATE` (1000 changes/s),
//! `BENCH_SECONDS` (60), `BENCH_PLAN_USERS` (1000000), `BENCH_PLAN_APPS` (10),
//! `BENCH_SCIM_POSTS` (1000; 10000 for `scim-bulk`), `BENCH_SCIM_CLIENTS` (8; 1 for
//! `scim-bulk`), `BENCH_SCIM_BULK` (1000), `BENCH_SCIM_BODY` (`full`, the default:
//! every attribute of a fully populated Entra user; `basic`: Entra's first fields only; see
//! `entra_user_body`).
//! Prints figures (and `RESULT key=value` lines for the script); asserts nothing about time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark: a step that fails ends the run with its message"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use directory::{Actor, AppInput, RoleInput, User, UserInput, UserSource};
use serde_json::{json, Value};
use server::AppState;
use store::{BulkStore, Store};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

const TARGET_TOKEN: &str = "bench-target-token";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn result(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key}={value}");
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/examples/bench -> target/<profile>
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// CPU seconds (user + system, all threads) a process has used so far; 0 when unknown.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok()) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) end with ')'; utime and stime are
    // the 14th and 15th fields, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds this process (the benchmark, including its load generator) has used so far.
fn own_cpu_seconds() -> f64 {
    cpu_seconds(Some(std::process::id()))
}

fn micros_now() -> u64 {
    u64::try_from(directory::now().timestamp_micros()).unwrap_or(0)
}

/// A running `scim-target`.
struct Target {
    _child: Child,
    base_url: String,
    http: reqwest::Client,
}

impl Target {
    async fn spawn() -> Self {
        Self::spawn_recording("title").await
    }

    /// A target recording the arrival of each value of the user attribute `record`.
    async fn spawn_recording(record: &str) -> Self {
        let mut child = Command::new(bin_dir().join("scim-target"))
            .args(["--token", TARGET_TOKEN, "--max-results", "1000", "--record", record])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("scim-target (build it: cargo build --release -p provisioner-scim-target)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next_line().await.expect("read").expect("scim-target printed nothing");
        let base_url = first.trim_start_matches("listening on ").to_owned();
        Self { _child: child, base_url, http: reqwest::Client::new() }
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(self._child.id())
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_bench/stats", self.base_url))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json")
    }

    async fn reset(&self) {
        self.http.post(format!("{}/_bench/reset", self.base_url)).send().await.expect("reset");
    }

    async fn received(&self) -> Vec<(String, u64)> {
        let v: Value = self
            .http
            .get(format!("{}/_bench/received", self.base_url))
            .send()
            .await
            .expect("rx")
            .json()
            .await
            .expect("j");
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e.get(0)?.as_str()?.to_owned(), e.get(1)?.as_u64()?)))
            .collect()
    }
}

fn user_body(i: usize) -> String {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("bench{i:07}"),
        "externalId": Uuid::now_v7().to_string(), "name": {"givenName": "Bench", "familyName": format!("User {i}")},
        "emails": [{"value": format!("bench{i}@example.com"), "type": "work"}], "active": true})
    .to_string()
}

/// The target's ceiling: POSTs `n` user bodies with `concurrency` requests in flight, from
/// `concurrency` tasks sharing one keep-alive client; accounts per second.
async fn plain_load(base_url: &str, n: usize, concurrency: usize) -> f64 {
    let bodies: Arc<Vec<String>> = Arc::new((0..n).map(user_body).collect());
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, bodies) = (client.clone(), next.clone(), format!("{base_url}/Users"), bodies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    break;
                }
                let r = client
                    .post(&url)
                    .bearer_auth(TARGET_TOKEN)
                    .header("content-type", "application/scim+json")
                    .body(bodies[i].clone())
                    .send()
                    .await
                    .expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                r.bytes().await.expect("body");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(testkit::postgres::TestDatabase),
}

impl Db {
    async fn create(backend: &str) -> Self {
        match backend {
            "postgres" => Db::Postgres(testkit::postgres::TestDatabase::create().await),
            _ => Db::Sqlite(tempfile::tempdir().expect("tempdir")),
        }
    }

    async fn open(&self) -> (Arc<dyn Store>, Arc<dyn BulkStore>) {
        match self {
            Db::Sqlite(dir) => {
                let s = Arc::new(store::SqliteStore::open(&dir.path().join("provisioner.db")).await.expect("sqlite"));
                (s.clone(), s)
            }
            Db::Postgres(db) => {
                let s = Arc::new(
                    store::PostgresStore::connect(&db.url, store::PostgresOptions::default()).await.expect("postgres"),
                );
                (s.clone(), s)
            }
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Db::Sqlite(dir) => vec![("PROVISIONER_DATA_DIR", dir.path().display().to_string())],
            Db::Postgres(db) => vec![("PROVISIONER_DATABASE_URL", db.url.clone())],
        }
    }
}

/// `n` local users, `bench0000000`...
fn users(from: usize, to: usize) -> Vec<User> {
    let now = directory::now();
    (from..to)
        .map(|i| {
            let mut input = UserInput {
                username: format!("bench{i:07}"),
                email: Some(format!("bench{i}@example.com")),
                first_name: Some("Bench".into()),
                last_name: Some(format!("User {i}")),
                title: Some("Engineer".into()),
                department: Some(["Sales", "Engineering", "Support", "Finance"][i % 4].into()),
                ..Default::default()
            };
            input.normalize_and_validate(&[]).expect("valid user");
            User::new(input, UserSource::Local, now)
        })
        .collect()
}

async fn import(bulk: &dyn BulkStore, n: usize, roles: &[Uuid]) -> Duration {
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        bulk.import_users(&users(i, end), roles, &Actor::cli()).await.expect("import");
        i = end;
    }
    start.elapsed()
}

/// A running `provisioner serve`.
struct Serve {
    child: Child,
    url: String,
}

async fn serve(db: &Db, key: &str, role: &str) -> Serve {
    serve_with(db, key, role, &[]).await
}

/// `serve` with more environment variables for the process.
async fn serve_with(db: &Db, key: &str, role: &str, env: &[(&str, String)]) -> Serve {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let mut c = Command::new(bin_dir().join("provisioner"));
    c.arg("serve")
        .args(["--role", role])
        .envs(db.env())
        .env("PROVISIONER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PROVISIONER_SECRET_KEY", key)
        .env("PROVISIONER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PROVISIONER_RECONCILE_SECONDS", "0")
        .env("PROVISIONER_LEASE_SECONDS", "30")
        .env("PROVISIONER_LOG", std::env::var("BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".into()))
        .env("RUST_LOG", std::env::var("BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".into()))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let mut child = c.spawn().expect("provisioner (build it: cargo build --release -p provisioner-cli)");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await {
            if r.status().is_success() {
                return Serve { child, url };
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("provisioner exited at start: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("provisioner did not become healthy");
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn provision_bench() {
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "sqlite".into());
    let processes: usize = if backend == "postgres" { env_or("BENCH_PROCESSES", 1) } else { 1 };
    let n: usize = env_or("BENCH_USERS", 100_000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 16);
    let rate: usize = env_or("BENCH_RATE", 1000);
    let seconds: u64 = env_or("BENCH_SECONDS", 60);
    let lookup = std::env::var("BENCH_LOOKUP").map_or(true, |v| v != "0" && v != "false");
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "provision reconcile latency".into());
    println!(
        "== provision: backend {backend}, {processes} process(es), {n} users, concurrency {concurrency}, \
         lookup_before_create {lookup}"
    );

    // 1. The target's ceiling.
    let ceiling = {
        let t = Target::spawn().await;
        let (target0, own0) = (t.cpu(), own_cpu_seconds());
        let rate = plain_load(&t.base_url, n, concurrency).await;
        let per = |cpu: f64| cpu * 1e6 / n as f64;
        println!(
            "  CPU per account: target {:.0} us, load generator {:.0} us",
            per(t.cpu() - target0),
            per(own_cpu_seconds() - own0)
        );
        rate
    };
    println!("plain load generator into scim-target: {ceiling:.0} accounts/s");
    result("ceiling_per_s", format!("{ceiling:.0}"));

    // Set-up: the app (disabled), a role granting it, the users in bulk.
    let target = Target::spawn().await;
    let db = Db::create(&backend).await;
    let key = store::secrets::Keyring::generate_key();
    let app_id;
    let user_ids: Vec<Uuid>;
    {
        let (st, bulk) = db.open().await;
        let keyring = store::secrets::Keyring::from_base64(std::slice::from_ref(&key)).expect("key");
        let config = engine::EngineConfig { reconcile_interval: None, run_work: false, ..Default::default() };
        let state = AppState::new(st.clone(), Arc::new(keyring), config);
        let svc = &state.service;
        let actor = Actor::cli();
        let app: AppInput = serde_json::from_value(json!({"name": "Bench", "connection": {"base_url": target.base_url,
            "auth": {"type": "bearer", "token": TARGET_TOKEN}}, "provisioning": {"enabled": false, "max_concurrency": concurrency, "lookup_before_create": lookup}}))
        .expect("app");
        let app = svc.create_app(&actor, app).await.expect("create app");
        app_id = app.id;
        let role = svc
            .create_role(&actor, RoleInput { name: "Everyone".into(), description: None, pushable: false })
            .await
            .expect("role");
        svc.add_role_app(&actor, role.id, app.id).await.expect("grant");
        let took = import(bulk.as_ref(), n, &[role.id]).await;
        println!("set-up: {n} users imported in {:.1} s", took.as_secs_f64());
        svc.test_connection(&actor, app.id).await.expect("connection");
        // The planner reads the import's changes (nothing to do while provisioning is off).
        let engine = engine::Engine::new(
            st.clone(),
            Arc::new(store::secrets::Keyring::from_base64(std::slice::from_ref(&key)).expect("key")),
            engine::EngineConfig { reconcile_interval: None, ..Default::default() },
            engine::ConnectorRegistry::with_defaults(),
        );
        let start = Instant::now();
        let mut read = 0;
        loop {
            let k = engine.plan_once().await.expect("plan");
            if k == 0 {
                break;
            }
            read += k;
        }
        println!("set-up: planner read {read} changes in {:.1} s", start.elapsed().as_secs_f64());
        result("catchup_changes_per_s", format!("{:.0}", read as f64 / start.elapsed().as_secs_f64()));
        let mut ids = Vec::with_capacity(n);
        let mut page = store::PageRequest { limit: store::MAX_PAGE, cursor: None };
        loop {
            let p = st.list_users(&store::UserQuery { page: page.clone(), ..Default::default() }).await.expect("users");
            ids.extend(p.items.iter().map(|u| u.id));
            match p.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        user_ids = ids;
        if let Db::Sqlite(_) = db {
            // The serve process owns the embedded database from now on.
            drop(state);
            drop(engine);
        }
    }

    let mut procs = Vec::new();
    for _ in 0..processes {
        procs.push(serve(&db, &key, "all").await);
    }
    let api = procs[0].url.clone();
    let http = reqwest::Client::new();

    // 2. Initial provisioning.
    let engine_cpu = |procs: &[Serve]| procs.iter().map(|p| cpu_seconds(p.child.id())).sum::<f64>();
    let (engine0, target0) = (engine_cpu(&procs), target.cpu());
    let start = Instant::now();
    let r = http
        .patch(format!("{api}/api/v1/apps/{app_id}"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/merge-patch+json")
        .body(json!({"provisioning": {"enabled": true}}).to_string())
        .send()
        .await
        .expect("enable");
    assert!(r.status().is_success(), "enable: {} {}", r.status(), r.text().await.unwrap_or_default());
    let mut last_report = Instant::now();
    loop {
        let s = target.stats().await;
        let have = s["users"].as_u64().unwrap_or(0) as usize;
        if have >= n {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("  ... {have} accounts after {:.0} s", start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created = start.elapsed();
    let engine_rate = n as f64 / created.as_secs_f64();
    println!(
        "engine into scim-target: {n} accounts in {:.1} s = {engine_rate:.0} accounts/s; ratio to the ceiling {:.2}",
        created.as_secs_f64(),
        engine_rate / ceiling
    );
    result("engine_per_s", format!("{engine_rate:.0}"));
    result("ratio", format!("{:.2}", engine_rate / ceiling));
    let s = target.stats().await;
    println!("  requests the target received: {s}");

    // Wait until every account is recorded as provisioned (the last outcomes commit).
    let (st, _) = match &db {
        Db::Postgres(_) => db.open().await,
        Db::Sqlite(_) => {
            // Read-only peek at the embedded file while the server runs (WAL allows it).
            db.open().await
        }
    };
    loop {
        let p = st
            .list_events(&store::EventQuery {
                app: Some(app_id),
                status: Some(directory::EventStatus::Provisioning),
                page: store::PageRequest { limit: 1, cursor: None },
                ..Default::default()
            })
            .await
            .expect("events");
        if p.items.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("  every account recorded after {:.1} s", start.elapsed().as_secs_f64());
    println!(
        "  CPU per account: engine {:.0} us (all processes), target {:.0} us; {} cores",
        (engine_cpu(&procs) - engine0) * 1e6 / n as f64,
        (target.cpu() - target0) * 1e6 / n as f64,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. Quiet reconciliation.
    if phases.contains("reconcile") {
        target.reset().await;
        let start = Instant::now();
        let r = http
            .post(format!("{api}/api/v1/apps/{app_id}/reconcile"))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .expect("reconcile");
        let status = r.status();
        let report: Value = r.json().await.unwrap_or(Value::Null);
        let took = start.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = target.stats().await;
        let writes = ["post", "put", "patch", "delete"].iter().map(|k| s[k].as_u64().unwrap_or(0)).sum::<u64>();
        let reads = s["get"].as_u64().unwrap_or(0);
        println!(
        "quiet reconciliation ({status}): {:.1} s, {reads} reads (pages of up to 1000), {writes} writes; report {report}",
        took.as_secs_f64()
    );
        result("reconcile_s", format!("{:.2}", took.as_secs_f64()));
        result("reconcile_reads", reads);
        result("reconcile_writes", writes);
    }
    if !phases.contains("latency") {
        for mut p in procs {
            let _ = p.child.kill().await;
        }
        return;
    }

    // 4. Propagation latency: `rate` attribute changes per second for `seconds` through the API.
    target.reset().await;
    let total = rate * seconds as usize;
    let sent: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let failures = Arc::new(AtomicUsize::new(0));
    let user_ids = Arc::new(user_ids);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1) as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let permit = limit.clone().acquire_owned().await.expect("permit");
        let (http, sent, failures, ids) = (http.clone(), sent.clone(), failures.clone(), user_ids.clone());
        let api = procs[i % procs.len()].url.clone();
        tasks.spawn(async move {
            let user = ids[i % ids.len()];
            let value = format!("t{i}");
            let at = micros_now();
            let r = http
                .patch(format!("{api}/api/v1/users/{user}"))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/merge-patch+json")
                .body(json!({"title": value}).to_string())
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    sent.lock().expect("lock").insert(value, at);
                }
                _ => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let offered = total as f64 / start.elapsed().as_secs_f64();
    // Let the last changes arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected = sent.lock().expect("lock").len();
    let mut rx;
    loop {
        rx = target.received().await;
        let got = rx.iter().filter(|(v, _)| v.starts_with('t')).count();
        if got >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent = sent.lock().expect("lock").clone();
    let mut lat: Vec<u64> =
        rx.iter().filter_map(|(v, at)| sent.get(v).map(|s| at.saturating_sub(*s))).collect::<Vec<_>>();
    lat.sort_unstable();
    let arrived = lat.len();
    // Changes to the same user collapse: a value overtaken by a newer one may never be sent.
    println!(
        "propagation: {total} changes at {offered:.0}/s through the API ({} refused); {arrived} values reached the target; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        failures.load(Ordering::Relaxed),
        percentile(&lat, 0.5) as f64 / 1000.0,
        percentile(&lat, 0.99) as f64 / 1000.0,
        lat.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    // The tail over time: the p99 of the changes sent in each 5-second window.
    let first = sent.values().min().copied().unwrap_or(0);
    let mut windows: std::collections::BTreeMap<u64, Vec<u64>> = std::collections::BTreeMap::new();
    for (v, at) in &rx {
        if let Some(s) = sent.get(v) {
            windows.entry((s - first) / 5_000_000).or_default().push(at.saturating_sub(*s));
        }
    }
    let by_window: Vec<String> = windows
        .values_mut()
        .map(|l| {
            l.sort_unstable();
            format!("{:.0}", percentile(l, 0.99) as f64 / 1000.0)
        })
        .collect();
    println!("  p99 per 5 s of sending (ms): {}", by_window.join(" "));
    result("latency_rate", format!("{offered:.0}"));
    result("latency_p50_ms", format!("{:.0}", percentile(&lat, 0.5) as f64 / 1000.0));
    result("latency_p99_ms", format!("{:.0}", percentile(&lat, 0.99) as f64 / 1000.0));
    result("latency_arrived", format!("{arrived}/{expected}"));
    for mut p in procs {
        let _ = p.child.kill().await;
    }
}

/// 10 parameters and 20 rules, like an admin would write them.
fn mapping(app: usize, roles: &[(Uuid, String)]) -> Value {
    let params = json!([
        {"app_attribute": "userName", "source": {"attribute": "username"}, "required": true},
        {"app_attribute": "name.givenName", "source": {"attribute": "first_name"}},
        {"app_attribute": "name.familyName", "source": {"attribute": "last_name"}},
        {"app_attribute": "displayName", "source": {"template": "{first_name} {last_name}"}},
        {"app_attribute": "emails[type eq \"work\"].value", "source": {"attribute": "email", "transform": ["lower"]}},
        {"app_attribute": "title", "source": {"attribute": "title"}},
        {"app_attribute": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "source": {"attribute": "department"}},
        {"app_attribute": "nickName", "source": {"attribute": "username", "transform": ["upper", {"first": 8}]}},
        {"app_attribute": "locale", "source": {"constant": "en-US"}},
        {"app_attribute": "preferredLanguage", "source": {"template": "{department}-{title}"}, "only_on_create": true}
    ]);
    let mut rules = Vec::new();
    for r in 0..20 {
        let dept = ["Sales", "Engineering", "Support", "Finance"][r % 4];
        let role_name = roles[r % roles.len()].1.clone();
        let rule = match r % 5 {
            0 => {
                json!({"name": format!("dept {r}"), "conditions": [{"attribute": "department", "op": "equals", "value": dept}],
                "actions": [{"set": {"app_attribute": "userType", "value": format!("type-{app}-{r}")}}]})
            }
            1 => {
                json!({"name": format!("role {r}"), "conditions": [{"attribute": "department", "op": "not_equals", "value": role_name}],
                "actions": [{"add_entitlement": {"type": "roles", "value": format!("role-{app}-{r}")}}]})
            }
            2 => {
                json!({"name": format!("title {r}"), "match": "any", "conditions": [{"attribute": "title", "op": "contains", "value": "engineer"}, {"attribute": "email", "op": "ends_with", "value": "@corp.example"}],
                "actions": [{"set": {"app_attribute": "profileUrl", "source": {"template": "https://corp.example/{username}"}}}]})
            }
            3 => {
                json!({"name": format!("in {r}"), "conditions": [{"attribute": "department", "op": "in", "value": ["Sales", "Support"]}, {"attribute": "status", "op": "equals", "value": "active"}],
                "actions": [{"add_entitlement": {"type": "entitlements", "value": format!("ent-{app}-{r}")}}]})
            }
            _ => {
                json!({"name": format!("scope {r}"), "conditions": [{"attribute": "username", "op": "starts_with", "value": "nobody"}],
                "actions": [{"do_not_provision": true}]})
            }
        };
        rules.push(rule);
    }
    json!({"parameters": params, "rules": rules})
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn plan_bench() {
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "sqlite".into());
    let n: usize = env_or("BENCH_PLAN_USERS", 1_000_000);
    let apps_n: usize = env_or("BENCH_PLAN_APPS", 10);
    println!("== plan: backend {backend}, {n} users x {apps_n} apps, 10 parameters and 20 rules each");
    let db = Db::create(&backend).await;
    let (st, bulk) = db.open().await;
    let key = store::secrets::Keyring::generate_key();
    let keyring = Arc::new(store::secrets::Keyring::from_base64(&[key]).expect("key"));
    let config = engine::EngineConfig { reconcile_interval: None, run_work: false, ..Default::default() };
    let state = AppState::new(st.clone(), keyring.clone(), config);
    let svc = &state.service;
    let actor = Actor::cli();
    let mut roles = Vec::new();
    for r in 0..10 {
        let role = svc
            .create_role(&actor, RoleInput { name: format!("Team {r}"), description: None, pushable: false })
            .await
            .expect("r");
        roles.push((role.id, role.name));
    }
    let mut apps = Vec::new();
    for a in 0..apps_n {
        let input: AppInput = serde_json::from_value(
            json!({"name": format!("App {a}"), "connection": {"base_url": "http://127.0.0.1:9/scim",
            "auth": {"type": "bearer", "token": "x"}}, "provisioning": {"enabled": true}}),
        )
        .expect("app");
        let app = svc.create_app(&actor, input).await.expect("app");
        let m = mapping(a, &roles);
        let parameters: Vec<directory::Parameter> = serde_json::from_value(m["parameters"].clone()).expect("params");
        let rules: Vec<directory::Rule> = serde_json::from_value(m["rules"].clone()).expect("rules");
        svc.put_mapping(&actor, app.id, Some(parameters), Some(rules), None).await.expect("mapping");
        for (role, _) in &roles {
            svc.add_role_app(&actor, *role, app.id).await.expect("grant");
        }
        apps.push(app.id);
    }
    // Users in batches, each in two of the ten roles.
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        let k = (i / 10_000) % roles.len();
        let two = [roles[k].0, roles[(k + 3) % roles.len()].0];
        bulk.import_users(&users(i, end), &two, &actor).await.expect("import");
        i = end;
    }
    println!("set-up: {n} users imported in {:.1} s", start.elapsed().as_secs_f64());
    drop(state);

    // Peak memory from here on.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss_kib();
    let engine = engine::Engine::new(
        st.clone(),
        keyring,
        engine::EngineConfig::default(),
        engine::ConnectorRegistry::with_defaults(),
    );
    let start = Instant::now();
    let summary = engine.desired_states(&apps).await.expect("plan");
    let took = start.elapsed();
    let peak = peak_rss_kib();
    println!(
        "planning: desired state of {} (user, app) pairs ({} accounts present, {} absent, {} invalid) in {:.1} s = {:.0} pairs/s; peak RSS {:.0} MiB (before: {:.0} MiB)",
        summary.pairs,
        summary.present,
        summary.absent,
        summary.invalid,
        took.as_secs_f64(),
        summary.pairs as f64 / took.as_secs_f64(),
        peak as f64 / 1024.0,
        before as f64 / 1024.0
    );
    result("plan_s", format!("{:.1}", took.as_secs_f64()));
    result("plan_pairs", summary.pairs);
    result("plan_peak_mib", format!("{:.0}", peak as f64 / 1024.0));
}

const CORE_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// What Microsoft Entra ID sends to create a user with its default attribute mapping (its SCIM
/// tutorial's create request, filled in): userName (the UPN), externalId (the mail nickname),
/// active, displayName, title, name, the work e-mail and phone number, enterprise
/// employeeNumber and department. `full` adds what a fully populated person also carries:
/// mobile and fax numbers, a work address, preferredLanguage and Entra's `"roles": []`.
///
/// `full` (the default) is a fully populated Entra user (mobile and fax numbers, a work address,
/// preferredLanguage, `"roles": []`); `basic` the first fields only, for comparison with runs
/// made before the server kept every RFC 7643 attribute. The manager is left out either way:
/// it names another pushed user's id, which Entra sends in a later PATCH.
fn entra_user_body(i: usize, full: bool) -> Value {
    const FIRST: [&str; 8] = ["Adele", "Alex", "Diego", "Grady", "Isaiah", "Johanna", "Lynne", "Megan"];
    const LAST: [&str; 8] = ["Vance", "Wilber", "Siciliani", "Archie", "Langer", "Lorenz", "Robbins", "Bowen"];
    const DEPARTMENT: [&str; 4] = ["Sales", "Engineering", "Support", "Finance"];
    const TITLE: [&str; 4] = ["Account Manager", "Software Engineer", "Support Engineer", "Controller"];
    let (first, last) = (FIRST[i % 8], LAST[(i / 8) % 8]);
    let upn = format!("{first}.{last}.{i:05}@contoso.example");
    let mut body = json!({
        "schemas": [CORE_USER, ENTERPRISE_USER],
        "externalId": format!("{first}{last}{i:05}"),
        "userName": upn,
        "active": true,
        "displayName": format!("{first} {last}"),
        "title": TITLE[i % 4],
        "name": {"formatted": format!("{first} {last}"), "givenName": first, "familyName": last},
        "emails": [{"primary": true, "type": "work", "value": upn}],
        "phoneNumbers": [{"type": "work", "value": format!("+1 425 555 {:04}", i % 10_000)}],
        ENTERPRISE_USER: {"employeeNumber": format!("{}", 100_000 + i), "department": DEPARTMENT[i % 4]}
    });
    if full {
        body["phoneNumbers"] = json!([
            {"type": "work", "value": format!("+1 425 555 {:04}", i % 10_000)},
            {"type": "mobile", "value": format!("+1 206 555 {:04}", i % 10_000)},
            {"type": "fax", "value": "+1 425 555 0199"}
        ]);
        body["addresses"] = json!([{"type": "work", "primary": true, "formatted": "1 Microsoft Way\nRedmond, WA 98052\nUS",
            "streetAddress": "1 Microsoft Way", "locality": "Redmond", "region": "WA", "postalCode": "98052",
            "country": "US"}]);
        body["preferredLanguage"] = json!("en-US");
        body["roles"] = json!([]);
    }
    body
}

/// What one pushed user took: the userName, when its POST (or its bulk) was sent (unix micros),
/// and the POST's and the membership PATCH's latencies (micros; 0 for a bulk's users).
struct Pushed {
    user_name: String,
    sent_at: u64,
    post_us: u64,
    patch_us: u64,
}

/// Sends `body` as SCIM JSON and returns the answer's JSON, or ends the run naming what failed.
async fn scim_send(req: reqwest::RequestBuilder, body: &Value, what: &str) -> Value {
    let r = req.header("content-type", "application/scim+json").body(body.to_string()).send().await.expect(what);
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "{what}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Sends an admin API request and returns the answer's JSON, or ends the run naming what failed.
async fn admin(req: reqwest::RequestBuilder, body: Option<Value>, what: &str) -> Value {
    let req = req.bearer_auth(ADMIN_TOKEN);
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(b.to_string()),
        None => req,
    };
    let r = req.send().await.expect(what);
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "{what}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// What the `bench scim` runs share: `scim-target` recording when each `userName` arrives, one
/// `provisioner serve` (per-client rate limit raised) with an app pointing at the target, and
/// for each identity provider a pushable role granting the app and a SCIM client.
struct ScimRun {
    // Field order is drop order: the process goes before its database.
    proc: Serve,
    _db: Db,
    target: Target,
    api: String,
    http: reqwest::Client,
    app_id: String,
}

/// One identity provider: its own connections, its token and its group (a role granting the app).
struct Idp {
    client: reqwest::Client,
    token: String,
    role_id: String,
}

/// Set-up (not timed), through the admin API.
async fn scim_setup(backend: &str, clients: usize, concurrency: usize) -> (ScimRun, Vec<Idp>) {
    let target = Target::spawn_recording("userName").await;
    let db = Db::create(backend).await;
    let key = store::secrets::Keyring::generate_key();
    // The per-client limit (1200 a minute) raised for the run: it would pace the clients, not
    // the server (a bulk counts as its number of operations).
    let proc = serve_with(&db, &key, "all", &[("PROVISIONER_SCIM_RATE_LIMIT", "100000000".into())]).await;
    let api = format!("{}/api/v1", proc.url);
    let http = reqwest::Client::new();

    // The app, then for each client a pushable role granting it and a SCIM client (users: all,
    // roles: pushable) with its own token.
    let app = admin(
        http.post(format!("{api}/apps")),
        Some(json!({"name": "Bench", "connection": {"base_url": target.base_url,
            "auth": {"type": "bearer", "token": TARGET_TOKEN}},
            "provisioning": {"enabled": false, "max_concurrency": concurrency}})),
        "create app",
    )
    .await;
    let app_id = app["id"].as_str().expect("app id").to_owned();
    admin(http.post(format!("{api}/apps/{app_id}/connection/test")), None, "test connection").await;
    admin(
        http.patch(format!("{api}/apps/{app_id}")),
        Some(json!({"provisioning": {"enabled": true}})),
        "enable provisioning",
    )
    .await;
    let mut idps = Vec::new();
    for k in 0..clients {
        let role = admin(
            http.post(format!("{api}/roles")),
            Some(json!({"name": format!("All employees (IdP {k})"), "pushable": true})),
            "create role",
        )
        .await;
        let role_id = role["id"].as_str().expect("role id").to_owned();
        admin(http.put(format!("{api}/roles/{role_id}/apps/{app_id}")), None, "grant app").await;
        let c = admin(
            http.post(format!("{api}/scim-clients")),
            Some(json!({"name": format!("IdP {k}"), "scope": {"users": "all", "roles": "pushable"}})),
            "create SCIM client",
        )
        .await;
        let token = c["token"].as_str().expect("token").to_owned();
        // Each client its own connections; an identity provider tests the connection first
        // (this also verifies the token once, an argon2 hash, before the clock runs).
        let client = reqwest::Client::new();
        let r = client
            .get(format!("{}/scim/v2/ServiceProviderConfig", proc.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("service provider config");
        assert!(r.status().is_success(), "ServiceProviderConfig: {}", r.status());
        idps.push(Idp { client, token, role_id });
    }
    (ScimRun { proc, _db: db, target, api, http, app_id }, idps)
}

/// When the run's clock started: wall clock (unix micros, to compare with the target's) and
/// monotonic, and the CPU seconds used so far by the server and by the benchmark.
struct Clock {
    start_at: u64,
    start: Instant,
    server_cpu: f64,
    own_cpu: f64,
}

impl Clock {
    fn start(run: &ScimRun) -> Self {
        Self {
            server_cpu: cpu_seconds(run.proc.child.id()),
            own_cpu: own_cpu_seconds(),
            start_at: micros_now(),
            start: Instant::now(),
        }
    }
}

/// Waits until the target holds every pushed user's account, then prints (and `RESULT`s, keys
/// prefixed with `prefix`) when the last one arrived and each user's time from being sent to
/// its account, the CPU per user, and when the engine had recorded every outcome.
async fn scim_until_provisioned(run: ScimRun, pushed: &[Pushed], clock: &Clock, pushed_in: Duration, prefix: &str) {
    let n = pushed.len();
    let own_cpu = own_cpu_seconds() - clock.own_cpu;
    let ms = |us: u64| us as f64 / 1000.0;
    let target = &run.target;
    let mut last_report = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(env_or("BENCH_SCIM_WAIT_SECONDS", 600));
    loop {
        let have = target.stats().await["users"].as_u64().unwrap_or(0) as usize;
        if have >= n {
            break;
        }
        assert!(Instant::now() < deadline, "only {have} of {n} accounts in the target after the wait");
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("  ... {have} accounts after {:.0} s", clock.start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server_cpu = cpu_seconds(run.proc.child.id()) - clock.server_cpu;
    let arrived: HashMap<String, u64> =
        target.received().await.into_iter().map(|(u, at)| (u.to_lowercase(), at)).collect();
    let mut lat: Vec<u64> =
        pushed.iter().filter_map(|p| arrived.get(&p.user_name).map(|at| at.saturating_sub(p.sent_at))).collect();
    lat.sort_unstable();
    let last = arrived.values().max().copied().unwrap_or(clock.start_at).saturating_sub(clock.start_at);
    println!(
        "provisioned: the last of the {n} accounts reached the target {:.2} s after the first request \
         ({:.2} s after the last answer); request sent to account in the app: p50 {:.0} ms, p99 {:.0} ms, \
         max {:.0} ms ({} matched)",
        last as f64 / 1e6,
        (last as f64 / 1e6 - pushed_in.as_secs_f64()).max(0.0),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(0)),
        lat.len()
    );
    println!(
        "  CPU per user: provisioner {:.0} us (inbound SCIM, store and engine), load generator {:.0} us; {} cores",
        server_cpu * 1e6 / n as f64,
        own_cpu * 1e6 / n as f64,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  requests the target received: {}", target.stats().await);
    result(&format!("{prefix}_last_provisioned_s"), format!("{:.2}", last as f64 / 1e6));
    result(&format!("{prefix}_to_app_p50_ms"), format!("{:.0}", ms(percentile(&lat, 0.5))));
    result(&format!("{prefix}_to_app_p99_ms"), format!("{:.0}", ms(percentile(&lat, 0.99))));

    // Until the engine has recorded every outcome (nothing left `provisioning`).
    let (api, app_id) = (&run.api, &run.app_id);
    loop {
        let page =
            admin(run.http.get(format!("{api}/events?app={app_id}&status=provisioning&limit=1")), None, "events").await;
        if page["items"].as_array().is_none_or(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  every outcome recorded after {:.2} s", clock.start.elapsed().as_secs_f64());
    let mut proc = run.proc;
    let _ = proc.child.kill().await;
}

/// `bench scim`: identity providers pushing people into the directory over inbound SCIM one
/// request at a time, and the engine provisioning them onward into `scim-target`.
async fn scim_inbound_bench() {
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "sqlite".into());
    let n: usize = env_or("BENCH_SCIM_POSTS", 1000);
    let clients: usize = env_or("BENCH_SCIM_CLIENTS", 8).max(1);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 16);
    let full = std::env::var("BENCH_SCIM_BODY").map_or(true, |v| v != "basic");
    println!(
        "== scim-inbound: backend {backend}, {n} users POSTed by {clients} SCIM clients (1 request in flight each), \
         body {}, app max_concurrency {concurrency}",
        if full { "full (Entra, fully populated)" } else { "basic (Entra's first fields)" }
    );
    let (run, idps) = scim_setup(&backend, clients, concurrency).await;

    // The run: each client POSTs its share of the users one after the other; an identity
    // provider assigns the app through a group, so after each user's POST it adds the user to
    // its group (Entra's PATCH shape). The group grants the app, and the engine provisions the
    // account into the target.
    let scim = format!("{}/scim/v2", run.proc.url);
    let clock = Clock::start(&run);
    let mut tasks = tokio::task::JoinSet::new();
    for (k, Idp { client, token, role_id }) in idps.into_iter().enumerate() {
        let scim = scim.clone();
        tasks.spawn(async move {
            let mut pushed = Vec::new();
            for i in (k..n).step_by(clients) {
                let body = entra_user_body(i, full);
                let user_name = body["userName"].as_str().unwrap_or_default().to_lowercase();
                let sent_at = micros_now();
                let t = Instant::now();
                let user =
                    scim_send(client.post(format!("{scim}/Users")).bearer_auth(&token), &body, "POST /Users").await;
                let post_us = t.elapsed().as_micros() as u64;
                let id = user["id"].as_str().expect("user id");
                let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "Add", "path": "members", "value": [{"value": id}]}]});
                let t = Instant::now();
                scim_send(
                    client.patch(format!("{scim}/Groups/{role_id}")).bearer_auth(&token),
                    &patch,
                    "PATCH /Groups",
                )
                .await;
                let patch_us = t.elapsed().as_micros() as u64;
                pushed.push(Pushed { user_name, sent_at, post_us, patch_us });
            }
            pushed
        });
    }
    let mut pushed = Vec::with_capacity(n);
    while let Some(p) = tasks.join_next().await {
        pushed.extend(p.expect("client task"));
    }
    let pushed_in = clock.start.elapsed();
    let users_per_s = n as f64 / pushed_in.as_secs_f64();
    let mut post: Vec<u64> = pushed.iter().map(|p| p.post_us).collect();
    let mut patch: Vec<u64> = pushed.iter().map(|p| p.patch_us).collect();
    post.sort_unstable();
    patch.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "pushed: {n} users (POST + group PATCH each) in {:.2} s = {users_per_s:.0} users/s; POST p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms; PATCH p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pushed_in.as_secs_f64(),
        ms(percentile(&post, 0.5)),
        ms(percentile(&post, 0.99)),
        ms(post.last().copied().unwrap_or(0)),
        ms(percentile(&patch, 0.5)),
        ms(percentile(&patch, 0.99)),
        ms(patch.last().copied().unwrap_or(0)),
    );
    result("scim_users_per_s", format!("{users_per_s:.0}"));
    result("scim_post_p50_ms", format!("{:.1}", ms(percentile(&post, 0.5))));
    result("scim_post_p99_ms", format!("{:.1}", ms(percentile(&post, 0.99))));
    result("scim_patch_p50_ms", format!("{:.1}", ms(percentile(&patch, 0.5))));
    result("scim_patch_p99_ms", format!("{:.1}", ms(percentile(&patch, 0.99))));
    scim_until_provisioned(run, &pushed, &clock, pushed_in, "scim").await;
}

/// `bench scim-bulk`: a first load over SCIM `/Bulk` (RFC 7644 section 3.7). `BENCH_SCIM_POSTS`
/// users (10,000) in Bulk requests of `BENCH_SCIM_BULK` (1,000, the server's `maxOperations`)
/// user POSTs each, sent by `BENCH_SCIM_CLIENTS` identity providers (1) one bulk at a time.
///
/// The membership: a bulk's 1,000 users and an operation adding them to the group would be
/// 1,001 operations, over `maxOperations`. So, as an identity provider that pushes users first
/// and then the memberships of the groups assigned to the app (Entra ID and Okta do), each
/// client, once a bulk is answered, adds its users to its group in one `PATCH /Groups/{id}`
/// (an `add` of `members` with 1,000 values: the ids read from the bulk's `location`s).
async fn scim_bulk_bench() {
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "sqlite".into());
    let n: usize = env_or("BENCH_SCIM_POSTS", 10_000);
    let per_bulk: usize = env_or("BENCH_SCIM_BULK", 1000).max(1);
    let clients: usize = env_or("BENCH_SCIM_CLIENTS", 1).max(1);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 16);
    let full = std::env::var("BENCH_SCIM_BODY").map_or(true, |v| v != "basic");
    let bulks = n.div_ceil(per_bulk);
    println!(
        "== scim-bulk: backend {backend}, {n} users in {bulks} Bulk requests of {per_bulk} POSTs, each followed by \
         one group PATCH adding its users; {clients} SCIM client(s), 1 request in flight each; body {}, \
         app max_concurrency {concurrency}",
        if full { "full (Entra, fully populated)" } else { "basic (Entra's first fields)" }
    );
    let (run, idps) = scim_setup(&backend, clients, concurrency).await;
    // The bodies are made before the clock starts.
    let requests: Vec<(Vec<String>, Value)> = (0..bulks)
        .map(|b| {
            let users: Vec<Value> =
                (b * per_bulk..((b + 1) * per_bulk).min(n)).map(|i| entra_user_body(i, full)).collect();
            let names = users.iter().map(|u| u["userName"].as_str().unwrap_or_default().to_lowercase()).collect();
            let operations: Vec<Value> = users
                .into_iter()
                .enumerate()
                .map(|(j, data)| json!({"method": "POST", "path": "/Users", "bulkId": format!("u{j}"), "data": data}))
                .collect();
            let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                "failOnErrors": 1, "Operations": operations});
            (names, body)
        })
        .collect();
    let size = requests.iter().map(|(_, b)| b.to_string().len()).max().unwrap_or(0);
    println!("  largest Bulk request: {:.2} MiB", size as f64 / (1024.0 * 1024.0));

    let scim = format!("{}/scim/v2", run.proc.url);
    let clock = Clock::start(&run);
    let mut tasks = tokio::task::JoinSet::new();
    // Bulk b goes to client b % clients.
    let mut shares: Vec<Vec<(Vec<String>, Value)>> = (0..clients).map(|_| Vec::new()).collect();
    for (b, r) in requests.into_iter().enumerate() {
        shares[b % clients].push(r);
    }
    for (Idp { client, token, role_id }, mine) in idps.into_iter().zip(shares) {
        let scim = scim.clone();
        tasks.spawn(async move {
            let mut pushed = Vec::new();
            let mut timings = Vec::new();
            for (names, body) in mine {
                let sent_at = micros_now();
                let t = Instant::now();
                let answer =
                    scim_send(client.post(format!("{scim}/Bulk")).bearer_auth(&token), &body, "POST /Bulk").await;
                let bulk_us = t.elapsed().as_micros() as u64;
                let results = answer["Operations"].as_array().expect("Operations in the bulk's answer");
                assert_eq!(results.len(), names.len(), "one answer per operation");
                let members: Vec<Value> = results
                    .iter()
                    .map(|r| {
                        assert_eq!(r["status"].as_str(), Some("201"), "bulk operation: {r}");
                        let location = r["location"].as_str().expect("location");
                        json!({"value": location.rsplit('/').next().unwrap_or_default()})
                    })
                    .collect();
                let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "Add", "path": "members", "value": members}]});
                let t = Instant::now();
                scim_send(
                    client.patch(format!("{scim}/Groups/{role_id}")).bearer_auth(&token),
                    &patch,
                    "PATCH /Groups",
                )
                .await;
                let patch_us = t.elapsed().as_micros() as u64;
                timings.push((bulk_us, patch_us));
                pushed.extend(names.into_iter().map(|user_name| Pushed {
                    user_name,
                    sent_at,
                    post_us: 0,
                    patch_us: 0,
                }));
            }
            (pushed, timings)
        });
    }
    let mut pushed = Vec::with_capacity(n);
    let (mut bulk, mut patch) = (Vec::new(), Vec::new());
    while let Some(p) = tasks.join_next().await {
        let (p, t) = p.expect("client task");
        pushed.extend(p);
        bulk.extend(t.iter().map(|(b, _)| *b));
        patch.extend(t.iter().map(|(_, p)| *p));
    }
    let pushed_in = clock.start.elapsed();
    let users_per_s = n as f64 / pushed_in.as_secs_f64();
    bulk.sort_unstable();
    patch.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "pushed: {n} users ({bulks} bulks + {bulks} group PATCHes) in {:.2} s = {users_per_s:.0} users/s; \
         Bulk request p50 {:.0} ms, max {:.0} ms; group PATCH ({per_bulk} members) p50 {:.0} ms, max {:.0} ms",
        pushed_in.as_secs_f64(),
        ms(percentile(&bulk, 0.5)),
        ms(bulk.last().copied().unwrap_or(0)),
        ms(percentile(&patch, 0.5)),
        ms(patch.last().copied().unwrap_or(0)),
    );
    result("scim_bulk_users_per_s", format!("{users_per_s:.0}"));
    result("scim_bulk_request_p50_ms", format!("{:.0}", ms(percentile(&bulk, 0.5))));
    result("scim_bulk_request_max_ms", format!("{:.0}", ms(bulk.last().copied().unwrap_or(0))));
    result("scim_bulk_patch_p50_ms", format!("{:.0}", ms(percentile(&patch, 0.5))));
    scim_until_provisioned(run, &pushed, &clock, pushed_in, "scim_bulk").await;
}

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "provision".into());
    match what.as_str() {
        "provision" => provision_bench().await,
        "plan" => plan_bench().await,
        "scim" => scim_inbound_bench().await,
        "scim-bulk" => scim_bulk_bench().await,
        other => {
            eprintln!("unknown benchmark {other:?}: use provision, plan, scim or scim-bulk");
            std::process::exit(2);
        }
    }
}
