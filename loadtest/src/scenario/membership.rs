//! Membership that changes while a connection stays open (`bigroom`): a join sent at its due
//! time, a `leave`, a rejoin with `since` = the last seq the member saw, and the catch-up on the
//! replay; with the room's counters and histograms of it all.
//!
//! One [`Member`] per connection: its reader task (the `pubsub` read loop) feeds it acks,
//! messages, refusals and the connection's end, and the scenario's driver reads it to send the
//! next request. One [`RoomCtl`] per process and run. The connection's `ConnOutcome` spans all
//! its joins, so the exact check covers the rejoin: everything after the first join, once and
//! in order, replayed or live. This module owns the request ids and a member's states. It must
//! not send anything (the scenario does) or judge delivery (`stats` does).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use tokio::sync::Notify;

use crate::client::ServerFrame;
use crate::stats::{Hist, Shared};

/// The id of a member's join and of its leave: far above any publish's (its counter + 1).
pub const JOIN_ID: u64 = 1 << 60;
pub const LEAVE_ID: u64 = JOIN_ID + 1;

/// Its first join was acked.
const JOINED: u8 = 1;
/// Its leave was acked and it has not rejoined.
const OUT: u8 = 2;
/// It rejoined and has seen its replay to the end.
const BACK: u8 = 4;
/// A join or leave was refused or not answered, or the connection ended.
const FAILED: u8 = 8;

/// A join ack's `presence`: `list`, or another mode.
const PRESENCE_LIST: u8 = 1;
const PRESENCE_OTHER: u8 = 2;

/// Whether a request id is a member's join or leave.
pub fn is_member_request(id: u64) -> bool {
    id == JOIN_ID || id == LEAVE_ID
}

/// One connection's membership of the room.
pub struct Member {
    state: AtomicU8,
    /// The highest seq it has received in the room or had acked for its own publish: where it
    /// is in the room's order (the rejoin's `since`, and what the final drain waits for).
    position: AtomicU64,
    /// While a rejoin's replay is under way, the seq that ends it (the rejoin ack's); else 0.
    replay_end: AtomicU64,
    /// When its pending join was sent (ns since the epoch).
    sent_ns: AtomicU64,
    /// Its first join ack's `members` (its place in the server's order of joins; 0 when the
    /// ack had none) and `presence` (`PRESENCE_LIST`, `PRESENCE_OTHER`, or 0 when absent).
    place: AtomicU64,
    presence: AtomicU8,
    /// Its leave was acked.
    left: Notify,
    /// It joins during the fill (the publishers join before it).
    in_fill: bool,
    /// It leaves and rejoins in the churn phase.
    pub churns: bool,
}

/// The room's counters, one per process and run.
pub struct RoomCtl {
    /// Members that joined, or failed to, during the fill; and when the last one did.
    fill_settled: AtomicU64,
    fill_last_ns: AtomicU64,
    /// Churning members back and caught up, or failed; and when the last one was.
    churn_settled: AtomicU64,
    churn_last_ns: AtomicU64,
    pub joined: AtomicU64,
    pub rejoined: AtomicU64,
    pub back: AtomicU64,
    /// Requests refused or unanswered, and connections that ended, while membership mattered.
    pub failed: AtomicU64,
    pub not_recovered: AtomicU64,
    pub truncated: AtomicU64,
    /// Messages the rejoin acks said were replayed.
    pub replayed: AtomicU64,
    /// The highest seq acked for this process's publishers: the room's last seq, once every
    /// process has reported its own.
    pub last_acked: AtomicU64,
    /// Join sent → its ack, over the fill's joins.
    pub join_latency: Hist,
    /// Rejoin sent → the last replayed message received.
    pub rejoin_latency: Hist,
    /// Publish → delivery by the phase the message was scheduled in (live messages only).
    phase_starts: Vec<AtomicU64>,
    pub phase_latency: Vec<Hist>,
}

