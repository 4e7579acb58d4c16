//! The watchdog with real pgvigil processes in Linux network namespaces: one namespace
//! per member, a client namespace, a bridge. Each test starts its members with only a
//! watchdog worth of configuration (the proxy's one backend is unreachable), VIP
//! 192.0.2.100/24 on eth0. A sampler thread reads every 50 ms which namespaces hold the
//! VIP; at the end no sample may show two live holders (a process killed or frozen by
//! the test is not live until it let go: its kernel keeps the address meanwhile).
//!
//! Needs root (CI runs as root); otherwise each test says why and returns. Run with
//! `--nocapture` to see the measured times.

#[path = "common/netns.rs"]
mod netns;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netns::{Net, Prober, CLIENT_ADDR};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const WD_PORT: u16 = 9694;
const PROXY_PORT: u16 = 9999;
const BIN: &str = env!("CARGO_BIN_EXE_pgvigil");
const KEY: &str = "6d1f0a9c2b7e45f38a0c4d2e9b1f7a6c";

/// One namespace test at a time: they measure timings on a small shared machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn skip() -> bool {
    match netns::unavailable() {
        Some(why) => {
            eprintln!("skipping the watchdog namespace tests: {why}");
            true
        }
        None => false,
    }
}

#[derive(Clone)]
struct Spec {
    name: &'static str,
    priority: i32,
    witness: bool,
    /// Runs under `setpriv` without CAP_NET_ADMIN.
    no_net_admin: bool,
    /// Uses another key than the others.
    wrong_key: bool,
    /// More `[watchdog.vip]` lines; `DIR` stands for the test's directory.
    vip_extra: String,
}

fn node(name: &'static str, priority: i32) -> Spec {
    Spec { name, priority, witness: false, no_net_admin: false, wrong_key: false, vip_extra: String::new() }
}

fn witness(name: &'static str) -> Spec {
    Spec { witness: true, ..node(name, 0) }
}

struct Sample {
    at: Instant,
    holders: Vec<bool>,
    not_live: BTreeSet<usize>,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

struct Member {
    spec: Spec,
    ns: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Members in namespaces. Fields drop in order: processes first, namespaces last.
struct Cluster {
    members: Vec<Member>,
    sampler: Sampler,
    not_live: Arc<Mutex<BTreeSet<usize>>>,
    _dir: tempfile::TempDir,
    net: Net,
}

fn config_text(i: usize, specs: &[Spec], phantom: Option<&str>, dir: &std::path::Path) -> String {
    let s = &specs[i];
    let mut peers: Vec<String> = specs
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(j, p)| format!("{{ name = \"{}\", address = \"{}:{WD_PORT}\" }}", p.name, Net::addr(j)))
        .collect();
    if let Some(name) = phantom {
        peers.push(format!("{{ name = \"{name}\", address = \"{CLIENT_ADDR}:{WD_PORT}\" }}"));
    }
    let key = if s.wrong_key { "other.key" } else { "wd.key" };
    let watchdog = format!(
        "[watchdog]\nname = \"{}\"\nlisten = \"{}:{WD_PORT}\"\npeers = [ {} ]\npriority = {}\nauth_key_file = \"{key}\"\n",
        s.name,
        Net::addr(i),
        peers.join(", "),
        s.priority
    );
    let log = "[log]\nlevel = \"info,pgvigil::monitor=off,pgvigil::failover=off,pgvigil::pool=off\"\n";
    if s.witness {
        return format!("{log}{watchdog}");
    }
    format!(
        "[proxy]\nlisten = \"0.0.0.0:{PROXY_PORT}\"\n[auth]\nmethod = \"trust\"\n{log}\
         [[backends]]\nname = \"pg\"\nhost = \"127.0.0.1\"\nport = 1\n\
         {watchdog}[watchdog.vip]\naddress = \"{VIP}/24\"\ninterface = \"eth0\"\n{}",
        s.vip_extra.replace("DIR", &dir.display().to_string())
    )
}

fn wait_for(max: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > max {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill {sig}: {}", std::io::Error::last_os_error());
}

impl Cluster {
    fn start(specs: &[Spec]) -> Cluster {
        Self::start_with(specs, None)
    }

    /// `phantom`: a peer name every member also lists, at the client's address (where
    /// the test can receive real heartbeats).
    fn start_with(specs: &[Spec], phantom: Option<&str>) -> Cluster {
        let net = Net::new(specs.len());
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("wd.key"), format!("{KEY}\n")).expect("key");
        std::fs::write(dir.path().join("other.key"), "a different key of enough bytes\n").expect("key");
        for k in ["wd.key", "other.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path().join(k), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let mut members = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let config = dir.path().join(format!("{}.toml", spec.name));
            std::fs::write(&config, config_text(i, specs, phantom, dir.path())).expect("config");
            members.push(Member {
                spec: spec.clone(),
                ns: net.members[i].clone(),
                config,
                log: dir.path().join(format!("{}.log", spec.name)),
                child: None,
            });
        }
        let not_live = Arc::new(Mutex::new(BTreeSet::new()));
        let sampler = Sampler::start(net.members.clone(), not_live.clone());
        let mut c = Cluster { members, sampler, not_live, _dir: dir, net };
        for i in 0..specs.len() {
            c.launch(i);
        }
        c
    }

    fn launch(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = File::options().create(true).append(true).open(&m.log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &m.ns]);
        if m.spec.no_net_admin {
            cmd.args(["setpriv", "--bounding-set", "-net_admin"]);
        }
        cmd.arg(BIN)
            .arg(if m.spec.witness { "witness" } else { "run" })
            .arg("--config")
            .arg(&m.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        m.child = Some(cmd.spawn().expect("start pgvigil"));
    }

    fn name(&self, i: usize) -> &'static str {
        self.members[i].spec.name
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    fn holds(&self, i: usize) -> bool {
        Net::has_addr(&self.members[i].ns, VIP)
    }

    fn holders(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|i| self.holds(*i)).collect()
    }

