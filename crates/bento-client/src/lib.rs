//! Client library for Bento boxes.
//!
//! Connects directly over TCP, through a SOCKS5 proxy such as Tor's
//! SocksPort (with the proxy resolving names, so `.onion` boxes work), or
//! through a [`Dialer`] set on the [`Target`] (the embedded Tor client,
//! `bento-arti`, is one), and
//! speaks the wire protocol: store (with a lifetime), renew, delete,
//! invoke, attach, kill, status, and attest ([`Connection::attest`]: what
//! the box proves about the code that runs your functions).
//!
//! An [`Attachment`] streams a session's output. Output returned by
//! [`Attachment::next`] counts as consumed once `next` is called again (or
//! the attachment detaches or ends): the client then acknowledges it, and
//! the box never sends it again. A client that stops in between gets the
//! unacknowledged bytes again on re-attach, so nothing is lost.

pub mod any_session;
mod attest;
pub mod discovery;
mod sealed;
mod socks;
mod transport;

pub use attest::{AttestError, Requirement, SnpTcb, TeeKind, TeeRequirement, Verified};
pub use bento_attest::SealError;
pub use sealed::{SealedAttachment, SealedInputSender, SealedSessionToken};
pub use transport::{ByteStream, DialError, Dialer};

use bento_protocol::{
    ErrorCode, FRAME_HEADER_LEN, Frame, FrameDecoder, FunctionId, InvokeToken, MAX_DATA_LEN,
    MIN_PROTOCOL_VERSION, PADDING_VERSION, PROTOCOL_VERSION, ProtocolError, ServiceToken,
    SessionToken,
};
pub use bento_shaping::Defense;
use bento_shaping::{Shaper, Side};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport::{Reader, Writer};

use tokio::sync::{mpsc, oneshot, watch};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting or talking to the box failed.
    #[error("connection to the box failed: {0}")]
    Io(std::io::Error),
    /// The SOCKS proxy refused or failed.
    #[error("SOCKS proxy: {0}")]
    Socks(String),
    /// The box's address is not `HOST:PORT`.
    #[error("the box's address {0:?} is not HOST:PORT")]
    BadServer(String),
    /// The target's [`Dialer`] (the embedded Tor client) could not open a
    /// stream to the box.
    #[error("{0}")]
    Dial(DialError),
    /// The box sent bytes that are not valid protocol.
    #[error("the box sent an invalid frame: {0}")]
    Protocol(ProtocolError),
    /// The box answered with an error frame.
    #[error("{message}")]
    Remote {
        /// The error code.
        code: ErrorCode,
        /// The box's explanation (for exceptions, the traceback).
        message: String,
    },
    /// The box answered with a frame that does not fit the request.
    #[error("unexpected reply from the box: {0}")]
    Unexpected(String),
    /// The box closed the connection.
    #[error("the box closed the connection")]
    Closed,
    /// The box does not prove what the client requires (or its evidence
    /// is malformed, replayed, or for another box); nothing was uploaded.
    #[error("box refused: {0}")]
    Attestation(AttestError),
    /// A defense was asked for, but the box predates padding (it speaks
    /// only protocol version 1); nothing was invoked.
    #[error("this box does not support traffic-analysis defenses (it speaks protocol version {0})")]
    NoPadding(u16),
    /// Sealed data from the box did not open: changed, replayed, reordered
    /// or from another session (docs/attestation.md).
    #[error("sealed output: {0}")]
    Sealed(SealError),
    /// `--sealed` with a box whose evidence binds no sealed-channel key;
    /// nothing was uploaded.
    #[error("box refused: it offers no sealed channel (its evidence binds no channel key)")]
    NoSealedChannel,
}

// The cause is in the message, so it is not also a `source()`
// (docs/design.md, "Errors").
impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> Self {
        ClientError::Io(error)
    }
}

impl From<ProtocolError> for ClientError {
    fn from(error: ProtocolError) -> Self {
        ClientError::Protocol(error)
    }
}

impl From<AttestError> for ClientError {
    fn from(error: AttestError) -> Self {
        ClientError::Attestation(error)
    }
}

