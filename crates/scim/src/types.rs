//! SCIM message types (RFC 7643 / RFC 7644).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Schema URN of a PATCH request body.
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// Schema URN of a list response.
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// Schema URN of an error body.
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
/// Schema URN of the core User resource.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Schema URN of the core Group resource.
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// Schema URN of the enterprise User extension.
pub const ENTERPRISE_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// A SCIM list response (RFC 7644 section 3.4.2). Missing fields are tolerated:
/// counters become `None` and a missing or `null` `Resources` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "T: Deserialize<'de>"))]
pub struct ListResponse<T> {
    #[serde(default)]
    pub schemas: Vec<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub total_results: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub start_index: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub items_per_page: Option<u64>,
    #[serde(rename = "Resources", alias = "resources", default = "Vec::new", deserialize_with = "null_as_empty")]
    pub resources: Vec<T>,
    /// The cursor of the next page (draft-ietf-scim-cursor-pagination); absent on the last.
    #[serde(default, rename = "nextCursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T> Default for ListResponse<T> {
    fn default() -> Self {
        Self {
            schemas: vec![LIST_RESPONSE_SCHEMA.to_string()],
            total_results: Some(0),
            start_index: Some(1),
            items_per_page: Some(0),
            resources: Vec::new(),
            next_cursor: None,
        }
    }
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Accept numbers, numeric strings and null.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64))
        }
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// A SCIM error body (RFC 7644 section 3.12). `status` may be sent as a
/// string (as the RFC says) or as a number (as many servers do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScimErrorBody {
    #[serde(default)]
    pub schemas: Vec<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scim_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// What a SCIM service provider supports, distilled from its
/// `/ServiceProviderConfig` (RFC 7643 section 5). Stored by the application
/// as JSON, so keep it serde-stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub patch: bool,
    pub filter: bool,
    pub filter_max_results: Option<u32>,
    pub etag: bool,
    pub bulk: bool,
    pub bulk_max_operations: Option<u32>,
    pub sort: bool,
    pub change_password: bool,
    /// Cursor pagination (draft-ietf-scim-cursor-pagination: `"pagination": {"cursor": true}`).
    pub cursor: bool,
}

impl Default for Capabilities {
    /// Conservative capabilities, used when a server has no usable
    /// `/ServiceProviderConfig`: no PATCH (PUT is mandatory in RFC 7644, so
    /// updates still work), no bulk, no ETags, no sort. Equality filters are
    /// assumed, because every provisioning target in practice supports
    /// `userName eq "..."`.
    fn default() -> Self {
        Self {
            patch: false,
            filter: true,
            filter_max_results: None,
            etag: false,
            bulk: false,
            bulk_max_operations: None,
            sort: false,
            change_password: false,
            cursor: false,
        }
    }
}

impl Capabilities {
    /// Everything off, including filtering.
    pub fn none() -> Self {
        Self { filter: false, ..Self::default() }
    }

