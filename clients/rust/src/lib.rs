//! A Rust client for shardcast (docs/protocol.md): on tokio, speaking `shardcast.json` or
//! `shardcast.proto`, with what the JavaScript client does for an application:
//!
//! - `ws://` or `wss://` (rustls, webpki-roots and [`Options::extra_ca_pem`]);
//! - **reconnect** with jittered exponential backoff, by the close-code table (4000–4499 and
//!   1xxx reconnect; 1000, 4001 and 4500–4999 stop, unless [`Options::get_token`] gives a new
//!   token);
//! - **recovery**: each room is rejoined with `since` = the last seq seen, the inbox is synced
//!   from the last inbox seq, duplicates are dropped by seq, and [`Event::Connected`] says per
//!   room whether it was `recovered`;
//! - **the outbox**: every [`Client::publish`] and [`Client::send`] carries an idempotency key
//!   and is sent again, with it, after each reconnect until it is answered; at most one per
//!   room (per recipient) is on the wire, so a refusal (`rate_limited`, `unavailable`: retried
//!   after a backoff) is never overtaken; a `dup` ack is an ack;
//! - a **timeout** per request ([`Options::request_timeout`]): a reply that does not come
//!   fails with [`Error::Timeout`] (the outbox's excepted).
//!
//! ```no_run
//! # async fn demo() -> Result<(), shardcast_client::Error> {
//! use shardcast_client::{Auth, Body, Client, Event, Format, Options};
//!
//! let opts = Options::new("ws://127.0.0.1:8080/ws", Auth::Dev("alice".into()))
//!     .format(Format::Proto);
//! let (client, mut events) = Client::connect(opts);
//! client.join("lobby").await?;
//! let ack = client.publish("lobby", Body::text("hi")).await?;
//! println!("stored as seq {:?}", ack.seq);
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("{}: {:?}", m.from, m.body);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The wire forms alone (no socket, no state) are in [`codec`], for callers with their own
//! transport. The protobuf types are prost's code for `proto/shardcast.proto`, the same file
//! the server compiles (included by path, so the client does not depend on the server crate).

mod body;
pub mod codec;
mod driver;
mod error;
mod event;
mod tls;

/// prost's code for `proto/shardcast.proto`: the server's committed file, included as it is.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
#[path = "../../../src/wire/schema.rs"]
pub mod schema;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

pub use body::{Body, BodyRef, RawBody};
pub use codec::Format;
pub use error::Error;
pub use event::{Ack, Event, JoinAck, Message, Page, Presence, Recovery, RoomRecovery};

use codec::{Frame, Request};
use driver::{Command, Entry, Target};

/// How the client proves who it is (docs/protocol.md, "Connecting").
#[derive(Clone, Debug)]
pub enum Auth {
    /// Dev mode: `?user=<id>` (servers without JWT keys, on loopback).
    Dev(String),
    /// A JWT on the URL: `?token=<jwt>`.
    Token(String),
    /// A JWT in the first frame (`connect`), for servers with `first_frame_auth`: keeps the
    /// token out of URLs and proxy logs.
    FirstFrame(String),
}

/// The reconnect delays: `initial × factor^attempt`, capped at `max`, the upper `jitter`
/// fraction drawn at random so that clients dropped together come back spread out.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    pub jitter: f64,
}

impl Default for Backoff {
    /// 500 ms, doubling, up to 30 s, half of it random: the JavaScript client's.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .max
            .as_secs_f64()
            .min(self.initial.as_secs_f64() * self.factor.powi(attempt.min(64) as i32));
        let random = random_unit();
        Duration::from_secs_f64(ceiling * (1.0 - self.jitter) + ceiling * self.jitter * random)
    }
}

