//! `POST /.search` at the root (RFC 7644 section 3.4.3): one search across Users and Groups,
//! with `filter`, `sortBy`/`sortOrder`, `startIndex`/`count` and
//! `attributes`/`excludedAttributes` as on each type's own `/.search`.
//!
//! Each type is searched as its own endpoint searches it (its filter mapped by
//! [`filter::user_filter`] / [`filter::group_filter`], ANDed with the client's scope, in the
//! store), so a client finds here exactly what it finds on `/Users` and `/Groups`. How the
//! two are put together:
//!
//! - **Filter.** Applied to every resource. An attribute a type does not have is treated, for
//!   that type, as an attribute without a value (RFC 7644 section 3.4.2.2: `userName pr` and
//!   `userName eq "x"` are false for a group, `not (userName pr)` true), so `userName eq "ada"`
//!   finds only users and `userName eq "ada" or displayName eq "Admins"` finds both. An
//!   attribute neither type has is `invalidFilter`, as is anything the type having it refuses.
//!   A type the filter rules out entirely is not queried.
//! - **Order.** Without `sortBy`: the users, then the groups, each in its endpoint's order.
//!   With a `sortBy` both types have (`id`, `externalId`, `displayName`, `meta.created`,
//!   `meta.lastModified`): the two sorted lists merged by that value as the store sorts it
//!   (strings without case unless `caseExact`, missing values last when ascending), a user
//!   before a group when they tie; descending is ascending reversed. With a `sortBy` only one
//!   type has: that type sorted, and the other type after it when ascending (before it when
//!   descending), as resources without the attribute. A `sortBy` neither type can sort by is
//!   `invalidValue`.
//! - **Paging.** `totalResults` counts both types. Without a merge, each type is asked only
//!   for its part of the page (the second type's offset is the first's overshoot); a merge
//!   reads the first `startIndex - 1 + count` matches of each type (ids and sort values, the
//!   full resources only for the page), and a page that would need more than
//!   [`MAX_MERGE_READ`] of them answers 400 `tooMany`.
//! - **Attributes.** `attributes`/`excludedAttributes` apply to each type with the names it
//!   has (a name neither has is `invalidValue`); every resource keeps `schemas`, and
//!   `meta.resourceType`, so that a client can tell users from groups.

use std::cmp::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use directory::AttributeDef;
use scim::query::{AttrPath, Filter};
use scim::server::projection::Projection;
use scim::server::schema::ResourceSchema;
use scim::server::{ScimError, ScimType};
use serde_json::{json, Value};
use store::scim::{GroupField, ResourceFilter, ScimGroup, ScimQuery, ScimUser, UserField};

use super::{
    base_url, group_resource_schema, list_response, user_resource_schema, Client, ScimBody, ScimResult, ScimState,
    Search,
};
use super::{filter, groups, scope, users};

/// The most resources a sorted root search reads to merge its page (both types together).
pub(crate) const MAX_MERGE_READ: u64 = 20_000;

/// A resource found: a user or a group.
enum Found {
    User(Box<ScimUser>),
    Group(ScimGroup),
}

/// The two resource types.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Users,
    Groups,
}

/// A sort value as the store orders it: strings (lower-cased unless `caseExact`) by code
/// point, times in order, a missing value after every value.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Text(String),
    Time(DateTime<Utc>),
    Missing,
}

/// The sort value of a user, for the fields groups have too (the only ones a merge compares);
/// `Missing` for the others.
fn user_key(field: &UserField, su: &ScimUser) -> Key {
    let u = &su.user;
    match field {
        UserField::Id => Key::Text(u.id.to_string()),
        UserField::ExternalId => su.external_id.clone().map_or(Key::Missing, Key::Text),
        UserField::DisplayName => u.display_name.as_deref().map_or(Key::Missing, |d| Key::Text(d.to_lowercase())),
        UserField::Created => Key::Time(u.created_at),
        UserField::LastModified => Key::Time(u.updated_at),
        _ => Key::Missing,
    }
}

