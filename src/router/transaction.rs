//! Transaction control and SET: BEGIN modes, SET TRANSACTION, session defaults.

use pg_query::protobuf::{TransactionStmt, TransactionStmtKind, VariableSetKind, VariableSetStmt};
use pg_query::{Node, NodeEnum};

use super::reason::Reason;
use super::types::{Isolation, Kind, TxControl};

/// Decision for a TransactionStmt.
pub(crate) fn transaction(stmt: &TransactionStmt) -> (Kind, Reason) {
    let (read_only, isolation, deferrable) = modes(&stmt.options);
    let (tx, tag) = match TransactionStmtKind::try_from(stmt.kind) {
        Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => {
            (TxControl::Begin { read_only, isolation, deferrable }, "BEGIN")
        }
        Ok(TransactionStmtKind::TransStmtCommit) => (TxControl::Commit, "COMMIT"),
        Ok(TransactionStmtKind::TransStmtRollback) => (TxControl::Rollback, "ROLLBACK"),
        Ok(TransactionStmtKind::TransStmtSavepoint) => (TxControl::Savepoint, "SAVEPOINT"),
        Ok(TransactionStmtKind::TransStmtRelease) => (TxControl::Release, "RELEASE"),
        Ok(TransactionStmtKind::TransStmtRollbackTo) => {
            (TxControl::RollbackToSavepoint, "ROLLBACK TO SAVEPOINT")
        }
        Ok(TransactionStmtKind::TransStmtPrepare) => {
            (TxControl::PrepareTransaction, "PREPARE TRANSACTION")
        }
        Ok(TransactionStmtKind::TransStmtCommitPrepared) => {
            (TxControl::CommitPrepared, "COMMIT PREPARED")
        }
        Ok(TransactionStmtKind::TransStmtRollbackPrepared) => {
            (TxControl::RollbackPrepared, "ROLLBACK PREPARED")
        }
        _ => return (Kind::Write, Reason::Ddl("unknown transaction statement".into())),
    };
    (Kind::TxControl(tx), Reason::TxControl(tag))
}

/// Decision for SET / RESET, and the (name, value) of a plain SET.
pub(crate) fn variable_set(stmt: &VariableSetStmt) -> (Kind, Reason, Option<(String, String)>) {
    let name = stmt.name.to_ascii_lowercase();
    let kind = VariableSetKind::try_from(stmt.kind).unwrap_or(VariableSetKind::Undefined);
    if kind == VariableSetKind::VarSetMulti {
        let (read_only, isolation, deferrable) = modes(&stmt.args);
        return match name.as_str() {
            "transaction" => (
                Kind::TxControl(TxControl::SetTransaction { read_only, isolation, deferrable }),
                Reason::TxControl("SET TRANSACTION"),
                None,
            ),
            "session characteristics" => (
                Kind::TxControl(TxControl::SetSessionCharacteristics {
                    read_only,
                    isolation,
                    deferrable,
                }),
                Reason::TxControl("SET SESSION CHARACTERISTICS"),
                None,
            ),
            _ => (Kind::SessionState, Reason::SessionState("SET"), None),
        };
    }
    if kind != VariableSetKind::VarSetValue {
        let is_reset = matches!(kind, VariableSetKind::VarReset | VariableSetKind::VarResetAll);
        let what = if is_reset { "RESET" } else { "SET" };
        // SET x TO DEFAULT / RESET x: reported as the value "default".
        let setting = matches!(kind, VariableSetKind::VarSetDefault | VariableSetKind::VarReset)
            .then(|| (name.clone(), "default".to_string()));
        return (Kind::SessionState, Reason::SessionState(what), setting);
    }
    let value = stmt.args.iter().filter_map(const_text).collect::<Vec<_>>().join(", ");
    // The GUC spellings of the transaction modes mean the same as SET TRANSACTION.
    let mode = |local: bool| -> Option<TxControl> {
        let read_only = (name.ends_with("read_only")).then(|| parse_bool(&value)).flatten();
        let deferrable = (name.ends_with("deferrable")).then(|| parse_bool(&value)).flatten();
        let isolation = (name.ends_with("isolation")).then(|| Isolation::from_sql(&value)).flatten();
        Some(if local {
            TxControl::SetTransaction { read_only, isolation, deferrable }
        } else {
            TxControl::SetSessionCharacteristics { read_only, isolation, deferrable }
        })
    };
    let tx = match name.as_str() {
        "transaction_isolation" | "transaction_read_only" | "transaction_deferrable" => mode(true),
        "default_transaction_isolation"
        | "default_transaction_read_only"
        | "default_transaction_deferrable"
            if !stmt.is_local =>
        {
            mode(false)
        }
        _ => None,
    };
    let reason = Reason::SessionState(if stmt.is_local { "SET LOCAL" } else { "SET" });
    match tx {
        Some(tx) => (Kind::TxControl(tx), Reason::TxControl("SET"), Some((name, value))),
        None => (Kind::SessionState, reason, Some((name, value))),
    }
}

