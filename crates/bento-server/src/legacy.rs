//! The Bento research prototype's wire protocol, on its own listener, so
//! existing prototype clients and functions run unchanged — in the same
//! sandbox, under the same limits and caps (see `docs/legacy.md`).
//!
//! Differences from the prototype, all on the safe side: the call
//! expression is evaluated only inside the sandbox; every `api.send` arrives
//! as one `Output` frame, in order, before the final `FunctionErr`; output
//! produced while no client has the instance open is kept (bounded, with
//! backpressure) for the next `Open`; requests have size limits and read
//! timeouts; malformed JSON gets an error response.
//!
//! The prototype's instance id is a bearer capability: anyone who has it may
//! open the instance. Ids are random UUIDs (122 random bits); the session
//! token is derived from the id by SHA-256, so the ordinary session table
//! serves both protocols and the id itself is never stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bento_protocol::{InvokeToken, SessionToken};
use bento_worker_contract::{InstanceOutcome, StartCall};
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tokio::task::JoinHandle;

use crate::box_ops::outcome_refusal;
use crate::box_state::BoxState;
use crate::session::Session;

const T_STORE: u8 = 0x0;
const T_EXECUTE: u8 = 0x1;
const T_OPEN: u8 = 0x2;
const T_CLOSE: u8 = 0x3;
const T_FUNCTION_ERR: u8 = 0x4;
const T_ERROR: u8 = 0x5;
const T_OUTPUT: u8 = 0x6;
const T_INPUT: u8 = 0x7;

/// Length of an instance id (a UUID in text form).
const INSTANCE_ID_LEN: usize = 36;
/// Largest `call` expression accepted.
const MAX_CALL_LEN: usize = 64 * 1024;
/// Output bytes written per wake-up before looking again.
const OUTPUT_BATCH: usize = 1024 * 1024;

type Writer = Arc<Mutex<OwnedWriteHalf>>;

/// The session token behind a legacy instance id.
fn session_token(instance_id: &str) -> SessionToken {
    let mut hasher = Sha256::new();
    hasher.update(b"bento legacy instance id\0");
    hasher.update(instance_id.as_bytes());
    SessionToken::from_bytes(hasher.finalize().into())
}

/// A fresh random (version 4) UUID in text form.
fn new_instance_id() -> Option<String> {
    let mut bytes = random_16()?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// 16 bytes from the OS CSPRNG (through the token generator).
fn random_16() -> Option<[u8; 16]> {
    let token = SessionToken::generate().ok()?;
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&token.as_bytes()[..16]);
    Some(bytes)
}

/// A response to Store/Execute: `type, error, length, payload`.
fn response(kind: u8, error: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(kind);
    out.push(u8::from(error));
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// A function message header: `type, length (id + data), id`.
fn message_header(kind: u8, id: &str, data_len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + INSTANCE_ID_LEN);
    out.push(kind);
    // Lengths the box frames are bounded by `MAX_MESSAGE_LEN` (checked when
    // the worker announces them), so this never saturates in practice; it
    // must not overflow whatever it is given.
    let len = u32::try_from((INSTANCE_ID_LEN as u64).saturating_add(data_len)).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(id.as_bytes());
    out
}

fn message(kind: u8, id: &str, data: &[u8]) -> Vec<u8> {
    let mut out = message_header(kind, id, data.len() as u64);
    out.extend_from_slice(data);
    out
}

/// A prototype `Store` request body (JSON).
#[derive(Debug, Deserialize)]
pub struct StoreRequest {
    /// The function's name (becomes the traceback file name when safe).
    pub name: String,
    /// Python source.
    pub code: String,
}

/// A prototype `Execute` request body (JSON).
#[derive(Debug, Deserialize)]
pub struct ExecuteRequest {
    /// The call expression, evaluated inside the sandbox.
    pub call: String,
    /// The invoke token, in hex.
    pub token: String,
}

/// One prototype-protocol request, decoded from its type byte and body.
#[derive(Debug)]
pub enum LegacyRequest {
    /// Store a function.
    Store(StoreRequest),
    /// Start an instance.
    Execute(ExecuteRequest),
    /// Stream an instance's output to this connection.
    Open(String),
    /// Stop streaming an instance to this connection.
    Close(String),
    /// One input message for an instance.
    Input {
        /// The instance id.
        id: String,
        /// The message.
        data: Bytes,
    },
}

