//! `pgvigil run`: the proxy, the watchdog when configured, and signal handling;
//! `pgvigil witness`: the watchdog alone, as a vote-only member.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::proxy;
use crate::watchdog::{Membership, Watchdog};

/// Runs until SIGTERM (graceful) or SIGINT (fast); SIGHUP reloads. On either stop signal
/// the watchdog goes first: the VIP is removed before sessions are drained.
pub async fn run_until_signalled(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let grace = config.proxy.shutdown_timeout.get();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    raise_descriptor_limit(config.proxy.max_clients);
    // The watchdog starts with the proxy and stops first when it shuts down.
    let mut handle = proxy::start(config, config_path).await?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!(grace = ?grace, "SIGTERM: no new clients; sessions may finish");
                handle.shutdown(grace).await;
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: fast shutdown");
                handle.fast_shutdown().await;
                return Ok(());
            }
            _ = hup.recv() => match handle.reload() {
                Ok(not_applied) if not_applied.is_empty() => tracing::info!("SIGHUP: configuration reloaded"),
                Ok(not_applied) => tracing::warn!(needs_restart = ?not_applied, "SIGHUP: configuration reloaded; these changes need a restart and were not applied"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; keeping the running configuration"),
            },
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit: each client and each
/// server connection is one, and the usual soft default (1024) is below
/// `proxy.max_clients`'s default alone. Says so when the hard limit is still too low.
fn raise_descriptor_limit(max_clients: usize) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    // A client, its server connection(s), and connections still in their startup.
    let wanted = (max_clients as u64).saturating_mul(2).saturating_add(256);
    if lim.rlim_cur < wanted {
        tracing::warn!(
            limit = lim.rlim_cur,
            wanted,
            "the open-file limit is low for proxy.max_clients: raise LimitNOFILE (systemd) or ulimit -n"
        );
    }
}

/// `pgvigil witness`: votes in the watchdog until SIGTERM or SIGINT.
pub async fn run_witness(config: Config) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let Some(w) = &config.watchdog else {
        anyhow::bail!("a witness needs a [watchdog] section");
    };
    let watchdog = Watchdog::start(w, &config.base_dir, Membership::Witness).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: witness stopping"),
        _ = int.recv() => tracing::info!("SIGINT: witness stopping"),
    }
    watchdog.shutdown().await;
    Ok(())
}
