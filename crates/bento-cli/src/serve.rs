//! `bento serve`: its options (every one also a key of `--config`, see
//! `serve_config`), turned into the box's configuration, and the running
//! box until it is told to stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bento_attest::TeeKind;
use bento_policy::BoxPolicy;
use bento_pool::WorkerPoolConfig;
use bento_server::{EvidenceConfig, Server, ServerConfig};
use clap::{Args, FromArgMatches};

use crate::exit::read_text;
use crate::runtime_path;

/// Options of `bento serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Read options from this TOML file: each key is an option's long name
    /// (`data-dir = "/var/lib/bento"`, `workers = 2`, `no-worker-jail =
    /// false`); options on the command line win; relative paths are
    /// relative to the file. packaging/box.toml lists every key.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (plain TCP; put it behind Tor for anonymity).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Also serve the Bento research prototype's protocol here, so existing
    /// prototype clients and functions run unchanged (see docs/legacy.md).
    #[arg(long, value_name = "ADDR")]
    pub legacy_listen: Option<SocketAddr>,
    /// Data directory: stored functions live here and survive restarts.
    #[arg(long, required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,
    /// Precompiled Python runtime (.cwasm) [default: $BENTO_RUNTIME, else
    /// .cache/runtime/bento-python.cwasm in the source tree, as written by
    /// scripts/setup.sh].
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Sandbox worker processes [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Command prefix for each worker process, split on whitespace, e.g.
    /// "prlimit --as=8589934592" or a jail/TEE loader ("gramine-sgx …").
    /// The wrapper must exec the command it is given and pass its stdin and
    /// stdout through untouched: they carry the worker protocol.
    #[arg(long, value_name = "COMMAND")]
    pub worker_wrapper: Option<String>,
    /// Run workers without the worker jail. By default each worker jails
    /// itself before running functions (landlock: no access to the data
    /// dir but instance storage, no binding of ports; seccomp: no new
    /// processes, exec, listening or non-IP sockets; no core dumps), using
    /// whatever of that the kernel supports; see docs/security.md.
    #[arg(long)]
    pub no_worker_jail: bool,
    /// The box policy (TOML): what functions may ask for and reach (see
    /// docs/policy.md; `bento policy default` prints the default, which is
    /// used when this is absent). The options below override its values.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The manifest (TOML) functions stored through --legacy-listen run
    /// under, since the prototype's protocol cannot carry one [default: the
    /// minimum].
    #[arg(long, value_name = "FILE")]
    pub legacy_manifest: Option<PathBuf>,
    /// The local tor's ControlPort (cookie authentication): publish the
    /// box as a v3 onion service (key kept in the data directory, so the
    /// address survives restarts) and serve functions' tor_connect and
    /// onion_service capabilities.
    #[arg(long, value_name = "ADDR")]
    pub tor_control: Option<String>,
    /// tor's SocksPort for functions' tor_connect [default: asked from tor].
    #[arg(long, value_name = "ADDR", requires = "tor_control")]
    pub tor_socks: Option<SocketAddr>,
    /// Exit when this process does (used by `bento testnet up` for tests).
    #[arg(long, hide = true)]
    pub exit_with_pid: Option<u32>,
    /// Virtual port of the box's onion service.
    #[arg(long, default_value_t = 7878, requires = "tor_control")]
    pub onion_port: u16,
    /// Extra trusted CA certificates (PEM) for functions' HTTPS requests,
    /// besides the Mozilla roots.
    #[arg(long, value_name = "PEM")]
    pub http_ca_file: Option<PathBuf>,
    /// Ceiling: memory per instance (linear memory and host buffers), MiB [policy:
    /// instance.memory_mib].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_mib: Option<u64>,
    /// Ceiling: CPU time per invocation, ms [policy: instance.cpu_ms].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub cpu_ms: Option<u64>,
    /// Ceiling: wall-clock time per invocation, ms, including waiting for
    /// input [policy: instance.wall_ms].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub wall_ms: Option<u64>,
    /// Ceiling: output buffered per session while its client is not
    /// reading, KiB; when full, api.send() blocks [policy: instance.output_buffer_kib].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub output_buffer_kib: Option<u64>,
    /// Most instances running at once [policy: box.max_instances].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_instances: Option<u64>,
    /// Most output-buffer memory all sessions together may reserve, MiB
    /// [policy: box.max_buffered_mib].
    #[arg(long)]
    pub max_buffered_mib: Option<u64>,
    /// Fresh instances each worker keeps instantiated ahead of demand; 0
    /// turns prewarming off [policy: box.prewarm_per_worker].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=bento_policy::MAX_PREWARM_PER_WORKER))]
    pub prewarm: Option<u64>,
    /// Largest accepted function source, KiB [policy: box.max_upload_kib].
    #[arg(long)]
    pub max_source_kib: Option<u64>,
    /// Most bytes of stored functions, MiB [policy: box.max_stored_mib].
    #[arg(long)]
    pub max_stored_mib: Option<u64>,
    /// Seconds a finished session's unread output is kept, whether or not
    /// a client is attached to it.
    #[arg(long, default_value_t = 600)]
    pub session_retention_secs: u64,
    /// Seconds a client may idle between requests; also how long one frame
    /// may take from its first byte (plus 1 s per 16 KiB received).
    #[arg(long, default_value_t = 30)]
    pub read_timeout_secs: u64,
    /// Overload control: while the workers start instances later than this
    /// many ms (the smallest delay per 100 ms), refuse a growing share of
    /// new instances with `overloaded` so that the rest are answered
    /// promptly (docs/policy.md, "Overload"); 0 admits everything however
    /// late.
    #[arg(long, default_value_t = 50)]
    pub overload_target_ms: u64,
    /// How many nice levels the sandbox workers run below the server
    /// (0-19, the result clamped at nice 19): functions get the CPU only
    /// after the server (which answers and refuses clients) and the relay;
    /// 0 runs them at the server's priority.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=i64::from(bento_worker::MAX_WORKER_NICE)))]
    pub worker_nice: u8,
    /// Most client connections at once, over all listeners; beyond it a
    /// new connection is refused (too_many_connections) and closed
    /// [policy: box.max_connections, default 4096; this option wins].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Serve the operator's exact figures (sessions, instances, stored
    /// bytes, stores, invocations, errors by kind) in the Prometheus text
    /// format at http://ADDR/metrics. Loopback addresses only: clients
    /// see coarse buckets in `bento status`.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// The attestation evidence the box offers (docs/attestation.md):
    /// `none` (no TEE; clients are told the operator can read everything),
    /// or `tdx` / `sev-snp` when the whole box runs in such a confidential
    /// VM (the kernel's configfs-tsm, Linux 6.7 or later). With a TEE the
    /// box verifies its own evidence at start, as a client would, and does
    /// not start if it fails. `sgx` (the worker in a Gramine enclave) is not
    /// supported by `bento serve` yet.
    #[arg(long, value_name = "KIND", default_value = "none", value_parser = parse_served_tee)]
    pub tee: TeeKind,
    /// The collateral shipped with the evidence, which clients verify it
    /// with: for `sev-snp` one PEM file with the VCEK, the ASK and the ARK
    /// certificates, in that order (AMD's KDS) [default: the certificates
    /// the hypervisor attaches to each report]; for `tdx` (required)
    /// dcap-qvl `QuoteCollateralV3` JSON (Intel's PCS or a PCCS).
    #[arg(long, value_name = "FILE")]
    pub tee_collateral: Option<PathBuf>,
}

