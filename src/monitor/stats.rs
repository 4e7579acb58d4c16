//! Health-check counters per backend, for `SHOW POOL_HEALTH_CHECK_STATS`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// One backend's health-check statistics since the monitor started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckStatsSnapshot {
    /// Checks made (successes + failures).
    pub total: u64,
    pub successes: u64,
    pub failures: u64,
    /// Checks that retried a failure of an up backend (counted in `total` too).
    pub retries: u64,
    /// The most retries one run of failures took.
    pub max_retries: u64,
    /// Checks skipped: always 0, pgvigil checks every backend.
    pub skipped: u64,
    /// Times the backend was marked down.
    pub marked_down: u64,
    /// Mean check duration, ms; 0 before the first check.
    pub average_duration_ms: f64,
    /// Shortest check, ms; 0 before the first check.
    pub min_duration_ms: u64,
    /// Longest check, ms.
    pub max_duration_ms: u64,
    pub last_check: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    pub last_failure: Option<SystemTime>,
    /// Why the latest failed check failed.
    pub last_error: Option<String>,
}

/// The live counters; one small mutex per backend, taken once per check and per read.
#[derive(Debug, Default)]
pub(crate) struct CheckStats(Mutex<Counters>);

#[derive(Debug, Default)]
struct Counters {
    snapshot: CheckStatsSnapshot,
    total_duration: Duration,
    min_duration: Option<Duration>,
    max_duration: Duration,
    /// Retries in the current run of failures.
    run_retries: u64,
}

impl CheckStats {
    /// Records one check that took `took` and ended at `at`; `error` says why it failed.
    pub(crate) fn record(&self, error: Option<&str>, retry: bool, took: Duration, at: SystemTime) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.total_duration = c.total_duration.saturating_add(took);
        c.min_duration = Some(c.min_duration.map_or(took, |m| m.min(took)));
        c.max_duration = c.max_duration.max(took);
        c.run_retries = if retry { c.run_retries + 1 } else { 0 };
        let (total_duration, min, max, run_retries) = (c.total_duration, c.min_duration, c.max_duration, c.run_retries);
        let s = &mut c.snapshot;
        s.total += 1;
        match error {
            None => {
                s.successes += 1;
                s.last_success = Some(at);
            }
            Some(e) => {
                s.failures += 1;
                s.last_failure = Some(at);
                s.last_error = Some(e.to_string());
            }
        }
        if retry {
            s.retries += 1;
        }
        s.max_retries = s.max_retries.max(run_retries);
        s.last_check = Some(at);
        s.average_duration_ms = total_duration.as_secs_f64() * 1000.0 / s.total as f64;
        s.min_duration_ms = min.map_or(0, millis);
        s.max_duration_ms = millis(max);
    }

    pub(crate) fn marked_down(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).snapshot.marked_down += 1;
    }

    pub(crate) fn snapshot(&self) -> CheckStatsSnapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).snapshot.clone()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_durations_and_times() {
        let stats = CheckStats::default();
        assert_eq!(stats.snapshot(), CheckStatsSnapshot::default());
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        stats.record(None, false, Duration::from_millis(4), t(1));
        stats.record(Some("refused"), false, Duration::from_millis(10), t(2));
        stats.record(Some("refused"), true, Duration::from_millis(1), t(3));
        stats.record(Some("refused"), true, Duration::from_millis(5), t(4));
        stats.marked_down();
        stats.record(None, false, Duration::from_millis(20), t(5));
        stats.record(Some("timed out"), false, Duration::from_millis(5), t(6));
        stats.record(Some("TLS"), true, Duration::from_millis(5), t(7));
        let s = stats.snapshot();
        assert_eq!((s.total, s.successes, s.failures, s.retries, s.skipped, s.marked_down), (7, 2, 5, 3, 0, 1));
        assert_eq!(s.max_retries, 2, "the longest run of retries");
        assert_eq!((s.min_duration_ms, s.max_duration_ms), (1, 20));
        assert!((s.average_duration_ms - 50.0 / 7.0).abs() < 1e-9, "{}", s.average_duration_ms);
        assert_eq!((s.last_check, s.last_success, s.last_failure), (Some(t(7)), Some(t(5)), Some(t(7))));
        assert_eq!(s.last_error.as_deref(), Some("TLS"), "the latest failure's reason");
    }
}
