//! The hook client: each call an HTTP POST of JSON to `hook_url` (docs/hooks.md), made on the
//! hooks thread, so neither the HTTP work nor the wait for an answer touches a shard's thread.
//! Calls share a keep-alive pool; at most `hook_max_concurrency` are in flight, the rest wait
//! for a slot within their timeout. Each call is counted by event and outcome, with its
//! latency (`HookStats`, read by a scrape).
//!
//! Owns the thread, the pool, the answer's parsing and its limits. It must not decide what an
//! answer means for a request (the client side does, `shard::hooked`; a connect's in
//! `connect.rs`) or touch shard state: an answer goes back through the caller's `reply`.

mod connect;

pub use connect::connect;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::CONTENT_TYPE;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc};

use crate::config::Config;
use crate::core::counters::Histogram;

/// Which hook a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    Connect,
    Join,
    Publish,
    Send,
}

impl HookEvent {
    pub const ALL: [HookEvent; 4] = [
        HookEvent::Connect,
        HookEvent::Join,
        HookEvent::Publish,
        HookEvent::Send,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Connect => "connect",
            HookEvent::Join => "join",
            HookEvent::Publish => "publish",
            HookEvent::Send => "send",
        }
    }
}

/// A hook's answer. Anything else the backend sends is ignored; a field of the wrong type
/// makes the whole answer a failed hook.
#[derive(Debug, Default, Deserialize)]
pub struct Answer {
    pub allow: bool,
    /// With `allow: false`: what the client is told (`forbidden`'s message).
    #[serde(default)]
    pub message: Option<String>,
    /// A connect refused under first-frame authentication: the close code (4000–4999).
    #[serde(default)]
    pub code: Option<u16>,
    /// A connect refused: the 403's message, or the close frame's reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// `publish` and `send`: the body that replaces the client's.
    #[serde(default)]
    pub body: Option<Box<RawValue>>,
    /// `connect`: the connection's user id.
    #[serde(default)]
    pub user: Option<String>,
    /// `connect`: the rooms and rights, as a token's `rooms` claim.
    #[serde(default)]
    pub rooms: Option<Box<RawValue>>,
}

/// Why a hook failed; its `hook_on_error` decides what follows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("the hook did not answer within {0} ms")]
    Timeout(u64),
    #[error("the hook could not be reached: {0}")]
    Unreachable(String),
    #[error("the hook answered HTTP {0}")]
    Status(u16),
    #[error("the hook's answer is over {0} bytes")]
    TooLarge(usize),
    #[error("the hook's answer is not the expected JSON: {0}")]
    BadAnswer(String),
}

/// How a call ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Refused,
    Timeout,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Allowed,
        Outcome::Refused,
        Outcome::Timeout,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Failed => "error",
        }
    }

    fn of(result: &Result<Answer, HookError>) -> Outcome {
        match result {
            Ok(a) if a.allow => Outcome::Allowed,
            Ok(_) => Outcome::Refused,
            Err(HookError::Timeout(_)) => Outcome::Timeout,
            Err(_) => Outcome::Failed,
        }
    }
}

/// The hook calls so far, by event and outcome, and their latencies by event.
#[derive(Clone, Debug, Default)]
pub struct HookStats {
    pub calls: [[u64; Outcome::ALL.len()]; HookEvent::ALL.len()],
    pub latency: [Histogram; HookEvent::ALL.len()],
}

/// What the caller is handed once a call is over, on the hooks thread.
pub type Reply = Box<dyn FnOnce(Result<Answer, HookError>) + Send>;

/// One call: the JSON to POST and where its answer goes.
struct Call {
    event: HookEvent,
    body: Vec<u8>,
    timeout: Duration,
    reply: Reply,
}

/// The process's hook client; cheap to clone (every shard holds one).
#[derive(Clone)]
pub struct Hooks {
    calls: mpsc::UnboundedSender<Call>,
    stats: Arc<Mutex<HookStats>>,
}

