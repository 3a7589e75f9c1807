//! `bento doctor`: check a box's setup before (or while) it serves, and
//! say in words what to fix.
//!
//! The command line reads the same options as `bento serve` (including
//! `--config`) and hands them here as a [`Setup`], so the doctor checks
//! exactly what `serve` would use: the policy, the runtime, the data
//! directory, the worker jail, the listen addresses and the local tor
//! (ControlPort, cookie, version, bootstrap, SocksPort, the ContactInfo
//! announcement). [`examine`] returns a [`Report`]: one [`Finding`] per
//! check, each with what to fix, rendered as text by [`Report::render`].

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bento_policy::BoxPolicy;
use bento_tor::{TorControl, TorError};

/// What `bento serve` would use, as its options resolve.
#[derive(Debug)]
pub struct Setup {
    /// The `--config` file, if one was read.
    pub config_file: Option<PathBuf>,
    /// The `--policy` file (`None`: the default policy).
    pub policy_file: Option<PathBuf>,
    /// The policy with the command line's overrides, or why it cannot be
    /// had (the error with its causes).
    pub policy: Result<BoxPolicy, String>,
    /// The precompiled runtime.
    pub runtime: PathBuf,
    /// The data directory, or why there is none.
    pub data_dir: Result<PathBuf, String>,
    /// `--no-worker-jail`.
    pub no_worker_jail: bool,
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--legacy-listen`.
    pub legacy_listen: Option<SocketAddr>,
    /// `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// `--tor-control`.
    pub tor_control: Option<String>,
    /// `--tor-socks`.
    pub tor_socks: Option<SocketAddr>,
    /// `--onion-port`.
    pub onion_port: u16,
}

/// The first tor release with onion-service proof-of-work defenses.
const TOR_POW_VERSION: (u32, u32, u32) = (0, 4, 8);

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// As it should be.
    Ok,
    /// The box serves, but less safely or less usefully than it could.
    Warn,
    /// The box would not serve.
    Fail,
}

/// One line of the report: what was checked, what was found, what to do.
#[derive(Debug)]
pub struct Finding {
    /// How it came out.
    pub verdict: Verdict,
    /// What was checked (`policy`, `runtime`, `data dir`, `tor`, …).
    pub topic: &'static str,
    /// What was found.
    pub found: String,
    /// What to do about it (none for a finding that is ok).
    pub fix: Option<String>,
}

/// The doctor's report: every finding, in the order checked.
#[derive(Debug, Default)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    fn ok(&mut self, topic: &'static str, found: impl Into<String>) {
        self.push(Verdict::Ok, topic, found.into(), None);
    }

    fn warn(&mut self, topic: &'static str, found: impl Into<String>, fix: impl Into<String>) {
        self.push(Verdict::Warn, topic, found.into(), Some(fix.into()));
    }

    fn fail(&mut self, topic: &'static str, found: impl Into<String>, fix: impl Into<String>) {
        self.push(Verdict::Fail, topic, found.into(), Some(fix.into()));
    }

    fn push(&mut self, verdict: Verdict, topic: &'static str, found: String, fix: Option<String>) {
        self.findings.push(Finding {
            verdict,
            topic,
            found,
            fix,
        });
    }

    /// How many findings came out as `verdict`.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.findings
            .iter()
            .filter(|f| f.verdict == verdict)
            .count()
    }

    /// The report as text: a line per finding (and its fix), then the
    /// summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let mark = match f.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            // Multi-line findings (e.g. a TOML error with its caret)
            // stay under their line's text.
            let found = f.found.trim_end().replace('\n', &format!("\n{:17}", ""));
            out.push_str(&format!("{mark}  {:<10} {found}\n", f.topic));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("      {:<10} fix: {fix}\n", ""));
            }
        }
        let (fails, warns) = (self.count(Verdict::Fail), self.count(Verdict::Warn));
        out.push_str(&match (fails, warns) {
            (0, 0) => "all checks passed: the box is ready to serve\n".to_owned(),
            (0, w) => format!("ready to serve, with {w} warning(s) above\n"),
            (f, w) => format!("{f} problem(s) to fix before serving, {w} warning(s)\n"),
        });
        out
    }
}

