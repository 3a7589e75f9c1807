//! Sealed uploads: the function, the call, the input and the output
//! encrypted end to end between this client and the box's worker, whose
//! key the attestation evidence binds (docs/attestation.md, "The sealed
//! channel"). The box's server process relays ciphertext only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bento_attest::{
    INPUT_RECORD_OVERHEAD, OutputOpener, ReplySealer, SESSION_SECRET_BYTES, SealError, SealedCall,
    SealedFunction, SessionKeys,
};
use bento_protocol::{Frame, InvokeToken, MAX_DATA_LEN, ServiceToken, SessionToken, TOKEN_BYTES};
use bytes::Bytes;
use zeroize::Zeroizing;

use crate::{Attachment, ClientError, Connection, InputSender, Stored, lifetime_secs, remote};

/// A sealed session's capability: the box's session token plus the secret
/// the session's keys derive from, which never leaves the client. Written
/// as 128 hexadecimal digits (token, then secret).
#[derive(Clone)]
pub struct SealedSessionToken {
    /// The box's session token (attach, kill).
    pub session: SessionToken,
    secret: Zeroizing<[u8; SESSION_SECRET_BYTES]>,
}

impl std::fmt::Debug for SealedSessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedSessionToken(..)")
    }
}

impl SealedSessionToken {
    /// 128 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        format!("{}{}", self.session.to_hex(), hex::encode(*self.secret))
    }

    /// Parse [`Self::to_hex`]'s form; `None` for anything else (e.g. a
    /// plain 64-digit session token).
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).ok()?);
        if bytes.len() != TOKEN_BYTES + SESSION_SECRET_BYTES {
            return None;
        }
        let mut token = [0u8; TOKEN_BYTES];
        token.copy_from_slice(&bytes[..TOKEN_BYTES]);
        let mut secret = Zeroizing::new([0u8; SESSION_SECRET_BYTES]);
        secret.copy_from_slice(&bytes[TOKEN_BYTES..]);
        Some(Self {
            session: SessionToken::from_bytes(token),
            secret,
        })
    }

    fn keys(&self) -> SessionKeys {
        SessionKeys::from_secret(&self.secret)
    }
}

/// An error frame whose text the worker sealed, opened with `sealer`.
fn open_remote(error: ClientError, sealer: &ReplySealer) -> ClientError {
    match error {
        ClientError::Remote { code, message } => match sealer.open(&message) {
            Ok(message) => ClientError::Remote { code, message },
            Err(e) => ClientError::Sealed(e),
        },
        other => other,
    }
}

impl Connection {
    /// Store a function sealed to the worker key `channel_key` (from
    /// verified evidence). The manifest goes in the clear: the box checks
    /// it against its policy.
    pub async fn store_sealed(
        &mut self,
        channel_key: &[u8; 32],
        filename: &str,
        source: &str,
        manifest: &str,
        lifetime: Option<Duration>,
    ) -> Result<Stored, ClientError> {
        let function = SealedFunction {
            filename: filename.into(),
            source: source.into(),
        };
        let (envelope, reply) = bento_attest::seal_function(channel_key, &function, manifest)?;
        self.send(&Frame::SealedStore {
            manifest: manifest.into(),
            lifetime_s: lifetime_secs(lifetime),
            envelope: envelope.into(),
        })
        .await?;
        match self.recv().await? {
            Frame::Stored {
                function_id,
                invoke_token,
                lifetime_s,
            } => Ok(Stored {
                function_id,
                invoke_token,
                lifetime: Duration::from_secs(lifetime_s.unwrap_or(0)),
            }),
            other => Err(open_remote(remote(other), &reply)),
        }
    }

    /// Start a session with its call sealed to `channel_key`; its input and
    /// output are then sealed too. Returns the sealed session token (keep
    /// it: without its secret the output cannot be read) and the service
    /// token, if any.
    pub async fn invoke_sealed(
        &mut self,
        channel_key: &[u8; 32],
        token: &InvokeToken,
        entry: &str,
        args_json: &str,
    ) -> Result<(SealedSessionToken, Option<ServiceToken>), ClientError> {
        let call = SealedCall {
            entry: entry.into(),
            args_json: args_json.into(),
        };
        let (envelope, secret) = bento_attest::seal_call(channel_key, &call)?;
        self.send(&Frame::SealedInvoke {
            invoke_token: token.clone(),
            envelope: envelope.into(),
        })
        .await?;
        match self.recv().await? {
            Frame::Invoked {
                session_token,
                service_token,
            } => Ok((
                SealedSessionToken {
                    session: session_token,
                    secret,
                },
                service_token,
            )),
            other => Err(remote(other)),
        }
    }