impl RoomCtl {
    pub fn new(phases: usize) -> RoomCtl {
        RoomCtl {
            fill_settled: AtomicU64::new(0),
            fill_last_ns: AtomicU64::new(0),
            churn_settled: AtomicU64::new(0),
            churn_last_ns: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            rejoined: AtomicU64::new(0),
            back: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            last_acked: AtomicU64::new(0),
            join_latency: Hist::default(),
            rejoin_latency: Hist::default(),
            phase_starts: (0..phases).map(|_| AtomicU64::new(u64::MAX)).collect(),
            phase_latency: (0..phases).map(|_| Hist::default()).collect(),
        }
    }

    /// Phase `i` holds the messages scheduled from `ns` on (until the next phase's start). Set
    /// before `ns`, so every message stamped after it finds it.
    pub fn start_phase(&self, i: usize, ns: u64) {
        self.phase_starts[i].store(ns, Relaxed);
    }

    /// Records a live delivery's latency under the phase its message was scheduled in.
    #[inline]
    pub fn record_phase(&self, sched_ns: u64, conn: usize, latency_ns: u64) {
        if let Some(i) = self
            .phase_starts
            .iter()
            .rposition(|s| s.load(Relaxed) <= sched_ns)
        {
            self.phase_latency[i].record(conn, latency_ns);
        }
    }

    /// (members settled in the fill, when the last one did).
    pub fn fill_settled(&self) -> (u64, u64) {
        (
            self.fill_settled.load(Relaxed),
            self.fill_last_ns.load(Relaxed),
        )
    }

    /// (churning members settled, when the last one did).
    pub fn churn_settled(&self) -> (u64, u64) {
        (
            self.churn_settled.load(Relaxed),
            self.churn_last_ns.load(Relaxed),
        )
    }
}

impl Member {
    /// `joined`: it joins when it connects (a publisher); `in_fill`: it joins during the fill.
    pub fn new(joined: bool, in_fill: bool, churns: bool) -> Member {
        Member {
            state: AtomicU8::new(if joined { JOINED } else { 0 }),
            position: AtomicU64::new(0),
            replay_end: AtomicU64::new(0),
            sent_ns: AtomicU64::new(0),
            place: AtomicU64::new(0),
            presence: AtomicU8::new(0),
            left: Notify::new(),
            in_fill,
            churns,
        }
    }

    pub fn position(&self) -> u64 {
        self.position.load(Relaxed)
    }

    /// Joined, not out of the room, and not failed: what the final drain waits for.
    pub fn in_room(&self) -> bool {
        let s = self.state.load(Relaxed);
        s & JOINED != 0 && s & (OUT | FAILED) == 0
    }

    pub fn failed(&self) -> bool {
        self.state.load(Relaxed) & FAILED != 0
    }

    pub fn joined(&self) -> bool {
        self.state.load(Relaxed) & JOINED != 0
    }

    /// Rejoined and caught up.
    pub fn is_back(&self) -> bool {
        self.state.load(Relaxed) & BACK != 0
    }

    /// Its first join's place in the room (the ack's `members`) and whether the room's presence
    /// was `list`; `None` when the ack had not both (a server before room rules).
    pub fn place(&self) -> Option<(u64, bool)> {
        let (place, presence) = (self.place.load(Relaxed), self.presence.load(Relaxed));
        (place > 0 && presence != 0).then_some((place, presence == PRESENCE_LIST))
    }

    /// The driver sent its join (or it was due: then latency counts from the due time).
    pub fn join_sent(&self, now_ns: u64) {
        self.sent_ns.store(now_ns, Relaxed);
    }

    /// The driver is sending its rejoin: returns the `since` to send.
    pub fn rejoin_sent(&self, now_ns: u64) -> u64 {
        self.sent_ns.store(now_ns, Relaxed);
        self.position()
    }

    /// Resolves when its leave has been acked (a permit waits if it already was).
    pub async fn left(&self) {
        self.left.notified().await;
    }

