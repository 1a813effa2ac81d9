//! Idempotency keys at a stream's home: for each room and inbox, the `(sender, key)` of its
//! newest keyed messages and the seq each was given, so a repeat is answered without storing
//! it again. Rebuilt at start from the store (the keys are written in the same commit as their
//! messages), so a fresh key never reads disk.
//!
//! Pure bookkeeping: no I/O, no connections.

use std::collections::VecDeque;

use ahash::{AHashMap, RandomState};
use bytes::Bytes;

use crate::core::{MsgKey, Name, Stream};
use crate::store::KeyEntry;

/// A 128-bit hash of "SENDER KEY": two u64s, not a u128, so a map entry takes 24 bytes, not
/// 32 (a u128 is 16-aligned). Keyed with seeds random per process, so no client can choose a
/// key that collides with another sender's; by chance, two of a stream's keys collide with
/// odds around n²/2¹²⁹.
pub type KeyId = [u64; 2];

/// A keyed message's id, and its "SENDER KEY" for the store.
pub type Keyed = (KeyId, Bytes);

pub struct HomeKeys {
    /// Most keys per stream (`idempotency_max_keys`).
    max: usize,
    hashers: [RandomState; 2],
    streams: AHashMap<Stream, StreamKeys>,
}

/// One stream's keys. Per key: a 25-byte bucket in the map and 16 bytes in the order, with
/// their spare capacity (the map is at most 7/8 full, both grow by doubling): 68 bytes a key
/// at the default 1,000 keys (2,048 buckets, 1,024 slots), between about 60 and 80 otherwise.
#[derive(Default)]
struct StreamKeys {
    seqs: AHashMap<KeyId, u64>,
    /// Oldest first: the first forgotten past `max`.
    order: VecDeque<KeyId>,
}

impl HomeKeys {
    pub fn new(max: usize) -> HomeKeys {
        HomeKeys {
            max: max.max(1),
            hashers: [RandomState::new(), RandomState::new()],
            streams: AHashMap::new(),
        }
    }

    /// Keys remembered, over every stream of this home.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.streams.values().map(|s| s.order.len()).sum()
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
        self.streams.get(stream)?.seqs.get(&id).copied()
    }

    /// Remembers that `id` named message `seq` of `stream`; past `max`, the oldest key of the
    /// stream is forgotten.
    pub fn remember(&mut self, stream: &Stream, id: KeyId, seq: u64) {
        let s = match self.streams.get_mut(stream) {
            Some(s) => s,
            None => self.streams.entry(stream.clone()).or_default(),
        };
        if s.seqs.insert(id, seq).is_none() {
            s.order.push_back(id);
        }
        while s.order.len() > self.max {
            if let Some(old) = s.order.pop_front() {
                s.seqs.remove(&old);
            }
        }
    }

    /// Forgets `id` (its message's write failed, so it names nothing). Rare: a scan from the
    /// newest end, where the key is.
    pub fn forget(&mut self, stream: &Stream, id: KeyId) {
        let Some(s) = self.streams.get_mut(stream) else {
            return;
        };
        s.seqs.remove(&id);
        if let Some(at) = s.order.iter().rposition(|k| *k == id) {
            s.order.remove(at);
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
}
