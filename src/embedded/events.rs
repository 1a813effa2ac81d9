//! Edits, deletes and reactions at a room's home: each is checked by the store writer against
//! the stored target (its author, whether it was deleted, who reacted), then sequenced, stored
//! (with the target's new folded state, in the same commit) and fanned out like a message.
//!
//! One check per room is out at a time: the next is queued behind the previous event's append,
//! so it sees it (two reactions racing cannot both pass). Plain publishes never come here.

use std::collections::VecDeque;

use bytes::Bytes;

use super::Embedded;
use crate::core::error::ReplyError;
use crate::core::event::{Event, EventKind, EventWrite};
use crate::core::{Name, now_ms};
use crate::engine::Outbox;
use crate::msg::{ReplyTo, WriteTarget};
use crate::persist::{Op, Read};
use crate::protocol::encode;

/// An event waiting for its room's check in flight.
pub(super) struct Waiting {
    from: Name,
    event: Event,
    api: bool,
    reply: ReplyTo,
}

impl Embedded {
    /// An edit, delete or reaction for a room homed here.
    pub(super) fn event(
        &mut self,
        room: Name,
        (from, event, api): (Name, Event, bool),
        reply: ReplyTo,
        out: &mut Outbox,
    ) {
        if let Some(refused) = self.disk_refusal() {
            return self.answer(reply.fail(refused), out);
        }
        let waiting = Waiting {
            from,
            event,
            api,
            reply,
        };
        match self.checking.get_mut(&room) {
            Some(queue) => queue.push_back(waiting),
            None => {
                self.checking.insert(room.clone(), VecDeque::new());
                self.check(room, waiting);
            }
        }
    }

    fn check(&mut self, room: Name, w: Waiting) {
        self.store.queue(Op::Read(Read::Check {
            room,
            from: w.from,
            event: w.event,
            api: w.api,
            reply: w.reply,
            home: self.id,
            max_emojis: self.config.max_reaction_emojis,
        }));
    }

    /// The writer's verdict on an event: refused, a no-op, or sequenced and stored now. Then
    /// the room's next event is checked.
    pub(super) fn checked(
        &mut self,
        room: Name,
        (from, event): (Name, Event),
        reply: ReplyTo,
        verdict: Result<Option<Box<EventWrite>>, ReplyError>,
        out: &mut Outbox,
    ) {
        match verdict {
            Err(e) => self.answer(reply.fail(e), out),
            Ok(None) => {
                let ack = reply.answer(
                    |id| encode::noop_ack(id, &room),
                    || Bytes::from_static(b"{\"noop\":true}"),
                );
                self.answer(ack, out);
            }
            Ok(Some(mut write)) => {
                let seq = self.rooms.next_seq(&room);
                write.sequenced(seq, matches!(event.kind, EventKind::Edit(_)));
                let ts = now_ms();
                let frame = encode::event(&room, &from, seq, ts, &event);
                let target = WriteTarget::Room(room.clone());
                self.store_event(target, (seq, ts, frame), write, reply, out);
            }
        }
        let next = self.checking.get_mut(&room).and_then(VecDeque::pop_front);
        match next {
            Some(w) => self.check(room, w),
            None => {
                self.checking.remove(&room);
            }
        }
    }
}
