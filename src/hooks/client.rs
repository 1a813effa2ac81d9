//! One shard's HTTP/1.1 client for the hooks: keep-alive connections to `hook_url` (plain or
//! TLS, `outbound`) opened and driven on the shard's own runtime, so a call costs a few task
//! wake-ups on the same thread and the socket's syscalls, with no hop to another thread and back
//! (docs/performance.md, "What a hook costs"). At most `slots` calls of the shard are in
//! flight; idle connections are reused newest first, and at most `slots` are kept.
//!
//! Owns the shard's connections and their pool. It must not parse answers or count calls
//! (`hooks` does) or touch shard state.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use tokio::sync::Semaphore;

use super::{HookError, error_chain};
use crate::outbound::Endpoint;

/// A connection idle longer than this is closed rather than reused: a backend may have closed
/// its end, and a request on it would fail.
const IDLE_FOR: Duration = Duration::from_secs(30);

type Sender = SendRequest<Full<Bytes>>;

/// A shard's connections to `hook_url`.
pub(super) struct Pool {
    idle: RefCell<Vec<(Sender, Instant)>>,
    slots: Semaphore,
    max_idle: usize,
}

impl Pool {
    pub(super) fn new(slots: usize) -> Pool {
        Pool {
            idle: RefCell::new(Vec::with_capacity(slots)),
            slots: Semaphore::new(slots),
            max_idle: slots,
        }
    }

    /// POSTs `body` to `target` once a slot is free; the status and at most `max_answer` bytes
    /// of the answer.
    pub(super) async fn post(
        &self,
        target: &Endpoint,
        body: Bytes,
        max_answer: usize,
    ) -> Result<(hyper::StatusCode, Bytes), HookError> {
        let _slot = self.slots.acquire().await.expect("never closed");
        loop {
            let (mut sender, reused) = match self.take_idle().await {
                Some(sender) => (sender, true),
                None => {
                    let sender = target.connect().await.map_err(HookError::Unreachable)?;
                    (sender, false)
                }
            };
            let request = hyper::Request::post(target.path.as_str())
                .header(HOST, target.authority.as_str())
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .expect("a POST with a checked path and authority is a valid request");
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                // The backend closed a kept-alive connection before the request went out: try
                // again on a new one.
                Err(mut e) => {
                    if reused && e.take_message().is_some() {
                        continue;
                    }
                    return Err(HookError::Unreachable(error_chain(e.error())));
                }
            };
            let status = response.status();
            let answer = Limited::new(response.into_body(), max_answer)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HookError::TooLarge(max_answer)
                    } else {
                        HookError::Unreachable(e.to_string())
                    }
                })?
                .to_bytes();
            self.put_idle(sender);
            return Ok((status, answer));
        }
    }

    /// The newest idle connection that is still open and ready.
    async fn take_idle(&self) -> Option<Sender> {
        loop {
            let (mut sender, since) = self.idle.borrow_mut().pop()?;
            if since.elapsed() > IDLE_FOR || sender.ready().await.is_err() {
                continue;
            }
            return Some(sender);
        }
    }

    fn put_idle(&self, sender: Sender) {
        let mut idle = self.idle.borrow_mut();
        if !sender.is_closed() && idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
    }
}
