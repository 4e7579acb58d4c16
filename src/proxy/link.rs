//! One server connection held by a session, and what it owes the session.
//!
//! Every message pgvigil sends a server that will be answered is queued in `expect`, in
//! order, so each response can be matched to its request: responses to messages pgvigil
//! injected itself (a Parse that prepares a statement lazily, a Close of a stale one, a
//! Sync that ends a batch early) are swallowed; the rest go to the client. After an
//! ErrorResponse in an extended-protocol batch the server skips to the next Sync, and so
//! does the queue.

use std::collections::{HashMap, VecDeque};

use bytes::BytesMut;

use super::stats::ErrorSeverity;
use crate::pool::Checkout;
use crate::protocol::frame::be;

/// A request whose answer is still due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    /// Sync, simple Query and FunctionCall: answered by ReadyForQuery.
    Ready,
    /// Flush: no answer of its own (never queued).
    Flush,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub what: Expect,
    /// Sent by pgvigil, not the client: its answer is not forwarded.
    pub injected: bool,
    /// For `Ready`: index into the session's unit table (effects applied at completion).
    pub unit: u64,
}

/// What the response walker tells the session about a message it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A ReadyForQuery answering a client request: (unit id, transaction status, an
    /// error was seen in the unit).
    UnitDone { unit: u64, status: u8, failed: bool },
    /// An injected Sync was answered: (transaction status, an error was seen before it).
    InjectedSyncDone { failed: bool },
    /// The server said FATAL or PANIC.
    Fatal,
}

pub(super) struct Link {
    pub node: usize,
    pub checkout: Checkout,
    /// Bytes queued for the server.
    pub out: BytesMut,
    pub answers: Answers,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// Bytes of the message being walked that have not arrived yet (a message may be
    /// forwarded in pieces).
    pub remaining: usize,
    /// The message being walked is swallowed rather than forwarded.
    pub swallowing: bool,
    /// Session-log sequence number applied on this connection.
    pub applied: u64,
    /// This connection takes part in the client's open transaction.
    pub in_tx: bool,
    /// Number of the transaction log's entries applied in the current transaction.
    pub tx_applied: usize,
    /// Protocol-level prepared statements present here: name → generation.
    pub prepared: HashMap<String, u64>,
    pub dead: bool,
    /// The server's FATAL was passed on as an ERROR: the client has its error already.
    pub fatal_forwarded: bool,
}

impl Link {
    pub fn new(node: usize, checkout: Checkout, applied: u64) -> Self {
        Self {
            node,
            checkout,
            out: BytesMut::with_capacity(1024),
            answers: Answers::default(),
            unsynced: false,
            remaining: 0,
            swallowing: false,
            applied,
            in_tx: false,
            tx_applied: 0,
            prepared: HashMap::new(),
            dead: false,
            fatal_forwarded: false,
        }
    }

    /// Nothing sent is unanswered and no batch is open: the connection can take a
    /// statement pgvigil runs itself.
    pub fn quiet(&self) -> bool {
        self.answers.expect.is_empty() && !self.unsynced && self.out.is_empty() && self.remaining == 0
    }

    /// Client requests (Sync, Query, FunctionCall) still unanswered.
    pub fn pending_units(&self) -> impl Iterator<Item = u64> + '_ {
        self.answers.expect.iter().filter(|p| p.what == Expect::Ready && !p.injected).map(|p| p.unit)
    }

    pub fn push(&mut self, what: Expect, injected: bool, unit: u64) {
        self.answers.expect.push_back(Pending { what, injected, unit });
        if let Some(r) = &self.checkout.conn.record {
            r.executing();
        }
    }

    /// Decides about a server message whose header (and, for the tags that need it,
    /// whole body) is in `msg`: returns whether to forward it, and an event.
    pub fn on_message(&mut self, tag: u8, msg: &[u8]) -> (bool, Option<Event>) {
        let decided = self.answers.on_message(tag, msg);
        if tag == be::READY_FOR_QUERY {
            let status = ready_status(msg);
            self.checkout.conn.tx_status = status;
            if let Some(r) = self.checkout.conn.record.as_ref().filter(|_| self.answers.expect.is_empty()) {
                r.ready(status);
            }
        }
        decided
    }
}

