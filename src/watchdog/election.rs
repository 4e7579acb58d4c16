//! Membership, votes, leases and terms, as a state machine without I/O: heartbeats and
//! the time come in, actions (send, VIP up/down, announce) come out.
//!
//! **Votes.** Every member (witnesses included) gives its vote to at most one member at a
//! time, and says whom in each heartbeat, with the term, and with an acknowledgement
//! (boot, seq) of the last heartbeat it received from every peer. It keeps the vote
//! while it hears the member it voted for claiming that term; it moves it only after
//! `dead_after` without hearing it, or when that member's newer heartbeat says it no
//! longer claims the term (it stepped down, restarted or is leaving).
//!
//! **Lease.** A candidate counts a member's vote until `sent + min(dead_after, the
//! member's dead_after) − heartbeat_interval`, where `sent` is when the candidate sent
//! the heartbeat the vote acknowledges, on its own clock. It is leader while a quorum
//! (itself included) of such votes is current; the lease ends at the quorum-th latest
//! expiry. The voter cannot move that vote before `received + its dead_after` ≥
//! `sent + its dead_after`, one `heartbeat_interval` after the lease ended. Two quorums
//! share a member, so two leases never overlap (with `quorum = "half"` and an even number
//! of members they can: that is its documented risk). Only the sender's clock is used to
//! start the lease, so a heartbeat that sat in a socket buffer (the leader was paused)
//! extends nothing.
//!
//! **Elections.** A member with a free vote votes for the leader it hears (highest term),
//! else campaigns if it could lead, is better than every member it hears that could lead
//! or is campaigning (higher priority, then smaller name), and no member it hears votes
//! for someone else; else it votes for the best candidate. A campaign takes a new term
//! (greater than any term seen). A candidate yields to a leader and to a better
//! candidate; a leader yields to a leader of a higher term. A candidate without a lease
//! for `dead_after` gives up and does not campaign again for `dead_after`, so that voters
//! stuck on it let another member try. A running leader is not displaced by a better
//! member that comes back (each VIP move breaks every client connection).
//!
//! **Start-up.** For `dead_after` after start a member neither votes nor campaigns: a vote
//! it gave before a restart has expired by then, and it has heard its peers first. The
//! same after the member did not run for longer than `dead_after` (paused, starved): a
//! claim is dropped at once, and what waited in the socket is old news.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::packet::{Ack, DropReason, Heartbeat, Role};
use super::state::{DropCounts, MemberState, WatchdogState};

/// Heartbeats whose wall-clock time is further than this from ours are dropped as stale.
pub const WALL_WINDOW: Duration = Duration::from_secs(30);

/// A member that could not hold the VIP for a reason that may pass does not campaign for
/// this many `dead_after`.
pub(crate) const VIP_FAILURE_HOLD_OFF: u32 = 10;

/// The two clocks: monotonic for every timing, wall (Unix ms) for the replay window.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: u64,
}

