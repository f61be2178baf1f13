//! The OpenAPI document is generated from the routes and covers all of them.

use reqwest::{Method, StatusCode};

use crate::support::TestServer;

#[tokio::test]
async fn openapi_document_covers_every_route() {
    let s = TestServer::start().await;
    s.call_with(Method::GET, "/api/v1/openapi.json", None, None, &[]).await.problem(401);
    let doc = s.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let expected: &[(&str, &[&str])] = &[
        ("/api/v1/users", &["get", "post"]),
        ("/api/v1/users/{id}", &["get", "patch", "delete"]),
        ("/api/v1/users/{id}/roles", &["get"]),
        ("/api/v1/roles", &["get", "post"]),
        ("/api/v1/roles/{id}", &["get", "patch", "delete"]),
        ("/api/v1/roles/{id}/users", &["get"]),
        ("/api/v1/roles/{id}/users/{user_id}", &["put", "delete"]),
        ("/api/v1/roles/{id}/apps", &["get"]),
        ("/api/v1/roles/{id}/apps/{app_id}", &["put", "delete"]),
        ("/api/v1/apps", &["get", "post"]),
        ("/api/v1/apps/{id}", &["get", "patch", "delete"]),
        ("/api/v1/apps/{id}/roles", &["get"]),
        ("/api/v1/attributes", &["get", "post"]),
        ("/api/v1/attributes/{name}", &["delete"]),
        ("/api/v1/audit", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
        ("/api/v1/apps/{id}/connection/test", &["post"]),
        ("/api/v1/apps/{id}/health", &["get"]),
        ("/api/v1/apps/{id}/resume", &["post"]),
        ("/api/v1/apps/{id}/accounts", &["get"]),
        ("/api/v1/users/{id}/accounts", &["get"]),
        ("/api/v1/apps/{id}/accounts/{user_id}/rematch", &["post"]),
        ("/api/v1/apps/{id}/reconcile", &["post"]),
        ("/api/v1/apps/{id}/reads", &["get"]),
        ("/api/v1/users/{id}/provision", &["post"]),
        ("/api/v1/events", &["get"]),
        ("/api/v1/events/{id}", &["get"]),
        ("/api/v1/events/{id}/approve", &["post"]),
        ("/api/v1/events/{id}/reject", &["post"]),
        ("/api/v1/events/{id}/retry", &["post"]),
        ("/api/v1/events/{id}/requeue", &["post"]),
        ("/api/v1/apps/{id}/held", &["get"]),
        ("/api/v1/apps/{id}/held/allow", &["post"]),
        ("/api/v1/apps/{id}/held/reject", &["post"]),
        ("/api/v1/apps/{id}/parameters", &["get", "put", "delete"]),
        ("/api/v1/apps/{id}/rules", &["get", "put"]),
        ("/api/v1/apps/{id}/plan", &["post"]),
        ("/api/v1/users/{id}/apps/{app_id}/explain", &["get"]),
        ("/api/v1/apps/{id}/entitlements", &["get"]),
        ("/api/v1/apps/{id}/entitlements/refresh", &["post"]),
        ("/api/v1/apps/{id}/remote-accounts", &["get"]),
        ("/api/v1/apps/{id}/saml", &["get", "put"]),
        ("/api/v1/users/{id}/password", &["put"]),
        ("/api/v1/users/{id}/invitations", &["post"]),
        ("/api/v1/users/email-conflicts", &["get"]),
        ("/api/v1/saml/certificates", &["get"]),
        ("/api/v1/saml/certificates/rotate", &["post"]),
        ("/api/v1/saml/certificates/activate", &["post"]),
        ("/api/v1/scim-clients", &["get", "post"]),
        ("/api/v1/scim-clients/{id}", &["patch", "delete"]),
        ("/api/v1/tokens", &["get"]),
        ("/api/v1/tokens/{id}", &["delete"]),
        ("/api/v1/sources", &["get", "post"]),
        ("/api/v1/sources/{id}", &["get", "patch", "delete"]),
        ("/api/v1/sources/{id}/test", &["post"]),
        ("/api/v1/sources/{id}/sync", &["post"]),
        ("/api/v1/sources/{id}/syncs", &["get"]),
        ("/api/v1/sources/{id}/syncs/{sync_id}", &["get"]),
        ("/api/v1/sources/{id}/syncs/{sync_id}/confirm", &["post"]),
        ("/api/v1/users/{id}/source", &["get"]),
    ];
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in expected {
        for m in *methods {
            assert!(paths.get(*path).and_then(|p| p.get(*m)).is_some(), "{m} {path} missing from the document");
        }
    }
    // And nothing is documented that the server does not answer.
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{user_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{app_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{sync_id}", &uuid::Uuid::now_v7().to_string());
        for method in
            item.as_object().unwrap().keys().filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
        {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let a = s.call(m, &concrete, None).await;
            assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !(a.status == StatusCode::NOT_FOUND && a.body["detail"] == "route not found"),
                "{method} {path} is not routed"
            );
        }
    }
    assert_eq!(paths.len(), expected.len());
    assert!(doc["components"]["schemas"]["User"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());

    // Blast radius: the dry runs, settings applied to existing accounts, held events and causes.
    let params = |path: &str, method: &str| -> Vec<String> {
        paths[path][method]["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    for (path, method) in [
        ("/api/v1/users/{id}", "patch"),
        ("/api/v1/users/{id}", "delete"),
        ("/api/v1/roles/{id}", "delete"),
        ("/api/v1/roles/{id}/users/{user_id}", "put"),
        ("/api/v1/roles/{id}/users/{user_id}", "delete"),
        ("/api/v1/roles/{id}/apps/{app_id}", "put"),
        ("/api/v1/roles/{id}/apps/{app_id}", "delete"),
        ("/api/v1/apps/{id}", "patch"),
        ("/api/v1/apps/{id}/parameters", "put"),
        ("/api/v1/apps/{id}/rules", "put"),
        ("/api/v1/sources", "post"),
        ("/api/v1/sources/{id}", "patch"),
        ("/api/v1/sources/{id}", "delete"),
        ("/api/v1/sources/{id}/sync", "post"),
    ] {
        assert!(params(path, method).contains(&"dry_run".to_owned()), "{method} {path}: no dry_run parameter");
    }
    assert!(params("/api/v1/apps/{id}", "patch").contains(&"apply_to_existing".to_owned()));
    assert!(params("/api/v1/events", "get").contains(&"cause".to_owned()));
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["EventStatus"]["enum"].as_array().unwrap().contains(&"held".into()), "{}", schemas["EventStatus"]);
    assert!(schemas["Event"]["properties"]["cause"].is_object(), "{}", schemas["Event"]);
    for field in ["kind", "actor", "audit_id", "summary", "rule", "parameter", "role_id"] {
        assert!(schemas["Cause"]["properties"][field].is_object(), "Cause.{field}: {}", schemas["Cause"]);
    }
    for field in ["effects", "roles"] {
        assert!(schemas["DryRun"]["properties"][field].is_object(), "DryRun.{field}: {}", schemas["DryRun"]);
    }
    for field in
        ["app_id", "app_name", "create", "update", "suspend", "delete", "group_add", "group_remove", "held", "sample"]
    {
        assert!(schemas["Effect"]["properties"][field].is_object(), "Effect.{field}: {}", schemas["Effect"]);
    }
    assert!(schemas["SyncDryRun"].is_object(), "the source dry run is described");
}
