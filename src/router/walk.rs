//! A complete walk of a parse tree, looking for the parts that make a statement write.
//!
//! pg_query's protobuf structs implement `serde::Serialize`, so a serializer that
//! keeps nothing but what routing needs visits every node without listing the ~270
//! node types and their fields by hand: a locking clause three subqueries deep in a
//! CASE inside a CTE is found all the same. Structs arrive under their node type
//! names ("FuncCall", "LockingClause"…). Nothing is allocated but the findings.

use pg_query::NodeEnum;
use serde::ser::{self, Serialize};

use super::types::{FunctionRef, RelationRef};

mod serializer;

/// What the walk found in one statement.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// First data-changing statement nested anywhere: "INSERT", "UPDATE"…
    pub dml: Option<&'static str>,
    /// A SELECT … INTO somewhere.
    pub select_into: bool,
    /// Strongest row-lock clause: "FOR UPDATE"…
    pub row_lock: Option<&'static str>,
    pub functions: Vec<FunctionRef>,
    pub relations: Vec<RelationRef>,
    cte_names: Vec<String>,
}

impl Findings {
    /// Walks `node` and everything below it.
    pub fn collect(node: &NodeEnum) -> Self {
        let mut w = Walker::default();
        // The walker only fails to stop early, which `collect` never asks for.
        let _ = node.serialize(&mut w);
        let mut found = w.found;
        let ctes = std::mem::take(&mut found.cte_names);
        found.relations.retain(|r| r.schema.is_some() || !ctes.contains(&r.name));
        found
    }
}

/// The node type name of `node` ("AlterSystemStmt"), found by serializing only its top.
pub(crate) fn type_name(node: &NodeEnum) -> &'static str {
    let mut w = Walker { stop_at_first: true, ..Walker::default() };
    let _ = node.serialize(&mut w);
    w.first.unwrap_or("Unknown")
}

/// What the next primitive value should be kept as.
#[derive(Default, Clone, Copy, PartialEq)]
enum Capture {
    #[default]
    Nothing,
    Str,
    Int,
    IsSome,
}

#[derive(Default)]
struct Walker {
    found: Findings,
    capture: Capture,
    text: Option<String>,
    int: Option<i64>,
    is_some: Option<bool>,
    /// Inside FuncCall.funcname: String nodes are name parts.
    name_parts: Option<Vec<String>>,
    first: Option<&'static str>,
    stop_at_first: bool,
}

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stop")
    }
}
impl std::error::Error for Stop {}
impl ser::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl Walker {
    /// Serializes `value` keeping its first primitive as `capture` says.
    fn grab<T: ?Sized + Serialize>(&mut self, capture: Capture, value: &T) -> Result<(), Stop> {
        self.capture = capture;
        let r = value.serialize(&mut *self);
        self.capture = Capture::Nothing;
        r
    }

    fn take_text(&mut self, value: &(impl ?Sized + Serialize)) -> Result<Option<String>, Stop> {
        self.grab(Capture::Str, value)?;
        Ok(self.text.take().filter(|s| !s.is_empty()))
    }
}

/// One struct being serialized; `name` is its node type.
struct Fields<'a> {
    w: &'a mut Walker,
    name: &'static str,
    schema: Option<String>,
    relname: Option<String>,
}

impl ser::SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = Stop;

    fn serialize_field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result<(), Stop> {
        let w = &mut *self.w;
        match (self.name, key) {
            ("RangeVar", "schemaname") => self.schema = w.take_text(value)?,
            ("RangeVar", "relname") => self.relname = w.take_text(value)?,
            ("String", "sval") if w.name_parts.is_some() => {
                let text = w.take_text(value)?.unwrap_or_default();
                if let Some(parts) = w.name_parts.as_mut() {
                    parts.push(text);
                }
            }
            ("CommonTableExpr", "ctename") => {
                if let Some(name) = w.take_text(value)? {
                    w.found.cte_names.push(name);
                }
                return Ok(());
            }
            ("LockingClause", "strength") => {
                w.grab(Capture::Int, value)?;
                let lock = lock_name(w.int.take().unwrap_or(0));
                if rank(Some(lock)) > rank(w.found.row_lock) {
                    w.found.row_lock = Some(lock);
                }
            }
            ("SelectStmt", "into_clause") => {
                w.grab(Capture::IsSome, value)?;
                if w.is_some.take() == Some(true) {
                    w.found.select_into = true;
                }
            }
            ("FuncCall", "funcname") => {
                let outer = w.name_parts.replace(Vec::new());
                value.serialize(&mut *w)?;
                let parts = std::mem::replace(&mut w.name_parts, outer).unwrap_or_default();
                if let Some(f) = function_ref(parts) {
                    if !w.found.functions.contains(&f) {
                        w.found.functions.push(f);
                    }
                }
            }
            _ => value.serialize(&mut *w)?,
        }
        Ok(())
    }

    fn end(self) -> Result<(), Stop> {
        if let (true, Some(name)) = (self.name == "RangeVar", self.relname) {
            let r = RelationRef { schema: self.schema, name };
            if !self.w.found.relations.contains(&r) {
                self.w.found.relations.push(r);
            }
        }
        Ok(())
    }
}

fn lock_name(strength: i64) -> &'static str {
    match strength {
        2 => "FOR KEY SHARE",
        3 => "FOR SHARE",
        4 => "FOR NO KEY UPDATE",
        // 5, and (never seen) undefined values: the strongest, to be safe.
        _ => "FOR UPDATE",
    }
}

fn rank(lock: Option<&'static str>) -> u8 {
    match lock {
        None => 0,
        Some("FOR KEY SHARE") => 1,
        Some("FOR SHARE") => 2,
        Some("FOR NO KEY UPDATE") => 3,
        Some(_) => 4,
    }
}

/// funcname parts: [name] or [schema, name] (or [catalog, schema, name]).
fn function_ref(mut parts: Vec<String>) -> Option<FunctionRef> {
    let name = parts.pop()?;
    Some(FunctionRef { schema: parts.pop(), name })
}
