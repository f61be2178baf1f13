//! `POST /scim/v2/.search` (RFC 7644 section 3.4.3): one search across Users and Groups, with
//! filters, sorting, paging and attribute selection as on each type, within the client's scope.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::scim_server::{scim_error, Scim};
use crate::support::{Answer, Backend};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const SEARCH: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

async fn search(c: &Scim, body: Value) -> Answer {
    let mut body = body;
    body["schemas"] = json!([SEARCH]);
    c.call(Method::POST, "/.search", Some(body)).await
}

/// A successful root search: its total, and its resources (each checked to say its type).
#[track_caller]
fn resources(a: &Answer) -> (u64, Vec<Value>) {
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    assert_eq!(a.content_type, "application/scim+json");
    assert_eq!(a.body["schemas"], json!([LIST]), "{a:#?}");
    let list = a.body["Resources"].as_array().cloned().unwrap_or_default();
    assert_eq!(a.body["itemsPerPage"], list.len(), "{a:#?}");
    for r in &list {
        let schema = match r["meta"]["resourceType"].as_str() {
            Some("User") => USER,
            Some("Group") => GROUP,
            other => panic!("resource type {other:?}: {r:#?}"),
        };
        assert!(r["schemas"].as_array().unwrap().contains(&json!(schema)), "{r:#?}");
        assert!(r["id"].is_string(), "{r:#?}");
    }
    (a.body["totalResults"].as_u64().unwrap(), list)
}

/// How a resource is named in these tests: a user by its userName, a group by its displayName.
fn label(r: &Value) -> String {
    let key = if r["meta"]["resourceType"] == "User" { "userName" } else { "displayName" };
    r[key].as_str().unwrap_or("?").to_owned()
}

