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

use tokio::sync::{watch, Notify};
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
    /// On a standby, by its own clock: zero when everything received is replayed, else
    /// the age of the last replayed commit (`None` when it has replayed none). `None`
    /// on a primary.
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
    /// When `up` or `role` last changed; the monitor's start until the first change.
    pub last_change: SystemTime,
    /// Set by failover: nothing is routed to this node, whatever it says it is.
    pub fenced: bool,
    /// Replication facts of the last successful check.
    pub repl: ReplicationInfo,
}

/// What a check learns about replication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationInfo {
    /// `timeline_id` of `pg_control_checkpoint()`.
    pub timeline: Option<u32>,
    /// On a primary: `synchronous_standby_names`, when not empty.
    pub synchronous_standby_names: Option<String>,
    /// On a primary: `pg_stat_replication`.
    pub peers: Vec<ReplicationPeer>,
    /// On a standby: the application name its WAL receiver uses (primary_conninfo's
    /// `application_name`, else `cluster_name`, else "walreceiver").
    pub replication_name: Option<String>,
    /// On a standby: `pg_stat_wal_receiver` (sender host, sender port, status).
    pub upstream: Option<Upstream>,
}

/// One row of a primary's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationPeer {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
}

/// A standby's WAL receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub status: String,
}

/// An immutable snapshot of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<NodeState>,
}

impl ClusterView {
    /// The one writable backend, if exactly one is up and not in recovery.
    pub fn primary(&self) -> Option<usize> {
        let mut writable = self.nodes.iter().enumerate().filter(|(_, n)| n.up && n.role == Role::Primary && !n.fenced);
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

    /// How far behind in time standby `i` replays, as it measured at its last check
    /// (see [`WalPosition::replay_lag_time`]); `None` unless it is an up standby.
    pub fn replay_lag_time(&self, i: usize) -> Option<Duration> {
        let node = self.nodes.get(i)?;
        if !node.up || node.role != Role::Standby {
            return None;
        }
        node.wal.replay_lag_time
    }

    /// The view with node `index`'s check result applied, or `None` when nothing
    /// changed. `now` becomes its `last_change` when `up` or `role` changed.
    fn with_check(&self, index: usize, up: bool, role: Role, wal: WalPosition, now: SystemTime) -> Option<Self> {
        let node = self.nodes.get(index)?;
        if node.up == up && node.role == role && node.wal == wal {
            return None;
        }
        let mut next = self.clone();
        let node = &mut next.nodes[index];
        if node.up != up || node.role != role {
            node.last_change = now;
        }
        node.up = up;
        node.role = role;
        node.wal = wal;
        Some(next)
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

/// The running monitor: the view's sender (failover also writes it) and a way to ask
/// for an immediate check of one backend.
pub struct Monitor {
    pub view: Arc<watch::Sender<Arc<ClusterView>>>,
    pokes: Vec<Arc<Notify>>,
}

impl Monitor {
    /// Asks for a check of backend `i` now, out of its interval (a session saw its
    /// connection break). Never causes a failover by itself: the usual debounce applies.
    pub fn poke(&self, i: usize) {
        if let Some(p) = self.pokes.get(i) {
            p.notify_one();
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }
}

/// Starts one checking task per backend.
pub fn spawn(nodes: Vec<(String, String, u16, SocketAddr)>, settings: CheckSettings, stop: CancellationToken) -> Monitor {
    let started = SystemTime::now();
    let view = ClusterView {
        nodes: nodes
            .iter()
            .map(|(name, _, _, addr)| NodeState {
                name: name.clone(),
                addr: *addr,
                up: false,
                role: Role::Unknown,
                wal: WalPosition::default(),
                last_change: started,
                fenced: false,
                repl: ReplicationInfo::default(),
            })
            .collect(),
    };
    let (tx, _) = watch::channel(Arc::new(view));
    let tx = Arc::new(tx);
    let mut pokes = Vec::new();
    for (i, (name, host, port, _)) in nodes.into_iter().enumerate() {
        let tx = tx.clone();
        let settings = settings.clone();
        let stop = stop.clone();
        let poke = Arc::new(Notify::new());
        pokes.push(poke.clone());
        tokio::spawn(async move { check_loop(i, name, host, port, settings, tx, poke, stop).await });
    }
    Monitor { view: tx, pokes }
}

async fn check_loop(
    index: usize,
    name: String,
    host: String,
    port: u16,
    settings: CheckSettings,
    tx: Arc<watch::Sender<Arc<ClusterView>>>,
    poke: Arc<Notify>,
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
            _ = poke.notified() => tick.reset(),
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
            let Some(next) = view.with_check(index, up, role, wal, SystemTime::now()) else { return false };
            let (before, after) = (&view.nodes[index], &next.nodes[index]);
            if before.up != after.up || before.role != after.role {
                tracing::info!(node = %name, up, role = ?role, "backend state changed");
            }
            *view = Arc::new(next);
            true
        });
    }
}

/// The check query: role, WAL positions and replay lag in one round trip.
/// `pg_current_wal_lsn()` fails during recovery, so it is only evaluated on a primary.
/// The lag is zero when replay has reached what was received (`>=`, not `=`: right after
/// a restart the receiver restarts at the start of a segment, behind replay), else the
/// age of the last replayed commit.
const CHECK_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
     extract(epoch FROM pg_last_xact_replay_timestamp())::float8, \
     (CASE WHEN NOT pg_is_in_recovery() THEN NULL \
           WHEN pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() THEN 0 \
           ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END)::float8";

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
        replay_lag_time: row.try_get::<_, Option<f64>>(5)?.map(lag_from_seconds),
    };
    Ok((if in_recovery { Role::Standby } else { Role::Primary }, wal))
}

