//! `MemoryStore`: the `Store` contract with nothing on disk (durability mode `memory`, and
//! tests). A mutex is fine here: the store is called from the store threads, not from shards.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

use super::{
    Append, FeedRecord, FeedState, KeyEntry, ReadPosition, Store, StoreError, StoredMessage,
    StreamInfo, from_read_key, last_seqs, read_key, trimmed,
};
use crate::core::Stream;
use crate::core::event::Folded;

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<HashMap<Stream, Entry>>,
    /// Read positions by `read_key`.
    reads: Mutex<BTreeMap<Vec<u8>, u64>>,
    feed: Mutex<Feed>,
}

/// The event feed: cursor → (ts, JSON), the last cursor written and the delivery mark.
#[derive(Default)]
struct Feed {
    events: BTreeMap<u64, (u64, Bytes)>,
    last: u64,
    mark: u64,
}

#[derive(Default)]
struct Entry {
    /// seq → (ts, payload).
    messages: BTreeMap<u64, (u64, Bytes)>,
    last_seq: u64,
    cursor: u64,
    /// seq → (ts, "SENDER KEY").
    keys: BTreeMap<u64, (u64, Bytes)>,
    /// seq → a changed message's folded state.
    folds: BTreeMap<u64, Folded>,
}

impl MemoryStore {
    fn inner(&self) -> std::sync::MutexGuard<'_, HashMap<Stream, Entry>> {
        // A panic elsewhere cannot leave the maps half-updated: every update is one insert.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn feed(&self) -> std::sync::MutexGuard<'_, Feed> {
        self.feed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `pick` on the stream's messages; a stream never written has none.
    fn read(
        &self,
        stream: &Stream,
        pick: impl FnOnce(&BTreeMap<u64, (u64, Bytes)>) -> Vec<StoredMessage>,
    ) -> Vec<StoredMessage> {
        self.inner()
            .get(stream)
            .map(|e| pick(&e.messages))
            .unwrap_or_default()
    }
}

fn collect<'a>(
    messages: impl Iterator<Item = (&'a u64, &'a (u64, Bytes))>,
    limit: usize,
) -> Vec<StoredMessage> {
    messages
        .take(limit)
        .map(|(&seq, (ts, payload))| StoredMessage {
            seq,
            ts: *ts,
            payload: payload.clone(),
        })
        .collect()
}

/// Removes the oldest entries (key → (ts, ..)) while `trimmed`; returns how many.
fn trim_front(map: &mut BTreeMap<u64, (u64, Bytes)>, keep_from: u64, min_ts: u64) -> usize {
    let mut removed = 0;
    while let Some(entry) = map.first_entry() {
        if !trimmed(*entry.key(), entry.get().0, keep_from, min_ts) {
            break;
        }
        entry.remove();
        removed += 1;
    }
    removed
}

impl Store for MemoryStore {
    fn write_reads(&self, reads: &[ReadPosition], _durable: bool) -> Result<(), StoreError> {
        let mut map = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        for (user, stream, seq) in reads {
            map.insert(read_key(user, stream), *seq);
        }
        Ok(())
    }

    fn reads(&self) -> Result<Vec<ReadPosition>, StoreError> {
        let map = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        Ok((map.iter())
            .filter_map(|(k, &seq)| from_read_key(k).map(|(u, s)| (u, s, seq)))
            .collect())
    }

