//! What the watchdog publishes: the node's role, term, leader, members and counters.

use std::time::Instant;

use super::packet::{DropReason, Role};

/// Datagrams dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub malformed: u64,
    pub bad_mac: u64,
    pub unknown_member: u64,
    pub wrong_cluster: u64,
    pub replayed: u64,
    pub stale: u64,
}

impl DropCounts {
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Malformed => self.malformed,
            DropReason::BadMac => self.bad_mac,
            DropReason::UnknownMember => self.unknown_member,
            DropReason::WrongCluster => self.wrong_cluster,
            DropReason::Replayed => self.replayed,
            DropReason::Stale => self.stale,
        }
    }

    /// Counts one drop; returns the new count for that reason.
    pub fn add(&mut self, reason: DropReason) -> u64 {
        let c = match reason {
            DropReason::Malformed => &mut self.malformed,
            DropReason::BadMac => &mut self.bad_mac,
            DropReason::UnknownMember => &mut self.unknown_member,
            DropReason::WrongCluster => &mut self.wrong_cluster,
            DropReason::Replayed => &mut self.replayed,
            DropReason::Stale => &mut self.stale,
        };
        *c += 1;
        *c
    }

    pub fn total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.get(*r)).sum()
    }
}

/// One peer as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub name: String,
    /// When its last accepted heartbeat arrived.
    pub last_heard: Option<Instant>,
    /// Heard within `dead_after`.
    pub alive: bool,
    /// What its last heartbeat said.
    pub role: Option<Role>,
    pub term: u64,
    pub priority: Option<i32>,
    pub digest: Option<[u8; 32]>,
}

/// A snapshot of the watchdog, published on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogState {
    pub name: String,
    pub role: Role,
    pub term: u64,
    /// The leader this node knows of (itself included), if any.
    pub leader: Option<String>,
    /// While leader: the end of the lease the quorum's votes give.
    pub lease_until: Option<Instant>,
    /// This node hears a quorum (itself included).
    pub quorum: bool,
    /// Votes that make a quorum.
    pub quorum_size: usize,
    /// The VIP is on this node's interface (as far as this node did it).
    pub vip_held: bool,
    /// The peers (not this node).
    pub members: Vec<MemberState>,
    pub drops: DropCounts,
}

impl WatchdogState {
    /// Leader with a lease that has not run out.
    pub fn is_leader_with_quorum(&self, now: Instant) -> bool {
        self.role == Role::Leader && self.lease_until.is_some_and(|l| l > now)
    }
}

impl Default for WatchdogState {
    fn default() -> Self {
        WatchdogState {
            name: String::new(),
            role: Role::Follower,
            term: 0,
            leader: None,
            lease_until: None,
            quorum: false,
            quorum_size: 0,
            vip_held: false,
            members: Vec::new(),
            drops: DropCounts::default(),
        }
    }
}
