//! Two pgvigil nodes and a witness on loopback (no VIP), in front of one real cluster:
//! the admin API's `/leader`, `/watchdog` and watchdog metrics, and the leadership
//! moving when the leader stops.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return (0, String::new()) };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_answers_leader_and_it_moves_when_the_leader_stops() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("wd.key");
    std::fs::write(&key, "watchdog-test-key-0123456789abcdef").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&key).unwrap().permissions(), 0o600);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (pa, pb, pw) = (udp_port(), udp_port(), udp_port());
    let member = |name: &str, port: u16, others: &[(&str, u16)]| {
        let peers: Vec<String> = others.iter().map(|(n, p)| format!("{{ name = \"{n}\", address = \"127.0.0.1:{p}\" }}")).collect();
        format!(
            "[watchdog]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\npeers = [ {} ]\npriority = 10\nauth_key_file = {:?}\n",
            peers.join(", "),
            key.display().to_string()
        )
    };
    let witness_conf = dir.path().join("witness.toml");
    std::fs::write(&witness_conf, member("w", pw, &[("a", pa), ("b", pb)])).unwrap();
    let witness = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil"))
            .args(["witness", "--config"])
            .arg(&witness_conf)
            .stderr(std::fs::File::create(dir.path().join("witness.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    let mut env = Env::start(Options { standbys: 1, extra: member("a", pa, &[("b", pb), ("w", pw)]), ..Options::default() }).await;
    let b = env.another_proxy(Options { extra: member("b", pb, &[("a", pa), ("w", pw)]), ..Options::default() }).await;
    let admin_a = env.handle().admin_addr.unwrap();
    let admin_b = b.handle().admin_addr.unwrap();

    // Exactly one of them leads.
    let settled = eventually(Duration::from_secs(15), || async {
        let (sa, sb) = (http_get(admin_a, "/leader").await.0, http_get(admin_b, "/leader").await.0);
        (sa == 200) != (sb == 200) && (sa == 503 || sb == 503)
    })
    .await;
    assert!(settled, "one leader: a {:?} b {:?}", http_get(admin_a, "/watchdog").await, http_get(admin_b, "/watchdog").await);
    let a_leads = http_get(admin_a, "/leader").await.0 == 200;
    let (leader_admin, follower_admin, leader, follower) = if a_leads { (admin_a, admin_b, "a", "b") } else { (admin_b, admin_a, "b", "a") };
    let (_, body) = http_get(follower_admin, "/watchdog").await;
    let wd: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(wd["name"], follower);
    assert_eq!(wd["leader"], leader, "{body}");
    assert_eq!(wd["quorum"], true);
    assert_eq!(wd["quorum_size"], 2);
    assert_eq!(wd["members"].as_array().unwrap().len(), 3, "{body}");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil")).args(["ctl", "--admin", &format!("http://{follower_admin}"), "watchdog"]).output().unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with(&format!("leader: {leader}  term: ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with(&format!("{follower} (this node)"))) && text.lines().any(|l| l.starts_with("w ") && l.contains("witness")), "{text}");
    let (_, metrics) = http_get(leader_admin, "/metrics").await;
    assert!(metrics.contains("pgvigil_watchdog_leader 1\n") && metrics.contains("pgvigil_watchdog_state{state=\"leader\"} 1\n"), "{metrics}");
    let (_, metrics) = http_get(follower_admin, "/metrics").await;
    assert!(metrics.contains("pgvigil_watchdog_leader 0\n"), "{metrics}");

    // The primary dies: only the leader promotes, once both nodes see it down; the
    // other node adopts the fence and routes writes to the new primary too.
    let follower_h = if a_leads { b.handle() } else { env.handle() };
    let follower_refuses = follower_h.shared().failover.operate(pgvigil::failover::Op::Detach("pg1".into())).await.unwrap_err();
    assert!(follower_refuses.contains("not the watchdog leader"), "{follower_refuses}");
    tokio::task::block_in_place(|| env.cluster.kill9(0)).unwrap();
    let (leader_h, follower_h) = if a_leads { (env.handle(), b.handle()) } else { (b.handle(), env.handle()) };
    let both = eventually(Duration::from_secs(30), || async {
        [leader_h, follower_h].iter().all(|h| {
            let v = h.shared().view.borrow().clone();
            v.primary() == Some(1) && v.nodes[0].fenced
        })
    })
    .await;
    assert!(both, "both nodes route to pg1 with pg0 fenced: leader {:?} follower {:?}", leader_h.shared().view.borrow(), follower_h.shared().view.borrow());
    let promotions = |h: &pgvigil::proxy::ProxyHandle| h.shared().failover.promotions.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((promotions(leader_h), promotions(follower_h)), (1, 0), "only the leader promoted");
    let events = follower_h.shared().monitor.events.since(0, 1000);
    assert!(events.iter().any(|e| e.event == "cluster_state_adopted"), "{events:?}");
    let writer = connect(if a_leads { b.pg_config() } else { env.pg_config(SUPERUSER, SUPERPASS) }).await.unwrap();
    let port: i32 = writer.query_one("/*NO LOAD BALANCE*/ SELECT inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port, env.port(1), "the follower routes writes to the new primary");

    // The leader stops: the other node leads within a few seconds (the witness votes).
    let stopped = std::time::Instant::now();
    if a_leads {
        env.proxy.take().unwrap().fast_shutdown().await;
    } else {
        drop(b);
    }
    let moved = eventually(Duration::from_secs(10), || async { http_get(follower_admin, "/leader").await.0 == 200 }).await;
    assert!(moved, "{follower} leads after {leader} stopped: {:?}", http_get(follower_admin, "/watchdog").await);
    eprintln!("WATCHDOG: {follower} led {} ms after {leader} stopped", stopped.elapsed().as_millis());
    drop(witness);
}
