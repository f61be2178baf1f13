//! The inbound-SCIM half of the storage seam: SCIM clients (their tokens' hashes), users and
//! groups (roles) with the `externalId` a client gave them, and searches with a
//! storage-neutral filter ([`ResourceFilter`]) that each backend turns into parameterised SQL.
//!
//! The server builds a [`ResourceFilter`] from a parsed SCIM filter, mapping SCIM attribute
//! paths to [`UserField`]s / [`GroupField`]s; [`to_sql`] renders it as SQL text with every
//! value a bound parameter ([`Piece`]), never concatenated.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use directory::{Actor, AttributeType, Role, User};
use uuid::Uuid;

use crate::Result;

/// A client allowed to push users and groups over SCIM, with its token's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimClientRecord {
    pub id: Uuid,
    pub name: String,
    /// How the row is found: hex of HMAC-SHA256 of the token keyed by the server's secret key
    /// (rows made before that: hex of the first 16 bytes of SHA-256, until next used).
    pub lookup: String,
    /// argon2id PHC string: how the token is verified.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// What the client may see and change.
    pub scope: ScimScope,
    /// The client existed before scopes: it keeps `all` until an admin sets its scope.
    pub legacy_scope: bool,
}

/// The users a SCIM client may see and manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserScope {
    /// Those it created.
    Own,
    /// Those imported from this directory source (and those it created).
    Source(Uuid),
    All,
}

/// The roles (groups) a SCIM client may see and push members into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleScope {
    /// Those it created.
    Own,
    /// Those marked pushable (and those it created).
    Pushable,
    All,
}

/// What a SCIM client may see and change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScimScope {
    pub users: UserScope,
    pub roles: RoleScope,
    /// Reads only: every write is refused.
    pub read_only: bool,
}

impl ScimScope {
    /// What a new client gets: what it creates, read and write.
    pub const NEW: Self = Self { users: UserScope::Own, roles: RoleScope::Own, read_only: false };
    /// Everything (the clients that existed before scopes).
    pub const ALL: Self = Self { users: UserScope::All, roles: RoleScope::All, read_only: false };

    /// The stored form: `(users_scope, users_source_id, roles_scope)`.
    pub fn columns(&self) -> (&'static str, Option<Uuid>, &'static str) {
        let (users, source) = match self.users {
            UserScope::Own => ("own", None),
            UserScope::Source(s) => ("source", Some(s)),
            UserScope::All => ("all", None),
        };
        let roles = match self.roles {
            RoleScope::Own => "own",
            RoleScope::Pushable => "pushable",
            RoleScope::All => "all",
        };
        (users, source, roles)
    }

    /// From the stored form; `None` when it is not one [`Self::columns`] makes.
    pub fn from_columns(users: &str, source: Option<Uuid>, roles: &str, read_only: bool) -> Option<Self> {
        let users = match (users, source) {
            ("own", _) => UserScope::Own,
            ("source", Some(s)) => UserScope::Source(s),
            ("all", _) => UserScope::All,
            _ => return None,
        };
        let roles = match roles {
            "own" => RoleScope::Own,
            "pushable" => RoleScope::Pushable,
            "all" => RoleScope::All,
            _ => return None,
        };
        Some(Self { users, roles, read_only })
    }

    /// The users in scope of client `client`, as a filter.
    pub fn user_filter(&self, client: Uuid) -> ResourceFilter<UserField> {
        let own = || ResourceFilter::Compare(UserField::Owner, CompareOp::Eq, FilterValue::Text(client.to_string()));
        match self.users {
            UserScope::All => ResourceFilter::True,
            UserScope::Own => own(),
            UserScope::Source(s) => ResourceFilter::or(
                own(),
                ResourceFilter::Compare(UserField::SourceId, CompareOp::Eq, FilterValue::Text(s.to_string())),
            ),
        }
    }

