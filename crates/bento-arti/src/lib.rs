//! The embedded Tor client of Bento's clients: Arti (`arti-client`) set up
//! for `bento --tor embedded`, so that reaching a `.onion` box needs no
//! local `tor`.
//!
//! - **Where it keeps things** ([`ArtiDirs`]): state (guards, circuit
//!   timeouts) under `$XDG_STATE_HOME/bento/arti` and the directory cache
//!   (consensus, microdescriptors) under `$XDG_CACHE_HOME/bento/arti`
//!   (`~/.local/state` and `~/.cache` when unset); a private network gets
//!   directories of its own, so it never mixes with the real one.
//! - **Which network** ([`PrivateNetwork`]): the public Tor network by
//!   default, or a private one described by an Arti configuration
//!   fragment (its authorities and fallback caches, path rules), such as
//!   the `arti.toml` that `bento testnet up` writes.
//! - **Bootstrap** ([`EmbeddedTor`]): on the first stream, with progress
//!   reported to a callback ([`BootstrapEvent`]), within a time limit;
//!   later streams reuse the client.
//! - **Streams** ([`EmbeddedTor`] is a [`bento_client::Dialer`]): Arti
//!   resolves the name, so onion addresses work.
//!
//! Arti is compiled in only with the `embedded-tor` feature (on in the
//! released binary, off in debug and test builds); without it,
//! [`EmbeddedTor::new`] returns [`Error::NotCompiledIn`]. The directory and
//! network-file logic is always compiled and tested.

mod dirs;
mod network;

#[cfg(feature = "embedded-tor")]
mod embedded;
#[cfg(not(feature = "embedded-tor"))]
mod not_compiled;

pub use dirs::ArtiDirs;
#[cfg(feature = "embedded-tor")]
pub use embedded::EmbeddedTor;
pub use network::PrivateNetwork;
#[cfg(not(feature = "embedded-tor"))]
pub use not_compiled::EmbeddedTor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Whether this build has the embedded Tor client.
pub const COMPILED_IN: bool = cfg!(feature = "embedded-tor");

/// How long bootstrapping may take before a stream fails, by default.
pub const DEFAULT_BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(180);

/// How the embedded client is set up.
#[derive(Debug, Clone)]
pub struct EmbeddedTorConfig {
    /// Where Arti keeps its state and cache.
    pub dirs: ArtiDirs,
    /// A private network instead of the public Tor network.
    pub network: Option<PrivateNetwork>,
    /// How long bootstrapping may take.
    pub bootstrap_timeout: Duration,
}

/// What bootstrapping reports, in order: progress, then `Ready` once.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BootstrapEvent {
    /// Bootstrapping is at `percent` %, doing (or stuck at) `status`.
    Progress {
        /// 0 to 100.
        percent: u8,
        /// Arti's description: what it is doing, or why it is stuck.
        status: String,
    },
    /// Bootstrapped: ready for streams.
    Ready {
        /// Since bootstrapping began.
        elapsed: Duration,
    },
}

/// Where bootstrap events go (the CLI prints them on stderr).
pub type ProgressSink = Arc<dyn Fn(&BootstrapEvent) + Send + Sync>;

/// Errors of the embedded Tor client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This build has no embedded Tor client.
    #[error(
        "this bento was built without the embedded Tor client; use a release build \
         (`BENTO_PROFILE=release scripts/setup.sh`, or `cargo build --release -p bento-cli \
         --features embedded-tor`; the Debian package has it), or a local tor with `--tor socks`"
    )]
    NotCompiledIn,
    /// Neither `XDG_STATE_HOME`/`XDG_CACHE_HOME` nor `HOME` says where the
    /// user's directories are.
    #[error("cannot place the embedded Tor client's {what} directory: set HOME or {variable}")]
    NoHome {
        /// `state` or `cache`.
        what: &'static str,
        /// The XDG variable that would also do.
        variable: &'static str,
    },
    /// The private network file could not be read.
    #[error("cannot read the Tor network file {path}: {error}")]
    ReadNetwork {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The private network file is not a usable Arti configuration.
    #[error("the Tor network file {path} is not usable: {reason}")]
    BadNetwork {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Arti refused the configuration.
    #[error("the embedded Tor client's configuration is refused: {0}")]
    Config(String),
    /// Bootstrapping failed or took longer than allowed.
    #[error("the embedded Tor client could not bootstrap: {0}")]
    Bootstrap(String),
    /// Arti could not open a stream to the box.
    #[error("the embedded Tor client could not reach the box: {0}")]
    Connect(String),
}

/// What kind of failure an [`Error`] is, for exit codes: the user's input
/// or build, or the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The build, a file or a setting the user gave: fix and retry.
    BadInput,
    /// Tor could not be reached or used, or the box not reached.
    Network,
}

impl Error {
    /// Whose fault it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotCompiledIn
            | Error::NoHome { .. }
            | Error::ReadNetwork { .. }
            | Error::BadNetwork { .. }
            | Error::Config(_) => ErrorKind::BadInput,
            Error::Bootstrap(_) | Error::Connect(_) => ErrorKind::Network,
        }
    }
}
