//! Integration tests of the SCIM client against the real `scim2-server`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: their helpers (outside #[test] functions, where clippy.toml's allow-*-in-tests does not reach) fail the test with a message"
)]

use std::collections::HashSet;
use std::time::Duration;

use scim::{Auth, Client, ClientConfig, PatchOp, ScimError, USERS, USER_SCHEMA};
use serde_json::{json, Value};
use testkit::{unique, Scim2Server};

fn client_for(server: &Scim2Server) -> Client {
    let auth = match &server.token {
        Some(t) => Auth::Bearer { token: t.clone() },
        None => Auth::None,
    };
    let mut cfg = ClientConfig::new(&server.base_url, auth);
    cfg.timeout = Duration::from_secs(10);
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(100);
    Client::new(cfg).expect("client")
}

fn user(user_name: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA],
        "userName": user_name,
        "active": true,
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "emails": [{"value": "bjensen@example.com", "type": "work", "primary": true}]
    })
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn capabilities_from_service_provider_config() {
    let server = Scim2Server::start(Some("s3cret"));
    let caps = client_for(&server).service_provider_config().await.expect("spc");
    assert!(caps.patch && caps.filter && caps.etag && caps.bulk && caps.sort);
    if server.owned {
        assert_eq!(caps.filter_max_results, Some(1000));
        assert_eq!(caps.bulk_max_operations, Some(1000));
        assert!(caps.change_password);
    }
}

