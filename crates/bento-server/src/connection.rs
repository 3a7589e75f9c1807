//! One client connection: handshake, requests, and attached I/O.
//!
//! Nothing here logs the peer address, tokens, arguments or sources.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bento_protocol::{
    ErrorCode, Frame, FrameDecoder, FrameType, MAX_DATA_LEN, MIN_PROTOCOL_VERSION, PADDING_VERSION,
    PROTOCOL_VERSION, ProtocolError, ServiceToken, SessionToken, encode_data_header,
};
use bento_worker_contract::{ChannelEvent, INPUT_WINDOW, SessionEvent, StartCall};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::box_ops::{Refusal, outcome_refusal};
use crate::box_state::BoxState;
use crate::session::Session;
use crate::shaping::OutputShaper;

/// Output bytes written to the client per wake-up, before looking at its
/// frames again.
const OUTPUT_BATCH: usize = 1024 * 1024;

/// A reason to end the connection, with the error frame to send first.
struct Close(Option<Frame>);

impl Close {
    fn with(code: ErrorCode, message: impl Into<String>) -> Self {
        Close(Some(Frame::error(code, message)))
    }
}

impl From<std::io::Error> for Close {
    fn from(_: std::io::Error) -> Self {
        Close(None)
    }
}

impl From<ProtocolError> for Close {
    fn from(e: ProtocolError) -> Self {
        Close::with(e.code(), e.to_string())
    }
}

struct Conn {
    reader: OwnedReadHalf,
    writer: BufWriter<OwnedWriteHalf>,
    buf: BytesMut,
    decoder: FrameDecoder,
    state: Arc<BoxState>,
    /// While attached: when the client's current incomplete frame began
    /// (its deadline runs from there, however slowly its bytes trickle).
    partial_since: Option<Instant>,
    /// The protocol version agreed in the handshake.
    version: u16,
}

pub(crate) async fn handle_connection(stream: TcpStream, state: Arc<BoxState>) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut conn = Conn {
        reader,
        writer: BufWriter::with_capacity(64 * 1024, writer),
        buf: BytesMut::with_capacity(64 * 1024),
        decoder: FrameDecoder::default(),
        state,
        partial_since: None,
        version: MIN_PROTOCOL_VERSION,
    };
    let ended = conn.run().await;
    // The last words are bounded too: a client that does not read must not
    // keep the connection open through them.
    let timeout = conn.state.config.read_timeout;
    let _ = tokio::time::timeout(timeout, async {
        if let Err(Close(Some(frame))) = ended {
            tracing::debug!(code = ?frame_code(&frame), "closing connection with an error");
            let _ = conn.send(&frame).await;
        }
        let _ = conn.writer.shutdown().await;
    })
    .await;
}

