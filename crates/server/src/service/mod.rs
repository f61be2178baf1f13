//! The service layer: every operation an admin can do, whatever the interface (REST API,
//! console, CLI), and the writes of the inbound SCIM server, of directory-source syncs and of
//! the SAML IdP's end users. **Every writer of users, roles and memberships goes through
//! here**: one validation ([`user_problems`]), one retry helper (`write`), one audit shape
//! (the store records each write with its [`directory::AuditAction`], with the change feed, in
//! the write's transaction). It also enforces optimistic concurrency and encrypts secrets.
//!
//! Laid out like `crate::api`: users, roles, apps, mapping and provisioning here; directory
//! sources in `sources`, the writes of their syncs in `source_sync` (the engine's
//! [`engine::DirectoryWriter`]), SAML in [`saml`], SCIM clients and SCIM writes in
//! `inbound_scim`, dry runs and held operations in [`guard`], the one retry helper in `write`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use directory::{
    Actor, App, AppInput, AttributeDef, AttributeDefInput, AuditEntry, Page, Role, RoleInput, Secret, User, UserInput,
    UserSource, UserStatus, ValidationErrors,
};
use serde_json::{Map, Value};
use store::secrets::Keyring;
use store::{AuditQuery, NameQuery, PageRequest, Store, StoreError, TokenRecord, UserQuery};
use uuid::Uuid;

use directory::{Account, Entitlement, EntitlementRefresh, Event, Parameter, Rule};
use engine::{Engine, Explanation, PlanPreview, ProvisionStep, ReconcileReport};
use store::{AccountQuery, EventQuery};

use crate::error::{Error, Result};
use crate::extract::from_value;
use crate::tokens;

pub mod guard;
pub(crate) mod inbound_scim;
pub mod saml;
mod source_sync;
mod sources;
mod write;

pub(crate) use write::{retry_write, Stale};

pub struct Service {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    engine: Arc<Engine>,
    verified: tokens::VerifiedCache,
    sources: Arc<engine::SourceSyncer>,
    /// Where the source syncs write (`source_sync`).
    source_writer: Arc<dyn engine::DirectoryWriter>,
}

/// Applies a JSON merge patch (RFC 7396) to `doc`, refusing read-only fields.
fn merge(mut doc: Value, patch: &Map<String, Value>, read_only: &[&str]) -> Result<Value> {
    let mut errors = ValidationErrors::default();
    for key in patch.keys().filter(|k| read_only.contains(&k.as_str())) {
        errors.push(key.clone(), "is read-only");
    }
    errors.into_result()?;
    json_patch::merge(&mut doc, &Value::Object(patch.clone()));
    Ok(doc)
}

/// The writable fields of `user` with a JSON merge patch applied, not yet validated.
/// `"email": null` removes the address standing for `emails` (an absent `email` would take it
/// from the list); the same for `phone`.
fn patched_input(user: &User, patch: &Map<String, Value>) -> Result<UserInput> {
    let doc = merge(to_doc(&UserInput::from_user(user))?, patch, directory::user::READ_ONLY_USER_FIELDS)?;
    let mut input: UserInput = from_value(doc)?;
    if patch.get("email").is_some_and(Value::is_null) && !patch.contains_key("emails") {
        input.set_email(None);
    }
    if patch.get("phone").is_some_and(Value::is_null) && !patch.contains_key("phone_numbers") {
        input.set_phone(None);
    }
    Ok(input)
}

fn to_doc<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(Error::internal)
}

/// A search text with a control character (`q=%00`) is refused: it is no text anyone types, and
/// a store may read a NUL as the end of the pattern (which then matches everyone).
pub(crate) fn check_search(field: &str, q: Option<&str>) -> Result<()> {
    match q {
        Some(q) if q.chars().any(char::is_control) => {
            Err(Error::bad_request(field, "must not contain control characters"))
        }
        _ => Ok(()),
    }
}

/// How far up a manager chain is followed when looking for a cycle.
const MAX_MANAGER_CHAIN: usize = 1000;

/// What is said of a manager id that names nobody (or nobody the writer may see).
pub(crate) const NO_SUCH_MANAGER: &str = "refers to no user";

/// The people a manager chain is read from: the store, seen through writes not made yet (the
/// other writes of a directory sync's page), each person read once.
pub(crate) struct People<'a> {
    store: &'a dyn Store,
    /// By id, as the pending writes leave them (`None`: not there).
    known: HashMap<Uuid, Option<Link>>,
}

/// What a manager chain needs of a person.
#[derive(Clone)]
struct Link {
    username: String,
    manager_id: Option<Uuid>,
    deleted: bool,
}

impl Link {
    fn of(user: &User) -> Self {
        Self {
            username: user.username.clone(),
            manager_id: user.manager_id,
            deleted: user.status == UserStatus::Deleted,
        }
    }
}

impl<'a> People<'a> {
    /// The people as the store has them.
    pub(crate) fn new(store: &'a dyn Store) -> Self {
        Self { store, known: HashMap::new() }
    }

