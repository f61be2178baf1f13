//! `/api/v1/scim-clients`: the admin API that makes, lists and revokes the tokens SCIM clients
//! (identity providers, HR systems) push with. A token is shown once; only its argon2id hash
//! is kept.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use directory::{Actor, Page, ValidationErrors};
use serde::{Deserialize, Serialize};
use store::scim::ScimClientRecord;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{Error, Problem, Result};
use crate::extract::{ApiJson, Path};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_scim_clients, create_scim_client)).routes(routes!(revoke_scim_client))
}

/// The body of `POST /api/v1/scim-clients`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScimClientInput {
    /// Who pushes with this token, e.g. `Entra ID`.
    pub name: String,
}

/// A SCIM client (its token is never shown again).
#[derive(Debug, Serialize, ToSchema)]
pub struct ScimClient {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A new SCIM client with its token, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewScimClient {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The bearer token for `/scim/v2` (and nothing else).
    pub token: String,
}

fn view(r: ScimClientRecord) -> ScimClient {
    ScimClient { id: r.id, name: r.name, created_at: r.created_at }
}

/// List SCIM clients.
#[utoipa::path(get, path = "/scim-clients", tag = "scim", responses((status = 200, body = Page<ScimClient>)))]
async fn list_scim_clients(State(s): State<AppState>) -> Result<Json<Page<ScimClient>>> {
    let items = s.service.store().list_scim_clients().await?.into_iter().map(view).collect();
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
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ValidationErrors::single("name", "must be 1-128 printable characters").into());
    }
    let token =
        format!("{}{}", super::TOKEN_PREFIX, crate::tokens::generate().trim_start_matches(crate::tokens::TOKEN_PREFIX));
    let owned = token.clone();
    let hash = tokio::task::spawn_blocking(move || crate::tokens::hash(&owned))
        .await
        .map_err(Error::internal)?
        .map_err(Error::internal)?;
    let record = ScimClientRecord {
        id: Uuid::now_v7(),
        name,
        lookup: crate::tokens::lookup_key(&token),
        hash,
        created_at: directory::now(),
        revoked_at: None,
    };
    s.service.store().create_scim_client(&record, &actor).await?;
    let body = NewScimClient { id: record.id, name: record.name, created_at: record.created_at, token };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Revoke a SCIM client's token.
#[utoipa::path(delete, path = "/scim-clients/{id}", tag = "scim", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn revoke_scim_client(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    s.service.store().revoke_scim_client(id, &actor).await.map_err(|e| match e {
        store::StoreError::NotFound => Error::NotFound("SCIM client"),
        other => other.into(),
    })?;
    Ok(StatusCode::NO_CONTENT)
}
