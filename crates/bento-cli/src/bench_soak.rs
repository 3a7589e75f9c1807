//! `bento bench soak`: many invocations against one box, watching the
//! box's open file descriptors, threads and resident memory for leaks.
//!
//! The box runs as its own `bento serve` process (so the figures are the
//! box's alone, not this client's), with its workers as its children. After
//! every `--sample-every` invocations, with none in flight, the soak reads
//! `/proc/PID/fd`, `/proc/PID/status` (`Threads`) and
//! `/proc/PID/smaps_rollup` (`Rss`) of the server and of each worker, and
//! prints one line of the curve. Every invocation's output is checked.
//!
//! The verdict: a figure is **growing** when the smallest sample of the
//! last quarter of the run is above the largest sample of the first
//! quarter by more than its tolerance (0 descriptors, 0 threads, 5 % or
//! 8 MiB of RSS, whichever is more); otherwise it is **flat**. A leak
//! raises every late sample above every early one; noise does not.
//! Nothing here asserts on time.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bento_client::{Connection, Target};
use bento_protocol::InvokeToken;
use clap::Args;

use crate::bench::children;

/// What each invocation runs: a fresh instance that answers with its
/// argument, so a mixed-up or lost output is noticed.
const ECHO_ARG: &str = "def main(i):\n    api.send('soak %d' % i)\n";

/// Options of `bento bench soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Invocations in all (after the warm-up).
    #[arg(long, default_value_t = 100_000)]
    pub invocations: u64,
    /// Take a sample after every this many invocations.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_every: u64,
    /// Invocations in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Invocations before the first sample (thread pools and allocator
    /// arenas reach their working size).
    #[arg(long, default_value_t = 500)]
    pub warm_up: u64,
    /// Sandbox worker processes of the box [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Precompiled runtime (see `bento serve --help`).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
}

/// One process's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessFigures {
    pub(crate) fds: u64,
    pub(crate) threads: u64,
    pub(crate) rss_kib: u64,
}

impl ProcessFigures {
    /// Read from /proc; `None` if the process is gone.
    pub(crate) fn read(pid: u32) -> Option<Self> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let threads = field(&status, "Threads:");
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .map_or_else(|_| field(&status, "VmRSS:"), |s| field(&s, "Rss:"));
        Some(Self {
            fds,
            threads,
            rss_kib,
        })
    }

    fn add(self, other: Self) -> Self {
        Self {
            fds: self.fds + other.fds,
            threads: self.threads + other.threads,
            rss_kib: self.rss_kib + other.rss_kib,
        }
    }
}

/// The box's figures after `invocations` invocations.
#[derive(Debug, Clone)]
struct Sample {
    invocations: u64,
    elapsed: Duration,
    server: ProcessFigures,
    /// Summed over the workers alive at the time.
    workers: ProcessFigures,
    worker_pids: Vec<u32>,
}

/// Flat or growing, by the rule in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trend {
    Flat,
    Growing,
}

/// Judge one figure's series (in sample order) with `tolerance(max)`.
pub(crate) fn trend(series: &[u64], tolerance: impl Fn(u64) -> u64) -> Trend {
    let quarter = (series.len() / 4).max(1);
    if series.len() < 2 {
        return Trend::Flat;
    }
    let early_max = series[..quarter].iter().copied().max().unwrap_or(0);
    let late_min = series[series.len() - quarter..]
        .iter()
        .copied()
        .min()
        .unwrap_or(0);
    if late_min > early_max.saturating_add(tolerance(early_max)) {
        Trend::Growing
    } else {
        Trend::Flat
    }
}

fn rss_tolerance(kib: u64) -> u64 {
    (kib / 20).max(8 * 1024)
}

/// The box as a child process (`bento serve` on loopback with a
/// temporary data dir), killed when dropped.
pub(crate) struct BoxProcess {
    child: Child,
    /// The temporary data directory, removed with the box (none when the
    /// caller owns the directory).
    temp_dir: Option<tempfile::TempDir>,
    pub(crate) target: Target,
}

