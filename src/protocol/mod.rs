//! I/O-free PostgreSQL v3 wire codec and authentication math. Imports nothing else of pgvigil.
//!
//! Parsing is total: "not enough bytes yet" is `Ok(None)`, a declared length is checked
//! against a maximum before anything is allocated, and nothing here panics on input.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod md5;
pub mod scram;
pub mod sqlstate;
pub mod startup;

#[cfg(test)]
mod roundtrip_tests;

/// A violation of the wire protocol by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("invalid message format: {0}")]
    Malformed(&'static str),
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
}
