//! `bento bench crash`: kill -9 the box at random points while clients
//! store functions and run sessions, restart it on the same data
//! directory, and check every function it ever acknowledged.
//!
//! Each round starts `bento serve` on the data directory, checks every
//! function stored so far, then runs `--clients` clients that store new
//! functions (sources of up to 64 KiB, each with its own expected answer)
//! and run sessions, and kills the server with SIGKILL after a random
//! 0..`--max-delay-ms`. A function is:
//!
//! - **intact** if invoking it answers exactly what it should;
//! - **absent** if the box answers `unknown_invoke_token` (cleanly gone);
//! - **corrupt** otherwise (a wrong answer, a failed compile, a trap,
//!   any other error).
//!
//! The run passes when nothing is ever corrupt. An acknowledged store that
//! later reads as absent is reported too (the box promised durability when
//! it acknowledged: the store is fsynced before its answer).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bento_client::{ClientError, Connection, Target};
use bento_protocol::{ErrorCode, InvokeToken};

use crate::process::BoxProcess;
use crate::{Error, XorShift, io_error};

/// Options of the crash run (`bento bench crash`; its `--help` says the
/// defaults).
#[derive(Debug, Clone)]
pub struct CrashOptions {
    /// Kill-and-restart rounds.
    pub rounds: u64,
    /// Clients storing and invoking while the box is killed.
    pub clients: usize,
    /// Longest time the box runs in a round before it is killed, ms (each
    /// round picks a random time up to this).
    pub max_delay_ms: u64,
    /// Sandbox worker processes of the box [default: number of CPUs].
    pub workers: Option<usize>,
    /// The precompiled runtime.
    pub runtime: PathBuf,
}

/// A function the box acknowledged, with the answer it must give.
#[derive(Debug, Clone)]
struct Known {
    token: InvokeToken,
    answer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Intact,
    Absent,
    Corrupt,
}

/// A function source of about `pad` bytes that answers `answer`.
fn source(answer: &str, pad: usize) -> String {
    // The padding is a comment: a torn write would cut the source or the
    // answer, which the check notices.
    format!(
        "# {}\ndef main():\n    api.send({answer:?})\n",
        "p".repeat(pad)
    )
}

async fn check(target: &Target, known: &Known) -> (State, String) {
    let result = async {
        let session = Connection::connect(target)
            .await?
            .invoke(&known.token, "main", "[]")
            .await?;
        Connection::connect(target)
            .await?
            .attach(&session, None)
            .await?
            .read_to_end()
            .await
    }
    .await;
    match result {
        Ok(output) if output == known.answer.as_bytes() => (State::Intact, String::new()),
        Ok(output) => (
            State::Corrupt,
            format!("answered {:?}", String::from_utf8_lossy(&output)),
        ),
        Err(ClientError::Remote {
            code: ErrorCode::UnknownInvokeToken,
            ..
        }) => (State::Absent, String::new()),
        Err(e) => (State::Corrupt, e.to_string()),
    }
}

/// One client until the box dies: store, invoke what it stored, repeat.
async fn client(target: Target, seed: u64, known: Arc<Mutex<Vec<Known>>>) {
    let mut rng = XorShift(seed | 1);
    for n in 0u64.. {
        let answer = format!("answer {seed} {n}");
        let pad = usize::try_from(rng.below(64 * 1024)).unwrap_or(0);
        let stored = async {
            Connection::connect(&target)
                .await?
                .store("crash.py", &source(&answer, pad))
                .await
        }
        .await;
        let Ok((_, token)) = stored else {
            // The box is gone (or going): this store was never
            // acknowledged, so it may be there or not.
            return;
        };
        let this = Known { token, answer };
        known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(this.clone());
        // A session of it, possibly cut by the kill.
        let _ = check(&target, &this).await;
    }
}

/// The crash run, its table and verdict written to `out`; true when no
/// function was ever corrupt or missing.
pub async fn run(args: CrashOptions, out: &mut (dyn Write + Send)) -> Result<bool, Error> {
    let data_dir =
        tempfile::tempdir().map_err(io_error("cannot create a temporary data directory"))?;
    let known: Arc<Mutex<Vec<Known>>> = Arc::default();
    let mut rng = XorShift(0x5DEE_CE66_D1CE_4E5B ^ u64::from(std::process::id()));
    let mut corrupt = 0u64;
    let mut lost = 0u64;
    let start = Instant::now();
    report!(
        out,
        "| round | stored so far | intact | absent | corrupt | killed after ms |"
    );
    report!(out, "|---|---|---|---|---|---|");
    for round in 0..=args.rounds {
        let bx = BoxProcess::start_in(data_dir.path(), args.workers, &args.runtime).await?;
        // Check everything acknowledged so far.
        let snapshot: Vec<Known> = known.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (mut intact, mut absent, mut bad) = (0u64, 0u64, 0u64);
        for item in &snapshot {
            match check(&bx.target, item).await {
                (State::Intact, _) => intact += 1,
                (State::Absent, _) => absent += 1,
                (State::Corrupt, why) => {
                    bad += 1;
                    if bad <= 5 {
                        report!(out, "  corrupt after round {round}: {why}");
                    }
                }
            }
        }
        corrupt += bad;
        lost = lost.max(absent);
        if round == args.rounds {
            report!(
                out,
                "| final | {} | {intact} | {absent} | {bad} | - |",
                snapshot.len()
            );
            break;
        }
        // Load, then kill -9 at a random moment of it.
        let delay = Duration::from_millis(rng.below(args.max_delay_ms + 1));
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..args.clients {
            clients.spawn(client(
                bx.target.clone(),
                (round << 16) | c as u64,
                known.clone(),
            ));
        }
        tokio::time::sleep(delay).await;
        bx.kill9();
        // The clients see the box go and stop.
        while clients.join_next().await.is_some() {}
        report!(
            out,
            "| {round} | {} | {intact} | {absent} | {bad} | {} |",
            snapshot.len(),
            delay.as_millis()
        );
    }
    let stored = known.lock().unwrap_or_else(|e| e.into_inner()).len();
    report!(
        out,
        "{} rounds in {:.0} s: {stored} acknowledged stores; {corrupt} corrupt answers; at most {lost} acknowledged functions absent",
        args.rounds,
        start.elapsed().as_secs_f64()
    );
    let clean = corrupt == 0;
    report!(
        out,
        "verdict: {}",
        if clean && lost == 0 {
            "every acknowledged function intact after every kill -9"
        } else if clean {
            "nothing corrupt, but acknowledged functions went missing"
        } else {
            "CORRUPT functions found"
        }
    );
    Ok(clean && lost == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_padded_source_still_answers_its_answer() {
        let text = source("answer 1 2", 10);
        assert!(text.starts_with("# pppppppppp\n"));
        assert!(text.ends_with("api.send(\"answer 1 2\")\n"));
    }
}
