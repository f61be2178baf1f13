//! Directory sources: third-party directories (LDAP, Active Directory) that people are
//! imported from, and the record of each synchronisation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::attribute::AttributeDef;
use crate::normalize_opt;
use crate::validation::{check_text, ValidationErrors};

/// The protocol a source is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Ldap,
}

impl SourceKind {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ldap => "ldap",
        }
    }
}

/// Which directory server a source is: decides the defaults (stable id, disabled flag,
/// change marker for incremental syncs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceFlavor {
    /// Microsoft Active Directory (or Samba AD): objectGUID, userAccountControl, uSNChanged.
    ActiveDirectory,
    /// OpenLDAP: entryUUID, modifyTimestamp, and a configurable "disabled" condition.
    Openldap,
}

impl SourceFlavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ActiveDirectory => "active_directory",
            Self::Openldap => "openldap",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active_directory" => Some(Self::ActiveDirectory),
            "openldap" => Some(Self::Openldap),
            _ => None,
        }
    }

    /// The attribute that names an entry for good, whatever renames happen.
    pub fn stable_id_attribute(self) -> &'static str {
        match self {
            Self::ActiveDirectory => "objectGUID",
            Self::Openldap => "entryUUID",
        }
    }

    /// The attribute whose value grows with every change of an entry (incremental syncs).
    pub fn change_attribute(self) -> &'static str {
        match self {
            Self::ActiveDirectory => "uSNChanged",
            Self::Openldap => "modifyTimestamp",
        }
    }

    /// The default user filter.
    pub fn default_user_filter(self) -> &'static str {
        match self {
            Self::ActiveDirectory => "(&(objectClass=user)(objectCategory=person))",
            Self::Openldap => "(objectClass=inetOrgPerson)",
        }
    }

    /// The default attribute mapping: directory attribute -> LDAP attribute.
    pub fn default_attributes(self) -> BTreeMap<String, String> {
        let username = match self {
            Self::ActiveDirectory => "sAMAccountName",
            Self::Openldap => "uid",
        };
        [
            ("username", username),
            ("email", "mail"),
            ("first_name", "givenName"),
            ("last_name", "sn"),
            ("display_name", "displayName"),
            ("title", "title"),
            ("department", "department"),
            ("manager", "manager"),
            ("phone_numbers[type eq \"work\"].value", "telephoneNumber"),
            ("phone_numbers[type eq \"mobile\"].value", "mobile"),
            ("phone_numbers[type eq \"fax\"].value", "facsimileTelephoneNumber"),
            ("addresses[type eq \"work\"].street_address", "streetAddress"),
            ("addresses[type eq \"work\"].locality", "l"),
            ("addresses[type eq \"work\"].region", "st"),
            ("addresses[type eq \"work\"].postal_code", "postalCode"),
            ("addresses[type eq \"work\"].country", "c"),
            ("preferred_language", "preferredLanguage"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// Members of the LDAP group `group_dn` get the role `role_id` (and lose it when they leave
/// the group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    pub group_dn: String,
    pub role_id: Uuid,
}

/// An entry is disabled when `attribute` holds `value` (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisabledCondition {
    pub attribute: String,
    pub value: String,
}

/// A directory source, as stored and shown (the bind password never is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DirectorySource {
    pub id: Uuid,
    pub name: String,
    pub kind: SourceKind,
    pub flavor: SourceFlavor,
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    pub bind_dn: String,
    pub base_dn: String,
    pub user_filter: String,
    /// Directory attribute -> LDAP attribute. Keys are `username`, `email`, `first_name`,
    /// `last_name`, `display_name`, `title`, `department`, `phone`, `employee_number`,
    /// `manager` (the LDAP value is the manager's DN), a profile path (`preferred_language`,
    /// `phone_numbers[type eq "mobile"].value`, `addresses[type eq "work"].locality`) or a
    /// declared custom attribute.
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<GroupMapping>,
    /// Minutes between scheduled syncs; 0: only by hand.
    pub schedule: u32,
    /// OpenLDAP: when an entry counts as disabled (Active Directory: userAccountControl bit 0x2).
    pub disabled: Option<DisabledCondition>,
    /// A sync that would suspend more than this percentage of the source's users stops and
    /// waits for an admin to confirm.
    pub guard_percent: u32,
    /// A disabled source is neither synced by schedule nor by hand.
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// Another name of [`DirectorySource`]: a source's settings, as the LDAP code takes them.
pub type SourceConfig = DirectorySource;

/// The body of `POST /api/v1/sources`, and the document `PATCH` merges into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceInput {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: SourceKind,
    pub flavor: SourceFlavor,
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    pub bind_dn: String,
    /// Write-only: kept encrypted, never shown. Absent in a PATCH keeps the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_password: Option<String>,
    pub base_dn: String,
    /// Default per flavour.
    #[serde(default)]
    pub user_filter: Option<String>,
    /// Default per flavour; given keys replace the defaults of the same key.
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub groups: Vec<GroupMapping>,
    /// Minutes between scheduled syncs (default 5); 0: only by hand.
    #[serde(default)]
    pub schedule: Option<u32>,
    #[serde(default)]
    pub disabled: Option<DisabledCondition>,
    /// Default 20.
    #[serde(default)]
    pub guard_percent: Option<u32>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

fn default_kind() -> SourceKind {
    SourceKind::Ldap
}

/// The directory attributes a source can fill besides custom attributes.
pub const SOURCE_TARGETS: &[&str] = &[
    "username",
    "email",
    "first_name",
    "last_name",
    "display_name",
    "title",
    "department",
    "phone",
    "employee_number",
    "manager",
];

/// The server-managed fields of a source.
pub const READ_ONLY_SOURCE_FIELDS: &[&str] = &["id", "created_at", "updated_at", "version"];

fn ldap_name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';' || c == '.')
}

