//! `--sealed`: the CLI's side of sealed uploads (docs/attestation.md, "The
//! sealed channel"). Before anything is uploaded the client fetches and
//! verifies the box's evidence and takes the worker's channel key from it;
//! `bento attach`/`kill` recognise a sealed session token by its length.

use std::process::ExitCode;

use bento_client::{ClientError, Connection, TeeKind};

use crate::TargetArgs;
use crate::exit::{EXIT_BOX, EXIT_REQUEST, report};

/// The one line a user of `--sealed` with a box without a TEE reads.
pub(crate) const NO_TEE_SEALED_WARNING: &str = "warning: sealed to a key the box states but no TEE proves: its operator can read your functions, arguments, input and output";

/// Attest the box and return its worker's channel key, or refuse the box
/// (nothing uploaded) with the exit code to end with.
pub async fn channel_key(target_args: &TargetArgs) -> Result<[u8; 32], ExitCode> {
    let requirement = match target_args.attest.requirement() {
        Ok(requirement) => requirement,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Err(ExitCode::from(EXIT_REQUEST));
        }
    };
    let target = crate::commands::target(target_args);
    let verified = match Connection::connect_attested(&target, &requirement).await {
        Ok((_, verified)) => verified,
        Err(e @ ClientError::Attestation(_)) => {
            eprintln!("error: {e}; nothing was sent to it");
            return Err(ExitCode::from(EXIT_BOX));
        }
        Err(e) => return Err(report(&e)),
    };
    if verified.channel_key == [0; 32] {
        eprintln!(
            "error: {}; nothing was sent to it",
            ClientError::NoSealedChannel
        );
        return Err(ExitCode::from(EXIT_BOX));
    }
    if verified.kind == TeeKind::None && !target_args.attest.allow_unattested {
        eprintln!("{NO_TEE_SEALED_WARNING}");
    }
    Ok(verified.channel_key)
}

/// Commands that send users' data but cannot seal it (service channels,
/// the functions' composite commands): `--sealed` is refused for them
/// rather than ignored. `None` for the others (sealing applies, or they
/// send nothing secret: renew, delete, kill, status, attach).
pub fn cannot_seal(command: &crate::Command) -> Option<&'static str> {
    use crate::Command;
    match command {
        Command::Connect { .. } => Some("connect"),
        Command::Browse(_) => Some("browse"),
        Command::Drop(_) => Some("drop"),
        Command::Cover(_) => Some("cover"),
        Command::Shard(_) => Some("shard"),
        Command::Lb(_) => Some("lb"),
        Command::Proxy(_) => Some("proxy"),
        _ => None,
    }
}

/// Commands asked to shape traffic (`--defense`, `--pad`): the sealed
/// path has no defense yet, so `--sealed` with one is refused, never
/// silently unshaped or unsealed.
pub fn cannot_shape_sealed(command: &crate::Command) -> Option<&'static str> {
    use crate::Command;
    match command {
        Command::Run {
            defense: Some(_), ..
        } => Some("run --defense"),
        Command::Invoke {
            defense: Some(_), ..
        } => Some("invoke --defense"),
        Command::Attach { pad: Some(_), .. } => Some("attach --pad"),
        _ => None,
    }
}