/// A number in [0, 1) from the clock and a counter: enough to spread reconnects, no
/// dependency.
fn random_unit() -> f64 {
    static N: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let x = splitmix(t ^ N.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What [`Options::get_token`] returns: a new token, or why there is none.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// The application's way to get a new token (the JS client's `getToken`).
#[derive(Clone)]
pub struct GetToken(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl std::fmt::Debug for GetToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GetToken(..)")
    }
}

impl GetToken {
    pub(crate) async fn call(&self) -> Result<String, String> {
        (self.0)().await
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Options {
    /// `ws://host:port/ws` or `wss://host:port/ws` (the credentials are added by [`Auth`]).
    pub url: String,
    pub auth: Auth,
    pub format: Format,
    pub backoff: Backoff,
    /// How long a connect (TCP, TLS, handshake, `welcome`) may take, and how long a request
    /// outside the outbox waits for its reply before it fails with [`Error::Timeout`] (the
    /// JS client's `requestTimeout`; a `publish` or `send` has none: the outbox sends it until
    /// it is answered).
    pub request_timeout: Duration,
    /// The server's heartbeat (its `heartbeat_ms`, default 25 s): a connection that hears
    /// nothing for two of them is taken for dead and reopened.
    pub heartbeat_ms: u64,
    /// Called for a new token when the server closes with 4001 (the token expired), refuses
    /// the handshake with 401, or closes with a code that says not to reconnect: a new token
    /// (one that differs from the last) reconnects, else the client stops (as the JS client).
    pub get_token: Option<GetToken>,
    /// PEM certificates trusted for `wss://` besides the public web roots (webpki-roots): a
    /// server behind a private CA.
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl Options {
    /// JSON frames, the default backoff, a 10 s connect timeout, a 25 s heartbeat.
    pub fn new(url: impl Into<String>, auth: Auth) -> Options {
        Options {
            url: url.into(),
            auth,
            format: Format::Json,
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(10),
            heartbeat_ms: 25_000,
            get_token: None,
            extra_ca_pem: None,
        }
    }

    /// See [`Options::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Options {
        self.request_timeout = timeout;
        self
    }

    /// See [`Options::get_token`]: `f` is called each time a new token is needed.
    pub fn get_token<F, Fut>(mut self, f: F) -> Options
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.get_token = Some(GetToken(Arc::new(move || Box::pin(f()))));
        self
    }

    /// See [`Options::extra_ca_pem`].
    pub fn extra_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Options {
        self.extra_ca_pem = Some(pem.into());
        self
    }

    /// The wire form to ask for.
    pub fn format(mut self, format: Format) -> Options {
        self.format = format;
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Options {
        self.backoff = backoff;
        self
    }
}

/// The application's handle on one logical connection (reconnected underneath as needed).
/// Cheap to clone; the connection closes when the last handle is dropped or [`Client::close`]
/// is called. Every request is queued when it is called, so requests keep the order of the
/// calls even when their futures are not awaited.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    format: Format,
    timeout: Duration,
    /// The token a `refresh` was accepted with: later reconnects use it.
    token: driver::TokenCell,
    next_id: AtomicU64,
    /// Makes keys unique across clients of one process started in the same millisecond.
    key_seed: u64,
}

/// The events of a [`Client`], in order. Read them: they are buffered without bound.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event if one is ready now.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// The reply to a request: a future that resolves when the server answers, or with
/// [`Error::Timeout`] once [`Options::request_timeout`] has passed since the call (outbox
/// requests excepted). Dropping it does not cancel the request (an outbox entry is still sent
/// until it is answered).
pub struct Reply<T> {
    rx: oneshot::Receiver<Result<T, Error>>,
    /// The timeout and when it ends; the timer is made at the first poll that needs it.
    deadline: Option<(Duration, Instant)>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Reply<T> {
    fn new(rx: oneshot::Receiver<Result<T, Error>>, timeout: Option<Duration>) -> Reply<T> {
        Reply {
            rx,
            deadline: timeout.map(|t| (t, Instant::now() + t)),
            timer: None,
        }
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = Pin::new(&mut self.rx).poll(cx) {
            return Poll::Ready(
                r.unwrap_or_else(|_| Err(Error::Closed("the client stopped".into()))),
            );
        }
        let Some((timeout, at)) = self.deadline else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer
            .as_mut()
            .poll(cx)
            .map(|()| Err(Error::Timeout(timeout)))
    }
}

impl Client {
    /// Starts the connection task (on the current tokio runtime) and returns the handle and
    /// its events. It connects at once, and keeps reconnecting until closed or told to stop.
    pub fn connect(opts: Options) -> (Client, Events) {
        let (ctx, crx) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let format = opts.format;
        let timeout = opts.request_timeout;
        let token = driver::TokenCell::default();
        tokio::spawn(driver::Driver::new(opts, crx, etx, token.clone()).run());
        let client = Client {
            inner: Arc::new(Inner {
                commands: ctx,
                format,
                timeout,
                token,
                next_id: AtomicU64::new(1),
                key_seed: random_unit().to_bits(),
            }),
        };
        (client, Events { rx: erx })
    }

    /// Joins `room`. It is rejoined after every reconnect with `since` = the last seq seen, so
    /// nothing sent meanwhile is missed (as long as the room keeps it).
    pub fn join(&self, room: &str) -> Reply<JoinAck> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Join {
            room: room.to_string(),
            done: tx,
        });
        self.reply(rx)
    }

    /// Leaves `room`; it is no longer rejoined.
    pub fn leave(&self, room: &str) -> Reply<()> {
        let (id, frame) = self.encode(&Request::Leave { room });
        let (done, rx) = reply(|_| Ok(()));
        self.command(Command::Leave {
            room: room.to_string(),
            id,
            frame,
            done,
        });
        self.reply(rx)
    }

    /// Publishes `body` to `room` through the outbox, with a fresh key. Resolves with the ack
    /// (`dup` when an earlier send of it had been stored), or an error the server gave for
    /// good (not `rate_limited` or `unavailable`, which are retried).
    pub fn publish(&self, room: &str, body: Body) -> Reply<Ack> {
        let key = self.new_key();
        self.publish_with_key(room, body, &key)
    }

    /// [`Client::publish`] with the caller's key (1–64 printable ASCII, unique per message).
    pub fn publish_with_key(&self, room: &str, body: Body, key: &str) -> Reply<Ack> {
        let req = Request::Publish {
            room,
            body: body.as_ref(),
            key: Some(key),
        };
        self.outbox(Target::Room(room.to_string()), &req)
    }

    /// Sends `body` to user `to` through the outbox (see [`Client::publish`]).
    pub fn send(&self, to: &str, body: Body) -> Reply<Ack> {
        let key = self.new_key();
        let req = Request::Send {
            to,
            body: body.as_ref(),
            key: Some(&key),
        };
        self.outbox(Target::User(to.to_string()), &req)
    }

    /// One page of `room`'s history, newest first, below `before`.
    pub fn history(&self, room: &str, before: Option<u64>, limit: Option<u64>) -> Reply<Page> {
        let req = Request::History {
            room,
            before,
            limit,
            fold: false,
        };
        self.request(&req, |f| {
            Ok(Page {
                more: f.more,
                messages: f
                    .messages
                    .into_iter()
                    .flatten()
                    .map(Message::from_frame)
                    .collect(),
            })
        })
    }

    /// One page of who is in `room`.
    pub fn presence(&self, room: &str, after: Option<&str>, limit: Option<u64>) -> Reply<Presence> {
        self.request(&Request::Presence { room, after, limit }, |f| {
            Ok(Presence {
                mode: f.mode.map(|m| m.into_owned()).unwrap_or_default(),
                users: f
                    .users
                    .into_iter()
                    .flatten()
                    .map(|u| u.into_owned())
                    .collect(),
                members: f.members,
                more: f.more,
            })
        })
    }

    /// A signal (typing…) to `room`: relayed live, never stored.
    pub fn signal(&self, room: &str, body: Body) -> Reply<Ack> {
        self.ack(&Request::Signal {
            room,
            body: body.as_ref(),
        })
    }

    /// Marks `room` (or the inbox, with `None`) read up to `seq`.
    pub fn read(&self, room: Option<&str>, seq: u64) -> Reply<Ack> {
        self.ack(&Request::Read { room, seq })
    }

    /// Replaces the body of our message `target` in `room`.
    pub fn edit(&self, room: &str, target: u64, body: Body) -> Reply<Ack> {
        self.ack(&Request::Edit {
            room,
            target,
            body: body.as_ref(),
        })
    }

    /// Deletes our message `target` in `room`.
    pub fn delete(&self, room: &str, target: u64) -> Reply<Ack> {
        self.ack(&Request::Delete { room, target })
    }

    /// Adds (`on`) or removes a reaction `emoji` to message `target` in `room`.
    pub fn react(&self, room: &str, target: u64, emoji: &str, on: bool) -> Reply<Ack> {
        self.ack(&if on {
            Request::React {
                room,
                target,
                emoji,
            }
        } else {
            Request::Unreact {
                room,
                target,
                emoji,
            }
        })
    }

    /// Sends a new `token` for this connection's user (docs/protocol.md, `refresh`); resolves
    /// with its `exp`. On success it is also the token of later reconnects. Rooms its `rooms`
    /// claim leaves out are left, each with an [`Event::Removed`].
    pub fn refresh(&self, token: &str) -> Reply<Option<u64>> {
        let cell = self.inner.token.clone();
        let new = token.to_string();
        self.request(&Request::Refresh { token }, move |f| {
            cell.set(new);
            Ok(f.exp)
        })
    }

    /// A `ping`, answered with `pong`.
    pub fn ping(&self) -> Reply<()> {
        self.request(&Request::Ping, |_| Ok(()))
    }

    /// Closes the connection for good; what is still waiting fails with [`Error::Closed`].
    pub fn close(&self) {
        let _ = self.inner.commands.send(Command::Close);
    }

    fn command(&self, cmd: Command) {
        // A stopped driver has failed everything; the reply's sender is dropped with `cmd`.
        let _ = self.inner.commands.send(cmd);
    }

    fn encode(&self, req: &Request<'_>) -> (u64, Bytes) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::new();
        codec::encode(self.inner.format, Some(id), req, &mut buf);
        (id, buf.into())
    }

    fn ack(&self, req: &Request<'_>) -> Reply<Ack> {
        self.request(req, |f| Ok(Ack::from_frame(&f)))
    }

    fn request<T: Send + 'static>(
        &self,
        req: &Request<'_>,
        map: impl for<'a> FnOnce(Frame<'a>) -> Result<T, Error> + Send + 'static,
    ) -> Reply<T> {
        let (id, frame) = self.encode(req);
        let (done, rx) = reply(map);
        self.command(Command::Request { id, frame, done });
        self.reply(rx)
    }

    /// A reply that times out after [`Options::request_timeout`].
    fn reply<T>(&self, rx: oneshot::Receiver<Result<T, Error>>) -> Reply<T> {
        Reply::new(rx, Some(self.inner.timeout))
    }

    /// The outbox's: no timeout, it is sent until it is answered (as the JS client's).
    fn outbox(&self, target: Target, req: &Request<'_>) -> Reply<Ack> {
        let (id, frame) = self.encode(req);
        let (tx, rx) = oneshot::channel();
        self.command(Command::Outbox(Entry::new(id, target, frame, tx)));
        Reply::new(rx, None)
    }

    /// A fresh key: 26 characters like a ULID (ms time, then random), unique per client.
    pub fn new_key(&self) -> String {
        const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let n = self.inner.next_id.load(Ordering::Relaxed);
        let mut r = splitmix(self.inner.key_seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let r2 = splitmix(r ^ random_unit().to_bits());
        let mut out = String::with_capacity(26);
        for i in (0..10).rev() {
            out.push(CROCKFORD[((ms >> (5 * i)) & 31) as usize] as char);
        }
        for i in 0..16 {
            if i == 12 {
                r = r2;
            }
            out.push(CROCKFORD[(r & 31) as usize] as char);
            r >>= 5;
        }
        out
    }
}

/// A request's completion: `map` turns the reply frame into `T`.
fn reply<T: Send + 'static>(
    map: impl for<'a> FnOnce(Frame<'a>) -> Result<T, Error> + Send + 'static,
) -> (driver::Done, oneshot::Receiver<Result<T, Error>>) {
    let (tx, rx) = oneshot::channel();
    let done: driver::Done = Box::new(move |r: Result<Frame<'_>, Error>| {
        let _ = tx.send(r.and_then(map));
    });
    (done, rx)
}
