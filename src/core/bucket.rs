//! A connection's rate meter: three token buckets refilled from one clock reading, in 16 bytes.
//!
//! The mechanism only: what a request or a read costs, and what is refused with which error, is
//! the client side's policy (`shard::client`). The rates come from `Config::rates`.

/// A connection's three rate limits, refilled from one clock reading: a token bucket of
/// requests (`publish_rate`: publish, send, history, sync, presence, refresh), a budget of
/// stored messages read (`read_rate`: join replays, history, sync, the inbox at connect) and a
/// bucket of signals (`signal_rate`: `signal` and `read` frames, so typing never spends the
/// publish budget). 16 bytes (an `Instant` alone is 16): it is in every `Conn`.
#[derive(Clone, Copy)]
pub struct Buckets {
    requests: f32,
    /// Goes below zero: a read is charged when its answer comes, for what it returned, and
    /// the next one waits until this is back to zero (a debt, paid off at `read_rate`).
    reads: f32,
    signals: f32,
    /// Milliseconds since `epoch()`, wrapping (49 days; a wrapped gap reads as a short one).
    last: u32,
}

/// The rates and bursts of a connection's `Buckets`.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub requests: u32,
    pub request_burst: u32,
    /// Stored messages per second.
    pub reads: u32,
    pub read_burst: u32,
    /// Signals and reads per second.
    pub signals: u32,
    pub signal_burst: u32,
}

/// The process's clock origin for `Buckets`.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn millis_now() -> u32 {
    epoch().elapsed().as_millis() as u32
}

impl Buckets {
    pub fn full(rates: &Rates) -> Buckets {
        Buckets {
            requests: rates.request_burst as f32,
            reads: rates.read_burst as f32,
            signals: rates.signal_burst as f32,
            last: millis_now(),
        }
    }

    /// Adds what the buckets earned since the last call (one clock read).
    fn refill(&mut self, r: &Rates) {
        let now = millis_now();
        let secs = now.wrapping_sub(self.last) as f64 / 1e3;
        let fill = |have: f32, rate: u32, burst: u32| {
            (have as f64 + secs * rate as f64).min(burst as f64) as f32
        };
        self.requests = fill(self.requests, r.requests, r.request_burst);
        self.reads = fill(self.reads, r.reads, r.read_burst);
        self.signals = fill(self.signals, r.signals, r.signal_burst);
        self.last = now;
    }

    /// Takes one signal token if there is one.
    pub fn take_signal(&mut self, r: &Rates) -> bool {
        self.refill(r);
        let ok = self.signals >= 1.0;
        if ok {
            self.signals -= 1.0;
        }
        ok
    }

    /// Takes one request token if there is one.
    pub fn take_request(&mut self, r: &Rates) -> bool {
        self.refill(r);
        let ok = self.requests >= 1.0;
        if ok {
            self.requests -= 1.0;
        }
        ok
    }

    /// Whether a read may start: the read budget is not in debt.
    pub fn may_read(&mut self, r: &Rates) -> bool {
        self.refill(r);
        self.reads >= 0.0
    }

    /// A read returned `messages` stored messages.
    pub fn charge_reads(&mut self, r: &Rates, messages: usize) {
        self.refill(r);
        self.reads -= messages as f32;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signals_have_a_burst_then_the_rate_of_their_own() {
        let mut r = rates(1, 1, 1, 1);
        r.signals = 1;
        r.signal_burst = 3;
        let mut b = Buckets::full(&r);
        assert!((0..3).all(|_| b.take_signal(&r)));
        assert!(!b.take_signal(&r));
        assert!(b.take_request(&r), "requests are a bucket of their own");
    }

    use super::*;

    #[test]
    fn requests_have_a_burst_then_the_rate() {
        let r = rates(1, 3, 1, 1);
        let mut b = Buckets::full(&r);
        assert!((0..3).all(|_| b.take_request(&r)));
        assert!(!b.take_request(&r));
    }

    fn rates(requests: u32, request_burst: u32, reads: u32, read_burst: u32) -> Rates {
        Rates {
            requests,
            request_burst,
            reads,
            read_burst,
            signals: 1,
            signal_burst: 1,
        }
    }

    #[test]
    fn reads_are_charged_after_the_fact_and_wait_out_the_debt() {
        let r = rates(1, 1, 1, 10);
        let mut b = Buckets::full(&r);
        assert!(b.may_read(&r));
        b.charge_reads(&r, 25);
        assert!(!b.may_read(&r), "15 in debt");
        assert!(b.take_request(&r), "requests are a bucket of their own");
        // A read budget that refills fast: the debt is paid off.
        let fast = rates(1, 1, 1_000_000, 10);
        b.charge_reads(&fast, 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(b.may_read(&fast));
    }
}
