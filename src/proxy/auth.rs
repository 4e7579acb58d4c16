//! Client authentication: trust, md5 and SCRAM-SHA-256 against the users file, and TLS
//! client certificates (`cert`).
//!
//! The result is the credential pgvigil presents to backends for this session: the
//! plaintext password or md5 hash from the users file, or — when the file holds only a
//! SCRAM verifier — the ClientKey recovered from the client's own proof.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use super::stream::ClientStream;
use super::access::ClientAuth;
use super::Reloadable;
use crate::config::UserSecret;
use crate::pool::BackendCredential;
use crate::protocol::backend::{self, PgError, AUTH_MD5, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL};
use crate::protocol::frame::{self, fe};
use crate::protocol::md5::{md5_password_hash, md5_salted_response};
use crate::protocol::scram::{ct_eq, ScramError, ScramVerifier, ServerExchange, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use crate::protocol::{frontend, sqlstate};

/// PostgreSQL's limit on an authentication message (PG_MAX_AUTH_TOKEN_LENGTH).
const MAX_AUTH_MESSAGE: u64 = 65_535;

/// How authentication ended, when it did not succeed.
pub enum AuthFailure {
    /// Tell the client this, then close.
    Reject(PgError),
    /// As `Reject`, with the reason for the log, which the client is not told.
    Refuse { error: PgError, reason: String },
    /// The client went away.
    Disconnected,
}

impl From<std::io::Error> for AuthFailure {
    fn from(_: std::io::Error) -> Self {
        AuthFailure::Disconnected
    }
}

/// Authenticates `user` on `stream` by `method`; on success returns the backend
/// credential. Over TLS, SCRAM-SHA-256-PLUS is offered too, bound to pgvigil's
/// certificate. `cert` (like `trust`) presents the users file's entry to backends.
pub async fn authenticate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    method: ClientAuth,
    settings: &Reloadable,
    mock_secret: &[u8; 32],
) -> Result<BackendCredential, AuthFailure> {
    let secret = settings.users.get(user);
    // As PostgreSQL: md5 for a user whose password is stored as a SCRAM verifier (which
    // cannot check an md5 answer) runs SCRAM-SHA-256 instead.
    let method = match (method, secret) {
        (ClientAuth::Md5, Some(UserSecret::Scram(_))) => ClientAuth::ScramSha256,
        (m, _) => m,
    };
    let stored = || match secret {
        Some(UserSecret::Plain(p)) => BackendCredential::Password(p.clone()),
        Some(UserSecret::Md5(h)) => BackendCredential::Md5(h.clone()),
        Some(UserSecret::Scram(_)) | None => BackendCredential::None,
    };
    match method {
        ClientAuth::Trust => Ok(stored()),
        ClientAuth::Cert => check_certificate(stream, user).map(|()| stored()),
        ClientAuth::Md5 => {
            let salt: [u8; 4] = rand::random();
            let mut out = BytesMut::new();
            backend::write_auth(&mut out, AUTH_MD5, &salt);
            stream.write_all(&out).await?;
            let body = read_password_message(stream, buf).await?;
            let answer = frontend::parse_password(&body).map_err(|_| violation("invalid password packet size"))?;
            let expected = match secret {
                Some(UserSecret::Plain(p)) => Some(md5_salted_response(&md5_password_hash(user, p), salt)),
                Some(UserSecret::Md5(h)) => Some(md5_salted_response(h, salt)),
                _ => None,
            };
            match expected {
                Some(e) if ct_eq(e.as_bytes(), answer.as_bytes()) => Ok(stored()),
                _ => Err(AuthFailure::Reject(PgError::password_failed(user))),
            }
        }
        ClientAuth::ScramSha256 => {
            let (verifier, known) = match secret {
                Some(UserSecret::Scram(v)) => (v.clone(), true),
                Some(UserSecret::Plain(p)) => (cached_verifier(settings, user, p), true),
                _ => (ScramVerifier::mock(user, mock_secret), false),
            };
            if matches!(secret, Some(UserSecret::Md5(_))) {
                tracing::warn!(user, "user has only an md5 hash in the users file, which scram-sha-256 cannot verify");
            }
            let binding = match (&settings.tls, stream.is_tls()) {
                (Some(tls), true) => Some(tls.end_point.clone()),
                _ => None,
            };
            let client_key = scram_exchange(stream, buf, user, verifier.clone(), binding).await?;
            if !known {
                return Err(AuthFailure::Reject(PgError::password_failed(user)));
            }
            Ok(match secret {
                Some(UserSecret::Scram(_)) => BackendCredential::ScramKey { client_key, verifier },
                _ => stored(),
            })
        }
    }
}

