//! Shared test support: a real PostgreSQL cluster with pgvigil in front, and a raw
//! protocol client for byte-level checks.
#![allow(dead_code)]

pub mod leaks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use pgvigil::cluster::{HbaMethod, LocalCluster};
use pgvigil::config::Config;
use pgvigil::pool::{BackendCredential, ConnectError, ServerConn};
use pgvigil::protocol::backend::{self, ServerError};
use pgvigil::protocol::frame::{self, Message};
use pgvigil::protocol::frontend;
use pgvigil::proxy::{self, ProxyHandle};
use pgvigil::tls::stream::MaybeTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SUPERUSER: &str = "postgres";
/// Distinctive, so that the secrets watch ([`leaks`]) can look for it everywhere.
pub const SUPERPASS: &str = "Sup3r-pw-7c1e";

/// What to build.
pub struct Options {
    pub standbys: usize,
    pub hba: HbaMethod,
    /// `[auth] method`.
    pub auth_method: &'static str,
    /// More `[auth]` lines.
    pub auth: String,
    /// Users file lines, e.g. `alice = "secret"`. The superuser is always added.
    pub users: Vec<String>,
    /// Extra TOML appended to the config (after the generated sections; use whole sections).
    pub extra: String,
    /// Text for the `[pool]` section.
    pub pool: String,
    /// Text for the `[proxy]` section besides `listen`.
    pub proxy: String,
    /// List the standbys before the primary in `[[backends]]`.
    pub primary_last: bool,
    /// `weight` of each backend by node index (empty: none given, so 1 each).
    pub weights: Vec<f64>,
    /// More `[[backends]]` lines by node index (e.g. `no_failover = true`).
    pub backend_extra: Vec<String>,
    /// More `[health_check]` lines.
    pub health_check: String,
    /// Give every backend its `data_dir` (so pgvigil can rejoin it).
    pub data_dirs: bool,
    /// `proxy.listen`.
    pub listen: SocketAddr,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            standbys: 0,
            hba: HbaMethod::ScramSha256,
            auth_method: "scram-sha-256",
            auth: String::new(),
            users: Vec::new(),
            extra: String::new(),
            pool: String::new(),
            proxy: String::new(),
            primary_last: false,
            weights: Vec::new(),
            backend_extra: Vec::new(),
            health_check: String::new(),
            data_dirs: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// A cluster with pgvigil running in-process in front of it.
pub struct Env {
    pub proxy: Option<ProxyHandle>,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
    // Dropped last: stops the servers.
    pub cluster: LocalCluster,
}

/// Logs to stderr at `TEST_LOG` (default warn), and feeds pgvigil's events at debug to
/// the secrets watch ([`leaks`]). Once per process; later calls do nothing.
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let _ = tracing_subscriber::registry().with(text_log()).with(leaks::layer()).try_init();
}

/// The tests' log on stderr, at `TEST_LOG` (default warn).
pub fn text_log<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    let level = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false).with_filter(tracing_subscriber::EnvFilter::new(level))
}

/// Builds a cluster in a blocking thread.
pub async fn build_cluster(standbys: usize, hba: HbaMethod) -> LocalCluster {
    tokio::task::spawn_blocking(move || {
        LocalCluster::builder().standbys(standbys).hba(hba).superuser_password(SUPERPASS).build()
    })
    .await
    .expect("cluster build task")
    .unwrap_or_else(|e| panic!("building the test cluster failed: {e}"))
}

impl Env {
    pub async fn start(opts: Options) -> Env {
        init_logging();
        let cluster = build_cluster(opts.standbys, opts.hba).await;
        Self::start_on(cluster, opts).await
    }

