//! Real client programs through pgvigil: psql gives byte-identical output, pgbench runs
//! without failed transactions.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn psql_script(port: u16, db: &str, script: &Path, dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let out = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER, "-d", db, "-f"])
        .arg(script)
        .current_dir(dir)
        .env("PGPASSWORD", SUPERPASS)
        .env("PGTZ", "UTC")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run psql");
    let mut combined = out.stdout;
    combined.extend_from_slice(b"\n--- stderr ---\n");
    combined.extend_from_slice(&out.stderr);
    let copied = std::fs::read(dir.join("out.tsv")).unwrap_or_default();
    (combined, copied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_output_is_byte_identical() {
    let env = Env::start(Options::default()).await;
    env.cluster.psql(0, "postgres", "CREATE DATABASE via_direct").unwrap();
    env.cluster.psql(0, "postgres", "CREATE DATABASE via_pgvigil").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mix.sql");
    let results: Vec<(Vec<u8>, Vec<u8>)> = [(env.cluster.node(0).port, "via_direct"), (env.addr.port(), "via_pgvigil")]
        .into_iter()
        .map(|(port, db)| {
            let dir = env.dir.path().join(db);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("data.tsv"), "from file 1\t3\nfrom file 2\t4\n").unwrap();
            psql_script(port, db, &script, &dir)
        })
        .collect();
    let (direct, proxied) = (&results[0], &results[1]);
    let text = String::from_utf8_lossy(&direct.0);
    // The script really exercised errors, notices, COPY and large values.
    for needle in ["ERROR:  division by zero", "NOTICE:  a notice with 42", "WARNING:  and a warning", "n is 50", "3000000", "current transaction is aborted"] {
        assert!(text.contains(needle), "direct output lacks {needle:?}:\n{text}");
    }
    if direct.0 != proxied.0 {
        let p = String::from_utf8_lossy(&proxied.0);
        let first = text.lines().zip(p.lines()).position(|(a, b)| a != b);
        panic!("psql output differs at line {first:?}\n--- direct ---\n{text}\n--- pgvigil ---\n{p}");
    }
    assert_eq!(direct.1, proxied.1, "\\copy to a file gives the same bytes");
    assert!(!direct.1.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_every_mode_has_no_failed_transactions() {
    let env = Env::start(Options::default()).await;
    let port = env.addr.port();
    let init = pgbench(port, &["-i", "-s", "1", "-q"]);
    assert!(init.contains("done"), "{init}");
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(port, &["-M", mode, "-c", "4", "-j", "2", "-t", "200"]);
        assert!(out.contains("number of transactions actually processed: 800/800"), "{mode}:\n{out}");
        assert!(out.contains("number of failed transactions: 0 "), "{mode}:\n{out}");
    }
    let out = pgbench(port, &["-S", "-M", "prepared", "-c", "8", "-j", "2", "-t", "200", "-C"]);
    assert!(out.contains("number of failed transactions: 0 "), "reconnecting clients:\n{out}");
}
