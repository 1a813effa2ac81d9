//! What the client hands the application: events from the connection, and the replies to its
//! requests. All owned, so they outlive the frame they came in.

use std::time::Duration;

use crate::body::Body;
use crate::codec::Frame;

/// An event from the connection, in the order the server sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The connection is up, its rooms rejoined. `recovery` is `None` on the first connection;
    /// after a reconnect it says what each room got back.
    Connected {
        user: String,
        recovery: Option<Recovery>,
    },
    /// The connection was lost; `retry_in` is the delay before the next attempt (`None`: the
    /// client stopped, and a [`Event::Closed`] follows).
    Disconnected {
        code: Option<u16>,
        reason: String,
        retry_in: Option<Duration>,
    },
    /// The client stopped for good: closed by the application, or a close code or handshake
    /// refusal that says not to reconnect.
    Closed {
        reason: String,
    },
    /// A room message or a direct message, and edits, deletes and reactions (`kind` set).
    /// Never one the client has already handed out (duplicates are dropped by seq).
    Message(Message),
    Joined {
        room: String,
        user: String,
    },
    Left {
        room: String,
        user: String,
    },
    Occupancy {
        room: String,
        members: u64,
    },
    /// A member's signal (typing…): not stored, no seq.
    Signal {
        room: String,
        from: String,
        body: Body,
    },
    /// The user read up to `seq` on another connection (`room` `None`: the inbox).
    Read {
        room: Option<String>,
        seq: u64,
    },
    Receipt {
        room: String,
        user: String,
        seq: u64,
    },
    /// The server took this connection out of `room`; it is not rejoined.
    Removed {
        room: String,
        reason: String,
    },
    /// An error frame that answers no request of this client.
    ServerError {
        code: String,
        message: String,
    },
}

/// What a reconnect recovered, room by room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Every room recovered all it missed, without truncation.
    pub complete: bool,
    pub rooms: Vec<RoomRecovery>,
}

/// One room's rejoin after a reconnect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRecovery {
    pub room: String,
    /// The last seq seen before the connection dropped (sent as `since`).
    pub since: u64,
    /// The room's last seq when it was rejoined.
    pub seq: u64,
    /// Every message after `since` was still there and is replayed.
    pub recovered: bool,
    pub replayed: u64,
    pub truncated: bool,
    /// The rejoin was refused with this code; the room was dropped.
    pub error: Option<String>,
}

/// A message of a room or of the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The room, for a room message.
    pub room: Option<String>,
    /// The recipient, for a direct message.
    pub to: Option<String>,
    pub from: String,
    pub seq: u64,
    /// Unix milliseconds.
    pub ts: u64,
    /// The sender's key, on the copy the sender's other connections get live.
    pub key: Option<String>,
    /// `edit`, `delete`, `react` or `unreact`; `None` for a message.
    pub kind: Option<String>,
    /// The message an edit, delete or reaction is about.
    pub target: Option<u64>,
    pub emoji: Option<String>,
    pub body: Body,
    /// A folded history message: the seq of its last edit, and whether it was deleted.
    pub edited: Option<u64>,
    pub deleted: bool,
}

impl Message {
    pub(crate) fn from_frame(f: Frame<'_>) -> Message {
        let s = |v: Option<std::borrow::Cow<'_, str>>| v.map(|v| v.into_owned());
        Message {
            room: s(f.room),
            to: s(f.to),
            from: s(f.from).unwrap_or_default(),
            seq: f.seq.unwrap_or(0),
            ts: f.ts.unwrap_or(0),
            key: s(f.key),
            kind: s(f.kind),
            target: f.target,
            emoji: s(f.emoji),
            body: f
                .body
                .map(Body::from_wire)
                .unwrap_or_else(|| Body::bytes(Vec::new())),
            edited: f.edited,
            deleted: f.deleted,
        }
    }
}

/// The answer to a `join`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JoinAck {
    pub room: String,
    /// The room's last seq when it was joined.
    pub seq: u64,
    /// The room rule's `publish` and `presence`, and this connection's rights there.
    pub publish: Option<String>,
    pub presence: Option<String>,
    pub rights: Option<Vec<String>>,
    pub members: Option<u64>,
    pub epoch: Option<u64>,
}

/// The answer to a `publish`, `send`, `edit`, `delete`, `react`, `signal`, `read`…
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ack {
    pub seq: Option<u64>,
    /// A key already stored: `seq` is the first message's.
    pub dup: bool,
    /// Nothing to do (already deleted, already reacted).
    pub noop: bool,
    /// A `read`'s position now held.
    pub read: Option<u64>,
}

impl Ack {
    pub(crate) fn from_frame(f: &Frame<'_>) -> Ack {
        Ack {
            seq: f.seq,
            dup: f.dup,
            noop: f.noop,
            read: f.read,
        }
    }
}

/// A page of `history` or `sync`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Page {
    pub messages: Vec<Message>,
    pub more: bool,
}

/// The answer to `presence`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Presence {
    /// `list` or `count`.
    pub mode: String,
    pub users: Vec<String>,
    pub members: Option<u64>,
    pub more: bool,
}
