//! The API's error: an HTTP status and the `{"code","message"}` body. Owns only the mapping
//! from protocol errors to HTTP statuses.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use crate::core::error::{ErrorCode, ReplyError};
use crate::http::json_error;

/// An API error: its HTTP status and the `{"code","message"}` body.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: u16,
    code: &'static str,
    message: Cow<'static, str>,
}

impl ApiError {
    pub(super) fn new(
        status: u16,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad(message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError::new(400, ErrorCode::BadRequest.as_str(), message)
    }

    pub(super) fn unavailable() -> ApiError {
        ApiError::new(
            503,
            "unavailable",
            "the server is shutting down; retry shortly",
        )
    }

    pub fn response(&self) -> Response<Full<Bytes>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        json_error(status, self.code, &self.message)
    }
}

impl From<ReplyError> for ApiError {
    fn from(e: ReplyError) -> ApiError {
        ApiError::new(e.code.http_status(), e.code.as_str(), e.message)
    }
}
