//! The admin HTTP API against a real primary + 2 standbys.

mod common;
#[path = "common/certs.rs"]
mod certs;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-admin-token-0123456789";

/// One HTTP/1.1 request; (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    common::leaks::scan(&body, &format!("the answer to {method} {path}"));
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_health_endpoints_and_token_protected_operations() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n\n[failover]\nautomatic = false\npassword = {SUPERPASS:?}\n\n[rejoin]\nbasebackup_command = \"PGPASSWORD={SUPERPASS} true\"\n",
        token_file.display().to_string()
    );
    let mut env = Env::start(Options { standbys: 2, data_dirs: true, extra, ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    let admin = env.handle().admin_addr.expect("admin listener");

    let (status, body) = http(admin, "GET", "/nodes", None, "").await;
    assert_eq!(status, 200, "{body}");
    let nodes = json(&body);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0]["name"], "pg0");
    assert_eq!(nodes[0]["role"], "primary");
    assert_eq!(nodes[0]["status"], "up");
    assert_eq!(nodes[0]["port"], env.cluster.node(0).port);
    assert_eq!(nodes[1]["role"], "standby");
    assert!(nodes[1]["lag_bytes"].as_u64().is_some(), "{body}");
    assert_eq!(nodes[1]["upstream"], format!("127.0.0.1:{}", env.cluster.node(0).port));
    let (status, body) = http(admin, "GET", "/nodes/pg2", None, "").await;
    assert_eq!((status, json(&body)["name"].as_str()), (200, Some("pg2")));
    let (status, body) = http(admin, "GET", "/nodes/nope", None, "").await;
    assert_eq!(status, 404);
    assert!(body.contains("backends: pg0, pg1, pg2"), "{body}");

    let c = env.client().await;
    c.query_one("SELECT 1", &[]).await.unwrap();
    let (status, body) = http(admin, "GET", "/pools", None, "").await;
    assert_eq!(status, 200, "{body}");
    let pools = json(&body);
    assert!(pools["clients"].as_u64().unwrap() >= 1, "{body}");
    let mine = pools["pools"].as_array().unwrap().iter().find(|p| p["node"] == "pg0" && p["user"] == SUPERUSER).unwrap_or_else(|| panic!("{body}"));
    assert!(mine["in_use"].as_u64().unwrap() >= 1, "{body}");
    drop(c);

    // The configuration in effect, secrets redacted.
    let (status, body) = http(admin, "GET", "/config", None, "").await;
    assert_eq!(status, 200, "{body}");
    let cfg = json(&body);
    assert_eq!(cfg["failover"]["automatic"], false);
    assert_eq!(cfg["health_check"]["interval"], "200ms");
    assert_eq!(cfg["failover"]["max_lag"], "1MB");
    assert_eq!(cfg["backends"][1]["name"], "pg1");
    assert_eq!(cfg["admin"]["token_file"], token_file.display().to_string());
    assert_eq!(cfg["failover"]["password"], "<set>");
    assert_eq!(cfg["rejoin"]["basebackup_command"], "<set>");
    assert!(!body.contains(TOKEN) && !body.contains("PGPASSWORD"), "no secret in /config: {body}");

    // Metrics: Prometheus text with the families and values the cluster has now.
    let c = env.client().await;
    for _ in 0..5 {
        c.query_one("SELECT 1", &[]).await.unwrap();
    }
    let (status, text) = http(admin, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    for want in [
        "pgvigil_backend_up{node=\"pg0\"} 1\n",
        "pgvigil_backend_role{node=\"pg0\",role=\"primary\"} 1\n",
        "pgvigil_backend_role{node=\"pg1\",role=\"standby\"} 1\n",
        "pgvigil_backend_fenced{node=\"pg0\"} 0\n",
        "# TYPE pgvigil_query_duration_seconds histogram\n",
        "pgvigil_query_duration_seconds_bucket{le=\"+Inf\"} ",
        "# TYPE pgvigil_statements_routed_total counter\n",
        "pgvigil_cluster_writable 1\n",
        "pgvigil_failover_state{state=\"idle\"} 1\n",
        "pgvigil_pool_checkout_wait_seconds_count ",
        "pgvigil_backend_replication_lag_bytes{node=\"pg1\"} ",
        "pgvigil_statements_total{node=\"pg0\",kind=\"insert\"} ",
        "pgvigil_backend_errors_total{node=\"pg0\",severity=\"error\"} ",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    let count = |text: &str, name: &str| -> f64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    assert!(count(&text, "pgvigil_query_duration_seconds_count") >= 5.0, "{text}");
    assert!(count(&text, "pgvigil_client_received_bytes_total") > 0.0);
    assert!(count(&text, "pgvigil_client_connections_total") >= 2.0);
    let reads: f64 = text.lines().filter(|l| l.starts_with("pgvigil_reads_routed_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    assert!(reads >= 5.0, "{text}");
    // Every sample line belongs to a family declared before it.
    let mut declared = std::collections::HashSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            declared.insert(rest.split(' ').next().unwrap().to_string());
        } else if !l.starts_with('#') {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f))).unwrap_or(name);
            assert!(declared.contains(family), "{l}");
        }
    }
    drop(c);

    for path in ["/primary", "/replica", "/replica?lag=16MB", "/read-only", "/health", "/leader"] {
        let (status, body) = http(admin, "GET", path, None, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        let (status, _) = http(admin, "HEAD", path, None, "").await;
        assert_eq!(status, 200, "HEAD {path}");
    }
    let (status, _) = http(admin, "GET", "/replica?lag=nonsense", None, "").await;
    assert_eq!(status, 400);

    // Operations need the token; the refusal never echoes it.
    let (status, body) = http(admin, "POST", "/nodes/pg1/detach", None, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(admin, "POST", "/nodes/pg1/detach", Some("wrong-token-wrong-token"), "").await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("wrong-token"), "{body}");
    assert!(!env.handle().shared().view.borrow().nodes[1].detached);
    let (status, body) = http(admin, "POST", "/nodes/pg1/frobnicate", Some(TOKEN), "").await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = http(admin, "POST", "/nodes/pg1/detach", Some(TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["ok"], true);
    let (_, body) = http(admin, "GET", "/nodes/pg1", None, "").await;
    assert_eq!(json(&body)["status"], "detached");
    let (status, body) = http(admin, "POST", "/nodes/pg0/detach", Some(TOKEN), "").await;
    assert_eq!(status, 409);
    assert!(json(&body)["error"].as_str().unwrap().contains("pg0 is the primary"), "{body}");
    let (status, body) = http(admin, "POST", "/nodes/pg1/attach", Some(TOKEN), "").await;
    assert_eq!(status, 200, "{body}");

    // Switchover through the API, with a bad body first.
    let (status, body) = http(admin, "POST", "/switchover", Some(TOKEN), "{\"too\": \"pg2\"}").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(admin, "POST", "/switchover", Some(TOKEN), "{\"to\": \"pg9\"}").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(admin, "POST", "/switchover", Some(TOKEN), "{\"to\": \"pg2\"}").await;
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["message"].as_str().unwrap().starts_with("pg2 is the primary"), "{body}");
    let (_, body) = http(admin, "GET", "/nodes/pg2", None, "").await;
    assert_eq!(json(&body)["role"], "primary");
    let (status, body) = http(admin, "GET", "/events", None, "").await;
    assert_eq!(status, 200);
    let events = json(&body);
    let names: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    for want in ["node_up", "node_detached", "node_attached", "switchover_started", "switchover_promoted", "switchover_finished"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let finished = events.as_array().unwrap().iter().find(|e| e["event"] == "switchover_finished").unwrap();
    assert_eq!(finished["node"], "pg2");
    assert!(finished["fields"]["paused_ms"].as_u64().is_some(), "{finished}");
    let last = events.as_array().unwrap().last().unwrap()["seq"].as_u64().unwrap();
    let (_, body) = http(admin, "GET", &format!("/events?since={}", last - 1), None, "").await;
    assert_eq!(json(&body).as_array().unwrap().len(), 1);

    // Reload: the file is re-read (a change that needs a restart is named).
    let (status, body) = http(admin, "POST", "/reload", Some(TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["needs_restart"], serde_json::json!([]));

    // /primary answers 503 when no write can be routed.
    tokio::task::block_in_place(|| env.cluster.kill9(2)).unwrap();
    let gone = eventually(Duration::from_secs(20), || async { http(admin, "GET", "/primary", None, "").await.0 == 503 }).await;
    assert!(gone, "/primary is 503 once the primary is down (failover.automatic = false)");
    let manual = eventually(Duration::from_secs(10), || async { json(&http(admin, "GET", "/failover", None, "").await.1)["state"] == "manual" }).await;
    assert!(manual, "{}", http(admin, "GET", "/failover", None, "").await.1);
    assert_eq!(json(&http(admin, "GET", "/failover", None, "").await.1)["promotions"], 1, "the switchover's promotion");
    let (_, text) = http(admin, "GET", "/metrics", None, "").await;
    assert!(text.contains("pgvigil_cluster_writable 0\n") && text.contains("pgvigil_failovers_total 1\n"), "{text}");
    assert!(text.contains("pgvigil_failover_state{state=\"manual\"} 1\n"), "{text}");
    assert!(!text.contains("pgvigil_failover_last_duration_seconds 0\n"), "the switchover's duration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_operations_are_refused() {
    let env = Env::start(Options { standbys: 1, ..Options::default() }).await;
    let admin = env.handle().admin_addr.expect("admin listener");
    let (status, body) = http(admin, "POST", "/switchover", Some("anything-at-all-here"), "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.token_file"), "{body}");
    assert_eq!(env.handle().shared().view.borrow().primary(), Some(0));
}

/// One HTTPS/1.1 request trusting the CA in `ca_file`, to the name "localhost"; (status,
/// body), (0, "") when the TLS handshake fails.
async fn https(addr: SocketAddr, method: &str, path: &str, ca_file: &Path, token: Option<&str>) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut s) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await else {
        return (0, String::new());
    };
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // The server may close without a TLS close_notify: keep what arrived.
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    common::leaks::scan(&body, &format!("the answer to {method} {path} over HTTPS"));
    (status, body)
}

