//! Entry points of the fuzz targets in `fuzz/`, not an API. Each runs arbitrary input
//! through one of pgvigil's decoders the way pgvigil runs it, and panics only where an
//! invariant breaks: a decoder panicked, a message that decodes does not encode back to
//! the same bytes, or a packet split in two reads differently. The unit tests below run
//! the committed corpora and every input a fuzzer ever crashed on.

use std::path::Path;

use bytes::BytesMut;

use crate::config::{Config, UsersFile};
use crate::pool::server::record_parameter;
use crate::protocol::backend;
use crate::protocol::frame::{self, be, fe, parse_header, take_message, Message};
use crate::protocol::scram::{ClientCredential, ClientExchange, ScramVerifier, ServerExchange, ServerStep};
use crate::protocol::startup::{self, take_startup_packet, StartupPacket};
use crate::protocol::{frontend, ProtocolError};
use crate::proxy::link::{demote_fatal, error_severity, needed, Answers, Event, Expect, Pending};
use crate::proxy::request::Request;
use crate::proxy::show::Command;
use crate::proxy::stats::ErrorSeverity;
use crate::router::{final_kind, ClassifierCache, FunctionPolicy};

/// Startup packets: the first byte says where the rest is cut in two reads.
pub fn startup_packets(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else { return };
    let whole = read_startup_packets(stream, stream.len());
    let split = read_startup_packets(stream, usize::from(cut) % (stream.len() + 1));
    assert_eq!(whole, split, "the same bytes in two reads read differently");
}

fn read_startup_packets(stream: &[u8], cut: usize) -> Vec<Result<StartupPacket, ProtocolError>> {
    let mut buf = BytesMut::from(&stream[..cut]);
    let mut later = &stream[cut..];
    let mut packets = Vec::new();
    loop {
        let before = buf.clone();
        match take_startup_packet(&mut buf) {
            Ok(Some(p)) => {
                let consumed = before.len() - buf.len();
                assert_reencodes_startup(&p, &before[..consumed]);
                packets.push(Ok(p));
            }
            Ok(None) => {
                assert_eq!(buf, before, "an incomplete packet is left where it was");
                if later.is_empty() {
                    return packets;
                }
                buf.extend_from_slice(later);
                later = &[];
            }
            Err(e) => {
                packets.push(Err(e));
                return packets;
            }
        }
    }
}

fn assert_reencodes_startup(p: &StartupPacket, wire: &[u8]) {
    let mut out = BytesMut::new();
    match p {
        StartupPacket::Startup(s) if s.major == 3 => {
            startup::write_startup(&mut out, &s.params);
            out[6..8].copy_from_slice(&s.minor.to_be_bytes());
        }
        StartupPacket::SslRequest => startup::write_ssl_request(&mut out),
        StartupPacket::Cancel { pid, secret } => startup::write_cancel(&mut out, *pid, *secret),
        // Other versions' parameters are not read; GSSENCRequest is never written.
        StartupPacket::Startup(_) | StartupPacket::GssEncRequest => return,
    }
    assert_eq!(&out[..], wire, "{p:?} encodes back to other bytes");
}

