//! The writer's reads: a join's replay, the inbox at connect, a gap, a history page, a sync page.
//! Each is capped (`replay_limit`, and half of `max_queue_bytes` per reply) so no answer can make
//! its reader a slow consumer.

use bytes::Bytes;

use crate::core::Name;
use crate::core::Stream;
use crate::core::error::{ErrorCode, ReplyError};
use crate::msg::{NodeMsg, Replay, ReplayTo, ReplyTo};
use crate::protocol::encode::{self, Recovery};
use crate::store::{StoreError, StoredMessage};

use super::op::Read;
use super::writer::Writer;

impl Writer {
    pub(super) fn read(&mut self, read: Read) {
        match read {
            Read::Join {
                room,
                to,
                id,
                since,
                upto,
                epoch,
                lost,
                info,
            } => {
                let stream = Stream::Room(room.clone());
                let (messages, mut recovery) =
                    self.replay(&stream, since, upto).unwrap_or_else(|e| {
                        // The join still goes through, with an ack that says what was lost.
                        tracing::error!(error = %e, "replay read failed");
                        self.counters.read_errors += 1;
                        (Vec::new(), Recovery::default())
                    });
                recovery.recovered &= !lost;
                let mut ack = encode::join_ack(id.as_ref(), &room, upto, recovery);
                if let Some(epoch) = epoch {
                    ack = encode::with_epoch(&ack, epoch);
                }
                let ack = encode::with_room(&ack, &info);
                self.send_replay(stream, to, (since, upto), Some(ack), Ok(messages));
            }
            Read::Inbox {
                user,
                to,
                after,
                upto,
            } => {
                let stream = Stream::Inbox(user);
                let messages = self.replay(&stream, after, upto).map(|(m, _)| m);
                #[cfg(feature = "fault-injection")]
                let messages = match std::mem::take(&mut self.fail_next_read) {
                    true => Err(StoreError::Read("fault injection".into())),
                    false => messages,
                };
                self.send_replay(stream, to, (after, upto), None, messages);
            }
            Read::Range {
                stream,
                after,
                upto,
                to,
            } => {
                let read = self.range(&stream, after, upto);
                let upto = match &read {
                    Ok((_, end)) => *end,
                    Err(_) => upto,
                };
                let messages = read.map(|(m, _)| m);
                self.send_replay(stream, to, (after, upto), None, messages);
            }
            Read::History {
                room,
                reply,
                before,
                limit,
                fold: Some(fold),
            } => self.fold_history(room, reply, (before, limit), fold),
            Read::Check {
                room,
                from,
                event,
                api,
                reply,
                home,
                max_emojis,
            } => self.check_event((room, from, event, api), reply, (home, max_emojis)),
            Read::History {
                room,
                reply,
                before,
                limit,
                fold: None,
            } => {
                let stream = Stream::Room(room.clone());
                let page = self
                    .store
                    .before(&stream, before.unwrap_or(u64::MAX), limit + 1)
                    .map(|m| self.page(m, limit));
                self.answer_page(reply, Some(&room), page);
            }
            Read::Sync { user, reply, since } => {
                let stream = Stream::Inbox(user);
                let page = self
                    .store
                    .after(&stream, since, self.replay_limit + 1)
                    .map(|m| self.page(m, self.replay_limit));
                self.answer_page(reply, None, page);
            }
            Read::Unread {
                user,
                positions,
                inbox_seq,
                reply,
            } => self.unread(user, positions, inbox_seq, reply),
        }
    }

    /// The unread counts of a user: per room with a read position, and the inbox.
    fn unread(
        &mut self,
        user: Name,
        positions: Vec<(Stream, u64)>,
        inbox_seq: u64,
        reply: ReplyTo,
    ) {
        let entry = |seq: u64, read: u64| serde_json::json!({"seq": seq, "read": read, "unread": seq.saturating_sub(read)});
        let mut inbox_read = 0;
        let mut rooms = serde_json::Map::new();
        for (stream, read) in positions {
            match &stream {
                Stream::Inbox(_) => inbox_read = read,
                Stream::Room(room) => {
                    let seq = self.store.last_seq(&stream).unwrap_or_else(|e| {
                        tracing::error!(error = %e, "last seq read failed");
                        read
                    });
                    rooms.insert(room.to_string(), entry(seq.max(read), read));
                }
            }
        }
        let body = serde_json::json!({
            "user": &*user, "inbox": entry(inbox_seq, inbox_read), "rooms": rooms,
        });
        let (shard, msg) = reply.answer(|_| Bytes::new(), || body.to_string().into());
        self.router.send(shard, msg);
    }

