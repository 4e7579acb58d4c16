//! A session's routing state and decisions, without I/O: which node a statement goes
//! to and why, given its classification, the session's transaction and history, and the
//! configuration. The engine ([`super::engine`]) carries the decisions out.

use std::collections::HashSet;

use crate::config::{AfterWrite, RoutingConfig};
use crate::router::balance::ReadTarget;
use crate::router::{serializable_needs_primary, Classification, Kind, RelationRef, TxControl};

/// `SET pgvigil.route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOverride {
    Auto,
    Primary,
    Standby,
}

/// Where a statement goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// The primary.
    Primary,
    /// A node chosen for reads (the session's read node, or a new pick).
    Read,
    /// This node (the transaction's read node, or a pinned transaction's node).
    Node(usize),
    /// The connection the session used last (session state, statements that belong
    /// with the previous one); a read node when it has none.
    Last,
    /// Every node of the open transaction; the client sees the answer of the primary's
    /// (or the last used) connection.
    AllInTx,
    /// Answered by pgvigil itself.
    Local(Local),
}

/// Statements pgvigil answers without a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// BEGIN outside a transaction: the transaction starts on each node when it is
    /// first used there.
    Begin,
    /// COMMIT or ROLLBACK of a transaction that never reached a server.
    EndEmpty { tag: &'static str },
}

/// A decision and its reason, as the explain NOTICE states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: Dest,
    pub reason: String,
    /// Metrics label of the rule that decided.
    pub label: &'static str,
}

fn route(dest: Dest, reason: impl Into<String>, label: &'static str) -> Route {
    Route { dest, reason: reason.into(), label }
}

/// What the session knows about its open transaction.
#[derive(Debug, Default, Clone)]
pub struct Tx {
    /// Statement that starts it on a node joining it ("BEGIN ISOLATION LEVEL …").
    pub begin: String,
    /// The same without READ WRITE, which a standby refuses.
    pub begin_standby: String,
    /// Every statement runs on this node (serializable: the primary; or the node a
    /// transaction began on implicitly).
    pub pinned: Option<usize>,
    pub pinned_reason: &'static str,
    pub serializable_primary: bool,
    pub wrote: bool,
    /// Tables written (dml_adaptive).
    pub written: HashSet<String>,
    pub read_node: Option<usize>,
    /// SET, SET LOCAL, SAVEPOINT… in order: replayed on a node that joins later.
    pub log: Vec<String>,
    /// Session-level settings made in the transaction: kept when it commits.
    pub session_entries: Vec<String>,
    /// A statement failed: only ROLLBACK (or COMMIT, which rolls back) is accepted.
    pub failed: bool,
    /// A node the transaction used was lost: only its end is accepted.
    pub broken: bool,
    /// Why, for the transaction's next statement (once).
    pub broken_error: Option<crate::protocol::backend::PgError>,
}

/// A session's routing state.
pub struct SessionRoute {
    pub tx: Option<Tx>,
    pub session_wrote: bool,
    /// A transaction of this session wrote (trans_transaction).
    pub wrote_in_explicit_tx: bool,
    pub temp_tables: HashSet<String>,
    pub route: RouteOverride,
    pub explain: bool,
    /// Where reads go by redirect rules.
    pub redirect: ReadTarget,
    /// `default_transaction_isolation` is serializable.
    pub default_serializable: bool,
}

impl SessionRoute {
    pub fn new(redirect: ReadTarget) -> Self {
        Self {
            tx: None,
            session_wrote: false,
            wrote_in_explicit_tx: false,
            temp_tables: HashSet::new(),
            route: RouteOverride::Auto,
            explain: false,
            redirect,
            default_serializable: false,
        }
    }

    pub fn in_tx(&self) -> bool {
        self.tx.is_some()
    }

    /// Where reads may go, by `SET pgvigil.route` and the redirect rules.
    pub fn read_target(&self) -> ReadTarget {
        match self.route {
            RouteOverride::Primary => ReadTarget::Primary,
            RouteOverride::Standby => ReadTarget::Standby,
            RouteOverride::Auto => self.redirect,
        }
    }

