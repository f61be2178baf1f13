//! `/api/v1/sources`: directory sources (LDAP / Active Directory) and their syncs.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use directory::{Actor, DirectorySource, Page, SourceInput, SourceLink, SourceSync, SyncMode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::DryRunParams;
use crate::error::{Problem, Result};
use crate::extract::{etag, ApiJson, ApiQuery, IfMatch, MergePatch, Path};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sources, create_source))
        .routes(routes!(get_source, patch_source, delete_source))
        .routes(routes!(test_source))
        .routes(routes!(start_sync))
        .routes(routes!(list_syncs))
        .routes(routes!(get_sync))
        .routes(routes!(confirm_sync))
        .routes(routes!(user_source))
}

fn tagged<T: Serialize>(status: StatusCode, version: i64, body: T) -> Response {
    (status, [(header::ETAG, etag(version))], Json(body)).into_response()
}

/// List directory sources.
#[utoipa::path(get, path = "/sources", tag = "sources", responses((status = 200, body = Page<DirectorySource>)))]
async fn list_sources(State(s): State<AppState>) -> Result<Json<Page<DirectorySource>>> {
    Ok(Json(Page { items: s.service.list_sources().await?, next_cursor: None }))
}

/// Add a directory source. `bind_password` is kept encrypted and never shown. With
/// `?dry_run=true` nothing is saved: the directory is read as the source's first sync would,
/// and the answer says what that sync would do.
#[utoipa::path(post, path = "/sources", tag = "sources", request_body = SourceInput, params(DryRunParams),
    responses((status = 200, description = "With `?dry_run=true`: what a full sync with these settings would do (the directory is read; nothing is written)", body = engine::SyncDryRun), (status = 201, body = DirectorySource), (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_source(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiQuery(d): ApiQuery<DryRunParams>,
    ApiJson(input): ApiJson<SourceInput>,
) -> Result<Response> {
    if d.dry_run {
        return Ok(Json(s.service.dry_run_create_source(input).await?).into_response());
    }
    let source = s.service.create_source(&actor, input).await?;
    Ok(tagged(StatusCode::CREATED, source.version, source))
}

/// Get a directory source.
#[utoipa::path(get, path = "/sources/{id}", tag = "sources", params(("id" = Uuid, Path)),
    responses((status = 200, body = DirectorySource), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_source(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let source = s.service.get_source(id).await?;
    Ok(tagged(StatusCode::OK, source.version, source))
}

/// Change a directory source with a JSON merge patch; `bind_password` replaces the password.
/// Moving `url` to another scheme, host or port needs `bind_password` again (422 naming it).
/// With `?dry_run=true` nothing is saved: the answer (a `SyncDryRun`) says what a full sync
/// with the changed settings would do.
#[utoipa::path(patch, path = "/sources/{id}", tag = "sources", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), DryRunParams),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = DirectorySource), (status = 412, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn patch_source(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiQuery(d): ApiQuery<DryRunParams>,
    MergePatch(patch): MergePatch,
) -> Result<Response> {
    if d.dry_run {
        return Ok(Json(s.service.dry_run_patch_source(id, &patch, v).await?).into_response());
    }
    let source = s.service.patch_source(&actor, id, &patch, v).await?;
    Ok(tagged(StatusCode::OK, source.version, source))
}

/// Delete a directory source. Its users stay, and become editable here (so its dry run
/// answers no effects).
#[utoipa::path(delete, path = "/sources/{id}", tag = "sources", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), DryRunParams),
    responses((status = 200, description = "With `?dry_run=true`: what the change would do; nothing is written", body = engine::dry_run::DryRun), (status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_source(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiQuery(d): ApiQuery<DryRunParams>,
) -> Result<Response> {
    if d.dry_run {
        return Ok(Json(s.service.dry_run_delete_source(id, v).await?).into_response());
    }
    s.service.delete_source(&actor, id, v).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The answer of a connection test.
#[derive(Debug, Serialize, ToSchema)]
struct TestResult {
    ok: bool,
    /// Entries on the first page of the search.
    entries: usize,
}

/// Test a source: connect, bind, and read one page of people.
#[utoipa::path(post, path = "/sources/{id}/test", tag = "sources", params(("id" = Uuid, Path)),
    responses((status = 200, body = TestResult),
        (status = 502, description = "The directory cannot be reached or refused the bind", body = Problem, content_type = "application/problem+json")))]
async fn test_source(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<Json<TestResult>> {
    let entries = s.service.test_source(&actor, id).await?;
    Ok(Json(TestResult { ok: true, entries }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SyncParams {
    /// `full` (default): every entry, and people gone from the source are suspended;
    /// `incremental`: only entries changed since the last sync.
    mode: Option<SyncMode>,
    /// Read the directory as the sync would and answer what it would do (`200`, a
    /// `SyncDryRun`); nothing is imported, no sync is recorded.
    #[serde(default)]
    dry_run: bool,
}

/// Start a sync now; answers at once with the sync, whose progress `GET .../syncs/{sync_id}` shows.
#[utoipa::path(post, path = "/sources/{id}/sync", tag = "sources", params(("id" = Uuid, Path), SyncParams),
    responses((status = 200, description = "With `?dry_run=true`: what the sync would do (the directory is read; nothing is imported)", body = engine::SyncDryRun),
        (status = 202, body = SourceSync),
        (status = 409, description = "A sync of the source is running or awaits confirmation", body = Problem, content_type = "application/problem+json")))]
async fn start_sync(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    ApiQuery(p): ApiQuery<SyncParams>,
) -> Result<Response> {
    if p.dry_run {
        return Ok(Json(s.service.dry_run_source_sync(id, p.mode).await?).into_response());
    }
    let sync = s.service.start_source_sync(&actor, id, p.mode).await?;
    Ok((StatusCode::ACCEPTED, Json(sync)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SyncListParams {
    /// How many of the newest syncs, 1 to 500 (default 20).
    limit: Option<u32>,
}

/// The newest syncs of a source.
#[utoipa::path(get, path = "/sources/{id}/syncs", tag = "sources", params(("id" = Uuid, Path), SyncListParams),
    responses((status = 200, body = Page<SourceSync>)))]
async fn list_syncs(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    ApiQuery(p): ApiQuery<SyncListParams>,
) -> Result<Json<Page<SourceSync>>> {
    let limit = p.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(crate::Error::bad_request("limit", "must be between 1 and 500"));
    }
    Ok(Json(Page { items: s.service.list_source_syncs(id, limit).await?, next_cursor: None }))
}

/// A sync's progress (entries read, created, updated, suspended, reactivated) and result.
#[utoipa::path(get, path = "/sources/{id}/syncs/{sync_id}", tag = "sources", params(("id" = Uuid, Path), ("sync_id" = Uuid, Path)),
    responses((status = 200, body = SourceSync), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_sync(State(s): State<AppState>, Path((id, sync_id)): Path<(Uuid, Uuid)>) -> Result<Json<SourceSync>> {
    Ok(Json(s.service.get_source_sync(id, sync_id).await?))
}

/// Let a sync stopped by the mass-suspension guard go on: its suspensions are made.
#[utoipa::path(post, path = "/sources/{id}/syncs/{sync_id}/confirm", tag = "sources", params(("id" = Uuid, Path), ("sync_id" = Uuid, Path)),
    responses((status = 202, body = SourceSync),
        (status = 409, description = "The sync is not awaiting confirmation", body = Problem, content_type = "application/problem+json")))]
async fn confirm_sync(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, sync_id)): Path<(Uuid, Uuid)>,
) -> Result<Response> {
    let sync = s.service.confirm_source_sync(&actor, id, sync_id).await?;
    Ok((StatusCode::ACCEPTED, Json(sync)).into_response())
}

/// Where a user comes from: their directory source and entry.
#[derive(Debug, Serialize, ToSchema)]
struct UserSource {
    source_id: Uuid,
    source_name: String,
    /// The entry's distinguished name.
    dn: String,
    /// objectGUID or entryUUID.
    stable_id: String,
    /// The user fields the source fills (read-only here).
    sourced_fields: Vec<String>,
}

/// The directory source and entry a user was imported from.
#[utoipa::path(get, path = "/users/{id}/source", tag = "sources", params(("id" = Uuid, Path)),
    responses((status = 200, body = UserSource),
        (status = 404, description = "No such user, or the user comes from no directory source", body = Problem, content_type = "application/problem+json")))]
async fn user_source(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<UserSource>> {
    s.service.get_user(id).await?;
    let (source, link): (DirectorySource, SourceLink) =
        s.service.source_link_of_user(id).await?.ok_or(crate::Error::NotFound("directory source of the user"))?;
    Ok(Json(UserSource {
        source_id: source.id,
        source_name: source.name.clone(),
        dn: link.dn,
        stable_id: link.stable_id,
        sourced_fields: source.sourced_fields(),
    }))
}
