//! The monitor against a real cluster: WAL positions and replay lag, replication facts,
//! pokes and retries.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pgvigil::cluster::HbaMethod;
use pgvigil::monitor::{self, CheckSettings, ClusterView};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_lag_grows_while_replay_is_paused_and_shrinks_after() {
    let env = Env::start(Options { standbys: 1, ..Options::default() }).await;
    let view = env.handle().shared().view.clone();
    let lag = || view.borrow().replay_lag_bytes(1);
    let lag_time = || view.borrow().replay_lag_time(1);
    assert!(eventually(Duration::from_secs(20), || async { lag().is_some_and(|l| l < 64 * 1024) }).await, "caught up: {:?}", lag());
    assert_eq!(view.borrow().replay_lag_bytes(0), None, "a primary has no replay lag");
    assert_eq!(view.borrow().replay_lag_time(0), None, "a primary has no replay lag");
    {
        let v = view.borrow();
        assert!(v.nodes[0].wal.current.is_some() && v.nodes[0].wal.replay.is_none());
        assert!(v.nodes[1].wal.current.is_none() && v.nodes[1].wal.receive.is_some());
        assert_eq!(v.nodes[0].wal.replay_lag_time, None);
    }

    // A commit the standby replays, so that its last replayed commit has a time.
    let primary = env.direct(0).await;
    primary.batch_execute("CREATE TABLE marker (a int)").await.unwrap();
    let replayed = || {
        let v = view.borrow();
        v.nodes[1].wal.last_replayed_commit.is_some() && v.replay_lag_time(1) == Some(Duration::ZERO)
    };
    assert!(eventually(Duration::from_secs(20), || async { replayed() }).await, "caught up in time: {:?}", lag_time());

    let standby = env.direct(1).await;
    standby.simple_query("SELECT pg_wal_replay_pause()").await.unwrap();
    primary.batch_execute("CREATE TABLE filler AS SELECT g, repeat('w', 500) AS pad FROM generate_series(1, 20000) g").await.unwrap();
    let behind = eventually(Duration::from_secs(20), || async { lag().is_some_and(|l| l > 4 << 20) }).await;
    assert!(behind, "lag while paused: {:?}", lag());
    // Replay stands still at the marker's commit: its age grows with the clock.
    let late = eventually(Duration::from_secs(20), || async { lag_time().is_some_and(|t| t >= Duration::from_millis(1500)) }).await;
    assert!(late, "lag time while paused: {:?}", lag_time());

    standby.simple_query("SELECT pg_wal_replay_resume()").await.unwrap();
    let caught_up = eventually(Duration::from_secs(30), || async { lag().is_some_and(|l| l < 64 * 1024) }).await;
    assert!(caught_up, "lag after resume: {:?}", lag());
    let zero = eventually(Duration::from_secs(30), || async { lag_time() == Some(Duration::ZERO) }).await;
    assert!(zero, "lag time after resume: {:?}", lag_time());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_facts_of_the_primary_and_its_standbys() {
    let mut env = Env::start(Options { standbys: 2, ..Options::default() }).await;
    let view = env.handle().shared().view.clone();
    let names: Vec<String> = (0..3).map(|i| env.cluster.node(i).name.clone()).collect();
    let primary_port = env.cluster.node(0).port;
    let settled = |v: &ClusterView| {
        v.nodes.iter().all(|n| n.up)
            && v.nodes[0].repl.peers.len() == 2
            && v.nodes[0].repl.peers.iter().all(|p| p.state == "streaming")
            && v.nodes[1..].iter().all(|n| n.repl.upstream.as_ref().is_some_and(|u| u.status == "streaming"))
    };
    let ok = eventually(Duration::from_secs(20), || async { settled(&view.borrow()) }).await;
    assert!(ok, "primary streams to both standbys: {:#?}", view.borrow());

    let v = view.borrow().clone();
    let primary = &v.nodes[0].repl;
    assert!(primary.timeline.is_some());
    assert_eq!((&primary.synchronous_standby_names, &primary.replication_name, &primary.upstream), (&None, &None, &None));
    let mut peers: Vec<&str> = primary.peers.iter().map(|p| p.application_name.as_str()).collect();
    peers.sort();
    assert_eq!(peers, [names[1].as_str(), names[2].as_str()]);
    assert!(primary.peers.iter().all(|p| p.sync_state == "async"), "{:?}", primary.peers);
    for (i, (node, name)) in v.nodes.iter().zip(&names).enumerate().skip(1) {
        let standby = &node.repl;
        assert_eq!(standby.timeline, primary.timeline, "standby {i} on the primary's timeline");
        assert_eq!(standby.replication_name.as_deref(), Some(name.as_str()), "standby {i}: its primary_conninfo's name");
        let upstream = standby.upstream.as_ref().unwrap_or_else(|| panic!("standby {i} has a WAL receiver"));
        assert_eq!((upstream.host.as_str(), upstream.port), ("127.0.0.1", primary_port), "standby {i}'s upstream");
        assert!(standby.peers.is_empty() && standby.synchronous_standby_names.is_none());
    }

    // Synchronous replication as the primary reports it.
    let direct = env.direct(0).await;
    let sync_one = format!("ALTER SYSTEM SET synchronous_standby_names = '{}'", names[1]);
    direct.batch_execute(&sync_one).await.unwrap();
    direct.query_one("SELECT pg_reload_conf()", &[]).await.unwrap();
    let sync_seen = || {
        let v = view.borrow();
        let repl = &v.nodes[0].repl;
        repl.synchronous_standby_names.as_deref() == Some(names[1].as_str())
            && repl.peers.iter().any(|p| p.application_name == names[1] && p.sync_state == "sync")
    };
    let ok = eventually(Duration::from_secs(20), || async { sync_seen() }).await;
    assert!(ok, "synchronous standby seen: {:?}", view.borrow().nodes[0].repl);
    direct.batch_execute("ALTER SYSTEM RESET synchronous_standby_names").await.unwrap();
    direct.query_one("SELECT pg_reload_conf()", &[]).await.unwrap();

    // health_check.retries (2 by default) reach the monitor: a crashed standby is
    // retried twice before it is marked down.
    tokio::task::block_in_place(|| env.cluster.kill9(2)).unwrap();
    let down = eventually(Duration::from_secs(20), || async { !view.borrow().nodes[2].up }).await;
    assert!(down, "a crashed standby is marked down");
    let stats = env.handle().shared().monitor.stats(2).unwrap();
    assert_eq!((stats.marked_down, stats.max_retries), (1, 2), "{stats:?}");
    assert!(stats.retries >= 2 && stats.failures >= 3, "{stats:?}");
}

/// Health checks straight to `cluster`, every `interval`.
fn spawn_monitor(cluster: &pgvigil::cluster::LocalCluster, interval: Duration, stop: &CancellationToken) -> monitor::Monitor {
    let nodes = (0..cluster.len())
        .map(|i| {
            let n = cluster.node(i);
            (n.name.clone(), n.host.clone(), n.port, SocketAddr::from(([127, 0, 0, 1], n.port)))
        })
        .collect();
    let settings = CheckSettings {
        interval,
        timeout: Duration::from_secs(2),
        retries: 2,
        retry_delay: Duration::from_millis(300),
        user: SUPERUSER.into(),
        password: Some(SUPERPASS.into()),
        database: "postgres".into(),
        tls: std::sync::Arc::new(pgvigil::tls::backend::BackendTls::disabled()),
    };
    monitor::spawn(nodes, settings, stop.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poke_checks_at_once_and_retries_before_marking_down() {
    init_logging();
    let mut cluster = build_cluster(1, HbaMethod::ScramSha256).await;
    let stop = CancellationToken::new();
    let monitor = spawn_monitor(&cluster, Duration::from_secs(60), &stop);
    let view = monitor.subscribe();
    let up = eventually(Duration::from_secs(20), || async { view.borrow().nodes.iter().all(|n| n.up) }).await;
    assert!(up, "the first checks mark both nodes up: {:?}", view.borrow());
    let before = view.borrow().nodes[1].clone();
    assert_eq!(monitor.stats(1).map(|s| (s.total, s.successes)), Some((1, 1)));

    tokio::task::block_in_place(|| cluster.stop(1)).unwrap();
    assert!(view.borrow().nodes[1].up, "no check before the 60 s interval");
    monitor.poke(1);
    // Only the poke and its retries can do this within 15 s.
    let down = eventually(Duration::from_secs(15), || async { !view.borrow().nodes[1].up }).await;
    assert!(down, "a poke marks a stopped standby down");
    let stats = monitor.stats(1).unwrap();
    let counts = (stats.total, stats.successes, stats.failures, stats.retries, stats.max_retries, stats.marked_down);
    assert_eq!(counts, (4, 1, 3, 2, 2, 1), "the poke's check, then 2 retries: {stats:?}");
    assert!(stats.last_failure > stats.last_success && stats.last_check == stats.last_failure, "{stats:?}");
    assert!(stats.max_duration_ms >= stats.min_duration_ms && stats.average_duration_ms > 0.0, "{stats:?}");
    let after = view.borrow().nodes[1].clone();
    assert_eq!((after.wal, &after.repl), (before.wal, &before.repl), "the last known WAL and replication facts stay");
    assert!(view.borrow().nodes[0].up, "the primary is untouched");

    tokio::task::block_in_place(|| cluster.start(1)).unwrap();
    monitor.poke(1);
    let back = eventually(Duration::from_secs(15), || async { view.borrow().nodes[1].up }).await;
    assert!(back, "one successful check brings it back: {:?}", monitor.stats(1));
    assert_eq!(monitor.stats(1).map(|s| (s.successes, s.marked_down)), Some((2, 1)));
    stop.cancel();
}
