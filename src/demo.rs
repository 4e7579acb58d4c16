//! `pgvigil demo`: a local primary + standbys and pgvigil in front, with no configuration.
//!
//! The cluster uses SCRAM towards its servers; pgvigil lets local clients in with
//! `trust` and logs in to PostgreSQL with the generated password from its users file,
//! so the printed psql command needs no password.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::cluster::{HbaMethod, LocalCluster, PgBin};
use crate::config::Config;
use crate::proxy;

/// Prints to stdout, ignoring a closed stdout (the demo must still clean up).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Builds the cluster, runs two pgvigil nodes and a witness in front of it until Ctrl-C or
/// SIGTERM (killing the primary after `failover_after`, when given), then removes
/// everything.
pub async fn run(port: u16, standbys: usize, failover_after: Option<Duration>) -> anyhow::Result<()> {
    let bin = PgBin::find().map_err(|e| anyhow::anyhow!("{e}"))?;
    say!("pgvigil demo: building a primary and {standbys} hot standbys with PostgreSQL {} ({})", bin.version, bin.bindir.display());
    let password = format!("demo-{:016x}", rand::random::<u64>());
    let pw = password.clone();
    let mut cluster = tokio::task::spawn_blocking(move || {
        LocalCluster::builder().standbys(standbys).hba(HbaMethod::ScramSha256).superuser_password(&pw).build()
    })
    .await?
    .map_err(|e| anyhow::anyhow!("building the demo cluster failed: {e}"))?;
    let dir = cluster.dir().to_path_buf();

    let mut backends = String::new();
    for n in cluster.nodes() {
        backends.push_str(&format!("[[backends]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\n\n", n.name, n.host, n.port));
    }
    std::fs::write(dir.join("users.toml"), format!("postgres = \"{password}\"\n")).context("writing the demo users file")?;
    let token = format!("{:032x}", rand::random::<u128>());
    std::fs::write(dir.join("admin.token"), &token).context("writing the demo admin token")?;
    let key = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
    std::fs::write(dir.join("watchdog.key"), &key).context("writing the demo watchdog key")?;
    std::fs::set_permissions(dir.join("watchdog.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;

    // Two pgvigil nodes and a witness, their watchdog on loopback.
    let names = ["a", "b", "w"];
    let wd_ports: Vec<u16> = names.iter().map(|_| free_udp_port()).collect::<Option<_>>().context("no free UDP port for the watchdog")?;
    let watchdog_of = |i: usize| {
        let peers: Vec<String> = (0..3).filter(|&j| j != i).map(|j| format!("{{ name = \"{}\", address = \"127.0.0.1:{}\" }}", names[j], wd_ports[j])).collect();
        format!(
            "[watchdog]\nname = \"{}\"\nlisten = \"127.0.0.1:{}\"\npeers = [ {} ]\npriority = {}\nauth_key_file = \"watchdog.key\"\n",
            names[i],
            wd_ports[i],
            peers.join(", "),
            20 - i * 10
        )
    };
    // With the VIP, each node listens on an address of its own with one port, and the
    // leader on the VIP too; without it, both on 127.0.0.1 with two ports.
    let vip_port = match vip_unavailable().await {
        None => Some(free_port(port, &[NODE_IPS[0], NODE_IPS[1], VIP]).context("no port free on the demo's loopback addresses")?),
        Some(why) => {
            say!("pgvigil demo: no virtual IP ({why})");
            None
        }
    };
    let vip_section = match vip_port {
        Some(_) => format!("\n[watchdog.vip]\naddress = \"{VIP}/32\"\ninterface = \"lo\"\n"),
        None => String::new(),
    };
    let mut handles = Vec::new();
    let mut next_port = port;
    let mut next_admin = 9898;
    for (i, name) in names.iter().take(2).enumerate() {
        let listen = match vip_port {
            Some(port) => SocketAddr::from((NODE_IPS[i], port)),
            None => {
                let port = free_port(next_port, &[Ipv4Addr::LOCALHOST]).context("no free port for the demo proxy")?;
                next_port = if port == 0 { 0 } else { port + 1 };
                SocketAddr::from((Ipv4Addr::LOCALHOST, port))
            }
        };
        let admin = free_port(next_admin, &[Ipv4Addr::LOCALHOST]).context("no free port for the admin API")?;
        next_admin = admin + 1;
        let config_path = dir.join(format!("pgvigil-{name}.toml"));
        let text = format!(
            "# Written by `pgvigil demo`: pgvigil node {name}.\n[proxy]\nlisten = \"{listen}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_file = \"admin.token\"\n\n[auth]\nmethod = \"trust\"\nusers_file = \"users.toml\"\n\n\
             [health_check]\ninterval = \"500ms\"\nuser = \"postgres\"\n\n[failover]\nstate_dir = \"state-{name}\"\n\n{}{vip_section}\n{backends}",
            watchdog_of(i)
        );
        std::fs::write(&config_path, text).context("writing the demo configuration")?;
        let config = Config::load(&config_path)?;
        handles.push((name, config_path.clone(), proxy::start(config, Some(config_path)).await?));
    }
    let witness_path = dir.join("witness.toml");
    std::fs::write(&witness_path, format!("# Written by `pgvigil demo`: the witness.\n{}", watchdog_of(2)))?;
    let witness_config = Config::load_witness(&witness_path)?;
    let witness = match &witness_config.watchdog {
        Some(w) => crate::watchdog::Watchdog::start(w, &witness_config.base_dir, crate::watchdog::Membership::Witness).await?,
        None => anyhow::bail!("the demo witness has no [watchdog]"),
    };
    for (_, _, h) in &handles {
        if !h.wait_for_primary(Duration::from_secs(30)).await {
            anyhow::bail!("pgvigil did not find the demo primary within 30 s");
        }
    }
    // The leader is elected about a second after start; the VIP line is printed once
    // clients can use it.
    let mut vip_listener = None;
    if vip_port.is_some() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while vip_listener.is_none() && tokio::time::Instant::now() < deadline {
            vip_listener = handles.iter().find_map(|(_, _, h)| h.vip_listener());
            if vip_listener.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if vip_listener.is_none() {
            say!("pgvigil demo: no node took the virtual IP {VIP} within 30 s (see the log); connect to a node directly");
        }
    }

    say!();
    say!("pgvigil is running in front of:");
    for (i, n) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        say!("  {:<4} {role:<8} 127.0.0.1:{}", n.name, n.port);
    }
    say!();
    say!("Two pgvigil nodes (a, b) and a witness (w) elect a leader with their watchdog on loopback.");
    match vip_listener {
        Some(_) => {
            say!("The leader holds the virtual IP {VIP} on lo and accepts clients there; when it stops, the");
            say!("other node takes the VIP over (docs/watchdog.md).");
        }
        None => say!("Without a virtual IP, connect to either node (docs/watchdog.md)."),
    }
    say!();
    say!("Connect with:");
    if let Some(addr) = vip_listener {
        say!("  psql -h {} -p {} -U postgres postgres      # the VIP: the leader", addr.ip(), addr.port());
    }
    for (name, _, h) in &handles {
        say!("  psql -h {} -p {} -U postgres postgres      # node {name}", h.local_addr.ip(), h.local_addr.port());
    }
    say!();
    let token_file = dir.join("admin.token");
    for (name, _, h) in &handles {
        if let Some(admin) = h.admin_addr {
            say!("Node {name}: dashboard http://{admin}/   admin API http://{admin}/nodes");
        }
    }
    if let Some(admin) = handles[0].2.admin_addr {
        say!();
        say!("Try:");
        say!("  pgvigil ctl --admin http://{admin} nodes");
        say!("  pgvigil ctl --admin http://{admin} watchdog");
        say!("  pgvigil ctl --admin http://{admin} events");
        say!("  pgvigil ctl --admin http://{admin} --token-file {} switchover    # on the leader", token_file.display());
    }
    say!();
    let configs: Vec<String> = handles.iter().map(|(_, p, _)| p.display().to_string()).collect();
    say!("Configuration: {}  (data, logs and sockets under {})", configs.join(", "), dir.display());
    if let Some(after) = failover_after {
        say!("The primary pg0 will be killed (kill -9) in {after:?}: watch the dashboard.");
    }
    say!("Press Ctrl-C to stop; everything is removed.");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let kill_at = tokio::time::sleep(failover_after.unwrap_or(Duration::MAX / 4));
    tokio::pin!(kill_at);
    let mut killed = failover_after.is_none();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = &mut kill_at, if !killed => {
                killed = true;
                say!("pgvigil demo: kill -9 of the primary pg0 now");
                if let Err(e) = tokio::task::block_in_place(|| cluster.kill9(0)) {
                    say!("pgvigil demo: could not kill pg0: {e}");
                }
            }
        }
    }
    say!("pgvigil demo: stopping");
    witness.shutdown().await;
    for (_, _, h) in handles {
        h.fast_shutdown().await;
    }
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    say!("pgvigil demo: removed {}", dir.display());
    Ok(())
}

