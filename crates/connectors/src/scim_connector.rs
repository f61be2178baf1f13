//! [`Connector`] for SCIM 2.0 targets, and [`ScimFactory`], which builds one for an app from
//! its settings and secret (registered by [`crate::ConnectorRegistry::with_defaults`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use scim::{Capabilities, Client, PatchOp, GROUPS, USERS, USER_SCHEMA};
use serde_json::Value;

use directory::{App, AuthConfig, Secret};

use crate::diff::patch_from_diff;
use crate::registry::{BuildError, ConnectorFactory, ConnectorSettings};
use crate::scan::{Next, PageCheck, MAX_PAGES};
use crate::{Connector, ConnectorError, ErrorKind, Page, PageRequest, ReadReport, RemoteAccount, Scan};

/// Default maximum number of members per group PATCH request.
pub const DEFAULT_MEMBER_CHUNK_SIZE: usize = 100;

/// Builds the [`ScimConnector`] of a SCIM app: a [`scim::Client`] at the app's base URL with
/// its credential, its concurrency limit and the engine's timeouts and target policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScimFactory;

impl ScimFactory {
    /// The client's authentication, from the app's settings and its secret.
    fn auth(app: &App, secret: Secret) -> Result<scim::Auth, BuildError> {
        match (&app.connection.auth, secret) {
            (AuthConfig::Bearer {}, Secret::Bearer { token }) => Ok(scim::Auth::Bearer { token }),
            (AuthConfig::Basic { username }, Secret::Basic { password }) => {
                Ok(scim::Auth::Basic { username: username.clone(), password })
            }
            (
                AuthConfig::OAuth2ClientCredentials { token_url, client_id, scope },
                Secret::OAuth2ClientCredentials { client_secret },
            ) => Ok(scim::Auth::OAuth2ClientCredentials {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret,
                scope: scope.clone(),
            }),
            _ => Err(BuildError::Credential("the stored secret does not match the authentication type".into())),
        }
    }
}

impl ConnectorFactory for ScimFactory {
    fn build(
        &self,
        app: &App,
        secret: Secret,
        capabilities: Option<Capabilities>,
        settings: &ConnectorSettings,
    ) -> Result<Arc<dyn Connector>, BuildError> {
        let mut cfg = scim::ClientConfig::new(app.connection.base_url.clone(), Self::auth(app, secret)?);
        cfg.timeout = settings.request_timeout;
        cfg.max_concurrency = app.provisioning.max_concurrency.max(1) as usize;
        cfg.max_retries = 2;
        cfg.backoff_base = settings.backoff_base;
        cfg.backoff_max = Duration::from_secs(5);
        cfg.retry_after_max = Duration::from_secs(30);
        cfg.targets = settings.targets.clone();
        cfg.pacer = settings.pacer.clone();
        let client = Client::new(cfg).map_err(ConnectorError::from)?;
        Ok(Arc::new(
            ScimConnector::new(client, capabilities).with_member_chunk_size(app.provisioning.group_chunk_size as usize),
        ))
    }
}

/// A [`Connector`] over a [`scim::Client`].
///
/// Updates use PATCH when the stored capabilities say the target supports it,
/// PUT otherwise. Without stored capabilities, the first call that needs them
/// fetches them (as [`Connector::test_connection`] does) and keeps them.
#[derive(Debug)]
pub struct ScimConnector {
    client: Client,
    capabilities: RwLock<Option<Capabilities>>,
    member_chunk_size: usize,
    /// The app refused a filter of several values: look accounts up one at a time.
    batch_lookup_refused: AtomicBool,
}

/// The most values looked up in one filtered request.
const BATCH_LOOKUP: u32 = 50;

impl ScimConnector {
    /// `capabilities`: what the app stored from its last connection test.
    pub fn new(client: Client, capabilities: Option<Capabilities>) -> Self {
        Self {
            client,
            capabilities: RwLock::new(capabilities),
            member_chunk_size: DEFAULT_MEMBER_CHUNK_SIZE,
            batch_lookup_refused: AtomicBool::new(false),
        }
    }

