//! The server⇄worker pipe decoders (`bento_worker_contract::ipc`). Workers run
//! hostile code, so the server must survive anything a worker writes; the
//! first input byte picks the direction (even: worker → server).
//!
//! Checked beyond "no panic": each decoded message re-encodes to a frame
//! that decodes to a message with the same encoding.
#![no_main]

use bento_worker_contract::ipc::{FromWorker, ToWorker};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

fn from_worker_bytes(message: &FromWorker) -> Bytes {
    let (head, payload) = message.encode_parts();
    let mut out = BytesMut::from(&head[..]);
    out.extend_from_slice(&payload);
    out.freeze()
}

fuzz_target!(|data: &[u8]| {
    let Some((&direction, wire)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(wire);
    if direction % 2 == 0 {
        while let Ok(Some(message)) = FromWorker::decode(&mut buf) {
            let encoded = from_worker_bytes(&message);
            let again = FromWorker::decode(&mut BytesMut::from(&encoded[..]))
                .expect("a re-encoded worker message decodes")
                .expect("a re-encoded worker message is complete");
            assert_eq!(from_worker_bytes(&again), encoded);
        }
    } else {
        while let Ok(Some(message)) = ToWorker::decode(&mut buf) {
            let encoded = message.encode();
            let again = ToWorker::decode(&mut BytesMut::from(&encoded[..]))
                .expect("a re-encoded server message decodes")
                .expect("a re-encoded server message is complete");
            assert_eq!(again.encode(), encoded);
        }
    }
});
