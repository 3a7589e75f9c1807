//! Frames: `u32` big-endian length, `u8` type, payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error_code::ErrorCode;
use crate::token::{FunctionId, InvokeToken, ServiceToken, SessionToken, TOKEN_BYTES};
use crate::{
    ATTEST_NONCE_LEN, HELLO_MAGIC, MAX_DATA_LEN, MAX_EVIDENCE_LEN, MAX_FRAME_LEN, MAX_NAME_LEN,
};

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {declared} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Declared length.
        declared: u32,
        /// The maximum.
        max: u32,
    },
    /// A zero-length frame (no type byte).
    #[error("empty frame (length 0)")]
    EmptyFrame,
    /// The type byte is not a known frame type.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The payload does not match its type's layout.
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        /// Frame type name.
        frame: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl ProtocolError {
    /// The error code to send back for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

macro_rules! frame_types {
    ($( $(#[$doc:meta])* $name:ident = $value:literal; )*) => {
        /// The type byte of a frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum FrameType { $( $(#[$doc])* $name = $value, )* }

        impl FrameType {
            fn from_u8(value: u8) -> Option<Self> {
                match value { $( $value => Some(FrameType::$name), )* _ => None }
            }

            /// The frame type's name as in `docs/protocol.md`.
            pub fn name(self) -> &'static str {
                match self { $( FrameType::$name => stringify!($name), )* }
            }

            /// Every frame type, for documentation and tests.
            pub const ALL: &'static [FrameType] = &[ $( FrameType::$name, )* ];
        }
    };
}

frame_types! {
    /// Client → box: protocol versions the client speaks.
    Hello = 0x01;
    /// Box → client: the version chosen.
    Welcome = 0x02;
    /// Client → box: store a function.
    Store = 0x10;
    /// Box → client: the stored function's id and invoke token.
    Stored = 0x11;
    /// Client → box: start a session.
    Invoke = 0x12;
    /// Box → client: the new session's token.
    Invoked = 0x13;
    /// Client → box: attach to a session's I/O.
    Attach = 0x14;
    /// Box → client: attached; output resumes at the given offset.
    Attached = 0x15;
    /// Client → box: stop a session's instance.
    Kill = 0x16;
    /// Box → client: the session was killed.
    Killed = 0x17;
    /// Client → box: ask for the box's status.
    StatusRequest = 0x18;
    /// Box → client: status as a JSON object.
    Status = 0x19;
    /// Client → box: open a channel to a running instance's service.
    Connect = 0x1a;
    /// Box → client: the instance accepted the channel.
    Connected = 0x1b;
    /// Client → box: give a stored function a new lifetime.
    Renew = 0x1c;
    /// Box → client: the lifetime granted.
    Renewed = 0x1d;
    /// Client → box: delete a stored function.
    Delete = 0x1e;
    /// Box → client: the function is deleted.
    Deleted = 0x1f;
    /// Box → client: function output bytes.
    Output = 0x20;
    /// Client → box: one input message for the function.
    Input = 0x21;
    /// Client → box: no more input (the function's `recv` returns `b""`).
    InputEnd = 0x22;
    /// Client → box: output up to this offset has been consumed.
    Ack = 0x23;
    /// Client → box: leave the session running and end the attachment.
    Detach = 0x24;
    /// Box → client: the function returned and all its output was sent.
    End = 0x25;
    /// Box → client: the detach is recorded; a new attach resumes at `offset`.
    Detached = 0x26;
    /// Client → box: prove what you run, bound to this nonce.
    Attest = 0x27;
    /// Box → client: attestation evidence (kind `none` when there is no TEE).
    Attested = 0x28;
    /// Either direction, while attached and only on a connection that
    /// negotiated [`crate::PADDING_VERSION`]: bytes the receiver discards.
    Padding = 0x29;
    /// Client → box: store a function whose file name and source are
    /// sealed to the worker's channel key.
    SealedStore = 0x2a;
    /// Client → box: start a session with its call sealed to the worker's
    /// channel key.
    SealedInvoke = 0x2b;
    /// Client → box: run a function once without storing it; answered with
    /// `Invoked`, after which the connection is attached to the session.
    Run = 0x30;
    /// Either direction: a typed error.
    Error = 0x7f;
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Opens every connection (client → box).
    Hello {
        /// Lowest version the client speaks.
        min_version: u16,
        /// Highest version the client speaks.
        max_version: u16,
    },
    /// Reply to `Hello`.
    Welcome {
        /// The version both sides now speak.
        version: u16,
        /// Box software name and version, e.g. `bento 0.1.0`.
        software: String,
    },
    /// Store a function.
    Store {
        /// File name shown in tracebacks, e.g. `hello.py`.
        filename: String,
        /// Python source (UTF-8).
        source: String,
        /// Manifest (TOML); empty for the default.
        manifest: String,
        /// How long the box is to keep the function, seconds; `Some(0)`
        /// for the box's default. `None` (absent on the wire, as from
        /// clients that predate lifetimes) also means the default, and the
        /// reply then carries no lifetime.
        lifetime_s: Option<u64>,
    },
    /// Reply to `Store`.
    Stored {
        /// Public content hash of the function.
        function_id: FunctionId,
        /// Secret capability to invoke it.
        invoke_token: InvokeToken,
        /// The lifetime granted, seconds from now; present exactly when the
        /// `Store` carried one.
        lifetime_s: Option<u64>,
    },
    /// Give a stored function a new lifetime, counted from now.
    Renew {
        /// The function's invoke token (whoever may invoke may renew).
        invoke_token: InvokeToken,
        /// Seconds; 0 for the box's default.
        lifetime_s: u64,
    },
    /// Reply to `Renew`.
    Renewed {
        /// The lifetime granted, seconds from now.
        lifetime_s: u64,
    },
    /// Delete a stored function (this store's record only).
    Delete {
        /// The function's invoke token (whoever may invoke may delete).
        invoke_token: InvokeToken,
    },
    /// Reply to `Delete`.
    Deleted,
    /// Start a fresh instance.
    Invoke {
        /// Capability to invoke.
        invoke_token: InvokeToken,
        /// Name of the function to call.
        entry: String,
        /// Arguments as a JSON array.
        args_json: String,
        /// The traffic-analysis defense the box is to shape the session's
        /// output with (a name from `docs/policy.md#shaping`); `None`
        /// (absent on the wire, as from older clients) for none. Only on a
        /// connection that negotiated [`crate::PADDING_VERSION`].
        defense: Option<String>,
    },
    /// Reply to `Invoke`.
    Invoked {
        /// Secret capability to attach to and kill the session.
        session_token: SessionToken,
        /// Secret capability to open channels to the instance's service,
        /// when its manifest declares the `service` capability.
        service_token: Option<ServiceToken>,
    },
    /// Attach to a session's I/O stream.
    Attach {
        /// The session.
        session_token: SessionToken,
        /// Output offset to resume from; `None` for the box's record of
        /// what the last client acknowledged.
        resume_from: Option<u64>,
    },
    /// Reply to `Attach`: the next `Output` byte has this stream offset.
    Attached {
        /// Offset of the next output byte.
        offset: u64,
    },
    /// Stop a session's instance.
    Kill {
        /// The session.
        session_token: SessionToken,
    },
    /// Reply to `Kill`.
    Killed,
    /// Open a channel to an instance's service (`api.accept()`); after
    /// `Connected`, `Input`/`InputEnd` go to the channel and `Output`,
    /// `End` (the function closed it) or `Error` come back. No acks: a
    /// channel is live, not resumable.
    Connect {
        /// The service.
        service_token: ServiceToken,
    },
    /// Reply to `Connect`.
    Connected,
    /// Ask for status.
    StatusRequest,
    /// Reply to `StatusRequest`: a JSON object.
    Status {
        /// JSON text.
        json: String,
    },
    /// Function output.
    Output {
        /// Bytes, at most [`MAX_DATA_LEN`].
        data: Bytes,
    },
    /// One input message.
    Input {
        /// Bytes, at most [`MAX_DATA_LEN`].
        data: Bytes,
    },
    /// End of input.
    InputEnd,
    /// Output consumed up to `offset`.
    Ack {
        /// Stream offset just past the last byte consumed.
        offset: u64,
    },
    /// Detach, leaving the session running.
    Detach,
    /// Reply to `Detach`, after every acknowledgement sent before it was
    /// recorded: a new attachment resumes at `offset`.
    Detached {
        /// The acknowledged offset.
        offset: u64,
    },
    /// The function returned; all output was sent.
    End,
    /// Ask the box for attestation evidence.
    Attest {
        /// Fresh random bytes; the evidence must be bound to them.
        nonce: [u8; ATTEST_NONCE_LEN],
    },
    /// Reply to `Attest`: evidence in the layout of `docs/attestation.md`
    /// (opaque to this crate; `bento-attest` parses and verifies it).
    Attested {
        /// At most [`MAX_EVIDENCE_LEN`] bytes.
        evidence: Bytes,
    },
    /// Traffic-analysis padding: the receiver discards it without effect
    /// (it is not output or input, moves no offset and needs no ack).
    Padding {
        /// Filler bytes, at most [`MAX_DATA_LEN`]; their value means nothing.
        data: Bytes,
    },
    /// Store a function sealed to the worker's channel key
    /// (docs/attestation.md, "The sealed channel"); answered by `Stored`.
    SealedStore {
        /// The manifest, in the clear: the box checks it against its policy.
        manifest: String,
        /// Seconds; 0 for the box's default.
        lifetime_s: u64,
        /// The sealed file name and source (rest of the frame).
        envelope: Bytes,
    },
    /// Start a session of a sealed function with a sealed call; answered
    /// by `Invoked`.
    SealedInvoke {
        /// Capability to invoke.
        invoke_token: InvokeToken,
        /// The sealed entry and arguments (rest of the frame).
        envelope: Bytes,
    },
    /// Run a function once, without storing it: the checks of `Store`
    /// (but not its trial compile) and of `Invoke`, then the answer is
    /// `Invoked` and the connection continues as an `Attach` at offset 0
    /// (`Attached`, output, …): one round trip instead of three.
    Run {
        /// File name shown in tracebacks.
        filename: String,
        /// Python source.
        source: String,
        /// Manifest (TOML); empty for the minimum grant.
        manifest: String,
        /// Name of the function to call.
        entry: String,
        /// Arguments as a JSON array.
        args_json: String,
    },
    /// A typed error.
    Error {
        /// The code.
        code: ErrorCode,
        /// Human-readable explanation (for `FunctionException`, the traceback).
        message: String,
    },
}

impl Frame {
    /// This frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Welcome { .. } => FrameType::Welcome,
            Frame::Store { .. } => FrameType::Store,
            Frame::Stored { .. } => FrameType::Stored,
            Frame::Invoke { .. } => FrameType::Invoke,
            Frame::Invoked { .. } => FrameType::Invoked,
            Frame::Attach { .. } => FrameType::Attach,
            Frame::Attached { .. } => FrameType::Attached,
            Frame::Kill { .. } => FrameType::Kill,
            Frame::Killed => FrameType::Killed,
            Frame::Connect { .. } => FrameType::Connect,
            Frame::Connected => FrameType::Connected,
            Frame::Renew { .. } => FrameType::Renew,
            Frame::Renewed { .. } => FrameType::Renewed,
            Frame::Delete { .. } => FrameType::Delete,
            Frame::Deleted => FrameType::Deleted,
            Frame::StatusRequest => FrameType::StatusRequest,
            Frame::Status { .. } => FrameType::Status,
            Frame::Output { .. } => FrameType::Output,
            Frame::Input { .. } => FrameType::Input,
            Frame::InputEnd => FrameType::InputEnd,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Detach => FrameType::Detach,
            Frame::Detached { .. } => FrameType::Detached,
            Frame::End => FrameType::End,
            Frame::Attest { .. } => FrameType::Attest,
            Frame::Attested { .. } => FrameType::Attested,
            Frame::Padding { .. } => FrameType::Padding,
            Frame::SealedStore { .. } => FrameType::SealedStore,
            Frame::SealedInvoke { .. } => FrameType::SealedInvoke,
            Frame::Run { .. } => FrameType::Run,
            Frame::Error { .. } => FrameType::Error,
        }
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Frame::Error {
            code,
            message: message.into(),
        }
    }

    /// Append the encoded frame to `out`.
    ///
    /// Encoding never fails; a frame whose payload exceeds the limits is a
    /// bug in the caller and is caught by the peer's decoder.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0); // length, patched below
        out.put_u8(self.frame_type() as u8);
        match self {
            Frame::Hello {
                min_version,
                max_version,
            } => {
                out.put_slice(HELLO_MAGIC);
                out.put_u16(*min_version);
                out.put_u16(*max_version);
            }
            Frame::Welcome { version, software } => {
                out.put_u16(*version);
                put_str(out, software);
            }
            Frame::Store {
                filename,
                source,
                manifest,
                lifetime_s,
            } => {
                put_str(out, filename);
                put_str(out, source);
                put_str(out, manifest);
                if let Some(lifetime_s) = lifetime_s {
                    out.put_u64(*lifetime_s);
                }
            }
            Frame::Stored {
                function_id,
                invoke_token,
                lifetime_s,
            } => {
                out.put_slice(&function_id.0);
                out.put_slice(invoke_token.as_bytes());
                if let Some(lifetime_s) = lifetime_s {
                    out.put_u64(*lifetime_s);
                }
            }
            Frame::Renew {
                invoke_token,
                lifetime_s,
            } => {
                out.put_slice(invoke_token.as_bytes());
                out.put_u64(*lifetime_s);
            }
            Frame::Renewed { lifetime_s } => out.put_u64(*lifetime_s),
            Frame::Delete { invoke_token } => out.put_slice(invoke_token.as_bytes()),
            Frame::Invoke {
                invoke_token,
                entry,
                args_json,
                defense,
            } => {
                out.put_slice(invoke_token.as_bytes());
                put_str(out, entry);
                put_str(out, args_json);
                if let Some(defense) = defense {
                    put_str(out, defense);
                }
            }
            Frame::Invoked {
                session_token,
                service_token,
            } => {
                out.put_slice(session_token.as_bytes());
                if let Some(service_token) = service_token {
                    out.put_slice(service_token.as_bytes());
                }
            }
            Frame::Kill { session_token } => {
                out.put_slice(session_token.as_bytes());
            }
            Frame::Connect { service_token } => out.put_slice(service_token.as_bytes()),
            Frame::Attach {
                session_token,
                resume_from,
            } => {
                out.put_slice(session_token.as_bytes());
                match resume_from {
                    Some(offset) => {
                        out.put_u8(1);
                        out.put_u64(*offset);
                    }
                    None => {
                        out.put_u8(0);
                        out.put_u64(0);
                    }
                }
            }
            Frame::Attached { offset } | Frame::Ack { offset } | Frame::Detached { offset } => {
                out.put_u64(*offset)
            }
            Frame::Status { json } => put_str(out, json),
            Frame::Output { data } | Frame::Input { data } | Frame::Padding { data } => {
                out.put_slice(data)
            }
            Frame::Attest { nonce } => out.put_slice(nonce),
            Frame::Attested { evidence } => out.put_slice(evidence),
            Frame::SealedStore {
                manifest,
                lifetime_s,
                envelope,
            } => {
                put_str(out, manifest);
                out.put_u64(*lifetime_s);
                out.put_slice(envelope);
            }
            Frame::SealedInvoke {
                invoke_token,
                envelope,
            } => {
                out.put_slice(invoke_token.as_bytes());
                out.put_slice(envelope);
            }
            Frame::Run {
                filename,
                source,
                manifest,
                entry,
                args_json,
            } => {
                put_str(out, filename);
                put_str(out, source);
                put_str(out, manifest);
                put_str(out, entry);
                put_str(out, args_json);
            }
            Frame::Error { code, message } => {
                out.put_u16(code.to_u16());
                put_str(out, message);
            }
            Frame::Killed
            | Frame::Deleted
            | Frame::Connected
            | Frame::StatusRequest
            | Frame::InputEnd
            | Frame::Detach
            | Frame::End => {}
        }
        let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Encode into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// The 5-byte header (length and type) of an `Output` or `Input` frame
/// carrying `data_len` bytes, so large payloads can be written without
/// copying them into a frame buffer.
pub fn encode_data_header(frame_type: FrameType, data_len: usize) -> [u8; crate::FRAME_HEADER_LEN] {
    let len = u32::try_from(data_len + 1).unwrap_or(u32::MAX);
    let mut header = [0u8; crate::FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&len.to_be_bytes());
    header[4] = frame_type as u8;
    header
}

fn put_str(out: &mut BytesMut, text: &str) {
    out.put_u32(u32::try_from(text.len()).unwrap_or(u32::MAX));
    out.put_slice(text.as_bytes());
}

/// Make room in a read buffer before reading more bytes into it.
///
/// Reserving only what the next frame needs would reallocate (and copy the
/// partial frame) for almost every large frame, because decoded frames keep
/// sharing the old allocation. Reserving several frames' worth at a time
/// keeps that copy rare.
pub fn reserve_for_read(buf: &mut BytesMut) {
    const SPARE: usize = MAX_DATA_LEN + 64 * 1024;
    if buf.capacity() - buf.len() < SPARE {
        buf.reserve(4 * MAX_DATA_LEN);
    }
}

/// What [`reserve_for_next_frame`] keeps free before a frame's length is
/// known, or when the rest of the frame is smaller: room for a read of
/// several small frames at once.
const SMALL_READ: usize = 16 * 1024;

/// Make room in a box's read buffer for the frame at its front: the rest
/// of that frame once its 4-byte length prefix has arrived (at most
/// [`MAX_FRAME_LEN`]; the decoder refuses a longer one), else
/// [`SMALL_READ`].
///
/// A box holds thousands of connections that mostly send small frames.
/// Reserving for the frame that is arriving, not for a burst of large ones
/// as [`reserve_for_read`] does for bulk output, keeps an idle or
/// trickling connection's buffer at kilobytes, and makes every large
/// buffer as short-lived as its frame (long-lived large buffers left the
/// allocator's arenas fragmented: the box's resident memory crept up over
/// a soak while the heap in use stayed flat).
pub fn reserve_for_next_frame(buf: &mut BytesMut) {
    let rest_of_frame = match buf.get(..4) {
        Some(&[a, b, c, d]) => {
            let declared = u32::from_be_bytes([a, b, c, d]).min(MAX_FRAME_LEN) as usize;
            (4 + declared).saturating_sub(buf.len())
        }
        _ => 0,
    };
    let wanted = rest_of_frame.max(SMALL_READ);
    if buf.capacity() - buf.len() < wanted {
        buf.reserve(wanted);
    }
}

/// Incremental decoder: feed it a buffer that grows as bytes arrive.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    _private: (),
}

