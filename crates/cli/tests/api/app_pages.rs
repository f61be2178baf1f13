//! Apps as they really are (issue 16): the test kit's SCIM app with its misbehaviours, and the
//! engine reading it: page integrity, proven absence, idempotent memberships.

use reqwest::Method;
use serde_json::{json, Value};
use testkit::{ScimApp, ScimAppOptions, Switches};

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
