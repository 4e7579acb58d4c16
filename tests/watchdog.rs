//! The watchdog with real pgvigil processes in Linux network namespaces: one namespace
//! per member, a client namespace, a bridge. Each test starts its members with only a
//! watchdog worth of configuration (the proxy's one backend is unreachable), VIP
//! 192.0.2.100/24 on eth0. A sampler thread reads every 50 ms which namespaces hold the
//! VIP; at the end no sample may show two live holders (a process killed or frozen by
//! the test is not live until it let go: its kernel keeps the address meanwhile).
//!
//! Needs root (CI runs as root); otherwise each test says why and returns. Run with
//! `--nocapture` to see the measured times.

#[path = "common/members.rs"]
mod members;
#[path = "common/netns.rs"]
mod netns;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use members::*;
use netns::{Net, CLIENT_ADDR};

const LONG: Duration = Duration::from_secs(15);

#[test]
fn kill9_moves_the_vip_and_the_client_follows() {
    if skip() {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::start(&[node("n0", 30), node("n1", 20), node("n2", 10)]);
    let (first, took) = c.wait_single_holder(LONG);
    eprintln!("measured: first election (from process start): {}", ms(took));
    assert_eq!(first, 0, "the highest priority leads");
    assert!(c.client_connects(), "the client reaches the VIP");
    assert_eq!(c.client_mac(), Some(c.mac(0)));

    c.kill9(0);
    let (new, moved) = c.wait_single_holder(LONG);
    assert_eq!(new, 1, "the next priority takes over");
    let arp = wait_for(LONG, || c.client_mac() == Some(c.mac(1))).expect("client neighbour entry follows the VIP");
    eprintln!("measured: kill -9 of the holder -> VIP on n1: {}; client neighbour entry on n1's MAC {} later (no client traffic)", ms(moved), ms(arp));
    assert!(c.client_connects(), "the client reaches the new holder through the VIP");

    // The killed process cannot remove the address; its lifetime does.
    let expired = wait_for(LONG, || !c.holds(0)).expect("the killed node's VIP expires");
    eprintln!("measured: the killed node's leftover VIP expired {} after the takeover", ms(expired));

    // A leftover without lifetime (as an older run or a command could leave) is removed
    // at start. Restarted, the node follows: no preemption, still one holder.
    netns::sh(&["ip", "-n", &c.members[0].ns, "addr", "add", &format!("{VIP}/32"), "dev", "eth0"]);
    c.launch(0);
    wait_for(LONG, || !c.holds(0)).expect("the leftover is removed at start");
    assert!(c.log(0).contains("removed the VIP an earlier run left"));
    c.set_live(0, true);
    let log_ok = wait_for(LONG, || c.log(0).matches("watchdog member heard").count() >= 2);
    assert!(log_ok.is_some(), "the restarted member hears the others");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.live_holders(), vec![1]);
    let samples = c.assert_never_two_live_holders();
    eprintln!("checked {samples} samples: never two live holders; overlap with the dead node's kernel: {}", ms(c.double_holding()));
}