/// The sort value of a group (see [`user_key`]).
fn group_key(field: &GroupField, g: &ScimGroup) -> Key {
    let r = &g.role;
    match field {
        GroupField::Id => Key::Text(r.id.to_string()),
        GroupField::ExternalId => g.external_id.clone().map_or(Key::Missing, Key::Text),
        GroupField::DisplayName => Key::Text(r.name.to_lowercase()),
        GroupField::Created => Key::Time(r.created_at),
        GroupField::LastModified => Key::Time(r.updated_at),
        _ => Key::Missing,
    }
}

/// `a and b`, `a or b`, `not a`, with the constants folded (so that a type the filter rules out
/// is seen to be, and not queried).
fn and<F>(a: ResourceFilter<F>, b: ResourceFilter<F>) -> ResourceFilter<F> {
    match (a, b) {
        (ResourceFilter::False, _) | (_, ResourceFilter::False) => ResourceFilter::False,
        (ResourceFilter::True, x) | (x, ResourceFilter::True) => x,
        (a, b) => ResourceFilter::and(a, b),
    }
}

fn or<F>(a: ResourceFilter<F>, b: ResourceFilter<F>) -> ResourceFilter<F> {
    match (a, b) {
        (ResourceFilter::True, _) | (_, ResourceFilter::True) => ResourceFilter::True,
        (ResourceFilter::False, x) | (x, ResourceFilter::False) => x,
        (a, b) => ResourceFilter::or(a, b),
    }
}

fn not<F>(a: ResourceFilter<F>) -> ResourceFilter<F> {
    match a {
        ResourceFilter::True => ResourceFilter::False,
        ResourceFilter::False => ResourceFilter::True,
        a => ResourceFilter::not(a),
    }
}

/// `None` for a filter nothing matches (the type is not queried).
fn unless_false<F>(f: ResourceFilter<F>) -> Option<ResourceFilter<F>> {
    match f {
        ResourceFilter::False => None,
        f => Some(f),
    }
}

/// The attribute a leaf of a filter names.
fn leaf_path(f: &Filter) -> Option<&AttrPath> {
    match f {
        Filter::Present(p) | Filter::Compare(p, ..) | Filter::ValuePath(p, _) => Some(p),
        Filter::And(..) | Filter::Or(..) | Filter::Not(_) => None,
    }
}

/// Refuses a filter naming an attribute that neither type has.
fn check_known(f: &Filter, users: &ResourceSchema, groups: &ResourceSchema) -> Result<(), ScimError> {
    match f {
        Filter::And(a, b) | Filter::Or(a, b) => {
            check_known(a, users, groups)?;
            check_known(b, users, groups)
        }
        Filter::Not(a) => check_known(a, users, groups),
        leaf => match leaf_path(leaf) {
            Some(p) if users.find(p).is_none() && groups.find(p).is_none() => Err(ScimError::invalid_filter(format!(
                "{p}: neither Users nor Groups have this attribute (see /Schemas)"
            ))),
            _ => Ok(()),
        },
    }
}

/// A filter for one type: each leaf as that type's endpoint maps it, or, when the type does not
/// have the attribute, the constant it is for a resource without it.
fn for_type<F>(
    f: &Filter,
    rs: &ResourceSchema,
    leaf: &dyn Fn(&Filter) -> Result<ResourceFilter<F>, ScimError>,
) -> Result<ResourceFilter<F>, ScimError> {
    Ok(match f {
        Filter::And(a, b) => and(for_type(a, rs, leaf)?, for_type(b, rs, leaf)?),
        Filter::Or(a, b) => or(for_type(a, rs, leaf)?, for_type(b, rs, leaf)?),
        Filter::Not(a) => not(for_type(a, rs, leaf)?),
        other => match leaf_path(other) {
            Some(p) if rs.find(p).is_none() => {
                if other.matches(&json!({}), &|_| false) {
                    ResourceFilter::True
                } else {
                    ResourceFilter::False
                }
            }
            _ => leaf(other)?,
        },
    })
}

