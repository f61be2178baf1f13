//! Blast radius in the service layer: dry runs of every write that can change who has which
//! account, settings applied to existing accounts, the review of what the deprovisioning
//! guard held, and requeueing a rejected operation.

use directory::{Actor, App, Event, EventStatus, Parameter, Rule, UserStatus};
use engine::dry_run::{DryRun, WhatIf};
use serde_json::{Map, Value};
use store::{EventQuery, PageRequest};
use uuid::Uuid;

use super::Service;
use crate::error::{Error, Result};

impl Service {
    async fn dry(&self, what: WhatIf) -> Result<DryRun> {
        Ok(self.engine.dry_run(what, directory::now()).await?)
    }

    /// What a `PATCH` of a user would do; nothing is written.
    pub async fn dry_run_patch_user(
        &self,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
    ) -> Result<DryRun> {
        let (_, updated) = self.patched_user(id, patch, if_match).await?;
        self.dry(WhatIf::User(Box::new(updated))).await
    }

    /// What deleting a user would do; nothing is written.
    pub async fn dry_run_delete_user(&self, id: Uuid, if_match: Option<i64>) -> Result<DryRun> {
        let mut user = self.get_user(id).await?;
        super::check_if_match(user.version, if_match)?;
        user.status = UserStatus::Deleted;
        self.dry(WhatIf::User(Box::new(user))).await
    }

    /// What deleting a role would do; nothing is written.
    pub async fn dry_run_delete_role(&self, id: Uuid, if_match: Option<i64>) -> Result<DryRun> {
        let role = self.get_role(id).await?;
        super::check_if_match(role.version, if_match)?;
        self.dry(WhatIf::RoleDeleted { role: id }).await
    }

    /// What adding a user to (or removing them from) a role would do; nothing is written.
    pub async fn dry_run_membership(&self, role: Uuid, user: Uuid, add: bool) -> Result<DryRun> {
        self.get_role(role).await?;
        if self.store.get_user(user).await?.is_none() {
            return Err(Error::NotFound("user"));
        }
        self.dry(WhatIf::Membership { role, user, add }).await
    }

    /// What granting an app to a role (or no longer) would do; nothing is written.
    pub async fn dry_run_role_grant(&self, role: Uuid, app: Uuid, add: bool) -> Result<DryRun> {
        self.get_role(role).await?;
        self.get_app(app).await?;
        self.dry(WhatIf::RoleGrant { role, app, add }).await
    }

    /// What a `PATCH` of an app would do (and applying its settings to existing accounts,
    /// when asked); nothing is written.
    pub async fn dry_run_patch_app(
        &self,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
        apply_to_existing: bool,
    ) -> Result<DryRun> {
        let (_, updated, _) = self.patched_app(id, patch, if_match).await?;
        self.dry(WhatIf::App { app: Box::new(updated), apply_to_existing }).await
    }

    /// What saving parameters and/or rules would do; nothing is written.
    pub async fn dry_run_mapping(
        &self,
        id: Uuid,
        parameters: Option<Vec<Parameter>>,
        rules: Option<Vec<Rule>>,
        if_match: Option<i64>,
    ) -> Result<DryRun> {
        self.validate_mapping(parameters.as_deref(), rules.as_deref()).await?;
        let mut app: App = self.get_app(id).await?;
        super::check_if_match(app.version, if_match)?;
        if let Some(p) = parameters {
            app.parameters = Some(p);
        }
        if let Some(r) = rules {
            app.rules = r;
        }
        self.dry(WhatIf::App { app: Box::new(app), apply_to_existing: false }).await
    }

    /// Applies the app's `on_suspend` / `on_delete` to the accounts of users who already left
    /// or were suspended (through the planner, so through the deprovisioning guard).
    pub async fn apply_to_existing(&self, actor: &Actor, app: Uuid) -> Result<u64> {
        self.get_app(app).await?;
        let n = self.store.apply_settings_to_existing(app, actor).await?;
        self.engine.changed();
        Ok(n)
    }

    /// The app's operations held by the deprovisioning guard, oldest first.
    pub async fn held_events(&self, app: Uuid) -> Result<Vec<Event>> {
        self.get_app(app).await?;
        let mut out = Vec::new();
        let mut page = PageRequest { limit: store::MAX_PAGE, cursor: None };
        loop {
            let q = EventQuery {
                app: Some(app),
                status: Some(EventStatus::Held),
                page: page.clone(),
                ..Default::default()
            };
            let p = self.store.list_events(&q).await?;
            out.extend(p.items);
            match p.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Allows (`allow`) or rejects held operations of an app: those named, or all of them
    /// (`None`). An id that is not a held operation of the app is refused (409, naming it)
    /// before anything changes.
    pub async fn decide_held(
        &self,
        actor: &Actor,
        app_id: Uuid,
        ids: Option<Vec<Uuid>>,
        allow: bool,
    ) -> Result<Vec<Event>> {
        let app = self.get_app(app_id).await?;
        let held = self.held_events(app_id).await?;
        let chosen: Vec<Event> = match ids {
            None => held,
            Some(ids) => {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    match held.iter().find(|e| e.id == id) {
                        Some(e) => out.push(e.clone()),
                        None => {
                            return Err(Error::InvalidState(format!(
                                "event {id} is not held for review in {}",
                                app.name
                            )))
                        }
                    }
                }
                out
            }
        };
        let mut done = Vec::with_capacity(chosen.len());
        for e in chosen {
            let event = if allow {
                let needs_approval = engine::plan::needs_approval(&app, e.action);
                self.store.allow_held_operation(e.id, needs_approval, actor).await?
            } else {
                self.store.reject_operation(e.id, actor).await?
            };
            done.push(event);
        }
        self.engine.wake_workers();
        Ok(done)
    }

    /// "Requeue" a rejected operation: the pair is planned again, as the app's settings say.
    pub async fn requeue_event(&self, actor: &Actor, id: Uuid) -> Result<Event> {
        self.get_event(id).await?;
        let event = self.store.requeue_operation(id, actor).await?;
        self.engine.changed();
        Ok(event)
    }
}

/// The `cause` filter of event listings: one of the kinds operations record.
pub fn cause_filter(kind: Option<String>) -> Result<Option<String>> {
    match kind {
        Some(k) if !directory::CAUSE_KINDS.contains(&k.as_str()) => {
            Err(Error::Invalid(directory::ValidationErrors::single(
                "cause",
                format!("must be one of {}", directory::CAUSE_KINDS.join(", ")),
            )))
        }
        other => Ok(other),
    }
}
