use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::rate::RateLimit;
use crate::validation::{check_opt_text, check_text, ValidationErrors};

/// The kind of API an app is reached through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorKind {
    #[default]
    Scim,
}

impl ConnectorKind {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scim => "scim",
        }
    }
}

/// What happens to an app account when its user is suspended or deleted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeprovisionAction {
    Delete,
    Suspend,
    None,
}

/// Which actions wait for an admin's approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Approval {
    pub create: bool,
    pub update: bool,
    pub delete: bool,
}

/// An app's provisioning settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisioningSettings {
    /// Off by default: nothing is sent to the app until an admin enables provisioning.
    pub enabled: bool,
    pub approval: Approval,
    /// When a user is suspended here. Default `suspend`.
    pub on_suspend: DeprovisionAction,
    /// When a user is deleted here or loses the last role granting the app. Default `delete`.
    pub on_delete: DeprovisionAction,
    /// How many requests may be in flight to the app at once (1 to 64, default 4).
    pub max_concurrency: u32,
    /// Create a group in the app when a rule names one that Refresh did not find.
    pub create_missing_groups: bool,
    /// Members per group PATCH request (1 to 1000, default 100).
    pub group_chunk_size: u32,
    /// Look an account up by userName before creating it (default `true`). `false`: create
    /// directly, one request per new account instead of two, and look up only when the app
    /// answers 409 (a SCIM app must refuse a taken userName, RFC 7644 section 3.3); choose it
    /// only for apps that do. Retries always look up first.
    pub lookup_before_create: bool,
    /// The deprovisioning guard: one change that would take the app's suspensions and
    /// deletions within the window over either limit is held, all of it, for an admin to
    /// allow or reject. On by default; `null` turns it off.
    #[serde(default = "default_guard")]
    pub deprovision_guard: Option<DeprovisionGuard>,
    /// The app's rate budget, shared by every engine process (see [`crate::rate`]): at most
    /// `per_minute` requests a minute, with bursts of `burst`. `null` (the default): no budget;
    /// the app's `max_concurrency`, its `Retry-After` answers and the concurrency lowered after
    /// a `429` or `5xx` still hold.
    pub rate_limit: Option<RateLimit>,
}

/// Limits of the deprovisioning guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeprovisionGuard {
    /// The most suspensions and deletions within the window (default 50).
    pub max_count: i64,
    /// The most, in percent of the app's managed accounts, once at least 10 are queued (default 10).
    pub max_percent: i64,
    /// The window the limits count over, in minutes (default 60).
    pub window_minutes: i64,
}

impl Default for DeprovisionGuard {
    fn default() -> Self {
        Self { max_count: 50, max_percent: 10, window_minutes: 60 }
    }
}

impl DeprovisionGuard {
    /// Whether `count` suspensions and deletions (this change's and the window's) are over the
    /// limits for an app with `managed` accounts.
    pub fn exceeded(&self, count: i64, managed: i64) -> bool {
        count > self.max_count || (count >= 10 && count.saturating_mul(100) > managed.saturating_mul(self.max_percent))
    }
}

fn default_guard() -> Option<DeprovisionGuard> {
    Some(DeprovisionGuard::default())
}

impl Default for ProvisioningSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            approval: Approval::default(),
            on_suspend: DeprovisionAction::Suspend,
            on_delete: DeprovisionAction::Delete,
            max_concurrency: 4,
            create_missing_groups: false,
            group_chunk_size: 100,
            lookup_before_create: true,
            deprovision_guard: default_guard(),
            rate_limit: None,
        }
    }
}

/// How to authenticate to the app, as written by an admin. Secrets (`token`, `password`,
/// `client_secret`) are write-only: they are never returned. On a PATCH they may be left
/// out to keep the stored one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AuthInput {
    #[serde(rename = "bearer")]
    Bearer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    #[serde(rename = "basic")]
    Basic {
        username: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
    },
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials {
        token_url: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_secret: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

impl fmt::Debug for AuthInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())?;
        f.write_str("(..)")
    }
}

/// How to authenticate to the app, without the secret: what the API shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum AuthConfig {
    #[serde(rename = "bearer")]
    Bearer {},
    #[serde(rename = "basic")]
    Basic { username: String },
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials {
        token_url: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

/// The secret part of an app's credential. Stored only encrypted; never shown or logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Secret {
    #[serde(rename = "bearer")]
    Bearer { token: String },
    #[serde(rename = "basic")]
    Basic { password: String },
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials { client_secret: String },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Bearer { .. } => "bearer",
            Self::Basic { .. } => "basic",
            Self::OAuth2ClientCredentials { .. } => "oauth2_client_credentials",
        }
    }
}

