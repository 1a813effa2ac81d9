//! The engine seam: how a shard reaches the engine that sequences, stores and counts, whichever
//! engine it is. The embedded engine (`embedded`: each stream's home shard, with the store
//! threads behind it) and the Redis engine (`cluster`) both implement `Engine`; a shard holds a
//! `Box<dyn Engine>` and never asks which one it has, and neither engine knows the other.
//!
//! Requests go in as `EngineMsg`s and answers come back as `NodeMsg`s (`msg`). An answer for the
//! asking shard itself goes into its `Outbox`, which the shard drains in order right after the
//! call; an answer for another shard leaves through the router. What both engines do alike lives
//! here once (`common`): the join answer, the shards a frame goes to, reads handed to the store
//! threads. It must not touch connections or the hub's state.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

pub use common::{Joined, StoreReads, shards_with};

use crate::core::Name;
use crate::core::counters::{RedisCounters, ShardSnapshot};
use crate::msg::{EngineMsg, NodeMsg, Written};

/// One shard's handle on the engine. Every call is made on the shard's thread, so an
/// implementation keeps per-shard state without locks; answers for this shard go into `out`.
pub trait Engine: Send {
    /// A request from this shard's client side or hub.
    fn request(&mut self, msg: EngineMsg, out: &mut Outbox);

    /// A request another shard's engine routed here (the embedded engine: this shard is the
    /// stream's home). The Redis engine routes none.
    fn serve(&mut self, msg: EngineMsg, out: &mut Outbox) {
        let _ = (msg, out);
        tracing::error!("an engine request was routed to a shard of an engine that routes none");
    }

    /// The store writer's answer for this shard's writes, in the order they were sent (the
    /// embedded engine under `sync` durability).
    fn stored(&mut self, writes: Vec<Written>, ok: bool, out: &mut Outbox) {
        let _ = (writes, ok, out);
    }

    /// The end of a scheduler pass: what was queued for the store threads leaves together (one
    /// wake-up of the writer per pass, not per message).
    fn flush(&mut self);

    /// Every `occupancy_interval_ms`: coalesced events that are due (a count room's
    /// `occupancy`).
    fn tick(&mut self, out: &mut Outbox) {
        let _ = out;
    }

    /// Every `read_interval_ms`: coalesced read positions to the store, and due receipts.
    fn reads_tick(&mut self, out: &mut Outbox) {
        let _ = out;
    }

    /// The server is shutting down: new connections are refused.
    fn shutdown(&mut self);

    /// Adds this engine's part of the shard's figures to a scrape (streams homed, messages
    /// sequenced, publish latency).
    fn snapshot(&self, into: &mut ShardSnapshot) {
        let _ = into;
    }

    /// The rooms with members this engine counts on this shard, each with its member count
    /// (`GET /api/rooms`): the embedded engine's homes here, so every room is on exactly one
    /// shard. The Redis engine answers for the whole node instead (`NodesCall::Rooms`).
    fn rooms(&self) -> Vec<(Name, u64)> {
        Vec::new()
    }

    /// Hands the API's node-wide call to the other nodes. `Err` gives it back when this node is
    /// alone (the embedded engine).
    fn call_nodes(&self, call: NodesCall) -> Result<(), NodesCall> {
        Err(call)
    }

    /// The Redis engine's counters, for a scrape.
    fn redis_counters(&self) -> Option<Arc<RedisCounters>> {
        None
    }

    /// Test-only: a panic halfway through the engine's bookkeeping.
    #[cfg(any(test, feature = "fault-injection"))]
    fn panic_midway(&mut self) {
        panic!("fault injection: a panic inside the engine");
    }
}

/// What the server API asks of every other node of a cluster.
pub enum NodesCall {
    /// Write `json` as a frame to every connection; answered with how many nodes got it.
    Broadcast {
        json: Bytes,
        reply: oneshot::Sender<Option<u64>>,
    },
    /// Close the user's connections with 4501; answered with how many nodes got it.
    Kick {
        user: Name,
        reason: String,
        reply: oneshot::Sender<Option<u64>>,
    },
    /// The cluster's totals for `/api/stats`, from every live node's latest figures.
    Totals {
        reply: oneshot::Sender<Option<serde_json::Value>>,
    },
    /// `/api/rooms` on a cluster node: the rooms with members on this node, each with its
    /// users across the cluster.
    Rooms {
        reply: oneshot::Sender<Option<Vec<(Name, u64)>>>,
    },
}

/// The engine's answers for the shard that called it, handled by that shard in order once the
/// call returns: the same order they would have over a queue to another shard.
#[derive(Default)]
pub struct Outbox(VecDeque<NodeMsg>);

impl Outbox {
    pub fn push(&mut self, msg: NodeMsg) {
        self.0.push_back(msg);
    }

    pub fn pop(&mut self) -> Option<NodeMsg> {
        self.0.pop_front()
    }
}
