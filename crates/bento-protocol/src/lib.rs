//! The Bento client⇄box wire protocol, versions 1 and 2 (2 adds padding).
//!
//! Frames are length-prefixed and typed; this crate encodes and decodes them
//! over byte buffers and does no I/O, so it can be tested and fuzzed without
//! sockets. The normative description is `docs/protocol.md`; this crate is
//! its reference implementation.
//!
//! ```
//! use bento_protocol::{Frame, FrameDecoder, PROTOCOL_VERSION};
//! use bytes::BytesMut;
//!
//! let mut wire = BytesMut::new();
//! Frame::Hello { min_version: 1, max_version: PROTOCOL_VERSION }.encode(&mut wire);
//! let mut decoder = FrameDecoder::default();
//! let frame = decoder.decode(&mut wire).unwrap().unwrap();
//! assert!(matches!(frame, Frame::Hello { .. }));
//! ```

mod error_code;
mod frame;
#[cfg(test)]
mod python_constants;
mod token;

pub use error_code::{ErrorCode, ErrorKind};
pub use frame::{
    Frame, FrameDecoder, FrameType, ProtocolError, encode_data_header, reserve_for_next_frame,
    reserve_for_read,
};
pub use token::{
    FunctionId, InvokeToken, ServiceToken, SessionToken, TOKEN_BYTES, TokenParseError,
};

/// The newest protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this crate still speaks: version 1 clients
/// are served exactly as before.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The first version with `Padding` frames and the `Invoke` defense option.
/// A box sends `Padding` only on connections that negotiated at least this
/// version, so an older client never sees a frame it cannot decode.
pub const PADDING_VERSION: u16 = 2;

/// The version two peers speak: the newest both offer, or `None` when
/// their ranges do not meet.
pub fn negotiate_version(min_version: u16, max_version: u16) -> Option<u16> {
    let version = max_version.min(PROTOCOL_VERSION);
    (version >= min_version && version >= MIN_PROTOCOL_VERSION).then_some(version)
}

/// Magic bytes opening the `Hello` frame, so that a box can tell a Bento
/// client from stray traffic at once.
pub const HELLO_MAGIC: &[u8; 5] = b"BENTO";

/// Bytes of a frame's header: its length (u32, big-endian, counting the
/// type byte and payload) and its type (u8).
pub const FRAME_HEADER_LEN: usize = 5;

/// Largest frame (type byte + payload) either side may send.
pub const MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;

/// Largest payload of one `Input` or `Output` frame.
pub const MAX_DATA_LEN: usize = 1024 * 1024;

/// Bytes of the nonce in an `Attest` frame.
pub const ATTEST_NONCE_LEN: usize = 32;

/// Largest evidence in an `Attested` frame. A DCAP quote is ~5 KiB and its
/// collateral 15–25 KiB of JSON; 64 KiB leaves room for longer certificate
/// chains without letting a box make a client buffer megabytes.
pub const MAX_EVIDENCE_LEN: usize = 64 * 1024;

/// Largest string field other than a function's source (entry names,
/// messages, JSON arguments are bounded by the frame).
pub const MAX_NAME_LEN: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_one_client_gets_version_one_and_a_new_client_gets_padding() {
        assert_eq!(negotiate_version(1, 1), Some(1));
        assert_eq!(
            negotiate_version(1, PROTOCOL_VERSION),
            Some(PROTOCOL_VERSION)
        );
        assert_eq!(negotiate_version(1, 9), Some(PROTOCOL_VERSION));
        assert!(negotiate_version(1, 9).is_some_and(|v| v >= PADDING_VERSION));
        assert_eq!(negotiate_version(0, 0), None);
        assert_eq!(negotiate_version(3, 9), None);
        assert_eq!(negotiate_version(2, 1), None);
    }
}
