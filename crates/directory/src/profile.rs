//! The rest of a person as SCIM keeps it (RFC 7643 section 4.1, User, and 4.3, Enterprise
//! User): the parts of `name` beyond given and family name, `nickName`, `profileUrl`,
//! `userType`, `preferredLanguage`, `locale`, `timezone`, the multi-valued `emails`,
//! `phoneNumbers`, `ims`, `photos`, `addresses`, `entitlements`, `roles` and
//! `x509Certificates`, and the enterprise `costCenter`, `organization` and `division`.
//!
//! The directory names them in its own style (`nick_name`, `phone_numbers`,
//! `addresses[].street_address`); the User's SCIM `roles` are `scim_roles` here, because the
//! directory's roles are its groups. The user's first fields (`email`, `phone`, `first_name`,
//! ...) stay: `email` and `phone` are the value that stands for their list (the primary one,
//! else the first of type work, else the first), kept in step with it by
//! [`reconcile_single`].
//!
//! A [`UserPath`] names one value of a person the way parameters, rule conditions, source
//! mappings and SAML attributes do: `nick_name`, `phone_numbers[type eq "mobile"].value`,
//! `addresses[type eq "work"].locality`, `emails.value` (the value standing for the list).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::validation::{check_opt_text, check_text, is_valid_email, ValidationErrors};

/// The most values one multi-valued attribute holds.
pub const MAX_VALUES: usize = 50;
/// The longest value of an `x509_certificates` entry (base64 DER) or a URL.
const MAX_LONG: usize = 16 * 1024;

fn is_false(b: &bool) -> bool {
    !*b
}

/// One value of a multi-valued attribute (RFC 7643 section 2.4): an e-mail address, phone
/// number, instant-messaging address, photo URL, entitlement, role or certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiValue {
    pub value: String,
    /// `work`, `home`, `mobile`, `fax`, `other`, ... (compared without case).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// At most one value of an attribute is primary.
    #[serde(default, skip_serializing_if = "is_false")]
    pub primary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl MultiValue {
    /// A value of type `work`, primary.
    pub fn work(value: impl Into<String>) -> Self {
        Self { value: value.into(), kind: Some("work".into()), primary: true, display: None }
    }
}

/// A postal address (RFC 7643 section 4.1.2, `addresses`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// `work`, `home`, `other`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub primary: bool,
    /// The full address, as it is printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street_address: Option<String>,
    /// City or locality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// State or region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code, e.g. `DE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// The sub-attributes of an address: (directory name, SCIM name).
pub const ADDRESS_PARTS: [(&str, &str); 6] = [
    ("formatted", "formatted"),
    ("street_address", "streetAddress"),
    ("locality", "locality"),
    ("region", "region"),
    ("postal_code", "postalCode"),
    ("country", "country"),
];

impl Address {
    /// A part by its directory or SCIM name.
    pub fn part(&self, name: &str) -> Option<&Option<String>> {
        Some(match canonical_part(name)? {
            "formatted" => &self.formatted,
            "street_address" => &self.street_address,
            "locality" => &self.locality,
            "region" => &self.region,
            "postal_code" => &self.postal_code,
            "country" => &self.country,
            _ => return None,
        })
    }

    /// A part by its directory or SCIM name, to change.
    pub fn part_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match canonical_part(name)? {
            "formatted" => &mut self.formatted,
            "street_address" => &mut self.street_address,
            "locality" => &mut self.locality,
            "region" => &mut self.region,
            "postal_code" => &mut self.postal_code,
            "country" => &mut self.country,
            _ => return None,
        })
    }

    fn is_empty(&self) -> bool {
        ADDRESS_PARTS.iter().all(|(p, _)| self.part(p).is_none_or(Option::is_none))
    }

    /// The address as SCIM writes it.
    pub fn to_scim(&self) -> Value {
        let mut o = Map::new();
        for (part, scim) in ADDRESS_PARTS {
            if let Some(Some(v)) = self.part(part) {
                o.insert(scim.into(), json!(v));
            }
        }
        if let Some(k) = &self.kind {
            o.insert("type".into(), json!(k));
        }
        o.insert("primary".into(), json!(self.primary));
        Value::Object(o)
    }
}

