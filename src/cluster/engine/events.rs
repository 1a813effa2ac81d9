//! Edits, deletes and reactions: one script (`lua/event.lua`) checks the stored target,
//! assigns the seq, appends the event and the target's folded state and publishes, then the
//! sender is answered.

use super::*;
use crate::core::event::{Event, EventKind};

impl Node {
    /// Checks, sequences, stores and publishes an event of `room`, and answers it.
    pub(super) async fn event(
        self: Rc<Self>,
        room: Name,
        (from, event, api): (Name, Event, bool),
        reply: ReplyTo,
    ) {
        let ts = now_ms();
        let (head, tail) = encode::event_parts(&room, &from, ts, &event);
        let stream = Stream::Room(room.clone());
        let (kind, arg): (&str, &[u8]) = match &event.kind {
            EventKind::Edit(body) => ("edit", body),
            EventKind::Delete { hard: true } => ("hard", b""),
            EventKind::Delete { hard: false } => ("delete", b""),
            EventKind::React(e) => ("react", e.as_bytes()),
            EventKind::Unreact(e) => ("unreact", e.as_bytes()),
        };
        let publisher = reply.conn();
        let meta = self.keys.meta(&stream);
        let mut inv =
            self.message_invocation(&self.scripts.event, (&meta, &stream), (&head, &tail), ts);
        inv.key(self.keys.fold(&stream))
            .arg(publisher.map(|c| c.raw().to_string()).unwrap_or_default())
            .arg(self.config.rule(&room).history_messages)
            .arg(Self::new_epoch())
            .arg(event.target)
            .arg(kind)
            .arg(&*from)
            .arg(if api { "1" } else { "0" })
            .arg(arg)
            .arg(self.config.max_reaction_emojis)
            .arg(room.as_str());
        self.feed_keys(&mut inv, &meta);
        let (status, seq, _epoch, why) =
            match self.script_or::<(String, u64, u64, String)>(&inv).await {
                Ok(done) => done,
                Err(f) => return self.answer(reply.fail(failed(f))),
            };
        let answer = match &*status {
            "ok" => reply.answer(
                |id| encode::ack(id, To::Room(&room), Some(seq)),
                || Bytes::from(format!("{{\"seq\":{seq}}}")),
            ),
            "noop" => reply.answer(
                |id| encode::noop_ack(id, &room),
                || Bytes::from_static(b"{\"noop\":true}"),
            ),
            "forbidden" => reply.fail(ReplyError::new(ErrorCode::Forbidden, why)),
            "too_large" => reply.fail(ReplyError::new(
                ErrorCode::TooLarge,
                format!(
                    "message {} already has {why} different reactions (max_reaction_emojis); \
                     react with one of them",
                    event.target
                ),
            )),
            _ => reply.fail(ReplyError::new(
                ErrorCode::NoSuchMessage,
                format!(
                    "message {} {why}; an edit, delete or reaction names a stored message's seq",
                    event.target
                ),
            )),
        };
        self.answer(answer);
    }
}