/// Client messages framed with a limit (the first byte: the limit in 256-byte steps),
/// each decoded as a session and the authentication exchange decode it.
pub fn client_messages(data: &[u8]) {
    let Some((&limit, stream)) = data.split_first() else { return };
    let max = u64::from(limit) * 256 + 4;
    each_message(stream, max, |m| {
        let wire = reframe(&m);
        let request = Request::decode(m.tag, &m.body);
        let mut out = BytesMut::new();
        match m.tag {
            fe::QUERY => {
                if let Ok(sql) = frontend::parse_query(&m.body) {
                    assert_eq!(request, Ok(Request::Query(sql)));
                    frontend::write_query(&mut out, sql);
                }
            }
            fe::PARSE => {
                if let Ok(p) = frontend::Parse::decode(&m.body) {
                    assert_eq!(request, Ok(Request::Parse { name: p.name, sql: p.query }));
                    p.write(&mut out);
                }
            }
            fe::BIND => {
                if let Ok(b) = frontend::Bind::decode(&m.body) {
                    assert_eq!(request, Ok(Request::Bind { portal: b.portal, statement: b.statement }));
                    b.write(&mut out);
                }
            }
            fe::DESCRIBE | fe::CLOSE => {
                if let Ok((kind, name)) = frontend::parse_describe_or_close(&m.body) {
                    if m.tag == fe::DESCRIBE {
                        assert_eq!(request, Ok(Request::Describe { kind, name }));
                        frontend::write_describe(&mut out, kind, name);
                    } else {
                        assert_eq!(request, Ok(Request::Close { kind, name }));
                        frontend::write_close(&mut out, kind, name);
                    }
                }
            }
            fe::EXECUTE => {
                if let Ok((portal, max_rows)) = frontend::parse_execute(&m.body) {
                    assert_eq!(request, Ok(Request::Execute { portal, max_rows }));
                    frontend::write_execute(&mut out, portal, max_rows);
                }
            }
            fe::PASSWORD => {
                if let Ok(password) = frontend::parse_password(&m.body) {
                    frontend::write_password(&mut out, password);
                    assert_eq!(&out[..], &wire[..]);
                }
                if let Ok((mechanism, initial)) = frontend::parse_sasl_initial_response(&m.body) {
                    // A length of -1 (no initial response) comes back as 0: compare decoded.
                    let mut again = BytesMut::new();
                    frontend::write_sasl_initial_response(&mut again, mechanism, initial);
                    let again = take_message(&mut again, u64::MAX).ok().flatten().map(|m| m.body);
                    let decoded = again.as_deref().map(frontend::parse_sasl_initial_response);
                    assert_eq!(decoded, Some(Ok((mechanism, initial))));
                }
                return;
            }
            fe::FUNCTION_CALL => {
                if let Ok(f) = frontend::FunctionCall::decode(&m.body) {
                    f.write(&mut out);
                }
            }
            fe::COPY_DATA => frontend::write_copy_data(&mut out, &m.body),
            fe::COPY_DONE if m.body.is_empty() => frontend::write_copy_done(&mut out),
            fe::COPY_FAIL => {
                if let Ok(reason) = frontend::parse_copy_fail(&m.body) {
                    frontend::write_copy_fail(&mut out, reason);
                }
            }
            _ => return,
        }
        if !out.is_empty() {
            assert_eq!(&out[..], &wire[..], "{:?} encodes back to other bytes", m.tag as char);
        }
    });
}

/// Takes messages off `stream` as the session does (in two reads, cut in the middle),
/// checking that a declared length over `max` is refused before memory is reserved.
fn each_message(stream: &[u8], max: u64, mut f: impl FnMut(Message)) {
    let half = stream.len() / 2;
    let mut buf = BytesMut::from(&stream[..half]);
    let mut later = &stream[half..];
    loop {
        match take_message(&mut buf, max) {
            Ok(Some(m)) => f(m),
            Ok(None) => {
                // Room for one whole message at most, beyond what had arrived.
                let bound = 2 * (stream.len() + max as usize + 5);
                assert!(buf.capacity() <= bound, "reserved {} bytes with a limit of {max}", buf.capacity());
                if later.is_empty() {
                    return;
                }
                buf.extend_from_slice(later);
                later = &[];
            }
            Err(_) => return,
        }
    }
}

fn reframe(m: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    let at = frame::begin(&mut out, m.tag);
    out.extend_from_slice(&m.body);
    frame::finish(&mut out, at);
    out.to_vec()
}

