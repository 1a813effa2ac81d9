//! Resource exhaustion: HTTP header size (431), slow handshakes (`handshake_timeout_ms`), the
//! cap on handshakes in progress (`max_handshakes`: the next ones wait; idle keep-alive
//! connections and clients that do not read hold no slot), the keep-alive cap and idle timeout
//! (`max_keepalive_connections`, `keepalive_timeout_ms`), and running out of file descriptors
//! (EMFILE) in the accept loop, tested on the real binary with a lowered `RLIMIT_NOFILE`.
//! The API body limit (413) is in tests/api.rs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `request` on a new connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write the request");
    read_until_closed(&mut tcp).await
}

/// Everything the server sends until it closes the connection, within [`TIMEOUT`].
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    match tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut got)).await {
        Ok(Ok(_)) => {}
        // A reset after the response is fine: what was read is kept.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read: {e}"),
        Err(_) => panic!(
            "the server did not close the connection within {TIMEOUT:?}; got {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_headers_get_431() {
    let server = TestServer::start(|c| c.max_header_bytes = 4096);
    let big = "a".repeat(5000);
    let request = format!("GET /ws?user=u HTTP/1.1\r\nHost: t\r\nX-Pad: {big}\r\n\r\n");
    let response = exchange(server.addr(), request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response:?}");

    // Just under the limit is served.
    let mut http = Http::connect(server.addr()).await;
    let pad = "a".repeat(3000);
    let reply = http.get("/healthz", &[("X-Pad", &pad)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_handshakes_are_closed() {
    // The default is 10 s; TIMEOUT (5 s) would not see that close.
    let server = TestServer::start(|c| c.handshake_timeout_ms = 300);
    for partial in ["", "GET /ws?user=slow HTTP/1.1\r\nHost: t\r\n"] {
        let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
        tcp.write_all(partial.as_bytes()).await.unwrap();
        let response = read_until_closed(&mut tcp).await;
        assert!(
            !response.contains(" 101 "),
            "{partial:?} was upgraded: {response:?}"
        );
    }
    // A handshake made in time is unaffected, and the connection outlives the timeout.
    let mut c = dev(server.addr(), "quick").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.ping().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_in_progress_are_capped() {
    let server = TestServer::start(|c| {
        c.shards = 1;
        c.max_handshakes = 4;
    });
    let addr = server.addr();
    // Upgraded connections no longer count.
    let mut upgraded = dev(addr, "upgraded").await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /ws?user=stalled HTTP/1.1\r\n")
            .await
            .unwrap();
        stalled.push(tcp);
    }
    // Every slot is taken: the next connection waits in the listen backlog, unanswered, while
    // the upgraded connection is served.
    let mut waiting = healthz_left_waiting(
        addr,
        Duration::from_millis(500),
        "four stalled handshakes fill max_handshakes = 4",
    )
    .await;
    upgraded.ping().await;

    // Freed slots are taken again: the waiting connection is answered, then new ones.
    drop(stalled);
    let response = read_until_closed(&mut waiting).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    eventually(
        TIMEOUT,
        "a handshake after the stalled ones left",
        async || {
            let response = exchange(
                addr,
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .await;
            response.starts_with("HTTP/1.1 200").then_some(())
        },
    )
    .await;
}

/// Keep-alive HTTP connections between requests hold no handshake slot (issue 18, finding 1):
/// more of them than the shards have slots, each kept open after a `GET /healthz`, leave the
/// accept loop running, and a WebSocket client connects at once.
#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connections_hold_no_handshake_slot() {
    let server = TestServer::start(|c| {
        c.shards = 2;
        c.max_handshakes = 8;
        // Longer than the test: only the slots are under test.
        c.handshake_timeout_ms = 60_000;
        c.keepalive_timeout_ms = 60_000;
    });
    let addr = server.addr();
    let mut kept = Vec::new();
    for i in 0..40 {
        let mut http = Http::connect(addr).await;
        let reply = tokio::time::timeout(Duration::from_secs(2), http.get("/healthz", &[]))
            .await
            .unwrap_or_else(|_| {
                panic!("keep-alive connection {} of 40 was not answered: the 16 handshake slots are held by idle keep-alive connections", i + 1)
            });
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("connection"), None, "{reply:?}");
        kept.push(http);
    }
    let mut client = tokio::time::timeout(Duration::from_secs(1), dev(addr, "late"))
        .await
        .expect("with 40 idle keep-alive connections open, a WebSocket client connects at once");
    client.ping().await;
    // The kept connections are still open and served.
    for http in &mut kept {
        assert_eq!(http.get("/healthz", &[]).await.status, 200);
    }
}

/// Idle keep-alive connections have their own bound: past `max_keepalive_connections` a
/// response says `Connection: close` and the server closes the connection, and an idle one is
/// closed after `keepalive_timeout_ms`.
#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connections_are_capped_and_time_out() {
    let server = TestServer::start(|c| {
        c.shards = 1;
        c.max_keepalive_connections = 2;
        c.keepalive_timeout_ms = 500;
    });
    let addr = server.addr();
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut http = Http::connect(addr).await;
        let reply = http.get("/healthz", &[]).await;
        assert_eq!(reply.header("connection"), None, "under the cap: {reply:?}");
        idle.push(http);
    }
    let mut third = Http::connect(addr).await;
    let reply = third.get("/healthz", &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
    assert_eq!(
        reply.header("connection"),
        Some("close"),
        "at the cap: {reply:?}"
    );
    third.wait_closed("the response over the cap").await;

    // The default handshake_timeout_ms (10 s) would close them after TIMEOUT (5 s).
    for http in &mut idle {
        http.wait_closed("an idle keep-alive connection after keepalive_timeout_ms")
            .await;
    }
    // Their places are free again.
    let mut again = Http::connect(addr).await;
    let reply = again.get("/healthz", &[]).await;
    assert_eq!(reply.header("connection"), None, "{reply:?}");
}

/// A client that pipelines requests and never reads the responses cannot keep its handshake
/// slot: a response write that makes no progress for `handshake_timeout_ms` closes the
/// connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_loses_its_handshake_slot() {
    let server = TestServer::start(|c| {
        c.shards = 1;
        c.max_handshakes = 1;
        c.handshake_timeout_ms = 500;
    });
    let addr = server.addr();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut deaf = socket.connect(addr).await.unwrap();
    // About 18 MB of responses, far more than the socket buffers hold.
    let requests = "GET /shardcast.js HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    deaf.write_all(requests.as_bytes()).await.unwrap();

    let mut http = Http::connect(addr).await;
    assert_eq!(http.get("/healthz", &[]).await.status, 200);
    drop(deaf);
}

/// With too few descriptors, the acceptor backs off and warns once per interval, not per
/// failed accept; the connection it already has keeps working; and once descriptors are freed,
/// it accepts again.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_backs_off_and_recovers() {
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--durability",
        "memory",
    ];
    let mut server = BinaryServer::spawn_with_fd_limit(&args, 64);
    let addr = server.listening_addr().await;
    let mut alive = dev(addr, "alive").await;

    // More connections than the server has descriptors left; none finishes a handshake.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(
            TcpStream::connect(addr)
                .await
                .expect("the kernel queues the connection"),
        );
    }
    eventually(
        TIMEOUT,
        "the server to run out of descriptors",
        async || server.stderr().contains("accept failed").then_some(()),
    )
    .await;
    // Accepts keep failing for a while (about 8 attempts in 1.5 s of back-off)...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = server.stderr();
    assert_eq!(
        log.matches("accept failed").count(),
        1,
        "one warning per interval, not one per failed accept:\n{log}"
    );
    // ...while the connection already accepted is served.
    alive.ping().await;

    drop(flood);
    let mut late = retry_dev(addr, "late", Duration::from_secs(10))
        .await
        .unwrap_or_else(|r| panic!("no connection once descriptors were freed: {r:?}"));
    late.ping().await;
    alive.ping().await;
    assert!(
        server.stderr().contains("accepting connections again"),
        "{}",
        server.stderr()
    );
}
