//! `shardcast-roundtrip-floor [--caller-cpu C] [--peer-cpu P] [--rate R] [--calls N]
//! [--rounds K]`: what one request and its answer over loopback TCP cost the thread that makes
//! them, paced at R calls/s (default 2,000) so that both ends go idle between calls, as a
//! server calling a hook backend does. The peer (a thread pinned to P, default 1) answers 60
//! bytes to each 300-byte request on one kept-alive connection; the caller is pinned to C
//! (default 0). Each round runs N calls (default 20,000), then the same paced loop without
//! calls, and prints the difference of the caller's CPU time per call: the floor under any
//! design that makes one synchronous call per message on this machine. Nothing else is in the
//! way: no HTTP, no JSON, no runtime, blocking reads and writes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use shardcast_loadtest::sys::{pin_current_thread, thread_cpu_ns};

const REQUEST: [u8; 300] = [b'r'; 300];
const ANSWER: [u8; 60] = [b'a'; 60];

fn main() -> std::io::Result<()> {
    let (mut caller_cpu, mut peer_cpu, mut rate, mut calls, mut rounds) =
        (0, 1, 2_000u64, 20_000, 3);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage());
        match arg.as_str() {
            "--caller-cpu" => caller_cpu = value as usize,
            "--peer-cpu" => peer_cpu = value as usize,
            "--rate" if value > 0 => rate = value,
            "--calls" if value > 0 => calls = value,
            "--rounds" if value > 0 => rounds = value,
            _ => usage(),
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || -> std::io::Result<()> {
        pin_current_thread(&[peer_cpu])?;
        let (mut peer, _) = listener.accept()?;
        peer.set_nodelay(true)?;
        let mut buf = [0u8; 4096];
        let mut pending = 0;
        loop {
            let n = peer.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            pending += n;
            while pending >= REQUEST.len() {
                pending -= REQUEST.len();
                peer.write_all(&ANSWER)?;
            }
        }
    });
    pin_current_thread(&[caller_cpu])?;
    let mut conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let mut floors = Vec::new();
    for round in 1..=rounds {
        let with_calls = paced(calls, gap, || call(&mut conn))?;
        let alone = paced(calls, gap, || Ok(()))?;
        let floor = (with_calls - alone) / calls as f64;
        println!(
            "round {round}: {floor:.2} us of caller CPU per call (paced loop alone {:.2} us per tick)",
            alone / calls as f64
        );
        floors.push(floor);
    }
    floors.sort_by(f64::total_cmp);
    println!(
        "median: {:.2} us per call, caller on CPU {caller_cpu}, peer on CPU {peer_cpu}, {rate} calls/s",
        floors[floors.len() / 2]
    );
    Ok(())
}

/// Runs `step` `n` times, `gap` apart; returns the calling thread's CPU time in µs.
fn paced(
    n: u64,
    gap: Duration,
    mut step: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<f64> {
    let start = thread_cpu_ns();
    let mut next = Instant::now();
    for _ in 0..n {
        next += gap;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        step()?;
    }
    Ok((thread_cpu_ns() - start) as f64 / 1_000.0)
}

fn call(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(&REQUEST)?;
    let mut buf = [0u8; 128];
    let mut got = 0;
    while got < ANSWER.len() {
        match conn.read(&mut buf)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!(
        "usage: shardcast-roundtrip-floor [--caller-cpu C] [--peer-cpu P] [--rate R] [--calls N] [--rounds K]"
    );
    std::process::exit(2)
}
