//! Error codes carried by `Error` frames.

/// Broad class of an error, so a client (or function author) can tell their
/// own mistake from the box's refusal or a box failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request or frame was invalid; fix the request.
    BadRequest,
    /// A token was not recognised (never existed, or expired).
    UnknownToken,
    /// The function exceeded a resource limit and was stopped.
    LimitExceeded,
    /// The function itself failed (exception, syntax error, killed).
    FunctionFailed,
    /// The box is at a global capacity cap; retry later.
    Busy,
    /// Something failed inside the box.
    Internal,
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $kind:ident, $text:literal; )*) => {
        /// A typed error code (`u16` on the wire). Codes unknown to this
        /// version decode as [`ErrorCode::Unknown`] and are classed as
        /// [`ErrorKind::Internal`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
            /// A code this implementation does not know.
            Unknown(u16),
        }

        impl ErrorCode {
            /// The wire value.
            pub fn to_u16(self) -> u16 {
                match self {
                    $( ErrorCode::$name => $value, )*
                    ErrorCode::Unknown(v) => v,
                }
            }

            /// The code for a wire value.
            pub fn from_u16(value: u16) -> Self {
                match value {
                    $( $value => ErrorCode::$name, )*
                    other => ErrorCode::Unknown(other),
                }
            }

            /// The class of this error.
            pub fn kind(self) -> ErrorKind {
                match self {
                    $( ErrorCode::$name => ErrorKind::$kind, )*
                    ErrorCode::Unknown(_) => ErrorKind::Internal,
                }
            }

            /// A short stable name, e.g. `limit.memory`.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $text, )*
                    ErrorCode::Unknown(_) => "unknown",
                }
            }

            /// Every known code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$name, )* ];
        }
    };
}

error_codes! {
    /// A frame could not be decoded.
    MalformedFrame = 1, BadRequest, "malformed_frame";
    /// A frame declared a length over the maximum.
    FrameTooLarge = 2, BadRequest, "frame_too_large";
    /// No common protocol version.
    UnsupportedVersion = 3, BadRequest, "unsupported_version";
    /// A valid frame that is not allowed in the connection's current state.
    UnexpectedFrame = 4, BadRequest, "unexpected_frame";
    /// The peer stopped sending in the middle of a frame or handshake.
    Timeout = 5, BadRequest, "timeout";
    /// A stored function was refused (too large, not UTF-8, syntax error).
    InvalidFunction = 6, BadRequest, "invalid_function";
    /// Invocation arguments are not a JSON array, or the entry name is bad.
    InvalidArguments = 7, BadRequest, "invalid_arguments";
    /// The function's manifest asks for more than the box's policy allows;
    /// the message lists every violation.
    ManifestRejected = 8, BadRequest, "manifest_rejected";
    /// A stored function's requested lifetime is longer than the box allows.
    InvalidLifetime = 9, BadRequest, "invalid_lifetime";
    /// Sealed data failed to open in the worker: changed, replayed,
    /// reordered, moved from another session, or sealed to another key
    /// (or the box offers no sealed channel).
    SealedRejected = 10, BadRequest, "sealed_rejected";
    /// The traffic-analysis defense asked for is unknown, not allowed by
    /// the box's policy, or needs a protocol version the connection did not
    /// negotiate.
    DefenseRefused = 15, BadRequest, "defense_refused";
    /// No stored function has this invoke token (never stored, deleted, or
    /// its lifetime ended).
    UnknownInvokeToken = 16, UnknownToken, "unknown_invoke_token";
    /// No session has this session token (never existed, ended or expired).
    UnknownSession = 17, UnknownToken, "unknown_session";
    /// The session already has an attached client.
    SessionBusy = 18, Busy, "session_attached";
    /// No running instance offers a service under this token.
    UnknownService = 19, UnknownToken, "unknown_service";
    /// The instance exceeded its memory limit.
    LimitMemory = 32, LimitExceeded, "limit.memory";
    /// The instance exceeded its CPU time limit.
    LimitCpu = 33, LimitExceeded, "limit.cpu";
    /// The instance exceeded its wall-clock time limit.
    LimitWallTime = 34, LimitExceeded, "limit.wall_time";
    /// The instance exhausted its call stack.
    LimitStack = 35, LimitExceeded, "limit.stack";
    /// The function raised an uncaught exception; the message is the traceback.
    FunctionException = 48, FunctionFailed, "function_exception";
    /// The session was killed.
    Killed = 49, FunctionFailed, "killed";
    /// The worker process running the instance died.
    WorkerCrashed = 50, Internal, "worker_crashed";
    /// The instance trapped for a reason other than a limit.
    FunctionTrapped = 51, FunctionFailed, "function_trapped";
    /// The function left a capability error uncaught that the box's rules
    /// caused (a destination its manifest or the box's policy refuses, a
    /// capability it was not granted); the message is the traceback.
    PolicyRefused = 52, FunctionFailed, "policy_refused";
    /// The box runs as many instances as it allows.
    TooManyInstances = 64, Busy, "too_many_instances";
    /// The box buffers as much session output as it allows.
    BufferCapReached = 65, Busy, "buffer_cap_reached";
    /// The box stores as many function bytes as it allows.
    StorageFull = 66, Busy, "storage_full";
    /// The service already has as many channels as its grant allows.
    ChannelLimit = 67, Busy, "channel_limit";
    /// The box has reserved as much instance storage as it allows.
    InstanceStorageFull = 68, Busy, "instance_storage_full";
    /// The box has as many client connections open as it allows.
    TooManyConnections = 69, Busy, "too_many_connections";
    /// The box's workers start instances late (more work than its cores
    /// carry), so it refuses a share of new ones until they catch up; try
    /// again in a moment.
    Overloaded = 70, Busy, "overloaded";
    /// An internal error in the box.
    Internal = 96, Internal, "internal";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_codes_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.to_u16()), code);
            assert!(seen.insert(code.to_u16()), "duplicate {code}");
        }
    }

    #[test]
    fn unknown_codes_are_preserved_and_classed_internal() {
        let code = ErrorCode::from_u16(9999);
        assert_eq!(code.to_u16(), 9999);
        assert_eq!(code.kind(), ErrorKind::Internal);
    }
}
