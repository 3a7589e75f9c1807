//! The session channel as the guest sees it: WASI stdin/stdout backed by a
//! bounded input queue and credit-limited output.
//!
//! Output is credit-based: the owner of the session (the worker, on behalf of
//! the server's output buffer) grants credit in bytes; the guest's stdout
//! accepts at most that many bytes and then blocks until more is granted.
//! That is how a full session buffer turns into backpressure on `api.send`
//! instead of unbounded memory or dropped output.
//!
//! Every blocking wait wakes on kill and on the wall-clock deadline.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

use bento_worker_contract::{
    CHANNEL_CREDIT, ChannelEvent, INPUT_WINDOW, InstanceEvent, InstanceEvents, MAX_MESSAGE_LEN,
    MESSAGE_CREDIT, OnionRequest, SessionEvent,
};

use crate::host_error::HostError;
use crate::memory::{HostBytes, InstanceMemory};
use crate::throttle::Throttle;

/// Why a function's `begin-message` was refused; the instance traps with
/// this text (the call has no way to return an error to Python, and only a
/// function calling the host interface directly can get here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The instance is being stopped.
    #[error("instance stopped: {0:?}")]
    Stopped(StopReason),
    /// The announced length is beyond [`MAX_MESSAGE_LEN`].
    #[error("begin-message announced {length} bytes; a message is at most {MAX_MESSAGE_LEN} bytes")]
    TooLong {
        /// The announced length.
        length: u64,
    },
    /// A message was begun before the previous one was completely written.
    #[error(
        "begin-message while {remaining} bytes of the previous message were still to be written"
    )]
    Unfinished {
        /// Bytes of the previous message not yet written.
        remaining: u64,
    },
}

impl From<StopReason> for MessageError {
    fn from(reason: StopReason) -> Self {
        MessageError::Stopped(reason)
    }
}

/// Largest chunk in one [`InstanceEvent::Output`].
pub(crate) const MAX_OUTPUT_CHUNK: usize = 1024 * 1024;

/// Largest body a function may stage for one capability call; stream
/// sends are split into pieces of at most 1 MiB by the runtime.
pub const MAX_STAGED: u64 = 16 * 1024 * 1024;

/// A session nobody is attached to and nobody will read: output is
/// dropped. For compiling a function without running it, and for timing
/// the sandbox alone (`bento bench`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardedSession;

impl InstanceEvents for DiscardedSession {
    fn on_event(&self, _event: InstanceEvent) {}
}

/// Why a blocking capability call returned without its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitError {
    /// The instance is being stopped.
    Stopped(StopReason),
    /// The caller's own timeout passed.
    TimedOut,
}

impl From<StopReason> for WaitError {
    fn from(reason: StopReason) -> Self {
        WaitError::Stopped(reason)
    }
}

/// One service channel, as the instance sees it.
#[derive(Debug, Default)]
struct ChannelState {
    inbound: VecDeque<Bytes>,
    /// The client ended its input.
    input_ended: bool,
    /// The client is gone: sending fails.
    gone: bool,
    /// Bytes the function may still send before the box passes them on.
    credit: u64,
    /// The channel's input window, counted in the instance's memory while
    /// the channel is open.
    _window: Option<HostBytes>,
}

/// Why a running instance is being stopped from outside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Killed on request.
    Killed,
    /// The wall-clock limit passed.
    WallTime,
    /// The CPU limit was used up.
    Cpu,
    /// The memory limit was hit.
    Memory,
}

#[derive(Default)]
struct IoState {
    /// Complete client messages not yet started by the guest.
    messages: VecDeque<Bytes>,
    /// The unread rest of the message the guest is reading.
    current: Bytes,
    input_closed: bool,
    output_credit: u64,
    /// Credit every output chunk costs beyond its bytes: a sealed session's
    /// record overhead, which the owner's host adds to each chunk (see
    /// [`SessionIo::set_chunk_overhead`]).
    chunk_overhead: u64,
    /// Bytes of the current message (see `begin_message`) still to be
    /// written; a new message may begin only once this is zero.
    message_remaining: u64,
    stop: Option<StopReason>,
    /// Output bytes still to be staged for a capability call instead of
    /// reaching the session (see `capabilities.stage`).
    route_remaining: u64,
    staged: Vec<u8>,
    /// The staging buffer's size, counted in the instance's memory from
    /// `stage` until the capability call that used it returns.
    staged_charge: Option<HostBytes>,
    /// A capability result the guest reads from stdin before any session
    /// input (not session traffic: not acknowledged, not throttled).
    pending: Bytes,
    /// What is left of `pending`, counted in the instance's memory.
    pending_charge: Option<HostBytes>,
    /// Service channels by the box's channel id.
    channels: HashMap<u32, ChannelState>,
    /// Channels the function has not accepted yet.
    incoming: VecDeque<u32>,
    /// Channels and connections open (including not yet accepted ones).
    open_channels: u64,
    /// Answers to onion-service requests, by request number.
    onion_replies: HashMap<u32, Result<String, String>>,
    next_onion_request: u32,
}

