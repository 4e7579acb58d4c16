//! A pristine `initdb` output cached per PostgreSQL version under the temp dir, copied for
//! each new primary. initdb costs seconds; `cp -a` costs tens of milliseconds.
//!
//! The cache is created atomically (initdb into a private dir, then `rename`), so parallel
//! processes either see a complete template or none; a loser of the rename race discards its
//! copy. A template not owned by the server user or lacking the completion marker is ignored,
//! and `PGVIGIL_NO_INITDB_CACHE=1` turns the cache off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::bin::PgBin;
use super::error::{HarnessError, Result};
use super::process::{run, RunAs};

const MARKER: &str = "pgvigil-template-complete";
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// Creates the data directory `dest` (which must not exist) for a fresh primary.
pub(crate) fn create_data_dir(
    bin: &PgBin,
    run_as: RunAs,
    superuser: &str,
    dest: &Path,
) -> Result<()> {
    let cwd = dest.parent().unwrap_or(Path::new("/"));
    if std::env::var_os("PGVIGIL_NO_INITDB_CACHE").is_some_and(|v| v == "1") {
        return initdb(bin, run_as, superuser, dest, cwd);
    }
    let template = match cached(bin, run_as, superuser) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "initdb cache unusable; running initdb directly");
            return initdb(bin, run_as, superuser, dest, cwd);
        }
    };
    let mut cp = run_as.command(Path::new("cp"), cwd);
    cp.arg("-a").arg(&template).arg(dest);
    run(cp, None, INITDB_TIMEOUT, None)?;
    std::fs::remove_file(dest.join(MARKER))
        .map_err(|e| HarnessError::io(format!("remove {}", dest.join(MARKER).display()), e))
}

/// Path of the complete template, creating it if needed.
fn cached(bin: &PgBin, run_as: RunAs, superuser: &str) -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let key: String = format!(
        "pgvigil-initdb-v1-{}-{}-u{}",
        bin.version,
        superuser,
        run_as.uid()
    )
    .chars()
    .map(|c| {
        if c.is_ascii_alphanumeric() || "-._".contains(c) {
            c
        } else {
            '_'
        }
    })
    .collect();
    let final_path = base.join(&key);
    if usable(&final_path, run_as) {
        return Ok(final_path);
    }
    let work = tempfile::Builder::new()
        .prefix(&format!("{key}.tmp-"))
        .tempdir_in(&base)
        .map_err(|e| HarnessError::io(format!("create temp dir in {}", base.display()), e))?;
    run_as.chown(work.path())?;
    let data = work.path().join("data");
    initdb(bin, run_as, superuser, &data, work.path())?;
    std::fs::write(data.join(MARKER), "")
        .map_err(|e| HarnessError::io(format!("write {}", data.join(MARKER).display()), e))?;
    // Fails with ENOTEMPTY/EEXIST when another process won the race; theirs is as good.
    if std::fs::rename(&data, &final_path).is_err() && !usable(&final_path, run_as) {
        return Err(HarnessError::Invalid(format!(
            "initdb cache {} exists but is not usable",
            final_path.display()
        )));
    }
    Ok(final_path)
}

fn usable(path: &Path, run_as: RunAs) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) => m.is_dir() && m.uid() == run_as.uid() && path.join(MARKER).is_file(),
        Err(_) => false,
    }
}

fn initdb(bin: &PgBin, run_as: RunAs, superuser: &str, dest: &Path, cwd: &Path) -> Result<()> {
    let mut cmd = run_as.command(&bin.path("initdb"), cwd);
    cmd.arg("-D").arg(dest).args([
        "-N",
        "-E",
        "UTF8",
        "--locale=C",
        "-A",
        "trust",
        "-U",
        superuser,
    ]);
    run(cmd, None, INITDB_TIMEOUT, None).map(|_| ())
}
