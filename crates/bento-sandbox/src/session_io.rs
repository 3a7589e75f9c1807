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

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Output credit one message boundary costs, so that a function sending
/// many tiny (or empty) messages cannot make the box keep unbounded
/// boundary records; the owner returns it when the record is freed.
pub const MESSAGE_CREDIT: u64 = 32;

/// Largest chunk handed to [`SessionHost::deliver_output`] in one call.
pub(crate) const MAX_OUTPUT_CHUNK: usize = 1024 * 1024;

/// Where a running instance's output and input acknowledgements go.
pub trait SessionHost: Send + Sync + 'static {
    /// Output bytes the function wrote; always within granted credit.
    fn deliver_output(&self, data: Bytes);
    /// The function consumed `bytes` of client input (so more may be sent).
    fn input_consumed(&self, bytes: u64);
    /// The next `length` output bytes are one message (one `api.send`).
    fn message_start(&self, length: u64);
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
    stop: Option<StopReason>,
}

/// Shared state of one session's I/O, between the guest's thread and the
/// owner that feeds input, grants credit and may kill.
pub struct SessionIo {
    state: Mutex<IoState>,
    changed: Condvar,
    host: Arc<dyn SessionHost>,
    deadline: Instant,
}

impl std::fmt::Debug for SessionIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionIo").finish_non_exhaustive()
    }
}

impl SessionIo {
    /// A session channel whose waits end at `deadline` (the wall-clock
    /// limit), starting with `initial_credit` bytes of output credit.
    pub fn new(host: Arc<dyn SessionHost>, deadline: Instant, initial_credit: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(IoState {
                output_credit: initial_credit,
                ..IoState::default()
            }),
            changed: Condvar::new(),
            host,
            deadline,
        })
    }

    fn lock(&self) -> MutexGuard<'_, IoState> {
        // A panic while holding this lock cannot leave the state torn (every
        // update is a single field write), so poisoning is safe to ignore.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue one client message for `api.recv()`.
    pub fn push_input(&self, message: Bytes) {
        let mut state = self.lock();
        state.messages.push_back(message);
        self.changed.notify_all();
    }

    /// The client closed its input: `api.recv()` returns `b""` once the
    /// queued messages are read.
    pub fn close_input(&self) {
        self.lock().input_closed = true;
        self.changed.notify_all();
    }

    /// Allow `bytes` more output.
    pub fn grant_credit(&self, bytes: u64) {
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

    /// Block until the next client message; returns its length, or `None`
    /// once input is closed and drained.
    pub(crate) fn next_message(&self) -> Result<Option<u32>, StopReason> {
        let state = self.lock();
        let mut state = self.wait_until(state, |s| !s.messages.is_empty() || s.input_closed)?;
        // An unread remainder of the previous message is dropped: recv()
        // always returns whole messages.
        let skipped = state.current.len() as u64;
        match state.messages.pop_front() {
            Some(message) => {
                let len = message.len();
                state.current = message;
                drop(state);
                if skipped > 0 {
                    self.host.input_consumed(skipped);
                }
                Ok(Some(u32::try_from(len).unwrap_or(u32::MAX)))
            }
            None => Ok(None),
        }
    }

    /// The next `length` output bytes form one message.
    pub(crate) fn begin_message(&self, length: u64) -> Result<(), StopReason> {
        let state = self.lock();
        let mut state = self.wait_until(state, |s| s.output_credit >= MESSAGE_CREDIT)?;
        state.output_credit -= MESSAGE_CREDIT;
        drop(state);
        self.host.message_start(length);
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
        self.host.input_consumed(chunk.len() as u64);
        Ok(chunk)
    }

    fn wait_input_ready(&self) {
        let state = self.lock();
        // A stop is reported by the next read; nothing to do with it here.
        drop(self.wait_until(state, |s| {
            !s.current.is_empty() || !s.messages.is_empty() || s.input_closed
        }));
    }

    fn output_permit(&self) -> StreamResult<usize> {
        let state = self.lock();
        if let Some(reason) = state.stop {
            return Err(StreamError::trap(&format!("session stopped: {reason:?}")));
        }
        Ok(usize::try_from(state.output_credit)
            .unwrap_or(usize::MAX)
            .min(MAX_OUTPUT_CHUNK))
    }

    fn write_output(&self, data: Bytes) -> StreamResult<()> {
        let mut state = self.lock();
        if let Some(reason) = state.stop {
            return Err(StreamError::trap(&format!("session stopped: {reason:?}")));
        }
        let len = data.len() as u64;
        if len > state.output_credit {
            return Err(StreamError::trap("wrote more than check-write permitted"));
        }
        state.output_credit -= len;
        drop(state);
        self.host.deliver_output(data);
        Ok(())
    }

    fn wait_output_credit(&self) {
        let state = self.lock();
        // A stop is reported by the next check-write; nothing to do here.
        drop(self.wait_until(state, |s| s.output_credit > 0));
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

    impl SessionHost for Recorder {
        fn deliver_output(&self, data: Bytes) {
            self.output.lock().unwrap().extend_from_slice(&data);
        }
        fn input_consumed(&self, bytes: u64) {
            *self.consumed.lock().unwrap() += bytes;
        }
        fn message_start(&self, _length: u64) {}
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
}
