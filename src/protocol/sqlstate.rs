//! SQLSTATE codes pgvigil sends, as PostgreSQL names them.

pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const CONNECTION_FAILURE: &str = "08006";
pub const CONNECTION_EXCEPTION: &str = "08000";
pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
pub const INTERNAL_ERROR: &str = "XX000";
pub const QUERY_CANCELED: &str = "57014";
pub const INVALID_PARAMETER_VALUE: &str = "22023";
pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
/// undefined_object, which PostgreSQL also uses for "unrecognized configuration parameter".
pub const UNDEFINED_OBJECT: &str = "42704";
pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
