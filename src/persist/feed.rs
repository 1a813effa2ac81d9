//! The event feed's records (docs/hooks.md, "The event feed"): what the homes report
//! (`FeedEvent`), its JSON, how far the feed is durable, and the page a push or a pull reads.
//!
//! The writer gives each event a cursor (dense, from 1, never reused: a gap is always a drop)
//! and stores it in the commit of the message it tells of; nothing past the durable horizon is
//! read out, so the backend never hears of a message a crash could take back. This module must
//! not hold room, user or connection state (the homes decide what happened) or do HTTP
//! (`deliver` does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::core::counters::FeedCounters;
use crate::core::{ConnId, Name, Stream};
use crate::store::{FeedRecord, Store, StoreError};

/// Something the backend hears of. Plain data, built by a home.
#[derive(Clone, Debug)]
pub enum FeedEvent {
    /// A sequenced event of a stream, with its client frame's JSON: a room's `message` (and
    /// any later sequenced type: the event is named by the frame's `type`), or a `direct`
    /// message, `offline` when the recipient had no connection (the push-notification cue).
    Stream {
        stream: Stream,
        seq: u64,
        ts: u64,
        offline: bool,
        payload: Bytes,
    },
    /// `joined` / `left`: a user's first connection joined, or its last left, a `list` room.
    Member {
        joined: bool,
        room: Name,
        user: Name,
    },
    /// `occupied` / `vacated`: a room's first member came, or its last went.
    Room { occupied: bool, room: Name },
    /// `connected` / `disconnected`: one connection of a user.
    Conn {
        connected: bool,
        user: Name,
        conn: ConnId,
    },
}

impl FeedEvent {
    /// The event's time (unix ms): a stream event's own, now for the others.
    fn ts(&self) -> u64 {
        match self {
            FeedEvent::Stream { ts, .. } => *ts,
            _ => crate::core::now_ms(),
        }
    }

    /// The stored record: `{"id","cursor","time","event",...}`. Names need no escaping and
    /// the payload is JSON already, so this is one allocation and a few copies.
    pub fn record(&self, cursor: u64) -> FeedRecord {
        self.record_at(cursor, self.ts())
    }

    /// `record`, for an event that happened at `ts` (read back from where it was written).
    pub fn record_at(&self, cursor: u64, ts: u64) -> FeedRecord {
        let mut j = Vec::with_capacity(128 + self.payload_len());
        let c = itoa::Buffer::new().format(cursor).to_owned();
        j.extend_from_slice(b"{\"id\":\"");
        j.extend_from_slice(c.as_bytes());
        j.extend_from_slice(b"\",\"cursor\":\"");
        j.extend_from_slice(c.as_bytes());
        j.extend_from_slice(b"\",\"time\":");
        j.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
        let name = |j: &mut Vec<u8>, key: &str, value: &Name| {
            j.extend_from_slice(format!(",\"{key}\":\"{}\"", value.as_str()).as_bytes());
        };
        match self {
            FeedEvent::Stream {
                stream,
                seq,
                offline,
                payload,
                ..
            } => {
                match stream {
                    Stream::Room(room) => {
                        let kind = frame_type(payload).unwrap_or("message");
                        j.extend_from_slice(format!(",\"event\":\"{kind}\"").as_bytes());
                        name(&mut j, "room", room);
                    }
                    Stream::Inbox(to) => {
                        j.extend_from_slice(b",\"event\":\"direct\"");
                        name(&mut j, "to", to);
                        j.extend_from_slice(format!(",\"offline\":{offline}").as_bytes());
                    }
                }
                j.extend_from_slice(format!(",\"seq\":{seq},\"data\":").as_bytes());
                j.extend_from_slice(payload);
            }
            FeedEvent::Member { joined, room, user } => {
                let kind = if *joined { "joined" } else { "left" };
                j.extend_from_slice(format!(",\"event\":\"{kind}\"").as_bytes());
                name(&mut j, "room", room);
                name(&mut j, "user", user);
            }
            FeedEvent::Room { occupied, room } => {
                let kind = if *occupied { "occupied" } else { "vacated" };
                j.extend_from_slice(format!(",\"event\":\"{kind}\"").as_bytes());
                name(&mut j, "room", room);
            }
            FeedEvent::Conn {
                connected,
                user,
                conn,
            } => {
                let kind = if *connected {
                    "connected"
                } else {
                    "disconnected"
                };
                j.extend_from_slice(format!(",\"event\":\"{kind}\"").as_bytes());
                name(&mut j, "user", user);
                j.extend_from_slice(format!(",\"conn\":{}", conn.raw()).as_bytes());
            }
        }
        j.push(b'}');
        FeedRecord {
            cursor,
            ts,
            payload: Bytes::from(j),
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            FeedEvent::Stream { payload, .. } => payload.len(),
            _ => 0,
        }
    }
}

