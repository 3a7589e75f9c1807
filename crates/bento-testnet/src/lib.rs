//! A private Tor network on loopback, for tests and demos: what `bento
//! testnet up|status|down|bench` and the end-to-end Tor tests run on. It is
//! never part of a box; a box talks to the operator's own tor through
//! `bento-tor`, which this crate uses to drive and probe its tors.
//!
//! [`Testnet::up`] generates keys and configuration under a directory, starts
//! 3 directory authorities, middle and exit relays and a client, and returns
//! once the network really carries traffic. Settings follow the measured
//! notes in `shared/TOR-TESTNET.md` (20 s voting interval, Guard flag only on
//! the authorities, exits that accept `*:*` but bind outgoing sockets to
//! 127.0.0.1, empty GeoIP files). Optional relays also host a Bento box
//! (ControlPort + SocksPort). Relays can announce boxes in their
//! ContactInfo ([`NodeState::set_contact_info`]); clients fetch full server
//! descriptors (`FetchUselessDescriptors 1`) so that they see it.
//!
//! Every tor gets `--defaults-torrc <empty file>` (nothing from `/etc/tor`
//! is read), its own `-f` torrc and DataDirectory, ports on 127.0.0.1 only,
//! and `__OwningControllerProcess` (so it exits when the owning process
//! dies). The state, with every PID and port, is written to
//! `<dir>/testnet.json` so another process can [`Testnet::load`] it and stop
//! the network with [`Testnet::down`].
//!
//! [`boxes`] starts Bento boxes (`bento serve` processes) beside the
//! box-host relays and announces them in the relays' ContactInfo.
//!
//! Layout under `dir`: `nodes/<nickname>/` is each tor's DataDirectory with
//! its `torrc` and `notice.log`; `empty` is the empty defaults/GeoIP file;
//! `bandwidth` the authorities' bandwidth file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bento_tor::TorError> {
//! use bento_testnet::{Testnet, TestnetConfig};
//! use bento_tor::{OnionKey, TorControl, socks5_connect};
//! use std::time::Duration;
//!
//! let mut config = TestnetConfig::new("/tmp/bento-testnet/net");
//! config.boxes = 1;
//! let net = Testnet::up(config, &mut |step: &str| eprintln!("{step}")).await?;
//! let host = net.state().box_hosts()[0].clone();
//! let mut control = TorControl::connect(&host.control_addr().to_string()).await?;
//! let target = "127.0.0.2:8080".parse().expect("literal address");
//! let svc = control.add_onion(&OnionKey::New, &[(80, target)], &["DiscardPK"]).await?;
//! control.wait_for_descriptor_upload(&svc.service_id, Duration::from_secs(30)).await?;
//! let _stream = socks5_connect(net.socks_addr(), &svc.onion_address(), 80, None).await?;
//! net.shutdown()?;
//! # Ok(())
//! # }
//! ```

pub mod boxes;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use bento_tor::{TorControl, TorError, socks5_connect};

/// Name of the state file inside the testnet directory.
pub const STATE_FILE: &str = "testnet.json";
/// The network for an embedded Tor client (Arti), written by `up` in the
/// network's directory: `bento --tor embedded --tor-network DIR/arti.toml`.
pub const ARTI_CONFIG_FILE: &str = "arti.toml";
/// Marker file: a directory holding it may be wiped by [`Testnet::up`].
const MARKER_FILE: &str = ".bento-testnet";
/// Voting interval and delays (seconds), as measured in the notes.
const VOTING_INTERVAL: u64 = 20;
const VOTE_DELAY: u64 = 4;
const DIST_DELAY: u64 = 4;
/// Seconds after launch at which the authorities first vote.
const FIRST_VOTE_AFTER: u64 = 6;
/// Authority keys older than this are regenerated (certificates last 12
/// months).
const KEY_CACHE_MAX_AGE: Duration = Duration::from_secs(300 * 24 * 3600);
/// Lines of a notice log quoted in errors.
const LOG_TAIL_LINES: usize = 20;

/// How many relays of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCounts {
    /// Directory authorities (also the only Guards). At least 1; 3 is the
    /// tested shape.
    pub authorities: usize,
    /// Middle relays (non-exit).
    pub middles: usize,
    /// Exit relays (accept `*:*`, connect only from 127.0.0.1).
    pub exits: usize,
}

impl Default for RelayCounts {
    fn default() -> Self {
        RelayCounts {
            authorities: 3,
            middles: 2,
            exits: 2,
        }
    }
}

/// What to build. Start from [`TestnetConfig::new`].
#[derive(Debug, Clone)]
pub struct TestnetConfig {
    /// Where everything lives. Wiped by [`Testnet::up`] (only if empty, or
    /// made by an earlier `up`: it then holds a `.bento-testnet` marker).
    pub dir: PathBuf,
    /// Relay counts (default 3 authorities, 2 middles, 2 exits).
    pub relays: RelayCounts,
    /// Plain client tors with a SocksPort (default 1; at least 1).
    pub clients: usize,
    /// How many relays also get a SocksPort so a Bento box can run beside
    /// them (middles first, then exits); they are marked `box_host` in the
    /// state. Default 0.
    pub boxes: usize,
    /// First port: node `i` gets ORPort `base+i`, DirPort `base+100+i`,
    /// ControlPort `base+200+i`, SocksPort `base+300+i`. `None`: free ports
    /// chosen by the OS.
    pub base_port: Option<u16>,
    /// Where relay keys are cached between runs; `None`: `<dir>/../.bento-testnet-keys`.
    pub key_cache: Option<PathBuf>,
    /// The PID every tor treats as its owner (`__OwningControllerProcess`):
    /// tors exit when it dies. Default: this process.
    pub owner_pid: u32,
    /// How long `up` may take before it gives up (default 120 s).
    pub timeout: Duration,
    /// The tor binary (default: `tor` from PATH, else `/usr/sbin/tor`).
    pub tor_binary: PathBuf,
    /// The tor-gencert binary (default: `tor-gencert` from PATH, else
    /// `/usr/bin/tor-gencert`).
    pub gencert_binary: PathBuf,
}

impl TestnetConfig {
    /// The default shape (3 authorities, 2 middles, 2 exits, 1 client, no
    /// box hosts) under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TestnetConfig {
            dir: dir.into(),
            relays: RelayCounts::default(),
            clients: 1,
            boxes: 0,
            base_port: None,
            key_cache: None,
            owner_pid: std::process::id(),
            timeout: Duration::from_secs(120),
            tor_binary: find_program("tor", "/usr/sbin/tor"),
            gencert_binary: find_program("tor-gencert", "/usr/bin/tor-gencert"),
        }
    }
}

