//! Watches every backend and publishes the cluster view the proxy routes by.
//!
//! One task per backend keeps a tokio-postgres connection and asks
//! `pg_is_in_recovery()` every `health_check.interval`; a failed check closes that
//! connection and the next check reconnects. Each result is folded into one immutable
//! [`ClusterView`] published on a `watch` channel, so readers never lock.

pub mod catalog;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a backend is, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Primary,
    Standby,
}

/// One backend's state in the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub addr: SocketAddr,
    pub up: bool,
    pub role: Role,
}

/// An immutable snapshot of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<NodeState>,
}

impl ClusterView {
    /// The one writable backend, if exactly one is up and not in recovery.
    pub fn primary(&self) -> Option<usize> {
        let mut writable = self.nodes.iter().enumerate().filter(|(_, n)| n.up && n.role == Role::Primary);
        let first = writable.next()?.0;
        if writable.next().is_some() {
            return None;
        }
        Some(first)
    }
}

/// Connection settings for health checks.
#[derive(Clone)]
pub struct CheckSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

/// Starts one checking task per backend; returns the view receiver.
pub fn spawn(
    nodes: Vec<(String, String, u16, SocketAddr)>,
    settings: CheckSettings,
    stop: CancellationToken,
) -> watch::Receiver<Arc<ClusterView>> {
    let view = ClusterView {
        nodes: nodes
            .iter()
            .map(|(name, _, _, addr)| NodeState { name: name.clone(), addr: *addr, up: false, role: Role::Unknown })
            .collect(),
    };
    let (tx, rx) = watch::channel(Arc::new(view));
    let tx = Arc::new(tx);
    for (i, (name, host, port, _)) in nodes.into_iter().enumerate() {
        let tx = tx.clone();
        let settings = settings.clone();
        let stop = stop.clone();
        tokio::spawn(async move { check_loop(i, name, host, port, settings, tx, stop).await });
    }
    rx
}

async fn check_loop(
    index: usize,
    name: String,
    host: String,
    port: u16,
    settings: CheckSettings,
    tx: Arc<watch::Sender<Arc<ClusterView>>>,
    stop: CancellationToken,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::time::timeout(settings.timeout, check_once(&mut client, &host, port, &settings)).await;
        let outcome = match result {
            Ok(Ok(in_recovery)) => Ok(if in_recovery { Role::Standby } else { Role::Primary }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?} (health_check.timeout)", settings.timeout)),
        };
        let (up, role) = match outcome {
            Ok(role) => {
                last_error = None;
                (true, role)
            }
            Err(e) => {
                client = None;
                // Say why once per distinct reason, not every interval.
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(node = %name, error = %e, "health check failed");
                    last_error = Some(e);
                }
                (false, Role::Unknown)
            }
        };
        tx.send_if_modified(|view| {
            let node = &view.nodes[index];
            if node.up == up && node.role == role {
                return false;
            }
            tracing::info!(node = %name, up, role = ?role, "backend state changed");
            let mut next = (**view).clone();
            next.nodes[index].up = up;
            next.nodes[index].role = role;
            *view = Arc::new(next);
            true
        });
    }
}

async fn check_once(
    client: &mut Option<tokio_postgres::Client>,
    host: &str,
    port: u16,
    settings: &CheckSettings,
) -> Result<bool, tokio_postgres::Error> {
    if client.as_ref().is_some_and(|c| c.is_closed()) {
        *client = None;
    }
    let c = match client {
        Some(c) => c,
        None => {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(host).port(port).user(&settings.user).dbname(&settings.database);
            cfg.application_name("pgvigil health check").connect_timeout(settings.timeout);
            if let Some(p) = &settings.password {
                cfg.password(p);
            }
            let (c, connection) = cfg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client.insert(c)
        }
    };
    let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await?;
    row.try_get(0)
}
