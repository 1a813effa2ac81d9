//! Plain HTTP: [`Http`] (HTTP/1.1 on one kept-alive connection) and its [`HttpReply`], and the
//! checks on `/healthz` and `/readyz` built on it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use serde_json::Value;

use super::{TIMEOUT, eventually};

/// HTTP/1.1 over one kept-alive connection: a few lines, so the tests need no HTTP client
/// crate. One connection per test keeps the round-robin dealing of connections to shards
/// predictable, and a request can still be made while the server shuts down (it no longer
/// accepts new connections then).
pub struct Http {
    stream: BufReader<TcpStream>,
}

/// An HTTP response; the body is text.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).await.expect("connect for HTTP");
        Http {
            stream: BufReader::new(stream),
        }
    }

    /// Waits up to [`TIMEOUT`] for the server to close the connection, with nothing more sent.
    pub async fn wait_closed(&mut self, why: &str) {
        let mut rest = Vec::new();
        match tokio::time::timeout(TIMEOUT, self.stream.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(Err(e)) => panic!("{why}: read failed: {e}"),
            Err(_) => panic!("{why}: the server did not close the connection within {TIMEOUT:?}"),
        }
        assert!(
            rest.is_empty(),
            "{why}: the server sent {:?} before closing",
            String::from_utf8_lossy(&rest)
        );
    }

    /// `GET path` with extra headers.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        self.request("GET", path, headers, "").await
    }

    /// One request; the response must come within [`TIMEOUT`] and carry a Content-Length.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpReply {
        tokio::time::timeout(TIMEOUT, self.request_now(method, path, headers, body))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no response within {TIMEOUT:?}"))
    }

    async fn request_now(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpReply {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let s = self.stream.get_mut();
        s.write_all(request.as_bytes()).await.expect("send request");
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await.expect("read");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: bad status line {status_line:?}"));
        let (mut length, mut content_type, mut headers) = (None, String::new(), Vec::new());
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.expect("read header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
            headers.push((name, value.trim().to_string()));
        }
        let length = length.unwrap_or_else(|| panic!("{method} {path}: no Content-Length"));
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.expect("read body");
        HttpReply {
            status,
            content_type,
            headers,
            body: String::from_utf8(body).expect("UTF-8 body"),
        }
    }
}

/// Sends `GET /healthz` on a new raw connection and checks that no answer comes within `wait`:
/// the shard is at `max_handshakes`, so the connection waits in the listen backlog. Returns it,
/// for the answer that must come once a slot frees. `why` says what holds the slots.
pub async fn healthz_left_waiting(addr: SocketAddr, wait: Duration, why: &str) -> TcpStream {
    let mut waiting = TcpStream::connect(addr).await.expect("connect");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write the request");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(wait, waiting.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "{why}, yet a new connection was answered: {early:?}"
    );
    waiting
}

/// Waits up to [`TIMEOUT`] until `GET /readyz` answers `status`; returns the answer's body.
pub async fn readyz_becomes(http: &mut Http, status: u16) -> String {
    eventually(TIMEOUT, &format!("/readyz answers {status}"), async || {
        let reply = http.get("/readyz", &[]).await;
        (reply.status == status).then_some(reply.body)
    })
    .await
}

/// A server API response: its status and JSON body.
#[derive(Debug)]
pub struct ApiReply {
    pub status: u16,
    pub body: Value,
}

/// One server API request on a fresh connection, `Authorization: apikey KEY` when a key is
/// given; every API response must be JSON.
pub async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> ApiReply {
    let auth = key.map(|k| format!("apikey {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend(auth.as_deref().map(|a| ("Authorization", a)));
    let reply = Http::connect(addr)
        .await
        .request(method, path, &headers, body)
        .await;
    assert!(
        reply.content_type.starts_with("application/json"),
        "{reply:?}"
    );
    let json = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    ApiReply {
        status: reply.status,
        body: json,
    }
}
