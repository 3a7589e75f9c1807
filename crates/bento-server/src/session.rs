//! Sessions: one running (or finished) instance and its resumable output.
//!
//! The output of a session is a byte stream with absolute offsets. The box
//! keeps every byte from the last offset the client *acknowledged* up to the
//! newest byte the function produced; re-attaching resumes at the
//! acknowledged offset (or at an offset the client names within that range),
//! so nothing is lost or repeated across detach and re-attach.
//!
//! The kept bytes are bounded by the session's output buffer: the worker
//! gets output credit only as the client acknowledges, so a function whose
//! client is away blocks in `api.send` (backpressure) instead of being
//! killed or losing output.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use bento_pool::InstanceHandle;
use bento_protocol::{ServiceToken, SessionToken};
use bento_worker_contract::{
    ChannelEvent, INPUT_WINDOW, InstanceEvent, InstanceEvents, InstanceOutcome, MESSAGE_CREDIT,
    OnionRequest, SessionEvent,
};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::sync::mpsc;

#[derive(Debug)]
pub(crate) struct SessionState {
    /// Unacknowledged output, starting at offset `acked`.
    buffer: VecDeque<Bytes>,
    acked: u64,
    produced: u64,
    outcome: Option<InstanceOutcome>,
    finished_at: Option<Instant>,
    /// The final End/Error frame reached a client.
    end_delivered: bool,
    input_in_flight: u64,
    /// Output messages (one per `api.send`) as (start offset, length),
    /// from the first not yet acknowledged; the research prototype's
    /// protocol frames output by them.
    messages: VecDeque<(u64, u64)>,
    /// Incremented by each attach; an attachment whose generation is stale
    /// has been taken over by a newer one.
    attach_generation: u64,
    /// The retention time after the end passed and the box forgot the
    /// session: an attachment still holding it must let go.
    expired: bool,
}

/// What a session's state may be read as outside this module (under
/// [`Session::lock`]); it changes only through [`Session`]'s methods, which
/// keep its rules (offsets only move forward, one attachment at a time).
impl SessionState {
    /// The function has a full input window it has not consumed (and is
    /// still running: after the end, input is discarded and never blocks).
    pub(crate) fn input_blocked(&self) -> bool {
        self.input_in_flight >= INPUT_WINDOW && self.outcome.is_none()
    }

    /// Output offset up to which the client acknowledged (all earlier
    /// output is gone).
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// Output offset the function has produced up to.
    pub(crate) fn produced(&self) -> u64 {
        self.produced
    }

    /// How the instance ended, once it has.
    pub(crate) fn outcome(&self) -> Option<&InstanceOutcome> {
        self.outcome.as_ref()
    }

    /// The box forgot the finished session: an attachment must let go.
    pub(crate) fn expired(&self) -> bool {
        self.expired
    }

    /// Whether the attachment that attached as `generation` was taken over
    /// by a newer one.
    pub(crate) fn taken_over(&self, generation: u64) -> bool {
        self.attach_generation != generation
    }

    /// The first output message not yet acknowledged, as (start offset,
    /// length).
    pub(crate) fn next_message(&self) -> Option<(u64, u64)> {
        self.messages.front().copied()
    }

    /// The client has the final End/Error frame and acknowledged every
    /// byte: the session can be forgotten.
    pub(crate) fn fully_delivered(&self) -> bool {
        self.end_delivered && self.acked == self.produced
    }
}

/// A client's attach was refused: it asked to resume outside the output
/// the box still holds.
#[derive(Debug)]
pub(crate) struct ResumeOutOfRange {
    /// The offset asked for.
    pub(crate) start: u64,
    /// The oldest offset the box holds.
    pub(crate) acked: u64,
    /// The newest.
    pub(crate) produced: u64,
}

