//! Backend messages: the ones pgvigil writes to clients, and the ones it reads from servers.

use bytes::{BufMut, BytesMut};

use super::frame::{be, begin, finish, put_cstr, Reader};
use super::sqlstate;
use super::ProtocolError;

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Warning,
    Notice,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
        }
    }
}

/// An error (or notice) as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Self { severity, code, message: message.into(), detail: None, hint: None }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// FATAL 08P01, the client broke the protocol.
    pub fn protocol_violation(message: impl Into<String>) -> Self {
        Self::fatal(sqlstate::PROTOCOL_VIOLATION, message)
    }

    /// FATAL 53300, as PostgreSQL says it when max_connections is reached.
    pub fn too_many_clients() -> Self {
        Self::fatal(sqlstate::TOO_MANY_CONNECTIONS, "sorry, too many clients already")
    }

    /// FATAL 57P01, sent to sessions still open at the end of a shutdown.
    pub fn shutting_down() -> Self {
        Self::fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection due to administrator command")
    }

    /// FATAL 28P01, exactly PostgreSQL's wording.
    pub fn password_failed(user: &str) -> Self {
        Self::fatal(sqlstate::INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""))
    }

    /// Appends this as an ErrorResponse (or NoticeResponse for warnings and notices).
    pub fn write(&self, out: &mut BytesMut) {
        let tag = match self.severity {
            Severity::Error | Severity::Fatal => be::ERROR_RESPONSE,
            Severity::Warning | Severity::Notice => be::NOTICE_RESPONSE,
        };
        let at = begin(out, tag);
        for (field, value) in [(b'S', self.severity.as_str()), (b'V', self.severity.as_str()), (b'C', self.code)] {
            out.put_u8(field);
            put_cstr(out, value);
        }
        out.put_u8(b'M');
        put_cstr(out, &self.message);
        if let Some(d) = &self.detail {
            out.put_u8(b'D');
            put_cstr(out, d);
        }
        if let Some(h) = &self.hint {
            out.put_u8(b'H');
            put_cstr(out, h);
        }
        out.put_u8(0);
        finish(out, at);
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.severity.as_str(), self.code, self.message)
    }
}

/// An error read from a server: the fields pgvigil needs to relay or log it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.severity, self.code, self.message)
    }
}

/// Reads the fields of an ErrorResponse or NoticeResponse body.
pub fn parse_error_fields(body: &[u8]) -> Result<ServerError, ProtocolError> {
    let mut r = Reader::new(body);
    let mut e = ServerError::default();
    loop {
        let field = r.u8()?;
        if field == 0 {
            return Ok(e);
        }
        let value = r.cstr()?;
        match field {
            b'V' => e.severity = value.to_string(),
            b'S' if e.severity.is_empty() => e.severity = value.to_string(),
            b'C' => e.code = value.to_string(),
            b'M' => e.message = value.to_string(),
            _ => {}
        }
    }
}

/// An Authentication request from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    Sasl(Vec<String>),
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    Other(i32),
}

pub const AUTH_OK: i32 = 0;
pub const AUTH_CLEARTEXT: i32 = 3;
pub const AUTH_MD5: i32 = 5;
pub const AUTH_SASL: i32 = 10;
pub const AUTH_SASL_CONTINUE: i32 = 11;
pub const AUTH_SASL_FINAL: i32 = 12;

pub fn parse_auth(body: &[u8]) -> Result<AuthRequest, ProtocolError> {
    let mut r = Reader::new(body);
    Ok(match r.i32()? {
        AUTH_OK => AuthRequest::Ok,
        AUTH_CLEARTEXT => AuthRequest::Cleartext,
        AUTH_MD5 => {
            let s = r.bytes(4)?;
            AuthRequest::Md5([s[0], s[1], s[2], s[3]])
        }
        AUTH_SASL => {
            let mut mechs = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechs.push(m.to_string());
            }
            AuthRequest::Sasl(mechs)
        }
        AUTH_SASL_CONTINUE => AuthRequest::SaslContinue(r.rest().to_vec()),
        AUTH_SASL_FINAL => AuthRequest::SaslFinal(r.rest().to_vec()),
        other => AuthRequest::Other(other),
    })
}

/// Appends an Authentication message with the given code and payload.
pub fn write_auth(out: &mut BytesMut, code: i32, payload: &[u8]) {
    let at = begin(out, be::AUTHENTICATION);
    out.put_i32(code);
    out.extend_from_slice(payload);
    finish(out, at);
}

