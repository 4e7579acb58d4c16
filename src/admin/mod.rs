//! The admin HTTP API on `[admin] listen`: node states, operator operations and
//! Patroni-style health endpoints.
//!
//! Reads need nothing. Anything that changes state (every `POST`) needs
//! `Authorization: Bearer <token>` with the token from `admin.token_file`; without a
//! token file such requests are refused (403), a missing or wrong token is 401, and the
//! refusal is logged without the token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod https;

use crate::config::Config;
use crate::failover::Op;
use crate::monitor::Role;
use crate::proxy::Shared;

struct Admin {
    shared: Arc<Shared>,
    token: Option<String>,
}

/// Starts the admin listener; returns its address.
pub async fn start(config: &Config, shared: Arc<Shared>, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let token = match config.admin_token_file() {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("admin.token_file: cannot read {}: {e}", path.display()))?;
            let token = text.trim().to_string();
            if token.len() < 16 {
                anyhow::bail!("admin.token_file: {} must hold a token of at least 16 characters", path.display());
            }
            Some(token)
        }
    };
    let tls = crate::tls::load_admin(config)?;
    let listener = tokio::net::TcpListener::bind(&config.admin.listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen: cannot listen on {}: {e}", config.admin.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Admin { shared, token });
    let app = router(state);
    let scheme = match tls {
        // `tap_io` (doing nothing) gives handlers the peer's address, as plain TCP does.
        Some(acceptor) => {
            let listener = axum::serve::ListenerExt::tap_io(https::TlsListener::new(listener, acceptor), |_| {});
            tokio::spawn(serve(listener, app, stop));
            "https"
        }
        None => {
            tokio::spawn(serve(listener, app, stop));
            "http"
        }
    };
    tracing::info!(listen = %addr, scheme, actions = state_changes_allowed(config), "admin API listening");
    Ok(addr)
}

/// Serves `app` on `listener` until `stop`.
async fn serve<L>(listener: L, app: Router, stop: CancellationToken)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    for<'a> SocketAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

fn state_changes_allowed(config: &Config) -> &'static str {
    if config.admin.token_file.is_some() {
        "with admin.token_file's token"
    } else {
        "refused (no admin.token_file)"
    }
}

fn router(state: Arc<Admin>) -> Router {
    // Everything that changes state, behind the token check.
    let actions = Router::new()
        .route("/nodes/{name}/{action}", post(node_action))
        .route("/switchover", post(switchover))
        .route("/reload", post(reload))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(actions)
        .route("/", get(dashboard))
        .route("/nodes", get(nodes))
        .route("/nodes/{name}", get(node))
        .route("/failover", get(failover_status))
        .route("/watchdog", get(watchdog))
        .route("/events", get(events))
        .route("/pools", get(pools))
        .route("/metrics", get(metrics))
        .route("/config", get(config_json))
        .route("/primary", get(primary).head(primary))
        .route("/replica", get(replica).head(replica))
        .route("/read-only", get(read_only).head(read_only))
        .route("/health", get(health).head(health))
        .route("/leader", get(leader).head(leader))
        .with_state(state)
}

/// The dashboard: one self-contained page (no external assets) that draws the cluster
/// from `/nodes`, `/events` and `/watchdog` and refreshes itself every second.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

/// One backend as `GET /nodes` shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// "primary", "standby" or "unknown".
    pub role: String,
    /// "up", "down", "quarantined" (down as seen from this pgvigil only, while the
    /// watchdog leader sees it up), "fenced" or "detached" (none of these but "up" gets a
    /// statement from this pgvigil).
    pub status: String,
    /// Configured load-balancing weight.
    pub weight: f64,
    /// Bytes of the primary's WAL not replayed yet (standbys).
    pub lag_bytes: Option<u64>,
    /// Replay lag in seconds (standbys).
    pub lag_seconds: Option<f64>,
    pub timeline: Option<u32>,
    /// Reads routed to it since start.
    pub statements_routed: u64,
    /// Where its WAL receiver streams from ("host:port", standbys).
    pub upstream: Option<String>,
    /// While its health checks fail: why the latest one failed.
    #[serde(default)]
    pub check_error: Option<String>,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Standby => "standby",
        Role::Unknown => "unknown",
    }
}

