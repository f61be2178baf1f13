//! Schema definitions (RFC 7643 section 7) as data: rendered at `/Schemas`, and used to find
//! attributes by path (names compared without case), to know which are multi-valued,
//! read-only or case-exact.

use serde_json::{json, Map, Value};

use crate::query::AttrPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Reference,
    Complex,
}

impl AttrType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Boolean => "boolean",
            Self::Decimal => "decimal",
            Self::Integer => "integer",
            Self::DateTime => "dateTime",
            Self::Reference => "reference",
            Self::Complex => "complex",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

impl Mutability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "readOnly",
            Self::ReadWrite => "readWrite",
            Self::Immutable => "immutable",
            Self::WriteOnly => "writeOnly",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
    Request,
}

impl Returned {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Never => "never",
            Self::Default => "default",
            Self::Request => "request",
        }
    }
}

/// One attribute of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub kind: AttrType,
    pub multi_valued: bool,
    pub description: String,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    /// `none`, `server` or `global`.
    pub uniqueness: &'static str,
    pub canonical_values: Vec<String>,
    pub reference_types: Vec<String>,
    pub sub_attributes: Vec<Attribute>,
}

impl Attribute {
    pub fn new(name: &str, kind: AttrType, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            multi_valued: false,
            description: description.to_owned(),
            required: false,
            case_exact: false,
            mutability: Mutability::ReadWrite,
            returned: Returned::Default,
            uniqueness: "none",
            canonical_values: vec![],
            reference_types: vec![],
            sub_attributes: vec![],
        }
    }
    pub fn string(name: &str, description: &str) -> Self {
        Self::new(name, AttrType::String, description)
    }
    pub fn multi(mut self) -> Self {
        self.multi_valued = true;
        self
    }
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
    pub fn case_exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    pub fn read_only(mut self) -> Self {
        self.mutability = Mutability::ReadOnly;
        self
    }
    pub fn immutable(mut self) -> Self {
        self.mutability = Mutability::Immutable;
        self
    }
    /// Written by clients, never returned (a password).
    pub fn write_only(mut self) -> Self {
        self.mutability = Mutability::WriteOnly;
        self.returned = Returned::Never;
        self
    }
    pub fn unique(mut self) -> Self {
        self.uniqueness = "server";
        self
    }
    pub fn on_request(mut self) -> Self {
        self.returned = Returned::Request;
        self
    }
    pub fn always(mut self) -> Self {
        self.returned = Returned::Always;
        self
    }
    pub fn canonical(mut self, values: &[&str]) -> Self {
        self.canonical_values = values.iter().map(|v| (*v).to_owned()).collect();
        self
    }
    pub fn references(mut self, types: &[&str]) -> Self {
        self.reference_types = types.iter().map(|v| (*v).to_owned()).collect();
        self
    }
    pub fn complex(name: &str, description: &str, subs: Vec<Attribute>) -> Self {
        let mut a = Self::new(name, AttrType::Complex, description);
        a.sub_attributes = subs;
        a
    }

    /// The sub-attribute named `name` (without case).
    pub fn sub(&self, name: &str) -> Option<&Attribute> {
        self.sub_attributes.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), json!(self.name));
        o.insert("type".into(), json!(self.kind.as_str()));
        o.insert("multiValued".into(), json!(self.multi_valued));
        o.insert("description".into(), json!(self.description));
        o.insert("required".into(), json!(self.required));
        if matches!(self.kind, AttrType::String | AttrType::Reference) {
            o.insert("caseExact".into(), json!(self.case_exact));
        }
        if !self.canonical_values.is_empty() {
            o.insert("canonicalValues".into(), json!(self.canonical_values));
        }
        if !self.reference_types.is_empty() {
            o.insert("referenceTypes".into(), json!(self.reference_types));
        }
        o.insert("mutability".into(), json!(self.mutability.as_str()));
        o.insert("returned".into(), json!(self.returned.as_str()));
        if self.kind != AttrType::Complex {
            o.insert("uniqueness".into(), json!(self.uniqueness));
        }
        if self.kind == AttrType::Complex {
            o.insert("subAttributes".into(), Value::Array(self.sub_attributes.iter().map(Self::to_json).collect()));
        }
        Value::Object(o)
    }
}

/// A schema: its URN, name and attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub id: String,
    pub name: String,
    pub description: String,
    pub attributes: Vec<Attribute>,
}

impl Schema {
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The `/Schemas/{id}` document.
    pub fn to_json(&self, base_url: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": self.attributes.iter().map(Attribute::to_json).collect::<Vec<_>>(),
            "meta": {"resourceType": "Schema", "location": format!("{base_url}/Schemas/{}", self.id)},
        })
    }
}

