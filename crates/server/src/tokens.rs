//! API tokens: random, shown once, stored as an argon2id hash found through a short
//! SHA-256 lookup key. Verified tokens are cached briefly so that a request does not pay
//! for argon2 every time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Tokens this service makes start with this, so that leaked ones are easy to recognise.
pub const TOKEN_PREFIX: &str = "prv_";

/// A fresh random token (256 bits).
pub fn generate() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// The key the token's row is found by: hex of the first 16 bytes of SHA-256.
pub fn lookup_key(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..16])
}

/// The argon2id PHC string stored for a token or password.
pub fn hash(secret: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(Argon2::default().hash_password(secret.as_bytes(), &salt)?.to_string())
}

/// Whether `secret` matches the stored PHC string.
pub fn verify(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
}

/// Recently verified tokens: SHA-256 of the token -> the token's name.
pub struct VerifiedCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl VerifiedCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn get(&self, token: &str) -> Option<String> {
        let map = self.entries.lock().ok()?;
        map.get(&Self::key(token)).filter(|(_, at)| at.elapsed() < self.ttl).map(|(name, _)| name.clone())
    }

    pub fn put(&self, token: &str, name: String) {
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= 10_000 {
                map.retain(|_, (_, at)| at.elapsed() < self.ttl);
                if map.len() >= 10_000 {
                    map.clear();
                }
            }
            map.insert(Self::key(token), (name, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hash_and_verify() {
        let t = generate();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() > 40);
        assert_ne!(t, generate());
        let h = hash(&t).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains(&t));
        assert!(verify(&t, &h));
        assert!(!verify("prv_wrong", &h));
        assert!(!verify(&t, "not a hash"));
        assert_eq!(lookup_key(&t).len(), 32);
    }

    #[test]
    fn cache_expires() {
        let c = VerifiedCache::new(Duration::from_millis(0));
        c.put("a", "n".into());
        assert_eq!(c.get("a"), None);
        let c = VerifiedCache::new(Duration::from_secs(60));
        c.put("a", "n".into());
        assert_eq!(c.get("a").as_deref(), Some("n"));
        assert_eq!(c.get("b"), None);
    }
}
