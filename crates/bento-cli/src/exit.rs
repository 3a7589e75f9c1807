//! Exit codes: the one place where a failure becomes the process's exit
//! status (and its `error:` line on stderr).
//!
//! 0 success; 1 the function failed (exception, limit, kill); 2 a bad
//! request, unknown token or unusable input; 3 the box is busy, failed or
//! unreachable. `bento --help` and README.md say the same.

use std::process::ExitCode;

use bento_client::ClientError;
use bento_functions::Fault;

/// Exit code: the function failed (exception, limit, kill).
pub const EXIT_FUNCTION: u8 = 1;
/// Exit code: bad request, unknown token, unusable input.
pub const EXIT_REQUEST: u8 = 2;
/// Exit code: the box is busy, failed, or unreachable.
pub const EXIT_BOX: u8 = 3;

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
