//! The two event enums of the worker boundary, one per direction.
//!
//! An [`InstanceEvent`] is produced by the sandbox (or, for
//! [`InstanceEvent::Finished`], by the worker around it), carried as-is in
//! a `FromWorker` frame, checked by the pool against what the server
//! allowed, and consumed by the session through [`InstanceEvents`]. A
//! [`SessionEvent`] goes the other way: produced by the session through the
//! pool's instance handle, carried in a `ToWorker` frame, and applied to the
//! instance's session I/O by the worker. Nothing translates between
//! per-layer spellings of the same event.

use bytes::Bytes;

use crate::ipc::{InstanceOutcome, OnionRequest};

/// What an instance tells its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// Output bytes the function wrote; always within granted credit.
    Output(Bytes),
    /// The function consumed this many bytes of the session's input (so
    /// more may be sent).
    InputConsumed(u64),
    /// The next this-many output bytes are one message (one `api.send`).
    MessageStart(u64),
    /// Something happened on service channel `u32`.
    Channel(u32, ChannelEvent),
    /// The function asks for an onion service (request number, details);
    /// the answer is [`SessionEvent::OnionReply`] with the same number.
    OnionRequest(u32, OnionRequest),
    /// The instance ended; the last event of every instance.
    Finished(InstanceOutcome),
}

/// What happened on one of an instance's service channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// The instance accepted the channel (`true`) or was at its limit.
    Opened(bool),
    /// Bytes the function sent on the channel.
    Output(Bytes),
    /// The function consumed this many of the channel's input bytes.
    Consumed(u64),
    /// The function closed the channel.
    Closed,
}

/// What a session tells its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// One client message.
    Input(Bytes),
    /// The client closed its input.
    InputEnd,
    /// The instance may send this many more output bytes.
    Credit(u64),
    /// Stop the instance.
    Kill,
    /// A client connected to the instance's service as channel `u32`.
    ChannelOpen(u32),
    /// Bytes from a channel's client.
    ChannelInput(u32, Bytes),
    /// The channel's client ended its input; `true`: and went away.
    ChannelEnd(u32, bool),
    /// The box passed this many of the channel's output bytes on.
    ChannelCredit(u32, u64),
    /// The answer to onion-service request `u32`: the address or why not.
    OnionReply(u32, Result<String, String>),
}

/// Receives an instance's events. The pool calls it on its reader task and
/// the sandbox on the instance's thread, so implementations must not block.
pub trait InstanceEvents: Send + Sync + 'static {
    /// One event, in the order the instance produced it.
    fn on_event(&self, event: InstanceEvent);
}
