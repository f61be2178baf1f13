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
/// The deepest nesting of elements accepted. Checked by a flat scan before the XML parser
/// sees the document: a parser's recursion on a deeper document could overflow the stack,
/// which aborts the process whatever panic handling exists.
pub const MAX_DEPTH: usize = 100;
/// How old an AuthnRequest's `IssueInstant` may be.
pub const MAX_AGE_SECONDS: i64 = 5 * 60;
/// How far in the future an `IssueInstant` may be (clock skew between the SP and us).
pub const MAX_SKEW_SECONDS: i64 = 60;

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
    #[error("the SAMLRequest nests elements deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the AuthnRequest is invalid: {0}")]
    Invalid(String),
    #[error("the AuthnRequest has expired (issued at {0}, more than {MAX_AGE_SECONDS} seconds ago); go back to the app and sign in again")]
    Expired(String),
    #[error("the AuthnRequest is issued in the future ({0}); check the clocks of the app and of this server")]
    FromTheFuture(String),
}

/// What we use of an AuthnRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnRequest {
    pub id: String,
    /// Required: who sends the request (the SP's entity ID).
    pub issuer: String,
    pub issue_instant: chrono::DateTime<chrono::Utc>,
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

/// The deepest element nesting of `xml`, by a flat scan (no recursion) that knows tags,
/// quoted attribute values, comments, CDATA sections and processing instructions. It stops
/// as soon as `limit` is passed. Malformed input is left to the parser to refuse.
pub fn nesting_depth(xml: &str, limit: usize) -> usize {
    let b = xml.as_bytes();
    let (mut i, mut depth, mut max) = (0usize, 0usize, 0usize);
    let skip_to = |from: usize, end: &[u8]| -> usize {
        b[from.min(b.len())..].windows(end.len()).position(|w| w == end).map_or(b.len(), |p| from + p + end.len())
    };
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = skip_to(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(i + 2, b"?>");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(i + 2, b">");
        } else {
            // A start tag (or a declaration): to its `>`, quotes respected.
            let (mut j, mut quote, mut self_closing) = (i + 1, None::<u8>, false);
            while j < b.len() {
                match (quote, b[j]) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, c @ (b'"' | b'\'')) => quote = Some(c),
                    (None, b'>') => {
                        self_closing = b[j - 1] == b'/';
                        break;
                    }
                    (None, _) => {}
                }
                j += 1;
            }
            if !self_closing {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    return max;
                }
            }
            i = j + 1;
        }
    }
    max
}

/// Parses an AuthnRequest (freshness is checked by [`check_fresh`]).
pub fn parse(xml: &str) -> Result<AuthnRequest, RequestError> {
    if xml.len() > MAX_XML {
        return Err(RequestError::TooLarge);
    }
    if nesting_depth(xml, MAX_DEPTH) > MAX_DEPTH {
        return Err(RequestError::TooDeep);
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
    let issue_instant =
        root.attribute("IssueInstant").ok_or_else(|| RequestError::Invalid("IssueInstant is missing".into()))?;
    let issue_instant = chrono::DateTime::parse_from_rfc3339(issue_instant)
        .map_err(|_| RequestError::Invalid(format!("IssueInstant {issue_instant:?} is not an xs:dateTime")))?
        .with_timezone(&chrono::Utc);
    let child = |ns_uri: &str, name: &str| {
        root.children()
            .find(|n| n.is_element() && n.tag_name().namespace() == Some(ns_uri) && n.tag_name().name() == name)
    };
    let issuer = child(ns::ASSERTION, "Issuer")
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| RequestError::Invalid("the Issuer (the app's entity ID) is missing".into()))?;
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
        issue_instant,
        destination: root.attribute("Destination").map(str::to_owned),
        acs_url: root.attribute("AssertionConsumerServiceURL").map(str::to_owned),
        acs_index,
        protocol_binding: root.attribute("ProtocolBinding").map(str::to_owned),
        name_id_format,
        force_authn: bool_attr(root, "ForceAuthn")?,
        is_passive: bool_attr(root, "IsPassive")?,
    })
}

/// Refuses a request issued more than [`MAX_AGE_SECONDS`] before `now` or more than
/// [`MAX_SKEW_SECONDS`] after it.
pub fn check_fresh(req: &AuthnRequest, now: chrono::DateTime<chrono::Utc>) -> Result<(), RequestError> {
    let age = (now - req.issue_instant).num_seconds();
    if age > MAX_AGE_SECONDS {
        return Err(RequestError::Expired(crate::instant(req.issue_instant)));
    }
    if age < -MAX_SKEW_SECONDS {
        return Err(RequestError::FromTheFuture(crate::instant(req.issue_instant)));
    }
    Ok(())
}

/// The parameters of an HTTP-Redirect binding query, taken from the raw query string so that
/// the values used are exactly the bytes the signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectQuery {
    /// The decoded values.
    pub saml_request: String,
    pub relay_state: Option<String>,
    pub sig_alg: Option<String>,
    pub signature: Option<String>,
    /// `SAMLRequest=...[&RelayState=...]&SigAlg=...` as the query carried them (still
    /// URL-encoded): what the signature is over (SAML bindings section 3.4.4.1).
    pub signed_part: Option<String>,
}

/// The names of the parameters the redirect binding uses.
const REDIRECT_PARAMS: [&str; 4] = ["SAMLRequest", "RelayState", "SigAlg", "Signature"];

