//! Errors of the sandbox and the ways an instance can fail.

use bento_policy::Limit;

/// Errors setting up the sandbox itself (not a function's failure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The runtime file could not be read.
    #[error("cannot read the Python runtime at {path}: {source}")]
    ReadRuntime {
        /// The file that could not be read.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
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

/// Why an instance did not return normally.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// A resource limit was exceeded; the instance was stopped.
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// Details for the client (e.g. the configured value).
        detail: String,
    },
    /// The function raised an uncaught exception, or its source did not
    /// compile; carries the Python traceback.
    Exception(String),
    /// The function left a capability error uncaught whose cause is the
    /// box's rules (a destination refused, a capability not granted);
    /// carries the Python traceback.
    PolicyRefused(String),
    /// The instance was killed on request.
    Killed,
    /// The instance trapped for a reason that is not a limit (a bug in the
    /// runtime, or a hostile guest corrupting it).
    Trap(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::LimitExceeded { limit, detail } => write!(f, "{limit} exceeded: {detail}"),
            Failure::Exception(tb) | Failure::PolicyRefused(tb) => f.write_str(tb.trim_end()),
            Failure::Killed => f.write_str("killed"),
            Failure::Trap(msg) => write!(f, "the function's instance trapped: {msg}"),
        }
    }
}

/// How a failed instance is reported across the worker pipe.
impl From<Failure> for bento_worker_contract::InstanceOutcome {
    fn from(failure: Failure) -> Self {
        use bento_worker_contract::InstanceOutcome;
        match failure {
            Failure::LimitExceeded { limit, detail } => {
                InstanceOutcome::LimitExceeded { limit, detail }
            }
            Failure::Exception(traceback) => InstanceOutcome::Exception(traceback),
            Failure::PolicyRefused(traceback) => InstanceOutcome::PolicyRefused(traceback),
            Failure::Killed => InstanceOutcome::Killed,
            Failure::Trap(message) => InstanceOutcome::Trap(message),
        }
    }
}
