//! The desired state of whole apps at once: what every user should have in each app,
//! computed from the store without writing anything (the planning benchmark, and a full
//! re-plan's first half). Users are streamed in batches, each batch loaded in bulk with its
//! roles, grants and account records ([`store::ProvisioningStore::load_pairs`]), so memory
//! stays bounded by the batch, not by the directory.

use std::collections::{BTreeSet, VecDeque};

use directory::PairState;
use serde::Serialize;
use uuid::Uuid;

use crate::plan::{intent, Intent};
use crate::runner::{Engine, EngineError};

/// Users loaded per batch (each with all the apps asked about).
const USER_BATCH: usize = 1000;

/// Batches read at once (on as many store connections) while one is evaluated.
const READ_AHEAD: usize = 2;

/// What [`Engine::desired_states`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DesiredSummary {
    /// (user, app) pairs evaluated.
    pub pairs: u64,
    /// Pairs that should have an account (active or suspended).
    pub present: u64,
    /// Pairs that should have no account.
    pub absent: u64,
    /// Pairs left as they are (provisioning off, or "do nothing").
    pub leave: u64,
    /// Pairs whose account cannot be computed (a required value is empty).
    pub invalid: u64,
}

impl DesiredSummary {
    fn add(&mut self, other: &DesiredSummary) {
        self.pairs += other.pairs;
        self.present += other.present;
        self.absent += other.absent;
        self.leave += other.leave;
        self.invalid += other.invalid;
    }
}

/// Evaluates a batch of pairs (pure).
fn evaluate_batch(states: &[PairState]) -> DesiredSummary {
    let mut s = DesiredSummary::default();
    for p in states {
        let Some(app) = &p.app else { continue };
        s.pairs += 1;
        match intent(p.user.as_deref(), &p.roles, app, p.granted) {
            Intent::Present { .. } => s.present += 1,
            Intent::Absent => s.absent += 1,
            Intent::Leave => s.leave += 1,
            Intent::Invalid(_) => s.invalid += 1,
        }
    }
    s
}

impl Engine {
    /// Computes the desired account of every user of `apps` in each of them; answers counts.
    /// Reading the next batches from the store (two at a time) overlaps with evaluating the
    /// current one.
    pub async fn desired_states(&self, apps: &[Uuid]) -> Result<DesiredSummary, EngineError> {
        let mut users = BTreeSet::new();
        for app in apps {
            users.extend(self.store().users_of_app(*app).await?);
        }
        let users: Vec<Uuid> = users.into_iter().collect();
        let failed = |e: tokio::task::JoinError| {
            EngineError::Store(store::StoreError::Backend(format!("planning task failed: {e}")))
        };
        let mut total = DesiredSummary::default();
        let mut chunks = users.chunks(USER_BATCH);
        // Batches being read (each on its own store connection), oldest first.
        let mut reading = VecDeque::new();
        let mut evaluating: Option<tokio::task::JoinHandle<DesiredSummary>> = None;
        loop {
            while reading.len() < READ_AHEAD {
                let Some(chunk) = chunks.next() else { break };
                let pairs: Vec<(Uuid, Uuid)> = chunk.iter().flat_map(|u| apps.iter().map(move |a| (*u, *a))).collect();
                let store = self.store().clone();
                reading.push_back(tokio::spawn(async move { store.load_pairs(&pairs).await }));
            }
            let Some(next) = reading.pop_front() else { break };
            let states = next.await.map_err(failed)??;
            if let Some(r) = evaluating.take() {
                total.add(&r.await.map_err(failed)?);
            }
            evaluating = Some(tokio::task::spawn_blocking(move || evaluate_batch(&states)));
        }
        if let Some(r) = evaluating {
            total.add(&r.await.map_err(failed)?);
        }
        Ok(total)
    }
}