/// Server messages as a session's server connection walks them: the first byte counts
/// the requests sent (up to 15), one byte each says which (and whether pgvigil injected
/// it); the rest is what the server answered.
pub fn server_messages(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 16).min(rest.len());
    let (requests, stream) = rest.split_at(n);
    let kinds = [
        Expect::Parse,
        Expect::Bind,
        Expect::DescribeStatement,
        Expect::DescribePortal,
        Expect::Execute,
        Expect::Close,
        Expect::Ready,
    ];
    let mut answers = Answers::default();
    for (unit, &r) in requests.iter().enumerate() {
        let what = kinds[usize::from(r & 0x7f) % kinds.len()];
        answers.expect.push_back(Pending { what, injected: r & 0x80 != 0, unit: unit as u64 });
    }
    let mut params = Vec::new();
    let mut pos = 0;
    while let Ok(Some(header)) = parse_header(&stream[pos..], i32::MAX as u64) {
        let total = header.frame_len();
        let avail = stream.len() - pos;
        let need = needed(header.tag, total);
        if avail < need {
            break;
        }
        let msg = &stream[pos..pos + need];
        if header.tag == be::PARAMETER_STATUS && need == total {
            let _ = record_parameter(&mut params, &msg[5..]);
        }
        let severity = (header.tag == be::ERROR_RESPONSE).then(|| error_severity(msg));
        let (_, event) = answers.on_message(header.tag, msg);
        if event == Some(Event::Fatal) && need == total {
            let mut demoted = msg.to_vec();
            if demote_fatal(&mut demoted) {
                assert_eq!(error_severity(&demoted), ErrorSeverity::Error, "a demoted FATAL still reads as {severity:?}");
            }
        }
        if avail >= total {
            decode_server_message(header.tag, &stream[pos + 5..pos + total]);
        }
        pos += total.min(avail);
    }
}

/// The decoders of the server connection's startup and of pgvigil's own queries; what
/// decodes must encode back the same (or decode the same, where trailing bytes are
/// ignored).
fn decode_server_message(tag: u8, body: &[u8]) {
    let wire = reframe(&Message { tag, body: bytes::Bytes::copy_from_slice(body) });
    let mut out = BytesMut::new();
    match tag {
        be::ERROR_RESPONSE | be::NOTICE_RESPONSE => {
            if let Ok(e) = backend::parse_error_fields(body) {
                // What pgvigil keeps of an error survives being written and read again.
                let again = decoded_again(&e, write_server_error, backend::parse_error_fields);
                assert_eq!(again, Ok(e));
            }
            return;
        }
        be::NEGOTIATE_PROTOCOL_VERSION => {
            if let Ok((minor, options)) = backend::parse_negotiate_protocol_version(body) {
                let options: Vec<String> = options.into_iter().map(String::from).collect();
                backend::write_negotiate_protocol_version(&mut out, minor, &options);
            }
        }
        be::PARAMETER_DESCRIPTION => {
            if let Ok(types) = backend::parse_parameter_description(body) {
                backend::write_parameter_description(&mut out, &types);
            }
        }
        be::NOTIFICATION_RESPONSE => {
            if let Ok((pid, channel, payload)) = backend::parse_notification(body) {
                backend::write_notification(&mut out, pid, channel, payload);
            }
        }
        be::COPY_IN_RESPONSE | be::COPY_OUT_RESPONSE | be::COPY_BOTH_RESPONSE => {
            if let Ok(c) = backend::CopyResponse::decode(body) {
                c.write(&mut out, tag);
            }
        }
        be::FUNCTION_CALL_RESPONSE => {
            if let Ok(result) = backend::parse_function_call_response(body) {
                backend::write_function_call_response(&mut out, result);
            }
        }
        be::AUTHENTICATION => {
            if let Ok(a) = backend::parse_auth(body) {
                assert_eq!(decoded_again(&a, |a, out| a.write(out), backend::parse_auth), Ok(a));
            }
            return;
        }
        be::PARAMETER_STATUS => {
            if let Ok((name, value)) = backend::parse_parameter_status(body) {
                let again = decoded_again(&(name.as_str(), value.as_str()), |(n, v), out| backend::write_parameter_status(out, n, v), backend::parse_parameter_status);
                assert_eq!(again, Ok((name, value)));
            }
            return;
        }
        be::BACKEND_KEY_DATA => {
            if let Ok(key) = backend::parse_backend_key_data(body) {
                assert_eq!(decoded_again(&key, |(pid, secret), out| backend::write_backend_key_data(out, *pid, *secret), backend::parse_backend_key_data), Ok(key));
            }
            return;
        }
        be::READY_FOR_QUERY => {
            if let Ok(status) = backend::parse_ready_for_query(body) {
                backend::write_ready_for_query(&mut out, status);
            }
        }
        be::COMMAND_COMPLETE => {
            if let Ok(tag) = backend::parse_command_complete(body) {
                backend::write_command_complete(&mut out, tag);
            }
        }
        be::ROW_DESCRIPTION => {
            if let Ok(columns) = backend::parse_row_description(body) {
                backend::write_row_description(&mut out, &columns);
            }
        }
        be::DATA_ROW => {
            if let Ok(values) = backend::parse_data_row(body) {
                backend::write_data_row(&mut out, &values);
            }
        }
        _ => return,
    }
    if !out.is_empty() {
        assert_eq!(&out[..], &wire[..], "{:?} encodes back to other bytes", tag as char);
    }
}

