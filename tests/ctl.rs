//! `pgvigil ctl` (the binary) against a pgvigil in front of a real primary + 2 standbys.

mod common;

use common::*;

const TOKEN: &str = "ctl-test-token-0123456789abcdef";

/// Runs `pgvigil ctl --admin URL …`; (exit code, stdout, stderr).
fn ctl(admin: std::net::SocketAddr, token: Option<&std::path::Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil"));
    cmd.arg("ctl").arg("--admin").arg(format!("http://{admin}"));
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    let out = tokio::task::block_in_place(|| cmd.args(args).env_remove("PGVIGIL_ADMIN").env_remove("PGVIGIL_TOKEN_FILE").output()).unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    common::leaks::scan(&format!("{stdout}{stderr}"), &format!("ctl {args:?}"));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_json_operations_with_progress_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token-not-the-token").unwrap();
    let extra = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n", token.display().to_string());
    let env = Env::start(Options { standbys: 2, data_dirs: true, extra, ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    let admin = env.handle().admin_addr.unwrap();

    let (code, out, err) = ctl(admin, None, &["nodes"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME  HOST       PORT"), "{out}");
    assert!(lines[1].starts_with("pg0   127.0.0.1") && lines[1].contains(" primary ") && lines[1].contains(" up "), "{out}");
    assert_eq!(lines.len(), 4, "{out}");
    // Columns line up: every row has ROLE where the header has it.
    let col = lines[0].find("ROLE").unwrap();
    assert!(lines[1..].iter().all(|l| &l[col..col + 7] == "primary" || &l[col..col + 7] == "standby"), "{out}");

    let (code, out, _) = ctl(admin, None, &["--json", "nodes"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[1]["name"], "pg1");

    for what in ["pools", "events"] {
        let (code, out, err) = ctl(admin, None, &["--json", what]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json {what}: {e}: {out}"));
        assert!(v.is_object() || v.is_array(), "{out}");
    }
    let (code, out, _) = ctl(admin, None, &["pools"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("client sessions: "), "{out}");

    // Operations: refused without or with a wrong token, with the server's reason.
    let (code, _, err) = ctl(admin, None, &["detach", "pg1"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing bearer token (HTTP 401)"), "{err}");
    let (code, _, err) = ctl(admin, Some(&wrong), &["detach", "pg1"]);
    assert_eq!(code, 1);
    assert!(err.contains("wrong bearer token (HTTP 401)") && !err.contains("not-the-token"), "{err}");
    let (code, _, err) = ctl(admin, Some(&token), &["detach", "pg0"]);
    assert_eq!(code, 1);
    assert!(err.contains("pg0 is the primary") && err.contains("HTTP 409"), "{err}");
    let (code, _, err) = ctl(admin, Some(&token), &["attach", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no backend named \"nope\""), "{err}");

    let (code, out, err) = ctl(admin, Some(&token), &["detach", "pg2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node_detached") && out.trim_end().ends_with("pg2 detached: nothing new is routed to it"), "{out}");
    let (code, out, _) = ctl(admin, Some(&token), &["--json", "attach", "pg2"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["ok"].as_bool(), v["message"].as_str()), (Some(true), Some("pg2 attached")), "{out}");
    let (code, out, err) = ctl(admin, Some(&token), &["--json", "reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["needs_restart"], serde_json::json!([]));
    let (code, out, err) = ctl(admin, Some(&token), &["rejoin", "pg0"]);
    assert_eq!(code, 1, "the primary cannot rejoin: {out}");
    assert!(err.contains("pg0 is the primary"), "{err}");
    let (code, out, _) = ctl(admin, Some(&token), &["promote", "pg0"]);
    assert_eq!(code, 0);
    assert!(out.contains("pg0 is already the primary"), "{out}");

    // A switchover prints its events as they happen, then the outcome.
    let (code, out, err) = ctl(admin, Some(&token), &["switchover", "--to", "pg1"]);
    assert_eq!(code, 0, "{out}{err}");
    let started = out.find("switchover_started").unwrap_or_else(|| panic!("{out}"));
    let promoted = out.find("switchover_promoted").unwrap_or_else(|| panic!("{out}"));
    let finished = out.find("switchover_finished").unwrap_or_else(|| panic!("{out}"));
    assert!(started < promoted && promoted < finished, "{out}");
    assert!(out.trim_end().lines().last().unwrap().starts_with("pg1 is the primary; writes were held"), "{out}");
    assert_eq!(env.handle().shared().view.borrow().primary(), Some(1));

    let (code, out, _) = ctl(admin, None, &["events", "--limit", "5"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 5, "{out}");

    let (code, _, err) = ctl(admin, None, &["watchdog"]);
    assert_eq!(code, 1, "no watchdog endpoint yet: {err}");
    let (code, _, err) = ctl("127.0.0.1:1".parse().unwrap(), None, &["nodes"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the admin API at http://127.0.0.1:1"), "{err}");
}