/// What a node does in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Directory authority (also a non-exit relay and Guard).
    Authority,
    /// Middle relay.
    Middle,
    /// Exit relay.
    Exit,
    /// Client with a SocksPort.
    Client,
}

impl NodeRole {
    fn is_relay(self) -> bool {
        self != NodeRole::Client
    }
}

/// One tor process of the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Its role.
    pub role: NodeRole,
    /// Its nickname (`auth0`, `middle1`, `exit0`, `client0`, …).
    pub nickname: String,
    /// Its PID.
    pub pid: u32,
    /// ORPort on 127.0.0.1 (relays).
    pub or_port: Option<u16>,
    /// DirPort on 127.0.0.1 (authorities).
    pub dir_port: Option<u16>,
    /// ControlPort on 127.0.0.1 (cookie authentication).
    pub control_port: u16,
    /// SocksPort on 127.0.0.1 (clients and box hosts).
    pub socks_port: Option<u16>,
    /// Its DataDirectory (holds `torrc` and `notice.log`).
    pub data_dir: PathBuf,
    /// A relay chosen to host a Bento box (it has a SocksPort).
    #[serde(default)]
    pub box_host: bool,
}

impl NodeState {
    /// `127.0.0.1:<control_port>`.
    pub fn control_addr(&self) -> SocketAddr {
        loopback(self.control_port)
    }

    /// `127.0.0.1:<socks_port>`, if it has one.
    pub fn socks_addr(&self) -> Option<SocketAddr> {
        self.socks_port.map(loopback)
    }

    /// Path of its notice log.
    pub fn notice_log(&self) -> PathBuf {
        self.data_dir.join("notice.log")
    }

    /// Replaces the relay's ContactInfo (through its ControlPort, for the
    /// running tor only). tor then publishes a new descriptor; clients see
    /// it after the next consensus lists it (a voting interval or two).
    /// This is how the test network's relays announce Bento boxes
    /// (`bento:ONION.onion:PORT`, see `bento_tor::discovery`).
    pub async fn set_contact_info(&self, contact: &str) -> Result<(), TorError> {
        if !self.role.is_relay() {
            return Err(TorError::Invalid {
                what: "ContactInfo".into(),
                detail: format!("{} is a client, not a relay", self.nickname),
            });
        }
        let mut control = TorControl::connect(&self.control_addr().to_string()).await?;
        control.setconf("ContactInfo", contact).await
    }
}

/// The ContactInfo every relay of the network starts with.
pub fn default_contact_info(nickname: &str) -> String {
    format!("{nickname}@test.invalid")
}

/// A Bento box process recorded by the caller (see [`TestnetState::save`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxEntry {
    /// The box's onion address with port, `"xyz.onion:PORT"`.
    pub onion: String,
    /// Its local listener, `"127.0.0.1:PORT"`.
    pub listen: String,
    /// Its PID ([`Testnet::down`] stops it if its command line contains
    /// `serve` and the testnet directory).
    pub pid: u32,
    /// Its data directory.
    pub data_dir: PathBuf,
}

/// Everything another process needs to find and stop a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestnetState {
    /// The testnet directory (absolute).
    pub dir: PathBuf,
    /// Every tor process.
    pub nodes: Vec<NodeState>,
    /// Bento boxes, filled in by the caller.
    #[serde(default)]
    pub boxes: Vec<BoxEntry>,
    /// When the network was started (unix seconds).
    pub started_unix: u64,
}

impl TestnetState {
    /// Writes the state to `<dir>/testnet.json` (atomically: temp file +
    /// rename).
    pub fn save(&self, dir: &Path) -> Result<(), TorError> {
        let path = dir.join(STATE_FILE);
        let state_err = |detail: String| TorError::State {
            path: path.clone(),
            detail,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| state_err(e.to_string()))?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, json).map_err(|e| state_err(format!("writing: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| state_err(format!("renaming: {e}")))
    }

    /// The first client's SocksPort.
    pub fn client_socks(&self) -> Option<SocketAddr> {
        self.nodes
            .iter()
            .find(|n| n.role == NodeRole::Client)
            .and_then(NodeState::socks_addr)
    }

    /// The relays marked to host a Bento box.
    pub fn box_hosts(&self) -> Vec<&NodeState> {
        self.nodes.iter().filter(|n| n.box_host).collect()
    }

    /// The node with this nickname.
    pub fn node(&self, nickname: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.nickname == nickname)
    }
}

/// A running network. Dropping it stops its tors (use
/// [`Testnet::into_state`] to leave them running).
#[derive(Debug)]
pub struct Testnet {
    state: TestnetState,
    children: Vec<Child>,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            stop_children(&mut self.children);
            let _ = std::fs::remove_file(self.state.dir.join(STATE_FILE));
        }
    }
}

/// A node being prepared.
struct Plan {
    role: NodeRole,
    nickname: String,
    or_port: Option<u16>,
    dir_port: Option<u16>,
    control_port: u16,
    socks_port: Option<u16>,
    box_host: bool,
    data_dir: PathBuf,
    fingerprint: String,
    v3ident: Option<String>,
}