/// A `--tee` kind `bento serve` can produce evidence of.
fn parse_served_tee(text: &str) -> Result<TeeKind, String> {
    let kind: TeeKind = text
        .parse()
        .map_err(|e: bento_attest::UnknownTeeKind| e.to_string())?;
    if kind == TeeKind::Sgx {
        return Err(
            "sgx evidence must come from the worker inside its Gramine enclave, which `bento serve` \
             does not support yet (docs/attestation.md); use none, tdx or sev-snp"
                .into(),
        );
    }
    Ok(kind)
}

/// A loopback socket address for `--metrics`.
fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("{text:?} is not an address like 127.0.0.1:9100: {e}"))?;
    bento_server::metrics::check_loopback(addr).map_err(|e| e.to_string())
}

impl ServeArgs {
    /// Server configuration from these options.
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        let data_dir = self.data_dir()?;
        let runtime = self.runtime_path();
        if !runtime.is_file() {
            bail!(
                "the precompiled Python runtime {} does not exist; run scripts/setup.sh \
                 (or pass --runtime FILE.cwasm)",
                runtime.display()
            );
        }
        let program =
            std::env::current_exe().context("cannot find the bento binary to start workers")?;
        let workers = WorkerPoolConfig {
            program,
            args: {
                let mut args = vec![
                    "worker".into(),
                    "--runtime".into(),
                    runtime.display().to_string(),
                    "--storage-dir".into(),
                    bento_server::instance_storage_root(data_dir)
                        .display()
                        .to_string(),
                    "--channel-key".into(),
                    bento_server::channel_key_path(data_dir)
                        .display()
                        .to_string(),
                ];
                if self.no_worker_jail {
                    args.push("--no-jail".into());
                }
                if self.worker_nice > 0 {
                    args.extend(["--nice".into(), self.worker_nice.to_string()]);
                }
                args
            },
            wrapper: self
                .worker_wrapper
                .as_deref()
                .map(|w| w.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)),
            admission_target: (self.overload_target_ms > 0)
                .then(|| Duration::from_millis(self.overload_target_ms)),
        };
        if self.no_worker_jail {
            tracing::warn!("worker jail: off (--no-worker-jail)");
        } else {
            tracing::info!("worker jail: {}", bento_worker::jail_support());
        }
        let mut config = ServerConfig::new(data_dir.to_owned(), workers);
        config.policy = self.policy()?;
        config.workers.args.extend([
            "--prewarm".to_owned(),
            config.policy.caps.prewarm_per_worker.to_string(),
        ]);
        if let Some(path) = &self.legacy_manifest {
            let text = read_text(path)?;
            let manifest = bento_policy::Manifest::from_toml(&text)
                .with_context(|| format!("--legacy-manifest {}", path.display()))?;
            // Every prototype function would be refused at store time:
            // better to say so now, once.
            if let Err(violations) = bento_policy::admit(&manifest, &config.policy, &[]) {
                let list: Vec<String> = violations.iter().map(|v| format!("  - {v}")).collect();
                bail!(
                    "--legacy-manifest {} asks for more than the policy allows:\n{}",
                    path.display(),
                    list.join("\n")
                );
            }
            // The prototype's protocol has no Padding frame: its sessions
            // are never shaped, so a manifest asking for a defense would be
            // run unshaped. Refused rather than ignored.
            if manifest.defense.is_some() {
                bail!(
                    "--legacy-manifest {} names a defense; the research prototype's protocol cannot carry padding, so its sessions are never shaped",
                    path.display()
                );
            }
            config.legacy_manifest = text;
        }
        if let Some(path) = &self.http_ca_file {
            let pem = read_text(path)?;
            bento_egress::TlsSettings::with_extra_roots_pem(pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("--http-ca-file {}: {e}", path.display()))?;
            config.http_extra_roots_pem = Some(pem);
        }
        config.tor_control = self.tor_control.clone();
        config.tor_socks = self.tor_socks;
        config.onion_port = self.onion_port;
        config.session_retention = Duration::from_secs(self.session_retention_secs);
        config.read_timeout = Duration::from_secs(self.read_timeout_secs.max(1));
        config.max_connections =
            usize::try_from(config.policy.caps.max_connections).unwrap_or(usize::MAX);
        config.legacy_listen = self.legacy_listen;
        config.metrics_listen = self.metrics;
        // The box states the measurement of what its workers run.
        config.measured_files = Some((config.workers.program.clone(), runtime));
        config.evidence = self.evidence()?;
        Ok(config)
    }
}

