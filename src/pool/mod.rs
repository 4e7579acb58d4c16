//! Server connection pools, one per (backend, user, database, startup parameters).
//!
//! A pool is a semaphore of `pool.size` permits and a stack of idle connections. A
//! checkout takes a permit (waiting at most `pool.checkout_timeout`), then reuses the
//! most recently returned idle connection that is still clean, or opens a new one. The
//! permit travels with the connection, so at most `size` connections exist per pool.
//! A reaper task closes idle connections past `pool.idle_timeout` or that saw EOF.
//! Every pooled connection is listed in a [`registry`] for SHOW POOL_POOLS.

pub mod registry;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use registry::{Activity, PooledConn};
pub use server::{BackendCredential, ConnectError, ServerConn};

/// Identifies a pool: connections in it are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub backend: usize,
    pub user: String,
    pub database: String,
    /// Other startup parameters, sorted by name.
    pub params: Vec<(String, String)>,
}

impl PoolKey {
    /// The parameters of a server StartupMessage for this key.
    pub fn startup_params(&self) -> Vec<(String, String)> {
        let mut p = vec![("user".to_string(), self.user.clone()), ("database".to_string(), self.database.clone())];
        p.extend(self.params.iter().cloned());
        p
    }
}

/// Settings the pools need; a copy of `[pool]`.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: usize,
    pub idle_timeout: Duration,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub reset_query: String,
}

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no server connection became free within {0:?} (pool.size reached)")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

struct Pool {
    /// Numbered in creation order (SHOW POOL_POOLS' pool_id).
    id: u64,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
    /// Sessions waiting for a free slot.
    waiting: std::sync::atomic::AtomicUsize,
    /// Checkouts since the pool was created.
    checkouts: Arc<AtomicU64>,
}

/// One pool as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolInfo {
    pub backend: usize,
    pub user: String,
    pub database: String,
    /// `pool.size`.
    pub size: usize,
    /// Server connections lent to sessions.
    pub in_use: usize,
    /// Server connections kept idle for the next session.
    pub idle: usize,
    /// Sessions waiting for a free slot.
    pub waiting: usize,
}

/// All pools of this pgvigil node.
pub struct Pools {
    settings: PoolSettings,
    /// `[tls] backend_tls` for new server connections.
    tls: Arc<crate::tls::backend::BackendTls>,
    /// How long checkouts waited for a free slot (0 for most).
    pub checkout_wait: crate::metrics::Histogram,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    next_pool_id: AtomicU64,
    registry: registry::Registry,
}

/// A server connection lent to one client session.
pub struct Checkout {
    pub conn: ServerConn,
    key: PoolKey,
    _permit: OwnedSemaphorePermit,
}

