//! I/O-free PostgreSQL v3 wire codec and authentication math. Imports nothing else of pgvigil.

pub mod md5;
pub mod scram;
