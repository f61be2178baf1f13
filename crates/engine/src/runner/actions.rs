//! The admin actions that need an app: read its accounts, check one exists, test the
//! connection (and keep what the app supports), and "Provision now" for one user.
//!
//! They go through the connector cache and the store like the loops do.

use std::time::Duration;

use connectors::Capabilities;
use directory::{Event, EventStatus, PlanItem, PlanWrite};
use serde::Serialize;
use store::{EventQuery, PageRequest as StorePage};
use uuid::Uuid;

use super::{Engine, EngineError};
use crate::guard::{Causes, Guard, Why};
use crate::plan::plan_items;

/// One step of "Provision now".
#[derive(Debug, Clone, Serialize)]
pub struct ProvisionStep {
    pub app_id: Uuid,
    pub app_name: String,
    /// What was done, in words.
    pub step: String,
    /// The event that carried it out, if any.
    pub event: Option<Event>,
}

impl Engine {
    /// Up to `limit` accounts read from the app itself (its first page), e.g. for an admin
    /// choosing the account to link with "Rematch login".
    pub async fn remote_accounts(&self, app_id: Uuid, limit: u32) -> Result<Vec<serde_json::Value>, EngineError> {
        let app = self.store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        let c = self.connector(&app).await?;
        let page = c
            .list_accounts(connectors::PageRequest::first(limit.clamp(1, 1000)))
            .await
            .map_err(|e| EngineError::app(&app, e))?;
        Ok(page.items.into_iter().map(|a| a.resource).collect())
    }

    /// Whether the app has an account with this id.
    pub async fn account_exists(&self, app_id: Uuid, remote_id: &str) -> Result<bool, EngineError> {
        let app = self.store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        let c = self.connector(&app).await?;
        c.get_account(remote_id).await.map(|a| a.is_some()).map_err(|e| EngineError::app(&app, e))
    }

    /// "Enable" / "Test connection": checks the credentials, learns what the app supports
    /// and keeps it for every later request.
    /// Its result is kept as the app's last connection test (see [`Engine::health`]).
    pub async fn test_connection(&self, app_id: Uuid) -> Result<Capabilities, EngineError> {
        let app = self.store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        self.connectors.forget(app_id);
        let tested = async {
            let c = self.build(&app, None).await?;
            c.test_connection().await.map_err(|e| EngineError::app(&app, e))
        }
        .await;
        let test = directory::ConnectionTest {
            ok: tested.is_ok(),
            at: directory::now(),
            message: tested.as_ref().err().map(ToString::to_string),
        };
        if let Err(e) = self.store.record_connection_test(app_id, &test).await {
            tracing::warn!(app = %app_id, error = %e.chain(), "cannot record the connection test's result");
        }
        let caps = tested?;
        let value = serde_json::to_value(caps).map_err(|e| EngineError::Credential(e.to_string()))?;
        self.store.set_app_capabilities(app_id, &value).await?;
        self.connectors.forget(app_id);
        Ok(caps)
    }

    /// "Provision now": plans the user's accounts at once, lets the workers run them, and
    /// answers with what happened (waiting at most `wait`).
    pub async fn provision_now(
        &self,
        user: Uuid,
        app: Option<Uuid>,
        wait: Duration,
        actor: Option<&directory::Actor>,
    ) -> Result<Vec<ProvisionStep>, EngineError> {
        let apps = match app {
            Some(a) => vec![a],
            None => self.store.apps_of_user(user).await?,
        };
        let pairs: Vec<(Uuid, Uuid)> = apps.iter().map(|a| (user, *a)).collect();
        let states = self.store.load_pairs(&pairs).await?;
        let started = directory::now();
        let causes = Causes::fixed(Why::new("admin", actor.map(crate::guard::actor_words), "of Provision now"));
        let mut guard = Guard::new(self.store.clone(), started);
        let mut items: Vec<(usize, PlanItem)> = Vec::new();
        let mut write = Vec::new();
        for (i, s) in states.iter().enumerate() {
            let mut planned: Vec<PlanItem> = plan_items(s).collect();
            causes.stamp(s, &mut planned);
            items.extend(
                planned
                    .iter()
                    .filter(|p| !matches!(p, PlanItem::Depart { .. } | PlanItem::Forget { .. }))
                    .map(|p| (i, p.clone())),
            );
            if let Some(app) = &s.app {
                write.extend(guard.admit(app, planned).await?);
            }
        }
        write.extend(guard.finish());
        self.store.apply_plan(&PlanWrite { cursor: None, items: write }).await?;
        self.worker_wake.notify_one();
        let deadline = tokio::time::Instant::now() + wait;
        let mut steps = Vec::new();
        for (i, s) in states.iter().enumerate() {
            let app_name = s.app.as_ref().map_or_else(String::new, |a| a.name.clone());
            let planned = items.iter().find(|(j, _)| *j == i).map(|(_, p)| p);
            let step = match planned {
                None | Some(PlanItem::Observe { .. } | PlanItem::Depart { .. } | PlanItem::Forget { .. }) => {
                    "in sync: nothing to do".to_owned()
                }
                Some(PlanItem::Enqueue { action, .. } | PlanItem::Replace { action, .. }) => {
                    format!("{} queued", action.as_str())
                }
                Some(PlanItem::Cancel { .. }) => "waiting operation cancelled: no longer needed".to_owned(),
                Some(PlanItem::Replan { .. }) => "an operation is running; planned again when it ends".to_owned(),
                Some(PlanItem::Fail { reason, .. }) => format!("failed: {reason}"),
            };
            let mut event = None;
            if matches!(planned, Some(PlanItem::Enqueue { .. } | PlanItem::Replace { .. })) {
                loop {
                    let q = EventQuery {
                        user: Some(user),
                        app: Some(s.app_id),
                        page: StorePage { limit: 1, cursor: None },
                        ..Default::default()
                    };
                    let latest = self.store.list_events(&q).await?.items.into_iter().next();
                    let settled = latest.as_ref().is_some_and(|e| {
                        e.updated_at >= started
                            && (e.status.is_final() || matches!(e.status, EventStatus::Pending | EventStatus::Held))
                    });
                    if settled || tokio::time::Instant::now() >= deadline {
                        event = latest;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            steps.push(ProvisionStep { app_id: s.app_id, app_name, step, event });
        }
        Ok(steps)
    }
}
