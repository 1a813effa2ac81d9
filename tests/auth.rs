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
}

/// A `refresh` with `token` gets `unauthorized`, with a message about `exp`.
async fn refresh_refused_for_exp(c: &mut Client, token: String) {
    let reply = c.call(json!({"type": "refresh", "token": token})).await;
    assert_error(&reply, "unauthorized", reply.get("id"));
    let message = reply["message"].as_str().unwrap();
    assert!(message.contains("exp"), "{reply}");
}

/// `require_exp` (default true): a token without `exp` is refused at connect, in a `connect`
/// frame and in a `refresh`. With it off such a token is accepted, but a `refresh` without `exp`
/// still cannot take the expiry off a connection that has one.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_without_exp_are_refused_unless_require_exp_is_off() {
    let server = jwt_server();
    let addr = server.addr();
    let forever = |sub: &str| mint(SECRET, &json!({"sub": sub}));
    let r = refused(addr, &format!("/ws?token={}", enc(&forever("carol"))), &[]).await;
    r.assert(401, "unauthorized");
    assert!(
        r.raw_body.contains("exp"),
        "the message names exp: {}",
        r.raw_body
    );
    let mut alice = Client::connect_token(addr, &token_for("alice")).await;
    refresh_refused_for_exp(&mut alice, forever("alice")).await;
    let later = now_secs() + 7200;
    let reply = alice
        .call(json!({"type": "refresh", "id": 2, "token": mint(SECRET, &json!({"sub": "alice", "exp": later}))}))
        .await;
    assert_eq!(reply, json!({"type": "refreshed", "id": 2, "exp": later}));

    let relaxed = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
        c.require_exp = false;
    });
    let addr = relaxed.addr();
    let mut carol = Client::connect_token(addr, &forever("carol")).await;
    let reply = carol
        .call(json!({"type": "refresh", "id": 1, "token": forever("carol")}))
        .await;
    assert_eq!(reply, json!({"type": "refreshed", "id": 1}));
    let mut dave = Client::connect_token(addr, &token_for("dave")).await;
    refresh_refused_for_exp(&mut dave, forever("dave")).await;
    dave.ping().await;
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

/// `exp` passing on an open connection closes it with 4001 (here with no grace period).
#[tokio::test(flavor = "multi_thread")]
async fn token_expiring_on_an_open_connection_closes_4001() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api_key = Some("test-api-key".into());
        c.heartbeat_ms = 1000;
        c.token_grace_secs = 0;
    });
    let token = mint(SECRET, &json!({"sub": "alice", "exp": now_secs() + 2}));
    let mut alice = Client::connect_token(server.addr(), &token).await;
    alice.ping().await;
    alice
        .expect_close_within(4001, Duration::from_secs(10))
        .await;
}

