//! What only a shared (PostgreSQL) store must do: several processes on one database. Two
//! `PostgresStore`s on one database stand for two processes.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use directory::{
    AccountWrite, Action, Actor, App, AppInput, EventStatus, OpState, Outcome, PlanItem, PlanWrite, User, UserInput,
    UserSource,
};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use store::{PostgresOptions, PostgresStore, ProvisioningStore, RateStore, Store, StoreError, Wakeup};
use testkit::postgres::TestDatabase;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(60);

fn actor() -> Actor {
    Actor::token("contract-test")
}

fn user(username: &str) -> User {
    let input = UserInput { username: username.into(), ..Default::default() };
    User::new(input, UserSource::Local, directory::now())
}

fn app(name: &str, max_concurrency: u32) -> App {
    let input: AppInput = serde_json::from_value(json!({"name": name,
        "connection": {"base_url": "https://app.example.com/scim/v2", "auth": {"type": "bearer", "token": "t"}},
        "provisioning": {"max_concurrency": max_concurrency}}))
    .unwrap();
    let (validated, _) = input.validate(None).unwrap();
    App::new(validated, directory::now())
}

fn options(max_connections: u32, listen: bool) -> PostgresOptions {
    PostgresOptions { max_connections, listen, ..crate::pg_options() }
}

async fn store(db: &TestDatabase, max_connections: u32, listen: bool) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::connect(&db.url, options(max_connections, listen)).await.unwrap())
}

fn provisioned() -> Outcome {
    Outcome {
        status: EventStatus::Provisioned,
        reason: None,
        recommended_action: None,
        account: AccountWrite::Keep,
        replan: false,
    }
}

