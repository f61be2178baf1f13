//! The admin REST API under `/api/v1`. Handlers are thin: extract, call the service, answer.
//!
//! Users, roles, apps, attributes, the audit log, provisioning and mapping are answered here;
//! each other resource has its own file: [`sources`] (directory sources and their syncs),
//! [`scim_clients`], [`tokens`] and [`saml`] (SAML settings, end users' passwords and
//! invitations, the IdP's certificates). The operations they call are the
//! [`crate::Service`]'s, laid out the same way under `service/` (`service/sources.rs`,
//! `service/saml.rs`, ...).

pub mod saml;
pub mod scim_clients;
pub mod sources;
pub mod tokens;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use directory::{
    Account, Actor, App, AppInput, AttributeDef, AttributeDefInput, AuditEntry, Event, EventStatus, Page, Parameter,
    Role, RoleInput, Rule, User, UserInput, UserSource, UserStatus,
};
use serde::{Deserialize, Serialize};
use store::{AccountQuery, AuditQuery, EventQuery, NameQuery, UserQuery};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{Problem, Result};
use crate::extract::{etag, ApiJson, ApiQuery, IfMatch, MergePatch, Path};
use crate::service::page;
use crate::AppState;

/// A JSON answer with the resource's version as its ETag.
fn tagged<T: Serialize>(status: StatusCode, version: i64, body: T) -> Response {
    (status, [(header::ETAG, etag(version))], Json(body)).into_response()
}

/// A list answer: `{"items": [...], "next_cursor": null}`.
fn all<T: Serialize>(items: Vec<T>) -> Json<Page<T>> {
    Json(Page { items, next_cursor: None })
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(email_conflicts))
        .routes(routes!(get_user, patch_user, delete_user))
        .routes(routes!(user_roles))
        .routes(routes!(list_roles, create_role))
        .routes(routes!(get_role, patch_role, delete_role))
        .routes(routes!(role_users))
        .routes(routes!(add_role_user, remove_role_user))
        .routes(routes!(role_apps))
        .routes(routes!(add_role_app, remove_role_app))
        .routes(routes!(list_apps, create_app))
        .routes(routes!(get_app, patch_app, delete_app))
        .routes(routes!(app_roles))
        .routes(routes!(list_attributes, create_attribute))
        .routes(routes!(delete_attribute))
        .routes(routes!(list_audit))
        .routes(routes!(test_connection))
        .routes(routes!(app_health))
        .routes(routes!(resume_app))
        .routes(routes!(app_accounts))
        .routes(routes!(user_accounts))
        .routes(routes!(rematch))
        .routes(routes!(remote_accounts))
        .routes(routes!(reconcile))
        .routes(routes!(provision_now))
        .routes(routes!(list_events))
        .routes(routes!(get_event))
        .routes(routes!(approve_event))
        .routes(routes!(reject_event))
        .routes(routes!(retry_event))
        .routes(routes!(requeue_event))
        .routes(routes!(held_events))
        .routes(routes!(allow_held))
        .routes(routes!(reject_held))
        .routes(routes!(get_parameters, put_parameters, reset_parameters))
        .routes(routes!(get_rules, put_rules))
        .routes(routes!(plan_preview))
        .routes(routes!(explain))
        .routes(routes!(list_entitlements))
        .routes(routes!(refresh_entitlements))
        .routes(routes!(app_reads))
        .routes(routes!(openapi_json))
        .merge(scim_clients::router())
        .merge(tokens::router())
        .merge(sources::router())
}

/// The document that the API is described by, generated from the code.
#[derive(Clone)]
pub struct OpenApiJson(pub std::sync::Arc<String>);

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0.as_str().to_owned()).into_response()
}

// ---- users ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListUsersParams {
    /// Text search in username, e-mail, first, last and display name.
    q: Option<String>,
    /// `active`, `suspended` or `deleted`; by default every user but the deleted ones.
    status: Option<UserStatus>,
    /// Only members of this role.
    role: Option<Uuid>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List users.
