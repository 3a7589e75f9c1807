//! The server side: a pool of worker processes, respawned when they die.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Notify, mpsc, oneshot};

use bento_policy::Grant;

use crate::admission::{Admission, AdmissionStats, Verdict};
use bento_worker_contract::ipc::{FromWorker, ToWorker};
use bento_worker_contract::{
    CHANNEL_CREDIT, ChannelEvent, InstanceEvent, InstanceEvents, InstanceId, InstanceOutcome,
    MAX_MESSAGE_LEN, MESSAGE_CREDIT, SealedFunctionRef, SessionEvent, StartCall, StartRequest,
};

/// How long a new worker may take to load the runtime and say it is ready.
const WORKER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a store-time check is tried when workers die under it.
const CHECK_ATTEMPTS: u32 = 3;
/// How long a request waits for a worker while all are being respawned.
pub const RESPAWN_PATIENCE: Duration = Duration::from_secs(5);
/// Longest wait between attempts to respawn a worker that keeps failing.
const MAX_RESPAWN_BACKOFF: Duration = Duration::from_secs(10);

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerPoolConfig {
    /// The worker program (normally the `bento` binary itself).
    pub program: PathBuf,
    /// Its arguments (normally `worker --runtime FILE`).
    pub args: Vec<String>,
    /// A command prefix the worker runs under (an OS jail or TEE loader);
    /// empty for none. It must pass stdin and stdout through untouched.
    pub wrapper: Vec<String>,
    /// Number of worker processes.
    pub workers: usize,
    /// The start delay above which new instances are refused in part
    /// ([`crate::admission`]; normally [`crate::admission::TARGET`]);
    /// `None` admits everything.
    pub admission_target: Option<Duration>,
}

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A worker process could not be started or did not become ready.
    #[error("cannot start a sandbox worker ({command}): {reason}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        reason: String,
    },
    /// No worker is alive right now (all are being respawned).
    #[error("no sandbox worker is available (workers are restarting)")]
    NoWorker,
}

/// What the server has allowed one instance to send. A worker is where
/// hostile code runs, so the server checks every output message against
/// it instead of trusting the worker to honour credit: a worker that sends
/// more is treated as crashed (killed and replaced).
#[derive(Debug)]
struct Allowance {
    /// Session output credit granted so far (initial plus grants).
    granted: AtomicU64,
    /// Session output credit used: output bytes and message boundaries
    /// (only the worker's reader task adds to it).
    used: AtomicU64,
    /// Bytes of the current message still to come; a message may begin
    /// only once this is zero (the sandbox's rule, checked again here).
    message_remaining: AtomicU64,
    /// Session input sent to the worker and not yet reported consumed.
    input_outstanding: AtomicU64,
    /// Each open channel's window.
    channels: Mutex<HashMap<u32, ChannelWindow>>,
}

/// What one open channel may still send, and what it may still report
/// consumed: reports beyond either are a lying worker (and would grow the
/// channel's event queue without bound).
#[derive(Debug, Clone, Copy)]
struct ChannelWindow {
    credit: u64,
    input_outstanding: u64,
}