    /// Answers a `history` (with `room`) or `sync` read: the page frame to a connection, or its
    /// JSON to an API call.
    pub(super) fn answer_page(
        &mut self,
        reply: ReplyTo,
        room: Option<&Name>,
        page: Result<(Vec<StoredMessage>, bool), StoreError>,
    ) {
        let (shard, msg) = match page {
            Ok((messages, more)) => reply.answer_read(
                messages.len(),
                |id| encode::page(id, room, payloads(&messages), more),
                || crate::ws::payload_of(&encode::page(None, room, payloads(&messages), more)),
            ),
            Err(e) => reply.fail(self.page_failed(&e)),
        };
        self.router.send(shard, msg);
    }

    /// A page read failed: logged and counted; the error to answer with.
    pub(super) fn page_failed(&mut self, e: &StoreError) -> ReplyError {
        tracing::error!(error = %e, "history read failed");
        self.counters.read_errors += 1;
        ReplyError::new(
            ErrorCode::Unavailable,
            "the message store could not be read; try again",
        )
    }

    /// Sends a replay (or a gap's read) to the shard it is for. A failed read is sent as not
    /// `ok`: the hub must not skip it silently.
    pub(super) fn send_replay(
        &mut self,
        stream: Stream,
        to: ReplayTo,
        (after, upto): (u64, u64),
        ack: Option<Bytes>,
        messages: Result<Vec<StoredMessage>, StoreError>,
    ) {
        let (frames, ok) = match messages {
            Ok(m) => (crate::ws::text_frames(payloads(&m)), true),
            Err(e) => {
                tracing::error!(error = %e, ?stream, "range read failed");
                self.counters.read_errors += 1;
                (Bytes::new(), false)
            }
        };
        let msg = NodeMsg::Replay(Replay {
            stream,
            to,
            after,
            upto,
            ack,
            frames,
            ok,
        });
        self.router.send(to.shard(), msg);
    }

    /// The oldest stored messages in (after, upto], under `replay_limit` and `reply_bytes`,
    /// and the seq they cover up to: `upto` when they are all there is, else the last one.
    pub(super) fn range(
        &self,
        stream: &Stream,
        after: u64,
        upto: u64,
    ) -> Result<(Vec<StoredMessage>, u64), StoreError> {
        let mut messages = self.store.after(stream, after, self.replay_limit)?;
        messages.retain(|m| m.seq <= upto);
        let mut bytes = 0;
        let keep = messages
            .iter()
            .take_while(|m| {
                bytes += m.payload.len() + 10;
                bytes <= self.reply_bytes
            })
            .count()
            .max(messages.len().min(1));
        let full = keep == self.replay_limit || keep < messages.len();
        messages.truncate(keep);
        let end = match messages.last() {
            Some(m) if full => m.seq,
            _ => upto,
        };
        Ok((messages, end))
    }

    /// The stored messages in (after, upto], at most the newest `replay_limit` of them and
    /// `reply_bytes` of payload, oldest first.
    pub(super) fn replay(
        &self,
        stream: &Stream,
        after: u64,
        upto: u64,
    ) -> Result<(Vec<StoredMessage>, Recovery), StoreError> {
        if after >= upto {
            let recovery = Recovery {
                recovered: after == upto,
                ..Recovery::default()
            };
            return Ok((Vec::new(), recovery));
        }
        let from = after.max(upto - (self.replay_limit as u64).min(upto));
        let mut messages = self.store.after(stream, from, self.replay_limit)?;
        messages.retain(|m| m.seq <= upto);
        let mut bytes = 0;
        let keep = messages
            .iter()
            .rev()
            .take_while(|m| {
                bytes += m.payload.len() + 10;
                bytes <= self.reply_bytes
            })
            .count();
        let cut = messages.len() - keep;
        messages.drain(..cut);
        // Every message after `after` is retained if the oldest one is there.
        let oldest = match (from > after, messages.first()) {
            (false, Some(m)) if cut == 0 => Some(m.seq),
            _ => self.store.after(stream, after, 1)?.first().map(|m| m.seq),
        };
        let recovery = Recovery {
            recovered: oldest == Some(after + 1),
            replayed: messages.len(),
            truncated: from > after || cut > 0,
        };
        Ok((messages, recovery))
    }

    /// Cuts a read of `limit + 1` to a page of at most `limit` messages and `reply_bytes`, and
    /// says whether more follow.
    pub(super) fn page(
        &self,
        mut messages: Vec<StoredMessage>,
        limit: usize,
    ) -> (Vec<StoredMessage>, bool) {
        let mut more = messages.len() > limit;
        messages.truncate(limit);
        let mut bytes = 0;
        let keep = messages
            .iter()
            .take_while(|m| {
                bytes += m.payload.len() + 1;
                bytes <= self.reply_bytes
            })
            .count();
        if keep < messages.len() {
            messages.truncate(keep.max(1));
            more = true;
        }
        (messages, more)
    }
}

fn payloads(messages: &[StoredMessage]) -> impl Iterator<Item = &[u8]> + Clone {
    messages.iter().map(|m| &m.payload[..])
}
