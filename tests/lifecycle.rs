//! Shutdown, reload, check-config and the demo, through the library and the binary.

// tokio_postgres::Client is not Debug, so `expect_err` is not available.
#![allow(clippy::err_expect)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgvigil::cluster::PasswordEncryption;

const BIN: &str = env!("CARGO_BIN_EXE_pgvigil");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_sessions_finish_then_sends_57p01() {
    let mut env = Env::start(Options::default()).await;
    let busy = Raw::connect(env.addr).await;
    let mut busy = busy.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    let leaving = Raw::connect(env.addr).await;
    let mut leaving = leaving.login(SUPERUSER, SUPERPASS).await.unwrap().0;

    let handle = env.proxy.take().unwrap();
    let stopping = tokio::spawn(handle.shutdown(Duration::from_millis(1500)));
    // No new clients once shutdown began.
    let refused = eventually(Duration::from_secs(5), || async { tokio::net::TcpStream::connect(env.addr).await.is_err() }).await;
    assert!(refused, "listener closed");
    // Existing sessions keep working during the grace period.
    assert_eq!(first_column(&busy.simple_query("SELECT 1").await), vec!["1".to_string()]);
    // A session that ends by itself ends normally.
    leaving.send(b"X\0\0\0\x04").await;
    assert!(leaving.expect_eof().await);
    // After the grace period the rest are told why they are cut off.
    let e = busy.expect_error().await;
    assert_eq!(e.code, "57P01");
    assert_eq!(e.message, "terminating connection due to administrator command");
    assert!(busy.expect_eof().await);
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("shutdown finished").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_early_when_sessions_are_done() {
    let mut env = Env::start(Options::default()).await;
    let c = env.client().await;
    let handle = env.proxy.take().unwrap();
    let stopping = tokio::spawn(handle.shutdown(Duration::from_secs(300)));
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    tokio::time::timeout(Duration::from_secs(20), stopping).await.expect("did not wait out the grace period").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_shutdown_terminates_sessions_at_once() {
    let mut env = Env::start(Options::default()).await;
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    // A session in the middle of a long query is cut off too.
    let mut q = bytes::BytesMut::new();
    pgvigil::protocol::frontend::write_query(&mut q, "SELECT pg_sleep(3600)");
    raw.send(&q).await;
    env.wait_running(0, "pg_sleep(3600)").await;
    let handle = env.proxy.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle.fast_shutdown()).await.expect("fast shutdown is fast");
    assert_eq!(raw.expect_error().await.code, "57P01");
    assert!(raw.expect_eof().await);
}

fn signal(p: &Proc, sig: Signal) {
    kill(Pid::from_raw(p.0.id() as i32), sig).expect("signal");
}

fn wait_exit(p: &mut Proc, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_on_sighup_and_stops_on_sigterm() {
    // One worker thread: the binary must work with a non-default runtime size too.
    let mut env = Env::start(Options { proxy: "worker_threads = 1".into(), ..Options::default() }).await;
    env.cluster.create_role("erin", "erin pw", PasswordEncryption::ScramSha256).unwrap();
    let log = env.dir.path().join("pgvigil.log");
    let mut proc = env.switch_to_binary(&log).await;
    let text = std::fs::read_to_string(&env.config_path).unwrap();

    // erin is not in the users file yet.
    let e = connect(env.pg_config("erin", "erin pw")).await.err().expect("unknown to pgvigil");
    assert_eq!(sqlstate(&e), "28P01");
    let users = env.dir.path().join("users.toml");
    let mut u = std::fs::read_to_string(&users).unwrap();
    u.push_str("erin = \"erin pw\"\n");
    std::fs::write(&users, u).unwrap();
    std::fs::write(&env.config_path, text.replace("[pool]\n", "[pool]\nsize = 3\n")).unwrap();
    signal(&proc, Signal::SIGHUP);
    let reloaded = eventually(Duration::from_secs(10), || async { connect(env.pg_config("erin", "erin pw")).await.is_ok() }).await;
    assert!(reloaded, "SIGHUP reloaded the users file");
    let logged = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("pool.*")
    })
    .await;
    assert!(logged, "the log names what needs a restart");

    // A bad config on SIGHUP keeps the running one.
    std::fs::write(&env.config_path, "[proxy]\nbogus = 1\n").unwrap();
    signal(&proc, Signal::SIGHUP);
    let kept = eventually(Duration::from_secs(5), || async { std::fs::read_to_string(&log).unwrap_or_default().contains("reload failed") }).await;
    assert!(kept);
    connect(env.pg_config("erin", "erin pw")).await.expect("still serving");

    let c = connect(env.pg_config(SUPERUSER, SUPERPASS)).await.unwrap();
    signal(&proc, Signal::SIGTERM);
    // The session may finish its work during the grace period.
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    let status = wait_exit(&mut proc, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(SUPERPASS) && !text.contains("erin pw"), "no password in the log:\n{text}");
}

