//! `--sealed`: the CLI's side of sealed uploads (docs/attestation.md, "The
//! sealed channel"). Before anything is uploaded the client fetches and
//! verifies the box's evidence and takes the worker's channel key from it;
//! `bento attach`/`kill` recognise a sealed session token by its length.

use std::process::ExitCode;

use bento_client::{
    Attachment, ClientError, Connection, SealedAttachment, SealedSessionToken, Target, TeeKind,
};
use bento_protocol::SessionToken;
use bytes::Bytes;

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

/// A session token as the user wrote it: plain (64 hex digits) or sealed
/// (128).
pub enum AnySessionToken {
    Plain(SessionToken),
    Sealed(Box<SealedSessionToken>),
}

impl AnySessionToken {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match SealedSessionToken::from_hex(text) {
            Some(sealed) => Ok(Self::Sealed(Box::new(sealed))),
            None => Ok(Self::Plain(SessionToken::from_hex(text)?)),
        }
    }

    /// The box's session token (what `kill` sends).
    pub fn session(&self) -> &SessionToken {
        match self {
            Self::Plain(token) => token,
            Self::Sealed(token) => &token.session,
        }
    }

    /// What to print to re-attach.
    pub fn to_hex(&self) -> String {
        match self {
            Self::Plain(token) => token.to_hex(),
            Self::Sealed(token) => token.to_hex(),
        }
    }
}

/// An attachment, sealed or not.
pub enum AnyAttachment {
    Plain(Attachment),
    Sealed(Box<SealedAttachment>),
}

/// Its input side.
pub enum AnyInput {
    Plain(bento_client::InputSender),
    Sealed(bento_client::SealedInputSender),
}

impl AnyInput {
    pub async fn send(&self, data: Bytes) -> Result<(), ClientError> {
        match self {
            Self::Plain(input) => input.send(data).await,
            Self::Sealed(input) => input.send(data).await,
        }
    }

    pub async fn end(&self) -> Result<(), ClientError> {
        match self {
            Self::Plain(input) => input.end().await,
            Self::Sealed(input) => input.end().await,
        }
    }
}

impl AnyAttachment {
    /// Attach; a plain session may pad its own direction with `pad` (a
    /// sealed one is never asked to: see [`cannot_shape_sealed`]).
    pub async fn attach(
        target: &Target,
        token: &AnySessionToken,
        from: Option<u64>,
        pad: Option<bento_client::Defense>,
    ) -> Result<Self, ClientError> {
        let conn = Connection::connect(target).await?;
        let padding = pad.map(|d| (d, bento_client::CLIENT_MAX_PADDING_BYTES));
        match token {
            AnySessionToken::Plain(token) => {
                Ok(Self::Plain(conn.attach_shaped(token, from, padding).await?))
            }
            AnySessionToken::Sealed(token) => Ok(Self::Sealed(Box::new(
                conn.attach_sealed(token, from).await?,
            ))),
        }
    }

    pub fn input(&self) -> AnyInput {
        match self {
            Self::Plain(a) => AnyInput::Plain(a.input()),
            Self::Sealed(a) => AnyInput::Sealed(a.input()),
        }
    }

    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        match self {
            Self::Plain(a) => a.next().await,
            Self::Sealed(a) => a.next().await,
        }
    }

    pub async fn detach(self) -> Result<u64, ClientError> {
        match self {
            Self::Plain(a) => a.detach().await,
            Self::Sealed(a) => a.detach().await,
        }
    }

    pub async fn close(self) {
        match self {
            Self::Plain(a) => a.close().await,
            Self::Sealed(a) => a.close().await,
        }
    }
}
