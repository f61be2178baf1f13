//! Reading people from an LDAP directory (OpenLDAP, Active Directory): connecting and
//! binding (ldap://, ldaps://, StartTLS), paged searches (RFC 2696) read page by page, entry
//! parsing (stable id, disabled flag, change marker), and password verification for sign-in.
//! [`LdapSource`] offers all of it as a [`Source`] (opened by [`LdapFactory`], registered by
//! [`crate::SourceRegistry::with_defaults`]).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use directory::{DirectorySource, SourceFlavor};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{
    ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, SearchStream, StdStream,
};
use outbound::TargetPolicy;

pub use crate::source::DirectoryEntry;
use crate::source::{PeopleReader, Source, SourceError, SourceFactory};

/// How many entries one page of a search holds.
pub const PAGE_SIZE: i32 = 500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// What can go wrong talking to a directory. Messages name the server and say what failed.
#[derive(Debug, thiserror::Error)]
pub enum LdapSourceError {
    #[error("cannot reach the directory at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the directory refused the bind as {dn}: {reason}")]
    Bind { dn: String, reason: String },
    #[error("the directory search failed: {0}")]
    Search(String),
    #[error("an entry has no {attribute} (the stable id): {dn}")]
    NoStableId { attribute: String, dn: String },
}

pub type Result<T, E = LdapSourceError> = std::result::Result<T, E>;

fn unreachable(source: &DirectorySource, e: impl std::fmt::Display) -> LdapSourceError {
    LdapSourceError::Unreachable { url: source.url.clone(), reason: e.to_string() }
}

fn describe(e: &LdapError) -> String {
    match e {
        LdapError::LdapResult { result } => {
            if result.text.is_empty() {
                format!("{result}")
            } else {
                format!("{result} ({})", result.text.trim_end_matches('\0'))
            }
        }
        other => other.to_string(),
    }
}

/// Connects to an address of the source's server that the target policy allows: the name is
/// resolved and checked here, and the connection is made to the checked address (TLS still
/// verifies the certificate against the name in the URL).
async fn tcp_connect(source: &DirectorySource, targets: &TargetPolicy) -> Result<std::net::TcpStream> {
    let url = url::Url::parse(&source.url).map_err(|e| unreachable(source, format!("not a URL ({e})")))?;
    let port = match (url.scheme(), url.port()) {
        (_, Some(p)) => p,
        ("ldap", None) => 389,
        ("ldaps", None) => 636,
        (other, None) => return Err(unreachable(source, format!("{other}:// is not an LDAP URL scheme"))),
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => return Err(unreachable(source, "the URL names no host")),
    };
    let addrs = targets.resolve(&host, port).await.map_err(|e| unreachable(source, e))?;
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return stream.into_std().map_err(|e| unreachable(source, e)),
            Ok(Err(e)) => last = Some(format!("{addr}: {e}")),
            Err(_) => last = Some(format!("{addr}: no answer within {}s", CONNECT_TIMEOUT.as_secs())),
        }
    }
    Err(unreachable(source, last.unwrap_or_else(|| "no address".into())))
}

/// Opens a connection to the source's server (TLS per the URL or StartTLS), unbound.
async fn open(source: &DirectorySource, targets: &TargetPolicy) -> Result<Ldap> {
    let stream = tcp_connect(source, targets).await?;
    let settings = LdapConnSettings::new()
        .set_conn_timeout(CONNECT_TIMEOUT)
        .set_starttls(source.starttls)
        .set_std_stream(StdStream::Tcp(stream));
    let (conn, ldap) =
        LdapConnAsync::with_settings(settings, &source.url).await.map_err(|e| unreachable(source, describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(error = %e, "LDAP connection ended");
        }
    });
    Ok(ldap)
}

