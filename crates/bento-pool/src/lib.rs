//! The server's end of the worker pipe: a pool of sandbox worker processes.
//!
//! Function instances never run in the server process. The server keeps a
//! [`WorkerPool`] of worker processes (the `bento` binary's hidden `worker`
//! subcommand, optionally under an operator-chosen wrapper such as an OS jail
//! or a TEE loader); each worker runs many instances, one thread each, and
//! talks to the server over its stdin/stdout with the private protocol in
//! `bento_worker_contract::ipc`. A worker that crashes or is killed costs
//! only its own instances, which end with
//! [`InstanceOutcome::WorkerCrashed`](bento_worker_contract::InstanceOutcome::WorkerCrashed);
//! the pool respawns it.
//!
//! Worker processes (rather than threads) also make instantiation scale
//! across cores: threads instantiating in one process contend on the
//! kernel's memory-map lock and TLB shootdowns.
//!
//! This crate does not link wasmtime: the server depends on it and on
//! `bento-worker-contract` only, and the sandbox runs in the `bento worker`
//! processes the pool spawns.

pub mod admission;
mod pipe_size;
mod pool;

pub use admission::AdmissionStats;
pub use pool::{
    InstanceHandle, PoolError, PoolStats, RESPAWN_PATIENCE, WorkerPool, WorkerPoolConfig,
    WorkerViolation,
};
