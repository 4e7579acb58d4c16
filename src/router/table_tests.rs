//! The rules as a table: SQL, expected route (the kind), expected reason substring.

use super::*;

/// Short kind names for the table; "tx-primary" is transaction control that needs the
/// primary (SERIALIZABLE).
fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Read => "read",
        Kind::Write => "write",
        Kind::SessionState => "session",
        Kind::TxControl(tx) if serializable_needs_primary(tx) => "tx-primary",
        Kind::TxControl(_) => "tx",
        Kind::Unparsable => "unparsable",
    }
}

pub(super) const TABLE: &[(&str, &str, &str)] = &[
    // Reads
    ("SELECT 1", "read", "read: SELECT"),
    ("select * from t where id = $1", "read", "read: SELECT"),
    ("SELECT a, b FROM s.t JOIN u USING (id) ORDER BY a LIMIT 10", "read", "read: SELECT"),
    ("VALUES (1), (2)", "read", "read: SELECT"),
    ("TABLE t", "read", "read: SELECT"),
    ("SHOW search_path", "read", "read: SHOW"),
    ("SHOW ALL", "read", "read: SHOW"),
    ("SELECT 1 UNION ALL SELECT 2", "read", "read: SELECT"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "read", "read: SELECT"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r WHERE n < 5) SELECT * FROM r", "read", "read: SELECT"),
    ("SELECT * FROM \"My Table\" WHERE \"Col\" = 'FOR UPDATE'", "read", "read: SELECT"),
    ("SELECT 'INSERT INTO t VALUES (1)'", "read", "read: SELECT"),
    ("SELECT $$ DELETE FROM t $$", "read", "read: SELECT"),
    ("SELECT now(), lower('X'), public.f(1)", "read", "read: SELECT"),
    ("SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1", "read", "read: SELECT"),
    ("EXPLAIN SELECT * FROM t", "read", "read: EXPLAIN"),
    ("EXPLAIN (COSTS off) SELECT * FROM t", "read", "read: EXPLAIN"),
    ("EXPLAIN INSERT INTO t VALUES (1)", "read", "read: EXPLAIN"),
    ("EXPLAIN ANALYZE SELECT * FROM t", "read", "read: EXPLAIN ANALYZE"),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", "read", "read: EXPLAIN"),
    ("COPY t TO STDOUT", "read", "read: COPY TO"),
    ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", "read", "read: COPY TO"),
    ("SELECT 1; SELECT 2", "read", "multi-statement"),
    ("SELECT 1;", "read", "read: SELECT"),
    ("-- comment\nSELECT 1", "read", "read: SELECT"),
    ("/* app=web,route=/x */ SELECT 1", "read", "read: SELECT"),
    ("SELECT * FROM t FOR UPDATE OF", "unparsable", "parse error"),
    ("", "read", "empty query"),
    ("   \n\t ", "read", "empty query"),
    (";", "read", "empty query"),
    (";;  ;", "read", "empty query"),
    ("-- only a comment", "read", "empty query"),
    ("SELECT lo_get(42)", "read", "read: SELECT"),
    ("SELECT public.nextval('s')", "read", "read: SELECT"),
    // Data changes, also nested
    ("INSERT INTO t VALUES (1)", "write", "write: INSERT"),
    ("insert into \"T\" select * from u", "write", "write: INSERT"),
    ("UPDATE t SET a = 1 WHERE id = 2", "write", "write: UPDATE"),
    ("DELETE FROM t WHERE id = 2 RETURNING *", "write", "write: DELETE"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", "write", "write: MERGE"),
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM x", "write", "write: INSERT"),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT count(*) FROM x", "write", "write: DELETE"),
    ("WITH a AS (SELECT 1), b AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM a, b", "write", "write: UPDATE"),
    ("SELECT * FROM (WITH x AS (INSERT INTO t DEFAULT VALUES RETURNING *) SELECT * FROM x) s", "write", "write: INSERT"),
    ("SELECT * INTO newt FROM t", "write", "write: SELECT INTO"),
    ("SELECT * INTO TEMP tt FROM t", "write", "write: SELECT INTO"),
    ("SELECT 1 AS a INTO TEMPORARY tt UNION SELECT 2", "write", "write: SELECT INTO"),
    ("CREATE TABLE n AS SELECT * FROM t", "write", "write: CREATE TABLE AS"),
    ("CREATE TEMP TABLE n AS SELECT 1", "write", "write: CREATE TABLE AS"),
    ("CREATE TABLE pg_temp.n AS SELECT * FROM t", "write", "write: CREATE TABLE AS"),
    ("COPY t FROM STDIN", "write", "COPY FROM"),
    ("COPY t (a, b) FROM '/tmp/x.csv' WITH (FORMAT csv)", "write", "COPY FROM"),
    ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", "write", "write: INSERT"),
    ("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", "write", "row lock: FOR UPDATE"),
    ("TRUNCATE t", "write", "write: TRUNCATE"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "write", "write: LOCK"),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "write", "EXPLAIN ANALYZE runs it: write: INSERT"),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", "write", "write: UPDATE"),
    ("EXPLAIN (ANALYZE on) SELECT nextval('s')", "write", "nextval"),
    ("EXPLAIN ANALYZE CREATE TABLE n AS SELECT 1", "write", "CREATE TABLE AS"),
    // Row locks anywhere
    ("SELECT * FROM t FOR UPDATE", "write", "row lock: FOR UPDATE"),
    ("SELECT * FROM t FOR NO KEY UPDATE", "write", "row lock: FOR NO KEY UPDATE"),
    ("SELECT * FROM t FOR SHARE", "write", "row lock: FOR SHARE"),
    ("SELECT * FROM t FOR KEY SHARE SKIP LOCKED", "write", "row lock: FOR KEY SHARE"),
    ("SELECT * FROM t FOR SHARE OF t NOWAIT", "write", "row lock: FOR SHARE"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "write", "row lock: FOR UPDATE"),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR KEY SHARE)", "write", "row lock: FOR KEY SHARE"),
    ("WITH l AS (SELECT * FROM t FOR NO KEY UPDATE) SELECT * FROM l", "write", "FOR NO KEY UPDATE"),
    ("SELECT CASE WHEN EXISTS (SELECT 1 FROM t FOR SHARE) THEN 1 END", "write", "row lock: FOR SHARE"),
    ("SELECT * FROM t FOR SHARE OF t FOR UPDATE OF u", "write", "row lock: FOR UPDATE"),
    // DDL and maintenance
    ("CREATE TABLE t (id int)", "write", "DDL: CREATE TABLE"),
    ("CREATE TEMPORARY TABLE tt (id int)", "write", "DDL: CREATE TABLE"),
    ("CREATE TEMP TABLE IF NOT EXISTS tt (id int) ON COMMIT DROP", "write", "DDL: CREATE TABLE"),
    ("CREATE TABLE pg_temp.tt (id int)", "write", "DDL: CREATE TABLE"),
    ("CREATE TEMP VIEW tv AS SELECT * FROM t", "write", "DDL: CREATE VIEW"),
    ("CREATE TEMPORARY SEQUENCE ts", "write", "DDL: CREATE SEQUENCE"),
    ("ALTER TABLE t ADD COLUMN b int", "write", "DDL: ALTER TABLE"),
    ("DROP TABLE IF EXISTS t, u", "write", "DDL: DROP TABLE"),
    ("DROP INDEX CONCURRENTLY i", "write", "DDL: DROP INDEX"),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", "write", "DDL: CREATE INDEX"),
    ("CREATE VIEW v AS SELECT 1", "write", "DDL: CREATE VIEW"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1", "write", "DDL: CREATE MATERIALIZED VIEW"),
    ("COMMENT ON TABLE t IS 'x'", "write", "DDL: COMMENT ON TABLE"),
    ("GRANT SELECT ON t TO bob", "write", "DDL: GRANT"),
    ("REVOKE ALL ON t FROM bob", "write", "DDL: REVOKE"),
    ("GRANT admin TO bob", "write", "DDL: GRANT"),
    ("CREATE SEQUENCE s", "write", "DDL: CREATE SEQUENCE"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "write", "DDL: CREATE FUNCTION"),
    ("CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$", "write", "DDL: CREATE PROCEDURE"),
    ("CREATE EXTENSION IF NOT EXISTS pgcrypto", "write", "DDL: CREATE EXTENSION"),
    ("ALTER SYSTEM SET work_mem = '64MB'", "write", "DDL: ALTER SYSTEM"),
    ("CREATE ROLE r LOGIN PASSWORD 'x'", "write", "DDL: CREATE ROLE"),
    ("ALTER TABLE t RENAME TO u", "write", "DDL: ALTER TABLE RENAME"),
    ("CREATE DATABASE d", "write", "DDL: CREATE DATABASE"),
    ("SECURITY LABEL ON TABLE t IS 'x'", "write", "DDL: SEC LABEL"),
    ("VACUUM t", "write", "maintenance: VACUUM"),
    ("VACUUM (VERBOSE, ANALYZE) t", "write", "maintenance: VACUUM"),
    ("ANALYZE t", "write", "maintenance: ANALYZE"),
    ("CLUSTER t USING i", "write", "maintenance: CLUSTER"),
    ("REINDEX TABLE t", "write", "maintenance: REINDEX"),
    ("CHECKPOINT", "write", "maintenance: CHECKPOINT"),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", "write", "REFRESH MATERIALIZED VIEW"),
    // Functions known to write
    ("SELECT nextval('s')", "write", "writing function nextval()"),
    ("SELECT pg_catalog.nextval('s')", "write", "writing function pg_catalog.nextval()"),
    ("SELECT setval('s', 10)", "write", "setval"),
    ("SELECT setval('s', 10, false) FROM t", "write", "writing function setval()"),
    ("SELECT currval('s')", "write", "currval"),
    ("select LASTVAL()", "write", "lastval"),
    ("SELECT * FROM t WHERE id = (SELECT nextval('s'))", "write", "nextval"),
    ("SELECT * FROM nextval('s')", "write", "nextval"),
    ("SELECT coalesce(max(a), nextval('s')) FROM t", "write", "nextval"),
    ("SELECT txid_current()", "write", "txid_current"),
    ("SELECT lo_create(0)", "write", "large object: lo_create()"),
    ("SELECT lo_import('/tmp/f')", "write", "large object"),
    ("SELECT lo_unlink(42)", "write", "large object"),
    ("SELECT lowrite(0, 'x')", "write", "large object"),
    ("SELECT lo_put(42, 0, 'x')", "write", "large object"),
    ("SELECT lo_from_bytea(0, 'x')", "write", "large object"),
    ("SELECT lo_truncate(0, 10)", "write", "large object"),
    ("SELECT lo_open(42, 131072)", "write", "large object"),
    ("SELECT pg_advisory_lock(1)", "write", "advisory lock: pg_advisory_lock()"),
    ("SELECT pg_try_advisory_lock(1, 2)", "write", "advisory lock"),
    ("SELECT pg_advisory_xact_lock(1)", "write", "advisory lock"),
    ("SELECT pg_try_advisory_xact_lock_shared(1)", "write", "advisory lock"),
    ("SELECT pg_advisory_unlock_all()", "write", "advisory lock"),
    ("SELECT pg_catalog.pg_advisory_lock(hashtext('job'))", "write", "advisory lock"),
    ("SELECT pg_notify('ch', 'payload')", "write", "LISTEN/NOTIFY: pg_notify()"),
    // LISTEN/NOTIFY, cursors, procedures, prepared statements
    ("LISTEN ch", "write", "LISTEN/NOTIFY: LISTEN"),
    ("NOTIFY ch, 'x'", "write", "LISTEN/NOTIFY: NOTIFY"),
    ("UNLISTEN *", "write", "LISTEN/NOTIFY: UNLISTEN"),
    ("DECLARE c CURSOR FOR SELECT * FROM t", "write", "cursor: DECLARE"),
    ("DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT 1", "write", "cursor: DECLARE"),
    ("FETCH 10 FROM c", "write", "cursor: FETCH"),
    ("MOVE FORWARD 5 IN c", "write", "cursor: MOVE"),
    ("CLOSE c", "write", "cursor: CLOSE"),
    ("CLOSE ALL", "write", "cursor: CLOSE"),
    ("DO $$ BEGIN PERFORM 1; END $$", "write", "DO block"),
    ("CALL p(1)", "write", "CALL"),
    ("EXECUTE stmt(1, 2)", "write", "EXECUTE"),
    ("EXECUTE plain", "write", "EXECUTE"),
    ("PREPARE stmt AS SELECT $1", "session", "session state: PREPARE"),
    ("PREPARE ins (int) AS INSERT INTO t VALUES ($1)", "session", "session state: PREPARE"),
    ("DEALLOCATE stmt", "session", "session state: DEALLOCATE"),
    ("DEALLOCATE PREPARE stmt", "session", "session state: DEALLOCATE"),
    ("DEALLOCATE ALL", "session", "session state: DEALLOCATE"),
    // Session state
    ("SET search_path = app, public", "session", "session state: SET"),
    ("SET LOCAL statement_timeout = '5s'", "session", "session state: SET LOCAL"),
    ("SET TIME ZONE 'UTC'", "session", "session state: SET"),
    ("SET ROLE admin", "session", "session state: SET"),
    ("RESET search_path", "session", "session state: RESET"),
    ("RESET ALL", "session", "session state: RESET"),
    ("DISCARD ALL", "session", "session state: DISCARD"),
    ("DISCARD TEMP", "session", "session state: DISCARD"),
    ("LOAD 'auto_explain'", "session", "session state: LOAD"),
    ("SET pgvigil.route = 'primary'", "session", "session state: SET"),
    ("SET pgvigil.explain_routing = on", "session", "session state: SET"),
    ("SELECT set_config('search_path', 'app', false)", "session", "set_config"),
    ("SELECT set_config('app.tenant', '7', false), now()", "session", "session state: set_config"),
    ("SELECT pg_catalog.set_config('app.user', '42', true)", "session", "set_config"),
    ("SET CONSTRAINTS ALL DEFERRED", "write", "write: SET CONSTRAINTS"),
    // Transaction control
    ("BEGIN", "tx", "transaction control: BEGIN"),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "tx-primary", "BEGIN"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", "tx-primary", "transaction control: BEGIN"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", "tx-primary", "transaction control: BEGIN"),
    ("BEGIN TRANSACTION READ ONLY, DEFERRABLE", "tx", "transaction control: BEGIN"),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ", "tx", "transaction control: BEGIN"),
    ("BEGIN READ ONLY", "tx", "BEGIN"),
    ("BEGIN READ WRITE", "tx", "transaction control: BEGIN"),
    ("START TRANSACTION", "tx", "transaction control: BEGIN"),
    ("START TRANSACTION READ ONLY", "tx", "transaction control: BEGIN"),
    ("START TRANSACTION READ WRITE", "tx", "transaction control: BEGIN"),
    ("COMMIT", "tx", "COMMIT"),
    ("END", "tx", "COMMIT"),
    ("ROLLBACK", "tx", "ROLLBACK"),
    ("ABORT", "tx", "ROLLBACK"),
    ("SAVEPOINT s1", "tx", "SAVEPOINT"),
    ("RELEASE SAVEPOINT s1", "tx", "RELEASE"),
    ("ROLLBACK TO SAVEPOINT s1", "tx", "ROLLBACK TO SAVEPOINT"),
    ("PREPARE TRANSACTION 'g1'", "tx", "PREPARE TRANSACTION"),
    ("COMMIT PREPARED 'g1'", "tx", "COMMIT PREPARED"),
    ("ROLLBACK PREPARED 'g1'", "tx", "ROLLBACK PREPARED"),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "tx", "SET TRANSACTION"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "tx", "SET SESSION CHARACTERISTICS"),
    ("SET transaction_isolation = 'serializable'", "tx-primary", "transaction control: SET"),
    ("SET default_transaction_read_only = on", "tx", "transaction control: SET"),
    // Hints
    ("/*NO LOAD BALANCE*/ SELECT 1", "write", "hint: /*NO LOAD BALANCE*/"),
    ("/* pgvigil: primary */ SELECT * FROM t", "write", "hint: /* pgvigil: primary */"),
    ("/* trace=1 */ /*NO LOAD BALANCE*/ SELECT 1", "write", "hint"),
    ("/*NO LOAD BALANCE*/ INSERT INTO t VALUES (1)", "write", "hint"),
    ("/* pgvigil: primary */ SET search_path = a", "session", "session state: SET"),
    ("/* sqlcommenter: controller='x' */ SELECT * FROM t", "read", "read: SELECT"),
    ("-- app: report\n/* trace=7 */\nSELECT count(*) FROM t", "read", "read: SELECT"),
    ("/*NO LOAD BALANCE*/ BEGIN", "tx", "BEGIN"),
    ("SELECT 1 /*NO LOAD BALANCE*/", "read", "read: SELECT"),
    // Multi-statement strings
    ("SELECT 1; INSERT INTO t VALUES (1)", "write", "multi-statement with a write: write: INSERT"),
    ("SELECT 1; SELECT nextval('s'); SELECT 2", "write", "multi-statement with a write"),
    ("BEGIN; SELECT 1; COMMIT", "write", "multi-statement with session state or transaction control"),
    ("SET search_path = a; SELECT 1", "write", "multi-statement with session state"),
    ("SELECT 1; CREATE TABLE x (a int);", "write", "DDL: CREATE TABLE"),
    ("UPDATE t SET a = 1; SELECT * FROM t", "write", "multi-statement with a write: write: UPDATE"),
    ("PREPARE p AS SELECT 1; EXECUTE p", "write", "multi-statement with a write: EXECUTE"),
    // Syntax errors and oddities
    ("SELEC 1", "unparsable", "parse error"),
    ("SELECT (", "unparsable", "parse error"),
    ("INSERT INTO", "unparsable", "parse error"),
    ("SELECT 1; SELEC 2", "unparsable", "parse error"),
    ("SELECT 'unterminated", "unparsable", "parse error"),
    ("/* unterminated comment SELECT 1", "unparsable", "parse error"),
    ("SELECT 1\0", "unparsable", "parse error"),
    ("/*NO LOAD BALANCE*/ SELEC 1", "unparsable", "parse error"),
];

