//! Which node serves a read: eligibility (up, lag, causal position, redirect target)
//! and smooth weighted round-robin among the eligible nodes.
//!
//! Smooth weighted round-robin (each pick adds every eligible node's weight to its
//! running score, takes the highest score and subtracts the total) gives each node its
//! exact share over any window of picks, without randomness, and spreads a node's picks
//! evenly instead of in runs.

use std::sync::Mutex;
use std::time::Duration;

use crate::monitor::{ClusterView, Role};

/// Where a session's reads may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTarget {
    /// Any up node by weight, the primary included.
    Any,
    /// Standbys only; the primary when none is eligible.
    Standby,
    /// The primary only.
    Primary,
    /// This node when it is eligible, else `Any`.
    Node(usize),
}

/// Lag limits from `[routing]`; zero disables a limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct LagLimits {
    pub max_bytes: u64,
    pub max_time: Duration,
}

/// What a read needs from the node that serves it.
#[derive(Debug, Clone, Copy)]
pub struct ReadNeeds {
    pub limits: LagLimits,
    /// The node must have replayed WAL up to here (causal reads).
    pub min_replay: Option<u64>,
}

/// Why a node cannot serve a read, for the explain NOTICE.
pub fn ineligible(view: &ClusterView, i: usize, needs: &ReadNeeds) -> Option<String> {
    let node = view.nodes.get(i)?;
    if !node.up {
        return Some(format!("{} is down", node.name));
    }
    if node.fenced {
        return Some(format!("{} is fenced", node.name));
    }
    if node.detached {
        return Some(format!("{} is detached", node.name));
    }
    match node.role {
        // A switchover is about to stop it: reads go elsewhere while they can, so that
        // none is cut off by the stop (the drain waits for those already running).
        Role::Primary if view.writes_paused => Some(format!("{} is being switched over", node.name)),
        Role::Primary => None,
        Role::Unknown => Some(format!("{}'s role is unknown", node.name)),
        Role::Standby => {
            if needs.limits.max_bytes > 0 {
                if let Some(lag) = view.replay_lag_bytes(i) {
                    if lag > needs.limits.max_bytes {
                        return Some(format!(
                            "{} lag {} > routing.max_lag {}",
                            node.name,
                            human_bytes(lag),
                            human_bytes(needs.limits.max_bytes)
                        ));
                    }
                }
            }
            if !needs.limits.max_time.is_zero() {
                if let Some(lag) = view.replay_lag_time(i) {
                    if lag > needs.limits.max_time {
                        return Some(format!(
                            "{} replay lag {:.1}s > routing.max_lag_time {:.1}s",
                            node.name,
                            lag.as_secs_f64(),
                            needs.limits.max_time.as_secs_f64()
                        ));
                    }
                }
            }
            if let Some(lsn) = needs.min_replay {
                if node.wal.replay.is_none_or(|r| r < lsn) {
                    return Some(format!("{} has not replayed the session's last commit", node.name));
                }
            }
            None
        }
    }
}

/// Bytes as PostgreSQL prints sizes: "512 bytes", "40MB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size * 10 || (n >= size && n % size == 0) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n} bytes")
}

/// Picks read nodes by weight. One per proxy, shared by all sessions.
pub struct Balancer {
    weights: Vec<f64>,
    scores: Mutex<Vec<f64>>,
}

/// A pick and, when the preferred node could not be used, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub node: usize,
    /// Nodes passed over, with the reason ("standby1 lag 40MB > routing.max_lag 16MB").
    pub skipped: Vec<String>,
}

impl Balancer {
    pub fn new(weights: Vec<f64>) -> Self {
        let n = weights.len();
        Self { weights, scores: Mutex::new(vec![0.0; n]) }
    }

    pub fn weight(&self, i: usize) -> f64 {
        self.weights.get(i).copied().unwrap_or(0.0)
    }

    /// Each node's share of reads when all are eligible (for SHOW POOL_NODES).
    pub fn share(&self, i: usize) -> f64 {
        let total: f64 = self.weights.iter().sum();
        if total > 0.0 {
            self.weight(i) / total
        } else {
            0.0
        }
    }

