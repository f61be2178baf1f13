//! `/api/v1/scim-clients`: the admin API that makes, lists, scopes and revokes the tokens SCIM
//! clients (identity providers, HR systems) push with. A token is shown once; only its
//! argon2id hash is kept. Each client has a scope: the users and roles it sees and changes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use directory::{Actor, Page, ValidationErrors};
use serde::{Deserialize, Serialize};
use store::scim::{RoleScope, ScimClientRecord, ScimScope, UserScope};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{Error, Problem, Result};
use crate::extract::{ApiJson, Path};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_scim_clients, create_scim_client))
        .routes(routes!(patch_scim_client, revoke_scim_client))
}

/// The users a SCIM client sees and manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsersScope {
    /// Those it created.
    Own,
    /// Those imported from the directory source `source_id` (and those it created).
    Source,
    All,
}

/// The roles (SCIM Groups) a SCIM client sees and pushes members into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolesScope {
    /// Those it created.
    Own,
    /// Those marked `pushable` (members only) and those it created.
    Pushable,
    All,
}

/// What a SCIM client sees and changes. Objects out of scope are invisible to it (404).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub users: UsersScope,
    /// The directory source, with `users: "source"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<Uuid>,
    pub roles: RolesScope,
    /// Reads only: every write answers 403.
    #[serde(default)]
    pub read_only: bool,
    /// May set the `password` of the users it may change (stored only as an argon2id hash; the
    /// person's sign-in password for `/login` and SAML apps). `false`: a request carrying a
    /// password answers 403. Default `true`.
    #[serde(default = "yes")]
    pub passwords: bool,
}

fn yes() -> bool {
    true
}

/// A scope as given: every field optional (missing ones keep their value, or the default of a
/// new client: `own`, `own`, not read-only, passwords allowed).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeInput {
    pub users: Option<UsersScope>,
    pub source_id: Option<Uuid>,
    pub roles: Option<RolesScope>,
    pub read_only: Option<bool>,
    pub passwords: Option<bool>,
}

/// The body of `POST /api/v1/scim-clients`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScimClientInput {
    /// Who pushes with this token, e.g. `Entra ID`.
    pub name: String,
    /// What the client may see and change; by default the users and roles it creates.
    #[serde(default)]
    pub scope: Option<ScopeInput>,
}

/// The body of `PATCH /api/v1/scim-clients/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScimClientPatch {
    pub scope: ScopeInput,
}

/// A SCIM client (its token is never shown again).
#[derive(Debug, Serialize, ToSchema)]
pub struct ScimClient {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub scope: Scope,
    /// The client existed before scopes and keeps scope `all` until an admin sets its scope.
    pub legacy_scope: bool,
}

/// A new SCIM client with its token, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewScimClient {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub scope: Scope,
    pub legacy_scope: bool,
    /// The bearer token for `/scim/v2` (and nothing else).
    pub token: String,
}

/// A stored scope as the API shows it.
pub fn scope_view(s: &ScimScope) -> Scope {
    let (users, source_id) = match s.users {
        UserScope::Own => (UsersScope::Own, None),
        UserScope::Source(id) => (UsersScope::Source, Some(id)),
        UserScope::All => (UsersScope::All, None),
    };
    let roles = match s.roles {
        RoleScope::Own => RolesScope::Own,
        RoleScope::Pushable => RolesScope::Pushable,
        RoleScope::All => RolesScope::All,
    };
    Scope { users, source_id, roles, read_only: s.read_only, passwords: s.passwords }
}

/// `input` over `base`, checked (a `source` scope names a source that exists).
pub async fn apply_scope(s: &AppState, base: &ScimScope, input: &ScopeInput) -> Result<ScimScope> {
    let current = scope_view(base);
    let users = input.users.unwrap_or(current.users);
    let users = match users {
        UsersScope::Own => UserScope::Own,
        UsersScope::All => UserScope::All,
        UsersScope::Source => {
            let Some(id) = input.source_id.or(current.source_id) else {
                return Err(ValidationErrors::single("scope.source_id", "is required with users \"source\"").into());
            };
            if let Err(Error::NotFound(_)) = s.service.get_source(id).await {
                return Err(ValidationErrors::single("scope.source_id", "refers to no directory source").into());
            }
            UserScope::Source(id)
        }
    };
    let roles = match input.roles.unwrap_or(current.roles) {
        RolesScope::Own => RoleScope::Own,
        RolesScope::Pushable => RoleScope::Pushable,
        RolesScope::All => RoleScope::All,
    };
    Ok(ScimScope {
        users,
        roles,
        read_only: input.read_only.unwrap_or(current.read_only),
        passwords: input.passwords.unwrap_or(current.passwords),
    })
}

pub fn view(r: ScimClientRecord) -> ScimClient {
    ScimClient {
        id: r.id,
        name: r.name,
        created_at: r.created_at,
        scope: scope_view(&r.scope),
        legacy_scope: r.legacy_scope,
    }
}

/// List SCIM clients.
#[utoipa::path(get, path = "/scim-clients", tag = "scim", responses((status = 200, body = Page<ScimClient>)))]
async fn list_scim_clients(State(s): State<AppState>) -> Result<Json<Page<ScimClient>>> {
    let items = s.service.scim_clients().await?.into_iter().map(view).collect();
    Ok(Json(Page { items, next_cursor: None }))
}

/// Make a SCIM client and its token (shown once).
#[utoipa::path(post, path = "/scim-clients", tag = "scim", request_body = ScimClientInput,
    responses((status = 201, body = NewScimClient), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_scim_client(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(input): ApiJson<ScimClientInput>,
) -> Result<Response> {
    let scope = apply_scope(&s, &ScimScope::NEW, &input.scope.unwrap_or_default()).await?;
    let (record, token) = s.service.create_scim_client(&actor, &input.name, scope).await?;
    let body = NewScimClient {
        id: record.id,
        name: record.name,
        created_at: record.created_at,
        scope: scope_view(&record.scope),
        legacy_scope: false,
        token,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Set a SCIM client's scope (fields left out keep their value); this clears `legacy_scope`.
#[utoipa::path(patch, path = "/scim-clients/{id}", tag = "scim", params(("id" = Uuid, Path)), request_body = ScimClientPatch,
    responses((status = 200, body = ScimClient), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn patch_scim_client(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    ApiJson(input): ApiJson<ScimClientPatch>,
) -> Result<Json<ScimClient>> {
    let record = set_scope(&s, id, &input.scope, &actor).await?;
    Ok(Json(view(record)))
}

/// Sets a client's scope (the API and the console).
pub async fn set_scope(s: &AppState, id: Uuid, input: &ScopeInput, actor: &Actor) -> Result<ScimClientRecord> {
    let current = s.service.scim_client(id).await?;
    let scope = apply_scope(s, &current.scope, input).await?;
    s.service.set_scim_client_scope(actor, id, &scope).await
}

/// Revoke a SCIM client's token.
#[utoipa::path(delete, path = "/scim-clients/{id}", tag = "scim", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn revoke_scim_client(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    s.service.revoke_scim_client(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
