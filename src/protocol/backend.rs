//! Backend messages: the ones pgvigil writes to clients, and the ones it reads from servers.

use bytes::{BufMut, BytesMut};

use super::frame::{be, begin, finish, put_cstr, put_value, Reader};
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
    pub detail: Option<String>,
    pub hint: Option<String>,
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
            b'D' => e.detail = Some(value.to_string()),
            b'H' => e.hint = Some(value.to_string()),
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

impl AuthRequest {
    /// Appends this as an Authentication message.
    pub fn write(&self, out: &mut BytesMut) {
        match self {
            AuthRequest::Ok => write_auth(out, AUTH_OK, &[]),
            AuthRequest::Cleartext => write_auth(out, AUTH_CLEARTEXT, &[]),
            AuthRequest::Md5(salt) => write_auth(out, AUTH_MD5, salt),
            AuthRequest::Sasl(mechanisms) => {
                let mechanisms: Vec<&str> = mechanisms.iter().map(String::as_str).collect();
                write_auth_sasl(out, &mechanisms);
            }
            AuthRequest::SaslContinue(data) => write_auth(out, AUTH_SASL_CONTINUE, data),
            AuthRequest::SaslFinal(data) => write_auth(out, AUTH_SASL_FINAL, data),
            AuthRequest::Other(code) => write_auth(out, *code, &[]),
        }
    }
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

/// Body of a ReadyForQuery: the transaction status (b'I', b'T' or b'E').
pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, ProtocolError> {
    let mut r = Reader::new(body);
    let status = r.u8()?;
    r.end()?;
    Ok(status)
}

pub fn write_command_complete(out: &mut BytesMut, tag: &str) {
    let at = begin(out, be::COMMAND_COMPLETE);
    put_cstr(out, tag);
    finish(out, at);
}

/// Body of a CommandComplete: the command tag.
pub fn parse_command_complete(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body);
    let tag = r.cstr()?;
    r.end()?;
    Ok(tag)
}

/// Messages with an empty body: ParseComplete, BindComplete, CloseComplete, NoData…
pub fn write_empty(out: &mut BytesMut, tag: u8) {
    let at = begin(out, tag);
    finish(out, at);
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: &'a str,
    /// The table's OID and the column's number in it, or 0 and 0.
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// The OID of type `text`.
pub const TEXT_OID: u32 = 25;

impl<'a> Column<'a> {
    /// A column of type `text`, not from a table.
    pub fn text(name: &'a str, format: i16) -> Self {
        Column { name, table_oid: 0, column: 0, type_oid: TEXT_OID, type_size: -1, type_modifier: -1, format }
    }
}

pub fn write_row_description(out: &mut BytesMut, columns: &[Column<'_>]) {
    let at = begin(out, be::ROW_DESCRIPTION);
    out.put_i16(columns.len() as i16);
    for c in columns {
        put_cstr(out, c.name);
        out.put_u32(c.table_oid);
        out.put_i16(c.column);
        out.put_u32(c.type_oid);
        out.put_i16(c.type_size);
        out.put_i32(c.type_modifier);
        out.put_i16(c.format);
    }
    finish(out, at);
}

pub fn parse_row_description(body: &[u8]) -> Result<Vec<Column<'_>>, ProtocolError> {
    let mut r = Reader::new(body);
    let columns = (0..r.count()?)
        .map(|_| {
            Ok(Column {
                name: r.cstr()?,
                table_oid: r.i32()? as u32,
                column: r.i16()?,
                type_oid: r.i32()? as u32,
                type_size: r.i16()?,
                type_modifier: r.i32()?,
                format: r.i16()?,
            })
        })
        .collect::<Result<_, ProtocolError>>()?;
    r.end()?;
    Ok(columns)
}

/// RowDescription of text columns (type `text`, OID 25, text format).
pub fn write_text_row_description(out: &mut BytesMut, columns: &[&str]) {
    write_text_row_description_in(out, columns, &[]);
}

/// RowDescription of text columns in the result formats a Bind asked for: none (all
/// text), one for every column, or one per column. The binary form of `text` is its
/// bytes, so DataRows are the same either way.
pub fn write_text_row_description_in(out: &mut BytesMut, columns: &[&str], formats: &[i16]) {
    let columns: Vec<Column<'_>> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let format = match formats {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            };
            Column::text(c, format)
        })
        .collect();
    write_row_description(out, &columns);
}

/// ParameterDescription of a statement without parameters.
pub fn write_no_parameters(out: &mut BytesMut) {
    write_parameter_description(out, &[]);
}

