//! Server frames in their binary form: each JSON frame `protocol::encode` made, read once and
//! written as a `ServerFrame`. A frame the hub hands to many members is translated once per
//! shard thread (`variant`), like a compressed variant.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use base64::Engine as _;
use bytes::Bytes;
use prost::Message as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::schema::{self, server_frame::Frame, server_frame::Id};
use crate::ws;

thread_local! {
    /// The last frame translated on this shard thread and its binary variant: the hub hands
    /// one `Rc` to every member, so all but the first binary member find it here.
    static LAST: RefCell<Option<(Rc<Bytes>, Rc<Bytes>)>> = const { RefCell::new(None) };
}

/// What a `shardcast.proto` connection is sent for `frame` (JSON frames back to back, as `ws`
/// builds them): each text frame as a binary `ServerFrame`, control frames as they are.
/// Computed once per frame on this thread. Cost: one JSON read and one prost encode of each
/// frame, about its size, for the first binary member only.
pub fn variant(frame: &Rc<Bytes>) -> Rc<Bytes> {
    if frame.first().is_some_and(|b| b & 0x08 != 0) {
        return frame.clone();
    }
    LAST.with_borrow_mut(|last| {
        if let Some((plain, binary)) = last
            && Rc::ptr_eq(plain, frame)
        {
            return binary.clone();
        }
        let binary = Rc::new(to_binary(frame));
        *last = Some((frame.clone(), binary.clone()));
        binary
    })
}

/// `frames` with every text frame translated (see `variant`); a frame that is not one of ours
/// (never expected) is passed on as it is.
pub fn to_binary(frames: &[u8]) -> Bytes {
    // One chat frame (a message, an ack: the common case) in a buffer of exactly its size.
    if let Some((b0, payload, [])) = ws::split_server_frame(frames)
        && b0 & 0x0F == ws::OP_TEXT
    {
        let mut out = Vec::new();
        if super::native::write(payload, &mut out, true) {
            return Bytes::from(out);
        }
    }
    let mut out = Vec::with_capacity(frames.len());
    let mut rest = frames;
    while let Some((b0, payload, next)) = ws::split_server_frame(rest) {
        let text = b0 & 0x0F == ws::OP_TEXT;
        // A chat frame is written straight into `out`; others are encoded, then framed.
        if !(text && super::native::write(payload, &mut out, true)) {
            match text.then(|| general(payload)).flatten() {
                Some(bin) => ws::push_frame(&mut out, ws::OP_BINARY, false, &bin),
                None => out.extend_from_slice(&rest[..rest.len() - next.len()]),
            }
        }
        rest = next;
    }
    Bytes::from(out)
}