    /// Starts pgvigil in front of an existing cluster.
    pub async fn start_on(cluster: LocalCluster, opts: Options) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let (handle, config_path) = start_proxy(&cluster, &opts, dir.path()).await;
        let addr = handle.local_addr;
        Env { proxy: Some(handle), addr, config_path, dir, cluster }
    }

    /// Another pgvigil in front of the same cluster, with its own configuration (the
    /// `standbys` and `hba` options are ignored). Stopped when dropped.
    pub async fn another_proxy(&self, opts: Options) -> OtherProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let (handle, _) = start_proxy(&self.cluster, &opts, dir.path()).await;
        OtherProxy { addr: handle.local_addr, handle: Some(handle), _dir: dir }
    }

    pub fn pg_config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1").port(self.addr.port()).user(user).password(password).dbname("postgres");
        c.connect_timeout(Duration::from_secs(10));
        c
    }

    /// A tokio-postgres client through pgvigil as the superuser.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(self.pg_config(SUPERUSER, SUPERPASS)).await.expect("connect through pgvigil")
    }

    /// A tokio-postgres client straight to node `i`.
    pub async fn direct(&self, i: usize) -> tokio_postgres::Client {
        let n = self.cluster.node(i);
        let mut c = tokio_postgres::Config::new();
        c.host(&n.host).port(n.port).user(SUPERUSER).password(SUPERPASS).dbname("postgres");
        connect(c).await.expect("connect directly")
    }

    pub fn handle(&self) -> &ProxyHandle {
        self.proxy.as_ref().expect("proxy running")
    }
}

/// Writes the config for `opts` into `dir` and starts pgvigil on it; waits for a primary.
async fn start_proxy(cluster: &LocalCluster, opts: &Options, dir: &std::path::Path) -> (ProxyHandle, PathBuf) {
    let (handle, config_path) = launch_proxy(cluster, opts, dir).await;
    assert!(handle.wait_for_primary(Duration::from_secs(20)).await, "pgvigil found no primary");
    (handle, config_path)
}

/// Writes the config for `opts` into `dir` and starts pgvigil on it, without waiting
/// for anything.
pub async fn launch_proxy(cluster: &LocalCluster, opts: &Options, dir: &std::path::Path) -> (ProxyHandle, PathBuf) {
    let mut users = format!("{SUPERUSER} = \"{SUPERPASS}\"\n");
    for u in &opts.users {
        users.push_str(u);
        users.push('\n');
    }
    std::fs::write(dir.join("users.toml"), users).expect("write users file");
    let mut order: Vec<usize> = (0..cluster.len()).collect();
    if opts.primary_last {
        order.rotate_left(1);
    }
    let mut backends = String::new();
    for i in order {
        let n = cluster.node(i);
        backends.push_str(&format!("[[backends]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\n", n.name, n.host, n.port));
        if let Some(w) = opts.weights.get(i) {
            backends.push_str(&format!("weight = {w:?}\n"));
        }
        if opts.data_dirs {
            backends.push_str(&format!("data_dir = {:?}\n", n.data_dir.display().to_string()));
        }
        if let Some(extra) = opts.backend_extra.get(i) {
            backends.push_str(extra);
            backends.push('\n');
        }
        backends.push('\n');
    }
    // Tests run many pgvigils at once: an admin listener on any free port.
    let admin = if opts.extra.contains("[admin]") { "" } else { "[admin]\nlisten = \"127.0.0.1:0\"\n" };
    let text = format!(
        "{admin}[proxy]\nlisten = \"{}\"\n{}\n\n[pool]\n{}\n\n[auth]\nmethod = \"{}\"\nusers_file = \"users.toml\"\n{}\n\n\
         [health_check]\ninterval = \"200ms\"\nuser = \"{SUPERUSER}\"\n{}\n\n{}\n{}",
        opts.listen,
        opts.proxy, opts.pool, opts.auth_method, opts.auth, opts.health_check, opts.extra, backends
    );
    let config_path = dir.join("pgvigil.toml");
    std::fs::write(&config_path, &text).expect("write config");
    leaks::watch(SUPERPASS);
    leaks::watch_config(&text, dir);
    let config = Config::load(&config_path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let handle = proxy::start(config, Some(config_path.clone())).await.expect("start pgvigil");
    (handle, config_path)
}

/// A second pgvigil in front of an [`Env`]'s cluster.
pub struct OtherProxy {
    pub addr: SocketAddr,
    pub handle: Option<ProxyHandle>,
    _dir: tempfile::TempDir,
}

/// A client configuration for `addr` as the superuser.
pub fn pg_at(addr: SocketAddr) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string()).port(addr.port()).user(SUPERUSER).password(SUPERPASS).dbname("postgres");
    c.connect_timeout(Duration::from_secs(10));
    c
}

