//! tokio-postgres over rustls with [`BackendTls`](super::backend::BackendTls)'s settings:
//! a `MakeTlsConnect` that checks the name of the backend it was made for (not the host
//! string tokio-postgres was given, which may be an address), and offers the server's
//! `tls-server-end-point` so SCRAM uses channel binding (SCRAM-SHA-256-PLUS).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::config::BackendTlsMode;

/// The connector with the backend's name; `None` with `disable` (tokio-postgres is then
/// told not to ask for TLS).
type Target = Option<(tokio_rustls::TlsConnector, ServerName<'static>)>;

/// A `MakeTlsConnect` for one backend.
#[derive(Clone)]
pub struct PgTls {
    target: Target,
    mode: BackendTlsMode,
}

impl PgTls {
    pub(super) fn new(target: Target, mode: BackendTlsMode) -> Self {
        Self { target, mode }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for PgTls {
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTls;
    type Error = io::Error;

    fn make_tls_connect(&mut self, _host: &str) -> io::Result<PgTls> {
        Ok(self.clone())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for PgTls {
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Some((connector, name)) = self.target else {
                return Err(io::Error::other("TLS is off (tls.backend_tls = \"disable\")"));
            };
            match connector.connect(name, stream).await {
                Ok(tls) => Ok(PgTlsStream(tls)),
                Err(e) => Err(io::Error::new(e.kind(), super::backend::explain(self.mode, &e))),
            }
        })
    }
}

/// A TLS connection made by [`PgTls`].
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match self.0.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => ChannelBinding::tls_server_end_point(super::end_point_hash(cert.as_ref())),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A tokio-postgres error with its causes, as an operator should read it: a TLS failure
/// names `tls.backend_tls`.
pub fn describe(e: &tokio_postgres::Error, mode: BackendTlsMode) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if text.starts_with("error performing TLS handshake") && !text.contains("tls.backend_tls") {
        text.push_str(&format!(" (tls.backend_tls = \"{mode}\")"));
    }
    text
}
