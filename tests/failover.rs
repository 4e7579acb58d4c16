//! Automatic failover on a real primary + 2 standbys, under a write load through pgvigil.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

async fn primary_of(env: &Env) -> Option<usize> {
    env.handle().shared().view.borrow().primary()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_primary_promotes_the_synchronous_standby_and_loses_no_acknowledged_write() {
    failover_under_write_load(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_primary_under_write_load_fails_over_to_a_standby() {
    failover_under_write_load(false).await;
}

/// Kills the primary under a write load. With `synchronous`, pg1 is the primary's
/// synchronous standby: it must be the one promoted, and no acknowledged write may be
/// lost. Without, writes acknowledged after the failover must all be there.
async fn failover_under_write_load(synchronous: bool) {
    let state = tempfile::tempdir().unwrap();
    let failover = format!("[failover]\nstate_dir = {:?}\n", state.path().display().to_string());
    let mut env = Env::start(Options { standbys: 2, extra: failover.clone(), ..Options::default() }).await;
    let setup = env.direct(0).await;
    setup.batch_execute("CREATE TABLE w (id bigint PRIMARY KEY)").await.unwrap();
    if synchronous {
        setup.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (pg1)'").await.unwrap();
        setup.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        // The monitor sees pg1 as synchronous before the load starts.
        let sync_seen = eventually(Duration::from_secs(15), || async {
            let view = env.handle().shared().view.borrow().clone();
            view.nodes[0].repl.peers.iter().any(|p| p.application_name == "pg1" && p.sync_state == "sync")
        })
        .await;
        assert!(sync_seen, "pg1 is reported synchronous");
    }
    env.wait_replicated().await;

    let load = WriteLoad::start(&env, 4).await;
    assert!(eventually(Duration::from_secs(10), || async { load.acked() >= 50 }).await, "writes flow before the crash");
    tokio::task::block_in_place(|| env.cluster.kill9(0)).unwrap();
    let at_kill = load.acked();
    // Writes resume through pgvigil, on the promoted synchronous standby.
    let resumed = eventually(Duration::from_secs(30), || async { load.acked() >= at_kill + 50 }).await;
    let (acked, errors) = load.finish().await;
    assert!(resumed, "writes resumed after the primary's crash ({} acknowledged, {errors} errors)", acked.len());
    let new = primary_of(&env).await.expect("a new primary");
    assert_ne!(new, 0);
    if synchronous {
        assert_eq!(new, 1, "the synchronous standby pg1 was promoted");
    }
    let other = 3 - new;
    assert!(env.handle().shared().view.borrow().nodes[0].fenced, "the old primary is fenced");

    // Acknowledged ids are on the new primary: all of them with a synchronous standby.
    let new_primary = env.direct(new).await;
    let rows = new_primary.query("SELECT id FROM w", &[]).await.unwrap();
    let stored: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<_> = acked.difference(&stored).copied().collect();
    if synchronous {
        assert!(lost.is_empty(), "{} acknowledged ids missing, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    } else {
        eprintln!("asynchronous replication: {} of {} acknowledged ids were lost with the old primary", lost.len(), acked.len());
        assert!(lost.len() < acked.len() - at_kill, "writes after the failover are on the new primary");
    }

    // The other standby streams from the new primary.
    let follower = env.direct(other).await;
    let p1 = i32::from(env.cluster.node(new).port);
    let follows = eventually(Duration::from_secs(15), || async {
        match follower.query_opt("SELECT sender_port, status FROM pg_stat_wal_receiver", &[]).await {
            Ok(Some(r)) => r.get::<_, Option<i32>>(0) == Some(p1) && r.get::<_, Option<String>>(1).as_deref() == Some("streaming"),
            _ => false,
        }
    })
    .await;
    assert!(follows, "the other standby streams from the new primary");

    // The old primary comes back writable, and gets nothing.
    tokio::task::block_in_place(|| env.cluster.start(0)).unwrap();
    let old_up = eventually(Duration::from_secs(20), || async { env.handle().shared().view.borrow().nodes[0].up }).await;
    assert!(old_up, "the monitor sees the old primary again");
    assert!(!tokio::task::block_in_place(|| env.cluster.is_in_recovery(0)).unwrap(), "it says it is a primary");
    let c = env.client().await;
    for _ in 0..5 {
        let port: i32 = c.query_one("/*NO LOAD BALANCE*/ SELECT inet_server_port()", &[]).await.unwrap().get(0);
        assert_eq!(port, p1, "writes go to the new primary, never the fenced one");
    }
    for _ in 0..20 {
        let port: i32 = c.query_one("SELECT inet_server_port()", &[]).await.unwrap().get(0);
        assert_ne!(port, i32::from(env.cluster.node(0).port), "no read reaches the fenced node");
    }
    assert_eq!(primary_of(&env).await, Some(new));

    // A restarted pgvigil keeps the old primary fenced (state_dir) …
    let restarted = env.another_proxy(Options { extra: failover, ..Options::default() }).await;
    // … and one without that memory sees two primaries and fences the one nobody follows.
    let fresh = env.another_proxy(Options::default()).await;
    for proxy in [&restarted, &fresh] {
        let settled = eventually(Duration::from_secs(20), || async {
            let v = proxy.handle().shared().view.borrow().clone();
            v.primary() == Some(new) && v.nodes[0].fenced
        })
        .await;
        assert!(settled, "{:?}", proxy.handle().shared().view.borrow().nodes.iter().map(|n| (&n.name, n.up, n.role, n.fenced)).collect::<Vec<_>>());
        let c = connect(proxy.pg_config()).await.unwrap();
        let port: i32 = c.query_one("/*NO LOAD BALANCE*/ SELECT inet_server_port()", &[]).await.unwrap().get(0);
        assert_eq!(port, p1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_eligible_standby_the_cluster_stays_read_only() {
    let mut env = Env::start(Options {
        standbys: 1,
        backend_extra: vec![String::new(), "no_failover = true".into()],
        ..Options::default()
    })
    .await;
    env.direct(0).await.batch_execute("CREATE TABLE r (x int); INSERT INTO r VALUES (1)").await.unwrap();
    env.wait_replicated().await;
    let reader = env.client().await;
    assert_eq!(reader.query_one("SELECT count(*) FROM r", &[]).await.unwrap().get::<_, i64>(0), 1);
    tokio::task::block_in_place(|| env.cluster.kill9(0)).unwrap();
    let read_only = eventually(Duration::from_secs(20), || async {
        matches!(env.handle().shared().failover.status(), pgvigil::failover::Status::ReadOnly { .. })
    })
    .await;
    assert!(read_only, "failover status: {:?}", env.handle().shared().failover.status());
    match env.handle().shared().failover.status() {
        pgvigil::failover::Status::ReadOnly { reasons } => {
            assert!(reasons.iter().any(|r| r.contains("pg1 has no_failover")), "{reasons:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(tokio::task::block_in_place(|| env.cluster.is_in_recovery(1)).unwrap(), "nobody was promoted");
    // Reads go on from the standby; a write fails at once with a clear error.
    let c = env.client().await;
    assert_eq!(c.query_one("SELECT count(*) FROM r", &[]).await.unwrap().get::<_, i64>(0), 1);
    let e = c.execute("INSERT INTO r VALUES (2)", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57P03"), "{e:?}");
    // The health checks that decided it, as Pgpool-II's SHOW shows them.
    let mut rows = Vec::new();
    for m in c.simple_query("SHOW POOL_HEALTH_CHECK_STATS").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let get = |k: &str| r.get(k).unwrap_or_default().to_string();
            rows.push((get("node_id"), get("status"), get("fail_count"), get("retry_count"), get("success_count")));
        }
    }
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (_, status, fails, retries, _) = &rows[0];
    assert_eq!(status, "down");
    assert!(fails.parse::<u64>().unwrap() >= 3 && retries.parse::<u64>().unwrap() >= 2, "1 + 2 retries before down: {rows:?}");
    assert_eq!(rows[1].1, "up");
    assert!(rows[1].4.parse::<u64>().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_primary_with_extra_wal_rejoins_as_a_standby_after_pg_rewind() {
    let mut env = Env::start(Options { standbys: 2, data_dirs: true, ..Options::default() }).await;
    let shared = env.handle().shared().clone();
    let proxy_addr = env.addr;
    env.direct(0).await.batch_execute("CREATE TABLE j (x int); INSERT INTO j VALUES (1)").await.unwrap();
    env.wait_replicated().await;
    tokio::task::block_in_place(|| env.cluster.kill9(0)).unwrap();
    let failed_over = eventually(Duration::from_secs(30), || async {
        let v = shared.view.borrow().clone();
        v.primary().is_some_and(|p| p != 0) && v.nodes[0].fenced
    })
    .await;
    assert!(failed_over, "a standby was promoted and the old primary fenced");
    let new = shared.view.borrow().primary().unwrap();
    // The old primary comes back on its own timeline and takes a write nobody else has.
    tokio::task::block_in_place(|| env.cluster.start(0)).unwrap();
    let old = env.direct(0).await;
    old.batch_execute("INSERT INTO j VALUES (666)").await.unwrap();
    old.batch_execute("CHECKPOINT").await.unwrap();
    drop(old);
    assert!(eventually(Duration::from_secs(20), || async { shared.view.borrow().nodes[0].up }).await);
    // Rewound, started as a standby of the new primary, streaming: no longer fenced.
    env.rejoin(0).await;
    let back = env.direct(0).await;
    let in_recovery: bool = back.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(in_recovery);
    let port: Option<i32> = back.query_one("SELECT sender_port FROM pg_stat_wal_receiver", &[]).await.unwrap().get(0);
    assert_eq!(port, Some(i32::from(env.cluster.node(new).port)), "it streams from the new primary");
    let rows: Vec<i32> = back.query("SELECT x FROM j ORDER BY x", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(rows, vec![1], "the write only the old primary had is gone");
    // A write through pgvigil reaches it by replication.
    let _ = proxy_addr;
    let c = env.client().await;
    c.batch_execute("INSERT INTO j VALUES (2)").await.unwrap();
    let replicated = eventually(Duration::from_secs(20), || async {
        back.query_one("SELECT count(*) FROM j WHERE x = 2", &[]).await.map(|r| r.get::<_, i64>(0) == 1).unwrap_or(false)
    })
    .await;
    assert!(replicated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_follow_commands_get_pgpool_placeholders() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("follow.log");
    // Promotion through psql (as a script would do it); following only records its
    // arguments.
    let promote = format!(
        "PGPASSWORD='{SUPERPASS}' psql -X -q -h %H -p %r -U {SUPERUSER} -d postgres -c 'SELECT pg_promote()' && echo promoted %m from %P >> {}",
        log.display()
    );
    let follow = format!("echo follow %d %h %p to %m %H %r >> {}", log.display());
    let extra = format!("[failover]\npromote_command = {promote:?}\nfollow_command = {follow:?}\n");
    let mut env = Env::start(Options { standbys: 2, extra, ..Options::default() }).await;
    env.wait_replicated().await;
    tokio::task::block_in_place(|| env.cluster.kill9(0)).unwrap();
    let promoted = eventually(Duration::from_secs(30), || async { primary_of(&env).await.is_some_and(|p| p != 0) }).await;
    assert!(promoted, "the standby promoted by the command is routed to");
    let new = primary_of(&env).await.unwrap();
    let other = 3 - new;
    let expected = format!(
        "promoted {new} from 0\nfollow {other} {} {} to {new} {} {}\n",
        env.cluster.node(other).host,
        env.cluster.node(other).port,
        env.cluster.node(new).host,
        env.cluster.node(new).port
    );
    let written = eventually(Duration::from_secs(10), || async { std::fs::read_to_string(&log).unwrap_or_default() == expected }).await;
    assert!(written, "{:?} != {expected:?}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!tokio::task::block_in_place(|| env.cluster.is_in_recovery(new)).unwrap());
}
