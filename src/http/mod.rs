//! HTTP on a shard, below the routes: responses and JSON errors, the socket while hyper serves
//! it with the shard's handshake and keep-alive tallies, and the WebSocket upgrade with its
//! admission. The routes (`routes`) and the endpoints (`api`, `echo`, `first_frame`, `metrics`)
//! sit above it.
//!
//! Owns everything before a connection is a WebSocket. It must not touch connection I/O after
//! the upgrade: the raw TCP stream is handed to `conn` and the shard runtime.
//!
//! Its files, bottom to top (each uses only those above it in this list):
//! 1. `response`: the JSON answers and errors.
//! 2. `io`: `HandshakeIo` and the handshake and keep-alive tallies.
//! 3. `upgrade`: admission, the 101, and the hand-over to the shard.

mod io;
mod response;
mod upgrade;

pub use io::{HandshakeIo, HttpSlot, handshakes_full, keepalive_full};
pub use response::{Body, error, json, json_error};
pub use upgrade::{Upgraded, admit, negotiate_deflate, negotiate_protocol, start, upgrade};
