//! The connector registry: which [`ConnectorFactory`] builds the [`Connector`] of an app of
//! each [`ConnectorKind`]. Whoever assembles the engine fills it (the SCIM factory is one of
//! [`ConnectorRegistry::with_defaults`]); the engine only looks kinds up in it, so a new kind
//! of target is a new factory registered here, not a change to the engine.
//!
//! This room holds the registry, the factory trait and what a factory is given; it knows no
//! concrete connector but the defaults it registers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use directory::{App, ConnectorKind, Secret};
use outbound::TargetPolicy;
use scim::Capabilities;

use crate::{Connector, ConnectorError, ErrorKind};

/// The engine's settings every connector it builds follows.
#[derive(Debug, Clone, Default)]
pub struct ConnectorSettings {
    /// Timeout of one request to an app.
    pub request_timeout: Duration,
    /// Base of the retry backoff of the connector's client.
    pub backoff_base: Duration,
    /// Which addresses the connector may reach.
    pub targets: TargetPolicy,
    /// Asked before every request to the app and told every answer (the engine gives each
    /// app's connector the app's rate gate); `None`: no pacing.
    pub pacer: Option<Arc<dyn crate::Pacer>>,
}

/// Why a connector could not be built for an app.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The stored secret does not fit the app's authentication settings.
    #[error("{0}")]
    Credential(String),
    /// The app's settings are unusable for its connector, or no connector is registered for
    /// its kind (the reason says which).
    #[error(transparent)]
    Connector(#[from] ConnectorError),
}

/// Builds the connector of one app: from the app's settings, its decrypted secret, and the
/// capabilities its last connection test found (`None`: not tested, or tested anew now).
/// Building connects to nothing.
pub trait ConnectorFactory: Send + Sync {
    fn build(
        &self,
        app: &App,
        secret: Secret,
        capabilities: Option<Capabilities>,
        settings: &ConnectorSettings,
    ) -> Result<Arc<dyn Connector>, BuildError>;
}

/// The connector factories by connector kind.
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    factories: HashMap<ConnectorKind, Arc<dyn ConnectorFactory>>,
}

impl std::fmt::Debug for ConnectorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<&str> = self.factories.keys().map(|k| k.as_str()).collect();
        kinds.sort_unstable();
        f.debug_struct("ConnectorRegistry").field("kinds", &kinds).finish()
    }
}

impl ConnectorRegistry {
    /// A registry without any factory: every app's connector fails to build.
    pub fn new() -> Self {
        Self::default()
    }

    /// The connectors this build ships: SCIM.
    pub fn with_defaults() -> Self {
        Self::new().with(ConnectorKind::Scim, crate::scim_connector::ScimFactory)
    }

    /// Registers `factory` for apps of `kind` (replacing the one registered before).
    pub fn with(mut self, kind: ConnectorKind, factory: impl ConnectorFactory + 'static) -> Self {
        self.factories.insert(kind, Arc::new(factory));
        self
    }

    /// Whether apps of `kind` can have a connector.
    pub fn supports(&self, kind: ConnectorKind) -> bool {
        self.factories.contains_key(&kind)
    }

    /// The connector of `app`, built by the factory of its kind; an app whose kind has no
    /// factory gets a [`ErrorKind::Configuration`] error saying so.
    pub fn build(
        &self,
        app: &App,
        secret: Secret,
        capabilities: Option<Capabilities>,
        settings: &ConnectorSettings,
    ) -> Result<Arc<dyn Connector>, BuildError> {
        match self.factories.get(&app.connector) {
            Some(factory) => factory.build(app, secret, capabilities, settings),
            None => Err(ConnectorError::new(
                ErrorKind::Configuration,
                false,
                format!("this server has no connector for apps of kind \"{}\"", app.connector.as_str()),
                "Run a version of the server that supports this kind of app, or disable the app's provisioning.",
            )
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        let now = directory::now();
        App {
            id: uuid::Uuid::nil(),
            name: "Example".into(),
            description: None,
            connector: ConnectorKind::Scim,
            connection: directory::ConnectionConfig {
                base_url: "http://127.0.0.1:9/v2".into(),
                auth: directory::AuthConfig::Bearer {},
            },
            provisioning: directory::ProvisioningSettings::default(),
            parameters: None,
            rules: Vec::new(),
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    #[test]
    fn an_app_whose_kind_has_no_factory_gets_a_clear_error() {
        let secret = Secret::Bearer { token: "t0k3n-t0k3n".into() };
        let settings = ConnectorSettings::default();
        let e = match ConnectorRegistry::new().build(&app(), secret.clone(), None, &settings) {
            Err(BuildError::Connector(e)) => e,
            other => panic!("expected a connector error, got {:?}", other.map(|_| ())),
        };
        assert_eq!(e.kind, ErrorKind::Configuration);
        assert!(!e.retryable);
        assert!(e.reason.contains("no connector for apps of kind \"scim\""), "{}", e.reason);
        let registry = ConnectorRegistry::with_defaults();
        assert!(registry.supports(ConnectorKind::Scim));
        assert!(registry.build(&app(), secret, None, &settings).is_ok());
        assert_eq!(format!("{registry:?}"), "ConnectorRegistry { kinds: [\"scim\"] }");
    }

    #[test]
    fn a_secret_of_another_type_is_a_credential_error() {
        let secret = Secret::Basic { password: "pw".into() };
        let built = ConnectorRegistry::with_defaults().build(&app(), secret, None, &ConnectorSettings::default());
        assert!(matches!(built, Err(BuildError::Credential(_))));
    }
}
