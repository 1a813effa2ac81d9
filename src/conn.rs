//! One WebSocket connection's bytes: the bounded outbound queue with coalesced writes, and the
//! inbound frame decoder.
//!
//! Owns the socket and what is buffered for it. It must not know rooms, users or the protocol's
//! JSON: decoded messages go to the shard through a callback, and frames to send arrive already
//! encoded. Everything here runs on the connection's shard thread (`Rc`/`Cell`, no locks).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read};
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::auth::Identity;
use crate::core::ConnId;
use crate::core::Name;
use crate::core::error::CloseCode;
use crate::ws::{self, Header};

/// Most frames gathered into one `writev`.
const MAX_IOV: usize = 64;
/// Bytes read per `read` call; a connection holds no read buffer between reads unless a frame
/// is cut in half.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// The shard thread's read buffer, shared by all its connections.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
    /// Unsent bytes over every connection of this thread: kept as queues grow and shrink, so
    /// the shard can hold them to its share of `max_total_queue_bytes` without a scan.
    static QUEUED: Cell<usize> = const { Cell::new(0) };
}

/// Unsent bytes over every connection of the calling (shard) thread.
pub fn thread_queued_bytes() -> usize {
    QUEUED.get()
}

/// A frame queued for one socket. The `Rc` is per shard: the bytes are shared with every other
/// recipient, and cloning costs one non-atomic increment.
pub type OutFrame = Rc<Bytes>;

/// Dropping it gives its unsent bytes back to the thread's tally.
#[derive(Default)]
struct OutQueue {
    frames: VecDeque<OutFrame>,
    /// Unsent bytes in `frames`, counting from `head_sent`.
    bytes: usize,
    /// Bytes of the first frame already written.
    head_sent: usize,
}

/// A connection's two rate limits, refilled from one clock reading: a token bucket of requests
/// (`publish_rate`: publish, send, history, sync, presence, refresh) and a budget of stored
/// messages read (`read_rate`: join replays, history, sync, the inbox at connect). 16 bytes (an
/// `Instant` alone is 16): it is in every `Conn`.
#[derive(Clone, Copy)]
pub struct Buckets {
    requests: f32,
    /// Goes below zero: a read is charged when its answer comes, for what it returned, and
    /// the next one waits until this is back to zero (a debt, paid off at `read_rate`).
    reads: f32,
    /// Microseconds since `epoch()`.
    last: u64,
}

/// The rates and bursts of a connection's `Buckets`.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub requests: u32,
    pub request_burst: u32,
    /// Stored messages per second.
    pub reads: u32,
    pub read_burst: u32,
}

impl Rates {
    pub fn of(config: &crate::config::Config) -> Rates {
        Rates {
            requests: config.publish_rate,
            request_burst: config.publish_burst,
            reads: config.read_rate,
            read_burst: config.read_burst,
        }
    }
}

/// The process's clock origin for `Buckets`.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn micros_now() -> u64 {
    epoch().elapsed().as_micros() as u64
}

impl Buckets {
    pub fn full(rates: &Rates) -> Buckets {
        Buckets {
            requests: rates.request_burst as f32,
            reads: rates.read_burst as f32,
            last: micros_now(),
        }
    }

    /// Adds what both buckets earned since the last call (one clock read).
    fn refill(&mut self, r: &Rates) {
        let now = micros_now();
        let secs = now.saturating_sub(self.last) as f64 / 1e6;
        let fill = |have: f32, rate: u32, burst: u32| {
            (have as f64 + secs * rate as f64).min(burst as f64) as f32
        };
        self.requests = fill(self.requests, r.requests, r.request_burst);
        self.reads = fill(self.reads, r.reads, r.read_burst);
        self.last = now;
    }

    /// Takes one request token if there is one.
    pub fn take_request(&mut self, r: &Rates) -> bool {
        self.refill(r);
        let ok = self.requests >= 1.0;
        if ok {
            self.requests -= 1.0;
        }
        ok
    }

    /// Whether a read may start: the read budget is not in debt.
    pub fn may_read(&mut self, r: &Rates) -> bool {
        self.refill(r);
        self.reads >= 0.0
    }

    /// A read returned `messages` stored messages.
    pub fn charge_reads(&mut self, r: &Rates, messages: usize) {
        self.refill(r);
        self.reads -= messages as f32;
    }
}

