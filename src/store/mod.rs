//! Durable history: room streams and user inboxes, each a sequence of messages keyed by seq.
//!
//! Owns the `Store` trait and its implementations: `FjallStore` on disk (the default; the choice
//! and its figures are in docs/performance-log.md) and `MemoryStore`. Nothing outside this module
//! knows which engine is in use, so a cluster mode can add a Redis-backed `Store`. It must not
//! know about shards or sockets. Calls block on disk, so they belong on the store threads
//! (`persist`), never on a shard's.

mod fjall;
pub mod fold;
mod memory;

pub use self::fjall::{FjallStore, StoreMemory};
pub use self::memory::MemoryStore;

use bytes::Bytes;

use crate::core::event::{EventWrite, Folded};
use crate::core::{Name, Stream};

impl Stream {
    /// `kind ++ name ++ 0x00`: names never contain 0x00, so one stream's keys never share a
    /// prefix with another's ("a" and "ab" included).
    fn prefix(&self) -> Vec<u8> {
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

    /// The stream whose `prefix` this is.
    fn from_prefix(prefix: &[u8]) -> Option<Stream> {
        let (&kind, rest) = prefix.split_first()?;
        let name = std::str::from_utf8(rest.strip_suffix(&[0])?).ok()?;
        let name = Name::new(name).ok()?;
        match kind {
            b'r' => Some(Stream::Room(name)),
            b'i' => Some(Stream::Inbox(name)),
            _ => None,
        }
    }

    /// The key of message `seq`: the prefix, then seq big-endian so keys sort by seq.
    fn key(&self, seq: u64) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
}

/// One message to store: its stream, seq, time (unix ms, for retention by age) and the
/// message's JSON as sent to clients.
#[derive(Clone, Debug)]
pub struct Append {
    pub stream: Stream,
    pub seq: u64,
    pub ts: u64,
    pub payload: Bytes,
    /// "SENDER KEY" of a keyed message: stored in the same commit, read back by `keys`.
    pub key: Option<Bytes>,
    /// An edit, delete or reaction: its target's new state (and rewrites), in the same commit.
    pub event: Option<Box<EventWrite>>,
}

/// One event of the feed (docs/hooks.md): its cursor (dense, from 1, never reused), its time
/// (unix ms, for retention by age) and its JSON as the backend gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedRecord {
    pub cursor: u64,
    pub ts: u64,
    pub payload: Bytes,
}

/// Where the feed stands: its oldest kept cursor (0: none kept), the highest ever written, and
/// the mark (every event up to it was delivered to the webhook).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedState {
    pub first: u64,
    pub last: u64,
    pub mark: u64,
}

/// A user's read position in a stream: every message up to the seq is read.
pub type ReadPosition = (Name, Stream, u64);

/// The key of a read position: `user ++ 0x00 ++ stream prefix` (names never hold 0x00).
fn read_key(user: &Name, stream: &Stream) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + stream.name().len() + 3);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(&stream.prefix());
    k
}

/// The user and stream of a `read_key`.
fn from_read_key(key: &[u8]) -> Option<(Name, Stream)> {
    let nul = key.iter().position(|&b| b == 0)?;
    let user = Name::new(std::str::from_utf8(&key[..nul]).ok()?).ok()?;
    Some((user, Stream::from_prefix(&key[nul + 1..])?))
}

/// A remembered idempotency key: the seq of the message it names and its "SENDER KEY".
pub type KeyEntry = (u64, Bytes);

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub ts: u64,
    pub payload: Bytes,
}

