//! The Rust client crate (`clients/rust`) against a real server: both wire forms, a room shared
//! by a JSON client and a proto client, reconnect after a server restart on the same port and
//! data (the outbox resends with its keys, `since` recovers what was missed: nothing lost,
//! nothing twice), and one sender's order kept through `rate_limited` refusals.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;
use shardcast_client::{Auth, Backoff, Body, Client, Event, Events, Format, Message, Options};

/// How long any one awaited event may take.
const WAIT: Duration = Duration::from_secs(20);

fn options(server: &TestServer, user: &str, format: Format) -> Options {
    Options::new(format!("ws://{}/ws", server.addr()), Auth::Dev(user.into()))
        .format(format)
        .backoff(quick(Duration::from_millis(20)))
}

/// A backoff starting at `initial`, capped at 1 s.
fn quick(initial: Duration) -> Backoff {
    Backoff {
        initial,
        max: Duration::from_secs(1),
        ..Backoff::default()
    }
}

/// The next event that `want` picks, skipping the others.
async fn next<T>(events: &mut Events, mut want: impl FnMut(Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the awaited event did not come in time")
            .expect("the client stopped");
        if let Some(t) = want(ev) {
            return t;
        }
    }
}

async fn message(events: &mut Events) -> Message {
    next(events, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await
}

async fn connected(events: &mut Events) -> Option<shardcast_client::Recovery> {
    next(events, |e| match e {
        Event::Connected { recovery, .. } => Some(recovery),
        _ => None,
    })
    .await
}

/// A JSON client and a proto client in one room get each other's messages with the same seqs,
/// and equal bodies whichever form they were sent in; history and edits come back in both.
#[tokio::test(flavor = "multi_thread")]
async fn json_and_proto_clients_share_a_room() {
    let server = TestServer::start(fast);
    let (alice, mut a_ev) = Client::connect(options(&server, "alice", Format::Json));
    let (bob, mut b_ev) = Client::connect(options(&server, "bob", Format::Proto));
    assert_eq!(connected(&mut a_ev).await, None);
    assert_eq!(connected(&mut b_ev).await, None);
    alice.join("r").await.unwrap();
    let ack = bob.join("r").await.unwrap();
    assert_eq!((ack.room.as_str(), ack.seq), ("r", 0));
    assert!(ack.rights.unwrap().contains(&"publish".to_string()));

    let bodies = [
        Body::text("hi"),
        Body::json(&json!({"n": 1, "s": "é"})).unwrap(),
        Body::bytes(vec![0xff, 0, 1]),
    ];
    for (i, body) in bodies.iter().enumerate() {
        // Alice's go to bob, bob's to alice, each in its own form.
        let (from, to_events) = if i % 2 == 0 {
            (&alice, &mut b_ev)
        } else {
            (&bob, &mut a_ev)
        };
        let ack = from.publish("r", body.clone()).await.unwrap();
        let m = message(to_events).await;
        assert_eq!(m.room.as_deref(), Some("r"));
        assert_eq!(Some(m.seq), ack.seq, "{body:?}");
        assert_eq!(&m.body, body, "the body crossed unchanged in meaning");
    }
    bob.publish("r", Body::bytes(b"raw".to_vec()))
        .await
        .unwrap();
    let m = message(&mut a_ev).await;
    assert_eq!(
        m.body,
        Body::bytes(b"raw".to_vec()),
        "opaque bytes reach JSON as $b64"
    );

    // Direct messages, both ways.
    let ack = alice.send("bob", Body::text("dm")).await.unwrap();
    let m = message(&mut b_ev).await;
    assert_eq!(
        (m.to.as_deref(), m.body.as_json(), Some(m.seq)),
        (Some("bob"), Some("\"dm\""), ack.seq)
    );

    // An edit of alice's first message reaches bob as an event of kind `edit`.
    let ack = alice.edit("r", 1, Body::text("hi!")).await.unwrap();
    let m = message(&mut b_ev).await;
    assert_eq!(
        (m.kind.as_deref(), m.target, Some(m.seq)),
        (Some("edit"), Some(1), ack.seq)
    );

    // History reads the same in both forms.
    let a = alice.history("r", None, None).await.unwrap();
    let b = bob.history("r", None, None).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.messages.len(), 5);
    assert_eq!(a.messages[4].body, Body::text("hi"));
    let p = bob.presence("r", None, None).await.unwrap();
    assert_eq!(p.users, ["alice", "bob"]);

    // A refusal is a typed error with the server's code.
    let err = alice.publish("elsewhere", Body::text("x"));
    let err = tokio::time::timeout(WAIT, err).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some("not_member"), "{err}");
}