    fn write_with_feed(
        &self,
        appends: &[Append],
        cursors: &[(Stream, u64)],
        feed: &[FeedRecord],
        _durable: bool,
    ) -> Result<(), StoreError> {
        if !feed.is_empty() {
            let mut f = self.feed();
            for r in feed {
                f.events.insert(r.cursor, (r.ts, r.payload.clone()));
                f.last = f.last.max(r.cursor);
            }
        }
        let mut inner = self.inner();
        for a in appends {
            let e = inner.entry(a.stream.clone()).or_default();
            e.messages.insert(a.seq, (a.ts, a.payload.clone()));
            if let Some(key) = &a.key {
                e.keys.insert(a.seq, (a.ts, key.clone()));
            }
            if let Some(ev) = &a.event {
                e.folds.insert(ev.target, ev.state.clone());
                for (seq, ts, payload) in &ev.rewrites {
                    e.messages.insert(*seq, (*ts, payload.clone()));
                }
            }
        }
        for (stream, seq) in last_seqs(appends) {
            let e = inner.entry(stream.clone()).or_default();
            e.last_seq = e.last_seq.max(seq);
        }
        for (stream, cursor) in cursors {
            inner.entry(stream.clone()).or_default().cursor = *cursor;
        }
        Ok(())
    }

    fn streams(&self) -> Result<Vec<StreamInfo>, StoreError> {
        Ok(self
            .inner()
            .iter()
            .map(|(stream, e)| StreamInfo {
                stream: stream.clone(),
                last_seq: e.last_seq,
                cursor: e.cursor,
            })
            .collect())
    }

    fn after(
        &self,
        stream: &Stream,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.read(stream, |m| {
            collect(m.range(after.saturating_add(1)..), limit)
        }))
    }

    fn before(
        &self,
        stream: &Stream,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.read(stream, |m| collect(m.range(..before).rev(), limit)))
    }

    fn trim(&self, stream: &Stream, keep_from: u64, min_ts: u64) -> Result<usize, StoreError> {
        let mut inner = self.inner();
        let Some(e) = inner.get_mut(stream) else {
            return Ok(0);
        };
        let removed = trim_front(&mut e.messages, keep_from, min_ts);
        let kept = e.messages.keys().next().copied().unwrap_or(u64::MAX);
        e.folds = e.folds.split_off(&kept);
        Ok(removed)
    }

    fn folded(&self, stream: &Stream, seqs: &[u64]) -> Result<Vec<Option<Folded>>, StoreError> {
        let inner = self.inner();
        let folds = inner.get(stream).map(|e| &e.folds);
        Ok(seqs
            .iter()
            .map(|s| folds.and_then(|f| f.get(s)).cloned())
            .collect())
    }

    fn keys(&self, stream: &Stream, limit: usize) -> Result<Vec<KeyEntry>, StoreError> {
        let inner = self.inner();
        let Some(e) = inner.get(stream) else {
            return Ok(Vec::new());
        };
        let newest = e.keys.iter().rev().take(limit);
        Ok(newest.map(|(&seq, (_, key))| (seq, key.clone())).collect())
    }

    fn trim_keys(&self, stream: &Stream, before_ts: u64) -> Result<usize, StoreError> {
        let mut inner = self.inner();
        let Some(e) = inner.get_mut(stream) else {
            return Ok(0);
        };
        let kept = e.messages.keys().next().copied().unwrap_or(u64::MAX);
        let mut removed = 0;
        while let Some(entry) = e.keys.first_entry() {
            if *entry.key() >= kept || entry.get().0 >= before_ts {
                break;
            }
            entry.remove();
            removed += 1;
        }
        Ok(removed)
    }

    fn feed_state(&self) -> Result<FeedState, StoreError> {
        let f = self.feed();
        Ok(FeedState {
            first: f.events.keys().next().copied().unwrap_or(0),
            last: f.last,
            mark: f.mark,
        })
    }

    fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<FeedRecord>, StoreError> {
        let f = self.feed();
        let events = f.events.range(after.saturating_add(1)..).take(limit);
        Ok(events
            .map(|(&cursor, (ts, payload))| FeedRecord {
                cursor,
                ts: *ts,
                payload: payload.clone(),
            })
            .collect())
    }

    fn feed_trim(&self, keep_from: u64, min_ts: u64) -> Result<usize, StoreError> {
        Ok(trim_front(&mut self.feed().events, keep_from, min_ts))
    }

    fn set_feed_mark(&self, mark: u64) -> Result<(), StoreError> {
        self.feed().mark = mark;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