fn balanced_filter(f: &str) -> bool {
    let mut depth = 0i32;
    for c in f.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0 && f.starts_with('(') && f.ends_with(')')
}

impl SourceInput {
    /// A change of the stored source `current` that moves `url` to another scheme, host or
    /// port needs the bind password again in the same request: the stored one is only ever
    /// sent where it was given for.
    pub fn check_password_bound(&self, current: &DirectorySource, errors: &mut ValidationErrors) {
        let url = self.url.trim();
        if self.bind_password.is_some() || crate::validation::url_target(url).is_none() {
            return;
        }
        if !crate::validation::same_target(url, &current.url) {
            errors.push(
                "bind_password",
                "must be given again: url now points at another scheme, host or port, and the stored \
                 bind password is only ever sent where it was given for",
            );
        } else if current.starttls && !self.starttls {
            // Same host, but the password would now cross the network in clear text.
            errors.push(
                "bind_password",
                "must be given again: turning starttls off would send the stored bind password \
                 unencrypted, and it was given for an encrypted connection",
            );
        }
    }

    /// Fills the flavour's defaults, trims, and checks every field; `defs` are the declared
    /// custom attributes a mapping may target. `creating` requires the bind password.
    pub fn normalize_and_validate(&mut self, defs: &[AttributeDef], creating: bool) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.name = self.name.trim().to_owned();
        check_text(&mut errors, "name", &self.name, 128);
        self.url = self.url.trim().to_owned();
        let mut written = ValidationErrors::default();
        let parsed = if crate::validation::check_written_host(&mut written, "url", &self.url) {
            url::Url::parse(&self.url)
        } else {
            Err(url::ParseError::EmptyHost)
        };
        match parsed {
            Ok(u) if matches!(u.scheme(), "ldap" | "ldaps") && u.host_str().is_some_and(|h| !h.is_empty()) => {
                if u.scheme() == "ldaps" && self.starttls {
                    errors.push("starttls", "applies to ldap:// URLs only (ldaps:// is already TLS)");
                }
            }
            _ => errors.push("url", "must be an ldap://host[:port] or ldaps://host[:port] URL"),
        }
        for (field, value) in [("bind_dn", &mut self.bind_dn), ("base_dn", &mut self.base_dn)] {
            *value = value.trim().to_owned();
            check_text(&mut errors, field, value, 1024);
            if !value.is_empty() && !value.contains('=') {
                errors.push(field, "must be a distinguished name such as cn=admin,dc=example,dc=com");
            }
        }
        match self.bind_password.as_deref() {
            None if creating => errors.push("bind_password", "is required"),
            Some("") => errors.push("bind_password", "must not be empty"),
            Some(p) if p.len() > 1024 => errors.push("bind_password", "must be at most 1024 characters"),
            _ => {}
        }
        let filter =
            normalize_opt(self.user_filter.take()).unwrap_or_else(|| self.flavor.default_user_filter().to_owned());
        if filter.len() > 4096 || !balanced_filter(&filter) {
            errors.push("user_filter", "must be an LDAP filter in parentheses, e.g. (objectClass=person)");
        }
        self.user_filter = Some(filter);
        // On creation given keys replace the flavour's defaults; afterwards the mapping is
        // what it is (a merge patch adds, changes or removes keys).
        let mut attributes = match (&self.attributes, creating) {
            (Some(_), false) => BTreeMap::new(),
            _ => self.flavor.default_attributes(),
        };
        for (k, v) in self.attributes.take().unwrap_or_default() {
            let v = v.trim().to_owned();
            if v.is_empty() {
                attributes.remove(&k);
            } else {
                attributes.insert(k, v);
            }
        }
        for (target, ldap) in &attributes {
            let field = format!("attributes.{target}");
            match crate::profile::UserPath::parse(target) {
                Some(Ok(path)) => {
                    if let Err(why) = crate::Profile::default().set(&path, Some("x".into())) {
                        errors.push(field.clone(), why);
                    }
                }
                Some(Err(why)) => errors.push(field.clone(), why),
                None if !SOURCE_TARGETS.contains(&target.as_str()) && !defs.iter().any(|d| &d.name == target) => {
                    errors.push(
                        field.clone(),
                        "is neither a standard attribute, a profile path (phone_numbers[type eq \"mobile\"].value) \
                         nor a declared custom attribute (declare it with POST /api/v1/attributes)",
                    );
                }
                None => {}
            }
            if !ldap_name_ok(ldap) {
                errors.push(field, "must name an LDAP attribute (letters, digits and -)");
            }
        }
        if !attributes.contains_key("username") {
            errors.push("attributes.username", "is required: the LDAP attribute people's usernames come from");
        }
        self.attributes = Some(attributes);
        for (i, g) in self.groups.iter_mut().enumerate() {
            g.group_dn = g.group_dn.trim().to_owned();
            if g.group_dn.is_empty() || !g.group_dn.contains('=') || g.group_dn.len() > 1024 {
                errors.push(format!("groups[{i}].group_dn"), "must be the distinguished name of a group");
            }
        }
        if self.groups.len() > 200 {
            errors.push("groups", "must have at most 200 entries");
        }
        let schedule = self.schedule.unwrap_or(5);
        if schedule > 7 * 24 * 60 {
            errors.push("schedule", "must be at most 10080 minutes (a week); 0 syncs only by hand");
        }
        self.schedule = Some(schedule);
        let guard = self.guard_percent.unwrap_or(20);
        if guard > 100 {
            errors.push("guard_percent", "must be between 0 and 100");
        }
        self.guard_percent = Some(guard);
        if let Some(d) = &mut self.disabled {
            d.attribute = d.attribute.trim().to_owned();
            d.value = d.value.trim().to_owned();
            if !ldap_name_ok(&d.attribute) {
                errors.push("disabled.attribute", "must name an LDAP attribute");
            }
            if d.value.is_empty() || d.value.len() > 256 {
                errors.push("disabled.value", "must be 1-256 characters");
            }
        }
        errors.into_result()
    }

    /// The writable view of a source (without its password).
    pub fn from_source(s: &DirectorySource) -> Self {
        Self {
            name: s.name.clone(),
            kind: s.kind,
            flavor: s.flavor,
            url: s.url.clone(),
            starttls: s.starttls,
            bind_dn: s.bind_dn.clone(),
            bind_password: None,
            base_dn: s.base_dn.clone(),
            user_filter: Some(s.user_filter.clone()),
            attributes: Some(s.attributes.clone()),
            groups: s.groups.clone(),
            schedule: Some(s.schedule),
            disabled: s.disabled.clone(),
            guard_percent: Some(s.guard_percent),
            enabled: Some(s.enabled),
        }
    }

    /// A source from validated input (the password is stored apart).
    pub fn into_source(self, id: Uuid, created_at: DateTime<Utc>, now: DateTime<Utc>, version: i64) -> DirectorySource {
        DirectorySource {
            id,
            name: self.name,
            kind: self.kind,
            flavor: self.flavor,
            url: self.url,
            starttls: self.starttls,
            bind_dn: self.bind_dn,
            base_dn: self.base_dn,
            user_filter: self.user_filter.unwrap_or_else(|| self.flavor.default_user_filter().to_owned()),
            attributes: self.attributes.unwrap_or_else(|| self.flavor.default_attributes()),
            groups: self.groups,
            schedule: self.schedule.unwrap_or(5),
            disabled: self.disabled,
            guard_percent: self.guard_percent.unwrap_or(20),
            enabled: self.enabled.unwrap_or(true),
            created_at,
            updated_at: now,
            version,
        }
    }
}

