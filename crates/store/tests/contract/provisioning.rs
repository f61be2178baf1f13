//! The provisioning storage contract: every `Store` implementation must pass these, each test
//! on a fresh database. Add a backend by adding an invocation of `provisioning_tests!`.

use std::sync::Arc;
use std::time::Duration;

use directory::{
    AccountWrite, Action, Actor, App, AppInput, ChangeKind, EventStatus, OpState, Operation, Outcome, Ownership,
    PlanItem, PlanWrite, Role, RoleInput, User, UserInput, UserSource,
};
use serde_json::{json, Value};
use store::{AccountQuery, AuditQuery, EventQuery, PageRequest, Store, StoreError};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(60);

fn actor() -> Actor {
    Actor::token("contract-test")
}

fn user(username: &str) -> User {
    let input = UserInput {
        username: username.into(),
        email: Some(format!("{}@example.com", username.to_lowercase())),
        ..Default::default()
    };
    User::new(input, UserSource::Local, directory::now())
}

fn app(name: &str) -> App {
    let input: AppInput = serde_json::from_value(json!({"name": name,
        "connection": {"base_url": "https://app.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}}}))
    .unwrap();
    let (validated, _) = input.validate(None).unwrap();
    App::new(validated, directory::now())
}

async fn new_user(s: &dyn Store, username: &str) -> Uuid {
    let u = user(username);
    s.create_user(&u, &actor()).await.unwrap();
    u.id
}

async fn new_app(s: &dyn Store, name: &str) -> Uuid {
    let a = app(name);
    s.create_app(&a, "ciphertext", &actor()).await.unwrap();
    a.id
}

fn desired(username: &str) -> Option<Value> {
    Some(json!({"userName": username}))
}

fn enqueue(user_id: Uuid, app_id: Uuid, action: Action, needs_approval: bool) -> PlanItem {
    PlanItem::Enqueue { user_id, app_id, action, desired: desired("x"), needs_approval, held: false, cause: None }
}

async fn plan(s: &dyn Store, items: Vec<PlanItem>) {
    s.apply_plan(&PlanWrite { cursor: None, items }).await.unwrap();
}

/// The ids of the pair's operations, oldest first.
async fn ops_of(s: &dyn Store, user: Uuid, app: Uuid) -> Vec<Operation> {
    let page = EventQuery {
        user: Some(user),
        app: Some(app),
        page: PageRequest { limit: 500, cursor: None },
        ..Default::default()
    };
    let mut events = s.list_events(&page).await.unwrap().items;
    events.reverse();
    let mut ops = Vec::new();
    for e in events {
        ops.push(s.get_operation(e.id).await.unwrap().unwrap());
    }
    ops
}

async fn last_seq(s: &dyn Store) -> i64 {
    s.changes_after(0, 10_000).await.unwrap().last().map_or(0, |c| c.seq)
}

async fn account_changes_after(s: &dyn Store, seq: i64) -> Vec<(Option<Uuid>, Option<Uuid>)> {
    s.changes_after(seq, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == ChangeKind::Account)
        .map(|c| (c.user_id, c.app_id))
        .collect()
}

fn done(status: EventStatus) -> Outcome {
    Outcome { status, reason: None, recommended_action: None, account: AccountWrite::Keep, replan: false }
}

fn ids(ops: &[Operation]) -> Vec<Uuid> {
    ops.iter().map(|o| o.event.id).collect()
}

pub async fn enqueue_creates_event_and_account(s: Arc<dyn Store>) {
    let u = new_user(&*s, "Ada").await;
    let a = new_app(&*s, "Slack").await;
    assert_eq!(s.engine_cursor().await.unwrap(), 0);
    let ghost = Uuid::now_v7();
    let items = vec![enqueue(u, a, Action::Create, false), enqueue(ghost, a, Action::Create, false)];
    s.apply_plan(&PlanWrite { cursor: Some(7), items }).await.unwrap();
    assert_eq!(s.engine_cursor().await.unwrap(), 7);

    let events = s.list_events(&EventQuery::default()).await.unwrap().items;
    assert_eq!(events.len(), 1, "a pair whose user does not exist is skipped");
    let e = &events[0];
    assert_eq!((e.user_id, e.app_id, e.username.as_str(), e.app_name.as_str()), (u, a, "Ada", "Slack"));
    assert_eq!((e.action, e.status, e.attempts), (Action::Create, EventStatus::Provisioning, 0));
    let op = s.get_operation(e.id).await.unwrap().unwrap();
    assert_eq!((op.state, op.desired.clone(), op.lease_owner.clone()), (OpState::Queued, desired("x"), None));
    assert_eq!(s.get_operation(Uuid::now_v7()).await.unwrap(), None);

    let acc = s.get_account(a, u).await.unwrap().unwrap();
    assert_eq!(
        (acc.status, acc.last_event_id, acc.remote_id, acc.ownership),
        (EventStatus::Provisioning, Some(e.id), None, None)
    );
    assert_eq!(acc.username, "Ada");
    assert_eq!(s.get_account(a, ghost).await.unwrap(), None);

    // The cursor moves with each plan that carries one, and only then.
    s.apply_plan(&PlanWrite { cursor: None, items: vec![] }).await.unwrap();
    assert_eq!(s.engine_cursor().await.unwrap(), 7);
    s.apply_plan(&PlanWrite { cursor: Some(9), items: vec![] }).await.unwrap();
    assert_eq!(s.engine_cursor().await.unwrap(), 9);
}

pub async fn approval_approve_and_reject(s: Arc<dyn Store>) {
    let u = new_user(&*s, "grace").await;
    let v = new_user(&*s, "linus").await;
    let a = new_app(&*s, "Jira").await;
    plan(&*s, vec![enqueue(u, a, Action::Create, true)]).await;
    let op = ops_of(&*s, u, a).await.remove(0);
    assert_eq!((op.state, op.event.status), (OpState::AwaitingApproval, EventStatus::Pending));
    assert_eq!(s.get_account(a, u).await.unwrap().unwrap().status, EventStatus::Pending);
    assert!(s.claim_operations(a, "w1", 10, LEASE).await.unwrap().is_empty(), "pending is not runnable");
    assert!(s.apps_with_due_operations().await.unwrap().is_empty());

    let approved = s.approve_operation(op.event.id, &actor()).await.unwrap();
    assert_eq!(approved.status, EventStatus::Provisioning);
    assert_eq!(s.get_operation(op.event.id).await.unwrap().unwrap().state, OpState::Queued);
    assert_eq!(s.get_account(a, u).await.unwrap().unwrap().status, EventStatus::Provisioning);
    let audit = s.list_audit(&AuditQuery::default()).await.unwrap().items;
    assert_eq!((audit[0].action.as_str(), audit[0].target_type.as_str()), ("event.approve", "event"));
    assert_eq!(audit[0].target_id, op.event.id.to_string());
    let again = s.approve_operation(op.event.id, &actor()).await.unwrap_err();
    assert!(matches!(&again, StoreError::InvalidState(m) if m.contains("not pending")), "{again:?}");
    assert!(matches!(s.approve_operation(Uuid::now_v7(), &actor()).await, Err(StoreError::NotFound)));

    let claimed = s.claim_operations(a, "w1", 10, LEASE).await.unwrap();
    assert_eq!(ids(&claimed), [op.event.id]);
    assert!(s.finish_operation(op.event.id, "w1", &done(EventStatus::Provisioned)).await.unwrap());

    // A rejected update leaves the account as the last operation that did something left it.
    plan(&*s, vec![enqueue(u, a, Action::Update, true)]).await;
    let update = ops_of(&*s, u, a).await.remove(1);
    assert_eq!(s.get_account(a, u).await.unwrap().unwrap().status, EventStatus::Pending);
    let rejected = s.reject_operation(update.event.id, &actor()).await.unwrap();
    assert_eq!(
        (rejected.status, rejected.reason.as_deref()),
        (EventStatus::Rejected, Some("Rejected by contract-test"))
    );
    assert_eq!(s.get_operation(update.event.id).await.unwrap().unwrap().state, OpState::Done);
    let acc = s.get_account(a, u).await.unwrap().unwrap();
    assert_eq!((acc.status, acc.last_event_id), (EventStatus::Provisioned, Some(op.event.id)));
    assert_eq!(s.list_audit(&AuditQuery::default()).await.unwrap().items[0].action, "event.reject");
    assert!(matches!(s.reject_operation(update.event.id, &actor()).await, Err(StoreError::InvalidState(_))));
    assert!(s.claim_operations(a, "w1", 10, LEASE).await.unwrap().is_empty(), "a rejected event never runs");

    // With nothing before it, the account shows the rejection.
    plan(&*s, vec![enqueue(v, a, Action::Create, true)]).await;
    let first = ops_of(&*s, v, a).await.remove(0);
    s.reject_operation(first.event.id, &actor()).await.unwrap();
    assert_eq!(s.get_account(a, v).await.unwrap().unwrap().status, EventStatus::Rejected);
}

pub async fn replace_collapses_a_waiting_operation(s: Arc<dyn Store>) {
    let u = new_user(&*s, "ada").await;
    let a = new_app(&*s, "Slack").await;
    plan(&*s, vec![enqueue(u, a, Action::Create, true)]).await;
    let op = ops_of(&*s, u, a).await.remove(0);
    let replace = |needs_approval: bool, name: &str| PlanItem::Replace {
        op: op.event.id,
        action: Action::Create,
        desired: desired(name),
        needs_approval,
        held: false,
        cause: None,
    };
    plan(&*s, vec![replace(false, "ada2")]).await;
    let ops = ops_of(&*s, u, a).await;
    assert_eq!(ops.len(), 1, "collapsed into the waiting operation");
    assert_eq!(
        (ops[0].event.id, ops[0].state, ops[0].event.status),
        (op.event.id, OpState::Queued, EventStatus::Provisioning)
    );
    assert_eq!(ops[0].desired, desired("ada2"));
    assert_eq!(s.get_account(a, u).await.unwrap().unwrap().status, EventStatus::Provisioning);

    // Claimed meanwhile: a new operation is queued behind the running one.
    let claimed = s.claim_operations(a, "w1", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    plan(&*s, vec![replace(false, "ada3")]).await;
    let ops = ops_of(&*s, u, a).await;
    assert_eq!(ops.len(), 2);
    assert_eq!((ops[0].state, ops[0].desired.clone()), (OpState::Running, desired("ada2")));
    assert_eq!((ops[1].state, ops[1].desired.clone()), (OpState::Queued, desired("ada3")));
    assert_eq!(s.get_account(a, u).await.unwrap().unwrap().last_event_id, Some(ops[1].event.id));
    assert!(s.claim_operations(a, "w2", 10, LEASE).await.unwrap().is_empty(), "one operation of a pair at a time");

    assert!(s.finish_operation(ops[0].event.id, "w1", &done(EventStatus::Provisioned)).await.unwrap());
    let acc = s.get_account(a, u).await.unwrap().unwrap();
    assert_eq!(acc.last_event_id, Some(ops[1].event.id), "the account shows its newest event");
    let next = s.claim_operations(a, "w2", 10, LEASE).await.unwrap();
    assert_eq!(ids(&next), [ops[1].event.id]);
}

pub async fn cancel_and_replan(s: Arc<dyn Store>) {
    let u = new_user(&*s, "ada").await;
    let a = new_app(&*s, "Slack").await;
    plan(&*s, vec![enqueue(u, a, Action::Create, false)]).await;
    let op = ops_of(&*s, u, a).await.remove(0);
    plan(&*s, vec![PlanItem::Cancel { op: op.event.id, reason: "no longer granted".into() }]).await;
    let cancelled = s.get_operation(op.event.id).await.unwrap().unwrap();
    assert_eq!((cancelled.state, cancelled.event.status), (OpState::Done, EventStatus::Cancelled));
    assert_eq!(cancelled.event.reason.as_deref(), Some("no longer granted"));
    assert_eq!(s.get_account(a, u).await.unwrap().unwrap().status, EventStatus::Cancelled);
    assert!(s.claim_operations(a, "w1", 10, LEASE).await.unwrap().is_empty());

    // A cancelled operation after a finished one: the account goes back to the finished one.
    plan(&*s, vec![enqueue(u, a, Action::Create, false)]).await;
    let create = ops_of(&*s, u, a).await.remove(1);
    s.claim_operations(a, "w1", 10, LEASE).await.unwrap();
    s.finish_operation(create.event.id, "w1", &done(EventStatus::Provisioned)).await.unwrap();
    plan(&*s, vec![enqueue(u, a, Action::Update, false)]).await;
    let update = ops_of(&*s, u, a).await.remove(2);
    assert_eq!(s.get_account(a, u).await.unwrap().unwrap().status, EventStatus::Modifying);
    plan(&*s, vec![PlanItem::Cancel { op: update.event.id, reason: "undone".into() }]).await;
    let acc = s.get_account(a, u).await.unwrap().unwrap();
    assert_eq!((acc.status, acc.last_event_id), (EventStatus::Provisioned, Some(create.event.id)));

    // Cancelling a running operation marks it for re-planning instead.
    plan(&*s, vec![enqueue(u, a, Action::Update, false)]).await;
    let running = s.claim_operations(a, "w1", 10, LEASE).await.unwrap().remove(0);
    plan(&*s, vec![PlanItem::Cancel { op: running.event.id, reason: "undone".into() }]).await;
    assert_eq!(s.get_operation(running.event.id).await.unwrap().unwrap().state, OpState::Running);
    let seq = last_seq(&*s).await;
    assert!(s.finish_operation(running.event.id, "w1", &done(EventStatus::Provisioned)).await.unwrap());
    assert_eq!(account_changes_after(&*s, seq).await, [(Some(u), Some(a))]);

    // Replan on a running operation: a change when it finishes.
    plan(&*s, vec![enqueue(u, a, Action::Update, false)]).await;
    let running = s.claim_operations(a, "w1", 10, LEASE).await.unwrap().remove(0);
    plan(&*s, vec![PlanItem::Replan { op: running.event.id }]).await;
    let seq = last_seq(&*s).await;
    assert!(account_changes_after(&*s, seq).await.is_empty());
    s.finish_operation(running.event.id, "w1", &done(EventStatus::Provisioned)).await.unwrap();
    assert_eq!(account_changes_after(&*s, seq).await, [(Some(u), Some(a))]);

    // Replan or cancel of an operation that finished meanwhile: a change right away.
    let seq = last_seq(&*s).await;
    plan(&*s, vec![PlanItem::Replan { op: running.event.id }]).await;
    assert_eq!(account_changes_after(&*s, seq).await.len(), 1);
    plan(&*s, vec![PlanItem::Cancel { op: running.event.id, reason: "late".into() }]).await;
    assert_eq!(account_changes_after(&*s, seq).await.len(), 2);
    assert_eq!(s.get_operation(running.event.id).await.unwrap().unwrap().event.status, EventStatus::Provisioned);
}

pub async fn claim_order_limit_and_leases(s: Arc<dyn Store>) {
    let a = new_app(&*s, "Slack").await;
    let b = new_app(&*s, "Jira").await;
    let mut users = Vec::new();
    for i in 0..3 {
        users.push(new_user(&*s, &format!("u{i}")).await);
    }
    let mut items: Vec<_> = users.iter().map(|u| enqueue(*u, a, Action::Create, false)).collect();
    items.push(enqueue(users[0], b, Action::Create, false));
    plan(&*s, items).await;
    // A second operation of the first pair, behind the first.
    s.claim_operations(a, "w0", 1, LEASE).await.unwrap();
    let first = ops_of(&*s, users[0], a).await.remove(0);
    assert!(s.retry_operation_later(first.event.id, "w0", directory::now(), "busy").await.unwrap());
    plan(&*s, vec![enqueue(users[0], a, Action::Update, false)]).await;
    let mut due = s.apps_with_due_operations().await.unwrap();
    due.sort();
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(due, both);

    let claimed = s.claim_operations(a, "w1", 2, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2, "the limit");
    assert_eq!(claimed[0].event.id, first.event.id, "queue order");
    assert_eq!(claimed[0].event.attempts, 2, "attempts count claims");
    assert_eq!(claimed[1].event.user_id, users[1]);
    for op in &claimed {
        assert_eq!((op.state, op.lease_owner.as_deref()), (OpState::Running, Some("w1")));
        assert_eq!(op.event.app_id, a, "only the app asked for");
        assert!(op.lease_expires_at.unwrap() > directory::now());
    }
    // The account shows its newest event: for u0, the update queued behind the running create.
    assert_eq!(s.get_account(a, users[1]).await.unwrap().unwrap().status, EventStatus::Provisioning);
    assert_eq!(s.get_account(a, users[0]).await.unwrap().unwrap().status, EventStatus::Modifying);
    let rest = s.claim_operations(a, "w1", 10, LEASE).await.unwrap();
    assert_eq!(rest.len(), 1, "the update of u0 waits for its create");
    assert_eq!(rest[0].event.user_id, users[2]);
    assert!(s.claim_operations(a, "w1", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(s.claim_operations(b, "w1", 10, LEASE).await.unwrap().len(), 1);

    // Finishing the first lets the second of the pair run.
    assert!(s.finish_operation(first.event.id, "w1", &done(EventStatus::Provisioned)).await.unwrap());
    let second = s.claim_operations(a, "w1", 10, LEASE).await.unwrap();
    assert_eq!(
        (second.len(), second[0].event.action, second[0].event.status),
        (1, Action::Update, EventStatus::Modifying)
    );

    // An expired lease is claimed again by another worker, which then holds the fence.
    let u = new_user(&*s, "lapsed").await;
    plan(&*s, vec![enqueue(u, b, Action::Create, false)]).await;
    let op = s.claim_operations(b, "w1", 10, Duration::from_millis(1)).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(s.apps_with_due_operations().await.unwrap(), [b]);
    let again = s.claim_operations(b, "w2", 10, LEASE).await.unwrap();
    assert_eq!(
        (ids(&again), again[0].event.attempts, again[0].lease_owner.as_deref()),
        (vec![op.event.id], 2, Some("w2"))
    );
    assert!(!s.finish_operation(op.event.id, "w1", &done(EventStatus::Provisioned)).await.unwrap());
    assert!(s.finish_operation(op.event.id, "w2", &done(EventStatus::Provisioned)).await.unwrap());
    assert!(s.claim_operations(a, "w1", 0, LEASE).await.unwrap().is_empty());
}

pub async fn finish_is_fenced_and_writes_the_account(s: Arc<dyn Store>) {
    let u = new_user(&*s, "ada").await;
    let a = new_app(&*s, "Slack").await;
    plan(&*s, vec![enqueue(u, a, Action::Create, false)]).await;
    let op = s.claim_operations(a, "w1", 10, LEASE).await.unwrap().remove(0);
    let seq = last_seq(&*s).await;
    let outcome = Outcome {
        status: EventStatus::Provisioned,
        reason: None,
        recommended_action: None,
        account: AccountWrite::Set {
            remote_id: Some("r-1".into()),
            ownership: Some(Ownership::Created),
            last_applied: desired("ada"),
        },
        replan: true,
    };
    assert!(!s.finish_operation(op.event.id, "intruder", &outcome).await.unwrap());
    assert_eq!(s.get_operation(op.event.id).await.unwrap().unwrap(), op, "a lost lease changes nothing");
    assert_eq!(s.get_account(a, u).await.unwrap().unwrap().remote_id, None);
    assert_eq!(last_seq(&*s).await, seq);

    assert!(s.finish_operation(op.event.id, "w1", &outcome).await.unwrap());
    let finished = s.get_operation(op.event.id).await.unwrap().unwrap();
    assert_eq!(
        (finished.state, finished.event.status, finished.lease_owner),
        (OpState::Done, EventStatus::Provisioned, None)
    );
    let acc = s.get_account(a, u).await.unwrap().unwrap();
    assert_eq!((acc.remote_id.as_deref(), acc.ownership), (Some("r-1"), Some(Ownership::Created)));
    assert_eq!(
        (acc.status, acc.last_applied.clone(), acc.last_event_id),
        (EventStatus::Provisioned, desired("ada"), Some(op.event.id))
    );
    assert_eq!(account_changes_after(&*s, seq).await, [(Some(u), Some(a))], "replan asked");
    assert!(!s.finish_operation(op.event.id, "w1", &outcome).await.unwrap(), "finished once");

    // A failure keeps the account's values and records the reason.
    plan(&*s, vec![enqueue(u, a, Action::Update, false)]).await;
    let op = s.claim_operations(a, "w1", 10, LEASE).await.unwrap().remove(0);
    let failed = Outcome {
        status: EventStatus::Failed,
        reason: Some("HTTP 400".into()),
        recommended_action: Some("Fix the mapping".into()),
        account: AccountWrite::Keep,
        replan: false,
    };
    let seq = last_seq(&*s).await;
    assert!(s.finish_operation(op.event.id, "w1", &failed).await.unwrap());
    assert_eq!(last_seq(&*s).await, seq, "no replan, no change");
    let e = s.get_operation(op.event.id).await.unwrap().unwrap().event;
    assert_eq!(
        (e.status, e.reason.as_deref(), e.recommended_action.as_deref()),
        (EventStatus::Failed, Some("HTTP 400"), Some("Fix the mapping"))
    );
    let acc = s.get_account(a, u).await.unwrap().unwrap();
    assert_eq!(
        (acc.status, acc.remote_id.as_deref(), acc.last_applied),
        (EventStatus::Failed, Some("r-1"), desired("ada"))
    );

    // An admin's retry queues it again to run now.
    let retried = s.retry_operation(op.event.id, &actor()).await.unwrap();
    assert_eq!((retried.status, retried.reason, retried.attempts), (EventStatus::Modifying, None, 1));
    assert_eq!(s.list_audit(&AuditQuery::default()).await.unwrap().items[0].action, "event.retry");
    assert!(matches!(s.retry_operation(op.event.id, &actor()).await, Err(StoreError::InvalidState(_))));
    let again = s.claim_operations(a, "w1", 10, LEASE).await.unwrap();
    assert_eq!((ids(&again), again[0].event.attempts), (vec![op.event.id], 2));

    // Once a newer event exists for the account, an old failure is not run again.
    assert!(s.finish_operation(op.event.id, "w1", &failed).await.unwrap());
    plan(&*s, vec![enqueue(u, a, Action::Update, false)]).await;
    let err = s.retry_operation(op.event.id, &actor()).await.unwrap_err();
    assert!(matches!(&err, StoreError::InvalidState(m) if m.contains("newer")), "{err:?}");
}

pub async fn outcomes_are_recorded_together_each_fenced(s: Arc<dyn Store>) {
    let a = new_app(&*s, "Slack").await;
    let mut users = Vec::new();
    for name in ["ada", "bob", "cyd", "dee"] {
        users.push(new_user(&*s, name).await);
    }
    // Queued in one plan, in order; claimed in one claim, in queue order.
    plan(&*s, users.iter().map(|u| enqueue(*u, a, Action::Create, false)).collect()).await;
    let claimed = s.claim_operations(a, "w1", 10, LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|o| o.event.user_id).collect::<Vec<_>>(), users);
    assert!(claimed.iter().all(|o| o.event.status == EventStatus::Provisioning && o.event.attempts == 1));
    for u in &users {
        assert_eq!(s.get_account(a, *u).await.unwrap().unwrap().status, EventStatus::Provisioning);
    }
    // The last one's lease passes to another worker: its outcome from w1 is refused.
    let created = |i: usize| Outcome {
        status: EventStatus::Provisioned,
        reason: None,
        recommended_action: None,
        account: AccountWrite::Set {
            remote_id: Some(format!("r-{i}")),
            ownership: Some(Ownership::Created),
            last_applied: desired(&format!("u{i}")),
        },
        replan: i == 1,
    };
    let failed = Outcome {
        status: EventStatus::Failed,
        reason: Some("HTTP 400".into()),
        recommended_action: Some("Fix the mapping".into()),
        account: AccountWrite::Keep,
        replan: false,
    };
    let seq = last_seq(&*s).await;
    let batch = vec![
        (claimed[0].event.id, created(0)),
        (claimed[1].event.id, created(1)),
        (claimed[2].event.id, failed.clone()),
        (claimed[3].event.id, created(3)),
    ];
    let recorded = s.finish_operations("w1", &batch[..3]).await.unwrap();
    assert_eq!(recorded, [true, true, true]);
    assert_eq!(s.finish_operations("intruder", &batch[3..]).await.unwrap(), [false]);
    assert_eq!(
        s.get_operation(claimed[3].event.id).await.unwrap().unwrap(),
        claimed[3],
        "a lost lease changes nothing"
    );
    assert_eq!(s.finish_operations("w1", &batch).await.unwrap(), [false, false, false, true], "each once");
    assert!(s.finish_operations("w1", &[]).await.unwrap().is_empty());

    for (i, u) in users.iter().enumerate() {
        let acc = s.get_account(a, *u).await.unwrap().unwrap();
        let op = s.get_operation(claimed[i].event.id).await.unwrap().unwrap();
        assert_eq!(op.state, OpState::Done);
        if i == 2 {
            assert_eq!((op.event.status, op.event.reason.as_deref()), (EventStatus::Failed, Some("HTTP 400")));
            assert_eq!((acc.status, acc.remote_id), (EventStatus::Failed, None));
        } else {
            assert_eq!(op.event.status, EventStatus::Provisioned);
            assert_eq!(
                (acc.status, acc.remote_id, acc.ownership, acc.last_applied, acc.last_event_id),
                (
                    EventStatus::Provisioned,
                    Some(format!("r-{i}")),
                    Some(Ownership::Created),
                    desired(&format!("u{i}")),
                    Some(op.event.id)
                )
            );
        }
    }
    assert_eq!(account_changes_after(&*s, seq).await, [(Some(users[1]), Some(a))], "replan asked once");

    // The account records of many users at once; users without one are left out.
    let stranger = new_user(&*s, "eve").await;
    let mut asked = users.clone();
    asked.push(stranger);
    let mut found: Vec<(Uuid, Option<String>)> =
        s.get_accounts(a, &asked).await.unwrap().into_iter().map(|acc| (acc.user_id, acc.remote_id)).collect();
    found.sort();
    let mut expected: Vec<(Uuid, Option<String>)> =
        users.iter().enumerate().map(|(i, u)| (*u, (i != 2).then(|| format!("r-{i}")))).collect();
    expected.sort();
    assert_eq!(found, expected);
    assert!(s.get_accounts(a, &[]).await.unwrap().is_empty());
}

pub async fn retry_later_waits_until_due(s: Arc<dyn Store>) {
    let u = new_user(&*s, "ada").await;
    let a = new_app(&*s, "Slack").await;
    plan(&*s, vec![enqueue(u, a, Action::Create, false)]).await;
    let op = s.claim_operations(a, "w1", 10, LEASE).await.unwrap().remove(0);
    let at = directory::now() + chrono::Duration::milliseconds(400);
    assert!(!s.retry_operation_later(op.event.id, "w2", at, "HTTP 503").await.unwrap(), "fenced");
    assert!(s.retry_operation_later(op.event.id, "w1", at, "HTTP 503").await.unwrap());
    let queued = s.get_operation(op.event.id).await.unwrap().unwrap();
    assert_eq!(
        (queued.state, queued.event.status, queued.lease_owner),
        (OpState::Queued, EventStatus::Provisioning, None)
    );
    assert_eq!((queued.event.reason.as_deref(), queued.next_run_at), (Some("HTTP 503"), at));
    assert!(s.claim_operations(a, "w1", 10, LEASE).await.unwrap().is_empty());
    assert!(s.apps_with_due_operations().await.unwrap().is_empty());
    assert!(!s.retry_operation_later(op.event.id, "w1", at, "again").await.unwrap(), "no longer held");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.apps_with_due_operations().await.unwrap(), [a]);
    let again = s.claim_operations(a, "w1", 10, LEASE).await.unwrap();
    assert_eq!((ids(&again), again[0].event.attempts), (vec![op.event.id], 2));
}

pub async fn release_all_leases_requeues_running(s: Arc<dyn Store>) {
    let a = new_app(&*s, "Slack").await;
    for i in 0..3 {
        let u = new_user(&*s, &format!("u{i}")).await;
        plan(&*s, vec![enqueue(u, a, Action::Create, false)]).await;
    }
    assert_eq!(s.claim_operations(a, "w1", 2, LEASE).await.unwrap().len(), 2);
    assert_eq!(s.release_all_leases().await.unwrap(), 2);
    assert_eq!(s.release_all_leases().await.unwrap(), 0);
    let again = s.claim_operations(a, "w2", 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|o| o.lease_owner.as_deref() == Some("w2")));
}

pub async fn events_filter_and_page_newest_first(s: Arc<dyn Store>) {
    let a = new_app(&*s, "Slack").await;
    let b = new_app(&*s, "Jira").await;
    let ada = new_user(&*s, "Ada.Lovelace").await;
    let alan = new_user(&*s, "alan_turing").await;
    let mut items = Vec::new();
    for _ in 0..3 {
        items.push(enqueue(ada, a, Action::Update, false));
        items.push(enqueue(alan, b, Action::Update, true));
    }
    plan(&*s, items).await;
    plan(&*s, vec![enqueue(ada, b, Action::Delete, false)]).await;

    let all = s.list_events(&EventQuery::default()).await.unwrap();
    assert_eq!((all.items.len(), all.next_cursor.clone()), (7, None));
    assert_eq!(all.items[0].action, Action::Delete, "newest first");
    let q = |f: fn(&mut EventQuery)| {
        let mut q = EventQuery::default();
        f(&mut q);
        q
    };
    let count = |q: EventQuery| {
        let s = s.clone();
        async move { s.list_events(&q).await.unwrap().items.len() }
    };
    assert_eq!(count(EventQuery { user: Some(ada), ..Default::default() }).await, 4);
    assert_eq!(count(EventQuery { app: Some(b), ..Default::default() }).await, 4);
    assert_eq!(count(EventQuery { user: Some(ada), app: Some(b), ..Default::default() }).await, 1);
    assert_eq!(count(q(|q| q.status = Some(EventStatus::Pending))).await, 3);
    assert_eq!(count(q(|q| q.status = Some(EventStatus::Modifying))).await, 3);
    assert_eq!(count(q(|q| q.q = Some("LOVE".into()))).await, 4, "case-insensitive username search");
    assert_eq!(count(q(|q| q.q = Some("_".into()))).await, 3, "LIKE wildcards are escaped");
    assert_eq!(count(q(|q| q.q = Some(String::new()))).await, 7);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            s.list_events(&EventQuery { page: PageRequest { limit: 3, cursor }, ..Default::default() }).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|e| e.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, all.items.iter().map(|e| e.id).collect::<Vec<_>>(), "every event once, newest first");
    let bad = EventQuery { page: PageRequest { limit: 3, cursor: Some("garbage".into()) }, ..Default::default() };
    assert!(matches!(s.list_events(&bad).await, Err(StoreError::InvalidCursor)));

    assert_eq!(count(q(|q| q.cause = Some("reconcile".into()))).await, 0, "no event has a cause yet");
    let cause = |kind: &str| directory::Cause {
        kind: kind.into(),
        actor: None,
        audit_id: None,
        summary: format!("because of {kind}"),
        rule: None,
        parameter: None,
        role_id: None,
    };
    let caused = |user_id, kind: &str| PlanItem::Enqueue {
        user_id,
        app_id: a,
        action: Action::Delete,
        desired: None,
        needs_approval: false,
        held: false,
        cause: Some(cause(kind)),
    };
    plan(&*s, vec![caused(alan, "reconcile"), caused(ada, "admin")]).await;
    assert_eq!(count(q(|q| q.cause = Some("reconcile".into()))).await, 1, "filtered by the kind of cause");
    let admin = s.list_events(&q(|q| q.cause = Some("admin".into()))).await.unwrap().items;
    assert_eq!((admin.len(), admin[0].user_id, admin[0].cause.clone()), (1, ada, Some(cause("admin"))));
}

pub async fn pairs_and_their_state(s: Arc<dyn Store>) {
    let r = Role::new(RoleInput { name: "Eng".into(), description: None, pushable: false }, directory::now());
    s.create_role(&r, &actor()).await.unwrap();
    let a = new_app(&*s, "Slack").await;
    let b = new_app(&*s, "Jira").await;
    let granted = new_user(&*s, "granted").await;
    let former = new_user(&*s, "former").await;
    s.add_role_user(r.id, granted, &actor()).await.unwrap();
    s.add_role_app(r.id, a, &actor()).await.unwrap();
    plan(&*s, vec![enqueue(former, b, Action::Create, false)]).await;

    assert_eq!(s.apps_of_user(granted).await.unwrap(), [a]);
    assert_eq!(s.apps_of_user(former).await.unwrap(), [b], "through its account record");
    assert_eq!(s.users_of_app(a).await.unwrap(), [granted]);
    assert_eq!(s.users_of_app(b).await.unwrap(), [former]);

    let running = s.claim_operations(b, "w1", 10, LEASE).await.unwrap().remove(0);
    plan(&*s, vec![enqueue(former, b, Action::Delete, true)]).await;
    let waiting = ops_of(&*s, former, b).await.remove(1);
    let ghost = Uuid::now_v7();
    let gone_app = Uuid::now_v7();
    let pairs = [(granted, a), (former, b), (ghost, a), (granted, gone_app), (granted, a)];
    let states = s.load_pairs(&pairs).await.unwrap();
    assert_eq!(states.len(), 5);
    assert_eq!(states.iter().map(|p| (p.user_id, p.app_id)).collect::<Vec<_>>(), pairs, "in the order given");

    let g = &states[0];
    assert!(g.granted);
    assert_eq!(
        (g.user.as_ref().unwrap().username.as_str(), g.app.as_ref().unwrap().name.as_str()),
        ("granted", "Slack")
    );
    assert_eq!((&g.account, &g.running, &g.waiting), (&None, &None, &None));
    let f = &states[1];
    assert!(!f.granted);
    assert_eq!(f.account.as_ref().unwrap().last_event_id, Some(waiting.event.id));
    assert_eq!(f.running.as_ref().unwrap().event.id, running.event.id);
    assert_eq!(f.waiting.as_ref().unwrap().event.id, waiting.event.id);
    assert_eq!(f.waiting.as_ref().unwrap().state, OpState::AwaitingApproval);
    assert!(states[2].user.is_none() && states[2].app.is_some() && !states[2].granted);
    assert!(states[3].app.is_none() && states[3].user.is_some());
    assert_eq!(states[4], states[0]);

    let many: Vec<_> = (0..450).map(|i| if i % 2 == 0 { (granted, a) } else { (former, b) }).collect();
    let states = s.load_pairs(&many).await.unwrap();
    assert_eq!(states.len(), 450);
    assert!(states[448].granted && !states[449].granted && states[449].running.is_some());
    assert!(s.load_pairs(&[]).await.unwrap().is_empty());
}

pub async fn accounts_link_and_list(s: Arc<dyn Store>) {
    let a = new_app(&*s, "Slack").await;
    let ada = new_user(&*s, "ada").await;
    let bob = new_user(&*s, "Bob").await;
    let seq = last_seq(&*s).await;
    let linked = s.link_account(a, ada, "remote-7", &actor()).await.unwrap();
    assert_eq!((linked.remote_id.as_deref(), linked.ownership), (Some("remote-7"), Some(Ownership::Linked)));
    assert_eq!(
        (linked.status, linked.last_applied.clone(), linked.username.as_str()),
        (EventStatus::Provisioned, None, "ada")
    );
    assert_eq!(s.get_account(a, ada).await.unwrap(), Some(linked));
    assert_eq!(account_changes_after(&*s, seq).await, [(Some(ada), Some(a))], "planned again");
    let audit = &s.list_audit(&AuditQuery::default()).await.unwrap().items[0];
    assert_eq!((audit.action.as_str(), audit.target_type.as_str()), ("account.link", "account"));
    assert_eq!(audit.target_id, format!("{a}:{ada}"));
    assert_eq!(audit.after.as_ref().unwrap()["remote_id"], "remote-7");

    let seq = last_seq(&*s).await;
    let err = s.link_account(a, bob, "remote-7", &actor()).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { field: "remote_id" }), "{err:?}");
    assert_eq!(last_seq(&*s).await, seq, "a refused link changes nothing");
    assert_eq!(s.get_account(a, bob).await.unwrap(), None);
    s.link_account(a, ada, "remote-7", &actor()).await.unwrap();
    assert!(matches!(s.link_account(Uuid::now_v7(), bob, "x", &actor()).await, Err(StoreError::NotFound)));
    assert!(matches!(s.link_account(a, Uuid::now_v7(), "x", &actor()).await, Err(StoreError::NotFound)));

    let b = new_app(&*s, "Jira").await;
    s.link_account(b, bob, "remote-7", &actor()).await.unwrap();
    s.link_account(a, bob, "remote-8", &actor()).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_accounts(&AccountQuery { page: PageRequest { limit: 2, cursor }, ..Default::default() })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|acc| acc.username.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["ada", "Bob", "Bob"], "by username, each once");
    let of_app = s.list_accounts(&AccountQuery { app: Some(a), ..Default::default() }).await.unwrap().items;
    assert_eq!(of_app.len(), 2);
    let of_bob = s.list_accounts(&AccountQuery { user: Some(bob), ..Default::default() }).await.unwrap().items;
    assert_eq!(of_bob.len(), 2);
}