/// An ErrorResponse with the fields of `e` that are set.
fn write_server_error(e: &backend::ServerError, out: &mut BytesMut) {
    let at = frame::begin(out, be::ERROR_RESPONSE);
    let fields = [(b'V', Some(&e.severity)), (b'C', Some(&e.code)), (b'M', Some(&e.message)), (b'D', e.detail.as_ref()), (b'H', e.hint.as_ref())];
    for (field, value) in fields {
        if let Some(v) = value {
            out.extend_from_slice(&[field]);
            frame::put_cstr(out, v);
        }
    }
    out.extend_from_slice(&[0]);
    frame::finish(out, at);
}

fn decoded_again<T, U>(value: &T, write: impl Fn(&T, &mut BytesMut), parse: impl Fn(&[u8]) -> U) -> U {
    let mut out = BytesMut::new();
    write(value, &mut out);
    let body = take_message(&mut out, u64::MAX).ok().flatten().map(|m| m.body).unwrap_or_default();
    parse(&body)
}

/// The password of the fuzzed exchanges' verifier, with one PBKDF2 iteration.
const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"fuzzsalt";
const CLIENT_NONCE: &str = "fyko+d2lbbFgONRv9qkxdawL";
const SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";

/// SCRAM-SHA-256. The first byte chooses the side and the start; the rest is split at
/// NUL bytes (never part of a SCRAM message) into the peer's messages:
/// - 0: pgvigil as server: client-first, client-final;
/// - 1: the same after a valid client-first: client-final;
/// - 2: as server with channel binding offered and SCRAM-SHA-256-PLUS selected;
/// - 3: pgvigil as client with the ClientKey of the verifier: server-first, server-final;
/// - 4: as client with the password (server-first messages asking more than 64
///   iterations are skipped: each costs a PBKDF2 run);
/// - 5: a verifier as stored in pg_authid.
pub fn scram(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut parts = rest.split(|&b| b == 0);
    let mut next = || parts.next().unwrap_or_default();
    let verifier = || ScramVerifier::from_password(PASSWORD, SALT, 1);
    match mode % 6 {
        0..=2 => {
            let mut server = ServerExchange::with_nonce(verifier(), SERVER_NONCE.into());
            if mode % 6 == 2 {
                server = server.bound(b"end-point".to_vec(), true);
            }
            let first = if mode % 6 == 1 { format!("n,,n=,r={CLIENT_NONCE}").into_bytes() } else { next().to_vec() };
            let step = server.handle_client_first(&first);
            assert_eq!(server.step(), if step.is_ok() { ServerStep::AwaitingClientFinal } else { ServerStep::Failed });
            let fin = server.handle_client_final(next());
            assert_eq!(server.step(), if fin.is_ok() { ServerStep::Done } else { ServerStep::Failed });
        }
        3 | 4 => {
            let cred = if mode % 6 == 3 {
                let v = verifier();
                ClientCredential::ClientKey { client_key: client_key(), verifier: v }
            } else {
                ClientCredential::Password(PASSWORD.into())
            };
            let mut client = ClientExchange::with_nonce(cred, CLIENT_NONCE.into(), String::new());
            let first = next();
            if mode % 6 == 4 && asks_many_iterations(first) {
                return;
            }
            if client.handle_server_first(first).is_ok() {
                let _ = client.handle_server_final(next());
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            if let Ok(v) = ScramVerifier::parse(text) {
                let again = ScramVerifier::parse(&v.to_pg_string()).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!((again.iterations, again.salt, again.stored_key, again.server_key), (v.iterations, v.salt, v.stored_key, v.server_key));
            }
        }
    }
}

/// The ClientKey of the fuzzed exchanges' password.
fn client_key() -> [u8; 32] {
    crate::protocol::scram::client_key(PASSWORD, SALT, 1)
}

fn asks_many_iterations(server_first: &[u8]) -> bool {
    let text = String::from_utf8_lossy(server_first);
    text.split(',').filter_map(|a| a.strip_prefix("i=")).any(|i| i.len() > 2)
}

/// The configuration and users-file loaders on arbitrary text: errors, never panics.
/// Only the checks that read no file run (the fuzzer's paths would name this
/// machine's files).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::parse(Path::new("fuzz.toml"), text) {
        let _ = config.check().map_err(|e| e.to_string());
        if let Some(w) = &config.watchdog {
            let _ = w.check(true);
        }
    }
    let _ = UsersFile::parse(Path::new("users.toml"), text).map_err(|e| e.to_string());
}

