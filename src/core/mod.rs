//! The bottom layer: the small types every other module shares. It imports nothing else of the
//! crate, so any module may use it without tying the stack into a circle.
//!
//! - `ids`: `ConnId` (node, shard, counter), `NodeId`, `ShardId`, `JoinGen`, and their limits.
//! - `name`: `Name` (a validated room or user name) and `ReqId` (a request's `id`).
//! - `key`: `MsgKey`, a `publish` or `send` request's idempotency key.
//! - `stream`: `Stream`, the key of a room's history or a user's inbox.
//! - `clock`: `now_ms`. `bucket`: a connection's rate meter (the mechanism; the policy is the
//!   client side's).
//! - `event`: edits, deletes and reactions, and a changed message's folded state.
//! - `error`: every protocol error code, close code and handshake refusal (one table).
//! - `counters`: what shards, the store writer and the Redis engine count.
//! - `health`: the readiness flags behind `/readyz`.
//! - `rights`: what a token's `rooms` claim grants (`Rights`, `Grants`).
//! - `pace`: `Pacer`, at most one group commit or flush pass per interval, none delayed after a
//!   quiet spell.
//! - `procfs`: a process's CPU time and RSS from `/proc` (the server's metrics and the bot).

pub mod bucket;
pub mod clock;
pub mod counters;
pub mod error;
pub mod event;
pub mod health;
pub mod ids;
pub mod key;
pub mod name;
pub mod pace;
pub mod procfs;
pub mod rights;
pub mod stream;

pub use clock::now_ms;
pub use ids::{ConnId, JoinGen, NodeId, ShardId};
pub use key::MsgKey;
pub use name::{Name, ReqId};
pub use stream::Stream;
