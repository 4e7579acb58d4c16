//! TLS between clients and pgvigil: psql (libpq) with sslmode and channel binding, a
//! direct TLS connection with ALPN (PostgreSQL 17's `sslnegotiation=direct`), the
//! "require" mode, and a certificate renewed by a reload without dropping sessions.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use pgvigil::protocol::frame;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for localhost and 127.0.0.1, written as `name.crt` and
/// `name.key` in `dir`. Returns the certificate's DER.
fn write_cert(dir: &Path, name: &str) -> Vec<u8> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), ck.signing_key.serialize_pem()).unwrap();
    ck.cert.der().to_vec()
}

fn tls_section(dir: &Path, mode: &str) -> String {
    format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_mode = \"{mode}\"\n",
        dir.join("server.crt").display().to_string(),
        dir.join("server.key").display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_over_tls_with_channel_binding_and_the_require_mode() {
    let certs = tempfile::tempdir().unwrap();
    write_cert(certs.path(), "server");
    let env = Env::start(Options { extra: tls_section(certs.path(), "require"), ..Options::default() }).await;
    let port = env.addr.port();
    let root = certs.path().join("server.crt").display().to_string();

    // Verified certificate, SCRAM with channel binding required: only SCRAM-SHA-256-PLUS
    // over TLS satisfies libpq.
    let conninfo = format!("host=localhost port={port} user={SUPERUSER} dbname=postgres sslmode=verify-full sslrootcert={root} channel_binding=require");
    let (ok, out, err) = tokio::task::block_in_place(|| psql(&conninfo, "SELECT 'over tls'"));
    assert!(ok, "psql over TLS with channel binding: {err}");
    assert_eq!(out.trim(), "over tls");
    // psql's \conninfo names the TLS protocol in use.
    let (ok, out, err) = tokio::task::block_in_place(|| psql(&conninfo, "\\conninfo"));
    assert!(ok && out.contains("SSL connection (protocol: TLSv1."), "{out} {err}");

    // Without TLS: refused with 28000, as a pg_hba.conf "hostssl" rule would.
    let plain = format!("host=127.0.0.1 port={port} user={SUPERUSER} dbname=postgres sslmode=disable");
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&plain, "SELECT 1"));
    assert!(!ok && err.contains("no encryption"), "{err}");
    let Err(e) = connect(env.pg_config(SUPERUSER, SUPERPASS)).await else { panic!("tokio-postgres without TLS is refused") };
    assert_eq!(sqlstate(&e), "28000", "{e}");
    // sslmode=prefer (libpq's default) upgrades and works.
    let prefer = format!("host=127.0.0.1 port={port} user={SUPERUSER} dbname=postgres sslmode=prefer");
    let (ok, out, err) = tokio::task::block_in_place(|| psql(&prefer, "SELECT 2"));
    assert!(ok && out.trim() == "2", "{err}");
}

/// A TLS client config trusting `root`, with `alpn` protocols.
fn client_config(root: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A direct TLS connection (no SSLRequest first).
async fn direct_tls(env: &Env, root: &[u8], alpn: &[&[u8]]) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(env.addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(root, alpn));
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// Reads the next message.
async fn recv(s: &mut Tls, buf: &mut BytesMut) -> Option<frame::Message> {
    loop {
        if let Some(m) = frame::take_message(buf, 1 << 20).expect("framing") {
            return Some(m);
        }
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf)).await.ok()?;
        if read.ok()? == 0 {
            return None;
        }
    }
}

/// Sends the startup packet and reads up to ReadyForQuery; returns the message tags.
async fn start_session(s: &mut Tls, buf: &mut BytesMut) -> Vec<u8> {
    let mut out = BytesMut::new();
    pgvigil::protocol::startup::write_startup(&mut out, &[("user".into(), SUPERUSER.into()), ("database".into(), "postgres".into())]);
    s.write_all(&out).await.unwrap();
    let mut tags = Vec::new();
    while let Some(m) = recv(s, buf).await {
        tags.push(m.tag);
        if m.tag == b'Z' || m.tag == b'E' {
            break;
        }
    }
    tags
}

