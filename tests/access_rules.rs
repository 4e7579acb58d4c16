//! Access rules (`[[auth.hba]]`) and per-user / per-database connection limits against a
//! real PostgreSQL: first match wins, PostgreSQL's refusals (28000, 53300) seen by
//! tokio-postgres and psql, hostssl / hostnossl, addresses (IPv4, IPv6, IPv4-mapped),
//! `cert` with client certificates of a test CA, reloads, and check-config.

// tokio_postgres::Client is not Debug, so `expect_err` is not available.
#![allow(clippy::err_expect)]

mod common;

use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use pgvigil::cluster::PasswordEncryption;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::block_in_place;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// The error a refused login got: (SQLSTATE, message). Panics unless it is a FATAL from
/// the server.
fn refusal(result: Result<tokio_postgres::Client, tokio_postgres::Error>) -> (String, String) {
    let e = result.err().expect("the login is refused");
    let db = e.as_db_error().unwrap_or_else(|| panic!("a server error, got {e}"));
    assert_eq!(db.severity(), "FATAL");
    (db.code().code().to_string(), db.message().to_string())
}

async fn current_user(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT current_user::text", &[]).await.expect("a query in the session").get(0)
}

/// Replaces `from` with `to` in the running configuration file, then reloads it.
fn edit_and_reload(env: &Env, from: &str, to: &str) -> Result<Vec<String>, pgvigil::config::ConfigError> {
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    assert!(text.contains(from), "the configuration holds {from:?}");
    std::fs::write(&env.config_path, text.replace(from, to)).unwrap();
    env.handle().shared().reload()
}

const RULES: &str = r#"
[[auth.hba]]
type = "host"
user = "mallory"
method = "reject"

[[auth.hba]]
type = "host"
user = "mallory"
method = "trust"

[[auth.hba]]
type = "host"
user = "dave"
address = "10.0.0.0/8"
method = "trust"

[[auth.hba]]
type = "host"
user = ["postgres", "carol"]
address = "127.0.0.1/32"
method = "scram-sha-256"
"#;

const RELOADED_RULES: &str = r#"
[[auth.hba]]
type = "host"
user = "carol"
method = "reject"

