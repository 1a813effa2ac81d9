//! The hook client: each call an HTTP POST of JSON to `hook_url` (docs/hooks.md), made from the
//! calling shard's own runtime (`client.rs`: keep-alive, pipelined connections per shard), so a
//! call waiting for its answer never blocks the shard: its answer is handed to a callback. At
//! most `hook_max_concurrency` calls are in flight (split between the shards), the rest wait
//! for a slot within their timeout. Each call is counted by event and outcome, with its latency
//! (`HookStats`, shared by the shards, read by a scrape).
//!
//! Owns the pools, the answer's parsing and its limits. It must not decide what an answer means
//! for a request (the client side does, `shard::hooked`; a connect's in `connect.rs`) or touch
//! shard state: the caller awaits the answer.

mod answer;
mod client;
mod connect;

pub use connect::connect;

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;
use crate::core::counters::Histogram;
use crate::outbound::Endpoint;

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
    /// `connect`: a JSON object other members see in presence.
    #[serde(default)]
    pub info: Option<Box<RawValue>>,
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

/// What every shard's hook client shares: the target, the limits and the counters.
struct Shared {
    target: Arc<Endpoint>,
    max_answer: usize,
    /// Calls in flight per shard: `hook_max_concurrency` split between the shards.
    per_shard: usize,
    /// Calls in flight on one connection: `hook_pipeline`.
    depth: usize,
    stats: Mutex<HookStats>,
}

/// The process's hook settings and counters, handed to every shard; cheap to clone.
#[derive(Clone)]
pub struct HookSetup(Arc<Shared>);

impl HookSetup {
    /// The hook settings, if `hook_url` is set, for `shards` shards.
    pub fn new(config: &Config, shards: usize) -> std::io::Result<Option<HookSetup>> {
        let Some(url) = &config.hook_url else {
            return Ok(None);
        };
        let target = Endpoint::parse(url, config.hook_ca_file.as_deref()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("hook_url: {e}"))
        })?;
        Ok(Some(HookSetup(Arc::new(Shared {
            target: Arc::new(target),
            max_answer: config.hook_max_answer_bytes,
            per_shard: config.hook_max_concurrency.div_ceil(shards.max(1)).max(1),
            depth: config.hook_pipeline,
            stats: Mutex::new(HookStats::default()),
        }))))
    }

    /// The hook client of the shard whose thread calls this.
    pub fn for_shard(&self) -> Hooks {
        Hooks(Rc::new(Local {
            shared: self.0.clone(),
            pool: client::Pool::new(
                self.0.target.clone(),
                self.0.per_shard,
                self.0.depth,
                self.0.max_answer,
            ),
        }))
    }
}

struct Local {
    shared: Arc<Shared>,
    pool: client::Pool,
}

/// One shard's hook client; cheap to clone, used on the shard's thread only.
#[derive(Clone)]
pub struct Hooks(Rc<Local>);

impl Hooks {
    /// POSTs `body` (a JSON object) and hands `done` the answer, or why the hook failed,
    /// within `timeout` (waiting for a slot included), on this shard's thread. Costs the
    /// request's copy into a connection's output and the answer's parse; the syscalls are
    /// shared by the calls of a pass (`client.rs`).
    pub fn call(
        &self,
        event: HookEvent,
        body: &[u8],
        timeout: Duration,
        done: impl FnOnce(Result<Answer, HookError>) + 'static,
    ) {
        let shared = self.0.shared.clone();
        let started = Instant::now();
        let done = move |answer: Result<(u16, &[u8]), HookError>| {
            let result = match answer {
                Err(e) => Err(e),
                Ok((status, _)) if !(200..300).contains(&status) => Err(HookError::Status(status)),
                Ok((_, answer)) => parse(answer),
            };
            if let Ok(mut stats) = shared.stats.lock() {
                let e = event as usize;
                stats.calls[e][Outcome::of(&result) as usize] += 1;
                stats.latency[e].observe(started.elapsed());
            }
            if let Err(e) = &result {
                tracing::debug!(hook = event.as_str(), error = %e, "hook failed");
            }
            done(result);
        };
        self.0.pool.post(body, timeout, Box::new(done));
    }

    /// [`call`](Self::call), awaited.
    pub async fn ask(
        &self,
        event: HookEvent,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, HookError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.call(event, &body, timeout, move |result| {
            let _ = tx.send(result);
        });
        rx.await
            .unwrap_or_else(|_| Err(HookError::Unreachable("the shard is stopping".into())))
    }

    /// The calls of every shard so far.
    pub fn stats(&self) -> HookStats {
        (self.0.shared.stats.lock())
            .map(|s| s.clone())
            .unwrap_or_default()
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
