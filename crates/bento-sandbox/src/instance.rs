//! One function instance: its store, limits, host imports and outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bento_policy::{Grant, InstanceLimits, Limit};
use bento_worker_contract::InstanceOutcome;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::Capabilities;
use crate::engine::PythonRuntime;
use crate::error::SandboxError;
use crate::host_error::HostError;
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
    pub grant: Grant,
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

/// The shared types (`host-error`, `function-error`) have no functions.
impl bento::runtime::types::Host for InstanceState {}

impl bento::runtime::capabilities::Host for InstanceState {
    fn granted(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.capabilities.granted())
    }

    fn stage(&mut self, length: u64) -> wasmtime::Result<Result<(), HostError>> {
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

    fn sleep(&mut self, seconds: f64) -> wasmtime::Result<Result<(), HostError>> {
        self.stop_check(self.capabilities.sleep(&self.io, seconds))
    }

    fn connect(&mut self, host: String, port: u16) -> wasmtime::Result<Result<u32, HostError>> {
        let result = self.capabilities.connect(&self.io, &host, port);
        self.stop_check(result)
    }

    fn accept(&mut self, timeout: Option<f64>) -> wasmtime::Result<Result<Option<u32>, HostError>> {
        let result = self.capabilities.accept(&self.io, timeout);
        self.stop_check(result)
    }

    fn conn_send(&mut self, stream: u32) -> wasmtime::Result<Result<(), HostError>> {
        let result = self.capabilities.stream_send(&self.io, stream);
        self.stop_check(result)
    }

    fn conn_recv(
        &mut self,
        stream: u32,
        max: u32,
        timeout: Option<f64>,
    ) -> wasmtime::Result<Result<Option<u32>, HostError>> {
        let result = self
            .capabilities
            .stream_recv(&self.io, stream, max, timeout);
        self.stop_check(result)
    }

    fn wait(
        &mut self,
        timeout: Option<f64>,
        accept: bool,
    ) -> wasmtime::Result<Result<(u32, bool), HostError>> {
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
    ) -> wasmtime::Result<Result<u32, HostError>> {
        let result = self
            .capabilities
            .tor_connect(&self.io, &host, port, timeout);
        self.stop_check(result)
    }

    fn onion_service(
        &mut self,
        port: u16,
        key: Option<String>,
    ) -> wasmtime::Result<Result<String, HostError>> {
        let result = self.capabilities.onion_service(&self.io, port, key);
        self.stop_check(result)
    }

    fn http_request(
        &mut self,
        method: String,
        url: String,
        headers_json: String,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<String, HostError>> {
        let result =
            self.capabilities
                .http_request(&self.io, method, url, &headers_json, timeout_ms);
        self.stop_check(result)
    }

    fn storage_put(&mut self, key: String) -> wasmtime::Result<Result<(), HostError>> {
        Ok(self.capabilities.storage_put(&self.io, &key))
    }

    fn storage_get(&mut self, key: String) -> wasmtime::Result<Result<Option<u32>, HostError>> {
        let result = self.capabilities.storage_get(&self.io, &key);
        self.stop_check(result)
    }

    fn storage_delete(&mut self, key: String) -> wasmtime::Result<Result<bool, HostError>> {
        Ok(self.capabilities.storage_delete(&key))
    }

    fn storage_keys(&mut self) -> wasmtime::Result<Result<Vec<String>, HostError>> {
        Ok(self.capabilities.storage_keys())
    }

    fn storage_usage(&mut self) -> wasmtime::Result<Result<(u64, u64), HostError>> {
        Ok(self.capabilities.storage_usage())
    }
}

impl InstanceState {
    /// A capability call that ended because the instance is being stopped
    /// traps (so the stop reason, not a Python exception, ends the
    /// instance); any other result goes back to the function.
    fn stop_check<T>(
        &self,
        result: Result<T, HostError>,
    ) -> wasmtime::Result<Result<T, HostError>> {
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
    /// The largest size any memory of the instance was allowed to reach.
    largest: usize,
    /// All linear memory of the instance, in bytes: what [`bind`] carries
    /// from the placeholder account of a prepared instance into the
    /// invocation's.
    ///
    /// [`bind`]: PythonRuntime::bind
    linear: u64,
    /// The account linear memory is counted in, with the host buffers.
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
        self.largest = self.largest.max(desired);
        self.linear = self.linear.saturating_add(growth);
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

/// CPU time after which an instance's thread runs
/// [`LONG_RUNNING_NICE_LEVELS`] nice levels lower for the rest of its life.
///
/// On a saturated box the kernel shares each CPU among the runnable
/// instance threads by weight; a new user's short function (a hello-world
/// uses ~2 ms) would get 1/N of a CPU beside N long-running ones and take
/// N times its CPU time to answer. Lowering the long-running ones once
/// they have shown themselves (the first step of a multilevel feedback
/// queue) gives a newcomer about three times their share per level group
/// of 5 (Linux's nice weights grow 1.25× a level), and takes nothing from
/// anyone when the CPU is free. Only ever lowering needs no privilege.
pub const LONG_RUNNING_AFTER: Duration = Duration::from_millis(50);

/// How many nice levels a long-running instance drops (clamped at
/// [`crate::MAX_NICE`]).
pub const LONG_RUNNING_NICE_LEVELS: u8 = 6;

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

/// A fresh instance of the runtime, made ahead of demand: instantiated
/// from the `InstancePre` (its memory mapped from the copy-on-write image,
/// its tables and globals set up) but bound to no session, limits or grant
/// yet, and never called. [`PythonRuntime::run_prepared`] consumes it, so
/// each one is used exactly once.
pub struct PreparedInstance {
    store: Store<InstanceState>,
    instance: FunctionRuntime,
}

impl std::fmt::Debug for PreparedInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedInstance").finish_non_exhaustive()
    }
}

/// What is left of an instance after its call: its memory and tables,
/// released when this drops. Releasing them (unmapping the memory) is the
/// slowest part of an instance's end, so a worker drops this after it has
/// reported the outcome. The function's connections, channels and storage
/// are already closed.
pub struct SpentInstance(#[allow(dead_code)] Store<InstanceState>);

impl std::fmt::Debug for SpentInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpentInstance").finish_non_exhaustive()
    }
}

