//! Three shardcast nodes on a real Redis Cluster of three masters (`redis-server
//! --cluster-enabled yes`, joined with `redis-cli --cluster create`): the same code as on one
//! Redis, with rooms and inboxes hashed to slots on different masters (SPUBLISH/SSUBSCRIBE).

mod common;

use common::cluster::{Cluster, publish_everywhere, read_room};
use common::redis::RedisCluster;
use common::*;
use serde_json::json;

/// The masters (of 3, by the slot ranges `--cluster create` assigns) that hold `tags`.
async fn masters_of(redis: &RedisCluster, tags: &[String]) -> Vec<u64> {
    let mut masters = Vec::new();
    for tag in tags {
        let slot: u64 = redis.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", &format!("{{{tag}}}")])
            .await
            .trim()
            .parse()
            .expect("a slot number");
        masters.push(slot * 3 / 16384);
    }
    masters.sort();
    masters.dedup();
    masters
}

#[tokio::test(flavor = "multi_thread")]
async fn rooms_and_inboxes_on_every_master_keep_their_order_and_recover() {
    let redis = RedisCluster::start(3).await;
    // Node 0 gets every master as a seed; nodes 1 and 2 one master each, and must find the
    // rest of the Redis Cluster by themselves.
    let seeds = redis.url();
    let (one, two) = (redis.nodes[1].url(), redis.nodes[2].url());
    let args = ["--presence-events", "false"];
    let cluster = Cluster::start_with_urls(&[&seeds, &one, &two], &args).await;
    let rooms = ["r0", "r1", "r2", "r3", "r4", "r5"];
    let tags: Vec<String> = rooms.iter().map(|r| format!("r:{r}")).collect();
    assert_eq!(
        masters_of(&redis, &tags).await,
        [0, 1, 2],
        "rooms on every master"
    );

    // Publish order: a, b, c on three nodes, six rooms, concurrent publishes.
    let mut clients = Vec::new();
    for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
        let mut c = dev(cluster.addr(i), user).await;
        for room in rooms {
            assert_eq!(c.join(room).await, 0, "{user}: fresh room {room}");
        }
        clients.push(c);
    }
    publish_everywhere(&mut clients, &rooms, 5).await;

    // Recovery: c leaves, a publishes 3 more per room, c comes back on node 1 with since 15.
    let c = clients.pop().unwrap();
    c.close().await;
    for room in rooms {
        publish_numbered(&mut clients[0], room, 16..=18).await;
    }
    let mut c = dev(cluster.addr(1), "c").await;
    for room in rooms {
        let ack = c.join_since(room, 15).await;
        assert_recovery(&ack, 18, true, 3, false);
        let (replay, _) = read_room(&mut c, room, 15, 18, TIMEOUT).await;
        assert_room_msgs(&replay, room, "a", 16..=18);
    }

    // Direct messages to inboxes on every master: users online on each node, and offline
    // users whose inbox waits until they connect.
    let users: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let tags: Vec<String> = users.iter().map(|u| format!("u:{u}")).collect();
    assert_eq!(
        masters_of(&redis, &tags).await,
        [0, 1, 2],
        "inboxes on every master"
    );
    let (online, offline) = users.split_at(3);
    let mut receivers = Vec::new();
    for (i, user) in online.iter().enumerate() {
        receivers.push(dev(cluster.addr(i), user).await);
    }
    let a = &mut clients[0];
    for user in users.iter() {
        dm_numbered(a, user, 1..=2).await;
    }
    for r in &mut receivers {
        let name = r.name.clone();
        assert_dms(&r.recv_n(2).await, &name, "a", 1..=2);
    }
    for (i, user) in offline.iter().enumerate() {
        let mut r = dev(cluster.addr((i + 1) % 3), user).await;
        assert_eq!(r.welcome["inbox_seq"], 2, "{}", r.welcome);
        assert_dms(&r.recv_n(2).await, user, "a", 1..=2);
        let (page, more) = r.sync(1).await;
        assert_eq!((seqs(&page), more), (vec![2], false));
    }
    let ack = a.call(json!({"type": "ping"})).await;
    assert_eq!(ack["type"], "pong");

    // Idempotency keys live in each stream's hash tag, on its master: a repeat is a dup in
    // rooms and inboxes on every master.
    let streams = (rooms.iter().map(|r| ("room", r.to_string())))
        .chain(users.iter().map(|u| ("to", u.clone())));
    for (field, name) in streams {
        let ty = if field == "room" { "publish" } else { "send" };
        let frame = json!({"type": ty, field: name, "key": "k", "body": "once"});
        let first = a.call(frame.clone()).await;
        let again = a.call(frame).await;
        assert_eq!(first["type"], "ack", "{first}");
        assert_eq!(
            (&again["seq"], &again["dup"]),
            (&first["seq"], &json!(true)),
            "{again}"
        );
    }
}
