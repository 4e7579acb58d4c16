//! Every message type of protocol 3.0, with arbitrary values: encoded, then decoded,
//! gives the values back (the bodiless ones: encoded, they carry their tag and nothing
//! else). And the framing limit, applied before any memory is reserved for a message.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::backend::{self, AuthRequest, Column, CopyResponse, PgError, Severity};
use super::frame::{self, be, fe, take_message, Message};
use super::frontend::{self, Bind, FunctionCall, Parse};
use super::startup::{self, take_startup_packet, Startup, StartupPacket, MAX_STARTUP_PACKET};
use super::{sqlstate, ProtocolError};

/// A string as the protocol carries it: UTF-8 without NUL.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,24}"
}

fn non_empty_text() -> impl Strategy<Value = String> {
    "[^\u{0}]{1,24}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

/// The one message `write` appends.
fn written(write: impl FnOnce(&mut BytesMut)) -> Message {
    let mut out = BytesMut::new();
    write(&mut out);
    only(&mut out)
}

/// The one message in `out`, which must hold nothing else.
fn only(out: &mut BytesMut) -> Message {
    let m = take_message(out, 1 << 30).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("incomplete"));
    assert!(out.is_empty(), "{} bytes after the message", out.len());
    m
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![Just(Severity::Error), Just(Severity::Fatal), Just(Severity::Warning), Just(Severity::Notice)]
}

fn code() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just(sqlstate::PROTOCOL_VIOLATION),
        Just(sqlstate::TOO_MANY_CONNECTIONS),
        Just(sqlstate::ADMIN_SHUTDOWN),
        Just(sqlstate::INVALID_PASSWORD),
        Just(sqlstate::FEATURE_NOT_SUPPORTED),
    ]
}

fn auth_request() -> impl Strategy<Value = AuthRequest> {
    prop_oneof![
        Just(AuthRequest::Ok),
        Just(AuthRequest::Cleartext),
        any::<[u8; 4]>().prop_map(AuthRequest::Md5),
        vec(non_empty_text(), 0..4).prop_map(AuthRequest::Sasl),
        bytes().prop_map(AuthRequest::SaslContinue),
        bytes().prop_map(AuthRequest::SaslFinal),
        any::<i32>()
            .prop_filter("a known code", |c| ![0, 3, 5, 10, 11, 12].contains(c))
            .prop_map(AuthRequest::Other),
    ]
}

type ColumnValues = (String, u32, i16, u32, i16, i32, i16);

