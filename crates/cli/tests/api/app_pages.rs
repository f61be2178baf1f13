//! Apps as they really are (issue 16): the test kit's SCIM app with its misbehaviours, and the
//! engine reading it: page integrity, proven absence, idempotent memberships.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::{ScimApp, ScimAppOptions, Switches};

use crate::support::{Backend, TestServer};

async fn scim(app: &ScimApp, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", app.base_url()));
    if let Some(b) = body {
        req = req.header("content-type", "application/scim+json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn user_names(page: &Value) -> Vec<String> {
    page["Resources"].as_array().unwrap().iter().map(|u| u["userName"].as_str().unwrap().to_owned()).collect()
}

/// Each switch of the test app misbehaves as described, alone, and the counters see it.
#[tokio::test]
async fn test_app_misbehaves_as_switched() {
    let app = ScimApp::start(ScimAppOptions::default()).unwrap();
    for i in 1..=30 {
        let (status, _) = scim(&app, Method::POST, "/Users", Some(json!({"userName": format!("User{i:02}")}))).await;
        assert_eq!(status, 201);
    }
    assert_eq!(app.counts().users.post, 30);
    let search = |start: u32| {
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "startIndex": start, "count": 10})
    };

    // Well-behaved: GET and POST /.search page alike.
    let (_, page) = scim(&app, Method::GET, "/Users?startIndex=21&count=10", None).await;
    assert_eq!((page["startIndex"].as_u64(), page["totalResults"].as_u64()), (Some(21), Some(30)));
    assert_eq!(user_names(&page)[0], "User21");
    let (_, page) = scim(&app, Method::POST, "/Users/.search", Some(search(21))).await;
    assert_eq!(user_names(&page)[0], "User21");

    app.set_switches(Switches { list_ignores_start_index: true, ..Default::default() });
    let (_, page) = scim(&app, Method::GET, "/Users?startIndex=21&count=10", None).await;
    assert_eq!(page["startIndex"], 1);
    assert_eq!(user_names(&page)[0], "User01");
    let (_, page) = scim(&app, Method::POST, "/Users/.search", Some(search(21))).await;
    assert_eq!(user_names(&page)[0], "User21", "POST /.search still pages");

    app.set_switches(Switches {
        list_ignores_start_index: true,
        search_ignores_start_index: true,
        ..Default::default()
    });
    let (_, page) = scim(&app, Method::POST, "/Users/.search", Some(search(21))).await;
    assert_eq!(user_names(&page)[0], "User01");

    app.set_switches(Switches { zero_based_start_index: true, ..Default::default() });
    let (_, page) = scim(&app, Method::GET, "/Users?startIndex=1&count=10", None).await;
    assert_eq!((page["startIndex"].as_u64(), user_names(&page)[0].as_str()), (Some(1), "User02"));

    app.set_switches(Switches { fixed_page_size: Some(20), ..Default::default() });
    let (_, page) = scim(&app, Method::GET, "/Users?startIndex=1&count=5", None).await;
    assert_eq!((page["itemsPerPage"].as_u64(), user_names(&page).len()), (Some(20), 20));

    app.set_switches(Switches { case_sensitive_user_name: true, ..Default::default() });
    let (_, page) = scim(&app, Method::GET, "/Users?filter=userName%20eq%20%22user01%22", None).await;
    assert_eq!(page["totalResults"], 0);
    let (_, page) = scim(&app, Method::GET, "/Users?filter=userName%20eq%20%22User01%22", None).await;
    assert_eq!(page["totalResults"], 1);

    let id = app.user("user01").unwrap()["id"].as_str().unwrap().to_owned();
    let (status, group) =
        scim(&app, Method::POST, "/Groups", Some(json!({"displayName": "Sales", "members": [{"value": id}]}))).await;
    assert_eq!(status, 201);
    let gid = group["id"].as_str().unwrap().to_owned();
    let add = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]});
    app.set_switches(Switches::default());
    let (status, _) = scim(&app, Method::PATCH, &format!("/Groups/{gid}"), Some(add.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(app.members("Sales").unwrap().len(), 1, "a present member is not added twice");
    app.set_switches(Switches { patch_add_duplicates_members: true, ..Default::default() });
    scim(&app, Method::PATCH, &format!("/Groups/{gid}"), Some(add.clone())).await;
    assert_eq!(app.members("Sales").unwrap(), vec![id.clone(), id.clone()]);
    app.set_switches(Switches { patch_no_content: true, ..Default::default() });
    let (status, body) = scim(&app, Method::PATCH, &format!("/Groups/{gid}"), Some(add)).await;
    assert_eq!((status, body), (204, Value::Null));

    let c = app.counts();
    assert_eq!((c.groups.post, c.groups.patch, c.groups.writes()), (1, 3, 4));
    assert_eq!(c.users.search, 3);
    assert_eq!(c.writes(), 34);
    app.reset_counts();
    assert_eq!(app.counts().writes(), 0);
}

const APP_TOKEN: &str = "test-app-token-5d1e";
const USERS: usize = 300;
/// Groups in the app: the two department groups provisioning creates, and these.
const OTHER_GROUPS: usize = 148;

/// The service wired to the test kit's SCIM app (pages of at most 100), with a role granting
/// it and rules putting each user in the group of their department.
struct Bench {
    s: TestServer,
    app: ScimApp,
    app_id: String,
    role: String,
}

impl Bench {
    async fn new(backend: Backend, switches: Switches) -> Self {
        Self::with_pages_of(backend, switches, 100).await
    }

    async fn with_pages_of(backend: Backend, switches: Switches, max_results: usize) -> Self {
        let app = ScimApp::start(ScimAppOptions {
            token: Some(APP_TOKEN.into()),
            max_results,
            switches,
            ..Default::default()
        })
        .unwrap();
        let s = TestServer::start_on(backend).await;
        let created = s
            .post(
                "/api/v1/apps",
                json!({"name": "Misbehaving", "connection": {"base_url": app.base_url(),
                    "auth": {"type": "bearer", "token": APP_TOKEN}},
                    "provisioning": {"enabled": true, "on_suspend": "suspend", "on_delete": "delete",
                        "create_missing_groups": true}}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:#?}");
        let app_id = created.body["id"].as_str().unwrap().to_owned();
        let test = s.post(&format!("/api/v1/apps/{app_id}/connection/test"), json!({})).await;
        assert_eq!(test.status, StatusCode::OK, "{test:#?}");
        let rules = json!([
            {"name": "Sales", "conditions": [{"attribute": "department", "op": "equals", "value": "Sales"}],
             "actions": [{"add_entitlement": {"type": "group", "value": "Sales"}}]},
            {"name": "Engineering", "conditions": [{"attribute": "department", "op": "equals", "value": "Engineering"}],
             "actions": [{"add_entitlement": {"type": "group", "value": "Engineering"}}]}
        ]);
        let put = s.call(Method::PUT, &format!("/api/v1/apps/{app_id}/rules"), Some(rules)).await;
        assert_eq!(put.status, StatusCode::OK, "{put:#?}");
        let role = s.post("/api/v1/roles", json!({"name": "Staff"})).await.body["id"].as_str().unwrap().to_owned();
        assert_eq!(s.put(&format!("/api/v1/roles/{role}/apps/{app_id}")).await.status, StatusCode::NO_CONTENT);
        Self { s, app, app_id, role }
    }

    /// Creates and grants `n` users, `u000`..: even ones in Sales, odd ones in Engineering.
    async fn users(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let dept = if i % 2 == 0 { "Sales" } else { "Engineering" };
            let u = self
                .s
                .post("/api/v1/users", json!({"username": format!("u{i:03}"), "title": "Engineer", "department": dept}))
                .await;
            assert_eq!(u.status, StatusCode::CREATED, "{u:#?}");
            let id = u.body["id"].as_str().unwrap().to_owned();
            assert_eq!(
                self.s.put(&format!("/api/v1/roles/{}/users/{id}", self.role)).await.status,
                StatusCode::NO_CONTENT
            );
            ids.push(id);
        }
        ids
    }

    fn remote(&self, username: &str) -> String {
        self.app.user(username).unwrap_or_else(|| panic!("{username} is not in the app"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits (bounded) until `done` holds of the app.
    async fn until(&self, what: &str, done: impl Fn(&ScimApp) -> bool) {
        for _ in 0..1200 {
            if done(&self.app) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let events = self.s.get("/api/v1/events?limit=5&status=failed").await.body;
        panic!(
            "timed out waiting for: {what}; the app has {} users, Sales {:?} and Engineering {:?} members; failed events: {events:#}",
            self.app.users().len(),
            self.app.members("Sales").map(|m| m.len()),
            self.app.members("Engineering").map(|m| m.len()),
        );
    }

    async fn refresh(&self) -> Value {
        let r = self.s.post(&format!("/api/v1/apps/{}/entitlements/refresh", self.app_id), json!({})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:#?}");
        for _ in 0..600 {
            let e = self.s.get(&format!("/api/v1/apps/{}/entitlements?limit=500", self.app_id)).await.body;
            let fetched = e["refresh"]["fetched"].as_i64().unwrap_or(0);
            if let Some(total) = e["refresh"]["total"].as_i64() {
                assert!(fetched <= total, "progress shows more fetched than exist: {e:#}");
            }
            if e["refresh"]["state"] != "running" {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the refresh did not finish");
    }

    async fn reconcile(&self) -> Value {
        let r = self.s.post(&format!("/api/v1/apps/{}/reconcile", self.app_id), json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{r:#?}");
        r.body
    }

    /// The members of a group, each once, and whether any is listed twice.
    fn members(&self, group: &str) -> (BTreeSet<String>, bool) {
        let listed = self.app.members(group).unwrap_or_default();
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        let twice = unique.len() != listed.len();
        (unique, twice)
    }
}

/// What each misbehaviour did, for the report: writes by each reconcile, groups imported.
fn figures(name: &str, refresh: &Value, first: (&Value, u64), second: (&Value, u64)) {
    println!(
        "FIGURES {name}: refresh {} imported {}; reconcile 1 {} via {} with {} writes; reconcile 2 {} via {} with {} writes",
        refresh["refresh"]["state"],
        refresh["items"].as_array().map_or(0, Vec::len),
        first.0["status"],
        first.0["strategy"],
        first.1,
        second.0["status"],
        second.0["strategy"],
        second.1
    );
}

/// One misbehaviour: provision 300 users, change a title, move a user between groups by
/// department, Refresh 150 groups, reconcile twice. `pages` says whether some strategy reads
/// the app consistently; `contradiction` is what the failing strategy is caught at.
async fn scenario(name: &str, switches: Switches, pages: bool, contradiction: &str) {
    let b = Bench::new(Backend::Sqlite, switches.clone()).await;
    for i in 0..OTHER_GROUPS {
        b.app.create_group(json!({"displayName": format!("Team {i:03}")})).unwrap();
    }
    let users = b.users(USERS).await;
    b.until("every account and membership", |app| {
        app.users().len() == USERS
            && app.members("Sales").is_some_and(|m| m.len() == USERS / 2)
            && app.members("Engineering").is_some_and(|m| m.len() == USERS / 2)
    })
    .await;
    // A title changes; u001 moves from Engineering to Sales.
    b.s.patch(&format!("/api/v1/users/{}", users[0]), json!({"title": "Director"})).await;
    b.s.patch(&format!("/api/v1/users/{}", users[1]), json!({"department": "Sales"})).await;
    let moved = b.remote("u001");
    b.until("the title and the move", |app| {
        app.user("u000").is_some_and(|u| u["title"] == "Director")
            && app.members("Sales").is_some_and(|m| m.contains(&moved))
            && app.members("Engineering").is_some_and(|m| !m.contains(&moved))
    })
    .await;

    let refreshed = b.refresh().await;
    let imported = refreshed["items"].as_array().unwrap().len();
    if pages {
        assert_eq!(refreshed["refresh"]["state"], "done", "{name}: {refreshed:#}");
        assert_eq!(imported, OTHER_GROUPS + 2, "{name}: Refresh imports every group");
        assert_eq!(refreshed["refresh"]["fetched"], refreshed["refresh"]["total"]);
    } else {
        assert_eq!(refreshed["refresh"]["state"], "failed", "{name}: {refreshed:#}");
        let error = refreshed["refresh"]["error"].as_str().unwrap();
        assert!(error.contains(contradiction), "{name}: {error}");
        assert!(error.contains("Ask the app's vendor"), "a recommended action: {error}");
        // Only the groups provisioning created are known; none half-imported.
        assert_eq!(imported, 2, "{name}: {refreshed:#}");
    }
    if !contradiction.is_empty() {
        assert!(
            refreshed["read"]["contradictions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c.as_str().unwrap().contains(contradiction)),
            "{name}: {refreshed:#}"
        );
    }

    let mut runs = Vec::new();
    for _ in 0..2 {
        b.app.reset_counts();
        let r = b.reconcile().await;
        // Anything queued would be written now: give the workers a moment to show it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let writes = b.app.counts().writes();
        assert_eq!(writes, 0, "{name}: a quiet reconcile writes nothing: {r:#}");
        assert_eq!((r["queued"].as_u64(), r["vanished"].as_u64()), (Some(0), Some(0)), "{name}: {r:#}");
        if pages {
            assert_eq!(r["status"], "completed", "{name}: {r:#}");
            assert_eq!(r["accounts_read"].as_u64(), Some(USERS as u64), "{name}: {r:#}");
        } else {
            assert_eq!(r["status"], "failed", "{name}: {r:#}");
            assert!(r["reason"].as_str().unwrap().contains(contradiction), "{name}: {r:#}");
            assert!(r["recommended_action"].as_str().is_some_and(|a| !a.is_empty()));
            assert_eq!(r["strategy"], Value::Null);
        }
        if !contradiction.is_empty() {
            let named = r["contradictions"].as_array().unwrap();
            assert!(named.iter().any(|c| c.as_str().unwrap().contains(contradiction)), "{name}: {r:#}");
        } else {
            assert_eq!(r["contradictions"], json!([]), "{name}: {r:#}");
        }
        runs.push((r, writes));
    }
    figures(name, &refreshed, (&runs[0].0, runs[0].1), (&runs[1].0, runs[1].1));

    // The app ends exactly as desired, with no member listed twice.
    assert_eq!(b.app.users().len(), USERS);
    assert_eq!(b.app.user("u000").unwrap()["title"], "Director");
    assert_eq!(b.app.user("u002").unwrap()["title"], "Engineer");
    let (sales, twice_s) = b.members("Sales");
    let (eng, twice_e) = b.members("Engineering");
    assert!(!twice_s && !twice_e, "{name}: duplicate members");
    let want_sales: BTreeSet<String> =
        (0..USERS).filter(|i| i % 2 == 0 || *i == 1).map(|i| b.remote(&format!("u{i:03}"))).collect();
    let want_eng: BTreeSet<String> =
        (0..USERS).filter(|i| i % 2 == 1 && *i != 1).map(|i| b.remote(&format!("u{i:03}"))).collect();
    assert_eq!(sales, want_sales, "{name}");
    assert_eq!(eng, want_eng, "{name}");
    // The job results name what was seen, on the API and on the app's page.
    let reads = b.s.get(&format!("/api/v1/apps/{}/reads", b.app_id)).await.body;
    let kinds: Vec<&str> = reads["items"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reconcile", "refresh"], "{reads:#}");
}

async fn list_ignores_start_index() {
    let s = Switches { list_ignores_start_index: true, ..Default::default() };
    scenario("GET ignores startIndex", s, true, "asked for startIndex=101, the app answered startIndex=1").await;
}

async fn list_and_search_ignore_start_index() {
    let s = Switches { list_ignores_start_index: true, search_ignores_start_index: true, ..Default::default() };
    scenario(
        "GET and POST /.search ignore startIndex",
        s,
        false,
        "asked for startIndex=101, the app answered startIndex=1",
    )
    .await;
}

async fn zero_based_start_index() {
    let s = Switches { zero_based_start_index: true, ..Default::default() };
    scenario("0-based startIndex", s, false, "but its pages held").await;
}

async fn count_ignored() {
    scenario("count ignored (pages of 20)", Switches { fixed_page_size: Some(20), ..Default::default() }, true, "")
        .await;
}

async fn patch_add_duplicates_members() {
    let s = Switches { patch_add_duplicates_members: true, ..Default::default() };
    scenario("PATCH add duplicates members", s, true, "").await;
}

async fn patch_answers_204() {
    scenario("PATCH answers 204", Switches { patch_no_content: true, ..Default::default() }, true, "").await;
}

async fn case_sensitive_user_name_filter() {
    let s = Switches { case_sensitive_user_name: true, ..Default::default() };
    scenario("case-sensitive userName filter", s, true, "").await;
}

mod each_misbehaviour {
    #[tokio::test]
    async fn list_ignores_start_index() {
        super::list_ignores_start_index().await
    }
    #[tokio::test]
    async fn list_and_search_ignore_start_index() {
        super::list_and_search_ignore_start_index().await
    }
    #[tokio::test]
    async fn zero_based_start_index() {
        super::zero_based_start_index().await
    }
    #[tokio::test]
    async fn count_ignored() {
        super::count_ignored().await
    }
    #[tokio::test]
    async fn patch_add_duplicates_members() {
        super::patch_add_duplicates_members().await
    }
    #[tokio::test]
    async fn patch_answers_204() {
        super::patch_answers_204().await
    }
    #[tokio::test]
    async fn case_sensitive_user_name_filter() {
        super::case_sensitive_user_name_filter().await
    }
}

/// Memberships changed directly in the app (a member added, one removed) are repaired by the
/// next reconcile; a member listed twice is reported on the app's health; an account deleted
/// in the app counts as vanished only once read by id.
async fn memberships_changed_in_the_app_are_repaired(backend: Backend) {
    let b = Bench::new(backend, Switches::default()).await;
    let users = b.users(6).await;
    b.until("six accounts in their groups", |app| {
        app.members("Sales").is_some_and(|m| m.len() == 3) && app.members("Engineering").is_some_and(|m| m.len() == 3)
    })
    .await;
    let quiet = b.reconcile().await;
    assert_eq!((quiet["status"].as_str(), quiet["queued"].as_u64()), (Some("completed"), Some(0)), "{quiet:#}");
    assert_eq!(quiet["groups_read"].as_u64(), Some(2), "{quiet:#}");

    // In the app: u000 leaves Sales, u001 (Engineering) joins Sales, u003 is listed twice.
    let (u0, u1, u3) = (b.remote("u000"), b.remote("u001"), b.remote("u003"));
    assert!(b.app.remove_member("Sales", &u0));
    assert!(b.app.add_member("Sales", &u1));
    assert!(b.app.add_member("Engineering", &u3));
    b.app.reset_counts();
    let r = b.reconcile().await;
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["memberships_drifted"].as_u64(), Some(2), "{r:#}");
    assert_eq!(r["duplicate_members"].as_u64(), Some(1), "{r:#}");
    assert_eq!(r["groups_with_duplicates"], json!(["Engineering"]), "{r:#}");
    b.until("memberships repaired", |app| app.members("Sales").is_some_and(|m| m.contains(&u0) && !m.contains(&u1)))
        .await;
    // Repaired with one add and one remove, and no attribute write.
    b.until("both repairs sent", |app| app.counts().groups.patch == 2).await;
    assert_eq!(b.app.counts().users.writes(), 0);
    let reads = b.s.get(&format!("/api/v1/apps/{}/reads", b.app_id)).await.body;
    assert_eq!(reads["items"][0]["result"]["duplicate_members"].as_u64(), Some(1), "{reads:#}");

    // An account deleted in the app: read by id (404), looked up, then vanished and recreated.
    let gone = b.remote("u004");
    let del = reqwest::Client::new()
        .delete(format!("{}/Users/{gone}", b.app.base_url()))
        .bearer_auth(APP_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 204);
    b.app.reset_counts();
    let r = b.reconcile().await;
    assert_eq!((r["vanished"].as_u64(), r["missing_from_list"].as_u64()), (Some(1), Some(1)), "{r:#}");
    assert!(b.app.counts().users.get >= 1, "the account was read by id before counting it gone");
    b.until("the account recreated", |app| app.user("u004").is_some_and(|u| u["id"] != json!(gone))).await;
    let _ = users;
}

/// An app whose index paging is broken both ways but which advertises cursor pagination is
/// read through the cursor: reconcile and Refresh complete, naming the contradictions, and
/// nothing is written.
#[tokio::test]
async fn cursor_pagination_is_used_where_advertised() {
    let switches = Switches {
        list_ignores_start_index: true,
        search_ignores_start_index: true,
        cursor_pagination: true,
        ..Default::default()
    };
    let b = Bench::with_pages_of(Backend::Sqlite, switches, 2).await;
    b.users(5).await;
    b.until("five accounts", |app| app.users().len() == 5 && app.members("Sales").is_some_and(|m| m.len() == 3)).await;
    for i in 0..3 {
        b.app.create_group(json!({"displayName": format!("Team {i}")})).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.app.reset_counts();
    let r = b.reconcile().await;
    assert_eq!((r["status"].as_str(), r["strategy"].as_str()), (Some("completed"), Some("cursor pagination")), "{r:#}");
    assert_eq!((r["accounts_read"].as_u64(), r["queued"].as_u64()), (Some(5), Some(0)), "{r:#}");
    let named: Vec<&str> = r["contradictions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(
        named,
        [
            "GET paging: asked for startIndex=3, the app answered startIndex=1",
            "POST /.search paging: asked for startIndex=3, the app answered startIndex=1"
        ]
    );
    let refreshed = b.refresh().await;
    assert_eq!(refreshed["refresh"]["state"], "done", "{refreshed:#}");
    assert_eq!(refreshed["items"].as_array().unwrap().len(), 5, "Sales, Engineering and three teams");
    assert_eq!(refreshed["read"]["strategy"], "cursor pagination");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.app.counts().writes(), 0);
}

on_both_backends!(memberships_changed_in_the_app_are_repaired);
