//! The wire protocol through pgvigil, driven by tokio-postgres and a raw client against a
//! real PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use pgvigil::protocol::startup::write_cancel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_extended_prepared_pipeline_transactions_errors() {
    let env = Env::start(Options::default()).await;
    let mut c = env.client().await;

    // Simple protocol, several statements in one string.
    let msgs = c.simple_query("SELECT 1 AS a, 'x' AS b; SELECT generate_series(1,3)").await.unwrap();
    let rows = msgs.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
    assert_eq!(rows, 4);
    // Empty query.
    let msgs = c.simple_query("").await.unwrap();
    assert!(!msgs.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));

    // Extended protocol, unnamed statement with parameters.
    let r = c.query_one("SELECT $1::int + 1, $2::text", &[&41i32, &"hi"]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 42);
    assert_eq!(r.get::<_, &str>(1), "hi");

    // Named prepared statement, executed many times.
    let st = c.prepare("SELECT $1::text || '!'").await.unwrap();
    for i in 0..20 {
        let r = c.query_one(&st, &[&i.to_string()]).await.unwrap();
        assert_eq!(r.get::<_, String>(0), format!("{i}!"));
    }

    // A pipeline of 100 queries in flight at once on one connection.
    let futures = (0..100i32).map(|i| {
        let c = &c;
        async move { c.query_one("SELECT $1::int * 2", &[&i]).await.map(|r| r.get::<_, i32>(0)) }
    });
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32 * 2);
    }

    // Transactions: rollback discards, commit keeps.
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    // An error, then more work in the same session, in both protocols.
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let e = c.query_one("SELECT 1/$1::int", &[&0i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    // An error inside a transaction aborts it until ROLLBACK.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.batch_execute("SELECT nope").await.is_err());
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    let r = c.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 7);

    // FunctionCall ('F') through the raw client: int4pl(20, 22).
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    let tags: Vec<u8> = raw.simple_query("").await.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"IZ", "EmptyQueryResponse, then ReadyForQuery");
    let oid: u32 = c.query_one("SELECT 'int4pl'::regproc::oid", &[]).await.unwrap().get(0);
    let mut f = BytesMut::new();
    let at = pgvigil::protocol::frame::begin(&mut f, b'F');
    f.extend_from_slice(&oid.to_be_bytes());
    f.extend_from_slice(&1i16.to_be_bytes()); // one format code
    f.extend_from_slice(&1i16.to_be_bytes()); // binary
    f.extend_from_slice(&2i16.to_be_bytes()); // two arguments
    for v in [20i32, 22] {
        f.extend_from_slice(&4i32.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&1i16.to_be_bytes()); // binary result
    pgvigil::protocol::frame::finish(&mut f, at);
    raw.send(&f).await;
    let msgs = raw.until_ready().await;
    let v = msgs.iter().find(|m| m.tag == b'V').expect("FunctionCallResponse");
    assert_eq!(&v.body[..], &[0, 0, 0, 4, 0, 0, 0, 42]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_portals_flush_and_pipelined_errors() {
    let env = Env::start(Options::default()).await;
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    let mut out = BytesMut::new();
    // Named statement and portal, Execute with a row limit, then Flush (no Sync): the
    // partial result and PortalSuspended must arrive without waiting for a Sync.
    put(&mut out, b'P', &[b"s1\0" as &[u8], b"SELECT generate_series(1,5)\0", &0i16.to_be_bytes()]);
    put(&mut out, b'B', &[b"p1\0" as &[u8], b"s1\0", &0i16.to_be_bytes(), &0i16.to_be_bytes(), &0i16.to_be_bytes()]);
    put(&mut out, b'E', &[b"p1\0" as &[u8], &2i32.to_be_bytes()]);
    put(&mut out, b'H', &[]);
    raw.send(&out).await;
    let mut tags = Vec::new();
    while tags.last() != Some(&b's') {
        tags.push(raw.recv().await.expect("partial result after Flush").tag);
    }
    assert_eq!(tags, b"12DDs");
    // Resume the portal, then Sync.
    out.clear();
    put(&mut out, b'E', &[b"p1\0" as &[u8], &0i32.to_be_bytes()]);
    put(&mut out, b'S', &[]);
    raw.send(&out).await;
    let tags: Vec<u8> = raw.until_ready().await.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"DDDCZ");

    // A pipelined batch where the second statement fails: the third must not run.
    out.clear();
    for sql in ["INSERT INTO pipe VALUES (1)", "SELECT 1/0", "INSERT INTO pipe VALUES (3)"] {
        let q = format!("{sql}\0");
        put(&mut out, b'P', &[b"\0" as &[u8], q.as_bytes(), &0i16.to_be_bytes()]);
        put(&mut out, b'B', &[b"\0" as &[u8], b"\0", &0i16.to_be_bytes(), &0i16.to_be_bytes(), &0i16.to_be_bytes()]);
        put(&mut out, b'E', &[b"\0" as &[u8], &0i32.to_be_bytes()]);
    }
    put(&mut out, b'S', &[]);
    raw.simple_query("CREATE TABLE pipe (id int)").await;
    raw.send(&out).await;
    let msgs = raw.until_ready().await;
    assert!(msgs.iter().any(|m| m.tag == b'E'));
    let rows = first_column(&raw.simple_query("SELECT count(*) FROM pipe").await);
    assert_eq!(rows, vec!["0".to_string()], "the failed pipeline is one implicit transaction");
}

fn put(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let at = pgvigil::protocol::frame::begin(out, tag);
    for p in parts {
        out.extend_from_slice(p);
    }
    pgvigil::protocol::frame::finish(out, at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_one_million_rows_in_and_out_text_and_binary() {
    let env = Env::start(Options::default()).await;
    let c = env.client().await;
    c.batch_execute("CREATE TABLE big (id int, name text); CREATE TABLE big2 (id int, name text)").await.unwrap();

    let sink = c.copy_in("COPY big FROM STDIN").await.unwrap();
    pin_mut!(sink);
    let mut chunk = String::new();
    for i in 0..1_000_000 {
        chunk.push_str(&format!("{i}\tname {i}\n"));
        if chunk.len() > 64 * 1024 {
            sink.send(Bytes::from(std::mem::take(&mut chunk))).await.unwrap();
        }
    }
    sink.send(Bytes::from(chunk)).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 1_000_000);

    let stream = c.copy_out("COPY big TO STDOUT").await.unwrap();
    pin_mut!(stream);
    let (mut lines, mut sum) = (0u64, 0u64);
    let mut partial = Vec::new();
    while let Some(data) = stream.try_next().await.unwrap() {
        partial.extend_from_slice(&data);
        while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=nl).collect();
            let id: u64 = std::str::from_utf8(&line[..line.iter().position(|&b| b == b'\t').unwrap()]).unwrap().parse().unwrap();
            sum += id;
            lines += 1;
        }
    }
    assert_eq!(lines, 1_000_000);
    assert_eq!(sum, 999_999 * 1_000_000 / 2);

    // Binary COPY out, fed back in through pgvigil.
    let out = c.copy_out("COPY big TO STDOUT (FORMAT binary)").await.unwrap();
    let data: Vec<Bytes> = out.try_collect().await.unwrap();
    let sink = c.copy_in("COPY big2 FROM STDIN (FORMAT binary)").await.unwrap();
    pin_mut!(sink);
    for d in data {
        sink.send(d).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 1_000_000);
    let r = c.query_one("SELECT count(*), sum(id) FROM big2 WHERE name = 'name ' || id", &[]).await.unwrap();
    assert_eq!(r.get::<_, i64>(0), 1_000_000);

    // A COPY that fails midway leaves the session usable.
    let sink = c.copy_in::<_, Bytes>("COPY big2 FROM STDIN").await.unwrap();
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\n")).await.unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&e), "22P02");
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gigabyte_result_streams_with_bounded_memory() {
    let mut env = Env::start(Options::default()).await;
    let log = env.dir.path().join("pgvigil.log");
    let proc = env.switch_to_binary(&log).await;
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    let before = proc.peak_rss_kib();
    // 1 GiB of rows plus one 64 MB row, read and dropped message by message.
    let sql = "SELECT repeat('x', 1024) FROM generate_series(1, 1048576) UNION ALL SELECT repeat('y', 64000000)";
    let mut out = BytesMut::new();
    pgvigil::protocol::frontend::write_query(&mut out, sql);
    raw.send(&out).await;
    let (mut rows, mut bytes) = (0u64, 0u64);
    loop {
        let m = raw.recv().await.expect("result");
        match m.tag {
            b'D' => {
                rows += 1;
                bytes += m.body.len() as u64;
            }
            b'Z' => break,
            b'E' => panic!("query failed"),
            _ => {}
        }
    }
    assert_eq!(rows, 1_048_577);
    assert!(bytes > (1 << 30) + 64_000_000, "{bytes}");
    let after = proc.peak_rss_kib();
    eprintln!("pgvigil peak RSS: {} MiB before, {} MiB after 1.1 GB passed through", before / 1024, after / 1024);
    assert!(before > 0 && after > 0);
    assert!(after < before + 32 * 1024, "pgvigil's peak RSS grew from {before} KiB to {after} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_carries_the_pid_pgvigil_gave_the_sender() {
    let env = Env::start(Options::default()).await;
    let a = Raw::connect(env.addr).await;
    let mut a = a.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    let b = Raw::connect(env.addr).await;
    let mut b = b.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    assert_ne!(a.pid, b.pid);
    a.simple_query("LISTEN ch").await;
    b.simple_query("LISTEN ch").await;
    let msgs = b.simple_query("NOTIFY ch, 'hello'").await;
    // B sees its own notification (delivered with its query's results or right after).
    let own = match msgs.into_iter().find(|m| m.tag == b'A') {
        Some(m) => m,
        None => b.recv().await.expect("own notification"),
    };
    assert_eq!(own.tag, b'A');
    let notification = a.recv().await.expect("notification");
    assert_eq!(notification.tag, b'A');
    for m in [&own, &notification] {
        let pid = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
        assert_eq!(pid, b.pid, "sender pid is the one pgvigil gave B");
        assert!(m.body.ends_with(b"ch\0hello\0"));
    }
    // The server's real pid is not the one clients see.
    let real = first_column(&b.simple_query("SELECT pg_backend_pid()").await);
    assert_ne!(real[0], b.pid.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query_and_closes_at_once() {
    let env = Env::start(Options::default()).await;
    let c = env.client().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    env.wait_running(0, "pg_sleep(30)").await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper).await.expect("cancel took effect").unwrap();
    let e = result.unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    eprintln!("pg_sleep(30) cancelled after {:?}", started.elapsed());

    // The cancel connection is closed by pgvigil right after forwarding, and a wrong key
    // does nothing but close too.
    let mut raw = Raw::connect(env.addr).await;
    let mut out = BytesMut::new();
    write_cancel(&mut out, 12345, 678);
    raw.send(&out).await;
    assert!(raw.expect_eof().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_reaches_the_client_after_set_and_rollback() {
    let env = Env::start(Options::default()).await;
    let (mut raw, params) = Raw::connect(env.addr).await.login(SUPERUSER, SUPERPASS).await.unwrap();
    let names: Vec<&String> = params.iter().map(|(k, _)| k).collect();
    for p in ["server_version", "client_encoding", "DateStyle", "TimeZone", "integer_datetimes", "standard_conforming_strings"] {
        assert!(names.iter().any(|n| *n == p), "{p} missing from {names:?}");
    }
    let msgs = raw.simple_query("BEGIN; SET application_name = 'inside'").await;
    assert!(msgs.iter().any(|m| m.tag == b'S' && m.body.starts_with(b"application_name\0inside\0")));
    let msgs = raw.simple_query("ROLLBACK").await;
    assert!(msgs.iter().any(|m| m.tag == b'S' && m.body.starts_with(b"application_name\0")), "rollback re-reports");
    // A NOTICE arrives as a NoticeResponse.
    let msgs = raw.simple_query("DO $$ BEGIN RAISE NOTICE 'note %', 1; END $$").await;
    assert!(msgs.iter().any(|m| m.tag == b'N'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_before_reading_does_not_deadlock() {
    let env = Env::start(Options::default()).await;
    let raw = Raw::connect(env.addr).await;
    let raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    // 3,000 queries of 20 kB results each (60 MB) are written before any answer is read:
    // both socket buffers fill up, so a proxy that stops reading the client while it
    // writes to it (or the reverse) would hang here.
    let mut out = BytesMut::new();
    for _ in 0..3000 {
        pgvigil::protocol::frontend::write_query(&mut out, "SELECT repeat('z', 20000)");
    }
    let (mut reader, mut writer) = raw.stream.into_split();
    let send = tokio::spawn(async move {
        tokio::io::AsyncWriteExt::write_all(&mut writer, &out).await.unwrap();
        writer
    });
    let mut buf = BytesMut::new();
    let mut ready = 0;
    let read = async {
        while ready < 3000 {
            match pgvigil::protocol::frame::take_message(&mut buf, 1 << 30).unwrap() {
                Some(m) if m.tag == b'Z' => ready += 1,
                Some(m) => assert_ne!(m.tag, b'E'),
                None => {
                    let n = tokio::io::AsyncReadExt::read_buf(&mut reader, &mut buf).await.unwrap();
                    assert!(n > 0, "closed early");
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.expect("no deadlock");
    send.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sessions_share_a_small_pool() {
    let env = Env::start(Options { pool: "size = 4\ncheckout_timeout = \"30s\"".into(), ..Options::default() }).await;
    let tasks: Vec<_> = (0..100i32)
        .map(|i| {
            let cfg = env.pg_config(SUPERUSER, SUPERPASS);
            tokio::spawn(async move {
                let c = connect(cfg).await.expect("every client gets in, waiting for a free connection");
                let r = c.query_one("SELECT $1::int * 3", &[&i]).await.unwrap();
                r.get::<_, i32>(0)
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i as i32 * 3);
    }
    let direct = env.direct(0).await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name <> 'pgvigil health check' AND pid <> pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n <= 4, "at most pool.size server connections: {n}");
}
