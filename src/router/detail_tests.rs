//! Fields beyond kind and reason; FunctionPolicy and final_kind.

use super::*;

fn f(schema: Option<&str>, name: &str) -> FunctionRef {
    FunctionRef { schema: schema.map(str::to_string), name: name.to_string() }
}

fn r(schema: Option<&str>, name: &str) -> RelationRef {
    RelationRef { schema: schema.map(str::to_string), name: name.to_string() }
}

#[test]
fn functions_and_relations_are_listed() {
    let c = classify(
        "WITH w AS (SELECT my_f(a) FROM s.t) SELECT public.g(x), lower(y) FROM w, u \
         WHERE z IN (SELECT h() FROM \"Quoted\")",
    );
    assert_eq!(c.kind, Kind::Read);
    for want in [f(None, "my_f"), f(Some("public"), "g"), f(None, "lower"), f(None, "h")] {
        assert!(c.functions.contains(&want), "{want:?} missing from {:?}", c.functions);
    }
    assert_eq!(c.functions.len(), 4);
    for want in [r(Some("s"), "t"), r(None, "u"), r(None, "Quoted")] {
        assert!(c.relations.contains(&want), "{want:?} missing from {:?}", c.relations);
    }
    assert!(!c.relations.contains(&r(None, "w")), "CTE name listed as a relation");
    assert_eq!(c.statements, 1);
    assert!(!c.forced_primary_hint);
}

#[test]
fn counts_statements_and_flags_hints() {
    assert_eq!(classify("SELECT 1; SELECT 2;").statements, 2);
    assert_eq!(classify("").statements, 0);
    let c = classify("/*NO LOAD BALANCE*/ BEGIN");
    assert!(c.forced_primary_hint);
    assert_eq!(c.kind, Kind::TxControl(TxControl::Begin { read_only: None, isolation: None, deferrable: None }));
}

#[test]
fn transaction_modes() {
    let cases: &[(&str, TxControl)] = &[
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            TxControl::Begin {
                read_only: Some(true),
                isolation: Some(Isolation::Serializable),
                deferrable: Some(true),
            },
        ),
        (
            "START TRANSACTION READ WRITE, ISOLATION LEVEL READ COMMITTED",
            TxControl::Begin {
                read_only: Some(false),
                isolation: Some(Isolation::ReadCommitted),
                deferrable: None,
            },
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, NOT DEFERRABLE",
            TxControl::SetTransaction {
                read_only: None,
                isolation: Some(Isolation::RepeatableRead),
                deferrable: Some(false),
            },
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            TxControl::SetSessionCharacteristics {
                read_only: None,
                isolation: Some(Isolation::Serializable),
                deferrable: None,
            },
        ),
        (
            "SET LOCAL transaction_read_only TO off",
            TxControl::SetTransaction { read_only: Some(false), isolation: None, deferrable: None },
        ),
        (
            "SET default_transaction_isolation = 'serializable'",
            TxControl::SetSessionCharacteristics {
                read_only: None,
                isolation: Some(Isolation::Serializable),
                deferrable: None,
            },
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(classify(sql).kind, Kind::TxControl(want.clone()), "{sql}");
    }
}

#[test]
fn serializable_always_needs_the_primary() {
    let tx = |sql: &str| match classify(sql).kind {
        Kind::TxControl(t) => t,
        other => panic!("{sql}: {other:?}"),
    };
    assert!(serializable_needs_primary(&tx("BEGIN ISOLATION LEVEL SERIALIZABLE")));
    assert!(serializable_needs_primary(&tx(
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"
    )));
    assert!(serializable_needs_primary(&tx("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")));
    assert!(!serializable_needs_primary(&tx("BEGIN ISOLATION LEVEL REPEATABLE READ")));
    assert!(!serializable_needs_primary(&tx("BEGIN")));
    assert!(!serializable_needs_primary(&TxControl::Commit));
}