/// Why a prototype request could not be decoded. Its text is what the
/// client is sent in the error response.
#[derive(Debug, thiserror::Error)]
pub enum LegacyDecodeError {
    /// A Store or Execute body that is not the expected JSON.
    #[error("invalid request: {0}")]
    Json(serde_json::Error),
    /// An unknown type, or an Open/Close/Input without a valid instance id.
    #[error("invalid request")]
    Invalid,
}

// The cause is in the message, so it is not also a `source()`
// (docs/design.md, "Errors").
impl From<serde_json::Error> for LegacyDecodeError {
    fn from(error: serde_json::Error) -> Self {
        LegacyDecodeError::Json(error)
    }
}

/// Decode one prototype request from its type byte and body: pure, so it
/// can be fuzzed apart from the connection (`fuzz/`).
pub fn decode_legacy_request(kind: u8, body: &[u8]) -> Result<LegacyRequest, LegacyDecodeError> {
    Ok(match kind {
        T_STORE => LegacyRequest::Store(serde_json::from_slice(body)?),
        T_EXECUTE => LegacyRequest::Execute(serde_json::from_slice(body)?),
        T_OPEN => LegacyRequest::Open(instance_id(body).ok_or(LegacyDecodeError::Invalid)?),
        T_CLOSE => LegacyRequest::Close(instance_id(body).ok_or(LegacyDecodeError::Invalid)?),
        T_INPUT => {
            let id = body
                .get(..INSTANCE_ID_LEN)
                .and_then(instance_id)
                .ok_or(LegacyDecodeError::Invalid)?;
            LegacyRequest::Input {
                id,
                data: Bytes::copy_from_slice(&body[INSTANCE_ID_LEN..]),
            }
        }
        _ => return Err(LegacyDecodeError::Invalid),
    })
}

/// The file name tracebacks show for a prototype function `name`.
fn filename_for(name: &str) -> String {
    let safe = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if safe {
        format!("{name}.py")
    } else {
        "function.py".into()
    }
}

struct LegacyConn {
    state: Arc<BoxState>,
    writer: Writer,
    /// Streams opened on this connection, by instance id: a flag that asks
    /// the stream to stop at the next frame boundary, and its task.
    streams: HashMap<String, (watch::Sender<bool>, JoinHandle<()>)>,
}

/// Serve one prototype-protocol connection.
pub(crate) async fn handle_connection(stream: TcpStream, state: Arc<BoxState>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let mut conn = LegacyConn {
        state,
        writer: Arc::new(Mutex::new(writer)),
        streams: HashMap::new(),
    };
    let _ = conn.run(&mut reader).await;
    // The client is gone: stop its streams at once (their sessions stay).
    for (_, (_, task)) in conn.streams.drain() {
        task.abort();
    }
    let _ = conn.writer.lock().await.shutdown().await;
}

/// Why the request loop ended.
enum End {
    Closed,
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> Self {
        End::Closed
    }
}

impl LegacyConn {
    async fn write(&self, bytes: &[u8]) -> Result<(), End> {
        self.writer.lock().await.write_all(bytes).await?;
        Ok(())
    }

    fn max_request(&self) -> u32 {
        // JSON may escape each source byte as up to six characters.
        let max = self.state.config.max_source_bytes().saturating_mul(6) + 64 * 1024;
        u32::try_from(max.max(bento_protocol::MAX_DATA_LEN + INSTANCE_ID_LEN)).unwrap_or(u32::MAX)
    }

