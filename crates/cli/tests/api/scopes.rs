//! Scoped SCIM clients and API tokens: what a SCIM client may see and change, refusals in the
//! audit log, API tokens listed and revoked, and tokens stored before keyed lookups.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use store::scim::{ScimClientRecord, ScimScope};
use uuid::Uuid;

use crate::scim_server::{scim_error, Scim};
use crate::support::{Backend, TestServer};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

/// The `scim.refused` audit entries about `target_id`.
async fn refusals(s: &TestServer, target_id: &str) -> Vec<Value> {
    let a = s.get(&format!("/api/v1/audit?target_id={target_id}")).await;
    a.body["items"].as_array().unwrap().iter().filter(|e| e["action"] == "scim.refused").cloned().collect()
}

/// The usernames of a role's members, sorted (as the admin API lists them).
async fn members(s: &TestServer, role: &str) -> Vec<String> {
    let a = s.get(&format!("/api/v1/roles/{role}/users")).await;
    let mut n: Vec<String> =
        a.body["items"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap().to_owned()).collect();
    n.sort();
    n
}

fn user_names(a: &crate::support::Answer) -> Vec<String> {
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    a.body["Resources"].as_array().unwrap().iter().map(|r| r["userName"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_new_client_sees_only_the_users_it_created() {
    let c = Scim::start_scoped(Backend::Sqlite, json!({})).await;
    let listed = c.s.get("/api/v1/scim-clients").await;
    assert_eq!(
        listed.body["items"][0]["scope"],
        json!({"users": "own", "roles": "own", "read_only": false, "passwords": true})
    );
    assert_eq!(listed.body["items"][0]["legacy_scope"], false);
    let ada = c.s.user("ada").await;
    let ada_id = ada["id"].as_str().unwrap();
    let mine = c.create_user(json!({"schemas": [USER], "userName": "pushed"})).await;
    // The admin's user does not exist for this client, whatever it does.
    let path = format!("/Users/{ada_id}");
    scim_error(&c.get(&path).await, 404, None);
    scim_error(&c.patch(&path, json!([{"op": "replace", "path": "title", "value": "x"}])).await, 404, None);
    scim_error(&c.call(Method::PUT, &path, Some(json!({"schemas": [USER], "userName": "ada"}))).await, 404, None);
    scim_error(&c.call(Method::DELETE, &path, None).await, 404, None);
    assert_eq!(user_names(&c.get("/Users").await), ["pushed"]);
    assert_eq!(user_names(&c.get("/Users?filter=userName%20eq%20%22ada%22").await), Vec::<String>::new());
    let search = c.call(Method::POST, "/Users/.search", Some(json!({"filter": "userName pr"}))).await;
    assert_eq!(user_names(&search), ["pushed"]);
    assert_eq!(search.body["totalResults"], 1);
    // Its own user it reads and changes.
    let own = c
        .patch(
            &format!("/Users/{}", mine["id"].as_str().unwrap()),
            json!([{"op": "replace", "path": "title", "value": "Nurse"}]),
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{own:#?}");
    // Nor can it name the admin's user as a manager: the same answer as for an id that does not exist.
    let manager = |id: &str| {
        json!([{"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
                "value": {"value": id}}])
    };
    let own_path = format!("/Users/{}", mine["id"].as_str().unwrap());
    let named = c.patch(&own_path, manager(ada_id)).await;
    scim_error(&named, 400, Some("invalidValue"));
    let nobody_id = Uuid::now_v7().to_string();
    let nobody = c.patch(&own_path, manager(&nobody_id)).await;
    scim_error(&nobody, 400, Some("invalidValue"));
    assert_eq!(
        named.body["detail"].as_str().unwrap().replace(ada_id, "ID"),
        nobody.body["detail"].as_str().unwrap().replace(&nobody_id, "ID")
    );
    // Nothing changed; each refusal is audited with the client's name, never a token.
    let a = c.s.get(&format!("/api/v1/users/{ada_id}")).await;
    assert_eq!((a.status, a.body["version"].clone()), (StatusCode::OK, ada["version"].clone()));
    let refused = refusals(&c.s, ada_id).await;
    assert_eq!(refused.len(), 5, "GET, PATCH, PUT, DELETE, named as a manager: {refused:#?}");
    assert_eq!(refused[0]["actor"], json!({"kind": "scim_client", "name": "Entra ID"}));
    assert_eq!(refused[0]["after"]["client"], "Entra ID");
    assert!(refused[0]["after"]["reason"].as_str().unwrap().contains("out of the client's scope"));
    assert!(!refused[0].to_string().contains(&c.token));
}

#[tokio::test]
async fn a_source_scoped_client_sees_that_sources_users_only() {
    let s = TestServer::start().await;
    let src = s
        .post(
            "/api/v1/sources",
            json!({"name": "Corp", "flavor": "openldap", "url": "ldap://127.0.0.1:1", "bind_dn": "cn=r,dc=example,dc=com",
               "bind_password": "pw", "base_dn": "dc=example,dc=com"}),
        )
        .await;
    assert_eq!(src.status, StatusCode::CREATED, "{src:#?}");
    let src_id: Uuid = src.body["id"].as_str().unwrap().parse().unwrap();
    // One person imported from the source (as a sync writes them), one made by an admin.
    let imported = directory::User::new(
        directory::UserInput { username: "imported".into(), ..Default::default() },
        directory::UserSource::Ldap,
        directory::now(),
    );
    let link = directory::SourceLink {
        source_id: src_id,
        user_id: imported.id,
        stable_id: "id-1".into(),
        dn: "uid=imported,dc=example,dc=com".into(),
        suspended_by_source: false,
    };
    let batch = directory::SourceBatch { creates: vec![(imported.clone(), link)], ..Default::default() };
    let source = s.state.service.get_source(src_id).await.unwrap();
    s.state.service.source_writer().apply_source_batch(&source, batch, &directory::Actor::cli()).await.unwrap();
    s.user("local").await;
    let missing = s.post("/api/v1/scim-clients", json!({"name": "HR", "scope": {"users": "source"}})).await;
    missing.problem_field(422, "scope.source_id");
    let unknown = s
        .post("/api/v1/scim-clients", json!({"name": "HR", "scope": {"users": "source", "source_id": Uuid::now_v7()}}))
        .await;
    unknown.problem_field(422, "scope.source_id");
    let c =
        s.post("/api/v1/scim-clients", json!({"name": "HR", "scope": {"users": "source", "source_id": src_id}})).await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:#?}");
    assert_eq!(c.body["scope"]["source_id"], src_id.to_string());
    let token = c.body["token"].as_str().unwrap();
    let list = s.call_with(Method::GET, "/scim/v2/Users", None, Some(token), &[]).await;
    assert_eq!(user_names(&list), ["imported"]);
    let one = s.call_with(Method::GET, &format!("/scim/v2/Users/{}", imported.id), None, Some(token), &[]).await;
    assert_eq!(one.status, StatusCode::OK, "{one:#?}");

    // A field the source fills (here `title`, a default mapping) is read-only to a SCIM client,
    // as it is to an admin: refused with `mutability`, audited, nothing written. A field the
    // source does not fill (`phoneNumbers`) is the client's to change, and sending the whole
    // user back unchanged (PUT) is accepted.
    let path = format!("/scim/v2/Users/{}", imported.id);
    let ops = |ops: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let refused = s
        .call_with(
            Method::PATCH,
            &path,
            Some(ops(json!([{"op": "replace", "path": "title", "value": "Boss"}]))),
            Some(token),
            &[],
        )
        .await;
    scim_error(&refused, 400, Some("mutability"));
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("title") && detail.contains("Corp"), "{detail}");
    let stored = s.get(&format!("/api/v1/users/{}", imported.id)).await;
    assert_eq!((stored.body["title"].as_str(), stored.body["version"].as_i64()), (None, Some(imported.version)));
    let audited = refusals(&s, &imported.id.to_string()).await;
    assert_eq!(audited.len(), 1, "{audited:#?}");
    assert!(audited[0]["after"]["reason"].as_str().unwrap().contains("Corp"), "{audited:#?}");
    // A field the source does not fill stays the client's to change.
    let phone = s
        .call_with(
            Method::PATCH,
            &path,
            Some(ops(
                json!([{"op": "add", "path": "phoneNumbers", "value": [{"type": "home", "value": "+1 555 0100"}]}]),
            )),
            Some(token),
            &[],
        )
        .await;
    assert_eq!(phone.status, StatusCode::OK, "{phone:#?}");
    let stored = s.get(&format!("/api/v1/users/{}", imported.id)).await.body;
    assert_eq!(stored["phone_numbers"][0]["value"], "+1 555 0100", "{stored:#}");
    // ... but not a value the source fills (its work number, from telephoneNumber).
    let work = s
        .call_with(
            Method::PATCH,
            &path,
            Some(ops(
                json!([{"op": "add", "path": "phoneNumbers", "value": [{"type": "work", "value": "+1 555 0199"}]}]),
            )),
            Some(token),
            &[],
        )
        .await;
    assert_eq!(work.status, StatusCode::BAD_REQUEST, "{work:#?}");
    assert!(work.body["detail"].as_str().unwrap().contains("phoneNumbers[type eq \"work\"].value"), "{work:#?}");
    let same = s.call_with(Method::PUT, &path, Some(phone.body.clone()), Some(token), &[]).await;
    assert_eq!(same.status, StatusCode::OK, "{same:#?}");
}

#[tokio::test]
async fn pushes_reach_only_own_or_pushable_roles_and_refusals_are_audited() {
    let c = Scim::start_scoped(Backend::Sqlite, json!({"roles": "pushable"})).await;
    let staff = c.s.post("/api/v1/roles", json!({"name": "Staff"})).await;
    assert_eq!(staff.body["pushable"], false, "{staff:#?}");
    let staff_id = staff.body["id"].as_str().unwrap().to_owned();
    let ada = c.s.user("ada").await;
    let ada_id = ada["id"].as_str().unwrap().to_owned();
    let pushed = c.create_user(json!({"schemas": [USER], "userName": "pushed"})).await;
    let pushed_id = pushed["id"].as_str().unwrap().to_owned();
    // Not pushable, not its own: invisible, so no member can be added (and no app granted).
    let group = format!("/Groups/{staff_id}");
    let add = json!([{"op": "add", "path": "members", "value": [{"value": pushed_id}]}]);
    scim_error(&c.patch(&group, add.clone()).await, 404, None);
    assert!(c.get("/Groups").await.body["Resources"].as_array().unwrap().is_empty());
    assert!(members(&c.s, &staff_id).await.is_empty());
    let refused = refusals(&c.s, &staff_id).await;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["after"]["client"], "Entra ID");
    // Marked pushable by an admin: the client pushes into it; members it cannot see stay.
    let p = c.s.patch(&format!("/api/v1/roles/{staff_id}"), json!({"pushable": true})).await;
    assert_eq!((p.status, p.body["pushable"].clone()), (StatusCode::OK, json!(true)), "{p:#?}");
    assert_eq!(c.s.put(&format!("/api/v1/roles/{staff_id}/users/{ada_id}")).await.status, StatusCode::NO_CONTENT);
    let seen = c.get(&group).await;
    assert_eq!(seen.status, StatusCode::OK, "{seen:#?}");
    assert!(seen.body.get("members").is_none(), "ada is out of scope: {seen:#?}");
    let a = c.patch(&group, add).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    assert_eq!(members(&c.s, &staff_id).await, ["ada", "pushed"]);
    let put = c
        .call(
            Method::PUT,
            &group,
            Some(json!({"schemas": [GROUP], "displayName": "Staff", "members": [{"value": pushed_id}]})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    assert_eq!(members(&c.s, &staff_id).await, ["ada", "pushed"], "a replace keeps the members the client cannot see");
    // An out-of-scope user cannot be named as a member, even of its own group.
    let own = c.create_group("Pushed", &[]).await;
    let own_path = format!("/Groups/{}", own["id"].as_str().unwrap());
    let bad = c.patch(&own_path, json!([{"op": "add", "path": "members", "value": [{"value": ada_id}]}])).await;
    scim_error(&bad, 400, Some("invalidValue"));
    assert_eq!(refusals(&c.s, own["id"].as_str().unwrap()).await.len(), 1);
    // A pushable role takes members only: renaming or deleting it needs it to be its own.
    let rename = c.patch(&group, json!([{"op": "replace", "path": "displayName", "value": "Mine now"}])).await;
    scim_error(&rename, 403, None);
    scim_error(&c.call(Method::DELETE, &group, None).await, 403, None);
    assert_eq!(refusals(&c.s, &staff_id).await.len(), 3);
    let renamed = c.patch(&own_path, json!([{"op": "replace", "path": "displayName", "value": "Pushed 2"}])).await;
    assert_eq!(renamed.status, StatusCode::OK, "{renamed:#?}");
    assert_eq!(c.call(Method::DELETE, &own_path, None).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_read_only_client_cannot_write() {
    let c = Scim::start_scoped(Backend::Sqlite, json!({"users": "all", "roles": "all", "read_only": true})).await;
    let ada = c.s.user("ada").await;
    let path = format!("/Users/{}", ada["id"].as_str().unwrap());
    assert_eq!(c.get(&path).await.status, StatusCode::OK);
    assert_eq!(user_names(&c.call(Method::POST, "/Users/.search", Some(json!({}))).await), ["ada"]);
    scim_error(&c.call(Method::POST, "/Users", Some(json!({"schemas": [USER], "userName": "x"}))).await, 403, None);
    scim_error(&c.patch(&path, json!([{"op": "replace", "path": "title", "value": "x"}])).await, 403, None);
    scim_error(&c.call(Method::DELETE, &path, None).await, 403, None);
    let g = json!({"schemas": [GROUP], "displayName": "G"});
    scim_error(&c.call(Method::POST, "/Groups", Some(g)).await, 403, None);
    let audit = c.s.get("/api/v1/audit").await;
    let refused: Vec<&Value> =
        audit.body["items"].as_array().unwrap().iter().filter(|e| e["action"] == "scim.refused").collect();
    assert_eq!(refused.len(), 4);
    assert!(refused
        .iter()
        .all(|e| e["after"]["reason"] == "the client is read-only" && e["actor"]["name"] == "Entra ID"));
    assert_eq!(c.s.get(&format!("/api/v1{}", path.replace("/Users", "/users"))).await.status, StatusCode::OK);
}

/// A client stored before scopes (its token found by the old unkeyed SHA-256 lookup) keeps
/// scope `all`, is flagged until an admin sets its scope, and its token keeps working.
#[tokio::test]
async fn a_client_from_before_scopes_keeps_all_and_is_flagged_until_narrowed() {
    let s = TestServer::start().await;
    let token = "prvscim_old-client-token-from-before-0123456789";
    let store = s.state.service.store();
    let legacy_lookup = server::tokens::legacy_lookup_key(token);
    let record = ScimClientRecord {
        id: Uuid::now_v7(),
        name: "Old IdP".into(),
        lookup: legacy_lookup.clone(),
        hash: server::tokens::hash(token).unwrap(),
        created_at: directory::now(),
        revoked_at: None,
        scope: ScimScope::ALL,
        legacy_scope: true,
    };
    store.create_scim_client(&record, &directory::Actor::system()).await.unwrap();
    let ada = s.user("ada").await;
    let path = format!("/scim/v2/Users/{}", ada["id"].as_str().unwrap());
    assert_eq!(s.call_with(Method::GET, &path, None, Some(token), &[]).await.status, StatusCode::OK);
    assert_eq!(store.find_scim_client_by_lookup(&legacy_lookup).await.unwrap(), None, "re-keyed on use");
    let listed = s.get("/api/v1/scim-clients").await;
    assert_eq!(listed.body["items"][0]["legacy_scope"], true);
    assert_eq!(
        listed.body["items"][0]["scope"],
        json!({"users": "all", "roles": "all", "read_only": false, "passwords": true})
    );
    let narrowed = s.patch(&format!("/api/v1/scim-clients/{}", record.id), json!({"scope": {"users": "own"}})).await;
    assert_eq!(narrowed.status, StatusCode::OK, "{narrowed:#?}");
    assert_eq!(narrowed.body["legacy_scope"], false);
    assert_eq!(narrowed.body["scope"], json!({"users": "own", "roles": "all", "read_only": false, "passwords": true}));
    scim_error(&s.call_with(Method::GET, &path, None, Some(token), &[]).await, 404, None);
    s.patch(&format!("/api/v1/scim-clients/{}", Uuid::now_v7()), json!({"scope": {}})).await.problem(404);
}

#[tokio::test]
async fn api_tokens_are_listed_and_revoked_by_api_never_shown() {
    let s = TestServer::start().await;
    let (ci, ci_token) = s.state.service.create_token("ci", &directory::Actor::cli()).await.unwrap();
    let ok = s.call_with(Method::GET, "/api/v1/users", None, Some(&ci_token), &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
    let list = s.get("/api/v1/tokens").await;
    assert_eq!(list.status, StatusCode::OK);
    let names: Vec<&str> = list.body["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "ci"]);
    let ci_row = &list.body["items"][1];
    assert_eq!(ci_row["id"], ci.id.to_string());
    assert!(ci_row["created_at"].is_string() && ci_row["last_used_at"].is_string(), "{ci_row}");
    let text = list.body.to_string();
    assert!(!text.contains(&ci_token) && !text.contains(crate::support::TOKEN) && !text.contains("argon2"));
    let del = s.delete(&format!("/api/v1/tokens/{}", ci.id)).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{del:#?}");
    s.call_with(Method::GET, "/api/v1/users", None, Some(&ci_token), &[]).await.problem(401);
    s.delete(&format!("/api/v1/tokens/{}", ci.id)).await.problem(404);
    let audit = s.get(&format!("/api/v1/audit?target_id={}", ci.id)).await;
    assert_eq!(audit.body["items"][0]["action"], "token.revoke");
}

/// A token stored with the old unkeyed lookup (before the upgrade) still works, and its row
/// is re-keyed: the old lookup finds nothing afterwards.
#[tokio::test]
async fn an_api_token_from_before_keyed_lookups_still_works() {
    let s = TestServer::start().await;
    let token = "prv_operator-chosen-token-from-before";
    let store = s.state.service.store();
    let legacy = server::tokens::legacy_lookup_key(token);
    let record = store::TokenRecord {
        id: Uuid::now_v7(),
        name: "old".into(),
        lookup: legacy.clone(),
        hash: server::tokens::hash(token).unwrap(),
        created_at: directory::now(),
        revoked_at: None,
        last_used_at: None,
    };
    store.create_token(&record, &directory::Actor::cli()).await.unwrap();
    assert_eq!(s.call_with(Method::GET, "/api/v1/users", None, Some(token), &[]).await.status, StatusCode::OK);
    assert_eq!(store.find_token_by_lookup(&legacy).await.unwrap(), None);
    let keyed = s.state.service.token_lookup(token);
    assert_eq!(keyed.len(), 64);
    assert_eq!(store.find_token_by_lookup(&keyed).await.unwrap().unwrap().id, record.id);
    // And it is found by its new lookup once no verification is cached (a revocation clears them).
    let (other, _) = s.state.service.create_token("other", &directory::Actor::cli()).await.unwrap();
    s.state.service.revoke_token(other.id, &directory::Actor::cli()).await.unwrap();
    assert_eq!(s.call_with(Method::GET, "/api/v1/users", None, Some(token), &[]).await.status, StatusCode::OK);
}
