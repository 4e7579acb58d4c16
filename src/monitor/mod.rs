//! Watches every backend and publishes the cluster view the proxy routes by.
//!
//! One task per backend ([`spawn`]) keeps a tokio-postgres connection and, in one round
//! trip, samples the role, the WAL positions and the replication facts (timeline; on a
//! primary `synchronous_standby_names` and `pg_stat_replication`; on a standby its WAL
//! receiver). A failed check closes that connection and the next one reconnects.
//! Each task wakes for three reasons only: its interval, a retry after a failure, or a
//! poke ([`Monitor::poke`], from a session whose connection to the backend broke). A
//! poke is a `Notify` permit, so any number of pokes during a check cause one more
//! check, not one each: sessions failing together do not stampede a backend.
//!
//! A state flips only after consecutive results (`debounce`): an up backend is marked
//! down after `1 + health_check.retries` failed checks in a row, `retry_delay` apart
//! rather than an interval apart. A down backend, or one not seen yet, is marked up by
//! its first successful check: a recovered backend, or a freshly started proxy, serves
//! at once, and a flapping backend is still only taken out after a full run of failures.
//!
//! Results are folded into one immutable [`ClusterView`] published on a `watch`
//! channel, so readers never lock. Failover writes the same channel (it sets `fenced`
//! and may set `role`): every update here starts from the current view and changes only
//! the fields a check owns. A node that goes down keeps the `wal` and `repl` of its last
//! successful check (only `up` and `role` change), so failover still knows a dead
//! primary's last LSN, peers and `synchronous_standby_names`.
//!
//! Per-backend counters for `SHOW POOL_HEALTH_CHECK_STATS` ([`Monitor::stats`]) sit
//! behind one small mutex each, taken once per check and once per read.

pub mod catalog;
mod check;
mod debounce;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use check::{PgProbe, Probe, Sample};
use debounce::{Debounce, Decision};
use stats::CheckStats;
pub use stats::CheckStatsSnapshot;

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
    /// As of its last successful check; kept while it is down.
    pub wal: WalPosition,
    /// When `up` or `role` last changed; the monitor's start until the first change.
    pub last_change: SystemTime,
    /// Set by failover: nothing is routed to this node, whatever it says it is.
    pub fenced: bool,
    /// Set by an operator (detach): nothing new is routed to this node until it is
    /// attached again.
    pub detached: bool,
    /// Replication facts of its last successful check; kept while it is down.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<NodeState>,
    /// Set during a switchover: a statement for the primary that is not part of a
    /// transaction already open there waits (as during a failover) until it is cleared.
    pub writes_paused: bool,
}

