//! One client session: startup, authentication, a pooled server connection, and the
//! two forwarding pumps.
//!
//! The pumps (client → server, server → client) run concurrently in the session's task,
//! so neither direction can block the other (a pipelining client and a server that is
//! still sending results would otherwise deadlock on full socket buffers). Both pass
//! bytes through in bulk and decode only headers, plus the few messages pgvigil must
//! see: Terminate, ReadyForQuery (transaction status, outstanding requests),
//! ParameterStatus (kept for the next user of the connection) and NotificationResponse
//! (the sender pid is rewritten to the pid pgvigil gave that sender's client), and the
//! severity of ErrorResponse (a server that says FATAL needs no second word). A message
//! is never held whole unless it is one of those, so memory stays bounded by the buffers
//! whatever the size of a result row or COPY stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::auth::{authenticate, AuthFailure};
use super::cancel::{CancelRegistry, CancelTarget};
use super::startup::{read_opening, Opening};
use super::Shared;
use crate::pool::server::record_parameter;
use crate::pool::{BackendCredential, CheckoutError, ConnectError, PoolKey};
use crate::protocol::backend::{self, PgError, AUTH_OK};
use crate::protocol::frame::{be, fe, Next, Passthrough, HEADER_LEN};
use crate::protocol::sqlstate;
use crate::protocol::startup::Startup;

/// Read sizes: small for clients (queries), larger for servers (results).
const CLIENT_READ_CHUNK: usize = 8 * 1024;
const SERVER_READ_CHUNK: usize = 32 * 1024;
/// ParameterStatus larger than this is passed through without being recorded.
const MAX_TRACKED_PARAMETER: usize = 64 * 1024;

/// Serves one client connection from accept to close.
pub(super) async fn run(mut client: TcpStream, peer: SocketAddr, slot: Option<OwnedSemaphorePermit>, shared: Arc<Shared>) {
    let mut cbuf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + shared.startup_timeout;
    let handshake = tokio::select! {
        h = tokio::time::timeout_at(deadline, handshake(&mut client, peer, &mut cbuf, &shared, slot.is_some())) => h,
        _ = shared.terminate.cancelled() => Ok(Err(Some(PgError::shutting_down()))),
    };
    let (startup, credential) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(None)) => return,
        Ok(Err(Some(e))) => return reject(&mut client, peer, e).await,
        Err(_) => return reject(&mut client, peer, PgError::protocol_violation("canceling authentication due to timeout")).await,
    };
    let user = startup.param("user").unwrap_or_default().to_string();
    let database = startup.param("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_string();

    let Some((backend, addr)) = wait_for_primary(&shared).await else {
        let e = PgError::fatal(sqlstate::CANNOT_CONNECT_NOW, "no primary backend is available")
            .with_hint("pgvigil found no backend that is up and not in recovery; check the health_check settings and the backends");
        return reject(&mut client, peer, e).await;
    };
    let key = PoolKey { backend, user: user.clone(), database: database.clone(), params: behaviour_params(&startup) };
    let checkout = tokio::select! {
        c = shared.pools.checkout(&key, addr, &credential) => c,
        _ = shared.terminate.cancelled() => return reject(&mut client, peer, PgError::shutting_down()).await,
    };
    let mut checkout = match checkout {
        Ok(c) => c,
        Err(e) => return reject_checkout(&mut client, peer, &key, e).await,
    };
    let app_name = startup.param("application_name").unwrap_or_default();
    if let Err(e) = checkout.conn.ensure_setting("application_name", app_name).await {
        return reject_checkout(&mut client, peer, &key, CheckoutError::Connect(e)).await;
    }
    let cancel_key = shared.cancels.register();
    cancel_key.set_target(Some(CancelTarget {
        backend,
        addr,
        pid: checkout.conn.pid,
        secret: checkout.conn.secret,
    }));

    let mut out = BytesMut::with_capacity(512);
    backend::write_auth(&mut out, AUTH_OK, &[]);
    for (name, value) in &checkout.conn.params {
        backend::write_parameter_status(&mut out, name, value);
    }
    backend::write_backend_key_data(&mut out, cancel_key.pid, cancel_key.secret);
    backend::write_ready_for_query(&mut out, b'I');
    if client.write_all(&out).await.is_err() {
        drop(cancel_key);
        shared.pools.checkin(checkout).await;
        return;
    }
    tracing::debug!(%peer, user = %user, database = %database, backend, client_pid = cancel_key.pid, server_pid = checkout.conn.pid, "session started");

    let flow = Flow { tx_status: AtomicU8::new(b'I'), ..Flow::default() };
    let ends = {
        let conn = &mut checkout.conn;
        let (cr, mut cw) = client.split();
        let (sr, mut sw) = conn.stream.split();
        let up = client_to_server(cr, &mut sw, &mut cbuf, &flow, shared.max_message_size);
        let down = server_to_client(
            sr,
            &mut cw,
            &mut conn.buf,
            &mut conn.params,
            &flow,
            Rewrite { backend, server_pid: conn.pid, client_pid: cancel_key.pid, registry: &shared.cancels },
        );
        tokio::select! {
            end = up => end,
            end = down => end,
            _ = shared.terminate.cancelled() => End::Terminated,
        }
    };
    drop(cancel_key);
    checkout.conn.tx_status = flow.tx_status.load(Ordering::Relaxed);
    let reusable = matches!(ends, End::ClientDone) && flow.server_idle(&checkout.conn.buf);
    match &ends {
        End::ServerLost(_) if flow.server_fatal.load(Ordering::Relaxed) => {}
        End::Violation(e) | End::ServerLost(e) if flow.client_at_boundary() => {
            let _ = write_error(&mut client, e).await;
        }
        End::Terminated if flow.client_at_boundary() => {
            let _ = write_error(&mut client, &PgError::shutting_down()).await;
        }
        _ => {}
    }
    tracing::debug!(%peer, user = %user, end = ?ends, reusable, "session ended");
    if reusable {
        shared.pools.checkin(checkout).await;
    }
    drop(slot);
}

