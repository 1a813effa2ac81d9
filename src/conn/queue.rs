//! A connection's outbound queue: frames shared with every other recipient, bounded in bytes,
//! written with one `writev` per flush, and the thread-wide tally of unsent bytes.
//!
//! Owns what is queued and how it leaves. It must not decide when to flush (the shard does) or
//! what a frame means.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::rc::Rc;

use bytes::Bytes;

use super::io::Io;

/// Most frames gathered into one `writev`.
const MAX_IOV: usize = 64;

thread_local! {
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
pub(super) struct OutQueue {
    frames: VecDeque<OutFrame>,
    /// Unsent bytes in `frames`, counting from `head_sent`.
    bytes: usize,
    /// Bytes of the first frame already written.
    head_sent: usize,
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

impl OutQueue {
    /// Unsent bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues a frame; returns the unsent bytes now queued.
    pub fn push(&mut self, frame: OutFrame) -> usize {
        self.grow(frame.len());
        self.frames.push_back(frame);
        self.bytes
    }

    /// Queues `frame` with `head` (bytes that must leave before it) in front of it, as one
    /// queued item.
    pub fn push_behind(&mut self, head: &[u8], frame: &[u8]) -> usize {
        let mut both = Vec::with_capacity(head.len() + frame.len());
        both.extend_from_slice(head);
        both.extend_from_slice(frame);
        self.push(Rc::new(both.into()))
    }

    /// Queues `frame` right behind the first queued frame, if that one has not been started.
    pub fn push_after_first(&mut self, frame: OutFrame) {
        if self.head_sent > 0 || self.frames.is_empty() {
            return;
        }
        self.grow(frame.len());
        self.frames.insert(1, frame);
    }

    /// Replaces the first queued frame (the `welcome`, behind an unsent 101 if there is one),
    /// if nothing of it has been written.
    pub fn replace_first(&mut self, frame: &[u8]) {
        if self.head_sent > 0 {
            return;
        }
        let Some(first) = self.frames.front() else {
            return;
        };
        let head = unsent_101(first).unwrap_or_default();
        let old = first.len();
        let mut both = Vec::with_capacity(head.len() + frame.len());
        both.extend_from_slice(&head);
        both.extend_from_slice(frame);
        self.grow(both.len());
        self.shrink(old);
        self.frames[0] = Rc::new(both.into());
    }

    /// Drops the unsent frames, keeping a half-written one (so the stream stays well-formed)
    /// and an unsent 101 (the client cannot read what follows without it), then queues `last`.
    pub fn replace_with(&mut self, last: Bytes) {
        let keep = usize::from(self.head_sent > 0);
        let upgrade = match self.frames.front() {
            Some(first) if keep == 0 => unsent_101(first),
            _ => None,
        };
        self.frames.truncate(keep);
        self.frames.extend(upgrade.map(Rc::new));
        let kept = self.frames.front().map_or(0, |f| f.len() - self.head_sent);
        let dropped = self.bytes - kept;
        self.shrink(dropped);
        self.push(Rc::new(last));
    }

    /// Writes queued frames with as few `writev` calls as `io` allows (one, unless more than
    /// `MAX_IOV` frames are queued or the socket takes part). Never blocks: `Ok(false)` when
    /// the socket refused bytes, `Ok(true)` when everything was written.
    pub fn write_to(&mut self, io: &Io) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, frame) in self.frames.iter().take(MAX_IOV).enumerate() {
                let start = if i == 0 { self.head_sent } else { 0 };
                iov[i] = IoSlice::new(&frame[start..]);
                n += 1;
            }
            match io.try_write_vectored(&iov[..n]) {
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if self.frames.capacity() > 64 {
            self.frames = VecDeque::new();
        }
        Ok(true)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