async fn query_one(s: &mut Tls, buf: &mut BytesMut, sql: &str) -> Option<String> {
    let mut out = BytesMut::new();
    pgvigil::protocol::frontend::write_query(&mut out, sql);
    s.write_all(&out).await.ok()?;
    let mut value = None;
    while let Some(m) = recv(s, buf).await {
        match m.tag {
            b'D' => {
                let body = &m.body[..];
                let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                value = Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            b'Z' => return value,
            b'E' => return None,
            _ => {}
        }
    }
    None
}

fn peer_cert(s: &Tls) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("server certificate")[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_and_a_certificate_renewed_by_reload() {
    let certs = tempfile::tempdir().unwrap();
    let first = write_cert(certs.path(), "server");
    let env = Env::start(Options { auth_method: "trust", extra: tls_section(certs.path(), "allow"), ..Options::default() }).await;

    // Direct TLS with ALPN "postgresql": a session starts without an SSLRequest.
    let mut s = direct_tls(&env, &first, &[pgvigil::tls::ALPN_POSTGRESQL]).await.expect("direct TLS handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(pgvigil::tls::ALPN_POSTGRESQL));
    let mut buf = BytesMut::new();
    let tags = start_session(&mut s, &mut buf).await;
    assert_eq!(tags.first(), Some(&b'R'));
    assert_eq!(tags.last(), Some(&b'Z'), "{tags:?}");
    assert_eq!(query_one(&mut s, &mut buf, "SELECT 'direct'").await.as_deref(), Some("direct"));

    // Without ALPN, a direct TLS connection is refused after the handshake, as
    // PostgreSQL 17 does.
    let mut bare = direct_tls(&env, &first, &[]).await.expect("handshake");
    let mut bbuf = BytesMut::new();
    let m = recv(&mut bare, &mut bbuf).await.expect("an error");
    assert_eq!(m.tag, b'E');
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert!(text.contains("08P01") && text.contains("ALPN"), "{text}");

    // Plain clients are still welcome in "allow" mode.
    let plain = env.client().await;
    plain.simple_query("SELECT 1").await.unwrap();

    // A renewed certificate, then a reload: new connections get it, the session that
    // started before goes on.
    let second = write_cert(certs.path(), "server");
    assert_ne!(first, second);
    let not_applied = env.handle().shared().reload().expect("reload");
    assert!(not_applied.is_empty(), "TLS settings apply at a reload: {not_applied:?}");
    let s2 = direct_tls(&env, &second, &[pgvigil::tls::ALPN_POSTGRESQL]).await.expect("handshake with the new certificate");
    assert_eq!(peer_cert(&s2), second);
    assert!(direct_tls(&env, &first, &[pgvigil::tls::ALPN_POSTGRESQL]).await.is_err(), "the old certificate is no longer presented");
    assert_eq!(peer_cert(&s), first);
    assert_eq!(query_one(&mut s, &mut buf, "SELECT 'still here'").await.as_deref(), Some("still here"));

    // A broken certificate file at a reload is reported and the working one stays.
    std::fs::write(certs.path().join("server.crt"), "not a certificate").unwrap();
    let e = env.handle().shared().reload().expect_err("a broken certificate is refused");
    assert!(e.to_string().contains("tls.cert_file"), "{e}");
    let s3 = direct_tls(&env, &second, &[pgvigil::tls::ALPN_POSTGRESQL]).await.expect("the loaded certificate is still used");
    assert_eq!(peer_cert(&s3), second);
}

#[test]
fn check_config_names_the_tls_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "server");
    write_cert(dir.path(), "other");
    let check = |tls: &str| {
        check_config(dir.path(), &format!("[auth]\nmethod = \"trust\"\n[[backends]]\nname = \"pg\"\nhost = \"127.0.0.1\"\n{tls}"))
    };
    let (code, out) = check("[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n");
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check("[tls]\ncert_file = \"server.crt\"\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("tls.key_file"), "{out}");
    let (code, out) = check("[tls]\ncert_file = \"server.crt\"\nkey_file = \"other.key\"\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("tls.cert_file / tls.key_file"), "{out}");
    let (code, out) = check("[tls]\ncert_file = \"missing.crt\"\nkey_file = \"server.key\"\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("tls.cert_file") && out.contains("missing.crt"), "{out}");
    let (code, out) = check("[tls]\nclient_mode = \"require\"\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("tls.client_mode"), "{out}");
    let (code, out) = check("[tls]\nclient_mode = \"always\"\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("c.toml:7") && out.contains("expected `allow` or `require`"), "{out}");
}