impl FrameDecoder {
    /// Decode one frame from the front of `buf`, removing its bytes.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame. A
    /// length over [`MAX_FRAME_LEN`] is an error as soon as the 4-byte
    /// prefix arrives: the decoder never waits for (or buffers) the body of
    /// an oversized frame.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len > MAX_FRAME_LEN {
            return Err(ProtocolError::FrameTooLarge {
                declared: len,
                max: MAX_FRAME_LEN,
            });
        }
        if len == 0 {
            return Err(ProtocolError::EmptyFrame);
        }
        let total = 4 + len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len as usize).freeze();
        let type_byte = body.get_u8();
        let frame_type =
            FrameType::from_u8(type_byte).ok_or(ProtocolError::UnknownType(type_byte))?;
        let mut reader = Reader {
            frame: frame_type.name(),
            body,
        };
        let frame = reader.frame(frame_type)?;
        reader.finish()?;
        Ok(Some(frame))
    }
}

struct Reader {
    frame: &'static str,
    body: Bytes,
}

impl Reader {
    fn malformed(&self, reason: impl Into<String>) -> ProtocolError {
        ProtocolError::Malformed {
            frame: self.frame,
            reason: reason.into(),
        }
    }

    fn need(&self, n: usize, what: &str) -> Result<(), ProtocolError> {
        if self.body.remaining() < n {
            return Err(self.malformed(format!("truncated {what}")));
        }
        Ok(())
    }

