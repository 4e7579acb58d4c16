//! The local-cluster harness against real PostgreSQL: build, replicate, crash, promote,
//! pause, and clean up (also on panic).

use std::process::Command;
use std::time::{Duration, Instant};

use pgvigil::cluster::{HbaMethod, LocalCluster, PasswordEncryption};

const DEADLINE: Duration = Duration::from_secs(30);

fn build(standbys: usize, hba: HbaMethod) -> LocalCluster {
    let t = Instant::now();
    let c = LocalCluster::builder()
        .standbys(standbys)
        .hba(hba)
        .build()
        .unwrap_or_else(|e| panic!("build failed: {e}"));
    eprintln!(
        "build(): primary + {standbys} standbys ({hba:?}) in {:?} (PostgreSQL {})",
        t.elapsed(),
        c.bin().version
    );
    c
}

/// Polls `f` until it returns true or the deadline passes.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A libpq connection attempt with psql, bounded by `timeout`.
fn connects(conninfo: &str, timeout: Duration) -> bool {
    let mut child = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT 1", "-d", conninfo])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn psql");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait psql") {
            return st.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn primary_only_builds_fast_and_answers() {
    let c = build(0, HbaMethod::Trust);
    assert_eq!(c.len(), 1);
    assert!(!c.is_in_recovery(0).unwrap());
    assert_eq!(c.psql(0, "postgres", "SELECT 40 + 2").unwrap(), "42");
    assert!(c.node(0).data_dir.starts_with(c.dir()));
    assert!(c.log_path(0).is_file());
    let err = c
        .psql(0, "postgres", "SELECT * FROM no_such_table")
        .unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

#[test]
fn scram_cluster_replicates_and_fails_over() {
    let mut c = build(2, HbaMethod::ScramSha256);
    assert_eq!(c.len(), 3);
    assert!(!c.is_in_recovery(0).unwrap());
    for i in 1..3 {
        assert!(c.is_in_recovery(i).unwrap(), "node {i} should be a standby");
        c.wait_streaming(i, DEADLINE).unwrap();
    }
    let slots = c
        .psql(0, "postgres", "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE active")
        .unwrap();
    assert_eq!(slots, "pg1,pg2");

    // SCRAM really is required: a wrong password is refused.
    let bad = c
        .conninfo(0, "postgres")
        .replace("password=postgres", "password=wrong");
    assert!(!connects(&bad, Duration::from_secs(10)));
    assert!(connects(
        &c.conninfo(0, "postgres"),
        Duration::from_secs(10)
    ));

    c.psql(
        0,
        "postgres",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (7);",
    )
    .unwrap();
    for i in 1..3 {
        eventually("row on standby", || {
            c.psql(i, "postgres", "SELECT v FROM t")
                .is_ok_and(|v| v == "7")
        });
    }

    // A standby restarts and reconnects with the password from its own configuration.
    c.stop(2).unwrap();
    c.start(2).unwrap();
    c.wait_streaming(2, DEADLINE).unwrap();

    // Crash the primary, promote standby 1, write to it.
    let old = c.node(0).pid().unwrap();
    c.kill9(0).unwrap();
    assert!(!pid_alive(old));
    let t = Instant::now();
    c.promote(1).unwrap();
    eprintln!("promote(1) after kill9(0) took {:?}", t.elapsed());
    assert!(!c.is_in_recovery(1).unwrap());
    c.psql(1, "postgres", "INSERT INTO t VALUES (8)").unwrap();
    assert_eq!(c.psql(1, "postgres", "SELECT sum(v) FROM t").unwrap(), "15");

    // Roles are created on the new primary.
    c.create_role("app", "s3cret", PasswordEncryption::ScramSha256)
        .unwrap();
    let stored = c
        .psql(
            1,
            "postgres",
            "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'app'",
        )
        .unwrap();
    assert_eq!(stored, "SCRAM-SHA-256$");

    // The crashed primary comes back (crash recovery) as a second primary.
    c.start(0).unwrap();
    assert!(!c.is_in_recovery(0).unwrap());
}

#[test]
fn md5_roles_and_restart() {
    let mut c = LocalCluster::builder()
        .standbys(1)
        .hba(HbaMethod::Md5)
        .superuser_password("it's a secret")
        .name_prefix("node")
        .conf("work_mem = '8MB'")
        .build()
        .unwrap_or_else(|e| panic!("build failed: {e}"));
    assert_eq!(c.node(1).name, "node1");
    assert_eq!(c.superuser(), ("postgres", "it's a secret"));
    assert_eq!(c.psql(1, "postgres", "SHOW work_mem").unwrap(), "8MB");
    c.create_role("legacy", "pw", PasswordEncryption::Md5)
        .unwrap();
    let stored = c
        .psql(
            0,
            "postgres",
            "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'legacy'",
        )
        .unwrap();
    assert_eq!(stored, "md5");
    let legacy = format!(
        "host=127.0.0.1 port={} user=legacy password=pw dbname=postgres",
        c.node(0).port
    );
    assert!(connects(&legacy, Duration::from_secs(10)));

    // Restart the primary: the standby reconnects (its primary_conninfo has the password).
    c.stop(0).unwrap();
    c.start(0).unwrap();
    c.psql(0, "postgres", "CREATE TABLE after_restart ()")
        .unwrap();
    eventually("table on standby", || {
        c.psql(
            1,
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'after_restart'",
        )
        .is_ok_and(|v| v == "1")
    });
    c.wait_streaming(1, DEADLINE).unwrap();
}

#[test]
fn pause_and_resume() {
    let mut c = build(0, HbaMethod::Password);
    let conninfo = c.conninfo(0, "postgres");
    c.pause(0).unwrap();
    assert!(
        !connects(
            &format!("{conninfo} connect_timeout=2"),
            Duration::from_secs(4)
        ),
        "a paused server must not answer"
    );
    c.resume(0).unwrap();
    assert!(connects(&conninfo, Duration::from_secs(10)));
    c.wait_ready(0, DEADLINE).unwrap();
    // Dropping a paused cluster works too.
    c.pause(0).unwrap();
}

#[test]
fn drop_stops_servers_and_removes_dir() {
    let c = build(1, HbaMethod::Trust);
    let dir = c.dir().to_path_buf();
    let pids: Vec<u32> = c.nodes().iter().filter_map(|n| n.pid()).collect();
    assert_eq!(pids.len(), 2);
    drop(c);
    assert!(!dir.exists(), "{} still exists", dir.display());
    for p in pids {
        assert!(!pid_alive(p), "postmaster {p} still running");
    }
}

#[test]
fn panic_still_cleans_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let c = LocalCluster::builder().build().expect("build");
        tx.send((c.dir().to_path_buf(), c.node(0).pid()))
            .expect("send");
        panic!("test body failed");
    });
    assert!(result.is_err());
    let (dir, pid) = rx.recv().expect("cluster info");
    assert!(!dir.exists(), "{} survived the panic", dir.display());
    assert!(!pid_alive(pid.expect("pid")));
}