impl ClusterView {
    /// The one writable backend, if exactly one is up and not in recovery.
    pub fn primary(&self) -> Option<usize> {
        let mut writable = self.nodes.iter().enumerate().filter(|(_, n)| n.up && n.role == Role::Primary && !n.fenced && !n.detached);
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

    /// The view with node `index` up as `sample` saw it, or `None` when nothing changed.
    /// `now` becomes its `last_change` when `up` or `role` changed.
    fn with_up(&self, index: usize, sample: &Sample, now: SystemTime) -> Option<Self> {
        let node = self.nodes.get(index)?;
        if node.up && node.role == sample.role && node.wal == sample.wal && node.repl == sample.repl {
            return None;
        }
        let mut next = self.clone();
        let node = &mut next.nodes[index];
        if !node.up || node.role != sample.role {
            node.last_change = now;
        }
        node.up = true;
        node.role = sample.role;
        node.wal = sample.wal;
        node.repl = sample.repl.clone();
        Some(next)
    }

    /// The view with node `index` down and its role unknown, or `None` when it already
    /// was. Its `wal` and `repl` stay those of its last successful check.
    fn with_down(&self, index: usize, now: SystemTime) -> Option<Self> {
        let node = self.nodes.get(index)?;
        if !node.up && node.role == Role::Unknown {
            return None;
        }
        let mut next = self.clone();
        let node = &mut next.nodes[index];
        node.last_change = now;
        node.up = false;
        node.role = Role::Unknown;
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
    /// Failed checks of an up backend are retried this many times before it is marked down.
    pub retries: u32,
    /// Time between those retries.
    pub retry_delay: Duration,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// `[tls] backend_tls`.
    pub tls: Arc<crate::tls::backend::BackendTls>,
}

/// The running monitor: the view's sender (failover also writes it), a way to ask for
/// an immediate check of one backend, and each backend's check statistics.
pub struct Monitor {
    pub view: Arc<watch::Sender<Arc<ClusterView>>>,
    /// Recent events (this monitor's node up/down, failover's steps) for the admin API.
    pub events: Arc<crate::events::EventLog>,
    pokes: Vec<Arc<Notify>>,
    stats: Vec<Arc<CheckStats>>,
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

    /// Backend `i`'s health-check statistics so far.
    pub fn stats(&self, i: usize) -> Option<CheckStatsSnapshot> {
        self.stats.get(i).map(|s| s.snapshot())
    }
}

/// Starts one checking task per backend, each given as `(name, host, port, addr)`.
pub fn spawn(nodes: Vec<(String, String, u16, SocketAddr)>, settings: CheckSettings, stop: CancellationToken) -> Monitor {
    let mut named = Vec::with_capacity(nodes.len());
    let mut probes = Vec::with_capacity(nodes.len());
    for (index, (name, host, port, addr)) in nodes.into_iter().enumerate() {
        named.push((name, addr));
        probes.push(PgProbe::new(index, host, port, settings.clone()));
    }
    start(named, probes, &settings, stop)
}

/// [`spawn`] with any probe: one task per `(node, probe)`.
fn start<P: Probe>(nodes: Vec<(String, SocketAddr)>, probes: Vec<P>, settings: &CheckSettings, stop: CancellationToken) -> Monitor {
    let started = SystemTime::now();
    let events = Arc::new(crate::events::EventLog::default());
    let view = ClusterView {
        nodes: nodes
            .iter()
            .map(|(name, addr)| NodeState {
                name: name.clone(),
                addr: *addr,
                up: false,
                role: Role::Unknown,
                wal: WalPosition::default(),
                last_change: started,
                fenced: false,
                detached: false,
                repl: ReplicationInfo::default(),
            })
            .collect(),
        writes_paused: false,
    };
    let (tx, _) = watch::channel(Arc::new(view));
    let tx = Arc::new(tx);
    let (mut pokes, mut stats) = (Vec::new(), Vec::new());
    for (index, ((name, _), probe)) in nodes.into_iter().zip(probes).enumerate() {
        let checker = Checker {
            index,
            name,
            interval: settings.interval,
            retry_delay: settings.retry_delay,
            retries: settings.retries,
            view: tx.clone(),
            events: events.clone(),
            poke: Arc::new(Notify::new()),
            stats: Arc::new(CheckStats::default()),
            stop: stop.clone(),
        };
        pokes.push(checker.poke.clone());
        stats.push(checker.stats.clone());
        tokio::spawn(checker.run(probe));
    }
    Monitor { view: tx, events, pokes, stats }
}

/// One backend's checking task.
struct Checker {
    index: usize,
    name: String,
    interval: Duration,
    retry_delay: Duration,
    retries: u32,
    view: Arc<watch::Sender<Arc<ClusterView>>>,
    events: Arc<crate::events::EventLog>,
    poke: Arc<Notify>,
    stats: Arc<CheckStats>,
    stop: CancellationToken,
}

impl Checker {
    /// Checks every `interval`. While an up backend fails, `1 + retries` attempts decide
    /// that it is down: an attempt that fails at once is retried after `retry_delay`; one
    /// that does not answer within `retry_delay` gets the next attempt started beside it
    /// (on a new connection), so a host that stops answering is down after about
    /// `timeout + retries × retry_delay`, not `(1 + retries) × timeout`.
    async fn run<P: Probe>(self, mut probe: P) {
        let mut last_error: Option<String> = None;
        let mut debounce = Debounce::new(self.retries);
        let mut next = Instant::now();
        let template = probe.fresh();
        loop {
            // A poke checks at once, but does not shorten the retries: a burst of
            // sessions seeing broken connections must not turn retry_delay into nothing.
            let retrying = debounce.retrying();
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
                _ = self.poke.notified(), if !retrying => {}
            }
            let started = Instant::now();
            // Attempts this round may start: all the retries left while the backend is up.
            let budget = if debounce.is_up() { 1 + self.retries - debounce.failures() } else { 1 };
            type Attempt<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = (Result<Sample, String>, bool, Instant)> + Send + 'a>>;
            let mut pending: futures_util::stream::FuturesUnordered<Attempt<'_>> = futures_util::stream::FuturesUnordered::new();
            let first_retry = debounce.retrying();
            let main = &mut probe;
            pending.push(Box::pin(async move { (main.check().await, first_retry, started) }));
            let mut launched = 1;
            let mut next_launch = started + self.retry_delay;
            let mut decision: Option<Decision>;
            loop {
                let more = launched < budget;
                let (outcome, retry, at) = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    Some(done) = futures_util::StreamExt::next(&mut pending) => done,
                    _ = tokio::time::sleep_until(next_launch), if more => {
                        let mut extra = template.fresh();
                        let at = Instant::now();
                        tracing::debug!(node = %self.name, attempt = launched + 1, "health check does not answer: another attempt beside it");
                        pending.push(Box::pin(async move { (extra.check().await, true, at) }));
                        launched += 1;
                        next_launch = at + self.retry_delay;
                        continue;
                    }
                };
                // Counted before the view changes: whoever sees the change sees the check.
                self.stats.record(outcome.as_ref().err().map(String::as_str), retry, at.elapsed(), SystemTime::now());
                let d = debounce.on_result(outcome.is_ok());
                decision = Some(d);
                match outcome {
                    Ok(sample) => {
                        last_error = None;
                        self.publish(None, |view, now| view.with_up(self.index, &sample, now));
                        break;
                    }
                    // Say why once per distinct reason, not every check.
                    Err(e) if last_error.as_deref() != Some(e.as_str()) => {
                        tracing::warn!(node = %self.name, error = %e, "health check failed");
                        last_error = Some(e);
                    }
                    Err(_) => {}
                }
                if matches!(d, Decision::Down { .. }) || pending.is_empty() {
                    break;
                }
            }
            drop(pending);
            next = match decision {
                Some(Decision::Retry { attempt }) => {
                    tracing::debug!(node = %self.name, attempt, retries = self.retries, "retrying health check");
                    Instant::now() + self.retry_delay
                }
                Some(Decision::Down { changed: true }) => {
                    self.stats.marked_down();
                    self.publish(last_error.as_deref(), |view, now| view.with_down(self.index, now));
                    started + self.interval
                }
                _ => started + self.interval,
            };
        }
    }

