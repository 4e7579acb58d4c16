//! One PostgreSQL server of a local cluster: its postmaster process and its lifecycle.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::bin::PgBin;
use super::error::{HarnessError, LogTail, Result};
use super::process::{self, RunAs};

/// How often readiness and state are polled.
pub(crate) const POLL: Duration = Duration::from_millis(20);
const START_ATTEMPTS: usize = 5;

/// One server of a [`super::LocalCluster`].
#[derive(Debug)]
pub struct PgNode {
    /// Node name, e.g. "pg0".
    pub name: String,
    /// Always "127.0.0.1".
    pub host: String,
    /// TCP port (may change if it was taken while the node was down).
    pub port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) child: Option<Child>,
    pub(crate) paused: bool,
}

impl PgNode {
    pub(crate) fn new(name: &str, root: &Path) -> Result<PgNode> {
        Ok(PgNode {
            name: name.to_string(),
            host: "127.0.0.1".into(),
            port: free_port()?,
            data_dir: root.join(name),
            log: root.join(format!("{name}.log")),
            child: None,
            paused: false,
        })
    }

    /// Pid of the running postmaster, if this node is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn log_tail(&self) -> LogTail {
        LogTail::of(&self.log)
    }

    /// Starts the postmaster; on "address already in use" picks another port and retries.
    /// Returns once the server process is up (not yet ready: see `wait_ready`).
    pub(crate) fn spawn(&mut self, bin: &PgBin, run_as: RunAs, sock_dir: &Path) -> Result<()> {
        if self.child.is_some() {
            return Err(HarnessError::Invalid(format!(
                "{} is already running",
                self.name
            )));
        }
        for attempt in 1..=START_ATTEMPTS {
            let offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
            let log = File::options()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| HarnessError::io(format!("open {}", self.log.display()), e))?;
            let log2 = log
                .try_clone()
                .map_err(|e| HarnessError::io("dup log file", e))?;
            let cwd = self.data_dir.parent().unwrap_or(Path::new("/"));
            let mut cmd = run_as.command(&bin.path("postgres"), cwd);
            cmd.arg("-D")
                .arg(&self.data_dir)
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-k")
                .arg(sock_dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            let shown = process::describe(&cmd);
            let child = process::spawn_server(cmd)
                .map_err(|e| HarnessError::io(format!("spawn {shown}"), e))?;
            self.child = Some(child);
            match self.wait_listening(Duration::from_secs(30), offset) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < START_ATTEMPTS && self.port_taken(offset) => {
                    tracing::debug!(node = %self.name, port = self.port, error = %e, "port taken, retrying");
                    self.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(HarnessError::Invalid(format!(
            "{}: could not start",
            self.name
        )))
    }

    fn port_taken(&self, log_offset: u64) -> bool {
        LogTail::read(&self.log, log_offset)
            .to_string()
            .contains("Address already in use")
    }

    /// Waits until the postmaster accepts TCP connections (or exits).
    fn wait_listening(&mut self, timeout: Duration, log_offset: u64) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive(log_offset)?;
            if TcpStream::connect((self.host.as_str(), self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    node: self.name.clone(),
                    what: "the server to listen".into(),
                    timeout,
                    detail: String::new(),
                    log: LogTail::read(&self.log, log_offset),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Errors if the postmaster is not running (reaping it if it exited).
    pub(crate) fn check_alive(&mut self, log_offset: u64) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(HarnessError::Invalid(format!(
                "{} is not running",
                self.name
            )));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(HarnessError::ServerExited {
                    node: self.name.clone(),
                    status: status.to_string(),
                    log: LogTail::read(&self.log, log_offset),
                })
            }
            Err(e) => Err(HarnessError::io(format!("wait for {}", self.name), e)),
        }
    }

    /// Sends `sig` to the postmaster and waits for it and all its children to exit.
    pub(crate) fn shutdown(&mut self, sig: Signal, timeout: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let mut family = process::descendants(pid);
        if self.paused {
            for &p in &family {
                process::signal(p, Signal::SIGCONT);
            }
            process::signal(pid, Signal::SIGCONT);
            self.paused = false;
        }
        process::signal(pid, sig);
        let deadline = Instant::now() + timeout;
        let exited = loop {
            match child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() >= deadline => break false,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(HarnessError::io(format!("wait for {}", self.name), e)),
            }
        };
        if !exited {
            family.extend(process::descendants(pid));
            let _ = child.kill();
            let _ = child.wait();
            for &p in &family {
                process::signal(p, Signal::SIGKILL);
            }
        }
        // After SIGKILL of the postmaster its children notice and exit on their own; a new
        // postmaster cannot start while they still hold the shared memory.
        if !process::wait_gone(&family, timeout) {
            for &p in &family {
                process::signal(p, Signal::SIGKILL);
            }
            if !process::wait_gone(&family, Duration::from_secs(5)) {
                return Err(HarnessError::Invalid(format!(
                    "{}: server processes {family:?} did not exit",
                    self.name
                )));
            }
        }
        if exited {
            Ok(())
        } else {
            Err(HarnessError::Timeout {
                node: self.name.clone(),
                what: format!("shutdown on {sig}; killed it"),
                timeout,
                detail: String::new(),
                log: self.log_tail(),
            })
        }
    }

    /// SIGSTOP (`stop == true`) or SIGCONT the postmaster and all its children.
    pub(crate) fn freeze(&mut self, stop: bool) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Err(HarnessError::Invalid(format!(
                "{} is not running",
                self.name
            )));
        };
        if stop {
            // Postmaster first, so it forks nothing new while its children are stopped.
            process::signal(pid, Signal::SIGSTOP);
            for p in process::descendants(pid) {
                process::signal(p, Signal::SIGSTOP);
            }
        } else {
            for p in process::descendants(pid) {
                process::signal(p, Signal::SIGCONT);
            }
            process::signal(pid, Signal::SIGCONT);
        }
        self.paused = stop;
        Ok(())
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| HarnessError::io("pick a free port on 127.0.0.1", e))
}
