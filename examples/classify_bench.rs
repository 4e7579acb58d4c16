//! Cost of statement classification: `router::classify` (a full parse every time) and
//! `ClassifierCache::get_or_classify` on a hit, per statement, in microseconds.
//!
//!     cargo run --release --example classify_bench [-- --json] [--millis N]
//!
//! Runs on a thread with a 16 MB stack, as sessions do, so `classify` never switches
//! to a fresh stack. Each figure is the median of 15 timed batches, each batch sized
//! to take about `--millis / 15` ms.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pgvigil::router::{classify, ClassifierCache, Kind};

/// (label, SQL): what applications and pgbench send.
const STATEMENTS: &[(&str, &str)] = &[
    ("pgbench select-only", "SELECT abalance FROM pgbench_accounts WHERE aid = 1234;"),
    ("pgbench, extended", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    ("pgbench update", "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 1234;"),
    ("BEGIN", "BEGIN;"),
    ("SET", "SET search_path TO app, public"),
    (
        "join + aggregate",
        "SELECT c.id, c.name, count(o.id) AS orders, sum(o.total) AS revenue \
         FROM customers c JOIN orders o ON o.customer_id = c.id \
         LEFT JOIN regions r ON r.id = c.region_id \
         WHERE o.created_at >= now() - interval '30 days' AND r.code = ANY($1) \
         GROUP BY c.id, c.name HAVING count(o.id) > 2 ORDER BY revenue DESC LIMIT 20",
    ),
    (
        "CTE with INSERT",
        "WITH moved AS (DELETE FROM job_queue WHERE run_at <= now() AND state = 'done' RETURNING *) \
         INSERT INTO job_archive (id, payload, finished_at) SELECT id, payload, now() FROM moved",
    ),
    (
        "FOR UPDATE SKIP LOCKED",
        "SELECT id, payload FROM job_queue WHERE state = 'ready' AND run_at <= now() \
         ORDER BY priority DESC, id LIMIT 10 FOR UPDATE SKIP LOCKED",
    ),
    ("nextval()", "SELECT nextval('orders_id_seq')"),
    ("hint", "/*NO LOAD BALANCE*/ SELECT balance FROM accounts WHERE id = 42"),
    (
        "ORM-style, long",
        "/* controller='orders',action='index',framework='django' */ \
         SELECT \"orders\".\"id\", \"orders\".\"customer_id\", \"orders\".\"status\", \"orders\".\"total\", \
         \"orders\".\"currency\", \"orders\".\"created_at\", \"orders\".\"updated_at\", \
         \"customers\".\"id\", \"customers\".\"email\", \"customers\".\"name\", \"customers\".\"created_at\", \
         \"addresses\".\"id\", \"addresses\".\"street\", \"addresses\".\"city\", \"addresses\".\"zip\", \
         \"addresses\".\"country\" \
         FROM \"orders\" INNER JOIN \"customers\" ON (\"orders\".\"customer_id\" = \"customers\".\"id\") \
         LEFT OUTER JOIN \"addresses\" ON (\"customers\".\"billing_address_id\" = \"addresses\".\"id\") \
         WHERE (\"orders\".\"status\" IN ('paid', 'shipped', 'delivered') \
         AND \"orders\".\"created_at\" BETWEEN '2024-01-01T00:00:00+00:00'::timestamptz \
         AND '2024-12-31T23:59:59+00:00'::timestamptz \
         AND NOT (\"customers\".\"email\" LIKE '%@example.com') \
         AND EXISTS (SELECT 1 AS \"a\" FROM \"order_items\" U0 WHERE (U0.\"order_id\" = (\"orders\".\"id\") \
         AND U0.\"quantity\" > 0) LIMIT 1)) \
         ORDER BY \"orders\".\"created_at\" DESC, \"orders\".\"id\" DESC LIMIT 50 OFFSET 100",
    ),
];

const BATCHES: usize = 15;

struct Row {
    label: &'static str,
    bytes: usize,
    kind: &'static str,
    reason: String,
    parse_us: f64,
    cached_us: f64,
}

fn main() -> ExitCode {
    let mut json = false;
    let mut millis: u64 = 300;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--millis" => match args.next().and_then(|v| v.parse().ok()) {
                Some(v) if v > 0 => millis = v,
                _ => return usage("--millis needs a positive number"),
            },
            "-h" | "--help" => {
                println!("usage: classify_bench [--json] [--millis N]  (N: time per statement and method, default 300)");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let budget = Duration::from_millis(millis);
    // Sessions classify on 16 MB stacks; so does this.
    let worker = std::thread::Builder::new()
        .name("classify-bench".into())
        .stack_size(16 << 20)
        .spawn(move || measure_all(budget));
    let rows = match worker.map(|h| h.join()) {
        Ok(Ok(rows)) => rows,
        _ => {
            eprintln!("classify_bench: the measuring thread failed");
            return ExitCode::FAILURE;
        }
    };
    if json {
        print_json(&rows, millis);
    } else {
        print_table(&rows);
    }
    ExitCode::SUCCESS
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("classify_bench: {msg}\nusage: classify_bench [--json] [--millis N]");
    ExitCode::from(2)
}

fn measure_all(budget: Duration) -> Vec<Row> {
    let cache = ClassifierCache::new(10_000);
    STATEMENTS
        .iter()
        .map(|&(label, sql)| {
            let c = classify(sql);
            cache.get_or_classify(sql);
            Row {
                label,
                bytes: sql.len(),
                kind: kind_name(&c.kind),
                reason: c.reason.to_string(),
                parse_us: per_call_us(budget, || drop(black_box(classify(black_box(sql))))),
                cached_us: per_call_us(budget, || {
                    drop(black_box(cache.get_or_classify(black_box(sql))))
                }),
            }
        })
        .collect()
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Read => "read",
        Kind::Write => "write",
        Kind::SessionState => "session state",
        Kind::TxControl(_) => "transaction control",
        Kind::Unparsable => "unparsable",
    }
}

/// Median time per call over `BATCHES` batches that together take about `budget`.
fn per_call_us(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up and size a batch from the first calls.
    let start = Instant::now();
    let mut calls = 0u64;
    while calls < 3 || start.elapsed() < Duration::from_millis(5) {
        f();
        calls += 1;
    }
    let one = start.elapsed().as_secs_f64() / calls as f64;
    let per_batch = ((budget.as_secs_f64() / BATCHES as f64) / one).clamp(1.0, 10_000_000.0) as u64;
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[BATCHES / 2]
}

fn print_table(rows: &[Row]) {
    println!("| statement | bytes | kind | classify µs | cached µs | reason |");
    println!("|---|---:|---|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.3} | {} |",
            r.label, r.bytes, r.kind, r.parse_us, r.cached_us, r.reason
        );
    }
}

fn print_json(rows: &[Row], millis: u64) {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"statement\":{},\"bytes\":{},\"kind\":{},\"reason\":{},\"classify_us\":{:.3},\"cached_us\":{:.4}}}",
                json_str(r.label),
                r.bytes,
                json_str(r.kind),
                json_str(&r.reason),
                r.parse_us,
                r.cached_us
            )
        })
        .collect();
    println!(
        "{{\"stack_bytes\":{},\"batches\":{BATCHES},\"millis_per_measurement\":{millis},\"results\":[\n{}\n]}}",
        16 << 20,
        items.join(",\n")
    );
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
