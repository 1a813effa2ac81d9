//! The cluster's batched paths as clients see them: a burst of publishes from one connection
//! leaves its node as one batch of pipelined scripts, and arrives on the other nodes as
//! batches of pub/sub messages handed to each shard at once. Nothing of that may show: every
//! message arrives once, in the order it was sent, whichever rooms the burst spans.

mod common;

use common::cluster::Cluster;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};

const ROOMS: usize = 30;
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_many_rooms_arrives_whole_and_in_order_on_other_nodes() {
    let redis = RedisServer::start().await;
    let args = ["--presence-events", "false"];
    let cluster = Cluster::start(3, &redis.url(), &args).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    let mut c = dev(cluster.addr(2), "c").await;
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("room-{i}")).collect();
    for room in &rooms {
        for x in [&mut a, &mut b, &mut c] {
            assert_eq!(x.join(room).await, 0, "{}: a fresh room", x.name);
        }
    }
    // One write: the node reads the whole burst in one pass.
    let sent: Vec<(String, String)> = (0..ROUNDS)
        .flat_map(|round| {
            rooms
                .iter()
                .map(move |r| (r.clone(), format!("{r}/{round}")))
        })
        .collect();
    let frames: Vec<Value> = (sent.iter().enumerate())
        .map(|(i, (room, body))| json!({"type": "publish", "room": room, "body": body, "id": i}))
        .collect();
    a.send_batch(&frames).await;
    for x in [&mut b, &mut c] {
        let got: Vec<(String, String, u64)> = x
            .recv_n(sent.len())
            .await
            .into_iter()
            .map(|f| {
                assert_eq!(f["type"], "message", "{}: {f}", x.name);
                let room = f["room"].as_str().unwrap().to_owned();
                let body = f["body"].as_str().unwrap().to_owned();
                (room, body, f["seq"].as_u64().unwrap())
            })
            .collect();
        let want: Vec<(String, String, u64)> = (sent.iter().enumerate())
            .map(|(i, (room, body))| (room.clone(), body.clone(), (i / ROOMS + 1) as u64))
            .collect();
        assert_eq!(got, want, "{}: the burst in the order it was sent", x.name);
        x.assert_silent(std::time::Duration::from_millis(300)).await;
    }
    let acks = a.recv_n(sent.len()).await;
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["id"], i, "acks in request order: {ack}");
        assert_eq!(ack["seq"], (i / ROOMS + 1) as u64, "{ack}");
    }
}
