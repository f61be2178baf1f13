//! A SCIM-complete person end to end: values of the attributes RFC 7643 adds beyond the
//! directory's first fields (a mobile and a fax number, a work address, a middle name, a
//! nickname, a preferred language, a user type, enterprise cost center, organization and
//! division) pushed by an identity provider over SCIM, mapped by an app's parameters, used in
//! a rule, provisioned into PyPI's scim2-server, and present in a SAML assertion.

use reqwest::header::COOKIE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::engine::World;
use crate::saml::{hidden, posted, saml_settings, set_cookie, urlencode, PASSWORD};
use crate::support::Backend;

const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// Each new attribute, as a parameter source, to the app attribute it fills.
fn parameters() -> Value {
    json!([
        {"app_attribute": "userName", "source": {"attribute": "username"}},
        {"app_attribute": "emails[type eq \"work\"].value", "source": {"attribute": "email"}},
        {"app_attribute": "name.middleName", "source": {"attribute": "middle_name"}},
        {"app_attribute": "nickName", "source": {"attribute": "nick_name"}},
        {"app_attribute": "preferredLanguage", "source": {"attribute": "preferred_language"}},
        {"app_attribute": "userType", "source": {"attribute": "user_type"}},
        {"app_attribute": "phoneNumbers[type eq \"mobile\"].value",
         "source": {"attribute": "phone_numbers[type eq \"mobile\"].value"}},
        {"app_attribute": "phoneNumbers[type eq \"fax\"].value",
         "source": {"attribute": "phone_numbers[type eq \"fax\"].value"}},
        {"app_attribute": "addresses[type eq \"work\"].locality",
         "source": {"attribute": "addresses[type eq \"work\"].locality"}},
        {"app_attribute": "addresses[type eq \"work\"].postalCode",
         "source": {"attribute": "addresses[type eq \"work\"].postal_code"}},
        {"app_attribute": format!("{ENT}:costCenter"), "source": {"attribute": "cost_center"}},
        {"app_attribute": format!("{ENT}:organization"), "source": {"attribute": "organization"}},
        {"app_attribute": format!("{ENT}:division"),
         "source": {"template": "{division} ({addresses[type eq \"work\"].country})"}},
    ])
}

/// A rule on a new attribute: people whose work address is in Redmond get the site's title.
fn rules() -> Value {
    json!([{"name": "Redmond site", "match": "all",
        "conditions": [{"attribute": "addresses[type eq \"work\"].locality", "op": "equals", "value": "redmond"},
                       {"attribute": "user_type", "op": "equals", "value": "Employee"}],
        "actions": [{"set": {"app_attribute": "title", "value": "Redmond staff"}}]}])
}

