//! What a statement creates or names in its session: temporary relations and
//! prepared statements. Such objects live on one backend, so the session routes later
//! statements that use them by what it learns here.

use pg_query::protobuf::{ExplainStmt, RangeVar, SelectStmt};
use pg_query::NodeEnum;

use super::statement::is_explain_analyze;
use super::types::{Classification, RelationRef};

/// Notes the temporary relations, PREPARE, EXECUTE and DEALLOCATE of the top-level
/// statement `node` in `c`. `standalone` classifies the statement a PREPARE holds.
pub(crate) fn note(node: &NodeEnum, c: &mut Classification, standalone: impl Fn(&NodeEnum) -> Classification) {
    temp_created(node, &mut c.temp_tables_created);
    match node {
        NodeEnum::PrepareStmt(p) => {
            if let Some(inner) = p.query.as_deref().and_then(|q| q.node.as_ref()) {
                c.prepared = Some((p.name.clone(), Box::new(standalone(inner))));
            }
        }
        NodeEnum::ExecuteStmt(e) => c.executes = Some(e.name.clone()),
        NodeEnum::ExplainStmt(e) => {
            if let Some(NodeEnum::ExecuteStmt(x)) = analyzed(e) {
                c.executes = Some(x.name.clone());
            }
        }
        NodeEnum::DeallocateStmt(d) => {
            c.deallocates = Some((!d.isall && !d.name.is_empty()).then(|| d.name.clone()));
        }
        _ => {}
    }
}

/// Adds the relations `node` creates as temporary to `out` (once each).
fn temp_created(node: &NodeEnum, out: &mut Vec<RelationRef>) {
    let rel = match node {
        NodeEnum::CreateStmt(s) => s.relation.as_ref(),
        NodeEnum::CreateTableAsStmt(s) => s.into.as_ref().and_then(|i| i.rel.as_ref()),
        NodeEnum::ViewStmt(s) => s.view.as_ref(),
        NodeEnum::CreateSeqStmt(s) => s.sequence.as_ref(),
        NodeEnum::SelectStmt(s) => select_into(s),
        NodeEnum::ExplainStmt(e) => {
            if let Some(inner) = analyzed(e) {
                temp_created(inner, out);
            }
            return;
        }
        _ => None,
    };
    if let Some(r) = rel.filter(|r| is_temp(r)) {
        let r = RelationRef {
            schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
            name: r.relname.clone(),
        };
        if !out.contains(&r) {
            out.push(r);
        }
    }
}

/// The target of SELECT … INTO; with UNION and the like it sits on the leftmost SELECT.
fn select_into(s: &SelectStmt) -> Option<&RangeVar> {
    match (&s.into_clause, s.larg.as_deref()) {
        (Some(into), _) => into.rel.as_ref(),
        (None, Some(larg)) => select_into(larg),
        (None, None) => None,
    }
}

/// The statement an EXPLAIN ANALYZE runs; `None` for a plain EXPLAIN.
fn analyzed(e: &ExplainStmt) -> Option<&NodeEnum> {
    is_explain_analyze(e).then(|| e.query.as_deref().and_then(|q| q.node.as_ref())).flatten()
}

/// TEMP/TEMPORARY, or created in `pg_temp` (or a backend's own `pg_temp_N`).
fn is_temp(r: &RangeVar) -> bool {
    let temp_schema = match r.schemaname.strip_prefix("pg_temp") {
        Some("") => true,
        Some(rest) => rest.strip_prefix('_').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    };
    r.relpersistence == "t" || temp_schema
}
