//! Signals and read positions on the client side (issue 23): `signal` and `read` requests
//! checked (membership, the room's rule, `signal_rate`, `max_signal_bytes`) and sent to the
//! engine; signals and receipts from the engine written to the room's local members unless
//! their queue is long (a slow consumer loses signals, never messages); and this shard's copy
//! of its users' read positions (`ReadCache`), for `welcome`, join acks and forwarded reads.
//!
//! It must not store or sequence: positions are kept by the engine.

use std::rc::Rc;

use ahash::AHashMap;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::Shard;
use crate::conn::Conn;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::{ConnId, Name, ReqId, Stream};
use crate::msg::{EngineMsg, ReadMove};
use crate::protocol::encode::{self, Target};

/// The read positions of the users with connections on this shard, as their engine last said,
/// and the `welcome`s waiting for their token rooms' seqs.
#[derive(Default)]
pub(super) struct ReadCache(
    AHashMap<Name, Vec<(Stream, u64)>>,
    AHashMap<ConnId, Welcome>,
);

/// A connection's `welcome`, rebuilt once each room joined at connect has its seq (its writes
/// are held until then, so the client only ever sees the finished one).
pub(super) struct Welcome {
    inbox_seq: u64,
    rooms: Vec<(Name, Option<u64>)>,
}

impl ReadCache {
    pub fn get(&self, user: &Name, stream: &Stream) -> u64 {
        (self.0.get(user).into_iter().flatten())
            .find(|(s, _)| s == stream)
            .map_or(0, |(_, seq)| *seq)
    }

    /// Moves a position forward.
    fn advance(&mut self, user: &Name, stream: Stream, seq: u64) {
        let Some(list) = self.0.get_mut(user) else {
            return;
        };
        match list.iter_mut().find(|(s, _)| *s == stream) {
            Some((_, at)) => *at = (*at).max(seq),
            None => list.push((stream, seq)),
        }
    }

    pub fn forget(&mut self, user: &Name) {
        self.0.remove(user);
    }

    pub fn forget_conn(&mut self, conn: ConnId) {
        self.1.remove(&conn);
    }
}

impl Shard {
    /// A `signal`: to the room's other members through the engine, never stored. Acked only
    /// with an `id`.
    pub(super) fn signal(
        &mut self,
        conn: &Rc<Conn>,
        room: Name,
        body: &RawValue,
        id: Option<&ReqId>,
    ) -> Result<(), ReplyError> {
        self.member(conn, &room, "signalling in")?;
        let rule = self.config.rule(&room);
        if !rule.signals {
            return Err(ReplyError::new(
                ErrorCode::Forbidden,
                format!(
                    "signals are off in {room} ({}: signals = false)",
                    rule.describe()
                ),
            ));
        }
        let max = self.config.max_signal_bytes;
        if body.get().len() > max {
            return Err(ReplyError::new(
                ErrorCode::TooLarge,
                format!("a signal's body may be at most {max} bytes (max_signal_bytes); send less"),
            ));
        }
        crate::protocol::check_body_depth(body.get(), self.config.max_body_depth)?;
        self.take_signal(conn)?;
        self.stats.signals_in += 1;
        let frame = encode::signal(&room, &conn.user, body.get().as_bytes());
        if let Some(id) = id {
            let ack = encode::ack(Some(id), Target::Room(&room), None);
            self.enqueue(conn, &Rc::new(ack));
        }
        self.to_engine(EngineMsg::Signal {
            room,
            frame,
            exclude: Some(conn.id),
        });
        Ok(())
    }

    /// A `read` of a room (clamped to the seq this shard has written the room up to) or of the
    /// inbox (clamped by the engine). A position at or behind the one held is answered without
    /// asking the engine.
    pub(super) fn read(
        &mut self,
        conn: &Rc<Conn>,
        room: Option<Name>,
        seq: u64,
        id: Option<ReqId>,
    ) -> Result<(), ReplyError> {
        let (stream, seq, receipts) = match room {
            Some(room) => {
                self.member(conn, &room, "marking as read")?;
                let last = self.hub.last_seq(&room);
                let receipts = self.config.rule(&room).receipts;
                (Stream::Room(room), seq.min(last), receipts)
            }
            None => (Stream::Inbox(conn.user.clone()), seq, false),
        };
        self.take_signal(conn)?;
        let held = self.reads.get(&conn.user, &stream);
        if seq <= held {
            if id.is_some() {
                let room = match &stream {
                    Stream::Room(r) => Some(r),
                    Stream::Inbox(_) => None,
                };
                let ack = encode::read_ack(id.as_ref(), room, held);
                self.enqueue(conn, &Rc::new(ack));
            }
            return Ok(());
        }
        // A room's seq is clamped here; an inbox's only at the engine, which tells this shard.
        if let Stream::Room(_) = stream {
            self.reads.advance(&conn.user, stream.clone(), seq);
        }
        let reply = id.is_some().then(|| super::reply_to(conn, &id));
        self.to_engine(EngineMsg::Read(ReadMove {
            user: conn.user.clone(),
            stream,
            seq,
            conn: conn.id,
            receipts,
            reply,
        }));
        Ok(())
    }

