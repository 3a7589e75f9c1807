//! The worker process: reads instructions from stdin, runs each instance on
//! its own thread, writes output and outcomes to stdout.
//!
//! The worker exits when its stdin closes (the server went away), taking
//! every instance with it: instances never outlive their server.

use std::collections::HashMap;
use std::io::{IoSlice, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bento_sandbox::{Call, Job, PythonRuntime, SessionIo, StopReason, Throttle, TokenBucket};
use bytes::BytesMut;

use crate::prewarm::Prewarmed;
use crate::sealed::SealedInstance;
use bento_worker_contract::ipc::{FromWorker, ToWorker};
use bento_worker_contract::{
    ChannelEvent, InstanceEvent, InstanceEvents, InstanceId, InstanceOutcome, SessionEvent,
    StartCall, StartRequest,
};

/// Native stack of an instance thread. Wasm may use 1 MiB of it; the rest
/// is for host calls. Untouched pages cost no memory.
const INSTANCE_THREAD_STACK: usize = 8 * 1024 * 1024;

/// Errors that end the worker process.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The runtime could not be loaded.
    #[error(transparent)]
    Sandbox(#[from] bento_sandbox::SandboxError),
    /// The pipe to the server failed or carried garbage.
    #[error("worker pipe: {0}")]
    Pipe(String),
}

/// Serialises writes of whole frames to the server pipe.
struct Outbox<W: Write + Send> {
    writer: Mutex<W>,
}

impl<W: Write + Send> Outbox<W> {
    fn send(&self, message: &FromWorker) {
        let (head, payload) = message.encode_parts();
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // One vectored write for header and payload (one syscall in the
        // common case); the payload is never copied into a buffer.
        // If the server is gone the worker is about to exit (stdin EOF);
        // there is nobody to report a write error to.
        let _ = write_all_vectored(&mut *writer, &head, &payload).and_then(|()| writer.flush());
    }
}

fn write_all_vectored(writer: &mut impl Write, head: &[u8], payload: &[u8]) -> std::io::Result<()> {
    let (mut head, mut payload) = (head, payload);
    while !head.is_empty() || !payload.is_empty() {
        let written = writer.write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = written.min(head.len());
        head = &head[from_head..];
        payload = &payload[written - from_head..];
    }
    Ok(())
}

struct InstanceHost<W: Write + Send + 'static> {
    id: InstanceId,
    outbox: Arc<Outbox<W>>,
    /// A sealed instance's output is sealed here, before it leaves.
    sealed: Option<Arc<SealedInstance>>,
}

impl<W: Write + Send + 'static> InstanceEvents for InstanceHost<W> {
    fn on_event(&self, event: InstanceEvent) {
        let event = match (event, &self.sealed) {
            (InstanceEvent::Output(data), Some(sealed)) => {
                InstanceEvent::Output(sealed.seal_output(&data))
            }
            (event, _) => event,
        };
        self.outbox.send(&FromWorker::Instance(self.id, event));
    }
}

/// The worker's share of the box-wide bandwidth limit, shared by all its
/// instances; replaced when the server asks for a different rate.
#[derive(Default)]
struct BoxBandwidth(Mutex<Option<Arc<TokenBucket>>>);

impl BoxBandwidth {
    fn bucket(&self, bytes_per_s: u64) -> Arc<TokenBucket> {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some(bucket) if bucket.rate() == bytes_per_s.max(1) => bucket.clone(),
            _ => {
                let bucket = TokenBucket::new(bytes_per_s);
                *current = Some(bucket.clone());
                bucket
            }
        }
    }
}

/// A running instance: its I/O and, when sealed, its record layer.
#[derive(Clone)]
struct Running {
    io: Arc<SessionIo>,
    sealed: Option<Arc<SealedInstance>>,
}

type Instances = Arc<Mutex<HashMap<InstanceId, Running>>>;