impl AuthInput {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Bearer { .. } => "bearer",
            Self::Basic { .. } => "basic",
            Self::OAuth2ClientCredentials { .. } => "oauth2_client_credentials",
        }
    }

    /// The admin-editable view of a stored configuration (secret left out).
    pub fn from_config(config: &AuthConfig) -> Self {
        match config.clone() {
            AuthConfig::Bearer {} => Self::Bearer { token: None },
            AuthConfig::Basic { username } => Self::Basic { username, password: None },
            AuthConfig::OAuth2ClientCredentials { token_url, client_id, scope } => {
                Self::OAuth2ClientCredentials { token_url, client_id, client_secret: None, scope }
            }
        }
    }

    /// Splits into the public configuration and the secret. A secret left out is taken from
    /// `existing` when that is of the same type, and is otherwise an error.
    fn split(self, existing: Option<&Secret>, errors: &mut ValidationErrors) -> Option<(AuthConfig, Secret)> {
        let kept = existing.filter(|s| s.type_name() == self.type_name());
        match self {
            Self::Bearer { token } => {
                let secret = fresh_secret(errors, "token", token, kept).map(|token| Secret::Bearer { token });
                Some((AuthConfig::Bearer {}, secret.or_else(|| kept.cloned())?))
            }
            Self::Basic { username, password } => {
                let username = username.trim().to_owned();
                check_text(errors, "connection.auth.username", &username, 256);
                let secret =
                    fresh_secret(errors, "password", password, kept).map(|password| Secret::Basic { password });
                Some((AuthConfig::Basic { username }, secret.or_else(|| kept.cloned())?))
            }
            Self::OAuth2ClientCredentials { token_url, client_id, client_secret, scope } => {
                let token_url = token_url.trim().to_owned();
                check_url(errors, "connection.auth.token_url", &token_url);
                let client_id = client_id.trim().to_owned();
                check_text(errors, "connection.auth.client_id", &client_id, 512);
                let scope = crate::normalize_opt(scope);
                check_opt_text(errors, "connection.auth.scope", &scope, 1024);
                let secret = fresh_secret(errors, "client_secret", client_secret, kept)
                    .map(|client_secret| Secret::OAuth2ClientCredentials { client_secret });
                Some((
                    AuthConfig::OAuth2ClientCredentials { token_url, client_id, scope },
                    secret.or_else(|| kept.cloned())?,
                ))
            }
        }
    }
}

/// A newly written secret value, checked; `None` when none was written (an error unless a
/// stored secret of the same type is kept).
fn fresh_secret(
    errors: &mut ValidationErrors,
    field: &str,
    value: Option<String>,
    kept: Option<&Secret>,
) -> Option<String> {
    let path = format!("connection.auth.{field}");
    match value {
        Some(v) if v.is_empty() => errors.push(path, "must not be empty"),
        Some(v) if v.len() > 8192 => errors.push(path, "must be at most 8192 bytes"),
        Some(v) => return Some(v),
        None if kept.is_none() => errors.push(path, "is required"),
        None => {}
    }
    None
}

/// How to reach the app, as written by an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionInput {
    /// The SCIM base URL, e.g. `https://app.example.com/scim/v2`.
    pub base_url: String,
    pub auth: AuthInput,
}

/// How to reach the app, as shown (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConnectionConfig {
    pub base_url: String,
    pub auth: AuthConfig,
}

/// The writable fields of an app: the body of `POST /api/v1/apps`, and the document a JSON
/// merge patch applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppInput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub connector: ConnectorKind,
    pub connection: ConnectionInput,
    #[serde(default)]
    pub provisioning: ProvisioningSettings,
}

pub const READ_ONLY_APP_FIELDS: &[&str] = &["id", "created_at", "updated_at", "version"];

