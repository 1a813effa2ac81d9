//! The `shardcast` binary: command line, logging, signals. Everything else is in the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use shardcast::config::Config;
use shardcast::server::Server;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shardcast",
    version,
    about = "A sharded real-time messaging server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// A TOML file with configuration keys (the flag names with underscores). Flags and
        /// SHARDCAST_* variables override it.
        #[arg(long, env = "SHARDCAST_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Config,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        Command::Serve { config, settings } => {
            let (_, sub) = matches.subcommand().expect("serve is the only subcommand");
            let config = Config::load(config.as_deref(), &settings, sub)?;
            serve(config)
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::start(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    rt.block_on(wait_for_signal())?;
    tracing::info!("shutting down");
    server.shutdown();
    server.join();
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
