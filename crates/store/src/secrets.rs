//! Encryption of secrets at rest (AES-256-GCM).
//!
//! A ciphertext reads `v1.<key id>.<base64(nonce || ciphertext+tag)>`. The key id is the
//! first 4 bytes of SHA-256 of the key, in hex, so that keys can rotate: a keyring holds a
//! primary key, used to encrypt, and earlier keys, still accepted to decrypt. Associated
//! data binds a ciphertext to the record and field it belongs to, so it cannot be moved.

use std::fmt;
use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret key: {0}")]
    BadKey(String),
    #[error("secret key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a stored secret was encrypted with key {0}, which is not in the keyring")]
    UnknownKey(String),
    #[error("a stored secret could not be decrypted (wrong key or tampered data)")]
    Corrupt,
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
    /// The HMAC token lookups are made with, keyed by a key derived from this key.
    lookup: HmacSha256,
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> Result<[u8; 32], SecretError> {
    Ok(hmac_keyed(key)?.chain_update(msg).finalize().into_bytes().into())
}

fn hmac_keyed(key: &[u8]) -> Result<HmacSha256, SecretError> {
    <HmacSha256 as Mac>::new_from_slice(key).map_err(|_| SecretError::BadKey("unusable as an HMAC key".into()))
}

/// The keys secrets are encrypted with. Never printed.
pub struct Keyring {
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|k| k.id.as_str()).collect();
        write!(f, "Keyring({ids:?})")
    }
}

fn key_id(raw: &[u8]) -> String {
    hex::encode(&Sha256::digest(raw)[..4])
}

impl Keyring {
    /// A keyring from base64-encoded 32-byte keys; the first encrypts, all decrypt.
    pub fn from_base64<S: AsRef<str>>(keys: &[S]) -> Result<Self, SecretError> {
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let raw = STANDARD
                .decode(k.as_ref().trim())
                .map_err(|_| SecretError::BadKey(format!("key {} is not valid base64", i + 1)))?;
            if raw.len() != 32 {
                return Err(SecretError::BadKey(format!("key {} must be 32 bytes, not {}", i + 1, raw.len())));
            }
            let cipher = Aes256Gcm::new_from_slice(&raw)
                .map_err(|_| SecretError::BadKey(format!("key {} is unusable", i + 1)))?;
            let lookup = hmac_keyed(&hmac_sha256(&raw, b"provisioner token lookup v1")?)?;
            out.push(Key { id: key_id(&raw), cipher, lookup });
        }
        if out.is_empty() {
            return Err(SecretError::BadKey("no key given".into()));
        }
        Ok(Self { keys: out })
    }

    /// A fresh random key, base64-encoded.
    pub fn generate_key() -> String {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        STANDARD.encode(raw)
    }

    /// Loads the key file (one base64 key a line, the first is the primary), creating it
    /// with a fresh key and mode 0600 when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::KeyFile { path: path.display().to_string(), source };
        if !path.exists() {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(io)?;
            writeln!(f, "{}", Self::generate_key()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                    "the secret key file is readable by other users; chmod 600 it");
            }
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let keys: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        Self::from_base64(&keys)
    }

    /// The keys a token's row may be found by, the current one first: hex of HMAC-SHA256 of
    /// the token under a key derived from each key of the ring (a key rotated out still finds
    /// the rows made under it, which are then re-keyed). Without the secret key, a copy of
    /// the database does not let anyone test guesses of a token.
    pub fn token_lookups(&self, token: &str) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode(k.lookup.clone().chain_update(token.as_bytes()).finalize().into_bytes()))
            .collect()
    }

    /// The id of the key new secrets are encrypted with.
    pub fn primary_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Encrypts `plaintext`, bound to `aad` (e.g. `app:<id>:credential`).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, SecretError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = key
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .map_err(|_| SecretError::Corrupt)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!("v1.{}.{}", key.id, STANDARD.encode(blob)))
    }

    /// Decrypts a ciphertext made by [`Keyring::encrypt`] with any key of the ring.
    pub fn decrypt(&self, ciphertext: &str, aad: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut parts = ciphertext.splitn(3, '.');
        let (Some("v1"), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecretError::Corrupt);
        };
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| SecretError::UnknownKey(id.to_owned()))?;
        let blob = STANDARD.decode(b64).map_err(|_| SecretError::Corrupt)?;
        if blob.len() < 12 + 16 {
            return Err(SecretError::Corrupt);
        }
        let (nonce, ct) = blob.split_at(12);
        key.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| SecretError::Corrupt)
    }

    /// Whether a ciphertext was made with an older key and should be re-encrypted.
    pub fn is_stale(&self, ciphertext: &str) -> bool {
        ciphertext.split('.').nth(1) != Some(self.primary_id())
    }
}