/// One server frame's JSON as the bytes of a `ServerFrame`, for any frame (`native` writes the
/// chat frames faster); `None` if it is not a frame of docs/protocol.md. Cost: one JSON parse
/// into every field a server frame may have, the fields' strings copied, then prost's encode.
pub(super) fn general(json: &[u8]) -> Option<Vec<u8>> {
    let f: Json<'_> = serde_json::from_slice(json).ok()?;
    let id =
        f.id.map(|raw| match serde_json::from_str::<u64>(raw.get()) {
            Ok(n) => Id::NumId(n),
            Err(_) => Id::StrId(
                serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_owned()),
            ),
        });
    let s = |v: &Option<Cow<'_, str>>| v.as_deref().unwrap_or_default().to_owned();
    let frame = match &*f.ty {
        "welcome" => Frame::Welcome(schema::Welcome {
            user: s(&f.user),
            rooms: strings(f.rooms),
            heartbeat_ms: f.heartbeat_ms.unwrap_or_default(),
            inbox_seq: f.inbox_seq.unwrap_or_default(),
            inbox_read: f.inbox_read.unwrap_or_default(),
            reads: (f.reads.into_iter().flatten())
                .map(|(room, r)| schema::RoomRead {
                    room: room.into_owned(),
                    seq: r.seq,
                    read: r.read,
                })
                .collect(),
        }),
        "message" => Frame::Message(message(f)),
        "joined" | "left" => {
            let m = schema::Membership {
                room: s(&f.room),
                user: s(&f.user),
                info: f
                    .info
                    .map_or_else(Vec::new, |i| i.get().as_bytes().to_vec()),
            };
            if f.ty == "joined" {
                Frame::Joined(m)
            } else {
                Frame::Left(m)
            }
        }
        "occupancy" => Frame::Occupancy(schema::Occupancy {
            room: s(&f.room),
            members: f.members.unwrap_or_default(),
        }),
        "removed" => Frame::Removed(schema::Removed {
            room: s(&f.room),
            reason: s(&f.reason),
        }),
        "ack" => Frame::Ack(schema::Ack {
            room: s(&f.room),
            to: s(&f.to),
            seq: f.seq,
            dup: f.dup.unwrap_or_default(),
            publish: s(&f.publish),
            presence: s(&f.presence),
            rights: strings(f.rights),
            members: f.members,
            epoch: f.epoch,
            recovered: f.recovered,
            replayed: f.replayed,
            truncated: f.truncated,
            noop: f.noop.unwrap_or_default(),
            read: f.read,
            inbox: f.inbox.unwrap_or_default(),
        }),
        "pong" => Frame::Pong(schema::Pong {}),
        "presence" => Frame::Presence(schema::Presence {
            room: s(&f.room),
            mode: s(&f.mode),
            users: strings(f.users),
            more: f.more,
            members: f.members,
            info: f.info.map_or_else(Default::default, |i| {
                (serde_json::from_str::<HashMap<String, &RawValue>>(i.get()).unwrap_or_default())
                    .into_iter()
                    .map(|(user, i)| (user, i.get().as_bytes().to_vec()))
                    .collect()
            }),
        }),
        "refreshed" => Frame::Refreshed(schema::Refreshed { exp: f.exp }),
        "error" => Frame::Error(schema::Error {
            code: s(&f.code),
            message: s(&f.message),
        }),
        "history" | "sync" => {
            let page = schema::Page {
                room: s(&f.room),
                messages: f.messages.into_iter().flatten().map(message).collect(),
                more: f.more.unwrap_or_default(),
                fold: f.fold.unwrap_or_default(),
                before: f.before,
            };
            if f.ty == "history" {
                Frame::History(page)
            } else {
                Frame::Sync(page)
            }
        }
        "signal" => {
            let (body, body_json) = f.body.map_or((Vec::new(), true), body_bytes);
            Frame::Signal(schema::Signal {
                room: s(&f.room),
                from: s(&f.from),
                body,
                body_json,
            })
        }
        "read" => Frame::Read(schema::Read {
            room: s(&f.room),
            inbox: f.inbox.unwrap_or_default(),
            seq: f.seq.unwrap_or_default(),
        }),
        "receipt" => Frame::Receipt(schema::Receipt {
            room: s(&f.room),
            user: s(&f.user),
            seq: f.seq.unwrap_or_default(),
        }),
        _ => return None,
    };
    Some(
        schema::ServerFrame {
            id,
            frame: Some(frame),
        }
        .encode_to_vec(),
    )
}

fn strings(v: Option<Vec<Cow<'_, str>>>) -> Vec<String> {
    v.into_iter().flatten().map(Cow::into_owned).collect()
}

fn message(f: Json<'_>) -> schema::Message {
    let (body, body_json) = f.body.map_or((Vec::new(), true), body_bytes);
    schema::Message {
        room: f.room.map(Cow::into_owned).unwrap_or_default(),
        to: f.to.map(Cow::into_owned).unwrap_or_default(),
        from: f.from.map(Cow::into_owned).unwrap_or_default(),
        seq: f.seq.unwrap_or_default(),
        ts: f.ts.unwrap_or_default(),
        key: f.key.map(Cow::into_owned),
        body,
        body_json,
        kind: f.kind.map(Cow::into_owned).unwrap_or_default(),
        target: f.target,
        emoji: f.emoji.map(Cow::into_owned).unwrap_or_default(),
        hard: f.hard.unwrap_or_default(),
        edited: f.edited,
        deleted: f.deleted.unwrap_or_default(),
        erased: f.erased.unwrap_or_default(),
        reactions: (f.reactions.into_iter().flatten())
            .map(|(emoji, r)| schema::ReactionCount {
                emoji: emoji.into_owned(),
                count: r.count,
                me: r.me,
            })
            .collect(),
    }
}

