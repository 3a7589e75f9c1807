//! The research prototype's request decoder
//! (`bento_server::decode_legacy_request`): a type byte, then a body that is
//! JSON (Store, Execute) or an instance id (Open, Close, Input) — all of it
//! from anonymous clients.
#![no_main]

use bento_server::{LegacyRequest, decode_legacy_request};
use libfuzzer_sys::fuzz_target;

/// Length of a prototype instance id (a UUID in text form).
const INSTANCE_ID_LEN: usize = 36;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match decode_legacy_request(kind, body) {
        Ok(LegacyRequest::Open(id) | LegacyRequest::Close(id)) => {
            assert_eq!(id.as_bytes(), body, "an instance id is the whole body");
            assert_eq!(id.len(), INSTANCE_ID_LEN);
        }
        Ok(LegacyRequest::Input { id, data }) => {
            assert_eq!(id.len(), INSTANCE_ID_LEN);
            assert_eq!(&body[..INSTANCE_ID_LEN], id.as_bytes());
            assert_eq!(
                &body[INSTANCE_ID_LEN..],
                &data[..],
                "input data lost or changed"
            );
        }
        Ok(LegacyRequest::Store(_) | LegacyRequest::Execute(_)) => {}
        // The error's text goes back to the client: it must render.
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