/// Runs every check of `setup`. `whole_config` makes the box's whole
/// configuration as `serve` would (the error with its causes): it is
/// asked only when the policy, runtime and data directory are usable, to
/// report whatever else `serve` would refuse at start.
pub async fn examine(setup: &Setup, whole_config: impl FnOnce() -> Result<(), String>) -> Report {
    let mut report = Report::default();
    if let Some(config) = &setup.config_file {
        report.ok("config", format!("{} parsed", config.display()));
    }
    check_policy(setup, &mut report);
    check_runtime(setup, &mut report);
    check_data_dir(setup, &mut report);
    check_jail(setup, &mut report);
    check_listen(setup, &mut report);
    check_tor(setup, &mut report).await;
    check_other_options(setup, whole_config, &mut report);
    report
}

fn check_policy(setup: &Setup, report: &mut Report) {
    let source = setup.policy_file.as_ref().map_or_else(
        || "the default policy".to_owned(),
        |p| p.display().to_string(),
    );
    match &setup.policy {
        Ok(policy) => {
            let bound_mib = policy
                .caps
                .max_instances
                .saturating_mul(policy.instance.memory_mib);
            if let Some(ram_mib) = physical_memory_mib().filter(|ram| bound_mib > *ram) {
                report.warn(
                    "policy",
                    format!(
                        "{source}: {} instances × {} MiB = {bound_mib} MiB of function memory, \
                         more than this machine's {ram_mib} MiB: busy enough, the box would swap \
                         or be killed by the kernel instead of refusing work",
                        policy.caps.max_instances, policy.instance.memory_mib
                    ),
                    "lower max-instances or memory-mib (box.toml or the policy) until their \
                     product fits in RAM beside tor",
                );
            }
            report.ok(
                "policy",
                format!(
                    "{source}: up to {} instances × {} MiB (≤ {} MiB of function memory), \
                     {} MiB of stored functions",
                    policy.caps.max_instances,
                    policy.instance.memory_mib,
                    bound_mib,
                    policy.caps.max_stored_mib
                ),
            );
        }
        Err(e) => report.fail(
            "policy",
            format!("{source}: {e}"),
            "correct the file; `bento policy default` prints a valid policy to start from \
             (docs/policy.md)",
        ),
    }
}

/// MemTotal from /proc/meminfo, MiB.
fn physical_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn check_runtime(setup: &Setup, report: &mut Report) {
    let path = &setup.runtime;
    if !path.is_file() {
        report.fail(
            "runtime",
            format!("{} does not exist", path.display()),
            "set runtime (--runtime) to the precompiled runtime: \
             /usr/lib/bento/bento-python.cwasm from the package, or run scripts/setup.sh in \
             the source tree",
        );
        return;
    }
    // Loading checks what matters: that this bento's wasmtime accepts the
    // file (a runtime precompiled by another version is refused).
    match bento_sandbox::PythonRuntime::load_precompiled(path) {
        Ok(_) => report.ok("runtime", format!("{} loads", path.display())),
        Err(e) => report.fail(
            "runtime",
            format!("{}: {e}", path.display()),
            "precompile it with this bento (`bento runtime precompile WASM OUT`, which \
             scripts/setup.sh does) or reinstall the package",
        ),
    }
}

