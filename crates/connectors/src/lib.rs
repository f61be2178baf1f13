//! The connector seams of the provisioning engine.
//!
//! - Targets: the engine talks to every app (SCIM now, an LDAP target later) through the
//!   object-safe [`Connector`] trait, in terms of JSON resources, and gets each app's
//!   connector from the [`ConnectorRegistry`] (keyed by the app's connector kind).
//!   [`ScimConnector`] implements it on top of [`scim::Client`].
//! - Directory sources: the source runner reads people through the [`Source`] trait, opened
//!   by the [`SourceRegistry`] (keyed by the source's kind); [`ldap`] implements it for LDAP
//!   and Active Directory.

mod diff;
mod error;
pub mod ldap;
mod registry;
mod scan;
mod scim_connector;
mod source;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use diff::patch_from_diff;
pub use error::{ConnectorError, ErrorKind};
/// Where outbound connections may go (every connector applies it).
pub use outbound::{Cidr, TargetPolicy};
pub use registry::{BuildError, ConnectorFactory, ConnectorRegistry, ConnectorSettings};
pub use scan::{ReadReport, Scan};
pub use scim::Capabilities;
/// What paces an app's requests (the engine's rate budgets), and the error of a request it
/// holds back ([`scim::ScimError::Held`]).
pub use scim::{PaceFuture, Pacer, ScimError};
pub use scim_connector::{member_values, ScimConnector, ScimFactory, DEFAULT_MEMBER_CHUNK_SIZE};
pub use source::{DirectoryEntry, PeopleReader, Source, SourceError, SourceFactory, SourceRegistry};

/// An account (or group) as stored in the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteAccount {
    /// The target's identifier of the resource.
    pub id: String,
    /// The resource as the target returned it.
    pub resource: Value,
}

impl RemoteAccount {
    /// Wrap a resource that has a string `id`.
    pub fn from_resource(resource: Value) -> Result<Self, ConnectorError> {
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ConnectorError::invalid_response("the target returned a resource without an id"))?
            .to_string();
        Ok(Self { id, resource })
    }
}

/// Which page to fetch: 1-based `start_index`, up to `count` items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    pub start_index: u64,
    pub count: u32,
}

impl PageRequest {
    pub fn first(count: u32) -> Self {
        Self { start_index: 1, count }
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::first(100)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<RemoteAccount>,
    /// Total number of items, when the target says.
    pub total: Option<u64>,
    /// The request for the next page, or `None` after the last one.
    pub next: Option<PageRequest>,
}

/// What the engine needs from a provisioning target.
///
/// Object-safe: use it as `Arc<dyn Connector>`.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Check connectivity and credentials; return what the target supports
    /// (the engine stores it and passes it back when building connectors).
    async fn test_connection(&self) -> Result<Capabilities, ConnectorError>;

    async fn create_account(&self, resource: &Value) -> Result<RemoteAccount, ConnectorError>;

    /// `None` when the account does not exist.
    async fn get_account(&self, id: &str) -> Result<Option<RemoteAccount>, ConnectorError>;

    /// Accounts whose `match_attr` equals `value` (e.g. `userName`).
    async fn find_account(&self, match_attr: &str, value: &str) -> Result<Vec<RemoteAccount>, ConnectorError>;

    /// Accounts matching any of the `(attribute, value)` pairs (e.g. our `externalId` or
    /// the `userName`), in as few requests as the target allows.
    async fn find_account_any(&self, matches: &[(&str, &str)]) -> Result<Vec<RemoteAccount>, ConnectorError> {
        let mut found: Vec<RemoteAccount> = Vec::new();
        for (attr, value) in matches {
            for a in self.find_account(attr, value).await? {
                if !found.iter().any(|f| f.id == a.id) {
                    found.push(a);
                }
            }
        }
        Ok(found)
    }