/// A publish sent again with its key is answered `dup` with the first seq, and that is an ack.
#[tokio::test(flavor = "multi_thread")]
async fn a_dup_ack_is_an_ack() {
    let server = TestServer::start(fast);
    for format in [Format::Json, Format::Proto] {
        let (c, mut ev) = Client::connect(options(&server, "k", format));
        connected(&mut ev).await;
        c.join("d").await.unwrap();
        let first = c.publish_with_key("d", Body::text("once"), &format!("key-{format:?}"));
        let first = first.await.unwrap();
        let again = c.publish_with_key("d", Body::text("once"), &format!("key-{format:?}"));
        let again = again.await.unwrap();
        assert!(!first.dup && again.dup, "{format:?}");
        assert_eq!(first.seq, again.seq);
        c.close();
    }
}

/// The server restarts (same port, same data) while a publisher keeps publishing and sending:
/// every publish and send is acked once, and a receiver that comes back later than the
/// publisher gets every room message (through `since`) and direct message (through `sync`)
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn reconnect_after_a_restart_loses_nothing_and_duplicates_nothing() {
    let mut server = TestServer::start(fast);
    let (publisher, mut p_ev) = Client::connect(options(&server, "pub", Format::Json));
    // The receiver comes back well after the publisher, so it misses what the publisher sends
    // meanwhile and must recover it by seq.
    let r_opts = options(&server, "sub", Format::Proto).backoff(quick(Duration::from_millis(800)));
    let (receiver, mut r_ev) = Client::connect(r_opts);
    // A second connection of the receiver's user, back as soon as the publisher: direct
    // messages sent while it is up are not "offline" ones, so the receiver gets them only by
    // its own `sync`.
    let (_twin, mut t_ev) = Client::connect(options(&server, "sub", Format::Json));
    connected(&mut p_ev).await;
    connected(&mut r_ev).await;
    connected(&mut t_ev).await;
    publisher.join("room").await.unwrap();
    receiver.join("room").await.unwrap();

    const N: usize = 60;
    let mut replies = Vec::new();
    // Direct messages to the receiver go along: its inbox recovers with `sync`.
    let mut dm_replies = Vec::new();
    let mut dms = Vec::new();
    let mut got = Vec::new();
    for i in 0..N {
        replies.push(publisher.publish("room", Body::json(&i).unwrap()));
        if i % 6 == 0 {
            dm_replies.push(publisher.send("sub", Body::json(&(1000 + i)).unwrap()));
        }
        if i == 20 {
            // Let a few be acked and delivered before the restart, then restart while the
            // rest are being sent.
            while got.is_empty() {
                let m = message(&mut r_ev).await;
                let n = m.body.decode::<usize>().unwrap().unwrap();
                if m.room.is_some() {
                    got.push(n)
                } else {
                    dms.push(n)
                }
            }
            server = server.restart(fast);
        }
        if i == 40 {
            // The publisher is back and sending before the receiver is.
            let rec = connected(&mut p_ev)
                .await
                .expect("a reconnect reports its recovery");
            assert!(rec.complete, "{rec:?}");
        }
    }
    let mut seqs = BTreeMap::new();
    for (i, r) in replies.into_iter().enumerate() {
        let ack = tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
        let seq = ack.seq.unwrap();
        assert!(seqs.insert(seq, i).is_none(), "seq {seq} acked twice");
    }
    // One seq per message, in the order published.
    let order: Vec<usize> = seqs.values().copied().collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "acked out of order");
    let dm_count = dm_replies.len();
    for r in dm_replies {
        tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
    }

    // The rest of the receiver's messages, in order, the recovery report among them.
    let mut recovery = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < N || dms.len() < dm_count {
        let ev = tokio::time::timeout_at(deadline, r_ev.recv())
            .await
            .unwrap_or_else(|_| panic!("the receiver has {got:?} and direct {dms:?}"))
            .unwrap();
        match ev {
            Event::Message(m) => {
                let n = m.body.decode::<usize>().unwrap().unwrap();
                if m.room.is_some() {
                    got.push(n)
                } else {
                    dms.push(n)
                }
            }
            Event::Connected { recovery: r, .. } => recovery = r,
            _ => {}
        }
    }
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "lost, duplicated or reordered"
    );
    let sent: Vec<usize> = (0..N).filter(|i| i % 6 == 0).map(|i| 1000 + i).collect();
    assert_eq!(dms, sent, "direct messages lost, duplicated or reordered");
    let recovery = recovery.expect("the receiver reconnected and says what it recovered");
    assert!(recovery.complete, "{recovery:?}");
    let room = &recovery.rooms[0];
    assert!(
        room.recovered && room.replayed > 0,
        "nothing replayed: {room:?}"
    );
    // Nothing more comes: no duplicate after the last.
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(Event::Message(m)) = r_ev.recv().await {
                return m;
            }
        }
    })
    .await;
    assert!(extra.is_err(), "a message came twice: {extra:?}");
    drop(server);
}

