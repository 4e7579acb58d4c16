//! The monitor's view of WAL positions and replay lag on a real primary + standby.

mod common;

use std::time::Duration;

use common::*;

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
