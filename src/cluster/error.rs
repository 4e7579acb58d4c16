//! Errors of the cluster harness: each carries what is needed to diagnose a failing CI run.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Result of harness operations.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Why a harness operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries not found (looked in: {searched}); install them with \
         `apt-get install -y postgresql-15` (Debian/Ubuntu) or set PGVIGIL_PG_BINDIR to the \
         directory that holds initdb and postgres"
    )]
    BinariesNotFound { searched: String },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("command failed ({status}): {command}\n--- stderr ---\n{stderr}{log}")]
    Command {
        command: String,
        status: String,
        stderr: String,
        log: LogTail,
    },
    /// A wait did not finish in time.
    #[error("{node}: timed out after {timeout:?} waiting for {what}{detail}{log}")]
    Timeout {
        node: String,
        what: String,
        timeout: Duration,
        detail: String,
        log: LogTail,
    },
    /// The postmaster exited when it should be running.
    #[error("{node}: server exited ({status}){log}")]
    ServerExited {
        node: String,
        status: String,
        log: LogTail,
    },
    /// The request does not fit the cluster's state.
    #[error("{0}")]
    Invalid(String),
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The last lines of a server log, formatted for an error message (empty when no log).
#[derive(Debug, Default)]
pub struct LogTail(String);

impl LogTail {
    const LINES: usize = 40;

    /// Reads the tail of `path`; a missing or unreadable log gives an empty tail.
    pub(crate) fn of(path: &Path) -> LogTail {
        Self::read(path, 0)
    }

    /// Like [`LogTail::of`], only considering bytes from `offset` on.
    pub(crate) fn read(path: &Path, offset: u64) -> LogTail {
        let Ok(bytes) = std::fs::read(path) else {
            return LogTail::default();
        };
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[start..]);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(Self::LINES)..].join("\n");
        LogTail(format!(
            "\n--- server log {} (tail) ---\n{tail}",
            path.display()
        ))
    }

    pub(crate) fn none() -> LogTail {
        LogTail::default()
    }
}

impl fmt::Display for LogTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
