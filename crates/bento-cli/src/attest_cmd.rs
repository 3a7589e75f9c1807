//! `bento attest`: what a box proves; `--require-tee`/`--expect-measurement`
//! on every client command; `bento attest measure`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bento_client::{ClientError, Connection, Requirement, SnpTcb, TeeKind, TeeRequirement};
use clap::{Args, Subcommand};

use crate::exit::{EXIT_BOX, EXIT_REQUEST, report};
use crate::{Command, TargetArgs, runtime_path};

/// What every client command requires of the box (global flags).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Reaching a box (client commands)")]
pub struct AttestFlags {
    /// Refuse, before uploading anything, a box that does not prove it runs
    /// its worker in a TEE: of KIND (sgx, tdx, sev-snp) when given, of any
    /// kind when not (docs/attestation.md). The value is optional, so put
    /// the flag after positional arguments or write --require-tee=KIND.
    #[arg(
        long,
        global = true,
        value_name = "KIND",
        num_args = 0..=1,
        default_missing_value = "any",
        env = "BENTO_REQUIRE_TEE"
    )]
    pub require_tee: Option<String>,
    /// Refuse a box whose TEE measurement (SGX MRENCLAVE, TDX MRTD, SEV-SNP
    /// MEASUREMENT; hex) is not HEX. A box without a TEE proves no
    /// measurement, so it is refused.
    #[arg(
        long,
        global = true,
        value_name = "HEX",
        env = "BENTO_EXPECT_MEASUREMENT"
    )]
    pub expect_measurement: Option<String>,
    /// Refuse an SEV-SNP box whose firmware TCB is below this, level by
    /// level: bootloader=N,tee=N,snp=N,microcode=N[,fmc=N] (a level left
    /// out is not checked). Says nothing about other TEE kinds: add
    /// --require-tee=sev-snp to insist on SEV-SNP.
    #[arg(long, global = true, value_name = "LEVELS", env = "BENTO_MIN_SNP_TCB")]
    pub min_snp_tcb: Option<String>,
    /// Do not warn that the box is not attested (when nothing is required).
    #[arg(long, global = true, env = "BENTO_ALLOW_UNATTESTED")]
    pub allow_unattested: bool,
    /// Seal the function, arguments, input and output to the key of the
    /// box's worker that its attestation evidence binds (store, invoke,
    /// run; attach and kill recognise sealed session tokens by themselves).
    /// A box that offers no sealed channel is refused before anything is
    /// uploaded (docs/attestation.md).
    #[arg(long, global = true, env = "BENTO_SEALED")]
    pub sealed: bool,
}

impl AttestFlags {
    /// The requirement these flags state.
    pub fn requirement(&self) -> anyhow::Result<Requirement> {
        let tee = match self.require_tee.as_deref() {
            None => TeeRequirement::NotRequired,
            Some("any") => TeeRequirement::AnyTee,
            Some(name) => {
                let kind: TeeKind = name.parse().context("--require-tee")?;
                if kind == TeeKind::None {
                    bail!("--require-tee none requires nothing; leave the flag out");
                }
                TeeRequirement::Kind(kind)
            }
        };
        let measurement = self
            .expect_measurement
            .as_deref()
            .map(|text| hex::decode(text.trim()).context("--expect-measurement is not hex"))
            .transpose()?;
        let min_snp_tcb = self
            .min_snp_tcb
            .as_deref()
            .map(|text| {
                text.parse::<SnpTcb>()
                    .map_err(|e| anyhow::anyhow!("--min-snp-tcb: {e}"))
            })
            .transpose()?;
        Ok(Requirement {
            tee,
            measurement,
            min_snp_tcb,
        })
    }
}

/// `bento attest`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AttestArgs {
    #[command(subcommand)]
    command: Option<AttestCommand>,
    /// The box to ask (host:port or xyz.onion:port) [default: --server].
    #[arg(value_name = "BOX")]
    server: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AttestCommand {
    /// Print the measurement of a worker binary plus a precompiled runtime
    /// (the digest a box states; docs/attestation.md gives the construction).
    Measure {
        /// The worker binary [default: this bento binary, which is the worker].
        #[arg(long, value_name = "PATH")]
        worker: Option<PathBuf>,
        /// The precompiled runtime [default: as for `bento serve`].
        #[arg(long, value_name = "PATH")]
        runtime: Option<PathBuf>,
    },
}

#[allow(clippy::print_stdout)]
fn print_line(text: &str) {
    println!("{text}");
}

