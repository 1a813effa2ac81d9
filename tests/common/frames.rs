//! Raw WebSocket frames, built and parsed here rather than by the server's code or a client
//! library: [`client_frame`] (masked client frames), [`take_server_frame`], and [`RawWs`], a
//! WebSocket opened by hand on a TCP socket.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TIMEOUT;

/// A masked client WebSocket frame, built here rather than by the server's code: `first` is
/// the FIN/RSV/opcode byte. For tests that send what a client library would refuse to.
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut v = vec![first];
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

/// A WebSocket opened by hand on a raw TCP socket, for what a client library cannot do: send
/// frames in the same TCP write as the upgrade request.
pub struct RawWs {
    pub tcp: TcpStream,
    /// Bytes read and not yet taken as frames.
    buf: Vec<u8>,
}

impl RawWs {
    /// `GET path` with a WebSocket upgrade, and `behind` (client frames, see [`client_frame`])
    /// in the same write; returns once the `101` is read.
    pub async fn open(addr: SocketAddr, path: &str, behind: &[u8]) -> RawWs {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let wire = [request.as_bytes(), behind].concat();
        tcp.write_all(&wire).await.expect("write the upgrade");
        let mut raw = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await > 0, "{path}: EOF during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(TIMEOUT, self.tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("nothing read within {TIMEOUT:?}"))
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next server frame, which must be a JSON text frame (a close frame fails the test
    /// with its code and reason).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            if let Some((first, payload)) = take_server_frame(&mut self.buf) {
                assert_eq!(
                    first,
                    0x81,
                    "expected a text frame, got {first:#x}: code {:?}, {:?}",
                    payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                );
                return serde_json::from_slice(&payload).expect("a JSON frame");
            }
            assert!(self.fill().await > 0, "EOF, expected a frame");
        }
    }
}

/// Takes the server frame at the front of `buf`: (first byte, payload), or `None` until it has
/// all arrived. Server frames must be unmasked.
pub fn take_server_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let b1 = *buf.get(1)?;
    assert_eq!(b1 & 0x80, 0, "a masked server frame");
    let (header, len): (usize, usize) = match b1 {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
        ),
        n => (2, n as usize),
    };
    let payload = buf.get(header..header.checked_add(len)?)?.to_vec();
    let first = buf[0];
    buf.drain(..header + len);
    Some((first, payload))
}