#[test]
fn check_config_reports_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[proxy]\nlisten = \"127.0.0.1:9999\"\nlisten_typo = 1\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:1", path.display())), "{err}");
    assert!(err.contains("listen_typo"), "{err}");

    std::fs::write(&path, "[auth]\nmethod = \"md5\"\n[[backends]]\nname = \"a\"\nhost = \"h\"\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.users_file"));

    std::fs::write(dir.path().join("users.toml"), "alice = \"top secret\"\n").unwrap();
    std::fs::write(&path, "[auth]\nusers_file = \"users.toml\"\n[[backends]]\nname = \"a\"\nhost = \"h\"\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(dir.path().join("users.toml"), "alice = \"top secret\"\nbob = 5\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("users.toml:2"), "{err}");
    assert!(!err.contains("top secret"), "{err}");
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pgvigil "));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check-config", "demo"] {
        assert!(help.contains(cmd), "{help}");
    }
}

/// A running `pgvigil demo` and what it printed up to "Press Ctrl-C".
struct Demo {
    proc: Proc,
    /// The hosts and ports of the printed psql commands, in order.
    psql: Vec<SocketAddr>,
    /// Each node's admin API.
    admins: Vec<SocketAddr>,
    /// The port of the primary pg0.
    pg0: i32,
    dir: String,
    head: Vec<String>,
    rest: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

/// One demo at a time: each takes its admin ports from 9898 up.
static ONE_DEMO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEMO_VIP: &str = "127.0.0.100";

impl Demo {
    /// Runs `prefix… pgvigil args…` and reads its output up to "Press Ctrl-C".
    async fn start(prefix: &[&str], args: &[&str]) -> Demo {
        let mut cmd = match prefix.split_first() {
            Some((first, more)) => {
                let mut c = Command::new(first);
                c.args(more).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut proc = Proc(cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
        let stdout = proc.0.stdout.take().unwrap();
        let (head, rest) = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let head: Vec<String> = lines.by_ref().map(Result::unwrap).take_while(|l| !l.starts_with("Press Ctrl-C")).collect();
            (head, lines)
        })
        .await
        .unwrap();
        let psql = head
            .iter()
            .filter_map(|l| {
                let mut w = l.trim().strip_prefix("psql -h ")?.split_whitespace();
                Some(SocketAddr::new(w.next()?.parse().ok()?, w.nth(1)?.parse().ok()?))
            })
            .collect();
        let admins = head
            .iter()
            .filter_map(|l| l.split("dashboard http://").nth(1)?.split('/').next()?.parse().ok())
            .collect();
        let pg0 = head.iter().find_map(|l| l.trim().strip_prefix("pg0  primary  127.0.0.1:")?.parse().ok());
        let pg0 = pg0.unwrap_or_else(|| panic!("pg0 printed: {head:?}"));
        let dir = head.iter().find_map(|l| Some(l.split("under ").nth(1)?.trim_end_matches(')').to_string()));
        let dir = dir.unwrap_or_else(|| panic!("dir printed: {head:?}"));
        assert!(std::path::Path::new(&dir).exists());
        Demo { proc, psql, admins, pg0, dir, head, rest }
    }

    fn printed(&self, text: &str) -> bool {
        self.head.iter().any(|l| l.contains(text))
    }

    /// Ctrl-C: it exits 0 and removes everything.
    async fn stop(mut self) {
        signal(&self.proc, Signal::SIGINT);
        let rest = self.rest;
        let tail = std::thread::spawn(move || rest.map_while(Result::ok).collect::<Vec<_>>());
        let status = tokio::task::block_in_place(|| wait_exit(&mut self.proc, Duration::from_secs(60)));
        let tail = tail.join().unwrap();
        assert!(tail.iter().any(|l| l.contains("removed")), "{tail:?}");
        assert!(status.success(), "{status:?}");
        assert!(!std::path::Path::new(&self.dir).exists(), "demo removed {}", self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_a_cluster_and_cleans_up() {
    let _one = ONE_DEMO.lock().await;
    let root = nix::unistd::geteuid().is_root();
    if root {
        assert!(!on_lo(DEMO_VIP), "{DEMO_VIP} is on lo before the test");
    }
    let demo = Demo::start(&[], &["demo", "--port", "0", "--standbys", "1", "--failover-after", "3s"]).await;
    // As root, the first psql command is through the VIP, then one per node: their own
    // loopback addresses, one port.
    let entry = demo.psql.first().copied().unwrap_or_else(|| panic!("psql commands printed: {:?}", demo.head));
    if root {
        let ips: Vec<String> = demo.psql.iter().map(|a| a.ip().to_string()).collect();
        assert_eq!(ips, [DEMO_VIP, "127.0.0.11", "127.0.0.12"], "{:?}", demo.head);
        assert!(demo.psql.iter().all(|a| a.port() == entry.port()), "{:?}", demo.psql);
        assert!(on_lo(DEMO_VIP), "the leader added {DEMO_VIP} to lo");
    } else {
        eprintln!("skipping the VIP part of the demo test: not root (adding a VIP needs CAP_NET_ADMIN)");
        assert!(demo.printed("no virtual IP (not root: adding a VIP needs CAP_NET_ADMIN)"), "{:?}", demo.head);
    }
    let c = connect(pg_at(entry)).await.expect("the printed command's parameters work");
    let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(!in_recovery);
    if root {
        // The session through the VIP is on the leader: (sessions, answers /leader) per node.
        let mut seen = Vec::new();
        for admin in &demo.admins {
            let (_, pools) = http_get(*admin, "/pools").await;
            let pools: serde_json::Value = serde_json::from_str(&pools).unwrap_or_else(|e| panic!("{e}: {pools}"));
            seen.push((pools["clients"].as_u64(), http_get(*admin, "/leader").await.0 == 200));
        }
        seen.sort();
        assert_eq!(seen, [(Some(0), false), (Some(1), true)], "the VIP's session went through the leader");
    }
    drop(c);
    // --failover-after 3s: pg0 is killed and the standby promoted; writes go on through
    // the same address (a new session).
    let wrote = eventually(Duration::from_secs(30), || async {
        match connect(pg_at(entry)).await {
            Ok(c) => {
                c.batch_execute("CREATE TABLE IF NOT EXISTS after_failover (x int)").await.is_ok()
                    && c.query_one("/*NO LOAD BALANCE*/ SELECT inet_server_port()", &[]).await.is_ok_and(|r| r.get::<_, i32>(0) != demo.pg0)
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(wrote, "writes go on through {entry} after the demo's failover");
    demo.stop().await;
    assert!(!on_lo(DEMO_VIP), "the demo removed {DEMO_VIP} from lo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_cap_net_admin_runs_without_the_vip() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: not root (this test runs the demo as root without CAP_NET_ADMIN)");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipping: setpriv (util-linux) is missing");
        return;
    }
    let _one = ONE_DEMO.lock().await;
    let demo = Demo::start(&["setpriv", "--bounding-set", "-net_admin", "--"], &["demo", "--port", "0", "--standbys", "1"]).await;
    assert!(demo.printed("no virtual IP (this process lacks CAP_NET_ADMIN, which adding a VIP needs)"), "{:?}", demo.head);
    assert!(!demo.printed(DEMO_VIP), "{:?}", demo.head);
    assert_eq!(demo.psql.len(), 2, "{:?}", demo.head);
    for addr in &demo.psql {
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        let c = connect(pg_at(*addr)).await.unwrap_or_else(|e| panic!("{addr}: {e}"));
        c.batch_execute("SELECT 1").await.unwrap();
    }
    assert!(!on_lo(DEMO_VIP));
    demo.stop().await;
}

#[test]
fn demo_without_postgresql_says_how_to_install_it() {
    let out = Command::new(BIN).arg("demo").env("PGVIGIL_PG_BINDIR", "/nonexistent/pg/bin").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install -y postgresql-15"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_naming_changes_that_need_a_restart() {
    let mut env = Env::start(Options::default()).await;
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(&env.config_path, text.replace("[pool]\n", "[pool]\nsize = 3\n")).unwrap();
    let handle = env.proxy.as_mut().unwrap();
    assert_eq!(handle.reload().unwrap(), vec!["pool.*".to_string()]);
    // Still not applied, so still reported.
    assert_eq!(handle.reload().unwrap(), vec!["pool.*".to_string()]);
    std::fs::write(&env.config_path, text).unwrap();
    assert!(handle.reload().unwrap().is_empty());
}
