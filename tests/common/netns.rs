//! Linux network namespaces for multi-host tests: one bridge namespace, one namespace per
//! member (`eth0`, 192.0.2.11, .12, …/24) and a client namespace (192.0.2.2/24), joined
//! by veth pairs. Needs root; removed on drop, also when a test panics.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Why these tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is missing".into()),
    }
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    out
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces of one test.
pub struct Net {
    pub bridge: String,
    pub members: Vec<String>,
    pub client: String,
}

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Candidate subnets (first three octets) for [`Net::attach_host`].
const HOST_NETS: [[u8; 3]; 3] = [[198, 51, 100], [203, 0, 113], [10, 251, 77]];

impl Net {
    /// A bridge, `n` member namespaces and a client namespace.
    pub fn new(n: usize) -> Net {
        let tag = format!("pgvw{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let net = Net {
            bridge: format!("{tag}br"),
            members: (0..n).map(|i| format!("{tag}n{i}")).collect(),
            client: format!("{tag}cl"),
        };
        net.remove();
        sh(&["ip", "netns", "add", &net.bridge]);
        sh(&["ip", "-n", &net.bridge, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &net.bridge, "link", "set", "br0", "up"]);
        for i in 0..n {
            net.attach(&net.members[i], &format!("p{i}"), Self::addr(i));
        }
        net.attach(&net.client, "pc", CLIENT_ADDR);
        net
    }

    fn attach(&self, ns: &str, port: &str, addr: Ipv4Addr) {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", &self.bridge]);
        sh(&["ip", "-n", &self.bridge, "link", "set", port, "master", "br0", "up"]);
        sh(&["ip", "-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    /// Member `i`'s address.
    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 11 + i as u8)
    }

    /// The MAC of a namespace's eth0.
    pub fn mac(ns: &str) -> String {
        let out = sh(&["ip", "-n", ns, "-o", "link", "show", "eth0"]);
        out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("link/ether").to_string()
    }

    /// Whether a namespace's eth0 has `ip`.
    pub fn has_addr(ns: &str, ip: Ipv4Addr) -> bool {
        let out = run(&["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"]);
        let needle = format!("inet {ip}/");
        String::from_utf8_lossy(&out.stdout).contains(&needle)
    }

    /// The client's neighbour entry for `ip`: (MAC, state), if any.
    pub fn client_neighbour(&self, ip: Ipv4Addr) -> Option<(String, String)> {
        let out = sh(&["ip", "-n", &self.client, "neigh", "show", &ip.to_string(), "dev", "eth0"]);
        let words: Vec<&str> = out.split_whitespace().collect();
        let mac = words.iter().position(|w| *w == "lladdr").and_then(|i| words.get(i + 1))?;
        Some((mac.to_string(), words.last().map_or(String::new(), |s| s.to_string())))
    }

    /// Cuts member `i` off the bridge (its port goes down), or reconnects it.
    pub fn set_link(&self, i: usize, up: bool) {
        sh(&["ip", "-n", &self.bridge, "link", "set", &format!("p{i}"), if up { "up" } else { "down" }]);
    }

    /// A veth pair from the test's own namespace into the bridge, with `count` addresses
    /// on this side (returned) in a subnet of their own that this namespace does not
    /// route yet; every member gets an address in it too. Servers started here
    /// (PostgreSQL) that listen on those addresses are reachable from every member, and
    /// their answers never leave through this host's own interfaces. Goes away with the
    /// bridge namespace.
    pub fn attach_host(&self, count: usize) -> Vec<Ipv4Addr> {
        let p = HOST_NETS
            .iter()
            .find(|p| {
                let probe = format!("{}.{}.{}.201", p[0], p[1], p[2]);
                let routes = sh(&["ip", "-4", "route", "show", "to", "match", &probe]);
                routes.lines().all(|l| l.starts_with("default"))
            })
            .unwrap_or_else(|| panic!("every candidate subnet for the host link is in use here: {HOST_NETS:?}"));
        let link = self.host_link();
        sh(&["ip", "link", "add", &link, "type", "veth", "peer", "name", "ph", "netns", &self.bridge]);
        sh(&["ip", "-n", &self.bridge, "link", "set", "ph", "master", "br0", "up"]);
        // This namespace answers ARP on the link only for the link's own addresses: by
        // default Linux answers for all of its addresses on every interface, and this
        // host's own may be a namespace's (the client's 192.0.2.2, say).
        for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
            let path = format!("/proc/sys/net/ipv4/conf/{link}/{key}");
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        let addrs: Vec<Ipv4Addr> = (0..count).map(|k| Ipv4Addr::new(p[0], p[1], p[2], 201 + k as u8)).collect();
        for (k, a) in addrs.iter().enumerate() {
            let cidr = format!("{a}/24");
            let mut cmd = vec!["ip", "addr", "add", cidr.as_str(), "dev", link.as_str()];
            if k > 0 {
                cmd.push("noprefixroute");
            }
            sh(&cmd);
        }
        sh(&["ip", "link", "set", &link, "up"]);
        for (i, ns) in self.members.iter().enumerate() {
            let cidr = format!("{}.{}.{}.{}/24", p[0], p[1], p[2], 11 + i);
            sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
        }
        addrs
    }

    fn host_link(&self) -> String {
        self.bridge.replace("br", "h")
    }

    /// Makes `ip` unreachable from member `i` (a route that rejects it), or reachable again.
    pub fn set_reachable(&self, i: usize, ip: Ipv4Addr, reachable: bool) {
        let route = format!("{ip}/32");
        let verb = if reachable { "del" } else { "add" };
        sh(&["ip", "-n", &self.members[i], "route", verb, "unreachable", &route]);
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets it opens live there).
    pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace descriptor, for this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace")
    }

    fn remove(&self) {
        let _ = run(&["ip", "link", "del", &self.host_link()]);
        for ns in self.members.iter().chain([&self.client, &self.bridge]) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// Whether the calling thread's network namespace has `ip` on some interface.
fn local_has(ip: Ipv4Addr) -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below; entries are read only while it lives.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return false;
        }
        let mut found = false;
        let mut cur = list;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = addr as *const libc::sockaddr_in;
                if u32::from_be((*sin).sin_addr.s_addr) == u32::from(ip) {
                    found = true;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(list);
        found
    }
}

/// Checks several namespaces for an address from one thread, without spawning `ip`:
/// it enters each namespace in turn. Use it on a thread of its own.
pub struct Prober {
    namespaces: Vec<std::fs::File>,
}

impl Prober {
    pub fn open(names: &[String]) -> Prober {
        let namespaces = names
            .iter()
            .map(|n| std::fs::File::open(format!("/var/run/netns/{n}")).unwrap_or_else(|e| panic!("netns {n}: {e}")))
            .collect();
        Prober { namespaces }
    }

    /// For each namespace: does it have `ip`?
    pub fn holders(&self, ip: Ipv4Addr) -> Vec<bool> {
        use std::os::fd::AsRawFd;
        self.namespaces
            .iter()
            .map(|f| {
                // SAFETY: setns on a valid namespace descriptor, for this thread only.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                rc == 0 && local_has(ip)
            })
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}
