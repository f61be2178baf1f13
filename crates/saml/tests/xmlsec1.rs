//! Our signatures checked by an independent implementation: Debian's `xmlsec1` (installed
//! by scripts/test).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: their helpers (outside #[test] functions, where clippy.toml's allow-*-in-tests does not reach) fail the test with a message"
)]

use std::process::Command;

use saml::response::{build, ResponseInput};
use saml::{Attribute, IdpKey};

fn input(sign_response: bool, sign_assertion: bool) -> ResponseInput {
    // xmlsec1 checks signatures, not times: any fixed time does.
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    ResponseInput {
        issuer: "http://127.0.0.1/saml/app/metadata".into(),
        destination: "https://sp.example.com/acs?x=1&y=<2>".into(),
        in_response_to: Some("_req1".into()),
        audience: "https://sp.example.com".into(),
        name_id: "ada@example.com".into(),
        name_id_format: saml::name_id::EMAIL.into(),
        attributes: vec![
            Attribute { name: "groups".into(), values: vec!["Sales & Marketing".into(), "R<D>".into()] },
            Attribute { name: "givenName".into(), values: vec!["Åda \"the\" first\r\n".into()] },
        ],
        now,
        lifetime: chrono::Duration::minutes(5),
        authn_instant: now,
        session_index: "_s1".into(),
        sign_response,
        sign_assertion,
    }
}

fn xmlsec1_verify(key: &IdpKey, xml: &str, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("idp.pem");
    let doc = dir.path().join("response.xml");
    std::fs::write(&cert, key.cert_pem()).unwrap();
    std::fs::write(&doc, xml).unwrap();
    let out = Command::new("xmlsec1")
        .arg("--verify")
        .arg("--pubkey-cert-pem")
        .arg(&cert)
        .args(["--id-attr:ID", "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"])
        .args(["--id-attr:ID", "urn:oasis:names:tc:SAML:2.0:protocol:Response"])
        .args(extra)
        .arg(&doc)
        .output()
        .expect("xmlsec1 is installed (scripts/test installs Debian's xmlsec1)");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn xmlsec1_accepts_our_response_and_assertion_signatures_and_refuses_tampering() {
    let key = IdpKey::generate("xmlsec test").unwrap();
    for (resp, assertion) in [(true, false), (false, true), (true, true)] {
        let xml = build(&input(resp, assertion), &key).unwrap();
        let (ok, err) = xmlsec1_verify(&key, &xml, &[]);
        assert!(ok, "response={resp} assertion={assertion}: {err}\n{xml}");
        if resp && assertion {
            // The Assertion's own signature too (the first Signature is the Response's).
            let (ok, err) = xmlsec1_verify(
                &key,
                &xml,
                &["--node-xpath", "//*[local-name()='Assertion']/*[local-name()='Signature']"],
            );
            assert!(ok, "assertion signature: {err}");
        }
        let tampered = xml.replace("ada@example.com", "eve@example.com");
        let (ok, _) = xmlsec1_verify(&key, &tampered, &[]);
        assert!(!ok, "a changed NameID must break the signature");
    }
    let other = IdpKey::generate("someone else").unwrap();
    let xml = build(&input(true, false), &key).unwrap();
    assert!(!xmlsec1_verify(&other, &xml, &[]).0, "another certificate must not verify");
}
