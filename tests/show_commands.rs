//! Pgpool-II's SQL SHOW commands on the proxy port, against a real cluster: columns as
//! Pgpool-II 4.3.5 prints them, counters that follow the statements run, both protocols,
//! the `PGPOOL SHOW` form.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use pgvigil::protocol::frame::{Message, Reader};

// Column lists as Pgpool-II 4.3.5 (Debian's pgpool2 4.3.5-1) answers them.
const POOL_NODES: [&str; 14] = [
    "node_id", "hostname", "port", "status", "pg_status", "lb_weight", "role", "pg_role", "select_cnt",
    "load_balance_node", "replication_delay", "replication_state", "replication_sync_state", "last_status_change",
];
const POOL_HEALTH_CHECK_STATS: [&str; 20] = [
    "node_id", "hostname", "port", "status", "role", "last_status_change", "total_count", "success_count",
    "fail_count", "skip_count", "retry_count", "average_retry_count", "max_retry_count", "max_duration",
    "min_duration", "average_duration", "last_health_check", "last_successful_health_check",
    "last_skip_health_check", "last_failed_health_check",
];
const POOL_BACKEND_STATS: [&str; 14] = [
    "node_id", "hostname", "port", "status", "role", "select_cnt", "insert_cnt", "update_cnt", "delete_cnt",
    "ddl_cnt", "other_cnt", "panic_cnt", "fatal_cnt", "error_cnt",
];
const POOL_POOLS: [&str; 17] = [
    "pool_pid", "start_time", "client_connection_count", "pool_id", "backend_id", "database", "username",
    "backend_connection_time", "client_connection_time", "client_disconnection_time", "client_idle_duration",
    "majorversion", "minorversion", "pool_counter", "pool_backendpid", "pool_connected", "status",
];
const POOL_VERSION: [&str; 1] = ["pool_version"];

/// Columns, rows and CommandComplete tag of a result in `messages`.
struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    tags: Vec<String>,
}

fn answer(messages: &[Message]) -> Answer {
    let mut a = Answer { columns: Vec::new(), rows: Vec::new(), tags: Vec::new() };
    for m in messages {
        let mut r = Reader::new(&m.body);
        match m.tag {
            b'T' => {
                let n = r.i16().unwrap();
                for _ in 0..n {
                    a.columns.push(r.cstr().unwrap().to_string());
                    r.bytes(18).unwrap();
                }
            }
            b'D' => {
                let n = r.i16().unwrap();
                let row = (0..n)
                    .map(|_| {
                        let len = r.i32().unwrap();
                        String::from_utf8(r.bytes(len as usize).unwrap().to_vec()).unwrap()
                    })
                    .collect();
                a.rows.push(row);
            }
            b'C' => a.tags.push(r.cstr().unwrap().to_string()),
            _ => {}
        }
    }
    a
}

/// The rows of a SHOW as maps column → value.
fn maps(a: &Answer) -> Vec<BTreeMap<String, String>> {
    a.rows.iter().map(|r| a.columns.iter().cloned().zip(r.iter().cloned()).collect()).collect()
}

async fn raw_session(env: &Env) -> Raw {
    Raw::connect(env.addr).await.login(SUPERUSER, SUPERPASS).await.unwrap().0
}

/// A simple-protocol SHOW through `raw`; panics on an error.
async fn show(raw: &mut Raw, sql: &str) -> Answer {
    let messages = raw.simple_query(sql).await;
    assert!(!messages.iter().any(|m| m.tag == b'E'), "{sql}: error");
    answer(&messages)
}

/// SHOW POOL_BACKEND_STATS through a new session, by node: the nine counters.
async fn backend_counts(env: &Env) -> Vec<[u64; 9]> {
    let mut raw = raw_session(env).await;
    let a = show(&mut raw, "SHOW POOL_BACKEND_STATS").await;
    a.rows.iter().map(|r| std::array::from_fn(|i| r[5 + i].parse().unwrap())).collect()
}