    /// Applies `change` to the view as it is now (failover's writes included) and
    /// publishes the result, if there is one; `error` is why the checks failed.
    fn publish(&self, error: Option<&str>, change: impl FnOnce(&ClusterView, SystemTime) -> Option<ClusterView>) {
        self.view.send_if_modified(|view| {
            let Some(next) = change(view, SystemTime::now()) else { return false };
            let (before, after) = (&view.nodes[self.index], &next.nodes[self.index]);
            if before.up != after.up || before.role != after.role {
                tracing::info!(node = %self.name, up = after.up, role = ?after.role, "backend state changed");
                let (event, message) = match (after.up, before.up) {
                    (true, false) => ("node_up", "health check succeeds"),
                    (false, _) => ("node_down", "marked down after its health-check retries"),
                    (true, true) => ("node_role_changed", "the backend's role changed"),
                };
                let role = format!("{:?}", after.role).to_lowercase();
                let fields = match error {
                    Some(e) if !after.up => serde_json::json!({"role": role, "error": e}),
                    _ => serde_json::json!({"role": role}),
                };
                self.events.record(event, &self.name, message, fields);
            }
            *view = Arc::new(next);
            true
        });
    }
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

    fn view(started: SystemTime) -> ClusterView {
        let node = |name: &str, port: u16, role: Role, wal: WalPosition| NodeState {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            up: true,
            role,
            wal,
            last_change: started,
            fenced: false,
            detached: false,
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
            writes_paused: false,
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

    fn sample(role: Role, wal: WalPosition) -> Sample {
        Sample { role, wal, repl: ReplicationInfo::default() }
    }

    #[test]
    fn last_change_moves_only_when_up_or_role_changes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let (t1, t2) = (t0 + Duration::from_secs(5), t0 + Duration::from_secs(9));
        let v = view(t0);
        let same = v.nodes[1].wal;
        assert_eq!(v.with_up(1, &sample(Role::Standby, same), t1), None, "nothing changed");

        let caught_up = WalPosition { replay: Some(900), replay_lag_time: Some(Duration::ZERO), ..same };
        let v1 = v.with_up(1, &sample(Role::Standby, caught_up), t1).unwrap_or_else(|| panic!("wal changed"));
        assert_eq!(v1.nodes[1].wal, caught_up);
        assert_eq!(v1.nodes[1].last_change, t0, "WAL progress is no status change");

        let v2 = v1.with_down(1, t2).unwrap_or_else(|| panic!("down"));
        assert_eq!((v2.nodes[1].up, v2.nodes[1].role, v2.nodes[1].last_change), (false, Role::Unknown, t2));
        assert_eq!(v2.nodes[0].last_change, t0, "other nodes keep theirs");
        assert_eq!(v2.with_down(1, t2 + Duration::from_secs(1)), None, "already down");

        let v3 = v.with_up(2, &sample(Role::Primary, WalPosition::default()), t1).unwrap_or_else(|| panic!("promoted"));
        assert_eq!(v3.nodes[2].last_change, t1);
        assert_eq!(v.with_up(7, &sample(Role::Primary, same), t1), None, "no such node");
        assert_eq!(v.with_down(7, t1), None, "no such node");
    }

    #[test]
    fn a_down_node_keeps_its_last_wal_and_replication_facts() {
        let t0 = SystemTime::UNIX_EPOCH;
        let repl = ReplicationInfo {
            timeline: Some(3),
            synchronous_standby_names: Some("ANY 1 (b, c)".into()),
            peers: vec![ReplicationPeer { application_name: "b".into(), state: "streaming".into(), sync_state: "quorum".into() }],
            ..ReplicationInfo::default()
        };
        let wal = WalPosition { current: Some(5000), ..WalPosition::default() };
        let seen = Sample { role: Role::Primary, wal, repl: repl.clone() };
        let v = view(t0).with_up(0, &seen, t0).unwrap_or_else(|| panic!("new facts"));
        assert_eq!(v.nodes[0].repl, repl, "published on success");
        let down = v.with_down(0, t0).unwrap_or_else(|| panic!("down"));
        assert_eq!((down.nodes[0].wal, &down.nodes[0].repl), (wal, &repl));
        assert_eq!(down.primary(), None);
        assert_eq!(down.replay_lag_bytes(1), None, "no lag against a dead primary");
    }

    #[test]
    fn checks_leave_fenced_alone() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut v = view(t0);
        v.nodes[1].fenced = true;
        let up = v.with_up(1, &sample(Role::Primary, WalPosition::default()), t0).unwrap_or_else(|| panic!("changed"));
        assert!(up.nodes[1].fenced);
        let down = up.with_down(1, t0).unwrap_or_else(|| panic!("changed"));
        assert!(down.nodes[1].fenced);
    }