/// Run `bento attest`.
pub async fn run(args: AttestArgs, target_args: &TargetArgs) -> anyhow::Result<ExitCode> {
    if let Some(AttestCommand::Measure { worker, runtime }) = args.command {
        let worker = match worker {
            Some(path) => path,
            None => std::env::current_exe().context("cannot find the bento binary")?,
        };
        let runtime = runtime.unwrap_or_else(runtime_path::default_runtime);
        let m = tokio::task::spawn_blocking(move || {
            bento_attest::measure(&worker, &runtime).map(|m| (m, worker, runtime))
        })
        .await?;
        let (m, worker, runtime) = match m {
            Ok(done) => done,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_REQUEST));
            }
        };
        print_line(&m.to_string());
        eprintln!(
            "worker   sha256 {} ({} bytes) {}",
            hex::encode(m.worker_sha256),
            m.worker_len,
            worker.display()
        );
        eprintln!(
            "runtime  sha256 {} ({} bytes) {}",
            hex::encode(m.runtime_sha256),
            m.runtime_len,
            runtime.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut target = crate::commands::target(target_args);
    if let Some(server) = args.server {
        target.server = server;
    }
    let requirement = target_args.attest.requirement()?;
    let result = async {
        let mut conn = Connection::connect(&target).await?;
        conn.attest(&target, &requirement).await
    }
    .await;
    match result {
        Ok(verified) => {
            for line in verified.describe() {
                print_line(&line);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(&e)),
    }
}

/// Before a client command: refuse a box that does not prove what the
/// flags require (`Some(exit code)`), or warn once that it is not
/// attested. The check runs on its own connection just before the
/// command's; over Tor both reach the onion service whose identity the
/// evidence binds.
pub async fn preflight(
    command: &Command,
    target_args: &TargetArgs,
) -> Result<Option<[u8; 32]>, ExitCode> {
    let uploads = matches!(
        command,
        Command::Store { .. } | Command::Invoke { .. } | Command::Run { .. }
    );
    if target_args.attest.sealed
        && let Some(name) = crate::sealed_cmd::cannot_shape_sealed(command)
    {
        eprintln!(
            "error: `bento {name}` cannot shape a sealed session yet; drop --sealed or the defense"
        );
        return Err(ExitCode::from(EXIT_REQUEST));
    }
    if target_args.attest.sealed && uploads {
        return crate::sealed_cmd::channel_key(target_args).await.map(Some);
    }
    if let (true, Some(name)) = (
        target_args.attest.sealed,
        crate::sealed_cmd::cannot_seal(command),
    ) {
        eprintln!(
            "error: `bento {name}` cannot seal what it sends; it refuses --sealed rather than send in the clear"
        );
        return Err(ExitCode::from(EXIT_REQUEST));
    }
    preflight_unsealed(command, target_args)
        .await
        .map_or(Ok(None), Err)
}

async fn preflight_unsealed(command: &Command, target_args: &TargetArgs) -> Option<ExitCode> {
    let talks_to_box = matches!(
        command,
        Command::Store { .. }
            | Command::Renew { .. }
            | Command::Delete { .. }
            | Command::Invoke { .. }
            | Command::Attach { .. }
            | Command::Run { .. }
            | Command::Connect { .. }
            | Command::Kill { .. }
            | Command::Status
    );
    // Commands that reach several boxes do not check evidence yet: a
    // requirement given to them must not be silently ignored.
    let composite = match command {
        Command::Browse(_) => Some("browse"),
        Command::Drop(_) => Some("drop"),
        Command::Cover(_) => Some("cover"),
        Command::Shard(_) => Some("shard"),
        Command::Lb(_) => Some("lb"),
        Command::Proxy(_) => Some("proxy"),
        _ => None,
    };
    if !talks_to_box && composite.is_none() {
        return None;
    }
    let requirement = match target_args.attest.requirement() {
        Ok(requirement) => requirement,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Some(ExitCode::from(EXIT_REQUEST));
        }
    };
    if let Some(name) = composite {
        if requirement != Requirement::default() {
            eprintln!(
                "error: `bento {name}` cannot check attestation yet; it refuses \
                 --require-tee, --expect-measurement and --min-snp-tcb rather than ignore them"
            );
            return Some(ExitCode::from(EXIT_REQUEST));
        }
        return None;
    }
    let warn_unattested = || {
        if !target_args.attest.allow_unattested {
            eprintln!(
                "warning: the box is not attested: its operator can read your functions, arguments, input and output (--require-tee to insist on a TEE, --allow-unattested to silence)"
            );
        }
    };
    if requirement == Requirement::default() {
        warn_unattested();
        return None;
    }
    let target = crate::commands::target(target_args);
    match Connection::connect_attested(&target, &requirement).await {
        // A requirement that does not ask for a TEE (--min-snp-tcb alone
        // judges only SEV-SNP evidence) lets an unattested box through:
        // the user is still told.
        Ok((_, verified)) => {
            if verified.kind == TeeKind::None {
                warn_unattested();
            }
            None
        }
        Err(e @ ClientError::Attestation(_)) => {
            eprintln!("error: {e}; nothing was sent to it");
            Some(ExitCode::from(EXIT_BOX))
        }
        Err(e) => Some(report(&e)),
    }
}
