//! A child process the bot starts and stops (a server node or redis-server): optionally pinned
//! with `taskset`, its output in a log file inside its own temp dir, waited on until ready,
//! stopped with SIGTERM (SIGKILL after a timeout), and killed if the bot drops it early.
//!
//! Owns the child's lifecycle only; what it is started with is `node`'s and `redis`'s.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// How long a spawned process may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a spawned process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Process {
    /// "server", "node 2", "redis": for messages.
    pub name: String,
    child: Child,
    log: PathBuf,
    /// How it was started, to start it again (`kill_and_restart`).
    cmd: Cmd,
    // Removed (with the process's data and log) when dropped.
    _dir: TempDir,
}

/// A command line, with its environment and the CPUs it is pinned to.
struct Cmd {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cpus: Option<String>,
}

impl Process {
    /// Runs `bin args` (under `taskset -c cpus` when given) with its stdout and stderr in
    /// `dir/NAME.log`.
    pub fn start(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        cpus: Option<&str>,
        dir: TempDir,
    ) -> anyhow::Result<Process> {
        let log = dir.path().join(format!("{}.log", name.replace(' ', "-")));
        let env: Vec<(String, String)> = (env.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cmd = Cmd {
            bin: bin.to_path_buf(),
            args: args.to_vec(),
            env,
            cpus: cpus.map(str::to_string),
        };
        let child = Self::launch(name, &cmd, &log)?;
        Ok(Process {
            name: name.to_string(),
            child,
            log,
            cmd,
            _dir: dir,
        })
    }

    /// Starts the command, appending to its log.
    fn launch(
        name: &str,
        Cmd {
            bin,
            args,
            env,
            cpus,
        }: &Cmd,
        log: &Path,
    ) -> anyhow::Result<Child> {
        let out = (File::options().create(true).append(true).open(log))
            .with_context(|| format!("open the {name} log"))?;
        let err = out.try_clone()?;
        let cpus = cpus.as_deref();
        let mut cmd = match cpus {
            Some(cpus) => {
                crate::sys::parse_cpu_list(cpus).with_context(|| format!("{name} CPUs"))?;
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().with_context(|| match cpus {
            Some(_) => format!(
                "cannot run `taskset -c … {}` (is util-linux installed?)",
                bin.display()
            ),
            None => format!("cannot run {}", bin.display()),
        })?;
        Ok(child)
    }

    /// Kills it with SIGKILL, waits for it, and starts it again with the same command (and
    /// so the same port and data). `ready` as in `wait_ready`.
    pub fn kill_and_restart(&mut self, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        self.check_alive()?;
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("wait for the killed process")?;
        self.child = Self::launch(&self.name, &self.cmd, &self.log)?;
        self.wait_ready(ready)
    }

    /// The process id (taskset execs the program, so it is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `ready` until it answers true; errs if the process exits or takes too long.
    pub fn wait_ready(&mut self, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the {} was not ready within {START_TIMEOUT:?}{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Errs if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("wait for a child")? {
            bail!(
                "the spawned {} exited ({status}){}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n{} log ({}):\n{tail}", self.name, self.log.display())
        }
    }

    /// Log lines that `is_problem` picks (up to `max`).
    pub fn log_lines(&self, max: usize, is_problem: impl Fn(&str) -> bool) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| is_problem(l))
            .take(max)
            .map(str::to_string)
            .collect()
    }

    /// Sends SIGTERM. Errs if the process had already exited by itself.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the spawned {} had exited by itself during the run ({status})",
                self.name
            );
        }
        crate::sys::kill(self.child.id(), libc::SIGTERM)
            .with_context(|| format!("SIGTERM the {}", self.name))
    }

    /// Waits for the exit that `terminate` asked for (SIGKILL after a timeout). Errs unless it
    /// exited cleanly.
    pub fn wait_exit(mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!("the {} exited with {status} after SIGTERM", self.name);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