    /// Members per group PATCH (at least 1; default 100).
    pub fn with_member_chunk_size(mut self, size: usize) -> Self {
        self.member_chunk_size = size.max(1);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The capabilities in use (stored, or fetched once).
    pub async fn capabilities(&self) -> Result<Capabilities, ConnectorError> {
        if let Some(c) = self.stored_capabilities() {
            return Ok(c);
        }
        let caps = self.client.service_provider_config().await?;
        self.store_capabilities(caps);
        Ok(caps)
    }

    fn stored_capabilities(&self) -> Option<Capabilities> {
        match self.capabilities.read() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn store_capabilities(&self, caps: Capabilities) {
        match self.capabilities.write() {
            Ok(mut g) => *g = Some(caps),
            Err(poisoned) => *poisoned.into_inner() = Some(caps),
        }
    }

    async fn page(&self, endpoint: &str, page: PageRequest) -> Result<Page, ConnectorError> {
        let start = page.start_index.max(1);
        let count = page.count.max(1);
        let list = self.client.list_resources(endpoint, start, count).await?;
        let n = list.resources.len() as u64;
        let next_start = start + n;
        let more = match list.total_results {
            _ if n == 0 => false,
            Some(total) => next_start <= total,
            None => n >= u64::from(count),
        };
        let items = list.resources.into_iter().map(RemoteAccount::from_resource).collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            total: list.total_results,
            next: more.then_some(PageRequest { start_index: next_start, count }),
        })
    }

    /// Without server-side filtering: walk every account, compare locally
    /// (case-insensitively, as for SCIM's default `caseExact: false`).
    async fn find_by_listing(&self, match_attr: &str, value: &str) -> Result<Vec<RemoteAccount>, ConnectorError> {
        let mut pager = self.client.pager(USERS, 100);
        let mut found = Vec::new();
        while let Some(page) = pager.next_page().await? {
            for r in page {
                if attr_values(&r, match_attr).iter().any(|v| v.to_lowercase() == value.to_lowercase()) {
                    found.push(RemoteAccount::from_resource(r)?);
                }
            }
        }
        Ok(found)
    }
}

/// The member ids a group lists, in order, duplicates included.
pub fn member_values(group: &Value) -> Vec<String> {
    group
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("members")).map(|(_, v)| v))
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|e| e.get("value").and_then(Value::as_str).map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The string values at `attr` (`userName`, `name.givenName`, `emails.value`).
fn attr_values(resource: &Value, attr: &str) -> Vec<String> {
    let (top, sub) = match attr.split_once('.') {
        Some((t, s)) if !attr.starts_with("urn:") => (t, Some(s)),
        _ => (attr, None),
    };
    let Some(obj) = resource.as_object() else {
        return Vec::new();
    };
    let get = |o: &serde_json::Map<String, Value>, k: &str| -> Option<Value> {
        o.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone())
    };
    let Some(v) = get(obj, top) else {
        return Vec::new();
    };
    let leaves: Vec<Value> = match (v, sub) {
        (Value::Array(items), Some(s)) => items.iter().filter_map(|i| i.as_object().and_then(|o| get(o, s))).collect(),
        (Value::Object(o), Some(s)) => get(&o, s).into_iter().collect(),
        (Value::Array(items), None) => items,
        (v, None) => vec![v],
        (_, Some(_)) => Vec::new(),
    };
    leaves
        .into_iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

/// A copy of `resource` fit for PUT/POST: no `meta`, and `schemas` present.
fn for_write(resource: &Value, default_schema: &str) -> Value {
    let mut r = resource.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("meta");
        if !o.contains_key("schemas") {
            let mut schemas = vec![Value::from(default_schema)];
            schemas.extend(o.keys().filter(|k| k.starts_with("urn:")).map(|k| Value::from(k.as_str())));
            o.insert("schemas".into(), Value::Array(schemas));
        }
    }
    r
}

#[async_trait]
impl Connector for ScimConnector {
    async fn test_connection(&self) -> Result<Capabilities, ConnectorError> {
        let caps = self.client.test_connection().await?;
        self.store_capabilities(caps);
        Ok(caps)
    }

