//! The errors of this crate: a request the server refused, a connection that could not be
//! made or was lost, and bad input from the caller.

use std::time::Duration;

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server answered the request with an error frame (docs/protocol.md, "Error codes").
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    /// The server refused the WebSocket handshake with an HTTP status and its JSON body.
    #[error("handshake refused: HTTP {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The connection closed before the reply came (requests outside the outbox are not sent
    /// again; the outbox's are).
    #[error("the connection closed before the reply")]
    Disconnected,
    /// The client was closed, or stopped for good (a close code that says not to reconnect).
    #[error("the client is closed: {0}")]
    Closed(String),
    /// No reply within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The WebSocket or the TCP connection failed.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The URL given to [`crate::Options`] is not a `ws://` or `wss://` URL.
    #[error("bad url {0:?}: it must be ws://host:port[/path] or wss://…")]
    Url(String),
    /// The TLS settings of a `wss://` URL could not be made (a bad `extra_ca_pem`).
    #[error("tls: {0}")]
    Tls(String),
    /// A body that is not what was claimed (text that is not JSON, say).
    #[error("body: {0}")]
    Body(String),
}

impl Error {
    /// The server's error code (`rate_limited`, `not_member`…), for a [`Error::Server`] or an
    /// [`Error::Refused`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } | Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}
