//! Fuzzing the AuthnRequest parser (issue 15: one request nested 4,000 levels deep stopped the
//! whole process). Arbitrary bytes, well-formed XML generated from a small grammar (deeply
//! nested too), both through the HTTP-Redirect binding's DEFLATE and base64, and the
//! binding's query parsing. The property: never a panic, always `Ok` or a typed
//! [`RequestError`]; nesting beyond the limit is refused before the XML parser sees it.
//!
//! A fixed number of cases per property runs with `cargo test`; a long run:
//! `PROVISIONER_FUZZ_CASES=1000000 cargo test -p provisioner-saml --test fuzz`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use proptest::prelude::*;
use saml::request::{self, RequestError, MAX_DEPTH, MAX_XML};

/// The cases per property: `PROVISIONER_FUZZ_CASES`, else `ci` (what `cargo test` runs).
fn config(ci: u32) -> ProptestConfig {
    let cases = std::env::var("PROVISIONER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(ci);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// A node of generated XML: always well-formed once rendered.
#[derive(Debug, Clone)]
enum Node {
    Element { name: String, attrs: BTreeMap<String, String>, children: Vec<Node> },
    Text(String),
    Comment(String),
    CData(String),
    Pi(String),
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Node {
    fn render(&self, out: &mut String) {
        match self {
            Node::Element { name, attrs, children } => {
                out.push('<');
                out.push_str(name);
                for (k, v) in attrs {
                    out.push_str(&format!(" {k}=\"{}\"", escape(v)));
                }
                if children.is_empty() {
                    out.push_str("/>");
                } else {
                    out.push('>');
                    for c in children {
                        c.render(out);
                    }
                    out.push_str(&format!("</{name}>"));
                }
            }
            Node::Text(t) => out.push_str(&escape(t)),
            Node::Comment(t) => out.push_str(&format!("<!--{t}-->")),
            Node::CData(t) => out.push_str(&format!("<![CDATA[{t}]]>")),
            Node::Pi(t) => out.push_str(&format!("<?pi {t}?>")),
        }
    }

    /// Element nesting, as the parser counts it (a self-closing element counts too, but the
    /// flat scan does not: the scan is at most one level short, never more).
    fn depth(&self) -> usize {
        match self {
            Node::Element { children, .. } => 1 + children.iter().map(Node::depth).max().unwrap_or(0),
            _ => 0,
        }
    }
}

/// Text that is awkward for a scanner: brackets, slashes, quotes (escaped when rendered).
fn tricky_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 <>/='\"!?&;:\\[]{0,12}"
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        tricky_text().prop_map(Node::Text),
        // Comments may not hold `--`; CDATA may not hold `]]>`; PIs may not hold `?>`.
        "[a-z <>/'\"]{0,12}".prop_map(Node::Comment),
        "[a-z <>/'\"=]{0,12}".prop_map(Node::CData),
        "[a-z <>/'\"=]{0,12}".prop_map(Node::Pi),
        (element_name(), attrs()).prop_map(|(name, attrs)| Node::Element { name, attrs, children: vec![] }),
    ];
    leaf.prop_recursive(8, 64, 6, |inner| {
        (element_name(), attrs(), prop::collection::vec(inner, 1..6))
            .prop_map(|(name, attrs, children)| Node::Element { name, attrs, children })
    })
}

fn element_name() -> impl Strategy<Value = String> {
    // (Names starting with `xml` are reserved.)
    prop_oneof!["[a-wyz][a-z0-9]{0,6}", Just("saml:Attribute".to_owned()), Just("samlp:Extensions".to_owned())]
}

fn attrs() -> impl Strategy<Value = BTreeMap<String, String>> {
    // Values with `>` and `/>` in them: the flat depth scan must respect quotes.
    prop::collection::btree_map("[a-wyz][a-z]{0,4}", prop_oneof![tricky_text(), Just("/>".to_owned())], 0..3)
}

/// A valid AuthnRequest whose `Extensions` hold `inner` under `wrap` more levels of `<a>`.
fn authn_request(inner: &Node, wrap: usize) -> (String, usize) {
    let mut body = String::new();
    inner.render(&mut body);
    let xml = format!(
        "<samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" \
         xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"_fuzz\" Version=\"2.0\" \
         IssueInstant=\"2026-01-01T00:00:00Z\"><saml:Issuer>https://sp.example.com</saml:Issuer>\
         <samlp:Extensions>{}{body}{}</samlp:Extensions></samlp:AuthnRequest>",
        "<a>".repeat(wrap),
        "</a>".repeat(wrap)
    );
    // The root and Extensions, the wrapping, and what `inner` nests.
    (xml, 2 + wrap + inner.depth())
}

/// How many extra levels to wrap in: mostly near the limit, sometimes thousands (what
/// overflowed the stack: 4,000 and more), sometimes beyond the inflate limit.
fn wrap_levels() -> impl Strategy<Value = usize> {
    prop_oneof![0..90usize, 90..110usize, 110..10_000usize, 4_000..20_000usize]
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes as the XML, as the `SAMLRequest` parameter, as base64 of raw DEFLATE.
    #[test]
    fn arbitrary_bytes_never_crash_the_authn_request_parser(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = request::parse(&text);
        let _ = request::decode_redirect(&text);
        if let Ok(xml) = request::decode_redirect(&STANDARD.encode(&bytes)) {
            let _ = request::parse(&xml);
        }
        let xml = request::decode_redirect(&request::encode_redirect(&text));
        prop_assert!(xml.is_ok() || xml == Err(RequestError::TooLarge));
        if let Ok(xml) = xml {
            let _ = request::parse(&xml);
        }
        let _ = request::nesting_depth(&text, MAX_DEPTH);
    }

    /// Well-formed requests, deflated and base64-encoded as an SP sends them: accepted while
    /// within the bounds; refused as too deep (before the XML parser) or too large beyond them.
    #[test]
    fn generated_authn_requests_are_parsed_or_refused_by_their_bounds(inner in node(), wrap in wrap_levels()) {
        let (xml, depth) = authn_request(&inner, wrap);
        let decoded = request::decode_redirect(&request::encode_redirect(&xml));
        if xml.len() > MAX_XML {
            prop_assert_eq!(decoded, Err(RequestError::TooLarge));
            return Ok(());
        }
        let decoded = decoded.unwrap();
        prop_assert_eq!(&decoded, &xml);
        let parsed = request::parse(&decoded);
        if depth > MAX_DEPTH + 1 {
            prop_assert_eq!(parsed, Err(RequestError::TooDeep), "{} levels", depth);
        } else if depth <= MAX_DEPTH {
            let r = parsed.unwrap();
            prop_assert_eq!(r.id, "_fuzz");
            prop_assert_eq!(r.issuer, "https://sp.example.com");
        }
    }

    /// Generated requests cut or corrupted at a random place: typed errors, never a panic.
    #[test]
    fn corrupted_authn_requests_get_typed_errors(inner in node(), wrap in 0..300usize, cut in any::<prop::sample::Index>(), junk in "[<>/\"'!?\\[\\]-]{1,4}") {
        let (xml, _) = authn_request(&inner, wrap);
        let at = cut.index(xml.len());
        let at = (0..=at).rev().find(|i| xml.is_char_boundary(*i)).unwrap_or(0);
        for broken in [xml[..at].to_owned(), format!("{}{junk}{}", &xml[..at], &xml[at..])] {
            match request::parse(&broken) {
                Ok(_) | Err(RequestError::Xml(_) | RequestError::TooDeep | RequestError::NotAuthnRequest(_)
                    | RequestError::Invalid(_) | RequestError::Dtd) => {}
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    /// Arbitrary query strings into the redirect binding's parser.
    #[test]
    fn arbitrary_redirect_queries_never_crash(q in "\\PC{0,400}") {
        if let Ok(parsed) = request::parse_redirect_query(&q) {
            if let Ok(xml) = request::decode_redirect(&parsed.saml_request) {
                let _ = request::parse(&xml);
            }
        }
    }

    /// Queries built from the binding's own parameter names, repeated, percent-encoded or
    /// plain: a name given twice or written encoded is refused; the signed part is exactly the
    /// raw parameters whose values are used.
    #[test]
    fn redirect_queries_are_split_by_plain_unique_names(
        params in prop::collection::vec((
            prop_oneof![
                Just("SAMLRequest"), Just("RelayState"), Just("SigAlg"), Just("Signature"),
                Just("SAML%52equest"), Just("Relay+State"), Just("other"), Just(""),
            ],
            "([a-zA-Z0-9]|%[0-9A-F]{2}|\\+|=){0,12}",
        ), 0..8)
    ) {
        let q = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let got = request::parse_redirect_query(&q);
        let named = |n: &str| params.iter().filter(|(k, _)| *k == n).count();
        let encoded_name = params.iter().any(|(k, _)| k.contains('%') || k.contains('+'));
        let repeated = ["SAMLRequest", "RelayState", "SigAlg", "Signature"].iter().any(|n| named(n) > 1);
        if encoded_name || repeated {
            prop_assert!(matches!(got, Err(RequestError::Invalid(_))), "{:?}: {:?}", q, got);
        } else if named("SAMLRequest") == 0 {
            prop_assert_eq!(got, Err(RequestError::Missing));
        } else {
            let got = got.unwrap();
            prop_assert_eq!(got.signed_part.is_some(), named("SigAlg") == 1);
            if let Some(signed) = &got.signed_part {
                prop_assert!(signed.starts_with("SAMLRequest="));
                prop_assert!(q.contains(signed.split('&').next().unwrap_or_default()));
            }
        }
    }
}
