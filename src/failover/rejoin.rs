//! Rejoining a fenced old primary as a standby of the new primary, on this host:
//! stop it, `pg_rewind` it from the new primary (which also writes `standby.signal` and
//! `primary_conninfo`), give it a replication slot, start it. The monitor then sees it
//! stream from the primary, and failover unfences it.
//!
//! pg_ctl and pg_rewind run as the owner of the data directory (PostgreSQL refuses
//! root), from `failover.pg_bindir` or the newest `/usr/lib/postgresql/*/bin`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{conninfo, connect, Settings};

/// What a rejoin needs beyond the failover settings.
pub struct Target<'a> {
    pub data_dir: &'a Path,
    pub name: &'a str,
    pub port: u16,
}

/// The directory of the PostgreSQL server programs.
pub fn bindir(configured: Option<&Path>) -> PathBuf {
    if let Some(d) = configured {
        return d.to_path_buf();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_default()
}

/// Rejoins node `old` as a standby of node `primary`.
pub async fn rejoin(settings: &Settings, primary: usize, target: Target<'_>) -> anyhow::Result<()> {
    let bin = bindir(settings.pg_bindir.as_deref());
    let data = target.data_dir;
    let meta = std::fs::metadata(data).with_context(|| format!("data_dir {}", data.display()))?;
    let owner = (meta.uid(), meta.gid());
    let run = |prog: &'static str, args: Vec<String>, env: Vec<(&'static str, String)>| run_pg(bin.join(prog), data, owner, args, env);
    let d = data.display().to_string();
    // 1. Stop it (it may already be down).
    let (_, stderr) = run("pg_ctl", vec!["stop".into(), "-D".into(), d.clone(), "-m".into(), "fast".into(), "-w".into(), "-t".into(), "60".into()], vec![]).await?;
    if !stderr.is_empty() {
        tracing::debug!(node = target.name, stderr, "pg_ctl stop");
    }
    // 2. A slot for it on the new primary.
    let slot = conninfo::slot_name(target.name);
    let pc = connect(settings, primary).await.context("connect to the new primary")?;
    super::ensure_slot(&pc, &slot).await.context("create its replication slot")?;
    // The new primary's control file must show its new timeline, else pg_rewind finds
    // both on one timeline and does nothing.
    pc.batch_execute("CHECKPOINT").await.context("CHECKPOINT on the new primary")?;
    // 3. Rewind from the new primary; -R writes standby.signal and primary_conninfo.
    let p = &settings.backends[primary];
    let source = format!(
        "host={} port={} user={} dbname={} application_name={}",
        p.host, p.port, settings.user, settings.database, target.name
    );
    let mut env = Vec::new();
    if let Some(pw) = &settings.password {
        env.push(("PGPASSWORD", pw.clone()));
    }
    let (ok, stderr) = run("pg_rewind", vec!["--target-pgdata".into(), d.clone(), "--source-server".into(), source, "-R".into()], env).await?;
    if !ok {
        bail!("pg_rewind failed: {}", last_line(&stderr));
    }
    tracing::warn!(event = "rejoin_rewound", node = target.name, output = %stderr.replace('\n', "; "), "pg_rewind done");
    // 4. Stream through its slot.
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&format!("primary_slot_name = {}\n", conninfo::sql_literal(&slot)));
    std::fs::write(&auto, text).context("write postgresql.auto.conf")?;
    // 5. Start it as a standby.
    let log = data.join("pgvigil-rejoin.log").display().to_string();
    // Its port as pgvigil knows it (a port given on the command line is not in the config).
    let port = format!("-p {}", target.port);
    let (ok, stderr) = run("pg_ctl", vec!["start".into(), "-D".into(), d, "-w".into(), "-t".into(), "120".into(), "-l".into(), log, "-o".into(), port], vec![]).await?;
    if !ok {
        bail!("pg_ctl start failed: {}", last_line(&stderr));
    }
    Ok(())
}

/// Stops the server of a data directory on this host (`pg_ctl stop -m fast`), which
/// sends all its WAL to connected standbys before it exits.
pub async fn stop(settings: &Settings, data: &Path) -> anyhow::Result<()> {
    let bin = bindir(settings.pg_bindir.as_deref());
    let meta = std::fs::metadata(data).with_context(|| format!("data_dir {}", data.display()))?;
    let args = vec!["stop".into(), "-D".into(), data.display().to_string(), "-m".into(), "fast".into(), "-w".into(), "-t".into(), "60".into()];
    let (ok, stderr) = run_pg(bin.join("pg_ctl"), data, (meta.uid(), meta.gid()), args, vec![]).await?;
    if !ok {
        bail!("pg_ctl stop failed: {}", last_line(&stderr));
    }
    Ok(())
}

/// Runs a PostgreSQL program as the data directory's owner (PostgreSQL refuses root),
/// with no inherited `PG*` variables; returns (success, stderr).
async fn run_pg(prog: PathBuf, data: &Path, (uid, gid): (u32, u32), args: Vec<String>, env: Vec<(&'static str, String)>) -> anyhow::Result<(bool, String)> {
    let name = prog.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&prog);
    cmd.args(&args).current_dir(data).kill_on_drop(true).stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    if nix::unistd::geteuid().is_root() && uid != 0 {
        cmd.uid(uid).gid(gid);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .with_context(|| format!("{name} timed out"))?
        .with_context(|| format!("cannot run {}", prog.display()))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(s)
}