/// Shared state of one session's I/O, between the guest's thread and the
/// owner that feeds input, grants credit and may kill.
pub struct SessionIo {
    state: Mutex<IoState>,
    changed: Condvar,
    host: Arc<dyn InstanceEvents>,
    deadline: Instant,
    throttle: Throttle,
    channel_limit: u64,
    memory: Arc<InstanceMemory>,
    /// The session's input window, counted for the instance's lifetime.
    _input_window: HostBytes,
}

/// A body staged by the function for a capability call; its bytes stay
/// counted in the instance's memory until this is dropped.
pub(crate) struct Staged {
    pub(crate) data: Vec<u8>,
    _charge: Option<HostBytes>,
}

impl std::fmt::Debug for SessionIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionIo").finish_non_exhaustive()
    }
}

impl SessionIo {
    /// A session channel whose waits end at `deadline` (the wall-clock
    /// limit), starting with `initial_credit` bytes of output credit.
    /// Its memory is not limited.
    pub fn new(host: Arc<dyn InstanceEvents>, deadline: Instant, initial_credit: u64) -> Arc<Self> {
        Self::with_limits(
            host,
            deadline,
            initial_credit,
            Throttle::unlimited(),
            0,
            u64::MAX,
        )
    }

    /// Like [`SessionIo::new`], charging all traffic to `throttle`,
    /// allowing `channel_limit` service channels and connections at once,
    /// and counting the instance's linear memory and host buffers against
    /// `memory_bytes` (see [`InstanceMemory`]).
    pub fn with_limits(
        host: Arc<dyn InstanceEvents>,
        deadline: Instant,
        initial_credit: u64,
        throttle: Throttle,
        channel_limit: u64,
        memory_bytes: u64,
    ) -> Arc<Self> {
        let memory = InstanceMemory::new(memory_bytes);
        let input_window = memory.reserve_anyway(INPUT_WINDOW);
        Arc::new(Self {
            state: Mutex::new(IoState {
                output_credit: initial_credit,
                ..IoState::default()
            }),
            changed: Condvar::new(),
            host,
            deadline,
            throttle,
            channel_limit,
            memory,
            _input_window: input_window,
        })
    }

    /// The instance's memory account.
    pub fn memory(&self) -> &Arc<InstanceMemory> {
        &self.memory
    }

    /// Count `bytes` of a host buffer the function asked for; beyond the
    /// limit the instance is stopped for memory, as when its linear memory
    /// cannot grow (the function cannot catch and ignore it).
    pub(crate) fn reserve(&self, bytes: u64) -> Result<HostBytes, StopReason> {
        self.memory.reserve(bytes).map_err(|_| {
            self.stop(StopReason::Memory);
            StopReason::Memory
        })
    }

    fn lock(&self) -> MutexGuard<'_, IoState> {
        // A panic while holding this lock cannot leave the state torn (every
        // update is a single field write), so poisoning is safe to ignore.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply what the session told the instance: the one way session
    /// events reach it (the worker calls this for each `SessionEvent` it
    /// decodes from the pipe, after opening a sealed instance's input).
    pub fn apply(&self, event: SessionEvent) {
        match event {
            SessionEvent::Input(message) => self.push_input(message),
            SessionEvent::InputEnd => self.close_input(),
            SessionEvent::Credit(bytes) => self.grant_credit(bytes),
            SessionEvent::Kill => self.stop(StopReason::Killed),
            SessionEvent::ChannelOpen(channel) => self.open_channel(channel),
            SessionEvent::ChannelInput(channel, data) => self.channel_input(channel, data),
            SessionEvent::ChannelEnd(channel, gone) => self.channel_end(channel, gone),
            SessionEvent::ChannelCredit(channel, bytes) => self.channel_credit(channel, bytes),
            SessionEvent::OnionReply(request, result) => self.onion_reply(request, result),
        }
    }

    /// Queue one client message for `api.recv()`.
    pub(crate) fn push_input(&self, message: Bytes) {
        let mut state = self.lock();
        state.messages.push_back(message);
        self.changed.notify_all();
    }

    /// The client closed its input: `api.recv()` returns `b""` once the
    /// queued messages are read.
    pub(crate) fn close_input(&self) {
        self.lock().input_closed = true;
        self.changed.notify_all();
    }

    /// Charge `overhead` bytes of credit for every output chunk on top of
    /// its length: the host turns each chunk into that much more (a sealed
    /// session's record header and tag), and the server counts credit in
    /// what it receives.
    pub fn set_chunk_overhead(&self, overhead: u64) {
        self.lock().chunk_overhead = overhead;
    }

    /// Allow `bytes` more output.
    pub(crate) fn grant_credit(&self, bytes: u64) {
        let mut state = self.lock();
        state.output_credit = state.output_credit.saturating_add(bytes);
        self.changed.notify_all();
    }

    /// Stop the instance as soon as possible: blocked waits return at once
    /// and running wasm traps at its next epoch check.
    pub fn stop(&self, reason: StopReason) {
        let mut state = self.lock();
        state.stop.get_or_insert(reason);
        self.changed.notify_all();
    }