/// A connection bound as the source's service account, to an address `targets` allows.
pub async fn connect(source: &DirectorySource, bind_password: &str, targets: &TargetPolicy) -> Result<Ldap> {
    let mut ldap = open(source, targets).await?;
    simple_bind(source, &mut ldap, &source.bind_dn, bind_password).await.map_err(|e| match e {
        BindFailure::Refused(reason) => LdapSourceError::Bind { dn: source.bind_dn.clone(), reason },
        BindFailure::Other(e) => e,
    })?;
    Ok(ldap)
}

enum BindFailure {
    Refused(String),
    Other(LdapSourceError),
}

async fn simple_bind(source: &DirectorySource, ldap: &mut Ldap, dn: &str, password: &str) -> Result<(), BindFailure> {
    let result = ldap
        .with_timeout(CONNECT_TIMEOUT)
        .simple_bind(dn, password)
        .await
        .map_err(|e| BindFailure::Other(unreachable(source, describe(&e))))?;
    if result.rc != 0 {
        let mut reason = format!("{result}");
        let text = result.text.trim_end_matches('\0');
        if !text.is_empty() {
            reason = format!("{reason} ({text})");
        }
        return Err(BindFailure::Refused(reason));
    }
    Ok(())
}

/// The LDAP attributes a sync reads for this source.
pub fn attributes_to_read(source: &DirectorySource) -> Vec<String> {
    let mut attrs: Vec<String> = source.attributes.values().cloned().collect();
    attrs.push(source.flavor.stable_id_attribute().to_owned());
    attrs.push(source.flavor.change_attribute().to_owned());
    if source.flavor == SourceFlavor::ActiveDirectory {
        attrs.push("userAccountControl".into());
    }
    if let Some(d) = &source.disabled {
        attrs.push(d.attribute.clone());
    }
    if !source.groups.is_empty() {
        attrs.push("memberOf".into());
    }
    let mut seen = std::collections::HashSet::new();
    attrs.retain(|a| seen.insert(a.to_lowercase()));
    attrs
}

/// The filter of a search: the source's user filter, and for an incremental sync only the
/// entries changed since `watermark`.
pub fn search_filter(source: &DirectorySource, watermark: Option<&str>) -> String {
    match watermark {
        None => source.user_filter.clone(),
        Some(mark) => {
            let attr = source.flavor.change_attribute();
            let from = match source.flavor {
                // uSNChanged is a number: the next change after the mark.
                SourceFlavor::ActiveDirectory => {
                    mark.parse::<u64>().map(|n| (n + 1).to_string()).unwrap_or_else(|_| mark.to_owned())
                }
                // modifyTimestamp has one-second precision: read the mark's second again.
                SourceFlavor::Openldap => mark.to_owned(),
            };
            format!("(&{}({attr}>={}))", source.user_filter, ldap_escape(from))
        }
    }
}

/// Whichever change mark is later.
pub fn later_mark(flavor: SourceFlavor, a: Option<String>, b: Option<&str>) -> Option<String> {
    match (a, b) {
        (None, None) => None,
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b.to_owned()),
        (Some(a), Some(b)) => {
            let b_later = match flavor {
                SourceFlavor::ActiveDirectory => b.parse::<u64>().unwrap_or(0) > a.parse::<u64>().unwrap_or(0),
                // Generalized time in UTC (YYYYMMDDHHMMSSZ) sorts as text.
                SourceFlavor::Openldap => b > a.as_str(),
            };
            Some(if b_later { b.to_owned() } else { a })
        }
    }
}

/// The entries of a search, read a page at a time.
pub struct EntryReader {
    stream: SearchStream<'static, String, Vec<String>>,
    source: DirectorySource,
    done: bool,
}

/// Starts a paged search of the source's people (all of them, or those changed since
/// `watermark`) on a bound connection.
pub async fn search_people(ldap: &mut Ldap, source: &DirectorySource, watermark: Option<&str>) -> Result<EntryReader> {
    let adapters: Vec<Box<dyn Adapter<'static, String, Vec<String>>>> =
        vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(PAGE_SIZE))];
    let filter = search_filter(source, watermark);
    let stream = ldap
        .with_timeout(OPERATION_TIMEOUT)
        .streaming_search_with(adapters, &source.base_dn, Scope::Subtree, &filter, attributes_to_read(source))
        .await
        .map_err(|e| LdapSourceError::Search(describe(&e)))?;
    Ok(EntryReader { stream, source: source.clone(), done: false })
}

