//! The pipe protocol between the server and its worker processes.
//!
//! Both ends are this codebase, so the format is private and simple:
//! `u32` length (of what follows), `u8` type, `u64` instance id, payload.
//! Server → worker on the worker's stdin, worker → server on its stdout.

use bento_policy::{InstanceLimits, Limit};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::grant::CapabilityGrant;

/// Largest IPC frame; bounds what a confused peer can make the other buffer.
pub const MAX_IPC_FRAME: usize = 64 * 1024 * 1024;

/// Identifies one instance within a worker connection.
pub type InstanceId = u64;

/// What the worker should run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    /// Python source.
    pub source: String,
    /// File name for tracebacks.
    pub filename: String,
    /// What to do with the source.
    pub call: StartCall,
    /// Limits for the instance.
    pub limits: InstanceLimits,
    /// Capabilities beyond the session channel.
    #[serde(default)]
    pub grant: CapabilityGrant,
    /// A sealed function: `source` and `filename` are empty and the worker
    /// opens them from here (docs/attestation.md, "The sealed channel").
    #[serde(default)]
    pub sealed: Option<SealedFunctionRef>,
}

/// A sealed function as the server stores and relays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFunctionRef {
    /// Hex of the `SealedStore` envelope.
    pub envelope: String,
    /// The manifest the envelope is bound to.
    pub manifest: String,
}

/// What an instance does with its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartCall {
    /// Only compile it (the store-time syntax check).
    Check,
    /// Call `entry(*args)`.
    Entry {
        /// Function name.
        entry: String,
        /// JSON array of arguments.
        args_json: String,
    },
    /// Evaluate a call expression (the research prototype's protocol).
    Expression(String),
    /// Open a `SealedInvoke` envelope (hex) and call what it names; the
    /// session's input and output are sealed.
    SealedEntry {
        /// Hex of the envelope.
        envelope: String,
    },
}

/// How an instance ended, as reported by its worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceOutcome {
    /// The entry function returned (or the check passed).
    Returned,
    /// A limit was exceeded.
    LimitExceeded {
        /// Which.
        limit: Limit,
        /// Details.
        detail: String,
    },
    /// Uncaught exception or syntax error; the traceback.
    Exception(String),
    /// Killed on request.
    Killed,
    /// Trapped for another reason.
    Trap(String),
    /// The worker process died (synthesised by the server side).
    WorkerCrashed,
    /// Sealed data did not open (tampered, replayed, reordered, another
    /// session's or key's), or this worker holds no channel key.
    SealRejected(String),
}

/// Server → worker messages.
#[derive(Debug, Clone)]
pub enum ToWorker {
    /// Start an instance.
    Start(InstanceId, Box<StartRequest>),
    /// One client message.
    Input(InstanceId, Bytes),
    /// The client closed its input.
    InputEnd(InstanceId),
    /// Allow this many more output bytes.
    Credit(InstanceId, u64),
    /// Stop the instance.
    Kill(InstanceId),
    /// A client connected to the instance's service as channel `u32`.
    ChannelOpen(InstanceId, u32),
    /// Bytes from a channel's client.
    ChannelInput(InstanceId, u32, Bytes),
    /// The channel's client ended its input; `true`: and went away.
    ChannelEnd(InstanceId, u32, bool),
    /// The box passed this many of the channel's output bytes on.
    ChannelCredit(InstanceId, u32, u64),
    /// The answer to onion-service request `u32`: the address or why not.
    OnionReply(InstanceId, u32, Result<String, String>),
}

/// Worker → server messages.
#[derive(Debug, Clone)]
pub enum FromWorker {
    /// The worker loaded the runtime and is ready (id is 0), holding this
    /// sealed-channel public key (`None`: no sealed channel).
    Ready {
        /// The X25519 public key of the worker's channel secret.
        channel_key: Option<[u8; 32]>,
    },
    /// Output from an instance.
    Output(InstanceId, Bytes),
    /// The instance consumed this many input bytes.
    InputConsumed(InstanceId, u64),
    /// The next this-many output bytes are one message.
    MessageStart(InstanceId, u64),
    /// The instance ended.
    Finished(InstanceId, InstanceOutcome),
    /// Channel `u32` was accepted (`true`) or refused at the channel limit.
    ChannelOpened(InstanceId, u32, bool),
    /// Bytes the function sent on a channel.
    ChannelOutput(InstanceId, u32, Bytes),
    /// The function consumed this many of the channel's input bytes.
    ChannelConsumed(InstanceId, u32, u64),
    /// The function closed the channel.
    ChannelClosed(InstanceId, u32),
    /// The function asks for an onion service (request number, details).
    OnionRequest(InstanceId, u32, OnionRequest),
}

