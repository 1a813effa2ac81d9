//! The open fjall database: its keyspaces, how keys and values are laid out in them, and the
//! batch that writes a commit, trims a stream and reads a range. [`super::FjallStore`] owns
//! one of these at a time (it reopens after a failed write) and keeps the `Store` contract;
//! this file knows nothing of reopening.

use std::path::Path;

use bytes::Bytes;
use fjall::{Database, Iter, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::StoreMemory;
use crate::core::{Name, Stream};
use crate::store::{Append, FeedRecord, StoreError, StoredMessage, last_seqs, read_key};

/// Read positions live in the `cursors` keyspace under this first byte (a stream's cursor key
/// starts with `r` or `i`), so the store keeps no keyspace more for them.
pub(super) const POSITIONS: u8 = b'p';

pub(super) fn positions_key(user: &Name, stream: &Stream) -> Vec<u8> {
    let mut k = vec![POSITIONS];
    k.extend_from_slice(&read_key(user, stream));
    k
}

/// The memtable of the per-stream keyspaces (`last_seq`, `cursors`).
pub(super) const SMALL_MEMTABLE_BYTES: u64 = 1 << 20;

pub(super) struct Db {
    pub(super) db: Database,
    pub(super) messages: Keyspace,
    pub(super) keys: Keyspace,
    pub(super) last: Keyspace,
    pub(super) cursors: Keyspace,
    /// `feed` and `feed_meta`, when the feed is on.
    pub(super) feed: Option<(Keyspace, Keyspace)>,
    pub(super) broken: bool,
}

/// `feed_meta` keys: the highest cursor written, and the delivery mark.
pub(super) const FEED_LAST: &[u8] = b"last";
pub(super) const FEED_MARK: &[u8] = b"mark";

impl Db {
    pub(super) fn open(dir: &Path, memory: StoreMemory) -> Result<Db, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let db = Database::builder(dir)
            .cache_size(memory.cache_bytes)
            .open()
            .map_err(|e| e.to_string())?;
        let ks = |name, memtable| {
            let options = || KeyspaceCreateOptions::default().max_memtable_size(memtable);
            db.keyspace(name, options).map_err(|e| e.to_string())
        };
        // `last_seq` and `cursors` hold one record per stream but get a new version of it in
        // nearly every batch: a large memtable would keep minutes of superseded versions
        // (the soak's RSS grew by them); a flush keeps only the latest.
        let small = memory.memtable_bytes.min(SMALL_MEMTABLE_BYTES);
        Ok(Db {
            messages: ks("messages", memory.memtable_bytes)?,
            keys: ks("keys", small)?,
            last: ks("last_seq", small)?,
            cursors: ks("cursors", small)?,
            feed: match memory.feed {
                true => Some((ks("feed", memory.memtable_bytes)?, ks("feed_meta", small)?)),
                false => None,
            },
            db,
            broken: false,
        })
    }

    /// The feed's keyspaces, or an error when the store was opened without them.
    pub(super) fn feed(&self) -> Result<(&Keyspace, &Keyspace), StoreError> {
        let no_feed = || StoreError::Write("the store was opened without the event feed".into());
        self.feed.as_ref().map(|(e, m)| (e, m)).ok_or_else(no_feed)
    }

    pub(super) fn u64_at(ks: &Keyspace, key: &[u8]) -> Result<u64, StoreError> {
        let value = ks.get(key).map_err(read_err)?;
        Ok(value.as_deref().map_or(0, be_u64))
    }

    pub(super) fn write(
        &self,
        appends: &[Append],
        cursors: &[(Stream, u64)],
        feed: &[FeedRecord],
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.batch();
        if let Some(last) = feed.iter().map(|r| r.cursor).max() {
            let (events, meta) = self.feed()?;
            for r in feed {
                let mut value = Vec::with_capacity(8 + r.payload.len());
                value.extend_from_slice(&r.ts.to_be_bytes());
                value.extend_from_slice(&r.payload);
                tx.insert(events, r.cursor.to_be_bytes(), value);
            }
            tx.insert(meta, FEED_LAST, last.to_be_bytes());
        }
        for a in appends {
            let mut value = Vec::with_capacity(8 + a.payload.len());
            value.extend_from_slice(&a.ts.to_be_bytes());
            value.extend_from_slice(&a.payload);
            tx.insert(&self.messages, a.stream.key(a.seq), value);
            if let Some(key) = &a.key {
                let mut value = Vec::with_capacity(8 + key.len());
                value.extend_from_slice(&a.ts.to_be_bytes());
                value.extend_from_slice(key);
                tx.insert(&self.keys, a.stream.key(a.seq), value);
            }
            if let Some(ev) = &a.event {
                tx.insert(&self.keys, fold_key(&a.stream, ev.target), ev.state_json());
                for (seq, ts, payload) in &ev.rewrites {
                    let mut value = Vec::with_capacity(8 + payload.len());
                    value.extend_from_slice(&ts.to_be_bytes());
                    value.extend_from_slice(payload);
                    tx.insert(&self.messages, a.stream.key(*seq), value);
                }
            }
        }
        for (stream, seq) in last_seqs(appends) {
            let prefix = stream.prefix();
            // Never lower it: a batch may carry a seq below one already stored.
            let current = Db::u64_at(&self.last, &prefix)?;
            tx.insert(&self.last, prefix, seq.max(current).to_be_bytes());
        }
        for (stream, cursor) in cursors {
            tx.insert(&self.cursors, stream.prefix(), cursor.to_be_bytes());
        }
        tx.commit().map_err(write_err)?;
        if durable {
            self.db.persist(PersistMode::SyncAll).map_err(write_err)?;
        }
        Ok(())
    }

    /// Deletes the stream's oldest entries in `ks` (messages or keys: seq → ts ++ ...) while
    /// `gone(seq, ts)`, stopping at the first that is not. Returns how many.
    pub(super) fn trim_front(
        &self,
        ks: &Keyspace,
        stream: &Stream,
        gone: impl Fn(u64, u64) -> bool,
    ) -> Result<usize, StoreError> {
        self.remove_front(ks, ks.prefix(stream.prefix()), seq_of, gone)
    }

    /// Deletes `entries` of `ks` (key → ts ++ ...) from the front while `gone(seq, ts)`, the
    /// seq read from the key by `seq`; stops at the first that is not. Returns how many.
    pub(super) fn remove_front(
        &self,
        ks: &Keyspace,
        entries: Iter,
        seq: impl Fn(&[u8]) -> Result<u64, StoreError>,
        gone: impl Fn(u64, u64) -> bool,
    ) -> Result<usize, StoreError> {
        let mut tx = self.db.batch();
        let mut removed = 0;
        for guard in entries {
            let (key, value) = guard.into_inner().map_err(read_err)?;
            let (ts, _) = split_value(&value)?;
            if !gone(seq(&key)?, ts) {
                break;
            }
            tx.remove(ks, key);
            removed += 1;
        }
        if removed > 0 {
            tx.commit().map_err(write_err)?;
        }
        Ok(removed)
    }

    /// Deletes the folded states of messages no longer stored (below the first kept one):
    /// a trimmed message's latest body must not outlive it.
    pub(super) fn trim_folds(&self, stream: &Stream) -> Result<(), StoreError> {
        let kept = match self.messages.prefix(stream.prefix()).next() {
            Some(first) => seq_of(&first.key().map_err(read_err)?)?,
            None => u64::MAX,
        };
        let mut tx = self.db.batch();
        let mut any = false;
        let prefix = [&b"f"[..], &stream.prefix()].concat();
        for guard in self.keys.prefix(prefix) {
            let key = guard.key().map_err(read_err)?;
            if seq_of(&key)? >= kept {
                break;
            }
            tx.remove(&self.keys, key);
            any = true;
        }
        if any {
            tx.commit().map_err(write_err)?;
        }
        Ok(())
    }

    pub(super) fn read(
        iter: impl Iterator<Item = fjall::Guard>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::new();
        for guard in iter.take(limit) {
            let (key, value) = guard.into_inner().map_err(read_err)?;
            let (ts, payload) = split_value(&value)?;
            out.push(StoredMessage {
                seq: seq_of(&key)?,
                ts,
                payload: Bytes::copy_from_slice(payload),
            });
        }
        Ok(out)
    }
}

/// A changed message's folded state (`core::event::Folded` as JSON) lives in the `keys`
/// keyspace under `f` ++ its message key: no stream prefix starts with `f`, so the keys of a
/// stream never see it. (A keyspace of its own cost the disk-full recovery its margin.)
pub(super) fn fold_key(stream: &Stream, seq: u64) -> Vec<u8> {
    let mut k = vec![b'f'];
    k.extend_from_slice(&stream.key(seq));
    k
}

pub(super) fn read_err(e: fjall::Error) -> StoreError {
    StoreError::Read(e.to_string())
}

pub(super) fn write_err(e: fjall::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

pub(super) fn be_u64(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

/// The seq in a message key's last 8 bytes.
pub(super) fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .map(|at| be_u64(&key[at..]))
        .ok_or_else(|| StoreError::Read("corrupt message key".into()))
}

/// A message value: ts, then the payload.
pub(super) fn split_value(value: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if value.len() < 8 {
        return Err(StoreError::Read("corrupt message value".into()));
    }
    Ok((be_u64(&value[..8]), &value[8..]))
}
