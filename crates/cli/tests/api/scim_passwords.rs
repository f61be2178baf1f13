//! Passwords are write-only secrets (issue 20): a SCIM client's `password` becomes the person's
//! sign-in password and is never shown again; custom attributes cannot take a SCIM attribute's
//! name; a custom attribute is deleted only once nothing uses it.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::saml::{saml_settings, World};
use crate::scim_server::{patch_body, scim_error};
use crate::support::{answer, Answer, Backend, TestServer};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const FIRST: &str = "correct horse battery staple";
const SECOND: &str = "a second long passphrase";
const THIRD: &str = "and a third one, as long";
const SHORT: &str = "tiny-pw";

/// A SCIM client of the service `s`.
struct Client<'a> {
    s: &'a TestServer,
    token: String,
    id: String,
}

impl<'a> Client<'a> {
    async fn new(s: &'a TestServer, scope: Value) -> Self {
        let c = s.post("/api/v1/scim-clients", json!({"name": "Okta", "scope": scope})).await;
        assert_eq!(c.status, StatusCode::CREATED, "{c:#?}");
        Self { s, token: c.body["token"].as_str().unwrap().to_owned(), id: c.body["id"].as_str().unwrap().to_owned() }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut req = self.s.client.request(method, self.s.url(&format!("/scim/v2{path}"))).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/scim+json").body(b.to_string());
        }
        answer(req.send().await.unwrap()).await
    }

    async fn patch(&self, path: &str, ops: Value) -> Answer {
        self.call(Method::PATCH, path, Some(patch_body(ops))).await
    }
}

/// Everything the admin API and SCIM show of a user and of the audit log, as text: no password
/// may be in it.
async fn everything_shown(w: &World, c: &Client<'_>, id: &str) -> String {
    let mut out = String::new();
    for path in [format!("/Users/{id}"), format!("/Users/{id}?attributes=password"), "/Users".to_owned()] {
        out.push_str(&c.call(Method::GET, &path, None).await.body.to_string());
    }
    for path in [format!("/api/v1/users/{id}"), "/api/v1/users".to_owned(), "/api/v1/audit?limit=500".to_owned()] {
        out.push_str(&w.s.get(&path).await.body.to_string());
    }
    out
}

