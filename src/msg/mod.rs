//! What shards say to each other: addresses (`ConnId`, `ReplyTo`) and the three kinds of
//! message a shard's queue carries.
//!
//! - `EngineMsg`: a request to the engine (sequence, store, count presence and sessions, read
//!   ranges). The embedded engine serves it at the stream's home shard; a cluster engine
//!   would serve it elsewhere.
//! - `NodeMsg`: what the engine sends back to the node that holds the connections: live frames
//!   for the hub to fan out, replays, join results, replies.
//! - `LocalMsg`: what only makes sense inside one process: a socket, a oneshot, the store
//!   writer's answers.
//!
//! `EngineMsg` and `NodeMsg` are plain data: addresses, not channels, so either engine can
//! answer from any thread. `reply`: `ReplyTo`, the address of an answer, and the answers built
//! for it. This module holds no state and does no I/O.

mod reply;

pub use reply::{PresencePage, ReplyTo};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::core::counters::ShardSnapshot;
use crate::core::error::{CloseCode, HandshakeError, ReplyError};
use crate::core::event::{Event, EventWrite};
use crate::core::rights::Rights;
use crate::core::{ConnId, JoinGen, NodeId, ShardId, Stream};
use crate::core::{MsgKey, Name, ReqId};

/// A folded `history` read, for `reader` (to say which reactions are the reader's own; the API
/// has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldFor {
    pub reader: Option<Name>,
}

/// A request to the engine. The embedded engine serves it at the home shard of its room or
/// user (`EngineMsg::key`).
#[derive(Debug)]
pub enum EngineMsg {
    /// Admit a new connection under the session policy; answered with `NodeMsg::Admitted`.
    Register { user: Name, conn: ConnId },
    /// A connection of the user ended (or never started).
    Unregister { user: Name, conn: ConnId },
    /// A connection is attached: it receives direct messages live from now on, and the
    /// undelivered ones (`NodeMsg::Replay` for its inbox).
    Online { user: Name, conn: ConnId },
    /// The inbox replay up to `upto` reached the connection (`ok`) or could not be read: only
    /// now may the delivered cursor be stored.
    InboxHanded {
        user: Name,
        after: u64,
        upto: u64,
        ok: bool,
    },
    /// Add a connection to the room. `since`: replay the stored messages after it.
    Join {
        room: Name,
        user: Name,
        conn: ConnId,
        jgen: JoinGen,
        id: Option<ReqId>,
        ack: bool,
        since: Option<u64>,
        /// The room's epoch the client saw `since` in (cluster mode); another one means that
        /// history is gone.
        epoch: Option<u64>,
        /// What the connection may do in the room (its token and the room's rule), for the ack.
        rights: Rights,
        /// The connection's presence info (the shard's `presence_info`).
        info: Option<Bytes>,
    },
    /// A connection left the room.
    Leave {
        room: Name,
        user: Name,
        conn: ConnId,
    },
    /// Sequence, store and fan out a room message. With `key`, a repeat of a stored
    /// `(from, key)` in the room is answered with the first one's seq and `dup`, and not
    /// stored or delivered again.
    Publish {
        room: Name,
        from: Name,
        body: Bytes,
        key: Option<MsgKey>,
        reply: ReplyTo,
    },
    /// Sequence, store and deliver a direct message (`key` as for `Publish`, per inbox).
    Direct {
        to: Name,
        from: Name,
        body: Bytes,
        key: Option<MsgKey>,
        reply: ReplyTo,
    },
    /// Pass a frame to the user's connections (the copy of a direct message the user sent).
    Forward {
        user: Name,
        frame: Bytes,
        exclude: Option<ConnId>,
    },
    /// Who is in the room: one page of it for a client, all of it for the API (`None`).
    Presence {
        room: Name,
        reply: ReplyTo,
        page: Option<PresencePage>,
    },
    /// Whether the user is online, and with how many connections (JSON, for the API).
    UserInfo { user: Name, reply: ReplyTo },
    /// A page of the room's history (`history`, or the API's).
    History {
        room: Name,
        reply: ReplyTo,
        before: Option<u64>,
        limit: usize,
        fold: Option<FoldFor>,
    },
    /// An edit, delete or reaction of a room message: checked against the stored target (by
    /// the store writer, or the Lua script), then sequenced, stored and fanned out like a
    /// message. `api`: the server API's (may edit or delete anyone's message, or erase it).
    Event {
        room: Name,
        from: Name,
        event: Event,
        api: bool,
        reply: ReplyTo,
    },
    /// The store writer's check of an `Event`, back at the room's home: what to write
    /// (`None`: nothing changes, acked with `noop`), or why it is refused.
    Checked {
        room: Name,
        from: Name,
        event: Event,
        reply: ReplyTo,
        verdict: Result<Option<Box<EventWrite>>, ReplyError>,
    },
    /// A page of the user's direct messages after `since` (`sync`).
    Sync {
        user: Name,
        reply: ReplyTo,
        since: u64,
    },
    /// Read the stored messages of `stream` in (after, upto] for a hub's gap or a catching-up
    /// connection (`NodeMsg::Replay`).
    Fetch {
        stream: Stream,
        after: u64,
        upto: u64,
        to: ReplayTo,
    },
    /// A frame outside the stream (a `signal`, a `receipt`) for the room's members but
    /// `exclude`: never stored, dropped for a member whose queue is long (`NodeMsg::Signal`).
    Signal {
        room: Name,
        frame: Bytes,
        exclude: Option<ConnId>,
    },
    /// A `read`: see `ReadMove`.
    Read(ReadMove),
    /// The user's read positions with each stream's last seq (`GET /api/users/{user}/unread`).
    Unread { user: Name, reply: ReplyTo },
}