fn canonical_part(name: &str) -> Option<&'static str> {
    ADDRESS_PARTS.iter().find(|(d, s)| d.eq_ignore_ascii_case(name) || s.eq_ignore_ascii_case(name)).map(|(d, _)| *d)
}

/// What the directory keeps of a person beyond its first fields (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    /// The full name as displayed (SCIM `name.formatted`); when unset, SCIM shows the given
    /// and family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatted_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub middle_name: Option<String>,
    /// e.g. `Ms.`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honorific_prefix: Option<String>,
    /// e.g. `III`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honorific_suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_url: Option<String>,
    /// e.g. `Employee`, `Contractor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    /// e.g. `en-US` (as in HTTP `Accept-Language`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_language: Option<String>,
    /// e.g. `en-US`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Every e-mail address; `email` is the one standing for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<MultiValue>,
    /// Every phone number; `phone` is the one standing for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phone_numbers: Vec<MultiValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ims: Vec<MultiValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub photos: Vec<MultiValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entitlements: Vec<MultiValue>,
    /// The SCIM User's `roles` (the directory's roles are its groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scim_roles: Vec<MultiValue>,
    /// Base64 DER certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x509_certificates: Vec<MultiValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_center: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub division: Option<String>,
}

/// The single-valued text attributes of a profile: (directory name, SCIM name, whether the
/// SCIM attribute is in the enterprise extension).
pub const PROFILE_TEXTS: [(&str, &str, bool); 13] = [
    ("formatted_name", "name.formatted", false),
    ("middle_name", "name.middleName", false),
    ("honorific_prefix", "name.honorificPrefix", false),
    ("honorific_suffix", "name.honorificSuffix", false),
    ("nick_name", "nickName", false),
    ("profile_url", "profileUrl", false),
    ("user_type", "userType", false),
    ("preferred_language", "preferredLanguage", false),
    ("locale", "locale", false),
    ("timezone", "timezone", false),
    ("cost_center", "costCenter", true),
    ("organization", "organization", true),
    ("division", "division", true),
];

/// The multi-valued attributes of a profile: (directory name, SCIM name).
pub const PROFILE_LISTS: [(&str, &str); 8] = [
    ("emails", "emails"),
    ("phone_numbers", "phoneNumbers"),
    ("ims", "ims"),
    ("photos", "photos"),
    ("addresses", "addresses"),
    ("entitlements", "entitlements"),
    ("scim_roles", "roles"),
    ("x509_certificates", "x509Certificates"),
];

impl Profile {
    /// A single-valued text attribute by its directory name.
    pub fn text(&self, name: &str) -> Option<&Option<String>> {
        Some(match name {
            "formatted_name" => &self.formatted_name,
            "middle_name" => &self.middle_name,
            "honorific_prefix" => &self.honorific_prefix,
            "honorific_suffix" => &self.honorific_suffix,
            "nick_name" => &self.nick_name,
            "profile_url" => &self.profile_url,
            "user_type" => &self.user_type,
            "preferred_language" => &self.preferred_language,
            "locale" => &self.locale,
            "timezone" => &self.timezone,
            "cost_center" => &self.cost_center,
            "organization" => &self.organization,
            "division" => &self.division,
            _ => return None,
        })
    }

