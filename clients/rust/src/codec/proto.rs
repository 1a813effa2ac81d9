//! The Protocol Buffers form (`shardcast.proto`): a [`Request`] built into the prost types
//! of `src/wire/schema.rs` and encoded, and a `ServerFrame` decoded by prost and turned into
//! the [`Frame`] a JSON frame decodes into, so the driver sees one shape.
//!
//! Cost: prost decodes into owned strings and bytes (the JSON form borrows them).

use std::borrow::Cow;

use prost::Message as _;

use super::{DecodeError, Frame, Request};
use crate::body::{BodyRef, RawBody};
use crate::schema::{self, client_frame as cf, server_frame as sf};

/// Appends `req` with request id `id` to `out`.
pub(super) fn encode(id: Option<u64>, req: &Request<'_>, out: &mut Vec<u8>) {
    let frame = schema::ClientFrame {
        id: id.map(cf::Id::NumId),
        frame: Some(proto_frame(req)),
    };
    frame.encode(out).expect("a Vec grows as needed");
}

/// Decodes one binary server frame.
pub(super) fn decode(payload: &[u8]) -> Result<Frame<'static>, DecodeError> {
    let f = schema::ServerFrame::decode(payload).map_err(|e| DecodeError(e.to_string()))?;
    from_proto(f).ok_or_else(|| DecodeError("a ServerFrame with no frame".into()))
}

fn proto_frame(req: &Request<'_>) -> cf::Frame {
    let s = |v: &str| v.to_owned();
    let b = |b: BodyRef<'_>| b.bytes.to_vec();
    match *req {
        Request::Join { room, since, epoch } => cf::Frame::Join(schema::Join {
            room: s(room),
            since,
            epoch,
        }),
        Request::Leave { room } => cf::Frame::Leave(schema::Leave { room: s(room) }),
        Request::Publish { room, body, key } => cf::Frame::Publish(schema::Publish {
            room: s(room),
            body: b(body),
            key: key.map(s),
        }),
        Request::Send { to, body, key } => cf::Frame::Send(schema::Send {
            to: s(to),
            body: b(body),
            key: key.map(s),
        }),
        Request::Presence { room, after, limit } => cf::Frame::Presence(schema::PresenceRequest {
            room: s(room),
            after: after.map(s),
            limit,
        }),
        Request::History {
            room,
            before,
            limit,
            fold,
        } => cf::Frame::History(schema::HistoryRequest {
            room: s(room),
            before,
            limit,
            fold,
        }),
        Request::Sync { since } => cf::Frame::Sync(schema::SyncRequest { since }),
        Request::Ping => cf::Frame::Ping(schema::Ping {}),
        Request::Refresh { token } => cf::Frame::Refresh(schema::Refresh { token: s(token) }),
        Request::Connect { token } => cf::Frame::Connect(schema::Connect { token: s(token) }),
        Request::Signal { room, body } => cf::Frame::Signal(schema::SignalRequest {
            room: s(room),
            body: b(body),
        }),
        Request::Read { room, seq } => cf::Frame::Read(schema::ReadRequest {
            room: room.map(s).unwrap_or_default(),
            inbox: room.is_none(),
            seq,
        }),
        Request::Edit { room, target, body } => cf::Frame::Edit(schema::Edit {
            room: s(room),
            target,
            body: b(body),
        }),
        Request::Delete { room, target } => cf::Frame::Delete(schema::Delete {
            room: s(room),
            target,
        }),
        Request::React {
            room,
            target,
            emoji,
        } => cf::Frame::React(schema::Reaction {
            room: s(room),
            target,
            emoji: s(emoji),
        }),
        Request::Unreact {
            room,
            target,
            emoji,
        } => cf::Frame::Unreact(schema::Reaction {
            room: s(room),
            target,
            emoji: s(emoji),
        }),
    }
}

fn opt(s: String) -> Option<Cow<'static, str>> {
    (!s.is_empty()).then_some(Cow::Owned(s))
}

fn list(v: Vec<String>) -> Option<Vec<Cow<'static, str>>> {
    Some(v.into_iter().map(Cow::Owned).collect())
}

