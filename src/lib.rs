//! shardcast: a real-time messaging server. Clients speak JSON over WebSocket (see
//! docs/protocol.md); connections are spread over per-core shards that share nothing and talk
//! only through the router.
//!
//! The module map (ARCHITECTURE.md has the long form):
//! - `server`: binds and runs one thread per shard; shutdown.
//! - `shard`: a shard's state (`Shard`) in three roles: the client side (`shard::client`), the
//!   hub (`shard::hub`: local fan-out and catch-up) and the embedded engine (`shard::engine`,
//!   `shard::home`); and its thread, inbox loop and connection tasks (`shard::runtime`).
//! - `msg`: what shards say to each other (`EngineMsg`, `NodeMsg`, `LocalMsg`) and the
//!   addresses in it (`ConnId`, `ReplyTo`).
//! - `router`: the placement hash (which shard is home to a room or user) and the queues
//!   between shards.
//! - `http`: routing and the WebSocket handshake, up to handing over the raw stream;
//!   `first_frame`: the handshake's end for connections that authenticate with a `connect` frame.
//! - `api`: the HTTP server API under `/api/` for backends.
//! - `echo`: the dev-mode `/echo` endpoint, for conformance suites against the frame layer.
//! - `accept`: the acceptor's back-off on accept errors (out of file descriptors).
//! - `conn`: one connection's bytes: the bounded outbound queue and the frame decoder.
//! - `ws`: the WebSocket wire format. `protocol`: the JSON protocol (parse, encode once).
//! - `auth`: JWT and dev-mode identities (`auth::jwks`: the key set fetched over HTTP). `origin`:
//!   which browser origins may upgrade. `config`: every limit. `error`: every code.
//! - `store`: durable history behind the `Store` trait (fjall on disk, or memory).
//! - `persist`: the store threads (group commit, replays and history reads, retention) between
//!   the shards and the `Store`.
//! - `cli`: what the operator subcommands print (the default and the effective config file) and
//!   the token lifetimes they parse; `main.rs` wires them to the command line.
//! - `metrics`: what shards and the writer count, gathered per scrape (`/metrics`, `/api/stats`).
//!   `health`: the readiness flags behind `/readyz`.
//! - `web`: the embedded chat and operator pages and the JavaScript client library.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod core;
pub mod deflate;
pub mod echo;
pub mod embedded;
pub mod engine;
pub mod first_frame;
pub mod http;
pub mod metrics;
pub mod msg;
pub mod origin;
pub mod persist;
pub mod protocol;
pub mod router;
pub mod routes;
pub mod server;
pub mod shard;
pub mod store;
pub mod web;
pub mod ws;
