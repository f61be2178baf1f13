//! SCIM `/Bulk` end to end with the engine: an identity provider's first load of a thousand
//! people and the group that holds them, in one request, provisioned into a real SCIM app
//! (PyPI's scim2-server).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{answer, Backend};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
const BULK_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";

/// How many people the bulk creates: with their group, the 1,000 operations a bulk may hold
/// (`bulk.maxOperations`; a thousand users and their group would be 1,001, refused with 413).
const MEMBERS: usize = 999;

/// Every userName in the app, read straight from scim2-server page by page.
async fn user_names_in_app(w: &crate::engine::World) -> BTreeSet<String> {
    let http = reqwest::Client::new();
    let mut names = BTreeSet::new();
    loop {
        let r = http
            .get(format!("{}/Users", w.scim.base_url))
            .bearer_auth(w.http_token)
            .query(&[("attributes", "userName"), ("count", "100"), ("startIndex", &(names.len() + 1).to_string())])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{r:?}");
        let page: Value = r.json().await.unwrap();
        let resources = page["Resources"].as_array().cloned().unwrap_or_default();
        let before = names.len();
        names.extend(resources.iter().filter_map(|u| u["userName"].as_str().map(str::to_lowercase)));
        let total = page["totalResults"].as_u64().unwrap_or(0) as usize;
        if names.len() >= total || names.len() == before {
            return names;
        }
    }
}

/// A group pushed by Bulk with its members, all created in the same request, grants its app:
/// the engine provisions every member into the app. The group comes first in the request and
/// names its members by `bulkId` before they exist (a forward reference, as in RFC 7644
/// section 3.7.2's example), so the server has to create them first.
///
/// SQLite only: the slowest scenario of the suite (a thousand accounts into a Python app); the
/// Bulk endpoint itself is tested on both stores in `scim_bulk`.
#[tokio::test]
async fn a_group_pushed_by_bulk_with_its_new_members_grants_its_app() {
    let w = crate::engine::World::new_on(
        Backend::Sqlite,
        json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"}),
    )
    .await;
    let c = w.s.post("/api/v1/scim-clients", json!({"name": "HR", "scope": {"users": "all", "roles": "all"}})).await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:#?}");
    let token = c.body["token"].as_str().unwrap().to_owned();

    let user_name = |i: usize| format!("bulk{i:04}@example.com");
    let members: Vec<Value> = (0..MEMBERS).map(|i| json!({"value": format!("bulkId:u{i}")})).collect();
    let mut operations = vec![json!({"method": "POST", "path": "/Groups", "bulkId": "g",
        "data": {"schemas": [GROUP], "displayName": "Night shift", "members": members}})];
    operations.extend((0..MEMBERS).map(|i| {
        json!({"method": "POST", "path": "/Users", "bulkId": format!("u{i}"),
            "data": {"schemas": [USER], "userName": user_name(i), "externalId": format!("hr-{i}"),
                "name": {"givenName": "Night", "familyName": format!("Nurse {i}")}, "title": "Nurse",
                "emails": [{"value": user_name(i), "type": "work", "primary": true}], "active": true}})
    }));
    let r =
        w.s.client
            .post(w.s.url("/scim/v2/Bulk"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(json!({"schemas": [BULK_REQUEST], "Operations": operations}).to_string())
            .send()
            .await
            .unwrap();
    let bulk = answer(r).await;
    assert_eq!(bulk.status, StatusCode::OK, "{bulk:#?}");
    assert_eq!(bulk.body["schemas"], json!([BULK_RESPONSE]));

    // An answer per operation: each created, with where it is.
    let results = bulk.body["Operations"].as_array().unwrap();
    assert_eq!(results.len(), MEMBERS + 1);
    let mut location: HashMap<&str, &str> = HashMap::new();
    for r in results {
        assert_eq!((r["method"].as_str(), r["status"].as_str()), (Some("POST"), Some("201")), "{r:#}");
        let at = r["location"].as_str().unwrap_or_else(|| panic!("no location: {r:#}"));
        location.insert(r["bulkId"].as_str().unwrap(), at);
    }
    assert_eq!(location.len(), MEMBERS + 1, "one answer per bulkId");
    let group = location["g"];
    let (base, group_id) = group.rsplit_once('/').unwrap();
    assert!(base.ends_with("/scim/v2/Groups"), "{group}");
    let mut user_ids = BTreeSet::new();
    for i in 0..MEMBERS {
        let (base, id) = location[format!("u{i}").as_str()].rsplit_once('/').unwrap();
        assert!(base.ends_with("/scim/v2/Users"), "{base}");
        user_ids.insert(id.to_owned());
    }
    // The group holds exactly the people created with it.
    let mut held = BTreeSet::new();
    let mut next = format!("/api/v1/roles/{group_id}/users?limit=500");
    loop {
        let page = w.s.get(&next).await;
        assert_eq!(page.status, StatusCode::OK, "{page:#?}");
        held.extend(page.body["items"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(c) => next = format!("/api/v1/roles/{group_id}/users?limit=500&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(held, user_ids);

    // An admin grants the group the app: every member gets an account there.
    assert_eq!(w.s.put(&format!("/api/v1/roles/{group_id}/apps/{}", w.app)).await.status, StatusCode::NO_CONTENT);
    let expected: BTreeSet<String> = (0..MEMBERS).map(user_name).collect();
    // A bound on the wait, not a timing: a thousand creates in a Python app, in a debug build.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let names = user_names_in_app(&w).await;
        if names == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {MEMBERS} accounts in the app; missing e.g. {:?}; unexpected: {:?}",
            names.intersection(&expected).count(),
            expected.difference(&names).next(),
            names.difference(&expected).next()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
