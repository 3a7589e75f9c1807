//! A refusal of a client's request, as the protocol reports it: an error
//! code and a message. Its own module because every part of the server that
//! says no (box operations, sealed uploads, shaping) uses it.

use bento_protocol::{ErrorCode, Frame};

/// A refusal, as the protocol reports it.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn into_frame(self) -> Frame {
        Frame::error(self.code, self.message)
    }
}