/// What a server connection owes the session, matched against the answers as they
/// arrive: the part of a [`Link`] that reads server messages, without the connection.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    pub expect: VecDeque<Pending>,
    /// Describe of a statement: its ParameterDescription has been seen.
    pub described_params: bool,
    /// An ErrorResponse was seen since the last ReadyForQuery.
    pub error_in_unit: bool,
    /// The server is in COPY IN (or BOTH) mode for the client.
    pub copy_in: bool,
}

/// The transaction status of a ReadyForQuery (`msg` from its tag on); idle when absent.
fn ready_status(msg: &[u8]) -> u8 {
    msg.get(5).copied().unwrap_or(b'I')
}

impl Answers {
    /// See [`Link::on_message`].
    pub fn on_message(&mut self, tag: u8, msg: &[u8]) -> (bool, Option<Event>) {
        match tag {
            be::READY_FOR_QUERY => {
                let status = ready_status(msg);
                // Entries before the Ready are requests the server skipped after an error.
                let mut done = None;
                while let Some(p) = self.expect.pop_front() {
                    if p.what == Expect::Ready {
                        done = Some(p);
                        break;
                    }
                }
                let Some(p) = done else { return (true, None) };
                let failed = std::mem::take(&mut self.error_in_unit);
                self.copy_in = false;
                if p.injected {
                    return (false, Some(Event::InjectedSyncDone { failed }));
                }
                (true, Some(Event::UnitDone { unit: p.unit, status, failed }))
            }
            be::PARSE_COMPLETE => self.complete(Expect::Parse),
            be::BIND_COMPLETE => self.complete(Expect::Bind),
            be::CLOSE_COMPLETE => self.complete(Expect::Close),
            be::PARAMETER_DESCRIPTION => {
                self.described_params = true;
                (true, None)
            }
            be::ROW_DESCRIPTION | be::NO_DATA => {
                if matches!(self.front(), Some(Expect::DescribeStatement | Expect::DescribePortal)) {
                    self.described_params = false;
                    return self.complete_any();
                }
                (true, None)
            }
            be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED => {
                self.copy_in = false;
                if self.front() == Some(Expect::Execute) {
                    return self.complete_any();
                }
                (true, None)
            }
            be::COPY_IN_RESPONSE | be::COPY_BOTH_RESPONSE => {
                self.copy_in = true;
                (true, None)
            }
            be::ERROR_RESPONSE => {
                self.error_in_unit = true;
                self.copy_in = false;
                let severity = msg.get(5..12).unwrap_or_default();
                let fatal = severity == b"SFATAL\0" || severity == b"SPANIC\0";
                if self.expect.is_empty() {
                    // Not an answer to anything: the server is going away.
                    return (false, Some(Event::Fatal));
                }
                // Extended protocol: the server skips everything up to the next Sync.
                while self.front().is_some_and(|w| w != Expect::Ready) {
                    self.expect.pop_front();
                }
                (true, fatal.then_some(Event::Fatal))
            }
            _ => (true, None),
        }
    }

    fn front(&self) -> Option<Expect> {
        self.expect.front().map(|p| p.what)
    }

    fn complete(&mut self, what: Expect) -> (bool, Option<Event>) {
        if self.front() == Some(what) {
            return self.complete_any();
        }
        (true, None)
    }

    fn complete_any(&mut self) -> (bool, Option<Event>) {
        match self.expect.pop_front() {
            Some(p) => (!p.injected, None),
            None => (true, None),
        }
    }
}

/// Bytes of a server message that must be buffered before `on_message` can decide.
pub(crate) fn needed(tag: u8, total: usize) -> usize {
    match tag {
        be::READY_FOR_QUERY | be::PARSE_COMPLETE | be::BIND_COMPLETE | be::CLOSE_COMPLETE => total,
        be::NOTIFICATION_RESPONSE => 9,
        // Whole, so a FATAL can be turned into an ERROR in place.
        be::ERROR_RESPONSE if total <= 64 * 1024 => total,
        be::ERROR_RESPONSE => 12,
        be::PARAMETER_STATUS if total <= 64 * 1024 => total,
        _ => 5,
    }
    .min(total)
}