/// A `refresh` applies the new token's `rooms` claim. Each room the connection is in and the
/// new claim leaves out is left as a `leave` would (the other members see `left`), and the
/// client is told with a `removed` frame for it, before `refreshed`. A token with no `rooms`
/// claim allows any room again.
#[tokio::test(flavor = "multi_thread")]
async fn refresh_narrows_the_rooms_to_the_new_tokens_claim() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
    });
    let addr = server.addr();
    let later = now_secs() + 3600;
    let alice_in = |rooms: &[&str]| {
        mint(
            SECRET,
            &json!({"sub": "alice", "exp": later, "rooms": rooms}),
        )
    };
    let mut alice = Client::connect_token(addr, &alice_in(&["a", "b", "c"])).await;
    let mut bob = Client::connect_token(addr, &token_for("bob")).await;
    bob.call_past_own_presence(json!({"type": "join", "room": "b"}))
        .await;
    let joined = alice.recv_json().await;
    assert_eq!(
        joined,
        json!({"type": "joined", "room": "b", "user": "bob"})
    );

    let (before, reply) = alice
        .request(json!({"type": "refresh", "id": 1, "token": alice_in(&["a"])}))
        .await;
    assert_eq!(reply, json!({"type": "refreshed", "id": 1, "exp": later}));
    let mut removed: Vec<&str> = before
        .iter()
        .map(|f| {
            assert_eq!(f["type"], "removed", "{f}");
            assert!(f["reason"].as_str().is_some_and(|r| !r.is_empty()), "{f}");
            f["room"].as_str().unwrap()
        })
        .collect();
    removed.sort();
    assert_eq!(removed, ["b", "c"]);
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "left", "room": "b", "user": "alice"})
    );

    let reply = alice
        .call(json!({"type": "publish", "room": "b", "body": 1, "id": 2}))
        .await;
    assert_error(&reply, "not_member", Some(&json!(2)));
    let reply = alice
        .call(json!({"type": "join", "room": "b", "id": 3}))
        .await;
    assert_error(&reply, "forbidden", Some(&json!(3)));
    alice.publish("a", json!("still in a")).await;

    // No `rooms` claim: any room.
    let reply = alice
        .call(json!({"type": "refresh", "id": 4, "token": token_for("alice")}))
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    alice.join("b").await;
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "joined", "room": "b", "user": "alice"})
    );
}

/// An `exp` of 2^64 - 1 (the largest a JWT's `exp` can be read as here) is a connection that
/// never expires: `exp + token_grace_secs` saturates instead of wrapping to a time long past
/// (which closed the connection at the next heartbeat, or panicked the shard's tick with
/// overflow checks on). The heartbeat keeps running: its pings arrive, and /readyz stays 200.
#[tokio::test(flavor = "multi_thread")]
async fn an_exp_at_u64_max_outlives_many_heartbeats() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
        c.heartbeat_ms = 50;
    });
    let token = mint(SECRET, &json!({"sub": "alice", "exp": u64::MAX}));
    let mut alice = Client::connect_token(server.addr(), &token).await;
    // Each heartbeat checks the expiry, then pings: five pings are five checks passed.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while alice.pings < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} pings in {TIMEOUT:?}",
            alice.pings
        );
        if let Some(frame) = alice.next_within(Duration::from_millis(50)).await {
            panic!("expected only pings, got {frame}");
        }
    }
    alice.ping().await;
    let ready = Http::connect(server.addr()).await.get("/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}

/// `refresh` with a new token of the same user moves the connection's expiry: it outlives its
/// first token. A token of another user, or one that does not verify, is refused with a reply
/// error and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn refresh_extends_the_connection_past_its_first_token() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
        c.heartbeat_ms = 200;
        // The test sleeps without reading, so it answers no pings meanwhile.
        c.idle_timeout_ms = 60_000;
        c.token_grace_secs = 0;
    });
    let addr = server.addr();
    let first = mint(SECRET, &json!({"sub": "alice", "exp": now_secs() + 2}));
    let mut alice = Client::connect_token(addr, &first).await;
    let later = now_secs() + 3600;
    let reply = alice
        .call(json!({"type": "refresh", "id": 1, "token": mint(SECRET, &json!({"sub": "alice", "exp": later}))}))
        .await;
    assert_eq!(reply, json!({"type": "refreshed", "id": 1, "exp": later}));
    for (id, token) in [
        (2, token_for("bob")),
        (
            3,
            mint("wrong-secret", &json!({"sub": "alice", "exp": later})),
        ),
        (
            4,
            mint(SECRET, &json!({"sub": "alice", "exp": now_secs() - 10})),
        ),
    ] {
        let reply = alice
            .call(json!({"type": "refresh", "id": id, "token": token}))
            .await;
        assert_error(&reply, "unauthorized", Some(&json!(id)));
    }
    // Past the first token's exp (and many heartbeats): still open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    alice.ping().await;

    // Without a refresh the same kind of connection is closed.
    let mut bob = Client::connect_token(
        addr,
        &mint(SECRET, &json!({"sub": "bob", "exp": now_secs() + 1})),
    )
    .await;
    bob.expect_close_within(4001, Duration::from_secs(10)).await;
}