    /// A single-valued text attribute by its directory name, to change.
    pub fn text_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "formatted_name" => &mut self.formatted_name,
            "middle_name" => &mut self.middle_name,
            "honorific_prefix" => &mut self.honorific_prefix,
            "honorific_suffix" => &mut self.honorific_suffix,
            "nick_name" => &mut self.nick_name,
            "profile_url" => &mut self.profile_url,
            "user_type" => &mut self.user_type,
            "preferred_language" => &mut self.preferred_language,
            "locale" => &mut self.locale,
            "timezone" => &mut self.timezone,
            "cost_center" => &mut self.cost_center,
            "organization" => &mut self.organization,
            "division" => &mut self.division,
            _ => return None,
        })
    }

    /// A multi-valued attribute of [`MultiValue`]s by its directory name (not `addresses`).
    pub fn list(&self, name: &str) -> Option<&Vec<MultiValue>> {
        Some(match name {
            "emails" => &self.emails,
            "phone_numbers" => &self.phone_numbers,
            "ims" => &self.ims,
            "photos" => &self.photos,
            "entitlements" => &self.entitlements,
            "scim_roles" => &self.scim_roles,
            "x509_certificates" => &self.x509_certificates,
            _ => return None,
        })
    }

    /// A multi-valued attribute of [`MultiValue`]s by its directory name, to change.
    pub fn list_mut(&mut self, name: &str) -> Option<&mut Vec<MultiValue>> {
        Some(match name {
            "emails" => &mut self.emails,
            "phone_numbers" => &mut self.phone_numbers,
            "ims" => &mut self.ims,
            "photos" => &mut self.photos,
            "entitlements" => &mut self.entitlements,
            "scim_roles" => &mut self.scim_roles,
            "x509_certificates" => &mut self.x509_certificates,
            _ => return None,
        })
    }

    /// Trims every value, drops empty ones and checks the rest, naming each problem by its
    /// path (`phone_numbers[1].value`).
    pub(crate) fn normalize_and_validate(&mut self, errors: &mut ValidationErrors) {
        for (name, _, _) in PROFILE_TEXTS {
            let max = if name == "profile_url" { MAX_LONG } else { 256 };
            if let Some(v) = self.text_mut(name) {
                *v = crate::normalize_opt(v.take());
                check_opt_text(errors, name, v, max);
            }
        }
        for (name, _) in PROFILE_LISTS {
            if name == "addresses" {
                continue;
            }
            let max = if matches!(name, "x509_certificates" | "photos") { MAX_LONG } else { 256 };
            if let Some(list) = self.list_mut(name) {
                normalize_values(errors, name, list, max);
            }
        }
        for (i, e) in self.emails.iter().enumerate() {
            if !is_valid_email(&e.value) {
                errors.push(format!("emails[{i}].value"), "is not a valid e-mail address");
            }
        }
        normalize_addresses(errors, &mut self.addresses);
    }

    /// The attribute at `path` (see [`UserPath`]) as JSON, `None` when unset. Lists without a
    /// filter or a sub-attribute come as SCIM writes them.
    pub fn get(&self, path: &UserPath) -> Option<Value> {
        if let Some(v) = self.text(&path.attr) {
            return v.clone().map(Value::String);
        }
        if path.attr == "addresses" {
            let list = &self.addresses;
            if path.filter.is_none() && path.sub.is_none() {
                return (!list.is_empty()).then(|| Value::Array(list.iter().map(Address::to_scim).collect()));
            }
            let item = match &path.filter {
                Some(f) => list.iter().find(|a| f.matches_address(a)),
                None => representative(list, |a| (a.primary, a.kind.as_deref())).map(|i| &list[i]),
            }?;
            return match &path.sub {
                None => Some(item.to_scim()),
                Some(s) if s == "type" => item.kind.clone().map(Value::String),
                Some(s) if s == "primary" => Some(Value::Bool(item.primary)),
                Some(s) => item.part(s)?.clone().map(Value::String),
            };
        }
        let list = self.list(&path.attr)?;
        if path.filter.is_none() && path.sub.is_none() {
            return (!list.is_empty()).then(|| serde_json::to_value(list).unwrap_or(Value::Null));
        }
        let item = match &path.filter {
            Some(f) => list.iter().find(|v| f.matches_value(v)),
            None => representative(list, |v| (v.primary, v.kind.as_deref())).map(|i| &list[i]),
        }?;
        match path.sub.as_deref().unwrap_or("value") {
            "value" => Some(Value::String(item.value.clone())),
            "type" => item.kind.clone().map(Value::String),
            "display" => item.display.clone().map(Value::String),
            "primary" => Some(Value::Bool(item.primary)),
            _ => None,
        }
    }

    /// Sets (or, with `None`, removes) the text at `path`: a single-valued attribute, or one
    /// part of the value a filter such as `[type eq "mobile"]` picks, created with that type
    /// when missing. Used by directory sources, which deliver one text per path.
    pub fn set(&mut self, path: &UserPath, value: Option<String>) -> Result<(), String> {
        if let Some(v) = self.text_mut(&path.attr) {
            *v = value;
            return Ok(());
        }
        let kind = match &path.filter {
            None => None,
            Some(PathFilter { sub, value: FilterLiteral::Text(t) }) if sub == "type" => Some(t.clone()),
            Some(_) => return Err(format!("{path}: a source can only write through a filter on type")),
        };
        if path.attr == "addresses" {
            let part = path.sub.as_deref().unwrap_or("formatted");
            let list = &mut self.addresses;
            let found = match &kind {
                Some(k) => list.iter().position(|a| a.kind.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(k))),
                None => representative(list, |a| (a.primary, a.kind.as_deref())),
            };
            let i = match (found, &value) {
                (Some(i), _) => i,
                (None, None) => return Ok(()),
                (None, Some(_)) => {
                    list.push(Address {
                        kind: Some(kind.unwrap_or_else(|| "work".into())),
                        primary: list.is_empty(),
                        ..Default::default()
                    });
                    list.len() - 1
                }
            };
            let slot = list[i].part_mut(part).ok_or_else(|| format!("{path}: an address has no part {part:?}"))?;
            *slot = value;
            if list[i].is_empty() {
                list.remove(i);
            }
            return Ok(());
        }
        if path.sub.as_deref().is_some_and(|s| s != "value") {
            return Err(format!("{path}: a source can only write `value`"));
        }
        let list = self.list_mut(&path.attr).ok_or_else(|| format!("{path}: not an attribute of a person"))?;
        let found = match &kind {
            Some(k) => list.iter().position(|v| v.kind.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(k))),
            None => representative(list, |v| (v.primary, v.kind.as_deref())),
        };
        match (found, value) {
            (Some(i), Some(v)) => list[i].value = v,
            (Some(i), None) => {
                list.remove(i);
            }
            (None, Some(v)) => list.push(MultiValue {
                value: v,
                kind: Some(kind.unwrap_or_else(|| "work".into())),
                primary: list.is_empty(),
                display: None,
            }),
            (None, None) => {}
        }
        Ok(())
    }
}

