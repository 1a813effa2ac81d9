//! The writer's part in edits, deletes and reactions: checking one against its stored target
//! (the embedded engine; the verdict goes back to the room's home, which sequences it), and
//! folded `history` pages (both engines: the folded states are read from the `Store`).
//!
//! Served in order with the writes, so a check sees every event queued before it.

use crate::core::error::ReplyError;
use crate::core::event::{Event, EventKind};
use crate::core::{Name, ShardId, Stream};
use crate::msg::{EngineMsg, FoldFor, ReplyTo};
use crate::protocol::encode;
use crate::store::StoreError;
use crate::store::fold::{self, Verdict};

use super::writer::Writer;

impl Writer {
    /// Checks an event against what is stored and sends the verdict to the room's home.
    pub(super) fn check_event(
        &mut self,
        (room, from, event, api): (Name, Name, Event, bool),
        reply: ReplyTo,
        (home, max_emojis): (ShardId, usize),
    ) {
        let stream = Stream::Room(room.clone());
        let verdict = (self.decide(&stream, (&from, api), &event, max_emojis))
            .unwrap_or_else(|e| Err(self.page_failed(&e)));
        let verdict = verdict.map(|v| match v {
            Verdict::Noop => None,
            Verdict::Write(w) => Some(w),
        });
        let msg = EngineMsg::Checked {
            room,
            from,
            event,
            reply,
            verdict,
        };
        self.router.send(home, msg);
    }

    fn decide(
        &self,
        stream: &Stream,
        (from, api): (&Name, bool),
        event: &Event,
        max_emojis: usize,
    ) -> Result<Result<Verdict, ReplyError>, StoreError> {
        let target = self.store.message(stream, event.target)?;
        let state = match &target {
            Some(_) => self.store.folded(stream, &[event.target])?.pop().flatten(),
            None => None,
        };
        let hard = matches!(event.kind, EventKind::Delete { hard: true });
        let mut edits = Vec::new();
        if let (true, Some(s)) = (hard, &state) {
            for &seq in &s.edits {
                edits.extend(self.store.message(stream, seq)?);
            }
        }
        Ok(fold::decide(
            event,
            (from, api),
            (target.as_ref(), state),
            max_emojis,
            |_| edits,
        ))
    }

    /// A folded `history` page: the stored entries before `before` (at most `limit`), each
    /// message in its current state, events left out (they are folded in), an erased entry
    /// that is gone (the Redis engine) as its tombstone. `before` in the reply pages on.
    pub(super) fn fold_history(
        &mut self,
        room: Name,
        reply: ReplyTo,
        (before, limit): (Option<u64>, usize),
        fold: FoldFor,
    ) {
        let stream = Stream::Room(room.clone());
        let page = self.fold_page(&stream, &room, before.unwrap_or(u64::MAX), limit, &fold);
        let (shard, msg) = match page {
            Ok((messages, more, next)) => {
                let items = || messages.iter().map(|m| &m[..]);
                reply.answer_read(
                    messages.len(),
                    |id| encode::fold_page(id, &room, items(), more, next),
                    || crate::ws::payload_of(&encode::fold_page(None, &room, items(), more, next)),
                )
            }
            Err(e) => reply.fail(self.page_failed(&e)),
        };
        self.router.send(shard, msg);
    }

    fn fold_page(
        &self,
        stream: &Stream,
        room: &Name,
        before: u64,
        limit: usize,
        fold: &FoldFor,
    ) -> Result<(Vec<Vec<u8>>, bool, u64), StoreError> {
        let raw = self.store.before(stream, before, limit + 1)?;
        let (raw, more) = self.page(raw, limit);
        let next = raw.last().map_or(before.min(1), |m| m.seq);
        // Messages of the page, and seqs missing in its range (entries gone, erased ones among
        // them in the Redis engine): each may have a folded state.
        let top = raw.first().map_or(0, |m| m.seq);
        // The last page also looks below its oldest entry, down to seq 1.
        let bottom = match more {
            true => next,
            false => 1,
        };
        let gap = |from: u64, to: u64| (from..to).rev().take(2 * limit);
        let mut seqs: Vec<u64> = Vec::new();
        let mut expect = top;
        for m in &raw {
            seqs.extend(gap(m.seq + 1, expect));
            expect = m.seq;
            if !fold::is_event(&m.payload) {
                seqs.push(m.seq);
            }
        }
        seqs.extend(gap(bottom, expect));
        let states = self.store.folded(stream, &seqs)?;
        let state_of = |seq: u64| {
            let i = seqs.iter().position(|&s| s == seq)?;
            states[i].as_ref()
        };
        let reader = fold.reader.as_deref();
        let mut out = Vec::with_capacity(raw.len());
        let tombstones = |from: u64, to: u64, out: &mut Vec<Vec<u8>>| {
            for gone in gap(from, to) {
                if let Some(s) = state_of(gone).filter(|s| s.erased) {
                    out.push(fold::tombstone(room, gone, s));
                }
            }
        };
        let mut expect = top;
        for m in &raw {
            tombstones(m.seq + 1, expect, &mut out);
            expect = m.seq;
            if !fold::is_event(&m.payload) {
                out.push(fold::render(&m.payload, state_of(m.seq), reader));
            }
        }
        tombstones(bottom, expect, &mut out);
        Ok((out, more, next))
    }
}