/// The startup phase and client authentication. `Err(None)`: close silently;
/// `Err(Some(e))`: send `e`, then close.
async fn handshake(
    client: &mut TcpStream,
    peer: SocketAddr,
    cbuf: &mut BytesMut,
    shared: &Shared,
    has_slot: bool,
) -> Result<(Startup, BackendCredential), Option<PgError>> {
    let startup = match read_opening(client, cbuf, shared).await {
        Opening::Session(s) => s,
        Opening::Cancelled | Opening::Gone => return Err(None),
        Opening::Reject(e) => return Err(Some(e)),
    };
    if !has_slot {
        return Err(Some(PgError::too_many_clients()));
    }
    if shared.stop_accepting.is_cancelled() {
        return Err(Some(PgError::fatal(sqlstate::CANNOT_CONNECT_NOW, "the database system is shutting down")));
    }
    let user = startup.param("user").unwrap_or_default();
    let settings = shared.reloadable();
    match authenticate(client, cbuf, user, &settings, &shared.mock_secret).await {
        Ok(credential) => Ok((startup, credential)),
        Err(AuthFailure::Disconnected) => Err(None),
        Err(AuthFailure::Reject(e)) => {
            if e.code == sqlstate::INVALID_PASSWORD {
                tracing::info!(%peer, user, "password authentication failed");
            }
            Err(Some(e))
        }
    }
}

/// Startup parameters that change a session's behaviour, sorted: part of the pool key.
/// `application_name` is left out (clients often make it unique); it is set on checkout.
fn behaviour_params(startup: &Startup) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication" | "application_name"))
        .filter(|(k, _)| !k.starts_with("_pq_."))
        .cloned()
        .collect();
    params.sort();
    params
}

/// The primary's index and address, waiting up to the checkout timeout for one to appear.
async fn wait_for_primary(shared: &Shared) -> Option<(usize, SocketAddr)> {
    let mut view = shared.view.clone();
    let found = tokio::time::timeout(shared.pools.settings().checkout_timeout, view.wait_for(|v| v.primary().is_some())).await;
    let view = match found {
        Ok(Ok(v)) => v.clone(),
        _ => return None,
    };
    let i = view.primary()?;
    Some((i, view.nodes[i].addr))
}

