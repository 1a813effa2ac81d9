//! The cluster mode as clients and the server API see it: three shardcast nodes
//! (`--engine redis`) on one real `redis-server` each test starts, with real WebSocket clients
//! spread over the nodes (users a, b and c each on a different one). Everything that works on
//! one node must work across nodes: rooms, direct messages, the offline inbox, presence,
//! session policies, history, the API. Faults are in tests/cluster_faults.rs; a Redis
//! Cluster in tests/redis_cluster.rs.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, metric_sum, publish_everywhere, read_room, read_until};
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};

/// A Redis and three nodes with `extra` arguments.
async fn cluster(extra: &[&str]) -> (RedisServer, Cluster) {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(3, &redis.url(), extra).await;
    (redis, cluster)
}

/// Users a, b, c: a on node 0, b on node 1, c on node 2.
async fn abc(cluster: &Cluster) -> Vec<Client> {
    let mut clients = Vec::new();
    for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
        clients.push(dev(cluster.addr(i), user).await);
    }
    clients
}

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread")]
async fn a_room_has_one_order_across_nodes_and_its_history_is_shared() {
    let (_redis, cluster) = cluster(&["--presence-events", "false"]).await;
    let mut clients = abc(&cluster).await;
    for c in &mut clients {
        assert_eq!(c.join("lobby").await, 0, "{}: a fresh room", c.name);
    }
    // 3 × 30 concurrent publishes from three nodes: every member gets every other member's
    // message once, seq 1..=90, the same order everywhere.
    publish_everywhere(&mut clients, &["lobby"], 30).await;

    // History and join with since read the same stream from any node.
    let mut d = dev(cluster.addr(1), "d").await;
    let ack = d.join_since("lobby", 85).await;
    assert_recovery(&ack, 90, true, 5, false);
    let (replay, _) = read_room(&mut d, "lobby", 85, 90, TIMEOUT).await;
    let history = clients[2].history_all("lobby").await;
    assert_eq!(seqs(&history), (1..=90).rev().collect::<Vec<_>>());
    assert_eq!(
        &history[..5],
        replay.iter().rev().cloned().collect::<Vec<_>>()
    );
    let (page, more) = clients[0].history("lobby", Some(5), Some(2)).await;
    assert_eq!((seqs(&page), more), (vec![4, 3], true));
    assert_eq!(page[0], history[86], "history pages agree across nodes");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_streams_are_trimmed_by_count_and_by_age() {
    let args = [
        "--presence-events",
        "false",
        "--room-retention-messages",
        "5",
        "--inbox-retention-secs",
        "1",
    ];
    let (_redis, cluster) = cluster(&args).await;
    let mut a = dev(cluster.addr(0), "a").await;
    a.join("r").await;
    publish_numbered(&mut a, "r", 1..=10).await;
    // By count: node 1 reads the newest 5, and a since before them cannot fully recover.
    let mut b = dev(cluster.addr(1), "b").await;
    let ack = b.join_since("r", 2).await;
    assert_recovery(&ack, 10, false, 5, false);
    assert_room_msgs(&b.recv_n(5).await, "r", "a", 6..=10);
    let (page, more) = b.history("r", None, None).await;
    assert_eq!((seqs(&page), more), ((6..=10).rev().collect(), false));

    // By age: c's inbox keeps what is under a second old.
    dm_numbered(&mut a, "c", 1..=3).await;
    // The wait lets messages 1..=3 age past the retention; it measures nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    dm_numbered(&mut a, "c", 4..=4).await;
    let mut c = dev(cluster.addr(2), "c").await;
    assert_eq!(c.welcome["inbox_seq"], 4, "{}", c.welcome);
    assert_dms(&c.recv_n(1).await, "c", "a", 4..=4);
    let (all, _) = c.sync(0).await;
    assert_dms(&all, "c", "a", 4..=4);
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_messages_cross_nodes_and_the_inbox_waits_in_redis() {
    let (_redis, cluster) = cluster(&[]).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut a2 = dev(cluster.addr(1), "a").await;
    let mut b = dev(cluster.addr(2), "b").await;

    // a (node 0) to b (node 2): b gets it, and so does a's other connection on node 1.
    let body = json!({"text": "hi b"});
    assert_eq!(a.dm("b", body.clone()).await, 1);
    assert_dm(&b.recv_json().await, "b", "a", &body);
    assert_dm(&a2.recv_json().await, "b", "a", &body);
    // b answers: both of a's connections get it, on two nodes.
    let reply = json!("hi a");
    assert_eq!(b.dm("a", reply.clone()).await, 1);
    assert_dm(&a.recv_json().await, "a", "b", &reply);
    assert_dm(&a2.recv_json().await, "a", "b", &reply);
    a.assert_silent(QUIET).await;

    // c is offline: the inbox keeps a's messages, delivered at connect on another node.
    dm_numbered(&mut a, "c", 1..=3).await;
    assert_dms(&a2.recv_n(3).await, "c", "a", 1..=3);
    let mut c = dev(cluster.addr(1), "c").await;
    assert_eq!(c.welcome["inbox_seq"], 3, "{}", c.welcome);
    assert_dms(&c.recv_n(3).await, "c", "a", 1..=3);
    let (all, more) = c.sync(0).await;
    assert!(!more);
    assert_dms(&all, "c", "a", 1..=3);
    let (rest, _) = c.sync(2).await;
    assert_dms(&rest, "c", "a", 3..=3);
    c.close().await;
    // Delivered once: a new connection on node 2 gets no replay, only its own reply.
    let mut c = dev(cluster.addr(2), "c").await;
    c.ping().await;
    // Live delivery to the new connection, from node 1.
    assert_eq!(a2.dm("c", json!(4)).await, 4);
    assert_dm(&c.recv_json().await, "c", "a", &json!(4));
    assert_dm(&a.recv_json().await, "c", "a", &json!(4));
}

/// The `presence` query's users; presence events about `c`'s own user may come first.
async fn present(c: &mut Client, room: &str) -> Value {
    let reply = c
        .call_past_own_presence(json!({"type": "presence", "room": room}))
        .await;
    assert_eq!(reply["type"], "presence", "{}: {reply}", c.name);
    reply["users"].clone()
}

fn event(ty: &str, user: &str) -> Value {
    json!({"type": ty, "room": "room", "user": user})
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_is_cluster_wide_with_joined_and_left_across_nodes() {
    let (_redis, cluster) = cluster(&[]).await;
    let [mut a, mut b, mut c]: [Client; 3] = abc(&cluster).await.try_into().ok().unwrap();
    let join = json!({"type": "join", "room": "room"});
    a.call_past_own_presence(join.clone()).await;
    b.call_past_own_presence(join.clone()).await;
    assert_eq!(a.recv_past_own_presence().await, event("joined", "b"));
    c.call_past_own_presence(join.clone()).await;
    for x in [&mut a, &mut b] {
        let joined = x.recv_past_own_presence().await;
        assert_eq!(joined, event("joined", "c"), "{}", x.name);
    }
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(
            present(x, "room").await,
            json!(["a", "b", "c"]),
            "{}",
            x.name
        );
    }

    // b's second connection, on node 2: not b's first, so no `joined`; b's first leaving is
    // not b's last, so no `left`. d joining is the marker: the next event a and c see.
    let mut b2 = dev(cluster.addr(2), "b").await;
    b2.call_past_own_presence(join.clone()).await;
    b.call_past_own_presence(json!({"type": "leave", "room": "room"}))
        .await;
    let mut d = dev(cluster.addr(1), "d").await;
    d.call_past_own_presence(join.clone()).await;
    for x in [&mut a, &mut c, &mut b2] {
        let next = x.recv_past_own_presence().await;
        assert_eq!(
            next,
            event("joined", "d"),
            "{}: no event for b's second connection",
            x.name
        );
    }
    assert_eq!(present(&mut a, "room").await, json!(["a", "b", "c", "d"]));
    // b's last connection leaving anywhere: `left`.
    b2.call_past_own_presence(json!({"type": "leave", "room": "room"}))
        .await;
    for x in [&mut a, &mut c, &mut d] {
        let left = x.recv_past_own_presence().await;
        assert_eq!(left, event("left", "b"), "{}", x.name);
    }
    // A closed connection leaves its rooms too.
    c.close().await;
    assert_eq!(a.recv_past_own_presence().await, event("left", "c"));
    assert_eq!(present(&mut a, "room").await, json!(["a", "d"]));
    let (status, body) = cluster
        .api(1, "GET", "/api/rooms/room/presence", None)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"room":"room","mode":"list","users":["a","d"]}))
    );
    a.assert_silent(QUIET).await;
}

