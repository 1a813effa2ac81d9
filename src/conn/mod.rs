//! One WebSocket connection's bytes: the bounded outbound queue with coalesced writes, and the
//! inbound frame decoder.
//!
//! Owns the socket and what is buffered for it. It must not know rooms, users or the protocol's
//! JSON: decoded messages go to the shard through a callback, and frames to send arrive already
//! encoded. Everything here runs on the connection's shard thread (`Rc`/`Cell`, no locks).

mod decode;
mod io;
mod queue;

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::net::TcpStream;

pub use decode::Decoder;
pub use io::MemorySink;
pub use queue::{OutFrame, thread_queued_bytes};

use self::io::Io;
use self::queue::OutQueue;
use crate::auth::Identity;
use crate::core::bucket::{Buckets, Rates};
use crate::core::error::CloseCode;
use crate::core::rights::{Grants, Rights};
use crate::core::{ConnId, JoinGen, Name};
use crate::ws;

/// Bytes read per `read` call; a connection holds no read buffer between reads unless a frame
/// is cut in half.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// The shard thread's read buffer, shared by all its connections.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// A room a connection asked for (the client side's record, kept in `Conn` for locality). It
/// is `live` once its join is done and caught up: the hub then writes the room's messages to
/// it.
pub struct RoomEntry {
    pub room: Name,
    /// This join's generation: answers for an earlier join of the room are dropped.
    pub jgen: JoinGen,
    pub live: bool,
}

pub struct Conn {
    pub id: ConnId,
    pub user: Name,
    /// The token's `rooms` claim: what this connection may do in which rooms (`None`: no
    /// claim, every right). A `refresh` replaces it. A `Cell`, taken and put back to read: no
    /// borrow flag in every `Conn`.
    grants: Cell<Option<Grants>>,
    /// The token's `exp`, unix seconds (0: none); a `refresh` moves it. See `exp()`.
    exp: Cell<u64>,
    io: Io,
    /// permessage-deflate was negotiated: data frames with at least this many payload bytes go
    /// out compressed (`deflate::variant`), and compressed client messages are inflated.
    deflate_min: Option<u32>,
    /// The connection speaks `shardcast.proto`: text frames go out as binary `ServerFrame`s
    /// (`wire::variant`), and binary client frames are requests.
    proto: bool,
    out: RefCell<OutQueue>,
    read: RefCell<Decoder>,
    /// The client side's record of the rooms asked for (`shard::RoomEntry`), kept here for
    /// locality; this module never reads it.
    pub rooms: RefCell<Vec<RoomEntry>>,
    pub rate: Cell<Buckets>,
    /// Set once the connection is being closed; nothing more is queued after the close frame.
    closing: Cell<Option<CloseCode>>,
    /// The socket failed or the peer went away; the task ends without a closing handshake.
    broken: Cell<bool>,
    /// Removed from the shard's maps (rooms left, user unregistered).
    pub detached: Cell<bool>,
    /// In the shard's list of connections to flush at the end of this batch.
    pub dirty: Cell<bool>,
    /// The socket refused bytes; the task waits for it to become writable.
    want_write: Cell<bool>,
    /// Auto-joins still in flight. Nothing is written until they are done, so a client that
    /// has `welcome` is already in its rooms.
    pub hold: Cell<u32>,
    /// Inbound traffic since the last heartbeat tick, and ticks missed in a row.
    pub active: Cell<bool>,
    pub missed: Cell<u32>,
    kicked: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

/// What reading found.
pub enum Event<'a> {
    /// A complete text message, its UTF-8 checked.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    /// A message over `max_message_size` was discarded.
    TooLarge,
    /// The client sent a close frame.
    Close,
}

/// What a connection's decoder enforces. Fixed when the connection is made: the bytes that
/// arrived with the handshake are decoded before the socket is first read.
#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    /// `max_message_size`: a bigger message is skipped (`Event::TooLarge`).
    pub max_message: usize,
    /// A frame over this closes the connection (1009).
    pub hard_limit: u64,
}

impl FrameLimits {
    pub fn of(config: &crate::config::Config) -> FrameLimits {
        FrameLimits {
            max_message: config.max_message_size,
            hard_limit: config.hard_frame_limit(),
        }
    }
}