    async fn create_account(&self, resource: &Value) -> Result<RemoteAccount, ConnectorError> {
        let created = self.client.create_user(&for_write(resource, USER_SCHEMA)).await?;
        RemoteAccount::from_resource(created)
    }

    async fn get_account(&self, id: &str) -> Result<Option<RemoteAccount>, ConnectorError> {
        self.client.get_user(id).await?.map(RemoteAccount::from_resource).transpose()
    }

    async fn find_account(&self, match_attr: &str, value: &str) -> Result<Vec<RemoteAccount>, ConnectorError> {
        if !scim::filter::is_valid_attr_path(match_attr) {
            return Err(ConnectorError::invalid_request(format!("not a SCIM attribute path: {match_attr:?}")));
        }
        if !self.capabilities().await?.filter {
            return self.find_by_listing(match_attr, value).await;
        }
        self.client.find_users(match_attr, value).await?.into_iter().map(RemoteAccount::from_resource).collect()
    }

    async fn find_account_any(&self, matches: &[(&str, &str)]) -> Result<Vec<RemoteAccount>, ConnectorError> {
        if !self.capabilities().await?.filter {
            let mut found: Vec<RemoteAccount> = Vec::new();
            for (attr, value) in matches {
                for a in self.find_by_listing(attr, value).await? {
                    if !found.iter().any(|f| f.id == a.id) {
                        found.push(a);
                    }
                }
            }
            return Ok(found);
        }
        self.client.find_users_any(matches).await?.into_iter().map(RemoteAccount::from_resource).collect()
    }

    async fn find_accounts_batch(
        &self,
        match_attr: &str,
        values: &[&str],
    ) -> Result<Option<Vec<RemoteAccount>>, ConnectorError> {
        let caps = self.capabilities().await?;
        if !caps.filter || self.batch_lookup_refused.load(Ordering::Relaxed) || values.is_empty() {
            return Ok(None);
        }
        // Values per request: short enough for any URL limit, and within the page the app
        // promises; one more than that per page shows whether the answer was cut short.
        let per_request = caps.filter_max_results.unwrap_or(BATCH_LOOKUP).clamp(1, BATCH_LOOKUP) as usize;
        let mut found = Vec::new();
        for chunk in values.chunks(per_request.saturating_sub(1).max(1)) {
            let matches: Vec<(&str, &str)> = chunk.iter().map(|v| (match_attr, *v)).collect();
            let page = match self.client.find_users_any_page(&matches, per_request as u32).await {
                Ok(p) => p,
                Err(e) => {
                    let e = ConnectorError::from(e);
                    if matches!(e.kind, ErrorKind::InvalidRequest | ErrorKind::Unsupported) {
                        // e.g. 400 invalidFilter / tooMany: this app wants one value per filter.
                        self.batch_lookup_refused.store(true, Ordering::Relaxed);
                    }
                    tracing::debug!(error = %e.reason, "batch lookup not answered; looking up one by one");
                    return Ok(None);
                }
            };
            let complete = page.total_results.is_none_or(|t| t as usize <= page.resources.len())
                && page.resources.len() < per_request;
            if !complete {
                return Ok(None);
            }
            let before = found.len();
            for r in page.resources {
                let a = RemoteAccount::from_resource(r)?;
                if found[before..].iter().any(|f: &RemoteAccount| f.id == a.id) {
                    // The same resource twice in one answer: not an answer to trust.
                    tracing::debug!(id = %a.id, "batch lookup answered a resource twice; looking up one by one");
                    return Ok(None);
                }
                found.push(a);
            }
        }
        Ok(Some(found))
    }

    async fn update_account(
        &self,
        id: &str,
        desired: &Value,
        previous: Option<&Value>,
    ) -> Result<Option<RemoteAccount>, ConnectorError> {
        if !desired.is_object() {
            return Err(ConnectorError::invalid_request("the desired account is not a JSON object"));
        }
        if self.capabilities().await?.patch {
            let op = patch_from_diff(desired, previous);
            if op.is_empty() {
                return Ok(None);
            }
            return self.client.patch_user(id, op).await?.map(RemoteAccount::from_resource).transpose();
        }
        let replaced = self.client.replace_user(id, &for_write(desired, USER_SCHEMA)).await?;
        RemoteAccount::from_resource(replaced).map(Some)
    }

