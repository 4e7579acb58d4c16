//! The heartbeat datagram: I/O-free encoding, HMAC-SHA256 authentication, total parsing.
//!
//! Layout (big-endian), then a 32-byte HMAC-SHA256 over everything before it:
//!
//! ```text
//! "PGVW" version:u8  name:str  cluster:[u8;8]  boot:u64  seq:u64  wall_ms:u64
//! term:u64  role:u8  flags:u8  priority:i32  dead_after_ms:u32
//! vote:str (empty: none)  vote_term:u64  digest:[u8;32]
//! acks:u8 × (name:str  boot:u64  seq:u64)
//! ```
//!
//! `str` is a length byte and at most 32 bytes of UTF-8. The MAC is checked (in constant
//! time) before anything after the version is read. Replay protection (per-sender `boot`
//! and `seq`, and the `wall_ms` window) is the receiver's job: see [`super::election`].

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::{AuthKey, MAX_MEMBERS, MAX_NAME_LEN};

pub const MAGIC: &[u8; 4] = b"PGVW";
pub const VERSION: u8 = 1;
pub const MAC_LEN: usize = 32;
/// Largest datagram read; a valid heartbeat of 16 members is about 1.1 kB.
pub const MAX_PACKET: usize = 2048;

/// What a member says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Votes; may campaign.
    Follower,
    /// Asks for votes (or lost its lease and waits for it to come back).
    Candidate,
    /// Holds a lease from a quorum of votes.
    Leader,
    /// Votes only.
    Witness,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Follower => 0,
            Role::Candidate => 1,
            Role::Leader => 2,
            Role::Witness => 3,
        }
    }

    fn from_u8(b: u8) -> Option<Role> {
        Some(match b {
            0 => Role::Follower,
            1 => Role::Candidate,
            2 => Role::Leader,
            3 => Role::Witness,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Witness => "witness",
        }
    }

    /// Candidate or leader: asks members for their vote.
    pub fn is_claiming(self) -> bool {
        matches!(self, Role::Candidate | Role::Leader)
    }
}

/// "I last heard member `name` (boot) at its sequence number `seq`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub name: String,
    pub boot: u64,
    pub seq: u64,
}

/// One heartbeat: identical for every peer it is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub name: String,
    /// Fingerprint of the membership and quorum mode; members must agree on it.
    pub cluster: [u8; 8],
    /// The sender's start time (Unix µs); a restart gets a greater one.
    pub boot: u64,
    /// 1, 2, 3… per boot.
    pub seq: u64,
    /// Sender's wall clock at sending (Unix ms).
    pub wall_ms: u64,
    pub term: u64,
    pub role: Role,
    /// The sender could lead now: eligible, hears a quorum, past its start-up wait.
    pub can_lead: bool,
    /// The sender hears a quorum.
    pub reach_quorum: bool,
    /// The sender is shutting down.
    pub leaving: bool,
    pub priority: i32,
    /// The sender's `dead_after`: how long it waits before moving its vote.
    pub dead_after_ms: u32,
    /// Whom the sender votes for, and in which term.
    pub vote: Option<(String, u64)>,
    /// Digest of the sender's cluster state.
    pub digest: [u8; 32],
    pub acks: Vec<Ack>,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a heartbeat: too short, wrong magic or version, or a bad field.
    Malformed,
    /// The MAC does not match: another key, or altered in transit.
    BadMac,
    /// Authenticated, but its sender is not one of our peers (or is us).
    UnknownMember,
    /// Sent by a member configured with other members or another quorum mode.
    WrongCluster,
    /// A sequence number already seen from that sender's boot.
    Replayed,
    /// Outside the wall-clock window, or from an earlier boot of a running sender.
    Stale,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::Malformed,
        DropReason::BadMac,
        DropReason::UnknownMember,
        DropReason::WrongCluster,
        DropReason::Replayed,
        DropReason::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadMac => "bad_mac",
            DropReason::UnknownMember => "unknown_member",
            DropReason::WrongCluster => "wrong_cluster",
            DropReason::Replayed => "replayed",
            DropReason::Stale => "stale",
        }
    }
}

