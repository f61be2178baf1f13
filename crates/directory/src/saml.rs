//! An app's SAML sign-in settings: the directory as the SAML identity provider of the app.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::ValidationErrors;

/// NameID formats an app may use.
pub const NAME_ID_FORMATS: [&str; 4] = [
    "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
];

/// Directory attributes a NameID may come from (besides custom attributes).
pub const NAME_ID_ATTRIBUTES: [&str; 5] = ["email", "username", "id", "employee_number", "phone"];

/// How an app signs its users in with SAML 2.0, the directory being the identity provider.
/// The assertion's attributes are the app's parameters and rules (as for provisioning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SamlSettings {
    /// The app's (service provider's) entity ID: the assertion's audience.
    pub sp_entity_id: String,
    /// Where Responses may be posted (HTTP-POST binding); the first is the default.
    pub acs_urls: Vec<String>,
    /// NameID format (default `...:nameid-format:emailAddress`).
    #[serde(default = "default_format")]
    pub name_id_format: String,
    /// The directory attribute the NameID carries (default `email`).
    #[serde(default = "default_name_id_attribute")]
    pub name_id_attribute: String,
    /// Sign the whole Response (default true).
    #[serde(default = "yes")]
    pub sign_response: bool,
    /// Sign the Assertion (default true).
    #[serde(default = "yes")]
    pub sign_assertion: bool,
    /// The app creates accounts itself at sign-in ("SAML JIT only"): the engine pushes no
    /// accounts to it, and each sign-in is recorded as an event.
    #[serde(default)]
    pub jit_only: bool,
    /// How long an assertion may be used, in seconds (30 to 3600, default 300).
    #[serde(default = "default_lifetime")]
    pub assertion_lifetime_seconds: u32,
    /// The app's signing certificate (PEM). When set, AuthnRequests must be signed with it;
    /// otherwise unsigned requests are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_certificate: Option<String>,
}

fn default_format() -> String {
    NAME_ID_FORMATS[0].to_owned()
}
fn default_name_id_attribute() -> String {
    "email".to_owned()
}
fn yes() -> bool {
    true
}
fn default_lifetime() -> u32 {
    300
}

fn check_url(errors: &mut ValidationErrors, field: &str, value: &str) {
    let ok = (value.starts_with("https://") || value.starts_with("http://"))
        && value.len() <= 2048
        && !value.contains('#')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && value.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if !ok {
        errors.push(field, "must be an absolute http(s) URL without a fragment, at most 2048 characters");
    }
}

impl SamlSettings {
    /// Trims and checks the settings; errors name the fields.
    pub fn validate(mut self) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.sp_entity_id = self.sp_entity_id.trim().to_owned();
        if self.sp_entity_id.is_empty()
            || self.sp_entity_id.len() > 1024
            || self.sp_entity_id.chars().any(char::is_control)
        {
            errors.push("sp_entity_id", "must be 1 to 1024 printable characters");
        }
        self.acs_urls = self.acs_urls.iter().map(|u| u.trim().to_owned()).collect();
        if self.acs_urls.is_empty() || self.acs_urls.len() > 10 {
            errors.push("acs_urls", "must list 1 to 10 URLs");
        }
        for (i, url) in self.acs_urls.iter().enumerate() {
            check_url(&mut errors, &format!("acs_urls[{i}]"), url);
        }
        self.name_id_format = self.name_id_format.trim().to_owned();
        if !NAME_ID_FORMATS.contains(&self.name_id_format.as_str()) {
            errors.push("name_id_format", format!("must be one of {}", NAME_ID_FORMATS.join(", ")));
        }
        self.name_id_attribute = self.name_id_attribute.trim().to_owned();
        if self.name_id_attribute.is_empty() || self.name_id_attribute.len() > 64 {
            errors.push("name_id_attribute", "must name a directory attribute");
        }
        if !(30..=3600).contains(&self.assertion_lifetime_seconds) {
            errors.push("assertion_lifetime_seconds", "must be between 30 and 3600");
        }
        if !self.sign_response && !self.sign_assertion {
            errors.push("sign_assertion", "the Response or the Assertion (or both) must be signed");
        }
        self.sp_certificate = crate::normalize_opt(self.sp_certificate);
        if self.sp_certificate.as_ref().is_some_and(|c| c.len() > 16 * 1024) {
            errors.push("sp_certificate", "must be at most 16 KiB");
        }
        errors.into_result()?;
        Ok(self)
    }
}