    async fn run(&mut self, reader: &mut tokio::net::tcp::OwnedReadHalf) -> Result<(), End> {
        let timeout = self.state.config.read_timeout;
        loop {
            // Idle between requests: bounded unless the client has live
            // streams (then it may just be listening).
            let mut kind = [0u8; 1];
            let n = loop {
                match tokio::time::timeout(timeout, reader.read(&mut kind)).await {
                    Ok(n) => break n?,
                    Err(_) => {
                        // Streams that ended (their instance finished and
                        // was sent) no longer excuse an idle connection.
                        self.streams.retain(|_, (_, task)| !task.is_finished());
                        if self.streams.is_empty() {
                            return Err(End::Closed);
                        }
                    }
                }
            };
            if n == 0 {
                return Ok(());
            }
            // One deadline for the whole request, from its first byte (see
            // `frame_deadline`): trickling bytes does not extend it.
            let started = std::time::Instant::now();
            let mut len = [0u8; 4];
            let header_deadline = crate::config::frame_deadline(started, timeout, 1);
            match tokio::time::timeout_at(header_deadline.into(), reader.read_exact(&mut len)).await
            {
                Ok(result) => result?,
                Err(_) => return Err(End::Closed),
            };
            let len = u32::from_be_bytes(len);
            if len > self.max_request() {
                let text = format!(
                    "request too large: {len} bytes; at most {}",
                    self.max_request()
                );
                self.write(&response(kind[0], true, text.as_bytes()))
                    .await?;
                return Err(End::Closed);
            }
            // Grow the body as bytes arrive rather than allocating the
            // declared length up front; the deadline grows with what has
            // arrived, never with what is merely announced.
            let mut body = Vec::new();
            let mut limited = (&mut *reader).take(u64::from(len));
            loop {
                let deadline = crate::config::frame_deadline(started, timeout, 5 + body.len());
                if body.capacity() - body.len() < 64 * 1024 {
                    body.reserve(64 * 1024);
                }
                match tokio::time::timeout_at(deadline.into(), limited.read_buf(&mut body)).await {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(End::Closed),
                }
            }
            if body.len() != len as usize {
                return Err(End::Closed); // closed inside a request
            }
            self.request(kind[0], body).await?;
        }
    }

    async fn request(&mut self, kind: u8, body: Vec<u8>) -> Result<(), End> {
        let request = match decode_legacy_request(kind, &body) {
            Ok(request) => request,
            // A Close for no valid instance is ignored, as in the prototype.
            Err(_) if kind == T_CLOSE => return Ok(()),
            Err(e) => {
                return self
                    .write(&response(kind, true, e.to_string().as_bytes()))
                    .await;
            }
        };
        match request {
            LegacyRequest::Store(req) => {
                let reply = match self
                    .state
                    .store_function(
                        filename_for(&req.name),
                        req.code,
                        self.state.config.legacy_manifest.clone(),
                    )
                    .await
                {
                    Ok((_, token)) => response(T_STORE, false, token.to_hex().as_bytes()),
                    Err(refusal) => response(T_STORE, true, refusal.message.as_bytes()),
                };
                self.write(&reply).await
            }
            LegacyRequest::Execute(req) => {
                let reply = self.execute(req).await;
                self.write(&reply).await
            }
            LegacyRequest::Open(id) => self.open(id).await,
            LegacyRequest::Close(id) => {
                if let Some((stop, _)) = self.streams.remove(&id) {
                    let _ = stop.send(true);
                }
                Ok(())
            }
            LegacyRequest::Input { id, data } => {
                match self.state.sessions.get(&session_token(&id)) {
                    Some(session) => {
                        deliver_input(&session, data).await;
                        Ok(())
                    }
                    None => {
                        self.write(&message(T_FUNCTION_ERR, &id, b"invalid instance"))
                            .await
                    }
                }
            }
        }
    }

    async fn execute(&mut self, req: ExecuteRequest) -> Vec<u8> {
        let refuse = |text: &str| response(T_EXECUTE, true, text.as_bytes());
        let Some(function) = InvokeToken::from_hex(&req.token)
            .ok()
            .and_then(|token| self.state.store.lookup(&token))
        else {
            return refuse("invalid token");
        };
        if req.call.len() > MAX_CALL_LEN {
            return refuse(&format!("call expression longer than {MAX_CALL_LEN} bytes"));
        }
        let Some(id) = new_instance_id() else {
            return refuse("cannot generate an instance id");
        };
        let call = StartCall::Expression(req.call);
        match self
            .state
            .start_session(&function, call, session_token(&id), true)
            .await
        {
            Ok(_) => response(T_EXECUTE, false, id.as_bytes()),
            Err(refusal) => refuse(&refusal.message),
        }
    }