pub enum ReadStatus {
    /// Read what there was; wait for more.
    Open,
    /// The peer closed the TCP connection.
    Eof,
}

impl Conn {
    pub fn new(
        id: ConnId,
        stream: TcpStream,
        identity: &Identity,
        rates: &Rates,
        limits: FrameLimits,
    ) -> Conn {
        Conn::with_io(id, Io::Tcp(stream), identity, rates, limits)
    }

    /// A connection whose output goes to `sink` and which never has input.
    pub fn in_memory(
        id: ConnId,
        sink: MemorySink,
        identity: &Identity,
        rates: &Rates,
        limits: FrameLimits,
    ) -> Conn {
        Conn::with_io(id, Io::Memory(Box::new(sink)), identity, rates, limits)
    }

    fn with_io(
        id: ConnId,
        io: Io,
        identity: &Identity,
        rates: &Rates,
        limits: FrameLimits,
    ) -> Conn {
        Conn {
            id,
            user: identity.user.clone(),
            grants: Cell::new(identity.rooms.clone()),
            exp: Cell::new(identity.exp.unwrap_or(0)),
            io,
            deflate_min: None,
            proto: false,
            out: RefCell::default(),
            read: RefCell::new(Decoder::new(limits.max_message, limits.hard_limit)),
            rooms: RefCell::default(),
            rate: Cell::new(Buckets::full(rates)),
            closing: Cell::new(None),
            broken: Cell::new(false),
            detached: Cell::new(false),
            dirty: Cell::new(false),
            want_write: Cell::new(false),
            hold: Cell::new(0),
            active: Cell::new(true),
            missed: Cell::new(0),
            kicked: Cell::new(false),
            waker: Cell::new(None),
        }
    }

    /// The token's `exp`, unix seconds, if it has one.
    pub fn exp(&self) -> Option<u64> {
        Some(self.exp.get()).filter(|&e| e != 0)
    }

    /// Whether the expiry passed more than `grace` seconds before `now_s`. Saturating: an
    /// `exp` near 2^64 is a connection that never expires, not one that wrapped into the past.
    pub fn expired(&self, now_s: u64, grace: u64) -> bool {
        self.exp()
            .is_some_and(|exp| exp.saturating_add(grace) <= now_s)
    }

    /// A `refresh` moved the expiry (`None`: the new token has none).
    pub fn set_exp(&self, exp: Option<u64>) {
        self.exp.set(exp.unwrap_or(0));
    }

    /// What the token's `rooms` claim grants in `room`; `None` when the token has no claim.
    pub fn granted(&self, room: &str) -> Option<Rights> {
        let grants = self.grants.take();
        let rights = grants.as_ref().map(|g| g.rights(room));
        self.grants.set(grants);
        rights
    }

    /// What the connection may do in `room` as far as its token goes: every right without a
    /// `rooms` claim.
    pub fn rights(&self, room: &str) -> Rights {
        self.granted(room).unwrap_or(Rights::ALL)
    }

    /// A `refresh` replaced the `rooms` claim.
    pub fn set_grants(&self, grants: Option<Grants>) {
        self.grants.set(grants);
    }

    /// The connection negotiated permessage-deflate; `min` is `compression_min_bytes`.
    pub fn deflating(mut self, min: usize) -> Conn {
        self.deflate_min = Some(u32::try_from(min).unwrap_or(u32::MAX));
        self.read.get_mut().inflate = true;
        self
    }

    /// The connection negotiated `shardcast.proto`.
    pub fn speaking_proto(mut self) -> Conn {
        self.proto = true;
        self
    }

    /// Whether the connection speaks `shardcast.proto` (binary frames) rather than JSON.
    pub fn proto(&self) -> bool {
        self.proto
    }

    /// What this connection is sent for `frame`: the frame, or its binary and/or compressed
    /// variant (each computed once per frame on this thread, whatever the number of members).
    fn outgoing(&self, frame: OutFrame) -> OutFrame {
        let frame = if self.proto {
            crate::wire::variant(&frame)
        } else {
            frame
        };
        match self.deflate_min {
            None => frame,
            Some(min) => crate::deflate::variant(&frame, min as usize),
        }
    }

