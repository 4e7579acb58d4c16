//! Extended-protocol statements pgvigil answers itself (the SHOW commands of
//! [`super::show`]). A Parse of one makes a local statement; a Bind makes a local portal
//! holding the rows as of that moment; an Execute sends them, up to its row limit, then
//! PortalSuspended or CommandComplete. The session answers these only when no server
//! owes the client anything, so answers stay in order. I/O-free: answers are appended
//! to the client's buffer.

use std::collections::HashMap;

use bytes::BytesMut;

use super::show::{Show, Table};
use crate::protocol::backend::{self, PgError, Severity};
use crate::protocol::frame::be;
use crate::protocol::frontend;
use crate::protocol::sqlstate;

/// A Bind message, as far as a local statement needs it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Bind {
    pub portal: String,
    pub statement: String,
    pub params: usize,
    pub result_formats: Vec<i16>,
}

impl Bind {
    /// Parses a Bind body; parameter values are skipped.
    pub fn parse(body: &[u8]) -> Result<Bind, PgError> {
        let b = frontend::Bind::decode(body).map_err(|_| PgError::protocol_violation("invalid Bind message"))?;
        Ok(Bind {
            portal: b.portal.to_string(),
            statement: b.statement.to_string(),
            params: b.values.len(),
            result_formats: b.result_formats,
        })
    }
}

struct Portal {
    table: Table,
    formats: Vec<i16>,
    /// Rows already sent.
    sent: usize,
}

/// The session's local statements and portals.
#[derive(Default)]
pub(super) struct LocalStatements {
    statements: HashMap<String, Show>,
    portals: HashMap<String, Portal>,
}

impl LocalStatements {
    pub fn statement(&self, name: &str) -> Option<Show> {
        self.statements.get(name).copied()
    }

    pub fn has_portal(&self, name: &str) -> bool {
        self.portals.contains_key(name)
    }

    /// A Parse of `show` as statement `name`; a named statement must not exist yet (the
    /// caller checks its server-side statements too).
    pub fn parse(&mut self, out: &mut BytesMut, name: &str, show: Show) -> Result<(), PgError> {
        if !name.is_empty() && self.statements.contains_key(name) {
            return Err(statement_exists(name));
        }
        self.statements.insert(name.to_string(), show);
        backend::write_empty(out, be::PARSE_COMPLETE);
        Ok(())
    }

    /// A statement of this name was prepared on a server instead (the unnamed one).
    pub fn forget_statement(&mut self, name: &str) {
        self.statements.remove(name);
    }

    /// A portal of this name was bound on a server instead.
    pub fn forget_portal(&mut self, name: &str) {
        self.portals.remove(name);
    }

    /// A Bind of local statement `bind.statement`, whose rows are `table`.
    pub fn bind(&mut self, out: &mut BytesMut, bind: Bind, table: Table) -> Result<(), PgError> {
        if bind.params != 0 {
            return Err(PgError::protocol_violation(format!(
                "bind message supplies {} parameters, but prepared statement \"{}\" requires 0",
                bind.params, bind.statement
            )));
        }
        let n = bind.result_formats.len();
        if n > 1 && n != table.columns.len() {
            return Err(PgError::protocol_violation(format!(
                "bind message has {n} result formats but query has {} columns",
                table.columns.len()
            )));
        }
        if let Some(f) = bind.result_formats.iter().find(|f| !matches!(f, 0 | 1)) {
            return Err(PgError::new(Severity::Error, sqlstate::INVALID_PARAMETER_VALUE, format!("unsupported format code: {f}")));
        }
        self.portals.insert(bind.portal, Portal { table, formats: bind.result_formats, sent: 0 });
        backend::write_empty(out, be::BIND_COMPLETE);
        Ok(())
    }

    /// Describe of a local statement: no parameters, text columns.
    pub fn describe_statement(&self, out: &mut BytesMut, name: &str) {
        if let Some(show) = self.statements.get(name) {
            backend::write_no_parameters(out);
            backend::write_text_row_description(out, show.columns());
        }
    }

    /// Describe of a local portal: its columns in the formats its Bind asked for.
    pub fn describe_portal(&self, out: &mut BytesMut, name: &str) {
        if let Some(p) = self.portals.get(name) {
            p.table.write_description(out, &p.formats);
        }
    }

    /// Execute: at most `max_rows` rows (0 or less: all), then PortalSuspended if rows
    /// are left, else CommandComplete.
    pub fn execute(&mut self, out: &mut BytesMut, name: &str, max_rows: i32) {
        let Some(p) = self.portals.get_mut(name) else { return };
        let left = p.table.rows.len() - p.sent;
        let n = if max_rows > 0 { left.min(max_rows as usize) } else { left };
        p.table.write_rows(out, p.sent, p.sent + n);
        p.sent += n;
        if p.sent < p.table.rows.len() {
            backend::write_empty(out, be::PORTAL_SUSPENDED);
        } else {
            backend::write_command_complete(out, "SHOW");
        }
    }

    /// Close of a local statement (`kind` b'S') or portal.
    pub fn close(&mut self, out: &mut BytesMut, kind: u8, name: &str) {
        if kind == b'S' {
            self.statements.remove(name);
        } else {
            self.portals.remove(name);
        }
        backend::write_empty(out, be::CLOSE_COMPLETE);
    }

