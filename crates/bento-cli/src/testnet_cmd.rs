//! `bento testnet up|status|down`: a private Tor network on loopback with
//! Bento boxes beside its relays, for tests, demos and benchmarks.
//!
//! `up` leaves the network running (state in `DIR/testnet.json`); `status`
//! and `down` find it from there, from any process. Nothing here reaches an
//! address outside 127.0.0.0/8.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use bento_testnet::boxes::{BoxOptions, announce_boxes, pid_alive, start_boxes};
use bento_testnet::{Testnet, TestnetConfig};
use clap::Args;

use crate::runtime_path;

/// Where the network lives.
#[derive(Debug, Clone, Args)]
pub struct DirArg {
    /// The network's directory [default: .cache/testnet in the source tree].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl DirArg {
    pub fn path(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(default_dir)
    }
}

/// Options of `bento testnet up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Bento boxes to start, each beside its own relay (at most 4).
    #[arg(long, default_value_t = 2)]
    pub boxes: usize,
    /// Box policy for the boxes (see `bento serve --policy`); repeat it to
    /// give boxes different policies: box N gets the Nth, boxes past the
    /// last given get the last.
    #[arg(long)]
    pub policy: Vec<PathBuf>,
    /// Each box's relay announces it in its ContactInfo
    /// (`bento:ONION.onion:PORT`, see `bento boxes`); `up` returns once the
    /// client's tor has every announcement.
    #[arg(long)]
    pub announce: bool,
    /// Precompiled runtime for the boxes (see `bento serve --runtime`).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Tie every process to this PID: they exit when it does (tests pass
    /// their own PID). Default: they run until `bento testnet down`.
    #[arg(long, hide = true)]
    pub owner_pid: Option<u32>,
}

/// Options of `bento testnet bench`.
#[derive(Debug, Clone, Args)]
pub struct TorBenchArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// MiB per throughput run (3 runs per path; medians reported).
    #[arg(long, default_value_t = 16)]
    pub mib: u64,
    /// Round trips per RTT measurement.
    #[arg(long, default_value_t = 200)]
    pub round_trips: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn default_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/testnet"))
}

fn progress(step: &str) {
    eprintln!("[testnet] {step}");
}

/// `bento testnet up`.
pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.boxes > 4 {
        bail!("--boxes: at most 4 (the network has 4 non-authority relays)");
    }
    let dir = args.dir.path();
    if let Ok(state) = Testnet::load(&dir)
        && state.nodes.iter().any(|n| pid_alive(n.pid))
    {
        bail!(
            "a test network is already running in {} (stop it with `bento testnet down`)",
            dir.display()
        );
    }
    let runtime = args
        .runtime
        .clone()
        .unwrap_or_else(runtime_path::default_runtime);
    if !runtime.is_file() {
        bail!(
            "the precompiled runtime {} does not exist; run scripts/setup.sh",
            runtime.display()
        );
    }
    let started = Instant::now();
    let mut config = TestnetConfig::new(&dir);
    config.boxes = args.boxes;
    // PID 1 never exits: without an owner the network runs until `down`.
    config.owner_pid = args.owner_pid.unwrap_or(1);
    let mut show = |step: &str| progress(step);
    let net = Testnet::up(config, &mut show).await?;
    let tor_secs = started.elapsed().as_secs_f64();
    progress(&format!("Tor network ready in {tor_secs:.1} s"));
    let mut state = net.into_state();
    let options = BoxOptions {
        policies: args.policy.clone(),
        runtime,
        owner_pid: args.owner_pid,
    };
    let mut result = start_boxes(&mut state, &options, &mut show).await;
    if result.is_ok() && args.announce {
        result = announce_boxes(&state, &mut show).await;
    }
    // Record whatever started, so `down` can stop it even after a failure.
    state.save(&dir)?;
    if let Err(e) = result {
        let _ = Testnet::down(&state);
        return Err(e.into());
    }
    eprintln!(
        "[testnet] up in {:.1} s (Tor {tor_secs:.1} s); SOCKS {}; boxes:",
        started.elapsed().as_secs_f64(),
        state
            .client_socks()
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    for entry in &state.boxes {
        eprintln!("[testnet]   {}  (local {})", entry.onion, entry.listen);
    }
    eprintln!("[testnet] `bento testnet status --json` for scripts; `bento testnet down` to stop");
    Ok(ExitCode::SUCCESS)
}

/// `bento testnet bench`: what Bento costs on top of Tor (`bento-bench`'s
/// `tor`), on a network of its own.
pub async fn bench(args: TorBenchArgs) -> anyhow::Result<ExitCode> {
    let options = bento_bench::tor::TorOptions {
        dir: args.dir.dir,
        mib: args.mib,
        round_trips: args.round_trips,
        runtime: runtime_path::default_runtime(),
        json: args.json,
    };
    bento_bench::tor::run(options, &mut std::io::stdout()).await?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
/// `bento testnet status`.
pub fn status(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let state = match Testnet::load(dir) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("no test network in {}: {e}", dir.display());
            return Ok(ExitCode::from(crate::exit::EXIT_REQUEST));
        }
    };
    let socks = state.client_socks().map(|s| s.to_string());
    if json {
        let out = serde_json::json!({
            "socks": socks,
            "boxes": state.boxes.iter().map(|b| serde_json::json!({
                "onion": b.onion, "listen": b.listen, "pid": b.pid, "alive": pid_alive(b.pid),
            })).collect::<Vec<_>>(),
            "nodes": state.nodes.iter().map(|n| serde_json::json!({
                "nickname": n.nickname, "role": n.role, "pid": n.pid, "alive": pid_alive(n.pid),
                "box_host": n.box_host,
                "or_port": n.or_port, "control_port": n.control_port, "socks_port": n.socks_port,
            })).collect::<Vec<_>>(),
            "dir": state.dir,
            "arti_config": state.dir.join(bento_testnet::ARTI_CONFIG_FILE),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("test network in {}", state.dir.display());
        println!("SOCKS: {}", socks.unwrap_or_else(|| "none".into()));
        for n in &state.nodes {
            println!(
                "  {:<9} {:<9} pid {:<7} {}",
                n.nickname,
                format!("{:?}", n.role).to_lowercase(),
                n.pid,
                if pid_alive(n.pid) { "running" } else { "GONE" }
            );
        }
        for b in &state.boxes {
            println!(
                "  box       {}  local {}  pid {} {}",
                b.onion,
                b.listen,
                b.pid,
                if pid_alive(b.pid) { "running" } else { "GONE" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bento testnet down`.
pub fn down(dir: &Path) -> anyhow::Result<ExitCode> {
    let state = match Testnet::load(dir) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("no test network in {}: {e}", dir.display());
            return Ok(ExitCode::from(crate::exit::EXIT_REQUEST));
        }
    };
    let count = state.nodes.len() + state.boxes.len();
    Testnet::down(&state)?;
    eprintln!("[testnet] stopped {count} processes");
    Ok(ExitCode::SUCCESS)
}