const SELECT: usize = 0;
const INSERT: usize = 1;
const UPDATE: usize = 2;
const DELETE: usize = 3;
const DDL: usize = 4;
const OTHER: usize = 5;
const FATAL: usize = 7;
const ERROR: usize = 8;

fn delta(before: &[[u64; 9]], after: &[[u64; 9]]) -> Vec<[u64; 9]> {
    before.iter().zip(after).map(|(b, a)| std::array::from_fn(|i| a[i] - b[i])).collect()
}

fn put(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    out.put_u8(tag);
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.put_i32(len as i32 + 4);
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    put(out, b'P', &[format!("{name}\0").as_bytes(), format!("{sql}\0").as_bytes(), &0i16.to_be_bytes()]);
}

/// Bind with no parameters and the given result formats.
fn bind(out: &mut BytesMut, portal: &str, stmt: &str, formats: &[i16]) {
    let mut results = BytesMut::new();
    results.put_i16(formats.len() as i16);
    for f in formats {
        results.put_i16(*f);
    }
    put(
        out,
        b'B',
        &[format!("{portal}\0").as_bytes(), format!("{stmt}\0").as_bytes(), &0i16.to_be_bytes(), &0i16.to_be_bytes(), &results],
    );
}

fn execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    put(out, b'E', &[format!("{portal}\0").as_bytes(), &max_rows.to_be_bytes()]);
}

