//! Automatic failover: when the monitor has confirmed the primary down, promote the most
//! advanced eligible standby, fence the old primary, and re-point the other standbys.
//!
//! One task watches the cluster view. While a primary is up it remembers that primary's
//! last WAL position and synchronous-replication facts, which decide who may be promoted
//! once it is gone (`candidate.rs`). A failover:
//!
//! 1. asks every up standby for its received and replayed WAL position (fresher than the
//!    last check) and chooses the candidate; with none eligible the cluster stays
//!    read-only and says why;
//! 2. waits (up to `failover.replay_timeout`) until the candidate has replayed all it
//!    received, then runs `pg_promote(true, …)` on it;
//! 3. publishes, in one view change, the old primary fenced and the candidate primary,
//!    so sessions route writes there at once (those holding writes stop waiting);
//! 4. for every other standby: creates a physical replication slot for it on the new
//!    primary, points its `primary_conninfo` (the same connection string, with the new
//!    primary's host and port) and `primary_slot_name` there with `ALTER SYSTEM`,
//!    reloads it, and checks in `pg_stat_wal_receiver` that it streams from the new
//!    primary, reporting any that does not.
//!
//! Each step is logged as a structured event with its timing. A fenced node gets no
//! statement, whatever it says it is when it comes back.

pub mod candidate;
pub mod consensus;
pub mod conninfo;
pub mod hooks;
pub mod manual;
pub mod rejoin;
pub mod state;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::monitor::{ClusterView, Monitor, Role};
use candidate::{choose, Choice, LastPrimary, Standby};

/// One backend as failover sees it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub no_failover: bool,
    pub priority: i32,
    pub data_dir: Option<std::path::PathBuf>,
}

/// Settings from `[failover]` and `[health_check]`.
#[derive(Clone)]
pub struct Settings {
    pub automatic: bool,
    pub max_lag: u64,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub connect_timeout: Duration,
    pub replay_timeout: Duration,
    pub promote_timeout: Duration,
    /// How long a switchover waits for open transactions on the primary.
    pub switchover_drain_timeout: Duration,
    pub backends: Vec<Backend>,
    /// Where the fenced nodes are kept (`failover.state_dir`).
    pub state_dir: Option<std::path::PathBuf>,
    pub auto_rejoin: bool,
    pub pg_bindir: Option<std::path::PathBuf>,
    pub promote_command: Option<String>,
    pub follow_command: Option<String>,
    /// `[rejoin]`.
    pub rejoin: rejoin::RejoinSettings,
    /// `[tls] backend_tls`.
    pub tls: Arc<crate::tls::backend::BackendTls>,
}

impl Settings {
    fn node_ref(&self, i: usize) -> hooks::NodeRef {
        let b = &self.backends[i];
        hooks::NodeRef {
            id: i,
            host: b.host.clone(),
            port: b.port,
            data_dir: b.data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
        }
    }
}

/// What failover is doing, for logs now and the admin interface later.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Idle,
    InProgress { from: String },
    /// The primary is down and no standby may be promoted.
    ReadOnly { reasons: Vec<String> },
    /// The primary is down and `failover.automatic` is off.
    Manual,
}

/// The last primary, as remembered while it was up.
#[derive(Debug, Clone)]
struct Remembered {
    node: usize,
    last: LastPrimary,
    /// Standbys it reported as `sync` or `quorum` (by replication application name).
    synchronous: Vec<String>,
}

pub struct Failover {
    pub status: Mutex<Status>,
    /// Number of completed promotions.
    pub promotions: std::sync::atomic::AtomicU64,
    /// How long the last failover or switchover took, start to finish (ms; 0: none yet).
    pub last_duration_ms: std::sync::atomic::AtomicU64,
    ops: tokio::sync::mpsc::UnboundedSender<(Op, Reply)>,
    names: Vec<String>,
}

/// An operator's request (the admin interface and `pgvigil ctl` send these). Nodes are
/// named as in `[[backends]] name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Route nothing new to a standby until it is attached.
    Detach(String),
    /// Route to a node again: the current primary, or a standby streaming from it.
    Attach(String),
    /// Make this standby the primary: a switchover while the primary is up, a failover
    /// to it while the primary is down.
    Promote(String),
    /// Hand the primary role to a standby (the best one when not named) with no loss of
    /// acknowledged writes.
    Switchover(Option<String>),
    /// Rewind a fenced old primary and start it as a standby of the current primary.
    Rejoin(String),
}

