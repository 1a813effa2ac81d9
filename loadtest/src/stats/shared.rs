//! The state every task of one run shares: the run's epoch, its running counters (sent, acked,
//! delivered, owed), the measured window, the latency histograms and the first few problems.
//!
//! Owns the counters and the window test. It must not judge delivery (that is `delivery`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::hist::Hist;

/// How many problem descriptions a run keeps.
pub(super) const MAX_PROBLEMS: usize = 20;

/// State shared by every task of one run.
pub struct Shared {
    /// Time zero for the nanosecond stamps in bodies.
    pub epoch: Instant,
    /// Message frames received in a connection's stream, all connections.
    pub delivered: AtomicU64,
    /// Publishes (`publish`/`send`) written.
    pub sent: AtomicU64,
    /// Frames that were neither messages nor replies to the bot's requests (presence events),
    /// all connections.
    pub other_frames: AtomicU64,
    /// Acks received for them.
    pub acked: AtomicU64,
    /// Error replies to them (e.g. `rate_limited`).
    pub rejected: AtomicU64,
    /// Deliveries owed for everything written so far (sent × recipients); closed-loop mode uses
    /// `owed - delivered` as the number of deliveries in flight.
    pub owed: AtomicU64,
    /// Messages whose stamp falls in [window_start_ns, window_end_ns) go into the histograms.
    pub window_start_ns: AtomicU64,
    pub window_end_ns: AtomicU64,
    /// Publish (scheduled) → delivery.
    pub latency: Hist,
    /// Publish (scheduled) → ack.
    pub ack_latency: Hist,
    /// Scheduled send time → the moment the bot wrote the frame: the bot's own lateness.
    pub send_lag: Hist,
    /// `error` frames from the server.
    pub server_errors: AtomicU64,
    /// Connections that ended before the run told them to.
    pub disconnects: AtomicU64,
    /// `--resend`: connections reconnecting now (the drain waits for them).
    pub reconnecting: AtomicU64,
    /// WebSocket bytes of the data frames the server sent (headers included), all connections
    /// of the pub/sub read loop.
    pub bytes_in: AtomicU64,
    problems: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(epoch: Instant) -> Shared {
        Shared {
            epoch,
            delivered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            owed: AtomicU64::new(0),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            latency: Hist::default(),
            ack_latency: Hist::default(),
            send_lag: Hist::default(),
            server_errors: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            reconnecting: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the epoch.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The tokio instant `ns` after the epoch, to sleep until.
    pub fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(ns))
    }

    /// Whether a message stamped `ns` belongs to the measured window.
    #[inline]
    pub fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_start_ns.load(Relaxed) && ns < self.window_end_ns.load(Relaxed)
    }

    /// The run's counters at this moment.
    pub fn counts(&self) -> Counts {
        Counts {
            delivered: self.delivered.load(Relaxed),
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            other_frames: self.other_frames.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
        }
    }

    /// Notes a problem for the report (the first few are kept).
    pub fn problem(&self, what: String) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < MAX_PROBLEMS {
            p.push(what);
        }
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A snapshot of [`Shared`]'s running counters.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub delivered: u64,
    pub sent: u64,
    pub acked: u64,
    pub other_frames: u64,
    /// `Shared::bytes_in`.
    #[serde(default)]
    pub bytes_in: u64,
}

impl Counts {
    /// Two processes' counters at the same moment, added up.
    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            delivered: self.delivered + o.delivered,
            sent: self.sent + o.sent,
            acked: self.acked + o.acked,
            other_frames: self.other_frames + o.other_frames,
            bytes_in: self.bytes_in + o.bytes_in,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            delivered: self.delivered.saturating_sub(earlier.delivered),
            sent: self.sent.saturating_sub(earlier.sent),
            acked: self.acked.saturating_sub(earlier.acked),
            other_frames: self.other_frames.saturating_sub(earlier.other_frames),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
        }
    }
}
