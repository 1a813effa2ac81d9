//! Merging by seq: a stream's position on a shard (`Position`) and one connection's catch-up
//! (`CatchUp`). Pure state machines over seqs and frames: they decide what to write, drop,
//! hold or read, and the hub does it. Nothing here touches a socket or sends a message.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::conn::{Conn, OutFrame};
use crate::core::{ConnId, JoinGen};

/// A read to ask the engine for: the stream's messages in (after, upto].
pub type Gap = (u64, u64);

/// What to do with a live frame of seq `s`.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The next in order: hand it on.
    Hand,
    /// Handed on already: drop it.
    Duplicate,
    /// Behind a gap that is being read: it waits.
    Waits,
    /// After a gap: it waits, and the gap must be read.
    Gap(Gap),
}

/// A frame held behind a gap: its seq, the frame, and the connection it must skip.
pub type Waiting = (u64, Bytes, Option<ConnId>);

/// A stream's position on this shard: the last seq handed on, and the frames waiting behind a
/// gap while the engine reads it.
#[derive(Default)]
pub struct Position {
    /// `None` until known (a user's inbox, before a connection has caught up).
    pub last: Option<u64>,
    /// Boxed: rare, and every user online has a `Position` on its shard.
    #[allow(clippy::box_collection)] // 8 bytes instead of 24 in every position
    waiting: Option<Box<Vec<Waiting>>>,
}

impl Position {
    pub fn at(last: u64) -> Position {
        Position {
            last: Some(last),
            waiting: None,
        }
    }

    /// Where frame `s` goes. `Hand` moves the position to `s`.
    pub fn next(&mut self, s: u64, frame: &Bytes, exclude: Option<ConnId>) -> Next {
        if let Some(waiting) = &mut self.waiting {
            waiting.push((s, frame.clone(), exclude));
            return Next::Waits;
        }
        match self.last {
            Some(last) if s <= last => Next::Duplicate,
            Some(last) if s > last + 1 => {
                self.waiting = Some(Box::new(vec![(s, frame.clone(), exclude)]));
                Next::Gap((last, s - 1))
            }
            _ => {
                self.last = Some(s);
                Next::Hand
            }
        }
    }

    /// A gap's read came, up to `upto`: whether to hand its frames on (they are new), and the
    /// frames that waited for it, to offer again in order.
    pub fn filled(&mut self, upto: u64) -> (bool, Vec<Waiting>) {
        let new = self.last.is_none_or(|last| upto > last);
        if new {
            self.last = Some(upto);
        }
        (new, self.waiting.take().map(|w| *w).unwrap_or_default())
    }

    /// A connection caught up to `written`: the position is at least there.
    pub fn caught_up(&mut self, written: u64) {
        self.last = Some(self.last.map_or(written, |l| l.max(written)));
    }
}

/// One connection catching up on a stream: the frames it has been written cover the stream up
/// to `written`; live frames wait in `held` while a read is out.
pub struct CatchUp {
    pub conn: Rc<Conn>,
    pub jgen: JoinGen,
    pub written: u64,
    /// A replay or gap read is out.
    pub reading: bool,
    /// The inbox's first replay, which goes right behind `welcome`.
    pub first_inbox: bool,
    pub held: VecDeque<Held>,
    pub held_bytes: usize,
}

/// A live frame held for a catching-up connection. `range` is the seqs it covers (one message,
/// or a gap fill), `None` for a frame outside the stream (a presence event, the copy of a
/// direct message sent). `mine`: the connection's own publish, which it is not sent.
pub struct Held {
    pub range: Option<(u64, u64)>,
    pub frame: OutFrame,
    pub mine: bool,
}