pub async fn app_capabilities_round_trip(s: Arc<dyn Store>) {
    let a = new_app(&*s, "Slack").await;
    assert_eq!(s.get_app_capabilities(a).await.unwrap(), None);
    let caps = json!({"patch": true, "filter": {"supported": true, "maxResults": 200}});
    s.set_app_capabilities(a, &caps).await.unwrap();
    assert_eq!(s.get_app_capabilities(a).await.unwrap(), Some(caps.clone()));
    assert!(matches!(s.set_app_capabilities(Uuid::now_v7(), &caps).await, Err(StoreError::NotFound)));
    assert_eq!(s.get_app_capabilities(Uuid::now_v7()).await.unwrap(), None);
}

pub async fn schedules_run_once_per_period(s: Arc<dyn Store>) {
    let every = Duration::from_millis(300);
    assert!(s.try_run_schedule("reconcile:a", every).await.unwrap(), "never ran: runs");
    assert!(!s.try_run_schedule("reconcile:a", every).await.unwrap(), "ran within the period");
    assert!(s.try_run_schedule("reconcile:b", every).await.unwrap(), "each schedule is apart");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(s.try_run_schedule("reconcile:a", every).await.unwrap(), "due again");
    assert!(!s.try_run_schedule("reconcile:a", every).await.unwrap());
    // Of concurrent callers, one runs it.
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = s.clone();
        callers.spawn(async move { s.try_run_schedule("reconcile:c", Duration::from_secs(60)).await.unwrap() });
    }
    let mut ran = 0;
    while let Some(r) = callers.join_next().await {
        ran += usize::from(r.unwrap());
    }
    assert_eq!(ran, 1);
}

