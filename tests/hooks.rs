//! Hooks (docs/hooks.md): a real backend in Python (tests/fixtures/hook_backend.py, standard
//! library only) decides connects, joins, publishes and direct messages. Refused messages are
//! stored nowhere and delivered to no one; rewritten ones are stored and delivered rewritten
//! with one seq; failed hooks (stalls, 500, non-JSON, too large, wrong types) follow
//! `hook_on_error`; a connection's requests keep their order whatever the hook's latency; the
//! server API runs no hooks. Both engines.

mod common;

use common::hook_backend::{Backend, hook_rules};
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};
use shardcast::config::{Config, Engine};

const KEY: &str = "hooks-test-api-key";

/// `mod:` rooms run the join and publish hooks (deny on error), `lax:` the publish hook (allow
/// on error), `plain:` none; direct messages run the send hook; hooks time out after 5 s (the
/// backend stalls for 8: tests that need a timeout set a shorter one).
fn hooked(url: &str, c: &mut Config) {
    c.hook_url = Some(url.to_owned());
    c.hook_send = true;
    c.hook_timeout_ms = 5_000;
    c.api_key = Some(KEY.into());
    c.presence_events = false;
    c.rooms = hook_rules();
}

fn text(t: &str) -> Value {
    json!({ "text": t })
}

/// Refused: the publisher gets `forbidden` with the backend's message, no member gets it and
/// history does not have it. Rewritten: stored and delivered rewritten, one seq for everyone.
async fn moderation(addr: std::net::SocketAddr) {
    let mut alice = Client::connect_dev(addr, "alice").await;
    let mut bob = Client::connect_dev(addr, "bob").await;
    let mut carol = Client::connect_dev(addr, "carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.call_past_own_presence(json!({"type": "join", "room": "mod:r"}))
            .await;
    }
    let reply = alice
        .call_past_own_presence(
            json!({"type": "publish", "room": "mod:r", "body": text("spam now")}),
        )
        .await;
    assert_error(&reply, "forbidden", reply.get("id"));
    assert_eq!(reply["message"], "no spam, please", "{reply}");

    let reply = alice
        .call_past_own_presence(
            json!({"type": "publish", "room": "mod:r", "body": text("darn it")}),
        )
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let seq = reply["seq"].as_u64().unwrap();
    for c in [&mut bob, &mut carol] {
        let got = c.recv_json().await;
        assert_eq!(
            assert_room_msg(&got, "mod:r", "alice", &text("**** it")),
            seq
        );
    }
    let history = bob.history_all("mod:r").await;
    let bodies: Vec<&Value> = history.iter().map(|m| &m["body"]).collect();
    assert_eq!(bodies, [&text("**** it")], "{history:?}");
    assert_eq!(history[0]["seq"], seq);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_is_stored_nowhere_and_rewritten_is_stored_rewritten() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| hooked(&backend.url, c));
    moderation(server.addr()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_and_rewritten_in_the_redis_engine() {
    let backend = Backend::start().await;
    let redis = RedisServer::start().await;
    let server = TestServer::start(|c| {
        hooked(&backend.url, c);
        c.engine = Engine::Redis;
        c.redis_url = Some(redis.url());
    });
    moderation(server.addr()).await;
}

/// A stall past the timeout, a 500, a non-JSON answer, one over hook_max_answer_bytes and one
/// with `allow` of the wrong type: `unavailable` where the rule denies on error (nothing
/// stored), stored unchanged where it allows. They are counted in /metrics.
#[tokio::test(flavor = "multi_thread")]
async fn failed_hooks_follow_hook_on_error() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| {
        hooked(&backend.url, c);
        c.hook_timeout_ms = 2_000;
    });
    let addr = server.addr();
    let mut alice = Client::connect_dev(addr, "alice").await;
    for room in ["mod:e", "lax:e"] {
        alice.join(room).await;
    }
    let bad = ["stall", "fail500", "notjson", "huge", "wrongtype"];
    for t in bad {
        let reply = alice
            .call(json!({"type": "publish", "room": "mod:e", "body": text(t)}))
            .await;
        assert_error(&reply, "unavailable", reply.get("id"));
        let seq = alice.publish("lax:e", text(t)).await;
        assert!(seq > 0);
    }
    assert!(alice.history_all("mod:e").await.is_empty());
    let stored: Vec<Value> = (alice.history_all("lax:e").await.into_iter().rev())
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(stored, bad.map(text));
    // The server is fine, and a good publish goes through.
    alice.publish("mod:e", text("fine")).await;
    let metrics = Http::connect(addr).await.get("/metrics", &[]).await.body;
    let line = |outcome: &str| {
        let prefix =
            format!("shardcast_hook_calls_total{{event=\"publish\",outcome=\"{outcome}\"}} ");
        (metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())))
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        .parse::<u64>()
        .unwrap()
    };
    assert_eq!(line("timeout"), 2, "{metrics}");
    assert_eq!(line("error"), 8, "{metrics}");
    assert!(line("allowed") >= 1);
    assert!(
        metrics.contains("shardcast_hook_latency_seconds_count"),
        "{metrics}"
    );
}

