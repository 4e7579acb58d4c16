//! The client-facing proxy: listener, startup and authentication, session forwarding.
//!
//! Tasks: one accept loop ([`listener`]), one task per client ([`session`]), the pool
//! reaper, and the monitor's per-backend checkers. Shutdown has two stages: `stop_accepting`
//! ends the accept loop (sessions go on), `terminate` tells every session to send
//! `FATAL 57P01` and close. A [`tokio_util::task::TaskTracker`] counts live sessions so a
//! graceful shutdown can wait for them with a deadline.

pub mod auth;
pub mod cancel;
mod listener;
pub mod session;
pub mod show;
mod startup;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AuthMethod, Config, ConfigError, UsersFile};
use crate::monitor::{self, CheckSettings, ClusterView};
use crate::pool::{PoolSettings, Pools};
use crate::protocol::scram::ScramVerifier;

/// Settings a reload may change.
pub struct Reloadable {
    pub auth_method: AuthMethod,
    pub users: UsersFile,
    /// SCRAM verifiers derived from plaintext users-file entries, built on first use.
    pub scram_cache: Mutex<HashMap<String, ScramVerifier>>,
}

/// State every session shares.
pub struct Shared {
    pub reloadable: RwLock<Arc<Reloadable>>,
    pub pools: Arc<Pools>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub cancels: cancel::CancelRegistry,
    pub client_slots: Arc<Semaphore>,
    pub max_message_size: u64,
    pub startup_timeout: Duration,
    pub stop_accepting: CancellationToken,
    pub terminate: CancellationToken,
    pub sessions: TaskTracker,
    /// Secret for mock SCRAM verifiers of unknown users (per process).
    pub mock_secret: [u8; 32],
}

impl Shared {
    pub fn reloadable(&self) -> Arc<Reloadable> {
        self.reloadable.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running proxy.
pub struct ProxyHandle {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    background: CancellationToken,
    accept_task: tokio::task::JoinHandle<()>,
    config_path: Option<PathBuf>,
    config: Config,
}

impl Reloadable {
    fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self { auth_method: config.auth.method, users: config.load_users()?, scram_cache: Mutex::new(HashMap::new()) })
    }
}

/// Starts the proxy: monitor, pools, listener. Returns once the listener is bound.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<ProxyHandle> {
    let reloadable = Reloadable::from_config(&config)?;
    let background = CancellationToken::new();
    let mut nodes = Vec::new();
    for (i, b) in config.backends.iter().enumerate() {
        let addr = tokio::net::lookup_host((b.host.as_str(), b.port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ConfigError(format!("backends[{i}].host: cannot resolve {:?}", b.host)))?;
        nodes.push((b.name.clone(), b.host.clone(), b.port, addr));
    }
    let check = CheckSettings {
        interval: config.health_check.interval.get(),
        timeout: config.health_check.timeout.get(),
        user: config.health_check.user.clone(),
        password: config.health_check_password(&reloadable.users),
        database: config.health_check.database.clone(),
    };
    let view = monitor::spawn(nodes, check, background.clone());
    let pools = Arc::new(Pools::new(PoolSettings {
        size: config.pool.size,
        idle_timeout: config.pool.idle_timeout.get(),
        checkout_timeout: config.pool.checkout_timeout.get(),
        connect_timeout: config.pool.connect_timeout.get(),
        reset_query: config.pool.reset_query.clone(),
    }));
    tokio::spawn(pools.clone().run_reaper(background.clone()));
    let listen = config.listen_addr()?;
    let socket = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("proxy.listen: cannot listen on {listen}: {e}"))?;
    let local_addr = socket.local_addr()?;
    let shared = Arc::new(Shared {
        reloadable: RwLock::new(Arc::new(reloadable)),
        pools,
        view,
        cancels: cancel::CancelRegistry::default(),
        client_slots: Arc::new(Semaphore::new(config.proxy.max_clients)),
        max_message_size: config.proxy.max_message_size.0,
        startup_timeout: config.proxy.startup_timeout.get(),
        stop_accepting: CancellationToken::new(),
        terminate: CancellationToken::new(),
        sessions: TaskTracker::new(),
        mock_secret: rand::random(),
    });
    let accept_task = tokio::spawn(listener::accept_loop(socket, shared.clone()));
    tracing::info!(listen = %local_addr, backends = config.backends.len(), "pgvigil proxy listening");
    Ok(ProxyHandle { local_addr, shared, background, accept_task, config_path, config })
}

impl ProxyHandle {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits until the monitor has found a primary, up to `timeout`.
    pub async fn wait_for_primary(&self, timeout: Duration) -> bool {
        let mut view = self.shared.view.clone();
        tokio::time::timeout(timeout, view.wait_for(|v| v.primary().is_some())).await.is_ok_and(|r| r.is_ok())
    }

    /// Re-reads the configuration file: applies what can change at run time, names the rest.
    pub fn reload(&mut self) -> Result<Vec<String>, ConfigError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ConfigError("no configuration file to reload".into()));
        };
        let next = Config::load(&path)?;
        let reloadable = Reloadable::from_config(&next)?;
        // Compared with the configuration in effect, so a change that needs a restart is
        // reported again at every reload until the restart.
        let old = &self.config;
        let not_applied: Vec<String> = [
            ("proxy.*", old.proxy != next.proxy),
            ("pool.*", old.pool != next.pool),
            ("health_check.*", old.health_check != next.health_check),
            ("log.*", old.log != next.log),
            ("routing.*", old.routing != next.routing),
            ("backends", old.backends != next.backends),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(section, _)| section.to_string())
        .collect();
        *self.shared.reloadable.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(reloadable);
        self.config.auth = next.auth;
        self.config.base_dir = next.base_dir;
        Ok(not_applied)
    }

    /// Graceful shutdown: stop accepting, let sessions finish for up to `grace`, then
    /// `FATAL 57P01` to the rest.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.stop_accepting.cancel();
        let _ = self.accept_task.await;
        self.shared.sessions.close();
        if tokio::time::timeout(grace, self.shared.sessions.wait()).await.is_err() {
            tracing::info!(remaining = self.shared.sessions.len(), "shutdown grace period over, terminating sessions");
        }
        self.shared.terminate.cancel();
        self.shared.sessions.wait().await;
        self.background.cancel();
        tracing::info!("pgvigil stopped");
    }

    /// Fast shutdown: terminate every session at once.
    pub async fn fast_shutdown(self) {
        self.shared.terminate.cancel();
        self.shutdown(Duration::ZERO).await;
    }
}
