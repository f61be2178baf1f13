//! The provisioning engine end to end: the API, the engine and the real `scim2-server`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::Scim2Server;

use crate::support::{Backend, TestServer};

const APP_TOKEN: &str = "scim-app-token-7f3a";

/// The service plus a real SCIM app wired to it: an app, a role granting it.
pub struct World {
    pub http_token: &'static str,
    pub s: TestServer,
    pub scim: Scim2Server,
    pub app: String,
    pub role: String,
    http: reqwest::Client,
}

impl World {
    pub async fn new_on(backend: Backend, provisioning: Value) -> Self {
        let scim = Scim2Server::spawn(Some(APP_TOKEN));
        let s = TestServer::start_on(backend).await;
        let app = s
            .post(
                "/api/v1/apps",
                json!({"name": "Wiki", "connection": {"base_url": scim.base_url,
                "auth": {"type": "bearer", "token": APP_TOKEN}}, "provisioning": provisioning}),
            )
            .await;
        assert_eq!(app.status, StatusCode::CREATED, "{app:#?}");
        let app = app.body["id"].as_str().unwrap().to_owned();
        let test = s.post(&format!("/api/v1/apps/{app}/connection/test"), json!({})).await;
        assert_eq!(test.status, StatusCode::OK, "{test:#?}");
        assert_eq!(test.body["capabilities"]["patch"], true);
        let role = s.post("/api/v1/roles", json!({"name": "Staff"})).await.body["id"].as_str().unwrap().to_owned();
        assert_eq!(s.put(&format!("/api/v1/roles/{role}/apps/{app}")).await.status, StatusCode::NO_CONTENT);
        Self { http_token: APP_TOKEN, s, scim, app, role, http: reqwest::Client::new() }
    }

