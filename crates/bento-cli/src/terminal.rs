//! The terminal as the function clients' console: progress on stderr,
//! results on stdout.

use std::io::Write;
use std::sync::Arc;

use bento_functions::{Console, SharedConsole};

/// Progress to stderr, results to stdout.
pub struct Terminal;

impl Console for Terminal {
    fn note(&self, line: &str) {
        eprintln!("{line}");
    }

    fn out(&self, line: &str) {
        // A closed stdout (`| head -1`) must not stop a long-running
        // command such as `bento lb start`.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
}

impl Terminal {
    /// The terminal for tasks of their own.
    pub fn shared() -> SharedConsole {
        Arc::new(Terminal)
    }
}

/// Each Ctrl-C (SIGINT) or SIGTERM as one message: how a long-running
/// function client is asked to stop.
pub fn stop_requests() -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, bento_functions::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered now, before the client starts, so that a signal while it
    // starts is a request to stop rather than the end of the process.
    let signals = |kind| {
        signal(kind).map_err(|e| {
            bento_functions::Error::Box(format!("cannot listen for Ctrl-C and SIGTERM: {e}"))
        })
    };
    let mut interrupt = signals(SignalKind::interrupt())?;
    let mut terminate = signals(SignalKind::terminate())?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => (),
                _ = terminate.recv() => (),
            }
            if sender.send(()).is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}

/// One line of a result on stdout.
pub fn print(line: &str) {
    Terminal.out(line);
}
