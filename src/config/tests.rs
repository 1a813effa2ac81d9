//! Loading, layering and validating configurations.

use super::*;
use clap::{FromArgMatches, Parser};

/// A valid HS256 secret: 32 bytes.
const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn load(args: &[&str], file: Option<&str>) -> Result<Config, ConfigError> {
    let matches = <Cli as clap::CommandFactory>::command()
        .get_matches_from(std::iter::once("shardcast").chain(args.iter().copied()));
    let cli = Config::from_arg_matches(&matches).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    if let Some(text) = file {
        std::fs::write(&path, text).unwrap();
    }
    Config::load(file.map(|_| path.as_path()), &cli, &matches)
}

#[test]
fn defaults_match_the_default_impl() {
    assert_eq!(load(&[], None).unwrap(), Config::default());
}

#[test]
fn flags_override_the_file_and_the_file_overrides_defaults() {
    let c = load(
        &["--heartbeat-ms", "500"],
        Some("heartbeat_ms = 100\nmax_rooms_per_connection = 7\n"),
    )
    .unwrap();
    assert_eq!(c.heartbeat_ms, 500);
    assert_eq!(c.max_rooms_per_connection, 7);
    assert_eq!(c.publish_rate, 50);
}

#[test]
fn room_retention_rules_come_from_the_file_and_match_by_prefix() {
    let file = "room_retention_messages = 50\n\n[[room_retention]]\nprefix = \"support:\"\n\
                messages = 7\nsecs = 0\n\n[[room_retention]]\nprefix = \"s\"\nmessages = 1\nsecs = 2\n";
    let c = load(&["--room-retention-secs", "9"], Some(file)).unwrap();
    let history = |room| {
        let rule = c.rule(room);
        (rule.history_messages, rule.history_secs)
    };
    assert_eq!(history("support:42"), (7, 0), "the longest prefix wins");
    assert_eq!(history("sales"), (1, 2));
    assert_eq!(history("lobby"), (50, 9));
    let bad = "[[room_retention]]\nprefix = \"\"\nmessages = 1\nsecs = 1\n";
    assert!(
        load(&[], Some(bad))
            .unwrap_err()
            .to_string()
            .contains("prefix")
    );
}

