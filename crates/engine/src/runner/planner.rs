//! The planner: follows the store's change feed, works out which (user, app) pairs each
//! batch of changes touches, plans them (the pure [`crate::plan`] through the deprovisioning
//! [`Guard`]) and writes the operations, moving the engine's cursor. With several processes
//! on one store, only the holder of the planner lease plans.
//!
//! It touches the store and wakes the dispatcher; it never talks to an app.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use directory::{PlanItem, PlanWrite};

use super::{lock, Engine, EngineError};
use crate::guard::{Causes, Guard};
use crate::plan::plan_items;

/// The change feed is read this many entries at a time.
const CHANGE_BATCH: u32 = 2000;
/// Pairs are loaded and planned this many at a time.
const PAIR_BATCH: usize = 1000;
/// A plan of at least this many pairs is a bulk write (see `refresh_statistics`).
const BULK_PLAN: usize = 5000;
/// The store's statistics are refreshed at most this often.
const STATISTICS_EVERY: Duration = Duration::from_secs(60);

impl Engine {
    pub(super) async fn planner_loop(self: Arc<Self>) {
        // Until when this process holds the planner lease without renewing it: a third of the
        // lease after each renewal (so that waking the planner often writes nothing).
        let mut held_until: Option<tokio::time::Instant> = None;
        loop {
            // With several processes, one plans at a time: the holder of the planner lease.
            let leader = match self.config.planner_lease {
                None => Ok(true),
                Some(_) if held_until.is_some_and(|t| tokio::time::Instant::now() < t) => Ok(true),
                Some(ttl) => {
                    let renewed_at = tokio::time::Instant::now();
                    let held = self.store.try_hold_lease("planner", &self.config.owner, ttl).await;
                    held_until = matches!(held, Ok(true)).then(|| renewed_at + ttl / 3);
                    held
                }
            };
            match leader {
                Ok(true) => match self.plan_once().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e.chain(), "planner: will retry"),
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e.chain(), "planner: cannot take the planner lease; will retry"),
            }
            tokio::select! {
                _ = self.planner_wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Plans the pairs touched by the next batch of changes; returns how many changes it read.
    pub async fn plan_once(&self) -> Result<usize, EngineError> {
        let cursor = self.store.engine_cursor().await?;
        // Never into an open hold's changes, and a released hold's changes all at once (see
        // `Store::hold_changes`): a SCIM Bulk request is planned in one pass, through one guard.
        let changes = self.store.changes_to_plan(cursor, CHANGE_BATCH).await?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            return Ok(0);
        };
        let mut pairs = BTreeSet::new();
        let (mut seen_users, mut seen_apps) = (HashSet::new(), HashSet::new());
        let mut users = Vec::new();
        for c in &changes {
            match (affects(c.kind), c.user_id, c.app_id) {
                (Affects::Pair, Some(u), Some(a)) => {
                    pairs.insert((u, a));
                }
                (Affects::User, Some(u), _) if seen_users.insert(u) => users.push(u),
                (Affects::App, _, Some(a)) if seen_apps.insert(a) => {
                    pairs.extend(self.store.users_of_app(a).await?.into_iter().map(|u| (u, a)));
                }
                _ => {}
            }
        }
        // Every app of the users concerned, in one query per batch (not one per user).
        pairs.extend(self.store.apps_of_users(&users).await?);
        let pairs: Vec<_> = pairs.into_iter().collect();
        let started = std::time::Instant::now();
        let (mut loading, mut planning, mut writing) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let causes = Causes::load(self.store.as_ref(), &changes).await?;
        let mut guard = Guard::new(self.store.clone(), directory::now());
        for chunk in pairs.chunks(PAIR_BATCH) {
            let t = std::time::Instant::now();
            let mut states = self.store.load_pairs(chunk).await?;
            // Read after the states: whatever effect of a held change they show, its change is
            // visible here, and its pair waits for the hold's own pass.
            let held = self.store.changes_past_holds(last).await?;
            if !held.is_empty() {
                let waiting = Waiting::of(&held);
                states.retain(|s| !waiting.touches(s.user_id, s.app_id));
            }
            loading += t.elapsed();
            let t = std::time::Instant::now();
            let items = plan_guarded(&states, &causes, &mut guard).await?;
            planning += t.elapsed();
            let t = std::time::Instant::now();
            if !items.is_empty() {
                self.store.apply_plan(&PlanWrite { cursor: None, items }).await?;
            }
            writing += t.elapsed();
            // Workers start on the first chunk's operations while the next ones are planned.
            self.worker_wake.notify_one();
        }
        // The cursor moves with the change's suspensions and deletions that the guard let
        // through: a crash before it replays the batch, which plans nothing new for the
        // chunks already written.
        self.store.apply_plan(&PlanWrite { cursor: Some(last), items: guard.finish() }).await?;
        self.worker_wake.notify_one();
        // After a bulk write, at most once a minute (a large sync plans many bulk batches).
        let refresh = pairs.len() >= BULK_PLAN && {
            let mut last = lock(&self.statistics_refreshed);
            let due = last.is_none_or(|t| t.elapsed() >= STATISTICS_EVERY);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if refresh {
            if let Err(e) = self.store.refresh_statistics().await {
                tracing::warn!(error = %e.chain(), "cannot refresh the store's statistics after a large plan");
            }
        }
        tracing::debug!(
            changes = changes.len(),
            pairs = pairs.len(),
            ms = started.elapsed().as_millis() as u64,
            load_ms = loading.as_millis() as u64,
            plan_ms = planning.as_millis() as u64,
            write_ms = writing.as_millis() as u64,
            "planned"
        );
        Ok(changes.len())
    }
}

/// Plans a batch of pairs, each operation with its cause, through the deprovisioning guard:
/// answers what to write now (the guard keeps back suspensions and deletions until the end of
/// the change, see [`Guard`]).
pub(crate) async fn plan_guarded(
    states: &[directory::PairState],
    causes: &Causes,
    guard: &mut Guard,
) -> Result<Vec<PlanItem>, EngineError> {
    let mut out = Vec::new();
    for s in states {
        let mut planned: Vec<PlanItem> = plan_items(s).collect();
        if planned.is_empty() {
            continue;
        }
        causes.stamp(s, &mut planned);
        match &s.app {
            Some(app) => out.extend(guard.admit(app, planned).await?),
            None => out.extend(planned),
        }
    }
    Ok(out)
}

/// The pairs held changes touch (see [`Store::changes_past_holds`](store::Store::changes_past_holds)).
#[derive(Default)]
struct Waiting {
    users: HashSet<uuid::Uuid>,
    apps: HashSet<uuid::Uuid>,
    pairs: HashSet<(uuid::Uuid, uuid::Uuid)>,
}

impl Waiting {
    fn of(changes: &[directory::Change]) -> Self {
        let mut w = Self::default();
        for c in changes {
            match (affects(c.kind), c.user_id, c.app_id) {
                (Affects::User, Some(u), _) => {
                    w.users.insert(u);
                }
                (Affects::App, _, Some(a)) => {
                    w.apps.insert(a);
                }
                (Affects::Pair, Some(u), Some(a)) => {
                    w.pairs.insert((u, a));
                }
                _ => {}
            }
        }
        w
    }

    fn touches(&self, user: uuid::Uuid, app: uuid::Uuid) -> bool {
        self.apps.contains(&app) || self.users.contains(&user) || self.pairs.contains(&(user, app))
    }
}

/// Which pairs a change touches.
enum Affects {
    /// Every app of the user.
    User,
    /// Every user of the app.
    App,
    /// One (user, app) pair.
    Pair,
    Nothing,
}

fn affects(kind: directory::ChangeKind) -> Affects {
    use directory::ChangeKind as K;
    match kind {
        K::User | K::RoleMembership => Affects::User,
        K::App | K::RoleApp => Affects::App,
        K::Account => Affects::Pair,
        // A role's deletion is recorded as membership and grant changes.
        K::Role => Affects::Nothing,
    }
}
