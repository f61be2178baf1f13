//! Test harness: a fresh service on a fresh database per test.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use server::AppState;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The service in-process on 127.0.0.1 with its own temporary data directory (and, on
/// PostgreSQL, its own database).
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub client: reqwest::Client,
    _data_dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
    _database: Option<testkit::postgres::TestDatabase>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
        self.state.service.engine().stop();
    }
}

/// An answer, with the body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub etag: Option<String>,
    pub body: Value,
}

impl Answer {
    /// Asserts a problem document naming `field`, and returns its reason.
    #[track_caller]
    pub fn problem_field(&self, status: u16, field: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{self:#?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:#?}");
        assert_eq!(self.body["status"], status);
        let errors = self.body["errors"].as_array().unwrap_or_else(|| panic!("no errors in {self:#?}"));
        let e = errors.iter().find(|e| e["field"] == field).unwrap_or_else(|| panic!("{field} not named in {self:#?}"));
        let reason = e["reason"].as_str().unwrap().to_owned();
        assert!(!reason.is_empty());
        reason
    }

    #[track_caller]
    pub fn problem(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "{self:#?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:#?}");
        assert_eq!(self.body["status"], status);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_on(Backend::Sqlite).await
    }

    pub async fn start_on(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// [`Self::start_on`] with the engine's settings changed by `configure` first.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut engine::EngineConfig)) -> Self {
        Self::start_configured(backend, configure, |_| {}).await
    }

    /// [`Self::start_on`] with a public URL (`--public-url`).
    pub async fn start_with_public_url(backend: Backend, url: &str) -> Self {
        let url = url.to_owned();
        Self::start_configured(backend, |_| {}, move |state| state.set_public_url(&url).unwrap()).await
    }

    /// [`Self::start_on`] with the engine building apps' connectors with `connectors` only.
    pub async fn start_with_connectors(backend: Backend, connectors: engine::ConnectorRegistry) -> Self {
        Self::start_assembled(backend, |_| {}, |_| {}, connectors).await
    }

    /// [`Self::start_with`], with the service's state changed by `state_fn` before it serves.
    pub async fn start_configured(
        backend: Backend,
        configure: impl FnOnce(&mut engine::EngineConfig),
        state_fn: impl FnOnce(&mut AppState),
    ) -> Self {
        Self::start_assembled(backend, configure, state_fn, engine::ConnectorRegistry::with_defaults()).await
    }

    async fn start_assembled(
        backend: Backend,
        configure: impl FnOnce(&mut engine::EngineConfig),
        state_fn: impl FnOnce(&mut AppState),
        connectors: engine::ConnectorRegistry,
    ) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let (store, database): (Arc<dyn store::Store>, _) = match backend {
            Backend::Sqlite => {
                (Arc::new(store::SqliteStore::open(&data_dir.path().join("provisioner.db")).await.unwrap()), None)
            }
            Backend::Postgres => {
                let db = testkit::postgres::TestDatabase::create().await;
                let s = store::PostgresStore::connect(&db.url, store::PostgresOptions::default()).await.unwrap();
                (Arc::new(s), Some(db))
            }
        };
        let keyring = store::secrets::Keyring::load_or_create(&data_dir.path().join("secret.key")).unwrap();
        let mut config = engine::EngineConfig {
            poll_interval: std::time::Duration::from_millis(100),
            reconcile_interval: None,
            request_timeout: std::time::Duration::from_secs(10),
            http_backoff_base: std::time::Duration::from_millis(20),
            release_leases_at_start: backend == Backend::Sqlite,
            // A test that gets an app quarantined sees it probed again within a second.
            quarantine: engine::QuarantinePolicy {
                backoff: vec![std::time::Duration::from_secs(1)],
                ..Default::default()
            },
            ..Default::default()
        };
        configure(&mut config);
        let sources = engine::SourceRegistry::with_defaults();
        let mut state = AppState::with_registries(store, Arc::new(keyring), config, connectors, sources);
        state.service.bootstrap(Some(TOKEN)).await.unwrap();
        state.service.engine().start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        state.set_listen_addr(addr);
        state_fn(&mut state);
        let app = server::router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, client: reqwest::Client::new(), _data_dir: data_dir, task, _database: database }
    }

    /// Sets a user's e-mail address in the database directly, bypassing every check: what a
    /// version without unique addresses may have stored.
    pub async fn set_email_behind_the_back(&self, user: &str, email: &str) {
        let key = directory::User::email_key(email);
        match &self._database {
            None => {
                let path = self._data_dir.path().join("provisioner.db");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
                sqlx::query("UPDATE users SET email = ?, email_key = ? WHERE id = ?")
                    .bind(email)
                    .bind(key)
                    .bind(user)
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            Some(db) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::query("UPDATE users SET email = $1, email_key = $2 WHERE id = $3::uuid")
                    .bind(email)
                    .bind(key)
                    .bind(user)
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request with the admin token; `body` is sent as JSON when given.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call_with(method, path, body, Some(TOKEN), &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, Some(body)).await
    }
    pub async fn put(&self, path: &str) -> Answer {
        self.call(Method::PUT, path, None).await
    }
    pub async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates a user and returns its JSON.
    pub async fn user(&self, username: &str) -> Value {
        let a = self
            .post(
                "/api/v1/users",
                serde_json::json!({"username": username, "email": format!("{username}@example.com")}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:#?}");
        a.body
    }

    /// The number of audit entries and change-feed rows: what a write leaves behind.
    pub async fn footprint(&self) -> (usize, usize) {
        let store = self.state.service.store();
        let audit = store
            .list_audit(&store::AuditQuery {
                page: store::PageRequest { limit: 500, cursor: None },
                ..Default::default()
            })
            .await
            .unwrap();
        let changes = store.changes_after(0, 10_000).await.unwrap();
        (audit.items.len(), changes.len())
    }
}

pub async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = resp.bytes().await.unwrap();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer { status, content_type, etag, body }
}