/// Running operations of an app under a live lease, as the database sees them.
async fn running_now(pool: &sqlx::PgPool, app: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE app_id = $1 AND state = 'running' AND lease_expires_at >= now()",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_across_processes_take_each_operation_once_within_the_apps_limit() {
    const USERS: usize = 200;
    const SECOND_OPS: usize = 40;
    const MAX_RUNNING: usize = 3;
    let db = TestDatabase::create().await;
    let stores = [store(&db, 6, false).await, store(&db, 6, false).await];
    let s = &stores[0];
    let a = app("Slack", MAX_RUNNING as u32);
    s.create_app(&a, "ciphertext", &actor()).await.unwrap();
    let mut users = Vec::new();
    for i in 0..USERS {
        let u = user(&format!("u{i:03}"));
        s.create_user(&u, &actor()).await.unwrap();
        users.push(u.id);
    }
    let enqueue = |u: Uuid, action| PlanItem::Enqueue {
        user_id: u,
        app_id: a.id,
        action,
        desired: Some(json!({"userName": "x"})),
        needs_approval: false,
        held: false,
        cause: None,
    };
    let items = users.iter().map(|u| enqueue(*u, Action::Create)).collect();
    s.apply_plan(&PlanWrite { cursor: None, items }).await.unwrap();
    // A second operation behind the first for some pairs: it may run only once the first is done.
    let items = users[..SECOND_OPS].iter().map(|u| enqueue(*u, Action::Update)).collect();
    s.apply_plan(&PlanWrite { cursor: None, items }).await.unwrap();
    let total = USERS + SECOND_OPS;

    // A monitor reads the database's own count of running operations meanwhile.
    let monitor_pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let stop = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let stop = stop.clone();
        let app_id = a.id;
        tokio::spawn(async move {
            let mut most = 0;
            while stop.load(Ordering::SeqCst) == 0 {
                most = most.max(running_now(&monitor_pool, app_id).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        })
    };

    let clock = Arc::new(AtomicU64::new(0));
    // op -> (user, action, claimed at)
    type Claims = HashMap<Uuid, (Uuid, Action, u64)>;
    let claims: Arc<Mutex<Claims>> = Arc::default();
    let finishes: Arc<Mutex<HashMap<Uuid, u64>>> = Arc::default(); // op -> about to finish at
    let running: Arc<Mutex<HashSet<Uuid>>> = Arc::default(); // users with a claimed op, seen here
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let s = stores[w % 2].clone();
        let (clock, claims, finishes, running, done) =
            (clock.clone(), claims.clone(), finishes.clone(), running.clone(), done.clone());
        let app_id = a.id;
        workers.spawn(async move {
            let owner = format!("worker-{w}");
            while done.load(Ordering::SeqCst) < total {
                let ops = s.claim_operations(app_id, &owner, 2, LEASE).await.unwrap();
                let at = clock.fetch_add(1, Ordering::SeqCst);
                if ops.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                {
                    let mut claims = claims.lock().unwrap();
                    let mut running = running.lock().unwrap();
                    for op in &ops {
                        assert_eq!((op.state, op.event.attempts), (OpState::Running, 1));
                        let earlier = claims.insert(op.event.id, (op.event.user_id, op.event.action, at));
                        assert!(earlier.is_none(), "operation {} claimed twice", op.event.id);
                        assert!(running.insert(op.event.user_id), "two operations of one pair at once");
                    }
                    assert!(running.len() <= MAX_RUNNING, "{} running, more than the app's limit", running.len());
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
                for op in &ops {
                    running.lock().unwrap().remove(&op.event.user_id);
                    finishes.lock().unwrap().insert(op.event.id, clock.fetch_add(1, Ordering::SeqCst));
                    assert!(s.finish_operation(op.event.id, &owner, &provisioned()).await.unwrap());
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    let elapsed = started.elapsed();
    stop.store(1, Ordering::SeqCst);
    let most_running = monitor.await.unwrap();
    eprintln!(
        "{total} operations claimed and finished by 4 workers on 2 stores in {elapsed:?} ({:.0}/s); \
         at most {most_running} running at once",
        total as f64 / elapsed.as_secs_f64()
    );
    assert!(most_running <= MAX_RUNNING as i64, "the database saw {most_running} running");
    let claims = claims.lock().unwrap().clone();
    let finishes = finishes.lock().unwrap().clone();
    assert_eq!(claims.len(), total, "every operation claimed exactly once");
    // Per pair, the update was claimed only after the create was finished.
    let mut by_user: HashMap<Uuid, Vec<(Action, Uuid, u64)>> = HashMap::new();
    for (op, (u, action, at)) in claims.iter() {
        by_user.entry(*u).or_default().push((*action, *op, *at));
    }
    for ops in by_user.values().filter(|o| o.len() == 2) {
        let create = ops.iter().find(|o| o.0 == Action::Create).unwrap();
        let update = ops.iter().find(|o| o.0 == Action::Update).unwrap();
        assert!(update.2 > finishes[&create.1], "an update ran before its create finished");
    }
    assert!(stores[1].apps_with_due_operations().await.unwrap().is_empty());
    for op in claims.keys().take(20) {
        let op = s.get_operation(*op).await.unwrap().unwrap();
        assert_eq!((op.state, op.event.status, op.event.attempts), (OpState::Done, EventStatus::Provisioned, 1));
    }
}

#[tokio::test]
async fn a_claim_never_exceeds_the_apps_limit() {
    let db = TestDatabase::create().await;
    let s = store(&db, 4, false).await;
    let limited = app("Limited", 2);
    let default = app("Default", 4);
    for a in [&limited, &default] {
        s.create_app(a, "ciphertext", &actor()).await.unwrap();
    }
    let mut items = Vec::new();
    for i in 0..6 {
        let u = user(&format!("u{i}"));
        s.create_user(&u, &actor()).await.unwrap();
        for a in [&limited, &default] {
            items.push(PlanItem::Enqueue {
                user_id: u.id,
                app_id: a.id,
                action: Action::Create,
                desired: None,
                needs_approval: false,
                held: false,
                cause: None,
            });
        }
    }
    s.apply_plan(&PlanWrite { cursor: None, items }).await.unwrap();
    let first = s.claim_operations(limited.id, "w1", 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 2, "max_concurrency 2");
    assert!(s.claim_operations(limited.id, "w2", 10, LEASE).await.unwrap().is_empty(), "full, whoever asks");
    assert_eq!(s.claim_operations(default.id, "w1", 10, LEASE).await.unwrap().len(), 4, "the default limit");
    assert!(s.finish_operation(first[0].event.id, "w1", &provisioned()).await.unwrap());
    assert_eq!(s.claim_operations(limited.id, "w2", 10, LEASE).await.unwrap().len(), 1, "a slot freed");
    // An expired lease frees its slot (and its operation is claimed again).
    let short = s.claim_operations(default.id, "w3", 10, LEASE).await.unwrap();
    assert!(short.is_empty());
    let u = user("lapsed");
    s.create_user(&u, &actor()).await.unwrap();
    let other = app("Other", 1);
    s.create_app(&other, "ciphertext", &actor()).await.unwrap();
    let items = vec![PlanItem::Enqueue {
        user_id: u.id,
        app_id: other.id,
        action: Action::Create,
        desired: None,
        needs_approval: false,
        held: false,
        cause: None,
    }];
    s.apply_plan(&PlanWrite { cursor: None, items }).await.unwrap();
    let op = s.claim_operations(other.id, "w1", 10, Duration::from_millis(1)).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = s.claim_operations(other.id, "w2", 10, LEASE).await.unwrap();
    assert_eq!((again.len(), again[0].event.id, again[0].event.attempts), (1, op.event.id, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_change_feed_is_read_in_commit_order_under_concurrent_writers() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 40;
    let db = TestDatabase::create().await;
    let stores = [store(&db, 6, false).await, store(&db, 6, false).await];
    let total = WRITERS * PER_WRITER;

    // A reader follows the feed with a cursor while the writers write: if a change committed
    // after one with a higher seq, the reader would skip it.
    let reader = {
        let s = stores[1].clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen < total {
                assert!(Instant::now() < deadline, "the reader saw only {seen} changes");
                for c in s.changes_after(cursor, 50).await.unwrap() {
                    if cursor != 0 {
                        assert_eq!(c.seq, cursor + 1, "the reader missed a change");
                    }
                    cursor = c.seq;
                    seen += 1;
                }
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let s = stores[w % 2].clone();
        writers.spawn(async move {
            for i in 0..PER_WRITER {
                s.create_user(&user(&format!("w{w}-{i}")), &actor()).await.unwrap();
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    assert_eq!(reader.await.unwrap(), total);
    let all = stores[0].changes_after(0, 10_000).await.unwrap();
    assert_eq!(all.len(), total);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1), "the feed has gaps");
}

/// Waits for a wake-up of `kind`, skipping others.
async fn next_wakeup(rx: &mut tokio::sync::broadcast::Receiver<Wakeup>, kind: Wakeup, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            match rx.recv().await {
                Ok(w) if w == kind => return true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn wakeups_arrive_by_listen_notify_from_another_process() {
    let db = TestDatabase::create().await;
    let listening = store(&db, 2, true).await;
    let writer = store(&db, 2, false).await;
    assert!(writer.wakeups().is_none(), "no LISTEN task, no wake-ups");
    let mut rx = listening.wakeups().expect("a PostgreSQL store has wake-ups");
    // The LISTEN task starts in the background: write until it hears.
    let mut heard = false;
    for i in 0..50 {
        writer.create_user(&user(&format!("u{i}")), &actor()).await.unwrap();
        if next_wakeup(&mut rx, Wakeup::Changes, Duration::from_millis(200)).await {
            heard = true;
            break;
        }
    }
    assert!(heard, "no wake-up for a new change");
    let a = app("Slack", 4);
    writer.create_app(&a, "ciphertext", &actor()).await.unwrap();
    let u = user("ada");
    writer.create_user(&u, &actor()).await.unwrap();
    while rx.try_recv().is_ok() {}
    let items = vec![PlanItem::Enqueue {
        user_id: u.id,
        app_id: a.id,
        action: Action::Create,
        desired: None,
        needs_approval: false,
        held: false,
        cause: None,
    }];
    writer.apply_plan(&PlanWrite { cursor: None, items }).await.unwrap();
    assert!(
        next_wakeup(&mut rx, Wakeup::Operations, Duration::from_secs(5)).await,
        "no wake-up for a queued operation"
    );
    let op = writer.claim_operations(a.id, "w1", 1, LEASE).await.unwrap().remove(0);
    while rx.try_recv().is_ok() {}
    assert!(writer.retry_operation_later(op.event.id, "w1", directory::now(), "HTTP 429").await.unwrap());
    assert!(next_wakeup(&mut rx, Wakeup::Operations, Duration::from_secs(5)).await, "no wake-up for a retry");

    // The embedded store wakes itself in memory.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = store::SqliteStore::open(&dir.path().join("w.db")).await.unwrap();
    assert!(sqlite.wakeups().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_run_once_among_processes() {
    let db = TestDatabase::create().await;
    let stores = [store(&db, 4, false).await, store(&db, 4, false).await];
    let mut callers = tokio::task::JoinSet::new();
    for i in 0..16 {
        let s = stores[i % 2].clone();
        callers.spawn(async move { s.try_run_schedule("reconcile:app", Duration::from_secs(3600)).await.unwrap() });
    }
    let mut ran = 0;
    while let Some(r) = callers.join_next().await {
        ran += usize::from(r.unwrap());
    }
    assert_eq!(ran, 1);
}

/// A TCP proxy to the database server that can be cut (as when the server goes away).
struct Proxy {
    port: u16,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let inner = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                inner.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Proxy { port, tasks }
    }

    /// Closes the port and every connection through it.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[tokio::test]
async fn health_turns_unavailable_when_the_server_cannot_be_reached() {
    let db = TestDatabase::create().await;
    let opts = PgConnectOptions::from_str(&db.url).unwrap();
    let proxy = Proxy::start((opts.get_host().to_owned(), opts.get_port())).await;
    let through_proxy =
        db.url.replacen(&format!("{}:{}", opts.get_host(), opts.get_port()), &format!("127.0.0.1:{}", proxy.port), 1);
    assert_ne!(through_proxy, db.url);
    let options = PostgresOptions { acquire_timeout: Duration::from_secs(1), ..options(2, false) };
    let s = PostgresStore::connect(&through_proxy, options.clone()).await.unwrap();
    s.health().await.unwrap();
    s.create_user(&user("ada"), &actor()).await.unwrap();

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let err = s.health().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "health took {:?}", started.elapsed());
    let err = s.get_user(Uuid::now_v7()).await.unwrap_err();
    assert!(err.is_unavailable(), "a read says the database is unavailable: {err:?}");
    // The driver's error is kept as the source, down to the log line.
    assert!(err.chain().starts_with("the database is unavailable: "), "{}", err.chain());

    // At start, an unreachable server gives a readable error once the retries are spent.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{closed}/test");
    let started = Instant::now();
    let quick = PostgresOptions { connect_timeout: Duration::from_millis(800), ..options };
    let err = PostgresStore::connect(&url, quick).await.unwrap_err();
    let elapsed = started.elapsed();
    match err {
        StoreError::Unavailable(msg) => {
            assert!(msg.starts_with(&format!("cannot reach PostgreSQL at 127.0.0.1:{closed}: ")), "{msg}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(300), "it retried ({elapsed:?})");
    assert!(elapsed < Duration::from_secs(5), "within its timeout ({elapsed:?})");
}

/// Three processes asking for tokens at once, at the same moments: together they get exactly
/// what the budget allows, never more; and claims keep within a lowered concurrency limit,
/// whoever claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_budget_holds_across_processes() {
    use directory::{RateLimit, Take};
    let db = TestDatabase::create().await;
    let stores = [store(&db, 4, false).await, store(&db, 4, false).await, store(&db, 4, false).await];
    let mut a = app("Budgeted", 8);
    let budget = RateLimit { per_minute: 120, burst: Some(5) };
    a.provisioning.rate_limit = Some(budget);
    stores[0].create_app(&a, "ciphertext", &actor()).await.unwrap();
    let t0 = directory::now();
    // Each of 3 processes sends 8 requesters at each of 3 moments: the burst, then 2 a second.
    let mut granted = 0;
    for (moment, ms) in [0, 1000, 1500].into_iter().enumerate() {
        let now = t0 + chrono::Duration::milliseconds(ms);
        let mut askers = tokio::task::JoinSet::new();
        for i in 0..24 {
            let (s, id) = (stores[i % 3].clone(), a.id);
            askers.spawn(async move { s.take_rate_token(id, &budget, now).await.unwrap() });
        }
        let mut got = 0;
        while let Some(t) = askers.join_next().await {
            match t.unwrap() {
                Take::Granted => got += 1,
                Take::Empty(next) => assert!(next > now, "{next} after {now}"),
                Take::Paused(_) => panic!("not paused"),
            }
        }
        let allowed = [5, 2, 1][moment];
        assert_eq!(got, allowed, "at {ms} ms: {got} granted");
        granted += got;
    }
    assert_eq!(granted, 8);

    // A lowered concurrency (2 of 8) holds for every process's claims.
    let mut items = Vec::new();
    for i in 0..6 {
        let u = user(&format!("r{i}"));
        stores[0].create_user(&u, &actor()).await.unwrap();
        items.push(PlanItem::Enqueue {
            user_id: u.id,
            app_id: a.id,
            action: Action::Create,
            desired: None,
            needs_approval: false,
            held: false,
            cause: None,
        });
    }
    stores[0].apply_plan(&PlanWrite { cursor: None, items }).await.unwrap();
    let first = stores[0].claim_operations_within(a.id, "p1", 10, LEASE, Some(2)).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(stores[1].claim_operations_within(a.id, "p2", 10, LEASE, Some(2)).await.unwrap().is_empty());
    assert_eq!(stores[2].claim_operations_within(a.id, "p3", 10, LEASE, Some(3)).await.unwrap().len(), 1);
    assert_eq!(stores[1].claim_operations(a.id, "p2", 10, LEASE).await.unwrap().len(), 3, "up to max_concurrency");
}
