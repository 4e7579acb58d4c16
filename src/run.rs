//! `pgvigil run`: the proxy plus signal handling.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::proxy;

/// Runs until SIGTERM (graceful) or SIGINT (fast); SIGHUP reloads.
pub async fn run_until_signalled(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let grace = config.proxy.shutdown_timeout.get();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
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