/// AuthenticationSASL offering the given mechanisms.
pub fn write_auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(out, be::AUTHENTICATION);
    out.put_i32(AUTH_SASL);
    for m in mechanisms {
        put_cstr(out, m);
    }
    out.put_u8(0);
    finish(out, at);
}

pub fn write_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let at = begin(out, be::PARAMETER_STATUS);
    put_cstr(out, name);
    put_cstr(out, value);
    finish(out, at);
}

pub fn parse_parameter_status(body: &[u8]) -> Result<(String, String), ProtocolError> {
    let mut r = Reader::new(body);
    Ok((r.cstr()?.to_string(), r.cstr()?.to_string()))
}

pub fn write_backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(out, be::BACKEND_KEY_DATA);
    out.put_i32(pid);
    out.put_i32(secret);
    finish(out, at);
}

pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), ProtocolError> {
    let mut r = Reader::new(body);
    Ok((r.i32()?, r.i32()?))
}

pub fn write_ready_for_query(out: &mut BytesMut, status: u8) {
    let at = begin(out, be::READY_FOR_QUERY);
    out.put_u8(status);
    finish(out, at);
}

pub fn write_command_complete(out: &mut BytesMut, tag: &str) {
    let at = begin(out, be::COMMAND_COMPLETE);
    put_cstr(out, tag);
    finish(out, at);
}

/// Messages with an empty body: ParseComplete, BindComplete, CloseComplete, NoData…
pub fn write_empty(out: &mut BytesMut, tag: u8) {
    let at = begin(out, tag);
    finish(out, at);
}

/// RowDescription of text columns (type `text`, OID 25, text format).
pub fn write_text_row_description(out: &mut BytesMut, columns: &[&str]) {
    write_text_row_description_in(out, columns, &[]);
}

/// RowDescription of text columns in the result formats a Bind asked for: none (all
/// text), one for every column, or one per column. The binary form of `text` is its
/// bytes, so DataRows are the same either way.
pub fn write_text_row_description_in(out: &mut BytesMut, columns: &[&str], formats: &[i16]) {
    let at = begin(out, be::ROW_DESCRIPTION);
    out.put_i16(columns.len() as i16);
    for (i, c) in columns.iter().enumerate() {
        let format = match formats {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        };
        put_cstr(out, c);
        out.put_i32(0); // table OID
        out.put_i16(0); // column number
        out.put_i32(25); // type OID: text
        out.put_i16(-1); // type size
        out.put_i32(-1); // type modifier
        out.put_i16(format);
    }
    finish(out, at);
}

/// ParameterDescription of a statement without parameters.
pub fn write_no_parameters(out: &mut BytesMut) {
    let at = begin(out, be::PARAMETER_DESCRIPTION);
    out.put_i16(0);
    finish(out, at);
}

/// DataRow of text values; `None` is SQL NULL.
pub fn write_data_row<S: AsRef<str>>(out: &mut BytesMut, values: &[Option<S>]) {
    let at = begin(out, be::DATA_ROW);
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                out.put_i32(v.as_ref().len() as i32);
                out.extend_from_slice(v.as_ref().as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    finish(out, at);
}

/// NegotiateProtocolVersion: the newest minor version supported and the options not recognized.
pub fn write_negotiate_protocol_version(out: &mut BytesMut, newest_minor: i32, unrecognized: &[String]) {
    let at = begin(out, be::NEGOTIATE_PROTOCOL_VERSION);
    out.put_i32((3 << 16) | newest_minor);
    out.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        put_cstr(out, o);
    }
    finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::take_message;

    #[test]
    fn error_round_trip() {
        let mut out = BytesMut::new();
        PgError::password_failed("alice").write(&mut out);
        let m = take_message(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(m.tag, b'E');
        let e = parse_error_fields(&m.body).unwrap();
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.code, "28P01");
        assert_eq!(e.message, "password authentication failed for user \"alice\"");
    }

    #[test]
    fn auth_requests_parse() {
        let mut out = BytesMut::new();
        write_auth(&mut out, AUTH_MD5, &[1, 2, 3, 4]);
        write_auth_sasl(&mut out, &["SCRAM-SHA-256"]);
        let m = take_message(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(parse_auth(&m.body).unwrap(), AuthRequest::Md5([1, 2, 3, 4]));
        let m = take_message(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(parse_auth(&m.body).unwrap(), AuthRequest::Sasl(vec!["SCRAM-SHA-256".into()]));
        assert!(parse_auth(&[0, 0, 0, 5, 1]).is_err());
        assert!(parse_error_fields(b"Cxx").is_err());
    }
}
