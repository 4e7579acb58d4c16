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