    /// A message of the room with `seq`, received at `now`. Returns whether it came live (a
    /// replayed one would count the time away as latency).
    #[inline]
    pub fn on_message(&self, room: &RoomCtl, seq: u64, now: u64, conn: usize) -> bool {
        self.position.fetch_max(seq, Relaxed);
        let end = self.replay_end.load(Relaxed);
        if end == 0 {
            return true;
        }
        if seq >= end {
            self.replay_end.store(0, Relaxed);
            self.back(room, now, conn);
        }
        seq > end
    }

    /// Its own publish was acked with `seq`.
    #[inline]
    pub fn on_own_publish(&self, room: &RoomCtl, seq: u64) {
        self.position.fetch_max(seq, Relaxed);
        room.last_acked.fetch_max(seq, Relaxed);
    }

    /// The ack of its join or leave. A first join's seq goes to `start_seq`: what the member is
    /// owed starts after it.
    pub fn on_ack(
        &self,
        room: &RoomCtl,
        shared: &Shared,
        f: &ServerFrame,
        start_seq: &mut Option<u64>,
        (now, conn): (u64, usize),
    ) {
        if f.id == Some(LEAVE_ID) {
            self.state.fetch_or(OUT, Relaxed);
            self.left.notify_one();
            return;
        }
        let seq = f.seq.unwrap_or(0);
        let since_sent = now.saturating_sub(self.sent_ns.load(Relaxed));
        if !self.joined() {
            *start_seq = Some(seq);
            self.place.store(f.members.unwrap_or(0), Relaxed);
            let presence = match f.presence {
                Some("list") => PRESENCE_LIST,
                Some(_) => PRESENCE_OTHER,
                None => 0,
            };
            self.presence.store(presence, Relaxed);
            self.position.fetch_max(seq, Relaxed);
            room.join_latency.record(conn, since_sent);
            room.joined.fetch_add(1, Relaxed);
            self.settle(JOINED, room, now);
            return;
        }
        // A rejoin with `since`: the replay up to `seq` follows, then live messages.
        room.rejoined.fetch_add(1, Relaxed);
        room.replayed.fetch_add(f.replayed.unwrap_or(0), Relaxed);
        if f.recovered != Some(true) {
            room.not_recovered.fetch_add(1, Relaxed);
            shared.problem(format!(
                "member {conn}: rejoin not recovered ({:?})",
                f.recovered
            ));
        }
        if f.truncated == Some(true) {
            room.truncated.fetch_add(1, Relaxed);
            shared.problem(format!("member {conn}: rejoin replay truncated"));
        }
        self.state.fetch_and(!OUT, Relaxed);
        if seq <= self.position() {
            self.back(room, now, conn);
        } else {
            self.replay_end.store(seq, Relaxed);
        }
    }

    /// Its join or leave was refused, or not answered in time, or its connection ended.
    pub fn fail(&self, room: &RoomCtl, now: u64) {
        if self.state.load(Relaxed) & FAILED == 0 {
            room.failed.fetch_add(1, Relaxed);
        }
        self.settle(FAILED, room, now);
        // A driver waiting for the leave's ack goes on.
        self.left.notify_one();
    }

    fn back(&self, room: &RoomCtl, now: u64, conn: usize) {
        let since_sent = now.saturating_sub(self.sent_ns.load(Relaxed));
        room.rejoin_latency.record(conn, since_sent);
        room.back.fetch_add(1, Relaxed);
        self.settle(BACK, room, now);
    }

