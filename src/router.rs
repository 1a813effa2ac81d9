//! The inter-shard router: which shard is home to a room or a user, and the queues between shards.
//!
//! Owns the placement hash and the crossbeam queues with their wake-ups. It must not hold any
//! room, user or connection state (the shards do), nor decide what a message means (`msg`
//! says what they are). A cluster engine replaces the placement of engine requests; nothing
//! outside this module knows how a message travels between shards.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::Notify;

use crate::msg::ShardMsg;

use crate::core::Name;
use crate::core::{NodeId, ShardId};

struct Queue {
    tx: Sender<ShardMsg>,
    wake: Arc<Notify>,
}

/// A shard's receiving end: drain `rx`, then wait on `wake`.
pub struct Inbox {
    pub rx: Receiver<ShardMsg>,
    pub wake: Arc<Notify>,
}

/// Placement and transport between shards. Cheap to clone; every shard holds one.
#[derive(Clone)]
pub struct Router {
    node: NodeId,
    queues: Arc<[Queue]>,
    hasher: ahash::RandomState,
}

impl Router {
    /// A router for `n` shards and each shard's inbox, in shard order, on node 0.
    pub fn new(n: usize) -> (Router, Vec<Inbox>) {
        Router::on_node(0, n)
    }

    /// A router for `n` shards of node `node` (cluster mode).
    pub fn on_node(node: NodeId, n: usize) -> (Router, Vec<Inbox>) {
        let (queues, inboxes) = (0..n)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded();
                let wake = Arc::new(Notify::new());
                (
                    Queue {
                        tx,
                        wake: wake.clone(),
                    },
                    Inbox { rx, wake },
                )
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        // Fixed seeds: every shard must compute the same home for a name.
        let hasher = ahash::RandomState::with_seeds(
            0x5348_4152_4443_4153,
            0x7368_6172_6463_6173,
            0x9e37_79b9_7f4a_7c15,
            0xbf58_476d_1ce4_e5b9,
        );
        (
            Router {
                node,
                queues: queues.into(),
                hasher,
            },
            inboxes,
        )
    }

    /// This process's node id (0 on a single node).
    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    /// The shard that sequences `name`'s messages (a room) or inbox and sessions (a user).
    pub fn home(&self, name: &Name) -> ShardId {
        (self.hasher.hash_one(name.as_str()) % self.queues.len() as u64) as ShardId
    }

    /// Queues `msg` for shard `to`. A shard that has stopped drops it.
    pub fn send(&self, to: ShardId, msg: impl Into<ShardMsg>) {
        let q = &self.queues[to];
        if q.tx.send(msg.into()).is_ok() {
            q.wake.notify_one();
        }
    }

    pub fn broadcast<M: Into<ShardMsg>>(&self, msg: impl Fn() -> M) {
        for to in 0..self.queues.len() {
            self.send(to, msg());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_are_stable_and_spread() {
        let (a, _ia) = Router::new(4);
        let (b, _ib) = Router::new(4);
        let mut seen = [0usize; 4];
        for i in 0..400 {
            let name = Name::new(&format!("room-{i}")).unwrap();
            assert_eq!(a.home(&name), b.home(&name));
            seen[a.home(&name)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
