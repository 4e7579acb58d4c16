//! Three pgvigil processes in network namespaces in front of one real cluster (a primary
//! and two standbys). PostgreSQL runs in the test's own namespace and is reachable from
//! the members over a veth into their bridge, one address per node (192.0.2.201 for pg0,
//! …), so that a node can be made unreachable from some members only (a reject route in
//! their namespace). A client in the client namespace writes through the VIP and records
//! every failure; the sampler checks that two live members never hold the VIP.
//!
//! Needs root (CI runs as root); otherwise each test says why and returns. Run with
//! `--nocapture` to see the measured times.

#[path = "common/members.rs"]
mod members;
#[path = "common/netns.rs"]
mod netns;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use members::*;
use netns::Net;
use pgvigil::cluster::LocalCluster;

const LONG: Duration = Duration::from_secs(20);
/// Each write through the VIP returns the port of the PostgreSQL node that took it.
const WRITE: &str = "INSERT INTO probe (at) VALUES (now()) RETURNING inet_server_port()";

/// The namespaces (with the host link) and the PostgreSQL cluster reachable from them.
/// Returns the addresses where the members reach pg0, pg1, pg2.
fn start(specs: &[Spec]) -> (LocalCluster, Cluster, Vec<Ipv4Addr>) {
    let net = Net::new(specs.len());
    let pg_addrs = net.attach_host(3);
    let listen: Vec<String> = std::iter::once("127.0.0.1".to_string()).chain(pg_addrs.iter().map(|a| a.to_string())).collect();
    let subnet = format!("{}/24", pg_addrs[0]);
    let pg = LocalCluster::builder()
        .standbys(2)
        .conf(&format!("listen_addresses = '{}'", listen.join(",")))
        .hba_line(&format!("host all all {subnet} trust"))
        .hba_line(&format!("host replication all {subnet} trust"))
        .build()
        .unwrap_or_else(|e| panic!("building the test cluster failed: {e}"));
    pg.psql(0, "postgres", "CREATE TABLE probe (id bigserial PRIMARY KEY, at timestamptz)").expect("create probe table");
    let mut proxy = "[auth]\nmethod = \"trust\"\n[health_check]\ninterval = \"200ms\"\nuser = \"postgres\"\n".to_string();
    for (i, addr) in pg_addrs.iter().enumerate() {
        let n = pg.node(i);
        proxy.push_str(&format!("[[backends]]\nname = \"{}\"\nhost = \"{addr}\"\nport = {}\n", n.name, n.port));
    }
    let setup = Setup { proxy: Some(proxy), log: "info,pgvigil::pool=off,pgvigil::proxy=off", ..Setup::default() };
    let c = Cluster::start_in(net, specs, setup);
    (pg, c, pg_addrs)
}

/// One outcome of the client loop: when it ended and the port that took the write.
type Outcome = (Instant, Result<i32, String>);

