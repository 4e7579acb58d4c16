//! Routing counters by node (for SHOW POOL_NODES, SHOW POOL_BACKEND_STATS and metrics).
//! Every statement bumps a few relaxed atomics; nothing here takes a lock on that path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::router::{Classification, Kind, Reason};

/// What a statement counts as in SHOW POOL_BACKEND_STATS: Pgpool-II's six classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementClass {
    Select,
    Insert,
    Update,
    Delete,
    Ddl,
    Other,
}

impl StatementClass {
    const COUNT: usize = 6;

    /// As Pgpool-II counts: SELECTs (here: every read, and the SELECTs that go to the
    /// primary), INSERT, UPDATE, DELETE; CHECKPOINT, DEALLOCATE, DISCARD, EXECUTE,
    /// EXPLAIN, LISTEN, LOAD, LOCK, NOTIFY, PREPARE, SET, SHOW, transaction control,
    /// UNLISTEN, VACUUM and ANALYZE are "other"; anything else is "DDL". `sql` is looked
    /// at only when the statement was not parsed (load balancing off) or a hint hid its
    /// class.
    pub fn of(c: &Classification, kind: &Kind, sql: &str) -> Self {
        match (&c.reason, kind) {
            (Reason::NotClassified | Reason::Hint(_), _) => Self::from_first_word(sql),
            (_, Kind::Read) => Self::Select,
            (reason, _) => Self::of_reason(reason),
        }
    }

    fn of_reason(reason: &Reason) -> Self {
        match reason {
            Reason::Read(_) => Self::Select,
            Reason::Write("INSERT") => Self::Insert,
            Reason::Write("UPDATE") => Self::Update,
            Reason::Write("DELETE") => Self::Delete,
            Reason::Write("SELECT INTO") => Self::Select,
            Reason::Write("LOCK") => Self::Other,
            // SELECTs that write or lock: still SELECT statements.
            Reason::RowLock(_)
            | Reason::WritingFunction(_)
            | Reason::VolatileFunction(_)
            | Reason::AdvisoryLock(_)
            | Reason::LargeObject(_)
            | Reason::SetConfig => Self::Select,
            Reason::Maintenance("VACUUM" | "ANALYZE" | "CHECKPOINT") => Self::Other,
            Reason::ListenNotify(_)
            | Reason::Execute
            | Reason::ExplainAnalyze(_)
            | Reason::SessionState(_)
            | Reason::TxControl(_)
            | Reason::MultiStatementMixed
            | Reason::Empty
            | Reason::ParseError => Self::Other,
            Reason::MultiStatement(inner) => Self::of_reason(inner),
            // CREATE/ALTER/DROP…, TRUNCATE, CREATE TABLE AS, MERGE, SET CONSTRAINTS,
            // COPY FROM, CALL, DO, cursors, CLUSTER, REINDEX, REFRESH MATERIALIZED VIEW.
            _ => Self::Ddl,
        }
    }

    /// From the first keyword, past white space and comments.
    pub fn from_first_word(sql: &str) -> Self {
        let word = first_word(sql);
        let is = |w: &str| word.eq_ignore_ascii_case(w);
        if ["select", "values", "table", "with"].iter().any(|w| is(w)) {
            Self::Select
        } else if is("insert") {
            Self::Insert
        } else if is("update") {
            Self::Update
        } else if is("delete") {
            Self::Delete
        } else if word.is_empty()
            || [
                "checkpoint", "deallocate", "discard", "execute", "explain", "listen", "load", "lock", "notify", "prepare",
                "set", "reset", "show", "begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release",
                "unlisten", "vacuum", "analyze", "analyse",
            ]
            .iter()
            .any(|w| is(w))
        {
            Self::Other
        } else {
            Self::Ddl
        }
    }
}

/// The first word of `sql` after white space and `--` / `/* */` comments.
fn first_word(sql: &str) -> &str {
    let mut s = sql;
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.find("*/").map_or("", |i| &rest[i + 2..]);
        } else {
            break;
        }
    }
    let end = s.find(|ch: char| !ch.is_ascii_alphabetic()).unwrap_or(s.len());
    &s[..end]
}