/// Trims, drops empty values and duplicates, and checks: at most [`MAX_VALUES`], at most one
/// primary.
fn normalize_values(errors: &mut ValidationErrors, name: &str, list: &mut Vec<MultiValue>, max: usize) {
    for v in list.iter_mut() {
        v.value = v.value.trim().to_owned();
        v.kind = crate::normalize_opt(v.kind.take());
        v.display = crate::normalize_opt(v.display.take());
    }
    list.retain(|v| !v.value.is_empty());
    let mut seen: Vec<(String, Option<String>)> = vec![];
    list.retain(|v| {
        let key = (v.value.to_lowercase(), v.kind.as_ref().map(|k| k.to_lowercase()));
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    if list.len() > MAX_VALUES {
        errors.push(name, format!("holds at most {MAX_VALUES} values"));
    }
    if list.iter().filter(|v| v.primary).count() > 1 {
        errors.push(name, "at most one value may be primary");
    }
    for (i, v) in list.iter().enumerate() {
        check_text(errors, &format!("{name}[{i}].value"), &v.value, max);
        check_opt_text(errors, &format!("{name}[{i}].type"), &v.kind, 64);
        check_opt_text(errors, &format!("{name}[{i}].display"), &v.display, 256);
    }
}

fn normalize_addresses(errors: &mut ValidationErrors, list: &mut Vec<Address>) {
    for a in list.iter_mut() {
        a.kind = crate::normalize_opt(a.kind.take());
        for (part, _) in ADDRESS_PARTS {
            if let Some(v) = a.part_mut(part) {
                *v = crate::normalize_opt(v.take());
            }
        }
    }
    list.retain(|a| !a.is_empty());
    if list.len() > MAX_VALUES {
        errors.push("addresses", format!("holds at most {MAX_VALUES} values"));
    }
    if list.iter().filter(|a| a.primary).count() > 1 {
        errors.push("addresses", "at most one value may be primary");
    }
    for (i, a) in list.iter().enumerate() {
        check_opt_text(errors, &format!("addresses[{i}].type"), &a.kind, 64);
        for (part, _) in ADDRESS_PARTS {
            let field = format!("addresses[{i}].{part}");
            match (part, a.part(part)) {
                // Printed addresses and streets run over several lines.
                ("formatted" | "street_address", Some(Some(v))) => {
                    if v.chars().count() > 1024 {
                        errors.push(field, "must be at most 1024 characters");
                    } else if v.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
                        errors.push(field, "must not contain control characters other than line breaks");
                    }
                }
                (_, Some(v)) => check_opt_text(errors, &field, v, 256),
                (_, None) => {}
            }
        }
    }
}

/// The index of the value that stands for a list: the primary one, else the first of type
/// `work`, else the first.
pub fn representative<T>(list: &[T], key: impl Fn(&T) -> (bool, Option<&str>)) -> Option<usize> {
    list.iter()
        .position(|v| key(v).0)
        .or_else(|| list.iter().position(|v| key(v).1.is_some_and(|k| k.eq_ignore_ascii_case("work"))))
        .or(if list.is_empty() { None } else { Some(0) })
}

/// Keeps a single-valued field (`email`, `phone`) and its list in step. A value given in
/// the field replaces the value standing for the list (or becomes a primary work value);
/// an absent field takes the value standing for the list.
pub fn reconcile_single(single: &mut Option<String>, list: &mut Vec<MultiValue>) {
    let at = representative(list, |v| (v.primary, v.kind.as_deref()));
    match (single.take(), at) {
        (None, Some(i)) => *single = Some(list[i].value.clone()),
        (None, None) => {}
        (Some(v), Some(i)) => {
            list[i].value.clone_from(&v);
            *single = Some(v);
        }
        (Some(v), None) => {
            list.insert(0, MultiValue::work(v.clone()));
            *single = Some(v);
        }
    }
}

/// Removes the value standing for a list (what clearing `email` or `phone` means).
pub fn clear_single(single: &mut Option<String>, list: &mut Vec<MultiValue>) {
    if let Some(i) = representative(list, |v| (v.primary, v.kind.as_deref())) {
        list.remove(i);
    }
    *single = None;
}

/// A literal of a path filter: text or a boolean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterLiteral {
    Text(String),
    Bool(bool),
}

