//! The sandbox worker process: the `bento worker` loop that reads the
//! server's instructions from its stdin, runs each instance in
//! `bento-sandbox` on its own thread, and writes events back on its stdout
//! (the pipe protocol is `bento_worker_contract::ipc`); and the jail it
//! runs under, at a lower CPU priority than the server.
//!
//! The server's end of the pipe, the pool that spawns these processes, is
//! `bento-pool`, which does not link wasmtime; only the `bento` binary links
//! this crate.

mod jail;
mod prewarm;
mod priority;
mod sealed;
mod worker_process;

pub use jail::{
    JailConfig, JailError, JailReport, LandlockLevel, WORKER_MAX_OPEN_FILES, jail_support,
    jail_worker,
};
pub use priority::{MAX_WORKER_NICE, lower_worker_priority};
pub use worker_process::{WorkerError, run_worker};