    async fn open(&mut self, id: String) -> Result<(), End> {
        if self.streams.contains_key(&id) {
            return Ok(());
        }
        let Some(session) = self.state.sessions.get(&session_token(&id)) else {
            return self
                .write(&message(T_FUNCTION_ERR, &id, b"invalid instance"))
                .await;
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(stream_instance(
            self.state.clone(),
            session,
            id.clone(),
            self.writer.clone(),
            stop_rx,
        ));
        self.streams.insert(id, (stop_tx, task));
        Ok(())
    }
}

fn instance_id(bytes: &[u8]) -> Option<String> {
    let id = std::str::from_utf8(bytes).ok()?;
    (id.len() == INSTANCE_ID_LEN && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .then(|| id.to_owned())
}

/// Queue one input message, waiting while the function has a full input
/// window outstanding (which stops this connection's reading: backpressure).
async fn deliver_input(session: &Arc<Session>, data: Bytes) {
    loop {
        let changed = session.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            if !session.lock().input_blocked() {
                session.push_input(data);
                return;
            }
        }
        changed.await;
    }
}

/// What the stream should do next, decided under the session lock.
enum Step {
    /// Write these output bytes (inside a frame already started).
    Body(Vec<Bytes>),
    /// Start an `Output` frame of this many bytes (one `api.send`, or the
    /// rest of one a previous stream of the instance had begun).
    StartMessage(u64),
    /// The function ended during an `api.send` before the box framed it:
    /// send what it wrote as a short frame, then say so.
    Short {
        chunks: Vec<Bytes>,
        /// Bytes of the message sent before (by an earlier stream).
        earlier: u64,
        announced: u64,
        outcome: InstanceOutcome,
    },
    /// Output not framed by `api.send` (e.g. `print`): one frame of it.
    Unframed(Vec<Bytes>),
    /// The function ended and everything was sent.
    Finished(InstanceOutcome),
    /// The function ended in the middle of a send whose Output frame has
    /// begun (the next Open reports how it ended).
    Truncated,
    /// Another client opened the instance.
    TakenOver,
    Wait,
}

/// Stream one instance's output to a legacy client until it ends, the
/// client closes it, or another client opens it.
async fn stream_instance(
    state: Arc<BoxState>,
    session: Arc<Session>,
    id: String,
    writer: Writer,
    mut stop: watch::Receiver<bool>,
) {
    // From the first unacknowledged byte, which the box always holds.
    let Ok((generation, mut sent)) = session.attach(None) else {
        return;
    };
    let timeout = state.config.read_timeout;
    // An Output frame header promises its length, so it is written only
    // once the whole message is here, or enough of it that the function is
    // clearly sending it (half its output buffer, which it can always
    // reach: it blocks for credit only beyond the whole buffer). A function
    // that announces a huge message and ends without writing it gets a
    // short frame of what it wrote, never a promise the box must pad.
    let commit_at = (session.output_buffer_bytes() / 2).max(1);
    // Remaining bytes of the Output frame being written, its whole length,
    // and the writer lock held for it (frames from different streams must
    // not interleave).
    let mut in_message = 0u64;
    let mut frame_len = 0u64;
    let mut frame_guard: Option<OwnedMutexGuard<OwnedWriteHalf>> = None;
    loop {
        let changed = session.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if in_message == 0 && *stop.borrow() {
            return;
        }
        let step = {
            let s = session.lock();
            // Expired: the box forgot the finished session; let go of it.
            if s.taken_over(generation) || s.expired() {
                Step::TakenOver
            } else if in_message > 0 && sent < s.produced() {
                let max = usize::try_from(in_message)
                    .unwrap_or(usize::MAX)
                    .min(OUTPUT_BATCH);
                Step::Body(Session::output_from(&s, sent, max))
            } else if in_message > 0 {
                if s.outcome().is_some() {
                    Step::Truncated
                } else {
                    Step::Wait
                }
            } else {
                match s.next_message() {
                    // The next message starts here (or, after a takeover,
                    // started before and its rest is still to be sent).
                    Some((start, len))
                        if start <= sent && (start == sent || sent - start < len) =>
                    {
                        let remaining = len - (sent - start);
                        let available = s.produced() - sent;
                        if available >= remaining.min(commit_at) {
                            Step::StartMessage(remaining)
                        } else if let Some(outcome) = s.outcome() {
                            let max = usize::try_from(available).unwrap_or(usize::MAX);
                            Step::Short {
                                chunks: Session::output_from(&s, sent, max),
                                earlier: sent - start,
                                announced: len,
                                outcome: outcome.clone(),
                            }
                        } else {
                            Step::Wait
                        }
                    }
                    next => {
                        let until = next.map_or(s.produced(), |(start, _)| start.min(s.produced()));
                        if until > sent {
                            let max = usize::try_from(until - sent)
                                .unwrap_or(usize::MAX)
                                .min(OUTPUT_BATCH);
                            Step::Unframed(Session::output_from(&s, sent, max))
                        } else if let Some(outcome) = s.outcome() {
                            Step::Finished(outcome.clone())
                        } else {
                            Step::Wait
                        }
                    }
                }
            }
        };
        let terminal = matches!(
            step,
            Step::Finished(_) | Step::Truncated | Step::Short { .. }
        );
        // Writing has a deadline like reading (the read timeout plus 1 s per
        // `MIN_CLIENT_RATE` bytes): a client that stops reading must not
        // hold its connection, the instance's session and its reserved
        // output forever.
        let write_deadline = match &step {
            Step::Wait => None,
            Step::Body(chunks) | Step::Unframed(chunks) | Step::Short { chunks, .. } => {
                let bytes: usize = chunks.iter().map(Bytes::len).sum();
                Some(crate::config::frame_deadline(
                    Instant::now(),
                    timeout,
                    bytes,
                ))
            }
            _ => Some(crate::config::frame_deadline(Instant::now(), timeout, 0)),
        };
        let work = async {
            match step {
                Step::TakenOver | Step::Truncated => {
                    // Mid-frame, this connection's stream cannot be kept
                    // well-formed: end it. Taken over, the new stream sends
                    // the rest. Truncated (the function stopped in the
                    // middle of a message whose Output frame has begun),
                    // the frame can neither be completed honestly (padding
                    // would hand the client bytes that look like the
                    // function's data, and let a function make the box send
                    // more than it wrote) nor abandoned: the client sees the
                    // stream end mid-frame, and the Error and `function
                    // dead` wait for the next Open.
                    if let Some(guard) = frame_guard.as_mut() {
                        let _ = guard.shutdown().await;
                    }
                    Err(std::io::ErrorKind::Other.into())
                }
                Step::Wait => {
                    tokio::select! {
                        _ = &mut changed => {}
                        _ = stop.changed(), if in_message == 0 => {}
                    }
                    Ok(())
                }
                Step::StartMessage(len) => {
                    let mut guard = writer.clone().lock_owned().await;
                    guard.write_all(&message_header(T_OUTPUT, &id, len)).await?;
                    in_message = len;
                    frame_len = len;
                    if len > 0 {
                        frame_guard = Some(guard);
                    } else {
                        // An empty send: the frame is complete; let the box
                        // free its boundary record.
                        session.acknowledge(sent);
                    }
                    Ok(())
                }
                Step::Body(chunks) => {
                    let guard = match frame_guard.as_mut() {
                        Some(guard) => guard,
                        None => return Err(std::io::ErrorKind::Other.into()),
                    };
                    for chunk in chunks {
                        guard.write_all(&chunk).await?;
                        sent += chunk.len() as u64;
                        in_message -= chunk.len() as u64;
                    }
                    if in_message == 0 {
                        frame_guard = None;
                    }
                    // Written to the connection counts as delivered: the
                    // prototype protocol has no acknowledgements.
                    session.acknowledge(sent);
                    Ok(())
                }
                Step::Unframed(chunks) => {
                    let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                    let mut guard = writer.lock().await;
                    guard.write_all(&message_header(T_OUTPUT, &id, len)).await?;
                    for chunk in chunks {
                        guard.write_all(&chunk).await?;
                    }
                    sent += len;
                    session.acknowledge(sent);
                    Ok(())
                }
                Step::Short {
                    chunks,
                    earlier,
                    announced,
                    outcome,
                } => {
                    let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                    let mut guard = writer.lock().await;
                    if len > 0 {
                        guard.write_all(&message_header(T_OUTPUT, &id, len)).await?;
                        for chunk in chunks {
                            guard.write_all(&chunk).await?;
                        }
                    }
                    drop(guard);
                    sent += len;
                    session.acknowledge(sent);
                    let text = ended_during_send(
                        &outcome,
                        &format!(
                            "after writing {} of the {announced} bytes it announced; its last Output is short",
                            earlier + len
                        ),
                    );
                    finish(&state, &session, &id, &writer, Some(text)).await
                }
                Step::Finished(outcome) => {
                    let text = outcome_refusal(&outcome).map(|r| r.message);
                    finish(&state, &session, &id, &writer, text).await
                }
            }
        };
        let written = match write_deadline {
            None => work.await,
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), work).await {
                Ok(written) => written,
                Err(_) => {
                    // The frame cannot be finished: end the connection.
                    match frame_guard.as_mut() {
                        Some(guard) => {
                            let _ = guard.shutdown().await;
                        }
                        None => {
                            if let Ok(mut guard) = writer.try_lock() {
                                let _ = guard.shutdown().await;
                            }
                        }
                    }
                    Err(std::io::ErrorKind::TimedOut.into())
                }
            },
        };
        if written.is_err() || terminal {
            return;
        }
    }
}

