//! The client halves of Bento's six functions, each next to the Python
//! source it stores at a box.
//!
//! A Bento function has two halves: the Python that runs in a box's sandbox
//! (`functions/<name>/` in the repository, embedded here with
//! `include_str!`) and the client that stores it, invokes it and speaks
//! its format (cells, bundles, shards, log lines). This crate holds the
//! second half of each, one module per function, so that the `bento`
//! command only parses arguments and the formats are written once on the
//! Rust side, with tests that their constants agree with the Python ones.
//!
//! Nothing here runs a function or links wasmtime: a client only talks to
//! boxes, through [`bento_client`].
//!
//! Every entry point returns [`Error`], whose [`Error::fault`] says whose
//! fault a failure was (the request's, the function's or the box's); the
//! command line turns that into its exit code.

pub mod browser;
pub mod cover;
pub mod dropbox;
pub mod loadbalancer;
pub mod proxy;
pub mod shard;

#[cfg(test)]
mod python_source;

use std::path::PathBuf;
use std::sync::Arc;

use bento_client::ClientError;
use bento_protocol::{ErrorCode, ErrorKind};

/// Whose fault a failure was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request: a bad option or input, an unknown token.
    Request,
    /// The function: its exception, a limit it reached, a kill.
    Function,
    /// The box: busy, failed, unreachable, or it broke the function's format.
    Box,
}

/// Why a function's client half failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be made as asked (an option out of range, an
    /// input too large for the function, a malformed token); said before
    /// anything more is sent.
    #[error("{0}")]
    Request(String),
    /// A local file could not be read or written.
    #[error("cannot {action} {}: {error}", path.display())]
    File {
        /// `read`, `write` or `create`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// The box answered with an error, or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The function failed on its own terms (its message).
    #[error("{0}")]
    Function(String),
    /// The box (or the function at it) broke the function's format, or
    /// too few boxes could be used.
    #[error("{0}")]
    Box(String),
}

impl Error {
    /// Whose fault the failure was.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Request(_) | Error::File { .. } => Fault::Request,
            Error::Function(_) => Fault::Function,
            Error::Box(_) => Fault::Box,
            Error::Client(error) => client_fault(error),
        }
    }

    /// A local file error.
    pub(crate) fn file(
        action: &'static str,
        path: &std::path::Path,
        error: std::io::Error,
    ) -> Self {
        Error::File {
            action,
            path: path.to_owned(),
            error,
        }
    }
}

/// Whose fault an error the box reported (or failing to reach it) was.
pub fn client_fault(error: &ClientError) -> Fault {
    match error {
        ClientError::Remote { code, .. } => match code.kind() {
            ErrorKind::LimitExceeded | ErrorKind::FunctionFailed => Fault::Function,
            ErrorKind::BadRequest | ErrorKind::UnknownToken => Fault::Request,
            _ => Fault::Box,
        },
        ClientError::BadServer(_) => Fault::Request,
        _ => Fault::Box,
    }
}

/// The error a failed function raised, from the traceback the box sent:
/// its last non-empty line, without the `BrowseError: ` / `CoverError: `
/// prefix of the functions' own errors (other exceptions keep their name,
/// so `ZeroDivisionError: division by zero` stays as it is).
pub fn function_error(traceback: &str) -> &str {
    let last = traceback
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(traceback)
        .trim();
    [cover::ERROR_PREFIX, browser::ERROR_PREFIX]
        .iter()
        .find_map(|p| last.split_once(p).map(|(_, message)| message))
        .unwrap_or(last)
}

/// The message of a failure the function raised itself, as
/// [`function_error`] reads it from the traceback: an uncaught exception
/// (`function_exception`) or a refusal by the box's rules it left uncaught
/// (`policy_refused`). `None` for any other error, which stays the box's.
/// The one place the client halves tell the function's failures from the
/// box's.
pub fn raised_by_function(error: &ClientError) -> Option<&str> {
    match error {
        ClientError::Remote {
            code: ErrorCode::FunctionException | ErrorCode::PolicyRefused,
            message,
        } => Some(function_error(message)),
        _ => None,
    }
}

/// Where a client half tells its user what it is doing while it works:
/// progress and events as [`Console::note`] (the command line: stderr),
/// results as [`Console::out`] (stdout).
pub trait Console: Send + Sync {
    /// A line about progress.
    fn note(&self, line: &str);
    /// A line of the result.
    fn out(&self, line: &str);
}

/// A console shared with spawned tasks.
pub type SharedConsole = Arc<dyn Console>;

/// Whether a shaped client pads its own direction too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PadOwn {
    /// With the defense's client-side machines (what `bento run --defense`
    /// does).
    Yes,
    /// Not: the client's direction is already paced by the function's own
    /// client (the Cover's cells leave on the client's clock, which has
    /// threads and keeps time; only the box's sandbox cannot).
    No,
}