/// The severity of an ErrorResponse (`msg` from its tag on, possibly cut short): its
/// untranslated `V` field, else its `S` field; ERROR when neither is readable (an
/// ErrorResponse is never less).
pub(crate) fn error_severity(msg: &[u8]) -> ErrorSeverity {
    let mut from_s = None;
    let mut i = 5;
    while i < msg.len() && msg[i] != 0 {
        let field = msg[i];
        let start = i + 1;
        let Some(len) = msg[start..].iter().position(|&c| c == 0) else { break };
        let severity = match &msg[start..start + len] {
            b"PANIC" => Some(ErrorSeverity::Panic),
            b"FATAL" => Some(ErrorSeverity::Fatal),
            b"ERROR" => Some(ErrorSeverity::Error),
            _ => None,
        };
        match field {
            b'V' => return severity.unwrap_or(ErrorSeverity::Error),
            b'S' => from_s = severity,
            _ => {}
        }
        i = start + len + 1;
    }
    from_s.unwrap_or(ErrorSeverity::Error)
}

/// Rewrites the severity of an ErrorResponse (whole message in `msg`) from FATAL or
/// PANIC to ERROR, in place: the session outlives its server connection. Returns
/// whether it did.
pub(crate) fn demote_fatal(msg: &mut [u8]) -> bool {
    let mut i = 5;
    let mut done = false;
    while i < msg.len() && msg[i] != 0 {
        let field = msg[i];
        let start = i + 1;
        let Some(len) = msg[start..].iter().position(|&c| c == 0) else { return false };
        if matches!(field, b'S' | b'V') && matches!(&msg[start..start + len], b"FATAL" | b"PANIC") {
            msg[start..start + len].copy_from_slice(b"ERROR");
            done = true;
        }
        i = start + len + 1;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::{demote_fatal, error_severity};
    use crate::proxy::stats::ErrorSeverity;
    use crate::protocol::backend::{parse_error_fields, PgError};
    use bytes::BytesMut;

    #[test]
    fn fatal_becomes_error_with_the_same_fields() {
        let mut out = BytesMut::new();
        PgError::shutting_down().with_hint("h").write(&mut out);
        assert!(demote_fatal(&mut out));
        let e = parse_error_fields(&out[5..]).unwrap();
        assert_eq!((e.severity.as_str(), e.code.as_str()), ("ERROR", "57P01"));
        assert_eq!(e.message, "terminating connection due to administrator command");
        let mut plain = BytesMut::new();
        PgError::new(crate::protocol::backend::Severity::Error, "42P01", "x").write(&mut plain);
        assert!(!demote_fatal(&mut plain));
        assert!(!demote_fatal(&mut [b'E', 0, 0, 0, 9, b'S', b'F', b'A']));
    }

    #[test]
    fn error_severity_from_v_then_s() {
        let mut out = BytesMut::new();
        PgError::shutting_down().write(&mut out);
        assert_eq!(error_severity(&out), ErrorSeverity::Fatal);
        let mut out = BytesMut::new();
        PgError::new(crate::protocol::backend::Severity::Error, "42P01", "x").write(&mut out);
        assert_eq!(error_severity(&out), ErrorSeverity::Error);
        // A translated S with the untranslated V after it.
        let body = b"SPANIK\0VPANIC\0CXX000\0Mboom\0\0";
        let msg = [&b"E\0\0\0\0"[..], body].concat();
        assert_eq!(error_severity(&msg), ErrorSeverity::Panic);
        // Cut short after S (a huge message), or S only (servers before 9.6).
        assert_eq!(error_severity(b"E\0\x01\0\0SFATAL\0"), ErrorSeverity::Fatal);
        assert_eq!(error_severity(b"E\0\0\0\x0fSPANIC\0Mx\0\0"), ErrorSeverity::Panic);
        // Unreadable: at least an error.
        assert_eq!(error_severity(b"E\0\0\0\x0bSFEHL"), ErrorSeverity::Error);
        assert_eq!(error_severity(b"E\0"), ErrorSeverity::Error);
    }
}
