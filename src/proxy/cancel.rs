//! Cancel keys: each client gets pgvigil's own (pid, secret); a CancelRequest carrying
//! them is forwarded to the server connection the client is using at that moment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::protocol::startup::write_cancel;
use crate::tls::backend::BackendTls;

/// Where a cancel for a client must go: its current server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    pub backend: usize,
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

struct Entry {
    secret: i32,
    target: Option<CancelTarget>,
    /// Every server connection the client holds, as (backend, server pid).
    servers: Vec<(usize, i32)>,
}

#[derive(Default)]
struct Maps {
    clients: HashMap<i32, Entry>,
    /// (backend, server pid) → the pid pgvigil gave the client using that connection.
    by_server: HashMap<(usize, i32), i32>,
}

/// All live sessions' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    maps: Mutex<Maps>,
}

/// A session's registration; unregisters on drop.
pub struct CancelKey<'a> {
    registry: &'a CancelRegistry,
    pub pid: i32,
    pub secret: i32,
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives a new session a unique positive pid and a random secret.
    pub fn register(&self) -> CancelKey<'_> {
        let mut maps = self.lock();
        loop {
            let pid = rand::random::<i32>() & 0x3fff_ffff;
            if pid == 0 || maps.clients.contains_key(&pid) {
                continue;
            }
            let secret = rand::random::<i32>();
            maps.clients.insert(pid, Entry { secret, target: None, servers: Vec::new() });
            return CancelKey { registry: self, pid, secret };
        }
    }

    /// The client pid behind a server connection, for NotificationResponse rewriting.
    pub fn client_pid_for(&self, backend: usize, server_pid: i32) -> Option<i32> {
        self.lock().by_server.get(&(backend, server_pid)).copied()
    }

    fn target(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let maps = self.lock();
        let entry = maps.clients.get(&pid)?;
        if entry.secret != secret {
            return None;
        }
        entry.target
    }

    /// Forwards a client's CancelRequest to its server connection, if the key matches,
    /// with TLS as for server connections (the key is a secret). Returns whether a cancel
    /// was sent.
    pub async fn cancel(&self, pid: i32, secret: i32, timeout: Duration, tls: &BackendTls) -> bool {
        let Some(target) = self.target(pid, secret) else {
            tracing::debug!(pid, "cancel request with an unknown key ignored");
            return false;
        };
        let send = async {
            let tcp = TcpStream::connect(target.addr).await?;
            let mut stream = tls.negotiate(target.backend, tcp).await.map_err(std::io::Error::other)?;
            let mut out = BytesMut::with_capacity(16);
            write_cancel(&mut out, target.pid, target.secret);
            stream.write_all(&out).await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(Ok(())) => {
                tracing::debug!(pid, backend = target.backend, server_pid = target.pid, "cancel forwarded");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(pid, error = %e, "could not forward cancel request");
                false
            }
            Err(_) => {
                tracing::warn!(pid, "forwarding cancel request timed out");
                false
            }
        }
    }
}

impl CancelKey<'_> {
    /// Points this client's cancels at the server connection running its request (or at none).
    pub fn set_target(&self, target: Option<CancelTarget>) {
        if let Some(e) = self.registry.lock().clients.get_mut(&self.pid) {
            e.target = target;
        }
    }

    /// Records a server connection the client holds, so notifications it sends name
    /// this client's pid.
    pub fn add_server(&self, backend: usize, server_pid: i32) {
        let mut maps = self.registry.lock();
        maps.by_server.insert((backend, server_pid), self.pid);
        if let Some(e) = maps.clients.get_mut(&self.pid) {
            e.servers.push((backend, server_pid));
        }
    }

    /// Forgets a server connection the client no longer holds.
    pub fn remove_server(&self, backend: usize, server_pid: i32) {
        let mut maps = self.registry.lock();
        if maps.by_server.get(&(backend, server_pid)) == Some(&self.pid) {
            maps.by_server.remove(&(backend, server_pid));
        }
        if let Some(e) = maps.clients.get_mut(&self.pid) {
            e.servers.retain(|s| *s != (backend, server_pid));
            if e.target.is_some_and(|t| (t.backend, t.pid) == (backend, server_pid)) {
                e.target = None;
            }
        }
    }
}

impl Drop for CancelKey<'_> {
    fn drop(&mut self) {
        let mut maps = self.registry.lock();
        if let Some(e) = maps.clients.remove(&self.pid) {
            for s in e.servers {
                if maps.by_server.get(&s) == Some(&self.pid) {
                    maps.by_server.remove(&s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_unregister() {
        let r = CancelRegistry::default();
        let a = r.register();
        let b = r.register();
        assert_ne!(a.pid, b.pid);
        assert!(a.pid > 0);
        let t = CancelTarget { backend: 0, addr: "127.0.0.1:1".parse().unwrap(), pid: 77, secret: 5 };
        a.set_target(Some(t));
        a.add_server(0, 77);
        assert_eq!(r.target(a.pid, a.secret), Some(t));
        assert_eq!(r.target(a.pid, a.secret.wrapping_add(1)), None);
        assert_eq!(r.client_pid_for(0, 77), Some(a.pid));
        let pid = a.pid;
        drop(a);
        assert_eq!(r.client_pid_for(0, 77), None);
        assert_eq!(r.target(pid, 0), None);
    }
}
