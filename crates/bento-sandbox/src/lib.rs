//! Runs untrusted Python functions in WebAssembly.
//!
//! A function runs inside the Bento Python runtime: CPython built for WASI
//! by `componentize-py` from the WIT world in `runtime/wit`, which receives
//! the user's source at run time. [`PythonRuntime`] loads the precompiled
//! runtime once and starts one fresh instance per invocation from an
//! `InstancePre`, with these limits:
//!
//! - memory, via a [`wasmtime::ResourceLimiter`] and [`InstanceMemory`]:
//!   linear memory and the host buffers the function can make grow share
//!   one limit; going beyond it stops the instance at once (no
//!   `MemoryError` for the function to swallow);
//! - CPU time, measured per instance thread and checked on every epoch tick;
//! - wall-clock time, checked on epoch ticks and by every blocking wait;
//! - output backpressure: `api.send` blocks while the session's output
//!   credit is used up (see [`SessionIo`]).
//!
//! Capabilities beyond the session channel (outbound connections, HTTP,
//! encrypted storage, time, service channels) are host functions that check
//! the instance's [`Grant`](bento_policy::Grant); all traffic is charged to its
//! bandwidth [`Throttle`].
//!
//! Nothing is ambient: no filesystem, no environment, no sockets, no name
//! resolution. Session bytes flow through WASI stdin/stdout, implemented by
//! [`SessionIo`], never through `list<u8>` arguments (componentize-py leaks
//! those).

mod capabilities;
mod engine;
mod error;
mod host_error;
mod instance;
mod memory;
mod priority;
mod session_io;
mod throttle;
mod tor_stream;
mod wasi_sleep;

pub use engine::{PythonRuntime, precompile_runtime, start_io_runtime};
pub use error::SandboxError;
pub use instance::{
    Call, Job, LONG_RUNNING_AFTER, LONG_RUNNING_NICE_LEVELS, PreparedInstance, SpentInstance,
};
pub use memory::{HostBytes, InstanceMemory, MemoryExceeded};
pub use priority::{MAX_NICE, lower_thread_priority};
pub use session_io::{DiscardedSession, MAX_STAGED, MessageError, SessionIo, StopReason};
pub use throttle::{Throttle, TokenBucket};