/// Publishes of one connection reach the room in the order sent when the hook takes 0–200 ms
/// each (in varying order), with publishes to a room without hooks between them: those wait
/// for the ones before them too.
#[tokio::test(flavor = "multi_thread")]
async fn a_connections_publishes_keep_their_order_under_slow_hooks() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| {
        hooked(&backend.url, c);
        c.hook_timeout_ms = 5_000;
    });
    let addr = server.addr();
    let mut alice = Client::connect_dev(addr, "alice").await;
    let mut bob = Client::connect_dev(addr, "bob").await;
    for room in ["mod:o", "plain:o"] {
        alice.join(room).await;
        bob.call_past_own_presence(json!({"type": "join", "room": room}))
            .await;
    }
    let n = 30u64;
    let frames: Vec<Value> = (0..n)
        .map(|i| {
            let delay = (i * 137) % 201;
            if i % 3 == 2 {
                json!({"type": "publish", "room": "plain:o", "id": i, "body": {"i": i}})
            } else {
                json!({"type": "publish", "room": "mod:o", "id": i, "body": {"delay": delay, "i": i}})
            }
        })
        .collect();
    alice.send_batch(&frames).await;
    let mut acks = Vec::new();
    while acks.len() < n as usize {
        let got = alice.recv_json().await;
        if got["type"] == "ack" {
            acks.push(got["id"].as_u64().unwrap());
        } else {
            assert_eq!(got["type"], "message", "{got}");
        }
    }
    assert_eq!(acks, (0..n).collect::<Vec<_>>(), "acks in request order");
    let mut seen = Vec::new();
    while seen.len() < n as usize {
        let got = bob.recv_past_own_presence().await;
        if got["type"] == "message" {
            seen.push(got["body"]["i"].as_u64().unwrap());
        }
    }
    assert_eq!(
        seen,
        (0..n).collect::<Vec<_>>(),
        "delivered in the order sent"
    );
}

/// A publish waiting for a slow hook holds back only its own connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_hook_does_not_hold_other_connections() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| {
        hooked(&backend.url, c);
        c.hook_timeout_ms = 10_000;
    });
    let addr = server.addr();
    let mut alice = Client::connect_dev(addr, "alice").await;
    let mut carol = Client::connect_dev(addr, "carol").await;
    alice.join("mod:s").await;
    carol.join("mod:s").await;
    alice
        .send_json(
            &json!({"type": "publish", "room": "mod:s", "id": "slow", "body": {"delay": 3000}}),
        )
        .await;
    // Carol's hooked publish and a room without hooks are served while alice's hook is out.
    carol.publish("mod:s", text("quick")).await;
    carol.join("plain:s").await;
    carol.publish("plain:s", text("quick")).await;
    let first = alice.recv_json().await;
    assert_eq!(
        first["type"], "message",
        "carol's message comes first: {first}"
    );
    let ack = alice.recv_json().await;
    assert_eq!(
        (&ack["type"], &ack["id"]),
        (&json!("ack"), &json!("slow")),
        "{ack}"
    );
}

