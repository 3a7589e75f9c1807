//! What the server and its sandbox workers agree on, in one crate that does
//! not link wasmtime.
//!
//! The server ([`bento-pool`]) and the worker process (`bento-worker`, which
//! runs `bento-sandbox`) are two ends of one pipe. Everything both ends must
//! spell the same way lives here, once:
//!
//! - [`ipc`]: the messages on the pipe and their framing (`ToWorker`,
//!   `FromWorker`), with the decoder the server runs on whatever a
//!   (possibly compromised) worker writes;
//! - [`events`]: one event enum per direction across the boundary,
//!   [`InstanceEvent`] (instance → session) and [`SessionEvent`] (session →
//!   instance), produced by the sandbox or session and carried as-is in the
//!   pipe messages;
//! - the grant: what an instance may do, is `bento_policy::Grant`, the one
//!   type admission makes and the sandbox enforces, carried as-is in
//!   [`StartRequest`];
//! - the flow-control constants below, which the sandbox enforces and the
//!   server checks again against every worker message.
//!
//! [`bento-pool`]: ../bento_pool/index.html

pub mod events;
pub mod ipc;

pub use events::{ChannelEvent, InstanceEvent, InstanceEvents, SessionEvent};
pub use ipc::{
    InstanceId, InstanceOutcome, OnionRequest, SealedFunctionRef, StartCall, StartRequest,
};

/// Input bytes the box forwards to an instance (its session, or one of its
/// service channels) before the function consumed them; beyond this the
/// box stops reading the client. Each window is reserved in the instance's
/// memory for as long as it is open.
pub const INPUT_WINDOW: u64 = 1024 * 1024;

/// Output credit one message boundary costs, so that a function sending
/// many tiny (or empty) messages cannot make the box keep unbounded
/// boundary records; the owner returns it when the record is freed.
pub const MESSAGE_CREDIT: u64 = 32;

/// Longest message (one `api.send`) a function may announce. A wasm32
/// instance cannot hold a 4 GiB value, so a longer announcement is a lie;
/// the bound also leaves room for any protocol to frame a message under a
/// `u32` length with its header (the research prototype's frame counts a
/// 36-byte instance id in its length).
pub const MAX_MESSAGE_LEN: u64 = u32::MAX as u64 - 1024;

/// Output a service channel may have in flight before the box has passed
/// it on to the channel's client.
pub const CHANNEL_CREDIT: u64 = 256 * 1024;