    /// Sees `user` as a pending write leaves them.
    pub(crate) fn assume(&mut self, user: &User) {
        self.known.insert(user.id, Some(Link::of(user)));
    }

    /// Sees the user `id` as not there (a pending create that will not be made).
    pub(crate) fn forget(&mut self, id: Uuid) {
        self.known.insert(id, None);
    }

    async fn get(&mut self, id: Uuid) -> Result<Option<Link>, StoreError> {
        if let Some(known) = self.known.get(&id) {
            return Ok(known.clone());
        }
        let found = self.store.get_user(id).await?.map(|u| Link::of(&u));
        self.known.insert(id, found.clone());
        Ok(found)
    }

    /// What is wrong with making `manager` the manager of `this` (a new user when `None`): no
    /// such user, the user themself, or a manager chain that leads back to them (a cycle).
    pub(crate) async fn manager_problem(
        &mut self,
        this: Option<Uuid>,
        manager: Uuid,
    ) -> Result<Option<String>, StoreError> {
        if Some(manager) == this {
            return Ok(Some("a user cannot be their own manager".into()));
        }
        let Some(m) = self.get(manager).await?.filter(|m| !m.deleted) else {
            return Ok(Some(NO_SUCH_MANAGER.into()));
        };
        let Some(this) = this else { return Ok(None) };
        let mut chain = vec![m.username];
        let mut next = m.manager_id;
        while let Some(id) = next {
            if id == this {
                return Ok(Some(format!(
                    "would make a cycle: the manager chain {} leads back to this user",
                    chain.join(" -> ")
                )));
            }
            if chain.len() >= MAX_MANAGER_CHAIN {
                return Ok(Some(format!("the manager chain is longer than {MAX_MANAGER_CHAIN} people")));
            }
            let Some(u) = self.get(id).await? else { break };
            chain.push(u.username);
            next = u.manager_id;
        }
        Ok(None)
    }
}

/// What is wrong with a user's input under the directory's rules: the one validation of every
/// writer of users (the admin API, the console, the CLI, SCIM clients, directory syncs), as a
/// list the caller may add its own findings to. `this` is the user being written (`None` for a
/// new one); with `check_manager` the manager must exist and not make a cycle among `people`.
pub(crate) async fn user_problems(
    people: &mut People<'_>,
    defs: &[AttributeDef],
    input: &mut UserInput,
    this: Option<Uuid>,
    check_manager: bool,
) -> Result<ValidationErrors, StoreError> {
    let mut errors = match input.normalize_and_validate(defs) {
        Ok(()) => ValidationErrors::default(),
        Err(e) => e,
    };
    if let (true, Some(manager)) = (check_manager, input.manager_id) {
        if let Some(why) = people.manager_problem(this, manager).await? {
            errors.push("manager_id", why);
        }
    }
    Ok(errors)
}

fn check_if_match(current: i64, if_match: Option<i64>) -> Result<()> {
    match if_match {
        Some(v) if v != current => Err(Error::PreconditionFailed { current }),
        _ => Ok(()),
    }
}

