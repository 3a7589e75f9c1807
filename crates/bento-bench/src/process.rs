//! The measured box as its own `bento serve` process, and the figures of
//! processes read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bento_client::{Connection, Target};

use crate::{Error, io_error};

/// The box as a child process (`bento serve` on loopback, run from this
/// process's own executable, which must be the `bento` binary), killed
/// when dropped.
pub struct BoxProcess {
    child: Child,
    /// The temporary data directory, removed with the box (none when the
    /// caller owns the directory).
    temp_dir: Option<tempfile::TempDir>,
    /// Where the box listens.
    pub target: Target,
}

impl Drop for BoxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BoxProcess {
    /// Start a box with `workers` workers (default: as for `bento serve`)
    /// and the precompiled `runtime`, on a temporary data directory;
    /// returns once it accepts connections.
    pub async fn start(workers: Option<usize>, runtime: &Path) -> Result<Self, Error> {
        let data_dir =
            tempfile::tempdir().map_err(io_error("cannot create a temporary data directory"))?;
        let mut this = Self::start_in(data_dir.path(), workers, runtime).await?;
        this.temp_dir = Some(data_dir);
        Ok(this)
    }

    /// Like [`Self::start`], on the data directory `data_dir` (kept).
    pub async fn start_in(
        data_dir: &Path,
        workers: Option<usize>,
        runtime: &Path,
    ) -> Result<Self, Error> {
        // A free port: bound and released at once (nothing else on a
        // benchmark machine races for it in practice).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(io_error("cannot find a free port for the box"))?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let bento: PathBuf =
            std::env::current_exe().map_err(io_error("cannot find the bento binary"))?;
        let mut command = Command::new(bento);
        command
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(data_dir)
            .arg("--runtime")
            .arg(runtime)
            .args(["--exit-with-pid", &std::process::id().to_string()])
            .env("BENTO_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(workers) = workers {
            command.args(["--workers", &workers.to_string()]);
        }
        let child = command
            .spawn()
            .map_err(io_error("cannot start `bento serve`"))?;
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
                return Err(Error::Run(
                    "the box did not start listening within 120 s".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(this)
    }

    /// SIGKILL the server (its workers exit when their pipe closes) and
    /// reap it; the data directory stays.
    pub fn kill9(self) {
        // Drop kills with SIGKILL and waits.
        drop(self);
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
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
        let threads = field(&status, "Threads:").unwrap_or(0);
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).map_or_else(
            |_| field(&status, "VmRSS:").unwrap_or(0),
            |s| field(&s, "Rss:").unwrap_or(0),
        );
        Some(Self {
            fds,
            threads,
            rss_kib,
        })
    }

    pub(crate) fn add(self, other: Self) -> Self {
        Self {
            fds: self.fds + other.fds,
            threads: self.threads + other.threads,
            rss_kib: self.rss_kib + other.rss_kib,
        }
    }
}

/// The number after `name` on the line of `text` that starts with it
/// (the format of /proc's `status`, `smaps_rollup` and `meminfo`).
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident and proportional set size (KiB) of a process, from /proc.
fn memory_kib(pid: u32) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (
        field(&rollup, "Rss:").unwrap_or(0),
        field(&rollup, "Pss:").unwrap_or(0),
    )
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
pub(crate) fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| field(&text, "MemAvailable:"))
        .map_or(0.0, |kib| kib as f64 / 1024.0)
}

/// Summed RSS and PSS (MiB) of this process and its children (the box's
/// workers, when the box runs in this process).
pub(crate) fn total_memory_mib() -> (f64, f64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_measured() {
        let me = ProcessFigures::read(std::process::id()).unwrap();
        assert!(me.fds > 0 && me.threads > 0 && me.rss_kib > 0, "{me:?}");
        assert_eq!(ProcessFigures::read(u32::MAX), None);
    }
}
