//! The connector cache: each app's [`Connector`], built by the [`ConnectorRegistry`] factory
//! of the app's kind from its settings, its decrypted secret and the capabilities its last
//! connection test found, and reused while the app's version is unchanged.
//!
//! The one place the engine turns an app into a connector; it names no concrete connector.
//! Each connector is built with the app's rate gate ([`crate::rate::RateGate`]), through which
//! every request to the app goes.
//! An app whose kind has no factory gets the registry's error, reported like any other
//! failure to build a connector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use connectors::{BuildError, Capabilities, Connector, ConnectorRegistry, ConnectorSettings};
use directory::App;
use uuid::Uuid;

use super::{lock, Engine, EngineConfig, EngineError};

/// The registry, what every connector is built with, and the connectors built so far.
pub(super) struct ConnectorCache {
    registry: ConnectorRegistry,
    settings: ConnectorSettings,
    /// Connectors by app, with the app version they were built for.
    built: Mutex<HashMap<Uuid, CachedConnector>>,
}

type CachedConnector = (i64, Arc<dyn Connector>);

impl ConnectorCache {
    pub(super) fn new(registry: ConnectorRegistry, config: &EngineConfig) -> Self {
        let settings = ConnectorSettings {
            request_timeout: config.request_timeout,
            backoff_base: config.http_backoff_base,
            targets: config.outbound.clone(),
            pacer: None,
        };
        Self { registry, settings, built: Mutex::new(HashMap::new()) }
    }

    /// Builds the app's connector anew next time it is asked for.
    pub(super) fn forget(&self, app: Uuid) {
        lock(&self.built).remove(&app);
    }
}

impl Engine {
    /// Uses `connector` for `app` at `version` instead of building one from its settings (for
    /// tests and tools that stand in for an app).
    #[doc(hidden)]
    pub fn use_connector(&self, app: Uuid, version: i64, connector: Arc<dyn Connector>) {
        lock(&self.connectors.built).insert(app, (version, connector));
    }

    /// A connector for the app, reused while the app is unchanged.
    pub(crate) async fn connector(&self, app: &App) -> Result<Arc<dyn Connector>, EngineError> {
        if let Some((version, c)) = lock(&self.connectors.built).get(&app.id) {
            if *version == app.version {
                return Ok(c.clone());
            }
        }
        let capabilities =
            self.store.get_app_capabilities(app.id).await?.and_then(|v| serde_json::from_value::<Capabilities>(v).ok());
        let c = self.build(app, capabilities).await?;
        lock(&self.connectors.built).insert(app.id, (app.version, c.clone()));
        Ok(c)
    }

    /// A new connector for the app (not kept), with `capabilities` as the app's.
    pub(super) async fn build(
        &self,
        app: &App,
        capabilities: Option<Capabilities>,
    ) -> Result<Arc<dyn Connector>, EngineError> {
        let ct = self.store.get_app_credential(app.id).await?.ok_or(EngineError::NotFound("app"))?;
        let secret = store::secrets::decrypt_credential(&self.keyring, app.id, &ct)
            .map_err(|e| EngineError::Credential(e.to_string()))?;
        let cache = &self.connectors;
        // Every request to the app goes through its rate gate (see `crate::rate`).
        let gate = crate::rate::RateGate::new(self.store.clone(), app, crate::rate::longest_wait(self.config.lease));
        let settings = ConnectorSettings { pacer: Some(Arc::new(gate)), ..cache.settings.clone() };
        cache.registry.build(app, secret, capabilities, &settings).map_err(|e| match e {
            BuildError::Credential(m) => EngineError::Credential(m),
            BuildError::Connector(e) => EngineError::app(app, e),
        })
    }
}