fn check_data_dir(setup: &Setup, report: &mut Report) {
    let dir = match &setup.data_dir {
        Ok(dir) => dir.as_path(),
        Err(e) => {
            report.fail("data dir", e.clone(), "set data-dir (e.g. /var/lib/bento)");
            return;
        }
    };
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            match parent.map(writable_dir) {
                Some(Ok(())) | None => report.ok(
                    "data dir",
                    format!("{} will be created (owner-only) at start", dir.display()),
                ),
                Some(Err(e)) => report.fail(
                    "data dir",
                    format!(
                        "{} does not exist and cannot be created: {e}",
                        dir.display()
                    ),
                    "create it, owned by the user bento runs as, mode 0700 (the package's \
                     systemd unit does: StateDirectory=bento)",
                ),
            }
            return;
        }
        Err(e) => {
            report.fail(
                "data dir",
                format!("{}: {e}", dir.display()),
                "make it readable by the user bento runs as",
            );
            return;
        }
    };
    if !meta.is_dir() {
        report.fail(
            "data dir",
            format!("{} is not a directory", dir.display()),
            "point data-dir at a directory",
        );
        return;
    }
    if let Err(e) = writable_dir(dir) {
        report.fail(
            "data dir",
            format!("{} is not writable: {e}", dir.display()),
            "chown it to the user bento runs as, mode 0700",
        );
        return;
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        report.warn(
            "data dir",
            format!(
                "{} is mode {mode:03o}: others may read stored functions",
                dir.display()
            ),
            format!(
                "`chmod 700 {}` (bento serve also tightens it at start)",
                dir.display()
            ),
        );
    } else {
        report.ok(
            "data dir",
            format!(
                "{} writable, owner-only ({mode:03o}, uid {})",
                dir.display(),
                meta.uid()
            ),
        );
    }
}

/// Creates and removes a file in `dir`.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    tempfile::tempfile_in(dir).map(drop)
}

fn check_jail(setup: &Setup, report: &mut Report) {
    let support = bento_worker::jail_support();
    if setup.no_worker_jail {
        report.warn(
            "jail",
            "off (no-worker-jail): a sandbox escape would run with bento's own rights",
            "remove no-worker-jail unless a wrapper jails the workers",
        );
    } else if support.contains("OFF") || support.contains("partial") {
        report.warn(
            "jail",
            format!("weaker than it could be: {support}"),
            "run a kernel with landlock (ABI ≥ 6) and seccomp; the systemd unit's \
             hardening still applies",
        );
    } else {
        report.ok("jail", support);
    }
}

fn check_listen(setup: &Setup, report: &mut Report) {
    let mut addrs: Vec<(&'static str, SocketAddr)> = vec![("listen", setup.listen)];
    if let Some(legacy) = setup.legacy_listen {
        addrs.push(("legacy", legacy));
    }
    if let Some(metrics) = setup.metrics {
        addrs.push(("metrics", metrics));
    }
    for (topic, addr) in addrs {
        if let Err(e) = TcpListener::bind(addr) {
            report.fail(
                topic,
                format!("cannot listen on {addr}: {e}"),
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    "another process (a running box?) holds the port: stop it or pick another"
                } else {
                    "pick an address of this machine and a port bento may bind"
                },
            );
        } else if topic != "metrics" && !addr.ip().is_loopback() {
            report.warn(
                topic,
                format!("{addr} is reachable without Tor"),
                "listen on loopback and let users come through the onion service \
                 (tor-control): a direct connection shows the user's address",
            );
        } else {
            report.ok(topic, format!("{addr} is free"));
        }
    }
}