impl From<SealError> for ClientError {
    fn from(error: SealError) -> Self {
        ClientError::Sealed(error)
    }
}

/// Most padding a client sends on one attachment when it pads its own
/// direction: the box's default `[shaping] max_padding_mib`, so a client
/// never costs the box more than the box's own padding would.
pub const CLIENT_MAX_PADDING_BYTES: u64 = bento_policy::DEFAULT_MAX_PADDING_MIB * 1024 * 1024;

/// A function the box stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Public content hash.
    pub function_id: FunctionId,
    /// Secret capability to invoke, renew and delete it.
    pub invoke_token: InvokeToken,
    /// How long from now the box keeps it (unless renewed or deleted).
    pub lifetime: Duration,
}

/// Where the box is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` of the box (a `.onion` name needs a SOCKS proxy).
    pub server: String,
    /// `host:port` of a SOCKS5 proxy (Tor's SocksPort), if any.
    pub socks: Option<String>,
    /// Opens the stream instead of TCP or `socks` when set: the embedded
    /// Tor client, which resolves `.onion` names itself.
    pub dialer: Option<Arc<dyn Dialer>>,
}

impl Target {
    /// Another box, reached the same way (same proxy or dialer).
    pub fn with_server(&self, server: impl Into<String>) -> Target {
        Target {
            server: server.into(),
            ..self.clone()
        }
    }
}

/// A connection to a box, past the version handshake.
#[derive(Debug)]
pub struct Connection {
    reader: Reader,
    writer: Writer,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// The box's software string from `Welcome`.
    pub software: String,
    /// The protocol version agreed with the box.
    version: u16,
}

/// A lifetime on the wire: whole seconds, at least 1; 0 asks for the box's
/// default.
fn lifetime_secs(lifetime: Option<Duration>) -> u64 {
    lifetime.map_or(0, |d| d.as_secs().max(1))
}

fn remote(frame: Frame) -> ClientError {
    match frame {
        Frame::Error { code, message } => ClientError::Remote { code, message },
        other => ClientError::Unexpected(other.frame_type().name().into()),
    }
}

