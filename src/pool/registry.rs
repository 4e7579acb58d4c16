//! The server connections pgvigil holds, lent to a session or idle in their pool, for
//! SHOW POOL_POOLS. Each pooled connection owns an `Arc<ConnRecord>`; the registry keeps
//! only `Weak` references, so a connection that is closed or dropped anywhere leaves the
//! listing by itself. Lending and returning update the record under its own small lock
//! (once per checkout); what the connection is doing is one atomic byte per request.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// `ConnRecord::activity` values besides a ReadyForQuery status (`I`, `T`, `E`).
const EXECUTING: u8 = b'X';

/// What pgvigil knows about one pooled server connection.
#[derive(Debug)]
pub struct ConnRecord {
    pub backend: usize,
    pub user: String,
    pub database: String,
    /// Number of the pool (backend, user, database, startup parameters) it belongs to.
    pub pool_id: u64,
    pub server_pid: i32,
    pub opened: SystemTime,
    /// Checkouts of the whole pool (shared by its connections).
    pool_checkouts: Arc<AtomicU64>,
    lending: Mutex<Lending>,
    activity: AtomicU8,
}

#[derive(Debug, Default, Clone, Copy)]
struct Lending {
    /// The session using it: (pid pgvigil gave its client, when the client connected).
    session: Option<(i32, SystemTime)>,
    checkouts: u64,
    last_lent: Option<SystemTime>,
    last_returned: Option<SystemTime>,
}

/// What a server connection is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Idle in its pool: no session has it.
    InPool,
    /// Lent, with a request the server has not answered.
    Executing,
    /// Lent, between requests.
    Idle,
    /// Lent, between requests inside a transaction (also a failed one).
    IdleInTransaction,
}

/// A copy of one record, for a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledConn {
    pub backend: usize,
    pub user: String,
    pub database: String,
    pub pool_id: u64,
    pub server_pid: i32,
    pub opened: SystemTime,
    /// Sessions this connection has been lent to.
    pub checkouts: u64,
    pub pool_checkouts: u64,
    pub session: Option<(i32, SystemTime)>,
    pub last_lent: Option<SystemTime>,
    pub last_returned: Option<SystemTime>,
    pub activity: Activity,
}

impl ConnRecord {
    pub(super) fn new(
        backend: usize,
        user: String,
        database: String,
        pool_id: u64,
        server_pid: i32,
        pool_checkouts: Arc<AtomicU64>,
    ) -> Self {
        Self {
            backend,
            user,
            database,
            pool_id,
            server_pid,
            opened: SystemTime::now(),
            pool_checkouts,
            lending: Mutex::new(Lending::default()),
            activity: AtomicU8::new(b'I'),
        }
    }

    fn lending(&self) -> std::sync::MutexGuard<'_, Lending> {
        self.lending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checked out of its pool (the session is named later, by `lend_to`).
    pub(super) fn checked_out(&self) {
        self.pool_checkouts.fetch_add(1, Ordering::Relaxed);
        let mut l = self.lending();
        l.checkouts += 1;
        l.last_lent = Some(SystemTime::now());
        self.activity.store(b'I', Ordering::Relaxed);
    }

    /// The session `pid` (connected at `since`) uses the connection.
    pub fn lend_to(&self, pid: i32, since: SystemTime) {
        self.lending().session = Some((pid, since));
    }

    /// Back in its pool.
    pub(super) fn returned(&self) {
        let mut l = self.lending();
        l.session = None;
        l.last_returned = Some(SystemTime::now());
    }

    /// A request was sent that the server will answer.
    pub fn executing(&self) {
        self.activity.store(EXECUTING, Ordering::Relaxed);
    }

    /// Every request is answered; `status` is the last ReadyForQuery's.
    pub fn ready(&self, status: u8) {
        self.activity.store(status, Ordering::Relaxed);
    }

