//! Frontend messages: the ones pgvigil reads from clients during authentication, and
//! the ones it writes to servers.

use bytes::{BufMut, BytesMut};

use super::frame::{begin, fe, finish, put_cstr, put_value, Reader};
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

/// Body of a Query: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body);
    let sql = r.cstr()?;
    r.end()?;
    Ok(sql)
}

/// A Parse message: statement name, query text, parameter type OIDs (0: unspecified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    pub query: &'a str,
    pub param_types: Vec<u32>,
}

impl<'a> Parse<'a> {
    pub fn write(&self, out: &mut BytesMut) {
        let at = begin(out, fe::PARSE);
        put_cstr(out, self.name);
        put_cstr(out, self.query);
        out.put_i16(self.param_types.len() as i16);
        for t in &self.param_types {
            out.put_u32(*t);
        }
        finish(out, at);
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let name = r.cstr()?;
        let query = r.cstr()?;
        let param_types = (0..r.count()?).map(|_| r.i32().map(|t| t as u32)).collect::<Result<_, _>>()?;
        r.end()?;
        Ok(Parse { name, query, param_types })
    }
}

/// A Bind message: portal, statement, parameter formats and values (`None`: NULL),
/// result formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub param_formats: Vec<i16>,
    pub values: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

impl<'a> Bind<'a> {
    pub fn write(&self, out: &mut BytesMut) {
        let at = begin(out, fe::BIND);
        put_cstr(out, self.portal);
        put_cstr(out, self.statement);
        put_i16s(out, &self.param_formats);
        out.put_i16(self.values.len() as i16);
        for v in &self.values {
            put_value(out, *v);
        }
        put_i16s(out, &self.result_formats);
        finish(out, at);
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let param_formats = i16s(&mut r)?;
        let values = r.values()?;
        let result_formats = i16s(&mut r)?;
        r.end()?;
        Ok(Bind { portal, statement, param_formats, values, result_formats })
    }
}

/// Describe of a prepared statement (`kind` b'S') or portal (b'P').
pub fn write_describe(out: &mut BytesMut, kind: u8, name: &str) {
    let at = begin(out, fe::DESCRIBE);
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, at);
}

/// Body of a Describe or Close: the kind (b'S' or b'P') and the name.
pub fn parse_describe_or_close(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Malformed("invalid Describe or Close kind"));
    }
    let name = r.cstr()?;
    r.end()?;
    Ok((kind, name))
}

/// Execute of a portal, up to `max_rows` rows (0: all).
pub fn write_execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    let at = begin(out, fe::EXECUTE);
    put_cstr(out, portal);
    out.put_i32(max_rows);
    finish(out, at);
}

/// Body of an Execute: the portal and the row limit.
pub fn parse_execute(body: &[u8]) -> Result<(&str, i32), ProtocolError> {
    let mut r = Reader::new(body);
    let portal = r.cstr()?;
    let max_rows = r.i32()?;
    r.end()?;
    Ok((portal, max_rows))
}

pub fn write_flush(out: &mut BytesMut) {
    let at = begin(out, fe::FLUSH);
    finish(out, at);
}

/// A FunctionCall (the fast-path interface): the function's OID, the argument formats
/// and values (`None`: NULL), the result format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall<'a> {
    pub function: u32,
    pub arg_formats: Vec<i16>,
    pub args: Vec<Option<&'a [u8]>>,
    pub result_format: i16,
}

impl<'a> FunctionCall<'a> {
    pub fn write(&self, out: &mut BytesMut) {
        let at = begin(out, fe::FUNCTION_CALL);
        out.put_u32(self.function);
        put_i16s(out, &self.arg_formats);
        out.put_i16(self.args.len() as i16);
        for v in &self.args {
            put_value(out, *v);
        }
        out.put_i16(self.result_format);
        finish(out, at);
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let function = r.i32()? as u32;
        let arg_formats = i16s(&mut r)?;
        let args = r.values()?;
        let result_format = r.i16()?;
        r.end()?;
        Ok(FunctionCall { function, arg_formats, args, result_format })
    }
}

/// CopyData: a chunk of a COPY's data stream (the same message both ways).
pub fn write_copy_data(out: &mut BytesMut, data: &[u8]) {
    let at = begin(out, fe::COPY_DATA);
    out.extend_from_slice(data);
    finish(out, at);
}

/// CopyDone: the end of a COPY's data stream (the same message both ways).
pub fn write_copy_done(out: &mut BytesMut) {
    let at = begin(out, fe::COPY_DONE);
    finish(out, at);
}

/// CopyFail: the client aborts a COPY FROM STDIN with `message`.
pub fn write_copy_fail(out: &mut BytesMut, message: &str) {
    let at = begin(out, fe::COPY_FAIL);
    put_cstr(out, message);
    finish(out, at);
}

/// Body of a CopyFail: the client's reason.
pub fn parse_copy_fail(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body);
    let message = r.cstr()?;
    r.end()?;
    Ok(message)
}

fn i16s(r: &mut Reader<'_>) -> Result<Vec<i16>, ProtocolError> {
    (0..r.count()?).map(|_| r.i16()).collect()
}

fn put_i16s(out: &mut BytesMut, values: &[i16]) {
    out.put_i16(values.len() as i16);
    for v in values {
        out.put_i16(*v);
    }
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
