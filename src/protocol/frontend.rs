//! Frontend messages: the ones pgvigil reads from clients during authentication, and
//! the ones it writes to servers.

use bytes::{BufMut, BytesMut};

use super::frame::{begin, fe, finish, put_cstr, Reader};
use super::ProtocolError;

pub fn write_query(out: &mut BytesMut, sql: &str) {
    let at = begin(out, fe::QUERY);
    put_cstr(out, sql);
    finish(out, at);
}

pub fn write_sync(out: &mut BytesMut) {
    let at = begin(out, fe::SYNC);
    finish(out, at);
}

/// Close of a prepared statement (`kind` b'S') or portal (b'P').
pub fn write_close(out: &mut BytesMut, kind: u8, name: &str) {
    let at = begin(out, fe::CLOSE);
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, at);
}

pub fn write_terminate(out: &mut BytesMut) {
    let at = begin(out, fe::TERMINATE);
    finish(out, at);
}

/// PasswordMessage with a cleartext password or an md5 response.
pub fn write_password(out: &mut BytesMut, password: &str) {
    let at = begin(out, fe::PASSWORD);
    put_cstr(out, password);
    finish(out, at);
}

pub fn write_sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let at = begin(out, fe::PASSWORD);
    put_cstr(out, mechanism);
    out.put_i32(data.len() as i32);
    out.extend_from_slice(data);
    finish(out, at);
}

pub fn write_sasl_response(out: &mut BytesMut, data: &[u8]) {
    let at = begin(out, fe::PASSWORD);
    out.extend_from_slice(data);
    finish(out, at);
}

/// Body of a PasswordMessage: the password string.
pub fn parse_password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body);
    let s = r.cstr()?;
    if r.remaining() != 0 {
        return Err(ProtocolError::Malformed("invalid password packet size"));
    }
    Ok(s)
}

/// Body of a SASLInitialResponse: mechanism and the initial data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut r = Reader::new(body);
    let mech = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 { &[][..] } else { r.bytes(len as usize)? };
    if r.remaining() != 0 {
        return Err(ProtocolError::Malformed("invalid SASL initial response"));
    }
    Ok((mech, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::take_message;

    #[test]
    fn sasl_initial_round_trip() {
        let mut out = BytesMut::new();
        write_sasl_initial_response(&mut out, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let m = take_message(&mut out, 1000).unwrap().unwrap();
        assert_eq!(parse_sasl_initial_response(&m.body).unwrap(), ("SCRAM-SHA-256", &b"n,,n=,r=abc"[..]));
        assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x10ab").is_err());
        assert!(parse_password(b"abc").is_err());
    }
}
