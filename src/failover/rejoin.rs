//! Rejoining a fenced old primary as a standby of the new primary: stop it, `pg_rewind`
//! it from the new primary (or, with `rejoin.allow_reclone`, replace its data with a
//! fresh base backup when the rewind fails), give it a replication slot, start it, and
//! check that it streams. Failover then unfences it once the monitor sees it stream.
//!
//! Each node operation (stop, rewind, base backup, start) runs its `[rejoin]` command
//! when one is set (with the hook placeholders, plus `%s` slot and `%n` name), else the
//! built-in one on the node's `data_dir` on this host; with neither, the rejoin fails
//! before touching the node. A command is responsible for what the built-in step does:
//! `rewind_command` and `basebackup_command` leave the node configured as a standby of
//! the new primary (`standby.signal`, `primary_conninfo`, `primary_slot_name`).
//!
//! Built-in steps run pg_ctl, pg_rewind and pg_basebackup as the owner of the data
//! directory (PostgreSQL refuses root), from `failover.pg_bindir` or the newest
//! `/usr/lib/postgresql/*/bin`. A re-clone never deletes the old data: it is moved to
//! `<data_dir>.pgvigil-old-<unix time>`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{conninfo, connect, hooks, Settings};

/// Settings from `[rejoin]`.
#[derive(Clone, Default)]
pub struct RejoinSettings {
    pub allow_reclone: bool,
    pub stop_command: Option<String>,
    pub start_command: Option<String>,
    pub rewind_command: Option<String>,
    pub basebackup_command: Option<String>,
    /// How long one node operation may take.
    pub timeout: Duration,
}

/// One node operation of a rejoin.
#[derive(Debug, Clone, Copy)]
enum Op {
    Stop,
    Rewind,
    BaseBackup,
    Start,
}

impl Op {
    /// The setting of its command.
    fn key(self) -> &'static str {
        match self {
            Op::Stop => "rejoin.stop_command",
            Op::Rewind => "rejoin.rewind_command",
            Op::BaseBackup => "rejoin.basebackup_command",
            Op::Start => "rejoin.start_command",
        }
    }

    fn command(self, s: &RejoinSettings) -> Option<&str> {
        match self {
            Op::Stop => s.stop_command.as_deref(),
            Op::Rewind => s.rewind_command.as_deref(),
            Op::BaseBackup => s.basebackup_command.as_deref(),
            Op::Start => s.start_command.as_deref(),
        }
    }
}

/// How one operation runs on the node.
enum How<'a> {
    Command(&'a str),
    BuiltIn(&'a Path),
}

/// The configured command, else the built-in operation on the node's `data_dir` here.
fn how(settings: &Settings, node: usize, op: Op) -> anyhow::Result<How<'_>> {
    if let Some(c) = op.command(&settings.rejoin) {
        return Ok(How::Command(c));
    }
    let b = &settings.backends[node];
    match b.data_dir.as_deref() {
        Some(d) if d.is_dir() => Ok(How::BuiltIn(d)),
        Some(d) => bail!("rejoin of {} needs [[backends]] data_dir on this host or {}: {} is not a directory here", b.name, op.key(), d.display()),
        None => bail!("rejoin of {} needs [[backends]] data_dir on this host or {}", b.name, op.key()),
    }
}