fn node_infos(shared: &Shared) -> Vec<NodeInfo> {
    let view = shared.view.borrow().clone();
    let config = shared.config();
    // With a watchdog: the leader's view of which backends are down.
    let leader_down = shared.watchdog.as_ref().and_then(|w| crate::failover::consensus::leader_digest(&w.state())).map(|d| d.down);
    view.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (host, port) = shared.backend_host(i);
            let status = if n.fenced {
                "fenced"
            } else if n.detached {
                "detached"
            } else if n.up {
                "up"
            } else if leader_down.is_some_and(|down| !crate::failover::consensus::Digest::has(down, i)) {
                // Down from here only: not routed to from this pgvigil until it answers.
                "quarantined"
            } else {
                "down"
            };
            NodeInfo {
                name: n.name.clone(),
                host,
                port,
                role: role_name(n.role).into(),
                status: status.into(),
                weight: config.backends.get(i).map_or(1.0, |b| b.weight),
                lag_bytes: if n.role == Role::Primary { Some(0) } else { view.replay_lag_bytes(i) },
                lag_seconds: view.replay_lag_time(i).map(|d| d.as_secs_f64()),
                timeline: n.repl.timeline,
                statements_routed: shared.stats.select_cnt(i),
                upstream: n.repl.upstream.as_ref().map(|u| format!("{}:{}", u.host, u.port)),
                check_error: if n.up { None } else { shared.monitor.stats(i).and_then(|s| s.last_error) },
            }
        })
        .collect()
}

async fn nodes(State(a): State<Arc<Admin>>) -> Json<Vec<NodeInfo>> {
    Json(node_infos(&a.shared))
}

async fn node(State(a): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    match node_infos(&a.shared).into_iter().find(|n| n.name == name) {
        Some(n) => Json(n).into_response(),
        None => not_found(&a.shared, &name),
    }
}

fn not_found(shared: &Shared, name: &str) -> Response {
    let names: Vec<String> = shared.view.borrow().nodes.iter().map(|n| n.name.clone()).collect();
    (StatusCode::NOT_FOUND, Json(json!({"ok": false, "error": format!("no backend named {name:?} (backends: {})", names.join(", "))}))).into_response()
}

/// Passes a request on only when it carries the admin token.
async fn require_token(State(a): State<Arc<Admin>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match authorize(&a, req.headers(), peer, req.method(), req.uri()) {
        Ok(()) => next.run(req).await,
        Err(refused) => *refused,
    }
}

/// `Err(response)` unless the request carries the admin token.
fn authorize(a: &Admin, headers: &HeaderMap, peer: SocketAddr, method: &Method, uri: &Uri) -> Result<(), Box<Response>> {
    let Some(token) = &a.token else {
        tracing::warn!(peer = %peer, method = %method, path = %uri.path(), "admin request refused: no admin.token_file is configured");
        return Err(Box::new((StatusCode::FORBIDDEN, Json(json!({"ok": false, "error": "operations are disabled: set admin.token_file"}))).into_response()));
    };
    let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| crate::protocol::scram::ct_eq(g.trim().as_bytes(), token.as_bytes()));
    if !ok {
        let why = if given.is_none() { "missing bearer token" } else { "wrong bearer token" };
        tracing::warn!(peer = %peer, method = %method, path = %uri.path(), reason = why, "admin request refused");
        let mut r = (StatusCode::UNAUTHORIZED, Json(json!({"ok": false, "error": why}))).into_response();
        r.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        return Err(Box::new(r));
    }
    Ok(())
}

async fn operate(a: &Admin, op: Op) -> Response {
    match a.shared.failover.operate(op).await {
        Ok(message) => Json(json!({"ok": true, "message": message})).into_response(),
        Err(error) => (StatusCode::CONFLICT, Json(json!({"ok": false, "error": error}))).into_response(),
    }
}