impl Hooks {
    /// Starts the hooks thread, if `hook_url` is set.
    pub fn start(config: &Config) -> std::io::Result<Option<Hooks>> {
        let Some(url) = &config.hook_url else {
            return Ok(None);
        };
        let uri: hyper::Uri = url.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("hook_url {url}: {e}"),
            )
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(HookStats::default()));
        let worker = Worker {
            uri,
            slots: Arc::new(Semaphore::new(config.hook_max_concurrency)),
            max_answer: config.hook_max_answer_bytes,
            stats: stats.clone(),
        };
        let idle = config.hook_max_concurrency;
        std::thread::Builder::new()
            .name("hooks".into())
            .spawn(move || worker.run(rx, idle))?;
        Ok(Some(Hooks { calls: tx, stats }))
    }

    /// POSTs `body` (a JSON object) and hands the answer to `reply` on the hooks thread. A
    /// channel send: no I/O and no wait on the caller's thread.
    pub fn call(&self, event: HookEvent, body: Vec<u8>, timeout: Duration, reply: Reply) {
        let call = Call {
            event,
            body,
            timeout,
            reply,
        };
        if let Err(mpsc::error::SendError(call)) = self.calls.send(call) {
            (call.reply)(Err(HookError::Unreachable(
                "the hooks thread has stopped".into(),
            )));
        }
    }

    /// The same, for an async caller.
    pub async fn ask(
        &self,
        event: HookEvent,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, HookError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.call(
            event,
            body,
            timeout,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err(HookError::Unreachable("the hooks thread stopped".into())))
    }

    pub fn stats(&self) -> HookStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The hooks thread's state.
struct Worker {
    uri: hyper::Uri,
    slots: Arc<Semaphore>,
    max_answer: usize,
    stats: Arc<Mutex<HookStats>>,
}

impl Worker {
    fn run(self, mut calls: mpsc::UnboundedReceiver<Call>, idle: usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a current-thread runtime only fails if the OS refuses epoll");
        rt.block_on(async move {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(idle)
                .build(connector);
            let this = Arc::new(self);
            while let Some(call) = calls.recv().await {
                let (this, client) = (this.clone(), client.clone());
                tokio::spawn(async move { this.serve(&client, call).await });
            }
        });
    }

    async fn serve(&self, client: &Client<HttpConnector, Full<Bytes>>, call: Call) {
        let Call {
            event,
            body,
            timeout,
            reply,
        } = call;
        let started = Instant::now();
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let result = tokio::time::timeout(timeout, async {
            let _slot = self.slots.acquire().await.expect("never closed");
            self.post(client, body).await
        })
        .await
        .unwrap_or(Err(HookError::Timeout(ms)));
        if let Ok(mut stats) = self.stats.lock() {
            let e = event as usize;
            stats.calls[e][Outcome::of(&result) as usize] += 1;
            stats.latency[e].observe(started.elapsed());
        }
        if let Err(e) = &result {
            tracing::debug!(hook = event.as_str(), error = %e, "hook failed");
        }
        reply(result);
    }

    async fn post(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        body: Vec<u8>,
    ) -> Result<Answer, HookError> {
        let request = hyper::Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a POST with a parsed URI is a valid request");
        let response =
            (client.request(request).await).map_err(|e| HookError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), self.max_answer)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HookError::TooLarge(self.max_answer)
                } else {
                    HookError::Unreachable(e.to_string())
                }
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(HookError::Status(status.as_u16()));
        }
        parse(&answer)
    }
}

/// An answer's JSON; every failure is a `BadAnswer`, never a panic.
pub fn parse(answer: &[u8]) -> Result<Answer, HookError> {
    // serde would also read a struct from an array (`[true]`): only an object is an answer.
    if answer.trim_ascii_start().first() != Some(&b'{') {
        return Err(HookError::BadAnswer(
            "the answer is not a JSON object".into(),
        ));
    }
    serde_json::from_slice(answer).map_err(|e| HookError::BadAnswer(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Appends `s` to `out` as a JSON string.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_the_wrong_shape_are_errors_not_panics() {
        assert!(parse(br#"{"allow":true}"#).unwrap().allow);
        let a = parse(br#"{"allow":true,"body":{"text":"x"},"extra":1}"#).unwrap();
        assert_eq!(a.body.unwrap().get(), r#"{"text":"x"}"#);
        for bad in [
            &b"not json"[..],
            br#"{"allow":"yes"}"#,
            br#"{"message":"no allow"}"#,
            br#"{"allow":true,"user":5}"#,
            br#"[true]"#,
            b"",
        ] {
            assert!(
                matches!(parse(bad), Err(HookError::BadAnswer(_))),
                "{bad:?}"
            );
        }
    }
}
