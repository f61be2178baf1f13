//! A SCIM search's filter and sort as SQL, rendered once for both backends: every value a
//! bound parameter, never concatenated; every name from this code, never from input. What the
//! backends spell differently (JSON access, substring tests, id columns as text, code-point
//! order) is asked of [`FilterDialect`], implemented in `crate::sqlite` and `crate::postgres`.

use chrono::{DateTime, Utc};
use directory::AttributeType;

use super::{Dialect, Query};
use crate::scim::{CompareOp, FilterValue, GroupField, ResourceFilter, UserField};

/// The deepest filter rendered as SQL.
pub const MAX_FILTER_DEPTH: usize = 64;

/// Why a filter cannot be rendered (an operator or value that does not fit the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterSqlError(pub String);

/// What differs between the backends in the SQL of a filter: implemented for `sqlx::Sqlite`
/// (in `crate::sqlite`) and `sqlx::Postgres` (in `crate::postgres`); everything else is
/// rendered once, here.
pub trait FilterDialect: Dialect {
    /// What makes a text comparison or sort go by code point: SQLite's default collation
    /// (BINARY) does, PostgreSQL's default collation does not (` COLLATE "C"`).
    const BY_CODE_POINT: &'static str;
    /// An id column as text, to compare with a filter's text (PostgreSQL stores `uuid`).
    fn id_text(col: &str) -> String;
    /// What goes before and after a text expression to test that it contains
    /// ([`CompareOp::Co`]), starts with ([`CompareOp::Sw`]) or ends with ([`CompareOp::Ew`]) a
    /// value, which is not empty; every `?` after it stands for that value.
    fn text_match(op: CompareOp) -> (&'static str, &'static str);
    /// The custom attribute `name` of `users.attributes`, read as `read` says.
    fn json(q: &mut Query, name: &str, read: JsonRead);
    /// A text member of the profile document (`users.profile`); `member` comes from this code.
    fn profile_text(member: &str) -> String;
    /// A `FROM` item over the array `member` of the profile document, each element as
    /// `rel.value` (no row when missing).
    fn profile_elements(member: &str) -> String;
    /// A text member of an element `rel.value` of [`FilterDialect::profile_elements`].
    fn element_text(member: &str) -> String;
    /// A boolean member of an element `rel.value`, false when missing.
    fn element_flag(member: &str) -> String;
}

/// How [`FilterDialect::json`] reads a custom attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonRead {
    /// Its value as text (SQL NULL when missing or JSON null).
    Text,
    /// Its value as a number.
    Number,
    /// Its value as a boolean.
    Bool,
    /// The length of the array it holds.
    Length,
    /// A `FROM` item named `je` whose column `value` is each element of the array it holds,
    /// as text (no row when missing).
    Elements,
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
    /// The values of a multi-valued profile attribute.
    Profile(&'static str),
}

struct FieldSql {
    expr: String,
    kind: Kind,
    relation: Option<Relation>,
}

/// The SQL of a field (every name here comes from this code, never from input).
pub trait SqlField: Clone {
    #[doc(hidden)]
    fn sql<D: FilterDialect>(&self) -> FieldSqlPub;
}

/// The opaque SQL description of a field.
pub struct FieldSqlPub(FieldSql);

fn text(expr: &str, case_exact: bool) -> FieldSqlPub {
    FieldSqlPub(FieldSql { expr: expr.to_owned(), kind: Kind::Text { case_exact }, relation: None })
}

fn time(expr: &str) -> FieldSqlPub {
    FieldSqlPub(FieldSql { expr: expr.to_owned(), kind: Kind::Time, relation: None })
}

