//! Sandbox worker processes.
//!
//! Function instances never run in the server process. The server keeps a
//! [`WorkerPool`] of worker processes (the `bento` binary's hidden `worker`
//! subcommand, optionally under an operator-chosen wrapper such as an OS jail
//! or a TEE loader); each worker runs many instances, one thread each, and
//! talks to the server over its stdin/stdout with the private protocol in
//! [`ipc`]. A worker that crashes or is killed costs only its own instances,
//! which end with [`InstanceOutcome::WorkerCrashed`]; the pool respawns it.
//!
//! Worker processes (rather than threads) also make instantiation scale
//! across cores: threads instantiating in one process contend on the
//! kernel's memory-map lock and TLB shootdowns.

pub mod ipc;
mod jail;
mod pipe_size;
mod pool;
mod prewarm;
mod sealed;
mod worker_process;

pub use bento_sandbox::{
    CHANNEL_CREDIT, CapabilityGrant, INPUT_WINDOW, MAX_MESSAGE_LEN, MESSAGE_CREDIT, StorageGrant,
};
pub use ipc::{
    InstanceId, InstanceOutcome, OnionRequest, SealedFunctionRef, StartCall, StartRequest,
};
pub use jail::{
    JailConfig, JailError, JailReport, LandlockLevel, WORKER_MAX_OPEN_FILES, jail_support,
    jail_worker,
};
pub use pipe_size::grow_pipe;
pub use pool::{
    ChannelEvent, InstanceEvents, InstanceHandle, PoolError, PoolStats, RESPAWN_PATIENCE,
    WorkerPool, WorkerPoolConfig, WorkerViolation,
};
pub use worker_process::{WorkerError, run_worker};
