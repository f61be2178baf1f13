//! Which requests ScimConnector sends (recorded by a tiny axum fake):
//! member chunking, PATCH vs PUT by capabilities, no request for no change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: their helpers (outside #[test] functions, where clippy.toml's allow-*-in-tests does not reach) fail the test with a message"
)]

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use connectors::{Capabilities, Connector, ScimConnector};
use scim::{Auth, Client, ClientConfig};
use serde_json::{json, Value};

type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

const USER: &str = r#"{"id":"u1","userName":"bj","active":true,"title":"Dev"}"#;

/// The members a group has after the PATCHes seen so far.
fn members(seen: &[(String, String, Value)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, _, body) in seen.iter().filter(|(m, p, _)| m == "PATCH" && p.contains("/Groups/")) {
        for op in body["Operations"].as_array().into_iter().flatten() {
            match op["op"].as_str() {
                Some("add") => out.extend(
                    op["value"].as_array().into_iter().flatten().filter_map(|v| v["value"].as_str().map(str::to_owned)),
                ),
                Some("remove") => {
                    let path = op["path"].as_str().unwrap_or("");
                    out.retain(|m| path != format!("members[value eq \"{m}\"]"));
                }
                _ => {}
            }
        }
    }
    out
}

async fn record(State(seen): State<Seen>, method: Method, uri: Uri, body: String) -> impl IntoResponse {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut seen = seen.lock().expect("lock");
    seen.push((method.to_string(), uri.path().to_string(), v));
    match method {
        Method::PATCH => (StatusCode::NO_CONTENT, String::new()),
        Method::GET if uri.path().contains("/Groups/") => {
            let members: Vec<Value> = members(&seen).into_iter().map(|m| json!({"value": m})).collect();
            (StatusCode::OK, json!({"id": "g1", "displayName": "G", "members": members}).to_string())
        }
        _ => (StatusCode::OK, USER.to_string()),
    }
}

async fn setup(caps: Capabilities) -> (Seen, ScimConnector) {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().fallback(any(record)).with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = Client::new(ClientConfig::new(format!("http://{addr}/scim/v2"), Auth::None)).expect("client");
    (seen, ScimConnector::new(client, Some(caps)))
}

fn patch_caps() -> Capabilities {
    Capabilities { patch: true, ..Capabilities::default() }
}

#[tokio::test]
async fn members_are_patched_in_chunks_of_100() {
    let (seen, conn) = setup(patch_caps()).await;
    let ids: Vec<String> = (0..250).map(|i| format!("user-{i}")).collect();
    conn.add_group_members("g1", &ids).await.expect("add");
    // Members already listed are not added again: the group is read first.
    conn.add_group_members("g1", &ids[..10]).await.expect("add again");
    conn.remove_group_members("g1", &ids).await.expect("remove");
    let seen = seen.lock().expect("lock");
    let gets = seen.iter().filter(|(m, _, _)| m == "GET").count();
    assert_eq!(gets, 3, "the group is read before each change");
    let seen: Vec<_> = seen.iter().filter(|(m, _, _)| m != "GET").cloned().collect();
    assert_eq!(seen.len(), 6, "3 PATCHes to add + 3 to remove");
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (i, (method, path, body)) in seen.iter().enumerate() {
        assert_eq!(method, "PATCH", "never a PUT of the member list");
        assert_eq!(path, "/scim/v2/Groups/g1");
        assert_eq!(body["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:PatchOp"]));
        let ops = body["Operations"].as_array().expect("ops");
        if i < 3 {
            assert_eq!(ops.len(), 1);
            assert_eq!(ops[0]["op"], json!("add"));
            assert_eq!(ops[0]["path"], json!("members"));
            let values = ops[0]["value"].as_array().expect("values");
            assert!(values.len() <= 100);
            added.extend(values.iter().map(|v| v["value"].as_str().expect("id").to_string()));
        } else {
            assert!(ops.len() <= 100);
            for op in ops {
                assert_eq!(op["op"], json!("remove"));
                removed.push(op["path"].as_str().expect("path").to_string());
            }
        }
    }
    assert_eq!(added, ids);
    assert_eq!(removed.len(), 250);
    assert_eq!(removed[0], "members[value eq \"user-0\"]");
    let sizes: Vec<usize> =
        seen[..3].iter().map(|(_, _, b)| b["Operations"][0]["value"].as_array().map_or(0, Vec::len)).collect();
    assert_eq!(sizes, vec![100, 100, 50]);
}

#[tokio::test]
async fn update_uses_patch_when_supported() {
    let (seen, conn) = setup(patch_caps()).await;
    let previous = json!({"userName":"bj","title":"Dev","nickName":"b"});
    let desired = json!({"userName":"bj","title":"CTO"});
    let out = conn.update_account("u1", &desired, Some(&previous)).await.expect("update");
    assert!(out.is_none(), "204 has no body");
    conn.update_account("u1", &desired, Some(&desired)).await.expect("no-op");
    conn.deactivate_account("u1").await.expect("deactivate");
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 2, "no request for an unchanged account");
    assert_eq!(seen[0].0, "PATCH");
    assert_eq!(
        seen[0].2["Operations"],
        json!([{"op":"replace","path":"title","value":"CTO"},{"op":"remove","path":"nickName"}])
    );
    assert_eq!(seen[1].0, "PATCH");
    assert_eq!(seen[1].2["Operations"], json!([{"op":"replace","path":"active","value":false}]));
}

#[tokio::test]
async fn update_uses_put_without_patch() {
    let (seen, conn) = setup(Capabilities::default()).await;
    let desired = json!({"userName":"bj","title":"CTO","meta":{"version":"W/\"1\""}});
    let out = conn.update_account("u1", &desired, None).await.expect("update");
    assert_eq!(out.expect("PUT answers the resource").id, "u1");
    conn.deactivate_account("u1").await.expect("deactivate");
    let seen = seen.lock().expect("lock");
    let methods: Vec<&str> = seen.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(methods, vec!["PUT", "GET", "PUT"]);
    assert_eq!(
        seen[0].2,
        json!({"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"bj","title":"CTO"})
    );
    assert_eq!(seen[2].2["active"], json!(false));
    assert_eq!(seen[2].2["title"], json!("Dev"), "PUT keeps the current data");
    assert!(seen.iter().all(|(_, p, _)| p == "/scim/v2/Users/u1"));
}