impl Testnet {
    /// Builds the network from scratch under `config.dir` and returns once it
    /// is usable: an authority serves the consensus, every tor reports
    /// bootstrap 100 %, and a SOCKS5 connection through the client (and
    /// through every box host) to an echo server on 127.0.0.2 works. Calls
    /// `progress` with human-readable steps. On failure everything started
    /// is stopped and the error quotes the log of the tor that was not
    /// ready.
    pub async fn up(
        config: TestnetConfig,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Testnet, TorError> {
        let started = Instant::now();
        let deadline = started + config.timeout;
        validate(&config)?;
        let dir = prepare_dir(&config.dir)?;
        let cache = match &config.key_cache {
            Some(c) => c.clone(),
            None => dir
                .parent()
                .map(|p| p.join(".bento-testnet-keys"))
                .unwrap_or_else(|| dir.join(".keys")),
        };
        let empty = dir.join("empty");
        write_file(&empty, b"")?;

        progress("allocating ports");
        let mut plans = plan_nodes(&config, &dir).await?;

        progress("generating keys");
        let t = Instant::now();
        let cached = prepare_keys(&config, &cache, &empty, &mut plans).await?;
        progress(&format!(
            "keys ready in {:.1} s ({} of {} relays from the cache)",
            t.elapsed().as_secs_f64(),
            cached,
            plans.iter().filter(|p| p.role.is_relay()).count()
        ));

        let mut net = Testnet {
            state: TestnetState {
                dir: dir.clone(),
                nodes: Vec::new(),
                boxes: Vec::new(),
                started_unix: unix_now(),
            },
            children: Vec::new(),
        };
        // From here on, `net` stops what was started if we return early.
        write_configs(&config, &dir, &empty, &plans)?;

        progress("starting relays");
        let launch = unix_now();
        for p in plans.iter().filter(|p| p.role.is_relay()) {
            net.spawn(&config, p)?;
        }
        net.state.save(&dir)?;

        let first_consensus = first_valid_after(launch) + 1;
        progress(&format!(
            "waiting for the first consensus ({} s)",
            first_consensus.saturating_sub(unix_now())
        ));
        let auth = plans
            .iter()
            .find(|p| p.role == NodeRole::Authority)
            .and_then(|p| p.dir_port.map(|d| (p.nickname.clone(), d)))
            .ok_or_else(|| TorError::Invalid {
                what: "relays".into(),
                detail: "no authority".into(),
            })?;
        net.wait_for_consensus(&auth.0, auth.1, deadline).await?;
        // Relays asked for the consensus before it existed and are backing
        // off (up to ~20 s); RELOAD resets their download schedules.
        net.reload_relays().await;
        progress(&format!(
            "consensus published after {:.1} s; starting clients",
            started.elapsed().as_secs_f64()
        ));
        for p in plans.iter().filter(|p| p.role == NodeRole::Client) {
            net.spawn(&config, p)?;
        }
        net.state.save(&dir)?;

        net.wait_for_bootstrap(deadline, progress).await?;
        progress("probing SOCKS through the client and box hosts");
        net.probe_socks(deadline).await?;
        write_file(
            &dir.join(ARTI_CONFIG_FILE),
            arti_config(&net.state)?.as_bytes(),
        )?;
        progress(&format!(
            "network ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(net)
    }

    /// The state (also in `<dir>/testnet.json`).
    pub fn state(&self) -> &TestnetState {
        &self.state
    }

    /// The state, for recording boxes; call [`TestnetState::save`] after.
    pub fn state_mut(&mut self) -> &mut TestnetState {
        &mut self.state
    }

    /// The first client's SocksPort.
    pub fn socks_addr(&self) -> SocketAddr {
        // `up` always starts at least one client.
        self.state.client_socks().unwrap_or_else(|| loopback(9))
    }

    /// Reads `<dir>/testnet.json`.
    pub fn load(dir: &Path) -> Result<TestnetState, TorError> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|e| TorError::State {
            path: path.clone(),
            detail: format!("reading: {e}"),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| TorError::State {
            path,
            detail: format!("parsing: {e}"),
        })
    }

    /// Stops exactly the processes in `state` — boxes first (only PIDs whose
    /// command line contains `serve` and the directory), then tors (only
    /// PIDs whose command line contains the directory): SIGTERM, wait until
    /// gone, SIGKILL after 5 s. Removes the state file.
    pub fn down(state: &TestnetState) -> Result<(), TorError> {
        let dir = state.dir.to_string_lossy().into_owned();
        let boxes: Vec<u32> = state
            .boxes
            .iter()
            .map(|b| b.pid)
            .filter(|&pid| cmdline_matches(pid, &["serve", &dir]))
            .collect();
        stop_pids(&boxes, &[&dir]);
        let tors: Vec<u32> = state
            .nodes
            .iter()
            .map(|n| n.pid)
            .filter(|&pid| cmdline_matches(pid, &[&dir]))
            .collect();
        stop_pids(&tors, &[&dir]);
        let path = state.dir.join(STATE_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TorError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Stops this network (its boxes too) and reaps its processes.
    pub fn shutdown(mut self) -> Result<(), TorError> {
        let result = Testnet::down(&self.state);
        stop_children(&mut self.children);
        self.children.clear();
        result
    }

    /// Leaves the tors running (they still exit when the owner process
    /// dies) and returns the state; stop them later with [`Testnet::down`].
    pub fn into_state(mut self) -> TestnetState {
        self.children.clear();
        self.state.clone()
    }

    fn spawn(&mut self, config: &TestnetConfig, p: &Plan) -> Result<(), TorError> {
        let torrc = p.data_dir.join("torrc");
        let child = std::process::Command::new(&config.tor_binary)
            .arg("--defaults-torrc")
            .arg(self.state.dir.join("empty"))
            .arg("-f")
            .arg(&torrc)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                TorError::io(
                    format!(
                        "starting {} for {}",
                        config.tor_binary.display(),
                        p.nickname
                    ),
                    e,
                )
            })?;
        self.state.nodes.push(NodeState {
            role: p.role,
            nickname: p.nickname.clone(),
            pid: child.id(),
            or_port: p.or_port,
            dir_port: p.dir_port,
            control_port: p.control_port,
            socks_port: p.socks_port,
            data_dir: p.data_dir.clone(),
            box_host: p.box_host,
        });
        self.children.push(child);
        Ok(())
    }

    /// Fails with the log tail of any tor that has exited.
    fn check_alive(&mut self) -> Result<(), TorError> {
        for (child, node) in self.children.iter_mut().zip(&self.state.nodes) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(not_ready(node, format!("tor exited ({status})")));
            }
        }
        Ok(())
    }

