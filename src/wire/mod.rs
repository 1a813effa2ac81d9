//! The binary protocol (`Sec-WebSocket-Protocol: shardcast.proto`, proto/shardcast.proto): the
//! subprotocol negotiation, client frames decoded into the requests `protocol::fields` checks
//! (the JSON form's checks), and server frames turned into their binary form once per shard.
//!
//! Owns the mapping between the two forms and the body crossing rules (docs/protocol.md,
//! "Bodies across formats"). It must not read sockets or know rooms: `http` asks it to
//! negotiate, `conn` for the binary variant of what it queues, `shard` to decode a binary
//! client frame. The JSON form stays the one the engines sequence, store and encode; this
//! module only translates at the edge, so every frame kind exists once, in `protocol`, and
//! its checks once, in `protocol::fields`.
//!
//! `schema.rs` is prost's code for the schema, committed (scripts/gen-proto.sh regenerates
//! it), so a build needs no `protoc`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod schema;

mod chat;
mod client;
mod native;
mod server;

pub use client::{Decoded, decode, decode_by_prost};
pub use server::{to_binary, variant};

/// Protobuf wire types, for the frames `chat` reads and `native` writes by hand.
const VARINT: u32 = 0;
const LEN: u32 = 2;

/// The subprotocol of today's JSON frames, also what a client that names none gets.
pub const JSON: &str = "shardcast.json";
/// The subprotocol of binary frames: one `ClientFrame` or `ServerFrame` per message.
pub const PROTO: &str = "shardcast.proto";

/// Which form a connection's frames take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Proto,
}

/// The client's `Sec-WebSocket-Protocol` offers (every value of the header) against ours: the
/// first one we speak, in the client's order, with the name to answer (`None`: the client
/// named none, so none is answered and it speaks JSON). `Err` holds what was offered when
/// none is ours.
pub fn negotiate<'a>(
    headers: impl Iterator<Item = &'a str>,
) -> Result<(Format, Option<&'static str>), String> {
    let mut offered = Vec::new();
    for offer in headers.flat_map(|h| h.split(',')).map(str::trim) {
        match offer {
            "" => continue,
            JSON => return Ok((Format::Json, Some(JSON))),
            PROTO => return Ok((Format::Proto, Some(PROTO))),
            other => offered.push(other),
        }
    }
    if offered.is_empty() {
        Ok((Format::Json, None))
    } else {
        Err(offered.join(", "))
    }
}

/// A binary message that is not a `ClientFrame`: the connection is closed with 1007, as for a
/// text message that is not UTF-8 (the frame is well-formed, its data is not).
#[derive(Debug, thiserror::Error)]
#[error("not a shardcast.proto ClientFrame: {0}")]
pub struct DecodeError(#[from] prost::DecodeError);

#[cfg(test)]
mod tests;
