//! `[watchdog]` and `[watchdog.vip]`: membership, timings, the shared key and the VIP.
//!
//! The timing rule `check-config` enforces (docs/watchdog.md, "The safety rule"):
//! a leader counts a member's vote only until `sent + dead_after − heartbeat_interval`,
//! where `sent` is when the leader sent the heartbeat that vote acknowledges; a member
//! moves its vote only after `dead_after` without hearing the leader. So the old leader's
//! lease ends one `heartbeat_interval` before any vote it counted can move. The lease must
//! also outlive a heartbeat round trip plus a lost packet, hence
//! `dead_after ≥ 4 × heartbeat_interval`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, DurationStr};

/// Most members (full nodes and witnesses) a cluster may have; keeps a heartbeat in one
/// unfragmented UDP datagram.
pub const MAX_MEMBERS: usize = 16;
/// Longest member name.
pub const MAX_NAME_LEN: usize = 32;
/// Shortest accepted shared key, in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// Smallest `heartbeat_interval`: it is also the margin in which an old leader removes
/// the VIP.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// `dead_after` must be at least this many heartbeat intervals.
pub const MIN_DEAD_AFTER_INTERVALS: u32 = 4;

/// `[watchdog]`: this node's membership in the pgvigil cluster.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// This member's name, unique in the cluster. Required.
    pub name: String,
    /// Address (ip:port) heartbeats are received on (UDP). Required.
    pub listen: String,
    /// The other members, full nodes and witnesses. Required (at least one).
    pub peers: Vec<PeerConfig>,
    /// Elections prefer the higher priority (then the smaller name). Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Time between heartbeats. Default "200ms".
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: DurationStr,
    /// A member not heard from for this long is dead. Default "1s".
    #[serde(default = "default_dead_after")]
    pub dead_after: DurationStr,
    /// File holding the key shared by all members (at least 16 bytes). Required.
    pub auth_key_file: PathBuf,
    /// "majority" (more than half of the members) or "half" (at least half: two-node
    /// clusters without a witness; risks split brain). Default "majority".
    #[serde(default)]
    pub quorum: QuorumMode,
    /// The virtual IP the leader holds. Default: none (leadership only).
    #[serde(default)]
    pub vip: Option<VipConfig>,
}

/// One `peers` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's `watchdog.name`. Required.
    pub name: String,
    /// The peer's `watchdog.listen` address (ip:port). Required.
    pub address: String,
}

/// `watchdog.quorum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuorumMode {
    /// More than half of the configured members.
    #[default]
    Majority,
    /// At least half of them: lets one of two nodes lead alone, and both when they
    /// cannot hear each other.
    Half,
}

impl QuorumMode {
    /// Votes needed among `members` (self and witnesses included).
    pub fn size(self, members: usize) -> usize {
        match self {
            QuorumMode::Majority => members / 2 + 1,
            QuorumMode::Half => members.div_ceil(2).max(1),
        }
    }
}

impl fmt::Display for QuorumMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuorumMode::Majority => "majority",
            QuorumMode::Half => "half",
        })
    }
}

/// `[watchdog.vip]`: the virtual IP and how it is moved. Serialized for `GET /config`,
/// whose redaction hides every `*_command`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// IPv4 address with prefix length, e.g. "10.0.0.100/24". Required.
    pub address: String,
    /// Interface the address goes on, e.g. "eth0". Required.
    pub interface: String,
    /// Shell command that adds the VIP instead of netlink. Default: unset.
    #[serde(default)]
    pub up_command: Option<String>,
    /// Shell command that removes the VIP instead of netlink. Default: unset.
    #[serde(default)]
    pub down_command: Option<String>,
    /// Shell command that announces the VIP instead of the built-in gratuitous ARP; ""
    /// sends none. Default: unset.
    #[serde(default)]
    pub arp_command: Option<String>,
    /// Shell command run after becoming leader (once the VIP is up). Default: unset.
    #[serde(default)]
    pub escalation_command: Option<String>,
    /// Shell command run after ceasing to be leader (once the VIP is down). Default: unset.
    #[serde(default)]
    pub de_escalation_command: Option<String>,
}

impl fmt::Debug for VipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Commands may carry cloud credentials.
        let set = |c: &Option<String>| c.as_ref().map(|_| "<set>");
        f.debug_struct("VipConfig")
            .field("address", &self.address)
            .field("interface", &self.interface)
            .field("up_command", &set(&self.up_command))
            .field("down_command", &set(&self.down_command))
            .field("arp_command", &set(&self.arp_command))
            .field("escalation_command", &set(&self.escalation_command))
            .field("de_escalation_command", &set(&self.de_escalation_command))
            .finish()
    }
}

