//! The pacer: one OS thread that wakes open-loop publishers at their due times with microsecond
//! precision.
//!
//! tokio's timer has a 1 ms tick and rounds every deadline up to it, so a publisher that slept
//! with `sleep_until` sent 1–2 ms late, and because latency is measured from the due time that
//! lateness was charged to the server. The pacer instead sleeps with `nanosleep` (its timer slack
//! set to 1 µs) until the earliest due time of all publishers and then signals that publisher's
//! `Notify`. It owns only timing; publishers still decide what to send. It runs on the bot's
//! CPUs (it inherits the pinned affinity) and sleeps between beats.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One periodic schedule: beat k is due at `base_ns + k * period_ns` (ns since the epoch).
pub struct Beat {
    pub base_ns: u64,
    pub period_ns: f64,
    pub notify: Arc<Notify>,
}

impl Beat {
    pub fn due(&self, k: u64) -> u64 {
        due(self.base_ns, self.period_ns, k)
    }
}

/// Beat k of a schedule; publishers use the same function, so they agree with the pacer.
pub fn due(base_ns: u64, period_ns: f64, k: u64) -> u64 {
    base_ns + (k as f64 * period_ns) as u64
}

/// The running pacer; dropping it stops the thread.
pub struct Pacer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// A sender whose beat is this late goes on tokio's (coarser) timer instead.
pub const PACER_FALLBACK_NS: u64 = 5_000_000;

/// The longest single sleep, so a stop request is seen promptly.
const MAX_NAP: Duration = Duration::from_millis(50);

impl Pacer {
    /// Starts signalling `beats` until `end_ns`.
    pub fn start(epoch: Instant, beats: Vec<Beat>, end_ns: u64) -> std::io::Result<Pacer> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("loadtest-pacer".into())
            .spawn(move || pace(epoch, beats, end_ns, &flag))?;
        Ok(Pacer {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn pace(epoch: Instant, beats: Vec<Beat>, end_ns: u64, stop: &AtomicBool) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let mut heap: BinaryHeap<Reverse<(u64, usize, u64)>> = beats
        .iter()
        .enumerate()
        .map(|(i, b)| Reverse((b.due(0), i, 0)))
        .filter(|Reverse((due, _, _))| *due < end_ns)
        .collect();
    while let Some(Reverse((due, i, k))) = heap.pop() {
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let now = epoch.elapsed().as_nanos() as u64;
            if now >= due {
                break;
            }
            std::thread::sleep(Duration::from_nanos(due - now).min(MAX_NAP));
        }
        beats[i].notify.notify_one();
        let next = beats[i].due(k + 1);
        if next < end_ns {
            heap.push(Reverse((next, i, k + 1)));
        }
    }
}