async fn node_action(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if !a.shared.view.borrow().nodes.iter().any(|n| n.name == name) {
        return not_found(&a.shared, &name);
    }
    let op = match action.as_str() {
        "detach" => Op::Detach(name),
        "attach" => Op::Attach(name),
        "promote" => Op::Promote(name),
        "rejoin" => Op::Rejoin(name),
        other => {
            return (StatusCode::NOT_FOUND, Json(json!({"ok": false, "error": format!("no action {other:?}: detach, attach, promote or rejoin")}))).into_response();
        }
    };
    tracing::info!(peer = %peer, path = %uri.path(), "admin operation");
    operate(&a, op).await
}

/// What automatic failover is doing: `idle`, `in_progress` (with the node it replaces),
/// `read_only` (the primary is down and no standby may be promoted, with the reasons)
/// or `manual` (the primary is down and `failover.automatic` is off); and how many
/// promotions pgvigil made since it started.
async fn failover_status(State(a): State<Arc<Admin>>) -> Json<serde_json::Value> {
    use crate::failover::Status;
    let promotions = a.shared.failover.promotions.load(std::sync::atomic::Ordering::Relaxed);
    Json(match a.shared.failover.status() {
        Status::Idle => json!({"state": "idle", "promotions": promotions}),
        Status::InProgress { from } => json!({"state": "in_progress", "from": from, "promotions": promotions}),
        Status::ReadOnly { reasons } => json!({"state": "read_only", "reasons": reasons, "promotions": promotions}),
        Status::Manual => json!({"state": "manual", "reasons": ["the primary is down and failover.automatic is off"], "promotions": promotions}),
    })
}

/// The configuration in effect, with every secret redacted: passwords, and shell
/// commands (which may carry credentials) shown as `"<set>"`.
async fn config_json(State(a): State<Arc<Admin>>) -> Json<serde_json::Value> {
    let mut v = serde_json::to_value(a.shared.config()).unwrap_or_default();
    redact(&mut v);
    Json(v)
}