/// Run the worker loop over `input`/`output` until `input` closes, keeping
/// `prewarm` fresh instances ready ahead of demand (0: none). `channel` is
/// the sealed-channel secret (`None`: sealed requests are refused).
pub fn run_worker<R: Read, W: Write + Send + 'static>(
    runtime: PythonRuntime,
    prewarm: usize,
    channel: Option<bento_attest::ChannelSecret>,
    mut input: R,
    output: W,
) -> Result<(), WorkerError> {
    let runtime = Arc::new(runtime);
    bento_sandbox::start_io_runtime();
    let prewarmed = Prewarmed::start(&runtime, prewarm);
    let outbox = Arc::new(Outbox {
        writer: Mutex::new(output),
    });
    outbox.send(&FromWorker::Ready {
        channel_key: channel
            .as_ref()
            .map(bento_attest::ChannelSecret::public_key),
    });
    let channel = channel.map(Arc::new);
    let instances: Instances = Arc::default();
    let bandwidth = BoxBandwidth::default();
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        while let Some(message) =
            ToWorker::decode(&mut buf).map_err(|e| WorkerError::Pipe(e.to_string()))?
        {
            handle(
                message, &runtime, &prewarmed, &outbox, &instances, &bandwidth, &channel,
            );
        }
        let n = input
            .read(&mut chunk)
            .map_err(|e| WorkerError::Pipe(e.to_string()))?;
        if n == 0 {
            // The server closed our stdin: stop everything.
            for running in lock(&instances).values() {
                running.io.stop(StopReason::Killed);
            }
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn lock(instances: &Instances) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Running>> {
    instances.lock().unwrap_or_else(|e| e.into_inner())
}

fn handle<W: Write + Send + 'static>(
    message: ToWorker,
    runtime: &Arc<PythonRuntime>,
    prewarmed: &Arc<Prewarmed>,
    outbox: &Arc<Outbox<W>>,
    instances: &Instances,
    bandwidth: &BoxBandwidth,
    channel: &Option<Arc<bento_attest::ChannelSecret>>,
) {
    let find = |id| lock(instances).get(&id).map(|r: &Running| r.io.clone());
    match message {
        ToWorker::Start(id, mut request) => {
            let sealed = match crate::sealed::open_request(channel.as_deref(), &mut request) {
                Ok(sealed) => sealed.map(Arc::new),
                Err(reason) => {
                    outbox.send(&FromWorker::Instance(
                        id,
                        InstanceEvent::Finished(InstanceOutcome::SealRejected(reason)),
                    ));
                    return;
                }
            };
            start(
                id, *request, sealed, runtime, prewarmed, outbox, instances, bandwidth,
            );
        }
        ToWorker::Session(id, SessionEvent::Input(data)) => {
            let Some(running) = lock(instances).get(&id).cloned() else {
                return;
            };
            match &running.sealed {
                None => running.io.apply(SessionEvent::Input(data)),
                Some(sealed) => match sealed.open_input(&data) {
                    // The record's overhead is consumed here, its plaintext
                    // when the function reads it: the server's input window
                    // counts the ciphertext it forwarded.
                    Ok(plaintext) => {
                        let overhead = data.len().saturating_sub(plaintext.len()) as u64;
                        running.io.apply(SessionEvent::Input(plaintext));
                        outbox.send(&FromWorker::Instance(
                            id,
                            InstanceEvent::InputConsumed(overhead),
                        ));
                    }
                    Err(_) => {
                        outbox.send(&FromWorker::Instance(
                            id,
                            InstanceEvent::InputConsumed(data.len() as u64),
                        ));
                        running.io.stop(StopReason::Killed);
                    }
                },
            }
        }
        ToWorker::Session(id, event) => match (find(id), event) {
            (Some(io), event) => io.apply(event),
            // The instance has ended (its Finished is on the way); only a
            // channel open needs an answer, so that its client is refused.
            (None, SessionEvent::ChannelOpen(channel)) => outbox.send(&FromWorker::Instance(
                id,
                InstanceEvent::Channel(channel, ChannelEvent::Opened(false)),
            )),
            (None, _) => {}
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn start<W: Write + Send + 'static>(
    id: InstanceId,
    request: StartRequest,
    sealed: Option<Arc<SealedInstance>>,
    runtime: &Arc<PythonRuntime>,
    prewarmed: &Arc<Prewarmed>,
    outbox: &Arc<Outbox<W>>,
    instances: &Instances,
    bandwidth: &BoxBandwidth,
) {
    let host = Arc::new(InstanceHost {
        id,
        outbox: outbox.clone(),
        sealed: sealed.clone(),
    });
    let grant = &request.grant;
    // Store-time checks move no traffic; everything else is charged to the
    // instance's bandwidth and the box's.
    let throttle = if request.call == StartCall::Check {
        Throttle::unlimited()
    } else {
        Throttle::new(vec![
            TokenBucket::new(grant.bandwidth_bytes_per_s()),
            bandwidth.bucket(grant.box_bandwidth_bytes_per_s),
        ])
    };
    let io = SessionIo::with_limits(
        host,
        Instant::now() + request.limits.wall(),
        request.limits.output_buffer_bytes,
        throttle,
        grant.resources.channels,
        request.limits.memory_bytes,
    );
    if sealed.is_some() {
        io.set_chunk_overhead(bento_attest::OUTPUT_RECORD_OVERHEAD as u64);
    }
    lock(instances).insert(
        id,
        Running {
            io: io.clone(),
            sealed: sealed.clone(),
        },
    );
    // Store-time checks make their own instance; invocations take a ready
    // one when there is one.
    let prepared = match request.call {
        StartCall::Check => None,
        _ => prewarmed.take(),
    };
    let prewarmed = prewarmed.clone();
    let runtime = runtime.clone();
    let outbox_for_thread = outbox.clone();
    let instances_for_thread = instances.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("instance-{id}"))
        .stack_size(INSTANCE_THREAD_STACK)
        .spawn(move || {
            // First thing, before any work of the function's: how late this
            // thread got to run is the pool's measure of overload.
            outbox_for_thread.send(&FromWorker::Started(id));
            let running = prewarmed.running();
            let call = match request.call {
                StartCall::Check => Ok(None),
                StartCall::Entry { entry, args_json } => Ok(Some(Call::Entry { entry, args_json })),
                StartCall::Expression(call) => Ok(Some(Call::Expression(call))),
                // `sealed::open_request` turned it into an entry already.
                StartCall::SealedEntry { .. } => Err(()),
            };
            let (outcome, spent) = match call {
                Err(()) => (
                    InstanceOutcome::Trap("a sealed call that was not opened".into()),
                    None,
                ),
                Ok(None) => (runtime.check(&request.source, &request.filename), None),
                Ok(Some(call)) => {
                    let job = Job {
                        source: request.source,
                        filename: request.filename,
                        call,
                        limits: request.limits,
                        grant: request.grant,
                    };
                    match prepared.map_or_else(|| runtime.prepare(), Ok) {
                        Ok(prepared) => {
                            let (outcome, spent) = runtime.run_prepared(prepared, &job, io);
                            (outcome, Some(spent))
                        }
                        Err(e) => (InstanceOutcome::Trap(e.to_string()), None),
                    }
                }
            };
            lock(&instances_for_thread).remove(&id);
            let outcome = match &sealed {
                Some(sealed) => sealed.seal_outcome(outcome),
                None => outcome,
            };
            outbox_for_thread.send(&FromWorker::Instance(id, InstanceEvent::Finished(outcome)));
            drop(running);
            // Unmapping the instance's memory is the slow part of its end:
            // after the outcome is on its way, not before, and while no
            // other function runs.
            if let Some(spent) = spent {
                prewarmed.retire(spent);
            }
        });
    if let Err(e) = spawned {
        lock(instances).remove(&id);
        outbox.send(&FromWorker::Instance(
            id,
            InstanceEvent::Finished(InstanceOutcome::Trap(format!(
                "the worker could not start a thread: {e}"
            ))),
        ));
    }
}