    async fn deactivate_account(&self, id: &str) -> Result<(), ConnectorError> {
        if self.capabilities().await?.patch {
            self.client.patch_user(id, PatchOp::new().replace("active", Value::Bool(false))).await?;
            return Ok(());
        }
        let mut current = self
            .client
            .get_user(id)
            .await?
            .ok_or_else(|| ConnectorError::not_found(format!("account {id} not found")))?;
        if current.get("active") == Some(&Value::Bool(false)) {
            return Ok(());
        }
        if let Some(o) = current.as_object_mut() {
            o.insert("active".into(), Value::Bool(false));
        }
        self.client.replace_user(id, &for_write(&current, USER_SCHEMA)).await?;
        Ok(())
    }

    async fn delete_account(&self, id: &str) -> Result<(), ConnectorError> {
        Ok(self.client.delete_user(id).await?)
    }

    async fn list_accounts(&self, page: PageRequest) -> Result<Page, ConnectorError> {
        self.page(USERS, page).await
    }

    async fn list_groups(&self, page: PageRequest) -> Result<Page, ConnectorError> {
        self.page(GROUPS, page).await
    }

    async fn create_group(&self, resource: &Value) -> Result<RemoteAccount, ConnectorError> {
        let created = self.client.create_group(&for_write(resource, scim::GROUP_SCHEMA)).await?;
        RemoteAccount::from_resource(created)
    }

    async fn get_group(&self, id: &str) -> Result<Option<RemoteAccount>, ConnectorError> {
        self.client.get_group(id).await?.map(RemoteAccount::from_resource).transpose()
    }