    fn snapshot(&self) -> PooledConn {
        let l = *self.lending();
        let activity = match (l.session, self.activity.load(Ordering::Relaxed)) {
            (None, _) => Activity::InPool,
            (Some(_), EXECUTING) => Activity::Executing,
            (Some(_), b'T' | b'E') => Activity::IdleInTransaction,
            (Some(_), _) => Activity::Idle,
        };
        PooledConn {
            backend: self.backend,
            user: self.user.clone(),
            database: self.database.clone(),
            pool_id: self.pool_id,
            server_pid: self.server_pid,
            opened: self.opened,
            checkouts: l.checkouts,
            pool_checkouts: self.pool_checkouts.load(Ordering::Relaxed),
            session: l.session,
            last_lent: l.last_lent,
            last_returned: l.last_returned,
            activity,
        }
    }
}

/// Weak references to every live record.
#[derive(Default)]
pub(super) struct Registry {
    records: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    list: Vec<Weak<ConnRecord>>,
    /// Length at which `add` next drops the dead references.
    prune_at: usize,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a new connection; dead entries are dropped once the list doubled.
    pub fn add(&self, record: &Arc<ConnRecord>) {
        let mut r = self.lock();
        if r.list.len() >= r.prune_at {
            r.list.retain(|w| w.strong_count() > 0);
            r.prune_at = (r.list.len() * 2).max(64);
        }
        r.list.push(Arc::downgrade(record));
    }

    /// Every connection still open, ordered by session pid (idle ones first), pool,
    /// backend and server pid.
    pub fn snapshot(&self) -> Vec<PooledConn> {
        let live: Vec<Arc<ConnRecord>> = {
            let mut r = self.lock();
            r.list.retain(|w| w.strong_count() > 0);
            r.list.iter().filter_map(Weak::upgrade).collect()
        };
        let mut out: Vec<PooledConn> = live.iter().map(|c| c.snapshot()).collect();
        out.sort_by_key(|c| (c.session.map_or(0, |s| s.0), c.pool_id, c.backend, c.server_pid));
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().list.iter().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(backend: usize, pool_id: u64, pid: i32, counter: &Arc<AtomicU64>) -> Arc<ConnRecord> {
        Arc::new(ConnRecord::new(backend, "u".into(), "db".into(), pool_id, pid, counter.clone()))
    }

    #[test]
    fn listing_follows_lending_and_drops_closed_connections() {
        let registry = Registry::default();
        let counter = Arc::new(AtomicU64::new(0));
        let a = record(0, 1, 100, &counter);
        let b = record(1, 2, 200, &counter);
        registry.add(&a);
        registry.add(&b);
        a.checked_out();
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10);
        a.lend_to(42, since);
        a.executing();
        b.checked_out();
        b.returned();
        let list = registry.snapshot();
        assert_eq!(list.len(), 2);
        // Idle in its pool sorts first (no session).
        assert_eq!((list[0].server_pid, list[0].activity, list[0].session), (200, Activity::InPool, None));
        assert!(list[0].last_returned.is_some());
        assert_eq!((list[1].server_pid, list[1].activity, list[1].session), (100, Activity::Executing, Some((42, since))));
        assert_eq!((list[1].checkouts, list[1].pool_checkouts), (1, 2));
        a.ready(b'T');
        assert_eq!(registry.snapshot()[1].activity, Activity::IdleInTransaction);
        a.ready(b'I');
        assert_eq!(registry.snapshot()[1].activity, Activity::Idle);
        drop(b);
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.snapshot()[0].server_pid, 100);
    }

    #[test]
    fn dead_references_do_not_pile_up() {
        let registry = Registry::default();
        let counter = Arc::new(AtomicU64::new(0));
        let keep = record(0, 0, 1, &counter);
        registry.add(&keep);
        for pid in 2..1000 {
            registry.add(&record(0, 0, pid, &counter));
        }
        assert!(registry.lock().list.len() <= 128, "{}", registry.lock().list.len());
        assert_eq!(registry.len(), 1);
    }
}
