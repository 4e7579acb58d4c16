//! No secret leaks: pgvigil runs (as its binary, logging at debug level) with known
//! passwords, an md5 hash, an admin token, a watchdog key and a TLS private key, through
//! logins good and bad, TLS, queries and errors, SHOW commands, every admin GET, actions
//! with missing, wrong and right tokens, `pgvigil ctl` in both output forms, a reload, a
//! failover and a shutdown. Then none of the secrets may appear in its log, in any answer
//! a client got, in `/config`, or in `ctl` output.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pgvigil::cluster::{HbaMethod, LocalCluster};

const SUPER_PW: &str = "Sup3r-s3cret-PW-4417";
const ALICE_PW: &str = "al1ce-pw-ZX9-0215";
const HC_PW: &str = "hc-s3cret-0xC0FFEE-77";
const TOKEN: &str = "adm1n-t0ken-QWERTYUIOP-123456";
const WRONG_TOKEN: &str = "wrong-t0ken-ASDFGHJKL-999999";
const WD_KEY: &str = "wd-k3y-ZXCVBNM-0987654321-secret";

fn md5_hex(s: &str) -> String {
    use md5::Digest;
    format!("{:x}", md5::Md5::digest(s.as_bytes()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_secret(dir: &Path, name: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

fn ctl(admin: SocketAddr, args: &[&str], token_file: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgvigil"));
    cmd.args(["ctl", "--admin", &format!("http://{admin}")]);
    if let Some(f) = token_file {
        cmd.args(["--token-file", f]);
    }
    let out = cmd.args(args).output().unwrap();
    format!("ctl {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn psql(port: u16, user: &str, password: &str, sslmode: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-d", &format!("host=127.0.0.1 port={port} user={user} dbname=postgres sslmode={sslmode}"), "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    format!("psql {user} {sql:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_answers_config_or_ctl_output() {
    let cluster = tokio::task::spawn_blocking(|| {
        LocalCluster::builder().standbys(1).hba(HbaMethod::ScramSha256).superuser_password(SUPER_PW).build()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cluster: {e}"));
    cluster.psql(0, "postgres", &format!("CREATE ROLE alice LOGIN PASSWORD '{ALICE_PW}'")).unwrap();
    cluster.psql(0, "postgres", &format!("CREATE ROLE hc LOGIN SUPERUSER PASSWORD '{HC_PW}'")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let alice_md5 = format!("md5{}", md5_hex(&format!("{ALICE_PW}alice")));
    write_secret(d, "users.toml", &format!("postgres = \"{SUPER_PW}\"\nalice = \"{alice_md5}\"\n"));
    let token_file = write_secret(d, "admin.token", &format!("{TOKEN}\n"));
    let wrong_token_file = write_secret(d, "wrong.token", &format!("{WRONG_TOKEN}\n"));
    write_secret(d, "wd.key", &format!("{WD_KEY}\n"));
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key_pem = ck.signing_key.serialize_pem();
    std::fs::write(d.join("server.crt"), ck.cert.pem()).unwrap();
    write_secret(d, "server.key", &key_pem);

    let (port, admin_port, wd_port, peer_port) = (free_port(), free_port(), free_port(), free_port());
    let mut backends = String::new();
    for i in 0..cluster.len() {
        let n = cluster.node(i);
        backends.push_str(&format!("[[backends]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n", n.name, n.port));
    }
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"admin.token\"\n\
         [auth]\nmethod = \"scram-sha-256\"\nusers_file = \"users.toml\"\n\
         [health_check]\ninterval = \"200ms\"\nuser = \"hc\"\npassword = \"{HC_PW}\"\n\
         [failover]\nuser = \"hc\"\npassword = \"{HC_PW}\"\n\
         [tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n\
         [log]\nlevel = \"debug\"\n\
         [watchdog]\nname = \"a\"\nlisten = \"127.0.0.1:{wd_port}\"\npeers = [ {{ name = \"b\", address = \"127.0.0.1:{peer_port}\" }} ]\n\
         quorum = \"half\"\nauth_key_file = \"wd.key\"\n{backends}"
    );
    let config_path = d.join("pgvigil.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut seen = Vec::new();
    let check = Command::new(env!("CARGO_BIN_EXE_pgvigil")).args(["check-config", "--config"]).arg(&config_path).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    seen.push(String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr));

    let log_path = d.join("pgvigil.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Proc(Command::new(env!("CARGO_BIN_EXE_pgvigil"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap());
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let up = eventually(Duration::from_secs(20), || async { http(admin, "GET", "/primary", None).await.starts_with("HTTP/1.1 200") }).await;
    assert!(up, "pgvigil came up: {}", std::fs::read_to_string(&log_path).unwrap_or_default());

    // Clients: good and bad passwords, TLS, errors, SHOW.
    let run = |args: (&str, &str, &str, &str)| tokio::task::block_in_place(|| psql(port, args.0, args.1, args.2, args.3));
    seen.push(run(("postgres", SUPER_PW, "disable", "SELECT 1")));
    seen.push(run(("postgres", SUPER_PW, "require", "SELECT current_user")));
    seen.push(run(("postgres", SUPER_PW, "disable", "SELECT * FROM no_such_table")));
    seen.push(run(("postgres", SUPER_PW, "disable", "SHOW POOL_NODES")));
    seen.push(run(("postgres", SUPER_PW, "disable", "PGPOOL SHOW ALL")));
    seen.push(run(("postgres", "not-the-password", "disable", "SELECT 1")));
    seen.push(run(("alice", ALICE_PW, "disable", "SELECT 1")));
    seen.push(run(("nobody", SUPER_PW, "disable", "SELECT 1")));

    // Admin API: every GET, actions without, with a wrong and with the right token.
    for path in ["/", "/nodes", "/nodes/pg0", "/pools", "/events", "/config", "/metrics", "/watchdog", "/failover", "/leader", "/health", "/replica"] {
        seen.push(http(admin, "GET", path, None).await);
    }
    seen.push(http(admin, "POST", "/reload", None).await);
    seen.push(http(admin, "POST", "/reload", Some(WRONG_TOKEN)).await);
    let ok = http(admin, "POST", "/reload", Some(TOKEN)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    seen.push(ok);
    let config_answer = http(admin, "GET", "/config", None).await;
    assert!(config_answer.contains("\"<set>\""), "secrets are shown as <set>: {config_answer}");
    seen.push(config_answer);

    // ctl, both output forms, with no, wrong and right tokens.
    let wrong = wrong_token_file.as_str();
    let right = token_file.as_str();
    let ctl_runs: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["nodes"], None),
        (vec!["--json", "nodes"], None),
        (vec!["watchdog"], None),
        (vec!["--json", "watchdog"], None),
        (vec!["pools"], None),
        (vec!["events"], None),
        (vec!["--json", "events"], None),
        (vec!["reload"], None),
        (vec!["reload"], Some(wrong)),
        (vec!["reload"], Some(right)),
        (vec!["--json", "reload"], Some(right)),
        (vec!["detach", "nosuchnode"], Some(right)),
    ];
    for (args, token) in ctl_runs {
        seen.push(tokio::task::block_in_place(|| ctl(admin, &args, token)));
    }

    // A SIGHUP reload and a failover.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    tokio::task::block_in_place(|| {
        let mut cluster = cluster;
        cluster.kill9(0).unwrap();
        let promoted = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            cluster.is_in_recovery(1).ok() == Some(false)
        });
        assert!(promoted, "pg1 promoted: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
        seen.push(psql(port, "postgres", SUPER_PW, "disable", "CREATE TABLE after_failover (id int)"));
        seen.push(ctl(admin, &["events"], None));
        // SIGTERM: a clean stop, logged.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
        let _ = child.0.wait();
        drop(cluster);
    });

    let log_text = std::fs::read_to_string(&log_path).unwrap();
    // The scenarios really ran.
    for needle in ["password authentication failed", "failover_finished", "SIGHUP", "DEBUG"] {
        assert!(log_text.contains(needle), "the log shows {needle:?}");
    }
    assert!(seen.iter().any(|s| s.contains("28P01")) || seen.iter().any(|s| s.contains("password authentication failed")));
    assert!(seen.iter().any(|s| s.contains("401")));

    let key_lines: Vec<&str> = key_pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 20).collect();
    let mut secrets: Vec<(&str, String)> = vec![
        ("superuser password", SUPER_PW.into()),
        ("alice's password", ALICE_PW.into()),
        ("alice's md5 hash", alice_md5.clone()),
        ("health-check password", HC_PW.into()),
        ("admin token", TOKEN.into()),
        ("wrong admin token", WRONG_TOKEN.into()),
        ("watchdog key", WD_KEY.into()),
    ];
    for l in key_lines {
        secrets.push(("TLS private key", l.to_string()));
    }
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        if log_text.contains(secret.as_str()) {
            let line = log_text.lines().find(|l| l.contains(secret.as_str())).unwrap();
            leaks.push(format!("{what} in the log: {line}"));
        }
        for s in &seen {
            if s.contains(secret.as_str()) {
                leaks.push(format!("{what} in an answer: {}", &s[..s.len().min(300)]));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    eprintln!("checked {} secrets against {} bytes of debug log and {} answers", secrets.len(), log_text.len(), seen.len());
}

/// The suite-wide secrets watch (`tests/common/leaks.rs`), which every test that starts
/// pgvigil through `common::Env` runs under, sees what pgvigil logs at any level and the
/// errors tests read, and nothing else: a planted secret fails its check.
#[test]
fn the_suite_wide_watch_catches_a_planted_secret() {
    const PLANTED: &str = "planted-S3cret-5150";
    init_logging();
    leaks::watch(PLANTED);
    let fails = |what: &str| {
        let e = std::panic::catch_unwind(leaks::check).expect_err(what);
        let text = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains(PLANTED), "{what}: {text}");
        text
    };
    tracing::error!(target: "pgvigil::proxy::session", user = "alice", "password {PLANTED}");
    assert!(fails("an error line").contains("pgvigil's log"));
    // At debug, although the test log shows warnings and errors only.
    tracing::debug!(target: "pgvigil::pool", credential = PLANTED, "opened");
    fails("a debug line");
    leaks::scan(&format!("FATAL 28P01 password {PLANTED} is wrong"), "an error a client got");
    assert!(fails("a client error").contains("an error a client got"));
    // The tests' own clients are not pgvigil.
    tracing::error!(target: "tokio_postgres::query", "executing CREATE ROLE a PASSWORD '{PLANTED}'");
    leaks::check();
}
