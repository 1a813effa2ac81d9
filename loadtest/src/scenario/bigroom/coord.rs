//! How the processes of one bigroom run keep in step. At four steps (all connected, filled,
//! churned, done publishing) each process says it has arrived, and goes on when told when the
//! next phase starts: alone, it tells itself; as a child, it asks its parent over stdin and
//! stdout, and the parent answers once every child has arrived. Times are nanoseconds since the
//! run's epoch, which every process shares.
//!
//! Owns the steps and when each next phase starts. It must not run a phase (that is `side`).

use serde::{Deserialize, Serialize};

use super::procs::ChildIo;
use crate::scenario::run::{RunCtx, secs_to_ns};

/// Where a process is in the run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every connection is open (and every publisher joined).
    Connected,
    /// Every member of the fill has joined (or failed to).
    Filled,
    /// Every churning member is back and caught up (or failed).
    Churned,
    /// The publishers have stopped and their acks are in.
    Published,
}

/// A process's arrival at a step: when (ns since the epoch), and a value (at `Published`: the
/// highest seq its publishers had acked).
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct Arrived {
    pub step: Step,
    pub at: u64,
    pub value: u64,
}

/// The answer: when the next phase starts, and the value of the step (the highest of all the
/// processes' values: at `Published`, the room's last seq).
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct Go {
    pub at: u64,
    pub value: u64,
}

/// The least time between the answer and the phase it starts, so that it reaches every process
/// first.
const LEAD_NS: u64 = 200_000_000;

/// When the phase after `step` starts, decided at `now`: the fill after a short lead, the
/// phase after the fill or the churn once `--warmup` has let the server settle, and the drain
/// at once.
pub fn go_at(step: Step, now: u64, warmup_secs: f64) -> u64 {
    match step {
        Step::Connected => now + LEAD_NS,
        Step::Filled | Step::Churned => now + secs_to_ns(warmup_secs).max(LEAD_NS),
        Step::Published => now,
    }
}

/// How this process reaches the others.
pub enum Coord {
    /// The only process of the run.
    Alone,
    /// A child of a `--processes` run.
    Child(ChildIo),
}

impl Coord {
    /// Says this process has arrived at `step` and waits for the go.
    pub async fn arrive(
        &mut self,
        ctx: &RunCtx,
        step: Step,
        at: u64,
        value: u64,
    ) -> anyhow::Result<Go> {
        match self {
            Coord::Alone => Ok(Go {
                at: go_at(step, ctx.shared.now_ns(), ctx.common.warmup),
                value,
            }),
            Coord::Child(io) => io.arrive(Arrived { step, at, value }).await,
        }
    }
}