const FLAG_CAN_LEAD: u8 = 1;
const FLAG_REACH_QUORUM: u8 = 2;
const FLAG_LEAVING: u8 = 4;

fn put_str(out: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_NAME_LEN)];
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

fn mac(key: &AuthKey) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    match Hmac::<Sha256>::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts every key length"),
    }
}

/// Appends the authenticated datagram for `hb` to `out`.
pub fn encode(hb: &Heartbeat, key: &AuthKey, out: &mut BytesMut) {
    let start = out.len();
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    put_str(out, &hb.name);
    out.put_slice(&hb.cluster);
    out.put_u64(hb.boot);
    out.put_u64(hb.seq);
    out.put_u64(hb.wall_ms);
    out.put_u64(hb.term);
    out.put_u8(hb.role.to_u8());
    let flags = (if hb.can_lead { FLAG_CAN_LEAD } else { 0 })
        | (if hb.reach_quorum { FLAG_REACH_QUORUM } else { 0 })
        | (if hb.leaving { FLAG_LEAVING } else { 0 });
    out.put_u8(flags);
    out.put_i32(hb.priority);
    out.put_u32(hb.dead_after_ms);
    match &hb.vote {
        Some((name, term)) => {
            put_str(out, name);
            out.put_u64(*term);
        }
        None => {
            out.put_u8(0);
            out.put_u64(0);
        }
    }
    out.put_slice(&hb.digest);
    let acks = &hb.acks[..hb.acks.len().min(MAX_MEMBERS)];
    out.put_u8(acks.len() as u8);
    for a in acks {
        put_str(out, &a.name);
        out.put_u64(a.boot);
        out.put_u64(a.seq);
    }
    let mut m = mac(key);
    m.update(&out[start..]);
    out.put_slice(&m.finalize().into_bytes());
}

/// Reads fields off a byte slice; every read checks the length first.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    fn str(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        if n > MAX_NAME_LEN {
            return None;
        }
        std::str::from_utf8(self.take(n)?).ok().map(str::to_string)
    }
}

/// Checks the MAC, then parses. Never panics, whatever the bytes.
pub fn decode(datagram: &[u8], key: &AuthKey) -> Result<Heartbeat, DropReason> {
    let header = MAGIC.len() + 1;
    if datagram.len() < header + MAC_LEN || &datagram[..MAGIC.len()] != MAGIC || datagram[MAGIC.len()] != VERSION {
        return Err(DropReason::Malformed);
    }
    let (body, tag) = datagram.split_at(datagram.len() - MAC_LEN);
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag).map_err(|_| DropReason::BadMac)?;
    parse_body(&body[header..]).ok_or(DropReason::Malformed)
}

fn parse_body(buf: &[u8]) -> Option<Heartbeat> {
    let mut r = Reader { buf };
    let name = r.str()?;
    let cluster = r.array()?;
    let boot = r.u64()?;
    let seq = r.u64()?;
    let wall_ms = r.u64()?;
    let term = r.u64()?;
    let role = Role::from_u8(r.u8()?)?;
    let flags = r.u8()?;
    let priority = r.i32()?;
    let dead_after_ms = r.u32()?;
    let vote_name = r.str()?;
    let vote_term = r.u64()?;
    let digest = r.array()?;
    let count = r.u8()? as usize;
    if count > MAX_MEMBERS {
        return None;
    }
    let mut acks = Vec::with_capacity(count);
    for _ in 0..count {
        acks.push(Ack { name: r.str()?, boot: r.u64()?, seq: r.u64()? });
    }
    if !r.buf.is_empty() || name.is_empty() {
        return None;
    }
    Some(Heartbeat {
        name,
        cluster,
        boot,
        seq,
        wall_ms,
        term,
        role,
        can_lead: flags & FLAG_CAN_LEAD != 0,
        reach_quorum: flags & FLAG_REACH_QUORUM != 0,
        leaving: flags & FLAG_LEAVING != 0,
        priority,
        dead_after_ms,
        vote: (!vote_name.is_empty()).then_some((vote_name, vote_term)),
        digest,
        acks,
    })
}

