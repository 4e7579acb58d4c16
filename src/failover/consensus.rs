//! Failover with several pgvigil nodes: what each member says about the backends in the
//! 32-byte digest its watchdog heartbeats carry, and the rules built on it.
//!
//! Every member publishes the backends its own monitor sees down, and the fenced and
//! detached sets with the epoch they belong to. Only the watchdog leader with a quorum's
//! lease promotes, and only once a quorum of members (the leader included; a witness has
//! no monitor and never counts) see the primary down on their own health checks. The
//! other members adopt the leader's fenced and detached sets whenever its epoch is
//! newer, so every pgvigil routes the same way. A backend a member sees down while the
//! leader does not is *quarantined* there: not routed to from that member until its
//! checks succeed again.

use crate::monitor::ClusterView;
use crate::watchdog::state::WatchdogState;

/// Backends a digest can describe.
pub const MAX_BACKENDS: usize = 64;
const VERSION: u8 = 1;

/// What one member says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    /// Bumped by the leader at every change of the fenced or detached sets.
    pub epoch: u32,
    /// Backends this member's monitor sees down.
    pub down: u64,
    pub fenced: u64,
    pub detached: u64,
}

impl Digest {
    pub fn of(view: &ClusterView, epoch: u32) -> Self {
        let mask = |f: &dyn Fn(&crate::monitor::NodeState) -> bool| {
            view.nodes.iter().take(MAX_BACKENDS).enumerate().filter(|(_, n)| f(n)).fold(0u64, |m, (i, _)| m | (1 << i))
        };
        Digest { epoch, down: mask(&|n| !n.up), fenced: mask(&|n| n.fenced), detached: mask(&|n| n.detached) }
    }

    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = VERSION;
        b[1..5].copy_from_slice(&self.epoch.to_le_bytes());
        b[5..13].copy_from_slice(&self.down.to_le_bytes());
        b[13..21].copy_from_slice(&self.fenced.to_le_bytes());
        b[21..29].copy_from_slice(&self.detached.to_le_bytes());
        b
    }

    /// `None` for anything but a version-1 digest (a witness sends zeros).
    pub fn decode(b: &[u8; 32]) -> Option<Self> {
        if b[0] != VERSION {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        Some(Digest { epoch: u32::from_le_bytes(b[1..5].try_into().unwrap_or_default()), down: u64_at(5), fenced: u64_at(13), detached: u64_at(21) })
    }

    pub fn has(mask: u64, i: usize) -> bool {
        i < MAX_BACKENDS && mask & (1 << i) != 0
    }
}

/// Members (this one included) that see backend `i` down, against the quorum size.
pub fn seen_down(state: &WatchdogState, mine: &Digest, i: usize) -> (usize, usize) {
    let others = state
        .members
        .iter()
        .filter(|m| m.alive)
        .filter_map(|m| m.digest.as_ref().and_then(Digest::decode))
        .filter(|d| Digest::has(d.down, i))
        .count();
    (others + usize::from(Digest::has(mine.down, i)), state.quorum_size)
}

/// The leader's digest, when this member is not the leader and hears it.
pub fn leader_digest(state: &WatchdogState) -> Option<Digest> {
    let leader = state.leader.as_deref()?;
    if leader == state.name {
        return None;
    }
    state.members.iter().find(|m| m.name == leader && m.alive)?.digest.as_ref().and_then(Digest::decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::state::MemberState;

    fn member(name: &str, alive: bool, digest: Option<Digest>) -> MemberState {
        MemberState { name: name.into(), last_heard: None, alive, role: None, term: 1, priority: Some(0), digest: digest.map(|d| d.encode()) }
    }

    #[test]
    fn round_trip_and_zeros_are_no_digest() {
        let d = Digest { epoch: 7, down: 0b101, fenced: 1 << 63, detached: 2 };
        assert_eq!(Digest::decode(&d.encode()), Some(d));
        assert_eq!(Digest::decode(&[0; 32]), None);
        assert!(Digest::has(d.down, 2) && !Digest::has(d.down, 1) && !Digest::has(d.down, 64));
    }

    #[test]
    fn a_quorum_must_see_it_down_and_a_witness_never_counts() {
        let down0 = Digest { down: 1, ..Digest::default() };
        let state = WatchdogState {
            name: "a".into(),
            quorum_size: 2,
            members: vec![member("b", true, Some(Digest::default())), member("w", true, None)],
            ..WatchdogState::default()
        };
        assert_eq!(seen_down(&state, &down0, 0), (1, 2), "only this member sees it: quarantine, no failover");
        let mut both = state.clone();
        both.members[0] = member("b", true, Some(down0));
        assert_eq!(seen_down(&both, &down0, 0), (2, 2));
        let mut dead = both.clone();
        dead.members[0].alive = false;
        assert_eq!(seen_down(&dead, &down0, 0).0, 1, "a member not heard does not count");
    }

    #[test]
    fn followers_read_the_leaders_digest() {
        let d = Digest { epoch: 3, fenced: 1, ..Digest::default() };
        let mut state = WatchdogState { name: "b".into(), leader: Some("a".into()), members: vec![member("a", true, Some(d))], ..WatchdogState::default() };
        assert_eq!(leader_digest(&state), Some(d));
        state.leader = Some("b".into());
        assert_eq!(leader_digest(&state), None, "the leader follows nobody");
    }
}
