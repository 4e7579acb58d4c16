//! A routed session: one client, a server connection per node it has used, and the
//! loop that moves messages between them.
//!
//! The loop alternates three steps: walk what servers sent (forwarding or swallowing
//! each message, noting transaction status), dispatch what the client sent (deciding a
//! node per simple Query or per extended-protocol batch), and wait for sockets. Only one
//! server connection has unanswered client requests at a time, so the client receives
//! answers in the order it asked; a request for another node waits until the current
//! one is answered. Connections are opened on first use. Before a statement runs on a
//! connection, that connection is brought up to date: the session's settings and SQL
//! prepared statements are replayed, the open transaction is begun there, and
//! protocol-level prepared statements are prepared when first needed.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::cancel::{CancelKey, CancelTarget};
use super::link::{needed, Event, Expect, Link};
use super::local::{Bind, LocalStatements};
use super::request::Request;
use super::route::{Dest, Local, SessionRoute};
use super::show::{Command, Show};
use super::stats::StatementClass;
use super::Shared;
use crate::monitor::{ClusterView, Role};
use crate::pool::server::record_parameter;
use crate::pool::{BackendCredential, CheckoutError, ConnectError, PoolKey};
use crate::protocol::backend::{self, PgError, Severity};
use crate::protocol::frame::{be, fe, parse_header};
use crate::protocol::{frontend, sqlstate};
use crate::router::balance::{ReadNeeds, ReadTarget};
use crate::router::{final_kind, Classification, Kind, Reason, TxControl};

/// Stop reading servers while this much is waiting for the client.
const CLIENT_HIGH_WATER: usize = 256 * 1024;
/// Read ahead of the client at most this much while its head message must wait.
const CLIENT_READ_AHEAD: usize = 64 * 1024;
/// An idle connection's unsolicited bytes beyond this are not read until it is used.
const IDLE_BUFFER_CAP: usize = 64 * 1024;
/// A busy connection's input beyond this is not read until the client takes some.
const SERVER_BUFFER_CAP: usize = 128 * 1024;
const SERVER_MAX_MESSAGE: u64 = i32::MAX as u64;
/// After its connection failed, a node gets none of the session's reads for this long
/// (the monitor will have marked it down meanwhile if it is).
const FAILED_NODE_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    ClientDone,
    ClientLost,
    Violation(PgError),
    /// A server connection the client was waiting on failed mid-answer, or said FATAL.
    ServerLost(PgError),
    ServerFatal,
    Terminated,
    /// The client sent nothing for `proxy.idle_client_timeout` (false) or, inside a
    /// transaction, `proxy.idle_in_transaction_timeout` (true).
    Idle(bool),
}

enum Step {
    Done,
    Blocked,
}

/// One entry of the session's settings log, replayed on connections opened later.
#[derive(Debug, Clone)]
struct LogEntry {
    sql: String,
    /// Later entries with the same key replace this one (SET of one setting).
    key: Option<String>,
    effect: LogEffect,
}

#[derive(Debug, Clone, PartialEq)]
enum LogEffect {
    Plain,
    /// DISCARD ALL: everything before it is gone, prepared statements included.
    DiscardAll,
    /// DEALLOCATE name / ALL.
    Deallocate(Option<String>),
}

#[derive(Default)]
struct StateLog {
    entries: Vec<(u64, LogEntry)>,
    seq: u64,
    /// Sequence number of the last DISCARD ALL (a fresh connection is at this point).
    reset_seq: u64,
}

impl StateLog {
    fn add(&mut self, e: LogEntry) {
        self.seq += 1;
        if e.effect == LogEffect::DiscardAll {
            self.entries.clear();
            self.reset_seq = self.seq;
            return;
        }
        if let Some(k) = &e.key {
            self.entries.retain(|(_, old)| old.key.as_ref() != Some(k));
        }
        self.entries.push((self.seq, e));
    }
}

/// A protocol-level prepared statement of the session.
struct Stmt {
    generation: u64,
    /// The client's Parse message, to prepare it on another node.
    parse: Bytes,
    class: Arc<Classification>,
    sql: String,
}

/// What to do when a unit (Query, or batch up to Sync) is answered.
#[derive(Default, Clone)]
struct UnitEffects {
    /// Add to the settings log if the unit succeeded.
    log: Vec<LogEntry>,
    /// A write outside a transaction: note the commit position (causal reads).
    wrote: bool,
}

pub(super) struct Engine<'a> {
    shared: &'a Shared,
    pub client: super::stream::ClientStream,
    peer: super::stream::Peer,
    cin: BytesMut,
    cout: BytesMut,
    /// A whole client message taken off `cin` that could not be dispatched yet.
    held: Option<(u8, Bytes)>,
    client_eof: bool,
    /// Bytes needed before the head client message is whole.
    cin_need: usize,
    links: Vec<Link>,
    base_key: PoolKey,
    credential: BackendCredential,
    app_name: String,
    database: String,
    cancel: CancelKey<'a>,
    route: SessionRoute,
    log: StateLog,
    stmts: HashMap<String, Stmt>,
    generation: u64,
    /// SQL PREPAREd statements: name → classification of the prepared statement.
    sql_prepared: HashMap<String, Arc<Classification>>,
    portals: HashMap<String, usize>,
    /// The node the session reads from (granularity "session").
    read_node: Option<usize>,
    /// Nodes whose connection failed during this session: no more reads there.
    failed_nodes: Vec<(usize, std::time::Instant)>,
    /// The node the open extended-protocol batch runs on.
    batch: Option<usize>,
    batch_unit: u64,
    units: HashMap<u64, UnitEffects>,
    /// When each unanswered client request (unit) arrived, oldest first, for the query
    /// latency histogram.
    unit_started: std::collections::VecDeque<(u64, std::time::Instant)>,
    next_unit: u64,
    /// Skip client messages up to the next Sync, then answer it (after an error that
    /// pgvigil reported for the batch).
    discard_until_sync: bool,
    last_node: Option<usize>,
    /// Transaction status the client saw last.
    status: u8,
    /// Causal reads: reads need a node that replayed this far.
    commit_lsn: Option<u64>,
    lsn_needed: bool,
    /// Explain NOTICEs that must follow the answers still due on a connection.
    notices: Vec<(usize, u64, Bytes)>,
    view: Arc<ClusterView>,
    copy_node: Option<usize>,
    /// Bytes of a CopyData message still to pass through.
    copy_remaining: usize,
    /// Resolves when pgvigil terminates sessions (created once, polled by every wait).
    terminate: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// Resolves when the cluster view changes (a node fenced must lose its connections
    /// at once, even while the session waits on one); gives the receiver back.
    view_changed: tokio_util::sync::ReusableBoxFuture<'static, ViewRx>,
    /// The view changed since the connections were last checked against it.
    view_dirty: bool,
    /// Extended-protocol statements pgvigil answers itself (SHOW POOL_…).
    local: LocalStatements,
    /// When the client connected (SHOW POOL_POOLS).
    started: std::time::SystemTime,
    /// Since when the session waits for its client with nothing else to do, and whether
    /// inside a transaction (only with an idle timeout configured).
    idle: Option<(tokio::time::Instant, bool)>,
    /// Fires at the end of the idle timeout; made on first use.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

type ViewRx = tokio::sync::watch::Receiver<Arc<ClusterView>>;

async fn next_view(mut rx: ViewRx) -> ViewRx {
    if rx.changed().await.is_err() {
        // The monitor is gone (shutdown): never again.
        std::future::pending::<()>().await;
    }
    rx
}

