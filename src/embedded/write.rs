//! The write path at a stream's home: a new message's key checked (a repeat is answered
//! with its first seq), the disk floor, the message sequenced, encoded once and handed to the
//! store with its key and feed event (one commit), then, once stored (or at once without
//! `sync`), the ack and one `Deliver` per shard with receivers.
//!
//! Like the handlers, it answers only with `NodeMsg`s.

use std::time::Instant;

use bytes::Bytes;

use super::Embedded;
use super::keys::Keyed;
use crate::config::Durability;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::event::EventWrite;
use crate::core::{ConnId, MsgKey, Name, ShardId, Stream};
use crate::engine::Outbox;
use crate::msg::{EngineMsg, NodeMsg, Own, ReplyTo, WriteTarget, Written};
use crate::persist::{FeedEvent, Op};
use crate::protocol::encode::{self, Target};
use crate::store::Append;
use crate::ws;

impl Embedded {
    /// A room or direct message: answered from its key if it repeats one, refused while the
    /// disk is low, else sequenced in its stream, encoded once and stored.
    pub(super) fn message(
        &mut self,
        target: WriteTarget,
        from: Name,
        body: Bytes,
        key: Option<MsgKey>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) {
        let Some((key, reply)) = self.check_key(|| target.stream(), &from, key, reply, out) else {
            return;
        };
        if let Some(refused) = self.disk_refusal() {
            return self.answer(reply.fail(refused), out);
        }
        let ts = crate::core::now_ms();
        let (seq, to) = match &target {
            WriteTarget::Room(room) => {
                self.counters.room_publishes += 1;
                (self.rooms.next_seq(room), Target::Room(room))
            }
            WriteTarget::Inbox { to, .. } => {
                self.counters.direct_publishes += 1;
                (self.users.next_inbox_seq(to), Target::User(to))
            }
        };
        let frame = encode::message(to, &from, seq, ts, &body);
        let key = key.map(|(keyed, k)| (keyed, own_copy(&from, &k, &frame)));
        self.store(target, seq, ts, frame, key, reply, out);
    }

    /// A new message's key, checked: `None` when it repeats a remembered one, which is then
    /// answered (or, if its first message is not stored yet, answered once it is). Without a
    /// key, nothing is hashed or allocated.
    fn check_key(
        &mut self,
        stream: impl FnOnce() -> Stream,
        from: &Name,
        key: Option<MsgKey>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) -> Option<(Option<(Keyed, MsgKey)>, ReplyTo)> {
        let Some(key) = key else {
            return Some((None, reply));
        };
        let keyed = self.keys.keyed(from, &key);
        let stream = stream();
        let Some(seq) = self.keys.seen(&stream, keyed.0) else {
            return Some((Some((keyed, key)), reply));
        };
        let committed = match &stream {
            Stream::Room(room) => self.rooms.committed_seq(room),
            Stream::Inbox(user) => self.users.inbox_seq(user),
        };
        if seq > committed {
            self.repeats.push((stream, seq, reply));
        } else {
            self.answer(repeat_ack(&stream, seq, reply), out);
        }
        None
    }

    /// Answers the repeats waiting for message `seq` of `stream`, stored (`ok`) or not.
    fn settle_repeats(&mut self, stream: &Stream, seq: u64, ok: bool, out: &mut Outbox) {
        let waiting = std::mem::take(&mut self.repeats);
        for (s, at, reply) in waiting {
            if at != seq || s != *stream {
                self.repeats.push((s, at, reply));
            } else if ok {
                self.answer(repeat_ack(&s, seq, reply), out);
            } else {
                self.answer(reply.fail(write_failed()), out);
            }
        }
    }

    /// The error for a new message while the store writer says the disk is below
    /// `min_free_disk_bytes`: refused before it is sequenced, so it leaves no seq behind. Costs
    /// one relaxed atomic load per message when the disk is not low.
    pub(super) fn disk_refusal(&self) -> Option<ReplyError> {
        let free = self.store.persist().disk_low()?;
        let floor = self.config.min_free_disk_bytes;
        Some(ReplyError::new(
            ErrorCode::Unavailable,
            format!(
                "the server's disk is almost full ({free} bytes free, under its floor of \
                 {floor}); this message was not stored or delivered. Reading history still \
                 works; try sending again later"
            ),
        ))
    }

