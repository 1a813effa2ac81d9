//! The inter-shard router: which shard is home to a room or a user, and the queues between shards.
//!
//! Owns `ShardMsg` (everything one shard can ask of another), the placement hash and the
//! crossbeam queues with their wake-ups. It must not hold any room, user or connection state:
//! that belongs to the shards. A cluster mode replaces the placement and carries the cross-node
//! part of these messages; nothing outside this module knows how a message travels.

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{Notify, oneshot};

use crate::error::{CloseCode, HandshakeError, ReplyError};
use crate::protocol::{Name, ReqId};
use crate::store::Stream;

pub type ShardId = usize;

/// A connection's id, unique in the process: its shard in the top 16 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub fn new(shard: ShardId, local: u64) -> ConnId {
        ConnId(((shard as u64) << 48) | (local & ((1 << 48) - 1)))
    }
    pub fn shard(self) -> ShardId {
        (self.0 >> 48) as ShardId
    }
}

/// Where the answer to a request goes: a client connection (a frame echoing the request's id),
/// or an HTTP API call waiting on a oneshot (the JSON body of its response).
pub enum ReplyTo {
    Conn { conn: ConnId, id: Option<ReqId> },
    Api(oneshot::Sender<Result<Bytes, ReplyError>>),
}

impl ReplyTo {
    /// The connection that made the request, if a client did.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            ReplyTo::Conn { conn, .. } => Some(*conn),
            ReplyTo::Api(_) => None,
        }
    }

    /// Answers with `frame(id)` to a connection, or `json()` to an API call. Returns the message
    /// to send for a connection (to its shard), since only the caller knows how to send it.
    pub fn answer(
        self,
        frame: impl FnOnce(Option<&ReqId>) -> Bytes,
        json: impl FnOnce() -> Bytes,
    ) -> Option<(ShardId, ShardMsg)> {
        match self {
            ReplyTo::Conn { conn, id } => {
                let frame = frame(id.as_ref());
                Some((conn.shard(), ShardMsg::ToConn { conn, frame }))
            }
            ReplyTo::Api(tx) => {
                let _ = tx.send(Ok(json()));
                None
            }
        }
    }

    /// Answers with an error: an `error` frame, or the API call's error response.
    pub fn fail(self, err: ReplyError) -> Option<(ShardId, ShardMsg)> {
        match self {
            ReplyTo::Conn { conn, id } => {
                let frame = crate::protocol::encode::error(id.as_ref(), &err);
                Some((conn.shard(), ShardMsg::ToConn { conn, frame }))
            }
            ReplyTo::Api(tx) => {
                let _ = tx.send(Err(err));
                None
            }
        }
    }
}

/// A message from one shard to another (or to itself, handled in place).
pub enum ShardMsg {
    /// A new TCP connection for this shard to serve.
    Accept(std::net::TcpStream),
    /// At the user's home: admit a new connection under the session policy. The reply carries
    /// the user's inbox seq.
    Register {
        user: Name,
        conn: ConnId,
        reply: oneshot::Sender<Result<u64, HandshakeError>>,
    },
    /// At the user's home: a connection of the user ended (or never started).
    Unregister { user: Name, conn: ConnId },
    /// At the user's home: a connection is attached and holds its live direct messages until
    /// the home sends it the undelivered ones (`Replay`).
    Online { user: Name, conn: ConnId },
    /// At a shard holding the user's connections: close them all but `except`.
    CloseUser {
        user: Name,
        except: ConnId,
        code: CloseCode,
    },
    /// At the room's home: add a connection to the room. `ack` when the client asked (an ack is
    /// owed); `already` when the connection was in the room and wants only the seq; `since` to
    /// replay the stored messages after it.
    Join {
        room: Name,
        user: Name,
        conn: ConnId,
        id: Option<ReqId>,
        ack: bool,
        already: bool,
        since: Option<u64>,
    },
    /// At the joining connection's shard: the join took effect. With `replay`, the connection
    /// holds the room's live messages until its `Replay` arrives.
    JoinDone {
        room: Name,
        conn: ConnId,
        ack: Option<Bytes>,
        replay: bool,
    },
    /// At a catching-up connection's shard: `frames` (replayed messages, and for a room the join
    /// ack first), then the live messages held meanwhile, then live delivery.
    Replay {
        stream: Stream,
        conn: ConnId,
        frames: Bytes,
    },
    /// At the home: the store wrote (`ok`) or failed to write these messages (sync durability).
    Stored { writes: Vec<Written>, ok: bool },
    /// At the room's home: a connection left the room.
    Leave {
        room: Name,
        user: Name,
        conn: ConnId,
    },
    /// At the room's home: sequence and fan out a message.
    Publish {
        room: Name,
        from: Name,
        body: Bytes,
        reply: ReplyTo,
    },
    /// At the recipient's home: sequence a direct message into the inbox and deliver it.
    Direct {
        to: Name,
        from: Name,
        body: Bytes,
        reply: ReplyTo,
    },
    /// At the room's home: answer a presence query.
    Presence { room: Name, reply: ReplyTo },
    /// At the user's home: whether the user is online, and with how many connections.
    UserInfo {
        user: Name,
        reply: oneshot::Sender<(bool, u32)>,
    },
    /// At every shard: write `frame` to every connection; reply how many.
    Broadcast {
        frame: Bytes,
        reply: oneshot::Sender<usize>,
    },
    /// At every shard: close the user's connections with 4501 (kicked); reply how many.
    Kick {
        user: Name,
        reason: Option<String>,
        reply: oneshot::Sender<usize>,
    },
    /// At a shard with members in the room: write `frame` to them, except `exclude`.
    Deliver {
        room: Name,
        frame: Bytes,
        exclude: Option<ConnId>,
    },
    /// At a shard with connections of the user: write `frame` to them, except `exclude`.
    DeliverUser {
        user: Name,
        frame: Bytes,
        exclude: Option<ConnId>,
    },
    /// At the user's home: pass `frame` on to every shard holding the user's connections.
    ForwardUser {
        user: Name,
        frame: Bytes,
        exclude: Option<ConnId>,
    },
    /// At the connection's shard: write a reply frame to one connection.
    ToConn { conn: ConnId, frame: Bytes },
    /// Close every connection with 1001 and stop.
    Shutdown,
    /// Answer a metrics scrape with this shard's counters and gauges.
    Stats {
        reply: oneshot::Sender<crate::metrics::ShardSnapshot>,
    },
}

