//! The WebSocket wire format (RFC 6455) on the data path: client frame headers in, server frames
//! out.
//!
//! Owns byte layouts only. It must not read sockets or know about JSON. fastwebsockets does the
//! HTTP upgrade and the SIMD unmasking; framing lives here because shardcast writes one
//! pre-encoded frame to many sockets and keeps no read buffer per idle connection, which
//! fastwebsockets' owned-stream `WebSocket` cannot do (see ARCHITECTURE.md).

use bytes::Bytes;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Room reserved in front of a payload for the largest server frame header (2 + 8 bytes).
const MAX_HEADER: usize = 10;

/// A server frame being built: the payload is written after room for the header, and `finish`
/// writes the header into that room, so a frame costs one allocation and no copy.
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub fn with_capacity(payload: usize) -> FrameBuf {
        let mut buf = Vec::with_capacity(MAX_HEADER + payload);
        buf.resize(MAX_HEADER, 0);
        FrameBuf { buf }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Completes an unmasked, final frame with `opcode`.
    pub fn finish(mut self, opcode: u8) -> Bytes {
        let (header, header_len) = header(opcode, self.buf.len() - MAX_HEADER);
        let start = MAX_HEADER - header_len;
        self.buf[start..MAX_HEADER].copy_from_slice(&header[..header_len]);
        Bytes::from(self.buf).slice(start..)
    }
}

/// The header of an unmasked, final server frame with a `len`-byte payload, and its length.
fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    header_with(opcode, false, len)
}

/// The length of a server frame's header for a `len`-byte payload.
pub fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xFFFF => 4,
        _ => MAX_HEADER,
    }
}

/// `header`, with RSV1 (a permessage-deflate compressed message) if `rsv1`.
fn header_with(opcode: u8, rsv1: bool, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut header = [0u8; MAX_HEADER];
    header[0] = 0x80 | if rsv1 { 0x40 } else { 0 } | opcode;
    let header_len = if len < 126 {
        header[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, header_len)
}

/// Several text frames back to back in one buffer: written as one, read as many.
pub fn text_frames<'a>(payloads: impl Iterator<Item = &'a [u8]> + Clone) -> Bytes {
    let size = payloads.clone().map(|p| p.len() + MAX_HEADER).sum();
    let mut buf = Vec::with_capacity(size);
    for p in payloads {
        push_frame(&mut buf, OP_TEXT, false, p);
    }
    Bytes::from(buf)
}

/// Appends an unmasked, final server frame to `buf`.
pub fn push_frame(buf: &mut Vec<u8>, opcode: u8, rsv1: bool, payload: &[u8]) {
    let (header, header_len) = header_with(opcode, rsv1, payload.len());
    buf.extend_from_slice(&header[..header_len]);
    buf.extend_from_slice(payload);
}

/// Appends to `buf` the header of an unmasked, final frame with a `len`-byte payload, which
/// the caller writes right after it.
pub fn push_header(buf: &mut Vec<u8>, opcode: u8, len: usize) {
    let (header, header_len) = header(opcode, len);
    buf.extend_from_slice(&header[..header_len]);
}

/// The first server frame built here in `buf`: its first byte, its payload and what follows
/// it; `None` if `buf` does not start with a whole frame.
pub fn split_server_frame(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (len, start): (usize, usize) = match *buf.get(1)? {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (n as usize, 2),
    };
    let end = start.checked_add(len)?;
    Some((buf[0], buf.get(start..end)?, &buf[end..]))
}

/// How many server frames built here `buf` holds, back to back (a replay's messages). Reads
/// only their headers.
pub fn count_frames(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while let Some((_, _, rest)) = split_server_frame(buf) {
        n += 1;
        buf = rest;
    }
    n
}

/// The payload of one server frame built here (unmasked, so the header is 2, 4 or 10 bytes).
pub fn payload_of(frame: &Bytes) -> Bytes {
    let start = match frame.get(1) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(start.min(frame.len())..)
}

/// A server control frame (ping, pong) carrying `payload` (at most 125 bytes).
pub fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = FrameBuf::with_capacity(payload.len());
    f.push(&payload[..payload.len().min(125)]);
    f.finish(opcode)
}