/// Whether every step a rejoin of node `i` needs has a command or a `data_dir` (which
/// nodes automatic rejoin may try).
pub fn configured(settings: &Settings, i: usize) -> bool {
    settings.backends[i].data_dir.is_some() || [Op::Stop, Op::Rewind, Op::Start].iter().all(|op| op.command(&settings.rejoin).is_some())
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

/// Rejoins node `node` as a standby of node `primary`; returns once it streams from it.
pub async fn rejoin(settings: &Settings, primary: usize, node: usize) -> anyhow::Result<()> {
    // Every step's way is known before the node is touched.
    let stop = how(settings, node, Op::Stop)?;
    let rewind = how(settings, node, Op::Rewind)?;
    let start = how(settings, node, Op::Start)?;
    let ops = NodeOps::new(settings, primary, node);
    let name = ops.name();
    // 1. Stop it (it may already be down).
    ops.stop(stop).await?;
    tracing::info!(event = "rejoin_stopped", node = name, "stopped");
    // 2. A slot for it on the new primary.
    let pc = connect(settings, primary).await.context("connect to the new primary")?;
    super::ensure_slot(&pc, &ops.slot).await.context("create its replication slot")?;
    // The new primary's control file must show its new timeline, else pg_rewind finds
    // both on one timeline and does nothing.
    pc.batch_execute("CHECKPOINT").await.context("CHECKPOINT on the new primary")?;
    drop(pc);
    // 3. Rewind it from the new primary, as its standby; else a fresh copy, if allowed.
    match ops.rewind(rewind).await {
        Ok(()) => tracing::warn!(event = "rejoin_rewound", node = name, "rewound from the new primary"),
        Err(e) => {
            let allowed = settings.rejoin.allow_reclone;
            tracing::error!(event = "rejoin_rewind_failed", node = name, error = %format!("{e:#}"), reclone = allowed, "rewind failed");
            if !allowed {
                bail!("{e:#}; the node is left stopped (rejoin.allow_reclone = true would replace its data with a fresh base backup of the new primary)");
            }
            let copy = how(settings, node, Op::BaseBackup).context("rewind failed and rejoin.allow_reclone is on")?;
            let kept = ops.base_backup(copy).await?;
            tracing::warn!(event = "rejoin_recloned", node = name, old_data = %kept, "replaced by a base backup of the new primary");
        }
    }
    // 4. Start it as a standby.
    ops.start(start).await?;
    // 5. It streams from the new primary.
    ops.streams().await?;
    tracing::info!(event = "rejoin_streaming", node = name, "streams from the new primary");
    Ok(())
}

/// Stops node `node` (fast shutdown, which sends all its WAL to connected standbys
/// before the server exits) with `rejoin.stop_command` or built in; `Err` also when
/// neither is possible. `primary` fills the new-primary placeholders.
pub async fn stop(settings: &Settings, node: usize, primary: usize) -> anyhow::Result<()> {
    let how = how(settings, node, Op::Stop)?;
    NodeOps::new(settings, primary, node).stop(how).await
}

/// Starts node `node` as it is (`rejoin.start_command` or built in): an old primary
/// that a failed switchover stopped comes back as the primary. `primary` fills the
/// new-primary placeholders.
pub async fn start(settings: &Settings, node: usize, primary: usize) -> anyhow::Result<()> {
    let how = how(settings, node, Op::Start)?;
    NodeOps::new(settings, primary, node).start(how).await
}

/// The operations of one rejoin.
struct NodeOps<'a> {
    settings: &'a Settings,
    primary: usize,
    node: usize,
    slot: String,
}

impl<'a> NodeOps<'a> {
    fn new(settings: &'a Settings, primary: usize, node: usize) -> Self {
        NodeOps { settings, primary, node, slot: conninfo::slot_name(&settings.backends[node].name) }
    }