/// One session.
#[derive(Debug)]
pub struct Session {
    token: SessionToken,
    state: Mutex<SessionState>,
    /// Woken on new output, consumed input, end, and takeover.
    pub(crate) changed: Notify,
    handle: OnceLock<InstanceHandle>,
    /// Global figures this session counts towards.
    counters: Arc<GlobalCounters>,
    /// The output buffer the grant gives the session, bytes.
    output_buffer: u64,
    /// The part of `counters.reserved_buffer_bytes` this session holds: its
    /// whole output buffer while the instance runs, then only its unread
    /// output (see `release_unused_buffer`).
    reserved_buffer: AtomicU64,
    /// Keep message boundaries (the prototype protocol frames by them);
    /// otherwise their credit is returned at once.
    frames_messages: bool,
    /// When the instance must have ended by (its wall-clock limit).
    wall_deadline: Instant,
    /// The instance's service, if its manifest declares one.
    service: Option<Service>,
    /// The instance's storage directory and the bytes reserved for it.
    storage: Option<(PathBuf, u64)>,
    /// The box's tor, if the instance may create onion services.
    tor: Option<Arc<dyn OnionPublisher>>,
    /// What removes each onion service the instance created.
    onion_cleanups: OnionCleanups,
    /// This session, for tasks it starts on its own behalf.
    me: Weak<Session>,
    /// The traffic-analysis defense its invoker chose, set once right after
    /// the start, before the invoker learns the session token.
    defense: OnceLock<bento_policy::Defense>,
}

/// What a session has beyond its session channel, from its grant.
#[derive(Debug, Default)]
pub(crate) struct SessionExtras {
    /// Channels (`service` or `onion_service`).
    pub(crate) service: Option<Service>,
    /// Storage directory and reserved bytes.
    pub(crate) storage: Option<(PathBuf, u64)>,
    /// The box's tor, for `onion_service`.
    pub(crate) tor: Option<Arc<dyn OnionPublisher>>,
}

/// What publishes onion services for a session's function: the box's tor
/// (`onion::TorBox`). A trait, so that sessions know nothing of tor and the
/// onion module depends on sessions, not the other way round.
pub(crate) trait OnionPublisher: Send + Sync + std::fmt::Debug + 'static {
    /// Publish the service `details` asks for, on its own task, and answer
    /// request `request` through the session's instance handle.
    fn serve_function(self: Arc<Self>, session: Arc<Session>, request: u32, details: OnionRequest);
}

/// Removes one of an instance's onion services.
pub(crate) type OnionCleanup = Box<dyn FnOnce() + Send>;

/// An instance's onion-service cleanups, run when it ends.
#[derive(Default)]
struct OnionCleanups(Mutex<Vec<OnionCleanup>>);

impl std::fmt::Debug for OnionCleanups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionCleanups").finish_non_exhaustive()
    }
}

/// An open channel of a session's service. Dropping it (however the
/// client's connection ends) tells the instance that the client is gone.
#[derive(Debug)]
pub(crate) struct ChannelGuard {
    session: Arc<Session>,
    channel: u32,
}

impl ChannelGuard {
    /// The channel's number, as the instance knows it.
    pub(crate) fn id(&self) -> u32 {
        self.channel
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.session.close_channel(self.channel);
    }
}

/// The service side of a session: channels opened by clients holding the
/// service token.
#[derive(Debug)]
pub(crate) struct Service {
    token: ServiceToken,
    next_channel: AtomicU32,
    /// Each open channel's events, to the connection serving its client.
    channels: Mutex<HashMap<u32, mpsc::UnboundedSender<ChannelEvent>>>,
}