#[test]
fn unknown_file_keys_are_refused() {
    let err = load(&[], Some("heartbeat = 1\n")).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn dev_mode_refuses_a_public_bind() {
    let err = load(&["--bind", "0.0.0.0:8080"], None).unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    let args = ["--bind", "0.0.0.0:8080", "--jwt-secret", SECRET];
    let err = load(&args, None).unwrap_err();
    assert!(err.to_string().contains("api_key"), "{err}");
    let ok = load(&[&args[..], &["--api-key", "k"]].concat(), None).unwrap();
    assert_eq!(ok.jwt_secret.as_deref(), Some(SECRET));
    let no_api = load(&[&args[..], &["--api", "false"]].concat(), None).unwrap();
    assert!(!no_api.api);
}

#[test]
fn any_jwt_key_ends_dev_mode_and_jwks_must_be_http_or_https() {
    let args = ["--bind", "0.0.0.0:8080", "--api", "false"];
    let pem = load(&[&args[..], &["--jwt-public-key", "k.pem"]].concat(), None).unwrap();
    assert!(!pem.dev_mode());
    let url = ["--jwks-url", "http://127.0.0.1:9/jwks"];
    assert!(!load(&[&args[..], &url].concat(), None).unwrap().dev_mode());
    let tls = ["--jwks-url", "https://idp.example/jwks"];
    assert!(!load(&[&args[..], &tls].concat(), None).unwrap().dev_mode());
    let ftp = ["--jwks-url", "ftp://idp.example/jwks"];
    let err = load(&[&args[..], &ftp].concat(), None).unwrap_err();
    assert!(
        err.to_string().contains("not an http:// or https://"),
        "{err}"
    );
    let ca_alone = ["--jwt-public-key", "k.pem", "--jwks-ca-file", "ca.pem"];
    let err = load(&[&args[..], &ca_alone].concat(), None).unwrap_err();
    assert!(err.to_string().contains("jwks_url is not"), "{err}");
    let origins = ["--allowed-origins", "https://a.example,https://*.b.example"];
    let c = load(&origins, None).unwrap();
    assert_eq!(
        c.allowed_origins,
        ["https://a.example", "https://*.b.example"]
    );
}

#[test]
fn metrics_key_must_not_be_empty_and_metrics_bind_is_a_second_address() {
    let err = load(&["--metrics-key", ""], None).unwrap_err();
    assert!(err.to_string().contains("metrics_key is empty"), "{err}");
    let same = [
        "--bind",
        "127.0.0.1:9000",
        "--metrics-bind",
        "127.0.0.1:9000",
    ];
    let err = load(&same, None).unwrap_err();
    assert!(err.to_string().contains("metrics_bind"), "{err}");
    let ok = load(&["--metrics-bind", "127.0.0.1:9100"], None).unwrap();
    assert_eq!(ok.metrics_bind, Some("127.0.0.1:9100".parse().unwrap()));
}

/// An HS256 secret shorter than the hash stops the start, saying why and what to do (issue
/// 18, finding 10).
#[test]
fn a_jwt_secret_shorter_than_32_bytes_is_refused() {
    let short = &SECRET[..31];
    let err = load(&["--jwt-secret", short, "--api", "false"], None).unwrap_err();
    let err = err.to_string();
    for needle in [
        "31 bytes",
        "at least 32",
        "RFC 7518",
        "openssl rand -base64 32",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let ok = load(&["--jwt-secret", SECRET, "--api", "false"], None).unwrap();
    assert_eq!(ok.jwt_secret.as_deref(), Some(SECRET));
}

#[test]
fn echo_is_refused_outside_dev_mode() {
    assert!(load(&["--echo", "true"], None).unwrap().echo);
    let args = ["--echo", "true", "--jwt-secret", SECRET, "--api", "false"];
    let err = load(&args, None).unwrap_err();
    assert!(err.to_string().contains("echo"), "{err}");
}

#[test]
fn the_store_burst_must_hold_the_largest_message_unless_the_budget_is_off() {
    let err = load(&["--user-store-burst-bytes", "65891"], None).unwrap_err();
    assert!(err.to_string().contains("65892"), "{err}");
    assert!(load(&["--user-store-burst-bytes", "65892"], None).is_ok());
    let off = [
        "--user-store-rate-bytes",
        "0",
        "--user-store-burst-bytes",
        "1",
    ];
    assert!(load(&off, None).is_ok());
    let c = load(&["--min-free-disk-bytes", "0"], None).unwrap();
    assert_eq!(c.min_free_disk_bytes, 0);
}

#[test]
fn idle_timeout_defaults_to_two_heartbeats() {
    let c = Config::default();
    assert_eq!(c.idle_heartbeats(), 2);
    let c = Config {
        heartbeat_ms: 100,
        idle_timeout_ms: 250,
        ..Config::default()
    };
    assert_eq!(c.idle_heartbeats(), 3);
}

#[test]
fn room_rules_take_the_longest_prefix_then_the_default_rule_then_the_globals() {
    let file = "room_retention_messages = 50\npresence_events = true\n\n\
                [[rooms]]\nprefix = \"\"\npresence_list_max = 20\nhistory_secs = 60\n\n\
                [[rooms]]\nprefix = \"live:\"\npublish = \"api\"\npresence = \"count\"\n\n\
                [[rooms]]\nprefix = \"live:staff\"\npublish = \"granted\"\nmax_members = 5\n\
                recover = false\n\n\
                [[room_retention]]\nprefix = \"live:big\"\nmessages = 3\nsecs = 4\n";
    let c = load(&[], Some(file)).unwrap();
    let lobby = c.rule("lobby");
    assert_eq!(lobby.prefix, "");
    assert_eq!(
        (lobby.publish, lobby.presence, lobby.presence_list_max),
        (PublishMode::Members, PresenceMode::List, 20)
    );
    assert_eq!((lobby.history_messages, lobby.history_secs), (50, 60));
    assert!(lobby.recover && lobby.max_members == 0);
    let live = c.rule("live:keynote");
    assert_eq!(
        (live.prefix, live.publish, live.presence),
        ("live:", PublishMode::Api, PresenceMode::Count)
    );
    let staff = c.rule("live:staff-1");
    assert_eq!(staff.publish, PublishMode::Granted);
    assert_eq!(
        staff.presence,
        PresenceMode::List,
        "a field left out comes from the default rule"
    );
    assert_eq!((staff.max_members, staff.recover), (5, false));
    let big = c.rule("live:big-game");
    assert_eq!(
        big.publish,
        PublishMode::Api,
        "an old retention rule gives history only"
    );
    assert_eq!((big.history_messages, big.history_secs), (3, 4));
    assert_eq!(lobby.presence_at(20), PresenceMode::List);
    assert_eq!(
        lobby.presence_at(21),
        PresenceMode::Count,
        "past presence_list_max"
    );
    let twice = "[[rooms]]\nprefix = \"a\"\n\n[[rooms]]\nprefix = \"a\"\n";
    assert!(
        load(&[], Some(twice))
            .unwrap_err()
            .to_string()
            .contains("two [[rooms]] rules")
    );
    let unknown = "[[rooms]]\nprefix = \"a\"\npublish = \"everyone\"\n";
    assert!(load(&[], Some(unknown)).is_err());
}

#[test]
fn write_delay_is_at_most_100_ms() {
    let c = load(&["--write-delay-us", "100000"], None).unwrap();
    assert_eq!(c.write_delay_us, 100_000);
    let err = load(&["--write-delay-us", "100001"], None).unwrap_err();
    assert!(err.to_string().contains("write_delay_us"), "{err}");
}

#[test]
fn the_webhook_needs_a_real_secret_and_an_http_or_https_url_and_takes_either_engine() {
    let url = ["--webhook-url", "http://127.0.0.1:9000/feed"];
    let err = load(&url, None).unwrap_err();
    assert!(err.to_string().contains("webhook_secret"), "{err}");
    let short = load(&[&url[..], &["--webhook-secret", "short"]].concat(), None).unwrap_err();
    assert!(short.to_string().contains("at least 16"), "{short}");
    let ok = [&url[..], &["--webhook-secret", "0123456789abcdef"]].concat();
    assert!(load(&ok, None).unwrap().feed_on());
    let https = [
        "--webhook-url",
        "https://x",
        "--webhook-secret",
        "0123456789abcdef",
    ];
    assert!(load(&https, None).unwrap().feed_on());
    let ftp = [
        "--webhook-url",
        "ftp://x",
        "--webhook-secret",
        "0123456789abcdef",
    ];
    let err = load(&ftp, None).unwrap_err();
    assert!(err.to_string().contains("https://"), "{err}");
    let ca = ["--hook-ca-file", "/tmp/ca.pem"];
    let err = load(&ca, None).unwrap_err();
    assert!(err.to_string().contains("hook_ca_file"), "{err}");
    let batch = load(&[&ok[..], &["--webhook-batch", "0"]].concat(), None).unwrap_err();
    assert!(batch.to_string().contains("webhook_batch"), "{batch}");
    // The redis engine takes it (a Redis Cluster refuses it at connect: cluster::connect).
    let redis = [
        "--event-feed",
        "true",
        "--engine",
        "redis",
        "--redis-url",
        "redis://x",
    ];
    assert!(load(&redis, None).unwrap().feed_on());
}