/// Splits a raw query string into the redirect binding's parameters. A parameter name written
/// with percent-encoding or `+` (such as `SAML%52equest`), or given twice, is refused: the
/// values used and the bytes signed must come from the same parameters.
pub fn parse_redirect_query(raw: &str) -> Result<RedirectQuery, RequestError> {
    let mut found: [Option<&str>; 4] = [None; 4];
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name.contains('%') || name.contains('+') {
            return Err(RequestError::Invalid(format!(
                "the query parameter name {name:?} is percent-encoded; parameter names must be written plainly"
            )));
        }
        if let Some(k) = REDIRECT_PARAMS.iter().position(|p| *p == name) {
            if found[k].is_some() {
                return Err(RequestError::Invalid(format!("the query parameter {name} is given more than once")));
            }
            found[k] = Some(value);
        }
    }
    let decode = |v: &str| -> String {
        form_urlencoded::parse(format!("v={v}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    };
    let [req, relay, alg, sig] = found;
    let req = req.ok_or(RequestError::Missing)?;
    let signed_part = alg.map(|a| {
        let mut s = format!("SAMLRequest={req}");
        if let Some(r) = relay {
            s.push_str(&format!("&RelayState={r}"));
        }
        s.push_str(&format!("&SigAlg={a}"));
        s
    });
    Ok(RedirectQuery {
        saml_request: decode(req),
        relay_state: relay.map(decode),
        sig_alg: alg.map(decode),
        signature: sig.map(decode),
        signed_part,
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
        assert_eq!(r.issuer, "https://sp.example.com");
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

    fn nested(depth: usize) -> String {
        let open = "<a>".repeat(depth);
        let close = "</a>".repeat(depth);
        REQ.replace(
            "</samlp:AuthnRequest>",
            &format!("<samlp:Extensions>{open}{close}</samlp:Extensions></samlp:AuthnRequest>"),
        )
    }

    #[test]
    fn deeply_nested_requests_are_refused_before_the_parser_sees_them() {
        // 5,000 and 9,000 levels: what overflowed the stack (issue 15).
        for depth in [5_000, 9_000] {
            assert_eq!(parse(&nested(depth)), Err(RequestError::TooDeep), "{depth}");
        }
        assert_eq!(parse(&nested(MAX_DEPTH)), Err(RequestError::TooDeep));
        // The root and Extensions count: 98 more levels are fine.
        assert!(parse(&nested(MAX_DEPTH - 2)).is_ok());
        // Self-closing tags, comments, CDATA and quoted `>` or `/>` do not fool the count.
        assert_eq!(nesting_depth("<a><b/><c x='/>'><!-- <d> --><![CDATA[<e>]]></c></a>", 100), 2);
        assert_eq!(nesting_depth(&format!("<r x=\"/>\">{}", "<a y='/>'>".repeat(150)), 100), 101);
    }

    #[test]
    fn an_issuer_and_a_fresh_issue_instant_are_required() {
        let no_issuer = REQ.replace("<saml:Issuer>https://sp.example.com</saml:Issuer>", "");
        assert!(matches!(parse(&no_issuer), Err(RequestError::Invalid(m)) if m.contains("Issuer")));
        let r = parse(REQ).unwrap();
        let at = r.issue_instant;
        assert!(check_fresh(&r, at + chrono::Duration::seconds(MAX_AGE_SECONDS)).is_ok());
        assert!(matches!(
            check_fresh(&r, at + chrono::Duration::seconds(MAX_AGE_SECONDS + 1)),
            Err(RequestError::Expired(_))
        ));
        assert!(check_fresh(&r, at - chrono::Duration::seconds(MAX_SKEW_SECONDS)).is_ok());
        assert!(matches!(
            check_fresh(&r, at - chrono::Duration::seconds(MAX_SKEW_SECONDS + 1)),
            Err(RequestError::FromTheFuture(_))
        ));
    }

    #[test]
    fn redirect_query_values_are_the_signed_bytes() {
        let q = parse_redirect_query("SAMLRequest=a%2Bb&RelayState=r%20s&SigAlg=alg&Signature=c%3D&other=1").unwrap();
        assert_eq!(q.saml_request, "a+b");
        assert_eq!(q.relay_state.as_deref(), Some("r s"));
        assert_eq!(q.signature.as_deref(), Some("c="));
        assert_eq!(q.signed_part.as_deref(), Some("SAMLRequest=a%2Bb&RelayState=r%20s&SigAlg=alg"));
        // The bypass of issue 15: an encoded name next to a signed query.
        for bad in [
            "SAML%52equest=x&SAMLRequest=y&SigAlg=a&Signature=s",
            "SAMLRequest=y&Relay%53tate=evil&RelayState=r&SigAlg=a&Signature=s",
            "SAMLRequest=x&SAMLRequest=y",
            "SAMLRequest=y&RelayState=a&RelayState=b",
            "SAMLRequest=y&SigAlg=a&SigAlg=b",
            "SAML+Request=y&SAMLRequest=y",
        ] {
            assert!(matches!(parse_redirect_query(bad), Err(RequestError::Invalid(_))), "{bad}");
        }
        assert_eq!(parse_redirect_query("RelayState=r"), Err(RequestError::Missing));
        assert_eq!(parse_redirect_query("SAMLRequest=x").unwrap().signed_part, None);
    }
}
