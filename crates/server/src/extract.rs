//! Request extractors that turn every kind of bad input into a problem naming the field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;

/// The largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// The deepest nesting of arrays and objects accepted in a JSON body. Checked by a flat scan
/// before serde sees the body (serde_json's own recursion limit, 128 levels, stays behind it).
pub const MAX_JSON_DEPTH: usize = 64;

/// A JSON body, parsed so that errors name the field at fault.
pub struct ApiJson<T>(pub T);

fn check_content_type(headers: &HeaderMap, merge_patch: bool) -> Result<(), Error> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ok = mime == "application/json" || (merge_patch && mime == "application/merge-patch+json");
    if ok {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType)
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge { limit: MAX_BODY }
        } else if let Some(slow) = too_slow(&e) {
            Error::RequestTimeout(slow.to_string())
        } else {
            Error::bad_request("body", e.body_text())
        }
    })
}

/// The [`crate::listener::BodyTooSlow`] behind a body error, if that is what it is.
pub fn too_slow<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a crate::listener::BodyTooSlow> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(slow) = err.downcast_ref::<crate::listener::BodyTooSlow>() {
            return Some(slow);
        }
        cur = err.source();
    }
    None
}

/// Parses `bytes` into `T`; a syntax error is `MalformedJson`, a shape error names its path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    // First as plain JSON, so that syntax errors and shape errors are told apart.
    let value = strict_json(bytes)?;
    from_value(value)
}

/// Converts a JSON value into `T`, naming the path of the first field that does not fit.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde says "unknown field `x`, expected ..." at the parent's path: name the field itself.
        let (field, reason) = match inner.strip_prefix("unknown field `").and_then(|r| r.split_once('`')) {
            // A key that is the empty string (found by tests/fuzz.rs): name the object holding it.
            Some(("", _)) => (
                match path.trim_end_matches('.') {
                    "" => "body".to_owned(),
                    parent => parent.to_owned(),
                },
                "has a key that is the empty string, which is not a known field".to_owned(),
            ),
            Some((name, _)) => (join_path(&path, name), "is not a known field".to_owned()),
            None => {
                let reason = match inner.strip_prefix("missing field `").and_then(|r| r.split_once('`')) {
                    Some((name, _)) => {
                        return Error::Invalid(directory::ValidationErrors::single(
                            join_path(&path, name),
                            "is required",
                        ));
                    }
                    None => inner,
                };
                (if path == "." { "body".to_owned() } else { path }, reason)
            }
        };
        Error::Invalid(directory::ValidationErrors::single(field, reason))
    })
}

/// The full path of field `name` reported at `path` (which may already end with it).
fn join_path(path: &str, name: &str) -> String {
    if path == "." {
        name.to_owned()
    } else if path == name || path.ends_with(&format!(".{name}")) {
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(req.headers(), false)?;
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON merge patch (RFC 7396) body: must be a JSON object.
pub struct MergePatch(pub serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for MergePatch {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(req.headers(), true)?;
        let bytes = body_bytes(req, state).await?;
        match strict_json(&bytes)? {
            Value::Object(map) => Ok(MergePatch(map)),
            _ => {
                Err(Error::Invalid(directory::ValidationErrors::single("body", "a merge patch must be a JSON object")))
            }
        }
    }
}

/// The version named by an `If-Match` header, if any (`*` means any version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub Option<i64>);

/// The ETag of a version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = raw.to_str().map_err(|_| Error::bad_request("If-Match", "is not valid text"))?.trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        let unquoted = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        unquoted
            .parse::<i64>()
            .map(|v| IfMatch(Some(v)))
            .map_err(|_| Error::bad_request("If-Match", "must be an ETag this service returned, such as \"3\""))
    }
}

/// Path parameters (axum's `Path`), with errors as problems naming the parameter
/// (`/api/v1/users/not-a-uuid` answers 400 `application/problem+json` naming `id`).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::DeserializeError { key, .. } => key.clone(),
                    _ => "path".to_owned(),
                };
                let text = e.body_text();
                let reason =
                    if text.to_ascii_lowercase().contains("uuid") { "is not an id (a UUID)".to_owned() } else { text };
                Err(Error::bad_request(field, reason))
            }
            Err(e) => Err(Error::bad_request("path", e.body_text())),
        }
    }
}

/// Query parameters, with errors as problems naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            match inner.strip_prefix("unknown field `").and_then(|r| r.split_once('`')) {
                Some((name, _)) => Error::bad_request(name, "is not a known query parameter"),
                None if path == "." => Error::bad_request("query", inner),
                None => Error::bad_request(path, inner),
            }
        })
    }
}

/// Why a body is not acceptable JSON.
#[derive(Debug)]
pub enum JsonError {
    /// Not JSON.
    Syntax(String),
    /// Arrays and objects nested deeper than [`MAX_JSON_DEPTH`] levels.
    TooDeep,
    /// An object names this key twice (the key's path).
    DuplicateKey(String),
}

