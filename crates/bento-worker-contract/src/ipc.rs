//! The pipe protocol between the server and its worker processes.
//!
//! Both ends are this codebase, so the format is private and simple:
//! `u32` length (of what follows), `u8` type, `u64` instance id, payload.
//! Server → worker on the worker's stdin, worker → server on its stdout.

use bento_policy::{Grant, InstanceLimits, Limit};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::events::{ChannelEvent, InstanceEvent, SessionEvent};

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
    pub grant: Grant,
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
    /// An uncaught capability refusal by the box's rules; the traceback.
    PolicyRefused(String),
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
    /// Something the instance's session tells it.
    Session(InstanceId, SessionEvent),
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
    /// The instance's thread began running (before the function's code):
    /// the pool's measure of how late the worker starts instances, for
    /// admission control. Not passed on to the session.
    Started(InstanceId),
    /// Something an instance tells its session.
    Instance(InstanceId, InstanceEvent),
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
const T_STARTED: u8 = 74;

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
            ToWorker::Session(id, event) => {
                let (kind, payload) = match event {
                    SessionEvent::Input(data) => (T_INPUT, data.clone()),
                    SessionEvent::InputEnd => (T_INPUT_END, Bytes::new()),
                    SessionEvent::Credit(n) => (T_CREDIT, Bytes::copy_from_slice(&n.to_be_bytes())),
                    SessionEvent::Kill => (T_KILL, Bytes::new()),
                    SessionEvent::ChannelOpen(ch) => (T_CHANNEL_OPEN, channel_payload(*ch, &[])),
                    SessionEvent::ChannelInput(ch, data) => {
                        (T_CHANNEL_INPUT, channel_payload(*ch, data))
                    }
                    SessionEvent::ChannelEnd(ch, gone) => {
                        (T_CHANNEL_END, channel_payload(*ch, &[u8::from(*gone)]))
                    }
                    SessionEvent::ChannelCredit(ch, n) => {
                        (T_CHANNEL_CREDIT, channel_payload(*ch, &n.to_be_bytes()))
                    }
                    SessionEvent::OnionReply(request, result) => {
                        (T_ONION_REPLY, channel_payload(*request, &json(result)))
                    }
                };
                (kind, *id, payload)
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
            FromWorker::Started(id) => (T_STARTED, *id, Bytes::new()),
            FromWorker::Instance(id, event) => {
                let (kind, payload) = match event {
                    InstanceEvent::Output(data) => (T_OUTPUT, data.clone()),
                    InstanceEvent::InputConsumed(n) => {
                        (T_CONSUMED, Bytes::copy_from_slice(&n.to_be_bytes()))
                    }
                    InstanceEvent::Finished(outcome) => (T_FINISHED, json(outcome).into()),
                    InstanceEvent::MessageStart(n) => {
                        (T_MESSAGE, Bytes::copy_from_slice(&n.to_be_bytes()))
                    }
                    InstanceEvent::Channel(ch, ChannelEvent::Opened(accepted)) => (
                        T_CHANNEL_OPENED,
                        channel_payload(*ch, &[u8::from(*accepted)]),
                    ),
                    InstanceEvent::Channel(ch, ChannelEvent::Output(data)) => {
                        (T_CHANNEL_OUTPUT, channel_payload(*ch, data))
                    }
                    InstanceEvent::Channel(ch, ChannelEvent::Consumed(n)) => {
                        (T_CHANNEL_CONSUMED, channel_payload(*ch, &n.to_be_bytes()))
                    }
                    InstanceEvent::Channel(ch, ChannelEvent::Closed) => {
                        (T_CHANNEL_CLOSED, channel_payload(*ch, &[]))
                    }
                    InstanceEvent::OnionRequest(request, details) => {
                        (T_ONION_REQUEST, channel_payload(*request, &json(details)))
                    }
                };
                (kind, *id, payload)
            }
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
        if kind == T_START {
            return Ok(Some(ToWorker::Start(id, Box::new(from_json(&payload)?))));
        }
        let event = match kind {
            T_INPUT => SessionEvent::Input(payload),
            T_INPUT_END => SessionEvent::InputEnd,
            T_CREDIT => SessionEvent::Credit(u64_payload(&payload)?),
            T_KILL => SessionEvent::Kill,
            T_CHANNEL_OPEN => SessionEvent::ChannelOpen(split_channel(payload)?.0),
            T_CHANNEL_INPUT => {
                let (ch, data) = split_channel(payload)?;
                SessionEvent::ChannelInput(ch, data)
            }
            T_CHANNEL_END => {
                let (ch, flag) = split_channel(payload)?;
                SessionEvent::ChannelEnd(ch, flag.first() == Some(&1))
            }
            T_CHANNEL_CREDIT => {
                let (ch, n) = split_channel(payload)?;
                SessionEvent::ChannelCredit(ch, u64_payload(&n)?)
            }
            T_ONION_REPLY => {
                let (request, result) = split_channel(payload)?;
                SessionEvent::OnionReply(request, from_json(&result)?)
            }
            other => return Err(IpcError(format!("unknown server message type {other}"))),
        };
        Ok(Some(ToWorker::Session(id, event)))
    }
}

