//! `bento bench`: its options, turned into those of `bento-bench`'s runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::BenchMode;
use crate::runtime_path::default_runtime;
use crate::serve::ServeArgs;

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
/// Options of `bento bench load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// Mean pause between one client's operations, ms (each pause is
    /// uniform in 0..2× this).
    #[arg(long, default_value_t = 1000)]
    pub think_ms: u64,
    /// Messages (of 1 KiB) per generated session.
    #[arg(long, default_value_t = 64)]
    pub messages: u64,
    /// Sandbox worker processes of the box [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Precompiled runtime (see `bento serve --help`).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Print the results as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
/// Options of `bento bench crash`.
#[derive(Debug, Clone, Args)]
pub struct CrashArgs {
    /// Kill-and-restart rounds.
    #[arg(long, default_value_t = 50)]
    pub rounds: u64,
    /// Clients storing and invoking while the box is killed.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Longest time the box runs in a round before it is killed, ms (each
    /// round picks a random time up to this).
    #[arg(long, default_value_t = 2000)]
    pub max_delay_ms: u64,
    /// Sandbox worker processes of the box [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Precompiled runtime (see `bento serve --help`).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
}

/// `bento bench [soak|load|crash]`: exit 0 when the run was clean (the
/// figures always are), 1 when not.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout();
    let clean = match args.mode {
        Some(BenchMode::Soak(soak)) => {
            let options = bento_bench::soak::SoakOptions {
                invocations: soak.invocations,
                sample_every: soak.sample_every,
                concurrency: soak.concurrency,
                warm_up: soak.warm_up,
                workers: soak.workers,
                runtime: soak.runtime.unwrap_or_else(default_runtime),
            };
            bento_bench::soak::run(options, &mut out).await?
        }
        Some(BenchMode::Load(load)) => {
            let options = bento_bench::load::LoadOptions {
                clients: load.clients,
                duration: load.duration,
                think_ms: load.think_ms,
                messages: load.messages,
                workers: load.workers,
                runtime: load.runtime.unwrap_or_else(default_runtime),
                json: load.json,
            };
            bento_bench::load::run(options, &mut out).await?
        }
        Some(BenchMode::Crash(crash)) => {
            let options = bento_bench::crash::CrashOptions {
                rounds: crash.rounds,
                clients: crash.clients,
                max_delay_ms: crash.max_delay_ms,
                workers: crash.workers,
                runtime: crash.runtime.unwrap_or_else(default_runtime),
            };
            bento_bench::crash::run(options, &mut out).await?
        }
        None => {
            // Each box the benchmark starts is configured as `bento serve
            // --data-dir DIR` would be, with this command's workers,
            // runtime and prewarming.
            let configure = |data_dir: &std::path::Path, prewarm: Option<u64>| {
                let mut serve = ServeArgs::defaults(data_dir)?;
                serve.runtime.clone_from(&args.runtime);
                serve.workers = args.workers;
                serve.prewarm = prewarm;
                serve.config().map_err(Into::into)
            };
            let options = bento_bench::figures::FiguresOptions {
                invocations: args.invocations,
                bulk_mib: args.bulk_mib,
                round_trips: args.round_trips,
                sessions: args.sessions,
                throttle_kib_per_s: args.throttle_kib_per_s,
                prewarm: args.prewarm,
                runtime: args.runtime.clone().unwrap_or_else(default_runtime),
                json: args.json,
                save: args.save.clone(),
                baseline: args.baseline.clone(),
            };
            bento_bench::figures::run(options, &configure, &mut out).await?;
            true
        }
    };
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
