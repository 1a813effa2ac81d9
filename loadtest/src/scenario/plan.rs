//! The plans: which connections a run opens, what each one joins and receives, and who
//! publishes where at which rate. fanout, chat, dm and idle are nothing more than a plan for the
//! `pubsub` engine; storm and soak build theirs from the same parts.
//!
//! Owns the numbering of streams (rooms and inboxes) that the delivery check relies on. It must
//! not open connections.

use std::sync::Arc;

use super::run::RunCtx;
use crate::cli::{ChatArgs, DmArgs, FanoutArgs, IdleArgs};
use crate::client::Dest;

/// The connections of a run.
pub struct Plan {
    pub conns: Vec<ConnPlan>,
    /// Rooms or inboxes; `ConnPlan::recv_stream` and `PubPlan::stream` index them.
    pub streams: usize,
    /// The run-wide index of `conns[0]`: 0, unless a process runs a slice of the run.
    pub first_index: usize,
}

impl Plan {
    pub fn new(conns: Vec<ConnPlan>, streams: usize) -> Plan {
        Plan {
            conns,
            streams,
            first_index: 0,
        }
    }
}

pub struct ConnPlan {
    pub user: String,
    /// The room to join after `welcome`, if any.
    pub join: Option<Arc<str>>,
    /// The stream this connection receives.
    pub recv_stream: u32,
    pub publish: Option<PubPlan>,
}

pub struct PubPlan {
    pub dest: Dest,
    /// The stream its messages go to.
    pub stream: u32,
    /// Messages per second.
    pub rate: f64,
    /// Offset of its schedule, as a fraction of one period, so publishers do not all fire at
    /// the same instant.
    pub phase: f64,
    /// Deliveries each message owes (members of the stream other than this connection).
    pub recipients: u64,
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
    Plan::new(conns, 1)
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
    Plan::new(conns, rooms)
}

/// dm: users 2i and 2i+1 send to each other; stream i is user i's inbox.
pub fn dm_plan(ctx: &RunCtx, a: &DmArgs) -> Plan {
    Plan::new(dm_pairs(ctx, a.users, a.rate, 0, 0), a.users)
}

/// `users` users paired 2i and 2i+1, each sending to the other at `rate`: they are users
/// `first_user..` of the run, and their inboxes are streams `first_stream..`.
pub fn dm_pairs(
    ctx: &RunCtx,
    users: usize,
    rate: f64,
    first_user: usize,
    first_stream: usize,
) -> Vec<ConnPlan> {
    (0..users)
        .map(|i| {
            let peer = i ^ 1;
            ConnPlan {
                user: ctx.user(first_user + i),
                join: None,
                recv_stream: (first_stream + i) as u32,
                publish: Some(PubPlan {
                    dest: Dest::User(ctx.user(first_user + peer).into()),
                    stream: (first_stream + peer) as u32,
                    rate,
                    phase: i as f64 / users.max(1) as f64,
                    recipients: 1,
                }),
            }
        })
        .collect()
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
    Plan::new(conns, rooms)
}
