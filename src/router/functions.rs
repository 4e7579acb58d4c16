//! Functions that make a read a write: built-in knowledge, configured lists, the catalog.

use regex::Regex;

use super::reason::Reason;
use super::types::{Classification, FunctionRef, Kind};

/// Sequence functions: they write, or (currval, lastval) read session state that only
/// the primary backend has.
const SEQUENCE: &[&str] = &["nextval", "setval", "currval", "lastval"];
/// Functions that fail on a standby or keep primary-only state, for other reasons.
const OTHER_WRITERS: &[&str] = &[
    "txid_current",
    "pg_current_xact_id",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
];
/// Large-object functions that write, or use a descriptor opened by lo_open.
const LARGE_OBJECT: &[&str] = &[
    "lo_create", "lo_creat", "lo_import", "lo_export", "lo_unlink", "lo_open", "lo_close",
    "lowrite", "loread", "lo_put", "lo_from_bytea", "lo_truncate", "lo_truncate64", "lo_lseek",
    "lo_lseek64", "lo_tell", "lo_tell64",
];
const SET_CONFIG: &[&str] = &["set_config"];
const PG_NOTIFY: &[&str] = &["pg_notify"];

/// Why a built-in function (unqualified or pg_catalog) must run on the primary.
pub(crate) fn known_writer(f: &FunctionRef) -> Option<Reason> {
    if !matches!(f.schema.as_deref(), None | Some("pg_catalog")) {
        return None;
    }
    if f.is_builtin_named(SEQUENCE) || f.is_builtin_named(OTHER_WRITERS) {
        Some(Reason::WritingFunction(f.to_string()))
    } else if f.name.starts_with("pg_advisory_") || f.name.starts_with("pg_try_advisory_") {
        Some(Reason::AdvisoryLock(f.to_string()))
    } else if f.is_builtin_named(LARGE_OBJECT) {
        Some(Reason::LargeObject(f.to_string()))
    } else if f.is_builtin_named(PG_NOTIFY) {
        Some(Reason::ListenNotify("pg_notify()"))
    } else {
        None
    }
}

/// set_config(): session state (or transaction-local state) that every backend needs.
pub(crate) fn is_set_config(f: &FunctionRef) -> bool {
    f.is_builtin_named(SET_CONFIG)
}

/// pg_proc.provolatile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

/// routing.read_only_functions / routing.write_functions: regexes matched against
/// "schema.name" (when written qualified) and "name".
#[derive(Debug, Clone, Default)]
pub struct FunctionPolicy {
    read_only: Vec<Regex>,
    write: Vec<Regex>,
}

impl FunctionPolicy {
    /// Compiles both lists; the error names the bad pattern. Patterns are anchored
    /// (`^(?:…)$`), so "nextval" does not match "my_nextval".
    pub fn new(read_only: &[String], write: &[String]) -> Result<Self, String> {
        let compile = |list: &[String], key: &str| -> Result<Vec<Regex>, String> {
            list.iter()
                .map(|p| {
                    Regex::new(&format!("^(?:{p})$"))
                        .map_err(|e| format!("routing.{key}: bad regex {p:?}: {e}"))
                })
                .collect()
        };
        Ok(Self {
            read_only: compile(read_only, "read_only_functions")?,
            write: compile(write, "write_functions")?,
        })
    }

    /// Whether calling `f` makes a statement a write. The write list wins, then the
    /// read-only list, then the catalog: volatile or unknown → write.
    pub fn is_write(
        &self,
        f: &FunctionRef,
        catalog: &dyn Fn(&FunctionRef) -> Option<Volatility>,
    ) -> bool {
        let qualified = f.qualified();
        let hit = |list: &[Regex]| list.iter().any(|r| r.is_match(&f.name) || r.is_match(&qualified));
        if hit(&self.write) {
            return true;
        }
        if hit(&self.read_only) {
            return false;
        }
        !matches!(catalog(f), Some(Volatility::Immutable | Volatility::Stable))
    }
}

/// The kind after the function check: a Read calling a writing function becomes a
/// Write whose reason names the first such function. Other kinds are returned as is.
pub fn final_kind(
    c: &Classification,
    policy: &FunctionPolicy,
    catalog: &dyn Fn(&FunctionRef) -> Option<Volatility>,
) -> (Kind, Reason) {
    if c.kind == Kind::Read {
        if let Some(f) = c.functions.iter().find(|f| policy.is_write(f, catalog)) {
            return (Kind::Write, Reason::VolatileFunction(f.to_string()));
        }
    }
    (c.kind.clone(), c.reason.clone())
}
