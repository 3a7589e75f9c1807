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

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bento_client::{Connection, Target};
use bento_protocol::InvokeToken;

use crate::process::{BoxProcess, ProcessFigures, children};
use crate::{Error, error_chain};

/// What each invocation runs: a fresh instance that answers with its
/// argument, so a mixed-up or lost output is noticed.
const ECHO_ARG: &str = "def main(i):\n    api.send('soak %d' % i)\n";

/// Options of the soak (`bento bench soak`; its `--help` says the defaults).
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Invocations in all (after the warm-up).
    pub invocations: u64,
    /// Take a sample after every this many invocations (at least 1).
    pub sample_every: u64,
    /// Invocations in flight at once.
    pub concurrency: usize,
    /// Invocations before the first sample (thread pools and allocator
    /// arenas reach their working size).
    pub warm_up: u64,
    /// Sandbox worker processes of the box [default: number of CPUs].
    pub workers: Option<usize>,
    /// The precompiled runtime.
    pub runtime: PathBuf,
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
pub enum Trend {
    /// No figure grew beyond its tolerance.
    Flat,
    /// Every late sample is above every early one, by more than the
    /// tolerance: a leak.
    Growing,
}

/// Judge one figure's series (in sample order) with `tolerance(max)`.
pub fn trend(series: &[u64], tolerance: impl Fn(u64) -> u64) -> Trend {
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

/// The box's figures now, after `invocations` invocations.
fn sample(bx: &BoxProcess, invocations: u64, elapsed: Duration) -> Result<Sample, Error> {
    let server = ProcessFigures::read(bx.pid())
        .ok_or_else(|| Error::Run("the box process is gone".to_owned()))?;
    let worker_pids = children(bx.pid());
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
/// One invocation of `token` with argument `i`, read to its end and checked.
async fn invoke_checked(target: &Target, token: &InvokeToken, i: u64) -> Result<(), Error> {
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
        return Err(Error::Run(format!(
            "invocation {i} answered {:?}, not {expected:?}",
            String::from_utf8_lossy(&output)
        )));
    }
    Ok(())
}

/// How long the soak waits before it tries an invocation the box refused
/// as busy again, and how many times it tries before it counts a failure.
const BUSY_PAUSE: Duration = Duration::from_millis(100);
const BUSY_TRIES: u32 = 600;

/// Run invocations `from..to`, `concurrency` at a time; returns the
/// failures' messages. An invocation the box refuses as busy (e.g.
/// `overloaded` while the machine is loaded) is not a failure: it is tried
/// again after a pause, and counted in `refused`.
async fn run_batch(
    target: &Target,
    token: &InvokeToken,
    (from, to): (u64, u64),
    concurrency: usize,
    refused: &Arc<AtomicU64>,
) -> Vec<String> {
    let next = Arc::new(AtomicU64::new(from));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let target = target.clone();
        let token = token.clone();
        let refused = refused.clone();
        tasks.spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return failures;
                }
                let mut tries = 0;
                loop {
                    match invoke_checked(&target, &token, i).await {
                        Err(e) if e.is_busy() && tries < BUSY_TRIES => {
                            tries += 1;
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(BUSY_PAUSE).await;
                        }
                        Err(e) => {
                            failures.push(error_chain(&e));
                            break;
                        }
                        Ok(()) => break,
                    }
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

/// One line of the curve.
fn print_sample(out: &mut (dyn Write + Send), s: &Sample) -> Result<(), Error> {
    let rate = if s.elapsed.is_zero() {
        0.0
    } else {
        s.invocations as f64 / s.elapsed.as_secs_f64()
    };
    report!(
        out,
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
    Ok(())
}

/// The soak, its curve and verdict written to `out`; true when no figure
/// grew, every output was right and no worker was replaced.
pub async fn run(args: SoakOptions, out: &mut (dyn Write + Send)) -> Result<bool, Error> {
    let bx = BoxProcess::start(args.workers, &args.runtime).await?;
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
    let refused = Arc::new(AtomicU64::new(0));
    let mut failures = run_batch(
        &bx.target,
        &token,
        (0, args.warm_up),
        args.concurrency,
        &refused,
    )
    .await;
    let start = Instant::now();
    let mut samples = vec![sample(&bx, 0, Duration::ZERO)?];
    report!(
        out,
        "| invocations | elapsed s | per s | server fds | server threads | server RSS MiB | workers | worker fds | worker threads | worker RSS MiB |"
    );
    report!(out, "|---|---|---|---|---|---|---|---|---|---|");
    print_sample(out, &samples[0])?;
    let mut done = 0u64;
    while done < args.invocations {
        let to = (done + args.sample_every).min(args.invocations);
        let offset = args.warm_up;
        let mut batch = run_batch(
            &bx.target,
            &token,
            (offset + done, offset + to),
            args.concurrency,
            &refused,
        )
        .await;
        failures.append(&mut batch);
        done = to;
        let sample = sample(&bx, done, start.elapsed())?;
        print_sample(out, &sample)?;
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
    report!(out);
    for (name, verdict) in &judged {
        report!(
            out,
            "{name}: {}",
            if *verdict == Trend::Flat {
                "flat"
            } else {
                "GROWING"
            }
        );
    }
    if respawned {
        report!(
            out,
            "workers: a worker was replaced during the run (a crash)"
        );
    }
    report!(
        out,
        "{} invocations after {} of warm-up, {} failed ({} busy refusals tried again)",
        done,
        args.warm_up,
        failures.len(),
        refused.load(Ordering::Relaxed)
    );
    for failure in failures.iter().take(10) {
        report!(out, "  failure: {failure}");
    }
    let flat = judged.iter().all(|(_, v)| *v == Trend::Flat);
    let ok = flat && failures.is_empty() && !respawned;
    report!(
        out,
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
}
