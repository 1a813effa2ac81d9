//! Requests that wait for a hook (docs/hooks.md): a `join` or `publish` in a room whose rule
//! lists that hook, a `send` with `hook_send`. The request is checked first (membership, rights,
//! rates), then its hook is called on the shard's thread (no task per call); the answer comes back
//! through the shard's hook channel (`answers`) and the request goes on, refused, or with its
//! body replaced. A connection keeps its order: while one of its requests waits for a hook, every
//! frame it sends after it waits too (`HookQueue`), unparsed, and is handled once the hook has
//! answered. Other connections never wait.
//!
//! Owns the per-connection queues of requests behind a hook. It must not call HTTP (`hooks`
//! does) or decide the request itself (`requests.rs` does, before and after the hook).
//! Cost without hooks: one `is_empty` of a map per text frame.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Shard, reply_to};
use crate::config::{HookOnError, RoomHook};
use crate::conn::Conn;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::key::MsgKey;
use crate::core::{ConnId, Name, ReqId};
use crate::hooks::{Answer, HookError, HookEvent, Hooks, push_str};
use crate::msg::EngineMsg;
use crate::protocol;
use crate::shard::runtime::Ctx;

/// A connection's request whose hook is out, and the frames it sent behind it.
pub(super) struct HookQueue {
    ticket: u64,
    pending: Hooked,
    on_error: HookOnError,
    /// Frames sent after `pending`, in order, not parsed yet.
    waiting: VecDeque<Box<str>>,
}

/// What a request needs to go on once its hook has answered.
pub(super) enum Hooked {
    Publish {
        room: Name,
        body: Bytes,
        key: Option<MsgKey>,
        id: Option<ReqId>,
    },
    Send {
        to: Name,
        body: Bytes,
        key: Option<MsgKey>,
        id: Option<ReqId>,
    },
    Join {
        room: Name,
        since: (Option<u64>, Option<u64>),
        id: Option<ReqId>,
    },
}

impl Hooked {
    fn event(&self) -> HookEvent {
        match self {
            Hooked::Publish { .. } => HookEvent::Publish,
            Hooked::Send { .. } => HookEvent::Send,
            Hooked::Join { .. } => HookEvent::Join,
        }
    }

    fn id(&self) -> Option<&ReqId> {
        match self {
            Hooked::Publish { id, .. } | Hooked::Send { id, .. } | Hooked::Join { id, .. } => {
                id.as_ref()
            }
        }
    }
}

/// A hook's answer on its way back to the shard of the connection that asked.
pub struct HookDone {
    conn: ConnId,
    ticket: u64,
    result: Result<Answer, HookError>,
}

/// The shard's end of the hooks: the client, and where answers come back.
pub(super) struct ShardHooks {
    hooks: Hooks,
    answers: mpsc::UnboundedSender<HookDone>,
    next_ticket: u64,
}

