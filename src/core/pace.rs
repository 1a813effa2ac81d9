//! `Pacer`: at most one of something (a group commit, a flush pass) per interval, and none
//! delayed after a quiet spell. Plain arithmetic on instants given by the caller, so it is
//! tested without a clock.

use std::time::{Duration, Instant};

/// Spaces events at least `every` apart. The first event after a quiet spell (none within
/// `every`) is not delayed, so latency at low load does not move; under load an event waits at
/// most `every`, and what piles up meanwhile is handled together.
#[derive(Clone, Debug)]
pub struct Pacer {
    every: Duration,
    /// When the last event started.
    last: Option<Instant>,
}

impl Pacer {
    pub fn new(every: Duration) -> Pacer {
        Pacer { every, last: None }
    }

    /// How long an event that could start at `now` should wait; `None`: start now.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        let next = self.last? + self.every;
        (next > now).then(|| next - now)
    }

    /// An event started at `at`.
    pub fn started(&mut self, at: Instant) {
        self.last = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_event_right_after_another_waits() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut p = Pacer::new(ms(2));
        assert_eq!(p.wait(t0), None, "the first event starts at once");
        p.started(t0);
        assert_eq!(p.wait(t0), Some(ms(2)), "one right after waits");
        assert_eq!(p.wait(t0 + ms(1)), Some(ms(1)), "for what is left");
        assert_eq!(p.wait(t0 + ms(2)), None, "after the interval: at once");
        assert_eq!(p.wait(t0 + ms(500)), None, "after a quiet spell: at once");
        assert_eq!(Pacer::new(Duration::ZERO).wait(t0), None, "0 never waits");
    }
}
