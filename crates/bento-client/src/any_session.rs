//! Sessions that may be sealed or not, behind one type each: the token a
//! user holds, the attachment and its input side; starting a session of a
//! stored function either way; and running a function once, with the one
//! round trip `Run` where it can and store-then-invoke where it cannot.

use bento_protocol::{ErrorCode, InvokeToken, ServiceToken, SessionToken, TokenParseError};
use bytes::Bytes;

use crate::{
    Attachment, CLIENT_MAX_PADDING_BYTES, ClientError, Connection, Defense, InputSender,
    SealedAttachment, SealedInputSender, SealedSessionToken, Target,
};

/// A session token as the user wrote it: plain (64 hex digits) or sealed
/// (128: it carries the session's secret).
pub enum AnySessionToken {
    /// A plain session's token.
    Plain(SessionToken),
    /// A sealed session's token and secret.
    Sealed(Box<SealedSessionToken>),
}

impl AnySessionToken {
    /// Either kind, told apart by length.
    pub fn parse(text: &str) -> Result<Self, TokenParseError> {
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
    /// To a plain session.
    Plain(Attachment),
    /// To a sealed session.
    Sealed(Box<SealedAttachment>),
}

/// Its input side.
pub enum AnyInput {
    /// Of a plain session.
    Plain(InputSender),
    /// Of a sealed session.
    Sealed(SealedInputSender),
}

impl AnyInput {
    /// Send one message to the function.
    pub async fn send(&self, data: Bytes) -> Result<(), ClientError> {
        match self {
            Self::Plain(input) => input.send(data).await,
            Self::Sealed(input) => input.send(data).await,
        }
    }

    /// End the function's input.
    pub async fn end(&self) -> Result<(), ClientError> {
        match self {
            Self::Plain(input) => input.end().await,
            Self::Sealed(input) => input.end().await,
        }
    }
}

impl AnyAttachment {
    /// Attach; a plain session may pad its own direction with `pad` (a
    /// sealed one is never asked to: the CLI refuses `--sealed` with
    /// `--pad`).
    pub async fn attach(
        target: &Target,
        token: &AnySessionToken,
        from: Option<u64>,
        pad: Option<Defense>,
    ) -> Result<Self, ClientError> {
        let conn = Connection::connect(target).await?;
        let padding = pad.map(|d| (d, CLIENT_MAX_PADDING_BYTES));
        match token {
            AnySessionToken::Plain(token) => {
                Ok(Self::Plain(conn.attach_shaped(token, from, padding).await?))
            }
            AnySessionToken::Sealed(token) => Ok(Self::Sealed(Box::new(
                conn.attach_sealed(token, from).await?,
            ))),
        }
    }

    /// Its input side.
    pub fn input(&self) -> AnyInput {
        match self {
            Self::Plain(a) => AnyInput::Plain(a.input()),
            Self::Sealed(a) => AnyInput::Sealed(a.input()),
        }
    }

    /// The next output, `None` once the function ended well.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        match self {
            Self::Plain(a) => a.next().await,
            Self::Sealed(a) => a.next().await,
        }
    }

    /// Detach, leaving the session running; the output offset reached.
    pub async fn detach(self) -> Result<u64, ClientError> {
        match self {
            Self::Plain(a) => a.detach().await,
            Self::Sealed(a) => a.detach().await,
        }
    }

    /// Close the connection.
    pub async fn close(self) {
        match self {
            Self::Plain(a) => a.close().await,
            Self::Sealed(a) => a.close().await,
        }
    }
}

impl Connection {
    /// Start a session of a stored function, sealed to `channel_key` when
    /// given, else shaped by `defense` when given (the two are never asked
    /// for together): the session token (a sealed one carries its secret)
    /// and the service token, if any.
    pub async fn invoke_any(
        &mut self,
        channel_key: Option<&[u8; 32]>,
        token: &InvokeToken,
        entry: &str,
        args_json: &str,
        defense: Option<Defense>,
    ) -> Result<(AnySessionToken, Option<ServiceToken>), ClientError> {
        match channel_key {
            Some(key) => {
                let (session, service) = self.invoke_sealed(key, token, entry, args_json).await?;
                Ok((AnySessionToken::Sealed(Box::new(session)), service))
            }
            None => {
                let (session, service) = self
                    .invoke_with_defense(token, entry, args_json, defense)
                    .await?;
                Ok((AnySessionToken::Plain(session), service))
            }
        }
    }
}

/// A function to upload: its file name, source and manifest (TOML; empty
/// for the minimum).
#[derive(Debug, Clone)]
pub struct Upload {
    /// The file name the box shows in tracebacks.
    pub filename: String,
    /// The Python source.
    pub source: String,
    /// The manifest.
    pub manifest: String,
}

/// A started run: its session, its service token if any, and the
/// attachment when the run's own connection already is one.
pub type StartedRun = (AnySessionToken, Option<ServiceToken>, Option<AnyAttachment>);

/// Run `upload`'s `entry(*args)` once. Plain and unshaped: one `Run`
/// round trip (nothing is stored; the connection becomes the
/// attachment), or store-then-invoke on a box from before `Run`. Sealed
/// (to `channel_key`) or shaped (by `defense`, which `Run` cannot carry):
/// store, sealed or not, then invoke; the caller attaches.
pub async fn start_run(
    target: &Target,
    channel_key: Option<&[u8; 32]>,
    upload: &Upload,
    entry: &str,
    args_json: &str,
    defense: Option<Defense>,
) -> Result<StartedRun, ClientError> {
    // Store (sealed or not), invoke: the path for a sealed run and for a
    // box that predates `Run`.
    let store_and_invoke = || async {
        let mut conn = Connection::connect(target).await?;
        let token = match channel_key {
            Some(key) => {
                conn.store_sealed(
                    key,
                    &upload.filename,
                    &upload.source,
                    &upload.manifest,
                    None,
                )
                .await?
                .invoke_token
            }
            None => {
                conn.store_with_manifest(&upload.filename, &upload.source, &upload.manifest)
                    .await?
                    .1
            }
        };
        conn.invoke_any(channel_key, &token, entry, args_json, defense)
            .await
    };
    // Plain: one round trip; the box runs the source without storing it
    // and this connection becomes the attachment. A shaped run asks for
    // its defense with `Invoke` (`Run` has no defense field) and pads its
    // own direction too.
    let run = match (channel_key, defense) {
        (Some(_), _) | (None, Some(_)) => None,
        (None, None) => Some(
            async {
                Connection::connect(target)
                    .await?
                    .run(
                        &upload.filename,
                        &upload.source,
                        &upload.manifest,
                        entry,
                        args_json,
                    )
                    .await
            }
            .await,
        ),
    };
    match run {
        Some(Ok((session, service, attachment))) => Ok((
            AnySessionToken::Plain(session),
            service,
            Some(AnyAttachment::Plain(attachment)),
        )),
        // A box from before `Run` does not know the frame.
        Some(Err(ClientError::Remote {
            code: ErrorCode::MalformedFrame,
            ..
        }))
        | None => store_and_invoke()
            .await
            .map(|(session, service)| (session, service, None)),
        Some(Err(e)) => Err(e),
    }
}
