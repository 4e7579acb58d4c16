//! The configuration files the harness writes: postgresql.conf settings, pg_hba.conf,
//! and a standby's replication settings.

use std::io::Write;
use std::path::Path;

use super::error::{HarnessError, Result};

/// Authentication method for TCP connections from 127.0.0.1 and ::1, replication included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HbaMethod {
    /// No password asked.
    #[default]
    Trust,
    /// Cleartext password.
    Password,
    /// MD5 challenge (falls back to SCRAM for SCRAM-stored passwords).
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
}

impl HbaMethod {
    fn keyword(self) -> &'static str {
        match self {
            HbaMethod::Trust => "trust",
            HbaMethod::Password => "password",
            HbaMethod::Md5 => "md5",
            HbaMethod::ScramSha256 => "scram-sha-256",
        }
    }

    /// How the superuser's password is stored so that this method is really exercised.
    pub(crate) fn storage(self) -> PasswordEncryption {
        match self {
            HbaMethod::Md5 => PasswordEncryption::Md5,
            _ => PasswordEncryption::ScramSha256,
        }
    }
}

/// How a role's password is stored (`password_encryption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordEncryption {
    /// `md5`
    Md5,
    /// `scram-sha-256`
    ScramSha256,
}

impl PasswordEncryption {
    pub(crate) fn setting(self) -> &'static str {
        match self {
            PasswordEncryption::Md5 => "md5",
            PasswordEncryption::ScramSha256 => "scram-sha-256",
        }
    }
}

/// Settings every node gets, before the caller's extra lines.
const BASE_SETTINGS: &str = "\
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
wal_log_hints = on
wal_retrieve_retry_interval = '200ms'
fsync = off
synchronous_commit = on
shared_buffers = '32MB'
max_connections = 200
logging_collector = off
log_line_prefix = '%m [%p] %q%a '
";

/// Appends the harness settings and `extra` lines to `data/postgresql.conf`
/// (later lines win, so initdb's locale and timezone settings stay).
pub(crate) fn append_settings(data: &Path, extra: &[String]) -> Result<()> {
    let mut text = String::from("\n# --- pgvigil cluster harness ---\n");
    text.push_str(BASE_SETTINGS);
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    append(&data.join("postgresql.conf"), &text)
}

/// Replaces `data/pg_hba.conf`: sockets trust, TCP loopback uses `method`.
pub(crate) fn write_hba(data: &Path, method: HbaMethod, extra: &[String]) -> Result<()> {
    let m = method.keyword();
    let mut text = format!(
        "# written by the pgvigil cluster harness\n\
         local all all trust\n\
         local replication all trust\n\
         host all all 127.0.0.1/32 {m}\n\
         host all all ::1/128 {m}\n\
         host replication all 127.0.0.1/32 {m}\n\
         host replication all ::1/128 {m}\n"
    );
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    write(&data.join("pg_hba.conf"), &text)
}

/// Replaces `data/postgresql.auto.conf` with the standby's upstream and slot, password
/// included so the standby reconnects after any restart.
pub(crate) fn write_standby_conf(
    data: &Path,
    upstream_port: u16,
    user: &str,
    password: &str,
    app_name: &str,
    slot: &str,
) -> Result<()> {
    let conninfo = format!(
        "host=127.0.0.1 port={upstream_port} user={} password={} application_name={} \
         connect_timeout=2",
        conninfo_value(user),
        conninfo_value(password),
        conninfo_value(app_name),
    );
    let text = format!(
        "# written by the pgvigil cluster harness\n\
         primary_conninfo = {}\n\
         primary_slot_name = {}\n",
        conf_literal(&conninfo),
        conf_literal(slot),
    );
    write(&data.join("postgresql.auto.conf"), &text)?;
    write(&data.join("standby.signal"), "")
}

/// A libpq keyword value, quoted when needed: `it's` -> `'it\'s'`.
pub(crate) fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A postgresql.conf string literal.
fn conf_literal(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// An SQL string literal.
pub(crate) fn sql_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// An SQL identifier.
pub(crate) fn sql_ident(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

fn append(path: &Path, text: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| HarnessError::io(format!("append to {}", path.display()), e))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| HarnessError::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(conninfo_value(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(conninfo_value("plain"), "plain");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conf_literal("x='y'"), "'x=''y'''");
        assert_eq!(sql_literal("o'k"), "'o''k'");
        assert_eq!(sql_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
