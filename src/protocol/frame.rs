//! Framing of tagged messages: a one-byte type, a four-byte length that counts itself, a body.

use bytes::{Buf, Bytes, BytesMut};

use super::ProtocolError;

/// Bytes of a tagged message header: type byte and length.
pub const HEADER_LEN: usize = 5;

/// Frontend (client → server) message types.
pub mod fe {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse and SASLResponse share this type.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';

    /// Whether a client may send this type after startup.
    pub fn is_known(tag: u8) -> bool {
        matches!(
            tag,
            BIND | CLOSE | COPY_DATA | COPY_DONE | COPY_FAIL | DESCRIBE | EXECUTE | FLUSH | FUNCTION_CALL | PARSE
                | PASSWORD | QUERY | SYNC | TERMINATE
        )
    }
}

/// Backend (server → client) message types.
pub mod be {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// A tagged message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// The declared length, including the four length bytes themselves.
    pub len: u32,
}

impl Header {
    /// Total bytes on the wire, header included.
    pub fn frame_len(&self) -> usize {
        self.len as usize + 1
    }
}

/// Reads a header from the start of `buf`, checking the declared length against `max`
/// before anything is allocated for it. `Ok(None)`: fewer than five bytes so far.
pub fn parse_header(buf: &[u8], max: u64) -> Result<Option<Header>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len > i32::MAX as u32 {
        return Err(ProtocolError::BadLength(i64::from(len as i32)));
    }
    if u64::from(len) > max {
        return Err(ProtocolError::TooLarge { len: u64::from(len), max });
    }
    Ok(Some(Header { tag: buf[0], len }))
}

/// Walks a byte stream of messages that are passed through, possibly in pieces: the
/// caller sees each header once, decides, and forwards the bytes it covers.
#[derive(Debug, Default)]
pub struct Passthrough {
    /// Bytes of the current message not yet seen.
    remaining: usize,
}

/// What [`Passthrough::next`] found at the cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A message starts here.
    Header(Header),
    /// Everything in the buffer is accounted for; read more.
    Incomplete,
    Bad(ProtocolError),
}

impl Passthrough {
    /// Moves `pos` over the rest of a message begun earlier, then reads the next header.
    pub fn next(&mut self, buf: &[u8], pos: &mut usize, max: u64) -> Next {
        if self.remaining > 0 {
            let take = self.remaining.min(buf.len() - *pos);
            *pos += take;
            self.remaining -= take;
            if self.remaining > 0 {
                return Next::Incomplete;
            }
        }
        match parse_header(&buf[*pos..], max) {
            Ok(Some(h)) => Next::Header(h),
            Ok(None) => Next::Incomplete,
            Err(e) => Next::Bad(e),
        }
    }

    /// Moves `pos` over the message whose header is at `pos`, as far as `buf_len`.
    pub fn pass(&mut self, header: Header, buf_len: usize, pos: &mut usize) {
        let avail = buf_len - *pos;
        let total = header.frame_len();
        if avail >= total {
            *pos += total;
        } else {
            *pos += avail;
            self.remaining = total - avail;
        }
    }

    /// Whether the stream stands inside a message.
    pub fn mid_message(&self) -> bool {
        self.remaining > 0
    }
}

/// A whole message: its type and its body (without header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