/// `pgvigil ctl --admin URL ARGS…`; (exit code, stdout, stderr).
fn ctl(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil"));
    cmd.args(["ctl", "--admin", url]).args(args);
    for var in ["PGVIGIL_ADMIN", "PGVIGIL_TOKEN_FILE", "PGVIGIL_CA_FILE"] {
        cmd.env_remove(var);
    }
    let out = tokio::task::block_in_place(|| cmd.output()).unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    common::leaks::scan(&format!("{stdout}{stderr}"), &format!("ctl {args:?}"));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_admin_api_is_https_only_and_ctl_trusts_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::new("admin CA");
    let ca_file = ca.write(dir.path(), "ca");
    let other_ca = certs::Ca::new("another CA").write(dir.path(), "other-ca");
    let (crt, key) = ca.issue(dir.path(), "admin", &["localhost", "127.0.0.1"]);
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    let extra = format!("[admin]\nlisten = \"127.0.0.1:0\"\ncert_file = {}\nkey_file = {}\ntoken_file = {}\n", quoted(&crt), quoted(&key), quoted(&token));
    let env = Env::start(Options { extra, ..Options::default() }).await;
    let admin = env.handle().admin_addr.expect("admin listener");

    // Reads, the dashboard and an operation (behind the token, which also needs the
    // peer's address) over HTTPS.
    let (status, body) = https(admin, "GET", "/nodes", &ca_file, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)[0]["name"], "pg0");
    let (status, body) = https(admin, "GET", "/", &ca_file, None).await;
    assert!(status == 200 && body.contains("<title>pgvigil</title>"), "{status} {body}");
    assert_eq!(https(admin, "POST", "/reload", &ca_file, None).await.0, 401);
    let (status, body) = https(admin, "POST", "/reload", &ca_file, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    // A client that does not trust the certificate's CA, and plain HTTP: no answer.
    assert_eq!(https(admin, "GET", "/nodes", &other_ca, None).await.0, 0);
    let (status, body) = http_get(admin, "/nodes").await;
    assert!(status == 0 && !body.contains("pg0"), "plain HTTP answered: {status} {body}");

    // pgvigil ctl: https:// with --ca-file, by IP address or name.
    for url in [format!("https://{admin}"), format!("https://localhost:{}", admin.port())] {
        let (code, out, err) = ctl(&url, &["--ca-file", &ca_file.display().to_string(), "nodes"]);
        assert_eq!(code, 0, "{url}: {err}");
        assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("pg0 ") && l.contains(" primary ")), "{out}");
    }
    let url = format!("https://{admin}");
    let (code, _, err) = ctl(&url, &["nodes"]);
    assert!(code != 0 && err.contains("--ca-file"), "without --ca-file: {err}");
    let (code, _, err) = ctl(&url, &["--ca-file", &other_ca.display().to_string(), "nodes"]);
    assert!(code != 0 && err.contains("TLS handshake") && err.contains("UnknownIssuer"), "another CA: {err}");
    let (code, _, err) = ctl(&format!("http://{admin}"), &["--ca-file", &ca_file.display().to_string(), "nodes"]);
    assert!(code != 0 && err.contains("--ca-file is for an https://"), "http:// with --ca-file: {err}");
    let (code, _, err) = ctl(&format!("http://{admin}"), &["nodes"]);
    assert!(code != 0, "plain HTTP to the HTTPS listener: {err}");
}
