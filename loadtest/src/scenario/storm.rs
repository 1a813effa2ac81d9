//! The storm scenario: clients in rooms with one publisher each; after the calm window every
//! client but the publishers (and the members of the steady rooms) drops at once, stays away
//! for `--down-ms`, then all reconnect at once and join with `since` = the last seq each saw,
//! while the publishers keep going.
//!
//! The `pubsub` engine runs it with the machinery in `catchup`. This module owns the storm's
//! plan. It must not run anything itself; the report is built in `report::build`.

use std::sync::Arc;

use super::catchup::StormPlan;
use super::plan::{ConnPlan, Plan, PubPlan};
use super::run::{RunCtx, secs_to_ns};
use crate::cli::StormArgs;
use crate::client::Dest;

/// The storm's plan: rooms of `room_size`, member 0 of each publishes and stays; the first
/// `steady_rooms` rooms stay whole.
pub fn plan(ctx: &RunCtx, a: &StormArgs) -> (Plan, StormPlan) {
    let k = a.room_size.max(1);
    let rooms = a.clients.div_ceil(k);
    let names: Vec<Arc<str>> = (0..rooms).map(|r| ctx.room(&format!("storm{r}"))).collect();
    let mut drops = Vec::with_capacity(a.clients);
    let conns = (0..a.clients)
        .map(|i| {
            let r = i / k;
            let size = k.min(a.clients - r * k);
            let publishes = i % k == 0;
            drops.push(!publishes && r >= a.steady_rooms);
            ConnPlan {
                user: ctx.user(i),
                join: Some(names[r].clone()),
                recv_stream: r as u32,
                publish: publishes.then(|| PubPlan {
                    dest: Dest::Room(names[r].clone()),
                    stream: r as u32,
                    rate: a.rate,
                    phase: r as f64 / rooms as f64,
                    recipients: size as u64 - 1,
                }),
            }
        })
        .collect();
    let storm = StormPlan {
        drops,
        down_ns: a.down_ms * 1_000_000,
        after_ns: secs_to_ns(a.after),
    };
    (Plan::new(conns, rooms), storm)
}