/// What `api.onion_service` asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnionRequest {
    /// Virtual port clients connect to.
    pub port: u16,
    /// "ED25519-V3:…" to reuse an address; `None` for a fresh one.
    pub key: Option<String>,
}

/// An IPC frame that could not be decoded: the peer is broken or hostile
/// and the connection must be dropped.
#[derive(Debug, thiserror::Error)]
#[error("bad worker IPC frame: {0}")]
pub struct IpcError(String);

const T_START: u8 = 1;
const T_INPUT: u8 = 2;
const T_INPUT_END: u8 = 3;
const T_CREDIT: u8 = 4;
const T_KILL: u8 = 5;
const T_CHANNEL_OPEN: u8 = 6;
const T_CHANNEL_INPUT: u8 = 7;
const T_CHANNEL_END: u8 = 8;
const T_CHANNEL_CREDIT: u8 = 9;
const T_ONION_REPLY: u8 = 10;
const T_READY: u8 = 64;
const T_OUTPUT: u8 = 65;
const T_CONSUMED: u8 = 66;
const T_FINISHED: u8 = 67;
const T_MESSAGE: u8 = 68;
const T_CHANNEL_OPENED: u8 = 69;
const T_CHANNEL_OUTPUT: u8 = 70;
const T_CHANNEL_CONSUMED: u8 = 71;
const T_CHANNEL_CLOSED: u8 = 72;
const T_ONION_REQUEST: u8 = 73;

/// Header bytes before a payload: length, type, id.
pub const IPC_HEADER_LEN: usize = 4 + 1 + 8;

/// The header of a frame carrying `payload_len` bytes.
pub fn header(kind: u8, id: InstanceId, payload_len: usize) -> [u8; IPC_HEADER_LEN] {
    let mut out = [0u8; IPC_HEADER_LEN];
    let len = u32::try_from(1 + 8 + payload_len).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&len.to_be_bytes());
    out[4] = kind;
    out[5..].copy_from_slice(&id.to_be_bytes());
    out
}

/// A channel message's payload: the channel id, then `rest`.
fn channel_payload(channel: u32, rest: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + rest.len());
    out.put_u32(channel);
    out.put_slice(rest);
    out.freeze()
}