impl Shard {
    /// Gives the shard the hook client. Returns the receiving end of its answers, for
    /// [`answers`].
    pub fn set_hooks(&mut self, hooks: Hooks) -> mpsc::UnboundedReceiver<HookDone> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.hooks = Some(ShardHooks {
            hooks,
            answers: tx,
            next_ticket: 0,
        });
        rx
    }

    /// A text frame: handled now, or queued behind the connection's request that waits for a
    /// hook.
    pub(super) fn on_text(&mut self, conn: &Rc<Conn>, text: &str) {
        if !self.hook_queues.is_empty()
            && let Some(q) = self.hook_queues.get_mut(&conn.id)
        {
            let max = self.config.hook_max_waiting;
            if q.waiting.len() < max {
                q.waiting.push_back(text.into());
            } else {
                let id = match protocol::parse(text) {
                    Ok(req) => req.id,
                    Err(e) => e.id,
                };
                let err = ReplyError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "{max} requests already wait for a hook on this connection; wait for \
                         their answers"
                    ),
                );
                self.reply_error(conn, id.as_ref(), err);
            }
            return;
        }
        match protocol::parse(text) {
            Ok(req) => self.on_request(conn, req),
            Err(e) => self.reply_error(conn, e.id.as_ref(), e.error),
        }
    }

    /// The timeout and failure policy of `room`'s `hook`, if its rule runs it.
    fn room_hook(&self, room: &Name, hook: RoomHook) -> Option<(u64, HookOnError)> {
        self.hooks.as_ref()?;
        let rule = self.config.rule(room);
        (rule.hooks.has(hook)).then_some((rule.hook_timeout_ms, rule.hook_on_error))
    }

    /// A checked `publish`: to the engine, or to its hook first.
    pub(super) fn publish(
        &mut self,
        conn: &Rc<Conn>,
        room: Name,
        body: Bytes,
        key: Option<MsgKey>,
        id: Option<ReqId>,
    ) {
        match self.room_hook(&room, RoomHook::Publish) {
            Some(policy) => self.call_hook(
                conn,
                Hooked::Publish {
                    room,
                    body,
                    key,
                    id,
                },
                policy,
            ),
            None => self.to_engine(EngineMsg::Publish {
                reply: reply_to(conn, &id),
                room,
                from: conn.user.clone(),
                body,
                key,
            }),
        }
    }

    /// A checked `send`: to the engine, or to its hook first.
    pub(super) fn send_direct(
        &mut self,
        conn: &Rc<Conn>,
        to: Name,
        body: Bytes,
        key: Option<MsgKey>,
        id: Option<ReqId>,
    ) {
        if self.hooks.is_some() && self.config.hook_send {
            let policy = (self.config.hook_timeout_ms, self.config.hook_on_error);
            self.call_hook(conn, Hooked::Send { to, body, key, id }, policy);
        } else {
            self.to_engine(EngineMsg::Direct {
                reply: reply_to(conn, &id),
                to,
                from: conn.user.clone(),
                body,
                key,
            });
        }
    }

    /// A `join`: its hook first when the rule runs one and the connection is not in the room
    /// yet (and may join it: a refusal by rights does not reach the backend).
    pub(super) fn join_or_hook(
        &mut self,
        conn: &Rc<Conn>,
        room: Name,
        since: (Option<u64>, Option<u64>),
        id: Option<ReqId>,
    ) -> Result<(), ReplyError> {
        let policy = self.room_hook(&room, RoomHook::Join);
        let joined = || conn.rooms.borrow().iter().any(|e| e.room == room);
        match policy {
            Some(policy) if !joined() => {
                self.may(conn, &room, crate::core::rights::Rights::JOIN)?;
                self.call_hook(conn, Hooked::Join { room, since, id }, policy);
                Ok(())
            }
            _ => self.join(conn, room, since, id),
        }
    }

    /// Sends the hook's request and holds the connection's next frames until it answers.
    fn call_hook(
        &mut self,
        conn: &Rc<Conn>,
        pending: Hooked,
        (timeout_ms, on_error): (u64, HookOnError),
    ) {
        let Some(h) = self.hooks.as_mut() else {
            return;
        };
        h.next_ticket += 1;
        let ticket = h.next_ticket;
        let answers = h.answers.clone();
        let body = request(&conn.user, &pending);
        let conn_id = conn.id;
        // No task per call: the client hands the answer to this callback on this thread, and
        // it joins the others in `answers`' batch.
        h.hooks.call(
            pending.event(),
            &body,
            Duration::from_millis(timeout_ms),
            move |result| {
                let _ = answers.send(HookDone {
                    conn: conn_id,
                    ticket,
                    result,
                });
            },
        );
        self.hook_queues.insert(
            conn.id,
            HookQueue {
                ticket,
                pending,
                on_error,
                waiting: VecDeque::new(),
            },
        );
    }

    /// A hook has answered: its request goes on or is refused, then the frames that waited
    /// behind it are handled in order, until one of them waits for a hook in turn.
    pub fn hook_done(&mut self, done: HookDone) {
        if self
            .hook_queues
            .get(&done.conn)
            .is_none_or(|q| q.ticket != done.ticket)
        {
            return;
        }
        let q = self.hook_queues.remove(&done.conn).expect("just found");
        let Some(conn) = self.conns.get(&done.conn).cloned() else {
            return;
        };
        if conn.closing().is_some() {
            return;
        }
        self.finish(&conn, q.pending, q.on_error, done.result);
        let mut waiting = q.waiting;
        while let Some(text) = waiting.pop_front() {
            self.on_text(&conn, &text);
            if let Some(next) = self.hook_queues.get_mut(&conn.id) {
                next.waiting = waiting;
                break;
            }
        }
        self.mark_dirty(&conn);
    }

    fn finish(
        &mut self,
        conn: &Rc<Conn>,
        pending: Hooked,
        on_error: HookOnError,
        result: Result<Answer, HookError>,
    ) {
        let event = pending.event().as_str();
        let failed = |e: HookError| match on_error {
            HookOnError::Allow => Ok(None),
            HookOnError::Deny => Err(ReplyError::new(
                ErrorCode::Unavailable,
                format!("{e}, so this {event} was refused; try again later"),
            )),
        };
        let verdict = match result {
            Ok(a) if a.allow => match a.body {
                Some(body) if matches!(pending, Hooked::Join { .. }) => {
                    drop(body);
                    Ok(None)
                }
                Some(body) => match self.check_body(body.get()) {
                    Ok(()) => Ok(Some(Bytes::copy_from_slice(body.get().as_bytes()))),
                    Err(why) => failed(HookError::BadAnswer(why)),
                },
                None => Ok(None),
            },
            Ok(a) => Err(ReplyError::new(
                ErrorCode::Forbidden,
                a.message
                    .unwrap_or_else(|| format!("the {event} hook refused this {event}")),
            )),
            Err(e) => failed(e),
        };
        let new_body = match verdict {
            Ok(b) => b,
            Err(err) => return self.reply_error(conn, pending.id(), err),
        };
        match pending {
            Hooked::Publish {
                room,
                body,
                key,
                id,
            } => self.to_engine(EngineMsg::Publish {
                reply: reply_to(conn, &id),
                room,
                from: conn.user.clone(),
                body: new_body.unwrap_or(body),
                key,
            }),
            Hooked::Send { to, body, key, id } => self.to_engine(EngineMsg::Direct {
                reply: reply_to(conn, &id),
                to,
                from: conn.user.clone(),
                body: new_body.unwrap_or(body),
                key,
            }),
            Hooked::Join { room, since, id } => {
                if let Err(e) = self.join(conn, room, since, id.clone()) {
                    self.reply_error(conn, id.as_ref(), e);
                }
            }
        }
    }

    /// A body a hook gave: within the limits a client's must keep.
    fn check_body(&self, body: &str) -> Result<(), String> {
        let max = self.config.max_message_size;
        if body.len() > max {
            return Err(format!("its body is over max_message_size ({max} bytes)"));
        }
        protocol::check_body_depth(body, self.config.max_body_depth)
            .map_err(|e| e.message.into_owned())
    }
}

