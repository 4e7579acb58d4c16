//! The accept loops: `proxy.listen`, the Unix-domain socket in `proxy.unix_socket_dir`,
//! and the VIP while this node holds it.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::stream::{ClientStream, Peer};
use super::{session, Shared};
use crate::watchdog::WatchdogState;

/// A socket clients connect to.
pub(super) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(ClientStream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((ClientStream::tcp(s), Peer::Tcp(addr)))
            }
            Listener::Unix(l) => Ok((ClientStream::unix(l.accept().await?.0), Peer::Local)),
        }
    }
}

/// Accepts clients until `stop`; each gets a session task. A client over `max_clients`
/// still gets a session task, which answers `FATAL 53300` once it has authenticated.
pub(super) async fn accept_loop(socket: Listener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                shared.metrics.client_connections_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let s = shared.clone();
                shared.sessions.spawn(session::run(stream, peer, s));
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// Where clients sent to the VIP must be accepted besides `listen`: `VIP:port` when
/// `listen` names one address (a wildcard already covers the VIP).
pub(super) fn vip_listen_addr(config: &crate::config::Config, listen: SocketAddr) -> Option<SocketAddr> {
    let vip = config.watchdog.as_ref()?.vip.as_ref()?.vip_address().ok()?;
    let ip = std::net::IpAddr::V4(vip.ip);
    (!listen.ip().is_unspecified() && listen.ip() != ip).then_some(SocketAddr::new(ip, listen.port()))
}

/// The accept loop on the VIP, while it runs.
struct VipAccept {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl VipAccept {
    /// Stops accepting on the VIP; the sessions it accepted go on.
    async fn close(self, shared: &Shared) {
        shared.vip_listener.send_replace(None);
        self.stop.cancel();
        let _ = self.task.await;
        tracing::info!(listen = %self.addr, "proxy stopped listening on the VIP (its sessions go on)");
    }
}

/// While the watchdog says this node holds the VIP, accepts on `addr` too (the same
/// accept loop as `listen`); when it lets go, stops accepting there (established sessions
/// go on). A bind error is logged and tried again at the next change of the watchdog's
/// state. Ends when the proxy stops accepting or the watchdog stops.
pub(super) async fn follow_vip(addr: SocketAddr, mut state: watch::Receiver<WatchdogState>, shared: Arc<Shared>) {
    let mut open: Option<VipAccept> = None;
    // A bind error was logged since the VIP was acquired: the retries log at debug.
    let mut failed = false;
    loop {
        let held = state.borrow_and_update().vip_held;
        if held && open.is_none() {
            match TcpListener::bind(addr).await {
                Ok(socket) => {
                    tracing::info!(listen = %addr, "proxy listening on the VIP");
                    let stop = shared.stop_accepting.child_token();
                    let task = tokio::spawn(accept_loop(Listener::Tcp(socket), shared.clone(), stop.clone()));
                    open = Some(VipAccept { addr, stop, task });
                    shared.vip_listener.send_replace(Some(addr));
                }
                Err(e) if !failed => {
                    failed = true;
                    tracing::error!(listen = %addr, error = %e, "proxy: cannot listen on the VIP {addr}; clients sent to the VIP are refused (tried again when the watchdog's state changes)");
                }
                Err(e) => tracing::debug!(listen = %addr, error = %e, "proxy: still cannot listen on the VIP"),
            }
        } else if !held {
            failed = false;
            if let Some(a) = open.take() {
                a.close(&shared).await;
            }
        }
        tokio::select! {
            _ = shared.stop_accepting.cancelled() => break,
            changed = state.changed() => if changed.is_err() { break },
        }
    }
    if let Some(a) = open {
        a.close(&shared).await;
    }
}

/// The Unix-domain socket file pgvigil listens on; removed when dropped, unless another
/// process has put its own socket there since.
pub struct UnixSocketFile {
    pub path: PathBuf,
    /// Device and inode of the socket pgvigil made.
    id: (u64, u64),
}

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Listens on `dir/.s.PGSQL.<port>` with `mode`. A socket file left by a process that is
/// gone is replaced; one that a live server answers on is an error, as is anything else
/// at that path.
pub(super) fn bind_unix(dir: &Path, port: u16, mode: u32) -> anyhow::Result<(UnixListener, UnixSocketFile)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let fail = |why: String| anyhow::anyhow!("proxy.unix_socket_dir: cannot listen on {}: {why}", path.display());
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.file_type().is_socket() => return Err(fail("the path exists and is not a socket".into())),
        Ok(_) if std::os::unix::net::UnixStream::connect(&path).is_ok() => {
            return Err(fail("another server is listening on it".into()));
        }
        Ok(_) => std::fs::remove_file(&path).map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?,
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path).map_err(|e| fail(e.to_string()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|e| fail(format!("cannot set its permissions: {e}")))?;
    let m = std::fs::symlink_metadata(&path).map_err(|e| fail(e.to_string()))?;
    Ok((listener, UnixSocketFile { path, id: (m.dev(), m.ino()) }))
}