proptest! {
    // ---- frontend ----------------------------------------------------------------

    #[test]
    fn query(sql in text()) {
        let m = written(|out| frontend::write_query(out, &sql));
        prop_assert_eq!(m.tag, fe::QUERY);
        prop_assert_eq!(frontend::parse_query(&m.body), Ok(sql.as_str()));
    }

    #[test]
    fn parse(name in text(), query in text(), param_types in vec(any::<u32>(), 0..8)) {
        let p = Parse { name: &name, query: &query, param_types };
        let m = written(|out| p.write(out));
        prop_assert_eq!(m.tag, fe::PARSE);
        prop_assert_eq!(Parse::decode(&m.body), Ok(p));
    }

    #[test]
    fn bind(
        portal in text(),
        statement in text(),
        param_formats in vec(any::<i16>(), 0..4),
        values in vec(option::of(bytes()), 0..6),
        result_formats in vec(any::<i16>(), 0..4),
    ) {
        let b = Bind {
            portal: &portal,
            statement: &statement,
            param_formats,
            values: values.iter().map(Option::as_deref).collect(),
            result_formats,
        };
        let m = written(|out| b.write(out));
        prop_assert_eq!(m.tag, fe::BIND);
        prop_assert_eq!(Bind::decode(&m.body), Ok(b));
    }

    #[test]
    fn describe_and_close(statement in any::<bool>(), name in text()) {
        let kind = if statement { b'S' } else { b'P' };
        let mut out = BytesMut::new();
        frontend::write_describe(&mut out, kind, &name);
        frontend::write_close(&mut out, kind, &name);
        let (d, c) = (take_message(&mut out, 1 << 20), only(&mut out));
        let d = d.ok().flatten().unwrap_or_else(|| panic!("no Describe"));
        prop_assert_eq!((d.tag, c.tag), (fe::DESCRIBE, fe::CLOSE));
        prop_assert_eq!(frontend::parse_describe_or_close(&d.body), Ok((kind, name.as_str())));
        prop_assert_eq!(frontend::parse_describe_or_close(&c.body), Ok((kind, name.as_str())));
    }

    #[test]
    fn execute(portal in text(), max_rows in any::<i32>()) {
        let m = written(|out| frontend::write_execute(out, &portal, max_rows));
        prop_assert_eq!(m.tag, fe::EXECUTE);
        prop_assert_eq!(frontend::parse_execute(&m.body), Ok((portal.as_str(), max_rows)));
    }

    #[test]
    fn password(password in text()) {
        let m = written(|out| frontend::write_password(out, &password));
        prop_assert_eq!(m.tag, fe::PASSWORD);
        prop_assert_eq!(frontend::parse_password(&m.body), Ok(password.as_str()));
    }

    #[test]
    fn sasl_initial_response(mechanism in text(), data in bytes()) {
        let m = written(|out| frontend::write_sasl_initial_response(out, &mechanism, &data));
        prop_assert_eq!(m.tag, fe::PASSWORD);
        prop_assert_eq!(frontend::parse_sasl_initial_response(&m.body), Ok((mechanism.as_str(), data.as_slice())));
    }

    /// SASLResponse (and GSSResponse, the same layout): the body is the data.
    #[test]
    fn sasl_response(data in bytes()) {
        let m = written(|out| frontend::write_sasl_response(out, &data));
        prop_assert_eq!((m.tag, &m.body[..]), (fe::PASSWORD, data.as_slice()));
    }

    // ---- startup packets -----------------------------------------------------------

    #[test]
    fn startup_message(params in vec((non_empty_text(), text()), 0..8)) {
        let mut out = BytesMut::new();
        startup::write_startup(&mut out, &params);
        let p = take_startup_packet(&mut out);
        prop_assert!(out.is_empty());
        prop_assert_eq!(p, Ok(Some(StartupPacket::Startup(Startup { major: 3, minor: 0, params }))));
    }

    #[test]
    fn cancel_request(pid in any::<i32>(), secret in any::<i32>()) {
        let mut out = BytesMut::new();
        startup::write_cancel(&mut out, pid, secret);
        let p = take_startup_packet(&mut out);
        prop_assert!(out.is_empty());
        prop_assert_eq!(p, Ok(Some(StartupPacket::Cancel { pid, secret })));
    }

    // ---- backend -------------------------------------------------------------------

    #[test]
    fn error_and_notice(severity in severity(), code in code(), message in text(), detail in option::of(text()), hint in option::of(text())) {
        let e = PgError { severity, code, message, detail, hint };
        let m = written(|out| e.write(out));
        let tag = if matches!(severity, Severity::Error | Severity::Fatal) { be::ERROR_RESPONSE } else { be::NOTICE_RESPONSE };
        prop_assert_eq!(m.tag, tag);
        let read = backend::parse_error_fields(&m.body).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(
            (read.severity.as_str(), read.code.as_str(), read.message.as_str(), read.detail.as_deref(), read.hint.as_deref()),
            (severity.as_str(), code, e.message.as_str(), e.detail.as_deref(), e.hint.as_deref())
        );
    }

    #[test]
    fn authentication(request in auth_request()) {
        let m = written(|out| request.write(out));
        prop_assert_eq!(m.tag, be::AUTHENTICATION);
        prop_assert_eq!(backend::parse_auth(&m.body), Ok(request));
    }

    #[test]
    fn parameter_status(name in text(), value in text()) {
        let m = written(|out| backend::write_parameter_status(out, &name, &value));
        prop_assert_eq!(m.tag, be::PARAMETER_STATUS);
        prop_assert_eq!(backend::parse_parameter_status(&m.body), Ok((name, value)));
    }

    #[test]
    fn backend_key_data(pid in any::<i32>(), secret in any::<i32>()) {
        let m = written(|out| backend::write_backend_key_data(out, pid, secret));
        prop_assert_eq!(m.tag, be::BACKEND_KEY_DATA);
        prop_assert_eq!(backend::parse_backend_key_data(&m.body), Ok((pid, secret)));
    }

    #[test]
    fn ready_for_query(status in prop_oneof![Just(b'I'), Just(b'T'), Just(b'E')]) {
        let m = written(|out| backend::write_ready_for_query(out, status));
        prop_assert_eq!(m.tag, be::READY_FOR_QUERY);
        prop_assert_eq!(backend::parse_ready_for_query(&m.body), Ok(status));
    }

    #[test]
    fn command_complete(tag in text()) {
        let m = written(|out| backend::write_command_complete(out, &tag));
        prop_assert_eq!(m.tag, be::COMMAND_COMPLETE);
        prop_assert_eq!(backend::parse_command_complete(&m.body), Ok(tag.as_str()));
    }

    #[test]
    fn row_description(columns in vec(any::<ColumnValues>().prop_map(|mut c| { c.0.retain(|ch| ch != '\0'); c }), 0..6)) {
        let columns: Vec<Column<'_>> = columns
            .iter()
            .map(|(name, table_oid, column, type_oid, type_size, type_modifier, format)| Column {
                name,
                table_oid: *table_oid,
                column: *column,
                type_oid: *type_oid,
                type_size: *type_size,
                type_modifier: *type_modifier,
                format: *format,
            })
            .collect();
        let m = written(|out| backend::write_row_description(out, &columns));
        prop_assert_eq!(m.tag, be::ROW_DESCRIPTION);
        prop_assert_eq!(backend::parse_row_description(&m.body), Ok(columns));
    }

    /// The text columns of pgvigil's own results, in the formats a Bind asked for.
    #[test]
    fn text_row_description(names in vec(text(), 0..6), formats in vec(0i16..=1, 0..6)) {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let m = written(|out| backend::write_text_row_description_in(out, &names, &formats));
        let columns = backend::parse_row_description(&m.body).unwrap_or_else(|e| panic!("{e}"));
        let read: Vec<&str> = columns.iter().map(|c| c.name).collect();
        prop_assert_eq!(read, names);
        prop_assert!(columns.iter().all(|c| c.type_oid == backend::TEXT_OID));
        if let [one] = formats[..] {
            prop_assert!(columns.iter().all(|c| c.format == one));
        }
    }

    #[test]
    fn data_row(values in vec(option::of(bytes()), 0..8)) {
        let m = written(|out| backend::write_data_row(out, &values));
        prop_assert_eq!(m.tag, be::DATA_ROW);
        let expected: Vec<Option<&[u8]>> = values.iter().map(Option::as_deref).collect();
        prop_assert_eq!(backend::parse_data_row(&m.body), Ok(expected));
    }

    #[test]
    fn negotiate_protocol_version(newest_minor in 0..=0xffffi32, options in vec(text(), 0..6)) {
        let m = written(|out| backend::write_negotiate_protocol_version(out, newest_minor, &options));
        prop_assert_eq!(m.tag, be::NEGOTIATE_PROTOCOL_VERSION);
        let expected: Vec<&str> = options.iter().map(String::as_str).collect();
        prop_assert_eq!(backend::parse_negotiate_protocol_version(&m.body), Ok((newest_minor, expected)));
    }

    #[test]
    fn parameter_description(types in vec(any::<u32>(), 0..16)) {
        let m = written(|out| backend::write_parameter_description(out, &types));
        prop_assert_eq!(m.tag, be::PARAMETER_DESCRIPTION);
        prop_assert_eq!(backend::parse_parameter_description(&m.body), Ok(types));
    }

    #[test]
    fn notification_response(pid in any::<i32>(), channel in text(), payload in text()) {
        let m = written(|out| backend::write_notification(out, pid, &channel, &payload));
        prop_assert_eq!(m.tag, be::NOTIFICATION_RESPONSE);
        prop_assert_eq!(backend::parse_notification(&m.body), Ok((pid, channel.as_str(), payload.as_str())));
    }

    /// CopyInResponse, CopyOutResponse and CopyBothResponse.
    #[test]
    fn copy_responses(
        tag in prop_oneof![Just(be::COPY_IN_RESPONSE), Just(be::COPY_OUT_RESPONSE), Just(be::COPY_BOTH_RESPONSE)],
        format in any::<u8>(),
        column_formats in vec(any::<i16>(), 0..8),
    ) {
        let c = CopyResponse { format, column_formats };
        let m = written(|out| c.write(out, tag));
        prop_assert_eq!(m.tag, tag);
        prop_assert_eq!(CopyResponse::decode(&m.body), Ok(c));
    }

    /// CopyData and CopyDone (the same both ways), CopyFail.
    #[test]
    fn copy_stream(data in bytes(), reason in text()) {
        let mut out = BytesMut::new();
        frontend::write_copy_data(&mut out, &data);
        frontend::write_copy_done(&mut out);
        frontend::write_copy_fail(&mut out, &reason);
        let d = take_message(&mut out, 1 << 20).ok().flatten().unwrap_or_else(|| panic!("no CopyData"));
        let done = take_message(&mut out, 1 << 20).ok().flatten().unwrap_or_else(|| panic!("no CopyDone"));
        let fail = only(&mut out);
        prop_assert_eq!((d.tag, &d.body[..]), (fe::COPY_DATA, data.as_slice()));
        prop_assert_eq!((be::COPY_DATA, be::COPY_DONE), (fe::COPY_DATA, fe::COPY_DONE));
        prop_assert_eq!((done.tag, done.body.len()), (fe::COPY_DONE, 0));
        prop_assert_eq!(fail.tag, fe::COPY_FAIL);
        prop_assert_eq!(frontend::parse_copy_fail(&fail.body), Ok(reason.as_str()));
    }

    #[test]
    fn function_call(
        function in any::<u32>(),
        arg_formats in vec(any::<i16>(), 0..4),
        args in vec(option::of(bytes()), 0..6),
        result_format in any::<i16>(),
    ) {
        let f = FunctionCall { function, arg_formats, args: args.iter().map(Option::as_deref).collect(), result_format };
        let m = written(|out| f.write(out));
        prop_assert_eq!(m.tag, fe::FUNCTION_CALL);
        prop_assert_eq!(FunctionCall::decode(&m.body), Ok(f));
    }

    #[test]
    fn function_call_response(result in option::of(bytes())) {
        let m = written(|out| backend::write_function_call_response(out, result.as_deref()));
        prop_assert_eq!(m.tag, be::FUNCTION_CALL_RESPONSE);
        prop_assert_eq!(backend::parse_function_call_response(&m.body), Ok(result.as_deref()));
    }

    /// ParseComplete, BindComplete, CloseComplete, NoData, EmptyQueryResponse…: a tag
    /// and no body.
    #[test]
    fn empty_messages(tag in prop_oneof![Just(be::PARSE_COMPLETE), Just(be::BIND_COMPLETE), Just(be::CLOSE_COMPLETE), Just(be::NO_DATA), Just(be::EMPTY_QUERY_RESPONSE), Just(be::PORTAL_SUSPENDED)]) {
        let m = written(|out| backend::write_empty(out, tag));
        prop_assert_eq!((m.tag, m.body.len()), (tag, 0));
    }

    /// Frontend messages without a body.
    #[test]
    fn sync_flush_terminate(which in 0..3u8) {
        let mut out = BytesMut::new();
        let tag = match which {
            0 => { frontend::write_sync(&mut out); fe::SYNC }
            1 => { frontend::write_flush(&mut out); fe::FLUSH }
            _ => { frontend::write_terminate(&mut out); fe::TERMINATE }
        };
        let m = only(&mut out);
        prop_assert_eq!((m.tag, m.body.len()), (tag, 0));
    }

    // ---- framing limits ------------------------------------------------------------

    /// A declared length over the limit is refused before anything is reserved for it,
    /// whatever part of the message has arrived; under the limit, at most the message
    /// is reserved.
    #[test]
    fn take_message_reserves_at_most_the_limit(
        tag in any::<u8>(),
        declared in prop_oneof![any::<u32>(), 0u32..=(1 << 20) + 64],
        limit in 1024u64..=(1 << 20),
        arrived in bytes(),
    ) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&declared.to_be_bytes());
        buf.extend_from_slice(&arrived);
        let before = buf.capacity();
        match take_message(&mut buf, limit) {
            Err(ProtocolError::TooLarge { .. }) | Err(ProtocolError::BadLength(_)) => {
                prop_assert!(u64::from(declared) > limit || declared < 4);
                prop_assert_eq!(buf.capacity(), before);
            }
            Err(e) => panic!("{e}"),
            Ok(None) => prop_assert!(buf.capacity() <= before.max(2 * (limit as usize + 1)), "{} reserved", buf.capacity()),
            Ok(Some(m)) => prop_assert_eq!(m.body.len() + 4, declared as usize),
        }
    }

    #[test]
    fn startup_packet_reserves_at_most_the_limit(declared in prop_oneof![any::<u32>(), 0..=MAX_STARTUP_PACKET + 64], arrived in bytes()) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&declared.to_be_bytes());
        buf.extend_from_slice(&arrived);
        let before = buf.capacity();
        match take_startup_packet(&mut buf) {
            Err(_) if !(8..=MAX_STARTUP_PACKET).contains(&declared) => prop_assert_eq!(buf.capacity(), before),
            Ok(None) => prop_assert!(buf.capacity() <= before.max(2 * MAX_STARTUP_PACKET as usize)),
            _ => {}
        }
    }
}

