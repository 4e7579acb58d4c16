//! Rejoin of a fenced old primary on a real primary + 2 standbys, with pgvigil in-process:
//! through `[rejoin]` commands alone (backends without `data_dir`, as for nodes on other
//! hosts), by a fresh base backup when the rewind fails and `rejoin.allow_reclone` is on,
//! and a failed rejoin when it is off.
//!
//! The commands here run locally what ssh would run on the node's host: PostgreSQL
//! programs as the data directory's owner (`runuser` when the tests run as root). The
//! tests run one at a time (`serial`) and capture the `rejoin_*` events pgvigil logs.

mod common;
#[path = "common/capture.rs"]
mod capture;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capture::{events, logged, serial};
use common::*;
use pgvigil::monitor::Role;

// ---- captured events ------------------------------------------------------------------

/// The `rejoin_*` and `node_rejoined` events, as "event node".
fn rejoin_events() -> Vec<String> {
    events()
        .into_iter()
        .filter(|e| e.event.starts_with("rejoin_") || e.event == "node_rejoined")
        .map(|e| format!("{} {}", e.event, e.node))
        .collect()
}

// ---- helpers ----------------------------------------------------------------------------

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// What a shell on the node's host puts before a PostgreSQL program: run it as the owner
/// of `data` (PostgreSQL refuses root).
fn as_owner(data: &Path) -> String {
    if !nix::unistd::geteuid().is_root() {
        return String::new();
    }
    let uid = std::fs::metadata(data).expect("data dir").uid();
    let user = nix::unistd::User::from_uid(uid.into()).ok().flatten().expect("owner of the data dir");
    format!("runuser -u {} -- ", user.name)
}

