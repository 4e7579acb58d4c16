//! Statement classification for read/write routing, without I/O.
//!
//! `classify()` parses a query string with PostgreSQL's own grammar (pg_query) and
//! decides whether it may run on a hot standby (`Kind::Read`), must run on the primary
//! (`Write`, `Unparsable`), changes session state, or controls the transaction. A
//! Read lists the functions it calls: `final_kind()` turns it into a Write when one of
//! them writes, by the configured `FunctionPolicy` and the caller's catalog lookup.
//! `ClassifierCache` keeps decisions by query text.
//!
//! Decisions on unclear cases:
//! - Plain EXPLAIN of anything is a Read (it only plans); EXPLAIN ANALYZE is classified
//!   like the statement it runs.
//! - SET TRANSACTION and `SET [LOCAL] transaction_*` are `TxControl::SetTransaction`;
//!   SET SESSION CHARACTERISTICS and `SET default_transaction_*` are
//!   `TxControl::SetSessionCharacteristics` (session defaults: also replay them).
//! - Every SERIALIZABLE transaction needs the primary, READ ONLY DEFERRABLE included:
//!   PostgreSQL refuses serializable mode on a hot standby.
//! - SET CONSTRAINTS, LOAD: Write and SessionState. Unknown statements: Write.
//! - A hint forces Read and Write to Write; SessionState and TxControl keep their kind.
//! - Several statements: any write → Write; a mix with session state or transaction
//!   control → Write; only reads → Read. Empty and `;`-only strings are Reads.
//! - set_config() anywhere in an otherwise reading statement → SessionState.
//! - Objects that live on one backend are reported for the session to track: relations
//!   created as temporary, PREPARE (with its statement classified alone), EXECUTE and
//!   DEALLOCATE names. A hint on a PREPARE also forces the statement it holds.

pub mod balance;
mod cache;
mod catalog;
mod classify;
mod functions;
mod hint;
mod reason;
mod shape;
mod session_objects;
mod statement;
mod transaction;
mod types;
mod walk;

#[cfg(test)]
mod detail_tests;
#[cfg(test)]
mod robustness_tests;
#[cfg(test)]
mod table_tests;

pub use cache::ClassifierCache;
pub use catalog::{FunctionCatalog, FUNCTIONS_QUERY};
pub use classify::{classify, pgvigil_setting, PARSER_THREAD_STACK};
pub use functions::{final_kind, FunctionPolicy, Volatility};
pub use reason::Reason;
pub use transaction::serializable_needs_primary;
pub(crate) use transaction::parse_bool;
pub use types::{Classification, FunctionRef, Isolation, Kind, RelationRef, TxControl};