impl Allowance {
    fn new(initial_credit: u64) -> Self {
        Self {
            granted: AtomicU64::new(initial_credit),
            used: AtomicU64::new(0),
            message_remaining: AtomicU64::new(0),
            input_outstanding: AtomicU64::new(0),
            channels: Mutex::default(),
        }
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<u32, ChannelWindow>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charge `amount` of session credit; false if it was never granted.
    fn charge(&self, amount: u64) -> bool {
        let used = self.used.load(Ordering::Relaxed).saturating_add(amount);
        if used > self.granted.load(Ordering::Relaxed) {
            return false;
        }
        self.used.store(used, Ordering::Relaxed);
        true
    }

    /// Charge `amount` of channel `channel`'s credit; false if the channel
    /// is not open or the credit was never granted.
    fn charge_channel(&self, channel: u32, amount: u64) -> bool {
        match self.channels().get_mut(&channel) {
            Some(window) if window.credit >= amount => {
                window.credit -= amount;
                true
            }
            _ => false,
        }
    }

    /// Count `n` bytes of session input reported consumed; false if more
    /// than was ever sent.
    fn consume_input(&self, n: u64) -> bool {
        let outstanding = self.input_outstanding.load(Ordering::Relaxed);
        if n > outstanding {
            return false;
        }
        self.input_outstanding
            .store(outstanding - n, Ordering::Relaxed);
        true
    }

    /// Like [`Self::consume_input`], for channel `channel`. Reports for a
    /// channel that is already closed are ignored (they can cross the
    /// close).
    fn consume_channel_input(&self, channel: u32, n: u64) -> bool {
        match self.channels().get_mut(&channel) {
            Some(window) if window.input_outstanding >= n => {
                window.input_outstanding -= n;
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

/// A running instance, as its worker's reader task sees it.
#[derive(Clone)]
struct Tracked {
    events: Arc<dyn InstanceEvents>,
    allowance: Arc<Allowance>,
}

type EventMap = Arc<Mutex<HashMap<InstanceId, Tracked>>>;

fn lock_map(map: &EventMap) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Tracked>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

struct LiveWorker {
    to_worker: mpsc::UnboundedSender<Bytes>,
    instances: EventMap,
    /// Asks the worker's reader task to kill and replace the worker.
    kill: Arc<Notify>,
}

struct PoolInner {
    config: WorkerPoolConfig,
    slots: Vec<Mutex<Option<LiveWorker>>>,
    next_id: AtomicU64,
    restarts: AtomicU64,
    channel_key: Mutex<ChannelKeys>,
    admission: Mutex<Admission>,
}

impl PoolInner {
    fn admission(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the workers said about their sealed-channel key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelKeys {
    /// No worker has been ready yet.
    Unknown,
    /// Every worker so far holds this key.
    Agreed([u8; 32]),
    /// A worker holds none, or two hold different ones: no sealed channel
    /// (a client could not know which worker would open its upload).
    Unusable,
}

impl ChannelKeys {
    fn merge(self, key: Option<[u8; 32]>) -> Self {
        match (self, key) {
            (ChannelKeys::Unknown, Some(key)) => ChannelKeys::Agreed(key),
            (ChannelKeys::Agreed(ours), Some(key)) if ours == key => self,
            _ => ChannelKeys::Unusable,
        }
    }
}

/// A pool of sandbox worker processes.
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.inner.slots.len())
            .finish_non_exhaustive()
    }
}

/// Control of one running instance.
#[derive(Debug, Clone)]
pub struct InstanceHandle {
    id: InstanceId,
    to_worker: mpsc::UnboundedSender<Bytes>,
    worker_kill: Arc<Notify>,
    allowance: Arc<Allowance>,
}

impl InstanceHandle {
    /// Tell the instance `event`. What the session allows the instance
    /// (output credit, input it may report consumed) is counted here,
    /// before the event is sent, so the worker can never have used an
    /// allowance the server has not counted yet.
    pub fn send(&self, event: SessionEvent) {
        match &event {
            SessionEvent::Input(data) => {
                self.allowance
                    .input_outstanding
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            SessionEvent::Credit(bytes) => {
                self.allowance.granted.fetch_add(*bytes, Ordering::Relaxed);
            }
            SessionEvent::ChannelInput(channel, data) => {
                if let Some(window) = self.allowance.channels().get_mut(channel) {
                    window.input_outstanding =
                        window.input_outstanding.saturating_add(data.len() as u64);
                }
            }
            SessionEvent::ChannelCredit(channel, bytes) => {
                if let Some(window) = self.allowance.channels().get_mut(channel) {
                    window.credit = window.credit.saturating_add(*bytes);
                }
            }
            SessionEvent::InputEnd
            | SessionEvent::Kill
            | SessionEvent::ChannelOpen(_)
            | SessionEvent::ChannelEnd(..)
            | SessionEvent::OnionReply(..) => {}
        }
        // A closed channel means the worker died; the instance's `Finished`
        // event reports that, so there is nothing to do here.
        let _ = self
            .to_worker
            .send(ToWorker::Session(self.id, event).encode());
    }

    /// Kill the whole worker process running this instance (which fails
    /// all its instances) and replace it: for a worker that stopped
    /// enforcing limits or answering.
    pub fn kill_worker(&self) {
        self.worker_kill.notify_one();
    }
}

/// Pool figures for status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker processes configured.
    pub workers: usize,
    /// Worker processes alive now.
    pub live_workers: usize,
    /// Instances running now.
    pub instances: usize,
    /// Workers respawned since start.
    pub restarts: u64,
}

impl WorkerPool {
    /// Start `config.workers` workers and wait until each is ready.
    pub async fn start(config: WorkerPoolConfig) -> Result<Self, PoolError> {
        let count = config.workers.max(1);
        let admission = Admission::new(config.admission_target, std::time::Instant::now());
        let inner = Arc::new(PoolInner {
            slots: (0..count).map(|_| Mutex::new(None)).collect(),
            config,
            next_id: AtomicU64::new(1),
            restarts: AtomicU64::new(0),
            channel_key: Mutex::new(ChannelKeys::Unknown),
            admission: Mutex::new(admission),
        });
        for slot in 0..count {
            let live = spawn_worker(&inner, slot).await?;
            *lock_slot(&inner, slot) = Some(live);
        }
        Ok(Self { inner })
    }

    /// Whether a new instance may start now, or the box is overloaded and
    /// this one should be refused (see [`crate::admission`]). Callers ask
    /// before an invocation reserves anything; store-time checks are
    /// asked about too.
    pub fn admit(&self) -> bool {
        self.inner.admission().decide(std::time::Instant::now()) == Verdict::Admit
    }

    /// The admission controller's figures, for the operator's metrics.
    pub fn admission_stats(&self) -> AdmissionStats {
        self.inner.admission().stats()
    }

    /// Start an instance on the least loaded live worker.
    pub fn start_instance(
        &self,
        request: StartRequest,
        events: Arc<dyn InstanceEvents>,
    ) -> Result<InstanceHandle, PoolError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        for (index, slot) in self.inner.slots.iter().enumerate() {
            let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(live) = guard.as_ref() {
                let load = lock_map(&live.instances).len();
                if best.is_none_or(|(_, best_load)| load < best_load) {
                    best = Some((index, load));
                }
            }
        }
        let (index, _) = best.ok_or(PoolError::NoWorker)?;
        let guard = lock_slot(&self.inner, index);
        let live = guard.as_ref().ok_or(PoolError::NoWorker)?;
        // The worker starts the instance with its whole output buffer as
        // credit (see `worker_process`).
        let allowance = Arc::new(Allowance::new(request.limits.output_buffer_bytes));
        // Pending from here: under the slot's lock, so that if the worker
        // dies its reader finds this instance among the orphans it forgets.
        self.inner.admission().sent(id, std::time::Instant::now());
        lock_map(&live.instances).insert(
            id,
            Tracked {
                events,
                allowance: allowance.clone(),
            },
        );
        let handle = InstanceHandle {
            id,
            to_worker: live.to_worker.clone(),
            worker_kill: live.kill.clone(),
            allowance,
        };
        // A closed channel means the worker just died: the instance ends
        // with `WorkerCrashed` like the worker's others.
        let _ = handle
            .to_worker
            .send(ToWorker::Start(id, Box::new(request)).encode());
        Ok(handle)
    }

    /// Like [`Self::start_instance`], but while every worker is being
    /// respawned (after a crash) wait up to `patience` for one to return.
    pub async fn start_instance_patiently(
        &self,
        request: StartRequest,
        events: Arc<dyn InstanceEvents>,
        patience: Duration,
    ) -> Result<InstanceHandle, PoolError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.start_instance(request.clone(), events.clone()) {
                Err(PoolError::NoWorker) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Compile `source` in a sandbox (store-time syntax check).
    pub async fn check(
        &self,
        source: String,
        filename: String,
    ) -> Result<InstanceOutcome, PoolError> {
        self.check_request(source, filename, None).await
    }

    /// Open a sealed function in a worker and compile it there (the
    /// store-time check of a `SealedStore`); the server never sees the
    /// source.
    pub async fn check_sealed(
        &self,
        sealed: SealedFunctionRef,
    ) -> Result<InstanceOutcome, PoolError> {
        self.check_request(String::new(), String::new(), Some(sealed))
            .await
    }

    async fn check_request(
        &self,
        source: String,
        filename: String,
        sealed: Option<SealedFunctionRef>,
    ) -> Result<InstanceOutcome, PoolError> {
        struct Once(Mutex<Option<oneshot::Sender<InstanceOutcome>>>);
        impl InstanceEvents for Once {
            fn on_event(&self, event: InstanceEvent) {
                if let InstanceEvent::Finished(outcome) = event
                    && let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
                {
                    let _ = tx.send(outcome);
                }
            }
        }
        let request = StartRequest {
            source,
            filename,
            call: StartCall::Check,
            limits: bento_policy::InstanceLimits::default(),
            grant: Grant::default(),
            sealed,
        };
        // A check has no effects, so unlike an invocation it can simply be
        // retried when its worker dies under it (e.g. a worker that had just
        // been killed when the check was sent to it).
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (tx, rx) = oneshot::channel();
            self.start_instance_patiently(
                request.clone(),
                Arc::new(Once(Mutex::new(Some(tx)))),
                RESPAWN_PATIENCE,
            )
            .await?;
            let outcome = rx.await.unwrap_or(InstanceOutcome::WorkerCrashed);
            if outcome != InstanceOutcome::WorkerCrashed || attempts >= CHECK_ATTEMPTS {
                return Ok(outcome);
            }
        }
    }

    /// The sealed-channel public key every worker holds, if they all hold
    /// the same one (`bento serve` gives them one key file); `None`: the
    /// box offers no sealed channel.
    pub fn channel_key(&self) -> Option<[u8; 32]> {
        match *self
            .inner
            .channel_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            ChannelKeys::Agreed(key) => Some(key),
            ChannelKeys::Unknown | ChannelKeys::Unusable => None,
        }
    }

    /// Current figures.
    pub fn stats(&self) -> PoolStats {
        let mut live_workers = 0;
        let mut instances = 0;
        for slot in &self.inner.slots {
            if let Some(live) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                live_workers += 1;
                instances += lock_map(&live.instances).len();
            }
        }
        PoolStats {
            workers: self.inner.slots.len(),
            live_workers,
            instances,
            restarts: self.inner.restarts.load(Ordering::Relaxed),
        }
    }
}

fn lock_slot(inner: &PoolInner, slot: usize) -> std::sync::MutexGuard<'_, Option<LiveWorker>> {
    inner.slots[slot].lock().unwrap_or_else(|e| e.into_inner())
}

