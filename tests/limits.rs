//! Limits on clients: idle timeouts outside and inside transactions, and slow clients in
//! their startup that must not crowd out real ones.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn login(env: &Env) -> Raw {
    Raw::connect(env.addr).await.login(SUPERUSER, SUPERPASS).await.expect("login").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_end_with_postgresqls_errors_and_busy_ones_do_not() {
    let proxy = "idle_client_timeout = \"400ms\"\nidle_in_transaction_timeout = \"400ms\"".to_string();
    let env = Env::start(Options { proxy, ..Options::default() }).await;
    env.direct(0).await.batch_execute("CREATE TABLE t (id int)").await.unwrap();

    // Idle outside a transaction: FATAL 57P05, then the connection closes.
    let mut idle = login(&env).await;
    assert_eq!(first_column(&idle.simple_query("SELECT 1").await), ["1"]);
    let e = idle.expect_error().await;
    assert_eq!((e.code.as_str(), e.message.as_str()), ("57P05", "terminating connection due to idle-session timeout"));
    assert!(idle.expect_eof().await);

    // Idle inside a transaction: FATAL 25P03, and the transaction rolled back.
    let mut in_tx = login(&env).await;
    in_tx.simple_query("BEGIN; INSERT INTO t VALUES (1)").await;
    let e = in_tx.expect_error().await;
    assert_eq!((e.code.as_str(), e.message.as_str()), ("25P03", "terminating connection due to idle-in-transaction timeout"));
    assert!(in_tx.expect_eof().await);
    let n: i64 = env.direct(0).await.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the transaction was rolled back");
    let left: i64 = env
        .direct(0)
        .await
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no server connection stays in the transaction");

    // A statement that runs longer than the timeout is not idleness.
    let mut busy = login(&env).await;
    let answer = busy.simple_query("SELECT pg_sleep(1.2)::text").await;
    assert_eq!(first_column(&answer), [""], "the long statement finished: {answer:?}");
    let mut busy_tx = login(&env).await;
    let answer = busy_tx.simple_query("BEGIN; SELECT pg_sleep(1.2)::text; INSERT INTO t VALUES (2); COMMIT").await;
    assert!(answer.iter().all(|m| m.tag != b'E'), "the long transaction finished");
    let n: i64 = env.direct(0).await.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_in_transaction_timeout_leaves_idle_sessions_alone() {
    let proxy = "idle_in_transaction_timeout = \"300ms\"".to_string();
    let env = Env::start(Options { proxy, ..Options::default() }).await;
    let c = env.client().await;
    c.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    c.simple_query("SELECT 2").await.expect("an idle session outside a transaction goes on");
    c.batch_execute("BEGIN").await.unwrap();
    // Ended by pgvigil: its FATAL and the close reach the client's connection.
    assert!(eventually(Duration::from_secs(10), || async { c.is_closed() }).await, "the idle transaction was ended");
    let e = c.simple_query("SELECT 3").await.expect_err("the idle transaction was ended");
    assert!(e.is_closed() || sqlstate(&e) == "25P03", "{e}");
}

/// A startup packet sent one byte per second: the connection stays in its startup.
async fn slow_loris(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, cut: Arc<AtomicUsize>, timeout_error: Arc<AtomicUsize>) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return };
    let mut packet = BytesMut::new();
    pgvigil::protocol::startup::write_startup(&mut packet, &[("user".into(), SUPERUSER.into()), ("database".into(), "postgres".into())]);
    for b in packet.iter() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        // Whatever pgvigil says meanwhile (it should say nothing until the timeout).
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.contains("08P01") && text.contains("canceling authentication due to timeout") {
                    timeout_error.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
    cut.fetch_add(1, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_loris_connections_leave_real_clients_unaffected() {
    // max_clients far below the number of slow connections: they must not take places.
    let proxy = "max_clients = 50\nstartup_timeout = \"4s\"".to_string();
    let env = Env::start(Options { proxy, ..Options::default() }).await;

    // Baseline: connect, authenticate (SCRAM) and run 20 queries.
    let session = |env: &Env| {
        let config = env.pg_config(SUPERUSER, SUPERPASS);
        async move {
            let start = Instant::now();
            let c = connect(config).await?;
            for _ in 0..20 {
                c.simple_query("SELECT 1").await?;
            }
            Ok::<_, tokio_postgres::Error>(start.elapsed())
        }
    };
    let mut base = Vec::new();
    for _ in 0..10 {
        base.push(session(&env).await.expect("baseline session"));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (cut, timeout_error) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loris = Vec::new();
    for _ in 0..1000 {
        loris.push(tokio::spawn(slow_loris(env.addr, stop.clone(), cut.clone(), timeout_error.clone())));
    }
    let all_open = eventually(Duration::from_secs(20), || async { env.handle().shared().sessions.len() >= 1000 }).await;
    let open = env.handle().shared().sessions.len();
    assert!(all_open, "the slow connections are open: {open} sessions");
    let mut during = Vec::new();
    for _ in 0..10 {
        during.push(session(&env).await.expect("a real client is served while 1000 slow ones trickle"));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "measured: session (connect + SCRAM + 20 queries) median {:?} before, {:?} with 1000 slow-loris connections",
        median(&mut base),
        median(&mut during)
    );
    // At startup_timeout they are cut, with PostgreSQL's error.
    let all_cut = eventually(Duration::from_secs(15), || async { cut.load(Ordering::Relaxed) == 1000 }).await;
    assert!(all_cut, "every slow connection was closed: {}", cut.load(Ordering::Relaxed));
    assert_eq!(timeout_error.load(Ordering::Relaxed), 1000, "each got FATAL 08P01 canceling authentication due to timeout");
    stop.store(true, Ordering::Relaxed);
    for t in loris {
        let _ = t.await;
    }
    session(&env).await.expect("served after");
}