/// With a low publish rate, a burst of publishes is partly refused `rate_limited`; the outbox
/// retries them one at a time per room, so the room stores them in the order published.
#[tokio::test(flavor = "multi_thread")]
async fn one_senders_order_holds_through_rate_limiting() {
    let server = TestServer::start(|c| {
        fast(c);
        c.publish_rate = 20;
        c.publish_burst = 3;
    });
    for format in [Format::Json, Format::Proto] {
        let user = format!("s{format:?}");
        let (c, mut ev) = Client::connect(options(&server, &user, format));
        connected(&mut ev).await;
        let room = format!("rl{format:?}");
        c.join(&room).await.unwrap();
        const N: u64 = 15;
        let replies: Vec<_> = (0..N)
            .map(|i| c.publish(&room, Body::json(&i).unwrap()))
            .collect();
        for (i, r) in replies.into_iter().enumerate() {
            let ack = tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
            assert_eq!(ack.seq, Some(i as u64 + 1), "{format:?}: publish {i}");
        }
        // The history request counts against the same rate: asked until the budget allows.
        let page = loop {
            match c.history(&room, None, None).await {
                Err(e) if e.code() == Some("rate_limited") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r.unwrap(),
            }
        };
        let bodies: Vec<u64> = page
            .messages
            .iter()
            .rev()
            .map(|m| m.body.decode().unwrap().unwrap())
            .collect();
        assert_eq!(bodies, (0..N).collect::<Vec<_>>(), "{format:?}");
        c.close();
    }
}

/// A JWT in the first frame (`first_frame_auth`) in the binary form, and on the URL in JSON; a
/// refused token is a typed handshake refusal and the client stops.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_on_the_url_and_in_the_first_frame() {
    let server = TestServer::start(|c| {
        fast(c);
        c.jwt_secret = Some(SECRET.to_string());
        c.api = false;
        c.first_frame_auth = true;
    });
    let url = format!("ws://{}/ws", server.addr());
    for (auth, format) in [
        (Auth::FirstFrame(token_for("ff")), Format::Proto),
        (Auth::Token(token_for("url")), Format::Json),
    ] {
        let (c, mut ev) = Client::connect(Options::new(url.clone(), auth).format(format));
        let user = next(&mut ev, |e| match e {
            Event::Connected { user, .. } => Some(user),
            _ => None,
        })
        .await;
        assert_eq!(user, if format == Format::Proto { "ff" } else { "url" });
        c.join("t").await.unwrap();
        assert!(
            c.publish("t", Body::text("ok"))
                .await
                .unwrap()
                .seq
                .is_some()
        );
        c.close();
    }
    let (c, mut ev) = Client::connect(Options::new(url, Auth::Token("not-a-jwt".into())));
    let reason = next(&mut ev, |e| match e {
        Event::Closed { reason } => Some(reason),
        _ => None,
    })
    .await;
    assert!(
        reason.contains("401") && reason.contains("unauthorized"),
        "{reason}"
    );
    let err = c.join("t").await.unwrap_err();
    assert!(matches!(err, shardcast_client::Error::Closed(_)), "{err}");
}

