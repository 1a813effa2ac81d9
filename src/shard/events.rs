//! A connection's edits, deletes and reactions: checked here like a publish (membership, the
//! `publish` right, the request rate, an edit's body, an emoji's size), then sent to the
//! engine, which checks them against the stored target (author, existence) and sequences them.
//!
//! It must not sequence, store or fan out.

use std::rc::Rc;

use bytes::Bytes;

use super::{Shard, reply_to};
use crate::conn::Conn;
use crate::core::ReqId;
use crate::core::error::ReplyError;
use crate::core::event::{Event, EventKind};
use crate::core::rights::Rights;
use crate::msg::EngineMsg;
use crate::protocol::{self, ClientMessage};

impl Shard {
    /// An `edit`, `delete`, `react` or `unreact` (any other message is ignored).
    pub(super) fn event_request(
        &mut self,
        conn: &Rc<Conn>,
        msg: ClientMessage<'_>,
        id: &Option<ReqId>,
    ) -> Result<(), ReplyError> {
        let (room, target, kind) = match msg {
            ClientMessage::Edit { room, target, body } => {
                protocol::check_body_depth(body.get(), self.config.max_body_depth)?;
                let body = Bytes::copy_from_slice(body.get().as_bytes());
                (room, target, EventKind::Edit(body))
            }
            ClientMessage::Delete { room, target } => {
                (room, target, EventKind::Delete { hard: false })
            }
            ClientMessage::React {
                room,
                target,
                emoji,
                on,
            } => {
                protocol::check_emoji(&emoji, self.config.max_emoji_bytes)?;
                let emoji = emoji.into_owned();
                let kind = match on {
                    true => EventKind::React(emoji),
                    false => EventKind::Unreact(emoji),
                };
                (room, target, kind)
            }
            _ => return Ok(()),
        };
        let doing = match kind {
            EventKind::Edit(_) => "editing messages in",
            EventKind::Delete { .. } => "deleting messages in",
            _ => "reacting in",
        };
        self.member(conn, &room, doing)?;
        self.may(conn, &room, Rights::PUBLISH)?;
        self.take_token(conn)?;
        if let EventKind::Edit(body) = &kind {
            self.charge_store(conn, &room, body.len())?;
        }
        self.to_engine(EngineMsg::Event {
            room,
            from: conn.user.clone(),
            event: Event { target, kind },
            api: false,
            reply: reply_to(conn, id),
        });
        Ok(())
    }
}
