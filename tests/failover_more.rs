//! Failover as sessions see it, on a real primary + 2 standbys with pgvigil in-process:
//! a graceful stop of the primary under a write load, a crashed standby under a read
//! load, a paused primary that comes back (and a write that was stuck on it), and
//! sessions on a primary that is killed.
//!
//! The tests run one at a time (`serial`): each builds its own cluster, and the failover
//! events pgvigil logs (`failover_started`, `failover_promoted`, `failover_finished`, with
//! `elapsed_ms`) are captured for the running test, checked for their order and printed.

mod common;
#[path = "common/capture.rs"]
mod capture;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capture::{events, logged, serial, Logged};
use common::*;

// ---- captured events ------------------------------------------------------------------

/// Checks that exactly one failover ran, from `old` to `new`, in order, and prints its
/// timings, measured from `fault` (when the fault was injected) and as pgvigil logged them.
fn one_failover(test: &str, fault: Instant, old: &str, new: &str) {
    let all = events();
    let failover: Vec<&Logged> = all.iter().filter(|e| e.event.starts_with("failover_") || e.event.starts_with("standby_")).collect();
    let names: Vec<&str> = failover.iter().map(|e| e.event.as_str()).collect();
    let expected = ["failover_started", "failover_candidate", "failover_promoted", "standby_follows", "failover_finished"];
    assert_eq!(names, expected, "{failover:#?}");
    assert_eq!(failover[0].node, old, "failover_started names the old primary");
    assert_eq!(failover[2].node, new, "failover_promoted names the new primary");
    let line: Vec<String> = failover
        .iter()
        .map(|e| {
            let ms = e.elapsed_ms.map_or(String::new(), |m| format!(" elapsed_ms={m}"));
            let promoted = e.promoted_ms.map_or(String::new(), |m| format!(" promoted_ms={m}"));
            format!("{} node={}{ms}{promoted} (fault+{} ms)", e.event, e.node, e.at.duration_since(fault).as_millis())
        })
        .collect();
    eprintln!("TIMINGS {test}: {}", line.join("; "));
}

// ---- helpers ----------------------------------------------------------------------------

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn primary_of(env: &Env) -> Option<usize> {
    env.handle().shared().view.borrow().primary()
}

fn fenced(env: &Env, i: usize) -> bool {
    env.handle().shared().view.borrow().nodes[i].fenced
}

/// Waits until a primary other than node `old` is routed to.
async fn new_primary(env: &Env, old: usize) -> usize {
    let found = eventually(Duration::from_secs(30), || async { primary_of(env).is_some_and(|p| p != old) }).await;
    assert!(found, "a standby was promoted: {:?}", env.handle().shared().failover.status());
    primary_of(env).expect("a primary")
}

/// Waits until pgvigil logged the end of the failover.
async fn failover_finished() {
    let done = eventually(Duration::from_secs(30), || async { !logged("failover_finished").is_empty() }).await;
    assert!(done, "failover finished: {:#?}", events());
}


/// `SQLSTATE message` of an error.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => format!("(no SQLSTATE) {e}"),
    }
}

