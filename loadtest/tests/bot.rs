//! The bot against a real shardcast server started in this process: a few hundred clients for a
//! few seconds, asserting exact delivery. No timing assertions: this keeps the bot from rotting,
//! it is not a benchmark.

use clap::{Parser, ValueEnum};
use shardcast::config::{Config, Durability};
use shardcast::server::Server;
use shardcast_loadtest::{Cli, Report, run};

/// Starts a server on 127.0.0.1:0 with `durability` and a publish limit no scenario reaches,
/// runs the bot with `args` (the scenario and its options; `--url` and the same `--durability`
/// are added) against it, and stops the server.
fn run_against_server(durability: Durability, args: &[&str]) -> Report {
    let data = tempfile::tempdir().expect("temp dir");
    let server = Server::start(Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        data: data.path().to_path_buf(),
        durability,
        publish_rate: 1_000_000,
        publish_burst: 1_000_000,
        user_store_rate_bytes: 0,
        ..Default::default()
    })
    .expect("start the server");
    let url = format!("ws://{}", server.local_addr());
    let mode = durability.to_possible_value().expect("a named mode");
    let mut argv = vec!["shardcast-loadtest"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--url", &url, "--no-progress", "--threads", "2"]);
    argv.extend_from_slice(&["--durability", mode.get_name()]);
    let cli = Cli::try_parse_from(argv).expect("valid arguments");
    let report = run(&cli).expect("the run completes");
    server.shutdown();
    server.join();
    let declared = report.target.durability.map(|d| d.as_str());
    assert_eq!(declared, Some(mode.get_name()), "the report names the mode");
    report
}

fn assert_exact(report: &Report) {
    let d = report.delivery.as_ref().expect("a delivery report");
    assert!(d.delivered > 0, "nothing was delivered: {d:#?}");
    assert_checked(report);
}

/// Everything published was acked and exactly what was owed arrived (possibly nothing).
fn assert_checked(report: &Report) {
    let d = report.delivery.as_ref().expect("a delivery report");
    assert!(d.published > 0, "nothing was published: {d:#?}");
    assert_eq!(d.lost, 0, "lost messages: {d:#?}");
    assert_eq!(d.duplicates, 0, "duplicates: {d:#?}");
    assert_eq!(d.out_of_order, 0, "out of order: {d:#?}");
    assert_eq!(d.unexpected, 0, "unexpected deliveries: {d:#?}");
    assert_eq!(d.content_mismatches, 0, "wrong content: {d:#?}");
    assert_eq!(d.delivered, d.expected, "{d:#?}");
    assert_eq!(d.acked, d.published, "{d:#?}");
    assert!(d.passed && report.passed, "{}", report.human());
}

#[test]
fn fanout_delivers_exactly() {
    // 300 subscribers + 2 publishers in one room. The server keeps its default presence events,
    // so the bot also sees (and must ignore) ~45,000 `joined` frames while connecting.
    let report = run_against_server(
        Durability::Sync,
        &[
            "fanout",
            "--subscribers",
            "300",
            "--publishers",
            "2",
            "--rate",
            "10",
            "--duration",
            "2.5",
            "--warmup",
            "0.5",
        ],
    );
    assert_exact(&report);
    let d = report.delivery.as_ref().unwrap();
    // Every message goes to the 300 subscribers and the other publisher.
    assert_eq!(d.expected, d.published * 301);
    let joined = d.other_frames.get("joined").copied().unwrap_or(0);
    assert!(joined > 0, "the presence events are counted: {d:#?}");
    assert!(report.latency.is_some());
    assert!(report.ack_latency.is_some());
}

#[test]
fn dm_delivers_exactly() {
    let report = run_against_server(
        Durability::Sync,
        &[
            "dm",
            "--users",
            "100",
            "--rate",
            "5",
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
        ],
    );
    assert_exact(&report);
    let d = report.delivery.as_ref().unwrap();
    assert_eq!(d.expected, d.published);
}

