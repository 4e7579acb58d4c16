//! A client connection: plain TCP, or TLS after an SSLRequest or a direct TLS handshake.

use std::io;

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

    /// The ALPN protocol the client and pgvigil agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            MaybeTls::Tls(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}
