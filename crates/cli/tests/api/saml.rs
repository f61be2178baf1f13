//! SAML sign-in and just-in-time provisioning, end to end over HTTP: the directory as the
//! IdP of an app; Responses checked by independent implementations (Debian's `xmlsec1`, and
//! PyPI's pysaml2 playing the app, which makes the AuthnRequests too); refusals; invitations;
//! certificate rotation.

use std::path::PathBuf;
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{Backend, TestServer};

pub(crate) const PASSWORD: &str = "sally's long password";
const SP: &str = "https://sp.example.com";
pub(crate) const ACS: &str = "https://sp.example.com/saml/acs";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An app with SAML sign-in, a role granting it, and Sally (Department Sales) in the role.
pub(crate) struct World {
    pub(crate) s: TestServer,
    pub(crate) http: reqwest::Client,
    pub(crate) app: String,
    pub(crate) role: String,
    pub(crate) sally: String,
    dir: tempfile::TempDir,
}

fn seed_rules() -> Value {
    json!([
        {"name": "Sales group", "match": "all",
         "conditions": [{"attribute": "department", "op": "equals", "value": "Sales"}],
         "actions": [{"add_entitlement": {"type": "group", "value": "Sales and Marketing"}}]},
        {"name": "No contractors", "conditions": [{"attribute": "title", "op": "contains", "value": "Contractor"}],
         "actions": [{"do_not_provision": true}]}
    ])
}

pub(crate) fn saml_settings(extra: Value) -> Value {
    let mut v = json!({"sp_entity_id": SP, "acs_urls": [ACS, "https://sp.example.com/other-acs"],
        "name_id_format": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress", "name_id_attribute": "email",
        "sign_response": true, "sign_assertion": true, "jit_only": true, "assertion_lifetime_seconds": 300});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// The value of cookie `name` that a response sets.
pub(crate) fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        let (pair, _) = v.split_once(';').unwrap_or((v, ""));
        let (k, val) = pair.split_once('=')?;
        (k == name).then(|| val.to_owned())
    })
}

/// The value of a hidden input in an HTML page.
pub(crate) fn hidden(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    let end = rest.find('"')?;
    let mut v = rest[..end].to_owned();
    for (from, to) in [
        ("&quot;", "\""),
        ("&#34;", "\""),
        ("&lt;", "<"),
        ("&#60;", "<"),
        ("&gt;", ">"),
        ("&#62;", ">"),
        ("&#39;", "'"),
        ("&amp;", "&"),
        ("&#38;", "&"),
    ] {
        v = v.replace(from, to);
    }
    Some(v)
}

impl World {
    pub(crate) async fn new(backend: Backend, settings: Value) -> Self {
        let s = TestServer::start_on(backend).await;
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let app = s
            .post(
                "/api/v1/apps",
                json!({"name": "Docker Hub", "connection": {"base_url": "http://127.0.0.1:9/scim/v2",
                "auth": {"type": "bearer", "token": "unused-token"}}}),
            )
            .await;
        assert_eq!(app.status, StatusCode::CREATED, "{app:#?}");
        let app = app.body["id"].as_str().unwrap().to_owned();
        let put = s.call(Method::PUT, &format!("/api/v1/apps/{app}/rules"), Some(seed_rules())).await;
        assert_eq!(put.status, StatusCode::OK, "{put:#?}");
        let put = s.call(Method::PUT, &format!("/api/v1/apps/{app}/saml"), Some(settings)).await;
        assert_eq!(put.status, StatusCode::OK, "{put:#?}");
        let role = s.post("/api/v1/roles", json!({"name": "Sales"})).await.body["id"].as_str().unwrap().to_owned();
        s.put(&format!("/api/v1/roles/{role}/apps/{app}")).await;
        let w = Self { s, http, app, role, sally: String::new(), dir: tempfile::tempdir().unwrap() };
        let sally =
            w.person("sally", json!({"department": "Sales", "first_name": "Sally", "last_name": "Seller"})).await;
        Self { sally, ..w }
    }

    /// A user with a password, in the role.
    pub(crate) async fn person(&self, username: &str, extra: Value) -> String {
        let mut body = json!({"username": username, "email": format!("{username}@example.com")});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let u = self.s.post("/api/v1/users", body).await;
        assert_eq!(u.status, StatusCode::CREATED, "{u:#?}");
        let id = u.body["id"].as_str().unwrap().to_owned();
        let pw = self
            .s
            .call(Method::PUT, &format!("/api/v1/users/{id}/password"), Some(json!({"password": PASSWORD})))
            .await;
        assert_eq!(pw.status, StatusCode::NO_CONTENT, "{pw:#?}");
        self.s.put(&format!("/api/v1/roles/{}/users/{id}", self.role)).await;
        id
    }