/// A close frame with a status code and reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut f = FrameBuf::with_capacity(2 + reason.len());
    f.push(&code.to_be_bytes());
    f.push(reason);
    f.finish(OP_CLOSE)
}

/// A client frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    /// Bytes of header, including the mask key.
    pub header_len: usize,
    pub payload_len: u64,
    /// RSV1: a compressed message (permessage-deflate), if the connection negotiated it.
    pub rsv1: bool,
}

impl Header {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Malformed framing: the connection cannot be trusted any further and is closed with 1002.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("client frames must be masked")]
    Unmasked,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frames must be final and at most 125 bytes")]
    BadControl,
    #[error("payload length uses the most significant bit")]
    BadLength,
}

/// Parses a client frame header from the front of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    parse_header_with(buf, false)
}

/// `parse_header`, allowing RSV1 on data frames if `deflate` was negotiated. Whether RSV1 is
/// on the first frame of a message is the decoder's to check.
pub fn parse_header_with(buf: &[u8], deflate: bool) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || rsv1 && (!deflate || b0 & 0x08 != 0) {
        return Err(FrameError::ReservedBits);
    }
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::UnknownOpcode(opcode));
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let fin = b0 & 0x80 != 0;
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            None => return Ok(None),
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 2),
        },
        127 => match buf.get(2..10) {
            None => return Ok(None),
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (len, 8)
            }
        },
        n => (n as u64, 0),
    };
    if opcode & 0x8 != 0 && (!fin || payload_len > 125) {
        return Err(FrameError::BadControl);
    }
    let header_len = 2 + len_bytes + 4;
    let Some(mask) = buf.get(header_len - 4..header_len) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        header_len,
        payload_len,
        rsv1,
    }))
}

/// Unmasks a client payload in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    fastwebsockets::unmask(payload, mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_concatenate_and_payloads_come_back() {
        let big = vec![b'x'; 300];
        let both = text_frames([&b"ab"[..], &big[..]].into_iter());
        assert_eq!(&both[..4], &[0x81, 2, b'a', b'b']);
        assert_eq!(&both[4..8], &[0x81, 126, 1, 44]);
        assert_eq!(both.len(), 4 + 4 + 300);
        let mut one = FrameBuf::with_capacity(300);
        one.push(&big);
        assert_eq!(&payload_of(&one.finish(OP_TEXT))[..], &big[..]);
        let huge = vec![b'y'; 70_000];
        let three = text_frames([&b"ab"[..], &big[..], &huge[..]].into_iter());
        assert_eq!(count_frames(&three), 3);
        assert_eq!(
            count_frames(&three[..three.len() - 1]),
            2,
            "a cut frame is not one"
        );
        assert_eq!(count_frames(&[]), 0);
    }

    fn masked(opcode_byte: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![opcode_byte];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn server_frames_have_minimal_headers() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let mut f = FrameBuf::with_capacity(len);
            f.push(&vec![b'x'; len]);
            let frame = f.finish(OP_TEXT);
            let header = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(frame.len(), header + len, "len {len}");
            assert_eq!(frame[0], 0x81);
            assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
        }
        assert_eq!(
            &close_frame(1001, "bye")[..],
            &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']
        );
    }

    #[test]
    fn parses_and_unmasks_client_frames() {
        for len in [0usize, 5, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = masked(0x81, &payload, [1, 2, 3, 4]);
            let h = parse_header(&wire).unwrap().unwrap();
            assert!(h.fin);
            assert_eq!(h.opcode, OP_TEXT);
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(wire.len(), h.header_len + len);
            // Every proper prefix of the header asks for more bytes.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&wire[..cut]), Ok(None));
            }
            let body = &mut wire[h.header_len..];
            unmask(body, h.mask);
            assert_eq!(body, &payload[..]);
        }
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(parse_header(&[0x81, 0x05]), Err(FrameError::Unmasked));
        assert_eq!(parse_header(&[0xC1, 0x80]), Err(FrameError::ReservedBits));
        assert_eq!(
            parse_header(&[0x83, 0x80]),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(parse_header(&[0x09, 0x80]), Err(FrameError::BadControl));
        assert_eq!(
            parse_header(&[0x89, 0xFE, 0, 200]),
            Err(FrameError::BadControl)
        );
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&huge), Err(FrameError::BadLength));
    }
}