#[test]
fn paused_holder_lets_go_when_it_runs_again() {
    if skip() {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::start(&[node("n0", 30), node("n1", 20), node("n2", 10)]);
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 0);
    c.pause(0);
    let paused_at = Instant::now();
    let (new, moved) = c.wait_single_holder(LONG);
    assert_ne!(new, 0);
    eprintln!("measured: SIGSTOP of the holder -> VIP on {}: {}", c.name(new), ms(moved));
    // Resume at once, while the frozen kernel may still hold the address.
    let held_at_resume = c.holds(0);
    let resumed_at = Instant::now();
    c.resume(0);
    let dropped = wait_for(LONG, || !c.holds(0)).expect("the resumed node drops the VIP");
    c.set_live(0, true);
    eprintln!(
        "measured: paused for {}; at SIGCONT it {} the VIP; {} after SIGCONT it held none",
        ms(resumed_at - paused_at),
        if held_at_resume { "still held" } else { "no longer held" },
        ms(dropped)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.live_holders(), vec![new], "the new leader keeps the VIP");
    // Terms: the resumed node stepped down from an older term than the new leader's.
    let new_log = c.log(new);
    let new_term: u64 = new_log
        .lines()
        .rev()
        .filter(|l| l.contains("watchdog: leader"))
        .find_map(|l| l.split("term=").nth(1).and_then(|t| t.trim().parse().ok()))
        .expect("the new leader logged its term");
    let old_log = c.log(0);
    assert!(old_log.contains("did not run for longer than dead_after"), "{old_log}");
    let old_term: u64 = old_log
        .lines()
        .rev()
        .filter(|l| l.contains("stepping down"))
        .find_map(|l| l.split("term=").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|t| t.parse().ok()))
        .expect("the resumed node stepped down");
    assert!(old_term < new_term, "old term {old_term}, new term {new_term}");
    eprintln!("terms: the resumed node stepped down from term {old_term}; the new leader has term {new_term}");
    let samples = c.assert_never_two_live_holders();
    eprintln!(
        "checked {samples} samples: never two live holders; the frozen node's kernel overlapped for {}",
        ms(c.double_holding())
    );
}

#[test]
fn cut_off_holder_drops_the_vip_and_the_heal_is_announced() {
    if skip() {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::start(&[node("n0", 30), node("n1", 20), node("n2", 10)]);
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 0);
    assert!(c.client_connects());
    c.net.set_link(0, false);
    let cut = Instant::now();
    let dropped = wait_for(LONG, || !c.holds(0)).expect("the isolated holder drops the VIP");
    let (new, _) = c.wait_single_holder(LONG);
    assert_ne!(new, 0);
    let moved = cut.elapsed();
    let arp = wait_for(LONG, || c.client_mac() == Some(c.mac(new))).expect("client follows");
    eprintln!(
        "measured: link of the holder cut -> it dropped the VIP after {}; VIP on {} after {}; client entry moved {} later",
        ms(dropped),
        c.name(new),
        ms(moved),
        ms(arp)
    );
    // The minority side never takes it back while cut off.
    assert!(wait_for(Duration::from_secs(3), || c.holds(0)).is_none(), "the isolated node holds no VIP");
    // Point the client at the old holder, as a client that re-resolved during the cut
    // might, then heal: the holder must announce the VIP again.
    netns::sh(&["ip", "-n", &c.net.client, "neigh", "replace", &VIP.to_string(), "lladdr", &c.mac(0), "dev", "eth0", "nud", "stale"]);
    std::thread::sleep(Duration::from_millis(1500)); // past the neighbour locktime
    let announcements = c.log(new).matches("gratuitous ARP sent").count();
    c.net.set_link(0, true);
    let fixed = wait_for(LONG, || c.client_mac() == Some(c.mac(new))).expect("the holder re-announces after the heal");
    eprintln!("measured: after the heal the client's entry pointed at the holder again after {}", ms(fixed));
    wait_for(LONG, || c.log(new).matches("gratuitous ARP sent").count() > announcements).expect("announcement logged");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.live_holders(), vec![new], "still one holder after the heal");
    let samples = c.assert_never_two_live_holders();
    eprintln!("checked {samples} samples (every process live throughout): never two holders");
}

#[test]
fn two_nodes_and_a_witness_keep_a_leader() {
    if skip() {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::start(&[node("n0", 30), node("n1", 20), witness("w")]);
    let (h, took) = c.wait_single_holder(LONG);
    assert_eq!(h, 0);
    eprintln!("measured: first election with a witness: {}", ms(took));
    assert!(!c.log(2).contains("VIP"), "the witness has nothing to do with the VIP");
    // Losing the witness: n0 and n1 are still a quorum.
    c.kill9(2);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.live_holders(), vec![0]);
    c.launch(2);
    c.set_live(2, true);
    wait_for(LONG, || c.log(0).matches("watchdog member heard member=w").count() >= 2).expect("witness back");
    // Losing the leader: n1 leads with the witness's vote.
    c.kill9(0);
    let (new, moved) = c.wait_single_holder(LONG);
    assert_eq!(new, 1);
    eprintln!("measured: kill -9 of the holder, two nodes + witness -> VIP on n1: {}", ms(moved));
    c.assert_never_two_live_holders();
}

