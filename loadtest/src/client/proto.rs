//! The binary protocol (`shardcast.proto`) for a bot connection: each JSON request the bot
//! builds is sent as a `ClientFrame`, and each binary `ServerFrame` is read back into the JSON
//! layout the rest of the bot parses, so the scenarios do not know which form a connection
//! speaks. The schema's Rust types are the server's (`shardcast::wire::schema`).
//!
//! Owns the translation. Its cost is the bot's (its own core), never the server's.

use prost::Message as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use shardcast::wire::schema::{self, client_frame, server_frame};

/// A request the bot built (`RequestBuf`) as a binary `ClientFrame`.
pub fn request(json: &[u8]) -> anyhow::Result<Vec<u8>> {
    #[derive(Deserialize)]
    struct Req<'a> {
        #[serde(rename = "type")]
        ty: &'a str,
        id: Option<u64>,
        room: Option<&'a str>,
        to: Option<&'a str>,
        since: Option<u64>,
        key: Option<&'a str>,
        #[serde(borrow)]
        body: Option<&'a RawValue>,
    }
    let r: Req<'_> = serde_json::from_slice(json)?;
    let s = |v: Option<&str>| v.unwrap_or_default().to_owned();
    let body = r
        .body
        .map(|b| b.get().as_bytes().to_vec())
        .unwrap_or_default();
    let frame = match r.ty {
        "join" => client_frame::Frame::Join(schema::Join {
            room: s(r.room),
            since: r.since,
            epoch: None,
        }),
        "leave" => client_frame::Frame::Leave(schema::Leave { room: s(r.room) }),
        "publish" => client_frame::Frame::Publish(schema::Publish {
            room: s(r.room),
            body,
            key: r.key.map(str::to_owned),
        }),
        "send" => client_frame::Frame::Send(schema::Send {
            to: s(r.to),
            body,
            key: r.key.map(str::to_owned),
        }),
        "ping" => client_frame::Frame::Ping(schema::Ping {}),
        other => anyhow::bail!("the bot has no binary form for {other:?}"),
    };
    Ok(schema::ClientFrame {
        id: r.id.map(client_frame::Id::NumId),
        frame: Some(frame),
    }
    .encode_to_vec())
}

/// A binary `ServerFrame` in the JSON layout the bot reads (a message exactly as
/// `parse_message_fast` expects it); `None` if it does not decode.
pub fn server_frame(bytes: &[u8]) -> Option<Vec<u8>> {
    let f = schema::ServerFrame::decode(bytes).ok()?;
    let mut v = serde_json::Map::new();
    if let Some(server_frame::Id::NumId(id)) = f.id {
        v.insert("id".into(), id.into());
    }
    let (ty, rest) = match f.frame? {
        server_frame::Frame::Message(m) => return Some(message(&m)),
        server_frame::Frame::Welcome(w) => (
            "welcome",
            serde_json::json!({"user": w.user, "rooms": w.rooms, "heartbeat_ms": w.heartbeat_ms, "inbox_seq": w.inbox_seq}),
        ),
        server_frame::Frame::Joined(m) => (
            "joined",
            serde_json::json!({"room": m.room, "user": m.user}),
        ),
        server_frame::Frame::Left(m) => {
            ("left", serde_json::json!({"room": m.room, "user": m.user}))
        }
        server_frame::Frame::Occupancy(o) => (
            "occupancy",
            serde_json::json!({"room": o.room, "members": o.members}),
        ),
        server_frame::Frame::Removed(r) => ("removed", serde_json::json!({"room": r.room})),
        server_frame::Frame::Ack(a) => (
            "ack",
            serde_json::json!({"room": a.room, "seq": a.seq, "members": a.members,
                "presence": Some(a.presence).filter(|p| !p.is_empty()),
                "recovered": a.recovered, "replayed": a.replayed, "truncated": a.truncated}),
        ),
        server_frame::Frame::Error(e) => (
            "error",
            serde_json::json!({"code": e.code, "message": e.message}),
        ),
        server_frame::Frame::Pong(_) => ("pong", serde_json::json!({})),
        server_frame::Frame::Presence(_) => ("presence", serde_json::json!({})),
        server_frame::Frame::Refreshed(_) => ("refreshed", serde_json::json!({})),
        server_frame::Frame::History(_) => ("history", serde_json::json!({})),
        server_frame::Frame::Sync(_) => ("sync", serde_json::json!({})),
        // The bot sends no signals or reads; a scenario that did would see these.
        server_frame::Frame::Signal(g) => (
            "signal",
            serde_json::json!({"room": g.room, "from": g.from}),
        ),
        server_frame::Frame::Read(r) => ("read", serde_json::json!({"seq": r.seq})),
        server_frame::Frame::Receipt(r) => (
            "receipt",
            serde_json::json!({"room": r.room, "user": r.user, "seq": r.seq}),
        ),
    };
    // `type` first: the bot reads presence events' kind from the frame's start.
    let mut out = serde_json::Map::new();
    out.insert("type".into(), ty.into());
    out.extend(v);
    if let serde_json::Value::Object(rest) = rest {
        out.extend(rest.into_iter().filter(|(_, v)| !v.is_null()));
    }
    serde_json::to_vec(&out).ok()
}

/// `{"type":"message","room":R|"to":U,"from":F,"seq":N,"ts":T,"body":B}`. The bot's bodies are
/// JSON text, so `body` is spliced as it came.
fn message(m: &schema::Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + m.body.len());
    if m.to.is_empty() {
        out.extend_from_slice(br#"{"type":"message","room":""#);
        out.extend_from_slice(m.room.as_bytes());
    } else {
        out.extend_from_slice(br#"{"type":"message","to":""#);
        out.extend_from_slice(m.to.as_bytes());
    }
    out.extend_from_slice(br#"","from":""#);
    out.extend_from_slice(m.from.as_bytes());
    out.extend_from_slice(br#"","seq":"#);
    out.extend_from_slice(itoa::Buffer::new().format(m.seq).as_bytes());
    out.extend_from_slice(br#","ts":"#);
    out.extend_from_slice(itoa::Buffer::new().format(m.ts).as_bytes());
    out.extend_from_slice(br#","body":"#);
    if m.body_json {
        out.extend_from_slice(&m.body);
    } else {
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_frames_translate() {
        let bin = request(br#"{"type":"publish","room":"r","id":3,"key":"k","body":"x"}"#).unwrap();
        let frame = shardcast::wire::decode(&bin).unwrap();
        let parsed = format!("{:?}", frame.request());
        let json = r#"{"type":"publish","id":3,"room":"r","body":"x","key":"k"}"#;
        assert_eq!(parsed, format!("{:?}", shardcast::protocol::parse(json)));
        let json = br#"{"type":"message","room":"r","from":"a","seq":4,"ts":5,"body":"x"}"#;
        let mut framed = Vec::new();
        shardcast::ws::push_frame(&mut framed, shardcast::ws::OP_TEXT, false, json);
        let bin = shardcast::wire::to_binary(&framed);
        let (_, payload, _) = shardcast::ws::split_server_frame(&bin).unwrap();
        assert_eq!(server_frame(payload).unwrap(), json.to_vec());
    }
}
