//! A running local cluster: node lifecycle, fault injection and SQL access.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::bin::PgBin;
use super::builder::ClusterBuilder;
use super::conf::{conninfo_value, sql_ident, sql_literal, PasswordEncryption};
use super::error::{HarnessError, LogTail, Result};
use super::node::{PgNode, POLL};
use super::process::{clean_command, run, RunAs};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const DROP_TIMEOUT: Duration = Duration::from_secs(10);
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Throwaway PostgreSQL primary + streaming standbys in a temp dir. Dropping it stops every
/// server (immediate shutdown, then SIGKILL) and removes the dir, also when unwinding.
#[derive(Debug)]
pub struct LocalCluster {
    pub(crate) nodes: Vec<PgNode>,
    pub(crate) bin: PgBin,
    pub(crate) run_as: RunAs,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) sock_dir: PathBuf,
    /// Index of the node that was last made primary.
    pub(crate) primary: usize,
    // Last field: removed after Drop::drop stopped the servers.
    pub(crate) dir: TempDir,
}

/// Where psql connects: the TCP port (authenticated by pg_hba) or the trusted socket.
#[derive(Clone, Copy)]
pub(crate) enum Via {
    Tcp,
    Socket,
}

impl LocalCluster {
    /// A builder with the defaults.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::new()
    }

    /// The temp dir holding data dirs, logs and sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PostgreSQL installation in use.
    pub fn bin(&self) -> &PgBin {
        &self.bin
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the cluster has no nodes (only while building).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (0 is the initial primary). Panics when out of range, like indexing.
    pub fn node(&self, i: usize) -> &PgNode {
        &self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[PgNode] {
        &self.nodes
    }

    /// (user, password) of the superuser.
    pub fn superuser(&self) -> (&str, &str) {
        (&self.user, &self.password)
    }

    /// libpq keyword/value connection string for node `i`, password included.
    pub fn conninfo(&self, i: usize, dbname: &str) -> String {
        let n = &self.nodes[i];
        format!(
            "host={} port={} user={} password={} dbname={}",
            n.host,
            n.port,
            conninfo_value(&self.user),
            conninfo_value(&self.password),
            conninfo_value(dbname)
        )
    }

    /// Server log of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].log.clone()
    }

    /// Starts node `i` and waits until it is ready.
    pub fn start(&mut self, i: usize) -> Result<()> {
        self.get(i)?;
        self.nodes[i].spawn(&self.bin, self.run_as, &self.sock_dir)?;
        self.wait_ready(i, START_TIMEOUT)
    }

    /// Fast shutdown of node `i`; waits for all its processes to exit.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.shutdown(Signal::SIGINT, STOP_TIMEOUT)
    }

    /// SIGKILLs the postmaster of node `i` (a crash); waits until its orphaned children exited,
    /// so the node can be started again.
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.shutdown(Signal::SIGKILL, STOP_TIMEOUT)
    }

    /// SIGSTOPs the postmaster of node `i` and all its children.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.freeze(true)
    }

    /// SIGCONTs a paused node.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.freeze(false)
    }

    /// Promotes standby `i` and waits until it leaves recovery.
    pub fn promote(&mut self, i: usize) -> Result<()> {
        let out = self.psql(i, "postgres", "SELECT pg_promote(true, 60)")?;
        if out != "t" {
            return Err(HarnessError::Invalid(format!(
                "{}: pg_promote returned {out:?}{}",
                self.nodes[i].name,
                self.nodes[i].log_tail()
            )));
        }
        self.poll(i, "promotion to finish", START_TIMEOUT, |c| {
            Ok(!c.is_in_recovery(i)?)
        })?;
        self.primary = i;
        Ok(())
    }

    /// Waits until node `i` accepts connections and answers `SELECT 1`.
    pub fn wait_ready(&self, i: usize, timeout: Duration) -> Result<()> {
        self.wait_ready_via(i, timeout, Via::Tcp)
    }

    pub(crate) fn wait_ready_via(&self, i: usize, timeout: Duration, via: Via) -> Result<()> {
        let node = self.get(i)?;
        let deadline = Instant::now() + timeout;
        let mut last_err = String::new();
        loop {
            if node.pid().is_none_or(|p| !super::process::alive(p)) {
                return Err(HarnessError::ServerExited {
                    node: node.name.clone(),
                    status: "not running".into(),
                    log: node.log_tail(),
                });
            }
            if pm_status(&node.data_dir).is_none_or(|s| s == "ready" || s == "standby") {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.psql_via(i, "postgres", "SELECT 1", via, left.max(POLL), &[]) {
                    Ok(_) => return Ok(()),
                    Err(e) => last_err = brief(&e),
                }
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    node: node.name.clone(),
                    what: "the server to be ready".into(),
                    timeout,
                    detail: last_err.clone(),
                    log: node.log_tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// `pg_is_in_recovery()` of node `i`.
    pub fn is_in_recovery(&self, i: usize) -> Result<bool> {
        Ok(self.psql(i, "postgres", "SELECT pg_is_in_recovery()")? == "t")
    }

    /// Runs `sql` with psql as the superuser over node `i`'s TCP port; returns stdout trimmed
    /// (unaligned, tuples only).
    pub fn psql(&self, i: usize, dbname: &str, sql: &str) -> Result<String> {
        self.psql_via(i, dbname, sql, Via::Tcp, QUERY_TIMEOUT, &[])
    }

    pub(crate) fn psql_via(
        &self,
        i: usize,
        dbname: &str,
        sql: &str,
        via: Via,
        timeout: Duration,
        env: &[(&str, &str)],
    ) -> Result<String> {
        let node = self.get(i)?;
        let host = match via {
            Via::Tcp => node.host.clone(),
            Via::Socket => self.sock_dir.to_string_lossy().into_owned(),
        };
        let conn = format!(
            "host={} port={} user={} dbname={} connect_timeout={}",
            conninfo_value(&host),
            node.port,
            conninfo_value(&self.user),
            conninfo_value(dbname),
            timeout.as_secs().clamp(2, 10),
        );
        let mut cmd = clean_command(&self.bin.path("psql"));
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conn,
            "-f",
            "-",
        ])
        .env("PGPASSWORD", &self.password)
        .env("PGAPPNAME", "pgvigil-harness");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SQL goes through stdin: never in the process list or in error messages.
        run(cmd, Some(sql), timeout, Some(&node.log)).map(|s| s.trim().to_string())
    }

    /// Creates a LOGIN role on the current primary, its password stored with `encryption`.
    pub fn create_role(
        &self,
        name: &str,
        password: &str,
        encryption: PasswordEncryption,
    ) -> Result<()> {
        let sql = format!(
            "SET password_encryption = {};\nCREATE ROLE {} LOGIN PASSWORD {};",
            sql_literal(encryption.setting()),
            sql_ident(name),
            sql_literal(password)
        );
        self.psql_secret(self.primary, &sql, Via::Tcp)
    }

    /// Runs SQL holding a secret: the server does not log the statement even when it fails.
    pub(crate) fn psql_secret(&self, i: usize, sql: &str, via: Via) -> Result<()> {
        let env = [("PGOPTIONS", "-c log_min_error_statement=panic")];
        self.psql_via(i, "postgres", sql, via, QUERY_TIMEOUT, &env)
            .map(|_| ())
    }

    /// Waits until standby `i` has a WAL receiver in state 'streaming'.
    pub fn wait_streaming(&self, standby: usize, timeout: Duration) -> Result<()> {
        self.poll(standby, "WAL streaming", timeout, |c| {
            let st = c.psql(
                standby,
                "postgres",
                "SELECT status FROM pg_stat_wal_receiver",
            )?;
            Ok(st == "streaming")
        })
    }

    /// Polls `check` on node `i` until it returns true; errors of `check` are retried.
    fn poll(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Self) -> Result<bool>,
    ) -> Result<()> {
        let node = self.get(i)?;
        let deadline = Instant::now() + timeout;
        let mut detail = String::new();
        loop {
            match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => detail = brief(&e),
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    node: node.name.clone(),
                    what: what.into(),
                    timeout,
                    detail,
                    log: LogTail::of(&node.log),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn get(&self, i: usize) -> Result<&PgNode> {
        self.nodes.get(i).ok_or_else(|| {
            HarnessError::Invalid(format!("no node {i} (cluster has {})", self.nodes.len()))
        })
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut PgNode> {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .ok_or_else(|| HarnessError::Invalid(format!("no node {i} (cluster has {len})")))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Standbys first: a primary in immediate shutdown does not wait for them anyway.
        for node in self.nodes.iter_mut().rev() {
            if let Err(e) = node.shutdown(Signal::SIGQUIT, DROP_TIMEOUT) {
                tracing::warn!(node = %node.name, error = %e, "cluster teardown");
            }
        }
        // A server started by someone else in a node's data dir (a rejoin by pgvigil)
        // is not our child: stop it by the pid it recorded.
        for node in &self.nodes {
            let pid_file = node.data_dir.join("postmaster.pid");
            let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.lines().next()?.trim().parse::<u32>().ok()) else {
                continue;
            };
            // Only a live postgres (the pid may have been reused).
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains("postgres") {
                continue;
            }
            crate::cluster::process::signal(pid, Signal::SIGQUIT);
            let deadline = std::time::Instant::now() + DROP_TIMEOUT;
            while std::path::Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Status line of postmaster.pid ("starting", "ready", "standby", "stopping"), if written.
fn pm_status(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    text.lines()
        .nth(7)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// One line saying why the last poll failed (a command's stderr, else the error itself).
fn brief(e: &HarnessError) -> String {
    let text = match e {
        HarnessError::Command { stderr, .. } if !stderr.trim().is_empty() => stderr.clone(),
        other => other.to_string(),
    };
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    format!(" (last error: {line})")
}
