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
