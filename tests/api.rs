//! The HTTP server API (`/api/`), over real HTTP against a real server, with real WebSocket
//! clients on the receiving end.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "api-test-key";

type Reply = ApiReply;

async fn http(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> Reply {
    api(addr, method, path, key, body).await
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    http(addr, "POST", path, Some(KEY), &body.to_string()).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, Some(KEY), "").await
}

fn keyed() -> TestServer {
    TestServer::start(|c| c.api_key = Some(KEY.into()))
}

fn assert_api_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.body["code"], code, "{reply:?}");
    assert!(
        reply.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_reaches_members_in_the_room_order() {
    let server = keyed();
    let mut alice = dev(server.addr(), "alice").await;
    alice.join("shop").await;
    assert_eq!(alice.publish("shop", json!("first")).await, 1);

    let reply = post(
        server.addr(),
        "/api/publish",
        json!({"room":"shop","body":{"promo":10}}),
    )
    .await;
    assert_eq!((reply.status, &reply.body), (200, &json!({"seq": 2})));
    let msg = alice.recv_type("message").await;
    assert_eq!(
        assert_room_msg(&msg, "shop", "system", &json!({"promo":10})),
        2
    );

    let reply = post(
        server.addr(),
        "/api/publish",
        json!({"room":"shop","body":null,"from":"admin"}),
    )
    .await;
    assert_eq!(reply.body, json!({"seq": 3}));
    let msg = alice.recv_type("message").await;
    assert_eq!(assert_room_msg(&msg, "shop", "admin", &Value::Null), 3);

    // A room nobody is in is still stored: its history has the message.
    let reply = post(
        server.addr(),
        "/api/publish",
        json!({"room":"empty","body":1}),
    )
    .await;
    assert_eq!(reply.body, json!({"seq": 1}));
    let page = get(server.addr(), "/api/rooms/empty/history").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body["messages"][0]["body"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn send_reaches_online_users_and_waits_for_offline_ones() {
    let server = keyed();
    let mut bob = dev(server.addr(), "bob").await;
    let reply = post(
        server.addr(),
        "/api/send",
        json!({"to":"bob","body":"order shipped"}),
    )
    .await;
    assert_eq!(reply.body, json!({"seq": 1}));
    let msg = bob.recv_type("message").await;
    assert_eq!(assert_dm(&msg, "bob", "system", &json!("order shipped")), 1);

    let reply = post(
        server.addr(),
        "/api/send",
        json!({"to":"carol","body":{"n":1},"from":"shop"}),
    )
    .await;
    assert_eq!(reply.body, json!({"seq": 1}));
    let mut carol = dev(server.addr(), "carol").await;
    assert_eq!(carol.welcome["inbox_seq"], 1);
    let msg = carol.recv_type("message").await;
    assert_eq!(assert_dm(&msg, "carol", "shop", &json!({"n":1})), 1);
    carol.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_reaches_every_connection_once() {
    let server = TestServer::start(|c| {
        c.api_key = Some(KEY.into());
        c.shards = 3;
    });
    let mut clients = Vec::new();
    for i in 0..7 {
        clients.push(dev(server.addr(), &format!("u{i}")).await);
    }
    let reply = post(
        server.addr(),
        "/api/broadcast",
        json!({"body":{"notice":"maintenance"}}),
    )
    .await;
    assert_eq!(
        (reply.status, &reply.body),
        (200, &json!({"connections": 7}))
    );
    for c in &mut clients {
        let msg = c.recv_type("message").await;
        assert_eq!(msg["from"], "system");
        assert_eq!(msg["body"], json!({"notice":"maintenance"}));
        assert!(msg["ts"].as_u64().is_some(), "{msg}");
        assert!(
            msg.get("seq").is_none() && msg.get("room").is_none(),
            "{msg}"
        );
        c.assert_silent(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_closes_every_connection_of_the_user_as_kicked() {
    let server = TestServer::start(|c| {
        c.api_key = Some(KEY.into());
        c.shards = 2;
    });
    let mut a1 = dev(server.addr(), "mallory").await;
    let mut a2 = dev(server.addr(), "mallory").await;
    let mut other = dev(server.addr(), "alice").await;
    let reply = post(
        server.addr(),
        "/api/disconnect",
        json!({"user":"mallory","reason":"spam"}),
    )
    .await;
    assert_eq!(reply.body, json!({"connections": 2}));
    a1.expect_close(4501).await;
    a2.expect_close(4501).await;
    other.ping().await;
    let info = get(server.addr(), "/api/users/mallory").await;
    assert_eq!(
        info.body,
        json!({"user":"mallory","online":false,"connections":0})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_users_and_history() {
    let server = TestServer::start(|c| {
        c.api_key = Some(KEY.into());
        c.presence_events = false;
    });
    let mut alice = dev(server.addr(), "alice").await;
    let _alice2 = dev(server.addr(), "alice").await;
    let mut bob = dev(server.addr(), "bob").await;
    alice.join("r").await;
    bob.join("r").await;
    for i in 0..5 {
        alice.publish("r", json!(i)).await;
    }
    let p = get(server.addr(), "/api/rooms/r/presence").await;
    assert_eq!(
        p.body,
        json!({"room":"r","mode":"list","users":["alice","bob"]})
    );
    let u = get(server.addr(), "/api/users/alice").await;
    assert_eq!(
        u.body,
        json!({"user":"alice","online":true,"connections":2})
    );

    let h = get(server.addr(), "/api/rooms/r/history?before=5&limit=2").await;
    assert_eq!(h.status, 200);
    let seqs: Vec<_> = h.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 3]);
    assert_eq!(h.body["more"], true);
    assert_eq!(h.body["messages"][0]["body"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_wrong_key_is_refused() {
    let server = keyed();
    let body = json!({"room":"r","body":1}).to_string();
    for key in [None, Some("wrong"), Some("")] {
        let reply = http(server.addr(), "POST", "/api/publish", key, &body).await;
        assert_api_error(&reply, 401, "unauthorized");
        let reply = http(server.addr(), "GET", "/api/users/a", key, "").await;
        assert_api_error(&reply, 401, "unauthorized");
    }
    // Nothing was published by the refused calls.
    let h = get(server.addr(), "/api/rooms/r/history").await;
    assert_eq!(h.body["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_without_a_key_is_open_and_the_api_can_be_turned_off() {
    let server = TestServer::default_config();
    let reply = http(server.addr(), "GET", "/api/users/a", None, "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let off = TestServer::start(|c| c.api = false);
    let reply = http(off.addr(), "GET", "/api/users/a", None, "").await;
    assert_api_error(&reply, 404, "not_found");
}

/// In dev mode the API has no key, so it takes bodies only as `Content-Type: application/json`,
/// which a page on another site cannot send without a CORS preflight (issue 18, finding 8):
/// the "simple" cross-site POSTs are refused with 415 and nothing is done, and the preflight
/// gets no CORS headers.
#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_api_takes_only_json_bodies() {
    let server = TestServer::default_config();
    let addr = server.addr();
    let mut member = dev(addr, "member").await;
    let body = json!({"body": "from a web page"}).to_string();
    let mut http = Http::connect(addr).await;
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let headers: Vec<_> = content_type
            .map(|t| ("Content-Type", t))
            .into_iter()
            .collect();
        let reply = http
            .request("POST", "/api/broadcast", &headers, &body)
            .await;
        let json: Value = serde_json::from_str(&reply.body).expect("a JSON error");
        let reply = Reply {
            status: reply.status,
            body: json,
        };
        assert_api_error(&reply, 415, "unsupported_media_type");
    }
    let preflight = http
        .request(
            "OPTIONS",
            "/api/broadcast",
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            "",
        )
        .await;
    assert!(
        preflight
            .headers
            .iter()
            .all(|(name, _)| !name.starts_with("access-control-")),
        "the preflight must not be allowed: {preflight:?}"
    );
    // None of the refused calls reached the member: the first message is the first JSON one.
    for content_type in ["application/json", "Application/JSON; charset=utf-8"] {
        let body = json!({"body": content_type}).to_string();
        let reply = http
            .request(
                "POST",
                "/api/broadcast",
                &[("Content-Type", content_type)],
                &body,
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let got = member.recv_json().await;
        assert_eq!(got["body"], content_type, "{got}");
    }
}

/// A body shorter than its `Content-Length` does not hold the connection: after
/// `api_body_timeout_ms` the API answers 408 with a JSON error and closes it (issue 18, finding
/// 10). Nothing is published.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_api_body_gets_408_and_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(|c| {
        c.api_key = Some(KEY.into());
        c.api_body_timeout_ms = 300;
    });
    let addr = server.addr();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nAuthorization: apikey {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"room\":\"r\","
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut got))
        .await
        .expect("the server answers and closes a stalled body within TIMEOUT")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    let body: Value = serde_json::from_str(got.split("\r\n\r\n").nth(1).unwrap())
        .unwrap_or_else(|e| panic!("{e}: {got}"));
    assert_eq!(body["code"], "request_timeout", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("300 ms")),
        "{body}"
    );
    let h = get(addr, "/api/rooms/r/history").await;
    assert_eq!(h.body["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_input_gets_a_400_with_a_code() {
    let server = TestServer::start(|c| {
        c.api_key = Some(KEY.into());
        c.max_message_size = 256;
    });
    let a = server.addr();
    let cases = [
        ("/api/publish", "not json", 400, "bad_request"),
        ("/api/publish", r#"{"room":"r"}"#, 400, "bad_request"),
        (
            "/api/publish",
            r#"{"room":"bad room","body":1}"#,
            400,
            "invalid_name",
        ),
        (
            "/api/publish",
            r#"{"room":"r","body":1,"from":"a b"}"#,
            400,
            "invalid_name",
        ),
        (
            "/api/publish",
            r#"{"room":"r","body":{"a":}}"#,
            400,
            "bad_request",
        ),
        ("/api/send", r#"{"to":5,"body":1}"#, 400, "bad_request"),
        // Nested one level past max_body_depth (64).
        (
            "/api/publish",
            &format!(
                r#"{{"room":"r","body":{}{}}}"#,
                "[".repeat(65),
                "]".repeat(65)
            ),
            400,
            "bad_request",
        ),
        (
            "/api/broadcast",
            &format!(r#"{{"body":{}{}}}"#, "[".repeat(65), "]".repeat(65)),
            400,
            "bad_request",
        ),
        ("/api/broadcast", r#"{}"#, 400, "bad_request"),
        ("/api/disconnect", r#"{"reason":"x"}"#, 400, "bad_request"),
    ];
    for (path, body, status, code) in cases {
        let reply = http(a, "POST", path, Some(KEY), body).await;
        assert_api_error(&reply, status, code);
    }
    let big = json!({"room":"r","body":"x".repeat(300)});
    assert_api_error(&post(a, "/api/publish", big).await, 413, "too_large");
    let huge = format!(r#"{{"room":"r","body":"{}"}}"#, "x".repeat(5000));
    assert_api_error(
        &http(a, "POST", "/api/publish", Some(KEY), &huge).await,
        413,
        "too_large",
    );
    assert_api_error(
        &get(a, "/api/rooms/r/history?limit=101").await,
        400,
        "bad_request",
    );
    assert_api_error(
        &get(a, "/api/rooms/r/history?before=-1").await,
        400,
        "bad_request",
    );
    assert_api_error(
        &get(a, "/api/rooms/bad%20room/presence").await,
        400,
        "invalid_name",
    );
    assert_api_error(&get(a, "/api/publish").await, 405, "method_not_allowed");
    assert_api_error(&get(a, "/api/nothing").await, 404, "not_found");
    // None of it was stored.
    let h = get(a, "/api/rooms/r/history").await;
    assert_eq!(h.body["messages"], json!([]));
}

/// `key` in the publish and send bodies, or the `Idempotency-Key` header: a repeat answers
/// `{"seq":N,"dup":true}` with the first seq and reaches no one. A header that differs from the
/// body's key, or a bad key, is `bad_request`.
#[tokio::test(flavor = "multi_thread")]
async fn publish_and_send_with_a_key_are_idempotent() {
    let server = TestServer::start(|c| {
        c.api_key = Some(KEY.into());
        c.presence_events = false;
    });
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    alice.join("shop").await;
    let with_header = |key: &'static str| {
        let auth = format!("apikey {KEY}");
        move |path: &'static str, body: Value| {
            let auth = auth.clone();
            async move {
                let headers = [
                    ("Content-Type", "application/json"),
                    ("Authorization", auth.as_str()),
                    ("Idempotency-Key", key),
                ];
                let reply = Http::connect(addr)
                    .await
                    .request("POST", path, &headers, &body.to_string())
                    .await;
                let body: Value = serde_json::from_str(&reply.body).unwrap();
                (reply.status, body)
            }
        }
    };

    let body = json!({"room": "shop", "body": "sale", "key": "promo-1"});
    assert_eq!(
        post(addr, "/api/publish", body.clone()).await.body,
        json!({"seq": 1})
    );
    let again = post(addr, "/api/publish", body).await;
    assert_eq!(
        (again.status, again.body),
        (200, json!({"seq": 1, "dup": true}))
    );
    // The header is the same key.
    let header = with_header("promo-1");
    let room = json!({"room": "shop", "body": "sale"});
    assert_eq!(
        header("/api/publish", room.clone()).await,
        (200, json!({"seq": 1, "dup": true}))
    );
    let fresh = with_header("promo-2");
    assert_eq!(
        fresh("/api/publish", room.clone()).await,
        (200, json!({"seq": 2}))
    );
    assert_eq!(
        fresh("/api/publish", room).await,
        (200, json!({"seq": 2, "dup": true}))
    );
    let msgs = alice.recv_n(2).await;
    assert_eq!(seqs(&msgs), [1, 2], "each stored message once");
    let history = get(addr, "/api/rooms/shop/history").await;
    assert_eq!(seqs(history.body["messages"].as_array().unwrap()), [2, 1]);

    // Direct messages, by header.
    let dm = with_header("dm-1");
    let send = json!({"to": "bob", "body": "shipped"});
    assert_eq!(
        dm("/api/send", send.clone()).await,
        (200, json!({"seq": 1}))
    );
    assert_eq!(
        dm("/api/send", send.clone()).await,
        (200, json!({"seq": 1, "dup": true}))
    );
    let bob = dev(addr, "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 1, "stored once");

    // A header that says another key than the body, and bad keys.
    let (status, body) = dm("/api/send", json!({"to": "bob", "body": 1, "key": "x"})).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("bad_request")),
        "{body}"
    );
    let long = "k".repeat(65);
    for bad in [json!(long), json!(""), json!("clé"), json!(5)] {
        let reply = post(
            addr,
            "/api/publish",
            json!({"room": "shop", "body": 1, "key": bad}),
        )
        .await;
        assert_api_error(&reply, 400, "bad_request");
    }
    for bad in ["a b", "clé"] {
        let (status, body) =
            with_header(bad)("/api/publish", json!({"room": "shop", "body": 1})).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("bad_request")),
            "{bad}: {body}"
        );
    }
    let reply = get(addr, "/api/rooms/shop/history").await;
    assert_eq!(
        seqs(reply.body["messages"].as_array().unwrap()),
        [2, 1],
        "nothing refused stored"
    );
    drop(bob);
}