/// An application whose accounts are provisioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct App {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub connector: ConnectorKind,
    pub connection: ConnectionConfig,
    pub provisioning: ProvisioningSettings,
    /// The attribute mappings (`GET/PUT /api/v1/apps/{id}/parameters`); `None` until an admin
    /// sets them: the default mapping applies.
    pub parameters: Option<Vec<crate::mapping::Parameter>>,
    /// The rules, in order (`GET/PUT /api/v1/apps/{id}/rules`).
    pub rules: Vec<crate::mapping::Rule>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

fn check_url(errors: &mut ValidationErrors, field: &str, value: &str) {
    if value.len() > 2048 {
        errors.push(field, "must be at most 2048 characters");
        return;
    }
    if !value.is_empty() && !crate::validation::check_written_host(errors, field, value) {
        return;
    }
    match url::Url::parse(value) {
        Err(e) => errors.push(field, format!("is not a valid URL ({e})")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => errors.push(field, "must be an http:// or https:// URL"),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => errors.push(field, "must name a host"),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            errors.push(field, "must not contain credentials; put them in connection.auth")
        }
        Ok(_) => {}
    }
}

impl AppInput {
    /// Validates the input and splits the credential into its public part and its secret.
    /// `existing` is the stored secret, kept when the input leaves the secret out.
    pub fn validate(mut self, existing: Option<&Secret>) -> Result<(ValidatedApp, Secret), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.name = self.name.trim().to_owned();
        check_text(&mut errors, "name", &self.name, 128);
        self.description = crate::normalize_opt(self.description.take());
        check_opt_text(&mut errors, "description", &self.description, 1024);
        let base_url = self.connection.base_url.trim().trim_end_matches('/').to_owned();
        check_url(&mut errors, "connection.base_url", &base_url);
        if !(1..=64).contains(&self.provisioning.max_concurrency) {
            errors.push("provisioning.max_concurrency", "must be between 1 and 64");
        }
        if !(1..=1000).contains(&self.provisioning.group_chunk_size) {
            errors.push("provisioning.group_chunk_size", "must be between 1 and 1000");
        }
        if let Some(g) = &self.provisioning.deprovision_guard {
            if g.max_count < 0 {
                errors.push("provisioning.deprovision_guard.max_count", "must be 0 or more");
            }
            if !(0..=100).contains(&g.max_percent) {
                errors.push("provisioning.deprovision_guard.max_percent", "must be between 0 and 100");
            }
            if !(1..=10080).contains(&g.window_minutes) {
                errors.push("provisioning.deprovision_guard.window_minutes", "must be between 1 and 10080");
            }
        }
        if let Some(r) = &self.provisioning.rate_limit {
            r.check("provisioning.rate_limit", &mut errors);
        }
        self.provisioning.rate_limit = self.provisioning.rate_limit.map(RateLimit::normalized);
        let split = self.connection.auth.split(existing, &mut errors);
        match split {
            Some((auth, secret)) if errors.0.is_empty() => Ok((
                ValidatedApp {
                    name: self.name,
                    description: self.description,
                    connector: self.connector,
                    connection: ConnectionConfig { base_url, auth },
                    provisioning: self.provisioning,
                },
                secret,
            )),
            _ => Err(errors),
        }
    }

    /// Validates a change of the stored app `current`, whose secret is `existing`. A secret
    /// left out is kept, except when it would go somewhere new: a change of the scheme, host
    /// or port of `connection.base_url` (or of `connection.auth.token_url`) needs the secret
    /// again in the same request; without it the change is refused, naming the secret's field.
    pub fn validate_change(self, current: &App, existing: &Secret) -> Result<(ValidatedApp, Secret), ValidationErrors> {
        let mut unbound = ValidationErrors::default();
        if let Some((secret_field, moved)) = self.unbound_secret(current, existing) {
            unbound.push(
                format!("connection.auth.{secret_field}"),
                format!(
                    "must be given again: {} now points at another scheme, host or port, and the stored \
                     {secret_field} is only ever sent where it was given for",
                    moved.join(" and ")
                ),
            );
        }
        match self.validate(Some(existing)) {
            Ok(v) if unbound.0.is_empty() => Ok(v),
            Ok(_) => Err(unbound),
            Err(mut e) => {
                e.0.extend(unbound.0);
                Err(e)
            }
        }
    }

    /// When the input keeps the stored secret (leaves it out, same type) but moves a URL it is
    /// sent to: the secret's field and the URLs moved.
    fn unbound_secret(&self, current: &App, existing: &Secret) -> Option<(&'static str, Vec<&'static str>)> {
        if self.connection.auth.type_name() != existing.type_name() {
            return None;
        }
        let moved = |new: &str, old: &str| {
            let new = new.trim().trim_end_matches('/');
            let written = crate::validation::check_written_host(&mut ValidationErrors::default(), "", new);
            written && crate::validation::url_target(new).is_some() && !crate::validation::same_target(new, old)
        };
        let mut urls = Vec::new();
        if moved(&self.connection.base_url, &current.connection.base_url) {
            urls.push("connection.base_url");
        }
        let field = match (&self.connection.auth, &current.connection.auth) {
            (AuthInput::Bearer { token: None }, _) => "token",
            (AuthInput::Basic { password: None, .. }, _) => "password",
            (
                AuthInput::OAuth2ClientCredentials { client_secret: None, token_url, .. },
                AuthConfig::OAuth2ClientCredentials { token_url: old, .. },
            ) => {
                if moved(token_url, old) {
                    urls.push("connection.auth.token_url");
                }
                "client_secret"
            }
            (AuthInput::OAuth2ClientCredentials { client_secret: None, .. }, _) => "client_secret",
            _ => return None,
        };
        (!urls.is_empty()).then_some((field, urls))
    }

    /// The admin-editable view of a stored app (secret left out).
    pub fn from_app(app: &App) -> Self {
        Self {
            name: app.name.clone(),
            description: app.description.clone(),
            connector: app.connector,
            connection: ConnectionInput {
                base_url: app.connection.base_url.clone(),
                auth: AuthInput::from_config(&app.connection.auth),
            },
            provisioning: app.provisioning,
        }
    }
}