fn command_line(config: &WorkerPoolConfig) -> Vec<String> {
    let mut argv = config.wrapper.clone();
    argv.push(config.program.display().to_string());
    argv.extend(config.args.iter().cloned());
    argv
}

async fn spawn_worker(inner: &Arc<PoolInner>, slot: usize) -> Result<LiveWorker, PoolError> {
    let argv = command_line(&inner.config);
    let spawn_error = |reason: String| PoolError::Spawn {
        command: argv.join(" "),
        reason,
    };
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| spawn_error(e.to_string()))?;
    let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(spawn_error("no pipes to the worker".into()));
    };
    crate::pipe_size::grow_pipe(&stdin);
    crate::pipe_size::grow_pipe(&stdout);
    let mut buf = BytesMut::with_capacity(1024 * 1024);
    let ready = tokio::time::timeout(WORKER_READY_TIMEOUT, async {
        loop {
            if let Some(message) = FromWorker::decode(&mut buf).map_err(|e| e.to_string())? {
                return match message {
                    FromWorker::Ready { channel_key } => Ok(channel_key),
                    other => Err(format!("unexpected first message {other:?}")),
                };
            }
            if stdout.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("the worker exited before it was ready (see its error above)".into());
            }
        }
    })
    .await;
    match ready {
        Ok(Ok(channel_key)) => {
            let mut keys = inner.channel_key.lock().unwrap_or_else(|e| e.into_inner());
            let merged = keys.merge(channel_key);
            if merged == ChannelKeys::Unusable && *keys != ChannelKeys::Unusable {
                tracing::warn!(
                    "sandbox workers do not share one sealed-channel key: the box offers no sealed channel"
                );
            }
            *keys = merged;
        }
        Ok(Err(reason)) => return Err(spawn_error(reason)),
        Err(_) => {
            return Err(spawn_error(format!(
                "not ready within {WORKER_READY_TIMEOUT:?}"
            )));
        }
    }
    let (to_worker, from_server) = mpsc::unbounded_channel();
    let instances: EventMap = Arc::default();
    let kill = Arc::new(Notify::new());
    tokio::spawn(write_to_worker(stdin, from_server));
    tokio::spawn(read_from_worker(
        inner.clone(),
        slot,
        child,
        stdout,
        buf,
        instances.clone(),
        kill.clone(),
    ));
    // Debug only: after start-up a worker starts because one died, often
    // because a user's function crashed it, and a timestamped line per
    // start would date that user's activity.
    tracing::debug!(slot, "sandbox worker ready");
    Ok(LiveWorker {
        to_worker,
        instances,
        kill,
    })
}

