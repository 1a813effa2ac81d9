//! `FjallStore`: the `Store` on fjall, an LSM-tree with a write-ahead journal. A commit appends
//! to the journal; a durable commit adds one fsync (group commit). Two keyspaces: `messages`
//! (stream prefix ++ seq → payload) and `last_seq` (stream prefix → highest seq, big-endian),
//! written in the same atomic batch.

use std::path::Path;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Append, Store, StoreError, StoredMessage, Stream, last_seqs};

pub struct FjallStore {
    db: Database,
    messages: Keyspace,
    last: Keyspace,
}

impl FjallStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<FjallStore, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = Database::builder(dir)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let messages = db
            .keyspace("messages", KeyspaceCreateOptions::default)
            .map_err(|e| open_err(e.to_string()))?;
        let last = db
            .keyspace("last_seq", KeyspaceCreateOptions::default)
            .map_err(|e| open_err(e.to_string()))?;
        Ok(FjallStore { db, messages, last })
    }

    fn read(
        &self,
        iter: impl Iterator<Item = fjall::Guard>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut out = Vec::new();
        for guard in iter.take(limit) {
            let (key, value) = guard
                .into_inner()
                .map_err(|e| StoreError::Read(e.to_string()))?;
            out.push(StoredMessage {
                seq: seq_of(&key)?,
                payload: Bytes::copy_from_slice(&value),
            });
        }
        Ok(out)
    }
}

/// The seq in a message key's last 8 bytes.
fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Read("corrupt message key".into()))
}

impl Store for FjallStore {
    fn append(&self, batch: &[Append<'_>], durable: bool) -> Result<(), StoreError> {
        let write_err = |e: fjall::Error| StoreError::Write(e.to_string());
        let mut tx = self.db.batch();
        for a in batch {
            tx.insert(&self.messages, a.stream.key(a.seq), a.payload);
        }
        for (stream, seq) in last_seqs(batch) {
            let prefix = stream.prefix();
            // Never lower it: a batch may carry a seq below one already stored.
            let current = self.last_seq(stream)?;
            tx.insert(&self.last, prefix, seq.max(current).to_be_bytes());
        }
        tx.commit().map_err(write_err)?;
        if durable {
            self.db.persist(PersistMode::SyncAll).map_err(write_err)?;
        }
        Ok(())
    }

    fn last_seq(&self, stream: Stream<'_>) -> Result<u64, StoreError> {
        let value = self
            .last
            .get(stream.prefix())
            .map_err(|e| StoreError::Read(e.to_string()))?;
        Ok(value
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    fn after(
        &self,
        stream: Stream<'_>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let range = stream.key(from)..=stream.key(u64::MAX);
        self.read(self.messages.range(range), limit)
    }

    fn before(
        &self,
        stream: Stream<'_>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let range = stream.key(0)..stream.key(before);
        self.read(self.messages.range(range).rev(), limit)
    }

    fn trim(&self, stream: Stream<'_>, keep_from: u64) -> Result<usize, StoreError> {
        let range = stream.key(0)..stream.key(keep_from);
        let mut tx = self.db.batch();
        let mut removed = 0;
        for guard in self.messages.range(range) {
            let key = guard.key().map_err(|e| StoreError::Read(e.to_string()))?;
            tx.remove(&self.messages, key);
            removed += 1;
        }
        tx.commit().map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(removed)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| StoreError::Write(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Name;

    #[test]
    fn keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::contract(&FjallStore::open(dir.path()).unwrap());
    }

    #[test]
    fn messages_and_seqs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let room = Name::new("r").unwrap();
        {
            let store = FjallStore::open(dir.path()).unwrap();
            let batch: Vec<_> = (1..=3)
                .map(|seq| Append {
                    stream: Stream::Room(&room),
                    seq,
                    payload: b"x",
                })
                .collect();
            store.append(&batch, true).unwrap();
            store.trim(Stream::Room(&room), 4).unwrap();
        }
        let store = FjallStore::open(dir.path()).unwrap();
        assert_eq!(store.last_seq(Stream::Room(&room)).unwrap(), 3);
        assert!(store.after(Stream::Room(&room), 0, 10).unwrap().is_empty());
    }

    #[test]
    fn an_unusable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = FjallStore::open(&file.join("data"))
            .err()
            .expect("must fail");
        let text = err.to_string();
        assert!(
            text.contains("not-a-dir") && text.contains("--data"),
            "{text}"
        );
    }
}
