//! Shutdown, reload, check-config and the demo, through the library and the binary.

// tokio_postgres::Client is not Debug, so `expect_err` is not available.
#![allow(clippy::err_expect)]

mod common;

use std::io::{BufRead, BufReader};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_a_cluster_and_cleans_up() {
    let mut proc = Proc(
        Command::new(BIN)
            .args(["demo", "--port", "0", "--standbys", "1", "--failover-after", "3s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = proc.0.stdout.take().unwrap();
    let (port, dir, pg0, rest) = tokio::task::spawn_blocking(move || {
        let mut port = None;
        let mut dir = None;
        let mut pg0 = None;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix("psql -h 127.0.0.1 -p ") {
                port = rest.split_whitespace().next().and_then(|p| p.parse::<u16>().ok());
            }
            if let Some(rest) = line.trim().strip_prefix("pg0  primary  127.0.0.1:") {
                pg0 = rest.trim().parse::<i32>().ok();
            }
            if let Some(rest) = line.split("under ").nth(1) {
                dir = Some(rest.trim_end_matches(')').to_string());
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        (port.expect("psql command printed"), dir.expect("dir printed"), pg0.expect("pg0 printed"), lines)
    })
    .await
    .unwrap();
    assert!(std::path::Path::new(&dir).exists());
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user("postgres").dbname("postgres");
    let c = connect(cfg).await.expect("the printed command's parameters work");
    let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(!in_recovery);
    drop(c);
    // --failover-after 3s: pg0 is killed and the standby promoted; writes go on through
    // the same port (a new session).
    let wrote = eventually(Duration::from_secs(30), || async {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1").port(port).user("postgres").dbname("postgres");
        match connect(cfg).await {
            Ok(c) => {
                c.batch_execute("CREATE TABLE IF NOT EXISTS after_failover (x int)").await.is_ok()
                    && c.query_one("/*NO LOAD BALANCE*/ SELECT inet_server_port()", &[]).await.is_ok_and(|r| r.get::<_, i32>(0) != pg0)
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(wrote, "writes go on after the demo's failover");
    signal(&proc, Signal::SIGINT);
    let tail = std::thread::spawn(move || rest.map_while(Result::ok).collect::<Vec<_>>());
    let status = wait_exit(&mut proc, Duration::from_secs(60));
    let tail = tail.join().unwrap();
    assert!(tail.iter().any(|l| l.contains("removed")), "{tail:?}");
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(&dir).exists(), "demo removed {dir}");
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
