//! API tokens: random, shown once, stored as an argon2id hash found through a lookup key
//! (HMAC-SHA256 of the token under a key derived from the server's secret key). Verified
//! tokens are cached for [`CACHE_TTL`] so that a request does not pay for argon2 every time;
//! a revoked token is refused by every process once that time has passed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use store::secrets::Keyring;

/// Tokens this service makes start with this, so that leaked ones are easy to recognise.
pub const TOKEN_PREFIX: &str = "prv_";

/// A fresh random token (256 bits).
pub fn generate() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// How long a verified token is let through without reading its row again: a token revoked
/// in any process is refused by every process within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// The lookup key rows were found by before keyed lookups: hex of the first 16 bytes of
/// SHA-256. Such a row is re-keyed when its token is next used.
pub fn legacy_lookup_key(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..16])
}

/// The keys a token's row may be found by, the current one first (see
/// [`Keyring::token_lookups`]), then the legacy one.
pub fn lookup_keys(keyring: &Keyring, token: &str) -> Vec<String> {
    let mut keys = keyring.token_lookups(token);
    keys.push(legacy_lookup_key(token));
    keys
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

/// Verified tokens: SHA-256 of the token -> the token's name, the stored hash it was verified
/// against, and when. A fresh entry (within the time-to-live) lets a request through without
/// reading the store. An older one still proves that the token matches that stored hash: the
/// store is read again (so that revocation shows), but argon2 is not run again while the hash
/// is unchanged. Without that proof, every request in flight when an entry expired would run
/// argon2 at once (a busy client stalled the service for seconds every time-to-live).
pub struct VerifiedCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

struct Verified {
    name: String,
    phc: String,
    at: Instant,
}

impl VerifiedCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The token's name, if it was verified within the time-to-live.
    pub fn get(&self, token: &str) -> Option<String> {
        let map = self.entries.lock().ok()?;
        map.get(&Self::key(token)).filter(|v| v.at.elapsed() < self.ttl).map(|v| v.name.clone())
    }

    /// Whether the token was verified against the stored hash `phc` (at any time).
    pub fn proven(&self, token: &str, phc: &str) -> bool {
        self.entries.lock().is_ok_and(|map| map.get(&Self::key(token)).is_some_and(|v| v.phc == phc))
    }

    /// Forgets every verification (after a revocation in this process).
    pub fn clear(&self) {
        if let Ok(mut map) = self.entries.lock() {
            map.clear();
        }
    }

    pub fn put(&self, token: &str, name: String, phc: &str) {
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= 10_000 {
                map.retain(|_, v| v.at.elapsed() < self.ttl);
                if map.len() >= 10_000 {
                    map.clear();
                }
            }
            map.insert(Self::key(token), Verified { name, phc: phc.to_owned(), at: Instant::now() });
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
        assert_eq!(legacy_lookup_key(&t).len(), 32);
    }

    #[test]
    fn cache_expires_but_keeps_the_proof() {
        let c = VerifiedCache::new(Duration::from_millis(0));
        c.put("a", "n".into(), "$argon2id$h1");
        assert_eq!(c.get("a"), None, "expired: read the store again");
        assert!(c.proven("a", "$argon2id$h1"), "but no argon2 for the same stored hash");
        assert!(!c.proven("a", "$argon2id$h2"), "a new hash is verified again");
        assert!(!c.proven("b", "$argon2id$h1"));
        let c = VerifiedCache::new(Duration::from_secs(60));
        c.put("a", "n".into(), "$argon2id$h1");
        assert_eq!(c.get("a").as_deref(), Some("n"));
        assert_eq!(c.get("b"), None);
    }
}