/// A client in the client namespace: a write through the VIP every 50 ms on one
/// connection, a new connection after any failure.
struct Client {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    fn start(net: &Net) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let ns = format!("/var/run/netns/{}", net.client);
        let thread = {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let file = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("{ns}: {e}"));
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a valid namespace descriptor, for this thread only.
                assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(client_loop(stop, outcomes));
            })
        };
        Client { stop, outcomes, thread: Some(thread) }
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// The first success after `t`, if any.
    fn first_success_after(&self, t: Instant) -> Option<(Instant, i32)> {
        self.outcomes().into_iter().find_map(|(at, r)| (at > t).then_some(r.ok().map(|p| (at, p))).flatten())
    }

    fn failures_between(&self, from: Instant, to: Instant) -> Vec<String> {
        self.outcomes().into_iter().filter(|(at, _)| *at > from && *at <= to).filter_map(|(_, r)| r.err()).collect()
    }

    fn successes_after(&self, t: Instant) -> usize {
        self.outcomes().iter().filter(|(at, r)| *at > t && r.is_ok()).count()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn client_loop(stop: Arc<AtomicBool>, outcomes: Arc<Mutex<Vec<Outcome>>>) {
    let mut config = tokio_postgres::Config::new();
    config.host(VIP.to_string()).port(PROXY_PORT).user("postgres").dbname("postgres").connect_timeout(Duration::from_secs(1));
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let result = async {
            if client.is_none() {
                let (c, conn) = config.connect(tokio_postgres::NoTls).await.map_err(|e| format!("connect: {e}: {:?}", std::error::Error::source(&e)))?;
                tokio::spawn(conn);
                client = Some(c);
            }
            let c = client.as_ref().expect("connected");
            match tokio::time::timeout(Duration::from_secs(2), c.query_one(WRITE, &[])).await {
                Ok(Ok(row)) => Ok(row.get::<_, i32>(0)),
                Ok(Err(e)) => Err(format!("write: {}", e.as_db_error().map_or(e.to_string(), |d| format!("{} {}", d.code().code(), d.message())))),
                Err(_) => Err("write: no answer within 2 s".into()),
            }
        }
        .await;
        if result.is_err() {
            client = None;
        }
        outcomes.lock().unwrap().push((Instant::now(), result));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on the admin API of member `i`, from the client namespace (the test's own
/// namespace may be cut off from a member by the routes the test adds), as JSON.
fn admin(net: &Net, i: usize, path: &str) -> Option<serde_json::Value> {
    let path = path.to_string();
    Net::within(&net.client, move || get_json(SocketAddr::from((Net::addr(i), ADMIN_PORT)), &path))
}

fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// Member `i`'s view of backend `name`: (role, status).
fn node_seen(net: &Net, i: usize, name: &str) -> Option<(String, String)> {
    let n = admin(net, i, &format!("/nodes/{name}"))?;
    Some((n["role"].as_str()?.to_string(), n["status"].as_str()?.to_string()))
}

fn promotions(net: &Net, i: usize) -> u64 {
    admin(net, i, "/failover").and_then(|f| f["promotions"].as_u64()).unwrap_or_else(|| panic!("member {i} answers /failover"))
}

fn primaries(pg: &LocalCluster) -> Vec<usize> {
    (0..pg.len()).filter(|&i| pg.is_in_recovery(i).ok() == Some(false)).collect()
}

#[test]
fn queries_through_the_vip_resume_after_kill9_of_the_leader() {
    if skip() {
        return;
    }
    let _serial = serial();
    let (pg, mut c, _) = start(&[node("n0", 30), node("n1", 20), node("n2", 10)]);
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 0);
    let client = Client::start(&c.net);
    let began = Instant::now();
    wait_for(LONG, || client.successes_after(began) >= 20).unwrap_or_else(|| panic!("writes through the VIP: {:?}", client.outcomes().last()));
    let port = client.first_success_after(began).unwrap().1;
    assert_eq!(port, pg.node(0).port as i32, "writes reach the primary");

    c.kill9(0);
    let killed = Instant::now();
    let (new, moved) = c.wait_single_holder(LONG);
    assert_ne!(new, 0);
    wait_for(LONG, || client.first_success_after(killed + moved).is_some()).expect("writes through the VIP succeed again");
    let (back, port) = client.first_success_after(killed).expect("a write after the kill");
    let failed = client.failures_between(killed, back);
    eprintln!(
        "measured: kill -9 of the leader -> VIP on {} after {}; first write through the VIP {} after the kill; {} failed attempts meanwhile",
        c.name(new),
        ms(moved),
        ms(back - killed),
        failed.len()
    );
    assert_eq!(port, pg.node(0).port as i32, "the primary did not change");
    // From then on, nothing fails.
    std::thread::sleep(Duration::from_secs(3));
    let later = client.failures_between(back, Instant::now());
    assert!(later.is_empty(), "failures after the client was back: {later:?}");
    assert!(client.successes_after(back) >= 20);
    assert_eq!(primaries(&pg), vec![0], "no failover");
    c.assert_never_two_live_holders();
}

#[test]
fn the_primary_lost_by_one_member_is_no_failover_and_lost_by_all_is_exactly_one() {
    if skip() {
        return;
    }
    let _serial = serial();
    let (pg, mut c, pg_addrs) = start(&[node("n0", 30), node("n1", 20), node("n2", 10)]);
    let (h, _) = c.wait_single_holder(LONG);
    assert_eq!(h, 0);
    for i in 0..3 {
        wait_for(LONG, || node_seen(&c.net, i, "pg0") == Some(("primary".into(), "up".into()))).unwrap_or_else(|| panic!("member {i} sees pg0 up"));
    }
    let client = Client::start(&c.net);
    let began = Instant::now();
    wait_for(LONG, || client.successes_after(began) >= 10).expect("writes through the VIP");

    // n2 alone loses pg0: it stops routing there (quarantined), nobody promotes.
    c.net.set_reachable(2, pg_addrs[0], false);
    let cut = Instant::now();
    let seen = wait_for(LONG, || node_seen(&c.net, 2, "pg0").is_some_and(|(_, s)| s == "quarantined")).expect("n2 quarantines pg0");
    eprintln!("measured: pg0 unreachable from n2 only -> quarantined on n2 after {}", ms(seen));
    std::thread::sleep(Duration::from_secs(5));
    for i in 0..2 {
        assert_eq!(node_seen(&c.net, i, "pg0"), Some(("primary".into(), "up".into())), "member {i} still uses pg0");
    }
    assert_eq!((0..3).map(|i| promotions(&c.net, i)).sum::<u64>(), 0, "no promotion");
    assert_eq!(primaries(&pg), vec![0]);
    let failed = client.failures_between(cut, Instant::now());
    assert!(failed.is_empty(), "writes through the leader went on: {failed:?}");

    // Every member loses pg0: exactly one failover, and every member routes to the new
    // primary.
    c.net.set_reachable(0, pg_addrs[0], false);
    c.net.set_reachable(1, pg_addrs[0], false);
    let lost = Instant::now();
    let promoted = wait_for(LONG, || primaries(&pg).len() == 2).expect("a standby is promoted");
    let new = *primaries(&pg).iter().find(|&&p| p != 0).unwrap();
    let name = pg.node(new).name.clone();
    for i in 0..3 {
        wait_for(LONG, || node_seen(&c.net, i, &name).is_some_and(|(r, s)| r == "primary" && s == "up")).unwrap_or_else(|| panic!("member {i} uses {name}"));
    }
    wait_for(LONG, || client.first_success_after(lost).is_some_and(|(_, p)| p == pg.node(new).port as i32)).expect("writes through the VIP reach the new primary");
    let (back, _) = client.first_success_after(lost).unwrap();
    eprintln!(
        "measured: pg0 unreachable from every member -> {name} promoted after {}; first write through the VIP {} after the cut",
        ms(promoted),
        ms(back - lost)
    );
    std::thread::sleep(Duration::from_secs(3));
    let counts: Vec<u64> = (0..3).map(|i| promotions(&c.net, i)).collect();
    assert_eq!(counts, vec![1, 0, 0], "one promotion, by the leader");
    assert_eq!(primaries(&pg).len(), 2, "still only the old (fenced) primary and the new one");
    for i in 0..3 {
        let (_, status) = node_seen(&c.net, i, "pg0").unwrap();
        assert!(status == "fenced" || status == "down", "member {i}: pg0 {status}");
    }
    let after = client.failures_between(back, Instant::now());
    assert!(after.is_empty(), "no failure once writes were back: {after:?}");
    c.assert_never_two_live_holders();
}