    /// The transaction ended: its portals are gone, as on a server.
    pub fn end_of_transaction(&mut self) {
        self.portals.clear();
    }
}

/// A Parse of a named statement that exists (here or on a server).
pub(super) fn statement_exists(name: &str) -> PgError {
    PgError::new(Severity::Error, sqlstate::DUPLICATE_PREPARED_STATEMENT, format!("prepared statement \"{name}\" already exists"))
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::protocol::frame::take_message;

    fn table(n: usize) -> Table {
        Table { columns: &["pool_version"], rows: (0..n).map(|i| vec![format!("v{i}")]).collect() }
    }

    fn bind_body(portal: &str, stmt: &str, params: &[&[u8]], results: &[i16]) -> BytesMut {
        let mut b = BytesMut::new();
        for s in [portal, stmt] {
            b.extend_from_slice(s.as_bytes());
            b.put_u8(0);
        }
        b.put_i16(1);
        b.put_i16(0);
        b.put_i16(params.len() as i16);
        for p in params {
            b.put_i32(p.len() as i32);
            b.extend_from_slice(p);
        }
        b.put_i16(results.len() as i16);
        for f in results {
            b.put_i16(*f);
        }
        b
    }

    /// (tag, body) of every message in `out`.
    fn messages(out: &mut BytesMut) -> Vec<(char, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(m) = take_message(out, 1 << 20).unwrap_or_else(|e| panic!("{e}")) {
            v.push((m.tag as char, m.body.to_vec()));
        }
        v
    }

    fn tags(out: &mut BytesMut) -> String {
        messages(out).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn bind_messages_parse() {
        let b = Bind::parse(&bind_body("p", "s", &[b"12", b""], &[1])).unwrap();
        assert_eq!(b, Bind { portal: "p".into(), statement: "s".into(), params: 2, result_formats: vec![1] });
        let mut null_param = bind_body("", "", &[], &[]);
        null_param.truncate(null_param.len() - 4);
        null_param.put_i16(1);
        null_param.put_i32(-1);
        null_param.put_i16(0);
        assert_eq!(Bind::parse(&null_param).unwrap().params, 1);
        for cut in [0, 1, 3, 5, 9] {
            let body = bind_body("p", "s", &[b"12"], &[1]);
            assert!(Bind::parse(&body[..cut]).is_err(), "cut at {cut}");
        }
        let body = bind_body("p", "s", &[b"12"], &[1]);
        assert!(Bind::parse(&body[..body.len() - 1]).is_err());
    }

    #[test]
    fn parse_bind_describe_execute_close() {
        let mut local = LocalStatements::default();
        let mut out = BytesMut::new();
        local.parse(&mut out, "", Show::Version).unwrap();
        local.parse(&mut out, "", Show::Version).unwrap();
        local.parse(&mut out, "v", Show::Version).unwrap();
        assert_eq!(local.parse(&mut out, "v", Show::Version).unwrap_err().code, "42P05");
        assert_eq!(tags(&mut out), "111");
        local.describe_statement(&mut out, "v");
        let m = messages(&mut out);
        assert_eq!((m[0].0, m[0].1.as_slice()), ('t', &[0u8, 0][..]));
        assert_eq!(m[1].0, 'T');

        let bind = Bind { portal: "".into(), statement: "v".into(), params: 0, result_formats: vec![1] };
        local.bind(&mut out, bind, table(3)).unwrap();
        local.describe_portal(&mut out, "");
        local.execute(&mut out, "", 2);
        local.execute(&mut out, "", 2);
        local.execute(&mut out, "", 0);
        assert_eq!(tags(&mut out), "2TDDsDCC");

        let bind = Bind { portal: "all".into(), statement: "v".into(), params: 0, result_formats: vec![] };
        local.bind(&mut out, bind, table(3)).unwrap();
        local.execute(&mut out, "all", 0);
        local.close(&mut out, b'P', "all");
        local.close(&mut out, b'S', "v");
        assert_eq!(tags(&mut out), "2DDDC33");
        assert!(!local.has_portal("all"));
        assert_eq!(local.statement("v"), None);
        assert_eq!(local.statement(""), Some(Show::Version));
        assert!(local.has_portal(""));
        local.end_of_transaction();
        assert!(!local.has_portal(""));
    }

    #[test]
    fn binds_that_do_not_fit_are_refused() {
        let mut local = LocalStatements::default();
        let mut out = BytesMut::new();
        let bind = |params, result_formats| Bind { portal: "".into(), statement: "".into(), params, result_formats };
        assert_eq!(local.bind(&mut out, bind(1, vec![]), table(1)).unwrap_err().code, "08P01");
        let two_cols = Table { columns: &["a", "b"], rows: vec![] };
        let e = local.bind(&mut out, bind(0, vec![0, 0, 0]), two_cols.clone()).unwrap_err();
        assert_eq!(e.message, "bind message has 3 result formats but query has 2 columns");
        assert_eq!(local.bind(&mut out, bind(0, vec![2]), two_cols.clone()).unwrap_err().code, "22023");
        assert!(out.is_empty());
        local.bind(&mut out, bind(0, vec![0, 1]), two_cols).unwrap();
        local.describe_portal(&mut out, "");
        let m = messages(&mut out);
        assert_eq!(m.iter().map(|(t, _)| *t).collect::<String>(), "2T");
    }
}
