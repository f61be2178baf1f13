//! `provisioner`: runs the service and administers its store.

mod config;
mod sources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use config::{FileConfig, StoreSettings};
use directory::Actor;
use server::{AppState, Bootstrap};

#[derive(Parser)]
#[command(
    name = "provisioner",
    version,
    about = "Identity provisioning engine: keeps app accounts in step with one directory"
)]
struct Cli {
    /// A TOML file with the same settings (listen, data_dir, database_url, admin_token, log).
    #[arg(long, global = true, env = "PROVISIONER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    outbound: OutboundArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Directory for the embedded database and the secret key file [default: ./data].
    #[arg(long, env = "PROVISIONER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL: `postgres://USER@HOST:PORT/DB` to share one PostgreSQL database between
    /// several processes, or `sqlite://PATH`; by default the embedded SQLite file in the data directory.
    #[arg(long, env = "PROVISIONER_DATABASE_URL")]
    database_url: Option<String>,
    /// PostgreSQL: the most connections this process opens [default: 10].
    #[arg(long, env = "PROVISIONER_DB_POOL_SIZE")]
    db_pool_size: Option<u32>,
    /// PostgreSQL: statements running longer are cancelled [default: 30].
    #[arg(long, env = "PROVISIONER_DB_STATEMENT_TIMEOUT_SECONDS")]
    db_statement_timeout_seconds: Option<u64>,
}

/// Timeouts and limits of the HTTP connections.
#[derive(Args, Clone, Default)]
struct ConnectionArgs {
    /// Seconds a client has to send a request's headers [default: 10].
    #[arg(long, env = "PROVISIONER_HEADER_TIMEOUT_SECONDS")]
    header_timeout_seconds: Option<u64>,
    /// A request body must bring 1 KiB (or its end) in every window of this many seconds [default: 30].
    #[arg(long, env = "PROVISIONER_BODY_TIMEOUT_SECONDS")]
    body_timeout_seconds: Option<u64>,
    /// Seconds an idle keep-alive connection stays open [default: 60].
    #[arg(long, env = "PROVISIONER_KEEP_ALIVE_SECONDS")]
    keep_alive_seconds: Option<u64>,
    /// The most connections open at once [default: min(10000, open-file limit - 256)].
    #[arg(long, env = "PROVISIONER_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
}

/// Where connections to apps and directory sources may go (`serve`, `source sync`).
/// Link-local (169.254.0.0/16, fe80::/10), 0.0.0.0/8, multicast and broadcast addresses are
/// always refused, unless allowed with --allow-target.
#[derive(Args, Clone, Default)]
struct OutboundArgs {
    /// Also refuse loopback and private ranges (127.0.0.0/8, ::1, 10.0.0.0/8, 172.16.0.0/12,
    /// 192.168.0.0/16, fc00::/7).
    #[arg(long, global = true, env = "PROVISIONER_DENY_PRIVATE_TARGETS")]
    deny_private_targets: bool,
    /// Allow this range (CIDR such as 10.20.0.0/16, or one address) even when it is refused
    /// otherwise; repeatable (comma-separated in the environment variable).
    #[arg(
        long = "allow-target",
        value_name = "CIDR",
        global = true,
        env = "PROVISIONER_ALLOW_TARGETS",
        value_delimiter = ','
    )]
    allow_targets: Vec<String>,
}

