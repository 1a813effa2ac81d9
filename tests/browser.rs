//! The chat page (`/`) and the operator page (`/admin`) in a real headless Chromium, driven
//! over WebDriver (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them):
//! two users chat and see each other's presence, a page survives a server restart, an offline
//! user gets a direct message at sign-in, markup in a message stays text, and the operator
//! page's connection count moves; room rules: a count room shows how many watch, a room the
//! user may not publish to shows why instead of a composer, and the operator page lists the
//! rooms with their rule; the outbox: messages typed while the server is away show greyed and
//! go out once, also across a reload; edits, deletes and reactions show on the other side
//! live and after a reload. Screenshots go to `target/screenshots/`.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{TestServer, dev};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use shardcast::config::{PresenceMode, PublishMode, RoomRule};
use tempfile::TempDir;
use tokio::net::TcpStream;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const API_KEY: &str = "browser-test-key";
const WAIT: Duration = Duration::from_secs(15);

/// chromedriver on a free port; it and its browsers are killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver; .ci/run does it)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        // Its own process group, so that dropping the driver also ends the browsers it
        // started, even when the test fails before closing them.
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new browser, with its own empty profile.
    async fn browser(&self, profile: &TempDir) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1200,800",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"goog:chromeOptions": {"binary": CHROMIUM, "args": args}});
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("start a chromium session: {e}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this driver leads; no memory is touched.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Polls `script` (a function body returning a value) until `ok` accepts its result.
async fn wait_js(b: &Client, what: &str, script: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = b
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{what}: script failed: {e}"));
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last value {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finds `css` and acts on it, finding it again when the page re-rendered it in between (a
/// stale element: the sidebar's list is rebuilt on every room event).
async fn act<F, Fut>(b: &Client, css: &str, what: &str, f: F)
where
    F: Fn(fantoccini::elements::Element) -> Fut,
    Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let e = b.find(Locator::Css(css)).await.expect(css);
        match f(e).await {
            Ok(()) => return,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{what} {css}: {e}"),
        }
    }
}

async fn fill(b: &Client, css: &str, text: &str) {
    act(b, css, "fill", |e| async move {
        e.clear().await?;
        e.send_keys(text).await
    })
    .await;
}

async fn click(b: &Client, css: &str) {
    act(b, css, "click", |e| async move { e.click().await }).await;
}

async fn sign_in(b: &Client, base: &str, user: &str) {
    b.goto(&format!("{base}/"))
        .await
        .expect("open the chat page");
    fill(b, "#user", user).await;
    click(b, "#signin-btn").await;
    wait_js(
        b,
        "signed in",
        "return document.getElementById('me').textContent",
        |v| v == user,
    )
    .await;
}

async fn join(b: &Client, room: &str) {
    fill(b, "#join-room", room).await;
    click(b, "#join-btn").await;
    // Open, not only listed: the room can be listed (by an event of the join) while the page
    // still shows the room before, which then reads what arrives there meanwhile.
    let script =
        format!("return !!document.querySelector('#rooms li.active[data-room=\"{room}\"]')");
    wait_js(b, "room in the sidebar, open", &script, |v| v == true).await;
}

async fn say(b: &Client, text: &str) {
    fill(b, "#text", text).await;
    click(b, "#send").await;
}

/// The open conversation's messages: [{from, text, seq}].
async fn messages(b: &Client) -> Vec<Value> {
    let v = b
        .execute(
            "return [...document.querySelectorAll('#list .msg')].map(li => ({
                from: li.querySelector('.from').textContent,
                text: li.querySelector('.text').textContent,
                seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq)}))",
            vec![],
        )
        .await
        .expect("read the messages");
    v.as_array().cloned().unwrap_or_default()
}

