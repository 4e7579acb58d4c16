//! Which standby to promote when the primary is gone: a pure decision over the last
//! cluster view, so it can be tested as a table.
//!
//! Eligible: a standby that is up, not fenced, not marked `no_failover`, no more than
//! `max_lag` bytes behind the last position the primary was seen at, and — when the
//! primary ran with `synchronous_standby_names` — one the primary last reported as
//! synchronous (`sync` or `quorum`), so no commit the primary acknowledged is lost.
//! Among those, the highest received LSN wins, then the higher `priority`, then the
//! smaller name: the same inputs always give the same choice.

/// What the failover decision needs to know of one standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    pub node: usize,
    pub name: String,
    pub up: bool,
    pub fenced: bool,
    pub no_failover: bool,
    pub priority: i32,
    /// `pg_last_wal_receive_lsn()` at its last check.
    pub received: Option<u64>,
    /// `pg_last_wal_replay_lsn()` at its last check.
    pub replayed: Option<u64>,
    /// The primary last reported it as `sync` or `quorum` in `pg_stat_replication`.
    pub synchronous: bool,
}

/// The primary as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastPrimary {
    /// `pg_current_wal_lsn()` at its last successful check.
    pub lsn: Option<u64>,
    /// Its `synchronous_standby_names` was not empty.
    pub synchronous_replication: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Promote { node: usize, name: String, why: String },
    /// Nobody may be promoted; one line per standby saying why.
    NoCandidate { reasons: Vec<String> },
}

/// Chooses the standby to promote.
pub fn choose(standbys: &[Standby], primary: &LastPrimary, max_lag: u64) -> Choice {
    let mut reasons = Vec::new();
    let mut eligible: Vec<&Standby> = Vec::new();
    for s in standbys {
        let why = if !s.up {
            Some("is down".to_string())
        } else if s.fenced {
            Some("is fenced".to_string())
        } else if s.no_failover {
            Some("has no_failover = true".to_string())
        } else if primary.synchronous_replication && !s.synchronous {
            Some("is not a synchronous standby (the primary used synchronous replication)".to_string())
        } else if let (Some(p), Some(r)) = (primary.lsn, s.received) {
            (p.saturating_sub(r) > max_lag)
                .then(|| format!("is {} bytes behind the primary's last position (failover.max_lag {max_lag})", p - r))
        } else if s.received.is_none() {
            Some("has no known WAL position".to_string())
        } else {
            None
        };
        match why {
            Some(w) => reasons.push(format!("{} {w}", s.name)),
            None => eligible.push(s),
        }
    }
    eligible.sort_by(|a, b| {
        b.received
            .cmp(&a.received)
            .then(b.priority.cmp(&a.priority))
            .then(a.name.cmp(&b.name))
    });
    match eligible.first() {
        Some(best) => {
            let why = match eligible.get(1) {
                Some(next) if next.received == best.received && next.priority == best.priority => {
                    format!("most advanced (tie with {} broken by name)", next.name)
                }
                Some(next) if next.received == best.received => format!("most advanced (tie with {} broken by priority)", next.name),
                Some(_) => "most advanced received WAL".to_string(),
                None => "the only eligible standby".to_string(),
            };
            Choice::Promote { node: best.node, name: best.name.clone(), why }
        }
        None => Choice::NoCandidate { reasons },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(node: usize, name: &str, received: u64) -> Standby {
        Standby {
            node,
            name: name.into(),
            up: true,
            fenced: false,
            no_failover: false,
            priority: 0,
            received: Some(received),
            replayed: Some(received),
            synchronous: false,
        }
    }

    const ASYNC: LastPrimary = LastPrimary { lsn: Some(1000), synchronous_replication: false };

    fn chosen(c: Choice) -> String {
        match c {
            Choice::Promote { name, .. } => name,
            Choice::NoCandidate { reasons } => format!("none: {}", reasons.join("; ")),
        }
    }

    #[test]
    fn most_advanced_then_priority_then_name() {
        assert_eq!(chosen(choose(&[standby(1, "b", 900), standby(2, "a", 950)], &ASYNC, 1 << 20)), "a");
        let mut hi = standby(1, "z", 950);
        hi.priority = 5;
        assert_eq!(chosen(choose(&[standby(2, "a", 950), hi.clone()], &ASYNC, 1 << 20)), "z");
        assert_eq!(chosen(choose(&[standby(2, "b", 950), standby(1, "a", 950)], &ASYNC, 1 << 20)), "a");
        // The order of the input does not matter.
        assert_eq!(chosen(choose(&[hi, standby(2, "a", 950)], &ASYNC, 1 << 20)), "z");
    }

    #[test]
    fn ineligible_standbys_are_named_with_the_reason() {
        let mut down = standby(1, "down", 1000);
        down.up = false;
        let mut fenced = standby(2, "fenced", 1000);
        fenced.fenced = true;
        let mut nf = standby(3, "nf", 1000);
        nf.no_failover = true;
        let lagging = standby(4, "lagging", 10);
        let c = choose(&[down, fenced, nf, lagging.clone()], &ASYNC, 100);
        let text = chosen(c);
        for want in ["down is down", "fenced is fenced", "nf has no_failover", "lagging is 990 bytes behind"] {
            assert!(text.contains(want), "{text}");
        }
        assert_eq!(chosen(choose(&[lagging], &ASYNC, 1000)), "lagging");
    }

    #[test]
    fn synchronous_replication_allows_only_synchronous_standbys() {
        let sync = LastPrimary { lsn: Some(1000), synchronous_replication: true };
        let mut s = standby(1, "sync", 900);
        s.synchronous = true;
        let ahead = standby(2, "async", 1000);
        assert_eq!(chosen(choose(&[ahead.clone(), s], &sync, 1 << 20)), "sync");
        assert!(chosen(choose(&[ahead], &sync, 1 << 20)).starts_with("none: async is not a synchronous standby"));
    }
}