/// The HTTP 101 response at the front of `frame`, if it carries one. A server's WebSocket frame
/// never starts with `H` (0x48 would be a fragmented, compressed close).
fn unsent_101(frame: &Bytes) -> Option<Bytes> {
    if !frame.starts_with(b"HTTP/1.1 101 ") {
        return None;
    }
    let end = frame.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(frame.slice(..end))
}

/// Where a connection's bytes go: a TCP socket, or memory (benchmarks and unit tests drive the
/// shard's real fan-out and coalescing path through it).
enum Io {
    Tcp(TcpStream),
    Memory(Box<MemorySink>),
}

/// Counts what a connection would have written, and keeps the bytes if asked to.
#[derive(Default)]
pub struct MemorySink {
    pub writes: Cell<usize>,
    pub bytes: Cell<usize>,
    pub kept: Option<RefCell<Vec<u8>>>,
    /// Test-only: the next write panics (a bug inside a flush).
    #[cfg(test)]
    pub panic_next: Cell<bool>,
}

impl MemorySink {
    /// A copy of the bytes written, for a sink made with `kept`.
    pub fn written(&self) -> Vec<u8> {
        self.kept
            .as_ref()
            .map(|k| k.borrow().clone())
            .unwrap_or_default()
    }

    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> usize {
        #[cfg(test)]
        if self.panic_next.replace(false) {
            panic!("injected: a write panics");
        }
        let n: usize = iov.iter().map(|s| s.len()).sum();
        self.writes.set(self.writes.get() + 1);
        self.bytes.set(self.bytes.get() + n);
        if let Some(kept) = &self.kept {
            let mut kept = kept.borrow_mut();
            iov.iter().for_each(|s| kept.extend_from_slice(s));
        }
        n
    }
}