    /// Decides where a statement goes. `kind`/`reason` are the classification after the
    /// function check; `simple` is true for a simple-protocol Query (which pgvigil can
    /// answer itself). Has no effect on the state: see [`SessionRoute::sent`].
    pub fn decide(&self, c: &Classification, kind: &Kind, reason: &str, cfg: &RoutingConfig, simple: bool) -> Route {
        match kind {
            Kind::Unparsable => route(Dest::Primary, reason, "parse_error"),
            Kind::Write => route(Dest::Primary, reason, "write"),
            Kind::Read => self.decide_read(c, reason, cfg),
            Kind::SessionState => route(Dest::Last, reason, "session_state"),
            Kind::TxControl(tx) => self.decide_tx(c, tx, reason, simple),
        }
    }

    fn decide_read(&self, c: &Classification, reason: &str, cfg: &RoutingConfig) -> Route {
        if !cfg.load_balance {
            return route(Dest::Primary, format!("{reason}; load balancing is off"), "load_balance_off");
        }
        if let Some(t) = self.temp_table_in(&c.relations) {
            return route(Dest::Primary, format!("{reason}; temporary table {t}"), "temp_table");
        }
        if self.route == RouteOverride::Primary {
            return route(Dest::Primary, format!("{reason}; pgvigil.route = primary"), "route_setting");
        }
        if let Some(tx) = &self.tx {
            if let Some(n) = tx.pinned {
                return route(Dest::Node(n), format!("{reason}; {}", tx.pinned_reason), "tx_pinned");
            }
            match cfg.after_write {
                AfterWrite::Transaction | AfterWrite::TransTransaction | AfterWrite::Session if tx.wrote => {
                    return route(Dest::Primary, format!("{reason}; after write in transaction"), "after_write");
                }
                AfterWrite::DmlAdaptive => {
                    if let Some(t) = c.relations.iter().find(|r| tx.written.contains(&r.name)) {
                        return route(
                            Dest::Primary,
                            format!("{reason}; table {} written in this transaction", t.name),
                            "after_write",
                        );
                    }
                }
                _ => {}
            }
            if cfg.after_write == AfterWrite::TransTransaction && self.wrote_in_explicit_tx {
                return route(
                    Dest::Primary,
                    format!("{reason}; an earlier transaction of this session wrote (trans_transaction)"),
                    "after_write",
                );
            }
            if cfg.after_write == AfterWrite::Session && self.session_wrote {
                return route(Dest::Primary, format!("{reason}; after write in session"), "after_write");
            }
            if let Some(n) = tx.read_node {
                return route(Dest::Node(n), reason, "read");
            }
            return route(Dest::Read, reason, "read");
        }
        if cfg.after_write == AfterWrite::Session && self.session_wrote {
            return route(Dest::Primary, format!("{reason}; after write in session"), "after_write");
        }
        route(Dest::Read, reason, "read")
    }

    fn decide_tx(&self, c: &Classification, tx: &TxControl, reason: &str, simple: bool) -> Route {
        let single = simple && c.statements == 1;
        match tx {
            TxControl::Begin { .. } if self.tx.is_none() && single => route(Dest::Local(Local::Begin), reason, "tx_control"),
            TxControl::Begin { .. } if self.tx.is_none() => {
                if serializable_needs_primary(tx) || self.default_serializable {
                    route(Dest::Primary, format!("{reason}; serializable"), "tx_control")
                } else {
                    route(Dest::Last, reason, "tx_control")
                }
            }
            TxControl::Begin { .. } => route(Dest::Last, reason, "tx_control"),
            TxControl::Commit | TxControl::Rollback => match &self.tx {
                Some(_) => route(Dest::AllInTx, reason, "tx_control"),
                None => route(Dest::Last, reason, "tx_control"),
            },
            // SET TRANSACTION ISOLATION LEVEL SERIALIZABLE before anything ran on a
            // standby: the transaction belongs on the primary.
            TxControl::SetTransaction { .. }
                if serializable_needs_primary(tx) && self.tx.as_ref().is_some_and(|t| t.read_node.is_none()) =>
            {
                route(Dest::Primary, format!("{reason}; serializable"), "tx_control")
            }
            TxControl::Savepoint | TxControl::Release | TxControl::RollbackToSavepoint | TxControl::SetTransaction { .. } => {
                match &self.tx {
                    Some(_) => route(Dest::AllInTx, reason, "tx_control"),
                    None => route(Dest::Last, reason, "tx_control"),
                }
            }
            TxControl::PrepareTransaction | TxControl::CommitPrepared | TxControl::RollbackPrepared => {
                route(Dest::Primary, reason, "tx_control")
            }
            TxControl::SetSessionCharacteristics { .. } => route(Dest::Last, reason, "session_state"),
        }
    }

