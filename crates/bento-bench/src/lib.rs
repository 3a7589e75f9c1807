//! Bento's benchmarks: measure a box started for the purpose (alone, or
//! beside a relay of a private Tor network), and soak, load and crash it.
//!
//! `bento bench` and `bento testnet bench` parse their options and call one
//! of these; each run starts its own box (in this process for [`figures`],
//! as a `bento serve` child process for [`soak`], [`load`] and [`crash`],
//! so that the box's own file descriptors, threads and memory can be read
//! from `/proc`, and beside a relay of a private Tor network of its own for
//! [`tor`]), writes its report to the writer it is given (progress goes
//! to stderr) and returns whether the run was clean. Nothing here asserts on time:
//! the figures are reported, medians and tail percentiles, and compared
//! with a saved baseline only on request (docs/benchmarks.md).

/// `writeln!` to the report, failing the run with [`Error::Io`] if the
/// report cannot be written.
macro_rules! report {
    ($out:expr) => {
        writeln!($out).map_err($crate::report_error)?
    };
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err($crate::report_error)?
    };
}

/// `return Err(Error::Run(format!(…)))`: a measured run went wrong.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Run(format!($($arg)*)))
    };
}

pub mod crash;
pub mod figures;
pub mod latency;
pub mod load;
mod process;
pub mod soak;
pub mod tor;

use bento_client::ClientError;

pub use process::BoxProcess;

/// Why a benchmark could not run to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reaching the measured box, or one of its answers, failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Tor failed: the private network, a ControlPort, a SOCKS stream.
    #[error(transparent)]
    Tor(#[from] bento_tor::TorError),
    /// The box beside the private network's relay could not be started.
    #[error(transparent)]
    Boxes(#[from] bento_testnet::boxes::BoxesError),
    /// One step of a measured session failed at the box; `doing` says
    /// which (detaching, attaching again, reading).
    #[error("{doing}")]
    Step {
        /// The step.
        doing: &'static str,
        /// Why it failed.
        #[source]
        source: ClientError,
    },
    /// A local resource failed: a temporary directory, a file, a socket,
    /// the box's process, writing the report. `doing` says which.
    #[error("{doing}")]
    Io {
        /// What was being done.
        doing: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The measured box could not be configured or started, or the
    /// sandbox alone could not run.
    #[error("{doing}")]
    Setup {
        /// What was being set up.
        doing: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A measured run went wrong: a wrong answer, a session that ended
    /// early, a box that did not start in time.
    #[error("{0}")]
    Run(String),
}

impl Error {
    /// Whether this is the box's refusal because it is busy
    /// (`too_many_instances`, `buffer_cap_reached`, `too_many_connections`,
    /// `overloaded`): something to count and retry, not a failure.
    pub fn is_busy(&self) -> bool {
        use bento_protocol::ErrorCode;
        let (Error::Client(ClientError::Remote { code, .. })
        | Error::Step {
            source: ClientError::Remote { code, .. },
            ..
        }) = self
        else {
            return false;
        };
        matches!(
            code,
            ErrorCode::TooManyInstances
                | ErrorCode::BufferCapReached
                | ErrorCode::TooManyConnections
                | ErrorCode::Overloaded
        )
    }
}

/// Invoke `token`'s `main(*args)` on one connection, attach on another
/// and read the session to its end; returns the bytes received.
async fn invoke_to_end(
    target: &bento_client::Target,
    token: &bento_protocol::InvokeToken,
    args: &str,
) -> Result<u64, Error> {
    use bento_client::Connection;
    let session = Connection::connect(target)
        .await?
        .invoke(token, "main", args)
        .await?;
    let attachment = Connection::connect(target)
        .await?
        .attach(&session, None)
        .await?;
    read_to_end(attachment).await
}

/// Bytes received until the session's end.
async fn read_to_end(mut attachment: bento_client::Attachment) -> Result<u64, Error> {
    let mut received = 0u64;
    while let Some(data) = attachment.next().await? {
        received += data.len() as u64;
    }
    attachment.close().await;
    Ok(received)
}

/// An [`Error::Step`] that says which step of a session failed.
fn step(doing: &'static str) -> impl FnOnce(ClientError) -> Error {
    move |source| Error::Step { doing, source }
}

/// An [`Error::Io`] that says what was being done.
fn io_error(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let doing = doing.into();
    move |source| Error::Io { doing, source }
}

/// An [`Error::Setup`] that says what was being set up.
fn setup_error<E>(doing: impl Into<String>) -> impl FnOnce(E) -> Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let doing = doing.into();
    move |source| Error::Setup {
        doing,
        source: source.into(),
    }
}

/// Writing the report failed.
fn report_error(source: std::io::Error) -> Error {
    Error::Io {
        doing: "cannot write the report".to_owned(),
        source,
    }
}

/// A tiny deterministic generator, so a run's mix is reproducible (not for
/// anything secret).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n`; 0 for `n == 0`.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// An error and its causes, `: `-separated, for the report's failure lines.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