/// True when a transaction with these modes cannot run on a hot standby because it is
/// SERIALIZABLE. PostgreSQL refuses serializable mode during recovery even for
/// READ ONLY DEFERRABLE ("cannot use serializable mode in a hot standby"), so every
/// serializable transaction needs the primary.
pub fn serializable_needs_primary(tx: &TxControl) -> bool {
    match tx {
        TxControl::Begin { isolation, .. }
        | TxControl::SetTransaction { isolation, .. }
        | TxControl::SetSessionCharacteristics { isolation, .. } => {
            *isolation == Some(Isolation::Serializable)
        }
        _ => false,
    }
}

/// (read_only, isolation, deferrable) from transaction-mode DefElems.
fn modes(options: &[Node]) -> (Option<bool>, Option<Isolation>, Option<bool>) {
    let (mut read_only, mut isolation, mut deferrable) = (None, None, None);
    for opt in options {
        let Some(NodeEnum::DefElem(d)) = opt.node.as_ref() else { continue };
        let value = d.arg.as_deref().and_then(const_text);
        match d.defname.as_str() {
            "transaction_read_only" => read_only = value.as_deref().and_then(parse_bool),
            "transaction_deferrable" => deferrable = value.as_deref().and_then(parse_bool),
            "transaction_isolation" => isolation = value.as_deref().and_then(Isolation::from_sql),
            _ => {}
        }
    }
    (read_only, isolation, deferrable)
}

/// The text of a constant node (A_Const, a bare value node, or a cast of one).
pub(crate) fn const_text(node: &Node) -> Option<String> {
    use pg_query::protobuf::a_const::Val;
    match node.node.as_ref()? {
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            Val::Ival(i) => Some(i.ival.to_string()),
            Val::Fval(f) => Some(f.fval.clone()),
            Val::Boolval(b) => Some(b.boolval.to_string()),
            Val::Sval(s) => Some(s.sval.clone()),
            Val::Bsval(b) => Some(b.bsval.clone()),
        },
        NodeEnum::String(s) => Some(s.sval.clone()),
        NodeEnum::Integer(i) => Some(i.ival.to_string()),
        NodeEnum::Float(f) => Some(f.fval.clone()),
        NodeEnum::Boolean(b) => Some(b.boolval.to_string()),
        NodeEnum::TypeCast(t) => const_text(t.arg.as_deref()?),
        _ => None,
    }
}

/// PostgreSQL's boolean spellings (unique prefixes of true/false/yes/no, on/off, 1/0).
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim().to_ascii_lowercase();
    let prefix_of = |word: &str| !s.is_empty() && word.starts_with(s.as_str());
    match s.as_str() {
        "1" | "on" => Some(true),
        "0" | "of" | "off" => Some(false),
        _ if prefix_of("true") || prefix_of("yes") => Some(true),
        _ if prefix_of("false") || prefix_of("no") => Some(false),
        _ => None,
    }
}