impl Service {
    pub(crate) fn new(token: ServiceToken) -> Self {
        Self {
            token,
            next_channel: AtomicU32::new(1),
            channels: Mutex::default(),
        }
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<u32, mpsc::UnboundedSender<ChannelEvent>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Box-wide counters behind the global caps.
#[derive(Debug, Default)]
pub struct GlobalCounters {
    /// Instances currently running.
    pub running_instances: AtomicU64,
    /// Output buffer bytes reserved by live sessions.
    pub reserved_buffer_bytes: AtomicU64,
    /// Instance storage bytes reserved by running instances.
    pub reserved_storage_bytes: AtomicU64,
}

impl Session {
    pub(crate) fn new(
        token: SessionToken,
        counters: Arc<GlobalCounters>,
        reserved_buffer: u64,
        frames_messages: bool,
        wall_limit: std::time::Duration,
        extras: SessionExtras,
    ) -> Arc<Self> {
        let SessionExtras {
            service,
            storage,
            tor,
        } = extras;
        Arc::new_cyclic(|me| Self {
            token,
            state: Mutex::new(SessionState {
                buffer: VecDeque::new(),
                acked: 0,
                produced: 0,
                outcome: None,
                finished_at: None,
                end_delivered: false,
                input_in_flight: 0,
                messages: VecDeque::new(),
                attach_generation: 0,
                expired: false,
            }),
            changed: Notify::new(),
            handle: OnceLock::new(),
            counters,
            output_buffer: reserved_buffer,
            reserved_buffer: AtomicU64::new(reserved_buffer),
            frames_messages,
            wall_deadline: Instant::now() + wall_limit,
            service,
            storage,
            tor,
            onion_cleanups: OnionCleanups::default(),
            me: me.clone(),
            defense: OnceLock::new(),
        })
    }

    /// Shape every attachment of this session with `defense`.
    pub(crate) fn set_defense(&self, defense: bento_policy::Defense) {
        let _ = self.defense.set(defense);
    }

    /// The defense every attachment is shaped with, if any.
    pub(crate) fn defense(&self) -> Option<bento_policy::Defense> {
        self.defense.get().copied()
    }

    /// Record how to remove an onion service of this instance. If the
    /// instance has already ended, removes it at once and returns false.
    pub(crate) fn add_onion_service(&self, cleanup: OnionCleanup) -> bool {
        let state = self.lock();
        if state.outcome.is_some() {
            drop(state);
            cleanup();
            return false;
        }
        self.onion_cleanups
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cleanup);
        true
    }

    /// Whether the instance is still running.
    pub(crate) fn is_running(&self) -> bool {
        self.lock().outcome.is_none()
    }

    /// Open a channel to the instance's service: its id and the events
    /// the connection will receive. `None` if the session offers no service
    /// or has ended.
    pub(crate) fn open_channel(
        self: &Arc<Self>,
    ) -> Option<(ChannelGuard, mpsc::UnboundedReceiver<ChannelEvent>)> {
        let service = self.service.as_ref()?;
        let handle = self.handle()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let channel = {
            // Registered under the state lock, so a concurrent `finished`
            // either sees this channel (and closes it) or we see the end.
            let state = self.lock();
            if state.outcome.is_some() {
                return None;
            }
            let channel = service.next_channel.fetch_add(1, Ordering::Relaxed);
            service.channels().insert(channel, tx);
            channel
        };
        handle.send(SessionEvent::ChannelOpen(channel));
        let guard = ChannelGuard {
            session: self.clone(),
            channel,
        };
        Some((guard, rx))
    }

    /// The client of `channel` left: forget it and tell the instance.
    fn close_channel(&self, channel: u32) {
        if let Some(service) = &self.service {
            let removed = service.channels().remove(&channel).is_some();
            if let (true, Some(handle)) = (removed, self.handle()) {
                handle.send(SessionEvent::ChannelEnd(channel, true));
            }
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_handle(&self, handle: InstanceHandle) {
        let _ = self.handle.set(handle);
    }

    pub(crate) fn handle(&self) -> Option<&InstanceHandle> {
        self.handle.get()
    }

    /// Output bytes from `from` onwards, at most `max` bytes, as cheap
    /// slices of the buffer.
    pub(crate) fn output_from(state: &SessionState, from: u64, max: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut offset = state.acked;
        let mut taken = 0;
        for chunk in &state.buffer {
            let end = offset + chunk.len() as u64;
            if end > from && taken < max {
                let skip = from.saturating_sub(offset) as usize;
                let take = (chunk.len() - skip).min(max - taken);
                out.push(chunk.slice(skip..skip + take));
                taken += take;
            }
            offset = end;
            if taken >= max {
                break;
            }
        }
        out
    }

    /// The client consumed output up to `offset`: drop it and give the
    /// function that much credit. Returns false for an offset outside the
    /// kept range.
    pub(crate) fn acknowledge(&self, offset: u64) -> bool {
        let mut state = self.lock();
        if offset < state.acked || offset > state.produced {
            return false;
        }
        let mut freed = offset - state.acked;
        let mut granted = freed;
        while let Some(&(start, len)) = state.messages.front() {
            if start + len > offset {
                break;
            }
            state.messages.pop_front();
            granted += MESSAGE_CREDIT;
        }
        while freed > 0 {
            let Some(front) = state.buffer.front_mut() else {
                break;
            };
            if (front.len() as u64) <= freed {
                freed -= front.len() as u64;
                state.buffer.pop_front();
            } else {
                *front = front.slice(freed as usize..);
                freed = 0;
            }
        }
        state.acked = offset;
        let running = state.outcome.is_none();
        self.release_unused_buffer(&state);
        drop(state);
        if let (true, Some(handle)) = (granted > 0 && running, self.handle()) {
            handle.send(SessionEvent::Credit(granted));
        }
        true
    }

    /// Once the instance has ended, nothing more will be written: give back
    /// the part of the buffer reservation not holding unread output, so
    /// that finished sessions waiting for (or abandoned by) their client
    /// cannot lock others out of the box. Called under the state lock, so
    /// concurrent callers agree.
    fn release_unused_buffer(&self, state: &SessionState) {
        if state.outcome.is_none() {
            return;
        }
        let unread = state.produced.saturating_sub(state.acked);
        let held = self.reserved_buffer.load(Ordering::Relaxed);
        if held > unread {
            self.reserved_buffer.store(unread, Ordering::Relaxed);
            self.counters
                .reserved_buffer_bytes
                .fetch_sub(held - unread, Ordering::Relaxed);
        }
    }

    /// Forward one client message to the function (dropped if it has
    /// ended). Returns whether the input window is now full.
    /// Attach a client, taking the session over from any earlier
    /// attachment (which learns it when it next looks: its generation is
    /// stale). Output is sent from `resume_from`, or from the first
    /// unacknowledged byte. Returns the attachment's generation and the
    /// offset it starts at.
    pub(crate) fn attach(&self, resume_from: Option<u64>) -> Result<(u64, u64), ResumeOutOfRange> {
        let attached = {
            let mut state = self.lock();
            let start = resume_from.unwrap_or(state.acked);
            if start < state.acked || start > state.produced {
                return Err(ResumeOutOfRange {
                    start,
                    acked: state.acked,
                    produced: state.produced,
                });
            }
            state.attach_generation += 1;
            // The end counts as delivered only once this attachment sends
            // it: an earlier attachment may have been sent the End and
            // detached before reading it, and this one's Ack of the last
            // byte must not make the box forget the session (closing the
            // connection) before it has sent its own End.
            state.end_delivered = false;
            (state.attach_generation, start)
        };
        // Wake a previous attachment so it sees it was taken over.
        self.changed.notify_waiters();
        Ok(attached)
    }

    /// The final End/Error frame reached the client.
    pub(crate) fn end_delivered(&self) {
        self.lock().end_delivered = true;
    }

    pub(crate) fn push_input(&self, data: Bytes) -> bool {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return false;
        }
        state.input_in_flight += data.len() as u64;
        let blocked = state.input_blocked();
        drop(state);
        if let Some(handle) = self.handle() {
            handle.send(SessionEvent::Input(data));
        }
        blocked
    }

    /// The output buffer the session's grant gives it, bytes.
    pub(crate) fn output_buffer_bytes(&self) -> u64 {
        self.output_buffer
    }

    pub(crate) fn token(&self) -> &SessionToken {
        &self.token
    }

    pub(crate) fn token_matches(&self, token: &SessionToken) -> bool {
        self.token == *token
    }
}

impl InstanceEvents for Session {
    fn on_event(&self, event: InstanceEvent) {
        match event {
            InstanceEvent::Output(data) => self.output(data),
            InstanceEvent::InputConsumed(bytes) => self.input_consumed(bytes),
            InstanceEvent::MessageStart(length) => self.message_start(length),
            InstanceEvent::Channel(channel, event) => self.channel(channel, event),
            InstanceEvent::OnionRequest(request, details) => self.onion_request(request, details),
            InstanceEvent::Finished(outcome) => self.finished(outcome),
        }
    }
}

/// The instance's events, as [`InstanceEvents::on_event`] applies them;
/// called on the pool's reader task, so none blocks.
impl Session {
    fn output(&self, data: Bytes) {
        let mut state = self.lock();
        state.produced += data.len() as u64;
        state.buffer.push_back(data);
        drop(state);
        self.changed.notify_waiters();
    }

    fn input_consumed(&self, bytes: u64) {
        let mut state = self.lock();
        state.input_in_flight = state.input_in_flight.saturating_sub(bytes);
        drop(state);
        self.changed.notify_waiters();
    }

    fn message_start(&self, length: u64) {
        if !self.frames_messages {
            if let Some(handle) = self.handle() {
                handle.send(SessionEvent::Credit(MESSAGE_CREDIT));
            }
            return;
        }
        let mut state = self.lock();
        let start = state.produced;
        state.messages.push_back((start, length));
        drop(state);
        self.changed.notify_waiters();
    }

    fn finished(&self, outcome: InstanceOutcome) {
        let mut state = self.lock();
        if state.outcome.is_none() {
            state.outcome = Some(outcome);
            state.finished_at = Some(Instant::now());
            self.counters
                .running_instances
                .fetch_sub(1, Ordering::Relaxed);
            if let Some((dir, reserved)) = &self.storage {
                // The worker deletes the storage when the instance ends;
                // this covers a worker that died first.
                bento_storage::remove_dir_quietly(dir);
                self.counters
                    .reserved_storage_bytes
                    .fetch_sub(*reserved, Ordering::Relaxed);
            }
            if let Some(service) = &self.service {
                // Dropping the senders ends every channel's connection.
                service.channels().clear();
            }
            let cleanups = std::mem::take(
                &mut *self
                    .onion_cleanups
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            for cleanup in cleanups {
                cleanup();
            }
            self.release_unused_buffer(&state);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn onion_request(&self, request: u32, details: OnionRequest) {
        let (Some(tor), Some(me)) = (self.tor.clone(), self.me.upgrade()) else {
            if let Some(handle) = self.handle() {
                handle.send(SessionEvent::OnionReply(
                    request,
                    Err("io: this box has no Tor connection".into()),
                ));
            }
            return;
        };
        tor.serve_function(me, request, details);
    }

    fn channel(&self, channel: u32, event: ChannelEvent) {
        let Some(service) = &self.service else { return };
        let mut channels = service.channels();
        let closed = matches!(event, ChannelEvent::Closed | ChannelEvent::Opened(false));
        if let Some(tx) = channels.get(&channel) {
            let _ = tx.send(event);
        }
        if closed {
            channels.remove(&channel);
        }
    }
}

/// Running sessions that offer a service, keyed by the SHA-256 of their
/// service token.
#[derive(Debug, Default)]
pub struct ServiceTable {
    services: Mutex<HashMap<[u8; 32], Weak<Session>>>,
}

fn service_key(token: &ServiceToken) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl ServiceTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Weak<Session>>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, session: &Arc<Session>) {
        if let Some(service) = &session.service {
            self.lock()
                .insert(service_key(&service.token), Arc::downgrade(session));
        }
    }

    /// The running session offering a service under exactly `token`.
    pub(crate) fn get(&self, token: &ServiceToken) -> Option<Arc<Session>> {
        let session = self.lock().get(&service_key(token))?.upgrade()?;
        let matches = session.service.as_ref().is_some_and(|s| s.token == *token);
        (matches && session.is_running()).then_some(session)
    }

    /// Forget services whose instance has ended.
    pub(crate) fn purge(&self) {
        self.lock()
            .retain(|_, session| session.upgrade().is_some_and(|s| s.is_running()));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.counters
            .reserved_buffer_bytes
            .fetch_sub(*self.reserved_buffer.get_mut(), Ordering::Relaxed);
    }
}

/// All live sessions, keyed by the SHA-256 of their token so that looking a
/// token up does not branch on the secret itself.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: Mutex<HashMap<[u8; 32], Arc<Session>>>,
}

fn key(token: &SessionToken) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl SessionTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, session: Arc<Session>) {
        self.lock().insert(key(&session.token), session);
    }

