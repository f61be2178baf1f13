//! Directory sources (LDAP / Active Directory): their settings, syncs, and the rule that a
//! sourced user's sourced fields are changed in the directory, not here.

use std::sync::Arc;

use directory::{Actor, DirectorySource, SourceInput, SourceLink, SourceSync, SyncMode, User, ValidationErrors};
use serde_json::{Map, Value};
use store::sources::encrypt_password;
use store::StoreError;
use uuid::Uuid;

use super::{check_if_match, merge, retry_write, to_doc, Service};
use crate::error::{Error, Result};
use crate::extract::from_value;

/// At most this many sources.
const MAX_SOURCES: usize = 100;

impl Service {
    /// The runner of directory syncs (started with the engine by `serve`).
    pub fn sources(&self) -> &Arc<engine::SourceSyncer> {
        &self.sources
    }

    /// `current`: the stored source a change applies to (`None` when creating).
    async fn validate_source(&self, input: &mut SourceInput, current: Option<&DirectorySource>) -> Result<()> {
        let defs = self.store.list_attribute_defs().await?;
        let mut errors = match input.normalize_and_validate(&defs, current.is_none()) {
            Ok(()) => ValidationErrors::default(),
            Err(e) => e,
        };
        if let Some(current) = current {
            input.check_password_bound(current, &mut errors);
        }
        for (i, g) in input.groups.iter().enumerate() {
            if self.store.get_role(g.role_id).await?.is_none() {
                errors.push(format!("groups[{i}].role_id"), "refers to no role");
            }
        }
        Ok(errors.into_result()?)
    }

    fn duplicate_name(e: StoreError) -> Error {
        match e {
            StoreError::Duplicate { .. } => {
                Error::Conflict { field: "name".into(), reason: "is already the name of another source".into() }
            }
            other => other.into(),
        }
    }

    pub async fn create_source(&self, actor: &Actor, mut input: SourceInput) -> Result<DirectorySource> {
        self.validate_source(&mut input, None).await?;
        if self.store.list_sources().await?.len() >= MAX_SOURCES {
            return Err(Error::InvalidState(format!("at most {MAX_SOURCES} sources can be configured")));
        }
        let password = input.bind_password.take().unwrap_or_default();
        let now = directory::now();
        let source = input.into_source(Uuid::now_v7(), now, now, 1);
        let ct = encrypt_password(&self.keyring, source.id, &password).map_err(Error::internal)?;
        self.store.create_source(&source, &ct, actor).await.map_err(Self::duplicate_name)?;
        Ok(source)
    }

    pub async fn get_source(&self, id: Uuid) -> Result<DirectorySource> {
        self.store.get_source(id).await?.ok_or(Error::NotFound("source"))
    }

    pub async fn list_sources(&self) -> Result<Vec<DirectorySource>> {
        Ok(self.store.list_sources().await?)
    }

    pub async fn patch_source(
        &self,
        actor: &Actor,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
    ) -> Result<DirectorySource> {
        retry_write("source", if_match.is_some(), || async {
            let current = self.get_source(id).await?;
            check_if_match(current.version, if_match)?;
            let doc =
                merge(to_doc(&SourceInput::from_source(&current))?, patch, directory::source::READ_ONLY_SOURCE_FIELDS)?;
            let mut input: SourceInput = from_value(doc)?;
            self.validate_source(&mut input, Some(&current)).await?;
            let password = match input.bind_password.take() {
                Some(p) => Some(encrypt_password(&self.keyring, id, &p).map_err(Error::internal)?),
                None => None,
            };
            let updated = input.into_source(id, current.created_at, directory::now(), current.version + 1);
            self.store
                .update_source(&updated, password.as_deref(), current.version, actor)
                .await
                .map_err(Self::duplicate_name)?;
            Ok(updated)
        })
        .await
    }

    pub async fn delete_source(&self, actor: &Actor, id: Uuid, if_match: Option<i64>) -> Result<()> {
        self.get_source(id).await?;
        Ok(self.store.delete_source(id, if_match, actor).await?)
    }

    /// What adding this source would do: validated as usual, nothing saved; the directory is
    /// read as its first (full) sync would.
    pub async fn dry_run_create_source(&self, mut input: SourceInput) -> Result<engine::SyncDryRun> {
        self.validate_source(&mut input, None).await?;
        let sources = self.store.list_sources().await?;
        if sources.len() >= MAX_SOURCES {
            return Err(Error::InvalidState(format!("at most {MAX_SOURCES} sources can be configured")));
        }
        if sources.iter().any(|s| s.name.to_lowercase() == input.name.to_lowercase()) {
            return Err(Self::duplicate_name(StoreError::Duplicate { field: "name" }));
        }
        let password = input.bind_password.take().unwrap_or_default();
        let now = directory::now();
        let source = input.into_source(Uuid::now_v7(), now, now, 1);
        Ok(self.sources.dry_run(&source, &password, Some(SyncMode::Full)).await?)
    }

