//! `provisioner`: runs the service and administers its store.

mod config;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Directory for the embedded database and the secret key file [default: ./data].
    #[arg(long, env = "PROVISIONER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL (`sqlite://PATH`); by default the embedded SQLite file in the data directory.
    #[arg(long, env = "PROVISIONER_DATABASE_URL")]
    database_url: Option<String>,
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
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
        }
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

async fn serve(settings: &Settings, listen: Option<SocketAddr>, store_args: &StoreArgs) -> anyhow::Result<()> {
    let store_settings = settings.store(store_args);
    // The embedded store has one engine: its process holds the data directory's lock.
    let _lock = store_settings.lock()?;
    let keyring = store_settings.keyring(std::env::var("PROVISIONER_SECRET_KEY").ok().as_deref())?;
    let store = store_settings.open().await?;
    let state = AppState::new(store, Arc::new(keyring), engine::EngineConfig::default());
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
    let addr = settings.listen(listen);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    state.service.engine().start().await.map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?;
    tracing::info!(%addr, data_dir = %store_settings.data_dir.display(), "provisioner listening");
    axum::serve(listener, server::router(state.clone())).with_graceful_shutdown(shutdown_signal()).await?;
    state.service.engine().stop();
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
    match cli.command {
        Command::Serve { listen, store } => serve(&settings, listen, &store).await,
        Command::Migrate { store } => {
            settings.store(&store).open().await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Healthcheck { listen } => healthcheck(settings.listen(listen)).await,
        Command::Token { command: TokenCommand::Create { name, store } } => {
            let store_settings = settings.store(&store);
            let keyring = store_settings.keyring(std::env::var("PROVISIONER_SECRET_KEY").ok().as_deref())?;
            let state = AppState::new(store_settings.open().await?, Arc::new(keyring), engine::EngineConfig::default());
            let (record, token) =
                state.service.create_token(&name, &Actor::cli()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("created token {:?} ({}); it is shown only this once:", record.name, record.id);
            println!("{token}");
            Ok(())
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
