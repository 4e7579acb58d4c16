//! `pgvigil ctl`: the admin API from the command line, as aligned tables (or `--json`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

use crate::tls::stream::{MaybeTls, ServerStream};

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The admin API of a pgvigil node.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9898", env = "PGVIGIL_ADMIN")]
    pub admin: String,
    /// File with the admin token (admin.token_file of that node), for operations.
    #[arg(long, value_name = "FILE", env = "PGVIGIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificates (or the self-signed certificate) that the node's
    /// admin.cert_file must chain to, for an https:// --admin URL.
    #[arg(long, value_name = "FILE", env = "PGVIGIL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Backends: role, status, lag, timeline.
    Nodes,
    /// The pgvigil nodes of the watchdog: members, leader, term, quorum, VIP.
    Watchdog,
    /// Client sessions and server connections per pool.
    Pools,
    /// Recent events (failovers, switchovers, nodes going down or up).
    Events {
        /// How many of the newest.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Make a standby the primary (a switchover while the primary is up).
    Promote { name: String },
    /// Hand the primary role to a standby with no acknowledged write lost.
    Switchover {
        /// The standby to promote; default: the one automatic failover would choose.
        #[arg(long)]
        to: Option<String>,
    },
    /// Route nothing new to a standby.
    Detach { name: String },
    /// Route to a node again.
    Attach { name: String },
    /// Rewind a fenced old primary and start it as a standby.
    Rejoin { name: String },
    /// Re-read the configuration file.
    Reload,
}

/// Runs one command; `Ok` holds what to print, `Err` the failure (with the server's
/// reason).
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let base = args.admin.trim_end_matches('/').to_string();
    let token = match &args.token_file {
        Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("--token-file {}", f.display()))?.trim().to_string()),
        None => None,
    };
    let tls = match &args.ca_file {
        Some(f) => {
            let roots = crate::tls::read_roots("--ca-file", f)?;
            let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
        }
        None => None,
    };
    let client = Client { base, token, tls };
    match &args.command {
        CtlCommand::Nodes => show(&client, "/nodes", args.json, nodes_table).await,
        CtlCommand::Watchdog => show(&client, "/watchdog", args.json, watchdog_table).await,
        CtlCommand::Pools => show(&client, "/pools", args.json, pools_table).await,
        CtlCommand::Events { limit } => show(&client, &format!("/events?limit={limit}"), args.json, events_table).await,
        CtlCommand::Promote { name } => act(&client, &format!("/nodes/{name}/promote"), "", args.json).await,
        CtlCommand::Switchover { to } => {
            let body = to.as_ref().map(|t| serde_json::json!({"to": t}).to_string()).unwrap_or_default();
            act(&client, "/switchover", &body, args.json).await
        }
        CtlCommand::Detach { name } => act(&client, &format!("/nodes/{name}/detach"), "", args.json).await,
        CtlCommand::Attach { name } => act(&client, &format!("/nodes/{name}/attach"), "", args.json).await,
        CtlCommand::Rejoin { name } => act(&client, &format!("/nodes/{name}/rejoin"), "", args.json).await,
        CtlCommand::Reload => act(&client, "/reload", "", args.json).await,
    }
}

struct Client {
    base: String,
    token: Option<String>,
    /// Trusting `--ca-file`, for https:// URLs.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Client {
    /// One request; (status, JSON body).
    async fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        let url: hyper::Uri = format!("{}{path}", self.base).parse().with_context(|| format!("--admin {}", self.base))?;
        let https = match url.scheme_str() {
            Some("http") if self.tls.is_some() => bail!("--ca-file is for an https:// --admin URL, not {}", self.base),
            Some("http") => false,
            Some("https") => true,
            _ => bail!("--admin {}: use an http:// or https:// URL", self.base),
        };
        let host = url.host().ok_or_else(|| anyhow!("--admin {}: no host", self.base))?.to_string();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::time::timeout(Duration::from_secs(10), self.open(bare_host, port, https))
            .await
            .map_err(|_| anyhow!("cannot reach the admin API at {}: timed out", self.base))?
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = sender.send_request(req.body(Full::new(Bytes::from(body.to_string())))?).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }
}

impl Client {
    /// A connection to the admin listener; over TLS trusting `--ca-file` when `https`.
    async fn open(&self, host: &str, port: u16, https: bool) -> anyhow::Result<ServerStream> {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        if !https {
            return Ok(MaybeTls::Plain(tcp));
        }
        let Some(connector) = &self.tls else {
            bail!("an https:// URL needs --ca-file: the CA certificate (or the self-signed certificate) of the node's admin.cert_file");
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).with_context(|| format!("--admin {}: not a host name", self.base))?;
        let tls = connector.connect(name, tcp).await.context("TLS handshake (is --ca-file the CA of the node's admin.cert_file?)")?;
        Ok(MaybeTls::Tls(Box::new(tls)))
    }
}

fn failure(status: u16, v: &Value) -> anyhow::Error {
    let reason = v.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| v.to_string());
    match status {
        404 if reason.is_empty() || reason == "\"\"" => anyhow!("the admin API has no such endpoint (HTTP 404)"),
        _ => anyhow!("{reason} (HTTP {status})"),
    }
}

