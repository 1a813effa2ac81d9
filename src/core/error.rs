//! The protocol's error vocabulary: reply error codes, close codes and handshake refusals.
//!
//! This is the one table behind docs/protocol.md's "Error codes and close codes". It owns the
//! names, numbers and HTTP statuses; it must not decide *when* they are used.

use std::borrow::Cow;

/// A reply error: sent as `{"type":"error",...}`; the connection stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    InvalidName,
    NotMember,
    Forbidden,
    TooLarge,
    RateLimited,
    Unavailable,
    Cancelled,
    Unauthorized,
    RoomFull,
    /// The target of an edit, delete or reaction is not a stored message of the room.
    NoSuchMessage,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::NoSuchMessage => "no_such_message",
        }
    }

    /// The HTTP status of this error when the server API returns it.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::UnknownType | ErrorCode::InvalidName => 400,
            ErrorCode::NotMember | ErrorCode::Forbidden => 403,
            ErrorCode::Unauthorized => 401,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Cancelled | ErrorCode::RoomFull => 409,
            ErrorCode::NoSuchMessage => 404,
        }
    }
}

/// A reply error with its human-readable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl ReplyError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ReplyError {
            code,
            message: message.into(),
        }
    }
}

/// Why the server ends a connection. Codes 4000–4499 tell the client to reconnect, 4500–4999
/// not to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    Normal,
    GoingAway,
    ProtocolError,
    /// A text message (or a close reason) that is not valid UTF-8.
    InvalidPayload,
    Policy,
    TooBig,
    Internal,
    SlowConsumer,
    TokenExpired,
    Replaced,
    Kicked,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::SlowConsumer => 4000,
            CloseCode::TokenExpired => 4001,
            CloseCode::Replaced => 4500,
            CloseCode::Kicked => 4501,
        }
    }

    /// The close frame's reason text (at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::GoingAway => "server shutting down, reconnect",
            CloseCode::ProtocolError => "malformed websocket frame",
            CloseCode::InvalidPayload => "text is not valid UTF-8",
            CloseCode::Policy => "idle timeout",
            CloseCode::TooBig => "frame too big",
            CloseCode::Internal => "internal error",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::TokenExpired => "token expired",
            CloseCode::Replaced => "replaced by a newer session",
            CloseCode::Kicked => "kicked",
        }
    }
}

/// Why a WebSocket handshake was refused; sent as an HTTP error with `{"code","message"}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("token expired at {0}; fetch a new token")]
    TokenExpired(u64),
    #[error("origin {0} may not open a WebSocket here; add it to allowed_origins")]
    OriginNotAllowed(String),
    #[error("no such path; connect to /ws")]
    NotFound,
    #[error("user is already connected and the session policy is reject_new")]
    SessionExists,
    #[error("user already has the most connections allowed ({0})")]
    ConnectionLimit(u32),
    #[error("server is shutting down; retry shortly")]
    Unavailable,
    /// Cluster mode: Redis did not answer the admission.
    #[error("the server cannot reach Redis; retry shortly")]
    RedisUnreachable,
    /// The connect hook refused: 403 with its reason, or after a first-frame upgrade a close
    /// with its code (4000–4999, default 4403) and reason.
    #[error("{reason}")]
    HookRefused { code: u16, reason: String },
    /// The connect hook failed and `hook_on_error` is deny.
    #[error("{0}; retry shortly")]
    HookFailed(String),
}

impl HandshakeError {
    /// The close code of a handshake refused after the upgrade (a bad or missing `connect`
    /// frame under `first_frame_auth`); the close reason is the refusal's [`code`](Self::code).
    pub const CLOSE_CODE: u16 = 4002;

    /// The close code and reason of this refusal after a first-frame upgrade: 4002 and the
    /// refusal's code, or a connect hook's own code and reason.
    pub fn close(&self) -> (u16, &str) {
        match self {
            HandshakeError::HookRefused { code, reason } => (*code, reason),
            e => (HandshakeError::CLOSE_CODE, e.code()),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::BadRequest(_) => 400,
            HandshakeError::Unauthorized(_) | HandshakeError::TokenExpired(_) => 401,
            HandshakeError::OriginNotAllowed(_) | HandshakeError::HookRefused { .. } => 403,
            HandshakeError::NotFound => 404,
            HandshakeError::SessionExists => 409,
            HandshakeError::ConnectionLimit(_) => 429,
            HandshakeError::Unavailable
            | HandshakeError::RedisUnreachable
            | HandshakeError::HookFailed(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            HandshakeError::BadRequest(_) => "bad_request",
            HandshakeError::Unauthorized(_) => "unauthorized",
            HandshakeError::TokenExpired(_) => "token_expired",
            HandshakeError::OriginNotAllowed(_) => "origin_not_allowed",
            HandshakeError::NotFound => "not_found",
            HandshakeError::SessionExists => "session_exists",
            HandshakeError::ConnectionLimit(_) => "connection_limit",
            HandshakeError::Unavailable
            | HandshakeError::RedisUnreachable
            | HandshakeError::HookFailed(_) => "unavailable",
            HandshakeError::HookRefused { .. } => "forbidden",
        }
    }
}