/// After `exp` the connection has `token_grace_secs` to refresh before the 4001 close.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_connection_is_closed_after_the_grace_period() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
        c.heartbeat_ms = 200;
        // The test sleeps without reading, so it answers no pings meanwhile.
        c.idle_timeout_ms = 60_000;
        c.token_grace_secs = 3;
    });
    let exp = now_secs() + 1;
    let token = mint(SECRET, &json!({"sub": "alice", "exp": exp}));
    let mut alice = Client::connect_token(server.addr(), &token).await;
    // Sleep until a moment after exp, inside the grace period.
    while now_secs() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.ping().await;
    alice
        .expect_close_within(4001, Duration::from_secs(10))
        .await;

    // A refresh inside the grace period keeps the connection.
    let exp = now_secs() + 1;
    let token = mint(SECRET, &json!({"sub": "bob", "exp": exp}));
    let mut bob = Client::connect_token(server.addr(), &token).await;
    while now_secs() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = bob
        .call(json!({"type": "refresh", "id": 1, "token": token_for("bob")}))
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    bob.ping().await;
}

fn first_frame_server() -> TestServer {
    TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
        c.presence_events = false;
        c.first_frame_auth = true;
        c.first_frame_timeout_ms = 500;
    })
}

/// With `first_frame_auth`, an upgrade without credentials is accepted and the first frame
/// `{"type":"connect","token":..}` authenticates it; requests sent right behind it are served.
#[tokio::test(flavor = "multi_thread")]
async fn first_frame_connect_authenticates_without_a_token_in_the_url() {
    let server = first_frame_server();
    let addr = server.addr();
    let mut alice = Client::upgrade_only(addr, "alice").await;
    // In one write, so the join always arrives with the connect frame.
    alice
        .send_batch(&[
            json!({"type": "connect", "token": token_for("alice")}),
            json!({"type": "join", "room": "r", "id": 1}),
        ])
        .await;
    let welcome = alice.recv_type("welcome").await;
    assert_eq!(welcome["user"], "alice", "{welcome}");
    assert_eq!(alice.recv_type("ack").await["id"], 1);

    // URL tokens still work beside it, and the two connections talk.
    let mut bob = Client::connect_token(addr, &token_for("bob")).await;
    bob.join("r").await;
    let seq = bob.publish("r", json!("hi")).await;
    assert_eq!(
        assert_room_msg(&alice.recv_json().await, "r", "bob", &json!("hi")),
        seq
    );
    // A second connect on an authenticated connection is an error, not a new identity.
    let reply = alice
        .call(json!({"type": "connect", "token": token_for("bob"), "id": 2}))
        .await;
    assert_error(&reply, "bad_request", Some(&json!(2)));
    alice.ping().await;
}

