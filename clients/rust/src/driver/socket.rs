//! The socket's edge: opening the WebSocket (credentials, subprotocol, a refused handshake
//! read into [`Error::Refused`]), sending a frame in the negotiated format, and how a close
//! reads (which codes reconnect).
//!
//! Holds no state; [`super::Driver`] owns the socket.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::time::Instant;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};

use super::{End, Ws};
use crate::codec::Format;
use crate::{Auth, Error, Options};

/// Whether a close code says to reconnect as it is (docs/protocol.md's table: 4000–4499 yes,
/// 4500–4999 no; 4001 only with a new token, from `get_token`; 4002 on `unavailable`).
pub(crate) fn reconnects(code: u16, reason: &str) -> bool {
    match code {
        1000 | 4001 => false,
        4002 => reason == "unavailable",
        4500..=4999 => false,
        _ => true,
    }
}

pub(super) fn dropped(code: Option<u16>, reason: String) -> End {
    End::Dropped { code, reason }
}

pub(super) fn closed(c: Option<tungstenite::protocol::CloseFrame>) -> End {
    match c {
        Some(c) => dropped(Some(u16::from(c.code)), c.reason.to_string()),
        None => dropped(Some(u16::from(CloseCode::Status)), String::new()),
    }
}

pub(super) async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

pub(super) fn ws_message(format: Format, frame: Bytes) -> WsMessage {
    match format {
        Format::Proto => WsMessage::Binary(frame),
        // SAFETY-free: the JSON encoder writes UTF-8 only; checked anyway (cheap, and a
        // broken frame must not reach the server as text).
        Format::Json => match Utf8Bytes::try_from(frame) {
            Ok(t) => WsMessage::Text(t),
            Err(_) => WsMessage::Text(Utf8Bytes::from_static("{}")),
        },
    }
}

pub(super) async fn send(ws: &mut Ws, format: Format, frame: Bytes) -> Result<(), End> {
    ws.send(ws_message(format, frame))
        .await
        .map_err(|e| dropped(None, e.to_string()))
}

/// Opens the WebSocket: the URL with its credentials, the subprotocol asked for. A refused
/// handshake comes back as [`Error::Refused`] with the server's code and message.
pub(super) async fn connect(
    opts: &Options,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Ws, Error> {
    let mut url = opts.url.clone();
    let sep = if url.contains('?') { '&' } else { '?' };
    match &opts.auth {
        Auth::Dev(user) => url.push_str(&format!("{sep}user={user}")),
        Auth::Token(_) => url.push_str(&format!("{sep}token={}", token.unwrap_or_default())),
        Auth::FirstFrame(_) => {}
    }
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|_| Error::Url(opts.url.clone()))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        opts.format
            .subprotocol()
            .parse()
            .expect("a valid header value"),
    );
    let attempt = tokio_tungstenite::connect_async_tls_with_config(
        req,
        None,
        false,
        tls.map(Connector::Rustls),
    );
    let (ws, _) = tokio::time::timeout(opts.request_timeout, attempt)
        .await
        .map_err(|_| Error::Timeout(opts.request_timeout))?
        .map_err(|e| match e {
            tungstenite::Error::Http(resp) => {
                #[derive(serde::Deserialize, Default)]
                #[serde(default)]
                struct Refusal {
                    code: String,
                    message: String,
                }
                let body: Refusal = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                Error::Refused {
                    status: resp.status().as_u16(),
                    code: body.code,
                    message: body.message,
                }
            }
            e => Error::WebSocket(e.to_string()),
        })?;
    Ok(ws)
}
