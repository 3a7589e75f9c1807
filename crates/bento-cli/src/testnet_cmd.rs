//! `bento testnet up|status|down`: a private Tor network on loopback with
//! Bento boxes beside its relays, for tests, demos and benchmarks.
//!
//! `up` leaves the network running (state in `DIR/testnet.json`); `status`
//! and `down` find it from there, from any process. Nothing here reaches an
//! address outside 127.0.0.0/8.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bento_client::{Connection, Target};
use bento_testnet::{BoxEntry, Testnet, TestnetConfig, TestnetState};
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

fn default_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/testnet"))
}

/// How long a box may take to start and publish its onion service.
const BOX_TIMEOUT: Duration = Duration::from_secs(120);

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
    let mut result = start_boxes(&mut state, &args, &runtime).await;
    if result.is_ok() && args.announce {
        result = announce_boxes(&state).await;
    }
    // Record whatever started, so `down` can stop it even after a failure.
    state.save(&dir)?;
    if let Err(e) = result {
        let _ = Testnet::down(&state);
        return Err(e);
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

/// Start a box beside each box-host relay and wait until each answers
/// through Tor; records them in `state`.
pub(crate) async fn start_boxes(
    state: &mut TestnetState,
    args: &UpArgs,
    runtime: &Path,
) -> anyhow::Result<()> {
    let hosts: Vec<_> = state.box_hosts().into_iter().cloned().collect();
    let bento = std::env::current_exe().context("cannot find the bento binary")?;
    let socks = state
        .client_socks()
        .context("the network has no client SocksPort")?;
    let mut pending = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let data_dir = state.dir.join("boxes").join(format!("box{i}"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let log_path = data_dir.join("serve.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = std::process::Command::new(&bento);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--runtime")
            .arg(runtime)
            .arg("--tor-control")
            .arg(host.control_addr().to_string());
        if let Some(policy) = args.policy.get(i).or(args.policy.last()) {
            command.arg("--policy").arg(policy);
        }
        if let Some(owner) = args.owner_pid {
            command.args(["--exit-with-pid", &owner.to_string()]);
        }
        // Its own process group: a Ctrl-C meant for this command must not
        // reach boxes that outlive it.
        use std::os::unix::process::CommandExt;
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().context("cannot start a box")?;
        progress(&format!(
            "box{i} started beside {} (pid {})",
            host.nickname,
            child.id()
        ));
        pending.push((i, child.id(), data_dir, log_path));
    }
    for (i, pid, data_dir, log_path) in pending {
        let (listen, onion) = wait_for_box(&log_path, pid).await?;
        progress(&format!(
            "box{i} published {onion}; checking it through Tor"
        ));
        state.boxes.push(BoxEntry {
            onion: onion.clone(),
            listen,
            pid,
            data_dir,
        });
        reach_through_tor(&onion, socks).await?;
    }
    Ok(())
}

/// How long the announcements may take to reach the client: the relays'
/// new descriptors wait for the next consensus (20 s voting interval), then
/// the client fetches them.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(240);

/// Each box's relay announces the box in its ContactInfo; returns once the
/// client's tor lists every announcement in the consensus.
async fn announce_boxes(state: &TestnetState) -> anyhow::Result<()> {
    // `start_boxes` starts box N beside box host N.
    for (entry, host) in state.boxes.iter().zip(state.box_hosts()) {
        let announcement = bento_tor::Announcement::parse(&entry.onion)
            .with_context(|| format!("box {} has no valid onion address", entry.onion))?;
        let contact = format!(
            "{} {}",
            bento_testnet::default_contact_info(&host.nickname),
            announcement.contact_field()
        );
        host.set_contact_info(&contact).await?;
        progress(&format!("{} announces {}", host.nickname, announcement));
    }
    let client = state
        .nodes
        .iter()
        .find(|n| n.role == bento_testnet::NodeRole::Client)
        .context("the network has no client")?;
    let wanted: Vec<&str> = state.boxes.iter().map(|b| b.onion.as_str()).collect();
    let deadline = Instant::now() + ANNOUNCE_TIMEOUT;
    progress("waiting for the client to see the announcements (next consensus)");
    loop {
        let mut control =
            bento_tor::TorControl::connect(&client.control_addr().to_string()).await?;
        let listed: Vec<String> = control
            .announcing_relays()
            .await?
            .into_iter()
            .filter_map(|r| r.announcement.ok().map(|a| a.server()))
            .collect();
        if wanted.iter().all(|w| listed.iter().any(|l| l == w)) {
            progress("every box is announced in the consensus");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the client's tor lists {} of {} announced boxes after {} s",
                wanted
                    .iter()
                    .filter(|w| listed.iter().any(|l| l == *w))
                    .count(),
                wanted.len(),
                ANNOUNCE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Read the box's log until it reports its address and a published onion
/// service.
async fn wait_for_box(log: &Path, pid: u32) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + BOX_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let listen = field_after(&text, "bento box listening addr=");
        let onion = text
            .lines()
            .find(|l| l.contains("onion service published"))
            .and_then(|l| field_after(l, "onion="));
        if let (Some(listen), Some(onion)) = (listen, onion) {
            return Ok((listen, onion));
        }
        if !pid_alive(pid) || Instant::now() > deadline {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "a box did not publish its onion service{}; its log ({}):\n{}",
                if pid_alive(pid) {
                    " in time"
                } else {
                    " (it exited)"
                },
                log.display(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn field_after(text: &str, marker: &str) -> Option<String> {
    let start = text.find(marker)? + marker.len();
    let value: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (!value.is_empty()).then_some(value)
}

/// A Bento handshake with the box through the client's SocksPort; retried
/// while the client fetches the new descriptor.
async fn reach_through_tor(onion: &str, socks: std::net::SocketAddr) -> anyhow::Result<()> {
    let target = Target {
        server: onion.to_owned(),
        socks: Some(socks.to_string()),
        dialer: None,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(Duration::from_secs(20), Connection::connect(&target)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if Instant::now() > deadline => {
                bail!("the box {onion} is not reachable through Tor: {e}")
            }
            Err(_) if Instant::now() > deadline => {
                bail!("the box {onion} is not reachable through Tor (timed out)")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Whether a process with this PID exists.
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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
