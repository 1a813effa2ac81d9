//! Embedded store candidates for room history / inboxes: redb vs fjall.
//!
//! Key = room id (u32 BE) ++ seq (u64 BE), value = 200 bytes.
//!
//! * `store_append/{engine}/{batch}`: one durable commit (fsync) of `batch`
//!   new records spread over 100 rooms — the group-commit cost.
//! * `store_tail/{engine}`: last 100 records of one room, newest first, from a
//!   store pre-filled with 100,000 records over 1,000 rooms.
//!
//! Data lives in a `tempfile::tempdir()` (i.e. under `$TMPDIR`, normally /tmp).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fjall::{KeyspaceCreateOptions, PersistMode};
use redb::{Durability, ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");
const VALUE: [u8; 200] = [0x5a; 200];
const APPEND_ROOMS: u64 = 100;
const TAIL_ROOMS: u64 = 1_000;
const TAIL_RECORDS: u64 = 100_000;
const TAIL_LEN: usize = 100;

fn key(room: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&room.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Record number `n` -> key, spread round-robin over `rooms` rooms with a
/// per-room seq.
fn nth_key(n: u64, rooms: u64) -> [u8; 12] {
    key((n % rooms) as u32, n / rooms)
}

struct Redb {
    _dir: tempfile::TempDir,
    db: redb::Database,
}

impl Redb {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("store.redb")).unwrap();
        Self { _dir: dir, db }
    }

    /// One durable write transaction with records `start..start + count`.
    fn append(&self, start: u64, count: u64, rooms: u64) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for n in start..start + count {
                table
                    .insert(nth_key(n, rooms).as_slice(), VALUE.as_slice())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn tail(&self, room: u32) -> usize {
        let tx = self.db.begin_read().unwrap();
        let table = tx.open_table(TABLE).unwrap();
        let (lo, hi) = (key(room, 0), key(room, u64::MAX));
        let mut bytes = 0;
        for item in table
            .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
            .unwrap()
            .rev()
            .take(TAIL_LEN)
        {
            let (k, v) = item.unwrap();
            bytes += k.value().len() + v.value().len();
        }
        bytes
    }
}

struct Fjall {
    _dir: tempfile::TempDir,
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Fjall {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let ks = db
            .keyspace("history", KeyspaceCreateOptions::default)
            .unwrap();
        Self { _dir: dir, db, ks }
    }

    /// One atomic batch with records `start..start + count`, then one fsync.
    fn append(&self, start: u64, count: u64, rooms: u64) {
        let mut batch = self.db.batch();
        for n in start..start + count {
            batch.insert(&self.ks, nth_key(n, rooms), VALUE);
        }
        batch.commit().unwrap();
        self.db.persist(PersistMode::SyncAll).unwrap();
    }

    fn tail(&self, room: u32) -> usize {
        let (lo, hi) = (key(room, 0), key(room, u64::MAX));
        let mut bytes = 0;
        for guard in self.ks.range(lo..=hi).rev().take(TAIL_LEN) {
            let (k, v) = guard.into_inner().unwrap();
            bytes += k.len() + v.len();
        }
        bytes
    }
}

fn store_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for batch in [1u64, 64, 512] {
        group.throughput(Throughput::Elements(batch));

        let store = Redb::new();
        let mut next = 0u64;
        group.bench_function(BenchmarkId::new("redb", batch), |b| {
            b.iter(|| {
                store.append(next, batch, APPEND_ROOMS);
                next += batch;
            })
        });
        drop(store);

        let store = Fjall::new();
        let mut next = 0u64;
        group.bench_function(BenchmarkId::new("fjall", batch), |b| {
            b.iter(|| {
                store.append(next, batch, APPEND_ROOMS);
                next += batch;
            })
        });
    }
    group.finish();
}

fn store_tail(c: &mut Criterion) {
    const PREFILL_BATCH: u64 = 10_000;
    let mut group = c.benchmark_group("store_tail");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(TAIL_LEN as u64));

    let store = Redb::new();
    for start in (0..TAIL_RECORDS).step_by(PREFILL_BATCH as usize) {
        store.append(start, PREFILL_BATCH, TAIL_ROOMS);
    }
    assert_eq!(store.tail(7), TAIL_LEN * 212);
    let mut room = 0u64;
    group.bench_function("redb", |b| {
        b.iter(|| {
            room = (room + 1) % TAIL_ROOMS;
            black_box(store.tail(room as u32))
        })
    });
    drop(store);

    let store = Fjall::new();
    for start in (0..TAIL_RECORDS).step_by(PREFILL_BATCH as usize) {
        store.append(start, PREFILL_BATCH, TAIL_ROOMS);
    }
    // Flush the memtable so reads hit on-disk tables, not only memory.
    store.ks.rotate_memtable_and_wait().unwrap();
    assert_eq!(store.tail(7), TAIL_LEN * 212);
    let mut room = 0u64;
    group.bench_function("fjall", |b| {
        b.iter(|| {
            room = (room + 1) % TAIL_ROOMS;
            black_box(store.tail(room as u32))
        })
    });
    group.finish();
}

criterion_group!(benches, store_append, store_tail);
criterion_main!(benches);
