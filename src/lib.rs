//! shardcast: a real-time messaging server. Clients speak JSON over WebSocket (see
//! docs/protocol.md); connections are spread over per-core shards that share nothing and talk
//! only through the router. ARCHITECTURE.md has the long form of this map.
//!
//! ## Layers
//!
//! The modules, bottom to top, one layer a line. A module imports only modules on the lines
//! above its own, never one on its own line or below (`tests/layers.rs` checks every `crate::`
//! and `super::` path against this list):
//! 1. `core`, `ws`, `web`, `outbound`: the shared types (ids, names, streams, the clock, every
//!    code, the counters, health, the /proc parser); the RFC 6455 wire format; the embedded
//!    pages; outbound HTTP endpoints (a URL taken apart, a plain or TLS connection to it).
//! 2. `config`, `protocol`, `deflate`: every limit; the JSON protocol (parse, encode once);
//!    permessage-deflate.
//! 3. `auth`, `origin`, `store`, `cli`, `msg`, `wire`: identities from tokens; browser origins;
//!    durable history behind the `Store` trait; what the operator subcommands print; what a
//!    shard's queue carries (`EngineMsg`, `NodeMsg`, `LocalMsg`); the binary protocol
//!    (proto/shardcast.proto), translated to and from the JSON one.
//! 4. `conn`, `router`, `hooks`: one connection's bytes; the placement hash and the queues
//!    between shards; the hook client (HTTP calls to the application's backend, from each
//!    shard's own runtime).
//! 5. `persist`: the store threads (group commit, reads, retention), shared by both engines.
//! 6. `engine`: the seam, `trait Engine`, and what both engines share.
//! 7. `embedded`, `cluster`: the two engines, siblings: each stream's home shard with the store
//!    threads; Redis.
//! 8. `shard`: a shard's connections and local membership (client side, hub, catch-up) and the
//!    tasks on its thread (`shard::runtime`).
//! 9. `http`: responses, the socket while hyper serves it, the WebSocket upgrade and admission.
//! 10. `metrics`: a scrape of every shard and the writer, and its two renderings.
//! 11. `api`, `echo`, `first_frame`: the server API; the dev-mode `/echo`; authentication by the
//!     first frame.
//! 12. `routes`: the routes of both listeners.
//! 13. `server`: start-up (the engine chosen here), the shard threads, the accept loops,
//!     shutdown.
//!
//! Public: what `main.rs`, the tests, the benches, the fuzz targets and the bot use (the server
//! and its config, the protocol's parse and encode, the decoder, the store engines, the
//! identities and a few types of `core`). The rest is private to the crate.

pub mod api;
pub mod auth;
pub mod cli;
mod cluster;
pub mod config;
pub mod conn;
pub mod core;
pub mod deflate;
mod echo;
pub mod embedded;
pub mod engine;
mod first_frame;
mod hooks;
mod http;
mod metrics;
mod msg;
mod origin;
mod outbound;
pub mod persist;
pub mod protocol;
pub mod router;
mod routes;
pub mod server;
pub mod shard;
pub mod store;
mod web;
pub mod wire;
pub mod ws;
