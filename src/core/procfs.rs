//! Sampling a process's cost from `/proc`: CPU seconds (utime + stime of all its threads) and
//! resident memory.
//!
//! Owns the parsing of `/proc/PID/stat` and `/proc/PID/status`, for the server's own metrics
//! (`/metrics`, `/api/stats`) and for the load-test bot, which samples the server's process. It
//! must not change anything; turning samples into per-delivery figures is the caller's job.

use std::io;
use std::time::Instant;

/// One reading of a process's cost.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// When it was taken.
    pub at: Instant,
    /// User + system CPU time of every thread so far, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

impl ProcSample {
    /// CPU seconds spent between `self` and a later sample.
    pub fn cpu_since(&self, earlier: &ProcSample) -> f64 {
        (self.cpu_seconds - earlier.cpu_seconds).max(0.0)
    }

    /// Wall seconds between `self` and a later sample.
    pub fn wall_since(&self, earlier: &ProcSample) -> f64 {
        self.at.saturating_duration_since(earlier.at).as_secs_f64()
    }
}

/// Several processes as one: CPU seconds and RSS added up, timed at the first sample. `None`
/// for no samples.
pub fn sum(samples: &[ProcSample]) -> Option<ProcSample> {
    let first = samples.first()?;
    Some(ProcSample {
        at: first.at,
        cpu_seconds: samples.iter().map(|s| s.cpu_seconds).sum(),
        rss_bytes: samples.iter().map(|s| s.rss_bytes).sum(),
    })
}

/// Clock ticks per second for `/proc/PID/stat` times (normally 100).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `pid`'s CPU time and RSS now. `pid` 0 means this process.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let dir = if pid == 0 {
        "/proc/self".to_string()
    } else {
        format!("/proc/{pid}")
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let at = Instant::now();
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| bad(&dir, "stat"))?;
    let rss_kib = parse_status_rss_kib(&status).ok_or_else(|| bad(&dir, "status"))?;
    Ok(ProcSample {
        at,
        cpu_seconds: ticks as f64 / clock_ticks_per_second(),
        rss_bytes: rss_kib * 1024,
    })
}

fn bad(dir: &str, file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot parse {dir}/{file}"),
    )
}

/// utime + stime in clock ticks. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`: state is field 3, utime 14, stime 15.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_name() {
        let stat = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 \
                    12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn parses_status_rss() {
        let status = "Name:\tshardcast\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(status), Some(4321));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(0).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_seconds >= 0.0);
    }
}
