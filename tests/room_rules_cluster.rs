//! Room rules and rights on the Redis engine: three nodes on one real `redis-server`, the rules
//! from a config file, clients spread over the nodes. Member counts are summed across nodes,
//! a count room keeps one count per node in Redis (no entry per connection), a killed node's
//! members are subtracted within `presence_ttl_secs`, and `max_members` holds cluster-wide.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};

const KEY: &str = "room-rules-cluster-api-key";
const TTL_SECS: u64 = 3;

/// The rules of tests/room_rules.rs as a config file: `live:` publish granted, presence count;
/// `news:` publish by the API only; `small:` at most 2 members, no presence; `list:` a list up to
/// 2 members. Occupancy every 100 ms.
fn rules_file(dir: &std::path::Path) -> String {
    let path = dir.join("rules.toml");
    let toml = format!(
        r#"
jwt_secret = "{SECRET}"
api_key = "{KEY}"
occupancy_interval_ms = 100
presence_ttl_secs = {TTL_SECS}

[[rooms]]
prefix = "live:"
publish = "granted"
presence = "count"

[[rooms]]
prefix = "news:"
publish = "api"

[[rooms]]
prefix = "small:"
max_members = 2
presence = "off"

[[rooms]]
prefix = "list:"
presence_list_max = 2
"#
    );
    std::fs::write(&path, toml).expect("write the rules file");
    path.to_string_lossy().into_owned()
}

struct Setup {
    _redis: RedisServer,
    _dir: tempfile::TempDir,
    cluster: Cluster,
}

async fn three_nodes() -> Setup {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = rules_file(dir.path());
    let cluster = Cluster::start(3, &redis.url(), &["--config", &file]).await;
    Setup {
        _redis: redis,
        _dir: dir,
        cluster,
    }
}

/// A client of `user` on node `node`, its token's `rooms` claim `rooms` (`None`: no claim).
async fn user(s: &Setup, node: usize, user: &str, rooms: Option<Value>) -> Client {
    let mut claims = json!({"sub": user, "exp": now_secs() + 3600});
    if let Some(rooms) = rooms {
        claims["rooms"] = rooms;
    }
    Client::connect_token(s.cluster.addr(node), &mint(SECRET, &claims)).await
}

fn viewer_grant() -> Option<Value> {
    Some(json!([{"room": "live:*", "rights": ["join", "presence"]}]))
}

/// The next `occupancy` event; any other frame fails the test.
async fn occupancy(c: &mut Client) -> u64 {
    let got = c.recv_type("occupancy").await;
    got["members"].as_u64().unwrap()
}

/// `request` for a member of a counted room: the events before the reply must be `occupancy`.
async fn ask(c: &mut Client, frame: Value) -> Value {
    let (before, reply) = c.request(frame).await;
    for e in &before {
        assert_eq!(e["type"], "occupancy", "{}: {e}", c.name);
    }
    reply
}

/// The next frame that is not a presence event (`occupancy`, `joined`, `left`).
async fn past_presence(c: &mut Client) -> Value {
    loop {
        let got = c.recv_json().await;
        if !["occupancy", "joined", "left"].contains(&got["type"].as_str().unwrap_or_default()) {
            return got;
        }
    }
}

/// `occupancy` events until one says `members`, within `within`; every frame on the way
/// must be an `occupancy` event (no `joined`/`left`).
async fn occupancy_until(c: &mut Client, members: u64, within: Duration) -> Vec<u64> {
    let until = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match c.next_within(left).await {
            Some(Incoming::Text(text)) => {
                let got: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(got["type"], "occupancy", "{}: {got}", c.name);
                let n = got["members"].as_u64().unwrap();
                seen.push(n);
                if n == members {
                    return seen;
                }
            }
            other => panic!(
                "{}: waiting for occupancy {members} (seen {seen:?}), got {other:?}",
                c.name
            ),
        }
    }
}

