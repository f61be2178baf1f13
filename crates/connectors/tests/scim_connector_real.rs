//! ScimConnector against the real scim2-server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: their helpers (outside #[test] functions, where clippy.toml's allow-*-in-tests does not reach) fail the test with a message"
)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use connectors::{Capabilities, Connector, ErrorKind, PageRequest, ScimConnector};
use scim::{Auth, Client, ClientConfig, USER_SCHEMA};
use serde_json::{json, Value};
use testkit::{unique, Scim2Server};

const ENTERPRISE: &str = scim::ENTERPRISE_USER_SCHEMA;

fn client(server: &Scim2Server) -> Client {
    let auth = match &server.token {
        Some(t) => Auth::Bearer { token: t.clone() },
        None => Auth::None,
    };
    let mut cfg = ClientConfig::new(&server.base_url, auth);
    cfg.timeout = Duration::from_secs(10);
    cfg.backoff_base = Duration::from_millis(10);
    Client::new(cfg).expect("client")
}

fn connector(server: &Scim2Server, caps: Option<Capabilities>) -> Arc<dyn Connector> {
    Arc::new(ScimConnector::new(client(server), caps))
}

fn account(user_name: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "userName": user_name,
        "active": true,
        "title": "Dev",
        "nickName": "bj",
        "name": {"givenName": "Barbara", "familyName": "Jensen", "middleName": "J"},
        "emails": [{"value": "old@example.com", "type": "work", "primary": true}],
        ENTERPRISE: {"department": "R&D", "employeeNumber": "7"}
    })
}

fn desired_after(previous: &Value) -> Value {
    let mut d = previous.clone();
    d["title"] = json!("CTO");
    d.as_object_mut().expect("object").remove("nickName");
    d["name"] = json!({"givenName": "Babs", "familyName": "Jensen"});
    d["emails"] = json!([{"value": "new@example.com", "type": "work", "primary": true}]);
    d[ENTERPRISE] = json!({"department": "Exec", "employeeNumber": "7"});
    d
}

fn assert_updated(got: &Value) {
    assert_eq!(got["title"], json!("CTO"));
    assert!(got.get("nickName").is_none(), "{got}");
    assert_eq!(got["name"]["givenName"], json!("Babs"));
    assert!(got["name"].get("middleName").is_none(), "{got}");
    assert_eq!(got["emails"][0]["value"], json!("new@example.com"));
    assert_eq!(got["emails"].as_array().map(Vec::len), Some(1));
    assert_eq!(got[ENTERPRISE]["department"], json!("Exec"));
    assert_eq!(got[ENTERPRISE]["employeeNumber"], json!("7"));
}

#[tokio::test]
async fn test_connection_and_wrong_token() {
    let server = Scim2Server::spawn(Some("good"));
    let caps = connector(&server, None).test_connection().await.expect("connect");
    assert!(caps.patch && caps.filter);

    let mut cfg = ClientConfig::new(&server.base_url, Auth::Bearer { token: "bad".into() });
    cfg.max_retries = 0;
    let bad = ScimConnector::new(Client::new(cfg).expect("client"), None);
    let err = bad.test_connection().await.expect_err("401");
    assert_eq!(err.kind, ErrorKind::Authentication);
    assert!(!err.retryable);
    assert!(err.reason.contains("Invalid authentication"), "{err}");
    assert_eq!(err.recommended_action, "Re-enter the app's credentials and test the connection.");
}