impl SqlField for UserField {
    fn sql<D: FilterDialect>(&self) -> FieldSqlPub {
        match self {
            Self::Id => text(&D::id_text("users.id"), true),
            Self::Username => text("users.username", false),
            Self::Email => text("users.email", false),
            Self::GivenName => text("users.first_name", false),
            Self::FamilyName => text("users.last_name", false),
            Self::Formatted => text(
                &format!(
                    "COALESCE({}, TRIM(COALESCE(users.first_name, '') || ' ' || COALESCE(users.last_name, '')))",
                    D::profile_text("formatted_name")
                ),
                false,
            ),
            Self::DisplayName => text("users.display_name", false),
            Self::Title => text("users.title", false),
            Self::Department => text("users.department", false),
            Self::Phone => text("users.phone", false),
            Self::EmployeeNumber => text("users.employee_number", false),
            Self::ManagerId => text(&D::id_text("users.manager_id"), true),
            Self::Active => FieldSqlPub(FieldSql { expr: "users.status".into(), kind: Kind::Active, relation: None }),
            Self::ExternalId => text("users.scim_external_id", true),
            Self::Created => time("users.created_at"),
            Self::LastModified => time("users.updated_at"),
            Self::GroupId => FieldSqlPub(FieldSql {
                expr: D::id_text("rel.role_id"),
                kind: Kind::Text { case_exact: true },
                relation: Some(Relation::UserGroups),
            }),
            Self::GroupName => FieldSqlPub(FieldSql {
                expr: "(SELECT r.name FROM roles r WHERE r.id = rel.role_id)".into(),
                kind: Kind::Text { case_exact: false },
                relation: Some(Relation::UserGroups),
            }),
            Self::Owner => text(&D::id_text("users.scim_client_id"), true),
            Self::SourceId => FieldSqlPub(FieldSql {
                expr: D::id_text("rel.source_id"),
                kind: Kind::Text { case_exact: true },
                relation: Some(Relation::UserSources),
            }),
            Self::ProfileText(member) => text(&D::profile_text(member), false),
            Self::ProfileValue { list, sub: "primary" } => FieldSqlPub(FieldSql {
                expr: D::element_flag("primary"),
                kind: Kind::Flag,
                relation: Some(Relation::Profile(list)),
            }),
            Self::ProfileValue { list, sub } => FieldSqlPub(FieldSql {
                expr: D::element_text(sub),
                kind: Kind::Text { case_exact: *list == "x509_certificates" && *sub == "value" },
                relation: Some(Relation::Profile(list)),
            }),
            Self::Custom { name, kind } => {
                FieldSqlPub(FieldSql { expr: String::new(), kind: Kind::Json(name.clone(), *kind), relation: None })
            }
        }
    }
}

impl SqlField for GroupField {
    fn sql<D: FilterDialect>(&self) -> FieldSqlPub {
        match self {
            Self::Id => text(&D::id_text("roles.id"), true),
            Self::DisplayName => text("roles.name", false),
            Self::ExternalId => text("roles.scim_external_id", true),
            Self::Created => time("roles.created_at"),
            Self::LastModified => time("roles.updated_at"),
            Self::MemberId => FieldSqlPub(FieldSql {
                expr: D::id_text("rel.user_id"),
                kind: Kind::Text { case_exact: true },
                relation: Some(Relation::GroupMembers),
            }),
            Self::MemberName => FieldSqlPub(FieldSql {
                expr: "(SELECT u.username FROM users u WHERE u.id = rel.user_id)".into(),
                kind: Kind::Text { case_exact: false },
                relation: Some(Relation::GroupMembers),
            }),
            Self::Owner => text(&D::id_text("roles.scim_client_id"), true),
            Self::Pushable => FieldSqlPub(FieldSql { expr: "roles.pushable".into(), kind: Kind::Flag, relation: None }),
        }
    }
}