/// A function to store and start at a box: what every client half but
/// the Dropbox's and the Proxy's (which need a service token) begins with.
pub(crate) struct Start<'a> {
    /// The name the box files the source under.
    pub filename: &'a str,
    /// The Python source.
    pub source: &'a str,
    /// The manifest (TOML).
    pub manifest: &'a str,
    /// The function to call.
    pub entry: &'a str,
    /// Its arguments, a JSON list.
    pub args: &'a str,
}

impl Start<'_> {
    /// Store the function, invoke it, and attach to its session on a
    /// connection of its own.
    pub(crate) async fn attach(
        &self,
        target: &bento_client::Target,
    ) -> Result<(bento_protocol::SessionToken, bento_client::Attachment), ClientError> {
        self.attach_shaped(target, None, PadOwn::Yes).await
    }

    /// Like [`Start::attach`], shaped by `defense` when given, the way
    /// `bento run --defense` does it: the invocation asks the box to shape
    /// its output, and (with [`PadOwn::Yes`]) this client pads its own
    /// direction with the same defense's client-side machines.
    pub(crate) async fn attach_shaped(
        &self,
        target: &bento_client::Target,
        defense: Option<bento_client::Defense>,
        pad_own: PadOwn,
    ) -> Result<(bento_protocol::SessionToken, bento_client::Attachment), ClientError> {
        let mut conn = bento_client::Connection::connect(target).await?;
        let (_, token) = conn
            .store_with_manifest(self.filename, self.source, self.manifest)
            .await?;
        let (session, _) = conn
            .invoke_with_defense(&token, self.entry, self.args, defense)
            .await?;
        let padding = match pad_own {
            PadOwn::Yes => defense.map(|d| (d, bento_client::CLIENT_MAX_PADDING_BYTES)),
            PadOwn::No => None,
        };
        let attachment = bento_client::Connection::connect(target)
            .await?
            .attach_shaped(&session, None, padding)
            .await?;
        Ok((session, attachment))
    }
}

/// Send `data` to a session's input in frames of at most the protocol's
/// data length.
pub(crate) async fn send_all(
    input: &bento_client::InputSender,
    data: &[u8],
) -> Result<(), ClientError> {
    for chunk in data.chunks(bento_protocol::MAX_DATA_LEN) {
        input.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    Ok(())
}

/// Read a whole local file.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::file("read", path, e))
}

/// Write `data` to `path` through a `.part` file, so that a failure never
/// leaves half a file under the final name.
pub(crate) fn write_file_whole(path: &std::path::Path, data: &[u8]) -> Result<(), Error> {
    let temp = path.with_extension("part");
    std::fs::write(&temp, data).map_err(|e| Error::file("write", &temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| Error::file("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_error_is_the_tracebacks_last_line_without_the_functions_own_prefix() {
        let traceback = "Traceback (most recent call last):\n  File \"cover.py\", line 9\n__bento__.CoverError: the rate must be more than 0\n\n";
        assert_eq!(function_error(traceback), "the rate must be more than 0");
        assert_eq!(
            function_error("Traceback …\nBrowseError: http://a/ answered HTTP 404\n"),
            "http://a/ answered HTTP 404"
        );
        // Other exceptions keep their name: it is the news.
        assert_eq!(
            function_error("Traceback …\n  ZeroDivisionError: division by zero  \n"),
            "ZeroDivisionError: division by zero"
        );
        // A message of one line, or of blank lines only.
        assert_eq!(function_error("busy"), "busy");
        assert_eq!(function_error("  \n \n"), "");
        assert_eq!(function_error(""), "");
    }

    #[test]
    fn box_errors_are_blamed_by_their_kind() {
        use bento_protocol::ErrorCode;
        let remote = |code| ClientError::Remote {
            code,
            message: String::new(),
        };
        assert_eq!(
            Error::from(remote(ErrorCode::FunctionException)).fault(),
            Fault::Function
        );
        assert_eq!(
            Error::from(remote(ErrorCode::UnknownService)).fault(),
            Fault::Request
        );
        assert_eq!(Error::from(ClientError::Closed).fault(), Fault::Box);
        assert_eq!(Error::Request("x".into()).fault(), Fault::Request);
    }

    #[test]
    fn a_policy_refusal_the_function_left_uncaught_is_the_functions_failure_by_its_code() {
        let remote = |code| ClientError::Remote {
            code,
            message: "Traceback …\napi.DestinationRefused: connection to a:1 refused\n".into(),
        };
        for code in [ErrorCode::PolicyRefused, ErrorCode::FunctionException] {
            assert_eq!(
                raised_by_function(&remote(code)),
                Some("api.DestinationRefused: connection to a:1 refused"),
                "{code}"
            );
            assert_eq!(Error::from(remote(code)).fault(), Fault::Function);
        }
        // The same text under a box's code is the box's error.
        assert_eq!(raised_by_function(&remote(ErrorCode::Internal)), None);
        assert_eq!(raised_by_function(&ClientError::Closed), None);
    }
}
