//! PostgreSQL md5 password hashing.
