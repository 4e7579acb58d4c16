//! A client's message during a session, decoded as far as routing needs it. The rest
//! of the message (a Bind's values, a Parse's parameter types) goes to the server as
//! the client sent it, and the server judges it.

use crate::protocol::backend::PgError;
use crate::protocol::frame::{fe, Reader};

/// What a client asked for, with the names and text routing reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Terminate,
    Query(&'a str),
    Parse { name: &'a str, sql: &'a str },
    Bind { portal: &'a str, statement: &'a str },
    /// `kind` is b'S' (statement) or b'P' (portal).
    Describe { kind: u8, name: &'a str },
    Close { kind: u8, name: &'a str },
    /// `max_rows` 0 (all) when missing: only pgvigil's own portals read it.
    Execute { portal: &'a str, max_rows: i32 },
    Flush,
    Sync,
    /// Forwarded whole to the primary.
    FunctionCall,
    /// CopyData, CopyDone, CopyFail.
    Copy,
}

impl<'a> Request<'a> {
    /// Decodes a message of type `tag` with body `body`; an error is the FATAL 08P01 the
    /// client gets.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, PgError> {
        let mut r = Reader::new(body);
        Ok(match tag {
            fe::TERMINATE => Request::Terminate,
            fe::QUERY => Request::Query(first_string(&mut r)?),
            fe::PARSE => match (r.cstr(), r.cstr()) {
                (Ok(name), Ok(sql)) => Request::Parse { name, sql },
                _ => return Err(PgError::protocol_violation("invalid Parse message")),
            },
            fe::BIND => match (r.cstr(), r.cstr()) {
                (Ok(portal), Ok(statement)) => Request::Bind { portal, statement },
                _ => return Err(PgError::protocol_violation("invalid Bind message")),
            },
            fe::DESCRIBE | fe::CLOSE => {
                let (kind, name) = match (r.u8(), r.cstr()) {
                    (Ok(k), Ok(n)) if k == b'S' || k == b'P' => (k, n),
                    _ => return Err(PgError::protocol_violation("invalid Describe or Close message")),
                };
                if tag == fe::DESCRIBE {
                    Request::Describe { kind, name }
                } else {
                    Request::Close { kind, name }
                }
            }
            fe::EXECUTE => {
                let portal = first_string(&mut r)?;
                Request::Execute { portal, max_rows: r.i32().unwrap_or(0) }
            }
            fe::FLUSH => Request::Flush,
            fe::SYNC => Request::Sync,
            fe::FUNCTION_CALL => Request::FunctionCall,
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => Request::Copy,
            other if !fe::is_known(other) => {
                return Err(PgError::protocol_violation(format!("invalid frontend message type {other}")))
            }
            other => {
                return Err(PgError::protocol_violation(format!(
                    "unexpected message type {} during a session",
                    other as char
                )))
            }
        })
    }
}

/// The NUL-terminated string at the reader's position.
fn first_string<'a>(r: &mut Reader<'a>) -> Result<&'a str, PgError> {
    r.cstr().map_err(|_| PgError::protocol_violation("invalid message: string not terminated"))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::protocol::frame::take_message;
    use crate::protocol::{frontend, sqlstate};

    #[test]
    fn decodes_what_routing_reads() {
        assert_eq!(Request::decode(b'Q', b"SELECT 1\0"), Ok(Request::Query("SELECT 1")));
        assert_eq!(Request::decode(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17"), Ok(Request::Parse { name: "s1", sql: "SELECT $1" }));
        assert_eq!(Request::decode(b'B', b"\0s1\0junk"), Ok(Request::Bind { portal: "", statement: "s1" }));
        assert_eq!(Request::decode(b'D', b"Pp\0"), Ok(Request::Describe { kind: b'P', name: "p" }));
        assert_eq!(Request::decode(b'C', b"S\0"), Ok(Request::Close { kind: b'S', name: "" }));
        assert_eq!(Request::decode(b'E', b"\0\0\0\0\0"), Ok(Request::Execute { portal: "", max_rows: 0 }));
        assert_eq!(Request::decode(b'E', b"p\0\0\0\0\x07"), Ok(Request::Execute { portal: "p", max_rows: 7 }));
        assert_eq!(Request::decode(b'E', b"p\0\0"), Ok(Request::Execute { portal: "p", max_rows: 0 }));
        assert_eq!(Request::decode(b'F', b""), Ok(Request::FunctionCall));
    }

    proptest::proptest! {
        /// What the codec writes, the session reads back.
        #[test]
        fn reads_what_the_codec_writes(name in "[^\u{0}]{0,16}", sql in "[^\u{0}]{0,32}", kind in proptest::sample::select(vec![b'S', b'P']), max_rows in proptest::prelude::any::<i32>()) {
            let mut out = BytesMut::new();
            frontend::write_query(&mut out, &sql);
            frontend::Parse { name: &name, query: &sql, param_types: vec![23] }.write(&mut out);
            frontend::Bind { portal: &name, statement: &sql, param_formats: vec![], values: vec![None], result_formats: vec![1] }.write(&mut out);
            frontend::write_describe(&mut out, kind, &name);
            frontend::write_close(&mut out, kind, &name);
            frontend::write_execute(&mut out, &name, max_rows);
            frontend::write_sync(&mut out);
            let expected = [
                Request::Query(&sql),
                Request::Parse { name: &name, sql: &sql },
                Request::Bind { portal: &name, statement: &sql },
                Request::Describe { kind, name: &name },
                Request::Close { kind, name: &name },
                Request::Execute { portal: &name, max_rows },
                Request::Sync,
            ];
            for want in expected {
                let m = take_message(&mut out, 1 << 20).ok().flatten().unwrap_or_else(|| panic!("no message"));
                proptest::prop_assert_eq!(Request::decode(m.tag, &m.body), Ok(want));
            }
        }
    }

    #[test]
    fn malformed_bodies_are_protocol_violations() {
        for (tag, body) in [
            (b'Q', &b"SELECT 1"[..]),
            (b'P', b"s1\0SELECT"),
            (b'B', b"\0"),
            (b'D', b"X\0"),
            (b'C', b"S"),
            (b'E', b""),
            (b'Q', b"\xff\0"),
            (b'p', b"secret\0"),
            (0, b""),
        ] {
            let e = Request::decode(tag, body).unwrap_err();
            assert_eq!(e.code, sqlstate::PROTOCOL_VIOLATION, "{:?}", tag as char);
        }
    }
}