    /// Hands a sequenced message to the store (with its key, in the same commit). With sync
    /// durability it is acknowledged and delivered once stored (`Stored`); otherwise at once.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        target: WriteTarget,
        seq: u64,
        ts: u64,
        frame: Bytes,
        key: Option<(Keyed, Box<Own>)>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) {
        self.store_with(target, (seq, ts, frame), key, None, reply, out);
    }

    /// `store` for an edit, delete or reaction: its target's new state goes in the same commit.
    pub(super) fn store_event(
        &mut self,
        target: WriteTarget,
        entry: (u64, u64, Bytes),
        event: Box<EventWrite>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) {
        self.store_with(target, entry, None, Some(event), reply, out);
    }

    fn store_with(
        &mut self,
        target: WriteTarget,
        (seq, ts, frame): (u64, u64, Bytes),
        key: Option<(Keyed, Box<Own>)>,
        event: Option<Box<EventWrite>>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) {
        let stream = target.stream();
        let offline = match &target {
            WriteTarget::Inbox { to, .. } => self.users.online_count(to) == 0,
            WriteTarget::Room(_) => false,
        };
        let (key, text) = match key {
            Some(((id, text), own)) => {
                self.keys.remember(&stream, id, seq);
                (Some((id, own)), Some(text))
            }
            None => (None, None),
        };
        let append = Append {
            stream,
            seq,
            ts,
            payload: ws::payload_of(&frame),
            key: text,
            event,
        };
        // Queued right after its append: the writer commits both in one batch.
        let event = self.store.persist().feed().map(|_| FeedEvent::Stream {
            stream: append.stream.clone(),
            seq,
            ts,
            offline,
            payload: append.payload.clone(),
        });
        let written = Written {
            target,
            seq,
            frame,
            reply,
            key,
        };
        // Publish latency starts here; one clock read per message.
        let sequenced = Instant::now();
        if self.config.durability == Durability::Sync {
            let done = Some((self.id, written));
            self.store_waits.push_back(sequenced);
            self.store.queue(Op::Append { append, done });
            self.store.queue_all(event.map(Op::Feed));
        } else {
            self.store.queue(Op::Append { append, done: None });
            self.store.queue_all(event.map(Op::Feed));
            self.delivered(written, out);
            self.counters.publish_latency.observe(sequenced.elapsed());
        }
    }

    /// The writer's answer for this home's writes (sync durability), in the order sent.
    pub(super) fn stored_here(&mut self, writes: Vec<Written>, ok: bool, out: &mut Outbox) {
        for w in writes {
            let sequenced = self.store_waits.pop_front();
            let keyed = (w.key.as_ref()).map(|(id, _)| (w.target.stream(), w.seq, *id));
            if ok {
                self.delivered(w, out);
                if let Some(at) = sequenced {
                    self.counters.publish_latency.observe(at.elapsed());
                }
            } else {
                self.answer(w.reply.fail(write_failed()), out);
            }
            if let Some((stream, seq, id)) = keyed {
                if !ok {
                    // It names no stored message: a resend must be stored.
                    self.keys.forget(&stream, id);
                }
                if !self.repeats.is_empty() {
                    self.settle_repeats(&stream, seq, ok, out);
                }
            }
        }
    }

    /// Once stored: acks the publisher and delivers the message.
    fn delivered(&mut self, w: Written, out: &mut Outbox) {
        let Written {
            target,
            seq,
            frame,
            reply,
            key,
        } = w;
        let own = key.map(|(_, own)| own);
        let publisher = reply.conn();
        let seq_json = || Bytes::from(format!("{{\"seq\":{seq}}}"));
        match target {
            WriteTarget::Room(room) => {
                self.rooms.commit(&room, seq);
                // The ack goes first: with a large room the fan-out's writes would delay it.
                let ack = reply.answer(
                    |id| encode::ack(id, Target::Room(&room), Some(seq)),
                    seq_json,
                );
                self.answer(ack, out);
                let room = Stream::Room(room);
                self.spread(room, Some(seq), frame, publisher, own, out);
            }
            WriteTarget::Inbox { to, from } => {
                let (live, cursor) = self.users.commit(&to, seq);
                if live {
                    let inbox = Stream::Inbox(to.clone());
                    self.spread(inbox, Some(seq), frame.clone(), publisher, None, out);
                }
                if let Some(cursor) = cursor {
                    let stream = Stream::Inbox(to.clone());
                    self.store.queue(Op::Cursor { stream, cursor });
                }
                if from != to {
                    // The sender's other connections get a copy (not in their inbox's seqs),
                    // with the key if it had one.
                    let forward = EngineMsg::Forward {
                        user: from,
                        frame: own.map_or(frame, |own| own.frame),
                        exclude: publisher,
                    };
                    self.route(forward, out);
                }
                let ack =
                    reply.answer(|id| encode::ack(id, Target::User(&to), Some(seq)), seq_json);
                self.answer(ack, out);
            }
        }
    }

    /// Sends a live frame of `stream` to every shard with its receivers (a room's members, a
    /// user's connections); this shard's own hub gets it through `out`. `own`: a keyed room
    /// message's copy for its sender's connections.
    pub(super) fn spread(
        &self,
        stream: Stream,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
        own: Option<Box<Own>>,
        out: &mut Outbox,
    ) {
        let shards: &mut dyn Iterator<Item = ShardId> = match &stream {
            Stream::Room(room) => &mut self.rooms.shards_of(room),
            Stream::Inbox(user) => &mut self.users.shards_of(user),
        };
        for shard in shards {
            let msg = NodeMsg::Deliver {
                stream: stream.clone(),
                seq,
                frame: frame.clone(),
                exclude,
                own: own.clone(),
            };
            self.send(shard, msg, out);
        }
    }
}

/// The ack of a repeated key: the first message's seq, and `dup`.
fn repeat_ack(stream: &Stream, seq: u64, reply: ReplyTo) -> (ShardId, NodeMsg) {
    let target = match stream {
        Stream::Room(room) => Target::Room(room),
        Stream::Inbox(to) => Target::User(to),
    };
    reply.answer(
        |id| encode::dup_ack(id, target, seq),
        || Bytes::from(format!("{{\"seq\":{seq},\"dup\":true}}")),
    )
}

fn write_failed() -> ReplyError {
    ReplyError::new(
        ErrorCode::Unavailable,
        "the message store failed; the message was not stored or delivered",
    )
}

/// The copy of a keyed message for its sender's other connections: the frame with the key.
fn own_copy(from: &Name, key: &MsgKey, frame: &Bytes) -> Box<Own> {
    Box::new(Own {
        user: from.clone(),
        frame: encode::with_key(&ws::payload_of(frame), key.as_str()),
    })
}
