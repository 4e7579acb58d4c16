//! `classify()`: query text in, `Classification` out.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pg_query::NodeEnum;

use super::hint::leading_hint;
use super::reason::Reason;
use super::session_objects;
use super::statement::{decide, Decision};
use super::types::{Classification, Kind};
use super::walk::Findings;

/// Stack that must be left for a parse; below it, the parse runs on a fresh stack.
const RED_ZONE: usize = 8 << 20;
/// Size of that fresh stack.
const PARSE_STACK: usize = 16 << 20;
/// Stack size for threads that classify: enough that no parse needs a stack switch.
pub const PARSER_THREAD_STACK: usize = RED_ZONE + PARSE_STACK;

/// Classifies a query string (one or several statements) with PostgreSQL's grammar.
/// Never panics; anything that does not parse is `Kind::Unparsable`.
///
/// Decoding pg_query's tree recurses (prost stops at 100 nested messages, but its
/// frames are large: about 3 MB in all, more than a 2 MB tokio worker stack), so the
/// parse runs on a stack of its own when the caller's has less than `RED_ZONE` left.
/// The C parser checks its own depth against the stack it runs on. That switch costs
/// fresh-page faults (~100 µs): callers on hot paths should run on threads with
/// 16 MB stacks (tokio `Builder::thread_stack_size`), where no switch happens.
pub fn classify(sql: &str) -> Classification {
    let hint = leading_hint(sql);
    let mut c = stacker::maybe_grow(RED_ZONE, PARSE_STACK, || {
        catch_unwind(AssertUnwindSafe(|| parsed(sql))).unwrap_or_else(|_| unparsable())
    });
    apply_hint(&mut c, hint);
    c
}

/// A leading hint forces Read and Write to the primary, here and in what a PREPARE
/// holds (its EXECUTEs go to the primary too).
fn apply_hint(c: &mut Classification, hint: Option<&'static str>) {
    c.forced_primary_hint = hint.is_some();
    if let Some(comment) = hint {
        if matches!(c.kind, Kind::Read | Kind::Write) {
            c.kind = Kind::Write;
            c.reason = Reason::Hint(comment);
        }
    }
    if let Some((_, inner)) = c.prepared.as_mut() {
        apply_hint(inner, hint);
    }
}

/// `SET pgvigil.<name> = value` (or TO DEFAULT / RESET): the name without the
/// "pgvigil." prefix and the lower-cased value ("default" for a reset).
pub fn pgvigil_setting(sql: &str) -> Option<(String, String)> {
    classify(sql).pgvigil_setting()
}

impl Classification {
    /// What an unparsed statement counts as: a write (the primary), one statement.
    pub fn unclassified() -> Self {
        Classification { kind: Kind::Write, reason: Reason::NotClassified, statements: 1, ..unparsable() }
    }

    /// See [`pgvigil_setting`].
    pub fn pgvigil_setting(&self) -> Option<(String, String)> {
        let (name, value) = self.setting.as_ref()?;
        let name = name.strip_prefix("pgvigil.")?;
        Some((name.to_string(), value.to_ascii_lowercase()))
    }
}

fn unparsable() -> Classification {
    Classification {
        kind: Kind::Unparsable,
        reason: Reason::ParseError,
        functions: Vec::new(),
        relations: Vec::new(),
        forced_primary_hint: false,
        statements: 0,
        setting: None,
        temp_tables_created: Vec::new(),
        prepared: None,
        executes: None,
        deallocates: None,
    }
}

/// One statement classified as if it were the whole string (what a PREPARE holds).
fn standalone(node: &NodeEnum) -> Classification {
    let found = Findings::collect(node);
    let d = decide(node, &found);
    let mut c = Classification {
        kind: d.kind,
        reason: d.reason,
        setting: d.setting,
        functions: found.functions,
        relations: found.relations,
        statements: 1,
        ..unparsable()
    };
    session_objects::note(node, &mut c, standalone);
    c
}

fn parsed(sql: &str) -> Classification {
    let Ok(result) = pg_query::parse(sql, 0) else { return unparsable() };
    let mut c = Classification { statements: result.protobuf.stmts.len(), ..unparsable() };
    let mut decisions = Vec::with_capacity(c.statements);
    for stmt in &result.protobuf.stmts {
        let Some(node) = stmt.stmt.as_deref().and_then(|n| n.node.as_ref()) else { return unparsable() };
        let found = Findings::collect(node);
        decisions.push(decide(node, &found));
        session_objects::note(node, &mut c, standalone);
        for f in found.functions {
            if !c.functions.contains(&f) {
                c.functions.push(f);
            }
        }
        for r in found.relations {
            if !c.relations.contains(&r) {
                c.relations.push(r);
            }
        }
    }
    if decisions.len() != c.statements {
        return unparsable();
    }
    let (kind, reason, setting) = combine(decisions);
    c.kind = kind;
    c.reason = reason;
    c.setting = setting;
    c
}

/// One decision for the whole string. Several statements run as one implicit
/// transaction on one node: any write sends all to the primary, and so does any mix
/// with session state or transaction control (no node-independent way to run it).
fn combine(mut decisions: Vec<Decision>) -> (Kind, Reason, Option<(String, String)>) {
    match decisions.len() {
        0 => return (Kind::Read, Reason::Empty, None),
        1 => {
            if let Some(d) = decisions.pop() {
                return (d.kind, d.reason, d.setting);
            }
        }
        _ => {}
    }
    if let Some(d) = decisions.iter().find(|d| d.kind == Kind::Write) {
        return (Kind::Write, Reason::MultiStatement(Box::new(d.reason.clone())), None);
    }
    if decisions.iter().any(|d| d.kind != Kind::Read) {
        return (Kind::Write, Reason::MultiStatementMixed, None);
    }
    (Kind::Read, Reason::Read("multi-statement"), None)
}
