//! The subcommands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bento_client::{Attachment, Connection, Target};
use bento_policy::BoxPolicy;
use bento_protocol::{InvokeToken, ServiceToken, SessionToken};
use bento_server::{Server, ServerConfig};
use bento_worker::WorkerPoolConfig;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::exit::EXIT_REQUEST;
use crate::exit::{EXIT_FUNCTION, report};
use crate::{Command, TargetArgs, runtime_path};

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
                ];
                if self.no_worker_jail {
                    args.push("--no-jail".into());
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
        Ok(config)
    }
}

impl ServeArgs {
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

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|source| {
        crate::exit::UnreadableInput {
            path: path.to_owned(),
            source,
        }
        .into()
    })
}

/// `bento worker`: load the runtime, jail the process (unless `jail` is
/// `None`; else `jail` is the instance storage directory), serve the pipe
/// protocol on stdio.
pub fn worker(runtime: &Path, jail: Option<PathBuf>, prewarm: usize) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsFd;
    let runtime = bento_sandbox::PythonRuntime::load_precompiled(runtime)?;
    // After loading the runtime (which reads its file), before the first
    // instance thread: every thread inherits the jail.
    match jail {
        Some(storage_dir) => {
            let report = bento_worker::jail_worker(&bento_worker::JailConfig { storage_dir });
            if report.complete() {
                tracing::debug!("worker jail: {report}");
            } else {
                tracing::warn!("worker jail incomplete: {report}");
            }
        }
        None => tracing::debug!("worker jail: off (--no-worker-jail)"),
    }
    // Raw file handles: std's Stdout is line-buffered and would scan every
    // output chunk for newlines.
    let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    bento_worker::run_worker(runtime, prewarm, stdin, stdout)?;
    Ok(ExitCode::SUCCESS)
}

/// `bento policy check`.
pub fn policy_check(manifest: &Path, policy: Option<&Path>) -> anyhow::Result<ExitCode> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let parsed = bento_policy::Manifest::from_toml(&read(manifest)?).and_then(|manifest| {
        let policy = match policy {
            Some(path) => bento_policy::BoxPolicy::from_toml(&read(path).map_err(|e| {
                bento_policy::PolicyError::Syntax {
                    what: "box policy",
                    message: format!("{e:#}"),
                }
            })?)?,
            None => bento_policy::BoxPolicy::default(),
        };
        Ok((manifest, policy))
    });
    let (manifest, policy) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_REQUEST));
        }
    };
    match bento_policy::admit(&manifest, &policy, &[]) {
        Ok(grant) => {
            let capabilities: Vec<&str> = grant.capabilities.iter().map(|c| c.name()).collect();
            let resources: Vec<String> = grant
                .resources
                .entries()
                .iter()
                .map(|(what, unit, value)| {
                    format!("  {what}: {value} {unit}").trim_end().to_owned()
                })
                .collect();
            print_line(&format!(
                "ok: the manifest fits the policy; the function would get
{}
  capabilities: {}
  destinations: {}",
                resources.join("\n"),
                if capabilities.is_empty() {
                    "none (session I/O only)".to_owned()
                } else {
                    capabilities.join(", ")
                },
                if grant.destinations.is_empty() {
                    "none".to_owned()
                } else {
                    grant.destinations.to_string()
                },
            ));
            Ok(ExitCode::SUCCESS)
        }
        Err(violations) => {
            eprintln!("the manifest does not fit the policy:");
            for violation in &violations {
                eprintln!("  - {violation}");
            }
            Ok(ExitCode::from(EXIT_FUNCTION))
        }
    }
}

/// `bento runtime precompile`.
pub fn precompile(wasm: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    eprintln!(
        "compiling {} ({} MB) to native code…",
        wasm.display(),
        bytes.len() / 1_000_000
    );
    let started = std::time::Instant::now();
    let compiled = bento_sandbox::precompile_runtime(&bytes)?;
    let temp = out.with_extension("cwasm.tmp");
    std::fs::write(&temp, &compiled).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, out).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {} in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn target(args: &TargetArgs) -> Target {
    Target {
        server: args.server.clone(),
        socks: args.socks.clone(),
    }
}

/// Each argument as JSON when it parses, else as a string.
pub fn args_to_json(args: &[String]) -> String {
    let values: Vec<serde_json::Value> = args
        .iter()
        .map(|arg| {
            serde_json::from_str(arg).unwrap_or_else(|_| serde_json::Value::String(arg.clone()))
        })
        .collect();
    serde_json::Value::Array(values).to_string()
}