impl Service {
    /// The service over `engine`; directory sources are opened with `sources`.
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        engine: Arc<Engine>,
        sources: engine::SourceRegistry,
    ) -> Self {
        // Source syncs write their users and memberships through the service's rules.
        let source_writer: Arc<dyn engine::DirectoryWriter> =
            Arc::new(source_sync::SourceWriter::new(store.clone(), engine.clone()));
        let sources =
            engine::SourceSyncer::new(store.clone(), keyring.clone(), engine.clone(), sources, source_writer.clone());
        let verified = tokens::VerifiedCache::new(tokens::CACHE_TTL);
        Self { store, keyring, engine, verified, sources, source_writer }
    }

    /// Where directory syncs write their users and memberships (see `source_sync`).
    pub fn source_writer(&self) -> &Arc<dyn engine::DirectoryWriter> {
        &self.source_writer
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The keys secrets are encrypted with (SAML signing keys, app credentials).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// After a directory write: the engine plans at once instead of at its next poll.
    fn changed<T>(&self, value: T) -> T {
        self.engine.changed();
        value
    }

    pub async fn health(&self) -> Result<()> {
        Ok(self.store.health().await?)
    }

    // ---- API tokens ----

    /// Stores `token` (only its hash) under `name`.
    pub async fn add_token(&self, name: &str, token: &str, actor: &Actor) -> Result<TokenRecord> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ValidationErrors::single("name", "must be 1-128 printable characters").into());
        }
        if token.len() < 16 {
            return Err(ValidationErrors::single("token", "must be at least 16 characters").into());
        }
        let owned = token.to_owned();
        let hash = tokio::task::spawn_blocking(move || tokens::hash(&owned))
            .await
            .map_err(Error::internal)?
            .map_err(Error::internal)?;
        let record = TokenRecord {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            lookup: self.token_lookup(token),
            hash,
            created_at: directory::now(),
            revoked_at: None,
            last_used_at: None,
        };
        self.store.create_token(&record, actor).await.map_err(|e| match e {
            StoreError::Duplicate { .. } => {
                Error::Conflict { field: "token".into(), reason: "is already in use".into() }
            }
            other => other.into(),
        })?;
        Ok(record)
    }

    /// Creates a new random token; the plaintext is returned once and never stored.
    pub async fn create_token(&self, name: &str, actor: &Actor) -> Result<(TokenRecord, String)> {
        let token = tokens::generate();
        let record = self.add_token(name, &token, actor).await?;
        Ok((record, token))
    }

    /// On an empty store, makes the bootstrap admin token: `given` when set, else a random
    /// one, which is returned so that it can be shown once.
    pub async fn bootstrap(&self, given: Option<&str>) -> Result<Bootstrap> {
        if self.store.count_tokens().await? > 0 {
            return Ok(Bootstrap::AlreadyHasTokens);
        }
        match given {
            Some(token) => match self.add_token("admin", token, &Actor::system()).await {
                Ok(_) => Ok(Bootstrap::UsedGiven),
                // Another process sharing the store stored it first.
                Err(Error::Conflict { .. }) => Ok(Bootstrap::AlreadyHasTokens),
                Err(e) => Err(e),
            },
            None => {
                let (_, token) = self.create_token("admin", &Actor::system()).await?;
                Ok(Bootstrap::Generated(token))
            }
        }
    }

    /// The key a new token's row is found by.
    pub fn token_lookup(&self, token: &str) -> String {
        self.keyring.token_lookups(token).swap_remove(0)
    }

    /// The actor a bearer token stands for, if it is valid. A verified token is let through
    /// for [`tokens::CACHE_TTL`] without reading its row; after that the row is read again,
    /// so that a token revoked by any process is refused.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Actor>> {
        if token.is_empty() || token.len() > 512 {
            return Ok(None);
        }
        if let Some(name) = self.verified.get(token) {
            return Ok(Some(Actor::token(name)));
        }
        let lookups = tokens::lookup_keys(&self.keyring, token);
        let mut found = None;
        for lookup in &lookups {
            if let Some(record) = self.store.find_token_by_lookup(lookup).await? {
                found = Some(record);
                break;
            }
        }
        let Some(record) = found else { return Ok(None) };
        if record.revoked_at.is_some() {
            return Ok(None);
        }
        // Verified against this very hash before: no argon2 again (see `VerifiedCache`).
        if !self.verified.proven(token, &record.hash) {
            let owned = token.to_owned();
            let hash = record.hash.clone();
            let ok =
                tokio::task::spawn_blocking(move || tokens::verify(&owned, &hash)).await.map_err(Error::internal)?;
            if !ok {
                return Ok(None);
            }
        }
        // Re-keyed to the current lookup (a legacy or rotated one), and "last used" kept to
        // the minute.
        let now = directory::now();
        let stale = record.last_used_at.is_none_or(|t| now - t > chrono::Duration::seconds(60));
        if record.lookup != lookups[0] || stale {
            self.store.token_used(record.id, &lookups[0], now).await?;
        }
        self.verified.put(token, record.name.clone(), &record.hash);
        Ok(Some(Actor::token(record.name)))
    }

    /// The API tokens that are not revoked (never the tokens themselves).
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(self.store.list_tokens().await?)
    }

    /// Revokes an API token: refused at once by this process, within [`tokens::CACHE_TTL`]
    /// by every other.
    pub async fn revoke_token(&self, id: Uuid, actor: &Actor) -> Result<()> {
        self.store.revoke_token(id, actor).await.map_err(|e| match e {
            StoreError::NotFound => Error::NotFound("token"),
            other => other.into(),
        })?;
        self.verified.clear();
        Ok(())
    }

    // ---- custom attributes ----

    pub async fn list_attributes(&self) -> Result<Vec<AttributeDef>> {
        Ok(self.store.list_attribute_defs().await?)
    }

    pub async fn create_attribute(&self, actor: &Actor, mut input: AttributeDefInput) -> Result<AttributeDef> {
        input.validate()?;
        let def = input.into_def(directory::now());
        self.store.create_attribute_def(&def, actor).await?;
        Ok(def)
    }

    /// Removes a custom attribute and its values. Refused while it is in use (409 naming each
    /// use: the users that hold a value, the parameters and rules of apps that read it, the
    /// directory sources that fill it, the SAML settings whose NameID it is); nothing changes
    /// then. Audited `attribute.delete`.
    pub async fn delete_attribute(&self, actor: &Actor, name: &str) -> Result<()> {
        if !self.store.list_attribute_defs().await?.iter().any(|d| d.name == name) {
            return Err(Error::NotFound("attribute"));
        }
        let uses = self.attribute_uses(name).await?;
        let in_use = |uses: Vec<directory::FieldError>| Error::InUse { what: format!("the attribute {name}"), uses };
        if !uses.is_empty() {
            return Err(in_use(uses));
        }
        match self.store.delete_attribute_def(name, actor).await {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound) => Err(Error::NotFound("attribute")),
            // A value was written meanwhile.
            Err(StoreError::InvalidState(_)) => Err(in_use(self.attribute_uses(name).await?)),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the custom attribute `name` is used, one entry each (`users`, `parameters`,
    /// `rules`, `sources`, `saml`).
    async fn attribute_uses(&self, name: &str) -> Result<Vec<directory::FieldError>> {
        use directory::FieldError;
        let mut uses = Vec::new();
        let holders = self.store.count_attribute_holders(name).await?;
        if holders > 0 {
            uses.push(FieldError::new(
                "users",
                format!(
                    "{holders} user(s) hold a value of {name} (remove it from them: PATCH /api/v1/users/{{id}} \
                     {{\"attributes\": {{\"{name}\": null}}}})"
                ),
            ));
        }
        let mut cursor = None;
        loop {
            let page = self
                .store
                .list_apps(&NameQuery { q: None, page: PageRequest { limit: store::MAX_PAGE, cursor } })
                .await?;
            for app in &page.items {
                let params = app.parameters.as_deref().unwrap_or_default();
                for found in directory::mapping::attribute_uses(params, &[], name) {
                    uses.push(FieldError::new("parameters", format!("app {:?} ({}): {found}", app.name, app.id)));
                }
                for found in directory::mapping::attribute_uses(&[], &app.rules, name) {
                    uses.push(FieldError::new("rules", format!("app {:?} ({}): {found}", app.name, app.id)));
                }
                if let Some(saml) = self.store.get_saml_settings(app.id).await? {
                    if saml.settings.name_id_attribute == name {
                        uses.push(FieldError::new(
                            "saml",
                            format!("app {:?} ({}): the SAML NameID attribute", app.name, app.id),
                        ));
                    }
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        for source in self.store.list_sources().await? {
            if let Some(ldap) = source.attributes.get(name) {
                uses.push(FieldError::new(
                    "sources",
                    format!(
                        "directory source {:?} ({}): filled from the LDAP attribute {ldap}",
                        source.name, source.id
                    ),
                ));
            }
        }
        Ok(uses)
    }

    // ---- users ----

    /// What is wrong with a user's input (see [`user_problems`]), as a list the caller may add
    /// its own findings to.
    pub(crate) async fn user_problems(
        &self,
        input: &mut UserInput,
        this: Option<Uuid>,
        check_manager: bool,
    ) -> Result<ValidationErrors> {
        let defs = self.store.list_attribute_defs().await?;
        let mut people = People::new(self.store.as_ref());
        Ok(user_problems(&mut people, &defs, input, this, check_manager).await?)
    }

    async fn validate_user(&self, input: &mut UserInput, this: Option<Uuid>) -> Result<()> {
        Ok(self.user_problems(input, this, true).await?.into_result()?)
    }

    /// Addresses more than one user has (see [`Store::email_conflicts`]).
    pub async fn email_conflicts(&self) -> Result<Vec<store::EmailConflict>> {
        Ok(self.store.email_conflicts().await?)
    }

    /// Says in the log, at start-up, how many e-mail addresses more than one user has (stored
    /// before addresses were unique), and where to see them.
    pub async fn warn_email_conflicts(&self) -> Result<usize> {
        let conflicts = self.store.email_conflicts().await?;
        if !conflicts.is_empty() {
            let users: usize = conflicts.iter().map(|c| c.users.len()).sum();
            tracing::warn!(
                addresses = conflicts.len(),
                users,
                "{} e-mail address(es) are shared by {users} users: each person needs their own (it is their SAML \
                 NameID), and SAML sign-ins with a shared one are refused. See GET /api/v1/users/email-conflicts.",
                conflicts.len()
            );
        }
        Ok(conflicts.len())
    }

    pub async fn create_user(&self, actor: &Actor, mut input: UserInput, source: UserSource) -> Result<User> {
        self.validate_user(&mut input, None).await?;
        let user = User::new(input, source, directory::now());
        self.store.create_user(&user, actor).await?;
        Ok(self.changed(user))
    }

    /// A user that is not deleted.
    pub async fn get_user(&self, id: Uuid) -> Result<User> {
        match self.store.get_user(id).await? {
            Some(u) if u.status != UserStatus::Deleted => Ok(u),
            _ => Err(Error::NotFound("user")),
        }
    }

    pub async fn list_users(&self, query: &UserQuery) -> Result<Page<User>> {
        check_search("q", query.q.as_deref())?;
        Ok(self.store.list_users(query).await?)
    }

    pub async fn patch_user(
        &self,
        actor: &Actor,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
    ) -> Result<User> {
        retry_write("user", if_match.is_some(), || async {
            let (current, updated) = self.patched_user(id, patch, if_match).await?;
            self.store.update_user(&updated, current.version, actor).await?;
            Ok(self.changed(updated))
        })
        .await
    }

    /// The user as a patch would leave them, validated (nothing is written).
    pub(crate) async fn patched_user(
        &self,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
    ) -> Result<(User, User)> {
        let current = self.get_user(id).await?;
        check_if_match(current.version, if_match)?;
        self.check_sourced_patch(&current, patch).await?;
        let mut input = patched_input(&current, patch)?;
        self.validate_user(&mut input, Some(id)).await?;
        let updated = current.updated(input, directory::now());
        Ok((current, updated))
    }

    pub async fn delete_user(&self, actor: &Actor, id: Uuid, if_match: Option<i64>) -> Result<User> {
        self.get_user(id).await?;
        Ok(self.changed(self.store.delete_user(id, if_match, actor).await?))
    }

    pub async fn roles_of_user(&self, id: Uuid) -> Result<Vec<Role>> {
        self.get_user(id).await?;
        Ok(self.store.roles_of_user(id).await?)
    }

    // ---- roles ----

    pub async fn create_role(&self, actor: &Actor, mut input: RoleInput) -> Result<Role> {
        input.normalize_and_validate()?;
        let role = Role::new(input, directory::now());
        self.store.create_role(&role, actor).await?;
        Ok(role)
    }

    pub async fn get_role(&self, id: Uuid) -> Result<Role> {
        self.store.get_role(id).await?.ok_or(Error::NotFound("role"))
    }

    pub async fn list_roles(&self, query: &NameQuery) -> Result<Page<Role>> {
        check_search("q", query.q.as_deref())?;
        Ok(self.store.list_roles(query).await?)
    }

    pub async fn patch_role(
        &self,
        actor: &Actor,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
    ) -> Result<Role> {
        retry_write("role", if_match.is_some(), || async {
            let current = self.get_role(id).await?;
            check_if_match(current.version, if_match)?;
            let doc = merge(to_doc(&RoleInput::from_role(&current))?, patch, directory::role::READ_ONLY_ROLE_FIELDS)?;
            let mut input: RoleInput = from_value(doc)?;
            input.normalize_and_validate()?;
            let updated = current.updated(input, directory::now());
            self.store.update_role(&updated, current.version, actor).await?;
            Ok(updated)
        })
        .await
    }

    pub async fn delete_role(&self, actor: &Actor, id: Uuid, if_match: Option<i64>) -> Result<()> {
        self.get_role(id).await?;
        self.store.delete_role(id, if_match, actor).await?;
        self.engine.changed();
        Ok(())
    }

    pub async fn add_role_user(&self, actor: &Actor, role: Uuid, user: Uuid) -> Result<bool> {
        self.get_role(role).await?;
        self.get_user(user).await?;
        Ok(self.changed(self.store.add_role_user(role, user, actor).await?))
    }

    pub async fn remove_role_user(&self, actor: &Actor, role: Uuid, user: Uuid) -> Result<bool> {
        self.get_role(role).await?;
        if self.store.get_user(user).await?.is_none() {
            return Err(Error::NotFound("user"));
        }
        Ok(self.changed(self.store.remove_role_user(role, user, actor).await?))
    }

    pub async fn add_role_app(&self, actor: &Actor, role: Uuid, app: Uuid) -> Result<bool> {
        self.get_role(role).await?;
        self.get_app(app).await?;
        Ok(self.changed(self.store.add_role_app(role, app, actor).await?))
    }

    pub async fn remove_role_app(&self, actor: &Actor, role: Uuid, app: Uuid) -> Result<bool> {
        self.get_role(role).await?;
        self.get_app(app).await?;
        Ok(self.changed(self.store.remove_role_app(role, app, actor).await?))
    }

    pub async fn apps_of_role(&self, role: Uuid) -> Result<Vec<App>> {
        self.get_role(role).await?;
        Ok(self.store.apps_of_role(role).await?)
    }

    pub async fn roles_of_app(&self, app: Uuid) -> Result<Vec<Role>> {
        self.get_app(app).await?;
        Ok(self.store.roles_of_app(app).await?)
    }

    // ---- apps ----

    fn encrypt_secret(&self, app: Uuid, secret: &Secret) -> Result<String> {
        store::secrets::encrypt_credential(&self.keyring, app, secret).map_err(Error::internal)
    }

    /// The decrypted credential of an app, for connectors. Never returned by the API.
    pub async fn app_secret(&self, app: Uuid) -> Result<Secret> {
        let ct = self.store.get_app_credential(app).await?.ok_or(Error::NotFound("app"))?;
        store::secrets::decrypt_credential(&self.keyring, app, &ct).map_err(Error::internal)
    }

    pub async fn create_app(&self, actor: &Actor, input: AppInput) -> Result<App> {
        let (validated, secret) = input.validate(None)?;
        let app = App::new(validated, directory::now());
        let credential = self.encrypt_secret(app.id, &secret)?;
        self.store.create_app(&app, &credential, actor).await?;
        Ok(self.changed(app))
    }

    pub async fn get_app(&self, id: Uuid) -> Result<App> {
        self.store.get_app(id).await?.ok_or(Error::NotFound("app"))
    }

    pub async fn list_apps(&self, query: &NameQuery) -> Result<Page<App>> {
        check_search("q", query.q.as_deref())?;
        Ok(self.store.list_apps(query).await?)
    }

    pub async fn patch_app(
        &self,
        actor: &Actor,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
    ) -> Result<App> {
        retry_write("app", if_match.is_some(), || async {
            let (current, updated, credential) = self.patched_app(id, patch, if_match).await?;
            self.store.update_app(&updated, credential.as_deref(), current.version, actor).await?;
            Ok(self.changed(updated))
        })
        .await
    }

    /// The app as a patch would leave it, validated, with its credential re-encrypted when it
    /// changed (nothing is written).
    pub(crate) async fn patched_app(
        &self,
        id: Uuid,
        patch: &Map<String, Value>,
        if_match: Option<i64>,
    ) -> Result<(App, App, Option<String>)> {
        let current = self.get_app(id).await?;
        check_if_match(current.version, if_match)?;
        let mut doc = to_doc(&AppInput::from_app(&current))?;
        // A credential of another type replaces the old one instead of merging into it.
        let new_type =
            patch.get("connection").and_then(|c| c.get("auth")).and_then(|a| a.get("type")).and_then(Value::as_str);
        if new_type.is_some_and(|t| doc["connection"]["auth"]["type"] != t) {
            doc["connection"]["auth"] = Value::Object(Map::new());
        }
        let doc = merge(doc, patch, directory::app::READ_ONLY_APP_FIELDS)?;
        let mut input: AppInput = from_value(doc)?;
        // `"deprovision_guard": null` turns the guard off (a merge patch's null would only
        // remove the member, which means the default).
        if patch.get("provisioning").and_then(|p| p.get("deprovision_guard")).is_some_and(Value::is_null) {
            input.provisioning.deprovision_guard = None;
        }
        let existing_ct = self.store.get_app_credential(id).await?.ok_or(Error::NotFound("app"))?;
        let existing = store::secrets::decrypt_credential(&self.keyring, id, &existing_ct).map_err(Error::internal)?;
        let (validated, secret) = input.validate_change(&current, &existing)?;
        // Re-encrypt when the secret changed, or when it was made with a retired key.
        let credential = if secret != existing || self.keyring.is_stale(&existing_ct) {
            Some(self.encrypt_secret(id, &secret)?)
        } else {
            None
        };
        let updated = current.updated(validated, directory::now());
        Ok((current, updated, credential))
    }

    pub async fn delete_app(&self, actor: &Actor, id: Uuid, if_match: Option<i64>) -> Result<()> {
        self.get_app(id).await?;
        self.store.delete_app(id, if_match, actor).await?;
        self.engine.changed();
        Ok(())
    }

    // ---- provisioning ----

    /// "Enable" / "Test connection": checks the app's credentials and learns what it supports.
    pub async fn test_connection(&self, actor: &Actor, app: Uuid) -> Result<scim::Capabilities> {
        self.get_app(app).await?;
        let result = self.engine.test_connection(app).await;
        let details = match &result {
            Ok(caps) => serde_json::json!({"ok": true, "capabilities": caps}),
            Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
        };
        self.store.append_audit(actor, "app.test_connection", "app", &app.to_string(), Some(details)).await?;
        Ok(result?)
    }

    /// The app's health: quarantine, queue, rate and last connection test.
    pub async fn app_health(&self, app: Uuid) -> Result<directory::AppHealth> {
        self.get_app(app).await?;
        Ok(self.engine.health(app).await?)
    }

    /// Resumes a quarantined app at once (audited); 409 when it is not quarantined.
    pub async fn resume_app(&self, actor: &Actor, app: Uuid) -> Result<directory::AppHealth> {
        self.get_app(app).await?;
        if !self.engine.resume(app, actor, "resumed by an admin").await? {
            return Err(Error::InvalidState("the app is not quarantined".into()));
        }
        Ok(self.engine.health(app).await?)
    }

    pub async fn list_events(&self, query: &EventQuery) -> Result<Page<Event>> {
        check_search("q", query.q.as_deref())?;
        Ok(self.store.list_events(query).await?)
    }

    pub async fn get_event(&self, id: Uuid) -> Result<Event> {
        Ok(self.store.get_operation(id).await?.ok_or(Error::NotFound("event"))?.event)
    }

    pub async fn approve_event(&self, actor: &Actor, id: Uuid) -> Result<Event> {
        self.get_event(id).await?;
        let event = self.store.approve_operation(id, actor).await?;
        self.engine.wake_workers();
        Ok(event)
    }

    pub async fn reject_event(&self, actor: &Actor, id: Uuid) -> Result<Event> {
        self.get_event(id).await?;
        Ok(self.store.reject_operation(id, actor).await?)
    }

    pub async fn retry_event(&self, actor: &Actor, id: Uuid) -> Result<Event> {
        self.get_event(id).await?;
        let event = self.store.retry_operation(id, actor).await?;
        self.engine.wake_workers();
        Ok(event)
    }

    pub async fn list_accounts(&self, query: &AccountQuery) -> Result<Page<Account>> {
        if let Some(app) = query.app {
            self.get_app(app).await?;
        }
        if let Some(user) = query.user {
            if self.store.get_user(user).await?.is_none() {
                return Err(Error::NotFound("user"));
            }
        }
        Ok(self.store.list_accounts(query).await?)
    }

    /// "Rematch login": links the user to an existing account of the app, which the engine
    /// then manages.
    pub async fn rematch(&self, actor: &Actor, app: Uuid, user: Uuid, remote_id: &str) -> Result<Account> {
        let remote_id = remote_id.trim();
        if remote_id.is_empty() || remote_id.len() > 1024 {
            return Err(ValidationErrors::single("remote_id", "must be the id of an account in the app").into());
        }
        self.get_app(app).await?;
        self.get_user(user).await?;
        if !self.engine.account_exists(app, remote_id).await? {
            return Err(ValidationErrors::single("remote_id", "the app has no account with this id").into());
        }
        let account = self.store.link_account(app, user, remote_id, actor).await?;
        Ok(self.changed(account))
    }

    pub async fn reconcile(&self, actor: &Actor, app: Uuid) -> Result<ReconcileReport> {
        self.get_app(app).await?;
        let report = self.engine.reconcile_by(app, Some(actor), directory::now()).await?;
        let details = serde_json::to_value(&report).ok();
        self.store.append_audit(actor, "app.reconcile", "app", &app.to_string(), details).await?;
        Ok(report)
    }

    pub async fn provision_now(&self, actor: &Actor, user: Uuid, app: Option<Uuid>) -> Result<Vec<ProvisionStep>> {
        self.get_user(user).await?;
        if let Some(a) = app {
            self.get_app(a).await?;
        }
        let details = serde_json::json!({"app_id": app});
        self.store.append_audit(actor, "user.provision_now", "user", &user.to_string(), Some(details)).await?;
        Ok(self.engine.provision_now(user, app, Duration::from_secs(30), Some(actor)).await?)
    }

    // ---- parameters, rules, entitlements ----

    /// The parameters in effect (the default mapping until an admin sets them), and the
    /// app's version (for `If-Match`).
    pub async fn parameters(&self, app: Uuid) -> Result<(Vec<Parameter>, i64)> {
        let app = self.get_app(app).await?;
        Ok((app.effective_parameters().into_owned(), app.version))
    }

    pub async fn rules(&self, app: Uuid) -> Result<(Vec<Rule>, i64)> {
        let app = self.get_app(app).await?;
        Ok((app.rules, app.version))
    }

    /// Saves parameters and/or rules; every user the app concerns is planned again.
    pub async fn put_mapping(
        &self,
        actor: &Actor,
        app_id: Uuid,
        parameters: Option<Vec<Parameter>>,
        rules: Option<Vec<Rule>>,
        if_match: Option<i64>,
    ) -> Result<App> {
        self.validate_mapping(parameters.as_deref(), rules.as_deref()).await?;
        retry_write("app", if_match.is_some(), || async {
            let current = self.get_app(app_id).await?;
            check_if_match(current.version, if_match)?;
            let mut updated = current.clone();
            if let Some(p) = &parameters {
                updated.parameters = Some(p.clone());
            }
            if let Some(r) = &rules {
                updated.rules = r.clone();
            }
            updated.updated_at = directory::now();
            updated.version = current.version + 1;
            self.store.update_app_mapping(&updated, current.version, actor).await?;
            Ok(self.changed(updated))
        })
        .await
    }

    /// Drops the app's own parameters: the default mapping applies again, and every user the
    /// app concerns is planned again.
    pub async fn reset_parameters(&self, actor: &Actor, app_id: Uuid, if_match: Option<i64>) -> Result<App> {
        retry_write("app", if_match.is_some(), || async {
            let current = self.get_app(app_id).await?;
            check_if_match(current.version, if_match)?;
            let updated =
                App { parameters: None, updated_at: directory::now(), version: current.version + 1, ..current.clone() };
            self.store.update_app_mapping(&updated, current.version, actor).await?;
            Ok(self.changed(updated))
        })
        .await
    }

    async fn validate_mapping(&self, parameters: Option<&[Parameter]>, rules: Option<&[Rule]>) -> Result<()> {
        let defs = self.store.list_attribute_defs().await?;
        let mut errors = ValidationErrors::default();
        if let Some(p) = parameters {
            if let Err(e) = directory::mapping::validate_parameters(p, &defs) {
                errors.0.extend(e.0.into_iter().map(|f| {
                    directory::FieldError::new(
                        format!("parameters{}", f.field.strip_prefix("parameters").unwrap_or(&f.field)),
                        f.reason,
                    )
                }));
            }
        }
        if let Some(r) = rules {
            if let Err(e) = directory::mapping::validate_rules(r, &defs) {
                errors.0.extend(e.0.into_iter().map(|f| {
                    directory::FieldError::new(
                        format!("rules{}", f.field.strip_prefix("rules").unwrap_or(&f.field)),
                        f.reason,
                    )
                }));
            }
        }
        Ok(errors.into_result()?)
    }

    /// What saving these parameters and rules would do; nothing is written.
    pub async fn plan_preview(
        &self,
        app: Uuid,
        parameters: Option<Vec<Parameter>>,
        rules: Option<Vec<Rule>>,
        provisioning: Option<directory::ProvisioningSettings>,
    ) -> Result<PlanPreview> {
        self.get_app(app).await?;
        self.validate_mapping(parameters.as_deref(), rules.as_deref()).await?;
        Ok(self.engine.preview(app, parameters, rules, provisioning, directory::now()).await?)
    }

    pub async fn explain(&self, user: Uuid, app: Uuid) -> Result<Explanation> {
        self.get_user(user).await?;
        self.get_app(app).await?;
        Ok(self.engine.explain(user, app).await?)
    }

    /// Starts "Refresh" of the app's entitlements in the background.
    pub async fn refresh_entitlements(&self, app: Uuid) -> Result<()> {
        self.get_app(app).await?;
        if self.engine.refresh_entitlements(app).await? {
            Ok(())
        } else {
            Err(Error::InvalidState("a refresh of this app's entitlements is already running".into()))
        }
    }

    /// How the latest reconcile and Refresh read the app.
    pub async fn app_reads(&self, app: Uuid) -> Result<Vec<store::AppRead>> {
        self.get_app(app).await?;
        Ok(self.store.app_reads(app).await?)
    }

    pub async fn entitlements(
        &self,
        app: Uuid,
        page: &PageRequest,
    ) -> Result<(Option<EntitlementRefresh>, Page<Entitlement>)> {
        Ok(self.engine.entitlements(app, page).await?)
    }

    // ---- console admins ----

    /// Creates a console admin; the password is stored only as an argon2id hash.
    pub async fn create_admin(&self, actor: &Actor, username: &str, password: &str) -> Result<store::AdminRecord> {
        let username = username.trim();
        let mut errors = ValidationErrors::default();
        if username.is_empty()
            || username.chars().count() > 64
            || !username.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            errors.push("username", "must be 1-64 letters, digits, '.', '_', '-' or '@'");
        }
        if password.chars().count() < 12 {
            errors.push("password", "must be at least 12 characters");
        } else if password.len() > 1024 {
            errors.push("password", "must be at most 1024 bytes");
        }
        errors.into_result()?;
        let owned = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || tokens::hash(&owned))
            .await
            .map_err(Error::internal)?
            .map_err(Error::internal)?;
        let record = store::AdminRecord {
            id: Uuid::now_v7(),
            username: username.to_owned(),
            hash,
            created_at: directory::now(),
        };
        self.store.create_admin(&record, actor).await?;
        Ok(record)
    }

    /// At first start: creates the admin `admin` with `password` when there is no admin yet.
    pub async fn bootstrap_admin(&self, password: &str) -> Result<bool> {
        if self.store.count_admins().await? > 0 {
            return Ok(false);
        }
        self.create_admin(&Actor::system(), "admin", password).await?;
        Ok(true)
    }

    /// The admin these credentials belong to, if they are right. A wrong username costs
    /// as much time as a wrong password, so that usernames cannot be probed.
    pub async fn verify_admin(&self, username: &str, password: &str) -> Result<Option<store::AdminRecord>> {
        static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let admin = if username.len() > 256 { None } else { self.store.find_admin(username).await? };
        let hash = match &admin {
            Some(a) => a.hash.clone(),
            None => DECOY.get_or_init(|| tokens::hash("decoy password").unwrap_or_default()).clone(),
        };
        let owned = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || tokens::verify(&owned, &hash)).await.map_err(Error::internal)?;
        Ok(admin.filter(|_| ok))
    }

    /// Up to `limit` accounts read from the app itself (SCIM resources), for "Rematch login".
    pub async fn app_remote_accounts(&self, app: Uuid, limit: u32) -> Result<Vec<Value>> {
        self.get_app(app).await?;
        Ok(self.engine.remote_accounts(app, limit).await?)
    }

    // ---- audit ----

    pub async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        Ok(self.store.list_audit(query).await?)
    }
}

/// What happened to the bootstrap admin token at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The store already had tokens: nothing was done.
    AlreadyHasTokens,
    /// The token from the environment was stored.
    UsedGiven,
    /// A random token was made; show it once.
    Generated(String),
}

/// Checks a page size; `None` means the default.
pub fn page(limit: Option<u32>, cursor: Option<String>) -> Result<PageRequest> {
    let limit = limit.unwrap_or(50);
    if !(1..=store::MAX_PAGE).contains(&limit) {
        return Err(Error::bad_request("limit", format!("must be between 1 and {}", store::MAX_PAGE)));
    }
    Ok(PageRequest { limit, cursor })
}