async fn a_new_attribute_travels_from_scim_to_the_app_and_into_saml(backend: Backend) {
    let w = World::new_on(backend, json!({"enabled": true, "on_suspend": "suspend", "on_delete": "delete"})).await;
    for (path, body) in [("parameters", parameters()), ("rules", rules())] {
        let put = w.s.call(Method::PUT, &format!("/api/v1/apps/{}/{path}", w.app), Some(body)).await;
        assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    }

    // Pushed by an identity provider, as Entra's default mapping sends a person.
    let client = w.s.post("/api/v1/scim-clients", json!({"name": "Entra ID", "scope": {"users": "all"}})).await;
    assert_eq!(client.status, StatusCode::CREATED, "{client:#?}");
    let token = client.body["token"].as_str().unwrap().to_owned();
    let pushed = w
        .s
        .client
        .post(w.s.url("/scim/v2/Users"))
        .bearer_auth(&token)
        .header("content-type", "application/scim+json")
        .json(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENT],
            "userName": "adele@contoso.com", "active": true, "displayName": "Adele Vance",
            "name": {"givenName": "Adele", "middleName": "J", "familyName": "Vance"},
            "nickName": "Del", "preferredLanguage": "en-US", "userType": "Employee",
            "emails": [{"type": "work", "value": "adele@contoso.com", "primary": true}],
            "phoneNumbers": [{"type": "work", "value": "+1 425 555 0100"}, {"type": "mobile", "value": "+1 425 555 0109"},
                             {"type": "fax", "value": "+1 425 555 0142"}],
            "addresses": [{"type": "work", "streetAddress": "1 Microsoft Way", "locality": "Redmond", "region": "WA",
                           "postalCode": "98052", "country": "US"}],
            ENT: {"costCenter": "CC-7", "organization": "Contoso", "division": "Devices", "department": "Retail"}
        }))
        .send()
        .await
        .unwrap();
    let pushed = crate::support::answer(pushed).await;
    assert_eq!(pushed.status, StatusCode::CREATED, "{pushed:#?}");
    let id = pushed.body["id"].as_str().unwrap().to_owned();
    let dir = w.s.get(&format!("/api/v1/users/{id}")).await.body;
    assert_eq!(dir["phone"], "+1 425 555 0100", "the work number stands for the list: {dir:#}");
    assert_eq!(dir["addresses"][0]["street_address"], "1 Microsoft Way");

    // Provisioned into scim2-server: every mapped value, and the rule's.
    w.grant(&id).await;
    w.settled(&id, "provisioned").await;
    let acc = &w.in_app("adele@contoso.com").await[0];
    let phone = |kind: &str| {
        acc["phoneNumbers"].as_array().unwrap().iter().find(|p| p["type"] == kind).map(|p| p["value"].clone())
    };
    assert_eq!(phone("mobile"), Some(json!("+1 425 555 0109")), "{acc:#}");
    assert_eq!(phone("fax"), Some(json!("+1 425 555 0142")));
    assert_eq!(phone("work"), None, "not mapped, not sent");
    assert_eq!(
        (acc["addresses"][0]["locality"].as_str(), acc["addresses"][0]["postalCode"].as_str()),
        (Some("Redmond"), Some("98052"))
    );
    assert_eq!(acc["name"]["middleName"], "J");
    assert_eq!((acc["nickName"].as_str(), acc["preferredLanguage"].as_str()), (Some("Del"), Some("en-US")));
    assert_eq!(acc["userType"], "Employee");
    assert_eq!(acc[ENT]["costCenter"], "CC-7");
    assert_eq!(acc[ENT]["organization"], "Contoso");
    assert_eq!(acc[ENT]["division"], "Devices (US)");
    assert_eq!(acc["title"], "Redmond staff", "the rule on the work address matched");

    // She moves: the pushed change reaches the app, and the rule stops matching.
    let moved =
        w.s.client
            .patch(w.s.url(&format!("/scim/v2/Users/{id}")))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .json(&json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
            {"op": "Replace", "path": "addresses[type eq \"work\"].locality", "value": "Bellevue"},
            {"op": "Replace", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+1 425 555 0110"}]}))
            .send()
            .await
            .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    w.event_until(&id, |e| e["action"] == "update" && e["status"] == "provisioned").await;
    let acc = &w.in_app("adele@contoso.com").await[0];
    assert_eq!(acc["addresses"][0]["locality"], "Bellevue", "{acc:#}");
    assert!(acc["title"].is_null(), "the rule no longer matches: {acc:#}");
    assert!(acc["phoneNumbers"].as_array().unwrap().iter().any(|p| p["value"] == "+1 425 555 0110"));

    // A SAML app with the same mapping: her sign-in carries the same values.
    let saml_app =
        w.s.post(
            "/api/v1/apps",
            json!({"name": "Portal", "connection": {"base_url": "http://127.0.0.1:9/scim/v2",
                "auth": {"type": "bearer", "token": "unused-token"}}}),
        )
        .await
        .body["id"]
            .as_str()
            .unwrap()
            .to_owned();
    for (path, body) in [("parameters", parameters()), ("rules", rules()), ("saml", saml_settings(json!({})))] {
        let put = w.s.call(Method::PUT, &format!("/api/v1/apps/{saml_app}/{path}"), Some(body)).await;
        assert_eq!(put.status, StatusCode::OK, "{put:#?}");
    }
    assert_eq!(w.s.put(&format!("/api/v1/roles/{}/apps/{saml_app}", w.role)).await.status, StatusCode::NO_CONTENT);
    let pw = w.s.call(Method::PUT, &format!("/api/v1/users/{id}/password"), Some(json!({"password": PASSWORD}))).await;
    assert_eq!(pw.status, StatusCode::NO_CONTENT, "{pw:#?}");

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = http.get(w.s.url(&format!("/login?next={}", urlencode("/")))).send().await.unwrap();
    let form_cookie = set_cookie(&page, "prv_idp_form").unwrap();
    let csrf = hidden(&page.text().await.unwrap(), "csrf").unwrap();
    let signed_in = http
        .post(w.s.url("/login"))
        .header(COOKIE, format!("prv_idp_form={form_cookie}"))
        .form(&[("csrf", csrf.as_str()), ("username", "adele@contoso.com"), ("password", PASSWORD), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(&signed_in, "prv_idp_session").unwrap();
    let portal = http.get(w.s.url("/")).header(COOKIE, format!("prv_idp_session={session}")).send().await.unwrap();
    let csrf = hidden(&portal.text().await.unwrap(), "csrf").unwrap();
    let (_, xml, _, _) = posted(
        http.post(w.s.url(&format!("/saml/{saml_app}/idp-initiated")))
            .header(COOKIE, format!("prv_idp_session={session}"))
            .form(&[("csrf", csrf)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    let attribute = |name: &str| {
        let at = xml.find(&format!("Name=\"{name}\"")).unwrap_or_else(|| panic!("no attribute {name} in {xml}"));
        let value = &xml[at..];
        let start = value.find("<saml:AttributeValue").unwrap();
        let start = start + value[start..].find('>').unwrap() + 1;
        value[start..start + value[start..].find("</saml:AttributeValue>").unwrap()].to_owned()
    };
    assert_eq!(attribute("nickName"), "Del");
    assert_eq!(attribute("addresses.locality"), "Bellevue");
    assert_eq!(attribute("phoneNumbers"), "+1 425 555 0110", "the mobile number (the fax comes after)");
    assert_eq!(attribute(&format!("{ENT}:costCenter")), "CC-7");
    assert_eq!(attribute(&format!("{ENT}:division")), "Devices (US)");
}

on_both_backends!(a_new_attribute_travels_from_scim_to_the_app_and_into_saml);