    fn take_signal(&self, conn: &Conn) -> Result<(), ReplyError> {
        let mut b = conn.rate.get();
        let ok = b.take_signal(&self.config.rates());
        conn.rate.set(b);
        if ok {
            return Ok(());
        }
        Err(ReplyError::new(
            ErrorCode::RateLimited,
            format!(
                "over {} signals and reads per second (signal_rate); this one was dropped",
                self.config.signal_rate
            ),
        ))
    }

    /// A signal or receipt for the room's local members but `exclude`. A member with more than
    /// `signal_queue_bytes` unsent does not get it (counted): signals are the first to go.
    /// Per member: a length check, an `Rc` clone and a queue push.
    pub(super) fn deliver_signal(&mut self, room: &Name, frame: Bytes, exclude: Option<ConnId>) {
        let frame = Rc::new(frame);
        let limit = self.config.signal_queue_bytes;
        let members: Vec<Rc<Conn>> = (self.hub.members(room).iter())
            .filter(|c| Some(c.id) != exclude)
            .cloned()
            .collect();
        for c in members {
            if c.queued_bytes() > limit {
                self.stats.signals_dropped += 1;
                continue;
            }
            self.stats.deliveries += 1;
            self.enqueue(&c, &frame);
        }
    }

    /// The user's positions from the engine (before the connection's `Admitted`).
    pub(super) fn reads_known(&mut self, user: Name, reads: Vec<(Stream, u64)>) {
        self.reads.0.insert(user, reads);
    }

    /// The user's position moved (on another connection): this shard's copy follows, and the
    /// user's connections here but `exclude` get a `read` frame.
    pub(super) fn read_moved(
        &mut self,
        user: Name,
        stream: Stream,
        seq: u64,
        exclude: Option<ConnId>,
    ) {
        self.reads.advance(&user, stream.clone(), seq);
        let room = match &stream {
            Stream::Room(r) => Some(r),
            Stream::Inbox(_) => None,
        };
        let frame = Rc::new(encode::read_moved(room, seq));
        for c in self.hub.conns_of(&user) {
            if Some(c.id) != exclude {
                self.enqueue(&c, &frame);
            }
        }
    }

    /// A join ack with the user's read position in the room.
    pub(super) fn with_read(&self, user: &Name, room: &Name, ack: &Bytes) -> Bytes {
        let read = self.reads.get(user, &Stream::Room(room.clone()));
        encode::with_read(ack, read)
    }

    /// The `welcome` of a new connection: with the inbox's read position, and each room joined
    /// at connect's last seq and read position. The rooms' seqs come with their joins: until
    /// then it says 0, and `token_room_joined` replaces it (writes are held meanwhile).
    pub(super) fn welcome(&mut self, conn: &Conn, rooms: &[Name], inbox_seq: u64) -> Bytes {
        if !rooms.is_empty() {
            let wait = Welcome {
                inbox_seq,
                rooms: rooms.iter().map(|r| (r.clone(), None)).collect(),
            };
            self.reads.1.insert(conn.id, wait);
        }
        let seqs: Vec<(Name, u64)> = rooms.iter().map(|r| (r.clone(), 0)).collect();
        self.encode_welcome(&conn.user, &seqs, inbox_seq)
    }

    fn encode_welcome(&self, user: &Name, rooms: &[(Name, u64)], inbox_seq: u64) -> Bytes {
        let names: Vec<Name> = rooms.iter().map(|(r, _)| r.clone()).collect();
        let welcome = encode::welcome(user, &names, self.config.heartbeat_ms, inbox_seq);
        let inbox = self.reads.get(user, &Stream::Inbox(user.clone()));
        let rooms: Vec<(Name, u64, u64)> = (rooms.iter())
            .map(|(r, seq)| {
                let read = self.reads.get(user, &Stream::Room(r.clone()));
                (r.clone(), *seq, read)
            })
            .collect();
        encode::with_reads(&welcome, inbox, &rooms)
    }

    /// A room joined at connect is in at `seq` (0 if its join failed): once all are, the
    /// connection's `welcome` is rebuilt with their seqs.
    pub(super) fn token_room_joined(&mut self, conn: &Rc<Conn>, room: &Name, seq: u64) {
        let Some(wait) = self.reads.1.get_mut(&conn.id) else {
            return;
        };
        if let Some(entry) = wait
            .rooms
            .iter_mut()
            .find(|(r, s)| r == room && s.is_none())
        {
            entry.1 = Some(seq);
        }
        if wait.rooms.iter().any(|(_, s)| s.is_none()) {
            return;
        }
        let Some(wait) = self.reads.1.remove(&conn.id) else {
            return;
        };
        let rooms: Vec<(Name, u64)> = (wait.rooms.into_iter())
            .map(|(r, s)| (r, s.unwrap_or(0)))
            .collect();
        let welcome = self.encode_welcome(&conn.user, &rooms, wait.inbox_seq);
        if conn.closing().is_none() {
            conn.replace_first(Rc::new(welcome));
        }
    }
}
