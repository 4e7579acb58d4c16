//! The election state machine in a simulated network: members, links, crashes, pauses,
//! all on a simulated clock. After every step the simulation checks the safety
//! property: no two leases overlap (crashed and paused members included, since their
//! votes stay out until they expire), and no two running members hold the VIP.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;
use crate::watchdog::config::QuorumMode;
use crate::watchdog::packet::cluster_fingerprint;

const H: Duration = Duration::from_millis(200);
const D: Duration = Duration::from_secs(1);
const STEP: Duration = Duration::from_millis(5);
const WALL0: u64 = 1_700_000_000_000;

struct Spec {
    name: &'static str,
    priority: i32,
    witness: bool,
}

fn node(name: &'static str, priority: i32) -> Spec {
    Spec { name, priority, witness: false }
}

fn witness(name: &'static str) -> Spec {
    Spec { name, priority: 100, witness: true }
}

struct Node {
    name: &'static str,
    e: Election,
    up: bool,
    paused: bool,
    inbox: VecDeque<(Instant, Heartbeat)>,
    vip: bool,
    /// The VIP cannot be added: `Some(permanent)`.
    vip_fails: Option<bool>,
    announces: usize,
    acquisitions: usize,
    /// Actions of the first poll after a resume.
    after_resume: Option<Vec<Action>>,
    watch_resume: bool,
}

struct Sim {
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
    specs: Vec<Spec>,
    quorum: QuorumMode,
    /// link[i][j]: what i sends reaches j.
    link: Vec<Vec<bool>>,
    delay: Duration,
    /// Probability (per mille) that a datagram is lost; deterministic generator.
    loss_permille: u64,
    rng: u64,
    boots: u64,
    /// Allow two leases (the "half" quorum mode's documented split brain).
    allow_split: bool,
    /// Count the leases of crashed members too (not with a quorum of 1, where a lease
    /// needs no vote).
    check_crashed: bool,
}

impl Sim {
    fn new(specs: Vec<Spec>) -> Sim {
        Sim::with_quorum(specs, QuorumMode::Majority)
    }

    fn with_quorum(specs: Vec<Spec>, quorum: QuorumMode) -> Sim {
        let t0 = Instant::now();
        let n = specs.len();
        let mut sim = Sim {
            t0,
            now: t0,
            nodes: Vec::new(),
            specs,
            quorum,
            link: vec![vec![true; n]; n],
            delay: Duration::from_millis(1),
            loss_permille: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            boots: 1_000,
            allow_split: false,
            check_crashed: quorum.size(n) > 1,
        };
        for i in 0..n {
            let e = sim.machine(i);
            let name = sim.specs[i].name;
            sim.nodes.push(Node {
                name,
                e,
                up: true,
                paused: false,
                inbox: VecDeque::new(),
                vip: false,
                vip_fails: None,
                announces: 0,
                acquisitions: 0,
                after_resume: None,
                watch_resume: false,
            });
        }
        sim
    }

    fn machine(&mut self, i: usize) -> Election {
        let names: Vec<&str> = self.specs.iter().map(|s| s.name).collect();
        let s = &self.specs[i];
        self.boots += 1;
        Election::new(
            Settings {
                name: s.name.to_string(),
                priority: s.priority,
                witness: s.witness,
                peers: names.iter().filter(|n| **n != s.name).map(|n| n.to_string()).collect(),
                quorum: self.quorum.size(names.len()),
                heartbeat_interval: H,
                dead_after: D,
                cluster: cluster_fingerprint(&names, self.quorum),
                boot: self.boots,
            },
            self.now,
        )
    }

    fn clock(&self) -> Now {
        Now { mono: self.now, wall_ms: WALL0 + (self.now - self.t0).as_millis() as u64 }
    }

