//! The virtual IP on this node: added and removed with netlink (or `up_command` /
//! `down_command`), announced with gratuitous ARP (or `arp_command`), plus the
//! escalation hooks.
//!
//! Built-in mode adds the address with a lifetime (`valid_lft`) of
//! [`vip_lifetime`] and renews it while this node leads: if pgvigil is killed or frozen,
//! the kernel removes the address by itself a little later instead of answering ARP for
//! it forever.
//!
//! Adding (and announcing) runs in a task so a slow `up_command` does not stall
//! heartbeats; removing is awaited by the watchdog loop before it sends anything else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, CacheInfo};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkHeader, LinkLayerType, LinkMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::arp::ArpSender;
use super::config::{VipAddress, VipConfig};

/// Gratuitous ARPs sent per announcement, and the time between them.
pub const ARP_COUNT: u32 = 3;
pub const ARP_SPACING: Duration = Duration::from_millis(100);
/// Longest a VIP command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a netlink request may take.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// The address lifetime in built-in mode: twice `dead_after`, at least 2 s (the
/// kernel counts whole seconds).
pub fn vip_lifetime(dead_after: Duration) -> Duration {
    Duration::from_secs((dead_after * 2).as_secs_f64().ceil().max(2.0) as u64)
}

/// What the add task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipEvent {
    Acquired,
    /// `permanent`: no permission (CAP_NET_ADMIN); retrying will not help.
    Failed { permanent: bool },
}

/// A failure to add or remove the VIP.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("not permitted (pgvigil needs CAP_NET_ADMIN to manage the VIP)")]
    Permission,
    #[error("{0}")]
    Other(String),
}

impl VipError {
    pub fn is_permission(&self) -> bool {
        matches!(self, VipError::Permission)
    }
}

/// The errno of a netlink error, positive.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

fn netlink_error(e: rtnetlink::Error) -> VipError {
    match errno(&e) {
        Some(libc::EPERM) | Some(libc::EACCES) => VipError::Permission,
        Some(code) => VipError::Other(std::io::Error::from_raw_os_error(code).to_string()),
        None => VipError::Other(e.to_string()),
    }
}

/// The settings the VIP needs.
#[derive(Clone)]
struct Plan {
    address: VipAddress,
    interface: String,
    up_command: Option<String>,
    down_command: Option<String>,
    arp_command: Option<String>,
    escalation_command: Option<String>,
    de_escalation_command: Option<String>,
    lifetime: Duration,
}

/// Netlink access to the interface.
#[derive(Clone)]
struct Link {
    handle: rtnetlink::Handle,
    index: u32,
}

impl Link {
    async fn add(&self, address: VipAddress, lifetime: Duration) -> Result<(), VipError> {
        let mut req =
            self.handle.address().add(self.index, std::net::IpAddr::V4(address.ip), address.prefix).replace();
        let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        let mut info = CacheInfo::default();
        info.ifa_preferred = secs;
        info.ifa_valid = secs;
        req.message_mut().attributes.push(AddressAttribute::CacheInfo(info));
        match tokio::time::timeout(NETLINK_TIMEOUT, req.execute()).await {
            Err(_) => Err(VipError::Other("netlink did not answer".into())),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Ok(Err(e)) => Err(netlink_error(e)),
        }
    }

    async fn remove(&self, address: VipAddress) -> Result<(), VipError> {
        let mut msg = rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(self.index)
            .address(address.ip, address.prefix)
            .build();
        // Matched by the local address alone: whatever prefix length a leftover has.
        msg.attributes.retain(|a| matches!(a, AddressAttribute::Local(_)));
        match tokio::time::timeout(NETLINK_TIMEOUT, self.handle.address().del(msg).execute()).await {
            Err(_) => Err(VipError::Other("netlink did not answer".into())),
            Ok(Ok(())) => Ok(()),
            // Not there: removed already.
            Ok(Err(e)) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
            Ok(Err(e)) => Err(netlink_error(e)),
        }
    }

    async fn present(&self, address: VipAddress) -> Result<bool, VipError> {
        let stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(std::net::IpAddr::V4(address.ip))
            .execute();
        let found = tokio::time::timeout(NETLINK_TIMEOUT, stream.try_collect::<Vec<_>>())
            .await
            .map_err(|_| VipError::Other("netlink did not answer".into()))?
            .map_err(netlink_error)?;
        Ok(!found.is_empty())
    }
}

