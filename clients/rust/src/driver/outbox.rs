//! The outbox: keyed `publish` and `send` requests, each kept until the server answers it and
//! sent again after every reconnect. Entries to one room or user keep their order: at most one
//! of them is on the wire at a time, so a refusal can never let a later one be stored first.
//!
//! Pure bookkeeping: it decides which entries go and when, and completes them; the driver
//! writes the frames and knows which rooms are rejoined.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::{Ack, Error};

/// Reply codes after which an entry is sent again after a backoff: the server did not store it
/// and may take it later (the JS client's `RETRIED_CODES`).
const RETRIED: [&str; 2] = ["rate_limited", "unavailable"];

/// Where an entry goes; entries to one target keep their order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Room(String),
    User(String),
}

/// A `publish` or `send` with its key, encoded once with its id and sent as it is until it is
/// answered.
pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) target: Target,
    pub(crate) frame: Bytes,
    done: oneshot::Sender<Result<Ack, Error>>,
    tries: u32,
    not_before: Option<Instant>,
    on_wire: bool,
}

impl Entry {
    pub(crate) fn new(
        id: u64,
        target: Target,
        frame: Bytes,
        done: oneshot::Sender<Result<Ack, Error>>,
    ) -> Entry {
        Entry {
            id,
            target,
            frame,
            done,
            tries: 0,
            not_before: None,
            on_wire: false,
        }
    }
}

#[derive(Default)]
pub(super) struct Outbox {
    entries: VecDeque<Entry>,
}

impl Outbox {
    pub(super) fn push(&mut self, e: Entry) {
        self.entries.push_back(e);
    }