    fn name(&self) -> &'a str {
        &self.settings.backends[self.node].name
    }

    fn timeout(&self) -> Duration {
        self.settings.rejoin.timeout
    }

    /// Runs the command of `op` with its placeholders.
    async fn command(&self, op: Op, template: &str) -> anyhow::Result<()> {
        let values = hooks::Placeholders {
            node: self.settings.node_ref(self.node),
            new_primary: self.settings.node_ref(self.primary),
            old_primary: self.settings.node_ref(self.node),
        };
        let command = hooks::expand_with(template, &values, &[('s', &self.slot), ('n', self.name())]);
        hooks::run_setting(op.key(), &command, self.timeout()).await
    }

    /// A PostgreSQL program run as the owner of `data`.
    fn pg(&self, data: &Path) -> anyhow::Result<Pg> {
        let meta = std::fs::metadata(data).with_context(|| format!("data_dir {}", data.display()))?;
        Ok(Pg { bin: bindir(self.settings.pg_bindir.as_deref()), cwd: data.to_path_buf(), owner: (meta.uid(), meta.gid()), timeout: self.timeout() })
    }

    fn secs(&self) -> String {
        self.timeout().as_secs().max(1).to_string()
    }

    async fn stop(&self, how: How<'_>) -> anyhow::Result<()> {
        let data = match how {
            How::Command(c) => return self.command(Op::Stop, c).await,
            How::BuiltIn(d) => d,
        };
        let pg = self.pg(data)?;
        let d = data.display().to_string();
        let stopped = pg.run("pg_ctl", &["stop", "-D", &d, "-m", "fast", "-w", "-t", &self.secs()], &[]).await?;
        // Exit status 3: no server running.
        if !stopped.ok() && pg.run("pg_ctl", &["status", "-D", &d], &[]).await?.code != Some(3) {
            bail!("pg_ctl stop failed: {}", last_line(&stopped.stderr));
        }
        Ok(())
    }

    /// The new primary as pg_rewind and pg_basebackup connect to it, and the password.
    fn source(&self) -> (String, Vec<(&'static str, String)>) {
        let p = &self.settings.backends[self.primary];
        let s = self.settings;
        let source = format!("host={} port={} user={} dbname={} application_name={}", p.host, p.port, s.user, s.database, self.name());
        let mut env: Vec<(&'static str, String)> = s.password.iter().map(|pw| ("PGPASSWORD", pw.clone())).collect();
        env.extend(s.tls.libpq_env());
        (source, env)
    }

    async fn rewind(&self, how: How<'_>) -> anyhow::Result<()> {
        let data = match how {
            How::Command(c) => return self.command(Op::Rewind, c).await,
            How::BuiltIn(d) => d,
        };
        let pg = self.pg(data)?;
        let (source, env) = self.source();
        // -R writes standby.signal and primary_conninfo.
        let ran = pg.run("pg_rewind", &["--target-pgdata", &data.display().to_string(), "--source-server", &source, "-R"], &env).await?;
        if !ran.ok() {
            bail!("pg_rewind failed: {}", last_line(&ran.stderr));
        }
        tracing::info!(node = self.name(), output = %ran.stderr.replace('\n', "; "), "pg_rewind done");
        // Stream through its slot.
        let auto = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&format!("primary_slot_name = {}\n", conninfo::sql_literal(&self.slot)));
        std::fs::write(&auto, text).context("write postgresql.auto.conf")?;
        Ok(())
    }

    /// Replaces the node's data with a base backup of the new primary; returns where the
    /// old data was kept (the command's own business when a command does it).
    async fn base_backup(&self, how: How<'_>) -> anyhow::Result<String> {
        let data = match how {
            How::Command(c) => return self.command(Op::BaseBackup, c).await.map(|()| "(rejoin.basebackup_command)".into()),
            How::BuiltIn(d) => d,
        };
        let pg = self.pg(data)?;
        let d = data.display().to_string();
        if pg.run("pg_ctl", &["status", "-D", &d], &[]).await?.code != Some(3) {
            bail!("{d} is in use by a running server: not replacing it");
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.as_secs()).unwrap_or(0);
        let kept = PathBuf::from(format!("{d}.pgvigil-old-{now}"));
        if kept.exists() {
            bail!("{} already exists: not moving {d} there", kept.display());
        }
        let mode = std::fs::metadata(data)?.permissions().mode() & 0o7777;
        std::fs::rename(data, &kept).with_context(|| format!("move {d} to {}", kept.display()))?;
        let made = std::fs::create_dir(data)
            .and_then(|()| std::fs::set_permissions(data, std::fs::Permissions::from_mode(mode)))
            .and_then(|()| if nix::unistd::geteuid().is_root() { std::os::unix::fs::chown(data, Some(pg.owner.0), Some(pg.owner.1)) } else { Ok(()) });
        let copied = match made {
            Err(e) => Err(anyhow::Error::new(e).context(format!("create an empty {d}"))),
            Ok(()) => {
                let (_, env) = self.source();
                let p = &self.settings.backends[self.primary];
                let port = p.port.to_string();
                // -R writes standby.signal, primary_conninfo and primary_slot_name; -w:
                // never prompt for a password.
                let app = format!("application_name={}", self.name());
                let args = ["-D", &d, "-R", "-X", "stream", "-S", &self.slot, "-h", &p.host, "-p", &port, "-U", &self.settings.user, "-d", &app, "-w"];
                match pg.run("pg_basebackup", &args, &env).await {
                    Ok(ran) if ran.ok() => Ok(()),
                    Ok(ran) => Err(anyhow::anyhow!("pg_basebackup failed: {}", last_line(&ran.stderr))),
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = copied {
            // Put the old data back; keep a partial copy aside (pg_basebackup empties it
            // itself on most failures).
            let partial = PathBuf::from(format!("{d}.pgvigil-partial-{now}"));
            let cleared = if std::fs::remove_dir(data).is_ok() || !data.exists() { Ok(()) } else { std::fs::rename(data, &partial) };
            let restored = cleared.and_then(|()| std::fs::rename(&kept, data));
            return match restored {
                Ok(()) => Err(e.context(format!("the old data is back in {d}"))),
                Err(r) => Err(e.context(format!("the old data is in {} (cannot move it back: {r})", kept.display()))),
            };
        }
        Ok(kept.display().to_string())
    }

    async fn start(&self, how: How<'_>) -> anyhow::Result<()> {
        let data = match how {
            How::Command(c) => return self.command(Op::Start, c).await,
            How::BuiltIn(d) => d,
        };
        let pg = self.pg(data)?;
        let log = data.join("pgvigil-rejoin.log").display().to_string();
        // Its port as pgvigil knows it (a port given on the command line is not in the config).
        let port = format!("-p {}", self.settings.backends[self.node].port);
        let ran = pg.run("pg_ctl", &["start", "-D", &data.display().to_string(), "-w", "-t", &self.secs(), "-l", &log, "-o", &port], &[]).await?;
        if !ran.ok() {
            bail!("pg_ctl start failed: {}", last_line(&ran.stderr));
        }
        Ok(())
    }

    /// Waits (up to `rejoin.timeout`) until the node's WAL receiver streams from the new
    /// primary.
    async fn streams(&self) -> anyhow::Result<()> {
        let port = i32::from(self.settings.backends[self.primary].port);
        let deadline = Instant::now() + self.timeout();
        loop {
            let last = match connect(self.settings, self.node).await {
                Ok(c) => match c.query_opt("SELECT sender_port, status FROM pg_stat_wal_receiver", &[]).await {
                    Ok(Some(row)) => {
                        let (sender, status): (Option<i32>, Option<String>) = (row.get(0), row.get(1));
                        if sender == Some(port) && status.as_deref() == Some("streaming") {
                            return Ok(());
                        }
                        format!("WAL receiver {status:?} from port {sender:?}")
                    }
                    Ok(None) => "no WAL receiver".into(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!("started, but not streaming from port {port} within {:?} (rejoin.timeout): {last}", self.timeout());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// PostgreSQL programs run for one data directory.
struct Pg {
    bin: PathBuf,
    cwd: PathBuf,
    owner: (u32, u32),
    timeout: Duration,
}

/// How a program ended.
struct Ran {
    code: Option<i32>,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl Pg {
    /// Runs `prog` as the data directory's owner (PostgreSQL refuses root), with no
    /// inherited `PG*` variables.
    async fn run(&self, prog: &str, args: &[&str], env: &[(&'static str, String)]) -> anyhow::Result<Ran> {
        let path = self.bin.join(prog);
        let mut cmd = tokio::process::Command::new(&path);
        cmd.args(args).current_dir(&self.cwd).kill_on_drop(true).stdin(std::process::Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (uid, gid) = self.owner;
        if nix::unistd::geteuid().is_root() && uid != 0 {
            cmd.uid(uid).gid(gid);
            // Its own home, as a login would give it: libpq reads ~/.postgresql (client
            // certificates) there when it uses TLS, and fails on a home it may not read.
            if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                cmd.env("HOME", user.dir);
            }
        }
        let out = tokio::time::timeout(self.timeout, cmd.output())
            .await
            .with_context(|| format!("{prog} did not finish within {:?} (rejoin.timeout)", self.timeout))?
            .with_context(|| format!("cannot run {}", path.display()))?;
        Ok(Ran { code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(data_dir: Option<PathBuf>, rejoin: RejoinSettings) -> Settings {
        Settings {
            automatic: true,
            max_lag: 0,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            connect_timeout: Duration::from_secs(1),
            replay_timeout: Duration::from_secs(1),
            promote_timeout: Duration::from_secs(1),
            switchover_drain_timeout: Duration::from_secs(1),
            backends: vec![super::super::Backend { name: "b".into(), host: "db2".into(), port: 5433, no_failover: false, priority: 0, data_dir }],
            state_dir: None,
            auto_rejoin: true,
            pg_bindir: None,
            promote_command: None,
            follow_command: None,
            rejoin,
            tls: std::sync::Arc::new(crate::tls::backend::BackendTls::disabled()),
        }
    }

    #[test]
    fn a_command_wins_else_the_data_dir_else_an_error_naming_both_keys() {
        let none = settings(None, RejoinSettings::default());
        assert!(!configured(&none, 0));
        let e = how(&none, 0, Op::Stop).err().unwrap().to_string();
        assert_eq!(e, "rejoin of b needs [[backends]] data_dir on this host or rejoin.stop_command");
        let e = how(&none, 0, Op::BaseBackup).err().unwrap().to_string();
        assert!(e.ends_with("or rejoin.basebackup_command"), "{e}");

        let commands = RejoinSettings {
            stop_command: Some("stop".into()),
            rewind_command: Some("rewind".into()),
            start_command: Some("start".into()),
            ..RejoinSettings::default()
        };
        let remote = settings(None, commands.clone());
        assert!(configured(&remote, 0), "commands alone are enough");
        assert!(matches!(how(&remote, 0, Op::Rewind), Ok(How::Command("rewind"))));
        assert!(how(&remote, 0, Op::BaseBackup).is_err());

        let here = tempfile::tempdir().unwrap();
        let local = settings(Some(here.path().to_path_buf()), RejoinSettings { stop_command: Some("stop".into()), ..RejoinSettings::default() });
        assert!(configured(&local, 0));
        assert!(matches!(how(&local, 0, Op::Stop), Ok(How::Command("stop"))));
        assert!(matches!(how(&local, 0, Op::Start), Ok(How::BuiltIn(d)) if d == here.path()));

        let elsewhere = settings(Some(here.path().join("missing")), RejoinSettings::default());
        assert!(configured(&elsewhere, 0), "tried, and fails saying why");
        let e = how(&elsewhere, 0, Op::Rewind).err().unwrap().to_string();
        assert!(e.contains("or rejoin.rewind_command") && e.contains("missing is not a directory here"), "{e}");
    }
}
