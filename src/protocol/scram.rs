//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it: verifiers, server side, client side.
