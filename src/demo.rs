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
    let mut handles = Vec::new();
    let mut next_port = port;
    let mut next_admin = 9898;
    for (i, name) in names.iter().take(2).enumerate() {
        let port = free_port(next_port).context("no free port for the demo proxy")?;
        let admin = free_port(next_admin).context("no free port for the admin API")?;
        (next_port, next_admin) = (if port == 0 { 0 } else { port + 1 }, admin + 1);
        let config_path = dir.join(format!("pgvigil-{name}.toml"));
        let text = format!(
            "# Written by `pgvigil demo`: pgvigil node {name}.\n[proxy]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_file = \"admin.token\"\n\n[auth]\nmethod = \"trust\"\nusers_file = \"users.toml\"\n\n\
             [health_check]\ninterval = \"500ms\"\nuser = \"postgres\"\n\n[failover]\nstate_dir = \"state-{name}\"\n\n{}\n{backends}",
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

    say!();
    say!("pgvigil is running in front of:");
    for (i, n) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        say!("  {:<4} {role:<8} 127.0.0.1:{}", n.name, n.port);
    }
    say!();
    say!("Two pgvigil nodes (a, b) and a witness (w) elect a leader with their watchdog on loopback.");
    say!("No virtual IP here: on one host every 127.0.0.0/8 address is already this host's, so a VIP");
    say!("could not move clients between two processes; connect to either node (docs/watchdog.md).");
    say!();
    say!("Connect with:");
    for (name, _, h) in &handles {
        say!("  psql -h 127.0.0.1 -p {} -U postgres postgres      # node {name}", h.local_addr.port());
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

/// A free UDP port on 127.0.0.1.
fn free_udp_port() -> Option<u16> {
    std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).ok()?.local_addr().ok().map(|a| a.port())
}

/// `wanted` if it is free on 127.0.0.1, else the next free port above it (0: any).
fn free_port(wanted: u16) -> Option<u16> {
    if wanted == 0 {
        return TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).ok()?.local_addr().ok().map(|a| a.port());
    }
    (wanted..=u16::MAX).take(200).find(|p| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, *p))).is_ok())
}
