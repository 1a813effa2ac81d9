//! Room rules (`[[rooms]]` by longest prefix) and rights in tokens, on a real server with real
//! clients: who may publish, presence as a list, a count or nothing, `occupancy` events,
//! `presence_list_max`, `recover`, `max_members`, history retention by rule, the
//! `[[room_retention]]` alias, and the join ack that shows the rule.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use shardcast::config::{Config, PresenceMode, PublishMode, RetentionRule, RoomRule};

const KEY: &str = "room-rules-api-key";
const QUIET: Duration = Duration::from_millis(300);

/// `live:` rooms: publish granted, presence count; `news:` rooms: publish by the API only;
/// `quiet:` rooms: no presence; `small:` rooms: at most 2 members, no recovery; `list:` rooms:
/// a list up to 2 members. JWT mode with an API key, occupancy every 100 ms.
fn rules(c: &mut Config) {
    c.jwt_secret = Some(SECRET.into());
    c.api_key = Some(KEY.into());
    c.occupancy_interval_ms = 100;
    let rule = |prefix: &str| RoomRule {
        prefix: prefix.into(),
        ..RoomRule::default()
    };
    c.rooms = vec![
        RoomRule {
            publish: Some(PublishMode::Granted),
            presence: Some(PresenceMode::Count),
            ..rule("live:")
        },
        RoomRule {
            publish: Some(PublishMode::Api),
            ..rule("news:")
        },
        RoomRule {
            presence: Some(PresenceMode::Off),
            ..rule("quiet:")
        },
        RoomRule {
            max_members: Some(2),
            recover: Some(false),
            presence: Some(PresenceMode::Off),
            ..rule("small:")
        },
        RoomRule {
            presence_list_max: Some(2),
            ..rule("list:")
        },
    ];
}

/// A client of `user` whose token's `rooms` claim is `rooms` (`None`: no claim).
async fn user(server: &TestServer, user: &str, rooms: Option<Value>) -> Client {
    let mut claims = json!({"sub": user, "exp": now_secs() + 3600});
    if let Some(rooms) = rooms {
        claims["rooms"] = rooms;
    }
    Client::connect_token(server.addr(), &mint(SECRET, &claims)).await
}

async fn api_publish(server: &TestServer, room: &str, body: Value) -> ApiReply {
    let body = json!({"room": room, "body": body}).to_string();
    api(server.addr(), "POST", "/api/publish", Some(KEY), &body).await
}

fn assert_forbidden(reply: &Value, says: &[&str]) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    for s in says {
        assert!(message.contains(s), "the refusal should say {s:?}: {reply}");
    }
}