impl EntryReader {
    /// Up to `max` more entries; an empty page at the end. A search that ends in an error
    /// (e.g. the base DN does not exist, the connection dropped) is an error, so that a
    /// partial read is never taken for the whole directory.
    pub async fn next_page(&mut self, max: usize) -> Result<Vec<DirectoryEntry>> {
        let mut out = Vec::new();
        while !self.done && out.len() < max {
            match self.stream.next().await {
                Ok(Some(re)) => {
                    if re.is_ref() || re.is_intermediate() {
                        continue;
                    }
                    out.push(parse_entry(&self.source, SearchEntry::construct(re))?);
                }
                Ok(None) => {
                    self.done = true;
                    let result = self.stream.finish().await;
                    if result.rc != 0 {
                        let text = result.text.trim_end_matches('\0').to_owned();
                        return Err(LdapSourceError::Search(if text.is_empty() {
                            format!("{result}")
                        } else {
                            format!("{result} ({text})")
                        }));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Err(LdapSourceError::Search(describe(&e)));
                }
            }
        }
        Ok(out)
    }
}

/// An Active Directory objectGUID (mixed-endian bytes) as the usual GUID string.
fn guid_string(bytes: &[u8]) -> Option<String> {
    let raw: [u8; 16] = bytes.try_into().ok()?;
    Some(uuid::Uuid::from_bytes_le(raw).to_string())
}

/// Turns a search entry into a [`DirectoryEntry`] per the source's flavour.
pub fn parse_entry(source: &DirectorySource, entry: SearchEntry) -> Result<DirectoryEntry> {
    let mut attributes: HashMap<String, Vec<String>> =
        entry.attrs.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
    let id_attr = source.flavor.stable_id_attribute();
    let stable_id = match source.flavor {
        SourceFlavor::ActiveDirectory => entry
            .bin_attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(id_attr))
            .and_then(|(_, v)| v.first())
            .and_then(|b| guid_string(b))
            // A GUID whose bytes all happen to be UTF-8 arrives as text.
            .or_else(|| {
                attributes.get(&id_attr.to_lowercase()).and_then(|v| v.first()).and_then(|s| guid_string(s.as_bytes()))
            }),
        SourceFlavor::Openldap => attributes.get(&id_attr.to_lowercase()).and_then(|v| v.first()).cloned(),
    }
    .ok_or_else(|| LdapSourceError::NoStableId { attribute: id_attr.to_owned(), dn: entry.dn.clone() })?;
    attributes.remove(&id_attr.to_lowercase());
    let mut disabled = false;
    if source.flavor == SourceFlavor::ActiveDirectory {
        let uac = attributes.get("useraccountcontrol").and_then(|v| v.first()).and_then(|s| s.parse::<i64>().ok());
        disabled = uac.is_some_and(|v| v & 0x2 != 0);
    }
    if let Some(cond) = &source.disabled {
        disabled |= attributes
            .get(&cond.attribute.to_lowercase())
            .is_some_and(|vs| vs.iter().any(|v| v.eq_ignore_ascii_case(&cond.value)));
    }
    let change_mark = attributes.get(&source.flavor.change_attribute().to_lowercase()).and_then(|v| v.first()).cloned();
    Ok(DirectoryEntry { stable_id, dn: entry.dn, disabled, change_mark, attributes })
}