/// The `type` of a client frame's JSON, which the server writes first (`{"type":"message",..`).
fn frame_type(payload: &[u8]) -> Option<&str> {
    let rest = payload.strip_prefix(b"{\"type\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// What the writer and the delivery thread share.
pub struct FeedShared {
    pub counters: FeedCounters,
    /// The highest cursor stored as the durability mode promises (on disk under `sync`, after
    /// the periodic sync under `async`, at once under `memory`). Nothing past it is read out.
    durable: AtomicU64,
    /// Wakes the delivery thread when `durable` moves. One slot: a full one is a wake-up.
    wake: Sender<()>,
    pub(super) woken: Receiver<()>,
}

impl FeedShared {
    pub fn new(durable: u64) -> Arc<FeedShared> {
        let (wake, woken) = crossbeam_channel::bounded(1);
        Arc::new(FeedShared {
            counters: FeedCounters::default(),
            durable: AtomicU64::new(durable),
            wake,
            woken,
        })
    }

    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Events up to `cursor` are durable.
    pub(super) fn made_durable(&self, cursor: u64) {
        if self.durable.fetch_max(cursor, Ordering::AcqRel) < cursor {
            let _ = self.wake.try_send(());
        }
    }
}

/// A page of the feed: the events after a cursor, and how many before them were dropped by
/// retention undelivered.
#[derive(Debug, Default)]
pub struct FeedPage {
    pub dropped: u64,
    pub events: Vec<FeedRecord>,
    /// The cursor to read on from: the last event's, or past the dropped ones.
    pub next: u64,
}

impl FeedPage {
    /// `{"dropped":N,"next":"C","events":[...]}`: the body of a webhook POST and of
    /// `GET /api/events`. The events are copied as stored, never re-encoded.
    pub fn json(&self) -> Bytes {
        let size: usize = self.events.iter().map(|e| e.payload.len() + 1).sum();
        let mut j = Vec::with_capacity(64 + size);
        let head = format!(
            "{{\"dropped\":{},\"next\":\"{}\",\"events\":[",
            self.dropped, self.next
        );
        j.extend_from_slice(head.as_bytes());
        for (i, e) in self.events.iter().enumerate() {
            if i > 0 {
                j.push(b',');
            }
            j.extend_from_slice(&e.payload);
        }
        j.extend_from_slice(b"]}");
        Bytes::from(j)
    }
}

/// Reads up to `limit` durable events after `after` (at most up to `durable`; a shared
/// feed's horizon is its last cursor: Redis wrote each event with its message).
pub fn read_page(
    store: &dyn Store,
    after: u64,
    limit: usize,
    durable: u64,
) -> Result<FeedPage, StoreError> {
    let shared = match store.feed_shared() {
        true => Some(store.feed_state()?),
        false => None,
    };
    let durable = shared.map_or(durable, |s| s.last);
    if after >= durable {
        return Ok(FeedPage {
            next: after,
            ..FeedPage::default()
        });
    }
    let state = match shared {
        Some(s) => s,
        None => store.feed_state()?,
    };
    let first_kept = if state.first == 0 {
        state.last + 1
    } else {
        state.first
    };
    // Cursors are dense: whatever lies between `after` and the oldest kept event was dropped.
    let from = after.max(first_kept.saturating_sub(1)).min(durable);
    let n = limit.min((durable - from) as usize);
    let mut events = store.feed_after(from, n)?;
    events.retain(|e| e.cursor <= durable);
    Ok(FeedPage {
        dropped: from - after,
        next: events.last().map_or(from, |e| e.cursor),
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn records_are_json_named_by_the_frame() {
        let payload = Bytes::from_static(br#"{"type":"message","room":"r","seq":3}"#);
        let ev = FeedEvent::Stream {
            stream: Stream::Room(n("r")),
            seq: 3,
            ts: 7,
            offline: false,
            payload: payload.clone(),
        };
        let r = ev.record(42);
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["id"], "42");
        assert_eq!(v["cursor"], "42");
        assert_eq!(v["event"], "message");
        assert_eq!(v["room"], "r");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["time"], 7);
        assert_eq!(v["data"]["seq"], 3);
        let edit = Bytes::from_static(br#"{"type":"edit","room":"r"}"#);
        let ev = FeedEvent::Stream {
            stream: Stream::Room(n("r")),
            seq: 4,
            ts: 7,
            offline: false,
            payload: edit,
        };
        let v: serde_json::Value = serde_json::from_slice(&ev.record(1).payload).unwrap();
        assert_eq!(v["event"], "edit", "later sequenced types keep their name");
        let dm = FeedEvent::Stream {
            stream: Stream::Inbox(n("bob")),
            seq: 1,
            ts: 7,
            offline: true,
            payload,
        };
        let v: serde_json::Value = serde_json::from_slice(&dm.record(2).payload).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["to"].as_str()),
            (Some("direct"), Some("bob"))
        );
        assert_eq!(v["offline"], true);
        for ev in [
            FeedEvent::Member {
                joined: false,
                room: n("r"),
                user: n("a"),
            },
            FeedEvent::Room {
                occupied: true,
                room: n("r"),
            },
            FeedEvent::Conn {
                connected: true,
                user: n("a"),
                conn: ConnId::from_raw(9),
            },
        ] {
            let r = ev.record(5);
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap();
        }
    }

    #[test]
    fn pages_stop_at_the_durable_horizon_and_count_drops() {
        let store = MemoryStore::default();
        let ev = |c| {
            FeedEvent::Room {
                occupied: true,
                room: n("r"),
            }
            .record(c)
        };
        let events: Vec<_> = (1..=10).map(ev).collect();
        store.write_with_feed(&[], &[], &events, false).unwrap();
        let page = read_page(&store, 0, 100, 6).unwrap();
        assert_eq!((page.events.len(), page.next, page.dropped), (6, 6, 0));
        assert!(read_page(&store, 6, 100, 6).unwrap().events.is_empty());
        store.feed_trim(5, 0).unwrap();
        let page = read_page(&store, 2, 3, 10).unwrap();
        assert_eq!(page.dropped, 2, "3 and 4 are gone");
        assert_eq!(
            page.events.iter().map(|e| e.cursor).collect::<Vec<_>>(),
            [5, 6, 7]
        );
        let v: serde_json::Value = serde_json::from_slice(&page.json()).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 3);
        assert_eq!(v["next"], "7");
        store.feed_trim(11, 0).unwrap();
        let page = read_page(&store, 7, 100, 10).unwrap();
        assert_eq!(
            (page.dropped, page.next),
            (3, 10),
            "all gone: the gap to the last"
        );
    }
}
