//! A bounded, thread-safe cache of classifications keyed by query text.
//!
//! Parsing costs microseconds to a few hundred microseconds; applications repeat the
//! same texts. Sharded mutexes keep contention low; a full shard is cleared (cheap,
//! and a cleared entry costs one re-parse).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use super::classify::classify;
use super::types::Classification;

const SHARDS: usize = 16;

/// Query text → classification, at most about `capacity` entries.
pub struct ClassifierCache {
    shards: Vec<Mutex<HashMap<Box<str>, Arc<Classification>>>>,
    per_shard: usize,
}

impl ClassifierCache {
    /// A cache of about `capacity` entries (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// The cached classification of `sql`, classifying it on a miss. Parsing happens
    /// outside the lock.
    pub fn get_or_classify(&self, sql: &str) -> Arc<Classification> {
        let shard = &self.shards[shard_of(sql)];
        if let Some(hit) = lock(shard).get(sql) {
            return Arc::clone(hit);
        }
        let fresh = Arc::new(classify(sql));
        let mut map = lock(shard);
        if map.len() >= self.per_shard {
            map.clear();
        }
        map.insert(sql.into(), Arc::clone(&fresh));
        fresh
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ClassifierCache {
    /// 10 000 entries.
    fn default() -> Self {
        Self::new(10_000)
    }
}

fn shard_of(sql: &str) -> usize {
    let mut h = DefaultHasher::new();
    sql.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// A poisoned shard only means another thread panicked mid-insert; the map is fine.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Kind;

    #[test]
    fn caches_and_stays_bounded() {
        let cache = ClassifierCache::new(32);
        let a = cache.get_or_classify("SELECT 1");
        let b = cache.get_or_classify("SELECT 1");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.kind, Kind::Read);
        for i in 0..1000 {
            cache.get_or_classify(&format!("SELECT {i}"));
        }
        assert!(cache.len() <= 32 + SHARDS, "len {}", cache.len());
        assert!(!cache.is_empty());
    }

    #[test]
    fn shared_between_threads() {
        let cache = Arc::new(ClassifierCache::default());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let c = cache.get_or_classify(&format!("INSERT INTO t VALUES ({})", i % 10 + t));
                        assert_eq!(c.kind, Kind::Write);
                    }
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().is_ok());
        }
        assert!(cache.len() <= 13);
    }
}