    pub async fn user(&self, username: &str, title: &str) -> String {
        let u = self
            .s
            .post(
                "/api/v1/users",
                json!({"username": username, "email": format!("{username}@example.com"),
                "first_name": "Test", "last_name": username, "title": title}),
            )
            .await;
        assert_eq!(u.status, StatusCode::CREATED, "{u:#?}");
        u.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn grant(&self, user: &str) {
        assert_eq!(
            self.s.put(&format!("/api/v1/roles/{}/users/{user}", self.role)).await.status,
            StatusCode::NO_CONTENT
        );
    }

    /// The newest event of the user in the app once it satisfies `done`.
    pub async fn event_until(&self, user: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let e = self.s.get(&format!("/api/v1/events?user={user}&app={}&limit=1", self.app)).await;
            let latest = e.body["items"][0].clone();
            if done(&latest) {
                return latest;
            }
            assert!(Instant::now() < deadline, "timed out; latest event: {latest:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn settled(&self, user: &str, status: &str) -> Value {
        let e = self
            .event_until(user, |e| {
                !e.is_null() && !["provisioning", "modifying", "deleting"].contains(&e["status"].as_str().unwrap_or(""))
            })
            .await;
        assert_eq!(e["status"], status, "{e:#}");
        e
    }

    /// The app's accounts with this userName, read straight from the app.
    pub async fn in_app(&self, username: &str) -> Vec<Value> {
        let filter = format!("userName eq \"{username}\"");
        let r = self
            .http
            .get(format!("{}/Users", self.scim.base_url))
            .bearer_auth(APP_TOKEN)
            .query(&[("filter", filter)])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{r:?}");
        let body: Value = r.json().await.unwrap();
        body["Resources"].as_array().cloned().unwrap_or_default()
    }

    pub async fn app_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.scim.base_url)).bearer_auth(APP_TOKEN);
        if let Some(b) = body {
            req = req.header("content-type", "application/scim+json").body(b.to_string());
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{r:?}");
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn account(&self, user: &str) -> Value {
        let a = self.s.get(&format!("/api/v1/users/{user}/accounts")).await;
        a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app_id"] == self.app.as_str())
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn settings(on_suspend: &str, on_delete: &str) -> Value {
    json!({"enabled": true, "on_suspend": on_suspend, "on_delete": on_delete})
}

async fn role_grant_creates_the_account_and_changes_update_it(backend: Backend) {
    let w = World::new_on(backend, settings("suspend", "delete")).await;
    let u = w.user("ada", "Engineer").await;
    w.grant(&u).await;
    let created = w.settled(&u, "provisioned").await;
    assert_eq!(created["action"], "create");
    let accounts = w.in_app("ada").await;
    assert_eq!(accounts.len(), 1);
    let acc = &accounts[0];
    assert_eq!(
        (acc["externalId"].as_str(), acc["title"].as_str(), acc["active"].as_bool()),
        (Some(u.as_str()), Some("Engineer"), Some(true))
    );
    assert_eq!(acc["emails"][0]["value"], "ada@example.com");
    let record = w.account(&u).await;
    assert_eq!((record["ownership"].as_str(), record["status"].as_str()), (Some("created"), Some("provisioned")));
    assert_eq!(record["remote_id"], acc["id"]);

    w.s.patch(&format!("/api/v1/users/{u}"), json!({"title": "CTO"})).await;
    let updated = w.event_until(&u, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    assert_eq!(updated["attempts"], 1);
    assert_eq!(w.in_app("ada").await[0]["title"], "CTO");
    // The modifying step is visible in the event log for the update.
    let events = w.s.get(&format!("/api/v1/events?user={u}")).await.body;
    let actions: Vec<&str> =
        events["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["update", "create"], "one event per real change, newest first");
    // A write that changes nothing the app sees queues nothing.
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"phone": "+1 555 0100"})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(w.s.get(&format!("/api/v1/events?user={u}")).await.body["items"].as_array().unwrap().len(), 2);
}

async fn suspension_follows_on_suspend_and_reactivation_restores(backend: Backend) {
    let w = World::new_on(backend, settings("suspend", "delete")).await;
    let u = w.user("grace", "Admiral").await;
    w.grant(&u).await;
    w.settled(&u, "provisioned").await;
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"status": "suspended"})).await;
    let e = w.event_until(&u, |e| e["action"] == "suspend" && e["status"] == "suspended").await;
    assert_eq!(e["action"], "suspend");
    assert_eq!(w.in_app("grace").await[0]["active"], false);
    assert_eq!(w.account(&u).await["status"], "suspended");
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"status": "active"})).await;
    w.event_until(&u, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    assert_eq!(w.in_app("grace").await[0]["active"], true);

    // With on_suspend = delete the account goes away.
    w.s.patch(&format!("/api/v1/apps/{}", w.app), json!({"provisioning": {"on_suspend": "delete"}})).await;
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"status": "suspended"})).await;
    w.event_until(&u, |e| e["action"] == "delete" && e["status"] == "deleted").await;
    assert!(w.in_app("grace").await.is_empty());
    assert_eq!(w.account(&u).await["remote_id"], Value::Null);
}