    /// The reason the instance was stopped from outside, if it was.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.lock().stop
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Wait on the condition variable until `ready` holds, honouring kill
    /// and the wall-clock deadline.
    fn wait_until<'a>(
        &'a self,
        mut state: MutexGuard<'a, IoState>,
        mut ready: impl FnMut(&mut IoState) -> bool,
    ) -> Result<MutexGuard<'a, IoState>, StopReason> {
        loop {
            if let Some(reason) = state.stop {
                return Err(reason);
            }
            if ready(&mut state) {
                return Ok(state);
            }
            let now = Instant::now();
            if now >= self.deadline {
                state.stop.get_or_insert(StopReason::WallTime);
                continue;
            }
            state = self
                .changed
                .wait_timeout(state, self.deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Like `wait_until`, but also gives up at `until` (a caller's timeout).
    fn wait_until_or<'a>(
        &'a self,
        mut state: MutexGuard<'a, IoState>,
        mut ready: impl FnMut(&mut IoState) -> bool,
        until: Option<Instant>,
    ) -> Result<MutexGuard<'a, IoState>, WaitError> {
        loop {
            if let Some(reason) = state.stop {
                return Err(reason.into());
            }
            if ready(&mut state) {
                return Ok(state);
            }
            let now = Instant::now();
            if now >= self.deadline {
                state.stop.get_or_insert(StopReason::WallTime);
                continue;
            }
            let mut wake = self.deadline;
            if let Some(until) = until {
                if now >= until {
                    return Err(WaitError::TimedOut);
                }
                wake = wake.min(until);
            }
            state = self
                .changed
                .wait_timeout(state, wake - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Block for `duration` (or until stopped), using no CPU.
    pub(crate) fn sleep(&self, duration: Duration) -> Result<(), StopReason> {
        let until = Instant::now()
            .checked_add(duration)
            .unwrap_or(self.deadline);
        match self.wait_until_or(self.lock(), |_| false, Some(until)) {
            Err(WaitError::Stopped(reason)) => Err(reason),
            _ => Ok(()),
        }
    }

    /// Charge `bytes` of traffic to the instance's bandwidth limits and
    /// wait as long as they say (backpressure, not failure).
    pub(crate) fn throttle(&self, bytes: u64) -> Result<(), StopReason> {
        let wait = self.throttle.charge(bytes);
        if wait.is_zero() {
            return Ok(());
        }
        self.sleep(wait)
    }

    /// Block until the next client message; returns its length, or `None`
    /// once input is closed and drained.
    pub(crate) fn next_message(&self) -> Result<Option<u32>, StopReason> {
        let state = self.lock();
        let mut state = self.wait_until(state, |s| !s.messages.is_empty() || s.input_closed)?;
        // An unread capability result is dropped, like an unread remainder
        // of the previous message: recv() always returns whole messages.
        state.pending = Bytes::new();
        state.pending_charge = None;
        let skipped = state.current.len() as u64;
        match state.messages.pop_front() {
            Some(message) => {
                let len = message.len();
                state.current = message;
                drop(state);
                if skipped > 0 {
                    self.host.on_event(InstanceEvent::InputConsumed(skipped));
                }
                Ok(Some(u32::try_from(len).unwrap_or(u32::MAX)))
            }
            None => Ok(None),
        }
    }

    /// The next `length` output bytes form one message. The length is the
    /// guest's word, so it is checked: bounded by [`MAX_MESSAGE_LEN`], and
    /// messages never overlap (the owner frames output by them).
    pub(crate) fn begin_message(&self, length: u64) -> Result<(), MessageError> {
        if length > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLong { length });
        }
        let state = self.lock();
        if state.message_remaining > 0 {
            return Err(MessageError::Unfinished {
                remaining: state.message_remaining,
            });
        }
        let mut state = self.wait_until(state, |s| s.output_credit >= MESSAGE_CREDIT)?;
        state.output_credit -= MESSAGE_CREDIT;
        state.message_remaining = length;
        drop(state);
        self.host.on_event(InstanceEvent::MessageStart(length));
        Ok(())
    }

    /// Whether a client message is waiting.
    pub(crate) fn poll(&self) -> bool {
        let state = self.lock();
        !state.current.is_empty() || !state.messages.is_empty()
    }

    fn read_input(&self, max: usize) -> StreamResult<Bytes> {
        let mut state = self.lock();
        if state.stop.is_some() {
            return Err(StreamError::Closed);
        }
        if !state.pending.is_empty() {
            let take = max.min(state.pending.len());
            let chunk = state.pending.split_to(take);
            let left = state.pending.len() as u64;
            if let Some(charge) = &mut state.pending_charge {
                // Shrinking never fails.
                let _ = charge.resize(left);
            }
            return Ok(chunk);
        }
        if state.current.is_empty() {
            match state.messages.pop_front() {
                Some(message) => state.current = message,
                None if state.input_closed => return Err(StreamError::Closed),
                None => return Ok(Bytes::new()),
            }
        }
        let take = max.min(state.current.len());
        let chunk = state.current.split_to(take);
        drop(state);
        if self.throttle(chunk.len() as u64).is_err() {
            return Err(StreamError::Closed);
        }
        self.host
            .on_event(InstanceEvent::InputConsumed(chunk.len() as u64));
        Ok(chunk)
    }

    fn wait_input_ready(&self) {
        let state = self.lock();
        // A stop is reported by the next read; nothing to do with it here.
        drop(self.wait_until(state, |s| {
            !s.pending.is_empty()
                || !s.current.is_empty()
                || !s.messages.is_empty()
                || s.input_closed
        }));
    }

    fn output_permit(&self) -> StreamResult<usize> {
        let state = self.lock();
        if let Some(reason) = state.stop {
            return Err(StreamError::trap(&format!("session stopped: {reason:?}")));
        }
        if state.route_remaining > 0 {
            return Ok(usize::try_from(state.route_remaining)
                .unwrap_or(usize::MAX)
                .min(MAX_OUTPUT_CHUNK));
        }
        Ok(
            usize::try_from(state.output_credit.saturating_sub(state.chunk_overhead))
                .unwrap_or(usize::MAX)
                .min(MAX_OUTPUT_CHUNK),
        )
    }

    fn write_output(&self, data: Bytes) -> StreamResult<()> {
        let mut state = self.lock();
        if let Some(reason) = state.stop {
            return Err(StreamError::trap(&format!("session stopped: {reason:?}")));
        }
        let len = data.len() as u64;
        if state.route_remaining > 0 {
            if len > state.route_remaining {
                return Err(StreamError::trap("wrote more than check-write permitted"));
            }
            state.route_remaining -= len;
            state.staged.extend_from_slice(&data);
            return Ok(());
        }
        let charged = len.saturating_add(state.chunk_overhead);
        if charged > state.output_credit {
            return Err(StreamError::trap("wrote more than check-write permitted"));
        }
        state.output_credit -= charged;
        state.message_remaining = state.message_remaining.saturating_sub(len);
        drop(state);
        if let Err(reason) = self.throttle(len) {
            return Err(StreamError::trap(&format!("session stopped: {reason:?}")));
        }
        self.host.on_event(InstanceEvent::Output(data));
        Ok(())
    }

    fn wait_output_credit(&self) {
        let state = self.lock();
        // A stop is reported by the next check-write; nothing to do here.
        drop(self.wait_until(state, |s| {
            s.output_credit > s.chunk_overhead || s.route_remaining > 0
        }));
    }

    // ---- capability plumbing ------------------------------------------

    /// Route the next `length` stdout bytes into the staging buffer.
    pub(crate) fn stage(&self, length: u64) -> Result<(), HostError> {
        if length > MAX_STAGED {
            return Err(HostError::invalid(format!(
                "{length} bytes is more than the {MAX_STAGED} bytes one call can take"
            )));
        }
        // A previous body staged but never used is given back first.
        self.lock().staged_charge = None;
        let charge = self.reserve(length).map_err(HostError::stopped)?;
        let mut state = self.lock();
        state.route_remaining = length;
        state.staged = Vec::with_capacity(usize::try_from(length.min(1 << 20)).unwrap_or(0));
        state.staged_charge = Some(charge);
        Ok(())
    }

    /// The staged body, once completely written.
    pub(crate) fn take_staged(&self) -> Result<Staged, HostError> {
        let mut state = self.lock();
        if state.route_remaining > 0 {
            state.route_remaining = 0;
            state.staged = Vec::new();
            state.staged_charge = None;
            return Err(HostError::invalid(
                "the staged body was not completely written",
            ));
        }
        Ok(Staged {
            data: std::mem::take(&mut state.staged),
            _charge: state.staged_charge.take(),
        })
    }

    /// Make `data` the next bytes the guest reads from stdin. Its bytes
    /// count in the instance's memory until read; beyond the limit the
    /// instance is stopped for memory.
    pub(crate) fn set_pending(&self, data: Bytes) -> Result<(), StopReason> {
        let mut state = self.lock();
        // The result it replaces is gone: give its bytes back first.
        state.pending = Bytes::new();
        state.pending_charge = None;
        drop(state);
        let charge = self.reserve(data.len() as u64)?;
        let mut state = self.lock();
        state.pending = data;
        state.pending_charge = Some(charge);
        Ok(())
    }

    /// Count one more channel or connection, if the grant allows it.
    pub(crate) fn try_open_channel(&self) -> bool {
        let mut state = self.lock();
        if state.open_channels >= self.channel_limit {
            return false;
        }
        state.open_channels += 1;
        true
    }

    /// A channel or connection was closed.
    pub(crate) fn channel_released(&self) {
        let mut state = self.lock();
        state.open_channels = state.open_channels.saturating_sub(1);
    }

    /// The channel limit, for messages.
    pub(crate) fn channel_limit(&self) -> u64 {
        self.channel_limit
    }

    /// A client connected to the instance's service: queue the channel for
    /// `accept`, or refuse it when the instance is at its channel limit.
    pub(crate) fn open_channel(&self, channel: u32) {
        let accepted = {
            let mut state = self.lock();
            // A channel's input window is memory of the instance: no room
            // for it refuses the channel like the channel limit does.
            let window = (state.stop.is_none()
                && state.open_channels < self.channel_limit
                && !state.channels.contains_key(&channel))
            .then(|| self.memory.reserve(INPUT_WINDOW).ok())
            .flatten();
            let room = window.is_some();
            if room {
                state.open_channels += 1;
                state.channels.insert(
                    channel,
                    ChannelState {
                        credit: CHANNEL_CREDIT,
                        _window: window,
                        ..ChannelState::default()
                    },
                );
            }
            room
        };
        // The box hears that the channel is open before the function can
        // accept it (and send on it): the other order would let output
        // overtake the acceptance.
        self.host.on_event(InstanceEvent::Channel(
            channel,
            ChannelEvent::Opened(accepted),
        ));
        if accepted {
            self.lock().incoming.push_back(channel);
            self.changed.notify_all();
        }
    }

    /// Bytes from a service channel's client.
    pub(crate) fn channel_input(&self, channel: u32, data: Bytes) {
        if let Some(ch) = self.lock().channels.get_mut(&channel) {
            ch.inbound.push_back(data);
        }
        self.changed.notify_all();
    }

    /// The channel's client ended its input (`gone`: and went away, so
    /// sending fails too).
    pub(crate) fn channel_end(&self, channel: u32, gone: bool) {
        if let Some(ch) = self.lock().channels.get_mut(&channel) {
            ch.input_ended = true;
            ch.gone |= gone;
        }
        self.changed.notify_all();
    }

    /// The box passed `bytes` of the channel's output on.
    pub(crate) fn channel_credit(&self, channel: u32, bytes: u64) {
        if let Some(ch) = self.lock().channels.get_mut(&channel) {
            ch.credit = ch.credit.saturating_add(bytes);
        }
        self.changed.notify_all();
    }

    /// Wait for the next incoming service channel.
    pub(crate) fn accept(&self, until: Option<Instant>) -> Result<u32, WaitError> {
        let state = self.lock();
        let mut state = self.wait_until_or(state, |s| !s.incoming.is_empty(), until)?;
        state.incoming.pop_front().ok_or(WaitError::TimedOut)
    }

    /// Wait until one of `channels` has input (or its end) waiting or, with
    /// `accept`, a new channel waits to be accepted; at most until `until`.
    /// Returns the ready channels and whether one waits to be accepted
    /// (both empty/false when `until` passed first).
    pub(crate) fn wait_channels(
        &self,
        channels: &[u32],
        accept: bool,
        until: Option<Instant>,
    ) -> Result<(Vec<u32>, bool), StopReason> {
        let readable = |s: &IoState, channel: &u32| {
            s.channels
                .get(channel)
                .is_none_or(|c| !c.inbound.is_empty() || c.input_ended)
        };
        let any = |s: &mut IoState| {
            (accept && !s.incoming.is_empty()) || channels.iter().any(|c| readable(s, c))
        };
        match self.wait_until_or(self.lock(), any, until) {
            Ok(state) => Ok((
                channels
                    .iter()
                    .copied()
                    .filter(|c| readable(&state, c))
                    .collect(),
                accept && !state.incoming.is_empty(),
            )),
            Err(WaitError::TimedOut) => Ok((Vec::new(), false)),
            Err(WaitError::Stopped(reason)) => Err(reason),
        }
    }

    /// Wait for input on a service channel; `None` at its end.
    pub(crate) fn channel_recv(
        &self,
        channel: u32,
        max: usize,
        until: Option<Instant>,
    ) -> Result<Option<Bytes>, WaitError> {
        let state = self.lock();
        let mut state = self.wait_until_or(
            state,
            |s| {
                s.channels
                    .get(&channel)
                    .is_none_or(|c| !c.inbound.is_empty() || c.input_ended)
            },
            until,
        )?;
        let Some(ch) = state.channels.get_mut(&channel) else {
            return Ok(None);
        };
        let Some(front) = ch.inbound.front_mut() else {
            return Ok(None);
        };
        let chunk = if front.len() <= max {
            ch.inbound.pop_front().unwrap_or_default()
        } else {
            front.split_to(max)
        };
        drop(state);
        self.throttle(chunk.len() as u64)?;
        self.host.on_event(InstanceEvent::Channel(
            channel,
            ChannelEvent::Consumed(chunk.len() as u64),
        ));
        Ok(Some(chunk))
    }

    /// Send on a service channel, waiting for channel credit.
    pub(crate) fn channel_send(&self, channel: u32, data: &[u8]) -> Result<(), HostError> {
        let mut rest = data;
        while !rest.is_empty() {
            let state = self.lock();
            let state = self.wait_until_or(
                state,
                |s| {
                    s.channels
                        .get(&channel)
                        .is_none_or(|c| c.credit > 0 || c.gone)
                },
                None,
            );
            let mut state = match state {
                Ok(state) => state,
                Err(WaitError::Stopped(reason)) => return Err(HostError::stopped(reason)),
                Err(WaitError::TimedOut) => {
                    return Err(HostError::timeout("the channel is stalled"));
                }
            };
            let Some(ch) = state.channels.get_mut(&channel) else {
                return Err(HostError::closed("the channel is closed"));
            };
            if ch.gone {
                return Err(HostError::closed("the channel's client went away"));
            }
            let take = usize::try_from(ch.credit)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            ch.credit -= take as u64;
            drop(state);
            self.throttle(take as u64).map_err(HostError::stopped)?;
            self.host.on_event(InstanceEvent::Channel(
                channel,
                ChannelEvent::Output(Bytes::copy_from_slice(&rest[..take])),
            ));
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Ask the box for an onion service and wait for its address.
    pub(crate) fn onion_request(
        &self,
        port: u16,
        key: Option<String>,
    ) -> Result<String, HostError> {
        let request = {
            let mut state = self.lock();
            state.next_onion_request += 1;
            state.next_onion_request
        };
        self.host.on_event(InstanceEvent::OnionRequest(
            request,
            OnionRequest { port, key },
        ));
        // Publishing takes a few seconds on a healthy tor; the box answers
        // with an error after its own timeout, so wait up to the deadline.
        let state = self.lock();
        let mut state = self
            .wait_until_or(state, |s| s.onion_replies.contains_key(&request), None)
            .map_err(|e| match e {
                WaitError::Stopped(reason) => HostError::stopped(reason),
                WaitError::TimedOut => HostError::timeout("no answer from the box"),
            })?;
        match state.onion_replies.remove(&request) {
            Some(Ok(address)) => Ok(address),
            Some(Err(text)) => Err(HostError::from_box_reply(&text)),
            None => Err(HostError::io("no answer from the box")),
        }
    }

    /// The box's answer to onion-service request `request`.
    pub(crate) fn onion_reply(&self, request: u32, result: Result<String, String>) {
        self.lock().onion_replies.insert(request, result);
        self.changed.notify_all();
    }

    /// Drop a service channel without telling its client (the instance
    /// failed; the outcome tells it).
    pub(crate) fn channel_forget(&self, channel: u32) {
        if self.lock().channels.remove(&channel).is_some() {
            self.channel_released();
        }
    }

    /// The function closed a service channel.
    pub(crate) fn channel_close(&self, channel: u32) {
        let existed = self.lock().channels.remove(&channel).is_some();
        if existed {
            self.channel_released();
            self.host
                .on_event(InstanceEvent::Channel(channel, ChannelEvent::Closed));
        }
    }
}

/// The guest's stdin: the client's messages, concatenated.
pub(crate) struct SessionStdin(pub(crate) Arc<SessionIo>);
/// The guest's stdout: the session's output.
pub(crate) struct SessionStdout(pub(crate) Arc<SessionIo>);

struct InputHandle(Arc<SessionIo>);
struct OutputHandle(Arc<SessionIo>);

impl IsTerminal for SessionStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl IsTerminal for SessionStdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for SessionStdin {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(Unsupported)
    }

    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(InputHandle(self.0.clone()))
    }
}

impl StdoutStream for SessionStdout {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Unsupported)
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(OutputHandle(self.0.clone()))
    }
}