/// A validated app input, without its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedApp {
    pub name: String,
    pub description: Option<String>,
    pub connector: ConnectorKind,
    pub connection: ConnectionConfig,
    pub provisioning: ProvisioningSettings,
}

impl App {
    /// The parameters in effect: the admin's, or the default mapping.
    pub fn effective_parameters(&self) -> std::borrow::Cow<'_, [crate::mapping::Parameter]> {
        match &self.parameters {
            Some(p) => std::borrow::Cow::Borrowed(p.as_slice()),
            None => std::borrow::Cow::Owned(crate::mapping::default_parameters()),
        }
    }

    pub fn new(v: ValidatedApp, now: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            name: v.name,
            description: v.description,
            connector: v.connector,
            connection: v.connection,
            provisioning: v.provisioning,
            parameters: None,
            rules: Vec::new(),
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    pub fn updated(&self, v: ValidatedApp, now: DateTime<Utc>) -> Self {
        Self {
            name: v.name,
            description: v.description,
            connector: v.connector,
            connection: v.connection,
            provisioning: v.provisioning,
            updated_at: now,
            version: self.version + 1,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: serde_json::Value) -> AppInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn splits_secret_from_config() {
        let app = input(json!({"name": "Wiki", "connection": {"base_url": "https://wiki.example.com/scim/v2/",
            "auth": {"type": "bearer", "token": "s3cret"}}}));
        let (v, secret) = app.validate(None).unwrap();
        assert_eq!(v.connection.base_url, "https://wiki.example.com/scim/v2");
        assert_eq!(v.connection.auth, AuthConfig::Bearer {});
        assert_eq!(secret, Secret::Bearer { token: "s3cret".into() });
        assert!(!format!("{secret:?}").contains("s3cret"));
        let shown = serde_json::to_string(&v.connection).unwrap();
        assert!(!shown.contains("s3cret"));
        assert_eq!(v.provisioning, ProvisioningSettings::default());
    }

    #[test]
    fn missing_secret_is_kept_only_for_same_type() {
        let existing = Secret::Bearer { token: "old".into() };
        let app = input(json!({"name": "Wiki", "connection": {"base_url": "https://w.example.com",
            "auth": {"type": "bearer"}}}));
        let (_, secret) = app.clone().validate(Some(&existing)).unwrap();
        assert_eq!(secret, existing);
        let err = app.validate(None).unwrap_err();
        assert_eq!(err.0[0].field, "connection.auth.token");
        let basic = input(json!({"name": "Wiki", "connection": {"base_url": "https://w.example.com",
            "auth": {"type": "basic", "username": "u"}}}));
        let err = basic.validate(Some(&existing)).unwrap_err();
        assert_eq!(err.0[0].field, "connection.auth.password");
    }

    #[test]
    fn bad_urls_are_named() {
        for url in ["ftp://x.example.com", "not a url", "https://user:pw@x.example.com"] {
            let app = input(json!({"name": "A", "connection": {"base_url": url,
                "auth": {"type": "bearer", "token": "t"}}}));
            let err = app.validate(None).unwrap_err();
            assert_eq!(err.0[0].field, "connection.base_url", "{url}");
        }
    }

    fn stored(connection: serde_json::Value) -> App {
        let v = input(json!({"name": "Wiki", "connection": connection}));
        let (validated, _) = v.validate(None).unwrap();
        App::new(validated, crate::now())
    }

    #[test]
    fn a_kept_secret_never_moves_to_another_scheme_host_or_port() {
        let current =
            stored(json!({"base_url": "https://wiki.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}}));
        let existing = Secret::Bearer { token: "t".into() };
        let change = |base_url: &str, token: Option<&str>| {
            let mut auth = json!({"type": "bearer"});
            if let Some(t) = token {
                auth["token"] = json!(t);
            }
            input(json!({"name": "Wiki", "connection": {"base_url": base_url, "auth": auth}}))
                .validate_change(&current, &existing)
        };
        for moved in [
            "https://evil.example.com/scim/v2",
            "http://wiki.example.com/scim/v2",
            "https://wiki.example.com:8443/scim/v2",
        ] {
            let err = change(moved, None).unwrap_err();
            assert_eq!(err.0.len(), 1, "{moved}: {err}");
            assert_eq!(err.0[0].field, "connection.auth.token", "{moved}");
            assert!(err.0[0].reason.contains("connection.base_url"), "{err}");
            let (_, secret) = change(moved, Some("n3w")).unwrap();
            assert_eq!(secret, Secret::Bearer { token: "n3w".into() });
        }
        for same in ["https://wiki.example.com/other/v2", "https://WIKI.example.com:443/scim/v2/"] {
            let (v, secret) = change(same, None).unwrap();
            assert_eq!(secret, existing, "{same}");
            assert_eq!(v.connection.base_url, same.trim_end_matches('/'));
        }
        // A URL that is not one is named as such, not as a moved secret.
        let err = change("http:///etc/passwd", None).unwrap_err();
        assert_eq!(err.0.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["connection.base_url"]);
    }

    #[test]
    fn an_oauth_client_secret_is_bound_to_the_token_url_and_the_base_url() {
        let current =
            stored(json!({"base_url": "https://app.example.com/scim", "auth": {"type": "oauth2_client_credentials",
            "token_url": "https://login.example.com/token", "client_id": "c", "client_secret": "s"}}));
        let existing = Secret::OAuth2ClientCredentials { client_secret: "s".into() };
        let change = |base_url: &str, token_url: &str| {
            input(json!({"name": "Wiki", "connection": {"base_url": base_url, "auth": {"type": "oauth2_client_credentials",
                "token_url": token_url, "client_id": "c"}}}))
            .validate_change(&current, &existing)
        };
        let err = change("https://app.example.com/scim", "https://login.evil.example/token").unwrap_err();
        assert_eq!(err.0[0].field, "connection.auth.client_secret");
        assert!(err.0[0].reason.contains("connection.auth.token_url"));
        let err = change("https://evil.example/scim", "https://login.evil.example/token").unwrap_err();
        assert!(err.0[0].reason.contains("connection.base_url and connection.auth.token_url"), "{err}");
        assert!(change("https://app.example.com/v2", "https://login.example.com/oauth2/token").is_ok());
    }

    #[test]
    fn a_url_must_name_a_host_as_written() {
        for url in [
            "http:///etc/passwd",
            "http:/wiki.example.com",
            "http:\\\\wiki.example.com",
            "file:///etc/passwd",
            "https://",
        ] {
            let app =
                input(json!({"name": "A", "connection": {"base_url": url, "auth": {"type": "bearer", "token": "t"}}}));
            let err = app.validate(None).unwrap_err();
            assert_eq!(err.0[0].field, "connection.base_url", "{url}");
        }
    }

    #[test]
    fn unknown_auth_fields_are_refused() {
        let r: Result<AppInput, _> =
            serde_json::from_value(json!({"name": "A", "connection": {"base_url": "https://a.example.com",
            "auth": {"type": "bearer", "token": "t", "tokn": "x"}}}));
        assert!(r.is_err());
    }
}
