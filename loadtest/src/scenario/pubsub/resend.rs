//! `--resend`: a connection that drops (the server was killed, say) connects again, retrying
//! while the server restarts, rejoins its room with `since` = the last seq it saw, takes the new
//! socket's write half into the writer its publisher holds, and sends again, with the same id
//! and key, every publish not yet acked. The server answers a key it had stored with the first
//! seq and `dup: true`, so the exact check proves once-only delivery: each acked message once to
//! every member, none lost, none twice.
//!
//! Owns reconnecting and resending. It must not read the stream's messages (that is `conn`'s
//! read loop, which goes on with the new socket).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::anyhow;
use shardcast_client::Backoff;

use super::conn::{Common, ConnEnv};
use super::publish::PubShared;
use crate::client::{self, BodyStamp, Dest, RequestBuf, SharedWriter, Ws};
use crate::stats::ConnOutcome;

/// How long a connection keeps trying to come back (a restart takes well under a second; a
/// fresh fjall store with many streams takes longer).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one attempt may take to get its `welcome` and join ack.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The delays between reconnect attempts while the server restarts.
const RETRY: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_millis(400),
    factor: 2.0,
    jitter: 0.5,
};

/// What a publisher's connection needs to send its messages again.
pub(super) struct Resend {
    pub(super) dest: Dest,
    pub(super) body_size: usize,
    /// Messages the publisher has begun to write. Counted before the write, so a reconnect that
    /// reads it after taking over the writer covers every message that may have gone to the old
    /// socket (one that goes to the new socket as well is answered as a dup).
    pub(super) written: AtomicU64,
}

/// Connects again after a drop and resends what was not acked. Returns the new socket, whose
/// write half is now behind `writer`.
pub(super) async fn recover(
    common: &Common,
    env: &ConnEnv,
    out: &mut ConnOutcome,
    writer: &SharedWriter,
) -> anyhow::Result<Ws> {
    let shared = &common.shared;
    let _coming_back = Counted::new(&shared.reconnecting);
    let since = out.recv.last_seq.max(out.start_seq.unwrap_or(0));
    let src = client::source_ip(env.index as usize, common.source_ips);
    let endpoint = &common.endpoints[env.index as usize % common.endpoints.len()];
    let give_up = tokio::time::Instant::now() + RECONNECT_TIMEOUT;
    let mut attempt = 0u32;
    let mut ws = loop {
        attempt += 1;
        let tried = async {
            let _permit = common.connect_gate.acquire().await?;
            let mut ws = Ws::connect(endpoint, src, &env.user).await?;
            tokio::time::timeout(STEP_TIMEOUT, rejoin(&mut ws, env, since, out.index, shared))
                .await
                .map_err(|_| anyhow!("no welcome or join ack within {STEP_TIMEOUT:?}"))??;
            anyhow::Ok(ws)
        };
        match tried.await {
            Ok(ws) => break ws,
            Err(e) if tokio::time::Instant::now() >= give_up => {
                return Err(e.context(format!("reconnect: {attempt} attempts")));
            }
            // The server is restarting: try again soon, spread out (the client crate's
            // jittered backoff, from 50 ms up to 400 ms).
            Err(_) => tokio::time::sleep(RETRY.delay(attempt - 1)).await,
        }
    };
    out.reconnects += 1;

    // The publisher writes through `writer`: give it the new socket.
    let fresh = std::mem::replace(&mut ws.write, writer.clone());
    let fresh = Arc::try_unwrap(fresh)
        .map_err(|_| anyhow!("a fresh socket's writer is shared"))?
        .into_inner();
    *writer.lock().await = fresh;

    if let (Some(p), Some(r)) = (env.publisher.as_deref(), resend_of(env)) {
        // A write that fails means the socket dropped again: the read loop sees it next, and
        // the next reconnect resends what is still unacked.
        let (n, _) = resend(p, r, env.index, &out.acks, writer).await;
        out.resent += n;
    }
    Ok(ws)
}

fn resend_of(env: &ConnEnv) -> Option<&Resend> {
    env.publisher.as_deref()?.resend.as_ref()
}

/// `welcome`, then the room again with `since` (a connection without a room: only `welcome`).
async fn rejoin(
    ws: &mut Ws,
    env: &ConnEnv,
    since: u64,
    index: u32,
    shared: &crate::stats::Shared,
) -> anyhow::Result<()> {
    client::expect_frame(ws, |f| (f.kind == "welcome").then_some(())).await?;
    let Some(room) = env.join.as_deref() else {
        return Ok(());
    };
    let mut rb = RequestBuf::default();
    client::send(&ws.write, rb.join_since(room, Some(since), 0)).await?;
    let recovered = client::expect_frame(ws, |f| {
        (f.kind == "ack" && f.id == Some(0)).then_some((f.recovered, f.truncated))
    })
    .await?;
    if recovered.0 != Some(true) || recovered.1 == Some(true) {
        shared.problem(format!(
            "connection {index}: rejoin since {since} not fully recovered \
             (recovered {:?}, truncated {:?})",
            recovered.0, recovered.1
        ));
    }
    Ok(())
}

/// Writes again every message the publisher began and got no ack for, oldest first, with its
/// first id, key and body. Returns how many, and whether all were written.
async fn resend(
    p: &PubShared,
    r: &Resend,
    index: u32,
    acks: &[u64],
    writer: &SharedWriter,
) -> (u64, anyhow::Result<()>) {
    let written = r.written.load(Relaxed);
    let mut rb = RequestBuf::default();
    let mut n = 0;
    for counter in 0..written {
        if acks.get(counter as usize).is_some_and(|&seq| seq != 0) {
            continue;
        }
        let stamp = BodyStamp {
            sched_ns: p.stamp_of(counter),
            publisher: index,
            counter,
        };
        let frame = rb.message(&r.dest, counter + 1, stamp, r.body_size, true);
        if let Err(e) = client::send(writer, frame).await {
            return (n, Err(anyhow!("resend message {counter}: {e}")));
        }
        n += 1;
    }
    (n, Ok(()))
}

/// Counts one in `n` while it lives (the drain waits while connections are coming back).
struct Counted<'a>(&'a AtomicU64);

impl Counted<'_> {
    fn new(n: &AtomicU64) -> Counted<'_> {
        n.fetch_add(1, Relaxed);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