/// `[sub eq literal]` in a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathFilter {
    pub sub: String,
    pub value: FilterLiteral,
}

impl PathFilter {
    fn matches_text(&self, actual: Option<&str>) -> bool {
        match &self.value {
            FilterLiteral::Text(t) => actual.is_some_and(|a| a.eq_ignore_ascii_case(t)),
            FilterLiteral::Bool(_) => false,
        }
    }

    fn matches_value(&self, v: &MultiValue) -> bool {
        match (self.sub.as_str(), &self.value) {
            ("primary", FilterLiteral::Bool(b)) => v.primary == *b,
            ("type", _) => self.matches_text(v.kind.as_deref()),
            ("value", _) => self.matches_text(Some(&v.value)),
            ("display", _) => self.matches_text(v.display.as_deref()),
            _ => false,
        }
    }

    fn matches_address(&self, a: &Address) -> bool {
        match (self.sub.as_str(), &self.value) {
            ("primary", FilterLiteral::Bool(b)) => a.primary == *b,
            ("type", _) => self.matches_text(a.kind.as_deref()),
            (part, _) => a.part(part).is_some_and(|v| self.matches_text(v.as_deref())),
        }
    }
}

/// A path to one value of a person's profile: `attr`, `attr.sub`, `attr[sub eq "x"]` or
/// `attr[sub eq "x"].sub`. Names are the directory's (`phone_numbers`); the SCIM spelling of
/// a sub-attribute (`postalCode`) is read as the directory's (`postal_code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPath {
    pub attr: String,
    pub filter: Option<PathFilter>,
    pub sub: Option<String>,
}

impl std::fmt::Display for UserPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.attr)?;
        if let Some(PathFilter { sub, value }) = &self.filter {
            match value {
                FilterLiteral::Text(t) => write!(f, "[{sub} eq {t:?}]")?,
                FilterLiteral::Bool(b) => write!(f, "[{sub} eq {b}]")?,
            }
        }
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