/// `cert`: the client presented a certificate (which the TLS handshake verified against
/// `tls.ca_file`) whose subject CN is `user`, as PostgreSQL's `clientcert=verify-full`.
fn check_certificate(stream: &ClientStream, user: &str) -> Result<(), AuthFailure> {
    let refuse = |message: String, reason: String| {
        Err(AuthFailure::Refuse { error: PgError::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, message), reason })
    };
    let Some(cert) = stream.peer_certificate() else {
        return refuse("connection requires a valid client certificate".into(), "no client certificate".into());
    };
    match crate::tls::subject_common_name(cert) {
        Some(cn) if cn == user => Ok(()),
        Some(cn) => refuse(
            format!("certificate authentication failed for user \"{user}\""),
            format!("the client certificate's CN {cn:?} is not the user name"),
        ),
        None => refuse(
            format!("certificate authentication failed for user \"{user}\""),
            "the client certificate has no usable CN".into(),
        ),
    }
}

fn cached_verifier(settings: &Reloadable, user: &str, password: &str) -> ScramVerifier {
    let mut cache = settings.scram_cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(user.to_string()).or_insert_with(|| ScramVerifier::generate(password)).clone()
}

/// Runs the SCRAM exchange; returns the ClientKey the client proved it has. `binding`:
/// the connection's `tls-server-end-point` data, when it is TLS.
async fn scram_exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    user: &str,
    verifier: ScramVerifier,
    binding: Option<Vec<u8>>,
) -> Result<[u8; 32], AuthFailure> {
    let mut out = BytesMut::new();
    let offered: &[&str] = if binding.is_some() { &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256] } else { &[SCRAM_SHA_256] };
    backend::write_auth_sasl(&mut out, offered);
    stream.write_all(&out).await?;
    let body = read_password_message(stream, buf).await?;
    let (mechanism, data) =
        frontend::parse_sasl_initial_response(&body).map_err(|_| violation("malformed SASL initial response"))?;
    if !offered.contains(&mechanism) {
        return Err(violation("client selected an invalid SASL authentication mechanism"));
    }
    let mut exchange = match binding {
        Some(data) => ServerExchange::with_channel_binding(verifier, data, mechanism == SCRAM_SHA_256_PLUS),
        None => ServerExchange::new(verifier),
    };
    let server_first = exchange.handle_client_first(data).map_err(|e| scram_failure(user, e))?;
    out.clear();
    backend::write_auth(&mut out, AUTH_SASL_CONTINUE, &server_first);
    stream.write_all(&out).await?;
    let body = read_password_message(stream, buf).await?;
    let done = exchange.handle_client_final(&body).map_err(|e| scram_failure(user, e))?;
    out.clear();
    backend::write_auth(&mut out, AUTH_SASL_FINAL, &done.server_final);
    stream.write_all(&out).await?;
    Ok(done.client_key)
}

fn scram_failure(user: &str, e: ScramError) -> AuthFailure {
    AuthFailure::Reject(match e {
        ScramError::BadProof => PgError::password_failed(user),
        other => PgError::protocol_violation(format!("malformed SCRAM message: {other}")),
    })
}

fn violation(message: &str) -> AuthFailure {
    AuthFailure::Reject(PgError::protocol_violation(message))
}

/// Reads the client's next message, which must be a PasswordMessage ('p').
async fn read_password_message(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<bytes::Bytes, AuthFailure> {
    loop {
        match frame::take_message(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(m)) if m.tag == fe::PASSWORD => return Ok(m.body),
            Ok(Some(m)) if m.tag == fe::TERMINATE => return Err(AuthFailure::Disconnected),
            Ok(Some(m)) => {
                return Err(AuthFailure::Reject(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("expected password response, got message type {}", m.tag),
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(AuthFailure::Reject(PgError::protocol_violation(e.to_string()))),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(AuthFailure::Disconnected);
        }
    }
}
