//! Each connection's receive state and the exact delivery check at the end of a run.
//!
//! Owns the rules of "delivered exactly" (see the parent's doc). It must not do I/O or format
//! output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::shared::MAX_PROBLEMS;
use crate::client::BodyStamp;

/// splitmix64's finaliser over a message's identity.
#[inline]
pub fn mix(seq: u64, publisher: u32, counter: u64) -> u64 {
    let mut z = seq
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((publisher as u64) << 40 ^ counter);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What one connection has seen of its stream (its room, or its own inbox for direct messages).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecvState {
    /// Message frames received.
    pub count: u64,
    /// Those whose seq was above the previous one (the rest are duplicates or out of order).
    pub in_order: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    /// Wrapping sum of `mix` over the in-order messages.
    pub hash: u64,
    /// Seq equal to the previous one.
    pub duplicates: u64,
    /// Seq below the previous one.
    pub out_of_order: u64,
    /// Message frames without a seq or without a bot body.
    pub foreign: u64,
}

impl RecvState {
    #[inline]
    pub fn on_message(&mut self, seq: u64, stamp: BodyStamp) {
        self.count += 1;
        if self.first_seq.is_some() && seq <= self.last_seq {
            if seq == self.last_seq {
                self.duplicates += 1;
            } else {
                self.out_of_order += 1;
            }
            return;
        }
        if self.first_seq.is_none() {
            self.first_seq = Some(seq);
        }
        self.last_seq = seq;
        self.in_order += 1;
        self.hash = self
            .hash
            .wrapping_add(mix(seq, stamp.publisher, stamp.counter));
    }
}

impl RecvState {
    /// One of the connection's own messages, which a replay after a reconnect brings (live,
    /// the server never sends a connection its own): not a delivery, but the stream's position
    /// moves past it, so the next rejoin's `since` does not ask for it again.
    #[inline]
    pub fn on_own(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }
}

/// Everything a connection task hands back when the run ends. Serialized, it carries a child
/// process's connections to the parent's check.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnOutcome {
    pub index: u32,
    /// The stream it receives.
    pub recv_stream: u32,
    /// The stream it publishes to, if it publishes.
    pub pub_stream: Option<u32>,
    /// Its join ack's seq (rooms); `None` for inboxes, whose start is taken from the acks.
    pub start_seq: Option<u64>,
    pub recv: RecvState,
    /// The seq acked for each of its messages, by counter; 0 = no ack.
    pub acks: Vec<u64>,
    /// Acks for a counter already acked, or for an id it never sent.
    pub bad_acks: u64,
    /// Messages it wrote.
    pub sent: u64,
    pub server_errors: u64,
    /// Frames that were neither messages nor replies to the bot's requests (presence events and
    /// the like), by `type`; a handful of kinds, so a list.
    pub other_frames: Vec<(String, u64)>,
    /// Why the connection ended early, if it did.
    pub ended: Option<String>,
    /// `--resend`: reconnects after a drop, publishes sent again, and acks with `dup: true`.
    #[serde(default)]
    pub reconnects: u64,
    #[serde(default)]
    pub resent: u64,
    #[serde(default)]
    pub dup_acks: u64,
}

impl ConnOutcome {
    /// Counts one frame of `kind` that was not a message or a reply.
    #[inline]
    pub fn count_other(&mut self, kind: &str) {
        match self.other_frames.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => self.other_frames.push((kind.to_string(), 1)),
        }
    }
}