/// A JSON value read with every object's keys checked for duplicates ("last wins" would let
/// one reader see one value and another reader the other).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

const DUPLICATE: &str = "\u{0}duplicate key: ";

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: Result<Strict, A::Error> = map.next_value();
            let Strict(v) = value.map_err(|e| {
                // Name the whole path of a duplicate found deeper.
                let text = e.to_string();
                match text.strip_prefix(DUPLICATE) {
                    Some(rest) => {
                        let inner = rest.split(" at line ").next().unwrap_or(rest);
                        serde::de::Error::custom(format!("{DUPLICATE}{key}.{inner}"))
                    }
                    None => e,
                }
            })?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE}{key}")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The deepest nesting of arrays and objects in `bytes`, by a flat scan (no recursion) that
/// skips strings; it stops as soon as `limit` is passed. Malformed input is left to the
/// parser to refuse.
pub fn json_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    break;
                }
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses a request body as JSON, refusing duplicate keys. Bounded before serde sees it:
/// bodies are at most [`MAX_BODY`] bytes (the extractors' limit) and [`MAX_JSON_DEPTH`] levels
/// deep (a flat scan); serde_json's own recursion limit of 128 levels stays behind that.
pub fn strict_json(bytes: &[u8]) -> Result<Value, JsonError> {
    if json_depth(bytes, MAX_JSON_DEPTH) > MAX_JSON_DEPTH {
        return Err(JsonError::TooDeep);
    }
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(v)) => Ok(v),
        Err(e) => {
            let text = e.to_string();
            match text.strip_prefix(DUPLICATE) {
                Some(rest) => Err(JsonError::DuplicateKey(rest.split(" at line ").next().unwrap_or(rest).to_owned())),
                None => Err(JsonError::Syntax(text)),
            }
        }
    }
}

impl From<JsonError> for Error {
    fn from(e: JsonError) -> Self {
        match e {
            JsonError::Syntax(m) => Error::MalformedJson(m),
            JsonError::TooDeep => {
                Error::bad_request("body", format!("nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"))
            }
            JsonError::DuplicateKey(path) => Error::bad_request(path, "is given more than once in the body"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_key_is_refused_naming_the_object_that_holds_it() {
        fn field<T: DeserializeOwned + std::fmt::Debug>(v: Value) -> (String, String) {
            match from_value::<T>(v) {
                Err(Error::Invalid(e)) => (e.0[0].field.clone(), e.0[0].reason.clone()),
                other => panic!("{other:?}"),
            }
        }
        let (f, reason) = field::<directory::RoleInput>(serde_json::json!({"name": "x", "": 1}));
        assert_eq!(f, "body");
        assert!(reason.contains("empty string"), "{reason}");
        let rules = serde_json::json!([{"name": "r", "actions": [], "": 1}]);
        assert_eq!(field::<Vec<directory::Rule>>(rules).0, "[0]");
        let rules = serde_json::json!([{"name": "r", "conditions": [{"": 1}], "actions": []}]);
        assert_eq!(field::<Vec<directory::Rule>>(rules).0, "[0].conditions[0]");
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        assert!(matches!(strict_json(br#"{"a": 1, "a": 2}"#), Err(JsonError::DuplicateKey(p)) if p == "a"));
        assert!(matches!(strict_json(br#"{"x": {"b": 1, "b": 2}}"#), Err(JsonError::DuplicateKey(p)) if p == "x.b"));
        assert!(matches!(strict_json(br#"{"x": [{"c": 1, "c": 1}]}"#), Err(JsonError::DuplicateKey(p)) if p == "x.c"));
        assert_eq!(
            strict_json(br#"{"a": [1, {"b": null}], "c": 1.5}"#).unwrap(),
            serde_json::json!({"a": [1, {"b": null}], "c": 1.5})
        );
        assert!(matches!(strict_json(b"{"), Err(JsonError::Syntax(_))));
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn deep_json_is_refused_by_a_flat_scan_before_serde() {
        for depth in [MAX_JSON_DEPTH + 1, 100_000] {
            assert!(matches!(strict_json(nested(depth).as_bytes()), Err(JsonError::TooDeep)), "{depth}");
        }
        assert!(strict_json(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        // Brackets inside strings (escaped quotes too) are text, not nesting.
        let text = format!(r#"{{"a": "\"{}"}}"#, "[{".repeat(1000));
        assert!(strict_json(text.as_bytes()).is_ok());
        assert_eq!(json_depth(br#"{"a": [{"b": "]]]"}], "c": {}}"#, 64), 3);
    }

    #[test]
    fn serde_json_itself_stops_at_128_levels() {
        // What stays behind the scan (and bounds the JSON the engine reads from apps):
        // serde_json's default recursion limit refuses the 128th level with an error.
        let parse = |d: usize| serde_json::from_str::<Value>(&nested(d));
        assert!(parse(127).is_ok());
        assert!(parse(128).unwrap_err().to_string().contains("recursion limit exceeded"));
        assert!(parse(100_000).unwrap_err().to_string().contains("recursion limit exceeded"));
    }
}
