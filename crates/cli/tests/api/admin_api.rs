//! The admin API through HTTP: what an admin or a script sees.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{TestServer, TOKEN};

fn app_body(name: &str, token: &str) -> Value {
    json!({"name": name, "connector": "scim",
        "connection": {"base_url": "https://wiki.example.com/scim/v2", "auth": {"type": "bearer", "token": token}},
        "provisioning": {"enabled": true, "approval": {"create": true}, "on_suspend": "suspend", "on_delete": "none"}})
}

#[tokio::test]
async fn healthz_needs_no_token_and_everything_else_does() {
    let s = TestServer::start().await;
    let h = s.call_with(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!((h.status, h.body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let before = s.footprint().await;
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        let a = s.call_with(Method::POST, "/api/v1/users", Some(json!({"username": "mallory"})), token, &[]).await;
        a.problem(401);
        let a = s.call_with(Method::GET, "/api/v1/users", None, token, &[]).await;
        a.problem(401);
    }
    let basic =
        s.call_with(Method::GET, "/api/v1/users", None, None, &[("authorization", "Basic YWRtaW46YWRtaW4=")]).await;
    basic.problem(401);
    assert_eq!(s.footprint().await, before, "a refused request writes nothing");
    assert_eq!(s.get("/api/v1/users").await.body["items"], json!([]));
    // The scheme is case-insensitive.
    let ok =
        s.call_with(Method::GET, "/api/v1/users", None, None, &[("authorization", &format!("bearer {TOKEN}"))]).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn users_are_created_read_and_listed() {
    let s = TestServer::start().await;
    let boss = s.user("boss").await;
    let a = s
        .post(
            "/api/v1/users",
            json!({"username": "Ada.Lovelace", "email": "ada@example.com", "first_name": "Ada",
            "last_name": "Lovelace", "display_name": "Ada Lovelace", "title": "Engineer", "department": "R&D",
            "manager_id": boss["id"], "phone": "+44 20 7946 0000", "employee_number": "E-1815"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
    assert_eq!(a.etag.as_deref(), Some("\"1\""));
    let u = a.body;
    assert_eq!(u["status"], "active");
    assert_eq!(u["source"], "local");
    assert_eq!(u["version"], 1);
    assert_eq!(u["manager_id"], boss["id"]);
    for field in ["id", "created_at", "updated_at"] {
        assert!(u[field].is_string(), "{field}");
    }
    let got = s.get(&format!("/api/v1/users/{}", u["id"].as_str().unwrap())).await;
    assert_eq!(got.body, u);
    assert_eq!(got.etag.as_deref(), Some("\"1\""));
    let missing = s.get(&format!("/api/v1/users/{}", uuid::Uuid::now_v7())).await;
    missing.problem(404);
    let bad_id = s.get("/api/v1/users/not-a-uuid").await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_user_input_is_refused_naming_the_field_and_writes_nothing() {
    let s = TestServer::start().await;
    s.user("ada").await;
    let before = s.footprint().await;
    let dup = s.post("/api/v1/users", json!({"username": "ADA"})).await;
    assert!(dup.problem_field(409, "username").contains("taken"));
    let email = s.post("/api/v1/users", json!({"username": "bob", "email": "not-an-email"})).await;
    assert!(email.problem_field(422, "email").contains("e-mail"));
    let unknown = s.post("/api/v1/users", json!({"username": "bob", "favourite_colour": "red"})).await;
    unknown.problem_field(422, "favourite_colour");
    let missing = s.post("/api/v1/users", json!({"email": "bob@example.com"})).await;
    missing.problem_field(422, "username");
    let wrong_type = s.post("/api/v1/users", json!({"username": 42})).await;
    wrong_type.problem_field(422, "username");
    let status = s.post("/api/v1/users", json!({"username": "bob", "status": "deleted"})).await;
    status.problem_field(422, "status");
    let manager = s.post("/api/v1/users", json!({"username": "bob", "manager_id": uuid::Uuid::now_v7()})).await;
    manager.problem_field(422, "manager_id");
    let malformed = s
        .client
        .post(s.url("/api/v1/users"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap();
    let malformed = crate::support::answer(malformed).await;
    malformed.problem(400);
    let text = s
        .client
        .post(s.url("/api/v1/users"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("{\"username\": \"bob\"}")
        .send()
        .await
        .unwrap();
    crate::support::answer(text).await.problem(415);
    let huge = json!({"username": "bob", "title": "x".repeat(1024 * 1024 + 10)});
    let huge = s.post("/api/v1/users", huge).await;
    huge.problem(413);
    assert_eq!(s.footprint().await, before, "no failed request leaves an audit entry or a change");
    assert_eq!(s.get("/api/v1/users").await.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn patch_is_a_merge_patch_with_optimistic_concurrency() {
    let s = TestServer::start().await;
    let u = s.user("grace").await;
    let path = format!("/api/v1/users/{}", u["id"].as_str().unwrap());
    let a = s.patch(&path, json!({"title": "Rear Admiral", "department": "Navy"})).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    assert_eq!((a.body["title"].as_str(), a.body["version"].as_i64()), (Some("Rear Admiral"), Some(2)));
    assert_eq!(a.body["email"], "grace@example.com", "fields left out are kept");
    assert_eq!(a.etag.as_deref(), Some("\"2\""));
    // null removes a field.
    let a = s.patch(&path, json!({"department": null})).await;
    assert_eq!(a.body["department"], Value::Null);
    // Suspension is a status change.
    let a = s.patch(&path, json!({"status": "suspended"})).await;
    assert_eq!((a.body["status"].as_str(), a.body["version"].as_i64()), (Some("suspended"), Some(4)));
    // A stale If-Match changes nothing.
    let before = s.footprint().await;
    let stale = s
        .call_with(Method::PATCH, &path, Some(json!({"title": "Captain"})), Some(TOKEN), &[("if-match", "\"2\"")])
        .await;
    stale.problem(412);
    assert_eq!(stale.etag.as_deref(), Some("\"4\""), "the answer names the current version");
    assert_eq!(s.get(&path).await.body["title"], "Rear Admiral");
    assert_eq!(s.footprint().await, before);
    let fresh = s
        .call_with(Method::PATCH, &path, Some(json!({"status": "active"})), Some(TOKEN), &[("if-match", "\"4\"")])
        .await;
    assert_eq!((fresh.status, fresh.body["status"].as_str()), (StatusCode::OK, Some("active")));
    let weak = s
        .call_with(Method::PATCH, &path, Some(json!({"title": "Admiral"})), Some(TOKEN), &[("if-match", "W/\"5\"")])
        .await;
    assert_eq!(weak.status, StatusCode::OK);
    // Read-only and unknown fields, bad values, non-object patches.
    s.patch(&path, json!({"version": 1})).await.problem_field(422, "version");
    s.patch(&path, json!({"id": "x", "source": "ldap"})).await.problem_field(422, "source");
    s.patch(&path, json!({"nickname": "amazing"})).await.problem_field(422, "nickname");
    s.patch(&path, json!({"email": "nope"})).await.problem_field(422, "email");
    s.patch(&path, json!({"manager_id": u["id"]})).await.problem_field(422, "manager_id");
    s.patch(&path, json!(["title"])).await.problem_field(422, "body");
    let merge_type = s
        .client
        .patch(s.url(&path))
        .bearer_auth(TOKEN)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"title": "Commodore"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(crate::support::answer(merge_type).await.body["title"], "Commodore");
    s.patch(&format!("/api/v1/users/{}", uuid::Uuid::now_v7()), json!({"title": "x"})).await.problem(404);
}

#[tokio::test]
async fn custom_attributes_are_declared_then_typed() {
    let s = TestServer::start().await;
    let d = s
        .post("/api/v1/attributes", json!({"name": "cost_code", "type": "string", "description": "Finance code"}))
        .await;
    assert_eq!(d.status, StatusCode::CREATED, "{d:#?}");
    for (name, kind) in
        [("start_date", "date"), ("badge_number", "number"), ("remote", "boolean"), ("skills", "string_list")]
    {
        assert_eq!(s.post("/api/v1/attributes", json!({"name": name, "type": kind})).await.status, StatusCode::CREATED);
    }
    s.post("/api/v1/attributes", json!({"name": "cost_code", "type": "number"})).await.problem_field(409, "name");
    s.post("/api/v1/attributes", json!({"name": "email", "type": "string"})).await.problem_field(422, "name");
    s.post("/api/v1/attributes", json!({"name": "Bad Name", "type": "string"})).await.problem_field(422, "name");
    s.post("/api/v1/attributes", json!({"name": "x", "type": "colour"})).await.problem_field(422, "type");
    let list = s.get("/api/v1/attributes").await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 5);
    let u = s
        .post(
            "/api/v1/users",
            json!({"username": "ada", "attributes": {"cost_code": "R&D", "start_date": "2024-02-29",
            "badge_number": 7, "remote": true, "skills": ["rust", "math"]}}),
        )
        .await;
    assert_eq!(u.status, StatusCode::CREATED, "{u:#?}");
    assert_eq!(u.body["attributes"]["skills"], json!(["rust", "math"]));
    let path = format!("/api/v1/users/{}", u.body["id"].as_str().unwrap());
    s.post("/api/v1/users", json!({"username": "bob", "attributes": {"shoe_size": 44}}))
        .await
        .problem_field(422, "attributes.shoe_size");
    s.patch(&path, json!({"attributes": {"start_date": "next week"}}))
        .await
        .problem_field(422, "attributes.start_date");
    s.patch(&path, json!({"attributes": {"skills": "rust"}})).await.problem_field(422, "attributes.skills");
    let a = s.patch(&path, json!({"attributes": {"remote": null, "badge_number": 8}})).await;
    assert_eq!(
        a.body["attributes"],
        json!({"cost_code": "R&D", "start_date": "2024-02-29", "badge_number": 8, "skills": ["rust", "math"]})
    );
}

#[tokio::test]
async fn users_are_searched_filtered_and_paged() {
    let s = TestServer::start().await;
    let role = s.post("/api/v1/roles", json!({"name": "Sales"})).await.body;
    let mut names = Vec::new();
    for i in 0..23 {
        let u = s.user(&format!("person{i:02}")).await;
        if i % 3 == 0 {
            s.put(&format!("/api/v1/roles/{}/users/{}", role["id"].as_str().unwrap(), u["id"].as_str().unwrap())).await;
        }
        if i % 4 == 0 {
            s.patch(&format!("/api/v1/users/{}", u["id"].as_str().unwrap()), json!({"status": "suspended"})).await;
        }
        names.push(u["username"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut next = "/api/v1/users?limit=10".to_owned();
    loop {
        let page = s.get(&next).await;
        assert_eq!(page.status, StatusCode::OK, "{page:#?}");
        seen.extend(page.body["items"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(c) => next = format!("/api/v1/users?limit=10&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, names);
    let count = |a: crate::support::Answer| a.body["items"].as_array().unwrap().len();
    assert_eq!(count(s.get("/api/v1/users?q=PERSON1").await), 10);
    assert_eq!(count(s.get("/api/v1/users?status=suspended").await), 6);
    assert_eq!(count(s.get(&format!("/api/v1/users?role={}", role["id"].as_str().unwrap())).await), 8);
    assert_eq!(count(s.get(&format!("/api/v1/roles/{}/users", role["id"].as_str().unwrap())).await), 8);
    s.get("/api/v1/users?limit=0").await.problem_field(400, "limit");
    s.get("/api/v1/users?limit=501").await.problem_field(400, "limit");
    s.get("/api/v1/users?status=gone").await.problem_field(400, "status");
    s.get("/api/v1/users?colour=red").await.problem_field(400, "colour");
    s.get("/api/v1/users?cursor=bogus").await.problem_field(400, "cursor");
}

#[tokio::test]
async fn deleting_a_user_hides_them_and_frees_the_username() {
    let s = TestServer::start().await;
    let role = s.post("/api/v1/roles", json!({"name": "Staff"})).await.body;
    let u = s.user("leaver").await;
    let id = u["id"].as_str().unwrap();
    s.put(&format!("/api/v1/roles/{}/users/{id}", role["id"].as_str().unwrap())).await;
    let stale =
        s.call_with(Method::DELETE, &format!("/api/v1/users/{id}"), None, Some(TOKEN), &[("if-match", "\"9\"")]).await;
    stale.problem(412);
    assert_eq!(s.delete(&format!("/api/v1/users/{id}")).await.status, StatusCode::NO_CONTENT);
    s.get(&format!("/api/v1/users/{id}")).await.problem(404);
    s.delete(&format!("/api/v1/users/{id}")).await.problem(404);
    assert_eq!(s.get("/api/v1/users").await.body["items"], json!([]));
    let deleted = s.get("/api/v1/users?status=deleted").await;
    assert_eq!(deleted.body["items"][0]["status"], "deleted");
    assert_eq!(s.get(&format!("/api/v1/roles/{}/users", role["id"].as_str().unwrap())).await.body["items"], json!([]));
    s.user("LEAVER").await;
}

#[tokio::test]
async fn roles_have_members_and_grant_apps() {
    let s = TestServer::start().await;
    let r = s.post("/api/v1/roles", json!({"name": "Engineering", "description": "Builders"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let rid = r.body["id"].as_str().unwrap().to_owned();
    s.post("/api/v1/roles", json!({"name": "engineering"})).await.problem_field(409, "name");
    s.post("/api/v1/roles", json!({"name": "  "})).await.problem_field(422, "name");
    let u = s.user("linus").await;
    let uid = u["id"].as_str().unwrap();
    let app = s.post("/api/v1/apps", app_body("Wiki", "secret-token-1")).await.body;
    let aid = app["id"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(s.put(&format!("/api/v1/roles/{rid}/users/{uid}")).await.status, StatusCode::NO_CONTENT);
        assert_eq!(s.put(&format!("/api/v1/roles/{rid}/apps/{aid}")).await.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(s.get(&format!("/api/v1/users/{uid}/roles")).await.body["items"][0]["name"], "Engineering");
    assert_eq!(s.get(&format!("/api/v1/roles/{rid}/apps")).await.body["items"][0]["name"], "Wiki");
    assert_eq!(s.get(&format!("/api/v1/apps/{aid}/roles")).await.body["items"][0]["id"], rid.as_str());
    s.put(&format!("/api/v1/roles/{rid}/users/{}", uuid::Uuid::now_v7())).await.problem(404);
    s.put(&format!("/api/v1/roles/{}/apps/{aid}", uuid::Uuid::now_v7())).await.problem(404);
    let renamed = s.patch(&format!("/api/v1/roles/{rid}"), json!({"name": "Platform"})).await;
    assert_eq!(
        (renamed.body["name"].as_str(), renamed.body["description"].as_str()),
        (Some("Platform"), Some("Builders"))
    );
    assert_eq!(s.get("/api/v1/roles?q=plat").await.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(s.delete(&format!("/api/v1/roles/{rid}/users/{uid}")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.delete(&format!("/api/v1/roles/{rid}/users/{uid}")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.delete(&format!("/api/v1/roles/{rid}/apps/{aid}")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.get(&format!("/api/v1/users/{uid}/roles")).await.body["items"], json!([]));
    assert_eq!(s.delete(&format!("/api/v1/roles/{rid}")).await.status, StatusCode::NO_CONTENT);
    s.get(&format!("/api/v1/roles/{rid}")).await.problem(404);
}

#[tokio::test]
async fn app_credentials_are_write_only() {
    let s = TestServer::start().await;
    let secret = "sup3r-s3cret-bearer-value";
    let a = s.post("/api/v1/apps", app_body("Wiki", secret)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
    assert_eq!(a.body["connection"]["auth"], json!({"type": "bearer"}));
    assert_eq!(
        a.body["provisioning"],
        json!({"enabled": true, "approval": {"create": true, "update": false, "delete": false},
        "on_suspend": "suspend", "on_delete": "none", "max_concurrency": 4, "create_missing_groups": false,
        "group_chunk_size": 100, "lookup_before_create": true,
        "deprovision_guard": {"max_count": 50, "max_percent": 10, "window_minutes": 60}, "rate_limit": null})
    );
    let id = a.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/apps/{id}");
    // Kept when left out of a patch that keeps the scheme, host and port (see secrets.rs for moves).
    let p = s.patch(&path, json!({"connection": {"base_url": "https://wiki.example.com/scim/v3"}})).await;
    assert_eq!(p.status, StatusCode::OK, "{p:#?}");
    assert_eq!(
        s.state.service.app_secret(id.parse().unwrap()).await.unwrap(),
        directory::Secret::Bearer { token: secret.into() }
    );
    // Another type needs its own secret.
    s.patch(&path, json!({"connection": {"auth": {"type": "basic", "username": "svc"}}}))
        .await
        .problem_field(422, "connection.auth.password");
    let basic = s
        .patch(&path, json!({"connection": {"auth": {"type": "basic", "username": "svc", "password": "pw-123456"}}}))
        .await;
    assert_eq!(basic.body["connection"]["auth"], json!({"type": "basic", "username": "svc"}));
    let oauth = s.post("/api/v1/apps", json!({"name": "CRM", "connection": {"base_url": "https://crm.example.com/scim",
        "auth": {"type": "oauth2_client_credentials", "token_url": "https://crm.example.com/oauth/token", "client_id": "abc",
        "client_secret": "cs-secret-value", "scope": "scim"}}})).await;
    assert_eq!(
        oauth.body["connection"]["auth"],
        json!({"type": "oauth2_client_credentials",
        "token_url": "https://crm.example.com/oauth/token", "client_id": "abc", "scope": "scim"})
    );
    assert_eq!(oauth.body["provisioning"]["enabled"], false, "provisioning is off until enabled");
    // Nothing the API answers carries a secret.
    let listing = s.get("/api/v1/apps").await.body.to_string()
        + &s.get("/api/v1/audit?limit=500").await.body.to_string()
        + &s.get(&path).await.body.to_string();
    for needle in [secret, "pw-123456", "cs-secret-value"] {
        assert!(!listing.contains(needle), "{needle} leaked");
    }
    // Bad input names the field.
    let mut bad = app_body("Bad", "t");
    bad["connection"]["base_url"] = json!("ftp://files.example.com");
    s.post("/api/v1/apps", bad).await.problem_field(422, "connection.base_url");
    let mut bad = app_body("Bad", "t");
    bad["provisioning"]["on_suspend"] = json!("explode");
    s.post("/api/v1/apps", bad).await.problem_field(422, "provisioning.on_suspend");
    let mut bad = app_body("Bad", "t");
    bad["connection"]["auth"] = json!({"type": "bearer"});
    s.post("/api/v1/apps", bad).await.problem_field(422, "connection.auth.token");
    let mut bad = app_body("Bad", "t");
    bad["connection"]["auth"]["tokn"] = json!("typo");
    s.post("/api/v1/apps", bad).await.problem_field(422, "connection.auth.tokn");
    let mut bad = app_body("Bad", "t");
    bad["provisioning"]["approval"]["craete"] = json!(true);
    s.post("/api/v1/apps", bad).await.problem_field(422, "provisioning.approval.craete");
    s.post("/api/v1/apps", app_body("wiki", "t")).await.problem_field(409, "name");
    s.patch(&path, json!({"created_at": "2020-01-01T00:00:00Z"})).await.problem_field(422, "created_at");
    assert_eq!(s.delete(&path).await.status, StatusCode::NO_CONTENT);
    s.get(&path).await.problem(404);
}

#[tokio::test]
async fn every_write_is_audited_and_fed_to_the_engine() {
    let s = TestServer::start().await;
    let u = s.user("ada").await;
    let uid = u["id"].as_str().unwrap();
    let role = s.post("/api/v1/roles", json!({"name": "R"})).await.body;
    let rid = role["id"].as_str().unwrap();
    let app = s.post("/api/v1/apps", app_body("A", "secret-in-audit?")).await.body;
    let aid = app["id"].as_str().unwrap();
    s.patch(&format!("/api/v1/users/{uid}"), json!({"title": "CTO"})).await;
    s.put(&format!("/api/v1/roles/{rid}/users/{uid}")).await;
    s.put(&format!("/api/v1/roles/{rid}/apps/{aid}")).await;
    s.patch(
        &format!("/api/v1/apps/{aid}"),
        json!({"connection": {"auth": {"type": "bearer", "token": "rotated-secret"}}}),
    )
    .await;
    let audit = s.get("/api/v1/audit").await.body;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions[..7],
        ["app.update", "role.add_app", "role.add_user", "user.update", "app.create", "role.create", "user.create"]
    );
    let update = &audit["items"][3];
    assert_eq!(update["actor"], json!({"kind": "token", "name": "admin"}));
    assert_eq!(update["target_id"], uid);
    assert_eq!(update["before"]["title"], Value::Null);
    assert_eq!(update["after"]["title"], "CTO");
    assert_eq!(audit["items"][0]["after"]["credential_changed"], true);
    let text = audit.to_string();
    assert!(!text.contains("secret-in-audit") && !text.contains("rotated-secret"));
    let filtered = s.get(&format!("/api/v1/audit?target_type=user&target_id={uid}")).await.body;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 2);
    // The change feed has one entry per write, in order.
    let changes = s.state.service.store().changes_after(0, 100).await.unwrap();
    let kinds: Vec<&str> = changes.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["user", "role", "app", "user", "role_membership", "role_app", "app"]);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let s = TestServer::start().await;
    s.get("/api/v1/nothing-here").await.problem(404);
    let a = s.call(Method::PUT, "/api/v1/users", Some(json!({}))).await;
    a.problem(405);
}
