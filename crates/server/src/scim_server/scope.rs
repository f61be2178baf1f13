//! The scope of a SCIM client: which users and groups (roles) it sees and changes. An
//! object out of scope is invisible: reading, changing or deleting it answers 404 as if it
//! did not exist, lists and filters leave it out, and naming it as a member is refused as a
//! member that does not exist. Every refusal is audited (`scim.refused`, with the client's
//! name, the object and the reason; never a token).

use std::collections::BTreeSet;

use directory::Role;
use scim::server::ScimError;
use store::scim::{
    CompareOp, FilterValue, GroupField, Member, ResourceFilter, RoleScope, ScimGroup, ScimQuery, ScimUser, UserField,
    UserScope,
};
use uuid::Uuid;

use super::{parse_id, Client, Fail, ScimResult, ScimState};

/// How many ids one visibility query checks.
const CHUNK: usize = 100;

/// Records a refusal in the audit log.
pub(crate) async fn refuse(
    state: &ScimState,
    client: &Client,
    target_type: &str,
    target_id: &str,
    reason: &str,
) -> ScimResult<()> {
    tracing::info!(client = %client.actor.name, target_type, target_id, reason, "SCIM request refused");
    let details = serde_json::json!({"client": client.actor.name, "client_id": client.id, "reason": reason});
    state.store().append_audit(&client.actor, "scim.refused", target_type, target_id, Some(details)).await?;
    Ok(())
}

/// `a or b or ...`, as a balanced tree (so that many ids do not nest deeply).
fn any_of<F>(mut leaves: Vec<ResourceFilter<F>>) -> ResourceFilter<F> {
    match leaves.len() {
        0 => ResourceFilter::False,
        1 => leaves.pop().unwrap_or(ResourceFilter::False),
        n => {
            let right = leaves.split_off(n / 2);
            ResourceFilter::or(any_of(leaves), any_of(right))
        }
    }
}

/// The users in scope, as a filter to AND with a client's own.
pub(crate) fn user_filter(client: &Client) -> ResourceFilter<UserField> {
    client.scope.user_filter(client.id)
}

/// The groups in scope, as a filter to AND with a client's own.
pub(crate) fn group_filter(client: &Client) -> ResourceFilter<GroupField> {
    client.scope.group_filter(client.id)
}

/// Which of `ids` are users in scope (existing and not deleted, when the scope is `all`,
/// is checked by the store when they are written).
pub(crate) async fn visible_users(state: &ScimState, client: &Client, ids: &[Uuid]) -> ScimResult<BTreeSet<Uuid>> {
    if client.scope.users == UserScope::All {
        return Ok(ids.iter().copied().collect());
    }
    users_among(state, user_filter(client), ids).await
}

/// Which of `ids` are users (not deleted) that `scope` holds.
async fn users_among(state: &ScimState, scope: ResourceFilter<UserField>, ids: &[Uuid]) -> ScimResult<BTreeSet<Uuid>> {
    let mut out = BTreeSet::new();
    for chunk in ids.chunks(CHUNK) {
        let leaves = chunk
            .iter()
            .map(|id| ResourceFilter::Compare(UserField::Id, CompareOp::Eq, FilterValue::Text(id.to_string())))
            .collect();
        let query = ScimQuery {
            filter: ResourceFilter::and(scope.clone(), any_of(leaves)),
            sort: None,
            offset: 0,
            count: chunk.len() as u32,
        };
        out.extend(state.store().scim_users(&query).await?.1.into_iter().map(|u| u.user.id));
    }
    Ok(out)
}

/// Which of `ids` are groups in scope.
async fn visible_groups(state: &ScimState, client: &Client, ids: &[Uuid]) -> ScimResult<BTreeSet<Uuid>> {
    if client.scope.roles == RoleScope::All {
        return Ok(ids.iter().copied().collect());
    }
    let mut out = BTreeSet::new();
    for chunk in ids.chunks(CHUNK) {
        let leaves = chunk
            .iter()
            .map(|id| ResourceFilter::Compare(GroupField::Id, CompareOp::Eq, FilterValue::Text(id.to_string())))
            .collect();
        let query = ScimQuery {
            filter: ResourceFilter::and(group_filter(client), any_of(leaves)),
            sort: None,
            offset: 0,
            count: chunk.len() as u32,
        };
        out.extend(state.store().scim_groups(&query).await?.1.into_iter().map(|g| g.role.id));
    }
    Ok(out)
}