#[test]
fn two_nodes_with_quorum_half_lead_alone_and_split_only_while_partitioned() {
    if skip() {
        return;
    }
    let _serial = serial();
    let setup = Setup { watchdog: "quorum = \"half\"\n".into(), ..Setup::default() };
    let mut c = Cluster::start_with(&[node("n0", 30), node("n1", 20)], setup);
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 0);
    for i in 0..2 {
        let log = c.log(i);
        assert!(log.contains("watchdog.quorum = \"half\"") && log.contains("split brain"), "the risk is logged at start: {log}");
    }
    // Either node leads alone when the other is gone.
    c.kill9(0);
    let (new, moved) = c.wait_single_holder(LONG);
    assert_eq!(new, 1);
    eprintln!("measured: quorum = \"half\", kill -9 of the holder -> VIP on n1: {}", ms(moved));
    // The restarted node follows: no preemption.
    c.launch(0);
    c.set_live(0, true);
    wait_for(LONG, || c.log(0).matches("watchdog member heard member=n1").count() >= 2).expect("n0 hears n1 again");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.live_holders(), vec![1]);
    let before = c.assert_never_two_live_holders();
    eprintln!("checked {before} samples before the partition: never two live holders");

    // Partition: each side has half the votes, so both lead (the documented risk)...
    c.net.set_link(1, false);
    let both = wait_for(LONG, || c.live_holders() == vec![0, 1]).expect("both halves lead while partitioned");
    eprintln!("measured: partitioned -> both nodes hold the VIP after {} (the documented split brain)", ms(both));
    std::thread::sleep(Duration::from_secs(2));
    // ...and when they hear each other again, one steps down.
    c.net.set_link(1, true);
    let (one, healed) = c.wait_single_holder(LONG);
    eprintln!("measured: after the heal one holder ({}) again after {}", c.name(one), ms(healed));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.live_holders(), vec![one], "one holder after the heal");
    let other = 1 - one;
    assert!(c.log(other).contains("stepping down"), "{}", c.log(other));
}

#[test]
fn clean_shutdown_hands_over_at_once_and_commands_replace_netlink() {
    if skip() {
        return;
    }
    let _serial = serial();
    // n0 moves the VIP with commands, as in a cloud, and runs the hooks.
    let commands = Spec {
        vip_extra: "up_command = \"ip addr add $VIP/$PREFIX dev $IFACE && echo up >> DIR/events\"\n\
                    down_command = \"ip addr del $VIP/$PREFIX dev $IFACE; echo down >> DIR/events\"\n\
                    arp_command = \"echo arp $VIP $IFACE >> DIR/events\"\n\
                    escalation_command = \"echo escalation >> DIR/events\"\n\
                    de_escalation_command = \"echo de-escalation >> DIR/events\"\n"
            .into(),
        ..node("n0", 30)
    };
    let mut c = Cluster::start(&[commands, node("n1", 20), node("n2", 10)]);
    let events = c.dir.path().join("events");
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 0);
    let read = || std::fs::read_to_string(&events).unwrap_or_default();
    wait_for(LONG, || read().contains("escalation") && read().contains("arp 192.0.2.100 eth0")).expect("hooks ran");
    assert!(read().starts_with("up\n"), "{}", read());
    let start = Instant::now();
    let exit = c.terminate(0);
    assert!(!c.holds(0), "the VIP is removed before the process exits");
    let (new, _) = c.wait_single_holder(LONG);
    assert_eq!(new, 1);
    eprintln!("measured: SIGTERM of the holder: exited after {}, VIP on n1 after {}", ms(exit), ms(start.elapsed()));
    let log = c.log(0);
    let removed = log.find("VIP removed").expect("removal logged");
    let stopped = log.find("watchdog stopped").expect("stop logged");
    assert!(removed < stopped);
    let ev = read();
    let lines: Vec<&str> = ev.lines().collect();
    assert_eq!(lines.iter().filter(|l| **l == "down").count(), 1, "{ev}");
    assert_eq!(lines.last(), Some(&"de-escalation"), "the de-escalation hook ran last, before the exit: {ev}");
    c.assert_never_two_live_holders();
}

