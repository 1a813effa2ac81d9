//! Latency histograms (HDR, in microseconds) that many tasks record into, and their summary in
//! milliseconds for the report.
//!
//! Owns the histograms' bounds and how they are split to avoid contention. It must not decide
//! what is recorded when (that is the scenarios').

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Histograms are split into this many independently locked parts so that worker threads do
/// not contend; a connection always records into part `index % HIST_PARTS`.
const HIST_PARTS: usize = 16;
/// Largest latency a histogram holds (larger values are clamped), in microseconds.
const HIST_MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds, recordable from many tasks.
pub struct Hist {
    parts: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            parts: (0..HIST_PARTS).map(|_| Mutex::new(new_hist())).collect(),
        }
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

impl Hist {
    /// Records `ns` nanoseconds for connection number `conn`.
    #[inline]
    pub fn record(&self, conn: usize, ns: u64) {
        let us = (ns + 500) / 1000;
        let mut h = self.parts[conn % HIST_PARTS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us);
    }

    /// Empties it, to start a new window.
    pub fn reset(&self) {
        for part in &self.parts {
            part.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
    }

    /// All parts added together.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_hist();
        for part in &self.parts {
            let part = part.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&*part).expect("same bounds");
        }
        all
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        LatencySummary::of(&self.merged())
    }

    /// What it recorded, to carry to another process.
    pub fn export(&self) -> HistData {
        let h = self.merged();
        HistData(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds what another histogram recorded (from [`Hist::export`]).
    pub fn add(&self, data: &HistData) {
        let mut h = self.parts[0].lock().unwrap_or_else(|e| e.into_inner());
        for &(us, n) in &data.0 {
            h.saturating_record_n(us, n);
        }
    }
}

/// A histogram's recorded values, as (microseconds, count) by bucket: each value is its
/// bucket's highest equivalent, so recording it again lands in the same bucket and the merged
/// percentiles are the ones one histogram of everything would give.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_histograms_merge_exactly() {
        let (a, b, all) = (Hist::default(), Hist::default(), Hist::default());
        for i in 0..5000u64 {
            let ns = i * i * 37 + 1000;
            (if i % 3 == 0 { &a } else { &b }).record(i as usize, ns);
            all.record(i as usize, ns);
        }
        let merged = Hist::default();
        merged.add(&a.export());
        merged.add(&b.export());
        let (m, e) = (merged.merged(), all.merged());
        assert_eq!(m.len(), e.len());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                m.value_at_quantile(q),
                e.value_at_quantile(q),
                "quantile {q}"
            );
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        })
    }
}