    /// The roles in scope of client `client`, as a filter.
    pub fn group_filter(&self, client: Uuid) -> ResourceFilter<GroupField> {
        let own = || ResourceFilter::Compare(GroupField::Owner, CompareOp::Eq, FilterValue::Text(client.to_string()));
        match self.roles {
            RoleScope::All => ResourceFilter::True,
            RoleScope::Own => own(),
            RoleScope::Pushable => ResourceFilter::or(
                own(),
                ResourceFilter::Compare(GroupField::Pushable, CompareOp::Eq, FilterValue::Bool(true)),
            ),
        }
    }
}

/// A user with the `externalId` a SCIM client gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScimUser {
    pub user: User,
    pub external_id: Option<String>,
    /// The SCIM client that created the user (set when created; never changed).
    pub owner: Option<Uuid>,
}

/// A role (a SCIM Group) with the `externalId` a SCIM client gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScimGroup {
    pub role: Role,
    pub external_id: Option<String>,
    /// The SCIM client that created the role (set when created; never changed).
    pub owner: Option<Uuid>,
}

/// A member of a group: the user's id and username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: Uuid,
    pub username: String,
}

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

/// The deepest filter rendered as SQL.
pub const MAX_FILTER_DEPTH: usize = 64;

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

/// Why a filter cannot be rendered (an operator or value that does not fit the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterSqlError(pub String);

/// Which SQL dialect to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A piece of a rendered query: SQL text written by this module, or a value to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Sql(String),
    Text(String),
    Float(f64),
    Bool(bool),
    Time(DateTime<Utc>),
}

/// How a field's values are stored.
enum Kind {
    /// Text, compared without case unless `case_exact`.
    Text { case_exact: bool },
    /// A timestamp column.
    Time,
    /// `users.status`.
    Active,
    /// A custom attribute inside `users.attributes` (JSON).
    Json(String, AttributeType),
    /// A boolean column.
    Flag,
}

/// A relation searched with `EXISTS`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relation {
    UserGroups,
    GroupMembers,
    UserSources,
}

struct FieldSql {
    expr: String,
    kind: Kind,
    relation: Option<Relation>,
}

/// The SQL of a field (every name here comes from this code, never from input).
pub trait SqlField: Clone {
    #[doc(hidden)]
    fn sql(&self, d: Dialect) -> FieldSqlPub;
}

/// The opaque SQL description of a field.
pub struct FieldSqlPub(FieldSql);

fn text(expr: &str, case_exact: bool) -> FieldSqlPub {
    FieldSqlPub(FieldSql { expr: expr.to_owned(), kind: Kind::Text { case_exact }, relation: None })
}

fn time(expr: &str) -> FieldSqlPub {
    FieldSqlPub(FieldSql { expr: expr.to_owned(), kind: Kind::Time, relation: None })
}

fn id_expr(d: Dialect, col: &str) -> String {
    match d {
        Dialect::Sqlite => col.to_owned(),
        Dialect::Postgres => format!("{col}::text"),
    }
}

impl SqlField for UserField {
    fn sql(&self, d: Dialect) -> FieldSqlPub {
        match self {
            Self::Id => text(&id_expr(d, "users.id"), true),
            Self::Username => text("users.username", false),
            Self::Email => text("users.email", false),
            Self::GivenName => text("users.first_name", false),
            Self::FamilyName => text("users.last_name", false),
            Self::Formatted => {
                text("TRIM(COALESCE(users.first_name, '') || ' ' || COALESCE(users.last_name, ''))", false)
            }
            Self::DisplayName => text("users.display_name", false),
            Self::Title => text("users.title", false),
            Self::Department => text("users.department", false),
            Self::Phone => text("users.phone", false),
            Self::EmployeeNumber => text("users.employee_number", false),
            Self::ManagerId => text(&id_expr(d, "users.manager_id"), true),
            Self::Active => FieldSqlPub(FieldSql { expr: "users.status".into(), kind: Kind::Active, relation: None }),
            Self::ExternalId => text("users.scim_external_id", true),
            Self::Created => time("users.created_at"),
            Self::LastModified => time("users.updated_at"),
            Self::GroupId => FieldSqlPub(FieldSql {
                expr: id_expr(d, "rel.role_id"),
                kind: Kind::Text { case_exact: true },
                relation: Some(Relation::UserGroups),
            }),
            Self::GroupName => FieldSqlPub(FieldSql {
                expr: "(SELECT r.name FROM roles r WHERE r.id = rel.role_id)".into(),
                kind: Kind::Text { case_exact: false },
                relation: Some(Relation::UserGroups),
            }),
            Self::Owner => text(&id_expr(d, "users.scim_client_id"), true),
            Self::SourceId => FieldSqlPub(FieldSql {
                expr: id_expr(d, "rel.source_id"),
                kind: Kind::Text { case_exact: true },
                relation: Some(Relation::UserSources),
            }),
            Self::Custom { name, kind } => {
                FieldSqlPub(FieldSql { expr: String::new(), kind: Kind::Json(name.clone(), *kind), relation: None })
            }
        }
    }
}