fn default_heartbeat_interval() -> DurationStr {
    DurationStr(Duration::from_millis(200))
}

fn default_dead_after() -> DurationStr {
    DurationStr(Duration::from_secs(1))
}

/// The shared key; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(pub(crate) Vec<u8>);

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl AuthKey {
    /// A key from bytes, for tests and tools that build heartbeats.
    pub fn from_bytes(bytes: &[u8]) -> AuthKey {
        AuthKey(bytes.to_vec())
    }
}

/// A parsed `watchdog.vip.address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipAddress {
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for VipAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// Parses "10.0.0.100/24"; a bare address means /32.
pub fn parse_vip_address(s: &str) -> Result<VipAddress, String> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, p.parse::<u8>().map_err(|_| format!("{p:?} is not a prefix length"))?),
        None => (s, 32),
    };
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    if !(1..=32).contains(&prefix) {
        return Err(format!("prefix length {prefix} is not between 1 and 32"));
    }
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!("{ip} cannot be a virtual IP"));
    }
    Ok(VipAddress { ip, prefix })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

impl WatchdogConfig {
    /// Checks names, addresses, the timing rule, quorum and the key file. `witness`: the
    /// file is for `pgvigil witness` (no VIP).
    pub fn validate(&self, base_dir: &Path, witness: bool) -> Result<(), ConfigError> {
        self.check(witness)?;
        self.load_key(base_dir).map(drop)
    }

    /// The checks of [`validate`](Self::validate) that read no file.
    pub fn check(&self, witness: bool) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return err(format!(
                "watchdog.name: {:?} must be 1 to {MAX_NAME_LEN} letters, digits, '_' or '-'",
                self.name
            ));
        }
        parse_socket_addr(&self.listen).map_err(|e| ConfigError(format!("watchdog.listen: {e}")))?;
        if self.peers.is_empty() {
            return err("watchdog.peers: at least one peer is required (a second node, or a node and a witness)");
        }
        if self.members() > MAX_MEMBERS {
            return err(format!("watchdog.peers: at most {MAX_MEMBERS} members (this node included)"));
        }
        let mut seen = std::collections::HashSet::new();
        seen.insert(self.name.as_str());
        for (i, p) in self.peers.iter().enumerate() {
            if !valid_name(&p.name) {
                return err(format!(
                    "watchdog.peers[{i}].name: {:?} must be 1 to {MAX_NAME_LEN} letters, digits, '_' or '-'",
                    p.name
                ));
            }
            if !seen.insert(p.name.as_str()) {
                return err(format!("watchdog.peers[{i}].name: {:?} is used twice (watchdog.name included)", p.name));
            }
            parse_socket_addr(&p.address).map_err(|e| ConfigError(format!("watchdog.peers[{i}].address: {e}")))?;
        }
        self.validate_timings()?;
        if self.members() == 2 && self.quorum == QuorumMode::Majority {
            return err(
                "watchdog.peers: two members cannot keep a majority when one is down; add a third member \
                 (`pgvigil witness` is enough), or set watchdog.quorum = \"half\" and accept the risk of \
                 split brain (both nodes lead while they cannot hear each other)",
            );
        }
        match (&self.vip, witness) {
            (Some(_), true) => return err("watchdog.vip: a witness only votes and holds no VIP; remove [watchdog.vip]"),
            (Some(vip), false) => vip.validate()?,
            (None, _) => {}
        }
        Ok(())
    }

    /// The timing rule; see the module doc.
    fn validate_timings(&self) -> Result<(), ConfigError> {
        let h = self.heartbeat_interval.get();
        let d = self.dead_after.get();
        if h < MIN_HEARTBEAT_INTERVAL {
            return err(format!(
                "watchdog.heartbeat_interval ({h:?}) must be at least {MIN_HEARTBEAT_INTERVAL:?}: it is also the \
                 margin in which an old leader removes the VIP"
            ));
        }
        if d < h * MIN_DEAD_AFTER_INTERVALS {
            return err(format!(
                "watchdog.dead_after ({d:?}) must be at least {MIN_DEAD_AFTER_INTERVALS} × \
                 watchdog.heartbeat_interval ({h:?}): a leader keeps the VIP only while a quorum answered within \
                 dead_after − heartbeat_interval (so it lets go one heartbeat_interval before the others may elect \
                 a new leader), and that lease must outlast a heartbeat round trip and a lost heartbeat"
            ));
        }
        if d > Duration::from_secs(3600) {
            return err(format!("watchdog.dead_after ({d:?}) must be at most 1h"));
        }
        Ok(())
    }

    /// This node plus its peers.
    pub fn members(&self) -> usize {
        self.peers.len() + 1
    }

    /// `auth_key_file`, resolved against the config file's directory.
    pub fn key_path(&self, base_dir: &Path) -> PathBuf {
        if self.auth_key_file.is_absolute() {
            self.auth_key_file.clone()
        } else {
            base_dir.join(&self.auth_key_file)
        }
    }

    /// Reads the shared key: the file's bytes without trailing whitespace (so a key file
    /// written by `openssl rand -hex 32 > F` works as is). Errors never quote the key.
    pub fn load_key(&self, base_dir: &Path) -> Result<AuthKey, ConfigError> {
        let path = self.key_path(base_dir);
        let bytes = std::fs::read(&path).map_err(|e| {
            ConfigError(format!("watchdog.auth_key_file: cannot read {}: {e}", path.display()))
        })?;
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        if end < MIN_KEY_LEN {
            return err(format!(
                "watchdog.auth_key_file: {} holds {end} bytes; the key must be at least {MIN_KEY_LEN} \
                 (e.g. `openssl rand -hex 32 > {}`)",
                path.display(),
                path.display()
            ));
        }
        Ok(AuthKey(bytes[..end].to_vec()))
    }
}

