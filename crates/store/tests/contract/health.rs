//! The health storage contract: quarantine pauses one app's queue, probes are taken once,
//! resume re-plans the app, finished operations count toward the failure ratio, and a later
//! success resolves a failure.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use directory::{
    AccountWrite, Action, Actor, App, AppInput, ChangeKind, ConnectionTest, EventStatus, Outcome, PlanItem, PlanWrite,
    User, UserInput, UserSource,
};
use serde_json::json;
use store::{AuditQuery, EventQuery, PageRequest, Store};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(60);

fn actor() -> Actor {
    Actor::token("contract-test")
}

async fn new_user(s: &dyn Store, username: &str) -> Uuid {
    let u =
        User::new(UserInput { username: username.into(), ..Default::default() }, UserSource::Local, directory::now());
    s.create_user(&u, &actor()).await.unwrap();
    u.id
}

async fn new_app(s: &dyn Store, name: &str) -> Uuid {
    let input: AppInput = serde_json::from_value(json!({"name": name,
        "connection": {"base_url": "https://app.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}}}))
    .unwrap();
    let a = App::new(input.validate(None).unwrap().0, directory::now());
    s.create_app(&a, "ciphertext", &actor()).await.unwrap();
    a.id
}

async fn enqueue(s: &dyn Store, pairs: &[(Uuid, Uuid)]) {
    let items = pairs
        .iter()
        .map(|(user_id, app_id)| PlanItem::Enqueue {
            user_id: *user_id,
            app_id: *app_id,
            action: Action::Create,
            desired: Some(json!({"userName": "x"})),
            needs_approval: false,
            held: false,
            cause: None,
        })
        .collect();
    s.apply_plan(&PlanWrite { cursor: None, items }).await.unwrap();
}

fn outcome(status: EventStatus, reason: Option<&str>) -> Outcome {
    Outcome {
        status,
        reason: reason.map(str::to_owned),
        recommended_action: None,
        account: AccountWrite::Keep,
        replan: false,
    }
}

/// Claims the app's due operations and finishes them in claim order with `statuses`.
async fn run(s: &dyn Store, app: Uuid, statuses: &[EventStatus]) -> Vec<Uuid> {
    let ops = s.claim_operations(app, "w1", 100, LEASE).await.unwrap();
    assert_eq!(ops.len(), statuses.len());
    let done: Vec<(Uuid, Outcome)> =
        ops.iter().zip(statuses).map(|(o, st)| (o.event.id, outcome(*st, Some("HTTP 400")))).collect();
    assert!(s.finish_operations("w1", &done).await.unwrap().iter().all(|r| *r));
    ops.iter().map(|o| o.event.id).collect()
}

fn window_start() -> chrono::DateTime<Utc> {
    directory::now() - chrono::Duration::minutes(15)
}

pub async fn quarantine_pauses_one_app_until_resumed(s: Arc<dyn Store>) {
    let (u1, u2) = (new_user(&*s, "ada").await, new_user(&*s, "alan").await);
    let (a, b) = (new_app(&*s, "Sick").await, new_app(&*s, "Well").await);
    enqueue(&*s, &[(u1, a), (u2, a), (u1, b)]).await;
    assert_eq!(s.get_app_health(a).await.unwrap(), None);
    assert!(!s.resume_app(a, &actor(), "nothing to resume").await.unwrap());

    let next = directory::now() + chrono::Duration::seconds(60);
    assert!(s.quarantine_app(a, "60% failed", next, &Actor::system()).await.unwrap());
    assert!(!s.quarantine_app(a, "again", next, &Actor::system()).await.unwrap(), "once");
    let h = s.get_app_health(a).await.unwrap().unwrap();
    assert_eq!((h.quarantined, h.reason.as_deref(), h.probes), (true, Some("60% failed"), 0));
    assert_eq!(h.next_probe.map(|t| t.timestamp_micros()), Some(next.timestamp_micros()));
    assert!(h.since.is_some());
    // Its queue is paused; the other app's is not.
    assert_eq!(s.apps_with_due_operations().await.unwrap(), vec![b]);
    assert!(s.claim_operations(a, "w1", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(s.claim_operations(b, "w1", 10, LEASE).await.unwrap().len(), 1);
    let counts = s.app_queue_counts(a, directory::now()).await.unwrap();
    assert_eq!((counts.queued, counts.held), (2, 0), "nothing lost");

    // Probes: due when their time comes, taken by one process only.
    assert!(s.due_probes(directory::now()).await.unwrap().is_empty());
    assert_eq!(s.due_probes(next + chrono::Duration::seconds(1)).await.unwrap(), vec![(a, 0)]);
    assert!(s.resume_app(a, &actor(), "by hand").await.unwrap());
    assert!(s
        .quarantine_app(a, "down", directory::now() - chrono::Duration::seconds(1), &Actor::system())
        .await
        .unwrap());
    assert_eq!(s.due_probes(directory::now()).await.unwrap(), vec![(a, 0)]);
    let later = directory::now() + chrono::Duration::seconds(300);
    assert!(s.take_probe(a, 0, later).await.unwrap());
    assert!(!s.take_probe(a, 0, later).await.unwrap(), "taken once");
    assert!(s.due_probes(directory::now()).await.unwrap().is_empty());
    assert_eq!(s.get_app_health(a).await.unwrap().unwrap().probes, 1);

    // Resuming re-plans the app and runs its queue again; both transitions are audited.
    let seq = s.changes_after(0, 10_000).await.unwrap().last().map_or(0, |c| c.seq);
    assert!(s.resume_app(a, &actor(), "by hand").await.unwrap());
    let changes = s.changes_after(seq, 100).await.unwrap();
    assert!(changes.iter().any(|c| c.kind == ChangeKind::App && c.app_id == Some(a)), "{changes:?}");
    let h = s.get_app_health(a).await.unwrap().unwrap();
    assert_eq!((h.quarantined, h.reason, h.next_probe), (false, None, None));
    assert_eq!(s.claim_operations(a, "w1", 10, LEASE).await.unwrap().len(), 2);
    let audit = s.list_audit(&AuditQuery { target_id: Some(a.to_string()), ..Default::default() }).await.unwrap();
    let actions: Vec<(&str, &str)> = audit.items.iter().map(|e| (e.action.as_str(), e.actor.kind.as_str())).collect();
    assert_eq!(
        &actions[..4],
        [("app.resume", "token"), ("app.quarantine", "system"), ("app.resume", "token"), ("app.quarantine", "system")]
    );
}

pub async fn finished_operations_count_and_successes_resolve_failures(s: Arc<dyn Store>) {
    let users = [new_user(&*s, "u1").await, new_user(&*s, "u2").await, new_user(&*s, "u3").await];
    let a = new_app(&*s, "App").await;
    enqueue(&*s, &users.map(|u| (u, a))).await;
    let first = run(&*s, a, &[EventStatus::Failed, EventStatus::Failed, EventStatus::Provisioned]).await;
    let w = s.app_outcome_window(a, window_start()).await.unwrap();
    assert_eq!((w.finished, w.failed), (3, 2));
    let counts = s.app_queue_counts(a, directory::now() - chrono::Duration::minutes(5)).await.unwrap();
    assert_eq!((counts.queued, counts.finished), (0, 3));

    // A later success of the first user resolves its failure: no longer a failure.
    enqueue(&*s, &[(users[0], a)]).await;
    let second = run(&*s, a, &[EventStatus::Provisioned]).await;
    let resolved = s.get_operation(first[0]).await.unwrap().unwrap().event;
    assert_eq!((resolved.status, resolved.resolved_by), (EventStatus::Failed, Some(second[0])));
    assert_eq!(s.get_operation(first[1]).await.unwrap().unwrap().event.resolved_by, None);
    let failed = EventQuery {
        app: Some(a),
        status: Some(EventStatus::Failed),
        page: PageRequest { limit: 50, cursor: None },
        ..Default::default()
    };
    let listed: Vec<Uuid> = s.list_events(&failed).await.unwrap().items.iter().map(|e| e.id).collect();
    assert_eq!(listed, [first[1]]);
    let w = s.app_outcome_window(a, window_start()).await.unwrap();
    assert_eq!((w.finished, w.failed), (4, 1));

    // Refused credentials in a row, until a success.
    assert_eq!(s.add_auth_refusals(a, 2).await.unwrap(), 2);
    assert_eq!(s.add_auth_refusals(a, 1).await.unwrap(), 3);
    enqueue(&*s, &[(users[2], a)]).await;
    run(&*s, a, &[EventStatus::Provisioned]).await;
    assert_eq!(s.get_app_health(a).await.unwrap().unwrap().auth_refusals, 0);

    // A resume starts the count afresh.
    assert!(s.quarantine_app(a, "x", directory::now(), &Actor::system()).await.unwrap());
    assert!(s.resume_app(a, &actor(), "y").await.unwrap());
    assert_eq!(s.app_outcome_window(a, window_start()).await.unwrap().failed, 0);

    let test = ConnectionTest { ok: false, at: directory::now(), message: Some("Invalid authentication".into()) };
    s.record_connection_test(a, &test).await.unwrap();
    let got = s.get_app_health(a).await.unwrap().unwrap().last_test.unwrap();
    assert_eq!((got.ok, got.message, got.at.timestamp_micros()), (false, test.message, test.at.timestamp_micros()));
}

crate::contract!(quarantine_pauses_one_app_until_resumed, finished_operations_count_and_successes_resolve_failures);