fn tags(messages: &[Message]) -> String {
    messages.iter().map(|m| m.tag as char).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_are_pgpool_4_3s_in_every_spelling() {
    let env = Env::start(Options { standbys: 1, ..Options::default() }).await;
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let mut raw = raw_session(&env).await;
    let commands: [(&str, &[&str]); 5] = [
        ("POOL_NODES", &POOL_NODES),
        ("POOL_HEALTH_CHECK_STATS", &POOL_HEALTH_CHECK_STATS),
        ("POOL_BACKEND_STATS", &POOL_BACKEND_STATS),
        ("POOL_POOLS", &POOL_POOLS),
        ("POOL_VERSION", &POOL_VERSION),
    ];
    for (name, columns) in commands {
        let lower = name.to_ascii_lowercase();
        for sql in [
            format!("SHOW {name}"),
            format!("show {lower};"),
            format!("  Show\t{lower} ;"),
            format!("PGPOOL SHOW {name}"),
            format!("pgpool show {lower};"),
        ] {
            let messages = raw.simple_query(&sql).await;
            assert_eq!(messages.last().map(|m| m.body[0]), Some(b'I'), "{sql}");
            let a = answer(&messages);
            assert_eq!(a.columns, columns, "{sql}");
            assert_eq!(a.tags, ["SHOW"], "{sql}");
            assert!(a.rows.iter().all(|r| r.len() == columns.len()), "{sql}");
        }
    }
    let nodes = show(&mut raw, "SHOW POOL_BACKEND_STATS").await;
    assert_eq!(nodes.rows.len(), 2);
    let ports: Vec<String> = (0..2).map(|i| env.port(i).to_string()).collect();
    for (i, row) in maps(&nodes).iter().enumerate() {
        assert_eq!(row["node_id"], i.to_string());
        assert_eq!(row["port"], ports[i]);
        assert_eq!(row["status"], "up");
        assert_eq!(row["role"], if i == 0 { "primary" } else { "standby" });
    }
    let version = show(&mut raw, "SHOW POOL_VERSION").await;
    assert_eq!(version.rows, [[format!("pgvigil {} (compatible with Pgpool-II 4.x SHOW commands)", env!("CARGO_PKG_VERSION"))]]);

    // PGPOOL SHOW of anything else: PostgreSQL's error for an unknown setting; the
    // session goes on. A plain SHOW of another name is PostgreSQL's own.
    for sql in ["PGPOOL SHOW port", "pgpool show \"delegate_IP\";", "PGPOOL SHOW ALL"] {
        let messages = raw.simple_query(sql).await;
        assert_eq!(tags(&messages), "EZ", "{sql}");
        let e = pgvigil::protocol::backend::parse_error_fields(&messages[0].body).unwrap();
        assert_eq!(e.code, "42704", "{sql}");
        assert!(e.message.starts_with("unrecognized configuration parameter"), "{}", e.message);
    }
    let messages = raw.simple_query("SHOW pool_status").await;
    let e = pgvigil::protocol::backend::parse_error_fields(&messages[0].body).unwrap();
    assert_eq!((e.code.as_str(), e.message.as_str()), ("42704", "unrecognized configuration parameter \"pool_status\""));
    assert_eq!(first_column(&raw.simple_query("SHOW max_connections").await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_stats_count_statements_and_errors_per_node() {
    let env = Env::start(Options { standbys: 1, weights: vec![0.0, 1.0], ..Options::default() }).await;
    env.direct(0).await.batch_execute("CREATE TABLE bs (id int)").await.unwrap();
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let c = env.client().await;

    let before = backend_counts(&env).await;
    c.batch_execute("INSERT INTO bs VALUES (1)").await.unwrap();
    c.batch_execute("UPDATE bs SET id = 2").await.unwrap();
    c.batch_execute("DELETE FROM bs WHERE id = 3").await.unwrap();
    c.batch_execute("CREATE INDEX ON bs (id)").await.unwrap();
    c.batch_execute("VACUUM bs").await.unwrap();
    c.simple_query("SELECT count(*) FROM bs").await.unwrap();
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    // Extended protocol: counted once, at Bind (the Parse and Describe of prepare are not).
    c.execute("INSERT INTO bs VALUES ($1)", &[&5i32]).await.unwrap();
    let d = delta(&before, &backend_counts(&env).await);
    assert_eq!((d[0][INSERT], d[0][UPDATE], d[0][DELETE], d[0][DDL], d[0][OTHER]), (2, 1, 1, 1, 1), "primary: {d:?}");
    assert_eq!(d[0][SELECT], 0, "no reads on the primary (weight 0): {d:?}");
    assert_eq!(d[1][SELECT], 2, "both reads on the standby: {d:?}");
    assert_eq!((d[1][INSERT], d[1][UPDATE], d[1][DELETE], d[1][DDL]), (0, 0, 0, 0), "standby: {d:?}");
    assert_eq!((d[0][ERROR], d[1][ERROR]), (0, 1), "the division by zero ran on the standby: {d:?}");
    assert_eq!(d[0][FATAL] + d[1][FATAL], 0);

    // SHOW POOL_NODES' select_cnt is the same counter.
    let mut raw = raw_session(&env).await;
    let nodes = maps(&show(&mut raw, "SHOW POOL_NODES").await);
    let stats = maps(&show(&mut raw, "SHOW POOL_BACKEND_STATS").await);
    for i in 0..2 {
        assert_eq!(nodes[i]["select_cnt"], stats[i]["select_cnt"]);
    }

    // A server that ends the session's connection with FATAL: counted on that node.
    let before = backend_counts(&env).await;
    let doomed = env.client().await;
    let e = doomed.simple_query("/* pgvigil: primary */ SELECT pg_terminate_backend(pg_backend_pid())").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57P01", "{e:?}");
    let d = delta(&before, &backend_counts(&env).await);
    assert_eq!(d[0][FATAL], 1, "{d:?}");
    assert_eq!(d[0][SELECT], 1, "a SELECT sent to the primary by a hint still counts as a SELECT: {d:?}");
    assert_eq!(d[0][ERROR] + d[1][ERROR] + d[1][FATAL], 0, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_answers_like_the_simple_one() {
    let env = Env::start(Options { standbys: 1, ..Options::default() }).await;
    env.wait_replicated().await;
    let mut c = env.client().await;

    // tokio-postgres: a named statement (Parse, Describe, Sync), then Bind with binary
    // results, Execute, Sync.
    let rows = c.query("SHOW POOL_BACKEND_STATS", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    let names: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, POOL_BACKEND_STATS);
    assert_eq!(rows[0].get::<_, &str>("role"), "primary");
    assert_eq!(rows[1].get::<_, &str>("port"), env.port(1).to_string());
    for (sql, columns) in [
        ("show pool_nodes;", &POOL_NODES[..]),
        ("PGPOOL SHOW POOL_HEALTH_CHECK_STATS", &POOL_HEALTH_CHECK_STATS[..]),
        ("SHOW POOL_POOLS", &POOL_POOLS[..]),
        ("pgpool show pool_version", &POOL_VERSION[..]),
    ] {
        let st = c.prepare(sql).await.unwrap();
        let names: Vec<&str> = st.columns().iter().map(|c| c.name()).collect();
        assert_eq!(names, columns, "{sql}");
        assert!(st.params().is_empty());
        for _ in 0..2 {
            let rows = c.query(&st, &[]).await.unwrap();
            assert!(rows.iter().all(|r| r.len() == columns.len()), "{sql}");
        }
    }
    let v: String = c.query_one("SHOW POOL_VERSION", &[]).await.unwrap().get(0);
    assert!(v.starts_with("pgvigil "), "{v}");
    let e = c.query("PGPOOL SHOW port", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1, "the session goes on");

    // Inside a transaction, between statements run on the primary.
    let tx = c.transaction().await.unwrap();
    tx.execute("CREATE TABLE ext (id int)", &[]).await.unwrap();
    let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let pools = tx.query("SHOW POOL_POOLS", &[]).await.unwrap();
    let mine = pools.iter().find(|r| r.get::<_, &str>("pool_backendpid") == pid.to_string()).expect("this session's connection");
    assert_eq!(mine.get::<_, &str>("status"), "Idle in transaction");
    assert_eq!(mine.get::<_, &str>("pool_connected"), "1");
    assert_eq!(mine.get::<_, &str>("backend_id"), "0");
    tx.execute("INSERT INTO ext VALUES (1)", &[]).await.unwrap();
    tx.commit().await.unwrap();

    // Raw: a batch mixing a server statement and local ones, a row limit, result formats.
    let mut raw = raw_session(&env).await;
    let mut out = BytesMut::new();
    parse(&mut out, "", "SELECT 42");
    bind(&mut out, "", "", &[]);
    execute(&mut out, "", 0);
    parse(&mut out, "nodes", "SHOW POOL_NODES");
    put(&mut out, b'D', &[b"S", b"nodes\0"]);
    bind(&mut out, "p", "nodes", &[1]);
    put(&mut out, b'D', &[b"P", b"p\0"]);
    execute(&mut out, "p", 1);
    execute(&mut out, "p", 0);
    put(&mut out, b'C', &[b"P", b"p\0"]);
    put(&mut out, b'S', &[]);
    raw.send(&out).await;
    let messages = raw.until_ready().await;
    assert_eq!(tags(&messages), "12DC1tT2TDsDC3Z");
    assert_eq!(first_column(&messages[..4]), ["42"]);
    let described = &messages[6].body;
    assert_eq!(&described[described.len() - 2..], &0i16.to_be_bytes(), "Describe of a statement: text");
    let bound = &messages[8].body;
    assert_eq!(&bound[bound.len() - 2..], &1i16.to_be_bytes(), "Describe of the portal: the Bind's format");
    let a = answer(&messages[8..14]);
    assert_eq!(a.columns, POOL_NODES);
    assert_eq!(a.rows.len(), 2);
    assert_eq!((a.rows[0][0].as_str(), a.rows[1][0].as_str()), ("0", "1"));

    // The named statement outlives the Sync; a duplicate name and a bad Bind are errors
    // that skip to the Sync, as on a server.
    out.clear();
    parse(&mut out, "nodes", "SHOW POOL_VERSION");
    bind(&mut out, "", "nodes", &[]);
    execute(&mut out, "", 0);
    put(&mut out, b'S', &[]);
    bind(&mut out, "", "nodes", &[0, 0]);
    put(&mut out, b'S', &[]);
    bind(&mut out, "", "nodes", &[]);
    execute(&mut out, "", 0);
    put(&mut out, b'C', &[b"S", b"nodes\0"]);
    parse(&mut out, "", "PGPOOL SHOW nothing");
    put(&mut out, b'S', &[]);
    raw.send(&out).await;
    let first = raw.until_ready().await;
    let e = pgvigil::protocol::backend::parse_error_fields(&first[0].body).unwrap();
    assert_eq!((tags(&first).as_str(), e.code.as_str()), ("EZ", "42P05"));
    let second = raw.until_ready().await;
    let e = pgvigil::protocol::backend::parse_error_fields(&second[0].body).unwrap();
    assert_eq!((tags(&second).as_str(), e.code.as_str()), ("EZ", "08P01"));
    let third = raw.until_ready().await;
    assert_eq!(tags(&third), "2DDC3EZ");
    let e = pgvigil::protocol::backend::parse_error_fields(&third[5].body).unwrap();
    assert_eq!(e.code, "42704");
    assert_eq!(third.last().map(|z| z.body[0]), Some(b'I'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_pools_lists_lent_and_idle_server_connections() {
    // Reads go to the standby only, so both sessions read there.
    let env = Env::start(Options { standbys: 1, weights: vec![0.0, 1.0], ..Options::default() }).await;
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let mut first = raw_session(&env).await;
    let m = first.simple_query("SELECT pg_backend_pid(), inet_server_port()").await;
    let a = answer(&m);
    let (server_pid, node) = (a.rows[0][0].clone(), env.node_of(a.rows[0][1].parse().unwrap()));
    assert_eq!(node, 1);
    let pools = maps(&show(&mut first, "SHOW POOL_POOLS").await);
    let row = pools.iter().find(|r| r["pool_backendpid"] == server_pid).unwrap_or_else(|| panic!("{pools:?}"));
    assert_eq!(row["pool_pid"], first.pid.to_string(), "the pid this session's client got");
    assert_eq!(row["backend_id"], node.to_string());
    assert_eq!((row["database"].as_str(), row["username"].as_str()), ("postgres", SUPERUSER));
    assert_eq!((row["pool_connected"].as_str(), row["status"].as_str()), ("1", "Idle"));
    assert_eq!((row["majorversion"].as_str(), row["minorversion"].as_str()), ("3", "0"));
    assert_eq!(row["client_connection_count"], "1");
    assert!(!row["start_time"].is_empty() && !row["backend_connection_time"].is_empty() && !row["client_connection_time"].is_empty());
    assert_eq!(row["client_disconnection_time"], "");

    // The session ends: its connection waits in the pool, without a client.
    first.send(&[b'X', 0, 0, 0, 4]).await;
    assert!(first.expect_eof().await);
    let mut second = raw_session(&env).await;
    let returned = eventually(Duration::from_secs(10), || {
        let env = &env;
        let server_pid = server_pid.clone();
        async move {
            let mut raw = raw_session(env).await;
            let pools = maps(&show(&mut raw, "SHOW POOL_POOLS").await);
            pools.iter().any(|r| r["pool_backendpid"] == server_pid && r["status"] == "Wait for connection")
        }
    })
    .await;
    assert!(returned, "the connection went back to its pool");
    let pools = maps(&show(&mut second, "SHOW POOL_POOLS").await);
    let row = pools.iter().find(|r| r["pool_backendpid"] == server_pid).unwrap();
    assert_eq!((row["pool_pid"].as_str(), row["pool_connected"].as_str(), row["start_time"].as_str()), ("0", "0", ""));
    assert!(!row["client_disconnection_time"].is_empty());

    // The next session of the same user and database reuses it.
    let m = second.simple_query("SELECT pg_backend_pid()").await;
    assert_eq!(first_column(&m), std::slice::from_ref(&server_pid), "the idle connection was reused");
    let pools = maps(&show(&mut second, "SHOW POOL_POOLS").await);
    let row = pools.iter().find(|r| r["pool_backendpid"] == server_pid).unwrap();
    assert_eq!((row["pool_pid"].as_str(), row["status"].as_str()), (second.pid.to_string().as_str(), "Idle"));
    assert_eq!((row["client_connection_count"].as_str(), row["pool_counter"].as_str()), ("2", "2"));
}
