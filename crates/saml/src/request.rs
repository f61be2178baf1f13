//! AuthnRequests of the HTTP-Redirect binding: `SAMLRequest` is base64 of the raw DEFLATE
//! of the XML. Decoding is bounded (input and inflated size), and the XML parser refuses
//! DTDs, so no entity (external or expanding) is ever resolved.

use std::io::Read;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::ns;

/// The most bytes an AuthnRequest may have, inflated.
pub const MAX_XML: usize = 64 * 1024;
/// The most characters the `SAMLRequest` parameter may have (base64 of at most `MAX_XML`).
pub const MAX_PARAM: usize = MAX_XML * 4 / 3 + 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the SAMLRequest parameter is missing")]
    Missing,
    #[error("the SAMLRequest is too large (more than {MAX_XML} bytes)")]
    TooLarge,
    #[error("the SAMLRequest is not valid base64")]
    Base64,
    #[error("the SAMLRequest is not DEFLATE-compressed XML (HTTP-Redirect binding)")]
    Inflate,
    #[error("the SAMLRequest is not valid XML: {0}")]
    Xml(String),
    #[error("the SAMLRequest contains a document type declaration (DTD), which is refused")]
    Dtd,
    #[error("the SAMLRequest is not an AuthnRequest: {0}")]
    NotAuthnRequest(String),
    #[error("the AuthnRequest is invalid: {0}")]
    Invalid(String),
}

/// What we use of an AuthnRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnRequest {
    pub id: String,
    pub issuer: Option<String>,
    pub destination: Option<String>,
    pub acs_url: Option<String>,
    pub acs_index: Option<u32>,
    pub protocol_binding: Option<String>,
    pub name_id_format: Option<String>,
    pub force_authn: bool,
    pub is_passive: bool,
}

/// Decodes the `SAMLRequest` parameter of the HTTP-Redirect binding (already URL-decoded).
pub fn decode_redirect(param: &str) -> Result<String, RequestError> {
    if param.len() > MAX_PARAM {
        return Err(RequestError::TooLarge);
    }
    let compact: String = param.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let raw = STANDARD.decode(compact.as_bytes()).map_err(|_| RequestError::Base64)?;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(raw.as_slice())
        .take(MAX_XML as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| RequestError::Inflate)?;
    if out.len() > MAX_XML {
        return Err(RequestError::TooLarge);
    }
    String::from_utf8(out).map_err(|_| RequestError::Xml("not UTF-8".into()))
}

/// Encodes XML for the HTTP-Redirect binding (what an SP does; for tests and tools).
pub fn encode_redirect(xml: &str) -> String {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(xml.as_bytes());
    STANDARD.encode(enc.finish().unwrap_or_default())
}

fn bool_attr(node: roxmltree::Node<'_, '_>, name: &str) -> Result<bool, RequestError> {
    match node.attribute(name) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(RequestError::Invalid(format!("{name}={other:?} is not a boolean"))),
    }
}

/// Parses an AuthnRequest.
pub fn parse(xml: &str) -> Result<AuthnRequest, RequestError> {
    if xml.len() > MAX_XML {
        return Err(RequestError::TooLarge);
    }
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: 10_000 };
    let doc = roxmltree::Document::parse_with_options(xml, opts).map_err(|e| match e {
        roxmltree::Error::DtdDetected => RequestError::Dtd,
        other => RequestError::Xml(other.to_string()),
    })?;
    let root = doc.root_element();
    let tag = root.tag_name();
    if tag.namespace() != Some(ns::PROTOCOL) || tag.name() != "AuthnRequest" {
        return Err(RequestError::NotAuthnRequest(format!(
            "its root element is {{{}}}{}",
            tag.namespace().unwrap_or(""),
            tag.name()
        )));
    }
    if root.attribute("Version") != Some("2.0") {
        return Err(RequestError::Invalid("Version must be 2.0".into()));
    }
    let id = root
        .attribute("ID")
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .ok_or_else(|| RequestError::Invalid("ID is missing or longer than 256 characters".into()))?;
    if root.attribute("IssueInstant").is_none() {
        return Err(RequestError::Invalid("IssueInstant is missing".into()));
    }
    let child = |ns_uri: &str, name: &str| {
        root.children()
            .find(|n| n.is_element() && n.tag_name().namespace() == Some(ns_uri) && n.tag_name().name() == name)
    };
    let issuer = child(ns::ASSERTION, "Issuer").and_then(|n| n.text()).map(|t| t.trim().to_owned());
    let name_id_format = child(ns::PROTOCOL, "NameIDPolicy").and_then(|n| n.attribute("Format")).map(str::to_owned);
    let acs_index = root
        .attribute("AssertionConsumerServiceIndex")
        .map(|v| {
            v.parse::<u32>().map_err(|_| RequestError::Invalid("AssertionConsumerServiceIndex is not a number".into()))
        })
        .transpose()?;
    Ok(AuthnRequest {
        id: id.to_owned(),
        issuer,
        destination: root.attribute("Destination").map(str::to_owned),
        acs_url: root.attribute("AssertionConsumerServiceURL").map(str::to_owned),
        acs_index,
        protocol_binding: root.attribute("ProtocolBinding").map(str::to_owned),
        name_id_format,
        force_authn: bool_attr(root, "ForceAuthn")?,
        is_passive: bool_attr(root, "IsPassive")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = r#"<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_abc" Version="2.0" IssueInstant="2026-01-01T00:00:00Z" AssertionConsumerServiceURL="https://sp.example.com/acs" ProtocolBinding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"><saml:Issuer>https://sp.example.com</saml:Issuer><samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"/></samlp:AuthnRequest>"#;

    #[test]
    fn a_deflated_request_round_trips() {
        let xml = decode_redirect(&encode_redirect(REQ)).unwrap();
        let r = parse(&xml).unwrap();
        assert_eq!(r.id, "_abc");
        assert_eq!(r.issuer.as_deref(), Some("https://sp.example.com"));
        assert_eq!(r.acs_url.as_deref(), Some("https://sp.example.com/acs"));
        assert_eq!(r.name_id_format.as_deref(), Some("urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"));
    }

    #[test]
    fn dtds_and_entities_are_refused() {
        let xxe = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{}",
            REQ.replace("https://sp.example.com</saml:Issuer>", "&x;</saml:Issuer>")
        );
        assert_eq!(parse(&decode_redirect(&encode_redirect(&xxe)).unwrap()), Err(RequestError::Dtd));
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let big = format!("<a>{}</a>", "x".repeat(MAX_XML * 4));
        assert_eq!(decode_redirect(&encode_redirect(&big)), Err(RequestError::TooLarge));
        assert_eq!(decode_redirect("***"), Err(RequestError::Base64));
        assert_eq!(decode_redirect(&STANDARD.encode(b"plain text")), Err(RequestError::Inflate));
        assert!(matches!(parse("<x/>"), Err(RequestError::NotAuthnRequest(_))));
        assert!(matches!(parse("<unclosed"), Err(RequestError::Xml(_))));
    }
}