async fn reject_checkout(client: &mut TcpStream, peer: SocketAddr, key: &PoolKey, e: CheckoutError) {
    tracing::warn!(%peer, user = %key.user, database = %key.database, backend = key.backend, error = %e, "no server connection for client");
    let error = match e {
        CheckoutError::Timeout(wait) => PgError::too_many_clients().with_detail(format!(
            "All server connections of this pool (pool.size) are in use and none became free within {wait:?} (pool.checkout_timeout)."
        )),
        CheckoutError::Connect(ConnectError::Server { raw, .. }) => {
            let _ = client.write_all(&raw).await;
            return;
        }
        CheckoutError::Connect(e @ (ConnectError::NoCredential { .. } | ConnectError::Scram { .. })) => {
            PgError::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, e.to_string())
        }
        CheckoutError::Connect(e) => PgError::fatal(sqlstate::CONNECTION_FAILURE, e.to_string()),
    };
    let _ = write_error(client, &error).await;
}

async fn reject(client: &mut TcpStream, peer: SocketAddr, e: PgError) {
    tracing::debug!(%peer, error = %e, "client rejected");
    let _ = write_error(client, &e).await;
}

async fn write_error(client: &mut TcpStream, e: &PgError) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    e.write(&mut out);
    client.write_all(&out).await?;
    client.shutdown().await
}

/// Why the forwarding stopped.
#[derive(Debug)]
enum End {
    /// The client sent Terminate, or closed between messages.
    ClientDone,
    /// The client closed mid-message, or its socket failed.
    ClientLost,
    /// The client broke the protocol: tell it, then close.
    Violation(PgError),
    /// The server connection closed or failed.
    ServerLost(PgError),
    /// pgvigil is shutting down.
    Terminated,
}

/// What the pumps share: enough to decide whether the server connection is reusable and
/// whether an error may be written to the client between messages.
#[derive(Default)]
struct Flow {
    /// Requests (Query, Sync, FunctionCall) sent but not yet answered by ReadyForQuery.
    pending: AtomicU32,
    /// Transaction status of the last ReadyForQuery.
    tx_status: AtomicU8,
    /// Extended-protocol messages were sent since the last Sync: the server may hold an
    /// implicit transaction that only a Sync (or the connection's end) resolves.
    unsynced: AtomicBool,
    /// The server sent a FATAL (or PANIC) error: it has told the client why it is leaving.
    server_fatal: AtomicBool,
    /// The server → client pump is inside a message (forwarded part of it) or writing.
    client_mid_message: AtomicBool,
}

impl Flow {
    fn client_at_boundary(&self) -> bool {
        !self.client_mid_message.load(Ordering::Relaxed)
    }

    fn server_idle(&self, leftover: &BytesMut) -> bool {
        self.pending.load(Ordering::Relaxed) == 0
            && !self.unsynced.load(Ordering::Relaxed)
            && leftover.is_empty()
            && self.client_at_boundary()
    }
}

/// Client → server: forwards everything but Terminate, counts requests, checks framing.
async fn client_to_server(
    mut from: ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    buf: &mut BytesMut,
    flow: &Flow,
    max_message: u64,
) -> End {
    let mut stream = Passthrough::default();
    loop {
        let mut pos = 0;
        let mut stop = None;
        loop {
            let header = match stream.next(buf, &mut pos, max_message) {
                Next::Header(h) => h,
                Next::Incomplete => break,
                Next::Bad(e) => {
                    stop = Some(End::Violation(PgError::protocol_violation(e.to_string())));
                    break;
                }
            };
            match header.tag {
                fe::TERMINATE => {
                    stop = Some(End::ClientDone);
                    break;
                }
                fe::QUERY | fe::FUNCTION_CALL => {
                    flow.pending.fetch_add(1, Ordering::Relaxed);
                }
                fe::SYNC => {
                    flow.pending.fetch_add(1, Ordering::Relaxed);
                    flow.unsynced.store(false, Ordering::Relaxed);
                }
                fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE => {
                    flow.unsynced.store(true, Ordering::Relaxed);
                }
                tag if !fe::is_known(tag) => {
                    stop = Some(End::Violation(PgError::protocol_violation(format!("invalid frontend message type {tag}"))));
                    break;
                }
                _ => {}
            }
            stream.pass(header, buf.len(), &mut pos);
        }
        if pos > 0 {
            if to.write_all(&buf[..pos]).await.is_err() {
                return End::ServerLost(server_lost());
            }
            buf.advance(pos);
        }
        if let Some(end) = stop {
            return end;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(CLIENT_READ_CHUNK);
        }
        match from.read_buf(buf).await {
            Ok(0) if !stream.mid_message() && buf.is_empty() => return End::ClientDone,
            Ok(0) | Err(_) => return End::ClientLost,
            Ok(_) => {}
        }
    }
}