/// The demo's VIP, on lo, and the addresses of its two nodes with a VIP.
const VIP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);
const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)];

/// Why the demo runs without a VIP, if it must.
async fn vip_unavailable() -> Option<String> {
    if !has_cap_net_admin() {
        // SAFETY: geteuid has no preconditions.
        return Some(match unsafe { libc::geteuid() } {
            0 => "this process lacks CAP_NET_ADMIN, which adding a VIP needs".into(),
            _ => "not root: adding a VIP needs CAP_NET_ADMIN".into(),
        });
    }
    // The nodes would take it from whoever added it (another demo?).
    match crate::watchdog::vip::is_on_interface("lo", VIP).await {
        Ok(false) => None,
        Ok(true) => Some(format!("{VIP} is already on lo: is another pgvigil demo running?")),
        Err(e) => Some(e.to_string()),
    }
}

/// CAP_NET_ADMIN is in this process's effective set (`CapEff` in /proc/self/status).
fn has_cap_net_admin() -> bool {
    // linux/capability.h
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// A free UDP port on 127.0.0.1.
fn free_udp_port() -> Option<u16> {
    std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).ok()?.local_addr().ok().map(|a| a.port())
}

/// `wanted` if it is free on each of `ips`, else the next such port above it (0: one the
/// kernel picks on the first address).
fn free_port(wanted: u16, ips: &[Ipv4Addr]) -> Option<u16> {
    let free = |p: u16| ips.iter().all(|ip| TcpListener::bind(SocketAddr::from((*ip, p))).is_ok());
    if wanted == 0 {
        let any = || TcpListener::bind(SocketAddr::from((*ips.first()?, 0))).ok()?.local_addr().ok().map(|a| a.port());
        return (0..20).filter_map(|_| any()).find(|p| free(*p));
    }
    (wanted..=u16::MAX).take(200).find(|p| free(*p))
}
