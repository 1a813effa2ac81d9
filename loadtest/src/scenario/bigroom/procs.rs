//! One bigroom run as several processes, past the open files one process may have. The parent
//! starts `--processes` children (the bot binary again, with `SHARDCAST_LOADTEST_WORKER=1` in
//! their environment) and writes each its [`Job`] as one JSON line on stdin: the options, its
//! slice of the connections, the run's tag and the run's epoch as a CLOCK_MONOTONIC time, so
//! every process stamps and reads message times on one clock. Then it keeps them in step
//! (`coord`): a child writes a JSON line on stdout when it arrives at a step, and the parent
//! answers every child with one line once all have arrived. The parent samples the servers at
//! the phase edges itself; the children sample only their own CPU. At the end each child
//! writes its result (its connections' outcomes, counters and histograms) and exits, and the
//! parent merges them: one exact check over every connection, one set of percentiles.
//!
//! Owns the job, the lines and the children's lives. It must not run a phase (that is `side`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::coord::{Arrived, Coord, Go, Step, go_at};
use super::side::{self, Edges, LocalSamples, SideResult};
use super::{BigroomResult, Layout, merge};
use crate::cli::{BigroomArgs, CommonArgs, LoadArgs};
use crate::scenario::run::{RunCtx, secs_to_ns};
use crate::sys;

/// Set in a child's environment: the bot reads its job from stdin instead of its arguments.
pub const WORKER_ENV: &str = "SHARDCAST_LOADTEST_WORKER";

/// How long the children may take to exit once they have sent their results.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a child runs.
#[derive(Serialize, Deserialize)]
pub struct Job {
    pub args: BigroomArgs,
    pub load: LoadArgs,
    /// The parent's, with the nodes as `--url`s and nothing to spawn or measure.
    pub common: CommonArgs,
    pub layout: Layout,
    pub tag: String,
    /// The run's epoch, in CLOCK_MONOTONIC nanoseconds.
    pub epoch_ns: u64,
    /// This child is number `worker` of `workers`.
    pub worker: usize,
    pub workers: usize,
}

impl Job {
    /// The first line of stdin (blocking: read before the runtime exists).
    pub fn read() -> anyhow::Result<Job> {
        let line = read_stdin_line()?;
        serde_json::from_str(&line).context("the job on stdin")
    }

    /// The run's epoch as an `Instant` of this process.
    pub fn epoch(&self) -> Instant {
        let ago = sys::monotonic_ns().saturating_sub(self.epoch_ns);
        Instant::now()
            .checked_sub(Duration::from_nanos(ago))
            .unwrap_or_else(Instant::now)
    }
}

/// What a child writes on stdout.
#[derive(Serialize, Deserialize)]
enum Up {
    Arrived(Arrived),
    Done(Box<SideResult>),
}

/// A child's side of the lines: stdout up, stdin down.
pub struct ChildIo;

impl ChildIo {
    /// Tells the parent this child has arrived, and waits for its answer.
    pub async fn arrive(&mut self, a: Arrived) -> anyhow::Result<Go> {
        write_line(&Up::Arrived(a))?;
        let line = tokio::task::spawn_blocking(read_stdin_line)
            .await
            .context("the stdin reader panicked")??;
        serde_json::from_str(&line).context("the parent's answer")
    }
}

/// A child's run: its slice of the connections, in step with the others; writes its result.
pub async fn child(ctx: &RunCtx, job: &Job) -> anyhow::Result<()> {
    let range = job.layout.slice(job.worker, job.workers);
    let mut coord = Coord::Child(ChildIo);
    let (side, _) = side::run(ctx, &job.args, &job.load, job.layout, range, &mut coord).await?;
    write_line(&Up::Done(Box::new(side)))
}

fn read_stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        bail!("the parent process closed its end (stdin)");
    }
    Ok(line)
}

