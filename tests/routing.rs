//! Read/write routing end to end, on a primary and two streaming standbys: where each
//! kind of statement runs (by `inet_server_port()` and the explain NOTICE), functions,
//! `after_write` modes, causal reads, lagging standbys, weights and pgbench.

// tokio_postgres::Client is not Debug, so `expect_err` is not available.
#![allow(clippy::err_expect)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

/// The explain NOTICE prefix for node `i`: "pgvigil: pg1 (standby): ".
fn at(env: &Env, i: usize) -> String {
    format!("pgvigil: {} ({}): ", env.cluster.node(i).name, if i == 0 { "primary" } else { "standby" })
}

/// The one explain NOTICE of the last statement.
fn one_notice(notices: &Notices, sql: &str) -> String {
    let mut n = notices.take();
    assert_eq!(n.len(), 1, "{sql}: one explain NOTICE, got {n:?}");
    n.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_statement_runs_where_its_class_says() {
    let env = Env::start(Options {
        standbys: 2,
        extra: "[routing]\ngranularity = \"statement\"\nread_only_functions = [\"ro_.*\"]\nwrite_functions = [\"wr_.*\"]\n".into(),
        ..Options::default()
    })
    .await;
    let setup = env.client().await;
    setup
        .batch_execute(
            "CREATE TABLE t (id serial PRIMARY KEY, v int);
             CREATE TABLE audit (x int);
             CREATE SEQUENCE s;
             CREATE FUNCTION log_it(i int) RETURNS int LANGUAGE sql VOLATILE AS 'INSERT INTO audit VALUES (i) RETURNING x';
             CREATE FUNCTION twice(i int) RETURNS int LANGUAGE sql STABLE AS 'SELECT i * 2';
             CREATE FUNCTION ro_port() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT inet_server_port()';
             CREATE FUNCTION wr_port() RETURNS int LANGUAGE sql STABLE AS 'SELECT inet_server_port()';
             INSERT INTO t (v) VALUES (1), (2), (3);",
        )
        .await
        .unwrap();
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;

    let (c, notices) = connect_with_notices(env.pg_config(SUPERUSER, SUPERPASS)).await;
    c.simple_query("SET pgvigil.explain_routing = on").await.unwrap();
    let all: BTreeSet<i32> = (0..3).map(|i| env.port(i)).collect();

    // Plain reads: every node by its weight (1 each): smooth round-robin gives exact
    // thirds over any 3k consecutive picks of this (only) session.
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for i in 0..30 {
        let sql = if i % 2 == 0 { "SELECT inet_server_port()" } else { "SELECT inet_server_port(), count(*) FROM t" };
        let p = port_of(&c, sql).await;
        *counts.entry(p).or_default() += 1;
        let n = one_notice(&notices, sql);
        assert_eq!(n, format!("{}read: SELECT", at(&env, env.node_of(p))), "{sql}");
    }
    assert_eq!(counts, all.iter().map(|&p| (p, 10)).collect(), "reads by port");

    // Reads that stay reads: STABLE function, a volatile one in read_only_functions,
    // quoted write keywords. Three in a row cover all three nodes.
    for sql in [
        "SELECT inet_server_port(), twice(2)",
        "SELECT inet_server_port(), ro_port()",
        "SELECT inet_server_port(), 'DELETE FROM t'",
        "SELECT inet_server_port() FROM t WHERE v IN (SELECT v FROM t) LIMIT 1",
    ] {
        let mut ports = BTreeSet::new();
        for _ in 0..3 {
            let r = rows(&c, sql).await.unwrap();
            let p: i32 = r[0][0].parse().unwrap();
            if sql.contains("ro_port") {
                assert_eq!(r[0][1], r[0][0], "ro_port() ran in the same place");
            }
            ports.insert(p);
            let n = one_notice(&notices, sql);
            assert!(n.starts_with(&at(&env, env.node_of(p))) && n.contains("read: SELECT"), "{sql}: {n}");
        }
        assert_eq!(ports, all, "{sql} is balanced");
    }

    // Statements for the primary, with the reason the NOTICE gives. Each runs three
    // times: had one gone through the balancer, a standby would have had a turn.
    let primary = env.port(0);
    let cases: &[(&str, &str)] = &[
        ("INSERT INTO t (v) VALUES (10) RETURNING inet_server_port()", "write: INSERT"),
        ("UPDATE t SET v = v + 1 WHERE id = 1 RETURNING inet_server_port()", "write: UPDATE"),
        ("DELETE FROM t WHERE id = (SELECT max(id) FROM t) RETURNING inet_server_port()", "write: DELETE"),
        ("WITH x AS (INSERT INTO t (v) VALUES (11) RETURNING id) SELECT inet_server_port() FROM x", "write: INSERT"),
        ("WITH x AS (DELETE FROM t WHERE v = 11 RETURNING id) SELECT inet_server_port() FROM x", "write: DELETE"),
        ("SELECT inet_server_port() FROM t WHERE id = 1 FOR UPDATE", "row lock: FOR UPDATE"),
        ("SELECT inet_server_port() FROM (SELECT * FROM t FOR SHARE) x LIMIT 1", "row lock: FOR SHARE"),
        ("SELECT inet_server_port(), nextval('s')", "writing function nextval()"),
        ("INSERT INTO t (v) VALUES (12); SELECT inet_server_port()", "multi-statement with a write: write: INSERT"),
        ("/*NO LOAD BALANCE*/ SELECT inet_server_port()", "hint: /*NO LOAD BALANCE*/"),
        ("/* pgvigil: primary */ SELECT inet_server_port()", "hint: "),
        ("SELECT inet_server_port(), pg_is_in_recovery()", "writing function pg_is_in_recovery() (volatile or unknown)"),
        ("SELECT inet_server_port(), log_it(7)", "writing function log_it() (volatile or unknown)"),
        ("SELECT inet_server_port(), wr_port()", "writing function wr_port()"),
    ];
    for _ in 0..3 {
        for (sql, reason) in cases {
            let r = rows(&c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            assert_eq!(r.last().unwrap()[0], primary.to_string(), "{sql} ran on the primary");
            let n = one_notice(&notices, sql);
            assert!(n.starts_with(&format!("{}{reason}", at(&env, 0))), "{sql}: {n}");
        }
    }
    let r = rows(&c, "SELECT inet_server_port(), pg_is_in_recovery()").await.unwrap();
    assert_eq!(r[0][1], "f");
    notices.take();
    let r = rows(&c, "SELECT inet_server_port(), wr_port()").await.unwrap();
    assert_eq!(r[0][1], primary.to_string(), "wr_port() ran on the primary too");
    notices.take();

    // Through the extended protocol as well.
    for _ in 0..3 {
        let r = c.query_one("SELECT inet_server_port(), nextval('s')", &[]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), primary);
        let n = notices.take();
        assert!(n.iter().any(|n| n.starts_with(&format!("{}writing function nextval()", at(&env, 0)))), "{n:?}");
        let r = c.query_one("SELECT inet_server_port(), log_it($1)", &[&8i32]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), primary);
        notices.take();
    }
    let mut ports = BTreeSet::new();
    for _ in 0..6 {
        ports.insert(c.query_one("SELECT inet_server_port(), twice($1)", &[&3i32]).await.unwrap().get::<_, i32>(0));
    }
    assert_eq!(ports, all, "extended-protocol reads are balanced");
    notices.take();

    // An unparsable statement goes to the primary, whose error comes back.
    for _ in 0..3 {
        let e = c.simple_query("SELEC inet_server_port()").await.err().expect("syntax error");
        assert_eq!(sqlstate(&e), "42601", "{e:?}");
        let n = notices.take();
        assert!(n.contains(&format!("{}parse error", at(&env, 0))), "{n:?}");
    }
    assert!(port_of(&c, "SELECT inet_server_port()").await > 0, "the session goes on");

    // The writing function's inserts happened on the primary, and reached the standbys.
    let direct = env.direct(0).await;
    let n: i64 = direct.query_one("SELECT count(*) FROM audit", &[]).await.unwrap().get(0);
    assert_eq!(n, 6, "log_it() inserted 3 + 3 rows");
    env.wait_replicated().await;
    let n: i64 = env.direct(2).await.query_one("SELECT count(*) FROM audit", &[]).await.unwrap().get(0);
    assert_eq!(n, 6);
    let n: i64 = direct.query_one("SELECT count(*) FROM t WHERE v = 12", &[]).await.unwrap().get(0);
    assert_eq!(n, 3, "the multi-statement inserts ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_statements_are_counted_once_each() {
    let env = Env::start(Options { standbys: 1, ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let primary = env.port(0);
    // Alone, and when the statement must wait for a standby to answer the one before
    // it (pipelined in one write, so the wait is certain).
    let unparsable = || env.handle().shared().stats.unparsable.load(std::sync::atomic::Ordering::Relaxed);
    let mut raw = Raw::connect(env.addr).await.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    let before = unparsable();
    let answer = raw.simple_query("SELEC 1").await;
    assert!(answer.iter().any(|m| m.tag == b'E'));
    assert_eq!(unparsable() - before, 1, "one unparsable statement");
    raw.simple_query("SET pgvigil.route = 'standby'").await;
    let mut two = bytes::BytesMut::new();
    pgvigil::protocol::frontend::write_query(&mut two, "SELECT inet_server_port()");
    pgvigil::protocol::frontend::write_query(&mut two, "SELEC 2");
    let before = unparsable();
    raw.send(&two).await;
    let first = raw.until_ready().await;
    assert_ne!(first_column(&first), vec![primary.to_string()], "the read ran on a standby");
    let second = raw.until_ready().await;
    assert!(second.iter().any(|m| m.tag == b'E'), "the syntax error came back");
    assert_eq!(unparsable() - before, 1, "a statement that waited is still counted once");
}

/// One session's walk through a write transaction and what follows, on a proxy with
/// `routing.after_write = mode` and the primary at weight 0 (so a read reaches the
/// primary only because a rule sent it there).
async fn after_write_walk(env: &Env, config: tokio_postgres::Config, mode: &str) {
    let c = &connect(config.clone()).await.unwrap();
    let p0 = env.port(0);
    let on_primary = |p: i32| p == p0;
    let tag = format!("{mode}-tx");
    c.batch_execute("BEGIN").await.unwrap();
    let p = port_of(c, "SELECT inet_server_port() FROM other LIMIT 1").await;
    assert!(!on_primary(p), "{mode}: a read before the write goes to a standby");
    c.batch_execute(&format!("INSERT INTO aw VALUES ('{tag}')")).await.unwrap();
    let r = rows(c, &format!("SELECT inet_server_port(), count(*) FROM aw WHERE tag = '{tag}'")).await.unwrap();
    let (p, n): (i32, &str) = (r[0][0].parse().unwrap(), &r[0][1]);
    if mode == "off" {
        assert!(!on_primary(p) && n == "0", "{mode}: the read stays on a standby, which cannot see the row: {r:?}");
    } else {
        assert!(on_primary(p) && n == "1", "{mode}: the read of the written table sees the row on the primary: {r:?}");
    }
    let p = port_of(c, "SELECT inet_server_port() FROM other LIMIT 1").await;
    let want_primary = matches!(mode, "transaction" | "trans_transaction" | "session");
    assert_eq!(on_primary(p), want_primary, "{mode}: a read of an unrelated table in the writing transaction");
    c.batch_execute("COMMIT").await.unwrap();
    let n: i64 = env.direct(0).await.query_one("SELECT count(*) FROM aw WHERE tag = $1", &[&tag]).await.unwrap().get(0);
    assert_eq!(n, 1, "{mode}: committed");

    let p = port_of(c, "SELECT inet_server_port()").await;
    assert_eq!(on_primary(p), mode == "session", "{mode}: an autocommit read after the transaction");
    c.batch_execute("BEGIN").await.unwrap();
    let p = port_of(c, "SELECT inet_server_port()").await;
    c.batch_execute("COMMIT").await.unwrap();
    let want_primary = matches!(mode, "trans_transaction" | "session");
    assert_eq!(on_primary(p), want_primary, "{mode}: a read in a later transaction");
    let p = port_of(c, "SELECT inet_server_port()").await;
    assert_eq!(on_primary(p), mode == "session", "{mode}: autocommit reads after that");

    // An autocommit write: only "session" sends the session's later reads to the primary.
    let c = &connect(config).await.unwrap();
    assert!(!on_primary(port_of(c, "SELECT inet_server_port()").await), "{mode}: a read before any write");
    c.batch_execute("INSERT INTO aw VALUES ('autocommit')").await.unwrap();
    let p = port_of(c, "SELECT inet_server_port()").await;
    assert_eq!(on_primary(p), mode == "session", "{mode}: a read after an autocommit write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_write_modes_send_reads_where_they_see_the_writes() {
    let standby_reads = vec![0.0, 1.0, 1.0];
    let env = Env::start(Options {
        standbys: 2,
        weights: standby_reads.clone(),
        extra: "[routing]\nafter_write = \"transaction\"\n".into(),
        ..Options::default()
    })
    .await;
    env.direct(0).await.batch_execute("CREATE TABLE aw (tag text); CREATE TABLE other (x int); INSERT INTO other VALUES (1)").await.unwrap();
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    after_write_walk(&env, env.pg_config(SUPERUSER, SUPERPASS), "transaction").await;
    for mode in ["trans_transaction", "session", "dml_adaptive", "off"] {
        let proxy = env
            .another_proxy(Options {
                weights: standby_reads.clone(),
                extra: format!("[routing]\nafter_write = \"{mode}\"\n"),
                ..Options::default()
            })
            .await;
        wait_standbys_eligible(proxy.handle(), 16 << 20).await;
        after_write_walk(&env, proxy.pg_config(), mode).await;
    }
}

/// Waits until standby `i`'s replay is paused (not just requested).
async fn pause_replay(env: &Env, i: usize) {
    let standby = env.direct(i).await;
    standby.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    let paused = eventually(Duration::from_secs(10), || async {
        let s: String = standby.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).await.unwrap().get(0);
        s == "paused"
    })
    .await;
    assert!(paused, "replay of node {i} paused");
}

async fn resume_replay(env: &Env, i: usize) {
    env.direct(i).await.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_reads_find_the_sessions_own_writes() {
    // Lag limits are off: only causal reads keep the paused standby from serving the
    // session. Its reads are sent to pg1 by a redirect rule whenever pg1 may take them.
    let rule = "[[routing.redirect]]\napplication_name = \"^causal$\"\nto = \"pg1\"\n";
    let env = Env::start(Options {
        standbys: 2,
        extra: format!("[routing]\ncausal_reads = true\nmax_lag = \"0\"\nmax_lag_time = \"0\"\nlag_check_interval = \"100ms\"\n\n{rule}"),
        ..Options::default()
    })
    .await;
    // The same without causal reads, to show what the paused standby returns.
    let plain = env
        .another_proxy(Options {
            extra: format!("[routing]\nmax_lag = \"0\"\nmax_lag_time = \"0\"\n\n{rule}"),
            ..Options::default()
        })
        .await;
    env.direct(0).await.batch_execute("CREATE TABLE cr (x int)").await.unwrap();
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    wait_standbys_eligible(plain.handle(), 16 << 20).await;
    let p1 = env.port(1);
    let mut config = env.pg_config(SUPERUSER, SUPERPASS);
    config.application_name("causal");
    let c = connect(config).await.unwrap();
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, p1, "the session reads from pg1");
    let mut config = plain.pg_config();
    config.application_name("causal");
    let control = connect(config).await.unwrap();
    assert_eq!(port_of(&control, "SELECT inet_server_port()").await, p1);

    pause_replay(&env, 1).await;
    control.batch_execute("INSERT INTO cr VALUES (-1)").await.unwrap();
    let r = rows(&control, "SELECT inet_server_port(), count(*) FROM cr WHERE x = -1").await.unwrap();
    assert_eq!(r[0], vec![p1.to_string(), "0".to_string()], "without causal reads, pg1 does not have the row");

    let mut served: BTreeMap<i32, usize> = BTreeMap::new();
    for i in 0..50 {
        c.batch_execute(&format!("INSERT INTO cr VALUES ({i})")).await.unwrap();
        let r = rows(&c, &format!("SELECT inet_server_port(), count(*) FROM cr WHERE x = {i}")).await.unwrap();
        assert_eq!(r[0][1], "1", "read {i} finds the row just written: {r:?}");
        *served.entry(r[0][0].parse().unwrap()).or_default() += 1;
    }
    assert!(!served.contains_key(&p1), "the paused standby served none: {served:?}");
    // The same in the extended protocol, with Parse, Bind and Execute in one batch.
    for i in 200..220 {
        c.execute("INSERT INTO cr VALUES ($1)", &[&i]).await.unwrap();
        let r = c
            .query_typed("SELECT inet_server_port(), count(*) FROM cr WHERE x = $1", &[(&i, tokio_postgres::types::Type::INT4)])
            .await
            .unwrap();
        let (port, n): (i32, i64) = (r[0].get(0), r[0].get(1));
        assert_eq!(n, 1, "extended read {i} finds the row just written");
        assert_ne!(port, p1, "the paused standby serves no extended read");
    }

    resume_replay(&env, 1).await;
    let back = eventually(Duration::from_secs(20), || async { port_of(&c, "SELECT inet_server_port()").await == p1 }).await;
    assert!(back, "reads return to pg1 once it has replayed the session's writes");
    let r = rows(&c, "SELECT inet_server_port(), count(*) FROM cr WHERE x >= 0").await.unwrap();
    assert_eq!(r[0], vec![p1.to_string(), "70".to_string()]);
    // A new write sends reads away from pg1 again only until pg1 replays it: they may
    // come back at once, but never miss the row.
    c.batch_execute("INSERT INTO cr VALUES (100)").await.unwrap();
    let r = rows(&c, "SELECT inet_server_port(), count(*) FROM cr WHERE x = 100").await.unwrap();
    assert_eq!(r[0][1], "1", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_gets_no_reads_until_it_catches_up() {
    let env = Env::start(Options {
        standbys: 2,
        weights: vec![0.0, 1.0, 1.0],
        extra: "[routing]\ngranularity = \"statement\"\nmax_lag = \"64kB\"\nmax_lag_time = \"0\"\nlag_check_interval = \"100ms\"\n".into(),
        ..Options::default()
    })
    .await;
    let view = env.handle().shared().view.clone();
    let lag = |i: usize| view.borrow().replay_lag_bytes(i);
    wait_standbys_eligible(env.handle(), 64 << 10).await;
    let (c, notices) = connect_with_notices(env.pg_config(SUPERUSER, SUPERPASS)).await;
    c.simple_query("SET pgvigil.explain_routing = on").await.unwrap();
    let standbys: BTreeSet<i32> = [env.port(1), env.port(2)].into();
    let read_ports = |n: usize| {
        let c = &c;
        async move {
            let mut s = BTreeSet::new();
            for _ in 0..n {
                s.insert(port_of(c, "SELECT inet_server_port()").await);
            }
            s
        }
    };
    assert_eq!(read_ports(10).await, standbys, "both standbys take reads");

    pause_replay(&env, 1).await;
    env.direct(0)
        .await
        .batch_execute("CREATE TABLE filler AS SELECT g, repeat('w', 500) AS pad FROM generate_series(1, 4000) g")
        .await
        .unwrap();
    let behind = eventually(Duration::from_secs(20), || async { lag(1).is_some_and(|l| l > 64 << 10) && lag(2).is_some_and(|l| l < 64 << 10) }).await;
    assert!(behind, "pg1 behind, pg2 caught up: {:?} {:?}", lag(1), lag(2));
    notices.take();
    assert_eq!(read_ports(10).await, [env.port(2)].into(), "the lagging standby gets no reads");
    let n = notices.take();
    assert!(n.iter().all(|n| n.starts_with(&at(&env, 2))), "{n:?}");
    assert!(n.iter().any(|n| n.contains("not pg1 lag ") && n.contains("> routing.max_lag 64kB")), "{n:?}");
    let nodes = pool_nodes(&c).await;
    assert_eq!(nodes.len(), 3);
    let delay = |i: usize| nodes[i]["replication_delay"].parse::<u64>().unwrap();
    assert!(delay(1) > 64 << 10, "{nodes:?}");
    assert!(delay(2) < 64 << 10, "{nodes:?}");
    assert_eq!(delay(0), 0, "{nodes:?}");
    assert_eq!(nodes[1]["status"], "up");

    resume_replay(&env, 1).await;
    let caught_up = eventually(Duration::from_secs(30), || async { lag(1).is_some_and(|l| l < 64 << 10) }).await;
    assert!(caught_up, "pg1 caught up: {:?}", lag(1));
    assert_eq!(read_ports(10).await, standbys, "pg1 takes reads again");
    let nodes = pool_nodes(&c).await;
    assert!(nodes[1]["replication_delay"].parse::<u64>().unwrap() < 64 << 10, "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_reads_over_ten_thousand_sessions() {
    let weights = [1.0, 2.0, 2.0];
    // Client authentication is not what is measured here: trust keeps 10,000 logins cheap.
    let env = Env::start(Options { standbys: 2, weights: weights.to_vec(), auth_method: "trust", ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let started = std::time::Instant::now();
    const SESSIONS: usize = 10_000;
    const CONCURRENCY: usize = 8;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let config = env.pg_config(SUPERUSER, SUPERPASS);
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < SESSIONS {
                let c = connect(config.clone()).await.expect("connect");
                let p = port_of(&c, "SELECT inet_server_port()").await;
                *counts.entry(p).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for w in workers {
        for (p, n) in w.await.unwrap() {
            *counts.entry(p).or_default() += n;
        }
    }
    let took = started.elapsed();
    println!("{SESSIONS} sessions in {took:?}: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), SESSIONS);
    let total: f64 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let expected = SESSIONS as f64 * w / total;
        let got = counts.get(&env.port(i)).copied().unwrap_or(0) as f64;
        assert!((got - expected).abs() <= expected * 0.05, "node {i}: {got} reads, expected {expected} ±5%: {counts:?}");
    }
    // SHOW POOL_NODES counts the same reads and states the shares.
    let nodes = pool_nodes(&env.client().await).await;
    for (i, w) in weights.iter().enumerate() {
        assert_eq!(nodes[i]["select_cnt"], counts.get(&env.port(i)).copied().unwrap_or(0).to_string(), "{nodes:?}");
        assert_eq!(nodes[i]["lb_weight"], format!("{:.6}", w / total));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_extended_and_prepared_over_two_standbys() {
    let env = Env::start(Options { standbys: 2, ..Options::default() }).await;
    let port = env.addr.port();
    let init = tokio::task::block_in_place(|| pgbench(port, &["-i", "-s", "1", "-q"]));
    assert!(init.contains("done"), "{init}");
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let select_cnt = |i: usize| env.handle().shared().stats.select_cnt(i);
    for args in [
        &["-S", "-M", "extended"][..],
        &["-S", "-M", "prepared"][..],
        &["-M", "extended"][..],
        &["-M", "prepared"][..],
    ] {
        let before: Vec<u64> = (0..3).map(select_cnt).collect();
        let mut all = args.to_vec();
        all.extend(["-c", "6", "-j", "2", "-t", "200"]);
        let out = tokio::task::block_in_place(|| pgbench(port, &all));
        assert!(out.contains("number of transactions actually processed: 1200/1200"), "{args:?}:\n{out}");
        assert!(out.contains("number of failed transactions: 0 "), "{args:?}:\n{out}");
        let reads: Vec<u64> = (0..3).map(|i| select_cnt(i) - before[i]).collect();
        if args[0] == "-S" {
            assert!(reads[1] > 0 && reads[2] > 0, "{args:?}: both standbys served reads: {reads:?}");
        } else {
            // Each transaction's SELECT follows its UPDATE: the primary serves it.
            assert!(reads[0] >= 1200, "{args:?}: reads after writes on the primary: {reads:?}");
        }
    }
    // The last tpcb-like run wrote its history rows on the primary (pgbench truncates
    // the table before each run).
    let n: i64 = env.direct(0).await.query_one("SELECT count(*) FROM pgbench_history", &[]).await.unwrap().get(0);
    assert_eq!(n, 1200);
}