impl VipConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let address = parse_vip_address(&self.address).map_err(|e| {
            ConfigError(format!(
                "watchdog.vip.address: {e} (expected an IPv4 address with prefix length, e.g. \"10.0.0.100/24\")"
            ))
        })?;
        let iface = &self.interface;
        if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ', '\t']) {
            return err(format!("watchdog.vip.interface: {iface:?} is not an interface name"));
        }
        // A loopback VIP (one host: tests, `pgvigil demo`) reaches no other host; as a /32
        // on `lo` it adds no route beside 127.0.0.0/8. Never 127.0.0.1: removing the VIP
        // would remove lo's own address.
        if address.ip == Ipv4Addr::LOCALHOST {
            return err("watchdog.vip.address: 127.0.0.1 is lo's own address; take another, e.g. \"127.0.0.100/32\"");
        }
        if address.ip.is_loopback() && (iface != "lo" || address.prefix != 32) {
            return err(format!(
                "watchdog.vip.address: a loopback VIP goes on interface \"lo\" as a /32 (e.g. \"{}/32\")",
                address.ip
            ));
        }
        for (key, command) in [
            ("up_command", &self.up_command),
            ("down_command", &self.down_command),
            ("escalation_command", &self.escalation_command),
            ("de_escalation_command", &self.de_escalation_command),
        ] {
            if command.as_ref().is_some_and(|c| c.trim().is_empty()) {
                return err(format!("watchdog.vip.{key}: empty; remove the key to use the built-in behaviour"));
            }
        }
        if self.up_command.is_some() != self.down_command.is_some() {
            return err("watchdog.vip: set both up_command and down_command, or neither");
        }
        Ok(())
    }

    /// The parsed address, already checked by `validate`.
    pub fn vip_address(&self) -> Result<VipAddress, ConfigError> {
        parse_vip_address(&self.address).map_err(|e| ConfigError(format!("watchdog.vip.address: {e}")))
    }
}