/// The fingerprint members compare: sorted member names and the quorum mode.
pub fn cluster_fingerprint(members: &[&str], quorum: super::config::QuorumMode) -> [u8; 8] {
    use sha2::Digest;
    let mut names: Vec<&str> = members.to_vec();
    names.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"pgvigil watchdog v1\0");
    for n in names {
        h.update(n.as_bytes());
        h.update([0]);
    }
    h.update(quorum.to_string().as_bytes());
    let d = h.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&d[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuthKey {
        AuthKey::from_bytes(b"0123456789abcdef0123456789abcdef")
    }

    pub(crate) fn sample() -> Heartbeat {
        Heartbeat {
            name: "node-a".into(),
            cluster: [1, 2, 3, 4, 5, 6, 7, 8],
            boot: 1_700_000_000_000_000,
            seq: 42,
            wall_ms: 1_700_000_000_123,
            term: 7,
            role: Role::Leader,
            can_lead: true,
            reach_quorum: true,
            leaving: false,
            priority: -3,
            dead_after_ms: 1000,
            vote: Some(("node-a".into(), 7)),
            digest: [9; 32],
            acks: vec![
                Ack { name: "node-b".into(), boot: 11, seq: 100 },
                Ack { name: "w".into(), boot: 12, seq: 5 },
            ],
        }
    }

    fn bytes(hb: &Heartbeat) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(hb, &key(), &mut out);
        out.to_vec()
    }

    #[test]
    fn round_trip() {
        let hb = sample();
        assert_eq!(decode(&bytes(&hb), &key()), Ok(hb.clone()));
        let follower = Heartbeat { role: Role::Witness, vote: None, acks: vec![], can_lead: false, leaving: true, ..hb };
        assert_eq!(decode(&bytes(&follower), &key()), Ok(follower));
        assert!(bytes(&sample()).len() < 300);
    }

    #[test]
    fn every_flipped_bit_is_dropped() {
        let good = bytes(&sample());
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let r = decode(&bad, &key());
            let expected = if i / 8 < 5 { DropReason::Malformed } else { DropReason::BadMac };
            assert_eq!(r, Err(expected), "bit {i}");
        }
    }

    #[test]
    fn other_key_and_truncation() {
        let good = bytes(&sample());
        assert_eq!(decode(&good, &AuthKey::from_bytes(b"another key of 16+ bytes")), Err(DropReason::BadMac));
        for n in 0..good.len() {
            assert!(decode(&good[..n], &key()).is_err(), "truncated to {n}");
        }
        assert_eq!(decode(b"", &key()), Err(DropReason::Malformed));
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer, &key()), Err(DropReason::BadMac));
    }

    #[test]
    fn authenticated_garbage_is_malformed_not_a_panic() {
        // A member with the key could still send nonsense: the parser must be total.
        let mut rng_state = 0x1234_5678_u64;
        for len in 0..400 {
            let mut body = Vec::from(&MAGIC[..]);
            body.push(VERSION);
            for _ in 0..len {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                body.push(rng_state as u8);
            }
            let mut m = mac(&key());
            m.update(&body);
            body.extend_from_slice(&m.finalize().into_bytes());
            let _ = decode(&body, &key());
        }
        let mut hb = sample();
        hb.name = String::new();
        assert_eq!(decode(&bytes(&hb), &key()), Err(DropReason::Malformed));
    }

    #[test]
    fn fingerprint_ignores_order_not_members_or_mode() {
        use crate::watchdog::config::QuorumMode;
        let a = cluster_fingerprint(&["a", "b", "c"], QuorumMode::Majority);
        assert_eq!(a, cluster_fingerprint(&["c", "a", "b"], QuorumMode::Majority));
        assert_ne!(a, cluster_fingerprint(&["a", "b", "c", "d"], QuorumMode::Majority));
        assert_ne!(a, cluster_fingerprint(&["a", "b", "c"], QuorumMode::Half));
        assert_ne!(cluster_fingerprint(&["ab", "c"], QuorumMode::Half), cluster_fingerprint(&["a", "bc"], QuorumMode::Half));
    }
}
