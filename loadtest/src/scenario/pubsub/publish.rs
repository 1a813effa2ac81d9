//! One connection's publisher: open loop, woken by the pacer at each message's due time and
//! stamping the message with it; or closed loop (`--max`), keeping at most `window` messages
//! unacked and the run at most `max_in_flight` deliveries owed.
//!
//! Owns what a publish writes and when. It must not read frames (that is `conn`, which answers
//! the publisher through `PubShared`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;

use crate::client::{self, BodyStamp, RequestBuf, SharedWriter};
use crate::scenario::pacer::{self, PACER_FALLBACK_NS};
use crate::scenario::plan::PubPlan;
use crate::stats::Shared;

use super::resend::Resend;

/// What a connection's reader and its publisher share.
pub(super) struct PubShared {
    /// Messages answered, by an ack or an error reply.
    pub(super) answered: AtomicU64,
    /// Wakes a closed-loop publisher waiting for acks.
    pub(super) notify: Notify,
    /// The pacer's beat: wakes an open-loop publisher when its next message is due.
    pub(super) tick: Arc<Notify>,
    /// Open loop: when message 0 is due (ns since the epoch); set before the publisher starts.
    pub(super) base_ns: AtomicU64,
    pub(super) period_ns: f64,
    /// Closed loop: the send stamp of each unacked message, by counter % window.
    pub(super) ring: Option<Box<[AtomicU64]>>,
    pub(super) closed_loop: bool,
    /// Deliveries each of its messages owes.
    pub(super) recipients: u64,
    /// `--resend`: what its connection needs to send unacked messages again after a reconnect.
    pub(super) resend: Option<Resend>,
}

impl PubShared {
    pub(super) fn answer(&self) {
        self.answered.fetch_add(1, Relaxed);
        if self.closed_loop {
            self.notify.notify_one();
        }
    }

    pub(super) fn stamp_of(&self, counter: u64) -> u64 {
        match &self.ring {
            Some(ring) => ring[(counter % ring.len() as u64) as usize].load(Relaxed),
            None => pacer::due(self.base_ns.load(Relaxed), self.period_ns, counter),
        }
    }
}

/// One connection's publishing.
pub(super) struct PublishJob {
    pub(super) shared: Arc<Shared>,
    /// The connection's run-wide index (in message bodies) and its place in the engine.
    pub(super) index: u32,
    pub(super) slot: usize,
    pub(super) writer: SharedWriter,
    pub(super) ps: Arc<PubShared>,
    pub(super) plan: PubPlan,
    /// Nothing due at or after it is sent; it may be set while the publisher runs.
    pub(super) end_ns: Arc<AtomicU64>,
    pub(super) body_size: usize,
    /// Each message carries an idempotency key.
    pub(super) keyed: bool,
    pub(super) window: u64,
    pub(super) max_in_flight: u64,
}

impl PublishJob {
    /// Returns (its slot, messages written).
    pub(super) async fn run(self) -> (usize, u64) {
        let sent = if self.ps.closed_loop {
            self.closed_loop().await
        } else {
            self.open_loop().await
        };
        (self.slot, sent)
    }

    fn end(&self) -> u64 {
        self.end_ns.load(Relaxed)
    }

    async fn send(&self, rb: &mut RequestBuf, counter: u64, stamp_ns: u64) -> bool {
        let stamp = BodyStamp {
            sched_ns: stamp_ns,
            publisher: self.index,
            counter,
        };
        let frame = rb.message(
            &self.plan.dest,
            counter + 1,
            stamp,
            self.body_size,
            self.keyed || self.ps.resend.is_some(),
        );
        if let Some(r) = &self.ps.resend {
            r.written.fetch_add(1, Relaxed);
        }
        let wrote = client::send(&self.writer, frame).await;
        // With --resend a failed write is a message its connection sends again once back.
        if let (Err(e), None) = (wrote, &self.ps.resend) {
            self.shared.problem(format!(
                "connection {}: publish {counter} failed: {e}",
                self.index
            ));
            return false;
        }
        self.shared.sent.fetch_add(1, Relaxed);
        self.shared.owed.fetch_add(self.plan.recipients, Relaxed);
        true
    }

    async fn open_loop(&self) -> u64 {
        let base = self.ps.base_ns.load(Relaxed);
        let mut rb = RequestBuf::default();
        let mut k = 0u64;
        loop {
            let due = pacer::due(base, self.ps.period_ns, k);
            if due >= self.end() {
                return k;
            }
            // The pacer signals at the due time; tokio's coarser timer is only a fallback.
            let fallback = self.shared.at(due + PACER_FALLBACK_NS);
            while self.shared.now_ns() < due {
                let _ = tokio::time::timeout_at(fallback, self.ps.tick.notified()).await;
            }
            let now = self.shared.now_ns();
            if !self.send(&mut rb, k, due).await {
                return k;
            }
            if self.shared.in_window(due) {
                self.shared
                    .send_lag
                    .record(self.index as usize, now.saturating_sub(due));
            }
            k += 1;
        }
    }

    async fn closed_loop(&self) -> u64 {
        let ring = self.ps.ring.as_ref().expect("closed loop has a ring");
        let end = self.shared.at(self.end());
        let start = self.shared.at(self.ps.base_ns.load(Relaxed));
        tokio::time::sleep_until(start).await;
        let mut rb = RequestBuf::default();
        let mut k = 0u64;
        loop {
            // At most `window` unacked.
            while k - self.ps.answered.load(Relaxed) >= self.window {
                if tokio::time::timeout_at(end, self.ps.notify.notified())
                    .await
                    .is_err()
                {
                    return k;
                }
            }
            // At most `max_in_flight` deliveries owed, run-wide.
            while self.shared.owed.load(Relaxed)
                > self.shared.delivered.load(Relaxed) + self.max_in_flight
            {
                if tokio::time::Instant::now() >= end {
                    return k;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let now = self.shared.now_ns();
            if now >= self.end() {
                return k;
            }
            ring[(k % ring.len() as u64) as usize].store(now, Relaxed);
            if !self.send(&mut rb, k, now).await {
                return k;
            }
            k += 1;
        }
    }
}