    fn idx(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).expect("node name")
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        let now = self.clock();
        if self.nodes[i].watch_resume {
            self.nodes[i].watch_resume = false;
            self.nodes[i].after_resume = Some(actions.clone());
        }
        for a in actions {
            match a {
                Action::ReleaseVip => self.nodes[i].vip = false,
                Action::AcquireVip => match self.nodes[i].vip_fails {
                    Some(permanent) => self.nodes[i].e.vip_failed(now.mono, permanent),
                    None => {
                        self.nodes[i].vip = true;
                        self.nodes[i].acquisitions += 1;
                    }
                },
                Action::Announce => self.nodes[i].announces += 1,
                Action::Send(hb) => {
                    for j in 0..self.nodes.len() {
                        if j == i || !self.link[i][j] || !self.nodes[j].up {
                            continue;
                        }
                        if self.loss_permille > 0 && self.random() % 1000 < self.loss_permille {
                            continue;
                        }
                        let jitter = Duration::from_micros(self.random() % 3000);
                        let at = self.now + self.delay + jitter;
                        self.nodes[j].inbox.push_back((at, hb.clone()));
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up || self.nodes[i].paused {
                continue;
            }
            let mut polled = false;
            while self.nodes[i].inbox.front().is_some_and(|(at, _)| *at <= self.now) {
                let Some((_, hb)) = self.nodes[i].inbox.pop_front() else { break };
                let now = self.clock();
                let _ = self.nodes[i].e.receive(now, hb);
                let actions = self.nodes[i].e.poll(now);
                self.apply(i, actions);
                polled = true;
            }
            if !polled && self.now >= self.nodes[i].e.next_wakeup() || self.nodes[i].watch_resume {
                let now = self.clock();
                let actions = self.nodes[i].e.poll(now);
                self.apply(i, actions);
            }
        }
        self.check();
    }

    /// The safety property, after every step.
    fn check(&self) {
        if self.allow_split {
            return;
        }
        let leases: Vec<(&str, Instant)> = self
            .nodes
            .iter()
            .filter(|n| n.up || self.check_crashed)
            .filter_map(|n| n.e.lease_until().filter(|l| *l > self.now).map(|l| (n.name, l)))
            .collect();
        assert!(leases.len() <= 1, "two leases at {:?}: {leases:?}", self.now - self.t0);
        let holders: Vec<&str> = self.nodes.iter().filter(|n| n.up && !n.paused && n.vip).map(|n| n.name).collect();
        assert!(holders.len() <= 1, "two VIP holders at {:?}: {holders:?}", self.now - self.t0);
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Steps until `cond` holds; the time it took.
    fn run_until(&mut self, max: Duration, mut cond: impl FnMut(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        while self.now - start <= max {
            if cond(self) {
                return Some(self.now - start);
            }
            self.step();
        }
        None
    }

    /// Running members that lead with a current lease.
    fn leaders(&self) -> Vec<&'static str> {
        self.nodes
            .iter()
            .filter(|n| n.up && !n.paused && n.e.snapshot(self.now, n.vip).is_leader_with_quorum(self.now))
            .map(|n| n.name)
            .collect()
    }

    fn leader(&self) -> Option<&'static str> {
        let l = self.leaders();
        (l.len() == 1).then(|| l[0])
    }

    fn holder(&self) -> Option<&'static str> {
        self.nodes.iter().find(|n| n.up && n.vip).map(|n| n.name)
    }

    fn wait_leader(&mut self, max: Duration) -> &'static str {
        self.run_until(max, |s| s.leader().is_some() && s.holder() == s.leader()).expect("a leader within the time");
        self.leader().expect("leader")
    }

    fn crash(&mut self, name: &str) {
        let i = self.idx(name);
        self.nodes[i].up = false;
        self.nodes[i].inbox.clear();
    }

    fn restart(&mut self, name: &str) {
        let i = self.idx(name);
        let e = self.machine(i);
        let n = &mut self.nodes[i];
        n.e = e;
        n.up = true;
        n.paused = false;
        n.vip = false;
        n.inbox.clear();
    }

    fn pause(&mut self, name: &str) {
        let i = self.idx(name);
        self.nodes[i].paused = true;
    }

    fn resume(&mut self, name: &str) {
        let i = self.idx(name);
        self.nodes[i].paused = false;
        self.nodes[i].watch_resume = true;
        // Datagrams queued while paused arrive now.
        let now = self.now;
        for (at, _) in self.nodes[i].inbox.iter_mut() {
            *at = (*at).max(now);
        }
    }

    /// Cuts `name` off from every other member (both directions).
    fn isolate(&mut self, name: &str) {
        let i = self.idx(name);
        for j in 0..self.nodes.len() {
            if j != i {
                self.link[i][j] = false;
                self.link[j][i] = false;
            }
        }
    }

