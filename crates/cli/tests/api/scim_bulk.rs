//! SCIM `/Bulk` (RFC 7644 section 3.7) against the running service: operations on Users and
//! Groups with `bulkId` references (forward ones too, as in the RFC's section 3.7.2 example),
//! `failOnErrors`, circular references, the limits of section 3.7.4, the client's scope and
//! rate limit, and the deprovisioning guard seeing a bulk's deletions as one change.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::engine::World;
use crate::scim_server::{scim_error, urlencode, Scim};
use crate::support::{answer, Backend};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
const BULK_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

fn bulk(ops: Value) -> Value {
    json!({"schemas": [BULK_REQUEST], "Operations": ops})
}

fn user_op(bulk_id: &str, username: &str) -> Value {
    json!({"method": "POST", "path": "/Users", "bulkId": bulk_id,
        "data": {"schemas": [USER], "userName": username}})
}

/// The results of a bulk answer, by bulkId (or by position when an operation has none).
fn results(a: &crate::support::Answer) -> Vec<Value> {
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    assert_eq!(a.content_type, "application/scim+json");
    assert_eq!(a.body["schemas"], json!([BULK_RESPONSE]), "{a:#?}");
    a.body["Operations"].as_array().cloned().unwrap_or_default()
}

fn by_bulk_id<'a>(results: &'a [Value], id: &str) -> &'a Value {
    results.iter().find(|r| r["bulkId"] == id).unwrap_or_else(|| panic!("no result for {id}: {results:#?}"))
}

/// The id at the end of a result's location.
fn id_of(result: &Value) -> String {
    result["location"].as_str().and_then(|l| l.rsplit('/').next()).unwrap_or_default().to_owned()
}

async fn usernames(c: &Scim, filter: &str) -> Vec<String> {
    let a = c.get(&format!("/Users?filter={}", urlencode(filter))).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    a.body["Resources"].as_array().unwrap().iter().map(|r| r["userName"].as_str().unwrap().to_owned()).collect()
}