#[test]
fn forged_and_replayed_heartbeats_are_dropped_and_counted() {
    if skip() {
        return;
    }
    let _serial = serial();
    // "x" is listed by both nodes but is the test itself, in the client namespace: it
    // receives real heartbeats and sends copies to n1.
    let mut c = Cluster::start_with(&[node("n0", 30), node("n1", 20)], Setup { phantom: Some("x"), ..Setup::default() });
    c.wait_single_holder(LONG);
    let n0 = SocketAddr::from((Net::addr(0), WD_PORT));
    let n1 = SocketAddr::from((Net::addr(1), WD_PORT));
    let sent = Net::within(&c.net.client, move || {
        let sock = UdpSocket::bind((CLIENT_ADDR, WD_PORT)).expect("bind as x");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2048];
        let heartbeat = loop {
            let (n, from) = sock.recv_from(&mut buf).expect("a heartbeat");
            if from == n0 {
                break buf[..n].to_vec();
            }
        };
        // n1 got the same datagram from n0 already: both copies are replays.
        sock.send_to(&heartbeat, n1).unwrap();
        sock.send_to(&heartbeat, n1).unwrap();
        let mut forged = heartbeat.clone();
        let mid = forged.len() / 2;
        forged[mid] ^= 0x10;
        sock.send_to(&forged, n1).unwrap();
        sock.send_to(b"hello", n1).unwrap();
        heartbeat.len()
    });
    eprintln!("captured a {sent}-byte heartbeat of n0 and sent it twice to n1, then a forged copy and garbage");
    for reason in ["replayed", "bad_mac", "malformed"] {
        let needle = format!("reason=\"{reason}\"");
        wait_for(LONG, || c.log(1).contains(&needle)).unwrap_or_else(|| panic!("n1 logs a drop for {reason}"));
    }
    let log = c.log(1);
    let replay_line = log.lines().find(|l| l.contains("reason=\"replayed\"")).unwrap();
    assert!(replay_line.contains("total=1"), "{replay_line}");
    assert!(log.lines().any(|l| l.contains("reason=\"bad_mac\"") && l.contains("not signed with our key")));
    assert_eq!(c.live_holders(), vec![0], "nothing changed");
    c.assert_never_two_live_holders();
}

#[test]
fn a_member_with_the_wrong_key_does_not_join() {
    if skip() {
        return;
    }
    let _serial = serial();
    let bad = Spec { wrong_key: true, ..node("n2", 90) };
    let mut c = Cluster::start(&[node("n0", 30), node("n1", 20), bad]);
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 0, "the best member with the right key leads");
    wait_for(LONG, || c.log(2).contains("not signed with our key")).expect("n2 says why");
    wait_for(LONG, || c.log(0).contains("not signed with our key")).expect("n0 says why");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!c.log(2).contains("watchdog member heard"), "n2 accepted nothing");
    assert!(!c.holds(2));
    c.assert_never_two_live_holders();
}

/// True (and says so) when `setpriv` (util-linux), which these tests run members under,
/// is missing.
fn no_setpriv() -> bool {
    let missing = Command::new("setpriv").arg("--version").output().is_err();
    if missing {
        eprintln!("skipping: setpriv (util-linux) is missing");
    }
    missing
}

#[test]
fn a_member_without_cap_net_admin_steps_aside() {
    if skip() {
        return;
    }
    if no_setpriv() {
        return;
    }
    let _serial = serial();
    let weak = Spec { no_net_admin: true, ..node("n0", 30) };
    let mut c = Cluster::start(&[weak, node("n1", 20), node("n2", 10)]);
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 1, "the best member that can hold the VIP leads");
    let log = c.log(0);
    assert!(log.contains("CAP_NET_ADMIN"), "{log}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.live_holders(), vec![1]);
    // It still votes: with n2 gone, n0 and n1 are a quorum.
    c.kill9(2);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.live_holders(), vec![1]);
    c.assert_never_two_live_holders();
}

