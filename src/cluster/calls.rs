//! The publish scripts' calls (a room's `publish`, a direct `send`) and `WAIT` on a connection
//! of our own, on one Redis server over plain TCP (opened by `sock`, as the subscription's):
//! every call of a scheduler pass leaves in one write, replies are matched in order and
//! decoded where they were read (`resp::Answer`: no `Value`, no multiplexer, no driver task on
//! the runtime; the reading task runs in the engine's own task set). EVALSHA, and on
//! `NOSCRIPT` SCRIPT LOAD and EVALSHA again (the library's commands: the same ACL). A call waits at most `redis_timeout_ms`; a connection that
//! drops fails every call in flight and is opened again with a backoff. Owns this connection
//! only; what a call means is the engine's (`engine::messages`). TLS, a Unix socket and a
//! Redis Cluster keep the client library's connection (`link::Cmds`).
//!
//! Cost per call: one encoding of the command into the shared write buffer, a oneshot and a
//! timer; per reply, a slice of the read buffer and up to four integers parsed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use redis::{Script, ScriptInvocation, ToRedisArgs};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::resp::{self, Answer};
use super::sock::{Plain, Queue, Socket};

/// Why a call has no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Not connected: the call was not sent.
    #[error("the publish connection is not open")]
    Down,
    /// Sent, and the connection dropped before the reply: it may have been carried out.
    #[error("the publish connection dropped before Redis answered")]
    Dropped,
    /// No reply within `redis_timeout_ms`: it may have been carried out.
    #[error("no reply within redis_timeout_ms")]
    Timeout,
    /// Redis answered with an error (the script failed, or Redis refused to run it).
    #[error("Redis refused the call: {0}")]
    Refused(String),
    /// A reply of another shape than the call's.
    #[error("a reply of an unexpected shape")]
    Unexpected,
}

/// A script's keys and arguments, as `redis::ScriptInvocation` collects them, readable both
/// by our connection and by the library's (`library`).
pub struct Invocation<'a> {
    script: &'a Script,
    /// The script's source, loaded after a `NOSCRIPT`.
    source: &'static str,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'a> Invocation<'a> {
    pub fn new(script: &'a Script, source: &'static str) -> Invocation<'a> {
        Invocation {
            script,
            source,
            keys: Vec::with_capacity(8),
            args: Vec::with_capacity(16),
        }
    }

    pub fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The same call for the client library's connection.
    pub fn library(&self) -> ScriptInvocation<'a> {
        let mut inv = self.script.prepare_invoke();
        for k in &self.keys {
            inv.key(k.as_slice());
        }
        for a in &self.args {
            inv.arg(a.as_slice());
        }
        inv
    }

    /// EVALSHA, encoded into `out`.
    fn write(&self, out: &mut BytesMut) {
        resp::array(out, 3 + self.keys.len() + self.args.len());
        resp::bulk(out, b"EVALSHA");
        resp::bulk(out, self.script.get_hash().as_bytes());
        resp::bulk(out, itoa::Buffer::new().format(self.keys.len()).as_bytes());
        self.keys
            .iter()
            .chain(&self.args)
            .for_each(|a| resp::bulk(out, a));
    }
}

/// One open connection's side that calls use.
pub struct Link {
    queue: Rc<Queue>,
    /// One per call written, in order: who waits for its reply.
    waiting: RefCell<VecDeque<oneshot::Sender<Answer>>>,
    /// When a reply last came.
    last_read: Cell<Instant>,
}

/// The connection and its calls; the engine holds one (`Rc`), its task keeps it open (`run`).
pub struct Calls {
    to: Plain,
    name: String,
    timeout: Duration,
    backoff_max: Duration,
    link: RefCell<Option<Rc<Link>>>,
}

impl Calls {
    pub fn new(to: Plain, name: String, timeout: Duration, backoff_max: Duration) -> Calls {
        Calls {
            to,
            name,
            timeout,
            backoff_max,
            link: RefCell::new(None),
        }
    }