    pub fn closing(&self) -> Option<CloseCode> {
        self.closing.get()
    }

    /// Queues a frame; returns the unsent bytes now queued.
    pub fn push(&self, frame: OutFrame) -> usize {
        let frame = self.outgoing(frame);
        self.out.borrow_mut().push(frame)
    }

    /// Queues `frame` with `head`, bytes that must leave before it (the handshake's 101), in
    /// front of it: one queued item, so `push_after_first` still goes behind `frame`.
    pub fn push_behind(&self, head: Bytes, frame: OutFrame) -> usize {
        if head.is_empty() {
            return self.push(frame);
        }
        let frame = self.outgoing(frame);
        self.out.borrow_mut().push_behind(&head, &frame)
    }

    /// Queues `frame` right behind the first frame (the `welcome`). Only while writes are held
    /// (`hold`), so the first frame has not been written.
    pub fn push_after_first(&self, frame: OutFrame) {
        let frame = self.outgoing(frame);
        self.out.borrow_mut().push_after_first(frame);
    }

    /// Replaces the first frame (the `welcome`) while writes are held (`hold`).
    pub fn replace_first(&self, frame: OutFrame) {
        let frame = self.outgoing(frame);
        self.out.borrow_mut().replace_first(&frame);
    }

    pub fn queued_bytes(&self) -> usize {
        self.out.borrow().bytes()
    }

    /// Starts closing: drops unsent frames (keeping a half-written one, so the stream stays
    /// well-formed), queues the close frame and wakes the task to flush it.
    pub fn begin_close(&self, code: CloseCode) {
        self.begin_close_with(code, None);
    }

    /// `begin_close` with a reason other than the code's own (at most 123 bytes are sent).
    pub fn begin_close_with(&self, code: CloseCode, reason: Option<&str>) {
        if self.closing.get().is_some() {
            return;
        }
        self.closing.set(Some(code));
        self.hold.set(0);
        // An unsent 101 (it leaves with `welcome`, see `push_behind`) still goes, alone: the
        // client cannot read the close frame without it.
        let close = ws::close_frame(code.code(), reason.unwrap_or(code.reason()));
        self.out.borrow_mut().replace_with(close);
        self.kick();
    }

    /// Writes what is queued, without blocking (see `OutQueue::write_to`). A refused write
    /// leaves the rest for the task to flush once the socket is writable.
    pub fn flush(&self) {
        if self.hold.get() > 0 || self.broken.get() {
            return;
        }
        match self.out.borrow_mut().write_to(&self.io) {
            Ok(true) => self.want_write.set(false),
            Ok(false) => {
                if !self.want_write.replace(true) {
                    self.kick();
                }
            }
            Err(_) => {
                self.broken.set(true);
                self.kick();
            }
        }
    }

    /// Reads what the socket has and hands each complete message to `on`.
    pub fn read_ready(&self, on: &mut dyn FnMut(Event<'_>)) -> Result<ReadStatus, CloseCode> {
        let mut guard = self.read.borrow_mut();
        let dec = &mut *guard;
        SCRATCH.with_borrow_mut(|scratch| {
            if dec.closed || dec.failed {
                // After the client's close frame, or bad framing, input is only read (and
                // dropped) to see EOF.
                return match self.io.try_read(scratch) {
                    Ok(0) => Ok(ReadStatus::Eof),
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => Ok(ReadStatus::Eof),
                    _ => Ok(ReadStatus::Open),
                };
            }
            // Bounded so one busy connection cannot starve the rest of the shard.
            for _ in 0..4 {
                let n = match self.io.try_read(scratch) {
                    Ok(0) => return Ok(ReadStatus::Eof),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return Ok(ReadStatus::Open);
                    }
                    Err(_) => return Ok(ReadStatus::Eof),
                };
                self.active.set(true);
                dec.feed(&mut scratch[..n], on)?;
                if dec.closed || n < scratch.len() {
                    break;
                }
            }
            Ok(ReadStatus::Open)
        })
    }

