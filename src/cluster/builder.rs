//! Building a cluster: primary from the initdb cache, standbys by pg_basebackup, each with
//! a physical replication slot named after it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::bin::PgBin;
use super::cluster::{LocalCluster, Via};
use super::conf::{self, sql_ident, sql_literal, HbaMethod};
use super::error::{HarnessError, Result};
use super::node::PgNode;
use super::process::{run, RunAs};
use super::template;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Configures a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    standbys: usize,
    hba: HbaMethod,
    user: String,
    password: String,
    conf: Vec<String>,
    hba_lines: Vec<String>,
    prefix: String,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterBuilder {
    /// No standbys, `trust`, superuser "postgres" with password "postgres", nodes "pg0", "pg1"...
    pub fn new() -> Self {
        ClusterBuilder {
            standbys: 0,
            hba: HbaMethod::Trust,
            user: "postgres".into(),
            password: "postgres".into(),
            conf: Vec::new(),
            hba_lines: Vec::new(),
            prefix: "pg".into(),
        }
    }

    /// Number of streaming standbys.
    pub fn standbys(mut self, n: usize) -> Self {
        self.standbys = n;
        self
    }

    /// Authentication method for TCP connections (replication included).
    pub fn hba(mut self, m: HbaMethod) -> Self {
        self.hba = m;
        self
    }

    /// Password of the superuser.
    pub fn superuser_password(mut self, pw: &str) -> Self {
        self.password = pw.to_string();
        self
    }

    /// An extra postgresql.conf line for every node.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// An extra pg_hba.conf line for every node, after the harness's own
    /// (e.g. `host all all 192.0.2.0/24 scram-sha-256` with a matching `listen_addresses`).
    pub fn hba_line(mut self, line: &str) -> Self {
        self.hba_lines.push(line.to_string());
        self
    }

    /// Prefix of node names (default "pg").
    pub fn name_prefix(mut self, p: &str) -> Self {
        self.prefix = p.to_string();
        self
    }

    /// Creates and starts all nodes; returns once all are ready and every standby streams.
    pub fn build(self) -> Result<LocalCluster> {
        let started = Instant::now();
        let bin = PgBin::find()?;
        let run_as = RunAs::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("pgv-")
            .tempdir_in(short_tmp())
            .map_err(|e| HarnessError::io("create cluster temp dir", e))?;
        run_as.chown(dir.path())?;
        let sock_dir = dir.path().join("s");
        std::fs::create_dir(&sock_dir)
            .map_err(|e| HarnessError::io(format!("create {}", sock_dir.display()), e))?;
        run_as.chown(&sock_dir)?;
        // From here on, dropping `cluster` (on error or panic) tears down what was started.
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            bin,
            run_as,
            user: self.user.clone(),
            password: self.password.clone(),
            sock_dir,
            primary: 0,
            dir,
        };
        self.start_primary(&mut cluster)?;
        self.add_standbys(&mut cluster)?;
        tracing::debug!(
            nodes = cluster.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "local cluster built"
        );
        Ok(cluster)
    }

    fn start_primary(&self, c: &mut LocalCluster) -> Result<()> {
        let node = PgNode::new(&format!("{}0", self.prefix), c.dir())?;
        template::create_data_dir(&c.bin, c.run_as, &self.user, &node.data_dir)?;
        conf::append_settings(&node.data_dir, &self.conf)?;
        conf::write_hba(&node.data_dir, self.hba, &self.hba_lines)?;
        c.nodes.push(node);
        c.nodes[0].spawn(&c.bin, c.run_as, &c.sock_dir)?;
        // The password is not set yet: the first contact goes through the trusted socket.
        c.wait_ready_via(0, READY_TIMEOUT, Via::Socket)?;
        let sql = format!(
            "SET password_encryption = {};\nALTER ROLE {} PASSWORD {};",
            sql_literal(self.hba.storage().setting()),
            sql_ident(&self.user),
            sql_literal(&self.password)
        );
        c.psql_secret(0, &sql, Via::Socket)?;
        c.wait_ready(0, READY_TIMEOUT)
    }

    fn add_standbys(&self, c: &mut LocalCluster) -> Result<()> {
        let first = c.nodes.len();
        for k in 0..self.standbys {
            let node = PgNode::new(&format!("{}{}", self.prefix, first + k), c.dir())?;
            c.nodes.push(node);
        }
        let standbys: Vec<usize> = (first..c.nodes.len()).collect();
        if standbys.is_empty() {
            return Ok(());
        }
        // Slots are created up front with WAL reserved: with `pg_basebackup -C` each backup
        // creates its slot only after its BASE_BACKUP began, and a concurrent backup's
        // checkpoint may recycle the WAL segment it still needs.
        let slots: Vec<String> = standbys
            .iter()
            .map(|&i| {
                format!(
                    "SELECT pg_create_physical_replication_slot({}, true);",
                    sql_literal(&slot_name(&c.nodes[i].name))
                )
            })
            .collect();
        c.psql(c.primary, "postgres", &slots.join("\n"))?;
        // Base backups run in parallel: each mostly waits on the primary's checkpoint and I/O.
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let c: &LocalCluster = c;
            let handles: Vec<_> = standbys
                .iter()
                .map(|&i| s.spawn(move || self.base_backup(c, i)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(HarnessError::Invalid("base backup thread panicked".into()))
                    })
                })
                .collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        for &i in &standbys {
            c.nodes[i].spawn(&c.bin, c.run_as, &c.sock_dir)?;
        }
        for &i in &standbys {
            c.wait_ready(i, READY_TIMEOUT)?;
            c.wait_streaming(i, READY_TIMEOUT)?;
        }
        Ok(())
    }

    /// pg_basebackup of the primary into node `i`'s data dir, with its own replication slot.
    fn base_backup(&self, c: &LocalCluster, i: usize) -> Result<()> {
        let primary = &c.nodes[c.primary];
        let node = &c.nodes[i];
        let slot = slot_name(&node.name);
        let conn = format!(
            "host={} port={} user={} application_name={}",
            primary.host,
            primary.port,
            conf::conninfo_value(&self.user),
            conf::conninfo_value(&node.name)
        );
        let mut cmd = c.run_as.command(&c.bin.path("pg_basebackup"), c.dir());
        cmd.arg("-D")
            .arg(&node.data_dir)
            .args([
                "-R",
                "-X",
                "stream",
                "-S",
                &slot,
                "-c",
                "fast",
                "--no-sync",
                "-d",
                &conn,
            ])
            .env("PGPASSWORD", &self.password);
        run(cmd, None, BASEBACKUP_TIMEOUT, Some(&primary.log))?;
        // -R records what libpq used (PostgreSQL 15 includes a PGPASSWORD password; that is
        // not guaranteed): write the standby settings ourselves, password, slot and
        // application_name included, so the standby reconnects after any restart.
        conf::write_standby_conf(
            &node.data_dir,
            primary.port,
            &self.user,
            &self.password,
            &node.name,
            &slot,
        )
    }
}

/// Replication slot name for a node: lower-case letters, digits and underscores.
fn slot_name(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A temp base short enough for Unix socket paths (at most 107 bytes).
fn short_tmp() -> PathBuf {
    let t = std::env::temp_dir();
    if t.as_os_str().len() <= 40 {
        t
    } else {
        Path::new("/tmp").to_path_buf()
    }
}
