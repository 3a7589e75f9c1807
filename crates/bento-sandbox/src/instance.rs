//! One function instance: its store, limits, host imports and outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bento_policy::{InstanceLimits, Limit};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::Capabilities;
use crate::engine::PythonRuntime;
use crate::error::Failure;
use crate::grant::CapabilityGrant;
use crate::memory::InstanceMemory;
use crate::session_io::{DiscardedSession, SessionIo, SessionStdin, SessionStdout, StopReason};
use crate::wasi_sleep::{InstanceClock, shadow_clock_subscriptions};

wasmtime::component::bindgen!({
    path: "../../runtime/wit",
    world: "function-runtime",
    imports: { default: trappable },
});

/// What to run: a function's source and the call to make.
#[derive(Debug, Clone)]
pub struct Job {
    /// Python source of the function module.
    pub source: String,
    /// Name shown in tracebacks (e.g. `hello.py`).
    pub filename: String,
    /// The call to make once the module has run.
    pub call: Call,
    /// Limits for this instance.
    pub limits: InstanceLimits,
    /// What the instance may do beyond its session channel.
    pub grant: CapabilityGrant,
}

/// How to call into a function module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Call the function `entry` with positional arguments from a JSON array.
    Entry {
        /// Function name.
        entry: String,
        /// Arguments, as a JSON array.
        args_json: String,
    },
    /// Evaluate a Python expression such as `add(9, 10)` and send its
    /// non-`None` result (the research prototype's protocol).
    Expression(String),
}

/// How an instance ended: `Ok` when the entry function returned.
pub type Outcome = Result<(), Failure>;

/// Host state of one instance.
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) io: Arc<SessionIo>,
    pub(crate) clock: InstanceClock,
    limiter: MemoryLimiter,
    capabilities: Capabilities,
    /// The thread's CPU clock when the instance was created: CPU time is
    /// counted from here, for the limit and for the function itself.
    cpu_start: Duration,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn stopped(reason: StopReason) -> wasmtime::Error {
    wasmtime::Error::msg(format!("instance stopped: {reason:?}"))
}

impl bento::runtime::session::Host for InstanceState {
    fn next_message(&mut self) -> wasmtime::Result<Option<u32>> {
        self.io.next_message().map_err(stopped)
    }

    fn poll(&mut self) -> wasmtime::Result<bool> {
        Ok(self.io.poll())
    }

    fn begin_message(&mut self, length: u64) -> wasmtime::Result<()> {
        self.io.begin_message(length).map_err(|e| match e {
            crate::session_io::MessageError::Stopped(reason) => stopped(reason),
            // A guest that lies about its message cannot be framed: it
            // traps with the reason.
            other => wasmtime::Error::msg(other.to_string()),
        })
    }
}

