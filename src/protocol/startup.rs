//! Untagged startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.

use bytes::{Buf, BufMut, BytesMut};

use super::frame::Reader;
use super::ProtocolError;

/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: u32 = 10_000;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Protocol 3.0, the version pgvigil speaks.
pub const PROTOCOL_3_0: i32 = 3 << 16;

/// One packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(Startup),
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
}

/// A StartupMessage: the requested version and parameters, in the client's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Protocol options (`_pq_.*`) the client asked for; pgvigil supports none yet.
    pub fn protocol_options(&self) -> Vec<String> {
        self.params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect()
    }
}

/// Takes one startup-phase packet off `buf`; `Ok(None)` until it has all arrived.
pub fn take_startup_packet(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(ProtocolError::BadLength(i64::from(len)));
    }
    if buf.len() < len as usize {
        buf.reserve(len as usize - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len as usize - 4);
    parse_startup_body(&body).map(Some)
}

fn parse_startup_body(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let mut r = Reader::new(body);
    let code = r.i32()?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if r.remaining() != 0 => Err(ProtocolError::Malformed("invalid length of startup packet")),
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let pid = r.i32()?;
            let secret = r.i32()?;
            if r.remaining() != 0 {
                return Err(ProtocolError::Malformed("invalid length of cancel request packet"));
            }
            Ok(StartupPacket::Cancel { pid, secret })
        }
        _ => {
            let major = (code as u32 >> 16) as u16;
            let minor = (code as u32 & 0xffff) as u16;
            let mut params = Vec::new();
            if major == 3 {
                loop {
                    let name = r.cstr().map_err(|_| ProtocolError::Malformed("invalid startup packet layout: expected terminator as last byte"))?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstr().map_err(|_| ProtocolError::Malformed("invalid startup packet layout: expected terminator as last byte"))?;
                    params.push((name.to_string(), value.to_string()));
                }
                if r.remaining() != 0 {
                    return Err(ProtocolError::Malformed("invalid startup packet layout: expected terminator as last byte"));
                }
            }
            Ok(StartupPacket::Startup(Startup { major, minor, params }))
        }
    }
}

/// Appends a StartupMessage (protocol 3.0) with the given parameters.
pub fn write_startup(out: &mut BytesMut, params: &[(String, String)]) {
    let at = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        super::frame::put_cstr(out, k);
        super::frame::put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends an SSLRequest packet.
pub fn write_ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(SSL_REQUEST_CODE);
}

/// Appends a GSSENCRequest packet.
pub fn write_gssenc_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(GSSENC_REQUEST_CODE);
}

/// Appends a CancelRequest packet.
pub fn write_cancel(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST_CODE);
    out.put_i32(pid);
    out.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let params = vec![("user".to_string(), "alice".to_string()), ("database".to_string(), "db".to_string())];
        let mut buf = BytesMut::new();
        write_startup(&mut buf, &params);
        let whole = buf.clone();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(take_startup_packet(&mut part), Ok(None));
        }
        let p = take_startup_packet(&mut buf).unwrap().unwrap();
        assert_eq!(p, StartupPacket::Startup(Startup { major: 3, minor: 0, params }));
    }

    #[test]
    fn special_requests() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
        assert_eq!(take_startup_packet(&mut buf).unwrap(), Some(StartupPacket::SslRequest));
        let mut buf = BytesMut::new();
        write_cancel(&mut buf, 42, -7);
        assert_eq!(take_startup_packet(&mut buf).unwrap(), Some(StartupPacket::Cancel { pid: 42, secret: -7 }));
    }

    #[test]
    fn bad_packets_are_errors() {
        for len in [0u32, 3, 7, 10_001, u32::MAX] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            assert!(take_startup_packet(&mut buf).is_err(), "len {len}");
        }
        // Missing final terminator.
        let mut buf = BytesMut::from(&b"\0\0\0\x0d\0\x03\0\0user\0"[..]);
        assert!(take_startup_packet(&mut buf).is_err());
        // Cancel request of the wrong size.
        let mut buf = BytesMut::from(&b"\0\0\0\x0c\x04\xd2\x16\x2e\0\0\0\x01"[..]);
        assert!(take_startup_packet(&mut buf).is_err());
    }

    #[test]
    fn version_and_options() {
        let mut buf = BytesMut::new();
        write_startup(&mut buf, &[("user".into(), "u".into()), ("_pq_.compression".into(), "on".into())]);
        buf[6..8].copy_from_slice(&2u16.to_be_bytes());
        let Some(StartupPacket::Startup(s)) = take_startup_packet(&mut buf).unwrap() else { panic!() };
        assert_eq!((s.major, s.minor), (3, 2));
        assert_eq!(s.protocol_options(), vec!["_pq_.compression".to_string()]);
    }
}
