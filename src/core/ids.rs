//! The ids that name things across shards and nodes, and their limits.
//!
//! Plain values with no state; every layer above may use them.

pub type ShardId = usize;
/// A node of a deployment; a single-node server is node 0.
pub type NodeId = u16;

/// A connection's id, unique in a deployment: its node (14 bits), its shard (10 bits) and a
/// counter local to the shard (40 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub const MAX_NODES: usize = 1 << 14;
    pub const MAX_SHARDS: usize = 1 << 10;

    pub fn new(node: NodeId, shard: ShardId, local: u64) -> ConnId {
        debug_assert!((node as usize) < Self::MAX_NODES && shard < Self::MAX_SHARDS);
        ConnId(((node as u64) << 50) | ((shard as u64 & 0x3ff) << 40) | (local & ((1 << 40) - 1)))
    }
    /// The id as one number (for Redis, where connections of every node meet).
    pub fn raw(self) -> u64 {
        self.0
    }
    pub fn from_raw(raw: u64) -> ConnId {
        ConnId(raw)
    }
    pub fn node(self) -> NodeId {
        (self.0 >> 50) as NodeId
    }
    pub fn shard(self) -> ShardId {
        ((self.0 >> 40) & 0x3ff) as ShardId
    }
}

/// A join's generation: each `join` a connection makes of a room gets a new one, so answers
/// for an earlier join of the same room (left since) are recognised and dropped.
pub type JoinGen = u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_carry_their_node_and_shard() {
        let id = ConnId::new(3, 7, 123_456);
        assert_eq!((id.node(), id.shard()), (3, 7));
        assert_ne!(ConnId::new(0, 1, 5), ConnId::new(0, 2, 5));
        assert_ne!(ConnId::new(1, 1, 5), ConnId::new(2, 1, 5));
        let top = ConnId::new(16_383, 1023, u64::MAX);
        assert_eq!((top.node(), top.shard()), (16_383, 1023));
    }
}
