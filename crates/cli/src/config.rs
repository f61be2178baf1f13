//! Settings: command-line flags, then environment variables, then an optional TOML file,
//! then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The TOML configuration file. Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub admin_token: Option<String>,
    pub log: Option<String>,
    /// Seconds a client has to send a request's headers [default: 10].
    pub header_timeout_seconds: Option<u64>,
    /// Each window of this many seconds must bring 1 KiB of a request body, or its end [default: 30].
    pub body_timeout_seconds: Option<u64>,
    /// Seconds an idle keep-alive connection stays open [default: 60].
    pub keep_alive_seconds: Option<u64>,
    /// The most connections open at once [default: min(10000, open-file limit - 256)].
    pub max_connections: Option<usize>,
    /// Also refuse connections to apps and sources on loopback and private ranges [default: false].
    pub deny_private_targets: Option<bool>,
    /// Ranges (CIDR) apps and sources may be reached on even when refused otherwise.
    pub allow_targets: Option<Vec<String>>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))
    }
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// PostgreSQL pool size.
    pub pool_size: Option<u32>,
    /// PostgreSQL statement timeout, in seconds (0: the server's).
    pub statement_timeout_seconds: Option<u64>,
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

impl StoreSettings {
    /// Whether several processes may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.database_url.as_deref().is_some_and(is_postgres)
    }

    /// Where the data is, for the log (no password).
    pub fn describe(&self) -> String {
        match self.database_url.as_deref() {
            Some(url) if is_postgres(url) => match url.split_once('@') {
                Some((_, host)) => format!("postgres://…@{host}"),
                None => url.to_owned(),
            },
            Some(url) => url.to_owned(),
            None => self.data_dir.join("provisioner.db").display().to_string(),
        }
    }

    /// Opens the store named by the settings, applying migrations.
    pub async fn open(&self) -> anyhow::Result<std::sync::Arc<dyn store::Store>> {
        match self.database_url.as_deref() {
            Some(url) if url.starts_with("sqlite:") => {
                let s = store::SqliteStore::open_url(url).await.with_context(|| "cannot open the SQLite database")?;
                Ok(std::sync::Arc::new(s))
            }
            Some(url) if is_postgres(url) => {
                let mut options = store::PostgresOptions::default();
                if let Some(n) = self.pool_size.filter(|n| *n > 0) {
                    options.max_connections = n;
                }
                if let Some(secs) = self.statement_timeout_seconds {
                    options.statement_timeout = (secs > 0).then(|| std::time::Duration::from_secs(secs));
                }
                let s =
                    store::PostgresStore::connect(url, options).await.map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
                Ok(std::sync::Arc::new(s))
            }
            Some(other) => {
                let scheme = other.split(':').next().unwrap_or("");
                bail!("unsupported database URL scheme {scheme:?}: use postgres://... or sqlite://PATH")
            }
            None => {
                self.create_data_dir()?;
                let path = self.data_dir.join("provisioner.db");
                let s = store::SqliteStore::open(&path)
                    .await
                    .with_context(|| format!("cannot open the database {}", path.display()))?;
                Ok(std::sync::Arc::new(s))
            }
        }
    }

    /// Takes the data directory's lock, so that no second `serve` runs on the same embedded
    /// store (its engine assumes it is alone). Held until the returned file is dropped.
    pub fn lock(&self) -> anyhow::Result<Option<std::fs::File>> {
        if self.database_url.as_deref().is_some_and(|u| !u.starts_with("sqlite:")) {
            return Ok(None);
        }
        self.create_data_dir()?;
        let path = self.data_dir.join("provisioner.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!("another provisioner is already serving the data directory {}", self.data_dir.display())
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
    }

    /// Creates the data directory, readable by its owner only, when it does not exist.
    fn create_data_dir(&self) -> anyhow::Result<()> {
        if self.data_dir.is_dir() {
            return Ok(());
        }
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&self.data_dir)
            .with_context(|| format!("cannot create data directory {}", self.data_dir.display()))
    }

    /// The keyring for secrets: from PROVISIONER_SECRET_KEY (base64 keys separated by
    /// commas, the first encrypts) or the key file in the data directory (created 0600).
    pub fn keyring(&self, env_key: Option<&str>) -> anyhow::Result<store::secrets::Keyring> {
        if let Some(keys) = env_key.filter(|k| !k.trim().is_empty()) {
            let keys: Vec<&str> = keys.split(',').collect();
            return store::secrets::Keyring::from_base64(&keys).context("PROVISIONER_SECRET_KEY");
        }
        self.create_data_dir()?;
        Ok(store::secrets::Keyring::load_or_create(&self.data_dir.join("secret.key"))?)
    }
}