impl EngineMsg {
    /// The room or user whose home serves this request.
    pub fn key(&self) -> &Name {
        match self {
            EngineMsg::Register { user, .. }
            | EngineMsg::Unregister { user, .. }
            | EngineMsg::Online { user, .. }
            | EngineMsg::InboxHanded { user, .. }
            | EngineMsg::Forward { user, .. }
            | EngineMsg::UserInfo { user, .. }
            | EngineMsg::Read(ReadMove { user, .. })
            | EngineMsg::Unread { user, .. }
            | EngineMsg::Sync { user, .. } => user,
            EngineMsg::Signal { room, .. } => room,
            EngineMsg::Join { room, .. }
            | EngineMsg::Leave { room, .. }
            | EngineMsg::Publish { room, .. }
            | EngineMsg::Presence { room, .. }
            | EngineMsg::History { room, .. }
            | EngineMsg::Event { room, .. }
            | EngineMsg::Checked { room, .. } => room,
            EngineMsg::Direct { to, .. } => to,
            EngineMsg::Fetch { stream, .. } => stream.name(),
        }
    }
}

/// The user has read `stream` up to `seq` (a room's already clamped to its last seq by the
/// asking shard): the position moves forward only, the user's other connections are told, and
/// with `receipts` the room's members get a coalesced `receipt`.
#[derive(Debug)]
pub struct ReadMove {
    pub user: Name,
    pub stream: Stream,
    pub seq: u64,
    pub conn: ConnId,
    pub receipts: bool,
    /// Answered with the position now held (a `read` with an `id`).
    pub reply: Option<ReplyTo>,
}

impl ReadMove {
    /// The read's room (`None`: the inbox).
    pub fn room(&self) -> Option<&Name> {
        match &self.stream {
            Stream::Room(r) => Some(r),
            Stream::Inbox(_) => None,
        }
    }
}

/// Who a replay is for: one catching-up connection (a join's generation; 0 for the inbox at
/// connect), or a shard's hub filling a gap in a room's live stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayTo {
    Conn { conn: ConnId, jgen: JoinGen },
    Hub { node: NodeId, shard: ShardId },
}

