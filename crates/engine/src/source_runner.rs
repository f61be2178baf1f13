//! Running directory-source syncs: as background jobs (started by hand or by each source's
//! schedule), one page of entries per transaction, with the mass-suspension guard, and at
//! most one open sync per source across every process sharing the store (the open sync's
//! heartbeat is its lease).
//!
//! Directories are read only through the [`connectors::Source`] trait, each source opened by
//! the [`SourceRegistry`] the syncer was given (keyed by the source's kind); the planning of
//! each page is [`crate::source_sync`]'s. Users and role memberships are written only through
//! the [`DirectoryWriter`] the syncer was given (the server's service layer, which validates
//! and audits them as it does every writer's): this room writes no user to the store. What it
//! stores itself is the sync's own record (progress, heartbeat, cursor, pending suspensions).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectors::{Source, SourceError, SourceRegistry};
use directory::{
    dn_key, Actor, DirectorySource, SourceBatch, SourceSync, SourceUpdate, SyncCounts, SyncMode, SyncState, UserInput,
};
use serde::Serialize;
use store::sources::decrypt_password;
use store::{SourceCursor, Store, StoreError};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::runner::{Engine, EngineError};
use crate::source_sync::{guard_trips, missing, plan_page, suspensions, PlanState};
use crate::source_writer::{BatchOutcome, DirectoryWriter};

/// A running sync whose heartbeat is older than this was left by a process that stopped.
pub const STALE_AFTER: Duration = Duration::from_secs(300);
/// A scheduled sync is a full one when the last full sync is older than this.
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(3600);
/// At most this many problems are kept on a sync.
const MAX_ERRORS: usize = 50;
/// Entries are planned and written this many at a time, one transaction each (one page of
/// an LDAP paged search).
const BATCH: usize = 500;

/// What a sync would do: its effects on the apps, and its own counts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncDryRun {
    #[serde(flatten)]
    pub run: crate::dry_run::DryRun,
    pub sync: SyncPreview,
}

/// The sync a dry run describes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncPreview {
    pub mode: SyncMode,
    /// What it would read, create, update, suspend and reactivate.
    pub counts: SyncCounts,
    /// The source's own mass-suspension guard would stop the sync for confirmation (its
    /// suspensions are then not in the effects).
    pub awaiting_confirmation: bool,
    pub pending_suspensions: u64,
}

/// Why a sync stopped before the end.
enum Stop {
    /// The guard held the suspensions back.
    Guarded,
}

pub struct SourceSyncer {
    store: Arc<dyn Store>,
    keyring: Arc<store::secrets::Keyring>,
    engine: Arc<Engine>,
    /// Opens each source by its kind.
    sources: SourceRegistry,
    /// Writes each page's users and memberships (the service layer).
    writer: Arc<dyn DirectoryWriter>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The actor a source's writes are recorded under.
pub fn source_actor(source: &DirectorySource) -> Actor {
    Actor { kind: "source".into(), name: source.name.clone() }
}

impl SourceSyncer {
    /// A syncer whose sources are opened by `sources` (see [`SourceRegistry::with_defaults`])
    /// and whose writes go through `writer`.
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<store::secrets::Keyring>,
        engine: Arc<Engine>,
        sources: SourceRegistry,
        writer: Arc<dyn DirectoryWriter>,
    ) -> Arc<Self> {
        Arc::new(Self { store, keyring, engine, sources, writer, tasks: Mutex::new(Vec::new()) })
    }

    /// `source` opened with `bind_password`, reaching only the addresses the engine's
    /// outbound policy allows.
    fn open(&self, source: &DirectorySource, bind_password: String) -> Result<Box<dyn Source>, EngineError> {
        self.sources.open(source, bind_password, &self.engine.config().outbound).map_err(directory_error)
    }

    /// The source's bind password, decrypted.
    pub async fn password(&self, source: Uuid) -> Result<String, EngineError> {
        let ct = self.store.get_source_password(source).await?.ok_or(EngineError::NotFound("source"))?;
        decrypt_password(&self.keyring, source, &ct).map_err(|e| EngineError::Credential(e.to_string()))
    }