/// The upgrade request, `connect` and a request, all in one TCP write: the server reads them
/// together, and the request is served right after `welcome`.
#[tokio::test(flavor = "multi_thread")]
async fn connect_and_a_request_in_the_upgrades_write_are_served() {
    let server = first_frame_server();
    let connect = json!({"type": "connect", "token": token_for("alice")}).to_string();
    let mut wire = client_frame(0x81, connect.as_bytes());
    wire.extend(client_frame(0x81, br#"{"type":"join","room":"r","id":1}"#));
    let mut alice = RawWs::open(server.addr(), "/ws", &wire).await;
    assert_eq!(alice.recv_json().await["type"], "welcome");
    let ack = alice.recv_json().await;
    assert_eq!(
        (&ack["type"], &ack["id"]),
        (&"ack".into(), &1.into()),
        "{ack}"
    );
}

/// A missing, bad, expired or late `connect` frame closes the connection with 4002, the reason
/// being the code an HTTP refusal would carry; the server goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_or_missing_connect_frame_closes_4002() {
    let server = first_frame_server();
    let addr = server.addr();
    let expired = mint(SECRET, &json!({"sub": "alice", "exp": now_secs() - 5}));
    for (first, reason) in [
        (
            Some(json!({"type": "connect", "token": "garbage"})),
            "unauthorized",
        ),
        (
            Some(json!({"type": "connect", "token": mint("other", &json!({"sub": "a"}))})),
            "unauthorized",
        ),
        (
            Some(json!({"type": "connect", "token": expired})),
            "token_expired",
        ),
        (
            Some(json!({"type": "connect", "token": mint(SECRET, &json!({"sub": "a"}))})),
            "unauthorized",
        ),
        (Some(json!({"type": "ping"})), "unauthorized"),
        (Some(json!({"type": "connect"})), "unauthorized"),
        (None, "unauthorized"),
    ] {
        let mut c = Client::upgrade_only(addr, "c").await;
        if let Some(frame) = &first {
            c.send_json(frame).await;
        }
        match c.next_within(TIMEOUT).await {
            Some(Incoming::Close(Some((code, got)))) => {
                assert_eq!((code, got.as_str()), (4002, reason), "after {first:?}")
            }
            other => panic!("after {first:?}: expected close 4002, got {other:?}"),
        }
    }
    Client::connect_token(addr, &token_for("alice"))
        .await
        .ping()
        .await;
}

/// An upgrade waiting for its `connect` frame still counts under `max_handshakes`: silent
/// upgrades cannot pile up past the cap. The slot frees when the frame is read.
#[tokio::test(flavor = "multi_thread")]
async fn upgrades_waiting_for_connect_count_as_handshakes() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
        c.first_frame_auth = true;
        // Longer than the test: only the `connect` frame frees a slot.
        c.first_frame_timeout_ms = 60_000;
        c.shards = 1;
        c.max_handshakes = 2;
    });
    let addr = server.addr();
    let mut silent = Client::upgrade_only(addr, "silent").await;
    let _also_silent = Client::upgrade_only(addr, "also_silent").await;

    let mut waiting = healthz_left_waiting(
        addr,
        Duration::from_millis(700),
        "two upgrades without `connect` fill max_handshakes = 2",
    )
    .await;

    silent
        .send_json(&json!({"type": "connect", "token": token_for("silent")}))
        .await;
    assert_eq!(silent.recv_type("welcome").await["user"], "silent");
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, waiting.read_to_end(&mut response))
        .await
        .expect("the waiting connection is answered once a slot frees")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
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

// ---------------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------------