impl ServeArgs {
    /// The options of `bento serve --data-dir DATA_DIR`: every other one
    /// its default.
    pub fn defaults(data_dir: &Path) -> anyhow::Result<Self> {
        let argv = [std::ffi::OsStr::new("--data-dir"), data_dir.as_os_str()];
        let matches = crate::serve_config::serve_command().try_get_matches_from(argv)?;
        Ok(Self::from_arg_matches(&matches)?)
    }

    /// The precompiled runtime: `--runtime`, else the default.
    pub fn runtime_path(&self) -> PathBuf {
        self.runtime
            .clone()
            .unwrap_or_else(runtime_path::default_runtime)
    }

    /// The data directory, from the command line or the config file.
    pub fn data_dir(&self) -> anyhow::Result<&Path> {
        self.data_dir
            .as_deref()
            .context("no data directory: pass --data-dir DIR or set data-dir in the --config file")
    }

    /// Where the box's attestation evidence comes from (`--tee`).
    fn evidence(&self) -> anyhow::Result<EvidenceConfig> {
        match (self.tee, &self.tee_collateral) {
            (TeeKind::None, None) => Ok(EvidenceConfig::NoTee),
            (TeeKind::None, Some(_)) => {
                bail!("--tee-collateral needs --tee tdx or --tee sev-snp (the box offers no TEE)")
            }
            // The certificates the hypervisor attaches to each report.
            (TeeKind::SevSnp, None) => Ok(EvidenceConfig::ConfigfsTsm {
                kind: TeeKind::SevSnp,
                collateral: Vec::new(),
            }),
            (kind, None) => bail!(
                "--tee {kind} needs --tee-collateral FILE: clients cannot verify {kind} evidence \
                 without it (docs/attestation.md, \"Turning it on\")"
            ),
            (kind, Some(path)) => {
                let collateral = std::fs::read(path).with_context(|| {
                    format!("--tee-collateral {}: cannot read it", path.display())
                })?;
                Ok(EvidenceConfig::ConfigfsTsm { kind, collateral })
            }
        }
    }