    /// What a `PATCH` of a source would do: validated as usual, nothing saved; the directory is
    /// read as a full sync with the changed settings would.
    pub async fn dry_run_patch_source(
        &self,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
    ) -> Result<engine::SyncDryRun> {
        let current = self.get_source(id).await?;
        check_if_match(current.version, if_match)?;
        let doc =
            merge(to_doc(&SourceInput::from_source(&current))?, patch, directory::source::READ_ONLY_SOURCE_FIELDS)?;
        let mut input: SourceInput = from_value(doc)?;
        // A moved url needs the password again: the stored one is not read against a new host.
        self.validate_source(&mut input, Some(&current)).await?;
        let password = match input.bind_password.take() {
            Some(p) => p,
            None => self.sources.password(id).await?,
        };
        let updated = input.into_source(id, current.created_at, directory::now(), current.version + 1);
        Ok(self.sources.dry_run(&updated, &password, Some(SyncMode::Full)).await?)
    }

    /// What deleting a source would do: nothing to any account (its users stay, editable here).
    pub async fn dry_run_delete_source(&self, id: Uuid, if_match: Option<i64>) -> Result<engine::dry_run::DryRun> {
        let current = self.get_source(id).await?;
        check_if_match(current.version, if_match)?;
        Ok(engine::dry_run::DryRun::default())
    }

    /// What a sync of the source would do now (`mode` `None`: full); nothing is imported and
    /// no sync is recorded.
    pub async fn dry_run_source_sync(&self, id: Uuid, mode: Option<SyncMode>) -> Result<engine::SyncDryRun> {
        let source = self.get_source(id).await?;
        if !source.enabled {
            return Err(Error::InvalidState(format!("source {:?} is disabled; enable it to sync", source.name)));
        }
        let password = self.sources.password(id).await?;
        Ok(self.sources.dry_run(&source, &password, Some(mode.unwrap_or(SyncMode::Full))).await?)
    }

    /// Connects, binds and reads one page: checks a source's settings.
    pub async fn test_source(&self, actor: &Actor, id: Uuid) -> Result<usize> {
        self.get_source(id).await?;
        let result = self.sources.test_connection(id).await;
        let details = match &result {
            Ok(n) => serde_json::json!({"ok": true, "entries": n}),
            Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
        };
        self.store.append_audit(actor, "source.test_connection", "source", &id.to_string(), Some(details)).await?;
        Ok(result?)
    }

    /// Starts a sync in the background (`mode` `None`: full).
    pub async fn start_source_sync(&self, actor: &Actor, id: Uuid, mode: Option<SyncMode>) -> Result<SourceSync> {
        self.get_source(id).await?;
        Ok(self.sources.start_sync(id, Some(mode.unwrap_or(SyncMode::Full)), "manual", actor).await?)
    }

    pub async fn get_source_sync(&self, source: Uuid, sync: Uuid) -> Result<SourceSync> {
        self.get_source(source).await?;
        self.store.get_source_sync(source, sync).await?.ok_or(Error::NotFound("sync"))
    }

    pub async fn list_source_syncs(&self, source: Uuid, limit: u32) -> Result<Vec<SourceSync>> {
        self.get_source(source).await?;
        Ok(self.store.list_source_syncs(source, limit).await?)
    }

    pub async fn confirm_source_sync(&self, actor: &Actor, source: Uuid, sync: Uuid) -> Result<SourceSync> {
        self.get_source_sync(source, sync).await?;
        Ok(self.sources.confirm(source, sync, actor).await?)
    }

    /// The source entry a user was imported from (for sign-in against the directory).
    pub async fn source_link_of_user(&self, user: Uuid) -> Result<Option<(DirectorySource, SourceLink)>> {
        let Some(link) = self.store.source_link_of_user(user).await? else { return Ok(None) };
        Ok(self.store.get_source(link.source_id).await?.map(|s| (s, link)))
    }

    /// The fields of a user that come from a directory source (read-only here), and the
    /// source's name; empty for other users.
    pub async fn sourced_fields(&self, user: &User) -> Result<(Vec<String>, Option<String>)> {
        if user.source != directory::UserSource::Ldap {
            return Ok((Vec::new(), None));
        }
        match self.source_link_of_user(user.id).await? {
            Some((source, _)) => Ok((source.sourced_fields(), Some(source.name))),
            None => Ok((Vec::new(), None)),
        }
    }