type Reply = tokio::sync::oneshot::Sender<Result<String, String>>;

impl Failover {
    /// Runs an operation after any running failover or operation; `Ok` carries what was
    /// done, `Err` why nothing (or not everything) was.
    pub async fn operate(&self, op: Op) -> Result<String, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ops.send((op, tx)).map_err(|_| "pgvigil is shutting down".to_string())?;
        rx.await.map_err(|_| "pgvigil is shutting down".to_string())?
    }

    /// Asks for node `i` (a fenced old primary) to be rejoined as a standby of the
    /// current primary, without waiting for the outcome.
    pub fn request_rejoin(&self, i: usize) {
        if let Some(name) = self.names.get(i) {
            let (tx, _) = tokio::sync::oneshot::channel();
            let _ = self.ops.send((Op::Rejoin(name.clone()), tx));
        }
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, s: Status) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

/// Starts the failover task.
pub fn spawn(monitor: Arc<Monitor>, settings: Settings, watchdog: Option<Arc<crate::watchdog::Watchdog>>, stop: CancellationToken) -> Arc<Failover> {
    let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
    let names = settings.backends.iter().map(|b| b.name.clone()).collect();
    let state = Arc::new(Failover { status: Mutex::new(Status::Idle), promotions: 0.into(), last_duration_ms: 0.into(), ops: tx, names });
    // Before anything is routed.
    let kept = load_state(&settings, &monitor);
    tokio::spawn(run(monitor, settings, state.clone(), kept, watchdog, requests, stop));
    state
}

/// What the failover task carries from one view change to the next.
struct Memory {
    /// The primary as last seen up.
    remembered: Option<Remembered>,
    /// The node state as last saved in `state_dir`.
    kept: Vec<state::Kept>,
    /// Automatic rejoins tried, by node, so a failing one is not retried in a loop.
    tried: Vec<(usize, Instant)>,
    /// Nodes pgvigil itself rewound: known to be on the primary's timeline.
    rewound: Vec<usize>,
    /// With several pgvigil nodes: the watchdog, the epoch of the fenced and detached
    /// sets, and those sets as of the last epoch this node made or adopted.
    watchdog: Option<Arc<crate::watchdog::Watchdog>>,
    epoch: u32,
    sets: (u64, u64),
    /// What was last logged about waiting for the other members (said once).
    waiting_said: Option<String>,
    /// The digest last given to the watchdog.
    digest_sent: Option<consensus::Digest>,
}

