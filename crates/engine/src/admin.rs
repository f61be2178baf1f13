//! What admins ask of the engine about an app's configuration: "Refresh" of entitlements,
//! the plan of a proposed change of parameters and rules, and the explanation of one
//! user's account.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use directory::{Action, App, Parameter, Rule};
use serde::Serialize;
use serde_json::Value;
use store::PageRequest as StorePage;
use uuid::Uuid;

use crate::dry_run::WhatIf;
use crate::mapping::{app_view, evaluate, groups_of};
use crate::runner::{Engine, EngineError};

/// What a change of parameters and rules would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanPreview {
    pub create: u64,
    pub update: u64,
    /// Accounts that would be suspended or deleted.
    pub deprovision: u64,
    pub suspend: u64,
    pub delete: u64,
    /// Suspensions and deletions the deprovisioning guard would hold.
    pub held: u64,
    pub group_add: u64,
    pub group_remove: u64,
    /// Users whose account could not be computed (e.g. a required value is empty).
    pub invalid: u64,
    /// Some of the affected users, with the values before and after.
    pub sample: Vec<PreviewSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviewSample {
    pub user_id: Uuid,
    pub username: String,
    pub action: Option<Action>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub reason: Option<String>,
}

/// The account a user should have in an app, and where each value comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub in_scope: bool,
    /// Why the user is out of scope, when they are.
    pub reason: Option<String>,
    pub account: Value,
    pub provenance: BTreeMap<String, String>,
    /// The groups the account should belong to.
    pub groups: Vec<String>,
}

/// A refresh that has not finished after this long is considered dead and may be restarted.
const REFRESH_STALE: Duration = Duration::from_secs(3600);