async fn show(client: &Client, path: &str, json: bool, table: impl Fn(&Value) -> anyhow::Result<String>) -> anyhow::Result<()> {
    let (status, v) = client.request("GET", path, "").await?;
    if status != 200 {
        return Err(failure(status, &v));
    }
    if json {
        println!("{}", pretty(&v));
    } else {
        print!("{}", table(&v)?);
    }
    Ok(())
}

/// Sends an operation; while it runs, prints the events it causes.
async fn act(client: &Client, path: &str, body: &str, json: bool) -> anyhow::Result<()> {
    // Events from now on.
    let since = match client.request("GET", "/events?limit=1", "").await {
        Ok((200, Value::Array(a))) => a.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0),
        _ => 0,
    };
    let op = client.request("POST", path, body);
    tokio::pin!(op);
    let mut seen = since;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let (status, v) = loop {
        tokio::select! {
            r = &mut op => break r?,
            _ = tick.tick(), if !json => seen = print_events(client, seen).await,
        }
    };
    if !json {
        print_events(client, seen).await;
    }
    if status != 200 {
        return Err(failure(status, &v));
    }
    if json {
        println!("{}", pretty(&v));
    } else {
        println!("{}", v.get("message").and_then(Value::as_str).unwrap_or("done"));
        if let Some(n) = v.get("needs_restart").and_then(Value::as_array).filter(|n| !n.is_empty()) {
            println!("needs a restart to apply: {}", n.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "));
        }
    }
    Ok(())
}

/// Prints events after `since`; returns the last one printed.
async fn print_events(client: &Client, since: u64) -> u64 {
    let Ok((200, Value::Array(events))) = client.request("GET", &format!("/events?since={since}&limit=1000"), "").await else { return since };
    let mut last = since;
    for e in &events {
        println!("  {}", event_line(e));
        last = e["seq"].as_u64().unwrap_or(last);
    }
    last
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn nodes_table(v: &Value) -> anyhow::Result<String> {
    let nodes = v.as_array().ok_or_else(|| anyhow!("unexpected answer: {v}"))?;
    let keys = ["name", "host", "port", "role", "status", "lag_bytes", "lag_seconds", "timeline", "statements_routed", "upstream"];
    let rows: Vec<Vec<String>> = nodes.iter().map(|n| keys.iter().map(|k| cell(&n[*k])).collect()).collect();
    Ok(table(&["NAME", "HOST", "PORT", "ROLE", "STATUS", "LAG_BYTES", "LAG_S", "TIMELINE", "READS", "UPSTREAM"], &rows))
}

fn pools_table(v: &Value) -> anyhow::Result<String> {
    let pools = v["pools"].as_array().ok_or_else(|| anyhow!("unexpected answer: {v}"))?;
    let keys = ["node", "user", "database", "in_use", "idle", "waiting", "size"];
    let rows: Vec<Vec<String>> = pools.iter().map(|p| keys.iter().map(|k| cell(&p[*k])).collect()).collect();
    Ok(format!("client sessions: {}\n", cell(&v["clients"])) + &table(&["NODE", "USER", "DATABASE", "IN_USE", "IDLE", "WAITING", "SIZE"], &rows))
}

fn watchdog_table(v: &Value) -> anyhow::Result<String> {
    let members = v["members"].as_array().ok_or_else(|| anyhow!("unexpected answer: {v}"))?;
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let name = if m["self"] == true { format!("{} (this node)", cell(&m["name"])) } else { cell(&m["name"]) };
            let vip = if m["vip"] == true { "VIP".to_string() } else { String::new() };
            vec![name, cell(&m["role"]), cell(&m["alive"]), cell(&m["term"]), cell(&m["last_heard_ms"]), vip]
        })
        .collect();
    let head = format!(
        "leader: {}  term: {}  quorum: {} (needs {})  VIP holder: {}\n",
        cell(&v["leader"]),
        cell(&v["term"]),
        cell(&v["quorum"]),
        cell(&v["quorum_size"]),
        cell(&v["vip_holder"])
    );
    Ok(head + &table(&["MEMBER", "ROLE", "ALIVE", "TERM", "LAST_HEARD_MS", "VIP"], &rows))
}

fn event_line(e: &Value) -> String {
    let ms = e["time_ms"].as_u64().unwrap_or(0);
    let t = format!("{:02}:{:02}:{:02}.{:03}", (ms / 3_600_000) % 24, (ms / 60_000) % 60, (ms / 1000) % 60, ms % 1000);
    let fields = e["fields"].as_object().map(|f| f.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect::<Vec<_>>().join(" ")).unwrap_or_default();
    format!("{t}  {:<22} {:<8} {} {fields}", cell(&e["event"]), cell(&e["node"]), cell(&e["message"])).trim_end().to_string()
}

fn events_table(v: &Value) -> anyhow::Result<String> {
    let events = v.as_array().ok_or_else(|| anyhow!("unexpected answer: {v}"))?;
    Ok(events.iter().map(|e| event_line(e) + "\n").collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\nq    22\n");
    }

    #[test]
    fn cells_and_event_lines() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!(1.5)), "1.500");
        assert_eq!(cell(&serde_json::json!(7)), "7");
        let e = serde_json::json!({"seq": 1, "time_ms": 3_723_004u64, "event": "node_down", "node": "pg1", "message": "down", "fields": {"role": "standby"}});
        assert_eq!(event_line(&e), format!("01:02:03.004  {:<22} {:<8} down role=standby", "node_down", "pg1"));
    }
}