/// Every method, references forward and back (a group sent before its members, a manager
/// created after the user naming them), and a malformed operation answered on its own.
async fn a_bulk_writes_users_and_groups_with_references(backend: Backend) {
    let c = Scim::start(backend).await;
    let spc = c.get("/ServiceProviderConfig").await;
    assert_eq!(spc.body["bulk"], json!({"supported": true, "maxOperations": 1000, "maxPayloadSize": 4194304}));
    let old = c.create_user(json!({"schemas": [USER], "userName": "leaver"})).await;
    let old_id = old["id"].as_str().unwrap();
    let ops = json!([
        {"method": "POST", "path": "/Groups", "bulkId": "g",
         "data": {"schemas": [GROUP], "displayName": "Night shift",
                  "members": [{"type": "User", "value": "bulkId:ada"}, {"type": "User", "value": "bulkId:boss"}]}},
        {"method": "POST", "path": "/Users", "bulkId": "ada",
         "data": {"schemas": [USER, ENT], "userName": "ada", ENT: {"manager": {"value": "bulkId:boss"}}}},
        user_op("boss", "boss"),
        {"method": "PATCH", "path": "/Users/bulkId:ada",
         "data": {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": "Nurse"}]}},
        {"method": "GET", "path": "/Users", "bulkId": "wrong"},
        {"method": "PUT", "path": "/Users/bulkId:boss",
         "data": {"schemas": [USER], "userName": "boss", "displayName": "The Boss"}},
        {"method": "PATCH", "path": "/Users/bulkId:boss", "bulkId": "stale", "version": "W/\"999\"",
         "data": {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": "Never"}]}},
        {"method": "DELETE", "path": format!("/Users/{old_id}")},
    ]);
    let a = c.call(Method::POST, "/Bulk", Some(bulk(ops))).await;
    let r = results(&a);
    assert_eq!(r.len(), 8, "every operation is answered: {r:#?}");
    let (ada, boss, group) = (by_bulk_id(&r, "ada"), by_bulk_id(&r, "boss"), by_bulk_id(&r, "g"));
    for created in [ada, boss, group] {
        assert_eq!(created["status"], "201", "{created:#}");
        assert!(created["version"].as_str().is_some_and(|v| v.starts_with("W/")), "{created:#}");
    }
    assert!(ada["location"].as_str().unwrap().starts_with(&c.base()), "{ada:#}");
    // The group waited for its members: it is answered after both.
    let order: Vec<&str> = r.iter().filter_map(|x| x["bulkId"].as_str()).collect();
    assert!(order.iter().position(|b| *b == "g") > order.iter().position(|b| *b == "boss"), "{order:?}");
    let wrong = by_bulk_id(&r, "wrong");
    assert_eq!((&wrong["status"], &wrong["response"]["schemas"]), (&json!("400"), &json!([ERROR])), "{wrong:#}");
    let by_method = |m: &str| r.iter().find(|x| x["method"] == m).unwrap().clone();
    assert_eq!(by_method("PATCH")["status"], "200", "{r:#?}");
    // A version that is not the resource's: 412, in its own result.
    assert_eq!(by_bulk_id(&r, "stale")["status"], "412", "{r:#?}");
    assert_eq!(by_method("PUT")["status"], "200", "{r:#?}");
    assert_eq!(by_method("DELETE")["status"], "204", "{r:#?}");
    // What was written: the group's members, the manager, the patch, the replacement, the deletion.
    let (ada_id, boss_id) = (id_of(ada), id_of(boss));
    let g = c.get(&format!("/Groups/{}", id_of(group))).await;
    let mut members: Vec<&str> =
        g.body["members"].as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap()).collect();
    members.sort_unstable();
    let mut expected = vec![ada_id.as_str(), boss_id.as_str()];
    expected.sort_unstable();
    assert_eq!(members, expected);
    let ada_now = c.get(&format!("/Users/{ada_id}")).await.body;
    assert_eq!((&ada_now[ENT]["manager"]["value"], &ada_now["title"]), (&json!(boss_id), &json!("Nurse")));
    assert_eq!(c.get(&format!("/Users/{boss_id}")).await.body["displayName"], "The Boss");
    scim_error(&c.get(&format!("/Users/{old_id}")).await, 404, None);
    // Each operation went through the admin's audit log as its single request would.
    let audit = c.s.get("/api/v1/audit?limit=50").await;
    let actions: Vec<&str> =
        audit.body["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"user.delete") && actions.contains(&"role.create"), "{actions:?}");
}

/// `failOnErrors: 1` stops at the first error: what comes after is undone (and unanswered);
/// references in a circle are refused, and the rest proceeds.
async fn fail_on_errors_and_circles(backend: Backend) {
    let c = Scim::start(backend).await;
    let ops = json!([
        user_op("a", "first"),
        {"method": "POST", "path": "/Users", "bulkId": "b", "data": {"schemas": [USER], "displayName": "no name"}},
        user_op("c", "after"),
    ]);
    let body = json!({"schemas": [BULK_REQUEST], "failOnErrors": 1, "Operations": ops});
    let r = results(&c.call(Method::POST, "/Bulk", Some(body)).await);
    assert_eq!(r.len(), 2, "answered up to the first error: {r:#?}");
    assert_eq!((&r[0]["status"], &r[1]["status"]), (&json!("201"), &json!("400")));
    assert_eq!(r[1]["response"]["scimType"], "invalidValue", "{:#}", r[1]);
    assert!(r[1]["response"]["detail"].as_str().unwrap().contains("userName"), "{:#}", r[1]);
    assert_eq!(usernames(&c, "userName eq \"first\"").await, ["first"]);
    assert!(usernames(&c, "userName eq \"after\"").await.is_empty(), "the operation after the error was not done");

    // Without failOnErrors every operation is tried; a circle of managers cannot be resolved.
    let ops = json!([
        {"method": "POST", "path": "/Users", "bulkId": "x",
         "data": {"schemas": [USER, ENT], "userName": "x", ENT: {"manager": {"value": "bulkId:y"}}}},
        {"method": "POST", "path": "/Users", "bulkId": "y",
         "data": {"schemas": [USER, ENT], "userName": "y", ENT: {"manager": {"value": "bulkId:x"}}}},
        {"method": "POST", "path": "/Groups", "bulkId": "waits",
         "data": {"schemas": [GROUP], "displayName": "Waits", "members": [{"value": "bulkId:x"}]}},
        user_op("free", "free"),
        {"method": "POST", "path": "/Groups", "bulkId": "nobody",
         "data": {"schemas": [GROUP], "displayName": "Nobody", "members": [{"value": "bulkId:missing"}]}},
    ]);
    let r = results(&c.call(Method::POST, "/Bulk", Some(bulk(ops))).await);
    assert_eq!(r.len(), 5, "{r:#?}");
    assert_eq!(by_bulk_id(&r, "free")["status"], "201");
    for circular in ["x", "y", "waits"] {
        let x = by_bulk_id(&r, circular);
        assert_eq!(x["status"], "409", "{x:#}");
        assert!(x["response"]["detail"].as_str().unwrap().contains("circle"), "{x:#}");
    }
    let nobody = by_bulk_id(&r, "nobody");
    assert_eq!(nobody["status"], "400", "{nobody:#}");
    assert!(nobody["response"]["detail"].as_str().unwrap().contains("bulkId:missing"), "{nobody:#}");
    assert!(usernames(&c, "userName eq \"x\" or userName eq \"y\"").await.is_empty());
    let groups = c.get("/Groups").await;
    let names: Vec<&str> =
        groups.body["Resources"].as_array().unwrap().iter().map(|g| g["displayName"].as_str().unwrap()).collect();
    assert!(!names.contains(&"Waits") && !names.contains(&"Nobody"), "{names:?}");
}

/// Over 1,000 operations or 4 MiB the answer is 413 and nothing is done; a body over the
/// general 1 MiB limit is accepted on this route; a malformed request is refused whole.
async fn limits_of_a_bulk(backend: Backend) {
    let c = Scim::start(backend).await;
    let many: Vec<Value> = (0..1001).map(|i| user_op(&format!("u{i}"), &format!("many{i}"))).collect();
    scim_error(&c.call(Method::POST, "/Bulk", Some(bulk(json!(many)))).await, 413, None);
    assert!(usernames(&c, "userName sw \"many\"").await.is_empty(), "nothing of a refused request is done");
    // 4 MiB and more: refused. 2 MiB (over the general limit of 1 MiB): done. (The bodies are
    // padded with white space, which JSON allows.)
    let padded = |pad: usize| {
        let ops: Vec<Value> = (0..4).map(|i| user_op(&format!("p{i}"), &format!("padded{i}"))).collect();
        let text = bulk(json!(ops)).to_string();
        let body = format!("{}{}}}", &text[..text.len() - 1], " ".repeat(pad));
        let req = c.s.client.post(format!("{}/Bulk", c.base())).bearer_auth(&c.token);
        let req = req.header("content-type", "application/scim+json").body(body);
        async move { answer(req.send().await.unwrap()).await }
    };
    scim_error(&padded(4 * 1024 * 1024).await, 413, None);
    assert!(usernames(&c, "userName sw \"padded\"").await.is_empty());
    let r = results(&padded(2 * 1024 * 1024).await);
    assert!(r.iter().all(|x| x["status"] == "201"), "{r:#?}");
    assert_eq!(usernames(&c, "userName sw \"padded\"").await.len(), 4);
    // The request itself must be a bulk request.
    for bad in [
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": []}),
        json!({"schemas": [BULK_REQUEST]}),
        json!({"schemas": [BULK_REQUEST], "failOnErrors": 0, "Operations": []}),
        json!({"schemas": [BULK_REQUEST], "Operations": {"method": "POST"}}),
    ] {
        let a = c.call(Method::POST, "/Bulk", Some(bad.clone())).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:#?}");
        assert_eq!(a.body["schemas"], json!([ERROR]), "{a:#?}");
    }
    let empty = results(&c.call(Method::POST, "/Bulk", Some(bulk(json!([])))).await);
    assert!(empty.is_empty());
}

/// The client's scope applies to each operation, and its rate limit counts every operation.
async fn scope_and_rate_apply_to_each_operation(backend: Backend) {
    // A client with the default scope: the users and groups it creates.
    let c = Scim::start_scoped(backend, json!({})).await;
    let admins = c.s.post("/api/v1/users", json!({"username": "admins-own"})).await;
    let theirs = admins.body["id"].as_str().unwrap().to_owned();
    let ops = json!([
        {"method": "PATCH", "path": format!("/Users/{theirs}"),
         "data": {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": "Hacked"}]}},
        {"method": "DELETE", "path": format!("/Users/{theirs}")},
        user_op("mine", "mine"),
    ]);
    let r = results(&c.call(Method::POST, "/Bulk", Some(bulk(ops))).await);
    assert_eq!((&r[0]["status"], &r[1]["status"]), (&json!("404"), &json!("404")), "{r:#?}");
    assert_eq!(by_bulk_id(&r, "mine")["status"], "201");
    let still = c.s.get(&format!("/api/v1/users/{theirs}")).await;
    assert_eq!((still.status, &still.body["title"]), (StatusCode::OK, &Value::Null), "{still:#?}");

    // A read-only client cannot send a bulk at all.
    let ro = c.s.post("/api/v1/scim-clients", json!({"name": "Reader", "scope": {"read_only": true}})).await;
    let ro_token = ro.body["token"].as_str().unwrap();
    let req = c.s.client.post(c.s.url("/scim/v2/Bulk")).bearer_auth(ro_token);
    let a = answer(
        req.header("content-type", "application/scim+json")
            .body(bulk(json!([user_op("r", "r")])).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    scim_error(&a, 403, None);

    // 10 requests a minute: a bulk of 20 operations is refused whole, one of 5 goes through.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app =
        axum::Router::new().nest_service("/scim/v2", server::scim_server::router_with_limit(c.s.state.clone(), 10));
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let send = |ops: Vec<Value>| {
        let req = c.s.client.post(format!("http://{addr}/scim/v2/Bulk")).bearer_auth(&c.token);
        let req = req.header("content-type", "application/scim+json").body(bulk(json!(ops)).to_string());
        async move {
            let r = req.send().await.unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (retry, answer(r).await)
        }
    };
    let (retry, a) = send((0..20).map(|i| user_op(&format!("r{i}"), &format!("rated{i}"))).collect()).await;
    scim_error(&a, 429, None);
    assert!(retry, "a 429 says when to retry");
    assert!(usernames(&c, "userName sw \"rated\"").await.is_empty());
    let (_, a) = send((0..5).map(|i| user_op(&format!("r{i}"), &format!("rated{i}"))).collect()).await;
    assert_eq!(results(&a).len(), 5);
    let (_, a) = send((5..11).map(|i| user_op(&format!("r{i}"), &format!("rated{i}"))).collect()).await;
    scim_error(&a, 429, None);
    task.abort();
}

/// A bulk deleting 6 of the app's users, with the guard at 3: the engine plans the request in
/// one pass, so the guard holds all 6 (none goes through before the limit is seen).
async fn the_guard_sees_a_bulk_as_one_change(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})).await;
    let c = w.s.post("/api/v1/scim-clients", json!({"name": "HR", "scope": {"users": "all", "roles": "all"}})).await;
    let token = c.body["token"].as_str().unwrap().to_owned();
    let send = |ops: Value| {
        let req = w.s.client.post(w.s.url("/scim/v2/Bulk")).bearer_auth(&token);
        let req = req.header("content-type", "application/scim+json").body(bulk(ops).to_string());
        async move { answer(req.send().await.unwrap()).await }
    };
    // Six people, put into the role that grants the app, in one bulk.
    let mut ops: Vec<Value> = (0..6).map(|i| user_op(&format!("n{i}"), &format!("nurse{i}"))).collect();
    let members: Vec<Value> = (0..6).map(|i| json!({"value": format!("bulkId:n{i}")})).collect();
    ops.push(json!({"method": "PATCH", "path": format!("/Groups/{}", w.role),
        "data": {"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": members}]}}));
    let r = results(&send(json!(ops)).await);
    assert!(r.iter().all(|x| x["status"] == "201" || x["status"] == "200"), "{r:#?}");
    let ids: Vec<String> = r.iter().filter(|x| x["method"] == "POST").map(id_of).collect();
    for id in &ids {
        w.settled(id, "provisioned").await;
    }
    let guard =
        json!({"provisioning": {"deprovision_guard": {"max_count": 3, "max_percent": 100, "window_minutes": 60}}});
    let p = w.s.patch(&format!("/api/v1/apps/{}", w.app), guard).await;
    assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    let deletes: Vec<Value> =
        ids.iter().map(|id| json!({"method": "DELETE", "path": format!("/Users/{id}")})).collect();
    // Meanwhile the app is renamed, which has the planner read every pair of the app while the
    // bulk is written: the pairs of held changes still wait for the bulk's own pass.
    let rename = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let p = w.s.patch(&format!("/api/v1/apps/{}", w.app), json!({"name": "Wiki (renamed)"})).await;
        assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    };
    let (a, ()) = tokio::join!(send(json!(deletes)), rename);
    let r = results(&a);
    assert!(r.iter().all(|x| x["status"] == "204"), "{r:#?}");
    // All six held: the app still has six active accounts, and nothing is deleting.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let held = loop {
        let h = w.s.get(&format!("/api/v1/apps/{}/held", w.app)).await;
        let items = h.body["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 6 {
            break items;
        }
        if std::time::Instant::now() > deadline {
            let all = w.s.get(&format!("/api/v1/events?app={}&limit=100", w.app)).await;
            let seen: Vec<String> = all.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| format!("{} {} {}", e["action"], e["status"], e["cause"]["summary"]))
                .collect();
            panic!("timed out waiting for 6 held: {} held; events: {seen:#?}", items.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(held.len(), 6, "{held:#?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accounts = w.app_call(Method::GET, "/Users?count=100", None).await;
    let active = accounts["Resources"].as_array().unwrap().iter().filter(|u| u["active"] != false).count();
    assert_eq!(active, 6, "no deletion reached the app: {accounts:#}");
}

/// The planner itself, without a server: a pass planning the pairs of a change made before a
/// hold (an app renamed) leaves alone the pair of a change made during it (a user's new title),
/// although it reads that pair's state as it is now; the hold's own pass plans it.
async fn a_pass_leaves_the_pairs_of_held_changes(backend: Backend) {
    use directory::{Actor, App, AppInput, Role, RoleInput, User, UserInput, UserSource};
    let dir = tempfile::tempdir().unwrap();
    let (store, _db): (std::sync::Arc<dyn store::Store>, _) = match backend {
        Backend::Sqlite => {
            (std::sync::Arc::new(store::SqliteStore::open(&dir.path().join("p.db")).await.unwrap()), None)
        }
        Backend::Postgres => {
            let db = testkit::postgres::TestDatabase::create().await;
            let s = store::PostgresStore::connect(&db.url, store::PostgresOptions::default()).await.unwrap();
            (std::sync::Arc::new(s), Some(db))
        }
    };
    let keyring = std::sync::Arc::new(store::secrets::Keyring::load_or_create(&dir.path().join("k")).unwrap());
    let engine = engine::Engine::new(
        store.clone(),
        keyring,
        engine::EngineConfig::default(),
        engine::ConnectorRegistry::with_defaults(),
    );
    let actor = Actor::token("test");
    let now = directory::now();
    let input: AppInput = serde_json::from_value(json!({"name": "Wiki", "provisioning": {"enabled": true},
        "connection": {"base_url": "https://wiki.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}}}))
    .unwrap();
    let mut app = App::new(input.validate(None).unwrap().0, now);
    store.create_app(&app, "t", &actor).await.unwrap();
    let role = Role::new(RoleInput { name: "Staff".into(), description: None, pushable: false }, now);
    store.create_role(&role, &actor).await.unwrap();
    store.add_role_app(role.id, app.id, &actor).await.unwrap();
    let mut users = vec![];
    for name in ["ada", "bob"] {
        let u = User::new(
            UserInput { username: name.into(), title: Some("Clerk".into()), ..Default::default() },
            UserSource::Local,
            now,
        );
        store.create_user(&u, &actor).await.unwrap();
        store.add_role_user(role.id, u.id, &actor).await.unwrap();
        users.push(u);
    }
    while engine.plan_once().await.unwrap() > 0 {}
    let desired = |states: Vec<directory::PairState>| -> String {
        states[0].waiting.as_ref().and_then(|o| o.desired.clone()).unwrap_or_default().to_string()
    };
    assert!(desired(store.load_pairs(&[(users[0].id, app.id)]).await.unwrap()).contains("Clerk"));
    // The app is renamed (planned later), then a hold begins and Ada becomes a nurse.
    let version = app.version;
    app.name = "Wiki (renamed)".into();
    store.update_app(&app, None, version, &actor).await.unwrap();
    let hold = store.hold_changes(Duration::from_secs(300)).await.unwrap();
    let mut ada = store.get_user(users[0].id).await.unwrap().unwrap();
    let version = ada.version;
    ada.title = Some("Nurse".into());
    store.update_user(&ada, version, &actor).await.unwrap();
    // The rename's pass reads Ada's pair as it is now, but leaves it for the hold's pass.
    while engine.plan_once().await.unwrap() > 0 {}
    let pending = desired(store.load_pairs(&[(ada.id, app.id)]).await.unwrap());
    assert!(pending.contains("Clerk") && !pending.contains("Nurse"), "{pending}");
    store.release_changes(hold).await.unwrap();
    while engine.plan_once().await.unwrap() > 0 {}
    assert!(desired(store.load_pairs(&[(ada.id, app.id)]).await.unwrap()).contains("Nurse"));
}

crate::on_both_backends!(
    a_bulk_writes_users_and_groups_with_references,
    fail_on_errors_and_circles,
    limits_of_a_bulk,
    scope_and_rate_apply_to_each_operation,
    the_guard_sees_a_bulk_as_one_change,
    a_pass_leaves_the_pairs_of_held_changes,
);
