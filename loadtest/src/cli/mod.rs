//! The command line: scenarios as subcommands, and the options shared by all of them.
//!
//! `scenarios`: each scenario's own options; `shared`: the load and common options.
//!
//! Owns option names, defaults and help text. These structs are also the library's options
//! (`crate::run` takes a [`Cli`]), so a test builds them with `Cli::try_parse_from` and gets the
//! same defaults as a person. It must not act on the options.

mod scenarios;
mod shared;

pub use scenarios::*;
pub use shared::*;

use clap::{Parser, Subcommand};

/// Load-test bot for shardcast: real WebSocket clients, exact delivery checks, latency and the
/// server's CPU and memory cost.
#[derive(Parser, Debug, Clone)]
#[command(name = "shardcast-loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// S subscribers and P publishers in one room; every publisher sends R msg/s.
    Fanout {
        #[command(flatten)]
        args: FanoutArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// N users in rooms of K members; every user publishes r msg/s to its room.
    Chat {
        #[command(flatten)]
        args: ChatArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Users in pairs, each sending direct messages to the other at r msg/s.
    Dm {
        #[command(flatten)]
        args: DmArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// N connections, each joined to a room, held for --duration; reports the server's RSS per
    /// connection and idle CPU.
    Idle {
        #[command(flatten)]
        args: IdleArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// C connect-join-close cycles per second for --duration.
    Churn {
        #[command(flatten)]
        args: ChurnArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Clients in rooms of K, one publisher per room; after --warmup and --duration every
    /// client but the publishers (and the --steady-rooms) drops at once, then all reconnect at
    /// once and join with `since`. Reports the time until all are back and caught up, server
    /// CPU per reconnect, connect→welcome, and the steady connections' latency during the storm.
    Storm {
        #[command(flatten)]
        args: StormArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// One big room: --members clients join it at --join-rate while --publishers publish; once
    /// it is full, it is measured at rest for --duration, then while half of the members leave
    /// and rejoin with `since` (at --churn-rate), then at rest again for --duration. --warmup is
    /// the pause after the fill and after the churn; --drain-timeout is how long past the last
    /// scheduled join (or rejoin) the bot waits for the acks. Reports the time to fill, server
    /// CPU per join and per delivery, latency by phase, exactness across the rejoins, and the
    /// frames that were not messages. A spawned server gets the bot's --presence-events (off by
    /// default): give --presence-events true to measure the server's own default.
    Bigroom {
        #[command(flatten)]
        args: BigroomArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The CPU cost of a join: --clients connections open (not measured), then client i joins
    /// room i ÷ --room-size at i ÷ --join-rate after the phase starts (open loop), and the bot
    /// waits for every ack. Reports server CPU per join over the phase (its start until the
    /// last ack plus --settle-ms), raw and net of the idle rate measured for --warmup before it,
    /// join latency from the due time to the ack, and the frames that were not acks, by type.
    /// Fails (exit 1) on a refused or unanswered join, and, where the server sends `joined`,
    /// unless each client got exactly one for every member that joined its room after it. One
    /// bot process: keep --clients at 18,000 or fewer. A spawned server gets the bot's
    /// --presence-events (off by default); with --url, give --presence-events as the server
    /// runs, since the `joined` check relies on it.
    Joins {
        #[command(flatten)]
        args: JoinsArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Chat rooms, direct-message pairs, and churn cycles that read history, for --duration;
    /// samples the server's RSS, open descriptors and queued bytes, and fails on RSS growth
    /// after the warm-up or any inexact delivery.
    Soak {
        #[command(flatten)]
        args: SoakArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout { .. } => "fanout",
            Scenario::Chat { .. } => "chat",
            Scenario::Dm { .. } => "dm",
            Scenario::Idle { .. } => "idle",
            Scenario::Churn { .. } => "churn",
            Scenario::Soak { .. } => "soak",
            Scenario::Storm { .. } => "storm",
            Scenario::Bigroom { .. } => "bigroom",
            Scenario::Joins { .. } => "joins",
        }
    }

    pub fn common(&self) -> &CommonArgs {
        match self {
            Scenario::Fanout { common, .. }
            | Scenario::Chat { common, .. }
            | Scenario::Dm { common, .. }
            | Scenario::Idle { common, .. }
            | Scenario::Churn { common, .. }
            | Scenario::Soak { common, .. }
            | Scenario::Storm { common, .. }
            | Scenario::Bigroom { common, .. }
            | Scenario::Joins { common, .. } => common,
        }
    }

    pub fn load(&self) -> Option<&LoadArgs> {
        match self {
            Scenario::Fanout { load, .. }
            | Scenario::Chat { load, .. }
            | Scenario::Dm { load, .. }
            | Scenario::Soak { load, .. }
            | Scenario::Storm { load, .. }
            | Scenario::Bigroom { load, .. } => Some(load),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, ValueEnum};

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn needs_a_target() {
        assert!(Cli::try_parse_from(["lt", "fanout"]).is_err());
        assert!(Cli::try_parse_from(["lt", "fanout", "--spawn-server"]).is_ok());
        assert!(
            Cli::try_parse_from(["lt", "idle", "--url", "ws://127.0.0.1:1", "--spawn-server"])
                .is_err()
        );
        let cli =
            Cli::try_parse_from(["lt", "chat", "--url", "ws://127.0.0.1:1", "--max"]).unwrap();
        assert!(cli.scenario.load().unwrap().max);
        assert_eq!(cli.scenario.common().duration, 10.0);
    }

    #[test]
    fn durability_is_optional_and_named_like_the_server() {
        let cli = Cli::try_parse_from(["lt", "fanout", "--spawn-server"]).unwrap();
        assert_eq!(cli.scenario.common().durability, None);
        for d in Durability::value_variants() {
            let cli =
                Cli::try_parse_from(["lt", "chat", "--spawn-server", "--durability", d.as_str()])
                    .unwrap();
            assert_eq!(cli.scenario.common().durability, Some(*d));
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
    }

    #[test]
    fn cluster_targets() {
        let cli = Cli::try_parse_from([
            "lt",
            "chat",
            "--url",
            "ws://127.0.0.1:1,ws://127.0.0.1:2",
            "--url",
            "ws://127.0.0.1:3",
            "--server-pid",
            "7,8,9",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ])
        .unwrap();
        let c = cli.scenario.common();
        assert_eq!(c.url.len(), 3);
        assert_eq!(c.server_pid, vec![7, 8, 9]);
        let cli = Cli::try_parse_from(["lt", "fanout", "--spawn-cluster", "3"]).unwrap();
        assert_eq!(cli.scenario.common().spawn_cluster, Some(3));
        assert_eq!(
            cli.scenario.common().redis_persistence,
            RedisPersistence::None
        );
        assert!(Cli::try_parse_from(["lt", "fanout", "--spawn-cluster", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["lt", "fanout", "--spawn-cluster", "2", "--spawn-server"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "lt",
                "fanout",
                "--spawn-cluster",
                "2",
                "--durability",
                "sync"
            ])
            .is_err(),
            "a cluster's durability is its Redis's"
        );
    }
}
