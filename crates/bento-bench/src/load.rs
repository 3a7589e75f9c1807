//! `bento bench load`: many concurrent clients against one box, every
//! session's output checked by hash, and a probe that times a new user's
//! answer throughout.
//!
//! Each client loops until the duration is over, pausing a random
//! 0..2×`--think-ms` between operations, picking one of:
//!
//! - **store**: store a function of its own (a new source each time), invoke
//!   it and check its answer;
//! - **invoke**: invoke the generator (1 KiB messages derived from a seed),
//!   attach, read to the end, compare the SHA-256 of what arrived with that
//!   of what the function must send;
//! - **detach**: the same, but detach part-way and attach again: the two
//!   parts together must hash the same (nothing lost or sent twice);
//! - **kill**: invoke a function that waits for input, read its greeting,
//!   kill it from another connection: the attachment must end with
//!   `killed`.
//!
//! A refusal because the box is busy (`too_many_instances`,
//! `buffer_cap_reached`, `too_many_connections`, `overloaded`) is counted
//! and retried after a pause; anything else unexpected is a failure. The
//! probe, once a second, is a new user: connect, invoke hello-world, attach
//! and read the answer. Its time to an answer — the output, or the box's
//! immediate `overloaded` refusal — is what the report's p99 and max are
//! made of (the goal is at most 1 s); the report also gives how many
//! probes were served and the served ones' times. The probe runs on its
//! own thread and runtime, apart from the clients' (since 2026-12-05).
//! Nothing here asserts on time.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bento_client::{ClientError, Connection, Target};
use bento_protocol::{ErrorCode, InvokeToken};
use sha2::{Digest, Sha256};

use crate::latency::{ms, percentile};
use crate::process::BoxProcess;
use crate::{Error, XorShift, error_chain, io_error, setup_error, step};

const HELLO: &str = "def main(name):\n    api.send('hello ' + name)\n";
/// Sends `n` messages of 1 KiB, each SHA-256("seed:i") repeated 32 times.
const GENERATOR: &str = "import hashlib\ndef main(seed, n):\n    for i in range(n):\n        api.send(hashlib.sha256(b'%d:%d' % (seed, i)).digest() * 32)\n";
const WAITER: &str = "def main():\n    api.send('ready')\n    api.recv()\n";

/// Options of the load run (`bento bench load`; its `--help` says the
/// defaults).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent clients.
    pub clients: usize,
    /// How long to run, seconds.
    pub duration: u64,
    /// Mean pause between one client's operations, ms (each pause is
    /// uniform in 0..2× this).
    pub think_ms: u64,
    /// Messages (of 1 KiB) per generated session.
    pub messages: u64,
    /// Sandbox worker processes of the box [default: number of CPUs].
    pub workers: Option<usize>,
    /// The precompiled runtime.
    pub runtime: PathBuf,
    /// Write the results as JSON instead of text.
    pub json: bool,
}

/// Counts shared by all clients.
#[derive(Debug, Default)]
struct Counts {
    stores: AtomicU64,
    invokes: AtomicU64,
    detaches: AtomicU64,
    kills: AtomicU64,
    /// Sessions whose output was checked by hash (invoke and detach).
    checked_sessions: AtomicU64,
    checked_bytes: AtomicU64,
    /// Sessions whose output did not hash as expected.
    mismatches: AtomicU64,
    busy: AtomicU64,
    failures: AtomicU64,
}

/// What the generator sends for `seed` and `n`, hashed.
fn expected_digest(seed: u64, n: u64) -> [u8; 32] {
    let mut all = Sha256::new();
    for i in 0..n {
        let piece = Sha256::digest(format!("{seed}:{i}").as_bytes());
        for _ in 0..32 {
            all.update(piece);
        }
    }
    all.finalize().into()
}

/// One client's view of the box and the shared functions.
struct Client {
    target: Target,
    generator: InvokeToken,
    waiter: InvokeToken,
    messages: u64,
    counts: Arc<Counts>,
}

impl Client {
    async fn invoke(
        &self,
        token: &InvokeToken,
        args: &str,
    ) -> Result<bento_protocol::SessionToken, Error> {
        Ok(Connection::connect(&self.target)
            .await?
            .invoke(token, "main", args)
            .await?)
    }