impl CatchUp {
    pub fn new(conn: Rc<Conn>, jgen: JoinGen, written: u64, reading: bool) -> CatchUp {
        CatchUp {
            conn,
            jgen,
            written,
            reading,
            first_inbox: false,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// A live frame: written now (into `out`) if nothing is pending, else held.
    pub fn offer(&mut self, h: Held, out: &mut Vec<OutFrame>) -> Option<Gap> {
        if self.reading || !self.held.is_empty() {
            self.held_bytes += h.frame.len();
            self.held.push_back(h);
            return None;
        }
        self.apply(h, out)
    }

    /// A read's answer: its frames cover the stream up to `upto`; then the held frames.
    pub fn replayed(&mut self, upto: u64, frames: Bytes, out: &mut Vec<OutFrame>) -> Option<Gap> {
        self.reading = false;
        if !frames.is_empty() {
            out.push(Rc::new(frames));
        }
        self.written = self.written.max(upto);
        while !self.reading
            && let Some(h) = self.held.pop_front()
        {
            self.held_bytes -= h.frame.len();
            if let Some(gap) = self.apply(h, out) {
                return Some(gap);
            }
        }
        None
    }

    /// Merges one frame by seq: what the connection has is dropped, the next is written, and
    /// anything past a gap waits for a read of the gap.
    fn apply(&mut self, h: Held, out: &mut Vec<OutFrame>) -> Option<Gap> {
        let Some((first, last)) = h.range else {
            if !h.mine {
                out.push(h.frame);
            }
            return None;
        };
        if last <= self.written {
            return None;
        }
        if first == self.written + 1 {
            if !h.mine && !h.frame.is_empty() {
                out.push(h.frame);
            }
            self.written = last;
            return None;
        }
        self.reading = true;
        if first > self.written + 1 {
            let gap = (self.written, first - 1);
            self.held_bytes += h.frame.len();
            self.held.push_front(h);
            Some(gap)
        } else {
            // Overlaps what was written: re-read the rest of its range instead.
            Some((self.written, last))
        }
    }

    pub fn idle(&self) -> bool {
        !self.reading && self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::FrameLimits;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn a_position_hands_on_in_order_and_waits_behind_a_gap() {
        let mut p = Position::at(3);
        assert_eq!(p.next(4, &b("4"), None), Next::Hand);
        assert_eq!(p.next(4, &b("4"), None), Next::Duplicate);
        assert_eq!(p.next(7, &b("7"), None), Next::Gap((4, 6)));
        assert_eq!(p.next(6, &b("6"), None), Next::Waits);
        let (new, waiting) = p.filled(5);
        assert!(new);
        let seqs: Vec<u64> = waiting.iter().map(|w| w.0).collect();
        assert_eq!(seqs, [7, 6], "offered again in arrival order");
        assert_eq!(p.next(6, &b("6"), None), Next::Hand);
        assert_eq!(p.next(7, &b("7"), None), Next::Hand);

        let mut user = Position::default();
        assert_eq!(
            user.next(9, &b("9"), None),
            Next::Hand,
            "unknown: taken as is"
        );
        user.caught_up(5);
        assert_eq!(user.last, Some(9));
    }

    fn conn() -> Rc<Conn> {
        let identity = crate::auth::Identity {
            user: crate::core::Name::new("u").unwrap(),
            rooms: None,
            exp: None,
            info: None,
        };
        let sink = crate::conn::MemorySink::default();
        let config = crate::config::Config::default();
        let (rates, limits) = (config.rates(), FrameLimits::of(&config));
        Rc::new(Conn::in_memory(
            ConnId::new(0, 0, 1),
            sink,
            &identity,
            &rates,
            limits,
        ))
    }

    fn held(first: u64, last: u64) -> Held {
        Held {
            range: Some((first, last)),
            frame: Rc::new(Bytes::from(format!("{first}-{last}"))),
            mine: false,
        }
    }

    fn texts(out: &[OutFrame]) -> Vec<String> {
        out.iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_catch_up_drops_what_its_replay_covered_and_reads_gaps() {
        let mut cu = CatchUp::new(conn(), 1, 0, true);
        let mut out = Vec::new();
        for (first, last) in [(4, 4), (5, 5), (8, 8), (9, 9)] {
            assert_eq!(
                cu.offer(held(first, last), &mut out),
                None,
                "held while reading"
            );
        }
        assert!(out.is_empty());
        // The replay covers up to 4: 4 is dropped, 5 written, then 6..7 are missing.
        let gap = cu.replayed(4, b("replay"), &mut out);
        assert_eq!(texts(&out), ["replay", "5-5"]);
        assert_eq!(gap, Some((5, 7)));
        out.clear();
        assert_eq!(cu.offer(held(10, 10), &mut out), None);
        assert!(out.is_empty(), "still held behind the gap");
        assert_eq!(cu.replayed(7, b("6,7"), &mut out), None);
        assert_eq!(texts(&out), ["6,7", "8-8", "9-9", "10-10"]);
        assert!(cu.idle());
        assert_eq!(cu.written, 10);
        // Overlapping what was written: the rest of its range is read instead.
        out.clear();
        assert_eq!(cu.offer(held(9, 12), &mut out), Some((10, 12)));
        assert!(out.is_empty());
    }

    #[test]
    fn a_catch_up_skips_its_own_publish_and_writes_frames_outside_the_stream() {
        let mut cu = CatchUp::new(conn(), 1, 3, false);
        let mut out = Vec::new();
        let mut mine = held(4, 4);
        mine.mine = true;
        assert_eq!(cu.offer(mine, &mut out), None);
        let event = Held {
            range: None,
            frame: Rc::new(b("joined")),
            mine: false,
        };
        assert_eq!(cu.offer(event, &mut out), None);
        assert_eq!(cu.offer(held(5, 5), &mut out), None);
        assert_eq!(
            texts(&out),
            ["joined", "5-5"],
            "no gap for the skipped own message"
        );
    }
}
