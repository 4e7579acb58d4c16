//! Prometheus metrics, rendered in the text exposition format for `GET /metrics`.
//!
//! Most values are read at scrape time from the state pgvigil keeps anyway (the cluster
//! view, routing and health-check counters, pools, failover). What must be recorded as
//! it happens — client connections, bytes, query latency, pool checkout waits — uses the
//! atomics here: fixed-bucket histograms whose memory does not grow between scrapes, one
//! set per pgvigil instance (no process-global registry).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds in seconds for query latency and checkout waits.
pub const LATENCY_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A Prometheus histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_nanos: AtomicU64::new(0) }
    }

    pub fn record(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Writes `name_bucket`, `name_sum`, `name_count` lines with `labels` (e.g.
    /// `node="pg0",` — empty or ending in a comma).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.trim_end_matches(',')) };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// What the proxy records as it happens.
pub struct ProxyMetrics {
    pub client_connections_total: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    /// From a client request (a simple Query, or an extended-protocol batch up to Sync)
    /// reaching pgvigil to its ReadyForQuery.
    pub query_duration: Histogram,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            client_connections_total: AtomicU64::new(0),
            bytes_from_clients: AtomicU64::new(0),
            bytes_to_clients: AtomicU64::new(0),
            query_duration: Histogram::new(&LATENCY_BUCKETS),
        }
    }
}

/// Builds the exposition text one metric family at a time.
pub struct Exposition {
    out: String,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    pub fn new() -> Self {
        Self { out: String::with_capacity(8192) }
    }

    /// `# HELP` and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample; `labels` as `(name, value)` pairs (values escaped here).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        self.out.push_str(&label_text(labels, false));
        let _ = writeln!(self.out, " {value}");
        self
    }

    pub fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        self.family(name, "histogram", help);
        h.render(&mut self.out, name, &label_text(labels, true));
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// `{a="x",b="y"}`, or with `trailing` the inside with a trailing comma (`a="x",`).
fn label_text(labels: &[(&str, &str)], trailing: bool) -> String {
    let inner: String = labels.iter().map(|(k, v)| format!("{k}=\"{}\",", escape(v))).collect();
    if trailing {
        inner
    } else if inner.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", inner.trim_end_matches(','))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative() {
        static B: [f64; 2] = [0.1, 1.0];
        let h = Histogram::new(&B);
        h.record(Duration::from_millis(50));
        h.record(Duration::from_millis(500));
        h.record(Duration::from_secs(3));
        let mut e = Exposition::new();
        e.histogram("x_seconds", "test", &[("node", "a\"b")], &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{node=\"a\\\"b\",le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{node=\"a\\\"b\",le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{node=\"a\\\"b\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_sum{node=\"a\\\"b\"} 3.55\n"), "{text}");
        assert!(text.contains("x_seconds_count{node=\"a\\\"b\"} 3\n"), "{text}");
        assert!(text.starts_with("# HELP x_seconds test\n# TYPE x_seconds histogram\n"));
    }

    #[test]
    fn samples_without_labels() {
        let mut e = Exposition::new();
        e.family("up", "gauge", "u").sample("up", &[], 1.0);
        assert_eq!(e.finish(), "# HELP up u\n# TYPE up gauge\nup 1\n");
    }
}