impl DirectorySource {
    /// The user fields this source writes (they are read-only here for its users).
    pub fn sourced_fields(&self) -> Vec<String> {
        self.attributes
            .keys()
            .map(|k| match k.as_str() {
                "manager" => "manager_id".to_owned(),
                t if SOURCE_TARGETS.contains(&t) => t.to_owned(),
                path if crate::profile::UserPath::parse(path).is_some() => path.to_owned(),
                custom => format!("attributes.{custom}"),
            })
            .collect()
    }
}

/// How much of the directory a sync reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Every entry in scope; people no longer in scope are suspended.
    Full,
    /// Only entries changed since the last sync (by uSNChanged or modifyTimestamp).
    Incremental,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(Self::Full),
            "incremental" => Some(Self::Incremental),
            _ => None,
        }
    }
}

/// Where a sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    Running,
    /// Stopped by the mass-suspension guard; `POST .../confirm` lets it go on.
    AwaitingConfirmation,
    Succeeded,
    Failed,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::AwaitingConfirmation => "awaiting_confirmation",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "awaiting_confirmation" => Some(Self::AwaitingConfirmation),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
    /// Still open: running or waiting for a confirmation.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Running | Self::AwaitingConfirmation)
    }
}

/// Counts of what a sync did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SyncCounts {
    /// Entries read from the directory.
    pub entries_read: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub suspended: u64,
    pub reactivated: u64,
    /// Role memberships added or removed by group mappings.
    pub memberships_changed: u64,
    /// Entries that could not be imported (see `errors`).
    pub failed: u64,
}

