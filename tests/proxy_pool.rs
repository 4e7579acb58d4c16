//! Session pooling: reuse with a reset, exhaustion, eviction of dead idle connections,
//! and sending traffic to the primary only.

// tokio_postgres::Client is not Debug, so `expect_err` is not available.
#![allow(clippy::err_expect)]

mod common;

use std::time::Duration;

use common::*;

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_connections_are_reset() {
    let env = Env::start(Options { pool: "size = 1".into(), ..Options::default() }).await;
    let c1 = env.client().await;
    let pid = backend_pid(&c1).await;
    c1.batch_execute(
        "SET work_mem = '7MB'; CREATE TEMP TABLE scratch (x int); PREPARE p AS SELECT 1; \
         SELECT pg_advisory_lock(42); CREATE TABLE kept (x int)",
    )
    .await
    .unwrap();
    c1.batch_execute("BEGIN; INSERT INTO kept VALUES (1)").await.unwrap();
    drop(c1); // disconnects inside an open transaction

    let c2 = eventually_connect(&env).await;
    assert_eq!(backend_pid(&c2).await, pid, "the pooled server connection is reused");
    let wm: String = c2.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "4MB", "SET is undone");
    assert!(c2.simple_query("SELECT * FROM scratch").await.is_err(), "temp table is gone");
    assert!(c2.simple_query("EXECUTE p").await.is_err(), "prepared statement is gone");
    let n: i64 = c2.query_one("SELECT count(*) FROM kept", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the open transaction was rolled back");
    let locks: i64 = c2.query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", &[]).await.unwrap().get(0);
    assert_eq!(locks, 0, "advisory locks are released");
}

/// Whether the server process `pid` has ended, waiting up to `timeout`.
async fn server_gone(direct: &tokio_postgres::Client, pid: i32, timeout: Duration) -> bool {
    eventually(timeout, || async {
        let n: i64 = direct.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().get(0);
        n == 0
    })
    .await
}