[[auth.hba]]
type = "host"
user = ["dave", "postgres"]
address = "127.0.0.0/8"
method = "trust"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_matching_rule_decides_and_a_reload_changes_the_rules() {
    let users = vec!["carol = \"c4rol\"".into(), "mallory = \"m4llory\"".into(), "dave = \"d4ve\"".into()];
    let env = Env::start(Options { users, extra: RULES.into(), ..Options::default() }).await;
    for (role, password) in [("carol", "c4rol"), ("dave", "d4ve")] {
        env.cluster.create_role(role, password, PasswordEncryption::ScramSha256).unwrap();
    }

    // The reject rule for mallory comes before the trust rule for mallory.
    let (code, message) = refusal(connect(env.pg_config("mallory", "m4llory")).await);
    assert_eq!(code, "28000");
    assert_eq!(message, "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"mallory\", database \"postgres\", no encryption");
    // carol matches no rule before the scram-sha-256 one: her password is checked.
    let carol = connect(env.pg_config("carol", "c4rol")).await.expect("carol with her password");
    assert_eq!(current_user(&carol).await, "carol");
    assert_eq!(refusal(connect(env.pg_config("carol", "wrong")).await).0, "28P01");
    // dave's only rule is for 10.0.0.0/8, and the test connects from 127.0.0.1.
    let no_entry = "no pg_hba.conf entry for host \"127.0.0.1\", user \"dave\", database \"postgres\", no encryption";
    assert_eq!(refusal(connect(env.pg_config("dave", "d4ve")).await), ("28000".to_string(), no_entry.to_string()));
    let port = env.addr.port();
    let dave = format!("host=127.0.0.1 port={port} user=dave password=d4ve dbname=postgres sslmode=disable");
    let (ok, _, err) = block_in_place(|| psql(&dave, "SELECT 1"));
    assert!(!ok && err.contains(&format!("FATAL:  {no_entry}")), "{err}");

    // A reload: carol is rejected and dave trusted, for new sessions; carol's session
    // goes on.
    assert_eq!(edit_and_reload(&env, RULES, RELOADED_RULES).expect("reload"), Vec::<String>::new());
    assert_eq!(current_user(&carol).await, "carol", "a session that started before the reload goes on");
    let (code, message) = refusal(connect(env.pg_config("carol", "c4rol")).await);
    assert_eq!(code, "28000");
    assert!(message.starts_with("pg_hba.conf rejects connection for host \"127.0.0.1\", user \"carol\""), "{message}");
    let trusted = connect(env.pg_config("dave", "any password")).await.expect("dave is trusted now");
    assert_eq!(current_user(&trusted).await, "dave");
    let (ok, out, err) = block_in_place(|| psql(&dave.replace("d4ve", "x"), "SELECT current_user"));
    assert!(ok && out.trim() == "dave", "{err}");

    // A broken rule at a reload is reported, and the rules in effect stay.
    let e = edit_and_reload(&env, "127.0.0.0/8", "127.0.0.0/33").expect_err("a bad address is refused");
    assert!(e.to_string().starts_with("auth.hba[1].address: \"127.0.0.0/33\""), "{e}");
    connect(env.pg_config("dave", "x")).await.expect("dave is still trusted");
    assert_eq!(refusal(connect(env.pg_config("carol", "c4rol")).await).0, "28000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_of_both_families_and_ipv4_mapped_clients() {
    let env = Env::start(Options::default()).await;
    // On [::] (dual stack), IPv4 clients arrive as ::ffff:a.b.c.d; rules and messages see
    // them as IPv4.
    let rules = r#"
[[auth.hba]]
type = "host"
address = "127.0.0.1"
method = "reject"

[[auth.hba]]
type = "host"
address = "::1/128"
method = "scram-sha-256"
"#;
    let other = env.another_proxy(Options { listen: "[::]:0".parse().unwrap(), extra: rules.into(), ..Options::default() }).await;
    let port = other.addr.port();
    let (code, message) = refusal(connect(pg_at(SocketAddr::from(([127, 0, 0, 1], port)))).await);
    assert_eq!(code, "28000");
    assert_eq!(message, "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption");
    let v6 = connect(pg_at(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port))).await.expect("::1 matches ::1/128");
    assert_eq!(current_user(&v6).await, SUPERUSER);
}

/// A test CA, in a temporary directory with pgvigil's certificate (`server.crt`,
/// `server.key`) and the CA's (`ca.crt`).
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A client certificate and its key.
type Identity = (CertificateDer<'static>, PrivateKeyDer<'static>);

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(DnType::CommonName, "pgvigil test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki { dir: tempfile::tempdir().unwrap(), ca };
        std::fs::write(pki.dir.path().join("ca.crt"), pki.ca.pem()).unwrap();
        pki.issue("server", "localhost", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        pki
    }

    /// Writes `name.crt` and `name.key` (mode 0600, as libpq wants): a certificate for
    /// subject CN `cn` signed by this CA.
    fn issue(&self, name: &str, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Identity {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.ca).unwrap();
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).unwrap();
        let key_path = self.path(&format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    fn client(&self, name: &str, cn: &str) -> Identity {
        self.issue(name, cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// `[tls]` with pgvigil's certificate, and the CA for client certificates when `ca`.
    fn tls_section(&self, ca: bool) -> String {
        let ca = if ca { format!("ca_file = {:?}\n", self.path("ca.crt")) } else { String::new() };
        format!("[tls]\ncert_file = {:?}\nkey_file = {:?}\n{ca}", self.path("server.crt"), self.path("server.key"))
    }

    /// tokio-postgres over TLS trusting this CA, presenting `identity` when given.
    fn connector(&self, identity: Option<Identity>) -> Rustls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Rustls(Arc::new(match identity {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
            None => builder.with_no_client_auth(),
        }))
    }
}

/// TLS for tokio-postgres with rustls (`sslmode=require` in `connect_tls`).
struct Rustls(Arc<rustls::ClientConfig>);

struct RustlsConnect(Arc<rustls::ClientConfig>, ServerName<'static>);

struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl MakeTlsConnect<Socket> for Rustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string()).map_err(io::Error::other)?;
        Ok(RustlsConnect(self.0.clone(), name))
    }
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move { tokio_rustls::TlsConnector::from(self.0).connect(self.1, socket).await.map(RustlsStream) })
    }
}

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Connects with `sslmode=require` over `tls`.
async fn connect_tls(mut config: tokio_postgres::Config, tls: Rustls) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

