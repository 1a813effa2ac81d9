//! The subscription connection read by us rather than by the client library, on one Redis
//! server over plain TCP: connecting (AUTH, CLIENT SETNAME, within `redis_timeout_ms`), the
//! SUBSCRIBE/UNSUBSCRIBE commands written on it, their confirmations matched in order, and
//! its messages handed out as slices of one read buffer (`resp`). It runs inside the engine's
//! own subscription task: a message goes from the socket to the shards' batches without a
//! channel, a `Value`, or a hop between schedulers (the library's drivers are tasks of the
//! runtime: docs/performance-log.md). Owns the socket only; it must not decide what a message
//! means (`engine::subscription`).
//!
//! Not used for TLS (`rediss://`), a Unix socket or a Redis Cluster (sharded subscriptions
//! that follow slots): the library's connection serves those (`link::Subs`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use super::resp::{self, Reader, Reply};

/// Where and as whom to connect: a plain `redis://` URL's parts.
#[derive(Clone, Debug)]
pub struct Plain {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The side of the connection the rest of the node writes commands to; cheap to clone.
pub struct Outbox {
    out: RefCell<BytesMut>,
    /// One per command sent, in order: who waits for its confirmation.
    waiting: RefCell<VecDeque<oneshot::Sender<Result<(), Bytes>>>>,
    wake: Notify,
    closed: Cell<bool>,
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
        if self.closed.get() {
            return Err((ErrorKind::Io, "the subscription connection is closed").into());
        }
        let (tx, rx) = oneshot::channel();
        resp::command(&mut self.out.borrow_mut(), &[cmd, channel.as_bytes()]);
        self.waiting.borrow_mut().push_back(tx);
        self.wake.notify_one();
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
    stream: TcpStream,
    reader: Reader,
    outbox: Rc<Outbox>,
}

impl Conn {
    /// Connects, authenticates and names the connection, all within `timeout`.
    pub async fn connect(to: &Plain, name: &str, timeout: Duration) -> RedisResult<Conn> {
        let timed_out = || RedisError::from((ErrorKind::Io, "Redis did not answer in time"));
        tokio::time::timeout(timeout, Self::open(to, name, timeout))
            .await
            .map_err(|_| timed_out())?
    }

    async fn open(to: &Plain, name: &str, timeout: Duration) -> RedisResult<Conn> {
        let stream = TcpStream::connect((to.host.as_str(), to.port)).await?;
        stream.set_nodelay(true)?;
        let outbox = Rc::new(Outbox {
            out: RefCell::default(),
            waiting: RefCell::default(),
            wake: Notify::new(),
            closed: Cell::new(false),
            timeout,
        });
        let mut conn = Conn {
            stream,
            reader: Reader::default(),
            outbox,
        };
        let mut hello: Vec<Vec<&[u8]>> = Vec::new();
        if let Some(pw) = &to.password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            auth.extend(to.username.as_deref().map(str::as_bytes));
            auth.push(pw.as_bytes());
            hello.push(auth);
        }
        hello.push(vec![b"CLIENT", b"SETNAME", name.as_bytes()]);
        for cmd in &hello {
            resp::command(&mut conn.outbox.out.borrow_mut(), cmd);
        }
        let mut answered = 0;
        while answered < hello.len() {
            conn.ready().await?;
            while let Some(reply) = conn.reader.next().map_err(broken)? {
                if let Reply::Error(e) = reply {
                    let detail = String::from_utf8_lossy(&e).into_owned();
                    let kind = if answered == 0 && to.password.is_some() {
                        ErrorKind::AuthenticationFailed
                    } else {
                        ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    };
                    return Err((kind, "refused by Redis", detail).into());
                }
                answered += 1;
            }
        }
        Ok(conn)
    }

    pub fn outbox(&self) -> Rc<Outbox> {
        self.outbox.clone()
    }

    /// Waits for the next read and takes it in (writing queued commands meanwhile). Cancel
    /// safe: it only waits for readiness, then reads or writes without waiting. An error: the
    /// connection is gone.
    pub async fn ready(&mut self) -> io::Result<()> {
        loop {
            let pending = !self.outbox.out.borrow().is_empty();
            tokio::select! {
                r = self.stream.readable() => {
                    r?;
                    match self.read() {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(_) => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                w = self.stream.writable(), if pending => {
                    w?;
                    self.flush()?;
                }
                _ = self.outbox.wake.notified() => {}
            }
        }
    }

    /// One read. A short one left the socket empty: its readiness is cleared at once, which
    /// saves the `recvfrom` that would only say `EAGAIN` (one per message at low rates).
    fn read(&mut self) -> io::Result<usize> {
        let (stream, buf) = (&self.stream, self.reader.spare());
        let room = buf.capacity() - buf.len();
        let mut got = None;
        let r = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read_buf(buf)?;
            got = Some(n);
            match n {
                // Readiness is cleared only if no new data came meanwhile (tokio's tick).
                n if n > 0 && n < room => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        });
        match (r, got) {
            (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            (r, _) => r,
        }
    }

    fn flush(&self) -> io::Result<()> {
        let mut out = self.outbox.out.borrow_mut();
        while !out.is_empty() {
            match self.stream.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message in what was read, `(channel, payload)`; confirmations and errors met
    /// on the way go to whoever waits for them. An error: the bytes are not RESP.
    pub fn next(&mut self) -> Result<Option<(Bytes, Bytes)>, resp::RespError> {
        while let Some(reply) = self.reader.next()? {
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
        self.outbox.closed.set(true);
        self.outbox.waiting.borrow_mut().clear();
    }
}

fn broken(e: resp::RespError) -> RedisError {
    (ErrorKind::Io, "unreadable reply", e.to_string()).into()
}