/// A function to upload: its file name, source and manifest.
struct Upload {
    filename: String,
    source: String,
    manifest: String,
}

/// Read a function and its manifest: `manifest` if given, else the `.toml`
/// next to the source if there is one, else none (the minimum).
fn read_function(file: &Path, manifest: Option<&Path>) -> anyhow::Result<Upload> {
    let source = read_text(file)?;
    let filename = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function.py".into());
    let beside = file.with_extension("toml");
    let manifest = match manifest {
        Some(path) => read_text(path)?,
        None if beside.is_file() => read_text(&beside)?,
        None => String::new(),
    };
    Ok(Upload {
        filename,
        source,
        manifest,
    })
}

#[allow(clippy::print_stdout)]
fn print_line(text: &str) {
    println!("{text}");
}

pub async fn dispatch(command: Command, target_args: TargetArgs) -> anyhow::Result<ExitCode> {
    let target = target(&target_args);
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Doctor(args) => crate::doctor::run(&args).await,
        Command::Testnet(command) => crate::testnet_cmd::run(command).await,
        Command::Bench(args) => bench_dispatch(args).await,
        Command::Store {
            file,
            manifest,
            lifetime,
            json,
        } => {
            let upload = read_function(&file, manifest.as_deref())?;
            let result = async {
                let mut conn = Connection::connect(&target).await?;
                conn.store_for(&upload.filename, &upload.source, &upload.manifest, lifetime)
                    .await
            }
            .await;
            match result {
                Ok(stored) if json => {
                    print_line(
                        &serde_json::json!({
                            "function_id": stored.function_id.to_hex(),
                            "invoke_token": stored.invoke_token.to_hex(),
                            "lifetime_s": stored.lifetime.as_secs(),
                        })
                        .to_string(),
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Ok(stored) => {
                    print_line(&stored.invoke_token.to_hex());
                    eprintln!(
                        "the box keeps it for {} s (`bento renew` to keep it longer)",
                        stored.lifetime.as_secs()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(report(&e)),
            }
        }
        Command::Renew { token, lifetime } => {
            let token = InvokeToken::from_hex(&token)?;
            let result = async {
                let mut conn = Connection::connect(&target).await?;
                conn.renew(&token, lifetime).await
            }
            .await;
            match result {
                Ok(granted) => {
                    print_line(&serde_json::json!({"lifetime_s": granted.as_secs()}).to_string());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(report(&e)),
            }
        }
        Command::Delete { token } => {
            let token = InvokeToken::from_hex(&token)?;
            let result = async {
                let mut conn = Connection::connect(&target).await?;
                conn.delete(&token).await
            }
            .await;
            match result {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => Ok(report(&e)),
            }
        }
        Command::Invoke {
            token,
            entry,
            json,
            args,
        } => {
            let token = InvokeToken::from_hex(&token)?;
            let result = async {
                let mut conn = Connection::connect(&target).await?;
                conn.invoke_service(&token, &entry, &args_to_json(&args))
                    .await
            }
            .await;
            match result {
                Ok((session, service)) if json => {
                    let mut out = serde_json::json!({"session_token": session.to_hex()});
                    if let Some(service) = service {
                        out["service_token"] = service.to_hex().into();
                    }
                    print_line(&out.to_string());
                    Ok(ExitCode::SUCCESS)
                }
                Ok((session, service)) => {
                    print_line(&session.to_hex());
                    if let Some(service) = service {
                        print_line(&service.to_hex());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(report(&e)),
            }
        }
        Command::Browse(args) => Ok(crate::browse_cmd::run(&target, args).await),
        Command::Drop(command) => Ok(crate::drop_cmd::run(&target, command).await),
        Command::Cover(args) => Ok(crate::cover_cmd::run(&target, args).await),
        Command::Shard(command) => Ok(crate::shard_cmd::run(&target, command).await),
        Command::Lb(command) => Ok(crate::lb_cmd::run(&target, command).await),
        Command::Proxy(args) => Ok(crate::proxy_cmd::run(&target, args).await),
        Command::Connect { service } => {
            let service = ServiceToken::from_hex(&service)?;
            connect_service(&target, &service).await
        }
        Command::Attach { session, from } => {
            let session = SessionToken::from_hex(&session)?;
            attach(&target, &session, from).await
        }
        Command::Run {
            file,
            manifest,
            entry,
            args,
        } => {
            let upload = read_function(&file, manifest.as_deref())?;
            let started = async {
                let mut conn = Connection::connect(&target).await?;
                let (_, token) = conn
                    .store_with_manifest(&upload.filename, &upload.source, &upload.manifest)
                    .await?;
                conn.invoke_service(&token, &entry, &args_to_json(&args))
                    .await
            }
            .await;
            match started {
                Ok((session, service)) => {
                    if let Some(service) = service {
                        eprintln!("service token (for `bento connect`): {}", service.to_hex());
                    }
                    attach(&target, &session, None).await
                }
                Err(e) => Ok(report(&e)),
            }
        }
        Command::Kill { session } => {
            let session = SessionToken::from_hex(&session)?;
            let result = async {
                let mut conn = Connection::connect(&target).await?;
                conn.kill(&session).await
            }
            .await;
            match result {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => Ok(report(&e)),
            }
        }
        Command::Status => {
            let result = async {
                let mut conn = Connection::connect(&target).await?;
                conn.status().await
            }
            .await;
            match result {
                Ok(status) => {
                    print_line(&serde_json::to_string_pretty(&status)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(report(&e)),
            }
        }
        Command::Worker { .. }
        | Command::Runtime(_)
        | Command::Policy(_)
        | Command::Attest(_)
        | Command::Boxes(_) => unreachable_command(),
    }
}

fn unreachable_command() -> anyhow::Result<ExitCode> {
    bail!("this command does not run inside the async runtime")
}

async fn bench_dispatch(args: crate::bench::BenchArgs) -> anyhow::Result<ExitCode> {
    let clean = match args.mode.clone() {
        Some(crate::BenchMode::Soak(soak)) => crate::bench_soak::run(soak).await?,
        Some(crate::BenchMode::Load(load)) => crate::bench_load::run(load).await?,
        Some(crate::BenchMode::Crash(crash)) => crate::bench_crash::run(crash).await?,
        None => {
            crate::bench::run(args).await?;
            true
        }
    };
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

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

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
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
                while crate::testnet_cmd::pid_alive(pid) {
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

/// Forward stdin to a service channel, write what the function sends to stdout.
async fn connect_service(target: &Target, service: &ServiceToken) -> anyhow::Result<ExitCode> {
    let channel = match Connection::connect(target).await {
        Ok(conn) => conn.connect_service(service).await,
        Err(e) => Err(e),
    };
    let (mut reader, mut writer) = match channel {
        Ok(channel) => channel.into_split(),
        Err(e) => return Ok(report(&e)),
    };
    let stdin_task = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = writer.end_input().await;
                    // Keep the write half open: closing it would tell the
                    // box this client left before the function answered.
                    return writer;
                }
                Ok(n) => {
                    if writer.send(&buf[..n]).await.is_err() {
                        return writer;
                    }
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let result = loop {
        match reader.next().await {
            Ok(Some(data)) => {
                stdout.write_all(&data).await?;
                stdout.flush().await?;
            }
            Ok(None) => break Ok(ExitCode::SUCCESS),
            Err(e) => break Err(e),
        }
    };
    stdin_task.abort();
    match result {
        Ok(code) => Ok(code),
        Err(e) => Ok(report(&e)),
    }
}

/// Forward stdin to the session, write its output to stdout.
async fn attach(
    target: &Target,
    session: &SessionToken,
    from: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let attachment = match Connection::connect(target).await {
        Ok(conn) => conn.attach(session, from).await,
        Err(e) => Err(e),
    };
    let mut attachment: Attachment = match attachment {
        Ok(a) => a,
        Err(e) => return Ok(report(&e)),
    };
    let input = attachment.input();
    let stdin_task = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = input.end().await;
                    return;
                }
                Ok(n) => {
                    if input
                        .send(bytes::Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    // Registered now, not when first polled: `select!` may not poll a
    // ctrl_c() future while output keeps arriving, and an unregistered
    // SIGINT would kill the process instead of detaching.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut stdout = tokio::io::stdout();
    let result = loop {
        tokio::select! {
            next = attachment.next() => match next {
                Ok(Some(data)) => {
                    stdout.write_all(&data).await?;
                    stdout.flush().await?;
                }
                Ok(None) => break Ok(ExitCode::SUCCESS),
                Err(e) => break Err(e),
            },
            _ = interrupt.recv() => {
                stdin_task.abort();
                let offset = attachment.detach().await.unwrap_or(0);
                eprintln!(
                    "detached at output offset {offset}; the session keeps running. Re-attach with: bento attach {}",
                    session.to_hex()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    };
    stdin_task.abort();
    attachment.close().await;
    match result {
        Ok(code) => Ok(code),
        Err(e) => Ok(report(&e)),
    }
}