async fn run(
    monitor: Arc<Monitor>,
    settings: Settings,
    state: Arc<Failover>,
    kept: Vec<state::Kept>,
    watchdog: Option<Arc<crate::watchdog::Watchdog>>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<(Op, Reply)>,
    stop: CancellationToken,
) {
    let mut rx = monitor.subscribe();
    let mut wd_rx = watchdog.as_ref().map(|w| w.subscribe());
    let mut mem = Memory { remembered: None, kept, tried: Vec::new(), rewound: Vec::new(), watchdog, epoch: 0, sets: (0, 0), waiting_said: None, digest_sent: None };
    loop {
        let view = rx.borrow_and_update().clone();
        if let Some(w) = mem.watchdog.clone() {
            if share_state(&monitor, &w, &view, &mut mem) {
                continue;
            }
        }
        keep_state(&settings, &view, &mut mem.kept);
        if let Some(i) = rejoined(&view, &mem.rewound) {
            mem.rewound.retain(|&r| r != i);
            // An operator made the old primary a standby of the current one: use it again.
            tracing::warn!(event = "node_rejoined", node = %view.nodes[i].name, "fenced node streams from the primary: no longer fenced");
            monitor.events.record("node_rejoined", &view.nodes[i].name, "fenced node streams from the primary: no longer fenced", json!({}));
            edit_view(&monitor, |next| next.nodes[i].fenced = false);
            continue;
        }
        if let Some(fence) = split_brain(&view, &kept_primary(&mem.kept)) {
            // Two nodes say they are primary: keep the one the standbys follow (else the
            // newer timeline), fence the others. The next view change routes again.
            for i in fence {
                tracing::error!(event = "node_fenced", node = %view.nodes[i].name, "two primaries: fencing the one the standbys do not follow");
                monitor.events.record("node_fenced", &view.nodes[i].name, "two primaries: fencing the one the standbys do not follow", json!({}));
            }
            let last = kept_primary(&mem.kept);
            edit_view(&monitor, |next| {
                for i in split_brain(next, &last).unwrap_or_default() {
                    next.nodes[i].fenced = true;
                }
            });
            continue;
        }
        if let Some(p) = view.primary() {
            mem.remembered = Some(remember(&view, p));
            if state.status() != Status::Idle && !view.writes_paused {
                state.set(Status::Idle);
            }
        } else if let Some(r) = mem.remembered.clone() {
            let old = &view.nodes[r.node];
            // Down as the monitor decided it (after its retries), and still ours to replace.
            if !old.up && !old.fenced && !may_fail_over(&mut mem, &view, r.node) {
                // Another member decides, or not enough members see it down yet.
            } else if !old.up && !old.fenced {
                if !settings.automatic {
                    if state.status() != Status::Manual {
                        tracing::error!(node = %old.name, "primary is down and failover.automatic is off: the cluster is read-only");
                        state.set(Status::Manual);
                    }
                } else if let Ok(next) = failover(&monitor, &settings, &state, &view, &r, None).await {
                    mem.remembered = Some(next);
                }
            }
        }
        if settings.auto_rejoin {
            let view = rx.borrow().clone();
            if let Some(p) = view.primary() {
                let due = view.nodes.iter().enumerate().find(|(i, n)| {
                    n.fenced && n.up && rejoin::configured(&settings, *i) && !mem.tried.iter().any(|(t, at)| t == i && at.elapsed() < Duration::from_secs(60))
                });
                if let Some((i, _)) = due {
                    mem.tried.retain(|(t, _)| *t != i);
                    mem.tried.push((i, Instant::now()));
                    if run_rejoin(&monitor, &settings, &view, i, p).await.is_ok() {
                        mem.rewound.push(i);
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            Some(Ok(())) = async { match wd_rx.as_mut() { Some(w) => Some(w.changed().await), None => std::future::pending().await } } => {}
            Some((op, reply)) = requests.recv() => {
                let outcome = manual::run(&monitor, &settings, &state, &mut mem, op).await;
                let _ = reply.send(outcome);
            }
        }
    }
}

/// With several pgvigil nodes: publishes this node's digest, bumps the epoch when the
/// leader's own fenced or detached sets changed, and on the other members adopts the
/// leader's sets when its epoch is newer. True when the view was changed (the caller
/// looks again).
fn share_state(monitor: &Monitor, w: &crate::watchdog::Watchdog, view: &ClusterView, mem: &mut Memory) -> bool {
    use consensus::Digest;
    let ws = w.state();
    let mine = Digest::of(view, mem.epoch);
    let leads = ws.is_leader_with_quorum(Instant::now());
    if leads && (mine.fenced, mine.detached) != mem.sets {
        mem.epoch += 1;
        mem.sets = (mine.fenced, mine.detached);
    } else if !leads {
        if let Some(ld) = consensus::leader_digest(&ws).filter(|d| d.epoch > mem.epoch) {
            mem.epoch = ld.epoch;
            mem.sets = (ld.fenced, ld.detached);
            if (ld.fenced, ld.detached) != (mine.fenced, mine.detached) {
                tracing::warn!(event = "cluster_state_adopted", leader = ?ws.leader, epoch = ld.epoch, "fenced and detached backends as the watchdog leader has them");
                monitor.events.record("cluster_state_adopted", ws.leader.as_deref().unwrap_or(""), "fenced and detached backends as the watchdog leader has them", json!({"epoch": ld.epoch}));
                edit_view(monitor, |next| {
                    for (i, n) in next.nodes.iter_mut().enumerate() {
                        n.fenced = Digest::has(ld.fenced, i);
                        n.detached = Digest::has(ld.detached, i);
                    }
                });
                return true;
            }
        }
    }
    let digest = Digest { epoch: mem.epoch, ..mine };
    if mem.digest_sent != Some(digest) {
        w.set_digest(digest.encode());
        mem.digest_sent = Some(digest);
    }
    false
}

/// With several pgvigil nodes, only the watchdog leader with a quorum's lease fails
/// over, and only once a quorum of members see the primary (`old`) down on their own
/// health checks. Says why it waits, once per reason.
fn may_fail_over(mem: &mut Memory, view: &ClusterView, old: usize) -> bool {
    let Some(w) = &mem.watchdog else { return true };
    let ws = w.state();
    let name = &view.nodes[old].name;
    let why = if !ws.is_leader_with_quorum(Instant::now()) {
        format!("{name} is down as seen from here; the watchdog leader ({}) decides", ws.leader.as_deref().unwrap_or("none yet"))
    } else {
        let (seen, need) = consensus::seen_down(&ws, &consensus::Digest::of(view, mem.epoch), old);
        if seen >= need {
            mem.waiting_said = None;
            return true;
        }
        format!("{name} is down as seen by {seen} member(s); a failover needs {need}")
    };
    if mem.waiting_said.as_deref() != Some(why.as_str()) {
        tracing::warn!(event = "failover_waiting", node = %name, "{why}");
        mem.waiting_said = Some(why);
    }
    false
}

/// The node the kept state names as primary (used to break a tie between two
/// primaries at start).
fn kept_primary(kept: &[state::Kept]) -> Option<String> {
    let mut primaries = kept.iter().filter(|k| k.role == Role::Primary && k.state != "fenced");
    let first = primaries.next()?;
    primaries.next().is_none().then(|| first.name.clone())
}

/// Rejoins node `i` as a standby of `p`: `Ok` when it was rewound (or re-cloned),
/// started, and streams from `p`.
async fn run_rejoin(monitor: &Monitor, settings: &Settings, view: &ClusterView, i: usize, p: usize) -> Result<(), String> {
    let name = &view.nodes[i].name;
    let started = Instant::now();
    tracing::warn!(event = "rejoin_started", node = %name, primary = %view.nodes[p].name, "rejoining the old primary as a standby");
    monitor.events.record("rejoin_started", name, "rejoining as a standby", json!({"primary": view.nodes[p].name}));
    match rejoin::rejoin(settings, p, i).await {
        Ok(()) => {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            tracing::warn!(event = "rejoin_started_standby", node = %name, elapsed_ms, "started as a standby streaming from the primary; it is used again once the monitor sees it");
            monitor.events.record("rejoin_started_standby", name, "started as a standby streaming from the primary", json!({"elapsed_ms": elapsed_ms}));
            Ok(())
        }
        Err(e) => {
            let e = format!("{e:#}");
            tracing::error!(event = "rejoin_failed", node = %name, error = %e, "rejoin failed");
            monitor.events.record("rejoin_failed", name, "rejoin failed", json!({"error": e}));
            Err(e)
        }
    }
}

/// Applies the node state kept in `state_dir` (before anything is routed by it).
fn load_state(settings: &Settings, monitor: &Monitor) -> Vec<state::Kept> {
    let Some(dir) = &settings.state_dir else { return Vec::new() };
    let kept = match state::load(dir) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the kept node state (failover.state_dir); fencing and detaching nothing");
            return Vec::new();
        }
    };
    edit_view(monitor, |next| {
        for n in &mut next.nodes {
            match kept.iter().find(|k| k.name == n.name).map(|k| k.state) {
                Some("fenced") => {
                    n.fenced = true;
                    tracing::warn!(node = %n.name, dir = %dir.display(), "node fenced by an earlier failover");
                }
                Some("detached") => {
                    n.detached = true;
                    tracing::warn!(node = %n.name, dir = %dir.display(), "node detached by an operator earlier");
                }
                _ => {}
            }
        }
    });
    kept
}

/// Saves the node state when one of its kept facts changed.
fn keep_state(settings: &Settings, view: &ClusterView, kept: &mut Vec<state::Kept>) {
    let Some(dir) = &settings.state_dir else { return };
    let mut next = state::of(view);
    state::merge_roles(&mut next, kept);
    if next == *kept {
        return;
    }
    if let Err(e) = state::save(dir, &next) {
        tracing::error!(path = %state::path(dir).display(), error = %e, "cannot save the node state (failover.state_dir)");
    }
    *kept = next;
}

/// A fenced node that is now a standby streaming from the current primary. One pgvigil
/// did not rewind itself must also show the primary's timeline in its control file.
fn rejoined(view: &ClusterView, rewound: &[usize]) -> Option<usize> {
    let p = view.primary()?;
    let port = view.nodes[p].addr.port();
    let timeline = view.nodes[p].repl.timeline;
    // On the primary's timeline too: a standby that forked off earlier (not rewound)
    // may show "streaming" for a moment while it keeps failing to follow.
    view.nodes.iter().enumerate().position(|(i, n)| {
        n.fenced
            && n.up
            && n.role == Role::Standby
            && (rewound.contains(&i) || (timeline.is_some() && n.repl.timeline == timeline))
            && streams_from(n, port)
    })
}

/// With two or more unfenced up primaries: the ones to fence. The primary that
/// standbys stream from wins; failing that, the newest timeline; failing that, the one
/// kept as primary in `state_dir`; failing that, nobody is fenced (pgvigil cannot
/// tell, and routes no write until an operator decides).
fn split_brain(view: &ClusterView, kept_primary: &Option<String>) -> Option<Vec<usize>> {
    let primaries: Vec<usize> =
        view.nodes.iter().enumerate().filter(|(_, n)| n.up && !n.fenced && n.role == Role::Primary).map(|(i, _)| i).collect();
    if primaries.len() < 2 {
        return None;
    }
    let followers = |p: usize| {
        let port = view.nodes[p].addr.port();
        view.nodes
            .iter()
            .filter(|n| n.up && n.role == Role::Standby)
            .filter(|n| streams_from(n, port))
            .count()
    };
    let best_followed = primaries.iter().copied().max_by_key(|&p| followers(p))?;
    let keep = if followers(best_followed) > 0 && primaries.iter().filter(|&&p| followers(p) == followers(best_followed)).count() == 1 {
        best_followed
    } else {
        let newest = primaries.iter().copied().max_by_key(|&p| view.nodes[p].repl.timeline)?;
        let tl = view.nodes[newest].repl.timeline;
        if tl.is_none() || primaries.iter().filter(|&&p| view.nodes[p].repl.timeline == tl).count() > 1 {
            primaries.iter().copied().find(|&p| Some(&view.nodes[p].name) == kept_primary.as_ref())?
        } else {
            newest
        }
    };
    Some(primaries.into_iter().filter(|&p| p != keep).collect())
}

fn remember(view: &ClusterView, p: usize) -> Remembered {
    let n = &view.nodes[p];
    let synchronous = n
        .repl
        .peers
        .iter()
        .filter(|peer| matches!(peer.sync_state.as_str(), "sync" | "quorum"))
        .map(|peer| peer.application_name.clone())
        .collect();
    Remembered {
        node: p,
        last: LastPrimary { lsn: n.wal.current, synchronous_replication: n.repl.synchronous_standby_names.is_some() },
        synchronous,
    }
}

/// Runs one failover (to `forced` when an operator named the standby); returns the new
/// primary as remembered, or why nobody was promoted (the next view change tries
/// again).
async fn failover(monitor: &Monitor, settings: &Settings, state: &Failover, view: &ClusterView, r: &Remembered, forced: Option<usize>) -> Result<Remembered, String> {
    let started = Instant::now();
    let old_name = view.nodes[r.node].name.clone();
    let before = state.status();
    if !matches!(before, Status::ReadOnly { .. }) || forced.is_some() {
        tracing::warn!(event = "failover_started", node = %old_name, last_lsn = ?r.last.lsn, forced = ?forced.map(|f| &view.nodes[f].name), "primary is down: failover started");
        monitor.events.record("failover_started", &old_name, "primary is down: failover started", json!({"last_lsn": r.last.lsn, "to": forced.map(|f| &view.nodes[f].name)}));
        state.set(Status::InProgress { from: old_name.clone() });
    }
    let standbys = standbys(settings, view, r, Some(r.node)).await;
    let choice = choose(&standbys, &r.last, settings.max_lag);
    let (node, name, why) = match (forced, choice) {
        (Some(f), choice) => {
            let Some(s) = standbys.iter().find(|s| s.node == f && s.up && !s.fenced) else {
                state.set(before);
                return Err(format!("{} is not an up, unfenced standby", view.nodes[f].name));
            };
            let why = match choice {
                Choice::Promote { node, .. } if node == f => "named by the operator; also the best candidate".to_string(),
                Choice::Promote { name, .. } => format!("named by the operator (the automatic choice would be {name})"),
                Choice::NoCandidate { reasons } => format!("named by the operator, although: {}", reasons.join("; ")),
            };
            (f, s.name.clone(), why)
        }
        (None, Choice::Promote { node, name, why }) => (node, name, why),
        (None, Choice::NoCandidate { reasons }) => {
            if before != (Status::ReadOnly { reasons: reasons.clone() }) {
                tracing::error!(event = "failover_impossible", node = %old_name, reasons = %reasons.join("; "), "no standby may be promoted: the cluster is read-only");
                monitor.events.record("failover_impossible", &old_name, "no standby may be promoted: the cluster is read-only", json!({"reasons": reasons}));
            }
            let e = reasons.join("; ");
            state.set(Status::ReadOnly { reasons });
            return Err(e);
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::warn!(event = "failover_candidate", node = %name, why = %why, elapsed_ms, "promoting");
    monitor.events.record("failover_candidate", &name, "promoting", json!({"why": why, "elapsed_ms": elapsed_ms}));
    if let Err(e) = promote_node(settings, node, r.node).await {
        tracing::error!(event = "failover_failed", node = %name, error = %e, "promotion failed");
        monitor.events.record("failover_failed", &name, "promotion failed", json!({"error": format!("{e:#}")}));
        let e = format!("promotion of {name} failed: {e}");
        state.set(Status::ReadOnly { reasons: vec![e.clone()] });
        return Err(e);
    }
    // One view change: the old primary fenced, the new one primary.
    edit_view(monitor, |next| {
        next.nodes[r.node].fenced = true;
        next.nodes[node].role = Role::Primary;
        next.nodes[node].last_change = std::time::SystemTime::now();
    });
    state.promotions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let promoted_ms = started.elapsed().as_millis() as u64;
    tracing::warn!(event = "failover_promoted", node = %name, fenced = %old_name, elapsed_ms = promoted_ms, "new primary");
    monitor.events.record("failover_promoted", &name, "new primary", json!({"fenced": old_name, "elapsed_ms": promoted_ms}));
    let others: Vec<usize> = standbys.iter().filter(|s| s.node != node && s.up).map(|s| s.node).collect();
    let not_following = repoint(monitor, settings, &others, node, r.node, started).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    state.last_duration_ms.store(elapsed_ms, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(event = "failover_finished", node = %name, elapsed_ms, promoted_ms, not_following = not_following.len(), "failover finished");
    monitor.events.record("failover_finished", &name, "failover finished", json!({"elapsed_ms": elapsed_ms, "promoted_ms": promoted_ms, "from": old_name, "not_following": not_following.iter().map(|&s| &settings.backends[s].name).collect::<Vec<_>>()}));
    state.set(Status::Idle);
    let view = monitor.view.borrow().clone();
    Ok(remember(&view, node))
}

/// Every standby but `except` as candidate choice sees it, with WAL positions fresher
/// than the last check for those that are up.
async fn standbys(settings: &Settings, view: &ClusterView, r: &Remembered, except: Option<usize>) -> Vec<Standby> {
    let mut out = Vec::new();
    for (i, n) in view.nodes.iter().enumerate() {
        if Some(i) == except || n.role != Role::Standby {
            continue;
        }
        let b = &settings.backends[i];
        let mut s = Standby {
            node: i,
            name: n.name.clone(),
            up: n.up,
            fenced: n.fenced || n.detached,
            no_failover: b.no_failover,
            priority: b.priority,
            received: n.wal.receive,
            replayed: n.wal.replay,
            synchronous: n.repl.replication_name.as_ref().is_some_and(|a| r.synchronous.contains(a)),
        };
        if n.up {
            if let Ok(c) = connect(settings, i).await {
                if let Ok((rx, rp)) = positions(&c).await {
                    s.received = rx.or(s.received);
                    s.replayed = rp.or(s.replayed);
                }
            }
        }
        out.push(s);
    }
    out
}

/// Promotes `node` (replacing `old`) with `pg_promote()` or `failover.promote_command`.
async fn promote_node(settings: &Settings, node: usize, old: usize) -> anyhow::Result<()> {
    match &settings.promote_command {
        Some(template) => {
            let values = hooks::Placeholders { node: settings.node_ref(old), new_primary: settings.node_ref(node), old_primary: settings.node_ref(old) };
            promote_by_command(settings, node, &hooks::expand(template, &values)).await
        }
        None => promote(settings, node).await,
    }
}

/// Re-points standbys `others` to the new primary `node`; returns those that do not
/// stream from it.
async fn repoint(monitor: &Monitor, settings: &Settings, others: &[usize], node: usize, old: usize, started: Instant) -> Vec<usize> {
    let name = &settings.backends[node].name;
    let mut failed = Vec::new();
    for &s in others {
        let followed = match &settings.follow_command {
            Some(template) => {
                let values = hooks::Placeholders { node: settings.node_ref(s), new_primary: settings.node_ref(node), old_primary: settings.node_ref(old) };
                hooks::run("follow_command", &hooks::expand(template, &values), Duration::from_secs(60)).await
            }
            None => follow(settings, node, s).await,
        };
        let standby = &settings.backends[s].name;
        match followed {
            Ok(()) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                tracing::info!(event = "standby_follows", node = %standby, primary = %name, elapsed_ms, "standby streams from the new primary");
                monitor.events.record("standby_follows", standby, "standby streams from the new primary", json!({"primary": name, "elapsed_ms": elapsed_ms}));
            }
            Err(e) => {
                tracing::error!(event = "standby_not_following", node = %standby, primary = %name, error = %e, "standby does not stream from the new primary");
                monitor.events.record("standby_not_following", standby, "standby does not stream from the new primary", json!({"primary": name, "error": format!("{e:#}")}));
                failed.push(s);
            }
        }
    }
    failed
}

pub(crate) async fn connect(settings: &Settings, i: usize) -> Result<Client, tokio_postgres::Error> {
    let b = &settings.backends[i];
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&b.host).port(b.port).user(&settings.user).dbname(&settings.database);
    cfg.application_name("pgvigil failover").connect_timeout(settings.connect_timeout);
    if let Some(p) = &settings.password {
        cfg.password(p);
    }
    let tls = settings.tls.postgres(i, &mut cfg);
    let (client, conn) = cfg.connect(tls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// (received, replayed) of a standby.
async fn positions(c: &Client) -> Result<(Option<u64>, Option<u64>), tokio_postgres::Error> {
    let row = c
        .query_one("SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text", &[])
        .await?;
    let lsn = |i: usize| row.get::<_, Option<String>>(i).as_deref().and_then(crate::monitor::parse_lsn);
    Ok((lsn(0), lsn(1)))
}

/// Waits for the candidate to replay what it received, then promotes it.
async fn promote(settings: &Settings, node: usize) -> anyhow::Result<()> {
    let c = connect(settings, node).await?;
    let deadline = Instant::now() + settings.replay_timeout;
    loop {
        let (received, replayed) = positions(&c).await?;
        match (received, replayed) {
            (Some(rx), Some(rp)) if rp < rx && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (Some(rx), Some(rp)) if rp < rx => {
                tracing::warn!(received = rx, replayed = rp, "candidate did not replay everything within failover.replay_timeout; promoting anyway");
                break;
            }
            _ => break,
        }
    }
    let wait = settings.promote_timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
    let done: bool = c.query_one("SELECT pg_promote(true, $1)", &[&wait]).await?.get(0);
    if !done {
        anyhow::bail!("pg_promote did not finish within {wait} s (failover.promote_timeout)");
    }
    Ok(())
}

/// Whether node `node` is in recovery (a standby); `None` when it does not answer.
pub(crate) async fn in_recovery(settings: &Settings, node: usize) -> Option<bool> {
    let c = connect(settings, node).await.ok()?;
    c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok().map(|row| row.get::<_, bool>(0))
}

/// Runs `failover.promote_command`, then waits until the candidate is out of recovery.
async fn promote_by_command(settings: &Settings, node: usize, command: &str) -> anyhow::Result<()> {
    hooks::run("promote_command", command, settings.promote_timeout).await?;
    let deadline = Instant::now() + settings.promote_timeout;
    loop {
        if in_recovery(settings, node).await == Some(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("failover.promote_command succeeded but the standby is still in recovery after {:?}", settings.promote_timeout);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Applies `change` to a copy of the current view and publishes it (one view change).
fn edit_view(monitor: &Monitor, change: impl FnOnce(&mut ClusterView)) {
    monitor.view.send_modify(|v| {
        let mut next = (**v).clone();
        change(&mut next);
        *v = Arc::new(next);
    });
}

/// Creates a physical replication slot, unless it exists (42710: a second failover).
pub(crate) async fn ensure_slot(c: &Client, slot: &str) -> Result<(), tokio_postgres::Error> {
    match c.execute("SELECT pg_create_physical_replication_slot($1)", &[&slot]).await {
        Err(e) if e.code().map(|c| c.code()) != Some("42710") => Err(e),
        _ => Ok(()),
    }
}

/// Whether node `n` is a standby whose WAL receiver streams from `port`.
fn streams_from(n: &crate::monitor::NodeState, port: u16) -> bool {
    n.repl.upstream.as_ref().is_some_and(|u| u.port == port && u.status == "streaming")
}

/// Points standby `s` at the new primary `p` and checks that it streams from it.
async fn follow(settings: &Settings, p: usize, s: usize) -> anyhow::Result<()> {
    let primary = &settings.backends[p];
    let standby = &settings.backends[s];
    let slot = conninfo::slot_name(&standby.name);
    let pc = connect(settings, p).await?;
    ensure_slot(&pc, &slot).await?;
    let sc = connect(settings, s).await?;
    let current: String = sc.query_one("SHOW primary_conninfo", &[]).await?.get(0);
    let next = conninfo::repoint(&current, &primary.host, primary.port, &standby.name);
    // One statement each: ALTER SYSTEM refuses to run in a (implicit) transaction.
    sc.batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = {}", conninfo::sql_literal(&next))).await?;
    sc.batch_execute(&format!("ALTER SYSTEM SET primary_slot_name = {}", conninfo::sql_literal(&slot))).await?;
    sc.batch_execute("SELECT pg_reload_conf()").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = sc
            .query_opt("SELECT sender_port, status FROM pg_stat_wal_receiver", &[])
            .await?;
        if let Some(row) = &row {
            let (port, status): (Option<i32>, Option<String>) = (row.get(0), row.get(1));
            if port == Some(i32::from(primary.port)) && status.as_deref() == Some("streaming") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("not streaming from port {} after 10 s (pg_stat_wal_receiver: {:?})", primary.port, row.map(|r| (r.get::<_, Option<i32>>(0), r.get::<_, Option<String>>(1))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::monitor::{NodeState, ReplicationInfo, Upstream, WalPosition};

    /// An up node named `n<port>` on 127.0.0.1:`port`, streaming from `upstream`'s port.
    pub(crate) fn node(port: u16, role: Role, timeline: u32, upstream: Option<u16>) -> NodeState {
        NodeState {
            name: format!("n{port}"),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            up: true,
            role,
            wal: WalPosition::default(),
            last_change: std::time::SystemTime::UNIX_EPOCH,
            fenced: false,
            detached: false,
            repl: ReplicationInfo {
                timeline: Some(timeline),
                upstream: upstream.map(|port| Upstream { host: "127.0.0.1".into(), port, status: "streaming".into() }),
                ..ReplicationInfo::default()
            },
        }
    }

    #[test]
    fn two_primaries_keep_the_followed_one_then_the_newer_timeline() {
        let followed = ClusterView {
            nodes: vec![node(1, Role::Primary, 2, None), node(2, Role::Primary, 1, None), node(3, Role::Standby, 1, Some(2))],
            writes_paused: false,
        };
        assert_eq!(split_brain(&followed, &None), Some(vec![0]), "the standby follows node 1 (port 2)");
        let unfollowed = ClusterView { nodes: vec![node(1, Role::Primary, 2, None), node(2, Role::Primary, 3, None)], writes_paused: false };
        assert_eq!(split_brain(&unfollowed, &None), Some(vec![0]), "newer timeline wins");
        let tie = ClusterView { nodes: vec![node(1, Role::Primary, 2, None), node(2, Role::Primary, 2, None)], writes_paused: false };
        assert_eq!(split_brain(&tie, &None), None, "no way to tell: nobody fenced");
        assert_eq!(split_brain(&tie, &Some("n2".into())), Some(vec![0]), "the primary kept in state_dir wins a tie");
        let one = ClusterView { nodes: vec![node(1, Role::Primary, 2, None), node(2, Role::Standby, 2, Some(1))], writes_paused: false };
        assert_eq!(split_brain(&one, &None), None);
        let mut fenced = unfollowed.clone();
        fenced.nodes[0].fenced = true;
        assert_eq!(split_brain(&fenced, &None), None);
        assert_eq!(fenced.primary(), Some(1));
    }
}