#[utoipa::path(get, path = "/users", tag = "users", params(ListUsersParams),
    responses((status = 200, body = Page<User>), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_users(State(s): State<AppState>, ApiQuery(p): ApiQuery<ListUsersParams>) -> Result<Json<Page<User>>> {
    let query = UserQuery { q: p.q, status: p.status, role: p.role, page: page(p.limit, p.cursor)? };
    Ok(Json(s.service.list_users(&query).await?))
}

/// An e-mail address that more than one user (not deleted) has.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailConflict {
    /// The address, as compared: trimmed, Unicode NFKC, lower-cased.
    pub email: String,
    /// The users who have it, by username.
    pub users: Vec<User>,
}

/// E-mail addresses shared by more than one user, stored before addresses were unique. Each
/// person needs their own (it is their SAML NameID): change or remove the address of all but
/// one; until then a SAML sign-in by any of them with the address as NameID is refused.
#[utoipa::path(get, path = "/users/email-conflicts", tag = "users",
    responses((status = 200, body = Page<EmailConflict>)))]
async fn email_conflicts(State(s): State<AppState>) -> Result<Json<Page<EmailConflict>>> {
    let items = s.service.email_conflicts().await?;
    Ok(all(items.into_iter().map(|c| EmailConflict { email: c.email_key, users: c.users }).collect()))
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = UserInput,
    responses((status = 201, body = User), (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_user(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(input): ApiJson<UserInput>,
) -> Result<Response> {
    let user = s.service.create_user(&actor, input, UserSource::Local).await?;
    Ok(tagged(StatusCode::CREATED, user.version, user))
}

/// Get a user.
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_user(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let user = s.service.get_user(id).await?;
    Ok(tagged(StatusCode::OK, user.version, user))
}

/// Change a user with a JSON merge patch (RFC 7396); `{"status": "suspended"}` suspends.
/// With `?dry_run=true` it answers a `DryRun` instead and writes nothing.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), DryRunParams),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = User), (status = 412, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn patch_user(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiQuery(d): ApiQuery<DryRunParams>,
    MergePatch(patch): MergePatch,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_patch_user(id, &patch, v).await?);
    }
    let user = s.service.patch_user(&actor, id, &patch, v).await?;
    Ok(tagged(StatusCode::OK, user.version, user))
}