impl OtherProxy {
    pub fn pg_config(&self) -> tokio_postgres::Config {
        pg_at(self.addr)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(self.pg_config()).await.expect("connect through the other pgvigil")
    }

    pub fn handle(&self) -> &ProxyHandle {
        self.handle.as_ref().expect("proxy running")
    }
}

impl Drop for Env {
    /// Fails the test if pgvigil showed a secret: in its log (in-process, or a binary's
    /// `*.log` in the test's directory) or in an error a test read.
    fn drop(&mut self) {
        if let Ok(files) = std::fs::read_dir(self.dir.path()) {
            for f in files.flatten().filter(|f| f.path().extension().is_some_and(|e| e == "log")) {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                text.lines().for_each(|l| leaks::scan(l, &f.path().display().to_string()));
            }
        }
        leaks::check();
    }
}

impl Drop for OtherProxy {
    fn drop(&mut self) {
        leaks::check();
        if let Some(h) = self.handle.take() {
            // Sessions end with the runtime; stop the accept loop and the monitor now.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(h.fast_shutdown());
            }
        }
    }
}

pub async fn connect(config: tokio_postgres::Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs psql with `conninfo` and `sql` (the superuser's password in PGPASSWORD; a
/// `password` in `conninfo` wins); returns (success, stdout, stderr).
pub fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql])
        .env("PGPASSWORD", SUPERPASS)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    leaks::scan(&stderr, "psql's messages");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// Writes `text` as `dir/c.toml` and runs `pgvigil check-config` on it; returns the exit