    /// The accounts whose `match_attr` equals any of `values` (e.g. the userNames of a batch
    /// of new accounts), in as few requests as the target allows. `None` when the target cannot
    /// answer completely that way (no `or` filters, a truncated answer, an error): the caller
    /// then looks each value up with [`Self::find_account`].
    async fn find_accounts_batch(
        &self,
        _match_attr: &str,
        _values: &[&str],
    ) -> Result<Option<Vec<RemoteAccount>>, ConnectorError> {
        Ok(None)
    }

    /// Bring the account to `desired`. `previous` is what the engine last
    /// pushed (or read), used to send only the differences. Returns the
    /// updated account when the target answers with it.
    async fn update_account(
        &self,
        id: &str,
        desired: &Value,
        previous: Option<&Value>,
    ) -> Result<Option<RemoteAccount>, ConnectorError>;

    /// Set the account inactive (`active = false`) without deleting it.
    async fn deactivate_account(&self, id: &str) -> Result<(), ConnectorError>;

    /// Delete the account; an already missing account is not an error.
    async fn delete_account(&self, id: &str) -> Result<(), ConnectorError>;

    async fn list_accounts(&self, page: PageRequest) -> Result<Page, ConnectorError>;

    async fn list_groups(&self, page: PageRequest) -> Result<Page, ConnectorError>;

    /// Every account (`groups` false) or group of the app, read and checked as described in
    /// [`Scan`]'s module: when no way of reading is consistent, the scan holds no items and
    /// names the contradictions. The default walks [`Self::list_accounts`] /
    /// [`Self::list_groups`].
    async fn scan(&self, groups: bool, page_size: u32) -> Result<Scan, ConnectorError> {
        let mut report = ReadReport { tried: vec!["listing".into()], ..Default::default() };
        let mut items = Vec::new();
        let mut next = Some(PageRequest::first(page_size));
        while let Some(p) = next {
            let page = if groups { self.list_groups(p).await? } else { self.list_accounts(p).await? };
            report.pages += 1;
            items.extend(page.items);
            next = page.next;
        }
        report.strategy = Some("listing".into());
        Ok(Scan { items, report })
    }

    async fn create_group(&self, resource: &Value) -> Result<RemoteAccount, ConnectorError>;

    async fn get_group(&self, id: &str) -> Result<Option<RemoteAccount>, ConnectorError>;

    /// The group with this `displayName` (ignoring case), e.g. one another worker created
    /// a moment ago. `None` when the target cannot say.
    async fn find_group(&self, _display_name: &str) -> Result<Option<RemoteAccount>, ConnectorError> {
        Ok(None)
    }

    /// Delete the group; an already missing group is not an error.
    async fn delete_group(&self, id: &str) -> Result<(), ConnectorError>;

    /// Add members (account ids) to a group, in chunks; never replaces the
    /// whole member list.
    async fn add_group_members(&self, group_id: &str, member_ids: &[String]) -> Result<(), ConnectorError>;

    /// Remove members (account ids) from a group, in chunks.
    async fn remove_group_members(&self, group_id: &str, member_ids: &[String]) -> Result<(), ConnectorError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn connector_is_object_safe_and_shareable() {
        fn assert_send_sync<T: Send + Sync + ?Sized>() {}
        assert_send_sync::<dyn Connector>();
        let client =
            scim::Client::new(scim::ClientConfig::new("http://127.0.0.1:9/v2", scim::Auth::None)).expect("client");
        let c: Arc<dyn Connector> = Arc::new(ScimConnector::new(client, None));
        assert_eq!(Arc::strong_count(&c), 1);
    }

    #[test]
    fn remote_account_needs_an_id() {
        let a = RemoteAccount::from_resource(serde_json::json!({"id":"x","userName":"u"})).expect("id");
        assert_eq!(a.id, "x");
        let e = RemoteAccount::from_resource(serde_json::json!({"userName":"u"})).expect_err("no id");
        assert_eq!(e.kind, ErrorKind::InvalidResponse);
    }
}
