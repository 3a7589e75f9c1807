//! `bento bench`: start a box on loopback, in this process, and measure
//! it: invocation latency (beside a box that keeps no instance ready, and
//! beside the sandbox alone), output throughput, a throttled session, echo
//! round trips, the memory of waiting sessions.
//!
//! Reports medians and tail percentiles; nothing here asserts on time.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bento_client::{Connection, Target};
use bento_protocol::InvokeToken;
use bento_server::{Server, ServerConfig};
use bytes::Bytes;

use crate::latency::{ms, percentile};
use crate::process::{mem_available_mib, total_memory_mib};
use crate::{Error, io_error, read_to_end, setup_error};

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

/// Options of the figures (`bento bench`; its `--help` says the defaults).
#[derive(Debug, Clone)]
pub struct FiguresOptions {
    /// Hello-world invocations to time.
    pub invocations: usize,
    /// MiB of output per bulk run (3 runs; the median is reported).
    pub bulk_mib: u64,
    /// Echo round trips to time.
    pub round_trips: usize,
    /// Concurrent sessions waiting in api.recv() for the memory figure.
    pub sessions: usize,
    /// Bandwidth limit of the throttled-session measurement, KiB/s (it
    /// sends 6 s worth).
    pub throttle_kib_per_s: u64,
    /// Fresh instances each worker of the measured box keeps ready
    /// [default: the policy's box.prewarm_per_worker]; the second box
    /// keeps none.
    pub prewarm: Option<u64>,
    /// The precompiled runtime (for the sandbox alone; the boxes' comes
    /// with their configuration).
    pub runtime: PathBuf,
    /// Write the results as JSON instead of a table.
    pub json: bool,
    /// Also write the results (JSON) to this file.
    pub save: Option<PathBuf>,
    /// Compare with an earlier saved result.
    pub baseline: Option<PathBuf>,
}

/// The configuration of a box on the data directory with this many
/// prewarmed instances per worker (`None`: the policy's), as `bento
/// serve` would make it with default options (the workers' command line
/// is the `bento` binary's). The benchmark then sets the limits it
/// measures with.
pub type ConfigureBox<'a> =
    &'a (dyn Fn(&Path, Option<u64>) -> Result<ServerConfig, BoxError> + Sync);