/// The `attributes` or `excludedAttributes` of a root search, for each type: the names it has.
fn projections(s: &Search, users: &ResourceSchema, groups: &ResourceSchema) -> ScimResult<(Projection, Projection)> {
    let given = |v: &Option<String>| v.as_deref().map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned);
    let (list, only) = match (given(&s.attributes), given(&s.excluded)) {
        (Some(_), Some(_)) => {
            return Err(ScimError::invalid_value("give attributes or excludedAttributes, not both").into())
        }
        (None, None) => return Ok((Projection::Default, Projection::Default)),
        (Some(a), None) => (a, true),
        (None, Some(e)) => (e, false),
    };
    let (mut for_users, mut for_groups) = (vec![], vec![]);
    for item in list.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let selected = |rs: &ResourceSchema| match Projection::parse(Some(item), None, rs) {
            Ok(Projection::Only(v)) => Ok(v),
            Ok(_) => Ok(vec![]),
            Err(e) => Err(e),
        };
        match (selected(users), selected(groups)) {
            (Err(e), Err(_)) => return Err(e.into()),
            (u, g) => {
                for_users.extend(u.unwrap_or_default());
                for_groups.extend(g.unwrap_or_default());
            }
        }
    }
    Ok(if only {
        (Projection::Only(for_users), Projection::Only(for_groups))
    } else {
        (Projection::Except(for_users), Projection::Except(for_groups))
    })
}

/// What each type is searched with.
struct Plan {
    /// `None`: the filter rules the type out.
    users: Option<ResourceFilter<UserField>>,
    groups: Option<ResourceFilter<GroupField>>,
    user_sort: Option<UserField>,
    group_sort: Option<GroupField>,
    descending: bool,
}

