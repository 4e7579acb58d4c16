//! The secrets watch of the whole suite: every test that starts pgvigil through
//! [`super::Env`] registers the secrets of its configuration (passwords, the users file's
//! entries, tokens, keys), and everything pgvigil logs, at `debug` whatever `TEST_LOG`
//! says, is searched for them. So are the errors tests read through
//! [`super::sqlstate`], [`super::psql`] and [`super::Raw`], and the log files of pgvigil
//! binaries the tests run. A secret found fails the next check: when an `Env` or another
//! pgvigil is dropped, with the line it was found in.
#![allow(dead_code)]

use std::io::Write;
use std::sync::Mutex;

/// Shorter strings could be ordinary words of a log line.
const MIN_LEN: usize = 5;

static WATCHED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FOUND: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lock<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches for `secret` from now on, in this test process.
pub fn watch(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_LEN {
        return;
    }
    // A SCRAM verifier's StoredKey and ServerKey, an md5 hash's hex, are secrets alone.
    if let Some((_, keys)) = secret.strip_prefix("SCRAM-SHA-256$").and_then(|v| v.split_once('$')) {
        keys.split(':').for_each(watch);
    }
    if let Some(hex) = secret.strip_prefix("md5").filter(|h| h.len() == 32) {
        watch(hex);
    }
    let mut w = lock(&WATCHED);
    if !w.iter().any(|s| s == secret) {
        w.push(secret.to_string());
    }
}

/// The secrets of a pgvigil configuration in `dir`: the values of keys named `password`,
/// `token` or `*key`, and what the files named by `token_file`, `*key_file` and
/// `users_file` hold (of a PEM key, the end of each line of base64).
pub fn watch_config(text: &str, dir: &std::path::Path) {
    let Ok(value) = text.parse::<toml::Table>() else { return };
    walk(&toml::Value::Table(value), dir);
}

fn walk(v: &toml::Value, dir: &std::path::Path) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                match (k.as_str(), v) {
                    ("password" | "token", toml::Value::String(s)) => watch(s),
                    (k, toml::Value::String(s)) if k.ends_with("key") => watch(s),
                    ("token_file" | "users_file", toml::Value::String(f)) => watch_file(&dir.join(f), k == "users_file"),
                    (k, toml::Value::String(f)) if k.ends_with("key_file") => watch_file(&dir.join(f), false),
                    _ => walk(v, dir),
                }
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| walk(v, dir)),
        _ => {}
    }
}

fn watch_file(path: &std::path::Path, users: bool) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    if users {
        // `name = "secret"` lines: each value.
        if let Ok(t) = text.parse::<toml::Table>() {
            t.values().filter_map(toml::Value::as_str).for_each(watch);
        }
    } else if text.contains("-----BEGIN") {
        // The end of each line of base64: the start of the first is the same in every
        // key of a type.
        for line in text.lines().filter(|l| !l.starts_with("-----") && l.len() >= 40) {
            watch(&line[line.len() - 24..]);
        }
    } else {
        watch(&text);
    }
}

/// Records every watched secret that `text` contains, saying where it was.
pub fn scan(text: &str, place: &str) {
    let hits: Vec<String> = lock(&WATCHED).iter().filter(|s| text.contains(s.as_str())).cloned().collect();
    if !hits.is_empty() {
        let mut found = lock(&FOUND);
        for s in hits {
            found.push(format!("secret {s:?} in {place}: {}", text.trim_end()));
        }
    }
}

/// Panics with what was found since the last check (unless the thread already panics).
pub fn check() {
    if std::thread::panicking() {
        return;
    }
    let found = std::mem::take(&mut *lock(&FOUND));
    assert!(found.is_empty(), "pgvigil showed secrets:\n{}", found.join("\n"));
}

/// A writer for a tracing layer: each formatted event is scanned when the layer is done
/// with it.
#[derive(Default)]
pub struct Scanner(Vec<u8>);

impl Write for Scanner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            scan(&String::from_utf8_lossy(&self.0), "pgvigil's log");
        }
    }
}

/// The layer that formats pgvigil's events at `debug` and scans them.
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    tracing_subscriber::fmt::layer()
        .with_writer(Scanner::default)
        .with_ansi(false)
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("pgvigil", tracing::Level::DEBUG))
}