const TLS_RULES: &str = r#"
[[auth.hba]]
type = "hostssl"
user = "alice"
method = "cert"

[[auth.hba]]
type = "hostnossl"
user = "postgres"
method = "scram-sha-256"

[[auth.hba]]
type = "hostssl"
user = "bob"
method = "scram-sha-256"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostssl_hostnossl_and_client_certificates() {
    let pki = Pki::new();
    let users = vec!["alice = \"al1ce\"".into(), "bob = \"b0b\"".into()];
    let env = Env::start(Options { users, extra: format!("{}{TLS_RULES}", pki.tls_section(true)), ..Options::default() }).await;
    for (role, password) in [("alice", "al1ce"), ("bob", "b0b")] {
        env.cluster.create_role(role, password, PasswordEncryption::ScramSha256).unwrap();
    }
    let port = env.addr.port();
    let conninfo = |user: &str, rest: &str| format!("host=127.0.0.1 port={port} dbname=postgres user={user} {rest}");
    let no_entry = |user: &str, encryption: &str| {
        format!("FATAL:  no pg_hba.conf entry for host \"127.0.0.1\", user \"{user}\", database \"postgres\", {encryption}")
    };

    // The superuser may connect only without TLS (hostnossl), bob only with it (hostssl).
    let (ok, out, err) = block_in_place(|| psql(&conninfo(SUPERUSER, "sslmode=disable"), "SELECT current_user"));
    assert!(ok && out.trim() == SUPERUSER, "{err}");
    let (ok, _, err) = block_in_place(|| psql(&conninfo(SUPERUSER, "sslmode=require"), "SELECT 1"));
    assert!(!ok && err.contains(&no_entry(SUPERUSER, "SSL encryption")), "{err}");
    let (ok, out, err) = block_in_place(|| psql(&conninfo("bob", "password=b0b sslmode=require"), "SELECT current_user"));
    assert!(ok && out.trim() == "bob", "{err}");
    let (ok, _, err) = block_in_place(|| psql(&conninfo("bob", "password=b0b sslmode=disable"), "SELECT 1"));
    assert!(!ok && err.contains(&no_entry("bob", "no encryption")), "{err}");

    // alice authenticates with a certificate of the CA whose CN is "alice"; pgvigil logs
    // in to PostgreSQL with her users-file entry.
    let alice = pki.client("alice", "alice");
    let c = connect_tls(env.pg_config("alice", ""), pki.connector(Some(alice))).await.expect("alice with her certificate");
    assert_eq!(current_user(&c).await, "alice");
    let with_cert = format!("sslmode=require sslcert={} sslkey={}", pki.path("alice.crt"), pki.path("alice.key"));
    let (ok, out, err) = block_in_place(|| psql(&conninfo("alice", &with_cert), "SELECT current_user"));
    assert!(ok && out.trim() == "alice", "psql with a client certificate: {err}");

    // A certificate of the CA for another CN, none at all, one of another CA, no TLS.
    let mallory = pki.client("mallory", "mallory");
    let (code, message) = refusal(connect_tls(env.pg_config("alice", ""), pki.connector(Some(mallory))).await);
    assert_eq!((code.as_str(), message.as_str()), ("28000", "certificate authentication failed for user \"alice\""));
    let (code, message) = refusal(connect_tls(env.pg_config("alice", ""), pki.connector(None)).await);
    assert_eq!((code.as_str(), message.as_str()), ("28000", "connection requires a valid client certificate"));
    let stranger = Pki::new().client("alice", "alice");
    let e = connect_tls(env.pg_config("alice", ""), pki.connector(Some(stranger))).await.err().expect("an unknown CA is refused");
    assert!(e.as_db_error().is_none(), "refused by the TLS handshake, before any session: {e}");
    let (code, message) = refusal(connect(env.pg_config("alice", "al1ce")).await);
    assert_eq!(code, "28000");
    assert_eq!(format!("FATAL:  {message}"), no_entry("alice", "no encryption"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_per_database_limits() {
    let auth = "max_connections_per_user = 5\n[auth.user_limits]\nalice = 2\npostgres = 0\n[auth.database_limits]\nlimited = 3\n";
    let env = Env::start(Options { users: vec!["alice = \"al1ce\"".into()], auth: auth.into(), ..Options::default() }).await;
    env.cluster.create_role("alice", "al1ce", PasswordEncryption::ScramSha256).unwrap();
    env.cluster.psql(0, "postgres", "CREATE DATABASE limited").unwrap();
    let counts = env.handle().shared().session_counts.clone();
    let alice = || env.pg_config("alice", "al1ce");
    let role_full = ("53300".to_string(), "too many connections for role \"alice\"".to_string());

    // Two sessions of alice; the third is refused as PostgreSQL refuses it.
    let first = connect(alice()).await.expect("first session");
    let second = connect(alice()).await.expect("second session");
    assert_eq!(refusal(connect(alice()).await), role_full);
    let port = env.addr.port();
    let conninfo = format!("host=127.0.0.1 port={port} user=alice password=al1ce dbname=postgres");
    let (ok, _, err) = block_in_place(|| psql(&conninfo, "SELECT 1"));
    assert!(!ok && err.contains("FATAL:  too many connections for role \"alice\""), "{err}");
    // Counted after authentication: a wrong password is told so.
    assert_eq!(refusal(connect(env.pg_config("alice", "wrong")).await).0, "28P01");

    // Closing one lets a new one in.
    drop(second);
    assert!(eventually(Duration::from_secs(10), || async { counts.of_user("alice") == 1 }).await, "the closed session is released");
    // A session that fails after it was counted (the backend refuses the database) is
    // released too.
    for _ in 0..3 {
        let mut missing = alice();
        missing.dbname("no_such_db");
        assert_eq!(refusal(connect(missing).await).0, "3D000");
        assert!(eventually(Duration::from_secs(10), || async { counts.of_user("alice") == 1 }).await, "a failed session is released");
    }
    let again = connect(alice()).await.expect("a place is free again");
    assert_eq!(current_user(&again).await, "alice");
    assert_eq!(refusal(connect(alice()).await), role_full);

    // A reload raises alice's limit for new sessions.
    assert_eq!(edit_and_reload(&env, "alice = 2", "alice = 3").expect("reload"), Vec::<String>::new());
    let third = connect(alice()).await.expect("a third session under the new limit");
    assert_eq!(refusal(connect(alice()).await), role_full);

    // Three sessions on "limited" (the superuser has no limit of its own), not a fourth;
    // other databases are not affected.
    let limited = || {
        let mut c = env.pg_config(SUPERUSER, SUPERPASS);
        c.dbname("limited");
        c
    };
    let mut on_limited = Vec::new();
    for _ in 0..3 {
        on_limited.push(connect(limited()).await.expect("a session on limited"));
    }
    let (code, message) = refusal(connect(limited()).await);
    assert_eq!((code.as_str(), message.as_str()), ("53300", "too many connections for database \"limited\""));
    env.client().await.simple_query("SELECT 1").await.expect("another database");
    on_limited.pop();
    assert!(eventually(Duration::from_secs(10), || async { counts.of_database("limited") == 2 }).await);
    on_limited.push(connect(limited()).await.expect("a place on limited is free again"));
    for c in [&first, &again, &third] {
        assert_eq!(current_user(c).await, "alice", "sessions within the limits go on");
    }
}

#[test]
fn check_config_names_the_rule_at_fault() {
    let pki = Pki::new();
    let base = "[auth]\nmethod = \"trust\"\n[[backends]]\nname = \"pg\"\nhost = \"127.0.0.1\"\n";
    let check = |tls: &str, rule: &str| {
        let text = format!("{base}{tls}[[auth.hba]]\ntype = \"host\"\nmethod = \"trust\"\n[[auth.hba]]\n{rule}\n");
        check_config(pki.dir.path(), &text)
    };
    let (code, out) = check(&pki.tls_section(true), "type = \"hostssl\"\nuser = [\"a\", \"b\"]\naddress = \"fd00::/8\"\nmethod = \"cert\"");
    assert_eq!(code, Some(0), "{out}");
    let cases = [
        ("", "type = \"host\"\naddress = \"10.0.0.0/33\"\nmethod = \"trust\"", "auth.hba[1].address: \"10.0.0.0/33\""),
        ("", "type = \"host\"\naddress = \"db.example.com\"\nmethod = \"trust\"", "auth.hba[1].address: \"db.example.com\""),
        ("", "type = \"host\"\nmethod = \"ldap\"", "auth.hba[1].method: \"ldap\" is not"),
        ("", "type = \"hostgssenc\"\nmethod = \"trust\"", "auth.hba[1].type: \"hostgssenc\" is not"),
        ("", "type = \"local\"\nmethod = \"trust\"", "auth.hba[1].type: \"local\" (Unix-domain socket) rules need proxy.unix_socket_dir"),
        ("[proxy]\nunix_socket_dir = \"/tmp\"\n", "type = \"local\"\naddress = \"127.0.0.1\"\nmethod = \"trust\"", "auth.hba[1].address: \"127.0.0.1\": a \"local\" rule has no address"),
        ("[proxy]\nunix_socket_permissions = \"0778\"\n", "type = \"host\"\nmethod = \"trust\"", "proxy.unix_socket_permissions: \"0778\" is not an octal mode"),
        ("", "type = \"host\"\nuser = \"+admins\"\nmethod = \"trust\"", "auth.hba[1].user: \"+admins\""),
        ("", "type = \"hostssl\"\nmethod = \"trust\"", "auth.hba[1].type: \"hostssl\" needs tls.cert_file"),
        (&pki.tls_section(false), "type = \"hostssl\"\nmethod = \"cert\"", "auth.hba[1].method: \"cert\" needs tls.ca_file"),
        (&pki.tls_section(true), "type = \"host\"\nmethod = \"cert\"", "auth.hba[1].method: \"cert\" needs type = \"hostssl\""),
        ("", "type = \"host\"\nmethod = \"md5\"", "auth.users_file is required when auth.hba[1].method is \"md5\""),
    ];
    for (tls, rule, expected) in cases {
        let (code, out) = check(tls, rule);
        assert_eq!(code, Some(2), "{rule}: {out}");
        assert!(out.contains(expected), "{rule}: {out}");
    }
    // A misspelt key is named with its line.
    let (code, out) = check("", "type = \"host\"\nadress = \"10.0.0.0/8\"\nmethod = \"trust\"");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("c.toml:11:") && out.contains("adress"), "{out}");
}

const LOCAL_RULES: &str = r#"
[[auth.hba]]
type = "local"
user = "postgres"
method = "trust"

[[auth.hba]]
type = "host"
method = "scram-sha-256"
"#;

/// `proxy.unix_socket_dir`: pgvigil also listens on `.s.PGSQL.<port>` there, replacing a
/// stale socket file and refusing to start beside a live one; `local` rules match its
/// clients, and only them; the file goes at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_and_local_rules() {
    let sockets = tempfile::tempdir().unwrap();
    let dir = sockets.path().display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = sockets.path().join(format!(".s.PGSQL.{port}"));
    // A socket file left by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let proxy = format!("unix_socket_dir = {dir:?}\nunix_socket_permissions = \"0770\"");
    let users = vec!["carol = \"c4rol\"".into()];
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut env = Env::start(Options { users, proxy, extra: LOCAL_RULES.into(), listen, ..Options::default() }).await;
    env.cluster.create_role("carol", "c4rol", PasswordEncryption::ScramSha256).unwrap();
    assert_eq!(env.handle().unix_socket(), Some(path.as_path()));
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o770);

    // Over the socket the superuser is trusted (a wrong password does not matter); over
    // TCP the host rule asks for the password.
    let local = format!("host={dir} port={port} user=postgres password=wrong dbname=postgres");
    let (ok, out, err) = block_in_place(|| psql(&local, "SELECT current_user"));
    assert!(ok && out.trim() == "postgres", "{err}");
    let tcp = format!("host=127.0.0.1 port={port} user=postgres password=wrong dbname=postgres sslmode=disable");
    let (ok, _, err) = block_in_place(|| psql(&tcp, "SELECT 1"));
    assert!(!ok && err.contains("password authentication failed for user \"postgres\""), "{err}");
    // carol has no local rule: PostgreSQL's words, with "[local]".
    let (ok, _, err) = block_in_place(|| psql(&local.replace("user=postgres password=wrong", "user=carol password=c4rol"), "SELECT 1"));
    let no_entry = "no pg_hba.conf entry for host \"[local]\", user \"carol\", database \"postgres\", no encryption";
    assert!(!ok && err.contains(no_entry), "{err}");
    let carol = connect(env.pg_config("carol", "c4rol")).await.expect("carol over TCP");
    assert_eq!(current_user(&carol).await, "carol");

    // A second pgvigil with the same socket: refused, naming the key and the path.
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.2:{port}"));
    let second = env.dir.path().join("second.toml");
    std::fs::write(&second, text).unwrap();
    let out = block_in_place(|| std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil")).args(["run", "--config"]).arg(&second).output().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("proxy.unix_socket_dir: cannot listen on {}: another server is listening on it", path.display())), "{err}");
    let (ok, _, err) = block_in_place(|| psql(&local, "SELECT 1"));
    assert!(ok, "the first pgvigil still serves its socket: {err}");

    // With TLS required of clients (a reload), the socket still serves without TLS, as a
    // PostgreSQL socket does, and answers 'N' to an SSLRequest; TCP without TLS is refused.
    let pki = Pki::new();
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(&env.config_path, format!("{}client_mode = \"require\"\n{text}", pki.tls_section(false))).unwrap();
    assert_eq!(env.handle().shared().reload().expect("reload"), Vec::<String>::new());
    let (ok, out, err) = block_in_place(|| psql(&local, "SELECT current_user"));
    assert!(ok && out.trim() == "postgres", "{err}");
    // (libpq never asks for TLS on a socket: an SSLRequest by hand.)
    let mut raw = tokio::net::UnixStream::connect(&path).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    assert_eq!(raw.read_u8().await.unwrap(), b'N');
    drop(raw);
    let (ok, _, err) = block_in_place(|| psql(&tcp.replace("user=postgres password=wrong", "user=carol password=c4rol"), "SELECT 1"));
    assert!(!ok && err.contains("no encryption"), "{err}");

    drop(carol);
    env.proxy.take().unwrap().shutdown(Duration::from_secs(5)).await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
}