fn relation_from<D: FilterDialect>(rel: Relation) -> String {
    match rel {
        Relation::UserGroups => "SELECT 1 FROM role_users rel WHERE rel.user_id = users.id".into(),
        Relation::GroupMembers => "SELECT 1 FROM role_users rel WHERE rel.role_id = roles.id".into(),
        Relation::UserSources => "SELECT 1 FROM source_links rel WHERE rel.user_id = users.id".into(),
        Relation::Profile(list) => format!("SELECT 1 FROM {} WHERE 1 = 1", D::profile_elements(list)),
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

/// An expression that is SQL text alone (no value to bind).
fn plain(sql: &str) -> impl Fn(&mut Query) + '_ {
    move |q| {
        q.push(sql);
    }
}

/// `expr op value` for text; `expr` is already lower-cased when the field ignores case.
fn text_cmp<D: FilterDialect>(q: &mut Query, expr: &dyn Fn(&mut Query), op: CompareOp, value: String) {
    match op {
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew if value.is_empty() => {
            q.push("(");
            expr(q);
            q.push(") IS NOT NULL");
        }
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => {
            let (head, tail) = D::text_match(op);
            q.push(head);
            expr(q);
            q.push(tail);
            for _ in 0..tail.matches('?').count() {
                q.add(value.clone());
            }
        }
        CompareOp::Eq | CompareOp::Ne => {
            expr(q);
            q.push(format!(" {} ?", op_sql(op))).add(value);
        }
        _ => {
            q.push("(");
            expr(q);
            q.push(format!("){} {} ?", D::BY_CODE_POINT, op_sql(op))).add(value);
        }
    }
}

/// One comparison (never NULL: wrapped in COALESCE by the caller).
fn leaf<D: FilterDialect>(
    q: &mut Query,
    f: &FieldSql,
    op: CompareOp,
    value: &FilterValue,
) -> Result<(), FilterSqlError> {
    match &f.kind {
        Kind::Text { case_exact } => match value {
            FilterValue::Null => match op {
                CompareOp::Eq => {
                    q.push(format!("({}) IS NULL", f.expr));
                }
                CompareOp::Ne => {
                    q.push(format!("({}) IS NOT NULL", f.expr));
                }
                _ => return Err(bad("null can only be compared with eq or ne")),
            },
            FilterValue::Text(s) => {
                let (expr, v) = if *case_exact {
                    (f.expr.clone(), s.clone())
                } else {
                    (format!("lower({})", f.expr), s.to_lowercase())
                };
                text_cmp::<D>(q, &plain(&expr), op, v);
            }
            FilterValue::Bool(_) | FilterValue::Number(_) => {
                return Err(bad("this attribute is a string: compare it with a quoted string"))
            }
        },
        Kind::Time => {
            let t = match value {
                FilterValue::Text(s) => DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| bad(format!("{s:?} is not a dateTime (e.g. \"2011-05-13T04:42:34Z\")")))?,
                FilterValue::Null => {
                    q.push(if op == CompareOp::Eq { "1 = 0" } else { "1 = 1" });
                    return Ok(());
                }
                _ => return Err(bad("this attribute is a dateTime: compare it with a quoted date and time")),
            };
            if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                return Err(bad("co, sw and ew do not apply to dateTime attributes"));
            }
            q.push(format!("{} {} ?", f.expr, op_sql(op))).add(t);
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
            q.push(if want_active { "users.status = 'active'" } else { "users.status <> 'active'" });
        }
        Kind::Json(name, kind) => json_leaf::<D>(q, name, *kind, op, value)?,
        Kind::Flag => {
            let FilterValue::Bool(b) = value else {
                return Err(bad("this attribute is a boolean: compare it with true or false"));
            };
            let want = match op {
                CompareOp::Eq => *b,
                CompareOp::Ne => !*b,
                _ => return Err(bad("booleans can only be compared with eq or ne")),
            };
            q.push(format!("{} = {}", f.expr, if want { "TRUE" } else { "FALSE" }));
        }
    }
    Ok(())
}