    async fn find_group(&self, display_name: &str) -> Result<Option<RemoteAccount>, ConnectorError> {
        let found = self.client.find_groups("displayName", display_name).await?;
        found
            .into_iter()
            .find(|g| {
                g.get("displayName").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case(display_name))
            })
            .map(RemoteAccount::from_resource)
            .transpose()
    }

    async fn delete_group(&self, id: &str) -> Result<(), ConnectorError> {
        Ok(self.client.delete_group(id).await?)
    }

    async fn scan(&self, groups: bool, page_size: u32) -> Result<Scan, ConnectorError> {
        let endpoint = if groups { GROUPS } else { USERS };
        let count = page_size.max(1);
        let mut report = ReadReport::default();
        for search in [false, true] {
            let name = if search { "POST /.search paging" } else { "GET paging" };
            report.tried.push(name.into());
            let mut check = PageCheck::default();
            let mut start = 1u64;
            let outcome = loop {
                if report.pages >= MAX_PAGES {
                    break Err("the pages do not end".to_owned());
                }
                let list = if search {
                    self.client.search_resources(endpoint, start, count).await
                } else {
                    self.client.list_resources(endpoint, start, count).await
                };
                report.pages += 1;
                let list = match list {
                    Ok(l) => l,
                    Err(e) => {
                        let e = ConnectorError::from(e);
                        if search && !e.retryable && e.kind != ErrorKind::Authentication {
                            break Err(format!("not offered by the app ({})", e.reason));
                        }
                        return Err(e);
                    }
                };
                let rows =
                    list.resources.into_iter().map(RemoteAccount::from_resource).collect::<Result<Vec<_>, _>>()?;
                match check.take(start, count, list.start_index, list.items_per_page, list.total_results, rows) {
                    Ok(Next::Page(next)) => start = next,
                    Ok(Next::Done) => break Ok(()),
                    Err(contradiction) => break Err(contradiction),
                }
            };
            match outcome {
                Ok(()) => {
                    report.strategy = Some(name.into());
                    return Ok(Scan { items: check.items, report });
                }
                Err(c) => {
                    tracing::warn!(endpoint, strategy = name, contradiction = %c, "an app's listing contradicts itself");
                    report.contradictions.push(format!("{name}: {c}"));
                }
            }
        }
        if self.capabilities().await?.cursor {
            let name = "cursor pagination";
            report.tried.push(name.into());
            let mut check = PageCheck::default();
            let mut cursor: Option<String> = None;
            let mut used: Vec<String> = Vec::new();
            let mut page = 0u32;
            let outcome = loop {
                if report.pages >= MAX_PAGES {
                    break Err("the pages do not end".to_owned());
                }
                page += 1;
                report.pages += 1;
                let list = match self.client.list_resources_cursor(endpoint, cursor.as_deref(), count).await {
                    Ok(l) => l,
                    Err(e) => {
                        let e = ConnectorError::from(e);
                        if !e.retryable && e.kind != ErrorKind::Authentication {
                            break Err(format!("not offered by the app ({})", e.reason));
                        }
                        return Err(e);
                    }
                };
                let next = list.next_cursor.filter(|c| !c.is_empty());
                let rows =
                    list.resources.into_iter().map(RemoteAccount::from_resource).collect::<Result<Vec<_>, _>>()?;
                match check.take_cursor(page, list.items_per_page, list.total_results, rows, next.is_none()) {
                    Ok(Next::Done) => break Ok(()),
                    Ok(Next::Page(_)) => {}
                    Err(contradiction) => break Err(contradiction),
                }
                if let Some(c) = &next {
                    if used.contains(c) {
                        break Err(format!("nextCursor {c} came twice"));
                    }
                    used.push(c.clone());
                }
                cursor = next;
            };
            match outcome {
                Ok(()) => {
                    report.strategy = Some(name.into());
                    return Ok(Scan { items: check.items, report });
                }
                Err(c) => report.contradictions.push(format!("{name}: {c}")),
            }
        }
        Ok(Scan { items: Vec::new(), report })
    }

    /// Reads the group first and adds only the members it does not list (never the same
    /// member twice), in chunks.
    async fn add_group_members(&self, group_id: &str, member_ids: &[String]) -> Result<(), ConnectorError> {
        let group = self
            .client
            .get_group(group_id)
            .await?
            .ok_or_else(|| ConnectorError::not_found(format!("group {group_id} not found")))?;
        let present = member_values(&group);
        let mut missing: Vec<String> = Vec::new();
        for m in member_ids {
            if !present.contains(m) && !missing.contains(m) {
                missing.push(m.clone());
            }
        }
        for chunk in missing.chunks(self.member_chunk_size) {
            self.client.patch_group(group_id, PatchOp::new().add_members(chunk)).await?;
        }
        Ok(())
    }

    /// Reads the group first and removes only the members it lists, in chunks.
    async fn remove_group_members(&self, group_id: &str, member_ids: &[String]) -> Result<(), ConnectorError> {
        let Some(group) = self.client.get_group(group_id).await? else { return Ok(()) };
        let present = member_values(&group);
        let listed: Vec<String> = member_ids.iter().filter(|m| present.contains(m)).cloned().collect();
        for chunk in listed.chunks(self.member_chunk_size) {
            self.client.patch_group(group_id, PatchOp::new().remove_members(chunk)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attr_values_paths() {
        let r = json!({"userName":"BJ","emails":[{"value":"a@x"},{"value":"b@x"}],
            "name":{"givenName":"B"},"active":true,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"employeeNumber":"7"}});
        assert_eq!(attr_values(&r, "username"), vec!["BJ"]);
        assert_eq!(attr_values(&r, "emails.value"), vec!["a@x", "b@x"]);
        assert_eq!(attr_values(&r, "name.givenName"), vec!["B"]);
        assert_eq!(attr_values(&r, "active"), vec!["true"]);
        assert!(attr_values(&r, "missing").is_empty());
    }

    #[test]
    fn for_write_adds_schemas_and_drops_meta() {
        let r = json!({"userName":"x","meta":{"version":"1"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"department":"d"}});
        let w = for_write(&r, USER_SCHEMA);
        assert!(w.get("meta").is_none());
        assert_eq!(w["schemas"], json!([USER_SCHEMA, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]));
        let with = json!({"schemas":["custom"],"userName":"x"});
        assert_eq!(for_write(&with, USER_SCHEMA)["schemas"], json!(["custom"]));
    }
}