async fn check_tor(setup: &Setup, report: &mut Report) {
    let Some(addr) = setup.tor_control.as_deref() else {
        report.warn(
            "tor",
            "no tor-control: the box publishes no onion service, and functions get no \
             tor_connect or onion_service",
            "enable tor's ControlPort (torrc: `ControlPort 9051`, `CookieAuthentication 1`, \
             `CookieAuthFileGroupReadable 1`) and set tor-control = \"127.0.0.1:9051\"",
        );
        return;
    };
    let mut control = match TorControl::connect(addr).await {
        Ok(control) => control,
        Err(e) => {
            let fix = tor_connect_fix(&e);
            report.fail("tor", e.to_string(), fix);
            return;
        }
    };
    report.ok("tor", format!("ControlPort {addr}: authenticated"));
    match control.getinfo("version").await {
        Ok(version) => match parse_tor_version(&version) {
            Some(v) if v >= TOR_POW_VERSION => report.ok(
                "tor",
                format!("version {version}: onion-service proof-of-work available"),
            ),
            _ => report.warn(
                "tor",
                format!("version {version}: no onion-service proof-of-work defense"),
                "upgrade tor to 0.4.8 or later (Debian: the deb.torproject.org packages)",
            ),
        },
        Err(e) => report.warn("tor", format!("cannot ask its version: {e}"), "check tor"),
    }
    match control.bootstrap_progress().await {
        Ok(100) => report.ok("tor", "bootstrapped 100%"),
        Ok(p) => report.warn(
            "tor",
            format!("bootstrapped {p}%: the onion service waits until tor is done"),
            "wait, or check tor's log (journalctl -u tor@default) for why it is stuck",
        ),
        Err(e) => report.warn(
            "tor",
            format!("cannot ask bootstrap progress: {e}"),
            "check tor",
        ),
    }
    match control.getinfo("fingerprint").await {
        Ok(fp) => {
            report.ok("tor", format!("a relay ({fp}): the box runs beside it"));
            let contact = control.getconf("ContactInfo").await;
            check_announcement(contact, setup.onion_port, report);
        }
        Err(_) => report.warn(
            "tor",
            "this tor is not a relay",
            "fine for a test box; on the network, run the box beside your relay's tor",
        ),
    }
    let socks = match setup.tor_socks {
        Some(socks) => Ok(vec![socks]),
        None => control.socks_listeners().await,
    };
    match socks {
        Ok(listeners) if listeners.is_empty() => report.fail(
            "tor",
            "tor has no SocksPort: functions' tor_connect cannot work",
            "torrc: `SocksPort 9050` (or set tor-socks)",
        ),
        Ok(listeners) => {
            let first = listeners[0];
            match tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(first),
            )
            .await
            {
                Ok(Ok(_)) => report.ok("tor", format!("SocksPort {first} answers")),
                Ok(Err(e)) => report.fail(
                    "tor",
                    format!("SocksPort {first}: {e}"),
                    "check tor-socks / torrc's SocksPort",
                ),
                Err(_) => report.fail(
                    "tor",
                    format!("SocksPort {first}: no answer in 5 s"),
                    "check tor-socks / torrc's SocksPort",
                ),
            }
        }
        Err(e) => report.fail(
            "tor",
            format!("cannot ask for the SocksPort: {e}"),
            "set tor-socks",
        ),
    }
}

/// Whether the relay's ContactInfo announces a box, so that users of
/// `bento boxes` find it (docs/operators.md, "Announce the box").
fn check_announcement(
    contact: Result<Option<String>, TorError>,
    onion_port: u16,
    report: &mut Report,
) {
    let add = format!(
        "add the field `bento:ONION.onion:{onion_port}` to ContactInfo in torrc (ONION: the \
         address `bento serve` logs as published; keep the other fields) and reload tor"
    );
    let contact = match contact {
        Ok(contact) => contact.unwrap_or_default(),
        Err(e) => {
            report.warn(
                "announce",
                format!("cannot read ContactInfo: {e}"),
                "check tor",
            );
            return;
        }
    };
    let fields = bento_tor::discovery::announcements(&contact);
    if fields.is_empty() {
        report.warn(
            "announce",
            "the relay's ContactInfo announces no box: `bento boxes` will not list it",
            add,
        );
        return;
    }
    for field in fields {
        match field {
            Ok(a) if a.port() == onion_port => {
                report.ok(
                    "announce",
                    format!("ContactInfo announces {}", a.contact_field()),
                );
            }
            Ok(a) => report.warn(
                "announce",
                format!(
                    "ContactInfo announces {} but the box listens on onion port {onion_port}",
                    a.contact_field()
                ),
                add.clone(),
            ),
            Err(e) => report.warn(
                "announce",
                format!("ContactInfo has a malformed bento field: {e}"),
                add.clone(),
            ),
        }
    }
}