/// A count room across three nodes: the join ack and `presence` give the users of every node,
/// `occupancy` follows joins on other nodes with no `joined`/`left`, and Redis holds one count
/// per node (no entry per connection). A killed node's members are subtracted within
/// `presence_ttl_secs`.
#[tokio::test(flavor = "multi_thread")]
async fn a_count_room_sums_its_nodes_and_forgets_a_killed_one() {
    let mut s = three_nodes().await;
    let mut watcher = user(&s, 0, "watcher", viewer_grant()).await;
    let ack = watcher
        .call(json!({"type": "join", "room": "live:k"}))
        .await;
    assert_eq!(
        (&ack["presence"], &ack["members"]),
        (&json!("count"), &json!(1)),
        "{ack}"
    );
    let mut others = Vec::new();
    for (i, node) in [1, 1, 2, 2, 2].into_iter().enumerate() {
        let mut c = user(&s, node, &format!("u{i}"), viewer_grant()).await;
        c.join("live:k").await;
        others.push(c);
    }
    occupancy_until(&mut watcher, 6, TIMEOUT).await;
    watcher.assert_silent(Duration::from_millis(400)).await;
    let reply = ask(
        &mut others[0],
        json!({"type": "presence", "room": "live:k"}),
    )
    .await;
    assert_eq!(
        (&reply["mode"], &reply["members"]),
        (&json!("count"), &json!(6)),
        "{reply}"
    );
    let mut late = user(&s, 2, "late", viewer_grant()).await;
    let ack = late.call(json!({"type": "join", "room": "live:k"})).await;
    assert_eq!(
        ack["members"], 7,
        "the joiner's ack counts every node: {ack}"
    );
    occupancy_until(&mut watcher, 7, TIMEOUT).await;

    // Redis keeps a count per node, not an entry per connection.
    let keys = s._redis.cli(&["--scan", "--pattern", "*live:k*"]).await;
    assert!(
        keys.contains(":occ") && !keys.contains(":pz") && !keys.contains(":pu"),
        "a count room's keys: {keys}"
    );

    // Node 2's four users go with it, within the presence TTL.
    let killed = Instant::now();
    s.cluster.kill(2).await;
    drop(late);
    let wait = Duration::from_secs(TTL_SECS) + Duration::from_millis(1500);
    occupancy_until(&mut watcher, 3, wait).await;
    assert!(killed.elapsed() < wait, "{:?}", killed.elapsed());
    let reply = ask(&mut watcher, json!({"type": "presence", "room": "live:k"})).await;
    assert_eq!(reply["members"], 3, "{reply}");
    // A polite leave on another node is counted too.
    let left = ask(&mut others[0], json!({"type": "leave", "room": "live:k"})).await;
    assert_eq!(left["type"], "ack", "{left}");
    assert_eq!(occupancy(&mut watcher).await, 2);
}

/// A list room past its `presence_list_max`, counted across nodes: `joined` within it,
/// `occupancy` past it, and `presence` answers the count.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_room_past_its_maximum_counts_across_nodes() {
    let s = three_nodes().await;
    let mut a = user(&s, 0, "a", None).await;
    a.join("list:r").await;
    let mut b = user(&s, 1, "b", None).await;
    b.join("list:r").await;
    assert_eq!(
        a.recv_json().await,
        json!({"type": "joined", "room": "list:r", "user": "b"})
    );
    let mut c = user(&s, 2, "c", None).await;
    let ack = c.call(json!({"type": "join", "room": "list:r"})).await;
    assert_eq!(ack["members"], 3, "{ack}");
    assert_eq!(
        a.recv_json().await,
        json!({"type": "occupancy", "room": "list:r", "members": 3})
    );
    let reply = ask(&mut b, json!({"type": "presence", "room": "list:r"})).await;
    assert_eq!(
        (&reply["mode"], &reply["members"]),
        (&json!("count"), &json!(3)),
        "{reply}"
    );
    // Back within the maximum: names again.
    let left = ask(&mut c, json!({"type": "leave", "room": "list:r"})).await;
    assert_eq!(left["type"], "ack", "{left}");
    assert_eq!(occupancy(&mut a).await, 2);
    let reply = ask(&mut b, json!({"type": "presence", "room": "list:r"})).await;
    assert_eq!(reply["mode"], "list", "{reply}");
}

