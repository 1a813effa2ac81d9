//! The hook client's HTTP/1.1 pipelining (src/hooks/client.rs, docs/hooks.md): calls of one
//! shard share a connection and their answers come back in order; a call that times out in the
//! middle of a pipeline fails under `hook_on_error` and the calls behind it are still answered;
//! a backend that closes the connection mid-pipeline, or answers out of spec, fails only the
//! call it was answering. The backend is a real HTTP/1.1 server on a socket, written here by
//! hand so that it can hold answers until several requests have arrived on one connection and
//! misbehave at an exact point.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use shardcast::config::{HookOnError, RoomHook, RoomRule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the backend received: the texts of the requests, by connection.
type Seen = Arc<Mutex<Vec<Vec<String>>>>;

/// The backend: on its first connection it holds its answers until `gather` requests have
/// arrived, then answers them in order in one write; later connections are answered at once.
/// A request's body text says how: `stall` (no answer, nor to anything after it on that
/// connection), `close` (the connection is closed instead of answering), `garbage` (not
/// HTTP), `chunked` (a chunked answer), `spam` (refused), anything else allowed.
struct PipeBackend {
    url: String,
    seen: Seen,
}

impl PipeBackend {
    async fn start(gather: usize) -> PipeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let index = {
                    let mut seen = s.lock().unwrap();
                    seen.push(Vec::new());
                    seen.len() - 1
                };
                let wait_for = if index == 0 { gather } else { 1 };
                tokio::spawn(serve(stream, index, wait_for, s.clone()));
            }
        });
        PipeBackend { url, seen }
    }

    fn connections(&self) -> Vec<Vec<String>> {
        self.seen.lock().unwrap().clone()
    }
}

