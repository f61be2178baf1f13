//! [`RateStore`] on both backends: each change of an app's rate state reads its row under a
//! lock (`FOR UPDATE` on PostgreSQL; SQLite's one writer holds the database), applies the rule
//! of [`directory::rate`] and writes the row back, in one transaction, so that every process
//! sharing the store takes from the same bucket.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use directory::{RateLimit, RateState, Take};
use uuid::Uuid;

use super::health::minute_of;
use super::{q, Backend, Dialect, Exec, RowGet, WriteTx};
use crate::rates::RateStore;
use crate::Result;

const COLUMNS: &str = "tokens, refilled_at, paused_until, concurrency, dropped_at";

fn state_from_row(row: &impl RowGet) -> Result<RateState> {
    Ok(RateState {
        tokens: row.int("tokens")?,
        refilled_at: row.time("refilled_at")?,
        paused_until: row.opt_time("paused_until")?,
        concurrency: row.opt_int("concurrency")?.map(|c| u32::try_from(c.max(1)).unwrap_or(u32::MAX)),
        dropped_at: row.opt_time("dropped_at")?,
    })
}

/// The app's state, its row locked for the rest of the transaction (made when missing).
async fn locked<S: Backend>(
    tx: &mut S::Tx,
    app: Uuid,
    budget: Option<&RateLimit>,
    now: DateTime<Utc>,
) -> Result<RateState> {
    let select =
        || q(format!("SELECT {COLUMNS} FROM app_rates WHERE app_id = ?{}", <S::Db as Dialect>::FOR_UPDATE)).bind(app);
    if let Some(row) = tx.opt(select()).await? {
        return state_from_row(&row);
    }
    let fresh = RateState::new(now, budget);
    tx.run(
        q("INSERT INTO app_rates (app_id, tokens, refilled_at) VALUES (?, ?, ?) ON CONFLICT (app_id) DO NOTHING")
            .bind(app)
            .bind(fresh.tokens)
            .bind(fresh.refilled_at),
    )
    .await?;
    state_from_row(&tx.one(select()).await?)
}

async fn write<S: Backend>(tx: &mut S::Tx, app: Uuid, s: &RateState) -> Result<()> {
    tx.run(
        q("UPDATE app_rates SET tokens = ?, refilled_at = ?, paused_until = ?, concurrency = ?, dropped_at = ? \
           WHERE app_id = ?")
        .bind(s.tokens)
        .bind(s.refilled_at)
        .bind(s.paused_until)
        .bind(s.concurrency.map(i64::from))
        .bind(s.dropped_at)
        .bind(app),
    )
    .await?;
    Ok(())
}

#[async_trait]
impl<S: Backend> RateStore for S {
    async fn get_rate_state(&self, app: Uuid) -> Result<Option<RateState>> {
        let row =
            self.read().await?.opt(q(format!("SELECT {COLUMNS} FROM app_rates WHERE app_id = ?")).bind(app)).await?;
        row.as_ref().map(state_from_row).transpose()
    }

    async fn take_rate_token(&self, app: Uuid, budget: &RateLimit, now: DateTime<Utc>) -> Result<Take> {
        let mut tx = self.begin_engine().await?;
        let mut state = locked::<S>(&mut tx, app, Some(budget), now).await?;
        let take = state.take(now, budget);
        if take == Take::Granted {
            write::<S>(&mut tx, app, &state).await?;
            tx.run(
                q("INSERT INTO app_outcomes (app_id, minute, finished, requests) VALUES (?, ?, 0, 1) \
                   ON CONFLICT (app_id, minute) DO UPDATE SET requests = app_outcomes.requests + 1")
                .bind(app)
                .bind(minute_of(&now)),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(take)
    }

    async fn record_overload(
        &self,
        app: Uuid,
        budget: Option<&RateLimit>,
        max_concurrency: u32,
        pause_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<RateState> {
        let mut tx = self.begin_engine().await?;
        let mut state = locked::<S>(&mut tx, app, budget, now).await?;
        state.overloaded(max_concurrency, now);
        if let Some(until) = pause_until {
            state.pause(until, now);
        }
        write::<S>(&mut tx, app, &state).await?;
        tx.commit().await?;
        Ok(state)
    }
}
