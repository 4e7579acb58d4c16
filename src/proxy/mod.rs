//! The client-facing proxy: listener, startup and authentication, session forwarding.
//!
//! Tasks: one accept loop ([`listener`]) on `proxy.listen`, and one on the VIP while this
//! node holds it (when `proxy.listen` names one address); one task per client
//! ([`session`]), the pool reaper, and the monitor's per-backend checkers. Shutdown has
//! two stages: `stop_accepting` ends the accept loops (sessions go on), `terminate`
//! tells every session to send `FATAL 57P01` and close. A
//! [`tokio_util::task::TaskTracker`] counts live sessions so a graceful shutdown can wait
//! for them with a deadline.

pub mod access;
pub mod auth;
pub mod cancel;
pub mod catalogs;
mod engine;
pub mod limits;
pub(crate) mod link;
mod listener;
mod local;
pub mod request;
pub mod route;
pub mod session;
pub mod show;
mod startup;
pub mod stream;
pub mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use regex::Regex;

use crate::config::{AuthMethod, Config, ConfigError, RoutingConfig, UsersFile};
use crate::monitor::{self, CheckSettings, ClusterView};
use crate::pool::{PoolKey, PoolSettings, Pools};
use crate::protocol::backend::PgError;
use crate::protocol::scram::ScramVerifier;
use crate::router::balance::{Balancer, ReadTarget};
use crate::router::{ClassifierCache, FunctionPolicy};

/// Settings a reload may change.
pub struct Reloadable {
    pub auth_method: AuthMethod,
    pub users: UsersFile,
    /// SCRAM verifiers derived from plaintext users-file entries, built on first use.
    pub scram_cache: Mutex<HashMap<String, ScramVerifier>>,
    /// `[tls]`, read from its files at start and at every reload.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// `[[auth.hba]]`; `None`: `auth_method` for every client.
    pub access: Option<access::AccessRules>,
    pub limits: limits::ConnectionLimits,
}

/// State every session shares.
pub struct Shared {
    pub reloadable: RwLock<Arc<Reloadable>>,
    pub pools: Arc<Pools>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub monitor: Arc<monitor::Monitor>,
    pub failover: Arc<crate::failover::Failover>,
    /// `failover.write_hold_timeout`.
    pub write_hold: Duration,
    pub cancels: cancel::CancelRegistry,
    pub client_slots: Arc<Semaphore>,
    /// Sessions per user and per database, for `[auth]`'s connection limits.
    pub session_counts: Arc<limits::SessionCounts>,
    pub max_message_size: u64,
    pub startup_timeout: Duration,
    /// `proxy.idle_client_timeout` and `proxy.idle_in_transaction_timeout` (zero: off).
    pub idle_timeouts: IdleTimeouts,
    pub stop_accepting: CancellationToken,
    pub terminate: CancellationToken,
    pub sessions: TaskTracker,
    /// Secret for mock SCRAM verifiers of unknown users (per process).
    pub mock_secret: [u8; 32],
    pub routing: RoutingConfig,
    pub classifier: ClassifierCache,
    /// What a statement counts as when load balancing is off and it is not parsed.
    pub unclassified: Arc<crate::router::Classification>,
    pub function_policy: FunctionPolicy,
    pub balancer: Balancer,
    pub catalogs: catalogs::Catalogs,
    pub stats: stats::RouteStats,
    /// Counters and histograms recorded as things happen (`GET /metrics`).
    pub metrics: crate::metrics::ProxyMetrics,
    /// ParameterStatus values of the primary, per pool key (backend field unused).
    pub startup_params: Mutex<HashMap<PoolKey, Vec<(String, String)>>>,
    redirects: Vec<Redirect>,
    backend_names: Vec<(String, String, u16)>,
    /// The configuration file and the configuration in effect, for reloads.
    reload_state: Mutex<(Option<PathBuf>, Config)>,
    /// The watchdog, when `[watchdog]` is configured.
    pub watchdog: Option<Arc<crate::watchdog::Watchdog>>,
    /// The VIP address clients are accepted on besides `proxy.listen`, while they are.
    pub vip_listener: watch::Sender<Option<SocketAddr>>,
}

/// How long a session may wait for its client's next message (zero: for ever).
#[derive(Debug, Clone, Copy)]
pub struct IdleTimeouts {
    pub outside_tx: Duration,
    pub in_tx: Duration,
}

/// A compiled `[[routing.redirect]]` rule.
struct Redirect {
    application_name: Option<Regex>,
    database: Option<Regex>,
    user: Option<Regex>,
    to: ReadTarget,
}