/// The verdict on delivery.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeliveryReport {
    /// Messages written by publishers.
    pub published: u64,
    /// Acks received for them.
    pub acked: u64,
    /// Deliveries owed: for every acked message, each member of its stream that had joined
    /// before it, except the publishing connection.
    pub expected: u64,
    /// Message frames received.
    pub delivered: u64,
    /// Owed deliveries that never arrived.
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Deliveries beyond those owed (including frames that were not the bot's messages).
    pub unexpected: u64,
    /// Connections that received the right number of messages but not the right ones.
    pub content_mismatches: u64,
    /// Published messages that got no ack.
    pub unacked: u64,
    /// Bad acks: duplicated or unknown ids, the same seq acked twice in a stream, or a hole in a
    /// stream's acked seqs.
    pub ack_errors: u64,
    /// `error` frames from the server.
    pub server_errors: u64,
    /// Connections the server (or the network) ended before the bot did.
    pub disconnects: u64,
    /// Frames that were neither messages nor replies to the bot's requests, by `type`, all
    /// connections together (e.g. `joined`, `left`): what a room sent besides its messages. Not
    /// part of the verdict.
    pub other_frames: BTreeMap<String, u64>,
    /// `--resend`: reconnects after drops, publishes sent again with their key, and acks that
    /// came with `dup: true` (the message had been stored before). Not part of the verdict.
    pub reconnects: u64,
    pub resent: u64,
    pub dup_acks: u64,
    pub passed: bool,
    /// The first few problems, in words.
    pub problems: Vec<String>,
}

impl DeliveryReport {
    fn finish(mut self) -> DeliveryReport {
        self.passed = self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.content_mismatches == 0
            && self.unacked == 0
            && self.ack_errors == 0
            && self.server_errors == 0
            && self.disconnects == 0;
        self
    }
}

struct Entry {
    seq: u64,
    mix: u64,
}

