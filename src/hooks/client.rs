//! One shard's HTTP/1.1 client for the hooks, purpose-built: keep-alive connections to
//! `hook_url` (plain or TLS, `outbound`) driven on the shard's own runtime, with no task per
//! call. A call is its request (head and body in one buffer) appended to a connection's output;
//! the connection's writer task writes everything the shard appended in one scheduler pass in
//! one write, and its reader task parses the answers in order (HTTP/1.1 pipelining, up to
//! `hook_pipeline` calls per connection) and hands each to its call's `Done`, borrowed from the
//! read buffer. One timer task per shard fails the calls past their deadline. Per call: a
//! `Vec` for the request, a map entry, a heap entry; per pass: one write; per read: the
//! answers it holds.
//!
//! Which connection a call takes: one that has not written this pass's calls yet (they leave
//! in the same write), else an idle one (the newest), else a new one while fewer than `slots /
//! hook_pipeline` are open, else the least busy under `hook_pipeline`; else it waits for a
//! slot. At most `slots` calls are in flight.
//!
//! Failures: a call past its timeout fails, and its connection is closed (its answer may never
//! come, and answers behind it would wait for it); the calls behind it are sent again on
//! another connection. A connection the backend closes, or that breaks, fails the call whose
//! answer had begun; the others, which the backend never answered, are sent once more on
//! another connection (the one at the head only once: a backend that drops a request every
//! time must not loop). An
//! answer that is not HTTP/1.1, or one with no call waiting for it, closes the connection the
//! same way. Every call ends exactly once: answered, failed, or timed out.
//!
//! Owns the shard's connections, their HTTP framing and the calls' deadlines. It must not parse
//! the answers' JSON or count calls (`hooks` does) or touch shard state.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::HookError;
use super::answer::parse;
use crate::outbound::{Endpoint, Stream};

/// A connection idle longer than this is closed rather than reused: a backend may have closed
/// its end, and a request on it would have to be sent again.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// What a call's caller is handed once: the status and the answer's body, or why it failed.
pub(super) type Done = Box<dyn FnOnce(Result<(u16, &[u8]), HookError>)>;

/// A shard's connections to `hook_url` and its calls.
pub(super) struct Pool(Rc<RefCell<State>>);

struct State {
    target: Arc<Endpoint>,
    max_answer: usize,
    /// Calls in flight at most.
    slots: usize,
    /// Connections open at most: `slots` divided by `depth`.
    max_links: usize,
    /// Calls in flight on one connection at most.
    depth: usize,
    calls: HashMap<u64, Call>,
    /// Calls waiting for a slot, oldest first; ids of ended calls are skipped.
    waiting: VecDeque<u64>,
    in_flight: usize,
    links: Vec<Link>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    timer: Option<Rc<Notify>>,
    next_id: u64,
}

struct Call {
    /// Head and body, kept until the answer for a second send.
    request: Vec<u8>,
    timeout_ms: u64,
    done: Done,
    /// Once sent again, the backend closing its connection fails it.
    resent: bool,
    /// The connection it was written to.
    link: Option<u64>,
}

struct Link {
    id: u64,
    /// Calls written (or to be written) on it, in order: its answers come in this order.
    sent: VecDeque<u64>,
    /// Requests appended and not handed to the writer yet.
    out: Vec<u8>,
    wake_writer: Rc<Notify>,
    idle_since: Instant,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a connection ends, which decides what becomes of its calls.
enum End {
    /// We close it (a timeout, a bad answer, an idle connection): its calls that were not
    /// answered are sent again.
    Ours,
    /// The backend closed it or it broke: those calls are sent once more, unless they already
    /// were; the call whose answer had begun fails with `error`.
    Theirs { error: String, answer_begun: bool },
    /// It never opened: its calls fail with `error`.
    NeverOpened(String),
}

impl Pool {
    pub(super) fn new(
        target: Arc<Endpoint>,
        slots: usize,
        depth: usize,
        max_answer: usize,
    ) -> Pool {
        Pool(Rc::new(RefCell::new(State {
            target,
            max_answer,
            slots,
            max_links: slots.div_ceil(depth.max(1)),
            depth: depth.max(1),
            calls: HashMap::new(),
            waiting: VecDeque::new(),
            in_flight: 0,
            links: Vec::new(),
            deadlines: BinaryHeap::new(),
            timer: None,
            next_id: 0,
        })))
    }