impl SqlField for GroupField {
    fn sql(&self, d: Dialect) -> FieldSqlPub {
        match self {
            Self::Id => text(&id_expr(d, "roles.id"), true),
            Self::DisplayName => text("roles.name", false),
            Self::ExternalId => text("roles.scim_external_id", true),
            Self::Created => time("roles.created_at"),
            Self::LastModified => time("roles.updated_at"),
            Self::MemberId => FieldSqlPub(FieldSql {
                expr: id_expr(d, "rel.user_id"),
                kind: Kind::Text { case_exact: true },
                relation: Some(Relation::GroupMembers),
            }),
            Self::MemberName => FieldSqlPub(FieldSql {
                expr: "(SELECT u.username FROM users u WHERE u.id = rel.user_id)".into(),
                kind: Kind::Text { case_exact: false },
                relation: Some(Relation::GroupMembers),
            }),
            Self::Owner => text(&id_expr(d, "roles.scim_client_id"), true),
            Self::Pushable => FieldSqlPub(FieldSql { expr: "roles.pushable".into(), kind: Kind::Flag, relation: None }),
        }
    }
}

fn relation_from(rel: Relation) -> &'static str {
    match rel {
        Relation::UserGroups => "SELECT 1 FROM role_users rel WHERE rel.user_id = users.id",
        Relation::GroupMembers => "SELECT 1 FROM role_users rel WHERE rel.role_id = roles.id",
        Relation::UserSources => "SELECT 1 FROM source_links rel WHERE rel.user_id = users.id",
    }
}

/// The times as SQLite stores them (RFC 3339, microseconds, `Z`).
pub(crate) fn sqlite_ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

struct Out {
    d: Dialect,
    pieces: Vec<Piece>,
}

impl Out {
    fn sql(&mut self, s: impl Into<String>) -> &mut Self {
        self.pieces.push(Piece::Sql(s.into()));
        self
    }
    fn bind(&mut self, p: Piece) -> &mut Self {
        self.pieces.push(p);
        self
    }
    fn fals(&self) -> &'static str {
        match self.d {
            Dialect::Sqlite => "0",
            Dialect::Postgres => "FALSE",
        }
    }
}

fn bad(msg: impl Into<String>) -> FilterSqlError {
    FilterSqlError(msg.into())
}

fn op_sql(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => "=",
        CompareOp::Ne => "<>",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => "=",
    }
}

