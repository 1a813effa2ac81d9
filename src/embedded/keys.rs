//! Idempotency keys at a stream's home: for each room and inbox, the `(sender, key)` of its
//! newest keyed messages and the seq each was given, so a repeat is answered without storing
//! it again. Rebuilt at start from the store (the keys are written in the same commit as their
//! messages), so a fresh key never reads disk.
//!
//! Pure bookkeeping: no I/O, no connections.

use std::collections::VecDeque;

use ahash::{AHashMap, RandomState};
use bytes::Bytes;
use hashbrown::HashTable;

use crate::core::{MsgKey, Name, Stream};
use crate::store::KeyEntry;

/// A 128-bit hash of "SENDER KEY": two u64s, not a u128, so it is 8-aligned. Keyed with seeds
/// random per process, so no client can choose a key that collides with another sender's; by
/// chance, two of a stream's keys collide with odds around n²/2¹²⁹, so a hit is as good as
/// exact (a false hit would answer a new message as a dup and lose it).
pub type KeyId = [u64; 2];

/// A keyed message's id, and its "SENDER KEY" for the store.
pub type Keyed = (KeyId, Bytes);

pub struct HomeKeys {
    /// Most keys per stream (`idempotency_max_keys`).
    max: usize,
    hashers: [RandomState; 2],
    streams: AHashMap<Stream, StreamKeys>,
}

/// One stream's keys: a FIFO of (id, seq), oldest first, and an index that holds only each
/// live entry's 4-byte serial, hashed by its id's first word. Per key: 20 bytes in the FIFO (the
/// seq as a u32 above `base`) with up to 1/4 spare (it grows by quarters), and a 5-byte bucket
/// (serial and control byte) in the index, at most 7/8 full and grown by doubling: about 30
/// bytes a key at the default 1,000 keys (1,024 slots, 2,048 buckets), 27 to 40 otherwise; a
/// map of id → seq plus an order of ids took 60 to 80.
#[derive(Default)]
struct StreamKeys {
    ids: VecDeque<KeyId>,
    /// Each entry's seq minus `base`.
    seqs: VecDeque<u32>,
    base: u64,
    /// The serial of `ids[0]`: serials count the stream's remembered keys (wrapping), so an
    /// entry's place in the FIFO is its serial minus `front`.
    front: u32,
    /// Serials of the remembered entries. A forgotten key leaves the index but keeps its FIFO
    /// slot until it is the oldest (forgetting is rare: a failed write).
    index: HashTable<u32>,
}

impl StreamKeys {
    fn at(&self, serial: u32) -> usize {
        serial.wrapping_sub(self.front) as usize
    }

    /// The serial of `id`, if it is remembered. One hash-table probe and one 16-byte compare
    /// per candidate.
    fn find(&self, id: KeyId) -> Option<u32> {
        let ids = &self.ids;
        let front = self.front;
        (self.index)
            .find(id[0], |&s| ids[s.wrapping_sub(front) as usize] == id)
            .copied()
    }

    fn seq(&self, at: usize) -> u64 {
        self.base + u64::from(self.seqs[at])
    }

    /// `seq` as stored, above `base`. When it does not fit (4 billion seqs since the oldest
    /// key, never in practice), the entries are rebased on their lowest seq, and the oldest
    /// dropped while even that is too far.
    fn delta(&mut self, seq: u64) -> u32 {
        loop {
            if let Some(d) = seq.checked_sub(self.base)
                && let Ok(d) = u32::try_from(d)
            {
                return d;
            }
            let low = self
                .seqs
                .iter()
                .min()
                .map_or(seq, |&d| self.base + u64::from(d));
            let low = low.min(seq);
            if seq - low > u64::from(u32::MAX) {
                self.pop_oldest();
                continue;
            }
            let base = self.base;
            for d in &mut self.seqs {
                *d = (base + u64::from(*d) - low) as u32;
            }
            self.base = low;
        }
    }

