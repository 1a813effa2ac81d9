//! The subscription connection read by us rather than by the client library, on one Redis
//! server over plain TCP (opened and written by `sock`): the SUBSCRIBE/UNSUBSCRIBE commands, their confirmations matched in order, and
//! its messages handed out as slices of one read buffer (`resp`). It runs inside the engine's
//! own subscription task: a message goes from the socket to the shards' batches without a
//! channel, a `Value`, or a hop between schedulers (the library's drivers are tasks of the
//! runtime: docs/performance-log.md). Owns the socket only; it must not decide what a message
//! means (`engine::subscription`).
//!
//! Not used for TLS (`rediss://`), a Unix socket or a Redis Cluster (sharded subscriptions
//! that follow slots): the library's connection serves those (`link::Subs`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use redis::{ErrorKind, RedisResult};
use tokio::sync::oneshot;

use super::resp::{self, Reply};
pub use super::sock::Plain;
use super::sock::{Queue, Socket};

/// The side of the connection the rest of the node writes commands to; cheap to clone.
pub struct Outbox {
    queue: Rc<Queue>,
    /// One per command sent, in order: who waits for its confirmation.
    waiting: RefCell<VecDeque<oneshot::Sender<Result<(), Bytes>>>>,
    timeout: Duration,
}

impl Outbox {
    pub async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        self.call(b"SUBSCRIBE", channel).await
    }

    pub async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        self.call(b"UNSUBSCRIBE", channel).await
    }

    /// Sends `cmd channel` and waits (up to `redis_timeout_ms`) for its confirmation.
    async fn call(&self, cmd: &[u8], channel: &str) -> RedisResult<()> {
        if self.queue.is_closed() {
            return Err((ErrorKind::Io, "the subscription connection is closed").into());
        }
        let (tx, rx) = oneshot::channel();
        self.queue.command(&[cmd, channel.as_bytes()]);
        self.waiting.borrow_mut().push_back(tx);
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => {
                let detail = String::from_utf8_lossy(&e).into_owned();
                Err((
                    ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                    "refused",
                    detail,
                )
                    .into())
            }
            Ok(Err(_)) => Err((ErrorKind::Io, "the subscription connection closed").into()),
            Err(_) => Err((ErrorKind::Io, "no confirmation within redis_timeout_ms").into()),
        }
    }
}

/// The connection, owned by the subscription task.
pub struct Conn {
    sock: Socket,
    outbox: Rc<Outbox>,
}

impl Conn {
    /// Connects, authenticates and names the connection, all within `timeout`.
    pub async fn connect(to: &Plain, name: &str, timeout: Duration) -> RedisResult<Conn> {
        let sock = Socket::connect(to, name, timeout).await?;
        let outbox = Rc::new(Outbox {
            queue: sock.queue(),
            waiting: RefCell::default(),
            timeout,
        });
        Ok(Conn { sock, outbox })
    }

    pub fn outbox(&self) -> Rc<Outbox> {
        self.outbox.clone()
    }

    /// Waits for the next read and takes it in (`Socket::ready`). An error: the connection is
    /// gone.
    pub async fn ready(&mut self) -> io::Result<()> {
        self.sock.ready().await
    }

    /// The next message in what was read, `(channel, payload)`; confirmations and errors met
    /// on the way go to whoever waits for them. An error: the bytes are not RESP.
    pub fn next(&mut self) -> Result<Option<(Bytes, Bytes)>, resp::RespError> {
        while let Some(reply) = self.sock.reader.next()? {
            let answer = match reply {
                Reply::Message { channel, payload } => return Ok(Some((channel, payload))),
                Reply::Subscribed { .. } | Reply::Unsubscribed { .. } | Reply::Other => Ok(()),
                Reply::Error(e) => Err(e),
            };
            if let Some(waiter) = self.outbox.waiting.borrow_mut().pop_front() {
                let _ = waiter.send(answer);
            }
        }
        Ok(None)
    }
}

impl Drop for Conn {
    /// Whoever waits for a confirmation learns the connection is gone.
    fn drop(&mut self) {
        self.outbox.queue.close();
        self.outbox.waiting.borrow_mut().clear();
    }
}