impl Drop for BoxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BoxProcess {
    /// Start a box with `workers` workers and the `runtime` (defaults as
    /// for `bento serve`); returns once it accepts connections.
    pub(crate) async fn start(
        workers: Option<usize>,
        runtime: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let data_dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
        let mut this = Self::start_in(data_dir.path(), workers, runtime).await?;
        this.temp_dir = Some(data_dir);
        Ok(this)
    }

    /// Like [`Self::start`], on the data directory `data_dir` (kept).
    pub(crate) async fn start_in(
        data_dir: &std::path::Path,
        workers: Option<usize>,
        runtime: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        // A free port: bound and released at once (nothing else on a
        // benchmark machine races for it in practice).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let runtime = runtime.unwrap_or_else(crate::runtime_path::default_runtime);
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(data_dir)
            .arg("--runtime")
            .arg(&runtime)
            .args(["--exit-with-pid", &std::process::id().to_string()])
            .env("BENTO_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(workers) = workers {
            command.args(["--workers", &workers.to_string()]);
        }
        let child = command.spawn().context("cannot start `bento serve`")?;
        let this = Self {
            child,
            temp_dir: None,
            target: Target {
                server: listen,
                socks: None,
                dialer: None,
            },
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Connection::connect(&this.target).await.is_err() {
            if Instant::now() > deadline {
                bail!("the box did not start listening within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(this)
    }

    /// SIGKILL the server (its workers exit when their pipe closes) and
    /// reap it; the data directory stays.
    pub(crate) fn kill9(self) {
        // Drop kills with SIGKILL and waits.
        drop(self);
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sample(&self, invocations: u64, elapsed: Duration) -> anyhow::Result<Sample> {
        let server = ProcessFigures::read(self.pid()).context("the box process is gone")?;
        let worker_pids = children(self.pid());
        let workers = worker_pids
            .iter()
            .filter_map(|&pid| ProcessFigures::read(pid))
            .fold(ProcessFigures::default(), ProcessFigures::add);
        Ok(Sample {
            invocations,
            elapsed,
            server,
            workers,
            worker_pids,
        })
    }
}

/// One invocation of `token` with argument `i`, read to its end and checked.
async fn invoke_checked(target: &Target, token: &InvokeToken, i: u64) -> anyhow::Result<()> {
    let mut conn = Connection::connect(target).await?;
    let session = conn.invoke(token, "main", &format!("[{i}]")).await?;
    drop(conn);
    let output = Connection::connect(target)
        .await?
        .attach(&session, None)
        .await?
        .read_to_end()
        .await?;
    let expected = format!("soak {i}");
    if output != expected.as_bytes() {
        bail!(
            "invocation {i} answered {:?}, not {expected:?}",
            String::from_utf8_lossy(&output)
        );
    }
    Ok(())
}

/// Run invocations `from..to`, `concurrency` at a time; returns the
/// failures' messages.
async fn run_batch(
    target: &Target,
    token: &InvokeToken,
    from: u64,
    to: u64,
    concurrency: usize,
) -> Vec<String> {
    let next = Arc::new(AtomicU64::new(from));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let target = target.clone();
        let token = token.clone();
        tasks.spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return failures;
                }
                if let Err(e) = invoke_checked(&target, &token, i).await {
                    failures.push(format!("{e:#}"));
                }
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(mut f) => failures.append(&mut f),
            Err(e) => failures.push(format!("an invocation task failed: {e}")),
        }
    }
    failures
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `bento bench soak`.
#[allow(clippy::print_stdout)]
pub async fn run(args: SoakArgs) -> anyhow::Result<bool> {
    let bx = BoxProcess::start(args.workers, args.runtime.clone()).await?;
    let token = Connection::connect(&bx.target)
        .await?
        .store("soak.py", ECHO_ARG)
        .await?
        .1;
    eprintln!(
        "box pid {} on {}; warming up with {} invocations",
        bx.pid(),
        bx.target.server,
        args.warm_up
    );
    let mut failures = run_batch(&bx.target, &token, 0, args.warm_up, args.concurrency).await;
    let start = Instant::now();
    let mut samples = vec![bx.sample(0, Duration::ZERO)?];
    println!(
        "| invocations | elapsed s | per s | server fds | server threads | server RSS MiB | workers | worker fds | worker threads | worker RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let print = |s: &Sample| {
        let rate = if s.elapsed.is_zero() {
            0.0
        } else {
            s.invocations as f64 / s.elapsed.as_secs_f64()
        };
        println!(
            "| {} | {:.0} | {:.0} | {} | {} | {:.1} | {} | {} | {} | {:.1} |",
            s.invocations,
            s.elapsed.as_secs_f64(),
            rate,
            s.server.fds,
            s.server.threads,
            mib(s.server.rss_kib),
            s.worker_pids.len(),
            s.workers.fds,
            s.workers.threads,
            mib(s.workers.rss_kib)
        );
    };
    print(&samples[0]);
    let mut done = 0u64;
    while done < args.invocations {
        let to = (done + args.sample_every).min(args.invocations);
        let offset = args.warm_up;
        let mut batch = run_batch(
            &bx.target,
            &token,
            offset + done,
            offset + to,
            args.concurrency,
        )
        .await;
        failures.append(&mut batch);
        done = to;
        let sample = bx.sample(done, start.elapsed())?;
        print(&sample);
        samples.push(sample);
    }
    let first_workers = &samples[0].worker_pids;
    let respawned = samples
        .iter()
        .any(|s| s.worker_pids.len() != first_workers.len() || &s.worker_pids != first_workers);
    let series = |f: &dyn Fn(&Sample) -> u64| samples.iter().map(f).collect::<Vec<u64>>();
    let judged = [
        ("server fds", trend(&series(&|s| s.server.fds), |_| 0)),
        (
            "server threads",
            trend(&series(&|s| s.server.threads), |_| 0),
        ),
        (
            "server RSS",
            trend(&series(&|s| s.server.rss_kib), rss_tolerance),
        ),
        ("worker fds", trend(&series(&|s| s.workers.fds), |_| 0)),
        (
            "worker threads",
            trend(&series(&|s| s.workers.threads), |_| 0),
        ),
        (
            "worker RSS",
            trend(&series(&|s| s.workers.rss_kib), rss_tolerance),
        ),
    ];
    println!();
    for (name, verdict) in &judged {
        println!(
            "{name}: {}",
            if *verdict == Trend::Flat {
                "flat"
            } else {
                "GROWING"
            }
        );
    }
    if respawned {
        println!("workers: a worker was replaced during the run (a crash)");
    }
    println!(
        "{} invocations after {} of warm-up, {} failed",
        done,
        args.warm_up,
        failures.len()
    );
    for failure in failures.iter().take(10) {
        println!("  failure: {failure}");
    }
    let flat = judged.iter().all(|(_, v)| *v == Trend::Flat);
    let ok = flat && failures.is_empty() && !respawned;
    println!(
        "verdict: {}",
        if ok {
            "flat (no figure grew, every output checked)"
        } else {
            "NOT flat or not clean (see above)"
        }
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_whose_late_samples_all_exceed_its_early_ones_is_growing() {
        assert_eq!(
            trend(&[10, 11, 12, 13, 14, 15, 16, 17], |_| 0),
            Trend::Growing
        );
        assert_eq!(
            trend(&[10, 11, 12, 13, 14, 15, 16, 17], |_| 10),
            Trend::Flat,
            "within the tolerance"
        );
    }

    #[test]
    fn a_noisy_series_that_returns_to_its_early_level_is_flat() {
        assert_eq!(trend(&[10, 14, 11, 13, 12, 15, 10, 14], |_| 0), Trend::Flat);
        assert_eq!(trend(&[7], |_| 0), Trend::Flat);
        assert_eq!(trend(&[], |_| 0), Trend::Flat);
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = ProcessFigures::read(std::process::id()).unwrap();
        assert!(me.fds > 0 && me.threads > 0 && me.rss_kib > 0, "{me:?}");
        assert_eq!(ProcessFigures::read(u32::MAX), None);
    }
}
