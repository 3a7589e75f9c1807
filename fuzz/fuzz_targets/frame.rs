//! The native protocol's frame decoder (`bento_protocol::FrameDecoder`),
//! fed hostile bytes as a client or a box would send them.
//!
//! Checked beyond "no panic": every frame the decoder accepts re-encodes to
//! bytes that decode to the same frame, and decoding the input as it trickles
//! in (in chunks of a size the input picks) gives exactly the frames and the
//! error that decoding it in one piece gives.
#![no_main]

use bento_protocol::{Frame, FrameDecoder, ProtocolError};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Decode everything `feed` delivers, stopping at the first error.
fn decode_all(chunks: impl Iterator<Item = Vec<u8>>) -> (Vec<Frame>, Option<ProtocolError>) {
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(&chunk);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "a decoded frame consumed no bytes");
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, wire)) = data.split_first() else {
        return;
    };
    let (frames, error) = decode_all(std::iter::once(wire.to_vec()));

    let chunk = usize::from(chunk).max(1);
    let trickled = decode_all(wire.chunks(chunk).map(<[u8]>::to_vec));
    assert_eq!(trickled.0, frames, "chunked decoding changed the frames");
    assert_eq!(trickled.1, error, "chunked decoding changed the error");

    for frame in frames {
        let mut encoded = BytesMut::new();
        frame.encode(&mut encoded);
        let again = FrameDecoder::default().decode(&mut encoded);
        assert_eq!(again, Ok(Some(frame)), "a decoded frame did not round-trip");
        assert!(encoded.is_empty(), "re-encoding left trailing bytes");
    }
});