async fn write_to_worker(mut stdin: ChildStdin, mut messages: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(message) = messages.recv().await {
        if stdin.write_all(&message).await.is_err() {
            return;
        }
    }
}

async fn read_from_worker(
    inner: Arc<PoolInner>,
    slot: usize,
    mut child: Child,
    mut stdout: ChildStdout,
    mut buf: BytesMut,
    instances: EventMap,
    kill: Arc<Notify>,
) {
    let reason = loop {
        match FromWorker::decode(&mut buf) {
            Ok(Some(message)) => match dispatch(message, &instances, &inner) {
                Ok(()) => continue,
                Err(violation) => break violation.to_string(),
            },
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        // Room for several whole output frames, so that splitting them off
        // rarely forces a reallocation that copies a partial frame.
        if buf.capacity() - buf.len() < 1024 * 1024 + 64 * 1024 {
            buf.reserve(4 * 1024 * 1024);
        }
        let read = tokio::select! {
            read = stdout.read_buf(&mut buf) => read,
            () = kill.notified() => break "it stopped enforcing a wall-clock limit".to_string(),
        };
        match read {
            Ok(0) => break "its pipe closed".to_string(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    // The worker is gone or broken: make sure it is dead, then fail its
    // instances and replace it.
    let _ = child.start_kill();
    let status = child.wait().await;
    tracing::warn!(slot, %reason, ?status, "sandbox worker died; its sessions fail and it is respawned");
    *lock_slot(&inner, slot) = None;
    let orphans: Vec<_> = lock_map(&instances).drain().collect();
    {
        let mut admission = inner.admission();
        for (id, _) in &orphans {
            admission.forget(*id);
        }
    }
    for (_, tracked) in orphans {
        tracked
            .events
            .on_event(InstanceEvent::Finished(InstanceOutcome::WorkerCrashed));
    }
    respawn(inner, slot);
}

fn respawn(inner: Arc<PoolInner>, slot: usize) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            match spawn_worker(&inner, slot).await {
                Ok(live) => {
                    *lock_slot(&inner, slot) = Some(live);
                    inner.restarts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::error!(slot, error = %e, "cannot respawn sandbox worker; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RESPAWN_BACKOFF);
                }
            }
        }
    });
}

/// A worker sent something the server never allowed: it is broken or
/// hostile, and is treated as crashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerViolation {
    /// Session output beyond the credit the server granted.
    #[error("it sent output beyond the credit the server granted (instance {0})")]
    OutputCredit(InstanceId),
    /// Channel output beyond the channel's credit, or on a channel that is
    /// not open.
    #[error("it sent channel output beyond its credit or on a closed channel (instance {0})")]
    ChannelCredit(InstanceId),
    /// More input reported consumed than the server ever sent.
    #[error("it reported consuming input the server never sent (instance {0})")]
    Input(InstanceId),
    /// A message longer than any function may announce, or one that began
    /// inside the previous message.
    #[error("it announced a message the sandbox must have refused (instance {0})")]
    Message(InstanceId),
}

