//! The `shardcast` binary: command line, logging, signals. Everything else is in the library.
//!
//! `serve` runs the server; `token` and `config` are operator tools that read the same
//! configuration layers (defaults ← `--config` TOML ← `SHARDCAST_*` ← flags) and print.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use shardcast::auth::{Identity, mint};
use shardcast::cli::{Ttl, default_toml, effective_toml, parse_grant, parse_name, parse_ttl};
use shardcast::config::{Config, LogFormat};
use shardcast::core::Name;
use shardcast::core::rights::{Grant, Grants, Pattern, Rights};
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
    Serve(Settings),
    /// Print an HS256 token for a client, signed with the server's jwt_secret.
    ///
    /// Only the token is printed, so that `TOKEN=$(shardcast token --user alice)` works. The
    /// secret comes from --jwt-secret, SHARDCAST_JWT_SECRET or the jwt_secret of --config FILE,
    /// in that order.
    Token(TokenArgs),
    /// Print the effective configuration as TOML, with jwt_secret, api_key and metrics_key shown
    /// as "***".
    ///
    /// It layers the same sources as `serve` (defaults, --config FILE, SHARDCAST_* variables,
    /// flags) and refuses what `serve` would refuse. With --default it prints instead a
    /// commented file of every key at its default, a starting point for --config.
    Config(ConfigArgs),
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Print every key at its default, each after its help text as comments, instead of the
    /// effective configuration. Keys without a default (the secrets among them) are commented
    /// out.
    /// The other flags and SHARDCAST_* variables do not change this output.
    #[arg(long)]
    default: bool,
    #[command(flatten)]
    settings: Settings,
}

/// The configuration sources `serve` layers.
#[derive(clap::Args)]
struct Settings {
    /// A TOML file with configuration keys (the flag names with underscores). Flags and
    /// SHARDCAST_* variables override it.
    #[arg(long, env = "SHARDCAST_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    values: Config,
}

impl Settings {
    /// The layered and validated configuration; `matches` are the subcommand's.
    fn load(&self, matches: &ArgMatches) -> anyhow::Result<Config> {
        Ok(Config::load(self.config.as_deref(), &self.values, matches)?)
    }
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user id the token authenticates (its `sub` claim): 1-128 bytes of A-Z a-z 0-9 _ . :
    /// @ -.
    #[arg(long, value_parser = parse_name)]
    user: Name,
    /// Comma-separated rooms (the `rooms` claim): the user joins them at connect with every
    /// right. With --rooms or --grant the user may use no other rooms. Default: no claim, so
    /// any room.
    #[arg(long, value_delimiter = ',', value_parser = parse_name)]
    rooms: Option<Vec<Name>>,
    /// A grant in the `rooms` claim, repeatable: PATTERN=RIGHTS, where PATTERN is a room or a
    /// name's start followed by `*`, and RIGHTS are among join, publish, presence and history,
    /// e.g. --grant 'live:*=join,presence'. Not joined at connect.
    #[arg(long, value_parser = parse_grant)]
    grant: Vec<Grant>,
    /// How long the token is valid (its `exp` claim is now plus this): a number with s, m, h or
    /// d, e.g. 30s, 15m, 24h, 7d. Every token expires: servers refuse tokens without `exp`
    /// (require_exp), so there is no "never"; a long lifetime is e.g. 3650d.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    ttl: Ttl,
    /// The HS256 secret to sign with: the server's jwt_secret. Overrides the file's.
    #[arg(long, env = "SHARDCAST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A TOML config file (the server's) to read jwt_secret from when it is not given otherwise.
    /// Its other keys are checked for typos but not used.
    #[arg(long, env = "SHARDCAST_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    let (_, sub) = matches.subcommand().expect("a subcommand is required");
    match cli.command {
        Command::Serve(settings) => {
            let config = settings.load(sub)?;
            init_logging(config.log_format);
            serve(config)
        }
        Command::Token(args) => {
            println!("{}", token(args)?);
            Ok(())
        }
        Command::Config(args) if args.default => {
            print!("{}", default_toml());
            Ok(())
        }
        Command::Config(args) => {
            print!("{}", effective_toml(&args.settings.load(sub)?));
            Ok(())
        }
    }
}

/// Installs the log subscriber. It comes after the configuration is loaded, so errors before
/// it are printed plainly by `main`'s error return.
fn init_logging(format: LogFormat) {
    // Without RUST_LOG: the server's own lines at info, other crates' (the store's start-up
    // chatter) at warn.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,shardcast=info"));
    // Logs go to stderr, leaving stdout to what a subcommand prints.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<String> {
    let secret = match args.jwt_secret {
        Some(secret) => Some(secret),
        None => {
            let file = Config::layer(
                args.config.as_deref(),
                &Config::default(),
                &ArgMatches::default(),
            )?;
            file.jwt_secret
        }
    };
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        bail!(
            "no jwt_secret is configured, so there is nothing to sign the token with: pass the \
             server's secret with --jwt-secret, SHARDCAST_JWT_SECRET, or --config FILE"
        );
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let exp = Some((now + args.ttl.0).as_secs());
    let rooms = (args.rooms.is_some() || !args.grant.is_empty()).then(|| {
        let plain = args
            .rooms
            .unwrap_or_default()
            .into_iter()
            .map(|room| Grant {
                pattern: Pattern::Room(room),
                rights: Rights::ALL,
                join_at_connect: true,
            });
        Grants::new(plain.chain(args.grant).collect())
    });
    let identity = Identity {
        user: args.user,
        rooms,
        exp,
        info: None,
    };
    Ok(mint(&secret, &identity))
}

fn serve(config: Config) -> anyhow::Result<()> {
    if !config.transparent_huge_pages {
        no_huge_pages();
    }
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

/// Turns transparent huge pages off for this process before the server allocates its
/// connections (the kernel checks the flag when a page is first touched). Best effort: on
/// failure the server runs as before, with more memory per connection.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of ours.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, "cannot turn transparent huge pages off");
        }
    }
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
