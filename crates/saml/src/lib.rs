//! SAML 2.0 identity-provider protocol code, pure (no I/O): what Provisioner needs to be a
//! SAML IdP for the apps of its directory.
//!
//! - [`xml`]: elements built in memory and written in the *exclusive canonical form*
//!   (`http://www.w3.org/2001/10/xml-exc-c14n#`) directly: namespace declarations only where
//!   visibly used and not already in force, attributes sorted, no self-closing tags, the
//!   canonical escapes. What we send is therefore already canonical, and what we sign is
//!   exactly what a verifier computes; no C library is needed.
//! - [`sign`]: enveloped RSA-SHA256 signatures (`ds:Signature`) of a Response or an Assertion,
//!   and verification of the HTTP-Redirect binding's query-string signatures.
//! - [`keys`]: the IdP key pair (RSA 2048) and its self-signed certificate.
//! - [`response`], [`metadata`]: the documents we send.
//! - [`request`]: decoding and parsing of AuthnRequests (HTTP-Redirect binding): bounded
//!   base64 and inflate, no DTDs (so no external entities), clear errors.

pub mod keys;
pub mod metadata;
pub mod request;
pub mod response;
pub mod sign;
pub mod xml;

pub use keys::{IdpKey, KeyError};
pub use request::{AuthnRequest, RequestError};
pub use response::{Attribute, ResponseInput};

/// SAML 2.0 namespaces and URIs.
pub mod ns {
    pub const PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
    pub const ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
    pub const METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
    pub const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
    pub const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
    pub const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
    pub const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
    pub const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
    pub const BINDING_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
    pub const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
    pub const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
    pub const CM_BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
    pub const AC_PASSWORD_PROTECTED: &str = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport";
    pub const ATTRNAME_BASIC: &str = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic";
}

/// The NameID formats an app may ask for.
pub mod name_id {
    pub const UNSPECIFIED: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified";
    pub const EMAIL: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";
    pub const PERSISTENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent";
    pub const TRANSIENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient";
    pub const ALL: [&str; 4] = [UNSPECIFIED, EMAIL, PERSISTENT, TRANSIENT];
}

/// A fresh XML ID (an NCName: starts with `_`), 128 random bits.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("_{}", hex::encode(raw))
}

/// `xs:dateTime` in UTC, whole seconds: `2026-01-02T03:04:05Z`.
pub fn instant(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