/// Outside dev mode, with no `allowed_origins`, a browser may connect only from the server's
/// own host; a client that sends no Origin is not a browser and passes.
#[tokio::test(flavor = "multi_thread")]
async fn production_default_allows_only_the_same_host_origin() {
    let server = jwt_server();
    let addr = server.addr();
    let path = format!("/ws?token={}", enc(&token_for("alice")));
    // The scheme is not compared: behind a TLS proxy the page is https and the Host the same.
    for own in [format!("http://{addr}"), format!("https://{addr}")] {
        let c = connect(addr, &path, &[("origin", &own)]).await;
        assert!(c.is_ok(), "same-host origin {own} must be allowed");
    }
    for other in [
        "https://evil.example",
        "http://127.0.0.2:80",
        &format!("http://{}:{}", addr.ip(), addr.port() + 1),
        "null",
    ] {
        refused(addr, &path, &[("origin", other)])
            .await
            .assert(403, "origin_not_allowed");
    }
    // No Origin: a non-browser client.
    Client::connect_token(addr, &token_for("bob"))
        .await
        .ping()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_allows_any_origin() {
    let server = TestServer::default_config();
    let mut c = connect(
        server.addr(),
        "/ws?user=alice",
        &[("origin", "https://anything.example")],
    )
    .await
    .unwrap_or_else(|r| panic!("dev mode must allow any origin: {r:?}"));
    c.ping().await;
}

/// A configured list replaces the default (same host, or any in dev mode) and takes wildcards.
#[tokio::test(flavor = "multi_thread")]
async fn allowed_origins_take_wildcards_and_replace_the_default() {
    let server = TestServer::start(|c| {
        c.allowed_origins = vec!["https://*.example.com".into(), "https://example.com".into()];
    });
    let addr = server.addr();
    for ok in [
        "https://app.example.com",
        "https://a.b.example.com",
        "https://example.com",
    ] {
        let c = connect(addr, "/ws?user=alice", &[("origin", ok)]).await;
        assert!(c.is_ok(), "{ok} must be allowed");
    }
    let own = format!("http://{addr}");
    for bad in [
        "https://evil.com",
        "https://example.com.evil.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        own.as_str(),
    ] {
        refused(addr, "/ws?user=alice", &[("origin", bad)])
            .await
            .assert(403, "origin_not_allowed");
    }
    let c = connect(addr, "/ws?user=alice", &[]).await;
    assert!(c.is_ok(), "no Origin must be allowed");
}

// ---------------------------------------------------------------------------------------------
// Asymmetric tokens and claim checks
// ---------------------------------------------------------------------------------------------

use common::keys::{JwksServer, fixture, jwks, sign};
use jsonwebtoken::Algorithm::{ES256, HS256, RS256};

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "exp": now_secs() + 3600})
}

async fn accepted(addr: std::net::SocketAddr, token: &str) -> String {
    let mut c = connect(addr, &format!("/ws?token={}", enc(token)), &[])
        .await
        .unwrap_or_else(|r| panic!("token must be accepted: {r:?}"));
    c.ping().await;
    c.welcome["user"].as_str().unwrap().to_owned()
}

async fn unauthorized(addr: std::net::SocketAddr, token: &str) {
    refused(addr, &format!("/ws?token={}", enc(token)), &[])
        .await
        .assert(401, "unauthorized");
}

