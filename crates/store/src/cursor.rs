//! Opaque page cursors: the sort key of the last item of a page, base64url-encoded JSON.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::StoreError;

/// Encodes the sort key of the last item of a page.
pub fn encode(key: &[String]) -> String {
    let json = serde_json::to_vec(key).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a cursor made by [`encode`] with `parts` components.
pub fn decode(cursor: &str, parts: usize) -> Result<Vec<String>, StoreError> {
    if cursor.len() > 2048 {
        return Err(StoreError::InvalidCursor);
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| StoreError::InvalidCursor)?;
    let key: Vec<String> = serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
    if key.len() == parts {
        Ok(key)
    } else {
        Err(StoreError::InvalidCursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let key = vec!["ada".to_string(), "0191-x".to_string()];
        assert_eq!(decode(&encode(&key), 2).unwrap(), key);
        assert!(decode(&encode(&key), 1).is_err());
        assert!(decode("!!!", 2).is_err());
        assert!(decode("", 2).is_err());
    }
}