    pub(crate) fn get(&self, token: &SessionToken) -> Option<Arc<Session>> {
        let session = self.lock().get(&key(token)).cloned()?;
        session.token_matches(token).then_some(session)
    }

    pub(crate) fn remove(&self, token: &SessionToken) {
        self.lock().remove(&key(token));
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Running sessions more than `grace` past their wall-clock limit: the
    /// worker should have stopped them and did not.
    pub(crate) fn overdue(&self, grace: std::time::Duration) -> Vec<Arc<Session>> {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|s| now > s.wall_deadline + grace && s.lock().outcome.is_none())
            .cloned()
            .collect()
    }

    /// Drop finished sessions older than `retention`, attached or not (an
    /// attachment is told and lets go, so an idle client cannot pin a
    /// finished session); returns how many.
    pub(crate) fn expire(&self, retention: std::time::Duration) -> usize {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.lock().retain(|_, session| {
            let mut state = session.lock();
            let old = matches!(state.finished_at, Some(at) if now.duration_since(at) >= retention);
            if old {
                state.expired = true;
                expired.push(session.clone());
            }
            !old
        });
        for session in &expired {
            session.changed.notify_waiters();
        }
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Arc<Session> {
        let counters = Arc::new(GlobalCounters::default());
        counters
            .reserved_buffer_bytes
            .fetch_add(10, Ordering::Relaxed);
        Session::new(
            SessionToken::generate().unwrap(),
            counters,
            10,
            true,
            std::time::Duration::from_secs(60),
            SessionExtras::default(),
        )
    }

    #[test]
    fn output_can_be_read_from_any_unacknowledged_offset() {
        let s = session();
        s.output(Bytes::from_static(b"hello "));
        s.output(Bytes::from_static(b"world"));
        let state = s.lock();
        let all: Vec<u8> = Session::output_from(&state, 0, 100).concat();
        assert_eq!(all, b"hello world");
        let tail: Vec<u8> = Session::output_from(&state, 4, 5).concat();
        assert_eq!(tail, b"o wor");
    }

    #[test]
    fn an_attach_takes_the_session_over_from_the_previous_one() {
        let s = session();
        s.output(Bytes::from_static(b"hello"));
        let (first, from) = s.attach(None).unwrap();
        assert_eq!(from, 0, "a new attachment starts at the first unread byte");
        let (second, from) = s.attach(Some(3)).unwrap();
        assert_eq!(from, 3);
        let state = s.lock();
        assert!(state.taken_over(first));
        assert!(!state.taken_over(second));
    }

    #[test]
    fn an_end_sent_to_an_earlier_attachment_does_not_count_for_the_next_one() {
        let s = session();
        s.output(Bytes::from_static(b"hello"));
        s.attach(None).unwrap();
        // The first attachment was sent everything and the End, but its
        // client detached having read (and acknowledged) nothing.
        s.end_delivered();
        s.attach(None).unwrap();
        assert!(s.acknowledge(5));
        assert!(
            !s.lock().fully_delivered(),
            "the new attachment acknowledged every byte but has not been sent the End"
        );
        s.end_delivered();
        assert!(s.lock().fully_delivered());
    }

    #[test]
    fn an_attach_outside_the_held_output_is_refused_and_changes_nothing() {
        let s = session();
        s.output(Bytes::from_static(b"hello "));
        s.output(Bytes::from_static(b"world"));
        let (current, _) = s.attach(None).unwrap();
        assert!(s.acknowledge(6));
        for outside in [5, 12] {
            let refused = s.attach(Some(outside)).unwrap_err();
            assert_eq!(
                (refused.start, refused.acked, refused.produced),
                (outside, 6, 11)
            );
        }
        assert!(
            !s.lock().taken_over(current),
            "a refused attach leaves the current attachment in place"
        );
    }

    #[test]
    fn acknowledged_output_is_dropped_and_cannot_be_replayed() {
        let s = session();
        s.output(Bytes::from_static(b"hello "));
        s.output(Bytes::from_static(b"world"));
        assert!(s.acknowledge(8));
        let state = s.lock();
        assert_eq!(state.acked, 8);
        assert_eq!(Session::output_from(&state, 8, 100).concat(), b"rld");
        drop(state);
        assert!(!s.acknowledge(3), "acknowledging backwards is refused");
        assert!(
            !s.acknowledge(12),
            "acknowledging unproduced bytes is refused"
        );
    }

    #[test]
    fn a_finished_session_keeps_reserved_only_its_unread_output() {
        let counters = Arc::new(GlobalCounters::default());
        counters
            .reserved_buffer_bytes
            .fetch_add(1000, Ordering::Relaxed);
        let s = Session::new(
            SessionToken::generate().unwrap(),
            counters.clone(),
            1000,
            false,
            std::time::Duration::from_secs(60),
            SessionExtras::default(),
        );
        s.output(Bytes::from_static(b"hello world"));
        assert_eq!(
            counters.reserved_buffer_bytes.load(Ordering::Relaxed),
            1000,
            "a running instance keeps its whole buffer"
        );
        counters.running_instances.fetch_add(1, Ordering::Relaxed);
        s.finished(InstanceOutcome::Returned);
        assert_eq!(counters.reserved_buffer_bytes.load(Ordering::Relaxed), 11);
        assert!(s.acknowledge(6));
        assert_eq!(counters.reserved_buffer_bytes.load(Ordering::Relaxed), 5);
        assert!(s.acknowledge(11));
        assert_eq!(s.reserved_buffer.load(Ordering::Relaxed), 0);
        drop(s);
        assert_eq!(counters.reserved_buffer_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_expired_session_is_forgotten_even_while_someone_holds_it() {
        let table = SessionTable::default();
        let s = session();
        let token = s.token.clone();
        table.insert(s.clone());
        s.finished(InstanceOutcome::Returned);
        assert_eq!(table.expire(std::time::Duration::from_secs(3600)), 0);
        assert_eq!(table.expire(std::time::Duration::ZERO), 1);
        assert!(table.get(&token).is_none());
        assert!(s.lock().expired, "the holder is told to let go");
    }

    #[test]
    fn sessions_are_found_only_by_their_exact_token() {
        let table = SessionTable::default();
        let s = session();
        let token = s.token.clone();
        table.insert(s);
        assert!(table.get(&token).is_some());
        assert!(table.get(&SessionToken::generate().unwrap()).is_none());
        table.remove(&token);
        assert!(table.is_empty());
    }
}