// The instance runs synchronously on its own thread; wasmtime-wasi's sync
// bindings drive these futures with `block_on` on that same thread, so
// blocking on the condition variable here blocks only this instance.
#[async_trait::async_trait]
impl Pollable for InputHandle {
    async fn ready(&mut self) {
        self.0.wait_input_ready();
    }
}

impl InputStream for InputHandle {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.0.read_input(size)
    }
}

#[async_trait::async_trait]
impl Pollable for OutputHandle {
    async fn ready(&mut self) {
        self.0.wait_output_credit();
    }
}

impl OutputStream for OutputHandle {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write_output(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.0.output_permit()
    }
}

/// The WASIp3 stdio entry points, which Bento does not link.
struct Unsupported;

fn unsupported() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "Bento sessions support WASIp2 streams only",
    )
}

impl tokio::io::AsyncRead for Unsupported {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(unsupported()))
    }
}

impl tokio::io::AsyncWrite for Unsupported {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(unsupported()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(unsupported()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(unsupported()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Default)]
    struct Recorder {
        output: Mutex<Vec<u8>>,
        consumed: Mutex<u64>,
    }

    impl InstanceEvents for Recorder {
        fn on_event(&self, event: InstanceEvent) {
            match event {
                InstanceEvent::Output(data) => {
                    self.output.lock().unwrap().extend_from_slice(&data);
                }
                InstanceEvent::InputConsumed(bytes) => *self.consumed.lock().unwrap() += bytes,
                _ => {}
            }
        }
    }

    fn io(credit: u64, wall: Duration) -> (Arc<Recorder>, Arc<SessionIo>) {
        let recorder = Arc::new(Recorder::default());
        let io = SessionIo::new(recorder.clone(), Instant::now() + wall, credit);
        (recorder, io)
    }

    #[test]
    fn output_beyond_credit_is_refused_until_credit_is_granted() {
        let (recorder, io) = io(4, Duration::from_secs(60));
        assert_eq!(io.output_permit().unwrap(), 4);
        io.write_output(Bytes::from_static(b"abcd")).unwrap();
        assert_eq!(io.output_permit().unwrap(), 0);
        assert!(io.write_output(Bytes::from_static(b"e")).is_err());
        io.grant_credit(10);
        io.write_output(Bytes::from_static(b"e")).unwrap();
        assert_eq!(&*recorder.output.lock().unwrap(), b"abcde");
    }

    #[test]
    fn a_sealed_sessions_chunk_overhead_is_charged_to_its_credit() {
        let (recorder, io) = io(30, Duration::from_secs(60));
        io.set_chunk_overhead(20);
        // 30 of credit: one chunk of at most 10 bytes (plus 20 overhead).
        assert_eq!(io.output_permit().unwrap(), 10);
        assert!(io.write_output(Bytes::from_static(b"abcdefghijk")).is_err());
        io.write_output(Bytes::from_static(b"abcdefghij")).unwrap();
        assert_eq!(io.output_permit().unwrap(), 0);
        // Credit no larger than the overhead allows nothing.
        io.grant_credit(20);
        assert_eq!(io.output_permit().unwrap(), 0);
        assert!(io.write_output(Bytes::new()).is_ok());
        assert!(io.write_output(Bytes::from_static(b"x")).is_err());
        io.grant_credit(21);
        io.write_output(Bytes::from_static(b"x")).unwrap();
        assert_eq!(&*recorder.output.lock().unwrap(), b"abcdefghijx");
    }

    #[test]
    fn a_message_longer_than_any_frame_or_overlapping_the_previous_one_is_refused() {
        let (recorder, io) = io(1024, Duration::from_secs(60));
        assert_eq!(
            io.begin_message(u64::MAX),
            Err(MessageError::TooLong { length: u64::MAX })
        );
        assert_eq!(
            io.begin_message(MAX_MESSAGE_LEN + 1),
            Err(MessageError::TooLong {
                length: MAX_MESSAGE_LEN + 1
            })
        );
        io.begin_message(5).unwrap();
        io.write_output(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(
            io.begin_message(1),
            Err(MessageError::Unfinished { remaining: 2 }),
            "a message may not begin inside another"
        );
        io.write_output(Bytes::from_static(b"de")).unwrap();
        io.begin_message(0).unwrap();
        io.begin_message(MAX_MESSAGE_LEN).unwrap();
        assert_eq!(&*recorder.output.lock().unwrap(), b"abcde");
    }

    #[test]
    fn waiting_for_credit_ends_when_the_session_is_killed() {
        let (_, io) = io(0, Duration::from_secs(60));
        let killer = io.clone();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            killer.stop(StopReason::Killed);
        });
        io.wait_output_credit();
        assert_eq!(io.stop_reason(), Some(StopReason::Killed));
        assert!(io.output_permit().is_err());
        handle.join().unwrap();
    }