    fn heal(&mut self) {
        for row in &mut self.link {
            row.iter_mut().for_each(|l| *l = true);
        }
    }

    fn state(&self, name: &str) -> WatchdogState {
        let n = &self.nodes[self.idx(name)];
        n.e.snapshot(self.now, n.vip)
    }
}

fn three() -> Sim {
    Sim::new(vec![node("a", 30), node("b", 20), node("c", 10)])
}

#[test]
fn three_members_elect_the_highest_priority() {
    let mut sim = three();
    let took = sim.run_until(Duration::from_secs(5), |s| s.leader().is_some()).unwrap();
    assert_eq!(sim.leader(), Some("a"));
    // Nobody campaigns during the start-up wait of dead_after.
    assert!(took >= D, "{took:?}");
    assert!(took < D + 3 * H, "{took:?}");
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.leader(), Some("a"));
    assert_eq!(sim.holder(), Some("a"));
    assert_eq!(sim.nodes[0].acquisitions, 1, "the VIP stays put");
    let s = sim.state("b");
    assert_eq!(s.leader.as_deref(), Some("a"));
    assert_eq!(s.role, Role::Follower);
    assert!(s.quorum);
    assert_eq!(s.term, sim.state("a").term);
    assert!(s.members.iter().all(|m| m.alive && m.last_heard.is_some()));
}

#[test]
fn equal_priorities_pick_the_smallest_name() {
    let mut sim = Sim::new(vec![node("c", 5), node("b", 5), node("a", 5)]);
    assert_eq!(sim.wait_leader(Duration::from_secs(5)), "a");
    let mut sim = Sim::new(vec![node("c", 5), node("b", 6), node("a", 5)]);
    assert_eq!(sim.wait_leader(Duration::from_secs(5)), "b");
}

#[test]
fn crash_of_the_leader_elects_the_next_best_with_a_higher_term() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    let term = sim.state("a").term;
    sim.crash("a");
    let took = sim.run_until(Duration::from_secs(5), |s| s.leader() == Some("b") && s.holder() == Some("b")).unwrap();
    assert!(took >= D - H && took <= D + 2 * H, "VIP moved after {took:?}");
    assert!(sim.state("b").term > term);
    sim.run_for(H);
    assert_eq!(sim.state("c").leader.as_deref(), Some("b"));
    // The restarted member does not take the lead back (no preemption) and follows.
    sim.restart("a");
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.leader(), Some("b"));
    assert_eq!(sim.state("a").leader.as_deref(), Some("b"));
    assert_eq!(sim.state("a").term, sim.state("b").term);
}

#[test]
fn losing_every_follower_releases_the_vip_and_nobody_leads() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    sim.crash("b");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.leader(), Some("a"), "a and c are a quorum");
    sim.crash("c");
    let took = sim.run_until(Duration::from_secs(3), |s| s.holder().is_none()).unwrap();
    assert!(took <= D, "released after {took:?}");
    sim.run_for(Duration::from_secs(5));
    assert!(sim.leaders().is_empty());
    assert_eq!(sim.state("a").role, Role::Follower);
    assert!(!sim.state("a").quorum);
}

#[test]
fn isolated_leader_steps_down_before_the_majority_elects() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    let cut_at = sim.now;
    sim.isolate("a");
    // `check` after every step proves the two leases never overlap.
    sim.run_until(Duration::from_secs(5), |s| s.holder() == Some("b")).unwrap();
    let moved = sim.now - cut_at;
    assert!(!sim.nodes[0].vip, "the isolated leader let go");
    assert!(moved <= D + 2 * H, "{moved:?}");
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.leader(), Some("b"));
    assert!(sim.state("a").role != Role::Leader);
    assert!(!sim.state("a").quorum);
    // Heal: still exactly one leader; a follows b's higher term; b announces again.
    let announces = sim.nodes[1].announces;
    sim.heal();
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.leader(), Some("b"));
    assert_eq!(sim.state("a").leader.as_deref(), Some("b"));
    assert_eq!(sim.state("a").term, sim.state("b").term);
    assert!(sim.nodes[1].announces > announces, "the leader announces the VIP again when a member comes back");
}

