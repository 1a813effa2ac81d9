//! HTTP responses: the JSON error body `{"code","message"}` every refusal uses, and JSON
//! answers.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::core::error::HandshakeError;

/// Every response body: one chunk (`HandshakeIo` relies on it).
pub type Body = Full<Bytes>;

/// `{"code":..,"message":..}` with the error's status.
pub fn error(e: &HandshakeError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_error(status, e.code(), &e.to_string())
}

/// `{"code":..,"message":..}` with `status`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    json(status, Bytes::from(body))
}

/// A JSON response.
pub fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