/// Delete a user: their status becomes `deleted` and they leave their roles.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), DryRunParams),
    responses((status = 200, description = "With `?dry_run=true`: what the change would do; nothing is written", body = engine::dry_run::DryRun), (status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_user(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiQuery(d): ApiQuery<DryRunParams>,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_delete_user(id, v).await?);
    }
    s.service.delete_user(&actor, id, v).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The roles a user belongs to.
#[utoipa::path(get, path = "/users/{id}/roles", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = Page<Role>)))]
async fn user_roles(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Page<Role>>> {
    Ok(all(s.service.roles_of_user(id).await?))
}

// ---- roles ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Text search in the name.
    q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl ListParams {
    fn query(self) -> Result<NameQuery> {
        Ok(NameQuery { q: self.q, page: page(self.limit, self.cursor)? })
    }
}

/// List roles.
#[utoipa::path(get, path = "/roles", tag = "roles", params(ListParams), responses((status = 200, body = Page<Role>)))]
async fn list_roles(State(s): State<AppState>, ApiQuery(p): ApiQuery<ListParams>) -> Result<Json<Page<Role>>> {
    Ok(Json(s.service.list_roles(&p.query()?).await?))
}

/// Create a role.
#[utoipa::path(post, path = "/roles", tag = "roles", request_body = RoleInput,
    responses((status = 201, body = Role), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn create_role(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(input): ApiJson<RoleInput>,
) -> Result<Response> {
    let role = s.service.create_role(&actor, input).await?;
    Ok(tagged(StatusCode::CREATED, role.version, role))
}

/// Get a role.
#[utoipa::path(get, path = "/roles/{id}", tag = "roles", params(("id" = Uuid, Path)),
    responses((status = 200, body = Role), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_role(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let role = s.service.get_role(id).await?;
    Ok(tagged(StatusCode::OK, role.version, role))
}

/// Change a role with a JSON merge patch.
#[utoipa::path(patch, path = "/roles/{id}", tag = "roles", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = Role), (status = 412, body = Problem, content_type = "application/problem+json")))]
async fn patch_role(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    MergePatch(patch): MergePatch,
) -> Result<Response> {
    let role = s.service.patch_role(&actor, id, &patch, v).await?;
    Ok(tagged(StatusCode::OK, role.version, role))
}

/// Delete a role; its members lose the apps it granted.
#[utoipa::path(delete, path = "/roles/{id}", tag = "roles", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), DryRunParams),
    responses((status = 200, description = "With `?dry_run=true`: what the change would do; nothing is written", body = engine::dry_run::DryRun), (status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_role(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiQuery(d): ApiQuery<DryRunParams>,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_delete_role(id, v).await?);
    }
    s.service.delete_role(&actor, id, v).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The members of a role.
#[utoipa::path(get, path = "/roles/{id}/users", tag = "roles", params(("id" = Uuid, Path), PageParams),
    responses((status = 200, body = Page<User>)))]
async fn role_users(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<User>>> {
    s.service.get_role(id).await?;
    let query = UserQuery { role: Some(id), page: page(p.limit, p.cursor)?, ..Default::default() };
    Ok(Json(s.service.list_users(&query).await?))
}

/// Add a user to a role (idempotent).
#[utoipa::path(put, path = "/roles/{id}/users/{user_id}", tag = "roles", params(("id" = Uuid, Path), ("user_id" = Uuid, Path), DryRunParams),
    responses((status = 200, description = "With `?dry_run=true`: what the change would do; nothing is written", body = engine::dry_run::DryRun), (status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn add_role_user(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, user)): Path<(Uuid, Uuid)>,
    ApiQuery(d): ApiQuery<DryRunParams>,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_membership(id, user, true).await?);
    }
    s.service.add_role_user(&actor, id, user).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Remove a user from a role (idempotent).
#[utoipa::path(delete, path = "/roles/{id}/users/{user_id}", tag = "roles", params(("id" = Uuid, Path), ("user_id" = Uuid, Path), DryRunParams),
    responses((status = 200, description = "With `?dry_run=true`: what the change would do; nothing is written", body = engine::dry_run::DryRun), (status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn remove_role_user(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, user)): Path<(Uuid, Uuid)>,
    ApiQuery(d): ApiQuery<DryRunParams>,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_membership(id, user, false).await?);
    }
    s.service.remove_role_user(&actor, id, user).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The apps a role grants.
#[utoipa::path(get, path = "/roles/{id}/apps", tag = "roles", params(("id" = Uuid, Path)),
    responses((status = 200, body = Page<App>)))]
async fn role_apps(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Page<App>>> {
    Ok(all(s.service.apps_of_role(id).await?))
}

/// Grant an app to a role's members (idempotent).
#[utoipa::path(put, path = "/roles/{id}/apps/{app_id}", tag = "roles", params(("id" = Uuid, Path), ("app_id" = Uuid, Path), DryRunParams),
    responses((status = 200, description = "With `?dry_run=true`: what the change would do; nothing is written", body = engine::dry_run::DryRun), (status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn add_role_app(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, app)): Path<(Uuid, Uuid)>,
    ApiQuery(d): ApiQuery<DryRunParams>,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_role_grant(id, app, true).await?);
    }
    s.service.add_role_app(&actor, id, app).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Stop granting an app to a role's members (idempotent).
