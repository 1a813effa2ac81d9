//! The scenarios: what connections a run opens, who publishes what at which rate, and the
//! phases of a run (connect, warm-up, measured window, drain).
//!
//! Against a cluster, connection i goes to node i mod N, so a room's members sit on every node.
//! The modules, bottom to top; each imports only modules above it in this list, so no scenario
//! imports another:
//! - `run`: what every run shares (`RunCtx`, cost `Samples`, time in ns, waiting for a frame).
//! - `pacer`: the thread that wakes open-loop senders on time.
//! - `plan`: the connections of a run (`Plan`); fanout, chat, dm and idle are nothing more.
//! - `catchup`: the storm's drop, rejoin with `since` and catch-up, which the engine runs.
//! - `pubsub`: the engine for every scenario whose connections stay open.
//! - the scenarios with code of their own: `storm` (its plan), `soak` (the engine with churn
//!   cycles and a resource sampler beside it) and `churn` (its own loop).
//!
//! This module only declares them; it must not parse frames (`client`) or judge delivery
//! (`stats`).

pub mod catchup;
pub mod churn;
pub mod pacer;
pub mod plan;
pub mod pubsub;
pub mod run;
pub mod soak;
pub mod storm;