    #[test]
    fn waiting_for_input_ends_at_the_wall_clock_deadline() {
        let (_, io) = io(0, Duration::from_millis(10));
        assert_eq!(io.next_message(), Err(StopReason::WallTime));
    }

    #[test]
    fn messages_keep_their_boundaries_and_consumption_is_reported() {
        let (recorder, io) = io(0, Duration::from_secs(60));
        io.push_input(Bytes::from_static(b"hello"));
        io.push_input(Bytes::from_static(b"world!"));
        io.close_input();
        assert_eq!(io.next_message(), Ok(Some(5)));
        assert_eq!(io.read_input(3).unwrap(), "hel");
        // The unread "lo" is skipped by the next recv and still acknowledged.
        assert_eq!(io.next_message(), Ok(Some(6)));
        assert_eq!(io.read_input(100).unwrap(), "world!");
        assert_eq!(io.next_message(), Ok(None));
        assert_eq!(*recorder.consumed.lock().unwrap(), 11);
    }

    #[test]
    fn staged_bytes_go_to_the_capability_call_not_the_session_and_need_no_credit() {
        let (recorder, io) = io(0, Duration::from_secs(60));
        io.stage(5).unwrap();
        assert_eq!(
            io.output_permit().unwrap(),
            5,
            "staging needs no session credit"
        );
        io.write_output(Bytes::from_static(b"abc")).unwrap();
        assert!(
            io.take_staged().is_err(),
            "a half-written body is refused, not used"
        );
        io.stage(3).unwrap();
        io.write_output(Bytes::from_static(b"xyz")).unwrap();
        assert_eq!(io.take_staged().unwrap().data, b"xyz");
        assert!(recorder.output.lock().unwrap().is_empty());
        assert!(io.stage(MAX_STAGED + 1).is_err());
    }

