//! The admin API of SAML sign-in, under `/api/v1`: apps' SAML settings, end users'
//! passwords and invitations, and the IdP's certificates and their rotation.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use directory::{Actor, SamlSettings};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{Problem, Result};
use crate::extract::{etag, ApiJson, IfMatch, Path};
use crate::service::saml::LiveKey;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_saml, put_saml))
        .routes(routes!(set_password))
        .routes(routes!(create_invitation))
        .routes(routes!(list_certificates))
        .routes(routes!(rotate_certificate))
        .routes(routes!(activate_certificate))
}

/// An app's SAML settings, with where its users and its admin find the IdP.
#[derive(Debug, Serialize, ToSchema)]
pub struct SamlSettingsView {
    #[serde(flatten)]
    pub settings: SamlSettings,
    /// The IdP's metadata for this app (give it to the app).
    pub metadata_url: String,
    /// The IdP's entity ID for this app (the Issuer of its Responses).
    pub idp_entity_id: String,
    /// Where the app sends AuthnRequests (HTTP-Redirect binding).
    pub sso_url: String,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

fn view(state: &AppState, app: Uuid, r: store::SamlSettingsRecord) -> Response {
    let base = crate::saml::base_url(state);
    let metadata_url = crate::saml::entity_id(&base, app);
    let body = SamlSettingsView {
        settings: r.settings,
        idp_entity_id: metadata_url.clone(),
        metadata_url,
        sso_url: format!("{base}/saml/{app}/sso"),
        updated_at: r.updated_at,
        version: r.version,
    };
    (StatusCode::OK, [(header::ETAG, etag(r.version))], Json(body)).into_response()
}

/// An app's SAML settings.
#[utoipa::path(get, path = "/apps/{id}/saml", tag = "saml", params(("id" = Uuid, Path)),
    responses((status = 200, body = SamlSettingsView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_saml(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let r = s.service.saml_settings(id).await?;
    Ok(view(&s, id, r))
}

/// Create or replace an app's SAML settings (what GET answers may be sent back as it is).
/// The assertion's attributes are the app's parameters and rules. `jit_only` apps are not provisioned by the engine; an app that is
/// not JIT-only needs provisioning enabled first.
#[utoipa::path(put, path = "/apps/{id}/saml", tag = "saml", params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header)),
    request_body = SamlSettings,
    responses((status = 200, body = SamlSettingsView), (status = 412, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn put_saml(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    IfMatch(v): IfMatch,
    ApiJson(mut input): ApiJson<serde_json::Value>,
) -> Result<Response> {
    // What GET adds may be sent back as it is (read-only, ignored).
    if let Some(doc) = input.as_object_mut() {
        for key in ["metadata_url", "idp_entity_id", "sso_url", "updated_at", "version"] {
            doc.remove(key);
        }
    }
    let input: SamlSettings = crate::extract::from_value(input)?;
    let r = s.service.put_saml_settings(&actor, id, input, v).await?;
    Ok(view(&s, id, r))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordInput {
    /// At least 12 characters. Stored only as an argon2id hash.
    pub password: String,
}

/// Set a user's password for signing in to apps (SAML).
#[utoipa::path(put, path = "/users/{id}/password", tag = "saml", params(("id" = Uuid, Path)), request_body = PasswordInput,
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn set_password(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    ApiJson(input): ApiJson<PasswordInput>,
) -> Result<StatusCode> {
    s.service.set_user_password(&actor, id, &input.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A one-time invitation link.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invitation {
    /// The link the user opens to choose a password. Shown only once. `null` when no public URL
    /// is configured (`--public-url`): links are never made from a request's `Host` header.
    pub url: Option<String>,
    /// The link's path on this server (`/invite/prvinv_...`). Shown only once.
    pub path: String,
    pub expires_at: DateTime<Utc>,
    /// Why there is no `url`, and how to get one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Invite a user to choose a password: a one-time link, valid for 72 hours.
#[utoipa::path(post, path = "/users/{id}/invitations", tag = "saml", params(("id" = Uuid, Path)),
    responses((status = 201, body = Invitation), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn create_invitation(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<Invitation>)> {
    let (token, expires_at) = s.service.create_invitation(&actor, id).await?;
    let path = format!("/invite/{token}");
    let (url, note) = match &s.idp.public_url {
        Some(base) => (Some(format!("{}{path}", base.trim_end_matches('/'))), None),
        None => (
            None,
            Some(
                "No public URL is configured, so no link is made (it would name whatever host the request \
                 gave). Start the service with --public-url https://id.example.com (or PROVISIONER_PUBLIC_URL), or \
                 give the person this path on the address they reach the service at."
                    .to_owned(),
            ),
        ),
    };
    Ok((StatusCode::CREATED, Json(Invitation { url, path, expires_at, note })))
}

/// An IdP signing certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct Certificate {
    pub id: Uuid,
    /// `active` (signs Responses) or `next` (published, signs after activation).
    pub state: String,
    /// PEM.
    pub certificate: String,
    /// Hex SHA-256 of the DER.
    pub sha256_fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
}

fn cert(k: &LiveKey) -> Certificate {
    Certificate {
        id: k.id,
        state: k.state.as_str().to_owned(),
        certificate: k.key.cert_pem(),
        sha256_fingerprint: k.key.fingerprint(),
        created_at: k.created_at,
        activated_at: k.activated_at,
    }
}

/// The IdP's certificates: the active one (made on first use) and, during a rotation, the next.
#[utoipa::path(get, path = "/saml/certificates", tag = "saml", responses((status = 200, body = Vec<Certificate>)))]
async fn list_certificates(State(s): State<AppState>) -> Result<Json<Vec<Certificate>>> {
    Ok(Json(s.service.idp_keys().await?.iter().map(cert).collect()))
}

/// Start a certificate rotation: a new certificate is published in every app's metadata
/// next to the active one; give apps time to load it, then activate it.
#[utoipa::path(post, path = "/saml/certificates/rotate", tag = "saml",
    responses((status = 201, body = Certificate), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn rotate_certificate(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<(StatusCode, Json<Certificate>)> {
    Ok((StatusCode::CREATED, Json(cert(&s.service.start_key_rotation(&actor).await?))))
}

/// Finish a rotation: the next certificate signs from now on; the old one is retired.
#[utoipa::path(post, path = "/saml/certificates/activate", tag = "saml",
    responses((status = 200, body = Certificate), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn activate_certificate(
    State(s): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Certificate>> {
    Ok(Json(cert(&s.service.activate_next_key(&actor).await?)))
}