/// Reads the whole directory once to check the settings: connects, binds, and searches one
/// page. Returns how many entries the first page held.
pub async fn test_connection(source: &DirectorySource, bind_password: &str, targets: &TargetPolicy) -> Result<usize> {
    let mut ldap = connect(source, bind_password, targets).await?;
    let mut reader = search_people(&mut ldap, source, None).await?;
    let page = reader.next_page(PAGE_SIZE as usize).await?;
    let _ = ldap.unbind().await;
    Ok(page.len())
}

/// Checks a person's password against the directory: binds as the service account to
/// check that `user_dn` is still one of the source's people and not disabled, then binds
/// as `user_dn` with `password` on a connection of its own. `Ok(false)` for a wrong
/// password, an unknown or disabled person, or an empty password (which LDAP would take for
/// an anonymous bind); `Err` when the directory cannot be asked.
pub async fn verify_password(
    source: &DirectorySource,
    bind_password_plain: &str,
    user_dn: &str,
    password: &str,
    targets: &TargetPolicy,
) -> Result<bool> {
    if password.is_empty() || user_dn.trim().is_empty() {
        return Ok(false);
    }
    let mut service = connect(source, bind_password_plain, targets).await?;
    let search = service
        .with_timeout(OPERATION_TIMEOUT)
        .search(user_dn, Scope::Base, &source.user_filter, attributes_to_read(source))
        .await
        .map_err(|e| LdapSourceError::Search(describe(&e)))?;
    let _ = service.unbind().await;
    let (entries, result) = (search.0, search.1);
    if result.rc == 32 {
        return Ok(false); // noSuchObject: the person is gone
    }
    if result.rc != 0 {
        return Err(LdapSourceError::Search(format!("{result}")));
    }
    let Some(entry) = entries.into_iter().find(|e| !e.is_ref() && !e.is_intermediate()) else {
        return Ok(false); // outside the user filter
    };
    if parse_entry(source, SearchEntry::construct(entry))?.disabled {
        return Ok(false);
    }
    let mut ldap = open(source, targets).await?;
    let ok = match simple_bind(source, &mut ldap, user_dn, password).await {
        Ok(()) => true,
        Err(BindFailure::Refused(_)) => false,
        Err(BindFailure::Other(e)) => return Err(e),
    };
    let _ = ldap.unbind().await;
    Ok(ok)
}

impl From<LdapSourceError> for SourceError {
    fn from(e: LdapSourceError) -> Self {
        Self::Directory(Box::new(e))
    }
}

/// Opens [`LdapSource`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct LdapFactory;

impl SourceFactory for LdapFactory {
    fn open(
        &self,
        source: &DirectorySource,
        bind_password: String,
        targets: &TargetPolicy,
    ) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(LdapSource { source: source.clone(), bind_password, targets: targets.clone() }))
    }
}

/// An LDAP / Active Directory source: its settings, its service account's password and the
/// addresses it may reach. Each call connects and binds anew.
pub struct LdapSource {
    source: DirectorySource,
    bind_password: String,
    targets: TargetPolicy,
}

/// A paged search in progress, with the connection it runs on.
struct LdapReader {
    ldap: Ldap,
    entries: EntryReader,
}

#[async_trait]
impl PeopleReader for LdapReader {
    async fn next_page(&mut self, max: usize) -> Result<Vec<DirectoryEntry>, SourceError> {
        Ok(self.entries.next_page(max).await?)
    }

    async fn close(mut self: Box<Self>) {
        let _ = self.ldap.unbind().await;
    }
}

#[async_trait]
impl Source for LdapSource {
    async fn read_people(&self, watermark: Option<&str>) -> Result<Box<dyn PeopleReader>, SourceError> {
        let mut ldap = connect(&self.source, &self.bind_password, &self.targets).await?;
        let entries = search_people(&mut ldap, &self.source, watermark).await?;
        Ok(Box::new(LdapReader { ldap, entries }))
    }

    async fn test_connection(&self) -> Result<usize, SourceError> {
        Ok(test_connection(&self.source, &self.bind_password, &self.targets).await?)
    }