    /// The policy file (or the default) with the command-line overrides.
    pub(crate) fn policy(&self) -> anyhow::Result<BoxPolicy> {
        let mut policy = match &self.policy {
            Some(path) => BoxPolicy::from_toml(&read_text(path)?)
                .with_context(|| format!("--policy {}", path.display()))?,
            None => BoxPolicy::default(),
        };
        let set = |value: Option<u64>, target: &mut u64| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(self.memory_mib, &mut policy.instance.memory_mib);
        set(self.cpu_ms, &mut policy.instance.cpu_ms);
        set(self.wall_ms, &mut policy.instance.wall_ms);
        set(
            self.output_buffer_kib,
            &mut policy.instance.output_buffer_kib,
        );
        set(self.max_instances, &mut policy.caps.max_instances);
        set(self.max_buffered_mib, &mut policy.caps.max_buffered_mib);
        set(self.max_source_kib, &mut policy.caps.max_upload_kib);
        set(self.max_stored_mib, &mut policy.caps.max_stored_mib);
        set(self.prewarm, &mut policy.caps.prewarm_per_worker);
        set(self.max_connections, &mut policy.caps.max_connections);
        Ok(policy)
    }
}

/// Run the box until interrupted, terminated, or (with
/// `--exit-with-pid`) until its owner exits.
/// Logs whether the relay's ContactInfo announces this box to `bento
/// boxes`, and if not, the exact field to add to torrc.
async fn tell_how_to_announce(control: &str, onion: &str) {
    let Ok(announcement) = bento_tor::Announcement::parse(onion) else {
        return;
    };
    let field = announcement.contact_field();
    let contact = match bento_tor::TorControl::connect(control).await {
        Ok(mut tor) => tor.getconf("ContactInfo").await,
        Err(e) => Err(e),
    };
    match contact {
        Ok(Some(contact)) if bento_tor::discovery::announces(&contact, &announcement) => {
            tracing::info!(%field, "the relay's ContactInfo announces this box");
        }
        Ok(_) => tracing::info!(
            "to list this box in `bento boxes`, add the field `{field}` to the relay's \
             ContactInfo in torrc and reload tor (docs/operators.md)"
        ),
        Err(e) => tracing::debug!(error = %e, "cannot read the relay's ContactInfo"),
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let workers = config.workers.workers;
    let server = Server::bind(config, args.listen).await?;
    let addr = server.local_addr()?;
    if let Some(legacy) = server.legacy_addr() {
        tracing::info!(legacy_addr = %legacy?, "serving the research prototype's protocol");
    }
    if let Some(metrics) = server.metrics_addr() {
        tracing::info!(metrics_addr = %metrics?, "serving the operator's metrics at /metrics");
    }
    tracing::info!(%addr, workers, "bento box listening");
    if let (Some(onion), Some(published)) = (
        server.onion_address(),
        server.onion_published(Duration::from_secs(120)),
    ) {
        tracing::info!(%onion, "bento box onion service added; publishing");
        let control = args.tor_control.clone();
        tokio::spawn(async move {
            match published.await {
                Ok(()) => {
                    tracing::info!(%onion, "bento box onion service published");
                    if let Some(control) = control {
                        tell_how_to_announce(&control, &onion).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the onion service is not published yet"),
            }
        });
    }
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let owner_gone = async {
        match args.exit_with_pid {
            Some(pid) => {
                while bento_testnet::boxes::pid_alive(pid) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server.run() => result?,
        () = owner_gone => tracing::info!("the owning process exited; shutting down"),
        _ = interrupt.recv() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("terminated; shutting down"),
    }
    Ok(ExitCode::SUCCESS)
}
