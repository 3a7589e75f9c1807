//! Bento boxes beside the network's box-host relays, for `bento testnet
//! up` and the Tor benchmark: each a `bento serve` process of its own
//! (started from the running executable, which must be the `bento`
//! binary) with the relay's ControlPort, published as an onion service and
//! checked through the network's client; and the boxes' announcement in
//! their relays' ContactInfo, for `bento boxes`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bento_client::{Connection, Target};
use bento_tor::TorError;

use crate::{BoxEntry, NodeRole, TestnetState, default_contact_info};

/// How long a box may take to start and publish its onion service.
const BOX_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the boxes could not be started or announced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoxesError {
    /// Tor (a relay's ControlPort, the network's state) failed.
    #[error(transparent)]
    Tor(#[from] TorError),
    /// A local operation failed: a directory, a log file, starting the
    /// process. `doing` says which.
    #[error("{doing}")]
    Io {
        /// What was being done.
        doing: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A box did not come up as it should: it exited, did not publish its
    /// onion service in time, is not reachable through Tor, or its
    /// announcement did not reach the client.
    #[error("{0}")]
    Box(String),
}

/// How to start the boxes.
#[derive(Debug, Clone)]
pub struct BoxOptions {
    /// Box policies (`bento serve --policy`): box N gets the Nth, boxes
    /// past the last get the last; none, the default policy.
    pub policies: Vec<PathBuf>,
    /// The precompiled runtime.
    pub runtime: PathBuf,
    /// The boxes exit when this process does (`--exit-with-pid`).
    pub owner_pid: Option<u32>,
}

/// Whether a process with this PID exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Start a box beside each box-host relay and wait until each answers
/// through Tor; records them in `state`.
/// `progress` is told each step.
pub async fn start_boxes(
    state: &mut TestnetState,
    options: &BoxOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BoxesError> {
    let hosts: Vec<_> = state.box_hosts().into_iter().cloned().collect();
    let bento = std::env::current_exe().map_err(io_error("cannot find the bento binary"))?;
    let socks = state
        .client_socks()
        .ok_or_else(|| BoxesError::Box("the network has no client SocksPort".to_owned()))?;
    let mut pending = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let data_dir = state.dir.join("boxes").join(format!("box{i}"));
        std::fs::create_dir_all(&data_dir)
            .map_err(io_error(format!("cannot create {}", data_dir.display())))?;
        let log_path = data_dir.join("serve.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io_error(format!("cannot create {}", log_path.display())))?;
        let mut command = std::process::Command::new(&bento);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--runtime")
            .arg(&options.runtime)
            .arg("--tor-control")
            .arg(host.control_addr().to_string());
        if let Some(policy) = options.policies.get(i).or(options.policies.last()) {
            command.arg("--policy").arg(policy);
        }
        if let Some(owner) = options.owner_pid {
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
        let child = command.spawn().map_err(io_error("cannot start a box"))?;
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
/// client's tor lists every announcement in the consensus. `progress` is
/// told each step.
pub async fn announce_boxes(
    state: &TestnetState,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BoxesError> {
    // `start_boxes` starts box N beside box host N.
    for (entry, host) in state.boxes.iter().zip(state.box_hosts()) {
        let announcement = bento_tor::Announcement::parse(&entry.onion).map_err(|e| {
            BoxesError::Box(format!(
                "box {} has no valid onion address: {e}",
                entry.onion
            ))
        })?;
        let contact = format!(
            "{} {}",
            default_contact_info(&host.nickname),
            announcement.contact_field()
        );
        host.set_contact_info(&contact).await?;
        progress(&format!("{} announces {}", host.nickname, announcement));
    }
    let client = state
        .nodes
        .iter()
        .find(|n| n.role == NodeRole::Client)
        .ok_or_else(|| BoxesError::Box("the network has no client".to_owned()))?;
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
            return Err(BoxesError::Box(format!(
                "the client's tor lists {} of {} announced boxes after {} s",
                wanted
                    .iter()
                    .filter(|w| listed.iter().any(|l| l == *w))
                    .count(),
                wanted.len(),
                ANNOUNCE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Read the box's log until it reports its address and a published onion
/// service.
async fn wait_for_box(log: &Path, pid: u32) -> Result<(String, String), BoxesError> {
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
            return Err(BoxesError::Box(format!(
                "a box did not publish its onion service{}; its log ({}):\n{}",
                if pid_alive(pid) {
                    " in time"
                } else {
                    " (it exited)"
                },
                log.display(),
                tail.join("\n")
            )));
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
async fn reach_through_tor(onion: &str, socks: std::net::SocketAddr) -> Result<(), BoxesError> {
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
                return Err(BoxesError::Box(format!(
                    "the box {onion} is not reachable through Tor: {e}"
                )));
            }
            Err(_) if Instant::now() > deadline => {
                return Err(BoxesError::Box(format!(
                    "the box {onion} is not reachable through Tor (timed out)"
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A [`BoxesError::Io`] that says what was being done.
fn io_error(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> BoxesError {
    let doing = doing.into();
    move |source| BoxesError::Io { doing, source }
}