/// With pool.size = 1 the previous session's connection may still be resetting.
async fn eventually_connect(env: &Env) -> tokio_postgres::Client {
    for _ in 0..50 {
        if let Ok(c) = connect(env.pg_config(SUPERUSER, SUPERPASS)).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_waits_then_fails_clearly() {
    let env = Env::start(Options { pool: "size = 1\ncheckout_timeout = \"500ms\"".into(), ..Options::default() }).await;
    let holder = env.client().await;
    holder.simple_query("SELECT 1").await.unwrap();
    // Sessions take a server connection at their first statement, not at login.
    let other = env.client().await;
    let e = other.simple_query("SELECT 1").await.err().expect("pool exhausted");
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "53300");
    assert!(db.detail().unwrap_or_default().contains("pool.checkout_timeout"), "{db:?}");
    // The session goes on; a waiting statement gets the connection as soon as it is returned.
    let waiter = tokio::spawn(async move { other.simple_query("SELECT 2").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(holder);
    waiter.await.unwrap().expect("the waiter got the freed connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_idle_connections_are_evicted_not_handed_out() {
    let env = Env::start(Options { pool: "size = 2".into(), ..Options::default() }).await;
    let c1 = env.client().await;
    let pid = backend_pid(&c1).await;
    drop(c1);
    // Kill the idle pooled connection behind pgvigil's back.
    let direct = env.direct(0).await;
    let gone = eventually(Duration::from_secs(5), || async {
        direct.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.map(|r| r.get::<_, bool>(0)).unwrap_or(false)
    })
    .await;
    assert!(gone);
    assert!(server_gone(&direct, pid, Duration::from_secs(5)).await);
    let c2 = env.client().await;
    let pid2 = backend_pid(&c2).await;
    assert_ne!(pid2, pid, "a fresh server connection, not the dead one");
    c2.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_goes_to_the_primary_even_when_listed_last() {
    let env = Env::start(Options { standbys: 1, primary_last: true, ..Options::default() }).await;
    let c = env.client().await;
    let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(!in_recovery);
    let port: i32 = c.query_one("/*NO LOAD BALANCE*/ SELECT inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port, i32::from(env.cluster.node(0).port));
    c.batch_execute("CREATE TABLE w (x int); INSERT INTO w VALUES (1)").await.unwrap();
    let port: i32 = c.query_one("WITH i AS (INSERT INTO w VALUES (2) RETURNING x) SELECT inet_server_port() FROM i", &[]).await.unwrap().get(0);
    assert_eq!(port, i32::from(env.cluster.node(0).port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_key_the_pool() {
    let env = Env::start(Options { pool: "size = 4".into(), ..Options::default() }).await;
    let mut cfg = env.pg_config(SUPERUSER, SUPERPASS);
    cfg.options("-c search_path=custom_path");
    let c = connect(cfg).await.unwrap();
    let sp: String = c.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(sp, "custom_path");
    drop(c);
    let plain = env.client().await;
    let sp: String = plain.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(sp, "\"$user\", public", "a session without options never gets that connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_without_sync_is_not_committed_by_the_reset() {
    // RESET ALL is allowed inside a transaction, so it would commit unsynced work.
    let env = Env::start(Options { pool: "size = 1\nreset_query = \"RESET ALL\"".into(), ..Options::default() }).await;
    env.client().await.batch_execute("CREATE TABLE unsynced (x int)").await.unwrap();
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    // Parse/Bind/Execute of an INSERT, then Terminate without Sync: PostgreSQL would
    // roll it back when the session ends, so pgvigil must not let a reset commit it.
    let mut out = bytes::BytesMut::new();
    for (tag, body) in [
        (b'P', &b"\0INSERT INTO unsynced VALUES (1)\0\0\0"[..]),
        (b'B', &b"\0\0\0\0\0\0\0\0"[..]),
        (b'E', &b"\0\0\0\0\0"[..]),
        (b'H', &b""[..]),
    ] {
        let at = pgvigil::protocol::frame::begin(&mut out, tag);
        out.extend_from_slice(body);
        pgvigil::protocol::frame::finish(&mut out, at);
    }
    let pid = first_column(&raw.simple_query("SELECT pg_backend_pid()").await);
    raw.send(&out).await;
    let mut tags = Vec::new();
    while tags.last() != Some(&b'C') {
        tags.push(raw.recv().await.expect("INSERT executed").tag);
    }
    raw.send(b"X\0\0\0\x04").await;
    assert!(raw.expect_eof().await);
    // A client with the same startup parameters (same pool) looks.
    let again = Raw::connect(env.addr).await;
    let mut again = again.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    let n = first_column(&again.simple_query("SELECT count(*) FROM unsynced").await);
    assert_eq!(n, vec!["0".to_string()], "the unsynced INSERT was rolled back");
    let pid2 = first_column(&again.simple_query("SELECT pg_backend_pid()").await);
    assert_ne!(pid, pid2, "that server connection was closed, not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_idle_timeout_are_closed() {
    let env = Env::start(Options { pool: "size = 2\nidle_timeout = \"300ms\"".into(), ..Options::default() }).await;
    let c = env.client().await;
    let pid = backend_pid(&c).await;
    drop(c);
    let direct = env.direct(0).await;
    assert!(server_gone(&direct, pid, Duration::from_secs(10)).await, "the reaper closed the idle server connection");
    let forgotten = eventually(Duration::from_secs(5), || async { env.handle().shared().pools.pool_count() == 0 }).await;
    assert!(forgotten, "an empty, unused pool is forgotten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_server_and_missing_primary_get_clear_errors() {
    let mut env = Env::start(Options { pool: "checkout_timeout = \"500ms\"".into(), ..Options::default() }).await;
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    tokio::task::block_in_place(|| env.cluster.kill9(0)).unwrap();
    // An idle session is not closed by the loss of its server connection: its next
    // statement gets an error naming the cause (no server to connect to, or no primary
    // once the monitor has seen it go), and the session stays usable.
    let codes = ["08006", "57P03"];
    for _ in 0..2 {
        raw.send(&query_message("SELECT 1")).await;
        let m = raw.recv().await.expect("an answer, not a closed connection");
        assert_eq!(m.tag, b'E');
        let code = pgvigil::protocol::backend::parse_error_fields(&m.body).unwrap().code;
        assert!(codes.contains(&code.as_str()), "{code}");
        let z = raw.recv().await.expect("ReadyForQuery");
        assert_eq!((z.tag, z.body.as_ref()), (b'Z', &b"I"[..]));
    }
    // Once the monitor has seen the primary go, clients get 57P03.
    let last = std::sync::Mutex::new(String::new());
    let told = eventually(Duration::from_secs(15), || async {
        let c = match connect(env.pg_config(SUPERUSER, SUPERPASS)).await {
            Ok(c) => c,
            // Without a primary, a session that needs one for its startup answer is refused.
            Err(e) => {
                *last.lock().unwrap() = sqlstate(&e);
                return sqlstate(&e) == "57P03";
            }
        };
        match c.simple_query("SELECT 1").await {
            Ok(_) => false,
            Err(e) => {
                *last.lock().unwrap() = sqlstate(&e);
                sqlstate(&e) == "57P03"
            }
        }
    })
    .await;
    assert!(told, "last SQLSTATE {}", last.lock().unwrap());
}

fn query_message(sql: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    pgvigil::protocol::frontend::write_query(&mut out, sql);
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_follows_each_client_on_a_shared_connection() {
    let env = Env::start(Options { pool: "size = 1".into(), ..Options::default() }).await;
    let mut pids = Vec::new();
    for name in ["first", "it's \\ second", ""] {
        let mut cfg = env.pg_config(SUPERUSER, SUPERPASS);
        if !name.is_empty() {
            cfg.application_name(name);
        }
        let c = loop {
            if let Ok(c) = connect(cfg.clone()).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let shown: String = c.query_one("SELECT current_setting('application_name')", &[]).await.unwrap().get(0);
        assert_eq!(shown, name);
        pids.push(backend_pid(&c).await);
    }
    assert!(pids.windows(2).all(|w| w[0] == w[1]), "one server connection served all: {pids:?}");
    // The ParameterStatus a client gets at login is its own name.
    let (_raw, params) = Raw::connect(env.addr).await.login(SUPERUSER, SUPERPASS).await.unwrap();
    let app = params.into_iter().find(|(k, _)| k == "application_name");
    assert_eq!(app, Some(("application_name".to_string(), String::new())));
    // Three application names did not make three pools: one for tokio-postgres' startup
    // parameters (client_encoding, DateStyle, ...), one for the raw client's.
    assert_eq!(env.handle().shared().pools.pool_count(), 2);
}