/// Split a channel message's payload into the channel id and the rest.
fn split_channel(mut payload: Bytes) -> Result<(u32, Bytes), IpcError> {
    if payload.len() < 4 {
        return Err(IpcError("channel message without a channel id".into()));
    }
    let channel = payload.get_u32();
    Ok((channel, payload))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl ToWorker {
    /// Encode to bytes.
    pub fn encode(&self) -> Bytes {
        let (kind, id, payload): (u8, InstanceId, Bytes) = match self {
            ToWorker::Start(id, req) => (T_START, *id, json(req).into()),
            ToWorker::Input(id, data) => (T_INPUT, *id, data.clone()),
            ToWorker::InputEnd(id) => (T_INPUT_END, *id, Bytes::new()),
            ToWorker::Credit(id, n) => (T_CREDIT, *id, Bytes::copy_from_slice(&n.to_be_bytes())),
            ToWorker::Kill(id) => (T_KILL, *id, Bytes::new()),
            ToWorker::ChannelOpen(id, ch) => (T_CHANNEL_OPEN, *id, channel_payload(*ch, &[])),
            ToWorker::ChannelInput(id, ch, data) => {
                (T_CHANNEL_INPUT, *id, channel_payload(*ch, data))
            }
            ToWorker::ChannelEnd(id, ch, gone) => {
                (T_CHANNEL_END, *id, channel_payload(*ch, &[u8::from(*gone)]))
            }
            ToWorker::ChannelCredit(id, ch, n) => (
                T_CHANNEL_CREDIT,
                *id,
                channel_payload(*ch, &n.to_be_bytes()),
            ),
            ToWorker::OnionReply(id, request, result) => {
                (T_ONION_REPLY, *id, channel_payload(*request, &json(result)))
            }
        };
        let mut out = BytesMut::with_capacity(IPC_HEADER_LEN + payload.len());
        out.put_slice(&header(kind, id, payload.len()));
        out.put_slice(&payload);
        out.freeze()
    }
}

impl FromWorker {
    /// Encode the header and payload; the payload is returned separately so
    /// large output is written without copying.
    pub fn encode_parts(&self) -> ([u8; IPC_HEADER_LEN], Bytes) {
        let (kind, id, payload): (u8, InstanceId, Bytes) = match self {
            FromWorker::Ready { channel_key } => (
                T_READY,
                0,
                channel_key.map_or_else(Bytes::new, |k| Bytes::copy_from_slice(&k)),
            ),
            FromWorker::Output(id, data) => (T_OUTPUT, *id, data.clone()),
            FromWorker::InputConsumed(id, n) => {
                (T_CONSUMED, *id, Bytes::copy_from_slice(&n.to_be_bytes()))
            }
            FromWorker::Finished(id, outcome) => (T_FINISHED, *id, json(outcome).into()),
            FromWorker::MessageStart(id, n) => {
                (T_MESSAGE, *id, Bytes::copy_from_slice(&n.to_be_bytes()))
            }
            FromWorker::ChannelOpened(id, ch, accepted) => (
                T_CHANNEL_OPENED,
                *id,
                channel_payload(*ch, &[u8::from(*accepted)]),
            ),
            FromWorker::ChannelOutput(id, ch, data) => {
                (T_CHANNEL_OUTPUT, *id, channel_payload(*ch, data))
            }
            FromWorker::ChannelConsumed(id, ch, n) => (
                T_CHANNEL_CONSUMED,
                *id,
                channel_payload(*ch, &n.to_be_bytes()),
            ),
            FromWorker::ChannelClosed(id, ch) => (T_CHANNEL_CLOSED, *id, channel_payload(*ch, &[])),
            FromWorker::OnionRequest(id, request, details) => (
                T_ONION_REQUEST,
                *id,
                channel_payload(*request, &json(details)),
            ),
        };
        (header(kind, id, payload.len()), payload)
    }
}

/// Split one frame off the front of `buf`: `(type, id, payload)`.
fn split_frame(buf: &mut BytesMut) -> Result<Option<(u8, InstanceId, Bytes)>, IpcError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(9..=MAX_IPC_FRAME).contains(&len) {
        return Err(IpcError(format!("frame length {len}")));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(len).freeze();
    let kind = frame.get_u8();
    let id = frame.get_u64();
    Ok(Some((kind, id, frame)))
}

fn u64_payload(payload: &Bytes) -> Result<u64, IpcError> {
    let raw: [u8; 8] = payload[..]
        .try_into()
        .map_err(|_| IpcError("u64 payload of wrong size".into()))?;
    Ok(u64::from_be_bytes(raw))
}

fn from_json<T: for<'de> Deserialize<'de>>(payload: &Bytes) -> Result<T, IpcError> {
    serde_json::from_slice(payload).map_err(|e| IpcError(e.to_string()))
}

impl ToWorker {
    /// Decode one message from the front of `buf`, if complete.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, IpcError> {
        let Some((kind, id, payload)) = split_frame(buf)? else {
            return Ok(None);
        };
        Ok(Some(match kind {
            T_START => ToWorker::Start(id, Box::new(from_json(&payload)?)),
            T_INPUT => ToWorker::Input(id, payload),
            T_INPUT_END => ToWorker::InputEnd(id),
            T_CREDIT => ToWorker::Credit(id, u64_payload(&payload)?),
            T_KILL => ToWorker::Kill(id),
            T_CHANNEL_OPEN => ToWorker::ChannelOpen(id, split_channel(payload)?.0),
            T_CHANNEL_INPUT => {
                let (ch, data) = split_channel(payload)?;
                ToWorker::ChannelInput(id, ch, data)
            }
            T_CHANNEL_END => {
                let (ch, flag) = split_channel(payload)?;
                ToWorker::ChannelEnd(id, ch, flag.first() == Some(&1))
            }
            T_CHANNEL_CREDIT => {
                let (ch, n) = split_channel(payload)?;
                ToWorker::ChannelCredit(id, ch, u64_payload(&n)?)
            }
            T_ONION_REPLY => {
                let (request, result) = split_channel(payload)?;
                ToWorker::OnionReply(id, request, from_json(&result)?)
            }
            other => return Err(IpcError(format!("unknown server message type {other}"))),
        }))
    }
}

