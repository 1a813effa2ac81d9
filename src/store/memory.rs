//! `MemoryStore`: the `Store` contract with nothing on disk (durability mode `memory`, and
//! tests). A mutex is fine here: the store is called from the store thread, not from shards.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

use super::{Append, Store, StoreError, StoredMessage, Stream, last_seqs};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Stream prefix → seq → payload.
    messages: HashMap<Vec<u8>, BTreeMap<u64, Bytes>>,
    last: HashMap<Vec<u8>, u64>,
}

impl MemoryStore {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the maps half-updated: every update is one insert.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryStore {
    /// Runs `pick` on the stream's messages; a stream never written has none.
    fn read(
        &self,
        stream: Stream<'_>,
        pick: impl FnOnce(&BTreeMap<u64, Bytes>) -> Vec<StoredMessage>,
    ) -> Vec<StoredMessage> {
        self.inner()
            .messages
            .get(&stream.prefix())
            .map(pick)
            .unwrap_or_default()
    }
}

fn collect<'a>(
    messages: impl Iterator<Item = (&'a u64, &'a Bytes)>,
    limit: usize,
) -> Vec<StoredMessage> {
    messages
        .take(limit)
        .map(|(&seq, payload)| StoredMessage {
            seq,
            payload: payload.clone(),
        })
        .collect()
}

impl Store for MemoryStore {
    fn append(&self, batch: &[Append<'_>], _durable: bool) -> Result<(), StoreError> {
        let mut inner = self.inner();
        for a in batch {
            let stream = inner.messages.entry(a.stream.prefix()).or_default();
            stream.insert(a.seq, Bytes::copy_from_slice(a.payload));
        }
        for (stream, seq) in last_seqs(batch) {
            let last = inner.last.entry(stream.prefix()).or_default();
            *last = (*last).max(seq);
        }
        Ok(())
    }

    fn last_seq(&self, stream: Stream<'_>) -> Result<u64, StoreError> {
        Ok(self
            .inner()
            .last
            .get(&stream.prefix())
            .copied()
            .unwrap_or(0))
    }

    fn after(
        &self,
        stream: Stream<'_>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.read(stream, |m| {
            collect(m.range(after.saturating_add(1)..), limit)
        }))
    }

    fn before(
        &self,
        stream: Stream<'_>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.read(stream, |m| collect(m.range(..before).rev(), limit)))
    }

    fn trim(&self, stream: Stream<'_>, keep_from: u64) -> Result<usize, StoreError> {
        let mut inner = self.inner();
        let Some(messages) = inner.messages.get_mut(&stream.prefix()) else {
            return Ok(0);
        };
        let kept = messages.split_off(&keep_from);
        let removed = messages.len();
        *messages = kept;
        Ok(removed)
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