    /// The entries that may go now, in the order they were made, marked as on the wire: the
    /// first of each target, unless it is on the wire already, waits for its retry time, or is
    /// for a room `held` says is being rejoined. Cost: one pass over the outbox.
    pub(super) fn due(
        &mut self,
        now: Instant,
        held: impl Fn(&Target) -> bool,
    ) -> Vec<(u64, Bytes)> {
        let mut seen: Vec<&Target> = Vec::new();
        let mut go = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if seen.contains(&&e.target) {
                continue;
            }
            seen.push(&e.target);
            if !e.on_wire && !held(&e.target) && e.not_before.is_none_or(|t| t <= now) {
                go.push(i);
            }
        }
        (go.into_iter())
            .map(|i| {
                let e = &mut self.entries[i];
                (e.on_wire, e.not_before) = (true, None);
                e.tries += 1;
                (e.id, e.frame.clone())
            })
            .collect()
    }

    /// The earliest retry time of an entry waiting for one.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        (self.entries.iter())
            .filter(|e| !e.on_wire)
            .filter_map(|e| e.not_before)
            .min()
    }

    /// The connection is gone: nothing is on the wire, every entry goes again.
    pub(super) fn lost(&mut self) {
        for e in &mut self.entries {
            e.on_wire = false;
        }
    }

    /// The client stops: every entry fails.
    pub(super) fn fail_all(&mut self, err: impl Fn() -> Error) {
        for e in self.entries.drain(..) {
            let _ = e.done.send(Err(err()));
        }
    }

    /// The server's answer to entry `id`: a retried code puts it back to go again after
    /// `backoff(tries)`; an ack or any other error completes it. Returns the acked entry's
    /// target and seq.
    pub(super) fn answered(
        &mut self,
        id: u64,
        answer: Result<Ack, Error>,
        now: Instant,
        backoff: impl FnOnce(u32) -> Duration,
    ) -> Option<(Target, Option<u64>)> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        if let Err(Error::Server { code, .. }) = &answer
            && RETRIED.contains(&code.as_str())
        {
            let e = &mut self.entries[i];
            e.on_wire = false;
            e.not_before = Some(now + backoff(e.tries.saturating_sub(1)));
            return None;
        }
        let e = self.entries.remove(i)?;
        let acked = answer.as_ref().ok().map(|ack| (e.target, ack.seq));
        let _ = e.done.send(answer);
        acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, target: Target) -> (Entry, oneshot::Receiver<Result<Ack, Error>>) {
        let (tx, rx) = oneshot::channel();
        (Entry::new(id, target, Bytes::from(id.to_string()), tx), rx)
    }

    fn room(r: &str) -> Target {
        Target::Room(r.into())
    }

    fn ids(due: Vec<(u64, Bytes)>) -> Vec<u64> {
        due.into_iter().map(|(id, _)| id).collect()
    }

    fn refused(code: &str) -> Result<Ack, Error> {
        Err(Error::Server {
            code: code.into(),
            message: String::new(),
        })
    }

    #[test]
    fn one_entry_per_target_on_the_wire_in_order() {
        let mut o = Outbox::default();
        let mut waiting = Vec::new();
        for (id, t) in [
            (1, room("a")),
            (2, room("a")),
            (3, room("b")),
            (4, room("a")),
        ] {
            let (e, rx) = entry(id, t);
            o.push(e);
            waiting.push(rx);
        }
        let now = Instant::now();
        assert_eq!(ids(o.due(now, |_| false)), [1, 3]);
        assert_eq!(
            ids(o.due(now, |_| false)),
            Vec::<u64>::new(),
            "both are on the wire"
        );
        let ack = Ack {
            seq: Some(7),
            ..Ack::default()
        };
        assert_eq!(
            o.answered(1, Ok(ack), now, |_| Duration::ZERO),
            Some((room("a"), Some(7)))
        );
        assert_eq!(waiting[0].try_recv().unwrap().unwrap().seq, Some(7));
        assert_eq!(ids(o.due(now, |_| false)), [2]);
        o.lost();
        assert_eq!(
            ids(o.due(now, |_| false)),
            [2, 3],
            "all go again after a reconnect"
        );
        assert_eq!(ids(o.due(now, |t| *t == room("a"))), Vec::<u64>::new());
    }

    #[test]
    fn a_retried_code_waits_its_backoff_and_holds_its_target() {
        let mut o = Outbox::default();
        let (e1, mut rx1) = entry(1, room("a"));
        let (e2, _rx2) = entry(2, room("a"));
        o.push(e1);
        o.push(e2);
        let now = Instant::now();
        assert_eq!(ids(o.due(now, |_| false)), [1]);
        let mut tries = None;
        let backoff = |t| {
            tries = Some(t);
            Duration::from_secs(1)
        };
        assert_eq!(o.answered(1, refused("rate_limited"), now, backoff), None);
        assert_eq!(tries, Some(0), "the first try's backoff");
        assert!(rx1.try_recv().is_err(), "not completed");
        assert_eq!(o.next_wake(), Some(now + Duration::from_secs(1)));
        assert_eq!(
            ids(o.due(now, |_| false)),
            Vec::<u64>::new(),
            "2 waits behind 1"
        );
        let later = now + Duration::from_secs(1);
        assert_eq!(ids(o.due(later, |_| false)), [1]);
        assert_eq!(o.next_wake(), None);
    }

    #[test]
    fn other_errors_complete_the_entry_and_a_stop_fails_the_rest() {
        let mut o = Outbox::default();
        let (e1, mut rx1) = entry(1, room("a"));
        let (e2, mut rx2) = entry(2, Target::User("bob".into()));
        o.push(e1);
        o.push(e2);
        let now = Instant::now();
        o.due(now, |_| false);
        assert_eq!(
            o.answered(1, refused("forbidden"), now, |_| Duration::ZERO),
            None
        );
        assert!(
            matches!(rx1.try_recv(), Ok(Err(Error::Server { code, .. })) if code == "forbidden")
        );
        assert_eq!(
            o.answered(1, refused("forbidden"), now, |_| Duration::ZERO),
            None,
            "gone"
        );
        o.fail_all(|| Error::Closed("bye".into()));
        assert!(matches!(rx2.try_recv(), Ok(Err(Error::Closed(_)))));
        assert_eq!(ids(o.due(now, |_| false)), Vec::<u64>::new());
    }
}