    /// Answers as told and counts its checks.
    #[derive(Clone, Default)]
    struct Scripted {
        failing: Arc<std::sync::atomic::AtomicBool>,
        hanging: Arc<std::sync::atomic::AtomicBool>,
        calls: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Probe for Scripted {
        fn fresh(&self) -> Self {
            self.clone()
        }

        async fn check(&mut self) -> Result<Sample, String> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if self.hanging.load(SeqCst) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Err("no answer within 300ms".into());
            }
            if self.failing.load(SeqCst) {
                Err("refused".into())
            } else {
                Ok(sample(Role::Primary, WalPosition { current: Some(42), ..WalPosition::default() }))
            }
        }
    }

    /// True when the view satisfies `f` within 10 s.
    async fn until(rx: &mut watch::Receiver<Arc<ClusterView>>, f: impl FnMut(&Arc<ClusterView>) -> bool) -> bool {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(f)).await.is_ok_and(|r| r.is_ok())
    }

    #[tokio::test]
    async fn a_poke_checks_at_once_then_retries_retry_delay_apart() {
        use std::sync::atomic::Ordering::SeqCst;
        let settings = CheckSettings {
            // Only a poke or a retry can cause a second check within this test.
            interval: Duration::from_secs(600),
            timeout: Duration::from_secs(1),
            retries: 2,
            retry_delay: Duration::from_millis(10),
            user: String::new(),
            password: None,
            database: String::new(),
            tls: Arc::new(crate::tls::backend::BackendTls::disabled()),
        };
        let probe = Scripted::default();
        let stop = CancellationToken::new();
        let monitor = start(vec![("a".into(), ([127, 0, 0, 1], 1).into())], vec![probe.clone()], &settings, stop.clone());
        let mut rx = monitor.subscribe();
        assert!(until(&mut rx, |v| v.nodes[0].up).await, "the first check marks it up");
        assert_eq!(probe.calls.load(SeqCst), 1);

        probe.failing.store(true, SeqCst);
        monitor.poke(0);
        assert!(until(&mut rx, |v| !v.nodes[0].up).await, "a poke and two retries mark it down");
        assert_eq!(probe.calls.load(SeqCst), 4, "the poke's check and its 2 retries");
        let s = monitor.stats(0).unwrap_or_else(|| panic!("stats of node 0"));
        assert_eq!((s.total, s.successes, s.failures, s.retries, s.max_retries, s.marked_down), (4, 1, 3, 2, 2, 1));
        assert_eq!(rx.borrow().nodes[0].wal.current, Some(42), "last known WAL kept");

        probe.failing.store(false, SeqCst);
        monitor.poke(0);
        assert!(until(&mut rx, |v| v.nodes[0].up).await, "one success marks it up again");
        assert_eq!(probe.calls.load(SeqCst), 5);
        assert_eq!(monitor.stats(1), None);
        stop.cancel();
    }

    #[tokio::test]
    async fn attempts_that_hang_overlap_retry_delay_apart() {
        use std::sync::atomic::Ordering::SeqCst;
        let settings = CheckSettings {
            interval: Duration::from_secs(600),
            timeout: Duration::from_millis(300),
            retries: 2,
            retry_delay: Duration::from_millis(20),
            user: String::new(),
            password: None,
            database: String::new(),
            tls: Arc::new(crate::tls::backend::BackendTls::disabled()),
        };
        let probe = Scripted::default();
        let stop = CancellationToken::new();
        let monitor = start(vec![("a".into(), ([127, 0, 0, 1], 1).into())], vec![probe.clone()], &settings, stop.clone());
        let mut rx = monitor.subscribe();
        assert!(until(&mut rx, |v| v.nodes[0].up).await);
        probe.hanging.store(true, SeqCst);
        monitor.poke(0);
        assert!(until(&mut rx, |v| !v.nodes[0].up).await, "three hanging attempts mark it down");
        // All three were running before the first one timed out: one round, not three.
        assert_eq!(probe.calls.load(SeqCst), 4);
        let s = monitor.stats(0).unwrap_or_else(|| panic!("stats of node 0"));
        assert_eq!((s.total, s.failures, s.retries, s.marked_down), (4, 3, 2, 1));
        probe.hanging.store(false, SeqCst);
        monitor.poke(0);
        assert!(until(&mut rx, |v| v.nodes[0].up).await, "up again");
        stop.cancel();
    }
}