    fn u8(&mut self, what: &str) -> Result<u8, ProtocolError> {
        self.need(1, what)?;
        Ok(self.body.get_u8())
    }

    fn u16(&mut self, what: &str) -> Result<u16, ProtocolError> {
        self.need(2, what)?;
        Ok(self.body.get_u16())
    }

    fn u64(&mut self, what: &str) -> Result<u64, ProtocolError> {
        self.need(8, what)?;
        Ok(self.body.get_u64())
    }

    /// A trailing optional `u64`: absent when the frame ends here.
    fn optional_u64(&mut self, what: &str) -> Result<Option<u64>, ProtocolError> {
        if self.body.has_remaining() {
            self.u64(what).map(Some)
        } else {
            Ok(None)
        }
    }

    fn token(&mut self, what: &str) -> Result<[u8; TOKEN_BYTES], ProtocolError> {
        self.need(TOKEN_BYTES, what)?;
        let mut out = [0u8; TOKEN_BYTES];
        self.body.copy_to_slice(&mut out);
        Ok(out)
    }

    fn string(&mut self, what: &str, max: usize) -> Result<String, ProtocolError> {
        self.need(4, what)?;
        let len = self.body.get_u32() as usize;
        if len > max {
            return Err(self.malformed(format!("{what} of {len} bytes exceeds {max}")));
        }
        self.need(len, what)?;
        let raw = self.body.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| self.malformed(format!("{what} is not UTF-8")))
    }

    fn data(&mut self) -> Result<Bytes, ProtocolError> {
        if self.body.len() > MAX_DATA_LEN {
            return Err(self.malformed(format!(
                "{} data bytes exceed the maximum of {MAX_DATA_LEN}",
                self.body.len()
            )));
        }
        Ok(std::mem::take(&mut self.body))
    }

    fn finish(&self) -> Result<(), ProtocolError> {
        if self.body.has_remaining() {
            return Err(self.malformed(format!("{} trailing bytes", self.body.remaining())));
        }
        Ok(())
    }

    fn frame(&mut self, frame_type: FrameType) -> Result<Frame, ProtocolError> {
        let big = MAX_FRAME_LEN as usize;
        Ok(match frame_type {
            FrameType::Hello => {
                self.need(HELLO_MAGIC.len(), "magic")?;
                if &self.body[..HELLO_MAGIC.len()] != HELLO_MAGIC {
                    return Err(self.malformed("not a Bento client (bad magic)"));
                }
                self.body.advance(HELLO_MAGIC.len());
                Frame::Hello {
                    min_version: self.u16("min_version")?,
                    max_version: self.u16("max_version")?,
                }
            }
            FrameType::Welcome => Frame::Welcome {
                version: self.u16("version")?,
                software: self.string("software", MAX_NAME_LEN)?,
            },
            FrameType::Store => Frame::Store {
                filename: self.string("filename", MAX_NAME_LEN)?,
                source: self.string("source", big)?,
                manifest: self.string("manifest", big)?,
                lifetime_s: self.optional_u64("lifetime_s")?,
            },
            FrameType::Stored => Frame::Stored {
                function_id: FunctionId(self.token("function_id")?),
                invoke_token: InvokeToken::from_bytes(self.token("invoke_token")?),
                lifetime_s: self.optional_u64("lifetime_s")?,
            },
            FrameType::Renew => Frame::Renew {
                invoke_token: InvokeToken::from_bytes(self.token("invoke_token")?),
                lifetime_s: self.u64("lifetime_s")?,
            },
            FrameType::Renewed => Frame::Renewed {
                lifetime_s: self.u64("lifetime_s")?,
            },
            FrameType::Delete => Frame::Delete {
                invoke_token: InvokeToken::from_bytes(self.token("invoke_token")?),
            },
            FrameType::Deleted => Frame::Deleted,
            FrameType::Invoke => Frame::Invoke {
                invoke_token: InvokeToken::from_bytes(self.token("invoke_token")?),
                entry: self.string("entry", MAX_NAME_LEN)?,
                args_json: self.string("args_json", big)?,
                defense: if self.body.has_remaining() {
                    Some(self.string("defense", MAX_NAME_LEN)?)
                } else {
                    None
                },
            },
            FrameType::Invoked => Frame::Invoked {
                session_token: SessionToken::from_bytes(self.token("session_token")?),
                service_token: if self.body.has_remaining() {
                    Some(ServiceToken::from_bytes(self.token("service_token")?))
                } else {
                    None
                },
            },
            FrameType::Connect => Frame::Connect {
                service_token: ServiceToken::from_bytes(self.token("service_token")?),
            },
            FrameType::Connected => Frame::Connected,
            FrameType::Attach => {
                let session_token = SessionToken::from_bytes(self.token("session_token")?);
                let flag = self.u8("resume flag")?;
                let offset = self.u64("resume offset")?;
                let resume_from = match flag {
                    0 => None,
                    1 => Some(offset),
                    other => {
                        return Err(self.malformed(format!("resume flag {other} is not 0 or 1")));
                    }
                };
                Frame::Attach {
                    session_token,
                    resume_from,
                }
            }
            FrameType::Attached => Frame::Attached {
                offset: self.u64("offset")?,
            },
            FrameType::Kill => Frame::Kill {
                session_token: SessionToken::from_bytes(self.token("session_token")?),
            },
            FrameType::Killed => Frame::Killed,
            FrameType::StatusRequest => Frame::StatusRequest,
            FrameType::Status => Frame::Status {
                json: self.string("json", big)?,
            },
            FrameType::Output => Frame::Output { data: self.data()? },
            FrameType::Input => Frame::Input { data: self.data()? },
            FrameType::Padding => Frame::Padding { data: self.data()? },
            FrameType::InputEnd => Frame::InputEnd,
            FrameType::Ack => Frame::Ack {
                offset: self.u64("offset")?,
            },
            FrameType::Detach => Frame::Detach,
            FrameType::Detached => Frame::Detached {
                offset: self.u64("offset")?,
            },
            FrameType::End => Frame::End,
            FrameType::Run => Frame::Run {
                filename: self.string("filename", MAX_NAME_LEN)?,
                source: self.string("source", big)?,
                manifest: self.string("manifest", big)?,
                entry: self.string("entry", MAX_NAME_LEN)?,
                args_json: self.string("args_json", big)?,
            },
            FrameType::Attest => {
                self.need(ATTEST_NONCE_LEN, "nonce")?;
                let mut nonce = [0u8; ATTEST_NONCE_LEN];
                self.body.copy_to_slice(&mut nonce);
                Frame::Attest { nonce }
            }
            FrameType::Attested => {
                if self.body.len() > MAX_EVIDENCE_LEN {
                    return Err(self.malformed(format!(
                        "{} evidence bytes exceed the maximum of {MAX_EVIDENCE_LEN}",
                        self.body.len()
                    )));
                }
                Frame::Attested {
                    evidence: std::mem::take(&mut self.body),
                }
            }
            FrameType::SealedStore => Frame::SealedStore {
                manifest: self.string("manifest", big)?,
                lifetime_s: self.u64("lifetime_s")?,
                envelope: std::mem::take(&mut self.body),
            },
            FrameType::SealedInvoke => Frame::SealedInvoke {
                invoke_token: InvokeToken::from_bytes(self.token("invoke_token")?),
                envelope: std::mem::take(&mut self.body),
            },
            FrameType::Error => Frame::Error {
                code: ErrorCode::from_u16(self.u16("code")?),
                message: self.string("message", big)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FRAME_HEADER_LEN, PROTOCOL_VERSION};

    #[test]
    fn a_box_read_buffer_makes_room_for_the_arriving_frame_and_no_more() {
        // Nothing yet, or only part of a length prefix: room for small frames.
        for start in [&b""[..], &[0, 0]] {
            let mut buf = BytesMut::from(start);
            reserve_for_next_frame(&mut buf);
            let spare = buf.capacity() - buf.len();
            assert!((SMALL_READ..MAX_DATA_LEN).contains(&spare), "{spare}");
        }
        // A 1 MiB frame announced, 100 bytes of it here: room for the rest.
        let mut buf = BytesMut::new();
        buf.put_u32(1024 * 1024);
        buf.put_slice(&[0; 96]);
        reserve_for_next_frame(&mut buf);
        let spare = buf.capacity() - buf.len();
        assert!(spare >= 1024 * 1024 + 4 - 100, "{spare}");
        assert!(spare < 2 * 1024 * 1024, "{spare}");
        // A length beyond the limit (which the decoder refuses) reserves at
        // most the limit.
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        reserve_for_next_frame(&mut buf);
        let spare = buf.capacity() - buf.len();
        assert!(spare >= MAX_FRAME_LEN as usize, "{spare}");
        assert!(spare < 2 * MAX_FRAME_LEN as usize, "{spare}");
        // Enough room already: nothing changes.
        let mut buf = BytesMut::with_capacity(64 * 1024);
        reserve_for_next_frame(&mut buf);
        assert_eq!(buf.capacity(), 64 * 1024);
    }

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let decoded = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(decoded, frame);
        assert!(buf.is_empty());
    }

    fn token() -> [u8; TOKEN_BYTES] {
        let mut t = [0u8; TOKEN_BYTES];
        for (i, b) in t.iter_mut().enumerate() {
            *b = i as u8;
        }
        t
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = vec![
            Frame::Hello {
                min_version: 1,
                max_version: PROTOCOL_VERSION,
            },
            Frame::Welcome {
                version: 1,
                software: "bento 0.1.0".into(),
            },
            Frame::Store {
                filename: "a.py".into(),
                source: "def main(): pass".into(),
                manifest: String::new(),
                lifetime_s: None,
            },
            Frame::Store {
                filename: "a.py".into(),
                source: "def main(): pass".into(),
                manifest: "version = 1".into(),
                lifetime_s: Some(604_800),
            },
            Frame::Stored {
                function_id: FunctionId(token()),
                invoke_token: InvokeToken::from_bytes(token()),
                lifetime_s: None,
            },
            Frame::Stored {
                function_id: FunctionId(token()),
                invoke_token: InvokeToken::from_bytes(token()),
                lifetime_s: Some(0),
            },
            Frame::Renew {
                invoke_token: InvokeToken::from_bytes(token()),
                lifetime_s: 3600,
            },
            Frame::Renewed { lifetime_s: 3600 },
            Frame::Delete {
                invoke_token: InvokeToken::from_bytes(token()),
            },
            Frame::Deleted,
            Frame::Invoke {
                invoke_token: InvokeToken::from_bytes(token()),
                entry: "main".into(),
                args_json: "[1]".into(),
                defense: None,
            },
            Frame::Invoke {
                invoke_token: InvokeToken::from_bytes(token()),
                entry: "main".into(),
                args_json: "[1]".into(),
                defense: Some("front".into()),
            },
            Frame::Padding {
                data: Bytes::from_static(&[0; 17]),
            },
            Frame::Invoked {
                session_token: SessionToken::from_bytes(token()),
                service_token: None,
            },
            Frame::Invoked {
                session_token: SessionToken::from_bytes(token()),
                service_token: Some(ServiceToken::from_bytes(token())),
            },
            Frame::Connect {
                service_token: ServiceToken::from_bytes(token()),
            },
            Frame::Connected,
            Frame::Attach {
                session_token: SessionToken::from_bytes(token()),
                resume_from: None,
            },
            Frame::Attach {
                session_token: SessionToken::from_bytes(token()),
                resume_from: Some(42),
            },
            Frame::Attached { offset: 7 },
            Frame::Kill {
                session_token: SessionToken::from_bytes(token()),
            },
            Frame::Killed,
            Frame::StatusRequest,
            Frame::Status { json: "{}".into() },
            Frame::Output {
                data: Bytes::from_static(b"out"),
            },
            Frame::Input {
                data: Bytes::from_static(b"in"),
            },
            Frame::InputEnd,
            Frame::Ack { offset: u64::MAX },
            Frame::Detach,
            Frame::Detached { offset: 9 },
            Frame::End,
            Frame::Attest {
                nonce: [7; ATTEST_NONCE_LEN],
            },
            Frame::Attested {
                evidence: Bytes::from_static(b"\x01\x00evidence"),
            },
            Frame::SealedStore {
                manifest: "[limits]".into(),
                lifetime_s: 60,
                envelope: Bytes::from_static(b"\x01sealed"),
            },
            Frame::SealedInvoke {
                invoke_token: InvokeToken::from_bytes(token()),
                envelope: Bytes::from_static(b"\x01sealed"),
            },
            Frame::Run {
                filename: "f.py".into(),
                source: "def main(x): api.send(x)".into(),
                manifest: String::new(),
                entry: "main".into(),
                args_json: "[\"hi\"]".into(),
            },
            Frame::error(ErrorCode::LimitMemory, "too big"),
        ];
        for frame in frames {
            round_trip(frame);
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = Frame::Status {
            json: "{\"a\":1}".into(),
        }
        .to_bytes();
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            buf.put_u8(*byte);
            let result = decoder.decode(&mut buf).unwrap();
            assert_eq!(result.is_some(), i == bytes.len() - 1);
        }
    }

    #[test]
    fn a_frame_declaring_four_gib_is_rejected_from_its_prefix_alone() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        // "GET " as a length is > 1 GiB.
        assert!(FrameDecoder::default().decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0x55, 0][..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Err(ProtocolError::UnknownType(0x55))
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0x01, b'X', b'Y'][..]);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_oversized_strings_are_malformed() {
        let mut bytes = BytesMut::from(&Frame::End.to_bytes()[..]);
        bytes[3] = 2;
        bytes.put_u8(9);
        assert!(FrameDecoder::default().decode(&mut bytes).is_err());

        let mut buf = BytesMut::new();
        buf.put_u32(1 + 4);
        buf.put_u8(FrameType::Status as u8);
        buf.put_u32(1_000_000);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn a_store_whose_lifetime_is_cut_short_is_malformed() {
        let mut bytes = BytesMut::from(
            &Frame::Store {
                filename: "a.py".into(),
                source: String::new(),
                manifest: String::new(),
                lifetime_s: Some(1),
            }
            .to_bytes()[..],
        );
        // Drop the last 3 bytes of the lifetime and fix the length prefix.
        bytes.truncate(bytes.len() - 3);
        let len = u32::try_from(bytes.len() - 4).unwrap();
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            FrameDecoder::default().decode(&mut bytes),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn data_frames_over_the_data_limit_are_rejected() {
        for frame_type in [FrameType::Input, FrameType::Output, FrameType::Padding] {
            let mut buf = BytesMut::new();
            buf.put_slice(&encode_data_header(frame_type, MAX_DATA_LEN + 1));
            buf.put_bytes(0, MAX_DATA_LEN + 1);
            assert!(FrameDecoder::default().decode(&mut buf).is_err());
        }
    }

    #[test]
    fn an_invoke_from_an_older_client_has_no_defense_and_encodes_as_before() {
        let old = Frame::Invoke {
            invoke_token: InvokeToken::from_bytes(token()),
            entry: "main".into(),
            args_json: "[]".into(),
            defense: None,
        }
        .to_bytes();
        // token, then two length-prefixed strings and nothing else.
        assert_eq!(old.len(), FRAME_HEADER_LEN + TOKEN_BYTES + 4 + 4 + 4 + 2);
    }

    #[test]
    fn a_defense_name_longer_than_a_name_is_malformed() {
        let mut buf = BytesMut::new();
        Frame::Invoke {
            invoke_token: InvokeToken::from_bytes(token()),
            entry: "main".into(),
            args_json: "[]".into(),
            defense: Some("x".repeat(MAX_NAME_LEN + 1)),
        }
        .encode(&mut buf);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(ProtocolError::Malformed {
                frame: "Invoke",
                ..
            })
        ));
    }

    #[test]
    fn an_attest_with_a_short_or_long_nonce_is_malformed() {
        for len in [0, ATTEST_NONCE_LEN - 1, ATTEST_NONCE_LEN + 1] {
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32 + 1);
            buf.put_u8(FrameType::Attest as u8);
            buf.put_bytes(1, len);
            assert!(
                matches!(
                    FrameDecoder::default().decode(&mut buf),
                    Err(ProtocolError::Malformed {
                        frame: "Attest",
                        ..
                    })
                ),
                "nonce of {len} bytes"
            );
        }
    }

    #[test]
    fn evidence_over_its_limit_is_rejected() {
        let mut buf = BytesMut::new();
        Frame::Attested {
            evidence: Bytes::from(vec![0u8; MAX_EVIDENCE_LEN + 1]),
        }
        .encode(&mut buf);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(ProtocolError::Malformed {
                frame: "Attested",
                ..
            })
        ));
        let mut buf = BytesMut::new();
        let at_limit = Frame::Attested {
            evidence: Bytes::from(vec![0u8; MAX_EVIDENCE_LEN]),
        };
        at_limit.encode(&mut buf);
        assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(Some(at_limit)));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        // A cheap deterministic fuzz: every frame type byte with every short
        // payload shape.
        let mut seed: u32 = 1;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = (seed % 40) as usize;
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32 + 1);
            buf.put_u8((seed >> 8) as u8);
            for i in 0..len {
                buf.put_u8((seed >> (i % 24)) as u8);
            }
            let _ = FrameDecoder::default().decode(&mut buf);
        }
    }
}