impl Shared {
    /// Re-reads the configuration file: applies what can change at run time, names the
    /// rest (SIGHUP and the admin API's reload).
    pub fn reload(&self) -> Result<Vec<String>, ConfigError> {
        let mut state = self.reload_state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = state.0.clone() else {
            return Err(ConfigError("no configuration file to reload".into()));
        };
        let next = Config::load(&path)?;
        let reloadable = Reloadable::from_config(&next)?;
        // Compared with the configuration in effect, so a change that needs a restart is
        // reported again at every reload until the restart.
        let old = &state.1;
        let not_applied: Vec<String> = [
            ("proxy.*", old.proxy != next.proxy),
            ("pool.*", old.pool != next.pool),
            ("health_check.*", old.health_check != next.health_check),
            ("log.*", old.log != next.log),
            ("routing.*", old.routing != next.routing),
            ("failover.*", old.failover != next.failover),
            ("rejoin.*", old.rejoin != next.rejoin),
            ("admin.*", old.admin != next.admin),
            ("backends", old.backends != next.backends),
            ("tls.backend_*", (old.tls.backend_tls, &old.tls.backend_ca_file) != (next.tls.backend_tls, &next.tls.backend_ca_file)),
            ("watchdog.*", old.watchdog != next.watchdog),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(section, _)| section.to_string())
        .collect();
        *self.reloadable.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(reloadable);
        state.1.auth = next.auth;
        // The client-facing half of [tls]; backend_tls needs a restart.
        let (backend_tls, backend_ca_file) = (state.1.tls.backend_tls, state.1.tls.backend_ca_file.take());
        state.1.tls = crate::config::TlsConfig { backend_tls, backend_ca_file, ..next.tls };
        state.1.base_dir = next.base_dir;
        Ok(not_applied)
    }

    /// The configuration in effect.
    pub fn config(&self) -> Config {
        self.reload_state.lock().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    pub fn reloadable(&self) -> Arc<Reloadable> {
        self.reloadable.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where a session's reads go by the first matching redirect rule.
    pub fn redirect_target(&self, application_name: &str, database: &str, user: &str) -> ReadTarget {
        let hit = |p: &Option<Regex>, v: &str| p.as_ref().is_none_or(|r| r.is_match(v));
        self.redirects
            .iter()
            .find(|r| hit(&r.application_name, application_name) && hit(&r.database, database) && hit(&r.user, user))
            .map_or(ReadTarget::Any, |r| r.to)
    }

    pub fn backend_name(&self, i: usize) -> &str {
        self.backend_names.get(i).map_or("", |(name, _, _)| name.as_str())
    }

    /// A backend's configured host and port.
    pub fn backend_host(&self, i: usize) -> (String, u16) {
        self.backend_names.get(i).map_or((String::new(), 0), |(_, host, port)| (host.clone(), *port))
    }
}

fn compile_redirects(config: &Config) -> Result<Vec<Redirect>, ConfigError> {
    let re = |p: &Option<String>| -> Result<Option<Regex>, ConfigError> {
        p.as_ref().map(|p| Regex::new(p).map_err(|e| ConfigError(format!("routing.redirect: bad regex {p:?}: {e}")))).transpose()
    };
    config
        .routing
        .redirect
        .iter()
        .map(|r| {
            let to = match r.to.as_str() {
                "primary" => ReadTarget::Primary,
                "standby" => ReadTarget::Standby,
                name => ReadTarget::Node(
                    config
                        .backends
                        .iter()
                        .position(|b| b.name == name)
                        .ok_or_else(|| ConfigError(format!("routing.redirect.to: no backend named {name:?}")))?,
                ),
            };
            Ok(Redirect { application_name: re(&r.application_name)?, database: re(&r.database)?, user: re(&r.user)?, to })
        })
        .collect()
}

/// A running proxy.
pub struct ProxyHandle {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    background: CancellationToken,
    accept_task: tokio::task::JoinHandle<()>,
    /// Accepts on the VIP while this node holds it (`proxy.listen` names one address).
    vip_task: Option<tokio::task::JoinHandle<()>>,
    /// Accepts on `proxy.unix_socket_dir`, and the socket file (removed when dropped).
    unix: Option<(tokio::task::JoinHandle<()>, listener::UnixSocketFile)>,
    /// The admin HTTP listener's address, when it runs.
    pub admin_addr: Option<SocketAddr>,
}

impl Reloadable {
    fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            auth_method: config.auth.method,
            users: config.load_users()?,
            scram_cache: Mutex::new(HashMap::new()),
            tls: crate::tls::load_server(config)?,
            access: access::AccessRules::compile(&config.auth.hba, &config.tls, config.proxy.unix_socket_dir.is_some())?,
            limits: limits::ConnectionLimits::from_config(&config.auth),
        })
    }

    /// How `client` authenticates: by the first matching access rule (its index is
    /// returned too) when there are rules, else by `auth.method`. A refusal is the error
    /// to send.
    pub fn client_auth(&self, client: &access::Client) -> Result<(Option<usize>, access::ClientAuth), PgError> {
        match &self.access {
            Some(rules) => rules.check(client).map(|(i, m)| (Some(i), m)),
            None => Ok((None, self.auth_method.into())),
        }
    }
}