impl Engine {
    /// Starts importing the app's groups in the background; `false` when a refresh is
    /// already running. Progress: [`store::EntitlementStore::entitlement_refresh`].
    pub async fn refresh_entitlements(self: &Arc<Self>, app_id: Uuid) -> Result<bool, EngineError> {
        let store = self.store();
        let app = store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        let connector = self.connector(&app).await?;
        if !store.begin_entitlement_refresh(app_id, REFRESH_STALE).await? {
            return Ok(false);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let store = me.store();
            let page_size = store
                .get_app_capabilities(app_id)
                .await
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_value::<connectors::Capabilities>(v).ok())
                .and_then(|c| c.filter_max_results)
                .unwrap_or(100)
                // Pages of at most 200, so that progress shows on large apps.
                .clamp(1, 200);
            // All or a failure: every group is read (and checked) before any is recorded.
            let mut error = None;
            let mut read = None;
            match connector.scan(true, page_size).await {
                Ok(scan) if scan.consistent() => {
                    let items: Vec<(String, String)> = scan
                        .items
                        .iter()
                        .map(|g| {
                            let name = g.resource.get("displayName").and_then(Value::as_str).unwrap_or(&g.id);
                            (g.id.clone(), name.to_owned())
                        })
                        .collect();
                    let n = items.len() as i64;
                    // Progress in steps, never more fetched than there are.
                    let mut fetched = 0i64;
                    for chunk in items.chunks(200) {
                        fetched += chunk.len() as i64;
                        if let Err(e) = store.record_entitlements(app_id, "group", chunk, fetched, Some(n)).await {
                            error = Some(format!("cannot record the groups: {e}"));
                            break;
                        }
                    }
                    if items.is_empty() {
                        if let Err(e) = store.record_entitlements(app_id, "group", &[], 0, Some(0)).await {
                            error = Some(format!("cannot record the groups: {e}"));
                        }
                    }
                    read = Some(scan.report);
                }
                Ok(scan) => {
                    error = Some(format!(
                        "{} {}",
                        scan.report.failure_reason(&app.name, "groups"),
                        scan.report.recommended_action()
                    ));
                    read = Some(scan.report);
                }
                Err(e) => error = Some(EngineError::app(&app, e).to_string()),
            }
            if let Some(read) = read {
                let result = serde_json::json!({"status": if error.is_some() { "failed" } else { "done" },
                    "strategy": read.strategy, "contradictions": read.contradictions, "pages_read": read.pages,
                    "reason": error});
                if let Err(e) = store.record_app_read(app_id, "refresh", &result).await {
                    tracing::warn!(app = %app_id, error = %e.chain(), "cannot record how the refresh read the app");
                }
            }
            if let Err(e) = store.finish_entitlement_refresh(app_id, "group", error.as_deref()).await {
                tracing::warn!(app = %app_id, error = %e.chain(), "cannot record the end of the entitlement refresh");
            }
        });
        Ok(true)
    }

    /// What saving `parameters`, `rules` and/or `provisioning` (the current ones where `None`)
    /// would do to the accounts of every user the app concerns, if saved at `now`: a dry run
    /// ([`Engine::dry_run`]). Nothing is written.
    pub async fn preview(
        &self,
        app_id: Uuid,
        parameters: Option<Vec<Parameter>>,
        rules: Option<Vec<Rule>>,
        provisioning: Option<directory::ProvisioningSettings>,
        now: DateTime<Utc>,
    ) -> Result<PlanPreview, EngineError> {
        let store = self.store();
        let mut app = store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        if let Some(p) = parameters {
            app.parameters = Some(p);
        }
        if let Some(r) = rules {
            app.rules = r;
        }
        if let Some(p) = provisioning {
            app.provisioning = p;
        }
        let run = self.dry_run(WhatIf::App { app: Box::new(app), apply_to_existing: false }, now).await?;
        let e = run.effects.into_iter().find(|e| e.app_id == app_id).unwrap_or_default();
        Ok(PlanPreview {
            create: e.create,
            update: e.update,
            deprovision: e.suspend + e.delete,
            suspend: e.suspend,
            delete: e.delete,
            held: e.held,
            group_add: e.group_add,
            group_remove: e.group_remove,
            invalid: e.invalid,
            sample: e
                .sample
                .into_iter()
                .map(|s| PreviewSample {
                    user_id: s.user_id,
                    username: s.username,
                    action: s.action,
                    before: s.before,
                    after: s.after,
                    reason: s.reason,
                })
                .collect(),
        })
    }

    /// The account `user` should have in `app`, and which parameter or rule produced each value.
    pub async fn explain(&self, user_id: Uuid, app_id: Uuid) -> Result<Explanation, EngineError> {
        let store = self.store();
        let state =
            store.load_pairs(&[(user_id, app_id)]).await?.into_iter().next().ok_or(EngineError::NotFound("user"))?;
        let user = state.user.as_ref().ok_or(EngineError::NotFound("user"))?;
        let app: &App = state.app.as_deref().ok_or(EngineError::NotFound("app"))?;
        let active = user.status == directory::UserStatus::Active;
        let e = evaluate(user, &state.roles, app, active);
        let reason = if !app.provisioning.enabled {
            Some(format!("Provisioning is disabled for {}.", app.name))
        } else if !state.granted {
            Some(format!("None of the user's roles grants {}.", app.name))
        } else if !e.in_scope {
            Some(format!("Out of scope by {}.", e.provenance.get("scope").map_or("a rule", String::as_str)))
        } else if !e.missing_required.is_empty() {
            Some(format!("Required values are empty: {}.", e.missing_required.join(", ")))
        } else {
            None
        };
        Ok(Explanation {
            in_scope: reason.is_none(),
            reason,
            account: app_view(&e.resource),
            groups: groups_of(&e.resource).into_iter().collect(),
            provenance: e.provenance,
        })
    }
}

impl Engine {
    /// Lists an app's entitlements with the latest refresh's progress.
    pub async fn entitlements(
        &self,
        app_id: Uuid,
        page: &StorePage,
    ) -> Result<(Option<directory::EntitlementRefresh>, directory::Page<directory::Entitlement>), EngineError> {
        let store = self.store();
        store.get_app(app_id).await?.ok_or(EngineError::NotFound("app"))?;
        Ok((store.entitlement_refresh(app_id).await?, store.list_entitlements(app_id, page).await?))
    }
}