/// A netlink connection (its task runs until the handle is dropped) and the interface.
async fn find_link(interface: &str) -> anyhow::Result<(rtnetlink::Handle, LinkMessage)> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| anyhow::anyhow!("watchdog.vip: cannot open a netlink socket: {e}"))?;
    tokio::spawn(conn);
    let links: Vec<_> = tokio::time::timeout(
        NETLINK_TIMEOUT,
        handle.link().get().match_name(interface.to_string()).execute().try_collect::<Vec<_>>(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("watchdog.vip.interface: netlink did not answer"))?
    .map_err(|e| anyhow::anyhow!("watchdog.vip.interface: no interface {interface:?} on this host ({e})"))?;
    let link = links
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("watchdog.vip.interface: no interface {interface:?} on this host"))?;
    Ok((handle, link))
}

/// `ip` is on `interface` now, whoever put it there (needs no privilege).
pub async fn is_on_interface(interface: &str, ip: std::net::Ipv4Addr) -> anyhow::Result<bool> {
    let (handle, link) = find_link(interface).await?;
    let link = Link { handle, index: link.header.index };
    link.present(VipAddress { ip, prefix: 32 }).await.map_err(|e| anyhow::anyhow!("listing the addresses of {interface}: {e}"))
}

/// Replaces `$VIP` (address), `$PREFIX` (prefix length) and `$IFACE`.
pub fn expand(template: &str, address: VipAddress, interface: &str) -> String {
    template
        .replace("$VIP", &address.ip.to_string())
        .replace("$PREFIX", &address.prefix.to_string())
        .replace("$IFACE", interface)
}