/// Seconds of lag as the server computed them; a negative value (a commit stamped
/// after the check's `now()`) is no lag.
fn lag_from_seconds(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
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

    #[test]
    fn lag_seconds() {
        assert_eq!(lag_from_seconds(0.0), Duration::ZERO);
        assert_eq!(lag_from_seconds(1.5), Duration::from_millis(1500));
        assert_eq!(lag_from_seconds(-0.002), Duration::ZERO);
        assert_eq!(lag_from_seconds(f64::NAN), Duration::ZERO);
        assert_eq!(lag_from_seconds(f64::INFINITY), Duration::MAX);
        assert_eq!(lag_from_seconds(1e30), Duration::MAX);
    }

    fn view(started: SystemTime) -> ClusterView {
        let node = |name: &str, port: u16, role: Role, wal: WalPosition| NodeState {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            up: true,
            role,
            wal,
            last_change: started,
            fenced: false,
            repl: ReplicationInfo::default(),
        };
        let standby_wal = WalPosition {
            receive: Some(900),
            replay: Some(800),
            replay_lag_time: Some(Duration::from_secs(3)),
            ..WalPosition::default()
        };
        ClusterView {
            nodes: vec![
                node("a", 5432, Role::Primary, WalPosition { current: Some(1000), ..WalPosition::default() }),
                node("b", 5433, Role::Standby, standby_wal),
                node("c", 5434, Role::Standby, standby_wal),
            ],
        }
    }

    #[test]
    fn replay_lag_time_only_for_up_standbys() {
        let mut v = view(SystemTime::UNIX_EPOCH);
        assert_eq!(v.replay_lag_time(1), Some(Duration::from_secs(3)));
        assert_eq!(v.replay_lag_bytes(1), Some(200));
        assert_eq!(v.replay_lag_time(0), None);
        assert_eq!(v.replay_lag_time(9), None);
        v.nodes[2].up = false;
        assert_eq!(v.replay_lag_time(2), None);
    }

    #[test]
    fn last_change_moves_only_when_up_or_role_changes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let (t1, t2) = (t0 + Duration::from_secs(5), t0 + Duration::from_secs(9));
        let v = view(t0);
        let same = v.nodes[1].wal;
        assert_eq!(v.with_check(1, true, Role::Standby, same, t1), None, "nothing changed");

        let caught_up = WalPosition { replay: Some(900), replay_lag_time: Some(Duration::ZERO), ..same };
        let v1 = v.with_check(1, true, Role::Standby, caught_up, t1).unwrap_or_else(|| panic!("wal changed"));
        assert_eq!(v1.nodes[1].wal, caught_up);
        assert_eq!(v1.nodes[1].last_change, t0, "WAL progress is no status change");

        let v2 = v1.with_check(1, false, Role::Unknown, WalPosition::default(), t2).unwrap_or_else(|| panic!("down"));
        assert_eq!((v2.nodes[1].up, v2.nodes[1].role, v2.nodes[1].last_change), (false, Role::Unknown, t2));
        assert_eq!(v2.nodes[0].last_change, t0, "other nodes keep theirs");

        let v3 = v.with_check(2, true, Role::Primary, WalPosition::default(), t1).unwrap_or_else(|| panic!("promoted"));
        assert_eq!(v3.nodes[2].last_change, t1);
        assert_eq!(v.with_check(7, true, Role::Primary, same, t1), None, "no such node");
    }
}