    /// Signs in at the IdP's login page; the session cookie.
    pub(crate) async fn login(
        &self,
        username: &str,
        password: &str,
        next: &str,
    ) -> Result<String, (StatusCode, String)> {
        let page = self.http.get(self.s.url(&format!("/login?next={}", urlencode(next)))).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let form_cookie = set_cookie(&page, "prv_idp_form").unwrap();
        let html = page.text().await.unwrap();
        let csrf = hidden(&html, "csrf").unwrap();
        let next_field = hidden(&html, "next").unwrap();
        assert_eq!(next_field, next);
        let resp = self
            .http
            .post(self.s.url("/login"))
            .header(COOKIE, format!("prv_idp_form={form_cookie}"))
            .form(&[("csrf", csrf.as_str()), ("username", username), ("password", password), ("next", next)])
            .send()
            .await
            .unwrap();
        if resp.status() != StatusCode::SEE_OTHER {
            return Err((resp.status(), resp.text().await.unwrap()));
        }
        assert_eq!(resp.headers()[LOCATION].to_str().unwrap(), next);
        let cookie = set_cookie(&resp, "prv_idp_session").unwrap();
        let attrs =
            resp.headers().get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
        let session = attrs.iter().find(|c| c.starts_with("prv_idp_session=")).unwrap();
        assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax"), "{session}");
        Ok(cookie)
    }

    pub(crate) async fn get(&self, path_or_url: &str, session: Option<&str>) -> reqwest::Response {
        let url = if path_or_url.starts_with("http") { path_or_url.to_owned() } else { self.s.url(path_or_url) };
        let mut req = self.http.get(url);
        if let Some(c) = session {
            req = req.header(COOKIE, format!("prv_idp_session={c}"));
        }
        req.send().await.unwrap()
    }

    /// The IdP metadata for the app, saved to a file.
    async fn metadata(&self) -> (String, PathBuf) {
        let r = self.get(&format!("/saml/{}/metadata", self.app), None).await;
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        assert_eq!(r.headers()["content-type"], "application/samlmetadata+xml");
        let xml = r.text().await.unwrap();
        let path = self.dir.path().join("idp-metadata.xml");
        std::fs::write(&path, &xml).unwrap();
        (xml, path)
    }

