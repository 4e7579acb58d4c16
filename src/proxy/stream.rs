//! A client connection: TCP or a Unix-domain socket, then plain, or TLS after an
//! SSLRequest or a direct TLS handshake (TCP only, as PostgreSQL does).

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use crate::tls::stream::MaybeTls;

/// The socket a client connected on: TCP, or the Unix-domain socket of
/// `proxy.unix_socket_dir`.
pub type Socket = Either<TcpStream, UnixStream>;

/// Who a client is, as logs and access rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A Unix-domain socket: PostgreSQL's "[local]".
    Local,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Local => f.write_str("[local]"),
        }
    }
}

impl Peer {
    /// The client's IP address (IPv4-mapped IPv6 as IPv4); `None` on a Unix socket.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Peer::Tcp(a) => Some(a.ip().to_canonical()),
            Peer::Local => None,
        }
    }
}

pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<Socket>, Socket>;

impl ClientStream {
    pub fn tcp(s: TcpStream) -> Self {
        MaybeTls::Plain(Either::Left(s))
    }

    pub fn unix(s: UnixStream) -> Self {
        MaybeTls::Plain(Either::Right(s))
    }

    /// A plain TCP connection, on which TLS may be negotiated.
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTls::Plain(Either::Left(s)) => Some(s),
            _ => None,
        }
    }

    /// Runs the TLS handshake on a plain connection (after 'S', or at once for a direct
    /// TLS connection). On error the connection is gone.
    pub async fn upgrade(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let MaybeTls::Plain(socket) = std::mem::replace(self, MaybeTls::Upgrading) else {
            return Err(io::Error::other("TLS requested twice"));
        };
        let tls = acceptor.accept(socket).await?;
        *self = MaybeTls::Tls(Box::new(tls));
        Ok(())
    }

    /// Ready when a read would not wait (a plain socket); a TLS connection is always
    /// "ready", since its decrypted bytes may already be buffered.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            MaybeTls::Plain(Either::Left(s)) => s.poll_read_ready(cx),
            MaybeTls::Plain(Either::Right(s)) => s.poll_read_ready(cx),
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
