//! Enveloped XML signatures (RSA-SHA256, exclusive c14n) of our own elements, and the
//! query-string signatures of the HTTP-Redirect binding.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::keys::IdpKey;
use crate::ns;
use crate::xml::El;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signing failed: {0}")]
    Sign(String),
}

fn ds(local: &'static str) -> El {
    El::new("ds", ns::DSIG, local)
}

/// Signs `el` (whose `ID` attribute is `id`) with an enveloped signature, inserted as its
/// child number `position` (after the Issuer: 1). `el` must not hold a signature yet.
pub fn sign_enveloped(el: &mut El, id: &str, position: usize, key: &IdpKey) -> Result<(), SignError> {
    // The enveloped-signature transform removes the signature, and the element is already
    // canonical: the digest is over the element as it is now.
    let digest = STANDARD.encode(Sha256::digest(el.canonical().as_bytes()));
    let signed_info = ds("SignedInfo")
        .child(ds("CanonicalizationMethod").attr("Algorithm", ns::EXC_C14N))
        .child(ds("SignatureMethod").attr("Algorithm", ns::RSA_SHA256))
        .child(
            ds("Reference")
                .attr("URI", format!("#{id}"))
                .child(
                    ds("Transforms")
                        .child(ds("Transform").attr("Algorithm", ns::ENVELOPED))
                        .child(ds("Transform").attr("Algorithm", ns::EXC_C14N)),
                )
                .child(ds("DigestMethod").attr("Algorithm", ns::SHA256))
                .child(ds("DigestValue").text(digest)),
        );
    // SignedInfo canonicalised on its own declares the ds prefix itself.
    let hashed = Sha256::digest(signed_info.canonical().as_bytes());
    let value = key.private.sign(Pkcs1v15Sign::new::<Sha256>(), &hashed).map_err(|e| SignError::Sign(e.to_string()))?;
    let signature = ds("Signature")
        .child(signed_info)
        .child(ds("SignatureValue").text(STANDARD.encode(value)))
        .child(ds("KeyInfo").child(ds("X509Data").child(ds("X509Certificate").text(key.cert_base64()))));
    el.insert(position, signature);
    Ok(())
}

/// Verifies a signature of the HTTP-Redirect binding: `signed` is
/// `SAMLRequest=...&RelayState=...&SigAlg=...` as the query string carried them (still
/// URL-encoded), `signature` the decoded bytes. Only RSA-SHA256 is accepted.
pub fn verify_redirect(signed: &str, sig_alg: &str, signature: &[u8], key: &RsaPublicKey) -> Result<(), String> {
    if sig_alg != ns::RSA_SHA256 {
        return Err(format!("the signature algorithm {sig_alg} is not supported; use {}", ns::RSA_SHA256));
    }
    let hashed = Sha256::digest(signed.as_bytes());
    key.verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, signature)
        .map_err(|_| "the request's signature does not match the app's certificate".to_owned())
}

/// Signs like an SP would (tests and tools): the redirect-binding signature of `signed`.
pub fn sign_redirect(signed: &str, key: &IdpKey) -> Result<Vec<u8>, SignError> {
    let hashed = Sha256::digest(signed.as_bytes());
    key.private.sign(Pkcs1v15Sign::new::<Sha256>(), &hashed).map_err(|e| SignError::Sign(e.to_string()))
}