    fn temp_table_in(&self, relations: &[RelationRef]) -> Option<String> {
        relations.iter().find_map(|r| {
            let temp = r.schema.as_deref() == Some("pg_temp")
                || (r.schema.is_none() && self.temp_tables.contains(&r.name));
            temp.then(|| r.name.clone())
        })
    }

    /// Records the effects of sending a statement (optimistically: the server's
    /// ReadyForQuery corrects the transaction state later).
    pub fn sent(&mut self, c: &Classification, kind: &Kind, node: usize, primary: Option<usize>, sql: &str) {
        for t in &c.temp_tables_created {
            self.temp_tables.insert(t.name.clone());
        }
        match kind {
            Kind::Write | Kind::Unparsable => {
                self.session_wrote = true;
                if let Some(tx) = &mut self.tx {
                    tx.wrote = true;
                    tx.written.extend(c.relations.iter().map(|r| r.name.clone()));
                }
            }
            Kind::Read => {
                if let Some(tx) = &mut self.tx {
                    if Some(node) != primary && tx.read_node.is_none() {
                        tx.read_node = Some(node);
                    }
                }
            }
            Kind::TxControl(t) => self.sent_tx(t, node, primary, sql),
            Kind::SessionState => {}
        }
    }

    fn sent_tx(&mut self, t: &TxControl, node: usize, primary: Option<usize>, sql: &str) {
        match t {
            TxControl::Begin { read_only, isolation, deferrable } if self.tx.is_none() => {
                let serializable = serializable_needs_primary(t) || self.default_serializable;
                let mut begin_standby = String::from("BEGIN");
                if let Some(i) = isolation {
                    begin_standby.push_str(match i {
                        crate::router::Isolation::ReadUncommitted => " ISOLATION LEVEL READ UNCOMMITTED",
                        crate::router::Isolation::ReadCommitted => " ISOLATION LEVEL READ COMMITTED",
                        crate::router::Isolation::RepeatableRead => " ISOLATION LEVEL REPEATABLE READ",
                        crate::router::Isolation::Serializable => " ISOLATION LEVEL SERIALIZABLE",
                    });
                }
                if *read_only == Some(true) {
                    begin_standby.push_str(" READ ONLY");
                }
                match deferrable {
                    Some(true) => begin_standby.push_str(" DEFERRABLE"),
                    Some(false) => begin_standby.push_str(" NOT DEFERRABLE"),
                    None => {}
                }
                let mut tx = Tx { begin: sql.trim().trim_end_matches(';').to_string(), begin_standby, ..Tx::default() };
                if serializable {
                    tx.serializable_primary = true;
                    tx.pinned = primary;
                    tx.pinned_reason = "serializable transaction";
                }
                let _ = node;
                self.tx = Some(tx);
            }
            TxControl::Commit | TxControl::Rollback | TxControl::PrepareTransaction => {
                self.end_tx(matches!(t, TxControl::Commit));
            }
            TxControl::Savepoint | TxControl::Release | TxControl::RollbackToSavepoint | TxControl::SetTransaction { .. } => {
                if let Some(tx) = &mut self.tx {
                    tx.log.push(sql.to_string());
                    if serializable_needs_primary(t) {
                        tx.serializable_primary = true;
                        tx.pinned = primary;
                        tx.pinned_reason = "serializable transaction";
                    }
                }
            }
            TxControl::SetSessionCharacteristics { isolation: Some(i), .. } => {
                self.default_serializable = *i == crate::router::Isolation::Serializable;
            }
            _ => {}
        }
    }

    /// The transaction ended (COMMIT, ROLLBACK, or the server says so).
    pub fn end_tx(&mut self, committed: bool) -> Option<Tx> {
        let tx = self.tx.take()?;
        if committed && !tx.failed && tx.wrote {
            self.wrote_in_explicit_tx = true;
        }
        Some(tx)
    }

