//! classify() never panics, whatever the input; and what it costs.

use std::time::Instant;

use super::table_tests::TABLE;
use super::*;

/// Every prefix and suffix (on char boundaries) of every table row.
#[test]
fn truncations_never_panic() {
    let mut runs = 0;
    for (sql, _, _) in TABLE {
        for (i, _) in sql.char_indices().chain(std::iter::once((sql.len(), ' '))) {
            let _ = classify(&sql[..i]);
            let _ = classify(&sql[i..]);
            runs += 2;
        }
    }
    assert!(runs > 1000);
}

/// A small deterministic generator, so that failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let pieces = [
        "SELECT", "(", ")", "'", "\"", "$$", "/*", "*/", "--", ";", "\n", "FOR UPDATE", "WITH",
        "INSERT", "\\", "E'", "$1", "::", "é", "😀", "\u{0}", "/*NO LOAD BALANCE*/",
    ];
    for _ in 0..2000 {
        let len = (rng.next() % 24) as usize;
        let mut s = String::new();
        for _ in 0..len {
            let r = rng.next();
            if r % 3 == 0 {
                let bytes: Vec<u8> = (0..(r % 7)).map(|_| rng.next() as u8).collect();
                s.push_str(&String::from_utf8_lossy(&bytes));
            } else {
                s.push_str(pieces[(r as usize / 3) % pieces.len()]);
            }
        }
        let c = classify(&s);
        if c.kind == Kind::Read && c.statements == 0 {
            assert_eq!(c.reason, Reason::Empty, "{s:?}");
        }
    }
}

/// Deep trees on a small thread stack (tokio workers have 2 MB): the tree decoder
/// recurses, so classify() moves to a stack of its own.
#[test]
fn deep_nesting_on_a_small_stack() {
    let run = || {
        for n in [10usize, 30, 60, 100, 1000, 5000] {
            let queries = [
                format!("SELECT * FROM {}t{}", "(SELECT * FROM ".repeat(n), ") s".repeat(n)),
                format!("SELECT {}1", "1+".repeat(n)),
                format!("SELECT {}1{}", "ARRAY[".repeat(n), "]".repeat(n)),
                format!("SELECT {}1{}", "f(".repeat(n), ")".repeat(n)),
                format!("SELECT {}1{}", "CASE WHEN true THEN ".repeat(n), " END".repeat(n)),
                format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
            ];
            for sql in &queries {
                let c = classify(sql);
                // Too deep for the decoder (100 nested messages): primary, never a crash.
                assert!(matches!(c.kind, Kind::Read | Kind::Unparsable), "{n}: {:?}", c.kind);
            }
        }
        let c = classify(&format!("SELECT {}1 FOR UPDATE{}", "(SELECT ".repeat(8), ")".repeat(8)));
        assert_eq!(c.reason.to_string(), "row lock: FOR UPDATE");
    };
    let small = std::thread::Builder::new().stack_size(256 * 1024).spawn(run);
    assert!(small.is_ok_and(|h| h.join().is_ok()));
}

fn micros_per_call(iterations: u32, f: impl Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

/// Prints costs (no thresholds: timing goals live in benchmarks). Run alone
/// (`--test-threads 1`) and in release for meaningful numbers.
#[test]
fn print_costs() {
    let short = "SELECT * FROM accounts WHERE id = $1";
    let mut long = String::from("SELECT a.id, a.name, b.total, c.created_at FROM accounts a ");
    let mut i = 0;
    while long.len() < 1024 {
        long.push_str(&format!(
            "LEFT JOIN orders o{i} ON o{i}.account_id = a.id AND o{i}.status IN ('open', 'paid') "
        ));
        i += 1;
    }
    long.push_str("WHERE a.region = $1 ORDER BY a.id LIMIT 50");
    let measure = move |stack: &'static str| {
        let cache = ClassifierCache::default();
        cache.get_or_classify(short);
        let cold_short = micros_per_call(200, || drop(classify(short)));
        let cold_long = micros_per_call(50, || drop(classify(&long)));
        let hit = micros_per_call(20_000, || drop(cache.get_or_classify(short)));
        println!(
            "classify cold on a {stack} stack: short {cold_short:.1} µs, {} B {cold_long:.1} µs; \
             cache hit {hit:.2} µs",
            long.len()
        );
    };
    for (stack, size) in [("2 MB", 2usize << 20), ("32 MB", 32 << 20)] {
        let m = measure.clone();
        let t = std::thread::Builder::new().stack_size(size).spawn(move || m(stack));
        assert!(t.is_ok_and(|h| h.join().is_ok()));
    }
}