#[test]
fn isolated_follower_changes_nothing() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    let term = sim.state("a").term;
    sim.isolate("c");
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.leader(), Some("a"));
    assert!(sim.state("c").role != Role::Leader && !sim.nodes[2].vip);
    sim.heal();
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.leader(), Some("a"));
    assert_eq!(sim.state("a").term, term, "no election happened");
}

#[test]
fn one_way_links_never_give_two_leases() {
    // The leader's heartbeats are lost, but it still hears the others.
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    sim.link[0][1] = false;
    sim.link[0][2] = false;
    sim.run_until(Duration::from_secs(5), |s| s.holder() == Some("b")).unwrap();
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.leader(), Some("b"));
    // The leader hears nobody, but its heartbeats arrive.
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    sim.link[1][0] = false;
    sim.link[2][0] = false;
    sim.run_until(Duration::from_secs(5), |s| s.leader().is_some_and(|l| l != "a")).unwrap();
    sim.run_for(Duration::from_secs(10));
    let l = sim.leaders();
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(!sim.nodes[0].vip);
}

#[test]
fn one_way_links_around_the_best_member_do_not_stall_the_election() {
    // a hears b and c (a quorum with itself) but they do not hear it; d and e hear a and
    // vote for it, but a never gets their votes. Campaigns that find no quorum hold off,
    // so another member gets to lead.
    let mut sim = Sim::new(vec![node("a", 50), node("b", 40), node("c", 30), node("d", 20), node("e", 10)]);
    for (from, to) in [(0, 1), (0, 2), (3, 0), (4, 0)] {
        sim.link[from][to] = false;
    }
    sim.run_until(Duration::from_secs(15), |s| s.leader().is_some()).expect("someone leads");
    let l = sim.leader();
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.leader(), l, "and keeps leading");
    assert_ne!(l, Some("a"));
}

#[test]
fn paused_leader_releases_before_sending_anything_and_follows() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    let old_term = sim.state("a").term;
    sim.pause("a");
    sim.run_until(Duration::from_secs(5), |s| s.leader() == Some("b")).unwrap();
    sim.run_for(Duration::from_secs(3));
    sim.resume("a");
    sim.step();
    let first = sim.nodes[0].after_resume.clone().expect("a polled after the resume");
    let release = first.iter().position(|a| *a == Action::ReleaseVip).expect("the VIP is released at once");
    let send = first.iter().position(|a| matches!(a, Action::Send(_)));
    assert!(send.is_none_or(|s| s > release), "{first:?}");
    if let Some(Action::Send(hb)) = send.map(|s| &first[s]) {
        assert_ne!(hb.role, Role::Leader);
    }
    assert!(!sim.nodes[0].vip);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.leader(), Some("b"));
    assert!(sim.state("a").term > old_term, "the old leader took the new term");
    assert_eq!(sim.state("a").leader.as_deref(), Some("b"));
}

#[test]
fn short_pause_keeps_the_leader() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    let term = sim.state("a").term;
    sim.pause("a");
    sim.run_for(H * 2);
    sim.resume("a");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.leader(), Some("a"));
    assert_eq!(sim.state("a").term, term);
}

#[test]
fn hearing_a_higher_term_leader_steps_down() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    let a = sim.idx("a");
    let term = sim.state("a").term;
    let now = sim.clock();
    let hb = Heartbeat {
        name: "b".into(),
        cluster: sim.nodes[a].e.settings().cluster,
        boot: u64::MAX / 2,
        seq: 1,
        wall_ms: now.wall_ms,
        term: term + 5,
        role: Role::Leader,
        can_lead: true,
        reach_quorum: true,
        leaving: false,
        priority: 20,
        dead_after_ms: 1000,
        vote: Some(("b".into(), term + 5)),
        digest: [0; 32],
        acks: vec![],
    };
    sim.nodes[a].e.receive(now, hb).unwrap();
    let actions = sim.nodes[a].e.poll(now);
    assert_eq!(actions.first(), Some(&Action::ReleaseVip), "{actions:?}");
    assert_eq!(sim.nodes[a].e.role(), Role::Follower);
    assert_eq!(sim.nodes[a].e.term(), term + 5);
}