/// A JSON body as a binary client gets it: `{"$b64":"..."}` (exactly that one member, valid
/// standard base64) as the bytes it stands for, anything else as its JSON text, flagged JSON.
pub fn body_bytes(raw: &RawValue) -> (Vec<u8>, bool) {
    let (bytes, is_json) = body_cross(raw.get().as_bytes());
    (bytes.into_owned(), is_json)
}

/// `body_bytes` borrowing what it can. Only an object that may name `$b64` (it holds a `$` or
/// an escape) is read; anything else is passed as it is, without a JSON read.
pub(super) fn body_cross(json: &[u8]) -> (Cow<'_, [u8]>, bool) {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B64<'a> {
        #[serde(rename = "$b64", borrow)]
        b64: Cow<'a, str>,
    }
    // `$b64` can only be named with a `$` or a `\u0024`.
    if json.first() == Some(&b'{')
        && json.iter().any(|&b| b == b'$' || b == b'\\')
        && let Ok(b) = serde_json::from_slice::<B64<'_>>(json)
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&*b.b64)
    {
        return (bytes.into(), false);
    }
    (json.into(), true)
}

/// Every field of every server frame; each frame has the ones docs/protocol.md gives it.
#[derive(Deserialize)]
struct Json<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(default)]
    rooms: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    inbox_seq: Option<u64>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "crate::protocol::present")]
    body: Option<&'a RawValue>,
    #[serde(default)]
    members: Option<u64>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    publish: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    presence: Option<Cow<'a, str>>,
    #[serde(default)]
    rights: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    replayed: Option<u64>,
    #[serde(default)]
    truncated: Option<bool>,
    #[serde(default)]
    dup: Option<bool>,
    #[serde(borrow, default)]
    mode: Option<Cow<'a, str>>,
    #[serde(default)]
    users: Option<Vec<Cow<'a, str>>>,
    /// `joined`: the user's presence info; `presence`: each user's, by name.
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
    #[serde(default)]
    more: Option<bool>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Json<'a>>>,
    #[serde(default)]
    inbox_read: Option<u64>,
    /// `welcome`'s `reads`, in the JSON object's order.
    #[serde(borrow, default, deserialize_with = "in_order")]
    reads: Option<Vec<(Cow<'a, str>, RoomRead)>>,
    #[serde(default)]
    noop: Option<bool>,
    #[serde(default)]
    read: Option<u64>,
    #[serde(default)]
    inbox: Option<bool>,
    #[serde(default)]
    fold: Option<bool>,
    #[serde(default)]
    before: Option<u64>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    target: Option<u64>,
    #[serde(borrow, default)]
    emoji: Option<Cow<'a, str>>,
    #[serde(default)]
    hard: Option<bool>,
    #[serde(default)]
    edited: Option<u64>,
    #[serde(default)]
    deleted: Option<bool>,
    #[serde(default)]
    erased: Option<bool>,
    /// A folded message's `reactions`, in the JSON object's order.
    #[serde(borrow, default, deserialize_with = "in_order")]
    reactions: Option<Vec<(Cow<'a, str>, ReactionCount)>>,
}

#[derive(Deserialize)]
struct RoomRead {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    read: u64,
}

#[derive(Deserialize)]
struct ReactionCount {
    #[serde(default)]
    count: u64,
    #[serde(default)]
    me: bool,
}

/// A JSON object as its members in order (a map would sort them or lose the order).
fn in_order<'de, K, V, D>(d: D) -> Result<Option<Vec<(K, V)>>, D::Error>
where
    K: Deserialize<'de>,
    V: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    struct Members<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Members<K, V> {
        type Value = Vec<(K, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
            while let Some(kv) = m.next_entry()? {
                out.push(kv);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Members(std::marker::PhantomData))
        .map(Some)
}
