//! The statement classifier with function volatility read from a real PostgreSQL.

mod common;

use common::*;
use pgvigil::monitor::catalog::load_functions;
use pgvigil::router::{classify, final_kind, FunctionPolicy, Kind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_functions_are_routed_by_their_volatility() {
    let env = Env::start(Options::default()).await;
    let c = env.direct(0).await;
    c.batch_execute(
        "CREATE TABLE audit (x int);
         CREATE FUNCTION log_it(i int) RETURNS int LANGUAGE sql VOLATILE AS 'INSERT INTO audit VALUES (i) RETURNING x';
         CREATE FUNCTION twice(i int) RETURNS int LANGUAGE sql STABLE AS 'SELECT i * 2';
         CREATE SCHEMA other;
         CREATE FUNCTION other.twice(i text) RETURNS text LANGUAGE sql VOLATILE AS 'SELECT i';",
    )
    .await
    .unwrap();
    let catalog = load_functions(&c).await.unwrap();
    assert!(catalog.len() > 2000, "the whole pg_proc: {}", catalog.len());
    let lookup = |f: &pgvigil::router::FunctionRef| catalog.lookup(f);
    let none = FunctionPolicy::default();
    let route = |sql: &str, policy: &FunctionPolicy| final_kind(&classify(sql), policy, &lookup);

    let (kind, reason) = route("SELECT log_it(1)", &none);
    assert!(matches!(kind, Kind::Write), "{reason}");
    assert!(reason.to_string().contains("log_it"), "{reason}");
    assert!(matches!(route("SELECT public.twice(2)", &none).0, Kind::Read));
    assert!(matches!(route("SELECT now(), lower('X'), abs(-1)", &none).0, Kind::Read));
    // Unqualified, "twice" might resolve to other.twice (VOLATILE): primary.
    assert!(matches!(route("SELECT twice(2)", &none).0, Kind::Write));
    // pg_is_in_recovery() is VOLATILE in pg_proc, so it goes to the primary.
    assert!(matches!(route("SELECT pg_is_in_recovery()", &none).0, Kind::Write));
    // Configured lists override the catalog.
    let policy = FunctionPolicy::new(&["twice".to_string(), "pg_is_in_recovery".to_string()], &["lower".to_string()]).unwrap();
    assert!(matches!(route("SELECT twice(2)", &policy).0, Kind::Read));
    assert!(matches!(route("SELECT pg_is_in_recovery()", &policy).0, Kind::Read));
    assert!(matches!(route("SELECT lower('X')", &policy).0, Kind::Write));
    // A function the catalog does not know is treated as a writer.
    assert!(matches!(route("SELECT not_created_yet()", &none).0, Kind::Write));
}
