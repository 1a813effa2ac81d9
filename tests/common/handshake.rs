//! The WebSocket handshake: [`connect`] returns a [`Client`] once welcomed, or the [`Refusal`]
//! (the HTTP response of a refused handshake); [`dev`] and [`retry_dev`] connect in dev mode.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{Client, TIMEOUT};

/// A refused handshake: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Value,
    pub raw_body: String,
}

impl Refusal {
    /// Asserts the documented refusal shape: `status`, a JSON content type, and a body
    /// `{"code":code,"message":<non-empty string>}`.
    pub fn assert(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "refused handshake status (body {})",
            self.raw_body
        );
        assert_eq!(
            self.body["code"], code,
            "refused handshake code (body {})",
            self.raw_body
        );
        let message = self.body["message"].as_str();
        assert!(
            message.is_some_and(|m| !m.is_empty()),
            "refused handshake body needs a non-empty string `message`: {}",
            self.raw_body
        );
        let ct = self.content_type.as_deref().unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "refused handshake content-type is {ct:?}, expected application/json"
        );
    }
}

/// Opens a WebSocket to `ws://addr{path}` with extra request headers. On success the first frame
/// is read and must be a `welcome`; on an HTTP refusal the response is returned; any other error
/// panics.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, Refusal> {
    connect_with(addr, path, headers, None).await
}

/// [`connect`] with a tungstenite config (e.g. smaller buffers for thousands of clients).
pub async fn connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    config: Option<WebSocketConfig>,
) -> Result<Client, Refusal> {
    let url = format!("ws://{addr}{path}");
    let mut request = url
        .as_str()
        .into_client_request()
        .unwrap_or_else(|e| panic!("bad request url {url}: {e}"));
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let result = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, config, true),
    )
    .await
    .unwrap_or_else(|_| panic!("handshake to {url} timed out after {TIMEOUT:?}"));
    match result {
        Ok((ws, _response)) => {
            let mut client = Client::new(ws, path.to_string());
            let welcome = client.recv_json().await;
            assert_eq!(
                welcome["type"], "welcome",
                "the first frame must be a welcome, got {welcome}"
            );
            if let Some(user) = welcome["user"].as_str() {
                client.name = user.to_string();
            }
            client.welcome = welcome;
            Ok(client)
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let raw = response.body().clone().unwrap_or_default();
            let raw_body = String::from_utf8_lossy(&raw).into_owned();
            let body = serde_json::from_slice(&raw).unwrap_or_else(|e| {
                panic!("refused handshake ({status}) body is not JSON ({e}): {raw_body:?}")
            });
            Err(Refusal {
                status,
                content_type,
                body,
                raw_body,
            })
        }
        Err(e) => panic!("handshake to {url} failed without an HTTP response: {e}"),
    }
}

/// Percent-encodes a query value (every byte outside `[A-Za-z0-9_.-]`).
pub fn enc(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Connects in dev mode as `user`; panics if refused.
pub async fn dev(addr: SocketAddr, user: &str) -> Client {
    Client::connect_dev(addr, user).await
}

/// Retries a dev-mode connection for up to `within` while it is refused (e.g. while a
/// disconnect propagates); returns the last refusal if it never succeeds.
pub async fn retry_dev(addr: SocketAddr, user: &str, within: Duration) -> Result<Client, Refusal> {
    let deadline = Instant::now() + within;
    loop {
        match connect(addr, &format!("/ws?user={}", enc(user)), &[]).await {
            Ok(c) => return Ok(c),
            Err(r) if Instant::now() >= deadline => return Err(r),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