    /// Checks a person's password by a bind against their source as their entry's DN (for
    /// SAML sign-in). `Ok(false)` for a wrong password or a person disabled or gone there;
    /// an error when the directory cannot be asked.
    pub async fn verify_password(&self, source: Uuid, dn: &str, password: &str) -> Result<bool, EngineError> {
        let src = self.store.get_source(source).await?.ok_or(EngineError::NotFound("source"))?;
        let bind_password = self.password(source).await?;
        self.open(&src, bind_password)?.verify_password(dn, password).await.map_err(directory_error)
    }

    /// Connects, binds as the service account and reads one page: the people it held.
    pub async fn test_connection(&self, source: Uuid) -> Result<usize, EngineError> {
        let src = self.store.get_source(source).await?.ok_or(EngineError::NotFound("source"))?;
        let password = self.password(source).await?;
        self.open(&src, password)?.test_connection().await.map_err(directory_error)
    }

    /// Records a new sync of `source` and starts it in the background. `mode` `None` picks
    /// incremental when a full sync ran within [`FULL_SYNC_EVERY`], else full.
    pub async fn start_sync(
        self: &Arc<Self>,
        source: Uuid,
        mode: Option<SyncMode>,
        trigger: &str,
        actor: &Actor,
    ) -> Result<SourceSync, EngineError> {
        let sync = self.begin(source, mode, trigger, actor).await?;
        let me = self.clone();
        let job = sync.clone();
        let handle = tokio::spawn(async move {
            me.run(job).await;
        });
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
        Ok(sync)
    }

    /// Runs a sync of `source` to its end here (the CLI), returning its record.
    pub async fn sync_now(
        &self,
        source: Uuid,
        mode: Option<SyncMode>,
        actor: &Actor,
    ) -> Result<SourceSync, EngineError> {
        let sync = self.begin(source, mode, "cli", actor).await?;
        Ok(self.run(sync).await)
    }

