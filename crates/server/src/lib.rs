//! The Provisioner service: the admin REST API over one service layer.

pub mod api;
pub mod api_sources;
pub mod api_tokens;
pub mod console;
pub mod error;
pub mod extract;
pub mod listener;
pub mod saml;
pub mod scim_server;
pub mod service;
pub mod tokens;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use store::secrets::Keyring;
use store::Store;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

pub use error::Error;
pub use service::{Bootstrap, Service};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    /// The admin console's settings and sign-in rate limit.
    pub console: Arc<console::ConsoleState>,
    /// The SAML identity provider's settings, password check and sign-in rate limit.
    pub idp: Arc<saml::IdpState>,
}

impl AppState {
    /// The service and its engine (not started: see [`engine::Engine::start`]), with the
    /// connectors and directory sources this build ships.
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>, config: engine::EngineConfig) -> Self {
        let (connectors, sources) =
            (engine::ConnectorRegistry::with_defaults(), engine::SourceRegistry::with_defaults());
        Self::with_registries(store, keyring, config, connectors, sources)
    }

    /// [`Self::new`] with the connectors and directory sources given: the engine builds each
    /// app's connector with `connectors`, the source syncs open each source with `sources`.
    pub fn with_registries(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        config: engine::EngineConfig,
        connectors: engine::ConnectorRegistry,
        sources: engine::SourceRegistry,
    ) -> Self {
        let engine = engine::Engine::new(store.clone(), keyring.clone(), config, connectors);
        let service = Arc::new(Service::new(store.clone(), keyring, engine, sources));
        Self {
            idp: Arc::new(saml::IdpState::new(store, Some(service.sources().clone()))),
            service,
            console: Arc::new(console::ConsoleState::new(console::ConsoleConfig::default())),
        }
    }
}

impl AppState {
    /// Sets the URL people and apps reach this service at (`--public-url`, an `http(s)://` URL
    /// with a host): SAML entity IDs, endpoints and invitation links are made from it. An
    /// `https` URL means the service is reached over TLS: every cookie is then `Secure`.
    pub fn set_public_url(&mut self, url: &str) -> Result<(), String> {
        let url = url.trim().trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("{url:?} must be an http(s) URL with a host"));
        }
        let mut config = self.console.config.clone();
        config.secure_cookies |= parsed.scheme() == "https";
        let mut idp = saml::IdpState::new(self.service.store().clone(), Some(self.service.sources().clone()))
            .with_config(config.clone());
        idp.passwords = self.idp.passwords.clone();
        if let Some(listen) = self.idp.listen_url.get() {
            let _ = idp.listen_url.set(listen.clone());
        }
        idp.public_url = Some(url);
        self.idp = Arc::new(idp);
        self.console = Arc::new(console::ConsoleState::new(config));
        Ok(())
    }

    /// Tells the SAML IdP the address the service listens on: without a public URL, its entity
    /// IDs and endpoints are made from it (never from a request's `Host`).
    pub fn set_listen_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.idp.listen_url.set(format!("http://{addr}"));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Provisioner API", description = "Admin API of Provisioner, an identity provisioning engine. \
        Every route needs `Authorization: Bearer <token>`. Errors are `application/problem+json` (RFC 9457) \
        naming the fields at fault. Writes accept `If-Match` with the ETag of the version read."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "users"), (name = "roles"), (name = "apps"), (name = "attributes"), (name = "audit"), (name = "provisioning"), (name = "mapping"), (name = "sources"), (name = "saml"), (name = "scim"), (name = "tokens"), (name = "meta"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the whole API, generated from the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api::router().merge(saml::api::router()))
        .split_for_parts();
    doc
}

/// Lets a request through only with a valid API token; the token's actor goes into the
/// request's extensions.
async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, Error> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .ok_or(Error::Unauthorized)?;
    let actor = state.service.authenticate(&token).await?.ok_or(Error::Unauthorized)?;
    req.extensions_mut().insert(actor);
    Ok(next.run(req).await)
}

/// A handler that panicked ends its own request with a 500 (the panic is logged); the
/// process and every other request go on.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    Error::Internal(format!("a request handler panicked: {what}")).into_response()
}

/// Marks every cookie `Secure` when the service is reached over TLS (an `https` public URL,
/// `--secure-cookies`, or a proxy's `X-Forwarded-Proto: https`), whichever page set it.
async fn secure_cookies(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let tls = console::over_tls(req.headers(), &state.console.config);
    let mut resp = next.run(req).await;
    if tls {
        let cookies: Vec<_> = resp.headers().get_all(header::SET_COOKIE).iter().cloned().collect();
        if cookies.iter().any(|c| !c.to_str().is_ok_and(|v| v.contains("; Secure"))) {
            resp.headers_mut().remove(header::SET_COOKIE);
            for c in cookies {
                let value = match c.to_str() {
                    Ok(v) if !v.contains("; Secure") => {
                        header::HeaderValue::from_str(&format!("{v}; Secure")).unwrap_or(c)
                    }
                    _ => c,
                };
                resp.headers_mut().append(header::SET_COOKIE, value);
            }
        }
    }
    resp
}

/// The request span of the trace layer: method and path, with secrets in paths redacted
/// (`/invite/[redacted]`: an invitation token is a password-setting credential) and without the
/// query string (which may carry a SAML request or a return path).
fn request_span(req: &Request) -> tracing::Span {
    tracing::debug_span!("request", method = %req.method(), path = %redact_path(req.uri().path()))
}

/// A path as it may be logged.
pub fn redact_path(path: &str) -> String {
    match path.strip_prefix("/invite/") {
        Some(_) => "/invite/[redacted]".to_owned(),
        None => path.to_owned(),
    }
}

async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    state.service.health().await?;
    Ok(Json(serde_json::json!({"status": "ok"})))
}

/// What a worker-only process serves: `/healthz`.
pub fn health_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(|| async { Error::NotFound("route") })
        .layer(CatchPanicLayer::custom(panicked))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api::router().merge(saml::api::router()))
        .split_for_parts();
    let doc_json = doc.to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
    api.route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(Extension(api::OpenApiJson(Arc::new(doc_json))))
        .route("/healthz", get(healthz))
        .merge(console::router(&state))
        .merge(saml::router())
        .nest_service("/scim/v2", scim_server::router(state.clone()))
        .fallback(|| async { Error::NotFound("route") })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed.into_response() })
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), secure_cookies))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_ends_its_request_with_a_500_problem() {
        let app: Router = Router::new()
            .route("/boom", get(|| async { panic!("handler bug") as &'static str }))
            .route("/fine", get(|| async { "ok" }))
            .layer(CatchPanicLayer::custom(panicked));
        let resp = app.clone().oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], error::PROBLEM_JSON);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("handler bug"), "details are logged, not returned");
        let resp = app.oneshot(Request::get("/fine").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
