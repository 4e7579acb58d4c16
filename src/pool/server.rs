//! One server connection: connect, authenticate to PostgreSQL, reset for reuse.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::registry::ConnRecord;
use crate::protocol::backend::{self, AuthRequest, ServerError};
use crate::protocol::frame::{self, be, Message};
use crate::protocol::md5::{md5_password_hash, md5_salted_response};
use crate::protocol::scram::{ClientCredential, ClientExchange, ScramVerifier, SCRAM_SHA_256};
use crate::protocol::{frontend, startup, ProtocolError};
use crate::tls::backend::{BackendTls, TlsError};
use crate::tls::stream::ServerStream;

/// Largest message accepted from a server outside of pass-through (startup and reset).
const MAX_SERVER_CONTROL_MESSAGE: u64 = 1 << 24;

/// What pgvigil can present to a backend that asks for a password.
#[derive(Clone, Default)]
pub enum BackendCredential {
    /// Nothing: only `trust` backends accept the session.
    #[default]
    None,
    /// A plaintext password: answers cleartext, md5 and SCRAM.
    Password(String),
    /// An md5 hash as stored in pg_authid: answers md5.
    Md5(String),
    /// The ClientKey learned from the client's SCRAM proof, with the verifier it matched.
    ScramKey { client_key: [u8; 32], verifier: ScramVerifier },
}

impl std::fmt::Debug for BackendCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendCredential::None => "None",
            BackendCredential::Password(_) => "Password(<redacted>)",
            BackendCredential::Md5(_) => "Md5(<redacted>)",
            BackendCredential::ScramKey { .. } => "ScramKey(<redacted>)",
        })
    }
}

/// Why a server connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("timed out connecting to {0}")]
    Timeout(SocketAddr),
    /// The server refused the session; `raw` is its ErrorResponse, to relay as is.
    #[error("server {addr} refused the session: {error}")]
    Server { addr: SocketAddr, error: Box<ServerError>, raw: Bytes },
    #[error("server {addr} asks for {method} authentication, but pgvigil has no usable secret for user \"{user}\"")]
    NoCredential { addr: SocketAddr, method: &'static str, user: String },
    #[error("SCRAM authentication to {addr} failed: {reason}")]
    Scram { addr: SocketAddr, reason: String },
    #[error("server {addr} broke the protocol: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    #[error("TLS to {addr}: {source}")]
    Tls { addr: SocketAddr, source: TlsError },
}

/// A TCP connection to backend `backend` at `addr`, with TLS as `tls` says.
async fn open(backend: usize, addr: SocketAddr, tls: &BackendTls) -> Result<ServerStream, ConnectError> {
    let tcp = TcpStream::connect(addr).await.map_err(|source| ConnectError::Io { addr, source })?;
    let _ = tcp.set_nodelay(true);
    tls.negotiate(backend, tcp).await.map_err(|e| match e {
        TlsError::Io(source) => ConnectError::Io { addr, source },
        source => ConnectError::Tls { addr, source },
    })
}

/// Records a ParameterStatus body in `params`, replacing an earlier value of that name.
pub fn record_parameter(params: &mut Vec<(String, String)>, body: &[u8]) -> Result<(), ProtocolError> {
    let (name, value) = backend::parse_parameter_status(body)?;
    match params.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = value,
        None => params.push((name, value)),
    }
    Ok(())
}

/// An SQL string literal that is read the same whatever `standard_conforming_strings` is.
fn quote_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// An open, authenticated server connection.
pub struct ServerConn {
    pub stream: ServerStream,
    /// Bytes read from the server and not yet handled.
    pub buf: BytesMut,
    /// ParameterStatus values as the server last reported them, in first-seen order.
    pub params: Vec<(String, String)>,
    /// The server's BackendKeyData.
    pub pid: i32,
    pub secret: i32,
    pub addr: SocketAddr,
    /// Index of the backend in the configuration.
    pub backend: usize,
    /// Transaction status from the last ReadyForQuery.
    pub tx_status: u8,
    pub created: Instant,
    pub last_used: Instant,
    /// Set for pooled connections: what SHOW POOL_POOLS lists.
    pub record: Option<Arc<ConnRecord>>,
}

impl ServerConn {
    /// Opens a connection, sets up TLS as `tls` says, and runs startup and
    /// authentication.
    pub async fn connect(
        backend: usize,
        addr: SocketAddr,
        params: &[(String, String)],
        credential: &BackendCredential,
        timeout: Duration,
        tls: &BackendTls,
    ) -> Result<ServerConn, ConnectError> {
        let stream = tokio::time::timeout(timeout, open(backend, addr, tls)).await.map_err(|_| ConnectError::Timeout(addr))??;
        Self::login(stream, addr, backend, params, credential, timeout).await
    }