impl bento::runtime::capabilities::Host for InstanceState {
    fn granted(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.capabilities.granted())
    }

    fn stage(&mut self, length: u64) -> wasmtime::Result<Result<(), String>> {
        let result = self.io.stage(length);
        self.stop_check(result)
    }

    fn now(&mut self) -> wasmtime::Result<f64> {
        Ok(self.capabilities.now())
    }

    fn cpu_time(&mut self) -> wasmtime::Result<f64> {
        Ok(thread_cpu_time()
            .saturating_sub(self.cpu_start)
            .as_secs_f64())
    }

    fn sleep(&mut self, seconds: f64) -> wasmtime::Result<Result<(), String>> {
        self.stop_check(self.capabilities.sleep(&self.io, seconds))
    }

    fn connect(&mut self, host: String, port: u16) -> wasmtime::Result<Result<u32, String>> {
        let result = self.capabilities.connect(&self.io, &host, port);
        self.stop_check(result)
    }

    fn accept(&mut self, timeout: Option<f64>) -> wasmtime::Result<Result<Option<u32>, String>> {
        let result = self.capabilities.accept(&self.io, timeout);
        self.stop_check(result)
    }

    fn conn_send(&mut self, stream: u32) -> wasmtime::Result<Result<(), String>> {
        let result = self.capabilities.stream_send(&self.io, stream);
        self.stop_check(result)
    }

    fn conn_recv(
        &mut self,
        stream: u32,
        max: u32,
        timeout: Option<f64>,
    ) -> wasmtime::Result<Result<Option<u32>, String>> {
        let result = self
            .capabilities
            .stream_recv(&self.io, stream, max, timeout);
        self.stop_check(result)
    }

    fn wait(
        &mut self,
        timeout: Option<f64>,
        accept: bool,
    ) -> wasmtime::Result<Result<(u32, bool), String>> {
        let result = self.capabilities.wait(&self.io, timeout, accept);
        self.stop_check(result)
    }

    fn conn_close(&mut self, stream: u32) -> wasmtime::Result<()> {
        self.capabilities.stream_close(&self.io, stream);
        Ok(())
    }

    fn tor_connect(
        &mut self,
        host: String,
        port: u16,
        timeout: Option<f64>,
    ) -> wasmtime::Result<Result<u32, String>> {
        let result = self
            .capabilities
            .tor_connect(&self.io, &host, port, timeout);
        self.stop_check(result)
    }

    fn onion_service(
        &mut self,
        port: u16,
        key: Option<String>,
    ) -> wasmtime::Result<Result<String, String>> {
        let result = self.capabilities.onion_service(&self.io, port, key);
        self.stop_check(result)
    }

    fn http_request(
        &mut self,
        method: String,
        url: String,
        headers_json: String,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<String, String>> {
        let result =
            self.capabilities
                .http_request(&self.io, method, url, &headers_json, timeout_ms);
        self.stop_check(result)
    }

    fn storage_put(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self.capabilities.storage_put(&self.io, &key))
    }

    fn storage_get(&mut self, key: String) -> wasmtime::Result<Result<Option<u32>, String>> {
        let result = self.capabilities.storage_get(&self.io, &key);
        self.stop_check(result)
    }

    fn storage_delete(&mut self, key: String) -> wasmtime::Result<Result<bool, String>> {
        Ok(self.capabilities.storage_delete(&key))
    }

    fn storage_keys(&mut self) -> wasmtime::Result<Result<Vec<String>, String>> {
        Ok(self.capabilities.storage_keys())
    }

    fn storage_usage(&mut self) -> wasmtime::Result<Result<(u64, u64), String>> {
        Ok(self.capabilities.storage_usage())
    }
}

