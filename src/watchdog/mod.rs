//! The watchdog: membership of a cluster of pgvigil nodes, heartbeats, quorum, leader
//! election with terms, and the virtual IP. docs/watchdog.md explains it for operators.
//!
//! One task per node ([`runner`]), on a thread and runtime of its own, owns a UDP socket on `watchdog.listen`, the election
//! state machine ([`election`], no I/O: heartbeats and the clock in, actions out) and the
//! VIP ([`vip`]). It wakes on a datagram, on the machine's next deadline (next heartbeat,
//! lease end, vote expiry), on a VIP outcome, on a new digest or on shutdown; then it
//! polls the machine and carries out its actions in order: remove the VIP (awaited),
//! send a heartbeat to every peer, start adding the VIP (a task: a slow `up_command`
//! must not stall heartbeats), announce. Every wake ends with a new [`WatchdogState`]
//! on a `watch` channel, which is all the rest of pgvigil sees.
//!
//! Heartbeats are the only messages: each carries the sender's role, term, vote and
//! acknowledgements, so a member learns everything from the last heartbeat of each peer
//! and a lost datagram costs nothing but time. See [`election`] for why two leases never
//! overlap, and [`packet`] for the wire format and authentication.

pub mod arp;
pub mod config;
pub mod election;
pub mod packet;
mod runner;
pub mod state;
pub mod vip;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio_util::sync::CancellationToken;

use config::{parse_socket_addr, QuorumMode, WatchdogConfig};
use election::{Election, Settings};
pub use packet::Role;
pub use state::{DropCounts, MemberState, WatchdogState};

/// What this process is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// A pgvigil node: may lead and hold the VIP.
    Node,
    /// `pgvigil witness`: votes only.
    Witness,
}

/// A running watchdog.
pub struct Watchdog {
    state: watch::Receiver<WatchdogState>,
    digest: watch::Sender<[u8; 32]>,
    stop: CancellationToken,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// This start's id: the wall clock in µs, so a restart has a greater one.
fn boot_id() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64).max(1)
}

impl Watchdog {
    /// Starts the watchdog on a thread of its own (a busy proxy cannot delay heartbeats):
    /// binds the heartbeat socket, removes a VIP left by an earlier run, and runs the loop.
    /// Returns once it is running; errors name the setting at fault.
    pub async fn start(config: &WatchdogConfig, base_dir: &Path, membership: Membership) -> anyhow::Result<Watchdog> {
        let (config, base_dir) = (config.clone(), base_dir.to_path_buf());
        let (ready_tx, ready_rx) = oneshot::channel();
        let (digest_tx, digest_rx) = watch::channel([0u8; 32]);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::Builder::new().name("pgvigil-watchdog".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("watchdog: cannot start its runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match prepare(&config, &base_dir, membership, digest_rx, token).await {
                    Ok((runner, state)) => {
                        let _ = ready_tx.send(Ok(state));
                        runner.run().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })?;
        let state = match ready_rx.await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => anyhow::bail!("watchdog: its thread ended while starting"),
        };
        Ok(Watchdog { state, digest: digest_tx, stop, thread: Mutex::new(Some(thread)) })
    }

    /// The state, updated on every change.
    pub fn subscribe(&self) -> watch::Receiver<WatchdogState> {
        self.state.clone()
    }

    /// A copy of the current state.
    pub fn state(&self) -> WatchdogState {
        self.state.borrow().clone()
    }

    /// This node leads with a lease from a quorum that has not run out (what `GET /leader`
    /// answers).
    pub fn is_leader_with_quorum(&self) -> bool {
        self.state.borrow().is_leader_with_quorum(Instant::now())
    }

    /// Sets the digest of cluster state carried by the next heartbeats.
    pub fn set_digest(&self, digest: [u8; 32]) {
        self.digest.send_replace(digest);
    }

    /// Releases the VIP, tells the peers this node leaves, waits for the hooks, and stops.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let thread = self.thread.lock().await.take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Without `shutdown`, the loop still releases the VIP if the process lives on.
        self.stop.cancel();
    }
}

/// Everything that can fail at start, on the watchdog's own runtime.
async fn prepare(
    config: &WatchdogConfig,
    base_dir: &Path,
    membership: Membership,
    digest: watch::Receiver<[u8; 32]>,
    stop: CancellationToken,
) -> anyhow::Result<(runner::Runner, watch::Receiver<WatchdogState>)> {
    let key = config.load_key(base_dir)?;
    warn_if_key_readable_by_others(&config.key_path(base_dir));
    let members = config.members();
    if config.quorum == QuorumMode::Half {
        tracing::warn!(
            members,
            quorum = QuorumMode::Half.size(members),
            "watchdog.quorum = \"half\": a node that hears half of the members leads; while two halves cannot hear \
             each other, both lead and both hold the VIP (split brain). A witness (`pgvigil witness`) avoids this"
        );
    }
    let listen = parse_socket_addr(&config.listen).map_err(|e| anyhow::anyhow!("watchdog.listen: {e}"))?;
    let socket = tokio::net::UdpSocket::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("watchdog.listen: cannot listen on {listen}: {e}"))?;
    let mut peers = Vec::new();
    for (i, p) in config.peers.iter().enumerate() {
        peers.push(parse_socket_addr(&p.address).map_err(|e| anyhow::anyhow!("watchdog.peers[{i}].address: {e}"))?);
    }
    let mut names: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
    names.push(config.name.as_str());
    let settings = Settings {
        name: config.name.clone(),
        priority: config.priority,
        witness: membership == Membership::Witness,
        peers: config.peers.iter().map(|p| p.name.clone()).collect(),
        quorum: config.quorum.size(members),
        heartbeat_interval: config.heartbeat_interval.get(),
        dead_after: config.dead_after.get(),
        cluster: packet::cluster_fingerprint(&names, config.quorum),
        boot: boot_id(),
    };
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut vip = match (&config.vip, membership) {
        (Some(v), Membership::Node) => Some(vip::VipHolder::open(v, config.dead_after.get(), events_tx).await?),
        _ => None,
    };
    let mut machine = Election::new(settings, Instant::now());
    if let Some(v) = &mut vip {
        if let Err(e) = v.remove_leftover().await {
            tracing::error!(vip = %v.address(), error = %e, "watchdog: cannot manage the VIP; this node votes but will not lead");
            machine.vip_failed(Instant::now(), e.is_permission());
        }
    }
    let (state_tx, state_rx) = watch::channel(machine.snapshot(Instant::now(), false));
    tracing::info!(
        name = %config.name,
        listen = %listen,
        members,
        quorum = config.quorum.size(members),
        role = if membership == Membership::Witness { "witness" } else { "node" },
        vip = ?config.vip.as_ref().map(|v| v.address.as_str()),
        "watchdog started"
    );
    let runner = runner::Runner {
        machine,
        socket,
        peers,
        key,
        vip,
        vip_events: events_rx,
        state: state_tx,
        digest,
        stop,
        drop_logged: HashMap::new(),
    };
    Ok((runner, state_rx))
}

fn warn_if_key_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "watchdog.auth_key_file is readable by other users; chmod 600 it");
        }
    }
}