#[test]
fn chat_alone_in_rooms_stores_and_acks_without_deliveries() {
    // --room-size 1: every user alone in its room, the store-path shape. Nothing is owed, so the
    // exact check is about the acks: every publish acked once, seqs contiguous per room.
    let report = run_against_server(
        Durability::Memory,
        &[
            "chat",
            "--users",
            "50",
            "--room-size",
            "1",
            "--rate",
            "20",
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
        ],
    );
    assert_checked(&report);
    let d = report.delivery.as_ref().unwrap();
    assert_eq!((d.expected, d.delivered), (0, 0), "{d:#?}");
    assert!(report.latency.is_none());
    assert!(report.ack_latency.is_some());
    assert!(report.acks_per_sec > 0.0);
}

#[test]
fn soak_mixes_chat_dms_and_history_churn_and_samples_the_server() {
    // The server runs in this process, so its pid is ours; the RSS bound is left wide because
    // the bot's own memory is in the same process.
    let pid = std::process::id().to_string();
    let report = run_against_server(
        Durability::Sync,
        &[
            "soak",
            "--users",
            "40",
            "--room-size",
            "5",
            "--dm-users",
            "20",
            "--rate",
            "5",
            "--churn-rate",
            "20",
            "--sample-secs",
            "0.5",
            "--max-rss-growth",
            "1000",
            "--server-pid",
            &pid,
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ],
    );
    assert_exact(&report);
    let d = report.delivery.as_ref().unwrap();
    // Chat: 4 other members per room message; DMs: one recipient each.
    assert!(d.expected > d.published, "{d:#?}");
    let soak = report.soak.as_ref().expect("a soak report");
    assert!(soak.cycles_ok > 0, "no churn cycle completed: {soak:#?}");
    assert_eq!(soak.cycles_failed, 0, "{soak:#?}");
    assert!(soak.samples.len() >= 3, "{soak:#?}");
    assert!(soak.rss_growth_percent.is_some(), "{soak:#?}");
    for s in &soak.samples {
        assert!(s.rss_bytes > 0, "{s:?}");
        assert!(
            s.queue_bytes.is_some(),
            "the queue gauge is read from /metrics: {s:?}"
        );
    }
    // By the end the 60 connections are open (both ends are in this process).
    let last = soak.samples.last().unwrap();
    assert!(last.open_fds >= 120, "{last:?}");
}

#[test]
fn storm_clients_reconnect_with_since_and_recover_exactly() {
    // 300 clients in rooms of 10: 30 publishers and the 2 steady rooms stay, 252 clients drop at
    // once, stay away 400 ms while the publishers go on, then reconnect at once and join with
    // `since`. The exact check spans both sockets of each client: everything after its first
    // join arrives once and in order, replayed or live.
    let report = run_against_server(
        Durability::Sync,
        &[
            "storm",
            "--clients",
            "300",
            "--rate",
            "5",
            "--steady-rooms",
            "2",
            "--down-ms",
            "400",
            "--after",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0.3",
        ],
    );
    assert_exact(&report);
    let s = report.storm.as_ref().expect("a storm report");
    assert_eq!((s.reconnecting, s.staying), (252, 48), "{s:#?}");
    assert_eq!(s.back, s.reconnecting, "{s:#?}");
    assert!(s.back_seconds.is_some(), "{s:#?}");
    assert_eq!(s.failed_handshakes, 0, "{s:#?}");
    assert_eq!((s.not_recovered, s.truncated), (0, 0), "{s:#?}");
    // 30 rooms publish 5/s each while the clients are away: there is something to replay.
    assert!(s.replayed > 0, "{s:#?}");
    let welcomes = s.connect_to_welcome.as_ref().expect("welcome latencies");
    assert_eq!(welcomes.count, s.reconnecting, "{s:#?}");
    assert!(
        report.latency.is_some(),
        "the steady rooms' deliveries during the storm"
    );
}

