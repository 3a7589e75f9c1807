//! Errors, worded for function authors (they surface as Python exceptions).

/// Why an outbound connection or HTTP exchange failed.
///
/// The `Display` text is shown to the function's author; it names the
/// destination and the reason but nothing secret about the box.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// The rules do not allow the destination. `reason` continues the
    /// sentence "connection to DESTINATION refused …", e.g. "by the box
    /// policy: rejected by rule `reject *:*`".
    #[error("connection to {destination} refused {reason}")]
    Refused {
        /// `host:port` as the function asked for it.
        destination: String,
        /// Which list refused which address, and by what rule.
        reason: String,
    },
    /// The name could not be resolved.
    #[error("could not resolve {host}: {reason}")]
    Resolve {
        /// The name.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// An allowed address could not be connected to.
    #[error("could not connect to {destination}: {reason}")]
    Connect {
        /// `host:port` as the function asked for it.
        destination: String,
        /// What went wrong, per address tried.
        reason: String,
    },
    /// The deadline passed before the operation finished.
    #[error("the network operation did not finish before its deadline")]
    Timeout,
    /// The URL is malformed or not an `http`/`https` URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL (any password in it removed).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More redirects than allowed.
    #[error("too many redirects (more than {max})")]
    TooManyRedirects {
        /// The limit that was exceeded.
        max: u32,
    },
    /// The response body is larger than allowed.
    #[error("the response body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// TLS setup or handshake failed (e.g. an untrusted certificate).
    #[error("TLS error: {0}")]
    Tls(String),
    /// The function's request is malformed (method, header name or
    /// value); nothing was sent.
    #[error("invalid HTTP request: {0}")]
    InvalidRequest(String),
    /// The exchange failed on the network's or the server's side: a
    /// malformed response, a connection cut while reading it.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The caller stopped the transfer (e.g. the instance is shutting down).
    #[error("the transfer was stopped")]
    Stopped,
}
