//! RFC 6455 conformance of shardcast's own frame layer, over raw TCP: the handshake is written by
//! hand and frames are built byte by byte here, so the tests can send what a client library
//! would refuse to. Most cases use the dev-mode `/echo` endpoint (the same `conn` decoder as
//! `/ws`, with echo instead of the JSON protocol); a few check `/ws` itself.
//!
//! Every case runs twice: the frames written whole, and written one byte per write (each byte
//! its own TCP segment), so every rule is also checked with every frame cut at every byte.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TIMEOUT, TestServer, client_frame as frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// Both ways of writing: whole, and one byte per write.
const SPLITS: [bool; 2] = [false, true];

fn echo_server(max_message_size: usize) -> TestServer {
    TestServer::start(|c| {
        c.echo = true;
        c.max_message_size = max_message_size;
        c.max_queue_bytes = 1 << 22;
    })
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

/// A raw WebSocket client on a TCP socket.
struct Raw {
    tcp: TcpStream,
    /// Write one byte per write.
    split: bool,
    /// Bytes read but not yet parsed into a frame.
    buf: Vec<u8>,
    what: String,
}

impl Raw {
    /// Opens `path` with a hand-written upgrade request and checks the 101.
    async fn open(addr: SocketAddr, path: &str, split: bool) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        let mut raw = Raw {
            tcp,
            split,
            buf: Vec::new(),
            what: format!("{path} split={split}"),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        raw.tcp.write_all(request.as_bytes()).await.unwrap();
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                raw.fill().await > 0,
                "{}: EOF during the handshake",
                raw.what
            );
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{}: {head}", raw.what);
        // The accept key for the RFC's sample nonce (RFC 6455 section 1.3).
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{}: {head}",
            raw.what
        );
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(TIMEOUT, self.tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{}: nothing read within {TIMEOUT:?}", self.what))
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A write can fail once the server has failed the connection and gone; what it sent
        // before is still read by `expect_close`.
        if self.split {
            for b in bytes {
                if self.tcp.write_all(&[*b]).await.is_err() {
                    return;
                }
                let _ = self.tcp.flush().await;
            }
        } else {
            let _ = self.tcp.write_all(bytes).await;
        }
    }

    /// The next server frame: (first byte, payload). Server frames must be unmasked.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(frame) = common::take_server_frame(&mut self.buf) {
                return Some(frame);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    async fn expect(&mut self, first: u8, payload: &[u8]) {
        match self.next().await {
            Some((f, p)) => {
                assert_eq!(f, first, "{}: frame type", self.what);
                assert!(
                    p == payload,
                    "{}: payload of {} bytes differs",
                    self.what,
                    p.len()
                );
            }
            None => panic!("{}: EOF, expected frame {first:#x}", self.what),
        }
    }

    /// The server's close frame has `code`, and the server then ends the TCP connection.
    async fn expect_close(&mut self, code: u16) {
        match self.next().await {
            Some((f, p)) => {
                assert_eq!(f, FIN | CLOSE, "{}: expected a close frame", self.what);
                assert!(p.len() >= 2, "{}: close without a code", self.what);
                let got = u16::from_be_bytes([p[0], p[1]]);
                assert_eq!(
                    got,
                    code,
                    "{}: close reason {:?}",
                    self.what,
                    String::from_utf8_lossy(&p[2..])
                );
            }
            None => panic!("{}: EOF, expected close {code}", self.what),
        }
        assert_eq!(
            self.next().await,
            None,
            "{}: EOF after the close",
            self.what
        );
    }
}