#[test]
fn witness_votes_but_never_leads() {
    let mut sim = Sim::new(vec![node("a", 10), node("b", 5), witness("w")]);
    assert_eq!(sim.wait_leader(Duration::from_secs(5)), "a");
    sim.crash("a");
    sim.run_until(Duration::from_secs(5), |s| s.leader() == Some("b") && s.holder() == Some("b")).unwrap();
    sim.crash("b");
    sim.run_for(Duration::from_secs(5));
    assert!(sim.leaders().is_empty(), "a witness alone never leads");
    assert_eq!(sim.state("w").role, Role::Witness);
    // a comes back: with the witness's vote it leads.
    sim.restart("a");
    sim.run_until(Duration::from_secs(5), |s| s.leader() == Some("a")).unwrap();
}

#[test]
fn two_nodes_and_a_witness_survive_any_one_loss() {
    for lost in ["a", "b", "w"] {
        let mut sim = Sim::new(vec![node("a", 10), node("b", 5), witness("w")]);
        sim.wait_leader(Duration::from_secs(5));
        sim.crash(lost);
        sim.run_for(Duration::from_secs(5));
        let expected = if lost == "a" { "b" } else { "a" };
        assert_eq!(sim.leader(), Some(expected), "after losing {lost}");
    }
}

#[test]
fn half_mode_two_nodes_lead_alone_and_split_when_partitioned() {
    let mut sim = Sim::with_quorum(vec![node("a", 10), node("b", 5)], QuorumMode::Half);
    assert_eq!(sim.wait_leader(Duration::from_secs(5)), "a");
    sim.crash("a");
    sim.run_until(Duration::from_secs(5), |s| s.leader() == Some("b")).unwrap();
    sim.restart("a");
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.leader(), Some("b"), "a follows when it hears b");
    // Partition: each side has "half" the votes, so both lead: the documented risk.
    sim.allow_split = true;
    sim.isolate("a");
    sim.run_for(Duration::from_secs(3));
    let mut l = sim.leaders();
    l.sort();
    assert_eq!(l, ["a", "b"]);
    // Heal: the older term steps down.
    sim.heal();
    sim.run_for(Duration::from_secs(3));
    sim.allow_split = false;
    let l = sim.leaders();
    assert_eq!(l.len(), 1, "{l:?}");
    sim.run_for(Duration::from_secs(3));
}

#[test]
fn half_mode_paused_leader_steps_down_when_it_runs_again() {
    let mut sim = Sim::with_quorum(vec![node("a", 10), node("b", 5)], QuorumMode::Half);
    sim.wait_leader(Duration::from_secs(5));
    sim.allow_split = true; // a's kernel keeps the lease while frozen: nothing expires it
    sim.pause("a");
    sim.run_until(Duration::from_secs(5), |s| s.leader() == Some("b")).unwrap();
    sim.run_for(Duration::from_secs(2));
    sim.resume("a");
    sim.step();
    let first = sim.nodes[0].after_resume.clone().unwrap();
    assert_eq!(first.first(), Some(&Action::ReleaseVip), "{first:?}");
    sim.allow_split = false;
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.leader(), Some("b"));
    assert_eq!(sim.state("a").leader.as_deref(), Some("b"));
}

#[test]
fn four_members_need_three_votes() {
    let mut sim = Sim::new(vec![node("a", 4), node("b", 3), node("c", 2), node("d", 1)]);
    sim.wait_leader(Duration::from_secs(5));
    // 2 + 2 partition: nobody has a majority.
    for (i, j) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        sim.link[i][j] = false;
        sim.link[j][i] = false;
    }
    sim.run_for(Duration::from_secs(5));
    assert!(sim.leaders().is_empty());
    sim.heal();
    sim.run_until(Duration::from_secs(5), |s| s.leader().is_some()).unwrap();
}

