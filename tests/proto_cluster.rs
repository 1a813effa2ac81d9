//! The binary protocol in cluster mode: two nodes on a real redis-server, a `shardcast.proto`
//! client on one and a JSON client on the other, in one room. Both see every message with the
//! same seq and bodies equal under the crossing rules (docs/protocol.md, "Bodies across
//! formats"), and history and `join` with `since` work over proto on either node.
//!
//! Frames are written and read with the schema's prost types (`shardcast::wire::schema`);
//! tests/proto.rs checks those against protoc.

mod common;

use std::net::SocketAddr;

use common::cluster::Cluster;
use common::redis::RedisServer;
use common::*;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use shardcast::wire::schema::{self, client_frame, server_frame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A dev-mode client of the binary protocol.
struct Proto {
    ws: Ws,
    user: &'static str,
}

impl Proto {
    async fn connect(addr: SocketAddr, user: &'static str) -> Proto {
        let mut req = format!("ws://{addr}/ws?user={user}")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("shardcast.proto"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut p = Proto { ws, user };
        let welcome = p.recv().await;
        assert!(
            matches!(welcome.frame, Some(server_frame::Frame::Welcome(_))),
            "{welcome:?}"
        );
        p
    }

    async fn recv(&mut self) -> schema::ServerFrame {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing within {TIMEOUT:?}", self.user));
            match next {
                Some(Ok(Message::Binary(b))) => {
                    return schema::ServerFrame::decode(&b[..]).unwrap();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("{}: expected a binary frame, got {other:?}", self.user),
            }
        }
    }

    /// Sends `frame` with id `id` and returns the frames before its answer, and the answer.
    async fn call(
        &mut self,
        id: u64,
        frame: client_frame::Frame,
    ) -> (Vec<schema::ServerFrame>, server_frame::Frame) {
        let bytes = schema::ClientFrame {
            id: Some(client_frame::Id::NumId(id)),
            frame: Some(frame),
        }
        .encode_to_vec();
        self.ws.send(Message::binary(bytes)).await.unwrap();
        let mut before = Vec::new();
        loop {
            let f = self.recv().await;
            if f.id == Some(server_frame::Id::NumId(id)) {
                return (before, f.frame.unwrap());
            }
            before.push(f);
        }
    }

    async fn message(&mut self) -> schema::Message {
        match self.recv().await.frame {
            Some(server_frame::Frame::Message(m)) => m,
            other => panic!("{}: expected a message, got {other:?}", self.user),
        }
    }

    async fn ack(&mut self, id: u64, frame: client_frame::Frame) -> schema::Ack {
        match self.call(id, frame).await.1 {
            server_frame::Frame::Ack(a) => a,
            other => panic!("{}: expected an ack, got {other:?}", self.user),
        }
    }
}

fn join(room: &str, since: Option<u64>) -> client_frame::Frame {
    client_frame::Frame::Join(schema::Join {
        room: room.into(),
        since,
        epoch: None,
    })
}

fn publish(room: &str, body: &[u8]) -> client_frame::Frame {
    client_frame::Frame::Publish(schema::Publish {
        room: room.into(),
        body: body.to_vec(),
        key: None,
    })
}

/// A body as a JSON member sees it, given as a proto member gets it (bytes, JSON flag).
fn as_json(body: &[u8], body_json: bool) -> Value {
    if body_json {
        serde_json::from_slice(body).unwrap()
    } else {
        use base64::Engine as _;
        json!({"$b64": base64::engine::general_purpose::STANDARD.encode(body)})
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proto_and_json_members_on_two_nodes_share_seqs_bodies_history_and_recovery() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(2, &redis.url(), &["--presence-events", "false"]).await;
    let mut p = Proto::connect(cluster.addr(0), "pat").await;
    let mut j = dev(cluster.addr(1), "jo").await;
    assert_eq!(p.ack(1, join("mix", None)).await.seq, Some(0));
    assert_eq!(j.join("mix").await, 0);

    // JSON → proto, across nodes: the same seq; a JSON body as its text flagged JSON, and
    // {"$b64": ..} as the bytes it stands for.
    let json_bodies = [
        json!({"text": "hi", "n": [1, 2]}),
        json!("plain"),
        json!({"$b64": "/wAB"}),
    ];
    let mut seen = Vec::new();
    for body in &json_bodies {
        let seq = j.publish("mix", body.clone()).await;
        let m = p.message().await;
        assert_eq!(
            (m.seq, m.room.as_str(), m.from.as_str()),
            (seq, "mix", "jo")
        );
        assert_eq!(as_json(&m.body, m.body_json), *body, "seq {seq}");
        seen.push((seq, body.clone()));
    }

    // Proto → JSON, across nodes: JSON bytes as the value, other bytes as {"$b64": ..}.
    let proto_bodies: [&[u8]; 2] = [br#"{"t":[1,2]}"#, &[0xff, 0, 1]];
    for (i, body) in proto_bodies.iter().enumerate() {
        let ack = p.ack(10 + i as u64, publish("mix", body)).await;
        let seq = ack.seq.unwrap();
        let m = j.recv_type("message").await;
        let expected = as_json(body, i == 0);
        assert_eq!(
            (&m["seq"], &m["from"], &m["body"]),
            (&json!(seq), &json!("pat"), &expected)
        );
        seen.push((seq, expected));
    }
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5],
        "one order across both nodes and forms"
    );

    // History over proto, on the node the JSON messages were not published on.
    let history = client_frame::Frame::History(schema::HistoryRequest {
        room: "mix".into(),
        ..Default::default()
    });
    let server_frame::Frame::History(page) = p.call(20, history).await.1 else {
        panic!("not a history page")
    };
    let got: Vec<(u64, Value)> = (page.messages.iter())
        .map(|m| (m.seq, as_json(&m.body, m.body_json)))
        .collect();
    let newest_first: Vec<_> = seen.iter().rev().cloned().collect();
    assert_eq!(got, newest_first);
    assert!(!page.more);

    // Recovery over proto on the other node: a join with since replays what was missed, in
    // order, then goes live.
    let mut r = Proto::connect(cluster.addr(1), "rue").await;
    let ack = r.ack(1, join("mix", Some(2))).await;
    assert_eq!(
        (ack.seq, ack.recovered, ack.replayed),
        (Some(5), Some(true), Some(3))
    );
    for (seq, body) in &seen[2..] {
        let m = r.message().await;
        assert_eq!((m.seq, as_json(&m.body, m.body_json)), (*seq, body.clone()));
    }
    let seq = j.publish("mix", json!("live")).await;
    for c in [&mut p, &mut r] {
        let m = c.message().await;
        assert_eq!(
            (m.seq, &m.body[..], m.body_json),
            (seq, &b"\"live\""[..], true)
        );
    }
}
