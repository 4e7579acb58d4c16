//! Why a statement was classified the way it was (for logs and `explain_routing`).

use std::fmt;

/// The rule that decided a classification. `Display` gives a short phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A read statement: "read: SELECT", "read: SHOW", "read: COPY TO"…
    Read(&'static str),
    /// Empty or comment-only string.
    Empty,
    /// Data change: "write: INSERT", "write: SELECT INTO", "write: TRUNCATE"…
    Write(&'static str),
    /// "row lock: FOR UPDATE".
    RowLock(&'static str),
    /// "DDL: CREATE TABLE".
    Ddl(String),
    /// "maintenance: VACUUM".
    Maintenance(&'static str),
    /// COPY … FROM.
    CopyFrom,
    /// A function known to write or to keep primary-only session state: nextval()…
    WritingFunction(String),
    /// A function found to write by `final_kind` (policy or catalog).
    VolatileFunction(String),
    /// pg_advisory_lock() and friends.
    AdvisoryLock(String),
    /// lo_create() and friends.
    LargeObject(String),
    /// LISTEN, NOTIFY, UNLISTEN, pg_notify().
    ListenNotify(&'static str),
    /// DECLARE / FETCH / MOVE / CLOSE: stay with the transaction's node.
    Cursor(&'static str),
    /// DO block.
    DoBlock,
    /// CALL of a procedure.
    Call,
    /// EXECUTE of a prepared statement whose class is not known here.
    Execute,
    /// EXPLAIN ANALYZE runs its statement, which writes.
    ExplainAnalyze(Box<Reason>),
    /// Several statements, one of which is the given reason.
    MultiStatement(Box<Reason>),
    /// Several statements mixing session state or transaction control with others.
    MultiStatementMixed,
    /// Not parsable.
    ParseError,
    /// Not parsed: load balancing is off, everything goes to the primary.
    NotClassified,
    /// Forced by a leading comment; holds the comment as written.
    Hint(&'static str),
    /// "session state: SET", "session state: PREPARE"…
    SessionState(&'static str),
    /// SELECT set_config(…).
    SetConfig,
    /// "transaction control: BEGIN".
    TxControl(&'static str),
}

impl Reason {
    /// A stable snake_case name of the variant, without its details: a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Read(_) => "read",
            Reason::Empty => "empty",
            Reason::Write(_) => "write",
            Reason::RowLock(_) => "row_lock",
            Reason::Ddl(_) => "ddl",
            Reason::Maintenance(_) => "maintenance",
            Reason::CopyFrom => "copy_from",
            Reason::WritingFunction(_) => "writing_function",
            Reason::VolatileFunction(_) => "volatile_function",
            Reason::AdvisoryLock(_) => "advisory_lock",
            Reason::LargeObject(_) => "large_object",
            Reason::ListenNotify(_) => "listen_notify",
            Reason::Cursor(_) => "cursor",
            Reason::DoBlock => "do_block",
            Reason::Call => "call",
            Reason::Execute => "execute",
            Reason::ExplainAnalyze(_) => "explain_analyze",
            Reason::MultiStatement(_) => "multi_statement",
            Reason::MultiStatementMixed => "multi_statement_mixed",
            Reason::ParseError => "parse_error",
            Reason::NotClassified => "not_classified",
            Reason::Hint(_) => "hint",
            Reason::SessionState(_) => "session_state",
            Reason::SetConfig => "set_config",
            Reason::TxControl(_) => "tx_control",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Read(what) => write!(f, "read: {what}"),
            Reason::Empty => f.write_str("empty query"),
            Reason::Write(what) => write!(f, "write: {what}"),
            Reason::RowLock(what) => write!(f, "row lock: {what}"),
            Reason::Ddl(what) => write!(f, "DDL: {what}"),
            Reason::Maintenance(what) => write!(f, "maintenance: {what}"),
            Reason::CopyFrom => f.write_str("COPY FROM"),
            Reason::WritingFunction(func) => write!(f, "writing function {func}"),
            Reason::VolatileFunction(func) => write!(f, "writing function {func} (volatile or unknown)"),
            Reason::AdvisoryLock(func) => write!(f, "advisory lock: {func}"),
            Reason::LargeObject(func) => write!(f, "large object: {func}"),
            Reason::ListenNotify(what) => write!(f, "LISTEN/NOTIFY: {what}"),
            Reason::Cursor(what) => write!(f, "cursor: {what}"),
            Reason::DoBlock => f.write_str("DO block"),
            Reason::Call => f.write_str("CALL"),
            Reason::Execute => f.write_str("EXECUTE: the prepared statement's class is unknown here"),
            Reason::ExplainAnalyze(inner) => write!(f, "EXPLAIN ANALYZE runs it: {inner}"),
            Reason::MultiStatement(inner) => write!(f, "multi-statement with a write: {inner}"),
            Reason::MultiStatementMixed => {
                f.write_str("multi-statement with session state or transaction control")
            }
            Reason::ParseError => f.write_str("parse error"),
            Reason::NotClassified => f.write_str("load balancing is off"),
            Reason::Hint(comment) => write!(f, "hint: {comment}"),
            Reason::SessionState(what) => write!(f, "session state: {what}"),
            Reason::SetConfig => f.write_str("session state: set_config"),
            Reason::TxControl(what) => write!(f, "transaction control: {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stable_and_distinct() {
        let all = [
            (Reason::Read("SELECT"), "read"),
            (Reason::Empty, "empty"),
            (Reason::Write("INSERT"), "write"),
            (Reason::RowLock("FOR UPDATE"), "row_lock"),
            (Reason::Ddl("CREATE TABLE".into()), "ddl"),
            (Reason::Maintenance("VACUUM"), "maintenance"),
            (Reason::CopyFrom, "copy_from"),
            (Reason::WritingFunction("nextval()".into()), "writing_function"),
            (Reason::VolatileFunction("f()".into()), "volatile_function"),
            (Reason::AdvisoryLock("pg_advisory_lock()".into()), "advisory_lock"),
            (Reason::LargeObject("lo_create()".into()), "large_object"),
            (Reason::ListenNotify("LISTEN"), "listen_notify"),
            (Reason::Cursor("FETCH"), "cursor"),
            (Reason::DoBlock, "do_block"),
            (Reason::Call, "call"),
            (Reason::Execute, "execute"),
            (Reason::ExplainAnalyze(Box::new(Reason::Write("INSERT"))), "explain_analyze"),
            (Reason::MultiStatement(Box::new(Reason::Write("INSERT"))), "multi_statement"),
            (Reason::MultiStatementMixed, "multi_statement_mixed"),
            (Reason::ParseError, "parse_error"),
            (Reason::Hint("/*NO LOAD BALANCE*/"), "hint"),
            (Reason::SessionState("SET"), "session_state"),
            (Reason::SetConfig, "set_config"),
            (Reason::TxControl("BEGIN"), "tx_control"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (reason, want) in &all {
            let label = reason.label();
            assert_eq!(label, *want, "{reason:?}");
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{label}");
            assert!(seen.insert(label), "{label} used twice");
        }
    }
}
