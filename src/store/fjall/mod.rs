//! `FjallStore`: the `Store` on fjall, an LSM-tree with a write-ahead journal. A commit appends
//! to the journal; a durable commit adds one fsync (group commit). Six keyspaces, written in
//! one atomic batch: `messages` (stream prefix ++ seq → ts ++ payload), `keys` (the same key →
//! ts ++ "SENDER KEY", for a keyed message; and `f` ++ that key → a changed message's folded
//! state), `last_seq` and `cursors` (stream prefix → u64), `feed` (cursor → ts ++ event JSON)
//! and `feed_meta` ("last" and "mark" → u64), all integers big-endian.
//!
//! After a failed write fjall refuses every later one ("poisoned": it cannot know what reached
//! disk). The next call then reopens the database, which recovers from its journal, so a disk
//! that fills up and is freed again does not need a restart. Part or all of the failed batch
//! may still reach the journal (its buffer is flushed when the old instance is dropped), so the
//! reopen first deletes the failed batch's messages: a write reported failed is never read.
//!
//! [`db`] is one open database (keyspaces, key layout, the write batch); this file keeps the
//! `Store` contract over it and the reopen.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use bytes::Bytes;
use fjall::PersistMode;

use super::{
    Append, FeedRecord, FeedState, KeyEntry, ReadPosition, Store, StoreError, StoredMessage,
    StreamInfo, from_read_key, parse_folded, trimmed,
};
use crate::core::Stream;
use crate::core::event::Folded;

mod db;

use db::{
    Db, FEED_LAST, FEED_MARK, POSITIONS, be_u64, fold_key, positions_key, read_err, seq_of,
    split_value, write_err,
};

/// How much memory the store may use: its block cache, and unflushed messages (the memtable
/// of the `messages` keyspace; the small keyspaces take at most `db::SMALL_MEMTABLE_BYTES`).
#[derive(Clone, Copy, Debug)]
pub struct StoreMemory {
    pub cache_bytes: u64,
    pub memtable_bytes: u64,
    /// Open the event feed's keyspaces (`event_feed` or `webhook_url` on). Without them the
    /// store is the same as before the feed existed, and refuses feed records.
    pub feed: bool,
}

impl Default for StoreMemory {
    /// The config's defaults (16 MiB of cache, a 2 MiB memtable for messages: an 8 MiB one
    /// made the soak's RSS swing by ~10 MiB with each flush, 20% of the server's).
    fn default() -> StoreMemory {
        StoreMemory {
            cache_bytes: 16 << 20,
            memtable_bytes: 2 << 20,
            feed: false,
        }
    }
}

pub struct FjallStore {
    dir: PathBuf,
    memory: StoreMemory,
    /// `None` after a failed reopen; `broken` after a failed write.
    db: RwLock<Option<Db>>,
    /// Keys of messages whose write failed, to delete at the reopen.
    undo: Mutex<Vec<Vec<u8>>>,
}

impl FjallStore {
    /// Opens (or creates) the store in `dir`, with the default memory bounds (the unit tests').
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<FjallStore, StoreError> {
        let memory = StoreMemory {
            feed: true,
            ..StoreMemory::default()
        };
        FjallStore::open_with(dir, memory)
    }

    /// Opens (or creates) the store in `dir`, using at most `memory` for its cache and
    /// unflushed writes.
    pub fn open_with(dir: &Path, memory: StoreMemory) -> Result<FjallStore, StoreError> {
        let db = Db::open(dir, memory).map_err(|message| StoreError::Open {
            path: dir.display().to_string(),
            message,
        })?;
        Ok(FjallStore {
            dir: dir.to_owned(),
            memory,
            db: RwLock::new(Some(db)),
            undo: Mutex::new(Vec::new()),
        })
    }

    /// Flushes every keyspace's memtable to disk, compacts each fully and drops the journal,
    /// so overwritten and deleted values (a hard delete's erased body) leave the data
    /// directory's files. The journal is only rotated at 64 MB, so it is removed here once
    /// everything it holds is in tables (fjall starts a new one when it finds none; keyspace
    /// names live in tables, not in the journal). Costs a rewrite of the whole store: for an
    /// offline operator tool and tests, never while a server writes to it.
    pub fn compact(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        let Some(db) = slot.as_ref() else {
            return Err(StoreError::Write("the store is not open".into()));
        };
        db.db.persist(PersistMode::SyncAll).map_err(write_err)?;
        for ks in [&db.messages, &db.keys, &db.last, &db.cursors] {
            ks.rotate_memtable_and_wait().map_err(write_err)?;
            ks.major_compact().map_err(write_err)?;
        }
        drop(slot.take());
        let io = |e: std::io::Error| StoreError::Write(e.to_string());
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "jnl") {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        *slot = Some(Db::open(&self.dir, self.memory).map_err(StoreError::Write)?);
        Ok(())
    }