#[tokio::test]
async fn user_lifecycle() {
    let server = Scim2Server::start(Some("s3cret"));
    let c = client_for(&server);
    let name = format!("{}-a\"b\\c", unique("life"));

    let created = c.create_user(&user(&name)).await.expect("create");
    let id = id_of(&created);
    assert_eq!(created["userName"], json!(name));
    assert!(created["meta"]["version"].is_string());

    let got = c.get_user(&id).await.expect("get").expect("exists");
    assert_eq!(got["userName"], json!(name));

    let found = c.find_users("userName", &name).await.expect("find");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(id_of(&found[0]), id);
    assert!(c.find_users("userName", &format!("{name}x")).await.expect("find").is_empty());

    // scim2-server answers PATCH with 204 No Content.
    let patched = c
        .patch_user(&id, PatchOp::replace_attributes([("displayName", json!("Babs")), ("title", json!("CTO"))]))
        .await
        .expect("patch");
    assert!(patched.is_none(), "{patched:?}");
    let got = c.get_user(&id).await.expect("get").expect("exists");
    assert_eq!(got["displayName"], json!("Babs"));
    assert_eq!(got["title"], json!("CTO"));

    // PUT replaces the whole resource.
    let mut replacement = user(&name);
    replacement["nickName"] = json!("bj");
    let replaced = c.replace_user(&id, &replacement).await.expect("put");
    assert_eq!(replaced["nickName"], json!("bj"));
    assert!(replaced.get("displayName").is_none(), "{replaced}");

    // Deactivate.
    c.patch_user(&id, PatchOp::new().replace("active", json!(false))).await.expect("deactivate");
    let got = c.get_user(&id).await.expect("get").expect("exists");
    assert_eq!(got["active"], json!(false));

    c.delete_user(&id).await.expect("delete");
    assert!(c.get_user(&id).await.expect("get").is_none());
    // Deleting again is fine (404 = already gone).
    c.delete_user(&id).await.expect("delete again");
    // PATCH of a missing user is NotFound.
    let err = c.patch_user(&id, PatchOp::new().replace("active", json!(true))).await.expect_err("gone");
    assert!(matches!(err, ScimError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn find_round_trips_nasty_user_names() {
    let server = Scim2Server::start(None);
    let c = client_for(&server);
    let base = unique("nasty");
    let names: Vec<String> = [
        "a\"b\\c",
        "\\",
        "\"",
        "trailing\\",
        "x\" or userName pr or \"y",
        "spa ce+plus&amp=eq?#/%20",
        "tab\there",
        "ü山田🦀",
        "o'brien",
    ]
    .iter()
    .map(|s| format!("{base}{s}"))
    .collect();
    let mut ids = Vec::new();
    for n in &names {
        ids.push(id_of(&c.create_user(&user(n)).await.expect("create")));
    }
    for (n, id) in names.iter().zip(&ids) {
        let found = c.find_users("userName", n).await.expect("find");
        assert_eq!(found.len(), 1, "{n:?}: {found:?}");
        assert_eq!(&id_of(&found[0]), id, "{n:?}");
        assert_eq!(found[0]["userName"], json!(n));
    }
}

#[tokio::test]
async fn errors_are_classified() {
    let server = Scim2Server::start(None);
    let c = client_for(&server);
    let name = unique("dup");
    let created = c.create_user(&user(&name)).await.expect("create");

    let err = c.create_user(&user(&name)).await.expect_err("dup");
    match &err {
        ScimError::Conflict { scim_type, .. } => {
            assert_eq!(scim_type.as_deref(), Some("uniqueness"))
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());

    let err = c.create_user(&json!({"schemas": [USER_SCHEMA]})).await.expect_err("no userName");
    assert!(matches!(err, ScimError::BadRequest { .. }), "{err:?}");
    assert!(!err.is_retryable());

    let err = c.find_users("noSuchAttr", "x").await.expect_err("bad attr");
    match &err {
        ScimError::BadRequest { scim_type, .. } => {
            assert_eq!(scim_type.as_deref(), Some("invalidFilter"))
        }
        other => panic!("{other:?}"),
    }
    let err = c.find_users("userName eq \"x\" or userName", "x").await.expect_err("injection");
    assert!(matches!(err, ScimError::InvalidInput(_)), "{err:?}");

    // ETag precondition.
    let id = id_of(&created);
    let err = c
        .patch_resource(USERS, &id, &PatchOp::new().replace("active", json!(false)), Some("W/\"stale\""))
        .await
        .expect_err("412");
    assert!(matches!(err, ScimError::PreconditionFailed { .. }), "{err:?}");
    let version = created["meta"]["version"].as_str().expect("version");
    c.patch_resource(USERS, &id, &PatchOp::new().replace("active", json!(false)), Some(version))
        .await
        .expect("matching etag");
}

#[tokio::test]
async fn list_paging() {
    let server = Scim2Server::start(None);
    let c = client_for(&server);
    let prefix = unique("page");
    let mut created = HashSet::new();
    for i in 0..7 {
        let u = c.create_user(&user(&format!("{prefix}-{i}"))).await.expect("create");
        created.insert(id_of(&u));
    }
    let first = c.list_users(1, 3).await.expect("list");
    assert_eq!(first.resources.len(), 3);
    if server.owned {
        assert_eq!(first.total_results, Some(7));
        assert_eq!(first.start_index, Some(1));
        assert_eq!(first.items_per_page, Some(3));
    }
    let last = c.list_users(7, 3).await.expect("list");
    if server.owned {
        assert_eq!(last.resources.len(), 1);
    }

    let mut pager = c.pager(USERS, 3);
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(page) = pager.next_page().await.expect("page") {
        pages += 1;
        seen.extend(page.iter().map(id_of));
    }
    let unique_seen: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique_seen.len(), seen.len(), "duplicates across pages");
    assert!(created.is_subset(&unique_seen));
    if server.owned {
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 7);
    }
    let all = c.list_all(USERS, 2).await.expect("all");
    assert!(all.len() >= 7);
    assert!(c.list_groups(1, 10).await.is_ok());
}

#[tokio::test]
async fn groups_and_members() {
    let server = Scim2Server::start(None);
    let c = client_for(&server);
    let mut ids = Vec::new();
    for i in 0..5 {
        let u = c.create_user(&user(&unique(&format!("member{i}")))).await.expect("create");
        ids.push(id_of(&u));
    }
    let g = c
        .create_group(&json!({
            "schemas": [scim::GROUP_SCHEMA],
            "displayName": unique("group")
        }))
        .await
        .expect("group");
    let gid = id_of(&g);

    for chunk in ids.chunks(2) {
        let r = c.patch_group(&gid, PatchOp::new().add_members(chunk)).await.expect("add");
        assert!(r.is_none());
    }
    let members = |g: &Value| -> HashSet<String> {
        g["members"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["value"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let got = c.get_group(&gid).await.expect("get").expect("exists");
    assert_eq!(members(&got), ids.iter().cloned().collect());

    c.patch_group(&gid, PatchOp::new().remove_members(&ids[1..3])).await.expect("remove");
    let got = c.get_group(&gid).await.expect("get").expect("exists");
    let expected: HashSet<String> = [&ids[0], &ids[3], &ids[4]].into_iter().cloned().collect();
    assert_eq!(members(&got), expected);

    let listed = c.list_groups(1, 100).await.expect("list");
    assert!(listed.resources.iter().any(|g| id_of(g) == gid));
    c.delete_group(&gid).await.expect("delete");
    assert!(c.get_group(&gid).await.expect("get").is_none());
}

#[tokio::test]
async fn wrong_bearer_token_is_invalid_authentication() {
    // Needs a server with a known token: always our own.
    let server = Scim2Server::spawn(Some("right-token"));
    for auth in [
        Auth::Bearer { token: "wrong-token".into() },
        Auth::None,
        Auth::Basic { username: "u".into(), password: "p".into() },
    ] {
        let c = Client::new(ClientConfig::new(&server.base_url, auth)).expect("client");
        // scim2-server serves the discovery endpoints without authentication.
        c.service_provider_config().await.expect("public discovery");
        let err = c.test_connection().await.expect_err("401");
        assert!(matches!(err, ScimError::InvalidAuthentication { status: 401, .. }), "{err:?}");
        assert!(err.to_string().contains("Invalid authentication"), "{err}");
        assert!(!err.is_retryable());
        assert_eq!(err.recommended_action(), "Re-enter the app's credentials and test the connection.");
        let err = c.create_user(&user("x")).await.expect_err("401");
        assert!(matches!(err, ScimError::InvalidAuthentication { .. }));
    }
    let ok =
        Client::new(ClientConfig::new(&server.base_url, Auth::Bearer { token: "right-token".into() })).expect("client");
    ok.test_connection().await.expect("right token");
}

#[tokio::test]
async fn unreachable_server_is_a_network_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut cfg = ClientConfig::new(format!("http://127.0.0.1:{port}/v2"), Auth::None);
    cfg.max_retries = 1;
    cfg.backoff_base = Duration::from_millis(1);
    let err = Client::new(cfg).expect("client").service_provider_config().await.expect_err("refused");
    assert!(matches!(err, ScimError::Network(_)), "{err:?}");
    assert!(err.is_retryable());
}