fn message(m: schema::Message) -> Frame<'static> {
    Frame {
        ty: Cow::Borrowed("message"),
        room: opt(m.room),
        to: opt(m.to),
        from: opt(m.from),
        seq: Some(m.seq),
        ts: Some(m.ts),
        key: m.key.map(Cow::Owned),
        kind: opt(m.kind),
        target: m.target,
        emoji: opt(m.emoji),
        body: Some(RawBody {
            bytes: Cow::Owned(m.body),
            json: m.body_json,
        }),
        edited: m.edited,
        deleted: m.deleted,
        ..Frame::default()
    }
}

fn membership(ty: &'static str, m: schema::Membership) -> Frame<'static> {
    Frame {
        ty: Cow::Borrowed(ty),
        room: opt(m.room),
        user: opt(m.user),
        ..Frame::default()
    }
}

fn page(ty: &'static str, p: schema::Page) -> Frame<'static> {
    Frame {
        ty: Cow::Borrowed(ty),
        room: opt(p.room),
        more: p.more,
        messages: Some(p.messages.into_iter().map(message).collect()),
        ..Frame::default()
    }
}

fn from_proto(f: schema::ServerFrame) -> Option<Frame<'static>> {
    let id = match f.id {
        Some(sf::Id::NumId(n)) => Some(n),
        _ => None,
    };
    let ty = |t: &'static str| Cow::Borrowed(t);
    let mut out = match f.frame? {
        sf::Frame::Message(m) => message(m),
        sf::Frame::Welcome(w) => Frame {
            ty: ty("welcome"),
            user: opt(w.user),
            rooms: list(w.rooms),
            heartbeat_ms: Some(w.heartbeat_ms),
            inbox_seq: Some(w.inbox_seq),
            ..Frame::default()
        },
        sf::Frame::Joined(m) => membership("joined", m),
        sf::Frame::Left(m) => membership("left", m),
        sf::Frame::Occupancy(o) => Frame {
            ty: ty("occupancy"),
            room: opt(o.room),
            members: Some(o.members),
            ..Frame::default()
        },
        sf::Frame::Removed(r) => Frame {
            ty: ty("removed"),
            room: opt(r.room),
            reason: opt(r.reason),
            ..Frame::default()
        },
        sf::Frame::Ack(a) => Frame {
            ty: ty("ack"),
            room: opt(a.room),
            to: opt(a.to),
            seq: a.seq,
            dup: a.dup,
            publish: opt(a.publish),
            presence: opt(a.presence),
            rights: (!a.rights.is_empty()).then(|| list(a.rights)).flatten(),
            members: a.members,
            epoch: a.epoch,
            recovered: a.recovered,
            replayed: a.replayed,
            truncated: a.truncated,
            noop: a.noop,
            read: a.read,
            inbox: a.inbox,
            ..Frame::default()
        },
        sf::Frame::Pong(_) => Frame {
            ty: ty("pong"),
            ..Frame::default()
        },
        sf::Frame::Presence(p) => Frame {
            ty: ty("presence"),
            room: opt(p.room),
            mode: opt(p.mode),
            users: list(p.users),
            more: p.more.unwrap_or(false),
            members: p.members,
            ..Frame::default()
        },
        sf::Frame::Refreshed(r) => Frame {
            ty: ty("refreshed"),
            exp: r.exp,
            ..Frame::default()
        },
        sf::Frame::Error(e) => Frame {
            ty: ty("error"),
            code: opt(e.code),
            message: opt(e.message),
            ..Frame::default()
        },
        sf::Frame::History(p) => page("history", p),
        sf::Frame::Sync(p) => page("sync", p),
        sf::Frame::Signal(g) => Frame {
            ty: ty("signal"),
            room: opt(g.room),
            from: opt(g.from),
            body: Some(RawBody {
                bytes: Cow::Owned(g.body),
                json: g.body_json,
            }),
            ..Frame::default()
        },
        sf::Frame::Read(r) => Frame {
            ty: ty("read"),
            room: opt(r.room),
            inbox: r.inbox,
            seq: Some(r.seq),
            ..Frame::default()
        },
        sf::Frame::Receipt(r) => Frame {
            ty: ty("receipt"),
            room: opt(r.room),
            user: opt(r.user),
            seq: Some(r.seq),
            ..Frame::default()
        },
    };
    out.id = id;
    Some(out)
}