impl<'a> Engine<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: &'a Shared,
        client: super::stream::ClientStream,
        peer: super::stream::Peer,
        cin: BytesMut,
        base_key: PoolKey,
        credential: BackendCredential,
        app_name: String,
        cancel: CancelKey<'a>,
        redirect: ReadTarget,
    ) -> Self {
        let view = shared.view.borrow().clone();
        Self {
            shared,
            client,
            peer,
            cin,
            cout: BytesMut::with_capacity(4096),
            held: None,
            client_eof: false,
            cin_need: 0,
            links: Vec::with_capacity(2),
            database: base_key.database.clone(),
            base_key,
            credential,
            app_name,
            cancel,
            route: SessionRoute::new(redirect),
            log: StateLog::default(),
            stmts: HashMap::new(),
            generation: 0,
            sql_prepared: HashMap::new(),
            portals: HashMap::new(),
            read_node: None,
            failed_nodes: Vec::new(),
            batch: None,
            batch_unit: 0,
            units: HashMap::new(),
            unit_started: std::collections::VecDeque::new(),
            next_unit: 1,
            discard_until_sync: false,
            last_node: None,
            status: b'I',
            commit_lsn: None,
            lsn_needed: false,
            notices: Vec::new(),
            view,
            copy_node: None,
            copy_remaining: 0,
            terminate: Box::pin(shared.terminate.clone().cancelled_owned()),
            view_changed: tokio_util::sync::ReusableBoxFuture::new(next_view(shared.view.clone())),
            view_dirty: false,
            local: LocalStatements::default(),
            started: std::time::SystemTime::now(),
            idle: None,
            idle_timer: None,
        }
    }

    /// Adopts a connection checked out during startup.
    pub fn adopt(&mut self, node: usize, checkout: crate::pool::Checkout) {
        self.cancel.add_server(node, checkout.conn.pid);
        if let Some(r) = &checkout.conn.record {
            r.lend_to(self.cancel.pid, self.started);
        }
        self.links.push(Link::new(node, checkout, self.log.reset_seq));
    }

    /// Queues bytes for the client (the startup answer).
    pub fn queue_client(&mut self, bytes: &[u8]) {
        self.cout.extend_from_slice(bytes);
    }

    /// Runs the session; returns why it ended, after returning reusable connections.
    pub async fn run(mut self) -> End {
        let end = self.serve().await;
        // Boxed for the same reason as the message handling in `serve`.
        Box::pin(self.finish(&end)).await;
        end
    }

    async fn serve(&mut self) -> End {
        loop {
            if let Err(end) = self.drain_links() {
                return end;
            }
            // Boxed: the handling of a message awaits deep call chains (connects, pool
            // checkouts, catalog queries) whose state would otherwise be part of every
            // session's future even while it sits idle in `io`.
            if let Err(end) = Box::pin(self.dispatch()).await {
                return end;
            }
            if self.client_eof && self.held.is_none() && self.cout.is_empty() {
                let clean = self.cin.is_empty() && self.copy_remaining == 0;
                return if clean { End::ClientDone } else { End::ClientLost };
            }
            if let Err(end) = self.io().await {
                return end;
            }
        }
    }

    async fn finish(&mut self, end: &End) {
        // Say why, when the client is between messages.
        let at_boundary = !self.client_mid_message();
        let error = match end {
            End::Violation(e) | End::ServerLost(e) => Some(e.clone()),
            End::Terminated => Some(PgError::shutting_down()),
            End::Idle(false) => Some(PgError::fatal(sqlstate::IDLE_SESSION_TIMEOUT, "terminating connection due to idle-session timeout")),
            End::Idle(true) => Some(PgError::fatal(
                sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout",
            )),
            _ => None,
        };
        if let End::Idle(in_tx) = end {
            tracing::info!(peer = %self.peer, in_transaction = in_tx, "session ended: its client was idle too long");
        }
        if let Some(e) = error.filter(|_| at_boundary) {
            e.write(&mut self.cout);
        }
        if !self.cout.is_empty() && !matches!(end, End::ClientLost) {
            use tokio::io::AsyncWriteExt;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.client.write_all(&self.cout)).await;
        }
        // Outside a transaction an idle session's connections are clean; inside one they
        // are closed, which rolls it back.
        let reusable_end = matches!(end, End::ClientDone | End::Idle(false));
        for link in std::mem::take(&mut self.links) {
            self.cancel.remove_server(link.node, link.checkout.conn.pid);
            let clean = reusable_end && !link.dead && link.quiet() && link.checkout.conn.buf.is_empty();
            if clean {
                self.shared.pools.checkin(link.checkout).await;
            }
        }
    }

    /// Stops using the connections to `nodes` (fenced, or fenced for a while: they may
    /// have been stopped): nothing more goes to or comes from them.
    fn drop_links_to(&mut self, nodes: &[usize], view: &ClusterView) {
        for link in &mut self.links {
            if nodes.contains(&link.node) && !link.dead {
                tracing::info!(peer = %self.peer, node = %view.nodes[link.node].name, "dropping the connection to a fenced node");
                link.dead = true;
                // What it sends from now on is not passed on.
                link.checkout.conn.buf.clear();
            }
        }
    }

    fn client_mid_message(&self) -> bool {
        self.links.iter().any(|l| l.remaining > 0 && !l.swallowing)
    }

    // ---- server → client -------------------------------------------------------------

    /// Walks every connection's buffered input; handles events and failed connections.
    fn drain_links(&mut self) -> Result<(), End> {
        if std::mem::take(&mut self.view_dirty) {
            // Fenced since: nothing more goes to (or comes from) that node.
            let view = self.shared.view.borrow().clone();
            let fenced: Vec<usize> = (0..view.nodes.len()).filter(|&i| view.nodes[i].fenced).collect();
            self.drop_links_to(&fenced, &view);
            self.view = view;
        }
        let mut i = 0;
        while i < self.links.len() {
            let busy = !self.links[i].answers.expect.is_empty() || self.links[i].remaining > 0;
            // Unsolicited messages of an idle connection wait until the client stream
            // is between messages.
            if busy || !self.client_mid_message() {
                let events = self.walk(i)?;
                for e in events {
                    self.on_event(i, e)?;
                }
            }
            if self.links[i].dead {
                self.link_failed(i)?;
                continue;
            }
            i += 1;
        }
        Ok(())
    }

    fn walk(&mut self, li: usize) -> Result<Vec<Event>, End> {
        let mut events = Vec::new();
        let link = &mut self.links[li];
        let idle = link.answers.expect.is_empty();
        let mut taken = std::mem::take(&mut link.checkout.conn.buf);
        let buf = &mut taken;
        let mut pos = 0;
        loop {
            if link.remaining > 0 {
                let mut take = link.remaining.min(buf.len() - pos);
                if !link.swallowing {
                    take = take.min(CLIENT_HIGH_WATER.saturating_sub(self.cout.len()));
                    self.cout.extend_from_slice(&buf[pos..pos + take]);
                }
                pos += take;
                link.remaining -= take;
                if link.remaining > 0 {
                    break;
                }
            }
            if self.cout.len() >= CLIENT_HIGH_WATER {
                break;
            }
            let header = match parse_header(&buf[pos..], SERVER_MAX_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    buf.advance(pos);
                    link.checkout.conn.buf = taken;
                    return Err(End::ServerLost(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, format!("server sent {e}"))));
                }
            };
            let total = header.frame_len();
            let need = if idle { total.min(IDLE_BUFFER_CAP) } else { needed(header.tag, total) };
            if buf.len() - pos < need {
                break;
            }
            // An explain NOTICE goes out right before the first answer of its unit.
            if let Some(front) = link.answers.expect.front() {
                if let Some(k) = self.notices.iter().position(|(n, u, _)| *n == link.node && *u == front.unit) {
                    let (_, _, notice) = self.notices.remove(k);
                    self.cout.extend_from_slice(&notice);
                }
            }
            match header.tag {
                be::NOTIFICATION_RESPONSE if total >= 9 => {
                    let at = pos + 5;
                    let sender = i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                    if let Some(pid) = self.shared.cancels.client_pid_for(link.node, sender) {
                        buf[at..at + 4].copy_from_slice(&pid.to_be_bytes());
                    }
                }
                be::PARAMETER_STATUS if need == total => {
                    let _ = record_parameter(&mut link.checkout.conn.params, &buf[pos + 5..pos + total]);
                }
                be::ERROR_RESPONSE => {
                    self.shared.stats.record_error(link.node, super::link::error_severity(&buf[pos..pos + need]));
                }
                _ => {}
            }
            let (mut forward, event) = link.on_message(header.tag, &buf[pos..pos + need]);
            if event == Some(Event::Fatal) && forward && need == total {
                // The server is leaving in the middle of a request: the client gets an
                // ERROR, not a FATAL, and its session goes on without that connection.
                link.fatal_forwarded = super::link::demote_fatal(&mut buf[pos..pos + total]);
            }
            // A standby's in_hot_standby must not tell the client it talks to a standby.
            if header.tag == be::PARAMETER_STATUS && buf[pos + 5..].starts_with(b"in_hot_standby\0") {
                forward = forward && self.view.nodes.get(link.node).is_some_and(|n| n.role == Role::Primary);
            }
            if let Some(e) = event {
                events.push(e);
            }
            let avail = total.min(buf.len() - pos);
            if forward {
                self.cout.extend_from_slice(&buf[pos..pos + avail]);
            }
            link.swallowing = !forward;
            link.remaining = total - avail;
            pos += avail;
        }
        buf.advance(pos);
        link.checkout.conn.buf = taken;
        Ok(events)
    }

    fn on_event(&mut self, li: usize, event: Event) -> Result<(), End> {
        match event {
            Event::Fatal => {
                let link = &mut self.links[li];
                let owed = link.pending_units().next().is_some() || self.batch == Some(link.node);
                if owed && !link.fatal_forwarded {
                    // The client got the FATAL: it will go away.
                    return Err(End::ServerFatal);
                }
                link.dead = true;
            }
            Event::InjectedSyncDone { failed } => {
                if failed {
                    self.discard_until_sync = true;
                }
            }
            Event::UnitDone { unit, status, failed } => {
                self.unit_ended(unit);
                let effects = self.units.remove(&unit).unwrap_or_default();
                if !failed {
                    for e in effects.log {
                        self.apply_log_entry(li, e);
                    }
                    if effects.wrote && self.shared.routing.causal_reads {
                        self.lsn_needed = true;
                    }
                }
                self.reconcile(li, status);
            }
        }
        Ok(())
    }

    /// A successful session-state statement: record it, and count it as applied on
    /// the connection that ran it when nothing else was logged meanwhile.
    fn apply_log_entry(&mut self, li: usize, e: LogEntry) {
        let up_to_date = self.links[li].applied == self.log.seq;
        let effect = e.effect.clone();
        self.log.add(e);
        if up_to_date {
            self.links[li].applied = self.log.seq;
        }
        match effect {
            LogEffect::DiscardAll => {
                self.stmts.clear();
                self.sql_prepared.clear();
                self.route.temp_tables.clear();
                self.links[li].prepared.clear();
            }
            LogEffect::Deallocate(None) => {
                self.stmts.clear();
                self.sql_prepared.clear();
                self.links[li].prepared.clear();
            }
            LogEffect::Deallocate(Some(name)) => {
                self.stmts.remove(&name);
                self.sql_prepared.remove(&name);
                self.links[li].prepared.remove(&name);
            }
            LogEffect::Plain => {}
        }
    }

    /// Brings the session's idea of the transaction in line with a server's
    /// ReadyForQuery, once nothing else is in flight.
    fn reconcile(&mut self, li: usize, status: u8) {
        // (A held message was not sent yet: it does not count.)
        if self.links.iter().any(|l| l.pending_units().next().is_some()) {
            // More answers are due: the state was updated when they were sent.
            if status != b'I' || !self.route.in_tx() {
                self.status = status;
            }
            return;
        }
        self.status = status;
        let node = self.links[li].node;
        match status {
            b'I' => {
                if self.route.in_tx() {
                    self.route.end_tx(true);
                    self.leave_tx();
                }
                self.links[li].in_tx = false;
            }
            _ => {
                if !self.route.in_tx() {
                    // A transaction began inside a multi-statement query: keep it there.
                    let tx = super::route::Tx {
                        begin: "BEGIN".into(),
                        begin_standby: "BEGIN".into(),
                        pinned: Some(node),
                        pinned_reason: "transaction began in a multi-statement query",
                        ..Default::default()
                    };
                    self.route.tx = Some(tx);
                    let link = &mut self.links[li];
                    link.in_tx = true;
                    link.tx_applied = 0;
                }
                if let Some(tx) = &mut self.route.tx {
                    // 'E' until ROLLBACK (TO SAVEPOINT) repairs it.
                    tx.failed = status == b'E';
                }
            }
        }
    }

    fn leave_tx(&mut self) {
        for l in &mut self.links {
            l.in_tx = false;
            l.tx_applied = 0;
        }
        self.portals.clear();
    }

    /// A connection failed: answer what the client still waits for, forget the node
    /// for reads, fail the transaction that used it.
    fn link_failed(&mut self, li: usize) -> Result<(), End> {
        let link = self.links.remove(li);
        let name = self.node_name(link.node);
        tracing::info!(peer = %self.peer, node = %name, "server connection lost");
        self.cancel.remove_server(link.node, link.checkout.conn.pid);
        if link.remaining > 0 && !link.swallowing {
            return Err(End::ServerLost(server_lost(&name)));
        }
        self.node_failed(link.node);
        if self.read_node == Some(link.node) {
            self.read_node = None;
        }
        if self.last_node == Some(link.node) {
            self.last_node = None;
        }
        let in_tx = self.route.in_tx() && link.in_tx;
        if let Some(tx) = &mut self.route.tx {
            if link.in_tx {
                tx.failed = true;
                tx.broken = true;
            }
            if tx.read_node == Some(link.node) {
                tx.read_node = None;
            }
        }
        let status = if in_tx { b'E' } else { self.status_outside() };
        let units: Vec<u64> = link.pending_units().collect();
        let mut error = PgError::new(Severity::Error, sqlstate::CONNECTION_FAILURE, format!("connection to backend \"{name}\" was lost"));
        error = error.with_hint(if in_tx {
            "The transaction used that backend and cannot go on; roll it back and retry."
        } else {
            "Retry the statement: pgvigil sends it to another backend."
        });
        let owed = link.pending_units().next().is_some() || self.batch == Some(link.node);
        if in_tx && !owed {
            // Nobody is waiting now: the transaction's next statement gets this error.
            if let Some(tx) = &mut self.route.tx {
                tx.broken_error = Some(error.clone());
            }
        }
        // The server's own error (a FATAL passed on as ERROR) answers the first request.
        let mut told = link.fatal_forwarded;
        for unit in units {
            self.units.remove(&unit);
            if !std::mem::replace(&mut told, false) {
                error.write(&mut self.cout);
            }
            backend::write_ready_for_query(&mut self.cout, status);
        }
        if self.batch == Some(link.node) {
            if !told {
                error.write(&mut self.cout);
            }
            self.batch = None;
            self.discard_until_sync = true;
        }
        if self.copy_node == Some(link.node) {
            self.copy_node = None;
        }
        self.notices.retain(|(n, _, _)| *n != link.node);
        self.status = status;
        Ok(())
    }

    fn status_outside(&self) -> u8 {
        if self.route.in_tx() {
            if self.route.tx.as_ref().is_some_and(|t| t.failed) {
                b'E'
            } else {
                b'T'
            }
        } else {
            b'I'
        }
    }

    // ---- sockets ---------------------------------------------------------------------

    /// Arms or disarms the idle timer: the session is idle when it waits for its client
    /// and nothing else (no answer due, nothing buffered either way).
    fn watch_idle(&mut self) {
        let t = self.shared.idle_timeouts;
        let in_tx = self.route.in_tx();
        let limit = if in_tx { t.in_tx } else { t.outside_tx };
        let idle = !limit.is_zero()
            && self.held.is_none()
            && self.cin.is_empty()
            && self.cout.is_empty()
            && self.copy_remaining == 0
            && !self.client_eof
            && self.all_quiet();
        if !idle {
            self.idle = None;
            return;
        }
        if self.idle.is_some_and(|(_, tx)| tx == in_tx) {
            return;
        }
        let now = tokio::time::Instant::now();
        self.idle = Some((now, in_tx));
        match &mut self.idle_timer {
            Some(timer) => timer.as_mut().reset(now + limit),
            None => self.idle_timer = Some(Box::pin(tokio::time::sleep_until(now + limit))),
        }
    }

    async fn io(&mut self) -> Result<(), End> {
        self.watch_idle();
        poll_fn(|cx| {
            if self.terminate.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(End::Terminated));
            }
            if let (Some((_, in_tx)), Some(timer)) = (self.idle, self.idle_timer.as_mut()) {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(End::Idle(in_tx)));
                }
            }
            let mut progress = false;
            if let Poll::Ready(rx) = self.view_changed.poll(cx) {
                self.view_changed.set(next_view(rx));
                self.view_dirty = true;
                progress = true;
            }
            while !self.cout.is_empty() {
                match Pin::new(&mut self.client).poll_write(cx, &self.cout) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(End::ClientLost)),
                    Poll::Ready(Ok(n)) => {
                        self.cout.advance(n);
                        self.shared.metrics.bytes_to_clients.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        progress = true;
                    }
                    Poll::Pending => break,
                }
            }
            // TLS takes bytes it cannot send yet into its own buffer: push them out (for
            // plain TCP this does nothing).
            if self.cout.is_empty() && matches!(Pin::new(&mut self.client).poll_flush(cx), Poll::Ready(Err(_))) {
                return Poll::Ready(Err(End::ClientLost));
            }
            for link in &mut self.links {
                while !link.out.is_empty() && !link.dead {
                    match Pin::new(&mut link.checkout.conn.stream).poll_write(cx, &link.out) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            link.dead = true;
                            progress = true;
                        }
                        Poll::Ready(Ok(n)) => {
                            link.out.advance(n);
                            progress = true;
                        }
                        Poll::Pending => break,
                    }
                }
                if link.out.is_empty() && !link.dead && matches!(Pin::new(&mut link.checkout.conn.stream).poll_flush(cx), Poll::Ready(Err(_))) {
                    link.dead = true;
                    progress = true;
                }
            }
            let limit = CLIENT_READ_AHEAD.max(self.cin_need);
            // A client between messages costs no buffers: wait until it is readable,
            // and give the buffers back meanwhile (thousands of idle clients).
            let between_messages = self.cin.is_empty() && !self.client_eof;
            let readable = !between_messages
                || match self.client.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(End::ClientLost)),
                    Poll::Pending => false,
                };
            if !readable {
                if self.cin.capacity() > 0 {
                    self.cin = BytesMut::new();
                }
                if self.cout.is_empty() && self.cout.capacity() > 0 {
                    self.cout = BytesMut::new();
                }
            } else if !self.client_eof && self.cin.len() < limit {
                if self.cin.capacity() - self.cin.len() < 1024 {
                    self.cin.reserve(8192);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.client), cx, &mut self.cin) {
                    Poll::Ready(Ok(0)) => {
                        self.client_eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.shared.metrics.bytes_from_clients.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(End::ClientLost)),
                    Poll::Pending => {}
                }
            }
            if self.cout.len() < CLIENT_HIGH_WATER {
                for link in &mut self.links {
                    if link.dead {
                        continue;
                    }
                    let buf = &mut link.checkout.conn.buf;
                    // What is buffered waits for the client first (an idle connection's
                    // unsolicited bytes wait until it is used).
                    let cap = if link.answers.expect.is_empty() && link.remaining == 0 { IDLE_BUFFER_CAP } else { SERVER_BUFFER_CAP };
                    if buf.len() >= cap {
                        continue;
                    }
                    if buf.capacity() - buf.len() < 4096 {
                        buf.reserve(32 * 1024);
                    }
                    match tokio_util::io::poll_read_buf(Pin::new(&mut link.checkout.conn.stream), cx, buf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            link.dead = true;
                            progress = true;
                        }
                        Poll::Ready(Ok(_)) => progress = true,
                        Poll::Pending => {}
                    }
                }
            }
            if progress {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    // ---- client → servers ------------------------------------------------------------

    async fn dispatch(&mut self) -> Result<(), End> {
        loop {
            if self.copy_remaining > 0 {
                let take = self.copy_remaining.min(self.cin.len());
                if take == 0 {
                    return Ok(());
                }
                let chunk = self.cin.split_to(take);
                self.copy_remaining -= take;
                if let Some(li) = self.copy_node.and_then(|n| self.link_index(n)) {
                    self.links[li].out.extend_from_slice(&chunk);
                }
                continue;
            }
            let (tag, msg) = match self.held.take() {
                Some(m) => m,
                None => {
                    let header = match parse_header(&self.cin, self.shared.max_message_size) {
                        Ok(Some(h)) => h,
                        Ok(None) => {
                            self.cin_need = 0;
                            return Ok(());
                        }
                        Err(e) => return Err(End::Violation(PgError::protocol_violation(e.to_string()))),
                    };
                    let total = header.frame_len();
                    if header.tag == fe::COPY_DATA && self.cin.len() < total && self.copy_target().is_some() {
                        // Large CopyData passes through in pieces.
                        let chunk = self.cin.split_to(self.cin.len());
                        self.copy_remaining = total - chunk.len();
                        self.copy_node = self.copy_target();
                        if let Some(li) = self.copy_node.and_then(|n| self.link_index(n)) {
                            self.links[li].out.extend_from_slice(&chunk);
                        }
                        continue;
                    }
                    if self.cin.len() < total {
                        self.cin_need = total;
                        return Ok(());
                    }
                    self.cin_need = 0;
                    (header.tag, self.cin.split_to(total).freeze())
                }
            };
            match self.handle(tag, &msg).await? {
                Step::Done => {}
                Step::Blocked => {
                    self.held = Some((tag, msg));
                    return Ok(());
                }
            }
        }
    }

    fn copy_target(&self) -> Option<usize> {
        self.links.iter().find(|l| l.answers.copy_in).map(|l| l.node)
    }

    async fn handle(&mut self, tag: u8, msg: &Bytes) -> Result<Step, End> {
        let body = &msg[5..];
        if self.discard_until_sync {
            return Ok(match tag {
                fe::SYNC => {
                    if !self.all_quiet() {
                        return Ok(Step::Blocked);
                    }
                    self.discard_until_sync = false;
                    let status = self.status_outside();
                    backend::write_ready_for_query(&mut self.cout, status);
                    Step::Done
                }
                fe::TERMINATE => return Err(End::ClientDone),
                _ => Step::Done,
            });
        }
        match Request::decode(tag, body).map_err(End::Violation)? {
            Request::Terminate => Err(End::ClientDone),
            Request::Query(sql) => self.on_query(msg, sql).await,
            Request::Parse { name, sql } => self.on_parse(msg, name.to_string(), sql.to_string()).await,
            Request::Bind { portal, statement } => self.on_bind(msg, portal.to_string(), statement.to_string()).await,
            Request::Describe { kind, name } | Request::Close { kind, name } => {
                self.on_describe_or_close(tag, msg, kind, name.to_string()).await
            }
            Request::Execute { portal, max_rows } => {
                if self.local.has_portal(portal) {
                    return Ok(self.local_execute(portal, max_rows));
                }
                let node = self.portals.get(portal).copied().or(self.batch).or(self.last_node);
                self.extended_to(msg, node, Expect::Execute).await
            }
            Request::Flush => {
                let node = self.batch.or(self.last_node);
                match node {
                    Some(n) if self.link_index(n).is_some() => self.extended_to(msg, Some(n), Expect::Flush).await,
                    _ => Ok(Step::Done),
                }
            }
            Request::Sync => self.on_sync(msg).await,
            Request::FunctionCall => self.on_function_call(msg).await,
            Request::Copy => {
                // Outside COPY the server ignores these; a failed node's COPY is gone.
                if let Some(li) = self.copy_target().and_then(|n| self.link_index(n)) {
                    self.links[li].out.extend_from_slice(msg);
                }
                Ok(Step::Done)
            }
        }
    }

    // ---- simple Query ----------------------------------------------------------------

    async fn on_query(&mut self, msg: &Bytes, sql: &str) -> Result<Step, End> {
        if let Some(n) = self.batch {
            // A Query inside an unfinished batch belongs to the batch's node.
            return self.extended_to(msg, Some(n), Expect::Ready).await;
        }
        if let Some(command) = Command::parse(sql) {
            if !self.all_quiet() {
                return Ok(Step::Blocked);
            }
            match command {
                Command::Show(which) => self.show_table(which).write(&mut self.cout),
                Command::UnknownParameter(name) => super::show::unknown_parameter(&name).write(&mut self.cout),
            }
            let status = self.status_outside();
            backend::write_ready_for_query(&mut self.cout, status);
            return Ok(Step::Done);
        }
        let c = self.classify(sql);
        if let Some((name, value)) = c.pgvigil_setting() {
            if !self.all_quiet() {
                return Ok(Step::Blocked);
            }
            match self.route.apply_setting(&name, &value) {
                Ok(()) => backend::write_command_complete(&mut self.cout, "SET"),
                Err(e) => PgError::new(Severity::Error, sqlstate::INVALID_PARAMETER_VALUE, e).write(&mut self.cout),
            }
            let status = self.status_outside();
            backend::write_ready_for_query(&mut self.cout, status);
            return Ok(Step::Done);
        }
        if self.tx_broken_for(&c.kind) {
            // A transaction that lost a node: only its end is accepted.
            if !self.all_quiet() {
                return Ok(Step::Blocked);
            }
            return Ok(self.refuse_if_broken(&c.kind, true)?.unwrap_or(Step::Done));
        }
        // EXECUTE of an SQL prepared statement goes where that statement would.
        let (c, prefix) = match c.executes.as_ref().and_then(|name| Some((name, self.sql_prepared.get(name)?.clone()))) {
            Some((name, inner)) if c.statements == 1 => (inner, format!("EXECUTE {name}: ")),
            _ => (c, String::new()),
        };
        let (kind, reason) = self.final_kind(&c).await;
        let decision = self.route.decide(&c, &kind, &format!("{prefix}{reason}"), &self.shared.routing, true);
        match decision.dest {
            Dest::Local(local) => {
                if !self.all_quiet() {
                    return Ok(Step::Blocked);
                }
                self.answer_local(local, &c, &kind, sql);
                Ok(Step::Done)
            }
            Dest::AllInTx if self.links.iter().all(|l| !l.in_tx) && matches!(kind, Kind::TxControl(TxControl::Commit | TxControl::Rollback)) => {
                // The transaction never reached a server.
                if !self.all_quiet() {
                    return Ok(Step::Blocked);
                }
                let tag = if matches!(kind, Kind::TxControl(TxControl::Commit)) { "COMMIT" } else { "ROLLBACK" };
                self.answer_local(Local::EndEmpty { tag }, &c, &kind, sql);
                Ok(Step::Done)
            }
            dest => {
                if matches!(kind, Kind::Read) && self.lsn_needed {
                    if let Some(step) = self.fetch_commit_lsn().await? {
                        return Ok(step);
                    }
                }
                if dest == Dest::Primary {
                    if let Some(step) = self.hold_for_primary(&kind, true).await? {
                        return Ok(step);
                    }
                }
                for attempt in 0..3 {
                    let Some((node, reason)) = self.resolve(&dest, &kind, &decision.reason) else {
                        return self.no_node(&kind, true);
                    };
                    let class = StatementClass::of(&c, &kind, sql);
                    match self.forward_query(msg, node, &c, &kind, sql, &reason, decision.label, class).await? {
                        Ok(step) => return Ok(step),
                        Err((e, node_down)) => {
                            // A read outside a transaction moves to another node.
                            let read_retry = node_down && matches!(kind, Kind::Read) && !self.route.in_tx() && matches!(dest, Dest::Read) && attempt < 2;
                            // A statement for a primary that cannot be reached (nothing was
                            // sent) waits for the failover, then goes to the new primary.
                            let write_retry = node_down && dest == Dest::Primary && !self.route.in_tx() && attempt < 2;
                            if write_retry && self.hold_while_primary_is(node).await? {
                                tracing::info!(peer = %self.peer, error = %e, "statement waits for the new primary");
                                continue;
                            }
                            if !read_retry {
                                return self.fail_request(e, true);
                            }
                            tracing::info!(peer = %self.peer, error = %e, "read moves to another backend");
                        }
                    }
                }
                Ok(Step::Done)
            }
        }
    }

    /// Causal reads: reads the primary's WAL insert position after a committed write.
    /// `Some(step)` when it must wait.
    async fn fetch_commit_lsn(&mut self) -> Result<Option<Step>, End> {
        let Some(li) = self.view.primary().and_then(|p| self.link_index(p)) else {
            self.lsn_needed = false;
            return Ok(None);
        };
        if !self.links[li].quiet() || self.links.iter().any(|l| !l.answers.expect.is_empty()) {
            return Ok(Some(Step::Blocked));
        }
        self.lsn_needed = false;
        match self.links[li].checkout.conn.query_value("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").await {
            Ok(Some(text)) => {
                if let Some(lsn) = crate::monitor::parse_lsn(&text) {
                    self.commit_lsn = Some(self.commit_lsn.map_or(lsn, |old| old.max(lsn)));
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the primary's WAL position");
                if matches!(e, ConnectError::Io { .. } | ConnectError::Protocol { .. }) {
                    self.links[li].dead = true;
                }
            }
        }
        Ok(None)
    }

    /// Forwards a simple Query (or FunctionCall) to `node` after readying its connection.
    #[allow(clippy::too_many_arguments)]
    async fn forward_query(
        &mut self,
        msg: &Bytes,
        node: usize,
        c: &Classification,
        kind: &Kind,
        sql: &str,
        reason: &str,
        label: &'static str,
        class: StatementClass,
    ) -> Result<Result<Step, (PgError, bool)>, End> {
        let li = match self.ready_link(node, true).await? {
            Ready::Link(li) => li,
            Ready::Blocked => return Ok(Ok(Step::Blocked)),
            Ready::Failed(e, node_down) => return Ok(Err((e, node_down))),
        };
        let commit_end = matches!(kind, Kind::TxControl(TxControl::Commit | TxControl::Rollback | TxControl::PrepareTransaction));
        if commit_end {
            // Other nodes of the transaction end it first, so the client's answer comes last.
            if let Some(step) = self.end_tx_elsewhere(li, kind).await? {
                return Ok(Ok(step));
            }
        }
        let li = match self.link_index(node) {
            Some(li) => li,
            None => return Ok(Ok(Step::Blocked)),
        };
        if matches!(kind, Kind::TxControl(TxControl::Savepoint | TxControl::Release | TxControl::RollbackToSavepoint | TxControl::SetTransaction { .. })) {
            if let Some(step) = self.tx_statement_elsewhere(li, sql).await? {
                return Ok(Ok(step));
            }
        }
        let li = match self.link_index(node) {
            Some(li) => li,
            None => return Ok(Ok(Step::Blocked)),
        };
        // Effects are taken once, when the statement is really sent.
        let effects = self.effects_for(c, kind, sql);
        let unit = self.new_unit(effects);
        self.explain(li, unit, reason);
        self.record(node, label, class);
        let primary = self.view.primary();
        let link = &mut self.links[li];
        link.out.extend_from_slice(msg);
        link.push(Expect::Ready, false, unit);
        link.prepared.remove("");
        self.route.sent(c, kind, node, primary, sql);
        self.after_send(li, kind, c);
        Ok(Ok(Step::Done))
    }

    /// Session bookkeeping after a statement went to a connection.
    fn after_send(&mut self, li: usize, kind: &Kind, c: &Classification) {
        let node = self.links[li].node;
        self.last_node = Some(node);
        self.set_cancel_target(li);
        match kind {
            Kind::TxControl(TxControl::Commit | TxControl::Rollback | TxControl::PrepareTransaction) => self.leave_tx(),
            Kind::TxControl(TxControl::Begin { .. }) if self.route.in_tx() => {
                let link = &mut self.links[li];
                if !link.in_tx {
                    link.in_tx = true;
                    link.tx_applied = self.route.tx.as_ref().map_or(0, |t| t.log.len());
                }
            }
            Kind::Write if matches!(c.reason, Reason::Ddl(_)) => self.shared.catalogs.invalidate(&self.database),
            _ => {}
        }
        if let Some((name, inner)) = &c.prepared {
            self.sql_prepared.insert(name.clone(), Arc::new((**inner).clone()));
        }
        if let Some(tx) = &self.route.tx {
            let link = &mut self.links[li];
            if link.in_tx {
                link.tx_applied = tx.log.len();
            }
        }
    }

    /// The effects of a statement to apply when its unit succeeds.
    fn effects_for(&mut self, c: &Classification, kind: &Kind, sql: &str) -> UnitEffects {
        let mut effects = UnitEffects::default();
        match kind {
            Kind::SessionState | Kind::TxControl(TxControl::SetSessionCharacteristics { .. }) => {
                let local = c.reason == Reason::SessionState("SET LOCAL");
                let entry = log_entry(c, sql);
                match &mut self.route.tx {
                    Some(tx) => {
                        tx.log.push(sql.to_string());
                        if !local {
                            tx.session_entries.push(sql.to_string());
                        }
                    }
                    None if !local => effects.log.push(entry),
                    None => {}
                }
            }
            Kind::Write | Kind::Unparsable if !self.route.in_tx() => effects.wrote = true,
            Kind::TxControl(TxControl::Commit) => {
                if let Some(tx) = &self.route.tx {
                    effects.wrote = tx.wrote;
                    for sql in &tx.session_entries {
                        let c = self.shared.classifier.get_or_classify(sql);
                        effects.log.push(log_entry(&c, sql));
                    }
                }
            }
            _ => {}
        }
        if matches!(kind, Kind::Unparsable) {
            self.shared.stats.unparsable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        effects
    }

    fn new_unit(&mut self, effects: UnitEffects) -> u64 {
        let unit = self.next_unit;
        self.next_unit += 1;
        self.unit_began(unit);
        if !effects.log.is_empty() || effects.wrote {
            self.units.insert(unit, effects);
        }
        unit
    }

    /// The statement's classification. With load balancing off everything goes to the
    /// primary over one connection, so statements are not parsed at all (except
    /// `SET pgvigil.…`).
    fn classify(&self, sql: &str) -> Arc<Classification> {
        if !self.shared.routing.load_balance && !mentions_pgvigil(sql) {
            return self.shared.unclassified.clone();
        }
        self.shared.classifier.get_or_classify(sql)
    }

    async fn final_kind(&self, c: &Classification) -> (Kind, Reason) {
        if c.kind != Kind::Read || c.functions.is_empty() {
            return (c.kind.clone(), c.reason.clone());
        }
        let catalog = self.shared.catalogs.get(&self.database, &self.view).await;
        let lookup = |f: &crate::router::FunctionRef| catalog.as_ref().and_then(|cat| cat.lookup(f));
        final_kind(c, &self.shared.function_policy, &lookup)
    }

    /// Turns a destination into a node, with the reason to explain.
    fn resolve(&mut self, dest: &Dest, kind: &Kind, reason: &str) -> Option<(usize, String)> {
        self.view = self.shared.view.borrow().clone();
        let primary = self.view.primary();
        match dest {
            Dest::Primary => primary.map(|p| (p, reason.to_string())),
            Dest::Node(n) => Some((*n, reason.to_string())),
            Dest::Read => self.pick_read(reason),
            Dest::Last | Dest::AllInTx => {
                let tx_links: Vec<usize> = self.links.iter().filter(|l| l.in_tx).map(|l| l.node).collect();
                if matches!(dest, Dest::AllInTx) {
                    if let Some(p) = primary.filter(|p| tx_links.contains(p)) {
                        return Some((p, reason.to_string()));
                    }
                }
                if self.route.in_tx() {
                    if let Some(n) = self.last_node.filter(|n| tx_links.contains(n)).or(tx_links.first().copied()) {
                        return Some((n, reason.to_string()));
                    }
                    if let Some(tx) = &self.route.tx {
                        if let Some(n) = tx.pinned {
                            return Some((n, reason.to_string()));
                        }
                    }
                } else if let Some(n) = self.last_node.filter(|n| self.link_index(*n).is_some()) {
                    return Some((n, reason.to_string()));
                }
                let serializable = self.route.tx.as_ref().is_some_and(|t| t.serializable_primary);
                let readable = matches!(kind, Kind::SessionState | Kind::TxControl(_) | Kind::Read);
                if self.shared.routing.load_balance && readable && !serializable && self.route.read_target() != ReadTarget::Primary {
                    self.pick_read(reason)
                } else {
                    primary.map(|p| (p, reason.to_string()))
                }
            }
            Dest::Local(_) => None,
        }
    }

    /// The node for a read: the session's read node while it stays eligible, else a
    /// new pick by weight.
    fn pick_read(&mut self, reason: &str) -> Option<(usize, String)> {
        let cfg = &self.shared.routing;
        let needs = ReadNeeds {
            limits: crate::router::balance::LagLimits {
                max_bytes: cfg.max_lag.0,
                max_time: cfg.max_lag_time.get(),
            },
            min_replay: self.commit_lsn,
        };
        let target = self.route.read_target();
        let owned;
        let reason = match (self.route.route, target) {
            (super::route::RouteOverride::Auto, ReadTarget::Any) => reason,
            (super::route::RouteOverride::Auto, t) => {
                let to = match t {
                    ReadTarget::Primary => "primary".to_string(),
                    ReadTarget::Standby => "standby".to_string(),
                    ReadTarget::Node(n) => self.node_name(n),
                    ReadTarget::Any => String::new(),
                };
                owned = format!("{reason}; redirect rule: to {to}");
                &owned
            }
            (_, ReadTarget::Standby) => {
                owned = format!("{reason}; pgvigil.route = standby");
                &owned
            }
            _ => reason,
        };
        let session = cfg.granularity == crate::config::Granularity::Session;
        // A connection with answers still due that may serve this read keeps it: no wait.
        let busy = self.links.iter().find(|l| !l.answers.expect.is_empty()).map(|l| l.node);
        let keep = busy.or(if session { self.read_node } else { None });
        if let Some(n) = keep {
            let allowed = match target {
                ReadTarget::Primary => Some(n) == self.view.primary(),
                ReadTarget::Standby => self.view.nodes.get(n).is_some_and(|s| s.role == Role::Standby),
                ReadTarget::Node(t) => t == n,
                ReadTarget::Any => true,
            };
            if allowed && !self.excluded().contains(&n) && crate::router::balance::ineligible(&self.view, n, &needs).is_none() {
                return Some((n, reason.to_string()));
            }
        }
        let pick = self.shared.balancer.pick(&self.view, target, &needs, &self.excluded(), cfg.prefer_lower_lag)?;
        if session {
            self.read_node = Some(pick.node);
        }
        if pick.skipped.is_empty() {
            Some((pick.node, reason.to_string()))
        } else {
            Some((pick.node, format!("{reason}; not {}", pick.skipped.join(", not "))))
        }
    }

    /// A statement that needs the primary while there is none (a failover in progress),
    /// or while a switchover pauses new work on it, waits until there is one to use, up
    /// to `failover.write_hold_timeout`. A transaction already open on the primary goes
    /// on during a pause, so that it can finish. `Some(step)`: the statement got an
    /// error instead (its transaction lost a node, or the pause outlasted the wait).
    async fn hold_for_primary(&mut self, kind: &Kind, simple: bool) -> Result<Option<Step>, End> {
        if self.must_hold() {
            let mut rx = self.shared.view.clone();
            // A node fenced at any time during the wait may have been stopped and started
            // again (a switchover rolled back): its connections are not used again.
            let mut fenced_meanwhile = Vec::new();
            let wait = tokio::time::timeout(
                self.shared.write_hold,
                rx.wait_for(|v| {
                    for i in (0..v.nodes.len()).filter(|&i| v.nodes[i].fenced) {
                        if !fenced_meanwhile.contains(&i) {
                            fenced_meanwhile.push(i);
                        }
                    }
                    v.primary().is_some() && !v.writes_paused
                }),
            );
            tokio::select! {
                _ = wait => {}
                _ = self.terminate.as_mut() => {}
            }
            let view = self.shared.view.borrow().clone();
            self.drop_links_to(&fenced_meanwhile, &view);
            self.after_hold()?;
            // One borrow at a time: a second read borrow while the first is held can
            // deadlock with a writer waiting in between.
            let paused = self.shared.view.borrow().writes_paused;
            if paused && self.must_hold() {
                // Never past a pause: the switchover counts on no new write reaching
                // the old primary.
                if !self.all_quiet() {
                    return Ok(Some(Step::Blocked));
                }
                let e = PgError::new(Severity::Error, sqlstate::CANNOT_CONNECT_NOW, "a switchover is in progress and took longer than failover.write_hold_timeout")
                    .with_hint("retry the statement; pgvigil holds writes while the primary changes");
                return Ok(Some(self.fail_request(e, simple)?));
            }
        }
        self.refuse_if_broken(kind, simple)
    }

    /// Whether a statement for the primary must wait: there is none and failover may
    /// promote one, or a switchover pauses new work and this session has no
    /// transaction open on the primary.
    fn must_hold(&self) -> bool {
        let v = self.shared.view.borrow();
        match v.primary() {
            Some(p) => v.writes_paused && !self.links.iter().any(|l| l.node == p && l.in_tx && !l.dead),
            None => self.promotion_coming(),
        }
    }

    /// After waiting for a failover: apply the new view to the connections now (a
    /// connection to the fenced node is dropped and fails the transaction that used it),
    /// before the held statement is routed.
    fn after_hold(&mut self) -> Result<(), End> {
        self.view_dirty = true;
        self.drain_links()?;
        self.view = self.shared.view.borrow().clone();
        Ok(())
    }

    /// The open transaction lost a node and this statement is not its end.
    fn tx_broken_for(&self, kind: &Kind) -> bool {
        self.route.tx.as_ref().is_some_and(|t| t.broken) && !matches!(kind, Kind::TxControl(TxControl::Commit | TxControl::Rollback))
    }

    /// Whether failover may still promote a standby (statements waiting for a primary
    /// only wait when it may).
    fn promotion_coming(&self) -> bool {
        !matches!(self.shared.failover.status(), crate::failover::Status::ReadOnly { .. } | crate::failover::Status::Manual)
    }

    /// A statement that is not the end of a transaction that lost a node gets the
    /// error instead of running (on a node that never saw the transaction's start).
    fn refuse_if_broken(&mut self, kind: &Kind, simple: bool) -> Result<Option<Step>, End> {
        if !self.tx_broken_for(kind) {
            return Ok(None);
        }
        let e = self.route.tx.as_mut().and_then(|t| t.broken_error.take()).unwrap_or_else(in_failed_tx);
        if simple {
            e.write(&mut self.cout);
            backend::write_ready_for_query(&mut self.cout, b'E');
            return Ok(Some(Step::Done));
        }
        Ok(Some(self.fail_request(e, false)?))
    }

    /// Waits (up to `failover.write_hold_timeout`) until the primary is another node than
    /// `node`; true when it is.
    async fn hold_while_primary_is(&mut self, node: usize) -> Result<bool, End> {
        if !self.promotion_coming() {
            return Ok(false);
        }
        let mut rx = self.shared.view.clone();
        let wait = tokio::time::timeout(self.shared.write_hold, rx.wait_for(|v| v.primary().is_some_and(|p| p != node)));
        let moved = tokio::select! {
            r = wait => matches!(r, Ok(Ok(_))),
            _ = self.terminate.as_mut() => false,
        };
        self.after_hold()?;
        Ok(moved)
    }

    /// Remembers that a node's connection failed in this session.
    fn node_failed(&mut self, node: usize) {
        // The monitor checks it now rather than at its next interval.
        self.shared.monitor.poke(node);
        self.failed_nodes.retain(|(n, _)| *n != node);
        self.failed_nodes.push((node, std::time::Instant::now()));
    }

    /// Nodes this session does not read from for now: their connection failed less
    /// than `FAILED_NODE_PAUSE` ago.
    fn excluded(&self) -> Vec<usize> {
        self.failed_nodes.iter().filter(|(_, at)| at.elapsed() < FAILED_NODE_PAUSE).map(|(n, _)| *n).collect()
    }

    fn no_node(&mut self, kind: &Kind, simple: bool) -> Result<Step, End> {
        if !self.all_quiet() {
            return Ok(Step::Blocked);
        }
        let what = if matches!(kind, Kind::Read) { "no backend can serve reads" } else { "no primary backend is available" };
        let e = PgError::new(Severity::Error, sqlstate::CANNOT_CONNECT_NOW, what)
            .with_hint("pgvigil's monitor sees no usable backend for this statement; check the backends and health_check settings");
        self.fail_request(e, simple)
    }

    /// Reports an error for the current request: with ReadyForQuery for a simple Query,
    /// or by skipping to the batch's Sync for the extended protocol.
    fn fail_request(&mut self, e: PgError, simple: bool) -> Result<Step, End> {
        e.write(&mut self.cout);
        if simple {
            let status = self.status_outside();
            backend::write_ready_for_query(&mut self.cout, status);
        } else {
            self.batch = None;
            self.discard_until_sync = true;
        }
        Ok(Step::Done)
    }

    fn answer_local(&mut self, local: Local, c: &Classification, kind: &Kind, sql: &str) {
        match local {
            Local::Begin => {
                let primary = self.view.primary();
                self.route.sent(c, kind, usize::MAX, primary, sql);
                backend::write_command_complete(&mut self.cout, "BEGIN");
                self.status = b'T';
            }
            Local::EndEmpty { tag } => {
                self.route.end_tx(false);
                self.leave_tx();
                backend::write_command_complete(&mut self.cout, tag);
                self.status = b'I';
            }
        }
        backend::write_ready_for_query(&mut self.cout, self.status);
    }

    /// Ends the transaction on its other nodes (inline), before the client's COMMIT or
    /// ROLLBACK runs on `li`. `Some(step)` when the client's statement was answered here.
    async fn end_tx_elsewhere(&mut self, li: usize, kind: &Kind) -> Result<Option<Step>, End> {
        let main = self.links[li].node;
        let others: Vec<usize> = self.links.iter().filter(|l| l.in_tx && l.node != main).map(|l| l.node).collect();
        if others.iter().any(|n| self.link_index(*n).is_some_and(|i| !self.links[i].quiet())) {
            return Ok(Some(Step::Blocked));
        }
        let sql = match kind {
            Kind::TxControl(TxControl::Commit) => "COMMIT",
            _ => "ROLLBACK",
        };
        for n in others {
            if let Some(i) = self.link_index(n) {
                let link = &mut self.links[i];
                if let Err(e) = link.checkout.conn.simple_query(sql).await {
                    tracing::debug!(node = n, error = %e, "ending the transaction on a secondary node failed");
                    if matches!(e, ConnectError::Io { .. } | ConnectError::Protocol { .. }) {
                        link.dead = true;
                    }
                }
                link.in_tx = false;
            }
        }
        Ok(None)
    }

    /// SAVEPOINT, RELEASE, ROLLBACK TO and SET TRANSACTION run on every node of the
    /// transaction.
    async fn tx_statement_elsewhere(&mut self, li: usize, sql: &str) -> Result<Option<Step>, End> {
        let main = self.links[li].node;
        let others: Vec<usize> = self.links.iter().filter(|l| l.in_tx && l.node != main).map(|l| l.node).collect();
        if others.iter().any(|n| self.link_index(*n).is_some_and(|i| !self.links[i].quiet())) {
            return Ok(Some(Step::Blocked));
        }
        for n in others {
            if let Some(i) = self.link_index(n) {
                let link = &mut self.links[i];
                if let Err(e) = link.checkout.conn.simple_query(sql).await {
                    tracing::debug!(node = n, error = %e, "transaction statement failed on a secondary node");
                    if matches!(e, ConnectError::Io { .. } | ConnectError::Protocol { .. }) {
                        link.dead = true;
                    }
                }
                link.tx_applied += 1;
            }
        }
        Ok(None)
    }

    // ---- extended protocol -----------------------------------------------------------

    async fn on_parse(&mut self, msg: &Bytes, name: String, sql: String) -> Result<Step, End> {
        if let Some(command) = Command::parse(&sql) {
            return self.local_parse(name, command);
        }
        if !name.is_empty() && self.local.statement(&name).is_some() {
            if let Some(step) = self.local_turn() {
                return Ok(step);
            }
            return self.fail_request(super::local::statement_exists(&name), false);
        }
        self.local.forget_statement(&name);
        let c = self.classify(&sql);
        let (kind, reason) = self.final_kind(&c).await;
        if matches!(kind, Kind::Read) && self.lsn_needed && self.batch.is_none() {
            if let Some(step) = self.fetch_commit_lsn().await? {
                return Ok(step);
            }
        }
        let (node, li) = match self.batch_link(&c, &kind, &reason).await? {
            Ok(at) => at,
            Err(step) => return Ok(step),
        };
        // A statement of this name closed earlier may still exist on this connection.
        if !name.is_empty() && !self.stmts.contains_key(&name) && self.links[li].prepared.contains_key(&name) {
            let link = &mut self.links[li];
            frontend::write_close(&mut link.out, b'S', &name);
            link.push(Expect::Close, true, self.batch_unit);
            link.prepared.remove(&name);
        }
        self.generation += 1;
        let generation = self.generation;
        let link = &mut self.links[li];
        link.out.extend_from_slice(msg);
        link.push(Expect::Parse, false, self.batch_unit);
        link.unsynced = true;
        link.prepared.insert(name.clone(), generation);
        self.stmts.insert(name, Stmt { generation, parse: msg.clone(), class: c, sql });
        self.last_node = Some(node);
        Ok(Step::Done)
    }

    async fn on_bind(&mut self, msg: &Bytes, portal: String, stmt: String) -> Result<Step, End> {
        if let Some(which) = self.local.statement(&stmt) {
            return self.local_bind(msg, which);
        }
        self.local.forget_portal(&portal);
        let bound_kind = self.stmts.get(&stmt).map_or(Kind::Write, |s| s.class.kind.clone());
        if self.tx_broken_for(&bound_kind) {
            if self.batch.is_some() {
                // Close the batch's part first, so the error comes after its answers.
                return Ok(self.end_batch_early());
            }
            if !self.all_quiet() {
                return Ok(Step::Blocked);
            }
            return Ok(self.refuse_if_broken(&bound_kind, false)?.unwrap_or(Step::Done));
        }
        let (c, sql) = match self.stmts.get(&stmt) {
            Some(s) => (s.class.clone(), s.sql.clone()),
            None => match self.sql_prepared.get(&stmt) {
                Some(c) => (c.clone(), String::new()),
                // Unknown to pgvigil: the server decides (it will report the error).
                None => (Arc::new(crate::router::classify("SELECT pg_catalog.nextval(NULL)")), String::new()),
            },
        };
        let (kind, reason) = self.final_kind(&c).await;
        if matches!(kind, Kind::Read) && self.lsn_needed && self.batch.is_none() {
            if let Some(step) = self.fetch_commit_lsn().await? {
                return Ok(step);
            }
        }
        let (node, li) = match self.batch_link(&c, &kind, &reason).await? {
            Ok(at) => at,
            Err(step) => return Ok(step),
        };
        self.ensure_prepared(li, &stmt);
        let decision = self.route.decide(&c, &kind, &reason.to_string(), &self.shared.routing, false);
        let class = StatementClass::of(&c, &kind, &sql);
        if let Some((name, value)) = c.pgvigil_setting() {
            // The server accepts it as a placeholder setting; pgvigil applies it too.
            if let Err(e) = self.route.apply_setting(&name, &value) {
                tracing::debug!(peer = %self.peer, error = %e, "pgvigil setting ignored");
            }
        }
        let unit = self.batch_unit;
        self.explain(li, unit, &reason.to_string());
        self.record(node, decision.label, class);
        if !sql.is_empty() {
            let effects = self.effects_for(&c, &kind, &sql);
            let entry = self.units.entry(unit).or_default();
            entry.log.extend(effects.log);
            entry.wrote |= effects.wrote;
        }
        let link = &mut self.links[li];
        link.out.extend_from_slice(msg);
        link.push(Expect::Bind, false, unit);
        link.unsynced = true;
        self.portals.insert(portal, node);
        let primary = self.view.primary();
        self.route.sent(&c, &kind, node, primary, &sql);
        self.after_send(li, &kind, &c);
        Ok(Step::Done)
    }

    async fn on_describe_or_close(&mut self, tag: u8, msg: &Bytes, kind: u8, name: String) -> Result<Step, End> {
        let local = if kind == b'S' { self.local.statement(&name).is_some() } else { self.local.has_portal(&name) };
        if local {
            if let Some(step) = self.local_turn() {
                return Ok(step);
            }
            match (tag, kind) {
                (fe::DESCRIBE, b'S') => self.local.describe_statement(&mut self.cout, &name),
                (fe::DESCRIBE, _) => self.local.describe_portal(&mut self.cout, &name),
                _ => self.local.close(&mut self.cout, kind, &name),
            }
            return Ok(Step::Done);
        }
        let node = match kind {
            b'P' => self.portals.get(&name).copied().or(self.batch).or(self.last_node),
            _ if tag == fe::DESCRIBE => match self.stmts.get(&name).map(|s| s.class.clone()) {
                Some(c) if self.batch.is_none() => {
                    let (k, reason) = self.final_kind(&c).await;
                    match self.batch_node(&c, &k, &reason).await? {
                        Ok(n) => Some(n),
                        Err(step) => return Ok(step),
                    }
                }
                _ => self.batch.or(self.last_node),
            },
            _ => self
                .batch
                .or(self.last_node.filter(|n| self.link_index(*n).is_some_and(|i| self.links[i].prepared.contains_key(&name))))
                .or(self.links.iter().find(|l| l.prepared.contains_key(&name)).map(|l| l.node))
                .or(self.last_node),
        };
        let expect = match (tag, kind) {
            (fe::DESCRIBE, b'S') => Expect::DescribeStatement,
            (fe::DESCRIBE, _) => Expect::DescribePortal,
            _ => Expect::Close,
        };
        if tag == fe::DESCRIBE && kind == b'S' {
            if let Some(n) = node {
                if let Some(li) = self.link_index(n) {
                    if self.batch.is_none() || self.batch == Some(n) {
                        self.start_batch(n);
                        self.ensure_prepared(li, &name);
                    }
                }
            }
        }
        if tag == fe::CLOSE {
            match kind {
                b'S' => {
                    self.stmts.remove(&name);
                }
                _ => {
                    self.portals.remove(&name);
                }
            }
        }
        let step = self.extended_to(msg, node, expect).await?;
        if tag == fe::CLOSE && kind == b'S' {
            if let Some(li) = node.and_then(|n| self.link_index(n)) {
                self.links[li].prepared.remove(&name);
            }
        }
        Ok(step)
    }

    /// Forwards an extended-protocol message that belongs to the open batch (or the
    /// connection used last).
    async fn extended_to(&mut self, msg: &Bytes, node: Option<usize>, expect: Expect) -> Result<Step, End> {
        let node = match node.or(self.batch).or(self.last_node) {
            Some(n) => n,
            None => match self.resolve(&Dest::Last, &Kind::Read, "") {
                Some((n, _)) => n,
                None => return self.no_node(&Kind::Read, false),
            },
        };
        if self.batch.is_some_and(|b| b != node) {
            // A portal of another node: finish this batch's part first.
            return Ok(self.end_batch_early());
        }
        let li = match self.ready_link(node, self.batch.is_none()).await? {
            Ready::Link(li) => li,
            Ready::Blocked => return Ok(Step::Blocked),
            Ready::Failed(e, _) => return self.fail_request(e, false),
        };
        self.start_batch(node);
        let unit = self.batch_unit;
        let link = &mut self.links[li];
        link.out.extend_from_slice(msg);
        if expect != Expect::Flush {
            link.push(expect, false, unit);
        }
        link.unsynced = true;
        self.last_node = Some(node);
        self.set_cancel_target(li);
        Ok(Step::Done)
    }

    async fn on_sync(&mut self, msg: &Bytes) -> Result<Step, End> {
        if !self.route.in_tx() {
            self.local.end_of_transaction();
        }
        let node = self.batch.or(self.last_node.filter(|n| self.link_index(*n).is_some()));
        let Some(node) = node else {
            // Nothing ran: answer it here.
            if !self.all_quiet() {
                return Ok(Step::Blocked);
            }
            let status = self.status_outside();
            backend::write_ready_for_query(&mut self.cout, status);
            return Ok(Step::Done);
        };
        let Some(li) = self.link_index(node) else { return Ok(Step::Blocked) };
        if self.batch.is_none() && self.links.iter().any(|l| l.node != node && !l.answers.expect.is_empty()) {
            return Ok(Step::Blocked);
        }
        let unit = if self.batch.is_some() { self.batch_unit } else { self.new_unit(UnitEffects::default()) };
        let link = &mut self.links[li];
        link.out.extend_from_slice(msg);
        link.push(Expect::Ready, false, unit);
        link.unsynced = false;
        self.batch = None;
        self.last_node = Some(node);
        Ok(Step::Done)
    }

    async fn on_function_call(&mut self, msg: &Bytes) -> Result<Step, End> {
        let c = crate::router::classify("SELECT pg_catalog.nextval(NULL)");
        if let Some(step) = self.hold_for_primary(&Kind::Write, true).await? {
            return Ok(step);
        }
        let Some(primary) = self.view.primary() else { return self.no_node(&Kind::Write, true) };
        let reason = "function call message".to_string();
        match self.forward_query(msg, primary, &c, &Kind::Write, "", &reason, "function_call", StatementClass::Other).await? {
            Ok(step) => Ok(step),
            Err((e, _)) => self.fail_request(e, true),
        }
    }

    /// The node for an extended-protocol message: the open batch's, unless the batch
    /// runs on a standby and this needs the primary (then the batch is ended there
    /// first); else a new decision. `Err(step)`: the caller returns it.
    async fn batch_node(&mut self, c: &Classification, kind: &Kind, reason: &Reason) -> Result<Result<usize, Step>, End> {
        let decision = self.route.decide(c, kind, &reason.to_string(), &self.shared.routing, false);
        if let Some(b) = self.batch {
            let primary = self.view.primary();
            let needs_primary = matches!(decision.dest, Dest::Primary);
            if needs_primary && Some(b) != primary && primary.is_some() {
                return Ok(Err(self.end_batch_early()));
            }
            return Ok(Ok(b));
        }
        if decision.dest == Dest::Primary {
            if let Some(step) = self.hold_for_primary(kind, false).await? {
                return Ok(Err(step));
            }
        }
        match self.resolve(&decision.dest, kind, &decision.reason) {
            Some((n, _)) => Ok(Ok(n)),
            None => Ok(Err(self.no_node(kind, false)?)),
        }
    }

    /// The node and ready connection for an extended-protocol message (see
    /// `batch_node`), with the batch begun there. `Err(step)`: the caller returns it.
    async fn batch_link(&mut self, c: &Classification, kind: &Kind, reason: &Reason) -> Result<Result<(usize, usize), Step>, End> {
        for attempt in 0..2 {
            let fresh = self.batch.is_none();
            let node = match self.batch_node(c, kind, reason).await? {
                Ok(n) => n,
                Err(step) => return Ok(Err(step)),
            };
            match self.ready_link(node, fresh).await? {
                Ready::Link(li) => {
                    self.start_batch(node);
                    return Ok(Ok((node, li)));
                }
                Ready::Blocked => return Ok(Err(Step::Blocked)),
                Ready::Failed(e, node_down) => {
                    // The primary cannot be reached and nothing of this batch was sent:
                    // wait for the failover, then start the batch on the new primary.
                    let primary = self.view.primary() == Some(node);
                    if fresh && node_down && primary && !self.route.in_tx() && attempt == 0 && self.hold_while_primary_is(node).await? {
                        continue;
                    }
                    return Ok(Err(self.fail_request(e, false)?));
                }
            }
        }
        Ok(Err(Step::Blocked))
    }

    /// Ends the open batch on its node with an injected Sync, so the rest of the batch
    /// can go elsewhere once that part is answered.
    fn end_batch_early(&mut self) -> Step {
        if let Some(b) = self.batch.take() {
            if let Some(li) = self.link_index(b) {
                let link = &mut self.links[li];
                frontend::write_sync(&mut link.out);
                link.push(Expect::Ready, true, 0);
                link.unsynced = false;
            }
        }
        Step::Blocked
    }

    fn start_batch(&mut self, node: usize) {
        if self.batch.is_none() {
            self.batch = Some(node);
            self.batch_unit = self.next_unit;
            self.next_unit += 1;
            self.unit_began(self.batch_unit);
        }
    }

    /// Notes when a client request began (bounded: a client that pipelines thousands of
    /// requests only loses their latency samples).
    fn unit_began(&mut self, unit: u64) {
        if self.unit_started.len() < 4096 {
            self.unit_started.push_back((unit, std::time::Instant::now()));
        }
    }

    /// Records the latency of a request answered with ReadyForQuery.
    fn unit_ended(&mut self, unit: u64) {
        while let Some(&(u, at)) = self.unit_started.front() {
            if u > unit {
                break;
            }
            self.unit_started.pop_front();
            if u == unit {
                self.shared.metrics.query_duration.record(at.elapsed());
            }
        }
    }

    /// Prepares statement `name` on connection `li` when it is not there in its
    /// current version (injecting the client's original Parse).
    fn ensure_prepared(&mut self, li: usize, name: &str) {
        let Some(stmt) = self.stmts.get(name) else { return };
        let unit = self.batch_unit;
        let link = &mut self.links[li];
        match link.prepared.get(name) {
            Some(g) if *g == stmt.generation => return,
            Some(_) if !name.is_empty() => {
                frontend::write_close(&mut link.out, b'S', name);
                link.push(Expect::Close, true, unit);
            }
            _ => {}
        }
        link.out.extend_from_slice(&stmt.parse);
        link.push(Expect::Parse, true, unit);
        link.unsynced = true;
        link.prepared.insert(name.to_string(), stmt.generation);
    }

    // ---- connections -----------------------------------------------------------------

    fn link_index(&self, node: usize) -> Option<usize> {
        self.links.iter().position(|l| l.node == node && !l.dead)
    }

    fn all_quiet(&self) -> bool {
        self.links.iter().all(|l| l.answers.expect.is_empty() && l.remaining == 0) && self.batch.is_none()
    }

    /// Makes the connection to `node` ready for the next statement: opened, settings
    /// replayed, transaction begun. `fresh`: the statement starts a new unit (other
    /// connections must have answered everything first).
    async fn ready_link(&mut self, node: usize, fresh: bool) -> Result<Ready, End> {
        if fresh && self.links.iter().any(|l| l.node != node && (!l.answers.expect.is_empty() || l.remaining > 0)) {
            return Ok(Ready::Blocked);
        }
        let li = match self.link_index(node) {
            Some(li) => li,
            None => match self.open_link(node).await {
                Ok(li) => li,
                Err((e, node_down)) => {
                    if node_down {
                        // Reads try another node.
                        self.node_failed(node);
                        if self.read_node == Some(node) {
                            self.read_node = None;
                        }
                    }
                    return Ok(Ready::Failed(e, node_down));
                }
            },
        };
        if self.batch == Some(node) {
            // The open batch continues on its connection, which was readied when it began.
            return Ok(Ready::Link(li));
        }
        let in_tx = self.route.in_tx();
        let needs_work = {
            let l = &self.links[li];
            let tx_log = self.route.tx.as_ref().map_or(0, |t| t.log.len());
            let stale_tx = !l.in_tx && l.checkout.conn.tx_status != b'I';
            l.applied < self.log.seq || if in_tx { !l.in_tx || l.tx_applied < tx_log } else { stale_tx }
        };
        if !needs_work {
            return Ok(Ready::Link(li));
        }
        if !self.links[li].quiet() {
            return Ok(Ready::Blocked);
        }
        if let Err(e) = self.catch_up(li).await {
            tracing::info!(peer = %self.peer, node, error = %e, "server connection failed while being readied");
            self.links[li].dead = true;
            self.link_failed(li)?;
            return Ok(Ready::Failed(PgError::new(Severity::Error, sqlstate::CONNECTION_FAILURE, e.to_string()), true));
        }
        Ok(Ready::Link(li))
    }

    /// Opens a connection to `node`; the error says whether the node looks down.
    async fn open_link(&mut self, node: usize) -> Result<usize, (PgError, bool)> {
        let addr = self.view.nodes.get(node).map(|n| n.addr).ok_or_else(|| {
            (PgError::new(Severity::Error, sqlstate::CONNECTION_FAILURE, "backend no longer configured"), false)
        })?;
        let key = PoolKey { backend: node, ..self.base_key.clone() };
        let mut checkout = match self.shared.pools.checkout(&key, addr, &self.credential).await {
            Ok(c) => c,
            Err(CheckoutError::Timeout(wait)) => {
                return Err((PgError::new(Severity::Error, sqlstate::TOO_MANY_CONNECTIONS, "sorry, too many clients already").with_detail(
                    format!("All server connections of the pool for backend \"{}\" (pool.size) are in use and none became free within {wait:?} (pool.checkout_timeout).", self.node_name(node)),
                ), false))
            }
            Err(CheckoutError::Connect(ConnectError::Server { error, .. })) => {
                // "the database system is starting up / shutting down": that node is out.
                let node_down = error.code.starts_with("57P");
                return Err((PgError::new(Severity::Error, sqlstate::CONNECTION_FAILURE, format!(
                    "backend \"{}\" refused the connection: {}",
                    self.node_name(node),
                    error.message
                )), node_down))
            }
            Err(CheckoutError::Connect(e)) => {
                let node_down = matches!(e, ConnectError::Io { .. } | ConnectError::Timeout(_));
                return Err((PgError::new(Severity::Error, sqlstate::CONNECTION_FAILURE, format!("backend \"{}\": {e}", self.node_name(node))), node_down))
            }
        };
        if let Err(e) = checkout.conn.ensure_setting("application_name", &self.app_name).await {
            return Err((PgError::new(Severity::Error, sqlstate::CONNECTION_FAILURE, e.to_string()), true));
        }
        self.cancel.add_server(node, checkout.conn.pid);
        if let Some(r) = &checkout.conn.record {
            r.lend_to(self.cancel.pid, self.started);
        }
        tracing::debug!(peer = %self.peer, node, server_pid = checkout.conn.pid, "session uses a new server connection");
        self.links.push(Link::new(node, checkout, self.log.reset_seq));
        Ok(self.links.len() - 1)
    }

    /// Replays settings and the open transaction onto connection `li` (which is quiet).
    async fn catch_up(&mut self, li: usize) -> Result<(), ConnectError> {
        let link = &mut self.links[li];
        let conn = &mut link.checkout.conn;
        if !link.in_tx && conn.tx_status != b'I' {
            run_tolerant(conn, "ROLLBACK").await?;
        }
        if link.applied < self.log.reset_seq {
            run_tolerant(conn, "DISCARD ALL").await?;
            link.prepared.clear();
            link.applied = self.log.reset_seq;
        }
        for (seq, e) in &self.log.entries {
            if *seq <= link.applied {
                continue;
            }
            run_tolerant(conn, &e.sql).await?;
            match &e.effect {
                LogEffect::Deallocate(Some(name)) => {
                    link.prepared.remove(name);
                }
                LogEffect::Deallocate(None) | LogEffect::DiscardAll => link.prepared.clear(),
                LogEffect::Plain => {}
            }
        }
        link.applied = self.log.seq;
        if let Some(tx) = &self.route.tx {
            if !link.in_tx {
                let standby = self.view.nodes.get(link.node).is_some_and(|n| n.role == Role::Standby);
                run_tolerant(conn, if standby { &tx.begin_standby } else { &tx.begin }).await?;
                link.in_tx = true;
                link.tx_applied = 0;
            }
            for sql in &tx.log[link.tx_applied.min(tx.log.len())..] {
                run_tolerant(conn, sql).await?;
            }
            link.tx_applied = tx.log.len();
        }
        Ok(())
    }

    fn set_cancel_target(&self, li: usize) {
        let link = &self.links[li];
        self.cancel.set_target(Some(CancelTarget {
            backend: link.node,
            addr: link.checkout.conn.addr,
            pid: link.checkout.conn.pid,
            secret: link.checkout.conn.secret,
        }));
    }

    fn node_name(&self, node: usize) -> String {
        self.view.nodes.get(node).map_or_else(|| format!("#{node}"), |n| n.name.clone())
    }

    fn record(&self, node: usize, label: &'static str, class: StatementClass) {
        self.shared.stats.record(node, label, class);
    }

    /// The explain NOTICE, placed before the unit's first answer.
    fn explain(&mut self, li: usize, unit: u64, reason: &str) {
        if !self.route.explain {
            return;
        }
        let node = self.links[li].node;
        let role = match self.view.nodes.get(node).map(|n| n.role) {
            Some(Role::Primary) => "primary",
            Some(Role::Standby) => "standby",
            _ => "unknown role",
        };
        let mut out = BytesMut::new();
        PgError::new(Severity::Notice, "00000", format!("pgvigil: {} ({role}): {reason}", self.node_name(node))).write(&mut out);
        if self.links[li].answers.expect.is_empty() && !self.client_mid_message() && self.links.iter().all(|l| l.answers.expect.is_empty()) {
            self.cout.extend_from_slice(&out);
        } else if !self.notices.iter().any(|(n, u, _)| *n == node && *u == unit) {
            self.notices.push((node, unit, out.freeze()));
        }
    }

    /// The answer to a SHOW command, as of now.
    fn show_table(&self, which: Show) -> super::show::Table {
        super::show::table(self.shared, which, self.read_node)
    }

    // ---- statements pgvigil answers itself, extended protocol -------------------------

    /// Before pgvigil answers an extended-protocol message itself: the open batch is
    /// ended (a Sync injected) and every server has answered. `Some(step)`: return it.
    fn local_turn(&mut self) -> Option<Step> {
        if self.batch.is_some() {
            return Some(self.end_batch_early());
        }
        (!self.all_quiet()).then_some(Step::Blocked)
    }

    fn local_parse(&mut self, name: String, command: Command) -> Result<Step, End> {
        if let Some(step) = self.local_turn() {
            return Ok(step);
        }
        let result = match command {
            Command::Show(_) if !name.is_empty() && self.stmts.contains_key(&name) => Err(super::local::statement_exists(&name)),
            Command::Show(which) => self.local.parse(&mut self.cout, &name, which),
            Command::UnknownParameter(param) => Err(super::show::unknown_parameter(&param)),
        };
        match result {
            Ok(()) => {
                // The unnamed statement is replaced.
                self.stmts.remove(&name);
                Ok(Step::Done)
            }
            Err(e) => self.fail_request(e, false),
        }
    }

    fn local_bind(&mut self, msg: &Bytes, which: Show) -> Result<Step, End> {
        let bind = Bind::parse(&msg[5..]).map_err(End::Violation)?;
        if let Some(step) = self.local_turn() {
            return Ok(step);
        }
        self.portals.remove(&bind.portal);
        let table = self.show_table(which);
        match self.local.bind(&mut self.cout, bind, table) {
            Ok(()) => Ok(Step::Done),
            Err(e) => self.fail_request(e, false),
        }
    }

    fn local_execute(&mut self, portal: &str, max_rows: i32) -> Step {
        if let Some(step) = self.local_turn() {
            return step;
        }
        self.local.execute(&mut self.cout, portal, max_rows);
        Step::Done
    }
}

enum Ready {
    Link(usize),
    Blocked,
    /// No connection: the error for the client, and whether the node looks down (so
    /// a read may try another).
    Failed(PgError, bool),
}

/// Runs a statement pgvigil replays; a server error is logged, not fatal.
async fn run_tolerant(conn: &mut crate::pool::ServerConn, sql: &str) -> Result<(), ConnectError> {
    match conn.simple_query(sql).await {
        Ok(()) => Ok(()),
        Err(ConnectError::Server { error, .. }) => {
            tracing::debug!(error = %error.message, "replayed statement failed");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn log_entry(c: &Classification, sql: &str) -> LogEntry {
    let effect = if let Some(d) = &c.deallocates {
        LogEffect::Deallocate(d.clone())
    } else if is_discard_all(sql) {
        LogEffect::DiscardAll
    } else {
        LogEffect::Plain
    };
    let key = c.setting.as_ref().map(|(name, _)| format!("set:{name}"));
    LogEntry { sql: sql.to_string(), key, effect }
}

fn mentions_pgvigil(sql: &str) -> bool {
    sql.as_bytes().windows(8).any(|w| w.eq_ignore_ascii_case(b"pgvigil."))
}

fn is_discard_all(sql: &str) -> bool {
    let words: Vec<String> = sql.trim().trim_end_matches(';').split_whitespace().map(str::to_ascii_lowercase).collect();
    words == ["discard", "all"]
}

fn in_failed_tx() -> PgError {
    PgError::new(
        Severity::Error,
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

fn server_lost(name: &str) -> PgError {
    PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("connection to backend \"{name}\" was lost in the middle of a result"))
        .with_hint("Reconnect to continue.")
}

