//! Parameters, rules and entitlements end to end, against the real scim2-server.

use crate::support::Backend;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::engine::World;

fn enabled() -> Value {
    json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})
}

impl World {
    async fn make_group(&self, name: &str) -> String {
        let g = self
            .app_call(
                Method::POST,
                "/Groups",
                Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name})),
            )
            .await;
        g["id"].as_str().unwrap().to_owned()
    }

    async fn members(&self, group: &str) -> Vec<String> {
        let g = self.app_call(Method::GET, &format!("/Groups/{group}"), None).await;
        g["members"]
            .as_array()
            .map(|m| m.iter().map(|x| x["value"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    async fn refresh(&self) -> Value {
        let r = self.s.post(&format!("/api/v1/apps/{}/entitlements/refresh", self.app), json!({})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:#?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let e = self.s.get(&format!("/api/v1/apps/{}/entitlements?limit=500", self.app)).await.body;
            if e["refresh"]["state"] != "running" {
                assert_eq!(e["refresh"]["state"], "done", "{e:#}");
                return e;
            }
            assert!(Instant::now() < deadline, "refresh did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn user_with(&self, body: Value) -> String {
        let u = self.s.post("/api/v1/users", body).await;
        assert_eq!(u.status, StatusCode::CREATED, "{u:#?}");
        u.body["id"].as_str().unwrap().to_owned()
    }
}

fn seed_rules() -> Value {
    json!([
        {"name": "Sales group", "match": "all",
         "conditions": [{"attribute": "department", "op": "equals", "value": "Sales"}],
         "actions": [{"add_entitlement": {"type": "group", "value": "Sales and Marketing"}}]},
        {"name": "Engineering group", "conditions": [{"attribute": "department", "op": "equals", "value": "Engineering"}],
         "actions": [{"add_entitlement": {"type": "group", "value": "Engineering Team"}}]},
        {"name": "No contractors", "match": "any",
         "conditions": [{"attribute": "title", "op": "contains", "value": "Contractor"}],
         "actions": [{"do_not_provision": true}]}
    ])
}

async fn the_seeds_example_sales_joins_sales_and_marketing_and_moves_with_the_department(backend: Backend) {
    let w = World::new_on(backend, enabled()).await;
    let sales = w.make_group("Sales and Marketing").await;
    let eng = w.make_group("Engineering Team").await;
    let refreshed = w.refresh().await;
    assert_eq!(refreshed["items"].as_array().unwrap().len(), 2);
    let put = w.s.call(Method::PUT, &format!("/api/v1/apps/{}/rules", w.app), Some(seed_rules())).await;
    assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    let u = w.user_with(json!({"username": "sally", "department": "Sales", "first_name": "Sally"})).await;
    w.grant(&u).await;
    w.settled(&u, "provisioned").await;
    let remote = w.in_app("sally").await[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(w.members(&sales).await, vec![remote.clone()], "Sales is in Sales and Marketing");
    assert!(w.members(&eng).await.is_empty());
    let explain = w.s.get(&format!("/api/v1/users/{u}/apps/{}/explain", w.app)).await.body;
    assert_eq!(explain["in_scope"], true);
    assert_eq!(explain["groups"], json!(["Sales and Marketing"]));
    assert_eq!(explain["provenance"]["group:Sales and Marketing"], "rule 'Sales group'");
    assert_eq!(explain["provenance"]["userName"], "parameter 1 (username)");
    assert_eq!(explain["account"]["userName"], "sally");

    // Her department changes: the engine moves her to the right group by itself.
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"department": "Engineering"})).await;
    w.event_until(&u, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    assert!(w.members(&sales).await.is_empty(), "removed from Sales and Marketing");
    assert_eq!(w.members(&eng).await, vec![remote]);
}

async fn a_scoping_rule_deprovisions_per_on_delete(backend: Backend) {
    let w = World::new_on(backend, enabled()).await;
    w.make_group("Sales and Marketing").await;
    w.make_group("Engineering Team").await;
    w.refresh().await;
    w.s.call(Method::PUT, &format!("/api/v1/apps/{}/rules", w.app), Some(seed_rules())).await;
    let u = w.user_with(json!({"username": "casey", "title": "Engineer"})).await;
    w.grant(&u).await;
    w.settled(&u, "provisioned").await;
    assert_eq!(w.in_app("casey").await.len(), 1);
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"title": "Contractor"})).await;
    w.event_until(&u, |e| e["action"] == "delete" && e["status"] == "deleted").await;
    assert!(w.in_app("casey").await.is_empty());
    let explain = w.s.get(&format!("/api/v1/users/{u}/apps/{}/explain", w.app)).await.body;
    assert_eq!(explain["in_scope"], false);
    assert!(explain["reason"].as_str().unwrap().contains("No contractors"), "{explain:#}");
}

async fn parameters_map_attributes_and_only_on_create_values_are_kept(backend: Backend) {
    let w = World::new_on(backend, enabled()).await;
    let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let params = json!([
        {"app_attribute": "userName", "source": {"attribute": "username"}},
        {"app_attribute": "name.givenName", "source": {"attribute": "first_name"}},
        {"app_attribute": "nickName", "source": {"template": "{first_name}.{last_name}", "transform": ["lower"]}, "only_on_create": true},
        {"app_attribute": format!("{ent}:department"), "source": {"attribute": "department"}},
        {"app_attribute": "userType", "source": {"constant": "Employee"}, "required": true},
        {"app_attribute": "emails[type eq \"work\"].value", "source": {"attribute": "email"}},
    ]);
    let put = w.s.call(Method::PUT, &format!("/api/v1/apps/{}/parameters", w.app), Some(params)).await;
    assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    let u = w.user_with(json!({"username": "ada", "first_name": "Ada", "last_name": "Lovelace", "department": "R&D", "email": "ada@example.com"})).await;
    w.grant(&u).await;
    w.settled(&u, "provisioned").await;
    let acc = &w.in_app("ada").await[0];
    assert_eq!((acc["nickName"].as_str(), acc["userType"].as_str()), (Some("ada.lovelace"), Some("Employee")));
    assert_eq!(acc[ent]["department"], "R&D");
    assert_eq!(acc["emails"][0]["value"], "ada@example.com");
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"first_name": "Augusta", "department": "Math"})).await;
    w.event_until(&u, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    let acc = &w.in_app("ada").await[0];
    assert_eq!(acc["name"]["givenName"], "Augusta");
    assert_eq!(acc[ent]["department"], "Math");
    assert_eq!(acc["nickName"], "ada.lovelace", "only-on-create values are not overwritten");

    // Back to the default mapping: the app's own parameters are dropped and the user re-planned.
    let reset = w.s.call(Method::DELETE, &format!("/api/v1/apps/{}/parameters", w.app), None).await;
    assert_eq!(reset.status, StatusCode::OK, "{reset:#?}");
    assert_eq!(reset.body, w.s.get(&format!("/api/v1/apps/{}/parameters", w.app)).await.body);
    assert_eq!(reset.body[0]["app_attribute"], "userName");
    assert!(reset.body.as_array().unwrap().iter().all(|p| p["app_attribute"] != "userType"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.in_app("ada").await[0]["userType"].is_null() {
        assert!(Instant::now() < deadline, "the app still has the dropped parameter's value");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.in_app("ada").await[0]["name"]["givenName"], "Augusta", "the default mapping applies");
}

async fn an_empty_required_value_fails_the_event_and_sends_nothing(backend: Backend) {
    let w = World::new_on(backend, enabled()).await;
    let params = json!([
        {"app_attribute": "userName", "source": {"attribute": "username"}},
        {"app_attribute": "phoneNumbers[type eq \"work\"].value", "source": {"attribute": "phone"}, "required": true},
    ]);
    w.s.call(Method::PUT, &format!("/api/v1/apps/{}/parameters", w.app), Some(params)).await;
    let u = w.user_with(json!({"username": "nophone"})).await;
    w.grant(&u).await;
    let e = w.settled(&u, "failed").await;
    assert!(e["reason"].as_str().unwrap().contains("phoneNumbers"), "{e:#}");
    assert!(w.in_app("nophone").await.is_empty());
    // Filling in the value provisions the user.
    w.s.patch(&format!("/api/v1/users/{u}"), json!({"phone": "+1 555 0100"})).await;
    w.event_until(&u, |e| e["status"] == "provisioned").await;
    assert_eq!(w.in_app("nophone").await[0]["phoneNumbers"][0]["value"], "+1 555 0100");
}

async fn bad_parameters_and_rules_are_refused_naming_the_field(backend: Backend) {
    let w = World::new_on(backend, enabled()).await;
    let bad = json!([{"app_attribute": "userName", "source": {"attribute": "shoe_size"}}]);
    let a = w.s.call(Method::PUT, &format!("/api/v1/apps/{}/parameters", w.app), Some(bad)).await;
    a.problem_field(422, "parameters[0].source.attribute");
    let bad = json!([{"app_attribute": "title", "source": {"template": "{first_name"}}]);
    let a = w.s.call(Method::PUT, &format!("/api/v1/apps/{}/parameters", w.app), Some(bad)).await;
    a.problem_field(422, "parameters[0].source.template");
    let bad = json!([{"name": "r", "conditions": [{"attribute": "title", "op": "matches", "value": "(["}], "actions": [{"do_not_provision": true}]}]);
    let a = w.s.call(Method::PUT, &format!("/api/v1/apps/{}/rules", w.app), Some(bad)).await;
    assert!(a.problem_field(422, "rules[0].conditions[0].value").contains("regular expression"));
    let a =
        w.s.call(
            Method::PUT,
            &format!("/api/v1/apps/{}/rules", w.app),
            Some(json!([{"name": "x", "actions": [{"explode": true}]}])),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{a:#?}");
    // Nothing was saved: the defaults are still in effect.
    let p = w.s.get(&format!("/api/v1/apps/{}/parameters", w.app)).await.body;
    assert_eq!(p[0]["app_attribute"], "userName");
    assert_eq!(w.s.get(&format!("/api/v1/apps/{}/rules", w.app)).await.body, json!([]));
}

async fn plan_shows_what_a_change_would_do_without_doing_it(backend: Backend) {
    let w = World::new_on(backend, enabled()).await;
    w.make_group("Sales and Marketing").await;
    w.make_group("Engineering Team").await;
    w.refresh().await;
    let mut users = Vec::new();
    for (name, dept, title) in [
        ("s1", "Sales", "Rep"),
        ("s2", "Sales", "Rep"),
        ("e1", "Engineering", "Dev"),
        ("c1", "Engineering", "Contractor"),
    ] {
        let u = w.user_with(json!({"username": name, "department": dept, "title": title})).await;
        w.grant(&u).await;
        users.push(u);
    }
    for u in &users {
        w.settled(u, "provisioned").await;
    }
    let before: usize = w.s.get(&format!("/api/v1/events?app={}", w.app)).await.body["items"].as_array().unwrap().len();
    let plan = w.s.post(&format!("/api/v1/apps/{}/plan", w.app), json!({"rules": seed_rules()})).await;
    assert_eq!(plan.status, StatusCode::OK, "{plan:#?}");
    let p = plan.body;
    assert_eq!(
        (p["create"].as_u64(), p["update"].as_u64(), p["deprovision"].as_u64()),
        (Some(0), Some(3), Some(1)),
        "{p:#}"
    );
    assert_eq!((p["group_add"].as_u64(), p["group_remove"].as_u64()), (Some(3), Some(0)), "{p:#}");
    let sample = p["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 4);
    let s1 = sample.iter().find(|x| x["username"] == "s1").unwrap();
    assert_eq!(s1["action"], "update");
    assert_eq!(s1["after"]["urn:provisioner:entitlements:group"], json!(["Sales and Marketing"]));
    assert!(s1["before"]["urn:provisioner:entitlements:group"].is_null());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: usize = w.s.get(&format!("/api/v1/events?app={}", w.app)).await.body["items"].as_array().unwrap().len();
    assert_eq!(before, after, "a plan writes nothing");
    assert_eq!(w.s.get(&format!("/api/v1/apps/{}/rules", w.app)).await.body, json!([]));
    w.s.post(&format!("/api/v1/apps/{}/plan", w.app), json!({"rules": [{"name": "x", "actions": []}]}))
        .await
        .problem(422);
}

async fn refresh_imports_a_thousand_groups_with_progress_and_blocks_nothing(backend: Backend) {
    let w = World::new_on(backend, enabled()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/Groups", w.scim.base_url);
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let (client, url, token) = (client.clone(), url.clone(), w.http_token);
        tasks.push(tokio::spawn(async move {
            for i in (chunk * 125)..((chunk + 1) * 125) {
                let r = client.post(&url).bearer_auth(token).header("content-type", "application/scim+json")
                    .body(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": format!("Team {i:04}")}).to_string())
                    .send().await.unwrap();
                assert!(r.status().is_success());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = w.s.post(&format!("/api/v1/apps/{}/entitlements/refresh", w.app), json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // While it runs: a second refresh is refused, and the rest of the API answers.
    let again = w.s.post(&format!("/api/v1/apps/{}/entitlements/refresh", w.app), json!({})).await;
    let status = w.s.get(&format!("/api/v1/apps/{}/entitlements", w.app)).await.body;
    if status["refresh"]["state"] == "running" {
        again.problem(409);
    }
    assert_eq!(w.s.get("/api/v1/users").await.status, StatusCode::OK);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let e = w.s.get(&format!("/api/v1/apps/{}/entitlements?limit=1", w.app)).await.body;
        seen.push(e["refresh"]["fetched"].as_i64().unwrap());
        if e["refresh"]["state"] == "done" {
            break e;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (done["refresh"]["fetched"].as_i64(), done["refresh"]["total"].as_i64()),
        (Some(1000), Some(1000)),
        "{done:#}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {seen:?}");
    // Every value is listed, page by page.
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/apps/{}/entitlements?limit=500&cursor={c}", w.app),
            None => format!("/api/v1/apps/{}/entitlements?limit=500", w.app),
        };
        let page = w.s.get(&path).await.body;
        names.extend(page["items"].as_array().unwrap().iter().map(|e| e["display_name"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(names.len(), 1000);
    assert_eq!(names[0], "Team 0000");
}

async fn missing_groups_are_created_when_allowed_and_attribute_entitlements_are_set(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": true, "create_missing_groups": true})).await;
    let rules = json!([{"name": "Everyone", "conditions": [],
        "actions": [{"add_entitlement": {"type": "group", "value": "Brand New Team"}},
                    {"add_entitlement": {"type": "roles", "value": "reader"}}]}]);
    w.s.call(Method::PUT, &format!("/api/v1/apps/{}/rules", w.app), Some(rules)).await;
    let u = w.user_with(json!({"username": "newbie"})).await;
    w.grant(&u).await;
    w.settled(&u, "provisioned").await;
    let acc = &w.in_app("newbie").await[0];
    assert_eq!(acc["roles"], json!([{"value": "reader"}]));
    let groups = w.app_call(Method::GET, "/Groups?filter=displayName%20eq%20%22Brand%20New%20Team%22", None).await;
    let group = &groups["Resources"][0];
    assert_eq!(w.members(group["id"].as_str().unwrap()).await, vec![acc["id"].as_str().unwrap().to_owned()]);
    let listed = w.s.get(&format!("/api/v1/apps/{}/entitlements", w.app)).await.body;
    assert_eq!(listed["items"][0]["display_name"], "Brand New Team");

    // Without create_missing_groups, an unknown group fails the event and says which.
    w.s.patch(&format!("/api/v1/apps/{}", w.app), json!({"provisioning": {"create_missing_groups": false}})).await;
    let rules = json!([{"name": "Ghost", "conditions": [], "actions": [{"add_entitlement": {"type": "group", "value": "Ghost Team"}}]}]);
    w.s.call(Method::PUT, &format!("/api/v1/apps/{}/rules", w.app), Some(rules)).await;
    let e = w.event_until(&u, |e| e["status"] == "failed").await;
    assert!(e["reason"].as_str().unwrap().contains("Ghost Team"), "{e:#}");
    assert!(e["recommended_action"].as_str().unwrap().contains("Refresh"));
}

crate::on_both_backends!(
    the_seeds_example_sales_joins_sales_and_marketing_and_moves_with_the_department,
    a_scoping_rule_deprovisions_per_on_delete,
    parameters_map_attributes_and_only_on_create_values_are_kept,
    an_empty_required_value_fails_the_event_and_sends_nothing,
    bad_parameters_and_rules_are_refused_naming_the_field,
    plan_shows_what_a_change_would_do_without_doing_it,
    refresh_imports_a_thousand_groups_with_progress_and_blocks_nothing,
    missing_groups_are_created_when_allowed_and_attribute_entitlements_are_set,
);