fn dispatch(
    message: FromWorker,
    instances: &EventMap,
    inner: &PoolInner,
) -> Result<(), WorkerViolation> {
    let (id, event) = match message {
        FromWorker::Instance(id, event) => (id, event),
        // Only an instance of this worker's counts (a lying worker could
        // otherwise report starts for ids it was never sent, which is
        // harmless: `started` ignores ids that are not pending).
        FromWorker::Started(id) => {
            if lock_map(instances).contains_key(&id) {
                inner.admission().started(id, std::time::Instant::now());
            }
            return Ok(());
        }
        // A second Ready changes nothing.
        FromWorker::Ready { .. } => return Ok(()),
    };
    if let InstanceEvent::Finished(_) = event {
        // Usually started already; an instance refused before its thread
        // ran (a sealed request that did not open) never is.
        inner.admission().forget(id);
        let tracked = lock_map(instances).remove(&id);
        if let Some(tracked) = tracked {
            tracked.events.on_event(event);
        }
        return Ok(());
    }
    // The lock is released before calling into the instance's events.
    let Some(tracked) = lock_map(instances).get(&id).cloned() else {
        return Ok(());
    };
    if let Some(event) = check(id, event, &tracked.allowance)? {
        tracked.events.on_event(event);
    }
    Ok(())
}

