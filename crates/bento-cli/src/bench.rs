//! `bento bench`: start a box on loopback and measure it.
//!
//! Reports medians and tail percentiles; nothing here asserts on time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bento_client::{Connection, Target};
use bento_protocol::InvokeToken;
use bento_server::Server;
use bytes::Bytes;
use clap::Args;

use crate::latency::{ms, percentile};
use crate::serve::ServeArgs;

const HELLO: &str = "def main(name):\n    api.send('hello ' + name)\n";
const BULK: &str = "def main(mib):\n    chunk = b'x' * (1024 * 1024)\n    for _ in range(mib):\n        api.send(chunk)\n";
const ECHO: &str = "def main():\n    while True:\n        m = api.recv()\n        if not m:\n            return\n        api.send(m)\n";
const WAIT: &str = "def main():\n    api.recv()\n";
/// Hello-world invocations timed while the waiting sessions wait.
const WHILE_WAITING_INVOCATIONS: usize = 200;
const THROTTLED: &str =
    "def main(kib):\n    chunk = b't' * 1024\n    for _ in range(kib):\n        api.send(chunk)\n";
/// What every benchmark function asks for: room to move GiBs at full speed
/// (the benchmark measures the box, not its bandwidth limits).
const MANIFEST: &str = "version = 1\n[limits]\nmemory_mib = 128\ncpu_ms = 60000\nwall_ms = 600000\noutput_buffer_kib = 4096\nbandwidth_kib_per_s = 100000000\n";

/// Options of `bento bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Hello-world invocations to time.
    #[arg(long, default_value_t = 1000)]
    pub invocations: usize,
    /// MiB of output per bulk run (3 runs; the median is reported).
    #[arg(long, default_value_t = 1024)]
    pub bulk_mib: u64,
    /// Echo round trips to time.
    #[arg(long, default_value_t = 2000)]
    pub round_trips: usize,
    /// Concurrent sessions waiting in api.recv() for the memory figure.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Bandwidth limit of the throttled-session measurement, KiB/s (it
    /// sends 6 s worth).
    #[arg(long, default_value_t = 1024)]
    pub throttle_kib_per_s: u64,
    /// Sandbox worker processes [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Fresh instances each worker of the measured box keeps ready
    /// [default: the policy's box.prewarm_per_worker]. The hello-world
    /// latency is also measured, side by side, on a second box with
    /// prewarming off.
    #[arg(long)]
    pub prewarm: Option<u64>,
    /// Precompiled runtime (see `bento serve --help`).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the results (JSON) to FILE, e.g. to become a new baseline.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Compare with an earlier `--save`d result (e.g. the committed
    /// docs/bench-baseline.json): prints each figure's ratio to it.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// A long-running measurement instead of the figures above.
    #[command(subcommand)]
    pub mode: Option<crate::BenchMode>,
}

/// Every figure that `--baseline` compares: its JSON path, its name, and
/// whether more is better.
const FIGURES: &[(&str, &str, bool)] = &[
    (
        "/hello_world_ms/p50",
        "hello-world invocation p50 (ms)",
        false,
    ),
    (
        "/hello_world_ms/p99",
        "hello-world invocation p99 (ms)",
        false,
    ),
    (
        "/sandbox_hello_ms/p50",
        "same function in the sandbox alone, p50 (ms)",
        false,
    ),
    (
        "/hello_world_no_prewarm_ms/p50",
        "hello-world p50 on a box with prewarming off (ms)",
        false,
    ),
    (
        "/sandbox_hello_prepared_ms/p50",
        "sandbox alone, prepared instance, p50 (ms)",
        false,
    ),
    (
        "/box_over_sandbox",
        "box invocation / sandbox alone (same run)",
        false,
    ),
    ("/bulk_output_mb_s/median", "bulk output (MB/s)", true),
    ("/echo_round_trip_ms/p50", "echo round trip p50 (ms)", false),
    (
        "/waiting_sessions/pss_per_session_mib",
        "PSS per waiting session (MiB)",
        false,
    ),
    (
        "/waiting_sessions/hello_world_beside_them_ms/p50",
        "hello-world p50 beside the waiting sessions (ms)",
        false,
    ),
    (
        "/waiting_sessions/sessions_started_per_s",
        "sessions started per second",
        true,
    ),
];

