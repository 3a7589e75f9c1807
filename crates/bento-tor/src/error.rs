//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong talking to tor or running a test network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TorError {
    /// A socket or file operation failed; `what` says which and where.
    #[error("{what}: {error}")]
    Io {
        /// What was being done (names the address or path).
        what: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The ControlPort answered with an error status.
    #[error("tor control {addr}: {command} failed: {code} {message}")]
    Command {
        /// ControlPort address.
        addr: String,
        /// The command (first word) that failed.
        command: String,
        /// Status code (e.g. 552).
        code: u16,
        /// tor's message.
        message: String,
    },
    /// A reply or event from tor that we could not understand.
    #[error("tor control {addr}: unexpected reply to {step}: {detail}")]
    Protocol {
        /// ControlPort address.
        addr: String,
        /// The step (command) in progress.
        step: String,
        /// What was wrong.
        detail: String,
    },
    /// Authentication to the ControlPort failed or is not possible.
    #[error("tor control {addr}: authentication failed at {step}: {detail}")]
    Auth {
        /// ControlPort address.
        addr: String,
        /// The step (`PROTOCOLINFO`, reading the cookie, `AUTHENTICATE`).
        step: String,
        /// Why.
        detail: String,
    },
    /// The control connection closed.
    #[error("tor control {addr}: connection closed")]
    Closed {
        /// ControlPort address.
        addr: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {secs:.1} s waiting for {what}")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// How long we waited.
        secs: f64,
    },
    /// The SOCKS proxy refused or failed the request.
    #[error("SOCKS5 via {proxy} to {target}: {detail}")]
    Socks {
        /// Proxy address.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// Why it failed (reply code meaning, or protocol error).
        detail: String,
    },
    /// Invalid input from the caller (config, argument).
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which input.
        what: String,
        /// Why.
        detail: String,
    },
    /// This tor keeps no relay server descriptors (a client's default is
    /// microdescriptors only), so relays' ContactInfo is unknown to it.
    #[error(
        "tor control {addr}: this tor fetches only microdescriptors, which carry no ContactInfo: \
         add `FetchUselessDescriptors 1` to its torrc, reload tor, and wait a few minutes for it \
         to fetch the relays' descriptors"
    )]
    NoServerDescriptors {
        /// ControlPort address.
        addr: String,
    },
    /// A test-network node did not become ready; includes its log tail.
    #[error("testnet: {node} not ready: {detail}\n--- last lines of {log} ---\n{log_tail}")]
    NodeNotReady {
        /// Nickname of the node.
        node: String,
        /// What failed.
        detail: String,
        /// Path of its notice log.
        log: PathBuf,
        /// Last lines of that log.
        log_tail: String,
    },
    /// A helper program (tor-gencert, tor --list-fingerprint) failed.
    #[error("running {program}: {detail}")]
    Program {
        /// The program.
        program: String,
        /// Exit status and stderr excerpt.
        detail: String,
    },
    /// The state file could not be parsed or written.
    #[error("testnet state {path}: {detail}")]
    State {
        /// Path of the state file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

impl TorError {
    /// An I/O error while doing `what` (which names the address or path).
    pub fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        TorError::Io {
            what: what.into(),
            error,
        }
    }
}
