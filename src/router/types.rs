//! What the classifier returns.

use super::reason::Reason;

/// Where a statement may run. `Write` and `Unparsable` must go to the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// No side effect: any node, subject to the function check of `final_kind`.
    Read,
    /// Changes data or state that lives on the primary only.
    Write,
    /// Changes session state (SET, PREPARE, DISCARD, set_config…) that every
    /// backend of the session must see.
    SessionState,
    /// Transaction control; the caller tracks the transaction.
    TxControl(TxControl),
    /// pg_query could not parse it: primary (it will give the error).
    Unparsable,
}

/// Transaction isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl Isolation {
    /// From the SQL spelling ("repeatable read"), case-insensitive.
    pub fn from_sql(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read uncommitted" => Some(Self::ReadUncommitted),
            "read committed" => Some(Self::ReadCommitted),
            "repeatable read" => Some(Self::RepeatableRead),
            "serializable" => Some(Self::Serializable),
            _ => None,
        }
    }
}

/// Transaction control statements. Mode fields are `None` when not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxControl {
    /// BEGIN / START TRANSACTION.
    Begin {
        read_only: Option<bool>,
        isolation: Option<Isolation>,
        deferrable: Option<bool>,
    },
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackToSavepoint,
    PrepareTransaction,
    CommitPrepared,
    RollbackPrepared,
    /// SET TRANSACTION …, or SET [LOCAL] transaction_isolation / transaction_read_only /
    /// transaction_deferrable: modes of the current transaction only.
    SetTransaction {
        read_only: Option<bool>,
        isolation: Option<Isolation>,
        deferrable: Option<bool>,
    },
    /// SET SESSION CHARACTERISTICS AS TRANSACTION …, or SET default_transaction_*:
    /// defaults for later transactions of the session. Also session state.
    SetSessionCharacteristics {
        read_only: Option<bool>,
        isolation: Option<Isolation>,
        deferrable: Option<bool>,
    },
}

/// A function call as written: `schema` is `None` when unqualified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionRef {
    pub schema: Option<String>,
    pub name: String,
}

impl FunctionRef {
    /// "schema.name" or "name".
    pub fn qualified(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Unqualified or in pg_catalog: can be the built-in of that name.
    pub(crate) fn is_builtin_named(&self, names: &[&str]) -> bool {
        matches!(self.schema.as_deref(), None | Some("pg_catalog"))
            && names.contains(&self.name.as_str())
    }
}

impl std::fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}()", self.qualified())
    }
}

/// A table (or view, sequence…) referenced by name; `schema` is `None` when unqualified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelationRef {
    pub schema: Option<String>,
    pub name: String,
}

/// The classifier's decision for one query string. In a string of several statements,
/// `prepared`, `executes` and `deallocates` describe the last statement of their sort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub kind: Kind,
    pub reason: Reason,
    /// Every function called anywhere in the string, deduplicated.
    pub functions: Vec<FunctionRef>,
    /// Every relation named anywhere (CTE names excluded), deduplicated.
    pub relations: Vec<RelationRef>,
    /// A leading `/*NO LOAD BALANCE*/` or `/* pgvigil: primary */` comment.
    pub forced_primary_hint: bool,
    /// Number of statements in the string (0 for empty or comment-only strings).
    pub statements: usize,
    /// For a single plain `SET name = value` / `SET name TO value`: the lower-cased
    /// name and the value as text (several values joined by ", ").
    pub setting: Option<(String, String)>,
    /// Relations created as temporary (TEMP/TEMPORARY, or in schema pg_temp) by
    /// CREATE TABLE [AS], SELECT … INTO, CREATE VIEW or CREATE SEQUENCE; they live on
    /// the session's backend only.
    pub temp_tables_created: Vec<RelationRef>,
    /// `PREPARE name AS stmt`: the name (folded as PostgreSQL folds it) and `stmt`
    /// classified as if it stood alone.
    pub prepared: Option<(String, Box<Classification>)>,
    /// `EXECUTE name` (also under EXPLAIN ANALYZE): the name.
    pub executes: Option<String>,
    /// `DEALLOCATE [PREPARE] name` → `Some(Some(name))`; `DEALLOCATE ALL` → `Some(None)`.
    pub deallocates: Option<Option<String>>,
}