/// Replaces the values of secret keys, at any depth.
pub fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let secret = k == "password" || k.ends_with("_password") || k == "token" || k.ends_with("_command") || k == "key";
                if secret && !val.is_null() {
                    *val = json!("<set>");
                } else {
                    redact(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Prometheus text format (see docs/api.md for the list).
async fn metrics(State(a): State<Arc<Admin>>) -> Response {
    let text = render_metrics(&a.shared);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Every metric pgvigil exports, read now.
pub fn render_metrics(shared: &Shared) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let view = shared.view.borrow().clone();
    let mut e = crate::metrics::Exposition::new();
    let names: Vec<&str> = view.nodes.iter().map(|n| n.name.as_str()).collect();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };

    e.family("pgvigil_backend_up", "gauge", "1 when the backend's last health checks succeeded.");
    for n in &view.nodes {
        e.sample("pgvigil_backend_up", &[("node", &n.name)], flag(n.up));
    }
    e.family("pgvigil_backend_role", "gauge", "1 for the backend's role as last seen (primary, standby, unknown).");
    for n in &view.nodes {
        for role in ["primary", "standby", "unknown"] {
            e.sample("pgvigil_backend_role", &[("node", &n.name), ("role", role)], flag(role_name(n.role) == role));
        }
    }
    e.family("pgvigil_backend_fenced", "gauge", "1 when the backend is fenced (gets no statement).");
    for n in &view.nodes {
        e.sample("pgvigil_backend_fenced", &[("node", &n.name)], flag(n.fenced));
    }
    e.family("pgvigil_backend_detached", "gauge", "1 when an operator detached the backend.");
    for n in &view.nodes {
        e.sample("pgvigil_backend_detached", &[("node", &n.name)], flag(n.detached));
    }
    e.family("pgvigil_backend_replication_lag_bytes", "gauge", "Bytes of the primary's WAL a standby has not replayed.");
    for (i, n) in view.nodes.iter().enumerate() {
        if let Some(l) = view.replay_lag_bytes(i) {
            e.sample("pgvigil_backend_replication_lag_bytes", &[("node", &n.name)], l as f64);
        }
    }
    e.family("pgvigil_backend_replication_lag_seconds", "gauge", "How far behind a standby replays, in seconds.");
    for (i, n) in view.nodes.iter().enumerate() {
        if let Some(l) = view.replay_lag_time(i) {
            e.sample("pgvigil_backend_replication_lag_seconds", &[("node", &n.name)], l.as_secs_f64());
        }
    }
    e.family("pgvigil_backend_timeline", "gauge", "The backend's timeline as of its last checkpoint.");
    for n in &view.nodes {
        if let Some(t) = n.repl.timeline {
            e.sample("pgvigil_backend_timeline", &[("node", &n.name)], f64::from(t));
        }
    }
    e.family("pgvigil_statements_routed_total", "counter", "Statements routed to the backend, by the rule that decided (reason).");
    for (i, name) in names.iter().enumerate() {
        for (label, count) in shared.stats.by_label(i) {
            e.sample("pgvigil_statements_routed_total", &[("node", name), ("reason", label)], count as f64);
        }
    }
    e.family("pgvigil_reads_routed_total", "counter", "Reads routed to the backend (SHOW POOL_NODES' select_cnt).");
    for (i, name) in names.iter().enumerate() {
        e.sample("pgvigil_reads_routed_total", &[("node", name)], shared.stats.select_cnt(i) as f64);
    }
    e.family("pgvigil_statements_total", "counter", "Statements sent to the backend by kind (Pgpool-II's classes: select, insert, update, delete, ddl, other).");
    for (i, name) in names.iter().enumerate() {
        let c = shared.stats.backend_counts(i);
        for (kind, v) in [("select", c.select), ("insert", c.insert), ("update", c.update), ("delete", c.delete), ("ddl", c.ddl), ("other", c.other)] {
            e.sample("pgvigil_statements_total", &[("node", name), ("kind", kind)], v as f64);
        }
    }
    e.family("pgvigil_backend_errors_total", "counter", "ErrorResponses the backend sent to sessions, by severity.");
    for (i, name) in names.iter().enumerate() {
        let c = shared.stats.backend_counts(i);
        for (severity, v) in [("error", c.error), ("fatal", c.fatal), ("panic", c.panic)] {
            e.sample("pgvigil_backend_errors_total", &[("node", name), ("severity", severity)], v as f64);
        }
    }
    e.family("pgvigil_statements_unparsable_total", "counter", "Statements the SQL parser rejected (sent to the primary).");
    e.sample("pgvigil_statements_unparsable_total", &[], shared.stats.unparsable.load(Relaxed) as f64);
    e.family("pgvigil_health_checks_total", "counter", "Health checks of the backend by result.");
    for (i, name) in names.iter().enumerate() {
        let s = shared.monitor.stats(i).unwrap_or_default();
        e.sample("pgvigil_health_checks_total", &[("node", name), ("result", "success")], s.successes as f64);
        e.sample("pgvigil_health_checks_total", &[("node", name), ("result", "failure")], s.failures as f64);
    }
    e.family("pgvigil_backend_marked_down_total", "counter", "Times the backend was marked down after its retries.");
    for (i, name) in names.iter().enumerate() {
        e.sample("pgvigil_backend_marked_down_total", &[("node", name)], shared.monitor.stats(i).unwrap_or_default().marked_down as f64);
    }
    let pools = shared.pools.snapshot();
    e.family("pgvigil_backend_server_connections", "gauge", "Server connections to the backend, lent to sessions (in_use) or kept idle.");
    for (i, name) in names.iter().enumerate() {
        let in_use: usize = pools.iter().filter(|p| p.backend == i).map(|p| p.in_use).sum();
        let idle: usize = pools.iter().filter(|p| p.backend == i).map(|p| p.idle).sum();
        e.sample("pgvigil_backend_server_connections", &[("node", name), ("state", "in_use")], in_use as f64);
        e.sample("pgvigil_backend_server_connections", &[("node", name), ("state", "idle")], idle as f64);
    }
    e.family("pgvigil_pool_server_connections", "gauge", "Server connections of a pool (backend, user, database) by state.");
    for p in &pools {
        let node = shared.backend_name(p.backend);
        for (state, v) in [("in_use", p.in_use), ("idle", p.idle)] {
            e.sample("pgvigil_pool_server_connections", &[("node", node), ("user", &p.user), ("database", &p.database), ("state", state)], v as f64);
        }
    }
    e.family("pgvigil_pool_waiting_clients", "gauge", "Sessions waiting for a free server connection in a pool.");
    for p in &pools {
        e.sample("pgvigil_pool_waiting_clients", &[("node", shared.backend_name(p.backend)), ("user", &p.user), ("database", &p.database)], p.waiting as f64);
    }
    e.histogram("pgvigil_pool_checkout_wait_seconds", "How long sessions waited for a server connection.", &[], &shared.pools.checkout_wait);
    e.family("pgvigil_client_connections", "gauge", "Client sessions now.");
    e.sample("pgvigil_client_connections", &[], shared.sessions.len() as f64);
    e.family("pgvigil_client_connections_total", "counter", "Client connections accepted.");
    e.sample("pgvigil_client_connections_total", &[], shared.metrics.client_connections_total.load(Relaxed) as f64);
    e.family("pgvigil_client_received_bytes_total", "counter", "Bytes read from clients.");
    e.sample("pgvigil_client_received_bytes_total", &[], shared.metrics.bytes_from_clients.load(Relaxed) as f64);
    e.family("pgvigil_client_sent_bytes_total", "counter", "Bytes written to clients.");
    e.sample("pgvigil_client_sent_bytes_total", &[], shared.metrics.bytes_to_clients.load(Relaxed) as f64);
    e.histogram(
        "pgvigil_query_duration_seconds",
        "From a client request (a Query, or an extended-protocol batch up to Sync) to its ReadyForQuery.",
        &[],
        &shared.metrics.query_duration,
    );
    if let Some(w) = &shared.watchdog {
        let s = w.state();
        e.family("pgvigil_watchdog_leader", "gauge", "1 when this pgvigil leads with a quorum's lease.");
        e.sample("pgvigil_watchdog_leader", &[], flag(s.is_leader_with_quorum(std::time::Instant::now())));
        e.family("pgvigil_watchdog_state", "gauge", "1 for this member's watchdog role.");
        for role in ["follower", "candidate", "leader", "witness"] {
            e.sample("pgvigil_watchdog_state", &[("state", role)], flag(watchdog_role(s.role) == role));
        }
        e.family("pgvigil_watchdog_term", "gauge", "The leadership term this member knows.");
        e.sample("pgvigil_watchdog_term", &[], s.term as f64);
        e.family("pgvigil_watchdog_quorum", "gauge", "1 when this member hears a quorum (itself included).");
        e.sample("pgvigil_watchdog_quorum", &[], flag(s.quorum));
        e.family("pgvigil_watchdog_vip_held", "gauge", "1 when the virtual IP is on this node.");
        e.sample("pgvigil_watchdog_vip_held", &[], flag(s.vip_held));
        e.family("pgvigil_watchdog_members_alive", "gauge", "Peers heard within dead_after.");
        e.sample("pgvigil_watchdog_members_alive", &[], s.members.iter().filter(|m| m.alive).count() as f64);
        e.family("pgvigil_watchdog_dropped_packets_total", "counter", "Heartbeats dropped, by reason.");
        for (reason, v) in [
            ("malformed", s.drops.malformed),
            ("bad_mac", s.drops.bad_mac),
            ("unknown_member", s.drops.unknown_member),
            ("wrong_cluster", s.drops.wrong_cluster),
            ("replayed", s.drops.replayed),
            ("stale", s.drops.stale),
        ] {
            e.sample("pgvigil_watchdog_dropped_packets_total", &[("reason", reason)], v as f64);
        }
    }
    e.family("pgvigil_cluster_writable", "gauge", "1 when there is a primary to route writes to.");
    e.sample("pgvigil_cluster_writable", &[], flag(view.primary().is_some()));
    e.family("pgvigil_failovers_total", "counter", "Standbys promoted by pgvigil (failovers, switchovers and promotions).");
    e.sample("pgvigil_failovers_total", &[], shared.failover.promotions.load(Relaxed) as f64);
    e.family("pgvigil_failover_last_duration_seconds", "gauge", "How long the last failover or switchover took (0: none yet).");
    e.sample("pgvigil_failover_last_duration_seconds", &[], shared.failover.last_duration_ms.load(Relaxed) as f64 / 1000.0);
    e.family("pgvigil_failover_state", "gauge", "1 for what automatic failover is doing: idle, in_progress, read_only (no standby may be promoted), manual.");
    let state = match shared.failover.status() {
        crate::failover::Status::Idle => "idle",
        crate::failover::Status::InProgress { .. } => "in_progress",
        crate::failover::Status::ReadOnly { .. } => "read_only",
        crate::failover::Status::Manual => "manual",
    };
    for s in ["idle", "in_progress", "read_only", "manual"] {
        e.sample("pgvigil_failover_state", &[("state", s)], flag(s == state));
    }
    e.finish()
}

/// Client sessions and server connections per pool (backend, user, database).
async fn pools(State(a): State<Arc<Admin>>) -> Json<serde_json::Value> {
    let pools: Vec<serde_json::Value> = a
        .shared
        .pools
        .snapshot()
        .into_iter()
        .map(|p| {
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            v["node"] = json!(a.shared.backend_name(p.backend));
            v
        })
        .collect();
    Json(json!({"clients": a.shared.sessions.len(), "pools": pools}))
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// Recent events, oldest first: those after `since` (a `seq`), at most `limit` (100).
async fn events(State(a): State<Arc<Admin>>, Query(q): Query<EventsQuery>) -> Json<Vec<crate::events::Event>> {
    Json(a.shared.monitor.events.since(q.since.unwrap_or(0), q.limit.unwrap_or(100)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    to: Option<String>,
}

async fn switchover(State(a): State<Arc<Admin>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Bytes) -> Response {
    let body: SwitchoverBody = if body.iter().all(u8::is_ascii_whitespace) {
        SwitchoverBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({"ok": false, "error": format!("body: {e} (expected {{\"to\": \"name\"}} or nothing)")}))).into_response(),
        }
    };
    if let Some(to) = &body.to {
        if !a.shared.view.borrow().nodes.iter().any(|n| &n.name == to) {
            return not_found(&a.shared, to);
        }
    }
    tracing::info!(peer = %peer, to = ?body.to, "admin switchover");
    operate(&a, Op::Switchover(body.to)).await
}

async fn reload(State(a): State<Arc<Admin>>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    match a.shared.reload() {
        Ok(not_applied) => {
            tracing::info!(peer = %peer, needs_restart = ?not_applied, "configuration reloaded through the admin API");
            Json(json!({"ok": true, "message": "configuration reloaded", "needs_restart": not_applied})).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, Json(json!({"ok": false, "error": e.0}))).into_response(),
    }
}

/// 200 with `what`, or 503 with why not.
fn health_answer(ok: bool, what: &str, why_not: String) -> Response {
    if ok {
        (StatusCode::OK, Json(json!({"ok": true, "message": what}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ok": false, "error": why_not}))).into_response()
    }
}

/// 200 when writes can be routed: there is a primary.
async fn primary(State(a): State<Arc<Admin>>) -> Response {
    let view = a.shared.view.borrow().clone();
    let p = view.primary();
    health_answer(p.is_some(), &format!("primary: {}", p.map(|p| view.nodes[p].name.as_str()).unwrap_or("")), "no primary".into())
}

#[derive(Deserialize)]
struct LagQuery {
    lag: Option<String>,
}

/// 200 when at least one standby takes reads within `?lag=` (default
/// `routing.max_lag`).
async fn replica(State(a): State<Arc<Admin>>, Query(q): Query<LagQuery>) -> Response {
    let max = match q.lag.as_deref().map(crate::config::parse_size) {
        None => a.shared.routing.max_lag.0,
        Some(Ok(n)) => n,
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, Json(json!({"ok": false, "error": format!("lag: {e}")}))).into_response(),
    };
    let view = a.shared.view.borrow().clone();
    let ok: Vec<&str> = (0..view.nodes.len())
        .filter(|&i| {
            let n = &view.nodes[i];
            n.up && !n.fenced && !n.detached && n.role == Role::Standby && view.replay_lag_bytes(i).is_none_or(|l| l <= max)
        })
        .map(|i| view.nodes[i].name.as_str())
        .collect();
    health_answer(!ok.is_empty(), &format!("standbys within {max} bytes: {}", ok.join(", ")), format!("no standby within {max} bytes of the primary"))
}

/// 200 when reads can be served: some node is up and routable.
async fn read_only(State(a): State<Arc<Admin>>) -> Response {
    let view = a.shared.view.borrow().clone();
    let ok = view.nodes.iter().any(|n| n.up && !n.fenced && !n.detached && n.role != Role::Unknown);
    health_answer(ok, "reads can be served", "no backend can serve reads".into())
}

/// 200 when pgvigil runs and sees at least one backend up.
async fn health(State(a): State<Arc<Admin>>) -> Response {
    let view = a.shared.view.borrow().clone();
    let up = view.nodes.iter().filter(|n| n.up).count();
    health_answer(up > 0, &format!("{up} of {} backends up", view.nodes.len()), "no backend is up".into())
}

/// 200 on the node that leads with a quorum's lease (a single pgvigil without a
/// watchdog always does), 503 elsewhere.
async fn leader(State(a): State<Arc<Admin>>) -> Response {
    match &a.shared.watchdog {
        None => health_answer(true, "leader (no watchdog configured)", String::new()),
        Some(w) => {
            let s = w.state();
            let leads = s.is_leader_with_quorum(std::time::Instant::now());
            health_answer(leads, &format!("{} leads (term {})", s.name, s.term), format!("{} does not lead; leader: {}", s.name, s.leader.as_deref().unwrap_or("none")))
        }
    }
}

fn watchdog_role(r: crate::watchdog::packet::Role) -> &'static str {
    use crate::watchdog::packet::Role as R;
    match r {
        R::Follower => "follower",
        R::Candidate => "candidate",
        R::Leader => "leader",
        R::Witness => "witness",
    }
}

/// The watchdog as this node sees it: itself first, then its peers.
pub fn watchdog_json(w: &crate::watchdog::Watchdog) -> serde_json::Value {
    let s = w.state();
    let now = std::time::Instant::now();
    let leads = s.is_leader_with_quorum(now);
    let mut members = vec![json!({
        "name": s.name, "self": true, "alive": true, "role": watchdog_role(s.role), "term": s.term,
        "vip": s.vip_held, "last_heard_ms": 0,
    })];
    for m in &s.members {
        let role = m.role.map(watchdog_role);
        members.push(json!({
            "name": m.name, "self": false, "alive": m.alive, "role": role, "term": m.term,
            // As far as this node knows: the leader it follows holds the VIP.
            "vip": m.alive && role == Some("leader") && s.leader.as_deref() == Some(m.name.as_str()),
            "last_heard_ms": m.last_heard.map(|t| now.saturating_duration_since(t).as_millis() as u64),
        }));
    }
    json!({
        "name": s.name,
        "role": watchdog_role(s.role),
        "term": s.term,
        "leader": s.leader,
        "leader_with_quorum": leads,
        "quorum": s.quorum,
        "quorum_size": s.quorum_size,
        "vip_held": s.vip_held,
        "vip_holder": if s.vip_held { Some(s.name.clone()) } else { members.iter().skip(1).find(|m| m["vip"] == true).and_then(|m| m["name"].as_str().map(String::from)) },
        "members": members,
        "dropped_packets": {
            "malformed": s.drops.malformed, "bad_mac": s.drops.bad_mac, "unknown_member": s.drops.unknown_member,
            "wrong_cluster": s.drops.wrong_cluster, "replayed": s.drops.replayed, "stale": s.drops.stale,
        },
    })
}

/// `GET /watchdog`; 404 without `[watchdog]`.
async fn watchdog(State(a): State<Arc<Admin>>) -> Response {
    match &a.shared.watchdog {
        Some(w) => Json(watchdog_json(w)).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"ok": false, "error": "no [watchdog] is configured on this pgvigil"}))).into_response(),
    }
}
