//! Resource exhaustion: HTTP header size (431), slow handshakes (`handshake_timeout_ms`), the
//! cap on handshakes in progress (`max_handshakes`: the next ones wait), and running out of file descriptors
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
