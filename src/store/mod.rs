//! Durable history: room streams and user inboxes, each a sequence of messages keyed by seq.
//!
//! Owns the `Store` trait and its implementations: `FjallStore` on disk (the default; the choice
//! and its figures are in docs/performance.md) and `MemoryStore`. Nothing outside this module
//! knows which engine is in use, so a cluster mode can add a Redis-backed `Store`. It must not
//! know about shards or sockets. Calls block on disk, so they belong on a store thread, never
//! on a shard's.
//!
//! Groundwork for durable history: the shards do not call it yet.

mod fjall;
mod memory;

pub use self::fjall::FjallStore;
pub use self::memory::MemoryStore;

use bytes::Bytes;

use crate::protocol::Name;

/// A sequence of messages: a room's history or a user's inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream<'a> {
    Room(&'a Name),
    Inbox(&'a Name),
}

impl Stream<'_> {
    /// `kind ++ name ++ 0x00`: names never contain 0x00, so one stream's keys never share a
    /// prefix with another's ("a" and "ab" included).
    fn prefix(self) -> Vec<u8> {
        let (kind, name) = match self {
            Stream::Room(n) => (b'r', n),
            Stream::Inbox(n) => (b'i', n),
        };
        let mut k = Vec::with_capacity(name.len() + 10);
        k.push(kind);
        k.extend_from_slice(name.as_bytes());
        k.push(0);
        k
    }

    /// The key of message `seq`: the prefix, then seq big-endian so keys sort by seq.
    fn key(self, seq: u64) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
}

/// One message to store: its stream, seq, and the message's JSON as sent to clients.
#[derive(Clone, Copy, Debug)]
pub struct Append<'a> {
    pub stream: Stream<'a>,
    pub seq: u64,
    pub payload: &'a [u8],
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the message store in {path}: {message}; check that the directory is \
         writable and the disk not full, or pass --data DIR"
    )]
    Open { path: String, message: String },
    #[error("the message store failed to write: {0}")]
    Write(String),
    #[error("the message store failed to read: {0}")]
    Read(String),
}

/// The durable store. Every method may block on disk.
pub trait Store: Send + Sync + 'static {
    /// Writes `batch` atomically, in one commit. With `durable`, returns only once the batch is
    /// on disk (one fsync for the whole batch: group commit).
    fn append(&self, batch: &[Append<'_>], durable: bool) -> Result<(), StoreError>;

    /// The highest seq ever appended to `stream`, 0 if none. It survives trimming and restarts,
    /// so seqs are never reused.
    fn last_seq(&self, stream: Stream<'_>) -> Result<u64, StoreError>;

    /// Messages with seq > `after`, oldest first, at most `limit`.
    fn after(
        &self,
        stream: Stream<'_>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Messages with seq < `before`, newest first, at most `limit`.
    fn before(
        &self,
        stream: Stream<'_>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Deletes messages with seq < `keep_from`; returns how many were deleted.
    fn trim(&self, stream: Stream<'_>, keep_from: u64) -> Result<usize, StoreError>;

    /// Makes everything appended so far durable.
    fn sync(&self) -> Result<(), StoreError>;
}

/// The highest seq per stream in a batch, for the last-seq records.
fn last_seqs<'a>(batch: &[Append<'a>]) -> Vec<(Stream<'a>, u64)> {
    let mut last: Vec<(Stream<'a>, u64)> = Vec::new();
    for a in batch {
        match last.iter_mut().find(|(s, _)| *s == a.stream) {
            Some((_, seq)) => *seq = (*seq).max(a.seq),
            None => last.push((a.stream, a.seq)),
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn seqs(v: &[StoredMessage]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    /// The behaviour every `Store` must have.
    pub(super) fn contract(store: &dyn Store) {
        let (a, ab) = (n("a"), n("ab"));
        let batch: Vec<_> = (1..=5)
            .map(|seq| Append {
                stream: Stream::Room(&a),
                seq,
                payload: b"{\"m\":1}",
            })
            .chain([
                Append {
                    stream: Stream::Room(&ab),
                    seq: 1,
                    payload: b"ab",
                },
                Append {
                    stream: Stream::Inbox(&a),
                    seq: 7,
                    payload: b"dm",
                },
            ])
            .collect();
        store.append(&batch, true).unwrap();

        let room = Stream::Room(&a);
        assert_eq!(store.last_seq(room).unwrap(), 5);
        assert_eq!(store.last_seq(Stream::Room(&ab)).unwrap(), 1);
        assert_eq!(store.last_seq(Stream::Inbox(&a)).unwrap(), 7);
        assert_eq!(store.last_seq(Stream::Inbox(&ab)).unwrap(), 0);

        assert_eq!(seqs(&store.after(room, 0, 100).unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(&store.after(room, 2, 2).unwrap()), [3, 4]);
        assert_eq!(seqs(&store.after(room, 5, 10).unwrap()), Vec::<u64>::new());
        assert_eq!(seqs(&store.before(room, 5, 3).unwrap()), [4, 3, 2]);
        assert_eq!(seqs(&store.before(room, u64::MAX, 2).unwrap()), [5, 4]);
        let first = &store.after(room, 0, 1).unwrap()[0];
        assert_eq!(&first.payload[..], b"{\"m\":1}");
        let ab_msgs = store.after(Stream::Room(&ab), 0, 10).unwrap();
        assert_eq!(
            ab_msgs.len(),
            1,
            "a prefix of another stream's name is another stream"
        );
        assert_eq!(&ab_msgs[0].payload[..], b"ab");

        assert_eq!(store.trim(room, 4).unwrap(), 3);
        assert_eq!(seqs(&store.after(room, 0, 100).unwrap()), [4, 5]);
        assert_eq!(
            store.last_seq(room).unwrap(),
            5,
            "trimming keeps the last seq"
        );
        store.sync().unwrap();
    }

    #[test]
    fn memory_store_keeps_the_contract() {
        contract(&MemoryStore::default());
    }

    #[test]
    fn batch_last_seqs_take_the_highest_per_stream() {
        let (a, b) = (n("a"), n("b"));
        let batch = [
            Append {
                stream: Stream::Room(&a),
                seq: 3,
                payload: b"",
            },
            Append {
                stream: Stream::Room(&b),
                seq: 1,
                payload: b"",
            },
            Append {
                stream: Stream::Room(&a),
                seq: 4,
                payload: b"",
            },
        ];
        assert_eq!(
            last_seqs(&batch),
            [(Stream::Room(&a), 4), (Stream::Room(&b), 1)]
        );
    }
}
