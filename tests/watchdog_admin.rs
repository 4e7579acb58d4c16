//! Two pgvigil nodes and a witness on loopback, in front of one real cluster: the admin
//! API's `/leader`, `/watchdog` and watchdog metrics, the leadership moving when the
//! leader stops, and (as root) the proxy accepting on a loopback VIP while it holds it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Two pgvigil nodes (a, b) and a running witness (w), their watchdog on loopback.
struct Trio {
    dir: tempfile::TempDir,
    ports: [(&'static str, u16); 3],
    witness: Proc,
}

impl Trio {
    fn start() -> Trio {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("wd.key");
        std::fs::write(&key, "watchdog-test-key-0123456789abcdef").unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let ports = [("a", udp_port()), ("b", udp_port()), ("w", udp_port())];
        let witness_conf = dir.path().join("witness.toml");
        std::fs::write(&witness_conf, Self::section(&dir, &ports, "w")).unwrap();
        let witness = Proc(
            std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil"))
                .args(["witness", "--config"])
                .arg(&witness_conf)
                .stderr(std::fs::File::create(dir.path().join("witness.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        Trio { dir, ports, witness }
    }

    fn section(dir: &tempfile::TempDir, ports: &[(&str, u16)], name: &str) -> String {
        let port = |n: &str| ports.iter().find(|(m, _)| *m == n).unwrap().1;
        let peers: Vec<String> =
            ports.iter().filter(|(n, _)| *n != name).map(|(n, p)| format!("{{ name = \"{n}\", address = \"127.0.0.1:{p}\" }}")).collect();
        format!(
            "[watchdog]\nname = \"{name}\"\nlisten = \"127.0.0.1:{}\"\npeers = [ {} ]\npriority = 10\nauth_key_file = {:?}\n",
            port(name),
            peers.join(", "),
            dir.path().join("wd.key").display().to_string()
        )
    }

    /// The `[watchdog]` section of node `name`.
    fn member(&self, name: &str) -> String {
        Self::section(&self.dir, &self.ports, name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_answers_leader_and_it_moves_when_the_leader_stops() {
    let trio = Trio::start();
    let mut env = Env::start(Options { standbys: 1, extra: trio.member("a"), ..Options::default() }).await;
    let b = env.another_proxy(Options { extra: trio.member("b"), ..Options::default() }).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vip_holder_accepts_on_the_vip_and_stops_when_it_lets_go() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: not root: adding a VIP (here on lo) needs CAP_NET_ADMIN");
        return;
    }
    // Each node listens on an address of its own with the same port (as on two hosts);
    // the VIP is another loopback address, on lo.
    const VIP: &str = "127.0.0.101";
    let ips: [std::net::Ipv4Addr; 3] = [[127, 0, 0, 21].into(), [127, 0, 0, 22].into(), VIP.parse().unwrap()];
    let port = (0..20)
        .map(|_| std::net::TcpListener::bind((ips[0], 0)).unwrap().local_addr().unwrap().port())
        .find(|p| ips.iter().all(|ip| std::net::TcpListener::bind((*ip, *p)).is_ok()))
        .expect("a port free on the three addresses");
    let vip_addr = SocketAddr::from((ips[2], port));
    assert!(!on_lo(VIP), "{VIP} is on lo before the test");
    let mut trio = Trio::start();
    let vip = format!("[watchdog.vip]\naddress = \"{VIP}/32\"\ninterface = \"lo\"\n");
    let opts = |name: &str, i: usize| Options {
        standbys: 1,
        extra: format!("{}{vip}", trio.member(name)),
        listen: SocketAddr::from((ips[i], port)),
        ..Options::default()
    };
    let mut env = Env::start(opts("a", 0)).await;
    let mut b = env.another_proxy(opts("b", 1)).await;

    // One node holds the VIP and accepts there; the other does not.
    let settled = eventually(Duration::from_secs(15), || async {
        let held: Vec<_> = [env.handle(), b.handle()].iter().map(|h| h.vip_listener()).collect();
        held.iter().filter(|l| **l == Some(vip_addr)).count() == 1 && held.iter().all(|l| l.is_none() || *l == Some(vip_addr))
    })
    .await;
    assert!(settled, "one node accepts on {vip_addr}: a {:?} b {:?}", env.handle().vip_listener(), b.handle().vip_listener());
    assert!(on_lo(VIP), "the holder added {VIP} to lo");
    let a_holds = env.handle().vip_listener().is_some();
    let (holder, other) = if a_holds { (env.handle(), b.handle()) } else { (b.handle(), env.handle()) };
    let old = connect(pg_at(vip_addr)).await.expect("a session through the VIP");
    assert_eq!((holder.shared().sessions.len(), other.shared().sessions.len()), (1, 0), "the VIP's session is on the holder");

    // The holder's watchdog lets go (its proxy runs on): the other node takes the VIP and
    // accepts there; the session the old holder accepted goes on.
    holder.shared().watchdog.as_ref().unwrap().shutdown().await;
    let moved = eventually(Duration::from_secs(15), || async { other.vip_listener() == Some(vip_addr) }).await;
    assert!(moved, "the other node accepts on {vip_addr}: {:?}", other.shared().watchdog.as_ref().map(|w| w.state()));
    assert_eq!(holder.vip_listener(), None);
    let new = connect(pg_at(vip_addr)).await.expect("a session through the VIP after the move");
    assert_eq!((holder.shared().sessions.len(), other.shared().sessions.len()), (1, 1), "the new session is on the new holder");
    let one: i32 = old.query_one("SELECT 1", &[]).await.expect("the old session goes on").get(0);
    assert_eq!(one, 1);
    new.batch_execute("CREATE TABLE vip_moved (x int)").await.unwrap();

    // Without the witness, the new holder hears no quorum: its lease ends, it lets go of
    // the VIP while it runs on, and stops accepting there; its session goes on.
    trio.witness.0.kill().unwrap();
    let released = eventually(Duration::from_secs(15), || async { other.vip_listener().is_none() }).await;
    assert!(released, "no quorum, no VIP: {:?}", other.shared().watchdog.as_ref().map(|w| w.state()));
    assert!(!on_lo(VIP), "{VIP} left lo with the lease");
    let Err(refused) = connect(pg_at(vip_addr)).await else { panic!("nobody accepts on the VIP") };
    assert!(format!("{refused:?}").contains("onnection refused"), "{refused:?}");
    new.batch_execute("INSERT INTO vip_moved VALUES (1)").await.expect("the new holder's session goes on");
    drop((old, new));

    // Stopping both nodes leaves no VIP on lo.
    for h in [b.handle.take(), env.proxy.take()].into_iter().flatten() {
        h.fast_shutdown().await;
    }
    assert!(!on_lo(VIP), "{VIP} removed from lo");
}