/// Checks every connection's stream against the acks. `streams` is the number of streams.
pub fn verify(
    outcomes: &[ConnOutcome],
    streams: usize,
    mut problems: Vec<String>,
) -> DeliveryReport {
    let mut r = DeliveryReport::default();
    let mut note = |p: String| {
        if problems.len() < MAX_PROBLEMS {
            problems.push(p);
        }
    };

    // Acked messages per stream.
    let mut entries: Vec<Vec<Entry>> = (0..streams).map(|_| Vec::new()).collect();
    for c in outcomes {
        r.published += c.sent;
        r.server_errors += c.server_errors;
        r.ack_errors += c.bad_acks;
        if c.ended.is_some() {
            r.disconnects += 1;
        }
        r.reconnects += c.reconnects;
        r.resent += c.resent;
        r.dup_acks += c.dup_acks;
        for (kind, n) in &c.other_frames {
            *r.other_frames.entry(kind.clone()).or_default() += n;
        }
        let acked = c.acks.iter().filter(|&&s| s != 0).count() as u64;
        r.acked += acked;
        if acked < c.sent {
            r.unacked += c.sent - acked;
            note(format!(
                "connection {} sent {} messages but got {} acks",
                c.index, c.sent, acked
            ));
        }
        if let Some(s) = c.pub_stream {
            for (k, &seq) in c.acks.iter().enumerate() {
                if seq != 0 {
                    entries[s as usize].push(Entry {
                        seq,
                        mix: mix(seq, c.index, k as u64),
                    });
                }
            }
        }
        if let Some(why) = &c.ended {
            note(format!("connection {} ended early: {why}", c.index));
        }
    }

    // Each stream's acked seqs must be distinct and contiguous.
    let mut suffix: Vec<Vec<u64>> = Vec::with_capacity(streams);
    for (s, list) in entries.iter_mut().enumerate() {
        list.sort_unstable_by_key(|e| e.seq);
        for w in list.windows(2) {
            if w[1].seq == w[0].seq {
                r.ack_errors += 1;
                note(format!("stream {s}: seq {} acked twice", w[0].seq));
            } else if w[1].seq != w[0].seq + 1 {
                r.ack_errors += 1;
                note(format!(
                    "stream {s}: acked seqs jump from {} to {}",
                    w[0].seq, w[1].seq
                ));
            }
        }
        let mut sums = vec![0u64; list.len() + 1];
        for i in (0..list.len()).rev() {
            sums[i] = sums[i + 1].wrapping_add(list[i].mix);
        }
        suffix.push(sums);
    }

    for c in outcomes {
        let s = c.recv_stream as usize;
        let list = &entries[s];
        let start = c
            .start_seq
            .unwrap_or_else(|| list.first().map_or(0, |e| e.seq - 1));
        let from = list.partition_point(|e| e.seq <= start);
        let mut exp_count = (list.len() - from) as u64;
        let mut exp_hash = suffix[s][from];
        if c.pub_stream == Some(c.recv_stream) {
            for (k, &seq) in c.acks.iter().enumerate() {
                if seq > start {
                    exp_count -= 1;
                    exp_hash = exp_hash.wrapping_sub(mix(seq, c.index, k as u64));
                }
            }
        }
        let got = &c.recv;
        r.expected += exp_count;
        r.delivered += got.count;
        r.duplicates += got.duplicates;
        r.out_of_order += got.out_of_order;
        r.unexpected += got.foreign;
        if got.duplicates + got.out_of_order + got.foreign > 0 {
            note(format!(
                "connection {}: {} duplicates, {} out of order, {} foreign frames",
                c.index, got.duplicates, got.out_of_order, got.foreign
            ));
        }
        if got.in_order < exp_count {
            r.lost += exp_count - got.in_order;
            note(format!(
                "connection {} (stream {s}): got {} of {} messages (seqs {:?}..={} seen, join seq {start})",
                c.index, got.in_order, exp_count, got.first_seq, got.last_seq
            ));
        } else if got.in_order > exp_count {
            r.unexpected += got.in_order - exp_count;
            note(format!(
                "connection {} (stream {s}): got {} messages, {} expected",
                c.index, got.in_order, exp_count
            ));
        } else if got.hash != exp_hash {
            r.content_mismatches += 1;
            note(format!(
                "connection {} (stream {s}): right count ({exp_count}) but wrong messages",
                c.index
            ));
        }
    }
    r.problems = problems;
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(publisher: u32, counter: u64) -> BodyStamp {
        BodyStamp {
            sched_ns: 0,
            publisher,
            counter,
        }
    }

    /// One room (stream 0): connection 0 publishes seqs 1..=3, connections 1 and 2 receive.
    fn room() -> Vec<ConnOutcome> {
        let publisher = ConnOutcome {
            index: 0,
            recv_stream: 0,
            pub_stream: Some(0),
            start_seq: Some(0),
            acks: vec![1, 2, 3],
            sent: 3,
            ..Default::default()
        };
        let mut sub = ConnOutcome {
            index: 1,
            recv_stream: 0,
            start_seq: Some(0),
            ..Default::default()
        };
        for k in 0..3 {
            sub.recv.on_message(k + 1, stamp(0, k));
        }
        let mut sub2 = sub.clone();
        sub2.index = 2;
        vec![publisher, sub, sub2]
    }

    #[test]
    fn exact_delivery_passes() {
        let r = verify(&room(), 1, vec![]);
        assert!(r.passed, "{r:?}");
        assert_eq!(
            (r.expected, r.delivered, r.published, r.acked),
            (6, 6, 3, 3)
        );
    }

    #[test]
    fn loss_duplicate_disorder_and_content_are_caught() {
        let mut c = room();
        c[1].recv = RecvState::default();
        c[1].recv.on_message(1, stamp(0, 0));
        c[1].recv.on_message(3, stamp(0, 2));
        let r = verify(&c, 1, vec![]);
        assert_eq!(r.lost, 1);
        assert!(!r.passed);

        let mut c = room();
        c[2].recv.on_message(3, stamp(0, 2));
        c[2].recv.on_message(2, stamp(0, 1));
        let r = verify(&c, 1, vec![]);
        assert_eq!((r.duplicates, r.out_of_order), (1, 1));
        assert!(!r.passed);

        let mut c = room();
        c[1].recv = RecvState::default();
        for k in 0..3 {
            c[1].recv.on_message(k + 1, stamp(0, (k + 1) % 3));
        }
        let r = verify(&c, 1, vec![]);
        assert_eq!(r.content_mismatches, 1);
        assert!(!r.passed);

        let mut c = room();
        c[0].acks[2] = 0;
        let r = verify(&c, 1, vec![]);
        assert_eq!(r.unacked, 1);
        assert!(!r.passed);
    }

    #[test]
    fn own_messages_are_not_owed_and_inbox_start_comes_from_acks() {
        // Two publishers in one room, each also a receiver: 0 sends seqs 1 and 3, 1 sends 2.
        let mut a = ConnOutcome {
            index: 0,
            recv_stream: 0,
            pub_stream: Some(0),
            start_seq: Some(0),
            acks: vec![1, 3],
            sent: 2,
            ..Default::default()
        };
        let mut b = ConnOutcome {
            index: 1,
            recv_stream: 0,
            pub_stream: Some(0),
            start_seq: Some(0),
            acks: vec![2],
            sent: 1,
            ..Default::default()
        };
        a.recv.on_message(2, stamp(1, 0));
        b.recv.on_message(1, stamp(0, 0));
        b.recv.on_message(3, stamp(0, 1));
        let r = verify(&[a.clone(), b.clone()], 1, vec![]);
        assert!(r.passed, "{r:?}");
        assert_eq!(r.expected, 3);

        // Direct messages: 0 sends to 1's inbox (stream 1), whose seqs start at 5.
        let dm_sender = ConnOutcome {
            index: 0,
            recv_stream: 0,
            pub_stream: Some(1),
            acks: vec![5, 6],
            sent: 2,
            ..Default::default()
        };
        let mut dm_recv = ConnOutcome {
            index: 1,
            recv_stream: 1,
            ..Default::default()
        };
        dm_recv.recv.on_message(5, stamp(0, 0));
        dm_recv.recv.on_message(6, stamp(0, 1));
        let r = verify(&[dm_sender, dm_recv], 2, vec![]);
        assert!(r.passed, "{r:?}");
        assert_eq!(r.expected, 2);
    }

    #[test]
    fn alone_in_a_room_only_the_acks_are_checked() {
        // chat --room-size 1: two users, each alone in its room, so nothing is owed to anyone.
        let alone = |index: u32, acks: Vec<u64>| ConnOutcome {
            index,
            recv_stream: index,
            pub_stream: Some(index),
            start_seq: Some(0),
            sent: acks.len() as u64,
            acks,
            ..Default::default()
        };
        let r = verify(&[alone(0, vec![1, 2, 3]), alone(1, vec![1, 2])], 2, vec![]);
        assert!(r.passed, "{r:?}");
        assert_eq!((r.expected, r.delivered, r.acked), (0, 0, 5));

        // A seq skipped in a room, or a stray delivery, still fails.
        let r = verify(&[alone(0, vec![1, 3])], 1, vec![]);
        assert_eq!(r.ack_errors, 1);
        assert!(!r.passed);
        let mut c = alone(0, vec![1]);
        c.recv.on_message(1, stamp(0, 0));
        let r = verify(&[c], 1, vec![]);
        assert_eq!(r.unexpected, 1);
        assert!(!r.passed);
    }

    #[test]
    fn a_publishers_own_messages_in_a_replay_are_not_deliveries() {
        // 0 publishes seqs 1 and 2; after a reconnect its replay brings both back (own), then
        // 1's message 3 arrives live.
        let mut a = ConnOutcome {
            index: 0,
            recv_stream: 0,
            pub_stream: Some(0),
            start_seq: Some(0),
            acks: vec![1, 2],
            sent: 2,
            ..Default::default()
        };
        let b = ConnOutcome {
            index: 1,
            recv_stream: 0,
            pub_stream: Some(0),
            start_seq: Some(0),
            acks: vec![3],
            sent: 1,
            ..Default::default()
        };
        a.recv.on_own(1);
        a.recv.on_own(2);
        assert_eq!(a.recv.last_seq, 2, "the next since is past them");
        a.recv.on_message(3, stamp(1, 0));
        let mut b = b;
        for k in 0..2 {
            b.recv.on_message(k + 1, stamp(0, k));
        }
        let r = verify(&[a, b], 1, vec![]);
        assert!(r.passed, "{r:?}");
        assert_eq!((r.expected, r.delivered), (3, 3));
    }
}
