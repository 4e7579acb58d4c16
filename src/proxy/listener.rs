//! The accept loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{session, Shared};

/// Accepts clients until `stop_accepting`; each gets a session task. A client over
/// `max_clients` still gets a session task, which answers `FATAL 53300` after its
/// startup packet, as PostgreSQL does.
pub(super) async fn accept_loop(socket: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop_accepting.cancelled() => return,
            a = socket.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                shared.metrics.client_connections_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let slot = shared.client_slots.clone().try_acquire_owned().ok();
                let s = shared.clone();
                shared.sessions.spawn(session::run(stream, peer, slot, s));
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shared.stop_accepting.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}