/// One synchronisation of a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SourceSync {
    pub id: Uuid,
    pub source_id: Uuid,
    pub mode: SyncMode,
    pub state: SyncState,
    /// `manual`, `schedule` or `cli`.
    pub trigger: String,
    pub counts: SyncCounts,
    /// Suspensions the sync wants to make (shown while awaiting confirmation).
    pub pending_suspensions: u64,
    /// Why the sync failed or stopped.
    pub message: Option<String>,
    /// Entries that could not be imported, with the reason (the first 50).
    pub errors: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Renewed while the sync runs; a running sync whose heartbeat stopped is abandoned.
    pub heartbeat_at: DateTime<Utc>,
}

/// A user imported from a source: which entry they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SourceLink {
    pub source_id: Uuid,
    pub user_id: Uuid,
    /// objectGUID (hex) or entryUUID.
    pub stable_id: String,
    /// The entry's current distinguished name.
    pub dn: String,
    /// The source suspended this user (so it may reactivate them); an admin's suspension
    /// is left alone.
    pub suspended_by_source: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SourceInput {
        SourceInput {
            name: " Corp AD ".into(),
            kind: SourceKind::Ldap,
            flavor: SourceFlavor::ActiveDirectory,
            url: "ldap://127.0.0.1:389".into(),
            starttls: false,
            bind_dn: "CN=Administrator,CN=Users,DC=corp,DC=example".into(),
            bind_password: Some("pw".into()),
            base_dn: "DC=corp,DC=example".into(),
            user_filter: None,
            attributes: None,
            groups: vec![],
            schedule: None,
            disabled: None,
            guard_percent: None,
            enabled: None,
        }
    }

    #[test]
    fn defaults_follow_the_flavour() {
        let mut i = input();
        i.normalize_and_validate(&[], true).unwrap();
        let s = i.into_source(Uuid::now_v7(), crate::now(), crate::now(), 1);
        assert_eq!(s.name, "Corp AD");
        assert_eq!(s.attributes["username"], "sAMAccountName");
        assert_eq!(s.schedule, 5);
        assert_eq!(s.guard_percent, 20);
        assert!(s.user_filter.contains("objectClass=user"));
        assert!(s.sourced_fields().contains(&"manager_id".to_owned()));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut i = input();
        i.url = "http://x".into();
        i.bind_password = None;
        i.user_filter = Some("objectClass=user".into());
        i.attributes = Some([("shoe_size".to_owned(), "shoe".to_owned())].into());
        i.guard_percent = Some(101);
        let err = i.normalize_and_validate(&[], true).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["url", "bind_password", "user_filter", "attributes.shoe_size", "guard_percent"]);
    }

    #[test]
    fn the_bind_password_is_bound_to_the_url_scheme_host_and_port() {
        let mut i = input();
        i.normalize_and_validate(&[], true).unwrap();
        let current = i.into_source(Uuid::now_v7(), crate::now(), crate::now(), 1);
        let check = |url: &str, password: Option<&str>| {
            let mut change = SourceInput::from_source(&current);
            change.url = url.into();
            change.bind_password = password.map(str::to_owned);
            let mut errors = ValidationErrors::default();
            change.check_password_bound(&current, &mut errors);
            errors.0.into_iter().map(|e| e.field).collect::<Vec<_>>()
        };
        for moved in
            ["ldap://127.0.0.2:389", "ldaps://127.0.0.1:389", "ldap://127.0.0.1:3389", "ldap://dc.evil.example"]
        {
            assert_eq!(check(moved, None), ["bind_password"], "{moved}");
            assert!(check(moved, Some("new")).is_empty(), "{moved}");
        }
        for same in ["ldap://127.0.0.1", "ldap://127.0.0.1:389/", "LDAP://127.0.0.1:389"] {
            assert!(check(same, None).is_empty(), "{same}");
        }
        assert!(check("ldap:///nohost", None).is_empty(), "an unusable URL is named as such by the validation");
        // Same host, STARTTLS switched off: the stored password would go out in clear text.
        let mut tls = SourceInput::from_source(&current);
        tls.starttls = true;
        let encrypted = tls.into_source(current.id, current.created_at, current.updated_at, 1);
        let mut change = SourceInput::from_source(&encrypted);
        change.starttls = false;
        let mut errors = ValidationErrors::default();
        change.check_password_bound(&encrypted, &mut errors);
        assert_eq!(errors.0.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["bind_password"]);
        change.bind_password = Some("again".into());
        let mut errors = ValidationErrors::default();
        change.check_password_bound(&encrypted, &mut errors);
        assert!(errors.0.is_empty(), "given again, the downgrade is the admin's choice");
        let mut i = input();
        i.url = "ldap:///dc=example".into();
        assert_eq!(i.normalize_and_validate(&[], true).unwrap_err().0[0].field, "url");
    }

    #[test]
    fn an_empty_mapping_value_drops_a_default() {
        let mut i = input();
        i.attributes = Some([("manager".to_owned(), String::new())].into());
        i.normalize_and_validate(&[], true).unwrap();
        let kept = i.attributes.clone().unwrap();
        assert!(!kept.contains_key("manager") && kept.contains_key("username"));
        // Later (a patch), the mapping is taken as it is.
        i.normalize_and_validate(&[], false).unwrap();
        assert_eq!(i.attributes.unwrap(), kept);
    }
}