    #[test]
    fn a_capability_result_is_read_before_session_input_and_not_acknowledged() {
        let (recorder, io) = io(0, Duration::from_secs(60));
        io.push_input(Bytes::from_static(b"client"));
        io.set_pending(Bytes::from_static(b"result")).unwrap();
        assert_eq!(io.read_input(100).unwrap(), "result");
        assert_eq!(*recorder.consumed.lock().unwrap(), 0);
        assert_eq!(io.read_input(100).unwrap(), "client");
        assert_eq!(*recorder.consumed.lock().unwrap(), 6);
    }

    /// A host that records which channels were opened and whether each was
    /// accepted.
    #[derive(Default)]
    struct Opened(Mutex<Vec<(u32, bool)>>);

    impl InstanceEvents for Opened {
        fn on_event(&self, event: InstanceEvent) {
            if let InstanceEvent::Channel(channel, ChannelEvent::Opened(accepted)) = event {
                self.0.lock().unwrap().push((channel, accepted));
            }
        }
    }

    #[test]
    fn channels_beyond_the_limit_are_refused_and_a_closed_one_frees_its_slot() {
        let host = Arc::new(Opened::default());
        let io = SessionIo::with_limits(
            host.clone(),
            Instant::now() + Duration::from_secs(60),
            0,
            Throttle::unlimited(),
            2,
            u64::MAX,
        );
        assert!(io.try_open_channel(), "an outbound connection takes a slot");
        io.open_channel(1);
        io.open_channel(2);
        assert_eq!(*host.0.lock().unwrap(), vec![(1, true), (2, false)]);
        assert_eq!(io.accept(None), Ok(1));
        io.channel_close(1);
        io.open_channel(3);
        assert_eq!(host.0.lock().unwrap().last(), Some(&(3, true)));
    }