/// Check `event` against what the server allowed instance `id`, and count
/// it: the event to pass on (`None`: nothing worth passing on), or the
/// violation that condemns the worker.
fn check(
    id: InstanceId,
    event: InstanceEvent,
    allowance: &Allowance,
) -> Result<Option<InstanceEvent>, WorkerViolation> {
    Ok(match event {
        InstanceEvent::Output(data) => {
            let len = data.len() as u64;
            if !allowance.charge(len) {
                return Err(WorkerViolation::OutputCredit(id));
            }
            let remaining = &allowance.message_remaining;
            let left = remaining.load(Ordering::Relaxed).saturating_sub(len);
            remaining.store(left, Ordering::Relaxed);
            // Empty output would only grow the session's buffer list.
            (len > 0).then_some(InstanceEvent::Output(data))
        }
        InstanceEvent::InputConsumed(n) => {
            if n > 0 && !allowance.consume_input(n) {
                return Err(WorkerViolation::Input(id));
            }
            (n > 0).then_some(InstanceEvent::InputConsumed(n))
        }
        InstanceEvent::MessageStart(n) => {
            if n > MAX_MESSAGE_LEN || allowance.message_remaining.load(Ordering::Relaxed) > 0 {
                return Err(WorkerViolation::Message(id));
            }
            if !allowance.charge(MESSAGE_CREDIT) {
                return Err(WorkerViolation::OutputCredit(id));
            }
            allowance.message_remaining.store(n, Ordering::Relaxed);
            Some(InstanceEvent::MessageStart(n))
        }
        InstanceEvent::Channel(channel, ChannelEvent::Opened(accepted)) => {
            if accepted {
                allowance
                    .channels()
                    .entry(channel)
                    .or_insert(ChannelWindow {
                        credit: CHANNEL_CREDIT,
                        input_outstanding: 0,
                    });
            }
            Some(InstanceEvent::Channel(
                channel,
                ChannelEvent::Opened(accepted),
            ))
        }
        InstanceEvent::Channel(channel, ChannelEvent::Output(data)) => {
            if !allowance.charge_channel(channel, data.len() as u64) {
                return Err(WorkerViolation::ChannelCredit(id));
            }
            (!data.is_empty())
                .then_some(InstanceEvent::Channel(channel, ChannelEvent::Output(data)))
        }
        InstanceEvent::Channel(channel, ChannelEvent::Consumed(n)) => {
            if n > 0 && !allowance.consume_channel_input(channel, n) {
                return Err(WorkerViolation::Input(id));
            }
            (n > 0).then_some(InstanceEvent::Channel(channel, ChannelEvent::Consumed(n)))
        }
        InstanceEvent::Channel(channel, ChannelEvent::Closed) => {
            allowance.channels().remove(&channel);
            Some(InstanceEvent::Channel(channel, ChannelEvent::Closed))
        }
        event @ (InstanceEvent::OnionRequest(..) | InstanceEvent::Finished(_)) => Some(event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the pool passes on for one instance.
    struct Recorder {
        output: Mutex<u64>,
        finished: Mutex<Option<oneshot::Sender<InstanceOutcome>>>,
    }

    impl InstanceEvents for Recorder {
        fn on_event(&self, event: InstanceEvent) {
            match event {
                InstanceEvent::Output(data) => *self.output.lock().unwrap() += data.len() as u64,
                InstanceEvent::Finished(outcome) => {
                    if let Some(tx) = self.finished.lock().unwrap().take() {
                        let _ = tx.send(outcome);
                    }
                }
                _ => {}
            }
        }
    }

    /// An event of the fake worker's one instance (the pool numbers
    /// instances from 1).
    fn instance(event: InstanceEvent) -> FromWorker {
        FromWorker::Instance(1, event)
    }

    /// A fake worker: a shell that says Ready, waits for the server's
    /// first message (the Start), then sends `messages` and idles. The
    /// messages go through a file (they can be larger than an argument).
    fn fake_worker(messages: &[FromWorker]) -> (WorkerPoolConfig, PathBuf) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut bytes = Vec::new();
        for message in std::iter::once(&FromWorker::Ready { channel_key: None }).chain(messages) {
            let (header, payload) = message.encode_parts();
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(&payload);
        }
        let (ready, rest) = bytes.split_at(bento_worker_contract::ipc::IPC_HEADER_LEN);
        let file = std::env::temp_dir().join(format!(
            "bento-fake-worker-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, rest).unwrap();
        let octal: String = ready.iter().map(|b| format!("\\{b:03o}")).collect();
        let config = WorkerPoolConfig {
            program: PathBuf::from("/bin/sh"),
            args: vec![
                "-c".into(),
                format!(
                    "printf '{octal}'; head -c 1 >/dev/null; cat '{}' 2>/dev/null; exec sleep 30",
                    file.display()
                ),
            ],
            wrapper: Vec::new(),
            workers: 1,
            admission_target: Some(crate::admission::TARGET),
        };
        (config, file)
    }

    async fn run_one(messages: &[FromWorker], credit: u64) -> (InstanceOutcome, u64) {
        let (config, file) = fake_worker(messages);
        let pool = WorkerPool::start(config).await.unwrap();
        let (tx, rx) = oneshot::channel();
        let recorder = Arc::new(Recorder {
            output: Mutex::new(0),
            finished: Mutex::new(Some(tx)),
        });
        let request = StartRequest {
            source: String::new(),
            filename: "f.py".into(),
            call: StartCall::Check,
            limits: bento_policy::InstanceLimits {
                output_buffer_bytes: credit,
                ..Default::default()
            },
            grant: Grant::default(),
            sealed: None,
        };
        pool.start_instance(request, recorder.clone()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the instance ends")
            .unwrap();
        let output = *recorder.output.lock().unwrap();
        let _ = std::fs::remove_file(file);
        (outcome, output)
    }

    #[test]
    fn the_box_offers_a_sealed_channel_only_when_every_worker_holds_the_same_key() {
        let agreed = ChannelKeys::Unknown
            .merge(Some([1; 32]))
            .merge(Some([1; 32]));
        assert_eq!(agreed, ChannelKeys::Agreed([1; 32]));
        assert_eq!(agreed.merge(Some([2; 32])), ChannelKeys::Unusable);
        assert_eq!(agreed.merge(None), ChannelKeys::Unusable);
        assert_eq!(ChannelKeys::Unknown.merge(None), ChannelKeys::Unusable);
        // Once unusable, a respawned worker with the first key does not
        // bring it back: the others may still hold another.
        assert_eq!(
            ChannelKeys::Unusable.merge(Some([1; 32])),
            ChannelKeys::Unusable
        );
    }

    #[tokio::test]
    async fn output_within_the_granted_credit_is_passed_on() {
        let (outcome, output) = run_one(
            &[
                instance(InstanceEvent::MessageStart(900)),
                instance(InstanceEvent::Output(Bytes::from(vec![b'x'; 900]))),
                instance(InstanceEvent::Finished(InstanceOutcome::Returned)),
            ],
            1000,
        )
        .await;
        assert_eq!(outcome, InstanceOutcome::Returned);
        assert_eq!(output, 900);
    }

    #[tokio::test]
    async fn a_worker_sending_beyond_the_granted_credit_is_treated_as_crashed() {
        for (what, messages) in [
            (
                "output beyond credit",
                vec![instance(InstanceEvent::Output(Bytes::from(vec![
                    b'x';
                    1001
                ])))],
            ),
            (
                "a message no function may announce",
                vec![instance(InstanceEvent::MessageStart(u64::MAX))],
            ),
            (
                "a message inside a message",
                vec![
                    instance(InstanceEvent::MessageStart(10)),
                    instance(InstanceEvent::MessageStart(10)),
                ],
            ),
            (
                "input consumed that was never sent",
                vec![instance(InstanceEvent::InputConsumed(1))],
            ),
            (
                "channel input consumed that was never sent",
                vec![
                    instance(InstanceEvent::Channel(7, ChannelEvent::Opened(true))),
                    instance(InstanceEvent::Channel(7, ChannelEvent::Consumed(1))),
                ],
            ),
            (
                "output on a channel never opened",
                vec![instance(InstanceEvent::Channel(
                    7,
                    ChannelEvent::Output(Bytes::from_static(b"x")),
                ))],
            ),
            (
                "channel output beyond the channel's credit",
                vec![
                    instance(InstanceEvent::Channel(7, ChannelEvent::Opened(true))),
                    instance(InstanceEvent::Channel(
                        7,
                        ChannelEvent::Output(Bytes::from(vec![b'x'; CHANNEL_CREDIT as usize + 1])),
                    )),
                ],
            ),
        ] {
            let (outcome, output) = run_one(&messages, 1000).await;
            assert_eq!(outcome, InstanceOutcome::WorkerCrashed, "{what}");
            assert_eq!(output, 0, "{what}: nothing unallowed is passed on");
        }
    }
}