/// A resource type's schemas: the core one and its extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSchema {
    /// `User` or `Group`.
    pub name: String,
    /// `/Users` or `/Groups`.
    pub endpoint: String,
    pub core: Schema,
    pub extensions: Vec<Schema>,
}

/// Where an attribute path points.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    /// The schema holding the attribute; `None` for the common attributes (`id`, `externalId`,
    /// `meta`, `schemas`).
    pub schema: Option<&'a Schema>,
    pub attr: &'a Attribute,
    pub sub: Option<&'a Attribute>,
}

impl Found<'_> {
    /// Whether this is the core schema (attributes at the top level of the resource).
    pub fn extension_urn(&self, rs: &ResourceSchema) -> Option<String> {
        self.schema.filter(|s| s.id != rs.core.id).map(|s| s.id.clone())
    }
    /// The attribute (or sub-attribute) that the path ends at.
    pub fn leaf(&self) -> &Attribute {
        self.sub.unwrap_or(self.attr)
    }
}

/// The attributes every resource has (RFC 7643 section 3.1).
pub fn common_attributes() -> &'static [Attribute] {
    use std::sync::OnceLock;
    static COMMON: OnceLock<Vec<Attribute>> = OnceLock::new();
    COMMON.get_or_init(|| {
        vec![
            Attribute::string("id", "The resource's id, given by the service provider.")
                .case_exact()
                .read_only()
                .always(),
            Attribute::string("externalId", "The client's id of the resource.").case_exact(),
            Attribute::complex(
                "meta",
                "Resource metadata.",
                vec![
                    Attribute::string("resourceType", "").case_exact().read_only(),
                    Attribute::new("created", AttrType::DateTime, "").read_only(),
                    Attribute::new("lastModified", AttrType::DateTime, "").read_only(),
                    Attribute::new("location", AttrType::Reference, "").case_exact().read_only(),
                    Attribute::string("version", "").case_exact().read_only(),
                ],
            )
            .read_only(),
            Attribute::new("schemas", AttrType::Reference, "").multi().case_exact().always(),
        ]
    })
}

impl ResourceSchema {
    pub fn schema_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.core.id.as_str()).chain(self.extensions.iter().map(|s| s.id.as_str()))
    }

    /// The schema with this URN (without case).
    pub fn schema(&self, urn: &str) -> Option<&Schema> {
        std::iter::once(&self.core).chain(self.extensions.iter()).find(|s| s.id.eq_ignore_ascii_case(urn))
    }

    pub fn is_extension(&self, urn: &str) -> bool {
        self.extensions.iter().any(|s| s.id.eq_ignore_ascii_case(urn))
    }

    /// Finds an attribute path; `None` when no schema defines it.
    pub fn find(&self, path: &AttrPath) -> Option<Found<'_>> {
        let schema = match &path.uri {
            Some(u) => Some(self.schema(u)?),
            None => None,
        };
        let (schema, attr) = match schema {
            Some(s) => (Some(s), s.attribute(&path.attr)),
            None => {
                if let Some(a) = common_attributes().iter().find(|a| a.name.eq_ignore_ascii_case(&path.attr)) {
                    (None, Some(a))
                } else if let Some(a) = self.core.attribute(&path.attr) {
                    (Some(&self.core), Some(a))
                } else {
                    // Leniency: an extension attribute named without its URN, when one
                    // extension alone has it (`department`, a custom attribute).
                    let mut hits = self.extensions.iter().filter_map(|s| s.attribute(&path.attr).map(|a| (s, a)));
                    match (hits.next(), hits.next()) {
                        (Some((s, a)), None) => (Some(s), Some(a)),
                        _ => (Some(&self.core), None),
                    }
                }
            }
        };
        let attr = match (attr, &path.uri) {
            (Some(a), _) => a,
            // `urn:...:core:2.0:User:id`: the common attributes under the core URN.
            (None, Some(u)) if u.eq_ignore_ascii_case(&self.core.id) => {
                common_attributes().iter().find(|a| a.name.eq_ignore_ascii_case(&path.attr))?
            }
            (None, _) => return None,
        };
        let schema = if common_attributes().iter().any(|c| std::ptr::eq(c, attr)) { None } else { schema };
        let sub = match &path.sub {
            Some(s) => Some(attr.sub(s)?),
            None => None,
        };
        Some(Found { schema, attr, sub })
    }

    /// The `/ResourceTypes/{name}` document.
    pub fn resource_type_json(&self, base_url: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": self.name,
            "name": self.name,
            "endpoint": self.endpoint,
            "description": format!("{}s of the directory", self.name),
            "schema": self.core.id,
            "schemaExtensions": self.extensions.iter().map(|e| json!({"schema": e.id, "required": false})).collect::<Vec<_>>(),
            "meta": {"resourceType": "ResourceType", "location": format!("{base_url}/ResourceTypes/{}", self.name)},
        })
    }
}