impl Plan {
    fn new(
        s: &Search,
        client: &Client,
        urs: &ResourceSchema,
        grs: &ResourceSchema,
        defs: &[AttributeDef],
    ) -> ScimResult<Self> {
        let (users, groups) = match s.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            Some(text) => {
                let parsed = filter::parse(text)?;
                check_known(&parsed, urs, grs)?;
                (
                    for_type(&parsed, urs, &|leaf: &Filter| filter::user_filter(leaf, urs, defs))?,
                    for_type(&parsed, grs, &|leaf: &Filter| filter::group_filter(leaf, grs))?,
                )
            }
            None => (ResourceFilter::True, ResourceFilter::True),
        };
        let (user_sort, group_sort) = match s.sort_by.as_deref() {
            None => (None, None),
            Some(path) => match (filter::user_sort(path, urs, defs), filter::group_sort(path, grs)) {
                (Err(e), Err(_)) => return Err(e.into()),
                (u, g) => (u.ok(), g.ok()),
            },
        };
        Ok(Self {
            users: unless_false(and(scope::user_filter(client), users)),
            groups: unless_false(and(scope::group_filter(client), groups)),
            user_sort,
            group_sort,
            descending: s.descending,
        })
    }

    /// The matches of one type: their number, and the window `[offset, offset + count)`.
    async fn window(&self, state: &ScimState, kind: Kind, offset: u64, count: u32) -> ScimResult<(u64, Vec<Found>)> {
        match kind {
            Kind::Users => {
                let Some(filter) = self.users.clone() else { return Ok((0, vec![])) };
                let sort = self.user_sort.clone().map(|f| (f, self.descending));
                let (n, found) = state.store().scim_users(&ScimQuery { filter, sort, offset, count }).await?;
                Ok((n, found.into_iter().map(|u| Found::User(Box::new(u))).collect()))
            }
            Kind::Groups => {
                let Some(filter) = self.groups.clone() else { return Ok((0, vec![])) };
                let sort = self.group_sort.clone().map(|f| (f, self.descending));
                let (n, found) = state.store().scim_groups(&ScimQuery { filter, sort, offset, count }).await?;
                Ok((n, found.into_iter().map(Found::Group).collect()))
            }
        }
    }

    /// Whether both types take part and are sorted by a value both have: their lists merge.
    fn merges(&self) -> bool {
        self.users.is_some() && self.groups.is_some() && self.user_sort.is_some() && self.group_sort.is_some()
    }

    /// The order the types follow each other in when they do not merge.
    fn sequence(&self) -> [Kind; 2] {
        let users_first = match (&self.user_sort, &self.group_sort) {
            (Some(_), None) => !self.descending,
            (None, Some(_)) => self.descending,
            _ => true,
        };
        if users_first {
            [Kind::Users, Kind::Groups]
        } else {
            [Kind::Groups, Kind::Users]
        }
    }

    /// The total and the page `[start_index - 1, start_index - 1 + count)` of the whole order.
    async fn page(&self, state: &ScimState, start_index: u64, count: u32) -> ScimResult<(u64, Vec<Found>)> {
        let skip = start_index - 1;
        if !self.merges() {
            let [first, second] = self.sequence();
            let (n1, mut found) = self.window(state, first, skip, count).await?;
            let rest = count.saturating_sub(u32::try_from(found.len()).unwrap_or(u32::MAX));
            let (n2, more) = self.window(state, second, skip.saturating_sub(n1), rest).await?;
            found.extend(more);
            return Ok((n1 + n2, found));
        }
        let wanted = skip.saturating_add(u64::from(count));
        if count == 0 || wanted > MAX_MERGE_READ / 2 {
            let (nu, _) = self.window(state, Kind::Users, 0, 0).await?;
            let (ng, _) = self.window(state, Kind::Groups, 0, 0).await?;
            if count == 0 || skip >= nu + ng {
                return Ok((nu + ng, vec![]));
            }
            if wanted.min(nu) + wanted.min(ng) > MAX_MERGE_READ {
                return Err(ScimError::bad(
                    ScimType::TooMany,
                    format!(
                        "a root search sorted by a value both Users and Groups have reads the first startIndex - \
                         1 + count matches of each to merge them, and at most {MAX_MERGE_READ} in all; narrow the \
                         filter, or search /Users and /Groups apart"
                    ),
                )
                .into());
            }
        }
        let read = u32::try_from(wanted).unwrap_or(u32::MAX);
        let (nu, users) = self.window(state, Kind::Users, 0, read).await?;
        let (ng, groups) = self.window(state, Kind::Groups, 0, read).await?;
        let merged = self.merge(users, groups);
        let page = merged.into_iter().skip(usize::try_from(skip).unwrap_or(usize::MAX)).take(count as usize).collect();
        Ok((nu + ng, page))
    }

    /// Two lists each in the store's order, merged: a user first on a tie when ascending,
    /// descending being ascending reversed.
    fn merge(&self, users: Vec<Found>, groups: Vec<Found>) -> Vec<Found> {
        let key = |f: &Found| match (f, &self.user_sort, &self.group_sort) {
            (Found::User(u), Some(field), _) => user_key(field, u),
            (Found::Group(g), _, Some(field)) => group_key(field, g),
            _ => Key::Missing,
        };
        let mut out = Vec::with_capacity(users.len() + groups.len());
        let mut users = users.into_iter().peekable();
        let mut groups = groups.into_iter().peekable();
        loop {
            let user_next = match (users.peek(), groups.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(u), Some(g)) => match key(u).cmp(&key(g)) {
                    Ordering::Less => !self.descending,
                    Ordering::Greater => self.descending,
                    Ordering::Equal => !self.descending,
                },
            };
            let next = if user_next { users.next() } else { groups.next() };
            out.extend(next);
        }
        out
    }
}

/// Puts `meta.resourceType` back when a projection took it out.
fn with_resource_type(mut v: Value, kind: &str) -> Value {
    if let Value::Object(o) = &mut v {
        let meta = o.entry("meta").or_insert_with(|| json!({}));
        if let Value::Object(m) = meta {
            m.entry("resourceType").or_insert_with(|| json!(kind));
        }
    }
    v
}

