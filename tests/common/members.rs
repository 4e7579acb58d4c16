//! pgvigil processes in Linux network namespaces (see `netns.rs`): one per watchdog
//! member, started from a [`Spec`] each, with a sampler thread that reads every 50 ms
//! which namespaces hold the VIP 192.0.2.100/24 on eth0. At the end no sample may show two
//! live holders (a process killed or frozen by the test is not live until it let go: its
//! kernel keeps the address meanwhile).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::{self, Net, Prober, CLIENT_ADDR};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const WD_PORT: u16 = 9694;
pub const PROXY_PORT: u16 = 9999;
pub const BIN: &str = env!("CARGO_BIN_EXE_pgvigil");
pub const KEY: &str = "6d1f0a9c2b7e45f38a0c4d2e9b1f7a6c";
/// The key of a member with `wrong_key`.
pub const OTHER_KEY: &str = "a different key of enough bytes";

/// One namespace test at a time: they measure timings on a small shared machine.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn skip() -> bool {
    match netns::unavailable() {
        Some(why) => {
            eprintln!("skipping the watchdog namespace tests: {why}");
            true
        }
        None => false,
    }
}

#[derive(Clone)]
pub struct Spec {
    pub name: &'static str,
    pub priority: i32,
    pub witness: bool,
    /// Runs under `setpriv` without CAP_NET_ADMIN.
    pub no_net_admin: bool,
    /// Runs as the user nobody with only these capabilities (e.g. "CAP_NET_ADMIN"),
    /// ambient as a systemd unit's `AmbientCapabilities=` gives them.
    pub unprivileged: Option<Vec<String>>,
    /// Uses another key than the others.
    pub wrong_key: bool,
    /// More `[watchdog.vip]` lines; `DIR` stands for the test's directory.
    pub vip_extra: String,
}

pub fn node(name: &'static str, priority: i32) -> Spec {
    Spec { name, priority, witness: false, no_net_admin: false, unprivileged: None, wrong_key: false, vip_extra: String::new() }
}

pub fn witness(name: &'static str) -> Spec {
    Spec { witness: true, ..node(name, 0) }
}

pub struct Sample {
    pub at: Instant,
    pub holders: Vec<bool>,
    pub not_live: BTreeSet<usize>,
}

pub struct Sampler {
    pub stop: Arc<AtomicBool>,
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub thread: Option<JoinHandle<()>>,
}

pub struct Member {
    pub spec: Spec,
    pub ns: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

/// Members in namespaces. Fields drop in order: processes first, namespaces last.
pub struct Cluster {
    pub members: Vec<Member>,
    pub sampler: Sampler,
    pub not_live: Arc<Mutex<BTreeSet<usize>>>,
    pub dir: tempfile::TempDir,
    pub net: Net,
}

/// What every member's configuration has besides its own watchdog lines.
#[derive(Default, Clone)]
pub struct Setup {
    /// A peer name every member also lists, at the client's address (where the test can
    /// receive real heartbeats).
    pub phantom: Option<&'static str>,
    /// The proxy part of a proxy member's configuration (auth, health checks, backends);
    /// `None`: trust and one unreachable backend.
    pub proxy: Option<String>,
    /// More `[watchdog]` lines for every member (e.g. `quorum = "half"`).
    pub watchdog: String,
    /// `[log] level`; "": info without the monitor's, failover's and pools' lines.
    pub log: &'static str,
}

pub const ADMIN_PORT: u16 = 9898;

pub fn config_text(i: usize, specs: &[Spec], setup: &Setup, dir: &std::path::Path) -> String {
    let s = &specs[i];
    let mut peers: Vec<String> = specs
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(j, p)| format!("{{ name = \"{}\", address = \"{}:{WD_PORT}\" }}", p.name, Net::addr(j)))
        .collect();
    if let Some(name) = setup.phantom {
        peers.push(format!("{{ name = \"{name}\", address = \"{CLIENT_ADDR}:{WD_PORT}\" }}"));
    }
    let key = if s.wrong_key { "other.key" } else { "wd.key" };
    let watchdog = format!(
        "[watchdog]\nname = \"{}\"\nlisten = \"{}:{WD_PORT}\"\npeers = [ {} ]\npriority = {}\nauth_key_file = \"{key}\"\n{}",
        s.name,
        Net::addr(i),
        peers.join(", "),
        s.priority,
        setup.watchdog
    );
    let level = if setup.log.is_empty() { "info,pgvigil::monitor=off,pgvigil::failover=off,pgvigil::pool=off" } else { setup.log };
    let log = format!("[log]\nlevel = \"{level}\"\n");
    if s.witness {
        return format!("{log}{watchdog}");
    }
    let proxy = setup.proxy.clone().unwrap_or_else(|| {
        "[auth]\nmethod = \"trust\"\n[[backends]]\nname = \"pg\"\nhost = \"127.0.0.1\"\nport = 1\n".to_string()
    });
    format!(
        "[proxy]\nlisten = \"0.0.0.0:{PROXY_PORT}\"\n[admin]\nlisten = \"0.0.0.0:{ADMIN_PORT}\"\n{log}{proxy}\n\
         {watchdog}[watchdog.vip]\naddress = \"{VIP}/24\"\ninterface = \"eth0\"\n{}",
        s.vip_extra.replace("DIR", &dir.display().to_string())
    )
}