fn labels(list: &[Value]) -> Vec<String> {
    list.iter().map(label).collect()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

async fn user(c: &Scim, name: &str, display: Option<&str>) -> String {
    let mut body = json!({"schemas": [USER], "userName": name});
    if let Some(d) = display {
        body["displayName"] = json!(d);
    }
    c.create_user(body).await["id"].as_str().unwrap().to_owned()
}

async fn paging_across_the_boundary(backend: Backend) {
    let c = Scim::start(backend).await;
    for name in ["ann", "bob", "cyd"] {
        user(&c, name, None).await;
    }
    c.create_group("Ops", &[]).await;
    c.create_group("Dev", &[]).await;
    // Without sortBy: the users as /Users lists them, then the groups as /Groups does.
    let mut expected = ids(c.get("/Users?count=500").await.body["Resources"].as_array().unwrap());
    expected.extend(ids(c.get("/Groups?count=500").await.body["Resources"].as_array().unwrap()));
    assert_eq!(expected.len(), 5);
    let (total, all) = resources(&search(&c, json!({})).await);
    assert_eq!((total, ids(&all)), (5, expected.clone()));
    let mut paged = vec![];
    for start in [1, 3, 5] {
        let a = search(&c, json!({"startIndex": start, "count": 2})).await;
        let (total, page) = resources(&a);
        assert_eq!((total, a.body["startIndex"].as_u64()), (5, Some(start)), "{a:#?}");
        paged.extend(ids(&page));
    }
    assert_eq!(paged, expected);
    // A page of one user and one group, a page of groups only, past the end, and counts only.
    let (_, page) = resources(&search(&c, json!({"startIndex": 3, "count": 2})).await);
    assert_eq!(
        page.iter().map(|r| r["meta"]["resourceType"].clone()).collect::<Vec<_>>(),
        [json!("User"), json!("Group")]
    );
    let (_, page) = resources(&search(&c, json!({"startIndex": 4, "count": 100})).await);
    assert_eq!(ids(&page), expected[3..]);
    let (total, page) = resources(&search(&c, json!({"startIndex": 9})).await);
    assert_eq!((total, page.len()), (5, 0));
    let (total, page) = resources(&search(&c, json!({"count": 0})).await);
    assert_eq!((total, page.len()), (5, 0));
    // Root search is POST only.
    scim_error(&c.get("/.search").await, 405, None);
}

async fn filters_apply_to_each_type(backend: Backend) {
    let c = Scim::start(backend).await;
    user(&c, "ann", Some("Team Ann")).await;
    user(&c, "bob", None).await;
    c.create_group("Team Ops", &[]).await;
    c.create_group("Dev", &[]).await;
    let found = |filter: &'static str| {
        let c = &c;
        async move {
            let (total, list) = resources(&search(c, json!({"filter": filter})).await);
            assert_eq!(total as usize, list.len(), "{filter}");
            let mut l = labels(&list);
            l.sort();
            l
        }
    };
    // An attribute only users have: only users.
    assert_eq!(found(r#"userName eq "ann""#).await, ["ann"]);
    assert_eq!(found("userName pr").await, ["ann", "bob"]);
    assert_eq!(found(r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "b""#).await, ["bob"]);
    // Only groups have members; what a type lacks has no value there.
    assert_eq!(found("not (userName pr)").await, ["Dev", "Team Ops"]);
    assert_eq!(found("members pr or userName eq \"bob\"").await, ["bob"]);
    // An attribute both have: both.
    assert_eq!(found(r#"displayName sw "team""#).await, ["Team Ops", "ann"]);
    assert_eq!(found(r#"meta.resourceType eq "Group""#).await, ["Dev", "Team Ops"]);
    assert_eq!(found(r#"userName eq "ann" or displayName eq "dev""#).await, ["Dev", "ann"]);
    assert_eq!(found(r#"userName eq "ann" and displayName eq "dev""#).await, Vec::<String>::new());
}

async fn sorted_search_merges_users_and_groups(backend: Backend) {
    // A new client's default scope: what it creates, nothing else.
    let c = Scim::start_scoped(backend, json!({})).await;
    user(&c, "u-bravo", Some("Bravo")).await;
    user(&c, "u-delta", Some("Delta")).await;
    user(&c, "u-none", None).await;
    for g in ["alpha", "Charlie", "Echo"] {
        c.create_group(g, &[]).await;
    }
    let sorted = |by: &'static str, order: &'static str, start: u64, count: u64| {
        let c = &c;
        async move {
            let a = search(c, json!({"sortBy": by, "sortOrder": order, "startIndex": start, "count": count})).await;
            let (total, list) = resources(&a);
            assert_eq!(total, 6, "{a:#?}");
            labels(&list)
        }
    };
    // A value both have: merged, without case, the user without one last.
    let ascending = ["alpha", "u-bravo", "Charlie", "u-delta", "Echo", "u-none"];
    assert_eq!(sorted("displayName", "ascending", 1, 100).await, ascending);
    assert_eq!(sorted("displayName", "ascending", 2, 3).await, ascending[1..4]);
    assert_eq!(sorted("displayName", "ascending", 5, 3).await, ascending[4..]);
    let mut descending = ascending;
    descending.reverse();
    assert_eq!(sorted("displayName", "descending", 1, 100).await, descending);
    assert_eq!(sorted("displayName", "descending", 3, 2).await, descending[2..4]);
    // Sorted by creation: the order things were made in.
    assert_eq!(
        sorted("meta.created", "ascending", 1, 100).await,
        ["u-bravo", "u-delta", "u-none", "alpha", "Charlie", "Echo"]
    );
    // A value only users have: the users sorted, then the groups (before them when descending).
    let list = sorted("userName", "ascending", 1, 100).await;
    assert_eq!(list[..3], ["u-bravo", "u-delta", "u-none"]);
    let mut groups = list[3..].to_vec();
    groups.sort();
    assert_eq!(groups, ["Charlie", "Echo", "alpha"]);
    let list = sorted("userName", "descending", 1, 100).await;
    assert_eq!(list[3..], ["u-none", "u-delta", "u-bravo"]);
    assert_eq!(sorted("userName", "descending", 3, 2).await[1], "u-none");
}

async fn a_client_sees_only_its_scope(backend: Backend) {
    let a = Scim::start_scoped(backend, json!({})).await;
    user(&a, "mine", None).await;
    a.create_group("My group", &[]).await;
    // An admin's user and role, and another client's: out of scope.
    let made = a.s.post("/api/v1/users", json!({"username": "admins"})).await;
    assert_eq!(made.status, StatusCode::CREATED, "{made:#?}");
    let made = a.s.post("/api/v1/roles", json!({"name": "Admins' role"})).await;
    assert_eq!(made.status, StatusCode::CREATED, "{made:#?}");
    let other = a.s.post("/api/v1/scim-clients", json!({"name": "Okta", "scope": {}})).await;
    let other_token = other.body["token"].as_str().unwrap().to_owned();
    let as_other = |body: Value| a.s.call_with(Method::POST, "/scim/v2/.search", Some(body), Some(&other_token), &[]);
    let r =
        a.s.call_with(
            Method::POST,
            "/scim/v2/Users",
            Some(json!({"schemas": [USER], "userName": "theirs"})),
            Some(&other_token),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:#?}");
    for filter in [None, Some("userName pr or displayName pr")] {
        let body = filter.map_or(json!({}), |f| json!({"filter": f}));
        let (total, list) = resources(&search(&a, body.clone()).await);
        assert_eq!((total, labels(&list)), (2, vec!["mine".to_owned(), "My group".to_owned()]), "{filter:?}");
        let (total, list) = resources(&as_other(body).await);
        assert_eq!((total, labels(&list)), (1, vec!["theirs".to_owned()]), "{filter:?}");
    }
    // Sorted (merged) too.
    let (total, list) = resources(&search(&a, json!({"sortBy": "displayName"})).await);
    assert_eq!((total, labels(&list)), (2, vec!["My group".to_owned(), "mine".to_owned()]));
    // What it sees everywhere: scope `all` sees the admin's user and role too.
    let all = a.s.post("/api/v1/scim-clients", json!({"name": "All", "scope": {"users": "all", "roles": "all"}})).await;
    let all_token = all.body["token"].as_str().unwrap().to_owned();
    let r = a.s.call_with(Method::POST, "/scim/v2/.search", Some(json!({})), Some(&all_token), &[]).await;
    let (total, list) = resources(&r);
    let mut l = labels(&list);
    l.sort();
    assert_eq!(
        (total, l),
        (5, vec!["Admins' role", "My group", "admins", "mine", "theirs"].into_iter().map(str::to_owned).collect())
    );
}

async fn attributes_apply_to_each_type(backend: Backend) {
    let c = Scim::start(backend).await;
    user(&c, "ann", Some("Ann")).await;
    c.create_group("Ops", &[]).await;
    let (_, list) = resources(&search(&c, json!({"attributes": ["userName"]})).await);
    assert_eq!(list[0]["userName"], "ann");
    assert!(list[0].get("displayName").is_none(), "{list:#?}");
    // A group has no userName: it keeps what is always returned, and says its type.
    let group = list[1].as_object().unwrap();
    let mut keys: Vec<&str> = group.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["id", "meta", "schemas"], "{group:#?}");
    assert_eq!(group["meta"], json!({"resourceType": "Group"}));
    let (_, list) = resources(&search(&c, json!({"excludedAttributes": "displayName,meta"})).await);
    assert!(list.iter().all(|r| r.get("displayName").is_none()), "{list:#?}");
    assert_eq!((list[0]["userName"].as_str(), list[1]["meta"]["resourceType"].as_str()), (Some("ann"), Some("Group")));
    let (_, list) = resources(&search(&c, json!({"attributes": "members,userName"})).await);
    assert_eq!(labels(&list)[0], "ann");
}

async fn bad_input_is_refused(backend: Backend) {
    let c = Scim::start(backend).await;
    for (body, scim_type) in [
        (json!({"filter": "nosuch eq \"x\""}), "invalidFilter"),
        (json!({"filter": "userName eq"}), "invalidFilter"),
        (json!({"filter": "userName eq \"a\" or (nope pr)"}), "invalidFilter"),
        (json!({"filter": "emails[nope eq \"x\"]"}), "invalidFilter"),
        (json!({"filter": "meta.created gt \"yesterday\""}), "invalidFilter"),
        (json!({"sortBy": "nosuch"}), "invalidValue"),
        (json!({"sortBy": "members"}), "invalidValue"),
        (json!({"sortOrder": "upwards"}), "invalidValue"),
        (json!({"startIndex": "one"}), "invalidValue"),
        (json!({"attributes": "nosuch"}), "invalidValue"),
        (json!({"attributes": "userName", "excludedAttributes": "displayName"}), "invalidValue"),
    ] {
        let a = search(&c, body.clone()).await;
        assert_eq!(a.status.as_u16(), 400, "{body}: {a:#?}");
        scim_error(&a, 400, Some(scim_type));
    }
    let a = c.call(Method::POST, "/.search", Some(json!(["not an object"]))).await;
    scim_error(&a, 400, Some("invalidSyntax"));
}

crate::on_both_backends!(
    paging_across_the_boundary,
    filters_apply_to_each_type,
    sorted_search_merges_users_and_groups,
    a_client_sees_only_its_scope,
    attributes_apply_to_each_type,
    bad_input_is_refused,
);