/// The capabilities dist/pgvigil.service grants (`AmbientCapabilities=`).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/pgvigil.service")).expect("dist/pgvigil.service");
    let line = unit.lines().find_map(|l| l.strip_prefix("AmbientCapabilities=")).expect("AmbientCapabilities= in the unit");
    let bounding = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("CapabilityBoundingSet= in the unit");
    assert_eq!(line, bounding, "the unit's ambient and bounding sets are the same");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn an_unprivileged_member_with_the_units_capabilities_holds_the_vip() {
    if skip() {
        return;
    }
    if no_setpriv() {
        return;
    }
    let _serial = serial();
    let caps = unit_capabilities();
    eprintln!("n0 runs as nobody with {caps:?} only, as dist/pgvigil.service runs pgvigil");
    let weak = Spec { unprivileged: Some(caps), ..node("n0", 30) };
    let mut c = Cluster::start(&[weak, node("n1", 20), node("n2", 10)]);
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 0, "the unprivileged member leads and holds the VIP: {}", c.log(0));
    wait_for(LONG, || c.log(0).contains("gratuitous ARP sent")).expect("it sends gratuitous ARP");
    assert!(c.client_connects(), "the client reaches it through the VIP");
    assert_eq!(c.client_mac(), Some(c.mac(0)), "the client's entry points at it");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid_of_pgvigil(&c, 0))).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(!uid_line.split_whitespace().skip(1).any(|u| u == "0"), "not root: {uid_line}");
    c.terminate(0);
    assert!(!c.holds(0), "it removed the VIP when it stopped");
    let (new, _) = c.wait_single_holder(LONG);
    assert_eq!(new, 1);
    c.assert_never_two_live_holders();
}

/// The pid of member `i`'s pgvigil (its process runs under `ip netns exec` and `setpriv`,
/// which exec into it: same pid).
fn pid_of_pgvigil(c: &Cluster, i: usize) -> u32 {
    c.members[i].child.as_ref().expect("running").id()
}

#[test]
fn check_config_rejects_unsafe_watchdog_settings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wd.key"), KEY).unwrap();
    let base = "[auth]\nmethod = \"trust\"\n[[backends]]\nname = \"pg\"\nhost = \"127.0.0.1\"\n\
                [watchdog]\nname = \"a\"\nlisten = \"127.0.0.1:9694\"\nauth_key_file = \"wd.key\"\n";
    let check = |text: &str, witness: bool| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("check-config").arg("--config").arg(&path);
        if witness {
            cmd.arg("--witness");
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let one_peer = "peers = [ { name = \"b\", address = \"127.0.0.1:9695\" } ]\n";
    let (code, out) = check(&format!("{base}{one_peer}"), false);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("watchdog.peers") && out.contains("witness"), "{out}");
    let (code, out) = check(&format!("{base}{one_peer}quorum = \"half\"\n"), false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 members, quorum 1"), "{out}");
    let two = "peers = [ { name = \"b\", address = \"127.0.0.1:9695\" }, { name = \"w\", address = \"127.0.0.1:9696\" } ]\n";
    let (code, out) = check(&format!("{base}{two}heartbeat_interval = \"500ms\"\n"), false);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("watchdog.dead_after") && out.contains("watchdog.heartbeat_interval"), "{out}");
    let (code, out) = check(&format!("{base}{two}").replace("wd.key", "missing.key"), false);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("watchdog.auth_key_file"), "{out}");
    let witness_file = format!("[watchdog]\nname = \"w\"\nlisten = \"127.0.0.1:9696\"\nauth_key_file = \"wd.key\"\n{two}")
        .replace("name = \"w\", address = \"127.0.0.1:9696\"", "name = \"a\", address = \"127.0.0.1:9694\"");
    let (code, out) = check(&witness_file, true);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("witness"), "{out}");
}