async fn wait_texts(b: &Client, what: &str, want: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let msgs = messages(b).await;
        let texts: Vec<&str> = msgs.iter().filter_map(|m| m["text"].as_str()).collect();
        if texts.ends_with(want) {
            return msgs;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the page shows {texts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens `/admin` and gives it the API key.
async fn open_operator_page(b: &Client, base: &str) {
    b.goto(&format!("{base}/admin")).await.expect("open /admin");
    fill(b, "#key", API_KEY).await;
    click(b, "#key-btn").await;
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(name), png).expect("write the screenshot");
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_and_operator_pages_in_chromium() {
    let server = TestServer::start(|c| c.api_key = Some(API_KEY.into()));
    let base = format!("http://{}", server.addr());
    let proxy = Proxy::start(server.addr()).await;
    let driver = Driver::start().await;
    let profiles: Vec<TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = driver.browser(&profiles[0]).await;
    let bob = driver.browser(&profiles[1]).await;

    // Alice and Bob join a room, see each other online and exchange messages. Bob's page
    // comes through the proxy, so the test decides when it may reconnect.
    sign_in(&alice, &base, "alice").await;
    sign_in(&bob, &format!("http://{}", proxy.addr()), "bob").await;
    join(&alice, "lobby").await;
    join(&bob, "lobby").await;
    let presence = "return document.getElementById('presence').textContent";
    wait_js(&alice, "alice sees bob online", presence, |v| {
        v.as_str().is_some_and(|s| s.contains("bob"))
    })
    .await;
    wait_js(&bob, "bob sees alice online", presence, |v| {
        v.as_str().is_some_and(|s| s.contains("alice"))
    })
    .await;
    say(&alice, "hi bob").await;
    wait_texts(&bob, "bob gets alice's message", &["hi bob"]).await;
    say(&bob, "hello alice").await;
    wait_texts(&alice, "alice gets bob's reply", &["hi bob", "hello alice"]).await;

    eprintln!("browser test: markup");
    // Markup in a message is text: no element is made, no script runs.
    let evil = "<img src=x onerror=alert(1)>";
    say(&alice, evil).await;
    let msgs = wait_texts(&bob, "bob gets the markup as text", &[evil]).await;
    assert_eq!(msgs.last().unwrap()["from"], "alice");
    let imgs = bob
        .execute(
            "return document.querySelectorAll('#list img').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(imgs, json!(0), "the message made an <img>");
    assert!(bob.get_alert_text().await.is_err(), "an alert is open");

    eprintln!("browser test: direct message");
    // A direct message to Carol, who has never signed in.
    fill(&alice, "#dm-user", "carol").await;
    click(&alice, "#dm-btn").await;
    say(&alice, "carol, are you there?").await;
    wait_texts(&alice, "alice's direct message", &["carol, are you there?"]).await;

    eprintln!("browser test: restart");
    // A restart: Bob's page cannot reconnect until the proxy lets it; meanwhile alice
    // (reconnected on her own) and the API publish.
    proxy.refuse(true);
    let server = server.restart(|c| c.api_key = Some(API_KEY.into()));
    eprintln!("browser test: restarted");
    let status = "return document.getElementById('status').dataset.state";
    wait_js(&bob, "bob's page says reconnecting", status, |v| {
        v == "reconnecting"
    })
    .await;
    click(&alice, "#rooms li[data-room=lobby]").await;
    wait_js(&alice, "alice is back", status, |v| {
        v == "recovered" || v == "online"
    })
    .await;
    for text in ["while you were away 1", "while you were away 2"] {
        say(&alice, text).await;
        wait_texts(&alice, "alice's message is acknowledged", &[text]).await;
    }
    let mut api = common::Http::connect(server.addr()).await;
    let auth = format!("apikey {API_KEY}");
    let r = api
        .request(
            "POST",
            "/api/publish",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            r#"{"room":"lobby","body":{"text":"from the operator"}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eprintln!("browser test: bob may reconnect");
    proxy.refuse(false);
    wait_js(&bob, "bob's page says recovered", status, |v| {
        v == "recovered"
    })
    .await;
    let msgs = wait_texts(
        &bob,
        "bob gets what he missed",
        &[
            evil,
            "while you were away 1",
            "while you were away 2",
            "from the operator",
        ],
    )
    .await;
    let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "bob's messages are in order, each once: {msgs:?}"
    );
    assert_eq!(seqs.len(), msgs.len(), "every room message has its seq");
    screenshot(&bob, "chat.png").await;
    bob.set_window_size(390, 844).await.expect("phone size");
    tokio::time::sleep(Duration::from_millis(300)).await; // the layout settles
    screenshot(&bob, "chat-phone.png").await;
    click(&bob, "#menu").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the sidebar slides in
    screenshot(&bob, "chat-phone-rooms.png").await;
    bob.set_window_size(1200, 800).await.expect("desktop size");

    eprintln!("browser test: carol");
    // Carol signs in (in Bob's browser) and finds Alice's message waiting.
    sign_in(&bob, &base, "carol").await;
    let unread = "return document.querySelector('#dms li[data-user=alice] .unread')?.textContent";
    wait_js(&bob, "carol has an unread direct message", unread, |v| {
        v == "1"
    })
    .await;
    click(&bob, "#dms li[data-user=alice]").await;
    wait_texts(&bob, "carol reads it", &["carol, are you there?"]).await;

    // She joins the lobby, which now has 66 messages: the newest 50 come first, and
    // scrolling to the top brings the rest.
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    // A new connection: the first may have idled past keepalive_timeout_ms (5 s) meanwhile.
    let mut api = common::Http::connect(server.addr()).await;
    for n in 1..=60 {
        let body = format!(r#"{{"room":"lobby","body":{{"text":"filler {n}"}}}}"#);
        let r = api.request("POST", "/api/publish", &headers, &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    join(&bob, "lobby").await;
    let count = "return document.querySelectorAll('#list .msg').length";
    wait_js(&bob, "the first page of history", count, |v| v == 50).await;
    bob.execute("document.getElementById('messages').scrollTop = 0", vec![])
        .await
        .expect("scroll to the top");
    wait_js(&bob, "the rest of the history", count, |v| v == 66).await;
    let msgs = messages(&bob).await;
    let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=66).collect::<Vec<_>>(),
        "the whole lobby, in order"
    );
    assert_eq!(msgs[0]["text"], "hi bob");

    eprintln!("browser test: operator page");
    // The operator page: the connection count moves when a client connects.
    open_operator_page(&alice, &base).await;
    let count = "return Number(document.getElementById('connections').textContent) || -1";
    let before = wait_js(&alice, "a connection count", count, |v| {
        v.as_i64() > Some(0)
    })
    .await;
    let before = before.as_i64().unwrap();
    let _extra = dev(server.addr(), "dave").await;
    wait_js(&alice, "the count moves", count, |v| {
        v.as_i64() == Some(before + 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // a few points on the chart
    screenshot(&alice, "admin.png").await;

    // Sign-in by token, on a server in JWT mode: a refused token is reported (the page
    // cannot see the handshake's 401; the library asks with a plain GET), a good one works.
    eprintln!("browser test: tokens");
    let jwt = TestServer::start(|c| {
        c.jwt_secret = Some(common::SECRET.into());
        c.api = false;
    });
    let bad = common::mint(
        "wrong",
        &json!({"sub": "erin", "exp": common::now_secs() + 60}),
    );
    for (token, outcome) in [(bad, "refused"), (common::token_for("erin"), "accepted")] {
        alice
            .goto(&format!("http://{}/", jwt.addr()))
            .await
            .expect("open the chat page");
        fill(&alice, "#token", &token).await;
        click(&alice, "#signin-btn").await;
        let shown = "return [document.getElementById('me').textContent,
                             document.getElementById('signin-error').textContent]";
        let v = wait_js(&alice, outcome, shown, |v| v[0] != "" || v[1] != "").await;
        if outcome == "refused" {
            assert_eq!(v, json!(["", "Could not sign in: unauthorized"]));
        } else {
            assert_eq!(v, json!(["erin", ""]));
        }
    }

    alice.close().await.expect("close alice's browser");
    bob.close().await.expect("close bob's browser");
    drop(proxy);
    drop(server);
}

/// Room rules on the pages: in a `count` room the chat page shows "N watching" (from the join
/// ack, then `occupancy` events) and no names; where the user may not publish (`publish =
/// "api"`) it shows why instead of the composer, and a plain room keeps its composer; the
/// operator page lists the rooms with their rule and member count.
#[tokio::test(flavor = "multi_thread")]
async fn room_rules_on_the_chat_and_operator_pages() {
    let server = TestServer::start(|c| {
        c.api_key = Some(API_KEY.into());
        c.occupancy_interval_ms = 100;
        c.rooms = vec![
            RoomRule {
                prefix: "live:".into(),
                presence: Some(PresenceMode::Count),
                ..RoomRule::default()
            },
            RoomRule {
                prefix: "news:".into(),
                publish: Some(PublishMode::Api),
                ..RoomRule::default()
            },
        ];
    });
    let base = format!("http://{}", server.addr());
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let b = driver.browser(&profile).await;
    sign_in(&b, &base, "alice").await;

    let presence = "return document.getElementById('presence').textContent";
    let composer = "return [document.getElementById('composer').hidden,
                            document.getElementById('readonly').hidden,
                            document.getElementById('readonly').textContent]";
    join(&b, "live:keynote").await;
    wait_js(&b, "alone in the count room", presence, |v| {
        v == "1 watching"
    })
    .await;
    let mut watchers = Vec::new();
    for user in ["w1", "w2"] {
        let mut w = dev(server.addr(), user).await;
        w.join("live:keynote").await;
        watchers.push(w);
    }
    wait_js(&b, "the count moves", presence, |v| v == "3 watching").await;
    let shown = b
        .execute(composer, vec![])
        .await
        .expect("read the composer");
    assert_eq!(shown, json!([false, true, ""]), "members may publish here");
    screenshot(&b, "chat-count-room.png").await;

    join(&b, "news:today").await;
    let v = wait_js(&b, "read only in an api room", composer, |v| v[0] == true).await;
    assert_eq!(v[1], false, "the reason is shown: {v}");
    assert!(
        v[2].as_str().is_some_and(|s| s.contains("server")),
        "the reason names the server: {v}"
    );
    wait_js(&b, "a list room names its members", presence, |v| {
        v.as_str()
            .is_some_and(|s| s.contains("1 online") && s.contains("alice"))
    })
    .await;
    screenshot(&b, "chat-read-only.png").await;
    click(&b, "#rooms li[data-room=\"live:keynote\"]").await;
    wait_js(&b, "the composer is back", composer, |v| v[0] == false).await;
    wait_js(&b, "the count again", presence, |v| v == "3 watching").await;
    watchers.pop();
    wait_js(&b, "a member leaves", presence, |v| v == "2 watching").await;
    for user in ["r1", "r2"] {
        let mut r = dev(server.addr(), user).await;
        r.join("news:today").await;
        watchers.push(r);
    }

    // The operator page in a browser of its own: Alice's page stays in its rooms.
    let operator_profile = tempfile::tempdir().unwrap();
    let operator = driver.browser(&operator_profile).await;
    open_operator_page(&operator, &base).await;
    let rows = "return [...document.querySelectorAll('#room-list tr')]
                    .map(tr => [...tr.children].map(td => td.textContent))";
    // The biggest room first, each with its rule.
    let want = json!([
        ["news:today", "3", "news:*", "api", "list"],
        ["live:keynote", "2", "live:*", "members", "count"],
    ]);
    wait_js(&operator, "the rooms panel", rows, |v| *v == want).await;
    operator
        .execute(
            "document.getElementById('room-list').scrollIntoView()",
            vec![],
        )
        .await
        .expect("scroll to the rooms");
    screenshot(&operator, "admin-rooms.png").await;
    operator
        .close()
        .await
        .expect("close the operator's browser");
    b.close().await.expect("close alice's browser");
}

/// The outbox on the chat page (`outbox: "local"`): messages typed while the server cannot be
/// reached show at once, greyed (`.msg.pending`), and each appears once, acknowledged, when it
/// is back; one typed just before the page is closed is sent once by the page opened next,
/// which rejoins its room for it.
#[tokio::test(flavor = "multi_thread")]
async fn chat_page_shows_unsent_messages_greyed_and_sends_them_once() {
    let server = TestServer::start(|_| {});
    // The page goes through the proxy: a restart drops it, and it stays out while refused.
    let proxy = Proxy::start(server.addr()).await;
    let base = format!("http://{}", proxy.addr());
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let b = driver.browser(&profile).await;
    sign_in(&b, &base, "alice").await;
    join(&b, "lobby").await;
    say(&b, "online").await;
    let acked = "return document.querySelectorAll('#list .msg[data-seq]').length";
    wait_js(&b, "the first message acknowledged", acked, |v| v == 1).await;

    proxy.refuse(true);
    let server = server.restart(|_| {});
    let status = "return document.getElementById('status').dataset.state";
    wait_js(&b, "the page is reconnecting", status, |v| {
        v == "reconnecting"
    })
    .await;
    say(&b, "offline 1").await;
    say(&b, "offline 2").await;
    let pending =
        "return [...document.querySelectorAll('#list .msg.pending .text')].map(e => e.textContent)";
    wait_js(&b, "unsent messages greyed", pending, |v| {
        v == &json!(["offline 1", "offline 2"])
    })
    .await;
    screenshot(&b, "chat-pending.png").await;
    proxy.refuse(false);
    wait_js(&b, "nothing greyed once sent", pending, |v| v == &json!([])).await;
    let want = ["online", "offline 1", "offline 2"];
    let msgs = wait_texts(&b, "each message once", &want).await;
    let seqs: Vec<Value> = msgs.iter().map(|m| m["seq"].clone()).collect();
    assert_eq!(seqs, [json!(1), json!(2), json!(3)], "{msgs:?}");

    // Typed while the server is away, then the page is closed before it is back.
    proxy.refuse(true);
    let server = server.restart(|_| {});
    wait_js(&b, "reconnecting again", status, |v| v == "reconnecting").await;
    say(&b, "before the reload").await;
    wait_js(&b, "greyed before the reload", pending, |v| {
        v == &json!(["before the reload"])
    })
    .await;
    // The page goes away while unsent (its copy stays in localStorage), and opens again once
    // the server can be reached (the page itself comes through the proxy too).
    b.goto("about:blank").await.expect("leave the page");
    proxy.refuse(false);
    sign_in(&b, &base, "alice").await;
    let want = ["online", "offline 1", "offline 2", "before the reload"];
    wait_texts(&b, "the new page sends it", &want).await;
    wait_js(&b, "nothing greyed on the new page", pending, |v| {
        v == &json!([])
    })
    .await;

    // Stored once each: a fresh page's history has the four, in order.
    sign_in(&b, &base, "alice").await;
    join(&b, "lobby").await;
    let msgs = wait_texts(&b, "the history after another reload", &want).await;
    let seqs: Vec<Value> = msgs.iter().map(|m| m["seq"].clone()).collect();
    assert_eq!(seqs, [json!(1), json!(2), json!(3), json!(4)], "{msgs:?}");
    b.close().await.expect("close the browser");
    drop(proxy);
    drop(server);
}

/// The badge of `room` in the sidebar ("" when nothing is unread).
async fn badge(b: &Client, what: &str, room: &str, want: &str) {
    let script = format!(
        "const li = document.querySelector('#rooms li[data-room=\"{room}\"]'); \
         return li ? li.querySelector('.unread').textContent : null"
    );
    wait_js(b, what, &script, |v| v == want).await;
}

/// Issue 23 on the chat page: "bob is typing…" shows and goes away on its own; unread badges
/// come from the server's read positions, so two pages of one user agree, and opening the room
/// on one clears both; the read marker shows where the user had read up to.
#[tokio::test(flavor = "multi_thread")]
async fn chat_page_shows_typing_and_server_unread_badges() {
    let server = TestServer::start(|_| {});
    let base = format!("http://{}", server.addr());
    let driver = Driver::start().await;
    let profiles = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let bob = driver.browser(&profiles[0]).await;
    let a = driver.browser(&profiles[1]).await;
    let a2 = driver.browser(&profiles[2]).await;
    sign_in(&bob, &base, "bob").await;
    join(&bob, "lobby").await;
    sign_in(&a, &base, "alice").await;
    join(&a, "lobby").await;

    // Bob types: alice sees it, then it expires without a "stopped" signal.
    let typing = "return document.getElementById('typing').textContent";
    fill(&bob, "#text", "hel").await;
    wait_js(&a, "bob is typing", typing, |v| v == "bob is typing…").await;
    screenshot(&a, "chat-typing.png").await;
    wait_js(&a, "the typing line expires", typing, |v| v == "").await;
    fill(&bob, "#text", "").await;

    // Alice's two pages look at another room; bob writes three messages in lobby.
    join(&a, "other").await;
    sign_in(&a2, &base, "alice").await;
    join(&a2, "lobby").await;
    join(&a2, "other").await;
    for text in ["one", "two", "three"] {
        say(&bob, text).await;
    }
    badge(&a, "three unread on the first page", "lobby", "3").await;
    badge(&a2, "three unread on the second page", "lobby", "3").await;

    // Opening lobby on one page reads it: both badges clear.
    click(&a, "#rooms li[data-room=\"lobby\"]").await;
    wait_texts(&a, "lobby's messages", &["one", "two", "three"]).await;
    badge(&a, "read on the first page", "lobby", "").await;
    badge(&a2, "read on the second page too", "lobby", "").await;

    // One more while both look elsewhere: the marker on opening shows where reading stopped.
    click(&a, "#rooms li[data-room=\"other\"]").await;
    say(&bob, "four").await;
    badge(&a, "one unread on the first page", "lobby", "1").await;
    badge(&a2, "one unread on the second page", "lobby", "1").await;
    click(&a2, "#rooms li[data-room=\"lobby\"]").await;
    wait_texts(
        &a2,
        "lobby on the second page",
        &["one", "two", "three", "four"],
    )
    .await;
    let marker = "const m = document.querySelector('#list .read-marker'); \
                  return m ? m.nextElementSibling.querySelector('.text').textContent : null";
    wait_js(&a2, "the read marker before the new message", marker, |v| {
        v == "four"
    })
    .await;
    screenshot(&a2, "chat-read-marker.png").await;
    badge(&a, "read on the other page", "lobby", "").await;
    for b in [bob, a, a2] {
        b.close().await.expect("close the browser");
    }
}

/// Edits, deletes and reactions on the chat page (issue 23): alice edits and deletes her own
/// messages and bob sees both live and after a reload; bob's reaction shows on alice's page;
/// bob's page offers no edit or delete of alice's messages.
#[tokio::test(flavor = "multi_thread")]
async fn chat_page_shows_edits_deletes_and_reactions_live_and_after_a_reload() {
    let server = TestServer::start(|_| {});
    let base = format!("http://{}", server.addr());
    let driver = Driver::start().await;
    let (pa, pb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = driver.browser(&pa).await;
    let b = driver.browser(&pb).await;
    sign_in(&a, &base, "alice").await;
    join(&a, "lobby").await;
    sign_in(&b, &base, "bob").await;
    join(&b, "lobby").await;
    say(&a, "first").await;
    say(&a, "second").await;
    wait_texts(&b, "bob sees both", &["first", "second"]).await;
    let edit_buttons = "return document.querySelectorAll('#list .msg[data-seq] .edit-btn').length";
    wait_js(&a, "alice may edit her two", edit_buttons, |v| v == 2).await;
    let theirs = "return document.querySelectorAll('#list .edit-btn, #list .delete-btn').length";
    wait_js(&b, "bob may not edit alice's", theirs, |v| v == 0).await;

    click(&a, "#list .msg[data-seq=\"1\"] .edit-btn").await;
    fill(&a, "#text", "first, fixed").await;
    click(&a, "#send").await;
    wait_texts(&b, "the edit, live", &["first, fixed", "second"]).await;
    wait_texts(&a, "alice's own edit", &["first, fixed", "second"]).await;
    let edited = "return !!document.querySelector('#list .msg[data-seq=\"1\"] .edited')";
    wait_js(&b, "marked edited", edited, |v| v == true).await;
    click(&a, "#list .msg[data-seq=\"2\"] .delete-btn").await;
    let deleted = ["first, fixed", "This message was deleted."];
    wait_texts(&b, "the delete, live", &deleted).await;
    wait_texts(&a, "alice's own delete", &deleted).await;

    click(&b, "#list .msg[data-seq=\"1\"] .react-btn").await;
    let reactions = "return [...document.querySelectorAll('#list .msg[data-seq=\"1\"] \
                     .reaction')].map(e => e.textContent + (e.classList.contains('mine') ? \
                     ' mine' : ''))";
    wait_js(&a, "bob's reaction at alice", reactions, |v| {
        v == &json!(["👍 1"])
    })
    .await;
    screenshot(&a, "chat-edits.png").await;

    // A reload: the folded history shows the same.
    sign_in(&b, &base, "bob").await;
    join(&b, "lobby").await;
    wait_texts(&b, "after a reload", &deleted).await;
    wait_js(&b, "marked edited after a reload", edited, |v| v == true).await;
    wait_js(&b, "bob's own reaction after a reload", reactions, |v| {
        v == &json!(["👍 1 mine"])
    })
    .await;
    a.close().await.expect("close alice's browser");
    b.close().await.expect("close bob's browser");
}

/// The next `message` frame of a JSON session, reading past presence.
async fn next_message(c: &mut common::Client) -> Value {
    loop {
        let f = c.recv_json().await;
        if f["type"] == "message" {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_page_speaks_the_binary_protocol_with_protocol_proto() {
    let server = TestServer::start(|_| {});
    let base = format!("http://{}", server.addr());
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let b = driver.browser(&profile).await;
    b.goto(&format!("{base}/?protocol=proto"))
        .await
        .expect("open the chat page in proto mode");
    fill(&b, "#user", "alice").await;
    click(&b, "#signin-btn").await;
    let spoken = "return document.getElementById('status').dataset.protocol || ''";
    wait_js(&b, "the page negotiated shardcast.proto", spoken, |v| {
        v == "shardcast.proto"
    })
    .await;
    join(&b, "lobby").await;
    let mut bob = dev(server.addr(), "bob").await;
    bob.join("lobby").await;

    // Sent from the binary page, seen by the JSON session as the page's JSON body.
    say(&b, "hello from proto").await;
    let m = next_message(&mut bob).await;
    assert_eq!(
        (&m["from"], &m["body"]),
        (&json!("alice"), &json!({"text": "hello from proto"})),
        "{m}"
    );
    // And the other way.
    bob.publish("lobby", json!({"text": "hello from json"}))
        .await;
    let msgs = wait_texts(
        &b,
        "the JSON session's message",
        &["hello from proto", "hello from json"],
    )
    .await;
    let seqs: Vec<Value> = msgs.iter().map(|m| m["seq"].clone()).collect();
    assert_eq!(seqs, [json!(1), json!(2)], "{msgs:?}");
    screenshot(&b, "chat-proto.png").await;
    b.close().await.expect("close the browser");

    // Without the parameter the page speaks JSON.
    let b = driver.browser(&profile).await;
    sign_in(&b, &base, "carol").await;
    wait_js(&b, "the page speaks JSON", spoken, |v| {
        v == "shardcast.json"
    })
    .await;
    b.close().await.expect("close the browser");
}