/// `expr op value` for text; `expr` is already lower-cased when the field ignores case.
fn text_cmp(o: &mut Out, expr: &[Piece], op: CompareOp, value: String) {
    let d = o.d;
    let e = |o: &mut Out| {
        o.pieces.extend(expr.iter().cloned());
    };
    match op {
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew if value.is_empty() => {
            o.sql("(");
            e(o);
            o.sql(") IS NOT NULL");
        }
        CompareOp::Co => {
            o.sql(if d == Dialect::Sqlite { "instr(" } else { "strpos(" });
            e(o);
            o.sql(", ").bind(Piece::Text(value)).sql(") > 0");
        }
        CompareOp::Sw | CompareOp::Ew => {
            o.sql(match (d, op) {
                (Dialect::Sqlite, CompareOp::Sw) => "substr(",
                (Dialect::Sqlite, _) => "substr(",
                (Dialect::Postgres, CompareOp::Sw) => "left(",
                (Dialect::Postgres, _) => "right(",
            });
            e(o);
            o.sql(match (d, op) {
                (Dialect::Sqlite, CompareOp::Sw) => ", 1, length(",
                (Dialect::Sqlite, _) => ", -length(",
                _ => ", length(",
            });
            o.bind(Piece::Text(value.clone())).sql(")) = ").bind(Piece::Text(value));
        }
        CompareOp::Eq | CompareOp::Ne => {
            e(o);
            o.sql(format!(" {} ", op_sql(op))).bind(Piece::Text(value));
        }
        _ => {
            let collate = if d == Dialect::Postgres { " COLLATE \"C\"" } else { "" };
            o.sql("(");
            e(o);
            o.sql(format!("){collate} {} ", op_sql(op))).bind(Piece::Text(value));
        }
    }
}

fn json_path(d: Dialect, name: &str) -> String {
    match d {
        Dialect::Sqlite => format!("$.{name}"),
        Dialect::Postgres => name.to_owned(),
    }
}

/// One comparison (never NULL: wrapped in COALESCE by the caller).
fn leaf(o: &mut Out, f: &FieldSql, op: CompareOp, value: &FilterValue) -> Result<(), FilterSqlError> {
    let d = o.d;
    match &f.kind {
        Kind::Text { case_exact } => {
            let expr = [Piece::Sql(if *case_exact { f.expr.clone() } else { format!("lower({})", f.expr) })];
            match value {
                FilterValue::Null => match op {
                    CompareOp::Eq => {
                        o.sql(format!("({}) IS NULL", f.expr));
                    }
                    CompareOp::Ne => {
                        o.sql(format!("({}) IS NOT NULL", f.expr));
                    }
                    _ => return Err(bad("null can only be compared with eq or ne")),
                },
                FilterValue::Text(s) => {
                    let v = if *case_exact { s.clone() } else { s.to_lowercase() };
                    text_cmp(o, &expr, op, v);
                }
                FilterValue::Bool(_) | FilterValue::Number(_) => {
                    return Err(bad("this attribute is a string: compare it with a quoted string"))
                }
            }
        }
        Kind::Time => {
            let t = match value {
                FilterValue::Text(s) => DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| bad(format!("{s:?} is not a dateTime (e.g. \"2011-05-13T04:42:34Z\")")))?,
                FilterValue::Null => {
                    o.sql(if op == CompareOp::Eq { "1 = 0" } else { "1 = 1" });
                    return Ok(());
                }
                _ => return Err(bad("this attribute is a dateTime: compare it with a quoted date and time")),
            };
            if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                return Err(bad("co, sw and ew do not apply to dateTime attributes"));
            }
            o.sql(format!("{} {} ", f.expr, op_sql(op)));
            match d {
                Dialect::Sqlite => o.bind(Piece::Text(sqlite_ts(&t))),
                Dialect::Postgres => o.bind(Piece::Time(t)),
            };
        }
        Kind::Active => {
            let FilterValue::Bool(b) = value else {
                return Err(bad("active is a boolean: compare it with true or false"));
            };
            let want_active = match op {
                CompareOp::Eq => *b,
                CompareOp::Ne => !*b,
                _ => return Err(bad("booleans can only be compared with eq or ne")),
            };
            o.sql(if want_active { "users.status = 'active'" } else { "users.status <> 'active'" });
        }
        Kind::Json(name, kind) => json_leaf(o, name, *kind, op, value)?,
        Kind::Flag => {
            let FilterValue::Bool(b) = value else {
                return Err(bad("this attribute is a boolean: compare it with true or false"));
            };
            let want = match op {
                CompareOp::Eq => *b,
                CompareOp::Ne => !*b,
                _ => return Err(bad("booleans can only be compared with eq or ne")),
            };
            let literal = match (d, want) {
                (Dialect::Sqlite, true) => "1",
                (Dialect::Sqlite, false) => "0",
                (Dialect::Postgres, true) => "TRUE",
                (Dialect::Postgres, false) => "FALSE",
            };
            o.sql(format!("{} = {literal}", f.expr));
        }
    }
    Ok(())
}