/// The hook's JSON: `{"event":..,"user":..,"room"|"to":..,"body":..,"key":..}`. Names need no
/// escaping (their alphabet); the body is spliced in as the client sent it.
fn request(user: &Name, pending: &Hooked) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(br#"{"event":""#);
    out.extend_from_slice(pending.event().as_str().as_bytes());
    out.extend_from_slice(br#"","user":""#);
    out.extend_from_slice(user.as_str().as_bytes());
    let (field, name, body, key) = match pending {
        Hooked::Publish {
            room, body, key, ..
        } => ("room", room, Some(body), key.as_ref()),
        Hooked::Send { to, body, key, .. } => ("to", to, Some(body), key.as_ref()),
        Hooked::Join { room, .. } => ("room", room, None, None),
    };
    out.extend_from_slice(br#"",""#);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(br#"":""#);
    out.extend_from_slice(name.as_str().as_bytes());
    out.push(b'"');
    if let Some(body) = body {
        out.extend_from_slice(br#","body":"#);
        out.extend_from_slice(body);
    }
    if let Some(key) = key {
        out.extend_from_slice(br#","key":"#);
        push_str(&mut out, key.as_str());
    }
    out.push(b'}');
    out
}

/// The task that hands a shard's hook answers to it, in batches.
pub async fn answers(ctx: Rc<Ctx>, mut rx: mpsc::UnboundedReceiver<HookDone>) {
    while let Some(done) = rx.recv().await {
        ctx.with(|s| {
            s.hook_done(done);
            while let Ok(more) = rx.try_recv() {
                s.hook_done(more);
            }
        });
        ctx.schedule_flush();
    }
}