/// The associated data binding an app's credential to that app.
fn credential_aad(app: uuid::Uuid) -> Vec<u8> {
    format!("app:{app}:credential").into_bytes()
}

/// Encrypts an app's credential for storage.
pub fn encrypt_credential(
    keyring: &Keyring,
    app: uuid::Uuid,
    secret: &directory::Secret,
) -> Result<String, SecretError> {
    let plain = serde_json::to_vec(secret).map_err(|_| SecretError::Corrupt)?;
    keyring.encrypt(&plain, &credential_aad(app))
}

/// Decrypts an app's stored credential.
pub fn decrypt_credential(
    keyring: &Keyring,
    app: uuid::Uuid,
    ciphertext: &str,
) -> Result<directory::Secret, SecretError> {
    let plain = keyring.decrypt(ciphertext, &credential_aad(app))?;
    serde_json::from_slice(&plain).map_err(|_| SecretError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_and_lookups_follow_the_ring() {
        // RFC 4231, test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let (a, b) = (Keyring::generate_key(), Keyring::generate_key());
        let one = Keyring::from_base64(&[&a]).unwrap();
        let rotated = Keyring::from_base64(&[&b, &a]).unwrap();
        let l = one.token_lookups("prv_x");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].len(), 64);
        assert_ne!(l[0], hex::encode(Sha256::digest(b"prv_x")), "keyed, not a plain digest");
        assert_eq!(rotated.token_lookups("prv_x")[1], l[0], "the old key still finds the row");
        assert_ne!(rotated.token_lookups("prv_x")[0], l[0]);
    }

    #[test]
    fn round_trip_binding_and_rotation() {
        let old = Keyring::generate_key();
        let new = Keyring::generate_key();
        let ring_old = Keyring::from_base64(&[&old]).unwrap();
        let ct = ring_old.encrypt(b"hunter2", b"app:1").unwrap();
        assert!(!ct.contains("hunter2"));
        assert_eq!(ring_old.decrypt(&ct, b"app:1").unwrap(), b"hunter2");
        // Bound to its record.
        assert!(matches!(ring_old.decrypt(&ct, b"app:2"), Err(SecretError::Corrupt)));
        // After rotation, old ciphertexts still decrypt and are reported stale.
        let ring = Keyring::from_base64(&[&new, &old]).unwrap();
        assert_eq!(ring.decrypt(&ct, b"app:1").unwrap(), b"hunter2");
        assert!(ring.is_stale(&ct));
        assert!(!ring.is_stale(&ring.encrypt(b"x", b"a").unwrap()));
        // A keyring without the key says which key is missing.
        let other = Keyring::from_base64(&[&new]).unwrap();
        assert!(matches!(other.decrypt(&ct, b"app:1"), Err(SecretError::UnknownKey(_))));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Keyring::from_base64(&["not base64!"]).is_err());
        assert!(Keyring::from_base64(&["c2hvcnQ="]).is_err());
        assert!(Keyring::from_base64::<&str>(&[]).is_err());
    }

    #[test]
    fn key_file_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = Keyring::load_or_create(&path).unwrap();
        let b = Keyring::load_or_create(&path).unwrap();
        assert_eq!(a.primary_id(), b.primary_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
