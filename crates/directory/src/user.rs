use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::attribute::{check_custom_attributes, AttributeDef};
use crate::normalize_opt;
use crate::profile::{clear_single, reconcile_single, Profile, PROFILE_LISTS, PROFILE_TEXTS};
use crate::validation::{check_opt_text, check_text, first_invisible, is_valid_email, nfkc, ValidationErrors};

/// Whether a person may use their accounts. `deleted` is set by DELETE and is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Suspended,
    Deleted,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// Where a user comes from: created here, imported from LDAP / AD, or pushed by SCIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserSource {
    Local,
    Ldap,
    Scim,
}

impl UserSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Ldap => "ldap",
            Self::Scim => "scim",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Self::Local),
            "ldap" => Some(Self::Ldap),
            "scim" => Some(Self::Scim),
            _ => None,
        }
    }
}

/// A person in the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    /// Unique, compared case-insensitively.
    pub username: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub display_name: Option<String>,
    pub title: Option<String>,
    pub department: Option<String>,
    /// The id of another user.
    pub manager_id: Option<Uuid>,
    pub phone: Option<String>,
    pub employee_number: Option<String>,
    /// The rest of the person as SCIM keeps it (RFC 7643 sections 4.1 and 4.3).
    #[serde(flatten)]
    pub profile: Profile,
    /// Custom attributes, declared beforehand with `POST /api/v1/attributes`.
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    pub status: UserStatus,
    pub source: UserSource,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Increases by one on every change; also sent as the ETag.
    pub version: i64,
}

/// The writable fields of a user: the body of `POST /api/v1/users`, and the document a
/// JSON merge patch (`PATCH /api/v1/users/{id}`) applies to.
///
/// `email` and `phone` stand for their lists (`emails`, `phone_numbers`): given, they set
/// the value standing for the list (the primary one, else the first of type work, else the
/// first; a new list gets a primary work value); absent, they are that value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserInput {
    pub username: String,
    /// The primary e-mail address (unique among users that are not deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee_number: Option<String>,
    #[serde(flatten)]
    pub profile: Profile,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    /// `active` (default) or `suspended`. Deletion is `DELETE /api/v1/users/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UserStatus>,
    /// Fields a user does not have; each is refused by [`UserInput::normalize_and_validate`]
    /// (collected rather than refused while reading, so that one answer names them all).
    #[serde(flatten, skip_serializing)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

/// The fields of a user that are server-managed; a patch naming them is refused.
pub const READ_ONLY_USER_FIELDS: &[&str] = &["id", "source", "created_at", "updated_at", "version"];

/// Standard attribute names, which custom attributes may not reuse.
pub const STANDARD_USER_FIELDS: &[&str] = &[
    "id",
    "username",
    "email",
    "first_name",
    "last_name",
    "display_name",
    "title",
    "department",
    "manager_id",
    "manager",
    "phone",
    "employee_number",
    // The profile (crate::profile::PROFILE_TEXTS and PROFILE_LISTS).
    "formatted_name",
    "middle_name",
    "honorific_prefix",
    "honorific_suffix",
    "nick_name",
    "profile_url",
    "user_type",
    "preferred_language",
    "locale",
    "timezone",
    "cost_center",
    "organization",
    "division",
    "emails",
    "phone_numbers",
    "ims",
    "photos",
    "addresses",
    "entitlements",
    "scim_roles",
    "x509_certificates",
    "attributes",
    "status",
    "source",
    "created_at",
    "updated_at",
    "version",
];

impl UserInput {
    /// Trims text, drops empty values and checks every field against the declared custom
    /// attributes. Returns every problem found, each naming its field.
    pub fn normalize_and_validate(&mut self, defs: &[AttributeDef]) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        for name in std::mem::take(&mut self.unknown).keys() {
            errors.push(name.as_str(), "is not an attribute of a user (custom attributes go under `attributes`)");
        }
        // Unicode policy: NFKC-normalised; no whitespace, control, bidi or zero-width characters.
        self.username = nfkc(self.username.trim());
        check_text(&mut errors, "username", &self.username, 256);
        if self.username.chars().any(char::is_whitespace) {
            errors.push("username", "must not contain spaces");
        }
        if let Some(c) = first_invisible(&self.username) {
            errors.push("username", format!("must not contain bidirectional controls or zero-width characters ({c})"));
        }
        self.email = normalize_opt(self.email.take());
        if let Some(email) = &self.email {
            if let Some(c) = first_invisible(email) {
                errors.push("email", format!("must not contain bidirectional controls or zero-width characters ({c})"));
            } else if !is_valid_email(email) {
                errors.push("email", "is not a valid e-mail address");
            }
        }
        for (field, value) in [
            ("first_name", &mut self.first_name),
            ("last_name", &mut self.last_name),
            ("display_name", &mut self.display_name),
            ("title", &mut self.title),
            ("department", &mut self.department),
            ("phone", &mut self.phone),
            ("employee_number", &mut self.employee_number),
        ] {
            *value = normalize_opt(value.take());
            check_opt_text(&mut errors, field, value, 256);
        }
        self.profile.normalize_and_validate(&mut errors);
        reconcile_single(&mut self.email, &mut self.profile.emails);
        reconcile_single(&mut self.phone, &mut self.profile.phone_numbers);
        if self.status == Some(UserStatus::Deleted) {
            errors.push("status", "must be `active` or `suspended`; delete a user with DELETE");
        }
        check_custom_attributes(&mut errors, &mut self.attributes, defs);
        errors.into_result()
    }

    /// The writable view of an existing user.
    pub fn from_user(user: &User) -> Self {
        Self {
            username: user.username.clone(),
            email: user.email.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            display_name: user.display_name.clone(),
            title: user.title.clone(),
            department: user.department.clone(),
            manager_id: user.manager_id,
            phone: user.phone.clone(),
            employee_number: user.employee_number.clone(),
            profile: user.profile.clone(),
            attributes: user.attributes.clone(),
            status: Some(user.status),
            unknown: Map::new(),
        }
    }

    /// Sets or clears the primary e-mail address (clearing removes it from `emails`).
    pub fn set_email(&mut self, email: Option<String>) {
        match email {
            Some(e) => self.email = Some(e),
            None => clear_single(&mut self.email, &mut self.profile.emails),
        }
    }

    /// Sets or clears the phone number standing for `phone_numbers` (clearing removes it).
    pub fn set_phone(&mut self, phone: Option<String>) {
        match phone {
            Some(p) => self.phone = Some(p),
            None => clear_single(&mut self.phone, &mut self.profile.phone_numbers),
        }
    }
}