    /// POSTs `body` (JSON) once a slot is free; `done` gets the answer, or the failure, within
    /// `timeout` (waiting for a slot included). Must run on the shard's runtime.
    pub(super) fn post(&self, body: &[u8], timeout: Duration, done: Done) {
        let mut st = self.0.borrow_mut();
        st.next_id += 1;
        let id = st.next_id;
        let request = st.request(body);
        let deadline = Instant::now() + timeout;
        st.calls.insert(
            id,
            Call {
                request,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                done,
                resent: false,
                link: None,
            },
        );
        let earliest = st
            .deadlines
            .peek()
            .is_none_or(|Reverse((d, _))| deadline < *d);
        st.deadlines.push(Reverse((deadline, id)));
        match &st.timer {
            Some(timer) if earliest => timer.notify_one(),
            Some(_) => {}
            None => {
                let timer = Rc::new(Notify::new());
                st.timer = Some(timer.clone());
                tokio::task::spawn_local(expire(Rc::downgrade(&self.0), timer));
            }
        }
        st.waiting.push_back(id);
        drop(st);
        pump(&self.0);
    }
}

impl State {
    /// The request's head, then its body.
    fn request(&self, body: &[u8]) -> Vec<u8> {
        let t = &self.target;
        let mut r = Vec::with_capacity(96 + t.path.len() + t.authority.len() + body.len());
        r.extend_from_slice(b"POST ");
        r.extend_from_slice(t.path.as_bytes());
        r.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        r.extend_from_slice(t.authority.as_bytes());
        r.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
        r.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        r.extend_from_slice(b"\r\n\r\n");
        r.extend_from_slice(body);
        r
    }

    fn link(&mut self, id: u64) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.id == id)
    }

    /// Where the next call goes (see the module's comment): `Some(None)` on a new connection,
    /// None: it waits.
    fn pick(&mut self) -> Option<Option<usize>> {
        let depth = self.depth;
        if let Some(i) = (self.links.iter()).position(|l| !l.out.is_empty() && l.sent.len() < depth)
        {
            return Some(Some(i));
        }
        while let Some(i) = (self.links.iter()).rposition(|l| l.sent.is_empty()) {
            if self.links[i].idle_since.elapsed() <= IDLE_FOR {
                return Some(Some(i));
            }
            let link = self.links.remove(i);
            link.tasks.iter().for_each(JoinHandle::abort);
        }
        if self.links.len() < self.max_links {
            return Some(None);
        }
        (self.links.iter().enumerate())
            .filter(|(_, l)| l.sent.len() < depth)
            .min_by_key(|(_, l)| l.sent.len())
            .map(|(i, _)| Some(i))
    }

    /// Ends the call `id` if it is still live: its `Done` and the answer to hand it, after the
    /// caller has let go of the state.
    fn end(&mut self, id: u64) -> Option<Call> {
        let call = self.calls.remove(&id)?;
        if call.link.is_some() {
            self.in_flight -= 1;
        }
        Some(call)
    }

    /// Removes the connection `id` (its tasks stop) and decides about its calls: the ones sent
    /// again go back to the front of the queue, in order; the failed ones are returned.
    fn close(&mut self, id: u64, end: End) -> Vec<(Call, HookError)> {
        let Some(i) = self.links.iter().position(|l| l.id == id) else {
            return Vec::new();
        };
        let link = self.links.swap_remove(i);
        link.tasks.iter().for_each(JoinHandle::abort);
        let mut failed = Vec::new();
        for (n, call_id) in link.sent.into_iter().enumerate().rev() {
            let Some(call) = self.calls.get_mut(&call_id) else {
                continue;
            };
            // Only the call at the head can be why the backend closed: the others are sent
            // again freely, the head once.
            let head = n == 0;
            let fail = match &end {
                End::Ours => None,
                End::Theirs {
                    error,
                    answer_begun,
                } if head && (*answer_begun || call.resent) => Some(error.clone()),
                End::Theirs { .. } => None,
                End::NeverOpened(error) => Some(error.clone()),
            };
            match fail {
                Some(error) => {
                    let call = self.end(call_id).expect("just found");
                    failed.push((call, HookError::Unreachable(error)));
                }
                None => {
                    call.resent |= head && matches!(end, End::Theirs { .. });
                    call.link = None;
                    self.in_flight -= 1;
                    self.waiting.push_front(call_id);
                }
            }
        }
        failed.reverse();
        failed
    }
}

/// Hands waiting calls to connections while slots are free, opening connections as needed.
fn pump(state: &Rc<RefCell<State>>) {
    let mut st = state.borrow_mut();
    while st.in_flight < st.slots {
        let Some(id) = st.waiting.pop_front() else {
            break;
        };
        if !st.calls.contains_key(&id) {
            continue;
        }
        let i = match st.pick() {
            Some(Some(i)) => i,
            Some(None) => open(state, &mut st),
            None => {
                st.waiting.push_front(id);
                break;
            }
        };
        let st = &mut *st;
        let call = st.calls.get_mut(&id).expect("live");
        let link = &mut st.links[i];
        if link.out.is_empty() {
            link.wake_writer.notify_one();
        }
        link.out.extend_from_slice(&call.request);
        link.sent.push_back(id);
        call.link = Some(link.id);
        st.in_flight += 1;
    }
}

/// A new connection, connecting: calls may be appended to it at once, its writer writes them
/// once it is open. Its index in `links`.
fn open(state: &Rc<RefCell<State>>, st: &mut State) -> usize {
    st.next_id += 1;
    let id = st.next_id;
    let wake_writer = Rc::new(Notify::new());
    let task = tokio::task::spawn_local(run(
        Rc::downgrade(state),
        id,
        st.target.clone(),
        wake_writer.clone(),
        st.max_answer,
    ));
    st.links.push(Link {
        id,
        sent: VecDeque::new(),
        out: Vec::new(),
        wake_writer,
        idle_since: Instant::now(),
        tasks: vec![task],
    });
    st.links.len() - 1
}

