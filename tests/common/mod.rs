//! Shared helpers for the integration tests, one file per helper family. Each file's items are
//! re-exported here, so a test names any of them `common::NAME` (most `use common::*`).
//!
//! - `server.rs`: [`TestServer`], a real shardcast server on `127.0.0.1:0`, its `data` in a temp
//!   dir; [`fast`] and [`small_queue`], the config tweaks most tests start it with.
//! - `handshake.rs`: [`connect`] / [`Refusal`]: the handshake, and the HTTP response of a
//!   refused one; [`dev`] and [`retry_dev`] for dev mode.
//! - `client.rs`: [`Client`], a WebSocket client built on tokio-tungstenite (never the server's
//!   own code), with helpers that read one frame at a time and let the test assert on it.
//! - `assert.rs`: assertions on frames ([`assert_error`], [`assert_room_msg`]...), and
//!   [`eventually`].
//! - `numbered.rs`: runs of numbered messages ([`numbered`], [`publish_numbered`],
//!   [`assert_room_msgs`]...) and [`miss_messages`].
//! - `tokens.rs`: [`mint`]: HS256 tokens for JWT mode ([`token_for`] signs with [`SECRET`]);
//!   [`now_secs`] and [`now_millis`].
//! - `frames.rs`: [`client_frame`]: raw masked client frames, for the conformance and property
//!   tests; [`take_server_frame`]; [`RawWs`], a WebSocket opened by hand.
//! - `http.rs`: [`Http`], HTTP/1.1 on one kept-alive connection; [`readyz_becomes`],
//!   [`healthz_left_waiting`].
//! - `binary.rs`: [`BinaryServer`]: the `shardcast` binary as a child process.
//!
//! Named by path (`common::keys::...`), not re-exported: [`keys`]: RS256 / ES256 tokens and a
//! JWKS server; [`redis`]: real Redis servers and a Redis Cluster; [`cluster`]: shardcast nodes
//! on the redis engine (the cluster tests); [`feed`]: the event feed's webhook backend; [`proxy`]: a TCP proxy that refuses, freezes or cuts.
//!
//! Every test that uses [`TestServer`] must run on a multi-thread runtime
//! (`#[tokio::test(flavor = "multi_thread")]`): starting and stopping the server blocks, and is
//! done inside `block_in_place`.
// Each test binary compiles all of `common` and uses a part of it.
#![allow(dead_code)]

pub mod chat;
pub mod cluster;
pub mod feed;
pub mod hook_backend;
pub mod keys;
pub mod proxy;
pub mod redis;

// Private: a test sees the helpers' names, as before the split, not these files' names.
mod assert;
mod binary;
mod client;
mod frames;
mod handshake;
mod http;
mod numbered;
mod server;
mod tokens;

// A test binary that uses no helper of a family would warn of an unused import.
#[allow(unused_imports)]
pub use self::{
    assert::*, binary::*, client::*, frames::*, handshake::*, http::*, numbered::*, server::*,
    tokens::*,
};

use std::time::Duration;

/// How long a test waits for a frame it expects before failing.
pub const TIMEOUT: Duration = Duration::from_secs(5);