/// What a `serve` process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    /// The API and console, and the engine's planner and workers.
    All,
    /// Only the API and console (the engine's work runs in `worker` processes).
    Api,
    /// Only the planner and workers (and /healthz).
    Worker,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (API) until interrupted.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "PROVISIONER_LISTEN")]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        store: StoreArgs,
        /// Minutes after which an unused console session ends [default: 30].
        #[arg(long, env = "PROVISIONER_SESSION_IDLE_MINUTES")]
        session_idle_minutes: Option<u64>,
        /// Mark console cookies Secure even without `X-Forwarded-Proto: https` (behind a TLS proxy).
        #[arg(long, env = "PROVISIONER_SECURE_COOKIES")]
        secure_cookies: bool,
        /// The URL people and apps reach this server at (e.g. `https://id.example.com`): the SAML
        /// IdP's entity IDs, endpoints and invitation links are made from it; an https URL makes
        /// every cookie Secure [default: the listen address; no invitation links].
        #[arg(long, env = "PROVISIONER_PUBLIC_URL")]
        public_url: Option<String>,
        /// What this process runs: `all`, `api` or `worker`.
        #[arg(long, env = "PROVISIONER_ROLE", value_enum, default_value = "all")]
        role: Role,
        /// Seconds a claimed operation stays with its worker before another process may take it [default: 120].
        #[arg(long, env = "PROVISIONER_LEASE_SECONDS")]
        lease_seconds: Option<u64>,
        /// Seconds between full reconciliations of each app [default: 3600]; 0 turns them off.
        #[arg(long, env = "PROVISIONER_RECONCILE_SECONDS")]
        reconcile_seconds: Option<u64>,
        /// Seconds before each connection test of a quarantined app, comma-separated; the last
        /// repeats [default: 300,1800,7200,21600,86400].
        #[arg(long, env = "PROVISIONER_QUARANTINE_BACKOFF")]
        quarantine_backoff: Option<String>,
        #[command(flatten)]
        connections: ConnectionArgs,
    },
    /// Create the database or bring it up to date, then exit.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Exit 0 when the service at the listen address answers /healthz, 1 otherwise.
    Healthcheck {
        /// Address the service listens on [default: 127.0.0.1:8080].
        #[arg(long, env = "PROVISIONER_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Manage API tokens.
    #[command(visible_alias = "tokens")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage admin console accounts.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Directory sources (LDAP / Active Directory): list them, sync one now.
    Source {
        #[command(subcommand)]
        command: sources::SourceCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a console admin; the password is read from standard input (one line).
    Create {
        /// The admin's username (shown in the audit log).
        #[arg(long)]
        username: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token and print it once.
    Create {
        /// A name saying who or what uses the token (shown in the audit log).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the API tokens that are not revoked: id, name, created, last used (never the token).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an API token; every process refuses it within 2 seconds.
    Revoke {
        /// The token's id (from `tokens list`).
        id: uuid::Uuid,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl TokenCommand {
    fn store(&self) -> &StoreArgs {
        match self {
            Self::Create { store, .. } | Self::List { store } | Self::Revoke { store, .. } => store,
        }
    }
}

struct Settings {
    file: FileConfig,
}

impl Settings {
    fn store(&self, args: &StoreArgs) -> StoreSettings {
        StoreSettings {
            data_dir: args
                .data_dir
                .clone()
                .or_else(|| self.file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from("data")),
            database_url: args.database_url.clone().or_else(|| self.file.database_url.clone()),
            pool_size: args.db_pool_size,
            statement_timeout_seconds: args.db_statement_timeout_seconds,
        }
    }

    fn connections(&self, args: &ConnectionArgs) -> anyhow::Result<server::listener::ConnectionLimits> {
        let mut limits = server::listener::ConnectionLimits::default();
        let secs = |flag: Option<u64>, file: Option<u64>, name: &str| -> anyhow::Result<Option<Duration>> {
            match flag.or(file) {
                Some(0) => anyhow::bail!("{name} must be at least 1 second"),
                other => Ok(other.map(Duration::from_secs)),
            }
        };
        let f = &self.file;
        if let Some(d) = secs(args.header_timeout_seconds, f.header_timeout_seconds, "--header-timeout-seconds")? {
            limits.header_timeout = d;
        }
        if let Some(d) = secs(args.body_timeout_seconds, f.body_timeout_seconds, "--body-timeout-seconds")? {
            limits.body_timeout = d;
        }
        if let Some(d) = secs(args.keep_alive_seconds, f.keep_alive_seconds, "--keep-alive-seconds")? {
            limits.keep_alive_timeout = d;
        }
        match args.max_connections.or(f.max_connections) {
            Some(0) => anyhow::bail!("--max-connections must be at least 1"),
            Some(n) => limits.max_connections = n,
            None => {}
        }
        Ok(limits)
    }

    /// The outbound target policy: flags (or their environment variables), then the file.
    fn outbound(&self, args: &OutboundArgs) -> anyhow::Result<outbound::TargetPolicy> {
        let deny_private = args.deny_private_targets || self.file.deny_private_targets.unwrap_or(false);
        let written = if args.allow_targets.is_empty() {
            self.file.allow_targets.clone().unwrap_or_default()
        } else {
            args.allow_targets.clone()
        };
        let allow = written
            .iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.parse::<outbound::Cidr>().map_err(|e| anyhow::anyhow!("--allow-target: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(outbound::TargetPolicy::new(deny_private, allow))
    }

    fn listen(&self, flag: Option<SocketAddr>) -> SocketAddr {
        flag.or(self.file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

fn init_logging(file_level: Option<&str>) {
    let filter =
        std::env::var("RUST_LOG").ok().or_else(|| file_level.map(str::to_owned)).unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

/// Settings of the admin console.
struct ConsoleArgs {
    session_idle_minutes: Option<u64>,
    secure_cookies: bool,
    public_url: Option<String>,
}

/// How a `serve` process shares the engine's work.
struct WorkArgs {
    role: Role,
    lease_seconds: Option<u64>,
    reconcile_seconds: Option<u64>,
    quarantine_backoff: Option<String>,
    connections: ConnectionArgs,
}

async fn serve(
    settings: &Settings,
    listen: Option<SocketAddr>,
    store_args: &StoreArgs,
    console: ConsoleArgs,
    work: WorkArgs,
    outbound: outbound::TargetPolicy,
) -> anyhow::Result<()> {
    let limits = settings.connections(&work.connections)?;
    let store_settings = settings.store(store_args);
    // The embedded store has one engine: its process holds the data directory's lock.
    let _lock = store_settings.lock()?;
    let keyring = store_settings.keyring(std::env::var("PROVISIONER_SECRET_KEY").ok().as_deref())?;
    let store = store_settings.open().await?;
    let shared = store_settings.is_shared();
    let mut engine_config = engine::EngineConfig {
        run_work: work.role != Role::Api,
        // Several processes share a PostgreSQL store: leases expire instead of being released
        // at start, and one process at a time plans.
        release_leases_at_start: !shared,
        planner_lease: shared.then(|| Duration::from_secs(15)),
        outbound,
        ..Default::default()
    };
    tracing::info!(policy = %engine_config.outbound, "outbound connections");
    if let Some(secs) = work.lease_seconds.filter(|s| *s > 0) {
        engine_config.lease = Duration::from_secs(secs);
    }
    if let Some(secs) = work.reconcile_seconds {
        engine_config.reconcile_interval = (secs > 0).then(|| Duration::from_secs(secs));
    }
    if let Some(text) = work.quarantine_backoff.as_deref().filter(|t| !t.trim().is_empty()) {
        engine_config.quarantine.backoff =
            engine::QuarantinePolicy::parse_backoff(text).map_err(|e| anyhow::anyhow!("--quarantine-backoff: {e}"))?;
    }
    let mut state = AppState::new(store, Arc::new(keyring), engine_config);
    let mut console_config = server::console::ConsoleConfig::default();
    if let Some(minutes) = console.session_idle_minutes.filter(|m| *m > 0) {
        console_config.idle_timeout = Duration::from_secs(minutes.saturating_mul(60));
    }
    console_config.secure_cookies = console.secure_cookies;
    // The SAML IdP's sign-in pages share the console's session and rate-limit settings.
    let idp = server::saml::IdpState::new(state.service.store().clone(), Some(state.service.sources().clone()))
        .with_config(console_config.clone());
    state.idp = Arc::new(idp);
    state.console = Arc::new(server::console::ConsoleState::new(console_config));
    if let Some(url) = console.public_url.filter(|u| !u.trim().is_empty()) {
        state.set_public_url(&url).map_err(|e| anyhow::anyhow!("--public-url: {e}"))?;
    }
    if let Some(password) = std::env::var("PROVISIONER_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty()) {
        if state.service.bootstrap_admin(&password).await.map_err(|e| anyhow::anyhow!("admin bootstrap: {e}"))? {
            tracing::info!("created the console admin `admin` from PROVISIONER_ADMIN_PASSWORD");
        }
    }
    let given = std::env::var("PROVISIONER_ADMIN_TOKEN").ok().or_else(|| settings.file.admin_token.clone());
    match state
        .service
        .bootstrap(given.as_deref().filter(|t| !t.is_empty()))
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?
    {
        Bootstrap::Generated(token) => {
            // Shown once, on the terminal, never through the log.
            println!("No API token existed; created the admin token (shown only this once):\n\n    {token}\n");
        }
        Bootstrap::UsedGiven => tracing::info!("stored PROVISIONER_ADMIN_TOKEN as the admin token"),
        Bootstrap::AlreadyHasTokens => {}
    }
    if let Err(e) = state.service.warn_email_conflicts().await {
        tracing::warn!(error = %e, "cannot list the e-mail addresses shared by several users");
    }
    let addr = settings.listen(listen);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    state.set_listen_addr(listener.local_addr().unwrap_or(addr));
    state.service.engine().start().await.map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?;
    if work.role != Role::Api {
        state.service.sources().start();
    }
    tracing::info!(%addr, store = %store_settings.describe(), "provisioner listening");
    let router = match work.role {
        Role::Worker => server::health_router(state.clone()),
        Role::All | Role::Api => server::router(state.clone()),
    };
    tracing::info!(role = ?work.role, "serving");
    tracing::info!(
        header_timeout = ?limits.header_timeout,
        body_timeout = ?limits.body_timeout,
        keep_alive = ?limits.keep_alive_timeout,
        max_connections = limits.max_connections,
        "connection limits"
    );
    server::listener::serve(listener, router, limits, shutdown_signal()).await?;
    state.service.engine().stop();
    state.service.sources().stop();
    Ok(())
}

async fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let resp = client.get(&url).send().await.with_context(|| format!("{url} does not answer"))?;
    if resp.status().is_success() {
        println!("ok");
        Ok(())
    } else {
        anyhow::bail!("{url} answered {}", resp.status())
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    init_logging(file.log.as_deref());
    let settings = Settings { file };
    let outbound = settings.outbound(&cli.outbound)?;
    match cli.command {
        Command::Serve {
            listen,
            store,
            session_idle_minutes,
            secure_cookies,
            public_url,
            role,
            lease_seconds,
            reconcile_seconds,
            quarantine_backoff,
            connections,
        } => {
            let work = WorkArgs { role, lease_seconds, reconcile_seconds, quarantine_backoff, connections };
            let console = ConsoleArgs { session_idle_minutes, secure_cookies, public_url };
            serve(&settings, listen, &store, console, work, outbound).await
        }
        Command::Migrate { store } => {
            let store = settings.store(&store).open().await?;
            println!("database is up to date");
            let shared = store.email_conflicts().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if !shared.is_empty() {
                println!(
                    "{} e-mail address(es) are shared by more than one user: each person needs their own (it is their \
                     SAML NameID). See GET /api/v1/users/email-conflicts.",
                    shared.len()
                );
            }
            Ok(())
        }
        Command::Healthcheck { listen } => healthcheck(settings.listen(listen)).await,
        Command::Token { command } => {
            let store_settings = settings.store(command.store());
            let keyring = store_settings.keyring(std::env::var("PROVISIONER_SECRET_KEY").ok().as_deref())?;
            let state = AppState::new(store_settings.open().await?, Arc::new(keyring), engine::EngineConfig::default());
            match command {
                TokenCommand::Create { name, .. } => {
                    let (record, token) =
                        state.service.create_token(&name, &Actor::cli()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    eprintln!("created token {:?} ({}); it is shown only this once:", record.name, record.id);
                    println!("{token}");
                }
                TokenCommand::List { .. } => {
                    let tokens = state.service.list_tokens().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    println!("{:<36}  {:<25}  {:<20}  LAST USED", "ID", "NAME", "CREATED");
                    const WHEN: &str = "%Y-%m-%d %H:%M:%SZ";
                    for t in tokens {
                        let used = t.last_used_at.map(|u| u.format(WHEN).to_string()).unwrap_or_else(|| "never".into());
                        println!("{:<36}  {:<25}  {:<20}  {used}", t.id, t.name, t.created_at.format(WHEN));
                    }
                }
                TokenCommand::Revoke { id, .. } => {
                    state.service.revoke_token(id, &Actor::cli()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    eprintln!("revoked token {id}; every process refuses it within 2 seconds");
                }
            }
            Ok(())
        }
        Command::Admin { command: AdminCommand::Create { username, store } } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']);
            let store_settings = settings.store(&store);
            let keyring = store_settings.keyring(std::env::var("PROVISIONER_SECRET_KEY").ok().as_deref())?;
            let state = AppState::new(store_settings.open().await?, Arc::new(keyring), engine::EngineConfig::default());
            let admin = state
                .service
                .create_admin(&Actor::cli(), &username, password)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("created the console admin {:?} ({})", admin.username, admin.id);
            Ok(())
        }
        Command::Source { command } => {
            let store_settings = settings.store(command.store());
            let keyring = store_settings.keyring(std::env::var("PROVISIONER_SECRET_KEY").ok().as_deref())?;
            let config = engine::EngineConfig { outbound, ..Default::default() };
            let state = AppState::new(store_settings.open().await?, Arc::new(keyring), config);
            sources::run(state, command).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("provisioner: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("provisioner: {e:#}");
            ExitCode::FAILURE
        }
    }
}