fn json_leaf<D: FilterDialect>(
    q: &mut Query,
    name: &str,
    kind: AttributeType,
    op: CompareOp,
    value: &FilterValue,
) -> Result<(), FilterSqlError> {
    if *value == FilterValue::Null {
        match op {
            CompareOp::Eq => {
                q.push("NOT ");
            }
            CompareOp::Ne => {}
            _ => return Err(bad("null can only be compared with eq or ne")),
        }
        json_present::<D>(q, name, kind);
        return Ok(());
    }
    match kind {
        AttributeType::String | AttributeType::Date => {
            let FilterValue::Text(s) = value else {
                return Err(bad(format!("{name} is a string: compare it with a quoted string")));
            };
            if kind == AttributeType::Date {
                text_cmp::<D>(q, &|q| D::json(q, name, JsonRead::Text), op, s.clone());
            } else {
                let expr = |q: &mut Query| {
                    q.push("lower(");
                    D::json(q, name, JsonRead::Text);
                    q.push(")");
                };
                text_cmp::<D>(q, &expr, op, s.to_lowercase());
            }
        }
        AttributeType::Number => {
            let FilterValue::Number(n) = value else {
                return Err(bad(format!("{name} is a number: compare it with a number")));
            };
            if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                return Err(bad("co, sw and ew do not apply to numbers"));
            }
            D::json(q, name, JsonRead::Number);
            q.push(format!(" {} ?", op_sql(op))).add(*n);
        }
        AttributeType::Boolean => {
            let FilterValue::Bool(b) = value else {
                return Err(bad(format!("{name} is a boolean: compare it with true or false")));
            };
            if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                return Err(bad("booleans can only be compared with eq or ne"));
            }
            D::json(q, name, JsonRead::Bool);
            q.push(format!(" {} ?", op_sql(op))).add(*b);
        }
        AttributeType::StringList => {
            let FilterValue::Text(s) = value else {
                return Err(bad(format!("{name} holds strings: compare it with a quoted string")));
            };
            if op == CompareOp::Ne {
                q.push("NOT ");
                return json_leaf::<D>(q, name, kind, CompareOp::Eq, value);
            }
            q.push("EXISTS (SELECT 1 FROM ");
            D::json(q, name, JsonRead::Elements);
            q.push(" WHERE ");
            text_cmp::<D>(q, &plain("lower(je.value)"), op, s.to_lowercase());
            q.push(")");
        }
    }
    Ok(())
}

fn json_present<D: FilterDialect>(q: &mut Query, name: &str, kind: AttributeType) {
    match kind {
        AttributeType::StringList => {
            q.push("COALESCE(");
            D::json(q, name, JsonRead::Length);
            q.push(", 0) > 0");
        }
        AttributeType::String => {
            q.push("COALESCE(");
            D::json(q, name, JsonRead::Text);
            q.push(", '') <> ''");
        }
        _ => {
            D::json(q, name, JsonRead::Text);
            q.push(" IS NOT NULL");
        }
    }
}

fn present<D: FilterDialect>(q: &mut Query, f: &FieldSql) {
    match &f.kind {
        Kind::Text { .. } => {
            q.push(format!("(({0}) IS NOT NULL AND ({0}) <> '')", f.expr));
        }
        Kind::Time | Kind::Active | Kind::Flag => {
            q.push("1 = 1");
        }
        Kind::Json(name, kind) => json_present::<D>(q, name, *kind),
    }
}

fn render<D: FilterDialect, F: SqlField>(
    q: &mut Query,
    f: &ResourceFilter<F>,
    inside: Option<Relation>,
    depth: usize,
) -> Result<(), FilterSqlError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(bad(format!("the filter nests deeper than {MAX_FILTER_DEPTH} levels")));
    }
    match f {
        ResourceFilter::True => {
            q.push("1 = 1");
        }
        ResourceFilter::False => {
            q.push("1 = 0");
        }
        ResourceFilter::And(a, b) | ResourceFilter::Or(a, b) => {
            q.push("(");
            render::<D, F>(q, a, inside, depth + 1)?;
            q.push(if matches!(f, ResourceFilter::And(..)) { " AND " } else { " OR " });
            render::<D, F>(q, b, inside, depth + 1)?;
            q.push(")");
        }
        ResourceFilter::Not(a) => {
            q.push("NOT (");
            render::<D, F>(q, a, inside, depth + 1)?;
            q.push(")");
        }
        ResourceFilter::Any(inner) => {
            let rel = relation_of::<D, F>(inner).ok_or_else(|| bad("a value filter must name sub-attributes"))?;
            if inside.is_some() {
                return Err(bad("value filters cannot nest"));
            }
            q.push(format!("EXISTS ({} AND (", relation_from::<D>(rel)));
            render::<D, F>(q, inner, Some(rel), depth + 1)?;
            q.push("))");
        }
        ResourceFilter::Present(field) | ResourceFilter::Compare(field, ..) => {
            let FieldSqlPub(fs) = field.sql::<D>();
            let wrap = match (fs.relation, inside) {
                (Some(rel), None) => {
                    q.push(format!("EXISTS ({} AND ", relation_from::<D>(rel)));
                    true
                }
                (Some(rel), Some(i)) if rel != i => return Err(bad("a value filter mixes attributes")),
                (None, Some(_)) => return Err(bad("a value filter names an attribute of another resource")),
                _ => false,
            };
            q.push("COALESCE((");
            match f {
                ResourceFilter::Present(_) => present::<D>(q, &fs),
                ResourceFilter::Compare(_, CompareOp::Ne, v) if *v != FilterValue::Null => {
                    // Not equal: also true when the attribute has no value.
                    q.push("NOT COALESCE((");
                    leaf::<D>(q, &fs, CompareOp::Eq, v)?;
                    q.push("), FALSE)");
                }
                ResourceFilter::Compare(_, op, v) => leaf::<D>(q, &fs, *op, v)?,
                _ => {}
            }
            q.push("), FALSE)");
            if wrap {
                q.push(")");
            }
        }
    }
    Ok(())
}