/// Starts the server in `data` by hand, as an operator would (`pg_ctl` as its owner).
fn pg_ctl_start(env: &Env, i: usize) {
    let n = env.cluster.node(i);
    let cmd = format!(
        "{}'{}' start -D '{}' -w -t 60 -l '{}' -o '-p {}'",
        as_owner(&n.data_dir),
        env.cluster.bin().bindir.join("pg_ctl").display(),
        n.data_dir.display(),
        n.data_dir.join("by-hand.log").display(),
        n.port
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&cmd).output().expect("run pg_ctl");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits until a standby is promoted and node 0 fenced; returns the new primary.
async fn failed_over(env: &Env) -> usize {
    let shared = env.handle().shared().clone();
    let done = eventually(Duration::from_secs(30), || async {
        let v = shared.view.borrow().clone();
        v.primary().is_some_and(|p| p != 0) && v.nodes[0].fenced
    })
    .await;
    assert!(done, "a standby was promoted and the old primary fenced: {:?}", shared.failover.status());
    let primary = shared.view.borrow().primary();
    primary.expect("a primary")
}

/// Waits until pgvigil uses node 0 again as a standby (not fenced).
async fn rejoined(env: &Env, timeout: Duration) -> bool {
    let shared = env.handle().shared().clone();
    eventually(timeout, || async {
        let v = shared.view.borrow().clone();
        let n = &v.nodes[0];
        n.up && !n.fenced && n.role == Role::Standby
    })
    .await
}


/// The `application_name` of the WAL sender on node `p` that uses slot `pgvigil_pg0`.
async fn walsender_of_slot(env: &Env, p: usize) -> Option<String> {
    let c = env.direct(p).await;
    let sql = "SELECT r.application_name FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = 'pgvigil_pg0'";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let name = c.query_opt(sql, &[]).await.ok().flatten().map(|r| r.get::<_, String>(0));
        if name.is_some() || Instant::now() > deadline {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (30 s) until the values of `j` on node `i` are `want`; else the last ones seen.
async fn rows_become(env: &Env, i: usize, want: &[i32]) -> Result<(), Vec<i32>> {
    let c = env.direct(i).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<i32> = c.query("SELECT x FROM j ORDER BY x", &[]).await.map(|r| r.iter().map(|r| r.get(0)).collect()).unwrap_or_default();
        if rows == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(rows);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Directories next to node 0's data directory that a re-clone kept aside.
fn kept_aside(env: &Env) -> Vec<PathBuf> {
    let data = &env.cluster.node(0).data_dir;
    let prefix = format!("{}.pgvigil-old-", data.file_name().unwrap().to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(data.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Table `j` with row 1 everywhere; node 0 killed and replaced; row 2 written through
/// pgvigil on the new primary; node 0 started again by the harness. Returns the new
/// primary.
async fn fail_over_and_write(env: &mut Env) -> usize {
    env.direct(0).await.batch_execute("CREATE TABLE j (x int); INSERT INTO j VALUES (1)").await.unwrap();
    env.wait_replicated().await;
    block(|| env.cluster.kill9(0)).unwrap();
    let new = failed_over(env).await;
    env.client().await.batch_execute("INSERT INTO j VALUES (2)").await.unwrap();
    new
}

// ---- 1. commands only -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rejoin_through_commands_alone_makes_the_old_primary_a_streaming_standby_that_takes_reads() {
    let _serial = serial().await;
    let cluster = build_cluster(2, pgvigil::cluster::HbaMethod::ScramSha256).await;
    let calls = tempfile::tempdir().unwrap();
    let log = calls.path().join("calls.log");
    let bin = cluster.bin().bindir.clone();
    let pg = |prog: &str| format!("{}'{}'", as_owner(&cluster.node(0).data_dir), bin.join(prog).display());
    // What the node's host knows: its data directory (pgvigil has no data_dir for it).
    let cases: String = (0..cluster.len()).map(|i| format!("{i}) D='{}';; ", cluster.node(i).data_dir.display())).collect();
    let on_host = format!("case %d in {cases}esac; ");
    let record = |what: &str| format!("echo \"{what}\" >> '{}'; ", log.display());
    let stop = format!(
        "{on_host}{}{} status -D \"$D\" >/dev/null; [ $? -eq 3 ] || {} stop -D \"$D\" -m fast -w",
        record("stop d=%d h=%h p=%p D=[%D] new=%m %H %r old=%M %N %S"),
        pg("pg_ctl"),
        pg("pg_ctl")
    );
    let rewind = format!(
        "{on_host}{}PGPASSWORD='{SUPERPASS}' {} -D \"$D\" --source-server='host=%H port=%r user={SUPERUSER} dbname=postgres application_name=%n' -R \
         && echo \"primary_slot_name = '%s'\" >> \"$D/postgresql.auto.conf\"",
        record("rewind d=%d new=%m %H %r slot=%s name=%n"),
        pg("pg_rewind")
    );
    let start = format!(
        "{on_host}{}{} start -D \"$D\" -w -t 120 -l \"$D/start.log\" -o '-p %p'",
        record("start d=%d h=%h p=%p"),
        pg("pg_ctl")
    );
    let extra = format!(
        "[routing]\ngranularity = \"statement\"\n\n[failover]\nauto_rejoin = true\n\n[rejoin]\nstop_command = {stop:?}\nrewind_command = {rewind:?}\nstart_command = {start:?}\n"
    );
    let mut env = Env::start_on(cluster, Options { extra, ..Options::default() }).await;
    let new = fail_over_and_write(&mut env).await;

    // The old primary comes back (crash recovery puts it on its own timeline's end), and
    // pgvigil rejoins it at once: the harness may lose the race to check it is ready.
    let started = Instant::now();
    if let Err(e) = block(|| env.cluster.start(0)) {
        eprintln!("harness start of pg0 (pgvigil may have stopped it first): {e}");
    }
    let back = rejoined(&env, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let calls_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(back, "node 0 rejoined: {:?}\nevents: {:?}\ncalls:\n{calls_text}", env.handle().shared().view.borrow().nodes[0], rejoin_events());
    eprintln!("TIMINGS rejoin through commands: old primary started -> used again in {} ms", elapsed.as_millis());

    // Each command ran once, in order, with the placeholders of node 0 and the new primary.
    let (n0, np) = (env.cluster.node(0), env.cluster.node(new));
    let expected = format!(
        "stop d=0 h={} p={} D=[] new={new} {} {} old=0 {} {}\nrewind d=0 new={new} {} {} slot=pgvigil_pg0 name=pg0\nstart d=0 h={} p={}\n",
        n0.host, n0.port, np.host, np.port, n0.host, n0.port, np.host, np.port, n0.host, n0.port
    );
    assert_eq!(calls_text, expected);
    assert_eq!(
        rejoin_events(),
        ["rejoin_started pg0", "rejoin_stopped pg0", "rejoin_rewound pg0", "rejoin_streaming pg0", "rejoin_started_standby pg0", "node_rejoined pg0"]
    );

    // A standby of the new primary through its slot, with the row written after the failover.
    assert!(env.streams_from(0, new).await, "node 0 streams from the new primary");
    assert_eq!(walsender_of_slot(&env, new).await.as_deref(), Some("pg0"), "it streams through its slot, named pg0");
    assert_eq!(rows_become(&env, 0, &[1, 2]).await, Ok(()));
    // Unfenced: reads reach it again (statement granularity: each read is balanced).
    let c = env.client().await;
    c.batch_execute("INSERT INTO j VALUES (3)").await.unwrap();
    let port0 = env.port(0);
    let reads = eventually(Duration::from_secs(30), || async { port_of(&c, "SELECT inet_server_port()").await == port0 }).await;
    assert!(reads, "node 0 takes reads again");
}

// ---- 2. re-clone when the rewind fails -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rewind_with_allow_reclone_takes_a_fresh_base_backup_and_keeps_the_old_data_aside() {
    let _serial = serial().await;
    let extra = "[rejoin]\nallow_reclone = true\nrewind_command = \"false\"\n".to_string();
    let mut env = Env::start(Options { standbys: 2, data_dirs: true, extra, ..Options::default() }).await;
    let data = env.cluster.node(0).data_dir.clone();
    let before = std::fs::metadata(&data).unwrap();
    let new = fail_over_and_write(&mut env).await;
    // The old primary comes back and takes a write nobody else has.
    block(|| env.cluster.start(0)).unwrap();
    let old = env.direct(0).await;
    old.batch_execute("INSERT INTO j VALUES (666); CHECKPOINT").await.unwrap();
    drop(old);
    let shared = env.handle().shared().clone();
    assert!(eventually(Duration::from_secs(20), || async { shared.view.borrow().nodes[0].up }).await);

    let started = Instant::now();
    shared.failover.request_rejoin(0);
    let back = rejoined(&env, Duration::from_secs(120)).await;
    assert!(back, "node 0 rejoined: {:?}\nevents: {:?}", shared.view.borrow().nodes[0], events());
    eprintln!("TIMINGS re-clone: rejoin requested -> used again in {} ms", started.elapsed().as_millis());
    assert_eq!(
        rejoin_events(),
        [
            "rejoin_started pg0",
            "rejoin_stopped pg0",
            "rejoin_rewind_failed pg0",
            "rejoin_recloned pg0",
            "rejoin_streaming pg0",
            "rejoin_started_standby pg0",
            "node_rejoined pg0"
        ]
    );
    assert!(logged("rejoin_rewind_failed")[0].error.contains("rejoin.rewind_command failed"), "{:?}", events());

    // The old data is kept next to the new copy, with the same owner and permissions.
    let kept = kept_aside(&env);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].join("PG_VERSION").is_file() && kept[0].join("global/pg_control").is_file(), "{kept:?} holds the old data");
    for dir in [&data, &kept[0]] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!((m.uid(), m.gid()), (before.uid(), before.gid()), "{}", dir.display());
        assert_eq!(m.permissions().mode() & 0o777, 0o700, "{}", dir.display());
    }

    // A standby of the new primary: the row written there after the failover is in it,
    // the old primary's own write is not, and new writes arrive.
    assert!(env.streams_from(0, new).await, "node 0 streams from the new primary");
    assert_eq!(walsender_of_slot(&env, new).await.as_deref(), Some("pg0"), "it streams through its slot, named pg0");
    assert_eq!(rows_become(&env, 0, &[1, 2]).await, Ok(()));
    env.client().await.batch_execute("INSERT INTO j VALUES (3)").await.unwrap();
    assert_eq!(rows_become(&env, 0, &[1, 2, 3]).await, Ok(()));
}

// ---- 3. no re-clone ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rewind_without_allow_reclone_fails_the_rejoin_and_the_node_stays_fenced() {
    let _serial = serial().await;
    let extra = "[routing]\ngranularity = \"statement\"\n\n[rejoin]\nrewind_command = \"echo no common ancestor >&2; false\"\n".to_string();
    let mut env = Env::start(Options { standbys: 2, data_dirs: true, extra, ..Options::default() }).await;
    let new = fail_over_and_write(&mut env).await;
    block(|| env.cluster.start(0)).unwrap();
    let shared = env.handle().shared().clone();
    assert!(eventually(Duration::from_secs(20), || async { shared.view.borrow().nodes[0].up }).await);

    shared.failover.request_rejoin(0);
    let failed = eventually(Duration::from_secs(120), || async { !logged("rejoin_failed").is_empty() }).await;
    assert!(failed, "the rejoin failed: {:?}", events());
    let error = logged("rejoin_failed")[0].error.clone();
    assert!(error.contains("rejoin.rewind_command failed") && error.contains("no common ancestor"), "{error}");
    assert!(error.contains("rejoin.allow_reclone"), "{error}");
    assert!(logged("rejoin_recloned").is_empty() && kept_aside(&env).is_empty(), "no base backup was taken");
    assert!(shared.view.borrow().nodes[0].fenced);
    // It was left stopped; an operator starts it again: still fenced, it gets no statement.
    assert!(eventually(Duration::from_secs(20), || async { !shared.view.borrow().nodes[0].up }).await, "left stopped");
    block(|| pg_ctl_start(&env, 0));
    assert!(eventually(Duration::from_secs(20), || async { shared.view.borrow().nodes[0].up }).await);
    assert!(!block(|| env.cluster.is_in_recovery(0)).unwrap(), "it is a primary of its own");
    assert!(shared.view.borrow().nodes[0].fenced);
    let c = env.client().await;
    for _ in 0..30 {
        assert_ne!(port_of(&c, "SELECT inet_server_port()").await, env.port(0), "no read reaches the fenced node");
    }
    assert_eq!(port_of(&c, "INSERT INTO j VALUES (3) RETURNING inet_server_port()").await, env.port(new));
    assert_eq!(rejoin_events(), ["rejoin_started pg0", "rejoin_stopped pg0", "rejoin_rewind_failed pg0", "rejoin_failed pg0"]);
}
