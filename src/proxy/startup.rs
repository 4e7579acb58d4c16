//! The startup phase: SSL/GSS requests, cancel requests, the StartupMessage and version
//! negotiation, up to (not including) authentication.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::ClientStream;

use super::Shared;
use crate::protocol::backend::{write_negotiate_protocol_version, PgError};
use crate::protocol::sqlstate;
use crate::protocol::startup::{take_startup_packet, Startup, StartupPacket};
use crate::protocol::ProtocolError;
use crate::tls::{ServerTls, ALPN_POSTGRESQL};

/// How the startup phase ended.
pub enum Opening {
    /// A session wants to start.
    Session(Startup),
    /// A cancel request was handled; close the connection.
    Cancelled,
    /// The client left, or sent nothing usable; close silently.
    Gone,
    /// Tell the client this, then close.
    Reject(PgError),
}

/// The first byte of a TLS handshake record: a direct TLS connection (PostgreSQL 17's
/// `sslnegotiation=direct`) starts with it, a startup packet never does (its length
/// would exceed the startup packet limit).
const TLS_HANDSHAKE: u8 = 0x16;

/// Reads startup packets until a StartupMessage or CancelRequest arrives. With `tls`, an
/// SSLRequest over TCP is answered 'S' and a direct TLS handshake is accepted.
pub async fn read_opening(stream: &mut ClientStream, buf: &mut BytesMut, shared: &Shared, tls: Option<&ServerTls>) -> Opening {
    let mut answered_ssl = false;
    let mut answered_gss = false;
    if let (Some(tls), Some(tcp)) = (tls, stream.plain_tcp()) {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(1) if first[0] == TLS_HANDSHAKE => {
                if stream.upgrade(&tls.acceptor).await.is_err() {
                    return Opening::Gone;
                }
                if stream.alpn() != Some(ALPN_POSTGRESQL) {
                    return Opening::Reject(PgError::protocol_violation(
                        "received direct TLS connection request without ALPN protocol negotiation extension",
                    ));
                }
                answered_ssl = true;
            }
            Ok(_) => {}
            Err(_) => return Opening::Gone,
        }
    }
    loop {
        let packet = match take_startup_packet(buf) {
            Ok(Some(p)) => p,
            Ok(None) => match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return Opening::Gone,
                Ok(_) => continue,
            },
            Err(ProtocolError::BadLength(_)) => {
                return Opening::Reject(PgError::protocol_violation("invalid length of startup packet"))
            }
            Err(e) => return Opening::Reject(PgError::protocol_violation(e.to_string())),
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let first = if matches!(packet, StartupPacket::SslRequest) { &mut answered_ssl } else { &mut answered_gss };
                if std::mem::replace(first, true) {
                    return Opening::Reject(PgError::protocol_violation("unsupported frontend protocol: duplicate encryption request"));
                }
                if !buf.is_empty() {
                    // Bytes after an encryption request, before our answer: a buffer-stuffing attempt.
                    return Opening::Reject(PgError::protocol_violation("received unencrypted data after SSL request"));
                }
                // TLS over TCP only: on a Unix socket PostgreSQL answers 'N' too.
                match tls {
                    Some(tls) if matches!(packet, StartupPacket::SslRequest) && stream.plain_tcp().is_some() => {
                        if stream.write_all(b"S").await.is_err() || stream.upgrade(&tls.acceptor).await.is_err() {
                            return Opening::Gone;
                        }
                    }
                    _ => {
                        if stream.write_all(b"N").await.is_err() {
                            return Opening::Gone;
                        }
                    }
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                shared.cancels.cancel(pid, secret, shared.pools.settings().connect_timeout, shared.pools.tls()).await;
                return Opening::Cancelled;
            }
            StartupPacket::Startup(s) => return check_version(stream, s).await,
        }
    }
}

/// Accepts protocol 3.x; answers NegotiateProtocolVersion for newer minors or `_pq_` options.
async fn check_version(stream: &mut ClientStream, startup: Startup) -> Opening {
    if startup.major != 3 {
        return Opening::Reject(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("unsupported frontend protocol {}.{}: server supports 3.0 to 3.0", startup.major, startup.minor),
        ));
    }
    let options = startup.protocol_options();
    if startup.minor > 0 || !options.is_empty() {
        let mut out = BytesMut::new();
        write_negotiate_protocol_version(&mut out, 0, &options);
        if stream.write_all(&out).await.is_err() {
            return Opening::Gone;
        }
    }
    if startup.param("user").is_none_or(str::is_empty) {
        return Opening::Reject(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    }
    if startup.param("replication").is_some_and(|v| v != "false" && v != "off" && v != "0" && v != "no") {
        return Opening::Reject(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "pgvigil does not proxy replication connections; connect to the PostgreSQL server directly",
        ));
    }
    Opening::Session(startup)
}