/// One connection: reads requests, and once `wait_for` have arrived answers every one read,
/// then each as it comes.
async fn serve(mut stream: TcpStream, index: usize, mut wait_for: usize, seen: Seen) {
    let mut buf = Vec::new();
    let mut queued: Vec<String> = Vec::new();
    let mut stalled = false;
    loop {
        while let Some(text) = take_request(&mut buf) {
            seen.lock().unwrap()[index].push(text.clone());
            queued.push(text);
        }
        if !stalled && queued.len() >= wait_for {
            wait_for = 1;
            let mut out = Vec::new();
            for text in queued.drain(..) {
                match text.as_str() {
                    "stall" => {
                        stalled = true;
                        break;
                    }
                    "close" => {
                        let _ = stream.write_all(&out).await;
                        return;
                    }
                    "garbage" => out.extend_from_slice(b"this is not http\r\n\r\n"),
                    "chunked" => out.extend_from_slice(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                          6\r\n{\"allo\r\n8\r\nw\":true}\r\n0\r\n\r\n",
                    ),
                    "spam" => answer(&mut out, r#"{"allow":false,"message":"no spam"}"#),
                    _ => answer(&mut out, r#"{"allow":true}"#),
                }
            }
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn answer(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        )
        .as_bytes(),
    );
}

/// The first whole request in `buf`, removed: its body's `body.text` (or `""`).
fn take_request(buf: &mut Vec<u8>) -> Option<String> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    if buf.len() < end + length {
        return None;
    }
    let body: Value = serde_json::from_slice(&buf[end..end + length]).unwrap_or(Value::Null);
    buf.drain(..end + length);
    Some(body["body"]["text"].as_str().unwrap_or_default().to_owned())
}

/// `pipe:` rooms run the publish hook with a 5 s timeout, `slow:` rooms with 500 ms; both deny
/// on error.
fn rules() -> Vec<RoomRule> {
    let rule = |prefix: &str, ms| RoomRule {
        prefix: prefix.into(),
        hooks: Some(vec![RoomHook::Publish]),
        hook_timeout_ms: Some(ms),
        hook_on_error: Some(HookOnError::Deny),
        ..RoomRule::default()
    };
    vec![rule("pipe:", 5_000), rule("slow:", 500)]
}

/// One shard, three calls in flight at most and three per connection: one connection, so
/// concurrent calls are pipelined on it. Each client has joined `pipe:p` and `slow:p`.
async fn server_and_clients(backend: &PipeBackend, n: usize) -> (TestServer, Vec<Client>) {
    let url = backend.url.clone();
    let server = TestServer::start(move |c| {
        c.hook_url = Some(url);
        c.shards = 1;
        c.hook_max_concurrency = 3;
        c.hook_pipeline = 3;
        c.presence_events = false;
        c.rooms = rules();
    });
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = Client::connect_dev(server.addr(), &format!("u{i}")).await;
        c.join("pipe:p").await;
        c.join("slow:p").await;
        clients.push(c);
    }
    (server, clients)
}

/// Client i publishes `texts[i]` (to `slow:p` for "stall", else `pipe:p`), each once the
/// backend has received the one before: the pipeline's order is the texts'. The replies, by
/// client.
async fn publish_in_order(
    backend: &PipeBackend,
    clients: &mut [Client],
    texts: &[&str],
) -> Vec<Value> {
    let received = || backend.connections().iter().map(Vec::len).sum::<usize>();
    for (c, t) in clients.iter_mut().zip(texts) {
        let before = received();
        let room = if *t == "stall" { "slow:p" } else { "pipe:p" };
        let frame = json!({"type": "publish", "room": room, "id": t, "body": {"text": t}});
        c.send_json(&frame).await;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while received() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{t} never reached the backend"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let mut replies = Vec::new();
    for c in clients.iter_mut() {
        let reply = c.recv_past(|f| f["type"] == "message").await;
        replies.push(reply);
    }
    replies
}

fn kinds(replies: &[Value]) -> Vec<String> {
    replies
        .iter()
        .map(|r| match r["type"].as_str() {
            Some("ack") => "ack".to_owned(),
            _ => r["code"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

/// Three calls at once go out on one connection and are answered in order, one of them
/// chunked and one refused: the backend holds its answers until all three have arrived on its
/// first connection, so a client that sent one call per connection would time out.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_are_pipelined_on_one_connection() {
    let backend = PipeBackend::start(3).await;
    let (_server, mut clients) = server_and_clients(&backend, 3).await;
    let replies = publish_in_order(&backend, &mut clients, &["fine", "chunked", "spam"]).await;
    assert_eq!(kinds(&replies), ["ack", "ack", "forbidden"], "{replies:?}");
    assert_eq!(replies[2]["message"], "no spam");
    let conns = backend.connections();
    assert_eq!(
        conns[0].len(),
        3,
        "three requests on one connection: {conns:?}"
    );
}

/// A call that times out in the middle of a pipeline fails under `hook_on_error` (deny:
/// `unavailable`); the calls behind it on that connection are sent again and answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_mid_pipeline_fails_only_its_call() {
    let backend = PipeBackend::start(3).await;
    let (_server, mut clients) = server_and_clients(&backend, 3).await;
    let replies = publish_in_order(&backend, &mut clients, &["one", "stall", "three"]).await;
    assert_eq!(
        kinds(&replies),
        ["ack", "unavailable", "ack"],
        "{replies:?}"
    );
    assert!(
        replies[1]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 500 ms"),
        "{replies:?}"
    );
    let conns = backend.connections();
    assert_eq!(conns[0].len(), 3, "pipelined: {conns:?}");
    // The server goes on calling the backend.
    let more = publish_in_order(&backend, &mut clients[..1], &["again"]).await;
    assert_eq!(kinds(&more), ["ack"]);
}

/// The backend closes the connection instead of answering a call in the middle of a
/// pipeline: the calls before it have their answers; it is sent once more (and fails when the
/// backend closes again: `unavailable`); the calls behind it are answered on a new connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_closing_mid_pipeline_fails_only_the_call_it_dropped() {
    let backend = PipeBackend::start(3).await;
    let (_server, mut clients) = server_and_clients(&backend, 3).await;
    let replies = publish_in_order(&backend, &mut clients, &["one", "close", "three"]).await;
    assert_eq!(
        kinds(&replies),
        ["ack", "unavailable", "ack"],
        "{replies:?}"
    );
    let closes: usize = (backend.connections().iter())
        .map(|c| c.iter().filter(|t| *t == "close").count())
        .sum();
    assert_eq!(
        closes,
        2,
        "sent once more, not again: {:?}",
        backend.connections()
    );
}

/// An answer that is not HTTP fails its call (`unavailable`), never the server, and the calls
/// pipelined behind it are answered.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_out_of_spec_fails_only_its_call() {
    let backend = PipeBackend::start(3).await;
    let (_server, mut clients) = server_and_clients(&backend, 3).await;
    let replies = publish_in_order(&backend, &mut clients, &["one", "garbage", "three"]).await;
    assert_eq!(
        kinds(&replies),
        ["ack", "unavailable", "ack"],
        "{replies:?}"
    );
    assert!(
        replies[1]["message"].as_str().unwrap().contains("not HTTP"),
        "{replies:?}"
    );
    let more = publish_in_order(&backend, &mut clients[1..2], &["again"]).await;
    assert_eq!(kinds(&more), ["ack"]);
}