/// Parses "ip:port" with a non-zero port.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| format!("{s:?} is not an ip:port address such as \"10.0.0.11:9694\""))?;
    if addr.port() == 0 {
        return Err(format!("{s:?}: the port must not be 0"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const MINIMAL: &str = "[[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n";

    struct KeyDir {
        dir: tempfile::TempDir,
    }

    fn key_dir(key: &[u8]) -> KeyDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wd.key"), key).unwrap();
        KeyDir { dir }
    }

    fn watchdog(extra: &str, peers: &str) -> String {
        format!(
            "{MINIMAL}[watchdog]\nname = \"a\"\nlisten = \"10.0.0.11:9694\"\npeers = [{peers}]\n\
             auth_key_file = \"wd.key\"\n{extra}"
        )
    }

    const TWO_PEERS: &str =
        "{ name = \"b\", address = \"10.0.0.12:9694\" }, { name = \"c\", address = \"10.0.0.13:9694\" }";

    fn check(text: &str) -> Result<Config, ConfigError> {
        let k = key_dir(b"0123456789abcdef0123456789abcdef\n");
        check_in(&k, text)
    }

    fn check_in(k: &KeyDir, text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::parse(Path::new("pgvigil.toml"), text)?;
        c.base_dir = k.dir.path().to_path_buf();
        c.auth.method = crate::config::AuthMethod::Trust;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_keys() {
        let text = watchdog(
            "priority = 10\n[watchdog.vip]\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\n",
            TWO_PEERS,
        );
        let c = check(&text).unwrap();
        let w = c.watchdog.as_ref().unwrap();
        assert_eq!(w.heartbeat_interval.get(), Duration::from_millis(200));
        assert_eq!(w.dead_after.get(), Duration::from_secs(1));
        assert_eq!(w.quorum, QuorumMode::Majority);
        assert_eq!(w.priority, 10);
        assert_eq!(w.members(), 3);
        let vip = w.vip.as_ref().unwrap();
        assert_eq!(vip.vip_address().unwrap(), VipAddress { ip: Ipv4Addr::new(10, 0, 0, 100), prefix: 24 });
        assert!(vip.up_command.is_none());
        let c = check(MINIMAL).unwrap();
        assert!(c.watchdog.is_none());
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(QuorumMode::Majority.size(2), 2);
        assert_eq!(QuorumMode::Majority.size(3), 2);
        assert_eq!(QuorumMode::Majority.size(4), 3);
        assert_eq!(QuorumMode::Majority.size(5), 3);
        assert_eq!(QuorumMode::Half.size(2), 1);
        assert_eq!(QuorumMode::Half.size(3), 2);
        assert_eq!(QuorumMode::Half.size(4), 2);
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let text = watchdog("prority = 3\n", TWO_PEERS);
        let e = check(&text).unwrap_err().to_string();
        assert!(e.starts_with("pgvigil.toml:9:"), "{e}");
        assert!(e.contains("prority"), "{e}");
        let text = watchdog("[watchdog.vip]\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\nup = \"x\"\n", TWO_PEERS);
        let e = check(&text).unwrap_err().to_string();
        assert!(e.starts_with("pgvigil.toml:12:"), "{e}");
        let text = watchdog("", "{ name = \"b\", address = \"10.0.0.12:9694\", weight = 2 }");
        let e = check(&text).unwrap_err().to_string();
        assert!(e.contains("weight"), "{e}");
    }

    #[test]
    fn timing_rule() {
        let e = check(&watchdog("heartbeat_interval = \"300ms\"\n", TWO_PEERS)).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.dead_after"), "{e}");
        assert!(e.contains("watchdog.heartbeat_interval"), "{e}");
        assert!(check(&watchdog("heartbeat_interval = \"250ms\"\n", TWO_PEERS)).is_ok());
        let e = check(&watchdog("heartbeat_interval = \"5ms\"\ndead_after = \"1s\"\n", TWO_PEERS)).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.heartbeat_interval"), "{e}");
        assert!(check(&watchdog("heartbeat_interval = \"100ms\"\ndead_after = \"400ms\"\n", TWO_PEERS)).is_ok());
        let e = check(&watchdog("dead_after = \"2h\"\n", TWO_PEERS)).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.dead_after"), "{e}");
    }

    #[test]
    fn two_nodes_need_a_witness_or_half() {
        let one = "{ name = \"b\", address = \"10.0.0.12:9694\" }";
        let e = check(&watchdog("", one)).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.peers"), "{e}");
        assert!(e.contains("witness") && e.contains("quorum = \"half\""), "{e}");
        let c = check(&watchdog("quorum = \"half\"\n", one)).unwrap();
        assert_eq!(c.watchdog.unwrap().quorum, QuorumMode::Half);
        let e = check(&watchdog("", "")).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.peers"), "{e}");
        let e = check(&watchdog("quorum = \"most\"\n", one)).unwrap_err().to_string();
        assert!(e.starts_with("pgvigil.toml:9:"), "{e}");
    }

    #[test]
    fn names_and_addresses() {
        let e = check(&watchdog("", "{ name = \"a\", address = \"10.0.0.12:9694\" }, { name = \"c\", address = \"10.0.0.13:9694\" }"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("watchdog.peers[0].name"), "{e}");
        let e = check(&watchdog("", "{ name = \"b\", address = \"10.0.0.12:9694\" }, { name = \"b\", address = \"10.0.0.13:9694\" }"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("watchdog.peers[1].name"), "{e}");
        let e = check(&watchdog("", "{ name = \"b\", address = \"host-b\" }, { name = \"c\", address = \"10.0.0.13:9694\" }"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("watchdog.peers[0].address"), "{e}");
        let text = watchdog("", TWO_PEERS).replace("10.0.0.11:9694", "10.0.0.11:0");
        let e = check(&text).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.listen"), "{e}");
        let text = watchdog("", TWO_PEERS).replace("name = \"a\"", "name = \"a b\"");
        let e = check(&text).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.name"), "{e}");
    }

    #[test]
    fn key_file_problems_name_the_key() {
        let text = watchdog("", TWO_PEERS);
        let short = key_dir(b"tooshort\n");
        let e = check_in(&short, &text).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.auth_key_file"), "{e}");
        assert!(e.contains("8 bytes") && !e.contains("tooshort"), "{e}");
        let missing = KeyDir { dir: tempfile::tempdir().unwrap() };
        let e = check_in(&missing, &text).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.auth_key_file: cannot read"), "{e}");
        let k = key_dir(b"0123456789abcdef  \r\n");
        let c = check_in(&k, &text).unwrap();
        let key = c.watchdog.unwrap().load_key(k.dir.path()).unwrap();
        assert_eq!(key.0, b"0123456789abcdef");
        assert_eq!(format!("{key:?}"), "AuthKey(<redacted>)");
    }

    #[test]
    fn vip_checks() {
        let vip = |body: &str| watchdog(&format!("[watchdog.vip]\ninterface = \"eth0\"\n{body}"), TWO_PEERS);
        let e = check(&vip("address = \"fd00::1/64\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.vip.address"), "{e}");
        let e = check(&vip("address = \"10.0.0.100/33\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.vip.address"), "{e}");
        assert!(check(&vip("address = \"10.0.0.100\"\n")).is_ok());
        let e = check(&vip("address = \"10.0.0.100/24\"\nup_command = \"x\"\n")).unwrap_err().to_string();
        assert!(e.contains("up_command and down_command"), "{e}");
        let e = check(&vip("address = \"10.0.0.100/24\"\nescalation_command = \" \"\n")).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.vip.escalation_command"), "{e}");
        let c = check(&vip(
            "address = \"10.0.0.100/24\"\nup_command = \"aws ec2 assign --secret s3cret\"\ndown_command = \"d\"\narp_command = \"\"\n",
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = check(&vip("address = \"127.0.0.100/32\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.vip.address") && e.contains("\"lo\""), "{e}");
        let on_lo = |address: &str| vip(&format!("address = \"{address}\"\n")).replace("\"eth0\"", "\"lo\"");
        let e = check(&on_lo("127.0.0.100/8")).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.vip.address") && e.contains("/32"), "{e}");
        let e = check(&on_lo("127.0.0.1/32")).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.vip.address: 127.0.0.1"), "{e}");
        assert!(check(&on_lo("127.0.0.100/32")).is_ok());
        assert!(check(&on_lo("127.0.0.100")).is_ok());
        let text = vip("address = \"10.0.0.100/24\"\n").replace("interface = \"eth0\"", "interface = \"a-very-long-interface\"");
        let e = check(&text).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.vip.interface"), "{e}");
    }

    #[test]
    fn witness_files() {
        let k = key_dir(b"0123456789abcdef0123456789abcdef");
        let text = format!(
            "[watchdog]\nname = \"w\"\nlisten = \"10.0.0.13:9694\"\npeers = [{TWO_PEERS}]\nauth_key_file = \"wd.key\"\n"
        )
        .replace("\"c\"", "\"a\"");
        let path = k.dir.path().join("witness.toml");
        std::fs::write(&path, &text).unwrap();
        let c = Config::load_witness(&path).unwrap();
        assert_eq!(c.watchdog.unwrap().name, "w");
        std::fs::write(&path, format!("{text}[watchdog.vip]\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\n")).unwrap();
        let e = Config::load_witness(&path).unwrap_err().to_string();
        assert!(e.starts_with("watchdog.vip"), "{e}");
        std::fs::write(&path, "[log]\nlevel = \"info\"\n").unwrap();
        let e = Config::load_witness(&path).unwrap_err().to_string();
        assert!(e.contains("[watchdog]"), "{e}");
    }
}