    /// Sets `bit`; the first of JOINED or FAILED settles a fill member, the first of BACK or
    /// FAILED a churning one.
    fn settle(&self, bit: u8, room: &RoomCtl, now: u64) {
        let prev = self.state.fetch_or(bit, Relaxed);
        let first = |mask: u8| bit & mask != 0 && prev & mask == 0;
        if self.in_fill && first(JOINED | FAILED) {
            room.fill_last_ns.fetch_max(now, Relaxed);
            room.fill_settled.fetch_add(1, Relaxed);
        }
        if self.churns && first(BACK | FAILED) {
            room.churn_last_ns.fetch_max(now, Relaxed);
            room.churn_settled.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: u64, seq: Option<u64>, recovered: Option<bool>) -> String {
        let mut s = format!(r#"{{"type":"ack","id":{id},"room":"r""#);
        if let Some(seq) = seq {
            s += &format!(r#","seq":{seq}"#);
        }
        if let Some(r) = recovered {
            s += &format!(r#","recovered":{r},"replayed":2,"truncated":false"#);
        }
        s + "}"
    }

    #[test]
    fn join_leave_rejoin_and_catch_up() {
        let shared = Shared::new(std::time::Instant::now());
        let room = RoomCtl::new(1);
        let m = Member::new(false, true, true);
        let mut start = None;
        m.join_sent(10);
        let f = ack(JOIN_ID, Some(5), None);
        m.on_ack(
            &room,
            &shared,
            &ServerFrame::parse(f.as_bytes()).unwrap(),
            &mut start,
            (20, 0),
        );
        assert_eq!(start, Some(5));
        assert_eq!(m.place(), None, "an ack without members and presence");
        assert_eq!(room.fill_settled().0, 1);
        assert!(m.in_room());
        assert!(m.on_message(&room, 6, 30, 0));

        let f = ack(LEAVE_ID, None, None);
        m.on_ack(
            &room,
            &shared,
            &ServerFrame::parse(f.as_bytes()).unwrap(),
            &mut start,
            (40, 0),
        );
        assert!(!m.in_room());
        assert_eq!(m.rejoin_sent(50), 6);
        let f = ack(JOIN_ID, Some(8), Some(true));
        m.on_ack(
            &room,
            &shared,
            &ServerFrame::parse(f.as_bytes()).unwrap(),
            &mut start,
            (60, 0),
        );
        assert_eq!(start, Some(5), "the first join's seq stays");
        assert!(m.in_room());
        // Messages 7 and 8 are the replay; 9 is live and brings nothing new.
        assert!(!m.on_message(&room, 7, 61, 0));
        assert_eq!(room.churn_settled().0, 0);
        assert!(!m.on_message(&room, 8, 62, 0));
        assert_eq!(room.churn_settled(), (1, 62));
        assert!(m.on_message(&room, 9, 63, 0));
        assert_eq!(room.replayed.load(Relaxed), 2);
        assert_eq!(room.not_recovered.load(Relaxed), 0);

        // A failure after that settles nothing twice.
        m.fail(&room, 70);
        assert_eq!((room.fill_settled().0, room.churn_settled().0), (1, 1));
    }

    #[test]
    fn the_first_join_ack_gives_the_members_place() {
        let shared = Shared::new(std::time::Instant::now());
        let room = RoomCtl::new(1);
        let mut start = None;
        for (presence, listed) in [("list", true), ("count", false)] {
            let m = Member::new(false, true, false);
            let f = format!(
                r#"{{"type":"ack","id":{JOIN_ID},"room":"r","seq":0,"presence":"{presence}","members":3}}"#
            );
            let f = ServerFrame::parse(f.as_bytes()).unwrap();
            m.on_ack(&room, &shared, &f, &mut start, (1, 0));
            assert_eq!(m.place(), Some((3, listed)));
        }
    }

    #[test]
    fn phases_by_schedule() {
        let room = RoomCtl::new(2);
        room.record_phase(5, 0, 1_000_000);
        room.start_phase(0, 10);
        room.start_phase(1, 20);
        room.record_phase(15, 0, 1_000_000);
        room.record_phase(25, 0, 2_000_000);
        room.record_phase(26, 0, 2_000_000);
        let counts: Vec<u64> = room
            .phase_latency
            .iter()
            .map(|h| h.summary().map_or(0, |s| s.count))
            .collect();
        assert_eq!(counts, vec![1, 2]);
    }
}