    /// Refuses a patch of a field that a directory source fills (sending the value the user
    /// already has is harmless).
    pub(super) async fn check_sourced_patch(&self, user: &User, patch: &Map<String, Value>) -> Result<()> {
        let (fields, source) = self.sourced_fields(user).await?;
        let Some(source) = source else { return Ok(()) };
        let current = to_doc(&directory::UserInput::from_user(user))?;
        // Profile paths a source fills (`phone_numbers[type eq "mobile"].value`): compared by
        // their value before and after, whatever else of the attribute changes.
        let paths: Vec<(String, directory::UserPath)> = fields
            .iter()
            .filter_map(|f| match directory::UserPath::parse(f) {
                Some(Ok(p))
                    if patch.contains_key(&p.attr)
                        || (p.attr == "emails" && patch.contains_key("email"))
                        || (p.attr == "phone_numbers" && patch.contains_key("phone")) =>
                {
                    Some((f.clone(), p))
                }
                _ => None,
            })
            .collect();
        if !paths.is_empty() {
            // What the write would store is compared (`email` and `phone` set the values
            // standing for their lists).
            if let Ok(mut next) = super::patched_input(user, patch) {
                // Only the normalised values matter here; problems are the validation's to say.
                let _ = next.normalize_and_validate(&[]);
                for (field, path) in paths {
                    if user.profile.get(&path) != next.profile.get(&path) {
                        return Err(Error::SourceOwned { field, directory_source: source });
                    }
                }
            }
        }
        for (key, value) in patch {
            if directory::UserPath::parse(key).is_some() {
                continue;
            }
            let touched: Vec<String> = if key == "attributes" {
                match value {
                    Value::Object(map) => map.keys().map(|k| format!("attributes.{k}")).collect(),
                    _ => vec!["attributes".into()],
                }
            } else {
                vec![key.clone()]
            };
            for field in touched {
                let sourced = fields.contains(&field)
                    || (field == "attributes" && fields.iter().any(|f| f.starts_with("attributes.")));
                let same = match field.strip_prefix("attributes.") {
                    Some(name) => value.get(name) == current.get("attributes").and_then(|a| a.get(name)),
                    None => current.get(&field) == Some(value) || (value.is_null() && current.get(&field).is_none()),
                };
                if sourced && !same {
                    return Err(Error::SourceOwned { field, directory_source: source });
                }
            }
        }
        Ok(())
    }

    /// Refuses a new state of a user (a SCIM PUT or PATCH) that changes a field a directory
    /// source fills: the same rule as for an admin's patch.
    pub(super) async fn check_sourced_change(&self, user: &User, next: &directory::UserInput) -> Result<()> {
        let before = to_doc(&directory::UserInput::from_user(user))?;
        let after = to_doc(next)?;
        let patch = merge_patch_between(&before, &after);
        self.check_sourced_patch(user, &patch).await
    }
}

/// The members of a JSON merge patch (RFC 7396) that takes `before` to `after`, one level into
/// `attributes` (a removed member is `null`).
pub(super) fn merge_patch_between(before: &Value, after: &Value) -> Map<String, Value> {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut patch = Map::new();
    for (key, value) in a {
        if key == "attributes" {
            let old = b.get(key).and_then(Value::as_object).unwrap_or(&empty);
            let new = value.as_object().unwrap_or(&empty);
            let mut changed = Map::new();
            for (name, v) in new {
                if old.get(name) != Some(v) {
                    changed.insert(name.clone(), v.clone());
                }
            }
            for name in old.keys().filter(|n| !new.contains_key(*n)) {
                changed.insert(name.clone(), Value::Null);
            }
            if !changed.is_empty() {
                patch.insert(key.clone(), Value::Object(changed));
            }
        } else if b.get(key) != Some(value) {
            patch.insert(key.clone(), value.clone());
        }
    }
    for key in b.keys().filter(|k| !a.contains_key(*k)) {
        patch.insert(key.clone(), Value::Null);
    }
    patch
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge_patch_between;

    #[test]
    fn the_patch_between_two_users_names_only_what_changed() {
        let before = json!({"username": "ada", "title": "Eng", "phone": "1", "attributes": {"site": "A", "cc": "7"}});
        let after = json!({"username": "ada", "title": "CTO", "attributes": {"site": "A", "floor": "3"}});
        let patch = merge_patch_between(&before, &after);
        assert_eq!(
            serde_json::Value::Object(patch),
            json!({"title": "CTO", "phone": null, "attributes": {"floor": "3", "cc": null}})
        );
    }
}
