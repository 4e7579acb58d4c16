//! A bounded, thread-safe cache of classifications keyed by query text.
//!
//! Parsing costs microseconds to a few hundred microseconds; applications repeat the
//! same texts, or the same statement with other constants. Reads and writes are cached
//! by their shape (constants replaced, see `shape.rs`), so `WHERE id = 42` and
//! `WHERE id = 43` share one entry; session-state and transaction statements, whose
//! meaning depends on their constants (`SET x = 1`), are cached by exact text. Sharded
//! mutexes keep contention low; a full shard is cleared (cheap, and a cleared entry
//! costs one re-parse).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use super::classify::classify;
use super::shape::shape_key;
use super::types::{Classification, Kind};

const SHARDS: usize = 16;

/// Query text → classification, at most about `capacity` entries.
pub struct ClassifierCache {
    /// By exact text.
    shards: Vec<Mutex<HashMap<Box<str>, Arc<Classification>>>>,
    /// Reads and writes by shape.
    shapes: Vec<Mutex<HashMap<Box<str>, Arc<Classification>>>>,
    per_shard: usize,
}

impl ClassifierCache {
    /// A cache of about `capacity` entries (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shapes: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
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
        let shape = shape_key(sql);
        if let Some(key) = &shape {
            if let Some(hit) = lock(&self.shapes[shard_of(key)]).get(key.as_str()) {
                return Arc::clone(hit);
            }
        }
        let fresh = Arc::new(classify(sql));
        let (map, key) = match shape {
            Some(key) if shape_safe(&fresh) => (&self.shapes[shard_of(&key)], key.into_boxed_str()),
            _ => (shard, sql.into()),
        };
        let mut map = lock(map);
        if map.len() >= self.per_shard {
            map.clear();
        }
        map.insert(key, Arc::clone(&fresh));
        fresh
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.shards.iter().chain(&self.shapes).map(|s| lock(s).len()).sum()
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

/// Whether every query of this one's shape classifies the same: reads and writes do
/// (constants never decide where they run); SET and friends do not.
fn shape_safe(c: &Classification) -> bool {
    matches!(c.kind, Kind::Read | Kind::Write | Kind::Unparsable)
        && c.setting.is_none()
        && c.prepared.is_none()
        && c.deallocates.is_none()
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
        assert!(cache.len() <= 2 * (32 + SHARDS), "len {}", cache.len());
        assert!(!cache.is_empty());
    }

    #[test]
    fn constants_share_an_entry_but_settings_do_not() {
        let cache = ClassifierCache::new(1000);
        let a = cache.get_or_classify("SELECT * FROM t WHERE id = 1");
        let b = cache.get_or_classify("SELECT * FROM t WHERE id = 2");
        assert!(Arc::ptr_eq(&a, &b));
        let w = cache.get_or_classify("UPDATE t SET x = 'a' WHERE id = 3");
        assert_eq!(w.kind, Kind::Write);
        assert!(Arc::ptr_eq(&w, &cache.get_or_classify("UPDATE t SET x = 'b' WHERE id = 4")));
        let s1 = cache.get_or_classify("SET statement_timeout = 1000");
        let s2 = cache.get_or_classify("SET statement_timeout = 2000");
        assert_eq!(s1.setting.as_ref().unwrap().1, "1000");
        assert_eq!(s2.setting.as_ref().unwrap().1, "2000");
        let r = cache.get_or_classify("SELECT set_config('a.b', '1', false)");
        assert_eq!(r.kind, Kind::SessionState);
        let hint = cache.get_or_classify("/*NO LOAD BALANCE*/ SELECT * FROM t WHERE id = 5");
        assert_eq!(hint.kind, Kind::Write);
        assert_eq!(cache.get_or_classify("SELECT * FROM t WHERE id = 6").kind, Kind::Read);
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
