//! `--kill-server`: a thread that kills the spawned server with SIGKILL and starts it again at
//! once (same port, data dir and arguments), N times during the run, while the clients
//! reconnect and resend (`--resend`).
//!
//! Owns the kill schedule and the restarted process. It must not touch connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::process::Process;
use crate::stats::Shared;

/// The killer thread; [`Killer::finish`] stops it and hands the server back.
pub struct Killer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Process, Vec<String>, anyhow::Result<()>)>,
}

impl Killer {
    /// Kills `server` (at `addr`) `kills` times: kill k is `interval` × k after the measured
    /// window starts (as `shared` says, once the run has set it).
    pub fn start(
        mut server: Process,
        addr: SocketAddr,
        shared: Arc<Shared>,
        kills: u32,
        interval: Duration,
    ) -> Killer {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut notes = Vec::new();
            let r = run(
                &mut server,
                addr,
                &shared,
                kills,
                interval,
                &stopped,
                &mut notes,
            );
            (server, notes, r)
        });
        Killer { stop, handle }
    }

    /// Stops the schedule (kills not yet done are skipped) and returns the server, a line per
    /// kill, and the first failure to restart it.
    pub fn finish(self) -> (Process, Vec<String>, anyhow::Result<()>) {
        self.stop.store(true, Relaxed);
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => panic!("the server killer thread panicked"),
        }
    }
}

fn run(
    server: &mut Process,
    addr: SocketAddr,
    shared: &Shared,
    kills: u32,
    interval: Duration,
    stop: &AtomicBool,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let nap = Duration::from_millis(10);
    let window_start = loop {
        if stop.load(Relaxed) {
            return Ok(());
        }
        let w = shared.window_start_ns.load(Relaxed);
        if w != u64::MAX {
            break w;
        }
        std::thread::sleep(nap);
    };
    for k in 1..=kills {
        let at = window_start + interval.as_nanos() as u64 * u64::from(k);
        while shared.now_ns() < at {
            if stop.load(Relaxed) {
                return Ok(());
            }
            std::thread::sleep(nap);
        }
        let killed = Instant::now();
        server.kill_and_restart(|| super::http_status(addr, "/readyz").is_ok_and(|s| s == 200))?;
        notes.push(format!(
            "kill {k}: the server was killed with SIGKILL {:.1} s into the window and answered \
             /readyz again {:.0} ms later (pid {})",
            (at - window_start) as f64 / 1e9,
            killed.elapsed().as_secs_f64() * 1e3,
            server.pid()
        ));
    }
    Ok(())
}