    /// A session whose instance may use `memory` bytes in all.
    fn limited(memory: u64, channels: u64) -> Arc<SessionIo> {
        SessionIo::with_limits(
            Arc::new(DiscardedSession),
            Instant::now() + Duration::from_secs(60),
            0,
            Throttle::unlimited(),
            channels,
            memory,
        )
    }

    #[test]
    fn host_buffers_are_counted_while_they_hold_bytes_and_given_back_after() {
        let io = limited(INPUT_WINDOW + 100, 0);
        assert_eq!(
            io.memory().host_bytes(),
            INPUT_WINDOW,
            "the session's input window"
        );
        io.stage(60).unwrap();
        assert_eq!(io.memory().host_bytes(), INPUT_WINDOW + 60);
        io.write_output(Bytes::from(vec![1u8; 60])).unwrap();
        let staged = io.take_staged().unwrap();
        assert_eq!(
            io.memory().host_bytes(),
            INPUT_WINDOW + 60,
            "held by the call"
        );
        drop(staged);
        assert_eq!(io.memory().host_bytes(), INPUT_WINDOW);
        io.set_pending(Bytes::from(vec![2u8; 80])).unwrap();
        assert_eq!(io.read_input(30).unwrap().len(), 30);
        assert_eq!(
            io.memory().host_bytes(),
            INPUT_WINDOW + 50,
            "only the unread rest"
        );
        io.set_pending(Bytes::from(vec![3u8; 100])).unwrap();
        assert_eq!(
            io.memory().host_bytes(),
            INPUT_WINDOW + 100,
            "a replaced result is given back"
        );
        assert_eq!(io.stop_reason(), None);
    }