impl Io {
    /// `sendmsg`, not `writev`: the socket call skips the VFS layer (~5% of a loopback write).
    fn try_write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => s.try_io(Interest::WRITABLE, || SockRef::from(s).send_vectored(iov)),
            Io::Memory(m) => Ok(m.write_vectored(iov)),
        }
    }

    /// Reads once. A short read means the socket is drained, so it also clears tokio's
    /// readiness: the task then sleeps until new data instead of making a second `recv` only to
    /// be told `WouldBlock`. (tokio clears readiness only if no new event arrived meanwhile.)
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => {
                let mut got = 0;
                let r = s.try_io(Interest::READABLE, || {
                    got = (&*SockRef::from(s)).read(buf)?;
                    if got > 0 && got < buf.len() {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(got)
                    }
                });
                match r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
                    r => r,
                }
            }
            Io::Memory(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

pub struct Conn {
    pub id: ConnId,
    pub user: Name,
    /// The token's `rooms` claim: the only rooms this connection may join (`None`: any). A
    /// `refresh` replaces it. A `Cell`, taken and put back to read: no borrow flag in every
    /// `Conn`.
    allowed_rooms: Cell<Option<Box<[Name]>>>,
    /// The token's `exp`, unix seconds (0: none); a `refresh` moves it. See `exp()`.
    exp: Cell<u64>,
    io: Io,
    /// permessage-deflate was negotiated: data frames with at least this many payload bytes go
    /// out compressed (`deflate::variant`), and compressed client messages are inflated.
    deflate_min: Option<u32>,
    out: RefCell<OutQueue>,
    read: RefCell<Decoder>,
    /// The client side's record of the rooms asked for (`shard::RoomEntry`), kept here for
    /// locality; this module never reads it.
    pub rooms: RefCell<Vec<crate::shard::RoomEntry>>,
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
            allowed_rooms: Cell::new(identity.rooms.clone().map(Vec::into_boxed_slice)),
            exp: Cell::new(identity.exp.unwrap_or(0)),
            io,
            deflate_min: None,
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

    /// Whether the token's `rooms` claim allows `room` (no claim: any room).
    pub fn may_join(&self, room: &Name) -> bool {
        let allowed = self.allowed_rooms.take();
        let ok = allowed.as_ref().is_none_or(|rooms| rooms.contains(room));
        self.allowed_rooms.set(allowed);
        ok
    }

    /// A `refresh` replaced the `rooms` claim.
    pub fn allow_rooms(&self, rooms: Option<Vec<Name>>) {
        self.allowed_rooms.set(rooms.map(Vec::into_boxed_slice));
    }

    /// The connection negotiated permessage-deflate; `min` is `compression_min_bytes`.
    pub fn deflating(mut self, min: usize) -> Conn {
        self.deflate_min = Some(u32::try_from(min).unwrap_or(u32::MAX));
        self.read.get_mut().inflate = true;
        self
    }

    /// What this connection is sent for `frame`: the frame, or its compressed variant.
    fn outgoing(&self, frame: OutFrame) -> OutFrame {
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
        let mut out = self.out.borrow_mut();
        out.grow(frame.len());
        out.frames.push_back(frame);
        out.bytes
    }

    /// Queues `frame` with `head`, bytes that must leave before it (the handshake's 101), in
    /// front of it: one queued item, so `push_after_first` still goes behind `frame`.
    pub fn push_behind(&self, head: Bytes, frame: OutFrame) -> usize {
        if head.is_empty() {
            return self.push(frame);
        }
        let frame = self.outgoing(frame);
        let mut both = Vec::with_capacity(head.len() + frame.len());
        both.extend_from_slice(&head);
        both.extend_from_slice(&frame);
        let mut out = self.out.borrow_mut();
        out.grow(both.len());
        out.frames.push_back(Rc::new(both.into()));
        out.bytes
    }

    /// Queues `frame` right behind the first frame (the `welcome`). Only while writes are held
    /// (`hold`), so the first frame has not been written.
    pub fn push_after_first(&self, frame: OutFrame) {
        let frame = self.outgoing(frame);
        let mut out = self.out.borrow_mut();
        if out.head_sent > 0 || out.frames.is_empty() {
            return;
        }
        out.grow(frame.len());
        out.frames.insert(1, frame);
    }

    pub fn queued_bytes(&self) -> usize {
        self.out.borrow().bytes
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
        let mut out = self.out.borrow_mut();
        let keep = usize::from(out.head_sent > 0);
        // An unsent 101 (it leaves with `welcome`, see `push_behind`) still goes, alone: the
        // client cannot read the close frame without it.
        let upgrade = match out.frames.front() {
            Some(first) if keep == 0 => unsent_101(first),
            _ => None,
        };
        out.frames.truncate(keep);
        out.frames.extend(upgrade.map(Rc::new));
        let kept = out.frames.front().map_or(0, |f| f.len() - out.head_sent);
        let dropped = out.bytes - kept;
        out.shrink(dropped);
        let close = ws::close_frame(code.code(), reason.unwrap_or(code.reason()));
        out.grow(close.len());
        out.frames.push_back(Rc::new(close));
        drop(out);
        self.kick();
    }

    /// Writes queued frames with as few `writev` calls as the socket allows (one, unless more
    /// than `MAX_IOV` frames are queued or the socket takes part). Never blocks.
    pub fn flush(&self) {
        if self.hold.get() > 0 || self.broken.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        while !out.frames.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, frame) in out.frames.iter().take(MAX_IOV).enumerate() {
                let start = if i == 0 { out.head_sent } else { 0 };
                iov[i] = IoSlice::new(&frame[start..]);
                n += 1;
            }
            match self.io.try_write_vectored(&iov[..n]) {
                Ok(written) => out.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.want_write.replace(true) {
                        self.kick();
                    }
                    return;
                }
                Err(_) => {
                    self.broken.set(true);
                    self.kick();
                    return;
                }
            }
        }
        if out.frames.capacity() > 64 {
            out.frames = VecDeque::new();
        }
        self.want_write.set(false);
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
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Ok(ReadStatus::Eof),
                    _ => Ok(ReadStatus::Open),
                };
            }
            // Bounded so one busy connection cannot starve the rest of the shard.
            for _ in 0..4 {
                let n = match self.io.try_read(scratch) {
                    Ok(0) => return Ok(ReadStatus::Eof),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
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
        !self.out.borrow().frames.is_empty()
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

impl OutQueue {
    fn grow(&mut self, n: usize) {
        self.bytes += n;
        QUEUED.set(QUEUED.get() + n);
    }

    fn shrink(&mut self, n: usize) {
        self.bytes -= n;
        QUEUED.set(QUEUED.get().saturating_sub(n));
    }

    fn advance(&mut self, mut written: usize) {
        self.shrink(written);
        while written > 0 {
            let left = self.frames[0].len() - self.head_sent;
            if written >= left {
                written -= left;
                self.head_sent = 0;
                self.frames.pop_front();
            } else {
                self.head_sent += written;
                written = 0;
            }
        }
    }
}

impl Drop for OutQueue {
    fn drop(&mut self) {
        self.shrink(self.bytes);
    }
}

/// Inbound frame state that must survive between reads. Empty for an idle connection.
/// Public for the fuzz targets and property tests, which feed it the way reads would.
/// No `Default`: a decoder exists only with its limits (one with 0 refused every frame).
pub struct Decoder {
    /// Bytes of a frame cut by the end of a read.
    partial: Vec<u8>,
    /// Payload bytes of a discarded (too large) frame still to skip.
    skip: u64,
    /// A fragmented message being assembled.
    /// Boxed: rare, and an idle connection's `Conn` is kept small.
    frag: Option<Box<Fragments>>,
    /// A close frame was received; ignore whatever follows.
    closed: bool,
    /// Framing was refused (1002, 1007, 1009); whatever follows is dropped, not decoded.
    failed: bool,
    max_message: usize,
    hard_limit: u64,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    inflate: bool,
}

struct Fragments {
    binary: bool,
    /// RSV1 was on the first fragment: `data` is deflate data, inflated and checked at the end.
    compressed: bool,
    data: Vec<u8>,
    /// Bytes of `data` known to be valid UTF-8 (text only): each fragment is checked as it
    /// arrives, so invalid text fails fast, and a character cut between fragments is checked
    /// once the next one completes it.
    checked: usize,
    /// Over the size limit: the remaining fragments are skipped.
    discard: bool,
}

impl Fragments {
    /// Checks the text received since the last check; `fin` says no more is coming.
    fn check_utf8(&mut self, fin: bool) -> Result<(), CloseCode> {
        if self.binary || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            // Cut at the end, not wrong (yet): the next fragment must complete it.
            Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
            Err(_) => return Err(CloseCode::InvalidPayload),
        }
        Ok(())
    }
}

/// Close codes a client may send (RFC 6455 section 7.4 and the IANA registry): 1004-1006 and
/// 1015 are reserved for reporting and must never be on the wire.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks a client close frame's payload: empty, or a valid code and a UTF-8 reason.
fn check_close(payload: &[u8]) -> Result<(), CloseCode> {
    match payload {
        [] => Ok(()),
        [_] => Err(CloseCode::ProtocolError),
        [hi, lo, reason @ ..] => {
            if !valid_close_code(u16::from_be_bytes([*hi, *lo])) {
                return Err(CloseCode::ProtocolError);
            }
            std::str::from_utf8(reason).map_err(|_| CloseCode::InvalidPayload)?;
            Ok(())
        }
    }
}

impl Decoder {
    pub fn new(max_message: usize, hard_limit: u64) -> Decoder {
        Decoder {
            partial: Vec::new(),
            skip: 0,
            frag: None,
            closed: false,
            failed: false,
            max_message,
            hard_limit,
            inflate: false,
        }
    }

    /// Decodes one read's bytes, `chunk`. Whole frames are decoded in place, in `chunk`; only
    /// a frame cut by the end of the read is copied, into `partial`. After a close frame or a
    /// refusal, input is ignored.
    pub fn feed(
        &mut self,
        chunk: &mut [u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), CloseCode> {
        if self.closed || self.failed {
            return Ok(());
        }
        self.guard(|dec| {
            if dec.partial.is_empty() {
                // The common case: whole frames, decoded in the shared buffer.
                let used = dec.decode(chunk, on)?;
                dec.partial.extend_from_slice(&chunk[used..]);
                Ok(())
            } else {
                let mut partial = std::mem::take(&mut dec.partial);
                partial.extend_from_slice(chunk);
                dec.decode_owned(partial, on)
            }
        })
    }

    /// The same decoder, for a connection that negotiated permessage-deflate.
    pub fn inflating(mut self) -> Decoder {
        self.inflate = true;
        self
    }

    /// Bytes of memory held between reads: zero when no frame or message is cut.
    pub fn held(&self) -> usize {
        self.partial.capacity() + self.frag.as_ref().map_or(0, |f| f.data.capacity())
    }

    /// Runs `f` and remembers a refusal, so nothing after it is decoded.
    fn guard<R>(
        &mut self,
        f: impl FnOnce(&mut Decoder) -> Result<R, CloseCode>,
    ) -> Result<R, CloseCode> {
        let r = f(self);
        if r.is_err() {
            self.failed = true;
            self.partial = Vec::new();
            self.frag = None;
        }
        r
    }

    /// Decodes complete frames from `buf`, returning how many bytes were used.
    fn decode(
        &mut self,
        buf: &mut [u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<usize, CloseCode> {
        let mut pos = 0;
        while !self.closed {
            if self.skip > 0 {
                let n = self.skip.min((buf.len() - pos) as u64);
                pos += n as usize;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            let h = match ws::parse_header_with(&buf[pos..], self.inflate) {
                Ok(Some(h)) if h.rsv1 && h.opcode == ws::OP_CONTINUATION => {
                    // RSV1 belongs on a message's first frame only (RFC 7692 6.1).
                    return Err(CloseCode::ProtocolError);
                }
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => return Err(CloseCode::ProtocolError),
            };
            if h.payload_len > self.hard_limit {
                return Err(CloseCode::TooBig);
            }
            if !h.is_control() && self.oversized(&h, on)? {
                // Skip this frame's payload, whether or not it has all arrived.
                let avail = (buf.len() - pos - h.header_len) as u64;
                let n = avail.min(h.payload_len);
                pos += h.header_len + n as usize;
                self.skip = h.payload_len - n;
                continue;
            }
            let total = h.header_len + h.payload_len as usize;
            if buf.len() - pos < total {
                break;
            }
            let payload = &mut buf[pos + h.header_len..pos + total];
            ws::unmask(payload, h.mask);
            pos += total;
            self.dispatch(&h, payload, on)?;
        }
        Ok(pos)
    }

    /// Decodes `buf` and keeps what is left of a cut frame as `partial`; an empty remainder
    /// keeps no allocation.
    fn decode_owned(
        &mut self,
        mut buf: Vec<u8>,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), CloseCode> {
        let used = self.decode(&mut buf, on)?;
        buf.drain(..used);
        if !buf.is_empty() {
            self.partial = buf;
        }
        Ok(())
    }

    /// Checks a data frame against fragmentation rules and the size limit. `true` means the
    /// frame is to be skipped.
    fn oversized(&mut self, h: &Header, on: &mut dyn FnMut(Event<'_>)) -> Result<bool, CloseCode> {
        let so_far = match (&self.frag, h.opcode) {
            (None, ws::OP_CONTINUATION) | (Some(_), ws::OP_TEXT | ws::OP_BINARY) => {
                return Err(CloseCode::ProtocolError);
            }
            (Some(f), _) if f.discard => {
                if h.fin {
                    self.frag = None;
                }
                return Ok(true);
            }
            (Some(f), _) => f.data.len() as u64,
            (None, _) => 0,
        };
        if so_far + h.payload_len <= self.max_message as u64 {
            return Ok(false);
        }
        on(Event::TooLarge);
        self.frag = (!h.fin).then(|| {
            Box::new(Fragments {
                binary: false,
                compressed: false,
                data: Vec::new(),
                checked: 0,
                discard: true,
            })
        });
        Ok(true)
    }

    fn dispatch(
        &mut self,
        h: &Header,
        payload: &[u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), CloseCode> {
        match h.opcode {
            ws::OP_TEXT | ws::OP_BINARY if h.fin && h.rsv1 => {
                self.inflated(h.opcode == ws::OP_BINARY, payload, on)?
            }
            // The common case: a whole message in one frame, passed on without a copy.
            ws::OP_TEXT if h.fin => match std::str::from_utf8(payload) {
                Ok(text) => on(Event::Text(text)),
                Err(_) => return Err(CloseCode::InvalidPayload),
            },
            ws::OP_BINARY if h.fin => on(Event::Binary(payload)),
            ws::OP_TEXT | ws::OP_BINARY => {
                let mut frag = Box::new(Fragments {
                    binary: h.opcode == ws::OP_BINARY,
                    compressed: h.rsv1,
                    data: payload.to_vec(),
                    checked: 0,
                    discard: false,
                });
                frag.check_utf8(false)?;
                self.frag = Some(frag);
            }
            ws::OP_CONTINUATION => {
                let frag = self.frag.as_mut().expect("checked in oversized");
                frag.data.extend_from_slice(payload);
                frag.check_utf8(h.fin)?;
                if h.fin {
                    let frag = self.frag.take().expect("present");
                    if frag.compressed {
                        return self.inflated(frag.binary, &frag.data, on);
                    }
                    match frag.binary {
                        true => on(Event::Binary(&frag.data)),
                        // Checked fragment by fragment above; the second pass costs only
                        // fragmented messages, and keeps this free of `unsafe`.
                        false => on(Event::Text(
                            std::str::from_utf8(&frag.data)
                                .map_err(|_| CloseCode::InvalidPayload)?,
                        )),
                    }
                }
            }
            ws::OP_PING => on(Event::Ping(payload)),
            ws::OP_CLOSE => {
                check_close(payload)?;
                self.closed = true;
                on(Event::Close);
            }
            _ => {} // pong: the read itself counted as activity
        }
        Ok(())
    }

    /// Inflates a compressed message and passes it on. Over `max_message` once inflated (a zip
    /// bomb) closes with 1009 as soon as the limit is passed; invalid deflate data, like
    /// invalid UTF-8, with 1007.
    fn inflated(
        &mut self,
        binary: bool,
        data: &[u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), CloseCode> {
        let message = crate::deflate::inflate(data, self.max_message).map_err(|e| match e {
            crate::deflate::InflateError::TooBig => CloseCode::TooBig,
            crate::deflate::InflateError::Invalid => CloseCode::InvalidPayload,
        })?;
        match binary {
            true => on(Event::Binary(&message)),
            false => on(Event::Text(
                std::str::from_utf8(&message).map_err(|_| CloseCode::InvalidPayload)?,
            )),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut v = vec![first];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    fn decoder(max: usize) -> Decoder {
        Decoder::new(max, max as u64 * 16)
    }

    /// Feeds `wire` in chunks of `step` bytes, the way reads would, and lists what came out.
    fn run(dec: &mut Decoder, wire: &[u8], step: usize) -> Result<Vec<String>, CloseCode> {
        let mut seen = Vec::new();
        for chunk in wire.chunks(step) {
            dec.feed(&mut chunk.to_vec(), &mut |e| {
                seen.push(match e {
                    Event::Text(text) => format!("text:{text}"),
                    Event::Binary(b) => format!("bin:{}", String::from_utf8_lossy(b)),
                    Event::Ping(p) => format!("ping:{}", p.len()),
                    Event::TooLarge => "too_large".into(),
                    Event::Close => "close".into(),
                })
            })?;
        }
        Ok(seen)
    }

    #[test]
    fn decodes_across_any_split() {
        let mut wire = frame(0x81, b"hello");
        wire.extend(frame(0x01, b"frag"));
        wire.extend(frame(0x89, b"pp"));
        wire.extend(frame(0x80, b"ment"));
        wire.extend(frame(0x82, &[b'z'; 300]));
        wire.extend(frame(0x88, &[3, 232]));
        wire.extend(frame(0x81, b"after close"));
        for step in [1, 2, 3, 7, 64, 10_000] {
            let seen = run(&mut decoder(1024), &wire, step).unwrap();
            assert_eq!(
                seen,
                vec![
                    "text:hello".to_string(),
                    "ping:2".into(),
                    "text:fragment".into(),
                    format!("bin:{}", "z".repeat(300)),
                    "close".into(),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn oversized_messages_are_skipped_not_buffered() {
        let mut wire = frame(0x81, &[b'x'; 600]);
        wire.extend(frame(0x01, &[b'y'; 300]));
        wire.extend(frame(0x00, &[b'y'; 300]));
        wire.extend(frame(0x80, b"tail"));
        wire.extend(frame(0x81, b"ok"));
        for step in [1, 5, 100, 10_000] {
            let mut dec = decoder(500);
            let seen = run(&mut dec, &wire, step).unwrap();
            assert_eq!(seen, ["too_large", "too_large", "text:ok"], "step {step}");
            assert_eq!(dec.held(), 0);
        }
    }

    #[test]
    fn framing_violations_close_the_connection() {
        let unmasked = vec![0x81, 0x01, b'x'];
        assert_eq!(
            run(&mut decoder(100), &unmasked, 10),
            Err(CloseCode::ProtocolError)
        );
        let stray_continuation = frame(0x80, b"x");
        assert_eq!(
            run(&mut decoder(100), &stray_continuation, 10),
            Err(CloseCode::ProtocolError)
        );
        let huge = frame(0x81, &[0; 2000]);
        assert_eq!(run(&mut decoder(100), &huge, 10), Err(CloseCode::TooBig));
    }

    #[test]
    fn utf8_is_checked_per_fragment_and_across_cuts() {
        // "é" (c3 a9) split between two fragments is fine.
        let mut wire = frame(0x01, b"caf\xc3");
        wire.extend(frame(0x80, b"\xa9!"));
        for step in [1, 3, 100] {
            let seen = run(&mut decoder(100), &wire, step).unwrap();
            assert_eq!(seen, ["text:café!"], "step {step}");
        }
        // An invalid byte in the first fragment fails before the message ends.
        let bad_first = frame(0x01, b"ok\xff");
        assert_eq!(
            run(&mut decoder(100), &bad_first, 1),
            Err(CloseCode::InvalidPayload)
        );
        // A sequence still cut when the message ends is invalid.
        let mut cut = frame(0x01, b"x");
        cut.extend(frame(0x80, b"\xc3"));
        assert_eq!(
            run(&mut decoder(100), &cut, 2),
            Err(CloseCode::InvalidPayload)
        );
        // Binary is never checked.
        let seen = run(&mut decoder(100), &frame(0x82, b"\xff"), 1).unwrap();
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn close_frames_are_checked() {
        for (payload, want) in [
            (&b""[..], Ok(vec!["close".to_string()])),
            (&[0x03, 0xE8][..], Ok(vec!["close".to_string()])),
            (&[0x0F, 0xA0, b'o', b'k'][..], Ok(vec!["close".to_string()])), // 4000
            (&[0x03][..], Err(CloseCode::ProtocolError)),
            (&[0x03, 0xED][..], Err(CloseCode::ProtocolError)), // 1005
            (&[0x03, 0xE7][..], Err(CloseCode::ProtocolError)), // 999
            (&[0x13, 0x88][..], Err(CloseCode::ProtocolError)), // 5000
            (&[0x03, 0xE8, 0xff][..], Err(CloseCode::InvalidPayload)),
        ] {
            assert_eq!(
                run(&mut decoder(100), &frame(0x88, payload), 1),
                want,
                "{payload:?}"
            );
        }
    }

    #[test]
    fn queue_advances_over_partial_writes() {
        let mut q = OutQueue::default();
        let before = thread_queued_bytes();
        for s in ["abc", "de", "fghi"] {
            q.grow(s.len());
            q.frames.push_back(Rc::new(Bytes::from(s)));
        }
        q.advance(4);
        assert_eq!((q.frames.len(), q.head_sent, q.bytes), (2, 1, 5));
        assert_eq!(
            thread_queued_bytes() - before,
            5,
            "the thread's tally follows"
        );
        q.advance(5);
        assert!(q.frames.is_empty());
        assert_eq!((q.head_sent, q.bytes), (0, 0));
        drop(q);
        assert_eq!(thread_queued_bytes(), before);
    }

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
        };
        let limits = FrameLimits {
            max_message: 100,
            hard_limit: 1600,
        };
        let rates = Rates::of(&crate::config::Config::default());
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
        };
        let limits = FrameLimits {
            max_message: 100,
            hard_limit: 1600,
        };
        let conn = |exp| {
            let sink = MemorySink::default();
            let rates = Rates::of(&crate::config::Config::default());
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

    #[test]
    fn requests_have_a_burst_then_the_rate() {
        let r = rates(1, 3, 1, 1);
        let mut b = Buckets::full(&r);
        assert!((0..3).all(|_| b.take_request(&r)));
        assert!(!b.take_request(&r));
    }

    fn rates(requests: u32, request_burst: u32, reads: u32, read_burst: u32) -> Rates {
        Rates {
            requests,
            request_burst,
            reads,
            read_burst,
        }
    }

    #[test]
    fn reads_are_charged_after_the_fact_and_wait_out_the_debt() {
        let r = rates(1, 1, 1, 10);
        let mut b = Buckets::full(&r);
        assert!(b.may_read(&r));
        b.charge_reads(&r, 25);
        assert!(!b.may_read(&r), "15 in debt");
        assert!(b.take_request(&r), "requests are a bucket of their own");
        // A read budget that refills fast: the debt is paid off.
        let fast = rates(1, 1, 1_000_000, 10);
        b.charge_reads(&fast, 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(b.may_read(&fast));
    }
}