pub(crate) async fn search(
    State(state): State<ScimState>,
    client: Client,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> ScimResult {
    let s = Search::from_body(&body)?;
    let defs = state.store().list_attribute_defs().await?;
    let urs = user_resource_schema(&defs);
    let grs = group_resource_schema();
    let (user_projection, group_projection) = projections(&s, &urs, &grs)?;
    let plan = Plan::new(&s, &client, &urs, &grs, &defs)?;
    let (total, found) = plan.page(&state, s.start_index, s.count).await?;
    let base = base_url(&headers);
    let (with_groups, with_members) = (user_projection.wants("groups"), group_projection.wants("members"));
    let mut resources = Vec::with_capacity(found.len());
    for f in &found {
        resources.push(match f {
            Found::User(su) => {
                let full = users::resource(&state, &client, su, &defs, &base, with_groups).await?;
                with_resource_type(user_projection.apply(full, &urs), "User")
            }
            Found::Group(g) => {
                let full = groups::full(&state, &client, g, &base, with_members).await?;
                with_resource_type(group_projection.apply(full, &grs), "Group")
            }
        });
    }
    Ok(super::scim_json(StatusCode::OK, &list_response(total, s.start_index, resources)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas() -> (ResourceSchema, ResourceSchema) {
        (user_resource_schema(&[]), group_resource_schema())
    }

    fn users_filter(text: &str) -> Result<ResourceFilter<UserField>, ScimError> {
        let (urs, grs) = schemas();
        let f = filter::parse(text)?;
        check_known(&f, &urs, &grs)?;
        for_type(&f, &urs, &|leaf: &Filter| filter::user_filter(leaf, &urs, &[]))
    }

    fn groups_filter(text: &str) -> Result<ResourceFilter<GroupField>, ScimError> {
        let (urs, grs) = schemas();
        let f = filter::parse(text)?;
        check_known(&f, &urs, &grs)?;
        for_type(&f, &grs, &|leaf: &Filter| filter::group_filter(leaf, &grs))
    }

    #[test]
    fn an_attribute_one_type_lacks_has_no_value_there() {
        assert_eq!(groups_filter(r#"userName eq "ada""#), Ok(ResourceFilter::False));
        assert_eq!(groups_filter("userName pr"), Ok(ResourceFilter::False));
        assert_eq!(groups_filter("not (userName pr)"), Ok(ResourceFilter::True));
        assert_eq!(groups_filter(r#"emails[type eq "work"]"#), Ok(ResourceFilter::False));
        assert_eq!(users_filter(r#"members[value eq "x"]"#), Ok(ResourceFilter::False));
        // The other side of an `or` decides; `and` with what a type lacks rules it out.
        assert!(matches!(
            groups_filter(r#"userName eq "ada" or displayName eq "Admins""#),
            Ok(ResourceFilter::Compare(GroupField::DisplayName, ..))
        ));
        assert_eq!(groups_filter(r#"userName eq "ada" and displayName eq "Admins""#), Ok(ResourceFilter::False));
        // Both types have it: each maps it.
        assert!(matches!(
            users_filter(r#"displayName eq "x""#),
            Ok(ResourceFilter::Compare(UserField::DisplayName, ..))
        ));
    }

    #[test]
    fn an_attribute_neither_type_has_is_an_invalid_filter() {
        for text in [r#"bogus eq "x""#, r#"userName eq "a" or nope pr"#, "not (members.nope pr)"] {
            let e = users_filter(text).unwrap_err();
            assert_eq!(e.scim_type, Some(ScimType::InvalidFilter), "{text}");
        }
        // What the type having the attribute refuses stays refused.
        assert!(users_filter(r#"emails[nope eq "x"]"#).is_err());
    }

    #[test]
    fn keys_order_values_then_missing() {
        assert!(Key::Text("a".into()) < Key::Text("b".into()));
        assert!(Key::Text("zz".into()) < Key::Missing);
        assert!(Key::Time(directory::now()) < Key::Missing);
    }
}