/// A reply that never comes (the server's answers held by a proxy, the connection left open)
/// fails with the typed `Timeout` after `request_timeout`; the outbox's publish has no timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_that_never_comes_times_out() {
    let server = TestServer::start(fast);
    let proxy = common::proxy::Proxy::start(server.addr()).await;
    let opts = Options::new(format!("ws://{}/ws", proxy.addr()), Auth::Dev("t".into()))
        .request_timeout(Duration::from_millis(300));
    let (c, mut ev) = Client::connect(opts);
    connected(&mut ev).await;
    c.join("r").await.unwrap();
    proxy.mute(proxy.upstream_ports()[0]);
    let err = tokio::time::timeout(WAIT, c.history("r", None, None))
        .await
        .expect("the reply should have timed out")
        .unwrap_err();
    assert_eq!(
        err,
        shardcast_client::Error::Timeout(Duration::from_millis(300))
    );
    let publish = c.publish("r", Body::text("later"));
    tokio::pin!(publish);
    assert!(
        tokio::time::timeout(Duration::from_millis(600), &mut publish)
            .await
            .is_err(),
        "a publish waits in the outbox past request_timeout"
    );
}

/// A token that expires on an open connection (4001) is replaced by `get_token`'s and the
/// client reconnects and recovers instead of stopping; `refresh` answers with the new `exp`.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_replaced_from_get_token() {
    let server = TestServer::start(|c| {
        fast(c);
        c.jwt_secret = Some(SECRET.into());
        c.api = false;
        c.heartbeat_ms = 500;
        c.token_grace_secs = 0;
    });
    let url = format!("ws://{}/ws", server.addr());
    let short = mint(SECRET, &json!({"sub": "alice", "exp": now_secs() + 2}));
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let opts = Options::new(url.clone(), Auth::Token(short))
        .backoff(quick(Duration::from_millis(20)))
        .get_token(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(token_for("alice")) }
        });
    let (alice, mut ev) = Client::connect(opts);
    assert_eq!(connected(&mut ev).await, None);
    alice.join("r").await.unwrap();
    let (code, retry) = next(&mut ev, |e| match e {
        Event::Disconnected { code, retry_in, .. } => Some((code, retry_in)),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(4001));
    assert!(retry.is_some(), "a new token reconnects");
    let recovery = connected(&mut ev).await.expect("a reconnect recovers");
    assert!(recovery.complete, "{recovery:?}");
    assert!(
        alice
            .publish("r", Body::text("back"))
            .await
            .unwrap()
            .seq
            .is_some()
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

    let exp = now_secs() + 600;
    let (bob, mut b_ev) = Client::connect(Options::new(url, Auth::Token(token_for("bob"))));
    connected(&mut b_ev).await;
    let fresh = mint(SECRET, &json!({"sub": "bob", "exp": exp}));
    assert_eq!(bob.refresh(&fresh).await.unwrap(), Some(exp));
}

/// `wss://` through a TLS terminator (the server serves plain WebSocket): the fixture CA
/// given as `extra_ca_pem` is trusted and messages flow; without it the certificate is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn wss_with_an_extra_ca() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let server = TestServer::start(fast);
    let certs = CertificateDer::pem_file_iter(common::keys::fixture("redis-tls/server.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(common::keys::fixture("redis-tls/server.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = server.addr();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut up = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    let url = format!("wss://localhost:{port}/ws");
    let ca = std::fs::read(common::keys::fixture("redis-tls/ca.crt")).unwrap();
    let (a, mut a_ev) = Client::connect(
        Options::new(url.clone(), Auth::Dev("a".into()))
            .format(Format::Proto)
            .extra_ca_pem(ca.clone()),
    );
    let (b, mut b_ev) =
        Client::connect(Options::new(url.clone(), Auth::Dev("b".into())).extra_ca_pem(ca));
    connected(&mut a_ev).await;
    connected(&mut b_ev).await;
    a.join("tls").await.unwrap();
    b.join("tls").await.unwrap();
    a.publish("tls", Body::text("secret")).await.unwrap();
    let m = message(&mut b_ev).await;
    assert_eq!(m.body.decode::<String>().unwrap().unwrap(), "secret");

    let (_c, mut c_ev) = Client::connect(Options::new(url, Auth::Dev("c".into())));
    let reason = next(&mut c_ev, |e| match e {
        Event::Disconnected { reason, .. } => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
}