async fn losing_the_role_follows_on_delete(backend: Backend) {
    let w = World::new_on(backend, settings("suspend", "delete")).await;
    let keep = w.user("keeper", "x").await;
    let gone = w.user("leaver", "x").await;
    for u in [&keep, &gone] {
        w.grant(u).await;
        w.settled(u, "provisioned").await;
    }
    w.s.delete(&format!("/api/v1/roles/{}/users/{gone}", w.role)).await;
    w.event_until(&gone, |e| e["action"] == "delete" && e["status"] == "deleted").await;
    assert!(w.in_app("leaver").await.is_empty());
    // on_delete = none: the account stays as it is.
    w.s.patch(&format!("/api/v1/apps/{}", w.app), json!({"provisioning": {"on_delete": "none"}})).await;
    w.s.delete(&format!("/api/v1/roles/{}/users/{keep}", w.role)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(w.in_app("keeper").await.len(), 1);
    assert_eq!(w.s.get(&format!("/api/v1/events?user={keep}")).await.body["items"].as_array().unwrap().len(), 1);
    // on_delete = suspend, on a deleted user.
    w.s.patch(&format!("/api/v1/apps/{}", w.app), json!({"provisioning": {"on_delete": "suspend"}})).await;
    w.s.delete(&format!("/api/v1/users/{keep}")).await;
    w.event_until(&keep, |e| e["action"] == "suspend" && e["status"] == "suspended").await;
    assert_eq!(w.in_app("keeper").await[0]["active"], false);
}

async fn an_account_made_in_the_app_is_never_touched_until_rematched(backend: Backend) {
    let w = World::new_on(backend, settings("suspend", "delete")).await;
    let theirs = w
        .app_call(
            reqwest::Method::POST,
            "/Users",
            Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "margaret", "title": "Made by hand"})),
        )
        .await;
    let u = w.user("margaret", "Director").await;
    w.grant(&u).await;
    let e = w.settled(&u, "unknown").await;
    assert!(e["reason"].as_str().unwrap().contains("did not create"), "{e:#}");
    assert!(e["recommended_action"].as_str().unwrap().contains("Rematch"));
    let untouched = w.in_app("margaret").await;
    assert_eq!(
        untouched,
        vec![w.app_call(reqwest::Method::GET, &format!("/Users/{}", theirs["id"].as_str().unwrap()), None).await]
    );
    assert_eq!(untouched[0]["title"], "Made by hand");
    assert_eq!(untouched[0]["meta"]["version"], theirs["meta"]["version"], "not modified");
    assert_eq!(w.account(&u).await["ownership"], "foreign");
    // Changes and removal do not touch it either.
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"title": "VP"})).await;
    w.s.delete(&format!("/api/v1/roles/{}/users/{u}", w.role)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(w.in_app("margaret").await[0]["meta"]["version"], theirs["meta"]["version"]);
    // Rematch login links it; from then on the engine manages it.
    w.grant(&u).await;
    let bad =
        w.s.post(&format!("/api/v1/apps/{}/accounts/{u}/rematch", w.app), json!({"remote_id": "no-such-id"})).await;
    bad.problem_field(422, "remote_id");
    let linked =
        w.s.post(&format!("/api/v1/apps/{}/accounts/{u}/rematch", w.app), json!({"remote_id": theirs["id"]})).await;
    assert_eq!(linked.status, StatusCode::OK, "{linked:#?}");
    assert_eq!(linked.body["ownership"], "linked");
    w.event_until(&u, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    let now = w.in_app("margaret").await;
    assert_eq!(now.len(), 1);
    assert_eq!((now[0]["title"].as_str(), now[0]["externalId"].as_str()), (Some("VP"), Some(u.as_str())));
}

/// Many new accounts at once (an app's first provisioning): the engine looks their userNames up
/// together, and still leaves the accounts someone else made alone while it creates the rest.
async fn a_batch_of_new_accounts_creates_ours_and_leaves_theirs(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": false, "max_concurrency": 8})).await;
    let mut theirs = Vec::new();
    for name in ["alma", "bruno"] {
        let made = w
            .app_call(
                reqwest::Method::POST,
                "/Users",
                Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": name, "title": "Made by hand"})),
            )
            .await;
        theirs.push(made);
    }
    let names = ["alma", "bruno", "carla", "dario", "elena", "fabio", "gina", "hugo"];
    let mut users = Vec::new();
    for name in names {
        let u = w.user(name, "Engineer").await;
        w.grant(&u).await;
        users.push(u);
    }
    // Provisioning on: every account is planned at once and claimed together.
    let on = w.s.patch(&format!("/api/v1/apps/{}", w.app), json!({"provisioning": {"enabled": true}})).await;
    assert_eq!(on.status, StatusCode::OK, "{on:#?}");
    for (name, u) in names.iter().zip(&users) {
        if ["alma", "bruno"].contains(name) {
            let e = w.settled(u, "unknown").await;
            assert!(e["reason"].as_str().unwrap().contains("did not create"), "{e:#}");
            assert_eq!(w.account(u).await["ownership"], "foreign");
        } else {
            w.settled(u, "provisioned").await;
            assert_eq!(w.account(u).await["ownership"], "created");
        }
        let in_app = w.in_app(name).await;
        assert_eq!(in_app.len(), 1, "one account each: {in_app:#?}");
    }
    for made in &theirs {
        let now = w.app_call(reqwest::Method::GET, &format!("/Users/{}", made["id"].as_str().unwrap()), None).await;
        assert_eq!((now["title"].as_str(), &now["meta"]["version"]), (Some("Made by hand"), &made["meta"]["version"]));
    }
    let ours = w.in_app("carla").await;
    assert_eq!(ours[0]["externalId"].as_str(), Some(users[2].as_str()));
}

async fn approval_holds_events_until_approved_or_rejected(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": true, "approval": {"create": true}})).await;
    let yes = w.user("approved", "x").await;
    let no = w.user("rejected", "x").await;
    w.grant(&yes).await;
    w.grant(&no).await;
    let pending_yes = w.settled(&yes, "pending").await;
    let pending_no = w.settled(&no, "pending").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.in_app("approved").await.is_empty(), "nothing happens before approval");
    // A newer change supersedes what is pending: still one pending event, with the new value.
    w.s.patch(&format!("/api/v1/users/{yes}"), json!({"title": "Promoted"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = w.s.get(&format!("/api/v1/events?user={yes}")).await.body;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
    assert_eq!(events["items"][0]["status"], "pending");
    let a = w.s.post(&format!("/api/v1/events/{}/approve", pending_yes["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    w.settled(&yes, "provisioned").await;
    assert_eq!(w.in_app("approved").await[0]["title"], "Promoted");
    let r = w.s.post(&format!("/api/v1/events/{}/reject", pending_no["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(r.body["status"], "rejected");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.in_app("rejected").await.is_empty(), "a rejected create leaves no account");
    let again = w.s.post(&format!("/api/v1/events/{}/approve", pending_no["id"].as_str().unwrap()), json!({})).await;
    again.problem(409);
    let pending = w.s.get(&format!("/api/v1/events?status=pending&app={}", w.app)).await.body;
    assert_eq!(pending["items"].as_array().unwrap().len(), 0);
}

async fn a_wrong_token_fails_with_invalid_authentication_and_retry_recovers(backend: Backend) {
    let w = World::new_on(backend, settings("suspend", "delete")).await;
    w.s.patch(
        &format!("/api/v1/apps/{}", w.app),
        json!({"connection": {"auth": {"type": "bearer", "token": "wrong-token"}}}),
    )
    .await;
    let test = w.s.post(&format!("/api/v1/apps/{}/connection/test", w.app), json!({})).await;
    test.problem(502);
    let detail = test.body["detail"].as_str().unwrap();
    assert!(detail.contains("Invalid authentication") && detail.contains("Wiki"), "{detail}");
    let u = w.user("alan", "x").await;
    w.grant(&u).await;
    let failed = w.settled(&u, "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("Invalid authentication"), "{failed:#}");
    assert!(failed["recommended_action"].as_str().unwrap().contains("credentials"));
    let filtered = w.s.get(&format!("/api/v1/events?status=failed&app={}&q=ALA", w.app)).await.body;
    assert_eq!(filtered["items"][0]["id"], failed["id"]);
    // Fixing the credential re-plans the app's users by itself: no "reapply" needed.
    w.s.patch(
        &format!("/api/v1/apps/{}", w.app),
        json!({"connection": {"auth": {"type": "bearer", "token": APP_TOKEN}}}),
    )
    .await;
    let failed_id = failed["id"].clone();
    let fixed = w.event_until(&u, |e| e["id"] != failed_id && e["status"] == "provisioned").await;
    assert_eq!(fixed["action"], "create");
    // The old failed event is superseded: retrying it would apply stale values.
    let stale = w.s.post(&format!("/api/v1/events/{}/retry", failed["id"].as_str().unwrap()), json!({})).await;
    stale.problem(409);
    assert_eq!(w.in_app("alan").await.len(), 1);
}

async fn reconciliation_is_quiet_when_in_sync_and_repairs_drift(backend: Backend) {
    let w = World::new_on(backend, settings("suspend", "delete")).await;
    let mut users = Vec::new();
    for i in 0..5 {
        let u = w.user(&format!("rec{i}"), "Engineer").await;
        w.grant(&u).await;
        users.push(u);
    }
    for u in &users {
        w.settled(u, "provisioned").await;
    }
    let quiet = w.s.post(&format!("/api/v1/apps/{}/reconcile", w.app), json!({})).await;
    assert_eq!(quiet.status, StatusCode::OK, "{quiet:#?}");
    assert_eq!(
        (quiet.body["accounts_read"].as_u64(), quiet.body["queued"].as_u64()),
        (Some(5), Some(0)),
        "{:#}",
        quiet.body
    );
    // The real scim2-server pages correctly: one page read, nothing contradicted, nothing written.
    assert_eq!(
        (quiet.body["status"].as_str(), quiet.body["strategy"].as_str(), quiet.body["pages_read"].as_u64()),
        (Some("completed"), Some("GET paging"), Some(1)),
        "{:#}",
        quiet.body
    );
    assert_eq!(quiet.body["contradictions"], json!([]));
    // Someone edits one account in the app and deletes another.
    let drifted = w.in_app("rec1").await[0]["id"].as_str().unwrap().to_owned();
    w.app_call(
        reqwest::Method::PATCH,
        &format!("/Users/{drifted}"),
        Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "title", "value": "Hacked"}]})),
    )
    .await;
    let vanished = w.in_app("rec2").await[0]["id"].as_str().unwrap().to_owned();
    let del = reqwest::Client::new()
        .delete(format!("{}/Users/{vanished}", w.scim.base_url))
        .bearer_auth(APP_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success());
    let r = w.s.post(&format!("/api/v1/apps/{}/reconcile", w.app), json!({})).await.body;
    assert_eq!(
        (r["drifted"].as_u64(), r["vanished"].as_u64(), r["queued"].as_u64()),
        (Some(1), Some(1), Some(2)),
        "{r:#}"
    );
    w.event_until(&users[1], |e| e["action"] == "update" && e["status"] == "provisioned").await;
    w.event_until(&users[2], |e| {
        e["action"] == "create" && e["status"] == "provisioned" && e["attempts"] == 1 && e["id"] != Value::Null
    })
    .await;
    assert_eq!(w.in_app("rec1").await[0]["title"], "Engineer");
    let recreated = w.in_app("rec2").await;
    assert_eq!(recreated.len(), 1);
    assert_ne!(recreated[0]["id"].as_str(), Some(vanished.as_str()));
}

async fn provision_now_answers_with_the_steps_taken(backend: Backend) {
    let w = World::new_on(backend, settings("suspend", "delete")).await;
    let u = w.user("now", "x").await;
    w.grant(&u).await;
    w.settled(&u, "provisioned").await;
    let a = w.s.post(&format!("/api/v1/users/{u}/provision"), json!({})).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    assert_eq!(a.body["steps"][0]["step"], "in sync: nothing to do");
    // Drift in the app, then provision now for that app.
    let id = w.in_app("now").await[0]["id"].as_str().unwrap().to_owned();
    let del = reqwest::Client::new()
        .delete(format!("{}/Users/{id}", w.scim.base_url))
        .bearer_auth(APP_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success());
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"title": "Changed"})).await;
    let a = w.s.post(&format!("/api/v1/users/{u}/provision?app={}", w.app), json!({})).await;
    let steps = a.body["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["app_name"], "Wiki");
    // The admin actions that write nothing else are audited too.
    let audit = w.s.get("/api/v1/audit?limit=100").await.body;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"user.provision_now"), "{actions:?}");
    let test = audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "app.test_connection").unwrap();
    assert_eq!((test["after"]["ok"].as_bool(), test["actor"]["name"].as_str()), (Some(true), Some("admin")));
}

crate::on_both_backends!(
    role_grant_creates_the_account_and_changes_update_it,
    suspension_follows_on_suspend_and_reactivation_restores,
    losing_the_role_follows_on_delete,
    an_account_made_in_the_app_is_never_touched_until_rematched,
    a_batch_of_new_accounts_creates_ours_and_leaves_theirs,
    approval_holds_events_until_approved_or_rejected,
    a_wrong_token_fails_with_invalid_authentication_and_retry_recovers,
    reconciliation_is_quiet_when_in_sync_and_repairs_drift,
    provision_now_answers_with_the_steps_taken,
);