pub async fn leases_have_one_holder_until_they_expire(s: Arc<dyn Store>) {
    let ttl = Duration::from_millis(300);
    assert!(s.try_hold_lease("planner", "a", ttl).await.unwrap(), "free: taken");
    assert!(!s.try_hold_lease("planner", "b", ttl).await.unwrap(), "held by a");
    assert!(s.try_hold_lease("planner", "a", ttl).await.unwrap(), "renewed by its holder");
    assert!(s.try_hold_lease("other", "b", ttl).await.unwrap(), "each lease is apart");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(s.try_hold_lease("planner", "b", ttl).await.unwrap(), "expired: taken over");
    assert!(!s.try_hold_lease("planner", "a", ttl).await.unwrap(), "the old holder lost it");
}

crate::contract!(
    leases_have_one_holder_until_they_expire,
    schedules_run_once_per_period,
    enqueue_creates_event_and_account,
    approval_approve_and_reject,
    replace_collapses_a_waiting_operation,
    cancel_and_replan,
    claim_order_limit_and_leases,
    finish_is_fenced_and_writes_the_account,
    outcomes_are_recorded_together_each_fenced,
    retry_later_waits_until_due,
    release_all_leases_requeues_running,
    events_filter_and_page_newest_first,
    pairs_and_their_state,
    accounts_link_and_list,
    app_capabilities_round_trip,
    app_reads_keep_the_latest_of_each_kind,
);

/// How the latest reconcile and Refresh read an app: one of each kind, the latest replacing
/// the previous, per app.
async fn app_reads_keep_the_latest_of_each_kind(s: Arc<dyn Store>) {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(s.app_reads(a).await.unwrap().is_empty());
    let failed = json!({"status": "failed", "strategy": null,
        "contradictions": ["GET paging: asked for startIndex=101, the app answered startIndex=1"]});
    s.record_app_read(a, "reconcile", &failed).await.unwrap();
    s.record_app_read(a, "refresh", &json!({"status": "done", "strategy": "GET paging"})).await.unwrap();
    let done = json!({"status": "completed", "strategy": "POST /.search paging", "duplicate_members": 2});
    s.record_app_read(a, "reconcile", &done).await.unwrap();
    let reads = s.app_reads(a).await.unwrap();
    let kinds: Vec<&str> = reads.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["reconcile", "refresh"]);
    assert_eq!(reads[0].result, done);
    assert_eq!(reads[1].result["strategy"], "GET paging");
    assert!(s.app_reads(b).await.unwrap().is_empty(), "per app");
}
