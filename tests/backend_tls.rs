//! TLS from pgvigil to PostgreSQL (`[tls] backend_tls`, `backend_ca_file`) against real
//! servers with `ssl = on` and certificates from a test CA: which connections arrive
//! over TLS (pg_stat_ssl, the servers' connection log, a TLS-only pg_hba.conf through a
//! failover and a rejoin), certificate and name checks with errors that name the
//! setting, `prefer` against a server without TLS, large COPYs over TLS on both sides.

mod common;
#[path = "common/certs.rs"]
mod certs;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use certs::{give_key_to_server, server_readable_dir, ssl_conf, Ca};
use common::*;
use pgvigil::cluster::{HbaMethod, LocalCluster};
use pgvigil::config::Config;
use pgvigil::pool::{BackendCredential, ConnectError, ServerConn};
use pgvigil::tls::backend::BackendTls;

/// A cluster whose servers accept TLS with `cert` and `key`, plus `conf` lines.
async fn tls_cluster(standbys: usize, cert: &Path, key: &Path, conf: &[&str]) -> LocalCluster {
    init_logging();
    let mut lines = ssl_conf(cert, key);
    lines.extend(conf.iter().map(|l| l.to_string()));
    tokio::task::spawn_blocking(move || {
        let mut b = LocalCluster::builder().standbys(standbys).hba(HbaMethod::ScramSha256).superuser_password(SUPERPASS);
        for l in &lines {
            b = b.conf(l);
        }
        b.build()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("building the test cluster failed: {e}"))
}

/// `[tls]` for pgvigil's side towards PostgreSQL.
fn backend_tls(mode: &str, ca: Option<&Path>) -> String {
    let ca = ca.map(|p| format!("backend_ca_file = {:?}\n", p.display().to_string())).unwrap_or_default();
    format!("[tls]\nbackend_tls = \"{mode}\"\n{ca}")
}

/// `BackendTls` as pgvigil builds it for one backend at `host`.
fn load_tls(mode: &str, ca: Option<&Path>, host: &str) -> BackendTls {
    let text = format!("{}[[backends]]\nname = \"pg0\"\nhost = \"{host}\"\n", backend_tls(mode, ca));
    let config = Config::parse(Path::new("t.toml"), &text).unwrap();
    BackendTls::load(&config).unwrap_or_else(|e| panic!("{e}"))
}

/// A pooled server connection to `port` as pgvigil opens one.
async fn pool_connect(port: u16, tls: &BackendTls) -> Result<ServerConn, ConnectError> {
    let params = [("user".to_string(), SUPERUSER.to_string()), ("database".to_string(), "postgres".to_string())];
    let credential = BackendCredential::Password(SUPERPASS.into());
    ServerConn::connect(0, ([127, 0, 0, 1], port).into(), &params, &credential, Duration::from_secs(10), tls).await
}

/// `check_error` of every backend in the admin API's `GET /nodes`.
async fn check_errors(admin: std::net::SocketAddr) -> Vec<String> {
    let (_, body) = http_get(admin, "/nodes").await;
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    nodes.as_array().into_iter().flatten().map(|n| n["check_error"].as_str().unwrap_or("").to_string()).collect()
}

/// Waits until backend 0's health checks fail with a reason containing every one of
/// `needles`; returns the reason.
async fn wait_check_error(admin: std::net::SocketAddr, needles: &[&str]) -> String {
    let last = &Mutex::new(String::new());
    let found = eventually(Duration::from_secs(20), || async move {
        let reason = check_errors(admin).await.first().cloned().unwrap_or_default();
        let found = needles.iter().all(|n| reason.contains(n));
        *last.lock().unwrap() = reason;
        found
    })
    .await;
    let last = last.lock().unwrap().clone();
    assert!(found, "health check reason with {needles:?}: {last:?}");
    last
}

/// `(ssl, version)` of the sessions on node `i` whose application_name is `app`.
async fn ssl_of(env: &Env, i: usize, app: &str) -> Vec<Vec<String>> {
    let c = env.direct(i).await;
    let sql = format!("SELECT s.ssl::text, coalesce(s.version, '') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{app}'");
    rows(&c, &sql).await.unwrap()
}

/// Replaces node `i`'s pg_hba.conf with one that takes TCP connections over TLS only, and
/// reloads it.
fn tls_only_hba(cluster: &LocalCluster, i: usize) {
    let hba = "local all all trust\nlocal replication all trust\n\
               hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl replication all 127.0.0.1/32 scram-sha-256\n\
               hostnossl all all 127.0.0.1/32 reject\nhostnossl replication all 127.0.0.1/32 reject\n";
    std::fs::write(cluster.node(i).data_dir.join("pg_hba.conf"), hba).unwrap();
    cluster.psql(i, "postgres", "SELECT pg_reload_conf()").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_puts_sessions_checks_cancels_failover_and_rejoin_on_tls() {
    let dir = server_readable_dir();
    let ca = Ca::new("pgvigil test CA");
    let ca_file = ca.write(dir.path(), "ca");
    // Only an IP address as name: verify-full matches the backends' host 127.0.0.1
    // against the certificate's IP address entry.
    let (crt, key) = ca.issue(dir.path(), "server", &["127.0.0.1"]);
    give_key_to_server(&key);
    let cluster = tls_cluster(1, &crt, &key, &["log_connections = on"]).await;
    let extra = backend_tls("verify-full", Some(&ca_file));
    let mut env = Env::start_on(cluster, Options { extra, data_dirs: true, ..Options::default() }).await;
    let shared = env.handle().shared().clone();

    // A session's server connections, on the primary (a write's transaction) and on the
    // standby (a read), arrive over TLS.
    let c = env.client().await;
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    c.batch_execute("CREATE DATABASE app").await.unwrap();
    let on_primary = rows(&c, "BEGIN; INSERT INTO t VALUES (1); SELECT ssl::text, inet_server_port()::text FROM pg_stat_ssl WHERE pid = pg_backend_pid(); COMMIT").await.unwrap();
    assert_eq!(on_primary, [["true".to_string(), env.cluster.node(0).port.to_string()]]);
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    let seen = &Mutex::new(std::collections::BTreeMap::new());
    let env_ref = &env;
    let both = eventually(Duration::from_secs(20), || async move {
        // Reads are balanced per session: new sessions until both nodes served one.
        let s = env_ref.client().await;
        let r = rows(&s, "SELECT inet_server_port()::text, ssl::text, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap();
        let mut seen = seen.lock().unwrap();
        seen.insert(r[0][0].clone(), (r[0][1].clone(), r[0][2].clone()));
        seen.len() == 2
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(both, "sessions on both nodes: {seen:?}");
    assert!(seen.values().all(|(ssl, version)| ssl == "true" && version.starts_with("TLSv1.")), "{seen:?}");
    // Health checks, on both nodes.
    for i in 0..2 {
        let checks = ssl_of(&env, i, "pgvigil health check").await;
        assert!(!checks.is_empty() && checks.iter().all(|r| r[0] == "true"), "node {i}: {checks:?}");
    }

    // A cancel is forwarded over TLS too and stops the query.
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(60)").await });
    env.wait_running(0, "pg_sleep(60)").await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = sleeper.await.unwrap().expect_err("cancelled");
    assert_eq!(sqlstate(&e), "57014", "{e}");

    // From here on the servers take TCP connections over TLS only.
    for i in 0..2 {
        tokio::task::block_in_place(|| tls_only_hba(&env.cluster, i));
    }
    let Err(plain) = connect(pg_at(([127, 0, 0, 1], env.cluster.node(1).port).into())).await else {
        panic!("a connection without TLS is refused now");
    };
    assert!(format!("{plain:?}").contains("no encryption"), "{plain:?}");
    // A new pool (another database) opens new server connections: they work.
    let mut app = env.pg_config(SUPERUSER, SUPERPASS);
    app.dbname("app");
    let a = connect(app).await.unwrap();
    a.batch_execute("CREATE TABLE u (id int); INSERT INTO u VALUES (1)").await.unwrap();

    // kill -9 of the primary: failover connects to the standby to promote it, and the
    // writes go on there.
    tokio::task::block_in_place(|| env.cluster.kill9(0)).unwrap();
    let failed_over = eventually(Duration::from_secs(30), || async {
        let v = shared.view.borrow().clone();
        v.primary() == Some(1) && v.nodes[0].fenced
    })
    .await;
    assert!(failed_over, "the standby was promoted: {:?}", shared.view.borrow());
    let c = env.client().await;
    c.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    let log = std::fs::read_to_string(env.cluster.log_path(1)).unwrap();
    for app in ["pgvigil failover", "pgvigil health check"] {
        assert!(log.contains(&format!("application_name={app} SSL enabled (protocol=TLSv1.")), "{app} over TLS in the server log:\n{log}");
    }

    // The old primary rejoins: pg_rewind connects to the new primary with the same
    // settings (PGSSLMODE, PGSSLROOTCERT) and writes them into primary_conninfo.
    tokio::task::block_in_place(|| env.cluster.start(0)).unwrap();
    assert!(eventually(Duration::from_secs(20), || async { shared.view.borrow().nodes[0].up }).await, "the old primary is back");
    env.rejoin(0).await;
    let conninfo = tokio::task::block_in_place(|| env.cluster.psql(0, "postgres", "SHOW primary_conninfo")).unwrap().replace('\'', "");
    assert!(conninfo.contains("sslmode=verify-full") && conninfo.contains(&format!("sslrootcert={}", ca_file.display())), "{conninfo}");
    let streaming = &format!("streaming|{}", env.cluster.node(1).port);
    let cluster = &env.cluster;
    let streams = eventually(Duration::from_secs(20), || async move {
        let receiver = tokio::task::block_in_place(|| cluster.psql(0, "postgres", "SELECT status, sender_port FROM pg_stat_wal_receiver")).unwrap_or_default();
        receiver.trim() == streaming
    })
    .await;
    assert!(streams, "it streams from the new primary (port {})", env.cluster.node(1).port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_checks_and_errors_that_name_the_setting() {
    let dir = server_readable_dir();
    let ca = Ca::new("pgvigil test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let other_ca = Ca::new("some other CA").write(dir.path(), "other-ca");
    // The certificate names "localhost" only.
    let (crt, key) = ca.issue(dir.path(), "server", &["localhost"]);
    give_key_to_server(&key);
    let (proxy_crt, proxy_key) = ca.issue(dir.path(), "pgvigil", &["localhost"]);
    let cluster = tls_cluster(0, &crt, &key, &[]).await;
    let port = cluster.node(0).port;

    // The pool's own connections, mode by mode.
    let conn = pool_connect(port, &load_tls("verify-ca", Some(&ca_file), "127.0.0.1")).await.expect("verify-ca checks the chain, not the name");
    assert!(conn.stream.is_tls());
    let conn = pool_connect(port, &load_tls("verify-full", Some(&ca_file), "localhost")).await.expect("verify-full: the name is in the certificate");
    assert!(conn.stream.is_tls());
    let e = pool_connect(port, &load_tls("verify-full", Some(&ca_file), "127.0.0.1")).await.err().expect("127.0.0.1 is not a name of the certificate");
    let text = e.to_string();
    assert!(matches!(e, ConnectError::Tls { .. }) && text.contains("not valid for name") && text.contains("[[backends]] host"), "{text}");
    let e = pool_connect(port, &load_tls("verify-full", Some(&other_ca), "localhost")).await.err().expect("signed by another CA");
    let text = e.to_string();
    assert!(text.contains("UnknownIssuer") && text.contains("tls.backend_ca_file"), "{text}");
    let conn = pool_connect(port, &load_tls("require", None, "127.0.0.1")).await.expect("require checks nothing");
    assert!(conn.stream.is_tls());
    let conn = pool_connect(port, &load_tls("disable", None, "127.0.0.1")).await.expect("disable");
    assert!(!conn.stream.is_tls());

    // pgvigil with "require" (and TLS for its own clients): everything works over TLS.
    let extra = format!(
        "{}cert_file = {:?}\nkey_file = {:?}\n",
        backend_tls("require", None),
        proxy_crt.display().to_string(),
        proxy_key.display().to_string()
    );
    let env = Env::start_on(cluster, Options { extra, ..Options::default() }).await;
    let c = env.client().await;
    assert_eq!(rows(&c, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap(), [["true"]]);

    // Large COPYs in and out, TLS on both sides of pgvigil.
    c.batch_execute("CREATE TABLE big (line text)").await.unwrap();
    let conninfo = format!("host=localhost port={} user={SUPERUSER} dbname=postgres sslmode=verify-full sslrootcert={}", env.addr.port(), ca_file.display());
    let copy_in = psql(&conninfo, "\\copy big FROM PROGRAM 'seq 1 2000000'");
    assert_eq!(copy_in.trim(), "COPY 2000000");
    let copy_out = psql(&conninfo, "\\copy (SELECT line, repeat('x', 100) FROM big) TO '/dev/null'");
    assert_eq!(copy_out.trim(), "COPY 2000000");
    assert_eq!(rows(&c, "SELECT count(*)::text, sum(line::int)::text FROM big").await.unwrap(), [["2000000", "2000001000000"]]);

    // Health checks that fail TLS name why: a CA that did not sign the certificate...
    let other = tempfile::tempdir().unwrap();
    let opts = Options { extra: backend_tls("verify-full", Some(&other_ca)), ..Options::default() };
    let (wrong_ca, _) = launch_proxy(&env.cluster, &opts, other.path()).await;
    let reason = wait_check_error(wrong_ca.admin_addr.unwrap(), &["tls.backend_ca_file", "UnknownIssuer"]).await;
    eprintln!("wrong CA: {reason}");
    assert!(!wrong_ca.shared().view.borrow().nodes[0].up);
    wrong_ca.fast_shutdown().await;
    // ...and a host name the certificate does not have.
    let third = tempfile::tempdir().unwrap();
    let opts = Options { extra: backend_tls("verify-full", Some(&ca_file)), ..Options::default() };
    let (wrong_name, _) = launch_proxy(&env.cluster, &opts, third.path()).await;
    let reason = wait_check_error(wrong_name.admin_addr.unwrap(), &["[[backends]] host", "127.0.0.1"]).await;
    eprintln!("wrong name: {reason}");
    wrong_name.fast_shutdown().await;
}

/// psql with `conninfo` running `command`; its output (panics on failure).
fn psql(conninfo: &str, command: &str) -> String {
    let out = tokio::task::block_in_place(|| {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", command])
            .env("PGPASSWORD", SUPERPASS)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql")
    });
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "psql {command}: {stderr}");
    stdout.into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_against_a_server_without_tls_stays_plain_and_require_refuses_it() {
    // The default (prefer) against servers with ssl = off.
    let env = Env::start(Options::default()).await;
    let c = env.client().await;
    assert_eq!(rows(&c, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap(), [["false"]]);
    let checks = ssl_of(&env, 0, "pgvigil health check").await;
    assert!(!checks.is_empty() && checks.iter().all(|r| r[0] == "false"), "{checks:?}");
    let port = env.cluster.node(0).port;
    let conn = pool_connect(port, &load_tls("prefer", None, "127.0.0.1")).await.expect("prefer");
    assert!(!conn.stream.is_tls());

    // A reload does not change it: it is named as needing a restart.
    let mut text = std::fs::read_to_string(&env.config_path).unwrap();
    text.push_str("\n[tls]\nbackend_tls = \"disable\"\n");
    std::fs::write(&env.config_path, text).unwrap();
    let not_applied = env.handle().shared().reload().unwrap();
    assert_eq!(not_applied, ["tls.backend_*"]);
    assert_eq!(env.handle().shared().config().tls.backend_tls, pgvigil::config::BackendTlsMode::Prefer);

    // "require": the pool and the health check refuse, naming the setting.
    let e = pool_connect(port, &load_tls("require", None, "127.0.0.1")).await.err().expect("require refuses plain text");
    let text = e.to_string();
    assert!(text.contains("does not accept TLS") && text.contains("tls.backend_tls = \"require\""), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { extra: backend_tls("require", None), ..Options::default() };
    let (require, _) = launch_proxy(&env.cluster, &opts, dir.path()).await;
    let reason = wait_check_error(require.admin_addr.unwrap(), &["tls.backend_tls", "require"]).await;
    eprintln!("require against ssl = off: {reason}");
    require.fast_shutdown().await;
}

#[test]
fn check_config_names_the_backend_tls_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("pgvigil test CA");
    ca.write(dir.path(), "ca");
    ca.issue(dir.path(), "admin", &["localhost"]);
    ca.issue(dir.path(), "other", &["localhost"]);
    let check = |text: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("[auth]\nmethod = \"trust\"\n[[backends]]\nname = \"pg\"\nhost = \"127.0.0.1\"\n{text}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pgvigil")).args(["check-config", "--config"]).arg(&path).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let ok = |text: &str| {
        let (code, out) = check(text);
        assert_eq!(code, Some(0), "{text}: {out}");
    };
    let fails = |text: &str, needles: &[&str]| {
        let (code, out) = check(text);
        assert_eq!(code, Some(2), "{text}: {out}");
        assert!(needles.iter().all(|n| out.contains(n)), "{text}: {needles:?} in {out}");
    };
    ok("");
    ok("[tls]\nbackend_tls = \"verify-full\"\nbackend_ca_file = \"ca.crt\"\n");
    ok("[admin]\ncert_file = \"admin.crt\"\nkey_file = \"admin.key\"\n");
    fails("[tls]\nbackend_tls = \"verify-ca\"\n", &["tls.backend_tls = \"verify-ca\" needs tls.backend_ca_file"]);
    fails("[tls]\nbackend_ca_file = \"ca.crt\"\n", &["tls.backend_ca_file is only used with", "\"prefer\""]);
    fails("[tls]\nbackend_tls = \"verify-full\"\nbackend_ca_file = \"missing.crt\"\n", &["tls.backend_ca_file", "missing.crt"]);
    fails("[tls]\nbackend_tls = \"verify-full\"\nbackend_ca_file = \"admin.key\"\n", &["tls.backend_ca_file", "no PEM certificate"]);
    fails("[tls]\nbackend_tls = \"always\"\n", &["c.toml:7", "`verify-full`"]);
    fails("[admin]\ncert_file = \"admin.crt\"\n", &["admin.cert_file is set but admin.key_file is not"]);
    fails("[admin]\ncert_file = \"admin.crt\"\nkey_file = \"other.key\"\n", &["admin.cert_file / admin.key_file"]);
}