/// Whether `name` is an attribute of the profile (see [`crate::profile`]).
pub fn is_profile_attribute(name: &str) -> bool {
    PROFILE_TEXTS.iter().any(|(n, _, _)| *n == name) || PROFILE_LISTS.iter().any(|(n, _)| *n == name)
}

impl User {
    /// A new user from validated input.
    pub fn new(input: UserInput, source: UserSource, now: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            username: input.username,
            email: input.email,
            first_name: input.first_name,
            last_name: input.last_name,
            display_name: input.display_name,
            title: input.title,
            department: input.department,
            manager_id: input.manager_id,
            phone: input.phone,
            employee_number: input.employee_number,
            profile: input.profile,
            attributes: input.attributes,
            status: input.status.unwrap_or(UserStatus::Active),
            source,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// This user with the writable fields replaced by `input` and the version moved on.
    pub fn updated(&self, input: UserInput, now: DateTime<Utc>) -> Self {
        Self {
            id: self.id,
            username: input.username,
            email: input.email,
            first_name: input.first_name,
            last_name: input.last_name,
            display_name: input.display_name,
            title: input.title,
            department: input.department,
            manager_id: input.manager_id,
            phone: input.phone,
            employee_number: input.employee_number,
            profile: input.profile,
            attributes: input.attributes,
            status: input.status.unwrap_or(self.status),
            source: self.source,
            created_at: self.created_at,
            updated_at: now,
            version: self.version + 1,
        }
    }

    /// The key under which usernames are unique: NFKC, lower-cased.
    pub fn username_key(username: &str) -> String {
        nfkc(username).to_lowercase()
    }

    /// The key under which primary e-mail addresses are unique among users that are not
    /// deleted (one person, one SAML NameID): trimmed, NFKC, lower-cased.
    pub fn email_key(email: &str) -> String {
        nfkc(email.trim()).to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(username: &str) -> UserInput {
        UserInput { username: username.into(), ..Default::default() }
    }

    #[test]
    fn trims_and_drops_empty_values() {
        let mut u = input("  ada ");
        u.title = Some("   ".into());
        u.email = Some(" ada@example.com ".into());
        u.normalize_and_validate(&[]).unwrap();
        assert_eq!(u.username, "ada");
        assert_eq!(u.title, None);
        assert_eq!(u.email.as_deref(), Some("ada@example.com"));
    }

    #[test]
    fn names_every_bad_field() {
        let mut u = input("");
        u.email = Some("nope".into());
        u.status = Some(UserStatus::Deleted);
        let err = u.normalize_and_validate(&[]).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["username", "email", "status"]);
    }

    #[test]
    fn unknown_custom_attribute_is_refused() {
        let mut u = input("ada");
        u.attributes.insert("shoe_size".into(), Value::from(42));
        let err = u.normalize_and_validate(&[]).unwrap_err();
        assert_eq!(err.0[0].field, "attributes.shoe_size");
    }

    #[test]
    fn usernames_are_nfkc_and_without_invisible_characters() {
        let mut u = input("\u{FF41}da"); // full-width a
        u.normalize_and_validate(&[]).unwrap();
        assert_eq!(u.username, "ada");
        for bad in ["ad\u{200B}a", "ada\u{202E}", "\u{2066}ada", "ada\u{FEFF}", "a\u{061C}da", "ad\u{0007}a"] {
            let err = input(bad).normalize_and_validate(&[]).unwrap_err();
            assert_eq!(err.0[0].field, "username", "{bad:?}");
        }
        assert_eq!(User::email_key(" Ada@EXAMPLE.com"), User::email_key("\u{FF41}da@example.com"));
    }

    #[test]
    fn username_key_is_case_insensitive() {
        assert_eq!(User::username_key("Ada.Lovelace"), User::username_key("ADA.lovelace"));
    }

    #[test]
    fn update_keeps_identity_and_bumps_version() {
        let now = crate::now();
        let u = User::new(input("ada"), UserSource::Local, now);
        let mut patch = UserInput::from_user(&u);
        patch.title = Some("Engineer".into());
        let later = now + chrono::Duration::seconds(5);
        let v2 = u.updated(patch, later);
        assert_eq!((v2.id, v2.created_at, v2.version), (u.id, u.created_at, 2));
        assert_eq!(v2.title.as_deref(), Some("Engineer"));
        assert_eq!(v2.updated_at, later);
    }
}
