//! The accept loops: `proxy.listen`, and the VIP while this node holds it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{session, Shared};
use crate::watchdog::WatchdogState;

/// Accepts clients until `stop`; each gets a session task. A client over `max_clients`
/// still gets a session task, which answers `FATAL 53300` once it has authenticated.
pub(super) async fn accept_loop(socket: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
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
                    let task = tokio::spawn(accept_loop(socket, shared.clone(), stop.clone()));
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
