//! The binary protocol (`Sec-WebSocket-Protocol: shardcast.proto`) through a real server,
//! checked against an independent implementation of the schema: `protoc` (the reference
//! compiler) encodes every client frame from its text form and decodes every server frame, so
//! a mistake shared by the server's prost code and the schema's reading of it cannot hide.
//! Covers negotiation, every frame kind in both forms, mixed rooms (JSON and binary members
//! get the same messages, seqs and bodies under the crossing rules, both ways), and bad binary
//! input (undecodable, truncated, oversized) closing with the documented code.
//!
//! Needs `protoc` (Debian's protobuf-compiler; scripts/test.sh installs it). Without it these
//! tests fail and say so: they are never skipped.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use shardcast::config::{Config, PresenceMode, RoomRule};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/shardcast.proto");

/// Runs protoc on `input` with `mode` (`--encode=T` or `--decode=T`).
fn protoc(mode: &str, input: &[u8]) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let mut child = Command::new("protoc")
        .args(["-I", dir, mode, SCHEMA])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("protoc not found ({e}): install protobuf-compiler (scripts/test.sh does)")
        });
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "protoc {mode} failed: {}\ninput: {:?}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(input)
    );
    out.stdout
}

/// A `ClientFrame` from its text form, encoded by protoc.
fn encode_client(text: &str) -> Vec<u8> {
    protoc("--encode=shardcast.v1.ClientFrame", text.as_bytes())
}

/// A `ServerFrame` decoded by protoc, as JSON: every field a key, a repeated field an array
/// once it appears twice (use [`list`]), strings and bytes as strings (bytes that are not
/// UTF-8 as an array of numbers).
fn decode_server(bytes: &[u8]) -> Value {
    let text = protoc("--decode=shardcast.v1.ServerFrame", bytes);
    let text = String::from_utf8(text).expect("protoc prints text");
    let mut tokens = Tokens(text.as_bytes(), 0);
    parse_fields(&mut tokens)
}

/// A repeated field as a list, whether it appeared once, many times or never.
fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Null => vec![],
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

struct Tokens<'a>(&'a [u8], usize);

