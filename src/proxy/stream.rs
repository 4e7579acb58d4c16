//! A client connection: plain TCP, or TLS after an SSLRequest or a direct TLS handshake.

use std::io;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use crate::tls::stream::MaybeTls;

pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

impl ClientStream {
    /// Runs the TLS handshake on a plain connection (after 'S', or at once for a direct
    /// TLS connection). On error the connection is gone.
    pub async fn upgrade(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let MaybeTls::Plain(tcp) = std::mem::replace(self, MaybeTls::Upgrading) else {
            return Err(io::Error::other("TLS requested twice"));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = MaybeTls::Tls(Box::new(tls));
        Ok(())
    }

    /// Ready when a read would not wait (plain TCP); a TLS connection is always "ready",
    /// since its decrypted bytes may already be buffered.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            MaybeTls::Plain(s) => s.poll_read_ready(cx),
            MaybeTls::Tls(_) => Poll::Ready(Ok(())),
            MaybeTls::Upgrading => Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "TLS handshake in progress"))),
        }
    }

    /// The certificate the client presented over TLS (verified against `tls.ca_file`), if any.
    pub fn peer_certificate(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        match self {
            MaybeTls::Tls(t) => t.get_ref().1.peer_certificates()?.first(),
            _ => None,
        }
    }

    /// The ALPN protocol the client and pgvigil agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            MaybeTls::Tls(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}