    /// The open database, reopened first if a write failed.
    fn db(&self) -> Result<RwLockReadGuard<'_, Option<Db>>, StoreError> {
        self.heal()?;
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Read(format!(
                "the store in {} could not be reopened after a failure",
                self.dir.display()
            )));
        }
        Ok(guard)
    }

    /// Reopens the database if a write failed, so it recovers from its journal.
    fn heal(&self) -> Result<(), StoreError> {
        let needs = self.db.read().unwrap_or_else(|p| p.into_inner());
        if needs.as_ref().is_some_and(|db| !db.broken) {
            return Ok(());
        }
        drop(needs);
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|db| !db.broken) {
            return Ok(());
        }
        // The old instance must be gone before the new one takes the directory's lock.
        drop(slot.take());
        let db = Db::open(&self.dir, self.memory)
            .map_err(|e| StoreError::Write(format!("cannot reopen the store: {e}")))?;
        let mut undo = self.undo.lock().unwrap_or_else(|p| p.into_inner());
        if !undo.is_empty() {
            let mut tx = db.db.batch();
            for key in undo.iter() {
                tx.remove(&db.messages, key.clone());
                tx.remove(&db.keys, key.clone());
                if let Some((feed, _)) = &db.feed {
                    tx.remove(feed, key.clone());
                }
            }
            // On failure `db` is dropped unused and the next call tries again.
            tx.commit()
                .and_then(|_| db.db.persist(PersistMode::SyncAll))
                .map_err(write_err)?;
            undo.clear();
        }
        tracing::warn!(dir = %self.dir.display(), "message store reopened after a failure");
        *slot = Some(db);
        Ok(())
    }
}

impl Store for FjallStore {
    fn write_with_feed(
        &self,
        appends: &[Append],
        cursors: &[(Stream, u64)],
        feed: &[FeedRecord],
        durable: bool,
    ) -> Result<(), StoreError> {
        let result = self
            .db()?
            .as_ref()
            .expect("checked")
            .write(appends, cursors, feed, durable);
        if result.is_err() {
            let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
            if let Some(db) = slot.as_mut() {
                db.broken = true;
            }
            let mut undo = self.undo.lock().unwrap_or_else(|p| p.into_inner());
            undo.extend(appends.iter().map(|a| a.stream.key(a.seq)));
            // 8 bytes: never a message key (at least 11), so one list serves both.
            undo.extend(feed.iter().map(|r| r.cursor.to_be_bytes().to_vec()));
        }
        result
    }

