//! permessage-deflate (RFC 7692) against a real server, from a raw-TCP client that compresses
//! and inflates with flate2 on its own (never the server's code): negotiation, compressed
//! broadcasts to mixed members, compressed and fragmented client messages, and refusals.

mod common;

use std::net::SocketAddr;

use common::{TIMEOUT, TestServer, client_frame};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

/// The offer every browser sends.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

fn server(min: Option<usize>) -> TestServer {
    TestServer::start(|c| {
        c.compression_min_bytes = min;
        c.max_message_size = 4096;
    })
}

/// Raw deflate with a sync flush and its 4-byte tail removed (RFC 7692 7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert_eq!(c.total_in() as usize, data.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// RFC 7692 7.2.2: append the tail, inflate.
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    let input = [data, &[0, 0, 0xff, 0xff]].concat();
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len(), "all of it inflated");
    out
}

struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` response, if any.
    extensions: Option<String>,
    next_id: u64,
}

impl Raw {
    /// A `/ws` connection of `user`, past its `welcome`.
    async fn open(addr: SocketAddr, user: &str, offer: Option<&str>) -> Raw {
        let mut raw = Raw::upgrade(addr, &format!("/ws?user={user}"), offer).await;
        let (_, welcome) = raw.next_message().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        raw
    }

    /// The upgrade of `path`, with `offer` as its `Sec-WebSocket-Extensions`.
    async fn upgrade(addr: SocketAddr, path: &str, offer: Option<&str>) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let offer = offer.map_or(String::new(), |o| {
            format!("Sec-WebSocket-Extensions: {o}\r\n")
        });
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
            extensions: None,
            next_id: 0,
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await > 0, "EOF during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_string())
        });
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(TIMEOUT, self.tcp.read(&mut chunk))
            .await
            .expect("nothing read in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next server frame: its first byte and payload; `None` at EOF.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(frame) = common::take_server_frame(&mut self.buf) {
                return Some(frame);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The next text message as JSON, and whether it came compressed (inflated here).
    async fn next_message(&mut self) -> (bool, Value) {
        let (first, payload) = self.frame().await.expect("a frame");
        assert_eq!(first & 0x0F, TEXT, "a text frame, got {first:#x}");
        assert_eq!(first & FIN, FIN, "server messages are one frame");
        let compressed = first & RSV1 != 0;
        let text = if compressed {
            inflate(&payload)
        } else {
            payload
        };
        (compressed, serde_json::from_slice(&text).unwrap())
    }

    /// The next message of `ty`, skipping others (presence and the like).
    async fn next_of(&mut self, ty: &str) -> (bool, Value, usize) {
        loop {
            let (first, payload) = self.frame().await.expect("a frame");
            if first & 0x0F != TEXT {
                continue; // a pong
            }
            let compressed = first & RSV1 != 0;
            let wire = payload.len();
            let text = if compressed {
                inflate(&payload)
            } else {
                payload
            };
            let v: Value = serde_json::from_slice(&text).unwrap();
            if v["type"] == ty {
                return (compressed, v, wire);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.tcp.write_all(bytes).await;
    }

    /// Sends a request, compressed or not, and returns the reply with its id.
    async fn call(&mut self, mut request: Value, compressed: bool) -> Value {
        self.next_id += 1;
        request["id"] = self.next_id.into();
        let text = request.to_string();
        let wire = match compressed {
            true => client_frame(FIN | RSV1 | TEXT, &deflate(text.as_bytes())),
            false => client_frame(FIN | TEXT, text.as_bytes()),
        };
        self.send(&wire).await;
        loop {
            let (_, reply) = self.next_message().await;
            if reply["id"] == self.next_id {
                return reply;
            }
        }
    }

    async fn join(&mut self, room: &str) {
        let ack = self
            .call(json!({"type": "join", "room": room}), false)
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }

    /// Reads until the server's close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        while let Some((first, payload)) = self.frame().await {
            if first & 0x0F == CLOSE {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
        panic!("EOF without a close frame");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiation_follows_the_offer_and_the_config() {
    let on = server(Some(256));
    let a = on.addr();
    let accepted = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    for offer in [
        BROWSER_OFFER,
        "permessage-deflate",
        "permessage-deflate; client_no_context_takeover; client_max_window_bits=9",
        // A declined first offer falls back to the second.
        "permessage-deflate; server_max_window_bits=10, permessage-deflate",
    ] {
        let c = Raw::open(a, "n", Some(offer)).await;
        assert_eq!(c.extensions.as_deref(), Some(accepted), "{offer}");
    }
    let c = Raw::open(
        a,
        "n",
        Some("permessage-deflate; server_max_window_bits=15"),
    )
    .await;
    assert_eq!(
        c.extensions.as_deref(),
        Some(&*format!("{accepted}; server_max_window_bits=15"))
    );
    for offer in [
        None,
        Some("x-webkit-deflate-frame"),
        Some("permessage-deflate; server_max_window_bits=12"),
        Some("permessage-deflate; client_max_window_bits=20"),
        Some("permessage-deflate; mystery=1"),
    ] {
        let c = Raw::open(a, "n", offer).await;
        assert_eq!(c.extensions, None, "{offer:?}");
    }
    // Off by default: never negotiated.
    let off = server(None);
    let c = Raw::open(off.addr(), "n", Some(BROWSER_OFFER)).await;
    assert_eq!(c.extensions, None);
}

/// `/echo` negotiates permessage-deflate as `/ws` does, so a conformance suite's compression
/// cases (Autobahn's sections 12 and 13) reach the server's RFC 7692 code: a compressed message
/// comes back compressed when it is long enough, plain otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn echo_negotiates_permessage_deflate_like_ws() {
    let server = TestServer::start(|c| {
        c.compression_min_bytes = Some(64);
        c.echo = true;
    });
    let accepted = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    let mut raw = Raw::upgrade(server.addr(), "/echo", Some(BROWSER_OFFER)).await;
    assert_eq!(raw.extensions.as_deref(), Some(accepted));
    let long = "echo me, compressed ".repeat(20);
    for (text, compressed) in [(long.as_str(), true), ("short", false)] {
        raw.send(&client_frame(FIN | RSV1 | TEXT, &deflate(text.as_bytes())))
            .await;
        let (first, payload) = raw.frame().await.expect("the echo");
        assert_eq!(first & RSV1 != 0, compressed, "{text}");
        let back = if compressed {
            inflate(&payload)
        } else {
            payload
        };
        assert_eq!(back, text.as_bytes());
    }
}

/// One publish to many members: those that negotiated get the same compressed bytes, the
/// others the plain frame, and all read the same message. A small one goes plain to all.
#[tokio::test(flavor = "multi_thread")]
async fn a_broadcast_is_compressed_once_for_every_member_that_negotiated() {
    let server = server(Some(512));
    let a = server.addr();
    let mut members = Vec::new();
    for i in 0..10 {
        let offer = (i % 3 != 0).then_some(BROWSER_OFFER);
        let mut c = Raw::open(a, &format!("m{i}"), offer).await;
        c.join("lobby").await;
        members.push(c);
    }
    let mut publisher = Raw::open(a, "pub", None).await;
    publisher.join("lobby").await;
    let text = "the quick brown fox jumps over the lazy dog; ".repeat(40);
    let ack = publisher
        .call(
            json!({"type": "publish", "room": "lobby", "body": {"text": text}}),
            false,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut compressed_sizes = Vec::new();
    let mut first: Option<Value> = None;
    for (i, c) in members.iter_mut().enumerate() {
        let (compressed, msg, wire) = c.next_of("message").await;
        assert_eq!(compressed, i % 3 != 0, "member {i}");
        assert_eq!(msg["body"]["text"], text.as_str());
        if compressed {
            assert!(wire < text.len() / 4, "compressed to {wire} bytes");
            compressed_sizes.push(wire);
        }
        match &first {
            None => first = Some(msg),
            Some(f) => assert_eq!(f, &msg, "member {i} read the same message"),
        }
    }
    assert!(compressed_sizes.windows(2).all(|w| w[0] == w[1]));
    let ack = publisher
        .call(
            json!({"type": "publish", "room": "lobby", "body": "hi"}),
            false,
        )
        .await;
    assert_eq!(ack["type"], "ack");
    for c in &mut members {
        let (compressed, msg, _) = c.next_of("message").await;
        assert!(!compressed, "under compression_min_bytes");
        assert_eq!(msg["body"], "hi");
    }
}

/// A compressed publish, whole and in fragments, reaches a plain member as sent.
#[tokio::test(flavor = "multi_thread")]
async fn compressed_client_messages_are_inflated() {
    let server = server(Some(512));
    let a = server.addr();
    let mut reader = Raw::open(a, "reader", None).await;
    reader.join("r").await;
    let mut writer = Raw::open(a, "writer", Some(BROWSER_OFFER)).await;
    writer.join("r").await;
    let ack = writer
        .call(
            json!({"type": "publish", "room": "r", "body": "whole"}),
            true,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(reader.next_of("message").await.1["body"], "whole");

    let body = "fragmented and compressed ".repeat(30);
    let request = json!({"type": "publish", "room": "r", "body": body, "id": "f"}).to_string();
    let packed = deflate(request.as_bytes());
    let third = packed.len() / 3;
    let mut wire = client_frame(RSV1 | TEXT, &packed[..third]);
    wire.extend(client_frame(0x9 | FIN, b"ping between"));
    wire.extend(client_frame(0, &packed[third..2 * third]));
    wire.extend(client_frame(FIN, &packed[2 * third..]));
    writer.send(&wire).await;
    let (_, ack, _) = writer.next_of("ack").await;
    assert_eq!(ack["id"], "f");
    assert_eq!(reader.next_of("message").await.1["body"], body.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zip_bomb_is_refused_with_1009() {
    let server = server(Some(512));
    let mut c = Raw::open(server.addr(), "bomb", Some(BROWSER_OFFER)).await;
    // 2 MB of spaces deflate to about 2 KiB, under the 4096-byte limit; inflated, far over it.
    let mut bomb = br#"{"type":"publish","room":"r","body":""#.to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 2 << 20));
    let packed = deflate(&bomb);
    assert!(packed.len() < 4096, "{}", packed.len());
    c.send(&client_frame(FIN | RSV1 | TEXT, &packed)).await;
    assert_eq!(c.close_code().await, 1009);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_compression_is_refused() {
    let server = server(Some(512));
    let a = server.addr();
    let ping = br#"{"type":"ping"}"#;
    // RSV1 without the extension negotiated: a protocol error, as before.
    let mut c = Raw::open(a, "x", None).await;
    c.send(&client_frame(FIN | RSV1 | TEXT, &deflate(ping)))
        .await;
    assert_eq!(c.close_code().await, 1002);
    // Compression on but not negotiated by this client: the same.
    let mut c = Raw::open(server.addr(), "x", Some("x-other")).await;
    c.send(&client_frame(FIN | RSV1 | TEXT, &deflate(ping)))
        .await;
    assert_eq!(c.close_code().await, 1002);
    // RSV1 on a continuation frame, or on a control frame.
    let mut c = Raw::open(a, "x", Some(BROWSER_OFFER)).await;
    let mut wire = client_frame(TEXT, b"{\"type\":");
    wire.extend(client_frame(FIN | RSV1, b"\"ping\"}"));
    c.send(&wire).await;
    assert_eq!(c.close_code().await, 1002);
    let mut c = Raw::open(a, "x", Some(BROWSER_OFFER)).await;
    c.send(&client_frame(FIN | RSV1 | 0x9, b"p")).await;
    assert_eq!(c.close_code().await, 1002);
    // Data that is not deflate: 1007, like text that is not UTF-8.
    let mut c = Raw::open(a, "x", Some(BROWSER_OFFER)).await;
    c.send(&client_frame(FIN | RSV1 | TEXT, &[0xff; 40])).await;
    assert_eq!(c.close_code().await, 1007);
    // Valid deflate of invalid UTF-8.
    let mut c = Raw::open(a, "x", Some(BROWSER_OFFER)).await;
    c.send(&client_frame(FIN | RSV1 | TEXT, &deflate(b"\xff\xfe")))
        .await;
    assert_eq!(c.close_code().await, 1007);
    // A compressed ping request still works on a fresh connection.
    let mut c = Raw::open(a, "x", Some(BROWSER_OFFER)).await;
    let pong = c.call(json!({"type": "ping"}), true).await;
    assert_eq!(pong["type"], "pong");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The server's compressor and inflater agree with flate2's, both ways.
    #[test]
    fn compress_and_inflate_round_trip(data in proptest::collection::vec(any::<u8>(), 0..3000),
                                       text in "[a-z {}\":,]{0,2000}") {
        for input in [&data[..], text.as_bytes()] {
            let packed = shardcast::deflate::compress(input);
            prop_assert_eq!(&inflate(&packed), input);
            let back = shardcast::deflate::inflate(&deflate(input), 1 << 20).unwrap();
            prop_assert_eq!(&back, input);
            prop_assert_eq!(
                shardcast::deflate::inflate(&deflate(input), input.len().saturating_sub(1)).is_err(),
                !input.is_empty()
            );
        }
    }
}
