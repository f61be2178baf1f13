//! SCIM 2.0 protocol code (RFC 7643 / RFC 7644): the client the Provisioner engine provisions
//! apps with, and the protocol half of the inbound SCIM server.
//!
//! - [`filter`]: filter expressions with correct string quoting.
//! - [`query`]: filter expressions parsed, and evaluated against a JSON resource.
//! - [`server`]: what a SCIM service provider needs, free of storage and HTTP: schemas, the
//!   SCIM error schema, PATCH and attribute projection (the server crate's `/scim/v2`).
//! - [`types`]: list responses, error bodies, capabilities, PATCH requests.
//! - [`Client`]: a retrying, rate-limited HTTP client for one app, paced by a [`Pacer`] when
//!   it is given one (the engine's rate budgets).
//! - [`ScimError`]: errors classified as retryable or not, with an
//!   admin-facing recommended action.

pub mod client;
pub mod error;
pub mod filter;
pub mod pacer;
pub mod query;
pub mod server;
pub mod types;

pub use client::{Auth, Client, ClientConfig, Pager, GROUPS, SCIM_MEDIA_TYPE, USERS};
pub use error::ScimError;
pub use pacer::{PaceFuture, Pacer};
pub use types::{
    Capabilities, ListResponse, PatchOp, PatchOpKind, PatchOperation, ScimErrorBody, ENTERPRISE_USER_SCHEMA,
    ERROR_SCHEMA, GROUP_SCHEMA, LIST_RESPONSE_SCHEMA, PATCH_OP_SCHEMA, USER_SCHEMA,
};