impl InstanceState {
    /// A capability call that ended because the instance is being stopped
    /// traps (so the stop reason, not a Python exception, ends the
    /// instance); any other result goes back to the function.
    fn stop_check<T>(&self, result: Result<T, String>) -> wasmtime::Result<Result<T, String>> {
        match self.io.stop_reason() {
            Some(reason) if result.is_err() => Err(stopped(reason)),
            _ => Ok(result),
        }
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    // The full WASIp2 surface is linked because CPython imports it, but the
    // context grants nothing: no preopened directories, no environment, no
    // sockets, no name lookup (see `new_store`).
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    shadow_clock_subscriptions(linker)?;
    FunctionRuntime::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

/// Counts linear memory in the instance's [`InstanceMemory`], with the
/// host buffers; growth beyond the limit stops the instance with a typed
/// memory-limit failure rather than a `MemoryError` the function could
/// catch and ignore.
struct MemoryLimiter {
    /// The job's limit, for any one memory (also when the session's
    /// account is unlimited, as for `bento bench`'s sandbox-alone timing).
    max_memory: usize,
    memory: Arc<InstanceMemory>,
    io: Arc<SessionIo>,
}

/// Tables hold function references; CPython needs a few thousand entries.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for each memory's creation too (from 0), so the deltas
        // add up to all linear memory of the instance.
        let growth = u64::try_from(desired.saturating_sub(current)).unwrap_or(u64::MAX);
        if desired > self.max_memory || !self.memory.grow_linear(growth) {
            self.io.stop(StopReason::Memory);
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// CPU time consumed by the calling thread. Each instance runs on its own
/// thread, so this is the instance's CPU time.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer we own; the
    // thread CPU clock always exists on Linux.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

impl PythonRuntime {
    fn new_store(
        &self,
        io: Arc<SessionIo>,
        limits: &InstanceLimits,
        grant: CapabilityGrant,
    ) -> Store<InstanceState> {
        let clock = InstanceClock::new();
        let wasi = WasiCtxBuilder::new()
            .monotonic_clock(clock)
            .stdin(SessionStdin(io.clone()))
            .stdout(SessionStdout(io.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = InstanceState {
            wasi,
            table: ResourceTable::new(),
            io: io.clone(),
            clock,
            limiter: MemoryLimiter {
                max_memory: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
                memory: io.memory().clone(),
                io: io.clone(),
            },
            capabilities: Capabilities::new(grant),
            cpu_start: thread_cpu_time(),
        };
        let cpu_start = state.cpu_start;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);

        let cpu_budget = limits.cpu();
        let deadline = io.deadline();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |ctx| {
            let io = &ctx.data().io;
            if let Some(reason) = io.stop_reason() {
                return Err(stopped(reason));
            }
            if thread_cpu_time().saturating_sub(cpu_start) > cpu_budget {
                io.stop(StopReason::Cpu);
                return Err(stopped(StopReason::Cpu));
            }
            if Instant::now() >= deadline {
                io.stop(StopReason::WallTime);
                return Err(stopped(StopReason::WallTime));
            }
            Ok(UpdateDeadline::Continue(1))
        });
        store
    }

    /// Run `job` in a fresh instance, on the calling thread, until the entry
    /// function returns or a limit, kill or error ends it.
    pub fn run(&self, job: &Job, io: Arc<SessionIo>) -> Outcome {
        let mut store = self.new_store(io.clone(), &job.limits, job.grant.clone());
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| match &job.call {
                Call::Entry { entry, args_json } => {
                    instance.call_run(&mut store, &job.source, &job.filename, entry, args_json)
                }
                Call::Expression(call) => {
                    instance.call_evaluate(&mut store, &job.source, &job.filename, call)
                }
            });
        // Connections and channels end with the instance; its storage is
        // deleted when the store drops.
        let state = store.data_mut();
        let clean = matches!(result, Ok(Ok(())));
        state.capabilities.close_all(&state.io, clean);
        drop(store);
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(traceback)) => Err(Failure::Exception(traceback)),
            Err(error) => Err(classify(&error, &io, &job.limits)),
        }
    }

    /// Compile `source` in a fresh instance without running it; the error
    /// is the Python `SyntaxError` text.
    pub fn check(&self, source: &str, filename: &str) -> Outcome {
        let limits = InstanceLimits {
            wall_ms: 10_000,
            ..InstanceLimits::default()
        };
        let io = SessionIo::with_limits(
            Arc::new(DiscardedSession),
            Instant::now() + limits.wall(),
            0,
            crate::Throttle::unlimited(),
            0,
            limits.memory_bytes,
        );
        let mut store = self.new_store(io.clone(), &limits, CapabilityGrant::default());
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_check(&mut store, source, filename));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Failure::Exception(message)),
            Err(error) => Err(classify(&error, &io, &limits)),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// Turn a wasmtime error into the failure the client sees. A stop reason
/// recorded before the trap wins: it says which limit (or kill) caused it.
fn classify(error: &wasmtime::Error, io: &SessionIo, limits: &InstanceLimits) -> Failure {
    let limit = |limit, detail: String| Failure::LimitExceeded { limit, detail };
    match io.stop_reason() {
        Some(StopReason::Killed) => Failure::Killed,
        Some(StopReason::Memory) => limit(
            Limit::Memory,
            format!(
                "the instance tried to grow its memory (linear memory and host buffers) beyond {}",
                mib(limits.memory_bytes)
            ),
        ),
        Some(StopReason::Cpu) => limit(
            Limit::Cpu,
            format!(
                "the function used more than {} ms of CPU time",
                limits.cpu_ms
            ),
        ),
        Some(StopReason::WallTime) => limit(
            Limit::WallTime,
            format!("the function ran for more than {} ms", limits.wall_ms),
        ),
        None => match error.downcast_ref::<Trap>() {
            Some(Trap::StackOverflow) => limit(
                Limit::Stack,
                "the function recursed too deeply (wasm stack exhausted)".into(),
            ),
            _ => Failure::Trap(format!("{error:#}")),
        },
    }
}
