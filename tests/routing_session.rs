//! Read/write routing and session state, on a primary and two streaming standbys:
//! settings and prepared statements on every node a session uses, transactions across
//! nodes, redirect rules and `pgvigil.route`, and standbys that stop.

// tokio_postgres::Client is not Debug, so `expect_err` is not available.
#![allow(clippy::err_expect)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_postgres::Client;

fn all_ports(env: &Env) -> BTreeSet<i32> {
    (0..env.cluster.len()).map(|i| env.port(i)).collect()
}

/// Runs `sql` `n` times; each result's first row must equal `want` after its port
/// (first column). Returns the ports.
async fn each_run(c: &Client, sql: &str, n: usize, want: &[&str]) -> BTreeSet<i32> {
    let mut ports = BTreeSet::new();
    for _ in 0..n {
        let r = rows(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        let row = r.last().unwrap_or_else(|| panic!("{sql}: no rows"));
        assert_eq!(&row[1..], want, "{sql} on port {}", row[0]);
        ports.insert(row[0].parse().unwrap());
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_prepared_statements_follow_the_session_to_every_node() {
    let env = Env::start(Options { standbys: 2, extra: "[routing]\ngranularity = \"statement\"\n".into(), ..Options::default() }).await;
    env.direct(0).await.batch_execute("CREATE SCHEMA custom; CREATE TABLE custom.marker (x int); INSERT INTO custom.marker VALUES (1)").await.unwrap();
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let all = all_ports(&env);
    let c = env.client().await;

    c.simple_query("SET search_path = custom, public").await.unwrap();
    c.simple_query("SET application_name = 'set_app'").await.unwrap();
    // Through the extended protocol too.
    c.execute("SET statement_timeout = '4321ms'", &[]).await.unwrap();
    let show = "SELECT inet_server_port(), current_setting('search_path'), current_setting('application_name'), current_setting('statement_timeout')";
    let ports = each_run(&c, show, 6, &["custom, public", "set_app", "4321ms"]).await;
    assert_eq!(ports, all, "the settings hold on every node");
    let ports = each_run(&c, "SELECT inet_server_port(), count(*) FROM marker", 3, &["1"]).await;
    assert_eq!(ports, all, "search_path finds custom.marker everywhere");
    let r = rows(&c, "INSERT INTO marker VALUES (2) RETURNING inet_server_port(), current_setting('search_path'), current_setting('statement_timeout')")
        .await
        .unwrap();
    assert_eq!(r[0], vec![env.port(0).to_string(), "custom, public".into(), "4321ms".into()], "the write saw them");
    c.simple_query("RESET statement_timeout").await.unwrap();
    assert_eq!(each_run(&c, "SELECT inet_server_port(), current_setting('statement_timeout')", 3, &["0"]).await, all);

    // A setting made in a transaction that commits stays; one rolled back does not.
    c.batch_execute("BEGIN").await.unwrap();
    c.simple_query("SET work_mem = '5MB'").await.unwrap();
    each_run(&c, "SELECT inet_server_port(), current_setting('work_mem')", 2, &["5MB"]).await;
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.simple_query("SET work_mem = '6MB'").await.unwrap();
    each_run(&c, "SELECT inet_server_port(), current_setting('work_mem')", 1, &["6MB"]).await;
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(each_run(&c, "SELECT inet_server_port(), current_setting('work_mem')", 6, &["5MB"]).await, all);

    // SQL PREPARE on one node; EXECUTE works wherever it lands (the primary, for now:
    // see sql_execute_of_a_prepared_read_is_balanced).
    c.simple_query("PREPARE q(int) AS SELECT inet_server_port(), $1 * 10").await.unwrap();
    each_run(&c, "EXECUTE q(4)", 6, &["40"]).await;
    c.simple_query("DEALLOCATE q").await.unwrap();
    let e = c.simple_query("EXECUTE q(4)").await.err().expect("q is gone");
    assert_eq!(sqlstate(&e), "26000", "{e:?}");
    c.simple_query("PREPARE q(int) AS SELECT inet_server_port(), $1 * 100").await.unwrap();
    each_run(&c, "EXECUTE q(4)", 6, &["400"]).await;

    // Extended-protocol prepared statement, parsed once, executed on every node.
    let st = c.prepare("SELECT inet_server_port(), $1::int + 1").await.unwrap();
    let mut ports = BTreeSet::new();
    for i in 0..9i32 {
        let r = c.query_one(&st, &[&i]).await.unwrap();
        assert_eq!(r.get::<_, i32>(1), i + 1);
        ports.insert(r.get::<_, i32>(0));
    }
    assert_eq!(ports, all, "the prepared statement ran on every node");
    drop(st);

    // DISCARD ALL forgets settings and prepared statements on every node.
    c.simple_query("DISCARD ALL").await.unwrap();
    let ports = each_run(
        &c,
        "SELECT inet_server_port(), current_setting('search_path'), current_setting('work_mem'), current_setting('application_name')",
        6,
        &["\"$user\", public", "4MB", ""],
    )
    .await;
    assert_eq!(ports, all, "reset everywhere");
    for _ in 0..3 {
        let e = c.simple_query("EXECUTE q(4)").await.err().expect("q is gone after DISCARD ALL");
        assert_eq!(sqlstate(&e), "26000", "{e:?}");
    }
    c.simple_query("PREPARE q(int) AS SELECT inet_server_port(), $1 * 1000").await.unwrap();
    each_run(&c, "EXECUTE q(4)", 6, &["4000"]).await;
    let st = c.prepare("SELECT inet_server_port(), $1::int * 2").await.unwrap();
    let mut ports = BTreeSet::new();
    for i in 0..6i32 {
        let r = c.query_one(&st, &[&i]).await.unwrap();
        assert_eq!(r.get::<_, i32>(1), i * 2);
        ports.insert(r.get::<_, i32>(0));
    }
    assert_eq!(ports, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_execute_of_a_prepared_read_is_balanced() {
    // docs/routing.md: "EXECUTE name(…) (SQL-level) runs where its PREPAREd statement
    // would". A prepared SELECT is a read, so its EXECUTEs are balanced.
    let env = Env::start(Options { standbys: 1, extra: "[routing]\ngranularity = \"statement\"\n".into(), ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let c = env.client().await;
    assert_eq!(reads(&c, 4).await, all_ports(&env), "plain reads use both nodes");
    c.simple_query("PREPARE q(int) AS SELECT inet_server_port(), $1 * 10").await.unwrap();
    assert_eq!(each_run(&c, "EXECUTE q(4)", 4, &["40"]).await, all_ports(&env), "EXECUTE of a prepared SELECT is balanced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_span_standby_and_primary() {
    // Weight 0 on the primary: a read reaches it only because a rule sent it there.
    let env = Env::start(Options { standbys: 2, weights: vec![0.0, 1.0, 1.0], ..Options::default() }).await;
    env.direct(0).await.batch_execute("CREATE TABLE tx (x int)").await.unwrap();
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let p0 = env.port(0);
    let primary = env.direct(0).await;
    let count = |x: i32| {
        let primary = &primary;
        async move { primary.query_one("SELECT count(*) FROM tx WHERE x = $1", &[&x]).await.unwrap().get::<_, i64>(0) }
    };
    let c = env.client().await;

    // COMMIT: a standby read, then a write; both nodes end the transaction.
    c.batch_execute("BEGIN").await.unwrap();
    assert_ne!(port_of(&c, "SELECT inet_server_port()").await, p0, "the first read is on a standby");
    assert_eq!(port_of(&c, "INSERT INTO tx VALUES (1) RETURNING inet_server_port()").await, p0);
    assert_eq!(count(1).await, 0, "not committed yet");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(count(1).await, 1, "committed");

    // ROLLBACK undoes it.
    c.batch_execute("BEGIN").await.unwrap();
    assert_ne!(port_of(&c, "SELECT inet_server_port()").await, p0);
    c.batch_execute("INSERT INTO tx VALUES (2)").await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count(2).await, 0, "rolled back");

    // SAVEPOINT and ROLLBACK TO on both nodes of the transaction.
    c.batch_execute("BEGIN").await.unwrap();
    assert_ne!(port_of(&c, "SELECT inet_server_port()").await, p0);
    c.batch_execute("SAVEPOINT a").await.unwrap();
    c.batch_execute("INSERT INTO tx VALUES (3)").await.unwrap();
    let r = rows(&c, "SELECT inet_server_port(), count(*) FROM tx WHERE x = 3").await.unwrap();
    assert_eq!(r[0], vec![p0.to_string(), "1".into()]);
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    let r = rows(&c, "SELECT inet_server_port(), count(*) FROM tx WHERE x = 3").await.unwrap();
    assert_eq!(r[0], vec![p0.to_string(), "0".into()], "rolled back to the savepoint");
    c.batch_execute("INSERT INTO tx VALUES (4)").await.unwrap();
    c.batch_execute("RELEASE SAVEPOINT a").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!((count(3).await, count(4).await), (0, 1));

    // An error on the standby, undone by ROLLBACK TO before the primary joined.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SAVEPOINT b").await.unwrap();
    let standby = port_of(&c, "SELECT inet_server_port()").await;
    assert_ne!(standby, p0);
    let e = c.simple_query("SELECT 1 / 0").await.err().expect("division by zero");
    assert_eq!(sqlstate(&e), "22012");
    let e = c.simple_query("SELECT 1").await.err().expect("the transaction is aborted");
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK TO SAVEPOINT b").await.unwrap();
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, standby, "the standby's part goes on");
    c.batch_execute("INSERT INTO tx VALUES (5)").await.unwrap();
    // An error on the primary, undone by ROLLBACK TO on both nodes.
    c.batch_execute("SAVEPOINT c").await.unwrap();
    let e = c.simple_query("INSERT INTO tx VALUES (1 / 0)").await.err().expect("division by zero");
    assert_eq!(sqlstate(&e), "22012");
    c.batch_execute("ROLLBACK TO SAVEPOINT c").await.unwrap();
    c.batch_execute("INSERT INTO tx VALUES (6)").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!((count(5).await, count(6).await), (1, 1), "both inserts committed");

    // SERIALIZABLE: everything on the primary.
    c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await.unwrap();
    for _ in 0..3 {
        let r = rows(&c, "SELECT inet_server_port(), current_setting('transaction_isolation')").await.unwrap();
        assert_eq!(r[0], vec![p0.to_string(), "serializable".into()]);
    }
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let r = rows(&c, "SELECT inet_server_port(), current_setting('transaction_isolation')").await.unwrap();
    assert_eq!(r[0], vec![p0.to_string(), "serializable".into()], "serializable by session default");
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    assert_ne!(port_of(&c, "SELECT inet_server_port()").await, p0, "read committed again: a standby");
    c.batch_execute("COMMIT").await.unwrap();

    // Temporary tables live on the primary.
    c.batch_execute("CREATE TEMP TABLE scratch (x int)").await.unwrap();
    c.batch_execute("INSERT INTO scratch VALUES (7)").await.unwrap();
    for _ in 0..3 {
        let r = rows(&c, "SELECT inet_server_port(), x FROM scratch").await.unwrap();
        assert_eq!(r[0], vec![p0.to_string(), "7".into()]);
    }
    let r = c.query_one("SELECT inet_server_port(), x FROM scratch", &[]).await.unwrap();
    assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (p0, 7), "extended protocol too");

}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_transaction_serializable_keeps_the_transaction_on_the_primary() {
    // docs/routing.md recognises serializable mode from SET TRANSACTION too. As the
    // first statement of a transaction, it must not reach a standby, which refuses
    // it ("cannot use serializable mode in a hot standby").
    let env = Env::start(Options { standbys: 1, weights: vec![0.0, 1.0], ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let c = env.client().await;
    c.batch_execute("BEGIN").await.unwrap();
    c.simple_query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").await.expect("SET TRANSACTION … SERIALIZABLE is accepted");
    let r = rows(&c, "SELECT inet_server_port(), current_setting('transaction_isolation')").await.unwrap();
    assert_eq!(r[0], vec![env.port(0).to_string(), "serializable".into()]);
    c.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_recovered_by_rollback_to_is_not_failed() {
    // After ROLLBACK TO SAVEPOINT the transaction is usable again ('T'): what pgvigil
    // answers itself must say so, and its writes count for trans_transaction.
    let env = Env::start(Options {
        standbys: 1,
        weights: vec![0.0, 1.0],
        extra: "[routing]\nafter_write = \"trans_transaction\"\n".into(),
        ..Options::default()
    })
    .await;
    env.direct(0).await.batch_execute("CREATE TABLE rt (x int)").await.unwrap();
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let mut raw = Raw::connect(env.addr).await.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    let status = |m: &[pgvigil::protocol::frame::Message]| m.last().map(|z| z.body[0]).unwrap_or(0) as char;
    for (sql, want) in [
        ("BEGIN", 'T'),
        ("SAVEPOINT s", 'T'),
        ("SELECT 1 / 0", 'E'),
        ("ROLLBACK TO SAVEPOINT s", 'T'),
        ("INSERT INTO rt VALUES (1)", 'T'),
        ("SET pgvigil.explain_routing = on", 'T'),
        ("SHOW POOL_NODES", 'T'),
        ("COMMIT", 'I'),
    ] {
        let m = raw.simple_query(sql).await;
        assert_eq!(status(&m), want, "transaction status after {sql}");
    }
    raw.simple_query("BEGIN").await;
    let m = raw.simple_query("SELECT inet_server_port()").await;
    raw.simple_query("COMMIT").await;
    assert_eq!(first_column(&m), vec![env.port(0).to_string()], "trans_transaction: a transaction of this session wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_rules_and_the_route_setting() {
    let env = Env::start(Options {
        standbys: 2,
        users: vec!["alice = \"alice-pw\"".into()],
        extra: "[routing]\ngranularity = \"statement\"\n\n\
                [[routing.redirect]]\napplication_name = \"^report\"\nto = \"standby\"\n\n\
                [[routing.redirect]]\ndatabase = \"^primdb$\"\nto = \"primary\"\n\n\
                [[routing.redirect]]\nuser = \"^alice$\"\nto = \"primary\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    let setup = env.direct(0).await;
    setup.batch_execute("CREATE DATABASE primdb").await.unwrap();
    setup.batch_execute("CREATE ROLE alice LOGIN PASSWORD 'alice-pw'").await.unwrap();
    env.wait_replicated().await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let all = all_ports(&env);
    let standbys: BTreeSet<i32> = [env.port(1), env.port(2)].into();
    let primary: BTreeSet<i32> = [env.port(0)].into();
    let mut config = env.pg_config(SUPERUSER, SUPERPASS);
    config.application_name("report_daily");
    let report = connect(config).await.unwrap();
    assert_eq!(reads(&report, 12).await, standbys, "application_name ^report: standbys only");

    let mut config = env.pg_config(SUPERUSER, SUPERPASS);
    config.dbname("primdb");
    let primdb = connect(config).await.unwrap();
    assert_eq!(reads(&primdb, 6).await, primary, "database ^primdb$: the primary");

    let alice = connect(env.pg_config("alice", "alice-pw")).await.unwrap();
    assert_eq!(reads(&alice, 6).await, primary, "user ^alice$: the primary");

    let mut config = env.pg_config(SUPERUSER, SUPERPASS);
    config.application_name("other");
    let (c, notices) = connect_with_notices(config).await;
    assert_eq!(reads(&c, 6).await, all, "no rule: every node");
    c.simple_query("SET pgvigil.route = 'primary'").await.unwrap();
    assert_eq!(reads(&c, 6).await, primary);
    c.simple_query("SET pgvigil.route = 'standby'").await.unwrap();
    assert_eq!(reads(&c, 6).await, standbys);
    c.simple_query("SET pgvigil.route = 'auto'").await.unwrap();
    assert_eq!(reads(&c, 6).await, all);
    let e = c.simple_query("SET pgvigil.route = 'sideways'").await.err().expect("bad value");
    assert_eq!(sqlstate(&e), "22023", "{e:?}");
    assert!(e.as_db_error().unwrap().message().contains("pgvigil.route"), "{e:?}");
    assert_eq!(reads(&c, 6).await, all, "the bad value changed nothing");
    // The setting overrides a redirect rule.
    report.simple_query("SET pgvigil.route = 'primary'").await.unwrap();
    assert_eq!(reads(&report, 3).await, primary);
    report.simple_query("SET pgvigil.route = 'auto'").await.unwrap();
    assert_eq!(reads(&report, 6).await, standbys, "auto: the redirect rule again");
    // Writes still go to the primary.
    let r = rows(&report, "CREATE TABLE IF NOT EXISTS rw (x int); INSERT INTO rw VALUES (1) RETURNING inet_server_port()").await.unwrap();
    assert_eq!(r[0][0], env.port(0).to_string());

    // The explain NOTICE names the setting that chose the node.
    c.simple_query("SET pgvigil.explain_routing = on").await.unwrap();
    c.simple_query("SET pgvigil.route = 'primary'").await.unwrap();
    notices.take();
    port_of(&c, "SELECT inet_server_port()").await;
    let n = notices.take();
    assert!(n.len() == 1 && n[0].contains("pgvigil.route = primary"), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_notice_names_the_redirect_rule() {
    // docs/routing.md, "Seeing the decisions": when a redirect rule chose the node, the
    // reason names that rule.
    let env = Env::start(Options {
        standbys: 1,
        extra: "[[routing.redirect]]\napplication_name = \"^report\"\nto = \"primary\"\n".into(),
        ..Options::default()
    })
    .await;
    let mut config = env.pg_config(SUPERUSER, SUPERPASS);
    config.application_name("report");
    let (c, notices) = connect_with_notices(config).await;
    c.simple_query("SET pgvigil.explain_routing = on").await.unwrap();
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, env.port(0));
    let n = notices.take();
    assert!(n.len() == 1 && n[0].contains("redirect"), "the NOTICE names the redirect rule: {n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_standbys_disturb_only_the_sessions_that_used_them() {
    let mut env = Env::start(Options {
        standbys: 2,
        // pg_sleep() is VOLATILE: listed here, it may run on a standby.
        extra: "[routing]\nread_only_functions = [\"pg_sleep\"]\n\n[[routing.redirect]]\napplication_name = \"^on_pg1$\"\nto = \"pg1\"\n\n\
                [[routing.redirect]]\napplication_name = \"^on_pg2$\"\nto = \"pg2\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let (p0, p1, p2) = (env.port(0), env.port(1), env.port(2));
    let base = env.pg_config(SUPERUSER, SUPERPASS);
    let session = |app: &str| {
        let mut config = base.clone();
        config.application_name(app);
        connect(config)
    };
    let on_pg2 = session("on_pg2").await.unwrap();
    assert_eq!(port_of(&on_pg2, "SELECT inet_server_port()").await, p2);
    let on_primary = session("pinned").await.unwrap();
    on_primary.simple_query("SET pgvigil.route = 'primary'").await.unwrap();
    assert_eq!(port_of(&on_primary, "SELECT inet_server_port()").await, p0);
    let idle_on_pg1 = session("on_pg1").await.unwrap();
    assert_eq!(port_of(&idle_on_pg1, "SELECT inet_server_port()").await, p1);
    let tx_on_pg1 = session("on_pg1").await.unwrap();
    tx_on_pg1.batch_execute("BEGIN").await.unwrap();
    assert_eq!(port_of(&tx_on_pg1, "SELECT inet_server_port()").await, p1);

    tokio::task::block_in_place(|| env.cluster.stop(1)).unwrap();

    // Sessions that never used pg1 see nothing.
    for _ in 0..10 {
        assert_eq!(port_of(&on_pg2, "SELECT inet_server_port()").await, p2);
        assert_eq!(port_of(&on_primary, "SELECT inet_server_port()").await, p0);
    }
    // An idle session's next statement outside a transaction goes elsewhere.
    let moved = first_success(&idle_on_pg1).await;
    assert_ne!(moved, p1);
    for _ in 0..5 {
        assert_ne!(port_of(&idle_on_pg1, "SELECT inet_server_port()").await, p1);
    }
    // A transaction that used pg1 cannot go on; after ROLLBACK the session can.
    let e = tx_on_pg1.simple_query("SELECT inet_server_port()").await.err().expect("the transaction lost pg1");
    assert!(["08006", "25P02", "57P01"].contains(&sqlstate(&e).as_str()), "{e:?}");
    tx_on_pg1.batch_execute("ROLLBACK").await.unwrap();
    assert_ne!(port_of(&tx_on_pg1, "SELECT inet_server_port()").await, p1);

    // A crash of pg2 with a statement in flight there: its session moves to the
    // primary, the others are untouched.
    let busy_on_pg2 = Arc::new(session("on_pg2").await.unwrap());
    assert_eq!(port_of(&busy_on_pg2, "SELECT inet_server_port()").await, p2);
    let in_flight = {
        let c = busy_on_pg2.clone();
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(60)").await.map(|_| ()) })
    };
    env.wait_running(2, "pg_sleep(60)").await;
    tokio::task::block_in_place(|| env.cluster.kill9(2)).unwrap();
    for _ in 0..10 {
        assert_eq!(port_of(&on_primary, "SELECT inet_server_port()").await, p0);
    }
    assert_eq!(first_success(&on_pg2).await, p0, "only the primary is left");
    let e = in_flight.await.unwrap().err().expect("the statement running on pg2 failed");
    assert_eq!(sqlstate(&e), "08006", "{e:?}");
    assert_eq!(first_success(&busy_on_pg2).await, p0, "the session whose statement pg2 lost goes on");
    for _ in 0..5 {
        assert_eq!(port_of(&on_pg2, "SELECT inet_server_port()").await, p0);
        assert_eq!(port_of(&idle_on_pg1, "SELECT inet_server_port()").await, p0);
    }
    let down = eventually(Duration::from_secs(20), || async {
        let nodes = pool_nodes(&on_primary).await;
        nodes[1]["status"] == "down" && nodes[2]["status"] == "down" && nodes[0]["status"] == "up"
    })
    .await;
    assert!(down, "SHOW POOL_NODES: {:?}", pool_nodes(&on_primary).await);

}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_shutdown_mid_statement_leaves_the_session_usable() {
    // A standby stopped (fast shutdown) while it runs a session's read: PostgreSQL ends
    // that backend with FATAL 57P01. The statement may fail, but the session should go
    // on on another node, as it does when the standby crashes (see
    // stopped_standbys_disturb_only_the_sessions_that_used_them).
    let mut env = Env::start(Options {
        standbys: 1,
        extra: "[routing]\nread_only_functions = [\"pg_sleep\"]\n\n[[routing.redirect]]\napplication_name = \"^on_pg1$\"\nto = \"pg1\"\n".into(),
        ..Options::default()
    })
    .await;
    wait_standbys_eligible(env.handle(), 16 << 20).await;
    let mut config = env.pg_config(SUPERUSER, SUPERPASS);
    config.application_name("on_pg1");
    let busy = Arc::new(connect(config).await.unwrap());
    assert_eq!(port_of(&busy, "SELECT inet_server_port()").await, env.port(1));
    let in_flight = {
        let c = busy.clone();
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(60)").await.map(|_| ()) })
    };
    env.wait_running(1, "pg_sleep(60)").await;
    tokio::task::block_in_place(|| env.cluster.stop(1)).unwrap();
    let e = in_flight.await.unwrap().err().expect("the statement running on pg1 failed");
    let got = e.as_db_error().map(|e| format!("{} {} {}", e.severity(), e.code().code(), e.message()));
    assert!(!busy.is_closed(), "the session stays open; its statement got {got:?}");
    assert_eq!(first_success(&busy).await, env.port(0));
}

/// The ports of `n` reads.
async fn reads(c: &Client, n: usize) -> BTreeSet<i32> {
    let mut s = BTreeSet::new();
    for _ in 0..n {
        s.insert(port_of(c, "SELECT inet_server_port()").await);
    }
    s
}

/// The port of the first `SELECT inet_server_port()` that succeeds; one failure (the
/// statement that found the connection gone) is allowed.
async fn first_success(c: &Client) -> i32 {
    match rows(c, "SELECT inet_server_port()").await {
        Ok(r) => r[0][0].parse().unwrap(),
        Err(e) => {
            assert!(!c.is_closed(), "the session stays open: {e:?}");
            port_of(c, "SELECT inet_server_port()").await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_load_balancing_off_everything_runs_on_the_primary_unparsed() {
    let env = Env::start(Options { standbys: 2, extra: "[routing]\nload_balance = false\n".into(), ..Options::default() }).await;
    let (c, notices) = connect_with_notices(env.pg_config(SUPERUSER, SUPERPASS)).await;
    c.batch_execute("SET pgvigil.explain_routing = on").await.unwrap();
    for sql in ["SELECT inet_server_port()", "BEGIN; SELECT inet_server_port()", "SELECT inet_server_port()"] {
        assert_eq!(port_of(&c, sql).await, env.port(0), "{sql}");
    }
    c.batch_execute("COMMIT").await.unwrap();
    let said = notices.take();
    assert!(!said.is_empty() && said.iter().all(|n| n.contains("pg0 (primary): load balancing is off")), "{said:?}");
    // A syntax error still comes from the primary, as PostgreSQL words it.
    let e = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42601"));
}

/// The text values of the DataRows a Raw client receives up to ReadyForQuery.
async fn raw_rows(raw: &mut Raw) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    loop {
        let m = raw.recv().await.expect("an answer");
        match m.tag {
            b'D' => {
                let b = &m.body;
                let n = i16::from_be_bytes([b[0], b[1]]) as usize;
                let (mut at, mut row) = (2, Vec::new());
                for _ in 0..n {
                    let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
                    row.push(String::from_utf8_lossy(&b[at + 4..at + 4 + len]).into_owned());
                    at += 4 + len;
                }
                rows.push(row);
            }
            b'E' => panic!("error: {:?}", pgvigil::protocol::backend::parse_error_fields(&m.body)),
            b'Z' => return rows,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_read_after_a_multi_statement_begin_stays_in_that_transaction() {
    let env = Env::start(Options { standbys: 2, extra: "[routing]\ngranularity = \"statement\"\n".into(), ..Options::default() }).await;
    env.direct(0).await.batch_execute("CREATE TABLE pipe (x int)").await.unwrap();
    env.wait_replicated().await;
    let mut raw = Raw::connect(env.addr).await.login(SUPERUSER, SUPERPASS).await.unwrap().0;
    // Reads prefer standbys, so the read below cannot simply follow the write.
    let mut out = bytes::BytesMut::new();
    pgvigil::protocol::frontend::write_query(&mut out, "SET pgvigil.route = 'standby'");
    raw.send(&out).await;
    raw_rows(&mut raw).await;
    // Both queries in one write: the second waits while the first is running.
    let mut out = bytes::BytesMut::new();
    pgvigil::protocol::frontend::write_query(&mut out, "BEGIN; INSERT INTO pipe VALUES (1)");
    pgvigil::protocol::frontend::write_query(&mut out, "SELECT inet_server_port(), count(*) FROM pipe");
    pgvigil::protocol::frontend::write_query(&mut out, "ROLLBACK");
    raw.send(&out).await;
    assert!(raw_rows(&mut raw).await.is_empty());
    let rows = raw_rows(&mut raw).await;
    assert_eq!(rows, vec![vec![env.port(0).to_string(), "1".to_string()]], "the read ran in the open transaction");
    raw_rows(&mut raw).await;
    assert_eq!(env.direct(0).await.query_one("SELECT count(*) FROM pipe", &[]).await.unwrap().get::<_, i64>(0), 0);
}
