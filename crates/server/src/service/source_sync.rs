//! The writes of directory-source syncs. The engine's source runner reads the directory and
//! plans each page of a sync, then hands the page here through [`engine::DirectoryWriter`]
//! (it writes no user itself); this is where the page meets the rules every writer of users
//! follows:
//!
//! - **The same validation** as an admin's write ([`super::user_problems`]). A write with a
//!   problem in a value it changes is skipped, with the reason in the sync's errors (the rest
//!   of the page is written). A problem in a value the user already had is not the sync's
//!   doing and does not hold the write back: a suspension always goes through.
//! - **Managers**: a manager that is nobody (or deleted), the user themself, or that makes a
//!   cycle (counting the page's own writes) is left out, as the planner leaves out other values
//!   that are not valid here: the user keeps the manager they had (a new user has none), and
//!   the sync notes it. An update left with nothing to change is not written.
//! - **The same audit entries and change feed**: the store records each write with its
//!   [`directory::AuditAction`], in one transaction per page
//!   ([`store::SourceStore::apply_source_batch`], the primitive only this room calls).
//! - The engine is woken after the page, as after every directory write.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use directory::{
    Actor, AttributeDef, DirectorySource, LinkedUser, SkippedWrite, SourceBatch, SourceLink, SourceUpdate, User,
    UserInput, ValidationErrors,
};
use engine::{BatchOutcome, DirectoryWriter, Engine, EngineError};
use serde_json::{Map, Value};
use store::{Store, StoreError};
use uuid::Uuid;

use super::sources::merge_patch_between;
use super::{user_problems, People};

/// Writes the pages of directory-source syncs (see the module's docs).
pub(crate) struct SourceWriter {
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
}

impl SourceWriter {
    pub(crate) fn new(store: Arc<dyn Store>, engine: Arc<Engine>) -> Self {
        Self { store, engine }
    }
}

/// What the rules make of one user write.
enum Verdict {
    /// Written (possibly with its manager left out, then with a note).
    Write(Option<String>),
    /// Not written: a value it changes is refused.
    Skip(String),
}

/// Whether a merge patch changes `field` (`attributes.name` for a custom attribute).
fn touches(patch: &Map<String, Value>, field: &str) -> bool {
    match field.strip_prefix("attributes.") {
        Some(name) => patch.get("attributes").and_then(Value::as_object).is_some_and(|a| a.contains_key(name)),
        None => patch.contains_key(field),
    }
}

/// The fields `after` changes from `before` (everything, for a new user).
fn changed(before: Option<&User>, after: &User) -> Map<String, Value> {
    let doc = |u: &User| serde_json::to_value(UserInput::from_user(u)).unwrap_or(Value::Null);
    match before {
        Some(b) => merge_patch_between(&doc(b), &doc(after)),
        None => doc(after).as_object().cloned().unwrap_or_default(),
    }
}

/// Applies the rules to one user write of a page: `user` is the new state (its manager may be
/// put back), `before` the stored one (`None`: a new user).
async fn judge(
    people: &mut People<'_>,
    defs: &[AttributeDef],
    user: &mut User,
    before: Option<&User>,
    link: &SourceLink,
) -> Result<Verdict, StoreError> {
    let patch = changed(before, user);
    let mut input = UserInput::from_user(user);
    let problems = user_problems(people, defs, &mut input, Some(user.id), touches(&patch, "manager_id")).await?;
    let (manager, others): (Vec<_>, Vec<_>) =
        problems.0.into_iter().filter(|e| touches(&patch, &e.field)).partition(|e| e.field == "manager_id");
    if !others.is_empty() {
        return Ok(Verdict::Skip(ValidationErrors(others).to_string()));
    }
    let Some(problem) = manager.into_iter().next() else { return Ok(Verdict::Write(None)) };
    // The manager the user had, unless it is no longer possible either (the page's other
    // writes may have changed the chain).
    user.manager_id = before.and_then(|b| b.manager_id);
    if let Some(kept) = user.manager_id {
        if people.manager_problem(Some(user.id), kept).await?.is_some() {
            user.manager_id = None;
        }
    }
    people.assume(user);
    Ok(Verdict::Write(Some(format!("{}: manager_id {} (left out)", link.dn, problem.reason))))
}

#[async_trait]
impl DirectoryWriter for SourceWriter {
    async fn apply_source_batch(
        &self,
        source: &DirectorySource,
        mut batch: SourceBatch,
        actor: &Actor,
    ) -> Result<BatchOutcome, EngineError> {
        let defs = self.store.list_attribute_defs().await?;
        let ids: Vec<String> = batch.updates.iter().map(|u| u.link.stable_id.clone()).collect();
        let stored: HashMap<Uuid, LinkedUser> =
            self.store.linked_users(source.id, &ids).await?.into_iter().map(|l| (l.user.id, l)).collect();
        // Managers are checked against the store as this page leaves it.
        let mut people = People::new(self.store.as_ref());
        for (user, _) in &batch.creates {
            people.assume(user);
        }
        for u in &batch.updates {
            people.assume(&u.user);
        }
        let mut outcome = BatchOutcome::default();
        let skip = |outcome: &mut BatchOutcome, user: &User, link: &SourceLink, reason: String| {
            outcome.skipped.push(SkippedWrite { user_id: user.id, stable_id: link.stable_id.clone(), reason });
        };

        let mut creates = Vec::with_capacity(batch.creates.len());
        for (mut user, link) in std::mem::take(&mut batch.creates) {
            match judge(&mut people, &defs, &mut user, None, &link).await? {
                Verdict::Write(note) => {
                    outcome.notes.extend(note);
                    creates.push((user, link));
                }
                Verdict::Skip(reason) => {
                    people.forget(user.id);
                    skip(&mut outcome, &user, &link, reason);
                }
            }
        }
        let mut updates = Vec::with_capacity(batch.updates.len());
        for SourceUpdate { mut user, expected_version, link } in std::mem::take(&mut batch.updates) {
            let before = stored.get(&user.id).filter(|b| b.user.version == expected_version);
            match judge(&mut people, &defs, &mut user, before.map(|b| &b.user), &link).await? {
                Verdict::Write(note) => {
                    outcome.notes.extend(note);
                    let same = before.is_some_and(|b| {
                        UserInput::from_user(&b.user) == UserInput::from_user(&user) && b.link == link
                    });
                    if same {
                        outcome.unchanged.push(user.id);
                    } else {
                        updates.push(SourceUpdate { user, expected_version, link });
                    }
                }
                Verdict::Skip(reason) => {
                    if let Some(b) = before {
                        people.assume(&b.user);
                    }
                    skip(&mut outcome, &user, &link, reason);
                }
            }
        }
        batch.creates = creates;
        batch.updates = updates;

        #[expect(clippy::disallowed_methods, reason = "the one caller: a sync's page, after the rules above")]
        let skipped = self.store.apply_source_batch(source.id, &batch, actor).await?;
        outcome.skipped.extend(skipped);
        self.engine.changed();
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::touches;

    #[test]
    fn a_patch_touches_the_fields_it_names_and_the_custom_attributes_in_it() {
        let patch = json!({"manager_id": null, "attributes": {"site": "A"}});
        let patch = patch.as_object().unwrap();
        assert!(touches(patch, "manager_id") && touches(patch, "attributes.site") && touches(patch, "attributes"));
        assert!(!touches(patch, "email") && !touches(patch, "attributes.floor"));
    }
}