fn pem_server(pair: &str) -> TestServer {
    let path = fixture(&format!("{pair}.pub"));
    TestServer::start(|c| {
        c.jwt_public_key = Some(path);
        c.api = false;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_and_es256_tokens_verify_against_a_pem_public_key() {
    let rsa = pem_server("rsa1");
    assert_eq!(
        accepted(rsa.addr(), &sign(RS256, "rsa1", None, &claims("alice"))).await,
        "alice"
    );
    // Signed by another key, or with an algorithm the key is not for.
    unauthorized(rsa.addr(), &sign(RS256, "rsa2", None, &claims("alice"))).await;
    unauthorized(rsa.addr(), &sign(ES256, "ec1", None, &claims("alice"))).await;
    // No secret is configured, so no HS256 token verifies.
    unauthorized(rsa.addr(), &mint(SECRET, &claims("alice"))).await;

    let ec = pem_server("ec1");
    assert_eq!(
        accepted(ec.addr(), &sign(ES256, "ec1", None, &claims("bob"))).await,
        "bob"
    );
    unauthorized(ec.addr(), &sign(RS256, "rsa1", None, &claims("bob"))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_public_key_stops_the_start_with_its_path() {
    let config = shardcast::config::Config {
        jwt_public_key: Some(fixture("rsa1.key.missing")),
        api: false,
        ..Default::default()
    };
    let err = tokio::task::block_in_place(|| shardcast::server::Server::start(config))
        .err()
        .expect("a missing key file must stop the start");
    assert!(err.to_string().contains("rsa1.key.missing"), "{err}");
    let config = shardcast::config::Config {
        jwt_public_key: Some(fixture("../auth.rs")),
        api: false,
        ..Default::default()
    };
    let err = tokio::task::block_in_place(|| shardcast::server::Server::start(config))
        .err()
        .expect("a file that is not a PEM key must stop the start");
    assert!(err.to_string().contains("PEM"), "{err}");
}

/// `alg: none`, and an HS256 token whose HMAC key is the server's RSA public key (the classic
/// algorithm confusion), are refused, also when an HS256 secret is configured beside the key.
#[tokio::test(flavor = "multi_thread")]
async fn alg_none_and_algorithm_confusion_are_refused() {
    let public_pem = std::fs::read(fixture("rsa1.pub")).unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(HS256),
        &claims("mallory"),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    // base64url of {"alg":"none","typ":"JWT"}, the claims of a real token, no signature.
    let real = sign(RS256, "rsa1", None, &claims("mallory"));
    let payload = real.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let none_upper = format!("eyJhbGciOiJOT05FIn0.{payload}.");
    let path = fixture("rsa1.pub");
    for secret in [None, Some(SECRET)] {
        let server = TestServer::start(|c| {
            c.jwt_public_key = Some(path.clone());
            c.jwt_secret = secret.map(str::to_owned);
            c.api = false;
        });
        for token in [&confused, &none, &none_upper] {
            unauthorized(server.addr(), token).await;
        }
        assert_eq!(accepted(server.addr(), &real).await, "mallory");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aud_and_iss_are_checked_when_configured_and_nbf_is_honoured() {
    let server = TestServer::start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_audience = Some("shardcast".into());
        c.jwt_issuer = Some("https://idp.example".into());
        c.api = false;
    });
    let addr = server.addr();
    let exp = now_secs() + 3600;
    let good =
        json!({"sub": "alice", "exp": exp, "aud": "shardcast", "iss": "https://idp.example"});
    assert_eq!(accepted(addr, &mint(SECRET, &good)).await, "alice");
    let in_list = json!({"sub": "alice", "exp": exp, "aud": ["other", "shardcast"], "iss": "https://idp.example"});
    assert_eq!(accepted(addr, &mint(SECRET, &in_list)).await, "alice");
    for (why, claims) in [
        (
            "wrong aud",
            json!({"sub": "a", "exp": exp, "aud": "other", "iss": "https://idp.example"}),
        ),
        (
            "no aud",
            json!({"sub": "a", "exp": exp, "iss": "https://idp.example"}),
        ),
        (
            "wrong iss",
            json!({"sub": "a", "exp": exp, "aud": "shardcast", "iss": "https://evil"}),
        ),
        (
            "no iss",
            json!({"sub": "a", "exp": exp, "aud": "shardcast"}),
        ),
    ] {
        let r = refused(
            addr,
            &format!("/ws?token={}", enc(&mint(SECRET, &claims))),
            &[],
        )
        .await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (401, Some("unauthorized")),
            "{why}: {r:?}"
        );
    }

    // nbf: a token not valid yet is refused; one whose nbf has passed is accepted. Without a
    // configured audience or issuer, those claims are not checked.
    let plain = jwt_server();
    let addr = plain.addr();
    let later = mint(
        SECRET,
        &json!({"sub": "bob", "exp": exp, "nbf": now_secs() + 600}),
    );
    let r = refused(addr, &format!("/ws?token={}", enc(&later)), &[]).await;
    r.assert(401, "unauthorized");
    assert!(
        r.raw_body.contains("nbf"),
        "the message names nbf: {}",
        r.raw_body
    );
    let passed = mint(
        SECRET,
        &json!({"sub": "bob", "exp": exp, "nbf": now_secs() - 5}),
    );
    assert_eq!(accepted(addr, &passed).await, "bob");
    let other = mint(
        SECRET,
        &json!({"sub": "bob", "exp": exp, "aud": "x", "iss": "y"}),
    );
    assert_eq!(accepted(addr, &other).await, "bob");
}

/// Keys come from a JWKS served over HTTP, chosen by `kid`; a rotation on the key server is
/// picked up in the background without a restart, and the removed key stops working.
#[tokio::test(flavor = "multi_thread")]
async fn jwks_keys_are_chosen_by_kid_and_refreshed_in_the_background() {
    let key_server = JwksServer::start(jwks(&[("k1", RS256, "rsa1"), ("e1", ES256, "ec1")]));
    let url = key_server.url();
    let server = TestServer::start(|c| {
        c.jwks_url = Some(url);
        c.jwks_refresh_secs = 1;
        c.api = false;
    });
    let addr = server.addr();
    assert!(key_server.hits() >= 1, "the JWKS is fetched at start");
    let k1 = sign(RS256, "rsa1", Some("k1"), &claims("alice"));
    assert_eq!(accepted(addr, &k1).await, "alice");
    let e1 = sign(ES256, "ec1", Some("e1"), &claims("bob"));
    assert_eq!(accepted(addr, &e1).await, "bob");
    // A kid naming a key of another algorithm, an unknown kid, and no kid at all.
    unauthorized(addr, &sign(ES256, "ec1", Some("k1"), &claims("bob"))).await;
    let k2 = sign(RS256, "rsa2", Some("k2"), &claims("carol"));
    unauthorized(addr, &k2).await;
    unauthorized(addr, &sign(RS256, "rsa1", None, &claims("carol"))).await;

    // Rotate: k2 replaces k1.
    key_server.set(jwks(&[("k2", RS256, "rsa2")]));
    let rotated = eventually(
        Duration::from_secs(10),
        "k2 accepted after the rotation",
        async || {
            connect(addr, &format!("/ws?token={}", enc(&k2)), &[])
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(rotated.welcome["user"], "carol");
    unauthorized(addr, &k1).await;
}

/// The key server being down at start does not stop the server; keys arrive once it answers.
#[tokio::test(flavor = "multi_thread")]
async fn jwks_unreachable_at_start_is_retried() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr_later = free.local_addr().unwrap();
    drop(free);
    let server = TestServer::start(|c| {
        c.jwks_url = Some(format!("http://{addr_later}/jwks"));
        c.jwks_refresh_secs = 1;
        c.api = false;
    });
    let token = sign(RS256, "rsa1", Some("k1"), &claims("alice"));
    unauthorized(server.addr(), &token).await;
    let key_server = JwksServer::start_on(addr_later, jwks(&[("k1", RS256, "rsa1")]), None);
    let c = eventually(
        Duration::from_secs(10),
        "the key server's keys",
        async || {
            connect(server.addr(), &format!("/ws?token={}", enc(&token)), &[])
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(c.welcome["user"], "alice");
    assert!(key_server.hits() >= 1);
}

/// An https `jwks_url` is fetched over TLS, trusting the public roots and `jwks_ca_file`;
/// without the CA file the key server's private certificate is refused, and so are the tokens.
#[tokio::test(flavor = "multi_thread")]
async fn jwks_over_https_checks_the_certificate() {
    let key_server = JwksServer::start_tls(jwks(&[("k1", RS256, "rsa1")]));
    let token = sign(RS256, "rsa1", Some("k1"), &claims("alice"));
    // By name: the certificate is checked for "localhost".
    let by_name = key_server.url().replace("127.0.0.1", "localhost");
    let trusted = TestServer::start(|c| {
        c.jwks_url = Some(by_name);
        c.jwks_ca_file = Some(fixture("redis-tls/ca.crt"));
        c.api = false;
    });
    assert_eq!(accepted(trusted.addr(), &token).await, "alice");

    let hits = key_server.hits();
    let untrusted = TestServer::start(|c| {
        c.jwks_url = Some(key_server.url());
        c.api = false;
    });
    unauthorized(untrusted.addr(), &token).await;
    assert_eq!(
        key_server.hits(),
        hits,
        "a JWKS request was made over a TLS connection the server should not trust"
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