/// The Error text for an instance that ended in the middle of an
/// `api.send`: why it ended (if not by returning), then what the client got.
fn ended_during_send(outcome: &InstanceOutcome, what: &str) -> String {
    let note = format!("(the function stopped during api.send {what})");
    match outcome_refusal(outcome) {
        Some(refusal) => format!("{}\n{note}", refusal.message),
        None => note,
    }
}

/// The final frames: the error (if any), then `FunctionErr "function dead"`;
/// then the box forgets the session.
async fn finish(
    state: &BoxState,
    session: &Arc<Session>,
    id: &str,
    writer: &Writer,
    error: Option<String>,
) -> std::io::Result<()> {
    let mut guard = writer.lock().await;
    if let Some(text) = error {
        guard
            .write_all(&message(T_ERROR, id, text.as_bytes()))
            .await?;
    }
    guard
        .write_all(&message(T_FUNCTION_ERR, id, b"function dead"))
        .await?;
    drop(guard);
    state.sessions.remove(session.token());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_random_version_4_uuids() {
        let a = new_instance_id().unwrap();
        let b = new_instance_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), INSTANCE_ID_LEN);
        assert_eq!(&a[14..15], "4");
        assert!(instance_id(a.as_bytes()).is_some());
    }

    #[test]
    fn instance_ids_that_could_be_paths_are_rejected() {
        assert!(instance_id(b"../../../../../../../../etc/passwd00").is_none());
        assert!(instance_id(b"short").is_none());
    }

    #[test]
    fn requests_decode_by_type_and_bad_bodies_are_typed_errors() {
        let id = new_instance_id().unwrap();
        let store = decode_legacy_request(T_STORE, br#"{"name": "f", "code": "x = 1"}"#);
        assert!(
            matches!(store, Ok(LegacyRequest::Store(ref r)) if r.name == "f" && r.code == "x = 1")
        );
        let input = [id.as_bytes(), b"data"].concat();
        assert!(matches!(
            decode_legacy_request(T_INPUT, &input),
            Ok(LegacyRequest::Input { id: ref i, ref data }) if *i == id && data == "data"
        ));
        assert!(
            matches!(decode_legacy_request(T_OPEN, id.as_bytes()), Ok(LegacyRequest::Open(ref i)) if *i == id)
        );
        assert!(
            matches!(decode_legacy_request(T_CLOSE, id.as_bytes()), Ok(LegacyRequest::Close(ref i)) if *i == id)
        );

        let bad_json = decode_legacy_request(T_EXECUTE, b"{\"call\": 1}").unwrap_err();
        assert!(matches!(bad_json, LegacyDecodeError::Json(_)));
        assert!(
            bad_json.to_string().starts_with("invalid request: "),
            "{bad_json}"
        );
        for (kind, body) in [
            (T_OPEN, &b"short"[..]),
            (T_INPUT, &id.as_bytes()[..10]),
            (T_CLOSE, &b""[..]),
            (T_OUTPUT, id.as_bytes()),
            (0xff, &b""[..]),
        ] {
            let error = decode_legacy_request(kind, body).unwrap_err();
            assert_eq!(error.to_string(), "invalid request", "type {kind}");
        }
    }

    #[test]
    fn prototype_names_become_safe_file_names() {
        assert_eq!(filename_for("hello"), "hello.py");
        assert_eq!(filename_for("../x"), "function.py");
        assert_eq!(filename_for(""), "function.py");
    }
}