    /// Read a `ServiceProviderConfig` resource. Tolerant: a missing feature
    /// counts as unsupported, and `"supported": "true"` (a string) is accepted.
    pub fn from_service_provider_config(spc: &Value) -> Self {
        let feature = |name: &str| -> Option<&Map<String, Value>> {
            spc.get(name)
                .or_else(|| {
                    // Some servers use other casings, e.g. "Patch".
                    spc.as_object().and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
                })
                .and_then(Value::as_object)
        };
        let supported =
            |name: &str| -> bool { feature(name).and_then(|f| f.get("supported")).map(truthy).unwrap_or(false) };
        let number = |name: &str, field: &str| -> Option<u32> {
            feature(name).and_then(|f| f.get(field)).and_then(|v| match v {
                Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
        };
        let filter = supported("filter");
        let bulk = supported("bulk");
        Self {
            patch: supported("patch"),
            filter,
            filter_max_results: if filter { number("filter", "maxResults") } else { None },
            etag: supported("etag"),
            bulk,
            bulk_max_operations: if bulk { number("bulk", "maxOperations") } else { None },
            sort: supported("sort"),
            change_password: supported("changePassword"),
            cursor: feature("pagination").and_then(|f| f.get("cursor")).map(truthy).unwrap_or(false),
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// A PATCH operation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchOpKind {
    Add,
    Remove,
    Replace,
}

/// One PATCH operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchOperation {
    pub op: PatchOpKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// A PATCH request body (RFC 7644 section 3.5.2), built with the methods below.
///
/// ```
/// use scim::PatchOp;
/// let op = PatchOp::new().replace("active", false.into());
/// assert_eq!(op.operations.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchOp {
    pub schemas: Vec<String>,
    #[serde(rename = "Operations")]
    pub operations: Vec<PatchOperation>,
}

impl Default for PatchOp {
    fn default() -> Self {
        Self::new()
    }
}

impl PatchOp {
    /// An empty PATCH request.
    pub fn new() -> Self {
        Self { schemas: vec![PATCH_OP_SCHEMA.to_string()], operations: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Append an operation.
    pub fn push(mut self, op: PatchOpKind, path: Option<String>, value: Option<Value>) -> Self {
        self.operations.push(PatchOperation { op, path, value });
        self
    }

    /// `add` at `path`.
    pub fn add(self, path: impl Into<String>, value: Value) -> Self {
        self.push(PatchOpKind::Add, Some(path.into()), Some(value))
    }

    /// `replace` at `path`.
    pub fn replace(self, path: impl Into<String>, value: Value) -> Self {
        self.push(PatchOpKind::Replace, Some(path.into()), Some(value))
    }

    /// `remove` at `path`.
    pub fn remove(self, path: impl Into<String>) -> Self {
        self.push(PatchOpKind::Remove, Some(path.into()), None)
    }

    /// One `replace` operation per attribute, with the attribute name as path.
    pub fn replace_attributes<I, K>(attrs: I) -> Self
    where
        I: IntoIterator<Item = (K, Value)>,
        K: Into<String>,
    {
        attrs.into_iter().fold(Self::new(), |op, (k, v)| op.replace(k, v))
    }

    /// `{"op":"add","path":"members","value":[{"value":id},...]}`.
    /// Adds nothing when `member_ids` is empty.
    pub fn add_members<S: AsRef<str>>(self, member_ids: &[S]) -> Self {
        if member_ids.is_empty() {
            return self;
        }
        let value = Value::Array(member_ids.iter().map(|id| serde_json::json!({ "value": id.as_ref() })).collect());
        self.add("members", value)
    }

    /// One `{"op":"remove","path":"members[value eq \"id\"]"}` per member.
    pub fn remove_members<S: AsRef<str>>(self, member_ids: &[S]) -> Self {
        member_ids
            .iter()
            .fold(self, |op, id| op.remove(format!("members[{}]", crate::filter::eq("value", id.as_ref()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_response_full() {
        let v = json!({"schemas":[LIST_RESPONSE_SCHEMA],"totalResults":3,"startIndex":1,
            "itemsPerPage":2,"Resources":[{"id":"a"},{"id":"b"}]});
        let l: ListResponse<Value> = serde_json::from_value(v).expect("parse");
        assert_eq!(l.total_results, Some(3));
        assert_eq!(l.start_index, Some(1));
        assert_eq!(l.items_per_page, Some(2));
        assert_eq!(l.resources.len(), 2);
    }

    #[test]
    fn list_response_tolerates_missing_and_odd_fields() {
        let l: ListResponse<Value> = serde_json::from_value(json!({})).expect("parse");
        assert_eq!(l.total_results, None);
        assert!(l.resources.is_empty());
        let l: ListResponse<Value> =
            serde_json::from_value(json!({"totalResults":"7","Resources":null,"startIndex":null})).expect("parse");
        assert_eq!(l.total_results, Some(7));
        assert_eq!(l.start_index, None);
        assert!(l.resources.is_empty());
        let l: ListResponse<Value> =
            serde_json::from_value(json!({"resources":[{"id":"x"}], "totalResults": 1.0})).expect("parse");
        assert_eq!(l.resources.len(), 1);
        assert_eq!(l.total_results, Some(1));
    }

    #[test]
    fn error_body_status_string_or_number() {
        let e: ScimErrorBody = serde_json::from_value(
            json!({"schemas":[ERROR_SCHEMA],"status":"409","scimType":"uniqueness","detail":"dup"}),
        )
        .expect("parse");
        assert_eq!(e.status.as_deref(), Some("409"));
        assert_eq!(e.scim_type.as_deref(), Some("uniqueness"));
        let e: ScimErrorBody = serde_json::from_value(json!({"status":400,"detail":"bad"})).expect("parse");
        assert_eq!(e.status.as_deref(), Some("400"));
        let e: ScimErrorBody = serde_json::from_value(json!({})).expect("parse");
        assert_eq!(e, ScimErrorBody::default());
    }

    #[test]
    fn capabilities_from_spc() {
        let spc = json!({
            "patch":{"supported":true},
            "bulk":{"supported":true,"maxOperations":1000,"maxPayloadSize":1048576},
            "filter":{"supported":true,"maxResults":200},
            "changePassword":{"supported":false},
            "sort":{"supported":"true"},
            "etag":{"supported":true}
        });
        let c = Capabilities::from_service_provider_config(&spc);
        assert_eq!(
            c,
            Capabilities {
                patch: true,
                filter: true,
                filter_max_results: Some(200),
                etag: true,
                bulk: true,
                bulk_max_operations: Some(1000),
                sort: true,
                change_password: false,
                cursor: false,
            }
        );
        let c = Capabilities::from_service_provider_config(&json!({"pagination": {"cursor": true, "index": true}}));
        assert!(c.cursor);
        let c = Capabilities::from_service_provider_config(&json!({}));
        assert_eq!(c, Capabilities::none());
    }

    #[test]
    fn capabilities_json_round_trip_and_defaults() {
        let c = Capabilities { patch: true, bulk_max_operations: Some(5), ..Capabilities::default() };
        let s = serde_json::to_string(&c).expect("ser");
        assert_eq!(serde_json::from_str::<Capabilities>(&s).expect("de"), c);
        // Older stored JSON with missing fields still loads.
        let c: Capabilities = serde_json::from_str(r#"{"patch":true}"#).expect("de");
        assert!(c.patch && c.filter && !c.bulk);
    }

    #[test]
    fn patch_op_serialization() {
        let op = PatchOp::new()
            .replace("active", json!(false))
            .remove("nickName")
            .add_members(&["u1", "u2"])
            .remove_members(&["a\"b"]);
        assert_eq!(
            serde_json::to_value(&op).expect("ser"),
            json!({
                "schemas": [PATCH_OP_SCHEMA],
                "Operations": [
                    {"op":"replace","path":"active","value":false},
                    {"op":"remove","path":"nickName"},
                    {"op":"add","path":"members","value":[{"value":"u1"},{"value":"u2"}]},
                    {"op":"remove","path":"members[value eq \"a\\\"b\"]"}
                ]
            })
        );
    }

    #[test]
    fn patch_replace_attributes_and_empty_members() {
        let op = PatchOp::replace_attributes([("displayName", json!("D")), ("title", json!("T"))]);
        assert_eq!(op.operations.len(), 2);
        assert_eq!(op.operations[1].path.as_deref(), Some("title"));
        let none: [&str; 0] = [];
        assert!(PatchOp::new().add_members(&none).is_empty());
        assert!(PatchOp::new().remove_members(&none).is_empty());
    }
}