impl Now {
    pub fn current() -> Now {
        Now { mono: Instant::now(), wall_ms: unix_ms(SystemTime::now()) }
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What the state machine needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub priority: i32,
    /// Votes only.
    pub witness: bool,
    pub peers: Vec<String>,
    /// Votes that make a quorum (this member included).
    pub quorum: usize,
    pub heartbeat_interval: Duration,
    pub dead_after: Duration,
    pub cluster: [u8; 8],
    /// This start's id (Unix µs); greater than any earlier start's.
    pub boot: u64,
}

/// What the caller must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove the VIP, before anything else (and before the next send).
    ReleaseVip,
    /// Send this heartbeat to every peer.
    Send(Heartbeat),
    /// Add the VIP and announce it.
    AcquireVip,
    /// Announce the VIP again (a member came back).
    Announce,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Vote {
    name: String,
    term: u64,
    boot: u64,
}

#[derive(Debug, Clone)]
struct Claim {
    term: u64,
    /// First sequence number sent in this claim; older acknowledgements do not count.
    start_seq: u64,
    lease_until: Option<Instant>,
    /// Since when there is no lease (campaign start, or lease lost).
    without_lease_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    No,
    Until(Instant),
    Forever,
}

#[derive(Debug, Clone)]
struct Heard {
    hb: Heartbeat,
    at: Instant,
}

#[derive(Debug, Clone)]
struct Peer {
    name: String,
    /// Replay guard: the newest (boot, seq) accepted.
    boot: u64,
    seq: u64,
    last: Option<Heard>,
    was_alive: bool,
}

/// One member's view of the election.
#[derive(Debug)]
pub struct Election {
    s: Settings,
    /// Start of the current start-up wait (start, or the end of a pause).
    started: Instant,
    peers: Vec<Peer>,
    seq: u64,
    /// When each recent sequence number was sent.
    sent: VecDeque<(u64, Instant)>,
    /// Claim term while claiming; otherwise the highest leader term heard.
    term: u64,
    /// Highest term seen anywhere.
    max_term: u64,
    role: Role,
    vote: Option<Vote>,
    claim: Option<Claim>,
    blocked: Blocked,
    digest: [u8; 32],
    leaving: bool,
    /// The start-up wait is over (it was seen by a poll).
    quiet_over: bool,
    /// After a campaign that found no quorum: no new one before this.
    campaign_hold: Option<Instant>,
    last_poll: Instant,
    next_send: Instant,
    send_now: bool,
    vip_wanted: bool,
    drops: DropCounts,
}

/// `a` is a better leader than `b`: higher priority, then smaller name.
fn better(a_priority: i32, a_name: &str, b_priority: i32, b_name: &str) -> bool {
    a_priority > b_priority || (a_priority == b_priority && a_name < b_name)
}

/// Orders heartbeats' senders by [`better`]: `Greater` when `a` is the better leader.
fn rank(a: &Heartbeat, b: &Heartbeat) -> std::cmp::Ordering {
    if better(a.priority, &a.name, b.priority, &b.name) {
        std::cmp::Ordering::Greater
    } else if better(b.priority, &b.name, a.priority, &a.name) {
        std::cmp::Ordering::Less
    } else {
        std::cmp::Ordering::Equal
    }
}

impl Election {
    pub fn new(s: Settings, now: Instant) -> Election {
        let peers = s
            .peers
            .iter()
            .map(|name| Peer { name: name.clone(), boot: 0, seq: 0, last: None, was_alive: false })
            .collect();
        Election {
            role: if s.witness { Role::Witness } else { Role::Follower },
            s,
            started: now,
            peers,
            seq: 0,
            sent: VecDeque::new(),
            term: 0,
            max_term: 0,
            vote: None,
            claim: None,
            blocked: Blocked::No,
            digest: [0; 32],
            leaving: false,
            quiet_over: false,
            campaign_hold: None,
            last_poll: now,
            next_send: now,
            send_now: true,
            vip_wanted: false,
            drops: DropCounts::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }

    /// Sets the cluster-state digest carried from the next heartbeat on.
    pub fn set_digest(&mut self, digest: [u8; 32]) {
        self.digest = digest;
    }

    /// The lease end while leader.
    pub fn lease_until(&self) -> Option<Instant> {
        self.claim.as_ref().and_then(|c| c.lease_until).filter(|_| self.role == Role::Leader)
    }

    fn alive(&self, p: &Peer, now: Instant) -> bool {
        p.last.as_ref().is_some_and(|h| now < h.at + self.s.dead_after)
    }

    /// Heartbeats of the peers heard within `dead_after`.
    fn alive_heartbeats(&self, now: Instant) -> impl Iterator<Item = &Heartbeat> {
        self.peers.iter().filter(move |p| self.alive(p, now)).filter_map(|p| p.last.as_ref().map(|h| &h.hb))
    }

    /// Members heard within `dead_after`, this one included.
    pub fn reach(&self, now: Instant) -> usize {
        1 + self.peers.iter().filter(|p| self.alive(p, now)).count()
    }

    fn quiet(&self, now: Instant) -> bool {
        now < self.started + self.s.dead_after
    }

    fn eligible(&self, now: Instant) -> bool {
        !self.s.witness
            && match self.blocked {
                Blocked::No => true,
                Blocked::Until(t) => now >= t,
                Blocked::Forever => false,
            }
    }

    /// Could lead now, or once the start-up wait is over (what heartbeats say, so that a
    /// better member still in its wait is waited for).
    fn can_lead(&self, now: Instant) -> bool {
        self.eligible(now)
            && !self.leaving
            && self.campaign_hold.is_none_or(|t| now >= t)
            && self.reach(now) >= self.s.quorum
    }

    /// Counts a datagram dropped before it reached [`receive`](Self::receive).
    pub fn count_drop(&mut self, reason: DropReason) -> u64 {
        self.drops.add(reason)
    }

    /// Takes an authenticated heartbeat; drops (and counts) unknown senders, other
    /// clusters, replays and stale ones.
    pub fn receive(&mut self, now: Now, hb: Heartbeat) -> Result<(), DropReason> {
        let r = self.accept(now, hb);
        if let Err(reason) = r {
            self.drops.add(reason);
        }
        r
    }

    fn accept(&mut self, now: Now, hb: Heartbeat) -> Result<(), DropReason> {
        if hb.name == self.s.name {
            return Err(DropReason::UnknownMember);
        }
        let i = self.peers.iter().position(|p| p.name == hb.name).ok_or(DropReason::UnknownMember)?;
        if hb.cluster != self.s.cluster {
            return Err(DropReason::WrongCluster);
        }
        if now.wall_ms.abs_diff(hb.wall_ms) > WALL_WINDOW.as_millis() as u64 {
            return Err(DropReason::Stale);
        }
        let p = &mut self.peers[i];
        if hb.boot == p.boot {
            if hb.seq <= p.seq {
                return Err(DropReason::Replayed);
            }
        } else if hb.boot < p.boot {
            // An earlier start of a member that is still sending: a replay. Accepted once
            // the member has been silent for the whole window (its clock went back).
            let silent = p.last.as_ref().is_none_or(|h| now.mono >= h.at + WALL_WINDOW);
            if !silent {
                return Err(DropReason::Stale);
            }
        }
        if p.boot != 0 && hb.boot != p.boot {
            tracing::info!(member = %p.name, "watchdog member restarted");
        }
        p.boot = hb.boot;
        p.seq = hb.seq;
        self.max_term = self.max_term.max(hb.term);
        if hb.role == Role::Leader && self.claim.is_none() && hb.term > self.term {
            self.term = hb.term;
        }
        p.last = Some(Heard { hb, at: now.mono });
        Ok(())
    }

    /// The VIP could not be added: stop leading; `permanent` (no permission) never lead
    /// again, otherwise not for a while.
    pub fn vip_failed(&mut self, now: Instant, permanent: bool) {
        self.blocked = if permanent {
            Blocked::Forever
        } else {
            Blocked::Until(now + self.s.dead_after * VIP_FAILURE_HOLD_OFF)
        };
    }

    /// Re-evaluates everything at `now`; returns what to do, in order.
    pub fn poll(&mut self, now: Now) -> Vec<Action> {
        let t = now.mono;
        let gap = t.saturating_duration_since(self.last_poll);
        self.last_poll = t;
        if gap > self.s.dead_after {
            // Paused or starved for longer than any lease: whatever the votes say (with a
            // quorum of one there are none), the others may have moved on. What is queued in
            // the socket is old news, so wait as at start before voting or campaigning.
            tracing::warn!(gap = ?gap, "watchdog: this node did not run for longer than dead_after");
            if self.claim.is_some() {
                self.step_down("did not run for longer than dead_after");
            }
            self.started = t;
        }
        self.quiet_over = !self.quiet(t);
        self.maintain_claim(t);
        if self.claim.is_none() {
            self.maintain_vote(t);
            if self.vote.is_none() {
                self.choose(t);
                if self.claim.is_some() {
                    self.maintain_claim(t);
                }
            }
        }
        let mut actions = Vec::new();
        let want_vip = self.role == Role::Leader;
        if !want_vip && self.vip_wanted {
            self.vip_wanted = false;
            actions.push(Action::ReleaseVip);
        }
        let mut came_back = false;
        for i in 0..self.peers.len() {
            let alive = self.alive(&self.peers[i], t);
            let p = &mut self.peers[i];
            if alive != p.was_alive {
                if alive {
                    tracing::info!(member = %p.name, "watchdog member heard");
                    came_back = true;
                } else {
                    tracing::warn!(member = %p.name, dead_after = ?self.s.dead_after, "watchdog member not heard within dead_after");
                }
                p.was_alive = alive;
            }
        }
        if self.send_now || t >= self.next_send {
            let hb = self.heartbeat(now);
            actions.push(Action::Send(hb));
        }
        if want_vip && !self.vip_wanted {
            self.vip_wanted = true;
            actions.push(Action::AcquireVip);
        } else if want_vip && came_back {
            actions.push(Action::Announce);
        }
        actions
    }

    /// Shutting down: stop leading and voting, release the VIP, say so.
    pub fn leave(&mut self, now: Now) -> Vec<Action> {
        self.leaving = true;
        if self.claim.is_some() {
            self.step_down("shutting down");
        }
        self.vote = None;
        let mut actions = Vec::new();
        if self.vip_wanted {
            self.vip_wanted = false;
            actions.push(Action::ReleaseVip);
        }
        actions.push(Action::Send(self.heartbeat(now)));
        actions
    }

    /// When [`poll`](Self::poll) must run next, at the latest.
    pub fn next_wakeup(&self) -> Instant {
        let d = self.s.dead_after;
        let mut w = self.next_send;
        if let Some(c) = &self.claim {
            if let Some(l) = c.lease_until {
                w = w.min(l);
            }
            if let Some(since) = c.without_lease_since {
                w = w.min(since + d);
            }
        }
        if let Some(v) = &self.vote {
            if let Some(h) = self.peers.iter().find(|p| p.name == v.name).and_then(|p| p.last.as_ref()) {
                w = w.min(h.at + d);
            }
        }
        if !self.quiet_over {
            w = w.min(self.started + d);
        }
        if let Some(t) = self.campaign_hold {
            if self.claim.is_none() && t > self.last_poll {
                w = w.min(t);
            }
        }
        w
    }

    fn step_down(&mut self, reason: &str) {
        if let Some(c) = self.claim.take() {
            tracing::info!(term = c.term, reason, was = self.role.as_str(), "watchdog: stepping down");
        }
        self.vote = None;
        self.role = if self.s.witness { Role::Witness } else { Role::Follower };
        self.send_now = true;
    }

    /// The lease the current votes give a claim of `term`: the quorum-th latest expiry.
    fn lease(&self, term: u64, start_seq: u64, now: Instant) -> Option<Instant> {
        let need = self.s.quorum.saturating_sub(1);
        if need == 0 {
            return Some(now + Duration::from_secs(3600));
        }
        let mut expiries: Vec<Instant> = Vec::new();
        for p in &self.peers {
            let Some(h) = &p.last else { continue };
            let votes_for_us = h.hb.vote.as_ref().is_some_and(|(n, vt)| *n == self.s.name && *vt == term);
            if !votes_for_us {
                continue;
            }
            let ack = h.hb.acks.iter().find(|a| a.name == self.s.name && a.boot == self.s.boot && a.seq >= start_seq);
            let Some(sent) = ack.and_then(|a| self.sent_at(a.seq)) else { continue };
            let their_dead_after = Duration::from_millis(u64::from(h.hb.dead_after_ms));
            let lease = self.s.dead_after.min(their_dead_after).saturating_sub(self.s.heartbeat_interval);
            expiries.push(sent + lease);
        }
        if expiries.len() < need {
            return None;
        }
        expiries.sort_unstable_by(|a, b| b.cmp(a));
        Some(expiries[need - 1])
    }

    fn sent_at(&self, seq: u64) -> Option<Instant> {
        self.sent.iter().rev().find(|(s, _)| *s == seq).map(|(_, t)| *t)
    }

    fn maintain_claim(&mut self, now: Instant) {
        let Some(claim) = &self.claim else { return };
        let (term, start_seq) = (claim.term, claim.start_seq);
        let lease = self.lease(term, start_seq, now).filter(|l| *l > now);
        let d = self.s.dead_after;
        if let Some(claim) = &mut self.claim {
            claim.lease_until = lease;
            if lease.is_some() {
                claim.without_lease_since = None;
            } else if claim.without_lease_since.is_none() {
                claim.without_lease_since = Some(now);
            }
        }
        match (lease.is_some(), self.role) {
            (true, Role::Candidate) => {
                self.role = Role::Leader;
                self.send_now = true;
                tracing::info!(term, "watchdog: leader (a quorum votes for this node)");
            }
            (false, Role::Leader) => {
                self.role = Role::Candidate;
                self.send_now = true;
                tracing::warn!(term, "watchdog: lost the quorum's votes; releasing the VIP");
            }
            _ => {}
        }
        if let Some(since) = self.claim.as_ref().and_then(|c| c.without_lease_since) {
            if now >= since + d {
                self.step_down("no quorum voted for this node within dead_after");
                // Let another member try: its voters may be stuck on this one.
                self.campaign_hold = Some(now + d);
                return;
            }
        }
        if !self.eligible(now) {
            self.step_down("cannot hold the VIP");
            return;
        }
        let me_leader = self.role == Role::Leader;
        let yield_to = self.alive_heartbeats(now).find(|hb| {
            if !hb.role.is_claiming() || hb.leaving {
                return false;
            }
            let other_better = better(hb.priority, &hb.name, self.s.priority, &self.s.name);
            if me_leader {
                hb.role == Role::Leader && (hb.term > term || (hb.term == term && other_better))
            } else {
                hb.role == Role::Leader || other_better
            }
        });
        if let Some(other) = yield_to {
            let leader_term = (other.role == Role::Leader).then_some(other.term);
            let reason = if leader_term.is_some() { "another leader" } else { "a better candidate" };
            tracing::info!(other = %other.name, other_term = other.term, "watchdog: yielding to {reason}");
            self.step_down("yielding");
            if let Some(t) = leader_term {
                self.term = self.term.max(t);
            }
        }
    }

    fn maintain_vote(&mut self, now: Instant) {
        let Some(v) = &self.vote else { return };
        let d = self.s.dead_after;
        let keep = self.peers.iter().find(|p| p.name == v.name).and_then(|p| p.last.as_ref()).is_some_and(|h| {
            now < h.at + d && h.hb.boot == v.boot && h.hb.term == v.term && h.hb.role.is_claiming() && !h.hb.leaving
        });
        if !keep {
            tracing::debug!(member = %v.name, term = v.term, "watchdog: vote released");
            self.vote = None;
            self.send_now = true;
        }
    }

    fn choose(&mut self, now: Instant) {
        if self.quiet(now) || self.leaving {
            return;
        }
        let term = self.term;
        // A leader heard is followed whatever its term (it holds a lease); a candidate only
        // if it knows the latest leader's term.
        let claimants: Vec<&Heartbeat> = self
            .alive_heartbeats(now)
            .filter(|hb| hb.role.is_claiming() && !hb.leaving && (hb.role == Role::Leader || hb.term >= term))
            .collect();
        let leader = claimants
            .iter()
            .filter(|hb| hb.role == Role::Leader)
            .max_by(|a, b| a.term.cmp(&b.term).then_with(|| rank(a, b)));
        if let Some(l) = leader {
            let vote = Vote { name: l.name.clone(), term: l.term, boot: l.boot };
            self.cast(vote);
            return;
        }
        let (p, n) = (self.s.priority, self.s.name.as_str());
        let best_of_all = self
            .alive_heartbeats(now)
            .filter(|hb| (hb.can_lead || hb.role.is_claiming()) && !hb.leaving)
            .all(|hb| better(p, n, hb.priority, &hb.name));
        // A member that votes for someone else will not vote for us before it lets go.
        let votes_elsewhere = self.alive_heartbeats(now).any(|hb| hb.vote.as_ref().is_some_and(|(v, _)| *v != self.s.name));
        if self.can_lead(now) && best_of_all && !votes_elsewhere {
            self.campaign(now);
            return;
        }
        let candidate = claimants
            .iter()
            .filter(|hb| hb.role == Role::Candidate)
            .max_by(|a, b| rank(a, b));
        if let Some(c) = candidate {
            let vote = Vote { name: c.name.clone(), term: c.term, boot: c.boot };
            self.cast(vote);
        }
    }

    fn cast(&mut self, vote: Vote) {
        tracing::debug!(member = %vote.name, term = vote.term, "watchdog: vote");
        self.vote = Some(vote);
        self.send_now = true;
    }

    fn campaign(&mut self, now: Instant) {
        self.max_term = self.max_term.max(self.term) + 1;
        self.term = self.max_term;
        self.claim = Some(Claim {
            term: self.term,
            start_seq: self.seq + 1,
            lease_until: None,
            without_lease_since: Some(now),
        });
        self.vote = Some(Vote { name: self.s.name.clone(), term: self.term, boot: self.s.boot });
        self.role = Role::Candidate;
        self.send_now = true;
        tracing::info!(term = self.term, "watchdog: campaigning for leader");
    }

    fn heartbeat(&mut self, now: Now) -> Heartbeat {
        let t = now.mono;
        self.seq += 1;
        self.sent.push_back((self.seq, t));
        let keep = 2 * (self.s.dead_after + self.s.heartbeat_interval);
        while self.sent.len() > 4096 || self.sent.front().is_some_and(|(_, at)| *at + keep < t) {
            self.sent.pop_front();
        }
        self.next_send = t + self.s.heartbeat_interval;
        self.send_now = false;
        Heartbeat {
            name: self.s.name.clone(),
            cluster: self.s.cluster,
            boot: self.s.boot,
            seq: self.seq,
            wall_ms: now.wall_ms,
            term: self.term,
            role: self.role,
            can_lead: self.can_lead(t),
            reach_quorum: self.reach(t) >= self.s.quorum,
            leaving: self.leaving,
            priority: self.s.priority,
            dead_after_ms: self.s.dead_after.as_millis().min(u128::from(u32::MAX)) as u32,
            vote: self.vote.as_ref().map(|v| (v.name.clone(), v.term)),
            digest: self.digest,
            acks: self
                .peers
                .iter()
                .filter(|p| p.boot != 0)
                .map(|p| Ack { name: p.name.clone(), boot: p.boot, seq: p.seq })
                .collect(),
        }
    }

    /// The published view.
    pub fn snapshot(&self, now: Instant, vip_held: bool) -> WatchdogState {
        let leader = if self.role == Role::Leader {
            Some(self.s.name.clone())
        } else {
            self.alive_heartbeats(now)
                .filter(|hb| hb.role == Role::Leader && !hb.leaving)
                .max_by_key(|hb| hb.term)
                .map(|hb| hb.name.clone())
        };
        WatchdogState {
            name: self.s.name.clone(),
            role: self.role,
            term: self.term,
            leader,
            lease_until: self.lease_until(),
            quorum: self.reach(now) >= self.s.quorum,
            quorum_size: self.s.quorum,
            vip_held,
            members: self
                .peers
                .iter()
                .map(|p| MemberState {
                    name: p.name.clone(),
                    last_heard: p.last.as_ref().map(|h| h.at),
                    alive: self.alive(p, now),
                    role: p.last.as_ref().map(|h| h.hb.role),
                    term: p.last.as_ref().map_or(0, |h| h.hb.term),
                    priority: p.last.as_ref().map(|h| h.hb.priority),
                    digest: p.last.as_ref().map(|h| h.hb.digest),
                })
                .collect(),
            drops: self.drops,
        }
    }
}

#[cfg(test)]
#[path = "election_tests.rs"]
mod tests;