#[utoipa::path(delete, path = "/roles/{id}/apps/{app_id}", tag = "roles", params(("id" = Uuid, Path), ("app_id" = Uuid, Path), DryRunParams),
    responses((status = 200, description = "With `?dry_run=true`: what the change would do; nothing is written", body = engine::dry_run::DryRun), (status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn remove_role_app(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, app)): Path<(Uuid, Uuid)>,
    ApiQuery(d): ApiQuery<DryRunParams>,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_role_grant(id, app, false).await?);
    }
    s.service.remove_role_app(&actor, id, app).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `?dry_run=true`: validate, change nothing, answer what the change would do.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DryRunParams {
    /// Validate as usual, change nothing, and answer `{"effects": [...], "roles": [...]}`.
    #[serde(default)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AppWriteParams {
    /// Validate as usual, change nothing, and answer `{"effects": [...], "roles": [...]}`.
    #[serde(default)]
    dry_run: bool,
    /// Apply `on_suspend` / `on_delete` to accounts already left or suspended too (settings
    /// otherwise govern future leavers only).
    #[serde(default)]
    apply_to_existing: bool,
}

/// The answer of a dry run.
fn dry(run: engine::dry_run::DryRun) -> Result<Response> {
    Ok(Json(run).into_response())
}

// ---- apps ----

/// List apps.
#[utoipa::path(get, path = "/apps", tag = "apps", params(ListParams), responses((status = 200, body = Page<App>)))]
async fn list_apps(State(s): State<AppState>, ApiQuery(p): ApiQuery<ListParams>) -> Result<Json<Page<App>>> {
    Ok(Json(s.service.list_apps(&p.query()?).await?))
}

/// Create an app. Its credential is encrypted at rest and never returned.
#[utoipa::path(post, path = "/apps", tag = "apps", request_body = AppInput,
    responses((status = 201, body = App), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_app(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(input): ApiJson<AppInput>,
) -> Result<Response> {
    let app = s.service.create_app(&actor, input).await?;
    Ok(tagged(StatusCode::CREATED, app.version, app))
}

/// Get an app (without its credential).
#[utoipa::path(get, path = "/apps/{id}", tag = "apps", params(("id" = Uuid, Path)),
    responses((status = 200, body = App), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_app(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let app = s.service.get_app(id).await?;
    Ok(tagged(StatusCode::OK, app.version, app))
}

/// Change an app with a JSON merge patch. Leave the secret out to keep the stored one; a
/// `connection.auth` of another `type` replaces the credential. Moving `connection.base_url` or
/// `connection.auth.token_url` to another scheme, host or port needs the secret again (422 naming it).
/// With `?dry_run=true` it answers a `DryRun` instead and writes nothing.
#[utoipa::path(patch, path = "/apps/{id}", tag = "apps", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), AppWriteParams),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = App), (status = 412, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn patch_app(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiQuery(d): ApiQuery<AppWriteParams>,
    MergePatch(patch): MergePatch,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_patch_app(id, &patch, v, d.apply_to_existing).await?);
    }
    let app = s.service.patch_app(&actor, id, &patch, v).await?;
    if d.apply_to_existing {
        s.service.apply_to_existing(&actor, id).await?;
    }
    Ok(tagged(StatusCode::OK, app.version, app))
}

/// Delete an app.
#[utoipa::path(delete, path = "/apps/{id}", tag = "apps", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_app(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode> {
    s.service.delete_app(&actor, id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The roles that grant an app.
#[utoipa::path(get, path = "/apps/{id}/roles", tag = "apps", params(("id" = Uuid, Path)),
    responses((status = 200, body = Page<Role>)))]
