//! The one error type of every capability call: the WIT world's
//! `host-error`, a kind the runtime maps to an exception class once
//! (runtime/bento/errors.py) and a message for people.
//!
//! Every failure a host import reports is made here, from the typed errors
//! of the crates below (egress, storage, stops), so a kind is chosen in one
//! place and Python never parses text. Messages never contain anything the
//! function did not already know (no client addresses, no tokens).

use bento_egress::EgressError;
use bento_storage::StorageError;

use crate::session_io::StopReason;

pub(crate) use crate::instance::bento::runtime::types::{ErrorKind, HostError};

impl HostError {
    /// An error of `kind`.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        HostError {
            kind,
            message: message.into(),
        }
    }

    /// An argument the function passed is out of range or malformed.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// The stream or channel is closed.
    pub(crate) fn closed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Closed, message)
    }

    /// The call's timeout passed.
    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// Something outside the function failed.
    pub(crate) fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }

    /// The box's rules refused what the function asked for.
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, message)
    }

    /// The instance is being stopped: the call gives up, and the stop (a
    /// trap, see `InstanceState::stop_check`) ends the instance.
    pub(crate) fn stopped(reason: StopReason) -> Self {
        Self::new(
            ErrorKind::Stopped,
            format!("the instance is being stopped ({reason:?})"),
        )
    }

    /// The answer of the box (the server process) to a request the
    /// instance made of it, such as publishing an onion service. The
    /// server is not linked with the sandbox, so its refusals cross the
    /// worker pipe as `"kind: message"` text; this is the one place that
    /// reads them. An unknown kind is an `io` error with the whole text.
    pub(crate) fn from_box_reply(text: &str) -> Self {
        let (kind, message) = text.split_once(": ").unwrap_or(("", text));
        let kind = match kind {
            "channels" => ErrorKind::ChannelLimit,
            "timeout" => ErrorKind::Timeout,
            "stopped" => ErrorKind::Stopped,
            "invalid" => ErrorKind::InvalidArgument,
            "refused" => ErrorKind::Refused,
            "io" => ErrorKind::Io,
            _ => return Self::io(text),
        };
        Self::new(kind, message)
    }
}

impl From<&EgressError> for HostError {
    fn from(error: &EgressError) -> Self {
        let kind = match error {
            EgressError::Refused { .. } => ErrorKind::Refused,
            EgressError::Timeout => ErrorKind::Timeout,
            EgressError::InvalidUrl { .. } | EgressError::InvalidRequest(_) => {
                ErrorKind::InvalidArgument
            }
            EgressError::TooManyRedirects { .. } => ErrorKind::LimitReached,
            EgressError::Stopped => ErrorKind::Stopped,
            _ => ErrorKind::Io,
        };
        Self::new(kind, error.to_string())
    }
}

impl From<StorageError> for HostError {
    fn from(error: StorageError) -> Self {
        let kind = match error {
            StorageError::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            StorageError::InvalidKey(_) => ErrorKind::InvalidArgument,
            _ => ErrorKind::Io,
        };
        Self::new(kind, error.to_string())
    }
}

impl From<StopReason> for HostError {
    fn from(reason: StopReason) -> Self {
        Self::stopped(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_refusal_is_a_refused_error_and_a_redirect_loop_a_reached_limit() {
        let refused = EgressError::Refused {
            destination: "10.0.0.1:80".into(),
            reason: "by the box policy".into(),
        };
        assert_eq!(HostError::from(&refused).kind, ErrorKind::Refused);
        let redirects = EgressError::TooManyRedirects { max: 5 };
        assert_eq!(HostError::from(&redirects).kind, ErrorKind::LimitReached);
    }

    #[test]
    fn a_box_reply_keeps_its_kind_and_an_unknown_one_is_an_io_error_with_all_its_text() {
        let limit = HostError::from_box_reply("channels: at most 4 onion services");
        assert_eq!(limit.kind, ErrorKind::ChannelLimit);
        assert_eq!(limit.message, "at most 4 onion services");
        let odd = HostError::from_box_reply("no colon here");
        assert_eq!(odd.kind, ErrorKind::Io);
        assert_eq!(odd.message, "no colon here");
    }
}
