//! The binary protocol (`shardcast.proto`) for the bot's scenarios that speak JSON text: the
//! few requests a scenario writes by hand as JSON are sent as the `Request` they stand for, and
//! each binary server frame is read back into the JSON layout those scenarios parse. Both ends
//! are the client crate's codec (`shardcast_client::codec`); the pub/sub read loop skips this
//! and reads the decoded frame itself.
//!
//! Owns the translation. Its cost is the bot's (its own core), never the server's.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use shardcast_client::BodyRef;
use shardcast_client::codec::{self, Format, Frame, Request};

/// A request a scenario wrote as JSON text, appended to `out` as a binary `ClientFrame`.
pub fn request(json: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Req<'a> {
        #[serde(rename = "type")]
        ty: &'a str,
        id: Option<u64>,
        room: Option<&'a str>,
        since: Option<u64>,
        seq: Option<u64>,
        limit: Option<u64>,
        #[serde(borrow)]
        body: Option<&'a RawValue>,
    }
    let r: Req<'_> = serde_json::from_slice(json)?;
    let room = r.room.unwrap_or_default();
    let body = BodyRef {
        bytes: r.body.map_or(&b"null"[..], |b| b.get().as_bytes()),
        json: true,
    };
    let req = match r.ty {
        "join" => Request::Join {
            room,
            since: r.since,
            epoch: None,
        },
        "history" => Request::History {
            room,
            before: None,
            limit: r.limit,
            fold: false,
        },
        "signal" => Request::Signal { room, body },
        "read" => Request::Read {
            room: Some(room),
            seq: r.seq.unwrap_or(0),
        },
        other => anyhow::bail!("the bot has no binary form for a hand-written {other:?}"),
    };
    codec::encode(Format::Proto, r.id, &req, out);
    Ok(())
}

/// A decoded server frame in the JSON layout the bot reads (a message exactly as
/// `parse_message_fast` expects it).
pub fn json_view(f: &Frame<'_>) -> Option<Vec<u8>> {
    if f.ty == "message" {
        return Some(message(f));
    }
    let s = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_owned);
    let mut v = serde_json::Map::new();
    v.insert("type".into(), f.ty.as_ref().into());
    let fields = serde_json::json!({
        "id": f.id, "room": s(&f.room), "user": s(&f.user), "from": s(&f.from), "seq": f.seq,
        "members": f.members, "presence": s(&f.presence), "recovered": f.recovered,
        "replayed": f.replayed, "truncated": f.truncated, "code": s(&f.code),
        "message": s(&f.message), "heartbeat_ms": f.heartbeat_ms, "inbox_seq": f.inbox_seq,
        "dup": f.dup.then_some(true), "more": f.more.then_some(true),
        "messages": f.messages.as_ref().map(|m| m.iter().filter_map(|m| {
            serde_json::from_slice::<serde_json::Value>(&message(m)).ok()
        }).collect::<Vec<_>>()),
    });
    if let serde_json::Value::Object(rest) = fields {
        // `type` first: the bot reads presence events' kind from the frame's start.
        v.extend(rest.into_iter().filter(|(_, v)| !v.is_null()));
    }
    serde_json::to_vec(&v).ok()
}

/// `{"type":"message","room":R|"to":U,"from":F,"seq":N,"ts":T,"body":B}`. The bot's bodies are
/// JSON text, so `body` is spliced as it came.
fn message(m: &Frame<'_>) -> Vec<u8> {
    let body = m.body.as_ref().filter(|b| b.json);
    let mut out = Vec::with_capacity(64 + body.map_or(4, |b| b.bytes.len()));
    match (&m.room, &m.to) {
        (Some(room), _) => {
            out.extend_from_slice(br#"{"type":"message","room":""#);
            out.extend_from_slice(room.as_bytes());
        }
        (None, to) => {
            out.extend_from_slice(br#"{"type":"message","to":""#);
            out.extend_from_slice(to.as_deref().unwrap_or_default().as_bytes());
        }
    }
    out.extend_from_slice(br#"","from":""#);
    out.extend_from_slice(m.from.as_deref().unwrap_or_default().as_bytes());
    out.extend_from_slice(br#"","seq":"#);
    out.extend_from_slice(itoa::Buffer::new().format(m.seq.unwrap_or(0)).as_bytes());
    out.extend_from_slice(br#","ts":"#);
    out.extend_from_slice(itoa::Buffer::new().format(m.ts.unwrap_or(0)).as_bytes());
    out.extend_from_slice(br#","body":"#);
    match body {
        Some(b) => out.extend_from_slice(&b.bytes),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_frames_translate() {
        let mut bin = Vec::new();
        request(br#"{"type":"join","room":"r","id":3,"since":2}"#, &mut bin).unwrap();
        let frame = shardcast::wire::decode(&bin).unwrap();
        let parsed = format!("{:?}", frame.request());
        let json = r#"{"type":"join","id":3,"room":"r","since":2}"#;
        assert_eq!(parsed, format!("{:?}", shardcast::protocol::parse(json)));
        let json = br#"{"type":"message","room":"r","from":"a","seq":4,"ts":5,"body":"x"}"#;
        let mut framed = Vec::new();
        shardcast::ws::push_frame(&mut framed, shardcast::ws::OP_TEXT, false, json);
        let bin = shardcast::wire::to_binary(&framed);
        let (_, payload, _) = shardcast::ws::split_server_frame(&bin).unwrap();
        let f = codec::decode(Format::Proto, payload).unwrap();
        assert_eq!(json_view(&f).unwrap(), json.to_vec());
    }
}