#[test]
fn a_member_that_cannot_hold_the_vip_steps_aside() {
    let mut sim = three();
    sim.nodes[0].vip_fails = Some(true);
    sim.run_until(Duration::from_secs(10), |s| s.leader() == Some("b") && s.holder() == Some("b")).unwrap();
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.leader(), Some("b"));
    assert_eq!(sim.state("a").role, Role::Follower);
    // It never campaigns again, even when it would be the best.
    sim.crash("b");
    sim.run_until(Duration::from_secs(5), |s| s.leader() == Some("c")).unwrap();
    // A failure that may pass holds it off for a while only.
    let mut sim = three();
    sim.nodes[0].vip_fails = Some(false);
    sim.run_until(Duration::from_secs(10), |s| s.leader() == Some("b")).unwrap();
    sim.nodes[0].vip_fails = None;
    sim.run_for(D * VIP_FAILURE_HOLD_OFF);
    sim.crash("b");
    sim.run_until(Duration::from_secs(5), |s| s.leader() == Some("a") && s.holder() == Some("a")).unwrap();
}

#[test]
fn clean_leave_hands_over_quickly() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    let a = sim.idx("a");
    let now = sim.clock();
    let actions = sim.nodes[a].e.leave(now);
    assert_eq!(actions.first(), Some(&Action::ReleaseVip));
    assert!(matches!(actions.get(1), Some(Action::Send(hb)) if hb.leaving && hb.role == Role::Follower));
    sim.apply(a, actions);
    sim.crash("a");
    let took = sim.run_until(Duration::from_secs(5), |s| s.holder() == Some("b")).unwrap();
    assert!(took < 3 * H, "handover took {took:?}");
}

#[test]
fn start_up_wait_then_a_restarted_member_follows() {
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    sim.crash("c");
    sim.run_for(Duration::from_secs(2));
    sim.restart("c");
    let c = sim.idx("c");
    sim.run_for(D / 2);
    assert!(sim.nodes[c].e.vote.is_none(), "no vote during the start-up wait");
    sim.run_for(D);
    assert_eq!(sim.nodes[c].e.vote.as_ref().map(|v| v.name.as_str()), Some("a"));
    assert_eq!(sim.leader(), Some("a"));
}

#[test]
fn no_preemption_by_a_better_member_that_comes_back() {
    let mut sim = Sim::new(vec![node("a", 30), node("b", 20), node("c", 10)]);
    sim.crash("a");
    assert_eq!(sim.wait_leader(Duration::from_secs(5)), "b");
    sim.restart("a");
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.leader(), Some("b"));
    assert_eq!(sim.nodes[1].acquisitions, 1);
}

#[test]
fn lossy_network_keeps_one_leader() {
    let mut sim = three();
    sim.loss_permille = 100;
    sim.wait_leader(Duration::from_secs(10));
    sim.run_for(Duration::from_secs(30));
    assert!(sim.leaders().len() <= 1);
}

#[test]
fn random_faults_never_give_two_leases() {
    for seed in 1..=30u64 {
        let mut sim = if seed % 3 == 0 {
            Sim::new(vec![node("a", 1), node("b", 2), node("c", 3), node("d", 4), node("e", 5)])
        } else if seed % 3 == 1 {
            Sim::new(vec![node("a", 10), node("b", 5), witness("w")])
        } else {
            three()
        };
        sim.rng ^= seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        sim.loss_permille = seed % 4 * 20;
        let names: Vec<&'static str> = sim.nodes.iter().map(|n| n.name).collect();
        for _ in 0..40 {
            let pick = names[(sim.random() % names.len() as u64) as usize];
            match sim.random() % 8 {
                0 => sim.crash(pick),
                1 => sim.restart(pick),
                2 => sim.pause(pick),
                3 => {
                    if sim.nodes[sim.idx(pick)].paused {
                        sim.resume(pick)
                    }
                }
                4 => sim.isolate(pick),
                5 => {
                    let (i, j) = (sim.random() as usize % names.len(), sim.random() as usize % names.len());
                    sim.link[i][j] = !sim.link[i][j];
                }
                _ => sim.heal(),
            }
            let ms = 100 + sim.random() % 3000;
            sim.run_for(Duration::from_millis(ms));
        }
        // Everything back: one leader again.
        for n in names.clone() {
            let i = sim.idx(n);
            if !sim.nodes[i].up {
                sim.restart(n);
            } else if sim.nodes[i].paused {
                sim.resume(n);
            }
        }
        sim.heal();
        sim.loss_permille = 0;
        sim.run_until(Duration::from_secs(15), |s| s.leader().is_some() && s.holder() == s.leader())
            .unwrap_or_else(|| panic!("seed {seed}: no leader after healing"));
    }
}