/// The ids in `w` on node `i`.
async fn ids_on(env: &Env, i: usize) -> BTreeSet<i64> {
    let rows = env.direct(i).await.query("SELECT id FROM w", &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Runs `sql` (simple protocol) and returns the port in the first column of its last row.
async fn try_port(c: &tokio_postgres::Client, sql: &str) -> Result<i32, String> {
    let r = rows(c, sql).await.map_err(|e| describe(&e))?;
    let row = r.last().ok_or_else(|| format!("{sql}: no rows"))?;
    row[0].parse().map_err(|_| format!("{sql}: not a port: {row:?}"))
}

async fn setup_table(env: &Env) {
    env.direct(0).await.batch_execute("CREATE TABLE w (id bigint PRIMARY KEY)").await.unwrap();
    env.wait_replicated().await;
}

// ---- 1. graceful stop of the primary ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_of_the_primary_under_write_load_moves_writes_and_idle_sessions_to_a_promoted_standby() {
    let _serial = serial().await;
    let mut env = Env::start(Options { standbys: 2, ..Options::default() }).await;
    setup_table(&env).await;
    // Sessions that wrote and read once, then stay idle through the failover.
    let mut idle = Vec::new();
    for k in 0..3i64 {
        let c = env.client().await;
        c.execute("INSERT INTO w (id) VALUES ($1)", &[&(900_000_000 + k)]).await.unwrap();
        c.query_one("SELECT count(*) FROM w", &[]).await.unwrap();
        idle.push(c);
    }
    let load = WriteLoad::start(&env, 4).await;
    assert!(eventually(Duration::from_secs(10), || async { load.acked() >= 50 }).await, "writes flow before the stop");

    let fault = Instant::now();
    block(|| env.cluster.stop(0)).unwrap();
    let at_stop = load.acked();
    let resumed = eventually(Duration::from_secs(30), || async { load.acked() >= at_stop + 50 }).await;
    let errors = load.errors();
    let (acked, _) = load.finish().await;
    assert!(resumed, "writes resumed after the stop ({} acknowledged, errors: {errors:?})", acked.len());
    eprintln!("graceful stop: {} writes acknowledged, {} failed: {errors:?}", acked.len(), errors.len());

    let new = primary_of(&env).expect("a new primary");
    assert_ne!(new, 0);
    // The monitor may show the promoted node as primary a moment before failover's own
    // view change (which fences the old one) lands.
    assert!(eventually(Duration::from_secs(10), || async { fenced(&env, 0) }).await, "the old primary is fenced");
    let other = 3 - new;
    assert!(env.streams_from(other, new).await, "the other standby streams from the new primary");
    failover_finished().await;
    one_failover("graceful_stop", fault, &env.cluster.node(0).name, &env.cluster.node(new).name);

    // A fast shutdown sends all WAL to the standbys before it ends: nothing acknowledged
    // is lost.
    let stored = ids_on(&env, new).await;
    let lost: Vec<i64> = acked.difference(&stored).copied().collect();
    assert!(lost.is_empty(), "{} acknowledged ids missing on the new primary, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);

    // The idle sessions write on the new primary, on the connection they had.
    for (k, c) in idle.iter().enumerate() {
        let id = 910_000_000 + k as i64;
        let row = c.query_one("INSERT INTO w (id) VALUES ($1) RETURNING inet_server_port()", &[&id]).await;
        let port: i32 = row.unwrap_or_else(|e| panic!("idle session {k}: {}", describe(&e))).get(0);
        assert_eq!(port, env.port(new), "idle session {k} writes on the new primary");
    }
}

// ---- 2. kill -9 of a standby under a read load ----------------------------------------------

/// One statement of a reader: when it ran and which node answered, or the error.
struct Stmt {
    start: Instant,
    end: Instant,
    result: Result<i32, String>,
    /// A 50 ms statement.
    slow: bool,
}

/// Read-only sessions outside transactions: idle ones and those on the other standby
/// see no error; a busy one on the killed standby loses at most the statement that ran
/// during the kill (pgvigil moves a read to another node when it cannot open a
/// connection, not when the connection dies under the statement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_standby_under_read_load_costs_read_only_sessions_at_most_the_statement_in_flight() {
    let _serial = serial().await;
    // pg_sleep is volatile: declared read-only, so the slow statements are reads.
    let routing = "[routing]\nread_only_functions = [\"pg_sleep\"]\n".to_string();
    let mut env = Env::start(Options { standbys: 2, extra: routing, ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    let (killed, survivor) = (1, 2);

    // Busy readers, outside transactions, on standbys only. On each standby, every
    // other reader runs statements that last 50 ms (so some are surely in flight at the
    // kill), the others quick ones.
    let stop = Arc::new(AtomicBool::new(false));
    let mut logs: Vec<Arc<Mutex<Vec<Stmt>>>> = Vec::new();
    let mut tasks = Vec::new();
    let mut per_node: BTreeMap<i32, usize> = BTreeMap::new();
    for _ in 0..6 {
        let c = env.client().await;
        c.simple_query("SET pgvigil.route = 'standby'").await.unwrap();
        let port = try_port(&c, "SELECT inet_server_port()").await.unwrap();
        let on_node = per_node.entry(port).or_default();
        *on_node += 1;
        let slow = *on_node % 2 == 0;
        let sql = if slow { "SELECT inet_server_port() FROM pg_sleep(0.05)" } else { "SELECT inet_server_port()" };
        let log = Arc::new(Mutex::new(Vec::new()));
        logs.push(log.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let result = try_port(&c, sql).await;
                log.lock().unwrap().push(Stmt { start, end: Instant::now(), result, slow });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Idle readers: sessions that read from the standby to be killed, then wait.
    let mut idle = Vec::new();
    for _ in 0..20 {
        if idle.len() == 2 {
            break;
        }
        let c = env.client().await;
        c.simple_query("SET pgvigil.route = 'standby'").await.unwrap();
        if try_port(&c, "SELECT inet_server_port()").await == Ok(env.port(killed)) {
            idle.push(c);
        }
    }
    assert_eq!(idle.len(), 2, "two sessions read from pg{killed}");
    let warmed = eventually(Duration::from_secs(10), || async { logs.iter().all(|l| l.lock().unwrap().iter().filter(|s| s.result.is_ok()).count() >= 5) }).await;
    assert!(warmed, "every reader ran");
    let last_port = |l: &Mutex<Vec<Stmt>>| l.lock().unwrap().last().and_then(|s| s.result.clone().ok());
    let on_killed: Vec<usize> = (0..logs.len()).filter(|&r| last_port(&logs[r]) == Some(env.port(killed))).collect();
    let slow_on_killed = on_killed.iter().filter(|&&r| logs[r].lock().unwrap()[0].slow).count();
    assert!(slow_on_killed > 0 && slow_on_killed < on_killed.len(), "quick and slow readers on pg{killed}: {per_node:?}");
    for (r, l) in logs.iter().enumerate() {
        assert!(l.lock().unwrap().iter().all(|s| s.result.as_ref().is_ok_and(|&p| p != env.port(0))), "reader {r} read only from standbys before the kill");
    }

    let kill_start = Instant::now();
    block(|| env.cluster.kill9(killed)).unwrap();
    let kill_done = Instant::now();
    let down = eventually(Duration::from_secs(20), || async { !env.handle().shared().view.borrow().nodes[killed].up }).await;
    assert!(down, "the monitor marks pg{killed} down");
    let down_at = Instant::now();
    let settled = eventually(Duration::from_secs(30), || async {
        logs.iter().all(|l| l.lock().unwrap().iter().filter(|s| s.start > down_at).count() >= 20)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(settled, "the readers went on after pg{killed} was marked down");

    // The idle readers read on, without an error.
    for (k, c) in idle.iter().enumerate() {
        for n in 0..20 {
            let r = try_port(c, "SELECT inet_server_port()").await;
            assert_eq!(r, Ok(env.port(survivor)), "idle reader {k}, statement {n} after the kill");
        }
    }

    // The busy readers: at most one error each, the connection failure (08006, or the
    // server's own 57P01 demoted to an ERROR), on a statement that ran while the standby
    // was being killed or on the first one sent after; everything later succeeds on the
    // survivor. The kill lasts from SIGKILL to the exit of the last orphaned backend.
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut total_errors = 0;
    for (r, log) in logs.iter().enumerate() {
        let log = log.lock().unwrap();
        let during = |s: &Stmt| s.start < kill_done && s.end > kill_start;
        let first_after = log.iter().position(|s| s.start >= kill_done).expect("statements after the kill");
        let exposed = |i: usize| during(&log[i]) || i == first_after;
        let errors: Vec<(usize, &String)> = log.iter().enumerate().filter_map(|(i, s)| s.result.as_ref().err().map(|e| (i, e))).collect();
        total_errors += errors.len();
        let when = |i: usize| if during(&log[i]) { "during the kill" } else if i == first_after { "first after the kill" } else { "later" };
        report.push(format!(
            "reader {r} ({}, read from pg{killed}: {}): {} statements, {} during the kill, errors: {:?}",
            if log[0].slow { "50 ms" } else { "quick" },
            on_killed.contains(&r),
            log.len(),
            log.iter().filter(|s| during(s)).count(),
            errors.iter().map(|(i, e)| format!("{} {e}", when(*i))).collect::<Vec<_>>()
        ));
        if errors.len() > 1 {
            failures.push(format!("reader {r}: {} errors", errors.len()));
        }
        for (i, e) in &errors {
            if !on_killed.contains(&r) {
                failures.push(format!("reader {r} did not read from pg{killed} but got {e}"));
            }
            if !exposed(*i) {
                failures.push(format!("reader {r}: error on a statement {}: {e}", when(*i)));
            }
            if !(e.starts_with("08006") || e.starts_with("57P01")) {
                failures.push(format!("reader {r}: unexpected error {e}"));
            }
        }
        for s in &log[first_after..] {
            if let Ok(port) = s.result {
                if port != env.port(survivor) {
                    failures.push(format!("reader {r} read from port {port} after the kill, not the surviving standby"));
                }
            }
        }
    }
    eprintln!("READ LOAD: {total_errors} errors in all\n{}", report.join("\n"));
    assert!(failures.is_empty(), "{failures:#?}");

    // No failover: the primary stays.
    assert_eq!(primary_of(&env), Some(0));
    assert_eq!(env.handle().shared().failover.promotions.load(Ordering::Relaxed), 0);
    assert!(events().iter().all(|e| !e.event.starts_with("failover_")), "{:#?}", events());
    assert!(block(|| env.cluster.is_in_recovery(survivor)).unwrap(), "pg{survivor} is still a standby");
}

// ---- 3. a paused primary --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_is_replaced_and_gets_no_statement_once_it_resumes() {
    let _serial = serial().await;
    let mut env = Env::start(Options { standbys: 2, health_check: "timeout = \"500ms\"".into(), ..Options::default() }).await;
    setup_table(&env).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    // Sessions that used the primary before the pause; one reads from it by setting.
    let mut sessions = Vec::new();
    for k in 0..3i64 {
        let c = env.client().await;
        c.execute("INSERT INTO w (id) VALUES ($1)", &[&(800_000_000 + k)]).await.unwrap();
        c.query_one("SELECT count(*) FROM w", &[]).await.unwrap();
        sessions.push(c);
    }
    sessions[0].simple_query("SET pgvigil.route = 'primary'").await.unwrap();
    assert_eq!(try_port(&sessions[0], "SELECT inet_server_port()").await, Ok(env.port(0)));

    let fault = Instant::now();
    block(|| env.cluster.pause(0)).unwrap();
    let new = new_primary(&env, 0).await;
    assert!(eventually(Duration::from_secs(10), || async { fenced(&env, 0) }).await, "the paused primary is fenced");
    failover_finished().await;
    one_failover("paused_primary", fault, &env.cluster.node(0).name, &env.cluster.node(new).name);
    assert!(env.streams_from(3 - new, new).await, "the other standby streams from the new primary");

    block(|| env.cluster.resume(0)).unwrap();
    let back = eventually(Duration::from_secs(20), || async { env.handle().shared().view.borrow().nodes[0].up }).await;
    assert!(back, "the monitor sees the old primary again");
    assert!(!block(|| env.cluster.is_in_recovery(0)).unwrap(), "it says it is a primary");
    assert!(fenced(&env, 0), "it stays fenced");
    assert_eq!(primary_of(&env), Some(new));

    // Old and new sessions, reads and writes, in and out of transactions: none reaches it.
    for _ in 0..3 {
        sessions.push(env.client().await);
    }
    let old_port = env.port(0);
    let mut seen: BTreeMap<i32, usize> = BTreeMap::new();
    let mut id = 810_000_000i64;
    for round in 0..10 {
        for (k, c) in sessions.iter().enumerate() {
            id += 2;
            // (statement, whether it must run on the new primary)
            let script = [
                ("SELECT inet_server_port()".to_string(), false),
                ("/*NO LOAD BALANCE*/ SELECT inet_server_port()".to_string(), true),
                (format!("INSERT INTO w (id) VALUES ({id}) RETURNING inet_server_port()"), true),
                ("BEGIN".to_string(), false),
                ("SELECT inet_server_port()".to_string(), false),
                (format!("INSERT INTO w (id) VALUES ({}) RETURNING inet_server_port()", id + 1), true),
                ("COMMIT".to_string(), false),
            ];
            for (sql, on_primary) in &script {
                let r = rows(c, sql).await.unwrap_or_else(|e| panic!("session {k}, round {round}: {sql}: {}", describe(&e)));
                let Some(port) = r.last().map(|row| row[0].parse::<i32>().expect("a port")) else { continue };
                assert_ne!(port, old_port, "session {k}, round {round}: {sql} ran on the fenced node");
                if *on_primary {
                    assert_eq!(port, env.port(new), "session {k}, round {round}: {sql} runs on the new primary");
                }
                *seen.entry(port).or_default() += 1;
            }
        }
    }
    eprintln!("statements by port after the resume: {seen:?} (fenced pg0 is {old_port}, new primary is {})", env.port(new));
    let on_old = ids_on(&env, 0).await;
    assert!(on_old.iter().all(|&i| i < 810_000_000), "no write reached the fenced node: {:?}", on_old.iter().filter(|&&i| i >= 810_000_000).collect::<Vec<_>>());

    // SHOW POOL_NODES: the fenced node is not routed to, so its status is down.
    let nodes = pool_nodes(&sessions[0]).await;
    let shown: Vec<String> = nodes.iter().map(|n| format!("{} {} status={} pg_status={} role={} pg_role={}", n["node_id"], n["port"], n["status"], n["pg_status"], n["role"], n["pg_role"])).collect();
    eprintln!("SHOW POOL_NODES after the resume:\n{}", shown.join("\n"));
    let routed_primaries: Vec<&str> = nodes.iter().filter(|n| n["status"] == "up" && n["role"] == "primary").map(|n| n["node_id"].as_str()).collect();
    assert_eq!(routed_primaries, [new.to_string()], "one primary with status up: {shown:#?}");
    assert_eq!(nodes[0]["status"], "down", "the fenced node: {shown:#?}");
    assert_eq!(nodes[0]["pg_status"], "up", "the fenced node answers its checks: {shown:#?}");
}

/// A write sent to the primary just after it froze waits in its socket. Whatever
/// pgvigil answers, a write it acknowledges must be on the new primary, not on the
/// fenced node that ran it when it resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stuck_on_the_paused_primary_is_not_acknowledged_from_the_fenced_node() {
    let _serial = serial().await;
    let mut env = Env::start(Options { standbys: 2, health_check: "timeout = \"500ms\"".into(), ..Options::default() }).await;
    setup_table(&env).await;
    let c = env.client().await;
    c.execute("INSERT INTO w (id) VALUES (1)", &[]).await.unwrap();

    let fault = Instant::now();
    block(|| env.cluster.pause(0)).unwrap();
    let stuck = tokio::spawn(async move {
        let r = try_port(&c, "INSERT INTO w (id) VALUES (2) RETURNING inet_server_port()").await;
        (r, c)
    });
    let new = new_primary(&env, 0).await;
    failover_finished().await;
    one_failover("stuck_write", fault, &env.cluster.node(0).name, &env.cluster.node(new).name);
    eprintln!("STUCK WRITE answered before the resume: {}", stuck.is_finished());

    block(|| env.cluster.resume(0)).unwrap();
    let (answer, c) = tokio::time::timeout(Duration::from_secs(30), stuck).await.expect("the write is answered once pg0 resumes").unwrap();
    let on_old = ids_on(&env, 0).await.contains(&2);
    let on_new = ids_on(&env, new).await.contains(&2);
    eprintln!("STUCK WRITE: answer {answer:?}; row on fenced pg0: {on_old}; on new primary pg{new}: {on_new}");
    if answer.is_ok() {
        assert!(on_new, "pgvigil acknowledged a write (answer {answer:?}) that is not on the new primary (on the fenced node: {on_old})");
    }
    // The session goes on, on the new primary.
    assert_eq!(try_port(&c, "INSERT INTO w (id) VALUES (3) RETURNING inet_server_port()").await, Ok(env.port(new)));
}

// ---- 4. sessions on a killed primary ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_on_the_killed_primary_fails_then_its_session_and_idle_sessions_write_on_the_new_primary() {
    let _serial = serial().await;
    let mut env = Env::start(Options { standbys: 2, ..Options::default() }).await;
    setup_table(&env).await;
    let tx = env.client().await;
    tx.simple_query("BEGIN").await.unwrap();
    assert_eq!(try_port(&tx, "INSERT INTO w (id) VALUES (1) RETURNING inet_server_port()").await, Ok(env.port(0)));
    let idle = env.client().await;
    assert_eq!(try_port(&idle, "INSERT INTO w (id) VALUES (2) RETURNING inet_server_port()").await, Ok(env.port(0)));

    let fault = Instant::now();
    block(|| env.cluster.kill9(0)).unwrap();
    let new = new_primary(&env, 0).await;
    failover_finished().await;
    one_failover("kill9_tx", fault, &env.cluster.node(0).name, &env.cluster.node(new).name);

    // The open transaction's next statement fails with the cause; then only ROLLBACK.
    let e = tx.simple_query("INSERT INTO w (id) VALUES (3)").await.expect_err("the transaction cannot go on");
    let code = sqlstate(&e);
    eprintln!("TRANSACTION on the killed primary, next statement: {}", describe(&e));
    assert!(code == "08006" || code == "57P01", "the transaction's next statement says why it failed: {}", describe(&e));
    tx.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(try_port(&tx, "INSERT INTO w (id) VALUES (4) RETURNING inet_server_port()").await, Ok(env.port(new)));
    // The idle session's next write goes to the new primary.
    assert_eq!(try_port(&idle, "INSERT INTO w (id) VALUES (5) RETURNING inet_server_port()").await, Ok(env.port(new)));
    let ids = ids_on(&env, new).await;
    assert!(ids.contains(&4) && ids.contains(&5) && !ids.contains(&1) && !ids.contains(&3), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_right_after_the_primary_is_killed_waits_for_the_new_primary() {
    let _serial = serial().await;
    let mut env = Env::start(Options { standbys: 2, ..Options::default() }).await;
    setup_table(&env).await;
    // One session used the primary (its connection there dies), one only read.
    let used = env.client().await;
    assert_eq!(try_port(&used, "INSERT INTO w (id) VALUES (1) RETURNING inet_server_port()").await, Ok(env.port(0)));
    let fresh = env.client().await;
    try_port(&fresh, "SELECT inet_server_port()").await.unwrap();
    // And one that speaks the extended protocol (Parse/Bind/Execute), as most drivers do.
    let ext = env.client().await;
    let port: i32 = ext.query_one("INSERT INTO w (id) VALUES ($1) RETURNING inet_server_port()", &[&10i64]).await.unwrap().get(0);
    assert_eq!(port, env.port(0));

    let fault = Instant::now();
    block(|| env.cluster.kill9(0)).unwrap();
    let extended = tokio::spawn(async move {
        ext.query_one("INSERT INTO w (id) VALUES ($1) RETURNING inet_server_port()", &[&11i64])
            .await
            .map(|r| r.get::<_, i32>(0))
            .map_err(|e| describe(&e))
    });
    let writes: Vec<_> = [(used, 2i64), (fresh, 3)]
        .into_iter()
        .map(|(c, id)| {
            tokio::spawn(async move {
                let sent = Instant::now();
                let r = try_port(&c, &format!("INSERT INTO w (id) VALUES ({id}) RETURNING inet_server_port()")).await;
                (r, sent.elapsed())
            })
        })
        .collect();
    let new = new_primary(&env, 0).await;
    failover_finished().await;
    one_failover("kill9_held_write", fault, &env.cluster.node(0).name, &env.cluster.node(new).name);
    let mut answers = Vec::new();
    for w in writes {
        answers.push(w.await.unwrap());
    }
    eprintln!("WRITES sent right after the kill: {answers:?} (new primary port {})", env.port(new));
    for (who, (r, _)) in ["session that used the primary", "session that did not"].iter().zip(&answers) {
        assert_eq!(r, &Ok(env.port(new)), "{who}: the write waits for the new primary and succeeds there");
    }
    assert_eq!(extended.await.unwrap(), Ok(env.port(new)), "the extended-protocol write waits too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_of_a_transaction_on_the_dead_primary_never_runs_on_the_new_one() {
    let _serial = serial().await;
    let mut env = Env::start(Options { standbys: 2, ..Options::default() }).await;
    setup_table(&env).await;
    let c = env.client().await;
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO w (id) VALUES (7001)").await.unwrap();
    block(|| env.cluster.kill9(0)).unwrap();
    // Sent at once: it may wait for the failover, but must not run in a new transaction
    // on the new primary.
    let r = c.batch_execute("INSERT INTO w (id) VALUES (7002)").await;
    let e = r.expect_err("the transaction is gone with its primary");
    let code = e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default();
    assert!(["08006", "57P01", "25P02"].contains(&code.as_str()), "{e:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    let new = new_primary(&env, 0).await;
    let rows = env.direct(new).await.query("SELECT id FROM w WHERE id IN (7001, 7002)", &[]).await.unwrap();
    assert!(rows.is_empty(), "nothing of that transaction was committed anywhere");
    // The session goes on.
    c.batch_execute("INSERT INTO w (id) VALUES (7003)").await.unwrap();
}