/// A small bigroom: 200 members join one room while 2 publishers publish, then half of them
/// leave and rejoin with `since`. The server keeps its default presence events, so every join
/// sends `joined` to every member and every leave sends `left`.
const BIGROOM: &[&str] = &[
    "bigroom",
    "--members",
    "200",
    "--publishers",
    "2",
    "--rate",
    "10",
    "--join-rate",
    "400",
    "--churn-rate",
    "400",
    "--away-ms",
    "300",
    "--duration",
    "1",
    "--warmup",
    "0.3",
];

/// What every bigroom run must show, however many processes ran it.
fn assert_bigroom(report: &Report, processes: u64) {
    assert_exact(report);
    let b = report.bigroom.as_ref().expect("a bigroom report");
    assert_eq!(b.processes, processes, "{b:#?}");
    assert_eq!((b.members, b.publishers, b.joined), (200, 2, 200), "{b:#?}");
    assert!(b.fill_seconds.is_some(), "{b:#?}");
    assert_eq!(b.churners, 100, "{b:#?}");
    assert_eq!((b.rejoined, b.back), (100, 100), "{b:#?}");
    assert!(b.churn_seconds.is_some(), "{b:#?}");
    assert_eq!(
        (b.failed, b.not_recovered, b.truncated),
        (0, 0, 0),
        "{b:#?}"
    );
    // 20 messages a second while each churner is away 300 ms: there is something to replay.
    assert!(b.replayed > 0, "{b:#?}");
    assert_eq!(b.phases.len(), 4, "{b:#?}");
    let d = report.delivery.as_ref().unwrap();
    let count = |kind: &str| d.other_frames.get(kind).copied().unwrap_or(0);
    assert!(count("joined") > 0, "joined events are counted: {d:#?}");
    assert!(count("left") > 0, "left events are counted: {d:#?}");
    let in_phases: u64 = b.phases.iter().map(|p| p.other_frames).sum();
    assert!(
        in_phases > 0 && in_phases <= count("joined") + count("left"),
        "{b:#?}"
    );
    // Every delivery was live (in the latency histogram, and in exactly one phase's) or
    // replayed: this holds only if the histograms and counters of every process were merged.
    let latency = report.latency.as_ref().expect("latency").count;
    assert_eq!(d.delivered, latency + b.replayed, "{d:#?} {b:#?}");
    let by_phase: u64 = b
        .phases
        .iter()
        .filter_map(|p| p.latency.as_ref())
        .map(|l| l.count)
        .sum();
    assert_eq!(by_phase, latency, "{b:#?}");
    let joins = b.join_latency.as_ref().expect("join latency").count;
    assert_eq!(joins, 200, "{b:#?}");
    let rejoins = b.rejoin_latency.as_ref().expect("rejoin latency").count;
    assert_eq!(rejoins, 100, "{b:#?}");
    // The server runs in this process, so its pid is ours: the CPU figures are computed (their
    // values include the bot's own work here, so they are not checked).
    assert!(
        b.cpu_us_per_join.is_some() && b.cpu_us_per_churn.is_some(),
        "{b:#?}"
    );
    assert!(
        b.phases.iter().all(|p| p.cpu_us_per_delivery.is_some()),
        "{b:#?}"
    );
}