    /// Runs startup and authentication on an open connection, up to ReadyForQuery.
    pub async fn login(
        stream: ServerStream,
        addr: SocketAddr,
        backend: usize,
        params: &[(String, String)],
        credential: &BackendCredential,
        timeout: Duration,
    ) -> Result<ServerConn, ConnectError> {
        let now = Instant::now();
        let mut conn = ServerConn {
            stream,
            buf: BytesMut::with_capacity(8192),
            params: Vec::new(),
            pid: 0,
            secret: 0,
            addr,
            backend,
            tx_status: b'I',
            created: now,
            last_used: now,
            record: None,
        };
        tokio::time::timeout(timeout, conn.startup(params, credential)).await.map_err(|_| ConnectError::Timeout(addr))??;
        Ok(conn)
    }

    async fn startup(&mut self, params: &[(String, String)], credential: &BackendCredential) -> Result<(), ConnectError> {
        let mut out = BytesMut::new();
        startup::write_startup(&mut out, params);
        self.send(&out).await?;
        let user = params.iter().find(|(k, _)| k == "user").map(|(_, v)| v.as_str()).unwrap_or("");
        self.authenticate(user, credential).await?;
        loop {
            let m = self.recv().await?;
            match m.tag {
                be::PARAMETER_STATUS => self.note_parameter(&m.body)?,
                be::BACKEND_KEY_DATA => {
                    let (pid, secret) = backend::parse_backend_key_data(&m.body).map_err(|e| self.protocol(e))?;
                    self.pid = pid;
                    self.secret = secret;
                }
                be::READY_FOR_QUERY => {
                    self.tx_status = backend::parse_ready_for_query(&m.body).map_err(|e| self.protocol(e))?;
                    return Ok(());
                }
                be::NOTICE_RESPONSE | be::NEGOTIATE_PROTOCOL_VERSION => {}
                be::ERROR_RESPONSE => return Err(self.server_error(&m)),
                other => return Err(self.protocol(format!("unexpected message type {:?} during startup", other as char))),
            }
        }
    }

    async fn authenticate(&mut self, user: &str, credential: &BackendCredential) -> Result<(), ConnectError> {
        let mut scram: Option<ClientExchange> = None;
        loop {
            let m = self.recv().await?;
            if m.tag == be::ERROR_RESPONSE {
                return Err(self.server_error(&m));
            }
            if m.tag != be::AUTHENTICATION {
                return Err(self.protocol(format!("expected an authentication request, got {:?}", m.tag as char)));
            }
            let mut out = BytesMut::new();
            match backend::parse_auth(&m.body).map_err(|e| self.protocol(e))? {
                AuthRequest::Ok => return Ok(()),
                AuthRequest::Cleartext => match credential {
                    BackendCredential::Password(p) => frontend::write_password(&mut out, p),
                    _ => return Err(self.no_credential("password", user)),
                },
                AuthRequest::Md5(salt) => {
                    let hash = match credential {
                        BackendCredential::Password(p) => md5_password_hash(user, p),
                        BackendCredential::Md5(h) => h.clone(),
                        _ => return Err(self.no_credential("md5", user)),
                    };
                    frontend::write_password(&mut out, &md5_salted_response(&hash, salt));
                }
                AuthRequest::Sasl(mechanisms) => {
                    let cred = match credential {
                        BackendCredential::Password(p) => ClientCredential::Password(p.clone()),
                        BackendCredential::ScramKey { client_key, verifier } => {
                            ClientCredential::ClientKey { client_key: *client_key, verifier: verifier.clone() }
                        }
                        _ => return Err(self.no_credential(SCRAM_SHA_256, user)),
                    };
                    // Over TLS, bound to the server's certificate when it offers that.
                    let Some((exchange, mechanism)) = ClientExchange::for_server(cred, self.stream.end_point(), &mechanisms) else {
                        return Err(self.protocol(format!("no supported SASL mechanism among {mechanisms:?}")));
                    };
                    frontend::write_sasl_initial_response(&mut out, mechanism, &exchange.client_first());
                    scram = Some(exchange);
                }
                AuthRequest::SaslContinue(data) => {
                    let Some(mut exchange) = scram.take() else {
                        return Err(self.protocol("SASL continue without SASL start"));
                    };
                    // PBKDF2 with the server's iteration count runs on a blocking thread,
                    // so that other sessions on this worker go on meanwhile.
                    let (exchange, reply) = if exchange.derives_keys() {
                        tokio::task::spawn_blocking(move || {
                            let reply = exchange.handle_server_first(&data);
                            (exchange, reply)
                        })
                        .await
                        .map_err(|e| self.scram(e))?
                    } else {
                        let reply = exchange.handle_server_first(&data);
                        (exchange, reply)
                    };
                    frontend::write_sasl_response(&mut out, &reply.map_err(|e| self.scram(e))?);
                    scram = Some(exchange);
                }
                AuthRequest::SaslFinal(data) => {
                    let Some(exchange) = scram.as_mut() else {
                        return Err(self.protocol("SASL final without SASL start"));
                    };
                    exchange.handle_server_final(&data).map_err(|e| self.scram(e))?;
                    continue;
                }
                AuthRequest::Other(code) => {
                    return Err(self.protocol(format!("unsupported authentication request {code}")));
                }
            }
            self.send(&out).await?;
        }
    }

