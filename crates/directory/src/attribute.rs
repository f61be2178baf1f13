use std::sync::OnceLock;

use chrono::{DateTime, NaiveDate, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::user::STANDARD_USER_FIELDS;
use crate::validation::ValidationErrors;

/// The type of a custom attribute's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttributeType {
    String,
    Number,
    Boolean,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A list of strings.
    #[serde(alias = "list")]
    StringList,
}

impl AttributeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::StringList => "string_list",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "string" => Some(Self::String),
            "number" => Some(Self::Number),
            "boolean" => Some(Self::Boolean),
            "date" => Some(Self::Date),
            "string_list" | "list" => Some(Self::StringList),
            _ => None,
        }
    }

    /// Whether `value` is a valid value of this type.
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (Self::String, Value::String(_)) => true,
            (Self::Number, Value::Number(_)) => true,
            (Self::Boolean, Value::Bool(_)) => true,
            (Self::Date, Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
            (Self::StringList, Value::Array(items)) => items.iter().all(Value::is_string),
            _ => false,
        }
    }

    fn expectation(self) -> &'static str {
        match self {
            Self::String => "must be a string",
            Self::Number => "must be a number",
            Self::Boolean => "must be true or false",
            Self::Date => "must be a date written YYYY-MM-DD",
            Self::StringList => "must be a list of strings",
        }
    }
}

/// A declared custom attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttributeDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AttributeType,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The body of `POST /api/v1/attributes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributeDefInput {
    /// Lower case letters, digits and `_`, starting with a letter; not a standard field name.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AttributeType,
    #[serde(default)]
    pub description: Option<String>,
}

fn name_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new("^[a-z][a-z0-9_]{0,62}$").unwrap_or_else(|_| unreachable!()))
}

impl AttributeDefInput {
    pub fn validate(&mut self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.name = self.name.trim().to_owned();
        if !name_pattern().is_match(&self.name) {
            errors.push("name", "must be 1-63 lower case letters, digits or `_`, starting with a letter");
        } else if STANDARD_USER_FIELDS.contains(&self.name.as_str()) {
            errors.push("name", "is a standard user attribute");
        } else if let Some(why) = reserved_name(&self.name) {
            errors.push("name", why);
        }
        self.description = crate::normalize_opt(self.description.take());
        crate::validation::check_opt_text(&mut errors, "description", &self.description, 1024);
        errors.into_result()
    }

    pub fn into_def(self, now: DateTime<Utc>) -> AttributeDef {
        AttributeDef { name: self.name, kind: self.kind, description: self.description, created_at: now }
    }
}

/// The attribute names of SCIM (RFC 7643): the core User (section 4.1, with the
/// sub-attributes of `name`), the Enterprise User extension (section 4.3) and the attributes
/// every resource has (section 3.1). A custom attribute named like one of them, in any case
/// and with or without `_` between its words (`nickName`, `nick_name`), is refused: a SCIM
/// client could not tell it from the standard one, and the directory keeps these itself.
pub const SCIM_USER_ATTRIBUTES: &[&str] = &[
    "id",
    "externalId",
    "meta",
    "schemas",
    "userName",
    "name",
    "formatted",
    "familyName",
    "givenName",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "active",
    "password",
    "emails",
    "phoneNumbers",
    "ims",
    "photos",
    "addresses",
    "groups",
    "entitlements",
    "roles",
    "x509Certificates",
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
    "manager",
];

/// Why `name` may not be a custom attribute's name (it is a SCIM attribute's), if it may not.
/// Compared without case and without `_`: `preferred_language` is `preferredLanguage`.
pub fn reserved_name(name: &str) -> Option<String> {
    let key = |s: &str| s.chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect::<String>();
    let wanted = key(name);
    if wanted == "password" {
        return Some(
            "is reserved: a password is never a custom attribute (it is write-only, kept as a hash: SCIM \
             `password`, or PUT /api/v1/users/{id}/password)"
                .into(),
        );
    }
    SCIM_USER_ATTRIBUTES
        .iter()
        .find(|a| key(a) == wanted)
        .map(|a| format!("is the SCIM attribute `{a}` (RFC 7643): a custom attribute cannot take its name"))
}

/// Checks custom attribute values against their declarations; `null` values are dropped.
pub(crate) fn check_custom_attributes(
    errors: &mut ValidationErrors,
    attributes: &mut Map<String, Value>,
    defs: &[AttributeDef],
) {
    attributes.retain(|_, v| !v.is_null());
    for (name, value) in attributes.iter() {
        let field = format!("attributes.{name}");
        match defs.iter().find(|d| &d.name == name) {
            None => errors.push(field, "is not a declared custom attribute (declare it with POST /api/v1/attributes)"),
            Some(def) if !def.kind.accepts(value) => errors.push(field, def.kind.expectation()),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_accept_their_values_only() {
        use AttributeType::*;
        assert!(String.accepts(&json!("x")) && !String.accepts(&json!(1)));
        assert!(Number.accepts(&json!(1.5)) && !Number.accepts(&json!("1")));
        assert!(Boolean.accepts(&json!(false)) && !Boolean.accepts(&json!("false")));
        assert!(Date.accepts(&json!("2024-02-29")) && !Date.accepts(&json!("2023-02-29")));
        assert!(StringList.accepts(&json!(["a", "b"])) && !StringList.accepts(&json!(["a", 1])));
    }

    #[test]
    fn names_are_checked() {
        for (name, ok) in [("cost_code", true), ("Cost", false), ("1a", false), ("email", false), ("", false)] {
            let mut input = AttributeDefInput { name: name.into(), kind: AttributeType::String, description: None };
            assert_eq!(input.validate().is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn scim_names_are_refused_in_any_case_and_spelling() {
        for name in [
            "password",
            "nickname",
            "nick_name",
            "preferred_language",
            "phone_numbers",
            "cost_center",
            "costcenter",
            "x509_certificates",
            "profile_url",
            "user_type",
            "middle_name",
            "honorific_prefix",
            "honorific_suffix",
            "locale",
            "timezone",
            "emails",
            "addresses",
            "roles",
            "entitlements",
            "organization",
            "division",
            "manager",
            "external_id",
            "name",
        ] {
            let mut input = AttributeDefInput { name: name.into(), kind: AttributeType::String, description: None };
            let errors = input.validate().expect_err(name);
            assert_eq!(errors.0[0].field, "name", "{name}");
        }
        assert!(reserved_name("PassWord").is_some_and(|r| r.contains("never a custom attribute")));
        assert!(reserved_name("Preferred_Language").is_some_and(|r| r.contains("`preferredLanguage`")));
        for fine in ["badge_number", "start_date", "cost_code", "shoe_size", "passwords_reset_at", "skills"] {
            assert_eq!(reserved_name(fine), None, "{fine}");
        }
    }
}