/// Severity of an ErrorResponse a node sent, as SHOW POOL_BACKEND_STATS counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSeverity {
    Panic,
    Fatal,
    Error,
}

/// Labels of the routing rules (`route::Route::label`), counted without a lock.
const LABELS: [&str; 11] = [
    "after_write",
    "function_call",
    "load_balance_off",
    "parse_error",
    "read",
    "route_setting",
    "session_state",
    "temp_table",
    "tx_control",
    "tx_pinned",
    "write",
];

#[derive(Default)]
pub struct NodeStats {
    statements: [AtomicU64; StatementClass::COUNT],
    /// PANIC, FATAL, ERROR.
    errors: [AtomicU64; 3],
    /// Statements routed here by the label of the rule that decided.
    by_label: [AtomicU64; LABELS.len()],
    /// Labels not in `LABELS` (none today): counted under a lock.
    other_labels: Mutex<HashMap<&'static str, u64>>,
}

/// One node's counters, as SHOW POOL_BACKEND_STATS prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCounts {
    pub select: u64,
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
    pub ddl: u64,
    pub other: u64,
    pub panic: u64,
    pub fatal: u64,
    pub error: u64,
}

pub struct RouteStats {
    pub nodes: Vec<NodeStats>,
    /// Statements the parser rejected (sent to the primary).
    pub unparsable: AtomicU64,
}

impl RouteStats {
    pub fn new(nodes: usize) -> Self {
        Self { nodes: (0..nodes).map(|_| NodeStats::default()).collect(), unparsable: AtomicU64::new(0) }
    }

    /// A statement sent to `node`, decided by the rule `label`.
    pub fn record(&self, node: usize, label: &'static str, class: StatementClass) {
        let Some(n) = self.nodes.get(node) else { return };
        n.statements[class as usize].fetch_add(1, Ordering::Relaxed);
        match LABELS.iter().position(|l| *l == label) {
            Some(i) => {
                n.by_label[i].fetch_add(1, Ordering::Relaxed);
            }
            None => *n.other_labels.lock().unwrap_or_else(|p| p.into_inner()).entry(label).or_default() += 1,
        }
    }