#[test]
fn table() {
    let mut failures = Vec::new();
    for (sql, kind, reason) in TABLE {
        let c = classify(sql);
        let got_reason = c.reason.to_string();
        if kind_name(&c.kind) != *kind || !got_reason.contains(reason) {
            failures.push(format!(
                "{sql:?}: want {kind} / {reason:?}, got {} / {got_reason:?}",
                kind_name(&c.kind)
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), TABLE.len(), failures.join("\n"));
    assert!(TABLE.len() >= 100, "table has {} rows", TABLE.len());
}

/// Through the cache (shared by shape), with the constants changed too, every row
/// classifies as it does on its own.
#[test]
fn table_through_the_shape_cache() {
    let cache = super::ClassifierCache::new(10_000);
    for (sql, kind, _) in TABLE {
        cache.get_or_classify(sql);
        let variant = sql.replace('1', "7").replace("'a'", "'zz'");
        for text in [sql.to_string(), variant] {
            let direct = classify(&text);
            let cached = cache.get_or_classify(&text);
            assert_eq!(
                (kind_name(&cached.kind), cached.reason.to_string()),
                (kind_name(&direct.kind), direct.reason.to_string()),
                "{text:?} (row {sql:?}, {kind})"
            );
            assert_eq!(cached.setting, direct.setting, "{text:?}");
        }
    }
}

#[test]
fn very_long_queries() {
    let ids: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
    let read = format!("SELECT * FROM t WHERE id IN ({})", ids.join(", "));
    assert_eq!(classify(&read).kind, Kind::Read);
    let write = format!("{read} FOR UPDATE");
    assert_eq!(classify(&write).reason.to_string(), "row lock: FOR UPDATE");
    let many = "SELECT 1;".repeat(2000) + "DELETE FROM t";
    let c = classify(&many);
    assert_eq!((c.kind, c.statements), (Kind::Write, 2001));
}