/// code and the output (stdout and stderr).
pub fn check_config(dir: &std::path::Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("c.toml");
    std::fs::write(&path, text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil")).args(["check-config", "--config"]).arg(&path).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The SQLSTATE of a tokio-postgres error, or "" when it has none.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let text = format!("{} {} {}", db.message(), db.detail().unwrap_or(""), db.hint().unwrap_or(""));
        leaks::scan(&text, "an error a client got");
    }
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// A client speaking raw protocol, for byte-level and bad-input tests.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub pid: i32,
    pub secret: i32,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Raw { stream, buf: BytesMut::new(), pid: 0, secret: 0 }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next message, or None at EOF (10 s limit).
    pub async fn recv(&mut self) -> Option<Message> {
        let read = async {
            loop {
                if let Some(m) = frame::take_message(&mut self.buf, 1 << 30).expect("server framing") {
                    return Some(m);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("server answered within 10 s")
    }

    /// Reads until an ErrorResponse and returns its fields; panics on EOF first.
    pub async fn expect_error(&mut self) -> ServerError {
        loop {
            let m = self.recv().await.expect("an ErrorResponse before EOF");
            if m.tag == b'E' {
                return backend::parse_error_fields(&m.body).expect("error fields");
            }
        }
    }

    /// True when the server closes the connection (within 10 s).
    pub async fn expect_eof(&mut self) -> bool {
        self.recv().await.is_none()
    }

    /// Startup + authentication as `user` (database "postgres") with pgvigil's own
    /// backend-side login; returns the logged-in client and the ParameterStatus values.
    pub async fn login(self, user: &str, password: &str) -> Result<(Raw, Vec<(String, String)>), ServerError> {
        let params = [("user".to_string(), user.to_string()), ("database".to_string(), "postgres".to_string())];
        let credential = BackendCredential::Password(password.to_string());
        let addr = self.stream.peer_addr().expect("peer address");
        match ServerConn::login(MaybeTls::Plain(self.stream), addr, 0, &params, &credential, Duration::from_secs(10)).await {
            Ok(conn) => {
                let MaybeTls::Plain(stream) = conn.stream else { panic!("a plain connection stays plain") };
                let raw = Raw { stream, buf: conn.buf, pid: conn.pid, secret: conn.secret };
                Ok((raw, conn.params))
            }
            Err(ConnectError::Server { error, .. }) => {
                let text = format!("{} {} {}", error.message, error.detail.as_deref().unwrap_or(""), error.hint.as_deref().unwrap_or(""));
                leaks::scan(&text, "an error a client got");
                Err(*error)
            }
            Err(e) => panic!("login failed outside the server: {e}"),
        }
    }

    /// Sends a simple query and collects every message up to ReadyForQuery.
    pub async fn simple_query(&mut self, sql: &str) -> Vec<Message> {
        let mut out = BytesMut::new();
        frontend::write_query(&mut out, sql);
        self.send(&out).await;
        self.until_ready().await
    }

    pub async fn until_ready(&mut self) -> Vec<Message> {
        let mut all = Vec::new();
        loop {
            let m = self.recv().await.expect("message before ReadyForQuery");
            let done = m.tag == b'Z';
            all.push(m);
            if done {
                return all;
            }
        }
    }
}

/// The values of the DataRows in `messages` as text (first column).
pub fn first_column(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let b = &m.body;
            let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
            String::from_utf8_lossy(&b[6..6 + len as usize]).into_owned()
        })
        .collect()
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Peak resident memory of the process, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Env {
    /// Stops the in-process proxy and runs the `pgvigil` binary on the same config
    /// instead, on a free port; `self.addr` then points at it. Its stderr goes to `log`.
    pub async fn switch_to_binary(&mut self, log: &std::path::Path) -> Proc {
        if let Some(h) = self.proxy.take() {
            h.fast_shutdown().await;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = std::fs::read_to_string(&self.config_path).unwrap().replace("[proxy]\nlisten = \"127.0.0.1:0\"", &format!("[proxy]\nlisten = \"127.0.0.1:{port}\""));
        std::fs::write(&self.config_path, &text).unwrap();
        let proc = Proc(
            std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil"))
                .args(["run", "--config"])
                .arg(&self.config_path)
                .env("RUST_LOG", "info")
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
        );
        self.addr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = eventually(Duration::from_secs(20), || async { connect(self.pg_config(SUPERUSER, SUPERPASS)).await.is_ok() }).await;
        assert!(up, "pgvigil run came up");
        proc
    }
}

impl Env {
    /// Asks for node `i`'s rejoin and waits until it is a standby again: up, not fenced.
    /// Panics with the rejoin log when it is not within 90 s.
    pub async fn rejoin(&self, i: usize) {
        let shared = self.handle().shared();
        shared.failover.request_rejoin(i);
        let rejoined = eventually(Duration::from_secs(90), || async {
            let v = shared.view.borrow().clone();
            let n = &v.nodes[i];
            n.up && !n.fenced && n.role == pgvigil::monitor::Role::Standby
        })
        .await;
        let log = std::fs::read_to_string(self.cluster.node(i).data_dir.join("pgvigil-rejoin.log")).unwrap_or_default();
        assert!(rejoined, "{:?}\nrejoin log:\n{log}", shared.view.borrow().nodes[i]);
    }

    /// Waits until a query containing `needle` is running on node `i`.
    pub async fn wait_running(&self, i: usize, needle: &str) {
        let direct = self.direct(i).await;
        let running = eventually(Duration::from_secs(10), || async {
            let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
                    &[&needle],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            n > 0
        })
        .await;
        assert!(running, "{needle} is running");
    }
}

/// NOTICE texts a connection received, in order.
#[derive(Clone, Default)]
pub struct Notices(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Notices {
    /// Everything received so far; the list starts over.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Connects and keeps the NOTICEs the server sends. A notice sent before a statement's
/// answer is recorded before the statement's call returns.
pub async fn connect_with_notices(config: tokio_postgres::Config) -> (tokio_postgres::Client, Notices) {
    use futures_util::StreamExt;
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await.expect("connect");
    let notices = Notices::default();
    let sink = notices.clone();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                sink.0.lock().unwrap().push(n.message().to_string());
            }
        }
    });
    (client, notices)
}

impl Env {
    /// The port node `i` listens on, as `inet_server_port()` reports it.
    pub fn port(&self, i: usize) -> i32 {
        i32::from(self.cluster.node(i).port)
    }

    /// The node index listening on `port`.
    pub fn node_of(&self, port: i32) -> usize {
        (0..self.cluster.len()).find(|&i| self.port(i) == port).unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// True once node `s` is in recovery and its WAL receiver streams from node `p`
    /// (`pg_stat_wal_receiver`), within 30 s.
    pub async fn streams_from(&self, s: usize, p: usize) -> bool {
        let c = self.direct(s).await;
        let port = self.port(p);
        eventually(Duration::from_secs(30), || async {
            match c.query_opt("SELECT sender_port, status, pg_is_in_recovery() FROM pg_stat_wal_receiver", &[]).await {
                Ok(Some(r)) => {
                    r.get::<_, Option<i32>>(0) == Some(port) && r.get::<_, Option<String>>(1).as_deref() == Some("streaming") && r.get::<_, bool>(2)
                }
                _ => false,
            }
        })
        .await
    }

    /// Waits until every standby has replayed everything the primary wrote so far.
    pub async fn wait_replicated(&self) {
        let primary = self.direct(0).await;
        let lsn: String = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
        for i in 1..self.cluster.len() {
            let standby = self.direct(i).await;
            let done = eventually(Duration::from_secs(30), || async {
                standby
                    .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn])
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false)
            })
            .await;
            assert!(done, "standby {i} replayed up to {lsn}");
        }
    }
}