/// What the store knows of a stream without reading its messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream: Stream,
    /// The highest seq ever appended.
    pub last_seq: u64,
    /// The stream's cursor (for an inbox: every message up to it reached a connection), 0 if
    /// never set.
    pub cursor: u64,
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
    /// Writes `appends` and sets `cursors` atomically, in one commit. With `durable`, returns
    /// only once the commit is on disk (one fsync for the whole batch: group commit).
    fn write(
        &self,
        appends: &[Append],
        cursors: &[(Stream, u64)],
        durable: bool,
    ) -> Result<(), StoreError> {
        self.write_with_feed(appends, cursors, &[], durable)
    }

    /// `write`, with the feed's events in the same commit: an event is stored with the message
    /// it tells of, or not at all. A store without a feed refuses events.
    fn write_with_feed(
        &self,
        appends: &[Append],
        cursors: &[(Stream, u64)],
        feed: &[FeedRecord],
        durable: bool,
    ) -> Result<(), StoreError>;

    /// The feed's bounds and delivery mark.
    fn feed_state(&self) -> Result<FeedState, StoreError> {
        Ok(FeedState::default())
    }

    /// Feed events with cursor > `after`, oldest first, at most `limit`.
    fn feed_after(&self, _after: u64, _limit: usize) -> Result<Vec<FeedRecord>, StoreError> {
        Ok(Vec::new())
    }

    /// Deletes the feed's oldest events while their cursor is below `keep_from` or their ts
    /// below `min_ts`. Returns how many.
    fn feed_trim(&self, _keep_from: u64, _min_ts: u64) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Records that every event up to `mark` was delivered. Survives a crash of the process
    /// (not necessarily of the machine): a lost mark only repeats a delivery.
    fn set_feed_mark(&self, _mark: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the feed is written outside this process (the Redis engine's scripts) and
    /// shared by several nodes: then everything up to its last cursor is readable (no writer's
    /// horizon), and only the holder of `feed_lease` delivers it.
    fn feed_shared(&self) -> bool {
        false
    }

    /// Takes or renews the lease on delivering the shared feed for `ttl_ms`; false while
    /// another node holds it. A store of one process always holds it.
    fn feed_lease(&self, _ttl_ms: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Every stream ever written, with its last seq and cursor.
    fn streams(&self) -> Result<Vec<StreamInfo>, StoreError>;

    /// Messages with seq > `after`, oldest first, at most `limit`.
    fn after(
        &self,
        stream: &Stream,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Messages with seq < `before`, newest first, at most `limit`.
    fn before(
        &self,
        stream: &Stream,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// Deletes the stream's oldest messages while their seq is below `keep_from` or their ts
    /// below `min_ts`, stopping at the first message that is neither (history stays one
    /// unbroken run). Returns how many were deleted. The last seq is kept.
    fn trim(&self, stream: &Stream, keep_from: u64, min_ts: u64) -> Result<usize, StoreError>;

    /// The stream's newest `limit` keys (written with their messages), in any order.
    fn keys(&self, _stream: &Stream, _limit: usize) -> Result<Vec<KeyEntry>, StoreError> {
        Ok(Vec::new())
    }

    /// Deletes the stream's oldest keys while their message is gone (trimmed) and they were
    /// written before `before_ts`, stopping at the first that is not. Returns how many.
    fn trim_keys(&self, _stream: &Stream, _before_ts: u64) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Makes everything written so far durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// Sets read positions (user, stream → seq) in one commit; with `durable`, synced. A store
    /// that keeps none (the cluster's reads) ignores them.
    fn write_reads(&self, _reads: &[ReadPosition], _durable: bool) -> Result<(), StoreError> {
        Ok(())
    }

    /// The stream's last seq (0 if never written).
    fn last_seq(&self, stream: &Stream) -> Result<u64, StoreError> {
        let streams = self.streams()?;
        Ok((streams.iter().find(|i| &i.stream == stream)).map_or(0, |i| i.last_seq))
    }

    /// Every stored read position.
    fn reads(&self) -> Result<Vec<ReadPosition>, StoreError> {
        Ok(Vec::new())
    }

    /// The folded state of each of `seqs` (messages changed by an edit, delete or reaction;
    /// `None` for one never changed), in order.
    fn folded(&self, _stream: &Stream, seqs: &[u64]) -> Result<Vec<Option<Folded>>, StoreError> {
        Ok(vec![None; seqs.len()])
    }

    /// Message `seq`, if it is stored.
    fn message(&self, stream: &Stream, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        let Some(after) = seq.checked_sub(1) else {
            return Ok(None);
        };
        let first = self.after(stream, after, 1)?.into_iter().next();
        Ok(first.filter(|m| m.seq == seq))
    }
}

/// Parses a stored folded state; a corrupt one reads as an error.
fn parse_folded(bytes: &[u8]) -> Result<Folded, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Read(format!("corrupt folded state: {e}")))
}

/// The highest seq per stream in a batch, for the last-seq records.
fn last_seqs(batch: &[Append]) -> Vec<(&Stream, u64)> {
    let mut last: Vec<(&Stream, u64)> = Vec::new();
    for a in batch {
        match last.iter_mut().find(|(s, _)| **s == a.stream) {
            Some((_, seq)) => *seq = (*seq).max(a.seq),
            None => last.push((&a.stream, a.seq)),
        }
    }
    last
}

/// Whether `trim` removes a message.
fn trimmed(m_seq: u64, m_ts: u64, keep_from: u64, min_ts: u64) -> bool {
    m_seq < keep_from || m_ts < min_ts
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

    fn append(stream: &Stream, seq: u64, ts: u64, payload: &'static [u8]) -> Append {
        Append {
            stream: stream.clone(),
            seq,
            ts,
            payload: Bytes::from_static(payload),
            key: None,
            event: None,
        }
    }

    /// The behaviour every `Store` must have.
    pub(super) fn contract(store: &dyn Store) {
        let (room, ab, inbox) = (
            Stream::Room(n("a")),
            Stream::Room(n("ab")),
            Stream::Inbox(n("a")),
        );
        let mut batch: Vec<_> = (1..=5)
            .map(|seq| append(&room, seq, 100 + seq, b"{\"m\":1}"))
            .collect();
        batch.push(append(&ab, 1, 1, b"ab"));
        batch.push(append(&inbox, 7, 1, b"dm"));
        store.write(&batch, &[(inbox.clone(), 3)], true).unwrap();

        let mut infos = store.streams().unwrap();
        infos.sort_by(|a, b| a.stream.cmp(&b.stream));
        let info = |stream: &Stream, last_seq, cursor| StreamInfo {
            stream: stream.clone(),
            last_seq,
            cursor,
        };
        assert_eq!(
            infos,
            [info(&room, 5, 0), info(&ab, 1, 0), info(&inbox, 7, 3)]
        );

        assert_eq!(seqs(&store.after(&room, 0, 100).unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(seqs(&store.after(&room, 2, 2).unwrap()), [3, 4]);
        assert_eq!(seqs(&store.after(&room, 5, 10).unwrap()), Vec::<u64>::new());
        assert_eq!(seqs(&store.before(&room, 5, 3).unwrap()), [4, 3, 2]);
        assert_eq!(seqs(&store.before(&room, u64::MAX, 2).unwrap()), [5, 4]);
        let first = &store.after(&room, 0, 1).unwrap()[0];
        assert_eq!((&first.payload[..], first.ts), (&b"{\"m\":1}"[..], 101));
        let ab_msgs = store.after(&ab, 0, 10).unwrap();
        assert_eq!(
            ab_msgs.len(),
            1,
            "a prefix of another stream's name is another stream"
        );
        assert_eq!(&ab_msgs[0].payload[..], b"ab");

        assert_eq!(store.trim(&room, 3, 0).unwrap(), 2, "by seq");
        assert_eq!(store.trim(&room, 0, 104).unwrap(), 1, "by age");
        assert_eq!(seqs(&store.after(&room, 0, 100).unwrap()), [4, 5]);
        // A cursor write alone keeps the last seq; a lower seq never lowers it.
        store
            .write(
                &[append(&room, 2, 1, b"late")],
                &[(inbox.clone(), 7)],
                false,
            )
            .unwrap();
        let infos = store.streams().unwrap();
        assert!(infos.contains(&info(&room, 5, 0)), "{infos:?}");
        assert!(infos.contains(&info(&inbox, 7, 7)), "{infos:?}");
        store.sync().unwrap();

        // Keys: written with their messages, trimmed only once the message is gone and they
        // are old enough.
        let k = Stream::Room(n("k"));
        let keyed = |seq, ts, key: &'static [u8]| Append {
            key: Some(Bytes::from_static(key)),
            ..append(&k, seq, ts, b"m")
        };
        let batch = [
            keyed(1, 10, b"a k1"),
            append(&k, 2, 20, b"m"),
            keyed(3, 30, b"a k3"),
            keyed(4, 40, b"b k1"),
        ];
        store.write(&batch, &[], true).unwrap();
        let mut keys = store.keys(&k, 10).unwrap();
        keys.sort();
        let entry = |seq, key: &'static [u8]| (seq, Bytes::from_static(key));
        assert_eq!(
            keys,
            [entry(1, b"a k1"), entry(3, b"a k3"), entry(4, b"b k1")]
        );
        let mut newest = store.keys(&k, 2).unwrap();
        newest.sort();
        assert_eq!(newest, [entry(3, b"a k3"), entry(4, b"b k1")]);
        assert_eq!(store.trim_keys(&k, 100).unwrap(), 0, "messages still kept");
        assert_eq!(store.trim(&k, 4, 0).unwrap(), 3);
        assert_eq!(
            store.trim_keys(&k, 20).unwrap(),
            1,
            "only those before the time"
        );
        assert_eq!(store.trim_keys(&k, 100).unwrap(), 1, "seq 4 is still kept");
        assert_eq!(store.keys(&k, 10).unwrap(), [entry(4, b"b k1")]);
        assert!(store.keys(&room, 10).unwrap().is_empty());
    }

    /// The feed's behaviour every `Store` with a feed must have.
    pub(super) fn feed_contract(store: &dyn Store) {
        let ev = |cursor, ts| FeedRecord {
            cursor,
            ts,
            payload: Bytes::from(format!("{{\"c\":{cursor}}}")),
        };
        assert_eq!(store.feed_state().unwrap(), FeedState::default());
        let room = Stream::Room(n("f"));
        let batch = [append(&room, 1, 1, b"m")];
        let events: Vec<_> = (1..=5).map(|c| ev(c, 100 + c)).collect();
        store.write_with_feed(&batch, &[], &events, true).unwrap();
        store
            .write_with_feed(&[], &[], &[ev(6, 200)], false)
            .unwrap();
        let state = FeedState {
            first: 1,
            last: 6,
            mark: 0,
        };
        assert_eq!(store.feed_state().unwrap(), state);
        let cursors = |v: Vec<FeedRecord>| v.iter().map(|r| r.cursor).collect::<Vec<_>>();
        assert_eq!(cursors(store.feed_after(0, 3).unwrap()), [1, 2, 3]);
        assert_eq!(cursors(store.feed_after(4, 10).unwrap()), [5, 6]);
        assert_eq!(store.feed_after(1, 1).unwrap(), [ev(2, 102)]);
        assert_eq!(store.feed_trim(3, 0).unwrap(), 2, "by cursor");
        assert_eq!(store.feed_trim(0, 104).unwrap(), 1, "by age");
        store.set_feed_mark(4).unwrap();
        let state = FeedState {
            first: 4,
            last: 6,
            mark: 4,
        };
        assert_eq!(store.feed_state().unwrap(), state);
        assert_eq!(store.feed_trim(7, 0).unwrap(), 3);
        let state = FeedState {
            first: 0,
            last: 6,
            mark: 4,
        };
        assert_eq!(
            store.feed_state().unwrap(),
            state,
            "the last cursor outlives its event"
        );
    }

    #[test]
    fn memory_store_keeps_the_contract() {
        contract(&MemoryStore::default());
        feed_contract(&MemoryStore::default());
    }

    #[test]
    fn prefixes_round_trip() {
        for s in [Stream::Room(n("r:1")), Stream::Inbox(n("u@x"))] {
            assert_eq!(Stream::from_prefix(&s.prefix()), Some(s));
        }
        assert_eq!(Stream::from_prefix(b"xa\0"), None);
        assert_eq!(Stream::from_prefix(b"ra"), None);
    }

    #[test]
    fn batch_last_seqs_take_the_highest_per_stream() {
        let (a, b) = (Stream::Room(n("a")), Stream::Room(n("b")));
        let batch = [
            append(&a, 3, 0, b""),
            append(&b, 1, 0, b""),
            append(&a, 4, 0, b""),
        ];
        assert_eq!(last_seqs(&batch), [(&a, 4), (&b, 1)]);
    }
}
