//! TLS from pgvigil to PostgreSQL (`[tls] backend_tls`, `backend_ca_file`), with the
//! meaning of libpq's `sslmode`. One [`BackendTls`] serves every connection pgvigil opens
//! to a backend: pooled server connections and forwarded cancel requests (through
//! [`BackendTls::negotiate`]), health checks, failover and catalog queries (through
//! tokio-postgres, [`BackendTls::postgres`]).
//!
//! A connection starts plain: pgvigil sends an SSLRequest and reads one byte. 'S' starts
//! the TLS handshake; 'N' means the server does not do TLS, which only `prefer` accepts
//! (the connection goes on in plain text). As libpq does, bytes the server sends after
//! 'S' and before the handshake are refused: they were not encrypted (CVE-2021-23222).

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::{MaybeTls, ServerStream};
use crate::config::{BackendTlsMode, Config, ConfigError};

/// `backend_tls` ready to use: the mode, a TLS client configured for it, and the name
/// each backend's certificate is checked against.
pub struct BackendTls {
    mode: BackendTlsMode,
    /// `None` with `disable`.
    connector: Option<tokio_rustls::TlsConnector>,
    /// Each backend's `host`, by index: the name `verify-full` checks, and the SNI.
    names: Vec<ServerName<'static>>,
    /// `backend_ca_file`, resolved.
    ca_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// Why TLS to a backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the server does not accept TLS (it answered the SSLRequest with 'N'), and tls.backend_tls = \"{0}\" requires TLS")]
    NotAccepted(BackendTlsMode),
    #[error("the server answered the SSLRequest with byte {0:#04x} instead of 'S' or 'N'")]
    BadAnswer(u8),
    #[error("the server sent unencrypted data right after its answer to the SSLRequest")]
    DataAfterAnswer,
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("no backend {0} is configured")]
    UnknownBackend(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl BackendTls {
    /// No TLS to any backend (`disable`).
    pub fn disabled() -> Self {
        Self { mode: BackendTlsMode::Disable, connector: None, names: Vec::new(), ca_file: None }
    }

    /// `[tls] backend_tls` and `backend_ca_file` for the configured backends; errors name
    /// the key at fault.
    pub fn load(config: &Config) -> Result<Self, ConfigError> {
        let mode = config.tls.backend_tls;
        let roots = match (&config.tls.backend_ca_file, mode.verifies()) {
            (Some(ca), true) => Some(super::read_roots("tls.backend_ca_file", &config.resolve(ca))?),
            (None, true) => {
                return Err(ConfigError(format!(
                    "tls.backend_tls = \"{mode}\" needs tls.backend_ca_file: the CA certificates that sign the backends' certificates (pgvigil uses no system CA store)"
                )))
            }
            (Some(_), false) => {
                return Err(ConfigError(format!(
                    "tls.backend_ca_file is only used with tls.backend_tls = \"verify-ca\" or \"verify-full\"; with \"{mode}\" no certificate is checked"
                )))
            }
            (None, false) => None,
        };
        if mode == BackendTlsMode::Disable {
            return Ok(Self::disabled());
        }
        let names = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                ServerName::try_from(b.host.clone()).map_err(|_| {
                    ConfigError(format!("backends[{i}].host: {:?} is neither a host name nor an IP address, as TLS needs (tls.backend_tls = \"{mode}\")", b.host))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let provider = super::provider();
        let verifier = Arc::new(Verifier { roots, check_name: mode == BackendTlsMode::VerifyFull, provider: provider.clone() });
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError(format!("tls.backend_tls: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let ca_file = config.tls.backend_ca_file.as_deref().map(|p| config.resolve(p));
        Ok(Self { mode, connector: Some(tokio_rustls::TlsConnector::from(Arc::new(client))), names, ca_file })
    }

    pub fn mode(&self) -> BackendTlsMode {
        self.mode
    }

    /// The same settings as libpq's environment (`PGSSLMODE`, `PGSSLROOTCERT`), for the
    /// PostgreSQL programs pgvigil runs against a backend (pg_rewind, pg_basebackup).
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.mode.to_string())];
        if let Some(ca) = &self.ca_file {
            env.push(("PGSSLROOTCERT", ca.display().to_string()));
        }
        env
    }

    /// Sets up TLS on a new connection to backend `backend`, as `backend_tls` says:
    /// nothing with `disable`; else an SSLRequest, then the handshake after 'S'.
    pub async fn negotiate(&self, backend: usize, mut tcp: TcpStream) -> Result<ServerStream, TlsError> {
        let Some(connector) = &self.connector else {
            return Ok(MaybeTls::Plain(tcp));
        };
        let name = self.names.get(backend).cloned().ok_or(TlsError::UnknownBackend(backend))?;
        let mut out = BytesMut::with_capacity(8);
        crate::protocol::startup::write_ssl_request(&mut out);
        tcp.write_all(&out).await?;
        // A server answers with one byte and waits: a second one is plain text that
        // did not come from an honest server.
        let mut answer = [0u8; 2];
        let n = tcp.read(&mut answer).await?;
        if n == 0 {
            return Err(TlsError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if n > 1 && matches!(answer[0], b'S' | b'N') {
            return Err(TlsError::DataAfterAnswer);
        }
        match answer[0] {
            b'S' => {
                let mut probe = [0u8; 1];
                match tcp.try_read(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(0) => return Err(TlsError::Io(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => return Err(TlsError::DataAfterAnswer),
                    Err(e) => return Err(e.into()),
                }
                let tls = connector.connect(name, tcp).await.map_err(|e| TlsError::Handshake(explain(self.mode, &e)))?;
                Ok(MaybeTls::Tls(Box::new(tls)))
            }
            b'N' if self.mode.requires_tls() => Err(TlsError::NotAccepted(self.mode)),
            b'N' => Ok(MaybeTls::Plain(tcp)),
            other => Err(TlsError::BadAnswer(other)),
        }
    }

    /// A tokio-postgres connector for backend `backend`, with `config`'s `ssl_mode` set
    /// to match `backend_tls`.
    pub fn postgres(&self, backend: usize, config: &mut tokio_postgres::Config) -> super::postgres::PgTls {
        use tokio_postgres::config::SslMode;
        config.ssl_mode(match self.mode {
            BackendTlsMode::Disable => SslMode::Disable,
            BackendTlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        let target = match (&self.connector, self.names.get(backend)) {
            (Some(c), Some(name)) => Some((c.clone(), name.clone())),
            _ => None,
        };
        super::postgres::PgTls::new(target, self.mode)
    }
}

/// A handshake error, with the setting that decided it.
pub(crate) fn explain(mode: BackendTlsMode, e: &io::Error) -> String {
    let certificate = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).and_then(|r| match r {
        rustls::Error::InvalidCertificate(c) => Some(c),
        _ => None,
    });
    match certificate {
        Some(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => format!(
            "{e} (tls.backend_tls = \"{mode}\" checks that the certificate names the backend's host as written in [[backends]] host)"
        ),
        Some(_) => format!("{e} (tls.backend_tls = \"{mode}\": the certificate must be valid and signed by a CA in tls.backend_ca_file)"),
        None => format!("{e} (tls.backend_tls = \"{mode}\")"),
    }
}

/// Checks a backend's certificate as `backend_tls` says: not at all (`prefer`,
/// `require`), its chain up to `backend_ca_file` and its validity dates (`verify-ca`),
/// and also the backend's host among its names (`verify-full`: DNS names, and IP
/// addresses against IP address entries). The handshake's signatures are always checked.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<rustls::RootCertStore>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            let algorithms = self.provider.signature_verification_algorithms.all;
            rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, algorithms)?;
            if self.check_name {
                rustls::client::verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::net::TcpListener;

    use super::*;

    fn tls(mode: &str) -> BackendTls {
        let text = format!("[tls]\nbackend_tls = \"{mode}\"\n[[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n");
        BackendTls::load(&Config::parse(Path::new("t.toml"), &text).unwrap()).unwrap()
    }

    /// Negotiates in `mode` with a server that answers the SSLRequest with `answer` (in
    /// one write); whether the connection is TLS.
    async fn negotiate_with(mode: &str, answer: &'static [u8]) -> Result<bool, TlsError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            s.read_exact(&mut request).await.unwrap();
            s.write_all(answer).await.unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            request
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let negotiated = tls(mode).negotiate(0, tcp).await.map(|s| s.is_tls());
        let request = server.await.unwrap();
        assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "an SSLRequest");
        negotiated
    }

    #[tokio::test]
    async fn answers_to_the_ssl_request() {
        assert!(matches!(negotiate_with("prefer", b"N").await, Ok(false)), "prefer goes on in plain text");
        let e = negotiate_with("require", b"N").await.unwrap_err();
        assert!(matches!(e, TlsError::NotAccepted(BackendTlsMode::Require)), "{e}");
        assert!(e.to_string().contains("tls.backend_tls = \"require\""), "{e}");
        // Bytes right after 'S' were not encrypted: refused before any handshake.
        let e = negotiate_with("require", b"S\x00").await.unwrap_err();
        assert!(matches!(e, TlsError::DataAfterAnswer), "{e}");
        let e = negotiate_with("prefer", b"N\x00").await.unwrap_err();
        assert!(matches!(e, TlsError::DataAfterAnswer), "{e}");
        let e = negotiate_with("prefer", b"E\x00\x00\x00\x04").await.unwrap_err();
        assert!(matches!(e, TlsError::BadAnswer(b'E')), "{e}");
        assert!(matches!(negotiate_with("prefer", b"").await, Err(TlsError::Io(_))), "closed without an answer");
    }
}
