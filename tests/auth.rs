//! Authentication and the handshake: JWT in `?token=` and `Authorization: Bearer`, refused
//! handshakes (401 with a JSON body for bad, garbage, missing and expired tokens), `?user=`
//! refused in JWT mode, the `rooms` claim (auto-join, forbidden joins), `exp` passing on an open
//! connection (4001), dev mode's user id check, 404/400 refusals, and dev mode refusing a
//! non-loopback bind.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::json;

fn jwt_server() -> TestServer {
    TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api_key = Some("test-api-key".into());
        c.presence_events = false;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn token_in_query_or_bearer_header() {
    let server = jwt_server();
    let addr = server.addr();

    let mut q = Client::connect_token(addr, &token_for("alice")).await;
    assert_eq!(
        q.welcome["user"], "alice",
        "welcome.user is the sub: {}",
        q.welcome
    );
    assert_eq!(q.welcome["rooms"], json!([]), "{}", q.welcome);
    q.ping().await;

    let mut h = Client::connect_bearer(addr, &token_for("bob")).await;
    assert_eq!(
        h.welcome["user"], "bob",
        "welcome.user is the sub: {}",
        h.welcome
    );
    h.ping().await;

    // The two work together: a DM from bob reaches alice.
    let seq = h.dm("alice", json!("hi")).await;
    let got = q.recv_json().await;
    assert_eq!(assert_dm(&got, "alice", "bob", &json!("hi")), seq);

    // A token without `exp` is accepted (the claim is optional).
    let c = Client::connect_token(addr, &mint(SECRET, &json!({"sub": "carol"}))).await;
    assert_eq!(c.welcome["user"], "carol");
}

async fn refused(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Refusal {
    match connect(addr, path, headers).await {
        Ok(c) => panic!(
            "{path}: expected a refused handshake, got welcome {}",
            c.welcome
        ),
        Err(r) => r,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_get_401_unauthorized() {
    let server = jwt_server();
    let addr = server.addr();
    let later = now_secs() + 3600;

    let wrong_secret = mint("not-the-secret", &json!({"sub": "alice", "exp": later}));
    refused(addr, &format!("/ws?token={}", enc(&wrong_secret)), &[])
        .await
        .assert(401, "unauthorized");
    let bearer = format!("Bearer {wrong_secret}");
    refused(addr, "/ws", &[("authorization", &bearer)])
        .await
        .assert(401, "unauthorized");

    // A valid token with its signature tampered with.
    let good = token_for("alice");
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{head}.{flipped}{}", &sig[1..]);
    refused(addr, &format!("/ws?token={}", enc(&tampered)), &[])
        .await
        .assert(401, "unauthorized");

    for garbage in ["garbage", "a.b.c", "", "eyJhbGciOiJIUzI1NiJ9.e30."] {
        refused(addr, &format!("/ws?token={}", enc(garbage)), &[])
            .await
            .assert(401, "unauthorized");
    }
    refused(addr, "/ws", &[("authorization", "Bearer garbage")])
        .await
        .assert(401, "unauthorized");

    // Missing: no token at all.
    refused(addr, "/ws", &[]).await.assert(401, "unauthorized");

    // A token without `sub`, and one whose `sub` is not a valid user id.
    let no_sub = mint(SECRET, &json!({"exp": later}));
    refused(addr, &format!("/ws?token={}", enc(&no_sub)), &[])
        .await
        .assert(401, "unauthorized");
    let bad_sub = mint(SECRET, &json!({"sub": "no spaces allowed", "exp": later}));
    refused(addr, &format!("/ws?token={}", enc(&bad_sub)), &[])
        .await
        .assert(401, "unauthorized");

    // The server still works.
    Client::connect_token(addr, &token_for("alice"))
        .await
        .ping()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_gets_401_token_expired() {
    let server = jwt_server();
    let addr = server.addr();
    // `exp` is enforced with no leeway: a few seconds in the past is expired.
    for ago in [5, 3600] {
        let token = mint(SECRET, &json!({"sub": "alice", "exp": now_secs() - ago}));
        refused(addr, &format!("/ws?token={}", enc(&token)), &[])
            .await
            .assert(401, "token_expired");
        let bearer = format!("Bearer {token}");
        refused(addr, "/ws", &[("authorization", &bearer)])
            .await
            .assert(401, "token_expired");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_user_param_refused_when_a_secret_is_set() {
    let server = jwt_server();
    refused(server.addr(), "/ws?user=alice", &[])
        .await
        .assert(401, "unauthorized");
}

/// The `rooms` claim joins those rooms at connect (complete by `welcome`) and forbids others.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_claim_auto_joins_and_forbids_other_joins() {
    let server = jwt_server();
    let addr = server.addr();
    let later = now_secs() + 3600;

    let bob_token = mint(
        SECRET,
        &json!({"sub": "bob", "exp": later, "rooms": ["r1"]}),
    );
    let mut bob = Client::connect_token(addr, &bob_token).await;
    assert_eq!(bob.welcome["rooms"], json!(["r1"]));

    let alice_token = mint(
        SECRET,
        &json!({"sub": "alice", "exp": later, "rooms": ["r1", "r2"]}),
    );
    let mut alice = Client::connect_bearer(addr, &alice_token).await;
    let mut rooms: Vec<String> = alice.welcome["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("welcome.rooms must be an array: {}", alice.welcome))
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    rooms.sort();
    assert_eq!(rooms, ["r1", "r2"], "welcome: {}", alice.welcome);

    // Published right after alice's welcome: delivered, with no explicit join.
    let seq = bob.publish("r1", json!("right after welcome")).await;
    let got = alice.recv_json().await;
    assert_eq!(
        assert_room_msg(&got, "r1", "bob", &json!("right after welcome")),
        seq
    );

    // alice may publish in r2 without joining, and query presence.
    alice.publish("r2", json!("in r2")).await;
    assert_eq!(alice.presence("r1").await, ["alice", "bob"]);

    // Joining outside the claim is forbidden; joining inside it is acknowledged.
    let reply = alice
        .call(json!({"type": "join", "room": "elsewhere", "id": "j1"}))
        .await;
    assert_error(&reply, "forbidden", Some(&json!("j1")));
    alice.join("r1").await;

    // bob's claim forbids r2 too.
    let reply = bob
        .call(json!({"type": "join", "room": "r2", "id": 7}))
        .await;
    assert_error(&reply, "forbidden", Some(&json!(7)));
    alice.ping().await;
    bob.ping().await;
}

/// `exp` passing on an open connection closes it with 4001.
#[tokio::test(flavor = "multi_thread")]
async fn token_expiring_on_an_open_connection_closes_4001() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api_key = Some("test-api-key".into());
        c.heartbeat_ms = 1000;
    });
    let token = mint(SECRET, &json!({"sub": "alice", "exp": now_secs() + 2}));
    let mut alice = Client::connect_token(server.addr(), &token).await;
    alice.ping().await;
    alice
        .expect_close_within(4001, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_refuses_invalid_user_ids() {
    let server = TestServer::default_config();
    let addr = server.addr();
    let too_long = "u".repeat(129);
    for user in [
        "",
        "has space",
        "slash/y",
        "é",
        "semi;colon",
        too_long.as_str(),
    ] {
        refused(addr, &format!("/ws?user={}", enc(user)), &[])
            .await
            .assert(401, "unauthorized");
    }
    // No user at all.
    refused(addr, "/ws", &[]).await.assert(401, "unauthorized");

    // The edges of the allowed set are accepted.
    let longest = "u".repeat(128);
    for user in ["A-Za_z0.9:x@y", longest.as_str(), "1"] {
        let c = Client::connect_dev(addr, user).await;
        assert_eq!(c.welcome["user"], user);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_path_gets_404_not_found() {
    let server = TestServer::default_config();
    refused(server.addr(), "/nope?user=alice", &[])
        .await
        .assert(404, "not_found");
}

/// A plain GET to /ws (no upgrade) gets 400 `bad_request`. tungstenite always sends an upgrade,
/// so this one request is written by hand.
#[tokio::test(flavor = "multi_thread")]
async fn plain_get_gets_400_bad_request() {
    let server = TestServer::default_config();
    let addr = server.addr();
    let response = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            s,
            "GET /ws?user=alice HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap();
    let status_line = response.lines().next().unwrap_or("");
    assert!(
        status_line.starts_with("HTTP/1.1 400"),
        "expected 400, got:\n{response}"
    );
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in:\n{response}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "expected a JSON content type:\n{response}"
    );
    // The body may be chunked; the JSON object is the part between the outer braces.
    let json_text = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    let body: serde_json::Value = serde_json::from_str(json_text)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}):\n{response}"));
    assert_eq!(body["code"], "bad_request", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// With no secret, binding a non-loopback address refuses to start, with a clear message.
#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_refuses_a_non_loopback_bind() {
    let mut bin = BinaryServer::spawn(&["--bind", "0.0.0.0:0"]);
    let status = bin.wait_exit(Duration::from_secs(15)).await;
    bin.finish_output().await;
    let output = bin.output();
    assert!(
        !status.success(),
        "must exit non-zero, got {status}; output:\n{output}"
    );
    assert!(
        parse_listening(&output).is_none(),
        "must not listen; output:\n{output}"
    );
    let stderr = bin.stderr().to_lowercase();
    assert!(
        stderr.contains("loopback") || stderr.contains("secret"),
        "stderr must say why (no secret, non-loopback bind); output:\n{output}"
    );
}

/// A plain GET to /ws checks the credentials first: a browser, which never sees why a
/// handshake was refused, asks this way and gets the 401 (the JS client then stops retrying).
#[tokio::test(flavor = "multi_thread")]
async fn plain_get_with_bad_credentials_gets_401() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
    });
    let mut http = Http::connect(server.addr()).await;
    let bad = mint("other-secret", &json!({"sub": "a", "exp": now_secs() + 60}));
    for path in [format!("/ws?token={bad}"), "/ws?user=alice".to_string()] {
        let r = http.get(&path, &[]).await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(r.body.contains("\"unauthorized\""), "{path}: {}", r.body);
    }
    let good = token_for("a");
    let r = http.get(&format!("/ws?token={good}"), &[]).await;
    assert_eq!(r.status, 400, "good credentials, no upgrade: {}", r.body);
}