    /// Decodes bytes that arrived with the HTTP upgrade request.
    pub fn preload(&self, bytes: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), CloseCode> {
        self.read
            .borrow_mut()
            .guard(|dec| dec.decode_owned(bytes.to_vec(), on))
    }

    /// Completes when the shard has something for the task to look at (a close, a blocked
    /// write, a broken socket).
    pub async fn kicked(&self) {
        std::future::poll_fn(|cx| self.poll_kicked(cx)).await
    }

    /// `kicked` for a hand-written task: `Ready` takes the kick; `Pending` leaves the waker.
    pub fn poll_kicked(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.kicked.replace(false) {
            Poll::Ready(())
        } else {
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }

    fn kick(&self) {
        self.kicked.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The client has sent its close frame.
    pub fn peer_closed(&self) -> bool {
        self.read.borrow().closed
    }

    /// The client's framing was refused: its close frame could not be found in what follows.
    pub fn read_failed(&self) -> bool {
        self.read.borrow().failed
    }

    /// The task's view: is there anything left to do on this socket?
    pub fn is_broken(&self) -> bool {
        self.broken.get()
    }

    pub fn wants_write(&self) -> bool {
        self.want_write.get()
    }

    pub fn has_unsent(&self) -> bool {
        !self.out.borrow().is_empty()
    }

    /// The TCP socket, for waiting on readiness; `None` for an in-memory connection.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.io {
            Io::Tcp(s) => Some(s),
            Io::Memory(_) => None,
        }
    }

    /// The in-memory sink, for a connection made with `in_memory`.
    pub fn memory(&self) -> Option<&MemorySink> {
        match &self.io {
            Io::Memory(m) => Some(m),
            Io::Tcp(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    #[test]
    fn a_connection_closed_before_its_first_write_still_gets_its_101() {
        let head = Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        let sink = MemorySink {
            kept: Some(Default::default()),
            ..MemorySink::default()
        };
        let identity = Identity {
            user: Name::new("bo").unwrap(),
            rooms: None,
            exp: None,
            info: None,
        };
        let limits = FrameLimits {
            max_message: 100,
            hard_limit: 1600,
        };
        let rates = crate::config::Config::default().rates();
        let conn = Conn::in_memory(ConnId::new(0, 0, 1), sink, &identity, &rates, limits);
        conn.hold.set(1);
        conn.push_behind(head.clone(), Rc::new(Bytes::from_static(b"\x81\x02{}")));
        conn.begin_close(CloseCode::Internal);
        conn.flush();
        let kept = conn.memory().unwrap().written();
        assert!(kept.starts_with(&head), "the 101 first");
        let rest = &kept[head.len()..];
        assert_eq!(
            rest[0], 0x88,
            "then the close, not the frame queued behind the 101"
        );
        assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), 1011);
    }

    #[test]
    fn expiry_arithmetic_saturates() {
        let identity = |exp| Identity {
            user: Name::new("bo").unwrap(),
            rooms: None,
            exp,
            info: None,
        };
        let limits = FrameLimits {
            max_message: 100,
            hard_limit: 1600,
        };
        let conn = |exp| {
            let sink = MemorySink::default();
            let rates = crate::config::Config::default().rates();
            Conn::in_memory(ConnId::new(0, 0, 1), sink, &identity(exp), &rates, limits)
        };
        let now = 1_800_000_000;
        assert!(!conn(Some(u64::MAX)).expired(now, 30));
        assert!(!conn(Some(u64::MAX)).expired(u64::MAX - 1, u64::MAX));
        assert!(!conn(Some(now - 29)).expired(now, 30), "inside the grace");
        assert!(conn(Some(now - 30)).expired(now, 30));
        assert!(!conn(Some(now - 30)).expired(now, u64::MAX));
        assert!(!conn(None).expired(u64::MAX, 0), "no exp: never");
    }

    /// An `Rc<Conn>` (16 more bytes) must stay in mimalloc's 320-byte class: every idle
    /// connection holds one (docs/performance-log.md, memory per idle connection).
    #[test]
    fn conn_stays_small() {
        assert!(std::mem::size_of::<Conn>() + 16 <= 320);
        assert!(std::mem::size_of::<Buckets>() <= 16);
    }
}
