//! A shard: one thread's share of the server. It holds its connections and their local
//! membership, and reaches the engine through the seam (`engine::Engine`), whichever engine
//! that is.
//!
//! - **client side**: `client.rs` (connections from handshake to close, and the replies they
//!   get), `requests.rs` (each request checked and turned into an `EngineMsg`; joins and leaves),
//!   `events.rs` (edits, deletes and reactions), `limits.rs` (the request and read rates) and `budget.rs` (each user's budget for stored
//!   bytes on this shard).
//! - **hub**: `hub/` (this shard's local membership of rooms and users and the fan-out of each
//!   frame to it; `hub/replay.rs`: replays and gap fills merged by seq with the live frames) and
//!   `merge.rs` (a stream's position and a connection's catch-up).
//! - `runtime.rs`: the context a shard thread's tasks share (`Ctx`) and each connection's task.
//!
//! The client side and the hub are two halves of one state on one thread; they call each other
//! directly. Both reach the engine only with `EngineMsg`s (`to_engine`) and hear from it only
//! through `NodeMsg`s (`on_node`). This file holds the state and the dispatcher (`handle`), plus
//! the output shared by the roles (queueing frames, the batch flush). Everything here is
//! single-threaded: shards never share mutable state. It must not parse bytes (that is `conn`
//! and `protocol`), do HTTP (that is `http`) or know which engine runs.

mod budget;
mod chat;
mod client;
mod events;
mod hooked;
mod hub;
mod limits;
mod merge;
mod policy;
mod requests;
pub mod runtime;
pub use hooked::{HookDone, answers as hook_answers};
#[cfg(test)]
mod tests;

use std::rc::Rc;
use std::sync::Arc;

use ahash::AHashMap;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::conn::{Conn, OutFrame};
use crate::core::ReqId;
use crate::core::counters::{ShardCounters, ShardSnapshot};
use crate::core::error::{CloseCode, HandshakeError, ReplyError};
use crate::core::now_ms;
use crate::core::{ConnId, JoinGen, ShardId};
use crate::engine::{Engine, Outbox};
use crate::msg::{EngineMsg, LocalMsg, NodeMsg, ReplayTo, ShardMsg};
use crate::router::Router;
use crate::ws;

pub struct Shard {
    id: ShardId,
    router: Router,
    config: Arc<Config>,
    /// The engine: the embedded engine's homes on this shard, or the Redis engine's handle.
    engine: Box<dyn Engine>,
    /// The engine's answers for this shard, handled in order after each call (`drain`).
    outbox: Outbox,
    /// A `drain` is running further up the stack: new answers wait for it.
    draining: bool,
    // ----- client -----
    next_conn: u64,
    conns: AHashMap<ConnId, Rc<Conn>>,
    /// Handshakes admitted or waiting to be, not yet upgraded.
    pending: AHashMap<ConnId, client::Pending>,
    /// Joins sent to the engine and not yet answered, by generation.
    joins: AHashMap<JoinGen, requests::PendingJoin>,
    next_gen: JoinGen,
    /// API calls taken on this shard, waiting for their `NodeMsg::Reply`.
    api_calls: AHashMap<u64, oneshot::Sender<Result<Bytes, ReplyError>>>,
    next_call: u64,
    /// Each user's budget for stored bytes on this shard.
    budgets: budget::StoreBudgets,
    /// This shard's copy of its users' read positions.
    reads: chat::ReadCache,
    // ----- hub -----
    hub: hub::Hub,
    // ----- output ---------------------------------------------------------------------------
    /// Connections with frames queued in this batch; each gets one flush at the end.
    dirty: Vec<Rc<Conn>>,
    ping: OutFrame,
    shutting_down: bool,
    /// Metrics: plain counters, read only by a scrape (`LocalMsg::Stats`).
    stats: ShardCounters,
    /// Checks `refresh` tokens.
    auth: Authenticator,
    // ----- hooks ------------------------------------------------------------------------------
    /// The hook client, if `hook_url` is set.
    hooks: Option<hooked::ShardHooks>,
    /// Connections with a request waiting for its hook, and what they sent behind it.
    hook_queues: AHashMap<ConnId, hooked::HookQueue>,
    /// The presence info of connections whose connect hook gave one (`Identity::info`), sent
    /// with each of their joins. Here, not in `Conn`: most connections have none, and every
    /// byte of a `Conn` is paid by every idle connection.
    presence_info: AHashMap<ConnId, Bytes>,
}