#[test]
fn replays_stale_and_foreign_heartbeats_are_dropped_and_counted() {
    let mut sim = three();
    sim.run_for(Duration::from_millis(500));
    let a = sim.idx("a");
    let b = sim.idx("b");
    // A heartbeat from b, as a received it.
    let now = sim.clock();
    let hb = match sim.nodes[b].e.poll(now).into_iter().find_map(|x| match x {
        Action::Send(hb) => Some(hb),
        _ => None,
    }) {
        Some(hb) => hb,
        None => {
            sim.nodes[b].e.send_now = true;
            match sim.nodes[b].e.poll(now).pop() {
                Some(Action::Send(hb)) => hb,
                other => panic!("{other:?}"),
            }
        }
    };
    let e = &mut sim.nodes[a].e;
    assert_eq!(e.receive(now, hb.clone()), Ok(()));
    assert_eq!(e.receive(now, hb.clone()), Err(DropReason::Replayed));
    assert_eq!(e.receive(now, Heartbeat { seq: hb.seq - 1, ..hb.clone() }), Err(DropReason::Replayed));
    assert_eq!(e.receive(now, Heartbeat { seq: hb.seq + 1, ..hb.clone() }), Ok(()));
    // Clock window.
    let skewed = Heartbeat { seq: hb.seq + 2, wall_ms: now.wall_ms - 31_000, ..hb.clone() };
    assert_eq!(e.receive(now, skewed), Err(DropReason::Stale));
    let ahead = Heartbeat { seq: hb.seq + 2, wall_ms: now.wall_ms + 31_000, ..hb.clone() };
    assert_eq!(e.receive(now, ahead), Err(DropReason::Stale));
    // A restart (greater boot) starts over at seq 1; the earlier boot is then stale.
    let reboot = Heartbeat { boot: hb.boot + 10, seq: 1, ..hb.clone() };
    assert_eq!(e.receive(now, reboot), Ok(()));
    assert_eq!(e.receive(now, Heartbeat { seq: hb.seq + 5, ..hb.clone() }), Err(DropReason::Stale));
    // ...unless the member has been silent for the whole window (its clock went back).
    let later = Now { mono: now.mono + WALL_WINDOW, wall_ms: now.wall_ms + WALL_WINDOW.as_millis() as u64 };
    let back = Heartbeat { boot: hb.boot - 1, seq: 1, wall_ms: later.wall_ms, ..hb.clone() };
    assert_eq!(e.receive(later, back), Ok(()));
    // Other members, other clusters, ourselves.
    assert_eq!(e.receive(now, Heartbeat { name: "zed".into(), ..hb.clone() }), Err(DropReason::UnknownMember));
    assert_eq!(e.receive(now, Heartbeat { name: "a".into(), ..hb.clone() }), Err(DropReason::UnknownMember));
    assert_eq!(e.receive(now, Heartbeat { cluster: [0; 8], seq: 99, ..hb.clone() }), Err(DropReason::WrongCluster));
    let d = e.drops();
    assert_eq!((d.replayed, d.stale, d.unknown_member, d.wrong_cluster), (2, 3, 2, 1));
    assert_eq!(e.count_drop(DropReason::BadMac), 1);
    assert_eq!(sim.state("a").drops.total(), 9);
}

#[test]
fn digest_travels_in_heartbeats() {
    let mut sim = three();
    let a = sim.idx("a");
    sim.nodes[a].e.set_digest([7; 32]);
    sim.run_for(Duration::from_secs(1));
    let seen = sim.state("b").members.iter().find(|m| m.name == "a").and_then(|m| m.digest);
    assert_eq!(seen, Some([7; 32]));
}

#[test]
fn leader_lease_is_bounded_by_the_voters_dead_after() {
    // A voter with a shorter dead_after shortens the lease it gives.
    let mut sim = three();
    sim.wait_leader(Duration::from_secs(5));
    let lease = sim.state("a").lease_until.unwrap();
    assert!(lease <= sim.now + (D - H), "{:?}", lease - sim.now);
    assert!(lease > sim.now, "lease current");
}