impl FromWorker {
    /// Decode one message from the front of `buf`, if complete.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, IpcError> {
        let Some((kind, id, payload)) = split_frame(buf)? else {
            return Ok(None);
        };
        if kind == T_READY {
            return Ok(Some(FromWorker::Ready {
                channel_key: match payload.len() {
                    0 => None,
                    _ => Some(
                        payload[..]
                            .try_into()
                            .map_err(|_| IpcError("channel key of wrong size".into()))?,
                    ),
                },
            }));
        }
        if kind == T_STARTED {
            return Ok(Some(FromWorker::Started(id)));
        }
        let event = match kind {
            T_OUTPUT => InstanceEvent::Output(payload),
            T_CONSUMED => InstanceEvent::InputConsumed(u64_payload(&payload)?),
            T_FINISHED => InstanceEvent::Finished(from_json(&payload)?),
            T_MESSAGE => InstanceEvent::MessageStart(u64_payload(&payload)?),
            T_CHANNEL_OPENED => {
                let (ch, flag) = split_channel(payload)?;
                InstanceEvent::Channel(ch, ChannelEvent::Opened(flag.first() == Some(&1)))
            }
            T_CHANNEL_OUTPUT => {
                let (ch, data) = split_channel(payload)?;
                InstanceEvent::Channel(ch, ChannelEvent::Output(data))
            }
            T_CHANNEL_CONSUMED => {
                let (ch, n) = split_channel(payload)?;
                InstanceEvent::Channel(ch, ChannelEvent::Consumed(u64_payload(&n)?))
            }
            T_CHANNEL_CLOSED => {
                InstanceEvent::Channel(split_channel(payload)?.0, ChannelEvent::Closed)
            }
            T_ONION_REQUEST => {
                let (request, details) = split_channel(payload)?;
                InstanceEvent::OnionRequest(request, from_json(&details)?)
            }
            other => return Err(IpcError(format!("unknown worker message type {other}"))),
        };
        Ok(Some(FromWorker::Instance(id, event)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_in_both_directions_round_trip() {
        let mut buf = BytesMut::new();
        buf.put_slice(&ToWorker::Session(7, SessionEvent::Credit(1 << 40)).encode());
        buf.put_slice(
            &ToWorker::Session(7, SessionEvent::Input(Bytes::from_static(b"hi"))).encode(),
        );
        assert!(
            matches!(ToWorker::decode(&mut buf).unwrap(), Some(ToWorker::Session(7, SessionEvent::Credit(n))) if n == 1 << 40)
        );
        assert!(
            matches!(ToWorker::decode(&mut buf).unwrap(), Some(ToWorker::Session(7, SessionEvent::Input(d))) if d == "hi")
        );
        assert!(ToWorker::decode(&mut buf).unwrap().is_none());

        let (head, payload) = FromWorker::Instance(
            3,
            InstanceEvent::Finished(InstanceOutcome::Exception("tb".into())),
        )
        .encode_parts();
        let mut buf = BytesMut::new();
        buf.put_slice(&head);
        buf.put_slice(&payload);
        let decoded = FromWorker::decode(&mut buf).unwrap();
        assert!(
            matches!(decoded, Some(FromWorker::Instance(3, InstanceEvent::Finished(InstanceOutcome::Exception(ref t)))) if t == "tb")
        );
    }

    #[test]
    fn channel_messages_carry_their_channel_id() {
        let mut buf = BytesMut::new();
        buf.put_slice(
            &ToWorker::Session(4, SessionEvent::ChannelInput(9, Bytes::from_static(b"x"))).encode(),
        );
        buf.put_slice(&ToWorker::Session(4, SessionEvent::ChannelEnd(9, true)).encode());
        assert!(matches!(
            ToWorker::decode(&mut buf).unwrap(),
            Some(ToWorker::Session(4, SessionEvent::ChannelInput(9, ref d))) if d == "x"
        ));
        assert!(matches!(
            ToWorker::decode(&mut buf).unwrap(),
            Some(ToWorker::Session(4, SessionEvent::ChannelEnd(9, true)))
        ));
        let (head, payload) =
            FromWorker::Instance(2, InstanceEvent::Channel(7, ChannelEvent::Consumed(1000)))
                .encode_parts();
        let mut buf = BytesMut::new();
        buf.put_slice(&head);
        buf.put_slice(&payload);
        assert!(matches!(
            FromWorker::decode(&mut buf).unwrap(),
            Some(FromWorker::Instance(
                2,
                InstanceEvent::Channel(7, ChannelEvent::Consumed(1000))
            ))
        ));
    }

    #[test]
    fn every_event_in_both_directions_crosses_the_pipe_unchanged() {
        let session_events = [
            SessionEvent::Input(Bytes::from_static(b"in")),
            SessionEvent::InputEnd,
            SessionEvent::Credit(u64::MAX),
            SessionEvent::Kill,
            SessionEvent::ChannelOpen(3),
            SessionEvent::ChannelInput(3, Bytes::from_static(b"ch")),
            SessionEvent::ChannelEnd(3, false),
            SessionEvent::ChannelCredit(3, 4096),
            SessionEvent::OnionReply(5, Ok("abc.onion".into())),
            SessionEvent::OnionReply(6, Err("io: no tor".into())),
        ];
        for event in session_events {
            let mut buf = BytesMut::from(&ToWorker::Session(9, event.clone()).encode()[..]);
            match ToWorker::decode(&mut buf).unwrap() {
                Some(ToWorker::Session(9, decoded)) => assert_eq!(decoded, event),
                other => panic!("{event:?} came back as {other:?}"),
            }
            assert!(buf.is_empty());
        }
        let instance_events = [
            InstanceEvent::Output(Bytes::from_static(b"out")),
            InstanceEvent::InputConsumed(17),
            InstanceEvent::MessageStart(MAX_IPC_FRAME as u64),
            InstanceEvent::Channel(2, ChannelEvent::Opened(true)),
            InstanceEvent::Channel(2, ChannelEvent::Opened(false)),
            InstanceEvent::Channel(2, ChannelEvent::Output(Bytes::from_static(b"co"))),
            InstanceEvent::Channel(2, ChannelEvent::Consumed(8)),
            InstanceEvent::Channel(2, ChannelEvent::Closed),
            InstanceEvent::OnionRequest(
                1,
                OnionRequest {
                    port: 80,
                    key: Some("ED25519-V3:k".into()),
                },
            ),
            InstanceEvent::Finished(InstanceOutcome::LimitExceeded {
                limit: Limit::Cpu,
                detail: "10 s".into(),
            }),
        ];
        for event in instance_events {
            let (head, payload) = FromWorker::Instance(9, event.clone()).encode_parts();
            let mut buf = BytesMut::from(&head[..]);
            buf.put_slice(&payload);
            match FromWorker::decode(&mut buf).unwrap() {
                Some(FromWorker::Instance(9, decoded)) => assert_eq!(decoded, event),
                other => panic!("{event:?} came back as {other:?}"),
            }
            assert!(buf.is_empty());
        }
        let (head, payload) = FromWorker::Started(u64::MAX).encode_parts();
        let mut buf = BytesMut::from(&head[..]);
        buf.put_slice(&payload);
        assert!(matches!(
            FromWorker::decode(&mut buf).unwrap(),
            Some(FromWorker::Started(u64::MAX))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn absurd_lengths_are_errors_not_allocations() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        assert!(ToWorker::decode(&mut buf).is_err());
    }
}
