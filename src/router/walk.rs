//! A complete walk of a parse tree, looking for the parts that make a statement write.
//!
//! The tree is pg_query's protobuf, serialised to a `serde_json::Value` so that every
//! node is visited without listing the ~270 node types and their fields by hand: a
//! locking clause three subqueries deep in a CASE inside a CTE is found all the same.
//! Node types show up as object keys ("FuncCall", "LockingClause"…).

use serde_json::Value;

use super::types::{FunctionRef, RelationRef};

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
    pub cte_names: Vec<String>,
}

impl Findings {
    /// Walks `node` and everything below it.
    pub fn collect(node: &Value) -> Self {
        let mut found = Findings::default();
        let mut stack = vec![node];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(map) => {
                    for (key, child) in map {
                        found.visit(key, child);
                        if child.is_object() || child.is_array() {
                            stack.push(child);
                        }
                    }
                }
                Value::Array(items) => stack.extend(items.iter().rev()),
                _ => {}
            }
        }
        let ctes = std::mem::take(&mut found.cte_names);
        found
            .relations
            .retain(|r| r.schema.is_some() || !ctes.contains(&r.name));
        found.cte_names = ctes;
        found
    }

    fn visit(&mut self, key: &str, node: &Value) {
        match key {
            "InsertStmt" => self.dml = self.dml.or(Some("INSERT")),
            "UpdateStmt" => self.dml = self.dml.or(Some("UPDATE")),
            "DeleteStmt" => self.dml = self.dml.or(Some("DELETE")),
            "MergeStmt" => self.dml = self.dml.or(Some("MERGE")),
            "SelectStmt" => {
                if node.get("into_clause").is_some_and(|c| !c.is_null()) {
                    self.select_into = true;
                }
            }
            "LockingClause" => {
                let lock = lock_name(node.get("strength").and_then(Value::as_i64).unwrap_or(0));
                if rank(lock) > rank(self.row_lock) {
                    self.row_lock = lock;
                }
            }
            "FuncCall" => {
                if let Some(f) = function_ref(node) {
                    if !self.functions.contains(&f) {
                        self.functions.push(f);
                    }
                }
            }
            "RangeVar" => {
                let r = RelationRef {
                    schema: non_empty(node.get("schemaname")),
                    name: non_empty(node.get("relname")).unwrap_or_default(),
                };
                if !self.relations.contains(&r) {
                    self.relations.push(r);
                }
            }
            "CommonTableExpr" => {
                if let Some(name) = non_empty(node.get("ctename")) {
                    self.cte_names.push(name);
                }
            }
            _ => {}
        }
    }
}

/// `LockClauseStrength` numbers of pg_query's protobuf.
fn lock_name(strength: i64) -> Option<&'static str> {
    match strength {
        2 => Some("FOR KEY SHARE"),
        3 => Some("FOR SHARE"),
        4 => Some("FOR NO KEY UPDATE"),
        5 => Some("FOR UPDATE"),
        // 0/1 (undefined/none) should not appear in a LockingClause; be conservative.
        _ => Some("FOR UPDATE"),
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

/// `funcname` is a list of String nodes: [name] or [schema, name] (or [db, schema, name]).
fn function_ref(call: &Value) -> Option<FunctionRef> {
    let parts: Vec<&str> = call
        .get("funcname")?
        .as_array()?
        .iter()
        .filter_map(string_node)
        .collect();
    match parts.as_slice() {
        [] => None,
        [name] => Some(FunctionRef { schema: None, name: (*name).to_string() }),
        [.., schema, name] => Some(FunctionRef {
            schema: Some((*schema).to_string()),
            name: (*name).to_string(),
        }),
    }
}

/// The text of a `{"node": {"String": {"sval": …}}}` node.
pub(crate) fn string_node(node: &Value) -> Option<&str> {
    node.get("node")?.get("String")?.get("sval")?.as_str()
}

fn non_empty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}
