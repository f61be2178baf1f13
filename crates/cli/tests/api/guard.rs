//! Blast radius against the real `scim2-server`: settings apply forward, dry runs count what
//! the real change does and change nothing, the deprovisioning guard holds every cause's mass
//! suspension or deletion (nothing reaches the app until allowed), and rejections stick.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use testkit::Slapd;

use crate::engine::World;
use crate::ldap::{create_source, openldap_source, sync};
use crate::support::Backend;

/// Every account in the app, read straight from it: (userName, active), by userName.
async fn app_accounts(w: &World) -> Vec<(String, bool)> {
    let mut out = std::collections::BTreeMap::new();
    let mut start = 1;
    loop {
        let page =
            w.app_call(Method::GET, &format!("/Users?startIndex={start}&count=1000&sortBy=userName"), None).await;
        let items = page["Resources"].as_array().cloned().unwrap_or_default();
        for u in &items {
            out.insert(u["userName"].as_str().unwrap_or("").to_owned(), u["active"] != false);
        }
        start += items.len();
        if items.is_empty() || start as u64 > page["totalResults"].as_u64().unwrap_or(0) {
            return out.into_iter().collect();
        }
    }
}

fn active(accounts: &[(String, bool)]) -> usize {
    accounts.iter().filter(|(_, a)| *a).count()
}