    /// Room for one more entry: the FIFO grows by a quarter (not by doubling), up to `max`.
    fn reserve_one(&mut self, max: usize) {
        let len = self.ids.len();
        if len == self.ids.capacity() {
            let more = (len / 4).max(4).min(max.saturating_sub(len).max(1));
            self.ids.reserve_exact(more);
            self.seqs.reserve_exact(more);
        }
    }

    /// Drops the oldest entry, and its index entry if it is still remembered.
    fn pop_oldest(&mut self) {
        let Some(old) = self.ids.pop_front() else {
            return;
        };
        self.seqs.pop_front();
        let front = self.front;
        if let Ok(e) = self.index.find_entry(old[0], |&s| s == front) {
            e.remove();
        }
        self.front = front.wrapping_add(1);
    }
}

impl HomeKeys {
    pub fn new(max: usize) -> HomeKeys {
        HomeKeys {
            // Serials are u32: far above any sane maximum.
            max: max.clamp(1, u32::MAX as usize / 2),
            hashers: [RandomState::new(), RandomState::new()],
            streams: AHashMap::new(),
        }
    }

    /// Keys remembered, over every stream of this home.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.streams.values().map(|s| s.index.len()).sum()
    }

    /// Heap bytes the index holds, over every stream (not the streams' map itself).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        let per = |s: &StreamKeys| {
            s.ids.capacity() * size_of::<KeyId>()
                + s.seqs.capacity() * size_of::<u32>()
                + s.index.allocation_size()
        };
        self.streams.values().map(per).sum()
    }

    /// The id and stored text of `from`'s `key`. One allocation (the text) and two hashes.
    pub fn keyed(&self, from: &Name, key: &MsgKey) -> Keyed {
        let mut text = Vec::with_capacity(from.len() + 1 + key.as_str().len());
        text.extend_from_slice(from.as_bytes());
        text.push(b' ');
        text.extend_from_slice(key.as_str().as_bytes());
        (self.id(&text), text.into())
    }

    fn id(&self, text: &[u8]) -> KeyId {
        [
            self.hashers[0].hash_one(text),
            self.hashers[1].hash_one(text),
        ]
    }

    /// The seq of the message this key named in `stream`, if it is remembered.
    pub fn seen(&self, stream: &Stream, id: KeyId) -> Option<u64> {
        let s = self.streams.get(stream)?;
        let serial = s.find(id)?;
        Some(s.seq(s.at(serial)))
    }

    /// Remembers that `id` named message `seq` of `stream`; past `max`, the oldest key of the
    /// stream is forgotten.
    pub fn remember(&mut self, stream: &Stream, id: KeyId, seq: u64) {
        let s = match self.streams.get_mut(stream) {
            Some(s) => s,
            None => self.streams.entry(stream.clone()).or_default(),
        };
        let delta = s.delta(seq);
        if let Some(serial) = s.find(id) {
            let at = s.at(serial);
            s.seqs[at] = delta;
            return;
        }
        s.reserve_one(self.max);
        let serial = s.front.wrapping_add(s.ids.len() as u32);
        s.ids.push_back(id);
        s.seqs.push_back(delta);
        let (ids, front) = (&s.ids, s.front);
        s.index
            .insert_unique(id[0], serial, |&x| ids[x.wrapping_sub(front) as usize][0]);
        while s.ids.len() > self.max {
            s.pop_oldest();
        }
    }

    /// Forgets `id` (its message's write failed, so it names nothing). Its FIFO slot stays
    /// until it is the oldest.
    pub fn forget(&mut self, stream: &Stream, id: KeyId) {
        let Some(s) = self.streams.get_mut(stream) else {
            return;
        };
        let (ids, front) = (&s.ids, s.front);
        if let Ok(e) = (s.index).find_entry(id[0], |&x| ids[x.wrapping_sub(front) as usize] == id) {
            e.remove();
        }
    }

    /// The stream's keys as the store holds them (any order), at start.
    pub fn seed(&mut self, stream: &Stream, mut entries: Vec<KeyEntry>) {
        entries.sort_unstable_by_key(|(seq, _)| *seq);
        for (seq, text) in entries {
            let id = self.id(&text);
            self.remember(stream, id, seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_sender_per_stream_and_the_oldest_go_first() {
        let (r, s) = (
            Stream::Room(Name::new("r").unwrap()),
            Stream::Room(Name::new("s").unwrap()),
        );
        let (a, b) = (Name::new("a").unwrap(), Name::new("b").unwrap());
        let k = |s: &str| MsgKey::new(s).unwrap();
        let mut h = HomeKeys::new(2);
        let (a1, text) = h.keyed(&a, &k("1"));
        assert_eq!(&text[..], b"a 1");
        h.remember(&r, a1, 7);
        assert_eq!(h.seen(&r, a1), Some(7));
        assert_eq!(h.seen(&s, a1), None, "another stream");
        let (b1, _) = h.keyed(&b, &k("1"));
        assert_eq!(h.seen(&r, b1), None, "another sender");
        h.remember(&r, b1, 8);
        let (a2, _) = h.keyed(&a, &k("2"));
        h.remember(&r, a2, 9);
        assert_eq!(
            h.seen(&r, a1),
            None,
            "the oldest is forgotten past the maximum"
        );
        assert_eq!((h.seen(&r, b1), h.seen(&r, a2)), (Some(8), Some(9)));
        h.forget(&r, a2);
        assert_eq!((h.seen(&r, a2), h.remembered()), (None, 1));

        let mut fresh = HomeKeys::new(2);
        let entries = [(3, "a 3"), (1, "a 1"), (2, "b 1")];
        let entries = entries.map(|(seq, t)| (seq, Bytes::from_static(t.as_bytes())));
        fresh.seed(&r, entries.to_vec());
        let seen = |h: &HomeKeys, from: &Name, key| h.seen(&r, h.keyed(from, &k(key)).0);
        assert_eq!(seen(&fresh, &a, "1"), None, "seeded oldest first, then cut");
        assert_eq!(
            (seen(&fresh, &b, "1"), seen(&fresh, &a, "3")),
            (Some(2), Some(3))
        );
    }

    #[test]
    fn a_remembered_key_costs_under_34_bytes_and_stays_exact_through_eviction() {
        let r = Stream::Room(Name::new("r").unwrap());
        let max = 1000;
        let mut h = HomeKeys::new(max);
        let a = Name::new("a").unwrap();
        let id = |h: &HomeKeys, n: u64| h.keyed(&a, &MsgKey::new(&n.to_string()).unwrap()).0;
        for n in 1..=5 * max as u64 {
            let i = id(&h, n);
            h.remember(&r, i, n);
            if n % 7 == 0 {
                h.forget(&r, i);
            }
        }
        let bytes = h.heap_bytes() as f64 / max as f64;
        assert!(bytes < 34.0, "{bytes} bytes a key");
        let mut kept = 0;
        for n in 1..=5 * max as u64 {
            let want = (n > 4 * max as u64 && n % 7 != 0).then_some(n);
            kept += want.is_some() as usize;
            assert_eq!(h.seen(&r, id(&h, n)), want, "key {n}");
        }
        assert_eq!(h.remembered(), kept);
    }

    #[test]
    fn seqs_far_apart_are_rebased_and_the_too_old_dropped() {
        let r = Stream::Room(Name::new("r").unwrap());
        let a = Name::new("a").unwrap();
        let mut h = HomeKeys::new(10);
        let id = |h: &HomeKeys, n: u64| h.keyed(&a, &MsgKey::new(&n.to_string()).unwrap()).0;
        let far = 1 << 32;
        for (n, seq) in [(1, 5), (2, far), (3, far + 6), (4, 2 * far + 3)] {
            let i = id(&h, n);
            h.remember(&r, i, seq);
        }
        let seen = |n| h.seen(&r, id(&h, n));
        assert_eq!(seen(1), None, "more than 2^32 below the newest");
        assert_eq!(
            (seen(2), seen(3), seen(4)),
            (None, Some(far + 6), Some(2 * far + 3))
        );
    }
}
