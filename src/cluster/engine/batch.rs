//! What the engine hands the shards while it takes one read's worth of pub/sub messages:
//! kept per shard and sent as one `NodeMsg::Batch` (one queue send, one wake-up per shard)
//! when the read is done, instead of one per message.
//!
//! Owns only the per-shard buffers; it must not decide what a message means. While a batch is
//! open every message the engine sends to a shard goes through it, so each shard still sees
//! them in the order they were sent.

use super::*;

/// The open batch: per shard, the messages not yet sent.
#[derive(Default)]
pub(super) struct Batch {
    open: bool,
    shards: Vec<Vec<NodeMsg>>,
}

impl Node {
    /// Opens a batch: sends to shards are kept until `end_batch`.
    pub(super) fn begin_batch(&self) {
        self.batch.borrow_mut().open = true;
    }

    /// Sends what the batch kept: one message per shard (a `Batch` when it holds several).
    pub(super) fn end_batch(&self) {
        let mut b = self.batch.borrow_mut();
        b.open = false;
        for (shard, msgs) in b.shards.iter_mut().enumerate() {
            Self::send_kept(&self.router, shard, msgs);
        }
    }

    /// Sends `msg` to `shard`, or keeps it in the open batch. A message that is not a
    /// `NodeMsg` (a broadcast, a kick) goes at once, after what the batch kept for the shard.
    pub(super) fn send(&self, shard: ShardId, msg: impl Into<crate::msg::ShardMsg>) {
        let msg = msg.into();
        let mut b = self.batch.borrow_mut();
        if !b.open {
            drop(b);
            return self.router.send(shard, msg);
        }
        match msg {
            crate::msg::ShardMsg::Node(m) => {
                if b.shards.len() <= shard {
                    b.shards.resize_with(shard + 1, Vec::new);
                }
                b.shards[shard].push(m);
            }
            other => {
                if let Some(kept) = b.shards.get_mut(shard) {
                    Self::send_kept(&self.router, shard, kept);
                }
                self.router.send(shard, other);
            }
        }
    }

    fn send_kept(router: &Router, shard: ShardId, kept: &mut Vec<NodeMsg>) {
        match kept.len() {
            0 => {}
            1 => router.send(shard, kept.pop().expect("one message")),
            _ => router.send(shard, NodeMsg::Batch(std::mem::take(kept))),
        }
    }
}