fn json_leaf(
    o: &mut Out,
    name: &str,
    kind: AttributeType,
    op: CompareOp,
    value: &FilterValue,
) -> Result<(), FilterSqlError> {
    let d = o.d;
    let path = json_path(d, name);
    if *value == FilterValue::Null {
        let neg = match op {
            CompareOp::Eq => true,
            CompareOp::Ne => false,
            _ => return Err(bad("null can only be compared with eq or ne")),
        };
        if neg {
            o.sql("NOT ");
        }
        return json_present(o, name, kind);
    }
    match kind {
        AttributeType::String | AttributeType::Date => {
            let FilterValue::Text(s) = value else {
                return Err(bad(format!("{name} is a string: compare it with a quoted string")));
            };
            let (pre, post, v) = match (d, kind) {
                (Dialect::Sqlite, AttributeType::Date) => ("json_extract(users.attributes, ", ")", s.clone()),
                (Dialect::Postgres, AttributeType::Date) => ("(users.attributes ->> ", ")", s.clone()),
                (Dialect::Sqlite, _) => ("lower(json_extract(users.attributes, ", "))", s.to_lowercase()),
                (Dialect::Postgres, _) => ("lower(users.attributes ->> ", ")", s.to_lowercase()),
            };
            let expr = [Piece::Sql(pre.into()), Piece::Text(path), Piece::Sql(post.into())];
            text_cmp(o, &expr, op, v);
        }
        AttributeType::Number => {
            let FilterValue::Number(n) = value else {
                return Err(bad(format!("{name} is a number: compare it with a number")));
            };
            if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                return Err(bad("co, sw and ew do not apply to numbers"));
            }
            match d {
                Dialect::Sqlite => o.sql("json_extract(users.attributes, "),
                Dialect::Postgres => o.sql("(users.attributes ->> "),
            };
            o.bind(Piece::Text(path));
            match d {
                Dialect::Sqlite => o.sql(format!(") {} ", op_sql(op))),
                Dialect::Postgres => o.sql(format!(")::float8 {} ", op_sql(op))),
            };
            o.bind(Piece::Float(*n));
        }
        AttributeType::Boolean => {
            let FilterValue::Bool(b) = value else {
                return Err(bad(format!("{name} is a boolean: compare it with true or false")));
            };
            if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                return Err(bad("booleans can only be compared with eq or ne"));
            }
            match d {
                Dialect::Sqlite => o.sql("json_extract(users.attributes, "),
                Dialect::Postgres => o.sql("(users.attributes ->> "),
            };
            o.bind(Piece::Text(path));
            match d {
                Dialect::Sqlite => o.sql(format!(") {} ", op_sql(op))).bind(Piece::Float(if *b { 1.0 } else { 0.0 })),
                Dialect::Postgres => o.sql(format!(")::boolean {} ", op_sql(op))).bind(Piece::Bool(*b)),
            };
        }
        AttributeType::StringList => {
            let FilterValue::Text(s) = value else {
                return Err(bad(format!("{name} holds strings: compare it with a quoted string")));
            };
            if op == CompareOp::Ne {
                o.sql("NOT ");
                return json_leaf(o, name, kind, CompareOp::Eq, value);
            }
            match d {
                Dialect::Sqlite => o.sql("EXISTS (SELECT 1 FROM json_each(users.attributes, "),
                Dialect::Postgres => {
                    o.sql("EXISTS (SELECT 1 FROM jsonb_array_elements_text(COALESCE(users.attributes -> ")
                }
            };
            o.bind(Piece::Text(path));
            match d {
                Dialect::Sqlite => o.sql(") je WHERE "),
                Dialect::Postgres => o.sql(", '[]'::jsonb)) AS je(value) WHERE "),
            };
            text_cmp(o, &[Piece::Sql("lower(je.value)".into())], op, s.to_lowercase());
            o.sql(")");
        }
    }
    Ok(())
}

