//! Each scenario's own options (`fanout`, `chat`, `dm`, …), flattened into its subcommand.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Subscribers (connections that only receive).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishers (they are room members too, so they also receive each other's messages).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages per second per publisher (open loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// Users (one connection each).
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Members per room; the last room takes the remainder. 1 leaves every user alone in its
    /// room: each publish is stored and acked but delivered to nobody, so the server's store
    /// path, not its socket writes, is what the run measures.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages per second per user (open loop).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// What each user is: `bot` (the bot's own connection: pipelined frames on fastwebsockets,
    /// cheap to run) or `full` (a `shardcast_client::Client`: its transport, reconnect,
    /// recovery and outbox, as an application would run it; the bot's CPU is then what an
    /// application pays per message).
    #[arg(long, value_enum, default_value_t = ClientKind::Bot)]
    pub client: ClientKind,
}

/// Who a chat user is (`chat --client`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    #[default]
    Bot,
    Full,
}

#[derive(Args, Debug, Clone)]
pub struct DmArgs {
    /// Users (one connection each), paired 0-1, 2-3, …; must be even.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Direct messages per second per user (open loop).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    /// Members per room; every connection joins one room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Connect-join-close cycles started per second (open loop).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long each connection stays open after its join is acked, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// Rooms the cycles join, round robin.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Most cycles in progress at once; a cycle past it waits (and its latency shows it).
    #[arg(long, default_value_t = 2000)]
    pub max_concurrent: usize,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Clients (one connection each), in rooms of --room-size.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// Members per room; the last room takes the remainder. Each room's first member publishes
    /// and stays connected through the storm.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages per second per publisher (open loop), before, during and after the storm.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Rooms whose members all stay connected: their deliveries give the established
    /// connections' latency during the storm.
    #[arg(long, default_value_t = 20)]
    pub steady_rooms: usize,
    /// How long the dropped clients stay away before they all reconnect, in milliseconds; what
    /// is published meanwhile comes back as replay.
    #[arg(long, default_value_t = 1000)]
    pub down_ms: u64,
    /// Seconds the publishers go on after the reconnect signal.
    #[arg(long, default_value_t = 3.0)]
    pub after: f64,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct BigroomArgs {
    /// Clients that join the room during the fill, one connection each.
    #[arg(long, default_value_t = 5000)]
    pub members: usize,
    /// Connections that join the room before the fill and publish through every phase. They
    /// are members too (each receives the others' messages), but are not counted in --members
    /// and do not churn.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second per publisher (open loop).
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Joins per second in the fill (open loop: member m's join is due m ÷ rate after the fill
    /// starts, whatever happened to the others).
    #[arg(long, default_value_t = 1000.0)]
    pub join_rate: f64,
    /// Leaves per second in the churn phase. Half of the members (every other round of the
    /// nodes, so the churners are spread over nodes and bot processes) each send `leave`, stay
    /// out --away-ms, and join again with `since` = the last seq they saw, on the same
    /// connection.
    #[arg(long, default_value_t = 1000.0)]
    pub churn_rate: f64,
    /// How long a churning member stays out of the room, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub away_ms: u64,
    /// Bot processes. Above 1, this process starts that many children (this binary, or
    /// --bot-bin), gives each a slice of the members (the first also the publishers), keeps
    /// them in step, samples the servers itself and merges what they report into one report: a
    /// way past the open-files limit of one process (about 20,000 on a default Linux).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// With --processes: the bot binary the children run (default: the running one).
    #[arg(long)]
    pub bot_bin: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct JoinsArgs {
    /// Clients, one connection each (one bot process: at most about 18,000 under a default
    /// open-files limit).
    #[arg(long, default_value_t = 15_000)]
    pub clients: usize,
    /// Members per room: client i joins room i ÷ K; the last room takes the remainder.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Joins per second (open loop: client i's join is due i ÷ rate after the phase starts,
    /// whatever happened to the others).
    #[arg(long, default_value_t = 1000.0)]
    pub join_rate: f64,
    /// How long the phase goes on after the last ack, in milliseconds, so the events the joins
    /// cause (an `occupancy` comes at most once per the server's occupancy_interval_ms, default
    /// 1000) are sent inside it.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// The server's presence_list_max for these rooms (its default: 1,000). The `joined` check
    /// owes no event for a join that made a room bigger than this.
    #[arg(long, default_value_t = 1000)]
    pub presence_list_max: u64,
}

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Chat users (one connection each), in rooms of --room-size.
    #[arg(long, default_value_t = 400)]
    pub users: usize,
    /// Members per chat room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Users sending direct messages, paired 0-1, 2-3, …; must be even.
    #[arg(long, default_value_t = 200)]
    pub dm_users: usize,
    /// Messages per second per chat and DM user (open loop).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Churn cycles per second: connect, join a chat room, read a history page, close.
    #[arg(long, default_value_t = 10.0)]
    pub churn_rate: f64,
    /// Seconds between samples of the server's RSS, descriptors and queued bytes.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    /// Most RSS growth allowed from the end of the warm-up to the end of the run, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub max_rss_growth: f64,
}
