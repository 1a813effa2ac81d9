//! Home state: what a shard knows about the rooms and users that hash to it, across all shards.
//!
//! A room's home holds its sequence numbers and who is in it (per user, and per shard for
//! fan-out). A user's home holds the inbox sequence numbers, where the user's connections are
//! and which of them receive live, and applies the session policy. Pure bookkeeping: no I/O,
//! no connections.
//!
//! Each stream has two seqs: `assigned`, the last given to a message, and `committed`, the last
//! whose store write finished and which was delivered. They differ only while writes are in
//! flight (sync durability).

mod rooms;
mod users;

pub use rooms::HomeRooms;
pub use users::HomeUsers;

/// A stream's two seqs (see above).
#[derive(Clone, Copy, Default)]
struct Seqs {
    assigned: u64,
    committed: u64,
}