/// A user in scope; out of scope (audited) or missing: 404.
pub(crate) async fn load_user(state: &ScimState, client: &Client, id: &str) -> ScimResult<ScimUser> {
    let id = parse_id(id, "user")?;
    let missing = || Fail(ScimError::not_found(format!("no user {id}")), None);
    let Some(user) = state.store().scim_user(id).await? else { return Err(missing()) };
    if visible_users(state, client, &[id]).await?.contains(&id) {
        return Ok(user);
    }
    refuse(state, client, "user", &id.to_string(), "the user is out of the client's scope").await?;
    Err(missing())
}

/// A group in scope; out of scope (audited) or missing: 404.
pub(crate) async fn load_group(state: &ScimState, client: &Client, id: &str) -> ScimResult<ScimGroup> {
    let id = parse_id(id, "group")?;
    let missing = || Fail(ScimError::not_found(format!("no group {id}")), None);
    let Some(group) = state.store().scim_group(id).await? else { return Err(missing()) };
    if visible_groups(state, client, &[id]).await?.contains(&id) {
        return Ok(group);
    }
    refuse(state, client, "role", &id.to_string(), "the group (role) is out of the client's scope").await?;
    Err(missing())
}

/// Whether the client may rename or delete a group it sees: a pushable role it did not
/// create takes members only. Refusals are audited and answer 403.
pub(crate) async fn check_owns_group(state: &ScimState, client: &Client, g: &ScimGroup) -> ScimResult<()> {
    if client.scope.roles == RoleScope::All || g.owner == Some(client.id) {
        return Ok(());
    }
    refuse(
        state,
        client,
        "role",
        &g.role.id.to_string(),
        "the group (role) is pushable but was not created by the client: members only",
    )
    .await?;
    Err(ScimError::new(403, None, "this client may push members into this group, not rename or delete it").into())
}

/// The members of a group the client sees.
pub(crate) async fn visible_members(state: &ScimState, client: &Client, role: Uuid) -> ScimResult<Vec<Member>> {
    let members = state.store().scim_members(role).await?;
    if client.scope.users == UserScope::All {
        return Ok(members);
    }
    let ids: Vec<Uuid> = members.iter().map(|m| m.id).collect();
    let visible = visible_users(state, client, &ids).await?;
    Ok(members.into_iter().filter(|m| visible.contains(&m.id)).collect())
}

/// The roles of a user that the client sees.
pub(crate) async fn visible_roles(state: &ScimState, client: &Client, user: Uuid) -> ScimResult<Vec<Role>> {
    let roles = state.store().roles_of_user(user).await?;
    if client.scope.roles == RoleScope::All {
        return Ok(roles);
    }
    let ids: Vec<Uuid> = roles.iter().map(|r| r.id).collect();
    let visible = visible_groups(state, client, &ids).await?;
    Ok(roles.into_iter().filter(|r| visible.contains(&r.id)).collect())
}

/// The members a write leaves a group with: those the client sent, and those it cannot see
/// (kept as they are). A member the client sent that it cannot see and that is not a member
/// already is refused (audited) as a member that does not exist.
pub(crate) async fn members_to_write(
    state: &ScimState,
    client: &Client,
    role: Option<Uuid>,
    wanted: Vec<Uuid>,
) -> ScimResult<Vec<Uuid>> {
    let current: Vec<Uuid> = match role {
        Some(r) => state.store().scim_members(r).await?.into_iter().map(|m| m.id).collect(),
        None => vec![],
    };
    let added: Vec<Uuid> = wanted.iter().copied().filter(|u| !current.contains(u)).collect();
    let visible_added = users_among(state, user_filter(client), &added).await?;
    let missing: Vec<Uuid> = added.iter().copied().filter(|u| !visible_added.contains(u)).collect();
    if !missing.is_empty() {
        for u in &missing {
            if client.scope.users != UserScope::All && state.store().scim_user(*u).await?.is_some() {
                let target = role.map(|r| r.to_string()).unwrap_or_else(|| "(new group)".to_owned());
                let reason = format!("member {u} is a user out of the client's scope");
                refuse(state, client, "role", &target, &reason).await?;
            }
        }
        let ids = missing.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ");
        let noun = if missing.len() == 1 { "id" } else { "ids" };
        return Err(ScimError::invalid_value(format!("members: no user has the {noun} {ids}")).into());
    }
    if client.scope.users == UserScope::All {
        return Ok(wanted);
    }
    let visible_current = visible_users(state, client, &current).await?;
    let mut out = wanted;
    for u in current {
        if !visible_current.contains(&u) && !out.contains(&u) {
            out.push(u);
        }
    }
    Ok(out)
}
