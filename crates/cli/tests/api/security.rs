//! Issue 15: no request or operation stops the service; inputs that used to be accepted
//! wrongly (duplicate keys, control characters, unsafe `next`, cycles, look-alike usernames).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connectors::{Capabilities, Connector, ConnectorError, Page, PageRequest, RemoteAccount};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{Backend, TestServer};

/// An app whose first account creation panics (a bug in a connector); later ones succeed.
#[derive(Default)]
struct PanicsOnce {
    panicked: AtomicBool,
}

#[async_trait::async_trait]
impl Connector for PanicsOnce {
    async fn test_connection(&self) -> Result<Capabilities, ConnectorError> {
        panic!("not used")
    }
    async fn create_account(&self, resource: &Value) -> Result<RemoteAccount, ConnectorError> {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("connector bug: index out of range");
        }
        let mut created = resource.clone();
        created["id"] = json!("acct-1");
        RemoteAccount::from_resource(created)
    }
    async fn get_account(&self, _: &str) -> Result<Option<RemoteAccount>, ConnectorError> {
        Ok(None)
    }
    async fn find_account(&self, _: &str, _: &str) -> Result<Vec<RemoteAccount>, ConnectorError> {
        Ok(vec![])
    }
    async fn update_account(
        &self,
        _: &str,
        _: &Value,
        _: Option<&Value>,
    ) -> Result<Option<RemoteAccount>, ConnectorError> {
        panic!("not used")
    }
    async fn deactivate_account(&self, _: &str) -> Result<(), ConnectorError> {
        panic!("not used")
    }
    async fn delete_account(&self, _: &str) -> Result<(), ConnectorError> {
        panic!("not used")
    }
    async fn list_accounts(&self, _: PageRequest) -> Result<Page, ConnectorError> {
        panic!("not used")
    }
    async fn list_groups(&self, _: PageRequest) -> Result<Page, ConnectorError> {
        panic!("not used")
    }
    async fn create_group(&self, _: &Value) -> Result<RemoteAccount, ConnectorError> {
        panic!("not used")
    }
    async fn get_group(&self, _: &str) -> Result<Option<RemoteAccount>, ConnectorError> {
        panic!("not used")
    }
    async fn delete_group(&self, _: &str) -> Result<(), ConnectorError> {
        panic!("not used")
    }
    async fn add_group_members(&self, _: &str, _: &[String]) -> Result<(), ConnectorError> {
        panic!("not used")
    }
    async fn remove_group_members(&self, _: &str, _: &[String]) -> Result<(), ConnectorError> {
        panic!("not used")
    }
}