/// What to do about a failed ControlPort connection, in words.
fn tor_connect_fix(e: &TorError) -> String {
    match e {
        TorError::Io { .. } | TorError::Timeout { .. } | TorError::Closed { .. } => {
            "is tor running with a ControlPort? torrc: `ControlPort 9051` and \
             `CookieAuthentication 1`, then `systemctl reload tor`"
                .to_owned()
        }
        TorError::Auth { step, .. } if step == "reading the cookie" => {
            "bento cannot read tor's auth cookie: torrc `CookieAuthFileGroupReadable 1`, and \
             put the user bento runs as in tor's group (`adduser bento debian-tor`; the \
             package does), then restart both"
                .to_owned()
        }
        TorError::Auth { .. } => {
            "bento authenticates with tor's cookie: torrc `CookieAuthentication 1` (no \
             HashedControlPassword-only setup)"
                .to_owned()
        }
        _ => "check tor's log for the reason".to_owned(),
    }
}

/// `0.4.9.3-alpha (git-…)` → (0, 4, 9).
fn parse_tor_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let micro = parts.next()?.parse().ok()?;
    Some((major, minor, micro))
}

/// Whatever else `serve` would refuse at start (legacy manifest, CA file).
fn check_other_options(
    setup: &Setup,
    whole_config: impl FnOnce() -> Result<(), String>,
    report: &mut Report,
) {
    let runtime_ok = setup.runtime.is_file();
    if !runtime_ok || setup.data_dir.is_err() || setup.policy.is_err() {
        // Already reported; the whole configuration would only repeat the
        // first of them.
        return;
    }
    if let Err(e) = whole_config() {
        report.fail("options", e, "correct the option named above");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tor_versions_are_read_from_what_getinfo_says() {
        assert_eq!(parse_tor_version("0.4.9.3-alpha"), Some((0, 4, 9)));
        assert_eq!(parse_tor_version("0.4.8.12 (git-abc)"), Some((0, 4, 8)));
        assert_eq!(parse_tor_version("0.4.7.16"), Some((0, 4, 7)));
        assert!(parse_tor_version("0.4.7.16") < Some(TOR_POW_VERSION));
        assert_eq!(parse_tor_version("garbage"), None);
    }

    #[test]
    fn the_announcement_check_names_the_field_to_add() {
        let onion = format!("{}.onion", "a".repeat(56));
        let mut report = Report::default();
        check_announcement(Ok(None), 7878, &mut report);
        check_announcement(
            Ok(Some(format!("email:x bento:{onion}:7878"))),
            7878,
            &mut report,
        );
        check_announcement(Ok(Some(format!("bento:{onion}:80"))), 7878, &mut report);
        check_announcement(Ok(Some("bento:nope".into())), 7878, &mut report);
        let text = report.render();
        assert_eq!(report.count(Verdict::Fail), 0, "{text}");
        assert_eq!(report.count(Verdict::Warn), 3, "{text}");
        assert_eq!(report.count(Verdict::Ok), 1, "{text}");
        assert!(text.contains("bento:ONION.onion:7878"), "{text}");
        assert!(text.contains(&format!("bento:{onion}:7878")), "{text}");
    }

    #[test]
    fn the_report_fails_only_when_a_check_failed() {
        let mut report = Report::default();
        report.ok("a", "fine");
        report.warn("b", "meh", "do x");
        assert_eq!(report.count(Verdict::Fail), 0);
        assert!(report.render().contains("ready to serve, with 1 warning"));
        report.fail("c", "broken", "do y");
        let text = report.render();
        assert!(text.contains("FAIL  c"), "{text}");
        assert!(text.contains("fix: do y"), "{text}");
        assert!(text.contains("1 problem(s) to fix"), "{text}");
    }
}
