//! The scenarios: what connections a run opens, who publishes what at which rate, and the
//! phases of a run (connect, warm-up, measured window, drain).
//!
//! Against a cluster, connection i goes to node i mod N, so a room's members sit on every node.
//!
//! The modules, bottom to top, in layers like the crate's (see `lib.rs`, and
//! `tests/layers.rs`, which checks both lists): a module imports only those on the lines above
//! its own, so no scenario imports another.
//! 1. `run`: what every run shares (`RunCtx`, cost `Samples`, time in ns, waiting for a frame).
//! 2. `pacer`: the thread that wakes open-loop senders on time.
//! 3. `plan`: the connections of a run (`Plan`); fanout, chat, dm and idle are nothing more.
//! 4. `catchup`, `membership`: what the engine's connections do besides receive and publish:
//!    the storm's drop, rejoin with `since` and catch-up; a member's join, leave and rejoin
//!    with `since` while connected (bigroom).
//! 5. `pubsub`: the engine for every scenario whose connections stay open.
//! 6. `storm`, `soak`, `churn`, `bigroom`, `joins`, `app`: the scenarios with code of their
//!    own: the storm's plan; the engine with churn cycles and a resource sampler beside it;
//!    churn's own loop; the engine through a big room's phases, as one process or several; the
//!    engine's connections joining rooms of a given size at a given rate; chat's plan run on
//!    the whole Rust client (`--client full`).
//!
//! This module only declares them; it must not parse frames (`client`) or judge delivery
//! (`stats`).

pub mod app;
pub mod bigroom;
pub mod catchup;
pub mod churn;
pub mod joins;
pub mod membership;
pub mod pacer;
pub mod plan;
pub mod pubsub;
pub mod run;
pub mod soak;
pub mod storm;