/// Runs `watchdog.vip.<key>` with `sh -c`. The command line is not logged (it may hold
/// credentials); a failure's last stderr line is.
async fn run_command(key: &str, template: &str, address: VipAddress, interface: &str) -> Result<(), VipError> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(expand(template, address, interface)).kill_on_drop(true).stdin(std::process::Stdio::null());
    let started = Instant::now();
    let out = match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
        Err(_) => return Err(VipError::Other(format!("watchdog.vip.{key} did not finish within {COMMAND_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(VipError::Other(format!("cannot run watchdog.vip.{key}: {e}"))),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(VipError::Other(format!("watchdog.vip.{key} failed ({}): {last}", out.status)));
    }
    tracing::debug!(command = key, elapsed_ms = started.elapsed().as_millis() as u64, "watchdog: command finished");
    Ok(())
}

/// Runs a hook in the background, logging how it ended.
fn spawn_hook(hooks: &TaskTracker, key: &'static str, template: String, address: VipAddress, interface: String) {
    hooks.spawn(async move {
        match run_command(key, &template, address, &interface).await {
            Ok(()) => tracing::info!(command = key, "watchdog: hook finished"),
            Err(e) => tracing::error!(command = key, error = %e, "watchdog: hook failed"),
        }
    });
}

/// The end of this node's lease, as the watchdog loop last computed it. Background
/// steps (adding, announcing) check it right before they act: after a pause their timers
/// may fire before the loop has noticed that the lease ran out.
#[derive(Clone, Default)]
pub struct LeaseGate(Arc<Mutex<Option<Instant>>>);

impl LeaseGate {
    pub fn set(&self, until: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    pub fn open(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|l| Instant::now() < l)
    }
}

/// Sends one announcement: `ARP_COUNT` gratuitous ARPs, or `arp_command` once; stops as
/// soon as the lease is over.
async fn announce(plan: &Plan, arp: Option<&ArpSender>, gate: &LeaseGate) {
    match (&plan.arp_command, arp) {
        (Some(c), _) if c.trim().is_empty() => {}
        (Some(c), _) => {
            if !gate.open() {
                return;
            }
            if let Err(e) = run_command("arp_command", c, plan.address, &plan.interface).await {
                tracing::warn!(error = %e, "watchdog: VIP announcement failed");
            }
        }
        (None, Some(arp)) => {
            for i in 0..ARP_COUNT {
                if i > 0 {
                    tokio::time::sleep(ARP_SPACING).await;
                }
                if !gate.open() {
                    tracing::info!("watchdog: announcement stopped: the lease is over");
                    return;
                }
                if let Err(e) = arp.send(plan.address.ip) {
                    tracing::warn!(error = %e, interface = %plan.interface, "watchdog: gratuitous ARP not sent");
                    return;
                }
            }
            tracing::info!(vip = %plan.address, count = ARP_COUNT, "watchdog: gratuitous ARP sent");
        }
        (None, None) => {}
    }
}

/// Hosts find addresses on this link with ARP: an Ethernet link without `IFF_NOARP`
/// (not the loopback, not a tunnel), so gratuitous ARP means something there.
fn resolves_with_arp(header: &LinkHeader) -> bool {
    header.link_layer_type == LinkLayerType::Ether && !header.flags.intersects(LinkFlags::Loopback | LinkFlags::Noarp)
}

/// The VIP as this node handles it.
pub struct VipHolder {
    plan: Arc<Plan>,
    link: Link,
    arp: Option<Arc<ArpSender>>,
    events: mpsc::UnboundedSender<VipEvent>,
    /// The add task (then its announcement and escalation hook).
    adding: Option<JoinHandle<()>>,
    announcing: Option<JoinHandle<()>>,
    /// Set by the add task once the address is up.
    held: Arc<AtomicBool>,
    last_renewal: Option<Instant>,
    /// Escalation and de-escalation hooks still running.
    hooks: TaskTracker,
    /// Set by the watchdog loop after every evaluation.
    pub gate: LeaseGate,
}

impl VipHolder {
    /// Finds the interface; opens the ARP socket (a warning without CAP_NET_RAW).
    pub async fn open(
        config: &VipConfig,
        dead_after: Duration,
        events: mpsc::UnboundedSender<VipEvent>,
    ) -> anyhow::Result<VipHolder> {
        let address = config.vip_address()?;
        let (handle, link) = find_link(&config.interface).await?;
        let index = link.header.index;
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        let arp = match (&config.arp_command, mac) {
            (Some(_), _) => None,
            (None, _) if !resolves_with_arp(&link.header) => {
                tracing::info!(interface = %config.interface, "watchdog: the interface does not use ARP (loopback or NOARP); no gratuitous ARP is needed");
                None
            }
            (None, None) => {
                tracing::warn!(interface = %config.interface, "watchdog: the interface has no Ethernet address; no gratuitous ARP will be sent");
                None
            }
            (None, Some(mac)) => match ArpSender::open(index, mac) {
                Ok(a) => Some(Arc::new(a)),
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "watchdog: cannot send gratuitous ARP (pgvigil needs CAP_NET_RAW); after a VIP move, clients \
                         keep the old holder's MAC until their ARP entries expire"
                    );
                    None
                }
            },
        };
        let plan = Plan {
            address,
            interface: config.interface.clone(),
            up_command: config.up_command.clone(),
            down_command: config.down_command.clone(),
            arp_command: config.arp_command.clone(),
            escalation_command: config.escalation_command.clone(),
            de_escalation_command: config.de_escalation_command.clone(),
            lifetime: vip_lifetime(dead_after),
        };
        Ok(VipHolder {
            plan: Arc::new(plan),
            link: Link { handle, index },
            arp,
            events,
            adding: None,
            announcing: None,
            held: Arc::new(AtomicBool::new(false)),
            last_renewal: None,
            hooks: TaskTracker::new(),
            gate: LeaseGate::default(),
        })
    }

    pub fn address(&self) -> VipAddress {
        self.plan.address
    }

    /// The address is up (as far as this node did it).
    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// At start: removes the VIP if an earlier run of this node left it on the interface.
    /// In built-in mode this also tells whether this node may manage the address.
    pub async fn remove_leftover(&mut self) -> Result<(), VipError> {
        let present = self.link.present(self.plan.address).await?;
        if self.plan.down_command.is_none() {
            // Removing an absent address still needs CAP_NET_ADMIN: the permission check.
            self.link.remove(self.plan.address).await?;
        } else if present {
            let c = self.plan.down_command.clone().unwrap_or_default();
            run_command("down_command", &c, self.plan.address, &self.plan.interface).await?;
        }
        if present {
            tracing::warn!(vip = %self.plan.address, interface = %self.plan.interface, "watchdog: removed the VIP an earlier run left on this node");
        }
        Ok(())
    }

    /// Starts adding the VIP; the outcome arrives as a [`VipEvent`]. Then announces it
    /// and runs the escalation hook.
    pub fn acquire(&mut self) {
        let plan = self.plan.clone();
        let link = self.link.clone();
        let arp = self.arp.clone();
        let held = self.held.clone();
        let events = self.events.clone();
        let hooks = self.hooks.clone();
        let gate = self.gate.clone();
        self.last_renewal = Some(Instant::now());
        self.adding = Some(tokio::spawn(async move {
            let started = Instant::now();
            if !gate.open() {
                return;
            }
            let added = match &plan.up_command {
                Some(c) => run_command("up_command", c, plan.address, &plan.interface).await,
                None => link.add(plan.address, plan.lifetime).await,
            };
            match added {
                Ok(()) => {
                    held.store(true, Ordering::SeqCst);
                    tracing::info!(
                        vip = %plan.address,
                        interface = %plan.interface,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "watchdog: VIP added"
                    );
                    let _ = events.send(VipEvent::Acquired);
                    if let Some(c) = &plan.escalation_command {
                        spawn_hook(&hooks, "escalation_command", c.clone(), plan.address, plan.interface.clone());
                    }
                    announce(&plan, arp.as_deref(), &gate).await;
                }
                Err(e) => {
                    let permanent = e.is_permission();
                    tracing::error!(
                        vip = %plan.address,
                        interface = %plan.interface,
                        error = %e,
                        "watchdog: cannot add the VIP; this node steps aside so another one leads"
                    );
                    let _ = events.send(VipEvent::Failed { permanent });
                }
            }
        }));
    }

    /// Announces the VIP again (a member came back after a partition).
    pub fn announce(&mut self) {
        if !self.held() {
            return;
        }
        let plan = self.plan.clone();
        let arp = self.arp.clone();
        let gate = self.gate.clone();
        if let Some(t) = self.announcing.take() {
            t.abort();
        }
        self.announcing = Some(tokio::spawn(async move { announce(&plan, arp.as_deref(), &gate).await }));
    }

    /// Waits (up to the command timeout) for hooks still running, before exiting.
    pub async fn wait_for_hooks(&self) {
        self.hooks.close();
        if tokio::time::timeout(COMMAND_TIMEOUT, self.hooks.wait()).await.is_err() {
            tracing::warn!("watchdog: a hook was still running at exit");
        }
    }

    /// Renews the address lifetime (built-in mode) when a quarter of it has passed.
    pub async fn renew_if_due(&mut self) {
        if self.plan.up_command.is_some() || !self.held() {
            return;
        }
        let due = self.last_renewal.is_none_or(|t| t.elapsed() >= self.plan.lifetime / 4);
        if !due {
            return;
        }
        self.last_renewal = Some(Instant::now());
        if let Err(e) = self.link.add(self.plan.address, self.plan.lifetime).await {
            tracing::warn!(error = %e, "watchdog: cannot renew the VIP's lifetime");
        }
    }

    /// Removes the VIP (stopping an add still running), then runs the de-escalation hook
    /// if the VIP had been added.
    pub async fn release(&mut self) {
        for task in [self.adding.take(), self.announcing.take()].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        let was_held = self.held.swap(false, Ordering::SeqCst);
        let started = Instant::now();
        let removed = match &self.plan.down_command {
            Some(c) => run_command("down_command", c, self.plan.address, &self.plan.interface).await,
            None => self.link.remove(self.plan.address).await,
        };
        match removed {
            Ok(()) => tracing::info!(
                vip = %self.plan.address,
                interface = %self.plan.interface,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "watchdog: VIP removed"
            ),
            Err(e) => tracing::error!(vip = %self.plan.address, error = %e, "watchdog: cannot remove the VIP"),
        }
        if was_held {
            if let Some(c) = &self.plan.de_escalation_command {
                spawn_hook(&self.hooks, "de_escalation_command", c.clone(), self.plan.address, self.plan.interface.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let a = VipAddress { ip: "10.0.0.100".parse().unwrap(), prefix: 24 };
        assert_eq!(expand("ip addr add $VIP/$PREFIX dev $IFACE", a, "eth0"), "ip addr add 10.0.0.100/24 dev eth0");
        assert_eq!(expand("arping -U -I $IFACE -s $VIP $VIP", a, "ens5"), "arping -U -I ens5 -s 10.0.0.100 10.0.0.100");
        assert_eq!(expand("plain", a, "eth0"), "plain");
    }

    #[test]
    fn lifetime_is_whole_seconds_and_outlasts_the_lease() {
        assert_eq!(vip_lifetime(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(vip_lifetime(Duration::from_millis(400)), Duration::from_secs(2));
        assert_eq!(vip_lifetime(Duration::from_millis(1700)), Duration::from_secs(4));
    }

    #[test]
    fn gratuitous_arp_only_where_hosts_use_arp() {
        let link = |kind, flags| LinkHeader { link_layer_type: kind, flags, ..LinkHeader::default() };
        assert!(resolves_with_arp(&link(LinkLayerType::Ether, LinkFlags::Up | LinkFlags::Broadcast)));
        assert!(!resolves_with_arp(&link(LinkLayerType::Loopback, LinkFlags::Up | LinkFlags::Loopback)));
        assert!(!resolves_with_arp(&link(LinkLayerType::Ether, LinkFlags::Up | LinkFlags::Noarp)));
        assert!(!resolves_with_arp(&link(LinkLayerType::None, LinkFlags::Up | LinkFlags::Pointopoint)));
    }

    #[tokio::test]
    async fn commands_report_failures_without_the_command_line() {
        let a = VipAddress { ip: "10.0.0.100".parse().unwrap(), prefix: 24 };
        assert!(run_command("up_command", "test $VIP = 10.0.0.100 && test $IFACE = eth0", a, "eth0").await.is_ok());
        let e = run_command("down_command", "echo nope >&2; echo token=s3cret >/dev/null; exit 3", a, "eth0")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("watchdog.vip.down_command failed") && e.contains("nope"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