/// Limits an unbound instance runs under while it is being instantiated:
/// the runtime's own start-up code, never a function's.
const PREPARE_BUDGET: Duration = Duration::from_secs(60);

fn wasi_ctx(io: &Arc<SessionIo>, clock: InstanceClock) -> WasiCtx {
    WasiCtxBuilder::new()
        .monotonic_clock(clock)
        .stdin(SessionStdin(io.clone()))
        .stdout(SessionStdout(io.clone()))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Stop the instance on the epoch tick after a kill, or once it has used
/// `cpu_budget` of its thread's CPU since `cpu_start`, or at `deadline`;
/// lower its priority once it has used [`LONG_RUNNING_AFTER`].
fn set_limits(
    store: &mut Store<InstanceState>,
    cpu_start: Duration,
    cpu_budget: Duration,
    deadline: Instant,
) {
    store.set_epoch_deadline(1);
    let mut long_running = false;
    store.epoch_deadline_callback(move |ctx| {
        let io = &ctx.data().io;
        if let Some(reason) = io.stop_reason() {
            return Err(stopped(reason));
        }
        let used = thread_cpu_time().saturating_sub(cpu_start);
        if used > cpu_budget {
            io.stop(StopReason::Cpu);
            return Err(stopped(StopReason::Cpu));
        }
        if !long_running && used > LONG_RUNNING_AFTER {
            long_running = true;
            // Best effort: a thread left at its priority still runs.
            let _ = crate::lower_thread_priority(LONG_RUNNING_NICE_LEVELS);
        }
        if Instant::now() >= deadline {
            io.stop(StopReason::WallTime);
            return Err(stopped(StopReason::WallTime));
        }
        Ok(UpdateDeadline::Continue(1))
    });
}

/// Why an instance could not be bound to its invocation.
enum BindError {
    /// Its memory is already larger than the grant allows.
    Memory,
    /// Instantiation left host resources behind that belong to no session.
    NotFresh,
}

impl PythonRuntime {
    /// Make a fresh instance ahead of demand (see [`PreparedInstance`]).
    /// Runs only the runtime's own instantiation, no function code.
    pub fn prepare(&self) -> Result<PreparedInstance, SandboxError> {
        // A placeholder session: nothing reads its output, and it is
        // replaced, with the clock, limits and grant, before any call.
        let io = SessionIo::new(
            Arc::new(DiscardedSession),
            Instant::now() + PREPARE_BUDGET,
            0,
        );
        let clock = InstanceClock::new();
        let cpu_start = thread_cpu_time();
        let state = InstanceState {
            wasi: wasi_ctx(&io, clock),
            table: ResourceTable::new(),
            io: io.clone(),
            clock,
            // The grant's memory limit is checked when the instance is
            // bound (the limiter records how large instantiation made it).
            limiter: MemoryLimiter {
                max_memory: usize::MAX,
                largest: 0,
                linear: 0,
                // The placeholder's account (unlimited); `bind` moves the
                // instance's linear memory into the invocation's.
                memory: io.memory().clone(),
                io: io.clone(),
            },
            capabilities: Capabilities::new(Grant::default()),
            cpu_start,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        set_limits(
            &mut store,
            cpu_start,
            PREPARE_BUDGET,
            Instant::now() + PREPARE_BUDGET,
        );
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(SandboxError::Instantiate)?;
        Ok(PreparedInstance { store, instance })
    }

    /// Give a prepared instance its session, clock, limits and grant, on
    /// the thread that will run it; fails if it cannot honour them.
    fn bind(
        store: &mut Store<InstanceState>,
        io: &Arc<SessionIo>,
        limits: &InstanceLimits,
        grant: Grant,
    ) -> Result<(), BindError> {
        let clock = InstanceClock::new();
        let cpu_start = thread_cpu_time();
        let state = store.data_mut();
        // Instantiation calls no host function, so the placeholder context
        // cannot have handed out a stream or pollable; if a runtime ever
        // did, that handle would still point at the placeholder session.
        if !state.table.is_empty() {
            return Err(BindError::NotFresh);
        }
        state.wasi = wasi_ctx(io, clock);
        state.io = io.clone();
        state.clock = clock;
        state.limiter.io = io.clone();
        state.limiter.max_memory = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
        state.limiter.memory = io.memory().clone();
        state.capabilities = Capabilities::new(grant);
        state.cpu_start = cpu_start;
        // The same checks `memory_growing` makes, for the growth that
        // happened before the limit and the account were known: each
        // memory within the limit, and all of it counted in the
        // invocation's account (with its host buffers).
        if state.limiter.largest > state.limiter.max_memory
            || !io.memory().grow_linear(state.limiter.linear)
        {
            io.stop(StopReason::Memory);
            return Err(BindError::Memory);
        }
        set_limits(store, cpu_start, limits.cpu(), io.deadline());
        Ok(())
    }

    /// Run `job` in a fresh instance, on the calling thread, until the entry
    /// function returns or a limit, kill or error ends it. How it ended is
    /// the worker contract's [`InstanceOutcome`], as the pipe carries it:
    /// `Returned` when the entry function returned (the sandbox never makes
    /// `WorkerCrashed`, which the pool does, or `SealRejected`, which the
    /// worker does).
    pub fn run(&self, job: &Job, io: Arc<SessionIo>) -> InstanceOutcome {
        match self.prepare() {
            Ok(prepared) => self.run_prepared(prepared, job, io).0,
            Err(error) => InstanceOutcome::Trap(error.to_string()),
        }
    }

    /// Run `job` in `prepared`, on the calling thread, until the entry
    /// function returns or a limit, kill or error ends it. The grant's
    /// limits and capabilities apply before any of the function's code
    /// runs, exactly as in a new instance.
    pub fn run_prepared(
        &self,
        prepared: PreparedInstance,
        job: &Job,
        io: Arc<SessionIo>,
    ) -> (InstanceOutcome, SpentInstance) {
        let PreparedInstance {
            mut store,
            instance,
        } = prepared;
        match Self::bind(&mut store, &io, &job.limits, job.grant.clone()) {
            Ok(()) => {}
            Err(BindError::Memory) => {
                let failure = classify(&wasmtime::Error::msg("memory"), &io, &job.limits);
                return (failure, SpentInstance(store));
            }
            Err(BindError::NotFresh) => {
                let failure = InstanceOutcome::Trap("the runtime's instance was not fresh".into());
                return (failure, SpentInstance(store));
            }
        }
        let result = match &job.call {
            Call::Entry { entry, args_json } => {
                instance.call_run(&mut store, &job.source, &job.filename, entry, args_json)
            }
            Call::Expression(call) => {
                instance.call_evaluate(&mut store, &job.source, &job.filename, call)
            }
        };
        // Connections and channels end with the call; its storage is
        // deleted with the capabilities, here rather than with the store,
        // so that the caller may release the memory later.
        let state = store.data_mut();
        let clean = matches!(result, Ok(Ok(())));
        state.capabilities.close_all(&state.io, clean);
        state.capabilities = Capabilities::new(Grant::default());
        let outcome = match result {
            Ok(Ok(())) => InstanceOutcome::Returned,
            Ok(Err(error)) => function_failure(error),
            Err(error) => classify(&error, &io, &job.limits),
        };
        (outcome, SpentInstance(store))
    }

    /// Compile `source` in a fresh instance without running it; the error
    /// is the Python `SyntaxError` text.
    pub fn check(&self, source: &str, filename: &str) -> InstanceOutcome {
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
        let PreparedInstance {
            mut store,
            instance,
        } = match self.prepare() {
            Ok(prepared) => prepared,
            Err(error) => return InstanceOutcome::Trap(error.to_string()),
        };
        match Self::bind(&mut store, &io, &limits, Grant::default()) {
            Ok(()) => {}
            Err(BindError::Memory) => {
                return classify(&wasmtime::Error::msg("memory"), &io, &limits);
            }
            Err(BindError::NotFresh) => {
                return InstanceOutcome::Trap("the runtime's instance was not fresh".into());
            }
        }
        match instance.call_check(&mut store, source, filename) {
            Ok(Ok(())) => InstanceOutcome::Returned,
            Ok(Err(message)) => InstanceOutcome::Exception(message),
            Err(error) => classify(&error, &io, &limits),
        }
    }
}

/// How a function that raised is reported: a capability refusal by the
/// box's rules it left uncaught has its own failure (and error code), any
/// other exception is an exception; both carry the traceback.
fn function_failure(error: bento::runtime::types::FunctionError) -> InstanceOutcome {
    use crate::host_error::ErrorKind;
    match error.host_error {
        Some(ErrorKind::NotGranted | ErrorKind::Refused) => {
            InstanceOutcome::PolicyRefused(error.traceback)
        }
        _ => InstanceOutcome::Exception(error.traceback),
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// Turn a wasmtime error into the failure the client sees. A stop reason
/// recorded before the trap wins: it says which limit (or kill) caused it.
fn classify(error: &wasmtime::Error, io: &SessionIo, limits: &InstanceLimits) -> InstanceOutcome {
    let limit = |limit, detail: String| InstanceOutcome::LimitExceeded { limit, detail };
    match io.stop_reason() {
        Some(StopReason::Killed) => InstanceOutcome::Killed,
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
            _ => InstanceOutcome::Trap(format!("{error:#}")),
        },
    }
}
