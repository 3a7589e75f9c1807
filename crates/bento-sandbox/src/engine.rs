//! The wasmtime engine and the loaded Python runtime.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, OptLevel};

use crate::error::SandboxError;
use crate::instance::{FunctionRuntimePre, InstanceState};

/// How often the epoch advances; CPU, wall-clock and kill checks of running
/// wasm happen at this granularity.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Largest wasm call stack an instance may use.
const MAX_WASM_STACK: usize = 1024 * 1024;

/// The one engine configuration used both to precompile the runtime and to
/// load it; a precompiled file only loads into an identical configuration.
fn engine_config() -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(MAX_WASM_STACK)
        // Instances start from a copy-on-write image of the runtime's memory
        // snapshot instead of re-running CPython's initialisation.
        .memory_init_cow(true)
        .parallel_compilation(true);
    config
}

fn engine() -> Result<Engine, SandboxError> {
    Engine::new(&engine_config()).map_err(SandboxError::Engine)
}

/// Start the I/O runtime that WASI streams run on (wasmtime-wasi's, shared
/// by every instance of the process) from the calling thread.
///
/// It starts its threads on first use, and a thread inherits its
/// creator's scheduling priority and policy: started by an instance's
/// thread lowered as long-running ([`crate::LONG_RUNNING_AFTER`]) or by a
/// worker's idle-priority prewarming thread, every instance's I/O would run
/// at that priority. A worker calls this first, from its main thread.
pub fn start_io_runtime() {
    wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| ());
}

/// Compile the Python runtime component (`.wasm`) to the native form
/// (`.cwasm`) that [`PythonRuntime::load_precompiled`] loads. Takes seconds;
/// do it once and cache the result.
pub fn precompile_runtime(wasm: &[u8]) -> Result<Vec<u8>, SandboxError> {
    engine()?
        .precompile_component(wasm)
        .map_err(SandboxError::LoadRuntime)
}

/// The Python runtime, loaded and linked, ready to start instances.
///
/// Owns a thread that advances the engine's epoch every 10 ms for as long as
/// the runtime lives.
pub struct PythonRuntime {
    pub(crate) engine: Engine,
    pub(crate) pre: FunctionRuntimePre<InstanceState>,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PythonRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonRuntime").finish_non_exhaustive()
    }
}

impl PythonRuntime {
    /// Load a runtime precompiled by [`precompile_runtime`].
    ///
    /// The file must come from this Bento build's own precompile step: a
    /// precompiled file is native code and is trusted like the `bento`
    /// binary itself (the operator's cache, never user input).
    pub fn load_precompiled(path: &Path) -> Result<Self, SandboxError> {
        let engine = engine()?;
        // Fail with a readable error for a missing file before wasmtime's.
        std::fs::metadata(path).map_err(|error| SandboxError::ReadRuntime {
            path: path.to_owned(),
            error,
        })?;
        // SAFETY: `deserialize_file` trusts the file to be wasmtime's own
        // output for this engine configuration (it checks version and
        // configuration, not the code). The path is the operator's runtime
        // cache, written by `precompile_runtime`; functions cannot write it.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(&engine, path) }
            .map_err(SandboxError::LoadRuntime)?;
        Self::link(engine, component)
    }

    /// Compile and load a runtime component from its `.wasm` bytes (slow;
    /// prefer [`Self::load_precompiled`]).
    pub fn compile(wasm: &[u8]) -> Result<Self, SandboxError> {
        let engine = engine()?;
        let component = Component::new(&engine, wasm).map_err(SandboxError::LoadRuntime)?;
        Self::link(engine, component)
    }

    fn link(engine: Engine, component: Component) -> Result<Self, SandboxError> {
        let mut linker = Linker::<InstanceState>::new(&engine);
        crate::instance::add_to_linker(&mut linker).map_err(SandboxError::LoadRuntime)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(SandboxError::LoadRuntime)?;
        let pre = FunctionRuntimePre::new(instance_pre).map_err(SandboxError::LoadRuntime)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("bento-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| SandboxError::Engine(wasmtime::Error::msg(e.to_string())))?;
        Ok(Self {
            engine,
            pre,
            ticker_stop,
        })
    }
}

impl Drop for PythonRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
