//! `/api/v1/tokens`: the API tokens, listed (never the tokens themselves) and revoked. A
//! revoked token is refused at once by the process that revoked it and within
//! [`crate::tokens::CACHE_TTL`] by every other process sharing the database.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use directory::{Actor, Page};
use serde::Serialize;
use store::TokenRecord;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{Problem, Result};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_tokens)).routes(routes!(revoke_token))
}

/// An API token: its name and when it was made and last used (the token is never shown again).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// When a request last came with it (to the minute); `null` when never.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<TokenRecord> for ApiToken {
    fn from(r: TokenRecord) -> Self {
        Self { id: r.id, name: r.name, created_at: r.created_at, last_used_at: r.last_used_at }
    }
}

/// List the API tokens that are not revoked.
#[utoipa::path(get, path = "/tokens", tag = "tokens", responses((status = 200, body = Page<ApiToken>)))]
async fn list_tokens(State(s): State<AppState>) -> Result<Json<Page<ApiToken>>> {
    let items = s.service.list_tokens().await?.into_iter().map(ApiToken::from).collect();
    Ok(Json(Page { items, next_cursor: None }))
}

/// Revoke an API token: every process refuses it within 2 seconds.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn revoke_token(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    s.service.revoke_token(id, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}
