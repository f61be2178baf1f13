//! The IdP key pair: RSA 2048, with a self-signed X.509 certificate that carries the public
//! key to the apps (metadata and `ds:KeyInfo`).

use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::{DecodePem, Encode, EncodePem};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{DecodePublicKey, SubjectPublicKeyInfoOwned};
use x509_cert::time::Validity;
use x509_cert::Certificate;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate the key pair: {0}")]
    Generate(String),
    #[error("cannot make the certificate: {0}")]
    Certificate(String),
    #[error("the stored private key is unreadable")]
    PrivateKey,
    #[error("not a PEM X.509 certificate with an RSA public key: {0}")]
    BadCertificate(String),
}

/// How long a generated certificate is valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A private key with its certificate.
#[derive(Clone)]
pub struct IdpKey {
    pub private: RsaPrivateKey,
    /// DER of the certificate.
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for IdpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdpKey(cert sha256 {})", self.fingerprint())
    }
}

impl IdpKey {
    /// A fresh RSA 2048 key and a self-signed certificate for `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, KeyError> {
        let private =
            RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| KeyError::Generate(e.to_string()))?;
        let cert_der = self_signed(&private, common_name)?;
        Ok(Self { private, cert_der })
    }

    /// A key from its PKCS#8 PEM and the certificate's PEM.
    pub fn from_pem(private_pem: &str, cert_pem: &str) -> Result<Self, KeyError> {
        let private = RsaPrivateKey::from_pkcs8_pem(private_pem).map_err(|_| KeyError::PrivateKey)?;
        let cert = Certificate::from_pem(cert_pem.as_bytes()).map_err(|e| KeyError::BadCertificate(e.to_string()))?;
        let cert_der = cert.to_der().map_err(|e| KeyError::BadCertificate(e.to_string()))?;
        Ok(Self { private, cert_der })
    }

    /// The private key as PKCS#8 PEM (to be encrypted before it is stored).
    pub fn private_pem(&self) -> Result<String, KeyError> {
        self.private.to_pkcs8_pem(LineEnding::LF).map(|z| z.to_string()).map_err(|_| KeyError::PrivateKey)
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem_of(&self.cert_der)
    }

    /// The certificate as base64 DER on one line (`ds:X509Certificate`).
    pub fn cert_base64(&self) -> String {
        STANDARD.encode(&self.cert_der)
    }

    /// Hex SHA-256 of the certificate's DER.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }
}

/// PEM of a certificate's DER.
pub fn pem_of(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn self_signed(private: &RsaPrivateKey, common_name: &str) -> Result<Vec<u8>, KeyError> {
    let err = |e: &dyn std::fmt::Display| KeyError::Certificate(e.to_string());
    let cn: String = common_name.chars().filter(|c| c.is_ascii_alphanumeric() || " .-_:/".contains(*c)).collect();
    let subject = Name::from_str(&format!("CN={}", if cn.is_empty() { "Provisioner SAML IdP" } else { &cn }))
        .map_err(|e| err(&e))?;
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let serial = SerialNumber::new(&serial).map_err(|e| err(&e))?;
    let validity = Validity::from_now(CERT_VALIDITY).map_err(|e| err(&e))?;
    let public = RsaPublicKey::from(private);
    let spki = SubjectPublicKeyInfoOwned::from_key(public).map_err(|e| err(&e))?;
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(private.clone());
    let builder =
        CertificateBuilder::new(Profile::Root, serial, validity, subject, spki, &signer).map_err(|e| err(&e))?;
    let cert = builder.build::<rsa::pkcs1v15::Signature>().map_err(|e| err(&e))?;
    cert.to_der().map_err(|e| err(&e))
}

/// The RSA public key of a PEM certificate (an app's signing certificate).
pub fn public_key_of_cert(pem: &str) -> Result<RsaPublicKey, KeyError> {
    let cert = Certificate::from_pem(pem.trim().as_bytes()).map_err(|e| KeyError::BadCertificate(e.to_string()))?;
    let spki =
        cert.tbs_certificate.subject_public_key_info.to_der().map_err(|e| KeyError::BadCertificate(e.to_string()))?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| KeyError::BadCertificate(e.to_string()))
}

/// PEM of a certificate, re-encoded; for checking an admin's input.
pub fn normalize_cert_pem(pem: &str) -> Result<String, KeyError> {
    public_key_of_cert(pem)?;
    let cert = Certificate::from_pem(pem.trim().as_bytes()).map_err(|e| KeyError::BadCertificate(e.to_string()))?;
    cert.to_pem(LineEnding::LF).map_err(|e| KeyError::BadCertificate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pem() {
        let key = IdpKey::generate("Test IdP").unwrap();
        let again = IdpKey::from_pem(&key.private_pem().unwrap(), &key.cert_pem()).unwrap();
        assert_eq!(again.private, key.private);
        assert_eq!(again.cert_der, key.cert_der);
        let public = public_key_of_cert(&key.cert_pem()).unwrap();
        assert_eq!(public, RsaPublicKey::from(&key.private));
        assert!(public_key_of_cert("not a cert").is_err());
    }
}