    async fn begin(
        &self,
        source: Uuid,
        mode: Option<SyncMode>,
        trigger: &str,
        actor: &Actor,
    ) -> Result<SourceSync, EngineError> {
        let src = self.store.get_source(source).await?.ok_or(EngineError::NotFound("source"))?;
        if !src.enabled {
            return Err(
                StoreError::InvalidState(format!("source {:?} is disabled; enable it to sync", src.name)).into()
            );
        }
        let cursor = self.store.source_cursor(source).await?;
        let recent_full = cursor.last_full_sync_at.is_some_and(|t| {
            directory::now().signed_duration_since(t).to_std().map(|age| age < FULL_SYNC_EVERY).unwrap_or(true)
        });
        let mode = match mode {
            Some(SyncMode::Incremental) if cursor.watermark.is_some() => SyncMode::Incremental,
            Some(_) => SyncMode::Full,
            None if recent_full && cursor.watermark.is_some() => SyncMode::Incremental,
            None => SyncMode::Full,
        };
        let now = directory::now();
        let sync = SourceSync {
            id: Uuid::now_v7(),
            source_id: source,
            mode,
            state: SyncState::Running,
            trigger: trigger.to_owned(),
            counts: SyncCounts::default(),
            pending_suspensions: 0,
            message: None,
            errors: Vec::new(),
            started_at: now,
            finished_at: None,
            heartbeat_at: now,
        };
        match self.store.begin_source_sync(&sync, STALE_AFTER, actor).await {
            Ok(()) => Ok(sync),
            // Another process opened one at the same moment.
            Err(StoreError::Duplicate { .. }) => {
                Err(StoreError::InvalidState("a sync of this source is already running".into()).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Lets a sync stopped by the guard go on: its suspensions are made in the background.
    pub async fn confirm(self: &Arc<Self>, source: Uuid, sync: Uuid, actor: &Actor) -> Result<SourceSync, EngineError> {
        let record = self.store.get_source_sync(source, sync).await?.ok_or(EngineError::NotFound("sync"))?;
        if !self.store.confirm_source_sync(source, sync, actor).await? {
            return Err(StoreError::InvalidState(format!(
                "sync {sync} is {}, not awaiting confirmation",
                record.state.as_str()
            ))
            .into());
        }
        let mut job = self.store.get_source_sync(source, sync).await?.ok_or(EngineError::NotFound("sync"))?;
        job.state = SyncState::Running;
        let me = self.clone();
        let running = job.clone();
        let handle = tokio::spawn(async move {
            me.finish_confirmed(job).await;
        });
        lock(&self.tasks).push(handle);
        Ok(running)
    }

    async fn finish_confirmed(&self, mut sync: SourceSync) {
        let result = async {
            let source = self.store.get_source(sync.source_id).await?.ok_or(EngineError::NotFound("source"))?;
            let pending = self.store.source_sync_pending(sync.id).await?;
            self.suspend(&source, &pending, &mut sync).await
        }
        .await;
        self.close(&mut sync, result.map(|()| None)).await;
    }

    /// Runs a sync and records how it ended; never fails (a failure is the sync's state).
    async fn run(&self, mut sync: SourceSync) -> SourceSync {
        let result = self.execute(&mut sync).await;
        self.close(&mut sync, result).await;
        sync
    }

    async fn close(&self, sync: &mut SourceSync, result: Result<Option<Stop>, EngineError>) {
        let now = directory::now();
        sync.heartbeat_at = now;
        match result {
            Ok(None) => {
                sync.state = SyncState::Succeeded;
                sync.finished_at = Some(now);
                sync.pending_suspensions = 0;
            }
            Ok(Some(Stop::Guarded)) => {
                sync.state = SyncState::AwaitingConfirmation;
            }
            Err(e) => {
                tracing::warn!(source = %sync.source_id, sync = %sync.id, error = %e.chain(), "directory sync failed");
                sync.state = SyncState::Failed;
                sync.finished_at = Some(now);
                sync.message = Some(format!("{e}; nobody was suspended by this sync"));
                if sync.counts.suspended > 0 {
                    sync.message = Some(e.to_string());
                }
            }
        }
        if let Err(e) = self.store.save_source_sync(sync, None).await {
            tracing::warn!(sync = %sync.id, error = %e.chain(), "cannot record the end of a directory sync");
        }
    }

    async fn heartbeat(&self, sync: &mut SourceSync) -> Result<(), EngineError> {
        sync.heartbeat_at = directory::now();
        self.store.save_source_sync(sync, None).await?;
        Ok(())
    }

    fn note(sync: &mut SourceSync, errors: impl IntoIterator<Item = String>) {
        for e in errors {
            if sync.errors.len() < MAX_ERRORS {
                sync.errors.push(e);
            }
        }
    }

    /// Writes one page through the writer: the writes it skipped count as failed (a skipped
    /// create created nobody), and the sync notes why, and what it left out.
    async fn apply(
        &self,
        source: &DirectorySource,
        batch: SourceBatch,
        sync: &mut SourceSync,
    ) -> Result<BatchOutcome, EngineError> {
        if batch.creates.is_empty()
            && batch.updates.is_empty()
            && batch.role_adds.is_empty()
            && batch.role_removes.is_empty()
        {
            return Ok(BatchOutcome::default());
        }
        let creates: HashSet<Uuid> = batch.creates.iter().map(|(u, _)| u.id).collect();
        let outcome = self.writer.apply_source_batch(source, batch, &source_actor(source)).await?;
        sync.counts.failed += outcome.skipped.len() as u64;
        let not_created = outcome.skipped.iter().filter(|s| creates.contains(&s.user_id)).count();
        sync.counts.created = sync.counts.created.saturating_sub(not_created as u64);
        Self::note(sync, outcome.notes.iter().cloned());
        Self::note(sync, outcome.skipped.iter().map(|s| format!("entry {}: {}", s.stable_id, s.reason)));
        Ok(outcome)
    }

    async fn execute(&self, sync: &mut SourceSync) -> Result<Option<Stop>, EngineError> {
        let source = self.store.get_source(sync.source_id).await?.ok_or(EngineError::NotFound("source"))?;
        let password = self.password(source.id).await?;
        let cursor = self.store.source_cursor(source.id).await?;
        let full = sync.mode == SyncMode::Full;
        let defs = self.store.list_attribute_defs().await?;
        let roles: Vec<Uuid> = source.groups.iter().map(|g| g.role_id).collect();
        let mut state =
            PlanState { members: self.store.role_members(&roles).await?.into_iter().collect(), ..PlanState::default() };
        let links = self.store.source_links(source.id).await?;
        let mut stable_of: HashMap<Uuid, String> = HashMap::with_capacity(links.len());
        for l in &links {
            state.by_dn.insert(dn_key(&l.dn), l.user_id);
            stable_of.insert(l.user_id, l.stable_id.clone());
        }

        // Read everything first from the directory's point of view: any failure here ends
        // the sync before a single suspension.
        let directory = self.open(&source, password)?;
        let watermark = if full { None } else { cursor.watermark.clone() };
        let mut reader = directory.read_people(watermark.as_deref()).await.map_err(directory_error)?;
        let mut seen: HashSet<String> = HashSet::new();
        let mut to_suspend: Vec<String> = Vec::new();
        let mut unresolved: Vec<(Uuid, String)> = Vec::new();
        let mut mark = cursor.watermark.clone();
        loop {
            let page = reader.next_page(BATCH).await.map_err(directory_error)?;
            if page.is_empty() {
                break;
            }
            sync.counts.entries_read += page.len() as u64;
            let ids: Vec<String> = page.iter().map(|e| e.stable_id.clone()).collect();
            state.linked = self
                .store
                .linked_users(source.id, &ids)
                .await?
                .into_iter()
                .map(|l| (l.link.stable_id.clone(), l))
                .collect();
            let plan = plan_page(&source, &defs, &page, &mut state, directory::now());
            for (user, link) in &plan.batch.creates {
                stable_of.insert(user.id, link.stable_id.clone());
            }
            // Counted before the writes: `apply` takes back the creates the writer skipped.
            sync.counts.created += plan.created;
            let memberships = (plan.batch.role_adds.len() + plan.batch.role_removes.len()) as u64;
            let outcome = self.apply(&source, plan.batch, sync).await?;
            // Updates with nothing left to write once the writer left a value out.
            let unchanged = outcome.unchanged.len() as u64;
            let c = &mut sync.counts;
            c.updated += plan.updated.saturating_sub(unchanged);
            c.reactivated += plan.reactivated;
            c.unchanged += plan.unchanged + unchanged;
            c.failed += plan.failed;
            c.memberships_changed += memberships;
            Self::note(sync, plan.errors);
            to_suspend.extend(plan.to_suspend);
            unresolved.extend(plan.unresolved_managers);
            for e in &page {
                mark = directory.later_mark(mark, e.change_mark.as_deref());
                seen.insert(e.stable_id.clone());
            }
            self.heartbeat(sync).await?;
        }
        reader.close().await;

        // Managers that came after the people they manage.
        let fixes: Vec<(String, Uuid)> = unresolved
            .iter()
            .filter_map(|(user, dn)| {
                let manager = state.by_dn.get(&dn_key(dn)).copied()?;
                Some((stable_of.get(user)?.clone(), manager))
            })
            .collect();
        for chunk in fixes.chunks(BATCH) {
            let ids: Vec<String> = chunk.iter().map(|(s, _)| s.clone()).collect();
            let managers: HashMap<&str, Uuid> = chunk.iter().map(|(s, m)| (s.as_str(), *m)).collect();
            let mut batch = SourceBatch::default();
            for l in self.store.linked_users(source.id, &ids).await? {
                let Some(manager) = managers.get(l.link.stable_id.as_str()) else { continue };
                if l.user.manager_id == Some(*manager) || l.user.id == *manager {
                    continue;
                }
                let mut input = UserInput::from_user(&l.user);
                input.manager_id = Some(*manager);
                batch.updates.push(SourceUpdate {
                    user: l.user.updated(input, directory::now()),
                    expected_version: l.user.version,
                    link: l.link.clone(),
                });
            }
            self.apply(&source, batch, sync).await?;
        }

        // Suspensions: disabled there, or (full sync) gone from the source's scope.
        let mut suspend = to_suspend;
        if full {
            suspend.extend(missing(&links, &seen));
        }
        let mut uniq = HashSet::new();
        suspend.retain(|s| uniq.insert(s.clone()));
        let mut active = Vec::new();
        for chunk in suspend.chunks(BATCH) {
            let linked = self.store.linked_users(source.id, chunk).await?;
            active.extend(suspensions(&linked, directory::now()).into_iter().map(|u| u.link.stable_id));
        }
        let new_cursor = SourceCursor {
            watermark: mark,
            last_full_sync_at: if full { Some(directory::now()) } else { cursor.last_full_sync_at },
        };
        self.store.set_source_cursor(source.id, &new_cursor).await?;
        let users = (stable_of.len() as u64).max(1);
        if guard_trips(users, active.len() as u64, source.guard_percent) {
            sync.pending_suspensions = active.len() as u64;
            sync.message = Some(format!(
                "this sync would suspend {} of the source's {} users, more than the guard of {}%; \
                 nobody was suspended: confirm the sync to suspend them",
                active.len(),
                users,
                source.guard_percent
            ));
            sync.heartbeat_at = directory::now();
            sync.state = SyncState::AwaitingConfirmation;
            self.store.save_source_sync(sync, Some(active.as_slice())).await?;
            tracing::warn!(source = %source.name, suspensions = active.len(), users, "directory sync stopped by the mass-suspension guard");
            return Ok(Some(Stop::Guarded));
        }
        self.suspend(&source, &active, sync).await?;
        Ok(None)
    }

    /// Suspends the (still active) users of these entries, a page at a time.
    async fn suspend(
        &self,
        source: &DirectorySource,
        stable_ids: &[String],
        sync: &mut SourceSync,
    ) -> Result<(), EngineError> {
        for chunk in stable_ids.chunks(BATCH) {
            let linked = self.store.linked_users(source.id, chunk).await?;
            let updates = suspensions(&linked, directory::now());
            let n = updates.len() as u64;
            let batch = SourceBatch { updates, ..SourceBatch::default() };
            let skipped = self.apply(source, batch, sync).await?.skipped.len() as u64;
            sync.counts.suspended += n.saturating_sub(skipped);
            sync.pending_suspensions = sync.pending_suspensions.saturating_sub(n);
            self.heartbeat(sync).await?;
        }
        Ok(())
    }

    /// What a sync of `source` (saved or not, with these settings) would do, reading the
    /// directory with `password` as the sync would; nothing is written (no user, no role
    /// membership, no cursor, no sync record). Suspensions the source's own guard would stop
    /// for confirmation are counted in `pending_suspensions`, not in the effects.
    pub async fn dry_run(
        &self,
        source: &DirectorySource,
        password: &str,
        mode: Option<SyncMode>,
    ) -> Result<SyncDryRun, EngineError> {
        let cursor = match self.store.source_cursor(source.id).await {
            Ok(c) => c,
            Err(StoreError::NotFound) => SourceCursor::default(),
            Err(e) => return Err(e.into()),
        };
        let mode = match mode {
            Some(SyncMode::Incremental) if cursor.watermark.is_some() => SyncMode::Incremental,
            _ => SyncMode::Full,
        };
        let full = mode == SyncMode::Full;
        let defs = self.store.list_attribute_defs().await?;
        let roles: Vec<Uuid> = source.groups.iter().map(|g| g.role_id).collect();
        let mut state =
            PlanState { members: self.store.role_members(&roles).await?.into_iter().collect(), ..PlanState::default() };
        let links = self.store.source_links(source.id).await?;
        let mut known: HashSet<Uuid> = HashSet::with_capacity(links.len());
        for l in &links {
            state.by_dn.insert(dn_key(&l.dn), l.user_id);
            known.insert(l.user_id);
        }
        let directory = self.open(source, password.to_owned())?;
        let watermark = if full { None } else { cursor.watermark.clone() };
        let mut reader = directory.read_people(watermark.as_deref()).await.map_err(directory_error)?;
        let mut counts = SyncCounts::default();
        let mut users: HashMap<Uuid, directory::User> = HashMap::new();
        let (mut role_adds, mut role_removes) = (Vec::new(), Vec::new());
        let mut seen: HashSet<String> = HashSet::new();
        let mut to_suspend: Vec<String> = Vec::new();
        loop {
            let page = reader.next_page(BATCH).await.map_err(directory_error)?;
            if page.is_empty() {
                break;
            }
            counts.entries_read += page.len() as u64;
            let ids: Vec<String> = page.iter().map(|e| e.stable_id.clone()).collect();
            state.linked = self
                .store
                .linked_users(source.id, &ids)
                .await?
                .into_iter()
                .map(|l| (l.link.stable_id.clone(), l))
                .collect();
            let plan = plan_page(source, &defs, &page, &mut state, directory::now());
            counts.created += plan.created;
            counts.updated += plan.updated;
            counts.reactivated += plan.reactivated;
            counts.unchanged += plan.unchanged;
            counts.failed += plan.failed;
            counts.memberships_changed += (plan.batch.role_adds.len() + plan.batch.role_removes.len()) as u64;
            for (user, _) in plan.batch.creates {
                known.insert(user.id);
                users.insert(user.id, user);
            }
            for u in plan.batch.updates {
                users.insert(u.user.id, u.user);
            }
            role_adds.extend(plan.batch.role_adds);
            role_removes.extend(plan.batch.role_removes);
            to_suspend.extend(plan.to_suspend);
            seen.extend(page.iter().map(|e| e.stable_id.clone()));
        }
        reader.close().await;
        let mut suspend = to_suspend;
        if full {
            suspend.extend(missing(&links, &seen));
        }
        let mut uniq = HashSet::new();
        suspend.retain(|s| uniq.insert(s.clone()));
        let mut suspended: Vec<directory::User> = Vec::new();
        for chunk in suspend.chunks(BATCH) {
            let linked = self.store.linked_users(source.id, chunk).await?;
            suspended.extend(suspensions(&linked, directory::now()).into_iter().map(|u| u.user));
        }
        let total = (known.len() as u64).max(1);
        let awaiting_confirmation = guard_trips(total, suspended.len() as u64, source.guard_percent);
        let pending_suspensions = if awaiting_confirmation { suspended.len() as u64 } else { 0 };
        if !awaiting_confirmation {
            counts.suspended = suspended.len() as u64;
            for mut u in suspended {
                // A user the sync also updates keeps those updates.
                if let Some(updated) = users.get(&u.id) {
                    u = directory::User { status: directory::UserStatus::Suspended, ..updated.clone() };
                }
                users.insert(u.id, u);
            }
        }
        let run = self
            .engine
            .dry_run(
                crate::dry_run::WhatIf::Directory { users: users.into_values().collect(), role_adds, role_removes },
                directory::now(),
            )
            .await?;
        Ok(SyncDryRun { run, sync: SyncPreview { mode, counts, awaiting_confirmation, pending_suspensions } })
    }

    /// Starts the schedule: every source with a schedule is synced once per period (by one
    /// of the processes sharing the store).
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        lock(&self.tasks).push(tokio::spawn(async move { me.schedule_loop().await }));
    }

    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    async fn schedule_loop(self: Arc<Self>) {
        loop {
            match self.store.list_sources().await {
                Ok(sources) => {
                    for s in sources.into_iter().filter(|s| s.enabled && s.schedule > 0) {
                        let every = Duration::from_secs(u64::from(s.schedule) * 60);
                        match self.store.try_run_schedule(&format!("source-sync:{}", s.id), every).await {
                            Ok(true) => match self.start_sync(s.id, None, "schedule", &Actor::system()).await {
                                Ok(sync) => {
                                    tracing::info!(source = %s.name, sync = %sync.id, mode = sync.mode.as_str(), "scheduled directory sync started")
                                }
                                Err(e) => {
                                    tracing::info!(source = %s.name, error = %e.chain(), "scheduled directory sync not started")
                                }
                            },
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e.chain(), "directory sync schedule: will retry"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e.chain(), "directory sync schedule: cannot list sources"),
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    }
}

fn directory_error(e: SourceError) -> EngineError {
    EngineError::Directory(e.to_string())
}