fn multi_complex(name: &str, description: &str, value: Attribute, extra: Vec<Attribute>) -> Attribute {
    let mut subs = vec![value];
    subs.extend(extra);
    Attribute::complex(name, description, subs).multi()
}

/// The sub-attributes `type`, `primary` and `display` of a multi-valued attribute.
fn value_parts(types: &[&str]) -> Vec<Attribute> {
    vec![
        Attribute::string("display", "A human-readable name, primarily used for display purposes."),
        Attribute::string("type", "A label indicating the attribute's function.").canonical(types),
        Attribute::new("primary", AttrType::Boolean, "Whether this is the primary value (at most one is)."),
    ]
}

/// The core User schema (RFC 7643 section 4.1): every attribute the directory keeps.
pub fn user_schema() -> Schema {
    let multi = |name: &str, description: &str, value: Attribute, types: &[&str]| {
        multi_complex(name, description, value, value_parts(types))
    };
    Schema {
        id: crate::types::USER_SCHEMA.into(),
        name: "User".into(),
        description: "User Account".into(),
        attributes: vec![
            Attribute::string("userName", "Unique identifier for the User; compared without case.").required().unique(),
            Attribute::complex(
                "name",
                "The components of the user's name.",
                vec![
                    Attribute::string(
                        "formatted",
                        "The full name, as displayed; when not set, made of givenName and familyName.",
                    ),
                    Attribute::string("familyName", "The family name."),
                    Attribute::string("givenName", "The given name."),
                    Attribute::string("middleName", "The middle name(s)."),
                    Attribute::string("honorificPrefix", "The honorific prefix(es), e.g. \"Ms.\"."),
                    Attribute::string("honorificSuffix", "The honorific suffix(es), e.g. \"III\"."),
                ],
            ),
            Attribute::string("displayName", "The name of the User, suitable for display."),
            Attribute::string("nickName", "The casual way to address the user."),
            Attribute::new("profileUrl", AttrType::Reference, "A URI of the user's online profile.")
                .references(&["external"]),
            Attribute::string("title", "The user's title, such as \"Vice President\"."),
            Attribute::string("userType", "The relationship to the organization, e.g. \"Employee\", \"Contractor\"."),
            Attribute::string("preferredLanguage", "The preferred language, as in HTTP Accept-Language (\"en-US\")."),
            Attribute::string("locale", "The default location for localizing (\"en-US\")."),
            Attribute::string("timezone", "The time zone, in the IANA database format (\"America/Los_Angeles\")."),
            Attribute::string(
                "password",
                "The user's sign-in password (for /login and SAML apps): at least 8 characters, kept only as an \
                 argon2id hash, never returned.",
            )
            .case_exact()
            .write_only(),
            Attribute::new(
                "active",
                AttrType::Boolean,
                "Whether the user may use their accounts (the directory always has it: true when not sent).",
            )
            .required(),
            multi(
                "emails",
                "E-mail addresses; the primary one (else the first of type work) is unique among users.",
                Attribute::string("value", "The e-mail address."),
                &["work", "home", "other"],
            ),
            multi(
                "phoneNumbers",
                "Phone numbers.",
                Attribute::string("value", "The phone number."),
                &["work", "home", "mobile", "fax", "pager", "other"],
            ),
            multi(
                "ims",
                "Instant messaging addresses.",
                Attribute::string("value", "The address."),
                &["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"],
            ),
            multi(
                "photos",
                "URLs of photos of the user.",
                Attribute::new("value", AttrType::Reference, "The photo's URL.").references(&["external"]),
                &["photo", "thumbnail"],
            ),
            multi_complex(
                "addresses",
                "Physical mailing addresses.",
                Attribute::string("formatted", "The full address, as printed."),
                vec![
                    Attribute::string("streetAddress", "The street address."),
                    Attribute::string("locality", "The city or locality."),
                    Attribute::string("region", "The state or region."),
                    Attribute::string("postalCode", "The postal code."),
                    Attribute::string("country", "The country, as an ISO 3166-1 alpha-2 code."),
                    Attribute::string("type", "A label indicating the address's function.")
                        .canonical(&["work", "home", "other"]),
                    Attribute::new("primary", AttrType::Boolean, "Whether this is the primary address."),
                ],
            ),
            multi_complex(
                "groups",
                "The groups (roles) the user belongs to; change them through the Group resource.",
                Attribute::string("value", "The group's id.").case_exact().read_only(),
                vec![
                    Attribute::new("$ref", AttrType::Reference, "The group's URI.")
                        .references(&["Group"])
                        .case_exact()
                        .read_only(),
                    Attribute::string("display", "The group's name.").read_only(),
                    Attribute::string("type", "Always direct.").canonical(&["direct"]).read_only(),
                ],
            )
            .read_only(),
            multi("entitlements", "Entitlements of the user.", Attribute::string("value", "The entitlement."), &[]),
            multi(
                "roles",
                "Roles of the user as the client names them (the directory's own roles are its Groups).",
                Attribute::string("value", "The role."),
                &[],
            ),
            multi(
                "x509Certificates",
                "Certificates of the user (base64 DER).",
                Attribute::new("value", AttrType::String, "The certificate.").case_exact(),
                &[],
            ),
        ],
    }
}