    /// An ErrorResponse `node` sent to a session.
    pub fn record_error(&self, node: usize, severity: ErrorSeverity) {
        if let Some(n) = self.nodes.get(node) {
            n.errors[severity as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (label, count) pairs of one node, sorted by label; labels never counted are left out.
    pub fn by_label(&self, node: usize) -> Vec<(&'static str, u64)> {
        let Some(n) = self.nodes.get(node) else { return Vec::new() };
        let mut v: Vec<_> = LABELS
            .iter()
            .zip(&n.by_label)
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect();
        v.extend(n.other_labels.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, *v)));
        v.sort();
        v
    }

    /// Pgpool-II's select_cnt: reads, and SELECTs sent to the primary.
    pub fn select_cnt(&self, node: usize) -> u64 {
        self.nodes.get(node).map_or(0, |n| n.statements[StatementClass::Select as usize].load(Ordering::Relaxed))
    }

    pub fn backend_counts(&self, node: usize) -> BackendCounts {
        let Some(n) = self.nodes.get(node) else { return BackendCounts::default() };
        let s = |c: StatementClass| n.statements[c as usize].load(Ordering::Relaxed);
        let e = |s: ErrorSeverity| n.errors[s as usize].load(Ordering::Relaxed);
        BackendCounts {
            select: s(StatementClass::Select),
            insert: s(StatementClass::Insert),
            update: s(StatementClass::Update),
            delete: s(StatementClass::Delete),
            ddl: s(StatementClass::Ddl),
            other: s(StatementClass::Other),
            panic: e(ErrorSeverity::Panic),
            fatal: e(ErrorSeverity::Fatal),
            error: e(ErrorSeverity::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify;

    fn class(sql: &str) -> StatementClass {
        let c = classify(sql);
        StatementClass::of(&c, &c.kind, sql)
    }

    #[test]
    fn statements_count_as_pgpool_counts_them() {
        use StatementClass::*;
        let cases = [
            ("SELECT 1", Select),
            ("select * from t for update", Select),
            ("SELECT nextval('s')", Select),
            ("SELECT * INTO t2 FROM t", Select),
            ("VALUES (1)", Select),
            ("SHOW work_mem", Select),
            ("INSERT INTO t VALUES (1)", Insert),
            ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", Insert),
            ("UPDATE t SET a = 1", Update),
            ("DELETE FROM t", Delete),
            ("CREATE TABLE t (a int)", Ddl),
            ("DROP INDEX i", Ddl),
            ("TRUNCATE t", Ddl),
            ("CREATE TABLE t2 AS SELECT 1", Ddl),
            ("COPY t FROM STDIN", Ddl),
            ("REINDEX TABLE t", Ddl),
            ("CALL p()", Ddl),
            ("DO $$ BEGIN END $$", Ddl),
            ("VACUUM t", Other),
            ("ANALYZE t", Other),
            ("CHECKPOINT", Other),
            ("LOCK TABLE t", Other),
            ("SET work_mem = '1MB'", Other),
            ("BEGIN", Other),
            ("COMMIT", Other),
            ("PREPARE p AS SELECT 1", Other),
            ("EXECUTE p", Other),
            ("DEALLOCATE p", Other),
            ("DISCARD ALL", Other),
            ("LISTEN c", Other),
            ("NOTIFY c", Other),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", Other),
            ("SELEKT 1", Other),
            ("INSERT INTO t VALUES (1); UPDATE t SET a = 2", Insert),
            // A hint hides the class: the first word tells.
            ("/*NO LOAD BALANCE*/ SELECT 1", Select),
            ("/* pgvigil: primary */ DELETE FROM t", Delete),
        ];
        for (sql, want) in cases {
            assert_eq!(class(sql), want, "{sql}");
        }
    }

    #[test]
    fn unparsed_statements_count_by_their_first_word() {
        use StatementClass::*;
        let c = Classification::unclassified();
        let of = |sql: &str| StatementClass::of(&c, &c.kind, sql);
        assert_eq!(of("  select 1"), Select);
        assert_eq!(of("-- note\n/* x */ Insert into t values (1)"), Insert);
        assert_eq!(of("update t set a = 1"), Update);
        assert_eq!(of("delete from t"), Delete);
        assert_eq!(of("create table t (a int)"), Ddl);
        assert_eq!(of("begin"), Other);
        assert_eq!(of(""), Other);
        assert_eq!(of("/* unterminated"), Other);
        assert_eq!(of("-- only a comment"), Other);
    }

    #[test]
    fn counters_by_class_label_and_severity() {
        let s = RouteStats::new(2);
        s.record(0, "read", StatementClass::Select);
        s.record(0, "read", StatementClass::Select);
        s.record(0, "write", StatementClass::Insert);
        s.record(0, "not_a_known_label", StatementClass::Ddl);
        s.record(1, "tx_control", StatementClass::Other);
        s.record(7, "read", StatementClass::Select);
        s.record_error(0, ErrorSeverity::Error);
        s.record_error(0, ErrorSeverity::Fatal);
        s.record_error(1, ErrorSeverity::Panic);
        s.record_error(9, ErrorSeverity::Panic);
        assert_eq!(s.select_cnt(0), 2);
        assert_eq!(s.select_cnt(5), 0);
        let c = s.backend_counts(0);
        assert_eq!((c.select, c.insert, c.update, c.delete, c.ddl, c.other), (2, 1, 0, 0, 1, 0));
        assert_eq!((c.panic, c.fatal, c.error), (0, 1, 1));
        assert_eq!(s.backend_counts(1).panic, 1);
        assert_eq!(s.by_label(0), [("not_a_known_label", 1), ("read", 2), ("write", 1)]);
        assert_eq!(s.by_label(1), [("tx_control", 1)]);
        assert!(s.by_label(3).is_empty());
    }
}