/// The bigroom options, with the server's pid (this process) to sample.
fn bigroom_args(extra: &[&'static str]) -> Vec<String> {
    let mut args: Vec<String> = BIGROOM.iter().chain(extra).map(|s| s.to_string()).collect();
    args.extend(["--server-pid".to_string(), std::process::id().to_string()]);
    args
}

#[test]
fn bigroom_fills_churns_and_delivers_exactly() {
    let args = bigroom_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = run_against_server(Durability::Memory, &args);
    assert_bigroom(&report, 1);
}

#[test]
fn bigroom_as_two_processes_merges_into_one_exact_report() {
    // Two children of the bot binary, each with 100 members (the first also the publishers);
    // the publishers' acks are in one process and most receivers in the other, so the exact
    // check passes only on the merged outcomes.
    let args = bigroom_args(&[
        "--processes",
        "2",
        "--bot-bin",
        env!("CARGO_BIN_EXE_shardcast-loadtest"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = run_against_server(Durability::Memory, &args);
    assert_bigroom(&report, 2);
}

/// A small joins run: 60 clients join rooms of 25 (the last has 10) at 400 a second. The server
/// keeps its default presence events, so each join tells the members already in its room.
fn joins_run(extra: &[&str]) -> Report {
    let pid = std::process::id().to_string();
    let mut args = vec![
        "joins",
        "--clients",
        "60",
        "--room-size",
        "25",
        "--join-rate",
        "400",
        "--warmup",
        "0.2",
        "--settle-ms",
        "200",
        "--presence-events",
        "true",
        "--server-pid",
        &pid,
    ];
    args.extend_from_slice(extra);
    run_against_server(Durability::Memory, &args)
}

#[test]
fn joins_are_acked_and_each_member_hears_of_every_later_one() {
    let report = joins_run(&[]);
    let j = report.joins.as_ref().expect("a joins report");
    assert!(report.passed, "{}", report.human());
    assert_eq!(
        (j.clients, j.rooms, j.joined, j.failed),
        (60, 3, 60, 0),
        "{j:#?}"
    );
    assert!(j.join_seconds.is_some(), "{j:#?}");
    // 25·24/2 twice and 10·9/2: each pair of a room once.
    let c = &j.joined_check;
    assert_eq!(c.skipped, None, "{c:#?}");
    assert_eq!(
        (c.owed, c.received, c.clients_wrong),
        (645, 645, 0),
        "{c:#?}"
    );
    assert_eq!(j.frames.get("joined"), Some(&645), "{j:#?}");
    assert_eq!(j.join_latency.as_ref().map(|l| l.count), Some(60), "{j:#?}");
    // The server runs in this process: the figure is computed (it includes the bot's own work
    // here, so its value is not checked).
    assert!(j.cpu_us_per_join.is_some(), "{j:#?}");
}

#[test]
fn joins_fails_when_a_member_hears_other_than_it_is_owed() {
    // The bot is told the rooms stop listing at 5 members, but the server lists up to 1,000:
    // the members hear of more joins than the check owes them.
    let report = joins_run(&["--presence-list-max", "5"]);
    let j = report.joins.as_ref().expect("a joins report");
    assert!(!report.passed, "{}", report.human());
    assert_eq!(j.joined, 60, "{j:#?}");
    assert!(j.joined_check.clients_wrong > 0, "{j:#?}");
}

/// The bot's connections in both wire forms (`--protocol proto|mixed`), encoded and decoded by
/// the Rust client crate's codec: a codec that drops, misreads or misencodes a frame fails the
/// exact check.
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
            assert_exact(&run_against_server(Durability::Memory, &argv));
        }
    }
}

/// `chat --client full`: every user a `shardcast_client::Client` (its socket, outbox and
/// recovery), in both forms at once; delivery is exact as with the bot's own connections.
#[test]
fn chat_on_the_full_client_delivers_exactly() {
    let args = "chat --client full --protocol mixed --users 60 --room-size 6 --rate 5 \
                --duration 2 --warmup 0.5";
    let args: Vec<&str> = args.split_whitespace().collect();
    let report = run_against_server(Durability::Sync, &args);
    assert_exact(&report);
    assert_eq!(report.params["client"], "full");
    let d = report.delivery.as_ref().unwrap();
    // 60 users at 5/s for 2.5 s, each message owed to the 5 others of its room.
    assert!(d.published >= 600, "{d:#?}");
    assert_eq!(d.expected, d.acked * 5, "{d:#?}");
}