    /// The active IdP certificate (PEM).
    async fn active_cert(&self) -> String {
        let certs = self.s.get("/api/v1/saml/certificates").await.body;
        certs.as_array().unwrap().iter().find(|c| c["state"] == "active").unwrap()["certificate"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn events(&self) -> Vec<Value> {
        self.s.get(&format!("/api/v1/events?app={}", self.app)).await.body["items"].as_array().unwrap().clone()
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The auto-submitting form: (ACS URL, decoded Response XML, base64 Response, RelayState).
pub(crate) async fn posted(resp: reqwest::Response) -> (String, String, String, Option<String>) {
    let status = resp.status();
    if status != StatusCode::OK {
        panic!("no Response was posted: {status} {}", resp.text().await.unwrap());
    }
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'nonce-"), "{csp}");
    let html = resp.text().await.unwrap();
    let at = html.find("action=\"").unwrap() + 8;
    let action = html[at..at + html[at..].find('"').unwrap()].replace("&amp;", "&");
    let b64 = hidden(&html, "SAMLResponse").expect("a SAMLResponse field");
    let xml = String::from_utf8(STANDARD.decode(&b64).unwrap()).unwrap();
    (action, xml, b64, hidden(&html, "RelayState"))
}

/// `xmlsec1 --verify` of the first signature (or the one `xpath` selects) with `cert`.
fn xmlsec1(dir: &std::path::Path, cert: &str, xml: &str, xpath: Option<&str>) -> (bool, String) {
    let cert_path = dir.join("idp-cert.pem");
    let doc = dir.join("response.xml");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&doc, xml).unwrap();
    let mut cmd = Command::new("xmlsec1");
    cmd.arg("--verify").arg("--pubkey-cert-pem").arg(&cert_path);
    cmd.args(["--id-attr:ID", "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"]);
    cmd.args(["--id-attr:ID", "urn:oasis:names:tc:SAML:2.0:protocol:Response"]);
    if let Some(x) = xpath {
        cmd.args(["--node-xpath", x]);
    }
    let out = cmd.arg(&doc).output().expect("xmlsec1 is installed (scripts/test installs Debian's xmlsec1)");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs the pysaml2 service provider (scripts/saml_sp.py); its JSON answer and whether it succeeded.
fn pysaml2(args: &[&str]) -> (bool, Value) {
    let python = root().join(".venv/pysaml2/bin/python");
    if !python.exists() {
        let status = Command::new(root().join("scripts/pysaml2.sh")).arg("install").status().unwrap();
        assert!(status.success(), "cannot install pysaml2");
    }
    let out = Command::new(python).arg(root().join("scripts/saml_sp.py")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("pysaml2 said: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

fn sp_args<'a>(metadata: &'a str, mode: &'a str) -> Vec<&'a str> {
    vec![mode, "--metadata", metadata, "--entity-id", SP, "--acs", ACS]
}

async fn sp_initiated_sign_in_is_accepted_by_xmlsec1_and_pysaml2(backend: Backend) {
    let w = World::new(backend, saml_settings(json!({}))).await;
    let (md, md_path) = w.metadata().await;
    assert!(md.contains("<md:EntityDescriptor") && md.contains("<ds:X509Certificate>"), "{md}");
    assert_eq!(md.matches("<md:KeyDescriptor").count(), 1);
    let md_path = md_path.to_str().unwrap();

    // pysaml2, as the app, makes a deflated AuthnRequest with a RelayState.
    let mut args = sp_args(md_path, "request");
    args.extend(["--relay-state", "/dashboard?tab=1&x=ü"]);
    let (ok, req) = pysaml2(&args);
    assert!(ok, "{req}");
    let url = req["url"].as_str().unwrap();
    assert!(url.contains(&format!("/saml/{}/sso?SAMLRequest=", w.app)), "{url}");

    // Not signed in yet: the login page, which comes back to the request.
    let r = w.get(url, None).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let login = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(login.starts_with("/login?next="), "{login}");
    let next =
        url::Url::parse(&w.s.url(&login)).unwrap().query_pairs().find(|(k, _)| k == "next").unwrap().1.into_owned();
    let page = w.get(&login, None).await.text().await.unwrap();
    assert!(page.contains("Docker Hub"), "the login page names the app");
    let session = w.login("sally", PASSWORD, &next).await.unwrap();

    let (action, xml, b64, relay) = posted(w.get(&next, Some(&session)).await).await;
    assert_eq!(action, ACS);
    assert_eq!(relay.as_deref(), Some("/dashboard?tab=1&x=ü"), "RelayState comes back unchanged");
    assert!(xml.contains(&format!("InResponseTo=\"{}\"", req["request_id"].as_str().unwrap())));
    assert!(xml.contains(&format!("Destination=\"{ACS}\"")));
    assert!(xml.contains(&format!("<saml:Audience>{SP}</saml:Audience>")));

    // Debian's xmlsec1 verifies the Response's and the Assertion's signatures.
    let cert = w.active_cert().await;
    let (ok, err) = xmlsec1(w.dir.path(), &cert, &xml, None);
    assert!(ok, "Response signature: {err}");
    let (ok, err) =
        xmlsec1(w.dir.path(), &cert, &xml, Some("//*[local-name()='Assertion']/*[local-name()='Signature']"));
    assert!(ok, "Assertion signature: {err}");
    let (ok, _) = xmlsec1(w.dir.path(), &cert, &xml.replace("sally@example.com", "mallory@example.com"), None);
    assert!(!ok, "a changed NameID breaks the signature");

    // pysaml2 accepts the Response unchanged, and reads the app's parameters and rules in it.
    let resp_file = w.dir.path().join("response.b64");
    std::fs::write(&resp_file, &b64).unwrap();
    let mut args = sp_args(md_path, "response");
    let rid = req["request_id"].as_str().unwrap();
    args.extend(["--response-file", resp_file.to_str().unwrap(), "--request-id", rid, "--want-response-signed"]);
    let (ok, got) = pysaml2(&args);
    assert!(ok, "pysaml2 refused our Response: {got}");
    assert_eq!(got["name_id"], "sally@example.com");
    assert_eq!(got["in_response_to"], rid);
    assert_eq!(got["attributes"]["groups"], json!(["Sales and Marketing"]), "the seed's rule: Sales -> group");
    assert_eq!(got["attributes"]["userName"], json!(["sally"]));
    assert_eq!(got["attributes"]["name.givenName"], json!(["Sally"]));
    assert_eq!(got["attributes"]["emails"], json!(["sally@example.com"]));

    // A JIT-only app: the sign-in is an event (the app creates the account).
    let events = w.events().await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!((events[0]["action"].as_str(), events[0]["status"].as_str()), (Some("create"), Some("provisioned")));
    assert_eq!(events[0]["username"], "sally");
}

async fn idp_initiated_sign_in_from_the_portal(backend: Backend) {
    let w = World::new(backend, saml_settings(json!({"sign_response": false}))).await;
    let (_, md_path) = w.metadata().await;
    let r = w.get("/", None).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the portal needs a sign-in");
    let session = w.login("sally", PASSWORD, "/").await.unwrap();
    let portal = w.get("/", Some(&session)).await;
    assert_eq!(portal.status(), StatusCode::OK);
    let html = portal.text().await.unwrap();
    assert!(html.contains("Sign in to Docker Hub"), "{html}");
    let csrf = hidden(&html, "csrf").unwrap();
    let path = format!("/saml/{}/idp-initiated", w.app);
    assert!(html.contains(&path));
    let post = |csrf: String| {
        w.http.post(w.s.url(&path)).header(COOKIE, format!("prv_idp_session={session}")).form(&[("csrf", csrf)]).send()
    };
    let refused = post("wrong".into()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN, "CSRF");
    let (action, xml, b64, relay) = posted(post(csrf.clone()).await.unwrap()).await;
    assert_eq!((action.as_str(), relay), (ACS, None));
    assert!(!xml.contains("InResponseTo"));
    let (ok, err) = xmlsec1(w.dir.path(), &w.active_cert().await, &xml, None);
    assert!(ok, "the Assertion's signature: {err}");
    let resp_file = w.dir.path().join("response.b64");
    std::fs::write(&resp_file, &b64).unwrap();
    let mut args = sp_args(md_path.to_str().unwrap(), "response");
    args.extend(["--response-file", resp_file.to_str().unwrap()]);
    let (ok, got) = pysaml2(&args);
    assert!(ok, "pysaml2 refused our unsolicited Response: {got}");
    assert_eq!(got["name_id"], "sally@example.com");

    // The second sign-in updates the account just in time; both are events.
    posted(post(csrf).await.unwrap()).await;
    let events = w.events().await;
    let mut actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    actions.sort();
    assert_eq!(actions, vec!["create", "update"]);
    let account = w.s.get(&format!("/api/v1/apps/{}/accounts", w.app)).await.body;
    assert_eq!(account["items"][0]["status"], "provisioned");
    assert_eq!(account["items"][0]["last_applied"]["groups"], json!(["Sales and Marketing"]));

    // Logout ends the session.
    let out = w
        .http
        .post(w.s.url("/logout"))
        .header(COOKIE, format!("prv_idp_session={session}"))
        .form(&[("csrf", hidden(&html, "csrf").unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(w.get("/", Some(&session)).await.status(), StatusCode::SEE_OTHER);
}

on_both_backends!(sp_initiated_sign_in_is_accepted_by_xmlsec1_and_pysaml2, idp_initiated_sign_in_from_the_portal);

/// A request for the app, deflated and base64'd (HTTP-Redirect binding), as a URL path: a
/// fresh ID, issued now.
pub(crate) fn authn_request(app: &str, acs: &str, extra: &str) -> String {
    authn_request_at(app, acs, extra, &saml::new_id(), directory::now())
}

fn authn_request_at(app: &str, acs: &str, extra: &str, id: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    let xml = format!(
        "<samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
         xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"{id}\" Version=\"2.0\" \
         IssueInstant=\"{}\" AssertionConsumerServiceURL=\"{acs}\">\
         <saml:Issuer>{SP}{extra}</saml:Issuer></samlp:AuthnRequest>",
        saml::instant(at)
    );
    format!("/saml/{app}/sso?SAMLRequest={}&RelayState=r", urlencode(&saml::request::encode_redirect(&xml)))
}

#[tokio::test]
async fn refusals_are_clear_pages() {
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    // Wrong password: a generic error, and nothing else.
    let (status, page) = w.login("sally", "not the password!", "/").await.unwrap_err();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("Wrong username or password."));
    let (_, page) = w.login("nobody", PASSWORD, "/").await.unwrap_err();
    assert!(page.contains("Wrong username or password."), "unknown users get the same answer");

    let session = w.login("sally", PASSWORD, "/").await.unwrap();
    // The ACS URL must be one of the app's.
    let r = w.get(&authn_request(&w.app, "https://evil.example.com/acs", ""), Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = r.text().await.unwrap();
    assert!(page.contains("AssertionConsumerServiceURL https://evil.example.com/acs is not one of"), "{page}");
    assert!(!page.contains("SAMLResponse"));
    // The second ACS URL is allowed.
    let (action, ..) =
        posted(w.get(&authn_request(&w.app, "https://sp.example.com/other-acs", ""), Some(&session)).await).await;
    assert_eq!(action, "https://sp.example.com/other-acs");

    // A DTD (XXE attempt) is refused before anything is resolved.
    let xxe: &str =
        "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\
         <samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" ID=\"_x\" Version=\"2.0\" \
         IssueInstant=\"2026-01-01T00:00:00Z\"><saml:Issuer xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\">&x;</saml:Issuer></samlp:AuthnRequest>";
    let path = format!("/saml/{}/sso?SAMLRequest={}", w.app, urlencode(&saml::request::encode_redirect(xxe)));
    let r = w.get(&path, Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = r.text().await.unwrap();
    assert!(page.contains("document type declaration (DTD), which is refused"), "{page}");
    assert!(!page.contains("root:"), "no file content");
    // Garbage and a missing request are refused clearly too.
    let r = w.get(&format!("/saml/{}/sso?SAMLRequest=%2A%2A%2A", w.app), Some(&session)).await;
    assert!(r.text().await.unwrap().contains("not valid base64"));
    let r = w.get(&format!("/saml/{}/sso", w.app), Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Another SP's request.
    let r = w.get(&authn_request(&w.app, ACS, "/other"), Some(&session)).await;
    assert!(r.text().await.unwrap().contains("service provider entity ID"));

    // A user without a role granting the app.
    let outsider = w.person("olga", json!({"department": "Sales"})).await;
    w.s.delete(&format!("/api/v1/roles/{}/users/{outsider}", w.role)).await;
    let olga = w.login("olga", PASSWORD, "/").await.unwrap();
    let r = w.get(&authn_request(&w.app, ACS, ""), Some(&olga)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let page = r.text().await.unwrap();
    assert!(page.contains("no role that grants Docker Hub"), "{page}");
    assert!(!page.contains("SAMLResponse"));
    // A user the app's rules leave out.
    w.person("carl", json!({"title": "Contractor"})).await;
    let carl = w.login("carl", PASSWORD, "/").await.unwrap();
    let r = w.get(&authn_request(&w.app, ACS, ""), Some(&carl)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("rules exclude your account"));

    // A suspended user: refused with a clear page, even with a live session.
    w.s.patch(&format!("/api/v1/users/{}", w.sally), json!({"status": "suspended"})).await;
    let r = w.get(&authn_request(&w.app, ACS, ""), Some(&session)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let page = r.text().await.unwrap();
    assert!(page.contains("Your account is suspended"), "{page}");
    let (status, page) = w.login("sally", PASSWORD, "/").await.unwrap_err();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("Your account is suspended"), "{page}");

    // Only sign-ins that went through are events.
    assert_eq!(w.events().await.len(), 1);
    // Unknown apps and apps without SAML.
    let r = w.get(&format!("/saml/{}/metadata", uuid::Uuid::now_v7()), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn signed_requests_are_verified_with_the_apps_certificate() {
    let sp_key = saml::IdpKey::generate("sp").unwrap();
    let w = World::new(Backend::Sqlite, saml_settings(json!({"sp_certificate": sp_key.cert_pem()}))).await;
    let session = w.login("sally", PASSWORD, "/").await.unwrap();
    let unsigned = authn_request(&w.app, ACS, "");
    let r = w.get(&unsigned, Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("requires signed requests"));
    let query = unsigned.split_once('?').unwrap().1;
    let signed = format!("{query}&SigAlg={}", urlencode(saml::ns::RSA_SHA256));
    let sig = STANDARD.encode(saml::sign::sign_redirect(&signed, &sp_key).unwrap());
    let good = format!("/saml/{}/sso?{signed}&Signature={}", w.app, urlencode(&sig));
    posted(w.get(&good, Some(&session)).await).await;
    let other = saml::IdpKey::generate("not the sp").unwrap();
    let sig = STANDARD.encode(saml::sign::sign_redirect(&signed, &other).unwrap());
    let bad = format!("/saml/{}/sso?{signed}&Signature={}", w.app, urlencode(&sig));
    let r = w.get(&bad, Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("does not match the app"));
}

/// Issue 15: with `sp_certificate` set, `SAML%52equest=<unsigned>&<a validly signed query>` was
/// answered for the unsigned request, and `Relay%53tate=` replaced the signed RelayState.
#[tokio::test]
async fn the_redirect_signature_covers_exactly_the_parameters_used() {
    let sp_key = saml::IdpKey::generate("sp").unwrap();
    let w = World::new(Backend::Sqlite, saml_settings(json!({"sp_certificate": sp_key.cert_pem()}))).await;
    let session = w.login("sally", PASSWORD, "/").await.unwrap();
    let sign = |path: &str| {
        let query = path.split_once('?').unwrap().1.to_owned();
        let signed = format!("{query}&SigAlg={}", urlencode(saml::ns::RSA_SHA256));
        let sig = STANDARD.encode(saml::sign::sign_redirect(&signed, &sp_key).unwrap());
        format!("{signed}&Signature={}", urlencode(&sig))
    };
    let signed = sign(&authn_request(&w.app, ACS, ""));
    let unsigned = authn_request(&w.app, ACS, "").split_once('?').unwrap().1.to_owned();
    let unsigned_param = unsigned.split('&').next().unwrap().strip_prefix("SAMLRequest=").unwrap().to_owned();
    for attack in [
        format!("SAML%52equest={unsigned_param}&{signed}"),
        format!("{signed}&Relay%53tate=https%3A%2F%2Fevil.example.com"),
        format!("{signed}&RelayState=second"),
        format!("SAMLRequest={unsigned_param}&{signed}"),
    ] {
        let r = w.get(&format!("/saml/{}/sso?{attack}", w.app), Some(&session)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{attack}");
        let page = r.text().await.unwrap();
        assert!(page.contains("percent-encoded") || page.contains("more than once"), "{page}");
        assert!(!page.contains("SAMLResponse"));
    }
    // The signed request itself is answered, once.
    let good = format!("/saml/{}/sso?{signed}", w.app);
    let (_, _, _, relay) = posted(w.get(&good, Some(&session)).await).await;
    assert_eq!(relay.as_deref(), Some("r"));
}

/// Issue 15: request ids were not checked for replay nor `IssueInstant` for freshness; an
/// Issuer is required.
#[tokio::test]
async fn stale_future_replayed_and_anonymous_authn_requests_are_refused() {
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    let session = w.login("sally", PASSWORD, "/").await.unwrap();
    let now = directory::now();
    let old = authn_request_at(&w.app, ACS, "", &saml::new_id(), now - chrono::Duration::minutes(6));
    let r = w.get(&old, Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("has expired"));
    let future = authn_request_at(&w.app, ACS, "", &saml::new_id(), now + chrono::Duration::minutes(5));
    let r = w.get(&future, Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("in the future"));
    // A request a few minutes old is still fine; the same request a second time is not.
    let once = authn_request_at(&w.app, ACS, "", &saml::new_id(), now - chrono::Duration::minutes(3));
    posted(w.get(&once, Some(&session)).await).await;
    let r = w.get(&once, Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = r.text().await.unwrap();
    assert!(page.contains("already answered"), "{page}");
    assert!(!page.contains("SAMLResponse"));
    // No Issuer.
    let xml = format!(
        "<samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" ID=\"_n\" Version=\"2.0\" \
         IssueInstant=\"{}\"/>",
        saml::instant(now)
    );
    let path = format!("/saml/{}/sso?SAMLRequest={}", w.app, urlencode(&saml::request::encode_redirect(&xml)));
    let r = w.get(&path, Some(&session)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("Issuer"));
}

#[tokio::test]
async fn settings_are_validated_and_provisioning_comes_first() {
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    let path = format!("/api/v1/apps/{}/saml", w.app);
    let got = w.s.get(&path).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["sp_entity_id"], SP);
    assert_eq!(got.body["metadata_url"], w.s.url(&format!("/saml/{}/metadata", w.app)));
    assert_eq!(got.body["sso_url"], w.s.url(&format!("/saml/{}/sso", w.app)));
    let put = |body: Value| w.s.call(Method::PUT, &path, Some(body));
    put(saml_settings(json!({"acs_urls": ["javascript:alert(1)"]}))).await.problem_field(422, "acs_urls[0]");
    put(saml_settings(json!({"acs_urls": []}))).await.problem_field(422, "acs_urls");
    put(saml_settings(json!({"name_id_format": "email"}))).await.problem_field(422, "name_id_format");
    put(saml_settings(json!({"name_id_attribute": "shoe_size"}))).await.problem_field(422, "name_id_attribute");
    put(saml_settings(json!({"sign_response": false, "sign_assertion": false})))
        .await
        .problem_field(422, "sign_assertion");
    put(saml_settings(json!({"sp_certificate": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----"})))
        .await
        .problem_field(422, "sp_certificate");
    put(saml_settings(json!({"assertion_lifetime_seconds": 5}))).await.problem_field(422, "assertion_lifetime_seconds");
    let reason = put(saml_settings(json!({"jit_only": false}))).await.problem_field(422, "jit_only");
    assert!(reason.contains("enable provisioning first"), "{reason}");
    let unknown = put(json!({"sp_entity_id": SP, "acs_urls": [ACS], "colour": "red"})).await;
    assert_eq!(unknown.status.as_u16(), 422, "{unknown:#?}");
    assert_eq!(w.s.get(&path).await.body["version"], 1, "a refused request changes nothing");
    let stale =
        w.s.call_with(
            Method::PUT,
            &path,
            Some(saml_settings(json!({}))),
            Some(crate::support::TOKEN),
            &[("if-match", "\"7\"")],
        )
        .await;
    stale.problem(412);
    // Passwords are checked too.
    let pw =
        w.s.call(Method::PUT, &format!("/api/v1/users/{}/password", w.sally), Some(json!({"password": "short"}))).await;
    pw.problem_field(422, "password");
    // A JIT-only app is not provisioned, even with provisioning enabled.
    w.s.patch(&format!("/api/v1/apps/{}", w.app), json!({"provisioning": {"enabled": true}})).await;
    let steps = w.s.post(&format!("/api/v1/users/{}/provision?app={}", w.sally, w.app), json!({})).await;
    assert_eq!(steps.status, StatusCode::OK, "{steps:#?}");
    assert!(steps.body["steps"].as_array().unwrap().iter().all(|s| s["event"].is_null()), "{steps:#?}");
    assert!(w.events().await.is_empty(), "nothing was pushed to the JIT-only app");
    // With provisioning on, the app may use both; what GET answers can be sent back as it is.
    let mut doc = w.s.get(&path).await.body;
    doc["jit_only"] = json!(false);
    let both = put(doc).await;
    assert_eq!(both.status, StatusCode::OK, "{both:#?}");
    assert_eq!(both.body["jit_only"], false);
    // Secrets never show in the audit log.
    let audit = w.s.get("/api/v1/audit?limit=500").await.body.to_string();
    assert!(!audit.contains(PASSWORD) && !audit.contains("argon2") && !audit.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn an_invitation_link_sets_a_password_once() {
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    let u = w.s.post("/api/v1/users", json!({"username": "ivan", "email": "ivan@example.com"})).await.body;
    let id = u["id"].as_str().unwrap();
    let inv = w.s.post(&format!("/api/v1/users/{id}/invitations"), json!({})).await;
    assert_eq!(inv.status, StatusCode::CREATED, "{inv:#?}");
    // Without a public URL there is no link (see identity.rs): the path, on the address we reach.
    let url = w.s.url(inv.body["path"].as_str().unwrap());
    assert!(url.starts_with(&w.s.url("/invite/prvinv_")), "{url}");
    let token = url.rsplit('/').next().unwrap().to_owned();
    let audit = w.s.get("/api/v1/audit?limit=500").await.body.to_string();
    assert!(!audit.contains(&token), "the token is not stored or logged");
    let page = w.get(&url, None).await;
    assert_eq!(page.status(), StatusCode::OK);
    let form_cookie = set_cookie(&page, "prv_idp_form").unwrap();
    let csrf = hidden(&page.text().await.unwrap(), "csrf").unwrap();
    let submit = |password: &'static str, csrf: String, cookie: String| {
        w.http
            .post(&url)
            .header(COOKIE, format!("prv_idp_form={cookie}"))
            .form(&[("csrf", csrf.as_str()), ("password", password)])
            .send()
    };
    let short = submit("short", csrf.clone(), form_cookie.clone()).await.unwrap();
    assert_eq!(short.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(short.text().await.unwrap().contains("at least 12 characters"));
    let forged = submit("ivan's new password", "forged".into(), form_cookie.clone()).await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let ok = submit("ivan's new password", csrf.clone(), form_cookie.clone()).await.unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()[LOCATION], "/login?welcome=1");
    w.login("ivan", "ivan's new password", "/").await.unwrap();
    let again = w.get(&url, None).await;
    assert_eq!(again.status(), StatusCode::GONE);
    assert!(again.text().await.unwrap().contains("already been used"));
    assert_eq!(w.get(&w.s.url("/invite/not-a-token"), None).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn certificate_rotation_publishes_both_until_the_next_is_activated() {
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    let (md, _) = w.metadata().await;
    assert_eq!(md.matches("<md:KeyDescriptor").count(), 1);
    let old = w.active_cert().await;
    w.s.post("/api/v1/saml/certificates/activate", json!({})).await.problem(409);
    let next = w.s.post("/api/v1/saml/certificates/rotate", json!({})).await;
    assert_eq!(next.status, StatusCode::CREATED, "{next:#?}");
    assert_eq!(next.body["state"], "next");
    w.s.post("/api/v1/saml/certificates/rotate", json!({})).await.problem(409);
    let (md, _) = w.metadata().await;
    assert_eq!(md.matches("<md:KeyDescriptor").count(), 2, "both certificates during the overlap");
    // The active key still signs.
    let session = w.login("sally", PASSWORD, "/").await.unwrap();
    let (_, xml, ..) = posted(w.get(&authn_request(&w.app, ACS, ""), Some(&session)).await).await;
    assert!(xmlsec1(w.dir.path(), &old, &xml, None).0);
    let active = w.s.post("/api/v1/saml/certificates/activate", json!({})).await;
    assert_eq!(active.status, StatusCode::OK);
    assert_eq!(active.body["id"], next.body["id"]);
    let (md, _) = w.metadata().await;
    assert_eq!(md.matches("<md:KeyDescriptor").count(), 1);
    let new = w.active_cert().await;
    assert_ne!(new, old);
    let (_, xml, ..) = posted(w.get(&authn_request(&w.app, ACS, ""), Some(&session)).await).await;
    assert!(xmlsec1(w.dir.path(), &new, &xml, None).0, "signed with the new key");
    assert!(!xmlsec1(w.dir.path(), &old, &xml, None).0);
}

#[tokio::test]
async fn the_console_says_an_app_is_saml_jit_only() {
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    w.s.state.service.create_admin(&directory::Actor::cli(), "alice", "correct horse battery staple").await.unwrap();
    let page = w.http.get(w.s.url("/console/login")).send().await.unwrap();
    let token = set_cookie(&page, "prv_login").unwrap();
    let login = w
        .http
        .post(w.s.url("/console/login"))
        .header(COOKIE, format!("prv_login={token}"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", "alice"),
            ("password", "correct horse battery staple"),
            ("next", "/console/apps"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(&login, "prv_session").unwrap();
    let tab = w
        .http
        .get(w.s.url(&format!("/console/apps/{}/provisioning", w.app)))
        .header(COOKIE, format!("prv_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(tab.status(), StatusCode::OK);
    let html = tab.text().await.unwrap();
    assert!(html.contains("id=\"saml-jit-only\"") && html.contains("SAML JIT only"), "{html}");
    // The end users' portal, not the console, is at `/`.
    let root = w.http.get(w.s.url("/")).send().await.unwrap();
    assert_eq!(root.headers()[LOCATION], "/login?next=%2F");
}

/// People imported from an LDAP source sign in with their password there: a bind against
/// the real slapd as their entry's DN. A wrong password is refused like any other; with the
/// directory gone, the page says it cannot be reached (and nobody gets in).
#[tokio::test]
async fn people_from_ldap_sign_in_with_their_directory_password() {
    use crate::ldap::{create_source, openldap_source, sync, user_named};
    let w = World::new(Backend::Sqlite, saml_settings(json!({}))).await;
    let slapd = testkit::Slapd::start();
    slapd.add(&testkit::Slapd::person_ldif("ada", "Ada", "Lovelace", &[]));
    let source = create_source(&w.s, openldap_source(&slapd, json!({}))).await;
    let done = sync(&w.s, &source, "full").await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let ada = user_named(&w.s, "ada").await;
    assert_eq!(ada["source"], "ldap");
    w.s.put(&format!("/api/v1/roles/{}/users/{}", w.role, ada["id"].as_str().unwrap())).await;

    let session = w.login("ada", "ada-pw", "/").await.expect("the directory password signs in");
    let portal = w.get("/", Some(&session)).await.text().await.unwrap();
    assert!(portal.contains("Docker Hub"), "{portal}");

    let (status, page) = w.login("ada", "not ada's password", "/").await.unwrap_err();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("Wrong username or password."), "{page}");

    drop(slapd);
    let (_, page) = w.login("ada", "ada-pw", "/").await.unwrap_err();
    assert!(page.contains("cannot be reached"), "{page}");
}