fn write_line(v: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// The children, killed if the parent gives up on them.
struct Children {
    procs: Vec<Child>,
    stdins: Vec<ChildStdin>,
}

impl Children {
    fn answer(&mut self, go: Go) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(&go)?;
        line.push(b'\n');
        for (w, stdin) in self.stdins.iter_mut().enumerate() {
            stdin
                .write_all(&line)
                .and_then(|()| stdin.flush())
                .with_context(|| format!("write to bot process {w}"))?;
        }
        Ok(())
    }

    /// Waits for every child to exit, once they have sent their results.
    fn wait(mut self) -> anyhow::Result<()> {
        self.stdins.clear();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        for (w, p) in self.procs.iter_mut().enumerate() {
            loop {
                if let Some(status) = p.try_wait()? {
                    if !status.success() {
                        bail!("bot process {w} exited with {status}");
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!("bot process {w} did not exit within {EXIT_TIMEOUT:?} of its result");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.try_wait().ok().flatten().is_none() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
    }
}

/// The parent: starts the children, keeps them in step, samples the servers at the phase
/// edges and merges the children's results.
pub async fn parent(
    ctx: &RunCtx,
    a: &BigroomArgs,
    load: &LoadArgs,
    layout: Layout,
) -> anyhow::Result<BigroomResult> {
    let k = a.processes;
    let bin = bot_binary(a.bot_bin.as_deref())?;
    let mut common = ctx.common.clone();
    common.url = ctx
        .endpoints
        .iter()
        .map(|e| format!("ws://{}{}", e.addr, e.path))
        .collect();
    common.spawn_server = false;
    common.spawn_cluster = None;
    common.server_pid.clear();
    common.redis_url = None;
    common.json = false;
    common.no_progress = true;
    let epoch_ns = sys::monotonic_ns().saturating_sub(ctx.shared.epoch.elapsed().as_nanos() as u64);

    let baseline = ctx.sample();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Option<String>)>();
    let mut kids = Children {
        procs: Vec::with_capacity(k),
        stdins: Vec::with_capacity(k),
    };
    for worker in 0..k {
        let mut p = Command::new(&bin)
            .env(WORKER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start bot process {worker} ({})", bin.display()))?;
        let (mut stdin, stdout) = (p.stdin.take(), p.stdout.take());
        kids.procs.push(p);
        let (Some(stdin_ref), Some(stdout)) = (stdin.as_mut(), stdout) else {
            bail!("bot process {worker} has no stdin or stdout");
        };
        let job = Job {
            args: a.clone(),
            load: load.clone(),
            common: common.clone(),
            layout,
            tag: ctx.tag.clone(),
            epoch_ns,
            worker,
            workers: k,
        };
        let mut line = serde_json::to_vec(&job)?;
        line.push(b'\n');
        stdin_ref
            .write_all(&line)
            .context("send a bot process its job")?;
        kids.stdins.extend(stdin);
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("loadtest-child-{worker}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(l) => {
                            let _ = tx.send((worker, Some(l)));
                        }
                        Err(_) => break,
                    }
                }
                let _ = tx.send((worker, None));
            })
            .context("start a thread to read a bot process")?;
    }
    drop(tx);

    let mut lines = Lines {
        rx: &mut rx,
        k,
        done: vec![false; k],
    };
    let mut edges = Edges::default();
    let rest = secs_to_ns(ctx.common.duration);
    ctx.progress.phase(&format!("{k} processes connecting"), 0);
    let e0 = lines.step(ctx, &mut kids, Step::Connected).await?.at;
    let connected = ctx.sample();
    edges.take(ctx, e0).await;
    ctx.progress.phase("filling", 0);
    let r1 = lines.step(ctx, &mut kids, Step::Filled).await?.at;
    ctx.progress.phase("rest", 0);
    edges.take(ctx, r1).await;
    edges.take(ctx, r1 + rest).await;
    ctx.progress.phase("churning", 0);
    let r2 = lines.step(ctx, &mut kids, Step::Churned).await?.at;
    ctx.progress.phase("rest again", 0);
    edges.take(ctx, r2).await;
    edges.take(ctx, r2 + rest).await;
    ctx.progress.phase("draining", 0);
    lines.step(ctx, &mut kids, Step::Published).await?;
    let sides = lines.results().await?;
    ctx.progress.finish();
    kids.wait()?;
    let local = LocalSamples {
        baseline,
        connected,
        times: edges.times,
        edges: edges.samples,
    };
    Ok(merge(layout, sides, local))
}

/// The children's lines, as they come.
struct Lines<'a> {
    rx: &'a mut mpsc::UnboundedReceiver<(usize, Option<String>)>,
    k: usize,
    /// Children that sent their result: their output may end.
    done: Vec<bool>,
}

impl Lines<'_> {
    async fn next(&mut self) -> anyhow::Result<(usize, Up)> {
        loop {
            let (w, line) = self
                .rx
                .recv()
                .await
                .ok_or_else(|| anyhow!("every bot process has closed its output"))?;
            let Some(line) = line else {
                if self.done[w] {
                    continue;
                }
                bail!("bot process {w} ended before the run did (its error is above)");
            };
            let up = serde_json::from_str(&line)
                .with_context(|| format!("bad line from bot process {w}: {line:.200}"))?;
            if let Up::Done(_) = &up {
                self.done[w] = true;
            }
            return Ok((w, up));
        }
    }

    /// Waits until every child has arrived at `step`; returns the highest value.
    async fn gather(&mut self, step: Step) -> anyhow::Result<u64> {
        let mut arrived = vec![false; self.k];
        let mut value = 0;
        while arrived.iter().any(|a| !a) {
            match self.next().await? {
                (w, Up::Arrived(a)) if a.step == step && !arrived[w] => {
                    arrived[w] = true;
                    value = value.max(a.value);
                }
                (w, _) => bail!("bot process {w} is out of step (waiting for {step:?})"),
            }
        }
        Ok(value)
    }

    /// Waits until every child has arrived at `step`, then tells them all when the next phase
    /// starts and the step's value (the highest of theirs).
    async fn step(&mut self, ctx: &RunCtx, kids: &mut Children, step: Step) -> anyhow::Result<Go> {
        let value = self.gather(step).await?;
        let at = go_at(step, ctx.shared.now_ns(), ctx.common.warmup);
        let go = Go { at, value };
        kids.answer(go)?;
        Ok(go)
    }

    /// Every child's result, by worker.
    async fn results(&mut self) -> anyhow::Result<Vec<SideResult>> {
        let mut sides: Vec<Option<SideResult>> = (0..self.k).map(|_| None).collect();
        while sides.iter().any(Option::is_none) {
            match self.next().await? {
                (w, Up::Done(s)) if sides[w].is_none() => sides[w] = Some(*s),
                (w, _) => bail!("bot process {w} is out of step (waiting for results)"),
            }
        }
        Ok(sides.into_iter().flatten().collect())
    }
}

/// `--bot-bin`, else the running binary when it is the bot (a test harness is not).
fn bot_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--bot-bin {} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("find the running binary")?;
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.starts_with("shardcast-loadtest") {
        bail!(
            "--processes runs more of the bot binary, but this process is {}; pass --bot-bin \
             PATH (e.g. target/release/shardcast-loadtest)",
            exe.display()
        );
    }
    Ok(exe)
}