impl ReplayTo {
    pub fn shard(self) -> ShardId {
        match self {
            ReplayTo::Conn { conn, .. } => conn.shard(),
            ReplayTo::Hub { shard, .. } => shard,
        }
    }
}

/// What the engine sends to the node holding the connections.
#[derive(Debug)]
pub enum NodeMsg {
    /// The user's home admitted the connection (with the inbox's committed seq) or refused it.
    Admitted {
        conn: ConnId,
        verdict: Result<u64, HandshakeError>,
    },
    /// Close the user's connections on this shard, all but `except`.
    CloseUser {
        user: Name,
        except: ConnId,
        code: CloseCode,
    },
    /// The join took effect at `seq`. With `replay`, a `Replay` of (since, seq] follows, and
    /// carries the ack; otherwise `ack` is the ack to write (if one is owed).
    JoinDone {
        room: Name,
        conn: ConnId,
        jgen: JoinGen,
        seq: u64,
        ack: Option<Bytes>,
        replay: bool,
    },
    /// The engine could not register the join (Redis unreachable): the client side answers
    /// it with `error` and forgets it.
    JoinFailed {
        room: Name,
        conn: ConnId,
        jgen: JoinGen,
        error: ReplyError,
    },
    /// Stored messages of a stream, for a catching-up connection or a hub's gap.
    Replay(Replay),
    /// A live frame of `stream` for its local receivers, except `exclude`: a room's members,
    /// or a user's connections. `seq` is the frame's place in the stream; `None` for a frame
    /// outside it (a presence event, or the copy of a direct message the user sent).
    Deliver {
        stream: Stream,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
        /// A keyed room message: the frame for its sender's connections (live only).
        own: Option<Box<Own>>,
    },
    /// The stream's history was lost (Redis lost its data; a new epoch began): every local
    /// receiver of it must reconnect and recover.
    Lost { stream: Stream },
    /// The answer to a request. `read`: stored messages it carries (a `history` or `sync`
    /// page), charged to the asking connection's read budget.
    Reply {
        to: ReplyTo,
        result: Result<Bytes, ReplyError>,
        read: u32,
    },
    /// Several of the above, in order: what the cluster engine handed this shard from one
    /// read of pub/sub messages (one queue send and one wake-up instead of one each).
    Batch(Vec<NodeMsg>),
    /// A frame outside the room's stream (`signal`, `receipt`) for its local members but
    /// `exclude`; a member whose queue is over `signal_queue_bytes` does not get it.
    Signal {
        room: Name,
        frame: Bytes,
        exclude: Option<ConnId>,
    },
    /// The user's read positions, sent by the user's home before `Admitted` (for `welcome`
    /// and join acks).
    Reads {
        user: Name,
        reads: Vec<(Stream, u64)>,
    },
    /// The user's read position of `stream` moved to `seq`: the user's connections here but
    /// `exclude` get a `read` frame.
    ReadMoved {
        user: Name,
        stream: Stream,
        seq: u64,
        exclude: Option<ConnId>,
    },
}

/// A live room message's copy for its sender's other connections: the frame with the
/// request's `key`. Boxed in `Deliver`: only keyed messages have one.
#[derive(Clone, Debug)]
pub struct Own {
    pub user: Name,
    pub frame: Bytes,
}

/// Stored messages of `stream` in (after, upto], as WebSocket frames in one buffer (`ack`, a
/// join's, goes first). `ok` is false when the store could not be read.
#[derive(Debug)]
pub struct Replay {
    pub stream: Stream,
    pub to: ReplayTo,
    pub after: u64,
    pub upto: u64,
    pub ack: Option<Bytes>,
    pub frames: Bytes,
    pub ok: bool,
}