async fn app_roles(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Page<Role>>> {
    Ok(all(s.service.roles_of_app(id).await?))
}

// ---- custom attributes ----

/// List custom attribute definitions.
#[utoipa::path(get, path = "/attributes", tag = "attributes", responses((status = 200, body = Page<AttributeDef>)))]
async fn list_attributes(State(s): State<AppState>) -> Result<Json<Page<AttributeDef>>> {
    Ok(all(s.service.list_attributes().await?))
}

/// Declare a custom attribute.
#[utoipa::path(post, path = "/attributes", tag = "attributes", request_body = AttributeDefInput,
    responses((status = 201, body = AttributeDef), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn create_attribute(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    ApiJson(input): ApiJson<AttributeDefInput>,
) -> Result<(StatusCode, Json<AttributeDef>)> {
    Ok((StatusCode::CREATED, Json(s.service.create_attribute(&actor, input).await?)))
}

/// Remove a custom attribute: its definition and its values (deleted users keep none
/// either). Refused with 409 while it is in use: the problem's `errors` name the users holding a
/// value (`users`, with their count), and the app `parameters` and `rules`, directory `sources`
/// and `saml` settings that use it; remove those uses first.
#[utoipa::path(delete, path = "/attributes/{name}", tag = "attributes", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "In use: `errors` names each use", body = Problem, content_type = "application/problem+json")))]
async fn delete_attribute(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    s.service.delete_attribute(&actor, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit ----

#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// `user`, `role`, `app`, `attribute` or `token`.
    target_type: Option<String>,
    target_id: Option<String>,
    /// The name of the token or admin who acted.
    actor: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditParams), responses((status = 200, body = Page<AuditEntry>)))]
async fn list_audit(State(s): State<AppState>, ApiQuery(p): ApiQuery<AuditParams>) -> Result<Json<Page<AuditEntry>>> {
    let query = AuditQuery {
        target_type: p.target_type,
        target_id: p.target_id,
        actor: p.actor,
        ids: None,
        page: page(p.limit, p.cursor)?,
    };
    Ok(Json(s.service.list_audit(&query).await?))
}

// ---- provisioning ----

/// "Enable" the API connection: checks the credentials and learns what the app supports
/// (PATCH, filter, ETag, bulk, page size), used from then on.
#[utoipa::path(post, path = "/apps/{id}/connection/test", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, description = "`{\"ok\": true, \"capabilities\": {...}}`", body = Object),
        (status = 502, description = "The app refused (e.g. Invalid authentication)", body = Problem, content_type = "application/problem+json")))]
async fn test_connection(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<Json<serde_json::Value>> {
    let caps = s.service.test_connection(&actor, id).await?;
    Ok(Json(serde_json::json!({"ok": true, "capabilities": caps})))
}

/// The app's health: whether it is quarantined (why, since when, the next connection test),
/// its held and queued operations, and its last connection test.
#[utoipa::path(get, path = "/apps/{id}/health", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, body = directory::AppHealth),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn app_health(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<directory::AppHealth>> {
    Ok(Json(s.service.app_health(id).await?))
}

/// Resumes a quarantined app at once: its queue runs again and what failed is planned again.
#[utoipa::path(post, path = "/apps/{id}/resume", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The app's health after resuming", body = directory::AppHealth),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The app is not quarantined", body = Problem, content_type = "application/problem+json")))]
async fn resume_app(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<Json<directory::AppHealth>> {
    Ok(Json(s.service.resume_app(&actor, id).await?))
}

/// The app's accounts: status, ownership, remote id.
#[utoipa::path(get, path = "/apps/{id}/accounts", tag = "provisioning", params(("id" = Uuid, Path), PageParams),
    responses((status = 200, body = Page<Account>)))]
async fn app_accounts(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<Account>>> {
    let q = AccountQuery { app: Some(id), user: None, page: page(p.limit, p.cursor)? };
    Ok(Json(s.service.list_accounts(&q).await?))
}

/// A user's accounts in every app.
#[utoipa::path(get, path = "/users/{id}/accounts", tag = "provisioning", params(("id" = Uuid, Path), PageParams),
    responses((status = 200, body = Page<Account>)))]