fn relation_of<D: FilterDialect, F: SqlField>(f: &ResourceFilter<F>) -> Option<Relation> {
    match f {
        ResourceFilter::And(a, b) | ResourceFilter::Or(a, b) => {
            relation_of::<D, F>(a).or_else(|| relation_of::<D, F>(b))
        }
        ResourceFilter::Not(a) | ResourceFilter::Any(a) => relation_of::<D, F>(a),
        ResourceFilter::Present(x) | ResourceFilter::Compare(x, ..) => x.sql::<D>().0.relation,
        ResourceFilter::True | ResourceFilter::False => None,
    }
}

/// Appends the `WHERE` condition of a filter to `q`, every value bound.
pub fn to_sql<D: FilterDialect, F: SqlField>(q: &mut Query, filter: &ResourceFilter<F>) -> Result<(), FilterSqlError> {
    render::<D, F>(q, filter, None, 0)
}

/// Appends the `ORDER BY` list of a sort to `q` (missing values last when ascending, first when
/// descending, as RFC 7644 section 3.4.2.3 says), ending with the id so that pages are stable.
pub fn order_sql<D: FilterDialect, F: SqlField>(
    q: &mut Query,
    sort: Option<&(F, bool)>,
    id: &str,
) -> Result<(), FilterSqlError> {
    let Some((field, desc)) = sort else {
        q.push(id);
        return Ok(());
    };
    let FieldSqlPub(fs) = field.sql::<D>();
    if fs.relation.is_some() {
        return Err(bad("cannot sort by a multi-valued attribute"));
    }
    let dir = if *desc { "DESC" } else { "ASC" };
    let (expr, collate) = match &fs.kind {
        Kind::Text { case_exact: true } => (fs.expr.clone(), D::BY_CODE_POINT),
        Kind::Text { case_exact: false } => (format!("lower({})", fs.expr), D::BY_CODE_POINT),
        Kind::Time | Kind::Active | Kind::Flag => (fs.expr.clone(), ""),
        Kind::Json(name, kind) => {
            let read = if *kind == AttributeType::Number { JsonRead::Number } else { JsonRead::Text };
            q.push("(");
            D::json(q, name, read);
            q.push(format!(") IS NULL {dir}, "));
            D::json(q, name, read);
            q.push(format!(" {dir}, {id}"));
            return Ok(());
        }
    };
    q.push(format!("({expr}) IS NULL {dir}, ({expr}){collate} {dir}, {id}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::{Postgres, Sqlite};

    use super::*;
    use crate::sql::{Arg, Piece};

    fn sql<D: FilterDialect>(f: &ResourceFilter<UserField>) -> Result<Query, FilterSqlError> {
        let mut q = Query::default();
        to_sql::<D, _>(&mut q, f).map(|()| q)
    }

    /// Each placeholder in order has its value, and each value its placeholder.
    fn aligned(q: &Query) -> bool {
        let (pieces, args) = q.parts();
        let slots: Vec<usize> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Arg(i) => Some(*i),
                Piece::Sql(_) => None,
            })
            .collect();
        slots == (0..args.len()).collect::<Vec<_>>()
    }

    fn custom(name: &str, kind: AttributeType) -> UserField {
        UserField::Custom { name: name.into(), kind }
    }

    #[test]
    fn values_are_bound_never_written_into_the_sql() {
        let evil = "x'); DROP TABLE users; --";
        let f = ResourceFilter::or(
            ResourceFilter::Compare(UserField::Username, CompareOp::Co, FilterValue::Text(evil.into())),
            ResourceFilter::Compare(
                custom("tags", AttributeType::StringList),
                CompareOp::Eq,
                FilterValue::Text(evil.into()),
            ),
        );
        for q in [sql::<Sqlite>(&f).unwrap(), sql::<Postgres>(&f).unwrap()] {
            assert!(!q.sql().contains("DROP"), "{}", q.sql());
            assert!(q.parts().1.contains(&Arg::Text(Some(evil.to_lowercase()))), "{:?}", q.parts().1);
        }
    }

    #[test]
    fn every_placeholder_has_its_value() {
        let text = |field, op, v: &str| ResourceFilter::Compare(field, op, FilterValue::Text(v.into()));
        let parts = [
            text(UserField::Username, CompareOp::Sw, "a"),
            text(UserField::Email, CompareOp::Ew, "b"),
            text(UserField::Id, CompareOp::Co, "c"),
            text(UserField::Title, CompareOp::Gt, "d"),
            text(UserField::GroupName, CompareOp::Ne, "e"),
            text(UserField::Created, CompareOp::Ge, "2011-05-13T04:42:34Z"),
            text(custom("tags", AttributeType::StringList), CompareOp::Ew, "f"),
            text(custom("tags", AttributeType::StringList), CompareOp::Ne, "g"),
            text(custom("code", AttributeType::String), CompareOp::Sw, "h"),
            text(custom("born", AttributeType::Date), CompareOp::Lt, "2000-01-01"),
            ResourceFilter::Compare(custom("level", AttributeType::Number), CompareOp::Le, FilterValue::Number(2.5)),
            ResourceFilter::Compare(custom("vip", AttributeType::Boolean), CompareOp::Eq, FilterValue::Bool(true)),
            ResourceFilter::Compare(custom("level", AttributeType::Number), CompareOp::Eq, FilterValue::Null),
            ResourceFilter::Present(custom("tags", AttributeType::StringList)),
            ResourceFilter::Present(UserField::Active),
        ];
        let f = parts.into_iter().reduce(ResourceFilter::and).unwrap();
        let sort = (custom("level", AttributeType::Number), true);
        check::<Sqlite>(&f, &sort);
        check::<Postgres>(&f, &sort);
    }

    fn check<D: FilterDialect>(f: &ResourceFilter<UserField>, sort: &(UserField, bool)) {
        let mut q = sql::<D>(f).unwrap();
        assert!(aligned(&q), "{}", q.sql());
        q.push(" ORDER BY ");
        order_sql::<D, _>(&mut q, Some(sort), "users.id").unwrap();
        assert!(aligned(&q), "{}", q.sql());
    }

    #[test]
    fn type_mismatches_are_refused() {
        let f = ResourceFilter::Compare(UserField::Active, CompareOp::Gt, FilterValue::Bool(true));
        assert!(sql::<Sqlite>(&f).is_err());
        let f = ResourceFilter::Compare(UserField::Created, CompareOp::Gt, FilterValue::Text("yesterday".into()));
        assert!(sql::<Postgres>(&f).is_err());
        let f = ResourceFilter::Compare(UserField::Username, CompareOp::Eq, FilterValue::Number(1.0));
        assert!(sql::<Postgres>(&f).is_err());
    }

    #[test]
    fn depth_is_limited() {
        let mut f = ResourceFilter::Present(UserField::Title);
        for _ in 0..100 {
            f = ResourceFilter::not(f);
        }
        assert!(sql::<Sqlite>(&f).is_err());
    }
}
