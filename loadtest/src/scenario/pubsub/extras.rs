//! A publishing connection's chat extras (issue 23): `signal` frames (`{"typing":true}`) and
//! `read` frames for its room, each at its own open-loop rate (`--signal-rate`, `--read-rate`),
//! so what signals and read positions cost the server can be measured beside the messages.
//! Neither is acknowledged (no `id`); receivers count signals and receipts as other frames.
//!
//! It must not read frames, and it never touches the delivery check.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::client::{self, Dest, SharedWriter};
use crate::stats::Shared;

pub(super) struct Extras {
    pub(super) shared: Arc<Shared>,
    pub(super) writer: SharedWriter,
    pub(super) room: Arc<str>,
    /// Per second; 0 for none.
    pub(super) signal_rate: f64,
    pub(super) read_rate: f64,
    pub(super) end_ns: Arc<AtomicU64>,
    /// Spreads the connections' schedules over one period.
    pub(super) phase: f64,
}

/// Signals and reads written, over every connection.
pub static SIGNALS_SENT: AtomicU64 = AtomicU64::new(0);
pub static READS_SENT: AtomicU64 = AtomicU64::new(0);

impl Extras {
    /// For a publishing connection whose messages go to a room, when either rate is set.
    pub(super) fn for_room(dest: &Dest, signal_rate: f64, read_rate: f64) -> Option<Arc<str>> {
        match dest {
            Dest::Room(room) if signal_rate > 0.0 || read_rate > 0.0 => Some(room.clone()),
            _ => None,
        }
    }

    /// Runs until the end of the run: one tick per due signal or read, in time order.
    pub(super) async fn run(self) {
        let period = |rate: f64| (rate > 0.0).then(|| 1e9 / rate);
        let (sp, rp) = (period(self.signal_rate), period(self.read_rate));
        let start = self.shared.now_ns();
        let offset = |p: Option<f64>| p.map_or(f64::INFINITY, |p| start as f64 + self.phase * p);
        let (mut next_signal, mut next_read) = (offset(sp), offset(rp));
        let mut seq = 0u64;
        let signal = format!(
            r#"{{"type":"signal","room":"{}","body":{{"typing":true}}}}"#,
            self.room
        );
        loop {
            let due = next_signal.min(next_read);
            if due as u64 >= self.end_ns.load(Relaxed) {
                return;
            }
            let now = self.shared.now_ns();
            if (due as u64) > now {
                tokio::time::sleep(Duration::from_nanos(due as u64 - now)).await;
            }
            let mut frame = if next_signal <= next_read {
                next_signal += sp.unwrap_or(f64::INFINITY);
                SIGNALS_SENT.fetch_add(1, Relaxed);
                signal.clone().into_bytes()
            } else {
                next_read += rp.unwrap_or(f64::INFINITY);
                // A growing seq: the server clamps it to the room's last seq.
                seq += 1_000;
                READS_SENT.fetch_add(1, Relaxed);
                format!(r#"{{"type":"read","room":"{}","seq":{seq}}}"#, self.room).into_bytes()
            };
            if client::send_text(&self.writer, &mut frame).await.is_err() {
                return;
            }
        }
    }
}