/// Messages that stay in the process: they carry a socket, a oneshot, or the writer's state.
pub enum LocalMsg {
    /// A new TCP connection for this shard to serve.
    Accept(std::net::TcpStream),
    /// The store wrote (`ok`) or failed to write these messages (sync durability).
    Stored { writes: Vec<Written>, ok: bool },
    /// Write `frame` to every connection; reply how many.
    Broadcast {
        frame: Bytes,
        reply: oneshot::Sender<usize>,
    },
    /// Close the user's connections with 4501 (kicked); reply how many.
    Kick {
        user: Name,
        reason: Option<String>,
        reply: oneshot::Sender<usize>,
    },
    /// The rooms this shard's engine counts, with their members (`Engine::rooms`).
    Rooms {
        reply: oneshot::Sender<Vec<(Name, u64)>>,
    },
    /// Close every connection with 1001 and stop.
    Shutdown,
    /// Answer a metrics scrape with this shard's counters and gauges.
    Stats {
        reply: oneshot::Sender<ShardSnapshot>,
    },
    /// Test-only: panic while handling a message, halfway through a home's bookkeeping.
    #[cfg(any(test, feature = "fault-injection"))]
    Panic,
}

/// Everything a shard's queue carries.
pub enum ShardMsg {
    Local(LocalMsg),
    Engine(EngineMsg),
    Node(NodeMsg),
}

impl From<LocalMsg> for ShardMsg {
    fn from(m: LocalMsg) -> ShardMsg {
        ShardMsg::Local(m)
    }
}

impl From<EngineMsg> for ShardMsg {
    fn from(m: EngineMsg) -> ShardMsg {
        ShardMsg::Engine(m)
    }
}

impl From<NodeMsg> for ShardMsg {
    fn from(m: NodeMsg) -> ShardMsg {
        ShardMsg::Node(m)
    }
}

/// A message sequenced at its home and waiting for the store (sync durability).
pub struct Written {
    pub target: WriteTarget,
    pub seq: u64,
    /// The message frame, encoded once.
    pub frame: Bytes,
    /// Who gets the ack; a publishing connection does not get its own message.
    pub reply: ReplyTo,
    /// The hash of the message's `(sender, key)` the home remembered, to forget if the write
    /// fails, and the frame with the key for the sender's other connections.
    pub key: Option<([u64; 2], Box<Own>)>,
}

pub enum WriteTarget {
    Room(Name),
    Inbox { to: Name, from: Name },
}

impl WriteTarget {
    /// The stream the message is written to.
    pub fn stream(&self) -> Stream {
        match self {
            WriteTarget::Room(room) => Stream::Room(room.clone()),
            WriteTarget::Inbox { to, .. } => Stream::Inbox(to.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_pages_are_sorted_cut_and_say_whether_more_follow() {
        let names: Vec<Name> = ["d", "a", "e", "c", "b"]
            .iter()
            .map(|n| Name::new(n).unwrap())
            .collect();
        let page = |after: Option<&str>, limit, max_bytes| {
            let page = PresencePage {
                after: after.map(|a| Name::new(a).unwrap()),
                limit,
            };
            let (users, more) = page.cut(names.iter(), max_bytes);
            (
                users.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                more,
            )
        };
        assert_eq!(page(None, 2, 1000), (vec!["a".into(), "b".into()], true));
        assert_eq!(
            page(Some("b"), 2, 1000),
            (vec!["c".into(), "d".into()], true)
        );
        assert_eq!(page(Some("d"), 2, 1000), (vec!["e".into()], false));
        assert_eq!(page(Some("e"), 2, 1000), (vec![], false));
        assert!(!page(None, 5, 1000).1, "exactly the limit: no more");
        // Each name costs its length + 3 bytes: 8 bytes hold two; one always goes.
        assert_eq!(page(None, 5, 8), (vec!["a".into(), "b".into()], true));
        assert_eq!(page(None, 5, 1), (vec!["a".into()], true));
    }
}
