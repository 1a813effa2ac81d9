//! Authentication by the first frame (`first_frame_auth`): after an upgrade without
//! credentials, the client's first WebSocket frame must be `{"type":"connect","token":..}`,
//! within `first_frame_timeout_ms`. Tokens then stay out of URLs, which proxies log.
//!
//! Owns reading that one frame from the raw stream and refusing with a close frame (4002, the
//! handshake refusal's code as the reason). It must not touch the connection after that: an
//! accepted one goes through the same admission and `http::start` as any other.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::error::HandshakeError;
use crate::http;
use crate::protocol::{self, ClientMessage};
use crate::shard::runtime::Ctx;
use crate::wire::{self, Format};
use crate::ws;

/// Reads the `connect` frame, authenticates and admits the connection, and runs it; or closes
/// the socket with 4002. The 101 is sent first: the client sends `connect` once it has it.
/// `slot` keeps the connection counted under `max_handshakes` until then.
/// `format` is the negotiated subprotocol's: under `shardcast.proto` the `connect` frame is a
/// binary `ClientFrame`.
pub(crate) async fn connect(
    ctx: Rc<Ctx>,
    up: http::Upgraded,
    slot: http::HttpSlot,
    format: Format,
) {
    let http::Upgraded {
        mut stream,
        early,
        head,
    } = up;
    let window = Duration::from_millis(ctx.config.first_frame_timeout_ms);
    let max = ctx.config.max_message_size;
    let admitted = async {
        stream
            .write_all(&head)
            .await
            .map_err(|_| HandshakeError::Unauthorized("the 101 could not be sent".into()))?;
        let (token, rest) =
            tokio::time::timeout(window, read_connect(&mut stream, &early, max, format))
                .await
                .map_err(|_| {
                    HandshakeError::Unauthorized(format!(
                        "no connect frame within {} ms",
                        window.as_millis()
                    ))
                })??;
        let mut identity = ctx
            .auth
            .verify_token(&token, ctx.config.max_rooms_per_connection)?;
        if let Some(h) = ctx.hooks.as_ref().filter(|_| ctx.config.hook_connect) {
            let headers = hyper::HeaderMap::new();
            identity =
                crate::hooks::connect(h, &ctx.config, Some(identity), None, &headers).await?;
        }
        let (reservation, inbox_seq) = http::admit(&ctx, &identity).await?;
        Ok::<_, HandshakeError>((identity, reservation, inbox_seq, rest))
    }
    .await;
    drop((early, slot));
    match admitted {
        Ok((identity, reservation, inbox_seq, rest)) => {
            let conn = reservation.fulfil();
            let up = http::Upgraded {
                stream,
                early: rest,
                head: Bytes::new(),
            };
            http::start(ctx, conn, identity, inbox_seq, up, (None, format));
        }
        Err(e) => {
            tracing::debug!(error = %e, "first-frame authentication refused");
            let (code, reason) = e.close();
            let close = ws::close_frame(code, reason);
            let refuse = async {
                stream.write_all(&close).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
        }
    }
}

/// The token of the first frame, and the bytes after that frame (requests the client sent
/// right behind it).
async fn read_connect(
    stream: &mut TcpStream,
    early: &[u8],
    max: usize,
    format: Format,
) -> Result<(String, Bytes), HandshakeError> {
    let opcode = match format {
        Format::Json => ws::OP_TEXT,
        Format::Proto => ws::OP_BINARY,
    };
    let refused = |m: &str| HandshakeError::Unauthorized(m.to_owned());
    let mut buf = early.to_vec();
    loop {
        let header = ws::parse_header(&buf)
            .map_err(|e| HandshakeError::BadRequest(format!("malformed frame: {e}")))?;
        if let Some(h) = header {
            if h.opcode != opcode || !h.fin {
                return Err(refused(match format {
                    Format::Json => {
                        r#"the first frame must be a text frame {"type":"connect","token":..}"#
                    }
                    Format::Proto => "the first frame must be a binary ClientFrame with connect",
                }));
            }
            if h.payload_len > max as u64 {
                return Err(refused("the connect frame is over max_message_size"));
            }
            let end = h.header_len + h.payload_len as usize;
            if buf.len() >= end {
                let mut payload = buf[h.header_len..end].to_vec();
                ws::unmask(&mut payload, h.mask);
                let token = match format {
                    Format::Json => {
                        let text = String::from_utf8(payload)
                            .map_err(|_| refused("the connect frame is not UTF-8"))?;
                        connect_token(protocol::parse(&text).map(|r| r.msg))
                    }
                    Format::Proto => {
                        let frame = wire::decode(&payload)
                            .map_err(|_| refused("the connect frame is not a ClientFrame"))?;
                        connect_token(frame.request().map(|r| r.msg))
                    }
                };
                return match token {
                    Some(token) => Ok((token, Bytes::copy_from_slice(&buf[end..]))),
                    _ => Err(refused(
                        r#"the first frame must be {"type":"connect","token":..}"#,
                    )),
                };
            }
        }
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(|_| refused("read failed"))?
            == 0
        {
            return Err(refused("the connection closed before its connect frame"));
        }
    }
}

/// The token of a parsed `connect` frame; `None` for any other frame or an error.
fn connect_token(msg: Result<ClientMessage<'_>, protocol::ParseError>) -> Option<String> {
    match msg {
        Ok(ClientMessage::Connect { token }) => Some(token.into_owned()),
        _ => None,
    }
}