    /// Attach to a sealed session; `resume_from` must be a record boundary
    /// (an offset a sealed attachment acknowledged), `None` for the box's
    /// record of the last acknowledgement.
    pub async fn attach_sealed(
        self,
        token: &SealedSessionToken,
        resume_from: Option<u64>,
    ) -> Result<SealedAttachment, ClientError> {
        let mut inner = self.attach(&token.session, resume_from).await?;
        let offset = inner.offset();
        inner.ceiling = Some(offset);
        Ok(SealedAttachment {
            inner,
            opener: OutputOpener::new(token.keys(), offset),
            input_keys: Arc::new(token.keys()),
            input_seq: Arc::new(AtomicU64::new(first_input_seq())),
        })
    }
}

/// The first input sequence number of an attachment: the time in
/// nanoseconds, so that a later attachment (perhaps another process, which
/// cannot know how many messages earlier ones sent) continues above every
/// number used before; the worker refuses any number not above the last.
fn first_input_seq() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2))
        .max(1)
}

/// A sealed session's attachment: plaintext output, sealed input.
pub struct SealedAttachment {
    inner: Attachment,
    opener: OutputOpener,
    input_keys: Arc<SessionKeys>,
    input_seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for SealedAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedAttachment")
            .field("offset", &self.opener.boundary())
            .finish()
    }
}

/// Sends sealed input to an attached session; cheap to clone.
#[derive(Clone)]
pub struct SealedInputSender {
    inner: InputSender,
    keys: Arc<SessionKeys>,
    seq: Arc<AtomicU64>,
}

impl std::fmt::Debug for SealedInputSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedInputSender")
    }
}

/// Plaintext per sealed input record: a record must fit one `Input` frame.
const MAX_SEALED_INPUT: usize = MAX_DATA_LEN - INPUT_RECORD_OVERHEAD;

impl SealedInputSender {
    /// Send one message sealed (split into records of at most 1 MiB less
    /// the record overhead; each is one `api.recv()` for the function).
    pub async fn send(&self, data: Bytes) -> Result<(), ClientError> {
        let mut data = data;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_SEALED_INPUT));
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let record = self.keys.seal_input(seq, &chunk);
            self.inner.send(Bytes::from(record)).await?;
        }
        Ok(())
    }

    /// Close the function's input (not sealed: it carries no data).
    pub async fn end(&self) -> Result<(), ClientError> {
        self.inner.end().await
    }
}

impl SealedAttachment {
    /// A handle for sending sealed input concurrently with reading output.
    pub fn input(&self) -> SealedInputSender {
        SealedInputSender {
            inner: self.inner.input(),
            keys: self.input_keys.clone(),
            seq: self.input_seq.clone(),
        }
    }

    /// Stream offset (of the sealed stream) just past the last whole
    /// record returned: where a later attach may resume.
    pub fn offset(&self) -> u64 {
        self.opener.boundary()
    }

    /// The next plaintext output; `Ok(None)` at the end. A record that
    /// does not open is [`ClientError::Sealed`]; an error frame's sealed
    /// text (a traceback) is opened.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.inner.next().await {
                Ok(Some(ciphertext)) => {
                    let plaintext = self.opener.push(&ciphertext)?;
                    self.inner.ceiling = Some(self.opener.boundary());
                    if !plaintext.is_empty() {
                        return Ok(Some(Bytes::from(plaintext)));
                    }
                }
                Ok(None) if self.opener.has_partial() => {
                    return Err(ClientError::Sealed(SealError::Malformed(
                        "the output ended inside a record",
                    )));
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(open_remote(e, self.opener.keys().outcome())),
            }
        }
    }

    /// Everything the session outputs until its end, then close.
    pub async fn read_to_end(mut self) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(data) = self.next().await? {
            out.extend_from_slice(&data);
        }
        self.close().await;
        Ok(out)
    }

    /// Leave the session running; returns the offset a later attach
    /// resumes at (a record boundary).
    pub async fn detach(self) -> Result<u64, ClientError> {
        self.inner.detach().await
    }

    /// Close the connection (see [`Attachment::close`]).
    pub async fn close(self) {
        self.inner.close().await;
    }
}