    /// Invoke the generator with `seed`, read it (detaching once after
    /// `detach_after` bytes if given) and compare hashes.
    async fn generated(&self, seed: u64, detach_after: Option<u64>) -> Result<(), Error> {
        let n = self.messages;
        let session = self
            .invoke(&self.generator, &format!("[{seed}, {n}]"))
            .await?;
        let mut hash = Sha256::new();
        let mut received = 0u64;
        let mut attachment = Connection::connect(&self.target)
            .await?
            .attach(&session, None)
            .await?;
        let mut ended = false;
        if let Some(after) = detach_after {
            while received < after {
                match attachment.next().await? {
                    Some(data) => {
                        received += data.len() as u64;
                        hash.update(&data);
                    }
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            // With every byte read only the end is left: the box may already
            // be closing the attachment (it forgets a session whose output
            // and end were all delivered), so there is nothing to detach.
            if !ended && received < n * 1024 {
                let offset = attachment.detach().await.map_err(step("detaching"))?;
                if offset != received {
                    fail!("detached at {offset}, but {received} bytes were read");
                }
                attachment = Connection::connect(&self.target)
                    .await?
                    .attach(&session, None)
                    .await
                    .map_err(step("attaching again"))?;
            }
        }
        while !ended {
            match attachment.next().await.map_err(step("reading"))? {
                Some(data) => {
                    received += data.len() as u64;
                    hash.update(&data);
                }
                None => ended = true,
            }
        }
        attachment.close().await;
        self.counts.checked_sessions.fetch_add(1, Ordering::Relaxed);
        self.counts
            .checked_bytes
            .fetch_add(received, Ordering::Relaxed);
        let got: [u8; 32] = hash.finalize().into();
        if got != expected_digest(seed, n) {
            self.counts.mismatches.fetch_add(1, Ordering::Relaxed);
            fail!("session {seed}: {received} bytes that do not hash as expected");
        }
        Ok(())
    }

    async fn store_and_run(&self, client: usize, round: u64) -> Result<(), Error> {
        let source = format!("def main():\n    api.send('stored {client} {round}')\n");
        let token = Connection::connect(&self.target)
            .await?
            .store("load.py", &source)
            .await?
            .1;
        let session = self.invoke(&token, "[]").await?;
        let (output, _) = read_all(&self.target, &session).await?;
        let expected = format!("stored {client} {round}");
        if output != expected.as_bytes() {
            fail!(
                "a stored function answered {:?}",
                String::from_utf8_lossy(&output)
            );
        }
        Ok(())
    }

    async fn kill(&self) -> Result<(), Error> {
        let session = self.invoke(&self.waiter, "[]").await?;
        let mut attachment = Connection::connect(&self.target)
            .await?
            .attach(&session, None)
            .await?;
        let greeting = attachment.next().await?;
        if greeting.as_deref() != Some(b"ready".as_slice()) {
            fail!("the waiter greeted with {greeting:?}");
        }
        Connection::connect(&self.target)
            .await?
            .kill(&session)
            .await?;
        match attachment.next().await {
            Ok(Some(data)) => fail!("output after the greeting: {data:?}"),
            Ok(None) => fail!("a killed session ended normally"),
            Err(ClientError::Remote {
                code: ErrorCode::Killed,
                ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        attachment.close().await;
        Ok(())
    }
}

/// Read a session to its end: its output and how it ended.
async fn read_all(
    target: &Target,
    session: &bento_protocol::SessionToken,
) -> Result<(Vec<u8>, ()), Error> {
    let output = Connection::connect(target)
        .await?
        .attach(session, None)
        .await?
        .read_to_end()
        .await?;
    Ok((output, ()))
}

async fn client_loop(
    client: Arc<Client>,
    index: usize,
    until: Instant,
    think: Duration,
) -> Vec<String> {
    let mut rng =
        XorShift(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut failures = Vec::new();
    let mut round = 0u64;
    // Spread the clients' first operations over one think time.
    let pause = |rng: &mut XorShift| {
        Duration::from_micros(rng.below(2 * u64::try_from(think.as_micros()).unwrap_or(0) + 1))
    };
    tokio::time::sleep(pause(&mut rng) / 2).await;
    while Instant::now() < until {
        round += 1;
        let seed = (index as u64) << 32 | round;
        let choice = rng.below(10);
        let (op, result) = match choice {
            0 => {
                client.counts.stores.fetch_add(1, Ordering::Relaxed);
                ("store", client.store_and_run(index, round).await)
            }
            1 => {
                client.counts.kills.fetch_add(1, Ordering::Relaxed);
                ("kill", client.kill().await)
            }
            2..=4 => {
                client.counts.detaches.fetch_add(1, Ordering::Relaxed);
                let after = rng.below(client.messages * 1024).max(1);
                ("detach", client.generated(seed, Some(after)).await)
            }
            _ => {
                client.counts.invokes.fetch_add(1, Ordering::Relaxed);
                ("invoke", client.generated(seed, None).await)
            }
        };
        if let Err(e) = result {
            if e.is_busy() {
                client.counts.busy.fetch_add(1, Ordering::Relaxed);
            } else {
                client.counts.failures.fetch_add(1, Ordering::Relaxed);
                if failures.len() < 5 {
                    failures.push(format!("{op}: {}", error_chain(&e)));
                }
            }
        }
        tokio::time::sleep(pause(&mut rng)).await;
    }
    failures
}

/// One probe's answer.
#[derive(Debug, Clone, Copy)]
struct ProbeAnswer {
    time: Duration,
    /// Served (the right output), not refused as busy.
    served: bool,
}

/// A new user, once a second until `until`: connect, invoke hello-world,
/// read the answer. Returns each answer (the output, or a busy refusal)
/// with its time, and separately whatever else happened (a wrong output,
/// an error that is not a busy refusal).
async fn probe(
    target: Target,
    hello: InvokeToken,
    until: Instant,
) -> (Vec<ProbeAnswer>, Vec<String>) {
    let mut answers = Vec::new();
    let mut errors = Vec::new();
    while Instant::now() < until {
        let start = Instant::now();
        let answer = async {
            let session = Connection::connect(&target)
                .await?
                .invoke(&hello, "main", "[\"probe\"]")
                .await?;
            read_all(&target, &session).await
        }
        .await;
        let time = start.elapsed();
        match answer {
            Ok((output, ())) if output == b"hello probe" => {
                answers.push(ProbeAnswer { time, served: true })
            }
            Ok((output, ())) => {
                errors.push(format!("answered {:?}", String::from_utf8_lossy(&output)))
            }
            Err(e) if e.is_busy() => answers.push(ProbeAnswer {
                time,
                served: false,
            }),
            Err(e) => errors.push(error_chain(&e)),
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(time)).await;
    }
    (answers, errors)
}

/// The load run, its report written to `out`; true when no byte was lost
/// or duplicated and nothing failed.
pub async fn run(args: LoadOptions, out: &mut (dyn Write + Send)) -> Result<bool, Error> {
    let bx = BoxProcess::start(args.workers, &args.runtime).await?;
    let store = |name: &'static str, source: &'static str| {
        let target = bx.target.clone();
        async move {
            Ok::<_, Error>(
                Connection::connect(&target)
                    .await?
                    .store(name, source)
                    .await?
                    .1,
            )
        }
    };
    let hello = store("hello.py", HELLO).await?;
    let client = Arc::new(Client {
        target: bx.target.clone(),
        generator: store("generator.py", GENERATOR).await?,
        waiter: store("waiter.py", WAITER).await?,
        messages: args.messages,
        counts: Arc::new(Counts::default()),
    });
    eprintln!(
        "box pid {} on {}; {} clients for {} s",
        bx.pid(),
        bx.target.server,
        args.clients,
        args.duration
    );
    let start = Instant::now();
    let until = start + Duration::from_secs(args.duration);
    let think = Duration::from_millis(args.think_ms);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        tasks.spawn(client_loop(client.clone(), index, until, think));
    }
    // The probe is a new user, not one of the generator's clients: it runs
    // on its own thread and runtime, so that its time is the box's and not
    // also the wait for a turn among the generator's tasks on theirs.
    let probe_target = bx.target.clone();
    let probe = std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(probe(probe_target, hello, until)))
        })
        .map_err(io_error("cannot start the probe's thread"))?;
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(mut f) => failures.append(&mut f),
            Err(e) => failures.push(format!("a client task failed: {e}")),
        }
    }
    let (answers, probe_errors) = tokio::task::spawn_blocking(move || probe.join())
        .await
        .map_err(setup_error("the probe failed"))?
        .map_err(|_| setup_error("the probe failed")("its thread panicked"))?
        .map_err(io_error("the probe's runtime did not start"))?;
    let elapsed = start.elapsed();
    let mut times: Vec<Duration> = answers.iter().map(|a| a.time).collect();
    times.sort();
    let mut served: Vec<Duration> = answers
        .iter()
        .filter(|a| a.served)
        .map(|a| a.time)
        .collect();
    served.sort();
    let served_p50 = percentile(&served, 0.5);
    let served_p99 = percentile(&served, 0.99);
    let served_max = served.last().copied().unwrap_or_default();
    let counts = &client.counts;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let max = times.last().copied().unwrap_or_default();
    let p99 = percentile(&times, 0.99);
    let over_goal = times
        .iter()
        .filter(|t| **t > Duration::from_secs(1))
        .count();
    let clean =
        get(&counts.mismatches) == 0 && get(&counts.failures) == 0 && probe_errors.is_empty();
    let summary = serde_json::json!({
        "clients": args.clients,
        "seconds": elapsed.as_secs_f64(),
        "think_ms": args.think_ms,
        "operations": {
            "store": get(&counts.stores),
            "invoke": get(&counts.invokes),
            "detach": get(&counts.detaches),
            "kill": get(&counts.kills),
        },
        "checked_sessions": get(&counts.checked_sessions),
        "checked_bytes": get(&counts.checked_bytes),
        "mismatched_sessions": get(&counts.mismatches),
        "busy_refusals": get(&counts.busy),
        "failures": get(&counts.failures),
        "failure_samples": failures.iter().take(10).collect::<Vec<_>>(),
        "probe": {
            "answers": times.len(),
            "served": served.len(),
            "refused_busy": times.len() - served.len(),
            "served_p50_ms": ms(served_p50),
            "served_p99_ms": ms(served_p99),
            "served_max_ms": ms(served_max),
            "errors": probe_errors.len(),
            "error_samples": probe_errors.iter().take(5).collect::<Vec<_>>(),
            "p50_ms": ms(percentile(&times, 0.5)),
            "p99_ms": ms(p99),
            "max_ms": ms(max),
            "over_1s": over_goal,
        },
        "clean": clean,
    });
    if args.json {
        report!(out, "{summary:#}");
    } else {
        report!(
            out,
            "{} clients for {:.0} s (think time {} ms): {} stores, {} invokes, {} detach/re-attach, {} kills",
            args.clients,
            elapsed.as_secs_f64(),
            args.think_ms,
            get(&counts.stores),
            get(&counts.invokes),
            get(&counts.detaches),
            get(&counts.kills)
        );
        report!(
            out,
            "{} sessions ({} bytes) checked by hash: {} mismatched; {} busy refusals; {} failures",
            get(&counts.checked_sessions),
            get(&counts.checked_bytes),
            get(&counts.mismatches),
            get(&counts.busy),
            get(&counts.failures)
        );
        for failure in failures.iter().take(10) {
            report!(out, "  failure: {failure}");
        }
        report!(
            out,
            "new user's time to answer: {} probes, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {} over 1 s, {} not answered",
            times.len(),
            ms(percentile(&times, 0.5)),
            ms(p99),
            ms(max),
            over_goal,
            probe_errors.len()
        );
        report!(
            out,
            "  of which served: {} (p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms); refused as busy: {}",
            served.len(),
            ms(served_p50),
            ms(served_p99),
            ms(served_max),
            times.len() - served.len()
        );
        for error in probe_errors.iter().take(5) {
            report!(out, "  probe: {error}");
        }
        report!(
            out,
            "verdict: {}",
            if clean {
                "clean (no byte lost or duplicated, nothing failed)"
            } else {
                "NOT clean (see above)"
            }
        );
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_digest_is_that_of_the_generators_messages() {
        let mut all = Vec::new();
        for i in 0..3 {
            let piece = Sha256::digest(format!("7:{i}").as_bytes());
            for _ in 0..32 {
                all.extend_from_slice(&piece);
            }
        }
        assert_eq!(all.len(), 3 * 1024);
        let direct: [u8; 32] = Sha256::digest(&all).into();
        assert_eq!(expected_digest(7, 3), direct);
        assert_ne!(expected_digest(7, 3), expected_digest(8, 3));
    }

    #[test]
    fn only_the_boxs_busy_refusals_are_retried() {
        let busy = Error::from(ClientError::Remote {
            code: ErrorCode::TooManyInstances,
            message: String::new(),
        });
        assert!(busy.is_busy());
        let busy_on_reattach = step("attaching again")(ClientError::Remote {
            code: ErrorCode::Overloaded,
            message: String::new(),
        });
        assert!(busy_on_reattach.is_busy());
        let lost = Error::from(ClientError::Remote {
            code: ErrorCode::UnknownSession,
            message: String::new(),
        });
        assert!(!lost.is_busy());
        assert!(!Error::Run("mismatch".to_owned()).is_busy());
    }
}