/// Sends `wire` on a fresh `/echo` connection, once whole and once byte by byte, and expects
/// close `code`.
async fn refused(addr: SocketAddr, what: &str, wire: &[u8], code: u16) {
    for split in SPLITS {
        let mut c = Raw::open(addr, "/echo", split).await;
        c.what = format!("{what} (split={split})");
        c.send(wire).await;
        c.expect_close(code).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn echoes_text_and_binary_of_every_length_encoding() {
    let server = echo_server(1 << 17);
    for split in SPLITS {
        let mut c = Raw::open(server.addr(), "/echo", split).await;
        for len in [0usize, 1, 125, 126, 65_535, 65_536] {
            let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let binary: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            // The long ones are written whole even in split mode: a byte per write for 128 KiB
            // adds nothing the short ones do not test.
            let whole = c.split && len > 126;
            c.split &= !whole;
            c.send(&frame(FIN | TEXT, &text)).await;
            c.expect(FIN | TEXT, &text).await;
            c.send(&frame(FIN | BINARY, &binary)).await;
            c.expect(FIN | BINARY, &binary).await;
            c.split = split;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fragmented_messages_are_reassembled_with_control_frames_between() {
    let server = echo_server(1024);
    for split in SPLITS {
        let mut c = Raw::open(server.addr(), "/echo", split).await;
        let mut wire = frame(TEXT, b"Hello, ");
        wire.extend(frame(FIN | PING, b"between"));
        wire.extend(frame(0, b"fragmented "));
        wire.extend(frame(FIN | PONG, b"unsolicited pong"));
        wire.extend(frame(FIN, b"world"));
        wire.extend(frame(BINARY, &[1, 2]));
        wire.extend(frame(0, &[]));
        wire.extend(frame(FIN, &[3]));
        c.send(&wire).await;
        c.expect(FIN | PONG, b"between").await;
        c.expect(FIN | TEXT, b"Hello, fragmented world").await;
        c.expect(FIN | BINARY, &[1, 2, 3]).await;

        // Exactly max_message_size over four fragments is accepted.
        let mut wire = frame(BINARY, &[7; 256]);
        wire.extend(frame(0, &[7; 256]));
        wire.extend(frame(0, &[7; 256]));
        wire.extend(frame(FIN, &[7; 256]));
        c.send(&wire).await;
        c.expect(FIN | BINARY, &[7; 1024]).await;

        // One byte more is refused (the echo endpoint closes with 1009 for a message it had
        // to discard; `/ws` answers `too_large` and stays open, see tests/bad_input.rs).
        let mut wire = frame(TEXT, &[b'x'; 1024]);
        wire.extend(frame(FIN, b"x"));
        c.send(&wire).await;
        c.expect_close(1009).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pings_up_to_125_bytes_are_answered_with_their_payload() {
    let server = echo_server(1024);
    for split in SPLITS {
        let mut c = Raw::open(server.addr(), "/echo", split).await;
        for len in [0usize, 1, 124, 125] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            c.send(&frame(FIN | PING, &payload)).await;
            c.expect(FIN | PONG, &payload).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn close_frames_get_the_closing_handshake() {
    let server = echo_server(1024);
    for (what, payload) in [
        ("no code", Vec::new()),
        ("code only", close_payload(1000, b"")),
        (
            "code and reason",
            close_payload(1001, "going away ✓".as_bytes()),
        ),
        ("application code", close_payload(4000, b"app")),
        ("a 123-byte reason", close_payload(3000, &[b'r'; 123])),
    ] {
        for split in SPLITS {
            let mut c = Raw::open(server.addr(), "/echo", split).await;
            c.what = format!("close with {what} (split={split})");
            c.send(&frame(FIN | TEXT, b"before")).await;
            c.send(&frame(FIN | CLOSE, &payload)).await;
            c.send(&frame(FIN | TEXT, b"after the close: ignored"))
                .await;
            c.expect(FIN | TEXT, b"before").await;
            c.expect_close(1000).await;
        }
    }
    // A close between fragments ends the connection too; the unfinished message is dropped.
    let mut c = Raw::open(server.addr(), "/echo", true).await;
    c.send(&frame(TEXT, b"unfinished")).await;
    c.send(&frame(FIN | CLOSE, &close_payload(1000, b""))).await;
    c.expect_close(1000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reserved_bits_are_refused_with_1002() {
    let server = echo_server(1024);
    for rsv in [0x40, 0x20, 0x10, 0x70] {
        let wire = frame(FIN | rsv | TEXT, b"hi");
        refused(server.addr(), &format!("RSV {rsv:#x}"), &wire, 1002).await;
    }
    let ping = frame(FIN | 0x40 | PING, b"");
    refused(server.addr(), "RSV1 on a ping", &ping, 1002).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_opcodes_are_refused_with_1002() {
    let server = echo_server(1024);
    for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let wire = frame(FIN | opcode, b"");
        refused(server.addr(), &format!("opcode {opcode:#x}"), &wire, 1002).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fragmented_or_oversized_control_frames_are_refused_with_1002() {
    let server = echo_server(1024);
    let a = server.addr();
    refused(a, "fragmented ping", &frame(PING, b"a"), 1002).await;
    refused(a, "fragmented close", &frame(CLOSE, &[3, 232]), 1002).await;
    refused(a, "126-byte ping", &frame(FIN | PING, &[0; 126]), 1002).await;
    refused(a, "126-byte pong", &frame(FIN | PONG, &[0; 126]), 1002).await;
    let reason = [b'r'; 124];
    let close = frame(FIN | CLOSE, &close_payload(1000, &reason));
    refused(a, "126-byte close", &close, 1002).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unmasked_frames_are_refused_with_1002() {
    let server = echo_server(1024);
    let a = server.addr();
    refused(a, "unmasked text", &[FIN | TEXT, 2, b'h', b'i'], 1002).await;
    refused(a, "unmasked ping", &[FIN | PING, 0], 1002).await;
    // Masked first fragment, unmasked continuation.
    let mut wire = frame(TEXT, b"a");
    wire.extend([FIN, 1, b'b']);
    refused(a, "unmasked continuation", &wire, 1002).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_fragment_sequences_are_refused_with_1002() {
    let server = echo_server(1024);
    let a = server.addr();
    refused(a, "continuation first", &frame(FIN, b"x"), 1002).await;
    let mut wire = frame(TEXT, b"a");
    wire.extend(frame(FIN | TEXT, b"b"));
    refused(a, "a new message inside a fragmented one", &wire, 1002).await;
    for split in SPLITS {
        let mut c = Raw::open(a, "/echo", split).await;
        c.what = format!("continuation after a final frame (split={split})");
        c.send(&frame(FIN | TEXT, b"done")).await;
        c.send(&frame(FIN, b"x")).await;
        c.expect(FIN | TEXT, b"done").await;
        c.expect_close(1002).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_close_frames_are_refused() {
    let server = echo_server(1024);
    let a = server.addr();
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let wire = frame(FIN | CLOSE, &close_payload(code, b""));
        refused(a, &format!("close code {code}"), &wire, 1002).await;
    }
    refused(a, "a 1-byte close", &frame(FIN | CLOSE, &[3]), 1002).await;
    let bad_reason = frame(FIN | CLOSE, &close_payload(1000, b"\xce\xba\xff"));
    refused(a, "a close reason that is not UTF-8", &bad_reason, 1007).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_text_is_refused_with_1007() {
    let server = echo_server(1024);
    let a = server.addr();
    for (what, text) in [
        ("a bad byte", &b"caf\xc3\x28"[..]),
        ("a lone continuation byte", b"\x80"),
        ("an overlong encoding", b"\xc0\xaf"),
        ("a surrogate", b"\xed\xa0\x80"),
        ("over U+10FFFF", b"\xf4\x90\x80\x80"),
    ] {
        refused(a, what, &frame(FIN | TEXT, text), 1007).await;
    }

    // A character split across fragments whose second half is wrong.
    let mut wire = frame(TEXT, b"ok \xe2\x82");
    wire.extend(frame(FIN, b"\x28 no"));
    refused(a, "split across fragments", &wire, 1007).await;
    // A character still unfinished when the message ends.
    let mut wire = frame(TEXT, b"ok");
    wire.extend(frame(FIN, b"\xf0\x9f\x98"));
    refused(a, "cut at the end of the message", &wire, 1007).await;
    // Fail fast: refused at the bad fragment, before the message is finished.
    refused(
        a,
        "a bad first fragment",
        &frame(TEXT, b"\xff more to come"),
        1007,
    )
    .await;

    // The same characters split correctly are echoed.
    for split in SPLITS {
        let mut c = Raw::open(a, "/echo", split).await;
        let mut wire = frame(TEXT, b"\xe2\x82");
        wire.extend(frame(0, b"\xac \xf0\x9f"));
        wire.extend(frame(FIN, b"\x98\x80"));
        c.send(&wire).await;
        c.expect(FIN | TEXT, "€ 😀".as_bytes()).await;
    }
}

/// `/ws` decodes with the same rules: a fragmented JSON request with a ping between its
/// fragments is answered, and framing errors close it.
#[tokio::test(flavor = "multi_thread")]
async fn ws_endpoint_follows_the_same_rules() {
    let server = TestServer::start(|_| {});
    let a = server.addr();
    for split in SPLITS {
        let mut c = Raw::open(a, "/ws?user=frag", split).await;
        let welcome = c.next().await.expect("welcome");
        assert!(String::from_utf8_lossy(&welcome.1).contains("welcome"));
        let mut wire = frame(TEXT, br#"{"type":"pi"#);
        wire.extend(frame(FIN | PING, b"p"));
        wire.extend(frame(FIN, br#"ng","id":7}"#));
        c.send(&wire).await;
        c.expect(FIN | PONG, b"p").await;
        let (first, pong) = c.next().await.expect("the JSON pong");
        assert_eq!(first, FIN | TEXT);
        let pong: serde_json::Value = serde_json::from_slice(&pong).unwrap();
        assert_eq!((&pong["type"], &pong["id"]), (&"pong".into(), &7.into()));
        c.send(&frame(FIN | TEXT, b"{\"type\":\"ping\",\"x\":\"\xff\"}"))
            .await;
        c.expect_close(1007).await;
    }
}

/// Requests in the same TCP write as the upgrade request arrive with it and are served. (They
/// were once refused with 1009: the decoder got its limits at its first read of the socket,
/// and these bytes are decoded before that.)
#[tokio::test(flavor = "multi_thread")]
async fn requests_in_the_upgrades_own_write_are_served() {
    let server = TestServer::start(|_| {});
    let mut wire = frame(FIN | TEXT, br#"{"type":"join","room":"r","id":1}"#);
    wire.extend(frame(
        FIN | TEXT,
        br#"{"type":"publish","room":"r","body":"early","id":2}"#,
    ));
    let mut c = common::RawWs::open(server.addr(), "/ws?user=eager", &wire).await;
    assert_eq!(c.recv_json().await["type"], "welcome");
    let join = c.recv_json().await;
    assert_eq!(
        (&join["type"], &join["id"]),
        (&"ack".into(), &1.into()),
        "{join}"
    );
    let publish = c.recv_json().await;
    assert_eq!(
        (&publish["id"], &publish["seq"]),
        (&2.into(), &1.into()),
        "{publish}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_is_off_unless_configured() {
    let server = TestServer::start(|_| {});
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let request = "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response))
        .await
        .expect("a response")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}