#[test]
fn settings() {
    assert_eq!(pgvigil_setting("SET pgvigil.route = 'primary'"), Some(("route".into(), "primary".into())));
    assert_eq!(pgvigil_setting("set PGVIGIL.ROUTE to Standby"), Some(("route".into(), "standby".into())));
    assert_eq!(pgvigil_setting("SET pgvigil.route TO auto"), Some(("route".into(), "auto".into())));
    assert_eq!(
        pgvigil_setting("SET pgvigil.explain_routing = on"),
        Some(("explain_routing".into(), "on".into()))
    );
    assert_eq!(pgvigil_setting("RESET pgvigil.route"), Some(("route".into(), "default".into())));
    assert_eq!(pgvigil_setting("SET search_path = a"), None);
    assert_eq!(pgvigil_setting("SELECT 1"), None);
    assert_eq!(pgvigil_setting("SET pgvigil.route = 'primary'; SELECT 1"), None);
    assert_eq!(
        classify("SET search_path = a, \"B\"").setting,
        Some(("search_path".into(), "a, B".into()))
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn function_policy() {
    let policy = FunctionPolicy::new(&strings(&["app\\.read_.*", "safe_f"]), &strings(&["audit_.*", "app.safe_g"]))
        .unwrap_or_else(|e| panic!("{e}"));
    let all_volatile = |_: &FunctionRef| Some(Volatility::Volatile);
    let all_stable = |_: &FunctionRef| Some(Volatility::Stable);
    let unknown = |_: &FunctionRef| None;
    // Read-only list beats a volatile catalog entry, qualified or not.
    assert!(!policy.is_write(&f(Some("app"), "read_x"), &all_volatile));
    assert!(!policy.is_write(&f(None, "safe_f"), &all_volatile));
    assert!(!policy.is_write(&f(Some("other"), "safe_f"), &all_volatile));
    // Unqualified read_x does not match "app\.read_.*".
    assert!(policy.is_write(&f(None, "read_x"), &all_volatile));
    // Write list wins over the read-only list and over the catalog.
    assert!(policy.is_write(&f(None, "audit_log"), &all_stable));
    assert!(policy.is_write(&f(Some("app"), "safe_g"), &all_stable));
    assert!(!policy.is_write(&f(None, "safe_g"), &all_stable));
    // Anchored: "my_audit_x" is not "audit_.*".
    assert!(!policy.is_write(&f(None, "my_audit_x"), &all_stable));
    // Catalog: volatile or unknown → write.
    assert!(policy.is_write(&f(None, "random"), &all_volatile));
    assert!(policy.is_write(&f(None, "mystery"), &unknown));
    assert!(!policy.is_write(&f(None, "lower"), &|_: &FunctionRef| Some(Volatility::Immutable)));
}

#[test]
fn bad_regex_is_named() {
    let err = FunctionPolicy::new(&strings(&["ok", "bad(("]), &[]).err().unwrap_or_default();
    assert!(err.contains("bad((") && err.contains("read_only_functions"), "{err}");
    let err = FunctionPolicy::new(&[], &strings(&["[z-a]"])).err().unwrap_or_default();
    assert!(err.contains("[z-a]") && err.contains("write_functions"), "{err}");
}

#[test]
fn final_kind_uses_policy_and_catalog() {
    let policy = FunctionPolicy::new(&strings(&["trusted"]), &strings(&["audit"])).unwrap_or_default();
    let catalog = |f: &FunctionRef| match f.name.as_str() {
        "now" | "lower" => Some(Volatility::Stable),
        "random" | "trusted" => Some(Volatility::Volatile),
        _ => None,
    };
    let cases: &[(&str, Kind, &str)] = &[
        ("SELECT now(), lower('x')", Kind::Read, "read: SELECT"),
        ("SELECT random()", Kind::Write, "writing function random()"),
        ("SELECT * FROM t WHERE a = (SELECT unknown_f())", Kind::Write, "unknown_f()"),
        ("SELECT trusted()", Kind::Read, "read: SELECT"),
        ("SELECT now(), public.audit()", Kind::Write, "public.audit()"),
        ("SELECT 1", Kind::Read, "read: SELECT"),
        ("INSERT INTO t VALUES (now())", Kind::Write, "write: INSERT"),
        ("SET search_path = a", Kind::SessionState, "session state: SET"),
        ("SELECT nextval('s')", Kind::Write, "nextval"),
    ];
    for (sql, kind, reason) in cases {
        let (k, r) = final_kind(&classify(sql), &policy, &catalog);
        assert_eq!(&k, kind, "{sql}");
        assert!(r.to_string().contains(reason), "{sql}: {r}");
    }
}

#[test]
fn temp_tables_created() {
    let cases: &[(&str, &[RelationRef])] = &[
        ("CREATE TEMP TABLE tt (id int)", &[r(None, "tt")]),
        ("CREATE TEMPORARY TABLE \"Tt\" (id int) ON COMMIT DROP", &[r(None, "Tt")]),
        ("create local temp table TT (id int)", &[r(None, "tt")]),
        ("CREATE TEMP TABLE n AS SELECT * FROM t", &[r(None, "n")]),
        ("CREATE TEMP TABLE n AS EXECUTE p(1)", &[r(None, "n")]),
        ("SELECT * INTO TEMP tt FROM t", &[r(None, "tt")]),
        ("SELECT * INTO TEMPORARY TABLE tt FROM t", &[r(None, "tt")]),
        ("SELECT 1 AS a INTO TEMP tt UNION SELECT 2", &[r(None, "tt")]),
        ("CREATE TEMP VIEW tv AS SELECT * FROM t", &[r(None, "tv")]),
        ("CREATE OR REPLACE TEMP VIEW tv AS SELECT 1", &[r(None, "tv")]),
        ("CREATE TEMP SEQUENCE ts", &[r(None, "ts")]),
        ("CREATE TABLE pg_temp.x (a int)", &[r(Some("pg_temp"), "x")]),
        ("CREATE TABLE PG_TEMP.x AS SELECT 1", &[r(Some("pg_temp"), "x")]),
        ("CREATE VIEW pg_temp.v AS SELECT 1", &[r(Some("pg_temp"), "v")]),
        ("CREATE SEQUENCE pg_temp_3.s", &[r(Some("pg_temp_3"), "s")]),
        ("SELECT * INTO pg_temp.x FROM t", &[r(Some("pg_temp"), "x")]),
        ("EXPLAIN ANALYZE CREATE TEMP TABLE n AS SELECT 1", &[r(None, "n")]),
        ("CREATE TEMP TABLE a (x int); CREATE TEMP TABLE b (x int); CREATE TEMP TABLE a (y int)", &[r(None, "a"), r(None, "b")]),
        // Not temporary, or not created.
        ("CREATE TABLE t (id int)", &[]),
        ("CREATE UNLOGGED TABLE t (id int)", &[]),
        ("CREATE TABLE pg_temporary.t (id int)", &[]),
        ("CREATE TABLE pg_temp_x.t (id int)", &[]),
        ("CREATE TABLE n AS SELECT 1", &[]),
        ("SELECT * INTO newt FROM t", &[]),
        ("CREATE VIEW v AS SELECT 1", &[]),
        ("CREATE SEQUENCE s", &[]),
        ("EXPLAIN CREATE TEMP TABLE n AS SELECT 1", &[]),
        ("SELECT * FROM pg_temp.x", &[]),
        ("INSERT INTO pg_temp.x VALUES (1)", &[]),
        ("DROP TABLE tt", &[]),
        ("SELEC 1", &[]),
    ];
    for (sql, want) in cases {
        assert_eq!(classify(sql).temp_tables_created, *want, "{sql}");
    }
    // Every other field stays as before.
    let c = classify("CREATE TEMP TABLE tt AS SELECT * FROM t");
    assert_eq!((c.kind, c.reason.to_string()), (Kind::Write, "write: CREATE TABLE AS".to_string()));
    assert!(c.relations.contains(&r(None, "t")) && c.relations.contains(&r(None, "tt")));
}

#[test]
fn prepared_statements() {
    let c = classify("PREPARE Sel (int, text) AS SELECT lower($2) FROM s.t WHERE id = $1");
    assert_eq!((c.kind.clone(), c.reason.to_string()), (Kind::SessionState, "session state: PREPARE".to_string()));
    let (name, inner) = c.prepared.clone().unwrap_or_else(|| panic!("no prepared: {c:?}"));
    assert_eq!(name, "sel", "folded like an identifier");
    assert_eq!(inner.kind, Kind::Read);
    assert_eq!(inner.reason, Reason::Read("SELECT"));
    assert_eq!(inner.functions, vec![f(None, "lower")]);
    assert_eq!(inner.relations, vec![r(Some("s"), "t")]);
    assert_eq!(inner.statements, 1);
    assert!(inner.prepared.is_none() && !inner.forced_primary_hint);
    assert_eq!((c.executes.clone(), c.deallocates.clone()), (None, None));

    let name_and = |sql: &str| {
        let c = classify(sql);
        let (name, inner) = c.prepared.unwrap_or_else(|| panic!("{sql}: no prepared"));
        (name, inner.kind, inner.reason.to_string())
    };
    assert_eq!(name_and("PREPARE \"MixedCase\" AS SELECT 1"), ("MixedCase".into(), Kind::Read, "read: SELECT".into()));
    assert_eq!(
        name_and("PREPARE ins (int) AS INSERT INTO t VALUES ($1)"),
        ("ins".into(), Kind::Write, "write: INSERT".into())
    );
    assert_eq!(
        name_and("PREPARE lk AS SELECT * FROM t WHERE id = $1 FOR UPDATE"),
        ("lk".into(), Kind::Write, "row lock: FOR UPDATE".into())
    );
    assert_eq!(
        name_and("PREPARE nv AS SELECT nextval('s')"),
        ("nv".into(), Kind::Write, "writing function nextval()".into())
    );
    assert_eq!(name_and("PREPARE cfg AS SELECT set_config('a.b', $1, false)").1, Kind::SessionState);
    // A hint on the PREPARE sends its EXECUTEs to the primary too.
    assert_eq!(
        name_and("/*NO LOAD BALANCE*/ PREPARE h AS SELECT 1"),
        ("h".into(), Kind::Write, "hint: /*NO LOAD BALANCE*/".into())
    );
    // The final kind of what a PREPARE holds follows the function policy like any read.
    let inner = classify("PREPARE v AS SELECT random()").prepared.map(|(_, c)| *c);
    let inner = inner.unwrap_or_else(|| panic!("no prepared"));
    let policy = FunctionPolicy::default();
    let (kind, _) = final_kind(&inner, &policy, &|_: &FunctionRef| Some(Volatility::Volatile));
    assert_eq!(kind, Kind::Write);

    assert_eq!(classify("SELECT 1").prepared, None);
    assert_eq!(classify("PREPARE TRANSACTION 'g'").prepared, None);
    assert_eq!(classify("PREPARE p AS SELEC 1").prepared, None);
}

#[test]
fn execute_and_deallocate() {
    let c = classify("EXECUTE Sel(1, 'x')");
    assert_eq!((c.kind, c.reason), (Kind::Write, Reason::Execute));
    assert_eq!(c.executes.as_deref(), Some("sel"));
    assert_eq!(classify("EXECUTE \"Sel\"").executes.as_deref(), Some("Sel"));
    assert_eq!(classify("EXPLAIN ANALYZE EXECUTE p(1)").executes.as_deref(), Some("p"));
    assert_eq!(classify("EXPLAIN EXECUTE p(1)").executes, None, "plain EXPLAIN runs nothing");
    assert_eq!(classify("SELECT 1").executes, None);

    let cases: &[(&str, Option<Option<&str>>)] = &[
        ("DEALLOCATE sel", Some(Some("sel"))),
        ("DEALLOCATE PREPARE Sel", Some(Some("sel"))),
        ("DEALLOCATE \"Sel\"", Some(Some("Sel"))),
        ("DEALLOCATE ALL", Some(None)),
        ("DEALLOCATE PREPARE ALL", Some(None)),
        ("DISCARD ALL", None),
        ("SELECT 1", None),
    ];
    for (sql, want) in cases {
        let c = classify(sql);
        assert_eq!(c.deallocates, want.map(|o| o.map(str::to_string)), "{sql}");
        if want.is_some() {
            assert_eq!((c.kind, c.reason), (Kind::SessionState, Reason::SessionState("DEALLOCATE")), "{sql}");
        }
    }
}

#[test]
fn several_statements_report_the_last_prepare_execute_deallocate() {
    let c = classify("PREPARE a AS SELECT 1; PREPARE b AS INSERT INTO t VALUES (1); EXECUTE a; DEALLOCATE a");
    assert_eq!(c.prepared.as_ref().map(|(n, inner)| (n.as_str(), inner.kind.clone())), Some(("b", Kind::Write)));
    assert_eq!(c.executes.as_deref(), Some("a"));
    assert_eq!(c.deallocates, Some(Some("a".to_string())));
    assert_eq!(c.kind, Kind::Write);
}
