//! The decision for one parsed statement.

use pg_query::protobuf::{ExplainStmt, ObjectType};
use pg_query::NodeEnum;

use super::functions::{is_set_config, known_writer};
use super::reason::Reason;
use super::transaction::{const_text, parse_bool, transaction, variable_set};
use super::types::Kind;
use super::walk::{type_name, Findings};

/// The decision for one statement.
pub(crate) struct Decision {
    pub kind: Kind,
    pub reason: Reason,
    pub setting: Option<(String, String)>,
}

impl Decision {
    fn new(kind: Kind, reason: Reason) -> Self {
        Self { kind, reason, setting: None }
    }
}

/// Classifies `node`; `found` is what the walk found anywhere inside it.
pub(crate) fn decide(node: &NodeEnum, found: &Findings) -> Decision {
    let write = |what| Decision::new(Kind::Write, Reason::Write(what));
    let session = |what| Decision::new(Kind::SessionState, Reason::SessionState(what));
    match node {
        NodeEnum::SelectStmt(_) => read_unless_writing(found, "SELECT"),
        NodeEnum::VariableShowStmt(_) => Decision::new(Kind::Read, Reason::Read("SHOW")),
        NodeEnum::ExplainStmt(e) => explain(e, found),
        NodeEnum::CopyStmt(c) if c.is_from => Decision::new(Kind::Write, Reason::CopyFrom),
        NodeEnum::CopyStmt(_) => read_unless_writing(found, "COPY TO"),
        NodeEnum::InsertStmt(_) => write("INSERT"),
        NodeEnum::UpdateStmt(_) => write("UPDATE"),
        NodeEnum::DeleteStmt(_) => write("DELETE"),
        NodeEnum::MergeStmt(_) => write("MERGE"),
        NodeEnum::CreateTableAsStmt(c) if c.objtype == ObjectType::ObjectMatview as i32 => {
            Decision::new(Kind::Write, Reason::Ddl("CREATE MATERIALIZED VIEW".into()))
        }
        NodeEnum::CreateTableAsStmt(_) => write("CREATE TABLE AS"),
        NodeEnum::TruncateStmt(_) => write("TRUNCATE"),
        NodeEnum::LockStmt(_) => write("LOCK"),
        NodeEnum::ConstraintsSetStmt(_) => write("SET CONSTRAINTS"),
        NodeEnum::VacuumStmt(v) => maintenance(if v.is_vacuumcmd { "VACUUM" } else { "ANALYZE" }),
        NodeEnum::ClusterStmt(_) => maintenance("CLUSTER"),
        NodeEnum::ReindexStmt(_) => maintenance("REINDEX"),
        NodeEnum::CheckPointStmt(_) => maintenance("CHECKPOINT"),
        NodeEnum::RefreshMatViewStmt(_) => maintenance("REFRESH MATERIALIZED VIEW"),
        NodeEnum::ListenStmt(_) => Decision::new(Kind::Write, Reason::ListenNotify("LISTEN")),
        NodeEnum::UnlistenStmt(_) => Decision::new(Kind::Write, Reason::ListenNotify("UNLISTEN")),
        NodeEnum::NotifyStmt(_) => Decision::new(Kind::Write, Reason::ListenNotify("NOTIFY")),
        NodeEnum::DeclareCursorStmt(_) => Decision::new(Kind::Write, Reason::Cursor("DECLARE")),
        NodeEnum::FetchStmt(f) => {
            Decision::new(Kind::Write, Reason::Cursor(if f.ismove { "MOVE" } else { "FETCH" }))
        }
        NodeEnum::ClosePortalStmt(_) => Decision::new(Kind::Write, Reason::Cursor("CLOSE")),
        NodeEnum::DoStmt(_) => Decision::new(Kind::Write, Reason::DoBlock),
        NodeEnum::CallStmt(_) => Decision::new(Kind::Write, Reason::Call),
        NodeEnum::ExecuteStmt(_) => Decision::new(Kind::Write, Reason::Execute),
        NodeEnum::PrepareStmt(_) => session("PREPARE"),
        NodeEnum::DeallocateStmt(_) => session("DEALLOCATE"),
        NodeEnum::DiscardStmt(_) => session("DISCARD"),
        NodeEnum::LoadStmt(_) => session("LOAD"),
        NodeEnum::TransactionStmt(t) => {
            let (kind, reason) = transaction(t);
            Decision::new(kind, reason)
        }
        NodeEnum::VariableSetStmt(s) => {
            let (kind, reason, setting) = variable_set(s);
            Decision { kind, reason, setting }
        }
        other => Decision::new(Kind::Write, Reason::Ddl(ddl_tag(other))),
    }
}

