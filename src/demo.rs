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

/// Builds the cluster, runs pgvigil until Ctrl-C or SIGTERM, then removes everything.
pub async fn run(port: u16, standbys: usize) -> anyhow::Result<()> {
    let bin = PgBin::find().map_err(|e| anyhow::anyhow!("{e}"))?;
    say!("pgvigil demo: building a primary and {standbys} hot standbys with PostgreSQL {} ({})", bin.version, bin.bindir.display());
    let password = format!("demo-{:016x}", rand::random::<u64>());
    let pw = password.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        LocalCluster::builder().standbys(standbys).hba(HbaMethod::ScramSha256).superuser_password(&pw).build()
    })
    .await?
    .map_err(|e| anyhow::anyhow!("building the demo cluster failed: {e}"))?;
    let dir = cluster.dir().to_path_buf();
    let port = free_port(port).context("no free port for the demo proxy")?;

    let mut backends = String::new();
    for n in cluster.nodes() {
        backends.push_str(&format!("[[backends]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\n\n", n.name, n.host, n.port));
    }
    let config_path = dir.join("pgvigil.toml");
    let users_path = dir.join("users.toml");
    std::fs::write(&users_path, format!("postgres = \"{password}\"\n")).context("writing the demo users file")?;
    let admin_port = free_port(9898).context("no free port for the admin API")?;
    let token = format!("{:032x}", rand::random::<u128>());
    std::fs::write(dir.join("admin.token"), &token).context("writing the demo admin token")?;
    let text = format!(
        "# Written by `pgvigil demo`.\n[proxy]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"admin.token\"\n\n[auth]\nmethod = \"trust\"\nusers_file = \"users.toml\"\n\n\
         [health_check]\ninterval = \"500ms\"\nuser = \"postgres\"\n\n{backends}"
    );
    std::fs::write(&config_path, text).context("writing the demo configuration")?;
    let config = Config::load(&config_path)?;
    let handle = proxy::start(config, Some(config_path.clone())).await?;
    if !handle.wait_for_primary(Duration::from_secs(30)).await {
        anyhow::bail!("pgvigil did not find the demo primary within 30 s");
    }

    say!();
    say!("pgvigil is running in front of:");
    for (i, n) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        say!("  {:<4} {role:<8} 127.0.0.1:{}", n.name, n.port);
    }
    say!();
    say!("Connect with:");
    say!("  psql -h 127.0.0.1 -p {port} -U postgres postgres");
    say!();
    if let Some(admin) = handle.admin_addr {
        say!("Admin API (token in {}):", dir.join("admin.token").display());
        say!("  curl http://{admin}/nodes");
        say!("  curl -X POST -H \"Authorization: Bearer $(cat {})\" http://{admin}/switchover", dir.join("admin.token").display());
        say!();
    }
    say!("Configuration: {}  (data, logs and sockets under {})", config_path.display(), dir.display());
    say!("Press Ctrl-C to stop; everything is removed.");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    say!("pgvigil demo: stopping");
    handle.fast_shutdown().await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    say!("pgvigil demo: removed {}", dir.display());
    Ok(())
}

/// `wanted` if it is free on 127.0.0.1, else the next free port above it (0: any).
fn free_port(wanted: u16) -> Option<u16> {
    if wanted == 0 {
        return TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).ok()?.local_addr().ok().map(|a| a.port());
    }
    (wanted..=u16::MAX).take(200).find(|p| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, *p))).is_ok())
}