impl Tokens<'_> {
    fn skip_ws(&mut self) {
        while self.1 < self.0.len() && self.0[self.1].is_ascii_whitespace() {
            self.1 += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.0.get(self.1).copied()
    }
    fn word(&mut self) -> String {
        self.skip_ws();
        let start = self.1;
        while self.1 < self.0.len()
            && (self.0[self.1].is_ascii_alphanumeric() || b"_.-".contains(&self.0[self.1]))
        {
            self.1 += 1;
        }
        String::from_utf8(self.0[start..self.1].to_vec()).unwrap()
    }
    fn quoted(&mut self) -> Vec<u8> {
        self.1 += 1;
        let mut out = Vec::new();
        loop {
            let c = self.0[self.1];
            self.1 += 1;
            match c {
                b'"' => return out,
                b'\\' => {
                    let e = self.0[self.1];
                    self.1 += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'0'..=b'7' => {
                            let mut n = u32::from(e - b'0');
                            for _ in 0..2 {
                                match self.0.get(self.1) {
                                    Some(d @ b'0'..=b'7') => {
                                        n = n * 8 + u32::from(d - b'0');
                                        self.1 += 1;
                                    }
                                    _ => break,
                                }
                            }
                            out.push(n as u8);
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

fn parse_fields(t: &mut Tokens<'_>) -> Value {
    let mut map = Map::new();
    while let Some(c) = t.peek() {
        if c == b'}' {
            t.1 += 1;
            break;
        }
        let name = t.word();
        assert!(
            !name.is_empty(),
            "protoc output: unexpected byte {:?}",
            c as char
        );
        let value = match t.peek() {
            Some(b':') => {
                t.1 += 1;
                match t.peek() {
                    Some(b'"') => {
                        let bytes = t.quoted();
                        match String::from_utf8(bytes) {
                            Ok(s) => Value::String(s),
                            Err(e) => json!(e.into_bytes()),
                        }
                    }
                    _ => {
                        let w = t.word();
                        match w.as_str() {
                            "true" => json!(true),
                            "false" => json!(false),
                            n => json!(n.parse::<u64>().unwrap_or_else(|_| panic!("{n}"))),
                        }
                    }
                }
            }
            Some(b'{') => {
                t.1 += 1;
                parse_fields(t)
            }
            other => panic!("protoc output: unexpected {other:?} after {name}"),
        };
        match map.get_mut(&name) {
            None => {
                map.insert(name, value);
            }
            Some(Value::Array(a)) if value.is_array() || !a.iter().all(Value::is_number) => {
                a.push(value)
            }
            Some(prev) => {
                let first = prev.take();
                *prev = json!([first, value]);
            }
        }
    }
    Value::Object(map)
}

/// A client of the binary protocol over tokio-tungstenite.
struct Proto {
    ws: Ws,
    name: String,
    welcome: Value,
}

impl Proto {
    async fn connect(addr: SocketAddr, path: &str) -> Proto {
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("shardcast.proto"),
        );
        let (ws, response) = tokio_tungstenite::connect_async(req)
            .await
            .unwrap_or_else(|e| panic!("proto connect {path}: {e}"));
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "shardcast.proto",
            "the server answers the subprotocol it chose"
        );
        let mut p = Proto {
            ws,
            name: path.into(),
            welcome: Value::Null,
        };
        p.welcome = p.recv().await;
        assert!(p.welcome["welcome"].is_object(), "{}", p.welcome);
        p
    }

    async fn send_text_form(&mut self, text: &str) {
        self.send_raw(encode_client(text)).await;
    }

    async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    async fn next(&mut self) -> Incoming {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing within {TIMEOUT:?}", self.name));
            return match next {
                Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Text(t))) => Incoming::Text(t.to_string()),
                Some(Ok(Message::Close(f))) => {
                    Incoming::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => Incoming::Ended(e.to_string()),
                None => Incoming::Ended("end".into()),
            };
        }
    }

    /// The next frame, which must be binary, decoded by protoc.
    async fn recv(&mut self) -> Value {
        match self.next().await {
            Incoming::Binary(b) => decode_server(&b),
            other => panic!("{}: expected a binary frame, got {other}", self.name),
        }
    }

    /// Sends `text` (a ClientFrame's text form, with `num_id: id`) and returns the frames up to
    /// and including the one that answers it.
    async fn call(&mut self, id: u64, text: &str) -> (Vec<Value>, Value) {
        self.send_text_form(&format!("num_id: {id} {text}")).await;
        let mut before = Vec::new();
        loop {
            let f = self.recv().await;
            if f["num_id"] == json!(id) {
                return (before, f);
            }
            before.push(f);
        }
    }

    async fn expect_close(&mut self, code: u16) {
        match self.next().await {
            Incoming::Close(Some((c, _))) => assert_eq!(c, code, "{}", self.name),
            other => panic!("{}: expected close {code}, got {other}", self.name),
        }
    }
}

fn server() -> TestServer {
    TestServer::start(|c: &mut Config| {
        c.jwt_secret = Some(SECRET.into());
        c.api_key = Some(KEY.into());
        c.occupancy_interval_ms = 100;
        c.read_interval_ms = 100;
        c.rooms = vec![
            RoomRule {
                prefix: "count:".into(),
                presence: Some(PresenceMode::Count),
                ..RoomRule::default()
            },
            RoomRule {
                prefix: "rc:".into(),
                receipts: Some(true),
                ..RoomRule::default()
            },
        ];
    })
}

const KEY: &str = "proto-api-key";

const ALL: &str = r#"{"room":"*","rights":["join","publish","presence","history"]}"#;

fn token(sub: &str, rooms: &[&str]) -> String {
    let mut claim: Vec<Value> = rooms.iter().map(|r| json!(r)).collect();
    claim.push(serde_json::from_str(ALL).unwrap());
    mint(
        SECRET,
        &json!({"sub": sub, "exp": now_secs() + 3600, "rooms": claim}),
    )
}

async fn proto(addr: SocketAddr, sub: &str, rooms: &[&str]) -> Proto {
    Proto::connect(addr, &format!("/ws?token={}", token(sub, rooms))).await
}

async fn json_client(addr: SocketAddr, sub: &str) -> Client {
    Client::connect_token(addr, &token(sub, &[])).await
}

/// Sends `frame` with a fresh id and returns the reply, reading past anything before it
/// (presence events of the other members).
async fn jcall(c: &mut Client, mut frame: Value) -> Value {
    let id = c.fresh_id();
    frame["id"] = id.clone();
    c.send_json(&frame).await;
    loop {
        let f = c.recv_json().await;
        if f["id"] == id {
            return f;
        }
    }
}

/// The next frame of type `ty`, reading past others.
async fn recv_until(c: &mut Client, ty: &str) -> Value {
    loop {
        let f = c.recv_json().await;
        if f["type"] == ty {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiation_answers_the_chosen_subprotocol_and_refuses_unknown_ones() {
    let server = server();
    let addr = server.addr();
    let url = format!("ws://{addr}/ws?token={}", token("neg", &[]));
    let open = |offer: Option<&'static str>| {
        let mut req = url.as_str().into_client_request().unwrap();
        if let Some(o) = offer {
            req.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(o));
        }
        tokio_tungstenite::connect_async(req)
    };
    // None asked: JSON, and no subprotocol answered (RFC 6455 4.2.2).
    let (mut ws, resp) = open(None).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.is_text(), "{first:?}");
    // The JSON one asked by name, past one we do not speak.
    let (mut ws, resp) = open(Some("chat.v2, shardcast.json")).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "shardcast.json");
    assert!(ws.next().await.unwrap().unwrap().is_text());
    // The client's order decides.
    let (mut ws, resp) = open(Some("shardcast.proto, shardcast.json")).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "shardcast.proto");
    let Message::Binary(b) = ws.next().await.unwrap().unwrap() else {
        panic!("a binary welcome")
    };
    assert_eq!(decode_server(&b)["welcome"]["user"], "neg");
    // Only unknown ones: 400 with a body that names what to ask for.
    let refused = connect(
        addr,
        &format!("/ws?token={}", token("neg", &[])),
        &[("sec-websocket-protocol", "mqtt, chat")],
    )
    .await
    .err()
    .expect("refused");
    refused.assert(400, "bad_request");
    let message = refused.body["message"].as_str().unwrap();
    assert!(
        message.contains("mqtt, chat") && message.contains("shardcast.proto"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_frame_kind_round_trips_in_the_binary_form() {
    let server = server();
    let addr = server.addr();
    // welcome
    let mut a = proto(addr, "alice", &["lobby", "vip"]).await;
    let w = &a.welcome["welcome"];
    assert_eq!(w["user"], "alice");
    let mut rooms: Vec<String> = list(&w["rooms"])
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    rooms.sort();
    assert_eq!(rooms, ["lobby", "vip"]);
    assert!(w["heartbeat_ms"].as_u64().unwrap() > 0);

    // join: the ack with the room's rule and rights; joined when another member comes.
    let (_, ack) = a.call(1, r#"join { room: "room1" }"#).await;
    assert_eq!(ack["ack"]["room"], "room1");
    assert_eq!(ack["ack"]["publish"], "members");
    assert_eq!(ack["ack"]["presence"], "list");
    assert_eq!(list(&ack["ack"]["rights"]).len(), 4);
    assert_eq!(ack["ack"]["members"], json!(1));
    let mut b = json_client(addr, "bob").await;
    jcall(&mut b, json!({"type": "join", "room": "room1"})).await;
    let joined = a.recv().await;
    assert_eq!(joined["joined"], json!({"room": "room1", "user": "bob"}));

    // publish (string id), then the member's copy; send and the recipient's copy.
    let (_, ack) = a
        .call_str(
            "p1",
            r#"publish { room: "room1" body: "{\"text\":\"hi\"}" key: "k-1" }"#,
        )
        .await;
    assert_eq!(ack["ack"]["seq"], json!(1));
    let m = recv_until(&mut b, "message").await;
    assert_eq!(m["body"], json!({"text": "hi"}));
    let (_, ack) = a.call(2, r#"send { to: "bob" body: "[1,2]" }"#).await;
    assert_eq!(ack["ack"]["to"], "bob");
    assert_eq!(ack["ack"]["seq"], json!(1));
    assert_eq!(recv_until(&mut b, "message").await["body"], json!([1, 2]));
    jcall(
        &mut b,
        json!({"type": "publish", "room": "room1", "body": "from bob"}),
    )
    .await;
    let m = a.recv().await;
    let m = &m["message"];
    assert_eq!(
        (&m["room"], &m["from"], &m["seq"]),
        (&json!("room1"), &json!("bob"), &json!(2))
    );
    assert_eq!(m["body"], "\"from bob\"");
    assert_eq!(m["body_json"], json!(true));
    assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
    jcall(
        &mut b,
        json!({"type": "send", "to": "alice", "body": {"n": 1}}),
    )
    .await;
    let dm = a.recv().await;
    assert_eq!(dm["message"]["to"], "alice");
    assert_eq!(dm["message"]["body"], r#"{"n":1}"#);

    // presence (list), history, sync (and a repeated join: no member count).
    let (_, p) = a.call(3, r#"presence { room: "room1" limit: 1 }"#).await;
    assert_eq!(p["presence"]["mode"], "list");
    assert_eq!(list(&p["presence"]["users"]), [json!("alice")]);
    assert_eq!(p["presence"]["more"], json!(true));
    let (_, h) = a.call(4, r#"history { room: "room1" limit: 5 }"#).await;
    let msgs = list(&h["history"]["messages"]);
    assert_eq!(h["history"]["room"], "room1");
    assert_eq!(
        msgs.iter().map(|m| m["seq"].clone()).collect::<Vec<_>>(),
        [json!(2), json!(1)]
    );
    assert_eq!(msgs[1]["body"], r#"{"text":"hi"}"#);
    assert!(
        h["history"].get("more").is_none(),
        "more = false is proto3's default"
    );
    let (_, s) = a.call(5, "sync { since: 0 }").await;
    assert_eq!(list(&s["sync"]["messages"])[0]["from"], "bob");

    // occupancy in a count room; a join with since and its recovery fields.
    a.call(6, r#"join { room: "count:x" }"#).await;
    jcall(&mut b, json!({"type": "join", "room": "count:x"})).await;
    // Occupancy events come at most every 100 ms, so alice's own join's may come first.
    loop {
        let occ = a.recv().await;
        assert_eq!(occ["occupancy"]["room"], "count:x", "{occ}");
        if occ["occupancy"]["members"] == json!(2) {
            break;
        }
    }
    let (_, p) = a.call(7, r#"presence { room: "count:x" }"#).await;
    assert_eq!(
        (&p["presence"]["mode"], &p["presence"]["members"]),
        (&json!("count"), &json!(2))
    );
    let (_, ack) = a.call(8, r#"leave { room: "room1" }"#).await;
    assert_eq!(ack["ack"], json!({"room": "room1"}));
    let (replay, ack) = a.call(9, r#"join { room: "room1" since: 1 }"#).await;
    assert!(replay.is_empty());
    let ack = &ack["ack"];
    assert_eq!(
        (&ack["recovered"], &ack["replayed"], &ack["truncated"]),
        (&json!(true), &json!(1), &json!(false))
    );
    assert_eq!(a.recv().await["message"]["seq"], json!(2));
    // left, when bob goes.
    jcall(&mut b, json!({"type": "leave", "room": "room1"})).await;
    assert_eq!(
        a.recv().await["left"],
        json!({"room": "room1", "user": "bob"})
    );

    // ping/pong, an error with its id, an unknown frame kind (a newer client's).
    let (_, pong) = a.call(10, "ping {}").await;
    assert!(pong["pong"].is_object());
    let (_, e) = a
        .call(11, r#"publish { room: "elsewhere" body: "1" }"#)
        .await;
    assert_eq!(e["error"]["code"], "not_member");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("elsewhere")
    );
    let mut unknown = encode_client("num_id: 12");
    unknown.extend_from_slice(&[0xa2, 0x06, 0x00]); // field 100, an empty message
    a.send_raw(unknown).await;
    let e = a.recv().await;
    assert_eq!(
        (&e["num_id"], &e["error"]["code"]),
        (&json!(12), &json!("unknown_type"))
    );

    issue_23_frames(&mut a, &mut b, addr).await;

    // refresh: removed for the room the new claim leaves out, then refreshed with its exp.
    let exp = now_secs() + 7200;
    let narrower = mint(
        SECRET,
        &json!({"sub": "alice", "exp": exp, "rooms": ["lobby", {"room": "room*", "rights": ["join"]}, {"room": "count:*", "rights": ["join"]}]}),
    );
    let (before, r) = a
        .call(13, &format!("refresh {{ token: {narrower:?} }}"))
        .await;
    let removed: Vec<&Value> = before.iter().filter_map(|f| f.get("removed")).collect();
    assert_eq!(removed.len(), 1, "{before:?}");
    assert_eq!(removed[0]["room"], "vip");
    assert!(removed[0]["reason"].as_str().unwrap().contains("token"));
    assert_eq!(r["refreshed"]["exp"], json!(exp));
}

/// The frames of signals, read positions, edits, deletes, reactions and folded history (issue
/// 23) in the binary form: alice (`a`) speaks it, bob (`b`) JSON, in a room with receipts.
async fn issue_23_frames(a: &mut Proto, b: &mut Client, addr: SocketAddr) {
    let room = json!("rc:1");
    let (_, ack) = a.call(20, r#"join { room: "rc:1" }"#).await;
    assert_eq!(ack["ack"]["read"], json!(0), "{ack}");
    jcall(b, json!({"type": "join", "room": "rc:1"})).await;
    jcall(
        b,
        json!({"type": "publish", "room": "rc:1", "body": {"text": "hi"}}),
    )
    .await;
    assert_eq!(a.recv_arm("message").await["seq"], json!(1));

    // signal, both ways: acked without a seq, no seq on the wire.
    let (_, ack) = a
        .call(21, r#"signal { room: "rc:1" body: "{\"typing\":true}" }"#)
        .await;
    assert_eq!(ack["ack"], json!({"room": "rc:1"}));
    assert_eq!(
        recv_until(b, "signal").await,
        json!({"type": "signal", "room": "rc:1", "from": "alice", "body": {"typing": true}})
    );
    b.send_json(&json!({"type": "signal", "room": "rc:1", "body": {"typing": false}}))
        .await;
    assert_eq!(
        a.recv_arm("signal").await,
        json!({"room": "rc:1", "from": "bob", "body": "{\"typing\":false}", "body_json": true})
    );

    // read with its ack, receipts both ways, the welcome's positions, an inbox read and the
    // `read` frame the user's other connection gets.
    let (_, ack) = a.call(22, r#"read { room: "rc:1" seq: 1 }"#).await;
    assert_eq!(ack["ack"], json!({"room": "rc:1", "read": 1}));
    let r = recv_until(b, "receipt").await;
    assert_eq!((&r["user"], &r["seq"]), (&json!("alice"), &json!(1)));
    jcall(b, json!({"type": "read", "room": "rc:1", "seq": 1})).await;
    // Receipts go to every member, the reader's own connections too.
    assert_eq!(
        a.recv_arm("receipt").await,
        json!({"room": "rc:1", "user": "alice", "seq": 1})
    );
    assert_eq!(
        a.recv_arm("receipt").await,
        json!({"room": "rc:1", "user": "bob", "seq": 1})
    );
    let mut a2 = proto(addr, "alice", &["rc:1"]).await;
    let w = &a2.welcome["welcome"];
    assert_eq!(w["inbox_seq"], json!(1));
    assert!(w.get("inbox_read").is_none(), "0 is proto3's default: {w}");
    assert_eq!(
        list(&w["reads"]),
        [json!({"room": "rc:1", "seq": 1, "read": 1})]
    );
    let (_, ack) = a2.call(1, "read { inbox: true seq: 1 }").await;
    assert_eq!(ack["ack"], json!({"inbox": true, "read": 1}));
    assert_eq!(a.recv_arm("read").await, json!({"inbox": true, "seq": 1}));

    // edit, react (and its noop repeat), unreact, delete, and the API's hard delete.
    let (_, ack) = a
        .call(23, r#"publish { room: "rc:1" body: "\"mine\"" }"#)
        .await;
    assert_eq!(ack["ack"]["seq"], json!(2));
    let (_, ack) = a
        .call(24, r#"edit { room: "rc:1" target: 2 body: "\"fixed\"" }"#)
        .await;
    assert_eq!(ack["ack"]["seq"], json!(3));
    let e = recv_until(b, "message").await;
    assert_eq!(e["seq"], json!(2));
    let e = recv_until(b, "message").await;
    assert_eq!(
        (&e["kind"], &e["target"], &e["body"]),
        (&json!("edit"), &json!(2), &json!("fixed"))
    );
    jcall(
        b,
        json!({"type": "edit", "room": "rc:1", "target": 1, "body": "hi2"}),
    )
    .await;
    let e = a.recv_arm("message").await;
    assert_eq!(
        (&e["kind"], &e["target"], &e["seq"], &e["body"]),
        (&json!("edit"), &json!(1), &json!(4), &json!("\"hi2\""))
    );
    let (_, ack) = a
        .call(25, r#"react { room: "rc:1" target: 1 emoji: "+1" }"#)
        .await;
    assert_eq!(ack["ack"]["seq"], json!(5));
    let e = recv_until(b, "message").await;
    assert_eq!((&e["kind"], &e["emoji"]), (&json!("react"), &json!("+1")));
    let (_, ack) = a
        .call(26, r#"react { room: "rc:1" target: 1 emoji: "+1" }"#)
        .await;
    assert_eq!(ack["ack"], json!({"room": "rc:1", "noop": true}));
    jcall(
        b,
        json!({"type": "react", "room": "rc:1", "target": 1, "emoji": "ok"}),
    )
    .await;
    let e = a.recv_arm("message").await;
    assert_eq!(
        e,
        json!({"room": "rc:1", "from": "bob", "seq": 6, "ts": e["ts"], "body": "null",
            "body_json": true, "kind": "react", "target": 1, "emoji": "ok"})
    );
    jcall(
        b,
        json!({"type": "unreact", "room": "rc:1", "target": 1, "emoji": "ok"}),
    )
    .await;
    let e = a.recv_arm("message").await;
    assert_eq!((&e["kind"], &e["emoji"]), (&json!("unreact"), &json!("ok")));
    let (_, ack) = a.call(27, r#"delete { room: "rc:1" target: 2 }"#).await;
    assert_eq!(ack["ack"]["seq"], json!(8));
    let e = recv_until(b, "message").await;
    assert_eq!((&e["kind"], &e["target"]), (&json!("delete"), &json!(2)));
    let reply = api(
        addr,
        "POST",
        "/api/delete",
        Some(KEY),
        r#"{"room":"rc:1","target":2,"hard":true}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let e = a.recv_arm("message").await;
    assert_eq!(
        (&e["kind"], &e["target"], &e["hard"]),
        (&json!("delete"), &json!(2), &json!(true))
    );

    // history with fold: the current state, a tombstone, reactions, the next page's before.
    let (_, h) = a.call(28, r#"history { room: "rc:1" fold: true }"#).await;
    let h = &h["history"];
    assert_eq!((&h["room"], &h["fold"]), (&room, &json!(true)), "{h}");
    assert!(h["before"].as_u64().is_some(), "{h}");
    let msgs = list(&h["messages"]);
    assert_eq!(msgs.len(), 2, "{h}");
    assert_eq!(
        (
            &msgs[0]["seq"],
            &msgs[0]["deleted"],
            &msgs[0]["erased"],
            &msgs[0]["body"]
        ),
        (&json!(2), &json!(true), &json!(true), &json!("null"))
    );
    assert_eq!(
        (&msgs[1]["seq"], &msgs[1]["edited"], &msgs[1]["body"]),
        (&json!(1), &json!(4), &json!("\"hi2\""))
    );
    assert_eq!(
        list(&msgs[1]["reactions"]),
        [json!({"emoji": "+1", "count": 1, "me": true})]
    );
    let (_, ack) = a
        .call(29, r#"unreact { room: "rc:1" target: 1 emoji: "+1" }"#)
        .await;
    assert!(ack["ack"]["seq"].as_u64().is_some(), "{ack}");
    let mut e = recv_until(b, "message").await;
    if e["hard"] == json!(true) {
        e = recv_until(b, "message").await; // the API's hard delete came first
    }
    assert_eq!((&e["kind"], &e["emoji"]), (&json!("unreact"), &json!("+1")));
    a.call(30, r#"leave { room: "rc:1" }"#).await;
}

impl Proto {
    /// The next frame with arm `arm` (its fields), reading past others.
    async fn recv_arm(&mut self, arm: &str) -> Value {
        loop {
            let mut f = self.recv().await;
            if let Some(v) = f.get_mut(arm) {
                return v.take();
            }
        }
    }

    async fn call_str(&mut self, id: &str, text: &str) -> (Vec<Value>, Value) {
        self.send_text_form(&format!("str_id: {id:?} {text}")).await;
        loop {
            let f = self.recv().await;
            if f["str_id"] == json!(id) {
                return (vec![], f);
            }
        }
    }
}

/// What a JSON client sees of a binary body: the JSON value when the bytes are JSON, else
/// `{"$b64": ...}`.
#[tokio::test(flavor = "multi_thread")]
async fn mixed_rooms_get_the_same_messages_and_bodies_cross_both_ways() {
    let server = server();
    let addr = server.addr();
    let mut p = proto(addr, "pat", &[]).await;
    let mut q = proto(addr, "quinn", &[]).await;
    let mut j = json_client(addr, "jo").await;
    let mut k = json_client(addr, "kim").await;
    p.call(1, r#"join { room: "mix" }"#).await;
    q.call(1, r#"join { room: "mix" }"#).await;
    j.join("mix").await;
    k.join("mix").await;
    // Presence events of the joins, read past.
    for _ in 0..3 {
        assert!(p.recv().await["joined"].is_object());
    }
    for _ in 0..2 {
        assert!(q.recv().await["joined"].is_object());
    }
    assert_eq!(j.recv_type("joined").await["user"], "kim");

    // From JSON: each body reaches binary members as its JSON text, flagged JSON, and JSON
    // members as the same value; {"$b64": ..} reaches binary members as the bytes.
    let json_bodies = [
        json!({"a": [1, "x"]}),
        json!("text"),
        json!(12.5),
        json!(null),
        json!({"$b64": "/wAB"}),
    ];
    for (i, body) in json_bodies.iter().enumerate() {
        let seq = j.publish("mix", body.clone()).await;
        assert_eq!(seq, i as u64 + 1);
        let km = k.recv_type("message").await;
        assert_eq!((&km["seq"], &km["body"]), (&json!(seq), body));
        for r in [&mut p, &mut q] {
            let m = r.recv().await;
            let m = &m["message"];
            assert_eq!(m["seq"], json!(seq));
            assert_eq!(m["from"], "jo");
            if i == 4 {
                assert_eq!(
                    m["body"],
                    json!([255, 0, 1]),
                    "$b64 crosses back to its bytes"
                );
                assert!(m.get("body_json").is_none());
            } else {
                assert_eq!(m["body"], json!(body.to_string()));
                assert_eq!(m["body_json"], json!(true));
            }
        }
    }

    // From binary: JSON bytes reach JSON members as that value; other bytes as $b64; binary
    // members get the bytes back either way.
    let cases: [(&str, Value, Value); 3] = [
        (
            r#"{\"t\":[1,2]}"#,
            json!({"t": [1, 2]}),
            json!(r#"{"t":[1,2]}"#),
        ),
        (r"\377\000\001", json!({"$b64": "/wAB"}), json!([255, 0, 1])),
        (
            "plain text",
            json!({"$b64": "cGxhaW4gdGV4dA=="}),
            json!("plain text"),
        ),
    ];
    for (i, (bytes, as_json, as_proto)) in cases.iter().enumerate() {
        let seq = 6 + i as u64;
        let (_, ack) = p
            .call(
                10 + i as u64,
                &format!(r#"publish {{ room: "mix" body: "{bytes}" }}"#),
            )
            .await;
        assert_eq!(ack["ack"]["seq"], json!(seq));
        for c in [&mut j, &mut k] {
            let m = c.recv_type("message").await;
            assert_eq!(
                (&m["seq"], &m["from"], &m["body"]),
                (&json!(seq), &json!("pat"), as_json)
            );
        }
        let m = q.recv().await;
        assert_eq!(
            (&m["message"]["seq"], &m["message"]["body"]),
            (&json!(seq), as_proto)
        );
        assert_eq!(m["message"]["body_json"].as_bool().unwrap_or(false), i == 0);
    }

    // Direct messages cross the same way, both directions.
    let (_, ack) = p.call(20, r#"send { to: "jo" body: "\001\002" }"#).await;
    assert_eq!(ack["ack"]["to"], "jo");
    assert_eq!(
        j.recv_type("message").await["body"],
        json!({"$b64": "AQI="})
    );
    j.dm("pat", json!({"$b64": "AQI="})).await;
    let m = p.recv().await;
    assert_eq!(
        (&m["message"]["from"], &m["message"]["body"]),
        (&json!("jo"), &json!("\u{1}\u{2}"))
    );

    // The HTTP API takes a binary body as {"$b64": ..} too.
    let body = r#"{"room":"mix","body":{"$b64":"/wAB"},"from":"shop"}"#;
    let reply = api(addr, "POST", "/api/publish", Some(KEY), body).await;
    assert_eq!((reply.status, &reply.body), (200, &json!({"seq": 9})));
    let m = q.recv().await;
    let expected = (&json!("shop"), &json!([255, 0, 1]));
    assert_eq!((&m["message"]["from"], &m["message"]["body"]), expected);
    assert_eq!(
        recv_until(&mut j, "message").await["body"],
        json!({"$b64": "/wAB"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_binary_frames_close_with_the_documented_code_and_harm_no_one() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api_key = Some(KEY.into());
        c.max_message_size = 1024;
    });
    let addr = server.addr();
    let mut n = json_client(addr, "neighbour").await;
    n.join("r").await;

    // Not a ClientFrame at all (a field of wire type 7), and one cut short: 1007.
    let undecodable: [Vec<u8>; 3] = [
        vec![0x0f, 0xff, 0xff],
        encode_client(r#"num_id: 1 publish { room: "r" body: "12345678" }"#)[..9].to_vec(),
        vec![0x82, 0x01, 0x05, b'a'], // a message field claiming 5 bytes, with 1
    ];
    for bytes in undecodable {
        let mut v = proto(addr, "victim", &[]).await;
        v.send_raw(bytes.clone()).await;
        v.expect_close(1007).await;
    }

    let mut v = proto(addr, "victim", &[]).await;
    v.call(1, r#"join { room: "r" }"#).await;
    let _ = n.recv_type("joined").await;
    // Over max_message_size: too_large, and the connection stays.
    let big = encode_client(&format!(
        r#"num_id: 2 publish {{ room: "r" body: "{}" }}"#,
        "x".repeat(2000)
    ));
    v.send_raw(big).await;
    let e = v.recv().await;
    assert_eq!(e["error"]["code"], "too_large");
    // A text frame on a binary connection: bad_request, and the connection stays.
    v.ws.send(Message::text(r#"{"type":"ping","id":3}"#))
        .await
        .unwrap();
    assert_eq!(v.recv().await["error"]["code"], "bad_request");
    // Fields a JSON client would be refused for are refused the same way, with the id.
    let (_, e) = v.call(4, r#"join { room: "bad name!" }"#).await;
    assert_eq!(e["error"]["code"], "invalid_name");
    let (_, e) = v
        .call(5, r#"publish { room: "r" body: "1" key: "a b" }"#)
        .await;
    assert_eq!(e["error"]["code"], "bad_request");
    let (_, e) = v.call(6, "join {}").await;
    assert_eq!(e["error"]["code"], "bad_request");
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let (_, e) = v
        .call(7, &format!(r#"publish {{ room: "r" body: "{deep}" }}"#))
        .await;
    assert_eq!(e["error"]["code"], "bad_request");
    let (_, ack) = v
        .call(8, r#"publish { room: "r" body: "\"still here\"" }"#)
        .await;
    assert_eq!(ack["ack"]["seq"], json!(1));
    assert_eq!(n.recv_type("message").await["body"], "still here");
    // A frame over 16x the limit: 1009.
    v.send_raw(vec![0; 16 * 1024 + 1]).await;
    v.expect_close(1009).await;
    // The neighbour never noticed.
    assert_eq!(jcall(&mut n, json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_frame_auth_reads_a_binary_connect() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api_key = Some(KEY.into());
        c.first_frame_auth = true;
    });
    let addr = server.addr();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("shardcast.proto"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut p = Proto {
        ws,
        name: "ff".into(),
        welcome: Value::Null,
    };
    p.send_text_form(&format!("connect {{ token: {:?} }}", token("ff", &[])))
        .await;
    assert_eq!(p.recv().await["welcome"]["user"], "ff");
    let (_, pong) = p.call(1, "ping {}").await;
    assert!(pong["pong"].is_object());
}

/// The connect hook's presence info reaches a binary member: `Membership.info` on `joined`,
/// `Presence.info` by user (both a JSON object's text), as a JSON member sees it.
#[tokio::test(flavor = "multi_thread")]
async fn presence_info_in_joined_and_presence() {
    let backend = common::hook_backend::Backend::start().await;
    let server = TestServer::start(|c| {
        c.hook_url = Some(backend.url.clone());
        c.hook_connect = true;
    });
    let addr = server.addr();
    let vip = json!({"name": "VIP vipkim", "tags": ["a", "b"]});
    let mut p = Proto::connect(addr, "/ws?user=watcher").await;
    p.call(1, r#"join { room: "lobby" }"#).await;
    let mut kim = Client::connect_dev(addr, "vipkim").await;
    kim.join("lobby").await;
    let joined = p.recv().await;
    assert_eq!(joined["joined"]["user"], "vipkim", "{joined}");
    let info = joined["joined"]["info"].as_str().expect("info's text");
    assert_eq!(serde_json::from_str::<Value>(info).unwrap(), vip);

    let (_, reply) = p.call(2, r#"presence { room: "lobby" }"#).await;
    let entries = list(&reply["presence"]["info"]);
    assert_eq!(entries.len(), 1, "{reply}");
    assert_eq!(entries[0]["key"], "vipkim", "{reply}");
    let info = entries[0]["value"].as_str().expect("info's text");
    assert_eq!(serde_json::from_str::<Value>(info).unwrap(), vip);
}
