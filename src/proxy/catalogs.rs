//! Function volatility per database, loaded from `pg_proc` on first need and cached.
//!
//! The catalog is read with the health-check role from any up node (standbys have the
//! same `pg_proc`). A DDL statement seen by any session marks its database's catalog
//! stale, so a function created later is found at the next lookup; until then an
//! unknown function counts as writing, which errs towards the primary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::monitor::ClusterView;
use crate::router::FunctionCatalog;

/// After a failed load, wait this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

enum Entry {
    Ready(Arc<FunctionCatalog>),
    Stale(Arc<FunctionCatalog>),
    Failed(Instant),
}

pub struct Catalogs {
    entries: Mutex<HashMap<String, Entry>>,
    load: tokio::sync::Mutex<()>,
    user: String,
    password: Option<String>,
    timeout: Duration,
    tls: Arc<crate::tls::backend::BackendTls>,
}

impl Catalogs {
    pub fn new(user: String, password: Option<String>, timeout: Duration, tls: Arc<crate::tls::backend::BackendTls>) -> Self {
        Self { entries: Mutex::new(HashMap::new()), load: tokio::sync::Mutex::new(()), user, password, timeout, tls }
    }

    fn cached(&self, database: &str) -> Option<Option<Arc<FunctionCatalog>>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(database)? {
            Entry::Ready(c) => Some(Some(c.clone())),
            Entry::Failed(at) if at.elapsed() < RETRY_AFTER => Some(None),
            _ => None,
        }
    }

    /// The catalog of `database`, loading it when missing or stale. `None` when it
    /// cannot be loaded (every user function then counts as writing).
    pub async fn get(&self, database: &str, view: &ClusterView) -> Option<Arc<FunctionCatalog>> {
        if let Some(hit) = self.cached(database) {
            return hit;
        }
        let _guard = self.load.lock().await;
        if let Some(hit) = self.cached(database) {
            return hit;
        }
        let loaded = self.load_from(database, view).await;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(c) => {
                tracing::debug!(database, functions = c.len(), "function catalog loaded");
                let c = Arc::new(c);
                entries.insert(database.to_string(), Entry::Ready(c.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::warn!(database, error = %e, "cannot load the function catalog; user functions go to the primary");
                match entries.remove(database) {
                    // Better a stale catalog than none.
                    Some(Entry::Stale(c)) => {
                        entries.insert(database.to_string(), Entry::Stale(c.clone()));
                        Some(c)
                    }
                    _ => {
                        entries.insert(database.to_string(), Entry::Failed(Instant::now()));
                        None
                    }
                }
            }
        }
    }

    /// Marks a database's catalog for reloading at the next lookup.
    pub fn invalidate(&self, database: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Entry::Ready(c)) = entries.remove(database) {
            entries.insert(database.to_string(), Entry::Stale(c));
        }
    }

    async fn load_from(&self, database: &str, view: &ClusterView) -> anyhow::Result<FunctionCatalog> {
        let mut order: Vec<usize> = view.nodes.iter().enumerate().filter(|(_, n)| n.up).map(|(i, _)| i).collect();
        if let Some(p) = view.primary() {
            order.retain(|&i| i != p);
            order.insert(0, p);
        }
        let mut last = anyhow::anyhow!("no backend is up");
        for i in order {
            let node = &view.nodes[i];
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(node.addr.ip().to_string()).port(node.addr.port()).user(&self.user).dbname(database);
            cfg.application_name("pgvigil catalog").connect_timeout(self.timeout);
            if let Some(p) = &self.password {
                cfg.password(p);
            }
            let tls = self.tls.postgres(i, &mut cfg);
            let attempt = async {
                let (client, conn) = cfg.connect(tls).await?;
                let task = tokio::spawn(conn);
                let c = crate::monitor::catalog::load_functions(&client).await;
                drop(client);
                let _ = task.await;
                c
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => last = anyhow::anyhow!(crate::tls::postgres::describe(&e, self.tls.mode())),
                Err(_) => last = anyhow::anyhow!("timed out after {:?}", self.timeout),
            }
        }
        Err(last)
    }
}