impl Connection {
    /// Connect and perform the handshake.
    pub async fn connect(target: &Target) -> Result<Self, ClientError> {
        let (reader, writer) = match (&target.dialer, &target.socks) {
            (Some(dialer), _) => {
                let (host, port) = transport::split_host_port(&target.server)?;
                transport::dialed(dialer.dial(host, port).await.map_err(ClientError::Dial)?)
            }
            (None, None) => transport::tcp(TcpStream::connect(&target.server).await?)?,
            (None, Some(proxy)) => transport::tcp(socks::connect(proxy, &target.server).await?)?,
        };
        let mut conn = Self {
            reader,
            writer,
            buf: BytesMut::with_capacity(256 * 1024),
            decoder: FrameDecoder::default(),
            software: String::new(),
            version: MIN_PROTOCOL_VERSION,
        };
        // Every version this client speaks: a box that predates padding
        // answers 1 and is served exactly as before.
        conn.send(&Frame::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
        })
        .await?;
        match conn.recv().await? {
            Frame::Welcome { software, version } => {
                conn.software = software;
                conn.version = version;
            }
            other => return Err(remote(other)),
        }
        Ok(conn)
    }

    /// The protocol version agreed with the box.
    pub fn version(&self) -> u16 {
        self.version
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.writer.write_all(&frame.to_bytes()).await?;
        self.writer.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Frame, ClientError> {
        read_frame(&mut self.reader, &mut self.buf, &mut self.decoder).await
    }

    /// Store a function without a manifest (it gets the minimum: session
    /// I/O only, small limits); returns its public id and secret invoke token.
    pub async fn store(
        &mut self,
        filename: &str,
        source: &str,
    ) -> Result<(FunctionId, InvokeToken), ClientError> {
        self.store_with_manifest(filename, source, "").await
    }

    /// Store a function with its manifest (TOML). The box refuses a
    /// manifest that asks for more than its policy allows, listing why.
    pub async fn store_with_manifest(
        &mut self,
        filename: &str,
        source: &str,
        manifest: &str,
    ) -> Result<(FunctionId, InvokeToken), ClientError> {
        self.send(&Frame::Store {
            filename: filename.into(),
            source: source.into(),
            manifest: manifest.into(),
            lifetime_s: None,
        })
        .await?;
        match self.recv().await? {
            Frame::Stored {
                function_id,
                invoke_token,
                ..
            } => Ok((function_id, invoke_token)),
            other => Err(remote(other)),
        }
    }

    /// Store a function with its manifest for `lifetime` (`None`: the
    /// box's default; the box refuses more than its policy's maximum with
    /// `invalid_lifetime`). The box rounds to whole seconds.
    pub async fn store_for(
        &mut self,
        filename: &str,
        source: &str,
        manifest: &str,
        lifetime: Option<Duration>,
    ) -> Result<Stored, ClientError> {
        self.send(&Frame::Store {
            filename: filename.into(),
            source: source.into(),
            manifest: manifest.into(),
            lifetime_s: Some(lifetime_secs(lifetime)),
        })
        .await?;
        match self.recv().await? {
            Frame::Stored {
                function_id,
                invoke_token,
                lifetime_s: Some(lifetime_s),
            } => Ok(Stored {
                function_id,
                invoke_token,
                lifetime: Duration::from_secs(lifetime_s),
            }),
            Frame::Stored {
                lifetime_s: None, ..
            } => Err(ClientError::Unexpected(
                "the box did not say how long it keeps the function (it predates lifetimes)".into(),
            )),
            other => Err(remote(other)),
        }
    }

    /// Keep the function under `token` for `lifetime` from now (`None`:
    /// the box's default); returns the lifetime granted.
    pub async fn renew(
        &mut self,
        token: &InvokeToken,
        lifetime: Option<Duration>,
    ) -> Result<Duration, ClientError> {
        self.send(&Frame::Renew {
            invoke_token: token.clone(),
            lifetime_s: lifetime_secs(lifetime),
        })
        .await?;
        match self.recv().await? {
            Frame::Renewed { lifetime_s } => Ok(Duration::from_secs(lifetime_s)),
            other => Err(remote(other)),
        }
    }

    /// Delete the function under `token` now. Others who stored the same
    /// content keep theirs.
    pub async fn delete(&mut self, token: &InvokeToken) -> Result<(), ClientError> {
        self.send(&Frame::Delete {
            invoke_token: token.clone(),
        })
        .await?;
        match self.recv().await? {
            Frame::Deleted => Ok(()),
            other => Err(remote(other)),
        }
    }

    /// Start a session: call `entry(*args)` (`args_json` is a JSON array).
    pub async fn invoke(
        &mut self,
        token: &InvokeToken,
        entry: &str,
        args_json: &str,
    ) -> Result<SessionToken, ClientError> {
        Ok(self.invoke_service(token, entry, args_json).await?.0)
    }

    /// Like [`Connection::invoke`], also returning the service token when
    /// the function's manifest declares the `service` capability.
    pub async fn invoke_service(
        &mut self,
        token: &InvokeToken,
        entry: &str,
        args_json: &str,
    ) -> Result<(SessionToken, Option<ServiceToken>), ClientError> {
        self.invoke_with_defense(token, entry, args_json, None)
            .await
    }

    /// Like [`Connection::invoke_service`], asking the box to shape the
    /// session's output with `defense` (the box refuses one its policy does
    /// not allow with `defense_refused`). Attach to such a session with
    /// [`Connection::attach`] as usual; padding is discarded on arrival.
    pub async fn invoke_with_defense(
        &mut self,
        token: &InvokeToken,
        entry: &str,
        args_json: &str,
        defense: Option<Defense>,
    ) -> Result<(SessionToken, Option<ServiceToken>), ClientError> {
        if defense.is_some() && self.version < PADDING_VERSION {
            return Err(ClientError::NoPadding(self.version));
        }
        self.send(&Frame::Invoke {
            invoke_token: token.clone(),
            entry: entry.into(),
            args_json: args_json.into(),
            defense: defense.map(|d| d.name().to_owned()),
        })
        .await?;
        match self.recv().await? {
            Frame::Invoked {
                session_token,
                service_token,
            } => Ok((session_token, service_token)),
            other => Err(remote(other)),
        }
    }

    /// Open a channel to a running instance's service (the function gets
    /// it from `api.accept()`).
    pub async fn connect_service(mut self, token: &ServiceToken) -> Result<Channel, ClientError> {
        self.send(&Frame::Connect {
            service_token: token.clone(),
        })
        .await?;
        match self.recv().await? {
            Frame::Connected => Ok(Channel {
                reader: ChannelReader {
                    reader: self.reader,
                    buf: self.buf,
                    decoder: self.decoder,
                    ended: false,
                },
                writer: ChannelWriter {
                    writer: self.writer,
                },
            }),
            other => Err(remote(other)),
        }
    }

    /// Stop a session's instance.
    pub async fn kill(&mut self, token: &SessionToken) -> Result<(), ClientError> {
        self.send(&Frame::Kill {
            session_token: token.clone(),
        })
        .await?;
        match self.recv().await? {
            Frame::Killed => Ok(()),
            other => Err(remote(other)),
        }
    }

    /// The box's status object.
    pub async fn status(&mut self) -> Result<serde_json::Value, ClientError> {
        self.send(&Frame::StatusRequest).await?;
        match self.recv().await? {
            Frame::Status { json } => serde_json::from_str(&json)
                .map_err(|e| ClientError::Unexpected(format!("status is not JSON: {e}"))),
            other => Err(remote(other)),
        }
    }

    /// Attach to a session's I/O; `resume_from` `None` resumes where the
    /// last client acknowledged.
    pub async fn attach(
        self,
        token: &SessionToken,
        resume_from: Option<u64>,
    ) -> Result<Attachment, ClientError> {
        self.attach_shaped(token, resume_from, None).await
    }

    /// Like [`Connection::attach`], padding this client's own direction
    /// with `defense`'s client-side machines: padding cells go out when
    /// they say, input and acknowledgements are never delayed (an input
    /// frame is one message for the function and must not be cut into
    /// cells). Padding that would exceed `max_padding_bytes` is not sent.
    pub async fn attach_shaped(
        mut self,
        token: &SessionToken,
        resume_from: Option<u64>,
        padding: Option<(Defense, u64)>,
    ) -> Result<Attachment, ClientError> {
        if padding.is_some() && self.version < PADDING_VERSION {
            return Err(ClientError::NoPadding(self.version));
        }
        self.send(&Frame::Attach {
            session_token: token.clone(),
            resume_from,
        })
        .await?;
        self.into_attachment(padding).await
    }

    /// Run `entry(*args)` of `source` once, without storing it, attached
    /// from its first byte: one round trip where store, invoke and attach
    /// take three. The box checks the upload as for a store (sizes, file
    /// name, the manifest against its policy), but does not compile it
    /// ahead: a syntax error arrives as the session's error. Returns the
    /// session token (to re-attach or kill from elsewhere), the service
    /// token for a function with the `service` capability, and the
    /// attachment.
    pub async fn run(
        mut self,
        filename: &str,
        source: &str,
        manifest: &str,
        entry: &str,
        args_json: &str,
    ) -> Result<(SessionToken, Option<ServiceToken>, Attachment), ClientError> {
        self.send(&Frame::Run {
            filename: filename.into(),
            source: source.into(),
            manifest: manifest.into(),
            entry: entry.into(),
            args_json: args_json.into(),
        })
        .await?;
        let (session_token, service_token) = match self.recv().await? {
            Frame::Invoked {
                session_token,
                service_token,
            } => (session_token, service_token),
            other => return Err(remote(other)),
        };
        let attachment = self.into_attachment(None).await?;
        Ok((session_token, service_token, attachment))
    }

    /// After `Attach` (or an accepted `Run`): the box's `Attached`, then the
    /// connection is the session's, padded by `padding` if given.
    async fn into_attachment(
        mut self,
        padding: Option<(Defense, u64)>,
    ) -> Result<Attachment, ClientError> {
        let offset = match self.recv().await? {
            Frame::Attached { offset } => offset,
            other => return Err(remote(other)),
        };
        let (tx, rx) = mpsc::channel(32);
        let (ack_tx, ack_rx) = watch::channel(offset);
        let (close_tx, close_rx) = oneshot::channel();
        let shaper = match padding {
            Some((defense, max_padding_bytes)) => Some(
                Shaper::new(defense, Side::Client, max_padding_bytes, Instant::now())
                    .map_err(|e| ClientError::Unexpected(e.to_string()))?,
            ),
            None => None,
        };
        let received = shaper.as_ref().map(|_| Arc::new(Received::default()));
        let writer = tokio::spawn(write_frames(
            self.writer,
            rx,
            ack_rx,
            close_rx,
            shaper.map(|s| (s, received.clone().unwrap_or_default())),
        ));
        Ok(Attachment {
            reader: self.reader,
            buf: self.buf,
            decoder: self.decoder,
            outgoing: tx,
            ack: ack_tx,
            close: Some(close_tx),
            writer,
            consumed: offset,
            acked: offset,
            received,
            ceiling: None,
        })
    }
}