    /// Brings a connection back to a clean session: rolls back an open transaction, then
    /// runs the reset query. Errors mean the connection must be closed.
    pub async fn reset(&mut self, reset_query: &str) -> Result<(), ConnectError> {
        if self.tx_status != b'I' {
            self.simple_query("ROLLBACK").await?;
        }
        if !reset_query.is_empty() {
            self.simple_query(reset_query).await?;
        }
        self.last_used = Instant::now();
        Ok(())
    }

    /// Sets a reportable setting (e.g. `application_name`) to what a client asked for in
    /// its startup packet, when the connection's current value differs.
    pub async fn ensure_setting(&mut self, name: &str, value: &str) -> Result<(), ConnectError> {
        let current = self.params.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
        if current == value {
            return Ok(());
        }
        self.simple_query(&format!("SET {name} = {}", quote_literal(value))).await
    }

    /// Runs one statement, keeping ParameterStatus; fails on an error or unexpected message.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), ConnectError> {
        self.query_value(sql).await.map(drop)
    }

    /// Runs one statement and returns the first column of its first row (as text).
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, ConnectError> {
        let mut out = BytesMut::new();
        frontend::write_query(&mut out, sql);
        self.send(&out).await?;
        let mut failed = None;
        let mut value = None;
        loop {
            let m = self.recv().await?;
            match m.tag {
                be::READY_FOR_QUERY => {
                    self.tx_status = backend::parse_ready_for_query(&m.body).map_err(|e| self.protocol(e))?;
                    return match failed {
                        Some(e) => Err(e),
                        None => Ok(value),
                    };
                }
                be::DATA_ROW if value.is_none() => {
                    let row = backend::parse_data_row(&m.body).map_err(|e| self.protocol(e))?;
                    value = row.first().copied().flatten().map(|v| String::from_utf8_lossy(v).into_owned());
                }
                be::PARAMETER_STATUS => self.note_parameter(&m.body)?,
                be::ERROR_RESPONSE => failed = Some(self.server_error(&m)),
                be::COPY_IN_RESPONSE | be::COPY_OUT_RESPONSE | be::COPY_BOTH_RESPONSE => {
                    return Err(self.protocol("a statement pgvigil runs itself entered COPY mode"));
                }
                _ => {}
            }
        }
    }

    /// Whether an idle connection is still usable: no EOF and no unsolicited bytes.
    pub fn is_idle_and_clean(&mut self) -> bool {
        self.buf.is_empty() && self.stream.is_quiet()
    }

    /// Records a ParameterStatus body.
    pub fn note_parameter(&mut self, body: &[u8]) -> Result<(), ConnectError> {
        record_parameter(&mut self.params, body).map_err(|e| self.protocol(e))
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnectError> {
        let addr = self.addr;
        let sent = async {
            self.stream.write_all(bytes).await?;
            // TLS may keep part of it until flushed.
            self.stream.flush().await
        };
        sent.await.map_err(|source| ConnectError::Io { addr, source })
    }

    async fn recv(&mut self) -> Result<Message, ConnectError> {
        loop {
            match frame::take_message(&mut self.buf, MAX_SERVER_CONTROL_MESSAGE) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(e)),
            }
            let addr = self.addr;
            let n = self.stream.read_buf(&mut self.buf).await.map_err(|source| ConnectError::Io { addr, source })?;
            if n == 0 {
                return Err(ConnectError::Io { addr, source: std::io::ErrorKind::UnexpectedEof.into() });
            }
        }
    }

    fn server_error(&self, m: &Message) -> ConnectError {
        let error = backend::parse_error_fields(&m.body).unwrap_or_default();
        let mut raw = BytesMut::new();
        let at = frame::begin(&mut raw, m.tag);
        raw.extend_from_slice(&m.body);
        frame::finish(&mut raw, at);
        ConnectError::Server { addr: self.addr, error: Box::new(error), raw: raw.freeze() }
    }

    fn protocol(&self, reason: impl std::fmt::Display) -> ConnectError {
        ConnectError::Protocol { addr: self.addr, reason: reason.to_string() }
    }

    fn scram(&self, e: impl std::fmt::Display) -> ConnectError {
        ConnectError::Scram { addr: self.addr, reason: e.to_string() }
    }

    fn no_credential(&self, method: &'static str, user: &str) -> ConnectError {
        ConnectError::NoCredential { addr: self.addr, method, user: user.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::tls::stream::MaybeTls;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(super::quote_literal("plain"), "E'plain'");
        assert_eq!(super::quote_literal("it's \\ here"), "E'it''s \\\\ here'");
    }

    fn read_packet(s: &mut std::net::TcpStream, tagged: bool) -> Vec<u8> {
        let mut head = vec![0u8; if tagged { 5 } else { 4 }];
        s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[head.len() - 4..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        body
    }

    /// A hostile server: it asks for SCRAM with `iterations` PBKDF2 iterations. It reports
    /// `ticks` when it sent the server-first-message and when the client-final-message
    /// came (None if it never did).
    fn hostile_server(iterations: u32, ticks: Arc<AtomicU64>) -> (SocketAddr, std::thread::JoinHandle<(u64, Option<u64>)>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            read_packet(&mut s, false);
            let mut out = BytesMut::new();
            backend::write_auth_sasl(&mut out, &[SCRAM_SHA_256]);
            s.write_all(&out).unwrap();
            let initial = read_packet(&mut s, true);
            let (_, first) = frontend::parse_sasl_initial_response(&initial).unwrap();
            let nonce = String::from_utf8_lossy(first).split("r=").nth(1).unwrap().to_string();
            out.clear();
            backend::write_auth(&mut out, backend::AUTH_SASL_CONTINUE, format!("r={nonce}hostile,s=c2FsdA==,i={iterations}").as_bytes());
            s.write_all(&out).unwrap();
            let sent = ticks.load(Ordering::SeqCst);
            let mut tag = [0u8; 1];
            let answered = matches!(s.read(&mut tag), Ok(1)).then(|| ticks.load(Ordering::SeqCst));
            (sent, answered)
        });
        (addr, server)
    }

    async fn login_to(addr: SocketAddr) -> Result<ServerConn, ConnectError> {
        let stream = MaybeTls::Plain(TcpStream::connect(addr).await.unwrap());
        let params = [("user".to_string(), "alice".to_string())];
        let credential = BackendCredential::Password("wonderland".into());
        ServerConn::login(stream, addr, 0, &params, &credential, Duration::from_secs(600)).await
    }

    /// A server asking for 2^32 - 1 iterations (hours of CPU) is refused at once.
    #[tokio::test]
    async fn a_server_asking_for_too_many_scram_iterations_is_refused() {
        let (addr, server) = hostile_server(u32::MAX, Arc::default());
        let Err(ConnectError::Scram { reason, .. }) = login_to(addr).await else { panic!("login went on") };
        assert!(reason.contains("4294967295 PBKDF2 iterations"), "{reason}");
        assert_eq!(server.join().unwrap().1, None, "no client-final-message was sent");
    }

    /// PBKDF2 runs off the async worker: on a single-threaded runtime, another task keeps
    /// running while pgvigil derives the keys for a costly iteration count.
    #[test]
    fn scram_key_derivation_leaves_the_worker_free() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let (addr, server) = hostile_server(MAX_ITERATIONS_FOR_TEST, ticks.clone());
        rt.block_on(async {
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            });
            // The hostile server then closes: what matters is that the proof was sent.
            let _ = login_to(addr).await;
            ticker.abort();
        });
        let (sent, answered) = server.join().unwrap();
        let answered = answered.expect("the client-final-message came");
        assert!(answered - sent >= 10, "only {} ticks while PBKDF2 ran", answered - sent);
    }

    /// Enough iterations to take tens of milliseconds at least, even in a release build.
    const MAX_ITERATIONS_FOR_TEST: u32 = 200_000;
}