/// Events of the app with this status.
async fn events(w: &World, status: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let p = w.s.get(&format!("/api/v1/events?app={}&status={status}&limit=500{cursor}", w.app)).await;
        assert_eq!(p.status, StatusCode::OK, "{p:#?}");
        out.extend(p.body["items"].as_array().cloned().unwrap_or_default());
        match p.body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

/// Waits until the app has `n` held operations; answers them.
async fn held(w: &World, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = w.s.get(&format!("/api/v1/apps/{}/held", w.app)).await;
        assert_eq!(h.status, StatusCode::OK, "{h:#?}");
        let items = h.body["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            assert_eq!(items.len(), n, "more held than expected");
            return items;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {n} held; {} so far", items.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the app's accounts satisfy `done`.
async fn app_until(w: &World, what: &str, done: impl Fn(&[(String, bool)]) -> bool) -> Vec<(String, bool)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let a = app_accounts(w).await;
        if done(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {} accounts, {} active", a.len(), active(&a));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lets the planner and the workers run, then checks nothing is under way.
async fn quiet(w: &World) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for s in ["provisioning", "modifying", "deleting"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !events(w, s).await.is_empty() {
            assert!(Instant::now() < deadline, "events stay {s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn effect<'a>(d: &'a Value, app: &str) -> &'a Value {
    d["effects"].as_array().and_then(|e| e.iter().find(|e| e["app_id"] == app)).unwrap_or(&Value::Null)
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

async fn event_count(w: &World) -> usize {
    let mut total = 0;
    for s in directory::EventStatus::ALL {
        total += events(w, s.as_str()).await.len();
    }
    total
}

const RULES_SCOPE_OUT: &str = "Contractor";

fn contractor_rule() -> Value {
    json!([{"name": "No contractors", "match": "all",
        "conditions": [{"attribute": "title", "op": "equals", "value": RULES_SCOPE_OUT}],
        "actions": [{"do_not_provision": true}]}])
}

/// 200 users, 60 of them contractors, all in a role granting the app; each cause in turn.
async fn the_guard_holds_every_cause(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})).await;
    let app = w.app.clone();
    let mut users = Vec::new();
    for i in 0..200 {
        let title = if i < 60 { RULES_SCOPE_OUT } else { "Staff" };
        let u = w.user(&format!("u{i:03}"), title).await;
        w.grant(&u).await;
        users.push(u);
    }
    app_until(&w, "200 accounts", |a| a.len() == 200).await;
    quiet(&w).await;
    let guard = w.s.get(&format!("/api/v1/apps/{app}")).await.body["provisioning"]["deprovision_guard"].clone();
    assert_eq!(guard, json!({"max_count": 50, "max_percent": 10, "window_minutes": 60}), "on by default");

    // 1. A rule scoping out 30%: the dry run counts 60 deletions, all held, and changes nothing.
    let events_before = event_count(&w).await;
    let dry = w.s.call(Method::PUT, &format!("/api/v1/apps/{app}/rules?dry_run=true"), Some(contractor_rule())).await;
    assert_eq!(dry.status, StatusCode::OK, "{dry:#?}");
    let e = effect(&dry.body, &app);
    assert_eq!((n(e, "delete"), n(e, "held"), n(e, "create"), n(e, "suspend")), (60, 60, 0, 0), "{:#}", dry.body);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(w.s.get(&format!("/api/v1/apps/{app}/rules")).await.body, json!([]), "a dry run saves nothing");
    assert_eq!(event_count(&w).await, events_before, "a dry run queues nothing");
    assert_eq!(active(&app_accounts(&w).await), 200);
    let put = w.s.call(Method::PUT, &format!("/api/v1/apps/{app}/rules"), Some(contractor_rule())).await;
    assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    let h = held(&w, 60).await;
    println!("cause mapping (rule scoping out 60 of 200): dry run delete 60 held 60; real held {}", h.len());
    assert!(h.iter().all(|e| e["action"] == "delete" && e["status"] == "held"));
    let cause = &h[0]["cause"];
    assert_eq!(cause["kind"], "mapping", "{cause:#}");
    assert!(cause["rule"].as_str().unwrap_or("").contains("No contractors"), "{cause:#}");
    assert!(cause["summary"].as_str().unwrap().starts_with("deleted because"), "{cause:#}");
    assert!(cause["audit_id"].as_i64().is_some(), "{cause:#}");
    quiet(&w).await;
    assert_eq!(app_accounts(&w).await.len(), 200, "the app received nothing for held operations");
    // Bad input: an event that is not held; nothing changes.
    let provisioned = events(&w, "provisioned").await;
    let bad =
        w.s.post(&format!("/api/v1/apps/{app}/held/allow"), json!({"event_ids": [h[0]["id"], provisioned[0]["id"]]}))
            .await;
    assert_eq!(bad.status, StatusCode::CONFLICT, "{bad:#?}");
    assert!(bad.body["detail"].as_str().unwrap_or("").contains(provisioned[0]["id"].as_str().unwrap()), "{bad:#?}");
    assert_eq!(held(&w, 60).await.len(), 60);
    // Reject 30, allow 30.
    let (reject, allow): (Vec<&Value>, Vec<&Value>) =
        h.iter().partition(|e| e["username"].as_str().unwrap()[1..].parse::<usize>().unwrap() < 30);
    let ids = |v: &[&Value]| v.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    let r = w.s.post(&format!("/api/v1/apps/{app}/held/reject"), json!({"event_ids": ids(&reject)})).await;
    assert_eq!(r.status, StatusCode::OK, "{r:#?}");
    assert!(r.body["items"].as_array().unwrap().iter().all(|e| e["status"] == "rejected"));
    let a = w.s.post(&format!("/api/v1/apps/{app}/held/allow"), json!({"event_ids": ids(&allow)})).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    let accounts = app_until(&w, "30 deletions", |a| a.len() == 170).await;
    assert!(accounts.iter().any(|(u, _)| u == "u000"), "a rejected deletion leaves the account");
    assert!(!accounts.iter().any(|(u, _)| u == "u059"), "an allowed deletion is sent");
    quiet(&w).await;

    // 5. Rejections stick: an approval toggle, a rule change that does not touch them, two reconciles.
    let rejected_before = events(&w, "rejected").await.len();
    assert_eq!(rejected_before, 30);
    for approve in [true, false] {
        let p =
            w.s.patch(&format!("/api/v1/apps/{app}"), json!({"provisioning": {"approval": {"delete": approve}}})).await;
        assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    }
    let mut rules = contractor_rule();
    rules.as_array_mut().unwrap().push(json!({"name": "Nobody", "match": "all",
        "conditions": [{"attribute": "title", "op": "equals", "value": "Astronaut"}],
        "actions": [{"do_not_provision": true}]}));
    assert_eq!(w.s.call(Method::PUT, &format!("/api/v1/apps/{app}/rules"), Some(rules)).await.status, StatusCode::OK);
    for _ in 0..2 {
        let rec = w.s.post(&format!("/api/v1/apps/{app}/reconcile"), json!({})).await;
        assert!(rec.status.is_success(), "{rec:#?}");
    }
    quiet(&w).await;
    assert_eq!(app_accounts(&w).await.len(), 170, "rejected deletions stay rejected");
    assert!(events(&w, "pending").await.is_empty() && events(&w, "held").await.is_empty());
    let latest = w.s.get(&format!("/api/v1/events?user={}&app={app}&limit=1", users[0])).await;
    assert_eq!(latest.body["items"][0]["status"], "rejected", "{:#}", latest.body);

    // 2. 60 users suspended through the API: the window already holds 30 deletions, so all are held.
    for u in &users[60..120] {
        let p = w.s.patch(&format!("/api/v1/users/{u}"), json!({"status": "suspended"})).await;
        assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    }
    let h = held(&w, 60).await;
    println!("cause user_change (60 suspended through the API): held {}", h.len());
    assert!(h.iter().all(|e| e["action"] == "suspend" && e["cause"]["kind"] == "user_change"), "{:#}", h[0]);
    assert!(h[0]["cause"]["summary"].as_str().unwrap().contains("the user was suspended"), "{:#}", h[0]);
    quiet(&w).await;
    assert_eq!(active(&app_accounts(&w).await), 170, "nothing was sent for held suspensions");
    let a = w.s.post(&format!("/api/v1/apps/{app}/held/allow"), json!({})).await;
    assert_eq!(a.body["items"].as_array().unwrap().len(), 60, "{a:#?}");
    app_until(&w, "60 suspensions", |a| active(a) == 110).await;
    quiet(&w).await;

    // 3. A role losing the app: 140 deletions (80 active, 60 suspended), all held.
    let dry = w.s.delete(&format!("/api/v1/roles/{}/apps/{app}?dry_run=true", w.role)).await;
    assert_eq!(dry.status, StatusCode::OK, "{dry:#?}");
    let planned = n(effect(&dry.body, &app), "delete");
    assert_eq!(planned, n(effect(&dry.body, &app), "held"), "{:#}", dry.body);
    assert_eq!(w.s.delete(&format!("/api/v1/roles/{}/apps/{app}", w.role)).await.status, StatusCode::NO_CONTENT);
    let h = held(&w, planned as usize).await;
    println!("cause role_grant (role losing the app): dry run delete {planned}; real held {}", h.len());
    assert_eq!(h.len(), 140, "the 80 active and 60 suspended users (the 30 rejected contractors stay rejected)");
    assert!(h.iter().all(|e| e["cause"]["kind"] == "role_grant" && e["cause"]["role_id"] == w.role.as_str()));
    let r = w.s.post(&format!("/api/v1/apps/{app}/held/reject"), json!({})).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 140);
    quiet(&w).await;
    assert_eq!(app_accounts(&w).await.len(), 170, "rejected: the accounts stay");
    assert_eq!(w.s.put(&format!("/api/v1/roles/{}/apps/{app}", w.role)).await.status, StatusCode::NO_CONTENT);
    quiet(&w).await;

    // 4. The role deleted: what was rejected is planned again (the desired account changed back and forth).
    let dry = w.s.delete(&format!("/api/v1/roles/{}?dry_run=true", w.role)).await;
    assert_eq!(dry.status, StatusCode::OK, "{dry:#?}");
    assert_eq!(dry.body["roles"][0]["leaves"], 200, "{:#}", dry.body["roles"]);
    let planned = n(effect(&dry.body, &app), "delete");
    assert_eq!(w.s.delete(&format!("/api/v1/roles/{}", w.role)).await.status, StatusCode::NO_CONTENT);
    let h = held(&w, planned as usize).await;
    println!("cause membership (role deleted): dry run delete {planned}; real held {}", h.len());
    assert_eq!(h.len(), 140);
    assert!(h[0]["cause"]["summary"].as_str().unwrap().contains("was deleted"), "{:#}", h[0]);
    let cause_filter = w.s.get(&format!("/api/v1/events?app={app}&cause=membership&status=held")).await;
    assert_eq!(cause_filter.body["items"].as_array().unwrap().len(), 50, "a page of them: {cause_filter:#?}");
    assert_eq!(w.s.get("/api/v1/events?cause=weather").await.status, StatusCode::UNPROCESSABLE_ENTITY);
    w.s.post(&format!("/api/v1/apps/{app}/held/allow"), json!({})).await;
    app_until(&w, "140 deletions", |a| a.len() == 30).await;
}

/// `on_delete` none -> delete leaves existing accounts alone; `apply_to_existing` counts them
/// in its dry run and deletes exactly those.
async fn settings_apply_forward(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "none", "on_delete": "none"})).await;
    let app = w.app.clone();
    let mut users = Vec::new();
    for i in 0..6 {
        let u = w.user(&format!("f{i}"), "Staff").await;
        w.grant(&u).await;
        users.push(u);
    }
    app_until(&w, "6 accounts", |a| a.len() == 6).await;
    quiet(&w).await;
    // One leaves the role, one is suspended: both keep their accounts.
    w.s.delete(&format!("/api/v1/roles/{}/users/{}", w.role, users[0])).await;
    w.s.patch(&format!("/api/v1/users/{}", users[1]), json!({"status": "suspended"})).await;
    quiet(&w).await;
    let patch = json!({"provisioning": {"on_delete": "delete", "on_suspend": "delete"}});
    let dry = w.s.patch(&format!("/api/v1/apps/{app}?dry_run=true"), patch.clone()).await;
    assert_eq!(dry.status, StatusCode::OK, "{dry:#?}");
    assert!(effect(&dry.body, &app).is_null(), "forward only: nothing to do, {:#}", dry.body);
    let p = w.s.patch(&format!("/api/v1/apps/{app}"), patch.clone()).await;
    assert_eq!(p.status, StatusCode::OK);
    quiet(&w).await;
    assert_eq!(app_accounts(&w).await.len(), 6, "accounts already left are left alone");
    // A new leaver gets the new setting.
    w.s.delete(&format!("/api/v1/roles/{}/users/{}", w.role, users[2])).await;
    let accounts = app_until(&w, "the new leaver deleted", |a| a.len() == 5).await;
    assert!(!accounts.iter().any(|(u, _)| u == "f2"));
    let e = w.event_until(&users[2], |e| e["status"] == "deleted").await;
    assert_eq!(e["cause"]["kind"], "membership", "{e:#}");
    // Applied to existing accounts: the dry run counts exactly the two, the change deletes them.
    let dry = w.s.patch(&format!("/api/v1/apps/{app}?dry_run=true&apply_to_existing=true"), json!({})).await;
    assert_eq!(dry.status, StatusCode::OK, "{dry:#?}");
    let e = effect(&dry.body, &app);
    assert_eq!((n(e, "delete"), n(e, "suspend"), n(e, "held")), (2, 0, 0), "{:#}", dry.body);
    let p = w.s.patch(&format!("/api/v1/apps/{app}?apply_to_existing=true"), json!({})).await;
    assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    let accounts = app_until(&w, "the two deleted", |a| a.len() == 3).await;
    assert!(!accounts.iter().any(|(u, _)| u == "f0" || u == "f1"));
    let e = w.event_until(&users[0], |e| e["status"] == "deleted").await;
    assert_eq!(e["cause"]["kind"], "app_settings", "{e:#}");
    // The save and the application to existing accounts are two changes; the planner may
    // see either as the newest.
    let summary = e["cause"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("applied to existing accounts") || summary.contains("the app's settings changed"),
        "{e:#}"
    );
    // Bad guard input: refused, naming the field, nothing changes; null turns it off (audited).
    for bad in [json!({"max_count": -1}), json!({"max_count": "many"})] {
        let r = w.s.patch(&format!("/api/v1/apps/{app}"), json!({"provisioning": {"deprovision_guard": bad}})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:#?}");
        assert!(r.body.to_string().contains("deprovision_guard.max_count"), "{r:#?}");
    }
    let off = w.s.patch(&format!("/api/v1/apps/{app}"), json!({"provisioning": {"deprovision_guard": null}})).await;
    assert_eq!(off.status, StatusCode::OK);
    assert!(off.body["provisioning"]["deprovision_guard"].is_null(), "{:#}", off.body);
    let audit = w.s.get(&format!("/api/v1/audit?target_id={app}")).await;
    assert!(audit.body["items"][0]["after"]["provisioning"]["deprovision_guard"].is_null(), "{:#}", audit.body);
    // A rejected pending create is not created by turning approval off; requeue brings it back.
    w.s.patch(&format!("/api/v1/apps/{app}"), json!({"provisioning": {"approval": {"create": true}}})).await;
    let late = w.user("late", "Staff").await;
    w.grant(&late).await;
    let pending = w.event_until(&late, |e| e["status"] == "pending").await;
    let r = w.s.post(&format!("/api/v1/events/{}/reject", pending["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    w.s.patch(&format!("/api/v1/apps/{app}"), json!({"provisioning": {"approval": {"create": false}}})).await;
    quiet(&w).await;
    assert!(w.in_app("late").await.is_empty(), "the rejection sticks");
    let again = w.s.post(&format!("/api/v1/events/{}/requeue", pending["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(again.status, StatusCode::OK, "{again:#?}");
    w.event_until(&late, |e| e["status"] == "provisioned").await;
    assert_eq!(w.in_app("late").await.len(), 1);
    let twice = w.s.post(&format!("/api/v1/events/{}/requeue", pending["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(twice.status, StatusCode::OK, "the old event is still the rejected one");
}

/// The inbound SCIM server deleting 30% of 200 users: held, nothing sent; allow sends, reject
/// leaves the accounts.
async fn the_guard_holds_deletions_pushed_over_scim(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})).await;
    let app = w.app.clone();
    let mut users = Vec::new();
    for i in 0..200 {
        let u = w.user(&format!("p{i:03}"), "Staff").await;
        w.grant(&u).await;
        users.push(u);
    }
    app_until(&w, "200 accounts", |a| a.len() == 200).await;
    quiet(&w).await;
    let c =
        w.s.post("/api/v1/scim-clients", json!({"name": "Entra ID", "scope": {"users": "all", "roles": "all"}})).await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:#?}");
    let token = c.body["token"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    for u in &users[..60] {
        let r = http.delete(w.s.url(&format!("/scim/v2/Users/{u}"))).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{r:?}");
    }
    // Each SCIM request is a change of its own: the window lets through at most 10% of the
    // 200 managed accounts (20); every later one is held.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (h, sent) = loop {
        quiet(&w).await;
        let h = events(&w, "held").await;
        let sent = events(&w, "deleted").await.len();
        if h.len() + sent == 60 {
            break (h, sent);
        }
        assert!(Instant::now() < deadline, "{} held, {sent} deleted", h.len());
    };
    println!("cause scim_push (60 of 200 deleted over SCIM, one request each): sent {sent}, held {}", h.len());
    assert!(sent <= 20 && h.len() >= 40, "sent {sent}, held {}", h.len());
    assert!(h.iter().all(|e| e["action"] == "delete" && e["cause"]["kind"] == "scim_push"), "{:#}", h[0]);
    assert!(h[0]["cause"]["summary"].as_str().unwrap().contains("SCIM client Entra ID"), "{:#}", h[0]);
    assert_eq!(app_accounts(&w).await.len(), 200 - sent, "nothing sent for held deletions");
    let ids: Vec<Value> = h[..20].iter().map(|e| e["id"].clone()).collect();
    let r = w.s.post(&format!("/api/v1/apps/{app}/held/reject"), json!({"event_ids": ids})).await;
    assert_eq!(r.status, StatusCode::OK, "{r:#?}");
    let a = w.s.post(&format!("/api/v1/apps/{app}/held/allow"), json!({})).await;
    assert_eq!(a.body["items"].as_array().unwrap().len(), h.len() - 20, "{a:#?}");
    app_until(&w, "the allowed deletions", |a| a.len() == 160).await;
    assert_eq!(events(&w, "rejected").await.len(), 20);
}

/// Reconcile as a cause: accounts carrying our users' ids, found in the app by a reconcile,
/// whose users should have none (they are in no role granting it), are deletions over the
/// limits: held with cause `reconcile`; reject sticks through the next reconcile. And a
/// parameter change's updates name the parameter.
async fn the_guard_holds_what_a_reconcile_finds(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})).await;
    let app = w.app.clone();
    for i in 0..20 {
        let u = w.user(&format!("g{i:02}"), "Staff").await;
        w.grant(&u).await;
    }
    app_until(&w, "20 accounts", |a| a.len() == 20).await;
    quiet(&w).await;

    // A parameter change: every update names the parameter.
    let mut params: Vec<Value> =
        serde_json::from_value(w.s.get(&format!("/api/v1/apps/{app}/parameters")).await.body).unwrap();
    for p in &mut params {
        if p["app_attribute"] == "title" {
            p["source"] = json!({"constant": "Employee"});
        }
    }
    let put = w.s.call(Method::PUT, &format!("/api/v1/apps/{app}/parameters"), Some(json!(params))).await;
    assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let updates = loop {
        quiet(&w).await;
        let u: Vec<Value> = events(&w, "provisioned").await.into_iter().filter(|e| e["action"] == "update").collect();
        if u.len() == 20 {
            break u;
        }
        assert!(Instant::now() < deadline, "{} updates", u.len());
    };
    let cause = &updates[0]["cause"];
    assert_eq!((cause["kind"].as_str(), cause["parameter"].as_str()), (Some("mapping"), Some("title")), "{cause:#}");
    assert!(cause["summary"].as_str().unwrap().contains("parameter title changed"), "{cause:#}");
    assert!(updates.iter().all(|e| e["cause"]["parameter"] == "title"));
    println!("cause mapping (a parameter changed for 20 accounts): 20 updates, each naming parameter title");

    // 30 accounts made in the app directly with our users' ids, for users in no role.
    for i in 0..30 {
        let name = format!("r{i:02}");
        let u = w.user(&name, "Staff").await;
        w.app_call(
            Method::POST,
            "/Users",
            Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
                "externalId": u, "active": true})),
        )
        .await;
    }
    quiet(&w).await;
    assert_eq!(app_accounts(&w).await.len(), 50);
    let rec = w.s.post(&format!("/api/v1/apps/{app}/reconcile"), json!({})).await;
    assert_eq!(rec.status, StatusCode::OK, "{rec:#?}");
    assert_eq!((rec.body["adopted"].as_u64(), rec.body["queued"].as_u64()), (Some(30), Some(30)), "{:#}", rec.body);
    let h = held(&w, 30).await;
    assert!(h.iter().all(|e| e["action"] == "delete" && e["cause"]["kind"] == "reconcile"), "{:#}", h[0]);
    assert!(h[0]["cause"]["summary"].as_str().unwrap().contains("reconciliation"), "{:#}", h[0]);
    quiet(&w).await;
    assert_eq!(app_accounts(&w).await.len(), 50, "nothing sent for held deletions");
    let (reject, allow): (Vec<&Value>, Vec<&Value>) =
        h.iter().partition(|e| e["username"].as_str().unwrap()[1..].parse::<usize>().unwrap() < 10);
    let ids = |v: &[&Value]| v.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    let r = w.s.post(&format!("/api/v1/apps/{app}/held/reject"), json!({"event_ids": ids(&reject)})).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 10, "{r:#?}");
    let a = w.s.post(&format!("/api/v1/apps/{app}/held/allow"), json!({"event_ids": ids(&allow)})).await;
    assert_eq!(a.body["items"].as_array().unwrap().len(), 20, "{a:#?}");
    let accounts = app_until(&w, "20 deletions", |a| a.len() == 30).await;
    assert!(accounts.iter().any(|(u, _)| u == "r00") && !accounts.iter().any(|(u, _)| u == "r29"));
    println!("cause reconcile (30 found accounts of users without the app, 20 managed): held 30, rejected 10, allowed 20 (sent)");
    // The next reconcile queues nothing again: the rejections stick.
    let rec = w.s.post(&format!("/api/v1/apps/{app}/reconcile"), json!({})).await;
    assert_eq!(rec.body["queued"], 0, "{:#}", rec.body);
    quiet(&w).await;
    assert!(events(&w, "held").await.is_empty());
    assert_eq!(events(&w, "rejected").await.len(), 10);
    assert_eq!(app_accounts(&w).await.len(), 30);

    // A user's change that puts them out of a rule's scope: the cause names the rule. The 20
    // deletions allowed within the window keep the app over its limits: held too.
    let rules = json!([{"name": "No interns", "match": "all",
        "conditions": [{"attribute": "title", "op": "equals", "value": "Intern"}],
        "actions": [{"do_not_provision": true}]}]);
    assert_eq!(w.s.call(Method::PUT, &format!("/api/v1/apps/{app}/rules"), Some(rules)).await.status, StatusCode::OK);
    // Planned first (it changes no one), so that the user's change is the newest the planner knows.
    quiet(&w).await;
    let g05 = updates.iter().find(|e| e["username"] == "g05").unwrap()["user_id"].as_str().unwrap().to_owned();
    assert_eq!(w.s.patch(&format!("/api/v1/users/{g05}"), json!({"title": "Intern"})).await.status, StatusCode::OK);
    let h = held(&w, 1).await;
    let cause = &h[0]["cause"];
    assert_eq!((h[0]["action"].as_str(), cause["kind"].as_str()), (Some("delete"), Some("user_change")), "{cause:#}");
    assert_eq!(cause["rule"], "No interns", "{cause:#}");
    println!("cause user_change scoped out by a rule (1 deletion, window already holding 20): held 1, rule named");
}

/// A directory source disabling 30% of its 100 people, its own import guard set at 50%: the
/// app's guard holds the sync's suspensions, nothing reaches the app; allow sends, reject
/// leaves the accounts. Dry runs of the source's writes and of the sync change nothing and
/// count what the real sync does.
async fn the_guard_holds_a_directory_sync(backend: Backend) {
    let slapd = Slapd::start();
    let mut ldif = String::new();
    let mut members = String::new();
    for i in 0..100 {
        let uid = format!("d{i:03}");
        ldif.push_str(&Slapd::person_ldif(&uid, "Dir", &format!("Person{i}"), &[("title", "Clerk")]));
        members.push_str(&format!("member: {}\n", Slapd::person_dn(&uid)));
    }
    ldif.push_str(&format!("dn: cn=staff,{}\nobjectClass: groupOfNames\ncn: staff\n{members}\n", Slapd::GROUPS));
    slapd.add(&ldif);
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})).await;
    let app = w.app.clone();
    let body = openldap_source(
        &slapd,
        json!({"guard_percent": 50, "groups": [{"group_dn": format!("cn=staff,{}", Slapd::GROUPS), "role_id": w.role}]}),
    );

    // Adding the source, dry: its first sync would create 100 people and 100 accounts.
    let dry = w.s.post("/api/v1/sources?dry_run=true", body.clone()).await;
    assert_eq!(dry.status, StatusCode::OK, "{dry:#?}");
    assert_eq!(dry.body["sync"]["counts"]["created"], 100, "{:#}", dry.body["sync"]);
    assert_eq!(n(effect(&dry.body, &app), "create"), 100, "{:#}", dry.body);
    assert_eq!(dry.body["roles"][0]["joins"], 100, "{:#}", dry.body["roles"]);
    assert_eq!(w.s.get("/api/v1/sources").await.body["items"], json!([]), "a dry run saves nothing");
    assert_eq!(w.s.get("/api/v1/users").await.body["items"], json!([]));
    let source = create_source(&w.s, body.clone()).await;
    // Validated as usual: a second source of the same name is refused, dry or not.
    let again = w.s.post("/api/v1/sources?dry_run=true", body).await;
    again.problem_field(409, "name");
    let done = sync(&w.s, &source, "full").await;
    assert_eq!((done["state"].as_str(), done["counts"]["created"].as_u64()), (Some("succeeded"), Some(100)));
    app_until(&w, "100 accounts", |a| a.len() == 100 && active(a) == 100).await;
    quiet(&w).await;

    // 30 disabled in the directory.
    let mut disable = String::new();
    for i in 70..100 {
        disable.push_str(&format!(
            "dn: {}\nchangetype: modify\nreplace: employeeType\nemployeeType: disabled\n\n",
            Slapd::person_dn(&format!("d{i:03}"))
        ));
    }
    slapd.modify(&disable);
    let events_before = event_count(&w).await;
    // The sync, dry: 30 suspensions, all of them over the app's guard.
    let dry = w.s.post(&format!("/api/v1/sources/{source}/sync?dry_run=true"), json!({})).await;
    assert_eq!(dry.status, StatusCode::OK, "{dry:#?}");
    let e = effect(&dry.body, &app);
    assert_eq!((n(e, "suspend"), n(e, "held"), n(e, "delete"), n(e, "create")), (30, 30, 0, 0), "{:#}", dry.body);
    assert_eq!(dry.body["sync"]["counts"]["suspended"], 30, "{:#}", dry.body["sync"]);
    assert_eq!(dry.body["sync"]["awaiting_confirmation"], false);
    // A PATCH lowering the source's own guard, dry: that sync would stop for confirmation.
    let dry_patch = w.s.patch(&format!("/api/v1/sources/{source}?dry_run=true"), json!({"guard_percent": 20})).await;
    assert_eq!(dry_patch.status, StatusCode::OK, "{dry_patch:#?}");
    assert_eq!(dry_patch.body["sync"]["awaiting_confirmation"], true, "{:#}", dry_patch.body);
    assert_eq!(dry_patch.body["sync"]["pending_suspensions"], 30);
    assert!(effect(&dry_patch.body, &app).is_null(), "stopped: nothing reaches the app, {:#}", dry_patch.body);
    // Deleting the source, dry: its users stay, so nothing changes in the app.
    let dry_delete = w.s.delete(&format!("/api/v1/sources/{source}?dry_run=true")).await;
    assert_eq!(dry_delete.status, StatusCode::OK, "{dry_delete:#?}");
    assert_eq!(dry_delete.body, json!({"effects": [], "roles": []}));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = w.s.get(&format!("/api/v1/sources/{source}")).await;
    assert_eq!((s.status, s.body["guard_percent"].as_u64()), (StatusCode::OK, Some(50)), "dry runs save nothing");
    assert_eq!(w.s.get(&format!("/api/v1/sources/{source}/syncs")).await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(w.s.get("/api/v1/users?status=suspended").await.body["items"], json!([]));
    assert_eq!(event_count(&w).await, events_before, "a dry run queues nothing");
    assert_eq!(active(&app_accounts(&w).await), 100);

    // The real sync: the source's guard (50%) lets it through; the app's guard holds all 30.
    let done = sync(&w.s, &source, "full").await;
    assert_eq!((done["state"].as_str(), done["counts"]["suspended"].as_u64()), (Some("succeeded"), Some(30)));
    let h = held(&w, 30).await;
    assert!(h.iter().all(|e| e["action"] == "suspend" && e["cause"]["kind"] == "source_sync"), "{:#}", h[0]);
    assert!(h[0]["cause"]["summary"].as_str().unwrap().contains("directory source Corp LDAP"), "{:#}", h[0]);
    quiet(&w).await;
    assert_eq!(active(&app_accounts(&w).await), 100, "nothing sent for held suspensions");
    let (reject, allow): (Vec<&Value>, Vec<&Value>) =
        h.iter().partition(|e| e["username"].as_str().unwrap()[1..].parse::<usize>().unwrap() < 85);
    let ids = |v: &[&Value]| v.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    let r = w.s.post(&format!("/api/v1/apps/{app}/held/reject"), json!({"event_ids": ids(&reject)})).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 15, "{r:#?}");
    let a = w.s.post(&format!("/api/v1/apps/{app}/held/allow"), json!({"event_ids": ids(&allow)})).await;
    assert_eq!(a.body["items"].as_array().unwrap().len(), 15, "{a:#?}");
    let accounts = app_until(&w, "15 suspensions", |a| active(a) == 85).await;
    assert!(accounts.iter().any(|(u, on)| u == "d070" && *on), "a rejected suspension leaves the account active");
    assert!(accounts.iter().any(|(u, on)| u == "d099" && !*on), "an allowed suspension is sent");
    quiet(&w).await;
    assert_eq!(events(&w, "rejected").await.len(), 15);
    println!(
        "cause source_sync (30 of 100 disabled in slapd, source guard 50%): dry run suspend 30 held 30; \
         real held 30, rejected 15, allowed 15 (sent)"
    );
}

on_both_backends!(
    the_guard_holds_every_cause,
    settings_apply_forward,
    the_guard_holds_deletions_pushed_over_scim,
    the_guard_holds_what_a_reconcile_finds,
    the_guard_holds_a_directory_sync
);