impl Shard {
    /// Shard `id`, reaching `engine`.
    pub fn new(
        id: ShardId,
        router: Router,
        config: Arc<Config>,
        engine: Box<dyn Engine>,
        auth: Authenticator,
    ) -> Shard {
        Shard {
            id,
            router,
            config,
            engine,
            outbox: Outbox::default(),
            draining: false,
            next_conn: 0,
            conns: AHashMap::new(),
            pending: AHashMap::new(),
            joins: AHashMap::new(),
            next_gen: 0,
            api_calls: AHashMap::new(),
            next_call: 0,
            budgets: budget::StoreBudgets::default(),
            reads: chat::ReadCache::default(),
            hub: hub::Hub::default(),
            dirty: Vec::new(),
            ping: Rc::new(ws::control_frame(ws::OP_PING, b"")),
            shutting_down: false,
            stats: ShardCounters::default(),
            auth,
            hooks: None,
            hook_queues: AHashMap::new(),
            presence_info: AHashMap::new(),
        }
    }

    /// Applies one message from a shard (possibly this one) or the store writer.
    pub fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Engine(m) => {
                self.engine.serve(m, &mut self.outbox);
                self.drain();
            }
            ShardMsg::Node(m) => self.on_node(m),
            ShardMsg::Local(m) => self.on_local(m),
        }
    }

    fn on_node(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::Admitted { conn, verdict } => self.admitted(conn, verdict),
            NodeMsg::CloseUser { user, except, code } => self.close_user(&user, except, code),
            NodeMsg::Reply { to, result, read } => self.reply(to, result, read),
            NodeMsg::Lost { stream } => self.stream_lost(&stream),
            NodeMsg::JoinDone {
                room,
                conn,
                jgen,
                seq,
                ack,
                replay,
            } => self.join_done(room, conn, jgen, seq, ack, replay),
            NodeMsg::JoinFailed {
                room,
                conn,
                jgen,
                error,
            } => self.join_failed(room, conn, jgen, error),
            NodeMsg::Replay(r) => {
                if let ReplayTo::Conn { conn, .. } = r.to {
                    // Join replays, the inbox at connect, and their gaps: O(frames) to count.
                    self.charge_reads(conn, ws::count_frames(&r.frames));
                }
                self.replayed(r)
            }
            NodeMsg::Deliver {
                stream,
                seq,
                frame,
                exclude,
                own,
            } => self.deliver(stream, seq, frame, exclude, own),
            NodeMsg::Batch(msgs) => msgs.into_iter().for_each(|m| self.on_node(m)),
            NodeMsg::Signal {
                room,
                frame,
                exclude,
            } => self.deliver_signal(&room, frame, exclude),
            NodeMsg::Reads { user, reads } => self.reads_known(user, reads),
            NodeMsg::ReadMoved {
                user,
                stream,
                seq,
                exclude,
            } => self.read_moved(user, stream, seq, exclude),
        }
    }

    fn on_local(&mut self, msg: LocalMsg) {
        match msg {
            LocalMsg::Accept(_) => unreachable!("accepts are handled by the runtime"),
            LocalMsg::Stored { writes, ok } => {
                self.engine.stored(writes, ok, &mut self.outbox);
                self.drain();
            }
            LocalMsg::Broadcast { frame, reply } => {
                let _ = reply.send(self.broadcast(frame));
            }
            LocalMsg::Kick {
                user,
                reason,
                reply,
            } => {
                let _ = reply.send(self.kick(&user, reason.as_deref()));
            }
            LocalMsg::Shutdown => self.shutdown(),
            LocalMsg::Rooms { reply } => {
                let _ = reply.send(self.engine.rooms());
            }
            LocalMsg::Stats { reply } => {
                let _ = reply.send(self.snapshot());
            }
            #[cfg(any(test, feature = "fault-injection"))]
            LocalMsg::Panic => self.engine.panic_midway(),
        }
    }

    /// Sends to another shard, or handles in place when the target is this shard, so this
    /// shard's own messages to itself are applied in the order they are sent.
    fn send(&mut self, to: ShardId, msg: impl Into<ShardMsg>) {
        if to == self.id {
            self.handle(msg.into());
        } else {
            self.router.send(to, msg);
        }
    }

    /// Hands a request to the engine, then handles its answers for this shard.
    pub fn to_engine(&mut self, msg: EngineMsg) {
        self.engine.request(msg, &mut self.outbox);
        self.drain();
    }

    /// Handles the engine's answers for this shard, in the order it gave them. A drain already
    /// running further up the stack takes the new ones in turn, so answers are handled in the
    /// order they were given, as over a queue from another shard.
    fn drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        while let Some(msg) = self.outbox.pop() {
            self.on_node(msg);
        }
        self.draining = false;
    }

    /// Every `read_interval_ms`: the engine's coalesced read positions and receipts.
    pub fn reads_tick(&mut self) {
        self.engine.reads_tick(&mut self.outbox);
        self.drain();
    }

    /// Every `occupancy_interval_ms`: the engine's coalesced events (`occupancy`).
    pub fn engine_tick(&mut self) {
        self.engine.tick(&mut self.outbox);
        self.drain();
    }

    /// The engine, for the API's node-wide calls and a scrape's Redis figures.
    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    /// Sends `make()` to every shard, this one included.
    pub fn send_all(&mut self, mut make: impl FnMut() -> LocalMsg) {
        for shard in 0..self.router.shards() {
            self.send(shard, make());
        }
    }

    /// This shard's counters, and its gauges read now (O(connections): scrapes only).
    fn snapshot(&self) -> ShardSnapshot {
        let mut snapshot = ShardSnapshot {
            shard: self.id,
            connections: self.conns.len() as u64,
            rooms_local: self.hub.rooms_in_use() as u64,
            queued_bytes: self.conns.values().map(|c| c.queued_bytes() as u64).sum(),
            counters: self.stats.clone(),
            ..ShardSnapshot::default()
        };
        self.engine.snapshot(&mut snapshot);
        snapshot
    }

    /// A panic was caught while this shard's state was borrowed. A drain it interrupted is
    /// over; what it left in the outbox is handled with the next answers.
    pub(crate) fn count_panic(&mut self) {
        self.stats.panics += 1;
        self.draining = false;
    }

    // ----- output -----------------------------------------------------------------------------

    /// Queues a frame for one connection; a connection over `max_queue_bytes` is closed.
    fn enqueue(&mut self, conn: &Rc<Conn>, frame: &OutFrame) {
        let max = self.config.max_queue_bytes;
        if !queue_frame(&mut self.dirty, &mut self.stats, conn, frame, max) {
            self.close_conn(conn, CloseCode::SlowConsumer);
        }
    }

    fn mark_dirty(&mut self, conn: &Rc<Conn>) {
        mark_dirty(&mut self.dirty, conn);
    }

    /// The end of a scheduler pass for the engine: what it queued for the store threads
    /// leaves together.
    pub fn flush_engine(&mut self) {
        self.engine.flush();
    }

    /// Writes every connection touched since the last flush: one writev each. A connection
    /// leaves the list only once written, so a panic in a write leaves it and the rest listed
    /// (and marked) for the next flush, instead of marked and never flushed again. Then holds
    /// what is still unsent to this shard's share of `max_total_queue_bytes`.
    pub fn flush_dirty(&mut self) {
        while let Some(conn) = self.dirty.last() {
            conn.flush();
            conn.dirty.set(false);
            self.dirty.pop();
        }
        let share = self.queue_share();
        if share > 0 && crate::conn::thread_queued_bytes() > share {
            self.shed(share);
        }
    }

    /// This shard's equal share of `max_total_queue_bytes` (0: no bound).
    fn queue_share(&self) -> usize {
        self.config.max_total_queue_bytes / self.router.shards()
    }

    /// Over the share: closes the connections with the largest queues first, as slow
    /// consumers, until the shard is back under 90% of it. O(connections), only when over.
    fn shed(&mut self, share: usize) {
        let mut by_size: Vec<_> = (self.conns.values())
            .filter(|c| c.closing().is_none() && c.queued_bytes() > 0)
            .cloned()
            .collect();
        by_size.sort_unstable_by_key(|c| std::cmp::Reverse(c.queued_bytes()));
        let target = share / 10 * 9;
        let mut closed = 0;
        for c in by_size {
            if crate::conn::thread_queued_bytes() <= target {
                break;
            }
            let reason = "slow consumer: the server's unsent bytes are over their bound";
            self.close_conn_with(&c, CloseCode::SlowConsumer, Some(reason));
            closed += 1;
        }
        tracing::warn!(
            shard = self.id,
            closed,
            "over this shard's share of max_total_queue_bytes: closed the largest queues"
        );
        // Their close frames leave with the next flush.
    }

    /// The heartbeat: pings every connection, and closes the idle and the expired.
    pub fn tick(&mut self) {
        let idle_limit = self.config.idle_heartbeats();
        let now_s = now_ms() / 1000;
        let grace = self.config.token_grace_secs;
        let all: Vec<_> = self.conns.values().cloned().collect();
        for c in all {
            if c.active.replace(false) {
                c.missed.set(0);
            } else {
                c.missed.set(c.missed.get() + 1);
            }
            if c.missed.get() >= idle_limit {
                self.close_conn(&c, CloseCode::Policy);
            } else if c.expired(now_s, grace) {
                self.close_conn(&c, CloseCode::TokenExpired);
            } else {
                let ping = self.ping.clone();
                self.enqueue(&c, &ping);
            }
        }
        self.sweep_budgets();
    }
}