async fn latest(s: &TestServer, user: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = s.get(&format!("/api/v1/events?user={user}&limit=1")).await.body["items"][0].clone();
        if done(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "timed out: {e:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_panicking_operation_is_recorded_as_failed_and_the_workers_go_on() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let app = s
        .post(
            "/api/v1/apps",
            json!({"name": "Buggy", "connection": {"base_url": "http://127.0.0.1:9/scim/v2",
            "auth": {"type": "bearer", "token": "t0k3n-t0k3n"}}, "provisioning": {"enabled": true,
            "lookup_before_create": false}}),
        )
        .await;
    let (app_id, version) = (app.body["id"].as_str().unwrap().to_owned(), app.body["version"].as_i64().unwrap());
    s.state.service.engine().use_connector(app_id.parse().unwrap(), version, Arc::new(PanicsOnce::default()));
    let role = s.post("/api/v1/roles", json!({"name": "R"})).await.body["id"].as_str().unwrap().to_owned();
    s.put(&format!("/api/v1/roles/{role}/apps/{app_id}")).await;
    let u = s.post("/api/v1/users", json!({"username": "ada"})).await.body["id"].as_str().unwrap().to_owned();
    s.put(&format!("/api/v1/roles/{role}/users/{u}")).await;
    let failed = latest(&s, &u, |e| e["status"] == "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("connector bug: index out of range"), "{failed:#}");
    // The service and the workers go on: the retry runs and provisions.
    let retried = s.post(&format!("/api/v1/events/{}/retry", failed["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(retried.status, StatusCode::OK, "{retried:#?}");
    let done = latest(&s, &u, |e| e["status"] == "provisioned").await;
    assert_eq!(done["id"], failed["id"]);
}

/// Issue 15: a flat `or` of 65 SCIM filter terms was refused as "nests deeper than 64
/// levels"; deep nesting must still be refused, and without harm to the process.
#[tokio::test]
async fn scim_filters_flat_or_chains_are_answered_and_deep_nesting_is_refused_as_invalid_filter() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let c = s.post("/api/v1/scim-clients", json!({"name": "Entra ID"})).await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:#?}");
    let token = c.body["token"].as_str().unwrap().to_owned();
    let scim = |path_and_query: String| {
        let req = s.client.get(format!("{}{path_and_query}", s.url("/scim/v2"))).bearer_auth(&token);
        async move { crate::support::answer(req.send().await.unwrap()).await }
    };
    for name in ["u7", "u64", "u65"] {
        let r = s
            .client
            .post(s.url("/scim/v2/Users"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let terms: Vec<String> = (0..65).map(|i| format!("userName eq \"u{i}\"")).collect();
    let filter: String = url::form_urlencoded::byte_serialize(terms.join(" or ").as_bytes()).collect();
    let flat = scim(format!("/Users?filter={filter}")).await;
    assert_eq!(flat.status, StatusCode::OK, "{flat:#?}");
    assert_eq!(flat.body["totalResults"], 2, "u7 and u64 match, u65 does not");

    // Deep nesting in the query: as deep as a URI can carry (the `http` crate, and so the server,
    // takes URIs of at most 65,534 bytes), 30,000 levels of parentheses (they need no encoding).
    let deep = format!("/Users?filter={}userName%20pr{}", "(".repeat(30_000), ")".repeat(30_000));
    let refused = scim(deep).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{:?}", refused.status);
    assert_eq!(refused.body["scimType"], "invalidFilter", "{:#}", refused.body);
    // 100,000 levels, in the body of a search (POST /.search).
    let filter = format!("{}userName pr{}", "(".repeat(100_000), ")".repeat(100_000));
    let r = s
        .client
        .post(s.url("/scim/v2/Users/.search"))
        .bearer_auth(&token)
        .header("content-type", "application/scim+json")
        .body(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": filter}).to_string())
        .send()
        .await
        .unwrap();
    let refused = crate::support::answer(r).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{:?}", refused.status);
    assert_eq!(refused.body["scimType"], "invalidFilter", "{:#}", refused.body);
    // Just past the nesting bound is refused as nesting, not as length.
    let over = format!("/Users?filter={}userName%20pr{}", "(".repeat(33), ")".repeat(33));
    let over = scim(over).await;
    assert_eq!(over.body["scimType"], "invalidFilter");
    assert!(over.body["detail"].as_str().unwrap().contains("nested deeper than 32 levels"), "{:#}", over.body);
    // The process lives on and answers.
    let after = scim(format!("/Users?filter={}", "userName%20eq%20%22u7%22")).await;
    assert_eq!((after.status, after.body["totalResults"].as_u64()), (StatusCode::OK, Some(1)));
}

/// Issue 15: regular expressions in rules are compiled within bounds (length, nesting, size);
/// one beyond them is refused on save with a 422 naming the field.
#[tokio::test]
async fn rule_regexes_over_the_limits_are_refused_with_422_naming_the_field() {
    let s = TestServer::start_on(Backend::Sqlite).await;
    let app = s
        .post(
            "/api/v1/apps",
            json!({"name": "Wiki", "connection": {"base_url": "http://127.0.0.1:9/scim/v2",
            "auth": {"type": "bearer", "token": "t0k3n-t0k3n"}}}),
        )
        .await;
    let rules = format!("/api/v1/apps/{}/rules", app.body["id"].as_str().unwrap());
    let with = |re: String| {
        json!([{"name": "Engineers", "conditions": [{"attribute": "title", "op": "matches", "value": re}],
            "actions": [{"add_entitlement": {"type": "group", "value": "Engineering"}}]}])
    };
    for (re, why) in [
        ("a".repeat(1025), "longer than 1024 bytes"),
        (format!("{}a{}", "(".repeat(40), ")".repeat(40)), "deeper than 32 levels"),
        (r"\w{1000}\w{1000}\w{1000}".to_owned(), "too complex"),
    ] {
        let a = s.call(reqwest::Method::PUT, &rules, Some(with(re))).await;
        let reason = a.problem_field(422, "rules[0].conditions[0].value");
        assert!(reason.contains(why), "{reason}");
    }
    assert_eq!(s.get(&rules).await.body, json!([]), "nothing was saved");
    let ok = s.call(reqwest::Method::PUT, &rules, Some(with(format!("^(?i){}eng", "(x)?".repeat(30))))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:#?}");
}