/// A statement that reads unless something inside it writes.
fn read_unless_writing(found: &Findings, what: &'static str) -> Decision {
    let write = |reason| Decision::new(Kind::Write, reason);
    if let Some(dml) = found.dml {
        return write(Reason::Write(dml));
    }
    if found.select_into {
        return write(Reason::Write("SELECT INTO"));
    }
    if let Some(lock) = found.row_lock {
        return write(Reason::RowLock(lock));
    }
    if let Some(reason) = found.functions.iter().find_map(known_writer) {
        return write(reason);
    }
    if found.functions.iter().any(is_set_config) {
        return Decision::new(Kind::SessionState, Reason::SetConfig);
    }
    Decision::new(Kind::Read, Reason::Read(what))
}

fn maintenance(what: &'static str) -> Decision {
    Decision::new(Kind::Write, Reason::Maintenance(what))
}

/// Plain EXPLAIN only plans (it runs on a standby even for an INSERT); EXPLAIN ANALYZE
/// runs the statement and is classified like it.
fn explain(e: &ExplainStmt, found: &Findings) -> Decision {
    let inner = e.query.as_deref().and_then(|q| q.node.as_ref());
    let (Some(inner), true) = (inner, is_explain_analyze(e)) else {
        return Decision::new(Kind::Read, Reason::Read("EXPLAIN"));
    };
    let d = decide(inner, found);
    match d.kind {
        Kind::Write => Decision::new(Kind::Write, Reason::ExplainAnalyze(Box::new(d.reason))),
        Kind::Read => Decision::new(Kind::Read, Reason::Read("EXPLAIN ANALYZE")),
        _ => d,
    }
}

/// EXPLAIN ANALYZE, or EXPLAIN (ANALYZE [true]): it runs its statement.
pub(crate) fn is_explain_analyze(e: &ExplainStmt) -> bool {
    e.options.iter().any(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) if d.defname == "analyze" => match d.arg.as_deref() {
            None => true,
            Some(arg) => const_text(arg).as_deref().and_then(parse_bool).unwrap_or(true),
        },
        _ => false,
    })
}

/// A command tag such as "CREATE TABLE" or "DROP INDEX" for a DDL node.
fn ddl_tag(node: &NodeEnum) -> String {
    let object = |t: i32| {
        ObjectType::try_from(t)
            .map(|o| o.as_str_name().trim_start_matches("OBJECT_").replace('_', " "))
            .unwrap_or_default()
    };
    match node {
        NodeEnum::CreateStmt(_) => "CREATE TABLE".into(),
        NodeEnum::IndexStmt(_) => "CREATE INDEX".into(),
        NodeEnum::ViewStmt(_) => "CREATE VIEW".into(),
        NodeEnum::CreatedbStmt(_) => "CREATE DATABASE".into(),
        NodeEnum::DropdbStmt(_) => "DROP DATABASE".into(),
        NodeEnum::CreateSeqStmt(_) => "CREATE SEQUENCE".into(),
        NodeEnum::AlterSeqStmt(_) => "ALTER SEQUENCE".into(),
        NodeEnum::CreateTrigStmt(_) => "CREATE TRIGGER".into(),
        NodeEnum::RuleStmt(_) => "CREATE RULE".into(),
        NodeEnum::CreateFunctionStmt(f) if f.is_procedure => "CREATE PROCEDURE".into(),
        NodeEnum::CreateFunctionStmt(_) => "CREATE FUNCTION".into(),
        NodeEnum::GrantStmt(g) => (if g.is_grant { "GRANT" } else { "REVOKE" }).into(),
        NodeEnum::GrantRoleStmt(g) => (if g.is_grant { "GRANT" } else { "REVOKE" }).into(),
        NodeEnum::DropStmt(d) => format!("DROP {}", object(d.remove_type)),
        NodeEnum::CommentStmt(c) => format!("COMMENT ON {}", object(c.objtype)),
        NodeEnum::AlterTableStmt(a) => format!("ALTER {}", object(a.objtype)),
        NodeEnum::RenameStmt(r) => format!("ALTER {} RENAME", object(r.rename_type)),
        NodeEnum::DefineStmt(d) => format!("CREATE {}", object(d.kind)),
        _ => words_of(type_name(node)),
    }
}

/// "AlterSystemStmt" → "ALTER SYSTEM": the node's type name as words.
fn words_of(name: &str) -> String {
    let name = name.strip_suffix("Stmt").unwrap_or(name);
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
