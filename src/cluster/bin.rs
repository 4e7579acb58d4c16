//! Locating the PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{HarnessError, Result};

/// The PostgreSQL server binaries the harness runs.
#[derive(Debug, Clone)]
pub struct PgBin {
    /// Directory holding `initdb`, `postgres`, `pg_basebackup`, `psql`.
    pub bindir: PathBuf,
    /// Server version, e.g. "15.18".
    pub version: String,
}

const REQUIRED: [&str; 3] = ["initdb", "postgres", "pg_basebackup"];

impl PgBin {
    /// Finds the binaries: `$PGVIGIL_PG_BINDIR`, `initdb`/`postgres` on `PATH`,
    /// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<PgBin> {
        let mut searched = Vec::new();
        for dir in candidates() {
            searched.push(dir.display().to_string());
            if !REQUIRED.iter().all(|b| dir.join(b).is_file()) {
                continue;
            }
            if let Some(version) = server_version(&dir) {
                return Ok(PgBin {
                    bindir: dir,
                    version,
                });
            }
        }
        Err(HarnessError::BinariesNotFound {
            searched: if searched.is_empty() {
                "PGVIGIL_PG_BINDIR, PATH, pg_config, /usr/lib/postgresql".into()
            } else {
                searched.join(", ")
            },
        })
    }

    /// Path of one program of this installation (`psql` falls back to `PATH`).
    pub(crate) fn path(&self, prog: &str) -> PathBuf {
        let p = self.bindir.join(prog);
        if p.is_file() {
            p
        } else {
            PathBuf::from(prog)
        }
    }
}

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::var_os("PGVIGIL_PG_BINDIR") {
        // An explicit setting is the only candidate: silently using another install would surprise.
        return vec![PathBuf::from(dir)];
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            for prog in ["initdb", "postgres"] {
                // Debian links /usr/local/bin/initdb -> /usr/lib/postgresql/N/bin/initdb.
                if let Ok(real) = dir.join(prog).canonicalize() {
                    if let Some(parent) = real.parent() {
                        push_unique(&mut out, parent.to_path_buf());
                    }
                }
            }
        }
    }
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output() {
        if o.status.success() {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !dir.is_empty() {
                push_unique(&mut out, PathBuf::from(dir));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    for (_, dir) in versions {
        push_unique(&mut out, dir);
    }
    out
}

fn push_unique(v: &mut Vec<PathBuf>, p: PathBuf) {
    if !v.contains(&p) {
        v.push(p);
    }
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18".
fn server_version(dir: &Path) -> Option<String> {
    let o = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&o.stdout))
}

fn parse_version(s: &str) -> Option<String> {
    let rest = s.split(')').nth(1).unwrap_or(s);
    rest.split_whitespace()
        .next()
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").as_deref(),
            Some("15.18")
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta1").as_deref(),
            Some("17beta1")
        );
        assert_eq!(parse_version("garbage"), None);
    }
}