    /// Runs a script (EVALSHA; after a `NOSCRIPT`, SCRIPT LOAD and EVALSHA again) whose reply
    /// is `N` integers.
    pub async fn script<const N: usize>(
        &self,
        inv: &Invocation<'_>,
    ) -> Result<[i64; N], CallError> {
        let answer = match self.round(|out| inv.write(out)).await? {
            // Not in Redis's script cache (restarted, or SCRIPT FLUSH): it did not run.
            Answer::Error(e) if e.starts_with(b"NOSCRIPT") => {
                let load: [&[u8]; 3] = [b"SCRIPT", b"LOAD", inv.source.as_bytes()];
                if let Answer::Error(e) = self.round(|out| resp::command(out, &load)).await? {
                    return Err(CallError::Refused(String::from_utf8_lossy(&e).into_owned()));
                }
                self.round(|out| inv.write(out)).await?
            }
            a => a,
        };
        ints(answer)
    }

    /// A command whose reply is `N` integers (`WAIT`).
    pub async fn command<const N: usize>(&self, args: &[&[u8]]) -> Result<[i64; N], CallError> {
        ints(self.round(|out| resp::command(out, args)).await?)
    }

    /// Writes one call and waits for its reply.
    async fn round(&self, write: impl FnOnce(&mut BytesMut)) -> Result<Answer, CallError> {
        let link = self.link.borrow().clone().ok_or(CallError::Down)?;
        if link.queue.is_closed() {
            return Err(CallError::Down);
        }
        let (tx, rx) = oneshot::channel();
        link.queue.write(write);
        link.waiting.borrow_mut().push_back(tx);
        let sent = Instant::now();
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(CallError::Dropped),
            Err(_) => {
                // Nothing at all came back since: the connection is silent, not Redis slow.
                if link.last_read.get() < sent {
                    tracing::warn!("the publish connection went silent; replacing it");
                    link.queue.close();
                }
                Err(CallError::Timeout)
            }
        }
    }

    /// The connection's task: opens it (again after a drop, with a backoff) and reads it.
    /// `first`: the connection `open` gave before the node took its first request.
    pub async fn run(self: Rc<Self>, mut first: Option<(Socket, Rc<Link>)>) {
        let mut wait = Duration::from_millis(100);
        loop {
            let open = match first.take() {
                Some(open) => Some(open),
                None => self.open().await,
            };
            if let Some((mut sock, link)) = open {
                wait = Duration::from_millis(100);
                let why = read(&mut sock, &link).await;
                self.link.borrow_mut().take();
                link.queue.close();
                // Every call in flight fails (`Dropped`).
                link.waiting.borrow_mut().clear();
                tracing::warn!(error = %why, "the publish connection to Redis dropped");
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.backoff_max);
        }
    }

    /// Opens the connection; calls go over it from now on.
    pub async fn open(&self) -> Option<(Socket, Rc<Link>)> {
        match Socket::connect(&self.to, &self.name, self.timeout).await {
            Ok(sock) => {
                let link = Rc::new(Link {
                    queue: sock.queue(),
                    waiting: RefCell::default(),
                    last_read: Cell::new(Instant::now()),
                });
                *self.link.borrow_mut() = Some(link.clone());
                Some((sock, link))
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the publish connection");
                None
            }
        }
    }
}

/// Reads replies and hands each to its call until the connection fails; says why.
async fn read(sock: &mut Socket, link: &Link) -> String {
    loop {
        if let Err(e) = sock.ready().await {
            return e.to_string();
        }
        loop {
            match sock.reader.answer() {
                Ok(Some(answer)) => {
                    link.last_read.set(Instant::now());
                    if let Some(call) = link.waiting.borrow_mut().pop_front() {
                        let _ = call.send(answer);
                    }
                }
                Ok(None) => break,
                Err(e) => return e.to_string(),
            }
        }
    }
}

fn ints<const N: usize>(answer: Answer) -> Result<[i64; N], CallError> {
    match answer {
        Answer::Error(e) => Err(CallError::Refused(String::from_utf8_lossy(&e).into_owned())),
        a => a.ints().ok_or(CallError::Unexpected),
    }
}