    fn live_holders(&self) -> Vec<usize> {
        let not_live = self.not_live.lock().unwrap().clone();
        self.holders().into_iter().filter(|i| !not_live.contains(i)).collect()
    }

    /// Waits until exactly one live member holds the VIP; returns it.
    fn wait_single_holder(&self, max: Duration) -> (usize, Duration) {
        let mut holder = None;
        let took = wait_for(max, || {
            let h = self.live_holders();
            holder = (h.len() == 1).then(|| h[0]);
            holder.is_some()
        })
        .unwrap_or_else(|| panic!("no single VIP holder within {max:?}: {:?}", self.holders()));
        (holder.expect("holder"), took)
    }

    fn set_live(&self, i: usize, live: bool) {
        let mut s = self.not_live.lock().unwrap();
        if live {
            s.remove(&i);
        } else {
            s.insert(i);
        }
    }

    fn kill9(&mut self, i: usize) {
        self.set_live(i, false);
        if let Some(mut child) = self.members[i].child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    fn pause(&self, i: usize) {
        self.set_live(i, false);
        signal(self.members[i].child.as_ref().expect("running"), libc::SIGSTOP);
    }

    fn resume(&self, i: usize) {
        signal(self.members[i].child.as_ref().expect("running"), libc::SIGCONT);
    }

    /// SIGTERM, then waits for the exit.
    fn terminate(&mut self, i: usize) -> Duration {
        let mut child = self.members[i].child.take().expect("running");
        let start = Instant::now();
        signal(&child, libc::SIGTERM);
        let _ = child.wait();
        self.set_live(i, false);
        start.elapsed()
    }

    fn mac(&self, i: usize) -> String {
        Net::mac(&self.members[i].ns)
    }

    /// A TCP connection from the client namespace to the VIP's proxy port.
    fn client_connects(&self) -> bool {
        Net::within(&self.net.client, || {
            TcpStream::connect_timeout(&SocketAddr::from((VIP, PROXY_PORT)), Duration::from_secs(3)).is_ok()
        })
    }

    fn client_mac(&self) -> Option<String> {
        self.net.client_neighbour(VIP).map(|(mac, _)| mac)
    }

    /// Stops the sampler and checks that no sample had two live holders.
    fn assert_never_two_live_holders(&mut self) -> usize {
        let samples = self.sampler.finish();
        let mut bad = Vec::new();
        for s in &samples {
            let live: Vec<&str> = s
                .holders
                .iter()
                .enumerate()
                .filter(|(i, h)| **h && !s.not_live.contains(i))
                .map(|(i, _)| self.name(i))
                .collect();
            if live.len() > 1 {
                bad.push(format!("{:?}: {live:?}", s.at));
            }
        }
        assert!(bad.is_empty(), "two live VIP holders in {} of {} samples: {bad:?}", bad.len(), samples.len());
        assert!(samples.len() > 10, "the sampler ran ({} samples)", samples.len());
        samples.len()
    }

    /// How long two members held the VIP at the same time (frozen or killed ones included).
    fn double_holding(&self) -> Duration {
        let samples = self.sampler.samples.lock().unwrap();
        let mut total = Duration::ZERO;
        for w in samples.windows(2) {
            if w[0].holders.iter().filter(|h| **h).count() > 1 {
                total += w[1].at - w[0].at;
            }
        }
        total
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        self.sampler.finish();
        if std::thread::panicking() {
            for m in &self.members {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("----- {} log (last 40 lines) -----", m.spec.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Sampler {
    fn start(namespaces: Vec<String>, not_live: Arc<Mutex<BTreeSet<usize>>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                let prober = Prober::open(&namespaces);
                while !stop.load(Ordering::SeqCst) {
                    let nl = not_live.lock().unwrap().clone();
                    let at = Instant::now();
                    let holders = prober.holders(VIP);
                    samples.lock().unwrap().push(Sample { at, holders, not_live: nl });
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Sampler { stop, samples, thread: Some(thread) }
    }

    fn finish(&mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let samples = self.samples.lock().unwrap();
        samples.iter().map(|s| Sample { at: s.at, holders: s.holders.clone(), not_live: s.not_live.clone() }).collect()
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

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
    let events = c._dir.path().join("events");
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
    let mut c = Cluster::start_with(&[node("n0", 30), node("n1", 20)], Some("x"));
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

#[test]
fn a_member_without_cap_net_admin_steps_aside() {
    if skip() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipping: setpriv (util-linux) is missing");
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