/// A message sequenced at its home and waiting for the store (sync durability).
pub struct Written {
    pub target: WriteTarget,
    pub seq: u64,
    /// The message frame, encoded once.
    pub frame: Bytes,
    /// Who gets the ack; a publishing connection does not get its own message.
    pub reply: ReplyTo,
}

pub enum WriteTarget {
    Room(Name),
    Inbox { to: Name, from: Name },
}

struct Queue {
    tx: Sender<ShardMsg>,
    wake: Arc<Notify>,
}

/// A shard's receiving end: drain `rx`, then wait on `wake`.
pub struct Inbox {
    pub rx: Receiver<ShardMsg>,
    pub wake: Arc<Notify>,
}

/// Placement and transport between shards. Cheap to clone; every shard holds one.
#[derive(Clone)]
pub struct Router {
    queues: Arc<[Queue]>,
    hasher: ahash::RandomState,
}

impl Router {
    /// A router for `n` shards and each shard's inbox, in shard order.
    pub fn new(n: usize) -> (Router, Vec<Inbox>) {
        let (queues, inboxes) = (0..n)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded();
                let wake = Arc::new(Notify::new());
                (
                    Queue {
                        tx,
                        wake: wake.clone(),
                    },
                    Inbox { rx, wake },
                )
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        // Fixed seeds: every shard must compute the same home for a name.
        let hasher = ahash::RandomState::with_seeds(
            0x5348_4152_4443_4153,
            0x7368_6172_6463_6173,
            0x9e37_79b9_7f4a_7c15,
            0xbf58_476d_1ce4_e5b9,
        );
        (
            Router {
                queues: queues.into(),
                hasher,
            },
            inboxes,
        )
    }

    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    /// The shard that sequences `name`'s messages (a room) or inbox and sessions (a user).
    pub fn home(&self, name: &Name) -> ShardId {
        (self.hasher.hash_one(name.as_str()) % self.queues.len() as u64) as ShardId
    }

    /// Queues `msg` for shard `to`. A shard that has stopped drops it.
    pub fn send(&self, to: ShardId, msg: ShardMsg) {
        let q = &self.queues[to];
        if q.tx.send(msg).is_ok() {
            q.wake.notify_one();
        }
    }

    pub fn broadcast(&self, msg: impl Fn() -> ShardMsg) {
        for to in 0..self.queues.len() {
            self.send(to, msg());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_carry_their_shard() {
        let id = ConnId::new(7, 123_456);
        assert_eq!(id.shard(), 7);
        assert_ne!(ConnId::new(1, 5), ConnId::new(2, 5));
    }

    #[test]
    fn homes_are_stable_and_spread() {
        let (a, _ia) = Router::new(4);
        let (b, _ib) = Router::new(4);
        let mut seen = [0usize; 4];
        for i in 0..400 {
            let name = Name::new(&format!("room-{i}")).unwrap();
            assert_eq!(a.home(&name), b.home(&name));
            seen[a.home(&name)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