    /// Chooses the node for a read. `exclude` lists nodes this session found broken.
    /// Returns `None` when no node at all can serve it (no primary either).
    pub fn pick(
        &self,
        view: &ClusterView,
        target: ReadTarget,
        needs: &ReadNeeds,
        exclude: &[usize],
        prefer_lower_lag: bool,
    ) -> Option<Pick> {
        let mut skipped = Vec::new();
        let primary = view.primary();
        if let ReadTarget::Node(i) = target {
            match ineligible(view, i, needs) {
                None if !exclude.contains(&i) => return Some(Pick { node: i, skipped }),
                None => skipped.push(format!("{} failed in this session", view.nodes[i].name)),
                Some(why) => skipped.push(why),
            }
        }
        let allowed = |i: usize| match target {
            ReadTarget::Primary => Some(i) == primary,
            ReadTarget::Standby => view.nodes[i].role == Role::Standby,
            ReadTarget::Any | ReadTarget::Node(_) => {
                view.nodes[i].role == Role::Standby || Some(i) == primary
            }
        };
        let mut eligible = Vec::new();
        for i in 0..view.nodes.len() {
            if !allowed(i) || (self.weight(i) <= 0.0 && target != ReadTarget::Primary) {
                continue;
            }
            if exclude.contains(&i) {
                skipped.push(format!("{} failed in this session", view.nodes[i].name));
                continue;
            }
            match ineligible(view, i, needs) {
                None => eligible.push(i),
                Some(_) if target == ReadTarget::Node(i) => {}
                Some(why) if view.nodes[i].up => skipped.push(why),
                Some(_) => {}
            }
        }
        if prefer_lower_lag && eligible.len() > 1 {
            let lag = |i: usize| view.replay_lag_bytes(i).unwrap_or(0);
            let standbys: Vec<usize> = eligible.iter().copied().filter(|&i| Some(i) != primary).collect();
            if let Some(least) = standbys.iter().map(|&i| lag(i)).min() {
                eligible = standbys.into_iter().filter(|&i| lag(i) == least).collect();
            }
        }
        if let Some(node) = self.weighted(&eligible) {
            return Some(Pick { node, skipped });
        }
        // Nothing eligible: the primary serves the read.
        let p = primary.filter(|p| !exclude.contains(p))?;
        Some(Pick { node: p, skipped })
    }

