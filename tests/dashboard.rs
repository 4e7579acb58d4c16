//! The admin dashboard in real headless Chromium, against a live primary + 2 standbys:
//! the page shows the primary and the standbys' lag; after the primary is killed it shows
//! the new primary. Screenshots are kept in `target/test-artifacts/`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.exists()))
    })
}

/// Chromium's arguments for one headless load of `url` that lets the page run for a
/// while (its fetches answered) before the DOM is dumped or the screenshot taken.
fn headless(browser: &Path, profile: &Path, url: &str, extra: &[String]) -> std::process::Output {
    let mut cmd = std::process::Command::new(browser);
    cmd.args(["--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars", "--window-size=1280,760", "--virtual-time-budget=4000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url);
    tokio::task::block_in_place(|| cmd.output()).expect("run chromium")
}

fn dom(browser: &Path, profile: &Path, url: &str) -> String {
    let out = headless(browser, profile, url, &["--dump-dom".into()]);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(browser: &Path, profile: &Path, url: &str, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    let _ = std::fs::remove_file(&file);
    let out = headless(browser, profile, url, &[format!("--screenshot={}", file.display())]);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot with something in it: {} ({size} bytes)", file.display());
    file
}

/// The role the page draws for PostgreSQL node `name` (its `data-role`).
fn drawn_role(dom: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!("data-node=\"{name}\""))?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let role = tag.split("data-role=\"").nth(1)?;
    Some(role[..role.find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_primary_and_lag_then_the_new_primary_after_a_kill() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no chromium on PATH (apt-get install -y chromium); .ci/run installs it");
        return;
    };
    let mut env = Env::start(Options { standbys: 2, ..Options::default() }).await;
    wait_standbys_eligible(env.handle(), 1 << 20).await;
    let url = format!("http://{}/", env.handle().admin_addr.expect("admin listener"));
    let profile = tempfile::tempdir().unwrap();

    let page = dom(&browser, profile.path(), &url);
    assert_eq!(drawn_role(&page, "pg0").as_deref(), Some("primary"), "{page}");
    assert_eq!(drawn_role(&page, "pg1").as_deref(), Some("standby"));
    assert!(page.contains("data-primary=\"pg0\""), "the header names the primary");
    for s in ["pg1", "pg2"] {
        let lag = page.split(&format!("data-lag=\"{s}\">")).nth(1).map(|t| &t[..t.find('<').unwrap_or(0)]).unwrap_or("");
        assert!(lag.starts_with("lag ") && lag.contains(" B"), "{s}'s replication arrow shows its lag: {lag:?}");
    }
    let before = screenshot(&browser, profile.path(), &url, "dashboard-before-failover.png");

    tokio::task::block_in_place(|| env.cluster.kill9(0)).unwrap();
    let mut last = String::new();
    let moved = eventually(Duration::from_secs(20), || {
        let page = dom(&browser, profile.path(), &url);
        let ok = ["pg1", "pg2"].iter().any(|n| drawn_role(&page, n).as_deref() == Some("primary")) && page.contains("failover_finished");
        last = page;
        async move { ok }
    })
    .await;
    assert!(moved, "the page shows a new primary and the failover: {last}");
    assert_eq!(drawn_role(&last, "pg0").as_deref(), Some("unknown"), "the killed node");
    assert!(last.contains("data-status=\"fenced\"") || last.contains("data-status=\"down\""));
    let after = screenshot(&browser, profile.path(), &url, "dashboard-after-failover.png");
    eprintln!("screenshots: {} {}", before.display(), after.display());
}
