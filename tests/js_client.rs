//! The JavaScript client library's own tests (clients/js/test/) against the real `shardcast`
//! binary: recovery across a restart, backoff, request timeouts, dead connections and the
//! close-code rules. They run in Node (20.10 or newer, for its WebSocket), which starts and
//! restarts the binary itself.

use std::process::Command;

#[test]
fn js_client_library_tests_pass_against_the_real_server() {
    let version = Command::new("node").arg("--version").output();
    let version = match version {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => panic!(
            "node is not installed: the client library's tests need Node.js 20.10 or newer \
             (`.ci/run` installs it; or apt-get install nodejs)"
        ),
    };
    let (major, minor) = node_version(&version);
    assert!(
        (major, minor) >= (20, 10),
        "node {version} is too old: the client library's tests need Node.js 20.10 or newer \
         (for --experimental-websocket)"
    );
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js");
    let out = Command::new("node")
        .args([
            "--experimental-websocket",
            "--test",
            "--test-reporter=spec",
            "test/client.test.mjs",
            "test/chat.test.mjs",
            "test/edits.test.mjs",
            "test/info.test.mjs",
        ])
        .current_dir(dir)
        .env("SHARDCAST_BIN", env!("CARGO_BIN_EXE_shardcast"))
        .output()
        .expect("run node --test");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "the client library's tests failed under node {version}:\n{report}"
    );
    assert!(
        report.contains("pass 20") && report.contains("fail 0"),
        "expected 20 passing tests (15 in client.test.mjs, 2 in chat.test.mjs, 2 in edits.test.mjs, 1 in info.test.mjs):\n{report}"
    );
}

/// (major, minor) of "v20.10.0".
fn node_version(v: &str) -> (u32, u32) {
    let mut parts = v
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
