//! Recent cluster events (node down/up, failover and switchover steps, rejoins…) kept in
//! memory for the admin API's `GET /events`, beside the structured log lines that carry
//! the same `event` names.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many events are kept.
pub const KEPT: usize = 1000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Increases by one per event from 1; `GET /events?since=N` answers those after N.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub event: String,
    /// The backend (or pgvigil node) it is about; empty when none.
    pub node: String,
    pub message: String,
    /// More facts: timings (`elapsed_ms`), the other node involved, errors.
    pub fields: serde_json::Value,
}

#[derive(Default)]
pub struct EventLog {
    inner: Mutex<(u64, VecDeque<Event>)>,
}

impl EventLog {
    pub fn record(&self, event: &str, node: &str, message: &str, fields: serde_json::Value) {
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.0 += 1;
        let e = Event { seq: inner.0, time_ms, event: event.into(), node: node.into(), message: message.into(), fields };
        if inner.1.len() == KEPT {
            inner.1.pop_front();
        }
        inner.1.push_back(e);
    }

    /// Events after `since` (all kept ones when 0), oldest first, at most `limit`
    /// (the newest ones).
    pub fn since(&self, since: u64, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let after: Vec<&Event> = inner.1.iter().filter(|e| e.seq > since).collect();
        after[after.len().saturating_sub(limit)..].iter().map(|e| (*e).clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_answers_after_a_sequence_number() {
        let log = EventLog::default();
        for i in 0..(KEPT + 5) {
            log.record("node_down", &format!("n{i}"), "down", serde_json::json!({}));
        }
        let all = log.since(0, usize::MAX);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].seq, 6);
        assert_eq!(all.last().map(|e| e.seq), Some(KEPT as u64 + 5));
        let tail = log.since(KEPT as u64 + 3, 10);
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![KEPT as u64 + 4, KEPT as u64 + 5]);
        assert_eq!(log.since(0, 2).len(), 2);
        assert_eq!(log.since(0, 2)[1].seq, KEPT as u64 + 5, "the newest ones");
    }
}