    /// Applies `SET pgvigil.<name> = value`; the error text names what is accepted.
    pub fn apply_setting(&mut self, name: &str, value: &str) -> Result<(), String> {
        let value = value.trim();
        match name {
            "route" => {
                self.route = match value {
                    "primary" => RouteOverride::Primary,
                    "standby" => RouteOverride::Standby,
                    "auto" | "default" => RouteOverride::Auto,
                    _ => return Err(format!("invalid value for parameter \"pgvigil.route\": \"{value}\"")),
                };
                Ok(())
            }
            "explain_routing" => {
                self.explain = match crate::router::parse_bool(value) {
                    Some(b) => b,
                    None if value == "default" => false,
                    None => {
                        return Err("parameter \"pgvigil.explain_routing\" requires a Boolean value".to_string());
                    }
                };
                Ok(())
            }
            _ => Err(format!("unrecognized configuration parameter \"pgvigil.{name}\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify;

    fn decide(s: &SessionRoute, sql: &str, cfg: &RoutingConfig) -> Route {
        let c = classify(sql);
        s.decide(&c, &c.kind, &c.reason.to_string(), cfg, true)
    }

    fn send(s: &mut SessionRoute, sql: &str, node: usize) {
        let c = classify(sql);
        s.sent(&c, &c.kind, node, Some(0), sql);
    }

    #[test]
    fn after_write_modes() {
        let mut cfg = RoutingConfig::default();
        let mut s = SessionRoute::new(ReadTarget::Any);
        assert_eq!(decide(&s, "SELECT 1", &cfg).dest, Dest::Read);
        assert_eq!(decide(&s, "BEGIN", &cfg).dest, Dest::Local(Local::Begin));
        send(&mut s, "BEGIN", 0);
        assert_eq!(decide(&s, "SELECT * FROM t", &cfg).dest, Dest::Read);
        send(&mut s, "SELECT * FROM t", 1);
        assert_eq!(decide(&s, "SELECT * FROM t", &cfg).dest, Dest::Node(1));
        send(&mut s, "INSERT INTO t VALUES (1)", 0);
        let r = decide(&s, "SELECT * FROM u", &cfg);
        assert_eq!(r.dest, Dest::Primary);
        assert!(r.reason.ends_with("after write in transaction"), "{}", r.reason);
        cfg.after_write = AfterWrite::DmlAdaptive;
        assert_eq!(decide(&s, "SELECT * FROM u", &cfg).dest, Dest::Node(1));
        assert_eq!(decide(&s, "SELECT * FROM t", &cfg).dest, Dest::Primary);
        cfg.after_write = AfterWrite::Off;
        assert_eq!(decide(&s, "SELECT * FROM t", &cfg).dest, Dest::Node(1));
        assert_eq!(decide(&s, "COMMIT", &cfg).dest, Dest::AllInTx);
        send(&mut s, "COMMIT", 0);
        assert!(!s.in_tx());
        cfg.after_write = AfterWrite::Transaction;
        assert_eq!(decide(&s, "SELECT 1", &cfg).dest, Dest::Read);
        cfg.after_write = AfterWrite::Session;
        assert_eq!(decide(&s, "SELECT 1", &cfg).dest, Dest::Primary);
        cfg.after_write = AfterWrite::TransTransaction;
        assert_eq!(decide(&s, "SELECT 1", &cfg).dest, Dest::Read);
        send(&mut s, "BEGIN", 0);
        assert_eq!(decide(&s, "SELECT 1", &cfg).dest, Dest::Primary);
    }

    #[test]
    fn serializable_temp_tables_and_overrides() {
        let cfg = RoutingConfig::default();
        let mut s = SessionRoute::new(ReadTarget::Any);
        assert_eq!(decide(&s, "BEGIN ISOLATION LEVEL SERIALIZABLE", &cfg).dest, Dest::Local(Local::Begin));
        send(&mut s, "BEGIN ISOLATION LEVEL SERIALIZABLE", 0);
        assert_eq!(decide(&s, "SELECT 1", &cfg).dest, Dest::Node(0));
        send(&mut s, "ROLLBACK", 0);
        assert!(!s.in_tx());
        s.temp_tables.insert("scratch".into());
        assert_eq!(decide(&s, "SELECT * FROM scratch", &cfg).dest, Dest::Primary);
        assert_eq!(decide(&s, "SELECT * FROM pg_temp.other", &cfg).dest, Dest::Primary);
        assert_eq!(decide(&s, "SELECT * FROM public.scratch", &cfg).dest, Dest::Read);
        assert!(s.apply_setting("route", "primary").is_ok());
        assert_eq!(decide(&s, "SELECT 1", &cfg).dest, Dest::Primary);
        assert!(s.apply_setting("route", "sideways").is_err());
        assert!(s.apply_setting("explain_routing", "on").is_ok());
        assert!(s.explain);
        let off = RoutingConfig { load_balance: false, ..RoutingConfig::default() };
        assert!(s.apply_setting("route", "auto").is_ok());
        assert_eq!(decide(&s, "SELECT 1", &off).dest, Dest::Primary);
    }
}

