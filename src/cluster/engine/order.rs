//! A sender's order: a connection's publishes to one room (its sends to one inbox) are stored in
//! the order it made them, through any retry or hold. Owns the lanes, one per (connection,
//! stream) with a request out; it must not touch the messages themselves (`messages`).
//!
//! - At most one script per lane is out at a time; later requests wait in the lane. Requests of
//!   other lanes go out at once (the multiplexer pipelines them), so a connection publishing
//!   within `publish_rate` waits for nothing.
//! - A request that fails (Redis down, or no answer in time) fails those waiting behind it, so
//!   none of them can be stored before it. A keyed one leaves its lane *broken*: the
//!   connection's later requests there are refused until it sends that key again, which keeps
//!   its place for a client that resends in order (the JS client's outbox does). Leaving the
//!   room or disconnecting clears it. An unkeyed request cannot be resent safely, so it breaks
//!   nothing.
//! - API calls have no connection and no lane.
//!
//! Cost: one hash lookup per request with a connection, and a lane (about 80 bytes) while a
//! request is out or the lane is broken.

use std::collections::VecDeque;

use super::*;

/// A publish or send on its way to the script.
pub(super) struct Pending {
    pub(super) stream: Stream,
    pub(super) from: Name,
    pub(super) body: Bytes,
    pub(super) key: Option<MsgKey>,
    pub(super) reply: ReplyTo,
}

#[derive(Default)]
pub(super) struct Lanes(AHashMap<(ConnId, Stream), Lane>);

#[derive(Default)]
struct Lane {
    busy: bool,
    waiting: VecDeque<Pending>,
    /// The key of a request that failed: refused until it is sent again.
    broken: Option<MsgKey>,
}

/// What a failed request's successors are answered.
fn held() -> ReplyError {
    ReplyError::new(
        ErrorCode::Unavailable,
        "an earlier publish or send of this connection to this room or user was not stored \
         (Redis failed); this one was not sent, so that your order holds: send them again in \
         order, the earlier first, with the same keys",
    )
}

fn broken(key: &MsgKey) -> ReplyError {
    ReplyError::new(
        ErrorCode::Unavailable,
        format!(
            "an earlier publish or send of this connection to this room or user (key {}) was \
             not stored (Redis failed); send it again first, with its key, so that your order \
             holds (or leave and join the room again)",
            key.as_str()
        ),
    )
}

impl Node {
    /// A publish or send: out at once if its lane is free, else behind the lane's earlier ones.
    pub(super) fn enqueue(self: &Rc<Self>, p: Pending) {
        let Some(conn) = p.reply.conn() else {
            let me = self.clone();
            self.spawn(async move {
                me.message(p).await;
            });
            return;
        };
        let mut lanes = self.lanes.borrow_mut();
        let lane = lanes.0.entry((conn, p.stream.clone())).or_default();
        if let Some(k) = &lane.broken {
            if p.key.as_ref() != Some(k) {
                let error = broken(k);
                drop(lanes);
                return self.answer(p.reply.fail(error));
            }
            lane.broken = None;
        }
        if lane.busy {
            lane.waiting.push_back(p);
            return;
        }
        lane.busy = true;
        drop(lanes);
        let me = self.clone();
        self.spawn(async move { me.drive(conn, p).await });
    }

    /// Runs a lane's requests one after the other until it is empty or one fails.
    async fn drive(self: Rc<Self>, conn: ConnId, mut p: Pending) {
        let at = (conn, p.stream.clone());
        loop {
            let key = p.key.clone();
            let ok = self.clone().message(p).await;
            let mut lanes = self.lanes.borrow_mut();
            let Some(lane) = lanes.0.get_mut(&at) else {
                return;
            };
            if !ok {
                let failed: Vec<Pending> = lane.waiting.drain(..).collect();
                lane.broken = key;
                lane.busy = false;
                if lane.broken.is_none() {
                    lanes.0.remove(&at);
                }
                drop(lanes);
                for f in failed {
                    self.answer(f.reply.fail(held()));
                }
                return;
            }
            match lane.waiting.pop_front() {
                Some(next) => p = next,
                None => {
                    lanes.0.remove(&at);
                    return;
                }
            }
        }
    }

    /// The connection left the stream (or is gone): its lanes there are no longer broken.
    pub(super) fn release(&self, conn: ConnId, stream: Option<&Stream>) {
        let mut lanes = self.lanes.borrow_mut();
        if lanes.0.is_empty() {
            return;
        }
        lanes.0.retain(|(c, s), lane| {
            if *c != conn || stream.is_some_and(|st| st != s) {
                return true;
            }
            lane.broken = None;
            lane.busy
        });
    }
}