/// The join hook refuses with `forbidden` and the backend's message; the send hook refuses and
/// rewrites direct messages; the server API runs no hook.
#[tokio::test(flavor = "multi_thread")]
async fn join_and_send_hooks_and_the_api_runs_none() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| hooked(&backend.url, c));
    let addr = server.addr();
    let mut alice = Client::connect_dev(addr, "alice").await;
    let mut bob = Client::connect_dev(addr, "bob").await;
    let reply = alice
        .call(json!({"type": "join", "room": "mod:closed"}))
        .await;
    assert_error(&reply, "forbidden", reply.get("id"));
    assert_eq!(reply["message"], "room mod:closed is closed");
    let reply = alice
        .call(json!({"type": "publish", "room": "mod:closed", "body": 1}))
        .await;
    assert_error(&reply, "not_member", reply.get("id"));
    alice.join("mod:open").await;

    let reply = alice
        .call(json!({"type": "send", "to": "bob", "body": text("spam you")}))
        .await;
    assert_error(&reply, "forbidden", reply.get("id"));
    let seq = alice.dm("bob", text("darn you")).await;
    let got = bob.recv_json().await;
    assert_eq!(assert_dm(&got, "bob", "alice", &text("**** you")), seq);
    let (inbox, _) = bob.sync(0).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["body"], text("**** you"));

    // The API acts with every right: no hook refuses or rewrites it.
    let reply = api(
        addr,
        "POST",
        "/api/publish",
        Some(KEY),
        &json!({"room": "mod:open", "body": text("spam from the api")}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let got = alice.recv_json().await;
    assert_eq!(got["body"], text("spam from the api"), "{got}");
}

/// The connect hook: a refused user gets 403 with the backend's reason (and, with first-frame
/// authentication, a close with its code); an upgrade without a token is named by the hook
/// from the listed query parameter and joins the hook's rooms; a user id can be replaced.
#[tokio::test(flavor = "multi_thread")]
async fn connect_hook_refuses_names_and_enriches() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| {
        hooked(&backend.url, c);
        c.hook_connect = true;
        c.hook_connect_query = vec!["session".into()];
    });
    let addr = server.addr();
    let refusal = connect(addr, "/ws?user=mallory", &[])
        .await
        .err()
        .expect("refused");
    refusal.assert(403, "forbidden");
    assert_eq!(refusal.body["message"], "mallory is banned");
    let refusal = connect(addr, "/ws?session=nope", &[])
        .await
        .err()
        .expect("refused");
    refusal.assert(403, "forbidden");

    let bob = connect(addr, "/ws?session=s-bob", &[])
        .await
        .expect("admitted");
    assert_eq!(bob.welcome["user"], "bob", "{}", bob.welcome);
    assert_eq!(bob.welcome["rooms"], json!(["lobby"]), "{}", bob.welcome);
    let renamed = Client::connect_dev(addr, "renamed").await;
    assert_eq!(renamed.welcome["user"], "renamed2");
    let mut alice = Client::connect_dev(addr, "alice").await;
    alice.join("lobby").await;
    let members = alice.presence("lobby").await;
    assert!(members.contains(&"bob".to_string()), "{members:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_hook_refusal_after_a_first_frame_closes_with_its_code() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| {
        hooked(&backend.url, c);
        c.jwt_secret = Some(SECRET.into());
        c.first_frame_auth = true;
        c.hook_connect = true;
    });
    let mut mallory = Client::upgrade_only(server.addr(), "mallory").await;
    mallory
        .send_json(&json!({"type": "connect", "token": token_for("mallory")}))
        .await;
    match mallory.next_within(TIMEOUT).await {
        Some(Incoming::Close(Some((code, reason)))) => {
            assert_eq!(code, 4403);
            assert_eq!(reason, "mallory is banned");
        }
        Some(other) => panic!("expected a close 4403, got {other}"),
        None => panic!("expected a close 4403, got nothing"),
    }
    let mut alice = Client::upgrade_only(server.addr(), "alice").await;
    alice
        .send_json(&json!({"type": "connect", "token": token_for("alice")}))
        .await;
    assert_eq!(alice.recv_type("welcome").await["user"], "alice");
}

/// Frames sent behind a request whose hook is out are held, in order, up to hook_max_waiting;
/// past it they are refused with `rate_limited` at once, and the held ones are served after the
/// hook's answer.
#[tokio::test(flavor = "multi_thread")]
async fn requests_past_hook_max_waiting_are_refused() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| {
        hooked(&backend.url, c);
        c.hook_timeout_ms = 5_000;
        c.hook_max_waiting = 2;
    });
    let mut alice = Client::connect_dev(server.addr(), "alice").await;
    alice.join("mod:w").await;
    let mut frames =
        vec![json!({"type": "publish", "room": "mod:w", "id": 0, "body": {"delay": 1000}})];
    frames.extend((1..=4).map(|i| json!({"type": "ping", "id": i})));
    alice.send_batch(&frames).await;
    let ids = |frames: &[Value]| {
        frames
            .iter()
            .map(|f| (f["type"].clone(), f["id"].clone()))
            .collect::<Vec<_>>()
    };
    let got = alice.recv_n(5).await;
    // The two past the limit are refused at once; the held pings are answered once the hook
    // has (a publish's ack comes from the engine, so it may follow them, as without hooks).
    let mut rest = ids(&got[2..]);
    rest.sort_by_key(|(_, id)| id.as_u64());
    assert_eq!(
        (ids(&got[..2]), rest),
        (
            vec![(json!("error"), json!(3)), (json!("error"), json!(4))],
            vec![
                (json!("ack"), json!(0)),
                (json!("pong"), json!(1)),
                (json!("pong"), json!(2)),
            ]
        ),
        "{got:?}"
    );
    assert_error(&got[0], "rate_limited", Some(&json!(3)));
}
