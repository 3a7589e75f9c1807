//! Errors setting up the sandbox. How an instance ended is the worker
//! contract's `InstanceOutcome`, which the sandbox returns as it is.

/// Errors setting up the sandbox itself (not a function's failure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The runtime file could not be read.
    #[error("cannot read the Python runtime at {path}: {error}")]
    ReadRuntime {
        /// The file that could not be read.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The runtime could not be compiled, loaded or linked.
    #[error("cannot load the Python runtime: {0:#}")]
    LoadRuntime(wasmtime::Error),
    /// A fresh instance of the runtime could not be made.
    #[error("cannot instantiate the Python runtime: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The wasmtime engine could not be configured.
    #[error("cannot configure the wasm engine: {0:#}")]
    Engine(wasmtime::Error),
}
