//! Hooks over https (docs/hooks.md): the Python backend serves TLS with a certificate of a
//! private CA (tests/fixtures/redis-tls). Trusted through `hook_ca_file`, the hooks run (a
//! rewrite and a connect's presence info arrive); without it the certificate is untrusted and
//! every call fails under its `hook_on_error`: refused where it denies (a `mod:` join), through
//! unchanged where it allows (a `lax:` publish, the connect).

mod common;

use std::path::PathBuf;

use common::hook_backend::{Backend, TLS_DIR, hook_rules};
use common::*;
use serde_json::{Value, json};
use shardcast::config::{Config, HookOnError};

fn hooked(url: &str, c: &mut Config) {
    c.hook_url = Some(url.to_owned());
    c.hook_connect = true;
    c.hook_on_error = HookOnError::Allow;
    c.rooms = hook_rules();
}

fn text(t: &str) -> Value {
    json!({ "text": t })
}

async fn publish(c: &mut Client, room: &str, body: Value) -> Value {
    c.call_past_own_presence(json!({"type": "publish", "room": room, "body": body}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_backend_trusted_through_hook_ca_file_runs_the_hooks() {
    let backend = Backend::start_tls().await;
    assert!(backend.url.starts_with("https://"));
    let server = TestServer::start(|c| {
        hooked(&backend.url, c);
        c.hook_ca_file = Some(PathBuf::from(TLS_DIR).join("ca.crt"));
    });
    let mut alice = Client::connect_dev(server.addr(), "vipalice").await;
    alice.join("mod:t").await;
    let reply = publish(&mut alice, "mod:t", text("darn tls")).await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let history = alice.history_all("mod:t").await;
    assert_eq!(history[0]["body"], text("**** tls"), "the hook rewrote it");
    let reply = publish(&mut alice, "mod:t", text("spam")).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let p = (alice.call_past_own_presence(json!({"type": "presence", "room": "mod:t"}))).await;
    assert_eq!(p["info"]["vipalice"]["name"], "VIP vipalice", "{p}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_fails_the_hook_under_on_error() {
    let backend = Backend::start_tls().await;
    let server = TestServer::start(|c| hooked(&backend.url, c));
    // The connect hook failed and allows on error: admitted, with no info.
    let mut alice = Client::connect_dev(server.addr(), "vipalice").await;
    // mod: runs the join hook and denies on error.
    let reply = (alice.call_past_own_presence(json!({"type": "join", "room": "mod:u"}))).await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    alice.join("lax:u").await;
    let reply = publish(&mut alice, "lax:u", text("darn")).await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let history = alice.history_all("lax:u").await;
    assert_eq!(history[0]["body"], text("darn"), "through unchanged");
    let p = (alice.call_past_own_presence(json!({"type": "presence", "room": "lax:u"}))).await;
    assert!(p.get("info").is_none(), "{p}");
}
