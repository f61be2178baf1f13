//! The outcome recorder: finished operations wait here and are written in groups, one
//! transaction per group, by whichever worker finds nobody writing; then the planner (an
//! outcome may ask for re-planning) and the dispatcher (the pair's next operation) are woken,
//! and the outcomes are shown to the quarantine watch.
//!
//! It touches the store and hands what it wrote to the quarantine watch ([`crate::quarantine`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use directory::Outcome;
use uuid::Uuid;

use super::{lock, Engine};

/// Finished operations waiting for their outcome to be written.
#[derive(Default)]
pub(super) struct Recorder {
    /// (operation, app, outcome).
    pending: Mutex<Vec<(Uuid, Uuid, Outcome)>>,
    /// A worker is writing outcomes now.
    writing: AtomicBool,
}

/// The most outcomes written in one transaction.
const OUTCOME_BATCH: usize = 500;

impl Engine {
    /// Records a finished operation. Outcomes are written in groups, one transaction (one
    /// commit) per group: the worker that finds nobody writing writes everything waiting,
    /// until nothing is; the others leave theirs to it. An outcome lost to a crash before
    /// its commit leaves its operation running until the lease ends; it is then run again,
    /// and the retry's lookup finds the account the first attempt made.
    pub(super) async fn record(&self, id: Uuid, app: Uuid, outcome: Outcome) {
        lock(&self.recorder.pending).push((id, app, outcome));
        loop {
            if self.recorder.writing.swap(true, Ordering::AcqRel) {
                return;
            }
            loop {
                let batch: Vec<(Uuid, Uuid, Outcome)> = {
                    let mut pending = lock(&self.recorder.pending);
                    let n = pending.len().min(OUTCOME_BATCH);
                    pending.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                self.write_outcomes(batch).await;
                // A finished operation may have asked for re-planning (an account change), and
                // the next operation of each pair may run now.
                self.planner_wake.notify_one();
                self.worker_wake.notify_one();
            }
            self.recorder.writing.store(false, Ordering::Release);
            if lock(&self.recorder.pending).is_empty() {
                return;
            }
        }
    }

    async fn write_outcomes(&self, batch: Vec<(Uuid, Uuid, Outcome)>) {
        let owner = &self.config.owner;
        let (apps, batch): (Vec<Uuid>, Vec<(Uuid, Outcome)>) = batch.into_iter().map(|(id, a, o)| (a, (id, o))).unzip();
        let batch = &batch[..];
        let recorded = match self.store.finish_operations(owner, batch).await {
            Ok(r) => r,
            Err(e) => {
                // One bad outcome must not cost the others theirs: record them one by one.
                tracing::warn!(error = %e.chain(), outcomes = batch.len(), "outcomes not recorded together; recording them one by one");
                let mut r = Vec::with_capacity(batch.len());
                for (id, outcome) in batch {
                    r.push(match self.store.finish_operation(*id, owner, outcome).await {
                        Ok(done) => done,
                        Err(e) => {
                            tracing::warn!(op = %id, error = %e.chain(), "outcome not recorded; the operation will be retried");
                            true
                        }
                    });
                }
                r
            }
        };
        for ((id, _), done) in batch.iter().zip(&recorded) {
            if !done {
                tracing::warn!(op = %id, "lease lost before the outcome was recorded; another worker owns it");
            }
        }
        let mine: Vec<(Uuid, &Outcome)> = batch
            .iter()
            .zip(apps)
            .zip(&recorded)
            .filter(|(_, done)| **done)
            .map(|(((_, o), app), _)| (app, o))
            .collect();
        self.watch_outcomes(&mine).await;
    }
}
