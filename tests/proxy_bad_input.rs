//! Bad input from clients: each gets the right SQLSTATE and closes only its own
//! connection; a session opened before keeps working.

// tokio_postgres::Client is not Debug, so `expect_err` is not available.
#![allow(clippy::err_expect)]

mod common;

use bytes::BytesMut;
use common::*;
use pgvigil::protocol::startup::write_startup;

async fn env() -> Env {
    Env::start(Options { proxy: "startup_timeout = \"3s\"\nmax_message_size = \"64kB\"".into(), ..Options::default() }).await
}

async fn still_works(c: &tokio_postgres::Client) {
    let r = c.query_one("SELECT 40 + 2", &[]).await.expect("the bystander session still works");
    assert_eq!(r.get::<_, i32>(0), 42);
}

async fn expect(raw: &mut Raw, code: &str) -> String {
    let e = raw.expect_error().await;
    assert_eq!(e.code, code, "{e}");
    assert_eq!(e.severity, "FATAL", "{e}");
    assert!(raw.expect_eof().await, "connection closed after the error");
    e.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_phase_errors() {
    let env = env().await;
    let bystander = env.client().await;

    // Declared length under the minimum.
    let mut raw = Raw::connect(env.addr).await;
    raw.send(&[0, 0, 0, 3, 0, 3, 0, 0]).await;
    assert_eq!(expect(&mut raw, "08P01").await, "invalid length of startup packet");
    still_works(&bystander).await;

    // Declared length over PostgreSQL's startup limit: rejected before reading it.
    let mut raw = Raw::connect(env.addr).await;
    raw.send(&[0x7f, 0xff, 0xff, 0xff]).await;
    expect(&mut raw, "08P01").await;

    // Parameters without the final terminator.
    let mut raw = Raw::connect(env.addr).await;
    raw.send(b"\0\0\0\x16\0\x03\0\0user\0postgres").await;
    raw.send(b"\0").await;
    let msg = expect(&mut raw, "08P01").await;
    assert!(msg.contains("startup packet layout"), "{msg}");
    still_works(&bystander).await;

    // Protocol 2.0 is not supported.
    let mut raw = Raw::connect(env.addr).await;
    raw.send(b"\0\0\0\x17\0\x02\0\0user\0postgres\0\0").await;
    let msg = expect(&mut raw, "0A000").await;
    assert!(msg.starts_with("unsupported frontend protocol 2.0"), "{msg}");

    // No user name.
    let mut raw = Raw::connect(env.addr).await;
    let mut out = BytesMut::new();
    write_startup(&mut out, &[("database".into(), "postgres".into())]);
    raw.send(&out).await;
    assert_eq!(expect(&mut raw, "28000").await, "no PostgreSQL user name specified in startup packet");

    // Never finishing startup: startup_timeout (3s) ends it.
    let mut raw = Raw::connect(env.addr).await;
    raw.send(&[0, 0]).await;
    let msg = expect(&mut raw, "08P01").await;
    assert!(msg.contains("timeout"), "{msg}");

    // SSLRequest and GSSENCRequest are answered 'N', then startup proceeds.
    let mut raw = Raw::connect(env.addr).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    let mut n = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut n).await.unwrap();
    assert_eq!(&n, b"N");
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await;
    tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut n).await.unwrap();
    assert_eq!(&n, b"N");
    let _raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;

    // Wrong message during authentication.
    let mut raw = Raw::connect(env.addr).await;
    out.clear();
    write_startup(&mut out, &[("user".into(), SUPERUSER.into())]);
    raw.send(&out).await;
    let m = raw.recv().await.unwrap();
    assert_eq!(m.tag, b'R');
    raw.send(b"Q\0\0\0\x0dSELECT 1\0").await;
    expect(&mut raw, "08P01").await;

    // A client that disconnects mid-startup leaves no trace.
    let mut raw = Raw::connect(env.addr).await;
    raw.send(&[0, 0, 0, 40, 0, 3]).await;
    drop(raw);
    still_works(&bystander).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_minor_version_and_protocol_options_are_negotiated() {
    let env = env().await;
    let mut raw = Raw::connect(env.addr).await;
    let mut out = BytesMut::new();
    write_startup(&mut out, &[("user".into(), SUPERUSER.into()), ("_pq_.fancy".into(), "1".into())]);
    out[6..8].copy_from_slice(&2u16.to_be_bytes()); // protocol 3.2
    raw.send(&out).await;
    let m = raw.recv().await.unwrap();
    assert_eq!(m.tag, b'v', "NegotiateProtocolVersion first");
    assert_eq!(&m.body[..4], &[0, 3, 0, 0]);
    assert_eq!(&m.body[4..8], &[0, 0, 0, 1]);
    assert_eq!(&m.body[8..], b"_pq_.fancy\0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_phase_errors() {
    let env = env().await;
    let bystander = env.client().await;

    // Length under 4.
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    raw.send(b"Q\0\0\0\x02").await;
    expect(&mut raw, "08P01").await;
    still_works(&bystander).await;

    // Length over proxy.max_message_size (64kB): refused from the header alone.
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    raw.send(b"Q\x10\0\0\0").await;
    let msg = expect(&mut raw, "08P01").await;
    assert!(msg.contains("exceeds the limit"), "{msg}");
    still_works(&bystander).await;

    // Unknown message type.
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    raw.send(b"z\0\0\0\x04").await;
    assert_eq!(expect(&mut raw, "08P01").await, "invalid frontend message type 122");
    still_works(&bystander).await;

    // A valid query right before the bad message is answered first.
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    raw.send(b"Q\0\0\0\x0dSELECT 1\0").await;
    let answered = raw.until_ready().await;
    assert_eq!(first_column(&answered), vec!["1".to_string()]);
    raw.send(b"\x01\0\0\0\x04").await;
    expect(&mut raw, "08P01").await;

    // Disconnect in the middle of a message.
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    raw.send(b"Q\0\0\0\x40SELECT pg_sl").await;
    drop(raw);
    still_works(&bystander).await;
    // And new sessions still work.
    env.client().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_reached() {
    let env = Env::start(Options { proxy: "max_clients = 2".into(), ..Options::default() }).await;
    let a = env.client().await;
    let _b = env.client().await;
    let e = connect(env.pg_config(SUPERUSER, SUPERPASS)).await.err().expect("third client refused");
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "53300");
    assert_eq!(db.message(), "sorry, too many clients already");
    still_works(&a).await;
    drop(a);
    // A freed slot is usable again.
    let ok = eventually(std::time::Duration::from_secs(5), || async {
        connect(env.pg_config(SUPERUSER, SUPERPASS)).await.is_ok()
    })
    .await;
    assert!(ok, "a slot freed by a closed client is reused");
}
