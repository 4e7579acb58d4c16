//! Running PostgreSQL programs: as which OS user, with which environment, with timeouts,
//! and the postmaster spawner thread that ties server lifetime to this process.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use super::error::{HarnessError, LogTail, Result};

/// The OS user the servers run as: `postgres` (or `nobody`) when we are root, else ourselves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub(crate) ids: Option<(u32, u32)>,
}

impl RunAs {
    pub(crate) fn detect() -> Result<RunAs> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(RunAs { ids: None });
        }
        for name in ["postgres", "nobody"] {
            if let Ok(Some(u)) = User::from_name(name) {
                return Ok(RunAs {
                    ids: Some((u.uid.as_raw(), u.gid.as_raw())),
                });
            }
        }
        Err(HarnessError::Invalid(
            "running as root, but neither user `postgres` nor `nobody` exists to run PostgreSQL"
                .into(),
        ))
    }

    /// Numeric uid the servers run as.
    pub(crate) fn uid(&self) -> u32 {
        self.ids
            .map(|(u, _)| u)
            .unwrap_or_else(|| nix::unistd::geteuid().as_raw())
    }

    /// Gives `path` to the server user (no-op when not root).
    pub(crate) fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| HarnessError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// A command for `prog` running as the server user, with a clean `PG*` environment.
    pub(crate) fn command(&self, prog: &Path, cwd: &Path) -> Command {
        let mut cmd = clean_command(prog);
        cmd.current_dir(cwd);
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

/// A command with every inherited `PG*` variable removed, so the caller's environment
/// (PGDATA, PGPORT, PGSERVICE, ...) cannot redirect it.
pub(crate) fn clean_command(prog: &Path) -> Command {
    let mut cmd = Command::new(prog);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LC_ALL", "C");
    cmd
}

/// Makes the child receive `sig` when the thread that forked it exits. Runs in the child
/// after std's setgid/setuid (which would clear the setting), right before exec.
pub(crate) fn die_with_parent(cmd: &mut Command, sig: libc::c_int) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
}

/// Display form of a command for error messages (program and arguments; never the environment,
/// which is where passwords go).
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with `stdin` fed in, killing it after `timeout`.
/// Returns stdout; failures carry the command, its stderr and `log`'s tail.
pub(crate) fn run(
    mut cmd: Command,
    stdin: Option<&str>,
    timeout: Duration,
    log: Option<&Path>,
) -> Result<String> {
    let shown = describe(&cmd);
    die_with_parent(&mut cmd, libc::SIGKILL);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| HarnessError::io(format!("spawn {shown}"), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A broken pipe shows up as the command's own error below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(HarnessError::io(format!("wait for {shown}"), e)),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let log = log.map(LogTail::of).unwrap_or_else(LogTail::none);
    match status {
        Some(st) if st.success() => Ok(stdout),
        Some(st) => Err(HarnessError::Command {
            command: shown,
            status: st.to_string(),
            stderr,
            log,
        }),
        None => Err(HarnessError::Command {
            command: shown,
            status: format!("killed after {timeout:?} timeout"),
            stderr,
            log,
        }),
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns a long-running server from one process-lifetime thread. `PR_SET_PDEATHSIG` fires
/// when the *forking thread* exits, so forking from a test or tokio blocking thread would
/// kill the server when that thread ends; this thread only ends with the process.
pub(crate) fn spawn_server(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster takes its children along.
    die_with_parent(&mut cmd, libc::SIGQUIT);
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let spawned = std::thread::Builder::new()
            .name("pgvigil-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no spawner thread; servers will be spawned inline");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = match tx.lock() {
        Ok(tx) => tx.send((cmd, reply_tx)),
        Err(poisoned) => poisoned.into_inner().send((cmd, reply_tx)),
    };
    match sent {
        Ok(()) => reply_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("spawner thread is gone"))),
        // The spawner thread never started: spawn here (server then dies with this thread).
        Err(mpsc::SendError((mut cmd, _))) => cmd.spawn(),
    }
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub(crate) fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// All descendants of `pid` (children first level first), from /proc.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let mut table = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = stat(p) {
                table.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &table {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// (ppid, state) of `pid` from /proc/pid/stat.
fn stat(pid: u32) -> Option<(u32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((_, st)) if st != 'Z' && st != 'X')
}

/// Waits until none of `pids` is alive; false on timeout.
pub(crate) fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pids.iter().any(|&p| alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