/// Okta's "Sync password": the password a client sends on create, PATCH or PUT signs the person
/// in at `/login` (and so into SAML apps); it is written with the rest of the user or not at
/// all, checked by the password policy, and never returned, logged or audited.
async fn a_scim_password_signs_in_and_is_never_shown(backend: Backend) {
    let w = World::new(backend, saml_settings(json!({}))).await;
    let c = Client::new(&w.s, json!({"users": "all"})).await;

    // Okta's create: userName, name, emails, locale-free, with a password.
    let created = c
        .call(
            Method::POST,
            "/Users",
            Some(json!({"schemas": [USER], "userName": "ada", "name": {"givenName": "Ada", "familyName": "Lovelace"},
                "emails": [{"value": "ada@example.com", "type": "work", "primary": true}], "active": true,
                "password": FIRST})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:#?}");
    assert!(created.body.get("password").is_none(), "{created:#?}");
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/Users/{id}");
    w.s.put(&format!("/api/v1/roles/{}/users/{id}", w.role)).await;
    w.login("ada", FIRST, "/").await.expect("the password sent by SCIM signs in");

    // The schema says so: write-only, never returned; and no filter reads it.
    let schema = c.call(Method::GET, &format!("/Schemas/{USER}"), None).await.body;
    let attr = schema["attributes"].as_array().unwrap().iter().find(|a| a["name"] == "password").unwrap().clone();
    assert_eq!((&attr["mutability"], &attr["returned"]), (&json!("writeOnly"), &json!("never")));
    let filtered = c.call(Method::GET, &format!("/Users?filter=password%20eq%20%22{}%22", "x"), None).await;
    scim_error(&filtered, 400, Some("invalidFilter"));

    // PATCH: a password and a title in one request do both.
    let a = c
        .patch(&path, json!([{"op": "replace", "path": "password", "value": SECOND}, {"op": "replace", "path": "title", "value": "Countess"}]))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    assert_eq!(a.body["title"], "Countess");
    assert!(a.body.get("password").is_none());
    let version = a.body["meta"]["version"].clone();
    assert_eq!(w.login("ada", FIRST, "/").await.unwrap_err().0, StatusCode::UNAUTHORIZED, "the old one no longer");
    w.login("ada", SECOND, "/").await.expect("the new password");

    // ... or nothing: a password the policy refuses (said without repeating it) keeps the title.
    let a = c
        .patch(&path, json!([{"op": "replace", "path": "title", "value": "Engineer"}, {"op": "replace", "value": {"password": SHORT}}]))
        .await;
    scim_error(&a, 400, Some("invalidValue"));
    let detail = a.body["detail"].as_str().unwrap();
    assert!(detail.contains("password") && detail.contains("12 characters") && !detail.contains(SHORT), "{detail}");
    assert_eq!(c.call(Method::GET, &path, None).await.body["title"], "Countess");
    w.login("ada", SECOND, "/").await.expect("still the second password");
    let bad = c.patch(&path, json!([{"op": "replace", "path": "password", "value": 12345678901234_u64}])).await;
    scim_error(&bad, 400, Some("invalidValue"));

    // A path-less PATCH of the password alone: the user itself is unchanged (same version).
    let a = c.patch(&path, json!([{"op": "replace", "value": {"password": THIRD}}])).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    assert_eq!(a.body["meta"]["version"], version);
    w.login("ada", THIRD, "/").await.expect("the third password");

    // PUT, Okta's way of updating: the whole user, with a password.
    let mut whole = c.call(Method::GET, &path, None).await.body;
    whole["password"] = json!(FIRST);
    whole["title"] = json!("Analyst");
    let a = c.call(Method::PUT, &path, Some(whole)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    assert_eq!(a.body["title"], "Analyst");
    w.login("ada", FIRST, "/").await.expect("the password sent with PUT");

    // Nowhere to be seen; the audit log says "password set", in the same entries for every writer.
    let shown = everything_shown(&w, &c, &id).await;
    for secret in [FIRST, SECOND, THIRD, SHORT] {
        assert!(!shown.contains(secret), "{secret} is shown: {shown}");
    }
    assert!(!shown.contains("argon2"), "nor its hash");
    let audit = w.s.get(&format!("/api/v1/audit?target_type=user&target_id={id}&limit=500")).await.body;
    let set: Vec<&Value> =
        audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "user.password.set").collect();
    assert_eq!(set.len(), 4, "create, PATCH, PATCH, PUT: {audit:#}");
    assert!(set.iter().all(|e| e["after"] == json!({"password": "set"}) && e["actor"]["name"] == "Okta"), "{audit:#}");

    // A client whose scope says `passwords: false` is refused (403, audited), and may still
    // change everything else.
    let a = w.s.patch(&format!("/api/v1/scim-clients/{}", c.id), json!({"scope": {"passwords": false}})).await;
    assert_eq!((a.status, &a.body["scope"]["passwords"]), (StatusCode::OK, &json!(false)), "{a:#?}");
    let a = c.patch(&path, json!([{"op": "replace", "path": "password", "value": SECOND}])).await;
    scim_error(&a, 403, None);
    w.login("ada", FIRST, "/").await.expect("unchanged");
    let a = c.patch(&path, json!([{"op": "replace", "path": "title", "value": "Mathematician"}])).await;
    assert_eq!(a.status, StatusCode::OK, "{a:#?}");
    let refused = w.s.get(&format!("/api/v1/audit?target_type=user&target_id={id}")).await.body;
    let refusal = refused["items"].as_array().unwrap().iter().find(|e| e["action"] == "scim.refused").unwrap();
    assert!(refusal.to_string().contains("may not set passwords") && !refusal.to_string().contains(SECOND));
}

/// A person whose sign-in is checked against an LDAP source has no password here: a SCIM
/// client setting one is refused with `mutability`, naming the source; the directory password
/// keeps working.
#[tokio::test]
async fn a_password_for_a_user_signing_in_against_ldap_is_refused_naming_the_source() {
    use crate::ldap::{create_source, openldap_source, sync, user_named};
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    let slapd = testkit::Slapd::start();
    slapd.add(&testkit::Slapd::person_ldif("ada", "Ada", "Lovelace", &[]));
    let source = create_source(&w.s, openldap_source(&slapd, json!({}))).await;
    assert_eq!(sync(&w.s, &source, "full").await["state"], "succeeded");
    let ada = user_named(&w.s, "ada").await;
    let id = ada["id"].as_str().unwrap();
    w.s.put(&format!("/api/v1/roles/{}/users/{id}", w.role)).await;
    let c = Client::new(&w.s, json!({"users": "source", "source_id": source})).await;

    for ops in [
        json!([{"op": "replace", "path": "password", "value": FIRST}]),
        json!([{"op": "replace", "value": {"password": FIRST, "externalId": "okta-ada"}}]),
    ] {
        let a = c.patch(&format!("/Users/{id}"), ops).await;
        scim_error(&a, 400, Some("mutability"));
        let detail = a.body["detail"].as_str().unwrap();
        assert!(detail.contains("password") && detail.contains("Corp LDAP") && !detail.contains(FIRST), "{detail}");
    }
    assert!(
        c.call(Method::GET, &format!("/Users/{id}"), None).await.body.get("externalId").is_none(),
        "nothing written"
    );
    assert_eq!(w.login("ada", FIRST, "/").await.unwrap_err().0, StatusCode::UNAUTHORIZED);
    w.login("ada", "ada-pw", "/").await.expect("the directory password still signs in");
    let audit = w.s.get(&format!("/api/v1/audit?target_type=user&target_id={id}")).await.body.to_string();
    assert!(audit.contains("scim.refused") && !audit.contains(FIRST), "{audit}");
}

/// A custom attribute cannot take the name of a SCIM core or enterprise attribute (in any case,
/// camelCase or snake_case), nor `password`; each refusal says why.
#[tokio::test]
async fn custom_attributes_named_like_scim_attributes_are_refused() {
    let s = TestServer::start().await;
    for name in [
        "password",
        "PASSWORD",
        "nickname",
        "nick_name",
        "preferred_language",
        "phone_numbers",
        "cost_center",
        "x509_certificates",
        "profile_url",
        "user_type",
        "middle_name",
        "honorific_prefix",
        "locale",
        "timezone",
        "addresses",
        "entitlements",
        "roles",
        "organization",
        "division",
        "manager",
    ] {
        let a = s.post("/api/v1/attributes", json!({"name": name, "type": "string"})).await;
        let reason = a.problem_field(422, "name");
        if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            let why = ["SCIM attribute", "never a custom attribute", "standard user attribute"];
            assert!(why.iter().any(|w| reason.contains(w)), "{name}: {reason}");
        }
    }
    let reason =
        s.post("/api/v1/attributes", json!({"name": "password", "type": "string"})).await.problem_field(422, "name");
    assert!(reason.contains("never a custom attribute"), "{reason}");
    let reason = s
        .post("/api/v1/attributes", json!({"name": "preferred_language", "type": "string"}))
        .await
        .problem_field(422, "name");
    assert!(reason.contains("`preferredLanguage`"), "{reason}");
    assert_eq!(s.get("/api/v1/attributes").await.body["items"], json!([]));
    let ok = s.post("/api/v1/attributes", json!({"name": "cost_code", "type": "string"})).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{ok:#?}");
}

/// `DELETE /api/v1/attributes/{name}` refuses while the attribute is in use, naming the number of
/// users holding a value and every parameter, rule and directory source using it; once they are
/// gone it removes the definition (audited).
async fn deleting_an_attribute_in_use_is_refused_naming_each_use(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    assert_eq!(
        s.post("/api/v1/attributes", json!({"name": "cost_code", "type": "string"})).await.status,
        StatusCode::CREATED
    );
    let mut users = Vec::new();
    for name in ["ada", "grace"] {
        let u = s.post("/api/v1/users", json!({"username": name, "attributes": {"cost_code": "4130"}})).await;
        assert_eq!(u.status, StatusCode::CREATED, "{u:#?}");
        users.push(u.body["id"].as_str().unwrap().to_owned());
    }
    let app = s
        .post(
            "/api/v1/apps",
            json!({"name": "Wiki", "connection": {"base_url": "http://127.0.0.1:9/scim/v2", "auth": {"type": "bearer", "token": "t"}}}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let params = json!([{"app_attribute": "userName", "source": {"attribute": "username"}},
        {"app_attribute": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:costCenter", "source": {"attribute": "cost_code"}}]);
    let put = s.call(Method::PUT, &format!("/api/v1/apps/{app}/parameters"), Some(params)).await;
    assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    let rules = json!([{"name": "Finance", "conditions": [{"attribute": "cost_code", "op": "equals", "value": "4130"}],
        "actions": [{"add_entitlement": {"type": "group", "value": "Finance"}}]}]);
    let put = s.call(Method::PUT, &format!("/api/v1/apps/{app}/rules"), Some(rules)).await;
    assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    let source = s
        .post(
            "/api/v1/sources",
            json!({"name": "Corp LDAP", "kind": "ldap", "flavor": "openldap", "url": "ldap://127.0.0.1:9", "bind_dn": "cn=r",
                "bind_password": "pw", "base_dn": "dc=example,dc=com", "attributes": {"cost_code": "departmentNumber"}, "schedule": 0}),
        )
        .await;
    assert_eq!(source.status, StatusCode::CREATED, "{source:#?}");

    let a = s.delete("/api/v1/attributes/cost_code").await;
    assert!(a.problem_field(409, "users").contains("2 user(s)"), "{a:#?}");
    assert!(a.problem_field(409, "parameters").contains("\"Wiki\""), "{a:#?}");
    assert!(a.problem_field(409, "rules").contains("rule \"Finance\", condition 1"), "{a:#?}");
    assert!(a.problem_field(409, "sources").contains("\"Corp LDAP\""), "{a:#?}");
    assert_eq!(s.get("/api/v1/attributes").await.body["items"].as_array().unwrap().len(), 1, "nothing changed");

    // Remove each use; the last holder of a value is deleted (deleted users keep no value).
    s.patch(&format!("/api/v1/users/{}", users[0]), json!({"attributes": {"cost_code": null}})).await;
    assert_eq!(s.delete(&format!("/api/v1/users/{}", users[1])).await.status, StatusCode::NO_CONTENT);
    s.delete(&format!("/api/v1/apps/{app}/parameters")).await;
    s.call(Method::PUT, &format!("/api/v1/apps/{app}/rules"), Some(json!([]))).await;
    let a = s.delete("/api/v1/attributes/cost_code").await;
    a.problem_field(409, "sources");
    assert!(a.body["errors"].as_array().unwrap().len() == 1, "only the source is left: {a:#?}");
    let src = source.body["id"].as_str().unwrap();
    assert_eq!(s.delete(&format!("/api/v1/sources/{src}")).await.status, StatusCode::NO_CONTENT);

    let a = s.delete("/api/v1/attributes/cost_code").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:#?}");
    assert_eq!(s.get("/api/v1/attributes").await.body["items"], json!([]));
    let gone = s.get("/api/v1/users?status=deleted").await.body;
    assert!(!gone.to_string().contains("4130"), "{gone:#}");
    let audit = s.get("/api/v1/audit?target_type=attribute&target_id=cost_code").await.body;
    assert_eq!(audit["items"][0]["action"], "attribute.delete", "{audit:#}");
    s.delete("/api/v1/attributes/cost_code").await.problem(404);
}

crate::on_both_backends!(
    a_scim_password_signs_in_and_is_never_shown,
    deleting_an_attribute_in_use_is_refused_naming_each_use
);
