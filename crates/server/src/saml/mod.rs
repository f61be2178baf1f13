//! The directory as a SAML 2.0 identity provider: per-app metadata, SP-initiated sign-in
//! (HTTP-Redirect AuthnRequests), IdP-initiated sign-in from the end users' portal at `/`,
//! the end users' login, logout and invitation pages, and the Response posted to the app's
//! ACS URL by an auto-submitting form (HTTP-POST binding). Protocol code is in the `saml`
//! crate; business operations in [`crate::service::saml`]; the admin API in
//! [`crate::api::saml`].
//!
//! One file per concern: [`pages`] (message pages, redirects, security headers), [`session`]
//! (cookies, forms, the signed-in end user), [`login`] (sign-in and sign-out), [`invite`]
//! (invitation links), [`portal`] (the end users' apps), [`metadata`] (the IdP's URLs and
//! metadata), [`sso`] (SP- and IdP-initiated sign-in and the Response), [`assertion`] (what
//! the assertion says).

pub mod assertion;
mod invite;
mod login;
mod metadata;
mod pages;
mod portal;
mod session;
mod sso;

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use store::Store;

pub use crate::service::saml::{DirectoryPasswords, LiveKey, PasswordCheck, PasswordOutcome};
pub(crate) use metadata::{base_url, entity_id};
pub use pages::message;

use crate::console::{ConsoleConfig, ConsoleState};
use crate::AppState;

/// The cookie that holds an end user's IdP session id.
pub const USER_SESSION_COOKIE: &str = "prv_idp_session";
/// The cookie that binds the login and invitation forms to the browser that loaded them.
pub const USER_FORM_COOKIE: &str = "prv_idp_form";

/// What the IdP keeps in memory: its settings, the password check, and recent failed sign-ins.
pub struct IdpState {
    /// The URL the IdP is reached at (e.g. `https://id.example.com`, `--public-url`): its
    /// entity IDs, endpoints and invitation links are made from it. Set it with
    /// [`crate::AppState::set_public_url`].
    pub public_url: Option<String>,
    /// Without a public URL, entity IDs and endpoints are made from the address the service
    /// listens on (`http://127.0.0.1:8080`), never from a request's `Host` header, which the
    /// client chooses. Set once the listener is bound.
    pub listen_url: std::sync::OnceLock<String>,
    pub passwords: Arc<dyn PasswordCheck>,
    limiter: ConsoleState,
}

impl IdpState {
    /// `sources` lets people imported from an LDAP source sign in with their password there.
    pub fn new(store: Arc<dyn Store>, sources: Option<Arc<engine::SourceSyncer>>) -> Self {
        Self {
            public_url: None,
            listen_url: std::sync::OnceLock::new(),
            passwords: Arc::new(DirectoryPasswords { store, sources }),
            limiter: ConsoleState::new(ConsoleConfig::default()),
        }
    }

    /// Sets how sign-in is rate-limited and cookies flagged (the console's settings).
    pub fn with_config(mut self, config: ConsoleConfig) -> Self {
        self.limiter = ConsoleState::new(config);
        self
    }
}

/// The IdP's routes (outside `/api/v1` and `/console`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(portal::portal))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/invite/{token}", get(invite::invite_page).post(invite::invite))
        .route("/saml/{app}/metadata", get(metadata::metadata))
        .route("/saml/{app}/sso", get(sso::sso))
        .route("/saml/{app}/idp-initiated", post(sso::idp_initiated))
        .layer(middleware::from_fn(pages::security_headers))
}