async fn lifecycle(conn: Arc<dyn Connector>) {
    let name = format!("{}-a\"b\\c", unique("acct"));
    let created = conn.create_account(&account(&name)).await.expect("create");
    let id = created.id.clone();

    let got = conn.get_account(&id).await.expect("get").expect("exists");
    assert_eq!(got.resource["userName"], json!(name));

    let found = conn.find_account("userName", &name).await.expect("find");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, id);

    let previous = account(&name);
    let desired = desired_after(&previous);
    conn.update_account(&id, &desired, Some(&previous)).await.expect("update");
    let got = conn.get_account(&id).await.expect("get").expect("exists");
    assert_updated(&got.resource);
    // Nothing changed: fine too.
    conn.update_account(&id, &desired, Some(&desired)).await.expect("no-op update");

    conn.deactivate_account(&id).await.expect("deactivate");
    let got = conn.get_account(&id).await.expect("get").expect("exists");
    assert_eq!(got.resource["active"], json!(false));
    assert_eq!(got.resource["title"], json!("CTO"), "deactivation kept data");

    let err = conn.create_account(&account(&name)).await.expect_err("duplicate");
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert!(!err.retryable);

    conn.delete_account(&id).await.expect("delete");
    assert!(conn.get_account(&id).await.expect("get").is_none());
    conn.delete_account(&id).await.expect("delete again");
    let err = conn.deactivate_account(&id).await.expect_err("gone");
    assert_eq!(err.kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn account_lifecycle_with_patch() {
    let server = Scim2Server::start(Some("tok"));
    let caps = Capabilities { patch: true, ..Capabilities::default() };
    lifecycle(connector(&server, Some(caps))).await;
}

#[tokio::test]
async fn account_lifecycle_with_put() {
    let server = Scim2Server::start(Some("tok"));
    // Stored conservative capabilities: no PATCH, so updates are PUTs.
    lifecycle(connector(&server, Some(Capabilities::default()))).await;
}

#[tokio::test]
async fn capabilities_fetched_lazily() {
    let server = Scim2Server::start(None);
    lifecycle(connector(&server, None)).await;
}

#[tokio::test]
async fn find_without_server_side_filter() {
    let server = Scim2Server::start(None);
    let conn = connector(&server, Some(Capabilities::none()));
    let name = unique("NoFilter");
    let created = conn.create_account(&account(&name)).await.expect("create");
    conn.create_account(&account(&unique("other"))).await.expect("create");
    let found = conn.find_account("userName", &name.to_lowercase()).await.expect("find");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, created.id);
    let err = conn.find_account("userName or 1", "x").await.expect_err("bad attr");
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn list_accounts_paged() {
    let server = Scim2Server::start(None);
    let conn = connector(&server, None);
    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(conn.create_account(&account(&unique(&format!("list{i}")))).await.expect("create").id);
    }
    let mut seen = Vec::new();
    let mut next = Some(PageRequest::first(2));
    let mut pages = 0;
    while let Some(req) = next {
        let page = conn.list_accounts(req).await.expect("page");
        pages += 1;
        seen.extend(page.items.into_iter().map(|a| a.id));
        next = page.next;
        assert!(pages < 1000);
    }
    let unique_seen: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique_seen.len(), seen.len());
    assert!(ids.is_subset(&unique_seen));
    if server.owned {
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 5);
    }
}

#[tokio::test]
async fn group_members_in_chunks() {
    let server = Scim2Server::start(None);
    let conn: Arc<dyn Connector> = Arc::new(ScimConnector::new(client(&server), None).with_member_chunk_size(3));
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(conn.create_account(&account(&unique(&format!("m{i}")))).await.expect("create").id);
    }
    let group = conn.create_group(&json!({"displayName": unique("Engineering")})).await.expect("group");
    let members = |g: &Value| -> HashSet<String> {
        g["members"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["value"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };

    conn.add_group_members(&group.id, &ids).await.expect("add");
    let g = conn.get_group(&group.id).await.expect("get").expect("exists");
    assert_eq!(members(&g.resource), ids.iter().cloned().collect());

    conn.remove_group_members(&group.id, &ids[..4]).await.expect("remove");
    let g = conn.get_group(&group.id).await.expect("get").expect("exists");
    assert_eq!(members(&g.resource), ids[4..].iter().cloned().collect());

    conn.add_group_members(&group.id, &[]).await.expect("empty add");
    let page = conn.list_groups(PageRequest::first(50)).await.expect("list");
    assert!(page.items.iter().any(|g| g.id == group.id));
    conn.delete_group(&group.id).await.expect("delete");
    assert!(conn.get_group(&group.id).await.expect("get").is_none());
}
