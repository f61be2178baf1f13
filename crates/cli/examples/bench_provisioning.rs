//! Benchmark: how fast the engine creates accounts in a real SCIM app, next to how fast the
//! same app accepts the same user bodies from a plain load generator at the same concurrency.
//!
//! `cargo run --release -p provisioner-cli --example bench_provisioning -- [USERS] [CONCURRENCY]`
//! (defaults 2000 and 8). Starts its own scim2-server instances (via `scripts/scim2-server.sh`),
//! and the engine in-process on a fresh embedded store. Prints figures; asserts nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark: a step that fails ends the run with its message"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use directory::{Actor, AppInput, RoleInput, UserInput, UserSource};
use serde_json::{json, Value};
use server::AppState;
use store::PageRequest;

const TOKEN: &str = "bench-token";

fn user_body(i: usize) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("bench{i:06}"),
        "externalId": format!("ext-{i}"), "name": {"givenName": "Bench", "familyName": format!("User {i}")},
        "emails": [{"value": format!("bench{i}@example.com"), "type": "work", "primary": true}], "active": true})
}

/// POSTs `n` user bodies with `concurrency` requests in flight; returns accounts per second.
async fn plain_load(base_url: &str, n: usize, concurrency: usize) -> f64 {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url) = (client.clone(), next.clone(), format!("{base_url}/Users"));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/scim+json")
                    .body(user_body(i).to_string())
                    .send()
                    .await
                    .expect("request");
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Creates `n` users in a role granting an app, enables provisioning and times until every
/// account is provisioned; returns accounts per second.
async fn engine_load(base_url: &str, n: usize, concurrency: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::SqliteStore::open(&dir.path().join("bench.db")).await.expect("store");
    let keyring = store::secrets::Keyring::load_or_create(&dir.path().join("secret.key")).expect("key");
    let config = engine::EngineConfig { reconcile_interval: None, ..Default::default() };
    let state = AppState::new(Arc::new(store), Arc::new(keyring), config);
    let svc = &state.service;
    let actor = Actor::cli();
    let app: AppInput = serde_json::from_value(json!({"name": "Bench", "connection": {"base_url": base_url,
        "auth": {"type": "bearer", "token": TOKEN}}, "provisioning": {"enabled": false, "max_concurrency": concurrency}}))
    .expect("app");
    let app = svc.create_app(&actor, app).await.expect("create app");
    let role = svc
        .create_role(&actor, RoleInput { name: "Everyone".into(), description: None, pushable: false })
        .await
        .expect("role");
    svc.add_role_app(&actor, role.id, app.id).await.expect("grant");
    for i in 0..n {
        let input = UserInput {
            username: format!("bench{i:06}"),
            email: Some(format!("bench{i}@example.com")),
            first_name: Some("Bench".into()),
            last_name: Some(format!("User {i}")),
            ..Default::default()
        };
        let u = svc.create_user(&actor, input, UserSource::Local).await.expect("user");
        svc.add_role_user(&actor, role.id, u.id).await.expect("member");
    }
    svc.engine().start().await.expect("engine");
    // Let the planner consume the directory writes before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    svc.test_connection(&actor, app.id).await.expect("connection");
    let start = Instant::now();
    svc.patch_app(&actor, app.id, json!({"provisioning": {"enabled": true}}).as_object().expect("obj"), None)
        .await
        .expect("enable");
    // Done when every user's account is provisioned.
    loop {
        let mut provisioned = 0;
        let mut page = PageRequest { limit: 500, cursor: None };
        loop {
            let p = svc
                .list_accounts(&store::AccountQuery { app: Some(app.id), user: None, page: page.clone() })
                .await
                .expect("accounts");
            provisioned += p.items.iter().filter(|a| a.status == directory::EventStatus::Provisioned).count();
            match p.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        if provisioned == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed();
    let accounts = svc
        .list_accounts(&store::AccountQuery {
            app: Some(app.id),
            user: None,
            page: PageRequest { limit: 500, cursor: None },
        })
        .await
        .expect("accounts");
    assert!(accounts.items.iter().all(|a| a.status == directory::EventStatus::Provisioned));
    svc.engine().stop();
    n as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(2000);
    let concurrency = args.get(1).copied().unwrap_or(8);
    println!("users: {n}, concurrency: {concurrency}, target: scim2-server (Python)");
    let plain = {
        let scim = testkit::Scim2Server::spawn(Some(TOKEN));
        plain_load(&scim.base_url, n, concurrency).await
    };
    println!("plain load generator: {plain:.0} accounts/s");
    let engine = {
        let scim = testkit::Scim2Server::spawn(Some(TOKEN));
        engine_load(&scim.base_url, n, concurrency).await
    };
    println!("engine:               {engine:.0} accounts/s");
    println!("ratio engine/plain:   {:.2}", engine / plain);
}
