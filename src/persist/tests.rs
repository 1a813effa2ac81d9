//! The writer's replays, pages and failed writes, on a `MemoryStore`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::core::Name;
use crate::core::Stream;
use crate::core::health::Health;
use crate::protocol::encode::Recovery;
use crate::router::Router;
use crate::store::{Append, Store, StoreError, StoredMessage};

use super::op::Op;
use super::writer::Writer;
use crate::store::MemoryStore;

fn writer(store: Arc<dyn Store>, replay_limit: usize, reply_bytes: usize) -> Writer {
    let config = Config {
        replay_limit,
        max_queue_bytes: reply_bytes * 2,
        ..Config::default()
    };
    Writer::new(store, Router::new(1).0, &config, Arc::default(), None)
}

fn filled(n: u64, payload: &'static [u8]) -> (Arc<dyn Store>, Stream) {
    let store = Arc::new(MemoryStore::default());
    let stream = Stream::Room(Name::new("r").unwrap());
    let batch: Vec<_> = (1..=n)
        .map(|seq| Append {
            stream: stream.clone(),
            seq,
            ts: seq,
            payload: Bytes::from_static(payload),
            key: None,
            event: None,
        })
        .collect();
    store.write(&batch, &[], false).unwrap();
    (store, stream)
}

fn seqs(m: &[StoredMessage]) -> Vec<u64> {
    m.iter().map(|m| m.seq).collect()
}

#[test]
fn replay_takes_the_newest_under_the_caps() {
    let (store, r) = filled(30, b"0123456789");
    let w = writer(store.clone(), 10, 1 << 20);
    let (m, rec) = w.replay(&r, 5, 8).unwrap();
    assert_eq!((seqs(&m), rec), (vec![6, 7, 8], rec_of(true, 3, false)));
    let (m, rec) = w.replay(&r, 5, 30).unwrap();
    assert_eq!(
        (seqs(&m), rec),
        ((21..=30).collect(), rec_of(true, 10, true))
    );
    assert_eq!(w.replay(&r, 30, 30).unwrap().1, rec_of(true, 0, false));
    assert_eq!(w.replay(&r, 31, 30).unwrap().1, rec_of(false, 0, false));
    // Bytes: each message costs 20 here, so 50 bytes hold 2.
    let w = writer(store.clone(), 10, 50);
    let (m, rec) = w.replay(&r, 5, 8).unwrap();
    assert_eq!((seqs(&m), rec), (vec![7, 8], rec_of(true, 2, true)));
    // Trimmed history is not recovered, but what is left is replayed.
    store.trim(&r, 7, 0).unwrap();
    let w = writer(store, 10, 1 << 20);
    let (m, rec) = w.replay(&r, 5, 8).unwrap();
    assert_eq!((seqs(&m), rec), (vec![7, 8], rec_of(false, 2, false)));
    let (_, rec) = w.replay(&r, 0, 30).unwrap();
    assert_eq!(rec, rec_of(false, 10, true));
}

fn rec_of(recovered: bool, replayed: usize, truncated: bool) -> Recovery {
    Recovery {
        recovered,
        replayed,
        truncated,
    }
}

/// A `MemoryStore` whose writes fail while `failing` is set.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    failing: std::sync::atomic::AtomicBool,
}

impl Store for Flaky {
    fn write_with_feed(
        &self,
        a: &[Append],
        c: &[(Stream, u64)],
        f: &[crate::store::FeedRecord],
        d: bool,
    ) -> Result<(), StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Write("injected".into()));
        }
        self.inner.write_with_feed(a, c, f, d)
    }
    fn streams(&self) -> Result<Vec<crate::store::StreamInfo>, StoreError> {
        self.inner.streams()
    }
    fn after(&self, s: &Stream, a: u64, l: usize) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.after(s, a, l)
    }
    fn before(&self, s: &Stream, b: u64, l: usize) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.before(s, b, l)
    }
    fn trim(&self, s: &Stream, k: u64, t: u64) -> Result<usize, StoreError> {
        self.inner.trim(s, k, t)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
}

#[test]
fn a_failed_write_makes_the_server_unready_until_one_succeeds() {
    let store = Arc::new(Flaky::default());
    let health = Arc::new(Health::default());
    let mut w = Writer::new(
        store.clone(),
        Router::new(1).0,
        &Config::default(),
        health.clone(),
        None,
    );
    let append = |seq| Op::Append {
        append: Append {
            stream: Stream::Room(Name::new("r").unwrap()),
            seq,
            ts: seq,
            payload: Bytes::from_static(b"{}"),
            key: None,
            event: None,
        },
        done: None,
    };
    let scrape = |w: &mut Writer| {
        let (tx, mut rx) = oneshot::channel();
        w.apply(vec![Op::Stats(tx)]);
        rx.try_recv()
            .expect("the writer answers a scrape in the same batch")
    };
    w.apply(vec![append(1)]);
    assert_eq!(health.unready(), None);

    store
        .failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    w.apply(vec![append(2)]);
    assert!(health.unready().is_some_and(|why| why.contains("store")));
    let counters = scrape(&mut w);
    assert_eq!(counters.write_failures, 1);
    assert_eq!(
        counters.commit_latency.count(),
        2,
        "failed writes are timed too"
    );

    store
        .failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    w.apply(vec![append(2)]);
    assert_eq!(health.unready(), None);
    assert_eq!(scrape(&mut w).commit_latency.count(), 3);
}

#[test]
fn pages_say_whether_more_follow() {
    let (store, r) = filled(5, b"0123456789");
    let w = writer(store.clone(), 10, 25);
    let (m, more) = w.page(store.before(&r, u64::MAX, 4).unwrap(), 3);
    assert_eq!((seqs(&m), more), (vec![5, 4], true), "cut by bytes");
    let w = writer(store.clone(), 10, 1 << 20);
    let (m, more) = w.page(store.before(&r, 3, 4).unwrap(), 3);
    assert_eq!((seqs(&m), more), (vec![2, 1], false));
}

/// Whatever the commit interval, the writer's first commit after a quiet spell is not held:
/// with an interval of a minute, the append is answered long before it.
#[test]
fn an_idle_writer_commits_at_once_under_a_long_interval() {
    use crate::core::ConnId;
    use crate::msg::{LocalMsg, ReplyTo, ShardMsg, WriteTarget, Written};
    let config = Arc::new(Config {
        commit_interval_us: 60_000_000,
        ..Config::default()
    });
    let (router, inboxes) = Router::new(1);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let mut threads = super::Threads::start(store, router, config, Arc::default()).unwrap();
    let room = Name::new("r").unwrap();
    let written = Written {
        target: WriteTarget::Room(room.clone()),
        seq: 1,
        frame: Bytes::from_static(b"{}"),
        reply: ReplyTo::Conn {
            conn: ConnId::new(0, 0, 1),
            id: None,
        },
        key: None,
    };
    threads.persist().send(vec![Op::Append {
        append: Append {
            stream: Stream::Room(room),
            seq: 1,
            ts: 1,
            payload: Bytes::from_static(b"{}"),
            key: None,
            event: None,
        },
        done: Some((0, written)),
    }]);
    let answer = inboxes[0]
        .rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the writer answers an idle commit at once, not after the interval");
    assert!(matches!(
        answer,
        ShardMsg::Local(LocalMsg::Stored { ok: true, .. })
    ));
    threads.stop();
}