/// Lines comparing `current` with `baseline`, one per figure in both.
pub(crate) fn compare(current: &serde_json::Value, baseline: &serde_json::Value) -> Vec<String> {
    let mut lines = vec![
        "| figure | baseline | now | now / baseline | |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    for (path, name, more_is_better) in FIGURES {
        let (Some(now), Some(then)) = (
            current.pointer(path).and_then(serde_json::Value::as_f64),
            baseline.pointer(path).and_then(serde_json::Value::as_f64),
        ) else {
            continue;
        };
        if then == 0.0 {
            continue;
        }
        let ratio = now / then;
        // Within 10% either way is noise on a shared machine.
        let verdict = if (0.9..=1.1).contains(&ratio) {
            "same"
        } else if (ratio > 1.0) == *more_is_better {
            "better"
        } else {
            "WORSE"
        };
        lines.push(format!(
            "| {name} | {then:.3} | {now:.3} | {ratio:.2} | {verdict} |"
        ));
    }
    lines
}

/// Runs `source`'s `main(*args)` `n` times in fresh instances of the
/// runtime, in this process, with no server, worker or socket: the floor
/// that the box's invocation latency is compared with in the same run.
/// Alternates an instance made on the spot (`.0`) with one prepared before
/// the clock starts (`.1`, as a worker's prewarmed instances are).
fn sandbox_alone(
    runtime: &std::path::Path,
    source: &str,
    args_json: &str,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    use bento_sandbox::{Call, DiscardedSession, Job, PythonRuntime, SessionIo};
    let runtime = PythonRuntime::load_precompiled(runtime)?;
    let job = Job {
        source: source.to_owned(),
        filename: "hello.py".to_owned(),
        call: Call::Entry {
            entry: "main".to_owned(),
            args_json: args_json.to_owned(),
        },
        limits: bento_policy::InstanceLimits::default(),
        grant: bento_policy::Grant::default(),
    };
    let failed = |failure| anyhow::anyhow!("the sandbox run failed: {failure:?}");
    let (mut fresh, mut prepared) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 20 {
        let io = || {
            SessionIo::new(
                std::sync::Arc::new(DiscardedSession),
                Instant::now() + Duration::from_secs(60),
                1 << 20,
            )
        };
        let started = Instant::now();
        runtime.run(&job, io()).map_err(failed)?;
        let fresh_time = started.elapsed();
        let instance = runtime.prepare()?;
        let started = Instant::now();
        let (outcome, spent) = runtime.run_prepared(instance, &job, io());
        let prepared_time = started.elapsed();
        drop(spent);
        outcome.map_err(failed)?;
        if i >= 20 {
            fresh.push(fresh_time);
            prepared.push(prepared_time);
        }
    }
    fresh.sort();
    prepared.sort();
    Ok((fresh, prepared))
}

struct Bench {
    target: Target,
}

impl Bench {
    async fn store(&self, name: &str, source: &str) -> anyhow::Result<InvokeToken> {
        let mut conn = Connection::connect(&self.target).await?;
        Ok(conn.store_with_manifest(name, source, MANIFEST).await?.1)
    }

    /// Invoke and read the session to its end; returns bytes received.
    async fn invoke_to_end(&self, token: &InvokeToken, args: &str) -> anyhow::Result<u64> {
        let mut conn = Connection::connect(&self.target).await?;
        let session = conn.invoke(token, "main", args).await?;
        drop(conn);
        let mut attachment = Connection::connect(&self.target)
            .await?
            .attach(&session, None)
            .await?;
        let mut received = 0u64;
        while let Some(data) = attachment.next().await? {
            received += data.len() as u64;
        }
        attachment.close().await;
        Ok(received)
    }
}

/// Resident and proportional set size (KiB) of a process, from /proc.
fn memory_kib(pid: u32) -> (u64, u64) {
    let read = |field: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    (read("Rss:"), read("Pss:"))
}

/// Direct children of `pid` (the worker processes).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4 (after the parenthesised command name) is the parent pid.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(child);
        }
    }
    out
}