    async fn verify_password(&self, user_dn: &str, password: &str) -> Result<bool, SourceError> {
        Ok(verify_password(&self.source, &self.bind_password, user_dn, password, &self.targets).await?)
    }

    fn later_mark(&self, a: Option<String>, b: Option<&str>) -> Option<String> {
        later_mark(self.source.flavor, a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::{DisabledCondition, SourceInput, SourceKind};

    fn source(flavor: SourceFlavor) -> DirectorySource {
        let mut input = SourceInput {
            name: "s".into(),
            kind: SourceKind::Ldap,
            flavor,
            url: "ldap://127.0.0.1:389".into(),
            starttls: false,
            bind_dn: "cn=admin,dc=example,dc=com".into(),
            bind_password: Some("x".into()),
            base_dn: "dc=example,dc=com".into(),
            user_filter: None,
            attributes: None,
            groups: vec![],
            schedule: None,
            disabled: Some(DisabledCondition { attribute: "employeeType".into(), value: "disabled".into() }),
            guard_percent: None,
            enabled: None,
        };
        input.normalize_and_validate(&[], true).unwrap();
        input.into_source(uuid::Uuid::now_v7(), directory::now(), directory::now(), 1)
    }

    fn entry(attrs: &[(&str, &[&str])], bin: &[(&str, Vec<u8>)]) -> SearchEntry {
        SearchEntry {
            dn: "uid=ada,ou=people,dc=example,dc=com".into(),
            attrs: attrs.iter().map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect())).collect(),
            bin_attrs: bin.iter().map(|(k, v)| ((*k).to_owned(), vec![v.clone()])).collect(),
        }
    }

    #[test]
    fn active_directory_entries_use_the_guid_and_account_control() {
        let s = source(SourceFlavor::ActiveDirectory);
        let guid: Vec<u8> = (1..=16).collect();
        let e = parse_entry(
            &s,
            entry(
                &[("sAMAccountName", &["ada"]), ("userAccountControl", &["514"]), ("uSNChanged", &["77"])],
                &[("objectGUID", guid)],
            ),
        )
        .unwrap();
        assert_eq!(e.stable_id, "04030201-0605-0807-090a-0b0c0d0e0f10");
        assert!(e.disabled);
        assert_eq!(e.change_mark.as_deref(), Some("77"));
        assert_eq!(e.first("SAMACCOUNTNAME"), Some("ada"));
        let enabled =
            parse_entry(&s, entry(&[("userAccountControl", &["512"])], &[("objectGUID", vec![9; 16])])).unwrap();
        assert!(!enabled.disabled);
    }

    #[test]
    fn openldap_entries_use_entry_uuid_and_the_condition() {
        let s = source(SourceFlavor::Openldap);
        let e = parse_entry(&s, entry(&[("entryUUID", &["abc"]), ("employeeType", &["Disabled"])], &[])).unwrap();
        assert_eq!(e.stable_id, "abc");
        assert!(e.disabled);
        assert!(matches!(parse_entry(&s, entry(&[("uid", &["x"])], &[])), Err(LdapSourceError::NoStableId { .. })));
    }

    #[test]
    fn incremental_filters_start_after_the_mark() {
        let ad = source(SourceFlavor::ActiveDirectory);
        assert!(search_filter(&ad, Some("41")).ends_with("(uSNChanged>=42))"));
        let ol = source(SourceFlavor::Openldap);
        assert_eq!(
            search_filter(&ol, Some("20240101000000Z")),
            "(&(objectClass=inetOrgPerson)(modifyTimestamp>=20240101000000Z))"
        );
        assert_eq!(search_filter(&ol, None), "(objectClass=inetOrgPerson)");
        assert_eq!(later_mark(SourceFlavor::ActiveDirectory, Some("9".into()), Some("10")).as_deref(), Some("10"));
        assert_eq!(later_mark(SourceFlavor::Openldap, Some("2024Z".into()), Some("2023Z")).as_deref(), Some("2024Z"));
    }
}