    #[test]
    fn a_host_buffer_beyond_the_memory_limit_stops_the_instance_for_memory() {
        let io = limited(INPUT_WINDOW + 100, 0);
        io.stage(60).unwrap();
        io.write_output(Bytes::from(vec![1u8; 60])).unwrap();
        let _staged = io.take_staged().unwrap();
        assert_eq!(
            io.set_pending(Bytes::from(vec![0u8; 41])),
            Err(StopReason::Memory)
        );
        assert_eq!(io.stop_reason(), Some(StopReason::Memory));
        let io = limited(INPUT_WINDOW + 100, 0);
        assert!(
            io.stage(101)
                .is_err_and(|e| e.kind == crate::host_error::ErrorKind::Stopped)
        );
        assert_eq!(io.stop_reason(), Some(StopReason::Memory));
    }

    #[test]
    fn a_channel_whose_input_window_does_not_fit_is_refused_and_a_closed_one_gives_it_back() {
        let host = Arc::new(Opened::default());
        let io = SessionIo::with_limits(
            host.clone(),
            Instant::now() + Duration::from_secs(60),
            0,
            Throttle::unlimited(),
            10,
            3 * INPUT_WINDOW,
        );
        io.open_channel(1);
        io.open_channel(2);
        io.open_channel(3);
        assert_eq!(
            *host.0.lock().unwrap(),
            vec![(1, true), (2, true), (3, false)],
            "the session's window and two channels' fill 3 windows"
        );
        io.channel_close(1);
        io.open_channel(4);
        assert_eq!(host.0.lock().unwrap().last(), Some(&(4, true)));
        assert_eq!(io.stop_reason(), None, "a refused channel stops nothing");
    }

    #[test]
    fn waiting_for_a_channel_gives_up_at_the_callers_timeout() {
        let (_, io) = io(0, Duration::from_secs(60));
        let until = Instant::now() + Duration::from_millis(20);
        assert_eq!(io.accept(Some(until)), Err(WaitError::TimedOut));
    }
}