/// A simple Query's text through what the session does with it: the SHOW commands
/// pgvigil answers, the cached classifier, the pgvigil settings and the function
/// policy. The first byte nests the rest in that many times 40 parentheses.
pub fn classify(data: &[u8]) {
    let Some((&depth, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let depth = usize::from(depth) * 40;
    let sql = if depth == 0 { text.to_string() } else { format!("SELECT {}{text}{}", "(".repeat(depth), ")".repeat(depth)) };
    let _ = Command::parse(&sql);
    let cache = ClassifierCache::new(16);
    let c = cache.get_or_classify(&sql);
    let cached = cache.get_or_classify(&sql);
    assert_eq!((&c.kind, &c.reason), (&cached.kind, &cached.reason), "the cache answers differently");
    let _ = c.pgvigil_setting();
    let _ = final_kind(&c, &FunctionPolicy::default(), &|_| None);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Every committed input of a fuzz target: its seed corpus and the inputs it once
    /// crashed on.
    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut found = Vec::new();
        for dir in [fuzz.join("corpus").join(target), fuzz.join("regressions").join(target)] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let bytes = std::fs::read(e.path()).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
                found.push((e.path(), bytes));
            }
        }
        found
    }

    fn run_all(target: &str, f: fn(&[u8])) {
        let inputs = inputs(target);
        assert!(!inputs.is_empty(), "no committed inputs for {target}");
        for (path, bytes) in inputs {
            let r = std::panic::catch_unwind(|| f(&bytes));
            assert!(r.is_ok(), "{} fails", path.display());
        }
    }

    /// The SCRAM seeds are whole valid exchanges, so the fuzzer starts from the end.
    #[test]
    fn scram_seeds_complete_their_exchange() {
        let seed = |name: &str| {
            let (path, bytes) = inputs("scram").into_iter().find(|(p, _)| p.ends_with(name)).unwrap_or_else(|| panic!("no seed {name}"));
            let parts: Vec<Vec<u8>> = bytes[1..].split(|&b| b == 0).map(<[u8]>::to_vec).collect();
            assert!(!parts.is_empty(), "{}", path.display());
            parts
        };
        let verifier = || ScramVerifier::from_password(PASSWORD, SALT, 1);
        let s = seed("server_exchange");
        let mut server = ServerExchange::with_nonce(verifier(), SERVER_NONCE.into());
        server.handle_client_first(&s[0]).unwrap_or_else(|e| panic!("{e}"));
        server.handle_client_final(&s[1]).unwrap_or_else(|e| panic!("{e}"));
        let s = seed("server_channel_binding");
        let mut server = ServerExchange::with_nonce(verifier(), SERVER_NONCE.into()).bound(b"end-point".to_vec(), true);
        server.handle_client_first(&s[0]).unwrap_or_else(|e| panic!("{e}"));
        server.handle_client_final(&s[1]).unwrap_or_else(|e| panic!("{e}"));
        for (name, cred) in [
            ("client_with_client_key", ClientCredential::ClientKey { client_key: client_key(), verifier: verifier() }),
            ("client_with_password", ClientCredential::Password(PASSWORD.into())),
        ] {
            let s = seed(name);
            let mut client = ClientExchange::with_nonce(cred, CLIENT_NONCE.into(), String::new());
            client.handle_server_first(&s[0]).unwrap_or_else(|e| panic!("{name}: {e}"));
            client.handle_server_final(&s[1]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn committed_fuzz_inputs_pass() {
        run_all("startup_packet", startup_packets);
        run_all("frontend_messages", client_messages);
        run_all("backend_messages", server_messages);
        run_all("scram", scram);
        run_all("config", config);
        run_all("classify", classify);
    }
}