fn json_present(o: &mut Out, name: &str, kind: AttributeType) -> Result<(), FilterSqlError> {
    let path = json_path(o.d, name);
    match (o.d, kind) {
        (Dialect::Sqlite, AttributeType::StringList) => {
            o.sql("COALESCE(json_array_length(users.attributes, ").bind(Piece::Text(path)).sql("), 0) > 0")
        }
        (Dialect::Postgres, AttributeType::StringList) => {
            o.sql("COALESCE(jsonb_array_length(users.attributes -> ").bind(Piece::Text(path)).sql("), 0) > 0")
        }
        (Dialect::Sqlite, AttributeType::String) => {
            o.sql("COALESCE(json_extract(users.attributes, ").bind(Piece::Text(path)).sql("), '') <> ''")
        }
        (Dialect::Postgres, AttributeType::String) => {
            o.sql("COALESCE(users.attributes ->> ").bind(Piece::Text(path)).sql(", '') <> ''")
        }
        (Dialect::Sqlite, _) => o.sql("json_extract(users.attributes, ").bind(Piece::Text(path)).sql(") IS NOT NULL"),
        (Dialect::Postgres, _) => o.sql("(users.attributes ->> ").bind(Piece::Text(path)).sql(") IS NOT NULL"),
    };
    Ok(())
}

fn present(o: &mut Out, f: &FieldSql) -> Result<(), FilterSqlError> {
    match &f.kind {
        Kind::Text { .. } => {
            o.sql(format!("(({0}) IS NOT NULL AND ({0}) <> '')", f.expr));
        }
        Kind::Time | Kind::Active | Kind::Flag => {
            o.sql("1 = 1");
        }
        Kind::Json(name, kind) => json_present(o, name, *kind)?,
    }
    Ok(())
}

fn render<F: SqlField>(
    o: &mut Out,
    f: &ResourceFilter<F>,
    inside: Option<Relation>,
    depth: usize,
) -> Result<(), FilterSqlError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(bad(format!("the filter nests deeper than {MAX_FILTER_DEPTH} levels")));
    }
    match f {
        ResourceFilter::True => {
            o.sql("1 = 1");
        }
        ResourceFilter::False => {
            o.sql("1 = 0");
        }
        ResourceFilter::And(a, b) | ResourceFilter::Or(a, b) => {
            o.sql("(");
            render(o, a, inside, depth + 1)?;
            o.sql(if matches!(f, ResourceFilter::And(..)) { " AND " } else { " OR " });
            render(o, b, inside, depth + 1)?;
            o.sql(")");
        }
        ResourceFilter::Not(a) => {
            o.sql("NOT (");
            render(o, a, inside, depth + 1)?;
            o.sql(")");
        }
        ResourceFilter::Any(inner) => {
            let rel = relation_of(inner).ok_or_else(|| bad("a value filter must name sub-attributes"))?;
            if inside.is_some() {
                return Err(bad("value filters cannot nest"));
            }
            o.sql(format!("EXISTS ({} AND (", relation_from(rel)));
            render(o, inner, Some(rel), depth + 1)?;
            o.sql("))");
        }
        ResourceFilter::Present(field) | ResourceFilter::Compare(field, ..) => {
            let FieldSqlPub(fs) = field.sql(o.d);
            let wrap = match (fs.relation, inside) {
                (Some(rel), None) => {
                    o.sql(format!("EXISTS ({} AND ", relation_from(rel)));
                    true
                }
                (Some(rel), Some(i)) if rel != i => return Err(bad("a value filter mixes attributes")),
                (None, Some(_)) => return Err(bad("a value filter names an attribute of another resource")),
                _ => false,
            };
            let fals = o.fals();
            o.sql("COALESCE((");
            match f {
                ResourceFilter::Present(_) => present(o, &fs)?,
                ResourceFilter::Compare(_, CompareOp::Ne, v) if *v != FilterValue::Null => {
                    // Not equal: also true when the attribute has no value.
                    o.sql("NOT COALESCE((");
                    leaf(o, &fs, CompareOp::Eq, v)?;
                    o.sql(format!("), {fals})"));
                }
                ResourceFilter::Compare(_, op, v) => leaf(o, &fs, *op, v)?,
                _ => {}
            }
            o.sql(format!("), {fals})"));
            if wrap {
                o.sql(")");
            }
        }
    }
    Ok(())
}

