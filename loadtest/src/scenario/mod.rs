//! The scenarios: what connections a run opens, who publishes what at which rate, and the
//! phases of a run (connect, warm-up, measured window, drain).
//!
//! `pubsub` is the engine for every scenario whose connections stay open (fanout, chat, dm,
//! idle): the scenarios differ only in the [`pubsub::Plan`] they build here. `churn` has its own
//! loop; `soak` runs the engine with churn cycles and a resource sampler beside it; `storm` runs
//! it with every client but the publishers dropped and rejoined (with `since`) in the middle.
//! Against a cluster, connection i goes to node i mod N, so a room's members sit on every node.
//! This module owns the plans and the context a run shares; it must not parse frames (`client`) or
//! judge delivery (`stats`).

pub mod churn;
pub mod pacer;
pub mod pubsub;
pub mod soak;
pub mod storm;

use std::sync::Arc;
use std::time::Duration;

use crate::cli::{ChatArgs, CommonArgs, DmArgs, FanoutArgs, IdleArgs};
use crate::client::{Dest, Endpoint};
use crate::procfs::{self, ProcSample};
use crate::progress::Progress;
use crate::redis_info::{RedisProbe, RedisSample};
use crate::stats::Shared;
use pubsub::{ConnPlan, Plan, PubPlan};

/// What every phase of a run needs.
pub struct RunCtx {
    pub shared: Arc<Shared>,
    /// The nodes; connection (or cycle) i goes to node i mod their number.
    pub endpoints: Vec<Endpoint>,
    pub common: CommonArgs,
    /// Prefix of every user and room name of this run, so runs against a long-lived server do
    /// not meet each other's rooms or inboxes.
    pub tag: String,
    pub progress: Arc<Progress>,
    /// The nodes' pids where known, by node.
    pub server_pids: Vec<Option<u32>>,
    pub redis: Option<RedisProbe>,
}

/// The nodes', Redis's and the bot's cost at one moment.
#[derive(Clone, Debug)]
pub struct Samples {
    pub at: std::time::Instant,
    /// By node; `None` where the pid is not known.
    pub servers: Vec<Option<ProcSample>>,
    pub bot: Option<ProcSample>,
    pub redis: Option<RedisSample>,
}

impl Samples {
    /// All nodes together, when every node's pid is known.
    pub fn server_total(&self) -> Option<ProcSample> {
        let all: Option<Vec<ProcSample>> = self.servers.iter().copied().collect();
        procfs::sum(&all?)
    }
}

impl RunCtx {
    pub fn sample(&self) -> Samples {
        Samples {
            at: std::time::Instant::now(),
            servers: self
                .server_pids
                .iter()
                .map(|pid| pid.and_then(|pid| procfs::sample(pid).ok()))
                .collect(),
            bot: procfs::sample(0).ok(),
            redis: self.redis.as_ref().and_then(|r| r.sample().ok()),
        }
    }

    /// The node connection (or cycle) `i` talks to.
    pub fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i % self.endpoints.len()]
    }

    /// A tokio instant `ns` after the run's epoch.
    pub fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.shared.epoch + Duration::from_nanos(ns))
    }

    pub fn user(&self, i: usize) -> String {
        format!("{}-u{i}", self.tag)
    }

    pub fn room(&self, name: &str) -> Arc<str> {
        format!("{}-{name}", self.tag).into()
    }
}

pub fn secs_to_ns(s: f64) -> u64 {
    (s.max(0.0) * 1e9) as u64
}

/// fanout: publishers 0..P, then subscribers; one room; everybody receives it.
pub fn fanout_plan(ctx: &RunCtx, a: &FanoutArgs) -> Plan {
    let room = ctx.room("fanout");
    let members = a.subscribers + a.publishers;
    let conns = (0..members)
        .map(|i| ConnPlan {
            user: ctx.user(i),
            join: Some(room.clone()),
            recv_stream: 0,
            publish: (i < a.publishers).then(|| PubPlan {
                dest: Dest::Room(room.clone()),
                stream: 0,
                rate: a.rate,
                phase: i as f64 / a.publishers as f64,
                recipients: members as u64 - 1,
            }),
        })
        .collect();
    Plan { conns, streams: 1 }
}

/// chat: users in consecutive rooms of `room_size`; everyone publishes to their own room.
pub fn chat_plan(ctx: &RunCtx, a: &ChatArgs) -> Plan {
    let k = a.room_size.max(1);
    let rooms = a.users.div_ceil(k);
    let names: Vec<Arc<str>> = (0..rooms).map(|r| ctx.room(&format!("chat{r}"))).collect();
    let conns = (0..a.users)
        .map(|i| {
            let r = i / k;
            let size = k.min(a.users - r * k);
            ConnPlan {
                user: ctx.user(i),
                join: Some(names[r].clone()),
                recv_stream: r as u32,
                publish: Some(PubPlan {
                    dest: Dest::Room(names[r].clone()),
                    stream: r as u32,
                    rate: a.rate,
                    phase: i as f64 / a.users as f64,
                    recipients: size as u64 - 1,
                }),
            }
        })
        .collect();
    Plan {
        conns,
        streams: rooms,
    }
}

/// dm: users 2i and 2i+1 send to each other; stream i is user i's inbox.
pub fn dm_plan(ctx: &RunCtx, a: &DmArgs) -> Plan {
    let conns = (0..a.users)
        .map(|i| {
            let peer = i ^ 1;
            ConnPlan {
                user: ctx.user(i),
                join: None,
                recv_stream: i as u32,
                publish: Some(PubPlan {
                    dest: Dest::User(ctx.user(peer).into()),
                    stream: peer as u32,
                    rate: a.rate,
                    phase: i as f64 / a.users as f64,
                    recipients: 1,
                }),
            }
        })
        .collect();
    Plan {
        conns,
        streams: a.users,
    }
}

/// idle: connections in rooms of `room_size`, nobody publishes.
pub fn idle_plan(ctx: &RunCtx, a: &IdleArgs) -> Plan {
    let k = a.room_size.max(1);
    let rooms = a.connections.div_ceil(k);
    let names: Vec<Arc<str>> = (0..rooms).map(|r| ctx.room(&format!("idle{r}"))).collect();
    let conns = (0..a.connections)
        .map(|i| ConnPlan {
            user: ctx.user(i),
            join: Some(names[i / k].clone()),
            recv_stream: (i / k) as u32,
            publish: None,
        })
        .collect();
    Plan {
        conns,
        streams: rooms,
    }
}