async fn read_frame(
    reader: &mut Reader,
    buf: &mut BytesMut,
    decoder: &mut FrameDecoder,
) -> Result<Frame, ClientError> {
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return Ok(frame);
        }
        bento_protocol::reserve_for_read(buf);
        if reader.read_buf(buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

/// Acknowledged-but-unsent output beyond which an ack goes out at once
/// (it returns credit the function may be waiting for).
const ACK_EAGER_BYTES: u64 = 64 * 1024;
/// How long a small ack may wait to ride along with the next input frame.
/// Sent alone, right before that input, it would hold the input back behind
/// Nagle's algorithm on tor's (never TCP_NODELAY) sockets until the box's
/// delayed ACK: up to 40 ms per round trip.
const ACK_DELAY: Duration = Duration::from_millis(20);

/// Writes an attachment's outgoing frames. Acknowledgements travel on a
/// `watch` channel: they are cumulative, so they coalesce, go out before any
/// queued input, and sending one never blocks the reader (input can be
/// held up by the box's backpressure; acks must not wait behind it).
async fn write_frames(
    mut writer: Writer,
    mut frames: mpsc::Receiver<Frame>,
    mut ack: watch::Receiver<u64>,
    mut close: oneshot::Receiver<()>,
    shaping: Option<(Shaper, Arc<Received>)>,
) {
    let (mut shaper, received) = match shaping {
        Some((shaper, received)) => (Some(shaper), Some(received)),
        None => (None, None),
    };
    if let Some(shaper) = shaper.as_mut() {
        // The Attach this writer follows is the first real cell.
        shaper.sent_normal(1, Instant::now());
    }
    let mut seen = (0u64, 0u64);
    let mut frames_open = true;
    let mut last_sent = *ack.borrow();
    // An ack waiting to ride along with the next frame (see ACK_DELAY).
    let mut pending: Option<u64> = None;
    let mut pending_since = tokio::time::Instant::now();
    loop {
        let mut out = BytesMut::new();
        let mut only_padding = false;
        let pad_at = shaper.as_ref().and_then(Shaper::next_wakeup);
        tokio::select! {
            biased;
            _ = &mut close => break,
            () = notified(received.as_deref()), if received.is_some() => {
                if let (Some(shaper), Some(received)) = (shaper.as_mut(), received.as_deref()) {
                    let now = (
                        received.output.load(Ordering::Relaxed),
                        received.padding.load(Ordering::Relaxed),
                    );
                    let due = shaper.received(now.0 - seen.0, now.1 - seen.1, Instant::now());
                    seen = now;
                    for _ in due {
                        bento_shaping::padding_cell(&mut out);
                    }
                }
                if out.is_empty() {
                    continue;
                }
                only_padding = true;
            }
            () = sleep_until_std(pad_at), if pad_at.is_some() => {
                if let Some(shaper) = shaper.as_mut() {
                    // Nothing waits to replace padding: input is never held.
                    for _ in shaper.poll(Instant::now(), 0) {
                        bento_shaping::padding_cell(&mut out);
                    }
                }
                if out.is_empty() {
                    continue;
                }
                only_padding = true;
            }
            changed = ack.changed() => match changed {
                Ok(()) => {
                    let offset = *ack.borrow_and_update();
                    if offset.saturating_sub(last_sent) >= ACK_EAGER_BYTES {
                        Frame::Ack { offset }.encode(&mut out);
                        last_sent = offset;
                        pending = None;
                    } else {
                        if pending.is_none() {
                            pending_since = tokio::time::Instant::now();
                        }
                        pending = Some(offset);
                        continue;
                    }
                }
                Err(_) => break,
            },
            () = tokio::time::sleep_until(pending_since + ACK_DELAY), if pending.is_some() => {
                if let Some(offset) = pending.take() {
                    Frame::Ack { offset }.encode(&mut out);
                    last_sent = offset;
                }
            }
            frame = frames.recv(), if frames_open => match frame {
                Some(frame) => {
                    // The ack goes first, in the same write: it must precede
                    // a Detach, and one write avoids a Nagle stall behind it.
                    // Also an ack this select did not see: on another thread
                    // `Attachment::detach` can update it and queue the Detach
                    // between the polls of the ack branch and this one, and
                    // the box would then record an offset short of what the
                    // client consumed (seen once in the load test).
                    if ack.has_changed().unwrap_or(false) {
                        let offset = *ack.borrow_and_update();
                        if offset > last_sent {
                            pending = Some(offset);
                        }
                    }
                    if let Some(offset) = pending.take() {
                        Frame::Ack { offset }.encode(&mut out);
                        last_sent = offset;
                    }
                    frame.encode(&mut out);
                }
                None => {
                    frames_open = false;
                    continue;
                }
            },
        }
        if let (Some(shaper), false) = (shaper.as_mut(), only_padding) {
            shaper.sent_normal(out.len(), Instant::now());
        }
        if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
    // Closing: the pending ack first (it must precede a queued Detach, or a
    // re-attach would resume before bytes already consumed), then whatever
    // else is queued.
    if ack.has_changed().unwrap_or(false) || pending.is_some() {
        let offset = *ack.borrow_and_update();
        if writer
            .write_all(&Frame::Ack { offset }.to_bytes())
            .await
            .is_err()
            || writer.flush().await.is_err()
        {
            return;
        }
    }
    while let Ok(frame) = frames.try_recv() {
        if writer.write_all(&frame.to_bytes()).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Wait for frames to arrive (forever without a counter; callers guard the
/// branch).
async fn notified(received: Option<&Received>) {
    match received {
        Some(received) => received.arrived.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleep until `deadline` (forever without one; callers guard the branch).
async fn sleep_until_std(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// How long [`Attachment::detach`] waits for the box's confirmation.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Attachment::close`] waits for queued frames to be written.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// An attached session.
#[derive(Debug)]
pub struct Attachment {
    reader: Reader,
    buf: BytesMut,
    decoder: FrameDecoder,
    outgoing: mpsc::Sender<Frame>,
    ack: watch::Sender<u64>,
    close: Option<oneshot::Sender<()>>,
    writer: tokio::task::JoinHandle<()>,
    /// Offset just past the output returned so far.
    consumed: u64,
    acked: u64,
    /// A sealed attachment acknowledges only whole records (a resumed
    /// stream must start at a record boundary): at most this offset.
    ceiling: Option<u64>,
    /// Frames received, for a shaping writer's machines.
    received: Option<Arc<Received>>,
}

/// Cells an attachment received, told to its shaping writer (some
/// defenses pace the client by what it receives, e.g. RegulaTor's client).
#[derive(Debug, Default)]
struct Received {
    output: AtomicU64,
    padding: AtomicU64,
    arrived: tokio::sync::Notify,
}

impl Received {
    /// A frame of `wire_bytes` arrived; Maybenot counts cells.
    fn count(&self, padding: bool, wire_bytes: usize) {
        let counter = if padding { &self.padding } else { &self.output };
        counter.fetch_add(bento_shaping::cells(wire_bytes), Ordering::Relaxed);
        self.arrived.notify_one();
    }
}

/// Sends input to an attached session; cheap to clone.
#[derive(Debug, Clone)]
pub struct InputSender {
    outgoing: mpsc::Sender<Frame>,
}

impl InputSender {
    /// Send one message (split into frames of at most 1 MiB; each frame is
    /// one `api.recv()` for the function). Waits while the box applies
    /// backpressure.
    pub async fn send(&self, data: Bytes) -> Result<(), ClientError> {
        let mut data = data;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_LEN));
            self.outgoing
                .send(Frame::Input { data: chunk })
                .await
                .map_err(|_| ClientError::Closed)?;
        }
        Ok(())
    }

    /// Close the function's input: its `api.recv()` then returns `b""`.
    pub async fn end(&self) -> Result<(), ClientError> {
        self.outgoing
            .send(Frame::InputEnd)
            .await
            .map_err(|_| ClientError::Closed)
    }
}

impl Attachment {
    /// A handle for sending input concurrently with reading output.
    pub fn input(&self) -> InputSender {
        InputSender {
            outgoing: self.outgoing.clone(),
        }
    }

    /// Stream offset just past the output returned so far.
    pub fn offset(&self) -> u64 {
        self.consumed
    }

    /// What may be acknowledged: everything returned, or for a sealed
    /// attachment everything up to the last whole record.
    fn consumed_offset(&self) -> u64 {
        self.ceiling.map_or(self.consumed, |c| c.min(self.consumed))
    }

    fn ack(&mut self) {
        let consumed = self.consumed_offset();
        if consumed > self.acked {
            // Fails only when the writer is gone, which the next read reports.
            let _ = self.ack.send(consumed);
            self.acked = consumed;
        }
    }

    /// The next output bytes; `Ok(None)` when the function returned and
    /// everything was received. An error frame from the box (exception,
    /// limit, kill…) is `Err(ClientError::Remote)`.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                match frame {
                    Frame::Output { data } => {
                        if let Some(received) = &self.received {
                            received.count(false, FRAME_HEADER_LEN + data.len());
                        }
                        self.consumed += data.len() as u64;
                        return Ok(Some(data));
                    }
                    // Traffic-analysis padding: discarded on arrival (and
                    // the next buffered frame looked at before reading).
                    Frame::Padding { data } => {
                        if let Some(received) = &self.received {
                            received.count(true, FRAME_HEADER_LEN + data.len());
                        }
                        continue;
                    }
                    Frame::End => {
                        self.finish();
                        return Ok(None);
                    }
                    Frame::Error { code, message } => {
                        self.finish();
                        return Err(ClientError::Remote { code, message });
                    }
                    other => return Err(ClientError::Unexpected(other.frame_type().name().into())),
                }
            }
            // Everything returned so far has been consumed by the caller:
            // acknowledge it before waiting, so the box frees it and the
            // function's output credit keeps flowing.
            self.ack();
            bento_protocol::reserve_for_read(&mut self.buf);
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Everything the session outputs until its end, then close the
    /// connection (everything acknowledged, so the box can forget it).
    pub async fn read_to_end(mut self) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(data) = self.next().await? {
            out.extend_from_slice(&data);
        }
        self.close().await;
        Ok(out)
    }

    /// After the last frame: acknowledge everything so the box can forget
    /// the session.
    fn finish(&mut self) {
        // Always send a final Ack, even if nothing new: it tells the box the
        // end frame arrived.
        let consumed = self.consumed_offset();
        let _ = self.ack.send(consumed);
        self.acked = consumed;
    }

    /// Acknowledge what was consumed and leave the session running; a later
    /// attach resumes right after it.
    ///
    /// Returns once the box has confirmed (with `Detached`) that it
    /// recorded every acknowledgement, so an immediate re-attach, from here
    /// or elsewhere, resumes exactly after the consumed output. Output that
    /// arrives meanwhile was not consumed and will be sent again.
    ///
    /// If the function had already ended and everything it wrote was
    /// consumed, the box has nothing left to keep: it forgets the session
    /// on the acknowledgement and may never confirm. That is a detach that
    /// lost nothing, and returns the consumed offset too (a later attach
    /// finds no session).
    pub async fn detach(mut self) -> Result<u64, ClientError> {
        self.ack();
        self.outgoing
            .send(Frame::Detach)
            .await
            .map_err(|_| ClientError::Closed)?;
        let consumed = self.consumed_offset();
        let confirmed = tokio::time::timeout(DETACH_TIMEOUT, async {
            // Whether the session's End arrived with no output before it
            // that this client had not consumed.
            let mut ended_consumed = false;
            let mut unconsumed = false;
            loop {
                let frame =
                    match read_frame(&mut self.reader, &mut self.buf, &mut self.decoder).await {
                        Ok(frame) => frame,
                        Err(_) if ended_consumed => return Ok(consumed),
                        Err(e) => return Err(e),
                    };
                match frame {
                    Frame::Detached { offset } => return Ok(offset),
                    Frame::Padding { .. } => {}
                    // Sent before the box saw the detach; not consumed.
                    Frame::Output { .. } => unconsumed = true,
                    Frame::End => ended_consumed = !unconsumed,
                    // What the box says to a Detach for a session it has
                    // just forgotten.
                    Frame::Error { .. } if ended_consumed => return Ok(consumed),
                    Frame::Error { .. } => {}
                    other => return Err(ClientError::Unexpected(other.frame_type().name().into())),
                }
            }
        })
        .await;
        self.close().await;
        match confirmed {
            Ok(Ok(offset)) if offset == consumed => Ok(consumed),
            Ok(Ok(offset)) => Err(ClientError::Unexpected(format!(
                "the box recorded output offset {offset}, the client consumed {consumed}"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Unexpected(
                "the box did not confirm the detach".into(),
            )),
        }
    }

    /// Write every queued frame (the last acknowledgement included) and
    /// close the connection. Gives up after 10 s if the box stops reading.
    pub async fn close(mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        let mut writer = self.writer;
        if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

/// A live channel to an instance's service: bytes both ways, no
/// acknowledgements and no resumption (unlike an [`Attachment`]).
#[derive(Debug)]
pub struct Channel {
    reader: ChannelReader,
    writer: ChannelWriter,
}

/// The receiving half of a [`Channel`].
#[derive(Debug)]
pub struct ChannelReader {
    reader: Reader,
    buf: BytesMut,
    decoder: FrameDecoder,
    ended: bool,
}

/// The sending half of a [`Channel`].
#[derive(Debug)]
pub struct ChannelWriter {
    writer: Writer,
}

impl Channel {
    /// Split into halves that can be used from different tasks.
    pub fn into_split(self) -> (ChannelReader, ChannelWriter) {
        (self.reader, self.writer)
    }

    /// Send bytes to the function.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.writer.send(data).await
    }

    /// No more input (the function's `recv` then returns `b""`).
    pub async fn end_input(&mut self) -> Result<(), ClientError> {
        self.writer.end_input().await
    }

    /// The next bytes from the function; `None` once it closed the channel.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        self.reader.next().await
    }

    /// Everything until the function closes the channel.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(data) = self.next().await? {
            out.extend_from_slice(&data);
        }
        Ok(out)
    }
}

impl ChannelWriter {
    /// Send bytes to the function.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(MAX_DATA_LEN) {
            let frame = Frame::Input {
                data: Bytes::copy_from_slice(chunk),
            };
            self.writer.write_all(&frame.to_bytes()).await?;
        }
        self.writer.flush().await?;
        Ok(())
    }

    /// No more input.
    pub async fn end_input(&mut self) -> Result<(), ClientError> {
        self.writer.write_all(&Frame::InputEnd.to_bytes()).await?;
        self.writer.flush().await?;
        Ok(())
    }
}

impl ChannelReader {
    /// The next bytes from the function; `None` once it closed the channel.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        if self.ended {
            return Ok(None);
        }
        match read_frame(&mut self.reader, &mut self.buf, &mut self.decoder).await? {
            Frame::Output { data } => Ok(Some(data)),
            Frame::End => {
                self.ended = true;
                Ok(None)
            }
            other => Err(remote(other)),
        }
    }
}