/// Takes one whole message off the front of `buf`, or `Ok(None)` when it has not all
/// arrived; reserves room for the rest of a message whose header is in.
pub fn take_message(buf: &mut BytesMut, max: u64) -> Result<Option<Message>, ProtocolError> {
    let Some(h) = parse_header(buf, max)? else { return Ok(None) };
    if buf.len() < h.frame_len() {
        buf.reserve(h.frame_len() - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    buf.advance(HEADER_LEN);
    let body = buf.split_to(h.len as usize - 4).freeze();
    Ok(Some(Message { tag, body }))
}

/// A cursor over a message body; every read is checked.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.buf.split_first().ok_or(ProtocolError::Malformed("message too short"))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Malformed("message too short"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string (without the NUL), which must be valid UTF-8.
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(ProtocolError::Malformed("missing string terminator"))?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| ProtocolError::Malformed("invalid UTF-8 in string"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// An Int16 count of the items that follow; negative is malformed.
    pub fn count(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.i16()?).map_err(|_| ProtocolError::Malformed("negative count"))
    }

    /// A count, then that many values, each an Int32 length (-1: NULL) and its bytes: the
    /// values of a Bind or a DataRow.
    pub fn values(&mut self) -> Result<Vec<Option<&'a [u8]>>, ProtocolError> {
        (0..self.count()?)
            .map(|_| match self.i32()? {
                -1 => Ok(None),
                len if len < 0 => Err(ProtocolError::Malformed("invalid value length")),
                len => self.bytes(len as usize).map(Some),
            })
            .collect()
    }

    /// The body must end here.
    pub fn end(&self) -> Result<(), ProtocolError> {
        if !self.buf.is_empty() {
            return Err(ProtocolError::Malformed("trailing bytes in message"));
        }
        Ok(())
    }
}

/// Starts a tagged message in `out`; returns the offset to pass to [`finish`].
pub fn begin(out: &mut BytesMut, tag: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    at
}

/// Patches the length of the message begun at `at`.
pub fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - 1) as u32;
    out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
}

/// Appends a value of a Bind or a DataRow: its length (-1: NULL) and its bytes.
pub fn put_value(out: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
            out.extend_from_slice(v);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// Appends a NUL-terminated string.
pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(&[0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes_and_checks_length() {
        assert_eq!(parse_header(b"Q\0\0", 100), Ok(None));
        assert_eq!(parse_header(b"Q\0\0\0\x03", 100), Err(ProtocolError::BadLength(3)));
        assert_eq!(parse_header(b"Q\xff\xff\xff\xff", 100), Err(ProtocolError::BadLength(-1)));
        assert_eq!(parse_header(b"Q\x00\x10\x00\x00", 100), Err(ProtocolError::TooLarge { len: 1 << 20, max: 100 }));
        assert_eq!(parse_header(b"Q\0\0\0\x05x", 100), Ok(Some(Header { tag: b'Q', len: 5 })));
    }

    #[test]
    fn take_message_waits_for_the_body() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0aSELE"[..]);
        assert_eq!(take_message(&mut buf, 1000), Ok(None));
        buf.extend_from_slice(b"CT");
        let m = take_message(&mut buf, 1000).unwrap().unwrap();
        assert_eq!(m.tag, b'Q');
        assert_eq!(&m.body[..], b"SELECT");
        assert!(buf.is_empty());
    }

    #[test]
    fn reader_is_total() {
        let mut r = Reader::new(b"ab");
        assert!(r.i32().is_err());
        assert!(r.cstr().is_err());
        let mut r = Reader::new(b"ab\0\x00\x01");
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.i16().unwrap(), 1);
        assert!(r.u8().is_err());
    }

    #[test]
    fn passthrough_walks_messages_split_anywhere() {
        let stream = b"Z\0\0\0\x05IQ\0\0\0\x0aSELECTD\0\0\0\x04";
        for cut in 0..=stream.len() {
            let mut p = Passthrough::default();
            let (mut buf, mut tags, mut forwarded) = (Vec::new(), Vec::new(), 0);
            for part in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(part);
                let mut pos = 0;
                loop {
                    match p.next(&buf, &mut pos, 100) {
                        Next::Header(h) => {
                            tags.push(h.tag);
                            p.pass(h, buf.len(), &mut pos);
                        }
                        Next::Incomplete => break,
                        Next::Bad(e) => panic!("{e}"),
                    }
                }
                forwarded += pos;
                buf.drain(..pos);
            }
            assert_eq!(tags, b"ZQD", "cut at {cut}");
            assert_eq!(forwarded, stream.len());
            assert!(!p.mid_message());
        }
        let mut p = Passthrough::default();
        assert_eq!(p.next(b"Q\0\0\0\x02", &mut 0, 100), Next::Bad(ProtocolError::BadLength(2)));
    }

    #[test]
    fn writer_patches_length() {
        let mut out = BytesMut::new();
        let at = begin(&mut out, b'Z');
        out.extend_from_slice(b"I");
        finish(&mut out, at);
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
    }
}