/// The Redis engine pages `presence` the same way: 250 members on three nodes, read from one
/// node 100 at a time, each exactly once, with `more` on all pages but the last.
#[tokio::test(flavor = "multi_thread")]
async fn presence_pages_cover_a_room_spread_over_nodes() {
    let (_redis, cluster) = cluster(&["--presence-events", "false"]).await;
    let mut members = Vec::new();
    for i in 0..250 {
        let mut m = dev(cluster.addr(i % 3), &format!("m{i:03}")).await;
        m.join("big").await;
        members.push(m);
    }
    let everyone: Vec<String> = (0..250).map(|i| format!("m{i:03}")).collect();
    let (all, pages) = members[0].presence_all("big", 100).await;
    assert_eq!((all, pages), (everyone.clone(), 3));
    let (page, more) = members[1].presence_page("big", Some("m199"), None).await;
    assert_eq!((page, more), (everyone[200..].to_vec(), false));
    let (page, more) = members[2].presence_page("big", None, None).await;
    assert_eq!((page, more), (everyone[..100].to_vec(), true));
}

#[tokio::test(flavor = "multi_thread")]
async fn kick_old_closes_the_old_connection_on_another_node() {
    let (_redis, cluster) = cluster(&["--session-policy", "kick_old"]).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut a2 = dev(cluster.addr(1), "a").await;
    a.expect_close(4500).await;
    a2.ping().await;
    let mut a3 = dev(cluster.addr(2), "a").await;
    a2.expect_close(4500).await;
    a3.ping().await;
}

