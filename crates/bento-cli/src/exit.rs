//! Exit codes: the one place where a failure becomes the process's exit
//! status (and its `error:` line on stderr).
//!
//! 0 success; 1 the function failed (exception, limit, kill); 2 a bad
//! request, unknown token or unusable input; 3 the box is busy, failed or
//! unreachable. `bento --help` and README.md say the same.

use std::path::Path;
use std::process::ExitCode;

use bento_client::ClientError;
use bento_functions::Fault;

/// Exit code: the function failed (exception, limit, kill).
pub const EXIT_FUNCTION: u8 = 1;
/// Exit code: bad request, unknown token, unusable input.
pub const EXIT_REQUEST: u8 = 2;
/// Exit code: the box is busy, failed, or unreachable.
pub const EXIT_BOX: u8 = 3;

/// A file the user named could not be read: their request's fault (exit
/// 2), found before any box was asked.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {error}", path.display())]
pub struct UnreadableInput {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why.
    pub error: std::io::Error,
}

/// The exit code of a command that failed with `error` (one not already
/// reported by [`report`] or [`fail`]): 2 when the user's own input (a
/// file, a token) was unusable, else 3 (the box, or reaching it).
pub fn exit_code_of(error: &anyhow::Error) -> u8 {
    if error
        .chain()
        .any(|cause| cause.is::<UnreadableInput>() || cause.is::<bento_protocol::TokenParseError>())
    {
        EXIT_REQUEST
    } else {
        EXIT_BOX
    }
}

/// The exit code for whose fault a failure was.
pub fn exit_code(fault: Fault) -> u8 {
    match fault {
        Fault::Function => EXIT_FUNCTION,
        Fault::Request => EXIT_REQUEST,
        Fault::Box => EXIT_BOX,
    }
}

/// Report an error of the box (or of reaching it) on stderr; its exit code.
pub fn report(error: &ClientError) -> ExitCode {
    match error {
        ClientError::Remote { code, message } => {
            eprintln!("error [{}]: {}", code.name(), message.trim_end());
        }
        other => eprintln!("error: {other}"),
    }
    ExitCode::from(exit_code(bento_functions::client_fault(error)))
}

/// Report a function client's error on stderr; its exit code.
pub fn fail(error: &bento_functions::Error) -> ExitCode {
    match error {
        bento_functions::Error::Client(error) => report(error),
        other => {
            eprintln!("error: {other}");
            ExitCode::from(exit_code(other.fault()))
        }
    }
}

/// The exit status of a function client's run.
pub fn status(result: Result<(), bento_functions::Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Read a file the user named: a failure is their input's fault
/// ([`UnreadableInput`], exit 2), not the box's.
pub(crate) fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|error| {
        UnreadableInput {
            path: path.to_owned(),
            error,
        }
        .into()
    })
}
