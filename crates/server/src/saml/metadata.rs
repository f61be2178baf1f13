//! The IdP's URLs (from the public URL or the listen address, never from a request) and each
//! app's IdP metadata.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use directory::App;
use store::SamlSettingsRecord;
use uuid::Uuid;

use super::pages::{error_page, message};
use crate::AppState;

/// The IdP's base URL, without a trailing slash: the public URL, else the listen address
/// (never the request's `Host`, which would let a client choose the entity ID and endpoints).
pub(crate) fn base_url(state: &AppState) -> String {
    if let Some(u) = &state.idp.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    match state.idp.listen_url.get() {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => "http://127.0.0.1:8080".to_owned(),
    }
}

/// The IdP's entity ID for an app: its metadata URL.
pub(crate) fn entity_id(base: &str, app: Uuid) -> String {
    format!("{base}/saml/{app}/metadata")
}

pub(super) async fn app_and_settings(state: &AppState, app: &str) -> Result<(App, SamlSettingsRecord), Response> {
    let not_found = || message(StatusCode::NOT_FOUND, "Unknown app", "There is no app with SAML sign-in here.");
    let Ok(id) = Uuid::parse_str(app) else { return Err(not_found()) };
    let app = match state.service.store().get_app(id).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(not_found()),
        Err(e) => return Err(error_page(e.into())),
    };
    match state.service.store().get_saml_settings(id).await {
        Ok(Some(s)) => Ok((app, s)),
        Ok(None) => Err(message(
            StatusCode::NOT_FOUND,
            "SAML sign-in is not set up",
            &format!("{} has no SAML sign-in configured.", app.name),
        )),
        Err(e) => Err(error_page(e.into())),
    }
}

pub(super) async fn metadata(State(state): State<AppState>, Path(app): Path<String>) -> Response {
    let (app, settings) = match app_and_settings(&state, &app).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let keys = match state.service.idp_keys().await {
        Ok(k) => k,
        Err(e) => return error_page(e),
    };
    let base = base_url(&state);
    let certs: Vec<String> = keys.iter().map(|k| k.key.cert_base64()).collect();
    let xml = saml::metadata::idp_metadata(
        &entity_id(&base, app.id),
        &certs,
        &[settings.settings.name_id_format.as_str()],
        &format!("{base}/saml/{}/sso", app.id),
    );
    ([(header::CONTENT_TYPE, "application/samlmetadata+xml")], xml).into_response()
}