impl Pools {
    pub fn new(settings: PoolSettings, tls: Arc<crate::tls::backend::BackendTls>) -> Self {
        Self {
            settings,
            tls,
            pools: Mutex::new(HashMap::new()),
            checkout_wait: crate::metrics::Histogram::new(&crate::metrics::LATENCY_BUCKETS),
            next_pool_id: AtomicU64::new(0),
            registry: registry::Registry::default(),
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// How connections to backends set up TLS (also used for cancel requests).
    pub fn tls(&self) -> &crate::tls::backend::BackendTls {
        &self.tls
    }

    fn pool(&self, key: &PoolKey) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    id: self.next_pool_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    permits: Arc::new(Semaphore::new(self.settings.size)),
                    idle: Mutex::new(Vec::new()),
                    waiting: 0.into(),
                    checkouts: Arc::new(AtomicU64::new(0)),
                })
            })
            .clone()
    }

    /// Whether an idle connection may be handed out: within `idle_timeout`, no EOF and no
    /// unsolicited bytes.
    fn still_usable(&self, conn: &mut ServerConn) -> bool {
        conn.last_used.elapsed() < self.settings.idle_timeout && conn.is_idle_and_clean()
    }

    /// Lends a server connection for `key`, waiting for a free slot up to the checkout timeout.
    pub async fn checkout(
        &self,
        key: &PoolKey,
        addr: SocketAddr,
        credential: &BackendCredential,
    ) -> Result<Checkout, CheckoutError> {
        let pool = self.pool(key);
        let wait = self.settings.checkout_timeout;
        let permit = match pool.permits.clone().try_acquire_owned() {
            Ok(p) => {
                self.checkout_wait.record(Duration::ZERO);
                p
            }
            Err(_) => {
                pool.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let started = std::time::Instant::now();
                let got = tokio::time::timeout(wait, pool.permits.clone().acquire_owned()).await;
                self.checkout_wait.record(started.elapsed());
                pool.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                match got {
                    Ok(Ok(p)) => p,
                    _ => return Err(CheckoutError::Timeout(wait)),
                }
            }
        };
        loop {
            let candidate = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut conn) = candidate else { break };
            if conn.addr == addr && self.still_usable(&mut conn) {
                if let Some(r) = &conn.record {
                    r.checked_out();
                }
                return Ok(Checkout { conn, key: key.clone(), _permit: permit });
            }
            tracing::debug!(backend = conn.backend, server_pid = conn.pid, "closing stale idle server connection");
        }
        let mut conn =
            ServerConn::connect(key.backend, addr, &key.startup_params(), credential, self.settings.connect_timeout, &self.tls).await?;
        tracing::debug!(backend = key.backend, server_pid = conn.pid, user = %key.user, database = %key.database, "opened server connection");
        let record = Arc::new(registry::ConnRecord::new(
            key.backend,
            key.user.clone(),
            key.database.clone(),
            pool.id,
            conn.pid,
            pool.checkouts.clone(),
        ));
        record.checked_out();
        self.registry.add(&record);
        conn.record = Some(record);
        Ok(Checkout { conn, key: key.clone(), _permit: permit })
    }

    /// Takes a connection back after a session: resets it and keeps it idle, or closes it.
    pub async fn checkin(&self, mut checkout: Checkout) {
        let reset = tokio::time::timeout(self.settings.connect_timeout, checkout.conn.reset(&self.settings.reset_query)).await;
        match reset {
            Ok(Ok(())) => {
                if let Some(r) = &checkout.conn.record {
                    r.returned();
                }
                let pool = self.pool(&checkout.key);
                pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(checkout.conn);
            }
            Ok(Err(e)) => tracing::info!(error = %e, "closing server connection that failed its reset"),
            Err(_) => tracing::info!("closing server connection whose reset timed out"),
        }
    }

    /// Closes idle connections that are too old or no longer clean, and forgets pools
    /// that have no connections and no user.
    pub fn reap(&self) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, pool| {
            let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain_mut(|c| self.still_usable(c));
            let unused = pool.permits.available_permits() == self.settings.size && Arc::strong_count(pool) == 1;
            !(idle.is_empty() && unused)
        });
    }

    /// Every pool's counts, by backend, user and database.
    pub fn snapshot(&self) -> Vec<PoolInfo> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<PoolInfo> = pools
            .iter()
            .map(|(k, p)| PoolInfo {
                backend: k.backend,
                user: k.user.clone(),
                database: k.database.clone(),
                size: self.settings.size,
                in_use: self.settings.size - p.permits.available_permits(),
                idle: p.idle.lock().unwrap_or_else(|p| p.into_inner()).len(),
                waiting: p.waiting.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| (a.backend, &a.user, &a.database).cmp(&(b.backend, &b.user, &b.database)));
        out
    }

    /// Every pooled server connection, lent or idle (SHOW POOL_POOLS).
    pub fn connections(&self) -> Vec<PooledConn> {
        self.registry.snapshot()
    }

    /// Number of pools currently known.
    pub fn pool_count(&self) -> usize {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Runs the reaper until `stop` is cancelled.
    pub async fn run_reaper(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let period = (self.settings.idle_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.reap(),
            }
        }
    }
}
