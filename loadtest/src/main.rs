//! The `shardcast-loadtest` binary: parse the command line, run the scenario, print the summary
//! (or `--json`), and exit non-zero when delivery was not exact (1) or the run failed (2). With
//! `SHARDCAST_LOADTEST_WORKER` set it is a child of `bigroom --processes` instead.

use std::process::ExitCode;

use clap::Parser;
use shardcast_loadtest::{Cli, WORKER_ENV, run, run_worker};

fn main() -> ExitCode {
    // A child of `bigroom --processes`: its job comes on stdin.
    if std::env::var_os(WORKER_ENV).is_some() {
        return match run_worker() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardcast-loadtest (bot process): {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    let json = cli.scenario.common().json;
    match run(&cli) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("shardcast-loadtest: cannot encode the report: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", report.human());
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("shardcast-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