    /// Smooth weighted round-robin over `nodes`.
    fn weighted(&self, nodes: &[usize]) -> Option<usize> {
        match nodes {
            [] => return None,
            [only] => return Some(*only),
            _ => {}
        }
        let mut scores = self.scores.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for &i in nodes {
            let w = self.weight(i).max(f64::MIN_POSITIVE);
            scores[i] += w;
            total += w;
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        scores[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{NodeState, WalPosition};

    fn node(name: &str, role: Role, up: bool) -> NodeState {
        NodeState {
            name: name.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            up,
            role,
            wal: WalPosition::default(),
            last_change: std::time::SystemTime::UNIX_EPOCH,
            fenced: false,
            detached: false,
            repl: Default::default(),
        }
    }

    fn view() -> ClusterView {
        let mut p = node("p", Role::Primary, true);
        p.wal.current = Some(100 << 20);
        let mut s1 = node("s1", Role::Standby, true);
        s1.wal.replay = Some(100 << 20);
        let mut s2 = node("s2", Role::Standby, true);
        s2.wal.replay = Some(100 << 20);
        ClusterView { nodes: vec![p, s1, s2], writes_paused: false }
    }

    const NEEDS: ReadNeeds = ReadNeeds {
        limits: LagLimits { max_bytes: 16 << 20, max_time: Duration::from_secs(5) },
        min_replay: None,
    };

    fn counts(b: &Balancer, v: &ClusterView, target: ReadTarget, n: usize) -> Vec<usize> {
        let mut c = vec![0; v.nodes.len()];
        for _ in 0..n {
            c[b.pick(v, target, &NEEDS, &[], false).unwrap().node] += 1;
        }
        c
    }

    #[test]
    fn weights_give_exact_shares() {
        let b = Balancer::new(vec![1.0, 2.0, 2.0]);
        assert_eq!(counts(&b, &view(), ReadTarget::Any, 10_000), vec![2000, 4000, 4000]);
        let b = Balancer::new(vec![0.0, 1.0, 3.0]);
        assert_eq!(counts(&b, &view(), ReadTarget::Any, 400), vec![0, 100, 300]);
        let b = Balancer::new(vec![1.0, 1.0, 1.0]);
        assert_eq!(counts(&b, &view(), ReadTarget::Standby, 100), vec![0, 50, 50]);
        assert_eq!(counts(&b, &view(), ReadTarget::Primary, 10), vec![10, 0, 0]);
    }

    #[test]
    fn a_primary_being_switched_over_serves_reads_only_when_nothing_else_can() {
        let b = Balancer::new(vec![1.0, 1.0, 1.0]);
        let mut v = view();
        v.writes_paused = true;
        assert_eq!(counts(&b, &v, ReadTarget::Any, 100), vec![0, 50, 50]);
        let pick = b.pick(&v, ReadTarget::Any, &NEEDS, &[], false).unwrap();
        assert_eq!(pick.skipped, vec!["p is being switched over".to_string()]);
        assert_eq!(ineligible(&v, 0, &NEEDS), Some("p is being switched over".into()));
        v.nodes[1].up = false;
        v.nodes[2].up = false;
        assert_eq!(b.pick(&v, ReadTarget::Any, &NEEDS, &[], false).unwrap().node, 0);
        assert_eq!(b.pick(&v, ReadTarget::Primary, &NEEDS, &[], false).unwrap().node, 0);
    }

    #[test]
    fn lagging_and_down_nodes_are_skipped_with_a_reason() {
        let b = Balancer::new(vec![0.0, 1.0, 1.0]);
        let mut v = view();
        v.nodes[1].wal.replay = Some(60 << 20);
        let pick = b.pick(&v, ReadTarget::Any, &NEEDS, &[], false).unwrap();
        assert_eq!(pick.node, 2);
        assert_eq!(pick.skipped, vec!["s1 lag 40MB > routing.max_lag 16MB".to_string()]);
        v.nodes[2].up = false;
        // Nothing eligible: the primary, even with weight 0.
        assert_eq!(b.pick(&v, ReadTarget::Any, &NEEDS, &[], false).unwrap().node, 0);
        let no_limit = ReadNeeds { limits: LagLimits::default(), min_replay: None };
        assert_eq!(b.pick(&v, ReadTarget::Any, &no_limit, &[], false).unwrap().node, 1);
        assert_eq!(b.pick(&v, ReadTarget::Any, &no_limit, &[1], false).unwrap().node, 0);
    }

    #[test]
    fn causal_position_and_named_targets() {
        let b = Balancer::new(vec![1.0, 1.0, 1.0]);
        let mut v = view();
        v.nodes[2].wal.replay = Some(99 << 20);
        let needs = ReadNeeds { min_replay: Some(100 << 20), ..NEEDS };
        let c = (0..10).map(|_| b.pick(&v, ReadTarget::Standby, &needs, &[], false).unwrap().node);
        assert!(c.into_iter().all(|n| n == 1));
        assert_eq!(b.pick(&v, ReadTarget::Node(2), &NEEDS, &[], false).unwrap().node, 2);
        let pick = b.pick(&v, ReadTarget::Node(2), &needs, &[], false).unwrap();
        assert_ne!(pick.node, 2);
        assert_eq!(pick.skipped, vec!["s2 has not replayed the session's last commit".to_string()]);
    }

    #[test]
    fn prefer_lower_lag_takes_the_freshest_standby() {
        let b = Balancer::new(vec![1.0, 1.0, 1.0]);
        let mut v = view();
        v.nodes[1].wal.replay = Some((100 << 20) - 4096);
        for _ in 0..5 {
            assert_eq!(b.pick(&v, ReadTarget::Any, &NEEDS, &[], true).unwrap().node, 2);
        }
    }

    #[test]
    fn sizes_print_like_postgres() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(16 << 20), "16MB");
        assert_eq!(human_bytes(40 << 20), "40MB");
        assert_eq!(human_bytes(3 << 30), "3GB");
        assert_eq!(human_bytes(1500), "1500 bytes");
    }
}