type WeakState = std::rc::Weak<RefCell<State>>;

/// Closes a connection and ends the calls that fail with it, then lets the others go on.
fn close(state: &Rc<RefCell<State>>, link: u64, end: End) {
    let failed = state.borrow_mut().close(link, end);
    for (call, e) in failed {
        (call.done)(Err(e));
    }
    pump(state);
}

/// A connection's life: connect, start its writer, then read and hand out answers until it
/// ends.
async fn run(
    state: WeakState,
    link: u64,
    target: Arc<Endpoint>,
    wake_writer: Rc<Notify>,
    max_answer: usize,
) {
    let stream = target.open().await;
    let Some(state) = state.upgrade() else {
        return;
    };
    let stream = match stream {
        Ok(s) => s,
        Err(e) => return close(&state, link, End::NeverOpened(e)),
    };
    let (reader, writer) = tokio::io::split(stream);
    let writing = tokio::task::spawn_local(write(Rc::downgrade(&state), link, writer, wake_writer));
    match state.borrow_mut().link(link) {
        Some(l) => l.tasks.push(writing),
        None => return writing.abort(),
    }
    let end = read(&state, link, reader, max_answer).await;
    close(&state, link, end);
}

/// Writes what the shard appended, all of one pass in one write.
async fn write(state: WeakState, link: u64, mut w: WriteHalf<Stream>, wake: Rc<Notify>) {
    let mut buf = Vec::new();
    loop {
        wake.notified().await;
        {
            let Some(state) = state.upgrade() else {
                return;
            };
            match state.borrow_mut().link(link) {
                Some(l) => std::mem::swap(&mut buf, &mut l.out),
                None => return,
            }
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = async {
            w.write_all(&buf).await?;
            w.flush().await
        }
        .await
        {
            if let Some(state) = state.upgrade() {
                let error = format!("writing to the backend: {e}");
                close(
                    &state,
                    link,
                    End::Theirs {
                        error,
                        answer_begun: false,
                    },
                );
            }
            return;
        }
        buf.clear();
    }
}

/// Reads answers and hands each to the call it answers, in order, until the connection ends.
async fn read(
    state: &Rc<RefCell<State>>,
    link: u64,
    mut r: ReadHalf<Stream>,
    max_answer: usize,
) -> End {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut eof = false;
    loop {
        if !eof {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            match r.read_buf(&mut buf).await {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) => {
                    return End::Theirs {
                        error: format!("reading from the backend: {e}"),
                        answer_begun: !buf.is_empty(),
                    };
                }
            }
        }
        loop {
            let answer = match parse(&buf, max_answer, eof) {
                Ok(Some(a)) => a,
                Ok(None) if eof => {
                    return End::Theirs {
                        error: "the backend closed the connection".into(),
                        answer_begun: !buf.is_empty(),
                    };
                }
                Ok(None) => break,
                Err(e) => {
                    let call = {
                        let mut st = state.borrow_mut();
                        let head = st.link(link).and_then(|l| l.sent.pop_front());
                        head.and_then(|id| st.end(id))
                    };
                    if let Some(call) = call {
                        (call.done)(Err(e));
                    }
                    return End::Ours;
                }
            };
            let call = {
                let mut st = state.borrow_mut();
                let Some(l) = st.link(link) else {
                    return End::Ours;
                };
                let Some(id) = l.sent.pop_front() else {
                    // An answer nobody asked for: the backend is out of step.
                    return End::Ours;
                };
                if l.sent.is_empty() {
                    l.idle_since = Instant::now();
                }
                st.end(id)
            };
            if let Some(call) = call {
                (call.done)(Ok((answer.status, answer.body.as_ref())));
            }
            let (len, keep) = (answer.len, answer.keep_alive);
            drop(answer);
            buf.drain(..len);
            if !keep {
                return End::Ours;
            }
            pump(state);
        }
    }
}

/// The shard's timer: fails the calls past their deadline, closing the connections they were
/// sent on. Sleeps until the earliest deadline of a live call.
async fn expire(state: WeakState, wake: Rc<Notify>) {
    loop {
        let next = {
            let Some(state) = state.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut expired = Vec::new();
            let next = {
                let mut st = state.borrow_mut();
                loop {
                    let Some(&Reverse((deadline, id))) = st.deadlines.peek() else {
                        break None;
                    };
                    if !st.calls.contains_key(&id) {
                        st.deadlines.pop();
                    } else if deadline <= now {
                        st.deadlines.pop();
                        let call = st.calls.get(&id).expect("live");
                        expired.push((id, call.link));
                    } else {
                        break Some(deadline);
                    }
                }
            };
            for (id, link) in expired {
                let call = state.borrow_mut().end(id);
                if let Some(call) = call {
                    let ms = call.timeout_ms;
                    (call.done)(Err(HookError::Timeout(ms)));
                }
                if let Some(link) = link {
                    close(&state, link, End::Ours);
                }
            }
            next
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
