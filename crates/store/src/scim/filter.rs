//! The storage-neutral filter model of SCIM searches: what users and groups can be searched
//! and sorted by, the comparisons of RFC 7644, and a search's window. Nothing here knows SQL.

use directory::AttributeType;

/// The comparison operators of RFC 7644 filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A literal of a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Null,
    Bool(bool),
    Number(f64),
    Text(String),
}

/// What a user can be searched and sorted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserField {
    Id,
    Username,
    Email,
    GivenName,
    FamilyName,
    /// "given family", as the name's `formatted` value is made.
    Formatted,
    DisplayName,
    Title,
    Department,
    Phone,
    EmployeeNumber,
    ManagerId,
    /// `active`: the user is not suspended.
    Active,
    ExternalId,
    Created,
    LastModified,
    /// The id of a role the user belongs to (`groups.value`).
    GroupId,
    /// The name of a role the user belongs to (`groups.display`).
    GroupName,
    /// The SCIM client that created the user (for scopes; no SCIM attribute maps to it).
    Owner,
    /// The directory source the user was imported from (for scopes).
    SourceId,
    /// A single-valued attribute of the profile, by its directory name (`nick_name`; see
    /// `directory::profile::PROFILE_TEXTS`).
    ProfileText(&'static str),
    /// A sub-attribute of each value of a multi-valued profile attribute: `list` by its
    /// directory name (`phone_numbers`), `sub` as stored (`value`, `type`, `display`,
    /// `primary`, or an address part such as `postal_code`). A comparison holds when some
    /// value satisfies it.
    ProfileValue {
        list: &'static str,
        sub: &'static str,
    },
    /// A declared custom attribute.
    Custom {
        name: String,
        kind: AttributeType,
    },
}

/// What a group (role) can be searched and sorted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupField {
    Id,
    DisplayName,
    ExternalId,
    Created,
    LastModified,
    /// The id of a member (`members.value`).
    MemberId,
    /// The username of a member (`members.display`).
    MemberName,
    /// The SCIM client that created the role (for scopes; no SCIM attribute maps to it).
    Owner,
    /// Whether the role is marked pushable (for scopes).
    Pushable,
}

/// A storage-neutral filter over the fields `F`.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceFilter<F> {
    True,
    False,
    And(Box<Self>, Box<Self>),
    Or(Box<Self>, Box<Self>),
    Not(Box<Self>),
    Present(F),
    Compare(F, CompareOp, FilterValue),
    /// Some member / group (one and the same) satisfies the inner filter, whose fields are
    /// the relation's (`GroupId`/`GroupName`, `MemberId`/`MemberName`).
    Any(Box<Self>),
}

impl<F> ResourceFilter<F> {
    pub fn and(a: Self, b: Self) -> Self {
        Self::And(Box::new(a), Box::new(b))
    }
    pub fn or(a: Self, b: Self) -> Self {
        Self::Or(Box::new(a), Box::new(b))
    }
    #[allow(clippy::should_implement_trait)]
    pub fn not(a: Self) -> Self {
        Self::Not(Box::new(a))
    }
    /// How deeply the filter nests.
    pub fn depth(&self) -> usize {
        match self {
            Self::And(a, b) | Self::Or(a, b) => 1 + a.depth().max(b.depth()),
            Self::Not(a) | Self::Any(a) => 1 + a.depth(),
            _ => 1,
        }
    }
}

/// A search: filter, sort, and the window `[offset, offset + count)`.
#[derive(Debug, Clone)]
pub struct ScimQuery<F> {
    pub filter: ResourceFilter<F>,
    /// The field to sort by, and whether descending.
    pub sort: Option<(F, bool)>,
    pub offset: u64,
    /// 0 counts the matches only.
    pub count: u32,
}