/// ParameterDescription: the type OID of each parameter of a statement.
pub fn write_parameter_description(out: &mut BytesMut, types: &[u32]) {
    let at = begin(out, be::PARAMETER_DESCRIPTION);
    out.put_i16(types.len() as i16);
    for t in types {
        out.put_u32(*t);
    }
    finish(out, at);
}

/// Body of a ParameterDescription: the parameter type OIDs.
pub fn parse_parameter_description(body: &[u8]) -> Result<Vec<u32>, ProtocolError> {
    let mut r = Reader::new(body);
    let types = (0..r.count()?).map(|_| r.i32().map(|t| t as u32)).collect::<Result<_, _>>()?;
    r.end()?;
    Ok(types)
}

/// DataRow of values (text or binary); `None` is SQL NULL.
pub fn write_data_row<S: AsRef<[u8]>>(out: &mut BytesMut, values: &[Option<S>]) {
    let at = begin(out, be::DATA_ROW);
    out.put_i16(values.len() as i16);
    for v in values {
        put_value(out, v.as_ref().map(AsRef::as_ref));
    }
    finish(out, at);
}

/// Body of a DataRow: its values, `None` for SQL NULL.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut r = Reader::new(body);
    let values = r.values()?;
    r.end()?;
    Ok(values)
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

/// Body of a NegotiateProtocolVersion: the newest minor version of protocol 3 the server
/// supports, and the protocol options it did not recognize.
pub fn parse_negotiate_protocol_version(body: &[u8]) -> Result<(i32, Vec<&str>), ProtocolError> {
    let mut r = Reader::new(body);
    let version = r.i32()?;
    if version >> 16 != 3 {
        return Err(ProtocolError::Malformed("NegotiateProtocolVersion for a major version other than 3"));
    }
    let count = r.i32()?;
    // Each option takes at least its terminator: a count beyond the body is refused
    // before anything is reserved for it.
    if count < 0 || count as usize > r.remaining() {
        return Err(ProtocolError::Malformed("invalid option count in NegotiateProtocolVersion"));
    }
    let options = (0..count).map(|_| r.cstr()).collect::<Result<_, _>>()?;
    r.end()?;
    Ok((version & 0xffff, options))
}

/// NotificationResponse: a NOTIFY from the session of `pid` on `channel`.
pub fn write_notification(out: &mut BytesMut, pid: i32, channel: &str, payload: &str) {
    let at = begin(out, be::NOTIFICATION_RESPONSE);
    out.put_i32(pid);
    put_cstr(out, channel);
    put_cstr(out, payload);
    finish(out, at);
}

/// Body of a NotificationResponse: the notifying backend's pid, the channel, the payload.
pub fn parse_notification(body: &[u8]) -> Result<(i32, &str, &str), ProtocolError> {
    let mut r = Reader::new(body);
    let n = (r.i32()?, r.cstr()?, r.cstr()?);
    r.end()?;
    Ok(n)
}

/// CopyInResponse, CopyOutResponse or CopyBothResponse: the overall format (0 text,
/// 1 binary) and the format of each column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResponse {
    pub format: u8,
    pub column_formats: Vec<i16>,
}

impl CopyResponse {
    /// Appends this with `tag` (`be::COPY_IN_RESPONSE`, `COPY_OUT_RESPONSE` or
    /// `COPY_BOTH_RESPONSE`).
    pub fn write(&self, out: &mut BytesMut, tag: u8) {
        let at = begin(out, tag);
        out.put_u8(self.format);
        out.put_i16(self.column_formats.len() as i16);
        for f in &self.column_formats {
            out.put_i16(*f);
        }
        finish(out, at);
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let format = r.u8()?;
        let column_formats = (0..r.count()?).map(|_| r.i16()).collect::<Result<_, _>>()?;
        r.end()?;
        Ok(CopyResponse { format, column_formats })
    }
}

/// FunctionCallResponse: the function's result, `None` for NULL.
pub fn write_function_call_response(out: &mut BytesMut, result: Option<&[u8]>) {
    let at = begin(out, be::FUNCTION_CALL_RESPONSE);
    put_value(out, result);
    finish(out, at);
}

/// Body of a FunctionCallResponse.
pub fn parse_function_call_response(body: &[u8]) -> Result<Option<&[u8]>, ProtocolError> {
    let mut r = Reader::new(body);
    let value = match r.i32()? {
        -1 => None,
        len if len < 0 => return Err(ProtocolError::Malformed("invalid value length")),
        len => Some(r.bytes(len as usize)?),
    };
    r.end()?;
    Ok(value)
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
