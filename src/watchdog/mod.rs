//! The watchdog: membership of a cluster of pgvigil nodes, heartbeats, quorum, leader
//! election with terms, and the virtual IP. docs/watchdog.md explains it for operators.
//!
//! One task per node ([`runner`]) owns a UDP socket on `watchdog.listen`, the election
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

use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
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
    task: Mutex<Option<JoinHandle<()>>>,
}

/// This start's id: the wall clock in µs, so a restart has a greater one.
fn boot_id() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64).max(1)
}

impl Watchdog {
    /// Binds the heartbeat socket, removes a VIP left by an earlier run, and starts the
    /// loop. Errors name the setting at fault.
    pub async fn start(config: &WatchdogConfig, base_dir: &Path, membership: Membership) -> anyhow::Result<Watchdog> {
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
        let vip = match (&config.vip, membership) {
            (Some(v), Membership::Node) => Some(vip::VipHolder::open(v, config.dead_after.get(), events_tx).await?),
            _ => None,
        };
        let mut machine = Election::new(settings, Instant::now());
        let mut vip = vip;
        if let Some(v) = &mut vip {
            if let Err(e) = v.remove_leftover().await {
                let permanent = e.is_permission();
                tracing::error!(
                    vip = %v.address(),
                    error = %e,
                    "watchdog: cannot manage the VIP; this node votes but will not lead"
                );
                machine.vip_failed(Instant::now(), permanent);
            }
        }
        let (state_tx, state_rx) = watch::channel(machine.snapshot(Instant::now(), false));
        let (digest_tx, digest_rx) = watch::channel([0u8; 32]);
        let stop = CancellationToken::new();
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
            digest: digest_rx,
            stop: stop.clone(),
            drop_logged: HashMap::new(),
        };
        let task = tokio::spawn(runner.run());
        Ok(Watchdog { state: state_rx, digest: digest_tx, stop, task: Mutex::new(Some(task)) })
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

    /// Releases the VIP, tells the peers this node leaves, and stops.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

fn warn_if_key_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "watchdog.auth_key_file is readable by other users; chmod 600 it");
        }
    }
}