/// The kernel's estimate of memory available to new work, MiB: its drop
/// while sessions run is what they really cost the machine (shared pages
/// counted once).
fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn total_memory_mib() -> (f64, f64) {
    let me = std::process::id();
    let mut rss = 0;
    let mut pss = 0;
    for pid in std::iter::once(me).chain(children(me)) {
        let (r, p) = memory_kib(pid);
        rss += r;
        pss += p;
    }
    (rss as f64 / 1024.0, pss as f64 / 1024.0)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let serve = ServeArgs {
        config: None,
        listen: "127.0.0.1:0".parse()?,
        legacy_listen: None,
        data_dir: Some(data_dir.path().to_owned()),
        runtime: args.runtime.clone(),
        workers: args.workers,
        worker_wrapper: None,
        no_worker_jail: false,
        policy: None,
        legacy_manifest: None,
        http_ca_file: None,
        tor_control: None,
        exit_with_pid: None,
        tor_socks: None,
        onion_port: 7878,
        memory_mib: Some(128),
        cpu_ms: Some(60_000),
        wall_ms: Some(600_000),
        output_buffer_kib: Some(4096),
        max_instances: Some((args.sessions as u64 + 64).max(1024)),
        max_buffered_mib: Some(4 * (args.sessions as u64 + 64)),
        max_source_kib: Some(1024),
        prewarm: args.prewarm,
        max_stored_mib: Some(64),
        session_retention_secs: 60,
        read_timeout_secs: 60,
        // The benchmark measures capacity with deliberate bursts (e.g. its
        // sessions started at once), which overload control would refuse
        // in part.
        overload_target_ms: 0,
        max_connections: Some(4096),
        // The benchmark counts running instances, which only the
        // operator's endpoint tells.
        metrics: Some("127.0.0.1:0".parse()?),
    };
    let mut config = serve.config()?;
    config.policy.instance.bandwidth_kib_per_s = 100_000_000;
    config.policy.caps.bandwidth_kib_per_s = 100_000_000;
    let workers = config.workers.workers;
    let prewarm = config.policy.caps.prewarm_per_worker;
    let server = Server::bind(config, serve.listen).await?;
    let addr = server.local_addr()?;
    let metrics_addr = server
        .metrics_addr()
        .context("the benchmark's box serves no metrics")??;
    let server_task = tokio::spawn(server.run());
    let bench = Bench {
        target: Target {
            server: addr.to_string(),
            socks: None,
            dialer: None,
        },
    };
    let (idle_rss, idle_pss) = total_memory_mib();
    eprintln!("box on {addr} with {workers} workers; idle RSS {idle_rss:.0} MiB");

    // 1. Hello-world invocation latency, fresh instance each time; side by
    // side (alternating) with a second box that keeps no instance ready.
    let cold_dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let cold_serve = ServeArgs {
        data_dir: Some(cold_dir.path().to_owned()),
        prewarm: Some(0),
        metrics: None,
        ..serve.clone()
    };
    let mut cold_config = cold_serve.config()?;
    cold_config.policy.instance.bandwidth_kib_per_s = 100_000_000;
    cold_config.policy.caps.bandwidth_kib_per_s = 100_000_000;
    let cold_server = Server::bind(cold_config, cold_serve.listen).await?;
    let cold_bench = Bench {
        target: Target {
            server: cold_server.local_addr()?.to_string(),
            socks: None,
            dialer: None,
        },
    };
    let cold_task = tokio::spawn(cold_server.run());
    let hello = bench.store("hello.py", HELLO).await?;
    let cold_hello = cold_bench.store("hello.py", HELLO).await?;
    for _ in 0..20 {
        bench.invoke_to_end(&hello, "[\"world\"]").await?; // warm-up
        cold_bench.invoke_to_end(&cold_hello, "[\"world\"]").await?;
    }
    let mut latencies = Vec::with_capacity(args.invocations);
    let mut cold_latencies = Vec::with_capacity(args.invocations);
    for i in 0..args.invocations {
        for (b, token, times) in [
            (&bench, &hello, &mut latencies),
            (&cold_bench, &cold_hello, &mut cold_latencies),
        ] {
            let started = Instant::now();
            let got = b.invoke_to_end(token, "[\"world\"]").await?;
            times.push(started.elapsed());
            if got != 11 {
                bail!("hello-world returned {got} bytes, expected 11");
            }
        }
        if (i + 1) % 250 == 0 {
            eprintln!("  hello-world: {} / {}", i + 1, args.invocations);
        }
    }
    cold_task.abort();
    latencies.sort();
    cold_latencies.sort();

    // 1b. The same function in the sandbox alone, side by side: the ratio
    // of the two is what the box adds, whatever the machine's speed.
    let runtime = args
        .runtime
        .clone()
        .unwrap_or_else(crate::runtime_path::default_runtime);
    let sandbox_n = args.invocations.min(500);
    let (sandbox, sandbox_prepared) = tokio::task::spawn_blocking(move || {
        sandbox_alone(&runtime, HELLO, "[\"world\"]", sandbox_n)
    })
    .await??;
    eprintln!(
        "  the same function in the sandbox alone: p50 {:.2} ms (prepared instance: {:.2} ms)",
        ms(percentile(&sandbox, 0.50)),
        ms(percentile(&sandbox_prepared, 0.50))
    );

    // 2. Bulk output throughput.
    let bulk = bench.store("bulk.py", BULK).await?;
    let mut rates = Vec::new();
    for run in 0..3 {
        let started = Instant::now();
        let got = bench
            .invoke_to_end(&bulk, &format!("[{}]", args.bulk_mib))
            .await?;
        let elapsed = started.elapsed();
        if got != args.bulk_mib * 1024 * 1024 {
            bail!(
                "bulk run {run} delivered {got} bytes, expected {}",
                args.bulk_mib * 1024 * 1024
            );
        }
        rates.push(got as f64 / elapsed.as_secs_f64() / 1e6);
        eprintln!("  bulk run {}: {:.0} MB/s", run + 1, rates[run]);
    }
    rates.sort_by(f64::total_cmp);
    let bulk_mb_s = rates[1];

    // 2b. A bandwidth-limited session: how closely the throttle holds the
    // limit. The first second's worth is burst; the rate is measured from
    // the first byte to the last.
    let limit_kib = args.throttle_kib_per_s;
    let throttled_manifest = MANIFEST.replace(
        "bandwidth_kib_per_s = 100000000",
        &format!("bandwidth_kib_per_s = {limit_kib}"),
    );
    let throttled = {
        let mut conn = Connection::connect(&bench.target).await?;
        conn.store_with_manifest("throttled.py", THROTTLED, &throttled_manifest)
            .await?
            .1
    };
    let throttled_kib = limit_kib * 6;
    let started = Instant::now();
    let got = bench
        .invoke_to_end(&throttled, &format!("[{throttled_kib}]"))
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    if got != throttled_kib * 1024 {
        bail!(
            "the throttled run delivered {got} bytes, expected {}",
            throttled_kib * 1024
        );
    }
    // Burst (1 s of the rate) arrives at once; the rest at the rate.
    let throttled_rate = (throttled_kib - limit_kib) as f64 / elapsed;
    eprintln!("  throttled: {throttled_rate:.0} KiB/s at a {limit_kib} KiB/s limit");

    // 3. Echo round trip over one attached session.
    let echo = bench.store("echo.py", ECHO).await?;
    let mut conn = Connection::connect(&bench.target).await?;
    let session = conn.invoke(&echo, "main", "[]").await?;
    let mut attachment = Connection::connect(&bench.target)
        .await?
        .attach(&session, None)
        .await?;
    let input = attachment.input();
    let message = Bytes::from(vec![b'e'; 32]);
    let mut round_trips = Vec::with_capacity(args.round_trips);
    for i in 0..args.round_trips + 50 {
        let started = Instant::now();
        input.send(message.clone()).await?;
        let mut got = 0;
        while got < message.len() {
            match attachment.next().await? {
                Some(data) => got += data.len(),
                None => bail!("echo session ended early"),
            }
        }
        if i >= 50 {
            round_trips.push(started.elapsed());
        }
    }
    input.end().await?;
    while attachment.next().await?.is_some() {}
    attachment.close().await;
    round_trips.sort();

    // 4. Memory with many sessions waiting in api.recv().
    let available_before = mem_available_mib();
    let wait = bench.store("wait.py", WAIT).await?;
    let mut conn = Connection::connect(&bench.target).await?;
    let mut sessions = Vec::with_capacity(args.sessions);
    let started = Instant::now();
    for i in 0..args.sessions {
        sessions.push(conn.invoke(&wait, "main", "[]").await?);
        if (i + 1) % 250 == 0 {
            eprintln!("  waiting sessions: {} / {}", i + 1, args.sessions);
        }
    }
    // Wait until every instance is actually running (the metrics count
    // instances the workers hold).
    loop {
        let metrics = bento_server::metrics::scrape(metrics_addr).await?;
        let running = metrics
            .get("bento_instances_running")
            .copied()
            .unwrap_or(0.0) as u64;
        if running >= args.sessions as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("only {running} of {} sessions started", args.sessions);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Measured before the settling pause below, which is not start-up time.
    let start_rate = args.sessions as f64 / started.elapsed().as_secs_f64();
    // Let the instances reach api.recv() (status counts them from start).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (busy_rss, busy_pss) = total_memory_mib();
    let available_drop = available_before - mem_available_mib();
    // A new user while they all wait: each hello-world is one more fresh
    // instance beside them (the policy leaves room for it).
    let mut while_waiting = Vec::with_capacity(WHILE_WAITING_INVOCATIONS);
    for _ in 0..WHILE_WAITING_INVOCATIONS {
        let started = Instant::now();
        let got = bench.invoke_to_end(&hello, "[\"world\"]").await?;
        while_waiting.push(started.elapsed());
        if got != 11 {
            bail!("hello-world beside the waiting sessions returned {got} bytes, expected 11");
        }
    }
    while_waiting.sort();
    eprintln!(
        "  hello-world beside {} waiting sessions: p50 {:.2} ms",
        args.sessions,
        ms(percentile(&while_waiting, 0.50))
    );
    for session in &sessions {
        conn.kill(session).await?;
    }
    server_task.abort();

    let results = serde_json::json!({
        "workers": workers,
        "hello_world_ms": {
            "invocations": args.invocations,
            "p50": ms(percentile(&latencies, 0.50)),
            "p90": ms(percentile(&latencies, 0.90)),
            "p99": ms(percentile(&latencies, 0.99)),
        },
        "prewarm_per_worker": prewarm,
        "hello_world_no_prewarm_ms": {
            "invocations": cold_latencies.len(),
            "p50": ms(percentile(&cold_latencies, 0.50)),
            "p99": ms(percentile(&cold_latencies, 0.99)),
        },
        "sandbox_hello_ms": {
            "invocations": sandbox.len(),
            "p50": ms(percentile(&sandbox, 0.50)),
            "p99": ms(percentile(&sandbox, 0.99)),
        },
        "sandbox_hello_prepared_ms": {
            "invocations": sandbox_prepared.len(),
            "p50": ms(percentile(&sandbox_prepared, 0.50)),
            "p99": ms(percentile(&sandbox_prepared, 0.99)),
        },
        "box_over_sandbox": ms(percentile(&latencies, 0.50)) / ms(percentile(&sandbox, 0.50)).max(1e-9),
        "bulk_output_mb_s": { "mib_per_run": args.bulk_mib, "median": bulk_mb_s, "runs": rates },
        "throttled_session_kib_s": { "limit": limit_kib, "measured_after_burst": throttled_rate },
        "echo_round_trip_ms": {
            "round_trips": args.round_trips,
            "message_bytes": message.len(),
            "p50": ms(percentile(&round_trips, 0.50)),
            "p90": ms(percentile(&round_trips, 0.90)),
            "p99": ms(percentile(&round_trips, 0.99)),
        },
        "waiting_sessions": {
            "sessions": args.sessions,
            "idle_rss_mib": idle_rss, "idle_pss_mib": idle_pss,
            "total_rss_mib": busy_rss, "total_pss_mib": busy_pss,
            "pss_per_session_mib": (busy_pss - idle_pss) / args.sessions as f64,
            "mem_available_drop_mib": available_drop,
            "sessions_started_per_s": start_rate,
            "hello_world_beside_them_ms": {
                "invocations": while_waiting.len(),
                "p50": ms(percentile(&while_waiting, 0.50)),
                "p99": ms(percentile(&while_waiting, 0.99)),
            },
        },
    });
    if let Some(path) = &args.save {
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let comparison = match &args.baseline {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the baseline {}", path.display()))?;
            let baseline: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                format!("{} is not a `bento bench --save` file", path.display())
            })?;
            Some(compare(&results, &baseline))
        }
        None => None,
    };
    #[allow(clippy::print_stdout)]
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("| measurement | result |");
        println!("|---|---|");
        println!(
            "| hello-world invocation, fresh instance (n={}) | p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms |",
            args.invocations,
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.90)),
            ms(percentile(&latencies, 0.99))
        );
        println!(
            "| the same, on a box with prewarming off, alternating with the above (n={}) | p50 {:.2} ms, p99 {:.2} ms (the measured box keeps {prewarm} per worker) |",
            cold_latencies.len(),
            ms(percentile(&cold_latencies, 0.50)),
            ms(percentile(&cold_latencies, 0.99))
        );
        println!(
            "| bulk output, {} MiB in 1 MiB sends (median of 3) | {bulk_mb_s:.0} MB/s |",
            args.bulk_mib
        );
        println!(
            "| session limited to {limit_kib} KiB/s, {throttled_kib} KiB sent (rate after the 1 s burst) | {throttled_rate:.0} KiB/s |"
        );
        println!(
            "| echo round trip, 32 B (n={}) | p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms |",
            args.round_trips,
            ms(percentile(&round_trips, 0.50)),
            ms(percentile(&round_trips, 0.90)),
            ms(percentile(&round_trips, 0.99))
        );
        println!(
            "| {} sessions waiting in api.recv() (server + {workers} workers) | PSS {busy_pss:.0} MiB; MemAvailable dropped {available_drop:.0} MiB; summed RSS {busy_rss:.0} MiB (idle box: PSS {idle_pss:.0} MiB) |",
            args.sessions
        );
        println!(
            "| the same function in the sandbox alone, in-process (n={}) | p50 {:.2} ms, p99 {:.2} ms; box / sandbox {:.2} |",
            sandbox.len(),
            ms(percentile(&sandbox, 0.50)),
            ms(percentile(&sandbox, 0.99)),
            ms(percentile(&latencies, 0.50)) / ms(percentile(&sandbox, 0.50)).max(1e-9)
        );
        println!(
            "| the same in the sandbox alone, instance prepared before the clock starts (n={}) | p50 {:.2} ms, p99 {:.2} ms |",
            sandbox_prepared.len(),
            ms(percentile(&sandbox_prepared, 0.50)),
            ms(percentile(&sandbox_prepared, 0.99))
        );
        println!(
            "| hello-world invocation while they wait (n={}) | p50 {:.2} ms, p99 {:.2} ms |",
            while_waiting.len(),
            ms(percentile(&while_waiting, 0.50)),
            ms(percentile(&while_waiting, 0.99))
        );
        println!("| sessions started per second (sequential invokes) | {start_rate:.0} |");
    }
    #[allow(clippy::print_stdout)]
    if let Some(lines) = comparison {
        println!();
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::compare;
    use serde_json::json;

    #[test]
    fn a_slower_invocation_and_a_faster_bulk_run_are_called_worse_and_better() {
        let baseline = json!({
            "hello_world_ms": {"p50": 2.0},
            "bulk_output_mb_s": {"median": 1000.0},
            "echo_round_trip_ms": {"p50": 0.1},
        });
        let now = json!({
            "hello_world_ms": {"p50": 4.0},
            "bulk_output_mb_s": {"median": 2000.0},
            "echo_round_trip_ms": {"p50": 0.105},
        });
        let lines = compare(&now, &baseline);
        let line = |name: &str| {
            lines
                .iter()
                .find(|l| l.contains(name))
                .cloned()
                .unwrap_or_default()
        };
        assert!(line("hello-world invocation p50").ends_with("| 2.00 | WORSE |"));
        assert!(line("bulk output").ends_with("| 2.00 | better |"));
        assert!(line("echo round trip").ends_with("| 1.05 | same |"));
    }

    #[test]
    fn figures_missing_from_either_side_are_left_out_of_the_comparison() {
        let lines = compare(&json!({"hello_world_ms": {"p50": 1.0}}), &json!({}));
        assert_eq!(lines.len(), 2, "only the table header: {lines:?}");
    }
}
