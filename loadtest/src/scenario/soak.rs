//! The soak scenario: chat rooms and direct-message pairs (the `pubsub` engine, checked
//! exactly), plus churn cycles that connect, join a chat room, read its history and close, for
//! as long as `--duration`; meanwhile the server's RSS, open descriptors and unsent queue bytes
//! are sampled every `--sample-secs`.
//!
//! Owns the side load and the sampler; delivery checking is the engine's, the verdict on RSS
//! growth is `report::build`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{anyhow, bail};
use fastwebsockets::OpCode;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};

use super::plan::{Plan, chat_plan, dm_pairs};
use super::pubsub::{self, PubsubResult};
use super::run::{RunCtx, wait_for};
use crate::cli::{ChatArgs, LoadArgs, SoakArgs};
use crate::client::{self, Endpoint, RequestBuf, Ws};
use crate::procfs;

/// One reading of the server's resources.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SoakSample {
    /// Seconds since the run started.
    pub at_secs: f64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    /// `shardcast_outbound_queue_bytes` summed over shards, from `/metrics`.
    pub queue_bytes: Option<u64>,
}

pub struct SoakResult {
    pub pubsub: PubsubResult,
    pub samples: Vec<SoakSample>,
    /// When the warm-up ended, in the samples' seconds.
    pub warmup_end_secs: f64,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
}

/// Chat users in rooms, then DM pairs; streams are the rooms, then one inbox per DM user.
pub fn plan(ctx: &RunCtx, a: &SoakArgs) -> Plan {
    let chat = chat_plan(
        ctx,
        &ChatArgs {
            users: a.users,
            room_size: a.room_size,
            rate: a.rate,
            client: crate::cli::ClientKind::Bot,
        },
    );
    let (first, rooms) = (chat.conns.len(), chat.streams);
    let mut conns = chat.conns;
    conns.extend(dm_pairs(ctx, a.dm_users, a.rate, first, rooms));
    Plan::new(conns, rooms + a.dm_users)
}

pub async fn run(ctx: &RunCtx, a: &SoakArgs, load: &LoadArgs) -> anyhow::Result<SoakResult> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // `lib` refuses a soak against several nodes.
    let sampler = tokio::spawn(sample_loop(
        ctx.server_pids.first().copied().flatten(),
        ctx.endpoint(0).clone(),
        Duration::from_secs_f64(a.sample_secs.max(0.5)),
        ctx.shared.epoch,
        stop_rx.clone(),
    ));
    let rooms: Vec<Arc<str>> = (0..a.users.div_ceil(a.room_size.max(1)))
        .map(|r| ctx.room(&format!("chat{r}")))
        .collect();
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let churner = tokio::spawn(churn_loop(
        ChurnEnv {
            endpoint: ctx.endpoint(0).clone(),
            tag: ctx.tag.clone(),
            source_ips: ctx.common.source_ips,
            rooms,
            shared: ctx.shared.clone(),
            counts: counts.clone(),
        },
        a.churn_rate,
        stop_rx,
    ));
    let result = pubsub::run(ctx, plan(ctx, a), Some(load), None).await;
    let _ = stop_tx.send(true);
    let _ = churner.await;
    let samples = sampler.await.unwrap_or_default();
    let pubsub = result?;
    let warmup_end_secs = pubsub
        .window_start
        .at
        .saturating_duration_since(ctx.shared.epoch)
        .as_secs_f64();
    Ok(SoakResult {
        pubsub,
        samples,
        warmup_end_secs,
        cycles_ok: counts.0.load(Relaxed),
        cycles_failed: counts.1.load(Relaxed),
    })
}

async fn sample_loop(
    pid: Option<u32>,
    endpoint: Endpoint,
    every: Duration,
    epoch: std::time::Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<SoakSample> {
    let mut samples = Vec::new();
    let Some(pid) = pid else {
        return samples;
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return samples,
        }
        let Ok(proc) = procfs::sample(pid) else {
            return samples;
        };
        let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        samples.push(SoakSample {
            at_secs: proc.at.saturating_duration_since(epoch).as_secs_f64(),
            rss_bytes: proc.rss_bytes,
            open_fds,
            queue_bytes: queue_bytes(&endpoint).await.ok(),
        });
    }
}

/// The server's unsent bytes over every connection, from `GET /metrics`.
async fn queue_bytes(endpoint: &Endpoint) -> anyhow::Result<u64> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(endpoint.addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bot\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), get).await??;
    let mut total = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("shardcast_outbound_queue_bytes") {
            let value = rest.rsplit(' ').next().unwrap_or("");
            *total.get_or_insert(0) += value.parse::<f64>()? as u64;
        }
    }
    total.ok_or_else(|| anyhow!("no shardcast_outbound_queue_bytes in /metrics"))
}

struct ChurnEnv {
    endpoint: Endpoint,
    tag: String,
    source_ips: u8,
    rooms: Vec<Arc<str>>,
    shared: Arc<crate::stats::Shared>,
    /// Cycles completed, failed.
    counts: Arc<(AtomicU64, AtomicU64)>,
}

/// Starts `rate` cycles a second (at most 64 at once) until `stop`.
async fn churn_loop(env: ChurnEnv, rate: f64, mut stop: watch::Receiver<bool>) {
    if rate <= 0.0 {
        return;
    }
    let env = Arc::new(env);
    let gate = Arc::new(Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0usize.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            continue;
        };
        let env = env.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let r = tokio::time::timeout(Duration::from_secs(30), cycle(&env, i)).await;
            match r.map_err(|_| anyhow!("took over 30 s")).and_then(|r| r) {
                Ok(()) => env.counts.0.fetch_add(1, Relaxed),
                Err(e) => {
                    env.shared.problem(format!("soak churn cycle {i}: {e:#}"));
                    env.counts.1.fetch_add(1, Relaxed)
                }
            };
        });
    }
    // Let the cycles in progress end.
    let _ = gate.acquire_many(64).await;
}

/// Connect, join a chat room, read a page of its history (newest first, no duplicate), close.
async fn cycle(env: &ChurnEnv, i: usize) -> anyhow::Result<()> {
    let user = format!("{}-churn{i}", env.tag);
    let room = &env.rooms[i % env.rooms.len()];
    let mut ws = Ws::connect(&env.endpoint, client::source_ip(i, env.source_ips), &user).await?;
    wait_for(&mut ws, |f| f.kind == "welcome").await?;
    let mut rb = RequestBuf::default();
    client::send(&ws.write, rb.join(room, 1)).await?;
    wait_for(&mut ws, |f| f.kind == "ack" && f.id == Some(1)).await?;
    let mut req = format!(r#"{{"type":"history","room":"{room}","limit":50,"id":2}}"#).into_bytes();
    client::send_text(&ws.write, &mut req).await?;
    loop {
        let frame = ws.recv().await.map_err(|e| anyhow!("read: {e}"))?;
        if frame.opcode != OpCode::Text {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&frame.payload)?;
        if v["type"] == "error" {
            bail!("history refused: {v}");
        }
        if v["type"] != "history" || v["id"] != 2 {
            continue;
        }
        let seqs: Vec<u64> = v["messages"]
            .as_array()
            .ok_or_else(|| anyhow!("history without messages: {v}"))?
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        if !seqs.windows(2).all(|w| w[0] > w[1]) {
            bail!("history page not strictly newest first: {seqs:?}");
        }
        break;
    }
    client::send_close(&ws.write).await?;
    Ok(())
}