/// Under `args`, a holds a connection on each node in `held` (node 0 first); then every node
/// refuses one more with `status` and `code`, and once a's first connection is closed, node 2
/// accepts one again.
async fn user_limit_across_nodes(args: &[&str], held: &[usize], status: u16, code: &str) {
    let (_redis, cluster) = cluster(args).await;
    let mut conns = Vec::new();
    for &node in held {
        conns.push(dev(cluster.addr(node), "a").await);
    }
    for node in 0..3 {
        match connect(cluster.addr(node), "/ws?user=a", &[]).await {
            Err(refusal) => refusal.assert(status, code),
            Ok(_) => panic!("node {node} accepted one more connection of a ({args:?})"),
        }
    }
    conns.remove(0).close().await;
    let mut again = retry_dev(cluster.addr(2), "a", TIMEOUT)
        .await
        .unwrap_or_else(|r| panic!("a closed a connection, yet a new one is refused: {r:?}"));
    again.ping().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_new_refuses_a_second_connection_on_any_node() {
    user_limit_across_nodes(
        &["--session-policy", "reject_new"],
        &[0],
        409,
        "session_exists",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_per_user_counts_every_node() {
    let args = ["--max-connections-per-user", "2"];
    user_limit_across_nodes(&args, &[0, 1], 429, "connection_limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_api_works_on_any_node() {
    let (_redis, cluster) = cluster(&["--presence-events", "false"]).await;
    let mut clients = abc(&cluster).await;
    for c in &mut clients {
        c.join("r").await;
    }
    // a's second connection, on node 2, in no room.
    let mut a2 = dev(cluster.addr(2), "a").await;

    // publish on node 1 reaches members on every node.
    let published = json!({"room":"r","body":{"x":1}});
    let (status, body) = cluster
        .api(1, "POST", "/api/publish", Some(published))
        .await;
    assert_eq!((status, body), (200, json!({"seq": 1})));
    for c in &mut clients {
        assert_room_msg(&c.recv_json().await, "r", "system", &json!({"x":1}));
    }
    // send on node 2 reaches a's connections on nodes 0 and 2.
    let sent = json!({"to":"a","body":"hi","from":"shop"});
    let (status, body) = cluster.api(2, "POST", "/api/send", Some(sent)).await;
    assert_eq!((status, body), (200, json!({"seq": 1})));
    assert_dm(&clients[0].recv_json().await, "a", "shop", &json!("hi"));
    assert_dm(&a2.recv_json().await, "a", "shop", &json!("hi"));

    let (_, presence) = cluster.api(0, "GET", "/api/rooms/r/presence", None).await;
    assert_eq!(
        presence,
        json!({"room":"r","mode":"list","users":["a","b","c"]})
    );
    let (_, history) = cluster.api(2, "GET", "/api/rooms/r/history", None).await;
    assert_eq!(
        seqs(history["messages"].as_array().unwrap()),
        [1],
        "{history}"
    );
    assert_room_msg(&history["messages"][0], "r", "system", &json!({"x":1}));
    let users_a = eventually(TIMEOUT, "a has 2 connections cluster-wide", async || {
        let (_, user) = cluster.api(1, "GET", "/api/users/a", None).await;
        (user["connections"] == 2).then_some(user)
    })
    .await;
    assert_eq!(users_a, json!({"user":"a","online":true,"connections":2}));
    // stats: this node's figures, and the cluster's totals over the three nodes.
    let stats = eventually(
        Duration::from_secs(10),
        "stats count 4 connections",
        async || {
            let (_, stats) = cluster.api(0, "GET", "/api/stats", None).await;
            (stats["cluster"]["connections"] == 4).then_some(stats)
        },
    )
    .await;
    assert_eq!(stats["cluster"]["nodes"], 3, "{stats}");
    assert_eq!(stats["cluster"]["node"], 0, "{stats}");
    assert_eq!(
        stats["total"]["connections"], 1,
        "node 0 holds a only: {stats}"
    );

    // broadcast on node 0 reaches every connection on every node.
    let (status, body) = cluster
        .api(0, "POST", "/api/broadcast", Some(json!({"body":"all"})))
        .await;
    assert_eq!(
        (status, &body["connections"], &body["nodes"]),
        (200, &json!(1), &json!(3))
    );
    for c in clients.iter_mut().chain([&mut a2]) {
        let m = c.recv_json().await;
        assert_eq!(
            (&m["type"], &m["from"], &m["body"]),
            (&json!("message"), &json!("system"), &json!("all")),
            "{}: {m}",
            c.name
        );
        assert!(m.get("seq").is_none() && m.get("room").is_none(), "{m}");
    }

    let metrics = cluster.metrics(1).await;
    let round_trips = metric_sum(&metrics, "shardcast_redis_round_trips_total");
    assert!(
        round_trips > 0.0,
        "node 1 counts no Redis round trip:\n{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "shardcast_redis_errors_total"),
        0.0,
        "Redis errors with Redis up:\n{metrics}"
    );

    // disconnect on node 1 closes a's connections on nodes 0 and 2 (node 1 holds none): the
    // two nodes that hold them get it.
    let kick = json!({"user":"a","reason":"bye"});
    let (status, body) = cluster.api(1, "POST", "/api/disconnect", Some(kick)).await;
    assert_eq!((status, body), (200, json!({"connections":0,"nodes":2})));
    clients[0].expect_close(4501).await;
    a2.expect_close(4501).await;
    eventually(TIMEOUT, "a has no connection left", async || {
        let (_, user) = cluster.api(2, "GET", "/api/users/a", None).await;
        (user["online"] == false && user["connections"] == 0).then_some(())
    })
    .await;
    clients[1].ping().await;
}

/// The seeds' users a, b, c chat across three nodes, with presence events on (as a real
/// chat runs): a room with the three of them and direct messages.
#[tokio::test(flavor = "multi_thread")]
async fn three_users_on_three_nodes_chat() {
    let (_redis, cluster) = cluster(&[]).await;
    let [mut a, mut b, mut c]: [Client; 3] = abc(&cluster).await.try_into().ok().unwrap();
    for x in [&mut a, &mut b, &mut c] {
        x.call_past_own_presence(json!({"type": "join", "room": "chat"}))
            .await;
    }
    let deadline = Instant::now() + TIMEOUT;
    for x in [&mut a, &mut b] {
        read_until(x, "joined c", deadline, |f| f["user"] == "c").await;
    }
    let hello = json!("hello from a");
    let ack = a
        .call_past_own_presence(json!({"type": "publish", "room": "chat", "body": hello}))
        .await;
    assert_eq!(ack["seq"], 1, "{ack}");
    for x in [&mut b, &mut c] {
        assert_room_msg(&x.recv_past_own_presence().await, "chat", "a", &hello);
    }
    assert_eq!(c.publish("chat", json!("hi a, c here")).await, 2);
    for x in [&mut a, &mut b] {
        assert_room_msg(&x.recv_json().await, "chat", "c", &json!("hi a, c here"));
    }
    assert_eq!(b.dm("c", json!("psst")).await, 1);
    assert_dm(&c.recv_json().await, "c", "b", &json!("psst"));
    for x in [&mut a, &mut b, &mut c] {
        x.assert_silent(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_reach_redis_with_a_password_over_tcp_and_a_unix_socket() {
    // An ACL user besides the default one: the fourth node logs in with a username
    // (`AUTH user password`, also on the subscription connection we read ourselves).
    let acl = ["sc", "on", ">pw2", "~*", "&*", "+@all"];
    let redis =
        RedisServer::start_with(&[&["--requirepass", "s3cret", "--user"][..], &acl].concat()).await;
    let tcp = format!("redis://:s3cret@127.0.0.1:{}", redis.port());
    let unix = format!("redis+unix://{}?pass=s3cret", redis.unix_socket().display());
    let tcp_db0 = format!("{tcp}/0");
    let user = format!("redis://sc:pw2@127.0.0.1:{}", redis.port());
    let args = ["--presence-events", "false"];
    let cluster = Cluster::start_with_urls(&[&tcp, &unix, &tcp_db0, &user], &args).await;
    let mut clients = abc(&cluster).await;
    clients.push(dev(cluster.addr(3), "d").await);
    for c in &mut clients {
        c.join("r").await;
    }
    publish_everywhere(&mut clients, &["r"], 5).await;

    // A wrong password: the node does not start, and says why without printing it.
    let wrong = format!("redis://:badpw123@127.0.0.1:{}", redis.port());
    let out = node_refused_by_redis(&wrong).await;
    assert!(!out.contains("badpw123"), "the password is printed:\n{out}");
    assert!(
        out.to_lowercase().contains("authentication"),
        "the error does not say why:\n{out}"
    );
}

/// A node on `url` that must stop at start, naming the Redis (password masked); returns what
/// it printed.
async fn node_refused_by_redis(url: &str) -> String {
    let args = [
        "--engine",
        "redis",
        "--redis-url",
        url,
        "--bind",
        "127.0.0.1:0",
    ];
    let mut node = BinaryServer::spawn(&args);
    let status = node.wait_exit(Duration::from_secs(15)).await;
    node.finish_output().await;
    let out = node.output();
    assert!(!status.success(), "the node started on {url}:\n{out}");
    let host = url.rsplit('@').next().unwrap().split("://").last().unwrap();
    assert!(
        out.contains(host),
        "the error names no Redis ({host}):\n{out}"
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_reach_redis_over_tls_with_a_private_ca() {
    let redis = RedisServer::start_tls().await;
    let ca = RedisServer::tls_ca();
    let args = ["--presence-events", "false", "--redis-ca-file", &ca];
    let cluster = Cluster::start(3, &redis.tls_url(), &args).await;
    let mut clients = abc(&cluster).await;
    for c in &mut clients {
        c.join("r").await;
    }
    publish_everywhere(&mut clients, &["r"], 5).await;

    // Without the CA, the public web roots do not vouch for this Redis: the node stops.
    node_refused_by_redis(&redis.tls_url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_without_an_id_get_distinct_ones_from_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let args = [
            "--engine",
            "redis",
            "--redis-url",
            &url,
            "--bind",
            "127.0.0.1:0",
        ];
        nodes.push(BinaryServer::spawn(&args));
    }
    let mut ids = Vec::new();
    let mut addrs = Vec::new();
    for node in &mut nodes {
        let addr = node.listening_addr().await;
        let reply = Http::connect(addr).await.get("/api/stats", &[]).await;
        let stats: Value = serde_json::from_str(&reply.body).unwrap();
        ids.push(stats["cluster"]["node"].clone());
        addrs.push(addr);
    }
    assert!(ids.iter().all(Value::is_u64), "{ids:?}");
    assert_ne!(ids[0], ids[1], "two nodes got the same id");
    // And they work together.
    let mut a = dev(addrs[0], "a").await;
    let mut b = dev(addrs[1], "b").await;
    assert_eq!(a.dm("b", json!("hi")).await, 1);
    assert_dm(&b.recv_json().await, "b", "a", &json!("hi"));
}

/// Idempotent publish and send on the Redis engine: the key is checked and stored by the script
/// that assigns the seq, so a repeat on any node (another connection of the sender's, or the
/// API with `Idempotency-Key`) gets the first seq with `dup` and reaches no one.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_key_is_stored_once_on_any_node() {
    let (_redis, cluster) = cluster(&["--presence-events", "false"]).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut a2 = dev(cluster.addr(2), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    a.join("r").await;
    a2.join("r").await;
    b.join("r").await;
    let keyed =
        |key: &str, body: Value| json!({"type": "publish", "room": "r", "key": key, "body": body});
    let first = a.call(keyed("k-1", json!("one"))).await;
    assert_eq!(
        (&first["seq"], first.get("dup")),
        (&json!(1), None),
        "{first}"
    );
    let again = a.call(keyed("k-1", json!("one"))).await;
    assert_eq!(
        (&again["seq"], &again["dup"]),
        (&json!(1), &json!(true)),
        "{again}"
    );
    assert_room_msg(&a2.recv_json().await, "r", "a", &json!("one"));
    let other_node = a2.call(keyed("k-1", json!("changed"))).await;
    assert_eq!(
        (&other_node["seq"], &other_node["dup"]),
        (&json!(1), &json!(true))
    );
    a2.leave("r").await;
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("one"));
    // Another sender's k-1 is another message.
    let bs = b.call(keyed("k-1", json!("b's"))).await;
    assert_eq!((&bs["seq"], bs.get("dup")), (&json!(2), None), "{bs}");
    assert_room_msg(&a.recv_json().await, "r", "b", &json!("b's"));
    // The repeats reached no one: b's next message is a's next publish.
    a.publish("r", json!("unkeyed")).await;
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("unkeyed"));
    assert_eq!(seqs(&b.history_all("r").await), [3, 2, 1]);

    // The API on node 1, by header, and a direct message repeated on another node.
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "api-1"),
    ];
    let body = json!({"room": "r", "body": "from the api"}).to_string();
    for want in [json!({"seq": 4}), json!({"seq": 4, "dup": true})] {
        let reply = cluster
            .http(1)
            .await
            .request("POST", "/api/publish", &headers, &body)
            .await;
        assert_eq!(serde_json::from_str::<Value>(&reply.body).unwrap(), want);
    }
    for member in [&mut a, &mut b] {
        let got = member.recv_json().await;
        assert_room_msg(&got, "r", "system", &json!("from the api"));
    }
    let dm = json!({"type": "send", "to": "c", "key": "dm-1", "body": "hi"});
    assert_eq!(a.call(dm.clone()).await["seq"], 1);
    // a's other connection gets the sender's copy, then repeats the send.
    assert_dm(&a2.recv_json().await, "c", "a", &json!("hi"));
    let repeat = a2.call(dm).await;
    assert_eq!(
        (&repeat["seq"], &repeat["dup"]),
        (&json!(1), &json!(true)),
        "{repeat}"
    );
    let c = dev(cluster.addr(1), "c").await;
    assert_eq!(c.welcome["inbox_seq"], 1, "stored once: {}", c.welcome);
    assert_eq!(seqs(&b.history_all("r").await), [4, 3, 2, 1]);
}

/// Past `idempotency_max_keys`, the Redis engine forgets a stream's oldest keys first: a repeat
/// of the oldest is stored again, the newer ones are still recognised.
#[tokio::test(flavor = "multi_thread")]
async fn redis_forgets_the_oldest_key_past_the_maximum() {
    let args = ["--presence-events", "false", "--idempotency-max-keys", "2"];
    let (_redis, cluster) = cluster(&args).await;
    let mut a = dev(cluster.addr(0), "a").await;
    a.join("r").await;
    let mut publish = async |key: &str| {
        let reply = a
            .call(json!({"type": "publish", "room": "r", "key": key, "body": key}))
            .await;
        (reply["seq"].as_u64().unwrap(), reply["dup"] == true)
    };
    assert_eq!(publish("k1").await, (1, false));
    assert_eq!(publish("k2").await, (2, false));
    assert_eq!(publish("k3").await, (3, false));
    assert_eq!(publish("k3").await, (3, true));
    assert_eq!(publish("k2").await, (2, true));
    assert_eq!(publish("k1").await, (4, false), "k1 was forgotten");
}

/// On the Redis engine too, a keyed message reaches its sender's other connections (on another
/// node) with its `key`, and everyone else without it; so does the copy of a direct message.
#[tokio::test(flavor = "multi_thread")]
async fn the_key_goes_only_to_the_senders_other_connections_across_nodes() {
    let (_redis, cluster) = cluster(&["--presence-events", "false"]).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut a2 = dev(cluster.addr(2), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    for c in [&mut a, &mut a2, &mut b] {
        c.join("r").await;
    }
    let publish = json!({"type": "publish", "room": "r", "key": "k\"1", "body": "hi"});
    assert_eq!(a.call(publish).await["seq"], 1);
    let mine = a2.recv_json().await;
    assert_room_msg(&mine, "r", "a", &json!("hi"));
    assert_eq!(mine["key"], "k\"1", "{mine}");
    let theirs = b.recv_json().await;
    assert_room_msg(&theirs, "r", "a", &json!("hi"));
    assert!(theirs.get("key").is_none(), "{theirs}");

    let send = json!({"type": "send", "to": "b", "key": "dm", "body": "psst"});
    assert_eq!(a.call(send).await["seq"], 1);
    let copy = a2.recv_json().await;
    assert_dm(&copy, "b", "a", &json!("psst"));
    assert_eq!(copy["key"], "dm", "{copy}");
    let got = b.recv_json().await;
    assert!(got.get("key").is_none(), "{got}");
}

/// Idle connections cost Redis nothing each: a node's heartbeat keeps its presence entries and
/// sessions alive, so no script and no `ZADD` runs while nobody joins, leaves or publishes.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_cost_redis_no_command_each() {
    let (redis, cluster) = cluster(&["--presence-ttl-secs", "3"]).await;
    let mut clients = abc(&cluster).await;
    for c in &mut clients {
        c.call_past_own_presence(json!({"type": "join", "room": "r"}))
            .await;
    }
    redis.cli(&["CONFIG", "RESETSTAT"]).await;
    // Three heartbeats of node 0: a third of the TTL (when entries used to be refreshed) is one.
    let mut beats = Vec::new();
    eventually(TIMEOUT, "three heartbeats of node 0", async || {
        let figures = redis.cli(&["HGET", "sc:nodes", "0"]).await;
        if beats.last() != Some(&figures) {
            beats.push(figures);
        }
        (beats.len() > 3).then_some(())
    })
    .await;
    let stats = redis.cli(&["INFO", "commandstats"]).await;
    for cmd in ["cmdstat_zadd:", "cmdstat_evalsha:"] {
        assert!(!stats.contains(cmd), "{cmd} while idle: {stats}");
    }
    assert!(stats.contains("cmdstat_hset:"), "{stats}");
}