    async fn wait_for_consensus(
        &mut self,
        nickname: &str,
        dir_port: u16,
        deadline: Instant,
    ) -> Result<(), TorError> {
        loop {
            self.check_alive()?;
            if fetch_status(dir_port, "/tor/status-vote/current/consensus").await == Some(200)
                && fetch_status(dir_port, "/tor/status-vote/current/consensus-microdesc").await
                    == Some(200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let node = self.state.node(nickname).cloned();
                return Err(match node {
                    Some(n) => not_ready(&n, "no consensus served by its DirPort".into()),
                    None => TorError::Timeout {
                        what: "the first consensus".into(),
                        secs: 0.0,
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `SIGNAL RELOAD` to every non-authority relay (best effort: a relay
    /// that misses it only bootstraps later).
    async fn reload_relays(&mut self) {
        for node in &self.state.nodes {
            if !matches!(node.role, NodeRole::Middle | NodeRole::Exit) {
                continue;
            }
            let addr = node.control_addr().to_string();
            let result = async {
                let mut c = TorControl::connect(&addr).await?;
                c.signal("RELOAD").await
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(node = %node.nickname, error = %e, "RELOAD failed");
            }
        }
    }

    async fn wait_for_bootstrap(
        &mut self,
        deadline: Instant,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), TorError> {
        let n = self.state.nodes.len();
        let mut controls: Vec<Option<TorControl>> = (0..n).map(|_| None).collect();
        let mut done = vec![false; n];
        let mut last_reported = usize::MAX;
        let mut last_error: Vec<String> = vec!["no answer yet".into(); n];
        loop {
            self.check_alive()?;
            for i in 0..n {
                if done[i] {
                    continue;
                }
                let node = &self.state.nodes[i];
                if controls[i].is_none() {
                    match TorControl::connect(&node.control_addr().to_string()).await {
                        Ok(c) => controls[i] = Some(c),
                        Err(e) => {
                            last_error[i] = e.to_string();
                            continue;
                        }
                    }
                }
                if let Some(c) = controls[i].as_mut() {
                    match c.bootstrap_progress().await {
                        Ok(100) => done[i] = true,
                        Ok(p) => last_error[i] = format!("bootstrap at {p} %"),
                        Err(e) => {
                            last_error[i] = e.to_string();
                            controls[i] = None;
                        }
                    }
                }
            }
            let ready = done.iter().filter(|d| **d).count();
            if ready == n {
                return Ok(());
            }
            if ready != last_reported {
                last_reported = ready;
                let pending: Vec<&str> = self
                    .state
                    .nodes
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| !**d)
                    .map(|(node, _)| node.nickname.as_str())
                    .collect();
                progress(&format!(
                    "waiting for bootstrap: {ready}/{n} tors at 100 % (waiting for {})",
                    pending.join(", ")
                ));
            }
            if Instant::now() > deadline {
                let i = done.iter().position(|d| !d).unwrap_or(0);
                return Err(not_ready(
                    &self.state.nodes[i],
                    format!("not bootstrapped in time: {}", last_error[i]),
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn probe_socks(&mut self, deadline: Instant) -> Result<(), TorError> {
        let (echo_addr, echo_task) = echo_server().await?;
        let mut result = Ok(());
        let probes: Vec<NodeState> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.socks_port.is_some())
            .cloned()
            .collect();
        for node in probes {
            if let Err(e) = probe_one(&node, echo_addr, deadline).await {
                result = Err(not_ready(&node, format!("SOCKS probe failed: {e}")));
                break;
            }
        }
        echo_task.abort();
        result
    }
}

async fn probe_one(node: &NodeState, echo: SocketAddr, deadline: Instant) -> Result<(), TorError> {
    let Some(proxy) = node.socks_addr() else {
        return Ok(());
    };
    let mut last = None;
    while Instant::now() < deadline {
        let attempt = async {
            let mut s = socks5_connect(proxy, &echo.ip().to_string(), echo.port(), None).await?;
            s.write_all(b"bento-probe")
                .await
                .map_err(|e| TorError::io("probe write", e))?;
            let mut buf = [0u8; 11];
            s.read_exact(&mut buf)
                .await
                .map_err(|e| TorError::io("probe read", e))?;
            if &buf == b"bento-probe" {
                Ok(())
            } else {
                Err(TorError::Invalid {
                    what: "probe echo".into(),
                    detail: "wrong bytes came back".into(),
                })
            }
        };
        match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(TorError::Timeout {
                    what: "SOCKS probe".into(),
                    secs: 15.0,
                })
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last.unwrap_or(TorError::Timeout {
        what: "SOCKS probe".into(),
        secs: 0.0,
    }))
}

/// A TCP echo server on 127.0.0.2 (not 127.0.0.1: exit enclave pitfall).
async fn echo_server() -> Result<(SocketAddr, tokio::task::JoinHandle<()>), TorError> {
    let listener = TcpListener::bind("127.0.0.2:0")
        .await
        .map_err(|e| TorError::io("binding the probe echo server on 127.0.0.2", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| TorError::io("probe echo server address", e))?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok((addr, task))
}

/// HTTP status of `GET path` from 127.0.0.1:port, or None.
async fn fetch_status(port: u16, path: &str) -> Option<u16> {
    let attempt = async {
        let mut s = TcpStream::connect(loopback(port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
}

fn validate(config: &TestnetConfig) -> Result<(), TorError> {
    let bad = |what: &str, detail: &str| {
        Err(TorError::Invalid {
            what: what.into(),
            detail: detail.into(),
        })
    };
    if config.relays.authorities == 0 {
        return bad("relays.authorities", "at least one authority is needed");
    }
    if config.relays.exits == 0 {
        return bad("relays.exits", "at least one exit is needed");
    }
    if config.clients == 0 {
        return bad("clients", "at least one client is needed");
    }
    if config.boxes > config.relays.middles + config.relays.exits {
        return bad(
            "boxes",
            "more boxes than middle and exit relays to host them",
        );
    }
    let nodes =
        config.relays.authorities + config.relays.middles + config.relays.exits + config.clients;
    if nodes > 100 {
        return bad("node count", "at most 100 tors");
    }
    if let Some(b) = config.base_port
        && (b < 1024 || u32::from(b) + 400 > 65535)
    {
        return bad("base_port", "must be in 1024..=65135");
    }
    Ok(())
}

/// Stops an earlier network in `dir`, wipes it (only if it is ours or
/// empty) and recreates it; returns its absolute path.
fn prepare_dir(dir: &Path) -> Result<PathBuf, TorError> {
    if dir.exists() {
        if dir.join(STATE_FILE).exists()
            && let Ok(old) = Testnet::load(dir)
        {
            Testnet::down(&old)?;
        }
        let empty = std::fs::read_dir(dir)
            .map_err(|e| TorError::io(format!("reading {}", dir.display()), e))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER_FILE).exists() {
            return Err(TorError::Invalid {
                what: "testnet dir".into(),
                detail: format!(
                    "{} is not empty and was not made by a testnet (no {MARKER_FILE}); refusing to wipe it",
                    dir.display()
                ),
            });
        }
        std::fs::remove_dir_all(dir)
            .map_err(|e| TorError::io(format!("wiping {}", dir.display()), e))?;
    }
    create_private_dir(dir)?;
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| TorError::io(format!("resolving {}", dir.display()), e))?;
    write_file(
        &dir.join(MARKER_FILE),
        b"made by bento-tor testnet; may be wiped\n",
    )?;
    Ok(dir)
}

async fn plan_nodes(config: &TestnetConfig, dir: &Path) -> Result<Vec<Plan>, TorError> {
    let mut kinds = Vec::new();
    for i in 0..config.relays.authorities {
        kinds.push((NodeRole::Authority, format!("auth{i}")));
    }
    for i in 0..config.relays.middles {
        kinds.push((NodeRole::Middle, format!("middle{i}")));
    }
    for i in 0..config.relays.exits {
        kinds.push((NodeRole::Exit, format!("exit{i}")));
    }
    for i in 0..config.clients {
        kinds.push((NodeRole::Client, format!("client{i}")));
    }
    // Middles first, then exits, host boxes.
    let mut box_left = config.boxes;
    let mut box_host = vec![false; kinds.len()];
    for role in [NodeRole::Middle, NodeRole::Exit] {
        for (i, (r, _)) in kinds.iter().enumerate() {
            if *r == role && box_left > 0 {
                box_host[i] = true;
                box_left -= 1;
            }
        }
    }
    let mut free = FreePorts::default();
    let mut plans = Vec::new();
    for (i, (role, nickname)) in kinds.into_iter().enumerate() {
        let port = |free: &mut FreePorts, offset: u16| -> Result<u16, TorError> {
            match config.base_port {
                Some(b) => Ok(b + offset + i as u16),
                None => free.take(),
            }
        };
        let or_port = if role.is_relay() {
            Some(port(&mut free, 0)?)
        } else {
            None
        };
        let dir_port = if role == NodeRole::Authority {
            Some(port(&mut free, 100)?)
        } else {
            None
        };
        let control_port = port(&mut free, 200)?;
        let socks_port = if role == NodeRole::Client || box_host[i] {
            Some(port(&mut free, 300)?)
        } else {
            None
        };
        let data_dir = dir.join("nodes").join(&nickname);
        create_private_dir(&data_dir)?;
        plans.push(Plan {
            role,
            nickname,
            or_port,
            dir_port,
            control_port,
            socks_port,
            box_host: box_host[i],
            data_dir,
            fingerprint: String::new(),
            v3ident: None,
        });
    }
    drop(free);
    Ok(plans)
}

/// Free ports: listeners are held until all ports are chosen, so no port is
/// handed out twice.
#[derive(Default)]
struct FreePorts {
    held: Vec<std::net::TcpListener>,
}

impl FreePorts {
    fn take(&mut self) -> Result<u16, TorError> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| TorError::io("finding a free port on 127.0.0.1", e))?;
        let port = l
            .local_addr()
            .map_err(|e| TorError::io("finding a free port on 127.0.0.1", e))?
            .port();
        self.held.push(l);
        Ok(port)
    }
}

/// Fills in fingerprints (and v3idents), from the cache where possible.
/// Returns how many relays came from the cache.
async fn prepare_keys(
    config: &TestnetConfig,
    cache: &Path,
    empty: &Path,
    plans: &mut [Plan],
) -> Result<usize, TorError> {
    let mut jobs = Vec::new();
    for (idx, p) in plans.iter().enumerate() {
        if !p.role.is_relay() {
            continue;
        }
        let cache_dir = cache.join(&p.nickname);
        let keys = p.data_dir.join("keys");
        let is_auth = p.role == NodeRole::Authority;
        let nickname = p.nickname.clone();
        let data_dir = p.data_dir.clone();
        let dir_port = p.dir_port.unwrap_or(0);
        let tor = config.tor_binary.clone();
        let gencert = config.gencert_binary.clone();
        let empty = empty.to_path_buf();
        jobs.push(tokio::spawn(async move {
            let from_cache = restore_cached_keys(&cache_dir, &keys, is_auth);
            if !from_cache {
                let _ = std::fs::remove_dir_all(&keys);
                create_private_dir(&keys)?;
                if is_auth {
                    run_gencert(&gencert, &keys, dir_port).await?;
                }
            }
            let fingerprint = list_fingerprint(&tor, &empty, &data_dir, &nickname).await?;
            let v3ident = if is_auth {
                Some(cert_fingerprint(&keys.join("authority_certificate"))?)
            } else {
                None
            };
            if !from_cache {
                save_cached_keys(&keys, &cache_dir);
            }
            Ok::<_, TorError>((idx, fingerprint, v3ident, from_cache))
        }));
    }
    let mut cached = 0;
    for job in jobs {
        let (idx, fp, v3, from_cache) = job.await.map_err(|e| TorError::Program {
            program: "key generation".into(),
            detail: e.to_string(),
        })??;
        if let Some(p) = plans.get_mut(idx) {
            p.fingerprint = fp;
            p.v3ident = v3;
        }
        cached += usize::from(from_cache);
    }
    Ok(cached)
}

/// The key files tor keeps for a relay identity (onion keys are
/// regenerated by tor when missing).
const RELAY_KEYS: &[&str] = &[
    "secret_id_key",
    "ed25519_master_id_public_key",
    "ed25519_master_id_secret_key",
];
const AUTHORITY_KEYS: &[&str] = &[
    "authority_identity_key",
    "authority_signing_key",
    "authority_certificate",
];

/// Copies cached keys into `keys` if the cache is complete, fresh and
/// parses; returns whether it did.
fn restore_cached_keys(cache_dir: &Path, keys: &Path, is_auth: bool) -> bool {
    let created = std::fs::read_to_string(cache_dir.join("created"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let Some(created) = created else {
        return false;
    };
    if unix_now().saturating_sub(created) > KEY_CACHE_MAX_AGE.as_secs() {
        return false;
    }
    let mut names: Vec<&str> = RELAY_KEYS.to_vec();
    if is_auth {
        names.extend_from_slice(AUTHORITY_KEYS);
        if cert_fingerprint(&cache_dir.join("authority_certificate")).is_err() {
            return false;
        }
    }
    let complete = names.iter().all(|n| {
        std::fs::metadata(cache_dir.join(n))
            .map(|m| m.is_file() && m.len() > 0)
            .unwrap_or(false)
    });
    if !complete || create_private_dir(keys).is_err() {
        return false;
    }
    names
        .iter()
        .all(|n| std::fs::copy(cache_dir.join(n), keys.join(n)).is_ok())
}

/// Best effort: a failed cache write only costs time next run.
fn save_cached_keys(keys: &Path, cache_dir: &Path) {
    let _ = std::fs::remove_dir_all(cache_dir);
    if create_private_dir(cache_dir).is_err() {
        return;
    }
    for n in RELAY_KEYS.iter().chain(AUTHORITY_KEYS) {
        let src = keys.join(n);
        if src.exists() && std::fs::copy(&src, cache_dir.join(n)).is_err() {
            return;
        }
    }
    let _ = std::fs::write(cache_dir.join("created"), unix_now().to_string());
}

async fn run_gencert(gencert: &Path, keys: &Path, dir_port: u16) -> Result<(), TorError> {
    let mut child = tokio::process::Command::new(gencert)
        .arg("--create-identity-key")
        .args(["-m", "12", "-a", &format!("127.0.0.1:{dir_port}")])
        .arg("-i")
        .arg(keys.join("authority_identity_key"))
        .arg("-s")
        .arg(keys.join("authority_signing_key"))
        .arg("-c")
        .arg(keys.join("authority_certificate"))
        .args(["--passphrase-fd", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TorError::io(format!("starting {}", gencert.display()), e))?;
    // Empty passphrase: close stdin at once.
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| TorError::io(format!("running {}", gencert.display()), e))?;
    if !out.status.success() {
        return Err(TorError::Program {
            program: gencert.display().to_string(),
            detail: format!(
                "{}: {}",
                out.status,
                tail_str(&String::from_utf8_lossy(&out.stderr), 5)
            ),
        });
    }
    Ok(())
}

async fn list_fingerprint(
    tor: &Path,
    empty: &Path,
    data_dir: &Path,
    nickname: &str,
) -> Result<String, TorError> {
    let out = tokio::process::Command::new(tor)
        .arg("--defaults-torrc")
        .arg(empty)
        .arg("-f")
        .arg(empty)
        .arg("--list-fingerprint")
        .arg("--DataDirectory")
        .arg(data_dir)
        .args(["--ORPort", "1", "--Nickname", nickname])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| TorError::io(format!("running {} --list-fingerprint", tor.display()), e))?;
    let program = format!("{} --list-fingerprint for {nickname}", tor.display());
    if !out.status.success() {
        return Err(TorError::Program {
            program,
            detail: format!(
                "{}: {}",
                out.status,
                tail_str(&String::from_utf8_lossy(&out.stdout), 5)
            ),
        });
    }
    let file = std::fs::read_to_string(data_dir.join("fingerprint"))
        .map_err(|e| TorError::io(format!("reading {}/fingerprint", data_dir.display()), e))?;
    let fp = file.split_whitespace().nth(1).unwrap_or("").to_string();
    if fp.len() != 40 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TorError::Program {
            program,
            detail: format!("unexpected fingerprint file {file:?}"),
        });
    }
    Ok(fp)
}

/// An Arti configuration fragment for the network in `state` (the format
/// `bento_arti::PrivateNetwork` reads): the authorities' v3 identities, the
/// authorities as fallback caches (RSA and ed25519 identities, ORPort), and
/// path rules that do not treat relays on one address as one family. Read
/// from the running relays' data directories.
pub fn arti_config(state: &TestnetState) -> Result<String, TorError> {
    let mut v3idents = Vec::new();
    let mut fallbacks = Vec::new();
    for node in state.nodes.iter().filter(|n| n.role == NodeRole::Authority) {
        let keys = node.data_dir.join("keys");
        v3idents.push(format!(
            "\"{}\"",
            cert_fingerprint(&keys.join("authority_certificate"))?
        ));
        let rsa = second_word(&node.data_dir.join("fingerprint"))?;
        let ed = second_word(&node.data_dir.join("fingerprint-ed25519"))?;
        let or_port = node.or_port.ok_or_else(|| TorError::Invalid {
            what: "authority".into(),
            detail: format!("{} has no ORPort", node.nickname),
        })?;
        fallbacks.push(format!(
            "  {{ rsa_identity = \"{rsa}\", ed_identity = \"{ed}\", orports = [\"127.0.0.1:{or_port}\"] }},  # {}",
            node.nickname
        ));
    }
    Ok(format!(
        "# Arti configuration for the private Tor network in {dir} (written by\n\
         # `bento testnet up`): bento --tor embedded --tor-network {dir}/{ARTI_CONFIG_FILE} …\n\
         [tor_network]\n\
         authorities = {{ v3idents = [{v3idents}] }}\n\
         fallback_caches = [\n{fallbacks}\n]\n\n\
         # Every relay is on 127.0.0.1: by default Arti would see them all as one\n\
         # family (same /16) and find no path.\n\
         [path_rules]\n\
         ipv4_subnet_family_prefix = 33\n\
         ipv6_subnet_family_prefix = 129\n\n\
         # C tor in a TestingTorNetwork makes the onion-service time period one\n\
         # shared-random run (24 votes) instead of the consensus's hsdir_interval;\n\
         # Arti reads hsdir_interval, so it is set to match (else: HSDirs 404).\n\
         [override_net_params]\n\
         hsdir_interval = {hsdir_interval}\n",
        hsdir_interval = 24 * VOTING_INTERVAL / 60,
        dir = state.dir.display(),
        v3idents = v3idents.join(", "),
        fallbacks = fallbacks.join("\n"),
    ))
}

/// The second word of a tor `fingerprint`/`fingerprint-ed25519` file
/// (`NICKNAME IDENTITY`).
fn second_word(path: &Path) -> Result<String, TorError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TorError::io(format!("reading {}", path.display()), e))?;
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| TorError::Invalid {
            what: "fingerprint file".into(),
            detail: format!("{} is not `NICKNAME IDENTITY`", path.display()),
        })
}

/// The `fingerprint` line of an authority certificate.
fn cert_fingerprint(path: &Path) -> Result<String, TorError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TorError::io(format!("reading {}", path.display()), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .map(|f| f.trim().to_string())
        .filter(|f| f.len() == 40 && f.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| TorError::Invalid {
            what: "authority certificate".into(),
            detail: format!("{} has no valid fingerprint line", path.display()),
        })
}

/// Unix time of the first consensus' valid-after for a launch at `launch`.
fn first_valid_after(launch: u64) -> u64 {
    launch + FIRST_VOTE_AFTER + VOTE_DELAY + DIST_DELAY
}

/// `TestingV3AuthVotingStartOffset` putting the first vote
/// `FIRST_VOTE_AFTER` s after `launch` (valid-after times are
/// midnight + offset + k × interval; votes go out VoteDelay + DistDelay
/// before).
fn voting_start_offset(launch: u64) -> u64 {
    first_valid_after(launch) % VOTING_INTERVAL
}

fn write_configs(
    config: &TestnetConfig,
    dir: &Path,
    empty: &Path,
    plans: &[Plan],
) -> Result<(), TorError> {
    let authorities: Vec<&Plan> = plans
        .iter()
        .filter(|p| p.role == NodeRole::Authority)
        .collect();
    let exits: Vec<&str> = plans
        .iter()
        .filter(|p| p.role == NodeRole::Exit)
        .map(|p| p.fingerprint.as_str())
        .collect();
    let guards: Vec<&str> = authorities.iter().map(|p| p.fingerprint.as_str()).collect();
    let bw_file = dir.join("bandwidth");
    let mut bw = format!("{}\n", unix_now());
    for p in plans.iter().filter(|p| p.role.is_relay()) {
        bw.push_str(&format!("node_id=${} bw=1000\n", p.fingerprint));
    }
    write_file(&bw_file, bw.as_bytes())?;
    // Computed now: the relays start right after.
    let offset = voting_start_offset(unix_now());

    let mut dir_lines = String::new();
    for a in &authorities {
        dir_lines.push_str(&format!(
            "DirAuthority {} orport={} no-v2 v3ident={} 127.0.0.1:{} {}\n",
            a.nickname,
            a.or_port.unwrap_or(0),
            a.v3ident.as_deref().unwrap_or(""),
            a.dir_port.unwrap_or(0),
            a.fingerprint
        ));
    }
    for p in plans {
        let d = p.data_dir.display();
        let mut t = String::new();
        t.push_str("TestingTorNetwork 1\n");
        t.push_str(&dir_lines);
        // Fixed circuit-build timeouts on every tor, not only the client:
        // relays build the circuits of their boxes' onion services, and on
        // two busy cores tor's learned timeouts become short enough that
        // it abandons circuits that would have worked.
        // No vanguards-lite: among seven relays a tor's few second-hop
        // vanguards can all be excluded from a circuit (by its guard, its
        // last hop, itself), and then every rendezvous circuit to that
        // relay fails ("Could not find a node that matches the configured
        // _HSLayer2Nodes set"); clients wait for their SOCKS timeout. It
        // guards against attacks that need a large network anyway.
        t.push_str(&format!(
            "DataDirectory {d}\nNickname {}\nRunAsDaemon 0\nLog notice file {d}/notice.log\n\
             SafeLogging 0\nLogTimeGranularity 1\nShutdownWaitLength 0\n\
             ControlPort 127.0.0.1:{}\nCookieAuthentication 1\nPathsNeededToBuildCircuits 0.67\n\
             LearnCircuitBuildTimeout 0\nVanguardsLiteEnabled 0\n\
             GeoIPFile {e}\nGeoIPv6File {e}\n__OwningControllerProcess {}\n",
            p.nickname,
            p.control_port,
            config.owner_pid,
            e = empty.display()
        ));
        if p.role.is_relay() {
            t.push_str(&format!(
                "Address 127.0.0.1\nORPort 127.0.0.1:{}\nContactInfo {}\n\
                 AssumeReachable 1\nServerDNSResolvConfFile /dev/null\n\
                 ServerDNSDetectHijacking 0\nServerDNSTestAddresses\n",
                p.or_port.unwrap_or(0),
                default_contact_info(&p.nickname)
            ));
            match p.socks_port {
                Some(s) => t.push_str(&format!("SocksPort 127.0.0.1:{s}\n")),
                None => t.push_str("SocksPort 0\n"),
            }
        }
        match p.role {
            // Every relay is voted Stable: otherwise the flag goes by
            // uptime relative to the others, flaps from vote to vote, and
            // an onion service, which wants Stable introduction points,
            // finds too few ("No available nodes when trying to choose
            // node").
            NodeRole::Authority => t.push_str(&format!(
                "DirPort 127.0.0.1:{}\nAuthoritativeDirectory 1\nV3AuthoritativeDirectory 1\n\
                 TestingV3AuthInitialVotingInterval {vi}\nTestingV3AuthInitialVoteDelay {vd}\n\
                 TestingV3AuthInitialDistDelay {dd}\nV3AuthVotingInterval {vi}\n\
                 V3AuthVoteDelay {vd}\nV3AuthDistDelay {dd}\nV3AuthNIntervalsValid 2\n\
                 TestingV3AuthVotingStartOffset {offset}\nTestingDirAuthVoteExit {}\n\
                 TestingDirAuthVoteHSDir *\nTestingMinExitFlagThreshold 0\n\
                 TestingDirAuthVoteGuard {}\nTestingDirAuthVoteGuardIsStrict 1\n\
                 AuthDirVoteStableGuaranteeMinUptime 0\n\
                 V3BandwidthsFile {}\nExitRelay 0\nExitPolicy reject *:*\n",
                p.dir_port.unwrap_or(0),
                exits.join(","),
                guards.join(","),
                bw_file.display(),
                vi = VOTING_INTERVAL,
                vd = VOTE_DELAY,
                dd = DIST_DELAY,
            )),
            NodeRole::Middle => t.push_str("ExitRelay 0\nExitPolicy reject *:*\n"),
            NodeRole::Exit => t.push_str(
                "ExitRelay 1\nExitPolicyRejectPrivate 0\nExitPolicyRejectLocalInterfaces 0\n\
                 ExitPolicy accept 127.0.0.0/8:*\nExitPolicy accept *:*\nExitPolicy reject *:*\n\
                 OutboundBindAddressExit 127.0.0.1\nRefuseUnknownExits 0\n",
            ),
            // Full server descriptors besides microdescriptors: they carry
            // the relays' ContactInfo, where boxes are announced
            // (`bento boxes` reads them through the ControlPort).
            NodeRole::Client => t.push_str(&format!(
                "SocksPort 127.0.0.1:{}\nFetchUselessDescriptors 1\n",
                p.socks_port.unwrap_or(0)
            )),
        }
        write_file(&p.data_dir.join("torrc"), t.as_bytes())?;
    }
    Ok(())
}

fn not_ready(node: &NodeState, detail: String) -> TorError {
    let log = node.notice_log();
    let log_tail = std::fs::read_to_string(&log)
        .map(|s| tail_str(&s, LOG_TAIL_LINES))
        .unwrap_or_else(|e| format!("(cannot read: {e})"));
    TorError::NodeNotReady {
        node: node.nickname.clone(),
        detail,
        log,
        log_tail,
    }
}

fn tail_str(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn find_program(name: &str, fallback: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(fallback)
}

fn create_private_dir(path: &Path) -> Result<(), TorError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| TorError::io(format!("creating {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| TorError::io(format!("chmod 700 {}", path.display()), e))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TorError> {
    let mut f = std::fs::File::create(path)
        .map_err(|e| TorError::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| TorError::io(format!("writing {}", path.display()), e))
}

/// Whether PID is alive (not a zombie) and its command line contains every
/// needle.
fn cmdline_matches(pid: u32, needles: &[&str]) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            needles.iter().all(|n| cmd.contains(n))
        }
        Err(_) => false,
    }
}

/// Still one of the processes being stopped: its command line matches, or
/// it is alive with an empty command line. An exiting process releases its
/// memory (and so its command line) before it becomes a zombie, so "the
/// command line no longer matches" alone would call it gone while it still
/// runs; a recycled PID has another, non-empty command line.
fn still_ours(pid: u32, needles: &[&str]) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) if raw.is_empty() => true,
        Ok(raw) => {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            needles.iter().all(|n| cmd.contains(n))
        }
        Err(_) => false,
    }
}

/// Alive and not a zombie.
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // State is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    if let Some(p) = rustix::process::Pid::from_raw(raw) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// SIGTERM, wait up to 5 s, SIGKILL, wait up to 2 s. Before each signal the
/// command line is re-checked, so a recycled PID is never signalled.
fn stop_pids(pids: &[u32], needles: &[&str]) {
    for &pid in pids {
        if cmdline_matches(pid, needles) {
            signal(pid, rustix::process::Signal::TERM);
        }
    }
    let gone = |pids: &[u32]| pids.iter().all(|&p| !still_ours(p, needles));
    let wait = |limit: Duration| {
        let start = Instant::now();
        while start.elapsed() < limit {
            if gone(pids) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        gone(pids)
    };
    if wait(Duration::from_secs(5)) {
        return;
    }
    for &pid in pids {
        if cmdline_matches(pid, needles) {
            tracing::warn!(pid, "process ignored SIGTERM; sending SIGKILL");
            signal(pid, rustix::process::Signal::KILL);
        }
    }
    wait(Duration::from_secs(2));
}

/// Stops and reaps our own children.
fn stop_children(children: &mut [Child]) {
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            signal(c.id(), rustix::process::Signal::TERM);
        }
    }
    let start = Instant::now();
    for c in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if start.elapsed() > Duration::from_secs(5) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn voting_offset_puts_first_vote_after_launch() {
        for launch in [0u64, 1, 7, 19, 20, 1_700_000_013] {
            let off = voting_start_offset(launch);
            assert!(off < VOTING_INTERVAL);
            // Next valid-after >= launch with this offset:
            let va = launch + (off + VOTING_INTERVAL - launch % VOTING_INTERVAL) % VOTING_INTERVAL;
            let vote = va - VOTE_DELAY - DIST_DELAY;
            assert_eq!(vote, launch + FIRST_VOTE_AFTER, "launch {launch}");
        }
    }

    #[test]
    fn state_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let st = TestnetState {
            dir: d.path().to_path_buf(),
            nodes: vec![NodeState {
                role: NodeRole::Client,
                nickname: "client0".into(),
                pid: 1,
                or_port: None,
                dir_port: None,
                control_port: 2,
                socks_port: Some(3),
                data_dir: d.path().join("nodes/client0"),
                box_host: false,
            }],
            boxes: vec![BoxEntry {
                onion: "x.onion:80".into(),
                listen: "127.0.0.1:4".into(),
                pid: 5,
                data_dir: d.path().join("box0"),
            }],
            started_unix: 6,
        };
        st.save(d.path()).unwrap();
        let back = Testnet::load(d.path()).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.client_socks(), Some(loopback(3)));
        let json = std::fs::read_to_string(d.path().join(STATE_FILE)).unwrap();
        assert!(json.contains("\"role\": \"client\""), "{json}");
    }

    #[test]
    fn the_arti_config_names_every_authority_as_a_fallback() {
        let d = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for (i, nick) in ["auth0", "auth1"].iter().enumerate() {
            let data_dir = d.path().join(nick);
            std::fs::create_dir_all(data_dir.join("keys")).unwrap();
            let fp = format!("{i}").repeat(40);
            std::fs::write(data_dir.join("fingerprint"), format!("{nick} {fp}\n")).unwrap();
            std::fs::write(
                data_dir.join("fingerprint-ed25519"),
                format!("{nick} hgU7AG06lCToQlcVVk27Hm2hFrlVUZJlA4zXTk+aAN{i}\n"),
            )
            .unwrap();
            std::fs::write(
                data_dir.join("keys/authority_certificate"),
                format!(
                    "dir-key-certificate-version 3\nfingerprint {}\n",
                    "A".repeat(39) + &i.to_string()
                ),
            )
            .unwrap();
            nodes.push(NodeState {
                role: NodeRole::Authority,
                nickname: (*nick).into(),
                pid: 1,
                or_port: Some(5100 + i as u16),
                dir_port: Some(7100),
                control_port: 2,
                socks_port: None,
                data_dir,
                box_host: false,
            });
        }
        let state = TestnetState {
            dir: d.path().to_path_buf(),
            nodes,
            boxes: Vec::new(),
            started_unix: 0,
        };
        let text = arti_config(&state).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let net = table["tor_network"].as_table().unwrap();
        let v3 = net["authorities"]["v3idents"].as_array().unwrap();
        assert_eq!(v3.len(), 2);
        assert_eq!(
            v3[1].as_str(),
            Some(format!("{}1", "A".repeat(39)).as_str())
        );
        let fallbacks = net["fallback_caches"].as_array().unwrap();
        assert_eq!(fallbacks.len(), 2);
        assert_eq!(
            fallbacks[0]["rsa_identity"].as_str(),
            Some("0".repeat(40).as_str())
        );
        assert_eq!(fallbacks[1]["orports"][0].as_str(), Some("127.0.0.1:5101"));
        assert_eq!(
            table["path_rules"]["ipv4_subnet_family_prefix"].as_integer(),
            Some(33)
        );
        // A missing key file is an error, not a fragment without it.
        std::fs::remove_file(state.nodes[0].data_dir.join("fingerprint-ed25519")).unwrap();
        assert!(arti_config(&state).is_err());
    }

    #[test]
    fn refuses_to_wipe_foreign_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("precious"), b"x").unwrap();
        assert!(prepare_dir(d.path()).is_err());
        assert!(d.path().join("precious").exists());
    }

    #[test]
    fn down_skips_foreign_pids() {
        // Our own PID's command line does not contain this dir: untouched.
        let d = tempfile::tempdir().unwrap();
        assert!(!cmdline_matches(
            std::process::id(),
            &[&d.path().to_string_lossy()]
        ));
        assert!(is_alive(std::process::id()));
    }
}