/// Starts the proxy: monitor, pools, listener. Returns once the listener is bound.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<ProxyHandle> {
    let reloadable = Reloadable::from_config(&config)?;
    // First: its errors name their settings before anything listens.
    let watchdog = match &config.watchdog {
        Some(w) => Some(Arc::new(crate::watchdog::Watchdog::start(w, &config.base_dir, crate::watchdog::Membership::Node).await?)),
        None => None,
    };
    let background = CancellationToken::new();
    let backend_tls = Arc::new(crate::tls::backend::BackendTls::load(&config)?);
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
        // WAL positions (lag) are sampled by the same check.
        interval: config.health_check.interval.get().min(config.routing.lag_check_interval.get()),
        timeout: config.health_check.timeout.get(),
        retries: config.health_check.retries,
        retry_delay: config.health_check.retry_delay.get(),
        user: config.health_check.user.clone(),
        password: config.health_check_password(&reloadable.users),
        database: config.health_check.database.clone(),
        tls: backend_tls.clone(),
    };
    let check_password = check.password.clone();
    let monitor = Arc::new(monitor::spawn(nodes, check, background.clone()));
    let view = monitor.subscribe();
    let failover = crate::failover::spawn(
        monitor.clone(),
        crate::failover::Settings {
            automatic: config.failover.automatic,
            max_lag: config.failover.max_lag.0,
            user: config.failover.user.clone().unwrap_or_else(|| config.health_check.user.clone()),
            password: config.failover.password.clone().or_else(|| config.health_check_password(&reloadable.users)),
            database: config.health_check.database.clone(),
            connect_timeout: config.health_check.timeout.get(),
            replay_timeout: config.failover.replay_timeout.get(),
            promote_timeout: config.failover.promote_timeout.get(),
            switchover_drain_timeout: config.failover.switchover_drain_timeout.get(),
            backends: config
                .backends
                .iter()
                .map(|b| crate::failover::Backend {
                    name: b.name.clone(),
                    host: b.host.clone(),
                    port: b.port,
                    no_failover: b.no_failover,
                    priority: b.priority,
                    data_dir: b.data_dir.as_ref().map(|d| if d.is_absolute() { d.clone() } else { config.base_dir.join(d) }),
                })
                .collect(),
            state_dir: config.state_dir(),
            auto_rejoin: config.failover.auto_rejoin,
            pg_bindir: config.failover.pg_bindir.clone(),
            promote_command: config.failover.promote_command.clone(),
            follow_command: config.failover.follow_command.clone(),
            rejoin: crate::failover::rejoin::RejoinSettings {
                allow_reclone: config.rejoin.allow_reclone,
                stop_command: config.rejoin.stop_command.clone(),
                start_command: config.rejoin.start_command.clone(),
                rewind_command: config.rejoin.rewind_command.clone(),
                basebackup_command: config.rejoin.basebackup_command.clone(),
                timeout: config.rejoin.timeout.get(),
            },
            tls: backend_tls.clone(),
        },
        watchdog.clone(),
        background.clone(),
    );
    let pool_settings = PoolSettings {
        size: config.pool.size,
        idle_timeout: config.pool.idle_timeout.get(),
        checkout_timeout: config.pool.checkout_timeout.get(),
        connect_timeout: config.pool.connect_timeout.get(),
        reset_query: config.pool.reset_query.clone(),
    };
    let pools = Arc::new(Pools::new(pool_settings, backend_tls.clone()));
    tokio::spawn(pools.clone().run_reaper(background.clone()));
    let listen = config.listen_addr()?;
    let socket = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("proxy.listen: cannot listen on {listen}: {e}"))?;
    let local_addr = socket.local_addr()?;
    let unix_socket = match &config.proxy.unix_socket_dir {
        Some(dir) => Some(listener::bind_unix(&config.resolve(dir), local_addr.port(), config.unix_socket_mode().unwrap_or(0o777))?),
        None => None,
    };
    let shared = Arc::new(Shared {
        reloadable: RwLock::new(Arc::new(reloadable)),
        pools,
        view,
        monitor: monitor.clone(),
        failover,
        write_hold: config.failover.write_hold_timeout.get(),
        cancels: cancel::CancelRegistry::default(),
        client_slots: Arc::new(Semaphore::new(config.proxy.max_clients)),
        session_counts: Arc::default(),
        max_message_size: config.proxy.max_message_size.0,
        startup_timeout: config.proxy.startup_timeout.get(),
        idle_timeouts: IdleTimeouts {
            outside_tx: config.proxy.idle_client_timeout.get(),
            in_tx: config.proxy.idle_in_transaction_timeout.get(),
        },
        stop_accepting: CancellationToken::new(),
        terminate: CancellationToken::new(),
        sessions: TaskTracker::new(),
        mock_secret: rand::random(),
        routing: config.routing.clone(),
        classifier: ClassifierCache::new(config.routing.classifier_cache_size),
        unclassified: Arc::new(crate::router::Classification::unclassified()),
        function_policy: FunctionPolicy::new(&config.routing.read_only_functions, &config.routing.write_functions)
            .map_err(ConfigError)?,
        balancer: Balancer::new(config.backends.iter().map(|b| b.weight).collect()),
        catalogs: catalogs::Catalogs::new(
            config.health_check.user.clone(),
            check_password,
            config.health_check.timeout.get().max(Duration::from_secs(5)),
            backend_tls,
        ),
        stats: stats::RouteStats::new(config.backends.len()),
        metrics: crate::metrics::ProxyMetrics::default(),
        startup_params: Mutex::new(HashMap::new()),
        redirects: compile_redirects(&config)?,
        backend_names: config.backends.iter().map(|b| (b.name.clone(), b.host.clone(), b.port)).collect(),
        reload_state: Mutex::new((config_path, config.clone())),
        watchdog,
        vip_listener: watch::Sender::new(None),
    });
    let admin_addr = match config.admin.enabled() {
        true => Some(crate::admin::start(&config, shared.clone(), background.clone()).await?),
        false => None,
    };
    let accept_task = tokio::spawn(listener::accept_loop(listener::Listener::Tcp(socket), shared.clone(), shared.stop_accepting.clone()));
    let unix = unix_socket.map(|(socket, file)| {
        tracing::info!(socket = %file.path.display(), "pgvigil proxy listening on a Unix-domain socket");
        (tokio::spawn(listener::accept_loop(listener::Listener::Unix(socket), shared.clone(), shared.stop_accepting.clone())), file)
    });
    let vip_task = match (listener::vip_listen_addr(&config, local_addr), &shared.watchdog) {
        (Some(addr), Some(w)) => Some(tokio::spawn(listener::follow_vip(addr, w.subscribe(), shared.clone()))),
        _ => None,
    };
    tracing::info!(listen = %local_addr, backends = config.backends.len(), "pgvigil proxy listening");
    Ok(ProxyHandle { local_addr, shared, background, accept_task, vip_task, unix, admin_addr })
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

    /// The Unix-domain socket pgvigil listens on (`proxy.unix_socket_dir`), if any.
    pub fn unix_socket(&self) -> Option<&std::path::Path> {
        self.unix.as_ref().map(|(_, f)| f.path.as_path())
    }

    /// The VIP address this node accepts clients on now, besides `local_addr` (only when
    /// `proxy.listen` names one address and this node holds the VIP).
    pub fn vip_listener(&self) -> Option<SocketAddr> {
        *self.shared.vip_listener.borrow()
    }

    /// Re-reads the configuration file: applies what can change at run time, names the rest.
    pub fn reload(&mut self) -> Result<Vec<String>, ConfigError> {
        self.shared.reload()
    }

    /// Graceful shutdown: the watchdog first (the VIP goes before anything else), then
    /// stop accepting, let sessions finish for up to `grace`, then `FATAL 57P01` to the
    /// rest.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(w) = &self.shared.watchdog {
            w.shutdown().await;
        }
        self.shared.stop_accepting.cancel();
        let _ = self.accept_task.await;
        if let Some(t) = self.vip_task {
            let _ = t.await;
        }
        if let Some((t, file)) = self.unix {
            let _ = t.await;
            drop(file);
        }
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
        if let Some(w) = &self.shared.watchdog {
            w.shutdown().await;
        }
        self.shared.terminate.cancel();
        self.shutdown(Duration::ZERO).await;
    }
}