/// Queues `frame` for `conn` and marks it for the end-of-batch flush. Returns `false` for a slow
/// consumer: over `max` unsent bytes even after trying to write them now.
fn queue_frame(
    dirty: &mut Vec<Rc<Conn>>,
    stats: &mut ShardCounters,
    conn: &Rc<Conn>,
    frame: &OutFrame,
    max: usize,
) -> bool {
    if conn.closing().is_some() {
        return true;
    }
    stats.frames_out += 1;
    if conn.push(frame.clone()) > max {
        conn.flush();
        if conn.queued_bytes() > max {
            return false;
        }
    }
    mark_dirty(dirty, conn);
    true
}

fn mark_dirty(dirty: &mut Vec<Rc<Conn>>, conn: &Rc<Conn>) {
    if !conn.dirty.replace(true) {
        dirty.push(conn.clone());
    }
}

fn reply_to(conn: &Conn, id: &Option<ReqId>) -> crate::msg::ReplyTo {
    crate::msg::ReplyTo::Conn {
        conn: conn.id,
        id: id.clone(),
    }
}

/// A handshake's verdict, as the handshake waits for it.
pub type Verdict = Result<u64, HandshakeError>;

/// Removes connection `id` from `list`, and says whether the list is now empty.
fn remove_conn(list: &mut Vec<Rc<Conn>>, id: ConnId) -> bool {
    if let Some(i) = list.iter().position(|c| c.id == id) {
        list.swap_remove(i);
    }
    list.is_empty()
}