pub fn wait_for(max: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
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

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill {sig}: {}", std::io::Error::last_os_error());
}

impl Cluster {
    pub fn start(specs: &[Spec]) -> Cluster {
        Self::start_with(specs, Setup::default())
    }

    pub fn start_with(specs: &[Spec], setup: Setup) -> Cluster {
        Self::start_in(Net::new(specs.len()), specs, setup)
    }

    /// Starts the members in `net` (made with one member namespace per spec).
    pub fn start_in(net: Net, specs: &[Spec], setup: Setup) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("wd.key"), format!("{KEY}\n")).expect("key");
        std::fs::write(dir.path().join("other.key"), format!("{OTHER_KEY}\n")).expect("key");
        for k in ["wd.key", "other.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path().join(k), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let mut members = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let config = dir.path().join(format!("{}.toml", spec.name));
            std::fs::write(&config, config_text(i, specs, &setup, dir.path())).expect("config");
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
        let mut c = Cluster { members, sampler, not_live, dir, net };
        for i in 0..specs.len() {
            c.launch(i);
        }
        c
    }

    pub fn launch(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = File::options().create(true).append(true).open(&m.log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &m.ns]);
        if m.spec.no_net_admin {
            cmd.args(["setpriv", "--bounding-set", "-net_admin"]);
        }
        if let Some(caps) = &m.spec.unprivileged {
            let list: Vec<String> = caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
            let list = list.join(",");
            cmd.args(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
            cmd.arg(format!("--inh-caps=-all,{list}")).arg(format!("--ambient-caps=-all,{list}")).arg(format!("--bounding-set=-all,{list}"));
            // The user reads its configuration and owns the key, as the unit's user would.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
            std::fs::set_permissions(&m.config, std::fs::Permissions::from_mode(0o644)).expect("chmod config");
            netns::sh(&["chown", "nobody", &self.dir.path().join("wd.key").display().to_string()]);
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

    pub fn name(&self, i: usize) -> &'static str {
        self.members[i].spec.name
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    pub fn holds(&self, i: usize) -> bool {
        Net::has_addr(&self.members[i].ns, VIP)
    }

    pub fn holders(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|i| self.holds(*i)).collect()
    }

    pub fn live_holders(&self) -> Vec<usize> {
        let not_live = self.not_live.lock().unwrap().clone();
        self.holders().into_iter().filter(|i| !not_live.contains(i)).collect()
    }

    /// Waits until exactly one live member holds the VIP; returns it.
    pub fn wait_single_holder(&self, max: Duration) -> (usize, Duration) {
        let mut holder = None;
        let took = wait_for(max, || {
            let h = self.live_holders();
            holder = (h.len() == 1).then(|| h[0]);
            holder.is_some()
        })
        .unwrap_or_else(|| panic!("no single VIP holder within {max:?}: {:?}", self.holders()));
        (holder.expect("holder"), took)
    }

    pub fn set_live(&self, i: usize, live: bool) {
        let mut s = self.not_live.lock().unwrap();
        if live {
            s.remove(&i);
        } else {
            s.insert(i);
        }
    }

    pub fn kill9(&mut self, i: usize) {
        self.set_live(i, false);
        if let Some(mut child) = self.members[i].child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn pause(&self, i: usize) {
        self.set_live(i, false);
        signal(self.members[i].child.as_ref().expect("running"), libc::SIGSTOP);
    }

    pub fn resume(&self, i: usize) {
        signal(self.members[i].child.as_ref().expect("running"), libc::SIGCONT);
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self, i: usize) -> Duration {
        let mut child = self.members[i].child.take().expect("running");
        let start = Instant::now();
        signal(&child, libc::SIGTERM);
        let _ = child.wait();
        self.set_live(i, false);
        start.elapsed()
    }

    pub fn mac(&self, i: usize) -> String {
        Net::mac(&self.members[i].ns)
    }

    /// A TCP connection from the client namespace to the VIP's proxy port.
    pub fn client_connects(&self) -> bool {
        Net::within(&self.net.client, || {
            TcpStream::connect_timeout(&SocketAddr::from((VIP, PROXY_PORT)), Duration::from_secs(3)).is_ok()
        })
    }

    pub fn client_mac(&self) -> Option<String> {
        self.net.client_neighbour(VIP).map(|(mac, _)| mac)
    }

    /// Stops the sampler and checks that no sample had two live holders.
    pub fn assert_never_two_live_holders(&mut self) -> usize {
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
    pub fn double_holding(&self) -> Duration {
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
        if !std::thread::panicking() {
            // Part of the suite's secrets watch: no member may log the watchdog's keys.
            for m in &self.members {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                for key in [KEY, OTHER_KEY] {
                    assert!(!log.contains(key), "{} logged a watchdog key:\n{log}", m.spec.name);
                }
            }
        }
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
    pub fn start(namespaces: Vec<String>, not_live: Arc<Mutex<BTreeSet<usize>>>) -> Sampler {
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

    pub fn finish(&mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let samples = self.samples.lock().unwrap();
        samples.iter().map(|s| Sample { at: s.at, holders: s.holders.clone(), not_live: s.not_live.clone() }).collect()
    }
}

pub fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

