//! Session policies: `multi` up to `max_connections_per_user` (then HTTP 429
//! `connection_limit`), `kick_old` (older connections closed with 4500), and `reject_new`
//! (HTTP 409 `session_exists` while the user is connected, accepted again once gone).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use shardcast::config::SessionPolicy;

const PROPAGATE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn multi_allows_up_to_the_per_user_limit() {
    let server = TestServer::start(|c| {
        c.session_policy = SessionPolicy::Multi;
        c.max_connections_per_user = 3;
        c.presence_events = false;
    });
    let addr = server.addr();
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(dev(addr, "a").await);
    }
    match connect(addr, "/ws?user=a", &[]).await {
        Ok(c) => panic!("a 4th connection must be refused, got {}", c.welcome),
        Err(r) => r.assert(429, "connection_limit"),
    }

    // The limit is per user: b is fine, and all three of a's connections work.
    let mut b = dev(addr, "b").await;
    let seq = b.dm("a", json!("to every device")).await;
    for a in &mut conns {
        let got = a.recv_json().await;
        assert_eq!(assert_dm(&got, "a", "b", &json!("to every device")), seq);
        a.ping().await;
    }

    // Once one disconnects, a new one is accepted.
    conns.pop().unwrap().close().await;
    let mut again = retry_dev(addr, "a", PROPAGATE)
        .await
        .unwrap_or_else(|r| panic!("a connection must be accepted again after a close: {r:?}"));
    again.ping().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_default_limit_is_16() {
    let server = TestServer::start(|c| c.presence_events = false);
    let addr = server.addr();
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(dev(addr, "a").await);
    }
    match connect(addr, "/ws?user=a", &[]).await {
        Ok(c) => panic!("a 17th connection must be refused, got {}", c.welcome),
        Err(r) => r.assert(429, "connection_limit"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kick_old_closes_older_connections_with_4500() {
    let server = TestServer::start(|c| {
        c.session_policy = SessionPolicy::KickOld;
        c.presence_events = false;
    });
    let addr = server.addr();
    let mut old = dev(addr, "a").await;
    old.join("r").await;

    let mut new = dev(addr, "a").await;
    old.expect_close(4500).await;
    new.ping().await;

    // The new connection is the user's only one: it gets a's direct messages.
    let mut b = dev(addr, "b").await;
    let seq = b.dm("a", json!("hello new")).await;
    let got = new.recv_json().await;
    assert_eq!(assert_dm(&got, "a", "b", &json!("hello new")), seq);

    // And it is replaced in turn.
    let mut newest = dev(addr, "a").await;
    new.expect_close(4500).await;
    newest.ping().await;
    // Other users are not affected.
    b.ping().await;
    b.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_new_refuses_while_connected() {
    let server = TestServer::start(|c| {
        c.session_policy = SessionPolicy::RejectNew;
        c.presence_events = false;
    });
    let addr = server.addr();
    let mut first = dev(addr, "a").await;
    match connect(addr, "/ws?user=a", &[]).await {
        Ok(c) => panic!("a second connection must be refused, got {}", c.welcome),
        Err(r) => r.assert(409, "session_exists"),
    }
    // The first one is untouched, and other users are not affected.
    first.ping().await;
    let mut b = dev(addr, "b").await;
    b.ping().await;

    // After a clean close, a new connection is accepted again.
    first.close().await;
    let mut second = retry_dev(addr, "a", PROPAGATE)
        .await
        .unwrap_or_else(|r| panic!("must be accepted once the first is gone: {r:?}"));
    second.ping().await;

    // After an abrupt disconnect (TCP dropped, no close frame) too.
    drop(second);
    let mut third = retry_dev(addr, "a", PROPAGATE)
        .await
        .unwrap_or_else(|r| panic!("must be accepted once the second is gone: {r:?}"));
    third.ping().await;
}

/// Handshakes abandoned at every stage (the client resets the TCP connection right after
/// sending the upgrade request) must not leave the user counted as connected at their home
/// shard: under `reject_new` that would lock the user out for good.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_handshakes_do_not_lock_the_user_out() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(|c| {
        c.session_policy = SessionPolicy::RejectNew;
        c.presence_events = false;
        c.shards = 2;
    });
    let addr = server.addr();
    let request = format!(
        "GET /ws?user=a HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    for i in 0..300u64 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        // Vary how long the handshake gets before the reset, to land in every stage.
        if i % 3 > 0 {
            tokio::time::sleep(Duration::from_micros(50 * (i % 7))).await;
        }
        // A reset, not a FIN: the server sees the connection fail, not end.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    let mut a = retry_dev(addr, "a", PROPAGATE)
        .await
        .unwrap_or_else(|r| panic!("user a is still counted as connected: {r:?}"));
    a.ping().await;
}

/// The users' homes forget a user once its last connection is gone: after 3,000 distinct users
/// connect once each (sessions of 8 at a time), the users homed add up to those still online.
#[tokio::test(flavor = "multi_thread")]
async fn homes_forget_users_whose_connections_are_gone() {
    let server = TestServer::start(|c| {
        c.shards = 4;
        c.presence_events = false;
    });
    let addr = server.addr();
    let mut kept = Vec::new();
    for batch in 0..375 {
        let mut open = Vec::new();
        for i in 0..8 {
            open.push(dev(addr, &format!("user-{batch}-{i}")).await);
        }
        for (i, c) in open.into_iter().enumerate() {
            if batch % 25 == 0 && i == 0 {
                kept.push(c);
            } else {
                c.close().await;
            }
        }
    }
    let homed = |body: &str| -> u64 {
        body.lines()
            .filter(|l| l.starts_with("shardcast_users_homed{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    eventually(PROPAGATE, "users homed back to those online", async || {
        let body = Http::connect(addr).await.get("/metrics", &[]).await.body;
        (homed(&body) == kept.len() as u64).then_some(())
    })
    .await;
    assert_eq!(kept.len(), 15);
}
