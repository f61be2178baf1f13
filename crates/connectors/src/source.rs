//! The directory-source seam: what the engine needs from a directory people are imported
//! from ([`Source`]: read its people a page at a time, test the connection, check a person's
//! password), the entry it reads ([`DirectoryEntry`]), and the [`SourceRegistry`] that opens
//! a source of each [`SourceKind`] (LDAP / Active Directory is one of
//! [`SourceRegistry::with_defaults`], see [`crate::ldap`]).
//!
//! This room knows no directory protocol; the source runner goes through it only.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use directory::{DirectorySource, SourceKind};
use outbound::TargetPolicy;

/// One person read from a directory, with their group memberships among the attributes
/// (`memberOf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// objectGUID (as a GUID string) or entryUUID: never changes, even on a rename.
    pub stable_id: String,
    pub dn: String,
    /// Disabled in the directory (userAccountControl bit 0x2, or the source's condition).
    pub disabled: bool,
    /// uSNChanged or modifyTimestamp, when the server sent it.
    pub change_mark: Option<String>,
    /// Attribute values by lower-cased attribute name (binary values are left out).
    pub attributes: HashMap<String, Vec<String>>,
}

impl DirectoryEntry {
    /// The first value of an attribute (name compared without case).
    pub fn first(&self, attribute: &str) -> Option<&str> {
        self.attributes.get(&attribute.to_lowercase()).and_then(|v| v.first()).map(String::as_str)
    }

    pub fn values(&self, attribute: &str) -> &[String] {
        self.attributes.get(&attribute.to_lowercase()).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// What can go wrong reading a source. The message names the server and what failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory cannot be reached, refused the sign-in, or a read failed.
    #[error(transparent)]
    Directory(Box<dyn std::error::Error + Send + Sync>),
    /// No [`SourceFactory`] is registered for the source's kind.
    #[error("this server cannot read directory sources of kind \"{0}\"")]
    UnknownKind(&'static str),
}

/// A read of a source's people in progress.
#[async_trait]
pub trait PeopleReader: Send {
    /// Up to `max` more entries; an empty page at the end. A read that ends in an error is
    /// an error, so that a partial read is never taken for the whole directory.
    async fn next_page(&mut self, max: usize) -> Result<Vec<DirectoryEntry>, SourceError>;

    /// Ends the read politely (e.g. unbinds); dropping the reader ends it too.
    async fn close(self: Box<Self>);
}

/// One directory source, opened with its settings and its service account's password.
/// Opening connects to nothing; each call does.
#[async_trait]
pub trait Source: Send + Sync {
    /// Starts reading the source's people: all of them, or (with `watermark`, a change mark
    /// of an earlier read) those changed since.
    async fn read_people(&self, watermark: Option<&str>) -> Result<Box<dyn PeopleReader>, SourceError>;

    /// Connects, signs in as the service account and reads one page: how many people it held.
    async fn test_connection(&self) -> Result<usize, SourceError>;

    /// Checks a person's password (for sign-in). `Ok(false)` for a wrong password, or a
    /// person unknown, disabled or outside the source; `Err` when the directory cannot be asked.
    async fn verify_password(&self, user_dn: &str, password: &str) -> Result<bool, SourceError>;

    /// Whichever change mark is later (what the next incremental read starts after).
    fn later_mark(&self, a: Option<String>, b: Option<&str>) -> Option<String>;
}

/// Opens sources of one kind.
pub trait SourceFactory: Send + Sync {
    fn open(
        &self,
        source: &DirectorySource,
        bind_password: String,
        targets: &TargetPolicy,
    ) -> Result<Box<dyn Source>, SourceError>;
}

/// The source factories by source kind.
#[derive(Clone, Default)]
pub struct SourceRegistry {
    factories: HashMap<SourceKind, Arc<dyn SourceFactory>>,
}

impl std::fmt::Debug for SourceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<&str> = self.factories.keys().map(|k| k.as_str()).collect();
        kinds.sort_unstable();
        f.debug_struct("SourceRegistry").field("kinds", &kinds).finish()
    }
}

impl SourceRegistry {
    /// A registry without any factory: no source can be read.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sources this build reads: LDAP (OpenLDAP, Active Directory).
    pub fn with_defaults() -> Self {
        Self::new().with(SourceKind::Ldap, crate::ldap::LdapFactory)
    }

    /// Registers `factory` for sources of `kind` (replacing the one registered before).
    pub fn with(mut self, kind: SourceKind, factory: impl SourceFactory + 'static) -> Self {
        self.factories.insert(kind, Arc::new(factory));
        self
    }

    /// `source`, opened by the factory of its kind with its service account's password and
    /// reaching only addresses `targets` allows.
    pub fn open(
        &self,
        source: &DirectorySource,
        bind_password: String,
        targets: &TargetPolicy,
    ) -> Result<Box<dyn Source>, SourceError> {
        match self.factories.get(&source.kind) {
            Some(factory) => factory.open(source, bind_password, targets),
            None => Err(SourceError::UnknownKind(source.kind.as_str())),
        }
    }
}
