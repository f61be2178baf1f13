//! The `samlp:Response` sent to an app's ACS URL.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};

use crate::keys::IdpKey;
use crate::sign::{sign_enveloped, SignError};
use crate::xml::{escape_html, El};
use crate::{instant, new_id, ns};

/// One attribute of the assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub values: Vec<String>,
}

/// What a Response says.
#[derive(Debug, Clone)]
pub struct ResponseInput {
    pub issuer: String,
    /// The ACS URL the Response is posted to.
    pub destination: String,
    /// The AuthnRequest's ID (SP-initiated); `None` for IdP-initiated sign-in.
    pub in_response_to: Option<String>,
    /// The SP entity id: the audience.
    pub audience: String,
    pub name_id: String,
    pub name_id_format: String,
    pub attributes: Vec<Attribute>,
    pub now: DateTime<Utc>,
    /// How long the assertion may be used.
    pub lifetime: Duration,
    /// When the user signed in to the IdP.
    pub authn_instant: DateTime<Utc>,
    pub session_index: String,
    pub sign_response: bool,
    pub sign_assertion: bool,
}

fn saml(local: &'static str) -> El {
    El::new("saml", ns::ASSERTION, local)
}

fn samlp(local: &'static str) -> El {
    El::new("samlp", ns::PROTOCOL, local)
}

/// The Response XML (exclusive canonical form, signed as asked).
pub fn build(input: &ResponseInput, key: &IdpKey) -> Result<String, SignError> {
    let now = instant(input.now);
    let until = instant(input.now + input.lifetime);
    let assertion_id = new_id();
    let response_id = new_id();

    let mut confirmation = saml("SubjectConfirmationData")
        .attr("NotOnOrAfter", until.clone())
        .attr("Recipient", input.destination.clone());
    if let Some(req) = &input.in_response_to {
        confirmation = confirmation.attr("InResponseTo", req.clone());
    }
    let mut statement = saml("AttributeStatement");
    for a in input.attributes.iter().filter(|a| !a.values.is_empty()) {
        let mut attr = saml("Attribute").attr("Name", a.name.clone()).attr("NameFormat", ns::ATTRNAME_BASIC);
        for v in &a.values {
            attr = attr.child(saml("AttributeValue").text(v.clone()));
        }
        statement = statement.child(attr);
    }
    let mut assertion = saml("Assertion")
        .attr("ID", assertion_id.clone())
        .attr("IssueInstant", now.clone())
        .attr("Version", "2.0")
        .child(saml("Issuer").text(input.issuer.clone()))
        .child(
            saml("Subject")
                .child(saml("NameID").attr("Format", input.name_id_format.clone()).text(input.name_id.clone()))
                .child(saml("SubjectConfirmation").attr("Method", ns::CM_BEARER).child(confirmation)),
        )
        .child(
            saml("Conditions")
                .attr("NotBefore", now.clone())
                .attr("NotOnOrAfter", until.clone())
                .child(saml("AudienceRestriction").child(saml("Audience").text(input.audience.clone()))),
        )
        .child(
            saml("AuthnStatement")
                .attr("AuthnInstant", instant(input.authn_instant))
                .attr("SessionIndex", input.session_index.clone())
                .child(saml("AuthnContext").child(saml("AuthnContextClassRef").text(ns::AC_PASSWORD_PROTECTED))),
        );
    if !statement.children.is_empty() {
        assertion = assertion.child(statement);
    }
    if input.sign_assertion {
        sign_enveloped(&mut assertion, &assertion_id, 1, key)?;
    }
    let mut response = samlp("Response")
        .attr("Destination", input.destination.clone())
        .attr("ID", response_id.clone())
        .attr("IssueInstant", now)
        .attr("Version", "2.0");
    if let Some(req) = &input.in_response_to {
        response = response.attr("InResponseTo", req.clone());
    }
    let mut response = response
        .child(saml("Issuer").text(input.issuer.clone()))
        .child(samlp("Status").child(samlp("StatusCode").attr("Value", ns::STATUS_SUCCESS)))
        .child(assertion);
    if input.sign_response {
        sign_enveloped(&mut response, &response_id, 1, key)?;
    }
    Ok(response.canonical())
}

/// The HTML page that posts the Response to the ACS URL (HTTP-POST binding). The form
/// submits itself with the script that carries `nonce`; without script, a button does it.
pub fn post_form(acs: &str, response_xml: &str, relay_state: Option<&str>, nonce: &str) -> String {
    let encoded = STANDARD.encode(response_xml.as_bytes());
    let relay = relay_state
        .map(|r| format!("<input type=\"hidden\" name=\"RelayState\" value=\"{}\">", escape_html(r)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signing in…</title></head>\
         <body><form method=\"post\" action=\"{acs}\" id=\"saml-post\">\
         <input type=\"hidden\" name=\"SAMLResponse\" value=\"{encoded}\">{relay}\
         <noscript><p>Your browser does not run scripts: press Continue to sign in.</p></noscript>\
         <button type=\"submit\">Continue</button></form>\
         <script nonce=\"{nonce}\">document.getElementById('saml-post').submit();</script></body></html>",
        acs = escape_html(acs),
        nonce = escape_html(nonce),
    )
}