/// How NotificationResponse sender pids are mapped to the pids clients know.
struct Rewrite<'a> {
    backend: usize,
    server_pid: i32,
    client_pid: i32,
    registry: &'a CancelRegistry,
}

impl Rewrite<'_> {
    fn client_pid(&self, server_pid: i32) -> Option<i32> {
        if server_pid == self.server_pid {
            Some(self.client_pid)
        } else {
            self.registry.client_pid_for(self.backend, server_pid)
        }
    }
}

/// Server → client: forwards everything, watching ReadyForQuery, ParameterStatus and
/// NotificationResponse.
async fn server_to_client(
    mut from: ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    buf: &mut BytesMut,
    params: &mut Vec<(String, String)>,
    flow: &Flow,
    rewrite: Rewrite<'_>,
) -> End {
    let mut stream = Passthrough::default();
    loop {
        let mut pos = 0;
        loop {
            let header = match stream.next(buf, &mut pos, u64::from(i32::MAX as u32)) {
                Next::Header(h) => h,
                Next::Incomplete => break,
                Next::Bad(e) => return End::ServerLost(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, format!("server sent {e}"))),
            };
            let avail = buf.len() - pos;
            let total = header.frame_len();
            // Bytes of this message that must be here before it can be forwarded.
            let needed = match header.tag {
                be::READY_FOR_QUERY => total,
                be::NOTIFICATION_RESPONSE => HEADER_LEN + 4,
                be::ERROR_RESPONSE => HEADER_LEN + 7,
                be::PARAMETER_STATUS if total <= MAX_TRACKED_PARAMETER => total,
                _ => 0,
            };
            if avail < needed.min(total) {
                break;
            }
            match header.tag {
                be::READY_FOR_QUERY if total > HEADER_LEN => {
                    flow.tx_status.store(buf[pos + HEADER_LEN], Ordering::Relaxed);
                    let _ = flow.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| p.checked_sub(1));
                }
                be::NOTIFICATION_RESPONSE if total >= HEADER_LEN + 4 => {
                    let at = pos + HEADER_LEN;
                    let sender = i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                    if let Some(pid) = rewrite.client_pid(sender) {
                        buf[at..at + 4].copy_from_slice(&pid.to_be_bytes());
                    }
                }
                be::ERROR_RESPONSE if total >= HEADER_LEN + 7 => {
                    let severity = &buf[pos + HEADER_LEN..pos + HEADER_LEN + 7];
                    if severity == b"SFATAL\0" || severity == b"SPANIC\0" {
                        flow.server_fatal.store(true, Ordering::Relaxed);
                    }
                }
                be::PARAMETER_STATUS if needed > 0 => {
                    let _ = record_parameter(params, &buf[pos + HEADER_LEN..pos + total]);
                }
                _ => {}
            }
            stream.pass(header, buf.len(), &mut pos);
        }
        if pos > 0 {
            flow.client_mid_message.store(true, Ordering::Relaxed);
            if to.write_all(&buf[..pos]).await.is_err() {
                return End::ClientLost;
            }
            flow.client_mid_message.store(stream.mid_message(), Ordering::Relaxed);
            buf.advance(pos);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(SERVER_READ_CHUNK);
        }
        match from.read_buf(buf).await {
            Ok(0) | Err(_) => return End::ServerLost(server_lost()),
            Ok(_) => {}
        }
    }
}

fn server_lost() -> PgError {
    PgError::fatal(sqlstate::CONNECTION_FAILURE, "server closed the connection unexpectedly")
        .with_hint("The PostgreSQL server behind pgvigil terminated the session; reconnect to continue.")
}
