//! The Python hook backend (tests/fixtures/hook_backend.py, standard library only) as a child
//! process of a test: started on a free port, killed when dropped.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use shardcast::config::{HookOnError, RoomHook, RoomRule};

use super::TIMEOUT;

/// The tests' room rules: `mod:` rooms run the join and publish hooks (deny on error), `lax:`
/// the publish hook (allow on error); other rooms none.
pub fn hook_rules() -> Vec<RoomRule> {
    vec![
        RoomRule {
            prefix: "mod:".into(),
            hooks: Some(vec![RoomHook::Join, RoomHook::Publish]),
            hook_on_error: Some(HookOnError::Deny),
            ..RoomRule::default()
        },
        RoomRule {
            prefix: "lax:".into(),
            hooks: Some(vec![RoomHook::Publish]),
            hook_on_error: Some(HookOnError::Allow),
            ..RoomRule::default()
        },
    ]
}

/// The Python backend, killed when dropped.
pub struct Backend {
    _child: Child,
    pub url: String,
}

/// The test certificates: `ca.crt`, and `server.crt` (for 127.0.0.1) it signed.
pub const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/redis-tls");

impl Backend {
    pub async fn start() -> Backend {
        Backend::start_with(&[], "http").await
    }

    /// The backend over https, with the certificate in [`TLS_DIR`].
    pub async fn start_tls() -> Backend {
        Backend::start_with(&["--tls", TLS_DIR], "https").await
    }

    async fn start_with(args: &[&str], scheme: &str) -> Backend {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hook_backend.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the hook backend; scripts/test.sh installs it");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        tokio::time::timeout(TIMEOUT, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("the backend prints its port")
            .expect("read the backend's port");
        let port: u16 = line.trim().parse().expect("a port");
        Backend {
            _child: child,
            url: format!("{scheme}://127.0.0.1:{port}/hook"),
        }
    }
}