async fn user_accounts(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<Account>>> {
    let q = AccountQuery { app: None, user: Some(id), page: page(p.limit, p.cursor)? };
    Ok(Json(s.service.list_accounts(&q).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoteParams {
    /// How many accounts to read (1 to 1000, default 100).
    limit: Option<u32>,
}

/// Accounts read from the app itself (its first page), to pick one for "Rematch login".
#[utoipa::path(get, path = "/apps/{id}/remote-accounts", tag = "provisioning", params(("id" = Uuid, Path), RemoteParams),
    responses((status = 200, description = "`{\"items\": [SCIM resources]}`", body = Object),
        (status = 502, body = Problem, content_type = "application/problem+json")))]
async fn remote_accounts(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    ApiQuery(p): ApiQuery<RemoteParams>,
) -> Result<Json<serde_json::Value>> {
    let items = s.service.app_remote_accounts(id, p.limit.unwrap_or(100)).await?;
    Ok(Json(serde_json::json!({"items": items})))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RematchInput {
    /// The id of the account in the app.
    remote_id: String,
}

/// "Rematch login": link the user to an existing account of the app; the engine manages it
/// from then on.
#[utoipa::path(post, path = "/apps/{id}/accounts/{user_id}/rematch", tag = "provisioning",
    params(("id" = Uuid, Path), ("user_id" = Uuid, Path)), request_body = RematchInput,
    responses((status = 200, body = Account), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn rematch(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, user)): Path<(Uuid, Uuid)>,
    ApiJson(input): ApiJson<RematchInput>,
) -> Result<Json<Account>> {
    Ok(Json(s.service.rematch(&actor, id, user, &input.remote_id).await?))
}

/// Full reconciliation: reads every account of the app and queues only the differences.
#[utoipa::path(post, path = "/apps/{id}/reconcile", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, description = "What was read, found and queued", body = Object)))]
async fn reconcile(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<Json<engine::ReconcileReport>> {
    Ok(Json(s.service.reconcile(&actor, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProvisionParams {
    /// Only this app (default: every app of the user).
    app: Option<Uuid>,
}

/// "Provision now": plans the user's accounts at once and answers with the steps taken.
#[utoipa::path(post, path = "/users/{id}/provision", tag = "provisioning", params(("id" = Uuid, Path), ProvisionParams),
    responses((status = 200, description = "`{\"steps\": [...]}`", body = Object)))]
async fn provision_now(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    ApiQuery(p): ApiQuery<ProvisionParams>,
) -> Result<Json<serde_json::Value>> {
    let steps = s.service.provision_now(&actor, id, p.app).await?;
    Ok(Json(serde_json::json!({"steps": steps})))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only this user's events.
    user: Option<Uuid>,
    /// Only this app's events.
    app: Option<Uuid>,
    status: Option<EventStatus>,
    /// Search by username.
    q: Option<String>,
    /// Only events with a cause of this kind (`user_change`, `membership`, `role_grant`,
    /// `app_settings`, `mapping`, `source_sync`, `scim_push`, `reconcile`, `admin`, `replan`).
    cause: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Provisioning events, newest first.
#[utoipa::path(get, path = "/events", tag = "provisioning", params(EventParams), responses((status = 200, body = Page<Event>)))]
async fn list_events(State(s): State<AppState>, ApiQuery(p): ApiQuery<EventParams>) -> Result<Json<Page<Event>>> {
    let q = EventQuery {
        user: p.user,
        app: p.app,
        status: p.status,
        q: p.q,
        cause: crate::service::guard::cause_filter(p.cause)?,
        page: page(p.limit, p.cursor)?,
    };
    Ok(Json(s.service.list_events(&q).await?))
}

/// One provisioning event.
#[utoipa::path(get, path = "/events/{id}", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, body = Event), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_event(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Event>> {
    Ok(Json(s.service.get_event(id).await?))
}

/// Requeue a rejected event: the account is planned again as the app's settings say (a new
/// event, pending or held when they say so). Rejections otherwise stick.
#[utoipa::path(post, path = "/events/{id}/requeue", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, body = Event), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn requeue_event(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<Json<Event>> {
    Ok(Json(s.service.requeue_event(&actor, id).await?))
}

/// The app's suspensions and deletions held by its deprovisioning guard, oldest first, each
/// with its cause.
#[utoipa::path(get, path = "/apps/{id}/held", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, body = Page<Event>)))]
async fn held_events(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Page<Event>>> {
    Ok(all(s.service.held_events(id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeldDecision {
    /// The held events to decide on; all of the app's when left out.
    #[serde(default)]
    event_ids: Option<Vec<Uuid>>,
}

/// Allow held events: each goes on (pending first when the app wants approval for it).
#[utoipa::path(post, path = "/apps/{id}/held/allow", tag = "provisioning", params(("id" = Uuid, Path)), request_body = HeldDecision,
    responses((status = 200, body = Page<Event>), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn allow_held(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    ApiJson(input): ApiJson<HeldDecision>,
) -> Result<Json<Page<Event>>> {
    Ok(all(s.service.decide_held(&actor, id, input.event_ids, true).await?))
}

/// Reject held events: nothing is sent, the accounts stay, and the rejection sticks.
#[utoipa::path(post, path = "/apps/{id}/held/reject", tag = "provisioning", params(("id" = Uuid, Path)), request_body = HeldDecision,
    responses((status = 200, body = Page<Event>), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn reject_held(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    ApiJson(input): ApiJson<HeldDecision>,
) -> Result<Json<Page<Event>>> {
    Ok(all(s.service.decide_held(&actor, id, input.event_ids, false).await?))
}

/// Approve a pending event: it runs now.
#[utoipa::path(post, path = "/events/{id}/approve", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, body = Event), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn approve_event(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<Json<Event>> {
    Ok(Json(s.service.approve_event(&actor, id).await?))
}

/// Reject a pending event: nothing is done in the app.
#[utoipa::path(post, path = "/events/{id}/reject", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, body = Event), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn reject_event(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<Json<Event>> {
    Ok(Json(s.service.reject_event(&actor, id).await?))
}

/// Retry a failed event.
#[utoipa::path(post, path = "/events/{id}/retry", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, body = Event), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn retry_event(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<Json<Event>> {
    Ok(Json(s.service.retry_event(&actor, id).await?))
}

// ---- parameters, rules, entitlements ----

/// The app's parameters (attribute mappings); the default mapping until an admin sets them.
#[utoipa::path(get, path = "/apps/{id}/parameters", tag = "mapping", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<Parameter>)))]
async fn get_parameters(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let (params, version) = s.service.parameters(id).await?;
    Ok(tagged(StatusCode::OK, version, params))
}

/// Replace the app's parameters. Every user the app concerns is planned again; only real
/// differences are queued. With `?dry_run=true` it answers a `DryRun` instead and writes nothing.
#[utoipa::path(put, path = "/apps/{id}/parameters", tag = "mapping", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), DryRunParams),
    request_body = Vec<Parameter>,
    responses((status = 200, body = Vec<Parameter>), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn put_parameters(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiQuery(d): ApiQuery<DryRunParams>,
    ApiJson(params): ApiJson<Vec<Parameter>>,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_mapping(id, Some(params), None, v).await?);
    }
    let app = s.service.put_mapping(&actor, id, Some(params), None, v).await?;
    Ok(tagged(StatusCode::OK, app.version, app.effective_parameters().into_owned()))
}

/// Drop the app's parameters: the default mapping applies again.
#[utoipa::path(delete, path = "/apps/{id}/parameters", tag = "mapping", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = Vec<Parameter>), (status = 412, body = Problem, content_type = "application/problem+json")))]
async fn reset_parameters(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
) -> Result<Response> {
    let app = s.service.reset_parameters(&actor, id, v).await?;
    Ok(tagged(StatusCode::OK, app.version, app.effective_parameters().into_owned()))
}

/// The app's rules, in order.
#[utoipa::path(get, path = "/apps/{id}/rules", tag = "mapping", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<Rule>)))]
async fn get_rules(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let (rules, version) = s.service.rules(id).await?;
    Ok(tagged(StatusCode::OK, version, rules))
}

/// Replace the app's rules. Rules run in order; for a single-valued attribute the last
/// matching rule wins; entitlements accumulate; "do not provision" puts the user out of scope.
/// With `?dry_run=true` it answers a `DryRun` instead and writes nothing.
#[utoipa::path(put, path = "/apps/{id}/rules", tag = "mapping", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), DryRunParams),
    request_body = Vec<Rule>,
    responses((status = 200, body = Vec<Rule>), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn put_rules(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiQuery(d): ApiQuery<DryRunParams>,
    ApiJson(rules): ApiJson<Vec<Rule>>,
) -> Result<Response> {
    if d.dry_run {
        return dry(s.service.dry_run_mapping(id, None, Some(rules), v).await?);
    }
    let app = s.service.put_mapping(&actor, id, None, Some(rules), v).await?;
    Ok(tagged(StatusCode::OK, app.version, app.rules))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    /// Proposed parameters (the current ones when left out).
    #[serde(default)]
    parameters: Option<Vec<Parameter>>,
    /// Proposed rules (the current ones when left out).
    #[serde(default)]
    rules: Option<Vec<Rule>>,
    /// Proposed provisioning settings (the current ones when left out).
    #[serde(default)]
    provisioning: Option<directory::ProvisioningSettings>,
}

/// What saving these parameters and rules would do: counts and a sample of affected users
/// with the values before and after. Nothing is written.
#[utoipa::path(post, path = "/apps/{id}/plan", tag = "mapping", params(("id" = Uuid, Path)), request_body = PlanInput,
    responses((status = 200, description = "`{create, update, deprovision, group_add, group_remove, invalid, sample}`", body = Object),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn plan_preview(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    ApiJson(input): ApiJson<PlanInput>,
) -> Result<Json<engine::PlanPreview>> {
    Ok(Json(s.service.plan_preview(id, input.parameters, input.rules, input.provisioning).await?))
}

/// The account the user should have in the app, and which parameter or rule produced each value.
#[utoipa::path(get, path = "/users/{id}/apps/{app_id}/explain", tag = "mapping", params(("id" = Uuid, Path), ("app_id" = Uuid, Path)),
    responses((status = 200, description = "`{in_scope, reason, account, groups, provenance}`", body = Object)))]
async fn explain(State(s): State<AppState>, Path((id, app)): Path<(Uuid, Uuid)>) -> Result<Json<engine::Explanation>> {
    Ok(Json(s.service.explain(id, app).await?))
}

/// The app's entitlements (imported by Refresh) and the latest refresh's progress.
#[utoipa::path(get, path = "/apps/{id}/entitlements", tag = "mapping", params(("id" = Uuid, Path), PageParams),
    responses((status = 200, description = "`{refresh, items, next_cursor}`", body = Object)))]
async fn list_entitlements(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<serde_json::Value>> {
    let (refresh, page) = s.service.entitlements(id, &page(p.limit, p.cursor)?).await?;
    let read = s.service.app_reads(id).await?.into_iter().find(|r| r.kind == "refresh").map(|r| r.result);
    Ok(Json(
        serde_json::json!({"refresh": refresh, "read": read, "items": page.items, "next_cursor": page.next_cursor}),
    ))
}

/// How the latest reconcile and Refresh read the app: the strategy whose pages were
/// consistent (`GET paging`, `POST /.search paging`), each contradiction found in the app's
/// answers, and (reconcile) the duplicate member entries seen in its groups.
#[utoipa::path(get, path = "/apps/{id}/reads", tag = "provisioning", params(("id" = Uuid, Path)),
    responses((status = 200, description = "`{\"items\": [{kind, result, recorded_at}]}`", body = Object)))]
async fn app_reads(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<serde_json::Value>> {
    Ok(Json(serde_json::json!({"items": s.service.app_reads(id).await?})))
}

/// "Refresh": import the app's groups in the background (page by page); follow its progress
/// with `GET /apps/{id}/entitlements`.
#[utoipa::path(post, path = "/apps/{id}/entitlements/refresh", tag = "mapping", params(("id" = Uuid, Path)),
    responses((status = 202, description = "Started"), (status = 409, description = "Already running", body = Problem, content_type = "application/problem+json")))]
async fn refresh_entitlements(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    s.service.refresh_entitlements(id).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"state": "running"}))))
}