/// Waits until `proxy`'s monitor sees every other node as an up standby less than
/// `max_lag` bytes behind (so each can take reads).
pub async fn wait_standbys_eligible(proxy: &ProxyHandle, max_lag: u64) {
    let view = proxy.shared().view.clone();
    let ok = || {
        let v = view.borrow();
        v.primary().is_some()
            && (0..v.nodes.len()).filter(|&i| Some(i) != v.primary()).all(|i| {
                v.nodes[i].up
                    && v.nodes[i].role == pgvigil::monitor::Role::Standby
                    && v.replay_lag_bytes(i).is_some_and(|l| l < max_lag)
                    && v.replay_lag_time(i).is_some_and(|t| t < Duration::from_secs(1))
            })
    };
    let done = eventually(Duration::from_secs(30), || async { ok() }).await;
    assert!(done, "standbys eligible for reads: {:?}", view.borrow());
}

/// Rows of every result of a simple-protocol query, as text.
pub async fn rows(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).unwrap_or("").to_string()).collect());
        }
    }
    Ok(out)
}

/// The first column of the last row of `sql`'s results as an int (callers put
/// `inet_server_port()` there). Panics on an error.
pub async fn port_of(c: &tokio_postgres::Client, sql: &str) -> i32 {
    let r = rows(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let row = r.last().unwrap_or_else(|| panic!("{sql}: no rows"));
    row[0].parse().unwrap_or_else(|_| panic!("{sql}: not a port: {row:?}"))
}

/// SHOW POOL_NODES through pgvigil, one map per node.
pub async fn pool_nodes(c: &tokio_postgres::Client) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut out = Vec::new();
    for m in c.simple_query("SHOW POOL_NODES").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let cols = r.columns().iter().map(|c| c.name().to_string());
            out.push(cols.enumerate().map(|(i, name)| (name, r.get(i).unwrap_or("").to_string())).collect());
        }
    }
    out
}


/// Sessions that insert one row with a unique id (`session * 1_000_000 + n`) into
/// `w (id bigint PRIMARY KEY)` every 10 ms through pgvigil, keeping the ids PostgreSQL
/// acknowledged and the errors (`SQLSTATE message`) it answered.
pub struct WriteLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<i64>>>,
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteLoad {
    pub async fn start(env: &Env, sessions: i64) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for s in 0..sessions {
            let client = env.client().await;
            let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let id = s * 1_000_000 + n;
                    n += 1;
                    match client.execute("INSERT INTO w (id) VALUES ($1)", &[&id]).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(e) => {
                            let text = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
                            errors.lock().unwrap().push(format!("{} {text}", sqlstate(&e)));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        Self { stop, acked, errors, tasks }
    }

    /// Number of acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The errors so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Stops the sessions; the acknowledged ids and the number of errors.
    pub async fn finish(self) -> (std::collections::BTreeSet<i64>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let errors = self.errors.lock().unwrap().len() as u64;
        (acked, errors)
    }
}

/// Runs pgbench against `port` as the superuser; fails the test on a non-zero exit.
/// Returns stdout and stderr.
pub fn pgbench(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", SUPERPASS)
        .output()
        .expect("run pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// One HTTP/1.1 GET: (status, body); (0, "") when nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return (0, String::new()) };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// `ip -4 addr show dev lo` lists `ip`.
pub fn on_lo(ip: &str) -> bool {
    let out = std::process::Command::new("ip").args(["-4", "addr", "show", "dev", "lo"]).output().expect("ip (iproute2)");
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/"))
}