fn relation_of<F: SqlField>(f: &ResourceFilter<F>) -> Option<Relation> {
    match f {
        ResourceFilter::And(a, b) | ResourceFilter::Or(a, b) => relation_of(a).or_else(|| relation_of(b)),
        ResourceFilter::Not(a) | ResourceFilter::Any(a) => relation_of(a),
        ResourceFilter::Present(x) | ResourceFilter::Compare(x, ..) => x.sql(Dialect::Sqlite).0.relation,
        ResourceFilter::True | ResourceFilter::False => None,
    }
}

/// The `WHERE` condition of a filter, as SQL text and values to bind.
pub fn to_sql<F: SqlField>(filter: &ResourceFilter<F>, d: Dialect) -> Result<Vec<Piece>, FilterSqlError> {
    let mut o = Out { d, pieces: vec![] };
    render(&mut o, filter, None, 0)?;
    Ok(o.pieces)
}

/// The `ORDER BY` list of a sort (missing values last when ascending, first when descending,
/// as RFC 7644 section 3.4.2.3 says), ending with the id so that pages are stable.
pub fn order_sql<F: SqlField>(sort: Option<&(F, bool)>, d: Dialect, id: &str) -> Result<Vec<Piece>, FilterSqlError> {
    let Some((field, desc)) = sort else {
        return Ok(vec![Piece::Sql(id.to_owned())]);
    };
    let FieldSqlPub(fs) = field.sql(d);
    if fs.relation.is_some() {
        return Err(bad("cannot sort by a multi-valued attribute"));
    }
    let dir = if *desc { "DESC" } else { "ASC" };
    let mut out = vec![];
    let expr = match &fs.kind {
        Kind::Text { case_exact: true } => fs.expr.clone(),
        Kind::Text { case_exact: false } => format!("lower({})", fs.expr),
        Kind::Time | Kind::Active | Kind::Flag => fs.expr.clone(),
        Kind::Json(name, kind) => {
            let path = json_path(d, name);
            let (pre, post) = match (d, kind) {
                (Dialect::Sqlite, _) => ("json_extract(users.attributes, ", ")"),
                (Dialect::Postgres, AttributeType::Number) => ("((users.attributes ->> ", ")::float8)"),
                (Dialect::Postgres, _) => ("(users.attributes ->> ", ")"),
            };
            out.push(Piece::Sql(format!("({pre}")));
            out.push(Piece::Text(path.clone()));
            out.push(Piece::Sql(format!("{post}) IS NULL {dir}, {pre}")));
            out.push(Piece::Text(path));
            out.push(Piece::Sql(format!("{post} {dir}, {id}")));
            return Ok(out);
        }
    };
    let collate = if d == Dialect::Postgres && matches!(fs.kind, Kind::Text { .. }) { " COLLATE \"C\"" } else { "" };
    out.push(Piece::Sql(format!("({expr}) IS NULL {dir}, ({expr}){collate} {dir}, {id}")));
    Ok(out)
}