impl FromWorker {
    /// Decode one message from the front of `buf`, if complete.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, IpcError> {
        let Some((kind, id, payload)) = split_frame(buf)? else {
            return Ok(None);
        };
        Ok(Some(match kind {
            T_READY => FromWorker::Ready {
                channel_key: match payload.len() {
                    0 => None,
                    _ => Some(
                        payload[..]
                            .try_into()
                            .map_err(|_| IpcError("channel key of wrong size".into()))?,
                    ),
                },
            },
            T_OUTPUT => FromWorker::Output(id, payload),
            T_CONSUMED => FromWorker::InputConsumed(id, u64_payload(&payload)?),
            T_FINISHED => FromWorker::Finished(id, from_json(&payload)?),
            T_MESSAGE => FromWorker::MessageStart(id, u64_payload(&payload)?),
            T_CHANNEL_OPENED => {
                let (ch, flag) = split_channel(payload)?;
                FromWorker::ChannelOpened(id, ch, flag.first() == Some(&1))
            }
            T_CHANNEL_OUTPUT => {
                let (ch, data) = split_channel(payload)?;
                FromWorker::ChannelOutput(id, ch, data)
            }
            T_CHANNEL_CONSUMED => {
                let (ch, n) = split_channel(payload)?;
                FromWorker::ChannelConsumed(id, ch, u64_payload(&n)?)
            }
            T_CHANNEL_CLOSED => FromWorker::ChannelClosed(id, split_channel(payload)?.0),
            T_ONION_REQUEST => {
                let (request, details) = split_channel(payload)?;
                FromWorker::OnionRequest(id, request, from_json(&details)?)
            }
            other => return Err(IpcError(format!("unknown worker message type {other}"))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_in_both_directions_round_trip() {
        let mut buf = BytesMut::new();
        buf.put_slice(&ToWorker::Credit(7, 1 << 40).encode());
        buf.put_slice(&ToWorker::Input(7, Bytes::from_static(b"hi")).encode());
        assert!(
            matches!(ToWorker::decode(&mut buf).unwrap(), Some(ToWorker::Credit(7, n)) if n == 1 << 40)
        );
        assert!(
            matches!(ToWorker::decode(&mut buf).unwrap(), Some(ToWorker::Input(7, d)) if d == "hi")
        );
        assert!(ToWorker::decode(&mut buf).unwrap().is_none());

        let (head, payload) =
            FromWorker::Finished(3, InstanceOutcome::Exception("tb".into())).encode_parts();
        let mut buf = BytesMut::new();
        buf.put_slice(&head);
        buf.put_slice(&payload);
        let decoded = FromWorker::decode(&mut buf).unwrap();
        assert!(
            matches!(decoded, Some(FromWorker::Finished(3, InstanceOutcome::Exception(ref t))) if t == "tb")
        );
    }

    #[test]
    fn channel_messages_carry_their_channel_id() {
        let mut buf = BytesMut::new();
        buf.put_slice(&ToWorker::ChannelInput(4, 9, Bytes::from_static(b"x")).encode());
        buf.put_slice(&ToWorker::ChannelEnd(4, 9, true).encode());
        assert!(matches!(
            ToWorker::decode(&mut buf).unwrap(),
            Some(ToWorker::ChannelInput(4, 9, ref d)) if d == "x"
        ));
        assert!(matches!(
            ToWorker::decode(&mut buf).unwrap(),
            Some(ToWorker::ChannelEnd(4, 9, true))
        ));
        let (head, payload) = FromWorker::ChannelConsumed(2, 7, 1000).encode_parts();
        let mut buf = BytesMut::new();
        buf.put_slice(&head);
        buf.put_slice(&payload);
        assert!(matches!(
            FromWorker::decode(&mut buf).unwrap(),
            Some(FromWorker::ChannelConsumed(2, 7, 1000))
        ));
    }

    #[test]
    fn absurd_lengths_are_errors_not_allocations() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        assert!(ToWorker::decode(&mut buf).is_err());
    }
}
