//! The bot's connections in both wire forms (`--protocol proto|mixed`), encoded and decoded by
//! the Rust client crate's codec: exact delivery through a real server, so a codec that drops,
//! misreads or misencodes a frame fails here. Not a benchmark.

use clap::Parser;
use shardcast::config::Config;
use shardcast::server::Server;
use shardcast_loadtest::{Cli, run};

fn run_bot(args: &[&str]) -> shardcast_loadtest::Report {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        data: data.path().to_path_buf(),
        publish_rate: 1_000_000,
        publish_burst: 1_000_000,
        user_store_rate_bytes: 0,
        ..Default::default()
    })
    .expect("start the server");
    let url = format!("ws://{}", server.local_addr());
    let mut argv = vec!["shardcast-loadtest"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--url", &url, "--no-progress", "--threads", "2"]);
    let report = run(&Cli::try_parse_from(argv).expect("valid arguments")).expect("the run");
    server.shutdown();
    server.join();
    report
}

#[test]
fn fanout_and_chat_deliver_exactly_in_both_forms() {
    for protocol in ["proto", "mixed"] {
        for args in [
            &[
                "fanout",
                "--subscribers",
                "60",
                "--publishers",
                "2",
                "--rate",
                "10",
            ][..],
            &["chat", "--users", "60", "--room-size", "6", "--rate", "2"][..],
        ] {
            let mut argv = args.to_vec();
            argv.extend_from_slice(&["--duration", "1.5", "--warmup", "0.5"]);
            argv.extend_from_slice(&["--protocol", protocol]);
            let report = run_bot(&argv);
            let d = report.delivery.as_ref().expect("a delivery report");
            let what = format!("{protocol} {args:?}");
            assert!(d.delivered > 0 && d.published > 0, "{what}: {d:#?}");
            assert_eq!(
                (d.lost, d.duplicates, d.unexpected),
                (0, 0, 0),
                "{what}: {d:#?}"
            );
            assert_eq!(d.content_mismatches, 0, "{what}: {d:#?}");
            assert_eq!(d.delivered, d.expected, "{what}: {d:#?}");
            assert_eq!(d.acked, d.published, "{what}: {d:#?}");
            assert!(report.passed, "{what}: {}", report.human());
        }
    }
}