fn frame_code(frame: &Frame) -> Option<ErrorCode> {
    match frame {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

impl Conn {
    /// Send one frame, within the write deadline (the read timeout plus
    /// 1 s per `MIN_CLIENT_RATE` bytes): a client that does not read its
    /// answers loses its connection instead of holding it.
    async fn send(&mut self, frame: &Frame) -> Result<(), Close> {
        if let Frame::Error { code, .. } = frame {
            self.state.metrics.count_error(*code);
        }
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        let deadline = crate::config::frame_deadline(
            Instant::now(),
            self.state.config.read_timeout,
            out.len(),
        );
        let writer = &mut self.writer;
        let write = async {
            writer.write_all(&out).await?;
            writer.flush().await
        };
        match tokio::time::timeout_at(deadline.into(), write).await {
            Ok(result) => result?,
            Err(_) => return Err(Close(None)),
        }
        Ok(())
    }

    /// Read the next frame; `None` on a clean close between frames. Times
    /// out when the peer idles between requests for `timeout`, or does not
    /// complete a frame by its deadline (see [`crate::config::frame_deadline`]):
    /// one deadline per phase and per frame, not per read, so trickling
    /// bytes does not keep a connection.
    async fn read_frame(&mut self, timeout: Duration) -> Result<Option<Frame>, Close> {
        let idle_until = Instant::now() + timeout;
        let mut frame_started = (!self.buf.is_empty()).then(Instant::now);
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if frame_started.is_none() && !self.buf.is_empty() {
                frame_started = Some(Instant::now());
            }
            let deadline = match frame_started {
                Some(started) => crate::config::frame_deadline(started, timeout, self.buf.len()),
                None => idle_until,
            };
            bento_protocol::reserve_for_next_frame(&mut self.buf);
            let read =
                tokio::time::timeout_at(deadline.into(), self.reader.read_buf(&mut self.buf)).await;
            match read {
                Err(_) if frame_started.is_some() => {
                    return Err(Close::with(
                        ErrorCode::Timeout,
                        format!(
                            "the frame was not complete by its deadline ({} s, plus 1 s per {} KiB received)",
                            timeout.as_secs(),
                            crate::config::MIN_CLIENT_RATE / 1024
                        ),
                    ));
                }
                Err(_) => {
                    return Err(Close::with(
                        ErrorCode::Timeout,
                        format!("no request within {} s", timeout.as_secs()),
                    ));
                }
                Ok(Ok(0)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(Close::with(
                        ErrorCode::MalformedFrame,
                        "connection closed inside a frame",
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    async fn run(&mut self) -> Result<(), Close> {
        let timeout = self.state.config.read_timeout;
        match self.read_frame(timeout).await? {
            Some(Frame::Hello {
                min_version,
                max_version,
            }) => {
                let Some(version) = bento_protocol::negotiate_version(min_version, max_version)
                else {
                    return Err(Close::with(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "this box speaks protocol versions {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}; the client offered {min_version}..={max_version}"
                        ),
                    ));
                };
                self.version = version;
                self.send(&Frame::Welcome {
                    version,
                    software: format!("bento {}", env!("CARGO_PKG_VERSION")),
                })
                .await?;
            }
            Some(other) => {
                return Err(Close::with(
                    ErrorCode::UnexpectedFrame,
                    format!("expected Hello, got {}", other.frame_type().name()),
                ));
            }
            None => return Ok(()),
        }
        while let Some(frame) = self.read_frame(timeout).await? {
            match frame {
                Frame::Store {
                    filename,
                    source,
                    manifest,
                    lifetime_s,
                } => {
                    let reply = self.store(filename, source, manifest, lifetime_s).await;
                    self.send(&reply).await?;
                }
                Frame::Renew {
                    invoke_token,
                    lifetime_s,
                } => {
                    let reply = match self.state.renew_function(invoke_token, lifetime_s).await {
                        Ok(lifetime) => Frame::Renewed {
                            lifetime_s: lifetime.as_secs(),
                        },
                        Err(e) => e.into_frame(),
                    };
                    self.send(&reply).await?;
                }
                Frame::Delete { invoke_token } => {
                    let reply = match self.state.delete_function(invoke_token).await {
                        Ok(()) => Frame::Deleted,
                        Err(e) => e.into_frame(),
                    };
                    self.send(&reply).await?;
                }
                Frame::Invoke {
                    invoke_token,
                    entry,
                    args_json,
                    defense,
                } => {
                    let reply = self
                        .invoke(&invoke_token, entry, args_json, defense.as_deref())
                        .await;
                    self.send(&reply).await?;
                }
                Frame::SealedStore {
                    manifest,
                    lifetime_s,
                    envelope,
                } => {
                    let reply = match self
                        .state
                        .store_sealed(manifest, lifetime_s, envelope)
                        .await
                    {
                        Ok(stored) => Frame::Stored {
                            function_id: stored.function_id,
                            invoke_token: stored.invoke_token,
                            lifetime_s: Some(stored.lifetime.as_secs()),
                        },
                        Err(e) => e.into_frame(),
                    };
                    self.send(&reply).await?;
                }
                Frame::SealedInvoke {
                    invoke_token,
                    envelope,
                } => {
                    let reply = self.state.invoke_sealed(&invoke_token, envelope).await;
                    self.send(&reply).await?;
                }
                Frame::Kill { session_token } => {
                    let reply = match self.state.sessions.get(&session_token) {
                        Some(session) => {
                            if let Some(handle) = session.handle() {
                                handle.send(SessionEvent::Kill);
                            }
                            Frame::Killed
                        }
                        None => unknown_session(),
                    };
                    self.send(&reply).await?;
                }
                Frame::StatusRequest => {
                    let json = self.state.status_json();
                    self.send(&Frame::Status { json }).await?;
                }
                Frame::Attest { nonce } => {
                    let onion = self.state.tor.as_ref().map(|t| t.onion_address.as_str());
                    let channel_key = self.state.pool.channel_key();
                    let reply = self
                        .state
                        .attestation
                        .answer(nonce, onion, channel_key)
                        .await;
                    self.send(&reply).await?;
                }
                Frame::Attach {
                    session_token,
                    resume_from,
                } => return self.attach(session_token, resume_from).await,
                Frame::Run {
                    filename,
                    source,
                    manifest,
                    entry,
                    args_json,
                } => {
                    let reply = self
                        .run_once(filename, source, manifest, entry, args_json)
                        .await;
                    let session_token = match &reply {
                        Frame::Invoked { session_token, .. } => Some(session_token.clone()),
                        _ => None,
                    };
                    self.send(&reply).await?;
                    // Refused: the connection serves further requests, as
                    // after a refused Invoke.
                    if let Some(token) = session_token {
                        return self.attach(token, None).await;
                    }
                }
                Frame::Connect { service_token } => {
                    return self.connect_service(service_token).await;
                }
                other => {
                    return Err(Close::with(
                        ErrorCode::UnexpectedFrame,
                        format!("{} is not a request", other.frame_type().name()),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn store(
        &mut self,
        filename: String,
        source: String,
        manifest: String,
        lifetime_s: Option<u64>,
    ) -> Frame {
        match self
            .state
            .store_function_for(filename, source, manifest, lifetime_s)
            .await
        {
            // The lifetime is echoed only to clients that asked for one:
            // older clients do not expect the field.
            Ok(stored) => Frame::Stored {
                function_id: stored.function_id,
                invoke_token: stored.invoke_token,
                lifetime_s: lifetime_s.map(|_| stored.lifetime.as_secs()),
            },
            Err(e) => e.into_frame(),
        }
    }

    async fn invoke(
        &mut self,
        token: &bento_protocol::InvokeToken,
        entry: String,
        args_json: String,
        defense: Option<&str>,
    ) -> Frame {
        // The defense is checked before anything starts: a refused one
        // costs the box nothing. Its name is never logged.
        let defense = match defense {
            None => None,
            Some(_) if self.version < PADDING_VERSION => {
                return Frame::error(
                    ErrorCode::DefenseRefused,
                    format!(
                        "a defense needs protocol version {PADDING_VERSION} (Padding frames); this connection speaks {}",
                        self.version
                    ),
                );
            }
            Some(name) => match self.state.config.policy.shaping.admit(name) {
                Ok(defense) => Some(defense),
                Err(refused) => {
                    return Frame::error(ErrorCode::DefenseRefused, refused.to_string());
                }
            },
        };
        let Some(function) = self.state.store.lookup(token) else {
            return Frame::error(
                ErrorCode::UnknownInvokeToken,
                crate::function_store::StoreError::UnknownToken.to_string(),
            );
        };
        if let Some(refusal) = crate::sealed_ops::refuse_plain_invoke(&function) {
            return refusal;
        }
        if let Err(refusal) = check_call(&entry, &args_json) {
            return refusal;
        }
        self.start(&function, entry, args_json, defense).await
    }

    /// `Run`: the checks of a store and of an invoke, then a session of
    /// content that is never written anywhere.
    async fn run_once(
        &mut self,
        filename: String,
        source: String,
        manifest: String,
        entry: String,
        args_json: String,
    ) -> Frame {
        if let Err(refusal) = check_call(&entry, &args_json) {
            return refusal;
        }
        if let Err(refusal) = self.state.check_upload(&filename, &source, &manifest) {
            return refusal.into_frame();
        }
        let function = crate::function_store::StoredFunction::unstored(filename, source, manifest);
        self.start(&function, entry, args_json, None).await
    }

    /// A fresh session of `function`, shaped by `defense` if given:
    /// `Invoked`, or the refusal.
    async fn start(
        &mut self,
        function: &crate::function_store::StoredFunction,
        entry: String,
        args_json: String,
        defense: Option<bento_policy::Defense>,
    ) -> Frame {
        let call = StartCall::Entry { entry, args_json };
        self.state.start_invoked(function, call, defense).await
    }

    /// Serve one channel to a running instance's service until the function
    /// closes it, the instance ends, or the client goes away.
    async fn connect_service(&mut self, token: ServiceToken) -> Result<(), Close> {
        let unknown = || {
            Close::with(
                ErrorCode::UnknownService,
                "no running instance offers a service under this token (it never existed or has ended)",
            )
        };
        let session = self.state.services.get(&token).ok_or_else(|| {
            tracing::debug!("connect: no running service under this token");
            unknown()
        })?;
        let handle = session.handle().cloned().ok_or_else(unknown)?;
        // However this ends, the guard tells the instance that the client
        // is gone.
        let (guard, mut events) = session.open_channel().ok_or_else(|| {
            tracing::debug!("connect: the service could not open a channel");
            unknown()
        })?;
        let channel = guard.id();
        match events.recv().await {
            Some(ChannelEvent::Opened(true)) => {}
            Some(ChannelEvent::Opened(false)) => {
                return Err(Close::with(
                    ErrorCode::ChannelLimit,
                    "the service has as many channels open as its grant (channels and memory) allows; try again later",
                ));
            }
            _ => {
                tracing::debug!("connect: the instance ended before accepting the channel");
                return Err(unknown());
            }
        }
        self.send(&Frame::Connected).await?;
        let mut in_flight = 0u64;
        loop {
            while in_flight < INPUT_WINDOW {
                match self.decoder.decode(&mut self.buf)? {
                    Some(Frame::Input { data }) => {
                        in_flight += data.len() as u64;
                        handle.send(SessionEvent::ChannelInput(channel, data));
                    }
                    Some(Frame::InputEnd) => handle.send(SessionEvent::ChannelEnd(channel, false)),
                    Some(other) => {
                        return Err(Close::with(
                            ErrorCode::UnexpectedFrame,
                            format!(
                                "{} is not allowed on a service channel",
                                other.frame_type().name()
                            ),
                        ));
                    }
                    None => break,
                }
            }
            bento_protocol::reserve_for_next_frame(&mut self.buf);
            tokio::select! {
                event = events.recv() => match event {
                    Some(ChannelEvent::Output(data)) => {
                        for chunk in data.chunks(MAX_DATA_LEN) {
                            self.writer
                                .write_all(&encode_data_header(FrameType::Output, chunk.len()))
                                .await?;
                            self.writer.write_all(chunk).await?;
                        }
                        self.writer.flush().await?;
                        handle.send(SessionEvent::ChannelCredit(channel, data.len() as u64));
                    }
                    Some(ChannelEvent::Consumed(n)) => in_flight = in_flight.saturating_sub(n),
                    Some(ChannelEvent::Closed) => {
                        self.send(&Frame::End).await?;
                        return Ok(());
                    }
                    Some(ChannelEvent::Opened(_)) => {}
                    None => {
                        let outcome = session.lock().outcome().cloned();
                        return Err(Close(Some(service_ended(outcome.as_ref()))));
                    }
                },
                read = self.reader.read_buf(&mut self.buf), if in_flight < INPUT_WINDOW => {
                    match read {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    /// Stream a session: output out, input in, until the function ends and
    /// the client has everything, the client detaches, or another client
    /// takes the session over.
    async fn attach(&mut self, token: SessionToken, resume_from: Option<u64>) -> Result<(), Close> {
        let Some(session) = self.state.sessions.get(&token) else {
            return Err(Close(Some(unknown_session())));
        };
        // A shaped session's output must not go to a client that would
        // choke on padding, nor unshaped to anyone: refuse the attach.
        if session.defense().is_some() && self.version < PADDING_VERSION {
            return Err(Close::with(
                ErrorCode::DefenseRefused,
                format!(
                    "this session is shaped by a defense; attach with protocol version {PADDING_VERSION} (Padding frames)"
                ),
            ));
        }
        let (generation, mut sent) = session.attach(resume_from).map_err(|refused| {
            Close::with(
                ErrorCode::UnexpectedFrame,
                format!(
                    "cannot resume at offset {}: the box holds output {}..{}",
                    refused.start, refused.acked, refused.produced
                ),
            )
        })?;
        self.send(&Frame::Attached { offset: sent }).await?;
        let timeout = self.state.config.read_timeout;
        let mut shaper = match session.defense() {
            Some(defense) => Some(
                OutputShaper::new(
                    defense,
                    self.state.config.policy.shaping.max_padding_bytes(),
                    Instant::now(),
                )
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot shape an attachment");
                    Close::with(ErrorCode::Internal, "the box cannot shape this session now")
                })?,
            ),
            None => None,
        };
        let mut end_sent = false;
        // When the client's current incomplete frame began: its deadline
        // runs from there, however slowly its bytes trickle in.
        self.partial_since = None;
        loop {
            // Register interest before inspecting the state, so no wake-up
            // between the two is missed.
            let changed = session.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            // Shaping: the cells due now go first, and while the defense
            // blocks, ordinary output waits (it rides in those cells).
            let mut shaped = None;
            let mut hold = false;
            if let Some(shaper) = shaper.as_mut() {
                let now = Instant::now();
                let due = shaper.due(now, &session.lock(), sent);
                hold = shaper.holds_output(now);
                if !due.wire.is_empty() {
                    shaped = Some(due);
                }
            }
            if let Some(due) = shaped {
                let deadline =
                    crate::config::frame_deadline(Instant::now(), timeout, due.wire.len());
                let writer = &mut self.writer;
                let write = async {
                    writer.write_all(&due.wire).await?;
                    writer.flush().await
                };
                match tokio::time::timeout_at(deadline.into(), write).await {
                    Ok(result) => result?,
                    Err(_) => return Err(Close(None)),
                }
                sent += due.output_bytes;
            }
            let (chunks, finished, input_blocked, taken_over, expired) = {
                let state = session.lock();
                (
                    if hold {
                        Vec::new()
                    } else {
                        Session::output_from(&state, sent, OUTPUT_BATCH)
                    },
                    state.outcome().cloned(),
                    state.input_blocked(),
                    state.taken_over(generation),
                    state.expired(),
                )
            };
            if expired {
                return Err(Close::with(
                    ErrorCode::UnknownSession,
                    "the session ended longer ago than this box keeps finished sessions; it is forgotten",
                ));
            }
            if taken_over {
                return Err(Close::with(
                    ErrorCode::SessionBusy,
                    "another client attached to this session",
                ));
            }
            // Held output is not all sent: End waits for it.
            let all_sent = sent >= session.lock().produced();
            if !chunks.is_empty() {
                // A client that stops reading must not hold the session
                // (and its reserved output) forever: writing has a deadline
                // like reading.
                let bytes: usize = chunks.iter().map(bytes::Bytes::len).sum();
                let deadline = crate::config::frame_deadline(Instant::now(), timeout, bytes);
                let writer = &mut self.writer;
                let write = async {
                    for chunk in &chunks {
                        writer
                            .write_all(&encode_data_header(FrameType::Output, chunk.len()))
                            .await?;
                        writer.write_all(chunk).await?;
                    }
                    writer.flush().await
                };
                match tokio::time::timeout_at(deadline.into(), write).await {
                    Ok(result) => result?,
                    Err(_) => return Err(Close(None)),
                }
                sent += bytes as u64;
                if let Some(shaper) = shaper.as_mut() {
                    let frames = chunks.len() * bento_protocol::FRAME_HEADER_LEN;
                    shaper.sent(bytes + frames, Instant::now());
                }
            } else if let (Some(outcome), false, true) = (&finished, end_sent, all_sent) {
                let frame = outcome_refusal(outcome).map_or(Frame::End, Refusal::into_frame);
                self.send(&frame).await?;
                end_sent = true;
                session.end_delivered();
                // Nothing follows the last frame: a client that lingers
                // without acknowledging gets no more padding.
                shaper = None;
            }
            // Frames the client sent while input was blocked are already
            // buffered; take them now rather than waiting for more bytes.
            if !input_blocked
                && !self.buf.is_empty()
                && !self
                    .take_client_frames(&session, &token, sent, input_blocked)
                    .await?
            {
                return Ok(());
            }
            let more_output = !hold && {
                let state = session.lock();
                sent < state.produced() || (state.outcome().is_some() && !end_sent)
            };
            if more_output {
                // Keep streaming, but still take any frame the client has
                // already sent (acks keep the function's credit flowing) —
                // unless input is blocked: then the client's bytes stay in
                // the socket, where TCP bounds them.
                if !input_blocked
                    && self.poll_client_now().await?
                    && !self
                        .take_client_frames(&session, &token, sent, input_blocked)
                        .await?
                {
                    return Ok(());
                }
                continue;
            }
            // Complete frames held back by input backpressure are not a
            // stall; only an incomplete frame has a deadline.
            if self.buf.is_empty() || input_blocked {
                self.partial_since = None;
            } else if self.partial_since.is_none() {
                self.partial_since = Some(Instant::now());
            }
            let frame_deadline = self
                .partial_since
                .map(|started| crate::config::frame_deadline(started, timeout, self.buf.len()));
            let shaper_wakeup = shaper.as_ref().and_then(OutputShaper::next_wakeup);
            bento_protocol::reserve_for_next_frame(&mut self.buf);
            tokio::select! {
                _ = &mut changed => {}
                () = sleep_until(shaper_wakeup), if shaper_wakeup.is_some() => {}
                read = self.reader.read_buf(&mut self.buf), if !input_blocked => {
                    match read {
                        Ok(0) => return Ok(()), // client went away; session stays
                        Ok(_) => {}
                        Err(e) => return Err(e.into()),
                    }
                    if !self.take_client_frames(&session, &token, sent, input_blocked).await? {
                        return Ok(());
                    }
                }
                () = sleep_until(frame_deadline), if frame_deadline.is_some() => {
                    return Err(Close::with(
                        ErrorCode::Timeout,
                        "stalled inside a frame: it was not complete by its deadline",
                    ));
                }
            }
        }
    }

    /// Read whatever the client has already sent, without waiting.
    async fn poll_client_now(&mut self) -> Result<bool, Close> {
        bento_protocol::reserve_for_next_frame(&mut self.buf);
        match futures_poll_once(self.reader.read_buf(&mut self.buf)).await {
            Some(Ok(0)) => Err(Close(None)),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e.into()),
            None => Ok(false),
        }
    }

    /// Handle every complete client frame in the buffer. Returns false when
    /// the client detached or finished.
    async fn take_client_frames(
        &mut self,
        session: &Arc<Session>,
        token: &SessionToken,
        sent: u64,
        mut input_blocked: bool,
    ) -> Result<bool, Close> {
        while !input_blocked {
            let Some(frame) = self.decoder.decode(&mut self.buf)? else {
                return Ok(true);
            };
            // A complete frame: the deadline of whatever follows it in the
            // buffer starts now, so a client streaming frames back to back
            // is never cut off.
            self.partial_since = None;
            match frame {
                Frame::Input { data } => input_blocked = session.push_input(data),
                Frame::InputEnd => {
                    if let Some(handle) = session.handle() {
                        handle.send(SessionEvent::InputEnd);
                    }
                }
                Frame::Ack { offset } => {
                    if offset > sent || !session.acknowledge(offset) {
                        return Err(Close::with(
                            ErrorCode::UnexpectedFrame,
                            format!("acknowledged offset {offset} was never sent"),
                        ));
                    }
                    if session.lock().fully_delivered() {
                        // The client has every byte and the end: forget it.
                        self.state.sessions.remove(token);
                        return Ok(false);
                    }
                }
                // Padding from a client that negotiated it: discarded, it
                // is neither input nor acknowledgement.
                Frame::Padding { .. } if self.version >= PADDING_VERSION => {}
                Frame::Detach => {
                    // Everything the client acknowledged before detaching
                    // is recorded; say so, so that it can re-attach at once.
                    let offset = session.lock().acked();
                    self.send(&Frame::Detached { offset }).await?;
                    return Ok(false);
                }
                other => {
                    return Err(Close::with(
                        ErrorCode::UnexpectedFrame,
                        format!(
                            "{} is not allowed while attached",
                            other.frame_type().name()
                        ),
                    ));
                }
            }
        }
        Ok(true)
    }
}

/// The error a channel's client gets when the instance ends without
/// closing the channel. A traceback stays with the invoker: it can show the
/// function's source and data, and a channel client is someone else.
fn service_ended(outcome: Option<&bento_worker_contract::InstanceOutcome>) -> Frame {
    use bento_worker_contract::InstanceOutcome;
    match outcome {
        Some(InstanceOutcome::Exception(_)) => Frame::error(
            ErrorCode::FunctionException,
            "the service's instance failed with an exception (its invoker has the traceback)",
        ),
        Some(InstanceOutcome::PolicyRefused(_)) => Frame::error(
            ErrorCode::PolicyRefused,
            "the service's instance was refused something by the box's rules (its invoker has the traceback)",
        ),
        Some(other) => match outcome_refusal(other) {
            Some(refusal) => Frame::error(
                refusal.code,
                format!("the service's instance ended: {}", refusal.message),
            ),
            None => Frame::error(ErrorCode::UnknownService, "the service's instance ended"),
        },
        None => Frame::error(ErrorCode::UnknownService, "the service's instance ended"),
    }
}

/// An entry point and arguments a session can start with, or the error
/// frame saying why not.
fn check_call(entry: &str, args_json: &str) -> Result<(), Frame> {
    if !is_identifier(entry) {
        return Err(Frame::error(
            ErrorCode::InvalidArguments,
            format!("entry {entry:?} is not a Python identifier"),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(args_json) {
        Ok(serde_json::Value::Array(_)) => Ok(()),
        Ok(_) => Err(Frame::error(
            ErrorCode::InvalidArguments,
            "arguments must be a JSON array",
        )),
        Err(e) => Err(Frame::error(
            ErrorCode::InvalidArguments,
            format!("arguments are not JSON: {e}"),
        )),
    }
}

/// Sleep until `deadline` (forever without one; callers guard the branch).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Poll a future once; `None` if it is not ready.
async fn futures_poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = future => Some(out),
        () = std::future::ready(()) => None,
    }
}

pub(crate) fn unknown_session() -> Frame {
    Frame::error(
        ErrorCode::UnknownSession,
        "no session has this token (it never existed, has ended and been read, or expired)",
    )
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && name.len() <= 255
}