/// The join ack names the rule's modes and what the connection may do there; the engine's
/// ack also gives the member count.
#[tokio::test(flavor = "multi_thread")]
async fn the_join_ack_shows_the_rooms_rule_and_rights() {
    let server = TestServer::start(rules);
    let mut viewer = user(
        &server,
        "v",
        Some(json!([{"room": "live:*", "rights": ["join", "presence"]}])),
    )
    .await;
    let ack = viewer
        .call(json!({"type": "join", "room": "live:keynote"}))
        .await;
    assert_eq!(ack["publish"], "granted", "{ack}");
    assert_eq!(ack["presence"], "count", "{ack}");
    assert_eq!(ack["rights"], json!(["join", "presence"]), "{ack}");
    assert_eq!(ack["members"], 1, "{ack}");
    let mut plain = user(&server, "p", None).await;
    let ack = plain.call(json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(
        (&ack["publish"], &ack["presence"]),
        (&json!("members"), &json!("list")),
        "{ack}"
    );
    assert_eq!(
        ack["rights"],
        json!(["join", "publish", "presence", "history"]),
        "{ack}"
    );
    let ack = plain
        .call(json!({"type": "join", "room": "news:today"}))
        .await;
    assert_eq!(
        ack["rights"],
        json!(["join", "presence", "history"]),
        "no publish in an api room: {ack}"
    );
    // Joining again is answered by the connection's shard, with the same fields.
    let again = plain
        .call(json!({"type": "join", "room": "news:today"}))
        .await;
    assert_eq!(
        (&again["publish"], &again["rights"]),
        (&ack["publish"], &ack["rights"])
    );
}

/// `publish = "granted"`: only a token that grants `publish` on the room may; `"api"`: no
/// client may, the server API does; a refusal names the right and the rule.
#[tokio::test(flavor = "multi_thread")]
async fn publish_rights_follow_the_rule_and_the_token() {
    let server = TestServer::start(|c| {
        rules(c);
        c.presence_events = false;
    });
    let news = json!({"room": "news:*", "rights": ["join", "publish"]});
    let viewer_claim = json!([{"room": "live:*", "rights": ["join", "presence"]}, news]);
    let host_claim = json!([{"room": "live:*", "rights": ["join", "publish"]}, news]);
    let mut viewer = user(&server, "viewer", Some(viewer_claim)).await;
    let mut host = user(&server, "host", Some(host_claim)).await;
    let mut anyone = user(&server, "anyone", None).await;
    // The count room last: from its join on, `occupancy` events, sent on the room's own clock,
    // may come before a reply.
    let occupancy = |f: &Value| f["type"] == "occupancy";
    for c in [&mut viewer, &mut host, &mut anyone] {
        c.join("news:today").await;
        c.join("live:keynote").await;
    }
    let publish_live = json!({"type": "publish", "room": "live:keynote", "body": 1});
    let refused = viewer.call_past(publish_live.clone(), occupancy).await;
    assert_forbidden(&refused, &["publish", "live:"]);
    let refused = anyone.call_past(publish_live, occupancy).await;
    assert_forbidden(&refused, &["granted"]);
    let welcome = json!({"type": "publish", "room": "live:keynote", "body": "welcome"});
    assert_eq!(host.call_past(welcome, occupancy).await["seq"], 1);
    for c in [&mut viewer, &mut anyone] {
        let got = c.recv_type("message").await;
        assert_room_msg(&got, "live:keynote", "host", &json!("welcome"));
    }
    for c in [&mut host, &mut anyone] {
        let publish_news = json!({"type": "publish", "room": "news:today", "body": 1});
        let refused = c.call_past(publish_news, occupancy).await;
        assert_forbidden(&refused, &["server API", "news:"]);
    }
    let posted = api_publish(&server, "news:today", json!("from the newsroom")).await;
    assert_eq!((posted.status, &posted.body), (200, &json!({"seq": 1})));
    for c in [&mut viewer, &mut host, &mut anyone] {
        let got = c.recv_type("message").await;
        assert_room_msg(&got, "news:today", "system", &json!("from the newsroom"));
    }
}

/// A token grants rights by room and by `prefix*`: a room no grant matches cannot be joined,
/// and without `history` neither `history` nor a `join` with `since` is served.
#[tokio::test(flavor = "multi_thread")]
async fn rights_in_tokens_gate_join_history_and_presence() {
    let server = TestServer::start(rules);
    let claim = json!(["lobby", {"room": "live:*", "rights": ["join"]}]);
    let mut c = user(&server, "c", Some(claim)).await;
    assert_eq!(
        c.welcome["rooms"],
        json!(["lobby"]),
        "plain names are joined at connect"
    );
    let refused = c.call(json!({"type": "join", "room": "elsewhere"})).await;
    assert_forbidden(&refused, &["join"]);
    assert_eq!(c.join("live:a").await, 0);
    let refused = c.call(json!({"type": "history", "room": "live:a"})).await;
    assert_forbidden(&refused, &["history"]);
    c.leave("live:a").await;
    let refused = c
        .call(json!({"type": "join", "room": "live:a", "since": 0}))
        .await;
    assert_forbidden(&refused, &["history"]);
    let refused = c.call(json!({"type": "presence", "room": "live:a"})).await;
    assert_eq!(refused["code"], "not_member", "{refused}");
    c.join("live:a").await;
    let refused = c.call(json!({"type": "presence", "room": "live:a"})).await;
    assert_forbidden(&refused, &["presence"]);
    // The plain name in the claim has every right.
    assert_eq!(c.publish("lobby", json!("hi")).await, 1);
    assert_eq!(seqs(&c.history_all("lobby").await), [1]);
    // `presence = "off"`: no one may ask, whatever the token.
    let mut free = user(&server, "free", None).await;
    free.join("quiet:x").await;
    let refused = free
        .call(json!({"type": "presence", "room": "quiet:x"}))
        .await;
    assert_forbidden(&refused, &["off"]);
}

/// A `count` room sends no `joined`/`left`; many joins inside one interval make one
/// `occupancy` event; `presence` answers the count; a member whose connection drops without a
/// close is subtracted.
#[tokio::test(flavor = "multi_thread")]
async fn a_count_room_coalesces_occupancy_and_sends_no_presence_events() {
    let server = TestServer::start(|c| {
        rules(c);
        c.occupancy_interval_ms = 400;
    });
    let grant = || Some(json!([{"room": "live:*", "rights": ["join", "presence"]}]));
    let mut watcher = user(&server, "watcher", grant()).await;
    watcher.join("live:k").await;
    let mut others = Vec::new();
    for i in 0..5 {
        let mut c = user(&server, &format!("u{i}"), grant()).await;
        c.join("live:k").await;
        others.push(c);
    }
    let got = watcher.recv_json().await;
    assert_eq!(
        got,
        json!({"type": "occupancy", "room": "live:k", "members": 6}),
        "five joins, one event"
    );
    watcher.assert_silent(Duration::from_millis(600)).await;
    let reply = watcher
        .call(json!({"type": "presence", "room": "live:k"}))
        .await;
    assert_eq!(
        (&reply["mode"], &reply["members"]),
        (&json!("count"), &json!(6)),
        "{reply}"
    );
    assert!(
        reply.get("users").is_none(),
        "no names in a count room: {reply}"
    );
    // One leaves politely, one drops its TCP connection without a close.
    let (_, left) = others[0]
        .request(json!({"type": "leave", "room": "live:k"}))
        .await;
    assert_eq!(left["type"], "ack", "{left}");
    drop(others.pop());
    let got = watcher.recv_type("occupancy").await;
    let members = got["members"].as_u64().unwrap();
    let members = if members == 4 {
        members
    } else {
        assert_eq!(members, 5, "{got}");
        watcher.recv_type("occupancy").await["members"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(members, 4);
}

/// A `list` room past its `presence_list_max` counts: no `joined` for the member over it, an
/// `occupancy` event instead, and `presence` says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_room_past_its_maximum_behaves_as_a_count_room() {
    let server = TestServer::start(rules);
    let mut a = user(&server, "a", None).await;
    a.join("list:r").await;
    let mut b = user(&server, "b", None).await;
    b.join("list:r").await;
    assert_eq!(
        a.recv_json().await,
        json!({"type": "joined", "room": "list:r", "user": "b"})
    );
    let reply = a.call(json!({"type": "presence", "room": "list:r"})).await;
    assert_eq!(reply["mode"], "list", "{reply}");
    let mut c = user(&server, "c", None).await;
    c.join("list:r").await;
    let got = a.recv_json().await;
    assert_eq!(
        got,
        json!({"type": "occupancy", "room": "list:r", "members": 3}),
        "{got}"
    );
    let reply = a.call(json!({"type": "presence", "room": "list:r"})).await;
    assert_eq!(
        (&reply["mode"], &reply["members"]),
        (&json!("count"), &json!(3)),
        "{reply}"
    );
}

/// `max_members`: a new member past it gets `room_full`; a member's second connection and a
/// join after someone left are let in. `recover = false`: `since` replays nothing.
#[tokio::test(flavor = "multi_thread")]
async fn max_members_and_recover_follow_the_rule() {
    let server = TestServer::start(rules);
    let mut a = user(&server, "a", None).await;
    let mut b = user(&server, "b", None).await;
    a.join("small:r").await;
    b.join("small:r").await;
    let mut c = user(&server, "c", None).await;
    let full = c.call(json!({"type": "join", "room": "small:r"})).await;
    assert_eq!(full["code"], "room_full", "{full}");
    assert!(
        full["message"].as_str().unwrap().contains("small:"),
        "{full}"
    );
    let mut a2 = user(&server, "a", None).await;
    a2.join("small:r").await;
    b.leave("small:r").await;
    c.join("small:r").await;

    a.join("small:rec").await;
    a.publish("small:rec", json!(1)).await;
    a.publish("small:rec", json!(2)).await;
    let mut late = user(&server, "late", None).await;
    let ack = late.join_since("small:rec", 0).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (&ack["recovered"], &ack["replayed"]),
        (&json!(false), &json!(0)),
        "{ack}"
    );
    late.assert_silent(QUIET).await;
}

/// History retention comes from the room's rule (`history_messages`), and an old
/// `[[room_retention]]` table still applies where its prefix is the longer.
#[tokio::test(flavor = "multi_thread")]
async fn history_retention_follows_the_rule_and_the_old_alias() {
    let server = TestServer::start(|c| {
        c.retention_interval_ms = 100;
        c.rooms = vec![RoomRule {
            prefix: "short:".into(),
            history_messages: Some(2),
            ..RoomRule::default()
        }];
        c.room_retention = vec![RetentionRule {
            prefix: "short:one".into(),
            messages: 1,
            secs: 0,
        }];
    });
    let mut a = dev(server.addr(), "a").await;
    for room in ["short:r", "short:one", "long"] {
        a.join(room).await;
        publish_numbered(&mut a, room, 1..=4).await;
    }
    for (room, kept) in [("short:r", 2u64), ("short:one", 1), ("long", 4)] {
        let mut reader = dev(server.addr(), &format!("r-{room}")).await;
        reader.join(room).await;
        let what = format!("{room} trimmed to its last {kept}");
        let want: Vec<u64> = (5 - kept..=4).collect();
        eventually(Duration::from_secs(5), &what, async || {
            let mut got = seqs(&reader.history_all(room).await);
            got.sort_unstable();
            (got == want).then_some(())
        })
        .await;
    }
}

/// `GET /api/rooms` lists the rooms with members, the biggest first, each with its rule.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_lists_rooms_with_their_rule_and_members() {
    let server = TestServer::start(rules);
    let mut clients = Vec::new();
    for (room, n) in [("live:big", 3), ("lobby", 2), ("news:x", 1)] {
        for i in 0..n {
            let mut c = user(&server, &format!("{room}-{i}"), None).await;
            c.join(room).await;
            clients.push(c);
        }
    }
    let got = api(server.addr(), "GET", "/api/rooms?limit=2", Some(KEY), "").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        got.body,
        json!({"rooms": [
            {"room": "live:big", "members": 3, "rule": "live:", "publish": "granted", "presence": "count"},
            {"room": "lobby", "members": 2, "rule": "", "publish": "members", "presence": "list"},
        ], "more": true})
    );
    let bad = api(server.addr(), "GET", "/api/rooms?limit=0", Some(KEY), "").await;
    assert_eq!(bad.status, 400, "{bad:?}");
}
