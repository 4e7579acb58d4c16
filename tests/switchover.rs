//! Operator operations on a real primary + 2 standbys: switchover under load, detach and
//! attach, promote while the primary is down.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pgvigil::failover::Op;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn primary_of(env: &Env) -> Option<usize> {
    env.handle().shared().view.borrow().primary()
}

async fn op(env: &Env, op: Op) -> Result<String, String> {
    env.handle().shared().failover.operate(op).await
}

/// `SQLSTATE message` of an error.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => format!("(no SQLSTATE) {e}"),
    }
}


/// A client loop through pgvigil: each round runs `round(client, n)`; records when each
/// success happened and every error.
struct Loop {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, Instant)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Loop {
    fn new() -> Self {
        Self { stop: Arc::new(AtomicBool::new(false)), acked: Arc::default(), errors: Arc::default(), tasks: Vec::new() }
    }

    /// Autocommit inserts of unique ids every 10 ms (`kind` "insert"), explicit
    /// two-insert transactions with a pause inside ("tx"), or reads outside transactions
    /// ("read").
    async fn add(&mut self, env: &Env, session: i64, kind: &'static str) {
        let client = env.client().await;
        let (stop, acked, errors) = (self.stop.clone(), self.acked.clone(), self.errors.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let id = session * 1_000_000 + n;
                n += 2;
                let r = match kind {
                    "insert" => client.execute("INSERT INTO w (id) VALUES ($1)", &[&id]).await.map(|_| vec![id]),
                    "tx" => {
                        let sql = format!("BEGIN; INSERT INTO w (id) VALUES ({id}); SELECT pg_sleep(0.03); INSERT INTO w (id) VALUES ({}); COMMIT", id + 1);
                        client.batch_execute(&sql).await.map(|_| vec![id, id + 1])
                    }
                    _ => client.query_one("SELECT count(*) FROM pg_class", &[]).await.map(|_| Vec::new()),
                };
                match r {
                    Ok(ids) => {
                        let now = Instant::now();
                        let mut a = acked.lock().unwrap();
                        a.extend(ids.into_iter().map(|i| (i, now)));
                        if kind == "read" {
                            a.push((-1, now));
                        }
                    }
                    Err(e) => errors.lock().unwrap().push(format!("{kind}: {}", describe(&e))),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> (Vec<(i64, Instant)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (acked, errors)
    }
}

/// The longest time between two acknowledged writes in `[from, to]`.
fn longest_gap(acked: &[(i64, Instant)], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = acked.iter().filter(|(id, t)| *id >= 0 && *t >= from && *t <= to).map(|(_, t)| *t).collect();
    times.sort();
    let mut prev = from;
    let mut gap = Duration::ZERO;
    for t in times.into_iter().chain(std::iter::once(to)) {
        gap = gap.max(t.duration_since(prev));
        prev = t;
    }
    gap
}

async fn setup_table(env: &Env) {
    env.direct(0).await.batch_execute("CREATE TABLE w (id bigint PRIMARY KEY)").await.unwrap();
    env.wait_replicated().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_loses_no_acknowledged_write_and_rejoins_the_old_primary() {
    let _serial = SERIAL.lock().await;
    let state = tempfile::tempdir().unwrap();
    let extra = format!("[failover]\nstate_dir = {:?}\n", state.path().display().to_string());
    let env = Env::start(Options { standbys: 2, data_dirs: true, extra: extra.clone(), ..Options::default() }).await;
    setup_table(&env).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    let mut load = Loop::new();
    for s in 0..4 {
        load.add(&env, s, "insert").await;
    }
    load.add(&env, 10, "tx").await;
    load.add(&env, 11, "tx").await;
    let mut reads = Loop::new();
    for s in 0..3 {
        reads.add(&env, 20 + s, "read").await;
    }
    assert!(eventually(Duration::from_secs(10), || async { load.acked() >= 100 }).await, "writes flow before the switchover");

    let asked = Instant::now();
    let outcome = op(&env, Op::Switchover(Some("pg1".into()))).await;
    let done = Instant::now();
    eprintln!("switchover outcome: {outcome:?} ({} ms)", done.duration_since(asked).as_millis());
    let outcome = outcome.expect("switchover succeeds");
    assert_eq!(primary_of(&env), Some(1), "pg1 is the primary");
    let at = load.acked();
    assert!(eventually(Duration::from_secs(10), || async { load.acked() >= at + 100 }).await, "writes go on after the switchover");
    let (acked, errors) = load.finish().await;
    let (_, read_errors) = reads.finish().await;
    let gap = longest_gap(&acked, asked, done);
    eprintln!("SWITCHOVER write pause (longest gap between acknowledged writes during the operation): {} ms", gap.as_millis());

    assert!(errors.is_empty(), "no writer saw an error: {errors:?}");
    assert!(read_errors.is_empty(), "no reader saw an error: {read_errors:?}");
    let ids: BTreeSet<i64> = acked.iter().map(|(id, _)| *id).collect();
    let rows = env.direct(1).await.query("SELECT id FROM w", &[]).await.unwrap();
    let stored: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<_> = ids.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged ids missing on the new primary, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);

    // The other standby follows the new primary; the old primary was rewound and streams
    // from it, and takes reads again.
    assert!(env.streams_from(2, 1).await, "pg2 streams from pg1");
    assert!(outcome.contains("pg0 rejoined"), "{outcome}");
    assert!(env.streams_from(0, 1).await, "pg0 streams from pg1");
    let view = env.handle().shared().view.borrow().clone();
    assert!(!view.nodes[0].fenced && !view.writes_paused, "{view:?}");
    assert!(block(|| env.cluster.is_in_recovery(0)).unwrap(), "pg0 is a standby");
    let c = env.client().await;
    // A new session each time: a session's read node is chosen at its first read.
    let reached = eventually(Duration::from_secs(20), || async { port_of(&env.client().await, "SELECT inet_server_port()").await == env.port(0) }).await;
    let view = env.handle().shared().view.borrow().clone();
    assert!(reached, "reads reach the rejoined pg0 again: {:?}; {:?}", view.nodes[0], view.nodes[1].wal);
    // A second switchover, back to pg0, without naming it: pg0 or pg2, whichever is best.
    let back = op(&env, Op::Switchover(None)).await.expect("second switchover");
    eprintln!("second switchover: {back}");
    let p = primary_of(&env).expect("a primary");
    assert_ne!(p, 1);
    let port = port_of(&c, "/*NO LOAD BALANCE*/ SELECT inet_server_port()").await;
    assert_eq!(port, env.port(p));

    // The node state is kept: a restarted pgvigil knows who is primary.
    let text = std::fs::read_to_string(state.path().join("nodes")).unwrap();
    assert!(text.contains(&format!("pg{p} up primary")), "{text}");
}

/// A switchover whose promotion fails after the old primary was stopped (here
/// `promote_command` fails) is rolled back: the candidate is still a standby, so the old
/// primary is started again and unfenced, and the writes held meanwhile go to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_whose_promotion_fails_is_rolled_back() {
    let _serial = SERIAL.lock().await;
    let extra = "[failover]\npromote_command = \"exit 3\"\n".to_string();
    let env = Env::start(Options { standbys: 1, data_dirs: true, extra, ..Options::default() }).await;
    setup_table(&env).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    let mut load = Loop::new();
    for s in 0..3 {
        load.add(&env, s, "insert").await;
    }
    assert!(eventually(Duration::from_secs(10), || async { load.acked() >= 50 }).await, "writes flow before the switchover");

    let e = op(&env, Op::Switchover(Some("pg1".into()))).await.expect_err("the promotion fails");
    eprintln!("{e}");
    assert!(e.contains("promotion failed after pg0 was fenced"), "{e}");
    assert!(e.contains("rolled back: pg1 is still a standby and pg0 is the primary again"), "{e}");
    assert_eq!(primary_of(&env), Some(0));
    let view = env.handle().shared().view.borrow().clone();
    assert!(!view.nodes[0].fenced && !view.writes_paused, "{view:?}");
    assert!(block(|| env.cluster.is_in_recovery(1)).unwrap(), "pg1 is still a standby");
    let at = load.acked();
    assert!(eventually(Duration::from_secs(10), || async { load.acked() >= at + 50 }).await, "writes go on, on pg0");
    let (acked, errors) = load.finish().await;
    assert!(errors.is_empty(), "no writer saw an error: {errors:?}");
    let stored: BTreeSet<i64> = env.direct(0).await.query("SELECT id FROM w", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let lost: Vec<_> = acked.iter().map(|(id, _)| *id).filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged ids missing on pg0, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    assert!(env.streams_from(1, 0).await, "pg1 streams from pg0 again");
    let events = env.handle().shared().monitor.events.since(0, 1000);
    assert!(events.iter().any(|e| e.event == "switchover_rolled_back" && e.node == "pg0"), "the event is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_is_terminated_after_the_drain_timeout_and_its_session_goes_on() {
    let _serial = SERIAL.lock().await;
    let extra = "[failover]\nswitchover_drain_timeout = \"300ms\"\n".to_string();
    let env = Env::start(Options { standbys: 1, data_dirs: true, extra, ..Options::default() }).await;
    setup_table(&env).await;
    let open = env.client().await;
    open.batch_execute("BEGIN; INSERT INTO w VALUES (1)").await.unwrap();
    let writer = env.client().await;
    writer.execute("INSERT INTO w VALUES (2)", &[]).await.unwrap();

    let outcome = op(&env, Op::Switchover(None)).await.expect("switchover");
    eprintln!("{outcome}");
    assert_eq!(primary_of(&env), Some(1));
    // The open transaction was terminated: its next statement fails, ROLLBACK works,
    // and the session writes on the new primary.
    let e = open.batch_execute("INSERT INTO w VALUES (3)").await.expect_err("the transaction lost its node");
    let code = sqlstate(&e);
    assert!(["57P01", "08006", "25P02"].contains(&code.as_str()), "{}", describe(&e));
    open.batch_execute("ROLLBACK").await.unwrap();
    open.execute("INSERT INTO w VALUES (4)", &[]).await.unwrap();
    writer.execute("INSERT INTO w VALUES (5)", &[]).await.unwrap();
    let ids: BTreeSet<i64> = env.direct(1).await.query("SELECT id FROM w", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, BTreeSet::from([2, 4, 5]), "the open transaction's row is not there; every acknowledged one is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_and_attach_a_standby_and_the_refusals() {
    let _serial = SERIAL.lock().await;
    let state = tempfile::tempdir().unwrap();
    let extra = format!("[failover]\nstate_dir = {:?}\n", state.path().display().to_string());
    let env = Env::start(Options { standbys: 2, extra: extra.clone(), ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    let c = env.client().await;

    let e = op(&env, Op::Detach("pg0".into())).await.unwrap_err();
    assert!(e.contains("pg0 is the primary"), "{e}");
    let e = op(&env, Op::Detach("nope".into())).await.unwrap_err();
    assert!(e.contains("no backend named \"nope\" (backends: pg0, pg1, pg2)"), "{e}");
    assert_eq!(op(&env, Op::Attach("pg1".into())).await.unwrap(), "pg1 is already attached");

    op(&env, Op::Detach("pg1".into())).await.expect("detach pg1");
    for _ in 0..30 {
        assert_ne!(port_of(&env.client().await, "SELECT inet_server_port()").await, env.port(1), "no read of a new session reaches the detached pg1");
    }
    let nodes = pool_nodes(&c).await;
    assert_eq!(nodes[1]["status"], "down", "{nodes:?}");
    assert_eq!(nodes[1]["pg_status"], "up", "{nodes:?}");
    // A restarted pgvigil keeps it detached.
    let other = env.another_proxy(Options { extra, ..Options::default() }).await;
    assert!(other.handle().shared().view.borrow().nodes[1].detached);
    drop(other);
    // A detached standby that no longer streams from the primary cannot be attached.
    let standby = env.direct(1).await;
    let conninfo: String = standby.query_one("SHOW primary_conninfo", &[]).await.unwrap().get(0);
    standby.batch_execute("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'").await.unwrap();
    standby.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let broken = eventually(Duration::from_secs(20), || async {
        env.handle().shared().view.borrow().nodes[1].repl.upstream.as_ref().is_none_or(|u| u.port != env.cluster.node(0).port)
    })
    .await;
    assert!(broken, "the monitor sees pg1 not streaming");
    let e = op(&env, Op::Attach("pg1".into())).await.unwrap_err();
    assert!(e.contains("pg1 does not stream from the primary pg0"), "{e}");
    standby.batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = '{}'", conninfo.replace('\'', "''"))).await.unwrap();
    standby.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let attached = eventually(Duration::from_secs(30), || async { op(&env, Op::Attach("pg1".into())).await.is_ok() }).await;
    assert!(attached, "pg1 attaches once it streams again");
    let reached = eventually(Duration::from_secs(20), || async { port_of(&env.client().await, "SELECT inet_server_port()").await == env.port(1) }).await;
    assert!(reached, "reads reach pg1 again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_while_the_primary_is_down_and_failover_is_manual() {
    let _serial = SERIAL.lock().await;
    let extra = "[failover]\nautomatic = false\n".to_string();
    let mut env = Env::start(Options { standbys: 2, extra, ..Options::default() }).await;
    setup_table(&env).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    block(|| env.cluster.kill9(0)).unwrap();
    let manual = eventually(Duration::from_secs(20), || async {
        env.handle().shared().failover.status() == pgvigil::failover::Status::Manual
    })
    .await;
    assert!(manual, "{:?}", env.handle().shared().failover.status());
    assert_eq!(primary_of(&env), None);
    let e = op(&env, Op::Switchover(None)).await.unwrap_err();
    assert!(e.contains("no primary"), "{e}");

    let done = op(&env, Op::Promote("pg2".into())).await.expect("promote pg2");
    assert!(done.contains("pg2 promoted; pg0 fenced"), "{done}");
    assert_eq!(primary_of(&env), Some(2));
    let c = env.client().await;
    c.execute("INSERT INTO w VALUES (1)", &[]).await.unwrap();
    assert_eq!(port_of(&c, "/*NO LOAD BALANCE*/ SELECT inet_server_port()").await, env.port(2));
    assert!(env.streams_from(1, 2).await, "pg1 follows pg2");
    assert!(env.handle().shared().view.borrow().nodes[0].fenced);
}
