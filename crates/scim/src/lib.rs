//! SCIM 2.0 protocol client (RFC 7643 / RFC 7644) for the Provisioner engine.
//!
//! - [`filter`]: filter expressions with correct string quoting.
//! - [`types`]: list responses, error bodies, capabilities, PATCH requests.
//! - [`Client`]: a retrying, rate-limited HTTP client for one app.
//! - [`ScimError`]: errors classified as retryable or not, with an
//!   admin-facing recommended action.

pub mod client;
pub mod error;
pub mod filter;
pub mod query;
pub mod server;
pub mod types;

pub use client::{Auth, Client, ClientConfig, Pager, GROUPS, SCIM_MEDIA_TYPE, USERS};
pub use error::ScimError;
pub use types::{
    Capabilities, ListResponse, PatchOp, PatchOpKind, PatchOperation, ScimErrorBody, ENTERPRISE_USER_SCHEMA,
    ERROR_SCHEMA, GROUP_SCHEMA, LIST_RESPONSE_SCHEMA, PATCH_OP_SCHEMA, USER_SCHEMA,
};
