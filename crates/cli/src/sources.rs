//! `provisioner source ...`: directory sources from the command line.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use directory::{Actor, DirectorySource, SourceSync, SyncMode, SyncState};
use server::AppState;
use uuid::Uuid;

use crate::StoreArgs;

#[derive(Subcommand)]
pub enum SourceCommand {
    /// List the directory sources with their last sync.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Sync a source now (full by default) and wait for the result.
    Sync {
        /// The source's id or name.
        source: String,
        /// Read only the entries changed since the last sync.
        #[arg(long)]
        incremental: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Let a sync stopped by the mass-suspension guard go on, and wait for it.
    Confirm {
        /// The source's id or name.
        source: String,
        /// The id of the sync awaiting confirmation.
        sync: Uuid,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl SourceCommand {
    pub fn store(&self) -> &StoreArgs {
        match self {
            Self::List { store } | Self::Sync { store, .. } | Self::Confirm { store, .. } => store,
        }
    }
}

async fn find(state: &AppState, name: &str) -> anyhow::Result<DirectorySource> {
    let sources = state.service.list_sources().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let wanted = name.trim();
    sources
        .into_iter()
        .find(|s| s.id.to_string() == wanted || s.name.eq_ignore_ascii_case(wanted))
        .with_context(|| format!("no directory source has the id or name {wanted:?} (see `provisioner source list`)"))
}

fn summary(sync: &SourceSync) -> String {
    let c = &sync.counts;
    format!(
        "{} sync {}: {} entries read, {} created, {} updated, {} suspended, {} reactivated, {} failed",
        sync.mode.as_str(),
        sync.state.as_str(),
        c.entries_read,
        c.created,
        c.updated,
        c.suspended,
        c.reactivated,
        c.failed
    )
}

fn outcome(source: &DirectorySource, sync: &SourceSync) -> anyhow::Result<()> {
    println!("{}", summary(sync));
    for e in &sync.errors {
        eprintln!("  {e}");
    }
    match sync.state {
        SyncState::Succeeded => Ok(()),
        SyncState::AwaitingConfirmation => bail!(
            "{}\nconfirm with: provisioner source confirm {} {}",
            sync.message.as_deref().unwrap_or("the sync awaits confirmation"),
            source.id,
            sync.id
        ),
        _ => bail!("the sync of {:?} failed: {}", source.name, sync.message.as_deref().unwrap_or("no reason given")),
    }
}

pub async fn run(state: AppState, command: SourceCommand) -> anyhow::Result<()> {
    match command {
        SourceCommand::List { .. } => {
            let sources = state.service.list_sources().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if sources.is_empty() {
                println!("no directory sources (add one with POST /api/v1/sources or in the console)");
            }
            for s in sources {
                let last = state.service.list_source_syncs(s.id, 1).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let last = last.first().map(summary).unwrap_or_else(|| "never synced".into());
                println!("{}  {}  {}  {}  every {} min  {}", s.id, s.name, s.flavor.as_str(), s.url, s.schedule, last);
            }
            Ok(())
        }
        SourceCommand::Sync { source, incremental, .. } => {
            let src = find(&state, &source).await?;
            let mode = if incremental { SyncMode::Incremental } else { SyncMode::Full };
            let sync = state
                .service
                .sources()
                .sync_now(src.id, Some(mode), &Actor::cli())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            outcome(&src, &sync)
        }
        SourceCommand::Confirm { source, sync, .. } => {
            let src = find(&state, &source).await?;
            state.service.confirm_source_sync(&Actor::cli(), src.id, sync).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            loop {
                let s = state.service.get_source_sync(src.id, sync).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                if s.state != SyncState::Running {
                    return outcome(&src, &s);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