#[async_trait]
pub trait ScimStore: Send + Sync + 'static {
    // Clients
    async fn create_scim_client(&self, client: &ScimClientRecord, actor: &Actor) -> Result<()>;
    /// Every client that is not revoked, oldest first.
    async fn list_scim_clients(&self) -> Result<Vec<ScimClientRecord>>;
    async fn find_scim_client_by_lookup(&self, lookup: &str) -> Result<Option<ScimClientRecord>>;
    /// Revokes a client's token; `NotFound` when there is no such (unrevoked) client.
    async fn revoke_scim_client(&self, id: Uuid, actor: &Actor) -> Result<()>;
    /// Sets a client's scope (which clears `legacy_scope`), with an audit entry; `NotFound`
    /// when there is no such (unrevoked) client.
    async fn set_scim_client_scope(&self, id: Uuid, scope: &ScimScope, actor: &Actor) -> Result<ScimClientRecord>;
    /// Replaces the lookup key a client's row is found by (a token re-keyed on use).
    async fn rekey_scim_client(&self, id: Uuid, lookup: &str) -> Result<()>;

    // Users
    /// A user that is not deleted.
    async fn scim_user(&self, id: Uuid) -> Result<Option<ScimUser>>;
    /// The number of users matching, and the requested window of them.
    async fn scim_users(&self, query: &ScimQuery<UserField>) -> Result<(u64, Vec<ScimUser>)>;
    /// Creates (`expected_version` `None`) or replaces a user with its `externalId`, with its
    /// change and audit entry.
    async fn scim_save_user(&self, user: &ScimUser, expected_version: Option<i64>, actor: &Actor) -> Result<()>;

    // Groups
    async fn scim_group(&self, id: Uuid) -> Result<Option<ScimGroup>>;
    async fn scim_groups(&self, query: &ScimQuery<GroupField>) -> Result<(u64, Vec<ScimGroup>)>;
    /// The members of a role, by username.
    async fn scim_members(&self, role: Uuid) -> Result<Vec<Member>>;
    /// Creates (`expected_version` `None`) or replaces a role with its `externalId`, and,
    /// when `members` is given, makes them its members, all in one transaction (a change and
    /// an audit entry for each member who joins or leaves). `MissingReference` when a member
    /// is not a user.
    async fn scim_save_group(
        &self,
        group: &ScimGroup,
        members: Option<&[Uuid]>,
        expected_version: Option<i64>,
        actor: &Actor,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(f: &ResourceFilter<UserField>, d: Dialect) -> (String, Vec<Piece>) {
        let pieces = to_sql(f, d).unwrap();
        let mut s = String::new();
        let mut binds = vec![];
        for p in pieces {
            match p {
                Piece::Sql(t) => s.push_str(&t),
                other => {
                    s.push('?');
                    binds.push(other);
                }
            }
        }
        (s, binds)
    }

    #[test]
    fn values_are_bound_never_written_into_the_sql() {
        let evil = "x'); DROP TABLE users; --";
        let f = ResourceFilter::or(
            ResourceFilter::Compare(UserField::Username, CompareOp::Co, FilterValue::Text(evil.into())),
            ResourceFilter::Compare(
                UserField::Custom { name: "tags".into(), kind: AttributeType::StringList },
                CompareOp::Eq,
                FilterValue::Text(evil.into()),
            ),
        );
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            let (s, binds) = sql(&f, d);
            assert!(!s.contains("DROP"), "{s}");
            assert!(binds.contains(&Piece::Text(evil.to_lowercase())), "{binds:?}");
        }
    }

    #[test]
    fn type_mismatches_are_refused() {
        let f = ResourceFilter::Compare(UserField::Active, CompareOp::Gt, FilterValue::Bool(true));
        assert!(to_sql(&f, Dialect::Sqlite).is_err());
        let f = ResourceFilter::Compare(UserField::Created, CompareOp::Gt, FilterValue::Text("yesterday".into()));
        assert!(to_sql(&f, Dialect::Postgres).is_err());
        let f = ResourceFilter::Compare(UserField::Username, CompareOp::Eq, FilterValue::Number(1.0));
        assert!(to_sql(&f, Dialect::Postgres).is_err());
    }

    #[test]
    fn depth_is_limited() {
        let mut f = ResourceFilter::Present(UserField::Title);
        for _ in 0..100 {
            f = ResourceFilter::not(f);
        }
        assert!(to_sql(&f, Dialect::Sqlite).is_err());
    }
}
