//! The subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bento_client::any_session::{AnyAttachment, AnySessionToken, Upload};
use bento_client::{Connection, Target};
use bento_protocol::{InvokeToken, ServiceToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exit::{EXIT_FUNCTION, EXIT_REQUEST, read_text, report};
use crate::{Command, TargetArgs, TestnetCommand};

/// `bento worker`: load the runtime, jail the process (unless `jail` is
/// `None`; else `jail` is the instance storage directory), serve the pipe
/// protocol on stdio.
pub fn worker(
    runtime: &Path,
    jail: Option<PathBuf>,
    prewarm: usize,
    channel_key: Option<&Path>,
    nice: u8,
) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsFd;
    // First, before any thread starts: every thread inherits it.
    bento_worker::lower_worker_priority(nice)
        .with_context(|| format!("cannot lower the worker's priority by {nice} nice levels"))?;
    let runtime = bento_sandbox::PythonRuntime::load_precompiled(runtime)?;
    // Before the jail, which leaves the worker no access to the data
    // directory.
    let channel = channel_key
        .map(bento_attest::ChannelSecret::load_or_create)
        .transpose()?;
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
    bento_worker::run_worker(runtime, prewarm, channel, stdin, stdout)?;
    Ok(ExitCode::SUCCESS)
}

/// `bento policy check`.
pub fn policy_check(manifest: &Path, policy: Option<&Path>) -> anyhow::Result<ExitCode> {
    // An unreadable file is the user's input (exit 2), like a bad one.
    let manifest_text = read_text(manifest)?;
    let policy_text = policy.map(read_text).transpose()?;
    let parsed = bento_policy::Manifest::from_toml(&manifest_text).and_then(|manifest| {
        let policy = match &policy_text {
            Some(text) => bento_policy::BoxPolicy::from_toml(text)?,
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
    // The manifest's defense is refused at store like any violation.
    let defense = policy
        .shaping
        .admit_manifest(manifest.defense)
        .err()
        .map(|refused| format!("asks for a defense: {refused}"));
    match (bento_policy::admit(&manifest, &policy, &[]), defense) {
        (Ok(grant), None) => {
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
        (admitted, defense) => {
            eprintln!("the manifest does not fit the policy:");
            let violations = admitted.err().unwrap_or_default();
            for violation in violations.iter().map(ToString::to_string).chain(defense) {
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

/// The box and how to reach it (the route `tor_route::apply` set up).
pub(crate) fn target(args: &TargetArgs) -> Target {
    Target {
        server: args.server.clone(),
        socks: args.socks.clone(),
        dialer: args.dialer.clone(),
    }
}

/// Whether `command` talks to a box as a client (so `--tor` applies):
/// not the box's own commands, the local tools, the test network, the
/// benchmarks (which start their own boxes) or `boxes` (which finds boxes
/// through a local tor's ControlPort).
pub(crate) fn reaches_a_box(command: &Command) -> bool {
    !matches!(
        command,
        Command::Serve(_)
            | Command::Doctor(_)
            | Command::Worker { .. }
            | Command::Runtime(_)
            | Command::Policy(_)
            | Command::Testnet(_)
            | Command::Bench(_)
            | Command::Boxes(_)
    )
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

/// Read a function and its manifest: `manifest` if given, else the `.toml`
/// next to the source if there is one, else none (the minimum).
fn read_function(file: &Path, manifest: Option<&Path>) -> anyhow::Result<Upload> {
    let source = crate::exit::read_text(file)?;
    let filename = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function.py".into());
    let beside = file.with_extension("toml");
    let manifest = match manifest {
        Some(path) => crate::exit::read_text(path)?,
        None if beside.is_file() => crate::exit::read_text(&beside)?,
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

/// Run a client command; `channel_key` is the verified worker key to seal
/// to (`--sealed`), `None` for plain requests.
pub async fn dispatch(
    command: Command,
    target_args: TargetArgs,
    channel_key: Option<[u8; 32]>,
) -> anyhow::Result<ExitCode> {
    let target = target(&target_args);
    match command {
        Command::Serve(args) => crate::serve::serve(*args).await,
        Command::Doctor(args) => crate::doctor_cmd::run(&args).await,
        Command::Testnet(command) => match command {
            TestnetCommand::Up(args) => crate::testnet_cmd::up(args).await,
            TestnetCommand::Status { dir, json } => crate::testnet_cmd::status(&dir.path(), json),
            TestnetCommand::Down { dir } => crate::testnet_cmd::down(&dir.path()),
            TestnetCommand::Bench(args) => crate::testnet_cmd::bench(args).await,
        },
        Command::Bench(args) => crate::bench_cmd::run(args).await,
        Command::Store {
            file,
            manifest,
            lifetime,
            json,
        } => {
            let upload = read_function(&file, manifest.as_deref())?;
            let result = async {
                let mut conn = Connection::connect(&target).await?;
                match &channel_key {
                    Some(key) => {
                        conn.store_sealed(
                            key,
                            &upload.filename,
                            &upload.source,
                            &upload.manifest,
                            lifetime,
                        )
                        .await
                    }
                    None => {
                        conn.store_for(&upload.filename, &upload.source, &upload.manifest, lifetime)
                            .await
                    }
                }
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
            defense,
            args,
        } => {
            let token = InvokeToken::from_hex(&token)?;
            let result = async {
                let mut conn = Connection::connect(&target).await?;
                conn.invoke_any(
                    channel_key.as_ref(),
                    &token,
                    &entry,
                    &args_to_json(&args),
                    defense,
                )
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
        Command::Attach { session, from, pad } => {
            let session = AnySessionToken::parse(&session)?;
            attach(&target, &session, from, pad).await
        }
        Command::Run {
            file,
            manifest,
            entry,
            defense,
            args,
        } => {
            let upload = read_function(&file, manifest.as_deref())?;
            let args_json = args_to_json(&args);
            let started = bento_client::any_session::start_run(
                &target,
                channel_key.as_ref(),
                &upload,
                &entry,
                &args_json,
                defense,
            )
            .await;
            let (session, service, attachment) = match started {
                Ok(started) => started,
                Err(e) => return Ok(report(&e)),
            };
            if let Some(service) = service {
                eprintln!("service token (for `bento connect`): {}", service.to_hex());
            }
            match attachment {
                Some(attachment) => stream_attachment(attachment, &session).await,
                None => attach(&target, &session, None, defense).await,
            }
        }
        Command::Kill { session } => {
            let session = AnySessionToken::parse(&session)?.session().clone();
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
    session: &AnySessionToken,
    from: Option<u64>,
    pad: Option<bento_client::Defense>,
) -> anyhow::Result<ExitCode> {
    let attachment = AnyAttachment::attach(target, session, from, pad).await;
    match attachment {
        Ok(attachment) => stream_attachment(attachment, session).await,
        Err(e) => Ok(report(&e)),
    }
}

/// Forward stdin to the session and its output to stdout until it ends;
/// Ctrl-C detaches (the session keeps running).
async fn stream_attachment(
    mut attachment: AnyAttachment,
    session: &AnySessionToken,
) -> anyhow::Result<ExitCode> {
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
