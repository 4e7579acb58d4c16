//! Routing counters by node and reason (for SHOW POOL_NODES and metrics).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct NodeStats {
    /// Reads routed here (Pgpool-II's select_cnt).
    pub select_cnt: AtomicU64,
    /// Statements routed here by the label of the rule that decided.
    by_label: Mutex<HashMap<&'static str, u64>>,
}

pub struct RouteStats {
    pub nodes: Vec<NodeStats>,
    /// Statements the parser rejected (sent to the primary).
    pub unparsable: AtomicU64,
}

impl RouteStats {
    pub fn new(nodes: usize) -> Self {
        Self { nodes: (0..nodes).map(|_| NodeStats::default()).collect(), unparsable: AtomicU64::new(0) }
    }

    pub fn record(&self, node: usize, label: &'static str, read: bool) {
        let Some(n) = self.nodes.get(node) else { return };
        if read {
            n.select_cnt.fetch_add(1, Ordering::Relaxed);
        }
        *n.by_label.lock().unwrap_or_else(|p| p.into_inner()).entry(label).or_default() += 1;
    }

    /// (label, count) pairs of one node, sorted by label.
    pub fn by_label(&self, node: usize) -> Vec<(&'static str, u64)> {
        let Some(n) = self.nodes.get(node) else { return Vec::new() };
        let mut v: Vec<_> = n.by_label.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, *v)).collect();
        v.sort();
        v
    }

    pub fn select_cnt(&self, node: usize) -> u64 {
        self.nodes.get(node).map_or(0, |n| n.select_cnt.load(Ordering::Relaxed))
    }
}