    fn streams(&self) -> Result<Vec<StreamInfo>, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let mut out = Vec::new();
        for guard in db.last.iter() {
            let (key, value) = guard.into_inner().map_err(read_err)?;
            let Some(stream) = Stream::from_prefix(&key) else {
                return Err(StoreError::Read("corrupt stream key".into()));
            };
            out.push(StreamInfo {
                cursor: Db::u64_at(&db.cursors, &key)?,
                stream,
                last_seq: be_u64(&value),
            });
        }
        Ok(out)
    }

    fn after(
        &self,
        stream: &Stream,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let range = stream.key(from)..=stream.key(u64::MAX);
        Db::read(db.messages.range(range), limit)
    }

    fn before(
        &self,
        stream: &Stream,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let range = stream.key(0)..stream.key(before);
        Db::read(db.messages.range(range).rev(), limit)
    }

    fn trim(&self, stream: &Stream, keep_from: u64, min_ts: u64) -> Result<usize, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let removed = db.trim_front(&db.messages, stream, |seq, ts| {
            trimmed(seq, ts, keep_from, min_ts)
        })?;
        if removed > 0 {
            db.trim_folds(stream)?;
        }
        Ok(removed)
    }

    fn folded(&self, stream: &Stream, seqs: &[u64]) -> Result<Vec<Option<Folded>>, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let value = db.keys.get(fold_key(stream, seq)).map_err(read_err)?;
            out.push(value.as_deref().map(parse_folded).transpose()?);
        }
        Ok(out)
    }

    fn keys(&self, stream: &Stream, limit: usize) -> Result<Vec<KeyEntry>, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let mut out = Vec::new();
        for guard in db.keys.prefix(stream.prefix()).rev().take(limit) {
            let (key, value) = guard.into_inner().map_err(read_err)?;
            let (_, id) = split_value(&value)?;
            out.push((seq_of(&key)?, Bytes::copy_from_slice(id)));
        }
        Ok(out)
    }

    fn trim_keys(&self, stream: &Stream, before_ts: u64) -> Result<usize, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let kept = match db.messages.prefix(stream.prefix()).next() {
            Some(first) => seq_of(&first.key().map_err(read_err)?)?,
            None => u64::MAX,
        };
        db.trim_front(&db.keys, stream, |seq, ts| seq < kept && ts < before_ts)
    }

    fn feed_state(&self) -> Result<FeedState, StoreError> {
        let guard = self.db()?;
        let Some((feed, meta)) = &guard.as_ref().expect("checked").feed else {
            return Ok(FeedState::default());
        };
        let first = match feed.iter().next() {
            Some(first) => be_u64(&first.key().map_err(read_err)?),
            None => 0,
        };
        Ok(FeedState {
            first,
            last: Db::u64_at(meta, FEED_LAST)?,
            mark: Db::u64_at(meta, FEED_MARK)?,
        })
    }

    fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<FeedRecord>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let guard = self.db()?;
        let Some((feed, _)) = &guard.as_ref().expect("checked").feed else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for guard in feed.range(from.to_be_bytes()..).take(limit) {
            let (key, value) = guard.into_inner().map_err(read_err)?;
            let (ts, payload) = split_value(&value)?;
            out.push(FeedRecord {
                cursor: be_u64(&key),
                ts,
                payload: Bytes::copy_from_slice(payload),
            });
        }
        Ok(out)
    }

    fn write_reads(&self, reads: &[ReadPosition], durable: bool) -> Result<(), StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let mut tx = db.db.batch();
        for (user, stream, seq) in reads {
            tx.insert(&db.cursors, positions_key(user, stream), seq.to_be_bytes());
        }
        tx.commit().map_err(write_err)?;
        // Into the OS at least, so a kill -9 keeps them; to the disk under sync durability.
        let mode = if durable {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        db.db.persist(mode).map_err(write_err)
    }

    fn last_seq(&self, stream: &Stream) -> Result<u64, StoreError> {
        let guard = self.db()?;
        Db::u64_at(&guard.as_ref().expect("checked").last, &stream.prefix())
    }

    fn reads(&self) -> Result<Vec<ReadPosition>, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let mut out = Vec::new();
        for guard in db.cursors.prefix([POSITIONS]) {
            let (key, value) = guard.into_inner().map_err(read_err)?;
            if let Some((user, stream)) = from_read_key(&key[1..]) {
                out.push((user, stream, be_u64(&value)));
            }
        }
        Ok(out)
    }

    fn feed_trim(&self, keep_from: u64, min_ts: u64) -> Result<usize, StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let Some((feed, _)) = &db.feed else {
            return Ok(0);
        };
        db.remove_front(
            feed,
            feed.iter(),
            |key| Ok(be_u64(key)),
            |cursor, ts| trimmed(cursor, ts, keep_from, min_ts),
        )
    }

    fn set_feed_mark(&self, mark: u64) -> Result<(), StoreError> {
        let guard = self.db()?;
        let db = guard.as_ref().expect("checked");
        let (_, meta) = db.feed()?;
        let mut tx = db.db.batch();
        tx.insert(meta, FEED_MARK, mark.to_be_bytes());
        tx.commit().map_err(write_err)?;
        // To the OS, not the disk: a kill -9 keeps it; a power cut may repeat a batch.
        db.db.persist(PersistMode::Buffer).map_err(write_err)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let guard = self.db()?;
        guard
            .as_ref()
            .expect("checked")
            .db
            .persist(PersistMode::SyncAll)
            .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Name;

    #[test]
    fn keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::contract(&FjallStore::open(dir.path()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::feed_contract(&FjallStore::open(dir.path()).unwrap());
    }

    #[test]
    fn messages_and_seqs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let room = Stream::Room(Name::new("r").unwrap());
        {
            let store = FjallStore::open(dir.path()).unwrap();
            let batch: Vec<_> = (1..=3)
                .map(|seq| Append {
                    stream: room.clone(),
                    seq,
                    ts: 1,
                    payload: Bytes::from_static(b"x"),
                    key: None,
                    event: None,
                })
                .collect();
            store.write(&batch, &[], true).unwrap();
            store.trim(&room, 3, 0).unwrap();
        }
        let store = FjallStore::open(dir.path()).unwrap();
        let infos = store.streams().unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].last_seq, 3);
        let left = store.after(&room, 0, 10).unwrap();
        assert_eq!(left.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
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