/// The enterprise User extension (RFC 7643 section 4.3).
pub fn enterprise_user_schema() -> Schema {
    Schema {
        id: crate::types::ENTERPRISE_USER_SCHEMA.into(),
        name: "EnterpriseUser".into(),
        description: "Enterprise User".into(),
        attributes: vec![
            Attribute::string("employeeNumber", "The employee number."),
            Attribute::string("costCenter", "The cost center."),
            Attribute::string("organization", "The organization."),
            Attribute::string("division", "The division."),
            Attribute::string("department", "The department."),
            Attribute::complex(
                "manager",
                "The user's manager, another user of this directory.",
                vec![
                    Attribute::string("value", "The manager's id.").case_exact(),
                    Attribute::new("$ref", AttrType::Reference, "The manager's URI (its last segment is the id).")
                        .references(&["User"])
                        .case_exact(),
                    Attribute::string("displayName", "The manager's display name.").read_only().on_request(),
                ],
            ),
        ],
    }
}

/// The core Group schema.
pub fn group_schema() -> Schema {
    Schema {
        id: crate::types::GROUP_SCHEMA.into(),
        name: "Group".into(),
        description: "Group: a role of the directory".into(),
        attributes: vec![
            Attribute::string("displayName", "The role's name; unique, compared without case.").required().unique(),
            multi_complex(
                "members",
                "The role's members (users).",
                Attribute::string("value", "The member's id.").case_exact().immutable(),
                vec![
                    Attribute::new("$ref", AttrType::Reference, "The member's URI.")
                        .references(&["User"])
                        .case_exact()
                        .immutable(),
                    Attribute::string("display", "The member's userName.").read_only().on_request(),
                    Attribute::string("type", "Always User.").canonical(&["User"]).immutable(),
                ],
            ),
        ],
    }
}

/// The schemas this server publishes, in `/Schemas` order.
pub fn all_schemas(custom: &Schema) -> Vec<Schema> {
    vec![user_schema(), enterprise_user_schema(), custom.clone(), group_schema()]
}

/// `/ServiceProviderConfig`.
pub fn service_provider_config(base_url: &str, max_results: u32, max_operations: u32, max_payload: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/provisioner/provisioner#inbound-scim-server",
        "patch": {"supported": true},
        "bulk": {"supported": max_operations > 0, "maxOperations": max_operations, "maxPayloadSize": max_payload},
        "filter": {"supported": true, "maxResults": max_results},
        "changePassword": {"supported": false},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "A token made with POST /api/v1/scim-clients, sent as Authorization: Bearer <token>",
            "specUri": "https://www.rfc-editor.org/rfc/rfc6750",
            "primary": true,
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base_url}/ServiceProviderConfig")},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::split_path;

    fn rs() -> ResourceSchema {
        ResourceSchema {
            name: "User".into(),
            endpoint: "/Users".into(),
            core: user_schema(),
            extensions: vec![enterprise_user_schema()],
        }
    }

    #[test]
    fn finds_paths_without_case() {
        let rs = rs();
        let f = rs.find(&split_path("USERNAME").unwrap()).unwrap();
        assert_eq!(f.attr.name, "userName");
        let f = rs.find(&split_path("name.GivenName").unwrap()).unwrap();
        assert_eq!(f.leaf().name, "givenName");
        let f = rs
            .find(&split_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value").unwrap())
            .unwrap();
        assert_eq!(f.extension_urn(&rs).as_deref(), Some(crate::types::ENTERPRISE_USER_SCHEMA));
        assert!(rs.find(&split_path("meta.lastModified").unwrap()).unwrap().schema.is_none());
        assert!(rs.find(&split_path("urn:ietf:params:scim:schemas:core:2.0:User:userName").unwrap()).is_some());
        assert_eq!(rs.find(&split_path("nickname").unwrap()).unwrap().attr.name, "nickName");
        assert_eq!(rs.find(&split_path("addresses.POSTALCODE").unwrap()).unwrap().leaf().name, "postalCode");
        assert!(rs.find(&split_path("name.secondName").unwrap()).is_none());
    }
}
