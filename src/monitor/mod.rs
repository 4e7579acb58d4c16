//! Watches every backend and publishes the cluster view the proxy routes by.
//!
//! One task per backend keeps a tokio-postgres connection and asks
//! `pg_is_in_recovery()` and the WAL positions every `health_check.interval`; a failed
//! check closes that connection and the next check reconnects. Each result is folded into one immutable
//! [`ClusterView`] published on a `watch` channel, so readers never lock.

pub mod catalog;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a backend is, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Primary,
    Standby,
}

/// WAL positions as of a node's last successful check (bytes since the start of WAL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalPosition {
    /// `pg_current_wal_lsn()`, on a primary.
    pub current: Option<u64>,
    /// `pg_last_wal_receive_lsn()`, on a standby.
    pub receive: Option<u64>,
    /// `pg_last_wal_replay_lsn()`, on a standby.
    pub replay: Option<u64>,
    /// `pg_last_xact_replay_timestamp()`, on a standby.
    pub last_replayed_commit: Option<SystemTime>,
    /// How far replay is behind in time, on a standby.
    pub replay_lag_time: Option<Duration>,
}

/// One backend's state in the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub addr: SocketAddr,
    pub up: bool,
    pub role: Role,
    pub wal: WalPosition,
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

    /// How many bytes of the primary's WAL standby `i` has not replayed yet, as of the
    /// last checks of both.
    pub fn replay_lag_bytes(&self, i: usize) -> Option<u64> {
        let primary = self.nodes.get(self.primary()?)?.wal.current?;
        let node = self.nodes.get(i)?;
        if !node.up || node.role != Role::Standby {
            return None;
        }
        Some(primary.saturating_sub(node.wal.replay?))
    }
}

impl ClusterView {
    /// How far standby `i`'s replay is behind in time, as of its last check.
    pub fn replay_lag_time(&self, i: usize) -> Option<Duration> {
        let node = self.nodes.get(i)?;
        if !node.up || node.role != Role::Standby {
            return None;
        }
        node.wal.replay_lag_time
    }
}

/// Parses an LSN as PostgreSQL prints it ("16/B374D848").
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from(u32::from_str_radix(hi, 16).ok()?) << 32) | u64::from(u32::from_str_radix(lo, 16).ok()?))
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
            .map(|(name, _, _, addr)| NodeState {
                name: name.clone(),
                addr: *addr,
                up: false,
                role: Role::Unknown,
                wal: WalPosition::default(),
            })
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
            Ok(Ok(sample)) => Ok(sample),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?} (health_check.timeout)", settings.timeout)),
        };
        let (up, role, wal) = match outcome {
            Ok((role, wal)) => {
                last_error = None;
                (true, role, wal)
            }
            Err(e) => {
                client = None;
                // Say why once per distinct reason, not every interval.
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(node = %name, error = %e, "health check failed");
                    last_error = Some(e);
                }
                (false, Role::Unknown, WalPosition::default())
            }
        };
        tx.send_if_modified(|view| {
            let node = &view.nodes[index];
            if node.up == up && node.role == role && node.wal == wal {
                return false;
            }
            if node.up != up || node.role != role {
                tracing::info!(node = %name, up, role = ?role, "backend state changed");
            }
            let mut next = (**view).clone();
            next.nodes[index].up = up;
            next.nodes[index].role = role;
            next.nodes[index].wal = wal;
            *view = Arc::new(next);
            true
        });
    }
}

/// The check query: role and WAL positions in one round trip. `pg_current_wal_lsn()`
/// fails during recovery, so it is only evaluated on a primary.
const CHECK_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
     extract(epoch FROM pg_last_xact_replay_timestamp())::float8";

async fn check_once(
    client: &mut Option<tokio_postgres::Client>,
    host: &str,
    port: u16,
    settings: &CheckSettings,
) -> Result<(Role, WalPosition), tokio_postgres::Error> {
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
    let row = c.query_one(CHECK_QUERY, &[]).await?;
    let in_recovery: bool = row.try_get(0)?;
    let lsn = |i: usize| -> Result<Option<u64>, tokio_postgres::Error> {
        Ok(row.try_get::<_, Option<String>>(i)?.as_deref().and_then(parse_lsn))
    };
    let wal = WalPosition {
        current: lsn(1)?,
        receive: lsn(2)?,
        replay: lsn(3)?,
        last_replayed_commit: row
            .try_get::<_, Option<f64>>(4)?
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s)),
        replay_lag_time: None,
    };
    Ok((if in_recovery { Role::Standby } else { Role::Primary }, wal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parsing() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        for bad in ["", "16", "/1", "1/", "x/1", "1/2/3", "100000000/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
    }
}