/// `max_members` counts the users of every node: the third user, on a third node, gets
/// `room_full`; once one leaves, it is let in.
#[tokio::test(flavor = "multi_thread")]
async fn max_members_holds_across_nodes() {
    let s = three_nodes().await;
    let mut a = user(&s, 0, "a", None).await;
    let mut b = user(&s, 1, "b", None).await;
    a.join("small:r").await;
    b.join("small:r").await;
    let mut c = user(&s, 2, "c", None).await;
    // Node 1's count reaches Redis at its next occupancy tick.
    let full = eventually(TIMEOUT, "room_full for a third user", async || {
        let reply = c.call(json!({"type": "join", "room": "small:r"})).await;
        if reply["type"] == "ack" {
            c.leave("small:r").await;
            return None;
        }
        Some(reply)
    })
    .await;
    assert_eq!(full["code"], "room_full", "{full}");
    assert!(
        full["message"].as_str().unwrap().contains("small:"),
        "{full}"
    );
    // A second connection of a member is no new member (on the same node: a user connected
    // to two nodes counts once on each).
    let mut a2 = user(&s, 0, "a", None).await;
    a2.join("small:r").await;
    b.leave("small:r").await;
    eventually(TIMEOUT, "a join once b left", async || {
        let reply = c.call(json!({"type": "join", "room": "small:r"})).await;
        (reply["type"] == "ack").then_some(())
    })
    .await;
}

/// Rights and publish modes on a cluster: a viewer may not publish in a `granted` room, the
/// API publishes in an `api` room from any node, and the members on every node get it.
/// `GET /api/rooms` on a node lists its rooms with the users of every node.
#[tokio::test(flavor = "multi_thread")]
async fn rights_publish_modes_and_the_rooms_api_hold_on_a_cluster() {
    let s = three_nodes().await;
    let mut viewer = user(&s, 0, "viewer", viewer_grant()).await;
    let host_grant = json!([{"room": "live:*", "rights": ["join", "publish"]}]);
    let mut host = user(&s, 1, "host", Some(host_grant)).await;
    for c in [&mut viewer, &mut host] {
        c.join("live:show").await;
    }
    let refused = ask(
        &mut viewer,
        json!({"type": "publish", "room": "live:show", "body": 1}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let posted = ask(
        &mut host,
        json!({"type": "publish", "room": "live:show", "body": "on air"}),
    )
    .await;
    assert_eq!(
        (&posted["type"], &posted["seq"]),
        (&json!("ack"), &json!(1))
    );
    let got = past_presence(&mut viewer).await;
    assert_room_msg(&got, "live:show", "host", &json!("on air"));

    let mut readers = Vec::new();
    for node in 0..3 {
        let mut r = user(&s, node, &format!("r{node}"), None).await;
        r.join("news:today").await;
        let refused = r
            .call(json!({"type": "publish", "room": "news:today", "body": 1}))
            .await;
        assert_eq!(refused["code"], "forbidden", "{refused}");
        readers.push(r);
    }
    let body = json!({"room": "news:today", "body": "extra"}).to_string();
    let posted = api(s.cluster.addr(2), "POST", "/api/publish", Some(KEY), &body).await;
    assert_eq!((posted.status, &posted.body), (200, &json!({"seq": 1})));
    for r in &mut readers {
        let got = past_presence(r).await;
        assert_room_msg(&got, "news:today", "system", &json!("extra"));
    }

    let rooms = eventually(TIMEOUT, "both rooms counted", async || {
        let got = api(s.cluster.addr(0), "GET", "/api/rooms", Some(KEY), "").await;
        assert_eq!(got.status, 200, "{got:?}");
        let want = json!({"rooms": [
            {"room": "news:today", "members": 3, "rule": "news:", "publish": "api", "presence": "list"},
            {"room": "live:show", "members": 2, "rule": "live:", "publish": "granted", "presence": "count"},
        ], "more": false});
        (got.body == want).then_some(got.body)
    })
    .await;
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 2);
}
