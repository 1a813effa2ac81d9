//! [`BinaryServer`]: the `shardcast` binary as a child process, with its output collected, and
//! the helpers that read that output ([`parse_listening`], [`strip_ansi`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Binary arguments for a publish rate no test reaches.
pub const NO_RATE_LIMIT: [&str; 4] = ["--publish-rate", "1000000", "--publish-burst", "1000000"];

/// A `shardcast serve` child process. Killed on drop if still running.
pub struct BinaryServer {
    pub child: tokio::process::Child,
    /// Everything it printed so far, stdout and stderr interleaved.
    output: Arc<Mutex<String>>,
    /// What it printed on stderr.
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// The temp dir behind `--data`, when [`BinaryServer::spawn`] made it.
    _data: Option<TempDir>,
}

impl BinaryServer {
    /// Spawns `shardcast serve --data <tempdir> ARGS...` with no `SHARDCAST_*` variables from
    /// the test's environment, logs at info level and without colours.
    pub fn spawn(args: &[&str]) -> BinaryServer {
        let data = tempfile::tempdir().expect("temp dir");
        let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
        let mut server = BinaryServer::spawn_in(bin, data.path(), args);
        server._data = Some(data);
        server
    }

    /// [`BinaryServer::spawn`] with the environment variables `env` set (after the defaults, so
    /// `RUST_LOG` can be changed); an empty value unsets the variable.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> BinaryServer {
        let data = tempfile::tempdir().expect("temp dir");
        let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
        let mut server = BinaryServer::start(bin, data.path(), args, env);
        server._data = Some(data);
        server
    }

    /// [`BinaryServer::spawn`] of the binary at `bin` with `--data data`, a directory the
    /// caller keeps (so that a test can restart the server on it).
    pub fn spawn_in(bin: &Path, data: &Path, args: &[&str]) -> BinaryServer {
        BinaryServer::start(bin, data, args, &[])
    }

    /// [`BinaryServer::spawn_in`] with the environment variables `env` set (a fault hook).
    pub fn spawn_in_with_env(
        bin: &Path,
        data: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> BinaryServer {
        BinaryServer::start(bin, data, args, env)
    }

    /// [`BinaryServer::spawn`] with its open-files limit (`RLIMIT_NOFILE`) set to `nofile`.
    pub fn spawn_with_fd_limit(args: &[&str], nofile: u64) -> BinaryServer {
        let data = tempfile::tempdir().expect("temp dir");
        let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
        let mut cmd = BinaryServer::command(bin, data.path(), args, &[]);
        let limit = libc::rlimit {
            rlim_cur: nofile,
            rlim_max: nofile,
        };
        // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
        // touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let mut server = BinaryServer::run(cmd, bin);
        server._data = Some(data);
        server
    }

    fn start(bin: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> BinaryServer {
        BinaryServer::run(BinaryServer::command(bin, data, args, env), bin)
    }

    fn command(
        bin: &Path,
        data: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for key in inherited_shardcast_vars() {
            cmd.env_remove(key);
        }
        for &(key, value) in env {
            match value {
                // An empty value removes the variable: the server's own default applies.
                "" => cmd.env_remove(key),
                value => cmd.env(key, value),
            };
        }
        cmd
    }

    fn run(mut cmd: tokio::process::Command, bin: &Path) -> BinaryServer {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect_lines(child.stdout.take().unwrap(), vec![output.clone()]),
            collect_lines(
                child.stderr.take().unwrap(),
                vec![output.clone(), stderr.clone()],
            ),
        ];
        BinaryServer {
            child,
            output,
            stderr,
            readers,
            _data: None,
        }
    }

    /// stdout and stderr so far, interleaved.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// After the process exited: waits (briefly) until its output has been read to the end.
    pub async fn finish_output(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
    }

    /// Waits (up to 20 s) for the `listening on ADDR` line and returns ADDR.
    pub async fn listening_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.output();
            if let Some(addr) = parse_listening(&out) {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the binary exited with {status} before listening; output:\n{out}");
            }
            assert!(
                Instant::now() < deadline,
                "no `listening on ADDR` line within 20 s; output:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `wait` for the process to exit.
    pub async fn wait_exit(&mut self, wait: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!(
                "the binary did not exit within {wait:?}; output:\n{}",
                self.output()
            ),
        }
    }

    /// Sends a signal (`TERM`, `INT`) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("child still running").to_string();
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(&pid)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed: {status}");
    }
}

/// The `SHARDCAST_*` variables of the test's own environment, which a spawned binary must not
/// inherit.
pub fn inherited_shardcast_vars() -> impl Iterator<Item = String> {
    std::env::vars()
        .map(|(key, _)| key)
        .filter(|key| key.starts_with("SHARDCAST_"))
}

fn collect_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    outs: Vec<Arc<Mutex<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = strip_ansi(&line);
            for out in &outs {
                let mut out = out.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        }
    })
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Finds the address in a `listening on ADDR` line (ADDR may be written `addr=ADDR`, quoted...).
pub fn parse_listening(output: &str) -> Option<SocketAddr> {
    for line in output.lines() {
        let Some(at) = line.find("listening on") else {
            continue;
        };
        let rest = &line[at + "listening on".len()..];
        for token in rest.split(|c: char| c.is_whitespace() || c == '=' || c == ',') {
            let token = token.trim_matches(|c: char| c == '"' || c == '\'' || c == '`');
            if let Ok(addr) = token.parse::<SocketAddr>() {
                return Some(addr);
            }
        }
    }
    None
}