impl UserPath {
    /// Reads a path into a profile attribute; `None` when `path` names none (a first field
    /// such as `email`, or a custom attribute). `Err` says what is wrong with a path that
    /// names a profile attribute.
    pub fn parse(path: &str) -> Option<Result<Self, String>> {
        let path = path.trim();
        let end = path.find(['[', '.']).unwrap_or(path.len());
        let attr = &path[..end];
        let is_text = PROFILE_TEXTS.iter().any(|(n, _, _)| *n == attr);
        let is_list = PROFILE_LISTS.iter().any(|(n, _)| *n == attr);
        if !is_text && !is_list {
            return None;
        }
        Some(Self::parse_rest(attr, &path[end..], is_list))
    }

    fn parse_rest(attr: &str, whole: &str, is_list: bool) -> Result<Self, String> {
        let bad = |why: &str| format!("{attr}{whole}: {why}");
        let mut rest = whole;
        if !is_list {
            return if rest.is_empty() {
                Ok(Self { attr: attr.into(), filter: None, sub: None })
            } else {
                Err(bad("is a single value; name it without a filter or a part"))
            };
        }
        let mut filter = None;
        if let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or_else(|| bad("the filter has no closing `]`"))?;
            let (cond, after) = (&inner[..close], &inner[close + 1..]);
            let mut words = cond.splitn(3, ' ');
            let (sub, op, lit) = (words.next().unwrap_or(""), words.next().unwrap_or(""), words.next().unwrap_or(""));
            if !op.eq_ignore_ascii_case("eq") {
                return Err(bad("a filter is written [part eq \"value\"]"));
            }
            let lit = lit.trim();
            let value = if let Some(t) = lit.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
                FilterLiteral::Text(t.to_owned())
            } else if lit.eq_ignore_ascii_case("true") || lit.eq_ignore_ascii_case("false") {
                FilterLiteral::Bool(lit.eq_ignore_ascii_case("true"))
            } else {
                return Err(bad("the filter's value is \"text\", true or false"));
            };
            let sub = Self::check_sub(attr, sub).ok_or_else(|| bad("the filter names no part of the attribute"))?;
            filter = Some(PathFilter { sub, value });
            rest = after;
        }
        let sub = match rest.strip_prefix('.') {
            Some(s) => Some(Self::check_sub(attr, s).ok_or_else(|| bad("names no part of the attribute"))?),
            None if rest.is_empty() => None,
            None => return Err(bad("is not a path (write attr, attr.part or attr[part eq \"x\"].part)")),
        };
        Ok(Self { attr: attr.into(), filter, sub })
    }

    fn check_sub(attr: &str, sub: &str) -> Option<String> {
        let sub = sub.trim();
        if ["type", "primary"].iter().any(|s| s.eq_ignore_ascii_case(sub)) {
            return Some(sub.to_lowercase());
        }
        if attr == "addresses" {
            canonical_part(sub).map(str::to_owned)
        } else {
            ["value", "display"].iter().find(|s| s.eq_ignore_ascii_case(sub)).map(|s| (*s).to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> UserPath {
        UserPath::parse(p).unwrap().unwrap()
    }

    fn profile() -> Profile {
        Profile {
            phone_numbers: vec![
                MultiValue { value: "+1 555 0100".into(), kind: Some("work".into()), primary: true, display: None },
                MultiValue { value: "+1 555 0199".into(), kind: Some("mobile".into()), primary: false, display: None },
            ],
            addresses: vec![Address {
                kind: Some("work".into()),
                locality: Some("Redmond".into()),
                postal_code: Some("98052".into()),
                ..Default::default()
            }],
            nick_name: Some("Babs".into()),
            ..Default::default()
        }
    }

    #[test]
    fn paths_read_the_values_parameters_name() {
        let p = profile();
        assert_eq!(p.get(&path("phone_numbers[type eq \"mobile\"].value")), Some(json!("+1 555 0199")));
        assert_eq!(p.get(&path("phone_numbers[type eq \"MOBILE\"]")), Some(json!("+1 555 0199")));
        assert_eq!(p.get(&path("phone_numbers.value")), Some(json!("+1 555 0100")), "the primary");
        assert_eq!(p.get(&path("addresses[type eq \"work\"].locality")), Some(json!("Redmond")));
        assert_eq!(p.get(&path("addresses[type eq \"work\"].postalCode")), Some(json!("98052")));
        assert_eq!(p.get(&path("addresses[type eq \"home\"].locality")), None);
        assert_eq!(p.get(&path("nick_name")), Some(json!("Babs")));
        assert_eq!(
            p.get(&path("addresses")),
            Some(json!([{"locality": "Redmond", "postalCode": "98052", "type": "work", "primary": false}]))
        );
        assert_eq!(p.get(&path("phone_numbers[primary eq true].type")), Some(json!("work")));
    }

    #[test]
    fn bad_paths_say_why_and_other_names_are_not_profile_paths() {
        assert!(UserPath::parse("email").is_none());
        assert!(UserPath::parse("cost_centre").is_none());
        for bad in [
            "nick_name.value",
            "phone_numbers[type \"mobile\"]",
            "phone_numbers[type eq mobile]",
            "phone_numbers.street_address",
            "addresses[type eq \"work\"",
            "addresses.city",
        ] {
            assert!(UserPath::parse(bad).unwrap().is_err(), "{bad}");
        }
        assert_eq!(
            path("phone_numbers[type eq \"mobile\"].value").to_string(),
            "phone_numbers[type eq \"mobile\"].value"
        );
    }

    #[test]
    fn sources_set_one_value_by_type() {
        let mut p = profile();
        p.set(&path("phone_numbers[type eq \"fax\"].value"), Some("+1 555 0142".into())).unwrap();
        assert_eq!(p.get(&path("phone_numbers[type eq \"fax\"].value")), Some(json!("+1 555 0142")));
        p.set(&path("phone_numbers[type eq \"mobile\"].value"), None).unwrap();
        assert_eq!(p.phone_numbers.len(), 2);
        p.set(&path("addresses[type eq \"work\"].street_address"), Some("1 Microsoft Way".into())).unwrap();
        assert_eq!(p.addresses[0].street_address.as_deref(), Some("1 Microsoft Way"));
        for part in ["street_address", "locality", "postal_code"] {
            p.set(&path(&format!("addresses[type eq \"work\"].{part}")), None).unwrap();
        }
        assert!(p.addresses.is_empty(), "an address with no part left is gone");
        p.set(&path("division"), Some("EMEA".into())).unwrap();
        assert_eq!(p.division.as_deref(), Some("EMEA"));
    }

    #[test]
    fn the_single_field_and_its_list_stay_in_step() {
        let mut list = vec![
            MultiValue { value: "home@example.com".into(), kind: Some("home".into()), ..Default::default() },
            MultiValue { value: "ada@example.com".into(), kind: Some("work".into()), ..Default::default() },
        ];
        let mut single = None;
        reconcile_single(&mut single, &mut list);
        assert_eq!(single.as_deref(), Some("ada@example.com"), "work stands for the list when none is primary");
        single = Some("ada@corp.example".into());
        reconcile_single(&mut single, &mut list);
        assert_eq!(list[1].value, "ada@corp.example");
        clear_single(&mut single, &mut list);
        assert_eq!((single, list.len()), (None, 1));
        let mut empty = vec![];
        let mut one = Some("x@example.com".into());
        reconcile_single(&mut one, &mut empty);
        assert_eq!(empty, vec![MultiValue::work("x@example.com")]);
    }

    #[test]
    fn every_problem_is_named() {
        let mut p = Profile {
            emails: vec![
                MultiValue { value: "nope".into(), primary: true, ..Default::default() },
                MultiValue { value: "b@example.com".into(), primary: true, ..Default::default() },
                MultiValue { value: "  ".into(), ..Default::default() },
            ],
            locale: Some("x".repeat(300)),
            ..Default::default()
        };
        let mut errors = ValidationErrors::default();
        p.normalize_and_validate(&mut errors);
        let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["locale", "emails", "emails[0].value"]);
        assert_eq!(p.emails.len(), 2, "the empty value is dropped");
    }
}
