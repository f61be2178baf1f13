//! The rate storage contract: an app's rate budget gives one token a request and counts the
//! requests, a `429`'s pause holds every request and is never shortened, an overload halves the
//! concurrency once per gap, and the state goes with its app. (That the budget holds across
//! processes: `postgres_only`.)

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use directory::{Actor, App, AppInput, RateLimit, Take};
use serde_json::json;
use store::Store;
use uuid::Uuid;

const BUDGET: RateLimit = RateLimit { per_minute: 120, burst: Some(3) };

fn actor() -> Actor {
    Actor::token("contract-test")
}

async fn new_app(s: &dyn Store, name: &str) -> Uuid {
    let input: AppInput = serde_json::from_value(json!({"name": name,
        "connection": {"base_url": "https://app.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}},
        "provisioning": {"rate_limit": {"per_minute": 120, "burst": 3}}}))
    .unwrap();
    let a = App::new(input.validate(None).unwrap().0, directory::now());
    s.create_app(&a, "ciphertext", &actor()).await.unwrap();
    a.id
}

/// A whole minute (plus `ms`), so that the requests counted fall in one minute.
fn at(base: DateTime<Utc>, ms: i64) -> DateTime<Utc> {
    base + Duration::milliseconds(ms)
}

fn minute_start() -> DateTime<Utc> {
    let now = directory::now();
    DateTime::from_timestamp(now.timestamp().div_euclid(60) * 60, 0).unwrap()
}

pub async fn a_budget_gives_one_token_a_request_and_counts_them(s: Arc<dyn Store>) {
    let (a, b) = (new_app(&*s, "Slow").await, new_app(&*s, "Other").await);
    assert_eq!(s.get_rate_state(a).await.unwrap(), None, "no state until the first request");
    let t0 = minute_start();
    for _ in 0..3 {
        assert_eq!(s.take_rate_token(a, &BUDGET, t0).await.unwrap(), Take::Granted, "the burst");
    }
    assert_eq!(s.take_rate_token(a, &BUDGET, t0).await.unwrap(), Take::Empty(at(t0, 500)));
    assert_eq!(s.take_rate_token(a, &BUDGET, at(t0, 499)).await.unwrap(), Take::Empty(at(t0, 500)));
    assert_eq!(s.take_rate_token(a, &BUDGET, at(t0, 500)).await.unwrap(), Take::Granted, "two a second");
    // Another app has its own bucket.
    assert_eq!(s.take_rate_token(b, &BUDGET, at(t0, 500)).await.unwrap(), Take::Granted);
    let state = s.get_rate_state(a).await.unwrap().unwrap();
    assert!(state.available(at(t0, 500), &BUDGET) < 1.0, "{state:?}");
    assert!((state.available(at(t0, 2000), &BUDGET) - 3.0).abs() < 1e-9, "refilled up to the burst");
    // The requests granted are counted in their minute (for the health's rate).
    let counts = s.app_queue_counts(a, t0).await.unwrap();
    assert_eq!((counts.requests, counts.finished, counts.first_minute), (4, 0, None));
    assert_eq!(s.app_queue_counts(b, t0).await.unwrap().requests, 1);
}

pub async fn an_overload_pauses_the_app_and_halves_its_concurrency(s: Arc<dyn Store>) {
    let a = new_app(&*s, "Busy").await;
    let t0 = minute_start();
    let state = s.record_overload(a, Some(&BUDGET), 8, Some(at(t0, 3000)), t0).await.unwrap();
    assert_eq!((state.paused_until, state.concurrency(8, t0)), (Some(at(t0, 3000)), 4));
    // Every request waits for the pause, even with tokens in the bucket.
    assert_eq!(s.take_rate_token(a, &BUDGET, at(t0, 10)).await.unwrap(), Take::Paused(at(t0, 3000)));
    // Answers of the same overload: one drop; a shorter pause does not shorten it.
    let state = s.record_overload(a, Some(&BUDGET), 8, Some(at(t0, 1000)), at(t0, 500)).await.unwrap();
    assert_eq!((state.paused_until, state.concurrency(8, at(t0, 500))), (Some(at(t0, 3000)), 4));
    // A 5xx later (no Retry-After): the concurrency halves again, the pause stays.
    let state = s.record_overload(a, Some(&BUDGET), 8, None, at(t0, 2500)).await.unwrap();
    assert_eq!((state.paused_until, state.concurrency(8, at(t0, 2500))), (Some(at(t0, 3000)), 2));
    assert_eq!(s.get_rate_state(a).await.unwrap(), Some(state));
    assert_eq!(s.take_rate_token(a, &BUDGET, at(t0, 3000)).await.unwrap(), Take::Granted);
    // An app without a budget keeps a state too (its pause and concurrency).
    let free = new_app(&*s, "Free").await;
    let state = s.record_overload(free, None, 4, Some(at(t0, 1000)), t0).await.unwrap();
    assert_eq!((state.tokens, state.paused(t0), state.concurrency(4, t0)), (0, Some(at(t0, 1000)), 2));
}

pub async fn an_apps_rate_state_goes_with_it(s: Arc<dyn Store>) {
    let a = new_app(&*s, "Gone").await;
    s.take_rate_token(a, &BUDGET, directory::now()).await.unwrap();
    assert!(s.get_rate_state(a).await.unwrap().is_some());
    s.delete_app(a, None, &actor()).await.unwrap();
    assert_eq!(s.get_rate_state(a).await.unwrap(), None);
}

crate::contract!(
    a_budget_gives_one_token_a_request_and_counts_them,
    an_overload_pauses_the_app_and_halves_its_concurrency,
    an_apps_rate_state_goes_with_it,
);