/// Why the box's configuration could not be made.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
        "/hello_world_one_connection_ms/p50",
        "hello-world p50, invoke and attach on one connection (ms)",
        false,
    ),
    (
        "/hello_world_run_ms/p50",
        "hello-world p50 sent with Run, one round trip (ms)",
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
pub fn compare(current: &serde_json::Value, baseline: &serde_json::Value) -> Vec<String> {
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
) -> Result<(Vec<Duration>, Vec<Duration>), Error> {
    use bento_sandbox::{Call, DiscardedSession, Job, PythonRuntime, SessionIo};
    use bento_worker_contract::InstanceOutcome;
    let runtime = PythonRuntime::load_precompiled(runtime)
        .map_err(setup_error("cannot load the runtime for the sandbox alone"))?;
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
    let returned = |outcome: InstanceOutcome| match outcome {
        InstanceOutcome::Returned => Ok(()),
        failure => Err(Error::Run(format!("the sandbox run failed: {failure:?}"))),
    };
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
        returned(runtime.run(&job, io()))?;
        let fresh_time = started.elapsed();
        let instance = runtime.prepare().map_err(setup_error(
            "cannot prepare an instance for the sandbox alone",
        ))?;
        let started = Instant::now();
        let (outcome, spent) = runtime.run_prepared(instance, &job, io());
        let prepared_time = started.elapsed();
        drop(spent);
        returned(outcome)?;
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
    async fn store(&self, name: &str, source: &str) -> Result<InvokeToken, Error> {
        let mut conn = Connection::connect(&self.target).await?;
        Ok(conn.store_with_manifest(name, source, MANIFEST).await?.1)
    }

    /// Invoke and read the session to its end; returns bytes received.
    async fn invoke_to_end(&self, token: &InvokeToken, args: &str) -> Result<u64, Error> {
        crate::invoke_to_end(&self.target, token, args).await
    }

    /// Invoke, then attach on the same connection: one connection and
    /// handshake fewer than [`Bench::invoke_to_end`], the same round trips.
    async fn invoke_attach_on_one_connection(
        &self,
        token: &InvokeToken,
        args: &str,
    ) -> Result<u64, Error> {
        let mut conn = Connection::connect(&self.target).await?;
        let session = conn.invoke(token, "main", args).await?;
        read_to_end(conn.attach(&session, None).await?).await
    }

    /// `Run`: the source sent with the call, answered by the session's
    /// output on the same connection (one round trip, nothing stored).
    async fn run_to_end(&self, source: &str, args: &str) -> Result<u64, Error> {
        let (_, _, attachment) = Connection::connect(&self.target)
            .await?
            .run("hello.py", source, MANIFEST, "main", args)
            .await?;
        read_to_end(attachment).await
    }
}

/// The limits every measured box runs with: room to move GiBs at full
/// speed and to hold `sessions` waiting sessions (the benchmark measures
/// the box, not its limits).
fn measure_with(config: &mut ServerConfig, sessions: usize) {
    let sessions = sessions as u64;
    let policy = &mut config.policy;
    policy.instance.memory_mib = 128;
    policy.instance.cpu_ms = 60_000;
    policy.instance.wall_ms = 600_000;
    policy.instance.output_buffer_kib = 4096;
    policy.instance.bandwidth_kib_per_s = 100_000_000;
    policy.caps.bandwidth_kib_per_s = 100_000_000;
    policy.caps.max_instances = (sessions + 64).max(1024);
    policy.caps.max_buffered_mib = 4 * (sessions + 64);
    policy.caps.max_upload_kib = 1024;
    policy.caps.max_stored_mib = 64;
    policy.caps.max_connections = 4096;
    config.max_connections = 4096;
    config.session_retention = Duration::from_secs(60);
    config.read_timeout = Duration::from_secs(60);
    // The benchmark measures capacity with deliberate bursts (e.g. its
    // sessions started at once), which overload control would refuse in
    // part.
    config.workers.admission_target = None;
}

/// A box bound on loopback in this process, not yet running.
struct BoundBox {
    server: Server,
    /// Its data directory, removed when this drops.
    _data_dir: tempfile::TempDir,
    workers: usize,
    prewarm_per_worker: u64,
}

/// A box on loopback in this process, made by `configure` on a new
/// temporary directory.
async fn start_box(
    configure: ConfigureBox<'_>,
    prewarm: Option<u64>,
    sessions: usize,
    metrics: bool,
) -> Result<BoundBox, Error> {
    let data_dir =
        tempfile::tempdir().map_err(io_error("cannot create a temporary data directory"))?;
    let mut config = configure(data_dir.path(), prewarm)
        .map_err(setup_error("cannot configure the benchmark's box"))?;
    measure_with(&mut config, sessions);
    if metrics {
        // The benchmark counts running instances, which only the
        // operator's endpoint tells.
        config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    let (workers, prewarm_per_worker) = (
        config.workers.workers,
        config.policy.caps.prewarm_per_worker,
    );
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = Server::bind(config, listen)
        .await
        .map_err(setup_error("cannot start the benchmark's box"))?;
    Ok(BoundBox {
        server,
        _data_dir: data_dir,
        workers,
        prewarm_per_worker,
    })
}

/// Measure a box started for the purpose (and a second one with
/// prewarming off, and the sandbox alone); the table (or JSON) and the
/// comparison with a baseline are written to `out`, progress to stderr.
pub async fn run(
    args: FiguresOptions,
    configure: ConfigureBox<'_>,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let BoundBox {
        server,
        _data_dir,
        workers,
        prewarm_per_worker: prewarm,
    } = start_box(configure, args.prewarm, args.sessions, true).await?;
    let addr = server
        .local_addr()
        .map_err(io_error("the benchmark's box has no address"))?;
    let metrics_addr = server
        .metrics_addr()
        .ok_or_else(|| Error::Run("the benchmark's box serves no metrics".to_owned()))?
        .map_err(io_error("the benchmark's box has no metrics address"))?;
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
    let BoundBox {
        server: cold_server,
        _data_dir: _cold_dir,
        ..
    } = start_box(configure, Some(0), args.sessions, false).await?;
    let cold_bench = Bench {
        target: Target {
            server: cold_server
                .local_addr()
                .map_err(io_error("the second box has no address"))?
                .to_string(),
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
    let mut one_connection = Vec::with_capacity(args.invocations);
    let mut run_latencies = Vec::with_capacity(args.invocations);
    for i in 0..args.invocations {
        for (b, token, times) in [
            (&bench, &hello, &mut latencies),
            (&cold_bench, &cold_hello, &mut cold_latencies),
        ] {
            let started = Instant::now();
            let got = b.invoke_to_end(token, "[\"world\"]").await?;
            times.push(started.elapsed());
            if got != 11 {
                fail!("hello-world returned {got} bytes, expected 11");
            }
        }
        // The same call on the measured box in fewer round trips, in turn
        // with the above so that the machine's state hits all alike.
        let started = Instant::now();
        let got = bench
            .invoke_attach_on_one_connection(&hello, "[\"world\"]")
            .await?;
        one_connection.push(started.elapsed());
        let started = Instant::now();
        let got_run = bench.run_to_end(HELLO, "[\"world\"]").await?;
        run_latencies.push(started.elapsed());
        if got != 11 || got_run != 11 {
            fail!("hello-world on one connection returned {got} and {got_run} bytes, expected 11");
        }
        if (i + 1) % 250 == 0 {
            eprintln!("  hello-world: {} / {}", i + 1, args.invocations);
        }
    }
    cold_task.abort();
    latencies.sort();
    cold_latencies.sort();
    one_connection.sort();
    run_latencies.sort();

    // 1b. The same function in the sandbox alone, side by side: the ratio
    // of the two is what the box adds, whatever the machine's speed.
    let runtime = args.runtime.clone();
    let sandbox_n = args.invocations.min(500);
    let (sandbox, sandbox_prepared) = tokio::task::spawn_blocking(move || {
        sandbox_alone(&runtime, HELLO, "[\"world\"]", sandbox_n)
    })
    .await
    .map_err(setup_error("the sandbox alone failed"))??;
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
            fail!(
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
        fail!(
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
                None => fail!("echo session ended early"),
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
    // Wait until every instance is actually running: admitted
    // (`bento_instances_running` counts an instance from its Invoke on) and
    // none still waiting for its worker thread (`bento_pending_starts`).
    // Admission alone is not a start: counting it made this figure the
    // rate of Invoke replies (6847/s on 2026-12-05, against ~1200 real).
    loop {
        let metrics = bento_server::metrics::scrape(metrics_addr)
            .await
            .map_err(io_error("cannot read the box's metrics"))?;
        let gauge = |name: &str| metrics.get(name).copied().unwrap_or(0.0) as u64;
        let running = gauge("bento_instances_running");
        if running >= args.sessions as u64 && gauge("bento_pending_starts") == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            fail!("only {running} of {} sessions started", args.sessions);
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
            fail!("hello-world beside the waiting sessions returned {got} bytes, expected 11");
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
        "hello_world_one_connection_ms": {
            "invocations": one_connection.len(),
            "p50": ms(percentile(&one_connection, 0.50)),
            "p99": ms(percentile(&one_connection, 0.99)),
        },
        "hello_world_run_ms": {
            "invocations": run_latencies.len(),
            "p50": ms(percentile(&run_latencies, 0.50)),
            "p99": ms(percentile(&run_latencies, 0.99)),
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
        std::fs::write(path, format!("{results:#}\n"))
            .map_err(io_error(format!("cannot write {}", path.display())))?;
    }
    let comparison = match &args.baseline {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(io_error(format!(
                "cannot read the baseline {}",
                path.display()
            )))?;
            let baseline: serde_json::Value = serde_json::from_str(&text).map_err(setup_error(
                format!("{} is not a `bento bench --save` file", path.display()),
            ))?;
            Some(compare(&results, &baseline))
        }
        None => None,
    };
    if args.json {
        report!(out, "{results:#}");
    } else {
        report!(out, "| measurement | result |");
        report!(out, "|---|---|");
        report!(
            out,
            "| hello-world invocation, fresh instance (n={}) | p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms |",
            args.invocations,
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.90)),
            ms(percentile(&latencies, 0.99))
        );
        report!(
            out,
            "| the same, on a box with prewarming off, alternating with the above (n={}) | p50 {:.2} ms, p99 {:.2} ms (the measured box keeps {prewarm} per worker) |",
            cold_latencies.len(),
            ms(percentile(&cold_latencies, 0.50)),
            ms(percentile(&cold_latencies, 0.99))
        );
        report!(
            out,
            "| the same, invoke and attach on one connection, in turn with the above (n={}) | p50 {:.2} ms, p99 {:.2} ms |",
            one_connection.len(),
            ms(percentile(&one_connection, 0.50)),
            ms(percentile(&one_connection, 0.99))
        );
        report!(
            out,
            "| the same source sent with `Run` (one connection, one round trip, not stored), in turn (n={}) | p50 {:.2} ms, p99 {:.2} ms |",
            run_latencies.len(),
            ms(percentile(&run_latencies, 0.50)),
            ms(percentile(&run_latencies, 0.99))
        );
        report!(
            out,
            "| bulk output, {} MiB in 1 MiB sends (median of 3) | {bulk_mb_s:.0} MB/s |",
            args.bulk_mib
        );
        report!(
            out,
            "| session limited to {limit_kib} KiB/s, {throttled_kib} KiB sent (rate after the 1 s burst) | {throttled_rate:.0} KiB/s |"
        );
        report!(
            out,
            "| echo round trip, 32 B (n={}) | p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms |",
            args.round_trips,
            ms(percentile(&round_trips, 0.50)),
            ms(percentile(&round_trips, 0.90)),
            ms(percentile(&round_trips, 0.99))
        );
        report!(
            out,
            "| {} sessions waiting in api.recv() (server + {workers} workers) | PSS {busy_pss:.0} MiB; MemAvailable dropped {available_drop:.0} MiB; summed RSS {busy_rss:.0} MiB (idle box: PSS {idle_pss:.0} MiB) |",
            args.sessions
        );
        report!(
            out,
            "| the same function in the sandbox alone, in-process (n={}) | p50 {:.2} ms, p99 {:.2} ms; box / sandbox {:.2} |",
            sandbox.len(),
            ms(percentile(&sandbox, 0.50)),
            ms(percentile(&sandbox, 0.99)),
            ms(percentile(&latencies, 0.50)) / ms(percentile(&sandbox, 0.50)).max(1e-9)
        );
        report!(
            out,
            "| the same in the sandbox alone, instance prepared before the clock starts (n={}) | p50 {:.2} ms, p99 {:.2} ms |",
            sandbox_prepared.len(),
            ms(percentile(&sandbox_prepared, 0.50)),
            ms(percentile(&sandbox_prepared, 0.99))
        );
        report!(
            out,
            "| hello-world invocation while they wait (n={}) | p50 {:.2} ms, p99 {:.2} ms |",
            while_waiting.len(),
            ms(percentile(&while_waiting, 0.50)),
            ms(percentile(&while_waiting, 0.99))
        );
        report!(
            out,
            "| sessions started per second (sequential invokes) | {start_rate:.0} |"
        );
    }
    if let Some(lines) = comparison {
        report!(out);
        for line in lines {
            report!(out, "{line}");
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