#[test]
fn a_gigabyte_message_is_refused_without_reserving_memory() {
    let mut buf = BytesMut::with_capacity(5);
    buf.extend_from_slice(b"Q");
    buf.extend_from_slice(&(1u32 << 30).to_be_bytes());
    assert_eq!(take_message(&mut buf, 1 << 20), Err(ProtocolError::TooLarge { len: 1 << 30, max: 1 << 20 }));
    assert_eq!(buf.capacity(), 5);
    assert_eq!(frame::parse_header(&buf, 1 << 20), Err(ProtocolError::TooLarge { len: 1 << 30, max: 1 << 20 }));
}

#[test]
fn gssenc_request_round_trip() {
    let mut out = BytesMut::new();
    startup::write_gssenc_request(&mut out);
    assert_eq!(take_startup_packet(&mut out), Ok(Some(StartupPacket::GssEncRequest)));
    assert!(out.is_empty());
}

/// Counts and lengths that point past the body are errors, not allocations or panics.
#[test]
fn counts_beyond_the_body_are_refused() {
    // NegotiateProtocolVersion declaring 2^31-1 options in an 8-byte body.
    assert!(backend::parse_negotiate_protocol_version(&[0, 3, 0, 0, 0x7f, 0xff, 0xff, 0xff]).is_err());
    assert!(backend::parse_negotiate_protocol_version(&[0, 2, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(backend::parse_parameter_description(&[0x7f, 0xff, 0, 0, 0, 1]).is_err());
    assert!(backend::parse_function_call_response(&[0xff, 0xff, 0xff, 0xfe]).is_err());
    assert!(backend::parse_function_call_response(&[0, 0, 1, 0, 1]).is_err());
    assert!(CopyResponse::decode(&[0, 0xff, 0xff]).is_err());
    assert!(FunctionCall::decode(&[0, 0, 0, 1, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff]).is_err());
}

#[test]
fn ssl_request_round_trip() {
    let mut out = BytesMut::new();
    startup::write_ssl_request(&mut out);
    assert_eq!(take_startup_packet(&mut out), Ok(Some(StartupPacket::SslRequest)));
    assert!(out.is_empty());
}
